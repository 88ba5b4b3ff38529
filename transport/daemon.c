/*
 * daemon.c — the libevent driver of the node core (daemon.h). One loop, no threads:
 *   - TCP listeners (IPv4, IPv6) and outbound connects: bufferevents whose bytes go to
 *     fm_node_conn_data; the node's io callbacks write to them;
 *   - one timer, always set to the node's next deadline (so an idle node wakes only for its
 *     heartbeats and anti-entropy rounds);
 *   - mDNS discovery (mdns.c), static peers, the control socket (control.h), SIGINT/SIGTERM;
 *   - BLE (ble.c): discovery over BlueZ and LE L2CAP channels, a connection kind of their own
 *     (fd events + a blelink write queue) beside the bufferevents, at most FM_BLE_MAX_CONNS.
 * Every callback that calls into the node re-arms the timer afterwards. Bufferevents use
 * deferred callbacks, so nothing calls back into the node from inside one of its io calls.
 */
#define _GNU_SOURCE /* struct ucred */
#include "transport/daemon.h"

#include "crypto/identity.h"
#include "node/cli.h"
#include "node/node.h"
#include "node/replica.h"
#include "transport/config.h"
#include "transport/ble.h"
#include "transport/blelink.h"
#include "transport/control.h"
#include "transport/mdns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum {
    FM_DAEMON_MAX_OUTPUT = 16 << 20, /* queued bytes per connection before it is dropped */
    FM_DAEMON_LINGER_MS = 5000,      /* a closed connection may flush this long */
    FM_DAEMON_MAX_TIMER_MS = 60000,  /* re-read the wall clock at least this often */
    FM_DAEMON_READ_CHUNK = 64 * 1024,
    FM_DAEMON_DIGEST_MS = 2000, /* advertised digest refreshed at most this often */
    FM_DAEMON_IDLE_MS = 3000,   /* quiet this long after moving data: give memory back */
    FM_BLE_MAX_CONNS = 4,       /* BLE channels, inbound and outbound (the radio is slow) */
    FM_BLE_CONNECT_MS = 30000,  /* an LE connect scans for the peer first */
    FM_BLE_DIAL_POLL_MS = 250,  /* a waiting dial (fm_ble_dial_later) asks again this often */
};
_Static_assert((int)FM_DAEMON_READ_CHUNK >= (int)FM_BLELINK_MAX_MTU, "a read holds any BLE packet");

typedef struct fm_daemon fm_daemon;

/* A BLE channel: its own fd events and write queue (SEQPACKET, not a byte stream). */
typedef struct bconn {
    fm_daemon *d;
    bool used, outbound, connected, closing, dead;
    bool waiting; /* outbound, not dialled yet (fm_ble_dial_later): no fd, no fd events */
    uint64_t wait_until_ms;
    fm_conn_id id;
    int fd; /* -1 while waiting */
    struct event *rev, *wev, *timer;
    fm_blelink link;
    char addr[FM_NODE_MAX_ADDR + 1];
} bconn;

typedef struct tconn {
    fm_daemon *d;
    bool used, outbound, connected, closing, control;
    fm_conn_id id;
    struct bufferevent *bev;
    struct event *linger;
    char addr[FM_NODE_MAX_ADDR + 1];
} tconn;

struct fm_daemon {
    struct event_base *base;
    struct evdns_base *dns;
    fm_daemon_opts o;
    const char *dir;
    FILE *err;
    fm_identity *id;
    fm_replica *r;
    fm_node *node;
    fm_node_io io;
    tconn *conns;
    uint32_t cap;
    fm_conn_id next_id;
    struct evconnlistener *listeners[FM_CONFIG_MAX_LISTEN];
    int nlisteners;
    uint16_t port;
    struct evconnlistener *control;
    char control_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int lock_fd;
    struct event *timer, *sigint, *sigterm, *digest_timer, *stop_timer, *idle_timer;
    uint64_t moved; /* batches in and out, and commands run, when last looked at */
    fm_mdns *mdns;
    fm_ble *ble;
    bconn bconns[FM_BLE_MAX_CONNS];
    bool stopping;
    uint64_t refused; /* inbound connections refused for the socket bound */
};

/* ---- logging -------------------------------------------------------------------------------- */

static const char *const LEVEL[] = {"ERROR", "WARN", "INFO", "DEBUG"};

