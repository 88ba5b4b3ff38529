/*
 * test_node.c — the node core over a tiny deterministic in-process driver: connections are queues
 * of byte chunks delivered in order, time only moves when every queue is empty.
 */
#include "fm_test.h"

#include <stddef.h>

#include "crdt/base.h"
#include "node/node.h"
#include "node/proto.h"
#include "node/replica.h"

#define T0 1800000000000ull
#define MAXN 6
#define MAXQ 65536

typedef struct ev {
    int kind; /* 0 open, 1 data, 2 closed */
    int to;   /* node index */
    fm_conn_id conn;
    bool initiator;
    int from;
    uint8_t *data;
    size_t len;
} ev;

typedef struct world world;

typedef struct tnode {
    world *w;
    int idx;
    fm_test_env te;
    fm_identity *id;
    fm_replica *r;
    fm_node *node;
    fm_node_io io;
} tnode;

/* A connection end: conn id -> (node, peer conn id). */
typedef struct tend {
    int node;
    fm_conn_id peer;
    bool open;
    bool ble; /* dialled as "ble:N": the node's slow path */
} tend;

struct world {
    tnode n[MAXN];
    int count;
    fm_identity *authority;
    ev q[MAXQ];
    size_t qhead, qtail;
    tend ends[4096];
    fm_conn_id next_conn;
    uint64_t now;
    /* byte budget per direction: once set, data beyond it cuts the connection */
    long cut_after;
    uint64_t delivered;
    bool merge; /* back-to-back sends on a connection arrive as one chunk, as TCP may do */
    uint64_t msgs_out[MAXN];
};

static world W;

static void push_ev(ev e)
{
    FM_ASSERT(W.qtail - W.qhead < MAXQ);
    W.q[W.qtail++ % MAXQ] = e;
}

static void io_send(void *ctx, fm_conn_id conn, const uint8_t *data, size_t len)
{
    tnode *t = ctx;
    tend *e = &W.ends[conn];
    FM_ASSERT(e->node == t->idx);
    if (!e->open)
        return;
    ev *last = W.qtail > W.qhead ? &W.q[(W.qtail - 1) % MAXQ] : NULL;
    if (W.merge && last && last->kind == 1 && last->conn == e->peer) {
        last->data = realloc(last->data, last->len + len);
        memcpy(last->data + last->len, data, len);
        last->len += len;
        return;
    }
    ev v = {.kind = 1, .to = W.ends[e->peer].node, .conn = e->peer, .from = t->idx};
    v.data = malloc(len);
    memcpy(v.data, data, len);
    v.len = len;
    W.msgs_out[t->idx]++;
    push_ev(v);
}

static void io_close(void *ctx, fm_conn_id conn)
{
    tend *e = &W.ends[conn];
    if (!e->open)
        return;
    e->open = false;
    if (W.ends[e->peer].open) {
        W.ends[e->peer].open = false;
        push_ev((ev){.kind = 2, .to = W.ends[e->peer].node, .conn = e->peer});
    }
}

static int io_connect(void *ctx, const char *addr, fm_conn_id *out)
{
    tnode *t = ctx;
    bool ble = strncmp(addr, "ble:", 4) == 0;
    if (ble)
        addr += 2; /* "ble:N" -> ":N" */
    int to = addr[2] - '0';
    if ((!ble && strncmp(addr, "n:", 2) != 0) || to < 0 || to >= W.count)
        return FM_EINVAL;
    fm_conn_id a = W.next_conn++, b = W.next_conn++;
    W.ends[a] = (tend){t->idx, b, true, ble};
    W.ends[b] = (tend){to, a, true, ble};
    *out = a;
    push_ev((ev){.kind = 0, .to = t->idx, .conn = a, .initiator = true, .from = to});
    push_ev((ev){.kind = 0, .to = to, .conn = b, .initiator = false, .from = t->idx});
    return 0;
}

static void set_now(uint64_t now)
{
    W.now = now;
    for (int i = 0; i < W.count; i++)
        W.n[i].te.now = now;
}

static void deliver(ev *e)
{
    tnode *t = &W.n[e->to];
    char addr[16];
    snprintf(addr, sizeof addr, "%s:%d", W.ends[e->conn].ble ? "ble" : "n", e->from);
    if (e->kind == 0) {
        if (W.ends[e->conn].open)
            fm_node_conn_open(t->node, e->conn, e->initiator, addr);
    } else if (e->kind == 1) {
        if (W.ends[e->conn].open) {
            size_t len = e->len;
            if (W.cut_after >= 0 && W.delivered + len > (uint64_t)W.cut_after) {
                len = (size_t)((uint64_t)W.cut_after - W.delivered);
                if (len)
                    fm_node_conn_data(t->node, e->conn, e->data, len);
                W.delivered += len;
                /* the link dies here: both ends hear of it */
                tend *x = &W.ends[e->conn];
                if (x->open) {
                    x->open = false;
                    W.ends[x->peer].open = false;
                    fm_node_conn_closed(t->node, e->conn);
                    fm_node_conn_closed(W.n[W.ends[x->peer].node].node, x->peer);
                }
                W.cut_after = -1;
            } else {
                W.delivered += len;
                fm_node_conn_data(t->node, e->conn, e->data, len);
            }
        }
        free(e->data);
    } else {
        fm_node_conn_closed(t->node, e->conn);
    }
}

