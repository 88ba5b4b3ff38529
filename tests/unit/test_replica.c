/*
 * test_replica.c — the public replica API end to end: local transactions of every kind read back
 * as exact JSON; listing and conflicts; deleted records; bad input and every bound (at and past)
 * leave nothing written; replicas exchanging batches converge in any delivery order through the
 * pending area; duplicates, tampered batches and forks; file stores reopened; export/replay.
 * Then the internals the node core uses: the applied hook (order, exact bytes, never for a failed
 * call); export from a vector (what it reads); duplicates that cost no verification and a shared
 * signature cache; compact causal contexts (exactly what they name, and a property test that
 * they end in the same state as whole-vector contexts); bulk membership import, digest and
 * epoch; memdb URI stores surviving a reopen.
 *
 * Identities come from fixed seeds and every replica gets a deterministic fm_test_env, so a run
 * is reproducible; orders are shuffled from a printed seed (FM_TEST_SEED overrides it).
 */
#include "crdt/batch.h"
#include "crypto/cert.h"
#include "crypto/identity.h"
#include "fm_test.h"
#include "node/replica.h"
#include "replica_dump.h"

#include <sqlite3.h>
#include <float.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#define T0 1700000000000ull

static uint64_t g_seed = 20240611;

/* ---- helpers ------------------------------------------------------------------------------ */

/* rc is one of two codes; prints what it was otherwise. */
#define CHECK_RC_EITHER(rc, a, b)                                                                  \
    do {                                                                                           \
        int _r = (rc);                                                                             \
        fm_test_checks++;                                                                          \
        if (_r != (a) && _r != (b)) {                                                              \
            fprintf(stderr, "%s:%d: CHECK_RC_EITHER failed: %s is %s or %s (got %d \"%s\")\n",     \
                    __FILE__, __LINE__, #rc, #a, #b, _r, fm_strerror(_r));                         \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* lo <= v <= hi; prints all three otherwise. */
#define CHECK_RANGE(v, lo, hi)                                                                     \
    do {                                                                                           \
        long long _v = (long long)(v), _lo = (long long)(lo), _hi = (long long)(hi);               \
        fm_test_checks++;                                                                          \
        if (_v < _lo || _v > _hi) {                                                                \
            fprintf(stderr, "%s:%d: CHECK_RANGE failed: %s = %lld, not in [%lld, %lld]\n",         \
                    __FILE__, __LINE__, #v, _v, _lo, _hi);                                         \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

typedef struct node {
    fm_test_env te;
    fm_identity *id;
    uint8_t pk[FM_ID_BYTES];
    fm_replica *r;
    char path[512];
} node;

/* Opens a replica for identity seed n (path NULL: in memory) with its clock at now. */
static void node_open(node *nd, uint8_t n, const char *path, uint64_t now)
{
    memset(nd, 0, sizeof *nd);
    fm_test_env_init(&nd->te, now, n);
    uint8_t seed[32] = {n, 0x42};
    CHECK_OK(fm_identity_from_seed(seed, &nd->id));
    fm_identity_public(nd->id, nd->pk);
    if (path)
        CHECK(snprintf(nd->path, sizeof nd->path, "%s", path) < (int)sizeof nd->path);
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .path = path, .identity = nd->id, .env = &nd->te.env};
    CHECK_OK(fm_replica_open(&cfg, &nd->r));
    if (!nd->r) {
        fprintf(stderr, "cannot continue without a replica\n");
        exit(1);
    }
}

static void node_reopen(node *nd)
{
    fm_replica_close(nd->r);
    nd->r = NULL;
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION,
                             .path = nd->path[0] ? nd->path : NULL,
                             .identity = nd->id,
                             .env = &nd->te.env};
    CHECK_OK(fm_replica_open(&cfg, &nd->r));
    if (!nd->r)
        exit(1);
}

static void node_close(node *nd)
{
    fm_replica_close(nd->r);
    fm_identity_free(nd->id);
    memset(nd, 0, sizeof *nd);
}

static char g_dir[256];

static void tmp_setup(void)
{
    fm_test_tmpdir(g_dir, sizeof g_dir, "replica");
}

static void tmp_teardown(void)
{
    fm_test_tmpdir_remove(g_dir);
}

static const char *tmp_path(const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", g_dir, name);
    return out;
}

/* The record as JSON, or "!<error text>"; caller frees. */
static char *json_of(fm_replica *r, const char *coll, const char *id)
{
    fm_record *rec = NULL;
    int rc = fm_record_get(r, coll, id, &rec);
    if (rc) {
        char buf[128];
        snprintf(buf, sizeof buf, "!%s", fm_strerror(rc));
        return strdup(buf);
    }
    char *j = fm_record_json(rec);
    fm_record_free(rec);
    return j;
}

#define CHECK_JSON(r, coll, id, want)                                                              \
    do {                                                                                           \
        char *_j = json_of((r), (coll), (id));                                                     \
        CHECK_STR(_j, (want));                                                                     \
        free(_j);                                                                                  \
    } while (0)

static void hash_hex(fm_replica *r, char out[2 * FM_HASH_BYTES + 1])
{
    fm_status s;
    CHECK_OK(fm_replica_status(r, &s));
    fm_hex(s.state_hash, FM_HASH_BYTES, out);
}

static fm_status status_of(fm_replica *r)
{
    fm_status s;
    CHECK_OK(fm_replica_status(r, &s));
    return s;
}

/* Two statuses describe the same state: counts and state hash. Prints both sides. */
#define CHECK_SAME_STATUS(a, b) check_same_status(&(a), &(b), #a, #b, __LINE__)
static void check_same_status(const fm_status *a, const fm_status *b, const char *an,
                              const char *bn, int line)
{
    char ha[65], hb[65];
    fm_hex(a->state_hash, FM_HASH_BYTES, ha);
    fm_hex(b->state_hash, FM_HASH_BYTES, hb);
    fm_test_checks++;
    if (a->ops != b->ops || a->batches != b->batches || a->records != b->records ||
        a->pending != b->pending || a->conflicts != b->conflicts || strcmp(ha, hb) != 0) {
        fprintf(stderr,
                "%s:%d: status %s != %s\n  ops %llu vs %llu, batches %llu vs %llu, records %llu "
                "vs %llu, pending %llu vs %llu, conflicts %llu vs %llu\n  hash %s\n  vs   %s\n",
                __FILE__, line, an, bn, (unsigned long long)a->ops, (unsigned long long)b->ops,
                (unsigned long long)a->batches, (unsigned long long)b->batches,
                (unsigned long long)a->records, (unsigned long long)b->records,
                (unsigned long long)a->pending, (unsigned long long)b->pending,
                (unsigned long long)a->conflicts, (unsigned long long)b->conflicts, ha, hb);
        fm_test_failures++;
    }
}

/* Two replicas hold the same state: equal hashes and equal readable records. */
#define CHECK_SAME_STATE(ra, rb)                                                                   \
    do {                                                                                           \
        char _ha[65], _hb[65];                                                                     \
        hash_hex((ra), _ha);                                                                       \
        hash_hex((rb), _hb);                                                                       \
        CHECK_STR(_ha, _hb);                                                                       \
        char *_da = fm_test_dump(ra), *_db = fm_test_dump(rb);                                     \
        CHECK_STR(_da, _db);                                                                       \
        free(_da);                                                                                 \
        free(_db);                                                                                 \
    } while (0)

/* A growable list of encoded batches. */
typedef struct blist {
    fm_bytes *b;
    size_t n, cap;
} blist;

static void blist_push(blist *l, const uint8_t *p, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->b = realloc(l->b, l->cap * sizeof *l->b);
    }
    l->b[l->n].data = malloc(n ? n : 1);
    memcpy(l->b[l->n].data, p, n);
    l->b[l->n++].len = n;
}

static int blist_collect(void *arg, const uint8_t *batch, size_t len)
{
    blist_push(arg, batch, len);
    return 0;
}

static void blist_free(blist *l)
{
    for (size_t i = 0; i < l->n; i++)
        fm_bytes_free(&l->b[i]);
    free(l->b);
    memset(l, 0, sizeof *l);
}

/* Every batch of coll that dst lacks, exported from src against dst's vector. */
static void missing(fm_replica *dst, fm_replica *src, const char *coll, blist *out)
{
    fm_bytes vv = {0};
    CHECK_OK(fm_replica_vv(dst, coll, &vv));
    CHECK_OK(fm_replica_export(src, coll, vv.data, vv.len, blist_collect, out));
    fm_bytes_free(&vv);
}

/* One-way sync of coll: src's batches that dst lacks, ingested in one call; all must apply. */
static void sync_coll(fm_replica *dst, fm_replica *src, const char *coll)
{
    blist l = {0};
    missing(dst, src, coll, &l);
    int *res = calloc(l.n + 1, sizeof *res);
    CHECK_EQ_INT(fm_replica_ingest(dst, l.b, l.n, res), l.n);
    for (size_t i = 0; i < l.n; i++)
        CHECK_RC(res[i], 0);
    free(res);
    blist_free(&l);
}

static int sync_one_coll(void *arg, const char *name)
{
    fm_replica **pair = arg;
    sync_coll(pair[0], pair[1], name);
    return 0;
}

/* dst gets every collection of src. */
static void sync_all(fm_replica *dst, fm_replica *src)
{
    fm_replica *pair[2] = {dst, src};
    CHECK_OK(fm_replica_collections(src, sync_one_coll, pair));
}

static void commit_ok(fm_txn *t)
{
    CHECK_OK(fm_txn_commit(t));
}

static void put_str(fm_replica *r, const char *coll, const char *id, const char *field,
                    fm_kind kind, const char *v)
{
    fm_txn *t;
    CHECK_OK(fm_txn_begin(r, coll, &t));
    CHECK_OK(fm_txn_set(t, id, field, kind, fm_value_str(v)));
    commit_ok(t);
}

static void incr(fm_replica *r, const char *coll, const char *id, const char *field, int64_t d)
{
    fm_txn *t;
    CHECK_OK(fm_txn_begin(r, coll, &t));
    CHECK_OK(fm_txn_incr(t, id, field, d));
    commit_ok(t);
}

static int names_cb(void *arg, const char *name)
{
    strcat(arg, name);
    strcat(arg, ",");
    return 0;
}

static void shuffle(size_t *idx, size_t n, uint64_t *rng)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(fm_test_rand64(rng) % i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

/* ---- local writes and reads --------------------------------------------------------------- */

static void write_kinds_on(const char *path)
{
    node a;
    node_open(&a, 1, path, T0);
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("Ann")));
    CHECK_OK(fm_txn_set(t, "p1", "age", FM_KIND_LWW, fm_value_int(42)));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p1", "{\"age\":42,\"name\":\"Ann\"}");

    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p2", "pi", FM_KIND_LWW, fm_value_float(1.5)));
    CHECK_OK(fm_txn_set(t, "p2", "two", FM_KIND_LWW, fm_value_float(2.0)));
    CHECK_OK(fm_txn_set(t, "p2", "neg", FM_KIND_LWW, fm_value_int(-5)));
    CHECK_OK(fm_txn_set(t, "p2", "big", FM_KIND_LWW, fm_value_int(INT64_MIN)));
    CHECK_OK(fm_txn_set(t, "p2", "ok", FM_KIND_LWW, fm_value_bool(1)));
    CHECK_OK(fm_txn_set(t, "p2", "no", FM_KIND_LWW, fm_value_bool(0)));
    CHECK_OK(fm_txn_set(t, "p2", "nil", FM_KIND_LWW, fm_value_nil()));
    CHECK_OK(fm_txn_set(t, "p2", "bin", FM_KIND_LWW, fm_value_bin("\x00\x01\x02", 3)));
    CHECK_OK(
        fm_txn_set(t, "p2", "esc", FM_KIND_LWW, fm_value_str("say \"hi\"\n\t\\ \x01 \xc3\xa9")));
    CHECK_OK(fm_txn_set(t, "p2", "empty", FM_KIND_LWW, fm_value_str("")));
    CHECK_OK(fm_txn_set(t, "p2", "inf", FM_KIND_LWW, fm_value_float(INFINITY)));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p2",
               "{\"big\":-9223372036854775808,\"bin\":{\"$bin\":\"AAEC\"},\"empty\":\"\","
               "\"esc\":\"say \\\"hi\\\"\\n\\t\\\\ \\u0001 \xc3\xa9\",\"inf\":1e999,\"neg\":-5,"
               "\"nil\":null,\"no\":false,\"ok\":true,\"pi\":1.5,\"two\":2.0}");

    /* Counters: increments in several transactions, negative ones too. */
    incr(a.r, "people", "p1", "visits", 5);
    incr(a.r, "people", "p1", "visits", -2);
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_incr(t, "p1", "visits", 10));
    CHECK_OK(fm_txn_incr(t, "p1", "visits", 1)); /* twice in one batch */
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p1", "{\"age\":42,\"name\":\"Ann\",\"visits\":14}");

    /* Sets: elements in canonical (encoded byte) order, removes, re-adds. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set_add(t, "p3", "tags", fm_value_str("b")));
    CHECK_OK(fm_txn_set_add(t, "p3", "tags", fm_value_str("a")));
    CHECK_OK(fm_txn_set_add(t, "p3", "tags", fm_value_str("c")));
    CHECK_OK(fm_txn_set_add(t, "p3", "tags", fm_value_int(7)));
    CHECK_OK(fm_txn_set_add(t, "p3", "tags", fm_value_str("a"))); /* again: one element */
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p3", "{\"tags\":[7,\"a\",\"b\",\"c\"]}");
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set_remove(t, "p3", "tags", fm_value_str("b")));
    CHECK_OK(fm_txn_set_remove(t, "p3", "tags", fm_value_str("zz"))); /* absent: no-op */
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p3", "{\"tags\":[7,\"a\",\"c\"]}");
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set_remove(t, "p3", "tags", fm_value_int(7)));
    CHECK_OK(fm_txn_set_remove(t, "p3", "tags", fm_value_str("a")));
    CHECK_OK(fm_txn_set_remove(t, "p3", "tags", fm_value_str("c")));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p3", "{\"tags\":[]}");

    /* mv: a single value reads as the value itself, not a conflict. */
    put_str(a.r, "people", "p4", "note", FM_KIND_MV, "first");
    put_str(a.r, "people", "p4", "note", FM_KIND_MV, "second");
    CHECK_JSON(a.r, "people", "p4", "{\"note\":\"second\"}");
    /* lww overwrite */
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Bob");
    CHECK_JSON(a.r, "people", "p1", "{\"age\":42,\"name\":\"Bob\",\"visits\":14}");

    /* The field views agree with the JSON. */
    fm_record *rec = NULL;
    CHECK_OK(fm_record_get(a.r, "people", "p1", &rec));
    if (rec) {
        CHECK_STR(fm_record_id(rec), "p1");
        CHECK_STR(fm_record_collection(rec), "people");
        CHECK_EQ_INT(fm_record_field_count(rec), 3);
        fm_field_view f;
        fm_record_field(rec, 0, &f);
        CHECK_STR(f.name, "age");
        CHECK_EQ_INT(f.kind, FM_KIND_LWW);
        CHECK_EQ_INT(f.nvalues, 1);
        CHECK_EQ_INT(f.values[0].type, FM_V_INT);
        CHECK_EQ_INT(f.values[0].u.i, 42);
        fm_record_field(rec, 2, &f);
        CHECK_STR(f.name, "visits");
        CHECK_EQ_INT(f.kind, FM_KIND_COUNTER);
        CHECK_EQ_INT(f.counter, 14);
        CHECK_EQ_INT(f.conflict, 0);
        fm_record_free(rec);
    }

    /* Missing records and collections. */
    CHECK_JSON(a.r, "people", "nobody", "!not found");
    CHECK_JSON(a.r, "nothing", "p1", "!not found");
    rec = NULL;
    CHECK_RC(fm_record_get(a.r, "people", "nobody", &rec), FM_ENOTFOUND);
    CHECK(rec == NULL);

    /* An empty transaction commits nothing and is not an error. */
    fm_status s0 = status_of(a.r);
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    commit_ok(t);
    fm_status s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_EQ_INT(s1.ops, 30);
    CHECK_EQ_INT(s1.batches, 11);
    CHECK_EQ_INT(s1.records, 4);
    CHECK_EQ_INT(s1.pending, 0);
    CHECK_EQ_INT(s1.conflicts, 0);

    /* Collections come back sorted by name, whatever the creation order. */
    put_str(a.r, "tasks", "t1", "title", FM_KIND_LWW, "x");
    put_str(a.r, "alpha", "x", "f", FM_KIND_LWW, "x");
    char names[128] = "";
    CHECK_OK(fm_replica_collections(a.r, names_cb, names));
    CHECK_STR(names, "alpha,people,tasks,");
    node_close(&a);
}

