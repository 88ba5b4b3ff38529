#include "crypto/frame.h"
#include "crypto/identity.h"
#include "crypto/session.h"
#include "fm_test.h"

#include <sodium.h>

#ifndef FM_VECTORS_DIR
#define FM_VECTORS_DIR "tests/vectors"
#endif

enum { DAY_MS = 86400 * 1000, MAX_FRAMES = 16 };
static const uint64_t NOW = 1700000000000ull;

/* Frames one side received, in order. */
typedef struct frames {
    int n;
    size_t off[MAX_FRAMES + 1];
    fm_buf data;
} frames;

static void on_frame(void *arg, const uint8_t *p, size_t len)
{
    frames *f = arg;
    FM_ASSERT(f->n < MAX_FRAMES);
    f->off[f->n] = f->data.len;
    fm_buf_append(&f->data, p, len);
    f->n++;
    f->off[f->n] = f->data.len;
}

static bool frame_is(const frames *f, int i, const void *p, size_t len)
{
    return i < f->n && f->off[i + 1] - f->off[i] == len &&
           (len == 0 || memcmp(f->data.data + f->off[i], p, len) == 0);
}

typedef struct side {
    fm_identity *id;
    fm_membership *m;
    uint8_t cert[FM_MAX_CERT_BYTES];
    size_t cert_len;
    fm_session *s;
    fm_buf out;
    frames got;
} side;

typedef struct world {
    fm_test_env te;
    fm_identity *auth;
    uint8_t mesh[32];
    side i, r;
} world;

static void put_cert(side *sd, const fm_cert *c)
{
    CHECK_OK(fm_cert_encode(c, sd->cert, &sd->cert_len));
}

static void side_init(world *w, side *sd, uint8_t seed_byte, uint64_t nb, uint64_t na)
{
    uint8_t seed[32], id[32];
    memset(seed, seed_byte, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &sd->id));
    fm_identity_public(sd->id, id);
    CHECK_OK(fm_membership_new(w->mesh, FM_ADMIT_PRESENTED, &sd->m));
    fm_cert c;
    CHECK_OK(fm_cert_issue(w->auth, w->mesh, id, "dev", FM_PERM_ALL, nb, na, nb, &c));
    put_cert(sd, &c);
    fm_buf_init(&sd->out);
    fm_buf_init(&sd->got.data);
}

/* A mesh (authority seed auth_seed) with initiator and responder devices, sessions not made. */
static void world_init(world *w, uint8_t auth_seed, uint64_t rng_seed)
{
    memset(w, 0, sizeof *w);
    fm_test_env_init(&w->te, NOW, rng_seed);
    uint8_t seed[32];
    memset(seed, auth_seed, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &w->auth));
    fm_identity_public(w->auth, w->mesh);
    side_init(w, &w->i, 0x22, NOW - 1000, NOW + DAY_MS);
    side_init(w, &w->r, 0x33, NOW - 1000, NOW + DAY_MS);
}

static void side_free(side *sd)
{
    fm_session_free(sd->s);
    fm_membership_free(sd->m);
    fm_identity_free(sd->id);
    fm_buf_free(&sd->out);
    fm_buf_free(&sd->got.data);
}

static void world_free(world *w)
{
    side_free(&w->i);
    side_free(&w->r);
    fm_identity_free(w->auth);
}

static void sessions_new(world *w)
{
    CHECK_OK(fm_session_new(&w->te.env, w->i.id, w->i.cert, w->i.cert_len, w->i.m,
                            FM_SESSION_INITIATOR, &w->i.s));
    CHECK_OK(fm_session_new(&w->te.env, w->r.id, w->r.cert, w->r.cert_len, w->r.m,
                            FM_SESSION_RESPONDER, &w->r.s));
}

/* Moves everything from sends to the peer's input, chunk bytes at a time. */
static int deliver(side *from, side *to, size_t chunk)
{
    fm_buf pending = from->out;
    fm_buf_init(&from->out);
    int rc = 0;
    for (size_t off = 0; off < pending.len && rc == 0; off += chunk) {
        size_t n = FM_MIN(chunk, pending.len - off);
        rc = fm_session_input(to->s, pending.data + off, n, &to->out, on_frame, &to->got);
    }
    fm_buf_free(&pending);
    return rc;
}

/* Exchanges bytes until both sides are quiet or one fails. */
static int pump(world *w, size_t chunk)
{
    int rc = 0;
    while (rc == 0 && (w->i.out.len || w->r.out.len)) {
        rc = deliver(&w->i, &w->r, chunk);
        if (rc == 0)
            rc = deliver(&w->r, &w->i, chunk);
    }
    return rc;
}

/* Runs the handshake to the end or the first error. */
static int handshake(world *w, size_t chunk)
{
    CHECK_OK(fm_session_start(w->i.s, &w->i.out));
    return pump(w, chunk);
}

static void established(world *w, uint64_t rng_seed)
{
    world_init(w, 0x11, rng_seed);
    sessions_new(w);
    CHECK_OK(handshake(w, SIZE_MAX));
    CHECK_EQ_INT(fm_session_state(w->i.s), FM_SESSION_ESTABLISHED);
    CHECK_EQ_INT(fm_session_state(w->r.s), FM_SESSION_ESTABLISHED);
}