/* Delivers everything queued; then moves the clock to the next deadline, up to until. */
static void run_until(uint64_t until)
{
    for (int guard = 0; guard < 100000; guard++) {
        while (W.qhead < W.qtail) {
            ev e = W.q[W.qhead++ % MAXQ];
            deliver(&e);
        }
        uint64_t next = UINT64_MAX;
        for (int i = 0; i < W.count; i++)
            next = FM_MIN(next, fm_node_next_deadline(W.n[i].node));
        if (next > until)
            break;
        set_now(FM_MAX(next, W.now));
        for (int i = 0; i < W.count; i++)
            if (fm_node_next_deadline(W.n[i].node) <= W.now)
                fm_node_tick(W.n[i].node);
    }
    set_now(FM_MAX(W.now, until));
}

/* Delivers queued events only (no time passes). */
static void drain(void)
{
    run_until(W.now);
}

static void world_open(int count, const fm_node_config *tmpl)
{
    memset(&W, 0, sizeof W);
    W.count = count;
    W.next_conn = 1;
    W.cut_after = -1;
    W.now = T0;
    uint8_t aseed[32] = {0xa1};
    CHECK_OK(fm_identity_from_seed(aseed, &W.authority));
    char certs[MAXN][FM_MEMBER_TEXT_MAX];
    for (int i = 0; i < count; i++) {
        tnode *t = &W.n[i];
        t->w = &W;
        t->idx = i;
        fm_test_env_init(&t->te, T0, 100 + (uint64_t)i);
        uint8_t seed[32] = {(uint8_t)(i + 1), 0x42};
        CHECK_OK(fm_identity_from_seed(seed, &t->id));
        fm_replica_config rc = {
            .version = FM_REPLICA_CONFIG_VERSION, .identity = t->id, .env = &t->te.env};
        CHECK_OK(fm_replica_open(&rc, &t->r));
        uint8_t dev[FM_ID_BYTES];
        fm_identity_public(t->id, dev);
        char name[16];
        snprintf(name, sizeof name, "node-%d", i);
        CHECK_OK(
            fm_mesh_admit(&t->te.env, W.authority, dev, name, 365, 0, certs[i], sizeof certs[i]));
        CHECK_OK(fm_replica_join(t->r, certs[i]));
    }
    for (int i = 0; i < count; i++)
        for (int j = 0; j < count; j++)
            if (i != j)
                CHECK_OK(fm_replica_import_member(W.n[i].r, certs[j]));
    for (int i = 0; i < count; i++) {
        tnode *t = &W.n[i];
        t->io = (fm_node_io){.ctx = t, .send = io_send, .close = io_close, .connect = io_connect};
        fm_node_config cfg = tmpl ? tmpl[i] : (fm_node_config){0};
        cfg.version = FM_NODE_CONFIG_VERSION;
        cfg.replica = t->r;
        cfg.io = &t->io;
        if (!cfg.anti_entropy_ms)
            cfg.anti_entropy_ms = 1000;
        /* Most tests check what goes out at once; test_push_delay checks the wait. */
        if (!cfg.push_delay_ms)
            cfg.push_delay_ms = FM_NODE_PUSH_AT_ONCE;
        CHECK_OK(fm_node_open(&cfg, &t->node));
    }
}

static void world_close(void)
{
    while (W.qhead < W.qtail) {
        ev e = W.q[W.qhead++ % MAXQ];
        free(e.data);
    }
    for (int i = 0; i < W.count; i++) {
        fm_node_close(W.n[i].node);
        fm_replica_close(W.n[i].r);
        fm_identity_free(W.n[i].id);
    }
    fm_identity_free(W.authority);
    /* close events queued by fm_node_close */
    while (W.qhead < W.qtail) {
        ev e = W.q[W.qhead++ % MAXQ];
        free(e.data);
    }
}

static void link_static(int a, int b)
{
    char addr[16];
    snprintf(addr, sizeof addr, "n:%d", b);
    CHECK_OK(fm_node_peer_seen(W.n[a].node, addr, NULL, FM_PEER_STATIC));
}

static int write_n(int node, const char *coll, const char *prefix, int count)
{
    for (int i = 0; i < count; i++) {
        fm_txn *t;
        char id[32];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        int rc = fm_txn_begin(W.n[node].r, coll, &t);
        if (rc)
            return rc;
        if ((rc = fm_txn_set(t, id, "v", FM_KIND_LWW, fm_value_int(i))) ||
            (rc = fm_txn_incr(t, "total", "n", 1))) {
            fm_txn_abort(t);
            return rc;
        }
        if ((rc = fm_txn_commit(t)))
            return rc;
    }
    return 0;
}

static fm_status status_of(int i)
{
    fm_status s;
    CHECK_OK(fm_replica_status(W.n[i].r, &s));
    return s;
}

static void check_same(int a, int b)
{
    fm_status x = status_of(a), y = status_of(b);
    CHECK_EQ_INT(x.ops, y.ops);
    CHECK_MEM(x.state_hash, y.state_hash, FM_HASH_BYTES);
}

