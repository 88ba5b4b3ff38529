#include "crypto/cert.h"
#include "crypto/identity.h"
#include "fm_test.h"

#include <sodium.h>

#ifndef FM_VECTORS_DIR
#define FM_VECTORS_DIR "tests/vectors"
#endif

enum { DAY_MS = 86400 * 1000 };
static const uint64_t NOW = 1700000000000ull;

typedef struct fixture {
    fm_identity *auth, *a, *b;
    uint8_t mesh[32], ida[32], idb[32];
} fixture;

static void fixture_init(fixture *f)
{
    uint8_t seed[32];
    memset(seed, 0xa1, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &f->auth));
    memset(seed, 0xa2, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &f->a));
    memset(seed, 0xa3, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &f->b));
    fm_identity_public(f->auth, f->mesh);
    fm_identity_public(f->a, f->ida);
    fm_identity_public(f->b, f->idb);
}

static void fixture_free(fixture *f)
{
    fm_identity_free(f->auth);
    fm_identity_free(f->a);
    fm_identity_free(f->b);
}

static fm_cert issue(const fixture *f, const uint8_t id[32], const char *name, uint32_t perms,
                     uint64_t nb, uint64_t na, uint64_t issued)
{
    fm_cert c;
    memset(&c, 0, sizeof c);
    CHECK_OK(fm_cert_issue(f->auth, f->mesh, id, name, perms, nb, na, issued, &c));
    return c;
}

static void test_issue_verify_roundtrip(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "tablet 3 \xc3\xbc", FM_PERM_ALL, NOW - 1000, NOW + DAY_MS, NOW);
    CHECK_OK(fm_cert_verify(&c, f.mesh, NOW));
    CHECK(fm_cert_is_for(&c, f.ida));
    CHECK_STR(c.name, "tablet 3 \xc3\xbc");
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len;
    CHECK_OK(fm_cert_encode(&c, enc, &len));
    fm_cert d;
    CHECK_OK(fm_cert_decode(enc, len, &d));
    CHECK_MEM(&c, &d, sizeof c);
    char text[FM_MAX_CERT_TEXT + 1];
    CHECK_OK(fm_cert_to_text(&c, text, sizeof text));
    CHECK(strncmp(text, "fmcert1:", 8) == 0);
    CHECK(strchr(text, '=') == NULL && strchr(text, '\n') == NULL);
    memset(&d, 0, sizeof d);
    CHECK_OK(fm_cert_from_text(text, &d));
    CHECK_MEM(&c, &d, sizeof c);
    char padded[FM_MAX_CERT_TEXT + 8];
    snprintf(padded, sizeof padded, "  %s\r\n", text);
    CHECK_OK(fm_cert_from_text(padded, &d));
    CHECK_MEM(&c, &d, sizeof c);
    CHECK_RC(fm_cert_to_text(&c, text, 20), FM_ELIMIT);
    /* the authority's own certificate */
    fm_cert self = issue(&f, f.mesh, "authority", FM_PERM_ALL, 0, UINT64_MAX, NOW);
    CHECK_OK(fm_cert_verify(&self, f.mesh, NOW));
    /* a read-only device */
    fm_cert ro = issue(&f, f.idb, "", FM_PERM_READ, NOW, NOW + 1, NOW);
    CHECK_OK(fm_cert_verify(&ro, f.mesh, NOW));
    CHECK_EQ_INT(ro.perms, FM_PERM_READ);
    fixture_free(&f);
}

