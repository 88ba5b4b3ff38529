/*
 * node.c — the node core (node.h): connections, sessions, the sync protocol (proto.h), eager
 * push, anti-entropy and peer selection, as a deterministic state machine. Time and randomness
 * come only from the replica's fm_env; bytes leave only through fm_node_io.
 *
 * Per connection and collection the node keeps `known`: a lower bound of what the peer holds
 * (its VECTOR, raised by every batch either side sent on this connection). What the peer lacks
 * is always recomputed from `known` against the store, so nothing is queued in memory that a
 * cut connection could lose. Eager push is the fast path of the same rule: a batch just applied
 * goes straight out when it is the next one of its feed for the peer and its context is already
 * covered; anything else marks the collection dirty and the pump exports it from the store.
 */
#include "node/node.h"

#include "crypto/cert.h"
#include "crypto/identity.h"
#include "crypto/session.h"
#include "node/proto.h"
#include "node/replica.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per connection and collection. */
typedef struct csync {
    char name[FM_MAX_COLLECTION_LEN + 1];
    uint32_t len;
    uint32_t hash;    /* fm_hash32 of the name */
    uint8_t prio;     /* the peer's priority for it */
    bool known_valid; /* known reflects a VECTOR, an equal SUMMARY, or the peer's lack of it */
    bool dirty;       /* the peer may lack batches we hold */
    bool vec_sent;    /* our VECTOR went out in this exchange: no reply needed */
    bool vec_defer;   /* our VECTOR waits while another peer sends us what we lack */
    bool vec_defer_reply;
    uint64_t vec_defer_due;
    fm_vv known;
} csync;

/* A batch announced in IHAVE: waiting to go out, or (in fm_node.missing) announced by a peer,
 * lacking here, grafted at due unless it arrives first. */
typedef struct lazy_ent {
    uint8_t coll[FM_MAX_COLLECTION_LEN];
    uint32_t len;
    uint8_t author[FM_ID_BYTES];
    uint64_t seq;
    fm_conn_id conn; /* missing: the announcer */
    uint64_t due;    /* missing: when to graft */
} lazy_ent;

/* An announcement waiting to go out. Its collection's name is in the connection's ihave_names,
 * once for a run of entries of one collection: as a lazy_ent (128 bytes, half of it the name) a
 * busy relay's queue, reallocated and faulted in again after every flush, was 2.7 times larger. */
typedef struct ihave_ent {
    uint8_t author[FM_ID_BYTES];
    uint64_t seq;
    uint32_t name_off, name_len; /* in ihave_names */
} ihave_ent;

typedef struct conn {
    bool used;
    fm_conn_id id;
    bool initiator;
    bool closing;
    int err;  /* first protocol error seen while handling a frame */
    int peer; /* index into peers, or -1 */
    char addr[FM_NODE_MAX_ADDR + 1];
    fm_session *s;
    fm_buf out;
    bool live;         /* HELLO sent (session established) */
    bool hello_rcvd;   /* peer's HELLO processed */
    bool summary_rcvd; /* a SUMMARY processed: collections it did not name, the peer lacks */
    bool recheck;      /* membership changed while its input was being handled */
    bool has_id;
    uint8_t peer_id[FM_ID_BYTES];
    char peer_name[FM_MAX_DEVICE_NAME + 1];
    /* peer's subscriptions */
    bool peer_all, peer_none;
    uint32_t npeer_subs;
    char (*peer_subs)[FM_MAX_COLLECTION_LEN + 1];
    uint8_t *peer_prio;
    uint64_t peer_window;
    uint64_t peer_caps;
    uint64_t members_epoch; /* our membership epoch the peer was last sent (0: never) */
    /* flow control: BATCHES payload bytes */
    uint64_t sent_bytes, peer_acked; /* what we sent, what the peer acknowledged */
    uint64_t recv_bytes, acked_sent; /* what we processed, what we acknowledged */
    csync *cs;
    uint32_t ncs, ccs;
    uint32_t ndefer; /* csyncs whose VECTOR waits (vec_defer) */
    /* cs by name hash: index + 1, 0 empty (open addressing, at most half full). A thousand
     * collections made the scan per batch per connection a walk of ~100 KB. */
    uint16_t *csmap;
    uint32_t csmap_cap;
    uint64_t round;
    uint64_t opened_ms, last_rx_ms, last_tx_ms, last_synced_ms, ae_at;
    uint64_t synced_checked_ms; /* when note_synced last compared vectors after BATCHES */
    uint64_t bytes_in, bytes_out;
    /* Lazy push (Plumtree): a peer that PRUNEd us gets IHAVE for what we apply, not BATCHES,
     * until it grafts; we PRUNE a peer whose push we already held. */
    bool lazy, pruned;
    ihave_ent *ihave; /* entries waiting for the next IHAVE */
    uint32_t nihave, cihave;
    fm_buf ihave_names; /* their collections' names */
    uint64_t ihave_at;  /* when they go out (0: none wait) */
    /* The peer's own sessions, from its last PEERS: device id prefixes, ascending. */
    bool nbr_known;
    uint32_t nnbr;
    uint8_t nbr[FM_PROTO_MAX_PEERS * FM_PROTO_PEER_PREFIX];
} conn;

typedef struct peer {
    char addr[FM_NODE_MAX_ADDR + 1];
    bool is_static, present, has_digest, has_id;
    uint8_t digest[FM_HASH_BYTES];
    uint8_t id[FM_ID_BYTES];
    uint64_t last_seen_ms, last_synced_ms, retry_at;
    uint32_t backoff_ms;
    int conn; /* index into conns, or -1 */
} peer;

typedef struct pump_ctx pump_ctx;

struct fm_node {
    fm_replica *r;
    const fm_env *env;
    fm_node_io io;
    fm_node_sub *subs;
    char (*sub_names)[FM_MAX_COLLECTION_LEN + 1];
    size_t nsubs;
    bool sub_all, sub_none;
    uint32_t max_conns, max_total, ae_ms, idle_ms, window, bmin, bmax;
    uint8_t cert[FM_MAX_CERT_BYTES];
    size_t cert_len;
    const fm_membership *mesh; /* the view sessions borrow; sessions die if it is replaced */
    uint64_t member_epoch;
    conn *conns;
    peer *peers;
    uint32_t npeers, cpeers; /* grown as peers are seen, up to FM_NODE_MAX_PEERS */
    fm_conn_id next_local_id;
    fm_node_stats st;
    /* fm_node_digest's last result, for state generation digest_gen (hashing every vector
     * at every tick was a twentieth of a busy node's time) */
    uint8_t digest[FM_HASH_BYTES];
    uint64_t digest_gen, digest_ms;
    bool digest_valid;
    int lazy_push;  /* fm_node_config.lazy_push: whether we prune (conn.lazy: the peer pruned us) */
    int push_cover; /* fm_node_config.push_cover */
    uint64_t commit_at;     /* when batches a group commit holds are committed (0: none wait) */
    uint64_t group_at;      /* when the open group began */
    uint32_t group_batches; /* the replica's txn_batches when we last looked */
    uint64_t rollbacks;     /* the replica's rollbacks count we last saw */
    lazy_ent *missing;      /* announced, lacking: a FIFO in due order from missing_head */
    uint32_t nmissing, cmissing, missing_head;
    /* scratch of graft_due: FM_PROTO_MAX_IHAVE entries, once one is due */
    uint8_t (*graft_authors)[FM_ID_BYTES];
    /* batches the replica applied, pushed at push_at (0: none wait): each as its length, the
     * id prefix of the peer that sent it (zeros: none) and its bytes */
    fm_buf applied;
    /* The BATCHES frame being ingested: its sender, and its batches not yet seen applied. */
    const uint8_t *src_id;
    const fm_bytes *src_arr;
    uint32_t src_n, src_next;
    bool peers_changed; /* our established sessions changed: PEERS is due */
    /* Deferred VECTORs (csync.vec_defer) on all connections; when the first falls due, and
     * whether a feeding connection went (every deferral is looked at again). */
    uint32_t ndefer;
    uint64_t defer_at;
    bool defer_scan;
    uint64_t push_at;
    uint32_t push_delay_ms;
    pump_ctx *px; /* per connection: its frame of pushed batches */
    fm_buf scratch;
    fm_batch b;
    fm_batch fb; /* scratch of send_feed (b may be the batch being pushed) */
    /* A received BATCHES or MIXED frame, bcap batches of room (frame_room): sized to the
     * largest frame yet, not to the protocol's limit (300 KB a node, mostly unused). */
    fm_bytes *barr;
    fm_proto_name *bnames; /* the collection of each batch in barr (MIXED) */
    int *bres;
    uint32_t *bops;                  /* ops of each batch in barr */
    uint8_t (*bhash)[FM_HASH_BYTES]; /* hash of each batch in barr, from its peek */
    uint32_t bcap;
    int depth;       /* > 0 while inside a node entry point */
    int active_conn; /* conn whose fm_session_input is running, or -1 */
    uint64_t connect_at;
};

