/*
 * test_proto.c — the sync messages (node/proto.c, docs/PROTOCOL.md §7): encode/decode round
 * trips of every message, rejection of every non-canonical or out-of-bound form, truncation at
 * every byte, and golden vectors (tests/vectors/proto_v1.txt) checked byte for byte.
 *
 * Non-canonical inputs are built by hand (the packer cannot write them); valid ones come from the
 * encoders and are checked against hand-written bytes where the layout is short enough to read.
 * Regenerate the vectors only for a deliberate format change: FM_WRITE_VECTORS=1 test_proto.
 */
#include "crdt/batch.h"
#include "crypto/cert.h"
#include "crypto/identity.h"
#include "crypto/session.h"
#include "node/proto.h"
#include "fm_test.h"

#include <sodium.h>

/* ---- helpers --------------------------------------------------------------------------------- */

/* Lowercase hex of p[0..n) into a malloc'd string (so CHECK_STR prints both sides). */
static char *hex(const uint8_t *p, size_t n)
{
    char *s = malloc(2 * n + 1);
    FM_ASSERT(s);
    for (size_t i = 0; i < n; i++)
        snprintf(s + 2 * i, 3, "%02x", p[i]);
    s[2 * n] = '\0';
    return s;
}

#define CHECK_BYTES(a, alen, b, blen)                                                              \
    do {                                                                                           \
        char *_x = hex((a), (alen)), *_y = hex((b), (blen));                                       \
        CHECK_STR(_x, _y);                                                                         \
        free(_x);                                                                                  \
        free(_y);                                                                                  \
    } while (0)

/* Appends the bytes written in hex (spaces allowed). */
static void put_hex(fm_buf *b, const char *h)
{
    while (*h) {
        if (*h == ' ') {
            h++;
            continue;
        }
        unsigned v;
        FM_ASSERT(sscanf(h, "%2x", &v) == 1);
        fm_buf_putc(b, (uint8_t)v);
        h += 2;
    }
}

/* prefix, then n copies of unit, then suffix: a hex string for put_hex (caller frees). */
static char *hexrep(const char *prefix, const char *unit, int n, const char *suffix)
{
    size_t cap = strlen(prefix) + (size_t)n * strlen(unit) + strlen(suffix) + 3;
    char *s = malloc(cap);
    FM_ASSERT(s);
    snprintf(s, cap, "%s ", prefix);
    for (int i = 0; i < n; i++)
        strcat(s, unit);
    strcat(s, " ");
    strcat(s, suffix);
    return s;
}

static void put_uint(fm_wr *w, uint64_t v)
{
    msgpack_pack_uint64(FM_PK(w), v);
}

static void put_cstr(fm_wr *w, const char *s)
{
    fm_wr_str(w, s, strlen(s));
}

static fm_identity *id_from(uint8_t seed_byte, uint8_t pk[FM_ID_BYTES])
{
    uint8_t seed[32];
    fm_identity *id = NULL;
    memset(seed, seed_byte, sizeof seed);
    CHECK_OK(fm_identity_from_seed(seed, &id));
    fm_identity_public(id, pk);
    return id;
}

/* Every decoder on p[0..len): the result of the one for `type` (0: none). The others must not
 * crash; their results are not looked at. */
static int decode_as(uint64_t type, const uint8_t *p, size_t len)
{
    int rc = 0;
    fm_hello *h = malloc(sizeof *h);
    fm_vector_msg v;
    fm_vv_init(&v.vv);
    uint64_t u;
    fm_proto_name name;
    uint32_t n;
    fm_bytes *arr = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *arr);
    FM_ASSERT(h && arr);
    fm_ihave_entry *ih = calloc(FM_PROTO_MAX_IHAVE, sizeof *ih);
    FM_ASSERT(ih);
    int r[13];
    r[1] = fm_proto_hello_decode(p, len, h);
    r[2] = fm_proto_summary_decode(p, len, &u, NULL, NULL);
    r[3] = fm_proto_vector_decode(p, len, &v);
    r[4] = fm_proto_batches_decode(p, len, &name, arr, &n);
    /* Counting alone, as the node sizes its arrays, judges a frame as decoding does. */
    uint32_t counted = 0;
    CHECK_EQ_INT(fm_proto_batches_decode(p, len, &name, NULL, &counted), r[4]);
    if (r[4] == 0)
        CHECK_EQ_INT(counted, n);
    /* With room for one, a frame of more fails as over a limit; anything else as before. */
    uint32_t one = 0, full = n;
    int r1 = fm_proto_batches_decode_room(p, len, &name, arr, 1, &one);
    CHECK(r1 == r[4] || (r1 == FM_ELIMIT && (r[4] != 0 || full > 1)));
    if (r1 == 0)
        CHECK_EQ_INT(one, full);
    r[5] = fm_proto_ack_decode(p, len, &u);
    r[6] = fm_proto_members_decode(p, len, arr, &n);
    r[7] = fm_proto_ihave_decode(p, len, &name, ih, &n);
    r[8] = fm_proto_prune_decode(p, len);
    r[9] = fm_proto_graft_decode(p, len, &name, ih, &n);
    const uint8_t *ids;
    r[10] = fm_proto_peers_decode(p, len, &ids, &n);
    fm_proto_name *names = calloc(FM_PROTO_MAX_IHAVE, sizeof *names);
    FM_ASSERT(names);
    r[11] = fm_proto_announce_decode(p, len, names, ih, &n);
    free(names);
    names = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *names);
    FM_ASSERT(names);
    r[12] = fm_proto_mixed_decode(p, len, names, arr, &n);
    CHECK_EQ_INT(fm_proto_mixed_decode(p, len, NULL, NULL, &counted), r[12]);
    if (r[12] == 0)
        CHECK_EQ_INT(counted, n);
    full = n;
    r1 = fm_proto_mixed_decode_room(p, len, names, arr, 1, &one);
    CHECK(r1 == r[12] || (r1 == FM_ELIMIT && (r[12] != 0 || full > 1)));
    if (r1 == 0)
        CHECK_EQ_INT(one, full);
    free(names);
    if (type >= 1 && type <= 12)
        rc = r[type];
    free(ih);
    fm_vv_free(&v.vv);
    free(arr);
    free(h);
    return rc;
}

/* ---- fixed inputs (also the golden vectors' inputs) ----------------------------------------- */

#define HLC1 ((1700000000000ull << 16) | 1)
#define HLC2 ((1700000000500ull << 16) | 0)

typedef struct samples {
    uint8_t a[FM_ID_BYTES], b[FM_ID_BYTES], mesh[FM_ID_BYTES];
    fm_vv vv_notes; /* {a: 3, b: 300} */
    fm_vv vv_empty;
    uint8_t d_empty[FM_HASH_BYTES], d_notes[FM_HASH_BYTES];
    fm_buf batch1, batch2; /* a's first two batches of "notes" */
    uint8_t cert[FM_MAX_CERT_BYTES], rev[FM_MAX_REVOCATION_BYTES];
    size_t cert_len, rev_len;
    /* the messages */
    fm_buf hello, hello_all, hello_none, summary, summary_empty, vector, vector_reply, batches, ack,
        members, ihave, prune, graft, peers, announce, mixed;
    uint8_t prefixes[2 * FM_PROTO_PEER_PREFIX]; /* of a and b, ascending */
} samples;

static void op_enc(fm_buf *ops, fm_op_type t, const char *id, const char *field, fm_value v)
{
    fm_buf val;
    fm_buf_init(&val);
    if (t != FM_OP_DELETE)
        CHECK_OK(fm_value_encode(&v, &val));
    CHECK_OK(fm_op_encode(ops, t, id, strlen(id), field, field ? strlen(field) : 0,
                          t == FM_OP_DELETE ? NULL : val.data, val.len));
    fm_buf_free(&val);
}

static void make_batches(samples *s, const fm_identity *a)
{
    fm_buf ops;
    fm_buf_init(&ops);
    op_enc(&ops, FM_OP_SET_LWW, "r1", "title", fm_value_str("hi"));
    fm_batch_head h = {.coll = (const uint8_t *)"notes",
                       .coll_len = 5,
                       .first_seq = 1,
                       .prev = NULL,
                       .ctx = &s->vv_empty,
                       .hlc = HLC1,
                       .nops = 1};
    CHECK_OK(fm_batch_encode(a, &h, ops.data, ops.len, &s->batch1));
    fm_batch b;
    fm_batch_init(&b);
    CHECK_OK(fm_batch_decode(s->batch1.data, s->batch1.len, &b));
    fm_buf_reset(&ops);
    op_enc(&ops, FM_OP_INCR, "r1", "n", fm_value_int(-3));
    op_enc(&ops, FM_OP_DELETE, "r2", NULL, fm_value_nil());
    fm_vv ctx;
    fm_vv_init(&ctx);
    CHECK_OK(fm_vv_set(&ctx, s->b, 300));
    h = (fm_batch_head){.coll = (const uint8_t *)"notes",
                        .coll_len = 5,
                        .first_seq = 2,
                        .prev = b.hash,
                        .ctx = &ctx,
                        .hlc = HLC2,
                        .nops = 2};
    CHECK_OK(fm_batch_encode(a, &h, ops.data, ops.len, &s->batch2));
    fm_vv_free(&ctx);
    fm_batch_free(&b);
    fm_buf_free(&ops);
}

static void make_members(samples *s, const fm_identity *auth)
{
    fm_cert c;
    CHECK_OK(fm_cert_issue(auth, s->mesh, s->a, "alpha", FM_PERM_ALL, 1700000000000ull,
                           1800000000000ull, 1700000000000ull, &c));
    CHECK_OK(fm_cert_encode(&c, s->cert, &s->cert_len));
    fm_revocation r;
    CHECK_OK(fm_revocation_issue(auth, s->mesh, s->b, 1750000000000ull, 1750000000000ull, &r));
    CHECK_OK(fm_revocation_encode(&r, s->rev, &s->rev_len));
}

