/*
 * revocation.c — what a replica holds follows the revocations it holds, whatever the order they
 * and the batches arrived in (docs/PROTOCOL.md §4.6).
 *
 * A revocation refuses its device's batches stamped at or after its effective instant. A node may
 * have applied such batches before it held the revocation: installing it cuts the device's feeds
 * before the first refused batch and rebuilds each collection concerned from its remaining log.
 * Batches of other authors stay; a context reference of theirs to a batch the log lacks, of a
 * revoked (barred) author, is *absent*: the batch applies without it. If the named batch turns out
 * to be acceptable and arrives later, the collection is replayed so that it applies first, as it
 * does on a node that got it first.
 *
 * Invariant: the state of a collection equals the replay of its log in causal order, where a
 * context reference to a batch the log lacks is dropped; so equal logs give equal states. The
 * absent references (r->absent, persisted in meta "absent_refs") say which late batches break the
 * order the log was applied in.
 */
#include "crdt/hlc.h"
#include "crypto/cert.h"
#include "node/replica.h"

#include <stdlib.h>
#include <string.h>

#define ABSENT_META "absent_refs"
/* Flush replayed records every this many batches: a long log must not pin every record. */
#define REPLAY_FLUSH_EVERY 1024

/* Does the view refuse some of this author's batches, from an instant on? */
static bool barred(const fm_replica *r, const uint8_t author[FM_ID_BYTES])
{
    return r->mesh && fm_membership_revocation(r->mesh, author);
}

/* ---- the absent references ------------------------------------------------------------------
 * Stored as one meta value: per entry [coll_len u8][coll][author 32][seq u64 big-endian]. */

static int absent_cmp(const fm_absent_ref *e, const uint8_t *coll, uint32_t coll_len,
                      const uint8_t *author)
{
    int c = fm_bytes_cmp(e->coll, e->coll_len, coll, coll_len);
    return c ? c : memcmp(e->author, author, FM_ID_BYTES);
}

static int absent_save(fm_replica *r)
{
    fm_buf b;
    fm_buf_init(&b);
    for (uint32_t i = 0; i < r->nabsent; i++) {
        const fm_absent_ref *e = &r->absent[i];
        uint8_t n = (uint8_t)e->coll_len, seq[8];
        for (int k = 0; k < 8; k++)
            seq[k] = (uint8_t)(e->seq >> (56 - 8 * k));
        fm_buf_append(&b, &n, 1);
        fm_buf_append(&b, e->coll, e->coll_len);
        fm_buf_append(&b, e->author, FM_ID_BYTES);
        fm_buf_append(&b, seq, sizeof seq);
    }
    int rc = b.oom ? FM_ENOMEM : fm_store_meta_set(r->store, ABSENT_META, b.data, b.len);
    fm_buf_free(&b);
    return rc;
}

/* Raises (or adds) the entry for (coll, author) to seq; *changed if it did. */
static int absent_note(fm_replica *r, const uint8_t *coll, uint32_t coll_len,
                       const uint8_t author[FM_ID_BYTES], uint64_t seq, bool *changed)
{
    FM_ASSERT(coll_len <= FM_MAX_COLLECTION_LEN);
    uint32_t i = 0;
    int c = 1;
    while (i < r->nabsent && (c = absent_cmp(&r->absent[i], coll, coll_len, author)) < 0)
        i++;
    if (i < r->nabsent && c == 0) {
        if (r->absent[i].seq < seq)
            r->absent[i].seq = seq, *changed = true;
        return 0;
    }
    /* At most one entry per collection and author: bounded by FM_MAX_COLLECTIONS times
     * FM_MAX_VV_ENTRIES, and in practice by the few barred devices. */
    if (fm_grow((void **)&r->absent, r->nabsent, &r->cabsent, sizeof *r->absent))
        return FM_ENOMEM;
    memmove(&r->absent[i + 1], &r->absent[i], (r->nabsent - i) * sizeof *r->absent);
    fm_absent_ref *e = &r->absent[i];
    memset(e, 0, sizeof *e);
    memcpy(e->coll, coll, coll_len);
    e->coll_len = coll_len;
    memcpy(e->author, author, FM_ID_BYTES);
    e->seq = seq;
    r->nabsent++;
    *changed = true;
    return 0;
}

/* Drops every entry of one collection (its replay recomputes them). */
static void absent_forget(fm_replica *r, const uint8_t *coll, uint32_t coll_len)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->nabsent; i++)
        if (fm_bytes_cmp(r->absent[i].coll, r->absent[i].coll_len, coll, coll_len) != 0)
            r->absent[k++] = r->absent[i];
    r->nabsent = k;
}

void fm__revocation_free(fm_replica *r)
{
    free(r->absent);
    r->absent = NULL;
    r->nabsent = r->cabsent = 0;
}

