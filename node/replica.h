/*
 * replica.h — internals of the fm_replica handle shared by the replica's source files.
 */
#ifndef FM_REPLICA_H
#define FM_REPLICA_H

#include "crdt/state.h"
#include "crypto/sigcache.h"
#include "node/store.h"

/* Records kept in the cache between transactions; beyond this the clean ones are dropped. */
#define FM_STATE_CACHE_RECORDS 65536

/* ---- for the node core (node/node.c); not public API ------------------------------------------
 */

/* Called after a successful fm_txn_commit or fm_replica_ingest, once per batch that call applied
 * (held batches it released included), in apply order (causal order), with the batch's exact
 * encoding (valid during the call only). Never called for a failed call. The hook may call
 * read-only functions of the replica (export, vectors, status, reads) but not ingest or commit
 * (they fail with FM_ESTATE). fn NULL removes the hook. */
typedef void (*fm_applied_fn)(void *arg, const uint8_t *batch, size_t len);
void fm__replica_set_applied_hook(fm_replica *r, fm_applied_fn fn, void *arg);

/* fm_replica_ingest for a caller that has hashed every batch already (hashes[i] over exactly
 * batches[i]), so that ingest does not hash them again. */
int fm__replica_ingest_hashed(fm_replica *r, const fm_bytes *batches,
                              const uint8_t (*hashes)[FM_HASH_BYTES], size_t n, int *results);

/* Calls fn for each stored batch of the collection that theirs lacks (last seq beyond theirs for
 * its author), in log (causal) order; fn returning non-zero stops, and that value is returned.
 * Reads only from the first batch any author's lacking part starts at; nothing lacking reads
 * nothing. An unknown collection gives 0 without calling fn. */
int fm__replica_export_vv(fm_replica *r, const uint8_t *coll, uint32_t coll_len,
                          const fm_vv *theirs, fm_batch_fn fn, void *arg);

/* fm_replica_open over a store the caller opened and keeps (cfg->path unused): it must outlive
 * the replica, and close leaves it open with no transaction. The simulator's in-memory stores
 * live this way across a crash, each on its own connection: a shared-cache database, the other
 * way to keep one alive, cost sqlite 7 % more instructions in a 300-node run. */
int fm__replica_open_on(const fm_replica_config *cfg, fm_store *st, fm_replica **out);

/* A verified-signature cache, borrowed (it must outlive the replica; NULL: none), which may be
 * shared by every replica in the process: a batch whose hash it holds is not verified again, and
 * every batch this replica verifies (or signs) goes in. */
void fm__replica_set_sigcache(fm_replica *r, fm_sigcache *c);

/* The stored batch of coll holding op seq of author's feed, into out: 0, FM_ENOTFOUND. */
int fm__replica_batch_at(fm_replica *r, const uint8_t *coll, uint32_t coll_len,
                         const uint8_t author[FM_ID_BYTES], uint64_t seq, fm_buf *out);

/* Group commit: ingest leaves its store transaction open until it holds max_batches batches
 * (0 or 1: commit at every ingest, the default), so a busy relay commits once for many. Only
 * remote batches wait, never a local write: they came from peers, and a crash before the commit
 * loses nothing a peer cannot send again. Anything else that writes the store, and close,
 * commits first. fm__replica_flush commits now (0 when nothing waits); on failure everything
 * uncommitted is rolled back and rollbacks moves. */
void fm__replica_set_group_commit(fm_replica *r, uint32_t max_batches);
int fm__replica_flush(fm_replica *r);
/* Commits what waits, then begins a store transaction. */
int fm__replica_begin(fm_replica *r);

/* Whether b (decoded, hash set) is a batch this replica holds, known cheaply: its feed's head,
 * or a recently applied one. false says nothing (ingest decides). */
bool fm__replica_holds(fm_replica *r, const fm_batch *b);
/* As fm__replica_holds for the batch encoded in data, b its header peeked without the hash. Its
 * feed's head and recent batches here are known by the very signature bytes, unhashed: a
 * different batch cannot carry them (a signature binds all it covers), and one that does not
 * verify is to be dropped anyway. A duplicate, of an eager push or of a batch a catch-up sent
 * twice, thus costs no hash. Otherwise b->hash is set (whenever false is returned) and the head
 * is checked by it (one restored from the store has no signature here). */