static void test_write_kinds_memory(void)
{
    write_kinds_on(NULL);
}

static void test_write_kinds_file(void)
{
    tmp_setup();
    char p[600];
    write_kinds_on(tmp_path("store.db", p, sizeof p));
    tmp_teardown();
}

/* ---- concurrent writes: conflicts and merges ------------------------------------------------ */

static void test_concurrent_kinds_and_conflicts(void)
{
    node a, b;
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0 + 1000); /* b's clock is ahead: its concurrent writes are newer */
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "base");
    sync_all(b.r, a.r);
    /* Concurrent: lww, mv, counter, set add vs remove. */
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("from-a")));
    CHECK_OK(fm_txn_set(t, "p1", "note", FM_KIND_MV, fm_value_str("a-note")));
    CHECK_OK(fm_txn_incr(t, "p1", "n", 2));
    CHECK_OK(fm_txn_set_add(t, "p1", "tags", fm_value_str("x")));
    commit_ok(t);
    CHECK_OK(fm_txn_begin(b.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("from-b")));
    CHECK_OK(fm_txn_set(t, "p1", "note", FM_KIND_MV, fm_value_str("b-note")));
    CHECK_OK(fm_txn_incr(t, "p1", "n", 3));
    CHECK_OK(fm_txn_set_add(t, "p1", "tags", fm_value_str("y")));
    commit_ok(t);
    sync_all(b.r, a.r);
    sync_all(a.r, b.r);
    const char *want =
        "{\"n\":5,\"name\":\"from-b\",\"note\":{\"conflict\":[\"b-note\",\"a-note\"]},"
        "\"tags\":[\"x\",\"y\"]}";
    CHECK_JSON(a.r, "people", "p1", want);
    CHECK_JSON(b.r, "people", "p1", want);
    CHECK_SAME_STATE(a.r, b.r);
    fm_status sa = status_of(a.r);
    CHECK_EQ_INT(sa.conflicts, 1);

    fm_record *rec = NULL;
    CHECK_OK(fm_record_get(a.r, "people", "p1", &rec));
    if (rec) {
        fm_field_view f;
        fm_record_field(rec, 2, &f);
        CHECK_STR(f.name, "note");
        CHECK_EQ_INT(f.kind, FM_KIND_MV);
        CHECK_EQ_INT(f.conflict, 1);
        CHECK_EQ_INT(f.nvalues, 2);
        fm_record_free(rec);
    }

    /* Add wins over a concurrent remove. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set_remove(t, "p1", "tags", fm_value_str("x")));
    commit_ok(t);
    CHECK_OK(fm_txn_begin(b.r, "people", &t));
    CHECK_OK(fm_txn_set_add(t, "p1", "tags", fm_value_str("x")));
    commit_ok(t);
    sync_all(b.r, a.r);
    sync_all(a.r, b.r);
    CHECK_SAME_STATE(a.r, b.r);
    CHECK_JSON(a.r, "people", "p1", want);

    /* Resolving: a write that saw both values replaces them. */
    put_str(a.r, "people", "p1", "note", FM_KIND_MV, "merged");
    sync_all(b.r, a.r);
    CHECK_JSON(b.r, "people", "p1",
               "{\"n\":5,\"name\":\"from-b\",\"note\":\"merged\",\"tags\":[\"x\",\"y\"]}");
    CHECK_EQ_INT(status_of(b.r).conflicts, 0);
    CHECK_SAME_STATE(a.r, b.r);
    node_close(&a);
    node_close(&b);
}

typedef struct list_seen {
    char lines[16][160];
    int n, stop_after;
} list_seen;

static int list_cb(void *arg, const fm_record *rec)
{
    list_seen *s = arg;
    char *j = fm_record_json(rec);
    if (s->n < 16)
        snprintf(s->lines[s->n], sizeof s->lines[0], "%s/%s %s", fm_record_collection(rec),
                 fm_record_id(rec), j ? j : "(oom)");
    s->n++;
    free(j);
    return s->stop_after && s->n == s->stop_after ? 5 : 0;
}

static void test_list_and_conflicts(void)
{
    node a, b;
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0 + 5);
    static const char *const ids[] = {"p3", "p10", "p2", "p1", "B"};
    for (int i = 0; i < 5; i++)
        put_str(a.r, "people", ids[i], "v", FM_KIND_LWW, ids[i]);
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_delete(t, "p2"));
    commit_ok(t);
    list_seen s = {0};
    CHECK_OK(fm_collection_list(a.r, "people", list_cb, &s));
    CHECK_EQ_INT(s.n, 4);
    static const char *const want[] = {"people/B {\"v\":\"B\"}", "people/p1 {\"v\":\"p1\"}",
                                       "people/p10 {\"v\":\"p10\"}", "people/p3 {\"v\":\"p3\"}"};
    for (int i = 0; i < 4 && i < s.n; i++)
        CHECK_STR(s.lines[i], want[i]);
    CHECK_EQ_INT(status_of(a.r).records, 4);
    list_seen stop = {.stop_after = 2};
    CHECK_RC(fm_collection_list(a.r, "people", list_cb, &stop), 5);
    CHECK_EQ_INT(stop.n, 2);
    list_seen none = {0};
    CHECK_OK(fm_collection_list(a.r, "nothing", list_cb, &none));
    CHECK_EQ_INT(none.n, 0);
    CHECK_RC(fm_collection_list(a.r, NULL, list_cb, &none), FM_EINVAL);

    /* Conflicts in two collections, listed by collection then id. */
    list_seen c0 = {0};
    CHECK_OK(fm_conflicts_list(a.r, list_cb, &c0));
    CHECK_EQ_INT(c0.n, 0);
    sync_all(b.r, a.r);
    put_str(a.r, "zoo", "z1", "m", FM_KIND_MV, "a1");
    put_str(a.r, "people", "p3", "m", FM_KIND_MV, "a2");
    put_str(a.r, "people", "B", "m", FM_KIND_MV, "a3");
    put_str(b.r, "zoo", "z1", "m", FM_KIND_MV, "b1");
    put_str(b.r, "people", "p3", "m", FM_KIND_MV, "b2");
    put_str(b.r, "people", "B", "m", FM_KIND_LWW, "b3"); /* lww vs mv: the later kind wins */
    sync_all(a.r, b.r);
    sync_all(b.r, a.r);
    CHECK_SAME_STATE(a.r, b.r);
    list_seen c1 = {0};
    CHECK_OK(fm_conflicts_list(a.r, list_cb, &c1));
    CHECK_EQ_INT(c1.n, 2);
    if (c1.n == 2) {
        CHECK_STR(c1.lines[0], "people/p3 {\"m\":{\"conflict\":[\"b2\",\"a2\"]},\"v\":\"p3\"}");
        CHECK_STR(c1.lines[1], "zoo/z1 {\"m\":{\"conflict\":[\"b1\",\"a1\"]}}");
    }
    CHECK_JSON(a.r, "people", "B", "{\"m\":\"b3\",\"v\":\"B\"}");
    CHECK_EQ_INT(status_of(a.r).conflicts, 2);
    node_close(&a);
    node_close(&b);
}

static void test_deleted_records(void)
{
    node a;
    node_open(&a, 1, NULL, T0);
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Ann");
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_delete(t, "p1"));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p1", "!record is deleted");
    fm_status s0 = status_of(a.r);
    CHECK_EQ_INT(s0.records, 0);
    /* Every kind of write to it is refused; the transaction stays usable. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_RC(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("again")), FM_EDELETED);
    CHECK_RC(fm_txn_set(t, "p1", "name", FM_KIND_MV, fm_value_str("again")), FM_EDELETED);
    CHECK_RC(fm_txn_incr(t, "p1", "n", 1), FM_EDELETED);
    CHECK_RC(fm_txn_set_add(t, "p1", "s", fm_value_int(1)), FM_EDELETED);
    CHECK_RC(fm_txn_set_remove(t, "p1", "s", fm_value_int(1)), FM_EDELETED);
    CHECK_RC(fm_txn_delete(t, "p1"), FM_EDELETED);
    fm_status s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_OK(fm_txn_set(t, "p2", "name", FM_KIND_LWW, fm_value_str("Bea")));
    commit_ok(t);
    CHECK_EQ_INT(status_of(a.r).ops, s0.ops + 1);
    CHECK_JSON(a.r, "people", "p1", "!record is deleted");
    CHECK_JSON(a.r, "people", "p2", "{\"name\":\"Bea\"}");
    /* Within one transaction too: a write after the delete would vanish, so it is refused. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p3", "name", FM_KIND_LWW, fm_value_str("Cy")));
    CHECK_OK(fm_txn_delete(t, "p3"));
    CHECK_RC(fm_txn_set(t, "p3", "name", FM_KIND_LWW, fm_value_str("Cy2")), FM_EDELETED);
    CHECK_RC(fm_txn_delete(t, "p3"), FM_EDELETED);
    CHECK_OK(fm_txn_set(t, "p4", "name", FM_KIND_LWW, fm_value_str("Di")));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "p3", "!record is deleted");
    CHECK_JSON(a.r, "people", "p4", "{\"name\":\"Di\"}");
    /* Deleting a record that never existed leaves a tombstone. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_delete(t, "ghost"));
    commit_ok(t);
    CHECK_JSON(a.r, "people", "ghost", "!record is deleted");
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_RC(fm_txn_set(t, "ghost", "x", FM_KIND_LWW, fm_value_int(1)), FM_EDELETED);
    fm_txn_abort(t);
    /* A peer's write concurrent with the delete does not resurrect it. */
    node b;
    node_open(&b, 2, NULL, T0 + 10);
    put_str(b.r, "people", "p1", "late", FM_KIND_LWW, "x");
    sync_all(a.r, b.r);
    sync_all(b.r, a.r);
    CHECK_JSON(a.r, "people", "p1", "!record is deleted");
    CHECK_JSON(b.r, "people", "p1", "!record is deleted");
    CHECK_SAME_STATE(a.r, b.r);
    node_close(&a);
    node_close(&b);
}

/* ---- bad input and bounds ---------------------------------------------------------------- */

/* n bytes of 'c' (NUL-terminated) in a static buffer. */
static const char *rep(char c, size_t n)
{
    static char buf[FM_MAX_VALUE_LEN + 8];
    FM_ASSERT(n < sizeof buf);
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

static void test_bad_names(void)
{
    node a;
    node_open(&a, 1, NULL, T0);
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Ann");
    fm_status s0 = status_of(a.r);
    fm_txn *t = NULL;
    /* Collections. */
    static const struct {
        const char *name;
        int rc;
    } colls[] = {{"", FM_EINVAL},
                 {"a\tb", FM_EINVAL},
                 {"a\nb", FM_EINVAL},
                 {"\x7f", FM_EINVAL},
                 {"\xff", FM_EINVAL},
                 {"\xc0\xaf", FM_EINVAL},
                 {"\xed\xa0\x80", FM_EINVAL},
                 {"\xe2\x82", FM_EINVAL}};
    for (size_t i = 0; i < FM_ARRAY_LEN(colls); i++) {
        t = NULL;
        CHECK_RC(fm_txn_begin(a.r, colls[i].name, &t), colls[i].rc);
        CHECK(t == NULL);
    }
    CHECK_RC(fm_txn_begin(a.r, NULL, &t), FM_EINVAL);
    char name[FM_MAX_COLLECTION_LEN + 2];
    memcpy(name, rep('c', FM_MAX_COLLECTION_LEN + 1), FM_MAX_COLLECTION_LEN + 2);
    CHECK_RC(fm_txn_begin(a.r, name, &t), FM_ELIMIT);
    fm_status s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    name[FM_MAX_COLLECTION_LEN] = '\0'; /* at the bound: fine */
    CHECK_OK(fm_txn_begin(a.r, name, &t));
    CHECK_OK(fm_txn_set(t, "x", "f", FM_KIND_LWW, fm_value_int(1)));
    commit_ok(t);
    CHECK_JSON(a.r, name, "x", "{\"f\":1}");
    s0 = status_of(a.r);

    /* Record ids and field names: every failure leaves the transaction as it was. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    char id[FM_MAX_RECORD_ID_LEN + 2], field[FM_MAX_FIELD_LEN + 2];
    memcpy(id, rep('i', FM_MAX_RECORD_ID_LEN + 1), FM_MAX_RECORD_ID_LEN + 2);
    memcpy(field, rep('f', FM_MAX_FIELD_LEN + 1), FM_MAX_FIELD_LEN + 2);
    fm_value v = fm_value_int(1);
    CHECK_RC(fm_txn_set(t, id, "f", FM_KIND_LWW, v), FM_ELIMIT);
    CHECK_RC(fm_txn_set(t, "p1", field, FM_KIND_LWW, v), FM_ELIMIT);
    CHECK_RC(fm_txn_incr(t, id, "n", 1), FM_ELIMIT);
    CHECK_RC(fm_txn_set_add(t, "p1", field, v), FM_ELIMIT);
    CHECK_RC(fm_txn_delete(t, id), FM_ELIMIT);
    CHECK_RC(fm_txn_set(t, "", "f", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, NULL, "f", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", NULL, FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p\x01", "f", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f\x1f", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p\xff", "f", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "\xc3", FM_KIND_LWW, v), FM_EINVAL);
    CHECK_RC(fm_txn_delete(t, ""), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_COUNTER, v), FM_EKIND);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_SET, v), FM_EKIND);
    CHECK_RC(fm_txn_set(t, "p1", "f", (fm_kind)99, v), FM_EKIND);
    /* Values. */
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_float(NAN)), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_MV, fm_value_float(-NAN)), FM_EINVAL);
    CHECK_RC(fm_txn_set_add(t, "p1", "s", fm_value_float(NAN)), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_str("bad \xff utf8")), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_str("\xed\xbf\xbf")), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_str("\xf4\x90\x80\x80")), FM_EINVAL);
    CHECK_RC(fm_txn_set_remove(t, "p1", "s", fm_value_str("\x80")), FM_EINVAL);
    fm_value bad_type = {.type = (fm_vtype)42};
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, bad_type), FM_EINVAL);
    fm_value null_bytes = {.type = FM_V_STR, .u.s = {NULL, 3}};
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, null_bytes), FM_EINVAL);
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_str(rep('v', FM_MAX_VALUE_LEN + 1))),
             FM_ELIMIT);
    CHECK_RC(fm_txn_set(t, "p1", "b", FM_KIND_LWW,
                        fm_value_bin(rep('v', FM_MAX_VALUE_LEN + 1), FM_MAX_VALUE_LEN + 1)),
             FM_ELIMIT);
    fm_txn_abort(t);
    s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_JSON(a.r, "people", "p1", "{\"name\":\"Ann\"}");

    /* After failures the transaction still commits exactly its good ops, at the bounds too. */
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_RC(fm_txn_set(t, id, "f", FM_KIND_LWW, v), FM_ELIMIT);
    id[FM_MAX_RECORD_ID_LEN] = '\0';
    field[FM_MAX_FIELD_LEN] = '\0';
    CHECK_OK(fm_txn_set(t, id, field, FM_KIND_LWW, fm_value_str(rep('v', FM_MAX_VALUE_LEN))));
    CHECK_RC(fm_txn_set(t, "p1", "f", FM_KIND_LWW, fm_value_float(NAN)), FM_EINVAL);
    CHECK_OK(fm_txn_set(t, "p1", "bin", FM_KIND_LWW,
                        fm_value_bin(rep('w', FM_MAX_VALUE_LEN), FM_MAX_VALUE_LEN)));
    CHECK_OK(fm_txn_set(t, "p1", "max", FM_KIND_LWW, fm_value_float(DBL_MAX)));
    commit_ok(t);
    s1 = status_of(a.r);
    CHECK_EQ_INT(s1.ops, s0.ops + 3);
    CHECK_EQ_INT(s1.batches, s0.batches + 1);
    fm_record *rec = NULL;
    CHECK_OK(fm_record_get(a.r, "people", id, &rec));
    if (rec) {
        fm_field_view f;
        CHECK_EQ_INT(fm_record_field_count(rec), 1);
        fm_record_field(rec, 0, &f);
        CHECK_STR(f.name, field);
        CHECK_EQ_INT(f.nvalues, 1);
        CHECK_EQ_INT(f.values[0].u.s.len, FM_MAX_VALUE_LEN);
        fm_record_free(rec);
    }
    node_close(&a);
}