/* ---- success --------------------------------------------------------------------------------- */

static void check_exchange(world *w, size_t chunk)
{
    uint8_t idi[32], idr[32], peer[32];
    fm_identity_public(w->i.id, idi);
    fm_identity_public(w->r.id, idr);
    CHECK_OK(fm_session_peer_id(w->i.s, peer));
    CHECK_MEM(peer, idr, 32);
    CHECK_OK(fm_session_peer_id(w->r.s, peer));
    CHECK_MEM(peer, idi, 32);
    fm_cert pc;
    CHECK_OK(fm_session_peer_cert(w->r.s, &pc));
    CHECK(fm_cert_is_for(&pc, idi) && pc.perms == FM_PERM_ALL);
    uint8_t big[3000];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)(k * 7);
    CHECK_OK(fm_session_send(w->i.s, (const uint8_t *)"hello", 5, &w->i.out));
    CHECK_OK(fm_session_send(w->i.s, NULL, 0, &w->i.out));
    CHECK_OK(fm_session_send(w->i.s, big, sizeof big, &w->i.out));
    CHECK_OK(fm_session_send(w->r.s, (const uint8_t *)"world", 5, &w->r.out));
    CHECK_OK(deliver(&w->i, &w->r, chunk));
    CHECK_OK(deliver(&w->r, &w->i, chunk));
    CHECK_EQ_INT(w->r.got.n, 3);
    CHECK(frame_is(&w->r.got, 0, "hello", 5));
    CHECK(frame_is(&w->r.got, 1, "", 0));
    CHECK(frame_is(&w->r.got, 2, big, sizeof big));
    CHECK_EQ_INT(w->i.got.n, 1);
    CHECK(frame_is(&w->i.got, 0, "world", 5));
}

static void test_handshake_and_frames(void)
{
    const size_t chunks[] = {SIZE_MAX, 1, 7};
    for (size_t c = 0; c < FM_ARRAY_LEN(chunks); c++) {
        world w;
        world_init(&w, 0x11, 1 + c);
        sessions_new(&w);
        CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_START);
        CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_WAIT_MSG1);
        CHECK_OK(handshake(&w, chunks[c]));
        CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_ESTABLISHED);
        CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_ESTABLISHED);
        check_exchange(&w, chunks[c]);
        world_free(&w);
    }
}

static void test_roles_swapped(void)
{
    world w;
    world_init(&w, 0x11, 9);
    side tmp = w.i; /* the device that was responder now initiates */
    w.i = w.r;
    w.r = tmp;
    sessions_new(&w);
    CHECK_OK(handshake(&w, 3));
    check_exchange(&w, 5);
    world_free(&w);
}

static void test_admitted_by_installed_cert(void)
{
    /* allow-list membership on both sides, each holding the other's certificate */
    world w;
    world_init(&w, 0x11, 2);
    fm_membership_free(w.i.m);
    fm_membership_free(w.r.m);
    CHECK_OK(fm_membership_new(w.mesh, FM_ADMIT_INSTALLED, &w.i.m));
    CHECK_OK(fm_membership_new(w.mesh, FM_ADMIT_INSTALLED, &w.r.m));
    fm_cert ci, cr;
    CHECK_OK(fm_cert_decode(w.i.cert, w.i.cert_len, &ci));
    CHECK_OK(fm_cert_decode(w.r.cert, w.r.cert_len, &cr));
    CHECK_OK(fm_membership_add_cert(w.r.m, &ci));
    CHECK_OK(fm_membership_add_cert(w.i.m, &cr));
    sessions_new(&w);
    CHECK_OK(handshake(&w, SIZE_MAX));
    check_exchange(&w, SIZE_MAX);
    world_free(&w);
}

/* ---- refusals: each with its own code; the refusing side sends nothing and dies, the other side
 * stays where it was ----------------------------------------------------------------------------
 */

/* Runs the handshake until `victim` refuses with want; checks both sides afterwards. */
static void expect_refusal(world *w, side *victim, int want, enum fm_session_state other_state)
{
    int rc = handshake(w, SIZE_MAX);
    CHECK_RC(rc, want);
    side *other = victim == &w->i ? &w->r : &w->i;
    CHECK_EQ_INT(fm_session_state(victim->s), FM_SESSION_FAILED);
    CHECK_EQ_INT(victim->out.len, 0);
    CHECK_EQ_INT(fm_session_state(other->s), other_state);
    uint8_t peer[32];
    CHECK_RC(fm_session_peer_id(victim->s, peer), FM_ESTATE);
    /* dead: later calls keep failing with the same error */
    CHECK_RC(fm_session_input(victim->s, (const uint8_t *)"x", 1, &victim->out, NULL, NULL), want);
    CHECK_RC(fm_session_send(victim->s, (const uint8_t *)"x", 1, &victim->out), want);
    CHECK_RC(fm_session_tick(victim->s), want);
    CHECK_EQ_INT(victim->out.len, 0);
    CHECK_EQ_INT(victim->got.n + other->got.n, 0);
}

