/*
 * store.c — sqlite3 persistence. Statements are prepared once per handle; every function either
 * completes or returns an error inside the caller's transaction, which the caller rolls back.
 */
#include "node/store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

/* Log rows put_batch holds back to write with one statement: a statement's own cost (running
 * and halting its program, opening and closing its cursors) was a fifth of a one-row insert's
 * (2.6 k of 12.4 k instructions, callgrind, an in-memory store), and 16 rows share it. A row
 * of more than LOG_ROW_MAX_BYTES goes at once, which bounds what is held. */
#define LOG_ROWS 16
#define LOG_ROW_MAX_BYTES 1024
#define LOG_ROW_SQL "(?, ?, ?, ?, ?)"
#define LOG_ROWS4_SQL LOG_ROW_SQL ", " LOG_ROW_SQL ", " LOG_ROW_SQL ", " LOG_ROW_SQL
#define LOG_ROWS_SQL LOG_ROWS4_SQL ", " LOG_ROWS4_SQL ", " LOG_ROWS4_SQL ", " LOG_ROWS4_SQL
_Static_assert(LOG_ROWS == 16, "LOG_ROWS_SQL has 16 rows");

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_META_GET,
    S_META_SET,
    S_COLL_INSERT,
    S_COLL_SAVE,
    S_BATCH_PUT,
    S_BATCH_PUT_MANY,
    S_BATCH_AT,
    S_REC_GET,
    S_REC_PUT,
    S_FORK_PUT,
    S_MEMBER_PUT,
    S_BATCHES_FROM,
    S_FEED_NEXT,
    S_FEED_FROM,
    S_MAX_BATCH_ID,
    S_AUTHOR_PUT,
    S_AUTHORS_FROM,
    S__COUNT
};

static const char *const SQL[S__COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [S_META_SET] = "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
    [S_COLL_INSERT] = "INSERT INTO collections(name, state_xor, live, conflicts) "
                      "VALUES (?1, zeroblob(32), 0, 0)",
    [S_COLL_SAVE] =
        "UPDATE collections SET state_xor = ?2, live = ?3, conflicts = ?4 WHERE id = ?1",
    [S_BATCH_PUT] = "INSERT INTO batches(coll, author, first_seq, last_seq, data) "
                    "VALUES (?1, ?2, ?3, ?4, ?5)",
    /* OR FAIL: a statement of many rows that may abort keeps a statement journal, which cost
     * more than the rows share; FAIL keeps the rows before a failing one, and the caller rolls
     * the whole transaction back. */
    [S_BATCH_PUT_MANY] = "INSERT OR FAIL INTO batches(coll, author, first_seq, last_seq, data) "
                         "VALUES " LOG_ROWS_SQL,
    [S_BATCH_AT] = "SELECT data FROM batches WHERE coll = ?1 AND author = ?2 "
                   "AND last_seq >= ?3 AND first_seq <= ?3",
    [S_REC_GET] = "SELECT state FROM records WHERE coll = ?1 AND id = ?2",
    [S_REC_PUT] =
        "INSERT OR REPLACE INTO records(coll, id, state, conflicts) VALUES (?1, ?2, ?3, ?4)",
    [S_FORK_PUT] = "INSERT INTO forks(author, first, second) VALUES (?1, ?2, ?3)",
    [S_MEMBER_PUT] = "INSERT OR IGNORE INTO members(device, kind, data) VALUES (?1, ?2, ?3)",
    /* A rowid range, the collection filtered in C: an index on coll would read the collection's
     * whole log and sort it; this way every row read is counted (fm_store_batch_rows_read). */
    [S_BATCHES_FROM] = "SELECT coll, author, last_seq, data FROM batches WHERE id >= ?1 "
                       "ORDER BY id",
    /* A feed's batches are inserted in seq order, so the first one beyond seq (an index lookup
     * on batches_feed) also has the feed's smallest log position beyond seq. */
    [S_FEED_NEXT] = "SELECT id, last_seq, data FROM batches WHERE coll = ?1 AND author = ?2 "
                    "AND last_seq > ?3 ORDER BY last_seq LIMIT 1",
    [S_FEED_FROM] = "SELECT last_seq, data FROM batches WHERE coll = ?1 AND author = ?2 "
                    "AND last_seq > ?3 ORDER BY last_seq",
    [S_MAX_BATCH_ID] = "SELECT max(id) FROM batches",
    [S_AUTHOR_PUT] = "INSERT INTO authors(id, key) VALUES (?1, ?2)",
    [S_AUTHORS_FROM] = "SELECT id, key FROM authors WHERE id > ?1 ORDER BY id",
};

/* The schema's statements, each as shipped: migrations and a fresh store share them, so a
 * migrated store's schema is a fresh one's, text and all (test_store compares them). */
#define SQL_META "CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;"
#define SQL_COLLECTIONS                                                                            \
    "CREATE TABLE collections(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"                  \
    "  state_xor BLOB NOT NULL, live INTEGER NOT NULL, conflicts INTEGER NOT NULL);"
#define SQL_RECORDS                                                                                \
    "CREATE TABLE records(coll INTEGER NOT NULL, id BLOB NOT NULL, state BLOB NOT NULL,"           \
    "  conflicts INTEGER NOT NULL, PRIMARY KEY(coll, id)) WITHOUT ROWID;"
