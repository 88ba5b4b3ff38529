/*
 * test_store.c — the sqlite store: a fresh file gets the current schema; an older file is
 * migrated forward; a newer, foreign or non-sqlite file is refused and left byte-for-byte as it
 * was (no stray -wal/-shm/-journal files either); metadata; batch lookup by feed position; the
 * iteration orders of records and batches; scans from a log position (rows read, re-entry);
 * whether a member record was new; "file:" URI paths (a WAL file; a shared memdb database).
 */
#include "crypto/identity.h"
#include "fm_test.h"
#include "node/store.h"

#include <dirent.h>
#include <sodium.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#define T0 1700000000000ull

/* The v1 schema exactly as schema step 0 -> 1 shipped it (node/store.c MIGRATIONS[0]). A frozen
 * copy on purpose: a store written by a v1 program looks like this forever. */
static const char V1_SQL[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;"
    "CREATE TABLE collections(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    "  state_xor BLOB NOT NULL, live INTEGER NOT NULL, conflicts INTEGER NOT NULL);"
    "CREATE TABLE feeds(coll INTEGER NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL,"
    "  head BLOB NOT NULL, PRIMARY KEY(coll, author)) WITHOUT ROWID;"
    "CREATE TABLE batches(id INTEGER PRIMARY KEY, coll INTEGER NOT NULL, author BLOB NOT NULL,"
    "  first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, hash BLOB NOT NULL,"
    "  data BLOB NOT NULL);"
    "CREATE UNIQUE INDEX batches_feed ON batches(coll, author, last_seq);"
    "CREATE TABLE records(coll INTEGER NOT NULL, id BLOB NOT NULL, state BLOB NOT NULL,"
    "  conflicts INTEGER NOT NULL, PRIMARY KEY(coll, id)) WITHOUT ROWID;"
    "INSERT INTO meta(key, value) VALUES ('app', 'fieldmesh');";

/* ---- helpers ------------------------------------------------------------------------------ */

static char g_dir[256];

static void tmp_setup(void)
{
    fm_test_tmpdir(g_dir, sizeof g_dir, "store");
}

static void tmp_teardown(void)
{
    fm_test_tmpdir_remove(g_dir);
}

static void path_of(const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", g_dir, name);
}

/* Sorted, space-separated names of the files in the temp dir. */
static void dir_listing(char *out, size_t n)
{
    char names[16][128];
    int k = 0;
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && k < 16)
        if (e->d_name[0] != '.' && strlen(e->d_name) < sizeof names[0])
            memcpy(names[k++], e->d_name, strlen(e->d_name) + 1);
    if (d)
        closedir(d);
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char t[128];
            memcpy(t, names[j], sizeof t);
            memcpy(names[j], names[j - 1], sizeof t);
            memcpy(names[j - 1], t, sizeof t);
        }
    out[0] = '\0';
    for (int i = 0; i < k; i++) {
        if (i)
            strncat(out, " ", n - strlen(out) - 1);
        strncat(out, names[i], n - strlen(out) - 1);
    }
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void write_all(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK_EQ_INT(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Runs SQL on a file with sqlite directly (outside the store), printing sqlite's error. */
static int sql_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    int rc = sqlite3_open(path, &db);
    char *err = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sql_exec(%s): %s\n", sql, err ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    sqlite3_close(db);
    return rc;
}

/* First column of the first row of a query as an integer (-1 if none). */
static long long sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s = NULL;
    long long v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    else
        fprintf(stderr, "sql_int(%s): %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

/* The schema of a store (names, types and SQL of every table and index, in name order) into
 * out, so a migrated store can be compared with a fresh one. */
static void schema_of(const char *path, char *out, size_t n)
{
    sqlite3 *db;
    sqlite3_stmt *s = NULL;
    out[0] = '\0';
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db,
                           "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM "
                           "sqlite_master ORDER BY name",
                           -1, &s, NULL) == SQLITE_OK)
        while (sqlite3_step(s) == SQLITE_ROW) {
            strncat(out, (const char *)sqlite3_column_text(s, 0), n - strlen(out) - 1);
            strncat(out, "\n", n - strlen(out) - 1);
        }
    sqlite3_finalize(s);
    sqlite3_close(db);
}

/* Turns a current store into what a v1 program left: drops every table and index the v1 schema
 * did not have, puts back the feeds table (v4 dropped it) with the rows a v1 program wrote (each
 * feed's last batch) and sets user_version 1. The rows of the v1 tables stay. */
static void h32_fn(sqlite3_context *ctx, int n, sqlite3_value **v)
{
    (void)n;
    uint8_t h[FM_HASH_BYTES];
    crypto_generichash(h, sizeof h, sqlite3_value_blob(v[0]), (size_t)sqlite3_value_bytes(v[0]),
                       NULL, 0);
    sqlite3_result_blob(ctx, h, sizeof h, SQLITE_TRANSIENT);
}