static void hello_of(fm_hello *h, uint64_t window, int nsubs, const char *const *names,
                     const uint8_t *prio, uint8_t digest_byte, uint64_t count)
{
    memset(h, 0, sizeof *h);
    h->proto_min = FM_PROTO_MIN;
    h->proto_max = FM_PROTO_MAX;
    h->caps = FM_CAPS;
    h->window = window;
    h->subs_all = nsubs < 0;
    h->nsubs = nsubs < 0 ? 0 : (uint32_t)nsubs;
    for (uint32_t i = 0; i < h->nsubs; i++) {
        h->subs[i].p = (const uint8_t *)names[i];
        h->subs[i].len = (uint32_t)strlen(names[i]);
        h->prio[i] = prio[i];
    }
    memset(h->members_digest, digest_byte, FM_HASH_BYTES);
    h->members_count = count;
}

static const char *const SUB_NAMES[] = {"alerts", "notes", "photos"};
static const uint8_t SUB_PRIO[] = {FM_PRIO_CRITICAL, FM_PRIO_NORMAL, FM_PRIO_BULK};

static void make_messages(samples *s)
{
    fm_hello *h = malloc(sizeof *h);
    FM_ASSERT(h);
    hello_of(h, FM_NODE_DEFAULT_WINDOW, 3, SUB_NAMES, SUB_PRIO, 0x5a, 3);
    CHECK_OK(fm_proto_hello_encode(&s->hello, h));
    hello_of(h, FM_PROTO_MIN_WINDOW, -1, NULL, NULL, 0, 0);
    CHECK_OK(fm_proto_hello_encode(&s->hello_all, h));
    hello_of(h, FM_PROTO_MAX_WINDOW, 0, NULL, NULL, 0xff, 4096);
    CHECK_OK(fm_proto_hello_encode(&s->hello_none, h));
    free(h);

    fm_wr w;
    fm_wr_init(&w, &s->summary);
    fm_proto_summary_begin(&w, 1, 2);
    fm_proto_summary_entry(&w, (const uint8_t *)"alerts", 6, s->d_empty);
    fm_proto_summary_entry(&w, (const uint8_t *)"notes", 5, s->d_notes);
    fm_wr_init(&w, &s->summary_empty);
    fm_proto_summary_begin(&w, 2, 0);

    CHECK_OK(
        fm_proto_vector_encode(&s->vector, 1, 0, 0, (const uint8_t *)"notes", 5, &s->vv_notes));
    CHECK_OK(fm_proto_vector_encode(&s->vector_reply, 2, FM_VECTOR_REPLY, 70000,
                                    (const uint8_t *)"alerts", 6, &s->vv_empty));

    fm_wr_init(&w, &s->batches);
    fm_proto_batches_begin(&w, (const uint8_t *)"notes", 5, 2);
    fm_wr_bin(&w, s->batch1.data, s->batch1.len);
    fm_wr_bin(&w, s->batch2.data, s->batch2.len);

    CHECK_OK(fm_proto_ack_encode(&s->ack, 65536));

    fm_wr_init(&w, &s->members);
    fm_proto_members_begin(&w, 2);
    fm_wr_bin(&w, s->cert, s->cert_len);
    fm_wr_bin(&w, s->rev, s->rev_len);

    fm_wr_init(&w, &s->ihave);
    fm_proto_ihave_begin(&w, (const uint8_t *)"notes", 5, 2);
    fm_proto_ihave_entry(&w, s->a, 3);
    fm_proto_ihave_entry(&w, s->b, 300);
    CHECK_OK(fm_proto_prune_encode(&s->prune));
    fm_wr_init(&w, &s->graft);
    fm_proto_graft_begin(&w, (const uint8_t *)"notes", 5, 1);
    fm_proto_ihave_entry(&w, s->b, 301);

    bool a_first = memcmp(s->a, s->b, FM_PROTO_PEER_PREFIX) < 0;
    memcpy(s->prefixes, a_first ? s->a : s->b, FM_PROTO_PEER_PREFIX);
    memcpy(s->prefixes + FM_PROTO_PEER_PREFIX, a_first ? s->b : s->a, FM_PROTO_PEER_PREFIX);
    CHECK_OK(fm_proto_peers_encode(&s->peers, s->prefixes, 2));

    fm_wr_init(&w, &s->announce);
    fm_proto_announce_begin(&w, 2);
    fm_proto_announce_group(&w, (const uint8_t *)"notes", 5, 1);
    fm_proto_ihave_entry(&w, s->a, 3);
    fm_proto_announce_group(&w, (const uint8_t *)"alerts", 6, 2);
    fm_proto_ihave_entry(&w, s->b, 300);
    fm_proto_ihave_entry(&w, s->a, 1);

    fm_wr_init(&w, &s->mixed);
    fm_proto_mixed_begin(&w, 2);
    fm_proto_mixed_group(&w, (const uint8_t *)"notes", 5, 1);
    fm_wr_bin(&w, s->batch1.data, s->batch1.len);
    fm_proto_mixed_group(&w, (const uint8_t *)"notes", 5, 1);
    fm_wr_bin(&w, s->batch2.data, s->batch2.len);
}

static void samples_init(samples *s)
{
    memset(s, 0, sizeof *s);
    uint8_t pk[FM_ID_BYTES];
    fm_identity *auth = id_from(0xa1, s->mesh);
    fm_identity *a = id_from(0x01, s->a);
    fm_identity *b = id_from(0x02, pk);
    memcpy(s->b, pk, FM_ID_BYTES);
    fm_vv_init(&s->vv_notes);
    fm_vv_init(&s->vv_empty);
    CHECK_OK(fm_vv_set(&s->vv_notes, s->a, 3));
    CHECK_OK(fm_vv_set(&s->vv_notes, s->b, 300));
    CHECK_OK(fm_vv_digest(&s->vv_empty, s->d_empty));
    CHECK_OK(fm_vv_digest(&s->vv_notes, s->d_notes));
    fm_buf *bufs[] = {&s->batch1,  &s->batch2,        &s->hello,  &s->hello_all,    &s->hello_none,
                      &s->summary, &s->summary_empty, &s->vector, &s->vector_reply, &s->batches,
                      &s->ack,     &s->members,       &s->ihave,  &s->prune,        &s->graft,
                      &s->peers,   &s->announce,      &s->mixed};
    for (size_t i = 0; i < FM_ARRAY_LEN(bufs); i++)
        fm_buf_init(bufs[i]);
    make_batches(s, a);
    make_members(s, auth);
    make_messages(s);
    fm_identity_free(auth);
    fm_identity_free(a);
    fm_identity_free(b);
}

static void samples_free(samples *s)
{
    fm_buf *bufs[] = {&s->batch1,  &s->batch2,        &s->hello,  &s->hello_all,    &s->hello_none,
                      &s->summary, &s->summary_empty, &s->vector, &s->vector_reply, &s->batches,
                      &s->ack,     &s->members,       &s->ihave,  &s->prune,        &s->graft,
                      &s->peers,   &s->announce,      &s->mixed};
    for (size_t i = 0; i < FM_ARRAY_LEN(bufs); i++)
        fm_buf_free(bufs[i]);
    fm_vv_free(&s->vv_notes);
    fm_vv_free(&s->vv_empty);
}

/* Every sample message with its type, for the table-driven tests. */
typedef struct sample_msg {
    const char *name;
    uint64_t type;
    const fm_buf *b;
} sample_msg;

static size_t sample_list(const samples *s, sample_msg out[24])
{
    size_t n = 0;
    out[n++] = (sample_msg){"hello", FM_MSG_HELLO, &s->hello};
    out[n++] = (sample_msg){"hello_all", FM_MSG_HELLO, &s->hello_all};
    out[n++] = (sample_msg){"hello_none", FM_MSG_HELLO, &s->hello_none};
    out[n++] = (sample_msg){"summary", FM_MSG_SUMMARY, &s->summary};
    out[n++] = (sample_msg){"summary_empty", FM_MSG_SUMMARY, &s->summary_empty};
    out[n++] = (sample_msg){"vector", FM_MSG_VECTOR, &s->vector};
    out[n++] = (sample_msg){"vector_reply", FM_MSG_VECTOR, &s->vector_reply};
    out[n++] = (sample_msg){"batches", FM_MSG_BATCHES, &s->batches};
    out[n++] = (sample_msg){"ack", FM_MSG_ACK, &s->ack};
    out[n++] = (sample_msg){"members", FM_MSG_MEMBERS, &s->members};
    out[n++] = (sample_msg){"ihave", FM_MSG_IHAVE, &s->ihave};
    out[n++] = (sample_msg){"prune", FM_MSG_PRUNE, &s->prune};
    out[n++] = (sample_msg){"graft", FM_MSG_GRAFT, &s->graft};
    out[n++] = (sample_msg){"peers", FM_MSG_PEERS, &s->peers};
    out[n++] = (sample_msg){"announce", FM_MSG_ANNOUNCE, &s->announce};
    out[n++] = (sample_msg){"mixed", FM_MSG_MIXED, &s->mixed};
    return n;
}

/* ---- round trips ----------------------------------------------------------------------------- */

static void test_type(void)
{
    samples s;
    samples_init(&s);
    sample_msg m[24];
    size_t n = sample_list(&s, m);
    for (size_t i = 0; i < n; i++) {
        uint64_t t = 0;
        CHECK_OK(fm_proto_type(m[i].b->data, m[i].b->len, &t));
        CHECK_EQ_INT(t, m[i].type);
        /* each message decodes as its own type only */
        for (uint64_t other = 1; other <= 9; other++)
            if (other == m[i].type)
                CHECK_OK(decode_as(other, m[i].b->data, m[i].b->len));
            else
                CHECK(decode_as(other, m[i].b->data, m[i].b->len) < 0);
    }
    fm_buf b;
    fm_buf_init(&b);
    uint64_t t = 0;
    put_hex(&b, "93 63 01 02"); /* an unknown type is still a type */
    CHECK_OK(fm_proto_type(b.data, b.len, &t));
    CHECK_EQ_INT(t, 99);
    static const char *const bad[] = {"", "05", "80", "90", "91 ff", "91 a1 41", "91 c0", "dc"};
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++) {
        fm_buf_reset(&b);
        put_hex(&b, bad[i]);
        CHECK(fm_proto_type(b.data, b.len, &t) < 0);
    }
    fm_buf_reset(&b);
    put_hex(&b, "dc 00 01 05"); /* array16 for one element */
    CHECK_RC(fm_proto_type(b.data, b.len, &t), FM_ENONCANON);
    fm_buf_free(&b);
    samples_free(&s);
}

static bool name_is(fm_proto_name n, const char *s)
{
    return n.len == strlen(s) && memcmp(n.p, s, n.len) == 0;
}