static void test_batch_ops_bound(void)
{
    node a;
    node_open(&a, 1, NULL, T0);
    fm_txn *t;
    /* Past the bound: the extra op fails, and aborting writes nothing. */
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    for (int i = 0; i < FM_MAX_BATCH_OPS; i++) {
        int rc = fm_txn_incr(t, "r", "n", 1);
        if (rc) {
            CHECK_OK(rc);
            break;
        }
    }
    CHECK_RC(fm_txn_incr(t, "r", "n", 1), FM_ELIMIT);
    CHECK_RC(fm_txn_set(t, "r", "other", FM_KIND_LWW, fm_value_int(1)), FM_ELIMIT);
    fm_txn_abort(t);
    fm_status s = status_of(a.r);
    CHECK_EQ_INT(s.ops, 0);
    CHECK_EQ_INT(s.batches, 0);
    /* At the bound: all of them commit as one batch. */
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    for (int i = 0; i < FM_MAX_BATCH_OPS; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%04d", i);
        int rc = fm_txn_set(t, id, "v", FM_KIND_LWW, fm_value_int(i));
        if (rc) {
            CHECK_OK(rc);
            break;
        }
    }
    CHECK_RC(fm_txn_incr(t, "r", "n", 1), FM_ELIMIT);
    commit_ok(t);
    s = status_of(a.r);
    CHECK_EQ_INT(s.ops, FM_MAX_BATCH_OPS);
    CHECK_EQ_INT(s.batches, 1);
    CHECK_EQ_INT(s.records, FM_MAX_BATCH_OPS);
    CHECK_JSON(a.r, "c", "r4095", "{\"v\":4095}");

    /* The byte bound of a batch: big values until the next one would not fit. */
    CHECK_OK(fm_txn_begin(a.r, "big", &t));
    int n = 0, rc = 0;
    for (;
         n < 1000 && !(rc = fm_txn_set(t, "r", rep('k', 4 + n % 50), FM_KIND_LWW,
                                       fm_value_bin(rep('x', FM_MAX_VALUE_LEN), FM_MAX_VALUE_LEN)));
         n++)
        ;
    CHECK_RC(rc, FM_ELIMIT);
    CHECK_RANGE(n, (FM_MAX_BATCH_BYTES - 4096) / (FM_MAX_VALUE_LEN + 128),
                FM_MAX_BATCH_BYTES / FM_MAX_VALUE_LEN);
    commit_ok(t);
    fm_status s2 = status_of(a.r);
    CHECK_EQ_INT(s2.ops, s.ops + (uint64_t)n);
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "big", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 1);
    if (l.n == 1)
        CHECK_RANGE(l.b[0].len, FM_MAX_BATCH_BYTES / 2, FM_MAX_BATCH_BYTES);
    blist_free(&l);
    node_close(&a);
}

static void test_fields_per_record_bound(void)
{
    node a;
    node_open(&a, 1, NULL, T0);
    fm_txn *t;
    char f[16];
    /* At the bound over several transactions. */
    for (int k = 0; k < FM_MAX_FIELDS_PER_RECORD; k += 64) {
        CHECK_OK(fm_txn_begin(a.r, "c", &t));
        for (int i = k; i < k + 64; i++) {
            snprintf(f, sizeof f, "f%03d", i);
            CHECK_OK(fm_txn_set(t, "wide", f, FM_KIND_LWW, fm_value_int(i)));
        }
        commit_ok(t);
    }
    fm_record *rec = NULL;
    CHECK_OK(fm_record_get(a.r, "c", "wide", &rec));
    CHECK_EQ_INT(rec ? fm_record_field_count(rec) : 0, FM_MAX_FIELDS_PER_RECORD);
    fm_record_free(rec);
    fm_status s0 = status_of(a.r);
    /* Past it: a new field is refused (every kind), an existing one may still be written. */
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    CHECK_RC(fm_txn_set(t, "wide", "new", FM_KIND_LWW, fm_value_int(1)), FM_ELIMIT);
    CHECK_RC(fm_txn_incr(t, "wide", "new", 1), FM_ELIMIT);
    CHECK_RC(fm_txn_set_add(t, "wide", "new", fm_value_int(1)), FM_ELIMIT);
    fm_txn_abort(t);
    fm_status s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "wide", "f000", FM_KIND_LWW, fm_value_int(-1)));
    CHECK_OK(fm_txn_delete(t, "other"));
    commit_ok(t);
    CHECK_EQ_INT(status_of(a.r).ops, s0.ops + 2);

    /* In one transaction on a new record: at the bound fine, past it refused. */
    s0 = status_of(a.r);
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    for (int i = 0; i < FM_MAX_FIELDS_PER_RECORD; i++) {
        snprintf(f, sizeof f, "g%03d", i);
        CHECK_OK(fm_txn_set(t, "wide2", f, FM_KIND_LWW, fm_value_int(i)));
    }
    CHECK_OK(fm_txn_set(t, "wide2", "g000", FM_KIND_LWW, fm_value_int(7))); /* not new */
    CHECK_RC(fm_txn_set(t, "wide2", "past", FM_KIND_LWW, fm_value_int(1)), FM_ELIMIT);
    commit_ok(t);
    CHECK_EQ_INT(status_of(a.r).ops, s0.ops + FM_MAX_FIELDS_PER_RECORD + 1);
    rec = NULL;
    CHECK_OK(fm_record_get(a.r, "c", "wide2", &rec));
    CHECK_EQ_INT(rec ? fm_record_field_count(rec) : 0, FM_MAX_FIELDS_PER_RECORD);
    fm_record_free(rec);
    node_close(&a);
}

/* ---- replication --------------------------------------------------------------------------- */

/* A random local transaction by nd: 1-4 ops of random kinds over a few records of coll. */
static void random_txn(node *nd, const char *coll, uint64_t *rng, int *serial)
{
    fm_txn *t;
    CHECK_OK(fm_txn_begin(nd->r, coll, &t));
    int nops = 1 + (int)(fm_test_rand64(rng) % 4);
    for (int i = 0; i < nops; i++) {
        char id[8], val[32];
        snprintf(id, sizeof id, "r%d", (int)(fm_test_rand64(rng) % 5));
        snprintf(val, sizeof val, "v%d", (*serial)++);
        int rc;
        switch (fm_test_rand64(rng) % 6) {
        case 0:
            rc = fm_txn_set(t, id, "lww", FM_KIND_LWW, fm_value_str(val));
            break;
        case 1:
            rc = fm_txn_set(t, id, "mv", FM_KIND_MV, fm_value_str(val));
            break;
        case 2:
            rc = fm_txn_incr(t, id, "ctr", (int64_t)(fm_test_rand64(rng) % 7) - 3);
            break;
        case 3:
            rc = fm_txn_set_add(t, id, "set", fm_value_int((int64_t)(fm_test_rand64(rng) % 4)));
            break;
        case 4:
            rc = fm_txn_set_remove(t, id, "set", fm_value_int((int64_t)(fm_test_rand64(rng) % 4)));
            break;
        default:
            /* Deletes are rare and only of r4, so most records stay writable. */
            rc = strcmp(id, "r4") == 0 ? fm_txn_delete(t, id)
                                       : fm_txn_set(t, id, "lww", FM_KIND_LWW, fm_value_int(i));
            break;
        }
        CHECK_RC_EITHER(rc, 0, FM_EDELETED);
    }
    CHECK_OK(fm_txn_commit(t));
}

/* Three replicas write in two collections, syncing pairs now and then (so batches carry each
 * other's contexts), then sync fully. */
static void build_history(node *n, uint64_t seed)
{
    static const char *const colls[] = {"people", "tasks"};
    uint64_t rng = seed;
    int serial = 0;
    for (int round = 0; round < 40; round++) {
        node *w = &n[fm_test_rand64(&rng) % 3];
        w->te.now += fm_test_rand64(&rng) % 3;
        random_txn(w, colls[fm_test_rand64(&rng) % 2], &rng, &serial);
        if (fm_test_rand64(&rng) % 4 == 0) {
            int x = (int)(fm_test_rand64(&rng) % 3),
                y = (x + 1 + (int)(fm_test_rand64(&rng) % 2)) % 3;
            sync_all(n[x].r, n[y].r);
        }
    }
    for (int pass = 0; pass < 2; pass++)
        for (int x = 0; x < 3; x++)
            for (int y = 0; y < 3; y++)
                if (x != y)
                    sync_all(n[x].r, n[y].r);
}

static int export_coll_cb(void *arg, const char *name)
{
    void **ctx = arg;
    return fm_replica_export(ctx[0], name, NULL, 0, blist_collect, ctx[1]);
}

/* Every batch of every collection of r, in log order per collection. */
static void export_everything(fm_replica *r, blist *out)
{
    void *ctx[2] = {r, out};
    CHECK_OK(fm_replica_collections(r, export_coll_cb, ctx));
}

static void test_convergence_delivery_orders(void)
{
    fprintf(stderr, "  seed %llu (set FM_TEST_SEED to reproduce)\n", (unsigned long long)g_seed);
    node n[3];
    node_open(&n[0], 1, NULL, T0);
    node_open(&n[1], 2, NULL, T0 + 3);
    node_open(&n[2], 3, NULL, T0 + 7);
    build_history(n, g_seed);
    CHECK_SAME_STATE(n[0].r, n[1].r);
    CHECK_SAME_STATE(n[0].r, n[2].r);
    fm_status want = status_of(n[0].r);
    CHECK_EQ_INT(want.pending, 0);

    blist all = {0};
    export_everything(n[0].r, &all);
    CHECK_EQ_INT(all.n, want.batches);
    size_t *idx = malloc(all.n * sizeof *idx);
    fm_bytes *ordered = malloc(all.n * sizeof *ordered);
    int *res = malloc(all.n * sizeof *res);

    for (int order = 0; order < 4; order++) {
        /* 0: log order, 1: reverse, 2 and 3: shuffled; 0-2 in one call, 3 one call per batch. */
        for (size_t i = 0; i < all.n; i++)
            idx[i] = order == 1 ? all.n - 1 - i : i;
        uint64_t rng = g_seed + (uint64_t)order;
        if (order >= 2)
            shuffle(idx, all.n, &rng);
        for (size_t i = 0; i < all.n; i++)
            ordered[i] = all.b[idx[i]];
        node d;
        node_open(&d, 9, NULL, T0 + 100);
        if (order < 3) {
            CHECK_EQ_INT(fm_replica_ingest(d.r, ordered, all.n, res), all.n);
            size_t held = 0;
            for (size_t i = 0; i < all.n; i++) {
                CHECK_RC_EITHER(res[i], 0, FM_EPENDING);
                held += res[i] == FM_EPENDING;
            }
            if (order == 0)
                CHECK_EQ_INT(held, 0);
            else
                CHECK_RANGE(held, 1, all.n);
        } else {
            size_t delivered = 0, applied = 0, max_pending = 0;
            for (size_t i = 0; i < all.n; i++) {
                int one = 1;
                int rc = fm_replica_ingest(d.r, &ordered[i], 1, &one);
                CHECK_RANGE(rc, 0, all.n);
                CHECK_RC_EITHER(one, 0, FM_EPENDING);
                CHECK_EQ_INT(rc > 0, one == 0);
                delivered++;
                applied += rc > 0 ? (size_t)rc : 0;
                fm_status s = status_of(d.r);
                CHECK_EQ_INT(s.pending, delivered - applied);
                if (s.pending > max_pending)
                    max_pending = s.pending;
            }
            CHECK_EQ_INT(applied, all.n);
            CHECK_RANGE(max_pending, 1, all.n);
        }
        fm_status got = status_of(d.r);
        CHECK_EQ_INT(got.pending, 0);
        CHECK_SAME_STATUS(got, want);
        CHECK_SAME_STATE(d.r, n[0].r);
        /* Everything again: all duplicates, nothing changes. */
        CHECK_EQ_INT(fm_replica_ingest(d.r, ordered, all.n, res), 0);
        for (size_t i = 0; i < all.n; i++)
            CHECK_RC(res[i], FM_EDUP);
        fm_status again = status_of(d.r);
        CHECK_SAME_STATUS(again, want);
        node_close(&d);
    }
    free(idx);
    free(ordered);
    free(res);
    blist_free(&all);
    for (int i = 0; i < 3; i++)
        node_close(&n[i]);
}

/* Out-of-order batches wait in the pending area and apply when their context arrives, in
 * separate ingest calls; a duplicate of a held batch is held once. */