static void downgrade_to_v1(const char *path)
{
    static const char *const v1_names[] = {"meta",    "collections",  "feeds",
                                           "batches", "batches_feed", "records"};
    sqlite3 *db;
    CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
    /* The log as v1-v4 kept it: authors by key, each batch's hash beside it (h32: BLAKE2b). */
    CHECK_EQ_INT(sqlite3_create_function(db, "h32", 1, SQLITE_UTF8, NULL, h32_fn, NULL, NULL),
                 SQLITE_OK);
    CHECK_EQ_INT(
        sqlite3_exec(db,
                     "CREATE TABLE v1_batches(id INTEGER PRIMARY KEY,"
                     "  coll INTEGER NOT NULL, author BLOB NOT NULL,"
                     "  first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,"
                     "  hash BLOB NOT NULL, data BLOB NOT NULL);"
                     "INSERT INTO v1_batches SELECT b.id, b.coll, a.key, b.first_seq,"
                     "  b.last_seq, h32(b.data), b.data"
                     "  FROM batches b JOIN authors a ON a.id = b.author;"
                     "DROP TABLE batches;"
                     "ALTER TABLE v1_batches RENAME TO batches;"
                     "CREATE UNIQUE INDEX batches_feed ON batches(coll, author, last_seq);",
                     NULL, NULL, NULL),
        SQLITE_OK);
    char drops[16][160];
    int nd = 0;
    sqlite3_stmt *s;
    CHECK_EQ_INT(sqlite3_prepare_v2(db,
                                    "SELECT type, name FROM sqlite_master WHERE name NOT LIKE "
                                    "'sqlite_%' ORDER BY type = 'table', name",
                                    -1, &s, NULL),
                 SQLITE_OK);
    while (sqlite3_step(s) == SQLITE_ROW && nd < 16) {
        const char *type = (const char *)sqlite3_column_text(s, 0);
        const char *name = (const char *)sqlite3_column_text(s, 1);
        bool v1 = false;
        for (size_t i = 0; i < FM_ARRAY_LEN(v1_names); i++)
            v1 |= strcmp(name, v1_names[i]) == 0;
        if (!v1)
            snprintf(drops[nd++], sizeof drops[0], "DROP %s %s",
                     strcmp(type, "index") == 0 ? "INDEX" : "TABLE", name);
    }
    sqlite3_finalize(s);
    for (int i = 0; i < nd; i++)
        CHECK_EQ_INT(sqlite3_exec(db, drops[i], NULL, NULL, NULL), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(db,
                              "CREATE TABLE feeds(coll INTEGER NOT NULL, author BLOB NOT NULL,"
                              "  seq INTEGER NOT NULL, head BLOB NOT NULL,"
                              "  PRIMARY KEY(coll, author)) WITHOUT ROWID;"
                              "INSERT INTO feeds SELECT coll, author, max(last_seq), hash "
                              "  FROM batches GROUP BY coll, author;",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* Opening path must fail with FM_ESCHEMA and leave the directory exactly as it was. */
#define check_refused_untouched(path) check_refused_untouched_at(path, __LINE__)
static void check_refused_untouched_at(const char *path, int line)
{
    size_t n0, n1;
    char before[512], after[512];
    uint8_t *b0 = read_all(path, &n0);
    dir_listing(before, sizeof before);
    fm_store *st = NULL;
    CHECK_RC(fm_store_open(path, &st), FM_ESCHEMA);
    CHECK(st == NULL);
    fm_store_close(st);
    uint8_t *b1 = read_all(path, &n1);
    dir_listing(after, sizeof after);
    CHECK(b0 && b1);
    CHECK_EQ_INT(n1, n0);
    if (b0 && b1 && n0 == n1) {
        CHECK_MEM(b1, b0, n0);
        for (size_t i = 0; i < n0; i++)
            if (b0[i] != b1[i]) {
                fprintf(stderr,
                        "  (called from line %d) first changed byte at offset %zu: "
                        "%02x -> %02x\n",
                        line, i, b0[i], b1[i]);
                break;
            }
    }
    if (strcmp(after, before) != 0)
        fprintf(stderr, "  (called from line %d)\n", line);
    CHECK_STR(after, before);
    free(b0);
    free(b1);
}

/* Appends one lww op (record id, field, string value) to ops. */
static void op_lww(fm_buf *ops, const char *id, const char *field, const char *val)
{
    fm_buf v;
    fm_buf_init(&v);
    fm_value x = fm_value_str(val);
    CHECK_OK(fm_value_encode(&x, &v));
    CHECK_OK(fm_op_encode(ops, FM_OP_SET_LWW, id, strlen(id), field, strlen(field), v.data, v.len));
    fm_buf_free(&v);
}

/* A signed batch of nops lww ops by id at feed position first_seq; decoded into b (which
 * borrows enc). */
static void make_batch(const fm_identity *id, const char *coll, uint64_t first_seq,
                       const uint8_t *prev, uint32_t nops, fm_buf *enc, fm_batch *b)
{
    fm_buf ops;
    fm_buf_init(&ops);
    for (uint32_t i = 0; i < nops; i++) {
        char rid[32], val[32];
        snprintf(rid, sizeof rid, "r%u", i);
        snprintf(val, sizeof val, "v%llu", (unsigned long long)(first_seq + i));
        op_lww(&ops, rid, "f", val);
    }
    fm_vv ctx;
    fm_vv_init(&ctx);
    fm_batch_head h = {.coll = (const uint8_t *)coll,
                       .coll_len = (uint32_t)strlen(coll),
                       .first_seq = first_seq,
                       .prev = prev,
                       .ctx = &ctx,
                       .hlc = (T0 + first_seq) << 16,
                       .nops = nops};
    fm_buf_reset(enc);
    CHECK_OK(fm_batch_encode(id, &h, ops.data, ops.len, enc));
    CHECK_OK(fm_batch_decode(enc->data, enc->len, b));
    fm_buf_free(&ops);
    fm_vv_free(&ctx);
}

static fm_identity *ident(uint8_t n)
{
    uint8_t seed[32] = {n, 0x57};
    fm_identity *id = NULL;
    CHECK_OK(fm_identity_from_seed(seed, &id));
    return id;
}

/* ---- schema ------------------------------------------------------------------------------- */

static void test_fresh_store_schema(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    fm_store *st;
    CHECK_OK(fm_store_open(db, &st));
    fm_buf v;
    fm_buf_init(&v);
    CHECK_OK(fm_store_meta_get(st, "app", &v));
    CHECK_EQ_INT(v.len, 9);
    CHECK_MEM(v.data, "fieldmesh", 9);
    CHECK_OK(fm_store_meta_set(st, "name", "n1", 2));
    fm_store_close(st);
    CHECK_EQ_INT(sql_int(db, "PRAGMA user_version"), FM_STORE_SCHEMA_VERSION);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'forks'"), 1);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = "
                             "'records_conflicts'"),
                 1);
    /* Reopening runs no migration again and keeps what was written. */
    CHECK_OK(fm_store_open(db, &st));
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "name", &v));
    CHECK_EQ_INT(v.len, 2);
    CHECK_MEM(v.data, "n1", 2);
    fm_store_close(st);
    CHECK_EQ_INT(sql_int(db, "PRAGMA user_version"), FM_STORE_SCHEMA_VERSION);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM meta WHERE key = 'app'"), 1);
    /* In memory: the same schema. */
    CHECK_OK(fm_store_open(NULL, &st));
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "app", &v));
    CHECK_EQ_INT(v.len, 9);
    fm_store_close(st);
    fm_buf_free(&v);
    tmp_teardown();
}

static void test_migrate_v1(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    CHECK_EQ_INT(sql_exec(db, V1_SQL), SQLITE_OK);
    CHECK_EQ_INT(sql_exec(db, "PRAGMA user_version = 1;"
                              "INSERT INTO meta(key, value) VALUES ('name', 'old-laptop');"
                              "INSERT INTO collections(id, name, state_xor, live, conflicts) "
                              "  VALUES (7, 'people', zeroblob(32), 2, 1);"
                              "INSERT INTO records(coll, id, state, conflicts) "
                              "  VALUES (7, x'7031', x'01', 0), (7, x'7032', x'02', 1);"),
                 SQLITE_OK);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'forks'"), 0);
    fm_store *st;
    CHECK_OK(fm_store_open(db, &st));
    fm_buf v;
    fm_buf_init(&v);
    CHECK_OK(fm_store_meta_get(st, "name", &v));
    CHECK_EQ_INT(v.len, 10);
    CHECK_MEM(v.data, "old-laptop", 10);
    fm_buf_free(&v);
    /* The migrated store is usable: forks can be written. */
    uint8_t author[FM_ID_BYTES] = {1};
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_put_fork(st, author, (const uint8_t *)"a", 1, (const uint8_t *)"b", 1));
    CHECK_OK(fm_store_commit(st));
    fm_store_close(st);
    CHECK_EQ_INT(sql_int(db, "PRAGMA user_version"), FM_STORE_SCHEMA_VERSION);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'forks'"), 1);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM forks"), 1);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = "
                             "'records_conflicts'"),
                 1);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM records WHERE coll = 7"), 2);
    CHECK_EQ_INT(sql_int(db, "SELECT live FROM collections WHERE name = 'people'"), 2);
    /* v4: feed heads come from the log, the feeds table is gone. */
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'feeds'"), 0);
    /* Migrated step by step, the schema is exactly that of a fresh store. */
    char fresh[512], migrated[4096], want[4096];
    path_of("fresh.db", fresh, sizeof fresh);
    CHECK_OK(fm_store_open(fresh, &st));
    fm_store_close(st);
    schema_of(db, migrated, sizeof migrated);
    schema_of(fresh, want, sizeof want);
    CHECK(strlen(want) > 0);
    CHECK_STR(migrated, want);
    tmp_teardown();
}

/* Writes records through a replica, strips the v2 parts so the file is what a v1 program would
 * have left, and reopens: same state hash and records after the migration. */
