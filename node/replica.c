/*
 * replica.c — the fm_replica handle: local transactions become signed batches that are durable
 * before commit returns; remote batches are verified, checked against their feed and causal
 * context, applied or held in the bounded pending area, and persisted many per transaction.
 * The sqlite store is the truth: after any failed transaction the in-memory state is rebuilt
 * from it.
 */
#include "node/replica.h"

#include "crdt/hlc.h"
#include "crypto/cert.h"
#include "crypto/identity.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct fm_txn {
    fm_replica *r;
    fm_coll *coll; /* NULL until the collection exists */
    uint8_t name[FM_MAX_COLLECTION_LEN];
    uint32_t name_len;
    fm_buf ops;
    uint32_t nops;
    fm_buf fresh; /* "id\0field\0" per field the ops add; "id\0\0" per record they delete */
};

static int state_load(void *arg, fm_coll *c, const uint8_t *id, uint32_t len, fm_buf *out)
{
    fm_replica *r = arg;
    return fm_store_load_record(r->store, c, id, len, out);
}

static int state_save(void *arg, fm_coll *c, const fm_rec *rec, const uint8_t *enc, size_t len,
                      uint32_t conflicts)
{
    fm_replica *r = arg;
    return fm_store_save_record(r->store, c, fm_rec_id(rec), rec->id_len, enc, len, conflicts);
}

/* Rebuilds the in-memory state from the store (at open, and after a failed transaction). */
static int replica_reload(fm_replica *r)
{
    free(r->recent);
    r->recent = NULL;
    fm_state_reset(&r->st);
    int rc = fm_store_load_state(r->store, &r->st);
    return rc ? rc : fm__revocation_load(r);
}

/* The clock is kept with the data it stamped, so a reopened replica never stamps a write below
 * one it made or saw before (hlc.h: every tick exceeds all earlier ones), whatever its wall
 * clock says after a restart. Big-endian, 8 bytes; a store without it starts from 0. */
static int hlc_save(fm_replica *r)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(r->hlc >> (56 - 8 * i));
    return fm_store_meta_set(r->store, "hlc", b, sizeof b);
}

static int hlc_load(fm_replica *r)
{
    fm_buf b;
    fm_buf_init(&b);
    int rc = fm_store_meta_get(r->store, "hlc", &b);
    if (rc == FM_ENOTFOUND)
        rc = 0;
    else if (!rc && b.len != 8)
        rc = FM_ESTORE;
    for (size_t i = 0; !rc && i < b.len; i++)
        r->hlc = r->hlc << 8 | b.data[i];
    fm_buf_free(&b);
    return rc;
}

static int replica_open(const fm_replica_config *cfg, fm_store *st, fm_replica **out)
{
    if (!cfg || cfg->version != FM_REPLICA_CONFIG_VERSION || !cfg->identity || !out)
        return FM_EINVAL;
    if (sodium_init() < 0)
        return FM_ENOMEM;
    fm_replica *r = calloc(1, sizeof *r);
    if (!r)
        return FM_ENOMEM;
    r->env = cfg->env ? cfg->env : fm_env_system();
    r->max_skew_ms = cfg->max_skew_ms ? cfg->max_skew_ms : FM_HLC_DEFAULT_MAX_SKEW_MS;
    fm_batch_init(&r->batch);
    fm_buf_init(&r->applied);
    fm_state_io io = {r, state_load, state_save};
    fm_state_init(&r->st, &io);
    int rc = fm_identity_dup(cfg->identity, &r->identity);
    if (rc)
        goto fail;
    fm_identity_public(r->identity, r->device);
    r->store = st;
    r->store_borrowed = st != NULL;
    if ((!st && (rc = fm_store_open(cfg->path, &r->store))) || (rc = replica_reload(r)) ||
        (rc = hlc_load(r)) || (rc = fm__mesh_load(r)))
        goto fail;
    *out = r;
    return 0;
fail:
    fm_replica_close(r);
    return rc;
}

int fm_replica_open(const fm_replica_config *cfg, fm_replica **out)
{
    return replica_open(cfg, NULL, out);
}

int fm__replica_open_on(const fm_replica_config *cfg, fm_store *st, fm_replica **out)
{
    return st ? replica_open(cfg, st, out) : FM_EINVAL;
}

static void pending_clear(fm_replica *r)
{
    for (uint32_t i = 0; i < r->npending; i++) {
        free(r->pending[i].data);
        fm_batch_free(&r->pending[i].hdr);
    }
    r->npending = 0;
    r->pending_bytes = 0;
}

void fm_replica_close(fm_replica *r)
{
    if (!r)
        return;
    fm__replica_flush(r); /* what fails to commit came from peers, who still hold it */
    pending_clear(r);
    free(r->pending);
    fm_batch_free(&r->batch);
    fm_buf_free(&r->applied);
    free(r->applied_end);
    fm_state_free(&r->st);
    free(r->recent);
    fm__revocation_free(r);
    fm__mesh_free(r);
    if (!r->store_borrowed)
        fm_store_close(r->store);
    else if (r->store)
        fm_store_rollback(r->store); /* whatever the flush could not commit */
    fm_identity_free(r->identity);
    free(r);
}