static void test_issue_rejects(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c;
    char long_name[FM_MAX_DEVICE_NAME + 2];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[FM_MAX_DEVICE_NAME + 1] = '\0';
    CHECK_RC(fm_cert_issue(f.auth, f.mesh, f.ida, long_name, 1, 0, 1, 0, &c), FM_ELIMIT);
    long_name[FM_MAX_DEVICE_NAME] = '\0'; /* exactly at the bound */
    CHECK_OK(
        fm_cert_issue(f.auth, f.mesh, f.ida, long_name, 1, 1ull << 40, 1ull << 41, 1ull << 42, &c));
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len;
    CHECK_OK(fm_cert_encode(&c, enc, &len));
    CHECK_EQ_INT(len, 231); /* the largest certificate */
    CHECK_RC(fm_cert_issue(f.auth, f.mesh, f.ida, "\xff", 1, 0, 1, 0, &c), FM_EDECODE);
    CHECK_RC(fm_cert_issue(f.auth, f.mesh, f.ida, "x", 0, 0, 1, 0, &c), FM_EINVAL);
    CHECK_RC(fm_cert_issue(f.auth, f.mesh, f.ida, "x", 4, 0, 1, 0, &c), FM_EINVAL);
    CHECK_RC(fm_cert_issue(f.auth, f.mesh, f.ida, "x", 1, 2, 1, 0, &c), FM_EINVAL);
    /* only the mesh authority can issue for its mesh */
    CHECK_RC(fm_cert_issue(f.a, f.mesh, f.ida, "x", 1, 0, 1, 0, &c), FM_EMESH);
    fixture_free(&f);
}

static void test_wrong_mesh_and_bad_signature(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW);
    CHECK_RC(fm_cert_verify(&c, f.ida, NOW), FM_EMESH);
    fm_cert t = c;
    t.sig[7] ^= 1;
    CHECK_RC(fm_cert_verify(&t, f.mesh, NOW), FM_ESIG);
    t = c;
    t.perms = FM_PERM_READ; /* altered field */
    CHECK_RC(fm_cert_verify(&t, f.mesh, NOW), FM_ESIG);
    t = c;
    t.not_after += 1;
    CHECK_RC(fm_cert_verify(&t, f.mesh, NOW), FM_ESIG);
    t = c;
    memcpy(t.device_id, f.idb, 32); /* moved to another device */
    CHECK_RC(fm_cert_verify(&t, f.mesh, NOW), FM_ESIG);
    /* a device that signs a certificate claiming the mesh */
    fm_cert rogue;
    CHECK_OK(fm_cert_issue(f.b, f.idb, f.idb, "rogue", FM_PERM_ALL, 0, UINT64_MAX, NOW, &rogue));
    memcpy(rogue.mesh_id, f.mesh, 32);
    CHECK_RC(fm_cert_verify(&rogue, f.mesh, NOW), FM_ESIG);
    /* an unencodable struct */
    t = c;
    t.version = 9;
    CHECK_RC(fm_cert_verify(&t, f.mesh, NOW), FM_EDECODE);
    fixture_free(&f);
}

static void test_validity_window(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + 1000, NOW);
    CHECK_RC(fm_cert_verify(&c, f.mesh, NOW - 1), FM_EEXPIRED);
    CHECK_OK(fm_cert_verify(&c, f.mesh, NOW));
    CHECK_OK(fm_cert_verify(&c, f.mesh, NOW + 999));
    CHECK_RC(fm_cert_verify(&c, f.mesh, NOW + 1000), FM_EEXPIRED);
    CHECK_RC(fm_cert_check_time(&c, UINT64_MAX), FM_EEXPIRED);
    fixture_free(&f);
}

static void test_not_for_this_device(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + 1000, NOW);
    CHECK(fm_cert_is_for(&c, f.ida));
    CHECK(!fm_cert_is_for(&c, f.idb));
    CHECK(!fm_cert_is_for(&c, f.mesh));
    fixture_free(&f);
}

/* Replaces enc[off, off+del) by ins. */
static size_t splice(const uint8_t *enc, size_t len, size_t off, size_t del, const void *ins,
                     size_t ilen, uint8_t *out)
{
    memcpy(out, enc, off);
    memcpy(out + off, ins, ilen);
    memcpy(out + off + ilen, enc + off + del, len - off - del);
    return len - del + ilen;
}

typedef struct edit {
    const char *what;
    size_t off, del;
    const char *ins;
    size_t ilen;
    int want;
} edit;

