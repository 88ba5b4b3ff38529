/*
 * mdns.c — Avahi publish/browse/resolve on the libevent loop (mdns.h).
 */
#include "transport/mdns.h"

#include "node/node.h"

#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/alternative.h>
#include <avahi-common/domain.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/timeval.h>
#include <avahi-common/watch.h>
#include <event2/event.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- AvahiPoll on libevent ------------------------------------------------------------------ */

struct AvahiWatch {
    struct event_base *base;
    struct event *ev;
    int fd;
    AvahiWatchEvent last;
    AvahiWatchCallback cb;
    void *userdata;
};

struct AvahiTimeout {
    struct event *ev;
    AvahiTimeoutCallback cb;
    void *userdata;
};

static void watch_fire(evutil_socket_t fd, short what, void *arg)
{
    AvahiWatch *w = arg;
    w->last = (AvahiWatchEvent)(((what & EV_READ) ? AVAHI_WATCH_IN : 0) |
                                ((what & EV_WRITE) ? AVAHI_WATCH_OUT : 0));
    w->cb(w, fd, w->last, w->userdata); /* may free w */
}

static void watch_arm(AvahiWatch *w, AvahiWatchEvent e)
{
    if (w->ev)
        event_free(w->ev);
    short ev =
        (short)(((e & AVAHI_WATCH_IN) ? EV_READ : 0) | ((e & AVAHI_WATCH_OUT) ? EV_WRITE : 0));
    w->ev = event_new(w->base, w->fd, ev | EV_PERSIST, watch_fire, w);
    if (w->ev && ev)
        event_add(w->ev, NULL);
}

static AvahiWatch *watch_new(const AvahiPoll *api, int fd, AvahiWatchEvent e, AvahiWatchCallback cb,
                             void *userdata)
{
    AvahiWatch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->base = api->userdata;
    w->fd = fd;
    w->cb = cb;
    w->userdata = userdata;
    watch_arm(w, e);
    if (!w->ev) {
        free(w);
        return NULL;
    }
    return w;
}

static void watch_update(AvahiWatch *w, AvahiWatchEvent e)
{
    watch_arm(w, e);
}

static AvahiWatchEvent watch_get_events(AvahiWatch *w)
{
    return w->last;
}

static void watch_free(AvahiWatch *w)
{
    if (w->ev)
        event_free(w->ev);
    free(w);
}

static void timeout_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    AvahiTimeout *t = arg;
    t->cb(t, t->userdata);
}

/* Avahi gives an absolute gettimeofday() deadline; libevent wants a relative one. */
static void timeout_arm(AvahiTimeout *t, const struct timeval *tv)
{
    evtimer_del(t->ev);
    if (!tv)
        return;
    AvahiUsec d = -avahi_age(tv);
    if (d < 0)
        d = 0;
    struct timeval rel = {.tv_sec = d / 1000000, .tv_usec = d % 1000000};
    evtimer_add(t->ev, &rel);
}

static AvahiTimeout *timeout_new(const AvahiPoll *api, const struct timeval *tv,
                                 AvahiTimeoutCallback cb, void *userdata)
{
    AvahiTimeout *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->cb = cb;
    t->userdata = userdata;
    t->ev = evtimer_new((struct event_base *)api->userdata, timeout_fire, t);
    if (!t->ev) {
        free(t);
        return NULL;
    }
    timeout_arm(t, tv);
    return t;
}

static void timeout_update(AvahiTimeout *t, const struct timeval *tv)
{
    timeout_arm(t, tv);
}

static void timeout_free(AvahiTimeout *t)
{
    event_free(t->ev);
    free(t);
}

/* ---- the module ----------------------------------------------------------------------------- */

/* A browsed service. Its resolver stays open: avahi reports the service again whenever its
 * records change, which is how a peer's new digest (TXT d=) reaches us. */
typedef struct svc {
    char name[AVAHI_LABEL_MAX];
    char addr[FM_NODE_MAX_ADDR + 1]; /* empty until resolved */
    AvahiServiceResolver *resolver;
} svc;

struct fm_mdns {
    struct event_base *base;
    AvahiPoll poll;
    AvahiClient *client;
    AvahiEntryGroup *group;
    AvahiServiceBrowser *browser;
    fm_mdns_cb cb;
    char *name;
    uint16_t port;
    char mesh_hex[17], id_hex[17];
    uint8_t digest[FM_HASH_BYTES];
    bool digest_dirty, warned;
    struct event *txt_timer, *retry_timer;
    svc svcs[FM_MDNS_MAX_SERVICES];
    uint32_t nsvcs;
};

