/*
 * state.c — collections, the record cache, causal checks and batch application. Outputs never
 * depend on hash-map iteration order: dirty records are flushed in apply order, and the state
 * hash combines records through XOR.
 */
#include "crdt/state.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void fm_state_init(fm_state *s, const fm_state_io *io)
{
    memset(s, 0, sizeof *s);
    fm_authors_init(&s->authors);
    fm_buf_init(&s->scratch);
    if (io)
        s->io = *io;
}

static void coll_free(fm_coll *c)
{
    for (uint32_t i = 0; i < c->cap; i++)
        fm_rec_free(c->map[i]);
    free(c->map);
    free(c->feeds);
    free(c->feed_authors);
    fm_vv_free(&c->vv);
    free(c->name);
    free(c);
}

void fm_state_reset(fm_state *s)
{
    for (uint32_t i = 0; i < s->ncolls; i++)
        coll_free(s->colls[i]);
    s->ncolls = 0;
    s->last = NULL;
    if (s->cmap)
        memset(s->cmap, 0, s->cmap_cap * sizeof *s->cmap);
    s->ndirty = 0;
    s->ops = s->batches = s->held = 0;
    s->gen++;
}

void fm_state_free(fm_state *s)
{
    fm_state_reset(s);
    free(s->colls);
    free(s->cmap);
    free(s->dirty);
    free(s->dirty_coll);
    free(s->recs);
    free(s->ctx_seq);
    free(s->ctx_set);
    fm_buf_free(&s->scratch);
    fm_authors_free(&s->authors);
    memset(s, 0, sizeof *s);
}

