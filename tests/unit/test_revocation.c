/*
 * test_revocation.c — a revocation rolls back what a replica already applied (node/revocation.c,
 * docs/PROTOCOL.md §4.6). Device D writes before and after the revocation's instant E; device L,
 * who saw everything, then overwrites values of D's, one of them written after E. Replicas that
 * get the same batches and the revocation in different orders (batches first, revocation first,
 * L's batches before D's, L's batches held until the revocation releases them, a reopen between)
 * must end in one state: D's batches from E on gone with their effects, everything else kept,
 * L's batch naming a refused one applied without it. Then the rolled-back replica is reopened and
 * must neither hold nor export any refused batch.
 */
#include "crypto/cert.h"
#include "fm_test.h"
#include "node/replica.h"
#include "replica_dump.h"

#include <unistd.h>

#define T0 1750000000000ull
#define E_MS (T0 + 3000) /* the revocation's effective instant */
#define MAX_LOG 16

typedef struct node {
    fm_test_env te;
    fm_identity *id;
    uint8_t pk[FM_ID_BYTES];
    fm_replica *r;
    char path[512];
} node;

/* The mesh, its members' certificates, and every batch written, in the order written. */
static fm_identity *g_mesh;
static char g_cert[8][FM_MEMBER_TEXT_MAX];
static uint32_t g_ncert;
static char g_rev[FM_MEMBER_TEXT_MAX];
static fm_bytes g_log[MAX_LOG];
static uint32_t g_nlog;
static char g_dir[256];

static void log_batch(void *arg, const uint8_t *batch, size_t len)
{
    (void)arg;
    FM_ASSERT(g_nlog < MAX_LOG);
    g_log[g_nlog].data = malloc(len);
    FM_ASSERT(g_log[g_nlog].data);
    memcpy(g_log[g_nlog].data, batch, len);
    g_log[g_nlog++].len = len;
}

/* Opens a member replica for seed n (file store name, or NULL: in memory), admitted by the mesh,
 * holding every certificate issued so far. */
static void node_open(node *nd, uint8_t n, const char *file)
{
    memset(nd, 0, sizeof *nd);
    fm_test_env_init(&nd->te, T0, n);
    uint8_t seed[32] = {n, 0x5e};
    CHECK_OK(fm_identity_from_seed(seed, &nd->id));
    fm_identity_public(nd->id, nd->pk);
    if (file)
        snprintf(nd->path, sizeof nd->path, "%s/%s", g_dir, file);
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION,
                             .path = file ? nd->path : NULL,
                             .identity = nd->id,
                             .env = &nd->te.env};
    CHECK_OK(fm_replica_open(&cfg, &nd->r));
    if (!nd->r)
        exit(1);
    FM_ASSERT(g_ncert < 8);
    CHECK_OK(fm_mesh_admit(&nd->te.env, g_mesh, nd->pk, "dev", 30, 0, g_cert[g_ncert],
                           sizeof g_cert[g_ncert]));
    CHECK_OK(fm_replica_join(nd->r, g_cert[g_ncert]));
    g_ncert++;
}

static void node_members(node *nd)
{
    for (uint32_t i = 0; i < g_ncert; i++)
        CHECK_OK(fm_replica_import_member(nd->r, g_cert[i]));
}

static void node_reopen(node *nd)
{
    fm_replica_close(nd->r);
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION,
                             .path = nd->path,
                             .identity = nd->id,
                             .env = &nd->te.env};
    nd->r = NULL;
    CHECK_OK(fm_replica_open(&cfg, &nd->r));
    if (!nd->r)
        exit(1);
}

static void node_close(node *nd)
{
    fm_replica_close(nd->r);
    fm_identity_free(nd->id);
}

/* One local transaction of one or two lww writes (id2 NULL: one), its batch appended to g_log. */
static void set2(node *nd, const char *coll, const char *id, const char *field, int64_t v,
                 const char *id2, const char *field2, int64_t v2)
{
    fm_txn *t;
    fm__replica_set_applied_hook(nd->r, log_batch, NULL);
    CHECK_OK(fm_txn_begin(nd->r, coll, &t));
    CHECK_OK(fm_txn_set(t, id, field, FM_KIND_LWW, fm_value_int(v)));
    if (id2)
        CHECK_OK(fm_txn_set(t, id2, field2, FM_KIND_LWW, fm_value_int(v2)));
    CHECK_OK(fm_txn_commit(t));
    fm__replica_set_applied_hook(nd->r, NULL, NULL);
}

