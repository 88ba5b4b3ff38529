/*
 * record.c — per-record CRDT merge and its canonical encoding. Register, counter and set logic
 * are the three small functions apply_reg, apply_ctr and apply_set; everything else is plumbing.
 */
#include "crdt/record.h"

#include <stdlib.h>
#include <string.h>

/* ---- author interning -------------------------------------------------------------------- */

void fm_authors_init(fm_authors *a)
{
    memset(a, 0, sizeof *a);
}

void fm_authors_free(fm_authors *a)
{
    free(a->keys);
    free(a->slots);
    fm_authors_init(a);
}

static uint32_t key_hash(const uint8_t *key)
{
    uint32_t h;
    memcpy(&h, key, sizeof h); /* keys are public keys: already uniformly distributed */
    return h;
}

uint32_t fm_authors_find(const fm_authors *a, const uint8_t key[FM_ID_BYTES])
{
    if (!a->nslots)
        return UINT32_MAX;
    for (uint32_t i = key_hash(key) & (a->nslots - 1);; i = (i + 1) & (a->nslots - 1)) {
        uint32_t s = a->slots[i];
        if (!s)
            return UINT32_MAX;
        if (fm_id_cmp(a->keys[s - 1], key) == 0)
            return s - 1;
    }
}

static int authors_grow(fm_authors *a)
{
    uint32_t nslots = a->nslots ? a->nslots * 2 : 16;
    uint32_t *slots = fm_calloc(nslots, sizeof *slots);
    if (!slots)
        return FM_ENOMEM;
    for (uint32_t k = 0; k < a->n; k++) {
        uint32_t i = key_hash(a->keys[k]) & (nslots - 1);
        while (slots[i])
            i = (i + 1) & (nslots - 1);
        slots[i] = k + 1;
    }
    free(a->slots);
    a->slots = slots;
    a->nslots = nslots;
    return 0;
}

int fm_authors_intern(fm_authors *a, const uint8_t key[FM_ID_BYTES], uint32_t *idx)
{
    uint32_t found = fm_authors_find(a, key);
    if (found != UINT32_MAX) {
        *idx = found;
        return 0;
    }
    if ((a->n + 1) * 2 > a->nslots && authors_grow(a))
        return FM_ENOMEM;
    if (fm_grow((void **)&a->keys, a->n, &a->cap, FM_ID_BYTES))
        return FM_ENOMEM;
    memcpy(a->keys[a->n], key, FM_ID_BYTES);
    uint32_t i = key_hash(key) & (a->nslots - 1);
    while (a->slots[i])
        i = (i + 1) & (a->nslots - 1);
    a->slots[i] = a->n + 1;
    *idx = a->n++;
    return 0;
}

/* ---- records ------------------------------------------------------------------------------ */

/* The small-bytes layout of a record's id, a field's name and a register's value: len bytes into
 * inl (room for inl_size) or into a new allocation put in *heap, the other member of the same
 * union. */
static int small_copy(uint8_t *inl, size_t inl_size, uint8_t **heap, const uint8_t *src,
                      uint32_t len)
{
    uint8_t *dst = inl;
    if (len > inl_size && !(dst = *heap = malloc(len)))
        return FM_ENOMEM;
    memcpy(dst, src, len);
    return 0;
}

fm_rec *fm_rec_new(const uint8_t *id, uint32_t id_len)
{
    fm_rec *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (small_copy(r->id.inl, sizeof r->id.inl, &r->id.p, id, id_len)) {
        free(r);
        return NULL;
    }
    r->id_len = id_len;
    return r;
}

static void field_clear(fm_field *f)
{
    for (uint32_t i = 0; i < f->nregs; i++)
        fm_reg_free_value(&f->regs[i]);
    for (uint32_t i = 0; i < f->nelems; i++) {
        free(f->elems[i].v);
        free(f->elems[i].dots);
    }
    free(f->regs);
    free(f->ctrs);
    free(f->elems);
    if (f->name_len > sizeof f->name.inl)
        free(f->name.p);
    memset(f, 0, sizeof *f);
}

void fm_rec_clear_fields(fm_rec *r)
{
    for (uint32_t i = 0; i < r->nfields; i++)
        field_clear(&r->fields[i]);
    free(r->fields);
    r->fields = NULL;
    r->nfields = r->cfields = 0;
}

void fm_rec_free(fm_rec *r)
{
    if (!r)
        return;
    fm_rec_clear_fields(r);
    if (r->id_len > sizeof r->id.inl)
        free(r->id.p);
    free(r);
}