bool fm__replica_holds_peeked(fm_replica *r, fm_batch *b, const uint8_t *data, size_t len);

/* Installs n membership records (binary canonical encodings of certificates and revocations, as
 * fm__replica_each_member_bin yields them) in one store transaction. Records that do not decode,
 * belong to another mesh, carry a bad signature or pass a view bound are skipped and counted in
 * r->members_skipped; records already held are neither. Returns how many were new, or a negative
 * code (FM_ENOTFOUND: in no mesh; FM_ESTORE, FM_ENOMEM: nothing was installed). */
int fm__replica_import_members(fm_replica *r, const fm_bytes *recs, size_t n);
/* BLAKE2b-256 over the sorted BLAKE2b-256 hashes of the binary encodings of every installed
 * record, and their number: equal sets give equal digests. Kept in memory (no store read). */
int fm__replica_member_digest(fm_replica *r, uint8_t out[FM_HASH_BYTES], uint32_t *count);
/* Every installed record's binary encoding (what fm__replica_import_members accepts). */
int fm__replica_each_member_bin(fm_replica *r, int (*fn)(void *arg, const uint8_t *rec, size_t len),
                                void *arg);
/* Grows whenever an install changes the installed set (a certificate, a revocation, joining a
 * mesh): a node re-checks its sessions when it moved. Starts at 0 at open. */
uint64_t fm__replica_member_epoch(const fm_replica *r);
/* Drops every clean cached record and sqlite's unused pages: for a node gone idle. */
void fm__replica_release_memory(fm_replica *r);

/* A held batch: its bytes, and its decoded header (no ops; coll points into data) so that
 * readiness checks cost no decoding. */
typedef struct fm_pending {
    uint8_t *data;
    size_t len;
    fm_batch hdr;
} fm_pending;

/* A context reference counted as absent (revocation.c): a batch applied here named (author, seq)
 * of this collection in its context while the author's feed here was below seq. */
typedef struct fm_absent_ref {
    uint8_t coll[FM_MAX_COLLECTION_LEN];
    uint32_t coll_len;
    uint8_t author[FM_ID_BYTES];
    uint64_t seq; /* the greatest such seq */
    bool stale;   /* a batch of the author at or below seq was applied since: replay the log */
} fm_absent_ref;

/* Slots of fm_replica.recent (256 KiB, given back by fm__replica_release_memory). A key is 16
 * bytes of a signature's R and 16 of its S: another valid batch with the same key, even one its
 * own author made (a fork, reusing the nonce for R), takes some 2^128 tries to find, and one that
 * does not verify is to be dropped anyway. A hit is only asked for a position its feed has
 * passed, so it never stands for a batch not held. */
#define FM_REPLICA_RECENT_SLOTS 8192u
#define FM_REPLICA_RECENT_KEY 32u

