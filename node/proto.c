/*
 * proto.c — encoders and strict decoders of the sync messages (proto.h, docs/PROTOCOL.md).
 */
#include "node/proto.h"

#include "crdt/batch.h"

#include <string.h>

static int wr_done(const fm_buf *out)
{
    return out->oom ? FM_ENOMEM : 0;
}

/* Reads [type, ...] and checks the array length and type. */
static int rd_head(fm_rd *r, uint64_t type, uint32_t n)
{
    uint64_t t;
    if (fm_rd_array_exact(r, n) || fm_rd_uint(r, &t))
        return r->err;
    return t == type ? 0 : (r->err = FM_EDECODE);
}

/* A collection name: a valid name by the batch rules. */
static int rd_name(fm_rd *r, fm_proto_name *n)
{
    if (fm_rd_str(r, &n->p, &n->len, FM_MAX_COLLECTION_LEN))
        return r->err;
    if (fm_name_check(n->p, n->len, FM_MAX_COLLECTION_LEN))
        return r->err = FM_EDECODE;
    return 0;
}

static int name_cmp(const fm_proto_name *a, const fm_proto_name *b)
{
    return fm_bytes_cmp(a->p, a->len, b->p, b->len);
}

int fm_proto_type(const uint8_t *p, size_t len, uint64_t *type)
{
    fm_rd r;
    uint32_t n;
    fm_rd_init(&r, p, len);
    if (fm_rd_array(&r, &n) || fm_rd_uint(&r, type))
        return r.err;
    return n >= 1 ? 0 : FM_EDECODE;
}

/* ---- HELLO ---------------------------------------------------------------------------------- */

int fm_proto_hello_encode(fm_buf *out, const fm_hello *h)
{
    FM_ASSERT(h->nsubs <= FM_NODE_MAX_SUBS);
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 8);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_HELLO);
    msgpack_pack_uint64(FM_PK(&w), h->proto_min);
    msgpack_pack_uint64(FM_PK(&w), h->proto_max);
    msgpack_pack_uint64(FM_PK(&w), h->caps);
    msgpack_pack_uint64(FM_PK(&w), h->window);
    if (h->subs_all) {
        msgpack_pack_nil(FM_PK(&w));
    } else {
        msgpack_pack_array(FM_PK(&w), h->nsubs);
        for (uint32_t i = 0; i < h->nsubs; i++) {
            msgpack_pack_array(FM_PK(&w), 2);
            fm_wr_str(&w, h->subs[i].p, h->subs[i].len);
            msgpack_pack_uint64(FM_PK(&w), h->prio[i]);
        }
    }
    fm_wr_bin(&w, h->members_digest, FM_HASH_BYTES);
    msgpack_pack_uint64(FM_PK(&w), h->members_count);
    return wr_done(out);
}

static int hello_subs(fm_rd *r, fm_hello *h)
{
    int nil = fm_rd_nil(r);
    if (nil < 0)
        return nil;
    h->subs_all = nil == 1;
    h->nsubs = 0;
    if (h->subs_all)
        return 0;
    uint32_t n;
    if (fm_rd_array(r, &n))
        return r->err;
    if (n > FM_NODE_MAX_SUBS)
        return r->err = FM_ELIMIT;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t prio;
        if (fm_rd_array_exact(r, 2) || rd_name(r, &h->subs[i]) || fm_rd_uint(r, &prio))
            return r->err;
        if (prio > FM_PRIO_BULK)
            return r->err = FM_EDECODE;
        if (i && name_cmp(&h->subs[i - 1], &h->subs[i]) >= 0)
            return r->err = FM_ENONCANON;
        h->prio[i] = (uint8_t)prio;
        h->nsubs = i + 1;
    }
    return 0;
}