void fm_replica_device_id(const fm_replica *r, uint8_t out[FM_ID_BYTES])
{
    memcpy(out, r->device, FM_ID_BYTES);
}

/* ---- the applied hook ------------------------------------------------------------------------ */

void fm__replica_set_applied_hook(fm_replica *r, fm_applied_fn fn, void *arg)
{
    r->applied_fn = fn;
    r->applied_arg = arg;
}

/* Forgets what the previous call applied (and a big buffer with it). */
static void applied_reset(fm_replica *r)
{
    r->napplied = 0;
    fm_buf_recycle(&r->applied, FM_MAX_BATCH_BYTES);
    /* A catch-up applies thousands of batches in one group: their ends are not kept. */
    if (r->capplied > FM_REPLICA_KEEP_APPLIED) {
        free(r->applied_end);
        r->applied_end = NULL;
        r->capplied = 0;
    }
}

/* Keeps a copy of an applied batch for the hook (only when there is one). */
static int applied_note(fm_replica *r, const uint8_t *data, size_t len)
{
    if (!r->applied_fn)
        return 0;
    if (fm_grow((void **)&r->applied_end, r->napplied, &r->capplied, sizeof *r->applied_end) ||
        fm_buf_append(&r->applied, data, len)) {
        r->applied.oom = false;
        return FM_ENOMEM;
    }
    r->applied_end[r->napplied++] = r->applied.len;
    return 0;
}

/* After the call's transaction committed: the hook sees every batch it applied, in order. */
static void applied_fire(fm_replica *r)
{
    if (!r->applied_fn)
        return;
    r->in_hook = true;
    for (uint32_t i = 0; i < r->napplied; i++) {
        size_t start = i ? r->applied_end[i - 1] : 0;
        r->applied_fn(r->applied_arg, r->applied.data + start, r->applied_end[i] - start);
    }
    r->in_hook = false;
    applied_reset(r);
}

/* ---- signatures ------------------------------------------------------------------------------ */

void fm__replica_set_sigcache(fm_replica *r, fm_sigcache *c)
{
    r->sigcache = c;
    if (r->mesh)
        fm_membership_set_sigcache(r->mesh, c);
}

/* fm_batch_verify, skipped for bytes the cache saw verify (the hash covers every byte). */
static int verify_batch(fm_replica *r, const fm_batch *b, const uint8_t *data, size_t len)
{
    if (r->sigcache && fm_sigcache_has(r->sigcache, b->hash))
        return 0;
    r->verifies++;
    int rc = fm_batch_verify(b, data, len);
    if (!rc && r->sigcache)
        fm_sigcache_add(r->sigcache, b->hash);
    return rc;
}

/* ---- applying batches (local and remote share this path) ---------------------------------- */

static uint32_t recent_slot(const uint8_t sig[FM_SIG_BYTES])
{
    uint32_t x;
    memcpy(&x, sig, sizeof x); /* of R, a point the signer derived from a secret nonce */
    return x % FM_REPLICA_RECENT_SLOTS;
}

/* A signature's key in recent: half of R (the nonce's point), half of S (the nonce and the
 * message under the author's key). */
static void recent_key(const uint8_t sig[FM_SIG_BYTES], uint8_t key[FM_REPLICA_RECENT_KEY])
{
    _Static_assert(FM_REPLICA_RECENT_KEY == FM_SIG_BYTES / 2, "16 bytes of R, 16 of S");
    memcpy(key, sig, FM_SIG_BYTES / 4);
    memcpy(key + FM_SIG_BYTES / 4, sig + FM_SIG_BYTES / 2, FM_SIG_BYTES / 4);
}

static void recent_add(fm_replica *r, const uint8_t sig[FM_SIG_BYTES])
{
    if (!r->recent && !(r->recent = calloc(FM_REPLICA_RECENT_SLOTS, sizeof *r->recent)))
        return; /* out of memory: duplicates take the store path */
    recent_key(sig, r->recent[recent_slot(sig)]);
}

static bool recent_has(const fm_replica *r, const uint8_t sig[FM_SIG_BYTES])
{
    uint8_t key[FM_REPLICA_RECENT_KEY];
    recent_key(sig, key);
    return r->recent && memcmp(r->recent[recent_slot(sig)], key, sizeof key) == 0;
}

static const fm_feed *feed_of(fm_replica *r, const fm_batch *b)
{
    fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    return c ? fm_coll_feed(&r->st, c, b->author) : NULL;
}

bool fm__replica_holds(fm_replica *r, const fm_batch *b)
{
    const fm_feed *f = feed_of(r, b);
    uint64_t last = fm_batch_last_seq(b);
    if (!f || f->seq < last)
        return false;
    if (f->seq == last)
        return memcmp(f->head, b->hash, FM_HASH_BYTES) == 0;
    return recent_has(r, b->sig);
}

