/*
 * sim_int.h — the simulator's internals shared by its source files: the handle, simulated nodes,
 * connections and the topology. Virtual time is in microseconds from the start of the run; a
 * node's clock is base epoch + virtual time + its skew, in milliseconds.
 *
 * Invariants: a connection slot's gen grows every time the slot is freed, and every event that
 * refers to a connection carries (slot, gen), so an event for a connection that is gone is
 * recognised and dropped; the sim never calls into a node from inside one of its io callbacks
 * (they only queue events); after every event delivered to a node its timer is re-read.
 *
 * Parallel windows: the events of one node (timers and its connections' opens, bytes, FINs and
 * failures) sit in the heap of the worker that owns the node; every other event (workload,
 * topology, churn, crashes, checks) sits in the global heap and runs alone. Nothing a node does
 * reaches another node sooner than the link's minimum one-way delay (window_us), so the workers
 * run every node event earlier than min(next node event + window_us, next global event) at
 * once. What crosses nodes (bytes sent, closes, connects, freed slots) is only recorded as an op
 * during a window, then applied after it in (time, node, per-node seq) order: the same run for
 * any number of workers. The trace hash is per node for the same reason. Setting the nodes up
 * (stores, replicas, certificates, node cores) runs the same way: each node on its worker's
 * thread, nothing shared between nodes.
 */
#ifndef FM_SIM_INT_H
#define FM_SIM_INT_H

#include "crypto/sigcache.h"
#include "node/replica.h"
#include "sim/heap.h"
#include "sim/rng.h"
#include "sim/sim.h"

#include <sodium.h>

#define SIM_BASE_EPOCH_MS 1800000000000ull
#define SIM_YEAR_MS 31557600000ull
#define SIM_NEVER UINT64_MAX

enum sim_ev {
    EV_TIMER = 1, /* node: a = timer gen */
    EV_OPEN,      /* a = slot, b = gen << 1 | side */
    EV_FAIL,      /* a = slot, b = gen << 1 */
    EV_DATA,      /* a = slot | len << 32, b = gen << 1 | receiving side */
    EV_FIN,       /* a = slot, b = gen << 1 | receiving side */
    EV_WRITE,     /* a = write index */
    EV_ADVERT,    /* node */
    EV_CHURN,     /* node */
    EV_CRASH,     /* node */
    EV_RESTART,   /* node */
    EV_PART,      /* a = partition, b = 1 start / 0 end */
    EV_MOVE,
    EV_CHECK,
    EV_OFFLINE, /* node, b = 1 start / 0 end */
    EV_REVOKE,  /* a = index into cfg.revoke */
    EV_PHASE_END,
    EV_WRITE_RUN, /* node: a = index into fm_sim.wreq (a write planned by EV_WRITE) */
};

/* Trace record kinds (what a node was given). */
enum sim_tr {
    TR_TIMER = 1,
    TR_OPEN,
    TR_FAIL,
    TR_DATA,
    TR_CLOSED,
    TR_SEEN,
    TR_LOST,
    TR_WRITE,
    TR_CRASH,
    TR_RESTART,
    TR_REVOKE,
};

enum { END_NONE = 0, END_OPEN = 1, END_GONE = 2 };

/* Bytes in flight in one direction: a list of fixed-size chunks, each segment whole in one.
 * Appended to between windows only; read, and each chunk left behind handed to the reading
 * worker's spares, only by the receiver's worker inside one. Growing one buffer per direction
 * by realloc, and freeing it when drained, was most of the serial part of a 1000-node run. */
typedef struct sim_chunk {
    struct sim_chunk *next;
    uint32_t used; /* bytes of data[] holding segments */
    uint8_t data[];
} sim_chunk;

typedef struct sim_dir {
    sim_chunk *head, *tail; /* both NULL, or the unread segments start at head->data[off] */
    uint32_t off;
    uint64_t busy_until, last_arrival;
} sim_dir;

/* Connection slots live in chunks owned by the initiating node (never moved: other workers hold
 * pointers), so a node opens connections inside a window without a lock. slot = node *
 * SIM_NODE_SLOTS + index. */
enum {
    SIM_SLOT_CHUNK = 16,
    SIM_SLOT_CHUNKS = 32,
    SIM_NODE_SLOTS = SIM_SLOT_CHUNK * SIM_SLOT_CHUNKS,
    SIM_MAX_THREADS = 16,
    SIM_WORKERS_PER_THREAD = 32, /* small shards: a window waits less for its slowest */
    SIM_CHUNK_BYTES = 16384,     /* a sim_chunk's allocation, unless the MTU needs more */
    SIM_SPARE_MAX = 32,          /* spare chunks a worker keeps; more go back to malloc */
};

