/*
 * node.h — the node core (DESIGN.md §1, §4): a deterministic state machine that syncs one replica
 * with its peers. It owns no loop, no socket and no clock: time and randomness come from the
 * replica's fm_env, bytes leave through fm_node_io, and the driver (the libevent daemon or the
 * simulator) feeds it events: connection opened / data / closed, peer discovered / lost, timer
 * due. Local writes go through the replica API as usual; the node sees them through the
 * replica's applied hook and pushes them to connected peers at once.
 *
 * Per connection: secure session (crypto/session.h), then HELLO, SUMMARY, VECTOR, BATCHES, ACK
 * (docs/PROTOCOL.md). Nothing about a sync lives only in memory: what a peer lacks is computed
 * from version vectors against the store, so a connection cut at any byte loses nothing and the
 * next one carries on.
 *
 * Calls into the node must not be made from inside an fm_node_io callback.
 */
#ifndef FM_NODE_H
#define FM_NODE_H

#include "crdt/base.h"

typedef uint64_t fm_conn_id;

/* The transport side of the environment. Every callback is required except log. */
typedef struct fm_node_io {
    void *ctx;
    /* Queue bytes on an open connection, in order. The driver copies them. */
    void (*send)(void *ctx, fm_conn_id conn, const uint8_t *data, size_t len);
    /* Close a connection the node no longer wants. The driver reports nothing more for it (no
     * fm_node_conn_closed). */
    void (*close)(void *ctx, fm_conn_id conn);
    /* Start an outbound connection to addr. On 0 the driver later calls fm_node_conn_open
     * (initiator) or fm_node_conn_failed with *conn. */
    int (*connect)(void *ctx, const char *addr, fm_conn_id *conn);
    /* Optional: one line of log, level FM_LOG_*. */
    void (*log)(void *ctx, int level, const char *line);
} fm_node_io;

enum { FM_LOG_ERROR = 0, FM_LOG_WARN = 1, FM_LOG_INFO = 2, FM_LOG_DEBUG = 3 };

/* Collection priorities: lower syncs first. */
enum { FM_PRIO_CRITICAL = 0, FM_PRIO_NORMAL = 1, FM_PRIO_BULK = 2 };

typedef struct fm_node_sub {
    const char *collection;
    uint8_t prio;
} fm_node_sub;

typedef struct fm_node_config {
    int version;          /* FM_NODE_CONFIG_VERSION */
    fm_replica *replica;  /* borrowed; must outlive the node; must belong to a mesh */
    const fm_node_io *io; /* borrowed; must outlive the node */
    /* Subscriptions: NULL with nsubs 0 = every collection at FM_PRIO_NORMAL. subscribe_none:
     * this node stores and relays nothing it did not write itself. */
    const fm_node_sub *subs;
    size_t nsubs;
    bool subscribe_none;
    uint32_t max_conns;       /* 0 = FM_NODE_DEFAULT_MAX_CONNS */
    uint32_t anti_entropy_ms; /* 0 = FM_NODE_DEFAULT_ANTI_ENTROPY_MS (jittered by +-25%) */
    uint32_t idle_timeout_ms; /* 0 = 3 anti-entropy intervals: a silent peer is dropped */
    uint32_t window_bytes;    /* 0 = FM_NODE_DEFAULT_WINDOW: unacknowledged batch bytes */
    uint32_t backoff_min_ms;  /* 0 = FM_NODE_DEFAULT_BACKOFF_MIN_MS */
    uint32_t backoff_max_ms;  /* 0 = FM_NODE_DEFAULT_BACKOFF_MAX_MS */
    int lazy_push;            /* FM_LAZY_AUTO (0), FM_LAZY_ON, FM_LAZY_OFF */
    /* How long applied batches wait to be pushed, together: 0 = FM_NODE_DEFAULT_PUSH_DELAY_MS,
     * FM_NODE_PUSH_AT_ONCE = no wait, at most FM_NODE_MAX_PUSH_DELAY_MS. */
    uint32_t push_delay_ms;
    /* FM_COVER_ON (0): a batch is announced, not pushed, to a peer that the peer it came from
     * has a session with (docs/PROTOCOL.md §8.8), except over BLE; FM_COVER_OFF pushes it
     * anyway. */
    int push_cover;
} fm_node_config;

/* Lazy push (docs/PROTOCOL.md §8.8) trades latency for airtime: a node prunes redundant pushers,
 * which then announce instead, and a broken tree costs a graft's delay. AUTO prunes only on BLE
 * connections ("ble:" addresses), where bytes are scarce; IP connections flood. */