bool fm__replica_holds_peeked(fm_replica *r, fm_batch *b, const uint8_t *data, size_t len)
{
    const fm_feed *f = feed_of(r, b);
    const uint8_t *sig = fm_batch_sig_tail(data, len);
    uint64_t last = fm_batch_last_seq(b);
    if (f && sig && f->seq > last && recent_has(r, sig))
        return true;
    if (f && sig && f->seq == last && f->head_sig_set &&
        memcmp(sig, f->head_sig, FM_SIG_BYTES) == 0)
        return true;
    fm_batch_hash(data, len, b->hash);
    /* A head restored from the store has its hash, not its signature. */
    return f && f->seq == last && memcmp(f->head, b->hash, FM_HASH_BYTES) == 0;
}

/* Applies a checked batch to state and store (inside the caller's transaction). */
static int apply_checked(fm_replica *r, const fm_batch *b, const uint8_t *data, size_t len)
{
    int rc = fm_state_apply(&r->st, b);
    if (rc)
        return rc;
    fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    FM_ASSERT(c);
    if ((rc = fm_store_coll_ensure(r->store, c)) ||
        (rc = fm_store_put_batch(r->store, c, b, data, len)))
        return rc;
    recent_add(r, b->sig);
    return applied_note(r, data, len);
}

/* Flushes dirty records and collection aggregates, then commits; on failure rolls back and
 * rebuilds the state from the store. */
static int finish_txn(fm_replica *r, int rc)
{
    if (!rc)
        rc = hlc_save(r);
    if (!rc)
        rc = fm_state_flush(&r->st);
    /* Only collections this transaction changed: a node may hold many. */
    for (uint32_t i = 0; !rc && i < r->st.ncolls; i++)
        if (r->st.colls[i]->store_id && r->st.colls[i]->agg_dirty)
            rc = fm_store_coll_save(r->store, r->st.colls[i]);
    if (!rc)
        rc = fm_store_commit(r->store);
    for (uint32_t i = 0; !rc && i < r->st.ncolls; i++)
        r->st.colls[i]->agg_dirty = false;
    r->txn_open = false;
    r->txn_batches = 0;
    if (rc) {
        fm_store_rollback(r->store);
        r->rollbacks++;
        int rrc = replica_reload(r);
        FM_ASSERT(rrc == 0 || rrc == FM_ENOMEM || rrc == FM_ESTORE);
        return rc;
    }
    fm_state_trim(&r->st, FM_STATE_CACHE_RECORDS);
    return 0;
}

void fm__replica_set_group_commit(fm_replica *r, uint32_t max_batches)
{
    r->group_max = max_batches;
}

int fm__replica_flush(fm_replica *r)
{
    return r->txn_open ? finish_txn(r, 0) : 0;
}

int fm__replica_begin(fm_replica *r)
{
    int rc = fm__replica_flush(r);
    return rc ? rc : fm_store_begin(r->store);
}

/* ---- local transactions ---------------------------------------------------------------------- */

int fm_txn_begin(fm_replica *r, const char *collection, fm_txn **out)
{
    size_t n = collection ? strlen(collection) : 0;
    int rc = fm_name_check((const uint8_t *)collection, n, FM_MAX_COLLECTION_LEN);
    if (rc)
        return rc;
    fm_txn *t = calloc(1, sizeof *t);
    if (!t)
        return FM_ENOMEM;
    t->r = r;
    memcpy(t->name, collection, n);
    t->name_len = (uint32_t)n;
    fm_buf_init(&t->ops);
    fm_buf_init(&t->fresh);
    *out = t;
    return 0;
}

void fm_txn_abort(fm_txn *t)
{
    if (!t)
        return;
    fm_buf_free(&t->ops);
    fm_buf_free(&t->fresh);
    free(t);
}

/* Fields the transaction's earlier ops add to record id; *has if field is one of them,
 * *deleted if an earlier op deletes the record (field names are never empty). */
static uint32_t txn_fresh_fields(const fm_txn *t, const char *id, const char *field, bool *has,
                                 bool *deleted)
{
    uint32_t n = 0;
    *has = *deleted = false;
    for (size_t off = 0; off < t->fresh.len;) {
        const char *fid = (const char *)t->fresh.data + off;
        const char *fname = fid + strlen(fid) + 1;
        off += strlen(fid) + strlen(fname) + 2;
        if (strcmp(fid, id) != 0)
            continue;
        if (!fname[0]) {
            *deleted = true;
            continue;
        }
        n++;
        *has |= field && strcmp(fname, field) == 0;
    }
    return n;
}

/* Checks a local op against the record as it stands plus the transaction's earlier ops:
 * deleted records refuse writes, and a record may not grow past FM_MAX_FIELDS_PER_RECORD
 * fields. *fresh tells the op adds a field. */
