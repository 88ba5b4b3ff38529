/*
 * fuzz_rig.h — shared by the session fuzz targets: a mesh authority, two admitted devices and a
 * deterministic environment, so that one input always meets the same keys. A handshake recorded
 * from the rig (seed corpora) therefore stays valid, and the fuzzer can mutate past the AEAD.
 * Header-only (static functions): the FM_FUZZ build compiles only tests/fuzz/fuzz_*.c.
 */
#ifndef FM_FUZZ_RIG_H
#define FM_FUZZ_RIG_H

#include "crypto/cert.h"
#include "crypto/identity.h"
#include "crypto/session.h"

#include <string.h>

enum { RIG_NOW_MS = 1700000000 };

typedef struct rig_env {
    fm_env env;
    uint64_t now;
    uint64_t state;
} rig_env;

typedef struct rig_party {
    fm_identity *id;
    fm_membership *m;
    uint8_t cert[FM_MAX_CERT_BYTES];
    size_t cert_len;
    fm_session *s;
    fm_buf out;
} rig_party;

typedef struct rig {
    rig_env e;
    fm_identity *auth;
    uint8_t mesh[FM_ID_BYTES];
    rig_party i, r;
} rig;

static uint64_t rig_now(void *ctx)
{
    return ((rig_env *)ctx)->now;
}

/* splitmix64: reproducible "randomness" */
static void rig_random(void *ctx, void *buf, size_t len)
{
    rig_env *e = ctx;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t z = (e->state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        for (size_t k = 0; k < 8 && i + k < len; k++)
            ((uint8_t *)buf)[i + k] = (uint8_t)(z >> (8 * k));
    }
}

static int rig_party_init(rig *g, rig_party *p, uint8_t seed_byte)
{
    uint8_t seed[32], id[FM_ID_BYTES];
    fm_cert c;
    memset(seed, seed_byte, sizeof seed);
    fm_buf_init(&p->out);
    if (fm_identity_from_seed(seed, &p->id) != 0)
        return -1;
    fm_identity_public(p->id, id);
    if (fm_membership_new(g->mesh, FM_ADMIT_PRESENTED, &p->m) != 0 ||
        fm_cert_issue(g->auth, g->mesh, id, "dev", FM_PERM_ALL, 0, UINT64_MAX, 0, &c) != 0 ||
        fm_cert_encode(&c, p->cert, &p->cert_len) != 0)
        return -1;
    return 0;
}

/* Both devices with fresh sessions: initiator (not started) and responder. */
static int rig_init(rig *g)
{
    uint8_t seed[32];
    memset(g, 0, sizeof *g);
    g->e.env = (fm_env){FM_ENV_VERSION, &g->e, rig_now, rig_random};
    g->e.now = RIG_NOW_MS;
    memset(seed, 0x11, sizeof seed);
    if (fm_identity_from_seed(seed, &g->auth) != 0)
        return -1;
    fm_identity_public(g->auth, g->mesh);
    if (rig_party_init(g, &g->i, 0x22) != 0 || rig_party_init(g, &g->r, 0x33) != 0)
        return -1;
    if (fm_session_new(&g->e.env, g->i.id, g->i.cert, g->i.cert_len, g->i.m, FM_SESSION_INITIATOR,
                       &g->i.s) != 0 ||
        fm_session_new(&g->e.env, g->r.id, g->r.cert, g->r.cert_len, g->r.m, FM_SESSION_RESPONDER,
                       &g->r.s) != 0)
        return -1;
    return 0;
}

static void rig_party_free(rig_party *p)
{
    fm_session_free(p->s);
    fm_membership_free(p->m);
    fm_identity_free(p->id);
    fm_buf_free(&p->out);
}

static void rig_free(rig *g)
{
    rig_party_free(&g->i);
    rig_party_free(&g->r);
    fm_identity_free(g->auth);
}

/* Hands everything `from` has to send to `to`. */
static int rig_deliver(rig_party *from, rig_party *to)
{
    int rc = fm_session_input(to->s, from->out.data, from->out.len, &to->out, NULL, NULL);
    fm_buf_reset(&from->out);
    return rc;
}

/* Runs the handshake through `steps` deliveries (msg1, msg2, msg3+start, start). */
static int rig_handshake(rig *g, int steps)
{
    if (fm_session_start(g->i.s, &g->i.out) != 0)
        return -1;
    for (int k = 0; k < steps; k++) {
        int rc = k % 2 == 0 ? rig_deliver(&g->i, &g->r) : rig_deliver(&g->r, &g->i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Feeds data to a session in chunks of `chunk` bytes (0: all at once); stops at an error. */
static int rig_feed(fm_session *s, const uint8_t *data, size_t size, size_t chunk, fm_buf *out,
                    fm_frame_fn fn, void *arg)
{
    if (chunk == 0)
        chunk = size ? size : 1;
    int rc = 0;
    for (size_t off = 0; off < size && rc == 0; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        rc = fm_session_input(s, data + off, n, out, fn, arg);
    }
    return rc;
}

#endif