static void dlog(fm_daemon *d, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void dlog_line(fm_daemon *d, int level, const char *line)
{
    if (level > d->o.log_level)
        return;
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(d->err, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            LEVEL[level], line);
    fflush(d->err);
}

static void dlog(fm_daemon *d, int level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    dlog_line(d, level, line);
}

static void node_log(void *ctx, int level, const char *line)
{
    dlog_line(ctx, level, line);
}

/* ---- the node's timer ----------------------------------------------------------------------- */

static uint64_t wall_ms(void)
{
    return fm_env_system()->now_ms(NULL);
}

static void digest_changed(fm_daemon *d)
{
    if ((d->mdns || d->ble) && !evtimer_pending(d->digest_timer, NULL)) {
        struct timeval tv = {0, 200 * 1000}; /* coalesce a burst of batches */
        evtimer_add(d->digest_timer, &tv);
    }
}

/* After every call into the node: its next deadline becomes the one timer. */
static void rearm(fm_daemon *d)
{
    if (d->stopping || !d->node)
        return;
    uint64_t at = fm_node_next_deadline(d->node), now = wall_ms();
    uint64_t ms = at <= now ? 0 : FM_MIN(at - now, (uint64_t)FM_DAEMON_MAX_TIMER_MS);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(d->timer, &tv);
    /* Data moved: the digest changed, and memory can be given back once things are quiet. */
    fm_node_stats st;
    fm_node_stats_get(d->node, &st);
    if (st.batches_in + st.batches_out != d->moved) {
        d->moved = st.batches_in + st.batches_out;
        digest_changed(d);
        struct timeval idle = {FM_DAEMON_IDLE_MS / 1000, 0};
        evtimer_add(d->idle_timer, &idle);
    }
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_daemon *d = arg;
    fm__replica_release_memory(d->r);
    fm_buf_spares_release();
    malloc_trim(0);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_daemon *d = arg;
    fm_node_tick(d->node);
    rearm(d);
}

static void on_digest(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    fm_daemon *d = arg;
    uint8_t dg[FM_HASH_BYTES];
    if (!d->node)
        return; /* shutting down: the node is gone */
    fm_node_digest(d->node, dg);
    if (d->mdns)
        fm_mdns_set_digest(d->mdns, dg);
    fm_ble_set_digest(d->ble, dg);
}

/* ---- connections ---------------------------------------------------------------------------- */

static tconn *conn_by_id(fm_daemon *d, fm_conn_id id)
{
    for (uint32_t i = 0; i < d->cap; i++)
        if (d->conns[i].used && d->conns[i].id == id)
            return &d->conns[i];
    return NULL;
}

static tconn *conn_new(fm_daemon *d, struct bufferevent *bev)
{
    for (uint32_t i = 0; i < d->cap; i++) {
        tconn *t = &d->conns[i];
        if (t->used)
            continue;
        memset(t, 0, sizeof *t);
        t->d = d;
        t->used = true;
        t->id = d->next_id++;
        t->bev = bev;
        return t;
    }
    return NULL;
}

static void conn_free(tconn *t)
{
    if (t->bev)
        bufferevent_free(t->bev);
    if (t->linger)
        event_free(t->linger);
    memset(t, 0, sizeof *t);
}

static void on_linger(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    conn_free(arg); /* the peer did not take our last bytes in time */
}

static void on_drained(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_free(arg);
}

static void on_closing_event(struct bufferevent *bev, short events, void *arg)
{
    (void)bev, (void)events;
    conn_free(arg);
}

/* The connection is over for the node: flush what is queued, then free. */
static void conn_finish(tconn *t)
{
    t->closing = true;
    if (!t->bev || evbuffer_get_length(bufferevent_get_output(t->bev)) == 0) {
        conn_free(t);
        return;
    }
    bufferevent_disable(t->bev, EV_READ);
    bufferevent_setcb(t->bev, NULL, on_drained, on_closing_event, t);
    t->linger = evtimer_new(t->d->base, on_linger, t);
    struct timeval tv = {FM_DAEMON_LINGER_MS / 1000, 0};
    if (t->linger)
        evtimer_add(t->linger, &tv);
}

static bconn *bconn_by_id(fm_daemon *d, fm_conn_id id);
static void ble_send(bconn *c, const uint8_t *data, size_t len);
static void ble_finish(bconn *c);
static int ble_connect(fm_daemon *d, const char *addr, fm_conn_id *out);

static void io_send(void *ctx, fm_conn_id id, const uint8_t *data, size_t len)
{
    fm_daemon *d = ctx;
    bconn *c = bconn_by_id(d, id);
    if (c) {
        ble_send(c, data, len);
        return;
    }
    tconn *t = conn_by_id(d, id);
    if (!t || t->closing || !t->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(t->bev);
    if (evbuffer_get_length(out) + len > FM_DAEMON_MAX_OUTPUT) {
        /* A peer that stops reading is dropped; its read callback reports the close. */
        dlog(d, FM_LOG_WARN, "%s: peer does not read; dropping the connection", t->addr);
        bufferevent_disable(t->bev, EV_WRITE);
        shutdown(bufferevent_getfd(t->bev), SHUT_RDWR);
        return;
    }
    bufferevent_write(t->bev, data, len);
}

static void io_close(void *ctx, fm_conn_id id)
{
    bconn *c = bconn_by_id(ctx, id);
    if (c) {
        if (!c->closing)
            ble_finish(c);
        return;
    }
    tconn *t = conn_by_id(ctx, id);
    if (t && !t->closing)
        conn_finish(t);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    tconn *t = arg;
    fm_daemon *d = t->d;
    uint8_t buf[FM_DAEMON_READ_CHUNK];
    fm_conn_id id = t->id;
    size_t n;
    /* The node may close the connection (and t be reused) while handling a chunk. */
    while (t->used && t->id == id && !t->closing &&
           (n = evbuffer_remove(bufferevent_get_input(bev), buf, sizeof buf)) > 0)
        fm_node_conn_data(d->node, id, buf, n);
    rearm(d);
}

static void on_event(struct bufferevent *bev, short events, void *arg)
{
    tconn *t = arg;
    fm_daemon *d = t->d;
    if (events & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        t->connected = true;
        dlog(d, FM_LOG_DEBUG, "connected to %s", t->addr);
        fm_node_conn_open(d->node, t->id, true, t->addr);
    } else if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        fm_conn_id id = t->id;
        bool failed = t->outbound && !t->connected;
        if (failed)
            dlog(d, FM_LOG_DEBUG, "connect to %s failed: %s", t->addr,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        conn_free(t);
        if (failed)
            fm_node_conn_failed(d->node, id);
        else
            fm_node_conn_closed(d->node, id);
    }
    rearm(d);
}

static int io_connect(void *ctx, const char *addr, fm_conn_id *out)
{
    fm_daemon *d = ctx;
    char host[FM_NODE_MAX_ADDR + 1];
    uint16_t port;
    if (!d->stopping && strncmp(addr, FM_BLE_ADDR_PREFIX, strlen(FM_BLE_ADDR_PREFIX)) == 0)
        return ble_connect(d, addr, out);
    if (d->stopping || fm_addr_split(addr, host, sizeof host, &port))
        return FM_EINVAL;
    struct bufferevent *bev =
        bufferevent_socket_new(d->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    tconn *t = bev ? conn_new(d, bev) : NULL;
    if (!t) {
        if (bev)
            bufferevent_free(bev);
        return FM_ELIMIT;
    }
    t->outbound = true;
    snprintf(t->addr, sizeof t->addr, "%s", addr);
    bufferevent_setcb(bev, on_read, NULL, on_event, t);
    bufferevent_enable(bev, EV_READ);
    if (bufferevent_socket_connect_hostname(bev, d->dns, AF_UNSPEC, host, port) != 0) {
        conn_free(t);
        return FM_EIO;
    }
    *out = t->id;
    return 0;
}

static void addr_text(const struct sockaddr *sa, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(out, n, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const void *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(out, n, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

static uint32_t live_sockets(const fm_daemon *d)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < d->cap; i++)
        k += d->conns[i].used;
    return k;
}

/* An accepted socket as a connection: NULL (and the socket closed) if there is no room. */
static tconn *conn_accept(fm_daemon *d, evutil_socket_t fd, int opts)
{
    struct bufferevent *bev = bufferevent_socket_new(d->base, fd, opts);
    tconn *t = bev ? conn_new(d, bev) : NULL;
    if (!t) {
        if (bev)
            bufferevent_free(bev); /* closes fd */
        else
            evutil_closesocket(fd);
    }
    return t;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    (void)l, (void)len;
    fm_daemon *d = arg;
    char addr[FM_NODE_MAX_ADDR + 1];
    addr_text(sa, addr, sizeof addr);
    /* Keep room for outbound connections and the control socket: a flood is refused here,
     * before it costs more than a socket. */
    if (d->stopping || live_sockets(d) + 8 >= d->cap) {
        if (d->refused++ % 100 == 0)
            dlog(d, FM_LOG_WARN, "refusing connection from %s: too many connections (%llu so far)",
                 addr, (unsigned long long)d->refused);
        evutil_closesocket(fd);
        return;
    }
    tconn *t = conn_accept(d, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!t)
        return;
    struct bufferevent *bev = t->bev;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    t->connected = true;
    snprintf(t->addr, sizeof t->addr, "%s", addr);
    bufferevent_setcb(bev, on_read, NULL, on_event, t);
    bufferevent_enable(bev, EV_READ);
    dlog(d, FM_LOG_DEBUG, "connection from %s", addr);
    fm_node_conn_open(d->node, t->id, false, NULL); /* its source port names no peer */
    rearm(d);
}

/* ---- listeners ------------------------------------------------------------------------------ */

static int listen_on(fm_daemon *d, const char *spec)
{
    char host[FM_NODE_MAX_ADDR + 1], port_s[8];
    uint16_t port;
    if (fm_addr_split(spec, host, sizeof host, &port))
        return FM_EINVAL;
    snprintf(port_s, sizeof port_s, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV},
                    *ai;
    if (getaddrinfo(host, port_s, &hints, &ai) != 0) {
        dlog(d, FM_LOG_ERROR, "listen %s: not a numeric address", spec);
        return FM_EINVAL;
    }
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    if (ai->ai_family == AF_INET6)
        flags |= LEV_OPT_BIND_IPV6ONLY; /* IPv4 has its own listener */
    struct evconnlistener *l =
        evconnlistener_new_bind(d->base, on_accept, d, flags, 64, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!l) {
        dlog(d, FM_LOG_ERROR, "listen %s: %s", spec, strerror(errno));
        return FM_EIO;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (!d->port && getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &sl) == 0)
        d->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    d->listeners[d->nlisteners++] = l;
    dlog(d, FM_LOG_INFO, "listening on %s", spec);
    return 0;
}

static int start_listeners(fm_daemon *d)
{
    if (d->o.nlisten == 0) {
        /* Defaults: both families; a host without IPv6 still runs on IPv4. */
        int v6 = listen_on(d, "[::]:7400"), v4 = listen_on(d, "0.0.0.0:7400");
        return v6 && v4 ? FM_EIO : 0;
    }
    for (int i = 0; i < d->o.nlisten; i++) {
        int rc = listen_on(d, d->o.listen[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- control socket ------------------------------------------------------------------------- */

static void control_done(tconn *t)
{
    bufferevent_setcb(t->bev, NULL, on_drained, on_closing_event, t);
    bufferevent_enable(t->bev, EV_WRITE);
    t->closing = true;
}

static void on_control_read(struct bufferevent *bev, void *arg)
{
    tconn *t = arg;
    fm_daemon *d = t->d;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in), used;
    fm_control_request req;
    int rc = fm_control_parse(evbuffer_pullup(in, -1), len, &req, &used);
    if (rc == FM_ETRUNC)
        return; /* wait for the rest (the watermark bounds it) */
    if (rc) {
        dlog(d, FM_LOG_WARN, "control: bad request: %s", fm_strerror(rc));
        conn_free(t);
        return;
    }
    char *out = NULL, *err = NULL;
    size_t out_len = 0, err_len = 0;
    FILE *fo = open_memstream(&out, &out_len), *fe = open_memstream(&err, &err_len);
    int code = 1;
    if (d->stopping && fe)
        fprintf(fe, "fieldmesh: the node is shutting down; run the command again\n");
    else if (fo && fe) {
        fm_cli_host host = {.replica = d->r, .node = d->node};
        code = fm_cli_run(req.argc, req.argv, &host, fo, fe);
    }
    if (fo)
        fclose(fo);
    if (fe)
        fclose(fe);
    fm_control_request_free(&req);
    d->moved = UINT64_MAX; /* the command may have written: refresh digest, then shrink */
    uint8_t *resp;
    size_t rlen;
    if (fm_control_response(code, out, out_len, err, err_len, &resp, &rlen) == 0) {
        bufferevent_write(bev, resp, rlen);
        free(resp);
    }
    free(out);
    free(err);
    control_done(t);
    /* The command may have written (pushed at once) or changed membership. */
    if (!d->stopping) {
        fm_node_tick(d->node);
        rearm(d);
    }
}

static void on_control_event(struct bufferevent *bev, short events, void *arg)
{
    (void)bev, (void)events;
    conn_free(arg);
}

static void on_control_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                              int len, void *arg)
{
    (void)l, (void)sa, (void)len;
    fm_daemon *d = arg;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    /* Only this node's own user (or root) may drive it. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
        (cred.uid != geteuid() && cred.uid != 0) || live_sockets(d) + 1 >= d->cap) {
        evutil_closesocket(fd);
        return;
    }
    tconn *t = conn_accept(d, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!t)
        return;
    struct bufferevent *bev = t->bev;
    t->control = true;
    bufferevent_setwatermark(bev, EV_READ, 0, FM_CONTROL_MAX_REQUEST + 1);
    bufferevent_setcb(bev, on_control_read, NULL, on_control_event, t);
    bufferevent_enable(bev, EV_READ);
}

static int start_control(fm_daemon *d)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", d->dir, FM_CONTROL_SOCKET) >=
        (int)sizeof sa.sun_path) {
        dlog(d, FM_LOG_ERROR, "control socket path too long: %s/%s", d->dir, FM_CONTROL_SOCKET);
        return FM_ELIMIT;
    }
    snprintf(d->control_path, sizeof d->control_path, "%s", sa.sun_path);
    unlink(sa.sun_path); /* stale: we hold the directory's lock */
    mode_t old = umask(077);
    d->control = evconnlistener_new_bind(d->base, on_control_accept, d,
                                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
                                         (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (!d->control || chmod(sa.sun_path, 0600) != 0) {
        dlog(d, FM_LOG_ERROR, "control socket %s: %s", sa.sun_path, strerror(errno));
        return FM_EIO;
    }
    return 0;
}

/* ---- discovery ------------------------------------------------------------------------------ */

static void mdns_found(void *ctx, const char *addr, const uint8_t digest[FM_HASH_BYTES])
{
    fm_daemon *d = ctx;
    fm_node_peer_seen(d->node, addr, digest, 0);
    rearm(d);
}

static void mdns_lost(void *ctx, const char *addr)
{
    fm_daemon *d = ctx;
    fm_node_peer_lost(d->node, addr);
    rearm(d);
}

static void start_mdns(fm_daemon *d)
{
    uint8_t mesh[FM_ID_BYTES], dev[FM_ID_BYTES], dg[FM_HASH_BYTES];
    char name[80], fpr[FM_FINGERPRINT_LEN + 1];
    fm_buf nm;
    fm_buf_init(&nm);
    fm_replica_mesh(d->r, mesh);
    fm_replica_device_id(d->r, dev);
    fm_fingerprint(dev, fpr);
    if (fm_store_meta_get(d->r->store, "name", &nm) == 0 && nm.len && nm.len < 60)
        snprintf(name, sizeof name, "%.*s-%.6s", (int)nm.len, (const char *)nm.data, fpr);
    else
        snprintf(name, sizeof name, "fieldmesh-%.6s", fpr);
    fm_buf_free(&nm);
    fm_node_digest(d->node, dg);
    fm_mdns_cb cb = {.ctx = d, .found = mdns_found, .lost = mdns_lost, .log = node_log};
    if (fm_mdns_open(d->base, name, d->port, mesh, dev, dg, &cb, &d->mdns))
        dlog(d, FM_LOG_WARN, "mdns: could not start; static peers only");
}

/* ---- BLE connections ------------------------------------------------------------------------ */

static bconn *bconn_by_id(fm_daemon *d, fm_conn_id id)
{
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS; i++)
        if (d->bconns[i].used && d->bconns[i].id == id)
            return &d->bconns[i];
    return NULL;
}

static void ble_on_read(evutil_socket_t fd, short what, void *arg);
static void bconn_free(bconn *c);
static void ble_on_write(evutil_socket_t fd, short what, void *arg);
static void ble_on_timer(evutil_socket_t fd, short what, void *arg);

/* Takes fd (closed here on failure). */
static bconn *bconn_new(fm_daemon *d, int fd, const char *addr)
{
    bconn *c = NULL;
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS && !c; i++)
        if (!d->bconns[i].used)
            c = &d->bconns[i];
    if (!c) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->d = d;
    c->fd = fd;
    if (fd >= 0) {
        c->rev = event_new(d->base, fd, EV_READ | EV_PERSIST, ble_on_read, c);
        c->wev = event_new(d->base, fd, EV_WRITE | EV_PERSIST, ble_on_write, c);
    }
    c->timer = evtimer_new(d->base, ble_on_timer, c);
    if ((fd >= 0 && (!c->rev || !c->wev)) || !c->timer) {
        c->used = true;
        bconn_free(c);
        return NULL;
    }
    c->used = true;
    c->id = d->next_id++;
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    return c;
}

static void bconn_free(bconn *c)
{
    struct event *evs[] = {c->rev, c->wev, c->timer};
    for (size_t i = 0; i < FM_ARRAY_LEN(evs); i++)
        if (evs[i])
            event_free(evs[i]);
    if (c->connected)
        fm_blelink_free(&c->link);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

static uint32_t ble_conns(const fm_daemon *d)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS; i++)
        k += d->bconns[i].used;
    return k;
}

/* The channel is up: its MTUs size the packets. */
static void ble_link_up(bconn *c)
{
    size_t omtu = FM_BLELINK_MIN_MTU, imtu = FM_BLELINK_MAX_MTU;
    if (fm_blelink_mtu(c->fd, &omtu, &imtu))
        dlog(c->d, FM_LOG_WARN, "%s: no L2CAP MTU; sending %zu-byte packets", c->addr, omtu);
    fm_blelink_init(&c->link, c->fd, omtu, imtu);
    c->connected = true;
    dlog(c->d, FM_LOG_DEBUG, "%s: BLE channel up (%s, MTU out %zu in %zu)", c->addr,
         c->outbound ? "outbound" : "inbound", omtu, imtu);
}

/* The link is gone under the node: free it and say so (from a loop callback, never an io one). */
static void ble_drop(bconn *c)
{
    fm_daemon *d = c->d;
    fm_conn_id id = c->id;
    bool report = !c->closing;
    dlog(d, FM_LOG_DEBUG, "%s: BLE channel closed", c->addr);
    bconn_free(c);
    if (report && d->node)
        fm_node_conn_closed(d->node, id);
}

static void ble_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    bconn *c = arg;
    fm_daemon *d = c->d;
    fm_conn_id id = c->id;
    uint8_t buf[FM_DAEMON_READ_CHUNK];
    if (c->dead) {
        ble_drop(c);
        rearm(d);
        return;
    }
    /* Bounded per turn; the node may close the channel (and c be reused) on any packet. */
    for (int i = 0; i < 64 && c->used && c->id == id && !c->closing; i++) {
        int n = fm_blelink_recv(&c->link, buf, sizeof buf);
        if (n == 0)
            break;
        if (n < 0) {
            ble_drop(c);
            break;
        }
        fm_node_conn_data(d->node, id, buf, (size_t)n);
    }
    rearm(d);
}

static void ble_connected(bconn *c)
{
    fm_daemon *d = c->d;
    int why = 0;
    fm_conn_id id = c->id;
    evtimer_del(c->timer);
    event_del(c->wev);
    if (fm_ble_connect_result(c->fd, &why)) {
        dlog(d, FM_LOG_DEBUG, "BLE connect to %s failed: %s", c->addr, strerror(why));
        bconn_free(c);
        fm_node_conn_failed(d->node, id);
        return;
    }
    ble_link_up(c);
    event_add(c->rev, NULL);
    fm_node_conn_open(d->node, id, true, c->addr);
}

static void ble_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    bconn *c = arg;
    fm_daemon *d = c->d;
    if (!c->connected) {
        ble_connected(c);
    } else {
        int rc = fm_blelink_flush(&c->link);
        if (rc < 0)
            ble_drop(c);
        else if (rc == 0 && c->closing)
            bconn_free(c); /* the last bytes are out */
        else if (rc == 0)
            event_del(c->wev);
    }
    rearm(d);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Opens the socket of an outbound channel and waits for it to connect. 0 or an FM_ error (c is
 * left to the caller). */
static int ble_dial(bconn *c)
{
    fm_daemon *d = c->d;
    int fd;
    int rc = d->ble ? fm_ble_connect(d->ble, c->addr, &fd) : FM_EINVAL;
    if (rc)
        return rc;
    c->fd = fd;
    c->rev = event_new(d->base, fd, EV_READ | EV_PERSIST, ble_on_read, c);
    c->wev = event_new(d->base, fd, EV_WRITE | EV_PERSIST, ble_on_write, c);
    if (!c->rev || !c->wev)
        return FM_ENOMEM;
    c->waiting = false;
    struct timeval tv = {FM_BLE_CONNECT_MS / 1000, 0};
    event_add(c->wev, NULL);
    evtimer_add(c->timer, &tv);
    dlog(d, FM_LOG_DEBUG, "BLE connect to %s", c->addr);
    return 0;
}

/* An outbound channel whose connect is under way. */
static bool ble_dialling(const fm_daemon *d)
{
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS; i++) {
        const bconn *o = &d->bconns[i];
        if (o->used && o->outbound && !o->waiting && !o->connected)
            return true;
    }
    return false;
}

/* Whether a dial to addr waits: for the peer's own link (fm_ble_dial_later, until wait_until),
 * or for another dial of ours to finish: one LE link set up at a time per adapter (the kernel
 * and btvirt mix up two links that complete together). */
static bool ble_must_wait(const fm_daemon *d, const char *addr, uint64_t wait_until)
{
    return ble_dialling(d) || (fm_ble_dial_later(d->ble, addr) && mono_ms() < wait_until);
}

/* A waiting dial: go once nothing holds it back (ble_must_wait), else ask again. */
static void ble_wait_tick(bconn *c)
{
    fm_daemon *d = c->d;
    fm_conn_id id = c->id;
    if (d->ble && ble_must_wait(d, c->addr, c->wait_until_ms)) {
        struct timeval tv = {0, FM_BLE_DIAL_POLL_MS * 1000};
        evtimer_add(c->timer, &tv);
        return;
    }
    if (ble_dial(c)) {
        bconn_free(c);
        if (d->node)
            fm_node_conn_failed(d->node, id);
    }
}

static void ble_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    bconn *c = arg;
    fm_daemon *d = c->d;
    fm_conn_id id = c->id;
    if (c->waiting) {
        ble_wait_tick(c);
        rearm(d);
        return;
    }
    bool failed = c->outbound && !c->connected;
    if (failed)
        dlog(d, FM_LOG_DEBUG, "BLE connect to %s timed out", c->addr);
    bconn_free(c); /* a connect that took too long, or a close that lingered */
    if (failed)
        fm_node_conn_failed(d->node, id);
    rearm(d);
}

/* From io->send: queue; a socket error is reported by the read callback, later. */
static void ble_send(bconn *c, const uint8_t *data, size_t len)
{
    if (c->closing || c->dead || !c->connected)
        return;
    int rc = fm_blelink_send(&c->link, data, len);
    if (rc > 0) {
        event_add(c->wev, NULL);
    } else if (rc < 0) {
        if (rc == FM_ELIMIT)
            dlog(c->d, FM_LOG_WARN, "%s: peer does not read; dropping the channel", c->addr);
        c->dead = true;
        shutdown(c->fd, SHUT_RDWR);
        event_active(c->rev, EV_READ, 0);
    }
}

/* From io->close: flush what is queued (bounded by the linger time), then free. */
static void ble_finish(bconn *c)
{
    c->closing = true;
    if (!c->connected || fm_blelink_queued(&c->link) == 0 || c->dead) {
        bconn_free(c);
        return;
    }
    event_del(c->rev);
    event_add(c->wev, NULL);
    struct timeval tv = {FM_DAEMON_LINGER_MS / 1000, 0};
    evtimer_add(c->timer, &tv);
}

static int ble_connect(fm_daemon *d, const char *addr, fm_conn_id *out)
{
    if (!d->ble)
        return FM_EINVAL;
    if (ble_conns(d) >= FM_BLE_MAX_CONNS)
        return FM_ELIMIT;
    uint8_t mac[6];
    bool random;
    uint16_t psm;
    if (fm_ble_parse_addr(addr, mac, &random, &psm) || psm < FM_BLE_PSM_MIN)
        return FM_EINVAL;
    bconn *c = bconn_new(d, -1, addr);
    if (!c)
        return FM_ENOMEM;
    c->outbound = true;
    c->waiting = true; /* not counted by ble_dialling while deciding */
    uint64_t until = mono_ms() + FM_BLE_DIAL_WAIT_MS;
    if (ble_must_wait(d, addr, until)) {
        c->wait_until_ms = until;
        struct timeval tv = {0, FM_BLE_DIAL_POLL_MS * 1000};
        evtimer_add(c->timer, &tv);
        dlog(d, FM_LOG_DEBUG, "BLE connect to %s: waiting (%s)", addr,
             ble_dialling(d) ? "another connect under way" : "lower address: its link first");
    } else {
        int rc = ble_dial(c);
        if (rc) {
            bconn_free(c);
            return rc;
        }
    }
    *out = c->id;
    return 0;
}

static void ble_accepted(void *ctx, int fd, const char *addr)
{
    fm_daemon *d = ctx;
    if (d->stopping || !d->node || ble_conns(d) >= FM_BLE_MAX_CONNS) {
        dlog(d, FM_LOG_DEBUG, "refusing BLE channel from %s: %u open", addr, ble_conns(d));
        close(fd);
        return;
    }
    bconn *c = bconn_new(d, fd, addr);
    if (!c)
        return;
    ble_link_up(c);
    event_add(c->rev, NULL);
    dlog(d, FM_LOG_DEBUG, "BLE channel from %s", addr);
    fm_node_conn_open(d->node, c->id, false, addr);
    rearm(d);
}

static void ble_found(void *ctx, const char *addr, const uint8_t digest[FM_HASH_BYTES])
{
    fm_daemon *d = ctx;
    if (!d->node)
        return;
    fm_node_peer_seen(d->node, addr, digest, 0);
    rearm(d);
}

static void ble_lost(void *ctx, const char *addr)
{
    fm_daemon *d = ctx;
    if (!d->node)
        return;
    fm_node_peer_lost(d->node, addr);
    rearm(d);
}

/* No adapter, no bluetoothd: ble.c has logged why; the other transports carry on. */
static void start_ble(fm_daemon *d)
{
    uint8_t mesh[FM_ID_BYTES], dg[FM_HASH_BYTES];
    fm_replica_mesh(d->r, mesh);
    fm_node_digest(d->node, dg);
    fm_ble_cb cb = {
        .ctx = d, .found = ble_found, .lost = ble_lost, .accepted = ble_accepted, .log = node_log};
    if (fm_ble_open(d->base, d->o.ble_adapter[0] ? d->o.ble_adapter : NULL, mesh, dg, &cb, &d->ble))
        dlog(d, FM_LOG_DEBUG, "ble: off; other transports only");
}

/* ---- start and stop ------------------------------------------------------------------------- */

static void on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    event_base_loopbreak(((fm_daemon *)arg)->base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    fm_daemon *d = arg;
    if (d->stopping)
        return;
    dlog(d, FM_LOG_INFO, "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    d->stopping = true;
    evtimer_del(d->timer);
    evtimer_del(d->digest_timer); /* both would reach the node, which is closed below */
    evtimer_del(d->idle_timer);
    fm_mdns_close(d->mdns); /* goodbye packets: peers drop us within a second */
    d->mdns = NULL;
    fm_ble_close(d->ble); /* the advertisement goes */
    d->ble = NULL;
    /* Single-threaded: no transaction is open here. Sessions end with their final frame. */
    fm_node_close(d->node);
    d->node = NULL;
    for (int i = 0; i < d->nlisteners; i++)
        evconnlistener_free(d->listeners[i]);
    d->nlisteners = 0;
    if (d->control) {
        evconnlistener_free(d->control);
        d->control = NULL;
        unlink(d->control_path);
    }
    /* Let queued final frames flush, briefly. */
    struct timeval tv = {1, 0};
    evtimer_add(d->stop_timer, &tv);
    bool busy = false;
    for (uint32_t i = 0; i < d->cap; i++)
        busy |= d->conns[i].used;
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS; i++)
        busy |= d->bconns[i].used;
    if (!busy)
        event_base_loopbreak(d->base);
}

static int open_replica(fm_daemon *d)
{
    char key[4096], db[4096];
    snprintf(key, sizeof key, "%s/device.key", d->dir);
    snprintf(db, sizeof db, "%s/store.db", d->dir);
    int rc = fm_identity_load(key, &d->id);
    if (rc) {
        dlog(d, FM_LOG_ERROR, "%s: %s (run 'fieldmesh init --name NAME' first)", key,
             fm_strerror(rc));
        return rc;
    }
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = d->id};
    if ((rc = fm_replica_open(&cfg, &d->r))) {
        dlog(d, FM_LOG_ERROR, "%s: %s", db, fm_strerror(rc));
        return rc;
    }
    uint8_t mesh[FM_ID_BYTES];
    if (fm_replica_mesh(d->r, mesh) != 0) {
        dlog(d, FM_LOG_ERROR,
             "this device belongs to no mesh: run 'fieldmesh mesh create' or "
             "'fieldmesh join CERT' first");
        return FM_ESTATE;
    }
    return 0;
}

static int open_node(fm_daemon *d)
{
    d->io = (fm_node_io){
        .ctx = d, .send = io_send, .close = io_close, .connect = io_connect, .log = node_log};
    fm_node_config cfg = {.version = FM_NODE_CONFIG_VERSION,
                          .replica = d->r,
                          .io = &d->io,
                          .subs = d->o.nsubs ? d->o.subs : NULL,
                          .nsubs = d->o.nsubs,
                          .subscribe_none = d->o.subscribe_none,
                          .max_conns = d->o.max_conns,
                          .anti_entropy_ms = d->o.anti_entropy_ms,
                          .lazy_push = d->o.lazy_push,
                          .push_delay_ms = d->o.push_delay_ms};
    int rc = fm_node_open(&cfg, &d->node);
    if (rc) {
        dlog(d, FM_LOG_ERROR, "node: %s", fm_strerror(rc));
        return rc;
    }
    for (int i = 0; i < d->o.npeers; i++)
        fm_node_peer_seen(d->node, d->o.peers[i], NULL, FM_PEER_STATIC);
    return 0;
}

/* One node per directory: a second `run` finds the lock held. */
static int take_lock(fm_daemon *d)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/node.lock", d->dir);
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0 || flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        dlog(d, FM_LOG_ERROR, "%s: %s", path,
             d->lock_fd < 0 ? strerror(errno) : "a node is already running in this directory");
        return FM_EEXISTS;
    }
    return 0;
}