static int txn_check_record(fm_txn *t, const char *id, size_t id_len, const char *field,
                            bool *fresh)
{
    *fresh = false;
    fm_coll *c = fm_state_coll(&t->r->st, t->name, t->name_len);
    int rc = 0;
    fm_rec *rec =
        c ? fm_state_record(&t->r->st, c, (const uint8_t *)id, (uint32_t)id_len, &rc) : NULL;
    if (rc)
        return rc;
    bool has, deleted;
    uint32_t n = (rec ? rec->nfields : 0) + txn_fresh_fields(t, id, field, &has, &deleted);
    if ((rec && rec->deleted) || deleted)
        return FM_EDELETED; /* also within this transaction: the write would vanish */
    if (!field)
        return 0;
    if (has || (rec && fm_rec_field(rec, (const uint8_t *)field, (uint32_t)strlen(field))))
        return 0;
    if (n >= FM_MAX_FIELDS_PER_RECORD)
        return FM_ELIMIT;
    *fresh = true;
    return 0;
}

static int txn_op(fm_txn *t, fm_op_type type, const char *id, const char *field, const fm_value *v)
{
    if (!t || !id)
        return FM_EINVAL;
    size_t id_len = strlen(id), field_len = field ? strlen(field) : 0;
    int rc = fm_name_check((const uint8_t *)id, id_len, FM_MAX_RECORD_ID_LEN);
    if (!rc && type != FM_OP_DELETE)
        rc = field ? fm_name_check((const uint8_t *)field, field_len, FM_MAX_FIELD_LEN) : FM_EINVAL;
    if (!rc && v)
        rc = fm_value_check(v);
    if (!rc && t->nops >= FM_MAX_BATCH_OPS)
        rc = FM_ELIMIT;
    bool fresh;
    if (!rc)
        rc = txn_check_record(t, id, id_len, type == FM_OP_DELETE ? NULL : field, &fresh);
    if (rc)
        return rc;
    fm_buf val;
    fm_buf_init(&val);
    size_t mark = t->ops.len, fresh_mark = t->fresh.len;
    if (v && (rc = fm_value_encode(v, &val)))
        goto out;
    rc = fm_op_encode(&t->ops, type, id, id_len, field, field_len, v ? val.data : NULL, val.len);
    if (!rc && t->ops.len > FM_MAX_BATCH_BYTES - 4096)
        rc = FM_ELIMIT;
    if (!rc && (fresh || type == FM_OP_DELETE) &&
        (fm_buf_append(&t->fresh, id, id_len + 1) ||
         fm_buf_append(&t->fresh, type == FM_OP_DELETE ? "" : field, field_len + 1)))
        rc = FM_ENOMEM;
    if (rc)
        t->ops.len = mark, t->fresh.len = fresh_mark; /* the transaction stays as it was */
    else
        t->nops++;
out:
    t->ops.oom = false;
    t->fresh.oom = false;
    fm_buf_free(&val);
    return rc;
}

int fm_txn_set(fm_txn *t, const char *id, const char *field, fm_kind kind, fm_value v)
{
    if (kind != FM_KIND_LWW && kind != FM_KIND_MV)
        return FM_EKIND;
    return txn_op(t, kind == FM_KIND_MV ? FM_OP_SET_MV : FM_OP_SET_LWW, id, field, &v);
}

int fm_txn_incr(fm_txn *t, const char *id, const char *field, int64_t delta)
{
    fm_value v = fm_value_int(delta);
    return txn_op(t, FM_OP_INCR, id, field, &v);
}

int fm_txn_set_add(fm_txn *t, const char *id, const char *field, fm_value elem)
{
    return txn_op(t, FM_OP_ADD, id, field, &elem);
}

int fm_txn_set_remove(fm_txn *t, const char *id, const char *field, fm_value elem)
{
    return txn_op(t, FM_OP_REMOVE, id, field, &elem);
}

int fm_txn_delete(fm_txn *t, const char *id)
{
    return txn_op(t, FM_OP_DELETE, id, NULL, NULL);
}

/* Encodes and signs the transaction's batch against the current feed head. The causal context
 * names only what the ops supersede here (fm_state_context; state.c says why the outcome equals
 * that of the whole collection vector): with a thousand authors in a collection the whole vector
 * would cost ~35 KB per batch. */
static int txn_encode(fm_txn *t, fm_buf *out)
{
    fm_replica *r = t->r;
    fm_vv ctx;
    fm_vv_init(&ctx);
    /* The ops read back from their encoding, with r->batch as scratch (they borrow t->ops). */
    int rc = fm_batch_decode_ops(t->ops.data, t->ops.len, t->nops, &r->batch);
    FM_ASSERT(rc == 0 || rc == FM_ENOMEM);
    if (!rc)
        rc = fm_state_context(&r->st, t->name, t->name_len, r->device, r->batch.ops, r->batch.nops,
                              &ctx);
    r->batch.nops = 0;
    if (rc)
        goto out;
    /* Looked up after the context: it may load records, never collections or feeds. */
    fm_coll *c = fm_state_coll(&r->st, t->name, t->name_len);
    const fm_feed *f = c ? fm_coll_feed(&r->st, c, r->device) : NULL;
    fm_batch_head h = {.coll = t->name,
                       .coll_len = t->name_len,
                       .first_seq = (f ? f->seq : 0) + 1,
                       .prev = f ? f->head : NULL,
                       .ctx = &ctx,
                       .hlc = fm_hlc_tick(&r->hlc, r->env->now_ms(r->env->ctx)),
                       .nops = t->nops};
    rc = fm_batch_encode(r->identity, &h, t->ops.data, t->ops.len, out);
out:
    fm_vv_free(&ctx);
    return rc;
}