static void mlog(fm_mdns *m, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void mlog(fm_mdns *m, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fm_vlog(m->cb.log, m->cb.ctx, level, fmt, ap);
    va_end(ap);
}

static void publish(fm_mdns *m);

static AvahiStringList *make_txt(fm_mdns *m)
{
    char v[16], mesh[24], id[24], d[2 * FM_HASH_BYTES + 3];
    snprintf(v, sizeof v, "v=%d", 1);
    snprintf(mesh, sizeof mesh, "m=%s", m->mesh_hex);
    snprintf(id, sizeof id, "id=%s", m->id_hex);
    memcpy(d, "d=", 2);
    fm_hex(m->digest, FM_HASH_BYTES, d + 2);
    return avahi_string_list_new(v, mesh, id, d, NULL);
}

static void group_cb(AvahiEntryGroup *g, AvahiEntryGroupState s, void *arg)
{
    fm_mdns *m = arg;
    if (s == AVAHI_ENTRY_GROUP_COLLISION) {
        char *n = avahi_alternative_service_name(m->name);
        mlog(m, FM_LOG_INFO, "mdns: name %s taken, now %s", m->name, n);
        avahi_free(m->name);
        m->name = n;
        m->group = g;
        publish(m);
    } else if (s == AVAHI_ENTRY_GROUP_ESTABLISHED) {
        mlog(m, FM_LOG_INFO, "mdns: published %s.%s port %u", m->name, FM_MDNS_SERVICE, m->port);
    } else if (s == AVAHI_ENTRY_GROUP_FAILURE) {
        mlog(m, FM_LOG_WARN, "mdns: publishing failed: %s",
             avahi_strerror(avahi_client_errno(avahi_entry_group_get_client(g))));
    }
}

static void publish(fm_mdns *m)
{
    if (!m->group && !(m->group = avahi_entry_group_new(m->client, group_cb, m))) {
        mlog(m, FM_LOG_WARN, "mdns: %s", avahi_strerror(avahi_client_errno(m->client)));
        return;
    }
    avahi_entry_group_reset(m->group);
    AvahiStringList *txt = make_txt(m);
    int r = txt ? avahi_entry_group_add_service_strlst(m->group, AVAHI_IF_UNSPEC,
                                                       AVAHI_PROTO_UNSPEC, 0, m->name,
                                                       FM_MDNS_SERVICE, NULL, NULL, m->port, txt)
                : AVAHI_ERR_NO_MEMORY;
    avahi_string_list_free(txt);
    if (r == AVAHI_ERR_COLLISION) {
        char *n = avahi_alternative_service_name(m->name);
        avahi_free(m->name);
        m->name = n;
        publish(m);
        return;
    }
    if (r < 0 || (r = avahi_entry_group_commit(m->group)) < 0)
        mlog(m, FM_LOG_WARN, "mdns: publish: %s", avahi_strerror(r));
    m->digest_dirty = false;
}

static const char *txt_get(AvahiStringList *txt, const char *key, char *out, size_t cap)
{
    AvahiStringList *e = avahi_string_list_find(txt, key);
    char *k = NULL, *v = NULL;
    if (!e || avahi_string_list_get_pair(e, &k, &v, NULL) < 0 || !v) {
        avahi_free(k);
        avahi_free(v);
        return NULL;
    }
    snprintf(out, cap, "%s", v);
    avahi_free(k);
    avahi_free(v);
    return out;
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n)
        return FM_EDECODE;
    for (size_t i = 0; i < n; i++) {
        unsigned x;
        if (sscanf(s + 2 * i, "%2x", &x) != 1)
            return FM_EDECODE;
        out[i] = (uint8_t)x;
    }
    return 0;
}

static svc *svc_find(fm_mdns *m, const char *name)
{
    for (uint32_t i = 0; i < m->nsvcs; i++)
        if (strcmp(m->svcs[i].name, name) == 0)
            return &m->svcs[i];
    return NULL;
}