static void hello_roundtrip(const fm_buf *enc)
{
    fm_hello *h = malloc(sizeof *h);
    FM_ASSERT(h);
    CHECK_OK(fm_proto_hello_decode(enc->data, enc->len, h));
    fm_buf again;
    fm_buf_init(&again);
    CHECK_OK(fm_proto_hello_encode(&again, h));
    CHECK_BYTES(again.data, again.len, enc->data, enc->len);
    fm_buf_free(&again);
    free(h);
}

static void test_hello_roundtrip(void)
{
    samples s;
    samples_init(&s);
    fm_hello *h = malloc(sizeof *h);
    FM_ASSERT(h);
    CHECK_OK(fm_proto_hello_decode(s.hello.data, s.hello.len, h));
    CHECK_EQ_INT(h->proto_min, 1);
    CHECK_EQ_INT(h->proto_max, 1);
    CHECK_EQ_INT(h->caps, FM_CAP_MEMBERS | FM_CAP_LAZY | FM_CAP_PEERS);
    CHECK_EQ_INT(h->window, FM_NODE_DEFAULT_WINDOW);
    CHECK(!h->subs_all);
    CHECK_EQ_INT(h->nsubs, 3);
    for (uint32_t i = 0; i < 3 && i < h->nsubs; i++) {
        CHECK(name_is(h->subs[i], SUB_NAMES[i]));
        CHECK_EQ_INT(h->prio[i], SUB_PRIO[i]);
    }
    uint8_t d[FM_HASH_BYTES];
    memset(d, 0x5a, sizeof d);
    CHECK_MEM(h->members_digest, d, FM_HASH_BYTES);
    CHECK_EQ_INT(h->members_count, 3);

    CHECK_OK(fm_proto_hello_decode(s.hello_all.data, s.hello_all.len, h));
    CHECK(h->subs_all);
    CHECK_EQ_INT(h->nsubs, 0);
    CHECK_EQ_INT(h->window, FM_PROTO_MIN_WINDOW);
    CHECK_OK(fm_proto_hello_decode(s.hello_none.data, s.hello_none.len, h));
    CHECK(!h->subs_all);
    CHECK_EQ_INT(h->nsubs, 0);
    CHECK_EQ_INT(h->window, FM_PROTO_MAX_WINDOW);
    CHECK_EQ_INT(h->members_count, 4096);
    hello_roundtrip(&s.hello);
    hello_roundtrip(&s.hello_all);
    hello_roundtrip(&s.hello_none);

    /* the layout, by hand: [1, 1, 1, 7, 4096, nil, bin32 zeros, 0] */
    fm_buf want;
    fm_buf_init(&want);
    put_hex(&want, "98 01 01 01 07 cd 10 00 c0 c4 20");
    for (int i = 0; i < 32; i++)
        fm_buf_putc(&want, 0);
    fm_buf_putc(&want, 0);
    CHECK_BYTES(s.hello_all.data, s.hello_all.len, want.data, want.len);

    /* a wider version range, unknown capability bits, the largest count: all decode (what to
     * make of them is the node's business) */
    hello_of(h, FM_PROTO_MIN_WINDOW, -1, NULL, NULL, 1, UINT64_MAX);
    h->proto_max = 7;
    h->caps = UINT64_MAX;
    fm_buf_reset(&want);
    CHECK_OK(fm_proto_hello_encode(&want, h));
    CHECK_OK(fm_proto_hello_decode(want.data, want.len, h));
    CHECK_EQ_INT(h->proto_max, 7);
    CHECK(h->caps == UINT64_MAX && h->members_count == UINT64_MAX);
    hello_roundtrip(&want);

    /* FM_NODE_MAX_SUBS subscriptions: at the bound */
    static char names[FM_NODE_MAX_SUBS][8];
    const char *ptrs[FM_NODE_MAX_SUBS];
    uint8_t prio[FM_NODE_MAX_SUBS];
    for (int i = 0; i < FM_NODE_MAX_SUBS; i++) {
        snprintf(names[i], sizeof names[i], "s%03d", i);
        ptrs[i] = names[i];
        prio[i] = (uint8_t)(i % 3);
    }
    hello_of(h, FM_PROTO_MIN_WINDOW, FM_NODE_MAX_SUBS, ptrs, prio, 0, 0);
    fm_buf_reset(&want);
    CHECK_OK(fm_proto_hello_encode(&want, h));
    CHECK_OK(fm_proto_hello_decode(want.data, want.len, h));
    CHECK_EQ_INT(h->nsubs, FM_NODE_MAX_SUBS);
    CHECK(name_is(h->subs[FM_NODE_MAX_SUBS - 1], "s255"));
    hello_roundtrip(&want);
    fm_buf_free(&want);
    free(h);
    samples_free(&s);
}

typedef struct collect {
    uint32_t n;
    fm_proto_name names[FM_PROTO_MAX_SUMMARY];
    const uint8_t *digests[FM_PROTO_MAX_SUMMARY];
    uint32_t stop_at; /* 0: never */
} collect;

static int collect_fn(void *arg, const fm_summary_entry *e)
{
    collect *c = arg;
    c->names[c->n] = e->name;
    c->digests[c->n] = e->digest;
    c->n++;
    return c->stop_at && c->n == c->stop_at ? 42 : 0;
}

static void test_summary_roundtrip(void)
{
    samples s;
    samples_init(&s);
    collect *c = calloc(1, sizeof *c);
    FM_ASSERT(c);
    uint64_t round = 0;
    CHECK_OK(fm_proto_summary_decode(s.summary.data, s.summary.len, &round, collect_fn, c));
    CHECK_EQ_INT(round, 1);
    CHECK_EQ_INT(c->n, 2);
    CHECK(name_is(c->names[0], "alerts") && name_is(c->names[1], "notes"));
    CHECK_MEM(c->digests[0], s.d_empty, FM_HASH_BYTES);
    CHECK_MEM(c->digests[1], s.d_notes, FM_HASH_BYTES);
    /* re-encoded from what was decoded: the same bytes */
    fm_buf again;
    fm_buf_init(&again);
    fm_wr w;
    fm_wr_init(&w, &again);
    fm_proto_summary_begin(&w, round, c->n);
    for (uint32_t i = 0; i < c->n; i++)
        fm_proto_summary_entry(&w, c->names[i].p, c->names[i].len, c->digests[i]);
    CHECK_BYTES(again.data, again.len, s.summary.data, s.summary.len);

    /* a callback's non-zero result stops the walk and is returned */
    memset(c, 0, sizeof *c);
    c->stop_at = 1;
    CHECK_RC(fm_proto_summary_decode(s.summary.data, s.summary.len, &round, collect_fn, c), 42);
    CHECK_EQ_INT(c->n, 1);
    /* no callback: validation only */
    CHECK_OK(fm_proto_summary_decode(s.summary.data, s.summary.len, &round, NULL, NULL));

    memset(c, 0, sizeof *c);
    CHECK_OK(
        fm_proto_summary_decode(s.summary_empty.data, s.summary_empty.len, &round, collect_fn, c));
    CHECK_EQ_INT(round, 2);
    CHECK_EQ_INT(c->n, 0);
    fm_buf want;
    fm_buf_init(&want);
    put_hex(&want, "93 02 02 90");
    CHECK_BYTES(s.summary_empty.data, s.summary_empty.len, want.data, want.len);

    /* FM_PROTO_MAX_SUMMARY entries: at the bound (names of up to 64 bytes, the longest frame) */
    fm_buf_reset(&again);
    fm_wr_init(&w, &again);
    fm_proto_summary_begin(&w, UINT64_MAX, FM_PROTO_MAX_SUMMARY);
    for (int i = 0; i < FM_PROTO_MAX_SUMMARY; i++) {
        char name[FM_MAX_COLLECTION_LEN + 1];
        memset(name, 'x', FM_MAX_COLLECTION_LEN);
        snprintf(name, 6, "%05d", i);
        name[5] = 'x';
        fm_proto_summary_entry(&w, (const uint8_t *)name, FM_MAX_COLLECTION_LEN, s.d_notes);
    }
    memset(c, 0, sizeof *c);
    CHECK_OK(fm_proto_summary_decode(again.data, again.len, &round, collect_fn, c));
    CHECK_EQ_INT(c->n, FM_PROTO_MAX_SUMMARY);
    CHECK(round == UINT64_MAX);
    CHECK(again.len <= FM_MAX_FRAME_PAYLOAD);
    fm_buf_free(&want);
    fm_buf_free(&again);
    free(c);
    samples_free(&s);
}

static void test_vector_roundtrip(void)
{
    samples s;
    samples_init(&s);
    fm_vector_msg m;
    fm_vv_init(&m.vv);
    CHECK_OK(fm_proto_vector_decode(s.vector.data, s.vector.len, &m));
    CHECK_EQ_INT(m.round, 1);
    CHECK_EQ_INT(m.flags, 0);
    CHECK_EQ_INT(m.acked, 0);
    CHECK(name_is(m.name, "notes"));
    CHECK_EQ_INT(fm_vv_compare(&m.vv, &s.vv_notes), FM_VV_EQUAL);
    fm_buf again;
    fm_buf_init(&again);
    CHECK_OK(
        fm_proto_vector_encode(&again, m.round, m.flags, m.acked, m.name.p, m.name.len, &m.vv));
    CHECK_BYTES(again.data, again.len, s.vector.data, s.vector.len);

    /* decoding into a vector that holds entries replaces them */
    CHECK_OK(fm_proto_vector_decode(s.vector_reply.data, s.vector_reply.len, &m));
    CHECK_EQ_INT(m.round, 2);
    CHECK_EQ_INT(m.flags, FM_VECTOR_REPLY);
    CHECK_EQ_INT(m.acked, 70000);
    CHECK(name_is(m.name, "alerts"));
    CHECK_EQ_INT(m.vv.n, 0);
    fm_buf want;
    fm_buf_init(&want);
    put_hex(&want, "96 03 02 01 ce 00 01 11 70 a6 616c65727473 90");
    CHECK_BYTES(s.vector_reply.data, s.vector_reply.len, want.data, want.len);

    /* FM_MAX_VV_ENTRIES authors: at the bound */
    fm_vv big;
    fm_vv_init(&big);
    for (uint32_t i = 0; i < FM_MAX_VV_ENTRIES; i++) {
        uint8_t id[32] = {0};
        id[0] = (uint8_t)(i >> 8);
        id[1] = (uint8_t)i;
        CHECK_OK(fm_vv_set(&big, id, UINT64_MAX - i));
    }
    fm_buf_reset(&again);
    CHECK_OK(fm_proto_vector_encode(&again, 0, 0, UINT64_MAX, (const uint8_t *)"n", 1, &big));
    CHECK_OK(fm_proto_vector_decode(again.data, again.len, &m));
    CHECK_EQ_INT(m.vv.n, FM_MAX_VV_ENTRIES);
    CHECK(m.acked == UINT64_MAX);
    CHECK(again.len <= FM_MAX_FRAME_PAYLOAD);
    fm_vv_free(&big);
    fm_vv_free(&m.vv);
    fm_buf_free(&want);
    fm_buf_free(&again);
    samples_free(&s);
}