enum { FM_LAZY_AUTO = 0, FM_LAZY_ON = 1, FM_LAZY_OFF = 2 };
enum { FM_COVER_ON = 0, FM_COVER_OFF = 1 };
#define FM_NODE_CONFIG_VERSION 1

enum {
    FM_NODE_DEFAULT_MAX_CONNS = 8,
    FM_NODE_MAX_CONNS = 256,  /* open connections, inbound and outbound */
    FM_NODE_MAX_PEERS = 4096, /* addresses remembered */
    FM_NODE_MAX_ADDR = 255,   /* bytes of a peer address */
    FM_NODE_MAX_SUBS = 256,   /* subscriptions per node (and per HELLO) */
    FM_NODE_DEFAULT_ANTI_ENTROPY_MS = 10 * 1000,
    FM_NODE_DEFAULT_WINDOW = 256 * 1024,
    FM_NODE_DEFAULT_BACKOFF_MIN_MS = 500,
    FM_NODE_DEFAULT_BACKOFF_MAX_MS = 60 * 1000,
    /* An LE connect first waits for the peer's advertising: a dial to a "ble:" address may
     * take this long before the handshake's own timeout starts. */
    FM_NODE_BLE_CONNECT_MS = 30 * 1000,
    /* Peers' "last synced" is checked at most this often while BATCHES flow. */
    FM_NODE_SYNC_CHECK_MS = 250,
    /* Dial decisions compare peers' digests with ours computed at most this long ago. */
    FM_NODE_DIGEST_STALE_MS = 1000,
    /* Lazy push: announcements to a pruned peer wait this long to share one IHAVE; a batch
     * announced to us and still lacking this long after is grafted (docs/PROTOCOL.md). */
    FM_NODE_IHAVE_MS = 25,
    /* A batch a peer's PEERS says it pushed to another of our peers is announced to that one,
     * not pushed (docs/PROTOCOL.md §8.8): it nearly always arrives first, so the IHAVE can wait
     * longer and spares a graft of what is merely slow. */
    FM_NODE_COVER_IHAVE_MS = 250,
    FM_NODE_GRAFT_MS = 400,
    FM_NODE_MAX_MISSING = 4096,  /* announced batches awaited at once */
    FM_NODE_EAGER_MIN = 3,       /* peers never pruned: they push to us */
    FM_NODE_GRAFT_BATCHES = 256, /* batches of one feed a GRAFT sends at once */
    /* While one peer sends us what we lack of a collection, our VECTOR of it to the others
     * waits (node.c, "one feeder per collection") at most this long. */
    FM_NODE_VECTOR_DEFER_MS = 2000,
    /* Group commit of relayed batches (replica.h): at most this many, this long. A relayed
     * batch lost in a crash before its commit comes again from the peers (local writes commit at
     * once); each commit rewrites every page the group touched and every record it changed, so
     * fewer, larger groups write far less: for a 300-node simulation, 200 ms took 11 % less CPU
     * than 50 ms, and 500 ms 9 % less again. At 1000 nodes a relay applies some 1,000 batches
     * a second, so 512 cut its groups short: 2,048 batches in 2 s ran 2.6 % fewer instructions
     * in all than 512 in 500 ms (300 nodes, callgrind, the same messages and bytes), as a
     * record changed several times in a group is saved once. A group also commits once no
     * batch came for FM_NODE_COMMIT_QUIET_MS: a sync that ends does not wait 2 s to be durable
     * (and an idle daemon does not write then). */
    FM_NODE_GROUP_COMMIT_BATCHES = 2048,
    FM_NODE_COMMIT_MS = 2000,
    FM_NODE_COMMIT_QUIET_MS = 200,
    /* Eager push waits this long to send what a relay applied in one frame per peer (and to
     * skip what that peer sent us meanwhile), or until this many bytes wait. */
    FM_NODE_DEFAULT_PUSH_DELAY_MS = 5,
    FM_NODE_MAX_PUSH_DELAY_MS = 1000,
    FM_NODE_PUSH_HOLD_BYTES = 64 * 1024,
    FM_NODE_KEEP_BUF_BYTES = 16 * 1024, /* a connection's push buffers kept up to this size */
    FM_NODE_KEEP_IHAVE = 64,            /* announcements a connection keeps room for */
};
#define FM_NODE_PUSH_AT_ONCE UINT32_MAX

typedef struct fm_node fm_node;

/* Errors: FM_EINVAL (bad config), FM_ESTATE (replica in no mesh, or no certificate for this
 * device), FM_ENOMEM. */
int fm_node_open(const fm_node_config *cfg, fm_node **out);
/* Closes every connection (io->close) and frees the node; the replica stays open. */
void fm_node_close(fm_node *n);
fm_replica *fm_node_replica(fm_node *n);

/* ---- events from the driver ----------------------------------------------------------------- */

