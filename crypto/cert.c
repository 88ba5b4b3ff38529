/*
 * cert.c — device certificates, revocations, the membership view.
 *
 * Encoding (msgpack, smallest forms, fixed field order):
 *   certificate = [ [version, mesh_id bin32, device_id bin32, name str, perms, issued_at,
 *                    not_before, not_after], sig bin64 ]
 *   revocation  = [ [version, mesh_id bin32, device_id bin32, effective_ms, issued_at], sig bin64 ]
 * The signature covers the bytes of the inner array exactly as they appear in the encoding. The
 * decoder accepts only what the encoder produces (and asserts so by re-encoding), so a signed
 * record has one spelling and re-encoding a decoded record reproduces the signed bytes.
 */
#include "crypto/cert.h"

#include "crypto/sigcache.h"

#include "crypto/identity.h"

#include <msgpack.h>
#include <sodium.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum {
    CERT_FIELDS = 8,
    REV_FIELDS = 5,
    SIG_TAIL = 2 + FM_SIG_BYTES, /* bin8 header + signature, always last */
    B64_VARIANT = sodium_base64_VARIANT_URLSAFE_NO_PADDING,
};

/* ---- canonical writer ------------------------------------------------------------------------ */

/* A bounded output for msgpack_packer: overflow is remembered, not written. */
typedef struct wbuf {
    uint8_t *p;
    size_t cap;
    size_t len;
    bool overflow;
} wbuf;

static int wbuf_write(void *data, const char *buf, size_t len)
{
    wbuf *w = data;
    if (w->overflow || len > w->cap - w->len) {
        w->overflow = true;
        return -1;
    }
    memcpy(w->p + w->len, buf, len);
    w->len += len;
    return 0;
}

