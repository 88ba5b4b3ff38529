/*
 * codec.c — canonical msgpack reading and writing. Canonical = the form msgpack-c's packer emits:
 * smallest integer form (non-negative values always as positive fixint/uint), smallest str/bin/
 * array header, floats as float64. Anything else is FM_ENONCANON, so one logical value has one
 * encoding and encodings can be hashed and signed.
 */
#include "crdt/codec.h"

#include <math.h>
#include <string.h>

/* msgpack hands over 1-9 bytes at a time: those go as two overlapping moves of fixed size, as a
 * call to memcpy for each was 2.5 % of a sim run. */
static int wr_cb(void *data, const char *p, size_t n)
{
    fm_buf *b = data;
    if (n > 16 || b->oom || n > b->cap - b->len)
        return fm_buf_append(b, p, n) ? -1 : 0;
    uint8_t *d = b->data + b->len;
    const uint8_t *s = (const uint8_t *)p;
    if (n >= 8) {
        uint64_t x, y;
        memcpy(&x, s, 8), memcpy(&y, s + n - 8, 8);
        memcpy(d, &x, 8), memcpy(d + n - 8, &y, 8);
    } else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, s, 4), memcpy(&y, s + n - 4, 4);
        memcpy(d, &x, 4), memcpy(d + n - 4, &y, 4);
    } else if (n) {
        uint8_t x = s[0], y = s[n / 2], z = s[n - 1];
        d[0] = x, d[n / 2] = y, d[n - 1] = z;
    }
    b->len += n;
    return 0;
}

void fm_wr_init(fm_wr *w, fm_buf *buf)
{
    w->buf = buf;
    msgpack_packer_init(&w->pk, buf, wr_cb);
}

void fm_wr_bytes_raw(fm_wr *w, const void *p, size_t n)
{
    fm_buf_append(w->buf, p, n);
}

void fm_wr_str(fm_wr *w, const void *p, size_t n)
{
    msgpack_pack_str(&w->pk, n);
    msgpack_pack_str_body(&w->pk, p, n);
}

void fm_wr_bin(fm_wr *w, const void *p, size_t n)
{
    msgpack_pack_bin(&w->pk, n);
    msgpack_pack_bin_body(&w->pk, p, n);
}

void fm_wr_value(fm_wr *w, const fm_value *v)
{
    switch (v->type) {
    case FM_V_NIL:
        msgpack_pack_nil(&w->pk);
        break;
    case FM_V_BOOL:
        if (v->u.b)
            msgpack_pack_true(&w->pk);
        else
            msgpack_pack_false(&w->pk);
        break;
    case FM_V_INT:
        msgpack_pack_int64(&w->pk, v->u.i);
        break;
    case FM_V_FLOAT:
        msgpack_pack_double(&w->pk, v->u.f);
        break;
    case FM_V_STR:
        fm_wr_str(w, v->u.s.bytes, v->u.s.len);
        break;
    case FM_V_BIN:
        fm_wr_bin(w, v->u.s.bytes, v->u.s.len);
        break;
    }
}

void fm_rd_init(fm_rd *r, const uint8_t *p, size_t n)
{
    r->p = p;
    r->end = p + n;
    r->err = 0;
}

static int rd_fail(fm_rd *r, int rc)
{
    if (!r->err)
        r->err = rc;
    return r->err;
}

