/*
 * session.c — the secure session state machine (see session.h for the message flow).
 *
 * Key schedule (BLAKE2b throughout; I = initiator = crypto_kx client, R = responder = server):
 *   th0      = H("fieldmesh-session-v1" || version || mesh_id)      prologue: binds the mesh
 *   th      <- H(th || bytes) for every handshake byte, in order  (msg1; msg2 head; msg2 ct; msg3)
 *   base_*   = crypto_kx session keys of the two ephemerals, one per direction
 *   hs_*     = H_key=base_*("fm-hs-*"  || th after msg2's ephemeral)
 *   app_*    = H_key=base_*("fm-app-*" || th after msg3)
 * Handshake AEAD keys are used once each, so a zero nonce is safe; the ciphertext's associated
 * data is the transcript so far. Secrets live in one block of sodium_malloc'd memory (a slot of
 * a slab, below): `cur` holds what is committed, `tmp` the work in progress of one message, wiped
 * on every exit. A message handler changes the session only after every check passed.
 */
#include "crypto/session.h"

#include "crypto/frame.h"
#include "crypto/identity.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define PROLOGUE "fieldmesh-session-v1"
#define MESH_TAG_LABEL "fieldmesh-mesh-tag-v1"
#define SIG_DOMAIN "fieldmesh-handshake-v1"

typedef crypto_secretstream_xchacha20poly1305_state stream_state;

enum {
    KEY = 32,
    HEAD = 2, /* version, message type */
    MSG1 = 1,
    MSG2 = 2,
    MSG3 = 3,
    MESH_TAG = 16,
    MSG1_BYTES = HEAD + KEY + MESH_TAG,
    AEAD_ABYTES = crypto_aead_xchacha20poly1305_ietf_ABYTES,
    SS_ABYTES = crypto_secretstream_xchacha20poly1305_ABYTES,
    SS_HEADER = crypto_secretstream_xchacha20poly1305_HEADERBYTES,
    START_BYTES = SS_HEADER + SS_ABYTES,
    PAYLOAD_MAX = 2 + FM_MAX_CERT_BYTES + FM_SIG_BYTES, /* cert length, cert, signature */
    SIGNED_MAX = 1 + KEY + FM_MAX_CERT_BYTES,           /* role, transcript, cert */
};

_Static_assert((int)FM_FRAME_OVERHEAD == (int)SS_ABYTES, "frame overhead is the secretstream tag");
_Static_assert(HEAD + KEY + PAYLOAD_MAX + AEAD_ABYTES <= FM_MAX_HANDSHAKE_BYTES, "msg2 fits");
_Static_assert((int)START_BYTES <= (int)FM_MAX_HANDSHAKE_BYTES, "stream start fits");
_Static_assert(FM_MAX_FRAME_BYTES <= UINT32_MAX, "record length fits the header");
_Static_assert(FM_MAX_FRAME_PAYLOAD <= crypto_secretstream_xchacha20poly1305_MESSAGEBYTES_MAX,
               "secretstream message bound");

typedef struct keys {
    uint8_t e_sk[KEY];
    uint8_t e_pk[KEY];
    uint8_t base_i2r[KEY], base_r2i[KEY];
    uint8_t hs_i2r[KEY], hs_r2i[KEY];
    uint8_t app_i2r[KEY], app_r2i[KEY];
    stream_state tx, rx;
    uint8_t plain[PAYLOAD_MAX];
} keys;

typedef struct secrets {
    keys cur;
    keys tmp;
} secrets;

/* Sessions' secrets come from slabs of sodium_malloc'd memory (locked, between guard pages),
 * SLAB_SLOTS at a time, and go back wiped to a free list shared by every thread. A sodium_malloc
 * and sodium_free per session were seven system calls, and their mprotect and munmap flushed
 * the TLB of every thread of the process (1000 simulated nodes: 4 % of the CPU). The guard pages
 * are around a slab, not each slot: what a session writes there has a fixed size. Slabs last as
 * long as the process. */