int fm_txn_commit(fm_txn *t)
{
    if (!t)
        return FM_EINVAL;
    fm_replica *r = t->r;
    int rc = 0;
    if (r->in_hook) {
        rc = FM_ESTATE;
        goto out;
    }
    if (t->nops == 0)
        goto out; /* nothing to write is not an error */
    if ((rc = fm__mesh_check_local(r)))
        goto out;
    applied_reset(r);
    fm_buf enc;
    fm_buf_init(&enc);
    if ((rc = txn_encode(t, &enc)))
        goto out_enc;
    /* Read back what we signed through the same strict path a peer will use. */
    rc = fm_batch_decode(enc.data, enc.len, &r->batch);
    FM_ASSERT(rc == 0 || rc == FM_ENOMEM);
    FM_ASSERT(rc || fm_batch_verify(&r->batch, enc.data, enc.len) == 0);
    FM_ASSERT(rc || fm_state_check(&r->st, &r->batch) == 0);
    if (rc || (rc = fm__replica_begin(r)))
        goto out_enc;
    rc = finish_txn(r, apply_checked(r, &r->batch, enc.data, enc.len));
    if (!rc && r->sigcache)
        fm_sigcache_add(r->sigcache, r->batch.hash); /* verified just above */
    if (!rc)
        applied_fire(r);
out_enc:
    fm_buf_free(&enc);
out:
    fm_txn_abort(t);
    return rc;
}

/* ---- remote batches -------------------------------------------------------------------------- */

/* A batch for feed positions we already hold is a duplicate if it is the very batch we hold
 * (the same bytes: no signature check needed); anything else signed by the author is a fork. So is
 * a batch next in line that does not chain onto the head we hold (chain_break). A fork's proof,
 * both signed batches, is kept: only once the new one's signature checks out. */
static int classify_old(fm_replica *r, const fm_batch *b, const uint8_t *data, size_t len,
                        bool chain_break, bool verified)
{
    fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    uint64_t seq = chain_break ? b->first_seq - 1 : b->first_seq;
    fm_buf have;
    fm_buf_init(&have);
    int rc = fm_store_batch_at(r->store, c, b->author, seq, &have);
    if (rc == FM_ENOTFOUND)
        rc = FM_ESTORE; /* the vector says we hold it: the store disagrees */
    if (rc == 0 && !chain_break && have.len == len && memcmp(have.data, data, len) == 0)
        rc = FM_EDUP;
    else if (rc == 0 && (verified || (rc = verify_batch(r, b, data, len)) == 0))
        rc = fm_store_put_fork(r->store, b->author, have.data, have.len, data, len);
    fm_buf_free(&have);
    return rc ? rc : FM_EFORK;
}

static bool pending_has(const fm_replica *r, const uint8_t *data, size_t len)
{
    for (uint32_t i = 0; i < r->npending; i++)
        if (r->pending[i].len == len && memcmp(r->pending[i].data, data, len) == 0)
            return true;
    return false;
}

/* Holds the batch r->batch was decoded from (verified, and not held yet). */
static int pending_add(fm_replica *r, const uint8_t *data, size_t len)
{
    FM_ASSERT(!pending_has(r, data, len));
    if (r->npending >= FM_MAX_PENDING_BATCHES || r->pending_bytes + len > FM_MAX_PENDING_BYTES)
        return FM_ELIMIT;
    if (fm_grow((void **)&r->pending, r->npending, &r->cpending, sizeof *r->pending))
        return FM_ENOMEM;
    fm_pending *p = &r->pending[r->npending];
    fm_batch_init(&p->hdr);
    p->data = malloc(len);
    if (!p->data || fm_vv_copy(&p->hdr.ctx, &r->batch.ctx)) {
        free(p->data);
        fm_batch_free(&p->hdr);
        return FM_ENOMEM;
    }
    memcpy(p->data, data, len);
    p->len = len;
    fm_vv ctx = p->hdr.ctx;
    p->hdr = r->batch;
    p->hdr.ctx = ctx;
    p->hdr.coll = p->data + (r->batch.coll - data);
    p->hdr.ops = NULL; /* readiness needs the header only; nops still gives the last seq */
    p->hdr.ops_cap = 0;
    r->npending++;
    r->pending_bytes += len;
    return FM_EPENDING;
}

/* A collection's vector holds at most FM_MAX_VV_ENTRIES authors. Checked before applying: a
 * failed apply would leave the in-memory state changed part-way. */
