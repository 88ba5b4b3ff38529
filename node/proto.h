/*
 * proto.h — the sync messages that travel inside an established session (docs/PROTOCOL.md).
 * Each session frame holds exactly one message: a canonical msgpack array whose first element is
 * the message type. Decoders are strict (canonical forms only, every bound checked, no trailing
 * bytes) and borrow the frame's bytes: what they return is valid while the frame is.
 *
 *   HELLO   [1, proto_min, proto_max, caps, window, subs, members_digest, members_count]
 *           subs: nil = every collection, else [[name, prio]...] sorted by name ([] = none)
 *   SUMMARY [2, round, [[name, vv_digest]...]]          sorted by name
 *   VECTOR  [3, round, flags, acked, name, vv]          flags: 1 = reply (do not answer)
 *   BATCHES [4, name, [batch...]]                       causal order
 *   ACK     [5, processed]
 *   MEMBERS [6, [record...]]                            certificates and revocations
 *   IHAVE   [7, name, [[author, last_seq]...]]           lazy push: batches the sender holds
 *   PRUNE   [8]                                         push IHAVE to me, not BATCHES
 *   GRAFT   [9, name, [[author, from_seq]...]]          push BATCHES to me again, and those
 *                                                       feeds from from_seq now
 *   PEERS   [10, prefixes]                              the sender's established sessions:
 *                                                       8-byte device id prefixes, ascending
 *   ANNOUNCE [11, [[name, [[author, last_seq]...]]...]] IHAVE for several collections at once
 *   MIXED   [12, [[name, [batch...]]...]]               BATCHES for several collections at once
 * IHAVE, PRUNE and GRAFT go only to peers with FM_CAP_LAZY, PEERS, ANNOUNCE and MIXED only to
 * FM_CAP_PEERS.
 */
#ifndef FM_PROTO_H
#define FM_PROTO_H

#include "crdt/base.h"
#include "crdt/vv.h"
#include "node/node.h"

enum {
    FM_PROTO_MIN = 1,
    FM_PROTO_MAX = 1,
    FM_CAP_MEMBERS = 1 << 0, /* understands MEMBERS */
    FM_CAP_LAZY = 1 << 1,    /* understands IHAVE, PRUNE and GRAFT */
    FM_CAP_PEERS = 1 << 2,   /* understands PEERS, ANNOUNCE and MIXED */
    FM_CAPS = FM_CAP_MEMBERS | FM_CAP_LAZY | FM_CAP_PEERS,

    FM_MSG_HELLO = 1,
    FM_MSG_SUMMARY = 2,
    FM_MSG_VECTOR = 3,
    FM_MSG_BATCHES = 4,
    FM_MSG_ACK = 5,
    FM_MSG_MEMBERS = 6,
    FM_MSG_IHAVE = 7,
    FM_MSG_PRUNE = 8,
    FM_MSG_GRAFT = 9,
    FM_MSG_PEERS = 10,
    FM_MSG_ANNOUNCE = 11,
    FM_MSG_MIXED = 12,

    FM_VECTOR_REPLY = 1,

    FM_PROTO_MIN_WINDOW = 4 * 1024, /* a peer may not advertise a smaller receive window */
    FM_PROTO_MAX_WINDOW = 64 << 20,
    /* A BATCHES frame is filled up to this many bytes of batches (one larger batch goes alone). */
    FM_PROTO_BATCHES_TARGET = 64 * 1024,
    FM_PROTO_MAX_BATCHES_PER_FRAME = 4096,
    FM_PROTO_MAX_SUMMARY = FM_MAX_COLLECTIONS, /* entries in one SUMMARY */
    FM_PROTO_MEMBERS_PER_FRAME = 256,
    FM_PROTO_MAX_MEMBER_BYTES = 256, /* one certificate or revocation */
    FM_PROTO_MAX_IHAVE = 1024,       /* entries in one IHAVE */
    FM_PROTO_PEER_PREFIX = 8,        /* bytes of a device id in PEERS */
    FM_PROTO_MAX_PEERS = 64,         /* entries in one PEERS */
};

_Static_assert(FM_PROTO_BATCHES_TARGET + 64 <= FM_MAX_BATCH_BYTES, "target fits a frame");

typedef struct fm_proto_name {
    const uint8_t *p;
    uint32_t len;
} fm_proto_name;

typedef struct fm_hello {
    uint64_t proto_min, proto_max, caps, window;
    bool subs_all;
    uint32_t nsubs;
    fm_proto_name subs[FM_NODE_MAX_SUBS];
    uint8_t prio[FM_NODE_MAX_SUBS];
    uint8_t members_digest[FM_HASH_BYTES];
    uint64_t members_count;
} fm_hello;

typedef struct fm_summary_entry {
    fm_proto_name name;
    const uint8_t *digest; /* FM_HASH_BYTES */
} fm_summary_entry;

typedef struct fm_vector_msg {
    uint64_t round, flags, acked;
    fm_proto_name name;
    fm_vv vv; /* owned by the caller: init before, free after */
} fm_vector_msg;

/* The message type of a frame (FM_EDECODE if it is not an array headed by a type). */
int fm_proto_type(const uint8_t *p, size_t len, uint64_t *type);

int fm_proto_hello_encode(fm_buf *out, const fm_hello *h);
int fm_proto_hello_decode(const uint8_t *p, size_t len, fm_hello *h);