static void daemon_free(fm_daemon *d)
{
    fm_mdns_close(d->mdns);
    fm_ble_close(d->ble);
    fm_node_close(d->node);
    for (uint32_t i = 0; i < FM_BLE_MAX_CONNS; i++)
        if (d->bconns[i].used)
            bconn_free(&d->bconns[i]);
    for (uint32_t i = 0; d->conns && i < d->cap; i++)
        if (d->conns[i].used)
            conn_free(&d->conns[i]);
    /* Deferred bufferevent callbacks hold references: let them run so the frees complete. */
    if (d->base)
        event_base_loop(d->base, EVLOOP_NONBLOCK);
    free(d->conns);
    for (int i = 0; i < d->nlisteners; i++)
        evconnlistener_free(d->listeners[i]);
    if (d->control) {
        evconnlistener_free(d->control);
        unlink(d->control_path);
    }
    struct event *evs[] = {d->timer,        d->sigint,     d->sigterm,
                           d->digest_timer, d->stop_timer, d->idle_timer};
    for (size_t i = 0; i < FM_ARRAY_LEN(evs); i++)
        if (evs[i])
            event_free(evs[i]);
    if (d->dns)
        evdns_base_free(d->dns, 0);
    if (d->base)
        event_base_free(d->base);
    fm_replica_close(d->r);
    fm_identity_free(d->id);
    fm_buf_spares_release();
    if (d->lock_fd > 0)
        close(d->lock_fd);
}

