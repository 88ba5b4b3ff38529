/*
 * test_codec.c — the canonical msgpack reader (crdt/codec.c), the hybrid logical clock
 * (crdt/hlc.c) and version vectors (crdt/vv.c).
 *
 * The reader's contract: exactly one encoding per value is accepted, and it is the one msgpack-c's
 * packer writes. So for every boundary value each representable form is built by hand; the smallest
 * must equal the packer's bytes and decode, every other must be FM_ENONCANON.
 */
#include "crdt/codec.h"
#include "crdt/hlc.h"
#include "crdt/vv.h"
#include "fm_test.h"

#include <sodium.h>
#include <float.h>
#include <math.h>

/* ---- hand-built encodings ------------------------------------------------------------------ */

static size_t put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
    return (size_t)n;
}

/* Integer forms, smallest first within each sign. */
enum { F_POSFIX, F_U8, F_U16, F_U32, F_U64, F_NEGFIX, F_I8, F_I16, F_I32, F_I64, F__COUNT };

/* Writes v in the given form; 0 if the form cannot hold v. */
static size_t int_form(int form, int64_t v, uint8_t out[9])
{
    static const uint8_t tag[F__COUNT] = {0, 0xcc, 0xcd, 0xce, 0xcf, 0, 0xd0, 0xd1, 0xd2, 0xd3};
    static const int width[F__COUNT] = {0, 1, 2, 4, 8, 0, 1, 2, 4, 8};
    switch (form) {
    case F_POSFIX:
        if (v < 0 || v > 127)
            return 0;
        out[0] = (uint8_t)v;
        return 1;
    case F_NEGFIX:
        if (v < -32 || v > -1)
            return 0;
        out[0] = (uint8_t)(int8_t)v;
        return 1;
    case F_U8:
    case F_U16:
    case F_U32:
    case F_U64:
        if (v < 0 || (width[form] < 8 && (uint64_t)v >> (8 * width[form])))
            return 0;
        break;
    default: {
        int bits = 8 * width[form];
        if (bits < 64 && (v < -(INT64_C(1) << (bits - 1)) || v >= (INT64_C(1) << (bits - 1))))
            return 0;
    }
    }
    out[0] = tag[form];
    return 1 + put_be(out + 1, (uint64_t)v, width[form]);
}

/* The canonical form, from the spec in codec.c, independently of msgpack-c. */
static int canon_form(int64_t v)
{
    if (v >= 0)
        return v < 128           ? F_POSFIX
               : v < 256         ? F_U8
               : v < 65536       ? F_U16
               : v <= UINT32_MAX ? F_U32
                                 : F_U64;
    return v >= -32         ? F_NEGFIX
           : v >= -128      ? F_I8
           : v >= -32768    ? F_I16
           : v >= INT32_MIN ? F_I32
                            : F_I64;
}

static int pk_cb(void *data, const char *p, size_t n)
{
    return fm_buf_append(data, p, n) ? -1 : 0;
}

static void packer(msgpack_packer *pk, fm_buf *b)
{
    fm_buf_reset(b);
    msgpack_packer_init(pk, b, pk_cb);
}

static int read_int(const uint8_t *p, size_t n, int64_t *v)
{
    fm_rd r;
    fm_rd_init(&r, p, n);
    if (fm_rd_int(&r, v))
        return r.err;
    return fm_rd_end(&r);
}

static const int64_t INT_BOUNDS[] = {0,
                                     1,
                                     31,
                                     32,
                                     127,
                                     128,
                                     255,
                                     256,
                                     32767,
                                     32768,
                                     65535,
                                     65536,
                                     INT32_MAX,
                                     (int64_t)INT32_MAX + 1,
                                     UINT32_MAX,
                                     (int64_t)UINT32_MAX + 1,
                                     INT64_MAX - 1,
                                     INT64_MAX,
                                     -1,
                                     -31,
                                     -32,
                                     -33,
                                     -127,
                                     -128,
                                     -129,
                                     -255,
                                     -256,
                                     -32767,
                                     -32768,
                                     -32769,
                                     -65536,
                                     INT32_MIN + 1,
                                     INT32_MIN,
                                     (int64_t)INT32_MIN - 1,
                                     -(int64_t)UINT32_MAX,
                                     INT64_MIN + 1,
                                     INT64_MIN};

static void test_int_forms(void)
{
    fm_buf b;
    msgpack_packer pk;
    fm_buf_init(&b);
    for (size_t i = 0; i < FM_ARRAY_LEN(INT_BOUNDS); i++) {
        int64_t v = INT_BOUNDS[i], got;
        int canon = canon_form(v), accepted = 0;
        packer(&pk, &b);
        msgpack_pack_int64(&pk, v);
        for (int f = 0; f < F__COUNT; f++) {
            uint8_t enc[9];
            size_t n = int_form(f, v, enc);
            if (!n)
                continue;
            int rc = read_int(enc, n, &got);
            if (f == canon) {
                CHECK_OK(rc);
                CHECK_EQ_INT(got, v);
                /* The packer writes exactly the one form the reader accepts. */
                CHECK_EQ_INT(b.len, n);
                CHECK(b.len == n && memcmp(b.data, enc, n) == 0);
                fm_value val;
                CHECK_OK(fm_value_decode(enc, n, &val));
                CHECK_EQ_INT(val.type, FM_V_INT);
                CHECK_EQ_INT(val.u.i, v);
                accepted++;
            } else {
                if (rc != FM_ENONCANON)
                    fprintf(stderr, "  value %" PRId64 " form %d\n", v, f);
                CHECK_RC(rc, FM_ENONCANON);
                fm_value val;
                CHECK_RC(fm_value_decode(enc, n, &val), FM_ENONCANON);
            }
        }
        CHECK_EQ_INT(accepted, 1);
        /* fm_value_encode is the packer too. */
        fm_buf vb;
        fm_buf_init(&vb);
        fm_value val = fm_value_int(v);
        CHECK_OK(fm_value_encode(&val, &vb));
        CHECK(vb.len == b.len && memcmp(vb.data, b.data, b.len) == 0);
        fm_buf_free(&vb);
        /* Unsigned reads: the same bytes for v >= 0, FM_EDECODE for negatives. */
        fm_rd r;
        uint64_t u;
        fm_rd_init(&r, b.data, b.len);
        if (v >= 0) {
            CHECK_OK(fm_rd_uint(&r, &u));
            CHECK(u == (uint64_t)v);
        } else {
            CHECK_RC(fm_rd_uint(&r, &u), FM_EDECODE);
        }
    }
    /* The packer's other entry points agree; its fixed-width ones are refused. */
    int64_t got;
    packer(&pk, &b);
    msgpack_pack_uint8(&pk, 5);
    CHECK(b.len == 1 && read_int(b.data, b.len, &got) == 0 && got == 5);
    packer(&pk, &b);
    msgpack_pack_int32(&pk, -1);
    CHECK(b.len == 1 && read_int(b.data, b.len, &got) == 0 && got == -1);
    packer(&pk, &b);
    msgpack_pack_uint32(&pk, 200);
    CHECK(b.len == 2 && read_int(b.data, b.len, &got) == 0 && got == 200);
    packer(&pk, &b);
    msgpack_pack_fix_uint16(&pk, 5);
    CHECK_RC(read_int(b.data, b.len, &got), FM_ENONCANON);
    packer(&pk, &b);
    msgpack_pack_fix_int64(&pk, -40000);
    CHECK_RC(read_int(b.data, b.len, &got), FM_ENONCANON);
    fm_buf_free(&b);
}