static void set_int(node *nd, const char *coll, const char *id, const char *field, int64_t v)
{
    set2(nd, coll, id, field, v, NULL, NULL, 0);
}

/* Ingests log entries idx[0..n) one call each; returns how many were applied. */
static int feed(node *nd, const uint32_t *idx, size_t n, int *results)
{
    int applied = 0;
    for (size_t i = 0; i < n; i++) {
        int res = 0, rc = fm_replica_ingest(nd->r, &g_log[idx[i]], 1, &res);
        CHECK(rc >= 0);
        applied += rc > 0 ? rc : 0;
        if (results)
            results[i] = res;
    }
    return applied;
}

static void hash_of(node *nd, uint8_t out[FM_HASH_BYTES], fm_status *st)
{
    CHECK_OK(fm_replica_status(nd->r, st));
    memcpy(out, st->state_hash, FM_HASH_BYTES);
}

static uint64_t held_seq(node *nd, const char *coll, const uint8_t author[FM_ID_BYTES])
{
    fm_coll *c = fm_state_coll(&nd->r->st, (const uint8_t *)coll, (uint32_t)strlen(coll));
    return c ? fm_vv_get(&c->vv, author) : 0;
}

typedef struct count_ctx {
    const uint8_t *author;
    uint64_t above;
    uint32_t n;
} count_ctx;

/* Exported batches by author with a last seq above `above`. */
static int count_export(void *arg, const uint8_t *p, size_t len)
{
    count_ctx *x = arg;
    fm_batch b;
    fm_batch_init(&b);
    if (fm_batch_decode(p, len, &b) == 0 && memcmp(b.author, x->author, FM_ID_BYTES) == 0 &&
        fm_batch_last_seq(&b) > x->above)
        x->n++;
    fm_batch_free(&b);
    return 0;
}

static uint32_t exported_beyond(node *nd, const char *coll, const uint8_t *author, uint64_t seq)
{
    count_ctx x = {author, seq, 0};
    CHECK_OK(fm_replica_export(nd->r, coll, NULL, 0, count_export, &x));
    return x.n;
}

static int name_cat(void *arg, const char *name)
{
    fm_buf_printf(arg, "%s;", name);
    return 0;
}

/* "a;b;" — the collections a replica holds. */
static char *colls_of(node *nd)
{
    fm_buf b;
    fm_buf_init(&b);
    CHECK_OK(fm_replica_collections(nd->r, name_cat, &b));
    fm_buf_putc(&b, '\0');
    return (char *)b.data;
}

/* The record's JSON holds `part` (e.g. "\"c\":20"). */
#define CHECK_JSON_HAS(nd, id, part)                                                               \
    do {                                                                                           \
        fm_record *_rec = NULL;                                                                    \
        CHECK_OK(fm_record_get((nd)->r, "notes", (id), &_rec));                                    \
        char *_j = _rec ? fm_record_json(_rec) : NULL;                                             \
        if (!_j || !strstr(_j, (part)))                                                            \
            fprintf(stderr, "record %s: %s lacks %s\n", (id), _j ? _j : "(none)", (part));         \
        CHECK(_j &&strstr(_j, (part)));                                                            \
        free(_j);                                                                                  \
        fm_record_free(_rec);                                                                      \
    } while (0)

/* The same readable state and state hash as the reference. */
static void check_same(node *nd, const char *want_dump, const uint8_t want_hash[FM_HASH_BYTES],
                       const char *who)
{
    char *dump = fm_test_dump(nd->r);
    fm_status st;
    uint8_t h[FM_HASH_BYTES];
    hash_of(nd, h, &st);
    if (strcmp(dump, want_dump) != 0 || memcmp(h, want_hash, FM_HASH_BYTES) != 0)
        fprintf(stderr, "%s differs:\n%s\nwant:\n%s\n", who, dump, want_dump);
    CHECK_STR(dump, want_dump);
    CHECK_MEM(h, want_hash, FM_HASH_BYTES);
    CHECK_EQ_INT(st.pending, 0);
    free(dump);
}

