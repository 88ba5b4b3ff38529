/*
 * bulk_writer.c — a test helper for test_live.sh: writes many ops straight into the store of a
 * stopped node (DIR/store.db, signed with DIR/device.key), the way a device that worked offline
 * for a long time comes back with a large backlog. Record PREFIX-NNNNNN gets field v = NNNNNN
 * (an lww integer), one op per record, OPS_PER_TXN ops per transaction (one batch each).
 *
 * It holds DIR/node.lock (the lock `fieldmesh run` takes) while it writes, so it refuses to run
 * beside a live node: two writers of one feed would fork it.
 *
 * usage: bulk_writer DIR COLLECTION PREFIX NOPS OPS_PER_TXN
 * Prints "committed N ops in M batches"; exit 0, or 1 on any failure (2 on bad arguments).
 */
#include "fieldmesh.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static long parse_count(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= lo && v <= hi ? v : -1;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: bulk_writer DIR COLLECTION PREFIX NOPS OPS_PER_TXN\n");
        return 2;
    }
    const char *dir = argv[1], *coll = argv[2], *prefix = argv[3];
    long nops = parse_count(argv[4], 1, 10000000), per = parse_count(argv[5], 1, FM_MAX_BATCH_OPS);
    if (nops < 0 || per < 0 || strlen(prefix) > 64) {
        fprintf(stderr, "bulk_writer: bad NOPS, OPS_PER_TXN or PREFIX\n");
        return 2;
    }
    char key[4096], db[4096], lock[4096];
    snprintf(key, sizeof key, "%s/device.key", dir);
    snprintf(db, sizeof db, "%s/store.db", dir);
    snprintf(lock, sizeof lock, "%s/node.lock", dir);
    int lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "bulk_writer: %s: a node is running in %s (stop it first)\n", lock, dir);
        return 1;
    }
    fm_identity *id = NULL;
    fm_replica *r = NULL;
    int rc = fm_identity_load(key, &id);
    if (rc) {
        fprintf(stderr, "bulk_writer: %s: %s\n", key, fm_strerror(rc));
        return 1;
    }
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = id};
    if ((rc = fm_replica_open(&cfg, &r))) {
        fprintf(stderr, "bulk_writer: %s: %s\n", db, fm_strerror(rc));
        fm_identity_free(id);
        return 1;
    }
    long done = 0, batches = 0;
    while (!rc && done < nops) {
        fm_txn *t;
        if ((rc = fm_txn_begin(r, coll, &t)))
            break;
        long end = done + per < nops ? done + per : nops;
        for (long i = done; i < end && !rc; i++) {
            char rid[96];
            snprintf(rid, sizeof rid, "%s-%06ld", prefix, i);
            rc = fm_txn_set(t, rid, "v", FM_KIND_LWW, fm_value_int(i));
        }
        if (rc) {
            fm_txn_abort(t);
            break;
        }
        if ((rc = fm_txn_commit(t)))
            break;
        done = end;
        batches++;
    }
    if (rc)
        fprintf(stderr, "bulk_writer: after %ld ops: %s\n", done, fm_strerror(rc));
    else
        printf("committed %ld ops in %ld batches\n", done, batches);
    fm_replica_close(r);
    fm_identity_free(id);
    close(lock_fd);
    return rc ? 1 : 0;
}
