/*
 * record.h — the CRDT state of one record (DESIGN.md §2): fields of kind lww/mv (a set of
 * concurrent register values), counter (per-author totals) and set (elements with the dots that
 * added them), or a tombstone. Pure: no I/O.
 *
 * Causality first: an op removes exactly the values its causal context covers; values it did not
 * see stay, as concurrent values. The field's kind is the kind of the op with the greatest
 * (hlc, author) ever applied to it, a max, so it converges too.
 *
 * Canonical encoding (also the stored form; byte-identical on replicas that applied the same ops):
 *   record = [flags (1 = deleted), authors (sorted bin32), fields (sorted by name)]
 *   field  = [name, kind, kind_hlc, kind_author_ref, regs, counters, elements]
 *   reg    = [author_ref, seq, hlc, op type (lww|mv), value]        sorted by (author, seq)
 *   ctr    = [author_ref, total]                                   sorted by author
 *   elem   = [value, [[author_ref, seq]...]]                       sorted by value bytes, dots
 * where author_ref indexes the record's own author table.
 */
#ifndef FM_RECORD_H
#define FM_RECORD_H

#include "crdt/base.h"
#include "crdt/batch.h"

/* Interned author ids: small indexes for the hot path, keys for every canonical output. */
typedef struct fm_authors {
    uint8_t (*keys)[FM_ID_BYTES];
    uint32_t n, cap;
    uint32_t *slots; /* open addressing: index + 1, 0 = empty */
    uint32_t nslots;
} fm_authors;

void fm_authors_init(fm_authors *a);
void fm_authors_free(fm_authors *a);
int fm_authors_intern(fm_authors *a, const uint8_t key[FM_ID_BYTES], uint32_t *idx);
/* UINT32_MAX if absent. */
uint32_t fm_authors_find(const fm_authors *a, const uint8_t key[FM_ID_BYTES]);
static inline const uint8_t *fm_authors_key(const fm_authors *a, uint32_t idx)
{
    FM_ASSERT(idx < a->n);
    return a->keys[idx];
}

/* A register value. Small encodings (most scalars) live inline: no allocation per write. */
typedef struct fm_reg {
    uint64_t seq, hlc;
    uint32_t author;
    uint8_t type; /* FM_OP_SET_LWW or FM_OP_SET_MV */
    uint32_t vlen;
    union {
        uint8_t *p;      /* vlen > sizeof inl */
        uint8_t inl[16]; /* vlen <= sizeof inl */
    } v;
} fm_reg;

static inline const uint8_t *fm_reg_value(const fm_reg *g)
{
    return g->vlen <= sizeof g->v.inl ? g->v.inl : g->v.p;
}
/* Copies the encoding in (vlen must be 0 on entry); FM_ENOMEM leaves vlen 0. */
int fm_reg_set_value(fm_reg *g, const uint8_t *enc, uint32_t len);
void fm_reg_free_value(fm_reg *g);

typedef struct fm_ctr {
    uint32_t author;
    int64_t total;
} fm_ctr;

typedef struct fm_edot {
    uint32_t author;
    uint64_t seq;
} fm_edot;

typedef struct fm_elem {
    uint8_t *v;
    uint32_t vlen;
    uint32_t ndots;
    fm_edot *dots;
} fm_elem;

typedef struct fm_field {
    /* Short names (most) live inline: a node caches millions of fields, nearly all named by a
     * word, and an allocation each was a third of a small record and a cache miss per lookup. */
    union {
        uint8_t *p;     /* name_len > sizeof inl */
        uint8_t inl[8]; /* name_len <= sizeof inl */
    } name;
    uint32_t name_len;
    uint8_t kind;
    uint32_t kind_author;
    uint64_t kind_hlc;
    fm_reg *regs;
    fm_ctr *ctrs;
    fm_elem *elems;
    uint32_t nregs, nctrs, nelems;
    uint32_t cregs, cctrs, celems;
} fm_field;

typedef struct fm_rec {
    /* A short id (most) lives inline, as a field's name does: one allocation less per record,
     * and no pointer to follow when a map probe compares it. fm_rec_id() reads it. */
    union {
        uint8_t *p;     /* id_len > sizeof inl */
        uint8_t inl[8]; /* id_len <= sizeof inl */
    } id;
    uint32_t id_len;
    uint32_t hash32; /* map hash of id */
    bool deleted;
    bool exists; /* any op applied, or loaded from a stored state */
    bool dirty;
    /* As last loaded or flushed: what the collection aggregates currently count. */
    bool flushed_live;
    uint32_t flushed_conflicts;
    uint8_t flushed_hash[FM_HASH_BYTES]; /* all zero if it did not exist */
    fm_field *fields;                    /* sorted by name */
    uint32_t nfields, cfields;
} fm_rec;

/* Everything an op needs to know about its causal context. ctx_seq is dense over author indexes
 * (every author interned at the time of the call); the author's own earlier ops are covered
 * through seq. */
typedef struct fm_opctx {
    const fm_authors *authors;
    const uint64_t *ctx_seq;
    uint32_t nctx;
    uint32_t author;
    uint64_t seq;
    uint64_t hlc;
} fm_opctx;

fm_rec *fm_rec_new(const uint8_t *id, uint32_t id_len);
static inline const uint8_t *fm_rec_id(const fm_rec *r)
{
    return r->id_len <= sizeof r->id.inl ? r->id.inl : r->id.p;
}
void fm_rec_free(fm_rec *r);
/* Drops every field (the record keeps its id). */
void fm_rec_clear_fields(fm_rec *r);
/* Applies one decoded op to the record. FM_ENOMEM leaves the record unusable (the caller
 * reloads from its store). */
int fm_rec_apply(fm_rec *r, const fm_opctx *c, const fm_op *op);

/* Canonical encoding. */
int fm_rec_encode(const fm_rec *r, const fm_authors *authors, fm_buf *out);
/* Replaces r's state with a stored encoding (strict decode), interning its authors. */
int fm_rec_decode(fm_rec *r, fm_authors *authors, const uint8_t *p, size_t len);
/* A field's name: bytes inside f if short, so valid only until the record changes. */
static inline const uint8_t *fm_field_name(const fm_field *f)
{
    return f->name_len <= sizeof f->name.inl ? f->name.inl : f->name.p;
}
/* Copies the name in (name_len must be 0 on entry); FM_ENOMEM leaves name_len 0. */
int fm_field_set_name(fm_field *f, const uint8_t *name, uint32_t len);
/* The field named name, or NULL; valid until the record changes. */
fm_field *fm_rec_field(const fm_rec *r, const uint8_t *name, uint32_t len);
/* The set element with encoding v, or NULL. */
fm_elem *fm_field_elem(const fm_field *f, const uint8_t *v, uint32_t len);
/* Fields in conflict: mv-kind fields holding more than one concurrent value. */
uint32_t fm_rec_conflicts(const fm_rec *r);
/* The winning register of an lww field: greatest (hlc, author id). NULL if none. */
const fm_reg *fm_field_winner(const fm_field *f, const fm_authors *authors);
int64_t fm_field_counter(const fm_field *f);

#endif
