/*
 * fuzz_record.c — libFuzzer target for fm_rec_decode (the stored record state). Never crashes;
 * whatever decodes is canonical: fm_rec_encode reproduces the input bytes exactly. Then a few ops
 * are applied to the decoded state, and the result must round-trip through its encoding too.
 */
#include "crdt/record.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void must_roundtrip(fm_rec *r, fm_authors *a, const uint8_t *want, size_t want_len)
{
    fm_buf e1, e2;
    fm_buf_init(&e1);
    fm_buf_init(&e2);
    if (fm_rec_encode(r, a, &e1) != 0)
        abort();
    if (want && (e1.len != want_len || memcmp(e1.data, want, want_len) != 0))
        abort();
    fm_rec *back = fm_rec_new(fm_rec_id(r), r->id_len);
    if (!back || fm_rec_decode(back, a, e1.data, e1.len) != 0 || fm_rec_encode(back, a, &e2) != 0)
        abort();
    if (e1.len != e2.len || memcmp(e1.data, e2.data, e1.len) != 0)
        abort();
    if (fm_rec_conflicts(back) != fm_rec_conflicts(r) || back->deleted != r->deleted)
        abort();
    fm_rec_free(back);
    fm_buf_free(&e1);
    fm_buf_free(&e2);
}

/* Largest seq of any dot in the record: new ops must come after it (each dot is applied once,
 * which feeds guarantee in the real apply path). */
static uint64_t max_seq(const fm_rec *r)
{
    uint64_t m = 0;
    for (uint32_t i = 0; i < r->nfields; i++) {
        const fm_field *f = &r->fields[i];
        for (uint32_t k = 0; k < f->nregs; k++)
            m = f->regs[k].seq > m ? f->regs[k].seq : m;
        for (uint32_t k = 0; k < f->nelems; k++)
            for (uint32_t d = 0; d < f->elems[k].ndots; d++)
                m = f->elems[k].dots[d].seq > m ? f->elems[k].dots[d].seq : m;
    }
    return m;
}

/* Applies one op of each kind (and maybe a delete) by a fixed author, with a context that covers
 * every other author with an even index. */
static void apply_ops(fm_rec *r, fm_authors *a, uint8_t sel)
{
    uint64_t base = max_seq(r);
    if (base > UINT64_MAX - 512)
        return;
    static const uint8_t key[FM_ID_BYTES] = {0x42, 0x42};
    static const uint8_t types[] = {FM_OP_SET_LWW, FM_OP_SET_MV, FM_OP_INCR,
                                    FM_OP_ADD,     FM_OP_REMOVE, FM_OP_DELETE};
    uint32_t author;
    if (fm_authors_intern(a, key, &author))
        abort();
    uint64_t *ctx = calloc(a->n, sizeof *ctx);
    if (!ctx)
        abort();
    for (uint32_t i = 0; i < a->n; i += 2)
        ctx[i] = UINT64_MAX;
    fm_opctx c = {.authors = a, .ctx_seq = ctx, .nctx = a->n, .author = author, .hlc = sel};
    for (uint32_t i = 0; i < sizeof types; i++) {
        if (types[i] == FM_OP_DELETE && !(sel & 1))
            continue;
        /* Field "f" or the record's first field (a name the input chose); value 1. */
        fm_op op = {.type = types[i], .id = fm_rec_id(r), .id_len = r->id_len};
        op.field = (const uint8_t *)"f";
        op.field_len = 1;
        if ((sel & 2) && r->nfields) {
            op.field = fm_field_name(&r->fields[0]); /* found: apply moves no field */
            op.field_len = r->fields[0].name_len;
        }
        op.val = (const uint8_t *)"\x01";
        op.val_len = 1;
        op.delta = 1;
        c.seq = base + 1 + i + (uint64_t)(sel >> 2);
        /* The field name may point into r->fields, which the op can reallocate: copy it. */
        uint8_t name[FM_MAX_FIELD_LEN];
        memcpy(name, op.field, op.field_len);
        op.field = name;
        if (fm_rec_apply(r, &c, &op) != 0)
            abort();
    }
    free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_authors a;
    fm_authors_init(&a);
    fm_rec *r = fm_rec_new((const uint8_t *)"r", 1);
    if (!r)
        abort();
    if (fm_rec_decode(r, &a, data, size) == 0) {
        must_roundtrip(r, &a, data, size);
        /* Decoding again into the same record replaces its state. */
        if (fm_rec_decode(r, &a, data, size) != 0)
            abort();
        must_roundtrip(r, &a, data, size);
        for (uint32_t i = 0; i < r->nfields; i++) {
            fm_field_winner(&r->fields[i], &a);
            fm_field_counter(&r->fields[i]);
        }
        apply_ops(r, &a, size ? data[size - 1] : 0);
        must_roundtrip(r, &a, NULL, 0);
    }
    fm_rec_free(r);
    fm_authors_free(&a);
    return 0;
}
