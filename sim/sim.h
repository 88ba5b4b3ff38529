/*
 * sim.h — the deterministic mesh simulator (DESIGN.md §8): many real node cores (fm_node over
 * fm_replica) in one process over virtual time. One seed reproduces a run bit for bit; every
 * event delivered to a node is folded into a BLAKE2b trace hash that proves it.
 *
 * The outside world of every node is the simulator: its clock is virtual time plus the node's
 * skew, its randomness a ChaCha20 stream keyed from the run seed, its transport a set of
 * simulated links (latency, jitter, loss as retransmission delay, bandwidth, MTU) and its
 * discovery the topology. All state hangs off the fm_sim handle; nothing here reads a clock or
 * a random source (tools/check-determinism.sh), except fm_sim_wall_ms and fm_sim_wall_us for the
 * wall_ms and wait_ms figures.
 *
 * Use: fm_sim_config_default, fm_sim_config_parse (the command line), fm_sim_open (builds the
 * mesh and schedules the workload), optionally fm_sim_run_until / fm_sim_write to script a
 * scenario, then fm_sim_finish (runs until converged or the duration ends, checks, fills the
 * result) and fm_sim_close.
 */
#ifndef FM_SIM_H
#define FM_SIM_H

#include "crdt/base.h"
#include "node/node.h"

#include <stdio.h>

enum {
    FM_SIM_MAX_NODES = 100000,
    FM_SIM_MAX_PARTITIONS = 16,
    FM_SIM_MAX_SPECIAL = 64, /* --offline, --subscribe-none, --fork, --revoke entries each */
    FM_SIM_MAX_ARGS_TEXT = 4096,
    FM_SIM_CHECK_US = 250 * 1000,   /* convergence check and time-series sample interval */
    FM_SIM_ADVERT_US = 2000 * 1000, /* discovery re-announces digests this often */
    FM_SIM_MOVE_US = 1000 * 1000,   /* random geometric graph: positions recomputed */
    FM_SIM_MAX_SAMPLES = 1 << 20,   /* time-series rows kept */
    FM_SIM_HOT_RECORDS_DEFAULT = 8, /* shared records the conflicting writes go to */
    FM_SIM_WALL_UNSET = 0,
};

typedef enum fm_sim_topology {
    FM_SIM_TOPO_FULL = 0,
    FM_SIM_TOPO_LINE,
    FM_SIM_TOPO_RING,
    FM_SIM_TOPO_GRID,
    FM_SIM_TOPO_RANDOM,
    FM_SIM_TOPO_RGG,
} fm_sim_topology;

typedef struct fm_sim_link_profile {
    const char *name;
    uint64_t latency_us, jitter_us;
    uint64_t bits_per_s;
    uint32_t mtu;
    double loss;
} fm_sim_link_profile;

typedef struct fm_sim_partition {
    uint64_t start_ms, end_ms;
    uint32_t groups;
} fm_sim_partition;

typedef struct fm_sim_window {
    uint32_t node;
    uint64_t start_ms, end_ms; /* --offline: out of range in [start, end) */
} fm_sim_window;

typedef struct fm_sim_pair {
    uint32_t node;
    uint32_t other; /* --fork: identity of node `other`; --revoke: unused */
    uint64_t at_ms; /* --revoke: when node 0 (holding the authority key) revokes `node` */
} fm_sim_pair;

typedef struct fm_sim_config {
    uint32_t nodes;
    fm_sim_topology topology;
    uint32_t degree;
    fm_sim_link_profile link;
    double loss; /* < 0: the profile's */
    double churn, churn_period_s;
    fm_sim_partition part[FM_SIM_MAX_PARTITIONS];
    uint32_t npart;
    double crash;
    uint64_t skew_max_ms;
    uint32_t skew_nodes; /* 0: every node */
    uint32_t writes;
    bool one_writer; /* --writer: every workload write is made on node `writer` */
    uint32_t writer;
    double conflict_rate;
    uint32_t hot_records;
    uint32_t private_colls; /* node-private records go to collection "p<i mod this>" */
    double write_phase_s, duration_s;
    uint64_t seed;
    uint32_t anti_entropy_ms, max_conns;
    uint32_t threads;       /* --threads; 0: one per CPU (the run is the same for any count) */
    uint32_t push_delay_ms; /* --push-delay-ms; 0: push at once */
    bool no_cover;          /* --cover off: push what a sender's PEERS covers anyway */
    double speed;           /* rgg: unit-square widths per second */
    fm_sim_window offline[FM_SIM_MAX_SPECIAL];
    uint32_t noffline;
    uint32_t subscribe_none[FM_SIM_MAX_SPECIAL];
    uint32_t nsubscribe_none;
    fm_sim_pair fork[FM_SIM_MAX_SPECIAL];
    uint32_t nfork;
    fm_sim_pair revoke[FM_SIM_MAX_SPECIAL];
    uint32_t nrevoke;
    bool json, quiet, verbose, progress;
    const char *csv, *svg;
    char args[FM_SIM_MAX_ARGS_TEXT]; /* the flags as given, for the replay line */
} fm_sim_config;

