/*
 * blelink.c — stream over SEQPACKET, cut to the MTU (blelink.h).
 */
#include "transport/blelink.h"

#include <bluetooth/bluetooth.h>
#include <bluetooth/l2cap.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

static size_t clamp_mtu(size_t m)
{
    return m < FM_BLELINK_MIN_MTU ? FM_BLELINK_MIN_MTU : FM_MIN(m, (size_t)FM_BLELINK_MAX_MTU);
}

int fm_blelink_mtu(int fd, size_t *omtu, size_t *imtu)
{
    uint16_t snd = 0, rcv = 0;
    socklen_t len = sizeof snd;
    if (getsockopt(fd, SOL_BLUETOOTH, BT_SNDMTU, &snd, &len) != 0 || snd == 0) {
        /* Kernels before BT_SNDMTU: the L2CAP options carry both. */
        struct l2cap_options lo;
        socklen_t ll = sizeof lo;
        memset(&lo, 0, sizeof lo);
        if (getsockopt(fd, SOL_L2CAP, L2CAP_OPTIONS, &lo, &ll) != 0)
            return FM_EINVAL;
        snd = lo.omtu;
        rcv = lo.imtu;
    } else {
        len = sizeof rcv;
        if (getsockopt(fd, SOL_BLUETOOTH, BT_RCVMTU, &rcv, &len) != 0)
            rcv = FM_BLELINK_MAX_MTU;
    }
    *omtu = clamp_mtu(snd);
    *imtu = clamp_mtu(rcv ? rcv : FM_BLELINK_MAX_MTU);
    return 0;
}

void fm_blelink_init(fm_blelink *l, int fd, size_t omtu, size_t imtu)
{
    FM_ASSERT(fd >= 0);
    FM_ASSERT(omtu >= FM_BLELINK_MIN_MTU && omtu <= FM_BLELINK_MAX_MTU);
    FM_ASSERT(imtu >= FM_BLELINK_MIN_MTU && imtu <= FM_BLELINK_MAX_MTU);
    memset(l, 0, sizeof *l);
    l->fd = fd;
    l->omtu = omtu;
    l->imtu = imtu;
    fm_buf_init(&l->out);
}

void fm_blelink_free(fm_blelink *l)
{
    fm_buf_free(&l->out);
    l->sent = 0;
}

static int sock_error(int e)
{
    return e == EPIPE || e == ECONNRESET || e == ENOTCONN || e == ECONNABORTED || e == EHOSTDOWN ||
                   e == ETIMEDOUT
               ? FM_ECLOSED
               : FM_EIO;
}

int fm_blelink_flush(fm_blelink *l)
{
    while (l->sent < l->out.len) {
        size_t n = FM_MIN(l->out.len - l->sent, l->omtu);
        ssize_t w = send(l->fd, l->out.data + l->sent, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                break;
            return sock_error(errno);
        }
        /* A SEQPACKET send is all or nothing. */
        FM_ASSERT((size_t)w == n);
        l->sent += n;
        l->packets_out++;
    }
    if (l->sent == l->out.len) {
        fm_buf_reset(&l->out);
        l->sent = 0;
    } else if (l->sent >= 64 * 1024 && l->sent * 2 >= l->out.len) {
        /* Compact once the written prefix outweighs the rest. */
        memmove(l->out.data, l->out.data + l->sent, l->out.len - l->sent);
        l->out.len -= l->sent;
        l->sent = 0;
    }
    size_t q = fm_blelink_queued(l);
    FM_ASSERT(q <= FM_BLELINK_MAX_QUEUE);
    return (int)q;
}

int fm_blelink_send(fm_blelink *l, const uint8_t *data, size_t len)
{
    if (len > FM_BLELINK_MAX_QUEUE - fm_blelink_queued(l))
        return FM_ELIMIT;
    if (fm_buf_append(&l->out, data, len)) {
        l->out.oom = false;
        return FM_ENOMEM;
    }
    return fm_blelink_flush(l);
}

int fm_blelink_recv(fm_blelink *l, uint8_t *buf, size_t cap)
{
    FM_ASSERT(cap >= l->imtu && cap <= INT32_MAX);
    for (;;) {
        ssize_t r = recv(l->fd, buf, cap, MSG_DONTWAIT | MSG_TRUNC);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return sock_error(errno);
        }
        if (r == 0)
            return FM_ECLOSED; /* SEQPACKET: a zero-length read is the end of the stream */
        if ((size_t)r > cap)
            return FM_ELIMIT;
        l->packets_in++;
        return (int)r;
    }
}