static void test_two_nodes_sync(void)
{
    world_open(2, NULL);
    CHECK_OK(write_n(0, "notes", "a", 30));
    CHECK_OK(write_n(1, "notes", "b", 20));
    CHECK_OK(write_n(1, "other", "c", 5));
    link_static(0, 1);
    run_until(T0 + 5000);
    check_same(0, 1);
    CHECK_EQ_INT(status_of(0).ops, 2 * (30 + 20 + 5));
    fm_node_stats s;
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.sessions_ok, 1);
    CHECK_EQ_INT(s.batches_refused, 0);
    world_close();
}

/* A write reaches a connected peer at once: no timer has to fire. */
static void test_eager_push(void)
{
    world_open(3, NULL);
    link_static(0, 1);
    link_static(1, 2);
    run_until(T0 + 3000);
    uint64_t before = W.now;
    CHECK_OK(write_n(0, "notes", "x", 3));
    drain();
    CHECK_EQ_INT(W.now, before);
    check_same(0, 2); /* two hops, relayed by node 1 */
    CHECK_EQ_INT(status_of(2).ops, 6);
    world_close();
}

/* With a push delay, what a node applies waits that long and then goes out in one frame per
 * peer; a relay's wait adds to the writer's. */
static void test_push_delay(void)
{
    fm_node_config cfg[3];
    for (int i = 0; i < 3; i++)
        cfg[i] = (fm_node_config){.push_delay_ms = 20};
    world_open(3, cfg);
    link_static(0, 1);
    link_static(1, 2);
    run_until(T0 + 3000);
    fm_node_stats a0, a1;
    fm_node_stats_get(W.n[0].node, &a0);
    uint64_t before = W.now;
    CHECK_OK(write_n(0, "notes", "x", 3));
    CHECK_EQ_INT(fm_node_next_deadline(W.n[0].node), before + 20);
    drain();
    CHECK_EQ_INT(status_of(1).ops, 0); /* nothing left before the delay */
    run_until(before + 20);
    CHECK_EQ_INT(status_of(1).ops, 6);
    CHECK_EQ_INT(status_of(2).ops, 0); /* node 1 holds them for its own delay */
    fm_node_stats_get(W.n[0].node, &a1);
    CHECK_EQ_INT(a1.batches_out - a0.batches_out, 3);
    CHECK_EQ_INT(a1.frames_out - a0.frames_out, 1); /* the three batches in one frame */
    run_until(before + 40);
    check_same(0, 2);
    /* A full hold goes out at once. */
    before = W.now;
    CHECK_OK(write_n(0, "bulk", "y", 1));
    fm_txn *t;
    CHECK_OK(fm_txn_begin(W.n[0].r, "bulk", &t));
    static uint8_t big[15000];
    memset(big, 'z', sizeof big);
    for (int i = 0; i * sizeof big <= FM_NODE_PUSH_HOLD_BYTES; i++) {
        char id[16];
        snprintf(id, sizeof id, "big-%d", i);
        CHECK_OK(fm_txn_set(t, id, "v", FM_KIND_LWW, fm_value_bin(big, sizeof big)));
    }
    CHECK_OK(fm_txn_commit(t));
    drain();
    CHECK_EQ_INT(W.now, before);
    CHECK_EQ_INT(status_of(1).ops, status_of(0).ops);
    world_close();
}

/* Relayed batches are applied at once but committed in groups: within FM_NODE_COMMIT_MS, by the
 * node's own deadline, and before the node closes. */
static void test_group_commit_deadline(void)
{
    world_open(2, NULL);
    link_static(0, 1);
    run_until(T0 + 3000);
    CHECK(!W.n[1].r->txn_open);
    uint64_t before = W.now;
    CHECK_OK(write_n(0, "notes", "x", 3));
    drain();
    CHECK_EQ_INT(status_of(1).ops, 6); /* applied and visible before the commit */
    CHECK(W.n[1].r->txn_open);
    CHECK(fm_node_next_deadline(W.n[1].node) <= before + FM_NODE_COMMIT_MS);
    run_until(before + FM_NODE_COMMIT_MS);
    CHECK(!W.n[1].r->txn_open);
    CHECK_OK(write_n(0, "notes", "y", 2));
    drain();
    CHECK(W.n[1].r->txn_open);
    fm_node_close(W.n[1].node);
    W.n[1].node = NULL;
    CHECK(!W.n[1].r->txn_open);
    CHECK_EQ_INT(status_of(1).ops, 10);
    world_close();
}

/* Lazy push: in a full mesh of four, redundant pushes get their senders pruned; pruned peers
 * announce instead, and every write still reaches every node at once (no timer fires). */
static void lazy_rounds(void)
{
    for (int a = 0; a < W.count; a++)
        for (int b = a + 1; b < W.count; b++)
            link_static(a, b);
    run_until(T0 + 3000);
    for (int round = 0; round < 6; round++) {
        uint64_t before = W.now;
        char prefix[8];
        snprintf(prefix, sizeof prefix, "w%d", round);
        CHECK_OK(write_n(round % W.count, "notes", prefix, 2));
        drain();
        CHECK_EQ_INT(W.now, before);
        for (int i = 1; i < W.count; i++)
            check_same(0, i);
        run_until(W.now + FM_NODE_IHAVE_MS + FM_NODE_GRAFT_MS + 1); /* announcements settle */
    }
}

