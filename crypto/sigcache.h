/*
 * sigcache.h — a bounded set of batch hashes whose signature verified, so that one process
 * holding many replicas (the simulator: a thousand of them) verifies each batch once, not once
 * per replica.
 *
 * Only positive results go in. The key is the batch hash (fm_batch.hash: BLAKE2b-256 of the whole
 * encoding, signature included), so a hash in the set means bytes identical to bytes that
 * verified. Open addressing, no deletion; once max_entries are held, adds are ignored (callers
 * then simply verify). No globals: a cache is a handle, borrowed by the replicas that share it.
 * A plain cache is for one thread. Threads share a cache made by fm_sigcache_new_shared (it locks)
 * through plain caches of their own whose parent it is, so that a batch verifies once per
 * process and the lock is taken only on a thread's first sight of a hash.
 */
#ifndef FM_SIGCACHE_H
#define FM_SIGCACHE_H

#include "crdt/base.h"

/* At most this many entries per cache (16 Mi: 1 GiB of table). */
#define FM_SIGCACHE_MAX_ENTRIES (1u << 24)

typedef struct fm_sigcache fm_sigcache;

/* FM_EINVAL: max_entries 0 or past FM_SIGCACHE_MAX_ENTRIES; FM_ENOMEM. */
int fm_sigcache_new(uint32_t max_entries, fm_sigcache **out);
/* The same, but every call on it takes its lock: several threads may use it at once. */
int fm_sigcache_new_shared(uint32_t max_entries, fm_sigcache **out);
void fm_sigcache_free(fm_sigcache *c);
/* From now on c looks up its misses in parent (and keeps those found), and adds go to both.
 * parent outlives c; it is shared, or used by c's thread only. */
void fm_sigcache_set_parent(fm_sigcache *c, fm_sigcache *parent);
bool fm_sigcache_has(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES]);
/* Adds hash (a no-op if held, or if the cache is full). */
void fm_sigcache_add(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES]);
/* Entries held (in c itself, not its parent). */
uint32_t fm_sigcache_count(fm_sigcache *c);

#endif
