/*
 * record_codec.c — canonical encoding of a record's CRDT state (format in record.h). Author ids
 * are written once per record and referenced by position, which keeps stored state small.
 */
#include "crdt/codec.h"
#include "crdt/record.h"

#include <stdlib.h>
#include <string.h>

/* qsort, by insertion for a few elements: most records name a few authors and most fields hold
 * one value, where qsort's setup costs more than the sort. */
enum { SORT_FEW = 16 };

static void sort_few(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    if (n > SORT_FEW) {
        qsort(base, n, size, cmp);
        return;
    }
    uint8_t *a = base, tmp[32];
    FM_ASSERT(size <= sizeof tmp);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && cmp(a + (j - 1) * size, a + j * size) > 0; j--) {
            memcpy(tmp, a + (j - 1) * size, size);
            memcpy(a + (j - 1) * size, a + j * size, size);
            memcpy(a + j * size, tmp, size);
        }
}

/* The authors a record names: refs are positions in key order. A counter that every device
 * increments names a thousand, so finding one is a binary search, not a scan (encoding such a
 * record was quadratic in its authors). */
typedef struct ref_map {
    uint32_t *idx; /* the distinct author indexes, ascending */
    uint32_t *ref; /* ref[i]: idx[i]'s position in key order */
    uint32_t *ord; /* ord[j]: the author index whose ref is j */
    uint32_t n;
    uint32_t small[3][SORT_FEW]; /* idx, ref and ord of a record naming few authors */
} ref_map;

static void refs_free(ref_map *m)
{
    if (m->idx != m->small[0])
        free(m->idx);
}

static uint32_t refs_get(const ref_map *m, uint32_t author)
{
    uint32_t lo = 0, hi = m->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->idx[mid] == author)
            return m->ref[mid];
        if (m->idx[mid] < author)
            lo = mid + 1;
        else
            hi = mid;
    }
    FM_ASSERT(0 && "author not collected");
}

