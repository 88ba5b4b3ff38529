/*
 * batch.c — strict decoding and signed encoding of batches. Decoding validates every bound and
 * every structural rule the apply path relies on, so apply never sees a malformed op.
 */
#include "crdt/batch.h"

#include "crypto/identity.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void fm_batch_init(fm_batch *b)
{
    memset(b, 0, sizeof *b);
    fm_vv_init(&b->ctx);
}

void fm_batch_free(fm_batch *b)
{
    fm_vv_free(&b->ctx);
    free(b->ops);
    fm_batch_init(b);
}

int fm_name_check(const uint8_t *p, size_t len, size_t max)
{
    if (len == 0)
        return FM_EINVAL;
    if (len > max)
        return FM_ELIMIT;
    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            return FM_EINVAL;
    return fm_utf8_valid(p, len) ? 0 : FM_EINVAL;
}

static int rd_name(fm_rd *r, const uint8_t **p, uint32_t *n, uint32_t max)
{
    if (fm_rd_str(r, p, n, max))
        return r->err;
    int rc = fm_name_check(*p, *n, max);
    if (rc)
        r->err = rc == FM_ELIMIT ? FM_ELIMIT : FM_EDECODE;
    return r->err;
}

static int rd_op(fm_rd *r, fm_op *op)
{
    uint32_t n;
    uint64_t type;
    memset(op, 0, sizeof *op);
    if (fm_rd_array(r, &n) || fm_rd_uint(r, &type))
        return r->err;
    if (type >= FM_OP__COUNT || n != (type == FM_OP_DELETE ? 2u : 4u))
        return r->err = FM_EDECODE;
    op->type = (uint8_t)type;
    if (rd_name(r, &op->id, &op->id_len, FM_MAX_RECORD_ID_LEN) || type == FM_OP_DELETE)
        return r->err;
    if (rd_name(r, &op->field, &op->field_len, FM_MAX_FIELD_LEN))
        return r->err;
    fm_value v;
    if (fm_rd_value(r, &v, &op->val, &op->val_len))
        return r->err;
    if (type == FM_OP_INCR) {
        if (v.type != FM_V_INT)
            return r->err = FM_EDECODE;
        op->delta = v.u.i;
    }
    return 0;
}

static int rd_header(fm_rd *r, fm_batch *b)
{
    uint64_t ver;
    if (fm_rd_array_exact(r, 9) || fm_rd_uint(r, &ver))
        return r->err;
    if (ver != FM_BATCH_FORMAT)
        return r->err = FM_EVERSION;
    fm_rd_bin_fixed(r, b->author, FM_ID_BYTES);
    rd_name(r, &b->coll, &b->coll_len, FM_MAX_COLLECTION_LEN);
    fm_rd_uint(r, &b->first_seq);
    int nil = fm_rd_nil(r);
    if (nil < 0)
        return r->err;
    b->has_prev = !nil;
    if (b->has_prev && fm_rd_bin_fixed(r, b->prev, FM_HASH_BYTES))
        return r->err;
    if (r->err || fm_vv_read_into(r, &b->ctx) || fm_rd_uint(r, &b->hlc))
        return r->err;
    /* The chain starts at seq 1 and nowhere else; the context never names the author itself
     * (its own past is implied by first_seq). */
    if (b->first_seq == 0 || b->has_prev != (b->first_seq > 1) ||
        fm_vv_get(&b->ctx, b->author) != 0)
        return r->err = FM_EDECODE;
    return 0;
}

/* n ops (1..FM_MAX_BATCH_OPS) into b->ops. */
static int rd_op_list(fm_rd *r, fm_batch *b, uint32_t n)
{
    if (n == 0)
        return r->err = FM_EDECODE;
    if (n > FM_MAX_BATCH_OPS)
        return r->err = FM_ELIMIT;
    if (n > b->ops_cap) {
        fm_op *ops = fm_reallocarray(b->ops, n, sizeof *ops);
        if (!ops)
            return r->err = FM_ENOMEM;
        b->ops = ops;
        b->ops_cap = n;
    }
    for (uint32_t i = 0; i < n; i++)
        if (rd_op(r, &b->ops[i]))
            return r->err;
    b->nops = n;
    return 0;
}

/* The ops array's header: n ops, 1..FM_MAX_BATCH_OPS, whose seqs stay in range. */
static int rd_ops_count(fm_rd *r, const fm_batch *b, uint32_t *n)
{
    if (fm_rd_array(r, n))
        return r->err;
    if (*n == 0)
        return r->err = FM_EDECODE;
    if (*n > FM_MAX_BATCH_OPS || b->first_seq > UINT64_MAX / 2 - *n)
        return r->err = FM_ELIMIT;
    return 0;
}

static int rd_ops(fm_rd *r, fm_batch *b)
{
    uint32_t n;
    return rd_ops_count(r, b, &n) ? r->err : rd_op_list(r, b, n);
}