int fm__revocation_load(fm_replica *r)
{
    r->nabsent = 0;
    fm_buf b;
    fm_buf_init(&b);
    int rc = fm_store_meta_get(r->store, ABSENT_META, &b);
    if (rc == FM_ENOTFOUND)
        rc = 0;
    bool changed = false;
    for (size_t off = 0; !rc && off < b.len;) {
        size_t n = b.data[off];
        if (n == 0 || n > FM_MAX_COLLECTION_LEN || b.len - off < 1 + n + FM_ID_BYTES + 8) {
            rc = FM_ESTORE;
            break;
        }
        const uint8_t *coll = b.data + off + 1, *author = coll + n, *p = author + FM_ID_BYTES;
        uint64_t seq = 0;
        for (int k = 0; k < 8; k++)
            seq = seq << 8 | p[k];
        rc = absent_note(r, coll, (uint32_t)n, author, seq, &changed);
        off += 1 + n + FM_ID_BYTES + 8;
    }
    fm_buf_free(&b);
    return rc;
}

/* ---- ingest ---------------------------------------------------------------------------------- */

int fm__revocation_ready(fm_replica *r, const fm_batch *b, bool *absent)
{
    const fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    *absent = false;
    for (uint32_t i = 0; i < b->ctx.n; i++) {
        const fm_vv_entry *e = &b->ctx.e[i];
        if (c && fm_vv_get(&c->vv, e->author) >= e->seq)
            continue;
        if (!barred(r, e->author))
            return FM_EPENDING;
        *absent = true;
    }
    return 0;
}

/* Notes every context entry of b its collection's vector does not cover; *changed if any. */
static int note_absent_refs(fm_replica *r, const fm_coll *c, const fm_batch *b, bool *changed)
{
    int rc = 0;
    for (uint32_t i = 0; !rc && i < b->ctx.n; i++)
        if (fm_vv_get(&c->vv, b->ctx.e[i].author) < b->ctx.e[i].seq)
            rc = absent_note(r, b->coll, b->coll_len, b->ctx.e[i].author, b->ctx.e[i].seq, changed);
    return rc;
}

int fm__revocation_applied(fm_replica *r, const fm_batch *b, bool absent)
{
    if (!absent && r->nabsent == 0)
        return 0; /* the common case: nothing was or is absent */
    for (uint32_t i = 0; i < r->nabsent; i++) {
        fm_absent_ref *e = &r->absent[i];
        if (b->first_seq <= e->seq && absent_cmp(e, b->coll, b->coll_len, b->author) == 0)
            e->stale = true;
    }
    if (!absent)
        return 0;
    const fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    FM_ASSERT(c); /* b was just applied to it */
    bool changed = false;
    int rc = note_absent_refs(r, c, b, &changed);
    return !rc && changed ? absent_save(r) : rc;
}

/* ---- replaying a collection's log -------------------------------------------------------------
 */

typedef struct held {
    uint8_t *data;
    size_t len;
} held;

typedef struct replay {
    fm_replica *r;
    fm_coll *c;
    const fm_vv *final; /* what the log holds per author: references beyond it are absent */
    fm_batch b;
    held *wait; /* batches whose context the replay has not reached yet, in log order */
    uint32_t nwait, cwait;
    uint32_t since_flush;
    bool changed; /* absent references noted */
} replay;

/* Applies one logged batch if its context is reached (force: if it is next in its feed, whatever
 * its context): 0 applied, FM_EPENDING not yet, else an error (FM_ESTORE: the log is not one this
 * replica could have written). */
static int replay_try(replay *x, const uint8_t *data, size_t len, bool force)
{
    fm_replica *r = x->r;
    int rc = fm_batch_decode(data, len, &x->b);
    if (rc)
        return rc == FM_ENOMEM ? rc : FM_ESTORE;
    if (x->b.coll_len != x->c->name_len || memcmp(x->b.coll, x->c->name, x->b.coll_len) != 0)
        return FM_ESTORE;
    rc = fm_state_check(&r->st, &x->b);
    if (rc == FM_EGAP)
        return FM_EPENDING; /* an earlier batch of its feed waits */
    if (rc == FM_EPENDING) {
        /* An entry beyond what the log holds of its author waits for all the log does hold:
         * the author's batches the writer saw come first, the rest is absent. */
        for (uint32_t i = 0; i < x->b.ctx.n; i++) {
            const fm_vv_entry *e = &x->b.ctx.e[i];
            uint64_t need = FM_MIN(e->seq, fm_vv_get(x->final, e->author));
            if (fm_vv_get(&x->c->vv, e->author) < need && !force)
                return FM_EPENDING; /* the log holds it, later */
        }
        rc = note_absent_refs(r, x->c, &x->b, &x->changed);
    }
    if (rc)
        return rc == FM_ENOMEM ? rc : FM_ESTORE;
    if ((rc = fm_state_apply(&r->st, &x->b)))
        return rc;
    if (++x->since_flush >= REPLAY_FLUSH_EVERY) {
        x->since_flush = 0;
        if ((rc = fm_state_flush(&r->st)))
            return rc;
        fm_state_trim(&r->st, FM_STATE_CACHE_RECORDS);
    }
    return 0;
}

