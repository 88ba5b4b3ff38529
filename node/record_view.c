/*
 * record_view.c — what an application reads: a record's fields resolved per their kind (the lww
 * winner, every concurrent mv value, the counter's sum, the set's elements), copied out of the
 * CRDT state into one fm_record the caller frees.
 */
#include "crypto/identity.h"
#include "node/replica.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct fm_record {
    char *coll;
    char *id;
    size_t nfields;
    fm_field_view *fields;
    char **names;
    fm_value *values;
    uint8_t **blobs; /* value encodings the values point into */
    size_t nvalues;
};

void fm_record_free(fm_record *rec)
{
    if (!rec)
        return;
    for (size_t i = 0; i < rec->nfields; i++)
        free(rec->names[i]);
    for (size_t i = 0; i < rec->nvalues; i++)
        free(rec->blobs[i]);
    free(rec->names);
    free(rec->blobs);
    free(rec->values);
    free(rec->fields);
    free(rec->coll);
    free(rec->id);
    free(rec);
}

const char *fm_record_id(const fm_record *rec)
{
    return rec->id;
}

const char *fm_record_collection(const fm_record *rec)
{
    return rec->coll;
}

size_t fm_record_field_count(const fm_record *rec)
{
    return rec->nfields;
}

void fm_record_field(const fm_record *rec, size_t i, fm_field_view *out)
{
    FM_ASSERT(i < rec->nfields);
    *out = rec->fields[i];
}

/* Appends a decoded copy of one value encoding. */
static int add_value(fm_record *rec, const uint8_t *enc, uint32_t len)
{
    uint8_t *copy = malloc(len);
    if (!copy)
        return FM_ENOMEM;
    memcpy(copy, enc, len);
    rec->blobs[rec->nvalues] = copy;
    int rc = fm_value_decode(copy, len, &rec->values[rec->nvalues]);
    FM_ASSERT(rc == 0); /* state holds only values that decoded canonically */
    rec->nvalues++;
    return 0;
}

static size_t count_values(const fm_rec *r)
{
    size_t n = 0;
    for (uint32_t i = 0; i < r->nfields; i++)
        n += r->fields[i].nregs + r->fields[i].nelems;
    return n;
}

typedef struct ordered {
    const fm_reg *g;
    const fm_authors *a;
} ordered;

/* Newest first by (hlc, author): the order people read concurrent values in. */
static int reg_newest_first(const void *x, const void *y)
{
    const ordered *p = x, *q = y;
    if (p->g->hlc != q->g->hlc)
        return p->g->hlc > q->g->hlc ? -1 : 1;
    int c = memcmp(fm_authors_key(p->a, p->g->author), fm_authors_key(q->a, q->g->author), 32);
    if (c)
        return -c;
    return p->g->seq > q->g->seq ? -1 : p->g->seq < q->g->seq;
}

static int elem_order(const void *x, const void *y)
{
    const fm_elem *const *p = x, *const *q = y;
    return fm_bytes_cmp((*p)->v, (*p)->vlen, (*q)->v, (*q)->vlen);
}

static int view_field(fm_record *rec, const fm_field *f, const fm_authors *a, fm_field_view *fv)
{
    size_t first = rec->nvalues;
    int rc = 0;
    fv->kind = (fm_kind)f->kind;
    if (f->kind == FM_KIND_LWW) {
        const fm_reg *w = fm_field_winner(f, a);
        if (w)
            rc = add_value(rec, fm_reg_value(w), w->vlen);
    } else if (f->kind == FM_KIND_MV) {
        ordered *o = fm_calloc(f->nregs, sizeof *o);
        if (!o)
            return FM_ENOMEM;
        for (uint32_t i = 0; i < f->nregs; i++)
            o[i] = (ordered){&f->regs[i], a};
        qsort(o, f->nregs, sizeof *o, reg_newest_first);
        for (uint32_t i = 0; i < f->nregs && !rc; i++)
            rc = add_value(rec, fm_reg_value(o[i].g), o[i].g->vlen);
        free(o);
        fv->conflict = f->nregs > 1;
    } else if (f->kind == FM_KIND_COUNTER) {
        fv->counter = fm_field_counter(f);
    } else {
        const fm_elem **e = fm_calloc(f->nelems, sizeof *e);
        if (!e)
            return FM_ENOMEM;
        for (uint32_t i = 0; i < f->nelems; i++)
            e[i] = &f->elems[i];
        qsort(e, f->nelems, sizeof *e, elem_order);
        for (uint32_t i = 0; i < f->nelems && !rc; i++)
            rc = add_value(rec, e[i]->v, e[i]->vlen);
        free(e);
    }
    fv->nvalues = rec->nvalues - first;
    fv->values = NULL; /* pointed at once the values array is final */
    return rc;
}