static int decode_unhashed(const uint8_t *p, size_t len, fm_batch *b)
{
    b->ctx.n = 0; /* its room is kept for the next batch */
    b->nops = 0;
    if (len > FM_MAX_BATCH_BYTES)
        return FM_ELIMIT;
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_header(&r, b) || rd_ops(&r, b))
        goto fail;
    b->signed_len = (size_t)(r.p - p);
    if (fm_rd_bin_fixed(&r, b->sig, FM_SIG_BYTES) || fm_rd_end(&r))
        goto fail;
    return 0;
fail:
    b->nops = 0;
    return r.err;
}

int fm_batch_decode(const uint8_t *p, size_t len, fm_batch *b)
{
    int rc = decode_unhashed(p, len, b);
    if (!rc)
        fm_batch_hash(p, len, b->hash);
    return rc;
}

int fm_batch_decode_hashed(const uint8_t *p, size_t len, const uint8_t hash[FM_HASH_BYTES],
                           fm_batch *b)
{
    int rc = decode_unhashed(p, len, b);
    if (!rc)
        memcpy(b->hash, hash, FM_HASH_BYTES);
    return rc;
}

int fm_batch_peek(const uint8_t *p, size_t len, fm_batch *b, bool hash)
{
    b->ctx.n = 0;
    b->nops = 0;
    if (len > FM_MAX_BATCH_BYTES)
        return FM_ELIMIT;
    fm_rd r;
    fm_rd_init(&r, p, len);
    uint32_t n;
    if (rd_header(&r, b) || rd_ops_count(&r, b, &n))
        return r.err;
    b->nops = n;
    if (hash)
        fm_batch_hash(p, len, b->hash);
    return 0;
}

void fm_batch_hash(const uint8_t *p, size_t len, uint8_t out[FM_HASH_BYTES])
{
    crypto_generichash(out, FM_HASH_BYTES, p, len, NULL, 0);
}

const uint8_t *fm_batch_sig_tail(const uint8_t *p, size_t len)
{
    _Static_assert(FM_SIG_BYTES < 256, "a signature is a bin8 element");
    if (len < 2 + FM_SIG_BYTES || p[len - FM_SIG_BYTES - 2] != 0xc4 ||
        p[len - FM_SIG_BYTES - 1] != FM_SIG_BYTES)
        return NULL;
    return p + len - FM_SIG_BYTES;
}

int fm_batch_decode_ops(const uint8_t *p, size_t len, uint32_t nops, fm_batch *b)
{
    b->nops = 0;
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_op_list(&r, b, nops) || fm_rd_end(&r)) {
        b->nops = 0;
        return r.err;
    }
    return 0;
}

int fm_batch_verify(const fm_batch *b, const uint8_t *p, size_t len)
{
    FM_ASSERT(b->signed_len < len);
    return fm_sig_verify(b->author, FM_BATCH_SIG_DOMAIN, p, b->signed_len, b->sig);
}

int fm_op_encode(fm_buf *out, fm_op_type type, const char *id, size_t id_len, const char *field,
                 size_t field_len, const uint8_t *val, size_t val_len)
{
    FM_ASSERT(type < FM_OP__COUNT);
    FM_ASSERT((type == FM_OP_DELETE) == (val == NULL));
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), type == FM_OP_DELETE ? 2 : 4);
    msgpack_pack_uint8(FM_PK(&w), (uint8_t)type);
    fm_wr_str(&w, id, id_len);
    if (type != FM_OP_DELETE) {
        fm_wr_str(&w, field, field_len);
        fm_wr_bytes_raw(&w, val, val_len);
    }
    return out->oom ? FM_ENOMEM : 0;
}

int fm_batch_encode(const fm_identity *author, const fm_batch_head *h, const uint8_t *ops,
                    size_t ops_len, fm_buf *out)
{
    FM_ASSERT(h->nops > 0 && h->nops <= FM_MAX_BATCH_OPS);
    FM_ASSERT((h->prev == NULL) == (h->first_seq == 1));
    uint8_t pk[FM_ID_BYTES];
    fm_identity_public(author, pk);
    FM_ASSERT(fm_vv_get(h->ctx, pk) == 0);
    size_t start = out->len;
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 9);
    msgpack_pack_uint8(FM_PK(&w), FM_BATCH_FORMAT);
    fm_wr_bin(&w, pk, FM_ID_BYTES);
    fm_wr_str(&w, h->coll, h->coll_len);
    msgpack_pack_uint64(FM_PK(&w), h->first_seq);
    if (h->prev)
        fm_wr_bin(&w, h->prev, FM_HASH_BYTES);
    else
        msgpack_pack_nil(FM_PK(&w));
    fm_vv_write(&w, h->ctx);
    msgpack_pack_uint64(FM_PK(&w), h->hlc);
    msgpack_pack_array(FM_PK(&w), h->nops);
    fm_wr_bytes_raw(&w, ops, ops_len);
    if (out->oom)
        return FM_ENOMEM;
    uint8_t sig[FM_SIG_BYTES];
    fm_identity_sign(author, FM_BATCH_SIG_DOMAIN, out->data + start, out->len - start, sig);
    fm_wr_bin(&w, sig, FM_SIG_BYTES);
    if (out->oom)
        return FM_ENOMEM;
    if (out->len - start > FM_MAX_BATCH_BYTES) {
        out->len = start;
        return FM_ELIMIT;
    }
    return 0;
}