/* Retries the waiting batches until none applies. */
static int replay_waiting(replay *x)
{
    for (bool progress = true; progress;) {
        progress = false;
        for (uint32_t i = 0; i < x->nwait; i++) {
            held h = x->wait[i];
            int rc = replay_try(x, h.data, h.len, false);
            if (rc == FM_EPENDING)
                continue;
            if (rc)
                return rc;
            free(h.data);
            memmove(&x->wait[i], &x->wait[i + 1], (x->nwait - i - 1) * sizeof *x->wait);
            x->nwait--, i--;
            progress = true;
        }
    }
    return 0;
}

static int replay_one(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                      const uint8_t *data, size_t len)
{
    (void)author, (void)last_seq;
    replay *x = arg;
    int rc = replay_try(x, data, len, false);
    if (rc == 0)
        return x->nwait ? replay_waiting(x) : 0;
    if (rc != FM_EPENDING)
        return rc;
    /* Not bounded by the pending limits: the replay must take the whole log. Only batches
     * applied here before what they name wait, which absent references make rare. */
    if (fm_grow((void **)&x->wait, x->nwait, &x->cwait, sizeof *x->wait))
        return FM_ENOMEM;
    held *h = &x->wait[x->nwait];
    if (!(h->data = malloc(len)))
        return FM_ENOMEM;
    memcpy(h->data, data, len);
    h->len = len;
    x->nwait++;
    return 0;
}

/* Batches still waiting once the whole log was read name each other in a cycle, which only a
 * forking barred device can sign. Every node holding them breaks it alike: the waiting batch
 * next in its feed with the smallest hash goes first, what it lacks counted absent. */
static int replay_unstick(replay *x)
{
    while (x->nwait) {
        uint32_t best = UINT32_MAX;
        uint8_t best_hash[FM_HASH_BYTES];
        for (uint32_t i = 0; i < x->nwait; i++) {
            int rc = fm_batch_decode(x->wait[i].data, x->wait[i].len, &x->b);
            if (rc)
                return rc == FM_ENOMEM ? rc : FM_ESTORE;
            rc = fm_state_check(&x->r->st, &x->b);
            if ((rc == 0 || rc == FM_EPENDING) &&
                (best == UINT32_MAX || memcmp(x->b.hash, best_hash, FM_HASH_BYTES) < 0))
                best = i, memcpy(best_hash, x->b.hash, FM_HASH_BYTES);
        }
        if (best == UINT32_MAX)
            return FM_ESTORE; /* only gaps: the log misses a batch another one needs */
        held h = x->wait[best];
        int rc = replay_try(x, h.data, h.len, true);
        FM_ASSERT(rc != FM_EPENDING);
        if (rc)
            return rc;
        free(h.data);
        memmove(&x->wait[best], &x->wait[best + 1], (x->nwait - best - 1) * sizeof *x->wait);
        x->nwait--;
        if ((rc = replay_waiting(x)))
            return rc;
    }
    return 0;
}

/* The replayed records and the collection's new aggregates into the store (its feed heads are
 * the log's, which replay did not change). */
static int replay_save(replay *x)
{
    fm_replica *r = x->r;
    if (fm_vv_compare(&x->c->vv, x->final) != FM_VV_EQUAL)
        return FM_ESTORE; /* the state and the log disagreed */
    int rc = fm_state_flush(&r->st);
    if (!rc)
        rc = fm_store_coll_save(r->store, x->c);
    return rc;
}

/* Rebuilds collection c (its state and feed heads, dropped here) from its stored log, which holds
 * exactly `final` per author. c is freed; the rebuilt one (if its log is not empty) takes its
 * place. Inside the caller's transaction. */
static int replay_coll(fm_replica *r, fm_coll *c, const fm_vv *final)
{
    FM_ASSERT(c->store_id);
    uint8_t name[FM_MAX_COLLECTION_LEN];
    uint32_t len = c->name_len;
    int64_t id = c->store_id;
    memcpy(name, c->name, len);
    int rc = fm_state_flush(&r->st); /* the records we drop may be dirty; other collections' too */
    if (!rc)
        rc = fm_store_coll_reset(r->store, c);
    if (rc < 0)
        return rc;
    fm_state_coll_drop(&r->st, c);
    absent_forget(r, name, len);
    replay x = {.r = r, .final = final, .changed = true};
    fm_batch_init(&x.b);
    if (rc == 1) {
        rc = 0; /* nothing left of it: gone, as on a node that never had it */
    } else if ((rc = fm_state_coll_add(&r->st, name, len, &x.c)) == 0) {
        x.c->store_id = id;
        rc = fm_store_each_batch(r->store, x.c, replay_one, &x);
        if (!rc)
            rc = replay_unstick(&x);
        if (!rc)
            rc = replay_save(&x);
        x.c->agg_dirty = true; /* finish_txn saves it again after its own flush */
    }
    for (uint32_t i = 0; i < x.nwait; i++)
        free(x.wait[i].data);
    free(x.wait);
    fm_batch_free(&x.b);
    return !rc && x.changed ? absent_save(r) : rc;
}