enum { SLAB_SLOTS = 32 };

typedef union slot {
    secrets sec;
    union slot *next; /* on the free list */
} slot;

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static slot *slots_free;

static secrets *secrets_new(void)
{
    pthread_mutex_lock(&slots_lock);
    slot *slab = slots_free ? NULL : sodium_malloc(SLAB_SLOTS * sizeof *slab);
    for (uint32_t i = 0; slab && i < SLAB_SLOTS; i++) {
        slab[i].next = slots_free;
        slots_free = &slab[i];
    }
    slot *sl = slots_free;
    if (sl)
        slots_free = sl->next;
    pthread_mutex_unlock(&slots_lock);
    if (!sl)
        return NULL;
    sodium_memzero(sl, sizeof *sl);
    return &sl->sec;
}

static void secrets_free(secrets *sec)
{
    if (!sec)
        return;
    slot *sl = (slot *)sec;
    sodium_memzero(sl, sizeof *sl);
    pthread_mutex_lock(&slots_lock);
    sl->next = slots_free;
    slots_free = sl;
    pthread_mutex_unlock(&slots_lock);
}

struct fm_session {
    const fm_env *env;
    const fm_identity *id;
    const fm_membership *m;
    fm_session_role role;
    enum fm_session_state state;
    int err;
    uint64_t started; /* handshake clock */
    uint64_t now;     /* read once per call */
    uint8_t mesh_id[FM_ID_BYTES];
    uint8_t my_cert[FM_MAX_CERT_BYTES];
    size_t my_cert_len;
    uint8_t th[KEY];
    fm_cert peer; /* valid once state >= WAIT_STREAM */
    fm_frame_reader rd;
    fm_buf plain; /* a received frame, wiped after delivery */
    secrets *sec; /* a slot of a slab (secrets_new) */
};

static const uint8_t ZERO_NONCE[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];

/* ---- primitives ------------------------------------------------------------------------------ */

static void mix(uint8_t th[KEY], const uint8_t *p, size_t n)
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, KEY);
    crypto_generichash_update(&st, th, KEY);
    crypto_generichash_update(&st, p, n);
    crypto_generichash_final(&st, th, KEY);
}

static void derive(uint8_t out[KEY], const uint8_t base[KEY], const char *label,
                   const uint8_t th[KEY])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, base, KEY, KEY);
    crypto_generichash_update(&st, (const uint8_t *)label, strlen(label));
    crypto_generichash_update(&st, th, KEY);
    crypto_generichash_final(&st, out, KEY);
    sodium_memzero(&st, sizeof st);
}

static void prologue(uint8_t th[KEY], const uint8_t mesh_id[FM_ID_BYTES])
{
    uint8_t ver = FM_SESSION_PROTOCOL;
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, KEY);
    crypto_generichash_update(&st, (const uint8_t *)PROLOGUE, strlen(PROLOGUE));
    crypto_generichash_update(&st, &ver, 1);
    crypto_generichash_update(&st, mesh_id, FM_ID_BYTES);
    crypto_generichash_final(&st, th, KEY);
}

/* Tells a responder which mesh the initiator wants without naming it to listeners: keyed by the
 * mesh id, salted by the fresh ephemeral, so two sessions' tags are unlinkable. */
static void mesh_tag(uint8_t out[MESH_TAG], const uint8_t mesh_id[FM_ID_BYTES],
                     const uint8_t e_pk[KEY])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, mesh_id, FM_ID_BYTES, MESH_TAG);
    crypto_generichash_update(&st, (const uint8_t *)MESH_TAG_LABEL, strlen(MESH_TAG_LABEL));
    crypto_generichash_update(&st, e_pk, KEY);
    crypto_generichash_final(&st, out, MESH_TAG);
}