int fm_proto_hello_decode(const uint8_t *p, size_t len, fm_hello *h)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    memset(h, 0, sizeof *h);
    if (rd_head(&r, FM_MSG_HELLO, 8) || fm_rd_uint(&r, &h->proto_min) ||
        fm_rd_uint(&r, &h->proto_max) || fm_rd_uint(&r, &h->caps) || fm_rd_uint(&r, &h->window) ||
        hello_subs(&r, h) || fm_rd_bin_fixed(&r, h->members_digest, FM_HASH_BYTES) ||
        fm_rd_uint(&r, &h->members_count) || fm_rd_end(&r))
        return r.err;
    if (h->proto_min == 0 || h->proto_min > h->proto_max)
        return FM_EDECODE;
    if (h->window < FM_PROTO_MIN_WINDOW || h->window > FM_PROTO_MAX_WINDOW)
        return FM_ELIMIT;
    return 0;
}

/* ---- SUMMARY -------------------------------------------------------------------------------- */

void fm_proto_summary_begin(fm_wr *w, uint64_t round, uint32_t n)
{
    msgpack_pack_array(FM_PK(w), 3);
    msgpack_pack_uint64(FM_PK(w), FM_MSG_SUMMARY);
    msgpack_pack_uint64(FM_PK(w), round);
    msgpack_pack_array(FM_PK(w), n);
}

void fm_proto_summary_entry(fm_wr *w, const uint8_t *name, uint32_t len,
                            const uint8_t digest[FM_HASH_BYTES])
{
    msgpack_pack_array(FM_PK(w), 2);
    fm_wr_str(w, name, len);
    fm_wr_bin(w, digest, FM_HASH_BYTES);
}

static int summary_walk(fm_rd *r, uint64_t *round, int (*fn)(void *, const fm_summary_entry *),
                        void *arg)
{
    uint32_t n;
    if (rd_head(r, FM_MSG_SUMMARY, 3) || fm_rd_uint(r, round) || fm_rd_array(r, &n))
        return r->err;
    if (n > FM_PROTO_MAX_SUMMARY)
        return r->err = FM_ELIMIT;
    fm_proto_name prev = {NULL, 0};
    for (uint32_t i = 0; i < n; i++) {
        fm_summary_entry e;
        uint32_t dlen;
        if (fm_rd_array_exact(r, 2) || rd_name(r, &e.name) ||
            fm_rd_bin(r, &e.digest, &dlen, FM_HASH_BYTES))
            return r->err;
        if (dlen != FM_HASH_BYTES)
            return r->err = FM_EDECODE;
        if (i && name_cmp(&prev, &e.name) >= 0)
            return r->err = FM_ENONCANON;
        prev = e.name;
        if (fn) {
            int rc = fn(arg, &e);
            if (rc)
                return rc;
        }
    }
    return fm_rd_end(r);
}

int fm_proto_summary_decode(const uint8_t *p, size_t len, uint64_t *round,
                            int (*fn)(void *arg, const fm_summary_entry *e), void *arg)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    int rc = summary_walk(&r, round, NULL, NULL); /* validate the whole frame first */
    if (rc || !fn)
        return rc;
    fm_rd_init(&r, p, len);
    return summary_walk(&r, round, fn, arg);
}

/* ---- VECTOR --------------------------------------------------------------------------------- */

int fm_proto_vector_encode(fm_buf *out, uint64_t round, uint64_t flags, uint64_t acked,
                           const uint8_t *name, uint32_t len, const fm_vv *vv)
{
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 6);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_VECTOR);
    msgpack_pack_uint64(FM_PK(&w), round);
    msgpack_pack_uint64(FM_PK(&w), flags);
    msgpack_pack_uint64(FM_PK(&w), acked);
    fm_wr_str(&w, name, len);
    fm_vv_write(&w, vv);
    return wr_done(out);
}

int fm_proto_vector_decode(const uint8_t *p, size_t len, fm_vector_msg *m)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_VECTOR, 6) || fm_rd_uint(&r, &m->round) || fm_rd_uint(&r, &m->flags) ||
        fm_rd_uint(&r, &m->acked) || rd_name(&r, &m->name) || fm_vv_read(&r, &m->vv) ||
        fm_rd_end(&r))
        return r.err;
    return m->flags & ~(uint64_t)FM_VECTOR_REPLY ? FM_EDECODE : 0;
}

/* ---- BATCHES -------------------------------------------------------------------------------- */