static void node_log(fm_node *n, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void node_log(fm_node *n, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fm_vlog(n->io.log, n->io.ctx, level, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(const fm_node *n)
{
    return n->env->now_ms(n->env->ctx);
}

/* Time since `since`; a wall clock stepped backwards counts as no time passed. */
static uint64_t elapsed(uint64_t now, uint64_t since)
{
    return now > since ? now - since : 0;
}

/* base +- 25%, from the env's randomness. */
static uint64_t jitter(fm_node *n, uint64_t base)
{
    uint32_t r;
    n->env->random(n->env->ctx, &r, sizeof r);
    uint64_t span = base / 2;
    return base - base / 4 + (span ? r % (span + 1) : 0);
}

/* ---- subscriptions -------------------------------------------------------------------------- */

/* -1 if this node does not take the collection from peers, else its priority. */
static int my_prio(const fm_node *n, const uint8_t *name, uint32_t len)
{
    if (n->sub_none)
        return -1;
    if (n->sub_all)
        return FM_PRIO_NORMAL;
    for (size_t i = 0; i < n->nsubs; i++)
        if (strlen(n->sub_names[i]) == len && memcmp(n->sub_names[i], name, len) == 0)
            return n->subs[i].prio;
    return -1;
}

static int peer_prio(const conn *c, const uint8_t *name, uint32_t len)
{
    if (c->peer_none)
        return -1;
    if (c->peer_all)
        return FM_PRIO_NORMAL;
    for (uint32_t i = 0; i < c->npeer_subs; i++)
        if (strlen(c->peer_subs[i]) == len && memcmp(c->peer_subs[i], name, len) == 0)
            return c->peer_prio[i];
    return -1;
}

/* A collection this node offers to peers: one it subscribes to, or one holding only what it
 * wrote itself (a node relays only what it subscribes to). */
static bool offers(fm_node *n, const fm_coll *c)
{
    if (my_prio(n, (const uint8_t *)c->name, c->name_len) >= 0)
        return true;
    return c->vv.n == 1 && memcmp(c->vv.e[0].author, n->r->device, FM_ID_BYTES) == 0;
}

/* ---- connections: output -------------------------------------------------------------------- */

static void conn_flush(fm_node *n, conn *c)
{
    if (!c->out.len || c->closing)
        return;
    c->bytes_out += c->out.len;
    n->st.bytes_out += c->out.len;
    c->last_tx_ms = now_ms(n);
    n->io.send(n->io.ctx, c->id, c->out.data, c->out.len);
    fm_buf_recycle(&c->out, FM_NODE_KEEP_BUF_BYTES); /* io.send copied the bytes */
}

/* Encrypts one message into the connection's output; flushed at once unless the connection's
 * input is being processed (then when it returns). */
static int conn_send(fm_node *n, conn *c, const fm_buf *msg)
{
    if (c->closing)
        return FM_ECLOSED;
    if (msg->oom)
        return FM_ENOMEM;
    int rc = fm_session_send(c->s, msg->data, msg->len, &c->out);
    if (rc)
        return rc;
    n->st.frames_out++;
    if (n->active_conn != (int)(c - n->conns))
        conn_flush(n, c);
    return 0;
}

static void csync_free_all(conn *c)
{
    for (uint32_t i = 0; i < c->ncs; i++)
        fm_vv_free(&c->cs[i].known);
    free(c->cs);
    free(c->csmap);
    c->cs = NULL;
    c->csmap = NULL;
    c->ncs = c->ccs = c->csmap_cap = 0;
}

static void peer_backoff(fm_node *n, peer *p, bool failed)
{
    uint64_t t = now_ms(n);
    if (failed) {
        p->backoff_ms = p->backoff_ms ? FM_MIN(p->backoff_ms * 2, n->bmax) : n->bmin;
        p->retry_at = t + jitter(n, p->backoff_ms);
    } else {
        p->retry_at = t + jitter(n, n->bmin);
    }
    if (n->connect_at > p->retry_at)
        n->connect_at = p->retry_at;
}

/* Forgets a connection. failed: it ended before the session was useful (the peer backs off). */
static void conn_drop(fm_node *n, conn *c, bool failed)
{
    n->peers_changed |= c->hello_rcvd;
    if (c->peer >= 0) {
        peer *p = &n->peers[c->peer];
        p->conn = -1;
        if (c->last_synced_ms)
            p->last_synced_ms = c->last_synced_ms;
        peer_backoff(n, p, failed);
    }
    fm_session_free(c->s);
    fm_buf_free(&c->out);
    free(c->ihave);
    fm_buf_free(&c->ihave_names);
    FM_ASSERT(n->ndefer >= c->ndefer);
    n->ndefer -= c->ndefer;
    n->defer_scan |= n->ndefer > 0; /* it may have been what they waited for */
    csync_free_all(c);
    free(c->peer_subs);
    free(c->peer_prio);
    memset(c, 0, sizeof *c);
    c->peer = -1;
    n->st.conns--;
}

/* Closes a connection on our side: io->close, then forget it. The connection whose input is
 * being processed is only marked; conn_data closes it when the session returns. */
static void conn_close(fm_node *n, conn *c, int why)
{
    if (n->active_conn == (int)(c - n->conns)) {
        c->err = c->err ? c->err : why ? why : FM_ECLOSED;
        return;
    }
    if (why)
        node_log(n, FM_LOG_INFO, "conn %llu (%s): closing: %s", (unsigned long long)c->id,
                 c->addr[0] ? c->addr : "inbound", fm_strerror(why));
    if (c->s && fm_session_state(c->s) == FM_SESSION_ESTABLISHED && !why)
        fm_session_close(c->s, &c->out); /* the final frame, after whatever is queued */
    conn_flush(n, c);
    c->closing = true;
    n->io.close(n->io.ctx, c->id);
    conn_drop(n, c, why != 0 && !c->live);
}

static conn *conn_find(fm_node *n, fm_conn_id id)
{
    for (uint32_t i = 0; i < n->max_total; i++)
        if (n->conns[i].used && n->conns[i].id == id)
            return &n->conns[i];
    return NULL;
}

/* ---- per-collection sync state -------------------------------------------------------------- */

_Static_assert(FM_MAX_COLLECTIONS < UINT16_MAX, "csmap holds csync indexes + 1 in 16 bits");

/* The slot of a name in csmap: its csync's, or the empty one where it would go. */
static uint16_t *csmap_slot(const conn *c, const uint8_t *name, uint32_t len, uint32_t h)
{
    for (uint32_t i = h & (c->csmap_cap - 1);; i = (i + 1) & (c->csmap_cap - 1)) {
        uint16_t k = c->csmap[i];
        if (!k)
            return &c->csmap[i];
        const csync *s = &c->cs[k - 1];
        if (s->hash == h && s->len == len && memcmp(s->name, name, len) == 0)
            return &c->csmap[i];
    }
}

static bool csmap_grow(conn *c)
{
    uint32_t cap = c->csmap_cap ? c->csmap_cap * 2 : 16;
    uint16_t *m = fm_calloc(cap, sizeof *m);
    if (!m)
        return false;
    free(c->csmap);
    c->csmap = m;
    c->csmap_cap = cap;
    for (uint32_t i = 0; i < c->ncs; i++)
        *csmap_slot(c, (const uint8_t *)c->cs[i].name, c->cs[i].len, c->cs[i].hash) =
            (uint16_t)(i + 1);
    return true;
}

static csync *csync_find(const conn *c, const uint8_t *name, uint32_t len)
{
    uint16_t *slot = c->csmap_cap ? csmap_slot(c, name, len, fm_hash32(name, len)) : NULL;
    return slot && *slot ? &c->cs[*slot - 1] : NULL;
}

/* The connection's csync of a collection, made if it has none (NULL: no memory, or the limit). */
static csync *csync_get(conn *c, const uint8_t *name, uint32_t len)
{
    uint32_t h = fm_hash32(name, len);
    uint16_t *slot = c->csmap_cap ? csmap_slot(c, name, len, h) : NULL;
    if (slot && *slot)
        return &c->cs[*slot - 1];
    if (c->ncs >= FM_MAX_COLLECTIONS)
        return NULL;
    if ((c->ncs + 1) * 2 > c->csmap_cap) {
        if (!csmap_grow(c))
            return NULL;
        slot = csmap_slot(c, name, len, h);
    }
    if (fm_grow((void **)&c->cs, c->ncs, &c->ccs, sizeof *c->cs))
        return NULL;
    *slot = (uint16_t)(c->ncs + 1);
    csync *s = &c->cs[c->ncs++];
    memset(s, 0, sizeof *s);
    memcpy(s->name, name, len);
    s->len = len;
    s->hash = h;
    int pp = peer_prio(c, name, len);
    s->prio = pp < 0 ? FM_PRIO_BULK : (uint8_t)pp;
    /* Unnamed in the peer's last SUMMARY: it held none then, so empty is a true lower bound. */
    s->known_valid = c->summary_rcvd;
    fm_vv_init(&s->known);
    return s;
}

static fm_coll *coll_of(fm_node *n, const uint8_t *name, uint32_t len)
{
    return fm_state_coll(&n->r->st, name, len);
}

/* ---- sending batches ------------------------------------------------------------------------ */

/* A message of bin-encoded records being filled: the batches of one collection (BATCHES) or
 * membership records (MEMBERS, s NULL). */
typedef struct rec_list {
    fm_node *n;
    conn *c;
    csync *s;
    fm_buf body; /* the records, each already bin-encoded */
    uint32_t count;
} rec_list;

static int rec_list_add(rec_list *l, const uint8_t *p, size_t len)
{
    fm_wr w;
    fm_wr_init(&w, &l->body);
    fm_wr_bin(&w, p, len);
    if (l->body.oom)
        return FM_ENOMEM;
    l->count++;
    return 0;
}

/* Sends what was added as one message (nothing if empty); *sent gets its size. */
static int rec_list_flush(rec_list *l, size_t *sent)
{
    *sent = 0;
    if (!l->count)
        return 0;
    fm_buf *msg = &l->n->scratch;
    fm_buf_reset(msg);
    fm_wr w;
    fm_wr_init(&w, msg);
    if (l->s)
        fm_proto_batches_begin(&w, (const uint8_t *)l->s->name, l->s->len, l->count);
    else
        fm_proto_members_begin(&w, l->count);
    fm_wr_bytes_raw(&w, l->body.data, l->body.len);
    int rc = conn_send(l->n, l->c, msg);
    if (!rc)
        *sent = msg->len;
    fm_buf_reset(&l->body);
    l->count = 0;
    return rc;
}

struct pump_ctx {
    rec_list l;
    int err;
    bool gap; /* a batch went out whose context the peer may lack */
    /* A push to a peer that takes MIXED: the closed groups of other collections, which go out
     * in one frame with the open one in l. */
    bool mix;
    fm_buf mixed;
    uint32_t groups, mixed_count;
    uint32_t last_cs; /* the connection's csync that push_one found last, index + 1 (0: none) */
};

/* Bytes of batches waiting in x to go out. */
static size_t pump_pending(const pump_ctx *x)
{
    return x->mixed.len + x->l.body.len;
}

/* Closes the open group of a MIXED frame: l's batches, of collection l.s. */
static int group_close(pump_ctx *x)
{
    rec_list *l = &x->l;
    if (!l->count)
        return 0;
    fm_wr w;
    fm_wr_init(&w, &x->mixed);
    fm_proto_mixed_group(&w, (const uint8_t *)l->s->name, l->s->len, l->count);
    fm_wr_bytes_raw(&w, l->body.data, l->body.len);
    if (x->mixed.oom)
        return FM_ENOMEM;
    x->groups++;
    x->mixed_count += l->count;
    fm_buf_reset(&l->body);
    l->count = 0;
    return 0;
}

static int mixed_flush(pump_ctx *x)
{
    int rc = group_close(x);
    if (rc || !x->groups)
        return rc;
    fm_buf *msg = &x->l.n->scratch;
    fm_buf_reset(msg);
    fm_wr w;
    fm_wr_init(&w, msg);
    fm_proto_mixed_begin(&w, x->groups);
    fm_wr_bytes_raw(&w, x->mixed.data, x->mixed.len);
    rc = conn_send(x->l.n, x->l.c, msg);
    if (!rc) {
        x->l.c->sent_bytes += msg->len;
        x->l.n->st.batches_out += x->mixed_count;
    }
    fm_buf_reset(&x->mixed);
    x->groups = x->mixed_count = 0;
    return rc;
}

static int pump_flush(pump_ctx *x)
{
    if (x->mix)
        return mixed_flush(x);
    size_t sent;
    uint32_t count = x->l.count;
    int rc = rec_list_flush(&x->l, &sent);
    if (!rc && sent) {
        x->l.c->sent_bytes += sent;
        x->l.n->st.batches_out += count;
    }
    return rc;
}

/* Adds one batch to the frame under construction; raises known (hint: fm_vv_raise_hinted). */
static int pump_add(pump_ctx *x, const fm_batch *b, uint32_t hint, const uint8_t *data, size_t len)
{
    rec_list *l = &x->l;
    if ((l->count || x->groups) && (pump_pending(x) + len > FM_PROTO_BATCHES_TARGET ||
                                    x->mixed_count + l->count >= FM_PROTO_MAX_BATCHES_PER_FRAME)) {
        int rc = pump_flush(x);
        if (rc)
            return rc;
    }
    int rc = rec_list_add(l, data, len);
    if (!rc)
        rc = fm_vv_raise_hinted(&l->s->known, b->author, fm_batch_last_seq(b), hint);
    return rc;
}

static bool window_open(const conn *c, size_t pending)
{
    return c->sent_bytes + pending - c->peer_acked < c->peer_window;
}

static int pump_one(void *arg, const uint8_t *data, size_t len)
{
    pump_ctx *x = arg;
    if (!window_open(x->l.c, pump_pending(x)))
        return 1; /* stop: the rest waits for an ACK */
    fm_batch *b = &x->l.n->b;
    int rc = fm_batch_peek(data, len, b, false);
    if (rc) {
        x->err = FM_ESTORE; /* the store holds only batches that decoded */
        return 1;
    }
    if (fm_batch_last_seq(b) <= fm_vv_get(&x->l.s->known, b->author))
        return 0;
    if ((rc = pump_add(x, b, UINT32_MAX, data, len))) {
        x->err = rc;
        return 1;
    }
    return 0;
}

/* Streams what the peer lacks of one collection, from the store, until the window is full. */
static int pump_coll(fm_node *n, conn *c, csync *s)
{
    pump_ctx x = {.l = {.n = n, .c = c, .s = s}};
    fm_buf_init(&x.l.body);
    fm_vv theirs;
    fm_vv_init(&theirs);
    int rc = fm_vv_copy(&theirs, &s->known);
    if (!rc)
        rc = fm__replica_export_vv(n->r, (const uint8_t *)s->name, s->len, &theirs, pump_one, &x);
    if (rc < 0 || x.err) {
        rc = x.err ? x.err : rc;
    } else {
        bool stopped = rc == 1;
        rc = pump_flush(&x);
        if (!rc && !stopped)
            s->dirty = false;
    }
    fm_vv_free(&theirs);
    fm_buf_free(&x.l.body);
    return rc;
}

static int csync_order(const void *a, const void *b)
{
    const csync *x = *(const csync *const *)a, *y = *(const csync *const *)b;
    if (x->prio != y->prio)
        return x->prio < y->prio ? -1 : 1;
    return fm_bytes_cmp((const uint8_t *)x->name, x->len, (const uint8_t *)y->name, y->len);
}

/* Sends whatever dirty collections need, critical first, while the window allows. */
static void pump(fm_node *n, conn *c)
{
    if (!c->hello_rcvd || c->closing)
        return;
    csync *order[FM_MAX_COLLECTIONS];
    uint32_t k = 0;
    for (uint32_t i = 0; i < c->ncs; i++)
        if (c->cs[i].dirty && c->cs[i].known_valid)
            order[k++] = &c->cs[i];
    qsort(order, k, sizeof *order, csync_order);
    for (uint32_t i = 0; i < k && window_open(c, 0); i++) {
        int rc = pump_coll(n, c, order[i]);
        if (rc) {
            c->err = c->err ? c->err : rc;
            return;
        }
    }
}

/* Sends author's stored batches from the one holding seq through the one holding upto, at
 * most FM_NODE_GRAFT_BATCHES, while the window allows; false if it stopped short. A batch whose
 * context the peer may lack sets x->gap. */
static bool send_feed(fm_node *n, pump_ctx *x, const fm_coll *coll, const uint8_t *author,
                      uint64_t seq, uint64_t upto)
{
    fm_buf data;
    fm_buf_init(&data);
    uint64_t head = FM_MIN(upto, fm_vv_get(&coll->vv, author));
    bool done = true;
    for (uint32_t k = 0; seq <= head && !x->err; k++) {
        if (k == FM_NODE_GRAFT_BATCHES || !window_open(x->l.c, pump_pending(x))) {
            done = false;
            break;
        }
        fm_batch *fb = &n->fb;
        int rc = fm__replica_batch_at(n->r, (const uint8_t *)coll->name, coll->name_len, author,
                                      seq, &data);
        if (!rc)
            rc = fm_batch_peek(data.data, data.len, fb, false) ? FM_ESTORE : 0;
        if (!rc && fm_batch_last_seq(fb) > fm_vv_get(&x->l.s->known, author)) {
            x->gap |= !fm_vv_leq(&fb->ctx, &x->l.s->known);
            rc = pump_add(x, fb, UINT32_MAX, data.data, data.len);
        }
        if (rc)
            x->err = rc;
        else
            seq = fm_batch_last_seq(fb) + 1;
    }
    fm_buf_free(&data);
    return done;
}

/* ---- lazy push ------------------------------------------------------------------------------ */

/* The entries a run of one collection starting at i covers (at most FM_PROTO_MAX_IHAVE). */
static uint32_t ihave_run(const conn *c, uint32_t i)
{
    uint32_t k = 1;
    while (i + k < c->nihave && k < FM_PROTO_MAX_IHAVE &&
           c->ihave[i + k].name_off == c->ihave[i].name_off)
        k++;
    return k;
}

static const uint8_t *ihave_name(const conn *c, uint32_t i)
{
    return c->ihave_names.data + c->ihave[i].name_off;
}

/* Announcements went out (or the connection failed): a burst's room is not kept for good. */
static void ihave_clear(conn *c)
{
    c->nihave = 0;
    if (c->cihave > FM_NODE_KEEP_IHAVE) {
        free(c->ihave);
        c->ihave = NULL;
        c->cihave = 0;
    }
    fm_buf_recycle(&c->ihave_names, FM_NODE_KEEP_IHAVE * FM_MAX_COLLECTION_LEN);
}

/* ANNOUNCE to a peer that takes it: many collections' announcements in one frame. */
static int announce_flush(fm_node *n, conn *c)
{
    uint32_t i = 0, run[FM_PROTO_MAX_IHAVE]; /* each group's entries, for the frame's head */
    while (i < c->nihave) {
        uint32_t groups = 0, total = 0;
        for (uint32_t j = i; j < c->nihave && total < FM_PROTO_MAX_IHAVE; j += run[groups++]) {
            run[groups] = FM_MIN(ihave_run(c, j), FM_PROTO_MAX_IHAVE - total);
            total += run[groups];
        }
        fm_buf *msg = &n->scratch;
        fm_buf_reset(msg);
        fm_wr w;
        fm_wr_init(&w, msg);
        fm_proto_announce_begin(&w, groups);
        for (uint32_t g = 0; g < groups; i += run[g++]) {
            fm_proto_announce_group(&w, ihave_name(c, i), c->ihave[i].name_len, run[g]);
            for (uint32_t j = 0; j < run[g]; j++)
                fm_proto_ihave_entry(&w, c->ihave[i + j].author, c->ihave[i + j].seq);
        }
        int rc = conn_send(n, c, msg);
        if (rc) {
            ihave_clear(c);
            return rc;
        }
        n->st.ihave_out += total;
    }
    ihave_clear(c);
    return 0;
}

static int ihave_flush(fm_node *n, conn *c)
{
    c->ihave_at = 0;
    if (c->peer_caps & FM_CAP_PEERS)
        return announce_flush(n, c);
    uint32_t i = 0;
    while (i < c->nihave) {
        uint32_t k = ihave_run(c, i);
        fm_buf *msg = &n->scratch;
        fm_buf_reset(msg);
        fm_wr w;
        fm_wr_init(&w, msg);
        fm_proto_ihave_begin(&w, ihave_name(c, i), c->ihave[i].name_len, k);
        for (uint32_t j = 0; j < k; j++)
            fm_proto_ihave_entry(&w, c->ihave[i + j].author, c->ihave[i + j].seq);
        int rc = conn_send(n, c, msg);
        if (rc) {
            ihave_clear(c);
            return rc;
        }
        n->st.ihave_out += k;
        i += k;
    }
    ihave_clear(c);
    return 0;
}

/* Announces b to a peer: in one IHAVE with others that wait at most delay_ms. */
static void ihave_queue(fm_node *n, conn *c, const fm_batch *b, uint32_t delay_ms)
{
    if (c->nihave >= FM_PROTO_MAX_IHAVE && (c->err = ihave_flush(n, c)))
        return;
    if (fm_grow((void **)&c->ihave, c->nihave, &c->cihave, sizeof *c->ihave)) {
        c->err = FM_ENOMEM;
        return;
    }
    /* A run of one collection shares its name; a new run appends it. */
    const ihave_ent *last = c->nihave ? &c->ihave[c->nihave - 1] : NULL;
    uint32_t off = last ? last->name_off : 0;
    if (!last || last->name_len != b->coll_len ||
        memcmp(c->ihave_names.data + off, b->coll, b->coll_len) != 0) {
        off = (uint32_t)c->ihave_names.len;
        if (fm_buf_append(&c->ihave_names, b->coll, b->coll_len)) {
            c->ihave_names.oom = false;
            c->err = FM_ENOMEM;
            return;
        }
    }
    ihave_ent *e = &c->ihave[c->nihave++];
    e->name_off = off;
    e->name_len = b->coll_len;
    memcpy(e->author, b->author, FM_ID_BYTES);
    e->seq = fm_batch_last_seq(b);
    uint64_t at = now_ms(n) + delay_ms;
    if (!c->ihave_at || at < c->ihave_at)
        c->ihave_at = at;
}

/* BLE is the slow, battery-bound link: an IP path to the same device is preferred. */
static bool is_ble(const conn *c)
{
    return strncmp(c->addr, "ble:", 4) == 0;
}

/* The peer pushed a batch we held already: from now on it announces instead. */
static int send_prune(fm_node *n, conn *c)
{
    if (c->pruned || !(c->peer_caps & FM_CAP_LAZY) || n->lazy_push == FM_LAZY_OFF ||
        (n->lazy_push == FM_LAZY_AUTO && !is_ble(c)))
        return 0;
    /* Keep a few peers pushing: one tree for every author's writes breaks as peers come
     * and go, and each break costs a graft's round trip. */
    uint32_t eager = 0;
    for (uint32_t i = 0; i < n->max_total; i++)
        eager += n->conns[i].used && n->conns[i].hello_rcvd && !n->conns[i].pruned;
    if (eager <= FM_NODE_EAGER_MIN)
        return 0;
    c->pruned = true;
    n->st.prunes_out++;
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    int rc = fm_proto_prune_encode(msg);
    return rc ? rc : conn_send(n, c, msg);
}

/* Ends what push_one put in x for its collection: the frame goes out (to a MIXED peer, the group
 * closes), and a batch whose context the peer may lack leaves the collection dirty. */
static void push_end(conn *c, pump_ctx *x)
{
    if (!x->l.s)
        return;
    int rc = x->err ? x->err : x->mix ? group_close(x) : pump_flush(x);
    x->l.s->dirty |= x->gap;
    x->gap = false;
    x->err = 0;
    x->l.s = NULL;
    if (rc)
        c->err = c->err ? c->err : rc;
}

/* The eager-push rule for one applied batch and one connection; x gathers the connection's
 * batches of one collection into one frame. covered: the peer that sent us the batch pushed it
 * to this one as well (covers()), so an announcement is enough. coll is b's, one we offer;
 * hint is b's author's index in coll's vector (fm_vv_get_hinted). */
static void push_one(fm_node *n, conn *c, pump_ctx *x, fm_coll *coll, const fm_batch *b,
                     uint32_t hint, const uint8_t *data, size_t len, bool covered)
{
    if (!c->hello_rcvd || c->closing || c->err || peer_prio(c, b->coll, b->coll_len) < 0)
        return;
    /* Another collection's frame goes first: csync_get may move the connection's csyncs. */
    if (x->l.s && (x->l.s->len != b->coll_len || memcmp(x->l.s->name, b->coll, b->coll_len) != 0))
        push_end(c, x);
    /* The frame's csync is b's; so mostly is the last one found (an index: csyncs move). */
    csync *s = x->l.s;
    if (!s && x->last_cs && x->last_cs <= c->ncs) {
        csync *t = &c->cs[x->last_cs - 1];
        s = t->len == b->coll_len && memcmp(t->name, b->coll, b->coll_len) == 0 ? t : NULL;
    }
    if (!s && (s = csync_get(c, b->coll, b->coll_len)))
        x->last_cs = (uint32_t)(s - c->cs) + 1;
    if (!s) {
        c->err = FM_ENOMEM;
        return;
    }
    /* A batch the peer sent us while it waited here is not sent back. */
    uint64_t have = fm_vv_get_hinted(&s->known, b->author, hint);
    if (have >= fm_batch_last_seq(b))
        return;
    /* Not over BLE, where lazy push already announces: a covering push there is slow enough
     * that the announcement often beats it and is grafted for nothing. */
    if (c->lazy || (covered && !is_ble(c) && (c->peer_caps & FM_CAP_LAZY))) {
        n->st.push_covered += !c->lazy;
        ihave_queue(n, c, b, c->lazy ? FM_NODE_IHAVE_MS : FM_NODE_COVER_IHAVE_MS);
        return;
    }
    FM_ASSERT(!x->l.s || x->l.s == s);
    if (!s->known_valid || s->dirty || !window_open(c, pump_pending(x) + len)) {
        s->dirty = true;
        return;
    }
    x->l.s = s;
    /* What the peer may lack first, feed by feed: the batch's own feed up to it and the feeds
     * its context names. A pump would scan the store from the oldest batch `known` misses,
     * which for a busy relay is far back: `known` is only a lower bound. */
    bool ok =
        have + 1 == b->first_seq || send_feed(n, x, coll, b->author, have + 1, b->first_seq - 1);
    for (uint32_t i = 0; ok && !x->err && i < b->ctx.n; i++) {
        const fm_vv_entry *e = &b->ctx.e[i];
        uint64_t k = fm_vv_get(&s->known, e->author);
        if (k < e->seq)
            ok = send_feed(n, x, coll, e->author, k + 1, e->seq);
    }
    if (!x->err && ok && window_open(c, pump_pending(x) + len))
        x->err = pump_add(x, b, hint, data, len);
    else if (!x->err)
        s->dirty = true; /* the rest from the store, in order */
}

/* ---- PEERS: who pushes to whom -------------------------------------------------------------- */

/* The sender prefix of an applied batch that came in no peer's BATCHES frame. */
static const uint8_t NO_SENDER[FM_PROTO_PEER_PREFIX];

/* Our established sessions changed: every peer that understands PEERS hears the new list. */
static void send_peers(fm_node *n)
{
    n->peers_changed = false;
    uint8_t ids[FM_PROTO_MAX_PEERS * FM_PROTO_PEER_PREFIX];
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->max_total; i++) {
        const conn *c = &n->conns[i];
        if (!c->used || !c->hello_rcvd || c->closing || !c->has_id)
            continue;
        /* Insertion into the sorted list; an id twice (two connections to one device) once. */
        uint32_t at = 0;
        while (at < k &&
               memcmp(ids + at * FM_PROTO_PEER_PREFIX, c->peer_id, FM_PROTO_PEER_PREFIX) < 0)
            at++;
        if ((at < k &&
             memcmp(ids + at * FM_PROTO_PEER_PREFIX, c->peer_id, FM_PROTO_PEER_PREFIX) == 0) ||
            (at == k && k == FM_PROTO_MAX_PEERS))
            continue; /* a list cut short only makes peers push more */
        k -= k == FM_PROTO_MAX_PEERS;
        memmove(ids + (at + 1) * FM_PROTO_PEER_PREFIX, ids + at * FM_PROTO_PEER_PREFIX,
                (k - at) * FM_PROTO_PEER_PREFIX);
        memcpy(ids + at * FM_PROTO_PEER_PREFIX, c->peer_id, FM_PROTO_PEER_PREFIX);
        k++;
    }
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    int rc = fm_proto_peers_encode(msg, ids, k);
    FM_ASSERT(rc == 0 || rc == FM_ENOMEM);
    for (uint32_t i = 0; !rc && i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (c->used && c->hello_rcvd && !c->closing && !c->err && (c->peer_caps & FM_CAP_PEERS) &&
            (c->err = conn_send(n, c, msg)))
            conn_close(n, c, c->err);
    }
}

static int on_peers(conn *c, const uint8_t *p, size_t len)
{
    const uint8_t *ids;
    uint32_t k;
    int rc = fm_proto_peers_decode(p, len, &ids, &k);
    if (rc)
        return rc;
    memcpy(c->nbr, ids, (size_t)k * FM_PROTO_PEER_PREFIX);
    c->nnbr = k;
    c->nbr_known = true;
    return 0;
}

/* The connection a batch came in on (still open, its PEERS known), from the sender's prefix. */
static const conn *sender_conn(const fm_node *n, const uint8_t *src)
{
    if (memcmp(src, NO_SENDER, FM_PROTO_PEER_PREFIX) == 0)
        return NULL;
    for (uint32_t i = 0; i < n->max_total; i++) {
        const conn *c = &n->conns[i];
        if (c->used && c->nbr_known && !c->closing && c->has_id &&
            memcmp(c->peer_id, src, FM_PROTO_PEER_PREFIX) == 0)
            return c;
    }
    return NULL;
}

/* Whether from, which pushed a batch to us, has a session with c's peer: then it pushed the
 * batch there too, or knew the peer held it, or left it to its own sender by this same rule,
 * back to the batch's author, who pushes to all. A push lost on the way (the connection cut
 * with it in flight) is why the peer still gets an IHAVE: it grafts what does not come. */
static bool covers(const conn *from, const conn *c)
{
    if (!c->has_id)
        return false;
    for (uint32_t j = 0; j < from->nnbr; j++)
        if (memcmp(from->nbr + j * FM_PROTO_PEER_PREFIX, c->peer_id, FM_PROTO_PEER_PREFIX) == 0)
            return true;
    return false;
}

/* Batches the replica applied (local commits and ingests) go to every connected peer: all that
 * waited in one frame per connection and collection. */
static void process_applied(fm_node *n)
{
    n->push_at = 0;
    for (uint32_t i = 0; i < n->max_total; i++) {
        /* Each connection's frame buffers stay from one push to the next (they are empty). */
        fm_buf body = n->px[i].l.body, mixed = n->px[i].mixed;
        n->px[i] = (pump_ctx){.l = {.n = n, .c = &n->conns[i], .body = body},
                              .mixed = mixed,
                              .mix = (n->conns[i].peer_caps & FM_CAP_PEERS) != 0};
    }
    size_t off = 0;
    while (off < n->applied.len) {
        uint32_t len;
        memcpy(&len, n->applied.data + off, sizeof len);
        const uint8_t *src = n->applied.data + off + sizeof len;
        const uint8_t *data = src + FM_PROTO_PEER_PREFIX;
        off += sizeof len + FM_PROTO_PEER_PREFIX + len;
        if (fm_batch_peek(data, len, &n->b, false))
            continue; /* cannot happen: the replica applied it */
        fm_coll *coll = coll_of(n, n->b.coll, n->b.coll_len);
        if (!coll || !offers(n, coll))
            continue;
        const conn *from = n->push_cover == FM_COVER_ON ? sender_conn(n, src) : NULL;
        uint32_t hint = fm_vv_index(&coll->vv, n->b.author); /* the peers' `known` */
        for (uint32_t i = 0; i < n->max_total; i++) {
            conn *c = &n->conns[i];
            if (c->used)
                push_one(n, c, &n->px[i], coll, &n->b, hint, data, len,
                         from && c != from && covers(from, c));
        }
    }
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        pump_ctx *x = &n->px[i];
        if (c->used)
            push_end(c, x);
        int rc = c->used && x->mix && !c->err ? mixed_flush(x) : 0;
        if (rc && !c->err)
            c->err = rc;
        fm_buf_recycle(&x->l.body, FM_NODE_KEEP_BUF_BYTES);
        fm_buf_recycle(&x->mixed, FM_NODE_KEEP_BUF_BYTES);
    }
    fm_buf_recycle(&n->applied, FM_NODE_PUSH_HOLD_BYTES * 2);
    /* Our digest changed: peers not worth a connection before may be now. */
    uint64_t t = now_ms(n);
    for (uint32_t i = 0; i < n->npeers && n->connect_at > t; i++)
        if (n->peers[i].conn < 0 && n->peers[i].present)
            n->connect_at = FM_MAX(t, n->peers[i].retry_at) < n->connect_at
                                ? FM_MAX(t, n->peers[i].retry_at)
                                : n->connect_at;
    /* What missed the fast path (a gap, a full window) goes from the store now, not at the
     * next anti-entropy round. */
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (c->used && !c->err)
            pump(n, c);
        if (c->used && c->err)
            conn_close(n, c, c->err);
    }
}

