/*
 * nfq_delay.c — delay, jitter and random loss in userspace, for kernels built without sch_netem
 * (the integration harness, tests/integration/netns.sh, runs one per impaired interface).
 *
 *   nfq_delay QNUM DELAY_MS [JITTER_MS [LOSS_PCT]]
 *
 * Every packet an iptables rule sends to NFQUEUE number QNUM (in the network namespace this runs
 * in) is held and accepted DELAY_MS +- JITTER_MS (uniform) after it arrived, or dropped with
 * probability LOSS_PCT/100. The rule belongs on INPUT of the receiving namespace, not OUTPUT:
 * packets held on the sender's egress stay charged to its socket and TCP small queues throttle
 * the flow.
 *
 * Invariants: verdicts leave in arrival order (a packet is never due before the one ahead of it,
 * so jitter does not reorder); at most NFQ_DELAY_MAX_HELD packets are held, and one arriving past
 * that is accepted at once and counted. SIGTERM or SIGINT: every held packet is accepted, the
 * counts go to stderr, exit 0. Exit 1 if the queue cannot be bound (a queue number has one
 * listener per namespace), 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

enum {
    NFQ_DELAY_MAX_HELD = 1 << 16,     /* packets held at once (also the kernel queue length) */
    NFQ_DELAY_MAX_MS = 60 * 1000,     /* largest delay or jitter accepted */
    NFQ_DELAY_RCVBUF = 8 << 20,       /* netlink receive buffer: a burst must not overflow it */
    NFQ_DELAY_RECV_BYTES = 64 * 1024, /* one netlink message (metadata only, no payload) */
};

typedef struct held {
    uint32_t id;
    int64_t due_us;
} held;

typedef struct delayer {
    int64_t delay_us, jitter_us;
    double loss; /* probability in [0, 1] */
    uint64_t rng;
    held *ring; /* NFQ_DELAY_MAX_HELD entries; head..tail are held, in arrival order */
    uint64_t head, tail;
    int64_t last_due_us;
    uint64_t n_in, n_dropped, n_overflow;
    struct nfq_q_handle *qh;
} delayer;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* xorshift64*: test traffic needs no cryptographic randomness, only independent draws. */
static double uniform01(delayer *d)
{
    d->rng ^= d->rng >> 12;
    d->rng ^= d->rng << 25;
    d->rng ^= d->rng >> 27;
    return (double)((d->rng * 0x2545F4914F6CDD1DULL) >> 11) / (double)(1ULL << 53);
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *arg)
{
    (void)msg;
    delayer *d = arg;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    d->n_in++;
    if (d->loss > 0 && uniform01(d) < d->loss) {
        d->n_dropped++;
        return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
    }
    if (d->tail - d->head >= NFQ_DELAY_MAX_HELD) {
        d->n_overflow++;
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    int64_t due = now_us() + d->delay_us;
    if (d->jitter_us)
        due += (int64_t)((uniform01(d) * 2 - 1) * (double)d->jitter_us);
    if (due < d->last_due_us)
        due = d->last_due_us; /* FIFO: never overtake the packet ahead */
    d->last_due_us = due;
    d->ring[d->tail % NFQ_DELAY_MAX_HELD] = (held){.id = id, .due_us = due};
    d->tail++;
    return 0;
}

/* Accepts every held packet that is due (all of them when everything is true). */
static void release(delayer *d, bool everything)
{
    int64_t now = now_us();
    while (d->head != d->tail) {
        const held *h = &d->ring[d->head % NFQ_DELAY_MAX_HELD];
        if (!everything && h->due_us > now)
            break;
        nfq_set_verdict(d->qh, h->id, NF_ACCEPT, 0, NULL);
        d->head++;
    }
}

/* Parses a number of milliseconds in [0, NFQ_DELAY_MAX_MS] into microseconds. */
static int parse_ms(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || v > NFQ_DELAY_MAX_MS)
        return -1;
    *out = (int64_t)(v * 1000);
    return 0;
}

static int parse_args(int argc, char **argv, delayer *d, int *qnum)
{
    char *end;
    if (argc < 3 || argc > 5)
        return -1;
    long q = strtol(argv[1], &end, 10);
    if (*end || end == argv[1] || q < 0 || q > 65535)
        return -1;
    *qnum = (int)q;
    if (parse_ms(argv[2], &d->delay_us) || (argc > 3 && parse_ms(argv[3], &d->jitter_us)))
        return -1;
    if (argc > 4) {
        double pct = strtod(argv[4], &end);
        if (*end || end == argv[4] || pct < 0 || pct > 100)
            return -1;
        d->loss = pct / 100;
    }
    return 0;
}

