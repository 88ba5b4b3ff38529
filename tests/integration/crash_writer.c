/*
 * crash_writer.c — the child of the crash test (test_crash.c): opens a file store and writes
 * transactions until it is killed, telling its parent on stdout what it is about to commit and
 * what was acknowledged:
 *
 *   ready                          the store is open
 *   try T OP [OP...]               transaction T is about to be committed
 *   ack T                          fm_txn_commit returned 0 for T: it must survive a crash
 *
 * OP is "L coll id value" (lww field v), "M coll id value" (mv field m), "C coll id delta"
 * (counter n), "A coll id value" (add to set s) or "R coll id value" (remove from set s). Values
 * are unique and increasing across runs: run k numbers them from (k + 1) * 1000000. Each line
 * goes out in one write(2) of less than PIPE_BUF bytes, so a kill never leaves half a line.
 *
 * usage: crash_writer STORE ROUND SEED
 */
#include "fieldmesh.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000000ull

typedef struct wenv {
    fm_env env;
    uint64_t serial; /* the clock follows the serial numbers: monotonic across runs */
    uint64_t rng;
} wenv;

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static uint64_t env_now(void *ctx)
{
    return T0 + ((wenv *)ctx)->serial;
}

static void env_random(void *ctx, void *buf, size_t len)
{
    wenv *w = ctx;
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)(next_rand(&w->rng) >> 24);
}

static void say(const char *line, size_t len)
{
    while (len) {
        ssize_t n = write(STDOUT_FILENO, line, len);
        if (n <= 0)
            exit(4);
        line += n;
        len -= (size_t)n;
    }
}

/* Set elements this run added and that were acknowledged: candidates for removal. */
typedef struct added {
    char coll[8], id[8];
    int64_t v;
} added;

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: crash_writer STORE ROUND SEED\n");
        return 2;
    }
    uint64_t round = strtoull(argv[2], NULL, 10), seed = strtoull(argv[3], NULL, 10);
    wenv w = {.env = {.version = FM_ENV_VERSION, .now_ms = env_now, .random = env_random},
              .serial = (round + 1) * 1000000,
              .rng = seed * 0x9e3779b97f4a7c15ull + round + 1};
    w.env.ctx = &w;
    uint8_t s32[32] = {7, 7, 7};
    fm_identity *id;
    int rc = fm_identity_from_seed(s32, &id);
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .path = argv[1], .identity = id, .env = &w.env};
    fm_replica *r = NULL;
    if (rc || (rc = fm_replica_open(&cfg, &r))) {
        fprintf(stderr, "crash_writer: open %s: %s\n", argv[1], fm_strerror(rc));
        return 3;
    }
    say("ready\n", 6);
    static added adds[4096];
    size_t nadds = 0;
    static const char *const colls[] = {"crash", "log"};
    for (uint64_t t = 1;; t++) {
        const char *coll = colls[next_rand(&w.rng) % 2];
        fm_txn *txn;
        if ((rc = fm_txn_begin(r, coll, &txn)))
            break;
        char line[512];
        int len = snprintf(line, sizeof line, "try %" PRIu64, t);
        int nops = 1 + (int)(next_rand(&w.rng) % 3);
        added pending_add[3];
        int npend = 0;
        for (int i = 0; i < nops && !rc; i++) {
            char rid[8];
            snprintf(rid, sizeof rid, "w%d", (int)(next_rand(&w.rng) % 4));
            int64_t v = (int64_t)w.serial++;
            int kind = (int)(next_rand(&w.rng) % 5);
            if (kind == 4 && nadds > 0) {
                /* Remove an acknowledged element of this run (any record, this collection). */
                size_t k = next_rand(&w.rng) % nadds;
                if (strcmp(adds[k].coll, coll) != 0)
                    kind = 3;
                else {
                    rc = fm_txn_set_remove(txn, adds[k].id, "s", fm_value_int(adds[k].v));
                    len += snprintf(line + len, sizeof line - (size_t)len, " R %s %s %" PRId64,
                                    coll, adds[k].id, adds[k].v);
                    adds[k] = adds[--nadds];
                    continue;
                }
            }
            switch (kind) {
            case 0:
                rc = fm_txn_set(txn, rid, "v", FM_KIND_LWW, fm_value_int(v));
                len += snprintf(line + len, sizeof line - (size_t)len, " L %s %s %" PRId64, coll,
                                rid, v);
                break;
            case 1:
                rc = fm_txn_set(txn, rid, "m", FM_KIND_MV, fm_value_int(v));
                len += snprintf(line + len, sizeof line - (size_t)len, " M %s %s %" PRId64, coll,
                                rid, v);
                break;
            case 2: {
                int64_t d = 1 + (int64_t)(next_rand(&w.rng) % 9);
                rc = fm_txn_incr(txn, rid, "n", d);
                len += snprintf(line + len, sizeof line - (size_t)len, " C %s %s %" PRId64, coll,
                                rid, d);
                break;
            }
            default:
                rc = fm_txn_set_add(txn, rid, "s", fm_value_int(v));
                len += snprintf(line + len, sizeof line - (size_t)len, " A %s %s %" PRId64, coll,
                                rid, v);
                snprintf(pending_add[npend].coll, sizeof pending_add[0].coll, "%s", coll);
                snprintf(pending_add[npend].id, sizeof pending_add[0].id, "%s", rid);
                pending_add[npend++].v = v;
                break;
            }
        }
        if (rc) {
            fm_txn_abort(txn);
            break;
        }
        line[len++] = '\n';
        say(line, (size_t)len);
        if ((rc = fm_txn_commit(txn)))
            break;
        len = snprintf(line, sizeof line, "ack %" PRIu64 "\n", t);
        say(line, (size_t)len);
        for (int i = 0; i < npend && nadds < sizeof adds / sizeof adds[0]; i++)
            adds[nadds++] = pending_add[i];
    }
    fprintf(stderr, "crash_writer: %s\n", fm_strerror(rc));
    fm_replica_close(r);
    fm_identity_free(id);
    return 3;
}
