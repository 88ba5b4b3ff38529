/*
 * codec.h — canonical msgpack: msgpack-c's packer for writing (it always picks the smallest form),
 * and a strict reader that accepts only the smallest form of every header and integer, float64
 * only, valid UTF-8 in strings, and never reads past its end.
 *
 * Reader functions return 0 or a negative FM_E* code; the first error sticks in rd->err so a
 * decoder may check once at the end.
 */
#ifndef FM_CODEC_H
#define FM_CODEC_H

#include "crdt/base.h"

#include <msgpack.h>

typedef struct fm_wr {
    msgpack_packer pk;
    fm_buf *buf;
} fm_wr;

/* Appends to buf; out-of-memory is sticky in buf->oom. */
void fm_wr_init(fm_wr *w, fm_buf *buf);
#define FM_PK(w) (&(w)->pk)
void fm_wr_bytes_raw(fm_wr *w, const void *p, size_t n); /* already-encoded msgpack */
void fm_wr_str(fm_wr *w, const void *p, size_t n);
void fm_wr_bin(fm_wr *w, const void *p, size_t n);
/* A scalar value in canonical form. */
void fm_wr_value(fm_wr *w, const fm_value *v);

typedef struct fm_rd {
    const uint8_t *p;
    const uint8_t *end;
    int err;
} fm_rd;

void fm_rd_init(fm_rd *r, const uint8_t *p, size_t n);
static inline size_t fm_rd_left(const fm_rd *r)
{
    return (size_t)(r->end - r->p);
}
int fm_rd_array(fm_rd *r, uint32_t *n);
int fm_rd_array_exact(fm_rd *r, uint32_t n);
int fm_rd_uint(fm_rd *r, uint64_t *v);
int fm_rd_int(fm_rd *r, int64_t *v);
int fm_rd_str(fm_rd *r, const uint8_t **p, uint32_t *n, uint32_t max);
int fm_rd_bin(fm_rd *r, const uint8_t **p, uint32_t *n, uint32_t max);
int fm_rd_bin_fixed(fm_rd *r, uint8_t *out, uint32_t n);
/* 1 if a nil was consumed, 0 if the next item is not nil (nothing consumed), or an error. */
int fm_rd_nil(fm_rd *r);
/* One canonical scalar; raw and rawlen locate its encoding inside the input. */
int fm_rd_value(fm_rd *r, fm_value *v, const uint8_t **raw, uint32_t *rawlen);
/* FM_EDECODE unless every byte was consumed. */
int fm_rd_end(fm_rd *r);

/* Decodes one canonical scalar encoding (exactly len bytes). */
int fm_value_decode(const uint8_t *p, size_t len, fm_value *v);
/* Encodes a scalar; values must satisfy fm_value_check. */
int fm_value_encode(const fm_value *v, fm_buf *out);
/* FM_EINVAL for NaN, invalid UTF-8, bad type; FM_ELIMIT past FM_MAX_VALUE_LEN. */
int fm_value_check(const fm_value *v);

#endif