static void test_migrate_v1_replica_data(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    fm_test_env te;
    fm_test_env_init(&te, T0, 1);
    fm_identity *id = ident(1);
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = id, .env = &te.env};
    fm_replica *r;
    CHECK_OK(fm_replica_open(&cfg, &r));
    fm_txn *t;
    CHECK_OK(fm_txn_begin(r, "people", &t));
    CHECK_OK(fm_txn_set(t, "p1", "name", FM_KIND_LWW, fm_value_str("Ann")));
    CHECK_OK(fm_txn_incr(t, "p1", "visits", 3));
    CHECK_OK(fm_txn_set_add(t, "p2", "tags", fm_value_str("x")));
    CHECK_OK(fm_txn_commit(t));
    fm_status s0, s1;
    CHECK_OK(fm_replica_status(r, &s0));
    fm_replica_close(r);
    downgrade_to_v1(db);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'forks'"), 0);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM feeds"), 1);
    r = NULL;
    CHECK_OK(fm_replica_open(&cfg, &r));
    if (!r) {
        fm_identity_free(id);
        tmp_teardown();
        return;
    }
    CHECK_OK(fm_replica_status(r, &s1));
    CHECK_MEM(s1.state_hash, s0.state_hash, FM_HASH_BYTES);
    CHECK_EQ_INT(s1.ops, 3);
    CHECK_EQ_INT(s1.records, 2);
    fm_record *rec;
    CHECK_OK(fm_record_get(r, "people", "p1", &rec));
    char *j = rec ? fm_record_json(rec) : NULL;
    CHECK_STR(j, "{\"name\":\"Ann\",\"visits\":3}");
    free(j);
    fm_record_free(rec);
    fm_replica_close(r);
    CHECK_EQ_INT(sql_int(db, "PRAGMA user_version"), FM_STORE_SCHEMA_VERSION);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'forks'"), 1);
    fm_identity_free(id);
    tmp_teardown();
}

static void test_refuse_newer(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    /* A store a newer program wrote: ours in every way but the version (WAL mode, as we leave
     * files). */
    fm_store *st;
    CHECK_OK(fm_store_open(db, &st));
    CHECK_OK(fm_store_meta_set(st, "name", "n", 1));
    fm_store_close(st);
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", FM_STORE_SCHEMA_VERSION + 1);
    CHECK_EQ_INT(sql_exec(db, pragma), SQLITE_OK);
    CHECK_EQ_INT(sql_int(db, "PRAGMA user_version"), FM_STORE_SCHEMA_VERSION + 1);
    check_refused_untouched(db);
    /* Through the public API too. */
    fm_identity *id = ident(2);
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = id};
    fm_replica *r = NULL;
    CHECK_RC(fm_replica_open(&cfg, &r), FM_ESCHEMA);
    CHECK(r == NULL);
    fm_identity_free(id);
    check_refused_untouched(db);
    /* The same in rollback-journal mode. */
    CHECK_EQ_INT(sql_exec(db, "PRAGMA journal_mode = DELETE"), SQLITE_OK);
    check_refused_untouched(db);
    /* Far newer, and a negative version. */
    CHECK_EQ_INT(sql_exec(db, "PRAGMA user_version = 1000"), SQLITE_OK);
    check_refused_untouched(db);
    CHECK_EQ_INT(sql_exec(db, "PRAGMA user_version = -1"), SQLITE_OK);
    check_refused_untouched(db);
    tmp_teardown();
}

static void test_refuse_foreign(void)
{
    tmp_setup();
    char db[512];
    /* Someone else's database: other tables, no meta, version 0. */
    path_of("notes.db", db, sizeof db);
    CHECK_EQ_INT(sql_exec(db, "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);"
                              "INSERT INTO notes(body) VALUES ('keep me');"),
                 SQLITE_OK);
    check_refused_untouched(db);
    /* ... with a user_version that looks like ours. */
    CHECK_EQ_INT(sql_exec(db, "PRAGMA user_version = 1"), SQLITE_OK);
    check_refused_untouched(db);
    CHECK_EQ_INT(sql_exec(db, "PRAGMA user_version = 2"), SQLITE_OK);
    check_refused_untouched(db);
    /* A meta table of its own that does not say fieldmesh. */
    CHECK_EQ_INT(sql_exec(db, "CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB);"
                              "INSERT INTO meta VALUES ('app', 'other');"),
                 SQLITE_OK);
    check_refused_untouched(db);
    CHECK_EQ_INT(sql_exec(db, "UPDATE meta SET value = NULL WHERE key = 'app'"), SQLITE_OK);
    check_refused_untouched(db);
    CHECK_EQ_INT(sql_exec(db, "DELETE FROM meta"), SQLITE_OK);
    check_refused_untouched(db);
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM notes"), 1);
    tmp_teardown();
}

static void test_refuse_not_sqlite(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    uint64_t seed = 42;
    uint8_t junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(fm_test_rand64(&seed) >> 32);
    write_all(db, junk, sizeof junk);
    check_refused_untouched(db);
    /* Short text. */
    write_all(db, "hello, world\n", 13);
    check_refused_untouched(db);
    /* A sqlite header followed by garbage. */
    memcpy(junk, "SQLite format 3", 16);
    write_all(db, junk, sizeof junk);
    check_refused_untouched(db);
    tmp_teardown();
}

/* ---- metadata ------------------------------------------------------------------------------ */

static void test_meta(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_buf v;
    fm_buf_init(&v);
    CHECK_RC(fm_store_meta_get(st, "missing", &v), FM_ENOTFOUND);
    CHECK_EQ_INT(v.len, 0);
    CHECK_OK(fm_store_meta_set(st, "k", "one", 3));
    CHECK_OK(fm_store_meta_get(st, "k", &v));
    CHECK_EQ_INT(v.len, 3);
    CHECK_MEM(v.data, "one", 3);
    CHECK_OK(fm_store_meta_set(st, "k", "second", 6)); /* overwrite */
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "k", &v));
    CHECK_EQ_INT(v.len, 6);
    CHECK_MEM(v.data, "second", 6);
    const uint8_t bin[5] = {0, 0xff, 0, 1, 0};
    CHECK_OK(fm_store_meta_set(st, "bin", bin, sizeof bin));
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "bin", &v));
    CHECK_EQ_INT(v.len, 5);
    CHECK_MEM(v.data, bin, 5);
    CHECK_OK(fm_store_meta_set(st, "empty", "", 0));
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "empty", &v));
    CHECK_EQ_INT(v.len, 0);
    /* Inside a rolled-back transaction: gone. */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_meta_set(st, "tx", "x", 1));
    fm_store_rollback(st);
    CHECK_RC(fm_store_meta_get(st, "tx", &v), FM_ENOTFOUND);
    /* The app marker is there and the key space is shared with it. */
    fm_buf_reset(&v);
    CHECK_OK(fm_store_meta_get(st, "app", &v));
    CHECK_EQ_INT(v.len, 9);
    fm_buf_free(&v);
    fm_store_close(st);
}

/* ---- batches ------------------------------------------------------------------------------ */