typedef struct sim_conn {
    uint32_t gen;
    bool used;
    uint32_t node[2]; /* [0] the initiator, [1] the responder (UINT32_MAX: unreachable) */
    bool listed;      /* in node[1]'s list (from the connect op on) */
    uint8_t end[2];
    uint64_t open_at[2];
    sim_dir dir[2]; /* dir[s]: from side s to side 1 - s */
} sim_conn;

/* A ChaCha20 keystream: a node's (or the authority's) randomness, keyed from the run seed. */
typedef struct sim_stream {
    uint8_t key[crypto_stream_chacha20_KEYBYTES];
    uint64_t nonce;
    uint8_t buf[512];
    uint32_t pos;
} sim_stream;

typedef struct sim_node {
    fm_sim *sim;
    uint32_t idx;
    uint32_t ident; /* whose identity it runs with (itself, unless --fork) */
    char addr[16];
    fm_env env;
    int64_t skew_ms;
    sim_stream rs;
    fm_identity *id;
    uint8_t dev[FM_ID_BYTES];
    char uri[112];
    fm_store *store; /* in memory, open from the first start to the end: crashes keep it */
    fm_replica *r;
    fm_node *n;
    fm_node_io io;
    bool crashed, out, present, subscribe_none, excluded, fork_clone;
    uint32_t offline;       /* --offline windows in force */
    uint64_t revoked_at_us; /* SIM_NEVER: not revoked */
    uint64_t timer_at, timer_gen, last_tick_us;
    uint32_t *conns; /* slots of connections with an end here */
    uint32_t nconns, cconns;
    double x, y, tx, ty, v;
    bool ops_stale, digest_stale;  /* set by every call into the node */
    uint64_t ops;                  /* cached op total */
    uint8_t digest[FM_HASH_BYTES]; /* cached fm_node_digest */
    fm_node_stats acc;             /* stats of earlier incarnations (before crashes) */
    uint64_t restarts;
    uint32_t worker;                         /* whose heap holds this node's events */
    struct sim_conn *chunk[SIM_SLOT_CHUNKS]; /* connection slots this node opened */
    uint32_t nslots;
    uint32_t *freec; /* freed slot indexes (< nslots) */
    uint32_t nfree, cfree;
    uint64_t opseq;                  /* ops recorded for this node */
    crypto_generichash_state *trace; /* what this node was given */
} sim_node;

/* Something a node did that reaches another node, applied after the window (net.c). */
enum sim_op_kind { OP_SEND = 1, OP_CLOSE, OP_CONNECT, OP_FREE };

typedef struct sim_op {
    uint64_t t, seq;
    uint32_t node, kind;
    uint32_t slot, gen;
    uint32_t side;
    uint32_t len;
    size_t off; /* OP_SEND: bytes at worker.opdata[off, off + len) */
} sim_op;

typedef struct sim_worker {
    fm_sim *s;
    uint32_t idx;
    fm_sim_heap heap; /* events of its nodes */
    uint64_t now;     /* virtual time of the event being handled, inside a window */
    uint64_t until;   /* the window: events before this */
    sim_chunk *spare; /* chunks its nodes have read, for the next sends (sim_chunk) */
    uint32_t nspare;
    sim_op *ops;
    uint32_t nops, cops;
    fm_buf opdata;
    fm_sigcache *sigcache;
    uint64_t events, node_calls, conns_opened, connects_failed;
    int job_rc; /* a setup step (sim.c run_nodes): its first failure, and where */
    uint32_t job_node;
    uint64_t last_t; /* the latest event it handled */
} sim_worker;

typedef struct sim_write {
    uint32_t node, coll;
    uint64_t seq, t_us;
    uint32_t nops;
    bool expect_refused;
} sim_write;

/* A workload write planned between windows (its random choices drawn in order) and made by the
 * writer's worker in the next one, in order with that node's other events; between windows
 * the outcomes go into the ledger in plan order. */
typedef struct sim_wreq {
    uint32_t node, coll, op, widx, tag;
    char cname[24], rid[40];
    uint64_t t_us, seq;
    bool expect_refused, done;
    int rc;
} sim_wreq;

typedef struct sim_sample {
    uint64_t t_ms;
    double coverage;
    uint64_t bytes, messages;
    uint32_t online;
} sim_sample;