static void test_pending_area(void)
{
    node a, b, d;
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0 + 1);
    node_open(&d, 3, NULL, T0 + 2);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a1"); /* a:1 */
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a2"); /* a:2 */
    sync_all(b.r, a.r);
    /* b:1 overwrites a:2, so its context is a:2 (a write to a fresh field would need none). */
    put_str(b.r, "c", "x", "f", FM_KIND_LWW, "b1");
    blist la = {0}, lb = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &la));
    missing(a.r, b.r, "c", &lb);
    CHECK_EQ_INT(la.n, 2);
    CHECK_EQ_INT(lb.n, 1);
    int one = 1;
    /* b:1 first: its context (a:2) is missing. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &lb.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EPENDING);
    CHECK_EQ_INT(status_of(d.r).pending, 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &lb.b[0], 1, &one), 0); /* the same again */
    CHECK_RC(one, FM_EPENDING);
    CHECK_EQ_INT(status_of(d.r).pending, 1);
    /* a:2 before a:1: a gap in a's feed. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &la.b[1], 1, &one), 0);
    CHECK_RC(one, FM_EPENDING);
    fm_status s = status_of(d.r);
    CHECK_EQ_INT(s.pending, 2);
    CHECK_EQ_INT(s.ops, 0);
    CHECK_EQ_INT(s.batches, 0);
    CHECK_JSON(d.r, "c", "x", "!not found");
    /* a:1 releases everything. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &la.b[0], 1, &one), 3);
    CHECK_RC(one, 0);
    s = status_of(d.r);
    CHECK_EQ_INT(s.pending, 0);
    CHECK_EQ_INT(s.ops, 3);
    CHECK_EQ_INT(s.batches, 3);
    CHECK_JSON(d.r, "c", "x", "{\"f\":\"b1\"}");
    CHECK_SAME_STATE(d.r, b.r);
    /* Everything again: duplicates. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &la.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EDUP);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &lb.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EDUP);
    /* An empty ingest is fine; a NULL list with n > 0 is not. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, NULL, 0, NULL), 0);
    CHECK_RC(fm_replica_ingest(d.r, NULL, 1, NULL), FM_EINVAL);
    blist_free(&la);
    blist_free(&lb);
    node_close(&a);
    node_close(&b);
    node_close(&d);
}

/* Every single-byte change to a batch is refused and leaves nothing behind. */
static void test_tampered_batches(void)
{
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, NULL, T0);
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("Ann")));
    CHECK_OK(fm_txn_incr(t, "p1", "n", 3));
    commit_ok(t);
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "people", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 1);
    fm_status s0 = status_of(d.r);
    const fm_bytes orig = l.b[0];
    uint8_t *buf = malloc(orig.len + 1);
    int refused = 0;
    for (size_t pos = 0; pos < orig.len; pos++) {
        memcpy(buf, orig.data, orig.len);
        buf[pos] ^= (uint8_t)(1u << (pos % 8));
        fm_bytes bad = {buf, orig.len};
        int one = 1;
        int rc = fm_replica_ingest(d.r, &bad, 1, &one);
        if (rc != 0 || one == 0 || one == FM_EPENDING || one == FM_EDUP) {
            fprintf(stderr, "  flipped byte %zu: ingest %d, result %d (%s)\n", pos, rc, one,
                    fm_strerror(one));
            CHECK(0);
        } else {
            refused++;
        }
    }
    CHECK_EQ_INT(refused, orig.len);
    /* Truncated, extended, empty. */
    fm_bytes cut = {orig.data, orig.len - 1}, none = {orig.data, 0};
    memcpy(buf, orig.data, orig.len);
    buf[orig.len] = 0;
    fm_bytes longer = {buf, orig.len + 1};
    fm_bytes bads[3] = {cut, longer, none};
    int res[3];
    CHECK_EQ_INT(fm_replica_ingest(d.r, bads, 3, res), 0);
    for (int i = 0; i < 3; i++) {
        if (res[i] >= 0 || res[i] == FM_EPENDING || res[i] == FM_EDUP)
            fprintf(stderr, "  bad batch %d: result %d (%s)\n", i, res[i], fm_strerror(res[i]));
        CHECK(res[i] < 0 && res[i] != FM_EPENDING && res[i] != FM_EDUP);
    }
    fm_status s1 = status_of(d.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_EQ_INT(s1.batches, 0);
    CHECK_JSON(d.r, "people", "p1", "!not found");
    /* The genuine batch still applies. */
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 1);
    CHECK_RC(one, 0);
    CHECK_SAME_STATE(d.r, a.r);
    free(buf);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
}

/* A batch by a's identity at feed position seq, with one lww op. */
static void forge(const node *a, const char *coll, uint64_t seq, const uint8_t *prev,
                  const char *val, fm_buf *out)
{
    fm_buf ops, v;
    fm_buf_init(&ops);
    fm_buf_init(&v);
    fm_value x = fm_value_str(val);
    CHECK_OK(fm_value_encode(&x, &v));
    CHECK_OK(fm_op_encode(&ops, FM_OP_SET_LWW, "p1", 2, "name", 4, v.data, v.len));
    fm_vv ctx;
    fm_vv_init(&ctx);
    fm_batch_head h = {.coll = (const uint8_t *)coll,
                       .coll_len = (uint32_t)strlen(coll),
                       .first_seq = seq,
                       .prev = prev,
                       .ctx = &ctx,
                       .hlc = (T0 + 50) << 16,
                       .nops = 1};
    fm_buf_reset(out);
    CHECK_OK(fm_batch_encode(a->id, &h, ops.data, ops.len, out));
    fm_vv_free(&ctx);
    fm_buf_free(&ops);
    fm_buf_free(&v);
}

typedef struct forks_seen {
    uint8_t authors[4][FM_ID_BYTES];
    int n;
} forks_seen;

static int fork_cb(void *arg, const uint8_t author[FM_ID_BYTES])
{
    forks_seen *f = arg;
    if (f->n < 4)
        memcpy(f->authors[f->n], author, FM_ID_BYTES);
    f->n++;
    return 0;
}

static void test_forks(void)
{
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, NULL, T0);
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Ann"); /* a:1 */
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Amy"); /* a:2 */
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "people", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 2);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, NULL), 1);
    fm_status s0 = status_of(d.r);
    CHECK_EQ_INT(s0.forked_authors, 0);

    /* a re-signs a different batch at seq 1, which d already holds. */
    fm_buf f1, f2;
    fm_buf_init(&f1);
    fm_buf_init(&f2);
    forge(&a, "people", 1, NULL, "Eve", &f1);
    fm_bytes fb1 = {f1.data, f1.len};
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &fb1, 1, &one), 0);
    CHECK_RC(one, FM_EFORK);
    fm_status s1 = status_of(d.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_EQ_INT(s1.forked_authors, 1);
    CHECK_JSON(d.r, "people", "p1", "{\"name\":\"Ann\"}");
    forks_seen fs = {0};
    CHECK_OK(fm_replica_forks(d.r, fork_cb, &fs));
    CHECK_EQ_INT(fs.n, 1);
    CHECK_MEM(fs.authors[0], a.pk, FM_ID_BYTES);

    /* Next in line but not chained onto the head d holds: a fork too. */
    uint8_t wrong_prev[FM_HASH_BYTES];
    memset(wrong_prev, 0x5c, sizeof wrong_prev);
    forge(&a, "people", 2, wrong_prev, "Mallory", &f2);
    fm_bytes fb2 = {f2.data, f2.len};
    CHECK_EQ_INT(fm_replica_ingest(d.r, &fb2, 1, &one), 0);
    CHECK_RC(one, FM_EFORK);
    fm_status s2 = status_of(d.r);
    CHECK_SAME_STATUS(s2, s0);
    CHECK_EQ_INT(s2.forked_authors, 1); /* one author, however many proofs */
    /* The genuine continuation still applies. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[1], 1, &one), 1);
    CHECK_RC(one, 0);
    CHECK_SAME_STATE(d.r, a.r);
    /* A replica that never saw the genuine seq 1 takes whichever arrives first. */
    node e;
    node_open(&e, 3, NULL, T0);
    CHECK_EQ_INT(fm_replica_ingest(e.r, &fb1, 1, &one), 1);
    CHECK_EQ_INT(fm_replica_ingest(e.r, &l.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EFORK);
    CHECK_JSON(e.r, "people", "p1", "{\"name\":\"Eve\"}");
    node_close(&e);
    fm_buf_free(&f1);
    fm_buf_free(&f2);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
}

/* How n knows it holds x: 0 it does not, 1 by the signature (unhashed), 2 by the hash. */
static int held_by(node *n, const fm_bytes *x)
{
    fm_batch b;
    fm_batch_init(&b);
    CHECK_OK(fm_batch_peek(x->data, x->len, &b, false));
    uint8_t zero[FM_HASH_BYTES] = {0};
    bool held = fm__replica_holds_peeked(n->r, &b, x->data, x->len);
    bool hashed = memcmp(b.hash, zero, sizeof zero) != 0;
    CHECK(held || hashed); /* false leaves the hash set for ingest */
    fm_batch_free(&b);
    return held ? (hashed ? 2 : 1) : 0;
}

/* A feed's head and a recent batch are known by their signature bytes without hashing: not a
 * fork at their position, not a head restored from the store (whose signature is not at hand). */
static void test_holds_head(void)
{
    tmp_setup();
    char p[600];
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, tmp_path("d.db", p, sizeof p), T0);
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Ann"); /* a:1 */
    put_str(a.r, "people", "p1", "name", FM_KIND_LWW, "Amy"); /* a:2 */
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "people", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 2);
    CHECK_EQ_INT(held_by(&d, &l.b[0]), 0);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, NULL), 1);
    CHECK_EQ_INT(held_by(&d, &l.b[0]), 1);
    CHECK_EQ_INT(held_by(&a, &l.b[1]), 1);
    CHECK_EQ_INT(held_by(&a, &l.b[0]), 1); /* no longer a's head: a recent batch, as unhashed */
    fm_buf f1;
    fm_buf_init(&f1);
    forge(&a, "people", 1, NULL, "Eve", &f1);
    fm_bytes fork = {f1.data, f1.len};
    CHECK_EQ_INT(held_by(&d, &fork), 0);
    CHECK_EQ_INT(held_by(&a, &fork), 0); /* a fork of a passed position: not a recent one */
    uint8_t *copy = malloc(l.b[0].len);
    CHECK(copy != NULL);
    memcpy(copy, l.b[0].data, l.b[0].len);
    fm_bytes other = {copy, l.b[0].len};
    copy[other.len - 1] ^= 1; /* another signature */
    CHECK_EQ_INT(held_by(&d, &other), 0);
    CHECK(fm_batch_sig_tail(copy, other.len) == copy + other.len - FM_SIG_BYTES);
    copy[other.len - FM_SIG_BYTES - 2] = 0xc5; /* not a bin8 at the end */
    CHECK(fm_batch_sig_tail(copy, other.len) == NULL);
    CHECK_EQ_INT(held_by(&d, &other), 0);
    node_reopen(&d);
    CHECK_EQ_INT(held_by(&d, &l.b[0]), 2); /* restored: known by its hash */
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EDUP);
    free(copy);
    fm_buf_free(&f1);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
    tmp_teardown();
}

/* The pending area's count bound: FM_MAX_PENDING_BATCHES held, the next refused. */
static void test_pending_count_bound(void)
{
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, NULL, T0);
    const size_t total = FM_MAX_PENDING_BATCHES + 3; /* a:1, a:2, then bound + 1 more */
    for (size_t i = 0; i < total; i++)
        incr(a.r, "c", "r", "n", 1);
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, total);
    int *res = calloc(total, sizeof *res);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, res), 1);
    /* a:3 .. a:(bound+2) are held: exactly at the bound. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[2], FM_MAX_PENDING_BATCHES, res), 0);
    int held = 0;
    for (int i = 0; i < FM_MAX_PENDING_BATCHES; i++)
        held += res[i] == FM_EPENDING;
    CHECK_EQ_INT(held, FM_MAX_PENDING_BATCHES);
    fm_status s = status_of(d.r);
    CHECK_EQ_INT(s.pending, FM_MAX_PENDING_BATCHES);
    CHECK_EQ_INT(s.ops, 1);
    /* Past it. */
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[total - 1], 1, &one), 0);
    CHECK_RC(one, FM_ELIMIT);
    /* A held batch again is still just held. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[5], 1, &one), 0);
    CHECK_RC(one, FM_EPENDING);
    s = status_of(d.r);
    CHECK_EQ_INT(s.pending, FM_MAX_PENDING_BATCHES);
    CHECK_EQ_INT(s.ops, 1);
    CHECK_EQ_INT(s.batches, 1);
    /* a:2 releases every held batch; the refused one can be sent again. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[1], 1, &one), 1 + FM_MAX_PENDING_BATCHES);
    CHECK_EQ_INT(status_of(d.r).pending, 0);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[total - 1], 1, &one), 1);
    CHECK_RC(one, 0);
    CHECK_SAME_STATE(d.r, a.r);
    char want[32];
    snprintf(want, sizeof want, "{\"n\":%zu}", total);
    CHECK_JSON(d.r, "c", "r", want);
    free(res);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
}

/* The pending area's byte bound: big batches are held while their total fits. */
static void test_pending_bytes_bound(void)
{
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, NULL, T0);
    const int nbatches = FM_MAX_PENDING_BYTES / (FM_MAX_BATCH_BYTES / 2) + 2;
    for (int b = 0; b < nbatches; b++) {
        fm_txn *t;
        CHECK_OK(fm_txn_begin(a.r, "big", &t));
        int rc = 0;
        for (int i = 0; !rc; i++) {
            char f[16];
            snprintf(f, sizeof f, "f%d", i);
            rc = fm_txn_set(
                t, "r", f, FM_KIND_LWW,
                fm_value_bin(rep((char)('a' + b % 26), FM_MAX_VALUE_LEN), FM_MAX_VALUE_LEN));
        }
        CHECK_RC(rc, FM_ELIMIT);
        commit_ok(t);
    }
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "big", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, nbatches);
    /* Held while the total stays within the bound (a:1 withheld so none can apply). */
    size_t sum = 0;
    int held = 0, refused = 0;
    for (size_t i = 1; i < l.n; i++) {
        int one = 1;
        CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[i], 1, &one), 0);
        if (sum + l.b[i].len <= FM_MAX_PENDING_BYTES) {
            CHECK_RC(one, FM_EPENDING);
            sum += l.b[i].len;
            held++;
        } else {
            CHECK_RC(one, FM_ELIMIT);
            refused++;
        }
    }
    CHECK_RANGE(refused, 1, nbatches); /* the scenario does go past the bound */
    CHECK_EQ_INT(status_of(d.r).pending, held);
    CHECK_EQ_INT(status_of(d.r).batches, 0);
    /* a:1 releases the held ones; the refused ones come again and apply. */
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 1 + held);
    CHECK_EQ_INT(status_of(d.r).pending, 0);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[1 + held], l.n - 1 - (size_t)held, NULL), refused);
    CHECK_SAME_STATE(d.r, a.r);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
}

/* A file store reopened holds the same state; the device's feed continues where it was. */
static void test_file_reopen(void)
{
    tmp_setup();
    char p[600];
    node n[3];
    node_open(&n[0], 1, tmp_path("a.db", p, sizeof p), T0);
    node_open(&n[1], 2, NULL, T0 + 3);
    node_open(&n[2], 3, NULL, T0 + 7);
    build_history(n, g_seed + 100);
    fm_status s0 = status_of(n[0].r);
    char *d0 = fm_test_dump(n[0].r);
    CHECK_RANGE(s0.ops, 1, 1000);
    CHECK_RANGE(s0.records, 1, 1000);
    for (int round = 0; round < 2; round++) {
        node_reopen(&n[0]);
        fm_status s1 = status_of(n[0].r);
        CHECK_SAME_STATUS(s1, s0);
        char *d1 = fm_test_dump(n[0].r);
        CHECK_STR(d1, d0);
        free(d1);
    }
    /* Write after reopening: peers that hold the earlier batches accept the new ones. */
    uint64_t rng = g_seed;
    int serial = 1000;
    random_txn(&n[0], "people", &rng, &serial);
    random_txn(&n[0], "tasks", &rng, &serial);
    sync_all(n[1].r, n[0].r);
    CHECK_SAME_STATE(n[1].r, n[0].r);
    CHECK_EQ_INT(status_of(n[1].r).forked_authors, 0);
    fm_status s2 = status_of(n[0].r);
    node_reopen(&n[0]);
    fm_status s3 = status_of(n[0].r);
    CHECK_SAME_STATUS(s3, s2);
    CHECK_SAME_STATE(n[1].r, n[0].r);
    free(d0);
    for (int i = 0; i < 3; i++)
        node_close(&n[i]);
    tmp_teardown();
}

/* The hybrid clock survives a reopen: a write after it is stamped above every write made or seen
 * before, even when the wall clock has not moved (or went back). The field kind is decided by
 * the greatest stamp, so a reopened replica changing a field's kind must still win. */