static void test_batch_at(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_identity *a = ident(10), *b = ident(11);
    uint8_t apk[FM_ID_BYTES], bpk[FM_ID_BYTES];
    fm_identity_public(a, apk);
    fm_identity_public(b, bpk);
    fm_coll c = {.name = "people", .name_len = 6};
    fm_coll other = {.name = "other", .name_len = 5};
    fm_buf e1, e2, e3, got;
    fm_buf_init(&e1), fm_buf_init(&e2), fm_buf_init(&e3), fm_buf_init(&got);
    fm_batch b1, b2, b3;
    fm_batch_init(&b1), fm_batch_init(&b2), fm_batch_init(&b3);
    make_batch(a, "people", 1, NULL, 3, &e1, &b1);    /* a: seq 1..3 */
    make_batch(a, "people", 4, b1.hash, 1, &e2, &b2); /* a: seq 4 */
    make_batch(b, "people", 1, NULL, 2, &e3, &b3);    /* b: seq 1..2 */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    CHECK_OK(fm_store_coll_ensure(st, &other));
    CHECK(c.store_id != 0 && other.store_id != 0 && c.store_id != other.store_id);
    CHECK_OK(fm_store_put_batch(st, &c, &b1, e1.data, e1.len));
    CHECK_OK(fm_store_put_batch(st, &c, &b2, e2.data, e2.len));
    CHECK_OK(fm_store_put_batch(st, &c, &b3, e3.data, e3.len));
    CHECK_OK(fm_store_commit(st));
    for (uint64_t seq = 1; seq <= 3; seq++) {
        fm_buf_reset(&got);
        CHECK_OK(fm_store_batch_at(st, &c, apk, seq, &got));
        CHECK_EQ_INT(got.len, e1.len);
        if (got.len == e1.len)
            CHECK_MEM(got.data, e1.data, e1.len);
    }
    fm_buf_reset(&got);
    CHECK_OK(fm_store_batch_at(st, &c, apk, 4, &got));
    CHECK_EQ_INT(got.len, e2.len);
    fm_buf_reset(&got);
    CHECK_OK(fm_store_batch_at(st, &c, bpk, 2, &got));
    CHECK_EQ_INT(got.len, e3.len);
    CHECK_RC(fm_store_batch_at(st, &c, apk, 5, &got), FM_ENOTFOUND);
    CHECK_RC(fm_store_batch_at(st, &c, apk, 0, &got), FM_ENOTFOUND);
    CHECK_RC(fm_store_batch_at(st, &c, bpk, 3, &got), FM_ENOTFOUND);
    CHECK_RC(fm_store_batch_at(st, &other, apk, 1, &got), FM_ENOTFOUND);
    uint8_t stranger[FM_ID_BYTES] = {9}; /* no batch, so no author id */
    CHECK_RC(fm_store_batch_at(st, &c, stranger, 1, &got), FM_ENOTFOUND);
    /* A second batch ending at an occupied feed position is refused by the store: in a
     * transaction its row is held back, so the refusal comes with the commit. */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_put_batch(st, &c, &b2, e2.data, e2.len));
    CHECK_RC(fm_store_commit(st), FM_ESTORE);
    fm_store_rollback(st);
    CHECK_EQ_INT(fm_store_batch_count(st), 3);
    CHECK_RC(fm_store_put_batch(st, &c, &b2, e2.data, e2.len), FM_ESTORE); /* no transaction */
    CHECK_EQ_INT(fm_store_batch_count(st), 3);
    fm_batch_free(&b1), fm_batch_free(&b2), fm_batch_free(&b3);
    fm_buf_free(&e1), fm_buf_free(&e2), fm_buf_free(&e3), fm_buf_free(&got);
    fm_identity_free(a);
    fm_identity_free(b);
    fm_store_close(st);
}

typedef struct seen {
    char items[32][80];
    int n, stop_after;
} seen;

static int on_batch(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                    const uint8_t *data, size_t len)
{
    seen *s = arg;
    (void)data;
    snprintf(s->items[s->n++], sizeof s->items[0], "%02x:%llu:%d", author[0],
             (unsigned long long)last_seq, len > 0);
    return s->stop_after && s->n == s->stop_after ? 99 : 0;
}

static void test_each_batch_order_and_load_state(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_identity *a = ident(20), *b = ident(21);
    uint8_t apk[FM_ID_BYTES], bpk[FM_ID_BYTES];
    fm_identity_public(a, apk);
    fm_identity_public(b, bpk);
    fm_coll c = {.name = "c", .name_len = 1}, o = {.name = "o", .name_len = 1};
    fm_buf e[5];
    fm_batch bt[5];
    for (int i = 0; i < 5; i++)
        fm_buf_init(&e[i]), fm_batch_init(&bt[i]);
    /* Log order (insertion) interleaves authors; iteration must follow it, not author or seq. */
    make_batch(b, "c", 1, NULL, 1, &e[0], &bt[0]);
    make_batch(a, "c", 1, NULL, 2, &e[1], &bt[1]);
    make_batch(b, "c", 2, bt[0].hash, 1, &e[2], &bt[2]);
    make_batch(a, "c", 3, bt[1].hash, 1, &e[3], &bt[3]);
    make_batch(b, "o", 1, NULL, 4, &e[4], &bt[4]); /* another collection's feed: its own head */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    CHECK_OK(fm_store_coll_ensure(st, &o));
    for (int i = 0; i < 4; i++)
        CHECK_OK(fm_store_put_batch(st, &c, &bt[i], e[i].data, e[i].len));
    CHECK_OK(fm_store_put_batch(st, &o, &bt[4], e[4].data, e[4].len));
    memset(c.xor_hash, 0xab, sizeof c.xor_hash);
    c.live = 5;
    c.conflicts = 1;
    CHECK_OK(fm_store_coll_save(st, &c));
    CHECK_OK(fm_store_commit(st));
    seen s = {0};
    CHECK_OK(fm_store_each_batch(st, &c, on_batch, &s));
    CHECK_EQ_INT(s.n, 4);
    char want[4][80];
    snprintf(want[0], 80, "%02x:1:1", bpk[0]);
    snprintf(want[1], 80, "%02x:2:1", apk[0]);
    snprintf(want[2], 80, "%02x:2:1", bpk[0]);
    snprintf(want[3], 80, "%02x:3:1", apk[0]);
    for (int i = 0; i < 4 && i < s.n; i++)
        CHECK_STR(s.items[i], want[i]);
    seen stop = {.stop_after = 2};
    CHECK_RC(fm_store_each_batch(st, &c, on_batch, &stop), 99);
    CHECK_EQ_INT(stop.n, 2);
    CHECK_EQ_INT(fm_store_batch_count(st), 5);
    /* The aggregates come back into a fresh state, and per feed its last batch in the log as
     * its head. */
    fm_state fs;
    fm_state_init(&fs, NULL);
    CHECK_OK(fm_store_load_state(st, &fs));
    fm_coll *lc = fm_state_coll(&fs, (const uint8_t *)"c", 1);
    CHECK(lc != NULL);
    if (lc) {
        CHECK_EQ_INT(lc->store_id, c.store_id);
        CHECK_EQ_INT(lc->live, 5);
        CHECK_EQ_INT(lc->conflicts, 1);
        CHECK_MEM(lc->xor_hash, c.xor_hash, FM_HASH_BYTES);
        CHECK_EQ_INT(fm_vv_get(&lc->vv, apk), 3);
        CHECK_EQ_INT(fm_vv_get(&lc->vv, bpk), 2);
        CHECK_EQ_INT(lc->vv.n, 2);
        const fm_feed *f = fm_coll_feed(&fs, lc, apk);
        CHECK(f && f->seq == 3);
        if (f)
            CHECK_MEM(f->head, bt[3].hash, FM_HASH_BYTES);
        f = fm_coll_feed(&fs, lc, bpk);
        CHECK(f && f->seq == 2);
        if (f)
            CHECK_MEM(f->head, bt[2].hash, FM_HASH_BYTES);
    }
    fm_coll *lo = fm_state_coll(&fs, (const uint8_t *)"o", 1);
    CHECK(lo != NULL);
    if (lo) {
        CHECK_EQ_INT(lo->vv.n, 1);
        CHECK_EQ_INT(fm_vv_get(&lo->vv, bpk), 4);
        const fm_feed *f = fm_coll_feed(&fs, lo, bpk);
        CHECK(f && f->seq == 4);
        if (f)
            CHECK_MEM(f->head, bt[4].hash, FM_HASH_BYTES);
    }
    CHECK_EQ_INT(fs.ops, 9);
    fm_state_free(&fs);
    for (int i = 0; i < 5; i++)
        fm_buf_free(&e[i]), fm_batch_free(&bt[i]);
    fm_identity_free(a);
    fm_identity_free(b);
    fm_store_close(st);
}