static void resolved(AvahiServiceResolver *r, AvahiIfIndex ifx, AvahiProtocol proto,
                     AvahiResolverEvent ev, const char *name, const char *type, const char *domain,
                     const char *host, const AvahiAddress *a, uint16_t port, AvahiStringList *txt,
                     AvahiLookupResultFlags flags, void *arg)
{
    (void)proto, (void)type, (void)domain, (void)host, (void)flags;
    fm_mdns *m = arg;
    char mesh[32], id[32], dhex[80], ip[AVAHI_ADDRESS_STR_MAX];
    uint8_t digest[FM_HASH_BYTES];
    svc *s = name ? svc_find(m, name) : NULL;
    if (ev != AVAHI_RESOLVER_FOUND) {
        mlog(m, FM_LOG_DEBUG, "mdns: resolving %s failed", name ? name : "?");
        if (s && s->resolver == r)
            s->resolver = NULL;
        avahi_service_resolver_free(r);
        return;
    }
    /* Same mesh, not ourselves (by id: every service on one host shares its host name). */
    if (!txt_get(txt, "m", mesh, sizeof mesh) || strcmp(mesh, m->mesh_hex) != 0 ||
        !txt_get(txt, "id", id, sizeof id) || strcmp(id, m->id_hex) == 0)
        return;
    bool has_digest = txt_get(txt, "d", dhex, sizeof dhex) && !unhex(dhex, digest, sizeof digest);
    avahi_address_snprint(ip, sizeof ip, a);
    char addr[FM_NODE_MAX_ADDR + 1], ifname[IF_NAMESIZE] = "";
    if (a->proto == AVAHI_PROTO_INET6) {
        if (strncmp(ip, "fe80", 4) == 0 && if_indextoname((unsigned)ifx, ifname))
            snprintf(addr, sizeof addr, "[%s%%%s]:%u", ip, ifname, port);
        else
            snprintf(addr, sizeof addr, "[%s]:%u", ip, port);
    } else {
        snprintf(addr, sizeof addr, "%s:%u", ip, port);
    }
    if (s)
        snprintf(s->addr, sizeof s->addr, "%s", addr);
    mlog(m, FM_LOG_DEBUG, "mdns: found %s at %s", name, addr);
    m->cb.found(m->cb.ctx, addr, has_digest ? digest : NULL);
}

static void browsed(AvahiServiceBrowser *b, AvahiIfIndex ifx, AvahiProtocol proto,
                    AvahiBrowserEvent ev, const char *name, const char *type, const char *domain,
                    AvahiLookupResultFlags flags, void *arg)
{
    (void)b, (void)flags;
    fm_mdns *m = arg;
    svc *s = name ? svc_find(m, name) : NULL; /* ALL_FOR_NOW and the like name nothing */
    if (ev == AVAHI_BROWSER_NEW) {
        if (!s && m->nsvcs < FM_MDNS_MAX_SERVICES) {
            s = &m->svcs[m->nsvcs++];
            memset(s, 0, sizeof *s);
            snprintf(s->name, sizeof s->name, "%s", name);
        }
        /* IPv4 addresses: no interface scope to carry, and every test network has them. */
        if (s && !s->resolver &&
            !(s->resolver = avahi_service_resolver_new(m->client, ifx, proto, name, type, domain,
                                                       AVAHI_PROTO_INET, 0, resolved, m)))
            mlog(m, FM_LOG_WARN, "mdns: resolve %s: %s", name,
                 avahi_strerror(avahi_client_errno(m->client)));
    } else if (ev == AVAHI_BROWSER_REMOVE && s) {
        mlog(m, FM_LOG_DEBUG, "mdns: %s went away", name);
        if (s->addr[0])
            m->cb.lost(m->cb.ctx, s->addr);
        if (s->resolver)
            avahi_service_resolver_free(s->resolver);
        *s = m->svcs[--m->nsvcs];
    } else if (ev == AVAHI_BROWSER_FAILURE) {
        mlog(m, FM_LOG_WARN, "mdns: browsing failed: %s",
             avahi_strerror(avahi_client_errno(m->client)));
    }
}

static void drop_objects(fm_mdns *m)
{
    /* Known peers stay known to the node (liveness comes from connections), but the resolvers
     * die with the client. */
    for (uint32_t i = 0; i < m->nsvcs; i++)
        if (m->svcs[i].resolver)
            avahi_service_resolver_free(m->svcs[i].resolver);
    m->nsvcs = 0;
    if (m->browser)
        avahi_service_browser_free(m->browser);
    if (m->group)
        avahi_entry_group_free(m->group);
    m->browser = NULL;
    m->group = NULL;
}

static void client_cb(AvahiClient *c, AvahiClientState s, void *arg)
{
    fm_mdns *m = arg;
    m->client = c; /* also during avahi_client_new */
    if (s == AVAHI_CLIENT_S_RUNNING) {
        if (m->warned)
            mlog(m, FM_LOG_INFO, "mdns: avahi-daemon is back");
        m->warned = false;
        publish(m);
        if (!m->browser &&
            !(m->browser = avahi_service_browser_new(c, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC,
                                                     FM_MDNS_SERVICE, NULL, 0, browsed, m)))
            mlog(m, FM_LOG_WARN, "mdns: browse: %s", avahi_strerror(avahi_client_errno(c)));
    } else if (s == AVAHI_CLIENT_S_COLLISION || s == AVAHI_CLIENT_S_REGISTERING) {
        if (m->group)
            avahi_entry_group_reset(m->group);
    } else if (s == AVAHI_CLIENT_FAILURE || s == AVAHI_CLIENT_CONNECTING) {
        if (!m->warned)
            mlog(m, FM_LOG_WARN,
                 "mdns: avahi-daemon unavailable (%s); static peers still work, retrying",
                 avahi_strerror(avahi_client_errno(c)));
        m->warned = true;
        drop_objects(m); /* invalid once the daemon is gone; made again when it is back */
        if (s == AVAHI_CLIENT_FAILURE) {
            struct timeval tv = {FM_MDNS_RETRY_MS / 1000, 0};
            evtimer_add(m->retry_timer, &tv);
        }
    }
}