/* Layout of a certificate named "tab": 0 outer, 1 inner, 2 version, 3 mesh (c4 20 ..),
 * 37 device, 71 name (a3 "tab"), 75 perms, 76 issued_at (cf ...), 85 not_before, 94 not_after,
 * 103 sig (c4 40 ...), 169 end. */
static const edit CERT_EDITS[] = {
    {"outer array of 3", 0, 1, "\x93", 1, FM_EDECODE},
    {"outer array16", 0, 1, "\xdc\x00\x02", 3, FM_ENONCANON},
    {"outer map", 0, 1, "\x82", 1, FM_EDECODE},
    {"inner array16", 1, 1, "\xdc\x00\x08", 3, FM_ENONCANON},
    {"inner array of 7", 1, 1, "\x97", 1, FM_EDECODE},
    {"version uint8", 2, 1, "\xcc\x01", 2, FM_ENONCANON},
    {"version 2", 2, 1, "\x02", 1, FM_EVERSION},
    {"version as int8", 2, 1, "\xd0\x01", 2, FM_EDECODE},
    {"mesh bin16", 3, 2, "\xc5\x00\x20", 3, FM_ENONCANON},
    {"mesh as str", 3, 2, "\xd9\x20", 2, FM_EDECODE},
    {"mesh 31 bytes", 3, 3, "\xc4\x1f", 2, FM_EDECODE},
    {"name str8", 71, 1, "\xd9\x03", 2, FM_ENONCANON},
    {"name str16", 71, 1, "\xda\x00\x03", 3, FM_ENONCANON},
    {"name as bin", 71, 1, "\xc4\x03", 2, FM_EDECODE},
    {"name bad utf-8", 72, 1, "\xff", 1, FM_EDECODE},
    {"name overlong utf-8", 71, 4, "\xa3\xc0\xafx", 4, FM_EDECODE},
    {"name with NUL", 72, 1, "\x00", 1, FM_EDECODE},
    {"name too long", 71, 4, "\xd9\x41", 2, FM_ELIMIT},
    {"perms uint8", 75, 1, "\xcc\x03", 2, FM_ENONCANON},
    {"perms zero", 75, 1, "\x00", 1, FM_EDECODE},
    {"perms unknown bit", 75, 1, "\x07", 1, FM_EDECODE},
    {"perms negative", 75, 1, "\xff", 1, FM_EDECODE},
    {"perms nil", 75, 1, "\xc0", 1, FM_EDECODE},
    {"issued_at uint64 small", 76, 9, "\xcf\x00\x00\x00\x00\x00\x00\x00\x05", 9, FM_ENONCANON},
    {"issued_at uint32 small", 76, 9, "\xce\x00\x00\xff\xff", 5, FM_ENONCANON},
    {"issued_at uint16 small", 76, 9, "\xcd\x00\xff", 3, FM_ENONCANON},
    {"issued_at float", 76, 9, "\xcb\x00\x00\x00\x00\x00\x00\x00\x00", 9, FM_EDECODE},
    {"not_before > not_after", 85, 9, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, FM_EDECODE},
    {"sig 63 bytes", 103, 2, "\xc4\x3f", 2, FM_EDECODE},
    {"trailing byte", 169, 0, "\x00", 1, FM_EDECODE},
};

static void test_malformed(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "tab", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW);
    uint8_t enc[FM_MAX_CERT_BYTES], bad[FM_MAX_CERT_BYTES + 80];
    size_t len;
    CHECK_OK(fm_cert_encode(&c, enc, &len));
    CHECK_EQ_INT(len, 169);
    CHECK_EQ_INT(enc[75], FM_PERM_ALL);
    CHECK_EQ_INT(enc[76], 0xcf);
    fm_cert d;
    for (size_t i = 0; i < FM_ARRAY_LEN(CERT_EDITS); i++) {
        const edit *e = &CERT_EDITS[i];
        size_t n = splice(enc, len, e->off, e->del, e->ins, e->ilen, bad);
        int rc = fm_cert_decode(bad, n, &d);
        if (rc != e->want)
            fprintf(stderr, "  edit: %s\n", e->what);
        CHECK_RC(rc, e->want);
    }
    for (size_t n = 0; n < len; n++) /* every truncation */
        CHECK_RC(fm_cert_decode(enc, n, &d), FM_ETRUNC);
    memset(bad, 0x90, sizeof bad);
    CHECK_RC(fm_cert_decode(bad, FM_MAX_CERT_BYTES + 1, &d), FM_ELIMIT);
    /* the decoder never accepts a spelling the encoder would not produce (it asserts so) */
    uint64_t rng = 7;
    int accepted = 0;
    for (int i = 0; i < 20000; i++) {
        memcpy(bad, enc, len);
        bad[fm_test_rand64(&rng) % len] ^= (uint8_t)(1u << (fm_test_rand64(&rng) % 8));
        accepted += fm_cert_decode(bad, len, &d) == 0;
    }
    CHECK(accepted > 0); /* flips in keys, name and signature still decode */
    fixture_free(&f);
}