/* The batches, by index into g_log. */
enum { L1, D1, D2, D3, D4, D5, L2, L3, L4, NLOG };

static void write_history(node *l, node *d)
{
    l->te.now = d->te.now = T0 + 1000;
    set_int(l, "notes", "r1", "c", 10); /* L1 */
    CHECK_EQ_INT(fm_replica_ingest(d->r, &g_log[L1], 1, NULL), 1);
    d->te.now = T0 + 1100;
    set_int(d, "notes", "r1", "a", 1); /* D1, before E */
    d->te.now = T0 + 2000;
    set_int(d, "notes", "r2", "b", 2); /* D2, before E */
    d->te.now = T0 + 4000;
    set_int(d, "notes", "r1", "c", 30); /* D3, after E: supersedes L1's c */
    d->te.now = T0 + 5000;
    set_int(d, "notes", "r3", "x", 4); /* D4, after E: a record only D wrote */
    set_int(d, "side", "r9", "y", 9);  /* D5, after E: a collection only D wrote */
    int res[5];
    CHECK_EQ_INT(feed(l, (const uint32_t[]){D1, D2, D3, D4, D5}, 5, res), 5);
    l->te.now = T0 + 6000;
    /* L2 supersedes D3 (refused) and D2 (kept): its context names D up to 3. */
    set2(l, "notes", "r1", "c", 20, "r2", "b", 22);
    set_int(l, "notes", "r1", "a", 11); /* L3: names D1 only */
    set_int(l, "notes", "r4", "z", 5);  /* L4 */
    CHECK_EQ_INT(g_nlog, NLOG);
}

