/*
 * replica_dump.h — a replica's readable state as text, shared by the replica and crash tests.
 * Needs crdt/base.h (fm_buf) and fm_test.h.
 */
#ifndef FM_REPLICA_DUMP_H
#define FM_REPLICA_DUMP_H

#include "crdt/base.h"
#include "fm_test.h"

/* Every live record of every collection, one "coll/id json" line each: a replica's readable
 * state, for comparing replicas. Caller frees. */
typedef struct fm_test_dump_ctx {
    fm_replica *r;
    fm_buf out;
} fm_test_dump_ctx;

static inline int fm_test_dump_rec(void *arg, const fm_record *rec)
{
    fm_test_dump_ctx *d = arg;
    char *j = fm_record_json(rec);
    fm_buf_printf(&d->out, "%s/%s %s\n", fm_record_collection(rec), fm_record_id(rec),
                  j ? j : "(oom)");
    free(j);
    return 0;
}

static inline int fm_test_dump_coll(void *arg, const char *name)
{
    fm_test_dump_ctx *d = arg;
    return fm_collection_list(d->r, name, fm_test_dump_rec, d);
}

static inline char *fm_test_dump(fm_replica *r)
{
    fm_test_dump_ctx d = {.r = r};
    fm_buf_init(&d.out);
    CHECK_OK(fm_replica_collections(r, fm_test_dump_coll, &d));
    fm_buf_putc(&d.out, '\0');
    return (char *)d.out.data;
}

#endif