static void new_ephemeral(fm_session *s, keys *k)
{
    uint8_t seed[crypto_kx_SEEDBYTES];
    s->env->random(s->env->ctx, seed, sizeof seed);
    crypto_kx_seed_keypair(k->e_pk, k->e_sk, seed);
    sodium_memzero(seed, sizeof seed);
}

/* Both directions' base keys from our ephemeral and the peer's; FM_EAUTH for a low-order point. */
static int kx(const fm_session *s, keys *k, const uint8_t peer_e[KEY])
{
    int rc;
    if (s->role == FM_SESSION_INITIATOR)
        rc = crypto_kx_client_session_keys(k->base_r2i, k->base_i2r, k->e_pk, k->e_sk, peer_e);
    else
        rc = crypto_kx_server_session_keys(k->base_i2r, k->base_r2i, k->e_pk, k->e_sk, peer_e);
    return rc == 0 ? 0 : FM_EAUTH;
}

static void hs_keys(keys *k, const uint8_t th[KEY])
{
    derive(k->hs_i2r, k->base_i2r, "fm-hs-i2r", th);
    derive(k->hs_r2i, k->base_r2i, "fm-hs-r2i", th);
}

/* Session keys; the handshake's secrets are no longer needed after this. */
static void app_keys(keys *k, const uint8_t th[KEY])
{
    derive(k->app_i2r, k->base_i2r, "fm-app-i2r", th);
    derive(k->app_r2i, k->base_r2i, "fm-app-r2i", th);
    sodium_memzero(k->e_sk, KEY);
    sodium_memzero(k->base_i2r, KEY);
    sodium_memzero(k->base_r2i, KEY);
    sodium_memzero(k->hs_i2r, KEY);
    sodium_memzero(k->hs_r2i, KEY);
}

/* ---- identity payload: cert length (2 bytes BE), cert, signature ------------------------------
 */

static size_t signed_input(uint8_t out[SIGNED_MAX], uint8_t role_ch, const uint8_t th[KEY],
                           const uint8_t *cert, size_t cert_len)
{
    FM_ASSERT(cert_len <= FM_MAX_CERT_BYTES);
    out[0] = role_ch;
    memcpy(out + 1, th, KEY);
    memcpy(out + 1 + KEY, cert, cert_len);
    return 1 + KEY + cert_len;
}

/* Our certificate and our signature over the transcript, sealed under key. */
static void seal_identity(const fm_session *s, keys *k, const uint8_t key[KEY],
                          const uint8_t th[KEY], uint8_t *ct, size_t *ct_len)
{
    uint8_t msg[SIGNED_MAX], sig[FM_SIG_BYTES];
    uint8_t role_ch = s->role == FM_SESSION_INITIATOR ? 'I' : 'R';
    size_t n = signed_input(msg, role_ch, th, s->my_cert, s->my_cert_len);
    fm_identity_sign(s->id, SIG_DOMAIN, msg, n, sig);
    k->plain[0] = (uint8_t)(s->my_cert_len >> 8);
    k->plain[1] = (uint8_t)s->my_cert_len;
    memcpy(k->plain + 2, s->my_cert, s->my_cert_len);
    memcpy(k->plain + 2 + s->my_cert_len, sig, FM_SIG_BYTES);
    size_t plen = 2 + s->my_cert_len + FM_SIG_BYTES;
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &clen, k->plain, plen, th, KEY, NULL, ZERO_NONCE,
                                               key);
    *ct_len = (size_t)clen;
}

/* Opens the peer's identity payload and checks it: certificate (decode, mesh, authority signature,
 * revocation, admission, validity) and the peer's signature over the transcript. On success *gov
 * gets the governing certificate. */