typedef struct fm_sim_result {
    bool converged;
    uint64_t convergence_ms; /* UINT64_MAX: never */
    uint64_t end_ms, last_write_ms, settle_ms;
    uint64_t messages, bytes, segments, retransmits;
    uint64_t writes_acked, writes_failed, ops, expected_refused;
    uint64_t lost_writes, refused_spread;
    uint32_t distinct_state_hashes, components, checked_nodes;
    uint64_t min_ops, max_ops;
    uint64_t sessions_ok, sessions_failed, conns_opened, connects_failed;
    uint64_t batches_in, batches_out, batches_dup, batches_refused, frames;
    uint64_t ihave, prunes, grafts; /* lazy push: batches announced, peers pruned, grafted */
    uint64_t covered;  /* pushes left out: the batch's sender has a session with that peer */
    uint64_t deferred; /* VECTORs held back while another peer fed the collection */
    uint64_t conflicts_min, conflicts_max, forked_min, forked_max;
    uint64_t events, node_calls, crashes;
    double coverage;
    uint64_t wall_ms, setup_wall_ms; /* the whole run; building the mesh */
    /* Parallelism: threads, windows run on them, and the time threads spent waiting at a
     * window's end for the slowest (summed over threads; out of threads * wall_ms). */
    uint32_t threads;
    uint64_t windows, wait_ms;
    uint8_t trace[FM_HASH_BYTES];
} fm_sim_result;

typedef struct fm_sim fm_sim;

void fm_sim_config_default(fm_sim_config *c);
/* Parses flags (argv[0] is not a flag). FM_EINVAL with a message in err on a bad flag. */
int fm_sim_config_parse(fm_sim_config *c, int argc, char **argv, char *err, size_t cap);
/* Parses a whitespace-separated flag string (tests). */
int fm_sim_config_parse_line(fm_sim_config *c, const char *line, char *err, size_t cap);
int fm_sim_link_by_name(const char *name, fm_sim_link_profile *out);

/* Builds every node (identity, store, certificate, node core) and schedules the run. */
int fm_sim_open(const fm_sim_config *cfg, fm_sim **out);
void fm_sim_close(fm_sim *s);

/* Processes every event due up to virtual time t_ms. */
int fm_sim_run_until(fm_sim *s, uint64_t t_ms);
/* One workload write on node i now (it must be running); 0 if acknowledged (and ledgered). */
int fm_sim_write(fm_sim *s, uint32_t i);
/* Runs until converged (after the write phase, churn, crashes and partitions are over) or the
 * duration ends, then checks convergence and lost writes. Call once. */
int fm_sim_finish(fm_sim *s, fm_sim_result *out);

uint64_t fm_sim_now_ms(const fm_sim *s);
uint32_t fm_sim_nodes(const fm_sim *s);
/* Borrowed; NULL while node i is crashed. */
fm_replica *fm_sim_replica(fm_sim *s, uint32_t i);
fm_node *fm_sim_node(fm_sim *s, uint32_t i);
void fm_sim_device(const fm_sim *s, uint32_t i, uint8_t out[FM_ID_BYTES]);
/* The op seq node i holds of author device in collection (0: none). */
uint64_t fm_sim_held_seq(fm_sim *s, uint32_t i, const char *collection,
                         const uint8_t author[FM_ID_BYTES]);
/* Is node i's link to node j up now? */
bool fm_sim_link_up(const fm_sim *s, uint32_t i, uint32_t j);

/* Reports. */
void fm_sim_print_json(const fm_sim *s, const fm_sim_result *r, FILE *f);
void fm_sim_print_summary(const fm_sim *s, const fm_sim_result *r, FILE *f);
int fm_sim_write_csv(const fm_sim *s, const char *path);
int fm_sim_write_svg(const fm_sim *s, const char *path);
/* Overlays the coverage curves of several CSV files written by --csv into one SVG. */
int fm_sim_plot(const char *svg_path, const char *const *csv_paths, size_t n, char *err,
                size_t cap);

/* Wall-clock time (monotonic), for the wall_ms and wait_ms figures only: transport/simclock.c,
 * the one clock read the simulator is allowed, kept outside sim/. */
uint64_t fm_sim_wall_ms(void);
uint64_t fm_sim_wall_us(void);

#endif