static void test_batches_roundtrip(void)
{
    samples s;
    samples_init(&s);
    fm_bytes *arr = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *arr);
    FM_ASSERT(arr);
    fm_proto_name name;
    uint32_t n = 0;
    CHECK_OK(fm_proto_batches_decode(s.batches.data, s.batches.len, &name, arr, &n));
    CHECK(name_is(name, "notes"));
    CHECK_EQ_INT(n, 2);
    CHECK_BYTES(arr[0].data, arr[0].len, s.batch1.data, s.batch1.len);
    CHECK_BYTES(arr[1].data, arr[1].len, s.batch2.data, s.batch2.len);
    /* the pointers borrow the frame */
    CHECK(arr[0].data > s.batches.data &&
          arr[1].data + arr[1].len == s.batches.data + s.batches.len);
    fm_buf again;
    fm_buf_init(&again);
    fm_wr w;
    fm_wr_init(&w, &again);
    fm_proto_batches_begin(&w, name.p, name.len, n);
    for (uint32_t i = 0; i < n; i++)
        fm_wr_bin(&w, arr[i].data, arr[i].len);
    CHECK_BYTES(again.data, again.len, s.batches.data, s.batches.len);
    /* the batches inside are real, verifiable batches of that collection */
    fm_batch b;
    fm_batch_init(&b);
    for (uint32_t i = 0; i < n; i++) {
        CHECK_OK(fm_batch_decode(arr[i].data, arr[i].len, &b));
        CHECK_OK(fm_batch_verify(&b, arr[i].data, arr[i].len));
        CHECK_EQ_INT(b.first_seq, i + 1);
    }
    fm_batch_free(&b);

    /* FM_PROTO_MAX_BATCHES_PER_FRAME entries: at the bound (the decoder does not look inside) */
    fm_buf_reset(&again);
    fm_wr_init(&w, &again);
    fm_proto_batches_begin(&w, (const uint8_t *)"n", 1, FM_PROTO_MAX_BATCHES_PER_FRAME);
    for (int i = 0; i < FM_PROTO_MAX_BATCHES_PER_FRAME; i++)
        fm_wr_bin(&w, "x", 1);
    CHECK_OK(fm_proto_batches_decode(again.data, again.len, &name, arr, &n));
    CHECK_EQ_INT(n, FM_PROTO_MAX_BATCHES_PER_FRAME);
    /* one batch of FM_MAX_BATCH_BYTES: at the bound, and it fits a frame */
    uint8_t *huge = calloc(1, FM_MAX_BATCH_BYTES);
    FM_ASSERT(huge);
    fm_buf_reset(&again);
    fm_wr_init(&w, &again);
    fm_proto_batches_begin(&w, (const uint8_t *)"n", 1, 1);
    fm_wr_bin(&w, huge, FM_MAX_BATCH_BYTES);
    CHECK_OK(fm_proto_batches_decode(again.data, again.len, &name, arr, &n));
    CHECK_EQ_INT(arr[0].len, FM_MAX_BATCH_BYTES);
    CHECK(again.len <= FM_MAX_FRAME_PAYLOAD);
    free(huge);
    fm_buf_free(&again);
    free(arr);
    samples_free(&s);
}

static void test_ack_roundtrip(void)
{
    samples s;
    samples_init(&s);
    uint64_t v = 0;
    CHECK_OK(fm_proto_ack_decode(s.ack.data, s.ack.len, &v));
    CHECK_EQ_INT(v, 65536);
    fm_buf want;
    fm_buf_init(&want);
    put_hex(&want, "92 05 ce 00 01 00 00");
    CHECK_BYTES(s.ack.data, s.ack.len, want.data, want.len);
    static const uint64_t vals[] = {
        0, 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1, UINT64_MAX};
    for (size_t i = 0; i < FM_ARRAY_LEN(vals); i++) {
        fm_buf_reset(&want);
        CHECK_OK(fm_proto_ack_encode(&want, vals[i]));
        CHECK_OK(fm_proto_ack_decode(want.data, want.len, &v));
        CHECK(v == vals[i]);
    }
    fm_buf_free(&want);
    samples_free(&s);
}

static void test_members_roundtrip(void)
{
    samples s;
    samples_init(&s);
    fm_bytes recs[FM_PROTO_MEMBERS_PER_FRAME];
    uint32_t n = 0;
    CHECK_OK(fm_proto_members_decode(s.members.data, s.members.len, recs, &n));
    CHECK_EQ_INT(n, 2);
    CHECK_BYTES(recs[0].data, recs[0].len, s.cert, s.cert_len);
    CHECK_BYTES(recs[1].data, recs[1].len, s.rev, s.rev_len);
    fm_cert c;
    fm_revocation r;
    CHECK_OK(fm_cert_decode(recs[0].data, recs[0].len, &c));
    CHECK_OK(fm_cert_verify(&c, s.mesh, 1750000000000ull));
    CHECK_OK(fm_revocation_decode(recs[1].data, recs[1].len, &r));
    CHECK_OK(fm_revocation_verify(&r, s.mesh));
    fm_buf again;
    fm_buf_init(&again);
    fm_wr w;
    fm_wr_init(&w, &again);
    fm_proto_members_begin(&w, n);
    for (uint32_t i = 0; i < n; i++)
        fm_wr_bin(&w, recs[i].data, recs[i].len);
    CHECK_BYTES(again.data, again.len, s.members.data, s.members.len);

    /* FM_PROTO_MEMBERS_PER_FRAME records of FM_PROTO_MAX_MEMBER_BYTES: at both bounds */
    static uint8_t rec[FM_PROTO_MAX_MEMBER_BYTES];
    fm_buf_reset(&again);
    fm_wr_init(&w, &again);
    fm_proto_members_begin(&w, FM_PROTO_MEMBERS_PER_FRAME);
    for (int i = 0; i < FM_PROTO_MEMBERS_PER_FRAME; i++)
        fm_wr_bin(&w, rec, sizeof rec);
    CHECK_OK(fm_proto_members_decode(again.data, again.len, recs, &n));
    CHECK_EQ_INT(n, FM_PROTO_MEMBERS_PER_FRAME);
    CHECK_EQ_INT(recs[n - 1].len, FM_PROTO_MAX_MEMBER_BYTES);
    fm_buf_free(&again);
    samples_free(&s);
}

/* ---- rejection ------------------------------------------------------------------------------- */

/* Writes a HELLO field by field; a NULL hex field takes the canonical default. */
typedef struct hello_parts {
    const char *head, *type, *min, *max, *caps, *window, *subs, *digest, *count;
} hello_parts;

static void put_hello(fm_buf *b, const hello_parts *p)
{
    fm_buf_reset(b);
    put_hex(b, p->head ? p->head : "98");
    put_hex(b, p->type ? p->type : "01");
    put_hex(b, p->min ? p->min : "01");
    put_hex(b, p->max ? p->max : "01");
    put_hex(b, p->caps ? p->caps : "01");
    put_hex(b, p->window ? p->window : "cd 10 00");
    put_hex(b, p->subs ? p->subs : "c0");
    if (p->digest) {
        put_hex(b, p->digest);
    } else {
        put_hex(b, "c4 20");
        for (int i = 0; i < 32; i++)
            fm_buf_putc(b, 0x11);
    }
    put_hex(b, p->count ? p->count : "00");
}

static int hello_rc(const hello_parts *p)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hello(&b, p);
    fm_hello *h = malloc(sizeof *h);
    FM_ASSERT(h);
    int rc = fm_proto_hello_decode(b.data, b.len, h);
    free(h);
    fm_buf_free(&b);
    return rc;
}