static void test_lazy_push(void)
{
    /* five in a full mesh: four connections each, one more than FM_NODE_EAGER_MIN */
    fm_node_config on[5];
    for (int i = 0; i < 5; i++)
        on[i] = (fm_node_config){.lazy_push = FM_LAZY_ON, .push_cover = FM_COVER_OFF};
    world_open(5, on);
    lazy_rounds();
    uint64_t prunes = 0, ihave = 0, dups_late = 0;
    for (int i = 0; i < 5; i++) {
        fm_node_stats st;
        fm_node_stats_get(W.n[i].node, &st);
        prunes += st.prunes_out, ihave += st.ihave_out;
        CHECK_EQ_INT(st.grafts_out, 0); /* nothing was late: every node kept two pushers */
        CHECK_EQ_INT(st.batches_refused, 0);
        dups_late += st.batches_dup;
    }
    CHECK(prunes >= 1 && prunes <= 5);
    CHECK(ihave >= 1 && ihave <= 1000);
    CHECK(dups_late >= 1 && dups_late <= 1000);
    CHECK_EQ_INT(status_of(3).ops, 6 * 2 * 2);
    world_close();
    /* AUTO floods over IP connections ("n:" addresses here): nobody is pruned. */
    fm_node_config flood[5];
    for (int i = 0; i < 5; i++)
        flood[i] = (fm_node_config){.push_cover = FM_COVER_OFF};
    world_open(5, flood);
    lazy_rounds();
    for (int i = 0; i < 5; i++) {
        fm_node_stats st;
        fm_node_stats_get(W.n[i].node, &st);
        CHECK_EQ_INT(st.prunes_out, 0);
        CHECK_EQ_INT(st.ihave_out, 0);
        check_same(0, i);
    }
    world_close();
}

/* Cuts the connection between nodes a and b, as a link that dies: both ends hear of it, and
 * what was queued on it is lost. */
static void cut_link(int a, int b)
{
    for (fm_conn_id id = 1; id < W.next_conn; id++) {
        tend *x = &W.ends[id];
        if (!x->open || x->node != a || W.ends[x->peer].node != b)
            continue;
        x->open = false;
        W.ends[x->peer].open = false;
        fm_node_conn_closed(W.n[a].node, id);
        fm_node_conn_closed(W.n[b].node, x->peer);
    }
}

static uint64_t sum_stat(size_t off)
{
    uint64_t sum = 0;
    for (int i = 0; i < W.count; i++) {
        fm_node_stats st;
        fm_node_stats_get(W.n[i].node, &st);
        uint64_t v;
        memcpy(&v, (const uint8_t *)&st + off, sizeof v);
        sum += v;
    }
    return sum;
}
#define SUM(field) sum_stat(offsetof(fm_node_stats, field))

/* A full mesh of 4 dialled over scheme ("n" or "ble"): a batch floods, every relay pushing it to
 * both other peers, and nothing is covered. */
static void check_floods(const fm_node_config *cfg, const char *scheme)
{
    world_open(4, cfg);
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++) {
            char addr[16];
            snprintf(addr, sizeof addr, "%s:%d", scheme, b);
            CHECK_OK(fm_node_peer_seen(W.n[a].node, addr, NULL, FM_PEER_STATIC));
        }
    run_until(T0 + 3000);
    uint64_t in0 = SUM(batches_in);
    CHECK_OK(write_n(0, "notes", "x", 1));
    drain();
    CHECK_EQ_INT(SUM(batches_in) - in0, 3 + 3 * 2);
    CHECK_EQ_INT(SUM(push_covered), 0);
    check_same(0, 3);
    world_close();
}

/* PEERS: in a full mesh, a relay announces rather than pushes to the peers its sender has a
 * session with, so a write reaches each node once, at once; the announcements then find
 * nothing missing. */
static void test_push_cover(void)
{
    fm_node_config cfg[4];
    for (int i = 0; i < 4; i++)
        cfg[i] = (fm_node_config){.anti_entropy_ms = 10000};
    world_open(4, cfg);
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            link_static(a, b);
    run_until(T0 + 3000);
    uint64_t dup0 = SUM(batches_dup), in0 = SUM(batches_in);
    for (int round = 0; round < 4; round++) {
        uint64_t before = W.now;
        CHECK_OK(write_n(round, "notes", round % 2 ? "odd" : "even", 2));
        drain();
        CHECK_EQ_INT(W.now, before); /* no timer fired */
        for (int i = 1; i < 4; i++)
            check_same(0, i);
        run_until(W.now + FM_NODE_COVER_IHAVE_MS + FM_NODE_GRAFT_MS + 1);
    }
    CHECK_EQ_INT(status_of(3).ops, 4 * 2 * 2);
    /* write_n commits each record apart: 8 batches, each to each other node once */
    CHECK_EQ_INT(SUM(batches_in) - in0, 8 * 3);
    CHECK_EQ_INT(SUM(batches_dup), dup0);
    CHECK_EQ_INT(SUM(push_covered), 8 * 3 * 2); /* each receiver covered two peers */
    CHECK(SUM(ihave_out) >= 8 * 3 * 2);
    CHECK_EQ_INT(SUM(grafts_out), 0);
    world_close();

    /* The same mesh, pushing anyway: every relay pushes to both other peers. */
    for (int i = 0; i < 4; i++)
        cfg[i].push_cover = FM_COVER_OFF;
    check_floods(cfg, "n");
    /* Over BLE nothing is covered (lazy push is what saves airtime there; off here). */
    for (int i = 0; i < 4; i++)
        cfg[i] = (fm_node_config){.anti_entropy_ms = 10000, .lazy_push = FM_LAZY_OFF};
    check_floods(cfg, "ble");
}

