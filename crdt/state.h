/*
 * state.h — a replica's CRDT state: collections, each with its feeds (per author: last seq and
 * head hash, which together are the version vector), its records, and order-independent
 * aggregates (XOR of record hashes, live and conflict counts). Pure: records come from and go to
 * the caller's store through the io callbacks; without a loader every record lives in memory.
 *
 * Records are cached; apply marks them dirty and fm_state_flush hands each dirty record's
 * canonical encoding to the store. If anything fails mid-way the caller resets the state and
 * reloads from its store: the store, not the cache, is the truth.
 */
#ifndef FM_STATE_H
#define FM_STATE_H

#include "crdt/batch.h"
#include "crdt/record.h"
#include "crdt/vv.h"

/* A feed's author index is in fm_coll.feed_authors, beside it. */
typedef struct fm_feed {
    bool head_sig_set; /* head_sig is the head's signature (applied here, not restored) */
    uint64_t seq;
    uint8_t head[FM_HASH_BYTES];
    uint8_t head_sig[FM_SIG_BYTES];
} fm_feed;

typedef struct fm_coll {
    char *name; /* NUL-terminated */
    uint32_t name_len;
    uint32_t name_hash; /* fm_hash32 of the name: its place in fm_state.cmap */
    int64_t store_id;   /* the store's key for this collection; 0 = not stored yet */
    fm_feed *feeds;     /* sorted by author index */
    uint32_t nfeeds, cfeeds;
    /* The author index of feeds[i], which feed_find halves: 4 bytes a probe, where a feed is
     * 112 and a node looks up the feed of every batch it receives. cfeeds entries. */
    uint32_t *feed_authors;
    fm_vv vv;     /* same content as feeds, by author key */
    fm_rec **map; /* open addressing by id hash */
    uint32_t nmap, cap;
    uint8_t xor_hash[FM_HASH_BYTES];
    uint64_t live, conflicts;
    bool agg_dirty; /* aggregates changed since the store last saved them */
    /* Every record the store holds for it is in map, so a miss needs no load: true for a
     * collection made here, false for one loaded from the store and after a trim. */
    bool complete;
    /* fm_coll_digest's cache: SUMMARY and the node's digest hash every collection's vector,
     * of which few change between two of them. */
    bool digest_ok;
    uint8_t digest[FM_HASH_BYTES];
} fm_coll;

typedef struct fm_state_io {
    void *arg;
    /* Stored encoding of a record into out (left empty if the store has none). */
    int (*load)(void *arg, fm_coll *c, const uint8_t *id, uint32_t id_len, fm_buf *out);
    /* Persist one record state (called by fm_state_flush). */
    int (*save)(void *arg, fm_coll *c, const fm_rec *r, const uint8_t *enc, size_t len,
                uint32_t conflicts);
} fm_state_io;

typedef struct fm_state {
    fm_authors authors;
    fm_coll **colls; /* sorted by name */
    uint32_t ncolls, ccolls;
    /* The same collections by name hash (open addressing, at most half full): a lookup per
     * batch per connection was a binary search of pointer-chasing name compares. */
    fm_coll **cmap;
    uint32_t cmap_cap;
    /* The collection found last: a frame's batches and a push's are mostly of one. */
    fm_coll *last;
    fm_state_io io;
    fm_rec **dirty;       /* in apply order */
    fm_coll **dirty_coll; /* the collection of each dirty record */
    uint32_t ndirty, cdirty, cdirty_coll;
    fm_rec **recs; /* scratch: the record of each op of the batch being applied */
    uint32_t crecs;
    /* Scratch: the dense context of the batch being applied, by author index, zero but for
     * the ctx_nset entries ctx_set names (cleared by the next batch: zeroing all of it for
     * each batch, O(authors), was 1.7 % of a 300-node run). */
    uint64_t *ctx_seq;
    uint32_t cctx;
    uint32_t *ctx_set;
    uint32_t ctx_nset, cctx_set;
    fm_buf scratch;
    uint64_t ops, batches; /* applied */
    uint64_t held;         /* ops held: every feed's seq, summed over the collections */
    uint64_t gen; /* moves whenever a vector or the set of collections changes; never resets */
} fm_state;

void fm_state_init(fm_state *s, const fm_state_io *io);
void fm_state_free(fm_state *s);
/* Drops every cached record and collection (after a failed store transaction). */
void fm_state_reset(fm_state *s);

fm_coll *fm_state_coll(fm_state *s, const uint8_t *name, uint32_t len);
int fm_state_coll_add(fm_state *s, const uint8_t *name, uint32_t len, fm_coll **out);
/* Forgets collection c entirely (its records, feeds and aggregates; c is freed), so that it can be
 * rebuilt from a log. Nothing may be dirty (flush first). */
void fm_state_coll_drop(fm_state *s, fm_coll *c);
/* Restores a feed position (from the store at open). */
int fm_state_set_feed(fm_state *s, fm_coll *c, const uint8_t author[FM_ID_BYTES], uint64_t seq,
                      const uint8_t head[FM_HASH_BYTES]);
const fm_feed *fm_coll_feed(const fm_state *s, const fm_coll *c, const uint8_t *author);
/* c's position in s->colls (sorted by name), by halving. */
uint32_t fm_state_coll_pos(const fm_state *s, const fm_coll *c);
/* fm_vv_digest of the collection's vector, kept until the vector changes. */
int fm_coll_digest(fm_coll *c, uint8_t out[FM_HASH_BYTES]);

/* May b be applied now? 0 yes; FM_EDUP: already applied (or overlaps what was: the caller tells
 * a duplicate from a fork); FM_EGAP: earlier batches of the feed are missing; FM_EPENDING: the
 * causal context names ops not applied yet; FM_ECHAIN: prev is not the feed's head. */
int fm_state_check(fm_state *s, const fm_batch *b);
/* The causal context for a batch of ops that author is about to write to collection coll, as seen
 * by this state: per other author, the greatest seq among the dots the ops supersede here (SET:
 * every register of the field; ADD and REMOVE: the element's dots; DELETE: every register and
 * element dot of the record; INCR: nothing). out must be empty; the author itself never appears.
 * Records are loaded as needed (errors from the loader). See state.c for why this suffices. */
int fm_state_context(fm_state *s, const uint8_t *coll, uint32_t coll_len,
                     const uint8_t author[FM_ID_BYTES], const fm_op *ops, uint32_t nops,
                     fm_vv *out);
/* Applies a checked batch: every op, the feed head and the vector. */
int fm_state_apply(fm_state *s, const fm_batch *b);

/* Looks a record up (loading it if needed); NULL with *rc = 0 if it never existed. */
fm_rec *fm_state_record(fm_state *s, fm_coll *c, const uint8_t *id, uint32_t id_len, int *rc);

/* Hands every dirty record to io.save and updates the aggregates. */
int fm_state_flush(fm_state *s);
/* Evicts clean cached records when over max (only with a loader). */
void fm_state_trim(fm_state *s, uint32_t max_cached);

/* Hash of a record state as it contributes to the collection XOR. */
void fm_state_record_hash(const fm_coll *c, const uint8_t *id, uint32_t id_len, const uint8_t *enc,
                          size_t len, uint8_t out[FM_HASH_BYTES]);
/* Hash over every collection's name, vector and record XOR, in name order. */
int fm_state_hash(fm_state *s, uint8_t out[FM_HASH_BYTES]);

#endif