static void test_hello_rejects(void)
{
    CHECK_OK(hello_rc(&(hello_parts){0}));
    /* integers: smallest form only, no signed forms, no floats */
    CHECK_RC(hello_rc(&(hello_parts){.type = "cc 01"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.min = "cc 01"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.max = "cd 00 01"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.caps = "d0 01"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.window = "ce 00 00 10 00"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.count = "cf 00 00 00 00 00 00 00 00"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.caps = "ff"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.window = "cb 40 b0 00 00 00 00 00 00"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.window = "ca 45 80 00 00"}), FM_EDECODE);
    /* version range */
    CHECK_RC(hello_rc(&(hello_parts){.min = "02", .max = "01"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.min = "00", .max = "01"}), FM_EDECODE);
    CHECK_OK(hello_rc(&(hello_parts){.min = "02", .max = "09"}));
    /* window bounds: 4096 and 64 MiB are the extremes */
    CHECK_RC(hello_rc(&(hello_parts){.window = "cd 0f ff"}), FM_ELIMIT);
    CHECK_RC(hello_rc(&(hello_parts){.window = "00"}), FM_ELIMIT);
    CHECK_OK(hello_rc(&(hello_parts){.window = "ce 04 00 00 00"}));
    CHECK_RC(hello_rc(&(hello_parts){.window = "ce 04 00 00 01"}), FM_ELIMIT);
    /* array shape and type */
    CHECK_RC(hello_rc(&(hello_parts){.head = "97"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.head = "99"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.head = "dc 00 08"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.type = "05"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.count = "00 00"}), FM_EDECODE); /* trailing byte */
    /* members digest: exactly 32 bytes of bin */
    char *d31 = hexrep("c4 1f", "00", 31, ""), *d33 = hexrep("c4 21", "00", 33, "");
    char *b16 = hexrep("c5 00 20", "00", 32, ""), *s32 = hexrep("d9 20", "41", 32, "");
    CHECK_RC(hello_rc(&(hello_parts){.digest = d31}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.digest = d33}), FM_ELIMIT);
    CHECK_RC(hello_rc(&(hello_parts){.digest = b16}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.digest = s32}), FM_EDECODE); /* a str is not a bin */
    free(d31);
    free(d33);
    free(b16);
    free(s32);
    CHECK_RC(hello_rc(&(hello_parts){.digest = "c0"}), FM_EDECODE);
    /* subscriptions */
    CHECK_OK(hello_rc(&(hello_parts){.subs = "90"}));
    CHECK_OK(hello_rc(&(hello_parts){.subs = "92 92 a1 61 00 92 a1 62 02"}));
    CHECK_OK(hello_rc(&(hello_parts){.subs = "92 92 a1 61 00 92 a2 6161 02"})); /* "a" < "aa" */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "92 92 a1 62 00 92 a1 61 02"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "92 92 a2 6161 00 92 a1 61 02"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "92 92 a1 61 00 92 a1 61 01"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a1 61 03"}), FM_EDECODE); /* priority */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a1 61 ff"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 93 a1 61 00 00"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 91 a1 61"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a0 00"}), FM_EDECODE);    /* empty name */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a1 0a 00"}), FM_EDECODE); /* control char */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a1 7f 00"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 a1 ff 00"}), FM_EDECODE);    /* not UTF-8 */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 c4 01 61 00"}), FM_EDECODE); /* bin name */
    CHECK_RC(hello_rc(&(hello_parts){.subs = "91 92 d9 01 61 00"}), FM_ENONCANON);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "c3"}), FM_EDECODE);
    CHECK_RC(hello_rc(&(hello_parts){.subs = "dc 00 01 92 a1 61 00"}), FM_ENONCANON);
    /* a name of FM_MAX_COLLECTION_LEN bytes, and one past it */
    char *n64 = hexrep("91 92 d9 40", "61", 64, "00"), *n65 = hexrep("91 92 d9 41", "61", 65, "00");
    CHECK_OK(hello_rc(&(hello_parts){.subs = n64}));
    CHECK_RC(hello_rc(&(hello_parts){.subs = n65}), FM_ELIMIT);
    free(n64);
    free(n65);
    /* FM_NODE_MAX_SUBS + 1 subscriptions */
    fm_buf b;
    fm_buf_init(&b);
    fm_wr w;
    fm_wr_init(&w, &b);
    put_hex(&b, "98 01 01 01 01 cd 10 00");
    msgpack_pack_array(FM_PK(&w), FM_NODE_MAX_SUBS + 1);
    for (int i = 0; i <= FM_NODE_MAX_SUBS; i++) {
        char nm[8];
        snprintf(nm, sizeof nm, "s%03d", i);
        msgpack_pack_array(FM_PK(&w), 2);
        put_cstr(&w, nm);
        put_uint(&w, 1);
    }
    uint8_t dg[32] = {0};
    fm_wr_bin(&w, dg, 32);
    put_uint(&w, 0);
    fm_hello *h = malloc(sizeof *h);
    FM_ASSERT(h);
    CHECK_RC(fm_proto_hello_decode(b.data, b.len, h), FM_ELIMIT);
    free(h);
    fm_buf_free(&b);
}

/* SUMMARY [2, round, entries] with each entry given as hex. */
static int summary_rc(const char *head, const char *const *entries, size_t n)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, head);
    for (size_t i = 0; i < n; i++)
        put_hex(&b, entries[i]);
    collect *c = calloc(1, sizeof *c);
    FM_ASSERT(c);
    uint64_t round;
    int rc = fm_proto_summary_decode(b.data, b.len, &round, collect_fn, c);
    if (rc) /* the whole frame is validated before the first callback */
        CHECK_EQ_INT(c->n, 0);
    free(c);
    fm_buf_free(&b);
    return rc;
}

#define Z32 "0000000000000000000000000000000000000000000000000000000000000000"
#define D32 "c4 20 " Z32
#define D31 "c4 1f 00000000000000000000000000000000000000000000000000000000000000"
#define D33 "c4 21 000000000000000000000000000000000000000000000000000000000000000000"

static void test_summary_rejects(void)
{
    const char *ok2[] = {"92 a1 61 " D32, "92 a1 62 " D32};
    CHECK_OK(summary_rc("93 02 00 92", ok2, 2));
    const char *unsorted[] = {"92 a1 62 " D32, "92 a1 61 " D32};
    CHECK_RC(summary_rc("93 02 00 92", unsorted, 2), FM_ENONCANON);
    const char *dup[] = {"92 a1 61 " D32, "92 a1 61 " D32};
    CHECK_RC(summary_rc("93 02 00 92", dup, 2), FM_ENONCANON);
    const char *prefix_first[] = {"92 a2 6161 " D32, "92 a1 61 " D32};
    CHECK_RC(summary_rc("93 02 00 92", prefix_first, 2), FM_ENONCANON);
    const char *short_d[] = {"92 a1 61 " D31};
    CHECK_RC(summary_rc("93 02 00 91", short_d, 1), FM_EDECODE);
    const char *long_d[] = {"92 a1 61 " D33};
    CHECK_RC(summary_rc("93 02 00 91", long_d, 1), FM_ELIMIT);
    const char *str_d[] = {"92 a1 61 d9 20 " Z32};
    CHECK_RC(summary_rc("93 02 00 91", str_d, 1), FM_EDECODE);
    const char *three[] = {"93 a1 61 " D32 " 00"};
    CHECK_RC(summary_rc("93 02 00 91", three, 1), FM_EDECODE);
    const char *bad_name[] = {"92 a0 " D32};
    CHECK_RC(summary_rc("93 02 00 91", bad_name, 1), FM_EDECODE);
    /* a valid entry, then a bad one: no callback at all */
    const char *late[] = {"92 a1 61 " D32, "92 a1 62 " D31};
    CHECK_RC(summary_rc("93 02 00 92", late, 2), FM_EDECODE);
    CHECK_RC(summary_rc("93 02 cc 05 90", NULL, 0), FM_ENONCANON); /* round */
    CHECK_RC(summary_rc("93 02 ff 90", NULL, 0), FM_EDECODE);
    CHECK_RC(summary_rc("93 02 00 90 00", NULL, 0), FM_EDECODE); /* trailing */
    CHECK_RC(summary_rc("94 02 00 90 00", NULL, 0), FM_EDECODE); /* array length */
    CHECK_RC(summary_rc("93 03 00 90", NULL, 0), FM_EDECODE);    /* type */
    CHECK_RC(summary_rc("93 02 00 c0", NULL, 0), FM_EDECODE);    /* entries not an array */
    CHECK_RC(summary_rc("93 02 00 dc 00 00", NULL, 0), FM_ENONCANON);

    /* FM_PROTO_MAX_SUMMARY + 1 entries */
    fm_buf b;
    fm_buf_init(&b);
    fm_wr w;
    fm_wr_init(&w, &b);
    uint8_t d[32] = {0};
    fm_proto_summary_begin(&w, 0, FM_PROTO_MAX_SUMMARY + 1);
    for (int i = 0; i <= FM_PROTO_MAX_SUMMARY; i++) {
        char nm[8];
        snprintf(nm, sizeof nm, "c%05d", i);
        fm_proto_summary_entry(&w, (const uint8_t *)nm, (uint32_t)strlen(nm), d);
    }
    uint64_t round;
    CHECK_RC(fm_proto_summary_decode(b.data, b.len, &round, NULL, NULL), FM_ELIMIT);
    fm_buf_free(&b);
}

static int vector_rc(const char *h)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, h);
    fm_vector_msg m;
    fm_vv_init(&m.vv);
    int rc = fm_proto_vector_decode(b.data, b.len, &m);
    fm_vv_free(&m.vv);
    fm_buf_free(&b);
    return rc;
}

#define ID1 "c4 20 0101010101010101010101010101010101010101010101010101010101010101"
#define ID2 "c4 20 0202020202020202020202020202020202020202020202020202020202020202"

static void test_vector_rejects(void)
{
    CHECK_OK(vector_rc("96 03 00 00 00 a1 6e 90"));
    CHECK_OK(vector_rc("96 03 00 01 00 a1 6e 92 92 " ID1 " 01 92 " ID2 " cd 01 00"));
    /* flags: only FM_VECTOR_REPLY is defined */
    CHECK_RC(vector_rc("96 03 00 02 00 a1 6e 90"), FM_EDECODE);
    CHECK_RC(vector_rc("96 03 00 03 00 a1 6e 90"), FM_EDECODE);
    CHECK_RC(vector_rc("96 03 00 cc 80 00 a1 6e 90"), FM_EDECODE);
    /* integers */
    CHECK_RC(vector_rc("96 03 cc 00 00 00 a1 6e 90"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 cd 00 ff a1 6e 90"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 e0 a1 6e 90"), FM_EDECODE);
    /* the vector: sorted unique authors, seq > 0, smallest forms */
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 92 92 " ID2 " 01 92 " ID1 " 01"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 92 92 " ID1 " 01 92 " ID1 " 02"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 91 92 " ID1 " 00"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 91 92 " ID1 " cc 01"), FM_ENONCANON);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 91 92 c4 1f " Z32 " 01"), FM_EDECODE);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e c0"), FM_EDECODE);
    /* name, shape, type, trailing bytes */
    CHECK_RC(vector_rc("96 03 00 00 00 a0 90"), FM_EDECODE);
    CHECK_RC(vector_rc("96 03 00 00 00 c4 01 6e 90"), FM_EDECODE);
    CHECK_RC(vector_rc("95 03 00 00 00 a1 6e"), FM_EDECODE);
    CHECK_RC(vector_rc("96 02 00 00 00 a1 6e 90"), FM_EDECODE);
    CHECK_RC(vector_rc("96 03 00 00 00 a1 6e 90 c0"), FM_EDECODE);
    /* FM_MAX_VV_ENTRIES + 1 authors */
    fm_buf b;
    fm_buf_init(&b);
    fm_wr w;
    fm_wr_init(&w, &b);
    put_hex(&b, "96 03 00 00 00 a1 6e");
    msgpack_pack_array(FM_PK(&w), FM_MAX_VV_ENTRIES + 1);
    for (uint32_t i = 0; i <= FM_MAX_VV_ENTRIES; i++) {
        uint8_t id[32] = {0};
        id[0] = (uint8_t)(i >> 8);
        id[1] = (uint8_t)i;
        msgpack_pack_array(FM_PK(&w), 2);
        fm_wr_bin(&w, id, 32);
        put_uint(&w, 1);
    }
    fm_vector_msg m;
    fm_vv_init(&m.vv);
    CHECK_RC(fm_proto_vector_decode(b.data, b.len, &m), FM_ELIMIT);
    fm_vv_free(&m.vv);
    fm_buf_free(&b);
}