/* The next tag byte, not consumed: the sticky error, or FM_ETRUNC at the end. */
static int rd_peek(fm_rd *r, uint8_t *t)
{
    if (r->err)
        return r->err;
    if (r->p >= r->end)
        return rd_fail(r, FM_ETRUNC);
    *t = *r->p;
    return 0;
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a big-endian length/number of n bytes following the tag byte. */
static int rd_be(fm_rd *r, int n, uint64_t *v)
{
    if (fm_rd_left(r) < (size_t)n)
        return rd_fail(r, FM_ETRUNC);
    *v = be(r->p, n);
    r->p += n;
    return 0;
}

int fm_rd_array(fm_rd *r, uint32_t *n)
{
    uint8_t t;
    if (rd_peek(r, &t))
        return r->err;
    r->p++;
    uint64_t v;
    if ((t & 0xf0) == 0x90) {
        *n = t & 0x0f;
        return 0;
    }
    if (t == 0xdc) {
        if (rd_be(r, 2, &v))
            return r->err;
        if (v < 16)
            return rd_fail(r, FM_ENONCANON);
    } else if (t == 0xdd) {
        if (rd_be(r, 4, &v))
            return r->err;
        if (v <= 0xffff)
            return rd_fail(r, FM_ENONCANON);
    } else {
        return rd_fail(r, FM_EDECODE);
    }
    /* Every element takes at least one byte: a cheap bound against huge claimed counts. */
    if (v > fm_rd_left(r))
        return rd_fail(r, FM_ETRUNC);
    *n = (uint32_t)v;
    return 0;
}

int fm_rd_array_exact(fm_rd *r, uint32_t n)
{
    uint32_t got;
    if (fm_rd_array(r, &got))
        return r->err;
    return got == n ? 0 : rd_fail(r, FM_EDECODE);
}

/* Integers: returns the value as (negative?, magnitude-ish) in two's complement. */
static int rd_integer(fm_rd *r, bool *neg, uint64_t *u)
{
    uint8_t t;
    if (rd_peek(r, &t))
        return r->err;
    r->p++;
    uint64_t v;
    *neg = false;
    if (t <= 0x7f) {
        *u = t;
        return 0;
    }
    if (t >= 0xe0) {
        *neg = true;
        *u = (uint64_t)(int64_t)(int8_t)t;
        return 0;
    }
    static const uint64_t umin[4] = {0x80, 0x100, 0x10000, 0x100000000ull};
    if (t >= 0xcc && t <= 0xcf) {
        int k = t - 0xcc;
        if (rd_be(r, 1 << k, &v))
            return r->err;
        if (v < umin[k])
            return rd_fail(r, FM_ENONCANON);
        *u = v;
        return 0;
    }
    if (t >= 0xd0 && t <= 0xd3) {
        int k = t - 0xd0, bytes = 1 << k;
        if (rd_be(r, bytes, &v))
            return r->err;
        int64_t s = bytes == 8 ? (int64_t)v : (int64_t)(v << (64 - 8 * bytes)) >> (64 - 8 * bytes);
        /* Signed forms are canonical only for negatives too small for the next smaller form. */
        static const int64_t smin[4] = {-32, -128, -32768, -2147483648ll};
        if (s >= smin[k])
            return rd_fail(r, FM_ENONCANON);
        *neg = true;
        *u = (uint64_t)s;
        return 0;
    }
    return rd_fail(r, FM_EDECODE);
}

int fm_rd_uint(fm_rd *r, uint64_t *v)
{
    bool neg;
    if (rd_integer(r, &neg, v))
        return r->err;
    return neg ? rd_fail(r, FM_EDECODE) : 0;
}

int fm_rd_int(fm_rd *r, int64_t *v)
{
    bool neg;
    uint64_t u;
    if (rd_integer(r, &neg, &u))
        return r->err;
    if (!neg && u > INT64_MAX)
        return rd_fail(r, FM_ELIMIT);
    *v = (int64_t)u;
    return 0;
}

/* str (base 0xa0/0xd9..0xdb) or bin (0xc4..0xc6) header. */
static int rd_blob(fm_rd *r, bool str, const uint8_t **p, uint32_t *n, uint32_t max)
{
    uint8_t t;
    if (rd_peek(r, &t))
        return r->err;
    r->p++;
    uint64_t v;
    int k;
    if (str && (t & 0xe0) == 0xa0) {
        v = t & 0x1f;
        k = -1;
    } else if (str && t >= 0xd9 && t <= 0xdb) {
        k = t - 0xd9;
    } else if (!str && t >= 0xc4 && t <= 0xc6) {
        k = t - 0xc4;
    } else {
        return rd_fail(r, FM_EDECODE);
    }
    if (k >= 0) {
        static const uint64_t smin[3] = {32, 0x100, 0x10000}, bmin[3] = {0, 0x100, 0x10000};
        if (rd_be(r, 1 << k, &v))
            return r->err;
        if (v < (str ? smin[k] : bmin[k]))
            return rd_fail(r, FM_ENONCANON);
    }
    if (v > max)
        return rd_fail(r, FM_ELIMIT);
    if (v > fm_rd_left(r))
        return rd_fail(r, FM_ETRUNC);
    if (str && !fm_utf8_valid(r->p, (size_t)v))
        return rd_fail(r, FM_EDECODE);
    *p = r->p;
    *n = (uint32_t)v;
    r->p += v;
    return 0;
}

int fm_rd_str(fm_rd *r, const uint8_t **p, uint32_t *n, uint32_t max)
{
    return rd_blob(r, true, p, n, max);
}

int fm_rd_bin(fm_rd *r, const uint8_t **p, uint32_t *n, uint32_t max)
{
    return rd_blob(r, false, p, n, max);
}

int fm_rd_bin_fixed(fm_rd *r, uint8_t *out, uint32_t n)
{
    const uint8_t *p;
    uint32_t got;
    if (rd_blob(r, false, &p, &got, n))
        return r->err;
    if (got != n)
        return rd_fail(r, FM_EDECODE);
    memcpy(out, p, n);
    return 0;
}

int fm_rd_nil(fm_rd *r)
{
    uint8_t t;
    if (rd_peek(r, &t))
        return r->err;
    if (t != 0xc0)
        return 0;
    r->p++;
    return 1;
}

int fm_rd_value(fm_rd *r, fm_value *v, const uint8_t **raw, uint32_t *rawlen)
{
    uint8_t t;
    if (rd_peek(r, &t))
        return r->err;
    const uint8_t *start = r->p;
    if (t == 0xc0 || t == 0xc2 || t == 0xc3) {
        r->p++;
        v->type = t == 0xc0 ? FM_V_NIL : FM_V_BOOL;
        v->u.b = t == 0xc3;
    } else if (t == 0xcb) {
        uint64_t bits;
        r->p++;
        if (rd_be(r, 8, &bits))
            return r->err;
        v->type = FM_V_FLOAT;
        memcpy(&v->u.f, &bits, 8);
        if (isnan(v->u.f))
            return rd_fail(r, FM_EDECODE);
    } else if ((t & 0xe0) == 0xa0 || (t >= 0xd9 && t <= 0xdb)) {
        v->type = FM_V_STR;
        if (fm_rd_str(r, &v->u.s.bytes, &v->u.s.len, FM_MAX_VALUE_LEN))
            return r->err;
    } else if (t >= 0xc4 && t <= 0xc6) {
        v->type = FM_V_BIN;
        if (fm_rd_bin(r, &v->u.s.bytes, &v->u.s.len, FM_MAX_VALUE_LEN))
            return r->err;
    } else {
        v->type = FM_V_INT;
        if (fm_rd_int(r, &v->u.i))
            return r->err;
    }
    if (raw) {
        *raw = start;
        *rawlen = (uint32_t)(r->p - start);
    }
    return 0;
}

int fm_rd_end(fm_rd *r)
{
    if (r->err)
        return r->err;
    return r->p == r->end ? 0 : rd_fail(r, FM_EDECODE);
}

int fm_value_decode(const uint8_t *p, size_t len, fm_value *v)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    fm_rd_value(&r, v, NULL, NULL);
    return fm_rd_end(&r);
}