static void test_uint64_range(void)
{
    static const uint64_t vals[] = {UINT64_C(1) << 63, (UINT64_C(1) << 63) + 1, UINT64_MAX};
    fm_buf b;
    msgpack_packer pk;
    fm_buf_init(&b);
    for (size_t i = 0; i < FM_ARRAY_LEN(vals); i++) {
        uint8_t enc[9] = {0xcf};
        put_be(enc + 1, vals[i], 8);
        packer(&pk, &b);
        msgpack_pack_uint64(&pk, vals[i]);
        CHECK(b.len == 9 && memcmp(b.data, enc, 9) == 0);
        fm_rd r;
        uint64_t u;
        fm_rd_init(&r, enc, 9);
        CHECK_OK(fm_rd_uint(&r, &u));
        CHECK(u == vals[i]);
        CHECK_OK(fm_rd_end(&r));
        /* Beyond INT64_MAX: not an int64 (a limit, not a wrap to negative). */
        int64_t s;
        CHECK_RC(read_int(enc, 9, &s), FM_ELIMIT);
        fm_value v;
        CHECK_RC(fm_value_decode(enc, 9, &v), FM_ELIMIT);
    }
    /* Random values: the packer's output always reads back, with nothing left over. */
    uint64_t rng = 42;
    for (int i = 0; i < 20000; i++) {
        uint64_t x = fm_test_rand64(&rng);
        int64_t v = (int64_t)(x >> (x & 63)) * ((x & 64) ? -1 : 1), got;
        packer(&pk, &b);
        msgpack_pack_int64(&pk, v);
        if (read_int(b.data, b.len, &got) != 0 || got != v) {
            CHECK_EQ_INT(got, v);
            break;
        }
    }
    fm_buf_free(&b);
}

/* ---- str, bin, array headers --------------------------------------------------------------- */

enum { B_FIX, B_8, B_16, B_32 };

/* A header of kind (0 str, 1 bin, 2 array) for len in the given width; 0 if impossible. */
static size_t blob_header(int kind, int form, uint64_t len, uint8_t out[5])
{
    static const uint8_t tags[3][4] = {
        {0xa0, 0xd9, 0xda, 0xdb}, {0, 0xc4, 0xc5, 0xc6}, {0x90, 0, 0xdc, 0xdd}};
    static const uint64_t fixmax[3] = {31, 0, 15};
    static const int width[4] = {0, 1, 2, 4};
    if (!tags[kind][form])
        return 0;
    if (form == B_FIX) {
        if (len > fixmax[kind])
            return 0;
        out[0] = (uint8_t)(tags[kind][form] | len);
        return 1;
    }
    if (width[form] < 4 && len >> (8 * width[form]))
        return 0;
    out[0] = tags[kind][form];
    return 1 + put_be(out + 1, len, width[form]);
}

static int blob_canon(int kind, uint64_t len)
{
    if (kind == 0)
        return len < 32 ? B_FIX : len < 256 ? B_8 : len < 65536 ? B_16 : B_32;
    if (kind == 1)
        return len < 256 ? B_8 : len < 65536 ? B_16 : B_32;
    return len < 16 ? B_FIX : len < 65536 ? B_16 : B_32;
}

static int read_blob(int kind, const uint8_t *p, size_t n, uint32_t *len)
{
    fm_rd r;
    const uint8_t *body;
    fm_rd_init(&r, p, n);
    if (kind == 0)
        fm_rd_str(&r, &body, len, UINT32_MAX);
    else if (kind == 1)
        fm_rd_bin(&r, &body, len, UINT32_MAX);
    else if (!fm_rd_array(&r, len))
        r.p = r.end; /* the body is *len nils: skip it */
    return fm_rd_end(&r);
}

static void test_blob_forms(void)
{
    static const uint32_t lens[] = {0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000};
    fm_buf b, enc;
    msgpack_packer pk;
    fm_buf_init(&b);
    fm_buf_init(&enc);
    uint8_t *body = malloc(70000);
    for (int kind = 0; kind < 3; kind++) {
        /* Strings: ASCII; bins: bytes that are not UTF-8; arrays: nils. */
        memset(body, kind == 0 ? 'a' : kind == 1 ? 0xff : 0xc0, 70000);
        for (size_t i = 0; i < FM_ARRAY_LEN(lens); i++) {
            uint32_t len = lens[i], got = 0;
            int canon = blob_canon(kind, len), accepted = 0;
            packer(&pk, &b);
            if (kind == 0)
                msgpack_pack_str(&pk, len), msgpack_pack_str_body(&pk, body, len);
            else if (kind == 1)
                msgpack_pack_bin(&pk, len), msgpack_pack_bin_body(&pk, body, len);
            else
                msgpack_pack_array(&pk, len), fm_buf_append(&b, body, len);
            for (int f = B_FIX; f <= B_32; f++) {
                uint8_t h[5];
                size_t hn = blob_header(kind, f, len, h);
                if (!hn)
                    continue;
                fm_buf_reset(&enc);
                fm_buf_append(&enc, h, hn);
                fm_buf_append(&enc, body, len);
                int rc = read_blob(kind, enc.data, enc.len, &got);
                if (f == canon) {
                    CHECK_OK(rc);
                    CHECK_EQ_INT(got, len);
                    CHECK(b.len == enc.len && memcmp(b.data, enc.data, b.len) == 0);
                    accepted++;
                } else {
                    if (rc != FM_ENONCANON)
                        fprintf(stderr, "  kind %d len %u form %d\n", kind, len, f);
                    CHECK_RC(rc, FM_ENONCANON);
                }
            }
            CHECK_EQ_INT(accepted, 1);
        }
    }
    free(body);
    fm_buf_free(&b);
    fm_buf_free(&enc);
}

static void test_value_len_bound(void)
{
    fm_buf b;
    fm_buf_init(&b);
    uint8_t *s = malloc(FM_MAX_VALUE_LEN + 1);
    memset(s, 'v', FM_MAX_VALUE_LEN + 1);
    for (int bin = 0; bin < 2; bin++) {
        for (uint32_t len = FM_MAX_VALUE_LEN; len <= FM_MAX_VALUE_LEN + 1; len++) {
            fm_value v = {.type = bin ? FM_V_BIN : FM_V_STR, .u.s = {s, len}}, back;
            int want = len > FM_MAX_VALUE_LEN ? FM_ELIMIT : 0;
            CHECK_RC(fm_value_check(&v), want);
            fm_buf_reset(&b);
            CHECK_RC(fm_value_encode(&v, &b), want);
            if (want)
                CHECK_EQ_INT(b.len, 0);
            /* The reader enforces the bound on what others send. */
            fm_buf_reset(&b);
            fm_wr w;
            fm_wr_init(&w, &b);
            if (bin)
                fm_wr_bin(&w, s, len);
            else
                fm_wr_str(&w, s, len);
            CHECK_RC(fm_value_decode(b.data, b.len, &back), want);
            if (!want)
                CHECK(back.type == v.type && back.u.s.len == len);
        }
    }
    free(s);
    fm_buf_free(&b);
}

