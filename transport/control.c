/*
 * control.c — the control socket's wire format and its client (control.h).
 */
#include "transport/control.h"

#include "crdt/base.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int fm_control_parse(const uint8_t *buf, size_t len, fm_control_request *req, size_t *used)
{
    memset(req, 0, sizeof *req);
    if (len < 4)
        return len > FM_CONTROL_MAX_REQUEST ? FM_ELIMIT : FM_ETRUNC;
    uint32_t argc = get32(buf);
    if (argc == 0 || argc > FM_CONTROL_MAX_ARGS)
        return FM_ELIMIT;
    size_t off = 4, text = 0;
    for (uint32_t i = 0; i < argc; i++) {
        if (off + 4 > len)
            return len >= FM_CONTROL_MAX_REQUEST ? FM_ELIMIT : FM_ETRUNC;
        uint32_t n = get32(buf + off);
        if (n > FM_CONTROL_MAX_REQUEST || off + 4 + n > FM_CONTROL_MAX_REQUEST)
            return FM_ELIMIT;
        if (off + 4 + n > len)
            return FM_ETRUNC;
        if (memchr(buf + off + 4, 0, n))
            return FM_EDECODE;
        off += 4 + n;
        text += n + 1;
    }
    /* One block: the pointer array, then the strings. */
    char **argv = malloc((argc + 1) * sizeof *argv + text);
    if (!argv)
        return FM_ENOMEM;
    char *p = (char *)(argv + argc + 1);
    off = 4;
    for (uint32_t i = 0; i < argc; i++) {
        uint32_t n = get32(buf + off);
        memcpy(p, buf + off + 4, n);
        p[n] = '\0';
        argv[i] = p;
        p += n + 1;
        off += 4 + n;
    }
    argv[argc] = NULL;
    req->argc = (int)argc;
    req->argv = argv;
    *used = off;
    return 0;
}

void fm_control_request_free(fm_control_request *req)
{
    free(req->argv);
    req->argv = NULL;
    req->argc = 0;
}

int fm_control_response(int code, const char *out, size_t out_len, const char *err, size_t err_len,
                        uint8_t **buf, size_t *len)
{
    if (out_len > FM_CONTROL_MAX_RESPONSE / 2 || err_len > FM_CONTROL_MAX_RESPONSE / 2)
        return FM_ELIMIT;
    size_t n = 12 + out_len + err_len;
    uint8_t *b = malloc(n);
    if (!b)
        return FM_ENOMEM;
    put32(b, (uint32_t)code);
    put32(b + 4, (uint32_t)out_len);
    if (out_len)
        memcpy(b + 8, out, out_len);
    put32(b + 8 + out_len, (uint32_t)err_len);
    if (err_len)
        memcpy(b + 12 + out_len, err, err_len);
    *buf = b;
    *len = n;
    return 0;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes or reads exactly n bytes before the deadline. */
static int xfer(int fd, uint8_t *p, size_t n, bool rd, uint64_t deadline)
{
    while (n) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return FM_ETIMEOUT;
        struct pollfd pfd = {fd, rd ? POLLIN : POLLOUT, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return pr == 0 ? FM_ETIMEOUT : FM_EIO;
        ssize_t k = rd ? read(fd, p, n) : write(fd, p, n);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0)
            return k == 0 ? FM_ECLOSED : FM_EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int read_blob(int fd, FILE *to, uint64_t deadline)
{
    uint8_t h[4];
    int rc = xfer(fd, h, 4, true, deadline);
    if (rc)
        return rc;
    uint32_t n = get32(h);
    if (n > FM_CONTROL_MAX_RESPONSE)
        return FM_ELIMIT;
    uint8_t chunk[8192];
    while (n) {
        uint32_t k = n < sizeof chunk ? n : (uint32_t)sizeof chunk;
        if ((rc = xfer(fd, chunk, k, true, deadline)))
            return rc;
        fwrite(chunk, 1, k, to);
        n -= k;
    }
    return 0;
}

int fm_control_call(const char *dir, int argc, char **argv, FILE *out, FILE *err, int *code)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, FM_CONTROL_SOCKET) >=
        (int)sizeof sa.sun_path)
        return FM_ENOTFOUND; /* too long for a socket path: the node could not have made it */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return FM_ENOTFOUND;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd); /* no socket, or a stale one left by a node that died: nobody listens */
        return FM_ENOTFOUND;
    }
    size_t len = 4;
    for (int i = 0; i < argc; i++)
        len += 4 + strlen(argv[i]);
    int rc = len > FM_CONTROL_MAX_REQUEST ? FM_ELIMIT : 0;
    uint8_t *req = rc ? NULL : malloc(len);
    if (!rc && !req)
        rc = FM_ENOMEM;
    if (!rc) {
        put32(req, (uint32_t)argc);
        size_t off = 4;
        for (int i = 0; i < argc; i++) {
            size_t n = strlen(argv[i]);
            put32(req + off, (uint32_t)n);
            memcpy(req + off + 4, argv[i], n);
            off += 4 + n;
        }
        uint64_t deadline = mono_ms() + FM_CONTROL_TIMEOUT_MS;
        uint8_t h[4];
        rc = xfer(fd, req, len, false, deadline);
        if (!rc)
            rc = xfer(fd, h, 4, true, deadline);
        if (!rc)
            *code = (int)get32(h);
        if (!rc)
            rc = read_blob(fd, out, deadline);
        if (!rc)
            rc = read_blob(fd, err, deadline);
    }
    free(req);
    close(fd);
    if (rc) {
        fprintf(err, "fieldmesh: the running node did not answer: %s\n", fm_strerror(rc));
        *code = 1;
    }
    return rc == FM_ENOTFOUND ? FM_EIO : rc; /* reached: never "no node" */
}