static int batches_rc(const fm_buf *b)
{
    fm_bytes *arr = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *arr);
    FM_ASSERT(arr);
    fm_proto_name name;
    uint32_t n;
    int rc = fm_proto_batches_decode(b->data, b->len, &name, arr, &n);
    free(arr);
    return rc;
}

static int batches_hex(const char *h)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, h);
    int rc = batches_rc(&b);
    fm_buf_free(&b);
    return rc;
}

static void test_batches_rejects(void)
{
    CHECK_OK(batches_hex("93 04 a1 6e 91 c4 01 00"));
    CHECK_RC(batches_hex("93 04 a1 6e 90"), FM_EDECODE); /* zero batches */
    CHECK_RC(batches_hex("93 04 a1 6e 91 a1 00"), FM_EDECODE);
    CHECK_RC(batches_hex("93 04 a1 6e 91 c5 00 01 00"), FM_ENONCANON);
    CHECK_RC(batches_hex("93 04 a1 6e 91 c4 01 00 00"), FM_EDECODE);
    CHECK_RC(batches_hex("93 04 a0 91 c4 01 00"), FM_EDECODE);
    CHECK_RC(batches_hex("93 04 a1 01 91 c4 01 00"), FM_EDECODE);
    CHECK_RC(batches_hex("93 cc 04 a1 6e 91 c4 01 00"), FM_ENONCANON);
    CHECK_RC(batches_hex("93 05 a1 6e 91 c4 01 00"), FM_EDECODE);
    CHECK_RC(batches_hex("92 04 a1 6e"), FM_EDECODE);
    CHECK_RC(batches_hex("93 04 a1 6e c0"), FM_EDECODE);
    /* FM_PROTO_MAX_BATCHES_PER_FRAME + 1 */
    fm_buf b;
    fm_buf_init(&b);
    fm_wr w;
    fm_wr_init(&w, &b);
    fm_proto_batches_begin(&w, (const uint8_t *)"n", 1, FM_PROTO_MAX_BATCHES_PER_FRAME + 1);
    for (int i = 0; i <= FM_PROTO_MAX_BATCHES_PER_FRAME; i++)
        fm_wr_bin(&w, "x", 1);
    CHECK_RC(batches_rc(&b), FM_ELIMIT);
    /* one batch of FM_MAX_BATCH_BYTES + 1 */
    uint8_t *huge = calloc(1, FM_MAX_BATCH_BYTES + 1);
    FM_ASSERT(huge);
    fm_buf_reset(&b);
    fm_wr_init(&w, &b);
    fm_proto_batches_begin(&w, (const uint8_t *)"n", 1, 1);
    fm_wr_bin(&w, huge, FM_MAX_BATCH_BYTES + 1);
    CHECK_RC(batches_rc(&b), FM_ELIMIT);
    free(huge);
    fm_buf_free(&b);
}

static int ack_rc(const char *h)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, h);
    uint64_t v;
    int rc = fm_proto_ack_decode(b.data, b.len, &v);
    fm_buf_free(&b);
    return rc;
}

static void test_ack_rejects(void)
{
    CHECK_OK(ack_rc("92 05 7f"));
    CHECK_OK(ack_rc("92 05 cc 80"));
    CHECK_RC(ack_rc("92 05 cc 7f"), FM_ENONCANON);
    CHECK_RC(ack_rc("92 05 cd 00 80"), FM_ENONCANON);
    CHECK_RC(ack_rc("92 05 ce 00 00 ff ff"), FM_ENONCANON);
    CHECK_RC(ack_rc("92 05 cf 00 00 00 00 ff ff ff ff"), FM_ENONCANON);
    CHECK_RC(ack_rc("92 05 d3 00 00 00 00 00 00 00 01"), FM_ENONCANON);
    CHECK_RC(ack_rc("92 05 d0 80"), FM_EDECODE); /* negative */
    CHECK_RC(ack_rc("92 05 cb 3f f0 00 00 00 00 00 00"), FM_EDECODE);
    CHECK_RC(ack_rc("92 05 c0"), FM_EDECODE);
    CHECK_RC(ack_rc("92 05 00 00"), FM_EDECODE);
    CHECK_RC(ack_rc("93 05 00 00"), FM_EDECODE);
    CHECK_RC(ack_rc("92 06 00"), FM_EDECODE);
    CHECK_RC(ack_rc("82 05 00"), FM_EDECODE); /* a map is not an array */
}

static int lazy_hex(uint64_t type, const char *h)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, h);
    int rc = decode_as(type, b.data, b.len);
    fm_buf_free(&b);
    return rc;
}

/* IHAVE, PRUNE, GRAFT: layouts by hand, and what they refuse. */
static void test_lazy_messages(void)
{
    samples s;
    samples_init(&s);
    fm_proto_name name;
    fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    uint32_t n = 0;
    CHECK_OK(fm_proto_ihave_decode(s.ihave.data, s.ihave.len, &name, e, &n));
    CHECK(name_is(name, "notes"));
    CHECK_EQ_INT(n, 2);
    CHECK_MEM(e[0].author, s.a, FM_ID_BYTES);
    CHECK_EQ_INT(e[0].seq, 3);
    CHECK_MEM(e[1].author, s.b, FM_ID_BYTES);
    CHECK_EQ_INT(e[1].seq, 300);
    CHECK_BYTES(s.prune.data, s.prune.len, (const uint8_t *)"\x91\x08", 2);
    CHECK_OK(fm_proto_graft_decode(s.graft.data, s.graft.len, &name, e, &n));
    CHECK(name_is(name, "notes"));
    CHECK_EQ_INT(n, 1);
    CHECK_MEM(e[0].author, s.b, FM_ID_BYTES);
    CHECK_EQ_INT(e[0].seq, 301);
    CHECK_EQ_INT(s.graft.len, 47);
    CHECK_MEM(s.graft.data, "\x93\x09\xa5notes\x91\x92\xc4\x20", 12);
    char z[32 * 3 + 1] = {0}; /* 32 zero bytes in hex */
    for (int i = 0; i < 32; i++)
        memcpy(z + 3 * i, "00 ", 3);
    char h[512];
    snprintf(h, sizeof h, "93 07 a1 6e 91 92 c4 20 %s 01", z);
    CHECK_OK(lazy_hex(FM_MSG_IHAVE, h));
    snprintf(h, sizeof h, "93 07 a1 6e 91 92 c4 20 %s 00", z); /* seq 0 */
    CHECK_RC(lazy_hex(FM_MSG_IHAVE, h), FM_EDECODE);
    snprintf(h, sizeof h, "93 07 a1 6e 91 92 c4 1f %.93s 01", z); /* a 31-byte author */
    CHECK_RC(lazy_hex(FM_MSG_IHAVE, h), FM_EDECODE);
    snprintf(h, sizeof h, "93 07 a1 6e 91 93 c4 20 %s 01 01", z);
    CHECK(lazy_hex(FM_MSG_IHAVE, h) < 0);
    CHECK_RC(lazy_hex(FM_MSG_IHAVE, "93 07 a1 6e 90"), FM_EDECODE);          /* nothing announced */
    CHECK_RC(lazy_hex(FM_MSG_IHAVE, "93 07 a0 91 92 c4 00 01"), FM_EDECODE); /* bad name */
    fm_buf big; /* one entry past the bound */
    fm_buf_init(&big);
    put_hex(&big, "93 07 a1 6e dc 04 01");
    fm_wr w;
    fm_wr_init(&w, &big);
    for (int i = 0; i <= FM_PROTO_MAX_IHAVE; i++)
        fm_proto_ihave_entry(&w, s.a, (uint64_t)i + 1);
    CHECK_RC(fm_proto_ihave_decode(big.data, big.len, &name, e, &n), FM_ELIMIT);
    fm_buf_free(&big);
    CHECK_RC(lazy_hex(FM_MSG_PRUNE, "92 08 00"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_PRUNE, "91 09"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_GRAFT, "91 09"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_GRAFT, "92 09 a1 6e"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_GRAFT, "93 09 a1 6e 90"), FM_EDECODE);
    snprintf(h, sizeof h, "93 09 a1 6e 91 92 c4 20 %s 00", z); /* from seq 0 */
    CHECK_RC(lazy_hex(FM_MSG_GRAFT, h), FM_EDECODE);
    snprintf(h, sizeof h, "93 09 a1 6e 91 92 c4 20 %s 01", z);
    CHECK_OK(lazy_hex(FM_MSG_GRAFT, h));
    CHECK_RC(lazy_hex(FM_MSG_IHAVE, h), FM_EDECODE); /* a GRAFT is no IHAVE */
    samples_free(&s);
}

static int members_hex(const char *h)
{
    fm_buf b;
    fm_buf_init(&b);
    put_hex(&b, h);
    fm_bytes recs[FM_PROTO_MEMBERS_PER_FRAME];
    uint32_t n;
    int rc = fm_proto_members_decode(b.data, b.len, recs, &n);
    fm_buf_free(&b);
    return rc;
}