/* Log rows put in a transaction are held back and written 16 to a statement. Whatever reads
 * the log sees every row put before, in put order (a row too big to hold goes at once, after
 * those held); a rollback drops the held rows with the rest; a refused row among held ones
 * fails the commit; outside a transaction a row is written at once. */
enum { HELD_N = 40, HELD_BIG = 20 };

static void test_log_rows_held_back(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_identity *a = ident(30);
    uint8_t apk[FM_ID_BYTES];
    fm_identity_public(a, apk);
    fm_coll c = {.name = "held", .name_len = 4};
    enum { NB = HELD_N + 15 }; /* and 15 more for the refused row's transaction */
    fm_buf e[NB], got;
    fm_batch bt[NB];
    fm_buf_init(&got);
    for (int i = 0; i < NB; i++) {
        fm_buf_init(&e[i]), fm_batch_init(&bt[i]);
        make_batch(a, "held", i ? fm_batch_last_seq(&bt[i - 1]) + 1 : 1, i ? bt[i - 1].hash : NULL,
                   i == HELD_BIG ? 80 : 1, &e[i], &bt[i]);
    }
    CHECK(e[HELD_BIG].len > 1024); /* too big to hold */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    for (int i = 0; i < HELD_N; i++) {
        CHECK_OK(fm_store_put_batch(st, &c, &bt[i], e[i].data, e[i].len));
        if (i == 2 || i == 17 || i == HELD_BIG || i == 35) { /* a read sees every row put */
            fm_buf_reset(&got);
            CHECK_OK(fm_store_batch_at(st, &c, apk, fm_batch_last_seq(&bt[i]), &got));
            CHECK(got.len == e[i].len && memcmp(got.data, e[i].data, got.len) == 0);
            CHECK_EQ_INT(fm_store_max_batch_id(st), i + 1);
        }
    }
    seen s = {.stop_after = 32}; /* all it holds: in put order */
    CHECK_RC(fm_store_each_feed_batch(st, &c, apk, 0, on_batch, &s), 99);
    CHECK_EQ_INT(s.n, 32);
    for (int i = 0; i < s.n; i++) {
        char want[80];
        snprintf(want, sizeof want, "%02x:%llu:1", apk[0],
                 (unsigned long long)fm_batch_last_seq(&bt[i]));
        CHECK_STR(s.items[i], want);
    }
    CHECK_OK(fm_store_commit(st));
    CHECK_EQ_INT(fm_store_batch_count(st), HELD_N);
    /* Held rows go with a rollback: the next commit does not write them. */
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_put_batch(st, &c, &bt[HELD_N], e[HELD_N].data, e[HELD_N].len));
    fm_store_rollback(st);
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_commit(st));
    CHECK_EQ_INT(fm_store_batch_count(st), HELD_N);
    /* One refused row (an occupied position) among 16 held: the put that writes them fails. */
    CHECK_OK(fm_store_begin(st));
    for (int i = 0; i < 16; i++) {
        int k = i < 7 ? HELD_N + i : i == 7 ? 3 : HELD_N + i - 1;
        CHECK_RC(fm_store_put_batch(st, &c, &bt[k], e[k].data, e[k].len), i < 15 ? 0 : FM_ESTORE);
    }
    /* The error stays until the rollback: nothing reads or commits a log missing rows. */
    CHECK_RC(fm_store_batch_count(st), FM_ESTORE);
    CHECK_RC(fm_store_put_batch(st, &c, &bt[NB - 1], e[NB - 1].data, e[NB - 1].len), FM_ESTORE);
    CHECK_RC(fm_store_commit(st), FM_ESTORE);
    fm_store_rollback(st);
    CHECK_EQ_INT(fm_store_batch_count(st), HELD_N);
    /* Outside a transaction a row is written at once. */
    CHECK_OK(fm_store_put_batch(st, &c, &bt[HELD_N], e[HELD_N].data, e[HELD_N].len));
    CHECK_EQ_INT(fm_store_batch_count(st), HELD_N + 1);
    for (int i = 0; i < NB; i++)
        fm_buf_free(&e[i]), fm_batch_free(&bt[i]);
    fm_buf_free(&got);
    fm_identity_free(a);
    fm_store_close(st);
}

/* Feed heads are read from the log: a log row whose author or hash has the wrong length, or
 * whose seq is not positive, makes loading fail with FM_ESTORE rather than yield a bad head. */
static void test_load_state_bad_log_rows(void)
{
    static const struct {
        const char *sql;
        bool at_open; /* refused by fm_store_open, not only by the load */
    } corrupt[] = {
        {"UPDATE batches SET author = 2", false}, /* an author id the table lacks */
        {"UPDATE batches SET author = x'0102'", false},
        {"UPDATE batches SET last_seq = 0, first_seq = 0", false},
        {"UPDATE authors SET key = x'0102'", true},
        {"UPDATE authors SET id = 3", true}, /* ids are 1..n */
    };
    for (size_t k = 0; k < FM_ARRAY_LEN(corrupt); k++) {
        tmp_setup();
        char db[512];
        path_of("store.db", db, sizeof db);
        fm_store *st;
        CHECK_OK(fm_store_open(db, &st));
        fm_identity *a = ident(40);
        fm_coll c = {.name = "c", .name_len = 1};
        fm_buf e;
        fm_batch bt;
        fm_buf_init(&e);
        fm_batch_init(&bt);
        make_batch(a, "c", 1, NULL, 1, &e, &bt);
        CHECK_OK(fm_store_begin(st));
        CHECK_OK(fm_store_coll_ensure(st, &c));
        CHECK_OK(fm_store_put_batch(st, &c, &bt, e.data, e.len));
        CHECK_OK(fm_store_commit(st));
        fm_store_close(st);
        CHECK_EQ_INT(sql_exec(db, corrupt[k].sql), SQLITE_OK);
        if (corrupt[k].at_open) {
            st = NULL;
            CHECK_RC(fm_store_open(db, &st), FM_ESTORE);
            CHECK(st == NULL);
        } else {
            CHECK_OK(fm_store_open(db, &st));
            fm_state fs;
            fm_state_init(&fs, NULL);
            CHECK_RC(fm_store_load_state(st, &fs), FM_ESTORE);
            fm_state_free(&fs);
            fm_store_close(st);
        }
        CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM batches"), 1); /* left as it was */
        fm_buf_free(&e);
        fm_batch_free(&bt);
        fm_identity_free(a);
        tmp_teardown();
    }
}

typedef struct seen_authors {
    uint8_t author[4][FM_ID_BYTES];
    int n;
} seen_authors;

