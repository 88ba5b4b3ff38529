/*
 * replica.h — internals of the fm_replica handle shared by the replica's source files.
 */
#ifndef FM_REPLICA_H
#define FM_REPLICA_H

#include "crdt/state.h"
#include "node/store.h"

/* Records kept in the cache between transactions; beyond this the clean ones are dropped. */
#define FM_STATE_CACHE_RECORDS 65536

/* A held batch: its bytes, and its decoded header (no ops; coll points into data) so that
 * readiness checks cost no decoding. */
typedef struct fm_pending {
    uint8_t *data;
    size_t len;
    fm_batch hdr;
} fm_pending;

struct fm_replica {
    const fm_env *env;
    fm_identity *identity;
    uint8_t device[FM_ID_BYTES];
    fm_store *store;
    fm_state st;
    uint64_t hlc;
    uint64_t max_skew_ms;
    bool skew;
    fm_pending *pending;
    uint32_t npending, cpending;
    size_t pending_bytes;
    fm_batch batch;             /* scratch for decoding */
    struct fm_membership *mesh; /* NULL: in no mesh */
};

/* Mesh membership (membership.c): load at open; may this batch's author write (at the batch's
 * time)? may this device write now? 0 or FM_EUNKNOWN_DEVICE, FM_EREVOKED, FM_EPERM. */
int fm__mesh_load(fm_replica *r);
int fm__mesh_check_batch(fm_replica *r, const fm_batch *b);
int fm__mesh_check_local(fm_replica *r);

/* Record views (record_view.c). */
int fm__record_view(fm_replica *r, const fm_coll *c, const fm_rec *rec, fm_record **out);

#endif