/* ---- scalars: floats, nil, bool, refused types ---------------------------------------------- */

static void test_floats(void)
{
    static const double vals[] = {0.0,          -0.0,     1.5,       -2.25,
                                  1e300,        -1e-300,  DBL_MIN,   DBL_MAX,
                                  DBL_TRUE_MIN, INFINITY, -INFINITY, 3.141592653589793};
    fm_buf b;
    msgpack_packer pk;
    fm_buf_init(&b);
    for (size_t i = 0; i < FM_ARRAY_LEN(vals); i++) {
        fm_value v = fm_value_float(vals[i]), back;
        fm_buf_reset(&b);
        CHECK_OK(fm_value_encode(&v, &b));
        CHECK_EQ_INT(b.len, 9);
        CHECK_EQ_INT(b.data[0], 0xcb);
        CHECK_OK(fm_value_decode(b.data, b.len, &back));
        CHECK_EQ_INT(back.type, FM_V_FLOAT);
        CHECK(memcmp(&back.u.f, &vals[i], sizeof(double)) == 0); /* bit-exact, -0.0 too */
    }
    /* float32 is refused, even for values float32 holds exactly. */
    packer(&pk, &b);
    msgpack_pack_float(&pk, 1.5f);
    CHECK_EQ_INT(b.data[0], 0xca);
    fm_value v;
    CHECK_RC(fm_value_decode(b.data, b.len, &v), FM_EDECODE);
    /* NaN: every payload and sign refused on read; refused on write. */
    static const uint64_t nans[] = {UINT64_C(0x7ff8000000000000), UINT64_C(0x7ff0000000000001),
                                    UINT64_C(0xfff8000000000000), UINT64_C(0x7fffffffffffffff),
                                    UINT64_C(0xffffffffffffffff)};
    for (size_t i = 0; i < FM_ARRAY_LEN(nans); i++) {
        uint8_t enc[9] = {0xcb};
        put_be(enc + 1, nans[i], 8);
        CHECK_RC(fm_value_decode(enc, 9, &v), FM_EDECODE);
    }
    fm_value nan = fm_value_float(NAN);
    fm_buf_reset(&b);
    CHECK_RC(fm_value_check(&nan), FM_EINVAL);
    CHECK_RC(fm_value_encode(&nan, &b), FM_EINVAL);
    CHECK_EQ_INT(b.len, 0);
    fm_buf_free(&b);
}

static void test_scalars_and_refused_types(void)
{
    fm_value v;
    CHECK_OK(fm_value_decode((const uint8_t *)"\xc0", 1, &v));
    CHECK_EQ_INT(v.type, FM_V_NIL);
    CHECK_OK(fm_value_decode((const uint8_t *)"\xc3", 1, &v));
    CHECK(v.type == FM_V_BOOL && v.u.b == 1);
    CHECK_OK(fm_value_decode((const uint8_t *)"\xc2", 1, &v));
    CHECK(v.type == FM_V_BOOL && v.u.b == 0);
    /* Not scalars of the data model: never-used, map, array, ext, fixext. */
    static const struct {
        uint8_t b[3];
        size_t n;
    } refused[] = {{{0xc1}, 1},       {{0x80}, 1},       {{0x90}, 1},       {{0xde, 0, 0}, 3},
                   {{0xdc, 0, 0}, 3}, {{0xd4, 1, 2}, 3}, {{0xc7, 0, 1}, 3}, {{0xd8, 0, 0}, 3}};
    for (size_t i = 0; i < FM_ARRAY_LEN(refused); i++)
        CHECK_RC(fm_value_decode(refused[i].b, refused[i].n, &v), FM_EDECODE);
    /* Round trips through fm_value_encode of each type. */
    fm_value vals[] = {
        fm_value_nil(),   fm_value_bool(1),      fm_value_bool(0),          fm_value_int(-129),
        fm_value_str(""), fm_value_str("héllo"), fm_value_bin("\0\1\2", 3), fm_value_bin(NULL, 0)};
    fm_buf b;
    fm_buf_init(&b);
    for (size_t i = 0; i < FM_ARRAY_LEN(vals); i++) {
        fm_buf_reset(&b);
        CHECK_OK(fm_value_encode(&vals[i], &b));
        CHECK_OK(fm_value_decode(b.data, b.len, &v));
        CHECK_EQ_INT(v.type, vals[i].type);
        if (v.type == FM_V_STR || v.type == FM_V_BIN)
            CHECK(v.u.s.len == vals[i].u.s.len &&
                  (!v.u.s.len || !memcmp(v.u.s.bytes, vals[i].u.s.bytes, v.u.s.len)));
    }
    /* Bad fm_value inputs. */
    fm_value bad = {.type = (fm_vtype)99};
    CHECK_RC(fm_value_check(&bad), FM_EINVAL);
    fm_value nullbytes = {.type = FM_V_STR, .u.s = {NULL, 3}};
    CHECK_RC(fm_value_check(&nullbytes), FM_EINVAL);
    fm_buf_free(&b);
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

static void test_utf8(void)
{
    static const char *good[] = {"",
                                 "a",
                                 "\x7f",
                                 "\xc2\x80",
                                 "\xc3\xa9",
                                 "\xdf\xbf",
                                 "\xe0\xa0\x80",
                                 "\xe2\x82\xac",
                                 "\xed\x9f\xbf",
                                 "\xee\x80\x80",
                                 "\xef\xbf\xbf",
                                 "\xf0\x90\x80\x80",
                                 "\xf0\x9d\x84\x9e",
                                 "\xf4\x8f\xbf\xbf"};
    static const char *bad[] = {
        "\x80",                 /* lone continuation */
        "\xbf",                 /* lone continuation */
        "\xc0\x80",             /* overlong NUL */
        "\xc1\xbf",             /* overlong */
        "\xe0\x80\x80",         /* overlong */
        "\xe0\x9f\xbf",         /* overlong */
        "\xf0\x8f\xbf\xbf",     /* overlong */
        "\xed\xa0\x80",         /* surrogate D800 */
        "\xed\xbf\xbf",         /* surrogate DFFF */
        "\xf4\x90\x80\x80",     /* > U+10FFFF */
        "\xf5\x80\x80\x80",     /* > U+10FFFF */
        "\xf8\x88\x80\x80\x80", /* 5-byte form */
        "\xfe",
        "\xff",
        "\xc3",         /* truncated */
        "\xe2\x82",     /* truncated */
        "\xf0\x9d\x84", /* truncated */
        "\xc3\x28",     /* bad continuation */
        "\xe2\x28\xa1", /* bad continuation */
        "a\xc3",        /* valid then truncated */
    };
    fm_buf b;
    fm_buf_init(&b);
    for (size_t i = 0; i < FM_ARRAY_LEN(good); i++) {
        fm_value v = fm_value_str(good[i]), back;
        CHECK(fm_utf8_valid((const uint8_t *)good[i], strlen(good[i])));
        fm_buf_reset(&b);
        CHECK_OK(fm_value_encode(&v, &b));
        CHECK_OK(fm_value_decode(b.data, b.len, &back));
    }
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++) {
        size_t n = strlen(bad[i]);
        if (fm_utf8_valid((const uint8_t *)bad[i], n))
            fprintf(stderr, "  accepted bad utf-8 #%zu\n", i);
        CHECK(!fm_utf8_valid((const uint8_t *)bad[i], n));
        fm_value v = fm_value_str(bad[i]), back;
        CHECK_RC(fm_value_check(&v), FM_EINVAL);
        /* As a msgpack str from a peer: refused. As bin: fine. */
        fm_buf_reset(&b);
        fm_wr w;
        fm_wr_init(&w, &b);
        fm_wr_str(&w, bad[i], n);
        CHECK_RC(fm_value_decode(b.data, b.len, &back), FM_EDECODE);
        fm_buf_reset(&b);
        fm_wr_init(&w, &b);
        fm_wr_bin(&w, bad[i], n);
        CHECK_OK(fm_value_decode(b.data, b.len, &back));
    }
    /* An embedded NUL is valid UTF-8 (names refuse it separately). */
    CHECK(fm_utf8_valid((const uint8_t *)"a\0b", 3));
    fm_buf_free(&b);
}