static void test_hlc_survives_reopen(void)
{
    tmp_setup();
    char p[600];
    for (int reopen = 0; reopen < 2; reopen++) {
        /* Own writes: a counter, then the same field as lww (same wall clock throughout). */
        node a;
        node_open(&a, 1, tmp_path(reopen ? "own1.db" : "own0.db", p, sizeof p), T0);
        incr(a.r, "c", "x", "f", 5);
        incr(a.r, "c", "x", "f", 1);
        if (reopen)
            node_reopen(&a);
        put_str(a.r, "c", "x", "f", FM_KIND_LWW, "text");
        CHECK_JSON(a.r, "c", "x", "{\"f\":\"text\"}");
        node_close(&a);

        /* Seen writes: b's clock is a minute ahead (within the skew bound); a saw b's counter
         * before its restart, so its later lww write on that field wins. */
        node b;
        node_open(&a, 1, tmp_path(reopen ? "seen1.db" : "seen0.db", p, sizeof p), T0);
        node_open(&b, 2, NULL, T0 + 60000);
        incr(b.r, "c", "y", "f", 7);
        sync_all(a.r, b.r);
        if (reopen)
            node_reopen(&a);
        put_str(a.r, "c", "y", "f", FM_KIND_LWW, "text");
        CHECK_JSON(a.r, "c", "y", "{\"f\":\"text\"}");
        sync_all(b.r, a.r);
        CHECK_SAME_STATE(a.r, b.r);
        CHECK_EQ_INT(status_of(a.r).clock_skew, 0);
        node_close(&a);
        node_close(&b);
    }
    tmp_teardown();
}

/* Export against an empty vector yields every batch in causal order: a fresh replica ingests
 * them without holding any and reaches the same state. Against a vector, only what it lacks. */
static void test_export_replay(void)
{
    tmp_setup();
    char p[600];
    node n[3];
    node_open(&n[0], 1, NULL, T0);
    node_open(&n[1], 2, tmp_path("b.db", p, sizeof p), T0 + 3);
    node_open(&n[2], 3, NULL, T0 + 7);
    build_history(n, g_seed + 200);
    for (int k = 0; k < 3; k++) {
        blist l = {0};
        export_everything(n[k].r, &l);
        node d;
        node_open(&d, 9, NULL, T0);
        int *res = calloc(l.n + 1, sizeof *res);
        CHECK_EQ_INT(fm_replica_ingest(d.r, l.b, l.n, res), l.n);
        for (size_t i = 0; i < l.n; i++)
            CHECK_RC(res[i], 0); /* never held: causal order */
        fm_status sd = status_of(d.r), sk = status_of(n[k].r);
        CHECK_SAME_STATUS(sd, sk);
        CHECK_SAME_STATE(d.r, n[k].r);
        free(res);
        blist_free(&l);
        node_close(&d);
    }
    /* An encoded empty vector means the same as none. */
    node fresh;
    node_open(&fresh, 8, NULL, T0);
    blist l1 = {0}, l2 = {0};
    CHECK_OK(fm_replica_export(n[0].r, "people", NULL, 0, blist_collect, &l1));
    missing(fresh.r, n[0].r, "people", &l2);
    CHECK_EQ_INT(l2.n, l1.n);
    for (size_t i = 0; i < l1.n && i < l2.n; i++) {
        CHECK_EQ_INT(l2.b[i].len, l1.b[i].len);
        if (l1.b[i].len == l2.b[i].len)
            CHECK_MEM(l2.b[i].data, l1.b[i].data, l1.b[i].len);
    }
    /* Against a replica holding the first half: exactly the other half. */
    size_t half = l1.n / 2;
    CHECK_EQ_INT(fm_replica_ingest(fresh.r, l1.b, half, NULL), half);
    blist l3 = {0};
    missing(fresh.r, n[0].r, "people", &l3);
    CHECK_EQ_INT(l3.n, l1.n - half);
    /* An unknown collection exports nothing; a malformed vector is refused. */
    blist l4 = {0};
    CHECK_OK(fm_replica_export(n[0].r, "nothing", NULL, 0, blist_collect, &l4));
    CHECK_EQ_INT(l4.n, 0);
    const uint8_t junk[3] = {0x91, 0xc0, 0x00};
    CHECK_RC(fm_replica_export(n[0].r, "people", junk, sizeof junk, blist_collect, &l4),
             FM_EDECODE);
    CHECK_EQ_INT(l4.n, 0);
    blist_free(&l1);
    blist_free(&l2);
    blist_free(&l3);
    blist_free(&l4);
    node_close(&fresh);
    for (int i = 0; i < 3; i++)
        node_close(&n[i]);
    tmp_teardown();
}

/* A collection's version vector holds at most FM_MAX_VV_ENTRIES authors: the batch of one author
 * too many is refused and leaves nothing behind, remote or local. */
static void test_vv_entries_bound(void)
{
    node d;
    node_open(&d, 1, NULL, T0);
    const int nauth = FM_MAX_VV_ENTRIES + 1;
    blist l = {0};
    fm_buf enc;
    fm_buf_init(&enc);
    for (int i = 0; i < nauth; i++) {
        node w = {0};
        uint8_t seed[32] = {(uint8_t)i, (uint8_t)(i >> 8), 0x77};
        CHECK_OK(fm_identity_from_seed(seed, &w.id));
        fm_buf ops, v;
        fm_buf_init(&ops);
        fm_buf_init(&v);
        fm_value x = fm_value_int(i);
        CHECK_OK(fm_value_encode(&x, &v));
        char id[16];
        snprintf(id, sizeof id, "r%04d", i);
        CHECK_OK(fm_op_encode(&ops, FM_OP_SET_LWW, id, strlen(id), "f", 1, v.data, v.len));
        fm_vv ctx;
        fm_vv_init(&ctx);
        fm_batch_head h = {.coll = (const uint8_t *)"c",
                           .coll_len = 1,
                           .first_seq = 1,
                           .ctx = &ctx,
                           .hlc = T0 << 16,
                           .nops = 1};
        fm_buf_reset(&enc);
        CHECK_OK(fm_batch_encode(w.id, &h, ops.data, ops.len, &enc));
        blist_push(&l, enc.data, enc.len);
        fm_buf_free(&ops);
        fm_buf_free(&v);
        fm_identity_free(w.id);
    }
    fm_buf_free(&enc);
    int *res = calloc((size_t)nauth, sizeof *res);
    /* At the bound. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, l.b, FM_MAX_VV_ENTRIES, res), FM_MAX_VV_ENTRIES);
    fm_status s0 = status_of(d.r);
    CHECK_EQ_INT(s0.ops, FM_MAX_VV_ENTRIES);
    /* Past it: refused with FM_ELIMIT, nothing of it applied. */
    int one = 1;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[nauth - 1], 1, &one), 0);
    CHECK_RC(one, FM_ELIMIT);
    fm_status s1 = status_of(d.r);
    CHECK_SAME_STATUS(s1, s0);
    char last[16];
    snprintf(last, sizeof last, "r%04d", nauth - 1);
    CHECK_JSON(d.r, "c", last, "!not found");
    /* ... also when it comes together with good batches (a duplicate here). */
    fm_bytes two[2] = {l.b[0], l.b[nauth - 1]};
    int r2[2];
    CHECK_EQ_INT(fm_replica_ingest(d.r, two, 2, r2), 0);
    CHECK_RC(r2[0], FM_EDUP);
    CHECK_RC(r2[1], FM_ELIMIT);
    fm_status s2 = status_of(d.r);
    CHECK_SAME_STATUS(s2, s0);
    CHECK_JSON(d.r, "c", last, "!not found");
    /* The local device is one author too many as well. */
    fm_txn *t;
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "mine", "f", FM_KIND_LWW, fm_value_int(1)));
    CHECK_RC(fm_txn_commit(t), FM_ELIMIT);
    fm_status s3 = status_of(d.r);
    CHECK_SAME_STATUS(s3, s0);
    CHECK_JSON(d.r, "c", "mine", "!not found");
    /* Other collections are unaffected. */
    put_str(d.r, "other", "x", "f", FM_KIND_LWW, "ok");
    CHECK_JSON(d.r, "other", "x", "{\"f\":\"ok\"}");
    free(res);
    blist_free(&l);
    node_close(&d);
}

/* ---- node-core internals: applied hook, export from a vector, verification ------------------ */

/* Raw SQL on a store file from outside (as another process would), printing sqlite's error. */
static void raw_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *err = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "raw_sql(%s): %s\n", sql, err ? err : sqlite3_errmsg(db));
    CHECK_EQ_INT(rc, SQLITE_OK);
    sqlite3_free(err);
    sqlite3_close(db);
}

/* What the applied hook saw, and what the replica allowed from inside it. */
typedef struct hook_log {
    fm_replica *r;
    blist seen;
    int reads_ok, reentry_refused;
} hook_log;

static void hook_cb(void *arg, const uint8_t *batch, size_t len)
{
    hook_log *h = arg;
    blist_push(&h->seen, batch, len);
    fm_status s;
    fm_bytes vv = {0};
    if (fm_replica_status(h->r, &s) == 0 && fm_replica_vv(h->r, "c", &vv) == 0)
        h->reads_ok++;
    fm_bytes_free(&vv);
    fm_bytes again = {(uint8_t *)batch, len};
    fm_txn *t = NULL;
    if (fm_replica_ingest(h->r, &again, 1, NULL) == FM_ESTATE && fm_txn_begin(h->r, "c", &t) == 0 &&
        fm_txn_set(t, "hook", "f", FM_KIND_LWW, fm_value_int(1)) == 0 &&
        fm_txn_commit(t) == FM_ESTATE)
        h->reentry_refused++;
}

static void hook_reset(hook_log *h)
{
    blist_free(&h->seen);
    h->reads_ok = h->reentry_refused = 0;
}

/* The hook saw exactly these batches, in this order, byte for byte. */
static void check_seen(hook_log *h, const fm_bytes *want, size_t n, int line)
{
    fm_test_checks++;
    bool same = h->seen.n == n;
    for (size_t i = 0; same && i < n; i++)
        same = h->seen.b[i].len == want[i].len &&
               memcmp(h->seen.b[i].data, want[i].data, want[i].len) == 0;
    if (!same) {
        fprintf(stderr, "%s:%d: the hook saw %zu batches, not the %zu expected\n", __FILE__, line,
                h->seen.n, n);
        fm_test_failures++;
    }
    CHECK_EQ_INT(h->reads_ok, n);
    CHECK_EQ_INT(h->reentry_refused, n);
    hook_reset(h);
}
#define CHECK_SEEN(h, want, n) check_seen((h), (want), (n), __LINE__)

/* The hook fires after a successful commit or ingest, once per applied batch (released held
 * ones included) in apply order, with the exact bytes; never for a call that applied nothing. */
static void test_applied_hook(void)
{
    node a, b, d;
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0 + 1);
    node_open(&d, 3, NULL, T0 + 2);
    hook_log ha = {.r = a.r}, hd = {.r = d.r};
    fm__replica_set_applied_hook(a.r, hook_cb, &ha);
    fm__replica_set_applied_hook(d.r, hook_cb, &hd);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a1");
    blist la = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &la));
    CHECK_SEEN(&ha, la.b, 1);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a2");
    blist_free(&la);
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &la));
    CHECK_SEEN(&ha, &la.b[1], 1);
    /* An empty transaction applies nothing. */
    fm_txn *t;
    CHECK_OK(fm_txn_begin(a.r, "c", &t));
    CHECK_OK(fm_txn_commit(t));
    CHECK_SEEN(&ha, NULL, 0);

    sync_all(b.r, a.r);
    put_str(b.r, "c", "x", "f", FM_KIND_LWW, "b1"); /* context a:2 */
    blist lb = {0};
    missing(a.r, b.r, "c", &lb);
    CHECK_EQ_INT(lb.n, 1);
    int one;
    /* Held, held: nothing applied, nothing seen. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &lb.b[0], 1, &one), 0);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &la.b[1], 1, &one), 0);
    CHECK_SEEN(&hd, NULL, 0);
    /* a:1 releases a:2 and then b:1: three batches, in causal order. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &la.b[0], 1, &one), 3);
    fm_bytes order[3] = {la.b[0], la.b[1], lb.b[0]};
    CHECK_SEEN(&hd, order, 3);
    /* Duplicates apply nothing. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, order, 3, NULL), 0);
    CHECK_SEEN(&hd, NULL, 0);
    /* Several in one call, in the order they applied. */
    put_str(a.r, "c", "y", "f", FM_KIND_LWW, "a3");
    put_str(a.r, "c", "y", "g", FM_KIND_LWW, "a4");
    blist lc = {0};
    missing(d.r, a.r, "c", &lc);
    CHECK_EQ_INT(lc.n, 2);
    hook_reset(&ha);
    fm_bytes rev[2] = {lc.b[1], lc.b[0]};
    CHECK_EQ_INT(fm_replica_ingest(d.r, rev, 2, NULL), 2);
    CHECK_SEEN(&hd, lc.b, 2);
    /* Removed: nothing more is seen. */
    fm__replica_set_applied_hook(d.r, NULL, NULL);
    put_str(d.r, "c", "z", "f", FM_KIND_LWW, "d1");
    CHECK_SEEN(&hd, NULL, 0);
    blist_free(&la);
    blist_free(&lb);
    blist_free(&lc);
    hook_reset(&ha);
    node_close(&a);
    node_close(&b);
    node_close(&d);
}

/* A call whose transaction fails (the store refuses a write) fires nothing, local or remote. */
static void test_applied_hook_failed_call(void)
{
    tmp_setup();
    char p[600];
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, tmp_path("hook.db", p, sizeof p), T0);
    hook_log hd = {.r = d.r};
    fm__replica_set_applied_hook(d.r, hook_cb, &hd);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a1");
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "a2");
    blist la = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &la));
    raw_sql(p, "CREATE TRIGGER boom BEFORE INSERT ON batches WHEN NEW.first_seq = 2 "
               "BEGIN SELECT RAISE(ABORT, 'boom'); END");
    int res[2];
    CHECK_RC(fm_replica_ingest(d.r, la.b, 2, res), FM_ESTORE); /* a:1 applied, then a:2 failed */
    CHECK_RC(res[0], FM_ESTORE);
    CHECK_SEEN(&hd, NULL, 0);
    CHECK_EQ_INT(status_of(d.r).batches, 0);
    /* Local: the first commit is fine, the second (seq 2) fails. */
    put_str(d.r, "mine", "x", "f", FM_KIND_LWW, "d1");
    CHECK_EQ_INT(hd.seen.n, 1);
    hook_reset(&hd);
    fm_txn *t;
    CHECK_OK(fm_txn_begin(d.r, "mine", &t));
    CHECK_OK(fm_txn_set(t, "x", "f", FM_KIND_LWW, fm_value_str("d2")));
    CHECK_RC(fm_txn_commit(t), FM_ESTORE);
    CHECK_SEEN(&hd, NULL, 0);
    raw_sql(p, "DROP TRIGGER boom");
    CHECK_EQ_INT(fm_replica_ingest(d.r, la.b, 2, res), 2);
    CHECK_SEEN(&hd, la.b, 2);
    blist_free(&la);
    node_close(&a);
    node_close(&d);
    tmp_teardown();
}

/* Where a batch sits in a replica's log, for checking what an export read. */
typedef struct logged {
    uint8_t author[FM_ID_BYTES];
    uint64_t last_seq;
    size_t pos; /* 0-based position in the whole log (every collection) */
    bool in_c;  /* of collection "c" */
} logged;

static int count_calls(void *arg, const uint8_t *batch, size_t len)
{
    int *n = arg;
    return ++*n == 2 ? 42 : 0;
}

