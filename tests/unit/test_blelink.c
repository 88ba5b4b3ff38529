/*
 * test_blelink.c — the BLE stream framing (transport/blelink.h) over socketpair(AF_UNIX,
 * SOCK_SEQPACKET), which keeps packet boundaries like an L2CAP CoC: packets never exceed the
 * outgoing MTU, the stream survives EAGAIN (a full socket stands in for exhausted LE credits),
 * reassembly is exact at the smallest and the largest MTU, the queue bound holds, and a
 * disconnect mid-frame ends the stream cleanly.
 */
#include "fm_test.h"
#include "transport/blelink.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void pair(int sv[2], int sndbuf)
{
    FM_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    for (int i = 0; i < 2; i++) {
        FM_ASSERT(fcntl(sv[i], F_SETFL, O_NONBLOCK) == 0);
        if (sndbuf)
            setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    }
}

/* Sends total bytes in random pieces from a to b at mtu, reading b between sends; checks every
 * packet's size and the reassembled stream. */
static void stream_at_mtu(size_t mtu, size_t total, uint64_t seed)
{
    int sv[2];
    /* A small socket buffer (that still holds one packet): the sender meets EAGAIN often. */
    pair(sv, (int)FM_MAX((size_t)32 * 1024, 2 * mtu + 4096));
    fm_blelink a, b;
    fm_blelink_init(&a, sv[0], mtu, mtu);
    fm_blelink_init(&b, sv[1], mtu, mtu);
    uint8_t *src = malloc(total), *dst = malloc(total), *pkt = malloc(FM_BLELINK_MAX_MTU);
    FM_ASSERT(src && dst && pkt);
    uint64_t s = seed;
    for (size_t i = 0; i < total; i++)
        src[i] = (uint8_t)rng_next(&s);
    size_t off = 0, got = 0, over = 0, blocked = 0;
    while (got < total) {
        if (off < total) {
            size_t n = 1 + rng_next(&s) % (3 * mtu + 7);
            n = FM_MIN(n, total - off);
            int rc = fm_blelink_send(&a, src + off, n);
            CHECK(rc >= 0);
            if (rc < 0)
                break;
            blocked += rc > 0;
            off += n;
        } else {
            CHECK(fm_blelink_flush(&a) >= 0);
        }
        /* A slow reader: a few packets per turn, or all of them once everything is queued. */
        int r = 0;
        size_t budget = off < total ? rng_next(&s) % 4 : SIZE_MAX;
        while (budget-- > 0 && (r = fm_blelink_recv(&b, pkt, FM_BLELINK_MAX_MTU)) > 0) {
            over += (size_t)r > mtu;
            if (got + (size_t)r > off) {
                fprintf(stderr, "got %zu + %d > sent %zu\n", got, r, off);
                CHECK(!"more bytes than sent");
                r = -1;
                break;
            }
            memcpy(dst + got, pkt, (size_t)r);
            got += (size_t)r;
        }
        CHECK(r >= 0);
        if (r < 0)
            break;
    }
    CHECK_EQ_INT(got, total);
    CHECK_EQ_INT(over, 0);
    if (total >= 16 * mtu)
        CHECK(blocked > 0); /* the queue was exercised */
    CHECK_EQ_INT(fm_blelink_queued(&a), 0);
    CHECK_MEM(src, dst, total);
    /* Every packet but the last of a burst is full: never more packets than twice the minimum. */
    CHECK(a.packets_out >= (total + mtu - 1) / mtu);
    CHECK_EQ_INT(a.packets_out, b.packets_in);
    if (fm_test_failures)
        fprintf(stderr, "  (mtu %zu, seed %llu)\n", mtu, (unsigned long long)seed);
    fm_blelink_free(&a);
    fm_blelink_free(&b);
    close(sv[0]);
    close(sv[1]);
    free(src);
    free(dst);
    free(pkt);
}

static void test_smallest_mtu(void)
{
    stream_at_mtu(FM_BLELINK_MIN_MTU, 200 * 1024, 23);
}

static void test_largest_mtu(void)
{
    stream_at_mtu(FM_BLELINK_MAX_MTU, 4 * 1024 * 1024, 65535);
}

