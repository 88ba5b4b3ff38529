/*
 * sync.h — sync figures of fieldmesh-bench (bench/sync.c).
 */
#ifndef FM_BENCH_SYNC_H
#define FM_BENCH_SYNC_H

#include <stdbool.h>
#include <stdint.h>

typedef struct fm_bench_sync_result {
    uint64_t fresh_bytes; /* encoded bytes of the batches written during the partition */
    uint64_t bytes;       /* every byte both nodes sent, handshake included */
    uint32_t waves;       /* one-way crossings in all, handshake included */
    uint32_t sync_waves;  /* crossings from the first sync message to the last batch */
    bool converged;
    uint64_t idle_bytes; /* one anti-entropy exchange when nothing differs */
    uint32_t idle_waves;
    uint64_t idle_frames;
} fm_bench_sync_result;

/* Both replicas share `shared` ops; each then writes `fresh` single-op batches; they sync. */
int fm_bench_reconcile(uint64_t shared, uint32_t fresh, fm_bench_sync_result *out);

typedef struct fm_bench_tcp_result {
    uint64_t write_ms; /* writing the ops into the first store, before the daemons start */
    uint64_t sync_ms;  /* second daemon started -> it holds every op */
    bool complete;
    uint64_t idle_rss_kib; /* second daemon, synced and idle */
    uint64_t idle_wakeups; /* its context switches during idle_ms */
    uint32_t idle_ms;
} fm_bench_tcp_result;

/* Two daemons (forked) on loopback under tmp: `ops` ops in batches of per_batch on the first;
 * how long until the second has them, then idle_ms of quiet. */
int fm_bench_tcp(const char *tmp, uint64_t ops, uint32_t per_batch, uint32_t idle_ms,
                 fm_bench_tcp_result *out);

#endif