/* fm__replica_export_vv yields what the vector lacks, in log order, reading the log only from
 * the first lacking batch on; nothing lacking reads nothing. Checked against a full scan for
 * random vectors. */
static void test_export_vv(void)
{
    enum { NW = 3, NB = 40 };
    node w[NW], d;
    for (int i = 0; i < NW; i++)
        node_open(&w[i], (uint8_t)(1 + i), NULL, T0 + (uint64_t)i);
    node_open(&d, 9, NULL, T0);
    logged log[NB];
    uint64_t rng = g_seed + 7;
    for (int k = 0; k < NB; k++) {
        node *x = &w[fm_test_rand64(&rng) % NW];
        bool in_c = fm_test_rand64(&rng) % 4 != 0 || k == NB - 1;
        char id[16];
        snprintf(id, sizeof id, "r%d", k);
        put_str(x->r, in_c ? "c" : "o", id, "f", FM_KIND_LWW, "v");
        blist nb = {0};
        missing(d.r, x->r, in_c ? "c" : "o", &nb);
        CHECK_EQ_INT(nb.n, 1);
        CHECK_EQ_INT(fm_replica_ingest(d.r, nb.b, nb.n, NULL), 1);
        blist_free(&nb);
        fm_bytes vv = {0};
        fm_vv v;
        fm_vv_init(&v);
        CHECK_OK(fm_replica_vv(x->r, in_c ? "c" : "o", &vv));
        CHECK_OK(fm_vv_decode(vv.data, vv.len, &v));
        log[k] = (logged){.last_seq = fm_vv_get(&v, x->pk), .pos = (size_t)k, .in_c = in_c};
        memcpy(log[k].author, x->pk, FM_ID_BYTES);
        fm_vv_free(&v);
        fm_bytes_free(&vv);
    }
    blist all = {0};
    CHECK_OK(fm_replica_export(d.r, "c", NULL, 0, blist_collect, &all));
    fm_bytes ours = {0};
    CHECK_OK(fm_replica_vv(d.r, "c", &ours));
    fm_vv full;
    fm_vv_init(&full);
    CHECK_OK(fm_vv_decode(ours.data, ours.len, &full));
    fm_store *st = d.r->store;

    /* Nothing lacking: no read at all. */
    uint64_t r0 = fm_store_batch_rows_read(st);
    blist got = {0};
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &full, blist_collect, &got));
    CHECK_EQ_INT(got.n, 0);
    CHECK_EQ_INT(fm_store_batch_rows_read(st) - r0, 0);
    /* Only the tail lacking: its row read (and its feed's lookup). */
    fm_vv theirs;
    fm_vv_init(&theirs);
    CHECK_OK(fm_vv_copy(&theirs, &full));
    CHECK_OK(fm_vv_set(&theirs, log[NB - 1].author, log[NB - 1].last_seq - 1));
    r0 = fm_store_batch_rows_read(st);
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, blist_collect, &got));
    CHECK_EQ_INT(got.n, 1);
    if (got.n == 1) {
        CHECK_EQ_INT(got.b[0].len, all.b[all.n - 1].len);
        CHECK_MEM(got.b[0].data, all.b[all.n - 1].data, got.b[0].len);
    }
    CHECK_RANGE(fm_store_batch_rows_read(st) - r0, 1, 2);
    blist_free(&got);
    /* Random vectors: the same batches as a filter over everything, and rows read only from the
     * first lacking one (plus one lookup per lacking feed when a scan is chosen), or just the
     * lacking ones. */
    for (int round = 0; round < 200; round++) {
        fm_vv_free(&theirs);
        fm_vv_init(&theirs);
        for (uint32_t i = 0; i < full.n; i++) {
            uint64_t pick = fm_test_rand64(&rng) % (full.e[i].seq + 2);
            CHECK_OK(fm_vv_set(&theirs, full.e[i].author, FM_MIN(pick, full.e[i].seq)));
        }
        size_t first = NB, want = 0, feeds = 0;
        for (int k = 0; k < NB; k++)
            if (log[k].in_c && log[k].last_seq > fm_vv_get(&theirs, log[k].author)) {
                first = FM_MIN(first, log[k].pos);
                want++;
            }
        for (uint32_t i = 0; i < full.n; i++)
            feeds += full.e[i].seq > fm_vv_get(&theirs, full.e[i].author);
        r0 = fm_store_batch_rows_read(st);
        CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, blist_collect, &got));
        CHECK_EQ_INT(got.n, want);
        uint64_t rows = fm_store_batch_rows_read(st) - r0;
        CHECK(rows == want || rows == feeds + (first == NB ? 0 : NB - first));
        size_t j = 0;
        for (size_t i = 0; i < all.n && j < got.n; i++) {
            fm_batch b;
            fm_batch_init(&b);
            CHECK_OK(fm_batch_decode(all.b[i].data, all.b[i].len, &b));
            if (fm_batch_last_seq(&b) > fm_vv_get(&theirs, b.author)) {
                CHECK_EQ_INT(got.b[j].len, all.b[i].len);
                CHECK_MEM(got.b[j].data, all.b[i].data, FM_MIN(got.b[j].len, all.b[i].len));
                j++;
            }
            fm_batch_free(&b);
        }
        CHECK_EQ_INT(j, want);
        blist_free(&got);
    }
    /* fn's non-zero stops the scan and comes back; unknown collections and bad arguments. */
    fm_vv empty;
    fm_vv_init(&empty);
    int calls = 0;
    CHECK_RC(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &empty, count_calls, &calls), 42);
    CHECK_EQ_INT(calls, 2);
    calls = 0;
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"zz", 2, &empty, count_calls, &calls));
    CHECK_EQ_INT(calls, 0);
    CHECK_RC(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, NULL, count_calls, &calls),
             FM_EINVAL);
    CHECK_RC(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &empty, NULL, NULL), FM_EINVAL);
    fm_vv_free(&theirs);
    fm_vv_free(&full);
    fm_bytes_free(&ours);
    blist_free(&all);
    for (int i = 0; i < NW; i++)
        node_close(&w[i]);
    node_close(&d);
}

/* Duplicates of what a replica holds cost no signature verification; whatever is applied, held
 * or kept as fork proof was verified, so a forged copy of anything is refused unverified. */
static void test_dup_costs_no_verify(void)
{
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, NULL, T0);
    for (int i = 0; i < 4; i++)
        put_str(a.r, "people", "p1", "name", FM_KIND_LWW, i % 2 ? "Amy" : "Ann");
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "people", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 4);
    int one;
    uint64_t v0 = d.r->verifies;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 1);
    CHECK_EQ_INT(d.r->verifies - v0, 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 0); /* the head itself */
    CHECK_RC(one, FM_EDUP);
    CHECK_EQ_INT(d.r->verifies - v0, 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[1], 1, &one), 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 0); /* an older one: from the store */
    CHECK_RC(one, FM_EDUP);
    CHECK_EQ_INT(d.r->verifies - v0, 2);
    /* Held: verified once on arrival, not when offered again nor when released. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[3], 1, &one), 0);
    CHECK_RC(one, FM_EPENDING);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[3], 1, &one), 0);
    CHECK_RC(one, FM_EPENDING);
    CHECK_EQ_INT(d.r->verifies - v0, 3);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[2], 1, &one), 2);
    CHECK_EQ_INT(d.r->verifies - v0, 4);
    CHECK_EQ_INT(fm_replica_ingest(d.r, l.b, l.n, NULL), 0); /* all four again: free */
    CHECK_EQ_INT(d.r->verifies - v0, 4);

    /* Forgeries with a bad signature: a different batch at a held seq, one next in line that
     * does not chain, one with a gap. Each is refused as such: no fork proof, nothing held. */
    fm_buf f;
    fm_buf_init(&f);
    uint8_t wrong_prev[FM_HASH_BYTES];
    memset(wrong_prev, 0x5c, sizeof wrong_prev);
    const struct {
        uint64_t seq;
        const uint8_t *prev;
    } forged[3] = {{1, NULL}, {5, wrong_prev}, {7, wrong_prev}};
    fm_status s0 = status_of(d.r);
    for (int i = 0; i < 3; i++) {
        forge(&a, "people", forged[i].seq, forged[i].prev, "Eve", &f);
        f.data[f.len - 1] ^= 1; /* the signature's last byte */
        fm_bytes fb = {f.data, f.len};
        CHECK_EQ_INT(fm_replica_ingest(d.r, &fb, 1, &one), 0);
        CHECK_RC(one, FM_ESIG);
    }
    fm_status s1 = status_of(d.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_EQ_INT(s1.forked_authors, 0);
    CHECK_EQ_INT(s1.pending, 0);
    /* Correctly signed, the first is a fork (verified, then kept). */
    uint64_t v1 = d.r->verifies;
    forge(&a, "people", 1, NULL, "Eve", &f);
    fm_bytes fb = {f.data, f.len};
    CHECK_EQ_INT(fm_replica_ingest(d.r, &fb, 1, &one), 0);
    CHECK_RC(one, FM_EFORK);
    CHECK_EQ_INT(d.r->verifies - v1, 1);
    CHECK_EQ_INT(status_of(d.r).forked_authors, 1);
    fm_buf_free(&f);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
}

/* Replicas sharing a signature cache verify each batch once between them; a cached hash is
 * exactly the bytes that verified, so a tampered copy is still checked and refused. */
static void test_sigcache_shared(void)
{
    fm_sigcache *cache = NULL;
    CHECK_OK(fm_sigcache_new(1024, &cache));
    node a, w, d1, d2, d3;
    node_open(&a, 1, NULL, T0);
    node_open(&w, 2, NULL, T0);
    node_open(&d1, 3, NULL, T0);
    node_open(&d2, 4, NULL, T0);
    node_open(&d3, 5, NULL, T0);
    fm__replica_set_sigcache(w.r, cache);
    fm__replica_set_sigcache(d1.r, cache);
    fm__replica_set_sigcache(d2.r, cache);
    fm__replica_set_sigcache(d3.r, cache);
    for (int i = 0; i < 5; i++)
        put_str(a.r, "c", "x", "f", FM_KIND_LWW, i % 2 ? "odd" : "even");
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 5);
    CHECK_EQ_INT(fm_replica_ingest(d1.r, l.b, l.n, NULL), 5);
    CHECK_EQ_INT(d1.r->verifies, 5);
    CHECK_EQ_INT(fm_sigcache_count(cache), 5);
    CHECK_EQ_INT(fm_replica_ingest(d2.r, l.b, l.n, NULL), 5);
    CHECK_EQ_INT(d2.r->verifies, 0);
    CHECK_SAME_STATE(d1.r, d2.r);
    /* One flipped byte in a cached batch's signature: not the cached bytes. */
    fm_bytes bad = {malloc(l.b[0].len), l.b[0].len};
    memcpy(bad.data, l.b[0].data, bad.len);
    bad.data[bad.len - 2] ^= 0x10;
    int one;
    CHECK_EQ_INT(fm_replica_ingest(d3.r, &bad, 1, &one), 0);
    CHECK_RC(one, FM_ESIG);
    CHECK_EQ_INT(d3.r->verifies, 1);
    CHECK_EQ_INT(fm_sigcache_count(cache), 5); /* failures are not cached */
    /* A writer with the cache adds what it signs: its readers verify nothing. */
    put_str(w.r, "c", "y", "f", FM_KIND_LWW, "w1");
    put_str(w.r, "c", "y", "f", FM_KIND_LWW, "w2");
    CHECK_EQ_INT(fm_sigcache_count(cache), 7);
    uint64_t v = d1.r->verifies;
    sync_all(d1.r, w.r);
    CHECK_EQ_INT(d1.r->verifies - v, 0);
    CHECK_JSON(d1.r, "c", "y", "{\"f\":\"w2\"}");
    fm_bytes_free(&bad);
    blist_free(&l);
    node_close(&a);
    node_close(&w);
    node_close(&d1);
    node_close(&d2);
    node_close(&d3);
    fm_sigcache_free(cache);
}

/* ---- compact causal contexts ------------------------------------------------------------------
 */

/* The context of the batch a transaction commits (captured through the applied hook). */
typedef struct ctx_grab {
    fm_vv ctx;
    size_t len;
    int n;
} ctx_grab;

static void ctx_grab_cb(void *arg, const uint8_t *batch, size_t len)
{
    ctx_grab *g = arg;
    fm_batch b;
    fm_batch_init(&b);
    CHECK_OK(fm_batch_decode(batch, len, &b));
    fm_vv_free(&g->ctx);
    CHECK_OK(fm_vv_copy(&g->ctx, &b.ctx));
    g->len = len;
    g->n++;
    fm_batch_free(&b);
}

static void commit_grab(fm_replica *r, fm_txn *t, ctx_grab *g)
{
    g->n = 0;
    fm__replica_set_applied_hook(r, ctx_grab_cb, g);
    CHECK_OK(fm_txn_commit(t));
    fm__replica_set_applied_hook(r, NULL, NULL);
    CHECK_EQ_INT(g->n, 1);
}

/* ctx holds exactly these (author, seq) entries. */
static void check_ctx(const fm_vv *ctx, const node *const *who, const uint64_t *seqs, uint32_t n,
                      int line)
{
    fm_test_checks++;
    bool same = ctx->n == n;
    for (uint32_t i = 0; same && i < n; i++)
        same = fm_vv_get(ctx, who[i]->pk) == seqs[i];
    if (!same) {
        fprintf(stderr, "%s:%d: context has %u entries, want %u:", __FILE__, line, ctx->n, n);
        for (uint32_t i = 0; i < n; i++)
            fprintf(stderr, " %02x:%llu(got %llu)", who[i]->pk[0], (unsigned long long)seqs[i],
                    (unsigned long long)fm_vv_get(ctx, who[i]->pk));
        fprintf(stderr, "\n");
        fm_test_failures++;
    }
}
#define CHECK_CTX(ctx, who, seqs, n) check_ctx((ctx), (who), (seqs), (n), __LINE__)