/* ---- truncation, trailing bytes, huge counts, stickiness ------------------------------------ */

static void test_truncation_and_trailing(void)
{
    fm_buf b;
    fm_buf_init(&b);
    char s40[41], s300[301];
    memset(s40, 'x', 40), s40[40] = 0;
    memset(s300, 'y', 300), s300[300] = 0;
    fm_value vals[] = {fm_value_nil(),
                       fm_value_bool(1),
                       fm_value_int(0),
                       fm_value_int(200),
                       fm_value_int(-200),
                       fm_value_int(70000),
                       fm_value_int(1ll << 40),
                       fm_value_int(INT64_MIN),
                       fm_value_float(2.5),
                       fm_value_str("abc"),
                       fm_value_str(s40),
                       fm_value_str(s300),
                       fm_value_str("\xe2\x82\xac\xe2\x82\xac"),
                       fm_value_bin("\1\2", 2),
                       fm_value_bin(s300, 300)};
    for (size_t i = 0; i < FM_ARRAY_LEN(vals); i++) {
        fm_value back;
        fm_buf_reset(&b);
        CHECK_OK(fm_value_encode(&vals[i], &b));
        for (size_t n = 0; n < b.len; n++) {
            int rc = fm_value_decode(b.data, n, &back);
            if (rc != FM_ETRUNC)
                fprintf(stderr, "  value #%zu cut at %zu of %zu\n", i, n, b.len);
            CHECK_RC(rc, FM_ETRUNC);
        }
        CHECK_OK(fm_value_decode(b.data, b.len, &back));
        fm_buf_putc(&b, 0xc0);
        CHECK_RC(fm_value_decode(b.data, b.len, &back), FM_EDECODE);
    }
    fm_buf_free(&b);
}

static void test_huge_counts(void)
{
    /* Counts far beyond the input: refused at the header, before anything is allocated (an
     * allocation of 2^32 elements would also abort an ASan build). */
    static const uint8_t arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    static const uint8_t arr16[] = {0xdc, 0xff, 0xff, 0xc0};
    static const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    static const uint8_t bin32[] = {0xc6, 0x7f, 0xff, 0xff, 0xff, 'a'};
    fm_rd r;
    uint32_t n;
    const uint8_t *p;
    fm_rd_init(&r, arr32, sizeof arr32);
    CHECK_RC(fm_rd_array(&r, &n), FM_ETRUNC);
    fm_rd_init(&r, arr16, sizeof arr16);
    CHECK_RC(fm_rd_array(&r, &n), FM_ETRUNC);
    fm_rd_init(&r, str32, sizeof str32);
    CHECK_RC(fm_rd_str(&r, &p, &n, UINT32_MAX), FM_ETRUNC);
    fm_rd_init(&r, bin32, sizeof bin32);
    CHECK_RC(fm_rd_bin(&r, &p, &n, UINT32_MAX), FM_ETRUNC);
    /* With a bound, the bound is reported first. */
    fm_rd_init(&r, str32, sizeof str32);
    CHECK_RC(fm_rd_str(&r, &p, &n, FM_MAX_VALUE_LEN), FM_ELIMIT);
    fm_value v;
    CHECK_RC(fm_value_decode(bin32, sizeof bin32, &v), FM_ELIMIT);
    /* Exactly as many bytes as claimed elements passes the header check. */
    uint8_t exact[5 + 16] = {0xdc, 0x00, 0x10};
    memset(exact + 3, 0xc0, 16);
    fm_rd_init(&r, exact, 3 + 16);
    CHECK_OK(fm_rd_array(&r, &n));
    CHECK_EQ_INT(n, 16);
    fm_rd_init(&r, exact, 3 + 15);
    CHECK_RC(fm_rd_array(&r, &n), FM_ETRUNC);
    /* Containers: version vector, through fm_vv_decode. */
    fm_vv vv;
    fm_vv_init(&vv);
    CHECK_RC(fm_vv_decode(arr32, sizeof arr32, &vv), FM_ETRUNC);
    CHECK_EQ_INT(vv.n, 0);
    fm_vv_free(&vv);
}