static void test_text_malformed(void)
{
    fixture f;
    fixture_init(&f);
    fm_cert c = issue(&f, f.ida, "tab", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW);
    char text[FM_MAX_CERT_TEXT + 1], bad[FM_MAX_CERT_TEXT + 64];
    fm_cert d;
    CHECK_OK(fm_cert_to_text(&c, text, sizeof text));
    size_t n = strlen(text);
    CHECK_RC(fm_cert_from_text("", &d), FM_EDECODE);
    CHECK_RC(fm_cert_from_text("fmcert1:", &d), FM_ETRUNC);
    CHECK_RC(fm_cert_from_text(text + 1, &d), FM_EDECODE); /* prefix */
    snprintf(bad, sizeof bad, "fmrev1:%s", text + 8);
    CHECK_RC(fm_cert_from_text(bad, &d), FM_EDECODE);
    snprintf(bad, sizeof bad, "%s=", text);
    CHECK_RC(fm_cert_from_text(bad, &d), FM_EDECODE); /* padding */
    memcpy(bad, text, n + 1);
    bad[20] = '+'; /* standard alphabet, not url-safe */
    CHECK_RC(fm_cert_from_text(bad, &d), FM_EDECODE);
    memcpy(bad, text, n + 1);
    bad[20] = ' ';
    CHECK_RC(fm_cert_from_text(bad, &d), FM_EDECODE);
    memcpy(bad, text, n - 1); /* drop a character */
    bad[n - 1] = '\0';
    CHECK(fm_cert_from_text(bad, &d) < 0);
    /* 169 bytes = 56 groups + 1 byte: the last char carries 4 spare bits that must be zero */
    memcpy(bad, text, n + 1);
    bad[n - 1]++; /* A Q g w -> B R h x */
    CHECK(fm_cert_from_text(bad, &d) < 0);
    memset(bad, 'A', sizeof bad - 1);
    memcpy(bad, "fmcert1:", 8);
    bad[sizeof bad - 1] = '\0';
    CHECK_RC(fm_cert_from_text(bad, &d), FM_ELIMIT);
    fixture_free(&f);
}

