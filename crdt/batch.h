/*
 * batch.h — operations and batches (DESIGN.md §3), canonical msgpack.
 *
 * batch = [1 (format), author bin32, collection str, first_seq uint, prev (nil | bin32),
 *          context (version vector without the author's own entry), hlc uint, ops, sig bin64]
 * op    = [type, record id str, field str, value]   for SET_LWW, SET_MV, INCR (int), ADD, REMOVE
 *       = [5, record id str]                        for DELETE
 * Op i of a batch has dot (author, first_seq + i) and context = batch context plus the author's
 * own ops before it. Writers put in the context only what the ops supersede (fm_state_context),
 * which is part of what they have seen. The signature covers every byte before the sig element,
 * under the domain "fieldmesh-batch-v1"; the batch hash (the feed chain link) covers the whole
 * encoding.
 */
#ifndef FM_BATCH_H
#define FM_BATCH_H

#include "crdt/base.h"
#include "crdt/codec.h"
#include "crdt/vv.h"

#define FM_BATCH_FORMAT 1
#define FM_BATCH_SIG_DOMAIN "fieldmesh-batch-v1"

typedef enum fm_op_type {
    FM_OP_SET_LWW = 0,
    FM_OP_SET_MV = 1,
    FM_OP_INCR = 2,
    FM_OP_ADD = 3,
    FM_OP_REMOVE = 4,
    FM_OP_DELETE = 5,
    FM_OP__COUNT
} fm_op_type;

/* Pointers borrow the encoded batch. */
typedef struct fm_op {
    uint8_t type;
    uint32_t id_len, field_len, val_len;
    const uint8_t *id;
    const uint8_t *field;
    const uint8_t *val; /* canonical scalar encoding (not for DELETE) */
    int64_t delta;      /* INCR */
} fm_op;

typedef struct fm_batch {
    uint8_t author[FM_ID_BYTES];
    const uint8_t *coll;
    uint32_t coll_len;
    uint64_t first_seq;
    bool has_prev;
    uint8_t prev[FM_HASH_BYTES];
    fm_vv ctx; /* owned */
    uint64_t hlc;
    fm_op *ops; /* owned array, nops used */
    uint32_t nops, ops_cap;
    uint8_t sig[FM_SIG_BYTES];
    size_t signed_len;           /* prefix of the encoding the signature covers */
    uint8_t hash[FM_HASH_BYTES]; /* BLAKE2b-256 of the whole encoding */
} fm_batch;

static inline uint64_t fm_batch_last_seq(const fm_batch *b)
{
    return b->first_seq + b->nops - 1;
}

void fm_batch_init(fm_batch *b);
void fm_batch_free(fm_batch *b);

/* Strict decode of one batch (exactly len bytes); b's pointers borrow p. Does not verify the
 * signature. Errors: FM_EDECODE, FM_ETRUNC, FM_ENONCANON, FM_ELIMIT, FM_EVERSION, FM_ENOMEM. */
int fm_batch_decode(const uint8_t *p, size_t len, fm_batch *b);
/* fm_batch_decode for a caller that has already hashed exactly these bytes (a peek with hash):
 * b->hash is copied from hash, not computed again. */
int fm_batch_decode_hashed(const uint8_t *p, size_t len, const uint8_t hash[FM_HASH_BYTES],
                           fm_batch *b);
/* The header of a batch only: author, collection, first_seq, prev, ctx, hlc and the op count
 * (b->nops, so fm_batch_last_seq works), the ops themselves neither read nor checked (b->ops is
 * not for use), and b->hash only if hash. For decisions about bytes that are stored already or
 * that a full decode checks later (a duplicate, a push, an export). Errors as fm_batch_decode. */
int fm_batch_peek(const uint8_t *p, size_t len, fm_batch *b, bool hash);
/* The hash of the batch encoded in p (fm_batch.hash; a peek without it leaves it unset). */
void fm_batch_hash(const uint8_t *p, size_t len, uint8_t out[FM_HASH_BYTES]);
/* Where the signature of the batch encoded in p would be: the last FM_SIG_BYTES bytes, if they
 * are the payload of a canonical final bin element; NULL if not. Nothing is checked beyond that:
 * for recognising bytes that end like a batch held here, never for accepting new ones. */
const uint8_t *fm_batch_sig_tail(const uint8_t *p, size_t len);
/* Strict decode of nops ops written back to back by fm_op_encode (the ops of a batch being built)
 * into b->ops and b->nops; the rest of b is left as it is. Errors as fm_batch_decode. */
int fm_batch_decode_ops(const uint8_t *p, size_t len, uint32_t nops, fm_batch *b);
/* 0 or FM_ESIG. */
int fm_batch_verify(const fm_batch *b, const uint8_t *p, size_t len);

/* Valid names: collection 1..FM_MAX_COLLECTION_LEN bytes, record id 1..FM_MAX_RECORD_ID_LEN,
 * field 1..FM_MAX_FIELD_LEN; UTF-8 without control characters. */
int fm_name_check(const uint8_t *p, size_t len, size_t max);

/* Appends one encoded op. val is a canonical scalar encoding (NULL for DELETE). */
int fm_op_encode(fm_buf *out, fm_op_type type, const char *id, size_t id_len, const char *field,
                 size_t field_len, const uint8_t *val, size_t val_len);

struct fm_identity;
/* Writes a whole signed batch around already-encoded ops. */
typedef struct fm_batch_head {
    const uint8_t *coll;
    uint32_t coll_len;
    uint64_t first_seq;
    const uint8_t *prev; /* NULL for the first batch of a feed */
    const fm_vv *ctx;    /* must not hold the author */
    uint64_t hlc;
    uint32_t nops;
} fm_batch_head;
int fm_batch_encode(const struct fm_identity *author, const fm_batch_head *h, const uint8_t *ops,
                    size_t ops_len, fm_buf *out);

#endif