static void test_members_rejects(void)
{
    CHECK_OK(members_hex("92 06 91 c4 01 00"));
    CHECK_RC(members_hex("92 06 90"), FM_EDECODE); /* zero records */
    CHECK_RC(members_hex("92 06 91 a1 00"), FM_EDECODE);
    CHECK_RC(members_hex("92 06 91 c5 00 01 00"), FM_ENONCANON);
    CHECK_RC(members_hex("92 06 91 c4 01 00 00"), FM_EDECODE);
    CHECK_RC(members_hex("92 05 91 c4 01 00"), FM_EDECODE);
    CHECK_RC(members_hex("93 06 91 c4 01 00"), FM_EDECODE);
    fm_buf b;
    fm_buf_init(&b);
    fm_wr w;
    fm_wr_init(&w, &b);
    /* a record of FM_PROTO_MAX_MEMBER_BYTES + 1 */
    static uint8_t rec[FM_PROTO_MAX_MEMBER_BYTES + 1];
    put_hex(&b, "92 06 91");
    fm_wr_bin(&w, rec, sizeof rec);
    fm_bytes recs[FM_PROTO_MEMBERS_PER_FRAME];
    uint32_t n;
    CHECK_RC(fm_proto_members_decode(b.data, b.len, recs, &n), FM_ELIMIT);
    /* FM_PROTO_MEMBERS_PER_FRAME + 1 records */
    fm_buf_reset(&b);
    fm_wr_init(&w, &b);
    put_hex(&b, "92 06");
    msgpack_pack_array(FM_PK(&w), FM_PROTO_MEMBERS_PER_FRAME + 1);
    for (int i = 0; i <= FM_PROTO_MEMBERS_PER_FRAME; i++)
        fm_wr_bin(&w, "x", 1);
    CHECK_RC(fm_proto_members_decode(b.data, b.len, recs, &n), FM_ELIMIT);
    fm_buf_free(&b);
}

/* ---- truncation ------------------------------------------------------------------------------ */

/* Every proper prefix of every sample, copied to a heap block of exactly its size (so the
 * sanitizer sees any read past it): its own decoder says FM_ETRUNC, every other decoder fails
 * without crashing. Then every single-byte extension fails as trailing bytes. */
static void test_truncation(void)
{
    samples s;
    samples_init(&s);
    sample_msg m[24];
    size_t n = sample_list(&s, m);
    for (size_t i = 0; i < n; i++) {
        const fm_buf *b = m[i].b;
        int bad = 0;
        for (size_t cut = 0; cut < b->len; cut++) {
            uint8_t *p = malloc(cut ? cut : 1);
            FM_ASSERT(p);
            memcpy(p, b->data, cut);
            int rc = decode_as(m[i].type, p, cut);
            if (rc != FM_ETRUNC && bad++ < 3)
                fprintf(stderr, "  %s cut at %zu of %zu: %d (%s)\n", m[i].name, cut, b->len, rc,
                        fm_strerror(rc));
            CHECK_RC(rc, FM_ETRUNC);
            uint64_t t;
            (void)fm_proto_type(p, cut, &t);
            free(p);
        }
        uint8_t *p = malloc(b->len + 1);
        FM_ASSERT(p);
        memcpy(p, b->data, b->len);
        p[b->len] = 0xc0;
        CHECK_RC(decode_as(m[i].type, p, b->len + 1), FM_EDECODE);
        free(p);
    }
    samples_free(&s);
}

/* Every byte of every sample flipped in turn: never a crash, and whatever still decodes is a
 * canonical message (re-encodes to the mutated bytes; checked for the fixed-shape types). */
static void test_bit_flips(void)
{
    samples s;
    samples_init(&s);
    sample_msg m[24];
    size_t n = sample_list(&s, m);
    for (size_t i = 0; i < n; i++) {
        const fm_buf *b = m[i].b;
        uint8_t *p = malloc(b->len);
        FM_ASSERT(p);
        for (size_t k = 0; k < b->len; k++)
            for (int bit = 0; bit < 8; bit++) {
                memcpy(p, b->data, b->len);
                p[k] ^= (uint8_t)(1u << bit);
                for (uint64_t t = 1; t <= 6; t++)
                    (void)decode_as(t, p, b->len);
                uint64_t v;
                if (m[i].type == FM_MSG_ACK && fm_proto_ack_decode(p, b->len, &v) == 0) {
                    fm_buf again;
                    fm_buf_init(&again);
                    CHECK_OK(fm_proto_ack_encode(&again, v));
                    CHECK_BYTES(again.data, again.len, p, b->len);
                    fm_buf_free(&again);
                }
            }
        free(p);
    }
    samples_free(&s);
}

/* PEERS: the layout by hand, and what it refuses. */
static void test_peers_message(void)
{
    samples s;
    samples_init(&s);
    const uint8_t *ids;
    uint32_t n = 99;
    CHECK_OK(fm_proto_peers_decode(s.peers.data, s.peers.len, &ids, &n));
    CHECK_EQ_INT(n, 2);
    CHECK_MEM(ids, s.prefixes, sizeof s.prefixes);
    CHECK_EQ_INT(s.peers.len, 4 + 16);
    CHECK_MEM(s.peers.data, "\x92\x0a\xc4\x10", 4);
    /* none: a node whose only session is with the receiver */
    CHECK_OK(lazy_hex(FM_MSG_PEERS, "92 0a c4 00"));
    CHECK_OK(lazy_hex(FM_MSG_PEERS, "92 0a c4 10 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02"));
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "92 0a c4 10 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 01"),
             FM_EDECODE); /* descending */
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "92 0a c4 10 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01"),
             FM_EDECODE); /* twice */
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "92 0a c4 07 00 00 00 00 00 00 01"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "92 0a a0"), FM_EDECODE); /* a string */
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "91 0a"), FM_EDECODE);    /* no list */
    CHECK(lazy_hex(FM_MSG_PEERS, "93 0a c4 00 00") < 0);      /* one element too many */
    CHECK_RC(lazy_hex(FM_MSG_PEERS, "92 0a c4 08 00 00 00"), FM_ETRUNC);
    uint8_t many[(FM_PROTO_MAX_PEERS + 1) * FM_PROTO_PEER_PREFIX];
    memset(many, 0, sizeof many);
    for (uint32_t i = 0; i <= FM_PROTO_MAX_PEERS; i++)
        many[i * FM_PROTO_PEER_PREFIX + FM_PROTO_PEER_PREFIX - 1] = (uint8_t)(i + 1);
    fm_buf b;
    fm_buf_init(&b);
    CHECK_OK(fm_proto_peers_encode(&b, many, FM_PROTO_MAX_PEERS));
    CHECK_OK(fm_proto_peers_decode(b.data, b.len, &ids, &n));
    CHECK_EQ_INT(n, FM_PROTO_MAX_PEERS);
    fm_buf_reset(&b);
    CHECK_RC(fm_proto_peers_encode(&b, many, FM_PROTO_MAX_PEERS + 1), FM_EINVAL);
    fm_wr w; /* one past the bound, by hand */
    fm_wr_init(&w, &b);
    msgpack_pack_array(FM_PK(&w), 2);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_PEERS);
    fm_wr_bin(&w, many, sizeof many);
    CHECK_RC(fm_proto_peers_decode(b.data, b.len, &ids, &n), FM_ELIMIT);
    fm_buf_reset(&b);
    many[FM_PROTO_PEER_PREFIX - 1] = 0xff; /* out of order */
    CHECK_RC(fm_proto_peers_encode(&b, many, 2), FM_EINVAL);
    CHECK_EQ_INT(b.len, 0);
    fm_buf_free(&b);
    samples_free(&s);
}

/* ANNOUNCE: groups of IHAVE entries, and what it refuses. */
static void test_announce_message(void)
{
    samples s;
    samples_init(&s);
    fm_proto_name *names = calloc(FM_PROTO_MAX_IHAVE, sizeof *names);
    fm_ihave_entry *e = calloc(FM_PROTO_MAX_IHAVE, sizeof *e);
    FM_ASSERT(names && e);
    uint32_t n = 0;
    CHECK_OK(fm_proto_announce_decode(s.announce.data, s.announce.len, names, e, &n));
    CHECK_EQ_INT(n, 3);
    CHECK(name_is(names[0], "notes"));
    CHECK(name_is(names[1], "alerts") && name_is(names[2], "alerts"));
    CHECK(names[1].p == names[2].p);
    CHECK_MEM(e[0].author, s.a, FM_ID_BYTES);
    CHECK_EQ_INT(e[0].seq, 3);
    CHECK_MEM(e[1].author, s.b, FM_ID_BYTES);
    CHECK_EQ_INT(e[1].seq, 300);
    CHECK_EQ_INT(e[2].seq, 1);
    CHECK_MEM(s.announce.data, "\x92\x0b\x92\x92\xa5notes\x91\x92\xc4\x20", 14);
    char z[32 * 3 + 1] = {0};
    for (int i = 0; i < 32; i++)
        memcpy(z + 3 * i, "00 ", 3);
    char h[1024];
    snprintf(h, sizeof h, "92 0b 91 92 a1 6e 91 92 c4 20 %s 01", z);
    CHECK_OK(lazy_hex(FM_MSG_ANNOUNCE, h));
    snprintf(h, sizeof h, "92 0b 92 92 a1 6e 91 92 c4 20 %s 01 92 a1 6e 91 92 c4 20 %s 02", z, z);
    CHECK_OK(lazy_hex(FM_MSG_ANNOUNCE, h)); /* one collection twice: two groups */
    snprintf(h, sizeof h, "92 0b 91 92 a1 6e 91 92 c4 20 %s 00", z); /* seq 0 */
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, h), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, "92 0b 90"), FM_EDECODE);             /* no group */
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, "92 0b 91 92 a1 6e 90"), FM_EDECODE); /* an empty one */
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, "92 0b 91 92 a0 91"), FM_EDECODE);    /* bad name */
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, "92 0b 91 91 a1 6e"), FM_EDECODE);    /* no entries */
    CHECK_RC(lazy_hex(FM_MSG_ANNOUNCE, "93 0b 91 00"), FM_EDECODE);
    /* 1024 entries in all is the bound, across groups too */
    fm_buf big;
    fm_buf_init(&big);
    fm_wr w;
    fm_wr_init(&w, &big);
    fm_proto_announce_begin(&w, 2);
    fm_proto_announce_group(&w, (const uint8_t *)"a", 1, FM_PROTO_MAX_IHAVE / 2);
    for (int i = 0; i < FM_PROTO_MAX_IHAVE / 2; i++)
        fm_proto_ihave_entry(&w, s.a, (uint64_t)i + 1);
    fm_proto_announce_group(&w, (const uint8_t *)"b", 1, FM_PROTO_MAX_IHAVE / 2);
    for (int i = 0; i < FM_PROTO_MAX_IHAVE / 2; i++)
        fm_proto_ihave_entry(&w, s.b, (uint64_t)i + 1);
    CHECK_OK(fm_proto_announce_decode(big.data, big.len, names, e, &n));
    CHECK_EQ_INT(n, FM_PROTO_MAX_IHAVE);
    fm_buf_reset(&big);
    fm_wr_init(&w, &big);
    fm_proto_announce_begin(&w, 2);
    fm_proto_announce_group(&w, (const uint8_t *)"a", 1, FM_PROTO_MAX_IHAVE);
    for (int i = 0; i < FM_PROTO_MAX_IHAVE; i++)
        fm_proto_ihave_entry(&w, s.a, (uint64_t)i + 1);
    fm_proto_announce_group(&w, (const uint8_t *)"b", 1, 1);
    fm_proto_ihave_entry(&w, s.b, 1);
    CHECK_RC(fm_proto_announce_decode(big.data, big.len, names, e, &n), FM_ELIMIT);
    fm_buf_reset(&big);
    fm_wr_init(&w, &big);
    fm_proto_announce_begin(&w, 2);
    fm_proto_announce_group(&w, (const uint8_t *)"a", 1, FM_PROTO_MAX_IHAVE - 1);
    for (int i = 0; i < FM_PROTO_MAX_IHAVE - 1; i++)
        fm_proto_ihave_entry(&w, s.a, (uint64_t)i + 1);
    fm_proto_announce_group(&w, (const uint8_t *)"b", 1, 2);
    fm_proto_ihave_entry(&w, s.b, 1);
    fm_proto_ihave_entry(&w, s.b, 2);
    CHECK_RC(fm_proto_announce_decode(big.data, big.len, names, e, &n), FM_ELIMIT);
    fm_buf_free(&big);
    free(names);
    free(e);
    samples_free(&s);
}