#define SQL_APP "INSERT INTO meta(key, value) VALUES ('app', 'fieldmesh');"
#define SQL_FORKS                                                                                  \
    "CREATE TABLE forks(id INTEGER PRIMARY KEY, author BLOB NOT NULL, first BLOB NOT NULL,"        \
    "  second BLOB NOT NULL);"
#define SQL_RECORDS_CONFLICTS                                                                      \
    "CREATE INDEX records_conflicts ON records(coll, id) WHERE conflicts > 0;"
#define SQL_MEMBERS                                                                                \
    "CREATE TABLE members(device BLOB NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL,"        \
    "  PRIMARY KEY(device, kind, data)) WITHOUT ROWID;"
#define SQL_AUTHORS "CREATE TABLE authors(id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE);"
#define SQL_BATCHES                                                                                \
    "CREATE TABLE batches(id INTEGER PRIMARY KEY, coll INTEGER NOT NULL, author INTEGER NOT NULL," \
    "  first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, data BLOB NOT NULL);"
#define SQL_BATCHES_FEED "CREATE UNIQUE INDEX batches_feed ON batches(coll, author, last_seq);"

/* Migrations: MIGRATIONS[v] moves a store from schema v to v+1. Never edit a shipped step. */
static const char *const MIGRATIONS[FM_STORE_SCHEMA_VERSION] = {
    /* 0 -> 1: the log, materialized state and metadata. */
    (SQL_META SQL_COLLECTIONS
     "CREATE TABLE feeds(coll INTEGER NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL,"
     "  head BLOB NOT NULL, PRIMARY KEY(coll, author)) WITHOUT ROWID;"
     "CREATE TABLE batches(id INTEGER PRIMARY KEY, coll INTEGER NOT NULL, author BLOB NOT NULL,"
     "  first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, hash BLOB NOT NULL,"
     "  data BLOB NOT NULL);" SQL_BATCHES_FEED SQL_RECORDS SQL_APP),
    /* 1 -> 2: fork proofs, and a partial index so listing conflicts does not scan. */
    (SQL_FORKS SQL_RECORDS_CONFLICTS),
    /* 2 -> 3: mesh membership: every certificate and revocation installed (authority-signed,
     * so only the authority can add rows); the membership view picks the governing ones. */
    (SQL_MEMBERS),
    /* 3 -> 4: a feed's head is its last batch in the log (batches_feed finds it): a row per
     * feed rewritten with every batch ingested was a second copy, and a fifth of an ingest. */
    ("DROP TABLE feeds;"),
    /* 4 -> 5: a log row names its author by a small integer (authors): the row loses 31 bytes
     * and its index entry, of which the author was most, 31 of some 47; the hash column goes
     * (a batch's hash is that of its bytes, and a duplicate is known by its bytes). */
    (SQL_AUTHORS "INSERT INTO authors(key) SELECT DISTINCT author FROM batches ORDER BY author;"
                 "DROP INDEX batches_feed;"
                 "ALTER TABLE batches RENAME TO batches_v4;" SQL_BATCHES
                 "INSERT INTO batches(id, coll, author, first_seq, last_seq, data)"
                 "  SELECT b.id, b.coll, a.id, b.first_seq, b.last_seq, b.data"
                 "  FROM batches_v4 b JOIN authors a ON a.key = b.author ORDER BY b.id;"
                 "DROP TABLE batches_v4;" SQL_BATCHES_FEED),
};

/* A new store gets the current schema at once: replaying every step cost a simulator 2.5 M
 * instructions per node, most of it the last step's table rebuild. */
static const char SCHEMA_FRESH[] = SQL_META SQL_COLLECTIONS SQL_BATCHES SQL_BATCHES_FEED SQL_RECORDS
    SQL_APP SQL_FORKS SQL_RECORDS_CONFLICTS SQL_MEMBERS SQL_AUTHORS;

struct fm_store {
    sqlite3 *db;
    sqlite3_stmt *stmt[S__COUNT];
    uint64_t batch_rows; /* log rows read by fm_store_each_batch_from */
    /* The authors table, both ways: akey[id - 1] is author id's key (ids are 1..nakey, each
     * inserted as the next), amap an open-addressing map from key to id (0: empty). */
    uint8_t (*akey)[FM_ID_BYTES];
    uint32_t nakey, cakey;
    uint32_t *amap;
    uint32_t amap_cap;  /* a power of two, at least twice nakey */
    uint32_t txn_nakey; /* nakey when the open transaction began; NO_TXN if none */
    uint32_t last_aid;  /* the id author_find found last (0: none): a frame's batches are
                         * mostly one author's, and each probe of amap missed the caches */
    /* Log rows put in the open transaction and not yet written (log_flush): every read of
     * the log and every commit writes them first. Their data is in row_data. */
    struct log_row {
        int64_t coll, author;
        uint64_t first, last;
        size_t off, len;
    } rows[LOG_ROWS];
    uint32_t nrows;
    fm_buf row_data;
    /* The error of a failed write of held rows, until the rollback: whoever saw it (a read of
     * the log, say) may not roll back, and a commit then would keep a state whose rows are
     * missing. */
    int log_err;
};

#define NO_TXN UINT32_MAX
enum { FM_STORE_MAX_AUTHORS = 1 << 26 }; /* far past any mesh; keeps the map's sizes in range */

const char *fm_store_errmsg(fm_store *st)
{
    return st && st->db ? sqlite3_errmsg(st->db) : "no store";
}