static int vv_room(fm_replica *r, const fm_batch *b)
{
    const fm_coll *c = fm_state_coll(&r->st, b->coll, b->coll_len);
    if (c && c->vv.n >= FM_MAX_VV_ENTRIES && fm_vv_get(&c->vv, b->author) == 0)
        return FM_ELIMIT;
    return 0;
}

/* Checks and applies (or holds) one remote batch. Returns 0 if applied, FM_EPENDING if held,
 * another negative code if refused; *fatal tells store failures and failed applies, which abort
 * the transaction. The cheap checks come first, the signature only where it matters: nothing is
 * applied, held or kept as fork proof unless verified (verified: the caller already did), while
 * a duplicate of what we hold costs no verification (and the head batch, the common case of
 * gossip, no store read either). */
static int ingest_one(fm_replica *r, const uint8_t *data, size_t len, const uint8_t *hash,
                      bool verified, bool *fatal)
{
    fm_batch *b = &r->batch;
    bool partial = false;
    *fatal = false;
    int rc = hash ? fm_batch_decode_hashed(data, len, hash, b) : fm_batch_decode(data, len, b);
    if (!rc && fm__replica_holds(r, b))
        return FM_EDUP;
    if (!rc)
        rc = fm__mesh_check_batch(r, b);
    if (!rc)
        rc = fm_state_check(&r->st, b);
    bool absent = false;
    if (rc == FM_EPENDING)
        rc = fm__revocation_ready(r, b, &absent); /* a barred author's batch may never come */
    if (!rc)
        rc = vv_room(r, b);
    if (rc == FM_EDUP || rc == FM_ECHAIN)
        rc = classify_old(r, b, data, len, rc == FM_ECHAIN, verified);
    else if ((rc == FM_EGAP || rc == FM_EPENDING) && pending_has(r, data, len))
        rc = FM_EPENDING; /* held already: verified when it arrived */
    else if ((rc == FM_EGAP || rc == FM_EPENDING || rc == 0) && !verified &&
             verify_batch(r, b, data, len))
        rc = FM_ESIG;
    else if (rc == FM_EGAP || rc == FM_EPENDING)
        rc = pending_add(r, data, len);
    else if (rc == 0 && (rc = apply_checked(r, b, data, len)))
        partial = true; /* state changed part-way: only the rollback and reload undo it */
    else if (rc == 0 && (rc = fm__revocation_applied(r, b, absent)))
        partial = true;
    else if (rc == 0)
        r->skew |= fm_hlc_observe(&r->hlc, b->hlc, r->env->now_ms(r->env->ctx), r->max_skew_ms);
    *fatal = partial || rc == FM_ESTORE || rc == FM_ENOMEM;
    return rc;
}

/* Applies every held batch that has become ready, until none does. */
static int pending_drain(fm_replica *r, int *applied)
{
    for (bool progress = true; progress;) {
        progress = false;
        for (uint32_t i = 0; i < r->npending; i++) {
            fm_pending p = r->pending[i];
            int ck = fm_state_check(&r->st, &p.hdr);
            bool absent;
            if (ck == FM_EPENDING)
                ck = fm__revocation_ready(r, &p.hdr, &absent);
            if (ck == FM_EPENDING || ck == FM_EGAP)
                continue;
            /* Ready, or no longer applicable: leave the pending area either way. */
            r->pending[i] = r->pending[--r->npending];
            r->pending_bytes -= p.len;
            bool fatal;
            /* Held batches passed verification on arrival: the same bytes need not again. */
            int rc = ingest_one(r, p.data, p.len, NULL, true, &fatal);
            free(p.data);
            fm_batch_free(&p.hdr);
            if (fatal)
                return rc;
            if (rc == 0)
                (*applied)++, progress = true;
            i--;
        }
    }
    return 0;
}

int fm_replica_ingest(fm_replica *r, const fm_bytes *batches, size_t n, int *results)
{
    return fm__replica_ingest_hashed(r, batches, NULL, n, results);
}

int fm__replica_ingest_hashed(fm_replica *r, const fm_bytes *batches,
                              const uint8_t (*hashes)[FM_HASH_BYTES], size_t n, int *results)
{
    if (!r || (n && !batches))
        return FM_EINVAL;
    if (r->in_hook)
        return FM_ESTATE;
    applied_reset(r);
    int rc = r->txn_open ? 0 : fm_store_begin(r->store), applied = 0;
    if (rc)
        return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        bool fatal;
        int one = ingest_one(r, batches[i].data, batches[i].len, hashes ? hashes[i] : NULL, false,
                             &fatal);
        if (fatal)
            rc = one;
        else if (results)
            results[i] = one;
        if (one == 0 && !fatal) {
            applied++;
            rc = pending_drain(r, &applied);
        }
    }
    if (!rc)
        rc = fm__revocation_replay_marked(r); /* a late batch others named: back into order */
    r->txn_batches += (uint32_t)n;
    if (rc || r->group_max <= 1 || r->txn_batches >= r->group_max)
        rc = finish_txn(r, rc);
    else
        r->txn_open = true;
    /* The transaction rolled back: nothing of this call was applied, whatever came before. */
    for (size_t i = 0; rc && results && i < n; i++)
        results[i] = rc;
    if (rc)
        return rc;
    applied_fire(r);
    return applied;
}

