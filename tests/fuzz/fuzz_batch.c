/*
 * fuzz_batch.c — libFuzzer target for fm_batch_decode. Never crashes; a decoded batch satisfies
 * the rules apply relies on. Mutated input almost never carries a valid signature, so after
 * fm_batch_verify (result ignored) the batch is applied anyway, twice: to a fresh fm_state, and to
 * one whose feed and context positions were restored (fm_state_set_feed) so that fm_state_check
 * passes and every decoded batch reaches fm_state_apply. The records it produced must round-trip
 * through their canonical encoding. fm_batch_peek (the header only) agrees with it: it accepts
 * whatever decodes, with the same header, op count and hash.
 */
#include "crdt/batch.h"
#include "crdt/state.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_records(fm_state *st)
{
    uint8_t h[FM_HASH_BYTES];
    if (fm_state_hash(st, h) != 0)
        abort();
    fm_buf e1, e2;
    fm_buf_init(&e1);
    fm_buf_init(&e2);
    for (uint32_t i = 0; i < st->ncolls; i++) {
        fm_coll *c = st->colls[i];
        for (uint32_t k = 0; k < c->cap; k++) {
            fm_rec *r = c->map[k];
            if (!r)
                continue;
            fm_buf_reset(&e1);
            fm_buf_reset(&e2);
            fm_rec *back = fm_rec_new(fm_rec_id(r), r->id_len);
            if (!back || fm_rec_encode(r, &st->authors, &e1) != 0 ||
                fm_rec_decode(back, &st->authors, e1.data, e1.len) != 0 ||
                fm_rec_encode(back, &st->authors, &e2) != 0)
                abort();
            if (e1.len != e2.len || memcmp(e1.data, e2.data, e1.len) != 0)
                abort();
            fm_rec_free(back);
        }
    }
    fm_buf_free(&e1);
    fm_buf_free(&e2);
}

static void apply_to(fm_state *st, const fm_batch *b, int must)
{
    int rc = fm_state_check(st, b);
    if (must && rc != 0)
        abort();
    if (rc != 0)
        return;
    if (fm_state_apply(st, b) != 0)
        return; /* e.g. FM_ELIMIT: the caller would reset and reload */
    if (fm_state_check(st, b) != FM_EDUP)
        abort();
    check_records(st);
}

/* The header a peek read equals the one a full decode read. */
static void check_peek(const fm_batch *b, const uint8_t *data, size_t size)
{
    fm_batch h;
    fm_batch_init(&h);
    if (fm_batch_peek(data, size, &h, true) != 0 || h.nops != b->nops ||
        h.first_seq != b->first_seq || h.hlc != b->hlc || h.has_prev != b->has_prev ||
        h.coll_len != b->coll_len || memcmp(h.coll, b->coll, b->coll_len) != 0 ||
        memcmp(h.author, b->author, FM_ID_BYTES) != 0 ||
        memcmp(h.hash, b->hash, FM_HASH_BYTES) != 0 ||
        fm_vv_compare(&h.ctx, &b->ctx) != FM_VV_EQUAL)
        abort();
    fm_batch_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_batch b;
    fm_batch_init(&b);
    /* A peek alone never crashes, whatever it is given. */
    (void)fm_batch_peek(data, size, &b, true);
    if (fm_batch_decode(data, size, &b) == 0) {
        check_peek(&b, data, size);
        if (b.nops == 0 || b.nops > FM_MAX_BATCH_OPS || b.first_seq == 0 ||
            b.has_prev != (b.first_seq > 1) || b.signed_len + 2 + FM_SIG_BYTES != size ||
            fm_vv_get(&b.ctx, b.author) != 0)
            abort();
        (void)fm_batch_verify(&b, data, size);

        fm_state st;
        fm_state_init(&st, NULL);
        apply_to(&st, &b, 0);
        fm_state_free(&st);

        fm_state_init(&st, NULL);
        fm_coll *c;
        static const uint8_t zero[FM_HASH_BYTES];
        int rc = fm_state_coll_add(&st, b.coll, b.coll_len, &c);
        if (!rc && b.first_seq > 1)
            rc = fm_state_set_feed(&st, c, b.author, b.first_seq - 1, b.prev);
        for (uint32_t i = 0; !rc && i < b.ctx.n; i++)
            rc = fm_state_set_feed(&st, c, b.ctx.e[i].author, b.ctx.e[i].seq, zero);
        if (!rc)
            apply_to(&st, &b, 1);
        fm_state_free(&st);
    }
    fm_batch_free(&b);
    return 0;
}