int fm_value_check(const fm_value *v)
{
    switch (v->type) {
    case FM_V_NIL:
    case FM_V_BOOL:
    case FM_V_INT:
        return 0;
    case FM_V_FLOAT:
        return isnan(v->u.f) ? FM_EINVAL : 0;
    case FM_V_STR:
    case FM_V_BIN:
        if (v->u.s.len > FM_MAX_VALUE_LEN)
            return FM_ELIMIT;
        if (v->u.s.len && !v->u.s.bytes)
            return FM_EINVAL;
        if (v->type == FM_V_STR && !fm_utf8_valid(v->u.s.bytes, v->u.s.len))
            return FM_EINVAL;
        return 0;
    }
    return FM_EINVAL;
}

int fm_value_encode(const fm_value *v, fm_buf *out)
{
    int rc = fm_value_check(v);
    if (rc)
        return rc;
    fm_wr w;
    fm_wr_init(&w, out);
    fm_wr_value(&w, v);
    return out->oom ? FM_ENOMEM : 0;
}

fm_value fm_value_nil(void)
{
    fm_value v = {.type = FM_V_NIL};
    return v;
}

fm_value fm_value_bool(int b)
{
    fm_value v = {.type = FM_V_BOOL, .u.b = !!b};
    return v;
}

fm_value fm_value_int(int64_t i)
{
    fm_value v = {.type = FM_V_INT, .u.i = i};
    return v;
}

fm_value fm_value_float(double f)
{
    fm_value v = {.type = FM_V_FLOAT, .u.f = f};
    return v;
}

fm_value fm_value_str(const char *s)
{
    fm_value v = {.type = FM_V_STR};
    v.u.s.bytes = (const uint8_t *)s;
    v.u.s.len = (uint32_t)strlen(s);
    return v;
}

fm_value fm_value_bin(const void *p, uint32_t len)
{
    fm_value v = {.type = FM_V_BIN};
    v.u.s.bytes = p;
    v.u.s.len = len;
    return v;
}