static uint32_t coll_find(const fm_state *s, const uint8_t *name, uint32_t len, bool *found)
{
    uint32_t lo = 0, hi = s->ncolls;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c =
            fm_bytes_cmp((const uint8_t *)s->colls[mid]->name, s->colls[mid]->name_len, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

uint32_t fm_state_coll_pos(const fm_state *s, const fm_coll *c)
{
    bool found;
    uint32_t i = coll_find(s, (const uint8_t *)c->name, c->name_len, &found);
    FM_ASSERT(found && s->colls[i] == c);
    return i;
}

/* The slot of name in cmap: the collection's, or the empty one where it would go. */
static fm_coll **cmap_slot(const fm_state *s, const uint8_t *name, uint32_t len, uint32_t h)
{
    for (uint32_t i = h & (s->cmap_cap - 1);; i = (i + 1) & (s->cmap_cap - 1)) {
        fm_coll *c = s->cmap[i];
        if (!c || (c->name_hash == h && c->name_len == len && memcmp(c->name, name, len) == 0))
            return &s->cmap[i];
    }
}

/* Refills cmap from colls, at least twice as large as the collections need. */
static int cmap_build(fm_state *s, uint32_t need)
{
    uint32_t cap = s->cmap_cap ? s->cmap_cap : 16;
    while (cap < need * 2)
        cap *= 2;
    if (cap != s->cmap_cap) {
        fm_coll **m = fm_calloc(cap, sizeof *m);
        if (!m)
            return FM_ENOMEM;
        free(s->cmap);
        s->cmap = m;
        s->cmap_cap = cap;
    } else {
        memset(s->cmap, 0, cap * sizeof *s->cmap);
    }
    for (uint32_t i = 0; i < s->ncolls; i++) {
        fm_coll *c = s->colls[i];
        *cmap_slot(s, (const uint8_t *)c->name, c->name_len, c->name_hash) = c;
    }
    return 0;
}

fm_coll *fm_state_coll(fm_state *s, const uint8_t *name, uint32_t len)
{
    fm_coll *c = s->last;
    if (c && c->name_len == len && memcmp(c->name, name, len) == 0)
        return c;
    if (!s->ncolls)
        return NULL;
    c = *cmap_slot(s, name, len, fm_hash32(name, len));
    if (c)
        s->last = c;
    return c;
}

int fm_state_coll_add(fm_state *s, const uint8_t *name, uint32_t len, fm_coll **out)
{
    if ((*out = fm_state_coll(s, name, len)))
        return 0;
    bool found;
    uint32_t i = coll_find(s, name, len, &found);
    FM_ASSERT(!found);
    if (s->ncolls >= FM_MAX_COLLECTIONS)
        return FM_ELIMIT;
    if ((s->ncolls + 1) * 2 > s->cmap_cap && cmap_build(s, s->ncolls + 1))
        return FM_ENOMEM;
    if (fm_grow((void **)&s->colls, s->ncolls, &s->ccolls, sizeof *s->colls))
        return FM_ENOMEM;
    fm_coll *c = calloc(1, sizeof *c);
    if (!c || !(c->name = fm_strndup((const char *)name, len))) {
        free(c);
        return FM_ENOMEM;
    }
    c->name_len = len;
    c->name_hash = fm_hash32(name, len);
    c->complete = true;
    fm_vv_init(&c->vv);
    memmove(&s->colls[i + 1], &s->colls[i], (s->ncolls - i) * sizeof *s->colls);
    s->colls[i] = c;
    s->ncolls++;
    *cmap_slot(s, name, len, c->name_hash) = c;
    s->gen++;
    *out = c;
    return 0;
}

void fm_state_coll_drop(fm_state *s, fm_coll *c)
{
    FM_ASSERT(s->ndirty == 0); /* the dirty list would point into c */
    bool found;
    uint32_t i = coll_find(s, (const uint8_t *)c->name, c->name_len, &found);
    FM_ASSERT(found && s->colls[i] == c);
    uint64_t ops = fm_vv_total(&c->vv);
    s->ops -= ops < s->ops ? ops : s->ops;
    FM_ASSERT(s->held >= ops);
    s->held -= ops;
    memmove(&s->colls[i], &s->colls[i + 1], (s->ncolls - i - 1) * sizeof *s->colls);
    s->ncolls--;
    s->gen++;
    if (s->last == c)
        s->last = NULL;
    coll_free(c);
    /* Rare (a collection rebuilt or forgotten): refilling beats tombstones on every probe. The
     * table keeps its size, so this cannot fail. */
    int rc = cmap_build(s, s->ncolls);
    FM_ASSERT(rc == 0);
}

static fm_feed *feed_find(const fm_coll *c, uint32_t author, uint32_t *pos)
{
    uint32_t lo = 0, hi = c->nfeeds;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->feed_authors[mid] == author)
            return &c->feeds[mid];
        if (c->feed_authors[mid] < author)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    return NULL;
}

const fm_feed *fm_coll_feed(const fm_state *s, const fm_coll *c, const uint8_t *author)
{
    uint32_t a = fm_authors_find(&s->authors, author);
    return a == UINT32_MAX ? NULL : feed_find(c, a, NULL);
}

int fm_coll_digest(fm_coll *c, uint8_t out[FM_HASH_BYTES])
{
    if (!c->digest_ok) {
        int rc = fm_vv_digest(&c->vv, c->digest);
        if (rc)
            return rc;
        c->digest_ok = true;
    }
    memcpy(out, c->digest, FM_HASH_BYTES);
    return 0;
}

/* sig: the head's signature, or NULL when it is not at hand (a position from the store). */
static int set_feed(fm_state *s, fm_coll *c, const uint8_t author[FM_ID_BYTES], uint64_t seq,
                    const uint8_t head[FM_HASH_BYTES], const uint8_t *sig)
{
    uint32_t a, pos = 0;
    if (fm_authors_intern(&s->authors, author, &a))
        return FM_ENOMEM;
    fm_feed *f = feed_find(c, a, &pos);
    uint32_t cap = c->cfeeds;
    if (!f && fm_grow_from1((void **)&c->feeds, c->nfeeds, &cap, sizeof *c->feeds))
        return FM_ENOMEM;
    if (cap != c->cfeeds) {
        uint32_t *fa = fm_reallocarray(c->feed_authors, cap, sizeof *fa);
        if (!fa)
            return FM_ENOMEM; /* feeds has room to spare: harmless */
        c->feed_authors = fa;
        c->cfeeds = cap;
    }
    /* The vector can refuse (FM_ELIMIT): set it before adding the feed, so a failed call adds no
     * feed with an unset seq and head. */
    c->digest_ok = false; /* whatever fm_vv_set does */
    int rc = fm_vv_set(&c->vv, author, seq);
    if (rc)
        return rc;
    s->gen++;
    if (!f) {
        memmove(&c->feeds[pos + 1], &c->feeds[pos], (c->nfeeds - pos) * sizeof *c->feeds);
        memmove(&c->feed_authors[pos + 1], &c->feed_authors[pos],
                (c->nfeeds - pos) * sizeof *c->feed_authors);
        c->feed_authors[pos] = a;
        f = &c->feeds[pos];
        f->seq = 0;
        c->nfeeds++;
    }
    s->held += seq - f->seq; /* modular arithmetic: right whichever way the seq moves */
    f->seq = seq;
    memcpy(f->head, head, FM_HASH_BYTES);
    f->head_sig_set = sig != NULL;
    if (sig)
        memcpy(f->head_sig, sig, FM_SIG_BYTES);
    return 0;
}

int fm_state_set_feed(fm_state *s, fm_coll *c, const uint8_t author[FM_ID_BYTES], uint64_t seq,
                      const uint8_t head[FM_HASH_BYTES])
{
    return set_feed(s, c, author, seq, head, NULL);
}

int fm_state_check(fm_state *s, const fm_batch *b)
{
    fm_coll *c = fm_state_coll(s, b->coll, b->coll_len);
    const fm_feed *f = c ? fm_coll_feed(s, c, b->author) : NULL;
    uint64_t seq = f ? f->seq : 0;
    if (b->first_seq <= seq)
        return FM_EDUP;
    if (b->first_seq > seq + 1)
        return FM_EGAP;
    if (b->has_prev && sodium_memcmp(b->prev, f->head, FM_HASH_BYTES) != 0)
        return FM_ECHAIN;
    for (uint32_t i = 0; i < b->ctx.n; i++)
        if (!c || fm_vv_get(&c->vv, b->ctx.e[i].author) < b->ctx.e[i].seq)
            return FM_EPENDING;
    return 0;
}

/* ---- the writer's causal context -----------------------------------------------------------
 *
 * Apply semantics (record.h): an op removes exactly the values its context covers. Writing the
 * whole collection vector as the context is correct but costs ~35 bytes per author in every
 * batch. The context written instead is, per author, the max seq over the dots the ops directly
 * supersede at the writer. Why the final state is the same:
 *  - Everything it covers was seen: the writer holds (a, ctx[a]), and feeds apply in order, so it
 *    holds every op of a up to ctx[a]. So it covers no more than the full vector would.
 *  - Every value the op overwrites at the writer is covered, by construction.
 *  - A value v the writer has seen but that is no longer in the target (field, element or
 *    record) was removed there by some op Y the writer applied, whose context covered v (or Y is
 *    by v's author, whose later ops cover its earlier ones through seq). Y reaches every replica;
 *    causal delivery puts v before Y, so Y removes v everywhere: the full vector's cover of v was
 *    redundant. By induction over the writer's history, once everything is delivered the values
 *    that survive are exactly those of full-vector semantics.
 * Only transient states differ: a replica may briefly show a value that a later op (Y) removes.
 * The context also drives causal delivery, and a smaller one means fewer held batches. */

/* Raises out[author of dot] to seq; the writer's own dots are covered through its seq. */
static int ctx_note(fm_state *s, const fm_coll *c, uint32_t self, uint32_t author, uint64_t seq,
                    fm_vv *out)
{
    if (author == self)
        return 0;
    const uint8_t *key = fm_authors_key(&s->authors, author);
    FM_ASSERT(seq <= fm_vv_get(&c->vv, key)); /* a dot in the state is an applied op */
    if (seq <= fm_vv_get(out, key))
        return 0;
    int rc = fm_vv_set(out, key, seq);
    FM_ASSERT(rc != FM_ELIMIT); /* a subset of c->vv */
    return rc;
}

static int ctx_note_regs(fm_state *s, const fm_coll *c, uint32_t self, const fm_field *f,
                         fm_vv *out)
{
    int rc = 0;
    for (uint32_t i = 0; !rc && i < f->nregs; i++)
        rc = ctx_note(s, c, self, f->regs[i].author, f->regs[i].seq, out);
    return rc;
}

static int ctx_note_elem(fm_state *s, const fm_coll *c, uint32_t self, const fm_elem *e, fm_vv *out)
{
    int rc = 0;
    for (uint32_t i = 0; !rc && i < e->ndots; i++)
        rc = ctx_note(s, c, self, e->dots[i].author, e->dots[i].seq, out);
    return rc;
}

static int ctx_note_op(fm_state *s, const fm_coll *c, uint32_t self, const fm_rec *r,
                       const fm_op *op, fm_vv *out)
{
    int rc = 0;
    if (op->type == FM_OP_DELETE) {
        for (uint32_t i = 0; !rc && i < r->nfields; i++) {
            const fm_field *f = &r->fields[i];
            rc = ctx_note_regs(s, c, self, f, out);
            for (uint32_t k = 0; !rc && k < f->nelems; k++)
                rc = ctx_note_elem(s, c, self, &f->elems[k], out);
        }
        return rc;
    }
    const fm_field *f = fm_rec_field(r, op->field, op->field_len);
    if (!f)
        return 0;
    if (op->type == FM_OP_SET_LWW || op->type == FM_OP_SET_MV)
        return ctx_note_regs(s, c, self, f, out);
    /* ADD drops the element's covered dots as REMOVE does (add then adds its own), so it
     * supersedes them too: without them the element's dot list would only grow. */
    const fm_elem *e = fm_field_elem(f, op->val, op->val_len);
    return e ? ctx_note_elem(s, c, self, e, out) : 0;
}

int fm_state_context(fm_state *s, const uint8_t *coll, uint32_t coll_len,
                     const uint8_t author[FM_ID_BYTES], const fm_op *ops, uint32_t nops, fm_vv *out)
{
    FM_ASSERT(out->n == 0);
    fm_coll *c = fm_state_coll(s, coll, coll_len);
    if (!c)
        return 0;
    int rc = 0;
    for (uint32_t i = 0; !rc && i < nops; i++) {
        if (ops[i].type == FM_OP_INCR)
            continue; /* counters remove nothing */
        fm_rec *r = fm_state_record(s, c, ops[i].id, ops[i].id_len, &rc);
        /* Looked up after the load: loading may intern authors. */
        uint32_t self = fm_authors_find(&s->authors, author);
        if (r && !rc)
            rc = ctx_note_op(s, c, self, r, &ops[i], out);
    }
    return rc;
}

/* ---- the record map ------------------------------------------------------------------------ */

static fm_rec **map_slot(fm_coll *c, const uint8_t *id, uint32_t len, uint32_t h)
{
    for (uint32_t i = h & (c->cap - 1);; i = (i + 1) & (c->cap - 1)) {
        fm_rec *r = c->map[i];
        if (!r || (r->hash32 == h && r->id_len == len && memcmp(fm_rec_id(r), id, len) == 0))
            return &c->map[i];
    }
}

static int map_grow(fm_coll *c)
{
    uint32_t cap = c->cap ? c->cap * 2 : 64;
    fm_rec **old = c->map;
    uint32_t ocap = c->cap;
    c->map = fm_calloc(cap, sizeof *c->map);
    if (!c->map) {
        c->map = old;
        return FM_ENOMEM;
    }
    c->cap = cap;
    for (uint32_t i = 0; i < ocap; i++)
        if (old[i])
            *map_slot(c, fm_rec_id(old[i]), old[i]->id_len, old[i]->hash32) = old[i];
    free(old);
    return 0;
}

static int rec_load(fm_state *s, fm_coll *c, fm_rec *r)
{
    if (!s->io.load || c->complete)
        return 0;
    fm_buf_reset(&s->scratch);
    int rc = s->io.load(s->io.arg, c, fm_rec_id(r), r->id_len, &s->scratch);
    if (rc || s->scratch.len == 0)
        return rc;
    rc = fm_rec_decode(r, &s->authors, s->scratch.data, s->scratch.len);
    if (rc)
        return rc == FM_ENOMEM ? rc : FM_ESTORE; /* stored state is ours: corrupt, not input */
    fm_state_record_hash(c, fm_rec_id(r), r->id_len, s->scratch.data, s->scratch.len,
                         r->flushed_hash);
    r->flushed_live = !r->deleted;
    r->flushed_conflicts = fm_rec_conflicts(r);
    return 0;
}

static fm_rec *get_rec(fm_state *s, fm_coll *c, const uint8_t *id, uint32_t len, bool create,
                       int *rc)
{
    *rc = 0;
    if ((c->nmap + 1) * 4 > c->cap * 3 && (*rc = map_grow(c)))
        return NULL;
    uint32_t h = fm_hash32(id, len);
    fm_rec **slot = map_slot(c, id, len, h);
    if (*slot)
        return *slot;
    fm_rec *r = fm_rec_new(id, len);
    if (!r) {
        *rc = FM_ENOMEM;
        return NULL;
    }
    r->hash32 = h;
    if ((*rc = rec_load(s, c, r)) || (!create && !r->exists)) {
        fm_rec_free(r);
        return NULL;
    }
    *slot = r;
    c->nmap++;
    return r;
}

fm_rec *fm_state_record(fm_state *s, fm_coll *c, const uint8_t *id, uint32_t id_len, int *rc)
{
    return get_rec(s, c, id, id_len, false, rc);
}

/* ---- apply ----------------------------------------------------------------------------------- */

static int ctx_prepare(fm_state *s, const fm_batch *b, fm_opctx *oc)
{
    for (uint32_t i = 0; i < s->ctx_nset; i++)
        s->ctx_seq[s->ctx_set[i]] = 0;
    s->ctx_nset = 0;
    if (b->ctx.n > s->cctx_set) {
        uint32_t *p = fm_reallocarray(s->ctx_set, b->ctx.n, sizeof *p);
        if (!p)
            return FM_ENOMEM;
        s->ctx_set = p;
        s->cctx_set = b->ctx.n;
    }
    /* Interned first (the dense array must cover every author), their indexes kept for below. */
    for (uint32_t i = 0; i < b->ctx.n; i++)
        if (fm_authors_intern(&s->authors, b->ctx.e[i].author, &s->ctx_set[i]))
            return FM_ENOMEM;
    if (s->authors.n > s->cctx) {
        uint64_t *p = fm_reallocarray(s->ctx_seq, s->authors.n * 2, sizeof *p);
        if (!p)
            return FM_ENOMEM;
        memset(p + s->cctx, 0, (s->authors.n * 2 - s->cctx) * sizeof *p);
        s->ctx_seq = p;
        s->cctx = s->authors.n * 2;
    }
    for (uint32_t i = 0; i < b->ctx.n; i++)
        s->ctx_seq[s->ctx_set[i]] = b->ctx.e[i].seq;
    s->ctx_nset = b->ctx.n;
    oc->authors = &s->authors;
    oc->ctx_seq = s->ctx_seq;
    oc->nctx = s->authors.n;
    oc->hlc = b->hlc;
    return 0;
}

static int mark_dirty(fm_state *s, fm_coll *c, fm_rec *r)
{
    if (fm_grow((void **)&s->dirty, s->ndirty, &s->cdirty, sizeof *s->dirty) ||
        fm_grow((void **)&s->dirty_coll, s->ndirty, &s->cdirty_coll, sizeof *s->dirty_coll))
        return FM_ENOMEM;
    s->dirty_coll[s->ndirty] = c;
    s->dirty[s->ndirty++] = r;
    return 0;
}

int fm_state_apply(fm_state *s, const fm_batch *b)
{
    FM_ASSERT(b->nops > 0);
    fm_coll *c;
    uint32_t author;
    int rc = fm_state_coll_add(s, b->coll, b->coll_len, &c);
    if (rc || (rc = fm_authors_intern(&s->authors, b->author, &author)))
        return rc;
    if (b->nops > s->crecs) {
        fm_rec **p = fm_reallocarray(s->recs, b->nops, sizeof *p);
        if (!p)
            return FM_ENOMEM;
        s->recs = p;
        s->crecs = b->nops;
    }
    /* Load every record first: loading interns authors, and the dense context must cover them.
     * The pointers stay valid: nothing is evicted during an apply. */
    for (uint32_t i = 0; i < b->nops; i++)
        if (!(s->recs[i] = get_rec(s, c, b->ops[i].id, b->ops[i].id_len, true, &rc)))
            return rc;
    fm_opctx oc;
    if ((rc = ctx_prepare(s, b, &oc)))
        return rc;
    oc.author = author;
    for (uint32_t i = 0; i < b->nops; i++) {
        const fm_op *op = &b->ops[i];
        fm_rec *r = s->recs[i];
        FM_ASSERT(r->id_len == op->id_len && memcmp(fm_rec_id(r), op->id, op->id_len) == 0);
        bool was_dirty = r->dirty;
        oc.seq = b->first_seq + i;
        if ((rc = fm_rec_apply(r, &oc, op)))
            return rc;
        if (!was_dirty && r->dirty && (rc = mark_dirty(s, c, r)))
            return rc;
    }
    rc = set_feed(s, c, b->author, fm_batch_last_seq(b), b->hash, b->sig);
    if (rc)
        return rc;
    s->ops += b->nops;
    s->batches++;
    return 0;
}

/* ---- flush and hashes ---------------------------------------------------------------------- */

void fm_state_record_hash(const fm_coll *c, const uint8_t *id, uint32_t id_len, const uint8_t *enc,
                          size_t len, uint8_t out[FM_HASH_BYTES])
{
    crypto_generichash_state st;
    uint8_t n[4];
    crypto_generichash_init(&st, NULL, 0, FM_HASH_BYTES);
    n[0] = (uint8_t)(c->name_len >> 24), n[1] = (uint8_t)(c->name_len >> 16);
    n[2] = (uint8_t)(c->name_len >> 8), n[3] = (uint8_t)c->name_len;
    crypto_generichash_update(&st, n, 4);
    crypto_generichash_update(&st, (const uint8_t *)c->name, c->name_len);
    n[0] = (uint8_t)(id_len >> 24), n[1] = (uint8_t)(id_len >> 16);
    n[2] = (uint8_t)(id_len >> 8), n[3] = (uint8_t)id_len;
    crypto_generichash_update(&st, n, 4);
    crypto_generichash_update(&st, id, id_len);
    crypto_generichash_update(&st, enc, len);
    crypto_generichash_final(&st, out, FM_HASH_BYTES);
}

int fm_state_flush(fm_state *s)
{
    for (uint32_t i = 0; i < s->ndirty; i++) {
        fm_rec *r = s->dirty[i];
        fm_coll *c = s->dirty_coll[i];
        fm_buf_reset(&s->scratch);
        int rc = fm_rec_encode(r, &s->authors, &s->scratch);
        if (rc)
            return rc;
        uint32_t conflicts = fm_rec_conflicts(r);
        if (s->io.save &&
            (rc = s->io.save(s->io.arg, c, r, s->scratch.data, s->scratch.len, conflicts)))
            return rc;
        uint8_t h[FM_HASH_BYTES];
        fm_state_record_hash(c, fm_rec_id(r), r->id_len, s->scratch.data, s->scratch.len, h);
        for (int k = 0; k < FM_HASH_BYTES; k++)
            c->xor_hash[k] ^= (uint8_t)(r->flushed_hash[k] ^ h[k]);
        c->agg_dirty = true;
        c->live += (uint64_t)!r->deleted - (uint64_t)r->flushed_live;
        c->conflicts += (uint64_t)conflicts - (uint64_t)r->flushed_conflicts;
        memcpy(r->flushed_hash, h, FM_HASH_BYTES);
        r->flushed_live = !r->deleted;
        r->flushed_conflicts = conflicts;
        r->dirty = false;
    }
    s->ndirty = 0;
    return 0;
}

void fm_state_trim(fm_state *s, uint32_t max_cached)
{
    if (!s->io.load || s->ndirty)
        return;
    uint64_t total = 0;
    for (uint32_t i = 0; i < s->ncolls; i++)
        total += s->colls[i]->nmap;
    if (total <= max_cached)
        return;
    for (uint32_t i = 0; i < s->ncolls; i++) {
        fm_coll *c = s->colls[i];
        for (uint32_t k = 0; k < c->cap; k++) {
            fm_rec_free(c->map[k]);
            c->map[k] = NULL;
        }
        c->nmap = 0;
        c->complete = false;
    }
}

int fm_state_hash(fm_state *s, uint8_t out[FM_HASH_BYTES])
{
    int rc = fm_state_flush(s);
    if (rc)
        return rc;
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const uint8_t *)"fieldmesh-state", 15, FM_HASH_BYTES);
    for (uint32_t i = 0; i < s->ncolls; i++) {
        fm_coll *c = s->colls[i];
        uint8_t d[FM_HASH_BYTES], len = (uint8_t)c->name_len;
        if ((rc = fm_coll_digest(c, d)))
            return rc;
        crypto_generichash_update(&st, &len, 1);
        crypto_generichash_update(&st, (const uint8_t *)c->name, c->name_len);
        crypto_generichash_update(&st, d, sizeof d);
        crypto_generichash_update(&st, c->xor_hash, sizeof c->xor_hash);
    }
    crypto_generichash_final(&st, out, FM_HASH_BYTES);
    return 0;
}