/* A batch's context names only what its ops supersede at the writer, not the whole vector. */
static void test_compact_context(void)
{
    enum { NA = 50 };
    node *w = calloc(NA, sizeof *w);
    node d;
    node_open(&d, 200, NULL, T0 + 10);
    /* 50 authors each write their own record; 0-2 also write x.f (mv, concurrently: none sees
     * another), 3 writes x.g, 4 and 5 add 7 and 8 to x.s, 6 counts x.n. */
    for (int i = 0; i < NA; i++) {
        node_open(&w[i], (uint8_t)(10 + i), NULL, T0 + (uint64_t)i);
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        put_str(w[i].r, "c", id, "f", FM_KIND_LWW, "v");
        fm_txn *t;
        CHECK_OK(fm_txn_begin(w[i].r, "c", &t));
        if (i < 3)
            CHECK_OK(fm_txn_set(t, "x", "f", FM_KIND_MV, fm_value_int(i)));
        else if (i == 3)
            CHECK_OK(fm_txn_set(t, "x", "g", FM_KIND_LWW, fm_value_int(i)));
        else if (i < 6)
            CHECK_OK(fm_txn_set_add(t, "x", "s", fm_value_int(i + 3)));
        else if (i == 6)
            CHECK_OK(fm_txn_incr(t, "x", "n", 2));
        else
            CHECK_OK(fm_txn_set(t, id, "g", FM_KIND_LWW, fm_value_int(i)));
        commit_ok(t);
        sync_all(d.r, w[i].r); /* two batches each: seq 1 and 2 */
    }
    CHECK_EQ_INT(status_of(d.r).ops, 2 * NA);
    ctx_grab g = {0};
    fm_vv_init(&g.ctx);
    fm_txn *t;
    /* (a) A fresh field, in a fresh record and in a record others wrote: no context at all. */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "fresh", "f", FM_KIND_LWW, fm_value_int(1)));
    CHECK_OK(fm_txn_set(t, "r7", "h", FM_KIND_LWW, fm_value_int(1)));
    commit_grab(d.r, t, &g);
    CHECK_CTX(&g.ctx, NULL, NULL, 0);
    CHECK_RANGE(g.len, 1, 300); /* the whole vector would be 50 * 35 bytes */
    /* (b) An overwrite names exactly the authors of the values it replaces. */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "x", "f", FM_KIND_MV, fm_value_int(99)));
    commit_grab(d.r, t, &g);
    const node *f3[3] = {&w[0], &w[1], &w[2]};
    const uint64_t s3[3] = {2, 2, 2};
    CHECK_CTX(&g.ctx, f3, s3, 3);
    CHECK_JSON(d.r, "c", "x", "{\"f\":99,\"g\":3,\"n\":2,\"s\":[7,8]}");
    /* Overwriting one's own value names nobody. */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "x", "f", FM_KIND_MV, fm_value_int(100)));
    commit_grab(d.r, t, &g);
    CHECK_CTX(&g.ctx, NULL, NULL, 0);
    /* A remove names the element's adders; a re-add too; an increment nobody. */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set_remove(t, "x", "s", fm_value_int(7)));
    commit_grab(d.r, t, &g);
    const node *f4[1] = {&w[4]};
    const uint64_t s2[1] = {2};
    CHECK_CTX(&g.ctx, f4, s2, 1);
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set_add(t, "x", "s", fm_value_int(8)));
    commit_grab(d.r, t, &g);
    const node *f5[1] = {&w[5]};
    CHECK_CTX(&g.ctx, f5, s2, 1);
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_incr(t, "x", "n", 1));
    commit_grab(d.r, t, &g);
    CHECK_CTX(&g.ctx, NULL, NULL, 0);
    CHECK_JSON(d.r, "c", "x", "{\"f\":100,\"g\":3,\"n\":3,\"s\":[8]}");
    /* A delete names every dot left in the record: only 3's x.g (the rest is d's own now). */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_delete(t, "x"));
    commit_grab(d.r, t, &g);
    const node *f33[1] = {&w[3]};
    CHECK_CTX(&g.ctx, f33, s2, 1);
    /* Several ops: the union, per author the greatest seq. */
    CHECK_OK(fm_txn_begin(d.r, "c", &t));
    CHECK_OK(fm_txn_set(t, "r8", "f", FM_KIND_LWW, fm_value_int(1)));  /* 8's seq 1 */
    CHECK_OK(fm_txn_set(t, "r8", "g", FM_KIND_LWW, fm_value_int(1)));  /* 8's seq 2 */
    CHECK_OK(fm_txn_set(t, "r9", "f", FM_KIND_LWW, fm_value_int(1)));  /* 9's seq 1 */
    CHECK_OK(fm_txn_set(t, "r10", "x", FM_KIND_LWW, fm_value_int(1))); /* fresh */
    commit_grab(d.r, t, &g);
    const node *f89[2] = {&w[8], &w[9]};
    const uint64_t s21[2] = {2, 1};
    CHECK_CTX(&g.ctx, f89, s21, 2);
    /* Everyone converges on everything, whatever the delivery order. */
    for (int i = 0; i < NA; i += 7) {
        sync_all(w[i].r, d.r);
        for (int k = 0; k < NA; k += 5)
            sync_all(w[i].r, w[k].r);
        CHECK_SAME_STATE(w[i].r, d.r);
    }
    fm_vv_free(&g.ctx);
    for (int i = 0; i < NA; i++)
        node_close(&w[i]);
    free(w);
    node_close(&d);
}

/* One committed batch and the writer's whole collection vector just before it. */
typedef struct hist_ent {
    fm_bytes b;
    fm_vv full; /* without the writer */
    int writer, coll;
} hist_ent;

/* Re-signs a batch with ctx in place of its own context, chained onto prev. */
static void resign(const node *w, const fm_batch *b, const fm_vv *ctx, const uint8_t *prev,
                   fm_buf *out)
{
    fm_buf ops;
    fm_buf_init(&ops);
    for (uint32_t i = 0; i < b->nops; i++) {
        const fm_op *op = &b->ops[i];
        CHECK_OK(fm_op_encode(&ops, (fm_op_type)op->type, (const char *)op->id, op->id_len,
                              (const char *)op->field, op->field_len,
                              op->type == FM_OP_DELETE ? NULL : op->val, op->val_len));
    }
    fm_batch_head h = {.coll = b->coll,
                       .coll_len = b->coll_len,
                       .first_seq = b->first_seq,
                       .prev = prev,
                       .ctx = ctx,
                       .hlc = b->hlc,
                       .nops = b->nops};
    fm_buf_reset(out);
    CHECK_OK(fm_batch_encode(w->id, &h, ops.data, ops.len, out));
    fm_buf_free(&ops);
}

/* The compact context gives the same final state as the whole vector would: random histories
 * of four writers with partial syncs, every batch also re-signed with its writer's whole vector
 * (re-chained), that log replayed into a fresh state: equal state hash, byte for byte. And every
 * compact context is covered by the whole vector (it names nothing the writer had not seen). */
static void test_compact_context_equivalence(void)
{
    static const char *const colls[] = {"people", "tasks"};
    enum { NN = 4, STEPS = 60, NHIST = 8 };
    size_t compact_entries = 0, full_entries = 0;
    for (int hist = 0; hist < NHIST; hist++) {
        node n[NN];
        for (int i = 0; i < NN; i++)
            node_open(&n[i], (uint8_t)(1 + i), NULL, T0 + 5 * (uint64_t)i);
        uint64_t rng = g_seed * 31 + (uint64_t)hist;
        int serial = 0;
        hist_ent *h = calloc(STEPS, sizeof *h);
        size_t nh = 0;
        for (int step = 0; step < STEPS; step++) {
            int wi = (int)(fm_test_rand64(&rng) % NN), ci = (int)(fm_test_rand64(&rng) % 2);
            node *w = &n[wi];
            w->te.now += fm_test_rand64(&rng) % 3;
            fm_bytes vv = {0};
            CHECK_OK(fm_replica_vv(w->r, colls[ci], &vv));
            hist_ent *e = &h[nh];
            fm_vv_init(&e->full);
            CHECK_OK(fm_vv_decode(vv.data, vv.len, &e->full));
            fm_bytes_free(&vv);
            random_txn(w, colls[ci], &rng, &serial);
            blist nb = {0};
            CHECK_OK(fm__replica_export_vv(w->r, (const uint8_t *)colls[ci],
                                           (uint32_t)strlen(colls[ci]), &e->full, blist_collect,
                                           &nb));
            CHECK_RANGE(nb.n, 0, 1); /* 0: every op refused (a deleted record) */
            if (nb.n == 1) {
                CHECK_OK(fm_vv_set(&e->full, w->pk, 0));
                e->b = nb.b[0];
                nb.n = 0;
                e->writer = wi;
                e->coll = ci;
                nh++;
            } else {
                fm_vv_free(&e->full);
            }
            blist_free(&nb);
            if (fm_test_rand64(&rng) % 3 == 0) {
                int x = (int)(fm_test_rand64(&rng) % NN);
                int y = (x + 1 + (int)(fm_test_rand64(&rng) % (NN - 1))) % NN;
                sync_all(n[x].r, n[y].r);
            }
        }
        for (int pass = 0; pass < 2; pass++)
            for (int x = 0; x < NN; x++)
                for (int y = 0; y < NN; y++)
                    if (x != y)
                        sync_all(n[x].r, n[y].r);
        for (int i = 1; i < NN; i++)
            CHECK_SAME_STATE(n[0].r, n[i].r);

        fm_state ref;
        fm_state_init(&ref, NULL);
        uint8_t prev[NN][2][FM_HASH_BYTES];
        fm_buf out;
        fm_buf_init(&out);
        fm_batch b, fb;
        fm_batch_init(&b);
        fm_batch_init(&fb);
        for (size_t k = 0; k < nh; k++) {
            hist_ent *e = &h[k];
            CHECK_OK(fm_batch_decode(e->b.data, e->b.len, &b));
            for (uint32_t i = 0; i < b.ctx.n; i++)
                CHECK(b.ctx.e[i].seq <= fm_vv_get(&e->full, b.ctx.e[i].author));
            compact_entries += b.ctx.n;
            full_entries += e->full.n;
            resign(&n[e->writer], &b, &e->full, b.first_seq > 1 ? prev[e->writer][e->coll] : NULL,
                   &out);
            CHECK_OK(fm_batch_decode(out.data, out.len, &fb));
            CHECK_OK(fm_state_check(&ref, &fb));
            CHECK_OK(fm_state_apply(&ref, &fb));
            memcpy(prev[e->writer][e->coll], fb.hash, FM_HASH_BYTES);
        }
        uint8_t want[FM_HASH_BYTES];
        CHECK_OK(fm_state_hash(&ref, want));
        fm_status s = status_of(n[0].r);
        CHECK_EQ_INT(s.batches, nh);
        char hw[65], hs[65];
        fm_hex(want, FM_HASH_BYTES, hw);
        fm_hex(s.state_hash, FM_HASH_BYTES, hs);
        CHECK_STR(hs, hw);
        if (strcmp(hs, hw) != 0)
            fprintf(stderr, "  history %d differs (FM_TEST_SEED=%llu)\n", hist,
                    (unsigned long long)g_seed);
        fm_batch_free(&b);
        fm_batch_free(&fb);
        fm_buf_free(&out);
        fm_state_free(&ref);
        for (size_t k = 0; k < nh; k++) {
            fm_bytes_free(&h[k].b);
            fm_vv_free(&h[k].full);
        }
        free(h);
        for (int i = 0; i < NN; i++)
            node_close(&n[i]);
    }
    fprintf(stderr, "  context entries: %zu compact, %zu whole-vector\n", compact_entries,
            full_entries);
    CHECK(compact_entries < full_entries);
}

/* ---- bulk membership --------------------------------------------------------------------------
 */

#define DAY_MS (24ull * 3600 * 1000)

static void cert_bin(const fm_identity *auth, const uint8_t *device, fm_bytes *out)
{
    uint8_t mesh[FM_ID_BYTES];
    fm_identity_public(auth, mesh);
    fm_cert c;
    CHECK_OK(fm_cert_issue(auth, mesh, device, "dev", FM_PERM_ALL, T0 - DAY_MS, T0 + 30 * DAY_MS,
                           T0, &c));
    out->data = malloc(FM_MAX_CERT_BYTES);
    CHECK_OK(fm_cert_encode(&c, out->data, &out->len));
}

static int bin_collect(void *arg, const uint8_t *rec, size_t len)
{
    blist_push(arg, rec, len);
    return 0;
}

typedef struct mdigest {
    uint8_t d[FM_HASH_BYTES];
    uint32_t n;
} mdigest;

static mdigest digest_of(fm_replica *r)
{
    mdigest m = {0};
    CHECK_OK(fm__replica_member_digest(r, m.d, &m.n));
    return m;
}

/* The result of offering writer's latest batch of "c" to r. */
static int offer_latest(fm_replica *r, node *writer)
{
    blist l = {0};
    CHECK_OK(fm_replica_export(writer->r, "c", NULL, 0, blist_collect, &l));
    int one = 1;
    if (l.n)
        fm_replica_ingest(r, &l.b[l.n - 1], 1, &one);
    blist_free(&l);
    return one;
}

static void test_import_members(void)
{
    tmp_setup();
    char p[600];
    uint8_t seed[32] = {0xa0, 0x42}, oseed[32] = {0xa1, 0x42};
    fm_identity *auth = NULL, *other = NULL;
    CHECK_OK(fm_identity_from_seed(seed, &auth));
    CHECK_OK(fm_identity_from_seed(oseed, &other));
    node a, b, dv[4];
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0);
    for (int i = 0; i < 4; i++)
        node_open(&dv[i], (uint8_t)(3 + i), NULL, T0 + 1000); /* not in any mesh */
    CHECK_RC(fm__replica_import_members(dv[0].r, NULL, 0), FM_ENOTFOUND);
    CHECK_EQ_INT(fm__replica_member_epoch(a.r), 0);
    CHECK_OK(fm_replica_mesh_create(a.r, auth, 30));
    CHECK_EQ_INT(fm__replica_member_epoch(a.r), 1);
    char text[FM_MEMBER_TEXT_MAX];
    CHECK_OK(fm_mesh_admit(&b.te.env, auth, b.pk, "b", 30, 0, text, sizeof text));
    CHECK_OK(fm_replica_join(b.r, text));
    CHECK_EQ_INT(digest_of(a.r).n, 1);
    CHECK_EQ_INT(digest_of(b.r).n, 1);

    /* Certificates for dv[0..3], a revocation of dv[1], and four records to skip: another mesh's
     * certificate, a bad signature, junk, nothing. */
    fm_bytes recs[9] = {{0}};
    for (int i = 0; i < 4; i++)
        cert_bin(auth, dv[i].pk, &recs[i]);
    uint8_t mesh[FM_ID_BYTES];
    fm_identity_public(auth, mesh);
    fm_revocation rv;
    CHECK_OK(fm_revocation_issue(auth, mesh, dv[1].pk, T0, T0, &rv));
    recs[4].data = malloc(FM_MAX_REVOCATION_BYTES);
    CHECK_OK(fm_revocation_encode(&rv, recs[4].data, &recs[4].len));
    cert_bin(other, dv[2].pk, &recs[5]);
    cert_bin(auth, dv[3].pk, &recs[6]);
    recs[6].data[recs[6].len - 1] ^= 1;
    recs[7].data = malloc(2);
    recs[7].data[0] = 0x92, recs[7].data[1] = 0xc0;
    recs[7].len = 2;
    for (int i = 0; i < 3; i++)
        put_str(dv[i].r, "c", "x", "f", FM_KIND_LWW, "v");
    CHECK_RC(offer_latest(b.r, &dv[0]), FM_EUNKNOWN_DEVICE);

    CHECK_EQ_INT(fm__replica_import_members(a.r, recs, 9), 5);
    CHECK_EQ_INT(a.r->members_skipped, 4);
    CHECK_EQ_INT(fm__replica_member_epoch(a.r), 2);
    CHECK_EQ_INT(digest_of(a.r).n, 6);
    /* Again: nothing new, the view did not move. */
    mdigest da = digest_of(a.r);
    CHECK_EQ_INT(fm__replica_import_members(a.r, recs, 9), 0);
    CHECK_EQ_INT(fm__replica_member_epoch(a.r), 2);
    CHECK_EQ_INT(a.r->members_skipped, 8);
    mdigest da2 = digest_of(a.r);
    CHECK_MEM(da2.d, da.d, FM_HASH_BYTES);

    /* Exchange both ways through the binary form: equal sets, equal digests. */
    CHECK(memcmp(digest_of(b.r).d, da.d, FM_HASH_BYTES) != 0);
    blist from_a = {0}, from_b = {0};
    CHECK_OK(fm__replica_each_member_bin(a.r, bin_collect, &from_a));
    CHECK_OK(fm__replica_each_member_bin(b.r, bin_collect, &from_b));
    CHECK_EQ_INT(from_a.n, 6);
    CHECK_EQ_INT(from_b.n, 1);
    uint64_t eb = fm__replica_member_epoch(b.r);
    CHECK_EQ_INT(fm__replica_import_members(b.r, from_a.b, from_a.n), 6);
    CHECK_EQ_INT(fm__replica_member_epoch(b.r), eb + 1);
    CHECK_EQ_INT(fm__replica_import_members(a.r, from_b.b, from_b.n), 1);
    mdigest fa = digest_of(a.r), fb = digest_of(b.r);
    CHECK_EQ_INT(fa.n, 7);
    CHECK_EQ_INT(fb.n, 7);
    CHECK_MEM(fa.d, fb.d, FM_HASH_BYTES);
    /* The view changed: dv[0] and dv[2] write (the other mesh's certificate for dv[2] was
     * skipped, this mesh's taken), dv[1] is revoked, dv[3]'s forged certificate admitted
     * nobody. */
    put_str(dv[3].r, "c", "x", "f", FM_KIND_LWW, "v");
    CHECK_RC(offer_latest(b.r, &dv[0]), 0);
    CHECK_RC(offer_latest(b.r, &dv[1]), FM_EREVOKED);
    CHECK_RC(offer_latest(b.r, &dv[2]), 0);
    CHECK_RC(offer_latest(b.r, &dv[3]), 0); /* recs[3]: dv[3]'s genuine certificate */

    /* All or nothing: the store refuses the third record installed, nothing stays. */
    node f;
    node_open(&f, 9, tmp_path("members.db", p, sizeof p), T0);
    CHECK_OK(fm_mesh_admit(&f.te.env, auth, f.pk, "f", 30, 0, text, sizeof text));
    CHECK_OK(fm_replica_join(f.r, text));
    mdigest f0 = digest_of(f.r);
    uint64_t ef = fm__replica_member_epoch(f.r);
    raw_sql(p, "CREATE TRIGGER boom BEFORE INSERT ON members WHEN (SELECT count(*) FROM members) "
               ">= 3 BEGIN SELECT RAISE(ABORT, 'boom'); END");
    CHECK_RC(fm__replica_import_members(f.r, from_a.b, from_a.n), FM_ESTORE);
    mdigest f1 = digest_of(f.r);
    CHECK_EQ_INT(f1.n, 1);
    CHECK_MEM(f1.d, f0.d, FM_HASH_BYTES);
    CHECK_EQ_INT(fm__replica_member_epoch(f.r), ef);
    CHECK_EQ_INT(f.r->members_skipped, 0);
    blist from_f = {0};
    CHECK_OK(fm__replica_each_member_bin(f.r, bin_collect, &from_f));
    CHECK_EQ_INT(from_f.n, 1);
    CHECK_RC(offer_latest(f.r, &dv[0]), FM_EUNKNOWN_DEVICE); /* the view was rolled back too */
    raw_sql(p, "DROP TRIGGER boom");
    CHECK_EQ_INT(fm__replica_import_members(f.r, from_a.b, from_a.n), 6);
    CHECK_RC(offer_latest(f.r, &dv[0]), 0);
    /* Reopened: the same digest, from the store. */
    mdigest f2 = digest_of(f.r);
    node_reopen(&f);
    mdigest f3 = digest_of(f.r);
    CHECK_EQ_INT(f3.n, f2.n);
    CHECK_MEM(f3.d, f2.d, FM_HASH_BYTES);
    CHECK_RC(offer_latest(f.r, &dv[1]), FM_EREVOKED);

    for (int i = 0; i < 9; i++)
        free(recs[i].data);
    blist_free(&from_a);
    blist_free(&from_b);
    blist_free(&from_f);
    node_close(&f);
    for (int i = 0; i < 4; i++)
        node_close(&dv[i]);
    node_close(&a);
    node_close(&b);
    fm_identity_free(auth);
    fm_identity_free(other);
    tmp_teardown();
}