static int u32_cmp(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

typedef struct key_item {
    const uint8_t *key;
    uint32_t idx;
} key_item;

static int key_item_cmp(const void *x, const void *y)
{
    return memcmp(((const key_item *)x)->key, ((const key_item *)y)->key, FM_ID_BYTES);
}

/* Every author reference of r (out NULL: only counts them). */
static size_t list_refs(const fm_rec *r, uint32_t *out)
{
    size_t n = 0;
#define PUT(a) (out ? (void)(out[n] = (a)) : (void)0, n++)
    for (uint32_t i = 0; i < r->nfields; i++) {
        const fm_field *f = &r->fields[i];
        PUT(f->kind_author);
        for (uint32_t k = 0; k < f->nregs; k++)
            PUT(f->regs[k].author);
        for (uint32_t k = 0; k < f->nctrs; k++)
            PUT(f->ctrs[k].author);
        for (uint32_t k = 0; k < f->nelems; k++)
            for (uint32_t d = 0; d < f->elems[k].ndots; d++)
                PUT(f->elems[k].dots[d].author);
    }
#undef PUT
    return n;
}

static int collect_refs(const fm_rec *r, const fm_authors *a, ref_map *m)
{
    size_t total = list_refs(r, NULL);
    key_item small[FM_ARRAY_LEN(m->small[0])], *keys = small;
    m->idx = m->small[0], m->ref = m->small[1], m->ord = m->small[2];
    if (total > FM_ARRAY_LEN(small)) {
        m->idx = fm_reallocarray(NULL, total, 3 * sizeof *m->idx);
        keys = fm_reallocarray(NULL, total, sizeof *keys);
        if (!m->idx || !keys) {
            free(m->idx), free(keys);
            return FM_ENOMEM;
        }
        m->ref = m->idx + total, m->ord = m->ref + total;
    }
    list_refs(r, m->idx);
    sort_few(m->idx, total, sizeof *m->idx, u32_cmp);
    m->n = 0;
    for (size_t i = 0; i < total; i++)
        if (m->n == 0 || m->idx[m->n - 1] != m->idx[i])
            m->idx[m->n++] = m->idx[i];
    for (uint32_t i = 0; i < m->n; i++)
        keys[i] = (key_item){fm_authors_key(a, m->idx[i]), i};
    sort_few(keys, m->n, sizeof *keys, key_item_cmp);
    for (uint32_t j = 0; j < m->n; j++) {
        m->ref[keys[j].idx] = j;
        m->ord[j] = m->idx[keys[j].idx];
    }
    if (keys != small)
        free(keys);
    return 0;
}

typedef struct sort_item {
    uint32_t ref;
    uint64_t seq;
    const void *p;
    uint32_t len;
} sort_item;

static int item_cmp(const void *x, const void *y)
{
    const sort_item *a = x, *b = y;
    if (a->ref != b->ref)
        return a->ref < b->ref ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int bytes_item_cmp(const void *x, const void *y)
{
    const sort_item *a = x, *b = y;
    return fm_bytes_cmp(a->p, a->len, b->p, b->len);
}

static void write_elem(fm_wr *w, const ref_map *m, const fm_elem *e, sort_item *tmp)
{
    fm_wr_bytes_raw(w, e->v, e->vlen);
    for (uint32_t d = 0; d < e->ndots; d++)
        tmp[d] = (sort_item){refs_get(m, e->dots[d].author), e->dots[d].seq, NULL, 0};
    sort_few(tmp, e->ndots, sizeof *tmp, item_cmp);
    msgpack_pack_array(FM_PK(w), e->ndots);
    for (uint32_t d = 0; d < e->ndots; d++) {
        msgpack_pack_array(FM_PK(w), 2);
        msgpack_pack_uint32(FM_PK(w), tmp[d].ref);
        msgpack_pack_uint64(FM_PK(w), tmp[d].seq);
    }
}

static int write_field(fm_wr *w, const ref_map *m, const fm_field *f)
{
    uint32_t n = FM_MAX(FM_MAX(f->nregs, f->nctrs), f->nelems);
    for (uint32_t k = 0; k < f->nelems; k++)
        n = FM_MAX(n, f->elems[k].ndots);
    /* Fields rarely hold more than a few values: sort on the stack when they fit. */
    sort_item stack[2][8];
    bool heap = n > FM_ARRAY_LEN(stack[0]);
    sort_item *tmp = heap ? fm_reallocarray(NULL, n, sizeof *tmp) : stack[0];
    sort_item *tmp2 = heap ? fm_reallocarray(NULL, n, sizeof *tmp2) : stack[1];
    if (!tmp || !tmp2) {
        if (heap)
            free(tmp), free(tmp2);
        return FM_ENOMEM;
    }
    msgpack_pack_array(FM_PK(w), 7);
    fm_wr_str(w, fm_field_name(f), f->name_len);
    msgpack_pack_uint8(FM_PK(w), f->kind);
    msgpack_pack_uint64(FM_PK(w), f->kind_hlc);
    msgpack_pack_uint32(FM_PK(w), refs_get(m, f->kind_author));
    for (uint32_t k = 0; k < f->nregs; k++)
        tmp[k] = (sort_item){refs_get(m, f->regs[k].author), f->regs[k].seq, &f->regs[k], 0};
    sort_few(tmp, f->nregs, sizeof *tmp, item_cmp);
    msgpack_pack_array(FM_PK(w), f->nregs);
    for (uint32_t k = 0; k < f->nregs; k++) {
        const fm_reg *g = tmp[k].p;
        msgpack_pack_array(FM_PK(w), 5);
        msgpack_pack_uint32(FM_PK(w), tmp[k].ref);
        msgpack_pack_uint64(FM_PK(w), g->seq);
        msgpack_pack_uint64(FM_PK(w), g->hlc);
        msgpack_pack_uint8(FM_PK(w), g->type);
        fm_wr_bytes_raw(w, fm_reg_value(g), g->vlen);
    }
    for (uint32_t k = 0; k < f->nctrs; k++)
        tmp[k] = (sort_item){refs_get(m, f->ctrs[k].author), 0, &f->ctrs[k], 0};
    sort_few(tmp, f->nctrs, sizeof *tmp, item_cmp);
    msgpack_pack_array(FM_PK(w), f->nctrs);
    for (uint32_t k = 0; k < f->nctrs; k++) {
        msgpack_pack_array(FM_PK(w), 2);
        msgpack_pack_uint32(FM_PK(w), tmp[k].ref);
        msgpack_pack_int64(FM_PK(w), ((const fm_ctr *)tmp[k].p)->total);
    }
    /* Elements in value-byte order; seq remembers where each came from. */
    for (uint32_t k = 0; k < f->nelems; k++)
        tmp2[k] = (sort_item){0, k, f->elems[k].v, f->elems[k].vlen};
    sort_few(tmp2, f->nelems, sizeof *tmp2, bytes_item_cmp);
    msgpack_pack_array(FM_PK(w), f->nelems);
    for (uint32_t k = 0; k < f->nelems; k++) {
        msgpack_pack_array(FM_PK(w), 2);
        write_elem(w, m, &f->elems[tmp2[k].seq], tmp);
    }
    if (heap)
        free(tmp), free(tmp2);
    return 0;
}

int fm_rec_encode(const fm_rec *r, const fm_authors *authors, fm_buf *out)
{
    ref_map m;
    int rc = collect_refs(r, authors, &m);
    if (rc)
        return rc;
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 3);
    msgpack_pack_uint8(FM_PK(&w), r->deleted ? 1 : 0);
    msgpack_pack_array(FM_PK(&w), m.n);
    for (uint32_t i = 0; i < m.n; i++)
        fm_wr_bin(&w, fm_authors_key(authors, m.ord[i]), FM_ID_BYTES);
    msgpack_pack_array(FM_PK(&w), r->nfields);
    for (uint32_t i = 0; i < r->nfields && !rc; i++)
        rc = write_field(&w, &m, &r->fields[i]);
    if (!rc && out->oom)
        rc = FM_ENOMEM;
    refs_free(&m);
    return rc;
}

/* ---- decoding ----------------------------------------------------------------------------- */

typedef struct dec {
    fm_rd rd;
    uint32_t *amap; /* ref -> author index */
    bool *used;
    uint32_t nauth;
} dec;

static int rd_ref(dec *d, uint32_t *author, uint32_t *ref_out)
{
    uint64_t ref;
    if (fm_rd_uint(&d->rd, &ref))
        return d->rd.err;
    if (ref >= d->nauth)
        return d->rd.err = FM_EDECODE;
    d->used[ref] = true;
    *author = d->amap[ref];
    if (ref_out)
        *ref_out = (uint32_t)ref;
    return 0;
}

/* Strictly increasing (ref, seq) pairs: canonical order and no duplicates. */
static bool pair_after(uint32_t pref, uint64_t pseq, uint32_t ref, uint64_t seq, uint32_t k)
{
    return k == 0 || ref > pref || (ref == pref && seq > pseq);
}

static int rd_regs(dec *d, fm_field *f)
{
    uint32_t n, pref = 0, ref = 0;
    uint64_t pseq = 0, type;
    fm_rd *r = &d->rd;
    if (fm_rd_array(r, &n))
        return r->err;
    f->regs = fm_reallocarray(NULL, n, sizeof *f->regs);
    if (!f->regs)
        return r->err = FM_ENOMEM;
    f->cregs = n;
    for (uint32_t k = 0; k < n; k++) {
        fm_reg *g = &f->regs[k];
        fm_value v;
        const uint8_t *raw;
        memset(g, 0, sizeof *g);
        fm_rd_array_exact(r, 5);
        rd_ref(d, &g->author, &ref);
        fm_rd_uint(r, &g->seq);
        fm_rd_uint(r, &g->hlc);
        fm_rd_uint(r, &type);
        uint32_t vlen;
        if (fm_rd_value(r, &v, &raw, &vlen))
            return r->err;
        if ((type != FM_OP_SET_LWW && type != FM_OP_SET_MV) || g->seq == 0 ||
            !pair_after(pref, pseq, ref, g->seq, k))
            return r->err = FM_ENONCANON;
        g->type = (uint8_t)type;
        if (fm_reg_set_value(g, raw, vlen))
            return r->err = FM_ENOMEM;
        f->nregs++;
        pref = ref, pseq = g->seq;
    }
    return 0;
}

static int rd_ctrs(dec *d, fm_field *f)
{
    uint32_t n, ref = 0, pref = 0;
    fm_rd *r = &d->rd;
    if (fm_rd_array(r, &n))
        return r->err;
    f->ctrs = fm_reallocarray(NULL, n, sizeof *f->ctrs);
    if (!f->ctrs)
        return r->err = FM_ENOMEM;
    f->cctrs = n;
    for (uint32_t k = 0; k < n; k++) {
        fm_rd_array_exact(r, 2);
        rd_ref(d, &f->ctrs[k].author, &ref);
        if (fm_rd_int(r, &f->ctrs[k].total))
            return r->err;
        if (k && ref <= pref)
            return r->err = FM_ENONCANON;
        pref = ref;
        f->nctrs++;
    }
    return 0;
}

static int rd_elem(dec *d, fm_elem *e)
{
    fm_rd *r = &d->rd;
    fm_value v;
    const uint8_t *raw;
    uint32_t n, ref = 0, pref = 0;
    uint64_t pseq = 0;
    if (fm_rd_array_exact(r, 2) || fm_rd_value(r, &v, &raw, &e->vlen) || fm_rd_array(r, &n))
        return r->err;
    if (n == 0)
        return r->err = FM_ENONCANON;
    e->v = malloc(e->vlen);
    e->dots = fm_reallocarray(NULL, n, sizeof *e->dots);
    if (!e->v || !e->dots)
        return r->err = FM_ENOMEM;
    memcpy(e->v, raw, e->vlen);
    for (uint32_t k = 0; k < n; k++) {
        fm_rd_array_exact(r, 2);
        rd_ref(d, &e->dots[k].author, &ref);
        if (fm_rd_uint(r, &e->dots[k].seq))
            return r->err;
        if (e->dots[k].seq == 0 || !pair_after(pref, pseq, ref, e->dots[k].seq, k))
            return r->err = FM_ENONCANON;
        pref = ref, pseq = e->dots[k].seq;
        e->ndots++;
    }
    return 0;
}

static int rd_elems(dec *d, fm_field *f)
{
    uint32_t n;
    fm_rd *r = &d->rd;
    if (fm_rd_array(r, &n))
        return r->err;
    f->elems = fm_calloc(n, sizeof *f->elems);
    if (!f->elems)
        return r->err = FM_ENOMEM;
    f->celems = n;
    for (uint32_t k = 0; k < n; k++) {
        f->nelems++;
        if (rd_elem(d, &f->elems[k]))
            return r->err;
        if (k && fm_bytes_cmp(f->elems[k - 1].v, f->elems[k - 1].vlen, f->elems[k].v,
                              f->elems[k].vlen) >= 0)
            return r->err = FM_ENONCANON;
    }
    return 0;
}

static int rd_field(dec *d, fm_field *f, const fm_field *prev)
{
    fm_rd *r = &d->rd;
    const uint8_t *name;
    uint32_t name_len;
    uint64_t kind;
    if (fm_rd_array_exact(r, 7) || fm_rd_str(r, &name, &name_len, FM_MAX_FIELD_LEN))
        return r->err;
    if (fm_name_check(name, name_len, FM_MAX_FIELD_LEN))
        return r->err = FM_EDECODE;
    if (fm_field_set_name(f, name, name_len))
        return r->err = FM_ENOMEM;
    if (prev && fm_bytes_cmp(fm_field_name(prev), prev->name_len, name, name_len) >= 0)
        return r->err = FM_ENONCANON;
    fm_rd_uint(r, &kind);
    fm_rd_uint(r, &f->kind_hlc);
    if (rd_ref(d, &f->kind_author, NULL))
        return r->err;
    if (kind > FM_KIND_SET)
        return r->err = FM_EDECODE;
    f->kind = (uint8_t)kind;
    if (!rd_regs(d, f) && !rd_ctrs(d, f))
        rd_elems(d, f);
    return r->err;
}

static int rd_authors(dec *d, fm_authors *authors)
{
    fm_rd *r = &d->rd;
    if (fm_rd_array(r, &d->nauth))
        return r->err;
    d->amap = fm_reallocarray(NULL, d->nauth, sizeof *d->amap);
    d->used = fm_calloc(d->nauth, sizeof *d->used);
    if (!d->amap || !d->used)
        return r->err = FM_ENOMEM;
    uint8_t key[FM_ID_BYTES], prev[FM_ID_BYTES];
    for (uint32_t i = 0; i < d->nauth; i++) {
        if (fm_rd_bin_fixed(r, key, FM_ID_BYTES))
            return r->err;
        if (i && memcmp(prev, key, FM_ID_BYTES) >= 0)
            return r->err = FM_ENONCANON;
        memcpy(prev, key, FM_ID_BYTES);
        if (fm_authors_intern(authors, key, &d->amap[i]))
            return r->err = FM_ENOMEM;
    }
    return 0;
}

static int rd_record(dec *d, fm_rec *t, fm_authors *authors)
{
    fm_rd *r = &d->rd;
    uint64_t flags;
    uint32_t n;
    if (fm_rd_array_exact(r, 3) || fm_rd_uint(r, &flags) || rd_authors(d, authors) ||
        fm_rd_array(r, &n))
        return r->err;
    if (flags > 1 || (flags == 1 && n != 0))
        return r->err = FM_EDECODE;
    /* The field count is bounded by the input size only (fm_rd_array): FM_MAX_FIELDS_PER_RECORD
     * binds local writes, but merged remote batches can exceed any bound, and every state that
     * apply produces must load again. */
    t->deleted = flags == 1;
    t->fields = fm_calloc(n, sizeof *t->fields);
    if (!t->fields)
        return r->err = FM_ENOMEM;
    t->cfields = n;
    for (uint32_t i = 0; i < n; i++) {
        t->nfields++;
        if (rd_field(d, &t->fields[i], i ? &t->fields[i - 1] : NULL))
            return r->err;
    }
    for (uint32_t i = 0; i < d->nauth; i++)
        if (!d->used[i])
            return r->err = FM_ENONCANON;
    return fm_rd_end(r);
}

int fm_rec_decode(fm_rec *r, fm_authors *authors, const uint8_t *p, size_t len)
{
    dec d = {0};
    fm_rd_init(&d.rd, p, len);
    fm_rec tmp = {0};
    int rc = rd_record(&d, &tmp, authors);
    free(d.amap);
    free(d.used);
    if (rc) {
        fm_rec_clear_fields(&tmp);
        return rc;
    }
    fm_rec_clear_fields(r);
    r->fields = tmp.fields;
    r->nfields = tmp.nfields;
    r->cfields = tmp.cfields;
    r->deleted = tmp.deleted;
    r->exists = true;
    return 0;
}
