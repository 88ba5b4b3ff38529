/* vv.c — sparse version vectors over 32-byte author ids. */
#include "crdt/vv.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void fm_vv_init(fm_vv *v)
{
    memset(v, 0, sizeof *v);
}

void fm_vv_free(fm_vv *v)
{
    free(v->e);
    fm_vv_init(v);
}

int fm_vv_copy(fm_vv *dst, const fm_vv *src)
{
    fm_vv_entry *e = fm_reallocarray(NULL, src->n, sizeof *e);
    if (!e)
        return FM_ENOMEM;
    if (src->n)
        memcpy(e, src->e, src->n * sizeof *e);
    free(dst->e);
    dst->e = e;
    dst->n = dst->cap = src->n;
    return 0;
}

/* Index of author, or of where it would be inserted (*found = false). */
static uint32_t vv_find(const fm_vv *v, const uint8_t *author, bool *found)
{
    uint32_t lo = 0, hi = v->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = fm_id_cmp(v->e[mid].author, author);
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

uint64_t fm_vv_get(const fm_vv *v, const uint8_t author[FM_ID_BYTES])
{
    bool found;
    uint32_t i = vv_find(v, author, &found);
    return found ? v->e[i].seq : 0;
}

/* Adds author at i, where vv_find said it belongs; seq > 0. */
static int vv_insert(fm_vv *v, uint32_t i, const uint8_t *author, uint64_t seq)
{
    FM_ASSERT(seq > 0 && i <= v->n);
    if (v->n >= FM_MAX_VV_ENTRIES)
        return FM_ELIMIT;
    if (fm_grow_from1((void **)&v->e, v->n, &v->cap, sizeof *v->e))
        return FM_ENOMEM;
    memmove(&v->e[i + 1], &v->e[i], (v->n - i) * sizeof *v->e);
    memcpy(v->e[i].author, author, FM_ID_BYTES);
    v->e[i].seq = seq;
    v->n++;
    return 0;
}

uint32_t fm_vv_index(const fm_vv *v, const uint8_t author[FM_ID_BYTES])
{
    bool found;
    uint32_t i = vv_find(v, author, &found);
    return found ? i : UINT32_MAX;
}

/* vv_find, trying index hint first (fm_vv_get_hinted). */
static uint32_t vv_find_hinted(const fm_vv *v, const uint8_t *author, uint32_t hint, bool *found)
{
    if (hint < v->n && fm_id_cmp(v->e[hint].author, author) == 0) {
        *found = true;
        return hint;
    }
    return vv_find(v, author, found);
}

uint64_t fm_vv_get_hinted(const fm_vv *v, const uint8_t author[FM_ID_BYTES], uint32_t hint)
{
    bool found;
    uint32_t i = vv_find_hinted(v, author, hint, &found);
    return found ? v->e[i].seq : 0;
}

int fm_vv_set(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq)
{
    bool found;
    uint32_t i = vv_find(v, author, &found);
    if (found) {
        if (seq) {
            v->e[i].seq = seq;
        } else {
            memmove(&v->e[i], &v->e[i + 1], (v->n - i - 1) * sizeof *v->e);
            v->n--;
        }
        return 0;
    }
    return seq ? vv_insert(v, i, author, seq) : 0;
}

int fm_vv_raise(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq)
{
    return fm_vv_raise_hinted(v, author, seq, UINT32_MAX);
}

int fm_vv_raise_hinted(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq, uint32_t hint)
{
    return fm_vv_raise_at(v, author, seq, &hint);
}

int fm_vv_raise_at(fm_vv *v, const uint8_t author[FM_ID_BYTES], uint64_t seq, uint32_t *at)
{
    bool found;
    uint32_t i = vv_find_hinted(v, author, *at, &found);
    int rc = 0;
    if (found)
        v->e[i].seq = FM_MAX(v->e[i].seq, seq);
    else if (!seq || (rc = vv_insert(v, i, author, seq)))
        i = UINT32_MAX;
    *at = i;
    return rc;
}

int fm_vv_merge(fm_vv *dst, const fm_vv *src)
{
    for (uint32_t i = 0; i < src->n; i++) {
        int rc = fm_vv_raise(dst, src->e[i].author, src->e[i].seq);
        if (rc)
            return rc;
    }
    return 0;
}

fm_vv_order fm_vv_compare(const fm_vv *a, const fm_vv *b)
{
    bool a_more = false, b_more = false;
    uint32_t i = 0, j = 0;
    while (i < a->n || j < b->n) {
        int c = i == a->n ? 1 : j == b->n ? -1 : fm_id_cmp(a->e[i].author, b->e[j].author);
        if (c < 0) {
            a_more = true, i++;
        } else if (c > 0) {
            b_more = true, j++;
        } else {
            a_more |= a->e[i].seq > b->e[j].seq;
            b_more |= a->e[i].seq < b->e[j].seq;
            i++, j++;
        }
    }
    return a_more ? (b_more ? FM_VV_CONCURRENT : FM_VV_GREATER)
                  : (b_more ? FM_VV_LESS : FM_VV_EQUAL);
}

bool fm_vv_leq(const fm_vv *a, const fm_vv *b)
{
    if (a->n > b->n)
        return false; /* every seq is > 0: an author of a missing from b */
    if ((uint64_t)a->n * 16 >= b->n) {
        fm_vv_order o = fm_vv_compare(a, b);
        return o == FM_VV_EQUAL || o == FM_VV_LESS;
    }
    for (uint32_t i = 0; i < a->n; i++)
        if (fm_vv_get(b, a->e[i].author) < a->e[i].seq)
            return false;
    return true;
}

uint64_t fm_vv_total(const fm_vv *v)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < v->n; i++)
        t += v->e[i].seq;
    return t;
}

