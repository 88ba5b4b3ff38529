/*
 * test_batch.c — signed batches (crdt/batch.c) and the causal checks of crdt/state.c: round trip,
 * signature, tampering, every limit at and past its bound, structural rules, fm_state_check
 * results, and a golden vector (tests/vectors/batch.txt).
 *
 * `test_batch --print-vector` prints the golden vector file; it was generated once that way and is
 * compared byte for byte ever since. Regenerate only for a deliberate format change.
 */
#include "crdt/batch.h"
#include "crdt/state.h"
#include "crypto/identity.h"
#include "fm_test.h"

#include <sodium.h>

#ifndef FM_VECTORS_DIR
#define FM_VECTORS_DIR "tests/vectors"
#endif

#define COLL "people"
#define HLC0 ((1700000000000ull << 16) | 5)

static fm_identity *id_from(uint8_t seed_byte, uint8_t pk[FM_ID_BYTES])
{
    uint8_t seed[32];
    fm_identity *id = NULL;
    memset(seed, seed_byte, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &id));
    fm_identity_public(id, pk);
    return id;
}

static void val_enc(fm_value v, fm_buf *out)
{
    fm_buf_reset(out);
    CHECK_OK(fm_value_encode(&v, out));
}

static void op(fm_buf *ops, fm_op_type t, const char *id, const char *field, fm_value v)
{
    fm_buf val;
    fm_buf_init(&val);
    if (t != FM_OP_DELETE)
        val_enc(v, &val);
    CHECK_OK(fm_op_encode(ops, t, id, strlen(id), field, field ? strlen(field) : 0,
                          t == FM_OP_DELETE ? NULL : val.data, val.len));
    fm_buf_free(&val);
}

/* An op written by hand, no rule enforced: n elements [type, id, field, raw value]. */
static void op_raw(fm_buf *ops, uint32_t n, uint64_t type, const uint8_t *id, size_t id_len,
                   const uint8_t *field, size_t field_len, const uint8_t *val, size_t val_len)
{
    fm_wr w;
    fm_wr_init(&w, ops);
    msgpack_pack_array(FM_PK(&w), n);
    msgpack_pack_uint64(FM_PK(&w), type);
    if (n > 1)
        fm_wr_str(&w, id, id_len);
    if (n > 2)
        fm_wr_str(&w, field, field_len);
    if (n > 3)
        fm_wr_bytes_raw(&w, val, val_len);
}

/* A batch written by hand and signed, so that decoding rules (not the encoder's asserts) are what
 * a test exercises. Zeroed fields mean: format 1, 9 elements, the signer as author, first_seq 1. */
typedef struct rawb {
    uint64_t format;
    uint32_t nelems;
    const uint8_t *author;
    const char *coll;
    size_t coll_len;
    uint64_t first_seq;
    bool seq_fix16; /* first_seq in a non-minimal uint16 */
    const uint8_t *prev;
    const fm_vv *ctx;
    uint64_t hlc;
    uint32_t nops;
    const fm_buf *ops;
    size_t sig_len;
} rawb;

static void raw_batch(const fm_identity *id, const rawb *rb, fm_buf *out)
{
    uint8_t pk[FM_ID_BYTES], sig[FM_SIG_BYTES];
    fm_identity_public(id, pk);
    fm_vv empty;
    fm_vv_init(&empty);
    fm_buf_reset(out);
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), rb->nelems ? rb->nelems : 9);
    msgpack_pack_uint64(FM_PK(&w), rb->format ? rb->format : FM_BATCH_FORMAT);
    fm_wr_bin(&w, rb->author ? rb->author : pk, FM_ID_BYTES);
    const char *coll = rb->coll ? rb->coll : COLL;
    fm_wr_str(&w, coll, rb->coll ? rb->coll_len : strlen(coll));
    uint64_t seq = rb->first_seq ? rb->first_seq : 1;
    if (rb->seq_fix16)
        msgpack_pack_fix_uint16(FM_PK(&w), (uint16_t)seq);
    else
        msgpack_pack_uint64(FM_PK(&w), seq);
    if (rb->prev)
        fm_wr_bin(&w, rb->prev, FM_HASH_BYTES);
    else
        msgpack_pack_nil(FM_PK(&w));
    fm_vv_write(&w, rb->ctx ? rb->ctx : &empty);
    msgpack_pack_uint64(FM_PK(&w), rb->hlc ? rb->hlc : HLC0);
    msgpack_pack_array(FM_PK(&w), rb->nops);
    if (rb->ops)
        fm_wr_bytes_raw(&w, rb->ops->data, rb->ops->len);
    fm_identity_sign(id, FM_BATCH_SIG_DOMAIN, out->data, out->len, sig);
    fm_wr_bin(&w, sig, rb->sig_len ? rb->sig_len : FM_SIG_BYTES);
    CHECK(!out->oom);
}

static int decode_verify(const fm_buf *enc)
{
    fm_batch b;
    fm_batch_init(&b);
    int rc = fm_batch_decode(enc->data, enc->len, &b);
    if (!rc)
        rc = fm_batch_verify(&b, enc->data, enc->len);
    fm_batch_free(&b);
    return rc;
}

/* ---- round trip ---------------------------------------------------------------------------- */

/* The batch of the golden vector: every op type, a context, a prev link. */
static void sample_batch(fm_identity *author, const uint8_t other[FM_ID_BYTES], fm_buf *out)
{
    fm_buf ops;
    fm_buf_init(&ops);
    op(&ops, FM_OP_SET_LWW, "p1", "name", fm_value_str("Ann"));
    op(&ops, FM_OP_SET_MV, "p1", "dose_mg", fm_value_int(5));
    op(&ops, FM_OP_INCR, "stock", "water", fm_value_int(-3));
    op(&ops, FM_OP_ADD, "p1", "tags", fm_value_str("medic"));
    op(&ops, FM_OP_REMOVE, "p1", "tags", fm_value_bin("\0\1", 2));
    op(&ops, FM_OP_DELETE, "p2", NULL, fm_value_nil());
    fm_vv ctx;
    fm_vv_init(&ctx);
    CHECK_OK(fm_vv_set(&ctx, other, 7));
    uint8_t prev[FM_HASH_BYTES];
    memset(prev, 0xab, sizeof prev);
    fm_batch_head h = {.coll = (const uint8_t *)COLL,
                       .coll_len = strlen(COLL),
                       .first_seq = 3,
                       .prev = prev,
                       .ctx = &ctx,
                       .hlc = HLC0,
                       .nops = 6};
    fm_buf_reset(out);
    CHECK_OK(fm_batch_encode(author, &h, ops.data, ops.len, out));
    fm_vv_free(&ctx);
    fm_buf_free(&ops);
}