static int open_identity(const fm_session *s, keys *k, const uint8_t key[KEY],
                         const uint8_t th[KEY], const uint8_t *ct, size_t ct_len, fm_cert *gov)
{
    if (ct_len < AEAD_ABYTES || ct_len - AEAD_ABYTES > PAYLOAD_MAX)
        return FM_EDECODE;
    unsigned long long plen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(k->plain, &plen, NULL, ct, ct_len, th, KEY,
                                                   ZERO_NONCE, key) != 0)
        return FM_EAUTH;
    if (plen < 2 + FM_SIG_BYTES)
        return FM_EDECODE;
    size_t cert_len = (size_t)k->plain[0] << 8 | k->plain[1];
    if (cert_len != plen - 2 - FM_SIG_BYTES)
        return FM_EDECODE;
    const uint8_t *cert = k->plain + 2;
    fm_cert presented;
    int rc = fm_cert_decode(cert, cert_len, &presented);
    if (rc)
        return rc;
    rc = fm_membership_check_cert(s->m, &presented, s->now, gov);
    if (rc)
        return rc;
    uint8_t msg[SIGNED_MAX];
    uint8_t role_ch = s->role == FM_SESSION_INITIATOR ? 'R' : 'I';
    size_t n = signed_input(msg, role_ch, th, cert, cert_len);
    return fm_sig_verify(presented.device_id, SIG_DOMAIN, msg, n, cert + cert_len);
}

/* ---- records out ----------------------------------------------------------------------------- */

static int put_record(fm_buf *out, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    fm_frame_put_header(out, alen + blen);
    fm_buf_append(out, a, alen);
    fm_buf_append(out, b, blen);
    return out->oom ? FM_ENOMEM : 0;
}

/* Our stream start: a header from env randomness and an empty message bound to the transcript.
 * libsodium's init_push draws the header from its own RNG; init_pull on a header we drew sets up
 * the identical state (the header is the state's only random input), keeping runs reproducible. */