static int exec(fm_store *st, const char *sql)
{
    return sqlite3_exec(st->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : FM_ESTORE;
}

static int user_version(fm_store *st, int *v)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
        return FM_ESTORE;
    int rc = sqlite3_step(s) == SQLITE_ROW ? 0 : FM_ESTORE;
    *v = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    return rc;
}

/* A file with tables but no fieldmesh marker is someone else's: refuse it. */
static int check_foreign(fm_store *st, int version)
{
    sqlite3_stmt *s;
    const char *sql =
        version ? "SELECT value FROM meta WHERE key = 'app'" : "SELECT count(*) FROM sqlite_master";
    if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK)
        return FM_ESCHEMA;
    int rc = FM_ESCHEMA;
    if (sqlite3_step(s) == SQLITE_ROW) {
        if (version == 0)
            rc = sqlite3_column_int(s, 0) == 0 ? 0 : FM_ESCHEMA;
        else {
            const char *app = (const char *)sqlite3_column_text(s, 0); /* NULL for a NULL value */
            rc = app && strcmp(app, "fieldmesh") == 0 ? 0 : FM_ESCHEMA;
        }
    }
    sqlite3_finalize(s);
    return rc;
}

static int migrate(fm_store *st)
{
    int v, rc;
    if ((rc = exec(st, "BEGIN IMMEDIATE")))
        return rc;
    if ((rc = user_version(st, &v)))
        goto fail;
    if (v > FM_STORE_SCHEMA_VERSION || v < 0 || (rc = check_foreign(st, v))) {
        rc = FM_ESCHEMA;
        goto fail;
    }
    if (v == 0) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", FM_STORE_SCHEMA_VERSION);
        if ((rc = exec(st, SCHEMA_FRESH)) || (rc = exec(st, pragma)))
            goto fail;
        v = FM_STORE_SCHEMA_VERSION;
    }
    for (; v < FM_STORE_SCHEMA_VERSION; v++) {
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
        if ((rc = exec(st, MIGRATIONS[v])) || (rc = exec(st, pragma)))
            goto fail;
    }
    return exec(st, "COMMIT");
fail:
    exec(st, "ROLLBACK");
    return rc;
}

/* An in-memory database that other connections to the same name share: the memdb VFS (whose
 * buffer holds the data, so a big page cache would hold it twice) or a shared-cache
 * mode=memory one (whose pages are the cache, never evicted). */
static bool is_memory_uri(const char *path)
{
    return path && strncmp(path, "file:", 5) == 0 &&
           (strstr(path, "vfs=memdb") != NULL || strstr(path, "mode=memory") != NULL);
}

/* Runs a prepared statement to completion (no rows expected). */
static int run(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : FM_ESTORE;
}

/* Copies column col of a row into out. */
static int column_blob(sqlite3_stmt *s, int col, fm_buf *out)
{
    const void *p = sqlite3_column_blob(s, col);
    int n = sqlite3_column_bytes(s, col);
    return fm_buf_append(out, p, (size_t)n);
}

/* Steps a one-row lookup: 0 with the row in *s (caller resets), FM_ENOTFOUND, or FM_ESTORE. */
static int lookup(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        return 0;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? FM_ENOTFOUND : FM_ESTORE;
}

static void done(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

/* ---- author ids ----------------------------------------------------------------------------- */

static uint32_t *amap_slot(const fm_store *st, const uint8_t key[FM_ID_BYTES])
{
    uint32_t mask = st->amap_cap - 1;
    for (uint32_t i = fm_hash32(key, FM_ID_BYTES) & mask;; i = (i + 1) & mask) {
        uint32_t *slot = &st->amap[i];
        if (!*slot || memcmp(st->akey[*slot - 1], key, FM_ID_BYTES) == 0)
            return slot;
    }
}

/* Keeps only the first n keys (n <= nakey), in a map with room for them: what a rollback does
 * to the ids its transaction gave, with no allocation that could fail. */
static void amap_fill(fm_store *st, uint32_t n)
{
    FM_ASSERT(n <= st->nakey && 2 * (n + 1) <= st->amap_cap);
    memset(st->amap, 0, st->amap_cap * sizeof *st->amap);
    st->nakey = n;
    for (uint32_t id = 1; id <= n; id++)
        *amap_slot(st, st->akey[id - 1]) = id;
}

/* Room for one more key in akey and in the map. */
static int akey_room(fm_store *st)
{
    if (st->nakey >= FM_STORE_MAX_AUTHORS)
        return FM_ELIMIT;
    if (st->nakey == st->cakey) {
        uint32_t c = st->cakey ? st->cakey * 2 : 16;
        void *p = fm_reallocarray(st->akey, c, sizeof *st->akey);
        if (!p)
            return FM_ENOMEM;
        st->akey = p;
        st->cakey = c;
    }
    if (2 * (st->nakey + 2) <= st->amap_cap)
        return 0;
    uint32_t cap = st->amap_cap ? st->amap_cap * 2 : 16;
    while (cap < 2 * (st->nakey + 2))
        cap *= 2;
    uint32_t *m = calloc(cap, sizeof *m);
    if (!m)
        return FM_ENOMEM;
    free(st->amap);
    st->amap = m;
    st->amap_cap = cap;
    amap_fill(st, st->nakey);
    return 0;
}

/* Appends a key as id nakey + 1 (after akey_room). */
static void akey_add(fm_store *st, const uint8_t key[FM_ID_BYTES])
{
    FM_ASSERT(st->nakey < st->cakey && 2 * (st->nakey + 2) <= st->amap_cap);
    memcpy(st->akey[st->nakey], key, FM_ID_BYTES);
    st->nakey++;
    *amap_slot(st, key) = st->nakey;
}

/* Reads the authors table from id nakey + 1 on: at open, and when another handle on the same
 * file may have added some (every writer gives the next id, inside its write transaction). */
static int authors_catch_up(fm_store *st)
{
    sqlite3_stmt *q = st->stmt[S_AUTHORS_FROM];
    sqlite3_bind_int64(q, 1, (int64_t)st->nakey);
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        if (sqlite3_column_int64(q, 0) != (int64_t)st->nakey + 1 ||
            sqlite3_column_bytes(q, 1) != FM_ID_BYTES)
            rc = FM_ESTORE; /* ids are 1..n */
        else if (!(rc = akey_room(st)))
            akey_add(st, sqlite3_column_blob(q, 1));
    }
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    done(q);
    return rc;
}