void fm_proto_batches_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n)
{
    msgpack_pack_array(FM_PK(w), 3);
    msgpack_pack_uint64(FM_PK(w), FM_MSG_BATCHES);
    fm_wr_str(w, name, len);
    msgpack_pack_array(FM_PK(w), n);
}

/* The length of a list that must hold 1..room items: 0 is FM_EDECODE, more is FM_ELIMIT. */
static int rd_list(fm_rd *r, uint32_t room, uint32_t *k)
{
    if (fm_rd_array(r, k))
        return r->err;
    if (*k == 0)
        return r->err = FM_EDECODE;
    if (*k > room)
        return r->err = FM_ELIMIT;
    return 0;
}

/* One list of batches, 1..room (more is FM_ELIMIT), into out. */
static int rd_batches(fm_rd *r, fm_bytes *out, uint32_t room, uint32_t *n)
{
    uint32_t k;
    if (rd_list(r, room, &k))
        return r->err;
    for (uint32_t i = 0; i < k; i++) {
        const uint8_t *b;
        uint32_t blen;
        if (fm_rd_bin(r, &b, &blen, FM_MAX_BATCH_BYTES))
            return r->err;
        if (out) {
            out[i].data = (uint8_t *)b; /* borrowed; the node never writes through it */
            out[i].len = blen;
        }
    }
    *n = k;
    return 0;
}

int fm_proto_batches_decode_room(const uint8_t *p, size_t len, fm_proto_name *name, fm_bytes *out,
                                 uint32_t room, uint32_t *n)
{
    FM_ASSERT(room <= FM_PROTO_MAX_BATCHES_PER_FRAME);
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_BATCHES, 3) || rd_name(&r, name) || rd_batches(&r, out, room, n))
        return r.err;
    return fm_rd_end(&r);
}

int fm_proto_batches_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_bytes *out,
                            uint32_t *n)
{
    return fm_proto_batches_decode_room(p, len, name, out, FM_PROTO_MAX_BATCHES_PER_FRAME, n);
}

/* MIXED and ANNOUNCE: [type, [[name, list]...]]. */
static void groups_begin(fm_wr *w, uint64_t type, uint32_t ngroups, uint32_t max)
{
    FM_ASSERT(ngroups >= 1 && ngroups <= max);
    msgpack_pack_array(FM_PK(w), 2);
    msgpack_pack_uint64(FM_PK(w), type);
    msgpack_pack_array(FM_PK(w), ngroups);
}

static void group_head(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n, uint32_t max)
{
    FM_ASSERT(n >= 1 && n <= max);
    msgpack_pack_array(FM_PK(w), 2);
    fm_wr_str(w, name, len);
    msgpack_pack_array(FM_PK(w), n);
}

void fm_proto_mixed_begin(fm_wr *w, uint32_t ngroups)
{
    groups_begin(w, FM_MSG_MIXED, ngroups, FM_PROTO_MAX_BATCHES_PER_FRAME);
}

void fm_proto_mixed_group(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n)
{
    group_head(w, name, len, n, FM_PROTO_MAX_BATCHES_PER_FRAME);
}

/* [type, [[name, list]...]]: 1..max groups of non-empty lists, max items in all. Item i goes to
 * out + i * size (read by list), its collection to names[i]; NULL out and names only count. */
static int groups_decode(uint64_t type, const uint8_t *p, size_t len, uint32_t max,
                         fm_proto_name *names, void *out, size_t size,
                         int (*list)(fm_rd *r, void *out, uint32_t room, uint32_t *n), uint32_t *n)
{
    fm_rd r;
    uint32_t groups, total = 0;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, type, 2) || rd_list(&r, max, &groups))
        return r.err;
    for (uint32_t g = 0; g < groups; g++) {
        fm_proto_name name;
        uint32_t k = 0;
        if (total == max)
            return FM_ELIMIT; /* another group, and no item may follow */
        if (fm_rd_array_exact(&r, 2) || rd_name(&r, &name) ||
            list(&r, out ? (uint8_t *)out + total * size : NULL, max - total, &k))
            return r.err;
        for (uint32_t i = 0; names && i < k; i++)
            names[total + i] = name;
        total += k;
    }
    *n = total;
    return fm_rd_end(&r);
}