static void test_reader_misc(void)
{
    fm_rd r;
    uint32_t n;
    int64_t i;
    uint64_t u;
    uint8_t out[4];
    /* Errors stick: later reads return the first error and consume nothing. */
    static const uint8_t bad[] = {0xcc, 0x05, 0x01};
    fm_rd_init(&r, bad, sizeof bad);
    CHECK_RC(fm_rd_int(&r, &i), FM_ENONCANON);
    const uint8_t *at = r.p;
    CHECK_RC(fm_rd_int(&r, &i), FM_ENONCANON);
    CHECK_RC(fm_rd_array(&r, &n), FM_ENONCANON);
    CHECK_RC(fm_rd_nil(&r), FM_ENONCANON);
    CHECK_RC(fm_rd_end(&r), FM_ENONCANON);
    CHECK(r.p == at);
    /* nil: 1 consumed, 0 not nil (nothing consumed), ETRUNC at the end. */
    static const uint8_t nil_int[] = {0xc0, 0x07};
    fm_rd_init(&r, nil_int, 2);
    CHECK_EQ_INT(fm_rd_nil(&r), 1);
    CHECK_EQ_INT(fm_rd_nil(&r), 0);
    CHECK_OK(fm_rd_int(&r, &i));
    CHECK_EQ_INT(i, 7);
    CHECK_RC(fm_rd_nil(&r), FM_ETRUNC);
    /* Exact arrays. */
    static const uint8_t a2[] = {0x92, 0x01, 0x02};
    fm_rd_init(&r, a2, 3);
    CHECK_RC(fm_rd_array_exact(&r, 3), FM_EDECODE);
    fm_rd_init(&r, a2, 3);
    CHECK_OK(fm_rd_array_exact(&r, 2));
    CHECK_OK(fm_rd_uint(&r, &u));
    CHECK_OK(fm_rd_uint(&r, &u));
    CHECK_OK(fm_rd_end(&r));
    /* Fixed-size bins: shorter is malformed, longer past the limit, str is not bin. */
    static const uint8_t b3[] = {0xc4, 3, 1, 2, 3}, b5[] = {0xc4, 5, 1, 2, 3, 4, 5},
                         s4[] = {0xa4, 'a', 'b', 'c', 'd'}, b4[] = {0xc4, 4, 9, 8, 7, 6};
    fm_rd_init(&r, b3, sizeof b3);
    CHECK_RC(fm_rd_bin_fixed(&r, out, 4), FM_EDECODE);
    fm_rd_init(&r, b5, sizeof b5);
    CHECK_RC(fm_rd_bin_fixed(&r, out, 4), FM_ELIMIT);
    fm_rd_init(&r, s4, sizeof s4);
    CHECK_RC(fm_rd_bin_fixed(&r, out, 4), FM_EDECODE);
    fm_rd_init(&r, b4, sizeof b4);
    CHECK_OK(fm_rd_bin_fixed(&r, out, 4));
    CHECK_MEM(out, b4 + 2, 4);
    /* Type mismatches are malformed, not non-canonical. */
    fm_rd_init(&r, s4, sizeof s4);
    CHECK_RC(fm_rd_int(&r, &i), FM_EDECODE);
    fm_rd_init(&r, b4, sizeof b4);
    CHECK_RC(fm_rd_array(&r, &n), FM_EDECODE);
    const uint8_t *p;
    fm_rd_init(&r, b4, sizeof b4);
    CHECK_RC(fm_rd_str(&r, &p, &n, 100), FM_EDECODE);
    /* Empty input. */
    fm_rd_init(&r, NULL, 0);
    CHECK_RC(fm_rd_uint(&r, &u), FM_ETRUNC);
    fm_rd_init(&r, NULL, 0);
    CHECK_OK(fm_rd_end(&r));
}

/* ---- hybrid logical clock ------------------------------------------------------------------- */

#define T0 1700000000000ull

static void test_hlc_tick(void)
{
    uint64_t local = 0, prev = 0;
    /* Wall time moving forward, standing still, going back: always strictly increasing. */
    static const uint64_t walls[] = {T0,          T0,     T0,     T0 + 5, T0 + 5,   T0 + 1,
                                     T0 - 100000, T0 + 6, T0 + 6, 0,      T0 + 1000};
    for (size_t i = 0; i < FM_ARRAY_LEN(walls); i++) {
        uint64_t h = fm_hlc_tick(&local, walls[i]);
        CHECK(h > prev);
        CHECK(h == local);
        CHECK(fm_hlc_ms(h) >= walls[i] || walls[i] < fm_hlc_ms(prev));
        prev = h;
    }
    /* Logical counter: same ms counts up; a later ms resets it. */
    local = 0;
    uint64_t a = fm_hlc_tick(&local, T0), b = fm_hlc_tick(&local, T0);
    uint64_t c = fm_hlc_tick(&local, T0 - 1);
    CHECK_EQ_INT(fm_hlc_ms(a), T0);
    CHECK_EQ_INT(a & 0xffff, 0);
    CHECK_EQ_INT(b, a + 1);
    CHECK_EQ_INT(c, a + 2);
    CHECK_EQ_INT(fm_hlc_ms(c), T0);
    uint64_t d = fm_hlc_tick(&local, T0 + 1);
    CHECK_EQ_INT(fm_hlc_ms(d), T0 + 1);
    CHECK_EQ_INT(d & 0xffff, 0);
    /* A full counter rolls into the ms field and the order holds. */
    prev = local;
    for (int i = 0; i < 70000; i++) {
        uint64_t h = fm_hlc_tick(&local, T0 + 1);
        if (h <= prev) {
            CHECK(h > prev);
            break;
        }
        prev = h;
    }
    CHECK_EQ_INT(fm_hlc_ms(local), T0 + 2);
    CHECK_EQ_INT(local & 0xffff, 70000 - 65536);
    /* A wall clock past 48 bits is clamped, and ticks still increase. */
    local = 0;
    a = fm_hlc_tick(&local, UINT64_MAX);
    b = fm_hlc_tick(&local, UINT64_MAX);
    CHECK_EQ_INT(fm_hlc_ms(a), (UINT64_C(1) << 48) - 1);
    CHECK(b > a);
}

static void test_hlc_observe(void)
{
    const uint64_t skew = FM_HLC_DEFAULT_MAX_SKEW_MS;
    uint64_t local = 0;
    fm_hlc_tick(&local, T0);
    /* Behind us: nothing changes. */
    uint64_t before = local;
    CHECK(!fm_hlc_observe(&local, (T0 - 10) << 16, T0, skew));
    CHECK_EQ_INT(local, before);
    /* Ahead within the bound: adopted, and our next tick is after it. */
    uint64_t remote = ((T0 + 1000) << 16) | 7;
    CHECK(!fm_hlc_observe(&local, remote, T0, skew));
    CHECK_EQ_INT(local, remote);
    CHECK_EQ_INT(fm_hlc_tick(&local, T0), remote + 1);
    /* Exactly at the bound: adopted (any logical counter). */
    remote = ((T0 + skew) << 16) | 0xffff;
    CHECK(!fm_hlc_observe(&local, remote, T0, skew));
    CHECK_EQ_INT(local, remote);
    /* One ms past it: flagged, not adopted. */
    before = local;
    CHECK(fm_hlc_observe(&local, (T0 + skew + 1) << 16, T0, skew));
    CHECK_EQ_INT(local, before);
    /* Years ahead: flagged; our clock stays near the wall. */
    local = 0;
    fm_hlc_tick(&local, T0);
    CHECK(fm_hlc_observe(&local, (T0 + 3ull * 365 * 86400 * 1000) << 16, T0, skew));
    CHECK(fm_hlc_ms(fm_hlc_tick(&local, T0 + 1)) == T0 + 1);
    /* Zero skew: only timestamps not ahead of now. */
    CHECK(!fm_hlc_observe(&local, (T0 + 1) << 16, T0 + 1, 0));
    CHECK(fm_hlc_observe(&local, (T0 + 2) << 16, T0 + 1, 0));
}

/* ---- version vectors ------------------------------------------------------------------------ */

