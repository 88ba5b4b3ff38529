/*
 * fuzz_proto.c — libFuzzer target for the sync message decoders (node/proto.h). The input is one
 * frame's plaintext. It goes to fm_proto_type and the decoder of that type, and to every decoder
 * regardless of type. Never crashes; a frame that decodes is canonical: re-encoding what was
 * decoded reproduces the input byte for byte, every bound holds, and it decodes as no other type.
 */
#include "node/proto.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_bytes(const fm_buf *out, const uint8_t *data, size_t size)
{
    if (out->oom || out->len != size || memcmp(out->data, data, size) != 0)
        abort();
}

static int hello(const uint8_t *data, size_t size)
{
    static fm_hello h; /* 4 KiB: off the stack; libFuzzer runs one input at a time */
    int rc = fm_proto_hello_decode(data, size, &h);
    if (rc)
        return rc;
    if (h.nsubs > FM_NODE_MAX_SUBS || (h.subs_all && h.nsubs) || h.proto_min == 0 ||
        h.proto_min > h.proto_max || h.window < FM_PROTO_MIN_WINDOW ||
        h.window > FM_PROTO_MAX_WINDOW)
        abort();
    for (uint32_t i = 0; i < h.nsubs; i++)
        if (h.prio[i] > FM_PRIO_BULK || h.subs[i].len == 0 || h.subs[i].len > FM_MAX_COLLECTION_LEN)
            abort();
    fm_buf out;
    fm_buf_init(&out);
    if (fm_proto_hello_encode(&out, &h) != 0)
        abort();
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

typedef struct summary_copy {
    fm_wr w;
    uint32_t n;
} summary_copy;

static int summary_entry(void *arg, const fm_summary_entry *e)
{
    summary_copy *x = arg;
    fm_proto_summary_entry(&x->w, e->name.p, e->name.len, e->digest);
    x->n++;
    return 0;
}

static int count_entry(void *arg, const fm_summary_entry *e)
{
    (void)e;
    (*(uint32_t *)arg)++;
    return 0;
}

static int summary(const uint8_t *data, size_t size)
{
    uint64_t round;
    uint32_t n = 0;
    int rc = fm_proto_summary_decode(data, size, &round, count_entry, &n);
    if (rc)
        return rc;
    if (n > FM_PROTO_MAX_SUMMARY)
        abort();
    fm_buf out;
    fm_buf_init(&out);
    summary_copy x = {.n = 0};
    fm_wr_init(&x.w, &out);
    fm_proto_summary_begin(&x.w, round, n);
    uint64_t round2;
    if (fm_proto_summary_decode(data, size, &round2, summary_entry, &x) != 0 || x.n != n ||
        round2 != round)
        abort();
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

static int vector(const uint8_t *data, size_t size)
{
    fm_vector_msg m;
    fm_vv_init(&m.vv);
    int rc = fm_proto_vector_decode(data, size, &m);
    if (rc == 0) {
        if ((m.flags & ~(uint64_t)FM_VECTOR_REPLY) || m.vv.n > FM_MAX_VV_ENTRIES)
            abort();
        fm_buf out;
        fm_buf_init(&out);
        if (fm_proto_vector_encode(&out, m.round, m.flags, m.acked, m.name.p, m.name.len, &m.vv) !=
            0)
            abort();
        same_bytes(&out, data, size);
        fm_buf_free(&out);
    }
    fm_vv_free(&m.vv);
    return rc;
}

static fm_bytes arr[FM_PROTO_MAX_BATCHES_PER_FRAME];

static int batches(const uint8_t *data, size_t size)
{
    fm_proto_name name;
    uint32_t n = 0;
    int rc = fm_proto_batches_decode(data, size, &name, arr, &n);
    /* Counting alone (how the node sizes its arrays) judges every frame the same way. */
    uint32_t counted = 0;
    if (fm_proto_batches_decode(data, size, &name, NULL, &counted) != rc || (!rc && counted != n))
        abort();
    if (rc)
        return rc;
    if (n == 0 || n > FM_PROTO_MAX_BATCHES_PER_FRAME)
        abort();
    fm_buf out;
    fm_buf_init(&out);
    fm_wr w;
    fm_wr_init(&w, &out);
    fm_proto_batches_begin(&w, name.p, name.len, n);
    for (uint32_t i = 0; i < n; i++) {
        if (arr[i].len > FM_MAX_BATCH_BYTES || arr[i].data < data ||
            arr[i].data + arr[i].len > data + size)
            abort();
        fm_wr_bin(&w, arr[i].data, arr[i].len);
    }
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

static int ack(const uint8_t *data, size_t size)
{
    uint64_t v;
    int rc = fm_proto_ack_decode(data, size, &v);
    if (rc)
        return rc;
    fm_buf out;
    fm_buf_init(&out);
    if (fm_proto_ack_encode(&out, v) != 0)
        abort();
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

static int members(const uint8_t *data, size_t size)
{
    uint32_t n = 0;
    int rc = fm_proto_members_decode(data, size, arr, &n);
    if (rc)
        return rc;
    if (n == 0 || n > FM_PROTO_MEMBERS_PER_FRAME)
        abort();
    fm_buf out;
    fm_buf_init(&out);
    fm_wr w;
    fm_wr_init(&w, &out);
    fm_proto_members_begin(&w, n);
    for (uint32_t i = 0; i < n; i++) {
        if (arr[i].len > FM_PROTO_MAX_MEMBER_BYTES)
            abort();
        fm_wr_bin(&w, arr[i].data, arr[i].len);
    }
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

/* IHAVE and GRAFT share a layout: decode as type, re-encode, compare. */
static int entries(const uint8_t *data, size_t size, bool graft)
{
    static fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    fm_proto_name name;
    uint32_t n = 0;
    int rc = graft ? fm_proto_graft_decode(data, size, &name, e, &n)
                   : fm_proto_ihave_decode(data, size, &name, e, &n);
    if (rc)
        return rc;
    if (n == 0 || n > FM_PROTO_MAX_IHAVE)
        abort();
    fm_buf out;
    fm_buf_init(&out);
    fm_wr w;
    fm_wr_init(&w, &out);
    (graft ? fm_proto_graft_begin : fm_proto_ihave_begin)(&w, name.p, name.len, n);
    for (uint32_t i = 0; i < n; i++) {
        if (e[i].seq == 0)
            abort();
        fm_proto_ihave_entry(&w, e[i].author, e[i].seq);
    }
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

static int ihave(const uint8_t *data, size_t size)
{
    return entries(data, size, false);
}

static int graft(const uint8_t *data, size_t size)
{
    return entries(data, size, true);
}

static int prune(const uint8_t *data, size_t size)
{
    int rc = fm_proto_prune_decode(data, size);
    if (rc)
        return rc;
    fm_buf out;
    fm_buf_init(&out);
    if (fm_proto_prune_encode(&out) != 0)
        abort();
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

/* A decoded PEERS re-encodes to the same bytes: sorted, in bounds, canonical. */
static int peers(const uint8_t *data, size_t size)
{
    const uint8_t *ids;
    uint32_t n;
    int rc = fm_proto_peers_decode(data, size, &ids, &n);
    if (rc)
        return rc;
    if (n > FM_PROTO_MAX_PEERS)
        abort();
    fm_buf out;
    fm_buf_init(&out);
    if (fm_proto_peers_encode(&out, ids, n) != 0)
        abort();
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

/* A group of ANNOUNCE or MIXED is a run of items whose name points at the same bytes. */
static uint32_t group_run(const fm_proto_name *names, uint32_t i, uint32_t n)
{
    uint32_t run = 1;
    while (i + run < n && names[i + run].p == names[i].p)
        run++;
    return run;
}

/* ANNOUNCE and MIXED share a layout: decode as type, re-encode group by group, compare. */
static int grouped(const uint8_t *data, size_t size, bool mix)
{
    static fm_ihave_entry e[FM_PROTO_MAX_IHAVE];
    static fm_bytes arr[FM_PROTO_MAX_BATCHES_PER_FRAME];
    static fm_proto_name names[FM_PROTO_MAX_BATCHES_PER_FRAME];
    uint32_t n = 0, max = mix ? FM_PROTO_MAX_BATCHES_PER_FRAME : FM_PROTO_MAX_IHAVE;
    int rc = mix ? fm_proto_mixed_decode(data, size, names, arr, &n)
                 : fm_proto_announce_decode(data, size, names, e, &n);
    uint32_t counted = 0;
    if (mix &&
        (fm_proto_mixed_decode(data, size, NULL, NULL, &counted) != rc || (!rc && counted != n)))
        abort(); /* counting alone judges every frame the same way */
    if (rc)
        return rc;
    if (n == 0 || n > max)
        abort();
    uint32_t groups = 0;
    for (uint32_t i = 0; i < n; i += group_run(names, i, n))
        groups++;
    fm_buf out;
    fm_buf_init(&out);
    fm_wr w;
    fm_wr_init(&w, &out);
    (mix ? fm_proto_mixed_begin : fm_proto_announce_begin)(&w, groups);
    for (uint32_t i = 0, run; i < n; i += run) {
        run = group_run(names, i, n);
        (mix ? fm_proto_mixed_group : fm_proto_announce_group)(&w, names[i].p, names[i].len, run);
        for (uint32_t j = i; j < i + run; j++) {
            if (mix ? arr[j].len > FM_MAX_BATCH_BYTES : e[j].seq == 0)
                abort();
            if (mix)
                fm_wr_bin(&w, arr[j].data, arr[j].len);
            else
                fm_proto_ihave_entry(&w, e[j].author, e[j].seq);
        }
    }
    same_bytes(&out, data, size);
    fm_buf_free(&out);
    return 0;
}

static int announce(const uint8_t *data, size_t size)
{
    return grouped(data, size, false);
}

static int mixed(const uint8_t *data, size_t size)
{
    return grouped(data, size, true);
}

static int (*const decoders[])(const uint8_t *, size_t) = {
    NULL,  hello, summary, vector, batches,  ack,   members,
    ihave, prune, graft,   peers,  announce, mixed,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the node's path: the type, then that type's decoder */
    uint64_t type = 0;
    int trc = fm_proto_type(data, size, &type);
    int typed = 1;
    if (trc == 0 && type >= FM_MSG_HELLO && type <= FM_MSG_MIXED)
        typed = decoders[type](data, size);
    /* every decoder regardless: at most one accepts, and only a frame of its own type */
    int accepted = 0;
    for (uint64_t t = FM_MSG_HELLO; t <= FM_MSG_MIXED; t++) {
        if (decoders[t](data, size) != 0)
            continue;
        accepted++;
        if (trc != 0 || type != t)
            abort();
    }
    if (accepted > 1 || (accepted == 1) != (typed == 0))
        abort();
    return 0;
}