static bool bytes_eq(const uint8_t *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

static void test_roundtrip(void)
{
    uint8_t pk[32], other[32];
    fm_identity *a = id_from(1, pk), *o = id_from(2, other);
    fm_buf enc;
    fm_buf_init(&enc);
    sample_batch(a, other, &enc);
    fm_batch b;
    fm_batch_init(&b);
    for (int pass = 0; pass < 2; pass++) { /* a reused fm_batch decodes the same */
        CHECK_OK(fm_batch_decode(enc.data, enc.len, &b));
        CHECK_OK(fm_batch_verify(&b, enc.data, enc.len));
        CHECK_MEM(b.author, pk, 32);
        CHECK(bytes_eq(b.coll, b.coll_len, COLL));
        CHECK_EQ_INT(b.first_seq, 3);
        CHECK_EQ_INT(fm_batch_last_seq(&b), 8);
        CHECK(b.has_prev);
        CHECK_EQ_INT(b.prev[0], 0xab);
        CHECK_EQ_INT(b.ctx.n, 1);
        CHECK_EQ_INT(fm_vv_get(&b.ctx, other), 7);
        CHECK(b.hlc == HLC0);
        CHECK_EQ_INT(b.nops, 6);
        CHECK_EQ_INT(b.signed_len, enc.len - 2 - FM_SIG_BYTES);
        uint8_t h[32];
        crypto_generichash(h, 32, enc.data, enc.len, NULL, 0);
        CHECK_MEM(b.hash, h, 32);
        static const uint8_t types[] = {FM_OP_SET_LWW, FM_OP_SET_MV, FM_OP_INCR,
                                        FM_OP_ADD,     FM_OP_REMOVE, FM_OP_DELETE};
        for (uint32_t i = 0; i < b.nops && i < 6; i++)
            CHECK_EQ_INT(b.ops[i].type, types[i]);
        CHECK(bytes_eq(b.ops[0].id, b.ops[0].id_len, "p1"));
        CHECK(bytes_eq(b.ops[0].field, b.ops[0].field_len, "name"));
        fm_value v;
        CHECK_OK(fm_value_decode(b.ops[0].val, b.ops[0].val_len, &v));
        CHECK(v.type == FM_V_STR && bytes_eq(v.u.s.bytes, v.u.s.len, "Ann"));
        CHECK_EQ_INT(b.ops[2].delta, -3);
        CHECK_OK(fm_value_decode(b.ops[4].val, b.ops[4].val_len, &v));
        CHECK(v.type == FM_V_BIN && v.u.s.len == 2);
        CHECK(bytes_eq(b.ops[5].id, b.ops[5].id_len, "p2"));
        CHECK(b.ops[5].field_len == 0 && b.ops[5].val_len == 0);
    }
    /* The signature is the author's: another key, or another domain, fails. */
    memcpy(b.author, other, 32);
    CHECK_RC(fm_batch_verify(&b, enc.data, enc.len), FM_ESIG);
    CHECK_RC(
        fm_sig_verify(pk, "fieldmesh-cert-v1", enc.data, enc.len - 66, enc.data + enc.len - 64),
        FM_ESIG);
    /* A failed decode leaves no ops behind. */
    CHECK(fm_batch_decode(enc.data, enc.len - 1, &b) < 0);
    CHECK_EQ_INT(b.nops, 0);
    /* With the hash a peek computed: the same batch, the hash taken as given; the same checks. */
    fm_batch peeked, full;
    fm_batch_init(&peeked);
    fm_batch_init(&full);
    CHECK_OK(fm_batch_peek(enc.data, enc.len, &peeked, true));
    CHECK_OK(fm_batch_decode(enc.data, enc.len, &full));
    CHECK_OK(fm_batch_decode_hashed(enc.data, enc.len, peeked.hash, &b));
    CHECK_MEM(b.hash, full.hash, 32);
    CHECK_EQ_INT(b.nops, full.nops);
    CHECK_EQ_INT(b.signed_len, full.signed_len);
    CHECK_MEM(b.sig, full.sig, FM_SIG_BYTES);
    CHECK_OK(fm_batch_verify(&b, enc.data, enc.len));
    CHECK(fm_batch_decode_hashed(enc.data, enc.len - 1, peeked.hash, &b) < 0);
    CHECK_EQ_INT(b.nops, 0);
    fm_batch_free(&peeked);
    fm_batch_free(&full);
    fm_batch_free(&b);
    fm_buf_free(&enc);
    fm_identity_free(a);
    fm_identity_free(o);
}

static void test_tamper_every_byte(void)
{
    uint8_t pk[32], other[32];
    fm_identity *a = id_from(1, pk), *o = id_from(2, other);
    fm_buf enc, t;
    fm_buf_init(&enc);
    fm_buf_init(&t);
    sample_batch(a, other, &enc);
    static const uint8_t masks[] = {0x01, 0x02, 0x10, 0x80, 0xff};
    size_t decoded = 0, accepted = 0;
    for (size_t i = 0; i < enc.len; i++) {
        for (size_t m = 0; m < FM_ARRAY_LEN(masks); m++) {
            fm_buf_reset(&t);
            fm_buf_append(&t, enc.data, enc.len);
            t.data[i] ^= masks[m];
            fm_batch b;
            fm_batch_init(&b);
            int rc = fm_batch_decode(t.data, t.len, &b);
            if (rc == 0) {
                decoded++;
                rc = fm_batch_verify(&b, t.data, t.len);
                if (rc != FM_ESIG) {
                    fprintf(stderr, "  byte %zu ^ 0x%02x: %d\n", i, masks[m], rc);
                    accepted++;
                }
            }
            fm_batch_free(&b);
        }
    }
    CHECK_EQ_INT(accepted, 0);
    CHECK(decoded > 0); /* some tampering decodes, and then the signature catches it */
    /* Truncation at every byte, and a trailing byte. */
    for (size_t n = 0; n < enc.len; n++) {
        fm_batch b;
        fm_batch_init(&b);
        int rc = fm_batch_decode(enc.data, n, &b);
        if (rc >= 0)
            fprintf(stderr, "  truncated at %zu decoded\n", n);
        CHECK(rc < 0);
        fm_batch_free(&b);
    }
    fm_buf_putc(&enc, 0xc0);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    fm_buf_free(&enc);
    fm_buf_free(&t);
    fm_identity_free(a);
    fm_identity_free(o);
}

/* ---- limits --------------------------------------------------------------------------------- */

static void test_ops_bound(void)
{
    uint8_t pk[32];
    fm_identity *a = id_from(1, pk);
    fm_buf ops, enc;
    fm_buf_init(&ops);
    fm_buf_init(&enc);
    for (int i = 0; i < FM_MAX_BATCH_OPS; i++)
        op(&ops, FM_OP_DELETE, "r", NULL, fm_value_nil());
    fm_batch_head h = {.coll = (const uint8_t *)COLL,
                       .coll_len = strlen(COLL),
                       .first_seq = 1,
                       .hlc = HLC0,
                       .nops = FM_MAX_BATCH_OPS};
    fm_vv ctx;
    fm_vv_init(&ctx);
    h.ctx = &ctx;
    CHECK_OK(fm_batch_encode(a, &h, ops.data, ops.len, &enc));
    fm_batch b;
    fm_batch_init(&b);
    CHECK_OK(fm_batch_decode(enc.data, enc.len, &b));
    CHECK_EQ_INT(b.nops, FM_MAX_BATCH_OPS);
    CHECK_OK(fm_batch_verify(&b, enc.data, enc.len));
    /* One more op: FM_ELIMIT (the encoder asserts instead; write it by hand). */
    op(&ops, FM_OP_DELETE, "r", NULL, fm_value_nil());
    rawb rb = {.nops = FM_MAX_BATCH_OPS + 1, .ops = &ops};
    raw_batch(a, &rb, &enc);
    CHECK_RC(fm_batch_decode(enc.data, enc.len, &b), FM_ELIMIT);
    CHECK_EQ_INT(b.nops, 0);
    /* first_seq so large that the last op's seq would leave the range. */
    fm_buf_reset(&ops);
    op(&ops, FM_OP_DELETE, "r", NULL, fm_value_nil());
    uint8_t prev[32] = {0};
    rawb big = {.first_seq = UINT64_MAX / 2, .prev = prev, .nops = 1, .ops = &ops};
    raw_batch(a, &big, &enc);
    CHECK_RC(fm_batch_decode(enc.data, enc.len, &b), FM_ELIMIT);
    big.first_seq = UINT64_MAX / 2 - 2;
    raw_batch(a, &big, &enc);
    CHECK_OK(fm_batch_decode(enc.data, enc.len, &b));
    fm_batch_free(&b);
    fm_vv_free(&ctx);
    fm_buf_free(&ops);
    fm_buf_free(&enc);
    fm_identity_free(a);
}

/* One SET_LWW op batch with the given id, field and raw value; returns decode+verify. */
static int one_op(fm_identity *a, const char *coll, size_t coll_len, const uint8_t *id,
                  size_t id_len, const uint8_t *field, size_t field_len, const uint8_t *val,
                  size_t val_len, uint64_t type)
{
    fm_buf ops, enc;
    fm_buf_init(&ops);
    fm_buf_init(&enc);
    op_raw(&ops, type == FM_OP_DELETE ? 2 : 4, type, id, id_len, field, field_len, val, val_len);
    rawb rb = {.coll = coll, .coll_len = coll_len, .nops = 1, .ops = &ops};
    raw_batch(a, &rb, &enc);
    int rc = decode_verify(&enc);
    fm_buf_free(&ops);
    fm_buf_free(&enc);
    return rc;
}

static void test_name_and_value_bounds(void)
{
    uint8_t pk[32];
    fm_identity *a = id_from(1, pk);
    uint8_t name[FM_MAX_VALUE_LEN + 16];
    memset(name, 'n', sizeof name);
    const uint8_t *f = (const uint8_t *)"f";
    const uint8_t one[] = {0x01};
    /* Record id: at the bound and one past, in a field op and in a delete. */
    for (int del = 0; del < 2; del++) {
        uint64_t t = del ? FM_OP_DELETE : FM_OP_SET_LWW;
        CHECK_OK(one_op(a, COLL, 6, name, FM_MAX_RECORD_ID_LEN, f, 1, one, 1, t));
        CHECK_RC(one_op(a, COLL, 6, name, FM_MAX_RECORD_ID_LEN + 1, f, 1, one, 1, t), FM_ELIMIT);
    }
    /* Field name. */
    CHECK_OK(one_op(a, COLL, 6, f, 1, name, FM_MAX_FIELD_LEN, one, 1, FM_OP_ADD));
    CHECK_RC(one_op(a, COLL, 6, f, 1, name, FM_MAX_FIELD_LEN + 1, one, 1, FM_OP_ADD), FM_ELIMIT);
    /* Collection name. */
    CHECK_OK(one_op(a, (const char *)name, FM_MAX_COLLECTION_LEN, f, 1, f, 1, one, 1, 0));
    CHECK_RC(one_op(a, (const char *)name, FM_MAX_COLLECTION_LEN + 1, f, 1, f, 1, one, 1, 0),
             FM_ELIMIT);
    /* Value: a str and a bin of FM_MAX_VALUE_LEN bytes, then one more. */
    fm_buf v;
    fm_buf_init(&v);
    for (int bin = 0; bin < 2; bin++) {
        for (size_t len = FM_MAX_VALUE_LEN; len <= FM_MAX_VALUE_LEN + 1; len++) {
            fm_wr w;
            fm_buf_reset(&v);
            fm_wr_init(&w, &v);
            if (bin)
                fm_wr_bin(&w, name, len);
            else
                fm_wr_str(&w, name, len);
            int want = len > FM_MAX_VALUE_LEN ? FM_ELIMIT : 0;
            CHECK_RC(one_op(a, COLL, 6, f, 1, f, 1, v.data, v.len, FM_OP_SET_MV), want);
        }
    }
    fm_buf_free(&v);
    /* Empty names, control characters, invalid UTF-8: malformed. */
    const uint8_t *bad[] = {(const uint8_t *)"a\nb", (const uint8_t *)"\x7f",
                            (const uint8_t *)"a\0b", (const uint8_t *)"\xc3\x28"};
    const size_t badlen[] = {3, 1, 3, 2};
    CHECK_RC(one_op(a, COLL, 6, f, 0, f, 1, one, 1, 0), FM_EDECODE);
    CHECK_RC(one_op(a, COLL, 6, f, 1, f, 0, one, 1, 0), FM_EDECODE);
    CHECK_RC(one_op(a, COLL, 0, f, 1, f, 1, one, 1, 0), FM_EDECODE);
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++) {
        CHECK_RC(one_op(a, COLL, 6, bad[i], badlen[i], f, 1, one, 1, 0), FM_EDECODE);
        CHECK_RC(one_op(a, COLL, 6, f, 1, bad[i], badlen[i], one, 1, 0), FM_EDECODE);
        CHECK_RC(one_op(a, (const char *)bad[i], badlen[i], f, 1, f, 1, one, 1, 0), FM_EDECODE);
    }
    /* fm_name_check directly. */
    CHECK_OK(fm_name_check((const uint8_t *)"h\xc3\xa9llo w", 8, 8));
    CHECK_RC(fm_name_check((const uint8_t *)"x", 0, 8), FM_EINVAL);
    CHECK_RC(fm_name_check(name, 9, 8), FM_ELIMIT);
    CHECK_RC(fm_name_check((const uint8_t *)"\t", 1, 8), FM_EINVAL);
    CHECK_RC(fm_name_check((const uint8_t *)"\xed\xa0\x80", 3, 8), FM_EINVAL);
    fm_identity_free(a);
}