/* The author's id, 0 if it has none (or on a store error: a lookup then finds nothing). */
static int64_t author_find(fm_store *st, const uint8_t key[FM_ID_BYTES])
{
    uint32_t id = st->last_aid;
    if (id && id <= st->nakey && memcmp(st->akey[id - 1], key, FM_ID_BYTES) == 0)
        return id;
    id = *amap_slot(st, key);
    if (!id && authors_catch_up(st) == 0)
        id = *amap_slot(st, key);
    st->last_aid = id;
    return id;
}

/* The author of a log row's id: NULL if none (a damaged store). */
static const uint8_t *author_key(fm_store *st, int64_t id)
{
    if (id > st->nakey && id <= FM_STORE_MAX_AUTHORS && authors_catch_up(st) != 0)
        return NULL;
    return id >= 1 && id <= st->nakey ? st->akey[id - 1] : NULL;
}

/* The author's id, given one (a row in authors) if it has none. */
static int author_id(fm_store *st, const uint8_t key[FM_ID_BYTES], int64_t *id)
{
    if ((*id = author_find(st, key)))
        return 0;
    int rc = akey_room(st); /* first, so that a row written is always known here */
    if (rc)
        return rc;
    sqlite3_stmt *s = st->stmt[S_AUTHOR_PUT];
    sqlite3_bind_int64(s, 1, (int64_t)st->nakey + 1);
    sqlite3_bind_blob(s, 2, key, FM_ID_BYTES, SQLITE_STATIC);
    if ((rc = run(s)))
        return rc;
    akey_add(st, key);
    *id = st->nakey;
    return 0;
}

/* ---- the log's held-back rows ---------------------------------------------------------- */

/* Binds log row r with its data at parameters base + 1 .. base + 5. */
static void bind_row(sqlite3_stmt *s, int base, const struct log_row *r, const uint8_t *data)
{
    sqlite3_bind_int64(s, base + 1, r->coll);
    sqlite3_bind_int64(s, base + 2, r->author);
    sqlite3_bind_int64(s, base + 3, (int64_t)r->first);
    sqlite3_bind_int64(s, base + 4, (int64_t)r->last);
    sqlite3_bind_blob(s, base + 5, data, (int)r->len, SQLITE_STATIC);
}

/* Writes the log rows held back, in the order they were put; their errors come out here, and
 * again from every later write and commit until the rollback. */
static int log_flush(fm_store *st)
{
    if (st->log_err || !st->nrows)
        return st->log_err;
    int rc = 0;
    uint32_t i = 0;
    if (st->nrows == LOG_ROWS) {
        sqlite3_stmt *s = st->stmt[S_BATCH_PUT_MANY];
        for (; i < LOG_ROWS; i++)
            bind_row(s, 5 * (int)i, &st->rows[i], st->row_data.data + st->rows[i].off);
        rc = run(s);
    }
    for (; !rc && i < st->nrows; i++) {
        bind_row(st->stmt[S_BATCH_PUT], 0, &st->rows[i], st->row_data.data + st->rows[i].off);
        rc = run(st->stmt[S_BATCH_PUT]);
    }
    st->nrows = 0;
    fm_buf_recycle(&st->row_data, LOG_ROWS * LOG_ROW_MAX_BYTES);
    st->log_err = rc;
    return rc;
}

int fm_store_begin(fm_store *st)
{
    int rc = run(st->stmt[S_BEGIN]);
    if (!rc) {
        st->txn_nakey = st->nakey;
        st->nrows = 0; /* of a transaction sqlite ended itself (it rolls back on some errors) */
        st->log_err = 0;
    }
    return rc;
}

int fm_store_commit(fm_store *st)
{
    int rc = log_flush(st);
    if (!rc)
        rc = run(st->stmt[S_COMMIT]);
    if (!rc)
        st->txn_nakey = NO_TXN;
    return rc;
}

void fm_store_rollback(fm_store *st)
{
    st->nrows = 0; /* never written */
    st->log_err = 0;
    fm_buf_recycle(&st->row_data, LOG_ROWS * LOG_ROW_MAX_BYTES);
    if (!sqlite3_get_autocommit(st->db))
        run(st->stmt[S_ROLLBACK]);
    /* Author ids given in the transaction are gone with their rows. */
    if (st->txn_nakey != NO_TXN && st->txn_nakey < st->nakey)
        amap_fill(st, st->txn_nakey);
    st->txn_nakey = NO_TXN;
}