/* A covered push lost on a dying link: the announcements of the other relays make the node
 * graft it, long before anti-entropy would. */
static void test_push_cover_lost(void)
{
    fm_node_config cfg[4];
    for (int i = 0; i < 4; i++)
        cfg[i] = (fm_node_config){
            .anti_entropy_ms = 10000, .backoff_min_ms = 30000, .backoff_max_ms = 60000};
    world_open(4, cfg);
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            link_static(a, b);
    run_until(T0 + 3000);
    uint64_t before = W.now;
    CHECK_OK(write_n(0, "notes", "x", 1));
    /* Node 0's pushes are queued; the one to node 2 dies with the link. Nodes 1 and 3 still
     * hold node 0's PEERS naming node 2 when the batch reaches them. */
    cut_link(0, 2);
    drain();
    CHECK_EQ_INT(status_of(1).ops, 2);
    CHECK_EQ_INT(status_of(2).ops, 0);
    run_until(before + FM_NODE_COVER_IHAVE_MS + FM_NODE_GRAFT_MS + 50);
    CHECK_EQ_INT(status_of(2).ops, 2);
    CHECK(SUM(grafts_out) >= 1);
    CHECK(W.now < before + 1000); /* neither anti-entropy nor a redial did it */
    world_close();
}

/* Both ends dial each other (as discovery makes them do): one connection survives, and a write
 * still reaches the far end of a line at once. */
static void test_symmetric_dial(void)
{
    world_open(3, NULL);
    link_static(0, 1);
    link_static(1, 0);
    link_static(1, 2);
    link_static(2, 1);
    run_until(T0 + 3000);
    uint64_t before = W.now;
    CHECK_OK(write_n(0, "fresh", "x", 2));
    drain();
    CHECK_EQ_INT(W.now, before);
    CHECK_EQ_INT(status_of(2).ops, 4);
    CHECK_OK(write_n(2, "fresh", "y", 1));
    drain();
    CHECK_EQ_INT(status_of(0).ops, 6);
    fm_node_stats s;
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.conns, 2);
    world_close();
}

/* A node that held none of a collection the peer named still pushes its own first write to it
 * at once: the peer's vector comes back in the first exchange, not at the next round. */
static void test_push_after_catch_up(void)
{
    fm_node_config cfg[2] = {{.anti_entropy_ms = 60000}, {.anti_entropy_ms = 60000}};
    world_open(2, cfg);
    CHECK_OK(write_n(0, "notes", "a", 3));
    link_static(0, 1);
    run_until(T0 + 2000);
    check_same(0, 1);
    CHECK_OK(write_n(1, "notes", "b", 1));
    drain();
    check_same(0, 1);
    world_close();
}

static int count_ble(void *arg, const fm_peer_info *p)
{
    int *k = arg;
    if (p->state == FM_PEER_SYNCED || p->state == FM_PEER_SYNCING)
        k[p->addr && strncmp(p->addr, "ble:", 4) == 0]++;
    return 0;
}

/* Reached over BLE and over IP at once: the IP connection carries the sync, the BLE one goes,
 * and writes keep flowing. */
static void test_prefers_ip_over_ble(void)
{
    world_open(2, NULL);
    CHECK_OK(fm_node_peer_seen(W.n[0].node, "ble:1", NULL, FM_PEER_STATIC));
    run_until(T0 + 1000);
    CHECK_OK(write_n(0, "notes", "a", 2));
    link_static(0, 1);
    run_until(W.now + 3000);
    int k0[2] = {0}, k1[2] = {0};
    fm_node_peers(W.n[0].node, count_ble, k0);
    fm_node_peers(W.n[1].node, count_ble, k1);
    CHECK_EQ_INT(k0[0], 1);
    CHECK_EQ_INT(k0[1], 0);
    CHECK_EQ_INT(k1[0], 1);
    CHECK_EQ_INT(k1[1], 0);
    CHECK_OK(write_n(1, "notes", "b", 1));
    drain();
    check_same(0, 1);
    world_close();
}

static uint64_t coll_ops(int node, const char *coll)
{
    fm_bytes vv;
    fm_vv v;
    fm_vv_init(&v);
    CHECK_OK(fm_replica_vv(W.n[node].r, coll, &vv));
    CHECK_OK(fm_vv_decode(vv.data, vv.len, &v));
    uint64_t total = fm_vv_total(&v);
    fm_vv_free(&v);
    fm_bytes_free(&vv);
    return total;
}

static uint64_t frames_out(int node)
{
    fm_node_stats st;
    fm_node_stats_get(W.n[node].node, &st);
    return st.frames_out;
}

/* MIXED: what a push delay gathers of several collections goes to a peer in one frame, from the
 * writer and again from the relay. */