/* ---- in-memory stores shared within a process -------------------------------------------------
 */

/* A replica on an in-memory URI (the memdb VFS, or a shared-cache mode=memory database)
 * survives close and reopen (a simulated crash) while another connection holds
 * the database; with none left, the database is gone. Nothing touches disk. */
static void memory_uri_reopen(const char *fmt)
{
    char uri[128], disk[64];
    snprintf(uri, sizeof uri, fmt, (int)getpid());
    snprintf(disk, sizeof disk, "/fm-test-replica-%d", (int)getpid());
    sqlite3 *hold = NULL;
    CHECK_EQ_INT(sqlite3_open_v2(uri, &hold,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
                                 NULL),
                 SQLITE_OK);
    node a, b;
    node_open(&a, 1, uri, T0);
    node_open(&b, 2, NULL, T0);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "before");
    incr(a.r, "c", "x", "n", 4);
    fm_status s0 = status_of(a.r);
    node_reopen(&a);
    fm_status s1 = status_of(a.r);
    CHECK_SAME_STATUS(s1, s0);
    CHECK_JSON(a.r, "c", "x", "{\"f\":\"before\",\"n\":4}");
    /* The feed goes on where it was: a peer takes the whole chain. */
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "after");
    sync_all(b.r, a.r);
    CHECK_SAME_STATE(b.r, a.r);
    CHECK_EQ_INT(status_of(b.r).batches, 3);
    CHECK_EQ_INT(status_of(b.r).forked_authors, 0);
    struct stat sb;
    CHECK(stat(disk, &sb) != 0);
    sqlite3_close(hold);
    CHECK_JSON(a.r, "c", "x", "{\"f\":\"after\",\"n\":4}"); /* a's connection holds it */
    node_close(&a);
    node_open(&a, 1, uri, T0); /* no connection left in between: a new, empty database */
    CHECK_JSON(a.r, "c", "x", "!not found");
    CHECK_EQ_INT(status_of(a.r).batches, 0);
    node_close(&a);
    node_close(&b);
    CHECK(stat(disk, &sb) != 0);
    CHECK(stat(disk + 1, &sb) != 0);
}

static void test_memdb_uri_reopen(void)
{
    memory_uri_reopen("file:/fm-test-replica-%d?vfs=memdb");
}

static void test_shared_memory_uri_reopen(void)
{
    memory_uri_reopen("file:fm-test-replica-%d?mode=memory&cache=shared");
}

/* A replica over a store its caller keeps (the simulator's way across a crash): close leaves
 * the store open with nothing uncommitted, and a replica reopened on it has everything. */
static void test_borrowed_store_reopen(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open("file:fm-test-borrowed?mode=memory", &st));
    if (!st)
        return;
    node a, b;
    node_open(&a, 1, NULL, T0);
    fm_replica_close(a.r);
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .identity = a.id, .env = &a.te.env};
    CHECK_RC(fm__replica_open_on(&cfg, NULL, &a.r), FM_EINVAL);
    CHECK_OK(fm__replica_open_on(&cfg, st, &a.r));
    node_open(&b, 2, NULL, T0);
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "mine");
    put_str(b.r, "c", "y", "f", FM_KIND_LWW, "theirs");
    incr(b.r, "c", "y", "n", 3);
    sync_all(b.r, a.r);
    /* Relayed batches wait in an open transaction: close commits them, and ends it. */
    fm__replica_set_group_commit(a.r, 64);
    sync_all(a.r, b.r);
    CHECK(a.r->txn_open);
    fm_replica_close(a.r);
    CHECK_OK(fm_store_begin(st)); /* fails inside a transaction */
    fm_store_rollback(st);
    CHECK_OK(fm__replica_open_on(&cfg, st, &a.r));
    CHECK_SAME_STATE(a.r, b.r);
    CHECK_JSON(a.r, "c", "y", "{\"f\":\"theirs\",\"n\":3}");
    /* The feed goes on where it was. */
    put_str(a.r, "c", "x", "f", FM_KIND_LWW, "again");
    sync_all(b.r, a.r);
    CHECK_SAME_STATE(b.r, a.r);
    CHECK_EQ_INT(status_of(b.r).forked_authors, 0);
    node_close(&a);
    node_close(&b);
    fm_store_close(st);
}

/* A few batches lacking early in a long log: export walks their feeds, not the log. */
static int stop_at_third(void *arg, const uint8_t *batch, size_t len)
{
    (void)batch, (void)len;
    return ++*(int *)arg == 3 ? 7 : 0;
}

static void test_export_merge(void)
{
    node a, b, d;
    node_open(&a, 1, NULL, T0);
    node_open(&b, 2, NULL, T0);
    node_open(&d, 3, NULL, T0);
    put_str(a.r, "c", "early", "f", FM_KIND_LWW, "a");
    char id[16];
    for (int k = 0; k < 40; k++) {
        snprintf(id, sizeof id, "r%d", k);
        put_str(b.r, "c", id, "f", FM_KIND_LWW, "b");
    }
    blist la = {0}, lb = {0};
    CHECK_OK(fm_replica_export(a.r, "c", NULL, 0, blist_collect, &la));
    CHECK_OK(fm_replica_export(b.r, "c", NULL, 0, blist_collect, &lb));
    CHECK_EQ_INT(fm_replica_ingest(d.r, la.b, la.n, NULL), 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, lb.b, lb.n, NULL), 40);
    fm_vv theirs;
    fm_vv_init(&theirs);
    CHECK_OK(fm_vv_set(&theirs, b.pk, 39)); /* lacks a's only batch (first in d's log), b's last */
    uint64_t r0 = fm_store_batch_rows_read(d.r->store);
    blist got = {0};
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, blist_collect, &got));
    CHECK_EQ_INT(fm_store_batch_rows_read(d.r->store) - r0, 2);
    CHECK_EQ_INT(got.n, 2);
    if (got.n == 2) { /* in log order */
        CHECK_EQ_INT(got.b[0].len, la.b[0].len);
        CHECK_MEM(got.b[0].data, la.b[0].data, la.b[0].len);
        CHECK_EQ_INT(got.b[1].len, lb.b[39].len);
        CHECK_MEM(got.b[1].data, lb.b[39].data, lb.b[39].len);
    }
    blist_free(&got);
    /* Most of the log lacking: the scan, the same batches. */
    fm_vv_free(&theirs);
    fm_vv_init(&theirs);
    CHECK_OK(fm_vv_set(&theirs, b.pk, 2));
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, blist_collect, &got));
    CHECK_EQ_INT(got.n, 1 + 38);
    blist_free(&got);
    /* One feed lacking: streamed in order by one statement, a row read per batch and no more. */
    CHECK_OK(fm_vv_set(&theirs, a.pk, 1));
    CHECK_OK(fm_vv_set(&theirs, b.pk, 30));
    r0 = fm_store_batch_rows_read(d.r->store);
    CHECK_OK(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, blist_collect, &got));
    CHECK_EQ_INT(fm_store_batch_rows_read(d.r->store) - r0, 10);
    CHECK_EQ_INT(got.n, 10);
    for (size_t i = 0; i < got.n && got.n == 10; i++)
        CHECK_MEM(got.b[i].data, lb.b[30 + i].data, lb.b[30 + i].len);
    blist_free(&got);
    /* A callback that stops: what it returns comes back, nothing after it is read. */
    r0 = fm_store_batch_rows_read(d.r->store);
    int calls = 0;
    CHECK_RC(fm__replica_export_vv(d.r, (const uint8_t *)"c", 1, &theirs, stop_at_third, &calls),
             7);
    CHECK_EQ_INT(calls, 3);
    CHECK_EQ_INT(fm_store_batch_rows_read(d.r->store) - r0, 3);
    fm_vv_free(&theirs);
    blist_free(&la);
    blist_free(&lb);
    node_close(&a);
    node_close(&b);
    node_close(&d);
}

/* Group commit: remote batches wait in an open transaction, visible at once; a local write,
 * a listing and close commit them first, so a reopen finds everything that was applied. */
static int count_record(void *arg, const fm_record *rec)
{
    (void)rec;
    (*(int *)arg)++;
    return 0;
}

static void test_group_commit(void)
{
    tmp_setup();
    char p[600];
    node a, d;
    node_open(&a, 1, NULL, T0);
    node_open(&d, 2, tmp_path("d.db", p, sizeof p), T0);
    char id[16];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "p%d", i);
        put_str(a.r, "people", id, "name", FM_KIND_LWW, "Ann");
    }
    blist l = {0};
    CHECK_OK(fm_replica_export(a.r, "people", NULL, 0, blist_collect, &l));
    CHECK_EQ_INT(l.n, 6);
    fm__replica_set_group_commit(d.r, 4);
    int one;
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[1], 1, &one), 1);
    CHECK(d.r->txn_open);
    CHECK_EQ_INT(status_of(d.r).ops, 2);
    /* A duplicate of a batch older than the head: known from the recent set. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[0], 1, &one), 0);
    CHECK_RC(one, FM_EDUP);
    /* A local write commits what waits, then itself. */
    put_str(d.r, "people", "mine", "name", FM_KIND_LWW, "Dee");
    CHECK(!d.r->txn_open);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[2], 1, &one), 1);
    CHECK(d.r->txn_open);
    int n = 0;
    CHECK_OK(fm_collection_list(d.r, "people", count_record, &n));
    CHECK_EQ_INT(n, 4);
    CHECK(!d.r->txn_open);
    /* The group's bound commits by itself. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[3], 1, &one), 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[4], 1, &one), 1);
    CHECK(d.r->txn_open);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[5], 1, &one), 1);
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[5], 1, &one), 0); /* the fourth offered */
    CHECK(!d.r->txn_open);
    CHECK_OK(fm__replica_flush(d.r)); /* nothing waits: a no-op */
    /* Close commits what waits: a reopen holds every batch reported applied. */
    CHECK_EQ_INT(fm_replica_ingest(d.r, &l.b[5], 1, &one), 0);
    fm_status s0 = status_of(d.r);
    char *d0 = fm_test_dump(d.r);
    node_reopen(&d);
    fm_status s1 = status_of(d.r);
    CHECK_SAME_STATUS(s1, s0);
    char *d1 = fm_test_dump(d.r);
    CHECK_STR(d1, d0);
    CHECK_EQ_INT(s1.ops, 7);
    CHECK_EQ_INT(d.r->rollbacks, 0);
    free(d0);
    free(d1);
    blist_free(&l);
    node_close(&a);
    node_close(&d);
    tmp_teardown();
}

int main(void)
{
    const char *seed = getenv("FM_TEST_SEED");
    if (seed && seed[0])
        g_seed = strtoull(seed, NULL, 10);
    fprintf(stderr, "test_replica: seed %llu\n", (unsigned long long)g_seed);
    RUN(test_write_kinds_memory);
    RUN(test_write_kinds_file);
    RUN(test_concurrent_kinds_and_conflicts);
    RUN(test_list_and_conflicts);
    RUN(test_deleted_records);
    RUN(test_bad_names);
    RUN(test_batch_ops_bound);
    RUN(test_fields_per_record_bound);
    RUN(test_convergence_delivery_orders);
    RUN(test_pending_area);
    RUN(test_tampered_batches);
    RUN(test_forks);
    RUN(test_holds_head);
    RUN(test_pending_count_bound);
    RUN(test_pending_bytes_bound);
    RUN(test_file_reopen);
    RUN(test_hlc_survives_reopen);
    RUN(test_export_replay);
    RUN(test_vv_entries_bound);
    RUN(test_applied_hook);
    RUN(test_applied_hook_failed_call);
    RUN(test_export_vv);
    RUN(test_dup_costs_no_verify);
    RUN(test_sigcache_shared);
    RUN(test_compact_context);
    RUN(test_compact_context_equivalence);
    RUN(test_import_members);
    RUN(test_memdb_uri_reopen);
    RUN(test_shared_memory_uri_reopen);
    RUN(test_borrowed_store_reopen);
    RUN(test_group_commit);
    RUN(test_export_merge);
    if (fm_test_failures)
        fprintf(stderr, "test_replica: reproduce with FM_TEST_SEED=%llu\n",
                (unsigned long long)g_seed);
    TEST_MAIN_END();
}
