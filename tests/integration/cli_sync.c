/*
 * cli_sync.c — a test helper for test_cli.sh: copies every batch of the fieldmesh store in SRC
 * into the store in DST (each opened with its own device.key), the way two devices that meet
 * would sync. The CLI has no sync command of its own; this is how the CLI test gets concurrent
 * writes, and so conflicts, into one store.
 *
 * usage: cli_sync DST_DIR SRC_DIR     prints "applied N"; exit 0, or 1 on any failure
 */
#include "fieldmesh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sync_ctx {
    fm_replica *src, *dst;
    int applied, failed;
} sync_ctx;

static int one_batch(void *arg, const uint8_t *batch, size_t len)
{
    sync_ctx *x = arg;
    fm_bytes b = {(uint8_t *)batch, len};
    int res = 0;
    int rc = fm_replica_ingest(x->dst, &b, 1, &res);
    if (rc < 0 || (res != 0 && res != FM_EDUP && res != FM_EPENDING)) {
        fprintf(stderr, "cli_sync: ingest: %s\n", fm_strerror(rc < 0 ? rc : res));
        x->failed = 1;
        return 1;
    }
    x->applied += rc;
    return 0;
}

static int one_coll(void *arg, const char *name)
{
    sync_ctx *x = arg;
    return fm_replica_export(x->src, name, NULL, 0, one_batch, x);
}

static int open_dir(const char *dir, fm_identity **id, fm_replica **r)
{
    char key[4096], db[4096];
    snprintf(key, sizeof key, "%s/device.key", dir);
    snprintf(db, sizeof db, "%s/store.db", dir);
    int rc = fm_identity_load(key, id);
    if (rc) {
        fprintf(stderr, "cli_sync: %s: %s\n", key, fm_strerror(rc));
        return rc;
    }
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = *id};
    if ((rc = fm_replica_open(&cfg, r)))
        fprintf(stderr, "cli_sync: %s: %s\n", db, fm_strerror(rc));
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: cli_sync DST_DIR SRC_DIR\n");
        return 2;
    }
    fm_identity *did = NULL, *sid = NULL;
    sync_ctx x = {0};
    int rc = open_dir(argv[1], &did, &x.dst);
    if (!rc)
        rc = open_dir(argv[2], &sid, &x.src);
    if (!rc)
        rc = fm_replica_collections(x.src, one_coll, &x);
    if (!rc && !x.failed) {
        fm_status s;
        if (!(rc = fm_replica_status(x.dst, &s)) && s.pending != 0) {
            fprintf(stderr, "cli_sync: %llu batches left pending\n", (unsigned long long)s.pending);
            rc = FM_EPENDING;
        }
    }
    if (!rc && !x.failed)
        printf("applied %d\n", x.applied);
    fm_replica_close(x.src);
    fm_replica_close(x.dst);
    fm_identity_free(sid);
    fm_identity_free(did);
    return rc || x.failed ? 1 : 0;
}
