/*
 * blelink.h — the session's byte stream over a SOCK_SEQPACKET socket (an LE L2CAP
 * connection-oriented channel, or an AF_UNIX socketpair in tests).
 *
 * Sending cuts the stream into packets of at most the channel's outgoing MTU; bytes the socket
 * does not take now (LE credit-based flow control shows up as EAGAIN) stay queued, in order, up to
 * FM_BLELINK_MAX_QUEUE. Receiving reassembles by concatenation: packet boundaries carry no
 * meaning, so a disconnect mid-frame only leaves a partial session frame, which the node drops
 * with the connection (the sync resumes on the next one). The link owns no fd: the caller opens,
 * polls and closes it; the link only reads and writes it.
 */
#ifndef FM_BLELINK_H
#define FM_BLELINK_H

#include "crdt/base.h"

enum {
    FM_BLELINK_MIN_MTU = 23,         /* the smallest LE MTU (ATT default; L2CAP CoC allows 23) */
    FM_BLELINK_MAX_MTU = 65535,      /* the largest L2CAP SDU */
    FM_BLELINK_MAX_QUEUE = 16 << 20, /* queued outgoing bytes before a send is refused */
};

typedef struct fm_blelink {
    int fd;
    size_t omtu, imtu;
    fm_buf out;  /* queued bytes; out.data[sent..len) is still to go */
    size_t sent; /* prefix of out already written */
    uint64_t packets_out, packets_in;
} fm_blelink;

/* The channel's MTUs (BT_SNDMTU / BT_RCVMTU, else L2CAP_OPTIONS). FM_EINVAL if fd is no L2CAP
 * socket; the values are clamped to [FM_BLELINK_MIN_MTU, FM_BLELINK_MAX_MTU]. */
int fm_blelink_mtu(int fd, size_t *omtu, size_t *imtu);

/* fd must be nonblocking; omtu and imtu in [FM_BLELINK_MIN_MTU, FM_BLELINK_MAX_MTU]. */
void fm_blelink_init(fm_blelink *l, int fd, size_t omtu, size_t imtu);
void fm_blelink_free(fm_blelink *l);

/* Queues len bytes and writes what the socket takes now. Returns the bytes still queued (0: all
 * written), FM_ELIMIT if the queue would pass FM_BLELINK_MAX_QUEUE (nothing queued), FM_ENOMEM,
 * FM_ECLOSED if the peer is gone, FM_EIO on another socket error. */
int fm_blelink_send(fm_blelink *l, const uint8_t *data, size_t len);
/* Writes queued bytes until the socket would block: same returns as fm_blelink_send. */
int fm_blelink_flush(fm_blelink *l);
static inline size_t fm_blelink_queued(const fm_blelink *l)
{
    return l->out.len - l->sent;
}

/* Reads one packet into buf (cap >= imtu). Returns its length (> 0), 0 if nothing is waiting,
 * FM_ECLOSED at the end of the stream (peer closed, link lost), FM_ELIMIT for a packet over cap,
 * FM_EIO on another error. */
int fm_blelink_recv(fm_blelink *l, uint8_t *buf, size_t cap);

#endif