static int cmp_name(const fm_field *f, const uint8_t *name, uint32_t len)
{
    return fm_bytes_cmp(fm_field_name(f), f->name_len, name, len);
}

/* The field's index, or where it would be inserted (*found false). */
static uint32_t field_pos(const fm_rec *r, const uint8_t *name, uint32_t len, bool *found)
{
    uint32_t lo = 0, hi = r->nfields;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(&r->fields[mid], name, len);
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

fm_field *fm_rec_field(const fm_rec *r, const uint8_t *name, uint32_t len)
{
    bool found;
    uint32_t i = field_pos(r, name, len, &found);
    return found ? &r->fields[i] : NULL;
}

/* fm_grow from one slot: a node caches thousands of records, most with a field or two of one
 * register each, and fm_grow's first four slots made a record three times its size. */
static int rec_grow(void **arr, uint32_t n, uint32_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    if (*cap == 0) {
        void *p = fm_reallocarray(*arr, 1, size);
        if (!p)
            return FM_ENOMEM;
        *arr = p;
        *cap = 1;
        return 0;
    }
    return fm_grow(arr, n, cap, size);
}

/* Finds or inserts (keeping name order) the field. */
static fm_field *rec_field(fm_rec *r, const uint8_t *name, uint32_t len)
{
    bool found;
    uint32_t lo = field_pos(r, name, len, &found);
    if (found)
        return &r->fields[lo];
    if (rec_grow((void **)&r->fields, r->nfields, &r->cfields, sizeof *r->fields))
        return NULL;
    fm_field nf = {.kind_author = UINT32_MAX};
    if (fm_field_set_name(&nf, name, len))
        return NULL;
    memmove(&r->fields[lo + 1], &r->fields[lo], (r->nfields - lo) * sizeof *r->fields);
    fm_field *f = &r->fields[lo];
    *f = nf;
    r->nfields++;
    return f;
}

static bool covered(const fm_opctx *c, uint32_t author, uint64_t seq)
{
    if (author == c->author)
        return seq < c->seq;
    return author < c->nctx && seq <= c->ctx_seq[author];
}

/* (hlc, author id) order: the tie-break of last-writer-wins and of the field kind. */
static int stamp_cmp(const fm_authors *a, uint64_t h1, uint32_t a1, uint64_t h2, uint32_t a2)
{
    if (h1 != h2)
        return h1 < h2 ? -1 : 1;
    if (a1 == a2)
        return 0;
    if (a2 == UINT32_MAX)
        return 1;
    if (a1 == UINT32_MAX)
        return -1;
    return memcmp(fm_authors_key(a, a1), fm_authors_key(a, a2), FM_ID_BYTES);
}

static const fm_kind OP_KIND[FM_OP__COUNT] = {[FM_OP_SET_LWW] = FM_KIND_LWW,
                                              [FM_OP_SET_MV] = FM_KIND_MV,
                                              [FM_OP_INCR] = FM_KIND_COUNTER,
                                              [FM_OP_ADD] = FM_KIND_SET,
                                              [FM_OP_REMOVE] = FM_KIND_SET};

int fm_field_set_name(fm_field *f, const uint8_t *name, uint32_t len)
{
    FM_ASSERT(f->name_len == 0);
    int rc = small_copy(f->name.inl, sizeof f->name.inl, &f->name.p, name, len);
    if (!rc)
        f->name_len = len;
    return rc;
}

int fm_reg_set_value(fm_reg *g, const uint8_t *enc, uint32_t len)
{
    FM_ASSERT(g->vlen == 0);
    int rc = small_copy(g->v.inl, sizeof g->v.inl, &g->v.p, enc, len);
    if (!rc)
        g->vlen = len;
    return rc;
}

void fm_reg_free_value(fm_reg *g)
{
    if (g->vlen > sizeof g->v.inl)
        free(g->v.p);
    g->vlen = 0;
}

static int apply_reg(fm_field *f, const fm_opctx *c, const fm_op *op)
{
    uint32_t keep = 0;
    for (uint32_t i = 0; i < f->nregs; i++) {
        if (covered(c, f->regs[i].author, f->regs[i].seq))
            fm_reg_free_value(&f->regs[i]);
        else
            f->regs[keep++] = f->regs[i];
    }
    f->nregs = keep;
    if (rec_grow((void **)&f->regs, f->nregs, &f->cregs, sizeof *f->regs))
        return FM_ENOMEM;
    fm_reg *g = &f->regs[f->nregs];
    *g = (fm_reg){.seq = c->seq, .hlc = c->hlc, .author = c->author, .type = op->type};
    if (fm_reg_set_value(g, op->val, op->val_len))
        return FM_ENOMEM;
    f->nregs++;
    return 0;
}

static int apply_ctr(fm_field *f, const fm_opctx *c, int64_t delta)
{
    for (uint32_t i = 0; i < f->nctrs; i++) {
        if (f->ctrs[i].author == c->author) {
            /* Wrapping add: a hostile author cannot trigger signed overflow. */
            f->ctrs[i].total = (int64_t)((uint64_t)f->ctrs[i].total + (uint64_t)delta);
            return 0;
        }
    }
    if (rec_grow((void **)&f->ctrs, f->nctrs, &f->cctrs, sizeof *f->ctrs))
        return FM_ENOMEM;
    f->ctrs[f->nctrs++] = (fm_ctr){.author = c->author, .total = delta};
    return 0;
}

fm_elem *fm_field_elem(const fm_field *f, const uint8_t *v, uint32_t len)
{
    for (uint32_t i = 0; i < f->nelems; i++)
        if (f->elems[i].vlen == len && memcmp(f->elems[i].v, v, len) == 0)
            return &f->elems[i];
    return NULL;
}

static void elem_drop_covered(fm_elem *e, const fm_opctx *c)
{
    uint32_t keep = 0;
    for (uint32_t i = 0; i < e->ndots; i++)
        if (!covered(c, e->dots[i].author, e->dots[i].seq))
            e->dots[keep++] = e->dots[i];
    e->ndots = keep;
}

/* Observed-remove set: add and remove both drop the dots they saw; add then adds its own, so
 * an add concurrent with a remove survives (add wins). */
static int apply_set(fm_field *f, const fm_opctx *c, const fm_op *op)
{
    fm_elem *e = fm_field_elem(f, op->val, op->val_len);
    if (e)
        elem_drop_covered(e, c);
    if (op->type == FM_OP_ADD) {
        if (!e) {
            if (rec_grow((void **)&f->elems, f->nelems, &f->celems, sizeof *f->elems))
                return FM_ENOMEM;
            e = &f->elems[f->nelems];
            memset(e, 0, sizeof *e);
            e->v = malloc(op->val_len);
            if (!e->v)
                return FM_ENOMEM;
            memcpy(e->v, op->val, op->val_len);
            e->vlen = op->val_len;
            f->nelems++;
        }
        fm_edot *d = fm_reallocarray(e->dots, e->ndots + 1, sizeof *d);
        if (!d)
            return FM_ENOMEM;
        e->dots = d;
        e->dots[e->ndots++] = (fm_edot){c->author, c->seq};
    } else if (e && e->ndots == 0) {
        free(e->v);
        free(e->dots);
        *e = f->elems[--f->nelems];
    }
    return 0;
}

int fm_rec_apply(fm_rec *r, const fm_opctx *c, const fm_op *op)
{
    FM_ASSERT(c->author < c->authors->n);
    r->exists = true;
    if (r->deleted)
        return 0; /* a delete is final: nothing resurrects the record */
    if (op->type == FM_OP_DELETE) {
        fm_rec_clear_fields(r);
        r->deleted = true;
        r->dirty = true;
        return 0;
    }
    fm_field *f = rec_field(r, op->field, op->field_len);
    if (!f)
        return FM_ENOMEM;
    r->dirty = true;
    if (stamp_cmp(c->authors, c->hlc, c->author, f->kind_hlc, f->kind_author) > 0) {
        f->kind = (uint8_t)OP_KIND[op->type];
        f->kind_hlc = c->hlc;
        f->kind_author = c->author;
    }
    switch (op->type) {
    case FM_OP_SET_LWW:
    case FM_OP_SET_MV:
        return apply_reg(f, c, op);
    case FM_OP_INCR:
        return apply_ctr(f, c, op->delta);
    default:
        return apply_set(f, c, op);
    }
}

uint32_t fm_rec_conflicts(const fm_rec *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->nfields; i++)
        n += r->fields[i].kind == FM_KIND_MV && r->fields[i].nregs > 1;
    return n;
}

const fm_reg *fm_field_winner(const fm_field *f, const fm_authors *authors)
{
    const fm_reg *best = NULL;
    for (uint32_t i = 0; i < f->nregs; i++) {
        const fm_reg *g = &f->regs[i];
        if (!best || stamp_cmp(authors, g->hlc, g->author, best->hlc, best->author) > 0)
            best = g;
    }
    return best;
}

int64_t fm_field_counter(const fm_field *f)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < f->nctrs; i++)
        sum += (uint64_t)f->ctrs[i].total;
    return (int64_t)sum;
}