static void key(uint8_t out[FM_ID_BYTES], uint32_t i)
{
    memset(out, 0x11, FM_ID_BYTES);
    put_be(out, i, 4);
}

/* fm_id_cmp orders keys exactly as memcmp does: keys differing in the first eight bytes, in
 * the rest only, in one byte anywhere, and equal. */
/* A block recycled past its keep goes to the thread's spares, and the next buffer to grow past
 * FM_BUF_SPARE_MIN takes the smallest that fits, its bytes so far copied over. */
static void test_buf_spares(void)
{
    fm_buf_spares_release();
    fm_buf a, b, c;
    fm_buf_init(&a), fm_buf_init(&b), fm_buf_init(&c);
    CHECK(fm_buf_reserve(&a, 64 * 1024) == 0);
    CHECK(fm_buf_reserve(&b, 200 * 1024) == 0);
    uint8_t *pa = a.data, *pb = b.data;
    size_t ca = a.cap;
    fm_buf_recycle(&a, FM_BUF_SPARE_MIN);
    fm_buf_recycle(&b, FM_BUF_SPARE_MIN);
    CHECK(a.data == NULL && a.cap == 0 && b.data == NULL);
    /* Small growth stays with malloc; past the threshold it takes the 64 KB block. */
    for (int i = 0; i < 20000; i++)
        CHECK(fm_buf_putc(&c, (uint8_t)i) == 0);
    CHECK(c.data == pa && c.cap == ca && c.len == 20000);
    for (int i = 0; i < 20000; i++)
        CHECK(c.data[i] == (uint8_t)i);
    /* Too big for the other spare: realloc as before. */
    CHECK(fm_buf_reserve(&c, 300 * 1024) == 0);
    CHECK(c.data != pb && c.len == 20000 && c.data[19999] == (uint8_t)19999);
    CHECK(fm_buf_reserve(&a, 100 * 1024) == 0);
    CHECK(a.data == pb);
    /* A buffer within its keep keeps its block; an oversized one is freed, not cached. */
    fm_buf_recycle(&a, 1024 * 1024);
    CHECK(a.data == pb && a.len == 0);
    CHECK(fm_buf_reserve(&c, FM_BUF_SPARE_MAX) == 0);
    fm_buf_recycle(&c, 0);
    fm_buf_free(&a);
    fm_buf_spares_release();
}

static void test_id_cmp(void)
{
    uint64_t rng = 11;
    for (int it = 0; it < 20000; it++) {
        uint8_t a[FM_ID_BYTES], b[FM_ID_BYTES];
        for (int i = 0; i < FM_ID_BYTES; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            a[i] = (uint8_t)(rng >> 56);
            b[i] = (uint8_t)(rng >> 48);
        }
        if (it % 4 == 1)
            memcpy(b, a, 8); /* the rest decides */
        if (it % 4 == 2) {
            memcpy(b, a, sizeof b);
            b[(rng >> 8) % FM_ID_BYTES] ^= (uint8_t)(1u << ((rng >> 16) % 8));
        }
        if (it % 4 == 3)
            memcpy(b, a, sizeof b);
        int want = memcmp(a, b, FM_ID_BYTES), got = fm_id_cmp(a, b);
        CHECK((want < 0) == (got < 0) && (want > 0) == (got > 0));
    }
}

static void test_vv_basics(void)
{
    fm_vv a, b;
    fm_vv_init(&a);
    fm_vv_init(&b);
    uint8_t k1[32], k2[32], k3[32];
    key(k1, 1), key(k2, 2), key(k3, 3);
    CHECK_EQ_INT(fm_vv_get(&a, k1), 0);
    CHECK_OK(fm_vv_set(&a, k3, 5));
    CHECK_EQ_INT(a.cap, 1); /* most vectors name one author: room for one, then doubling */
    CHECK_OK(fm_vv_set(&a, k1, 2));
    CHECK_OK(fm_vv_set(&a, k2, 9));
    CHECK_EQ_INT(a.n, 3);
    CHECK(memcmp(a.e[0].author, k1, 32) == 0 && memcmp(a.e[2].author, k3, 32) == 0);
    CHECK_EQ_INT(fm_vv_get(&a, k2), 9);
    CHECK_EQ_INT(fm_vv_total(&a), 16);
    CHECK(fm_vv_covers(&a, k2, 9) && !fm_vv_covers(&a, k2, 10));
    CHECK_OK(fm_vv_set(&a, k2, 0)); /* removes */
    CHECK_EQ_INT(a.n, 2);
    CHECK_EQ_INT(fm_vv_get(&a, k2), 0);
    CHECK_OK(fm_vv_set(&a, k2, 0)); /* removing an absent entry is fine */
    CHECK_EQ_INT(a.n, 2);
    /* Merge: pointwise max. */
    CHECK_OK(fm_vv_set(&b, k1, 7));
    CHECK_OK(fm_vv_set(&b, k2, 1));
    CHECK_OK(fm_vv_set(&b, k3, 4));
    CHECK_OK(fm_vv_merge(&a, &b));
    CHECK_EQ_INT(fm_vv_get(&a, k1), 7);
    CHECK_EQ_INT(fm_vv_get(&a, k2), 1);
    CHECK_EQ_INT(fm_vv_get(&a, k3), 5);
    /* Raise: never lowers, adds an absent author, ignores 0. */
    CHECK_OK(fm_vv_raise(&a, k1, 3));
    CHECK_EQ_INT(fm_vv_get(&a, k1), 7);
    CHECK_OK(fm_vv_raise(&a, k1, 8));
    CHECK_EQ_INT(fm_vv_get(&a, k1), 8);
    uint8_t k4[32];
    key(k4, 4);
    CHECK_OK(fm_vv_raise(&a, k4, 0));
    CHECK_EQ_INT(a.n, 3);
    CHECK_OK(fm_vv_raise(&a, k4, 2));
    CHECK_EQ_INT(a.n, 4);
    CHECK(memcmp(a.e[3].author, k4, 32) == 0 && a.e[3].seq == 2);
    /* Hinted: a right hint, a wrong one, none, one past the end; all as without. */
    CHECK_EQ_INT(fm_vv_index(&a, k4), 3);
    CHECK_EQ_INT(fm_vv_index(&a, k2), 1);
    fm_vv_set(&b, k2, 0);
    CHECK_EQ_INT(fm_vv_index(&b, k2), UINT32_MAX);
    for (uint32_t h = 0; h <= 5; h++) {
        uint32_t hint = h == 5 ? UINT32_MAX : h;
        CHECK_EQ_INT(fm_vv_get_hinted(&a, k4, hint), 2);
        CHECK_EQ_INT(fm_vv_get_hinted(&a, k3, hint), 5);
        CHECK_EQ_INT(fm_vv_get_hinted(&b, k2, hint), 0);
    }
    CHECK_OK(fm_vv_raise_hinted(&a, k3, 4, 2)); /* right hint, lower seq: unchanged */
    CHECK_EQ_INT(fm_vv_get(&a, k3), 5);
    CHECK_OK(fm_vv_raise_hinted(&a, k3, 6, 0)); /* wrong hint */
    CHECK_EQ_INT(fm_vv_get(&a, k3), 6);
    CHECK_OK(fm_vv_raise_hinted(&b, k2, 3, 1)); /* absent: added in order */
    CHECK_EQ_INT(b.n, 3);
    CHECK(memcmp(b.e[1].author, k2, 32) == 0 && b.e[1].seq == 3);
    /* Raise at: the hint in, the author's index out (an insert's, none for a 0 not there). */
    uint32_t at = 0; /* wrong: k3 is at 2 */
    CHECK_OK(fm_vv_raise_at(&a, k3, 7, &at));
    CHECK_EQ_INT(at, 2);
    CHECK_EQ_INT(fm_vv_get(&a, k3), 7);
    CHECK_OK(fm_vv_raise_at(&a, k3, 6, &at)); /* right: unchanged, still there */
    CHECK_EQ_INT(at, 2);
    CHECK_EQ_INT(fm_vv_get(&a, k3), 7);
    at = UINT32_MAX;
    CHECK_OK(fm_vv_raise_at(&b, k4, 0, &at));
    CHECK_EQ_INT(at, UINT32_MAX);
    at = 0;
    CHECK_OK(fm_vv_raise_at(&b, k4, 9, &at)); /* absent: added at the end */
    CHECK_EQ_INT(at, b.n - 1);
    CHECK(at < b.n && memcmp(b.e[at].author, k4, 32) == 0 && b.e[at].seq == 9);
    CHECK_OK(fm_vv_set(&b, k4, 0));
    CHECK_OK(fm_vv_set(&b, k2, 1));
    CHECK_OK(fm_vv_set(&a, k3, 5));
    CHECK_OK(fm_vv_set(&a, k4, 0));
    CHECK_OK(fm_vv_set(&a, k1, 7));
    /* Copy, and digests of equal vectors. */
    fm_vv c;
    fm_vv_init(&c);
    CHECK_OK(fm_vv_copy(&c, &a));
    uint8_t d1[32], d2[32];
    CHECK_OK(fm_vv_digest(&a, d1));
    CHECK_OK(fm_vv_digest(&c, d2));
    CHECK_MEM(d1, d2, 32);
    CHECK_OK(fm_vv_set(&c, k3, 6));
    CHECK_OK(fm_vv_digest(&c, d2));
    CHECK(memcmp(d1, d2, 32) != 0);
    /* A digest is the hash of the encoding, however many chunks it is hashed in: empty, one
     * entry, and 1,000 (some 40 KB). */
    fm_vv big;
    fm_vv_init(&big);
    for (uint32_t n = 0; n <= 1000; n++) {
        if (n == 0 || n == 1 || n == 110 || n == 1000) {
            fm_buf enc;
            fm_buf_init(&enc);
            CHECK_OK(fm_vv_encode(&big, &enc));
            uint8_t want[32];
            crypto_generichash(want, sizeof want, enc.data, enc.len, NULL, 0);
            CHECK_OK(fm_vv_digest(&big, d1));
            CHECK_MEM(d1, want, 32);
            fm_buf_free(&enc);
        }
        uint8_t k[32] = {0};
        k[0] = (uint8_t)(n >> 8), k[1] = (uint8_t)n, k[31] = 0x5a;
        CHECK_OK(fm_vv_set(&big, k, 1000000007ull * (n + 1)));
    }
    fm_vv_free(&big);
    fm_vv_free(&a);
    fm_vv_free(&b);
    fm_vv_free(&c);
}

