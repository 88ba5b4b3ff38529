/*
 * mdns.h — discovery over mDNS/DNS-SD with the system avahi-daemon (DESIGN.md §7), on the
 * node's libevent loop (Debian ships no avahi-libevent adapter, so mdns.c carries one).
 *
 * Publishes NAME._fieldmesh._tcp on the listening port with TXT
 *   v=<protocol>  m=<mesh id, first 8 bytes hex>  id=<device id, first 8 bytes hex>
 *   d=<sync digest, 32 bytes hex>
 * browses for the same type, resolves, and reports same-mesh peers that are not this device
 * (recognised by its id, never by host name: on one host every service shares it). mDNS says
 * nothing about liveness; the node learns that from its connections. avahi-daemon may be absent
 * or restart: the module logs once and carries on, re-publishing when the daemon is back.
 */
#ifndef FM_MDNS_H
#define FM_MDNS_H

#include "crdt/base.h"

struct event_base;
typedef struct fm_mdns fm_mdns;

#define FM_MDNS_SERVICE "_fieldmesh._tcp"

typedef struct fm_mdns_cb {
    void *ctx;
    /* A same-mesh peer at addr ("ip:port" or "[ip6%if]:port"); digest is its sync digest. */
    void (*found)(void *ctx, const char *addr, const uint8_t digest[FM_HASH_BYTES]);
    void (*lost)(void *ctx, const char *addr);
    void (*log)(void *ctx, int level, const char *line);
} fm_mdns_cb;

int fm_mdns_open(struct event_base *base, const char *name, uint16_t port,
                 const uint8_t mesh_id[FM_ID_BYTES], const uint8_t device[FM_ID_BYTES],
                 const uint8_t digest[FM_HASH_BYTES], const fm_mdns_cb *cb, fm_mdns **out);
/* Updates the advertised digest (re-published at most every FM_MDNS_TXT_INTERVAL_MS). */
void fm_mdns_set_digest(fm_mdns *m, const uint8_t digest[FM_HASH_BYTES]);
void fm_mdns_close(fm_mdns *m);

enum {
    FM_MDNS_TXT_INTERVAL_MS = 2000,
    FM_MDNS_RETRY_MS = 2000,    /* a failed avahi client is made again after this */
    FM_MDNS_MAX_SERVICES = 256, /* resolved peers remembered */
};

#endif