static void make_client(fm_mdns *m)
{
    int err = 0;
    if (m->client) {
        drop_objects(m);
        avahi_client_free(m->client);
        m->client = NULL;
    }
    /* NO_FAIL: wait for an absent daemon and reconnect after it restarts. */
    AvahiClient *c = avahi_client_new(&m->poll, AVAHI_CLIENT_NO_FAIL, client_cb, m, &err);
    if (!c) {
        if (!m->warned)
            mlog(m, FM_LOG_WARN, "mdns: no avahi client (%s); retrying", avahi_strerror(err));
        m->warned = true;
        struct timeval tv = {FM_MDNS_RETRY_MS / 1000, 0};
        evtimer_add(m->retry_timer, &tv);
    }
    m->client = c;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    make_client(arg);
}

static void on_txt(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_mdns *m = arg;
    if (m->digest_dirty && m->client && m->group &&
        avahi_client_get_state(m->client) == AVAHI_CLIENT_S_RUNNING) {
        AvahiStringList *txt = make_txt(m);
        if (txt && avahi_entry_group_update_service_txt_strlst(m->group, AVAHI_IF_UNSPEC,
                                                               AVAHI_PROTO_UNSPEC, 0, m->name,
                                                               FM_MDNS_SERVICE, NULL, txt) == 0)
            m->digest_dirty = false;
        avahi_string_list_free(txt);
    }
}

int fm_mdns_open(struct event_base *base, const char *name, uint16_t port,
                 const uint8_t mesh_id[FM_ID_BYTES], const uint8_t device[FM_ID_BYTES],
                 const uint8_t digest[FM_HASH_BYTES], const fm_mdns_cb *cb, fm_mdns **out)
{
    if (!base || !name || !cb || !cb->found || !cb->lost)
        return FM_EINVAL;
    fm_mdns *m = calloc(1, sizeof *m);
    if (!m)
        return FM_ENOMEM;
    m->base = base;
    m->cb = *cb;
    m->port = port;
    m->name = avahi_strndup(name, AVAHI_LABEL_MAX - 1);
    fm_hex(mesh_id, 8, m->mesh_hex);
    fm_hex(device, 8, m->id_hex);
    memcpy(m->digest, digest, FM_HASH_BYTES);
    m->poll = (AvahiPoll){.userdata = base,
                          .watch_new = watch_new,
                          .watch_update = watch_update,
                          .watch_get_events = watch_get_events,
                          .watch_free = watch_free,
                          .timeout_new = timeout_new,
                          .timeout_update = timeout_update,
                          .timeout_free = timeout_free};
    m->retry_timer = evtimer_new(base, on_retry, m);
    m->txt_timer = evtimer_new(base, on_txt, m);
    if (!m->name || !m->retry_timer || !m->txt_timer) {
        fm_mdns_close(m);
        return FM_ENOMEM;
    }
    make_client(m);
    *out = m;
    return 0;
}

void fm_mdns_set_digest(fm_mdns *m, const uint8_t digest[FM_HASH_BYTES])
{
    if (memcmp(m->digest, digest, FM_HASH_BYTES) == 0)
        return;
    memcpy(m->digest, digest, FM_HASH_BYTES);
    m->digest_dirty = true;
    /* One TXT update per interval at most: mDNS announcements are multicast to everyone. */
    if (!evtimer_pending(m->txt_timer, NULL)) {
        struct timeval tv = {FM_MDNS_TXT_INTERVAL_MS / 1000,
                             (FM_MDNS_TXT_INTERVAL_MS % 1000) * 1000};
        evtimer_add(m->txt_timer, &tv);
    }
}

void fm_mdns_close(fm_mdns *m)
{
    if (!m)
        return;
    drop_objects(m);
    if (m->client)
        avahi_client_free(m->client); /* withdraws the service: peers get goodbyes */
    if (m->txt_timer)
        event_free(m->txt_timer);
    if (m->retry_timer)
        event_free(m->retry_timer);
    avahi_free(m->name);
    free(m);
}