static void test_mixed_push(void)
{
    fm_node_config cfg[3];
    for (int i = 0; i < 3; i++)
        cfg[i] = (fm_node_config){.anti_entropy_ms = 10000, .push_delay_ms = 50};
    world_open(3, cfg);
    link_static(0, 1);
    link_static(1, 2);
    run_until(T0 + 3000);
    uint64_t f0 = frames_out(0), f1 = frames_out(1);
    static const char *const colls[] = {"alpha", "beta", "gamma"};
    for (int i = 0; i < 3; i++)
        CHECK_OK(write_n(0, colls[i], "x", 1));
    run_until(W.now + 200);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(coll_ops(2, colls[i]), 2);
    CHECK_EQ_INT(frames_out(0) - f0, 1);
    CHECK_EQ_INT(frames_out(1) - f1, 1);
    world_close();
}

/* Critical collections sync first: with a small window, the receiver holds all of its critical
 * collection while the bulk one is still coming. */
static void test_critical_first(void)
{
    fm_node_sub subs[2] = {{"bulk", FM_PRIO_BULK}, {"crit", FM_PRIO_CRITICAL}};
    fm_node_config cfg[2] = {{0}, {.subs = subs, .nsubs = 2, .window_bytes = 4096}};
    world_open(2, cfg);
    CHECK_OK(write_n(0, "bulk", "b", 150));
    CHECK_OK(write_n(0, "crit", "c", 5));
    link_static(0, 1);
    fm_node_tick(W.n[0].node);
    bool crit_first = false;
    for (int guard = 0; guard < 100000 && W.qhead < W.qtail; guard++) {
        ev e = W.q[W.qhead++ % MAXQ];
        deliver(&e);
        if (coll_ops(1, "crit") == 10 && coll_ops(1, "bulk") < 300)
            crit_first = true;
    }
    CHECK(crit_first);
    run_until(T0 + 5000);
    check_same(0, 1);
    world_close();
}

/* When nothing differs, one anti-entropy exchange is one SUMMARY each way, a few dozen bytes. */
static void test_nothing_differs(void)
{
    world_open(2, NULL);
    CHECK_OK(write_n(0, "notes", "a", 10));
    link_static(0, 1);
    run_until(T0 + 500);
    check_same(0, 1);
    fm_node_stats a0, b0, a1, b1;
    fm_node_stats_get(W.n[0].node, &a0);
    fm_node_stats_get(W.n[1].node, &b0);
    fm_node_sync_now(W.n[0].node);
    drain();
    fm_node_stats_get(W.n[0].node, &a1);
    fm_node_stats_get(W.n[1].node, &b1);
    CHECK_EQ_INT(a1.frames_out - a0.frames_out, 1); /* SUMMARY */
    CHECK(b1.frames_out - b0.frames_out <= 1);      /* at most its own SUMMARY back */
    CHECK(a1.bytes_out - a0.bytes_out + b1.bytes_out - b0.bytes_out <= 200);
    CHECK_EQ_INT(b1.batches_in, b0.batches_in);
    world_close();
}

/* Four nodes: 0, 1 and 2 linked and holding `writes` batches of node 0's; node 3 holds none and
 * is linked to nobody yet. */
static void three_holders(int writes)
{
    world_open(4, NULL);
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            link_static(a, b);
    CHECK_OK(write_n(0, "notes", "a", writes));
    run_until(T0 + 2000);
    check_same(0, 1);
    check_same(0, 2);
}

/* A node that comes back to three peers holding what it lacks takes it from one of them: its
 * VECTORs to the others wait (docs/PROTOCOL.md §8.4.1). A cut at any byte of that catch-up
 * still leaves it complete with no timer run: a feeder that goes lets the waiting VECTORs go. */
static void test_one_feeder(void)
{
    static const long cuts[] = {-1,    0,     300,   2000,  5000,  9000,
                                15000, 30000, 45000, 60000, 80000, 100000};
    for (size_t k = 0; k < FM_ARRAY_LEN(cuts); k++) {
        three_holders(200);
        fm_node_stats before, after;
        fm_node_stats_get(W.n[3].node, &before);
        if (cuts[k] >= 0)
            W.cut_after = (long)W.delivered + cuts[k];
        for (int a = 0; a < 3; a++)
            link_static(3, a);
        drain();
        check_same(0, 3);
        fm_node_stats_get(W.n[3].node, &after);
        if (cuts[k] < 0) {
            CHECK(after.vectors_deferred > 0);
            CHECK_EQ_INT(after.batches_in - before.batches_in, 200); /* each batch once */
            CHECK_EQ_INT(after.batches_dup, before.batches_dup);
        }
        world_close();
    }
}

/* Node 3 catches up from three peers. Its feeder's stream is cut halfway, and a second peer goes
 * too, with no time passing: the last peer, whose VECTOR from node 3 waited for the feeder,
 * streams the rest at once. */
