/*
 * vv.h — version vectors keyed by author id: entries sorted by author, every seq > 0 (sparse).
 * Canonical encoding: msgpack array of [bin32 author, uint seq] in author order.
 */
#ifndef FM_VV_H
#define FM_VV_H

#include "crdt/base.h"
#include "crdt/codec.h"

typedef struct fm_vv_entry {
    uint8_t author[FM_ID_BYTES];
    uint64_t seq;
} fm_vv_entry;

typedef struct fm_vv {
    fm_vv_entry *e;
    uint32_t n;
    uint32_t cap;
} fm_vv;

typedef enum fm_vv_order {
    FM_VV_EQUAL = 0,
    FM_VV_LESS = 1,      /* a < b: b has seen everything a has, and more */
    FM_VV_GREATER = 2,   /* a > b */
    FM_VV_CONCURRENT = 3 /* each has seen something the other has not */
} fm_vv_order;

void fm_vv_init(fm_vv *v);
void fm_vv_free(fm_vv *v);
int fm_vv_copy(fm_vv *dst, const fm_vv *src);
uint64_t fm_vv_get(const fm_vv *v, const uint8_t author[FM_ID_BYTES]);
/* Where author is in v (UINT32_MAX: absent). */
uint32_t fm_vv_index(const fm_vv *v, const uint8_t author[FM_ID_BYTES]);
/* fm_vv_get and fm_vv_raise, trying entry hint first: the author's index in another vector,
 * which a vector of the same authors has it at too (a node's vectors of its peers mostly name
 * the authors its own does). A wrong hint (UINT32_MAX: none) costs one comparison. */
uint64_t fm_vv_get_hinted(const fm_vv *v, const uint8_t author[FM_ID_BYTES], uint32_t hint);
int fm_vv_raise_hinted(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq, uint32_t hint);
/* fm_vv_raise_hinted with *at as the hint, and then author's index in v (UINT32_MAX if it has no
 * entry): raising a run of one author's entries searches once. */
int fm_vv_raise_at(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq, uint32_t *at);
/* seq 0 removes the entry. FM_ELIMIT past FM_MAX_VV_ENTRIES. */
int fm_vv_set(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq);
/* The entry becomes max(its seq, seq), in one search (a get and a set were two). Errors as
 * fm_vv_set; v is unchanged on error. */
int fm_vv_raise(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq);
/* dst = pointwise max(dst, src). */
int fm_vv_merge(fm_vv *dst, const fm_vv *src);
fm_vv_order fm_vv_compare(const fm_vv *a, const fm_vv *b);
/* a <= b pointwise (compare is EQUAL or LESS), in O(a->n log b->n) when a is the small one: a
 * batch's compact context against a peer's vector of a thousand authors. */
bool fm_vv_leq(const fm_vv *a, const fm_vv *b);
/* True if v has seen op (author, seq). */
static inline bool fm_vv_covers(const fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq)
{
    return seq <= fm_vv_get(v, author);
}
uint64_t fm_vv_total(const fm_vv *v);

void fm_vv_write(fm_wr *w, const fm_vv *v);
int fm_vv_encode(const fm_vv *v, fm_buf *out);
/* Strict: sorted, unique, seq > 0, at most FM_MAX_VV_ENTRIES. v is replaced. */
int fm_vv_read(fm_rd *r, fm_vv *v);
/* As fm_vv_read, into v's own room (grown if need be): no allocation per vector read. On
 * error v is empty. */
int fm_vv_read_into(fm_rd *r, fm_vv *v);
int fm_vv_decode(const uint8_t *p, size_t len, fm_vv *v);
/* BLAKE2b-256 of the canonical encoding: equal digests mean equal vectors. */
int fm_vv_digest(const fm_vv *v, uint8_t out[FM_HASH_BYTES]);

#endif