int fm__replica_finish_members(fm_replica *r, int rc)
{
    int applied = 0;
    if (!rc) {
        applied_reset(r);
        rc = pending_drain(r, &applied);
    }
    if (!rc)
        rc = fm__revocation_replay_marked(r);
    if ((rc = finish_txn(r, rc)))
        return rc;
    applied_fire(r);
    return 0;
}

/* ---- export, vectors, status ----------------------------------------------------------------- */

typedef struct export_ctx {
    const fm_vv *theirs;
    fm_batch_fn fn;
    void *arg;
} export_ctx;

static int export_one(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                      const uint8_t *data, size_t len)
{
    export_ctx *x = arg;
    if (last_seq <= fm_vv_get(x->theirs, author))
        return 0;
    return x->fn(x->arg, data, len);
}

int fm__replica_batch_at(fm_replica *r, const uint8_t *coll, uint32_t coll_len,
                         const uint8_t author[FM_ID_BYTES], uint64_t seq, fm_buf *out)
{
    fm_coll *c = fm_state_coll(&r->st, coll, coll_len);
    if (!c || !c->store_id || fm_vv_get(&c->vv, author) < seq)
        return FM_ENOTFOUND;
    fm_buf_reset(out);
    int rc = fm_store_batch_at(r->store, c, author, seq, out);
    return rc == FM_ENOTFOUND ? FM_ESTORE : rc; /* the vector says we hold it */
}

/* One lacking feed in a merge export: its next batch to send, and where it sits in the log. */
typedef struct feed_cursor {
    int64_t id;
    uint64_t last;
    const uint8_t *author;
    fm_buf data;
} feed_cursor;

static void cursors_free(feed_cursor *cur, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        fm_buf_free(&cur[i].data);
    free(cur);
}

/* What theirs holds of author's feed; *j walks theirs along with the caller's walk of a vector
 * sorted the same way (by author). */
static uint64_t theirs_seq(const fm_vv *theirs, uint32_t *j, const uint8_t *author)
{
    while (*j < theirs->n && fm_id_cmp(theirs->e[*j].author, author) < 0)
        (*j)++;
    return *j < theirs->n && fm_id_cmp(theirs->e[*j].author, author) == 0 ? theirs->e[*j].seq : 0;
}

/* Yields what theirs lacks by walking the lacking feeds together in log order: one index
 * lookup per batch sent, none for the batches between. *scan > 0: not worth it (much of the
 * log from the first lacking batch on is lacking: a scan from log position *scan reads it
 * faster), nothing yielded. */
static int export_merge(fm_replica *r, const fm_coll *c, const fm_vv *theirs, fm_batch_fn fn,
                        void *arg, int64_t *scan)
{
    *scan = 0;
    feed_cursor *cur = NULL;
    uint32_t n = 0, cap = 0;
    uint64_t lacking = 0;
    int64_t from = INT64_MAX;
    int rc = 0;
    /* Both vectors are sorted by author: one walk, not a search per author. */
    uint32_t j = 0;
    for (uint32_t i = 0; i < c->vv.n && !rc; i++) {
        const fm_vv_entry *e = &c->vv.e[i];
        uint64_t have = theirs_seq(theirs, &j, e->author);
        if (e->seq <= have)
            continue;
        if (fm_grow((void **)&cur, n, &cap, sizeof *cur)) {
            rc = FM_ENOMEM;
            break;
        }
        feed_cursor *f = &cur[n];
        fm_buf_init(&f->data);
        f->author = e->author;
        n++;
        rc = fm_store_feed_next(r->store, c, e->author, have, &f->id, &f->last, &f->data);
        if (rc == FM_ENOTFOUND)
            rc = FM_ESTORE; /* the vector says we hold it */
        lacking += e->seq - have;
        from = f->id < from ? f->id : from;
    }
    int64_t max = rc ? 0 : fm_store_max_batch_id(r->store);
    if (!rc && max < 0)
        rc = (int)max;
    if (!rc && n && lacking * 4 >= (uint64_t)(max - from + 1))
        *scan = from;
    while (!rc && !*scan && n) {
        uint32_t k = 0; /* the cursor first in the log: lacking feeds are few on this path */
        for (uint32_t i = 1; i < n; i++)
            k = cur[i].id < cur[k].id ? i : k;
        feed_cursor *f = &cur[k];
        if ((rc = fn(arg, f->data.data, f->data.len)))
            break;
        rc = fm_store_feed_next(r->store, c, f->author, f->last, &f->id, &f->last, &f->data);
        if (rc == FM_ENOTFOUND) {
            fm_buf_free(&f->data);
            cur[k] = cur[--n];
            rc = 0;
        }
    }
    cursors_free(cur, n);
    return rc;
}