int fm_store_open(const char *path, fm_store **out)
{
    fm_store *st = calloc(1, sizeof *st);
    if (!st)
        return FM_ENOMEM;
    st->txn_nakey = NO_TXN;
    int rc = FM_ESTORE;
    bool uri = path && strncmp(path, "file:", 5) == 0;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (uri)
        flags |= SQLITE_OPEN_URI;
    if (sqlite3_open_v2(path ? path : ":memory:", &st->db, flags, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(st->db, 10000);
    /* Check what the file is before changing anything in it (WAL mode rewrites the header). */
    int v;
    if (user_version(st, &v) != 0) {
        rc = FM_ESCHEMA; /* not a database at all */
        goto fail;
    }
    if ((rc = check_foreign(st, v)) || v < 0 || v > FM_STORE_SCHEMA_VERSION) {
        rc = FM_ESCHEMA;
        goto fail;
    }
    /* A URI may name a VFS without WAL (memdb): it keeps whatever journal mode sqlite gives it. */
    if (path && (rc = exec(st, "PRAGMA journal_mode=WAL")) && !uri)
        goto fail;
    /* A 16 MiB page-cache ceiling (sqlite's default is 2 MiB): an ingest transaction rewrites
     * records all over the table, and a smaller cache re-reads pages and spills dirty ones. An
     * in-memory database gets 512 KiB: its pages are in memory anyway, and a simulator runs a
     * thousand of them in one process. */
    const char *cache = is_memory_uri(path) ? "PRAGMA cache_size=-512" : "PRAGMA cache_size=-16384";
    if ((rc = exec(st, "PRAGMA synchronous=FULL")) || (rc = exec(st, cache)) || (rc = migrate(st)))
        goto fail;
    /* An in-memory database has nothing to sync and one writer: its rollback journal stays in
     * memory too, and its lock is taken once rather than per transaction. */
    if (is_memory_uri(path) && ((rc = exec(st, "PRAGMA journal_mode=MEMORY")) ||
                                (rc = exec(st, "PRAGMA synchronous=OFF")) ||
                                (rc = exec(st, "PRAGMA locking_mode=EXCLUSIVE"))))
        goto fail;
    for (int i = 0; i < S__COUNT; i++) {
        if (sqlite3_prepare_v3(st->db, SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i], NULL) !=
            SQLITE_OK) {
            rc = FM_ESTORE;
            goto fail;
        }
    }
    if ((rc = akey_room(st)) || (rc = authors_catch_up(st)))
        goto fail;
    *out = st;
    return 0;
fail:
    fm_store_close(st);
    return rc;
}

void fm_store_close(fm_store *st)
{
    if (!st)
        return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    sqlite3_close(st->db);
    fm_buf_free(&st->row_data);
    free(st->akey);
    free(st->amap);
    free(st);
}

int fm_store_meta_get(fm_store *st, const char *key, fm_buf *out)
{
    sqlite3_stmt *s = st->stmt[S_META_GET];
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = lookup(s);
    if (rc)
        return rc;
    rc = column_blob(s, 0, out);
    done(s);
    return rc;
}

int fm_store_meta_set(fm_store *st, const char *key, const void *val, size_t len)
{
    sqlite3_stmt *s = st->stmt[S_META_SET];
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, val, (int)len, SQLITE_STATIC);
    return run(s);
}

/* Prepares sql and binds the collection (and the author's id, if any) as ?1 and ?2. */
static int prepare_feed(fm_store *st, const char *sql, const fm_coll *c, int64_t author,
                        sqlite3_stmt **q)
{
    FM_ASSERT(c->store_id);
    if (sqlite3_prepare_v2(st->db, sql, -1, q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    sqlite3_bind_int64(*q, 1, c->store_id);
    if (author)
        sqlite3_bind_int64(*q, 2, author);
    return 0;
}

static int load_colls(fm_store *st, fm_state *s)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT id, name, state_xor, live, conflicts FROM collections",
                           -1, &q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        fm_coll *c;
        const uint8_t *name = sqlite3_column_text(q, 1);
        int nlen = sqlite3_column_bytes(q, 1);
        if (sqlite3_column_bytes(q, 2) != FM_HASH_BYTES ||
            (rc = fm_state_coll_add(s, name, (uint32_t)nlen, &c))) {
            rc = rc ? rc : FM_ESTORE;
            break;
        }
        c->store_id = sqlite3_column_int64(q, 0);
        c->complete = false; /* its records are in the store */
        memcpy(c->xor_hash, sqlite3_column_blob(q, 2), FM_HASH_BYTES);
        c->live = (uint64_t)sqlite3_column_int64(q, 3);
        c->conflicts = (uint64_t)sqlite3_column_int64(q, 4);
    }
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    sqlite3_finalize(q);
    return rc;
}

/* The head of every feed of c: per author, the last batch in the log. Two index seeks per feed
 * (the next author, then its last batch), not a scan of the log. q is HEAD_SQL, prepared once
 * for every collection. */
static const char HEAD_SQL[] =
    "SELECT author, last_seq, data FROM batches WHERE coll = ?1 AND "
    "author = (SELECT author FROM batches WHERE coll = ?1 AND author > ?2 "
    "ORDER BY author LIMIT 1) ORDER BY last_seq DESC LIMIT 1";

typedef struct head {
    int64_t id;            /* the author's */
    const uint8_t *author; /* its key, once every id is read (a catch-up may move the keys) */
    uint64_t seq;
    uint8_t hash[FM_HASH_BYTES];
} head;