/* SUMMARY: written entry by entry between begin and end (names must come sorted). */
void fm_proto_summary_begin(fm_wr *w, uint64_t round, uint32_t n);
void fm_proto_summary_entry(fm_wr *w, const uint8_t *name, uint32_t len,
                            const uint8_t digest[FM_HASH_BYTES]);
/* Calls fn for each entry (sorted, unique, at most FM_PROTO_MAX_SUMMARY); fn returning non-zero
 * stops and is returned. The whole frame is validated before fn is first called. */
int fm_proto_summary_decode(const uint8_t *p, size_t len, uint64_t *round,
                            int (*fn)(void *arg, const fm_summary_entry *e), void *arg);

int fm_proto_vector_encode(fm_buf *out, uint64_t round, uint64_t flags, uint64_t acked,
                           const uint8_t *name, uint32_t len, const fm_vv *vv);
int fm_proto_vector_decode(const uint8_t *p, size_t len, fm_vector_msg *m);

/* BATCHES: begin with the count, then each batch as bin. */
void fm_proto_batches_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n);
/* Validates the frame and fills out[] (at most FM_PROTO_MAX_BATCHES_PER_FRAME) with borrowed
 * pointers into p. With out NULL it only validates and counts (sizing out for the frame). */
int fm_proto_batches_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_bytes *out,
                            uint32_t *n);
/* The same into out[room] (room <= the limit): FM_ELIMIT also for a valid frame of more. */
int fm_proto_batches_decode_room(const uint8_t *p, size_t len, fm_proto_name *name, fm_bytes *out,
                                 uint32_t room, uint32_t *n);

int fm_proto_ack_encode(fm_buf *out, uint64_t processed);
int fm_proto_ack_decode(const uint8_t *p, size_t len, uint64_t *processed);

typedef struct fm_ihave_entry {
    const uint8_t *author; /* FM_ID_BYTES */
    uint64_t seq;
} fm_ihave_entry;

/* IHAVE: begin with the count (1..FM_PROTO_MAX_IHAVE), then each entry. */
void fm_proto_ihave_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n);
void fm_proto_ihave_entry(fm_wr *w, const uint8_t author[FM_ID_BYTES], uint64_t seq);
/* Fills out[] (at most FM_PROTO_MAX_IHAVE) with entries borrowed from p; seq > 0. */
int fm_proto_ihave_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_ihave_entry *out,
                          uint32_t *n);

int fm_proto_prune_encode(fm_buf *out);
int fm_proto_prune_decode(const uint8_t *p, size_t len);
/* GRAFT: the IHAVE layout (begin, then fm_proto_ihave_entry with from_seq). */
void fm_proto_graft_begin(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n);
int fm_proto_graft_decode(const uint8_t *p, size_t len, fm_proto_name *name, fm_ihave_entry *out,
                          uint32_t *n);

/* PEERS: n (0..FM_PROTO_MAX_PEERS) prefixes of FM_PROTO_PEER_PREFIX bytes, strictly ascending. */
int fm_proto_peers_encode(fm_buf *out, const uint8_t *prefixes, uint32_t n);
/* *prefixes borrows from p. */
int fm_proto_peers_decode(const uint8_t *p, size_t len, const uint8_t **prefixes, uint32_t *n);

/* MIXED: begin with the number of groups (1..FM_PROTO_MAX_BATCHES_PER_FRAME), then each group's
 * header (a collection and its batch count, >= 1) and batches (bin); at most
 * FM_PROTO_MAX_BATCHES_PER_FRAME batches in all. */
void fm_proto_mixed_begin(fm_wr *w, uint32_t ngroups);
void fm_proto_mixed_group(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n);
/* Fills out[] and names[] (at most FM_PROTO_MAX_BATCHES_PER_FRAME each) with borrowed pointers:
 * batch i is of collection names[i], groups in frame order. Both NULL: validates and counts. */
int fm_proto_mixed_decode(const uint8_t *p, size_t len, fm_proto_name *names, fm_bytes *out,
                          uint32_t *n);
/* The same into out[room] and names[room] (room <= the limit, groups and batches): FM_ELIMIT
 * also for a valid frame of more. */
int fm_proto_mixed_decode_room(const uint8_t *p, size_t len, fm_proto_name *names, fm_bytes *out,
                               uint32_t room, uint32_t *n);

/* ANNOUNCE: begin with the number of groups (1..FM_PROTO_MAX_IHAVE), then each group's header
 * (a collection and its entry count, >= 1) and entries (fm_proto_ihave_entry); at most
 * FM_PROTO_MAX_IHAVE entries in all. */
void fm_proto_announce_begin(fm_wr *w, uint32_t ngroups);
void fm_proto_announce_group(fm_wr *w, const uint8_t *name, uint32_t len, uint32_t n);
/* Fills out[] and names[] (at most FM_PROTO_MAX_IHAVE each): entry i is of collection names[i],
 * borrowed from p, groups in frame order. */
int fm_proto_announce_decode(const uint8_t *p, size_t len, fm_proto_name *names,
                             fm_ihave_entry *out, uint32_t *n);

void fm_proto_members_begin(fm_wr *w, uint32_t n);
/* Fills out[] (at most FM_PROTO_MEMBERS_PER_FRAME) with borrowed records. */
int fm_proto_members_decode(const uint8_t *p, size_t len, fm_bytes *out, uint32_t *n);

#endif