static int see_author(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                      const uint8_t *data, size_t len)
{
    (void)last_seq, (void)data, (void)len;
    seen_authors *x = arg;
    if (x->n < 4)
        memcpy(x->author[x->n], author, FM_ID_BYTES);
    x->n++;
    return 0;
}

/* A log row names its author by an id. One given in a transaction that rolls back is given to
 * the next new author: the rows and the handle's map agree, and so does a reopened store. */
static void test_author_ids_rollback(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    fm_store *st;
    CHECK_OK(fm_store_open(db, &st));
    fm_identity *id[3] = {ident(50), ident(51), ident(52)};
    uint8_t pk[3][FM_ID_BYTES];
    fm_buf e[3], got;
    fm_batch b[3];
    fm_buf_init(&got);
    for (int i = 0; i < 3; i++) {
        fm_identity_public(id[i], pk[i]);
        fm_buf_init(&e[i]);
        fm_batch_init(&b[i]);
        make_batch(id[i], "c", 1, NULL, 1, &e[i], &b[i]);
    }
    fm_coll c = {.name = "c", .name_len = 1};
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    CHECK_OK(fm_store_put_batch(st, &c, &b[0], e[0].data, e[0].len));
    CHECK_OK(fm_store_commit(st));
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_put_batch(st, &c, &b[1], e[1].data, e[1].len));
    fm_store_rollback(st);
    CHECK_RC(fm_store_batch_at(st, &c, pk[1], 1, &got), FM_ENOTFOUND);
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_put_batch(st, &c, &b[2], e[2].data, e[2].len));
    CHECK_OK(fm_store_commit(st));
    for (int reopen = 0; reopen < 2; reopen++) {
        seen_authors x = {.n = 0};
        CHECK_OK(fm_store_each_batch(st, &c, see_author, &x));
        CHECK_EQ_INT(x.n, 2);
        CHECK_MEM(x.author[0], pk[0], FM_ID_BYTES);
        CHECK_MEM(x.author[1], pk[2], FM_ID_BYTES);
        fm_buf_reset(&got);
        CHECK_OK(fm_store_batch_at(st, &c, pk[2], 1, &got));
        CHECK_EQ_INT(got.len, e[2].len);
        CHECK_RC(fm_store_batch_at(st, &c, pk[1], 1, &got), FM_ENOTFOUND);
        fm_store_close(st);
        CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM authors"), 2);
        CHECK_EQ_INT(sql_int(db, "SELECT max(id) FROM authors"), 2);
        CHECK_OK(fm_store_open(db, &st));
    }
    /* The heads load with the hashes of their bytes. */
    fm_state fs;
    fm_state_init(&fs, NULL);
    CHECK_OK(fm_store_load_state(st, &fs));
    fm_coll *lc = fm_state_coll(&fs, (const uint8_t *)"c", 1);
    CHECK(lc != NULL);
    for (int i = 0; lc && i < 3; i += 2) {
        const fm_feed *f = fm_coll_feed(&fs, lc, pk[i]);
        CHECK(f != NULL && f->seq == 1);
        if (f)
            CHECK_MEM(f->head, b[i].hash, FM_HASH_BYTES);
    }
    CHECK(!lc || fm_coll_feed(&fs, lc, pk[1]) == NULL);
    fm_state_free(&fs);
    fm_store_close(st);
    for (int i = 0; i < 3; i++) {
        fm_buf_free(&e[i]);
        fm_batch_free(&b[i]);
        fm_identity_free(id[i]);
    }
    fm_buf_free(&got);
    tmp_teardown();
}

/* Two handles on one file, each writing batches of authors the other has not seen: each gives
 * the next id in its write transaction and reads the other's ids when it meets them. */
static void test_author_ids_two_handles(void)
{
    tmp_setup();
    char db[512];
    path_of("store.db", db, sizeof db);
    fm_store *h[2];
    CHECK_OK(fm_store_open(db, &h[0]));
    CHECK_OK(fm_store_open(db, &h[1]));
    fm_identity *id[2] = {ident(60), ident(61)};
    uint8_t pk[2][FM_ID_BYTES];
    fm_buf e[2], got;
    fm_batch b[2];
    fm_buf_init(&got);
    fm_coll c[2] = {{.name = "c", .name_len = 1}, {.name = "c", .name_len = 1}};
    CHECK_OK(fm_store_begin(h[0]));
    CHECK_OK(fm_store_coll_ensure(h[0], &c[0]));
    CHECK_OK(fm_store_commit(h[0]));
    c[1].store_id = c[0].store_id;
    for (int i = 0; i < 2; i++) {
        fm_identity_public(id[i], pk[i]);
        fm_buf_init(&e[i]);
        fm_batch_init(&b[i]);
        make_batch(id[i], "c", 1, NULL, 1, &e[i], &b[i]);
        CHECK_OK(fm_store_begin(h[i]));
        CHECK_OK(fm_store_put_batch(h[i], &c[i], &b[i], e[i].data, e[i].len));
        CHECK_OK(fm_store_commit(h[i]));
    }
    for (int i = 0; i < 2; i++) {
        seen_authors x = {.n = 0};
        CHECK_OK(fm_store_each_batch(h[i], &c[i], see_author, &x));
        CHECK_EQ_INT(x.n, 2);
        CHECK_MEM(x.author[0], pk[0], FM_ID_BYTES);
        CHECK_MEM(x.author[1], pk[1], FM_ID_BYTES);
        for (int j = 0; j < 2; j++) {
            fm_buf_reset(&got);
            CHECK_OK(fm_store_batch_at(h[i], &c[i], pk[j], 1, &got));
            CHECK_EQ_INT(got.len, e[j].len);
        }
    }
    /* Many authors more from the second handle: the first reads them while loading heads and
     * while walking the log (its key table grows under both). */
    enum { MORE = 40 };
    for (int k = 0; k < MORE; k++) {
        fm_identity *x = ident((uint8_t)(100 + k));
        fm_buf ex;
        fm_batch bx;
        fm_buf_init(&ex);
        fm_batch_init(&bx);
        make_batch(x, "c", 1, NULL, 1, &ex, &bx);
        CHECK_OK(fm_store_begin(h[1]));
        CHECK_OK(fm_store_put_batch(h[1], &c[1], &bx, ex.data, ex.len));
        CHECK_OK(fm_store_commit(h[1]));
        fm_buf_free(&ex);
        fm_batch_free(&bx);
        fm_identity_free(x);
    }
    fm_state fs;
    fm_state_init(&fs, NULL);
    CHECK_OK(fm_store_load_state(h[0], &fs));
    fm_coll *lc = fm_state_coll(&fs, (const uint8_t *)"c", 1);
    CHECK(lc != NULL && lc->nfeeds == 2 + MORE);
    for (int i = 0; lc && i < 2; i++) {
        const fm_feed *f = fm_coll_feed(&fs, lc, pk[i]);
        CHECK(f != NULL && f->seq == 1);
        if (f)
            CHECK_MEM(f->head, b[i].hash, FM_HASH_BYTES);
    }
    fm_state_free(&fs);
    seen_authors all = {.n = 0};
    CHECK_OK(fm_store_each_batch(h[0], &c[0], see_author, &all));
    CHECK_EQ_INT(all.n, 2 + MORE);
    for (int i = 0; i < 2; i++) {
        fm_store_close(h[i]);
        fm_buf_free(&e[i]);
        fm_batch_free(&b[i]);
        fm_identity_free(id[i]);
    }
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM authors"), 2 + MORE);
    fm_buf_free(&got);
    tmp_teardown();
}