/* A connection is up: accepted (initiator false) or the result of io->connect (initiator true).
 * addr names the peer for logs and the peer table (may be NULL for inbound). FM_ELIMIT: over
 * max connections (the node has closed it). */
int fm_node_conn_open(fm_node *n, fm_conn_id conn, bool initiator, const char *addr);
/* An outbound connect failed: the peer backs off. */
void fm_node_conn_failed(fm_node *n, fm_conn_id conn);
/* Bytes arrived. A protocol or authentication error closes the connection (io->close) and is
 * returned; nothing from a failed frame is stored. */
int fm_node_conn_data(fm_node *n, fm_conn_id conn, const uint8_t *data, size_t len);
/* The transport closed (peer hung up, link lost). */
void fm_node_conn_closed(fm_node *n, fm_conn_id conn);

/* Discovery (mDNS, BLE, static config, the simulator's topology): a peer is reachable at addr.
 * digest (FM_HASH_BYTES, or NULL if unknown) is its advertised sync digest: a peer whose digest
 * equals ours is not worth a connection. Static peers are always kept and always retried. */
#define FM_PEER_STATIC 1
int fm_node_peer_seen(fm_node *n, const char *addr, const uint8_t *digest, int flags);
void fm_node_peer_lost(fm_node *n, const char *addr);

/* Runs every timer due at the env's now (handshake timeouts, heartbeats, anti-entropy,
 * reconnects). */
void fm_node_tick(fm_node *n);
/* The env time at which fm_node_tick next has work (UINT64_MAX: none). Call after every event,
 * and after every local commit on the node's replica: its push waits for a tick (push_delay_ms),
 * as does the group commit of relayed batches. */
uint64_t fm_node_next_deadline(const fm_node *n);
/* Starts an anti-entropy round with every connected peer now, and connects to known peers. */
void fm_node_sync_now(fm_node *n);

/* ---- introspection ----------------------------------------------------------------------------
 */

/* The sync digest this node advertises (over every subscribed collection's vector). */
void fm_node_digest(fm_node *n, uint8_t out[FM_HASH_BYTES]);

typedef enum fm_peer_state {
    FM_PEER_IDLE = 0,   /* known, not connected */
    FM_PEER_CONNECTING, /* connect or handshake under way */
    FM_PEER_SYNCING,    /* session up, vectors differ or batches in flight */
    FM_PEER_SYNCED,     /* session up, nothing to exchange */
    FM_PEER_BACKOFF,    /* last attempt failed; retried at retry_at */
} fm_peer_state;

typedef struct fm_peer_info {
    const char *addr; /* NULL for an inbound connection with no address */
    bool has_id;
    uint8_t id[FM_ID_BYTES]; /* authenticated device id */
    char name[65];           /* from its certificate (FM_MAX_DEVICE_NAME + 1) */
    fm_peer_state state;
    bool inbound;
    uint64_t last_seen_ms;   /* last byte received (0: never) */
    uint64_t last_synced_ms; /* last time both sides' vectors were equal (0: never) */
    uint64_t retry_at_ms;
    uint64_t bytes_in, bytes_out;
} fm_peer_info;
/* Calls fn for each connection, then for each known peer without one. info is valid during
 * the call only. */
int fm_node_peers(fm_node *n, int (*fn)(void *arg, const fm_peer_info *info), void *arg);

typedef struct fm_node_stats {
    uint64_t frames_out, frames_in;   /* sync messages */
    uint64_t bytes_out, bytes_in;     /* on the wire, handshake and framing included */
    uint64_t batches_out, batches_in; /* batches sent / received (duplicates included) */
    uint64_t batches_dup;             /* received batches already held */
    uint64_t batches_refused;         /* received batches refused (bad signature, fork, ...) */
    uint64_t ops_in, op_bytes_in; /* ops of received batches applied, and those batches' bytes */
    uint64_t sessions_ok, sessions_failed;
    uint64_t ihave_out;              /* batches announced to lazy peers instead of sent */
    uint64_t prunes_out, grafts_out; /* lazy push: peers told to announce / to push again */
    uint64_t grafts_in;
    /* batches not pushed to a peer because the peer that sent them to us has a session with it
     * (its PEERS said so): that peer pushed them there itself */
    uint64_t push_covered;
    /* our VECTORs held back while another peer sent us what we lacked of the collection */
    uint64_t vectors_deferred;
    uint32_t conns; /* open connections */
} fm_node_stats;
void fm_node_stats_get(const fm_node *n, fm_node_stats *out);
/* Sync progress: ops that connected peers are known to hold and this node lacks (the largest
 * count over peers, per collection). */
uint64_t fm_node_ops_behind(fm_node *n);

#endif