static void test_batch_bytes_bound(void)
{
    uint8_t pk[32];
    fm_identity *a = id_from(1, pk);
    enum { FULL = 65, BIG = 16000 };
    uint8_t *blob = calloc(1, FM_MAX_VALUE_LEN);
    fm_buf ops, enc, v;
    fm_buf_init(&ops);
    fm_buf_init(&enc);
    fm_buf_init(&v);
    fm_vv ctx;
    fm_vv_init(&ctx);
    fm_batch_head h = {.coll = (const uint8_t *)COLL,
                       .coll_len = strlen(COLL),
                       .first_seq = 1,
                       .ctx = &ctx,
                       .hlc = HLC0,
                       .nops = FULL + 1};
    /* FULL big ops and a last one whose size is tuned to land exactly on the bound. */
    size_t last = 1000, base_len = 0;
    for (int round = 0; round < 2; round++) {
        fm_buf_reset(&ops);
        for (int i = 0; i < FULL; i++) {
            val_enc(fm_value_bin(blob, BIG), &v);
            CHECK_OK(fm_op_encode(&ops, FM_OP_SET_LWW, "r", 1, "f", 1, v.data, v.len));
        }
        base_len = ops.len;
        val_enc(fm_value_bin(blob, (uint32_t)last), &v);
        CHECK_OK(fm_op_encode(&ops, FM_OP_SET_LWW, "r", 1, "g", 1, v.data, v.len));
        fm_buf_reset(&enc);
        CHECK_OK(fm_batch_encode(a, &h, ops.data, ops.len, &enc));
        if (round == 0)
            last += FM_MAX_BATCH_BYTES - enc.len; /* stays in bin16 */
    }
    CHECK_EQ_INT(enc.len, FM_MAX_BATCH_BYTES);
    CHECK_OK(decode_verify(&enc));
    /* One byte more: the encoder refuses and leaves out as it was; the decoder refuses. */
    ops.len = base_len;
    val_enc(fm_value_bin(blob, (uint32_t)last + 1), &v);
    CHECK_OK(fm_op_encode(&ops, FM_OP_SET_LWW, "r", 1, "g", 1, v.data, v.len));
    fm_buf_reset(&enc);
    fm_buf_putc(&enc, 0x42);
    CHECK_RC(fm_batch_encode(a, &h, ops.data, ops.len, &enc), FM_ELIMIT);
    CHECK_EQ_INT(enc.len, 1);
    rawb rb = {.nops = FULL + 1, .ops = &ops};
    raw_batch(a, &rb, &enc);
    CHECK_EQ_INT(enc.len, FM_MAX_BATCH_BYTES + 1);
    CHECK_RC(decode_verify(&enc), FM_ELIMIT);
    free(blob);
    fm_vv_free(&ctx);
    fm_buf_free(&ops);
    fm_buf_free(&enc);
    fm_buf_free(&v);
    fm_identity_free(a);
}

