/*
 * ble.h — discovery and LE L2CAP channels over BlueZ (DESIGN.md §7), on the node's libevent loop.
 *
 * Talks to bluetoothd over the system D-Bus (sd-bus, its fd and timeout driven by the loop):
 *   - advertises service data for FM_BLE_SERVICE_UUID (with discoverable flags), FM_BLE_PAYLOAD
 *     bytes = [0] protocol version  [1] L2CAP PSM  [2..4] mesh id prefix  [5..9] sync digest
 *     prefix, through LEAdvertisingManager1 (re-registered when the digest prefix changes, at most
 *     every FM_BLE_ADV_INTERVAL_MS). Flags (3) + the 128-bit service data (18 + 10) fill a legacy
 *     31-byte advertisement exactly, so every LE controller can send it; a separate UUID list
 *     does not fit beside it (and bluetoothd drops scan-response data on btvirt), so discovery
 *     filters on the service data's UUID itself;
 *   - discovers with Adapter1.SetDiscoveryFilter({Transport "le"}) + StartDiscovery and reads
 *     Device1.ServiceData from InterfacesAdded / PropertiesChanged; a same-mesh peer is
 *     reported as "ble:AA:BB:CC:DD:EE:FF/public|random/PSM" with a digest (see found), and lost
 *     when bluetoothd drops the device;
 *   - listens on an LE L2CAP connection-oriented channel (SOCK_SEQPACKET, dynamic PSM
 *     0x80-0xff) and hands accepted sockets to the caller; fm_ble_connect opens outbound ones.
 * Every socket it hands out is nonblocking and owned by the caller from then on.
 * No bluetoothd, no adapter: fm_ble_open fails with a single log line and the caller carries on.
 * bluetoothd restarting (NameOwnerChanged on org.bluez): its devices are reported lost, and once
 * it is back, discovery and the advertisement are set up again (one log line each way).
 */
#ifndef FM_BLE_H
#define FM_BLE_H

#include "crdt/base.h"

struct event_base;
typedef struct fm_ble fm_ble;

#define FM_BLE_SERVICE_UUID "6f9d0001-6c3e-4e8a-9f1d-6669656c646d" /* "...fieldm" */
#define FM_BLE_ADDR_PREFIX "ble:"

enum {
    FM_BLE_VERSION = 1,       /* first payload byte */
    FM_BLE_PAYLOAD = 10,      /* service data bytes (fills a legacy 31-byte advertisement) */
    FM_BLE_MESH_PREFIX = 3,   /* mesh id bytes advertised (a false match costs one handshake) */
    FM_BLE_DIGEST_PREFIX = 5, /* sync digest bytes advertised (false "equal": 2^-40) */
    FM_BLE_PSM_MIN = 0x80,    /* LE dynamic PSM range */
    FM_BLE_PSM_MAX = 0xff,
    FM_BLE_MAX_DEVICES = 128, /* devices tracked per adapter */
    FM_BLE_ADV_INTERVAL_MS = 2000,
    FM_BLE_ADV_REFRESH_MS = 200,     /* a new link or a new peer: advertise again after this */
    FM_BLE_ADV_AFTER_SCAN_MS = 1500, /* the first advertisement, after discovery is on */
    FM_BLE_CALL_TIMEOUT_MS = 5000,   /* D-Bus calls at start */
    FM_BLE_RCVMTU = 65535,           /* our incoming SDU size (fewer, larger SDUs) */
    FM_BLE_DIAL_WAIT_MS = 8000,      /* the lower address waits this long for the higher's link */
    FM_BLE_DIAL_SETTLE_MS = 1000,    /* and for a channel on a link that has just come up */
    FM_BLE_MAX_SOCKS = 16,           /* channel sockets remembered (fm_ble_connect, accepted) */
    FM_BLE_RESTART_MS = 1000,        /* after a bluetoothd restart: retry discovery this often */
    FM_BLE_RESTART_TRIES = 30,       /* ... this many times */
};
_Static_assert(2 + FM_BLE_MESH_PREFIX + FM_BLE_DIGEST_PREFIX == FM_BLE_PAYLOAD, "payload layout");
_Static_assert(3 + 2 + 16 + FM_BLE_PAYLOAD <= 31,
               "flags + service data fit a legacy advertisement");

typedef struct fm_ble_cb {
    void *ctx;
    /* A same-mesh peer at addr. digest: when the advertised digest prefix equals ours, our own
     * full digest (the node then sees nothing to exchange); otherwise the prefix padded with
     * zeros, which differs from ours. */
    void (*found)(void *ctx, const char *addr, const uint8_t digest[FM_HASH_BYTES]);
    void (*lost)(void *ctx, const char *addr);
    /* An inbound channel; fd (nonblocking) now belongs to the callee. addr as in found when
     * the peer was discovered, else "ble:ADDR/TYPE/0". */
    void (*accepted)(void *ctx, int fd, const char *addr);
    void (*log)(void *ctx, int level, const char *line);
} fm_ble_cb;

/* adapter: "hciN", or NULL / "" for the first one bluetoothd lists. mesh_id and digest are
 * copied. Errors: FM_EIO (no system bus or no bluetoothd), FM_ENOTFOUND (no such adapter),
 * FM_ENOMEM; each logged once. */
int fm_ble_open(struct event_base *base, const char *adapter, const uint8_t mesh_id[FM_ID_BYTES],
                const uint8_t digest[FM_HASH_BYTES], const fm_ble_cb *cb, fm_ble **out);
/* Unregisters the advertisement, stops discovery, closes the listener. NULL is fine. */
void fm_ble_close(fm_ble *b);
void fm_ble_set_digest(fm_ble *b, const uint8_t digest[FM_HASH_BYTES]);
/* The adapter's "ble:ADDR/TYPE/PSM" (valid while b is open). */
const char *fm_ble_local_addr(const fm_ble *b);

/* Starts a nonblocking LE connect to a "ble:" address from this adapter. On 0, *fd is the
 * socket: writable once connected, then fm_ble_connect_result says how it went. FM_EINVAL: not a
 * ble address; FM_EIO: socket error; FM_EEXISTS: the peer has a channel open to us, and one link
 * carries channels opened from one side only (see fm_ble_dial_later). A connect still under way
 * when the peer's own channel arrives is shut down (the caller sees it fail). */
int fm_ble_connect(fm_ble *b, const char *addr, int *fd);
/* Whether a dial to addr should wait (up to FM_BLE_DIAL_WAIT_MS, asking again meanwhile). Two
 * controllers creating LE links to each other at the same moment end up with two links for one
 * peer pair, which the kernel (Linux 6.1: "Ignoring HCI_Connection_Complete for existing
 * connection") does not survive; and a link must carry channels opened from one side only (see
 * fm_ble_connect). So of two peers the one with the higher adapter address dials at once; the
 * lower one waits until an LE link between them has been up FM_BLE_DIAL_SETTLE_MS (the higher
 * one's channel, if it is coming, is open by then and the dial is refused) or the wait is over
 * (the higher one had no reason to dial). Either waits out the settle time of a link that has
 * just come up, and neither waits when the peer has a channel open to us. The daemon also sets
 * up one LE link at a time. */
bool fm_ble_dial_later(const fm_ble *b, const char *addr);
/* 0 when the connect on fd succeeded, else FM_EIO (errno-style reason in *why if non-NULL). */
int fm_ble_connect_result(int fd, int *why);

/* Parses "ble:AA:BB:CC:DD:EE:FF/public|random/PSM". 0 or FM_EINVAL. */
int fm_ble_parse_addr(const char *addr, uint8_t mac[6], bool *random, uint16_t *psm);

#endif