static int view_alloc(fm_record *rec, const fm_coll *c, const fm_rec *r)
{
    size_t nv = count_values(r);
    rec->coll = fm_strndup(c->name, c->name_len);
    rec->id = fm_strndup((const char *)fm_rec_id(r), r->id_len);
    rec->fields = fm_calloc(r->nfields, sizeof *rec->fields);
    rec->names = fm_calloc(r->nfields, sizeof *rec->names);
    rec->values = fm_calloc(nv, sizeof *rec->values);
    rec->blobs = fm_calloc(nv, sizeof *rec->blobs);
    if (!rec->coll || !rec->id || !rec->fields || !rec->names || !rec->values || !rec->blobs)
        return FM_ENOMEM;
    return 0;
}

int fm__record_view(fm_replica *r, const fm_coll *c, const fm_rec *src, fm_record **out)
{
    fm_record *rec = calloc(1, sizeof *rec);
    if (!rec)
        return FM_ENOMEM;
    int rc = view_alloc(rec, c, src);
    for (uint32_t i = 0; !rc && i < src->nfields; i++) {
        const fm_field *f = &src->fields[i];
        fm_field_view *fv = &rec->fields[i];
        if (!(rec->names[i] = fm_strndup((const char *)fm_field_name(f), f->name_len))) {
            rc = FM_ENOMEM;
            break;
        }
        rec->nfields++;
        fv->name = rec->names[i];
        rc = view_field(rec, f, &r->st.authors, fv);
    }
    size_t off = 0;
    for (size_t i = 0; !rc && i < rec->nfields; i++) {
        rec->fields[i].values = rec->values + off;
        off += rec->fields[i].nvalues;
    }
    if (rc) {
        fm_record_free(rec);
        return rc;
    }
    *out = rec;
    return 0;
}

int fm_record_get(fm_replica *r, const char *collection, const char *id, fm_record **out)
{
    if (!r || !collection || !id || !out)
        return FM_EINVAL;
    fm_coll *c = fm_state_coll(&r->st, (const uint8_t *)collection, (uint32_t)strlen(collection));
    if (!c)
        return FM_ENOTFOUND;
    int rc;
    fm_rec *rec = fm_state_record(&r->st, c, (const uint8_t *)id, (uint32_t)strlen(id), &rc);
    if (!rec)
        return rc ? rc : FM_ENOTFOUND;
    if (rec->deleted)
        return FM_EDELETED;
    return fm__record_view(r, c, rec, out);
}

typedef struct list_ctx {
    fm_replica *r;
    fm_record_fn fn;
    void *arg;
    fm_rec *tmp;
} list_ctx;

static fm_coll *coll_by_store_id(fm_replica *r, int64_t id)
{
    for (uint32_t i = 0; i < r->st.ncolls; i++)
        if (r->st.colls[i]->store_id == id)
            return r->st.colls[i];
    return NULL;
}

static int list_one(void *arg, int64_t coll_id, const uint8_t *id, size_t id_len,
                    const uint8_t *enc, size_t len)
{
    list_ctx *x = arg;
    fm_coll *c = coll_by_store_id(x->r, coll_id);
    fm_rec *tmp = fm_rec_new(id, (uint32_t)id_len);
    if (!c || !tmp) {
        fm_rec_free(tmp);
        return c ? FM_ENOMEM : FM_ESTORE;
    }
    int rc = fm_rec_decode(tmp, &x->r->st.authors, enc, len);
    if (rc)
        rc = rc == FM_ENOMEM ? rc : FM_ESTORE;
    fm_record *view = NULL;
    if (!rc && !tmp->deleted && !(rc = fm__record_view(x->r, c, tmp, &view)))
        rc = x->fn(x->arg, view);
    fm_record_free(view);
    fm_rec_free(tmp);
    return rc;
}

int fm_collection_list(fm_replica *r, const char *collection, fm_record_fn fn, void *arg)
{
    if (!r || !collection || !fn)
        return FM_EINVAL;
    fm_coll *c = fm_state_coll(&r->st, (const uint8_t *)collection, (uint32_t)strlen(collection));
    if (!c || !c->store_id)
        return 0;
    list_ctx x = {r, fn, arg, NULL};
    int rc = fm__replica_flush(r); /* the store rows of records a group commit still holds */
    return rc ? rc : fm_store_each_record(r->store, c, false, list_one, &x);
}

int fm_conflicts_list(fm_replica *r, fm_record_fn fn, void *arg)
{
    if (!r || !fn)
        return FM_EINVAL;
    list_ctx x = {r, fn, arg, NULL};
    int rc = fm__replica_flush(r);
    return rc ? rc : fm_store_each_record(r->store, NULL, true, list_one, &x);
}