static int rd_batches_any(fm_rd *r, void *out, uint32_t room, uint32_t *n)
{
    return rd_batches(r, out, room, n);
}

int fm_proto_mixed_decode_room(const uint8_t *p, size_t len, fm_proto_name *names, fm_bytes *out,
                               uint32_t room, uint32_t *n)
{
    FM_ASSERT(room <= FM_PROTO_MAX_BATCHES_PER_FRAME);
    return groups_decode(FM_MSG_MIXED, p, len, room, names, out, sizeof *out, rd_batches_any, n);
}

int fm_proto_mixed_decode(const uint8_t *p, size_t len, fm_proto_name *names, fm_bytes *out,
                          uint32_t *n)
{
    return fm_proto_mixed_decode_room(p, len, names, out, FM_PROTO_MAX_BATCHES_PER_FRAME, n);
}

/* ---- ACK ------------------------------------------------------------------------------------ */

int fm_proto_ack_encode(fm_buf *out, uint64_t processed)
{
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 2);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_ACK);
    msgpack_pack_uint64(FM_PK(&w), processed);
    return wr_done(out);
}

int fm_proto_ack_decode(const uint8_t *p, size_t len, uint64_t *processed)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_ACK, 2) || fm_rd_uint(&r, processed) || fm_rd_end(&r))
        return r.err;
    return 0;
}

/* ---- MEMBERS -------------------------------------------------------------------------------- */

void fm_proto_members_begin(fm_wr *w, uint32_t n)
{
    FM_ASSERT(n <= FM_PROTO_MEMBERS_PER_FRAME);
    msgpack_pack_array(FM_PK(w), 2);
    msgpack_pack_uint64(FM_PK(w), FM_MSG_MEMBERS);
    msgpack_pack_array(FM_PK(w), n);
}

int fm_proto_members_decode(const uint8_t *p, size_t len, fm_bytes *out, uint32_t *n)
{
    fm_rd r;
    uint32_t k;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_MEMBERS, 2) || fm_rd_array(&r, &k))
        return r.err;
    if (k == 0)
        return FM_EDECODE;
    if (k > FM_PROTO_MEMBERS_PER_FRAME)
        return FM_ELIMIT;
    for (uint32_t i = 0; i < k; i++) {
        const uint8_t *b;
        uint32_t blen;
        if (fm_rd_bin(&r, &b, &blen, FM_PROTO_MAX_MEMBER_BYTES))
            return r.err;
        out[i].data = (uint8_t *)b;
        out[i].len = blen;
    }
    *n = k;
    return fm_rd_end(&r);
}

/* ---- IHAVE, PRUNE, GRAFT ------------------------------------------------------------------------
 */

static void entries_begin(fm_wr *w, uint64_t type, const uint8_t *name, uint32_t len, uint32_t n)
{
    FM_ASSERT(n >= 1 && n <= FM_PROTO_MAX_IHAVE);
    msgpack_pack_array(FM_PK(w), 3);
    msgpack_pack_uint64(FM_PK(w), type);
    fm_wr_str(w, name, len);
    msgpack_pack_array(FM_PK(w), n);
}

void fm_proto_ihave_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n)
{
    entries_begin(w, FM_MSG_IHAVE, name, len, n);
}

void fm_proto_graft_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n)
{
    entries_begin(w, FM_MSG_GRAFT, name, len, n);
}

void fm_proto_ihave_entry(fm_wr *w, const uint8_t author[FM_ID_BYTES], uint64_t seq)
{
    FM_ASSERT(seq > 0);
    msgpack_pack_array(FM_PK(w), 2);
    fm_wr_bin(w, author, FM_ID_BYTES);
    msgpack_pack_uint64(FM_PK(w), seq);
}

