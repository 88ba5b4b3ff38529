/*
 * store.h — the node's sqlite3 file (DESIGN.md §6): the log of batches, materialized record
 * states, collection aggregates, fork proofs and metadata. WAL mode with synchronous
 * FULL, so a committed transaction survives a crash or power cut.
 *
 * Schema versions are migrated forward in order; a newer or foreign file is refused untouched.
 */
#ifndef FM_STORE_H
#define FM_STORE_H

#include "crdt/state.h"

#define FM_STORE_SCHEMA_VERSION 5

typedef struct fm_store fm_store;

/* path NULL = a private in-memory database. A path starting with "file:" is an sqlite URI
 * (SQLITE_OPEN_URI), e.g. "file:/fmsim-17?vfs=memdb": an in-memory database shared by the
 * connections of one process that lives while any of them is open (so closing and reopening a
 * replica while another connection stays open is a crash and restart). A URI keeps whatever
 * journal mode its VFS allows (memdb has no WAL); memdb gets a small page cache. */
int fm_store_open(const char *path, fm_store **out);
void fm_store_close(fm_store *st);
/* The sqlite error text of the last failure (for logs). */
const char *fm_store_errmsg(fm_store *st);

int fm_store_begin(fm_store *st);
/* Writes the log rows held back (fm_store_put_batch), then commits; on an error nothing is
 * committed, and the caller rolls back. */
int fm_store_commit(fm_store *st);
void fm_store_rollback(fm_store *st);

int fm_store_meta_get(fm_store *st, const char *key, fm_buf *out); /* FM_ENOTFOUND if absent */
int fm_store_meta_set(fm_store *st, const char *key, const void *val, size_t len);

/* Loads collections (aggregates, store ids) and feed heads (each feed's last batch in the log)
 * into a fresh state. */
int fm_store_load_state(fm_store *st, fm_state *s);
/* Gives c a store id (inserting its row if needed). */
int fm_store_coll_ensure(fm_store *st, fm_coll *c);
int fm_store_coll_save(fm_store *st, const fm_coll *c);

/* Appends b (encoded in data) to the log. Inside a transaction its row may be held back and
 * written with others (up to 16 to a statement) by the put that fills them, by anything that
 * reads the log, or by fm_store_commit: an error of the row (FM_ESTORE, say for a feed position
 * already taken) may then come from any of those, and the caller rolls back as for its own.
 * Outside a transaction the row is written at once. */
int fm_store_put_batch(fm_store *st, const fm_coll *c, const fm_batch *b, const uint8_t *data,
                       size_t len);
/* The stored batch of a feed that holds op seq: its encoding, appended to out. */
int fm_store_batch_at(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                      uint64_t seq, fm_buf *out);
int fm_store_put_fork(fm_store *st, const uint8_t author[FM_ID_BYTES], const uint8_t *a,
                      size_t alen, const uint8_t *b, size_t blen);
int fm_store_fork_authors(fm_store *st, int (*fn)(void *arg, const uint8_t *author), void *arg);

int fm_store_load_record(fm_store *st, const fm_coll *c, const uint8_t *id, uint32_t len,
                         fm_buf *out);
int fm_store_save_record(fm_store *st, const fm_coll *c, const uint8_t *id, uint32_t len,
                         const uint8_t *enc, size_t enc_len, uint32_t conflicts);

/* Every batch of the collection in log (causal) order; fn returning non-zero stops. */
typedef int (*fm_store_batch_fn)(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                                 const uint8_t *data, size_t len);
int fm_store_each_batch(fm_store *st, const fm_coll *c, fm_store_batch_fn fn, void *arg);
/* The same from log position from_id on (a rowid range: rows before it are not read; rows of
 * other collections after it are, without their data). */
int fm_store_each_batch_from(fm_store *st, const fm_coll *c, int64_t from_id, fm_store_batch_fn fn,
                             void *arg);
/* A feed's batches whose last seq is beyond seq (0: all of them), in seq order, read by one
 * statement (one index seek for them all); fn returning non-zero stops, and is returned. Each
 * counts as one row read. */
int fm_store_each_feed_batch(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                             uint64_t seq, fm_store_batch_fn fn, void *arg);
/* A feed's first batch whose last seq is beyond seq: its log position, last seq and encoding
 * (into data). FM_ENOTFOUND if none. Counts as one row read. */
int fm_store_feed_next(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                       uint64_t seq, int64_t *id, uint64_t *last_seq, fm_buf *data);
/* The largest log position (0: no batch), or a negative code. */
int64_t fm_store_max_batch_id(fm_store *st);
/* Log rows (of any collection) fm_store_each_batch(_from) has read on this handle: what scans
 * cost (tests). */
uint64_t fm_store_batch_rows_read(const fm_store *st);
/* Every stored record state of a collection in id order (conflicts_only: only those with
 * fields in conflict, across all collections when c is NULL). */
typedef int (*fm_store_rec_fn)(void *arg, int64_t coll_id, const uint8_t *id, size_t id_len,
                               const uint8_t *enc, size_t len);
int fm_store_each_record(fm_store *st, const fm_coll *c, bool conflicts_only, fm_store_rec_fn fn,
                         void *arg);
int64_t fm_store_batch_count(fm_store *st);
/* Hands sqlite's unused cache pages back (an idle node keeps a small footprint). */
void fm_store_release_memory(fm_store *st);

/* ---- rebuilding a collection (node/revocation.c): rare, so statements are prepared per call ----
 */

/* Deletes the feed's batches from first seq `seq` on; returns how many (>= 0). */
int fm_store_drop_feed_from(fm_store *st, const fm_coll *c, const uint8_t author[FM_ID_BYTES],
                            uint64_t seq);
/* Deletes the collection's materialized state (records) and zeroes its aggregates,
 * keeping its log. A collection whose log is empty goes altogether: then 1, else 0. */
int fm_store_coll_reset(fm_store *st, const fm_coll *c);

/* Membership records (certificates and revocations), kept as installed; installing the same
 * record twice is a no-op. fm_store_put_member returns 1 if the record is new, 0 if held. */
typedef enum fm_member_kind { FM_MEMBER_CERT = 0, FM_MEMBER_REVOCATION = 1 } fm_member_kind;
int fm_store_put_member(fm_store *st, fm_member_kind kind, const uint8_t device[FM_ID_BYTES],
                        const uint8_t *data, size_t len);
typedef int (*fm_store_member_fn)(void *arg, fm_member_kind kind, const uint8_t *data, size_t len);
int fm_store_each_member(fm_store *st, fm_store_member_fn fn, void *arg);

#endif