/* Log positions by feed, and scans that start at one: only rows from there on are read, in log
 * order, rows of other collections skipped. */
static void test_batches_from(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_identity *a = ident(30), *b = ident(31);
    uint8_t apk[FM_ID_BYTES], bpk[FM_ID_BYTES];
    fm_identity_public(a, apk);
    fm_identity_public(b, bpk);
    fm_coll c = {.name = "c", .name_len = 1}, o = {.name = "o", .name_len = 1};
    enum { N = 6 };
    fm_buf e[N];
    fm_batch bt[N];
    for (int i = 0; i < N; i++)
        fm_buf_init(&e[i]), fm_batch_init(&bt[i]);
    /* Rowids 1..6: a1(c) o:b1(o) b1(c) a2(c) o:b2(o) b2(c). */
    make_batch(a, "c", 1, NULL, 1, &e[0], &bt[0]);
    make_batch(b, "o", 1, NULL, 1, &e[1], &bt[1]);
    make_batch(b, "c", 1, NULL, 2, &e[2], &bt[2]); /* seqs 1-2 */
    make_batch(a, "c", 2, bt[0].hash, 1, &e[3], &bt[3]);
    make_batch(b, "o", 2, bt[1].hash, 1, &e[4], &bt[4]);
    make_batch(b, "c", 3, bt[2].hash, 1, &e[5], &bt[5]);
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    CHECK_OK(fm_store_coll_ensure(st, &o));
    for (int i = 0; i < N; i++)
        CHECK_OK(fm_store_put_batch(st, i == 1 || i == 4 ? &o : &c, &bt[i], e[i].data, e[i].len));
    CHECK_OK(fm_store_commit(st));
    int64_t id = -1;
    uint64_t last = 0;
    fm_buf fd;
    fm_buf_init(&fd);
    CHECK_OK(fm_store_feed_next(st, &c, apk, 0, &id, &last, &fd));
    CHECK_EQ_INT(id, 1);
    CHECK(fd.len == e[0].len && memcmp(fd.data, e[0].data, fd.len) == 0);
    CHECK_OK(fm_store_feed_next(st, &c, apk, 1, &id, &last, &fd));
    CHECK_EQ_INT(id, 4);
    CHECK_RC(fm_store_feed_next(st, &c, apk, 2, &id, &last, &fd), FM_ENOTFOUND);
    /* b's first batch holds seqs 1-2: beyond 1 is still that batch. */
    CHECK_OK(fm_store_feed_next(st, &c, bpk, 1, &id, &last, &fd));
    CHECK_EQ_INT(id, 3);
    CHECK_EQ_INT(last, 2);
    CHECK_OK(fm_store_feed_next(st, &c, bpk, 2, &id, &last, &fd));
    CHECK_EQ_INT(id, 6);
    CHECK_OK(fm_store_feed_next(st, &o, bpk, 1, &id, &last, &fd));
    CHECK_EQ_INT(id, 5);
    fm_buf_free(&fd);

    uint64_t r0 = fm_store_batch_rows_read(st);
    seen s = {0};
    CHECK_OK(fm_store_each_batch_from(st, &c, 4, on_batch, &s));
    CHECK_EQ_INT(s.n, 2); /* a2, b2; o's row 5 read but not handed out */
    char want[2][80];
    snprintf(want[0], 80, "%02x:2:1", apk[0]);
    snprintf(want[1], 80, "%02x:3:1", bpk[0]);
    for (int i = 0; i < 2 && i < s.n; i++)
        CHECK_STR(s.items[i], want[i]);
    CHECK_EQ_INT(fm_store_batch_rows_read(st) - r0, 3); /* rows 4, 5, 6 only */
    r0 = fm_store_batch_rows_read(st);
    seen none = {0};
    CHECK_OK(fm_store_each_batch_from(st, &c, 7, on_batch, &none));
    CHECK_EQ_INT(none.n, 0);
    CHECK_EQ_INT(fm_store_batch_rows_read(st) - r0, 0);
    seen whole = {0};
    CHECK_OK(fm_store_each_batch(st, &o, on_batch, &whole));
    CHECK_EQ_INT(whole.n, 2);
    seen stop = {.stop_after = 1};
    CHECK_RC(fm_store_each_batch_from(st, &c, 1, on_batch, &stop), 99);
    CHECK_EQ_INT(stop.n, 1);
    for (int i = 0; i < N; i++)
        fm_buf_free(&e[i]), fm_batch_free(&bt[i]);
    fm_identity_free(a);
    fm_identity_free(b);
    fm_store_close(st);
}

/* A re-entered scan (fn scanning again) works on its own statement. */
typedef struct nest_ctx {
    fm_store *st;
    fm_coll *c;
    int outer, inner;
} nest_ctx;

static int nest_inner(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                      const uint8_t *data, size_t len)
{
    ((nest_ctx *)arg)->inner++;
    return 0;
}

static int nest_outer(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                      const uint8_t *data, size_t len)
{
    nest_ctx *x = arg;
    x->outer++;
    return fm_store_each_batch_from(x->st, x->c, 1, nest_inner, x);
}

static void test_batches_from_reentrant(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    fm_identity *a = ident(32);
    fm_coll c = {.name = "c", .name_len = 1};
    fm_buf e[3];
    fm_batch bt[3];
    for (int i = 0; i < 3; i++)
        fm_buf_init(&e[i]), fm_batch_init(&bt[i]);
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &c));
    for (int i = 0; i < 3; i++) {
        make_batch(a, "c", (uint64_t)i + 1, i ? bt[i - 1].hash : NULL, 1, &e[i], &bt[i]);
        CHECK_OK(fm_store_put_batch(st, &c, &bt[i], e[i].data, e[i].len));
    }
    CHECK_OK(fm_store_commit(st));
    nest_ctx x = {st, &c, 0, 0};
    CHECK_OK(fm_store_each_batch_from(st, &c, 1, nest_outer, &x));
    CHECK_EQ_INT(x.outer, 3);
    CHECK_EQ_INT(x.inner, 9);
    for (int i = 0; i < 3; i++)
        fm_buf_free(&e[i]), fm_batch_free(&bt[i]);
    fm_identity_free(a);
    fm_store_close(st);
}

/* Installing a member record reports whether it was new. */
static void test_put_member_new(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    uint8_t dev[FM_ID_BYTES] = {1};
    CHECK_OK(fm_store_begin(st));
    CHECK_EQ_INT(fm_store_put_member(st, FM_MEMBER_CERT, dev, (const uint8_t *)"x", 1), 1);
    CHECK_EQ_INT(fm_store_put_member(st, FM_MEMBER_CERT, dev, (const uint8_t *)"x", 1), 0);
    CHECK_EQ_INT(fm_store_put_member(st, FM_MEMBER_REVOCATION, dev, (const uint8_t *)"x", 1), 1);
    CHECK_OK(fm_store_commit(st));
    fm_store_close(st);
}

/* "file:" paths are sqlite URIs: a file URI is an ordinary WAL store; a memdb URI lives in
 * memory, shared by the connections of the process, while any of them is open. */