static void test_wrong_mesh(void)
{
    /* the responder belongs to another mesh: the initiator's mesh tag does not match */
    world w, other;
    world_init(&w, 0x11, 3);
    world_init(&other, 0x44, 3);
    side tmp = w.r;
    w.r = other.r;
    other.r = tmp;
    sessions_new(&w);
    expect_refusal(&w, &w.r, FM_EMESH, FM_SESSION_WAIT_MSG2);
    world_free(&w);
    world_free(&other);
    /* a responder of our mesh presenting a certificate of another mesh */
    world_init(&w, 0x11, 4);
    world_init(&other, 0x44, 4);
    CHECK_OK(fm_session_new(&w.te.env, w.i.id, w.i.cert, w.i.cert_len, w.i.m, FM_SESSION_INITIATOR,
                            &w.i.s));
    CHECK_OK(fm__session_new_nocheck(&w.te.env, w.r.id, other.r.cert, other.r.cert_len, w.r.m,
                                     FM_SESSION_RESPONDER, &w.r.s));
    expect_refusal(&w, &w.i, FM_EMESH, FM_SESSION_WAIT_MSG3);
    world_free(&w);
    world_free(&other);
}

static void test_unknown_device(void)
{
    world w;
    world_init(&w, 0x11, 5);
    fm_membership_free(w.r.m);
    CHECK_OK(fm_membership_new(w.mesh, FM_ADMIT_INSTALLED, &w.r.m));
    sessions_new(&w);
    expect_refusal(&w, &w.r, FM_EUNKNOWN_DEVICE, FM_SESSION_WAIT_STREAM);
    world_free(&w);
    /* the initiator refuses an unknown responder */
    world_init(&w, 0x11, 5);
    fm_membership_free(w.i.m);
    CHECK_OK(fm_membership_new(w.mesh, FM_ADMIT_INSTALLED, &w.i.m));
    sessions_new(&w);
    expect_refusal(&w, &w.i, FM_EUNKNOWN_DEVICE, FM_SESSION_WAIT_MSG3);
    world_free(&w);
}

static void reissue(world *w, side *sd, uint64_t nb, uint64_t na)
{
    uint8_t id[32];
    fm_identity_public(sd->id, id);
    fm_cert c;
    CHECK_OK(fm_cert_issue(w->auth, w->mesh, id, "dev", FM_PERM_ALL, nb, na, nb, &c));
    put_cert(sd, &c);
}

static void test_expired(void)
{
    world w;
    world_init(&w, 0x11, 6);
    reissue(&w, &w.i, NOW - DAY_MS, NOW); /* expired exactly now */
    sessions_new(&w);
    expect_refusal(&w, &w.r, FM_EEXPIRED, FM_SESSION_WAIT_STREAM);
    world_free(&w);
    world_init(&w, 0x11, 6);
    reissue(&w, &w.r, NOW + 1, NOW + DAY_MS); /* not yet valid */
    sessions_new(&w);
    expect_refusal(&w, &w.i, FM_EEXPIRED, FM_SESSION_WAIT_MSG3);
    world_free(&w);
}

static void revoke(world *w, side *judge, side *victim, uint64_t at)
{
    uint8_t id[32];
    fm_identity_public(victim->id, id);
    fm_revocation r;
    CHECK_OK(fm_revocation_issue(w->auth, w->mesh, id, at, at, &r));
    CHECK_OK(fm_membership_add_revocation(judge->m, &r));
}

static void test_revoked(void)
{
    world w;
    world_init(&w, 0x11, 7);
    revoke(&w, &w.r, &w.i, NOW);
    sessions_new(&w);
    expect_refusal(&w, &w.r, FM_EREVOKED, FM_SESSION_WAIT_STREAM);
    world_free(&w);
    world_init(&w, 0x11, 7);
    revoke(&w, &w.i, &w.r, NOW - 1);
    sessions_new(&w);
    expect_refusal(&w, &w.i, FM_EREVOKED, FM_SESSION_WAIT_MSG3);
    world_free(&w);
    /* a revocation that arrives during the session: recheck ends it */
    established(&w, 70);
    CHECK_OK(fm_session_recheck(w.r.s));
    revoke(&w, &w.r, &w.i, NOW);
    CHECK_RC(fm_session_recheck(w.r.s), FM_EREVOKED);
    CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_FAILED);
    CHECK_RC(fm_session_send(w.r.s, (const uint8_t *)"x", 1, &w.r.out), FM_EREVOKED);
    world_free(&w);
}

/* An impostor holding another device's (valid) certificate cannot sign the transcript. */
static void test_bad_transcript_signature(void)
{
    world w;
    world_init(&w, 0x11, 8);
    fm_identity *thief;
    uint8_t seed[32];
    memset(seed, 0x66, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &thief));
    CHECK_OK(fm__session_new_nocheck(&w.te.env, thief, w.i.cert, w.i.cert_len, w.i.m,
                                     FM_SESSION_INITIATOR, &w.i.s));
    CHECK_OK(fm_session_new(&w.te.env, w.r.id, w.r.cert, w.r.cert_len, w.r.m, FM_SESSION_RESPONDER,
                            &w.r.s));
    expect_refusal(&w, &w.r, FM_ESIG, FM_SESSION_WAIT_STREAM);
    world_free(&w);
    world_init(&w, 0x11, 8);
    CHECK_OK(fm_session_new(&w.te.env, w.i.id, w.i.cert, w.i.cert_len, w.i.m, FM_SESSION_INITIATOR,
                            &w.i.s));
    CHECK_OK(fm__session_new_nocheck(&w.te.env, thief, w.r.cert, w.r.cert_len, w.r.m,
                                     FM_SESSION_RESPONDER, &w.r.s));
    expect_refusal(&w, &w.i, FM_ESIG, FM_SESSION_WAIT_MSG3);
    world_free(&w);
    fm_identity_free(thief);
}