static void test_feeder_lost(void)
{
    three_holders(1000);
    for (int a = 0; a < 3; a++)
        link_static(3, a);
    fm_node_tick(W.n[3].node); /* the dials; then one event at a time */
    /* The stream comes last, after the other peers' VECTORs; then it is cut halfway. */
    int feeder = -1;
    bool held = false;
    while (W.qhead < W.qtail && feeder < 0) {
        ev e = W.q[W.qhead++ % MAXQ];
        if (e.kind == 1 && e.to == 3 && e.len > 10000) {
            if (!held) {
                held = true;
                push_ev(e);
                continue;
            }
            feeder = W.ends[W.ends[e.conn].peer].node;
            W.cut_after = (long)(W.delivered + e.len / 2);
        }
        deliver(&e);
    }
    CHECK(feeder >= 0);
    uint64_t ops = status_of(3).ops;
    CHECK(ops > 0 && ops < status_of(0).ops);
    cut_link(3, feeder == 0 ? 1 : 0);
    drain();
    check_same(0, 3);
    fm_node_stats st;
    fm_node_stats_get(W.n[3].node, &st);
    CHECK(st.vectors_deferred > 0);
    world_close();
}

/* A connection cut at any byte loses nothing and applies nothing twice. */
static void test_resume_after_cut(void)
{
    static const long cuts[] = {0, 1, 5, 37, 90, 150, 333, 700, 1500, 2600, 4000, 9000, 20000};
    for (size_t k = 0; k < FM_ARRAY_LEN(cuts); k++) {
        world_open(2, NULL);
        CHECK_OK(write_n(0, "notes", "a", 120));
        CHECK_OK(write_n(1, "notes", "b", 40));
        W.cut_after = cuts[k];
        link_static(0, 1);
        run_until(T0 + 60000); /* reconnects after backoff */
        check_same(0, 1);
        CHECK_EQ_INT(status_of(1).ops, 2 * 160);
        CHECK_EQ_INT(status_of(1).pending, 0);
        world_close();
    }
}

static void test_subscriptions(void)
{
    fm_node_sub only_x = {"x", FM_PRIO_CRITICAL};
    fm_node_config cfg[3] = {{0}, {.subs = &only_x, .nsubs = 1}, {.subscribe_none = true}};
    world_open(3, cfg);
    CHECK_OK(write_n(0, "x", "a", 4));
    CHECK_OK(write_n(0, "y", "a", 4));
    link_static(0, 1);
    link_static(0, 2);
    run_until(T0 + 5000);
    CHECK_EQ_INT(status_of(1).ops, 8); /* x only */
    CHECK_EQ_INT(status_of(2).ops, 0); /* nothing */
    /* a node that subscribes to nothing still offers what it wrote itself */
    CHECK_OK(write_n(2, "z", "c", 2));
    run_until(W.now + 5000);
    CHECK_EQ_INT(status_of(0).ops, 16 + 4);
    CHECK_EQ_INT(status_of(2).ops, 4);
    world_close();
}

static void test_hostile_bytes(void)
{
    world_open(2, NULL);
    CHECK_OK(write_n(0, "notes", "a", 5));
    /* an inbound connection that sends garbage is closed; the node keeps serving */
    fm_conn_id bad = W.next_conn++, badpeer = W.next_conn++;
    W.ends[bad] = (tend){1, badpeer, true, false};
    W.ends[badpeer] = (tend){0, bad, true, false};
    CHECK_OK(fm_node_conn_open(W.n[1].node, bad, false, NULL));
    static const uint8_t junk[] = {0, 0, 0, 3, 1, 2, 3, 0xff, 0xff};
    CHECK(fm_node_conn_data(W.n[1].node, bad, junk, sizeof junk) < 0);
    CHECK(!W.ends[bad].open);
    static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff};
    fm_conn_id bad2 = W.next_conn++, bad2peer = W.next_conn++;
    W.ends[bad2] = (tend){1, bad2peer, true, false};
    W.ends[bad2peer] = (tend){0, bad2, true, false};
    CHECK_OK(fm_node_conn_open(W.n[1].node, bad2, false, NULL));
    CHECK(fm_node_conn_data(W.n[1].node, bad2, huge, sizeof huge) < 0);
    /* unknown connection ids are refused */
    CHECK_RC(fm_node_conn_data(W.n[1].node, 999, junk, sizeof junk), FM_ESTATE);
    link_static(0, 1);
    run_until(T0 + 5000);
    check_same(0, 1);
    world_close();
}

/* A silent peer (no bytes at all after connecting) is dropped by the handshake timeout. */
static void test_silent_peer_times_out(void)
{
    world_open(2, NULL);
    fm_conn_id c = W.next_conn++, cp = W.next_conn++;
    W.ends[c] = (tend){1, cp, true, false};
    W.ends[cp] = (tend){0, c, true, false};
    CHECK_OK(fm_node_conn_open(W.n[1].node, c, false, NULL));
    fm_node_stats s;
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.conns, 1);
    run_until(T0 + 20000);
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.conns, 0);
    CHECK(!W.ends[c].open);
    world_close();
}

/* The peer's stream start, HELLO, SUMMARY and MEMBERS in one chunk: we answer only after our
 * own HELLO went out (a peer refuses anything before it). */