static int head_order(const void *a, const void *b)
{
    return fm_id_cmp(((const head *)a)->author, ((const head *)b)->author);
}

static int load_heads(fm_store *st, sqlite3_stmt *q, fm_state *s, fm_coll *c)
{
    FM_ASSERT(c->store_id);
    head *h = NULL;
    uint32_t n = 0, cap = 0;
    int rc = 0, step;
    int64_t author = 0; /* ids start at 1 */
    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, c->store_id);
    sqlite3_bind_int64(q, 2, author);
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        author = sqlite3_column_int64(q, 0);
        int64_t seq = sqlite3_column_int64(q, 1);
        if (!author_key(st, author) || seq <= 0) {
            rc = FM_ESTORE;
            break;
        }
        if ((rc = fm_grow((void **)&h, n, &cap, sizeof *h)))
            break;
        h[n].id = author;
        h[n].seq = (uint64_t)seq;
        /* The head's hash, which a batch naming it as prev must match. */
        fm_batch_hash(sqlite3_column_blob(q, 2), (size_t)sqlite3_column_bytes(q, 2), h[n].hash);
        n++;
        sqlite3_reset(q);
        sqlite3_bind_int64(q, 2, author);
    }
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    for (uint32_t i = 0; i < n; i++)
        h[i].author = author_key(st, h[i].id); /* all read: no catch-up now */
    /* In key order: the state's vectors are sorted by author, so that is an append each. */
    if (n)
        qsort(h, n, sizeof *h, head_order);
    for (uint32_t i = 0; !rc && i < n; i++) {
        rc = fm_state_set_feed(s, c, h[i].author, h[i].seq, h[i].hash);
        s->ops += h[i].seq;
    }
    free(h);
    return rc;
}

int fm_store_load_state(fm_store *st, fm_state *s)
{
    int rc = log_flush(st);
    if (!rc)
        rc = load_colls(st, s);
    if (rc || !s->ncolls)
        return rc;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, HEAD_SQL, -1, &q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    for (uint32_t i = 0; !rc && i < s->ncolls; i++)
        rc = load_heads(st, q, s, s->colls[i]);
    sqlite3_finalize(q);
    return rc;
}

int fm_store_coll_ensure(fm_store *st, fm_coll *c)
{
    if (c->store_id)
        return 0;
    sqlite3_stmt *s = st->stmt[S_COLL_INSERT];
    sqlite3_bind_text(s, 1, c->name, (int)c->name_len, SQLITE_STATIC);
    int rc = run(s);
    if (rc == 0)
        c->store_id = sqlite3_last_insert_rowid(st->db);
    return rc;
}

int fm_store_coll_save(fm_store *st, const fm_coll *c)
{
    FM_ASSERT(c->store_id);
    sqlite3_stmt *s = st->stmt[S_COLL_SAVE];
    sqlite3_bind_int64(s, 1, c->store_id);
    sqlite3_bind_blob(s, 2, c->xor_hash, FM_HASH_BYTES, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (int64_t)c->live);
    sqlite3_bind_int64(s, 4, (int64_t)c->conflicts);
    return run(s);
}

int fm_store_put_batch(fm_store *st, const fm_coll *c, const fm_batch *b, const uint8_t *data,
                       size_t len)
{
    FM_ASSERT(c->store_id);
    int64_t author;
    int rc = st->log_err ? st->log_err : author_id(st, b->author, &author);
    if (rc)
        return rc;
    struct log_row r = {c->store_id, author, b->first_seq, fm_batch_last_seq(b), 0, len};
    /* Outside a transaction the row is written at once, as the caller expects it durable. */
    if (len > LOG_ROW_MAX_BYTES || sqlite3_get_autocommit(st->db)) {
        if ((rc = log_flush(st)))
            return rc;
        bind_row(st->stmt[S_BATCH_PUT], 0, &r, data);
        return run(st->stmt[S_BATCH_PUT]);
    }
    r.off = st->row_data.len;
    if (fm_buf_append(&st->row_data, data, len)) {
        st->row_data.oom = false;
        return FM_ENOMEM;
    }
    st->rows[st->nrows++] = r;
    return st->nrows == LOG_ROWS ? log_flush(st) : 0;
}

/* Parameters 1-3 of every statement that names a feed position: collection, author, seq. False
 * (nothing bound) for an author without an id: the log has none of its batches. */
static bool bind_feed_pos(fm_store *st, sqlite3_stmt *s, const fm_coll *c,
                          const uint8_t author[FM_ID_BYTES], uint64_t seq)
{
    int64_t id = author_find(st, author);
    if (!id)
        return false;
    sqlite3_bind_int64(s, 1, c->store_id);
    sqlite3_bind_int64(s, 2, id);
    sqlite3_bind_int64(s, 3, (int64_t)seq);
    return true;
}

int fm_store_batch_at(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                      uint64_t seq, fm_buf *out)
{
    sqlite3_stmt *s = st->stmt[S_BATCH_AT];
    int rc = log_flush(st);
    if (rc)
        return rc;
    if (!bind_feed_pos(st, s, c, author, seq))
        return FM_ENOTFOUND;
    rc = lookup(s);
    if (rc)
        return rc;
    rc = column_blob(s, 0, out);
    done(s);
    return rc;
}

