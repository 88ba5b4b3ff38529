/*
 * test_hostile.c — hostile_member, the authenticated attacker of test_hostile.py: a device the
 * mesh admitted (its store in DIR, no node running there) completes a real secure-session
 * handshake with a running node, as the initiator, then misbehaves inside the session:
 *
 *   established   nothing more: checks the handshake itself (prints "established", exit 0)
 *   oversized     a record header of length 0x7fffffff, then 4 KiB
 *   frame-max+1   a record header one past FM_MAX_FRAME_BYTES, then 4 KiB
 *   bad-frame     a whole record of random bytes (fails authentication)
 *   bad-message   a properly encrypted frame whose plaintext is random bytes (no sync message)
 *
 * For the three attacks it then waits (at most WAIT_S seconds) for the node to close the
 * connection and prints "closed after N ms" (exit 0) or "still open" (exit 1). Exit 3: the
 * handshake did not complete (the attack proves nothing then); 2: bad arguments.
 *
 * usage: hostile_member DIR HOST:PORT ATTACK [WAIT_S]
 */
#include "crypto/cert.h"
#include "crypto/identity.h"
#include "crypto/session.h"
#include "node/replica.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void ignore_frame(void *arg, const uint8_t *data, size_t len)
{
    (void)arg, (void)data, (void)len;
}

static int dial(const char *spec)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Runs the initiator's side of the handshake on fd until the session is established. */
static int handshake(int fd, fm_session *s, uint64_t deadline)
{
    fm_buf out;
    fm_buf_init(&out);
    int rc = fm_session_start(s, &out);
    uint8_t buf[4096];
    while (!rc && fm_session_state(s) != FM_SESSION_ESTABLISHED) {
        if (out.len && send_all(fd, out.data, out.len) != 0) {
            rc = FM_EIO;
            break;
        }
        fm_buf_reset(&out);
        uint64_t now = mono_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (now >= deadline || poll(&p, 1, (int)(deadline - now)) <= 0) {
            rc = FM_ETIMEOUT;
            break;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            rc = FM_ECLOSED;
            break;
        }
        rc = fm_session_input(s, buf, (size_t)n, &out, ignore_frame, NULL);
    }
    if (!rc && out.len && send_all(fd, out.data, out.len) != 0)
        rc = FM_EIO;
    fm_buf_free(&out);
    return rc;
}

/* Drains what the node sends until it closes; returns ms waited, or -1 if still open. */
static long wait_closed(int fd, uint64_t limit_ms)
{
    uint64_t t0 = mono_ms();
    uint8_t buf[4096];
    for (;;) {
        uint64_t now = mono_ms();
        if (now - t0 >= limit_ms)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(limit_ms - (now - t0)));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return -1;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return (long)(mono_ms() - t0);
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: hostile_member DIR HOST:PORT ATTACK [WAIT_S]\n");
        return 2;
    }
    const char *attack = argv[3];
    uint32_t len;
    if (strcmp(attack, "established") == 0 || strcmp(attack, "bad-frame") == 0 ||
        strcmp(attack, "bad-message") == 0)
        len = 1000;
    else if (strcmp(attack, "oversized") == 0)
        len = 0x7fffffffu;
    else if (strcmp(attack, "frame-max+1") == 0)
        len = FM_MAX_FRAME_BYTES + 1;
    else {
        fprintf(stderr, "hostile_member: unknown attack %s\n", attack);
        return 2;
    }
    uint64_t wait_ms = (argc == 5 ? strtoull(argv[4], NULL, 10) : 25) * 1000;
    char key[4096], db[4096];
    snprintf(key, sizeof key, "%s/device.key", argv[1]);
    snprintf(db, sizeof db, "%s/store.db", argv[1]);
    fm_identity *id = NULL;
    fm_replica *r = NULL;
    fm_session *s = NULL;
    int fd = -1, ret = 3;
    uint8_t cert[FM_MAX_CERT_BYTES];
    size_t cert_len = 0;
    int rc = fm_identity_load(key, &id);
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = id};
    if (!rc)
        rc = fm_replica_open(&cfg, &r);
    const fm_cert *mine = !rc && r->mesh ? fm_membership_cert(r->mesh, r->device) : NULL;
    if (!rc && !mine)
        rc = FM_ESTATE;
    if (!rc)
        rc = fm_cert_encode(mine, cert, &cert_len);
    if (!rc)
        rc = fm_session_new(fm_env_system(), r->identity, cert, cert_len, r->mesh,
                            FM_SESSION_INITIATOR, &s);
    if (rc) {
        fprintf(stderr, "hostile_member: %s: %s\n", argv[1], fm_strerror(rc));
        goto out;
    }
    if ((fd = dial(argv[2])) < 0) {
        fprintf(stderr, "hostile_member: cannot connect to %s\n", argv[2]);
        goto out;
    }
    if ((rc = handshake(fd, s, mono_ms() + 15000))) {
        fprintf(stderr, "hostile_member: handshake: %s\n", fm_strerror(rc));
        goto out;
    }
    if (strcmp(attack, "established") == 0) {
        printf("established\n");
        ret = 0;
        goto out;
    }
    /* The attack: raw bytes inside the established session's byte stream, or (bad-message) one
     * authenticated frame of random plaintext. */
    size_t body = strcmp(attack, "bad-frame") == 0 ? len : 4096;
    uint8_t *msg = calloc(1, 4 + body);
    if (!msg)
        goto out;
    put_be32(msg, len);
    srand((unsigned)mono_ms());
    for (size_t i = 0; i < body; i++)
        msg[4 + i] = (uint8_t)rand();
    if (strcmp(attack, "bad-message") == 0) {
        fm_buf frame;
        fm_buf_init(&frame);
        msg[4] = 0xc1; /* a byte no msgpack encoding uses */
        if ((rc = fm_session_send(s, msg + 4, len, &frame)) == 0)
            send_all(fd, frame.data, frame.len);
        fm_buf_free(&frame);
        if (rc) {
            fprintf(stderr, "hostile_member: session send: %s\n", fm_strerror(rc));
            free(msg);
            goto out;
        }
    } else {
        send_all(fd, msg, 4 + body); /* the node may close before it has read everything */
    }
    free(msg);
    long ms = wait_closed(fd, wait_ms);
    if (ms < 0) {
        printf("still open\n");
        ret = 1;
    } else {
        printf("closed after %ld ms\n", ms);
        ret = 0;
    }
out:
    if (fd >= 0)
        close(fd);
    fm_session_free(s);
    fm_replica_close(r);
    fm_identity_free(id);
    return ret;
}