static void test_rollback(void)
{
    node l, d;
    node_open(&l, 1, NULL);
    node_open(&d, 2, NULL);
    node late, early, lfirst, held, reopened;
    node_open(&late, 3, "late.db");
    node_open(&early, 4, NULL);
    node_open(&lfirst, 5, NULL);
    node_open(&held, 6, NULL);
    node_open(&reopened, 7, "reopened.db");
    node *all[] = {&l, &d, &late, &early, &lfirst, &held, &reopened};
    for (size_t i = 0; i < FM_ARRAY_LEN(all); i++)
        node_members(all[i]);
    write_history(&l, &d);
    /* L's L2 names D3 (after E), L3 names D1 (before E). */
    fm_batch b;
    fm_batch_init(&b);
    CHECK_OK(fm_batch_decode(g_log[L2].data, g_log[L2].len, &b));
    CHECK_EQ_INT(fm_vv_get(&b.ctx, d.pk), 3);
    CHECK_OK(fm_batch_decode(g_log[L3].data, g_log[L3].len, &b));
    CHECK_EQ_INT(fm_vv_get(&b.ctx, d.pk), 1);
    fm_batch_free(&b);

    fm_revocation rv;
    uint8_t mesh_pk[FM_ID_BYTES];
    fm_identity_public(g_mesh, mesh_pk);
    CHECK_OK(fm_revocation_issue(g_mesh, mesh_pk, d.pk, E_MS, E_MS, &rv));
    CHECK_OK(fm_revocation_to_text(&rv, g_rev, sizeof g_rev));

    /* late: everything applied first, in causal order, then the revocation. */
    const uint32_t causal[] = {L1, D1, D2, D3, D4, D5, L2, L3, L4};
    CHECK_EQ_INT(feed(&late, causal, NLOG, NULL), NLOG);
    CHECK_EQ_INT(held_seq(&late, "notes", d.pk), 4);
    CHECK_OK(fm_replica_import_member(late.r, g_rev));
    CHECK_EQ_INT(held_seq(&late, "notes", d.pk), 2); /* D3, D4 gone */
    CHECK_EQ_INT(held_seq(&late, "side", d.pk), 0);
    CHECK_EQ_INT(held_seq(&late, "notes", l.pk), 5); /* every batch of L stays */
    char *cl = colls_of(&late);
    CHECK_STR(cl, "notes;"); /* nothing is left of "side": as if never seen */
    free(cl);
    /* L2's c wins over L1's (concurrent again: D3 between them is gone); L2 overwrote D2's b and
     * L3 D1's a; D4's record is gone. */
    CHECK_JSON_HAS(&late, "r1", "\"a\":11");
    CHECK_JSON_HAS(&late, "r1", "\"c\":20");
    CHECK_JSON_HAS(&late, "r2", "\"b\":22");
    CHECK_JSON_HAS(&late, "r4", "\"z\":5");
    fm_record *rec = NULL;
    CHECK_RC(fm_record_get(late.r, "notes", "r3", &rec), FM_ENOTFOUND);
    char *want = fm_test_dump(late.r);
    fm_status st;
    uint8_t want_hash[FM_HASH_BYTES];
    hash_of(&late, want_hash, &st);
    CHECK_EQ_INT(st.pending, 0);

    /* early: the revocation first; D3..D5 refused on arrival, L2 applied without D3. */
    CHECK_OK(fm_replica_import_member(early.r, g_rev));
    int res[NLOG];
    CHECK_EQ_INT(feed(&early, causal, NLOG, res), NLOG - 3);
    CHECK_RC(res[3], FM_EREVOKED);
    CHECK_RC(res[4], FM_EREVOKED);
    CHECK_RC(res[5], FM_EREVOKED);
    CHECK_RC(res[6], 0);
    check_same(&early, want, want_hash, "early");

    /* lfirst: the revocation, then all of L before any of D: L2 and L3 apply without what they
     * name; D1 and D2 arrive late, and the log is replayed so that L2 and L3 follow them. */
    CHECK_OK(fm_replica_import_member(lfirst.r, g_rev));
    const uint32_t l_first[] = {L1, L2, L3, L4, D5, D4, D3, D2, D1};
    feed(&lfirst, l_first, NLOG, NULL);
    check_same(&lfirst, want, want_hash, "lfirst");

    /* held: L's batches wait for D's (no revocation yet); the revocation releases them. */
    const uint32_t l_only[] = {L1, L2, L3, L4};
    CHECK_EQ_INT(feed(&held, l_only, 4, res), 1);
    CHECK_RC(res[1], FM_EPENDING);
    CHECK_OK(fm_replica_import_member(held.r, g_rev));
    CHECK_OK(fm_replica_status(held.r, &st));
    CHECK_EQ_INT(st.pending, 0);
    CHECK_EQ_INT(held_seq(&held, "notes", l.pk), 5);
    const uint32_t d_only[] = {D1, D2, D3, D4, D5};
    CHECK_EQ_INT(feed(&held, d_only, 5, NULL), 2);
    check_same(&held, want, want_hash, "held");

    /* reopened: L first under the revocation, a restart, then D: the absent references noted
     * before the restart still bring the replay. */
    CHECK_OK(fm_replica_import_member(reopened.r, g_rev));
    feed(&reopened, l_only, 4, NULL);
    node_reopen(&reopened);
    feed(&reopened, d_only, 5, NULL);
    check_same(&reopened, want, want_hash, "reopened");

    /* late after a restart: the same state, nothing of D beyond D2 held, served or accepted. */
    node_reopen(&late);
    check_same(&late, want, want_hash, "late reopened");
    CHECK_EQ_INT(exported_beyond(&late, "notes", d.pk, 2), 0);
    CHECK_EQ_INT(exported_beyond(&late, "notes", l.pk, 0), 4);
    CHECK_EQ_INT(fm_replica_ingest(late.r, &g_log[D3], 1, res), 0);
    CHECK_RC(res[0], FM_EREVOKED);
    CHECK_EQ_INT(fm_replica_ingest(late.r, &g_log[D5], 1, res), 0);
    CHECK_RC(res[0], FM_EREVOKED);
    check_same(&late, want, want_hash, "late after refusals");

    free(want);
    for (size_t i = 0; i < FM_ARRAY_LEN(all); i++)
        node_close(all[i]);
}

int main(void)
{
    fm_test_tmpdir(g_dir, sizeof g_dir, "revocation");
    uint8_t seed[32] = {0x99, 0x5e};
    CHECK_OK(fm_identity_from_seed(seed, &g_mesh));
    RUN(test_rollback);
    fm_identity_free(g_mesh);
    for (uint32_t i = 0; i < g_nlog; i++)
        fm_bytes_free(&g_log[i]);
    fm_test_tmpdir_remove(g_dir);
    TEST_MAIN_END();
}