/* The only feed of c that theirs lacks (*have: what they hold of it); NULL if none or several. */
static const fm_vv_entry *only_lacking(const fm_coll *c, const fm_vv *theirs, uint64_t *have)
{
    const fm_vv_entry *only = NULL;
    for (uint32_t i = 0, j = 0; i < c->vv.n; i++) {
        const fm_vv_entry *e = &c->vv.e[i];
        uint64_t h = theirs_seq(theirs, &j, e->author);
        if (e->seq <= h)
            continue;
        if (only)
            return NULL;
        only = e;
        *have = h;
    }
    return only;
}

typedef struct feed_ctx {
    fm_batch_fn fn;
    void *arg;
    bool any;
} feed_ctx;

static int feed_one(void *arg, const uint8_t author[FM_ID_BYTES], uint64_t last_seq,
                    const uint8_t *data, size_t len)
{
    (void)author, (void)last_seq;
    feed_ctx *x = arg;
    x->any = true;
    return x->fn(x->arg, data, len);
}

int fm__replica_export_vv(fm_replica *r, const uint8_t *coll, uint32_t coll_len,
                          const fm_vv *theirs, fm_batch_fn fn, void *arg)
{
    if (!r || !coll || !theirs || !fn)
        return FM_EINVAL;
    fm_coll *c = fm_state_coll(&r->st, coll, coll_len);
    if (!c || !c->store_id)
        return 0;
    /* One lacking feed (a collection only its owner writes to): its order is the log's, and one
     * statement reads it, where the merge below seeks the index once per batch. */
    uint64_t have;
    const fm_vv_entry *only = only_lacking(c, theirs, &have);
    if (only) {
        feed_ctx x = {.fn = fn, .arg = arg};
        int rc = fm_store_each_feed_batch(r->store, c, only->author, have, feed_one, &x);
        return !rc && !x.any ? FM_ESTORE : rc; /* the vector says we hold it */
    }
    int64_t from;
    int rc = export_merge(r, c, theirs, fn, arg, &from);
    if (rc || !from)
        return rc;
    export_ctx x = {.theirs = theirs, .fn = fn, .arg = arg};
    return fm_store_each_batch_from(r->store, c, from, export_one, &x);
}

int fm_replica_export(fm_replica *r, const char *collection, const uint8_t *vv, size_t vvlen,
                      fm_batch_fn fn, void *arg)
{
    if (!r || !collection || !fn)
        return FM_EINVAL;
    fm_vv theirs;
    fm_vv_init(&theirs);
    int rc = vv && vvlen ? fm_vv_decode(vv, vvlen, &theirs) : 0;
    if (!rc)
        rc = fm__replica_export_vv(r, (const uint8_t *)collection, (uint32_t)strlen(collection),
                                   &theirs, fn, arg);
    fm_vv_free(&theirs);
    return rc;
}

int fm_replica_vv(fm_replica *r, const char *collection, fm_bytes *out)
{
    if (!r || !collection || !out)
        return FM_EINVAL;
    fm_coll *c = fm_state_coll(&r->st, (const uint8_t *)collection, (uint32_t)strlen(collection));
    fm_vv empty;
    fm_vv_init(&empty);
    fm_buf b;
    fm_buf_init(&b);
    int rc = fm_vv_encode(c ? &c->vv : &empty, &b);
    if (rc) {
        fm_buf_free(&b);
        return rc;
    }
    out->data = b.data;
    out->len = b.len;
    return 0;
}

int fm_replica_collections(fm_replica *r, fm_name_fn fn, void *arg)
{
    for (uint32_t i = 0; i < r->st.ncolls; i++) {
        int rc = fn(arg, r->st.colls[i]->name);
        if (rc)
            return rc;
    }
    return 0;
}

static int count_fork(void *arg, const uint8_t *author)
{
    (void)author;
    (*(uint64_t *)arg)++;
    return 0;
}

int fm_replica_status(fm_replica *r, fm_status *out)
{
    if (!r || !out)
        return FM_EINVAL;
    memset(out, 0, sizeof *out);
    int rc = fm_state_hash(&r->st, out->state_hash);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < r->st.ncolls; i++) {
        const fm_coll *c = r->st.colls[i];
        out->ops += fm_vv_total(&c->vv);
        out->records += c->live;
        out->conflicts += c->conflicts;
    }
    FM_ASSERT(out->ops == r->st.held);
    int64_t nb = fm_store_batch_count(r->store);
    if (nb < 0)
        return (int)nb;
    out->batches = (uint64_t)nb;
    out->pending = r->npending;
    out->clock_skew = r->skew;
    return fm_store_fork_authors(r->store, count_fork, &out->forked_authors);
}

int fm_replica_forks(fm_replica *r, fm_author_fn fn, void *arg)
{
    if (!r || !fn)
        return FM_EINVAL;
    return fm_store_fork_authors(r->store, fn, arg);
}

void fm__replica_release_memory(fm_replica *r)
{
    fm_state_trim(&r->st, 0);
    free(r->recent); /* only an accelerator: rebuilt as batches arrive */
    r->recent = NULL;
    fm_store_release_memory(r->store);
}