int fm_store_put_fork(fm_store *st, const uint8_t author[FM_ID_BYTES], const uint8_t *a,
                      size_t alen, const uint8_t *b, size_t blen)
{
    sqlite3_stmt *s = st->stmt[S_FORK_PUT];
    sqlite3_bind_blob(s, 1, author, FM_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, a, (int)alen, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, b, (int)blen, SQLITE_STATIC);
    return run(s);
}

int fm_store_fork_authors(fm_store *st, int (*fn)(void *arg, const uint8_t *author), void *arg)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT DISTINCT author FROM forks ORDER BY author", -1, &q,
                           NULL) != SQLITE_OK)
        return FM_ESTORE;
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW)
        if (sqlite3_column_bytes(q, 0) == FM_ID_BYTES)
            rc = fn(arg, sqlite3_column_blob(q, 0));
    sqlite3_finalize(q);
    return rc;
}

int fm_store_load_record(fm_store *st, const fm_coll *c, const uint8_t *id, uint32_t len,
                         fm_buf *out)
{
    if (!c->store_id)
        return 0;
    sqlite3_stmt *s = st->stmt[S_REC_GET];
    sqlite3_bind_int64(s, 1, c->store_id);
    sqlite3_bind_blob(s, 2, id, (int)len, SQLITE_STATIC);
    int rc = lookup(s);
    if (rc)
        return rc == FM_ENOTFOUND ? 0 : rc;
    rc = column_blob(s, 0, out);
    done(s);
    return rc;
}

int fm_store_save_record(fm_store *st, const fm_coll *c, const uint8_t *id, uint32_t len,
                         const uint8_t *enc, size_t enc_len, uint32_t conflicts)
{
    FM_ASSERT(c->store_id);
    sqlite3_stmt *s = st->stmt[S_REC_PUT];
    sqlite3_bind_int64(s, 1, c->store_id);
    sqlite3_bind_blob(s, 2, id, (int)len, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, enc, (int)enc_len, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, (int)conflicts);
    return run(s);
}

int fm_store_each_batch(fm_store *st, const fm_coll *c, fm_store_batch_fn fn, void *arg)
{
    return fm_store_each_batch_from(st, c, 1, fn, arg);
}

/* A walk's statement: the prepared one, or a fresh one (*own) if the walk's callback re-entered
 * us while the prepared one is stepping. NULL if none could be made. */
static sqlite3_stmt *walk_begin(fm_store *st, int which, bool *own)
{
    sqlite3_stmt *q = st->stmt[which];
    *own = sqlite3_stmt_busy(q);
    if (*own && sqlite3_prepare_v2(st->db, SQL[which], -1, &q, NULL) != SQLITE_OK)
        return NULL;
    return q;
}

/* Ends a walk: rc, or FM_ESTORE if its last step failed. */
static int walk_end(sqlite3_stmt *q, bool own, int rc, int step)
{
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    if (own)
        sqlite3_finalize(q);
    else
        done(q);
    return rc;
}

int fm_store_each_batch_from(fm_store *st, const fm_coll *c, int64_t from_id, fm_store_batch_fn fn,
                             void *arg)
{
    bool own;
    int rc = log_flush(st);
    if (rc)
        return rc;
    sqlite3_stmt *q = walk_begin(st, S_BATCHES_FROM, &own);
    if (!q)
        return FM_ESTORE;
    sqlite3_bind_int64(q, 1, from_id);
    int step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        st->batch_rows++;
        if (sqlite3_column_int64(q, 0) != c->store_id)
            continue; /* another collection's: its data is never read */
        /* A copy: fn may call the store, whose catch-up of author ids may move the keys. */
        const uint8_t *key = author_key(st, sqlite3_column_int64(q, 1));
        if (!key) {
            rc = FM_ESTORE;
            break;
        }
        uint8_t author[FM_ID_BYTES];
        memcpy(author, key, FM_ID_BYTES);
        rc = fn(arg, author, (uint64_t)sqlite3_column_int64(q, 2), sqlite3_column_blob(q, 3),
                (size_t)sqlite3_column_bytes(q, 3));
    }
    return walk_end(q, own, rc, step);
}

int fm_store_each_feed_batch(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                             uint64_t seq, fm_store_batch_fn fn, void *arg)
{
    bool own;
    int rc = log_flush(st), step;
    if (rc)
        return rc;
    sqlite3_stmt *q = walk_begin(st, S_FEED_FROM, &own);
    if (!q)
        return FM_ESTORE;
    if (!bind_feed_pos(st, q, c, author, seq))
        return walk_end(q, own, 0, SQLITE_DONE); /* no batches of this author */
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        st->batch_rows++;
        rc = fn(arg, author, (uint64_t)sqlite3_column_int64(q, 0), sqlite3_column_blob(q, 1),
                (size_t)sqlite3_column_bytes(q, 1));
    }
    return walk_end(q, own, rc, step);
}

int fm_store_feed_next(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                       uint64_t seq, int64_t *id, uint64_t *last_seq, fm_buf *data)
{
    sqlite3_stmt *s = st->stmt[S_FEED_NEXT];
    int rc = log_flush(st);
    if (rc)
        return rc;
    if (!bind_feed_pos(st, s, c, author, seq))
        return FM_ENOTFOUND;
    rc = lookup(s);
    if (rc)
        return rc;
    st->batch_rows++;
    *id = sqlite3_column_int64(s, 0);
    *last_seq = (uint64_t)sqlite3_column_int64(s, 1);
    fm_buf_reset(data);
    rc = fm_buf_append(data, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2));
    done(s);
    return rc;
}