/* Applied batches wait up to push_delay_ms, so that a busy relay sends the batches of many
 * frames in one and skips what a peer sends us in the meantime; a full hold goes at once. */
static void push_due(fm_node *n)
{
    if (!n->applied.len)
        return;
    if (!n->push_delay_ms || n->applied.len >= FM_NODE_PUSH_HOLD_BYTES)
        process_applied(n);
    else if (!n->push_at)
        n->push_at = now_ms(n) + n->push_delay_ms;
}

/* The sender of an applied batch: the peer whose frame is being ingested, if the batch is one of
 * that frame's (not one the frame let out of the pending area). They come in frame order. */
static const uint8_t *applied_src(fm_node *n, const uint8_t *batch, size_t len)
{
    for (uint32_t j = n->src_id ? n->src_next : n->src_n; j < n->src_n; j++) {
        const fm_bytes *x = &n->src_arr[j];
        if (x->len == len && memcmp(x->data, batch, len) == 0) {
            n->src_next = j + 1;
            return n->src_id;
        }
    }
    return NULL;
}

static void on_applied(void *arg, const uint8_t *batch, size_t len)
{
    fm_node *n = arg;
    uint32_t l = (uint32_t)len;
    const uint8_t *src = applied_src(n, batch, len);
    if (fm_buf_append(&n->applied, &l, sizeof l) ||
        fm_buf_append(&n->applied, src ? src : NO_SENDER, FM_PROTO_PEER_PREFIX) ||
        fm_buf_append(&n->applied, batch, len)) {
        /* Not pushed now; anti-entropy will carry it. */
        n->applied.oom = false;
        return;
    }
    if (n->depth == 0) {
        n->depth++;
        push_due(n);
        n->depth--;
    }
}

