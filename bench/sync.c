/*
 * sync.c — reconciliation figures for fieldmesh-bench: two real node cores joined by an
 * in-process link that delivers in waves (everything queued crosses at once; the answers form
 * the next wave), so half round trips are counted exactly and every byte is counted.
 *
 *   reconcile: both replicas hold the same `shared` ops (10 authors, 100-op batches); each side
 *   then writes `fresh` single-op batches offline; they connect. Figures: wire bytes (handshake
 *   included) against the new batches' own bytes, and sync round trips after the handshake.
 *   idle: the same two replicas once equal; one anti-entropy exchange.
 */
#include "bench/sync.h"

#include "crdt/base.h"
#include "node/node.h"
#include "node/replica.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1800000000000ull
#define AUTHORS 10
#define OPS_PER_BATCH 100

typedef struct chunk {
    int to;
    fm_conn_id conn;
    uint8_t *data;
    size_t len;
} chunk;

typedef struct side {
    fm_env env;
    uint64_t rng;
    fm_identity *id;
    fm_replica *r;
    fm_node *node;
    fm_node_io io;
    struct link *l;
    int idx;
} side;

typedef struct link {
    side s[2];
    uint64_t now;
    chunk *q, *next;
    size_t nq, nnext, cap;
    bool opened;
    uint64_t fresh_bytes;
} link;

static uint64_t env_now(void *ctx)
{
    return ((side *)ctx)->l->now;
}

static void env_random(void *ctx, void *buf, size_t len)
{
    side *s = ctx;
    for (size_t i = 0; i < len; i++) {
        s->rng ^= s->rng << 13, s->rng ^= s->rng >> 7, s->rng ^= s->rng << 17;
        ((uint8_t *)buf)[i] = (uint8_t)(s->rng >> 24);
    }
}

static void io_send(void *ctx, fm_conn_id conn, const uint8_t *data, size_t len)
{
    side *s = ctx;
    link *l = s->l;
    if (l->nnext == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->next = realloc(l->next, l->cap * sizeof *l->next);
        l->q = realloc(l->q, l->cap * sizeof *l->q);
        FM_ASSERT(l->next && l->q);
    }
    chunk *c = &l->next[l->nnext++];
    c->to = 1 - s->idx;
    c->conn = conn == 1 ? 2 : 1;
    c->data = malloc(len);
    FM_ASSERT(c->data);
    memcpy(c->data, data, len);
    c->len = len;
}

static void io_close(void *ctx, fm_conn_id conn)
{
    (void)ctx, (void)conn;
}

static int io_connect(void *ctx, const char *addr, fm_conn_id *out)
{
    side *s = ctx;
    (void)addr;
    *out = 1; /* side 0 is conn 1, side 1 is conn 2 */
    s->l->opened = true;
    return 0;
}

static int side_open(link *l, int idx, const fm_identity *authority, char *cert, size_t cap)
{
    side *s = &l->s[idx];
    s->l = l;
    s->idx = idx;
    s->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(idx + 7);
    s->env = (fm_env){FM_ENV_VERSION, s, env_now, env_random};
    uint8_t seed[32] = {(uint8_t)(0x50 + idx)};
    fm_replica_config rc = {.version = FM_REPLICA_CONFIG_VERSION, .env = &s->env};
    int rc2 = fm_identity_from_seed(seed, &s->id);
    if (!rc2) {
        rc.identity = s->id;
        rc2 = fm_replica_open(&rc, &s->r);
    }
    uint8_t dev[FM_ID_BYTES];
    if (!rc2) {
        fm_identity_public(s->id, dev);
        rc2 = fm_mesh_admit(&s->env, authority, dev, idx ? "b" : "a", 365, 0, cert, cap);
    }
    return rc2 ? rc2 : fm_replica_join(s->r, cert);
}

typedef struct feed_ctx {
    fm_bytes *b;
    size_t n, cap;
} feed_ctx;

static int grab(void *arg, const uint8_t *p, size_t len)
{
    feed_ctx *x = arg;
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 256;
        x->b = realloc(x->b, x->cap * sizeof *x->b);
        FM_ASSERT(x->b);
    }
    x->b[x->n].data = malloc(len);
    FM_ASSERT(x->b[x->n].data);
    memcpy(x->b[x->n].data, p, len);
    x->b[x->n++].len = len;
    return 0;
}