int64_t fm_store_max_batch_id(fm_store *st)
{
    sqlite3_stmt *s = st->stmt[S_MAX_BATCH_ID];
    int rc = log_flush(st);
    if (!rc)
        rc = lookup(s);
    if (rc)
        return rc == FM_ENOTFOUND ? 0 : rc;
    int64_t id = sqlite3_column_int64(s, 0); /* NULL (no batches) reads as 0 */
    done(s);
    return id;
}

uint64_t fm_store_batch_rows_read(const fm_store *st)
{
    return st->batch_rows;
}

int fm_store_each_record(fm_store *st, const fm_coll *c, bool conflicts_only, fm_store_rec_fn fn,
                         void *arg)
{
    const char *sql =
        c ? (conflicts_only ? "SELECT coll, id, state FROM records WHERE coll = ?1 AND "
                              "conflicts > 0 ORDER BY id"
                            : "SELECT coll, id, state FROM records WHERE coll = ?1 ORDER BY id")
          : "SELECT r.coll, r.id, r.state FROM records r JOIN collections c ON c.id = r.coll "
            "WHERE r.conflicts > 0 ORDER BY c.name, r.id";
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    if (c)
        sqlite3_bind_int64(q, 1, c->store_id);
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW)
        rc = fn(arg, sqlite3_column_int64(q, 0), sqlite3_column_blob(q, 1),
                (size_t)sqlite3_column_bytes(q, 1), sqlite3_column_blob(q, 2),
                (size_t)sqlite3_column_bytes(q, 2));
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    sqlite3_finalize(q);
    return rc;
}

int64_t fm_store_batch_count(fm_store *st)
{
    sqlite3_stmt *q;
    int rc = log_flush(st);
    if (rc)
        return rc;
    if (sqlite3_prepare_v2(st->db, "SELECT count(*) FROM batches", -1, &q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : FM_ESTORE;
    sqlite3_finalize(q);
    return n;
}

int fm_store_put_member(fm_store *st, fm_member_kind kind, const uint8_t device[FM_ID_BYTES],
                        const uint8_t *data, size_t len)
{
    sqlite3_stmt *s = st->stmt[S_MEMBER_PUT];
    sqlite3_bind_blob(s, 1, device, FM_ID_BYTES, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)kind);
    sqlite3_bind_blob(s, 3, data, (int)len, SQLITE_STATIC);
    int rc = run(s);
    return rc ? rc : sqlite3_changes(st->db) > 0;
}

int fm_store_each_member(fm_store *st, fm_store_member_fn fn, void *arg)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT kind, data FROM members ORDER BY device, kind, data", -1,
                           &q, NULL) != SQLITE_OK)
        return FM_ESTORE;
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW)
        rc = fn(arg, (fm_member_kind)sqlite3_column_int(q, 0), sqlite3_column_blob(q, 1),
                (size_t)sqlite3_column_bytes(q, 1));
    if (!rc && step != SQLITE_DONE)
        rc = FM_ESTORE;
    sqlite3_finalize(q);
    return rc;
}

void fm_store_release_memory(fm_store *st)
{
    sqlite3_db_release_memory(st->db);
}

/* ---- rebuilding a collection --------------------------------------------------------------- */

int fm_store_drop_feed_from(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                            uint64_t seq)
{
    int64_t id = author_find(st, author);
    int rc = log_flush(st);
    if (rc || !id)
        return rc; /* or no batches of this author to drop */
    sqlite3_stmt *q;
    rc = prepare_feed(st,
                      "DELETE FROM batches WHERE coll = ?1 AND author = ?2 AND "
                      "first_seq >= ?3",
                      c, id, &q);
    if (rc)
        return rc;
    sqlite3_bind_int64(q, 3, (int64_t)seq);
    rc = sqlite3_step(q) == SQLITE_DONE ? sqlite3_changes(st->db) : FM_ESTORE;
    sqlite3_finalize(q);
    return rc;
}

/* Runs one statement about collection c to completion. */
static int run_coll(fm_store *st, const char *sql, const fm_coll *c)
{
    sqlite3_stmt *q;
    int rc = prepare_feed(st, sql, c, 0, &q);
    if (rc)
        return rc;
    rc = sqlite3_step(q) == SQLITE_DONE ? 0 : FM_ESTORE;
    sqlite3_finalize(q);
    return rc;
}

int fm_store_coll_reset(fm_store *st, const fm_coll *c)
{
    int rc = log_flush(st);
    if (!rc)
        rc = run_coll(st, "DELETE FROM records WHERE coll = ?1", c);
    if (!rc)
        rc = run_coll(st,
                      "UPDATE collections SET state_xor = zeroblob(32), live = 0, "
                      "conflicts = 0 WHERE id = ?1",
                      c);
    if (rc)
        return rc;
    sqlite3_stmt *q;
    if ((rc = prepare_feed(st, "SELECT 1 FROM batches WHERE coll = ?1 LIMIT 1", c, 0, &q)))
        return rc;
    int step = sqlite3_step(q);
    sqlite3_finalize(q);
    if (step == SQLITE_ROW)
        return 0;
    if (step != SQLITE_DONE)
        return FM_ESTORE;
    rc = run_coll(st, "DELETE FROM collections WHERE id = ?1", c);
    return rc ? rc : 1;
}