/* Record offsets in a side's out buffer: 4-byte length, then version, type, ephemeral. */
enum { REC = 4, EPH = REC + 2 };

static void test_mitm_ephemeral(void)
{
    /* msg2's ephemeral replaced by the attacker's: the initiator cannot open the identity */
    world w;
    world_init(&w, 0x11, 10);
    sessions_new(&w);
    uint8_t m_pk[32], m_sk[32], seed[32] = {0x77};
    crypto_kx_seed_keypair(m_pk, m_sk, seed);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    memcpy(w.r.out.data + EPH, m_pk, 32);
    CHECK_RC(deliver(&w.r, &w.i, SIZE_MAX), FM_EAUTH);
    CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_FAILED);
    CHECK_EQ_INT(w.i.out.len, 0);
    CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_WAIT_MSG3);
    world_free(&w);
    /* msg1's ephemeral replaced, mesh tag recomputed from the (public) mesh id: the responder
     * answers the attacker, whose relayed answer the initiator cannot open */
    world_init(&w, 0x11, 11);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    memcpy(w.i.out.data + EPH, m_pk, 32);
    crypto_generichash_state st;
    crypto_generichash_init(&st, w.mesh, 32, 16);
    crypto_generichash_update(&st, (const uint8_t *)"fieldmesh-mesh-tag-v1", 21);
    crypto_generichash_update(&st, m_pk, 32);
    crypto_generichash_final(&st, w.i.out.data + EPH + 32, 16);
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    CHECK_RC(deliver(&w.r, &w.i, SIZE_MAX), FM_EAUTH);
    CHECK_EQ_INT(w.i.out.len, 0);
    world_free(&w);
    /* msg1's ephemeral replaced without fixing the tag */
    world_init(&w, 0x11, 12);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    w.i.out.data[EPH + 3] ^= 1;
    CHECK_RC(deliver(&w.i, &w.r, SIZE_MAX), FM_EMESH);
    world_free(&w);
    /* a low-order point as ephemeral */
    world_init(&w, 0x11, 13);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    memset(w.r.out.data + EPH, 0, 32);
    CHECK_RC(deliver(&w.r, &w.i, SIZE_MAX), FM_EAUTH);
    world_free(&w);
    sodium_memzero(m_sk, sizeof m_sk);
}

static void test_tampered_handshake(void)
{
    /* one flipped bit anywhere in msg2 or msg3 (after the record header) is refused */
    for (int which = 0; which < 2; which++) {
        for (size_t bit = 0; bit < 8 * 40; bit += 13) {
            world w;
            world_init(&w, 0x11, 20 + bit);
            sessions_new(&w);
            CHECK_OK(fm_session_start(w.i.s, &w.i.out));
            CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
            side *from = &w.r, *to = &w.i;
            if (which) {
                CHECK_OK(deliver(&w.r, &w.i, SIZE_MAX));
                from = &w.i, to = &w.r;
            }
            const uint8_t *h = from->out.data; /* tamper with the first record only */
            size_t rec_len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
            size_t pos = REC + (bit / 8) * 7 % rec_len;
            from->out.data[pos] ^= (uint8_t)(1u << (bit % 8));
            int rc = deliver(from, to, SIZE_MAX);
            CHECK(rc == FM_EAUTH || rc == FM_EDECODE || rc == FM_EVERSION || rc == FM_ELIMIT);
            CHECK_EQ_INT(fm_session_state(to->s), FM_SESSION_FAILED);
            world_free(&w);
        }
    }
}

static void test_replayed_handshake(void)
{
    /* session 1: capture msg2 and msg3 (+ the initiator's stream start) */
    world w;
    world_init(&w, 0x11, 30);
    sessions_new(&w);
    fm_buf msg2, msg3;
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    msg2 = w.r.out;
    fm_buf_init(&w.r.out);
    fm_buf_append(&w.r.out, msg2.data, msg2.len);
    CHECK_OK(deliver(&w.r, &w.i, SIZE_MAX));
    msg3 = w.i.out;
    fm_buf_init(&w.i.out);
    /* session 2, same devices, fresh ephemerals */
    fm_session_free(w.i.s);
    fm_session_free(w.r.s);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    fm_buf_reset(&w.i.out);
    CHECK_RC(fm_session_input(w.i.s, msg2.data, msg2.len, &w.i.out, NULL, NULL), FM_EAUTH);
    CHECK_EQ_INT(w.i.out.len, 0);
    fm_session_free(w.i.s);
    fm_session_free(w.r.s);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    fm_buf_reset(&w.r.out);
    CHECK_RC(fm_session_input(w.r.s, msg3.data, msg3.len, &w.r.out, NULL, NULL), FM_EAUTH);
    CHECK_EQ_INT(w.r.out.len, 0);
    CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_WAIT_MSG2);
    fm_buf_free(&msg2);
    fm_buf_free(&msg3);
    world_free(&w);
}