/* AUTHORS outside writers make `shared` ops; both sides ingest every batch. */
static int make_shared(link *l, const fm_identity *authority, uint64_t shared, char certs[][400])
{
    feed_ctx x = {0};
    int rc = 0;
    for (int a = 0; a < AUTHORS && !rc; a++) {
        side w = {.l = l, .idx = 2 + a, .rng = 99 + (uint64_t)a};
        w.env = (fm_env){FM_ENV_VERSION, &w, env_now, env_random};
        uint8_t seed[32] = {(uint8_t)(0x70 + a)};
        fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .env = &w.env};
        uint8_t dev[FM_ID_BYTES];
        if ((rc = fm_identity_from_seed(seed, &w.id)))
            break;
        cfg.identity = w.id;
        fm_identity_public(w.id, dev);
        if (!(rc = fm_replica_open(&cfg, &w.r)) &&
            !(rc = fm_mesh_admit(&w.env, authority, dev, "writer", 365, 0, certs[a], 400)))
            rc = fm_replica_join(w.r, certs[a]);
        uint64_t per = shared / AUTHORS;
        for (uint64_t op = 0; op < per && !rc; op += OPS_PER_BATCH) {
            fm_txn *t;
            if ((rc = fm_txn_begin(w.r, "log", &t)))
                break;
            for (uint64_t k = op; k < op + OPS_PER_BATCH && k < per && !rc; k++) {
                char id[32];
                snprintf(id, sizeof id, "w%d-%llu", a, (unsigned long long)(k / 4));
                rc = fm_txn_set(t, id, k % 2 ? "status" : "note", FM_KIND_LWW,
                                fm_value_int((int64_t)k));
            }
            rc = rc ? (fm_txn_abort(t), rc) : fm_txn_commit(t);
        }
        if (!rc)
            rc = fm_replica_export(w.r, "log", NULL, 0, grab, &x);
        fm_replica_close(w.r);
        fm_identity_free(w.id);
    }
    for (int i = 0; i < 2 && !rc; i++) {
        for (int a = 0; a < AUTHORS && !rc; a++)
            rc = fm_replica_import_member(l->s[i].r, certs[a]);
        int n = rc ? rc : fm_replica_ingest(l->s[i].r, x.b, x.n, NULL);
        rc = n < 0 ? n : 0;
    }
    for (size_t i = 0; i < x.n; i++)
        free(x.b[i].data);
    free(x.b);
    return rc;
}

/* Offline writes on one side: single-op batches, a quarter of them to records both write. */
static int write_fresh(link *l, int idx, uint32_t fresh)
{
    side *s = &l->s[idx];
    int rc = 0;
    for (uint32_t i = 0; i < fresh && !rc; i++) {
        fm_txn *t;
        char id[32];
        snprintf(id, sizeof id, i % 4 ? "s%d-%u" : "both-%u", idx, i);
        if (i % 4 == 0)
            snprintf(id, sizeof id, "both-%u", i);
        if ((rc = fm_txn_begin(s->r, "log", &t)))
            break;
        rc = fm_txn_set(t, id, "dose", FM_KIND_MV, fm_value_int((int64_t)i * 10 + idx));
        rc = rc ? (fm_txn_abort(t), rc) : fm_txn_commit(t);
    }
    return rc;
}

static int count_bytes(void *arg, const uint8_t *p, size_t len)
{
    (void)p;
    *(uint64_t *)arg += len;
    return 0;
}

/* Runs waves until nothing is queued. *sync_waves: waves from the first sync message until the
 * last batch crossed. */
static int run_waves(link *l, uint32_t *waves, uint32_t *sync_waves)
{
    uint32_t w = 0, first = 0, last = 0;
    uint64_t frames = 0, batches = 0;
    while (l->nnext && w < 1000) {
        chunk *tmp = l->q;
        l->q = l->next;
        l->next = tmp;
        l->nq = l->nnext;
        l->nnext = 0;
        w++;
        for (size_t i = 0; i < l->nq; i++) {
            chunk *c = &l->q[i];
            fm_node_conn_data(l->s[c->to].node, c->conn, c->data, c->len);
            free(c->data);
        }
        fm_node_stats a, b;
        fm_node_stats_get(l->s[0].node, &a);
        fm_node_stats_get(l->s[1].node, &b);
        if (!first && a.frames_out + b.frames_out > frames)
            first = w + 1; /* sent during this wave, crossing in the next */
        if (a.batches_in + b.batches_in > batches)
            last = w;
        frames = a.frames_out + b.frames_out;
        batches = a.batches_in + b.batches_in;
    }
    *waves = w;
    *sync_waves = last >= first && first ? last - first + 1 : 0;
    return l->nnext ? FM_ELIMIT : 0;
}