static void test_vv_compare(void)
{
    fm_vv a, b;
    fm_vv_init(&a);
    fm_vv_init(&b);
    uint8_t k1[32], k2[32], k3[32];
    key(k1, 1), key(k2, 2), key(k3, 3);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_EQUAL);
    fm_vv_set(&a, k1, 1);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_GREATER);
    CHECK_EQ_INT(fm_vv_compare(&b, &a), FM_VV_LESS);
    fm_vv_set(&b, k1, 1);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_EQUAL);
    fm_vv_set(&b, k2, 3);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_LESS);
    fm_vv_set(&a, k3, 1); /* a has k3, b has k2: each has something */
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_CONCURRENT);
    CHECK_EQ_INT(fm_vv_compare(&b, &a), FM_VV_CONCURRENT);
    /* Same authors, crossing seqs. */
    fm_vv_set(&a, k3, 0), fm_vv_set(&a, k2, 2), fm_vv_set(&a, k1, 5);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_CONCURRENT);
    fm_vv_set(&a, k2, 3);
    CHECK_EQ_INT(fm_vv_compare(&a, &b), FM_VV_GREATER);
    /* Property: compare agrees with pointwise comparison, and merge is an upper bound. */
    uint64_t rng = 7;
    for (int it = 0; it < 2000; it++) {
        fm_vv x, y, m;
        fm_vv_init(&x), fm_vv_init(&y), fm_vv_init(&m);
        bool xm = false, ym = false;
        /* Every other round a sparse x against a dense y (fm_vv_leq's binary-search path). */
        bool sparse = it % 2;
        for (uint32_t k = 0; k < (sparse ? 64u : 5u); k++) {
            uint8_t id[32];
            key(id, k);
            uint64_t sx = fm_test_rand64(&rng) % 3, sy = fm_test_rand64(&rng) % 3;
            if (sparse)
                sx = fm_test_rand64(&rng) % 32 == 0 ? sx : 0, sy += sx == 0;
            fm_vv_set(&x, id, sx), fm_vv_set(&y, id, sy);
            xm |= sx > sy, ym |= sy > sx;
        }
        fm_vv_order want =
            xm ? (ym ? FM_VV_CONCURRENT : FM_VV_GREATER) : (ym ? FM_VV_LESS : FM_VV_EQUAL);
        CHECK_EQ_INT(fm_vv_compare(&x, &y), want);
        CHECK(fm_vv_leq(&x, &y) == (want == FM_VV_EQUAL || want == FM_VV_LESS));
        CHECK(fm_vv_leq(&y, &x) == (want == FM_VV_EQUAL || want == FM_VV_GREATER));
        fm_vv_copy(&m, &x);
        fm_vv_merge(&m, &y);
        fm_vv_order mx = fm_vv_compare(&m, &x), my = fm_vv_compare(&m, &y);
        CHECK(mx == FM_VV_GREATER || mx == FM_VV_EQUAL);
        CHECK(my == FM_VV_GREATER || my == FM_VV_EQUAL);
        fm_vv_free(&x), fm_vv_free(&y), fm_vv_free(&m);
    }
    fm_vv_free(&a);
    fm_vv_free(&b);
}

/* Writes a vv encoding by hand: n entries with the given keys and seqs (no checks). */
static void vv_raw(fm_buf *out, uint32_t n, const uint32_t *ids, const uint64_t *seqs)
{
    fm_wr w;
    fm_buf_reset(out);
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), n);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t id[32];
        key(id, ids[i]);
        msgpack_pack_array(FM_PK(&w), 2);
        fm_wr_bin(&w, id, 32);
        msgpack_pack_uint64(FM_PK(&w), seqs[i]);
    }
}