static void test_handshake_bounds(void)
{
    const uint8_t too_long[4] = {0, 0, (FM_MAX_HANDSHAKE_BYTES + 1) >> 8,
                                 (FM_MAX_HANDSHAKE_BYTES + 1) & 0xff};
    const uint8_t empty[4] = {0};
    const uint8_t version[4 + 50] = {0, 0, 0, 50, FM_SESSION_PROTOCOL + 1, 1};
    const uint8_t wrong_type[4 + 50] = {0, 0, 0, 50, FM_SESSION_PROTOCOL, 2};
    const uint8_t short_msg1[4 + 49] = {0, 0, 0, 49, FM_SESSION_PROTOCOL, 1};
    struct {
        const uint8_t *p;
        size_t n;
        int want;
    } cases[] = {{too_long, 4, FM_ELIMIT},
                 {empty, 4, FM_EDECODE},
                 {version, sizeof version, FM_EVERSION},
                 {wrong_type, sizeof wrong_type, FM_EDECODE},
                 {short_msg1, sizeof short_msg1, FM_EDECODE}};
    for (size_t c = 0; c < FM_ARRAY_LEN(cases); c++) {
        world w;
        world_init(&w, 0x11, 40);
        sessions_new(&w);
        CHECK_RC(fm_session_input(w.r.s, cases[c].p, cases[c].n, &w.r.out, NULL, NULL),
                 cases[c].want);
        CHECK_EQ_INT(w.r.out.len, 0);
        world_free(&w);
    }
    /* a record exactly at the bound is read whole before it is judged */
    world w;
    world_init(&w, 0x11, 41);
    sessions_new(&w);
    uint8_t at[4 + FM_MAX_HANDSHAKE_BYTES] = {
        0, 0, FM_MAX_HANDSHAKE_BYTES >> 8, FM_MAX_HANDSHAKE_BYTES & 0xff, FM_SESSION_PROTOCOL, 1};
    CHECK_OK(fm_session_input(w.r.s, at, sizeof at - 1, &w.r.out, NULL, NULL));
    CHECK_RC(fm_session_input(w.r.s, at + sizeof at - 1, 1, &w.r.out, NULL, NULL), FM_EDECODE);
    world_free(&w);
}

/* ---- frames ---------------------------------------------------------------------------------- */

/* Two frames from the initiator, each in its own buffer. */
static void two_frames(world *w, fm_buf *f1, fm_buf *f2)
{
    fm_buf_init(f1);
    fm_buf_init(f2);
    CHECK_OK(fm_session_send(w->i.s, (const uint8_t *)"one", 3, f1));
    CHECK_OK(fm_session_send(w->i.s, (const uint8_t *)"two", 3, f2));
}

static int feed(side *to, const fm_buf *b)
{
    return fm_session_input(to->s, b->data, b->len, &to->out, on_frame, &to->got);
}

static void expect_dead(side *sd, int want)
{
    CHECK_EQ_INT(fm_session_state(sd->s), FM_SESSION_FAILED);
    CHECK_RC(fm_session_input(sd->s, (const uint8_t *)"\0", 1, &sd->out, on_frame, &sd->got), want);
    CHECK_RC(fm_session_send(sd->s, (const uint8_t *)"x", 1, &sd->out), want);
    CHECK_EQ_INT(sd->out.len, 0);
}

static void test_frame_tampered(void)
{
    for (size_t pos = 4; pos < 4 + 3 + FM_FRAME_OVERHEAD; pos++) {
        world w;
        established(&w, 70);
        fm_buf f1, f2;
        two_frames(&w, &f1, &f2);
        f1.data[pos] ^= 0x20;
        CHECK_RC(feed(&w.r, &f1), FM_EAUTH);
        CHECK_EQ_INT(w.r.got.n, 0);
        expect_dead(&w.r, FM_EAUTH);
        CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_ESTABLISHED);
        fm_buf_free(&f1);
        fm_buf_free(&f2);
        world_free(&w);
    }
}

static void test_frame_truncated(void)
{
    world w;
    established(&w, 70);
    fm_buf f1, f2;
    two_frames(&w, &f1, &f2);
    CHECK_OK(fm_session_input(w.r.s, f1.data, f1.len - 1, &w.r.out, on_frame, &w.r.got));
    CHECK_EQ_INT(w.r.got.n, 0); /* incomplete: nothing delivered */
    CHECK_RC(fm_session_eof(w.r.s), FM_ETRUNC);
    CHECK_EQ_INT(w.r.got.n, 0);
    expect_dead(&w.r, FM_ETRUNC);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&w);
    /* cut inside the length header */
    established(&w, 70);
    two_frames(&w, &f1, &f2);
    CHECK_OK(feed(&w.r, &f1));
    CHECK_OK(fm_session_input(w.r.s, f2.data, 2, &w.r.out, on_frame, &w.r.got));
    CHECK_RC(fm_session_eof(w.r.s), FM_ETRUNC);
    CHECK_EQ_INT(w.r.got.n, 1);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&w);
    /* a record cut short and followed by the next one: the lengths no longer line up */
    established(&w, 70);
    two_frames(&w, &f1, &f2);
    f1.len -= 1;
    CHECK_OK(feed(&w.r, &f1));
    CHECK_RC(feed(&w.r, &f2), FM_EAUTH);
    CHECK_EQ_INT(w.r.got.n, 0);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&w);
}