/* Every entry point brackets its work so batches applied on the way are pushed at the end. */
static void enter(fm_node *n)
{
    n->depth++;
}

static void vdefer_scan(fm_node *n, uint64_t t);

/* When the open group commits: FM_NODE_COMMIT_QUIET_MS after the last batch came into it, and
 * at most FM_NODE_COMMIT_MS after it began. */
static void commit_schedule(fm_node *n)
{
    const fm_replica *r = n->r;
    if (!r->txn_open) {
        n->commit_at = 0;
        n->group_batches = 0;
        return;
    }
    uint64_t t = now_ms(n);
    if (!n->commit_at || r->txn_batches < n->group_batches) { /* a new group */
        n->group_at = t;
        n->group_batches = 0;
        n->commit_at = t + FM_NODE_COMMIT_MS;
    }
    if (r->txn_batches != n->group_batches) {
        n->group_batches = r->txn_batches;
        n->commit_at = FM_MIN(n->group_at + FM_NODE_COMMIT_MS, t + FM_NODE_COMMIT_QUIET_MS);
    }
}

static void leave(fm_node *n)
{
    if (n->depth == 1 && n->r->rollbacks != n->rollbacks) {
        /* Batches peers sent us may be gone while they think we hold them: every session
         * starts over from vectors read from the store. What waited to be pushed may be gone
         * too. */
        n->rollbacks = n->r->rollbacks;
        fm_buf_reset(&n->applied);
        n->push_at = 0;
        node_log(n, FM_LOG_WARN, "store transaction rolled back: resyncing every connection");
        for (uint32_t i = 0; i < n->max_total; i++)
            if (n->conns[i].used)
                conn_close(n, &n->conns[i], FM_ESTORE);
    }
    if (n->depth == 1 && n->ndefer && (n->defer_scan || (n->defer_at && now_ms(n) >= n->defer_at)))
        vdefer_scan(n, now_ms(n));
    if (n->depth == 1) {
        if (n->peers_changed)
            send_peers(n); /* before the push: peers judge it by what we say here */
        push_due(n);
        commit_schedule(n);
    }
    n->depth--;
}

/* ---- summaries and vectors ------------------------------------------------------------------ */

static int send_summary(fm_node *n, conn *c)
{
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    fm_wr w;
    fm_wr_init(&w, msg);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->r->st.ncolls; i++)
        k += offers(n, n->r->st.colls[i]);
    for (uint32_t i = 0; i < c->ncs; i++)
        c->cs[i].vec_sent = false;              /* a new exchange */
    c->ae_at = now_ms(n) + jitter(n, n->ae_ms); /* the next round is due an interval on */
    fm_proto_summary_begin(&w, ++c->round, k);
    for (uint32_t i = 0; i < n->r->st.ncolls; i++) {
        fm_coll *coll = n->r->st.colls[i]; /* sorted by name */
        if (!offers(n, coll))
            continue;
        uint8_t d[FM_HASH_BYTES];
        int rc = fm_coll_digest(coll, d);
        if (rc)
            return rc;
        fm_proto_summary_entry(&w, (const uint8_t *)coll->name, coll->name_len, d);
    }
    return conn_send(n, c, msg);
}

static int send_vector(fm_node *n, conn *c, const uint8_t *name, uint32_t len, uint64_t flags)
{
    fm_coll *coll = coll_of(n, name, len);
    csync *s = csync_get(c, name, len);
    if (!s)
        return FM_ENOMEM;
    s->vec_sent = true;
    fm_vv empty;
    fm_vv_init(&empty);
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    int rc = fm_proto_vector_encode(msg, c->round, flags, c->recv_bytes, name, len,
                                    coll ? &coll->vv : &empty);
    return rc ? rc : conn_send(n, c, msg);
}

/* ---- one feeder per collection --------------------------------------------------------------
 * Every peer that has our VECTOR of a collection sends us what we lack of it, the same batches
 * in the same order: a node back from a while offline got its backlog once from each of its
 * peers. So while one peer feeds us a collection, our VECTOR of it to the others waits, until
 * that peer has sent what it holds, goes, or FM_NODE_VECTOR_DEFER_MS pass. The others hold back
 * their pushes of it to us meanwhile (they have no vector of ours), and send what the feeder
 * lacked once the vector comes. */

/* c is expected to send us what we lack of the collection: it has our VECTOR of this exchange,
 * and either its own has not come yet or it holds something we do not. */
static bool feeding(const conn *c, const uint8_t *name, uint32_t len, const fm_vv *ours)
{
    if (!c->used || c->closing || c->err || !c->hello_rcvd)
        return false;
    const csync *s = csync_find(c, name, len);
    return s && s->vec_sent && (!s->known_valid || !fm_vv_leq(&s->known, ours));
}

static bool fed_elsewhere(fm_node *n, const conn *except, const uint8_t *name, uint32_t len)
{
    const fm_coll *coll = coll_of(n, name, len);
    fm_vv empty;
    fm_vv_init(&empty);
    for (uint32_t i = 0; i < n->max_total; i++)
        if (&n->conns[i] != except && feeding(&n->conns[i], name, len, coll ? &coll->vv : &empty))
            return true;
    return false;
}

/* The node's next look at its deferred VECTORs is no later than due. */
static void vdefer_due(fm_node *n, uint64_t due)
{
    n->defer_at = n->defer_at ? FM_MIN(n->defer_at, due) : due;
}

static void vdefer_clear(fm_node *n, conn *c, csync *s)
{
    FM_ASSERT(s->vec_defer && c->ndefer > 0 && n->ndefer > 0);
    s->vec_defer = false;
    c->ndefer--;
    n->ndefer--;
}

/* Our VECTOR of a collection to c: now, or later if another peer feeds us it. */
static int want_vector(fm_node *n, conn *c, const uint8_t *name, uint32_t len, uint64_t flags)
{
    csync *s = csync_get(c, name, len);
    if (!s)
        return FM_ENOMEM;
    if (!fed_elsewhere(n, c, name, len)) {
        if (s->vec_defer)
            vdefer_clear(n, c, s);
        return send_vector(n, c, name, len, flags);
    }
    if (!s->vec_defer) {
        s->vec_defer = true;
        c->ndefer++;
        n->ndefer++;
        s->vec_defer_due = now_ms(n) + FM_NODE_VECTOR_DEFER_MS;
        vdefer_due(n, s->vec_defer_due);
    }
    s->vec_defer_reply = (flags & FM_VECTOR_REPLY) != 0;
    n->st.vectors_deferred++;
    return 0;
}

static void vdefer_send(fm_node *n, conn *c, csync *s)
{
    vdefer_clear(n, c, s);
    int rc = send_vector(n, c, (const uint8_t *)s->name, s->len,
                         s->vec_defer_reply ? FM_VECTOR_REPLY : 0);
    if (rc)
        conn_close(n, c, rc);
}

/* Our vector of the collection grew, or a feeder's did: the VECTORs that waited for it go if
 * no peer feeds it any more. */
static void vdefer_release(fm_node *n, const uint8_t *name, uint32_t len)
{
    if (!n->ndefer || fed_elsewhere(n, NULL, name, len))
        return;
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        csync *s = c->used && c->ndefer ? csync_find(c, name, len) : NULL;
        if (s && s->vec_defer)
            vdefer_send(n, c, s);
    }
}

/* Every deferred VECTOR again: those due, or no longer fed, go. */
static void vdefer_scan(fm_node *n, uint64_t t)
{
    n->defer_scan = false;
    n->defer_at = 0;
    for (uint32_t i = 0; i < n->max_total && n->ndefer; i++) {
        conn *c = &n->conns[i];
        for (uint32_t k = 0; c->used && !c->err && k < c->ncs && c->ndefer; k++) {
            csync *s = &c->cs[k];
            if (!s->vec_defer)
                continue;
            if (t >= s->vec_defer_due || !fed_elsewhere(n, c, (const uint8_t *)s->name, s->len))
                vdefer_send(n, c, s); /* may end c: then the loop does */
            else
                vdefer_due(n, s->vec_defer_due);
        }
    }
}

typedef struct summary_ctx {
    fm_node *n;
    conn *c;
    bool equal;
    uint8_t *seen; /* per collection index of ours: named in the summary */
} summary_ctx;

static int summary_entry(void *arg, const fm_summary_entry *e)
{
    summary_ctx *x = arg;
    fm_node *n = x->n;
    fm_coll *coll = coll_of(n, e->name.p, e->name.len);
    if (coll) /* by halving: a scan of every collection per entry was O(collections^2) */
        x->seen[fm_state_coll_pos(&n->r->st, coll)] = 1;
    bool accept = my_prio(n, e->name.p, e->name.len) >= 0;
    if (!accept && !(coll && offers(n, coll)))
        return 0; /* neither taken from the peer nor offered to it */
    uint8_t d[FM_HASH_BYTES];
    fm_vv empty;
    fm_vv_init(&empty);
    int rc = coll ? fm_coll_digest(coll, d) : fm_vv_digest(&empty, d);
    if (rc)
        return rc;
    uint32_t before = x->c->ncs;
    csync *s = csync_get(x->c, e->name.p, e->name.len);
    if (!s)
        return FM_ENOMEM;
    if (x->c->ncs != before)
        s->known_valid = false; /* the peer holds some of it: wait for its VECTOR */
    s->vec_sent = false;        /* a new exchange */
    if (sodium_memcmp(d, e->digest, FM_HASH_BYTES) == 0) {
        if (s->vec_defer)
            vdefer_clear(n, x->c, s); /* nothing to ask for */
        if ((rc = fm_vv_copy(&s->known, coll ? &coll->vv : &empty)))
            return rc;
        s->known_valid = true;
        return 0;
    }
    x->equal = false;
    /* Our vector lets the peer send what we lack; a collection we only offer needs none. */
    return accept ? want_vector(n, x->c, e->name.p, e->name.len, 0) : 0;
}

/* Marks the connection synced when, as far as we can tell, neither side lacks anything: every
 * collection both sides take is known to be equal at the peer. */