static int put_stream_start(const fm_session *s, keys *k, const uint8_t th[KEY], fm_buf *out)
{
    uint8_t rec[START_BYTES];
    const uint8_t *key = s->role == FM_SESSION_INITIATOR ? k->app_i2r : k->app_r2i;
    s->env->random(s->env->ctx, rec, SS_HEADER);
    crypto_secretstream_xchacha20poly1305_init_pull(&k->tx, rec, key);
    crypto_secretstream_xchacha20poly1305_push(&k->tx, rec + SS_HEADER, NULL, NULL, 0, th, KEY,
                                               crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
    return put_record(out, rec, sizeof rec, NULL, 0);
}

/* ---- handshake steps ------------------------------------------------------------------------- */

static int check_head(const uint8_t *msg, size_t len, uint8_t type)
{
    if (len < HEAD)
        return FM_EDECODE;
    if (msg[0] != FM_SESSION_PROTOCOL)
        return FM_EVERSION;
    return msg[1] == type ? 0 : FM_EDECODE;
}

static void commit(fm_session *s, const uint8_t th[KEY], enum fm_session_state next)
{
    s->sec->cur = s->sec->tmp;
    if (th != s->th)
        memcpy(s->th, th, KEY);
    s->state = next;
}

/* Initiator: msg1. */
static int step_start(fm_session *s, fm_buf *out)
{
    keys *k = &s->sec->tmp;
    uint8_t msg[MSG1_BYTES] = {FM_SESSION_PROTOCOL, MSG1};
    uint8_t th[KEY];
    new_ephemeral(s, k);
    memcpy(msg + HEAD, k->e_pk, KEY);
    mesh_tag(msg + HEAD + KEY, s->mesh_id, k->e_pk);
    memcpy(th, s->th, KEY);
    mix(th, msg, sizeof msg);
    int rc = put_record(out, msg, sizeof msg, NULL, 0);
    if (rc)
        return rc;
    commit(s, th, FM_SESSION_WAIT_MSG2);
    return 0;
}

/* Responder: msg1 in, msg2 out. */
static int step_msg1(fm_session *s, const uint8_t *msg, size_t len, fm_buf *out)
{
    int rc = check_head(msg, len, MSG1);
    if (rc)
        return rc;
    if (len != MSG1_BYTES)
        return FM_EDECODE;
    uint8_t tag[MESH_TAG];
    mesh_tag(tag, s->mesh_id, msg + HEAD);
    if (sodium_memcmp(tag, msg + HEAD + KEY, MESH_TAG) != 0)
        return FM_EMESH;
    keys *k = &s->sec->tmp;
    uint8_t th[KEY], head[HEAD + KEY] = {FM_SESSION_PROTOCOL, MSG2};
    memcpy(th, s->th, KEY);
    mix(th, msg, len);
    new_ephemeral(s, k);
    if ((rc = kx(s, k, msg + HEAD)) != 0)
        return rc;
    memcpy(head + HEAD, k->e_pk, KEY);
    mix(th, head, sizeof head);
    hs_keys(k, th);
    uint8_t ct[PAYLOAD_MAX + AEAD_ABYTES];
    size_t ct_len;
    seal_identity(s, k, k->hs_r2i, th, ct, &ct_len);
    mix(th, ct, ct_len);
    if ((rc = put_record(out, head, sizeof head, ct, ct_len)) != 0)
        return rc;
    commit(s, th, FM_SESSION_WAIT_MSG3);
    return 0;
}

/* Initiator: msg2 in (responder authenticated), msg3 and our stream start out. */
static int step_msg2(fm_session *s, const uint8_t *msg, size_t len, fm_buf *out)
{
    int rc = check_head(msg, len, MSG2);
    if (rc)
        return rc;
    if (len < HEAD + KEY + AEAD_ABYTES)
        return FM_EDECODE;
    keys *k = &s->sec->tmp;
    *k = s->sec->cur;
    if ((rc = kx(s, k, msg + HEAD)) != 0)
        return rc;
    uint8_t th[KEY];
    memcpy(th, s->th, KEY);
    mix(th, msg, HEAD + KEY);
    hs_keys(k, th);
    fm_cert peer;
    const uint8_t *ct2 = msg + HEAD + KEY;
    if ((rc = open_identity(s, k, k->hs_r2i, th, ct2, len - HEAD - KEY, &peer)) != 0)
        return rc;
    mix(th, ct2, len - HEAD - KEY);
    uint8_t msg3[HEAD + PAYLOAD_MAX + AEAD_ABYTES] = {FM_SESSION_PROTOCOL, MSG3};
    size_t ct_len;
    seal_identity(s, k, k->hs_i2r, th, msg3 + HEAD, &ct_len);
    mix(th, msg3, HEAD + ct_len);
    app_keys(k, th);
    if ((rc = put_record(out, msg3, HEAD + ct_len, NULL, 0)) != 0 ||
        (rc = put_stream_start(s, k, th, out)) != 0)
        return rc;
    s->peer = peer;
    commit(s, th, FM_SESSION_WAIT_STREAM);
    return 0;
}

/* Responder: msg3 in (initiator authenticated), our stream start out. */
static int step_msg3(fm_session *s, const uint8_t *msg, size_t len, fm_buf *out)
{
    int rc = check_head(msg, len, MSG3);
    if (rc)
        return rc;
    keys *k = &s->sec->tmp;
    *k = s->sec->cur;
    fm_cert peer;
    if ((rc = open_identity(s, k, k->hs_i2r, s->th, msg + HEAD, len - HEAD, &peer)) != 0)
        return rc;
    uint8_t th[KEY];
    memcpy(th, s->th, KEY);
    mix(th, msg, len);
    app_keys(k, th);
    if ((rc = put_stream_start(s, k, th, out)) != 0)
        return rc;
    s->peer = peer;
    commit(s, th, FM_SESSION_WAIT_STREAM);
    return 0;
}

/* Either side: the peer's stream start. It decrypts only under the keys of this transcript, so it
 * also confirms that the peer derived the same session. */
static int step_stream_start(fm_session *s, const uint8_t *msg, size_t len)
{
    if (len != START_BYTES)
        return FM_EDECODE;
    keys *k = &s->sec->tmp;
    *k = s->sec->cur;
    const uint8_t *key = s->role == FM_SESSION_INITIATOR ? k->app_r2i : k->app_i2r;
    crypto_secretstream_xchacha20poly1305_init_pull(&k->rx, msg, key);
    uint8_t tag, none[1];
    unsigned long long mlen;
    if (crypto_secretstream_xchacha20poly1305_pull(&k->rx, none, &mlen, &tag, msg + SS_HEADER,
                                                   SS_ABYTES, s->th, KEY) != 0)
        return FM_EAUTH;
    if (tag != crypto_secretstream_xchacha20poly1305_TAG_MESSAGE || mlen != 0)
        return FM_EDECODE;
    sodium_memzero(k->app_i2r, KEY);
    sodium_memzero(k->app_r2i, KEY);
    commit(s, s->th, FM_SESSION_ESTABLISHED);
    return 0;
}

/* ---- frames ---------------------------------------------------------------------------------- */

static int step_frame(fm_session *s, const uint8_t *c, size_t len, fm_frame_fn fn, void *arg)
{
    if (len < SS_ABYTES)
        return FM_EAUTH;
    fm_buf_reset(&s->plain);
    if (fm_buf_reserve(&s->plain, len - SS_ABYTES + 1) != 0)
        return FM_ENOMEM;
    unsigned long long mlen;
    uint8_t tag;
    if (crypto_secretstream_xchacha20poly1305_pull(&s->sec->cur.rx, s->plain.data, &mlen, &tag, c,
                                                   len, NULL, 0) != 0)
        return FM_EAUTH;
    if (tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL && mlen == 0) {
        s->state = FM_SESSION_CLOSED;
        return 0;
    }
    if (tag != crypto_secretstream_xchacha20poly1305_TAG_MESSAGE)
        return FM_EDECODE; /* we never send PUSH or REKEY */
    if (fn)
        fn(arg, s->plain.data, (size_t)mlen);
    /* The callback may have ended the session (a recheck after a revocation): its buffers are
     * already wiped and freed. */
    if (s->state == FM_SESSION_FAILED || s->state == FM_SESSION_CLOSED)
        return s->state == FM_SESSION_FAILED ? s->err : 0;
    sodium_memzero(s->plain.data, (size_t)mlen);
    fm_buf_recycle(&s->plain, FM_FRAME_KEEP_BYTES);
    return 0;
}

/* ---- session lifecycle ----------------------------------------------------------------------- */

static bool handshaking(const fm_session *s)
{
    return s->state < FM_SESSION_ESTABLISHED;
}

static void wipe(fm_session *s)
{
    sodium_memzero(s->sec, sizeof *s->sec);
    if (s->plain.data)
        sodium_memzero(s->plain.data, s->plain.cap);
    fm_buf_free(&s->plain);
    fm_frame_reader_free(&s->rd);
}

static int fail(fm_session *s, int rc)
{
    FM_ASSERT(rc < 0);
    wipe(s);
    s->err = rc;
    s->state = FM_SESSION_FAILED;
    return rc;
}

/* Entry of every call that acts: dead sessions answer with their error; the clock is read once. */
static int enter(fm_session *s)
{
    if (s->state == FM_SESSION_FAILED)
        return s->err;
    if (s->state == FM_SESSION_CLOSED)
        return FM_ECLOSED;
    s->now = s->env->now_ms(s->env->ctx);
    uint64_t elapsed = s->now >= s->started ? s->now - s->started : 0;
    if (handshaking(s) && elapsed >= FM_HANDSHAKE_TIMEOUT_MS)
        return fail(s, FM_ETIMEOUT);
    return 0;
}

static int session_create(const fm_env *env, const fm_identity *id, const uint8_t *cert,
                          size_t cert_len, const fm_membership *m, fm_session_role role, bool check,
                          fm_session **out)
{
    if (!env || env->version != FM_ENV_VERSION || !env->now_ms || !env->random ||
        (role != FM_SESSION_INITIATOR && role != FM_SESSION_RESPONDER))
        return FM_EINVAL;
    if (sodium_init() < 0)
        return FM_ENOMEM;
    fm_cert c;
    uint8_t mesh[FM_ID_BYTES], pk[FM_ID_BYTES];
    int rc = fm_cert_decode(cert, cert_len, &c);
    if (rc)
        return rc;
    fm_membership_mesh_id(m, mesh);
    fm_identity_public(id, pk);
    if (check && (rc = fm_membership_cert_verify(m, &c)) != 0)
        return rc;
    if (check && !fm_cert_is_for(&c, pk))
        return FM_EINVAL;
    fm_session *s = fm_calloc(1, sizeof *s);
    secrets *sec = secrets_new();
    if (!s || !sec) {
        free(s);
        secrets_free(sec);
        return FM_ENOMEM;
    }
    *s = (fm_session){.env = env, .id = id, .m = m, .role = role, .sec = sec};
    memcpy(s->mesh_id, mesh, FM_ID_BYTES);
    memcpy(s->my_cert, cert, cert_len);
    s->my_cert_len = cert_len;
    prologue(s->th, mesh);
    fm_frame_reader_init(&s->rd);
    s->started = s->now = env->now_ms(env->ctx);
    s->state = role == FM_SESSION_INITIATOR ? FM_SESSION_START : FM_SESSION_WAIT_MSG1;
    *out = s;
    return 0;
}

int fm_session_new(const fm_env *env, const fm_identity *id, const uint8_t *cert, size_t cert_len,
                   const fm_membership *m, fm_session_role role, fm_session **out)
{
    return session_create(env, id, cert, cert_len, m, role, true, out);
}

int fm__session_new_nocheck(const fm_env *env, const fm_identity *id, const uint8_t *cert,
                            size_t cert_len, const fm_membership *m, fm_session_role role,
                            fm_session **out)
{
    return session_create(env, id, cert, cert_len, m, role, false, out);
}

void fm_session_free(fm_session *s)
{
    if (!s)
        return;
    wipe(s);
    secrets_free(s->sec);
    free(s);
}

/* Runs a step; whatever happens the scratch secrets are wiped, and on error the session dies and
 * out is as it was. */
static int finish_step(fm_session *s, int rc, fm_buf *out, size_t mark)
{
    sodium_memzero(&s->sec->tmp, sizeof s->sec->tmp);
    if (rc) {
        out->len = mark;
        return fail(s, rc);
    }
    if (s->state == FM_SESSION_CLOSED)
        wipe(s); /* the peer's final frame arrived */
    return 0;
}

int fm_session_start(fm_session *s, fm_buf *out)
{
    if (s->state != FM_SESSION_START)
        return s->state == FM_SESSION_FAILED ? s->err : FM_ESTATE;
    int rc = enter(s);
    if (rc)
        return rc;
    size_t mark = out->len;
    return finish_step(s, step_start(s, out), out, mark);
}

static size_t record_max(const fm_session *s)
{
    return s->state == FM_SESSION_ESTABLISHED ? FM_MAX_FRAME_BYTES : FM_MAX_HANDSHAKE_BYTES;
}

static int step_record(fm_session *s, const uint8_t *rec, size_t len, fm_buf *out, fm_frame_fn fn,
                       void *arg)
{
    switch (s->state) {
    case FM_SESSION_WAIT_MSG1:
        return step_msg1(s, rec, len, out);
    case FM_SESSION_WAIT_MSG2:
        return step_msg2(s, rec, len, out);
    case FM_SESSION_WAIT_MSG3:
        return step_msg3(s, rec, len, out);
    case FM_SESSION_WAIT_STREAM:
        return step_stream_start(s, rec, len);
    case FM_SESSION_ESTABLISHED:
        return step_frame(s, rec, len, fn, arg);
    default:
        return FM_ECLOSED; /* bytes after the peer's final frame */
    }
}

int fm_session_input(fm_session *s, const uint8_t *in, size_t len, fm_buf *out, fm_frame_fn fn,
                     void *arg)
{
    if (s->state == FM_SESSION_START)
        return FM_ESTATE;
    int rc = enter(s);
    if (rc)
        return rc;
    size_t mark = out->len;
    while (len > 0 && rc == 0) {
        size_t used;
        bool done;
        rc = fm_frame_reader_feed(&s->rd, in, len, record_max(s), &used, &done);
        in += used;
        len -= used;
        if (rc || !done)
            break;
        rc = step_record(s, s->rd.body.data, s->rd.body.len, out, fn, arg);
        fm_frame_reader_next(&s->rd);
    }
    return finish_step(s, rc, out, mark);
}

int fm_session_send(fm_session *s, const uint8_t *data, size_t len, fm_buf *out)
{
    int rc = enter(s);
    if (rc)
        return rc;
    if (s->state != FM_SESSION_ESTABLISHED)
        return FM_ESTATE;
    if (len > FM_MAX_FRAME_PAYLOAD)
        return FM_ELIMIT;
    if (fm_buf_reserve(out, FM_RECORD_HEADER_BYTES + len + SS_ABYTES) != 0)
        return FM_ENOMEM; /* nothing pushed yet: the session lives on */
    rc = fm_frame_put_header(out, len + SS_ABYTES);
    FM_ASSERT(rc == 0); /* reserved above */
    crypto_secretstream_xchacha20poly1305_push(&s->sec->cur.tx, out->data + out->len, NULL, data,
                                               len, NULL, 0,
                                               crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
    out->len += len + SS_ABYTES;
    return 0;
}

int fm_session_close(fm_session *s, fm_buf *out)
{
    int rc = enter(s);
    if (rc)
        return rc;
    if (s->state == FM_SESSION_ESTABLISHED) {
        uint8_t c[SS_ABYTES];
        crypto_secretstream_xchacha20poly1305_push(&s->sec->cur.tx, c, NULL, NULL, 0, NULL, 0,
                                                   crypto_secretstream_xchacha20poly1305_TAG_FINAL);
        if ((rc = put_record(out, c, sizeof c, NULL, 0)) != 0)
            return fail(s, rc);
    }
    wipe(s);
    s->state = FM_SESSION_CLOSED;
    return 0;
}

int fm_session_eof(fm_session *s)
{
    if (s->state == FM_SESSION_FAILED)
        return s->err;
    if (s->state == FM_SESSION_CLOSED)
        return 0;
    return fail(s, fm_frame_reader_pending(&s->rd) > 0 ? FM_ETRUNC : FM_ECLOSED);
}

int fm_session_tick(fm_session *s)
{
    int rc = enter(s);
    return rc == FM_ECLOSED ? 0 : rc;
}

uint64_t fm_session_deadline(const fm_session *s)
{
    return handshaking(s) ? s->started + FM_HANDSHAKE_TIMEOUT_MS : UINT64_MAX;
}

int fm_session_recheck(fm_session *s)
{
    int rc = enter(s);
    if (rc || s->state < FM_SESSION_WAIT_STREAM)
        return rc;
    rc = fm_membership_check_cert(s->m, &s->peer, s->now, NULL);
    return rc ? fail(s, rc) : 0;
}

enum fm_session_state fm_session_state(const fm_session *s)
{
    return s->state;
}

static bool peer_known(const fm_session *s)
{
    return s->state >= FM_SESSION_WAIT_STREAM && s->state != FM_SESSION_FAILED;
}

int fm_session_peer_id(const fm_session *s, uint8_t out[FM_ID_BYTES])
{
    if (!peer_known(s))
        return FM_ESTATE;
    memcpy(out, s->peer.device_id, FM_ID_BYTES);
    return 0;
}

int fm_session_peer_cert(const fm_session *s, fm_cert *out)
{
    if (!peer_known(s))
        return FM_ESTATE;
    *out = s->peer;
    return 0;
}