static void test_frame_reordered_duplicated_dropped(void)
{
    world w;
    fm_buf f1, f2;
    established(&w, 70); /* reordered */
    two_frames(&w, &f1, &f2);
    CHECK_RC(feed(&w.r, &f2), FM_EAUTH);
    CHECK_EQ_INT(w.r.got.n, 0);
    expect_dead(&w.r, FM_EAUTH);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&w);
    established(&w, 70); /* duplicated */
    two_frames(&w, &f1, &f2);
    CHECK_OK(feed(&w.r, &f1));
    CHECK_RC(feed(&w.r, &f1), FM_EAUTH);
    CHECK_EQ_INT(w.r.got.n, 1);
    expect_dead(&w.r, FM_EAUTH);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&w);
    established(&w, 70); /* a frame from another session of the same devices */
    world other;
    established(&other, 71);
    two_frames(&other, &f1, &f2);
    CHECK_RC(feed(&w.r, &f1), FM_EAUTH);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    world_free(&other);
    world_free(&w);
}

static void test_frame_size_bounds(void)
{
    world w;
    established(&w, 70);
    uint8_t *big = calloc(1, FM_MAX_FRAME_PAYLOAD + 1);
    CHECK(big != NULL);
    big[FM_MAX_FRAME_PAYLOAD - 1] = 0xee;
    CHECK_RC(fm_session_send(w.i.s, big, FM_MAX_FRAME_PAYLOAD + 1, &w.i.out), FM_ELIMIT);
    CHECK_EQ_INT(w.i.out.len, 0);
    CHECK_OK(fm_session_send(w.i.s, big, FM_MAX_FRAME_PAYLOAD, &w.i.out)); /* at the bound */
    CHECK_EQ_INT(w.i.out.len, 4 + FM_MAX_FRAME_BYTES);
    CHECK_OK(deliver(&w.i, &w.r, 65536));
    CHECK(frame_is(&w.r.got, 0, big, FM_MAX_FRAME_PAYLOAD));
    /* a record header past the bound is refused before any body byte */
    const uint8_t over[4] = {(FM_MAX_FRAME_BYTES + 1) >> 24, (FM_MAX_FRAME_BYTES + 1) >> 16 & 0xff,
                             (FM_MAX_FRAME_BYTES + 1) >> 8 & 0xff, (FM_MAX_FRAME_BYTES + 1) & 0xff};
    CHECK_RC(fm_session_input(w.r.s, over, 4, &w.r.out, on_frame, &w.r.got), FM_ELIMIT);
    expect_dead(&w.r, FM_ELIMIT);
    world_free(&w);
    /* records too short to hold a tag, or empty */
    established(&w, 70);
    const uint8_t tiny[5] = {0, 0, 0, 1, 0};
    CHECK_RC(fm_session_input(w.r.s, tiny, 5, &w.r.out, on_frame, &w.r.got), FM_EAUTH);
    world_free(&w);
    established(&w, 70);
    const uint8_t empty[4] = {0};
    CHECK_RC(fm_session_input(w.r.s, empty, 4, &w.r.out, on_frame, &w.r.got), FM_EDECODE);
    world_free(&w);
    free(big);
}

/* The reader holds one record at a time, and after a big one keeps only a small buffer. */
static void test_frame_reader_gives_back(void)
{
    enum { BIG = 100000 };
    uint8_t *rec = calloc(1, 4 + BIG);
    CHECK(rec != NULL);
    rec[1] = BIG >> 16, rec[2] = BIG >> 8 & 0xff, rec[3] = BIG & 0xff;
    rec[4 + BIG - 1] = 0x5a;
    fm_frame_reader r;
    fm_frame_reader_init(&r);
    size_t used;
    bool done;
    CHECK_OK(fm_frame_reader_feed(&r, rec, 4 + BIG, BIG, &used, &done));
    CHECK(done && used == 4 + BIG && r.body.len == BIG && r.body.data[BIG - 1] == 0x5a);
    fm_frame_reader_next(&r);
    CHECK(r.body.cap <= FM_FRAME_KEEP_BYTES && fm_frame_reader_pending(&r) == 0);
    const uint8_t small[7] = {0, 0, 0, 3, 1, 2, 3};
    CHECK_OK(fm_frame_reader_feed(&r, small, sizeof small, BIG, &used, &done));
    CHECK(done && r.body.len == 3 && r.body.data[2] == 3);
    size_t cap = r.body.cap;
    fm_frame_reader_next(&r);
    CHECK_EQ_INT(r.body.cap, cap); /* a small buffer stays for the next record */
    fm_frame_reader_free(&r);
    free(rec);
}