static void write_entry(fm_wr *w, const fm_vv_entry *e)
{
    msgpack_pack_array(FM_PK(w), 2);
    fm_wr_bin(w, e->author, FM_ID_BYTES);
    msgpack_pack_uint64(FM_PK(w), e->seq);
}

void fm_vv_write(fm_wr *w, const fm_vv *v)
{
    msgpack_pack_array(FM_PK(w), v->n);
    for (uint32_t i = 0; i < v->n; i++)
        write_entry(w, &v->e[i]);
}

int fm_vv_encode(const fm_vv *v, fm_buf *out)
{
    fm_wr w;
    fm_wr_init(&w, out);
    fm_vv_write(&w, v);
    return out->oom ? FM_ENOMEM : 0;
}

int fm_vv_read(fm_rd *r, fm_vv *v)
{
    fm_vv tmp;
    fm_vv_init(&tmp);
    if (fm_vv_read_into(r, &tmp)) {
        fm_vv_free(&tmp);
        return r->err;
    }
    fm_vv_free(v);
    *v = tmp;
    return 0;
}

int fm_vv_read_into(fm_rd *r, fm_vv *v)
{
    uint32_t n;
    v->n = 0;
    if (fm_rd_array(r, &n))
        return r->err;
    if (n > FM_MAX_VV_ENTRIES)
        return r->err = FM_ELIMIT;
    if (n > v->cap) {
        fm_vv_entry *e = fm_reallocarray(v->e, n, sizeof *e);
        if (!e)
            return r->err = FM_ENOMEM;
        v->e = e;
        v->cap = n;
    }
    for (uint32_t i = 0; i < n; i++) {
        fm_vv_entry *x = &v->e[i];
        if (fm_rd_array_exact(r, 2) || fm_rd_bin_fixed(r, x->author, FM_ID_BYTES) ||
            fm_rd_uint(r, &x->seq))
            break;
        if (x->seq == 0 || (i && fm_id_cmp(v->e[i - 1].author, x->author) >= 0)) {
            r->err = FM_ENONCANON;
            break;
        }
    }
    if (r->err)
        return r->err; /* v->n is still 0 */
    v->n = n;
    return 0;
}

int fm_vv_decode(const uint8_t *p, size_t len, fm_vv *v)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    fm_vv tmp;
    fm_vv_init(&tmp);
    if (fm_vv_read(&r, &tmp) || fm_rd_end(&r)) {
        fm_vv_free(&tmp);
        return r.err;
    }
    fm_vv_free(v);
    *v = tmp;
    return 0;
}

/* The hash of fm_vv_encode's bytes, fed to the hash a few KB at a time: a thousand authors
 * encode to 40 KB, which a buffer grown by doubling from nothing copied ten times over. */
int fm_vv_digest(const fm_vv *v, uint8_t out[FM_HASH_BYTES])
{
    enum { CHUNK = 4096 };
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, FM_HASH_BYTES);
    fm_buf b;
    fm_buf_init(&b);
    /* An entry encodes to at most 44 bytes: the buffer never grows. */
    int rc = fm_buf_reserve(&b, FM_MIN((size_t)CHUNK + 64, 8 + (size_t)v->n * 44));
    fm_wr w;
    fm_wr_init(&w, &b);
    msgpack_pack_array(FM_PK(&w), v->n);
    for (uint32_t i = 0; !rc && i < v->n; i++) {
        write_entry(&w, &v->e[i]);
        if (b.oom)
            rc = FM_ENOMEM;
        else if (b.len >= CHUNK) {
            crypto_generichash_update(&st, b.data, b.len);
            fm_buf_reset(&b);
        }
    }
    if (!rc && b.oom)
        rc = FM_ENOMEM;
    if (!rc) {
        crypto_generichash_update(&st, b.data, b.len);
        crypto_generichash_final(&st, out, FM_HASH_BYTES);
    }
    fm_buf_free(&b);
    return rc;
}