int fm__revocation_replay_marked(fm_replica *r)
{
    for (uint32_t i = 0; i < r->nabsent; i++) {
        if (!r->absent[i].stale)
            continue;
        fm_coll *c = fm_state_coll(&r->st, r->absent[i].coll, r->absent[i].coll_len);
        FM_ASSERT(c && c->store_id); /* a batch of it was applied in this transaction */
        fm_vv final;
        fm_vv_init(&final);
        int rc = fm_vv_copy(&final, &c->vv);
        if (!rc)
            rc = replay_coll(r, c, &final); /* drops this collection's entries, stale or not */
        fm_vv_free(&final);
        if (rc)
            return rc;
        i = UINT32_MAX; /* entries moved: look again from the start */
    }
    return 0;
}

/* ---- enforcing the view on what is held ------------------------------------------------------ */

typedef struct cut {
    fm_replica *r;
    fm_batch b;
    uint64_t seq; /* first seq of the first refused batch; 0 = none */
} cut;

static int find_cut(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                    const uint8_t *data, size_t len)
{
    (void)author, (void)last_seq;
    cut *x = arg;
    int rc = fm_batch_decode(data, len, &x->b);
    if (rc)
        return rc == FM_ENOMEM ? rc : FM_ESTORE;
    if (fm__mesh_check_batch(x->r, &x->b) == 0)
        return 0;
    x->seq = x->b.first_seq;
    return 1; /* stop: the rest of the feed hangs on this one */
}

/* Cuts the device's feed in collection c before its first refused batch and replays c. */
static int enforce_coll(fm_replica *r, fm_coll *c, const uint8_t device[FM_ID_BYTES])
{
    cut x = {.r = r};
    fm_batch_init(&x.b);
    int rc = fm_store_each_feed_batch(r->store, c, device, 0, find_cut, &x);
    fm_batch_free(&x.b);
    if (rc < 0 || x.seq == 0)
        return rc < 0 ? rc : 0;
    fm_vv final;
    fm_vv_init(&final);
    rc = fm_store_drop_feed_from(r->store, c, device, x.seq);
    FM_ASSERT(rc != 0); /* find_cut read it */
    if (rc > 0)
        rc = fm_vv_copy(&final, &c->vv);
    if (!rc)
        rc = fm_vv_set(&final, device, x.seq - 1);
    if (!rc)
        rc = replay_coll(r, c, &final);
    fm_vv_free(&final);
    return rc;
}

/* Held batches the view now refuses leave the pending area (they would wait there forever). */
static void purge_pending(fm_replica *r)
{
    for (uint32_t i = 0; i < r->npending; i++) {
        fm_pending *p = &r->pending[i];
        if (fm__mesh_check_batch(r, &p->hdr) == 0)
            continue;
        r->pending_bytes -= p->len;
        free(p->data);
        fm_batch_free(&p->hdr);
        r->pending[i--] = r->pending[--r->npending];
    }
}

int fm__revocation_enforce(fm_replica *r, const uint8_t device[FM_ID_BYTES])
{
    if (r->in_hook)
        return FM_ESTATE;
    if (!r->mesh)
        return 0;
    /* By name: a replay replaces its collection, or removes it. */
    uint32_t n = r->st.ncolls;
    char(*names)[FM_MAX_COLLECTION_LEN] = n ? calloc(n, sizeof *names) : NULL;
    uint32_t *lens = n ? calloc(n, sizeof *lens) : NULL;
    int rc = n && (!names || !lens) ? FM_ENOMEM : 0;
    for (uint32_t i = 0; !rc && i < n; i++) {
        lens[i] = r->st.colls[i]->name_len;
        memcpy(names[i], r->st.colls[i]->name, lens[i]);
    }
    for (uint32_t i = 0; !rc && i < n; i++) {
        fm_coll *c = fm_state_coll(&r->st, (const uint8_t *)names[i], lens[i]);
        if (c && c->store_id && fm_coll_feed(&r->st, c, device))
            rc = enforce_coll(r, c, device);
    }
    free(names);
    free(lens);
    if (!rc)
        purge_pending(r);
    return rc;
}