static void test_merged_stream(void)
{
    world_open(2, NULL);
    W.merge = true;
    /* node 0 alone knows a newcomer's certificate: the member sets differ */
    char text[FM_MEMBER_TEXT_MAX];
    uint8_t dev[FM_ID_BYTES] = {0x99, 0x42};
    CHECK_OK(fm_mesh_admit(&W.n[0].te.env, W.authority, dev, "late", 365, 0, text, sizeof text));
    CHECK_OK(fm_replica_import_member(W.n[0].r, text));
    CHECK_OK(write_n(0, "notes", "a", 30));
    CHECK_OK(write_n(1, "notes", "b", 20));
    link_static(0, 1);
    run_until(T0 + 5000);
    check_same(0, 1);
    fm_node_stats s;
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.sessions_ok, 1);
    CHECK_EQ_INT(s.sessions_failed, 0);
    world_close();
}

/* A revocation made while connected reaches the peer without a reconnect. */
static void test_members_while_connected(void)
{
    world_open(3, NULL);
    link_static(0, 1);
    run_until(T0 + 2000);
    uint8_t mine[FM_HASH_BYTES], theirs[FM_HASH_BYTES];
    uint32_t a, b;
    char text[FM_MEMBER_TEXT_MAX];
    uint8_t dev[FM_ID_BYTES];
    fm_identity_public(W.n[2].id, dev);
    CHECK_OK(fm_replica_revoke(W.n[0].r, W.authority, dev, text, sizeof text));
    fm_node_tick(W.n[0].node); /* the node notices the membership change */
    run_until(W.now + 3000);
    CHECK_OK(fm__replica_member_digest(W.n[0].r, mine, &a));
    CHECK_OK(fm__replica_member_digest(W.n[1].r, theirs, &b));
    CHECK_EQ_INT(a, b);
    CHECK_MEM(mine, theirs, FM_HASH_BYTES);
    fm_node_stats s;
    fm_node_stats_get(W.n[1].node, &s);
    CHECK_EQ_INT(s.sessions_ok, 1);
    world_close();
}

/* A wall clock stepped back an hour neither drops a healthy connection nor stalls it. */
static void test_clock_steps_back(void)
{
    world_open(2, NULL);
    link_static(0, 1);
    run_until(T0 + 2000);
    W.n[0].te.now -= 3600 * 1000;
    fm_node_tick(W.n[0].node);
    fm_node_stats s;
    fm_node_stats_get(W.n[0].node, &s);
    CHECK_EQ_INT(s.conns, 1);
    CHECK(fm_node_next_deadline(W.n[0].node) <= W.n[0].te.now + 10000);
    world_close();
}

static void test_config_errors(void)
{
    world_open(1, NULL);
    fm_node *n;
    fm_node_config cfg = {.version = FM_NODE_CONFIG_VERSION, .replica = W.n[0].r, .io = &W.n[0].io};
    cfg.window_bytes = 10;
    CHECK_RC(fm_node_open(&cfg, &n), FM_EINVAL);
    cfg.window_bytes = 0;
    cfg.lazy_push = 3;
    CHECK_RC(fm_node_open(&cfg, &n), FM_EINVAL);
    cfg.lazy_push = FM_LAZY_AUTO;
    cfg.version = 99;
    CHECK_RC(fm_node_open(&cfg, &n), FM_EINVAL);
    fm_node_sub dup[2] = {{"a", 0}, {"a", 1}};
    cfg.version = FM_NODE_CONFIG_VERSION;
    cfg.subs = dup;
    cfg.nsubs = 2;
    CHECK_RC(fm_node_open(&cfg, &n), FM_EINVAL);
    CHECK_RC(fm_node_peer_seen(W.n[0].node, "", NULL, 0), FM_EINVAL);
    /* the peer table holds FM_NODE_MAX_PEERS addresses; one more is refused, a known one not */
    int rc = 0;
    for (int i = 0; i < FM_NODE_MAX_PEERS && !rc; i++) {
        char addr[32];
        snprintf(addr, sizeof addr, "peer-%d:7400", i);
        rc = fm_node_peer_seen(W.n[0].node, addr, NULL, 0);
    }
    CHECK_OK(rc);
    CHECK_RC(fm_node_peer_seen(W.n[0].node, "one-more:7400", NULL, 0), FM_ELIMIT);
    CHECK_OK(fm_node_peer_seen(W.n[0].node, "peer-7:7400", NULL, 0));
    char longaddr[FM_NODE_MAX_ADDR + 2];
    memset(longaddr, 'a', sizeof longaddr - 1);
    longaddr[sizeof longaddr - 1] = '\0';
    CHECK_RC(fm_node_peer_seen(W.n[0].node, longaddr, NULL, 0), FM_EINVAL);
    world_close();
}

int main(void)
{
    RUN(test_two_nodes_sync);
    RUN(test_eager_push);
    RUN(test_push_delay);
    RUN(test_group_commit_deadline);
    RUN(test_lazy_push);
    RUN(test_push_cover);
    RUN(test_push_cover_lost);
    RUN(test_mixed_push);
    RUN(test_symmetric_dial);
    RUN(test_push_after_catch_up);
    RUN(test_prefers_ip_over_ble);
    RUN(test_critical_first);
    RUN(test_nothing_differs);
    RUN(test_one_feeder);
    RUN(test_feeder_lost);
    RUN(test_resume_after_cut);
    RUN(test_subscriptions);
    RUN(test_hostile_bytes);
    RUN(test_silent_peer_times_out);
    RUN(test_merged_stream);
    RUN(test_members_while_connected);
    RUN(test_clock_steps_back);
    RUN(test_config_errors);
    TEST_MAIN_END();
}