static void test_uri_paths(void)
{
    tmp_setup();
    char db[512], uri[600];
    path_of("u.db", db, sizeof db);
    snprintf(uri, sizeof uri, "file:%s?mode=rwc", db);
    fm_store *st;
    CHECK_OK(fm_store_open(uri, &st));
    CHECK_OK(fm_store_meta_set(st, "k", "v1", 2));
    fm_store_close(st);
    struct stat sb;
    CHECK_EQ_INT(stat(db, &sb), 0); /* the file itself, not one named "file:..." */
    CHECK_EQ_INT(sql_int(db, "SELECT count(*) FROM meta WHERE key = 'k'"), 1);
    sqlite3 *raw = NULL;
    sqlite3_stmt *q = NULL;
    CHECK_EQ_INT(sqlite3_open(db, &raw), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_step(q), SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    sqlite3_close(raw);

    char mem[128];
    snprintf(mem, sizeof mem, "file:/fm-test-store-%d?vfs=memdb", (int)getpid());
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI;
    CHECK_EQ_INT(sqlite3_open_v2(mem, &raw, flags, NULL), SQLITE_OK);
    CHECK_OK(fm_store_open(mem, &st));
    CHECK_OK(fm_store_meta_set(st, "k", "v2", 2));
    fm_store_close(st);
    CHECK_OK(fm_store_open(mem, &st)); /* held open by raw: still there */
    fm_buf v;
    fm_buf_init(&v);
    CHECK_OK(fm_store_meta_get(st, "k", &v));
    CHECK_EQ_INT(v.len, 2);
    CHECK_MEM(v.data, "v2", 2);
    fm_store_close(st);
    /* The raw connection sees the store's tables too. */
    CHECK_EQ_INT(sqlite3_prepare_v2(raw, "SELECT count(*) FROM meta", -1, &q, NULL), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_step(q), SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_column_int(q, 0), 2); /* app, k */
    sqlite3_finalize(q);
    sqlite3_close(raw);
    /* Every connection closed: gone. */
    CHECK_OK(fm_store_open(mem, &st));
    fm_buf_reset(&v);
    CHECK_RC(fm_store_meta_get(st, "k", &v), FM_ENOTFOUND);
    fm_store_close(st);
    fm_buf_free(&v);
    tmp_teardown();
}

/* ---- records ------------------------------------------------------------------------------ */

typedef struct rec_seen {
    int64_t coll[32];
    char id[32][64];
    char state[32][16];
    int n, stop_after;
} rec_seen;

static int on_rec(void *arg, int64_t coll_id, const uint8_t *id, size_t id_len, const uint8_t *enc,
                  size_t len)
{
    rec_seen *s = arg;
    s->coll[s->n] = coll_id;
    snprintf(s->id[s->n], sizeof s->id[0], "%.*s", (int)id_len, (const char *)id);
    snprintf(s->state[s->n], sizeof s->state[0], "%.*s", (int)len, (const char *)enc);
    s->n++;
    return s->stop_after && s->n == s->stop_after ? 7 : 0;
}

static void test_each_record_order(void)
{
    fm_store *st;
    CHECK_OK(fm_store_open(NULL, &st));
    /* Collections created in the opposite order of their names. */
    fm_coll zc = {.name = "zeta", .name_len = 4}, ac = {.name = "alpha", .name_len = 5};
    CHECK_OK(fm_store_begin(st));
    CHECK_OK(fm_store_coll_ensure(st, &zc));
    CHECK_OK(fm_store_coll_ensure(st, &ac));
    /* Ids inserted out of order; byte order puts "B" < "a" < "ab" < "b" < "z" < "é". */
    static const char *const ids[] = {"z", "\xc3\xa9", "ab", "B", "b", "a"};
    static const int conflicts[] = {0, 2, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++) {
        char state[8];
        snprintf(state, sizeof state, "s%d", i);
        CHECK_OK(fm_store_save_record(st, &zc, (const uint8_t *)ids[i], (uint32_t)strlen(ids[i]),
                                      (const uint8_t *)state, strlen(state),
                                      (uint32_t)conflicts[i]));
    }
    CHECK_OK(fm_store_save_record(st, &ac, (const uint8_t *)"m", 1, (const uint8_t *)"am", 2, 3));
    CHECK_OK(fm_store_save_record(st, &ac, (const uint8_t *)"k", 1, (const uint8_t *)"ak", 2, 0));
    /* Replacing a record keeps one row (the last state). */
    CHECK_OK(fm_store_save_record(st, &zc, (const uint8_t *)"b", 1, (const uint8_t *)"s4b", 3, 0));
    CHECK_OK(fm_store_commit(st));

    rec_seen s = {0};
    CHECK_OK(fm_store_each_record(st, &zc, false, on_rec, &s));
    static const char *const want_ids[] = {"B", "a", "ab", "b", "z", "\xc3\xa9"};
    static const char *const want_states[] = {"s3", "s5", "s2", "s4b", "s0", "s1"};
    CHECK_EQ_INT(s.n, 6);
    for (int i = 0; i < 6 && i < s.n; i++) {
        CHECK_STR(s.id[i], want_ids[i]);
        CHECK_STR(s.state[i], want_states[i]);
        CHECK_EQ_INT(s.coll[i], zc.store_id);
    }
    /* Conflicts only, one collection. */
    rec_seen cs = {0};
    CHECK_OK(fm_store_each_record(st, &zc, true, on_rec, &cs));
    CHECK_EQ_INT(cs.n, 3);
    static const char *const want_conf[] = {"a", "ab", "\xc3\xa9"};
    for (int i = 0; i < 3 && i < cs.n; i++)
        CHECK_STR(cs.id[i], want_conf[i]);
    /* Conflicts across collections: collection name order, then id. */
    rec_seen all = {0};
    CHECK_OK(fm_store_each_record(st, NULL, true, on_rec, &all));
    CHECK_EQ_INT(all.n, 4);
    if (all.n == 4) {
        CHECK_STR(all.id[0], "m");
        CHECK_EQ_INT(all.coll[0], ac.store_id);
        CHECK_STR(all.id[1], "a");
        CHECK_STR(all.id[2], "ab");
        CHECK_STR(all.id[3], "\xc3\xa9");
        CHECK_EQ_INT(all.coll[3], zc.store_id);
    }
    /* An early stop returns the callback's value. */
    rec_seen stop = {.stop_after = 2};
    CHECK_RC(fm_store_each_record(st, &zc, false, on_rec, &stop), 7);
    CHECK_EQ_INT(stop.n, 2);
    /* Load one back. */
    fm_buf out;
    fm_buf_init(&out);
    CHECK_OK(fm_store_load_record(st, &ac, (const uint8_t *)"k", 1, &out));
    CHECK_EQ_INT(out.len, 2);
    CHECK_MEM(out.data, "ak", 2);
    fm_buf_reset(&out);
    CHECK_OK(fm_store_load_record(st, &ac, (const uint8_t *)"nope", 4, &out));
    CHECK_EQ_INT(out.len, 0); /* absent: empty, not an error */
    fm_buf_free(&out);
    fm_store_close(st);
}

int main(void)
{
    RUN(test_fresh_store_schema);
    RUN(test_migrate_v1);
    RUN(test_migrate_v1_replica_data);
    RUN(test_refuse_newer);
    RUN(test_refuse_foreign);
    RUN(test_refuse_not_sqlite);
    RUN(test_meta);
    RUN(test_batch_at);
    RUN(test_each_batch_order_and_load_state);
    RUN(test_log_rows_held_back);
    RUN(test_load_state_bad_log_rows);
    RUN(test_author_ids_rollback);
    RUN(test_author_ids_two_handles);
    RUN(test_batches_from);
    RUN(test_batches_from_reentrant);
    RUN(test_put_member_new);
    RUN(test_uri_paths);
    RUN(test_each_record_order);
    TEST_MAIN_END();
}