static void test_revocation(void)
{
    fixture f;
    fixture_init(&f);
    fm_revocation r, d;
    CHECK_OK(fm_revocation_issue(f.auth, f.mesh, f.ida, NOW + 5, NOW, &r));
    CHECK_OK(fm_revocation_verify(&r, f.mesh));
    CHECK_RC(fm_revocation_verify(&r, f.idb), FM_EMESH);
    uint8_t enc[FM_MAX_REVOCATION_BYTES];
    size_t len;
    CHECK_OK(fm_revocation_encode(&r, enc, &len));
    CHECK_OK(fm_revocation_decode(enc, len, &d));
    CHECK_MEM(&r, &d, sizeof r);
    for (size_t n = 0; n < len; n++)
        CHECK_RC(fm_revocation_decode(enc, n, &d), FM_ETRUNC);
    uint8_t bad[FM_MAX_REVOCATION_BYTES + 1];
    memcpy(bad, enc, len);
    bad[len] = 0;
    CHECK_RC(fm_revocation_decode(bad, len + 1, &d), FM_EDECODE);
    char text[FM_MAX_REVOCATION_TEXT + 1];
    CHECK_OK(fm_revocation_to_text(&r, text, sizeof text));
    CHECK(strncmp(text, "fmrev1:", 7) == 0);
    CHECK_OK(fm_revocation_from_text(text, &d));
    CHECK_MEM(&r, &d, sizeof r);
    CHECK_RC(fm_cert_from_text(text, &(fm_cert){0}), FM_EDECODE);
    /* a certificate is not a revocation, in either encoding */
    fm_cert c = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW);
    uint8_t cenc[FM_MAX_CERT_BYTES];
    size_t clen;
    CHECK_OK(fm_cert_encode(&c, cenc, &clen));
    CHECK(fm_revocation_decode(cenc, clen, &d) < 0);
    CHECK(fm_cert_decode(enc, len, &c) < 0);
    d = r;
    d.effective_ms++;
    CHECK_RC(fm_revocation_verify(&d, f.mesh), FM_ESIG);
    d = r;
    d.sig[0] ^= 0x80;
    CHECK_RC(fm_revocation_verify(&d, f.mesh), FM_ESIG);
    CHECK_RC(fm_revocation_issue(f.a, f.mesh, f.idb, NOW, NOW, &d), FM_EMESH);
    fixture_free(&f);
}

static void test_membership(void)
{
    fixture f;
    fixture_init(&f);
    fm_membership *m;
    CHECK_OK(fm_membership_new(f.mesh, FM_ADMIT_INSTALLED, &m));
    uint32_t perms = 99;
    CHECK_RC(fm_membership_check(m, f.ida, NOW), FM_EUNKNOWN_DEVICE);
    CHECK_RC(fm_membership_perms(m, f.ida, NOW, &perms), FM_EUNKNOWN_DEVICE);
    CHECK_EQ_INT(perms, 0);
    fm_cert old = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW);
    fm_cert ro = issue(&f, f.ida, "a", FM_PERM_READ, NOW, NOW + DAY_MS, NOW + 1);
    CHECK_OK(fm_membership_add_cert(m, &ro));
    CHECK_OK(fm_membership_add_cert(m, &old)); /* older: ignored */
    CHECK_OK(fm_membership_perms(m, f.ida, NOW, &perms));
    CHECK_EQ_INT(perms, FM_PERM_READ);
    CHECK(fm_membership_cert(m, f.ida) && fm_membership_cert(m, f.ida)->issued_at == NOW + 1);
    CHECK(fm_membership_cert(m, f.idb) == NULL);
    CHECK_RC(fm_membership_check(m, f.ida, NOW + DAY_MS), FM_EEXPIRED);
    /* foreign and forged certificates are refused */
    fm_cert t = ro;
    t.sig[1] ^= 1;
    CHECK_RC(fm_membership_add_cert(m, &t), FM_ESIG);
    fm_cert foreign;
    CHECK_OK(fm_cert_issue(f.b, f.idb, f.idb, "b", FM_PERM_ALL, 0, UINT64_MAX, NOW, &foreign));
    CHECK_RC(fm_membership_add_cert(m, &foreign), FM_EMESH);
    /* the authority's self-certificate */
    fm_cert self = issue(&f, f.mesh, "auth", FM_PERM_ALL, 0, UINT64_MAX, 0);
    CHECK_OK(fm_membership_add_cert(m, &self));
    CHECK_OK(fm_membership_check(m, f.mesh, NOW));
    /* revocation: effective from its instant, the earliest one kept, final */
    fm_revocation late, early;
    CHECK_OK(fm_revocation_issue(f.auth, f.mesh, f.ida, NOW + 500, NOW, &late));
    CHECK_OK(fm_revocation_issue(f.auth, f.mesh, f.ida, NOW + 100, NOW, &early));
    CHECK_OK(fm_membership_add_revocation(m, &late));
    CHECK_OK(fm_membership_add_revocation(m, &early));
    CHECK_OK(fm_membership_add_revocation(m, &late));
    CHECK_OK(fm_membership_check(m, f.ida, NOW + 99));
    CHECK_RC(fm_membership_check(m, f.ida, NOW + 100), FM_EREVOKED);
    CHECK_RC(fm_membership_perms(m, f.ida, NOW + 100, &perms), FM_EREVOKED);
    CHECK_EQ_INT(perms, 0);
    fm_cert renewed = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW + 200);
    CHECK_OK(fm_membership_add_cert(m, &renewed));
    CHECK_RC(fm_membership_check(m, f.ida, NOW + 300), FM_EREVOKED);
    fm_revocation forged = early;
    forged.device_id[0] ^= 1;
    CHECK_RC(fm_membership_add_revocation(m, &forged), FM_ESIG);
    fm_membership_free(m);
    fixture_free(&f);
}