static void note_synced(fm_node *n, conn *c)
{
    c->synced_checked_ms = now_ms(n);
    for (uint32_t i = 0; i < n->r->st.ncolls; i++) {
        const fm_coll *coll = n->r->st.colls[i];
        if (!offers(n, coll) || peer_prio(c, (const uint8_t *)coll->name, coll->name_len) < 0)
            continue;
        csync *s = csync_find(c, (const uint8_t *)coll->name, coll->name_len);
        if (!s || !s->known_valid || s->dirty || fm_vv_compare(&s->known, &coll->vv) != FM_VV_EQUAL)
            return;
    }
    for (uint32_t i = 0; i < c->ncs; i++) {
        const csync *s = &c->cs[i];
        const fm_coll *coll = coll_of(n, (const uint8_t *)s->name, s->len);
        if (my_prio(n, (const uint8_t *)s->name, s->len) >= 0 && s->known.n &&
            (!coll || fm_vv_compare(&s->known, &coll->vv) != FM_VV_EQUAL))
            return; /* the peer holds something we do not */
    }
    c->last_synced_ms = now_ms(n);
    if (c->peer >= 0)
        n->peers[c->peer].last_synced_ms = c->last_synced_ms;
}

static int on_summary(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    uint64_t round;
    uint8_t seen[FM_MAX_COLLECTIONS] = {0};
    summary_ctx x = {.n = n, .c = c, .equal = true, .seen = seen};
    int rc = fm_proto_summary_decode(p, len, &round, summary_entry, &x);
    if (rc)
        return rc;
    c->summary_rcvd = true;
    /* Liveness both ways whatever the two anti-entropy intervals: a peer that has heard
     * nothing from us for half an interval gets our summary back. */
    if (elapsed(now_ms(n), c->last_tx_ms) >= n->ae_ms / 2 && (rc = send_summary(n, c)))
        return rc;
    /* Collections we offer that the peer wants but did not name: it holds none of them. Our
     * VECTOR asks for its own in answer, and the stream waits for that: the answer may wait
     * while another peer feeds it the collection (want_vector). */
    for (uint32_t i = 0; i < n->r->st.ncolls; i++) {
        fm_coll *coll = n->r->st.colls[i];
        const uint8_t *name = (const uint8_t *)coll->name;
        if (seen[i] || !offers(n, coll) || peer_prio(c, name, coll->name_len) < 0)
            continue;
        uint32_t before = c->ncs;
        csync *s = csync_get(c, name, coll->name_len);
        if (!s)
            return FM_ENOMEM;
        x.equal = false;
        if (c->ncs == before && s->known_valid) {
            s->dirty = true; /* streaming already: it goes on */
            continue;
        }
        s->known_valid = false;
        if (!s->vec_sent && (rc = send_vector(n, c, name, coll->name_len, 0)))
            return rc;
    }
    if (x.equal) {
        c->last_synced_ms = now_ms(n);
        if (c->peer >= 0)
            n->peers[c->peer].last_synced_ms = c->last_synced_ms;
    }
    pump(n, c);
    note_synced(n, c);
    return 0;
}

static int on_vector(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_vector_msg m;
    fm_vv_init(&m.vv);
    int rc = fm_proto_vector_decode(p, len, &m);
    if (rc)
        goto out;
    if (m.acked > c->sent_bytes) {
        node_log(n, FM_LOG_DEBUG, "VECTOR acks %llu bytes of %llu sent",
                 (unsigned long long)m.acked, (unsigned long long)c->sent_bytes);
        rc = FM_EDECODE; /* acknowledges bytes never sent */
        goto out;
    }
    fm_coll *coll = coll_of(n, m.name.p, m.name.len);
    bool offered = coll && offers(n, coll) && peer_prio(c, m.name.p, m.name.len) >= 0;
    /* Of a collection we take and hold none of yet, the peer's vector is worth keeping too:
     * once its batches come, what we write to it is pushed to the peer at once. */
    if (offered || (!coll && my_prio(n, m.name.p, m.name.len) >= 0 &&
                    peer_prio(c, m.name.p, m.name.len) >= 0)) {
        csync *s = csync_get(c, m.name.p, m.name.len);
        if (!s) {
            rc = FM_ENOMEM;
            goto out;
        }
        /* With nothing of ours in flight the vector is exact (it also undoes what the peer
         * refused); otherwise it is only a lower bound. */
        rc =
            m.acked == c->sent_bytes ? fm_vv_copy(&s->known, &m.vv) : fm_vv_merge(&s->known, &m.vv);
        if (rc)
            goto out;
        s->known_valid = true;
        s->dirty = true;
    }
    /* Our vector in return, once per exchange: the peer needs it to send what we lack, and
     * to push to us at once from now on (whatever it holds that we do not). */
    csync *mine = csync_find(c, m.name.p, m.name.len);
    if (!(m.flags & FM_VECTOR_REPLY) && my_prio(n, m.name.p, m.name.len) >= 0 &&
        !(mine && mine->vec_sent))
        rc = want_vector(n, c, m.name.p, m.name.len, FM_VECTOR_REPLY);
    /* This peer's vector shows what it can feed us: perhaps nothing. */
    if (!rc && n->ndefer)
        vdefer_release(n, m.name.p, m.name.len);
    if (!rc)
        pump(n, c);
    if (!rc)
        note_synced(n, c);
out:
    fm_vv_free(&m.vv);
    return rc;
}

/* ---- receiving batches ---------------------------------------------------------------------- */

/* The length of the group of a MIXED or ANNOUNCE frame that starts at item i of k: a run of
 * items whose names point at the same bytes of the frame. */
static uint32_t group_run(const fm_proto_name *names, uint32_t i, uint32_t k)
{
    uint32_t run = 1;
    while (i + run < k && names[i + run].p == names[i].p)
        run++;
    return run;
}

/* The batches of one collection that a BATCHES frame, or a group of a MIXED one, carries. */
static int batches_in(fm_node *n, conn *c, const fm_proto_name *pname, fm_bytes *arr, uint32_t k)
{
    fm_proto_name name = *pname;
    int *res = n->bres;
    int rc = 0;
    n->st.batches_in += k;
    if (my_prio(n, name.p, name.len) < 0) {
        n->st.batches_refused += k; /* not subscribed: neither stored nor relayed */
        return 0;
    }
    /* The peer holds what it sends: never send it back. */
    csync *s = csync_get(c, name.p, name.len);
    if (!s)
        return FM_ENOMEM;
    uint32_t keep = 0, dups = 0, at = UINT32_MAX; /* known's entry of the last author */
    for (uint32_t i = 0; i < k; i++) {
        /* The header is enough to know a duplicate; ingest decodes the rest of a new one. */
        if (fm_batch_peek(arr[i].data, arr[i].len, &n->b, false) || n->b.coll_len != name.len ||
            memcmp(n->b.coll, name.p, name.len) != 0) {
            n->st.batches_refused++;
            continue;
        }
        uint64_t last = fm_batch_last_seq(&n->b);
        if ((rc = fm_vv_raise_at(&s->known, n->b.author, last, &at)))
            return rc;
        if (fm__replica_holds_peeked(n->r, &n->b, arr[i].data, arr[i].len)) {
            dups++; /* a batch we hold (its feed's head, or recent): no store transaction */
            continue;
        }
        n->bops[keep] = n->b.nops;
        memcpy(n->bhash[keep], n->b.hash, FM_HASH_BYTES);
        arr[keep++] = arr[i];
    }
    /* Nothing new, all of it held and recent: another peer pushes the same to us first. */
    if (dups == k && (rc = send_prune(n, c)))
        return rc;
    n->src_id = c->has_id ? c->peer_id : NULL;
    n->src_arr = arr;
    n->src_n = keep;
    n->src_next = 0;
    int applied = keep ? fm__replica_ingest_hashed(n->r, arr, n->bhash, keep, res) : 0;
    n->src_id = NULL;
    n->src_n = 0;
    if (applied < 0) {
        node_log(n, FM_LOG_ERROR, "ingest failed: %s (%s)", fm_strerror(applied),
                 fm_store_errmsg(n->r->store));
        return applied; /* store failure: drop the connection; the next one resumes */
    }
    for (uint32_t i = 0; i < keep; i++) {
        if (res[i] == 0)
            n->st.ops_in += n->bops[i], n->st.op_bytes_in += arr[i].len;
        if (res[i] == FM_EDUP)
            dups++;
        else if (res[i] != 0 && res[i] != FM_EPENDING)
            n->st.batches_refused++;
    }
    n->st.batches_dup += dups;
    if (applied > 0 && n->ndefer)
        vdefer_release(n, name.p, name.len);
    /* Comparing vectors costs O(authors): not after every message of a long sync, where it
     * dominated. The next SUMMARY notes equal digests anyway. */
    if (elapsed(now_ms(n), c->synced_checked_ms) >= FM_NODE_SYNC_CHECK_MS)
        note_synced(n, c);
    return 0;
}

/* A frame of batches processed: acknowledged once a quarter of the window has come. */
static int batches_ack(fm_node *n, conn *c, size_t len)
{
    c->recv_bytes += len;
    if (c->recv_bytes - c->acked_sent < n->window / 4)
        return 0;
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    int rc = fm_proto_ack_encode(msg, c->recv_bytes);
    if (!rc && !(rc = conn_send(n, c, msg)))
        c->acked_sent = c->recv_bytes;
    return rc;
}

/* Room for k batches of a received frame in barr and the arrays beside it. */
static int frame_room(fm_node *n, uint32_t k)
{
    FM_ASSERT(k <= FM_PROTO_MAX_BATCHES_PER_FRAME);
    if (k <= n->bcap)
        return 0;
    uint32_t cap = FM_MIN(FM_MAX(k, 2 * n->bcap), (uint32_t)FM_PROTO_MAX_BATCHES_PER_FRAME);
    const struct {
        void **arr;
        size_t size;
    } each[] = {{(void **)&n->barr, sizeof *n->barr},
                {(void **)&n->bnames, sizeof *n->bnames},
                {(void **)&n->bres, sizeof *n->bres},
                {(void **)&n->bops, sizeof *n->bops},
                {(void **)&n->bhash, sizeof *n->bhash}};
    for (size_t i = 0; i < FM_ARRAY_LEN(each); i++) {
        void *p = fm_reallocarray(*each[i].arr, cap, each[i].size);
        if (!p)
            return FM_ENOMEM; /* those grown already stay so: bcap still bounds them all */
        *each[i].arr = p;
    }
    n->bcap = cap;
    return 0;
}

static int on_batches(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_proto_name name;
    uint32_t k;
    int rc = fm_proto_batches_decode_room(p, len, &name, n->barr, n->bcap, &k);
    if (rc == FM_ELIMIT) { /* more than the room, or than the protocol allows: count them */
        if (!(rc = fm_proto_batches_decode(p, len, &name, NULL, &k)) && !(rc = frame_room(n, k)))
            rc = fm_proto_batches_decode(p, len, &name, n->barr, &k);
    }
    if (!rc)
        rc = batches_in(n, c, &name, n->barr, k);
    return rc ? rc : batches_ack(n, c, len);
}

static int on_mixed(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    uint32_t k;
    int rc = fm_proto_mixed_decode_room(p, len, n->bnames, n->barr, n->bcap, &k);
    if (rc == FM_ELIMIT) {
        if (!(rc = fm_proto_mixed_decode(p, len, NULL, NULL, &k)) && !(rc = frame_room(n, k)))
            rc = fm_proto_mixed_decode(p, len, n->bnames, n->barr, &k);
    }
    for (uint32_t i = 0, run; !rc && i < k; i += run)
        rc = batches_in(n, c, &n->bnames[i], n->barr + i, run = group_run(n->bnames, i, k));
    return rc ? rc : batches_ack(n, c, len);
}

static int on_graft(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_proto_name name;
    fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    uint32_t k;
    int rc = fm_proto_graft_decode(p, len, &name, e, &k);
    if (rc)
        return rc;
    c->lazy = false;
    n->st.grafts_in++;
    fm_coll *coll = coll_of(n, name.p, name.len);
    if (!coll || !offers(n, coll) || peer_prio(c, name.p, name.len) < 0)
        return 0;
    csync *s = csync_get(c, name.p, name.len);
    if (!s)
        return FM_ENOMEM;
    /* Just the feeds it names, from where it says it is: a pump would resend everything the
     * peer got from others while we announced to it. */
    pump_ctx x = {.l = {.n = n, .c = c, .s = s}};
    fm_buf_init(&x.l.body);
    for (uint32_t i = 0; i < k && !x.err; i++) {
        if ((rc = fm_vv_raise(&s->known, e[i].author, e[i].seq - 1)))
            x.err = rc;
        else if (!send_feed(n, &x, coll, e[i].author, e[i].seq, UINT64_MAX))
            s->dirty = true; /* the rest from the store when the window reopens */
    }
    rc = x.err ? x.err : pump_flush(&x);
    fm_buf_free(&x.l.body);
    return rc;
}

static int on_prune(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    int rc = fm_proto_prune_decode(p, len);
    if (!rc && !c->lazy) {
        c->lazy = true;
        node_log(n, FM_LOG_DEBUG, "conn %llu: pruned: announcing, not pushing",
                 (unsigned long long)c->id);
    }
    return rc;
}

/* Awaits an announced batch we lack; FIFO order is due order (one delay for all). */
static void missing_add(fm_node *n, conn *c, const fm_proto_name *name, const fm_ihave_entry *e)
{
    if (n->missing_head && n->missing_head == n->nmissing)
        n->missing_head = n->nmissing = 0;
    if (n->nmissing - n->missing_head >= FM_NODE_MAX_MISSING)
        return; /* anti-entropy still finds it */
    if (n->missing_head && n->nmissing == n->cmissing) {
        memmove(n->missing, n->missing + n->missing_head,
                (n->nmissing - n->missing_head) * sizeof *n->missing);
        n->nmissing -= n->missing_head;
        n->missing_head = 0;
    }
    if (fm_grow((void **)&n->missing, n->nmissing, &n->cmissing, sizeof *n->missing))
        return;
    lazy_ent *m = &n->missing[n->nmissing++];
    memcpy(m->coll, name->p, name->len);
    m->len = name->len;
    memcpy(m->author, e->author, FM_ID_BYTES);
    m->seq = e->seq;
    m->conn = c->id;
    m->due = now_ms(n) + FM_NODE_GRAFT_MS;
}