struct fm_sim {
    fm_sim_config cfg;
    fm_sim_link_profile link;
    double loss;
    uint64_t rto_us, connect_timeout_us;
    uint32_t chunk_cap; /* data bytes of a sim_chunk: at least one segment */
    uint64_t now;       /* virtual microseconds (outside windows; sim_now inside) */
    fm_sim_heap heap;   /* global events */
    sim_worker *w;
    uint32_t nworkers, nthreads;
    fm_sigcache *sigcache; /* shared: the workers' caches' parent */
    uint64_t window_us;    /* a window's length: the link's minimum one-way delay */
    struct sim_pool *pool; /* worker threads (sim.c) */
    /* A setup step the workers run on each of their nodes instead of events (sim.c). */
    int (*job)(fm_sim *s, uint32_t node, void *arg);
    void *job_arg;
    sim_op *allops; /* the ops of a window, merged */
    uint32_t callops;
    fm_sim_rng rng_topo, rng_link, rng_work, rng_churn, rng_move;
    uint32_t n;
    sim_node *nodes;
    /* connections: slots in the nodes' chunks */
    uint32_t *scratch_u32;
    uint32_t cscratch;
    /* topology: base graph as CSR (rows sorted); rgg keeps a second for the next step */
    uint32_t *off, *adj, nadj, cadj;
    uint32_t *off2, *adj2, nadj2, cadj2;
    uint32_t *cell_start, *cell_nodes, ncells, grid;
    double radius;
    bool part_active[FM_SIM_MAX_PARTITIONS];
    /* mesh */
    fm_identity *authority;
    fm_env auth_env;
    sim_stream auth_rs;
    char tag[48];
    /* workload */
    sim_write *ledger;
    uint32_t nledger, cledger;
    uint32_t next_write;
    uint64_t write_end_us, settle_us, last_write_us;
    uint64_t writes_failed;
    uint32_t writes_planned; /* every write tried, the number in its values */
    sim_wreq *wreq;          /* planned; those from wsettled on not in the ledger yet */
    uint32_t nwreq, cwreq, wsettled;
    bool phase_over;
    /* counters (the workers keep their own too) */
    uint64_t messages, bytes, segments, retransmits, events, node_calls, conns_opened,
        connects_failed;
    /* convergence */
    uint32_t *uf;
    uint64_t converged_at; /* first passing check after settle (SIM_NEVER: none yet) */
    bool stop, finishing;
    sim_sample *samples;
    uint32_t nsamples, csamples;
    uint64_t wall_start, setup_wall_ms;
    uint64_t windows, wait_us; /* windows run on the threads; their waits (fm_sim_result) */
    uint64_t progress_mark;
    int error; /* first internal failure (out of memory); stops the run (atomic) */
    bool finished;
};

/* sim.c: calls into nodes (trace, timer, dirty mark) */
void sim_fail(fm_sim *s, int rc);
void sim_trace(fm_sim *s, uint32_t kind, uint32_t node, uint64_t conn, const uint8_t *data,
               size_t len);
void sim_after_call(fm_sim *s, sim_node *sn);
bool sim_running(const sim_node *sn);
void sim_push(fm_sim *s, uint64_t t, uint32_t kind, uint32_t node, uint64_t a, uint64_t b);
/* Virtual time now: the event being handled. */
uint64_t sim_now(const fm_sim *s);
/* The worker handling the current event (inside a window), or worker 0 outside one. */
sim_worker *sim_cur(fm_sim *s);
bool sim_node_event(uint32_t kind);
/* The node's sync digest, recomputed only if a call may have changed it. */
const uint8_t *sim_node_digest(sim_node *sn);

/* net.c: connections over links */
void sim_net_free(fm_sim *s);
void sim_io_send(void *ctx, fm_conn_id conn, const uint8_t *data, size_t len);
void sim_io_close(void *ctx, fm_conn_id conn);
int sim_io_connect(void *ctx, const char *addr, fm_conn_id *conn);
void sim_net_event(fm_sim *s, const fm_sim_event *e);
/* Applies the ops the workers recorded, in (time, node, seq) order. */
void sim_net_flush(fm_sim *s);
sim_conn *sim_conn_at(const fm_sim *s, uint32_t slot);
/* Tears down every connection between i and j (j UINT32_MAX: every connection of i), telling
 * the running ends (conn_closed, or conn_failed for one still connecting). */
void sim_net_cut(fm_sim *s, uint32_t i, uint32_t j);

/* topo.c: the base graph, presence, partitions, mobility, discovery */
int sim_topo_build(fm_sim *s);
void sim_topo_free(fm_sim *s);
bool sim_base_edge(const fm_sim *s, uint32_t i, uint32_t j);
bool sim_link_eff(const fm_sim *s, uint32_t i, uint32_t j);
/* Recomputes node i's presence (running, in range, not offline) and applies link changes. */
void sim_topo_presence(fm_sim *s, uint32_t i);
void sim_topo_partition(fm_sim *s, uint32_t p, bool active);
void sim_topo_move(fm_sim *s);
void sim_topo_advert(fm_sim *s, uint32_t i);
/* Connected components of the up-link graph among nodes that are not excluded: uf[i] is the
 * root of i's component (excluded nodes are their own). Returns the number of components. */
uint32_t sim_components(fm_sim *s);
double sim_mean_degree(const fm_sim *s);

#endif