struct fm_replica {
    const fm_env *env;
    fm_identity *identity;
    uint8_t device[FM_ID_BYTES];
    fm_store *store;
    bool store_borrowed; /* fm__replica_open_on: the caller closes it */
    fm_state st;
    uint64_t hlc;
    uint64_t max_skew_ms;
    bool skew;
    fm_pending *pending;
    uint32_t npending, cpending;
    size_t pending_bytes;
    fm_batch batch;             /* scratch for decoding */
    struct fm_membership *mesh; /* NULL: in no mesh */
    fm_sigcache *sigcache;      /* borrowed; NULL: none */
    uint64_t verifies;          /* batch signature verifications actually run */
    /* The applied hook, and the batches the current ingest/commit call applied: their bytes back
     * to back in applied, batch i ending at applied_end[i]. */
    fm_applied_fn applied_fn;
    void *applied_arg;
    fm_buf applied;
    size_t *applied_end;
    uint32_t napplied, capplied;
    bool in_hook;
    /* Installed membership records (membership.c): their hashes, sorted, and the digest over
     * them (recomputed when stale); the epoch grows whenever a record is installed. */
    uint8_t (*member_hash)[FM_HASH_BYTES];
    uint32_t nmember_hash, cmember_hash;
    uint8_t member_digest[FM_HASH_BYTES];
    bool member_digest_ok;
    uint64_t member_epoch;
    uint64_t members_skipped; /* records fm__replica_import_members refused, ever */
    /* Recently applied batches by their signatures' keys (FM_REPLICA_RECENT_KEY), direct-mapped (a
     * newer one overwrites): a duplicate of one, however old its feed position, is known without a
     * store read or a hash. Emptied whenever the state is rebuilt, so it never names a batch the
     * store does not hold. */
    uint8_t (*recent)[FM_REPLICA_RECENT_KEY];
    /* Group commit of remote batches (fm__replica_set_group_commit): a store transaction left
     * open by ingest, and the batches it holds. rollbacks counts rebuilds after a failed
     * transaction: batches reported applied before then may be gone. */
    bool txn_open;
    uint32_t txn_batches, group_max;
    uint64_t rollbacks;
    /* Absent context references (revocation.c), sorted by (collection, author); the store keeps
     * them (meta "absent_refs") in step. At most one per collection and author. */
    fm_absent_ref *absent;
    uint32_t nabsent, cabsent;
};

#define FM_REPLICA_KEEP_APPLIED 1024u /* applied batches whose ends stay allocated */

/* Mesh membership (membership.c): load at open (and after a failed install: the view and the
 * record hashes are rebuilt from the store); may this batch's author write (at the batch's
 * time)? may this device write now? 0 or FM_EUNKNOWN_DEVICE, FM_EREVOKED, FM_EPERM. */
int fm__mesh_load(fm_replica *r);
int fm__mesh_check_batch(fm_replica *r, const fm_batch *b);
int fm__mesh_check_local(fm_replica *r);
void fm__mesh_free(fm_replica *r);

/* Refusals that revocations bring (revocation.c; docs/PROTOCOL.md §4.6). A device is *barred*
 * when a revocation is installed for it: its batches from an instant on are refused, so a context
 * reference to one of its batches not held here counts as absent rather than awaited. */
/* The absent references from the store (at open and after a failed transaction). */
int fm__revocation_load(fm_replica *r);
void fm__revocation_free(fm_replica *r);
/* For a batch fm_state_check held back only for its context (FM_EPENDING): 0 if every entry not
 * covered here names a barred author (*absent then tells whether any did), else FM_EPENDING. */
int fm__revocation_ready(fm_replica *r, const fm_batch *b, bool *absent);
/* After the remote batch b was applied (inside the ingest transaction): notes its absent
 * references, and marks for replay every collection where an earlier absent reference named b.
 * FM_ENOMEM, FM_ESTORE. */
int fm__revocation_applied(fm_replica *r, const fm_batch *b, bool absent);
/* Replays the log of every collection marked by fm__revocation_applied (inside the caller's
 * transaction), so that the batches naming the late one apply after it as they do everywhere. */
int fm__revocation_replay_marked(fm_replica *r);
/* Makes the installed view govern what this replica already holds of one device (inside the
 * caller's transaction, after the record was added to r->mesh): per collection the device's feed
 * is cut before its first batch the view refuses and the collection's log replayed; held batches
 * the view refuses leave the pending area. FM_ESTATE from the applied hook; FM_ENOMEM, FM_ESTORE:
 * the caller rolls back and reloads. */
int fm__revocation_enforce(fm_replica *r, const uint8_t device[FM_ID_BYTES]);
/* Ends a transaction in which fm__revocation_enforce ran: applies the held batches now ready,
 * then commits as an ingest does (or rolls back and reloads the state); after the commit the
 * applied hook sees what was released (replica.c). */
int fm__replica_finish_members(fm_replica *r, int rc);

/* Record views (record_view.c). */
int fm__record_view(fm_replica *r, const fm_coll *c, const fm_rec *rec, fm_record **out);

#endif