/* Reads what the kernel queued; ENOBUFS means it dropped messages (counted as overflow). */
static void drain(struct nfq_handle *h, delayer *d, int fd, char *buf)
{
    for (;;) {
        ssize_t n = recv(fd, buf, NFQ_DELAY_RECV_BYTES, MSG_DONTWAIT);
        if (n < 0 && errno == ENOBUFS) {
            d->n_overflow++;
            continue;
        }
        if (n <= 0)
            return;
        nfq_handle_packet(h, buf, (int)n);
    }
}

static int run(struct nfq_handle *h, delayer *d, int sfd)
{
    int fd = nfq_fd(h);
    char *buf = malloc(NFQ_DELAY_RECV_BYTES);
    if (!buf)
        return 1;
    for (;;) {
        struct timespec ts, *tsp = NULL;
        if (d->head != d->tail) {
            int64_t wait = d->ring[d->head % NFQ_DELAY_MAX_HELD].due_us - now_us();
            wait = wait < 0 ? 0 : wait;
            ts = (struct timespec){.tv_sec = wait / 1000000, .tv_nsec = (wait % 1000000) * 1000};
            tsp = &ts;
        }
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        int r = ppoll(p, 2, tsp, NULL);
        if (r < 0 && errno != EINTR) {
            perror("nfq_delay: poll");
            break;
        }
        if (r > 0 && (p[1].revents & POLLIN))
            break; /* SIGTERM or SIGINT */
        if (r > 0 && (p[0].revents & POLLIN))
            drain(h, d, fd, buf);
        release(d, false);
    }
    release(d, true);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    delayer d = {0};
    int qnum = 0;
    if (parse_args(argc, argv, &d, &qnum)) {
        fprintf(stderr,
                "usage: nfq_delay QNUM DELAY_MS [JITTER_MS [LOSS_PCT]]\n"
                "       (delay and jitter 0-%d ms, loss 0-100 %%)\n",
                NFQ_DELAY_MAX_MS);
        return 2;
    }
    if (getrandom(&d.rng, sizeof d.rng, 0) != sizeof d.rng || d.rng == 0)
        d.rng = (uint64_t)now_us() | 1;
    d.ring = calloc(NFQ_DELAY_MAX_HELD, sizeof *d.ring);
    /* Signals arrive as a readable descriptor: no handler, no global flag. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    int sfd = sigprocmask(SIG_BLOCK, &sigs, NULL) == 0 ? signalfd(-1, &sigs, SFD_CLOEXEC) : -1;
    struct nfq_handle *h = d.ring && sfd >= 0 ? nfq_open() : NULL;
    if (!h) {
        perror("nfq_delay: setup");
        return 1;
    }
    int rc = 1;
    d.qh = nfq_create_queue(h, (uint16_t)qnum, on_packet, &d);
    if (!d.qh) {
        fprintf(stderr, "nfq_delay: cannot bind queue %d: %s\n", qnum, strerror(errno));
        goto out;
    }
    if (nfq_set_mode(d.qh, NFQNL_COPY_META, 0) < 0) {
        perror("nfq_delay: nfq_set_mode");
        goto out;
    }
    nfq_set_queue_maxlen(d.qh, NFQ_DELAY_MAX_HELD);
    nfnl_rcvbufsiz(nfq_nfnlh(h), NFQ_DELAY_RCVBUF);
    fprintf(stderr, "nfq_delay: queue %d: delay %.1f ms, jitter %.1f ms, loss %.1f %%\n", qnum,
            (double)d.delay_us / 1000, (double)d.jitter_us / 1000, d.loss * 100);
    rc = run(h, &d, sfd);
    fprintf(stderr, "nfq_delay: %llu packets, %llu dropped, %llu accepted undelayed (overflow)\n",
            (unsigned long long)d.n_in, (unsigned long long)d.n_dropped,
            (unsigned long long)d.n_overflow);
out:
    if (d.qh)
        nfq_destroy_queue(d.qh);
    nfq_close(h);
    close(sfd);
    free(d.ring);
    return rc;
}