int fm_daemon_main(const char *dir, int argc, char **argv, FILE *err)
{
    fm_daemon d = {.dir = dir, .err = err, .next_id = 1, .lock_fd = -1};
    fm_opts_defaults(&d.o);
    char msg[512] = "";
    if (fm_opts_parse_args(&d.o, argc, argv, msg, sizeof msg)) {
        fprintf(err, "fieldmesh: %s\n", msg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int rc = take_lock(&d);
    if (!rc)
        rc = open_replica(&d);
    d.cap = 2 * FM_NODE_MAX_CONNS;
    if (!rc && (!(d.conns = calloc(d.cap, sizeof *d.conns)) || !(d.base = event_base_new()) ||
                !(d.dns = evdns_base_new(d.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                     EVDNS_BASE_DISABLE_WHEN_INACTIVE))))
        rc = FM_ENOMEM;
    if (!rc) {
        d.timer = evtimer_new(d.base, on_timer, &d);
        d.digest_timer = evtimer_new(d.base, on_digest, &d);
        d.stop_timer = evtimer_new(d.base, on_stop_timer, &d);
        d.idle_timer = evtimer_new(d.base, on_idle, &d);
        d.sigint = evsignal_new(d.base, SIGINT, on_signal, &d);
        d.sigterm = evsignal_new(d.base, SIGTERM, on_signal, &d);
        if (!d.timer || !d.digest_timer || !d.stop_timer || !d.idle_timer || !d.sigint ||
            !d.sigterm || event_add(d.sigint, NULL) || event_add(d.sigterm, NULL))
            rc = FM_ENOMEM;
    }
    if (!rc)
        rc = open_node(&d);
    if (!rc)
        rc = start_listeners(&d);
    if (!rc)
        rc = start_control(&d);
    if (!rc) {
        char fpr[FM_FINGERPRINT_LEN + 1];
        uint8_t dev[FM_ID_BYTES];
        fm_replica_device_id(d.r, dev);
        fm_fingerprint(dev, fpr);
        dlog(&d, FM_LOG_INFO, "node %s running in %s (%d static peer%s, mdns %s)", fpr, dir,
             d.o.npeers, d.o.npeers == 1 ? "" : "s", d.o.mdns ? "on" : "off");
        if (d.o.mdns)
            start_mdns(&d);
        if (d.o.ble)
            start_ble(&d);
        fm_node_tick(d.node);
        rearm(&d);
        event_base_dispatch(d.base);
        dlog(&d, FM_LOG_INFO, "stopped");
    }
    daemon_free(&d);
    return rc ? 1 : 0;
}