static void test_membership_presented(void)
{
    fixture f;
    fixture_init(&f);
    fm_membership *open, *allow;
    CHECK_OK(fm_membership_new(f.mesh, FM_ADMIT_PRESENTED, &open));
    CHECK_OK(fm_membership_new(f.mesh, FM_ADMIT_INSTALLED, &allow));
    CHECK_RC(fm_membership_new(f.mesh, (fm_admit_policy)7, &(fm_membership *){NULL}), FM_EINVAL);
    fm_cert c = issue(&f, f.ida, "a", FM_PERM_ALL, NOW, NOW + DAY_MS, NOW), eff;
    CHECK_OK(fm_membership_check_cert(open, &c, NOW, &eff));
    CHECK_MEM(&eff, &c, sizeof c);
    CHECK_RC(fm_membership_check_cert(allow, &c, NOW, &eff), FM_EUNKNOWN_DEVICE);
    CHECK_RC(fm_membership_check_cert(open, &c, NOW + DAY_MS, &eff), FM_EEXPIRED);
    fm_cert t = c;
    t.name[0] = 'b';
    CHECK_RC(fm_membership_check_cert(open, &t, NOW, &eff), FM_ESIG);
    /* an installed newer certificate governs over an older one presented */
    fm_cert newer = issue(&f, f.ida, "a", FM_PERM_READ, NOW, NOW + 10, NOW + 1);
    CHECK_OK(fm_membership_add_cert(open, &newer));
    CHECK_OK(fm_membership_check_cert(open, &c, NOW, &eff));
    CHECK_EQ_INT(eff.perms, FM_PERM_READ);
    CHECK_RC(fm_membership_check_cert(open, &c, NOW + 10, &eff), FM_EEXPIRED);
    fm_revocation r;
    CHECK_OK(fm_revocation_issue(f.auth, f.mesh, f.ida, NOW, NOW, &r));
    CHECK_OK(fm_membership_add_revocation(open, &r));
    CHECK_RC(fm_membership_check_cert(open, &c, NOW, &eff), FM_EREVOKED);
    /* equal issued_at: the order is still total and the same from both sides */
    fm_cert x = issue(&f, f.idb, "x", FM_PERM_ALL, NOW, NOW + 1, NOW);
    fm_cert y = issue(&f, f.idb, "y", FM_PERM_ALL, NOW, NOW + 1, NOW);
    CHECK(fm_cert_newer(&x, &y) == -fm_cert_newer(&y, &x) && fm_cert_newer(&x, &y) != 0);
    CHECK_EQ_INT(fm_cert_newer(&x, &x), 0);
    fm_membership_free(open);
    fm_membership_free(allow);
    fixture_free(&f);
}