/* Announced entries of one collection (IHAVE, or a group of ANNOUNCE). */
static int ihave_apply(fm_node *n, conn *c, const fm_proto_name *name, const fm_ihave_entry *e,
                       uint32_t k)
{
    if (my_prio(n, name->p, name->len) < 0)
        return 0;
    csync *s = csync_get(c, name->p, name->len);
    if (!s)
        return FM_ENOMEM;
    fm_coll *coll = coll_of(n, name->p, name->len);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t at = coll ? fm_vv_index(&coll->vv, e[i].author) : UINT32_MAX;
        /* The peer holds it: never push it there. */
        int rc = fm_vv_raise_hinted(&s->known, e[i].author, e[i].seq, at);
        if (rc)
            return rc;
        if (at == UINT32_MAX || coll->vv.e[at].seq < e[i].seq)
            missing_add(n, c, name, &e[i]);
    }
    return 0;
}

static int on_ihave(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_proto_name name;
    fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    uint32_t k;
    int rc = fm_proto_ihave_decode(p, len, &name, e, &k);
    return rc ? rc : ihave_apply(n, c, &name, e, k);
}

static int on_announce(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_proto_name names[FM_PROTO_MAX_IHAVE];
    fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    uint32_t k;
    int rc = fm_proto_announce_decode(p, len, names, e, &k);
    for (uint32_t i = 0, run; !rc && i < k; i += run)
        rc = ihave_apply(n, c, &names[i], &e[i], run = group_run(names, i, k));
    return rc;
}

/* A live connection whose peer is known to hold the announced batch, or NULL. */
static conn *holder_of(fm_node *n, const lazy_ent *m)
{
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (!c->used || !c->hello_rcvd || c->closing || !(c->peer_caps & FM_CAP_LAZY))
            continue;
        csync *s = csync_find(c, m->coll, m->len);
        if (s && fm_vv_covers(&s->known, m->author, m->seq))
            return c;
    }
    return NULL;
}

/* Announced batches still lacking when due: ask their announcer to push again. Its `known` of
 * us is fresh (our IHAVEs and pushes raise it), so it sends little we hold. */
static void graft_due(fm_node *n, uint64_t t)
{
    if (n->missing_head < n->nmissing && n->missing[n->missing_head].due <= t &&
        !n->graft_authors &&
        !(n->graft_authors = calloc(FM_PROTO_MAX_IHAVE, sizeof *n->graft_authors)))
        return; /* no memory: the next tick tries again */
    while (n->missing_head < n->nmissing && n->missing[n->missing_head].due <= t) {
        lazy_ent m = n->missing[n->missing_head++];
        if (m.due == 0)
            continue; /* taken by an earlier GRAFT */
        fm_coll *coll = coll_of(n, m.coll, m.len);
        if (coll && fm_vv_covers(&coll->vv, m.author, m.seq))
            continue; /* arrived by another path */
        conn *c = conn_find(n, m.conn);
        if (!c || !c->hello_rcvd || c->closing)
            c = holder_of(n, &m); /* the announcer left: another peer known to hold it */
        if (!c)
            continue; /* anti-entropy finds it */
        fm_conn_id orig = m.conn;
        c->pruned = false;
        n->st.grafts_out++;
        /* One GRAFT per peer and collection: every feed of it lacking now, from where we are. */
        uint32_t k = 0;
        uint8_t(*authors)[FM_ID_BYTES] = n->graft_authors;
        for (uint32_t i = n->missing_head - 1; i < n->nmissing && n->missing[i].due <= t; i++) {
            lazy_ent *x = &n->missing[i];
            if (x->due == 0 || (x->conn != orig && x->conn != c->id) || x->len != m.len ||
                memcmp(x->coll, m.coll, m.len) != 0)
                continue;
            x->due = 0; /* taken */
            bool dup = coll && fm_vv_covers(&coll->vv, x->author, x->seq);
            for (uint32_t j = 0; j < k && !dup; j++)
                dup = memcmp(authors[j], x->author, FM_ID_BYTES) == 0;
            if (!dup && k < FM_PROTO_MAX_IHAVE)
                memcpy(authors[k++], x->author, FM_ID_BYTES);
        }
        fm_buf *msg = &n->scratch;
        fm_buf_reset(msg);
        fm_wr w;
        fm_wr_init(&w, msg);
        fm_proto_graft_begin(&w, m.coll, m.len, k);
        for (uint32_t j = 0; j < k; j++)
            fm_proto_ihave_entry(&w, authors[j], (coll ? fm_vv_get(&coll->vv, authors[j]) : 0) + 1);
        int rc = conn_send(n, c, msg);
        if (rc)
            conn_close(n, c, rc);
    }
}

static int on_ack(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    uint64_t v;
    int rc = fm_proto_ack_decode(p, len, &v);
    if (rc)
        return rc;
    if (v > c->sent_bytes)
        return FM_EDECODE;
    if (v > c->peer_acked)
        c->peer_acked = v;
    pump(n, c);
    return 0;
}

/* ---- membership ----------------------------------------------------------------------------- */

static int members_one(void *arg, const uint8_t *rec, size_t len)
{
    rec_list *l = arg;
    size_t sent;
    if (len > FM_PROTO_MAX_MEMBER_BYTES)
        return 0;
    int rc = rec_list_add(l, rec, len);
    if (!rc && l->count == FM_PROTO_MEMBERS_PER_FRAME)
        rc = rec_list_flush(l, &sent);
    return rc;
}

static int send_members(fm_node *n, conn *c)
{
    rec_list l = {.n = n, .c = c};
    size_t sent;
    fm_buf_init(&l.body);
    int rc = fm__replica_each_member_bin(n->r, members_one, &l);
    if (!rc)
        rc = rec_list_flush(&l, &sent);
    fm_buf_free(&l.body);
    return rc;
}

/* A membership change may end sessions (revocation) or replace the view sessions borrow; what
 * was installed here (a local revoke or import, a peer's certificate) goes to every peer. */
static void recheck_sessions(fm_node *n)
{
    bool replaced = n->mesh != n->r->mesh;
    n->mesh = n->r->mesh;
    n->member_epoch = fm__replica_member_epoch(n->r);
    for (uint32_t i = 0; !replaced && i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (c->used && c->hello_rcvd && !c->closing && (c->peer_caps & FM_CAP_MEMBERS) &&
            c->members_epoch != n->member_epoch) {
            c->members_epoch = n->member_epoch;
            int rc = send_members(n, c);
            if (rc)
                c->err = c->err ? c->err : rc;
        }
    }
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (!c->used || !c->s)
            continue;
        if ((int)i == n->active_conn && !replaced) {
            c->recheck = true; /* not under its own input: conn_data does it on return */
            continue;
        }
        int rc = replaced ? FM_ESTATE : fm_session_recheck(c->s);
        /* FM_ESTATE from recheck: the peer is not authenticated yet, the handshake checks it */
        if (replaced || (rc && rc != FM_ESTATE))
            conn_close(n, c, rc);
    }
}

static int on_members(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    fm_bytes recs[FM_PROTO_MEMBERS_PER_FRAME];
    uint32_t k;
    int rc = fm_proto_members_decode(p, len, recs, &k);
    if (rc)
        return rc;
    int installed = fm__replica_import_members(n->r, recs, k);
    if (installed < 0)
        return installed;
    if (installed == 0)
        return 0;
    /* Flood what was new to us to every other peer; those that have it install nothing and
     * stop the flood there. */
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *o = &n->conns[i];
        if (o->used && o != c && o->hello_rcvd && !o->closing && (o->peer_caps & FM_CAP_MEMBERS)) {
            fm_buf msg = {.data = (uint8_t *)p, .len = len, .cap = len};
            int src = conn_send(n, o, &msg);
            if (src)
                o->err = src;
            else if (o->members_epoch == n->member_epoch)
                o->members_epoch = fm__replica_member_epoch(n->r); /* it had the rest */
        }
    }
    /* The sender has these, and had the rest of ours since its HELLO. */
    if (c->members_epoch == n->member_epoch)
        c->members_epoch = fm__replica_member_epoch(n->r);
    if (fm__replica_member_epoch(n->r) != n->member_epoch || n->mesh != n->r->mesh)
        recheck_sessions(n);
    return 0;
}

/* ---- HELLO and session start ---------------------------------------------------------------- */

static int send_hello(fm_node *n, conn *c)
{
    fm_hello *h = calloc(1, sizeof *h);
    if (!h)
        return FM_ENOMEM;
    h->proto_min = FM_PROTO_MIN;
    h->proto_max = FM_PROTO_MAX;
    h->caps = FM_CAPS;
    h->window = n->window;
    h->subs_all = n->sub_all;
    h->nsubs = n->sub_none ? 0 : (uint32_t)n->nsubs;
    for (uint32_t i = 0; i < h->nsubs; i++) {
        h->subs[i].p = (const uint8_t *)n->sub_names[i];
        h->subs[i].len = (uint32_t)strlen(n->sub_names[i]);
        h->prio[i] = n->subs[i].prio;
    }
    uint32_t count = 0;
    int rc = fm__replica_member_digest(n->r, h->members_digest, &count);
    h->members_count = count;
    fm_buf *msg = &n->scratch;
    fm_buf_reset(msg);
    if (!rc)
        rc = fm_proto_hello_encode(msg, h);
    free(h);
    return rc ? rc : conn_send(n, c, msg);
}

static int on_hello(fm_node *n, conn *c, const uint8_t *p, size_t len)
{
    if (c->hello_rcvd)
        return FM_EDECODE;
    fm_hello *h = malloc(sizeof *h);
    if (!h)
        return FM_ENOMEM;
    int rc = fm_proto_hello_decode(p, len, h);
    if (rc)
        goto out;
    if (h->proto_max < FM_PROTO_MIN || h->proto_min > FM_PROTO_MAX) {
        rc = FM_EVERSION;
        goto out;
    }
    c->peer_window = h->window;
    c->peer_caps = h->caps;
    c->peer_all = h->subs_all;
    c->peer_none = !h->subs_all && h->nsubs == 0;
    if (h->nsubs) {
        c->peer_subs = calloc(h->nsubs, sizeof *c->peer_subs);
        c->peer_prio = calloc(h->nsubs, 1);
        if (!c->peer_subs || !c->peer_prio) {
            rc = FM_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < h->nsubs; i++) {
            memcpy(c->peer_subs[i], h->subs[i].p, h->subs[i].len);
            c->peer_prio[i] = h->prio[i];
        }
        c->npeer_subs = h->nsubs;
    }
    c->hello_rcvd = true;
    n->peers_changed = true;
    uint8_t mine[FM_HASH_BYTES];
    uint32_t count;
    if ((rc = fm__replica_member_digest(n->r, mine, &count)))
        goto out;
    c->members_epoch = fm__replica_member_epoch(n->r);
    if (sodium_memcmp(mine, h->members_digest, FM_HASH_BYTES) != 0 && (h->caps & FM_CAP_MEMBERS))
        rc = send_members(n, c);
out:
    free(h);
    return rc;
}

/* The peer's certificate, verified by the handshake, is installed here so its batches are
 * accepted even before membership gossip brings it. */
static void learn_peer(fm_node *n, conn *c)
{
    fm_cert cert;
    if (fm_session_peer_id(c->s, c->peer_id) || fm_session_peer_cert(c->s, &cert))
        return;
    c->has_id = true;
    snprintf(c->peer_name, sizeof c->peer_name, "%s", cert.name);
    const fm_cert *have = fm_membership_cert(n->r->mesh, c->peer_id);
    if (!have || fm_cert_newer(&cert, have) > 0) {
        uint8_t enc[FM_MAX_CERT_BYTES];
        size_t len;
        if (fm_cert_encode(&cert, enc, &len) == 0) {
            fm_bytes rec = {enc, len};
            if (fm__replica_import_members(n->r, &rec, 1) < 0)
                node_log(n, FM_LOG_WARN, "could not install the certificate of %s", c->peer_name);
        }
        if (n->mesh != n->r->mesh)
            recheck_sessions(n);
    }
}

static uint64_t connect_timeout(const conn *c)
{
    return is_ble(c) ? FM_NODE_BLE_CONNECT_MS : FM_HANDSHAKE_TIMEOUT_MS;
}

/* Two connections between the same pair: both sides keep an IP one over a BLE one, then the
 * one the smaller id initiated. The sync carries on over the survivor from what the peer's
 * vector says it holds: moving between transports restarts nothing. */
static bool duplicate_of_better(fm_node *n, conn *c)
{
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *o = &n->conns[i];
        if (o == c || !o->used || !o->has_id || o->closing ||
            memcmp(o->peer_id, c->peer_id, FM_ID_BYTES) != 0)
            continue;
        bool me_smaller = memcmp(n->r->device, c->peer_id, FM_ID_BYTES) < 0;
        bool c_wins = is_ble(c) != is_ble(o) ? !is_ble(c) : c->initiator == me_smaller;
        if (!c_wins)
            return true;
        conn_close(n, o, 0);
    }
    return false;
}