static void test_close_and_eof(void)
{
    world w;
    established(&w, 70);
    CHECK_OK(fm_session_send(w.i.s, (const uint8_t *)"bye", 3, &w.i.out));
    CHECK_OK(fm_session_close(w.i.s, &w.i.out));
    CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_CLOSED);
    CHECK_RC(fm_session_send(w.i.s, (const uint8_t *)"x", 1, &w.i.out), FM_ECLOSED);
    CHECK_OK(deliver(&w.i, &w.r, 1));
    CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_CLOSED);
    CHECK(frame_is(&w.r.got, 0, "bye", 3));
    CHECK_OK(fm_session_eof(w.r.s));
    CHECK_RC(fm_session_send(w.r.s, (const uint8_t *)"x", 1, &w.r.out), FM_ECLOSED);
    CHECK_RC(fm_session_input(w.r.s, (const uint8_t *)"x", 1, &w.r.out, NULL, NULL), FM_ECLOSED);
    world_free(&w);
    /* end of stream at a record boundary without a final frame: the tail may be missing */
    established(&w, 70);
    CHECK_RC(fm_session_eof(w.r.s), FM_ECLOSED);
    world_free(&w);
    /* bytes after the final frame */
    established(&w, 70);
    CHECK_OK(fm_session_close(w.i.s, &w.i.out));
    fm_buf_append(&w.i.out, "\0\0\0\1x", 5);
    CHECK_RC(deliver(&w.i, &w.r, SIZE_MAX), FM_ECLOSED);
    world_free(&w);
}

static void test_timeout(void)
{
    world w;
    world_init(&w, 0x11, 50);
    sessions_new(&w);
    CHECK_EQ_INT(fm_session_deadline(w.i.s), NOW + FM_HANDSHAKE_TIMEOUT_MS);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    w.te.now = NOW + FM_HANDSHAKE_TIMEOUT_MS - 1;
    CHECK_OK(fm_session_tick(w.i.s));
    CHECK_OK(deliver(&w.i, &w.r, SIZE_MAX));
    w.te.now = NOW + FM_HANDSHAKE_TIMEOUT_MS;
    CHECK_RC(fm_session_tick(w.r.s), FM_ETIMEOUT);
    CHECK_RC(deliver(&w.r, &w.i, SIZE_MAX), FM_ETIMEOUT); /* checked on input too */
    CHECK_EQ_INT(w.i.out.len, 0);
    CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_FAILED);
    CHECK_RC(fm_session_tick(w.i.s), FM_ETIMEOUT);
    world_free(&w);
    /* a clock that steps back does not time out, an established session never does */
    world_init(&w, 0x11, 51);
    sessions_new(&w);
    w.te.now = NOW - DAY_MS;
    CHECK_OK(fm_session_tick(w.i.s));
    w.te.now = NOW;
    CHECK_OK(handshake(&w, SIZE_MAX));
    w.te.now = NOW + 1000 * (uint64_t)DAY_MS;
    CHECK_OK(fm_session_tick(w.i.s));
    CHECK_EQ_INT(fm_session_deadline(w.i.s), UINT64_MAX);
    world_free(&w);
}

static void test_api_misuse(void)
{
    world w, other;
    world_init(&w, 0x11, 60);
    world_init(&other, 0x44, 60);
    fm_session *s;
    /* certificate of another device, of another mesh, garbage */
    CHECK_RC(
        fm_session_new(&w.te.env, w.i.id, w.r.cert, w.r.cert_len, w.i.m, FM_SESSION_INITIATOR, &s),
        FM_EINVAL);
    CHECK_RC(fm_session_new(&w.te.env, w.i.id, other.i.cert, other.i.cert_len, w.i.m,
                            FM_SESSION_INITIATOR, &s),
             FM_EMESH);
    CHECK_RC(fm_session_new(&w.te.env, w.i.id, w.i.cert, 10, w.i.m, FM_SESSION_INITIATOR, &s),
             FM_ETRUNC);
    CHECK_RC(
        fm_session_new(&w.te.env, w.i.id, w.i.cert, w.i.cert_len, w.i.m, (fm_session_role)5, &s),
        FM_EINVAL);
    sessions_new(&w);
    uint8_t peer[32];
    CHECK_RC(fm_session_input(w.i.s, (const uint8_t *)"x", 1, &w.i.out, NULL, NULL), FM_ESTATE);
    CHECK_RC(fm_session_send(w.i.s, (const uint8_t *)"x", 1, &w.i.out), FM_ESTATE);
    CHECK_RC(fm_session_start(w.r.s, &w.r.out), FM_ESTATE);
    CHECK_RC(fm_session_peer_id(w.i.s, peer), FM_ESTATE);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    CHECK_RC(fm_session_start(w.i.s, &w.i.out), FM_ESTATE);
    CHECK_EQ_INT(fm_session_state(w.i.s), FM_SESSION_WAIT_MSG2); /* unchanged */
    CHECK_OK(pump(&w, SIZE_MAX));
    CHECK_EQ_INT(fm_session_state(w.r.s), FM_SESSION_ESTABLISHED);
    world_free(&w);
    world_free(&other);
}

/* The push state made by init_pull from a header we drew equals libsodium's init_push state. */
static void test_stream_header_equivalence(void)
{
    uint8_t key[32], hdr[24], c1[17 + 5], c2[17 + 5];
    memset(key, 0x5a, sizeof key);
    crypto_secretstream_xchacha20poly1305_state a, b;
    crypto_secretstream_xchacha20poly1305_init_push(&a, hdr, key);
    crypto_secretstream_xchacha20poly1305_init_pull(&b, hdr, key);
    for (int i = 0; i < 3; i++) {
        crypto_secretstream_xchacha20poly1305_push(&a, c1, NULL, (const uint8_t *)"abcde", 5, NULL,
                                                   0, 0);
        crypto_secretstream_xchacha20poly1305_push(&b, c2, NULL, (const uint8_t *)"abcde", 5, NULL,
                                                   0, 0);
        CHECK_MEM(c1, c2, sizeof c1);
    }
}

