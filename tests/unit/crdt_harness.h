/*
 * crdt_harness.h — authors that write batches against their own fm_state view, and delivery of
 * batches to other states with a retry loop standing in for the pending area. For crdt tests.
 */
#ifndef FM_CRDT_HARNESS_H
#define FM_CRDT_HARNESS_H

#include "crdt/state.h"
#include "crdt/hlc.h"
#include "crypto/identity.h"
#include "fm_test.h"

typedef struct h_bytes {
    uint8_t *p;
    size_t n;
} h_bytes;

typedef struct h_author {
    fm_identity *id;
    uint8_t pk[32];
    fm_state st; /* this author's view */
    uint64_t hlc;
    uint64_t clock_offset_ms;
    fm_buf ops;
    uint32_t nops;
} h_author;

typedef struct h_log {
    h_bytes *b;
    size_t n, cap;
} h_log;

static inline void h_author_init(h_author *a, uint8_t seed)
{
    uint8_t s[32] = {seed, 0x5a};
    memset(a, 0, sizeof *a);
    CHECK_OK(fm_identity_from_seed(s, &a->id));
    fm_identity_public(a->id, a->pk);
    fm_state_init(&a->st, NULL);
    fm_buf_init(&a->ops);
}

static inline void h_author_free(h_author *a)
{
    fm_identity_free(a->id);
    fm_state_free(&a->st);
    fm_buf_free(&a->ops);
}

static inline void h_op(h_author *a, fm_op_type t, const char *id, const char *field, fm_value v)
{
    fm_buf val;
    fm_buf_init(&val);
    if (t != FM_OP_DELETE)
        CHECK_OK(fm_value_encode(&v, &val));
    CHECK_OK(fm_op_encode(&a->ops, t, id, strlen(id), field, field ? strlen(field) : 0,
                          t == FM_OP_DELETE ? NULL : val.data, val.len));
    a->nops++;
    fm_buf_free(&val);
}

/* Applies encoded bytes to a state: 0, or the check/apply error. */
static inline int h_apply(fm_state *st, const uint8_t *p, size_t n)
{
    fm_batch b;
    fm_batch_init(&b);
    int rc = fm_batch_decode(p, n, &b);
    if (!rc)
        rc = fm_batch_verify(&b, p, n);
    if (!rc)
        rc = fm_state_check(st, &b);
    if (!rc)
        rc = fm_state_apply(st, &b);
    fm_batch_free(&b);
    return rc;
}

static inline void h_log_push(h_log *l, const uint8_t *p, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->b = realloc(l->b, l->cap * sizeof *l->b);
    }
    l->b[l->n].p = malloc(n);
    memcpy(l->b[l->n].p, p, n);
    l->b[l->n++].n = n;
}

static inline void h_log_free(h_log *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->b[i].p);
    free(l->b);
    memset(l, 0, sizeof *l);
}

/* Commits the author's pending ops as one batch on coll at wall time now; logs it. */
static inline void h_commit(h_author *a, const char *coll, uint64_t now, h_log *log)
{
    fm_coll *c = fm_state_coll(&a->st, (const uint8_t *)coll, strlen(coll));
    const fm_feed *f = c ? fm_coll_feed(&a->st, c, a->pk) : NULL;
    fm_vv ctx;
    fm_vv_init(&ctx);
    if (c)
        CHECK_OK(fm_vv_copy(&ctx, &c->vv));
    fm_vv_set(&ctx, a->pk, 0);
    fm_batch_head h = {.coll = (const uint8_t *)coll,
                       .coll_len = (uint32_t)strlen(coll),
                       .first_seq = (f ? f->seq : 0) + 1,
                       .prev = f ? f->head : NULL,
                       .ctx = &ctx,
                       .hlc = fm_hlc_tick(&a->hlc, now + a->clock_offset_ms),
                       .nops = a->nops};
    fm_buf out;
    fm_buf_init(&out);
    CHECK_OK(fm_batch_encode(a->id, &h, a->ops.data, a->ops.len, &out));
    CHECK_OK(h_apply(&a->st, out.data, out.len));
    if (log)
        h_log_push(log, out.data, out.len);
    fm_buf_free(&out);
    fm_vv_free(&ctx);
    fm_buf_reset(&a->ops);
    a->nops = 0;
}

/* Delivers batches (in the given order, retrying out-of-order ones) until none applies; returns
 * how many were applied. Duplicates are skipped. */
static inline size_t h_deliver(fm_state *st, const h_bytes *bs, size_t n)
{
    size_t applied = 0;
    char *done = calloc(n ? n : 1, 1);
    for (bool progress = true; progress;) {
        progress = false;
        for (size_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            int rc = h_apply(st, bs[i].p, bs[i].n);
            if (rc == 0)
                applied++;
            if (rc == 0 || rc == FM_EDUP)
                done[i] = 1, progress = true;
        }
    }
    free(done);
    return applied;
}

static inline void h_state_hash_hex(fm_state *st, char out[65])
{
    uint8_t h[32];
    CHECK_OK(fm_state_hash(st, h));
    fm_hex(h, 32, out);
}

#endif