/* MIXED: groups of batches, and what it refuses. */
static void test_mixed_message(void)
{
    samples s;
    samples_init(&s);
    fm_proto_name *names = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *names);
    fm_bytes *arr = calloc(FM_PROTO_MAX_BATCHES_PER_FRAME, sizeof *arr);
    FM_ASSERT(names && arr);
    uint32_t n = 0;
    CHECK_OK(fm_proto_mixed_decode(s.mixed.data, s.mixed.len, names, arr, &n));
    CHECK_EQ_INT(n, 2);
    CHECK(name_is(names[0], "notes") && name_is(names[1], "notes"));
    CHECK(names[0].p != names[1].p); /* two groups */
    CHECK_BYTES(arr[0].data, arr[0].len, s.batch1.data, s.batch1.len);
    CHECK_BYTES(arr[1].data, arr[1].len, s.batch2.data, s.batch2.len);
    CHECK_MEM(s.mixed.data, "\x92\x0c\x92\x92\xa5notes\x91\xc4", 12);
    CHECK_OK(lazy_hex(FM_MSG_MIXED, "92 0c 91 92 a1 6e 91 c4 01 00"));
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 90"), FM_EDECODE);                   /* no group */
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 91 92 a1 6e 90"), FM_EDECODE);       /* an empty one */
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 91 92 a1 6e 91 a1 00"), FM_EDECODE); /* not bin */
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 91 92 a0 91 c4 01 00"), FM_EDECODE); /* bad name */
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 91 93 a1 6e 91 c4 01 00 00"), FM_EDECODE);
    CHECK_RC(lazy_hex(FM_MSG_MIXED, "92 0c 91 92 a1 6e 91 c4 05 00"), FM_ETRUNC);
    /* FM_PROTO_MAX_BATCHES_PER_FRAME batches in all is the bound, across groups too */
    for (uint32_t extra = 0; extra <= 1; extra++) {
        fm_buf big;
        fm_buf_init(&big);
        fm_wr w;
        fm_wr_init(&w, &big);
        uint32_t half = FM_PROTO_MAX_BATCHES_PER_FRAME / 2;
        fm_proto_mixed_begin(&w, 2);
        fm_proto_mixed_group(&w, (const uint8_t *)"a", 1, half);
        for (uint32_t i = 0; i < half; i++)
            fm_wr_bin(&w, "x", 1);
        fm_proto_mixed_group(&w, (const uint8_t *)"b", 1, half + extra);
        for (uint32_t i = 0; i < half + extra; i++)
            fm_wr_bin(&w, "y", 1);
        int rc = fm_proto_mixed_decode(big.data, big.len, names, arr, &n);
        if (extra) {
            CHECK_RC(rc, FM_ELIMIT);
        } else {
            CHECK_OK(rc);
            CHECK_EQ_INT(n, FM_PROTO_MAX_BATCHES_PER_FRAME);
        }
        fm_buf_free(&big);
    }
    free(names);
    free(arr);
    samples_free(&s);
}

/* ---- golden vectors -------------------------------------------------------------------------- */

static void vec_hex(fm_buf *b, const char *name, const uint8_t *p, size_t n)
{
    fm_buf_printf(b, "%s ", name);
    for (size_t i = 0; i < n; i++)
        fm_buf_printf(b, "%02x", p[i]);
    fm_buf_putc(b, '\n');
}

static const char PROTO_VECTOR_HEADER[] =
    "# fieldmesh golden vectors: sync messages of protocol 1 (node/proto.h, docs/PROTOCOL.md).\n"
    "# Generated by tests/unit/test_proto.c (FM_WRITE_VECTORS=1); checked byte for byte.\n"
    "# Each line: <name> <lowercase hex>. Messages are the plaintext of one session frame each\n"
    "# (what fm_session_send encrypts), not the records on the wire.\n"
    "# Inputs: Ed25519 seeds of 32 bytes: authority (= mesh id) 0xa1, device a 0x01, device b\n"
    "# 0x02. vv_notes = {a: 3, b: 300}; d_* = BLAKE2b-256 of a vector's canonical encoding.\n"
    "# batch1 = a's feed in \"notes\": seq 1, prev nil, context {}, hlc (1700000000000 << 16) | "
    "1,\n"
    "#   ops [[0, \"r1\", \"title\", \"hi\"]]; batch2 = seq 2, prev = BLAKE2b-256(batch1), "
    "context\n"
    "#   {b: 300}, hlc 1700000000500 << 16, ops [[2, \"r1\", \"n\", -3], [5, \"r2\"]].\n"
    "# cert = certificate of a, name \"alpha\", perms 3, not_before = issued_at = 1700000000000,\n"
    "#   not_after 1800000000000; revocation = of b, effective_ms = issued_at = 1750000000000.\n"
    "# hello: [1, 1, 1, caps 7, window 262144, [[\"alerts\", 0], [\"notes\", 1], [\"photos\", "
    "2]],\n"
    "#   digest 32 x 0x5a, count 3]; hello_all: window 4096, subs nil, digest 32 x 0x00, count 0;\n"
    "#   hello_none: window 67108864, subs [], digest 32 x 0xff, count 4096.\n"
    "# summary: round 1, [[\"alerts\", d_empty], [\"notes\", d_notes]]; summary_empty: round 2.\n"
    "# vector: round 1, flags 0, acked 0, \"notes\", vv_notes; vector_reply: round 2, flags 1,\n"
    "#   acked 70000, \"alerts\", {}. batches: \"notes\", [batch1, batch2]. ack: 65536.\n"
    "# members: [cert, revocation]. ihave: \"notes\", [[a, 3], [b, 300]]. prune.\n"
    "# graft: \"notes\", [[b, 301]]. peers: the first 8 bytes of a and of b, ascending.\n"
    "# announce: [[\"notes\", [[a, 3]]], [\"alerts\", [[b, 300], [a, 1]]]].\n"
    "# mixed: [[\"notes\", [batch1]], [\"notes\", [batch2]]].\n";

static void proto_vectors(fm_buf *b, const samples *s)
{
    vec_hex(b, "mesh_id", s->mesh, FM_ID_BYTES);
    vec_hex(b, "device_a", s->a, FM_ID_BYTES);
    vec_hex(b, "device_b", s->b, FM_ID_BYTES);
    vec_hex(b, "d_empty", s->d_empty, FM_HASH_BYTES);
    vec_hex(b, "d_notes", s->d_notes, FM_HASH_BYTES);
    vec_hex(b, "batch1", s->batch1.data, s->batch1.len);
    vec_hex(b, "batch2", s->batch2.data, s->batch2.len);
    vec_hex(b, "cert", s->cert, s->cert_len);
    vec_hex(b, "revocation", s->rev, s->rev_len);
    sample_msg m[24];
    size_t n = sample_list(s, m);
    for (size_t i = 0; i < n; i++)
        vec_hex(b, m[i].name, m[i].b->data, m[i].b->len);
}

/* The vector file: FM_VECTORS_DIR if the build defines it, else next to this source file. */
static void vectors_path(char *out, size_t cap)
{
#ifdef FM_VECTORS_DIR
    snprintf(out, cap, "%s/proto_v1.txt", FM_VECTORS_DIR);
#else
    const char *f = __FILE__, *u = strstr(f, "unit/test_proto.c");
    int dir = u ? (int)(u - f) : 0;
    snprintf(out, cap, "%.*svectors/proto_v1.txt", dir, f);
    if (!u)
        snprintf(out, cap, "tests/vectors/proto_v1.txt");
#endif
}

static void test_golden_vectors(void)
{
    samples s;
    samples_init(&s);
    fm_buf b;
    fm_buf_init(&b);
    fm_buf_append(&b, PROTO_VECTOR_HEADER, strlen(PROTO_VECTOR_HEADER));
    proto_vectors(&b, &s);
    char *want = fm_buf_take_str(&b);
    char path[4096];
    vectors_path(path, sizeof path);
    fm_test_golden(path, want);
    free(want);
    samples_free(&s);
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    RUN(test_type);
    RUN(test_hello_roundtrip);
    RUN(test_summary_roundtrip);
    RUN(test_vector_roundtrip);
    RUN(test_batches_roundtrip);
    RUN(test_ack_roundtrip);
    RUN(test_members_roundtrip);
    RUN(test_hello_rejects);
    RUN(test_summary_rejects);
    RUN(test_vector_rejects);
    RUN(test_batches_rejects);
    RUN(test_ack_rejects);
    RUN(test_members_rejects);
    RUN(test_lazy_messages);
    RUN(test_truncation);
    RUN(test_bit_flips);
    RUN(test_peers_message);
    RUN(test_announce_message);
    RUN(test_mixed_message);
    RUN(test_golden_vectors);
    TEST_MAIN_END();
}