static int on_established(fm_node *n, conn *c)
{
    learn_peer(n, c);
    if (!c->used)
        return 0; /* closed by a session recheck */
    n->st.sessions_ok++;
    /* The peer entry learns who answers at its address first: if this connection loses to
     * another one from the same device, that one is found by id and not dialled again. */
    if (c->peer >= 0) {
        peer *p = &n->peers[c->peer];
        p->backoff_ms = 0;
        p->has_id = c->has_id;
        memcpy(p->id, c->peer_id, FM_ID_BYTES);
    }
    if (c->has_id && duplicate_of_better(n, c)) {
        c->live = true; /* not a failure: the other connection carries the sync */
        return FM_EEXISTS;
    }
    c->live = true;
    int rc = send_hello(n, c);
    return rc ? rc : send_summary(n, c);
}

typedef struct frame_ctx {
    fm_node *n;
    conn *c;
} frame_ctx;

/* One authenticated frame: one message. The first error sticks and later frames are ignored. */
static void on_frame(void *arg, const uint8_t *data, size_t len)
{
    frame_ctx *x = arg;
    fm_node *n = x->n;
    conn *c = x->c;
    if (c->err || !c->used)
        return;
    /* The peer's first frames can arrive with its stream start, in one input call: we must
     * have sent our HELLO before answering anything. */
    if (!c->live) {
        int erc = on_established(n, c);
        if (erc) {
            c->err = erc;
            return;
        }
    }
    n->st.frames_in++;
    uint64_t type = 0;
    int rc = fm_proto_type(data, len, &type);
    if (!rc && type != FM_MSG_HELLO && !c->hello_rcvd)
        rc = FM_EDECODE; /* HELLO comes first */
    if (!rc) {
        switch (type) {
        case FM_MSG_HELLO:
            rc = on_hello(n, c, data, len);
            break;
        case FM_MSG_SUMMARY:
            rc = on_summary(n, c, data, len);
            break;
        case FM_MSG_VECTOR:
            rc = on_vector(n, c, data, len);
            break;
        case FM_MSG_BATCHES:
            rc = on_batches(n, c, data, len);
            break;
        case FM_MSG_ACK:
            rc = on_ack(n, c, data, len);
            break;
        case FM_MSG_MEMBERS:
            rc = on_members(n, c, data, len);
            break;
        case FM_MSG_IHAVE:
            rc = on_ihave(n, c, data, len);
            break;
        case FM_MSG_PRUNE:
            rc = on_prune(n, c, data, len);
            break;
        case FM_MSG_GRAFT:
            rc = on_graft(n, c, data, len);
            break;
        case FM_MSG_PEERS:
            rc = on_peers(c, data, len);
            break;
        case FM_MSG_ANNOUNCE:
            rc = on_announce(n, c, data, len);
            break;
        case FM_MSG_MIXED:
            rc = on_mixed(n, c, data, len);
            break;
        default:
            break; /* unknown types are ignored: a newer peer may send more */
        }
    }
    if (rc && !c->err) {
        node_log(n, FM_LOG_DEBUG, "conn %llu: message type %llu (%zu bytes) refused: %s",
                 (unsigned long long)c->id, (unsigned long long)type, len, fm_strerror(rc));
        c->err = rc;
    }
}

/* ---- entry points: connections -------------------------------------------------------------- */

static peer *peer_find(fm_node *n, const char *addr)
{
    for (uint32_t i = 0; addr && i < n->npeers; i++)
        if (strcmp(n->peers[i].addr, addr) == 0)
            return &n->peers[i];
    return NULL;
}

/* Connections we dialled: inbound ones (a flood, say) do not stop the node dialling peers. */
static uint32_t conn_count(const fm_node *n)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->max_total; i++)
        k += n->conns[i].used && n->conns[i].initiator;
    return k;
}

static int conn_slot(fm_node *n)
{
    for (uint32_t i = 0; i < n->max_total; i++)
        if (!n->conns[i].used)
            return (int)i;
    return -1;
}

/* A slot for an inbound connection. Connections still in their handshake are capped at
 * max_conns, and when the cap (or the table) is full the oldest of them makes room: a flood of
 * silent connections cannot keep a real peer out for longer than its own handshake takes. */
static int inbound_slot(fm_node *n)
{
    uint32_t pending = 0;
    conn *oldest = NULL;
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (!c->used || c->initiator || c->live)
            continue;
        pending++;
        if (!oldest || c->opened_ms < oldest->opened_ms)
            oldest = c;
    }
    int slot = pending < n->max_conns ? conn_slot(n) : -1;
    if (slot < 0 && oldest) {
        n->st.sessions_failed++;
        conn_close(n, oldest, FM_ELIMIT);
        slot = conn_slot(n);
    }
    return slot;
}

int fm_node_conn_open(fm_node *n, fm_conn_id id, bool initiator, const char *addr)
{
    if (addr && strlen(addr) > FM_NODE_MAX_ADDR)
        addr = NULL;
    conn *c = initiator ? conn_find(n, id) : NULL;
    if (initiator && (!c || c->s)) {
        n->io.close(n->io.ctx, id); /* not ours (or given up on) */
        return FM_EINVAL;
    }
    if (!initiator) {
        if (conn_find(n, id)) {
            n->io.close(n->io.ctx, id);
            return FM_EEXISTS;
        }
        int slot = inbound_slot(n);
        if (slot < 0) {
            n->io.close(n->io.ctx, id);
            return FM_ELIMIT;
        }
        c = &n->conns[slot];
        memset(c, 0, sizeof *c);
        c->used = true;
        c->id = id;
        c->peer = -1;
        n->st.conns++;
        peer *p = peer_find(n, addr);
        if (p && p->conn < 0) {
            c->peer = (int)(p - n->peers);
            p->conn = (int)(c - n->conns);
        }
        if (addr)
            snprintf(c->addr, sizeof c->addr, "%s", addr);
    }
    enter(n);
    c->opened_ms = c->last_rx_ms = now_ms(n);
    fm_buf_init(&c->out);
    fm_buf_init(&c->ihave_names);
    int rc = fm_session_new(n->env, n->r->identity, n->cert, n->cert_len, n->mesh,
                            initiator ? FM_SESSION_INITIATOR : FM_SESSION_RESPONDER, &c->s);
    if (!rc && initiator)
        rc = fm_session_start(c->s, &c->out);
    if (!rc)
        conn_flush(n, c);
    else
        conn_close(n, c, rc);
    leave(n);
    return rc;
}

void fm_node_conn_failed(fm_node *n, fm_conn_id id)
{
    conn *c = conn_find(n, id);
    if (!c)
        return;
    enter(n);
    node_log(n, FM_LOG_DEBUG, "connect to %s failed", c->addr);
    n->st.sessions_failed++;
    conn_drop(n, c, true);
    leave(n);
}

int fm_node_conn_data(fm_node *n, fm_conn_id id, const uint8_t *data, size_t len)
{
    conn *c = conn_find(n, id);
    if (!c || c->closing)
        return FM_ESTATE;
    if (!c->s) /* outbound, not open yet */
        return FM_ESTATE;
    enter(n);
    c->last_rx_ms = now_ms(n);
    c->bytes_in += len;
    n->st.bytes_in += len;
    frame_ctx x = {n, c};
    int idx = (int)(c - n->conns);
    n->active_conn = idx;
    int rc = fm_session_input(c->s, data, len, &c->out, on_frame, &x);
    n->active_conn = -1;
    if (c->used && !rc && c->recheck) {
        c->recheck = false;
        int rrc = fm_session_recheck(c->s);
        rc = rrc == FM_ESTATE ? 0 : rrc;
    }
    if (c->used && !rc && !c->err && !c->live && fm_session_state(c->s) == FM_SESSION_ESTABLISHED)
        rc = on_established(n, c);
    if (c->used && !rc)
        rc = c->err;
    if (c->used) {
        if (rc) {
            if (!c->live)
                n->st.sessions_failed++;
            conn_close(n, c, rc);
        } else if (fm_session_state(c->s) == FM_SESSION_CLOSED) {
            conn_close(n, c, 0);
        } else {
            conn_flush(n, c);
        }
    }
    leave(n);
    return rc;
}

void fm_node_conn_closed(fm_node *n, fm_conn_id id)
{
    conn *c = conn_find(n, id);
    if (!c)
        return;
    enter(n);
    if (!c->live)
        n->st.sessions_failed++;
    c->closing = true; /* the transport is gone: nothing more to send */
    conn_drop(n, c, !c->live);
    leave(n);
}

/* ---- entry points: discovery ---------------------------------------------------------------- */

int fm_node_peer_seen(fm_node *n, const char *addr, const uint8_t *digest, int flags)
{
    if (!addr || !addr[0] || strlen(addr) > FM_NODE_MAX_ADDR)
        return FM_EINVAL;
    peer *p = peer_find(n, addr);
    if (!p) {
        if (n->npeers >= FM_NODE_MAX_PEERS)
            return FM_ELIMIT;
        if (fm_grow((void **)&n->peers, n->npeers, &n->cpeers, sizeof *n->peers))
            return FM_ENOMEM;
        p = &n->peers[n->npeers++];
        memset(p, 0, sizeof *p);
        snprintf(p->addr, sizeof p->addr, "%s", addr);
        p->conn = -1;
        p->retry_at = now_ms(n);
    }
    p->present = true;
    p->is_static |= (flags & FM_PEER_STATIC) != 0;
    p->last_seen_ms = now_ms(n);
    p->has_digest = digest != NULL;
    if (digest)
        memcpy(p->digest, digest, FM_HASH_BYTES);
    if (n->connect_at > p->retry_at)
        n->connect_at = p->retry_at;
    return 0;
}

void fm_node_peer_lost(fm_node *n, const char *addr)
{
    peer *p = peer_find(n, addr);
    if (p && !p->is_static)
        p->present = false;
}

/* ---- timers --------------------------------------------------------------------------------- */

void fm_node_digest(fm_node *n, uint8_t out[FM_HASH_BYTES])
{
    if (n->digest_valid && n->digest_gen == n->r->st.gen) {
        memcpy(out, n->digest, FM_HASH_BYTES);
        return;
    }
    bool ok = true;
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, FM_HASH_BYTES);
    for (uint32_t i = 0; i < n->r->st.ncolls; i++) {
        fm_coll *c = n->r->st.colls[i];
        if (!offers(n, c))
            continue;
        uint8_t d[FM_HASH_BYTES];
        if (fm_coll_digest(c, d)) {
            memset(d, 0xff, sizeof d); /* out of memory: a digest that matches nobody */
            ok = false;
        }
        crypto_generichash_update(&h, (const uint8_t *)c->name, c->name_len + 1);
        crypto_generichash_update(&h, d, sizeof d);
    }
    crypto_generichash_final(&h, out, FM_HASH_BYTES);
    memcpy(n->digest, out, FM_HASH_BYTES);
    n->digest_gen = n->r->st.gen;
    n->digest_ms = now_ms(n);
    n->digest_valid = ok;
}

/* Whether a known peer is worth a connection now. */
static bool want_connect(fm_node *n, const peer *p, uint64_t t)
{
    if (p->conn >= 0 || !p->present || p->retry_at > t)
        return false;
    if (p->is_static || !p->has_digest)
        return true;
    /* Hashing every vector is not free, and a busy node's vectors change at every batch: within
     * FM_NODE_DIGEST_STALE_MS of the last hash, a state changed since counts as differing (at
     * worst one dial too many, never one too late). */
    uint8_t digest[FM_HASH_BYTES];
    if (n->digest_valid && n->digest_gen != n->r->st.gen &&
        elapsed(t, n->digest_ms) < FM_NODE_DIGEST_STALE_MS)
        return true;
    fm_node_digest(n, digest); /* the cached one if nothing changed */
    return sodium_memcmp(p->digest, digest, FM_HASH_BYTES) != 0;
}

/* Is the peer already connected to us under another connection (inbound, by device id)? */
static bool connected_by_id(const fm_node *n, const peer *p)
{
    if (!p->has_id)
        return false;
    for (uint32_t i = 0; i < n->max_total; i++)
        if (n->conns[i].used && n->conns[i].has_id &&
            memcmp(n->conns[i].peer_id, p->id, FM_ID_BYTES) == 0)
            return true;
    return false;
}

static void connect_peers(fm_node *n, uint64_t t)
{
    n->connect_at = UINT64_MAX;
    for (uint32_t i = 0; i < n->npeers; i++) {
        peer *p = &n->peers[i];
        if (p->conn < 0 && p->present && p->retry_at > t && p->retry_at < n->connect_at)
            n->connect_at = p->retry_at;
        if (conn_count(n) >= n->max_conns || !want_connect(n, p, t) || connected_by_id(n, p))
            continue;
        int slot = conn_slot(n);
        if (slot < 0)
            break;
        fm_conn_id id = 0;
        if (n->io.connect(n->io.ctx, p->addr, &id) != 0) {
            peer_backoff(n, p, true);
            continue;
        }
        conn *c = &n->conns[slot];
        memset(c, 0, sizeof *c);
        c->used = true;
        c->id = id;
        c->initiator = true;
        c->peer = (int)i;
        snprintf(c->addr, sizeof c->addr, "%s", p->addr);
        c->opened_ms = t;
        p->conn = slot;
        n->st.conns++;
    }
    /* Peers skipped only because we were full are looked at again within a second. */
    if (n->connect_at == UINT64_MAX)
        for (uint32_t i = 0; i < n->npeers; i++)
            if (want_connect(n, &n->peers[i], t)) {
                n->connect_at = t + 1000;
                break;
            }
}