/* ---- structural rules ----------------------------------------------------------------------- */

static void test_structure(void)
{
    uint8_t pk[32], other[32], prev[32];
    fm_identity *a = id_from(1, pk), *o = id_from(2, other);
    memset(prev, 0x33, sizeof prev);
    fm_buf ops, enc;
    fm_buf_init(&ops);
    fm_buf_init(&enc);
    op(&ops, FM_OP_SET_LWW, "r", "f", fm_value_int(1));
    fm_vv ctx_other, ctx_self;
    fm_vv_init(&ctx_other);
    fm_vv_init(&ctx_self);
    fm_vv_set(&ctx_other, other, 3);
    fm_vv_set(&ctx_self, other, 3);
    fm_vv_set(&ctx_self, pk, 1);

    rawb ok1 = {.nops = 1, .ops = &ops, .ctx = &ctx_other};
    raw_batch(a, &ok1, &enc);
    CHECK_OK(decode_verify(&enc));
    rawb ok2 = {.first_seq = 2, .prev = prev, .nops = 1, .ops = &ops};
    raw_batch(a, &ok2, &enc);
    CHECK_OK(decode_verify(&enc));
    /* prev is nil exactly when first_seq is 1; seq 0 does not exist. */
    rawb r = {.first_seq = 2, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    r = (rawb){.first_seq = 1, .prev = prev, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    r = (rawb){.nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    enc.data[1 + 1 + 34 + 7] = 0x00; /* first_seq 1 -> 0 (fixint after author and "people") */
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    /* The context must not name the author. */
    r = (rawb){.nops = 1, .ops = &ops, .ctx = &ctx_self};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    /* No ops. */
    r = (rawb){.nops = 0};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    /* Format version, element count, signature size, a non-canonical integer. */
    r = (rawb){.format = 2, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EVERSION);
    r = (rawb){.nelems = 10, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    r = (rawb){.sig_len = 63, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_EDECODE);
    r = (rawb){.seq_fix16 = true, .nops = 1, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK_RC(decode_verify(&enc), FM_ENONCANON);
    /* The ops count is what it claims. */
    r = (rawb){.nops = 2, .ops = &ops};
    raw_batch(a, &r, &enc);
    CHECK(decode_verify(&enc) < 0);
    /* Op shapes. */
    const uint8_t *id = (const uint8_t *)"r", *f = (const uint8_t *)"f";
    static const uint8_t i5[] = {0x05}, s1[] = {0xa1, 'x'},
                         f1[] = {0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0};
    static const struct {
        uint32_t n;
        uint64_t type;
        const uint8_t *val;
        size_t val_len;
        int want;
    } shapes[] = {
        {4, FM_OP_INCR, i5, 1, 0},
        {4, FM_OP_INCR, s1, 2, FM_EDECODE}, /* INCR takes an int */
        {4, FM_OP_INCR, f1, 9, FM_EDECODE},
        {4, FM_OP_INCR, (const uint8_t *)"\xc0", 1, FM_EDECODE},
        {4, FM_OP_ADD, (const uint8_t *)"\xc0", 1, 0}, /* any scalar is an element */
        {4, FM_OP__COUNT, i5, 1, FM_EDECODE},          /* unknown type */
        {4, 255, i5, 1, FM_EDECODE},
        {4, FM_OP_DELETE, i5, 1, FM_EDECODE}, /* delete has no field */
        {2, FM_OP_SET_LWW, NULL, 0, FM_EDECODE},
        {3, FM_OP_SET_MV, NULL, 0, FM_EDECODE},
        {5, FM_OP_SET_MV, i5, 1, FM_EDECODE},
        {4, FM_OP_SET_MV, (const uint8_t *)"\x90", 1, FM_EDECODE}, /* not a scalar */
        {4, FM_OP_SET_MV, (const uint8_t *)"\xca\0\0\0\0", 5, FM_EDECODE},
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(shapes); i++) {
        fm_buf_reset(&ops);
        op_raw(&ops, shapes[i].n, shapes[i].type, id, 1, f, 1, shapes[i].val, shapes[i].val_len);
        if (shapes[i].n == 5)
            fm_buf_putc(&ops, 0x01);
        r = (rawb){.nops = 1, .ops = &ops};
        raw_batch(a, &r, &enc);
        int rc = decode_verify(&enc);
        if (rc != shapes[i].want)
            fprintf(stderr, "  shape #%zu\n", i);
        CHECK_RC(rc, shapes[i].want);
    }
    fm_vv_free(&ctx_other);
    fm_vv_free(&ctx_self);
    fm_buf_free(&ops);
    fm_buf_free(&enc);
    fm_identity_free(a);
    fm_identity_free(o);
}

/* ---- causal checks -------------------------------------------------------------------------- */

typedef struct feed {
    fm_identity *id;
    uint8_t pk[32];
    uint64_t seq;
    uint8_t head[32];
} feed;

/* The author's next batch of nops ops on coll with the given context (NULL: empty). */
static void next_batch(feed *f, const char *coll, uint32_t nops, const fm_vv *ctx, fm_buf *out)
{
    fm_buf ops;
    fm_buf_init(&ops);
    for (uint32_t i = 0; i < nops; i++)
        op(&ops, FM_OP_INCR, "r", "n", fm_value_int(1));
    fm_vv empty;
    fm_vv_init(&empty);
    fm_batch_head h = {.coll = (const uint8_t *)coll,
                       .coll_len = strlen(coll),
                       .first_seq = f->seq + 1,
                       .prev = f->seq ? f->head : NULL,
                       .ctx = ctx ? ctx : &empty,
                       .hlc = HLC0 + f->seq,
                       .nops = nops};
    fm_buf_reset(out);
    CHECK_OK(fm_batch_encode(f->id, &h, ops.data, ops.len, out));
    crypto_generichash(f->head, 32, out->data, out->len, NULL, 0);
    f->seq += nops;
    fm_buf_free(&ops);
}

static int check_apply(fm_state *st, const fm_buf *enc, bool apply)
{
    fm_batch b;
    fm_batch_init(&b);
    int rc = fm_batch_decode(enc->data, enc->len, &b);
    if (!rc)
        rc = fm_batch_verify(&b, enc->data, enc->len);
    if (!rc)
        rc = fm_state_check(st, &b);
    if (!rc && apply)
        rc = fm_state_apply(st, &b);
    fm_batch_free(&b);
    return rc;
}

static void test_state_check(void)
{
    feed A = {0}, B = {0};
    A.id = id_from(1, A.pk);
    B.id = id_from(2, B.pk);
    fm_buf a1, a2, a3, a4, fork2, badprev, b1, bx;
    fm_buf *bufs[] = {&a1, &a2, &a3, &a4, &fork2, &badprev, &b1, &bx};
    for (size_t i = 0; i < FM_ARRAY_LEN(bufs); i++)
        fm_buf_init(bufs[i]);
    next_batch(&A, COLL, 1, NULL, &a1);
    feed A1 = A;
    next_batch(&A, COLL, 1, NULL, &a2);
    /* A fork of seq 2 (other content, right prev) and a seq 2 with a wrong prev. */
    feed F = A1;
    next_batch(&F, COLL, 2, NULL, &fork2);
    F = A1;
    memset(F.head, 0x77, 32);
    next_batch(&F, COLL, 1, NULL, &badprev);
    next_batch(&A, COLL, 3, NULL, &a3); /* seqs 3..5 */
    next_batch(&A, COLL, 1, NULL, &a4); /* seq 6 */
    /* B saw A up to 2; bx is B's in another collection, claiming A's seq 1 there. */
    fm_vv ctx;
    fm_vv_init(&ctx);
    fm_vv_set(&ctx, A.pk, 2);
    next_batch(&B, COLL, 1, &ctx, &b1);
    feed B2 = {.id = B.id};
    memcpy(B2.pk, B.pk, 32);
    fm_vv_set(&ctx, A.pk, 1);
    next_batch(&B2, "other", 1, &ctx, &bx);

    fm_state st;
    fm_state_init(&st, NULL);
    CHECK_RC(check_apply(&st, &a2, true), FM_EGAP);
    CHECK_RC(check_apply(&st, &b1, true), FM_EPENDING); /* no collection yet */
    CHECK_OK(check_apply(&st, &a1, true));
    CHECK_RC(check_apply(&st, &a1, true), FM_EDUP);
    CHECK_RC(check_apply(&st, &b1, true), FM_EPENDING); /* A:2 not applied yet */
    CHECK_RC(check_apply(&st, &a3, true), FM_EGAP);
    CHECK_RC(check_apply(&st, &badprev, true), FM_ECHAIN);
    CHECK_OK(check_apply(&st, &a2, false)); /* check alone changes nothing */
    CHECK_OK(check_apply(&st, &a2, true));
    CHECK_RC(check_apply(&st, &fork2, true), FM_EDUP); /* a fork looks like a dup here */
    CHECK_OK(check_apply(&st, &b1, true));
    CHECK_RC(check_apply(&st, &bx, true), FM_EPENDING); /* contexts are per collection */
    CHECK_OK(check_apply(&st, &a3, true));
    fm_coll *c = fm_state_coll(&st, (const uint8_t *)COLL, strlen(COLL));
    const fm_feed *fa = fm_coll_feed(&st, c, A.pk);
    CHECK(fa && fa->seq == 5);
    CHECK(fa && memcmp(fa->head, A.head, 32) != 0); /* A.head is a4's by now */
    CHECK_EQ_INT(fm_vv_get(&c->vv, A.pk), 5);
    CHECK_EQ_INT(fm_vv_get(&c->vv, B.pk), 1);
    CHECK_RC(check_apply(&st, &a3, true), FM_EDUP);
    CHECK_OK(check_apply(&st, &a4, true));
    CHECK(fa && memcmp(fa->head, A.head, 32) == 0);
    CHECK_EQ_INT(st.batches, 5);
    CHECK_EQ_INT(st.ops, 7);
    int rc;
    fm_rec *r = fm_state_record(&st, c, (const uint8_t *)"r", 1, &rc);
    CHECK(r && r->nfields == 1 && fm_field_counter(&r->fields[0]) == 7);
    fm_state_free(&st);
    fm_vv_free(&ctx);
    for (size_t i = 0; i < FM_ARRAY_LEN(bufs); i++)
        fm_buf_free(bufs[i]);
    fm_identity_free(A.id);
    fm_identity_free(B.id);
}

/* FM_MAX_VV_ENTRIES authors per collection: one more author's feed is refused (FM_ELIMIT) and the
 * failed call leaves no feed behind; the authors already there still advance. */
static void test_feed_bound(void)
{
    fm_state st;
    fm_state_init(&st, NULL);
    fm_coll *c;
    CHECK_OK(fm_state_coll_add(&st, (const uint8_t *)COLL, strlen(COLL), &c));
    uint8_t key[FM_ID_BYTES] = {0}, head[FM_HASH_BYTES];
    memset(head, 0x5c, sizeof head);
    for (uint32_t i = 0; i < FM_MAX_VV_ENTRIES; i++) {
        key[0] = (uint8_t)(i >> 8), key[1] = (uint8_t)i;
        if (fm_state_set_feed(&st, c, key, 1, head) != 0) {
            CHECK(0);
            break;
        }
    }
    CHECK_EQ_INT(c->nfeeds, FM_MAX_VV_ENTRIES);
    key[0] = 0xff;
    CHECK_RC(fm_state_set_feed(&st, c, key, 1, head), FM_ELIMIT);
    CHECK_EQ_INT(c->nfeeds, FM_MAX_VV_ENTRIES);
    CHECK_EQ_INT(c->vv.n, FM_MAX_VV_ENTRIES);
    CHECK(fm_coll_feed(&st, c, key) == NULL);
    key[0] = 0, key[1] = 7;
    CHECK_OK(fm_state_set_feed(&st, c, key, 2, head));
    const fm_feed *f = fm_coll_feed(&st, c, key);
    CHECK(f && f->seq == 2);
    CHECK_EQ_INT(fm_vv_get(&c->vv, key), 2);
    fm_state_free(&st);
}

/* ---- the collection index ------------------------------------------------------------------
 * fm_state finds collections by name through a hash table beside the sorted array: both must
 * agree through growth, drops (which refill the table) and a reset. */

static void coll_name(uint32_t i, char *out, size_t cap)
{
    snprintf(out, cap, "c%u", i);
}

static void test_coll_index(void)
{
    fm_state st;
    fm_state_init(&st, NULL);
    char name[16];
    fm_coll *first = NULL, *c;
    CHECK(fm_state_coll(&st, (const uint8_t *)"c0", 2) == NULL);
    for (uint32_t i = 0; i < FM_MAX_COLLECTIONS; i++) {
        coll_name(i, name, sizeof name);
        CHECK_OK(fm_state_coll_add(&st, (const uint8_t *)name, (uint32_t)strlen(name), &c));
        first = i == 0 ? c : first;
    }
    CHECK_EQ_INT(st.ncolls, FM_MAX_COLLECTIONS);
    CHECK_RC(fm_state_coll_add(&st, (const uint8_t *)"full", 4, &c), FM_ELIMIT);
    CHECK_OK(fm_state_coll_add(&st, (const uint8_t *)"c0", 2, &c)); /* present: no limit */
    CHECK(c == first);
    for (uint32_t i = 1; i < st.ncolls; i++)
        CHECK(strcmp(st.colls[i - 1]->name, st.colls[i]->name) < 0);
    /* Drop every third: the rest are still found, the dropped are not. */
    for (uint32_t i = 0; i < FM_MAX_COLLECTIONS; i += 3) {
        coll_name(i, name, sizeof name);
        c = fm_state_coll(&st, (const uint8_t *)name, (uint32_t)strlen(name));
        CHECK(c && strcmp(c->name, name) == 0);
        if (c)
            fm_state_coll_drop(&st, c);
    }
    for (uint32_t i = 0; i < FM_MAX_COLLECTIONS; i++) {
        coll_name(i, name, sizeof name);
        c = fm_state_coll(&st, (const uint8_t *)name, (uint32_t)strlen(name));
        CHECK(i % 3 == 0 ? c == NULL : c != NULL && strcmp(c->name, name) == 0);
    }
    CHECK(fm_state_coll(&st, (const uint8_t *)"c1x", 3) == NULL); /* a prefix's longer name */
    CHECK(fm_state_coll(&st, (const uint8_t *)"c", 1) == NULL);
    fm_state_reset(&st);
    CHECK_EQ_INT(st.ncolls, 0);
    CHECK(fm_state_coll(&st, (const uint8_t *)"c1", 2) == NULL);
    CHECK_OK(fm_state_coll_add(&st, (const uint8_t *)"c1", 2, &c));
    CHECK(fm_state_coll(&st, (const uint8_t *)"c1", 2) == c);
    fm_state_free(&st);
}

/* ---- a record wider than any per-record bound ----------------------------------------------
 * FM_MAX_FIELDS_PER_RECORD is enforced on local writes only: remote batches (several authors each
 * at the bound, or one author ignoring it) make records as wide as they like, and every replica
 * must converge on, store and reload that state. */

typedef struct one_store {
    fm_buf val;
    uint32_t saves;
} one_store;

static int one_load(void *arg, fm_coll *c, const uint8_t *id, uint32_t id_len, fm_buf *out)
{
    one_store *s = arg;
    (void)c, (void)id, (void)id_len; /* one record */
    return fm_buf_append(out, s->val.data, s->val.len);
}

static int one_save(void *arg, fm_coll *c, const fm_rec *r, const uint8_t *enc, size_t len,
                    uint32_t conflicts)
{
    one_store *s = arg;
    (void)c, (void)r, (void)conflicts;
    s->saves++;
    fm_buf_reset(&s->val);
    return fm_buf_append(&s->val, enc, len);
}

static void test_wide_record_reloads(void)
{
    feed A = {0};
    A.id = id_from(1, A.pk);
    one_store db = {0};
    fm_buf_init(&db.val);
    fm_state_io io = {.arg = &db, .load = one_load, .save = one_save};
    fm_state st;
    fm_state_init(&st, &io);
    fm_buf ops, enc;
    fm_buf_init(&ops);
    fm_buf_init(&enc);
    enum { NBATCH = 3 }; /* 3 x FM_MAX_BATCH_OPS fields: past 16 x FM_MAX_FIELDS_PER_RECORD */
    char field[16];
    fm_vv empty;
    fm_vv_init(&empty);
    for (int k = 0; k < NBATCH; k++) {
        fm_buf_reset(&ops);
        for (int i = 0; i < FM_MAX_BATCH_OPS; i++) {
            snprintf(field, sizeof field, "f%05d", k * FM_MAX_BATCH_OPS + i);
            op(&ops, FM_OP_SET_LWW, "wide", field, fm_value_int(i));
        }
        fm_batch_head h = {.coll = (const uint8_t *)COLL,
                           .coll_len = strlen(COLL),
                           .first_seq = A.seq + 1,
                           .prev = A.seq ? A.head : NULL,
                           .ctx = &empty,
                           .hlc = HLC0 + (uint64_t)k,
                           .nops = FM_MAX_BATCH_OPS};
        fm_buf_reset(&enc);
        CHECK_OK(fm_batch_encode(A.id, &h, ops.data, ops.len, &enc));
        crypto_generichash(A.head, 32, enc.data, enc.len, NULL, 0);
        A.seq += FM_MAX_BATCH_OPS;
        CHECK_OK(check_apply(&st, &enc, true));
        /* Store and forget it, so the next batch applies to the reloaded state. */
        CHECK_OK(fm_state_flush(&st));
        fm_state_trim(&st, 0);
    }
    fm_coll *c = fm_state_coll(&st, (const uint8_t *)COLL, strlen(COLL));
    int rc = -1;
    fm_rec *r = c ? fm_state_record(&st, c, (const uint8_t *)"wide", 4, &rc) : NULL;
    CHECK_OK(rc);
    CHECK_EQ_INT(r ? r->nfields : 0, NBATCH * FM_MAX_BATCH_OPS);
    CHECK_EQ_INT(db.saves, NBATCH);
    fm_vv_free(&empty);
    fm_state_free(&st);
    fm_buf_free(&db.val);
    fm_buf_free(&ops);
    fm_buf_free(&enc);
    fm_identity_free(A.id);
}

/* ---- golden vector -------------------------------------------------------------------------- */

#define VECTOR_FILE FM_VECTORS_DIR "/batch.txt"

static void vector_values(fm_buf *enc, char **hex_batch, char hex_hash[65], char hex_pk[65],
                          size_t *signed_len)
{
    uint8_t pk[32], other[32], h[32];
    fm_identity *a = id_from(1, pk), *o = id_from(2, other);
    sample_batch(a, other, enc);
    *hex_batch = malloc(2 * enc->len + 1);
    fm_hex(enc->data, enc->len, *hex_batch);
    crypto_generichash(h, 32, enc->data, enc->len, NULL, 0);
    fm_hex(h, 32, hex_hash);
    fm_hex(pk, 32, hex_pk);
    *signed_len = enc->len - 2 - FM_SIG_BYTES;
    fm_identity_free(a);
    fm_identity_free(o);
}

static void print_vector(void)
{
    fm_buf enc;
    fm_buf_init(&enc);
    char *hex, hash[65], pk[65];
    size_t signed_len;
    vector_values(&enc, &hex, hash, pk, &signed_len);
    printf(
        "# tests/vectors/batch.txt: golden vector of the signed batch encoding (crdt/batch.h).\n"
        "# Checked byte for byte by tests/unit/test_batch.c (test_golden_vector), which builds\n"
        "# the same batch and compares. Generated once with `test_batch --print-vector`;\n"
        "# regenerate only for a deliberate format change.\n"
        "#\n"
        "# Format: `key: value` lines; lines starting with # and blank lines are ignored; hex is\n"
        "# lowercase. Inputs (informative, fixed in sample_batch()):\n"
        "#   author = fm_identity_from_seed(32 x 0x01); other = fm_identity_from_seed(32 x 0x02)\n"
        "#   collection \"people\", first_seq 3, prev = 32 x 0xab, context {other: 7},\n"
        "#   hlc = (1700000000000 << 16) | 5, ops:\n"
        "#     [0 SET_LWW, \"p1\", \"name\", \"Ann\"]   [1 SET_MV, \"p1\", \"dose_mg\", 5]\n"
        "#     [2 INCR, \"stock\", \"water\", -3]      [3 ADD, \"p1\", \"tags\", \"medic\"]\n"
        "#     [4 REMOVE, \"p1\", \"tags\", bin 0001]  [5 DELETE, \"p2\"]\n"
        "# Outputs:\n"
        "#   author_pk   the author's Ed25519 public key\n"
        "#   signed_len  bytes at the start of the batch that the signature covers\n"
        "#   batch       the whole encoded batch, signature included\n"
        "#   hash        BLAKE2b-256 of the whole batch (the next batch's prev)\n"
        "author_pk: %s\n"
        "signed_len: %zu\n"
        "batch: %s\n"
        "hash: %s\n",
        pk, signed_len, hex, hash);
    free(hex);
    fm_buf_free(&enc);
}

/* The value of `key: ` in the vector file (caller frees), or NULL. */
static char *vector_get(const char *text, const char *key)
{
    size_t klen = strlen(key);
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        if (*line != '#' && n > klen + 1 && strncmp(line, key, klen) == 0 &&
            strncmp(line + klen, ": ", 2) == 0) {
            char *out = malloc(n - klen - 1);
            memcpy(out, line + klen + 2, n - klen - 2);
            out[n - klen - 2] = 0;
            return out;
        }
        line += n + (end != NULL);
    }
    return NULL;
}

static void test_golden_vector(void)
{
    FILE *fp = fopen(VECTOR_FILE, "rb");
    CHECK(fp != NULL);
    if (!fp) {
        fprintf(stderr, "  cannot open %s\n", VECTOR_FILE);
        return;
    }
    char *text = calloc(1, 1 << 16);
    size_t n = fread(text, 1, (1 << 16) - 1, fp);
    fclose(fp);
    CHECK(n > 0);
    fm_buf enc;
    fm_buf_init(&enc);
    char *hex, hash[65], pk[65], len_text[32];
    size_t signed_len;
    vector_values(&enc, &hex, hash, pk, &signed_len);
    snprintf(len_text, sizeof len_text, "%zu", signed_len);
    char *f_batch = vector_get(text, "batch"), *f_hash = vector_get(text, "hash");
    char *f_pk = vector_get(text, "author_pk"), *f_len = vector_get(text, "signed_len");
    CHECK_STR(f_batch, hex);
    CHECK_STR(f_hash, hash);
    CHECK_STR(f_pk, pk);
    CHECK_STR(f_len, len_text);
    /* The stored bytes themselves decode and verify (the file is self-consistent). */
    if (f_batch && strlen(f_batch) % 2 == 0) {
        size_t blen = strlen(f_batch) / 2;
        uint8_t *bin = malloc(blen);
        CHECK_OK(sodium_hex2bin(bin, blen, f_batch, strlen(f_batch), NULL, NULL, NULL));
        fm_buf stored = {.data = bin, .len = blen, .cap = blen};
        CHECK_OK(decode_verify(&stored));
        free(bin);
    }
    free(f_batch);
    free(f_hash);
    free(f_pk);
    free(f_len);
    free(hex);
    free(text);
    fm_buf_free(&enc);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--print-vector") == 0) {
        print_vector();
        return 0;
    }
    RUN(test_roundtrip);
    RUN(test_tamper_every_byte);
    RUN(test_ops_bound);
    RUN(test_name_and_value_bounds);
    RUN(test_batch_bytes_bound);
    RUN(test_structure);
    RUN(test_state_check);
    RUN(test_feed_bound);
    RUN(test_coll_index);
    RUN(test_wide_record_reloads);
    RUN(test_golden_vector);
    TEST_MAIN_END();
}