static void test_typical_mtus(void)
{
    size_t mtus[] = {24, 247, 672, 1024, 65534};
    for (size_t i = 0; i < FM_ARRAY_LEN(mtus); i++)
        stream_at_mtu(mtus[i], 256 * 1024, 1000 + i);
}

/* The queue holds exactly FM_BLELINK_MAX_QUEUE bytes the peer does not read; one more is
 * refused and leaves the queue as it was. */
static void test_queue_bound(void)
{
    int sv[2];
    pair(sv, 0);
    fm_blelink a;
    fm_blelink_init(&a, sv[0], 1024, 1024);
    size_t chunk = 1 << 20;
    uint8_t *buf = calloc(1, chunk);
    FM_ASSERT(buf);
    size_t queued = 0;
    int rc = 0;
    for (size_t put = 0; put < FM_BLELINK_MAX_QUEUE; put += chunk)
        rc = fm_blelink_send(&a, buf, chunk);
    CHECK(rc > 0);
    queued = fm_blelink_queued(&a);
    CHECK(queued > 0 && queued <= FM_BLELINK_MAX_QUEUE);
    size_t room = FM_BLELINK_MAX_QUEUE - queued;
    CHECK_EQ_INT(fm_blelink_send(&a, buf, room), (int)FM_BLELINK_MAX_QUEUE);
    CHECK_RC(fm_blelink_send(&a, buf, 1), FM_ELIMIT);
    CHECK_EQ_INT(fm_blelink_queued(&a), FM_BLELINK_MAX_QUEUE);
    /* The peer goes away: the queue reports it. */
    close(sv[1]);
    CHECK_RC(fm_blelink_flush(&a), FM_ECLOSED);
    fm_blelink_free(&a);
    close(sv[0]);
    free(buf);
}

/* A disconnect in the middle of a session frame: the receiver gets the bytes that arrived, then
 * the end of the stream, and nothing else. */
static void test_disconnect_mid_frame(void)
{
    int sv[2];
    pair(sv, 0);
    fm_blelink a, b;
    fm_blelink_init(&a, sv[0], 23, 23);
    fm_blelink_init(&b, sv[1], 23, 23);
    uint8_t frame[100], pkt[64];
    for (size_t i = 0; i < sizeof frame; i++)
        frame[i] = (uint8_t)i;
    CHECK_EQ_INT(fm_blelink_send(&a, frame, 50), 0); /* half a frame */
    close(sv[0]);
    size_t got = 0;
    int r;
    while ((r = fm_blelink_recv(&b, pkt, sizeof pkt)) > 0)
        got += (size_t)r;
    CHECK_EQ_INT(got, 50);
    CHECK_RC(r, FM_ECLOSED);
    CHECK_RC(fm_blelink_send(&b, frame, 10), FM_ECLOSED);
    fm_blelink_free(&a);
    fm_blelink_free(&b);
    close(sv[1]);
}

/* A peer that ignores our MTU: the packet is refused, not cut. */
static void test_oversized_packet(void)
{
    int sv[2];
    pair(sv, 0);
    fm_blelink b;
    fm_blelink_init(&b, sv[1], 23, 23);
    uint8_t big[100] = {0}, pkt[23];
    CHECK_EQ_INT(send(sv[0], big, sizeof big, 0), (ssize_t)sizeof big);
    CHECK_RC(fm_blelink_recv(&b, pkt, sizeof pkt), FM_ELIMIT);
    CHECK_EQ_INT(fm_blelink_recv(&b, pkt, sizeof pkt), 0); /* nothing more waiting */
    size_t o, i;
    CHECK_RC(fm_blelink_mtu(sv[0], &o, &i), FM_EINVAL); /* not an L2CAP socket */
    fm_blelink_free(&b);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    RUN(test_smallest_mtu);
    RUN(test_largest_mtu);
    RUN(test_typical_mtus);
    RUN(test_queue_bound);
    RUN(test_disconnect_mid_frame);
    RUN(test_oversized_packet);
    TEST_MAIN_END();
}