static void pack_bin(msgpack_packer *pk, const uint8_t *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

static bool perms_ok(uint32_t perms)
{
    return perms != 0 && (perms & ~(uint32_t)FM_PERM_ALL) == 0;
}

static bool name_ok(const char *name, size_t *len)
{
    *len = strnlen(name, FM_MAX_DEVICE_NAME + 1);
    return *len <= FM_MAX_DEVICE_NAME && fm_utf8_valid((const uint8_t *)name, *len);
}

static bool cert_fields_ok(const fm_cert *c)
{
    size_t nlen;
    return c->version == FM_CERT_VERSION && perms_ok(c->perms) && c->not_before <= c->not_after &&
           name_ok(c->name, &nlen);
}

int fm_cert_encode(const fm_cert *c, uint8_t *out, size_t *len)
{
    if (!cert_fields_ok(c))
        return FM_EINVAL;
    size_t nlen = strlen(c->name);
    wbuf w = {out, FM_MAX_CERT_BYTES, 0, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, wbuf_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, CERT_FIELDS);
    msgpack_pack_uint64(&pk, c->version);
    pack_bin(&pk, c->mesh_id, FM_ID_BYTES);
    pack_bin(&pk, c->device_id, FM_ID_BYTES);
    msgpack_pack_str_with_body(&pk, c->name, nlen);
    msgpack_pack_uint64(&pk, c->perms);
    msgpack_pack_uint64(&pk, c->issued_at);
    msgpack_pack_uint64(&pk, c->not_before);
    msgpack_pack_uint64(&pk, c->not_after);
    pack_bin(&pk, c->sig, FM_SIG_BYTES);
    FM_ASSERT(!w.overflow); /* FM_MAX_CERT_BYTES covers the largest certificate */
    *len = w.len;
    return 0;
}

int fm_revocation_encode(const fm_revocation *r, uint8_t *out, size_t *len)
{
    if (r->version != FM_CERT_VERSION)
        return FM_EINVAL;
    wbuf w = {out, FM_MAX_REVOCATION_BYTES, 0, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, wbuf_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, REV_FIELDS);
    msgpack_pack_uint64(&pk, r->version);
    pack_bin(&pk, r->mesh_id, FM_ID_BYTES);
    pack_bin(&pk, r->device_id, FM_ID_BYTES);
    msgpack_pack_uint64(&pk, r->effective_ms);
    msgpack_pack_uint64(&pk, r->issued_at);
    pack_bin(&pk, r->sig, FM_SIG_BYTES);
    FM_ASSERT(!w.overflow);
    *len = w.len;
    return 0;
}

/* ---- strict reader --------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t n;
    size_t off;
} rd;

static int rd_be(rd *r, size_t k, uint64_t *v)
{
    if (r->n - r->off < k)
        return FM_ETRUNC;
    uint64_t x = 0;
    for (size_t i = 0; i < k; i++)
        x = (x << 8) | r->p[r->off + i];
    r->off += k;
    *v = x;
    return 0;
}

static int rd_byte(rd *r, uint8_t *b)
{
    uint64_t v;
    int rc = rd_be(r, 1, &v);
    *b = (uint8_t)v;
    return rc;
}

/* An array header; fixarray is the only canonical form for our short arrays. */
static int rd_array(rd *r, uint64_t *count)
{
    uint8_t b;
    int rc = rd_byte(r, &b);
    if (rc)
        return rc;
    if ((b & 0xf0) == 0x90) {
        *count = b & 0x0f;
        return 0;
    }
    if (b != 0xdc && b != 0xdd)
        return FM_EDECODE;
    rc = rd_be(r, b == 0xdc ? 2 : 4, count);
    if (rc)
        return rc;
    return *count < (b == 0xdc ? 16u : 65536u) ? FM_ENONCANON : FM_EDECODE;
}

/* A non-negative integer in its smallest unsigned form; signed forms are a wrong type. */
static int rd_uint(rd *r, uint64_t *v)
{
    uint8_t b;
    int rc = rd_byte(r, &b);
    if (rc)
        return rc;
    if (b <= 0x7f) {
        *v = b;
        return 0;
    }
    if (b < 0xcc || b > 0xcf)
        return FM_EDECODE;
    size_t k = (size_t)1 << (b - 0xcc);
    rc = rd_be(r, k, v);
    if (rc)
        return rc;
    uint64_t min = k == 1 ? 0x80 : k == 2 ? 0x100 : k == 4 ? 0x10000 : 0x100000000ull;
    return *v < min ? FM_ENONCANON : 0;
}

/* Length header of a str (is_str) or bin; checks minimality. */
static int rd_len(rd *r, bool is_str, uint64_t *len)
{
    uint8_t b;
    int rc = rd_byte(r, &b);
    if (rc)
        return rc;
    if (is_str && (b & 0xe0) == 0xa0) {
        *len = b & 0x1f;
        return 0;
    }
    uint8_t first = is_str ? 0xd9 : 0xc4;
    if (b < first || b > first + 2)
        return FM_EDECODE;
    size_t k = (size_t)1 << (b - first);
    rc = rd_be(r, k, len);
    if (rc)
        return rc;
    uint64_t min = k == 1 ? (is_str ? 32 : 0) : k == 2 ? 0x100 : 0x10000;
    return *len < min ? FM_ENONCANON : 0;
}

static int rd_bin_exact(rd *r, uint8_t *out, size_t want)
{
    uint64_t len;
    int rc = rd_len(r, false, &len);
    if (rc)
        return rc;
    if (len != want)
        return FM_EDECODE;
    if (r->n - r->off < want)
        return FM_ETRUNC;
    memcpy(out, r->p + r->off, want);
    r->off += want;
    return 0;
}

/* A device name: UTF-8 without NUL, at most FM_MAX_DEVICE_NAME bytes; out is NUL-terminated. */
static int rd_name(rd *r, char out[FM_MAX_DEVICE_NAME + 1])
{
    uint64_t len;
    int rc = rd_len(r, true, &len);
    if (rc)
        return rc;
    if (len > FM_MAX_DEVICE_NAME)
        return FM_ELIMIT;
    if (r->n - r->off < len)
        return FM_ETRUNC;
    const uint8_t *s = r->p + r->off;
    if (!fm_utf8_valid(s, len) || memchr(s, 0, len))
        return FM_EDECODE;
    memcpy(out, s, len);
    out[len] = '\0';
    r->off += len;
    return 0;
}

/* Outer array and the inner header up to and including the version. */
static int rd_head(rd *r, uint64_t fields, uint8_t *version)
{
    uint64_t n, v;
    int rc = rd_array(r, &n);
    if (rc)
        return rc;
    if (n != 2)
        return FM_EDECODE;
    uint64_t inner;
    if ((rc = rd_array(r, &inner)) || (rc = rd_uint(r, &v)))
        return rc;
    if (v != FM_CERT_VERSION)
        return FM_EVERSION;
    *version = (uint8_t)v;
    return inner == fields ? 0 : FM_EDECODE;
}

static int rd_u32(rd *r, uint32_t *out)
{
    uint64_t v;
    int rc = rd_uint(r, &v);
    if (rc)
        return rc;
    if (v > UINT32_MAX)
        return FM_EDECODE;
    *out = (uint32_t)v;
    return 0;
}

static int cert_read(rd *r, fm_cert *c)
{
    int rc;
    if ((rc = rd_head(r, CERT_FIELDS, &c->version)) ||
        (rc = rd_bin_exact(r, c->mesh_id, FM_ID_BYTES)) ||
        (rc = rd_bin_exact(r, c->device_id, FM_ID_BYTES)) || (rc = rd_name(r, c->name)) ||
        (rc = rd_u32(r, &c->perms)) || (rc = rd_uint(r, &c->issued_at)) ||
        (rc = rd_uint(r, &c->not_before)) || (rc = rd_uint(r, &c->not_after)) ||
        (rc = rd_bin_exact(r, c->sig, FM_SIG_BYTES)))
        return rc;
    if (r->off != r->n)
        return FM_EDECODE; /* trailing bytes */
    return perms_ok(c->perms) && c->not_before <= c->not_after ? 0 : FM_EDECODE;
}

int fm_cert_decode(const uint8_t *in, size_t len, fm_cert *out)
{
    if (len > FM_MAX_CERT_BYTES)
        return FM_ELIMIT;
    fm_cert c;
    memset(&c, 0, sizeof c);
    rd r = {in, len, 0};
    int rc = cert_read(&r, &c);
    if (rc)
        return rc;
    /* Read-back: canonical input re-encodes to itself, or the decoder is too lenient. */
    uint8_t again[FM_MAX_CERT_BYTES];
    size_t alen;
    rc = fm_cert_encode(&c, again, &alen);
    FM_ASSERT(rc == 0 && alen == len && !memcmp(again, in, len));
    *out = c;
    return 0;
}

static int rev_read(rd *r, fm_revocation *v)
{
    int rc;
    if ((rc = rd_head(r, REV_FIELDS, &v->version)) ||
        (rc = rd_bin_exact(r, v->mesh_id, FM_ID_BYTES)) ||
        (rc = rd_bin_exact(r, v->device_id, FM_ID_BYTES)) || (rc = rd_uint(r, &v->effective_ms)) ||
        (rc = rd_uint(r, &v->issued_at)) || (rc = rd_bin_exact(r, v->sig, FM_SIG_BYTES)))
        return rc;
    return r->off == r->n ? 0 : FM_EDECODE;
}

int fm_revocation_decode(const uint8_t *in, size_t len, fm_revocation *out)
{
    if (len > FM_MAX_REVOCATION_BYTES)
        return FM_ELIMIT;
    fm_revocation v;
    memset(&v, 0, sizeof v);
    rd r = {in, len, 0};
    int rc = rev_read(&r, &v);
    if (rc)
        return rc;
    uint8_t again[FM_MAX_REVOCATION_BYTES];
    size_t alen;
    rc = fm_revocation_encode(&v, again, &alen);
    FM_ASSERT(rc == 0 && alen == len && !memcmp(again, in, len));
    *out = v;
    return 0;
}

/* ---- text form ------------------------------------------------------------------------------- */

static int to_text(const char *prefix, const uint8_t *bin, size_t len, char *out, size_t cap)
{
    size_t plen = strlen(prefix);
    size_t need = plen + sodium_base64_ENCODED_LEN(len, B64_VARIANT); /* includes the NUL */
    if (cap < need)
        return FM_ELIMIT;
    memcpy(out, prefix, plen);
    sodium_bin2base64(out + plen, cap - plen, bin, len, B64_VARIANT);
    return 0;
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Trims blanks, checks the prefix and decodes base64 into bin (cap bytes). The base64 must be the
 * one canonical spelling: the caller re-encodes and compares. */
static int from_text(const char *text, const char *prefix, uint8_t *bin, size_t cap, size_t *len,
                     const char **b64, size_t *b64len)
{
    size_t plen = strlen(prefix);
    size_t max_b64 = (cap * 4 + 2) / 3;
    while (is_blank(*text))
        text++;
    size_t n = strnlen(text, plen + max_b64 + 64);
    while (n > 0 && is_blank(text[n - 1]))
        n--;
    if (n < plen || memcmp(text, prefix, plen) != 0)
        return FM_EDECODE;
    if (n - plen > max_b64)
        return FM_ELIMIT;
    const char *end = NULL;
    *b64 = text + plen;
    *b64len = n - plen;
    if (sodium_base642bin(bin, cap, *b64, *b64len, NULL, len, &end, B64_VARIANT) != 0 ||
        end != *b64 + *b64len)
        return FM_EDECODE;
    return 0;
}

static int same_text(const char *b64, size_t b64len, const uint8_t *bin, size_t len)
{
    char again[FM_MAX_CERT_TEXT + 1];
    FM_ASSERT(sodium_base64_ENCODED_LEN(len, B64_VARIANT) <= sizeof again);
    sodium_bin2base64(again, sizeof again, bin, len, B64_VARIANT);
    return strlen(again) == b64len && !memcmp(again, b64, b64len) ? 0 : FM_ENONCANON;
}

int fm_cert_to_text(const fm_cert *c, char *out, size_t cap)
{
    uint8_t bin[FM_MAX_CERT_BYTES];
    size_t len;
    int rc = fm_cert_encode(c, bin, &len);
    return rc ? rc : to_text(FM_CERT_TEXT_PREFIX, bin, len, out, cap);
}

int fm_cert_from_text(const char *text, fm_cert *out)
{
    uint8_t bin[FM_MAX_CERT_BYTES];
    size_t len, b64len;
    const char *b64;
    int rc = from_text(text, FM_CERT_TEXT_PREFIX, bin, sizeof bin, &len, &b64, &b64len);
    if (!rc)
        rc = same_text(b64, b64len, bin, len);
    return rc ? rc : fm_cert_decode(bin, len, out);
}

int fm_revocation_to_text(const fm_revocation *r, char *out, size_t cap)
{
    uint8_t bin[FM_MAX_REVOCATION_BYTES];
    size_t len;
    int rc = fm_revocation_encode(r, bin, &len);
    return rc ? rc : to_text(FM_REVOCATION_TEXT_PREFIX, bin, len, out, cap);
}

int fm_revocation_from_text(const char *text, fm_revocation *out)
{
    uint8_t bin[FM_MAX_REVOCATION_BYTES];
    size_t len, b64len;
    const char *b64;
    int rc = from_text(text, FM_REVOCATION_TEXT_PREFIX, bin, sizeof bin, &len, &b64, &b64len);
    if (!rc)
        rc = same_text(b64, b64len, bin, len);
    return rc ? rc : fm_revocation_decode(bin, len, out);
}

/* ---- signing and verification ---------------------------------------------------------------- */

/* The signed body: the inner array, between the outer header byte and the signature. */
static const uint8_t *signed_body(const uint8_t *enc, size_t len, size_t *blen)
{
    FM_ASSERT(len > 1 + SIG_TAIL);
    *blen = len - 1 - SIG_TAIL;
    return enc + 1;
}

static int verify_encoded(const uint8_t mesh_id[FM_ID_BYTES], const char *domain,
                          const uint8_t *enc, size_t len, const uint8_t sig[FM_SIG_BYTES])
{
    size_t blen;
    const uint8_t *body = signed_body(enc, len, &blen);
    return fm_sig_verify(mesh_id, domain, body, blen, sig);
}

int fm_cert_verify_signature(const fm_cert *c, const uint8_t mesh_id[FM_ID_BYTES])
{
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len;
    if (fm_cert_encode(c, enc, &len) != 0)
        return FM_EDECODE;
    if (sodium_memcmp(c->mesh_id, mesh_id, FM_ID_BYTES) != 0)
        return FM_EMESH;
    return verify_encoded(mesh_id, FM_CERT_DOMAIN, enc, len, c->sig);
}

int fm_cert_check_time(const fm_cert *c, uint64_t now_ms)
{
    return now_ms >= c->not_before && now_ms < c->not_after ? 0 : FM_EEXPIRED;
}

int fm_cert_verify(const fm_cert *c, const uint8_t mesh_id[FM_ID_BYTES], uint64_t now_ms)
{
    int rc = fm_cert_verify_signature(c, mesh_id);
    return rc ? rc : fm_cert_check_time(c, now_ms);
}

bool fm_cert_is_for(const fm_cert *c, const uint8_t device_id[FM_ID_BYTES])
{
    return memcmp(c->device_id, device_id, FM_ID_BYTES) == 0;
}

int fm_cert_newer(const fm_cert *a, const fm_cert *b)
{
    FM_ASSERT(fm_cert_is_for(a, b->device_id));
    if (a->issued_at != b->issued_at)
        return a->issued_at > b->issued_at ? 1 : -1;
    uint8_t ea[FM_MAX_CERT_BYTES], eb[FM_MAX_CERT_BYTES];
    size_t la = 0, lb = 0;
    int ra = fm_cert_encode(a, ea, &la), rb = fm_cert_encode(b, eb, &lb);
    FM_ASSERT(ra == 0 && rb == 0);
    return fm_bytes_cmp(ea, la, eb, lb);
}

static int check_authority(const fm_identity *authority, const uint8_t mesh_id[FM_ID_BYTES])
{
    uint8_t pk[FM_ID_BYTES];
    fm_identity_public(authority, pk);
    return memcmp(pk, mesh_id, FM_ID_BYTES) == 0 ? 0 : FM_EMESH;
}

int fm_cert_issue(const fm_identity *authority, const uint8_t mesh_id[FM_ID_BYTES],
                  const uint8_t device_id[FM_ID_BYTES], const char *name, uint32_t perms,
                  uint64_t not_before, uint64_t not_after, uint64_t issued_at, fm_cert *out)
{
    size_t nlen = strnlen(name, FM_MAX_DEVICE_NAME + 1);
    if (nlen > FM_MAX_DEVICE_NAME)
        return FM_ELIMIT;
    if (!fm_utf8_valid((const uint8_t *)name, nlen))
        return FM_EDECODE;
    if (!perms_ok(perms) || not_before > not_after)
        return FM_EINVAL;
    int rc = check_authority(authority, mesh_id);
    if (rc)
        return rc;
    fm_cert c;
    memset(&c, 0, sizeof c);
    c.version = FM_CERT_VERSION;
    memcpy(c.mesh_id, mesh_id, FM_ID_BYTES);
    memcpy(c.device_id, device_id, FM_ID_BYTES);
    memcpy(c.name, name, nlen);
    c.perms = perms;
    c.issued_at = issued_at;
    c.not_before = not_before;
    c.not_after = not_after;
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len, blen;
    rc = fm_cert_encode(&c, enc, &len);
    FM_ASSERT(rc == 0);
    const uint8_t *body = signed_body(enc, len, &blen);
    fm_identity_sign(authority, FM_CERT_DOMAIN, body, blen, c.sig);
    rc = fm_cert_verify_signature(&c, mesh_id);
    FM_ASSERT(rc == 0); /* assert on write */
    *out = c;
    return 0;
}

int fm_revocation_issue(const fm_identity *authority, const uint8_t mesh_id[FM_ID_BYTES],
                        const uint8_t device_id[FM_ID_BYTES], uint64_t effective_ms,
                        uint64_t issued_at, fm_revocation *out)
{
    int rc = check_authority(authority, mesh_id);
    if (rc)
        return rc;
    fm_revocation v;
    memset(&v, 0, sizeof v);
    v.version = FM_CERT_VERSION;
    memcpy(v.mesh_id, mesh_id, FM_ID_BYTES);
    memcpy(v.device_id, device_id, FM_ID_BYTES);
    v.effective_ms = effective_ms;
    v.issued_at = issued_at;
    uint8_t enc[FM_MAX_REVOCATION_BYTES];
    size_t len, blen;
    rc = fm_revocation_encode(&v, enc, &len);
    FM_ASSERT(rc == 0);
    const uint8_t *body = signed_body(enc, len, &blen);
    fm_identity_sign(authority, FM_REVOCATION_DOMAIN, body, blen, v.sig);
    rc = fm_revocation_verify(&v, mesh_id);
    FM_ASSERT(rc == 0); /* assert on write */
    *out = v;
    return 0;
}

int fm_revocation_verify(const fm_revocation *r, const uint8_t mesh_id[FM_ID_BYTES])
{
    uint8_t enc[FM_MAX_REVOCATION_BYTES];
    size_t len;
    if (fm_revocation_encode(r, enc, &len) != 0)
        return FM_EDECODE;
    if (sodium_memcmp(r->mesh_id, mesh_id, FM_ID_BYTES) != 0)
        return FM_EMESH;
    return verify_encoded(mesh_id, FM_REVOCATION_DOMAIN, enc, len, r->sig);
}

/* ---- membership view ------------------------------------------------------------------------- */

struct fm_membership {
    uint8_t mesh_id[FM_ID_BYTES];
    fm_admit_policy policy;
    fm_cert *certs; /* sorted by device_id, one per device: the newest */
    size_t ncerts;
    size_t capcerts;
    /* cert_pre[i]: the first 8 bytes of certs[i].device_id, big-endian, which find_cert halves:
     * a node checks the author of every batch it takes, and halving the certificates (some
     * 250 bytes each) missed the caches at every probe (1.3 % of a 1000-node run). */
    uint64_t *cert_pre;
    size_t cappre;
    fm_revocation *revs; /* sorted by device_id, one per device: the earliest effective */
    size_t nrevs;
    size_t caprevs;
    fm_sigcache *cache; /* borrowed; NULL: none */
};

void fm_membership_set_sigcache(fm_membership *m, fm_sigcache *c)
{
    m->cache = c;
}

/* Verifies an authority-signed encoding of this view's mesh, through the cache if any. */
static int verify_cached(const fm_membership *m, const char *domain, const uint8_t *enc, size_t len,
                         const uint8_t sig[FM_SIG_BYTES])
{
    uint8_t key[FM_HASH_BYTES];
    crypto_generichash_state h;
    if (m->cache) {
        crypto_generichash_init(&h, NULL, 0, sizeof key);
        crypto_generichash_update(&h, m->mesh_id, FM_ID_BYTES);
        crypto_generichash_update(&h, (const uint8_t *)domain, strlen(domain) + 1);
        crypto_generichash_update(&h, enc, len);
        crypto_generichash_final(&h, key, sizeof key);
        if (fm_sigcache_has(m->cache, key))
            return 0;
    }
    int rc = verify_encoded(m->mesh_id, domain, enc, len, sig);
    if (!rc && m->cache)
        fm_sigcache_add(m->cache, key);
    return rc;
}

int fm_membership_cert_verify(const fm_membership *m, const fm_cert *c)
{
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len;
    if (fm_cert_encode(c, enc, &len) != 0)
        return FM_EDECODE;
    if (sodium_memcmp(c->mesh_id, m->mesh_id, FM_ID_BYTES) != 0)
        return FM_EMESH;
    return verify_cached(m, FM_CERT_DOMAIN, enc, len, c->sig);
}

static int member_rev_verify(const fm_membership *m, const fm_revocation *r)
{
    uint8_t enc[FM_MAX_REVOCATION_BYTES];
    size_t len;
    if (fm_revocation_encode(r, enc, &len) != 0)
        return FM_EDECODE;
    if (sodium_memcmp(r->mesh_id, m->mesh_id, FM_ID_BYTES) != 0)
        return FM_EMESH;
    return verify_cached(m, FM_REVOCATION_DOMAIN, enc, len, r->sig);
}

int fm_membership_new(const uint8_t mesh_id[FM_ID_BYTES], fm_admit_policy policy,
                      fm_membership **out)
{
    if (policy != FM_ADMIT_PRESENTED && policy != FM_ADMIT_INSTALLED)
        return FM_EINVAL;
    fm_membership *m = calloc(1, sizeof *m);
    if (!m)
        return FM_ENOMEM;
    memcpy(m->mesh_id, mesh_id, FM_ID_BYTES);
    m->policy = policy;
    *out = m;
    return 0;
}

void fm_membership_free(fm_membership *m)
{
    if (!m)
        return;
    free(m->certs);
    free(m->cert_pre);
    free(m->revs);
    free(m);
}

void fm_membership_mesh_id(const fm_membership *m, uint8_t out[FM_ID_BYTES])
{
    memcpy(out, m->mesh_id, FM_ID_BYTES);
}

/* Index of the first element whose device id (at byte offset off) is >= id. */
static size_t lower_bound(const void *base, size_t n, size_t stride, size_t off,
                          const uint8_t id[FM_ID_BYTES])
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint8_t *key = (const uint8_t *)base + mid * stride + off;
        if (fm_id_cmp(key, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Makes room for one more element at index i of a sorted array. */
static int insert_slot(void **base, size_t *n, size_t *cap, size_t stride, size_t max, size_t i)
{
    if (*n >= max)
        return FM_ELIMIT;
    if (*n == *cap) {
        size_t ncap = *cap ? FM_MIN(*cap * 2, max) : 16;
        void *p = fm_reallocarray(*base, ncap, stride);
        if (!p)
            return FM_ENOMEM;
        *base = p;
        *cap = ncap;
    }
    uint8_t *b = *base;
    memmove(b + (i + 1) * stride, b + i * stride, (*n - i) * stride);
    (*n)++;
    return 0;
}

static uint64_t id_prefix(const uint8_t id[FM_ID_BYTES])
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | id[i];
    return x;
}

static fm_cert *find_cert(const fm_membership *m, const uint8_t id[FM_ID_BYTES], size_t *pos)
{
    uint64_t p = id_prefix(id);
    size_t i = 0, hi = m->ncerts;
    while (i < hi) {
        size_t mid = i + (hi - i) / 2;
        if (m->cert_pre[mid] < p)
            i = mid + 1;
        else
            hi = mid;
    }
    while (i < m->ncerts && m->cert_pre[i] == p && fm_id_cmp(m->certs[i].device_id, id) < 0)
        i++; /* ids that share the 8 bytes, in full order */
    if (pos)
        *pos = i;
    return i < m->ncerts && fm_cert_is_for(&m->certs[i], id) ? &m->certs[i] : NULL;
}

static const fm_revocation *find_rev(const fm_membership *m, const uint8_t id[FM_ID_BYTES],
                                     size_t *pos)
{
    size_t i = lower_bound(m->revs, m->nrevs, sizeof(fm_revocation),
                           offsetof(fm_revocation, device_id), id);
    if (pos)
        *pos = i;
    bool hit = i < m->nrevs && !memcmp(m->revs[i].device_id, id, FM_ID_BYTES);
    return hit ? &m->revs[i] : NULL;
}

int fm_membership_add_cert(fm_membership *m, const fm_cert *c)
{
    int rc = fm_membership_cert_verify(m, c);
    if (rc)
        return rc;
    size_t i;
    fm_cert *have = find_cert(m, c->device_id, &i);
    if (have) {
        if (fm_cert_newer(c, have) > 0)
            *have = *c;
        return 0;
    }
    if (m->ncerts == m->cappre && m->ncerts < FM_MAX_MEMBERS) {
        size_t ncap = m->cappre ? FM_MIN(m->cappre * 2, (size_t)FM_MAX_MEMBERS) : 16;
        uint64_t *pre = fm_reallocarray(m->cert_pre, ncap, sizeof *pre);
        if (!pre)
            return FM_ENOMEM;
        m->cert_pre = pre;
        m->cappre = ncap;
    }
    void *base = m->certs;
    rc = insert_slot(&base, &m->ncerts, &m->capcerts, sizeof(fm_cert), FM_MAX_MEMBERS, i);
    m->certs = base;
    if (rc)
        return rc;
    m->certs[i] = *c;
    memmove(&m->cert_pre[i + 1], &m->cert_pre[i], (m->ncerts - 1 - i) * sizeof *m->cert_pre);
    m->cert_pre[i] = id_prefix(c->device_id);
    return 0;
}

int fm_membership_add_revocation(fm_membership *m, const fm_revocation *r)
{
    int rc = member_rev_verify(m, r);
    if (rc)
        return rc;
    size_t i;
    const fm_revocation *have = find_rev(m, r->device_id, &i);
    if (have) {
        if (r->effective_ms < have->effective_ms)
            m->revs[i] = *r;
        return 0;
    }
    void *base = m->revs;
    rc = insert_slot(&base, &m->nrevs, &m->caprevs, sizeof(fm_revocation), FM_MAX_REVOCATIONS, i);
    m->revs = base;
    if (rc)
        return rc;
    m->revs[i] = *r;
    return 0;
}

static bool is_revoked(const fm_membership *m, const uint8_t id[FM_ID_BYTES], uint64_t now_ms)
{
    const fm_revocation *r = find_rev(m, id, NULL);
    return r && now_ms >= r->effective_ms;
}

/* The governing certificate of a device admitted at now_ms (*out), or why it is not. */
static int check_member(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES],
                        uint64_t now_ms, const fm_cert **out)
{
    if (is_revoked(m, device_id, now_ms))
        return FM_EREVOKED;
    const fm_cert *c = find_cert(m, device_id, NULL);
    if (!c)
        return FM_EUNKNOWN_DEVICE;
    *out = c;
    return fm_cert_check_time(c, now_ms);
}

int fm_membership_check(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES],
                        uint64_t now_ms)
{
    const fm_cert *c;
    return check_member(m, device_id, now_ms, &c);
}

int fm_membership_check_cert(const fm_membership *m, const fm_cert *presented, uint64_t now_ms,
                             fm_cert *effective)
{
    int rc = fm_membership_cert_verify(m, presented);
    if (rc)
        return rc;
    if (is_revoked(m, presented->device_id, now_ms))
        return FM_EREVOKED;
    const fm_cert *have = find_cert(m, presented->device_id, NULL);
    if (!have && m->policy == FM_ADMIT_INSTALLED)
        return FM_EUNKNOWN_DEVICE;
    const fm_cert *gov = have && fm_cert_newer(have, presented) > 0 ? have : presented;
    rc = fm_cert_check_time(gov, now_ms);
    if (rc)
        return rc;
    if (effective)
        *effective = *gov;
    return 0;
}

int fm_membership_perms(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES],
                        uint64_t now_ms, uint32_t *perms)
{
    const fm_cert *c;
    int rc = check_member(m, device_id, now_ms, &c);
    *perms = rc ? 0 : c->perms;
    return rc;
}

const fm_cert *fm_membership_cert(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES])
{
    return find_cert(m, device_id, NULL);
}

const fm_revocation *fm_membership_revocation(const fm_membership *m,
                                              const uint8_t device_id[FM_ID_BYTES])
{
    return find_rev(m, device_id, NULL);
}