static void test_membership_limit(void)
{
    fixture f;
    fixture_init(&f);
    fm_membership *m;
    CHECK_OK(fm_membership_new(f.mesh, FM_ADMIT_INSTALLED, &m));
    uint8_t id[32] = {0};
    int failures = 0;
    for (uint32_t i = 0; i <= FM_MAX_MEMBERS; i++) {
        /* descending ids exercise insertion in front */
        uint32_t v = FM_MAX_MEMBERS - i;
        id[0] = (uint8_t)(v >> 8), id[1] = (uint8_t)v;
        fm_cert c = issue(&f, id, "d", FM_PERM_READ, 0, UINT64_MAX, 0);
        int rc = fm_membership_add_cert(m, &c);
        if (i < FM_MAX_MEMBERS)
            failures += rc != 0;
        else
            CHECK_RC(rc, FM_ELIMIT);
    }
    CHECK_EQ_INT(failures, 0);
    id[0] = 0, id[1] = 5;
    CHECK_OK(fm_membership_check(m, id, NOW));
    id[1] = 0; /* the one past the bound */
    CHECK_RC(fm_membership_check(m, id, NOW), FM_EUNKNOWN_DEVICE);
    fm_membership_free(m);
    fixture_free(&f);
}

/* Devices are found by the first 8 bytes of their ids, then in full: ids that share those
 * bytes (and differ only in the last one, or in byte 8) are each found, and no other. */
static void test_membership_shared_prefix(void)
{
    fixture f;
    fixture_init(&f);
    fm_membership *m;
    CHECK_OK(fm_membership_new(f.mesh, FM_ADMIT_INSTALLED, &m));
    static const uint8_t last[] = {0x80, 0x01, 0xff, 0x40, 0x00};
    uint8_t id[32];
    memset(id, 0x5a, sizeof id);
    for (size_t i = 0; i < sizeof last; i++) {
        id[31] = last[i];
        fm_cert c = issue(&f, id, "p", FM_PERM_READ, 0, UINT64_MAX, 0);
        CHECK_OK(fm_membership_add_cert(m, &c));
    }
    id[31] = 0x5a, id[8] = 0x00; /* the same 8 bytes, lower after them */
    fm_cert c = issue(&f, id, "q", FM_PERM_ALL, 0, UINT64_MAX, 0);
    CHECK_OK(fm_membership_add_cert(m, &c));
    id[7] = 0x59; /* before all of them */
    c = issue(&f, id, "r", FM_PERM_READ, 0, UINT64_MAX, 0);
    CHECK_OK(fm_membership_add_cert(m, &c));
    memset(id, 0x5a, sizeof id);
    for (size_t i = 0; i < sizeof last; i++) {
        id[31] = last[i];
        const fm_cert *got = fm_membership_cert(m, id);
        CHECK(got && memcmp(got->device_id, id, 32) == 0 && !strcmp(got->name, "p"));
    }
    id[31] = 0x02; /* shares the 8 bytes, never admitted */
    CHECK_RC(fm_membership_check(m, id, NOW), FM_EUNKNOWN_DEVICE);
    id[31] = 0x5a, id[8] = 0x00;
    uint32_t perms = 0;
    CHECK_OK(fm_membership_perms(m, id, NOW, &perms));
    CHECK_EQ_INT(perms, FM_PERM_ALL);
    id[7] = 0x59;
    CHECK_OK(fm_membership_check(m, id, NOW));
    id[8] = 0x01;
    CHECK_RC(fm_membership_check(m, id, NOW), FM_EUNKNOWN_DEVICE);
    fm_membership_free(m);
    fixture_free(&f);
}

/* ---- golden vectors -------------------------------------------------------------------------- */

static void vec_hex(fm_buf *b, const char *name, const uint8_t *p, size_t n)
{
    fm_buf_printf(b, "%s ", name);
    for (size_t i = 0; i < n; i++)
        fm_buf_printf(b, "%02x", p[i]);
    fm_buf_putc(b, '\n');
}