static void link_close(link *l)
{
    for (int i = 0; i < 2; i++) {
        fm_node_close(l->s[i].node);
        fm_replica_close(l->s[i].r);
        fm_identity_free(l->s[i].id);
    }
    for (size_t i = 0; i < l->nnext; i++)
        free(l->next[i].data);
    free(l->q);
    free(l->next);
}

int fm_bench_reconcile(uint64_t shared, uint32_t fresh, fm_bench_sync_result *out)
{
    memset(out, 0, sizeof *out);
    link *l = calloc(1, sizeof *l);
    if (!l)
        return FM_ENOMEM;
    l->now = T0;
    fm_identity *authority = NULL;
    uint8_t aseed[32] = {0xa5};
    char cert[2][400], writers[AUTHORS][400];
    int rc = fm_identity_from_seed(aseed, &authority);
    for (int i = 0; i < 2 && !rc; i++)
        rc = side_open(l, i, authority, cert[i], sizeof cert[i]);
    if (!rc)
        rc = fm_replica_import_member(l->s[0].r, cert[1])
                 ?: fm_replica_import_member(l->s[1].r, cert[0]);
    if (!rc)
        rc = make_shared(l, authority, shared, writers);
    /* The partition: each side writes on its own; count the new batches' bytes. */
    fm_bytes vv[2] = {{0}};
    for (int i = 0; i < 2 && !rc; i++)
        rc = fm_replica_vv(l->s[i].r, "log", &vv[i]);
    for (int i = 0; i < 2 && !rc; i++)
        rc = write_fresh(l, i, fresh);
    for (int i = 0; i < 2 && !rc; i++)
        rc = fm_replica_export(l->s[i].r, "log", vv[i].data, vv[i].len, count_bytes,
                               &out->fresh_bytes);
    fm_bytes_free(&vv[0]);
    fm_bytes_free(&vv[1]);
    for (int i = 0; i < 2 && !rc; i++) {
        l->s[i].io = (fm_node_io){
            .ctx = &l->s[i], .send = io_send, .close = io_close, .connect = io_connect};
        fm_node_config cfg = {.version = FM_NODE_CONFIG_VERSION,
                              .replica = l->s[i].r,
                              .io = &l->s[i].io,
                              .anti_entropy_ms = 60000};
        rc = fm_node_open(&cfg, &l->s[i].node);
    }
    /* Connect: side 0 dials; both ends open together. */
    if (!rc)
        rc = fm_node_peer_seen(l->s[0].node, "b", NULL, FM_PEER_STATIC);
    if (!rc) {
        fm_node_tick(l->s[0].node);
        rc = l->opened ? 0 : FM_ESTATE;
    }
    if (!rc && !(rc = fm_node_conn_open(l->s[1].node, 2, false, "a")))
        rc = fm_node_conn_open(l->s[0].node, 1, true, "b");
    if (!rc)
        rc = run_waves(l, &out->waves, &out->sync_waves);
    fm_node_stats a, b;
    if (!rc) {
        fm_node_stats_get(l->s[0].node, &a);
        fm_node_stats_get(l->s[1].node, &b);
        out->bytes = a.bytes_out + b.bytes_out;
        fm_status x, y;
        rc = fm_replica_status(l->s[0].r, &x) ?: fm_replica_status(l->s[1].r, &y);
        out->converged = !rc && x.ops == y.ops && x.ops == shared + 2 * fresh &&
                         memcmp(x.state_hash, y.state_hash, FM_HASH_BYTES) == 0;
    }
    /* Nothing differs now: one anti-entropy exchange. */
    if (!rc) {
        l->now += 1000;
        fm_node_sync_now(l->s[0].node);
        uint32_t w, sw;
        rc = run_waves(l, &w, &sw);
        fm_node_stats a2, b2;
        fm_node_stats_get(l->s[0].node, &a2);
        fm_node_stats_get(l->s[1].node, &b2);
        out->idle_bytes = a2.bytes_out + b2.bytes_out - out->bytes;
        out->idle_waves = w;
        out->idle_frames = a2.frames_out + b2.frames_out - a.frames_out - b.frames_out;
    }
    link_close(l);
    free(l);
    fm_identity_free(authority);
    return rc;
}