void fm_node_tick(fm_node *n)
{
    enter(n);
    uint64_t t = now_ms(n);
    if (n->commit_at && t >= n->commit_at) {
        int rc = fm__replica_flush(n->r);
        if (rc)
            node_log(n, FM_LOG_ERROR, "group commit failed: %s (%s)", fm_strerror(rc),
                     fm_store_errmsg(n->r->store));
    }
    if (n->push_at && t >= n->push_at)
        process_applied(n);
    if (n->mesh != n->r->mesh || fm__replica_member_epoch(n->r) != n->member_epoch)
        recheck_sessions(n);
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (!c->used)
            continue;
        /* A wall clock stepped backwards must not postpone heartbeats by the step. */
        c->last_rx_ms = FM_MIN(c->last_rx_ms, t);
        c->opened_ms = FM_MIN(c->opened_ms, t);
        if (c->ae_at > t + 2 * (uint64_t)n->ae_ms)
            c->ae_at = t + jitter(n, n->ae_ms);
        if (!c->s) { /* outbound connect under way */
            if (elapsed(t, c->opened_ms) >= connect_timeout(c)) {
                n->st.sessions_failed++;
                conn_close(n, c, FM_ETIMEOUT);
            }
            continue;
        }
        int rc = fm_session_tick(c->s);
        if (rc) {
            n->st.sessions_failed++;
            conn_close(n, c, rc);
            continue;
        }
        if (elapsed(t, c->last_rx_ms) >= n->idle_ms) {
            conn_close(n, c, FM_ETIMEOUT);
            continue;
        }
        if (c->live && t >= c->ae_at) {
            rc = send_summary(n, c);
            if (rc) {
                conn_close(n, c, rc);
                continue;
            }
        }
        if (c->ihave_at && t >= c->ihave_at && (rc = ihave_flush(n, c)))
            conn_close(n, c, rc);
    }
    graft_due(n, t);
    for (uint32_t i = 0; i < n->npeers; i++)
        if (n->peers[i].retry_at > t + n->bmax)
            n->peers[i].retry_at = t, n->connect_at = t;
    if (t >= n->connect_at)
        connect_peers(n, t);
    leave(n);
}

uint64_t fm_node_next_deadline(const fm_node *n)
{
    uint64_t d = n->connect_at;
    if (n->commit_at)
        d = FM_MIN(d, n->commit_at);
    if (n->push_at)
        d = FM_MIN(d, n->push_at);
    for (uint32_t i = 0; i < n->max_total; i++) {
        const conn *c = &n->conns[i];
        if (!c->used)
            continue;
        if (!c->s) {
            d = FM_MIN(d, c->opened_ms + connect_timeout(c));
            continue;
        }
        d = FM_MIN(d, fm_session_deadline(c->s));
        d = FM_MIN(d, c->last_rx_ms + n->idle_ms);
        if (c->live)
            d = FM_MIN(d, c->ae_at);
        if (c->ihave_at)
            d = FM_MIN(d, c->ihave_at);
    }
    if (n->missing_head < n->nmissing)
        d = FM_MIN(d, n->missing[n->missing_head].due);
    if (n->ndefer && n->defer_at)
        d = FM_MIN(d, n->defer_at);
    return d;
}

void fm_node_sync_now(fm_node *n)
{
    enter(n);
    uint64_t t = now_ms(n);
    for (uint32_t i = 0; i < n->max_total; i++) {
        conn *c = &n->conns[i];
        if (c->used && c->live && !c->closing) {
            int rc = send_summary(n, c);
            if (rc)
                conn_close(n, c, rc);
        }
    }
    for (uint32_t i = 0; i < n->npeers; i++)
        if (n->peers[i].conn < 0)
            n->peers[i].retry_at = t;
    n->connect_at = t;
    connect_peers(n, t);
    leave(n);
}

/* ---- introspection -------------------------------------------------------------------------- */

static void conn_info(const fm_node *n, const conn *c, fm_peer_info *pi)
{
    memset(pi, 0, sizeof *pi);
    pi->addr = c->addr[0] ? c->addr : NULL;
    pi->has_id = c->has_id;
    memcpy(pi->id, c->peer_id, FM_ID_BYTES);
    snprintf(pi->name, sizeof pi->name, "%s", c->peer_name);
    bool busy = false;
    for (uint32_t i = 0; i < c->ncs; i++)
        busy |= c->cs[i].dirty || !c->cs[i].known_valid;
    busy |= c->sent_bytes != c->peer_acked && c->sent_bytes - c->peer_acked >= n->window / 2;
    pi->state = !c->live ? FM_PEER_CONNECTING : busy ? FM_PEER_SYNCING : FM_PEER_SYNCED;
    pi->inbound = !c->initiator;
    pi->last_seen_ms = c->last_rx_ms;
    pi->last_synced_ms = c->last_synced_ms;
    pi->bytes_in = c->bytes_in;
    pi->bytes_out = c->bytes_out;
}

int fm_node_peers(fm_node *n, int (*fn)(void *arg, const fm_peer_info *info), void *arg)
{
    fm_peer_info pi;
    for (uint32_t i = 0; i < n->max_total; i++) {
        if (!n->conns[i].used)
            continue;
        conn_info(n, &n->conns[i], &pi);
        int rc = fn(arg, &pi);
        if (rc)
            return rc;
    }
    for (uint32_t i = 0; i < n->npeers; i++) {
        const peer *p = &n->peers[i];
        if (p->conn >= 0)
            continue;
        memset(&pi, 0, sizeof pi);
        pi.addr = p->addr;
        pi.has_id = p->has_id;
        memcpy(pi.id, p->id, FM_ID_BYTES);
        pi.state = p->backoff_ms ? FM_PEER_BACKOFF : FM_PEER_IDLE;
        pi.last_seen_ms = p->last_seen_ms;
        pi.last_synced_ms = p->last_synced_ms;
        pi.retry_at_ms = p->retry_at;
        int rc = fn(arg, &pi);
        if (rc)
            return rc;
    }
    return 0;
}

void fm_node_stats_get(const fm_node *n, fm_node_stats *out)
{
    *out = n->st;
}

uint64_t fm_node_ops_behind(fm_node *n)
{
    uint64_t total = 0;
    for (uint32_t k = 0; k < n->r->st.ncolls + 1; k++) {
        /* k == ncolls: collections the peers hold and we do not have at all */
        uint64_t worst = 0;
        for (uint32_t i = 0; i < n->max_total; i++) {
            const conn *c = &n->conns[i];
            for (uint32_t j = 0; c->used && j < c->ncs; j++) {
                const csync *s = &c->cs[j];
                const fm_coll *mine = coll_of(n, (const uint8_t *)s->name, s->len);
                if (k < n->r->st.ncolls ? mine != n->r->st.colls[k] : mine != NULL)
                    continue;
                if (my_prio(n, (const uint8_t *)s->name, s->len) < 0)
                    continue;
                uint64_t behind = 0;
                for (uint32_t e = 0; e < s->known.n; e++) {
                    uint64_t have = mine ? fm_vv_get(&mine->vv, s->known.e[e].author) : 0;
                    behind += s->known.e[e].seq > have ? s->known.e[e].seq - have : 0;
                }
                worst = FM_MAX(worst, behind);
            }
        }
        total += worst;
    }
    return total;
}

fm_replica *fm_node_replica(fm_node *n)
{
    return n->r;
}

/* ---- open / close --------------------------------------------------------------------------- */

static int copy_subs(fm_node *n, const fm_node_config *cfg)
{
    n->sub_none = cfg->subscribe_none;
    n->sub_all = !cfg->subscribe_none && cfg->nsubs == 0;
    if (cfg->subscribe_none || cfg->nsubs == 0)
        return 0;
    if (cfg->nsubs > FM_NODE_MAX_SUBS || !cfg->subs)
        return FM_EINVAL;
    n->subs = calloc(cfg->nsubs, sizeof *n->subs);
    n->sub_names = calloc(cfg->nsubs, sizeof *n->sub_names);
    if (!n->subs || !n->sub_names)
        return FM_ENOMEM;
    for (size_t i = 0; i < cfg->nsubs; i++) {
        const char *name = cfg->subs[i].collection;
        size_t len = name ? strlen(name) : 0;
        if (fm_name_check((const uint8_t *)name, len, FM_MAX_COLLECTION_LEN) ||
            cfg->subs[i].prio > FM_PRIO_BULK)
            return FM_EINVAL;
        memcpy(n->sub_names[i], name, len);
        n->subs[i].prio = cfg->subs[i].prio;
    }
    /* HELLO lists subscriptions sorted by name, each once. */
    for (size_t i = 1; i < cfg->nsubs; i++)
        for (size_t j = i; j > 0 && strcmp(n->sub_names[j - 1], n->sub_names[j]) >= 0; j--) {
            if (strcmp(n->sub_names[j - 1], n->sub_names[j]) == 0)
                return FM_EINVAL;
            char tmp[FM_MAX_COLLECTION_LEN + 1];
            memcpy(tmp, n->sub_names[j], sizeof tmp);
            memcpy(n->sub_names[j], n->sub_names[j - 1], sizeof tmp);
            memcpy(n->sub_names[j - 1], tmp, sizeof tmp);
            fm_node_sub s = n->subs[j];
            n->subs[j] = n->subs[j - 1];
            n->subs[j - 1] = s;
        }
    n->nsubs = cfg->nsubs;
    return 0;
}

static int own_cert(fm_node *n)
{
    if (!n->r->mesh)
        return FM_ESTATE;
    const fm_cert *c = fm_membership_cert(n->r->mesh, n->r->device);
    if (!c)
        return FM_ESTATE;
    return fm_cert_encode(c, n->cert, &n->cert_len);
}

int fm_node_open(const fm_node_config *cfg, fm_node **out)
{
    if (!cfg || cfg->version != FM_NODE_CONFIG_VERSION || !cfg->replica || !cfg->io ||
        !cfg->io->send || !cfg->io->close || !cfg->io->connect || !out)
        return FM_EINVAL;
    fm_node *n = calloc(1, sizeof *n);
    if (!n)
        return FM_ENOMEM;
    n->r = cfg->replica;
    n->env = n->r->env;
    n->io = *cfg->io;
    n->active_conn = -1;
    n->max_conns =
        cfg->max_conns ? FM_MIN(cfg->max_conns, FM_NODE_MAX_CONNS / 2) : FM_NODE_DEFAULT_MAX_CONNS;
    n->max_total = FM_MIN(2 * n->max_conns, FM_NODE_MAX_CONNS); /* room for inbound */
    n->ae_ms = cfg->anti_entropy_ms ? cfg->anti_entropy_ms : FM_NODE_DEFAULT_ANTI_ENTROPY_MS;
    n->idle_ms = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : 3 * n->ae_ms;
    n->window = cfg->window_bytes ? cfg->window_bytes : FM_NODE_DEFAULT_WINDOW;
    n->lazy_push = cfg->lazy_push;
    n->push_cover = cfg->push_cover;
    n->push_delay_ms = cfg->push_delay_ms == FM_NODE_PUSH_AT_ONCE ? 0
                       : cfg->push_delay_ms                       ? cfg->push_delay_ms
                                                                  : FM_NODE_DEFAULT_PUSH_DELAY_MS;
    n->bmin = cfg->backoff_min_ms ? cfg->backoff_min_ms : FM_NODE_DEFAULT_BACKOFF_MIN_MS;
    n->bmax = cfg->backoff_max_ms ? cfg->backoff_max_ms : FM_NODE_DEFAULT_BACKOFF_MAX_MS;
    n->connect_at = UINT64_MAX;
    fm_buf_init(&n->applied);
    fm_buf_init(&n->scratch);
    fm_batch_init(&n->b);
    fm_batch_init(&n->fb);
    int rc = 0;
    if (n->window < FM_PROTO_MIN_WINDOW || n->window > FM_PROTO_MAX_WINDOW || n->bmin > n->bmax ||
        n->idle_ms <= n->ae_ms || n->lazy_push < FM_LAZY_AUTO || n->lazy_push > FM_LAZY_OFF ||
        n->push_delay_ms > FM_NODE_MAX_PUSH_DELAY_MS || n->push_cover < FM_COVER_ON ||
        n->push_cover > FM_COVER_OFF)
        rc = FM_EINVAL;
    if (!rc)
        rc = copy_subs(n, cfg);
    if (!rc)
        rc = own_cert(n);
    if (!rc && (!(n->conns = calloc(n->max_total, sizeof *n->conns)) ||
                !(n->px = calloc(n->max_total, sizeof *n->px))))
        rc = FM_ENOMEM;
    if (rc) {
        fm_node_close(n);
        return rc;
    }
    for (uint32_t i = 0; i < n->max_total; i++)
        n->conns[i].peer = -1;
    n->mesh = n->r->mesh;
    n->member_epoch = fm__replica_member_epoch(n->r);
    fm__replica_set_applied_hook(n->r, on_applied, n);
    fm__replica_set_group_commit(n->r, FM_NODE_GROUP_COMMIT_BATCHES);
    n->rollbacks = n->r->rollbacks;
    *out = n;
    return 0;
}

void fm_node_close(fm_node *n)
{
    if (!n)
        return;
    if (n->conns) {
        n->depth++; /* nothing is pushed while closing */
        for (uint32_t i = 0; i < n->max_total; i++)
            if (n->conns[i].used)
                conn_close(n, &n->conns[i], 0);
    }
    if (n->r && n->conns) {
        fm__replica_set_applied_hook(n->r, NULL, NULL);
        fm__replica_flush(n->r);
        fm__replica_set_group_commit(n->r, 0);
    }
    free(n->conns);
    for (uint32_t i = 0; n->px && i < n->max_total; i++) {
        fm_buf_free(&n->px[i].l.body);
        fm_buf_free(&n->px[i].mixed);
    }
    free(n->px);
    free(n->peers);
    free(n->barr);
    free(n->bnames);
    free(n->bres);
    free(n->bops);
    free(n->bhash);
    free(n->subs);
    free(n->sub_names);
    fm_buf_free(&n->applied);
    fm_buf_free(&n->scratch);
    fm_batch_free(&n->b);
    fm_batch_free(&n->fb);
    free(n->missing);
    free(n->graft_authors);
    free(n);
}