/* ---- golden vectors -------------------------------------------------------------------------- */

static void vec_hex(fm_buf *b, const char *name, const uint8_t *p, size_t n)
{
    fm_buf_printf(b, "%s ", name);
    for (size_t i = 0; i < n; i++)
        fm_buf_printf(b, "%02x", p[i]);
    fm_buf_putc(b, '\n');
}

static void vec_move(fm_buf *b, const char *name, side *from, side *to)
{
    vec_hex(b, name, from->out.data, from->out.len);
    CHECK_OK(deliver(from, to, SIZE_MAX));
}

/* The vectors' randomness: splitmix64 from state 0, each word's 8 bytes little-endian (every draw
 * here is a multiple of 8 bytes). Independent of the test harness's generator. */
static void vector_random(void *ctx, void *buf, size_t len)
{
    fm_test_env *te = ctx;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t z = (te->rng += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        for (size_t k = 0; k < 8 && i + k < len; k++)
            ((uint8_t *)buf)[i + k] = (uint8_t)(z >> (8 * k));
    }
}

static void session_vectors(fm_buf *b)
{
    world w;
    world_init(&w, 0x11, 1);
    w.te.env.random = vector_random;
    w.te.rng = 0;
    fm_test_env probe = w.te; /* the same random stream, to list the bytes drawn */
    uint8_t drawn[32 + 32 + 24 + 24];
    vector_random(&probe, drawn, sizeof drawn);
    vec_hex(b, "mesh_id", w.mesh, 32);
    vec_hex(b, "initiator_cert", w.i.cert, w.i.cert_len);
    vec_hex(b, "responder_cert", w.r.cert, w.r.cert_len);
    vec_hex(b, "random", drawn, sizeof drawn);
    sessions_new(&w);
    CHECK_OK(fm_session_start(w.i.s, &w.i.out));
    vec_move(b, "msg1", &w.i, &w.r);
    vec_move(b, "msg2", &w.r, &w.i);
    vec_move(b, "msg3_and_initiator_start", &w.i, &w.r);
    vec_move(b, "responder_start", &w.r, &w.i);
    CHECK_OK(fm_session_send(w.i.s, (const uint8_t *)"hello", 5, &w.i.out));
    vec_move(b, "frame_i2r_hello", &w.i, &w.r);
    CHECK_OK(fm_session_send(w.r.s, (const uint8_t *)"world", 5, &w.r.out));
    vec_move(b, "frame_r2i_world", &w.r, &w.i);
    CHECK(frame_is(&w.r.got, 0, "hello", 5) && frame_is(&w.i.got, 0, "world", 5));
    world_free(&w);
}

static const char SESSION_VECTOR_HEADER[] =
    "# fieldmesh golden vectors: secure session handshake and first frames (protocol 1).\n"
    "# Generated by tests/unit/test_session.c (FM_WRITE_VECTORS=1); checked byte for byte.\n"
    "# Each line: <name> <lowercase hex>. Every wire value is whole records (4-byte big-endian\n"
    "# length + body), exactly as one side hands them to the other.\n"
    "# Setup: authority, initiator, responder = Ed25519 seeds of 32 bytes 0x11, 0x22, 0x33;\n"
    "# certificates name \"dev\", perms 3, not_before = issued_at = 1699999999000, not_after\n"
    "# 1700086400000; both sides' clock reads 1700000000000.\n"
    "# random: the environment's random bytes (splitmix64 from state 0, words little-endian) in\n"
    "# the order drawn: initiator ephemeral seed (32), responder ephemeral seed (32), initiator\n"
    "# stream header (24), responder stream header (24).\n"
    "# Ephemerals: crypto_kx_seed_keypair(seed). See crypto/session.c for the key schedule.\n";

static void test_golden_vectors(void)
{
    fm_buf b;
    fm_buf_init(&b);
    fm_buf_append(&b, SESSION_VECTOR_HEADER, strlen(SESSION_VECTOR_HEADER));
    session_vectors(&b);
    char *want = fm_buf_take_str(&b);
    fm_test_golden(FM_VECTORS_DIR "/session_v1.txt", want);
    free(want);
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    RUN(test_handshake_and_frames);
    RUN(test_roles_swapped);
    RUN(test_admitted_by_installed_cert);
    RUN(test_wrong_mesh);
    RUN(test_unknown_device);
    RUN(test_expired);
    RUN(test_revoked);
    RUN(test_bad_transcript_signature);
    RUN(test_mitm_ephemeral);
    RUN(test_tampered_handshake);
    RUN(test_replayed_handshake);
    RUN(test_handshake_bounds);
    RUN(test_frame_tampered);
    RUN(test_frame_truncated);
    RUN(test_frame_reordered_duplicated_dropped);
    RUN(test_frame_size_bounds);
    RUN(test_frame_reader_gives_back);
    RUN(test_close_and_eof);
    RUN(test_timeout);
    RUN(test_api_misuse);
    RUN(test_stream_header_equivalence);
    RUN(test_golden_vectors);
    TEST_MAIN_END();
}