/* One entry list of at most room entries (1..room; more is FM_ELIMIT) into out. */
static int rd_entries(fm_rd *r, fm_ihave_entry *out, uint32_t room, uint32_t *n)
{
    uint32_t k;
    if (rd_list(r, room, &k))
        return r->err;
    for (uint32_t i = 0; i < k; i++) {
        const uint8_t *a;
        uint32_t alen;
        if (fm_rd_array_exact(r, 2) || fm_rd_bin(r, &a, &alen, FM_ID_BYTES) ||
            fm_rd_uint(r, &out[i].seq))
            return r->err;
        if (alen != FM_ID_BYTES || out[i].seq == 0)
            return r->err = FM_EDECODE;
        out[i].author = a;
    }
    *n = k;
    return 0;
}

static int entries_decode(uint64_t type, const uint8_t *p, size_t len, fm_proto_name *name,
                          fm_ihave_entry *out, uint32_t *n)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, type, 3) || rd_name(&r, name) || rd_entries(&r, out, FM_PROTO_MAX_IHAVE, n))
        return r.err;
    return fm_rd_end(&r);
}

void fm_proto_announce_begin(fm_wr *w, uint32_t ngroups)
{
    groups_begin(w, FM_MSG_ANNOUNCE, ngroups, FM_PROTO_MAX_IHAVE);
}

void fm_proto_announce_group(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n)
{
    group_head(w, name, len, n, FM_PROTO_MAX_IHAVE);
}

static int rd_entries_any(fm_rd *r, void *out, uint32_t room, uint32_t *n)
{
    return rd_entries(r, out, room, n);
}

int fm_proto_announce_decode(const uint8_t *p, size_t len, fm_proto_name *names,
                             fm_ihave_entry *out, uint32_t *n)
{
    return groups_decode(FM_MSG_ANNOUNCE, p, len, FM_PROTO_MAX_IHAVE, names, out, sizeof *out,
                         rd_entries_any, n);
}

int fm_proto_ihave_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_ihave_entry *out,
                          uint32_t *n)
{
    return entries_decode(FM_MSG_IHAVE, p, len, name, out, n);
}

int fm_proto_graft_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_ihave_entry *out,
                          uint32_t *n)
{
    return entries_decode(FM_MSG_GRAFT, p, len, name, out, n);
}

int fm_proto_prune_encode(fm_buf *out)
{
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 1);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_PRUNE);
    return wr_done(out);
}

int fm_proto_prune_decode(const uint8_t *p, size_t len)
{
    fm_rd r;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_PRUNE, 1) || fm_rd_end(&r))
        return r.err;
    return 0;
}

/* ---- PEERS ----------------------------------------------------------------------------------- */

/* Strictly ascending: one canonical form, and no entry twice. */
static bool peers_sorted(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++)
        if (memcmp(p + (i - 1) * FM_PROTO_PEER_PREFIX, p + i * FM_PROTO_PEER_PREFIX,
                   FM_PROTO_PEER_PREFIX) >= 0)
            return false;
    return true;
}

int fm_proto_peers_encode(fm_buf *out, const uint8_t *prefixes, uint32_t n)
{
    if (n > FM_PROTO_MAX_PEERS || (n && !prefixes) || !peers_sorted(prefixes, n))
        return FM_EINVAL;
    fm_wr w;
    fm_wr_init(&w, out);
    msgpack_pack_array(FM_PK(&w), 2);
    msgpack_pack_uint64(FM_PK(&w), FM_MSG_PEERS);
    fm_wr_bin(&w, prefixes, n * FM_PROTO_PEER_PREFIX);
    return wr_done(out);
}

int fm_proto_peers_decode(const uint8_t *p, size_t len, const uint8_t **prefixes, uint32_t *n)
{
    fm_rd r;
    const uint8_t *b;
    uint32_t blen;
    fm_rd_init(&r, p, len);
    if (rd_head(&r, FM_MSG_PEERS, 2) ||
        fm_rd_bin(&r, &b, &blen, FM_PROTO_MAX_PEERS * FM_PROTO_PEER_PREFIX) || fm_rd_end(&r))
        return r.err;
    if (blen % FM_PROTO_PEER_PREFIX || !peers_sorted(b, blen / FM_PROTO_PEER_PREFIX))
        return FM_EDECODE;
    *prefixes = b;
    *n = blen / FM_PROTO_PEER_PREFIX;
    return 0;
}