static void cert_vectors(fm_buf *b)
{
    uint8_t seeds[2][32];
    memset(seeds[0], 0x11, 32);
    memset(seeds[1], 0x22, 32);
    fm_identity *auth, *dev;
    CHECK_OK(fm_identity_from_seed(seeds[0], &auth));
    CHECK_OK(fm_identity_from_seed(seeds[1], &dev));
    uint8_t mesh[32], id[32], enc[FM_MAX_CERT_BYTES];
    size_t len;
    fm_identity_public(auth, mesh);
    fm_identity_public(dev, id);
    vec_hex(b, "authority_seed", seeds[0], 32);
    vec_hex(b, "device_seed", seeds[1], 32);
    vec_hex(b, "mesh_id", mesh, 32);
    vec_hex(b, "device_id", id, 32);
    fm_cert c;
    CHECK_OK(fm_cert_issue(auth, mesh, id, "field tablet \xc3\xa9", FM_PERM_READ | FM_PERM_WRITE,
                           1700000000000ull, 1731536000000ull, 1699999999000ull, &c));
    fm_buf_printf(b, "# cert: name \"field tablet \\u00e9\", perms 3, not_before 1700000000000,\n"
                     "# not_after 1731536000000, issued_at 1699999999000\n");
    CHECK_OK(fm_cert_encode(&c, enc, &len));
    vec_hex(b, "cert", enc, len);
    char text[FM_MAX_CERT_TEXT + 1];
    CHECK_OK(fm_cert_to_text(&c, text, sizeof text));
    fm_buf_printf(b, "cert_text %s\n", text);
    fm_buf_printf(b, "# self_cert: the authority's own, name \"hq\", perms 3, valid 0..2^64-1, "
                     "issued_at 0\n");
    CHECK_OK(fm_cert_issue(auth, mesh, mesh, "hq", FM_PERM_ALL, 0, UINT64_MAX, 0, &c));
    CHECK_OK(fm_cert_encode(&c, enc, &len));
    vec_hex(b, "self_cert", enc, len);
    fm_revocation r;
    CHECK_OK(fm_revocation_issue(auth, mesh, id, 1710000000000ull, 1709999999999ull, &r));
    fm_buf_printf(b, "# revocation of device_id: effective 1710000000000, "
                     "issued_at 1709999999999\n");
    CHECK_OK(fm_revocation_encode(&r, enc, &len));
    vec_hex(b, "revocation", enc, len);
    CHECK_OK(fm_revocation_to_text(&r, text, sizeof text));
    fm_buf_printf(b, "revocation_text %s\n", text);
    fm_identity_free(auth);
    fm_identity_free(dev);
}

static const char CERT_VECTOR_HEADER[] =
    "# fieldmesh golden vectors: device certificates and revocations (format v1).\n"
    "# Generated by tests/unit/test_cert.c (FM_WRITE_VECTORS=1); checked byte for byte.\n"
    "# Each line: <name> <value>; values are lowercase hex, except *_text (the text form).\n"
    "# Identities are Ed25519 keys from 32-byte seeds (libsodium crypto_sign_seed_keypair);\n"
    "# the mesh id is the authority's public key. Encodings are canonical msgpack:\n"
    "#   cert       = [[1, mesh_id, device_id, name, perms, issued_at, not_before, not_after], "
    "sig]\n"
    "#   revocation = [[1, mesh_id, device_id, effective_ms, issued_at], sig]\n"
    "# sig = Ed25519(BLAKE2b-512(len(domain) || domain || inner array bytes)), domain\n"
    "# \"fieldmesh-cert-v1\" / \"fieldmesh-revocation-v1\". Text: prefix + base64url, no "
    "padding.\n";

static void test_golden_vectors(void)
{
    fm_buf b;
    fm_buf_init(&b);
    fm_buf_append(&b, CERT_VECTOR_HEADER, strlen(CERT_VECTOR_HEADER));
    cert_vectors(&b);
    char *want = fm_buf_take_str(&b);
    fm_test_golden(FM_VECTORS_DIR "/cert_v1.txt", want);
    free(want);
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    RUN(test_issue_verify_roundtrip);
    RUN(test_issue_rejects);
    RUN(test_wrong_mesh_and_bad_signature);
    RUN(test_validity_window);
    RUN(test_not_for_this_device);
    RUN(test_malformed);
    RUN(test_text_malformed);
    RUN(test_revocation);
    RUN(test_membership);
    RUN(test_membership_presented);
    RUN(test_membership_limit);
    RUN(test_membership_shared_prefix);
    RUN(test_golden_vectors);
    TEST_MAIN_END();
}