static void test_vv_codec_strict(void)
{
    fm_buf b, b2;
    fm_vv v;
    fm_buf_init(&b);
    fm_buf_init(&b2);
    fm_vv_init(&v);
    /* Round trip, including the empty vector and large seqs. */
    uint32_t ids[] = {1, 2, 3};
    uint64_t seqs[] = {1, UINT64_MAX, 300};
    vv_raw(&b, 3, ids, seqs);
    CHECK_OK(fm_vv_decode(b.data, b.len, &v));
    CHECK_EQ_INT(v.n, 3);
    CHECK(fm_vv_get(&v, v.e[1].author) == UINT64_MAX);
    CHECK_OK(fm_vv_encode(&v, &b2));
    CHECK(b.len == b2.len && memcmp(b.data, b2.data, b.len) == 0);
    vv_raw(&b, 0, NULL, NULL);
    CHECK_OK(fm_vv_decode(b.data, b.len, &v));
    CHECK_EQ_INT(v.n, 0);
    /* Unsorted, duplicate, zero seq: refused, and v keeps its old content. */
    vv_raw(&b, 3, ids, seqs);
    CHECK_OK(fm_vv_decode(b.data, b.len, &v));
    uint32_t unsorted[] = {1, 3, 2}, dup[] = {1, 2, 2};
    uint64_t zero[] = {1, 0, 3};
    vv_raw(&b, 3, unsorted, seqs);
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_ENONCANON);
    vv_raw(&b, 3, dup, seqs);
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_ENONCANON);
    vv_raw(&b, 3, ids, zero);
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_ENONCANON);
    CHECK_EQ_INT(v.n, 3);
    CHECK(fm_vv_get(&v, v.e[1].author) == UINT64_MAX);
    /* Every truncation and a trailing byte. */
    vv_raw(&b, 3, ids, seqs);
    for (size_t n = 0; n < b.len; n++)
        CHECK_RC(fm_vv_decode(b.data, n, &v), FM_ETRUNC);
    fm_buf_putc(&b, 0x00);
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_EDECODE);
    /* Entry shapes: [author, seq] with a 32-byte bin and a uint. */
    static const uint8_t short_author[] = {0x91, 0x92, 0xc4, 0x01, 0xaa, 0x01};
    static const uint8_t three[] = {0x91, 0x93, 0xc4, 0x01, 0xaa, 0x01, 0x01};
    static const uint8_t neg_seq_tail[] = {0xff};
    CHECK_RC(fm_vv_decode(short_author, sizeof short_author, &v), FM_EDECODE);
    CHECK_RC(fm_vv_decode(three, sizeof three, &v), FM_EDECODE);
    vv_raw(&b, 1, ids, seqs);
    b.data[b.len - 1] = neg_seq_tail[0]; /* seq 1 -> -1 */
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_EDECODE);
    fm_vv_free(&v);
    fm_buf_free(&b);
    fm_buf_free(&b2);
}

static void test_vv_bound(void)
{
    uint32_t n = FM_MAX_VV_ENTRIES + 1;
    uint32_t *ids = malloc(n * sizeof *ids);
    uint64_t *seqs = malloc(n * sizeof *seqs);
    for (uint32_t i = 0; i < n; i++)
        ids[i] = i, seqs[i] = i + 1;
    fm_buf b;
    fm_vv v, s;
    fm_buf_init(&b);
    fm_vv_init(&v);
    fm_vv_init(&s);
    /* At the bound: decodes; past it: FM_ELIMIT. */
    vv_raw(&b, FM_MAX_VV_ENTRIES, ids, seqs);
    CHECK_OK(fm_vv_decode(b.data, b.len, &v));
    CHECK_EQ_INT(v.n, FM_MAX_VV_ENTRIES);
    vv_raw(&b, n, ids, seqs);
    CHECK_RC(fm_vv_decode(b.data, b.len, &v), FM_ELIMIT);
    CHECK_EQ_INT(v.n, FM_MAX_VV_ENTRIES);
    /* The claimed count alone is enough to refuse, whatever follows. */
    uint8_t hdr[3 + FM_MAX_VV_ENTRIES + 1] = {0xdc, (uint8_t)(n >> 8), (uint8_t)n};
    memset(hdr + 3, 0x90, n);
    CHECK_RC(fm_vv_decode(hdr, sizeof hdr, &v), FM_ELIMIT);
    /* fm_vv_set: the same bound; updating an existing entry at the bound is fine. */
    for (uint32_t i = 0; i < FM_MAX_VV_ENTRIES; i++) {
        uint8_t id[32];
        key(id, i);
        if (fm_vv_set(&s, id, 1)) {
            CHECK(0);
            break;
        }
    }
    uint8_t id[32];
    key(id, FM_MAX_VV_ENTRIES);
    CHECK_RC(fm_vv_set(&s, id, 1), FM_ELIMIT);
    CHECK_EQ_INT(s.n, FM_MAX_VV_ENTRIES);
    key(id, 5);
    CHECK_OK(fm_vv_set(&s, id, 99));
    CHECK_EQ_INT(fm_vv_get(&s, id), 99);
    CHECK_OK(fm_vv_raise(&s, id, 100)); /* raising an entry at the bound: fine */
    CHECK_EQ_INT(fm_vv_get(&s, id), 100);
    key(id, FM_MAX_VV_ENTRIES + 3);
    CHECK_RC(fm_vv_raise(&s, id, 1), FM_ELIMIT); /* adding one: refused, nothing changed */
    CHECK_EQ_INT(s.n, FM_MAX_VV_ENTRIES);
    CHECK_EQ_INT(fm_vv_get(&s, id), 0);
    /* Merge past the bound fails with FM_ELIMIT. */
    fm_vv extra;
    fm_vv_init(&extra);
    key(id, FM_MAX_VV_ENTRIES + 7);
    fm_vv_set(&extra, id, 1);
    CHECK_RC(fm_vv_merge(&s, &extra), FM_ELIMIT);
    fm_vv_free(&extra);
    free(ids);
    free(seqs);
    fm_vv_free(&v);
    fm_vv_free(&s);
    fm_buf_free(&b);
}

int main(void)
{
    RUN(test_int_forms);
    RUN(test_uint64_range);
    RUN(test_blob_forms);
    RUN(test_value_len_bound);
    RUN(test_floats);
    RUN(test_scalars_and_refused_types);
    RUN(test_utf8);
    RUN(test_truncation_and_trailing);
    RUN(test_huge_counts);
    RUN(test_reader_misc);
    RUN(test_hlc_tick);
    RUN(test_hlc_observe);
    RUN(test_buf_spares);
    RUN(test_id_cmp);
    RUN(test_vv_basics);
    RUN(test_vv_compare);
    RUN(test_vv_codec_strict);
    RUN(test_vv_bound);
    TEST_MAIN_END();
}
