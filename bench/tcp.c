/*
 * tcp.c — live figures for fieldmesh-bench: two real daemons (fm_daemon_main in forked
 * processes) on loopback. One holds `ops` ops written before it starts; the figure is the time
 * from the second daemon's start until its status shows them all. Then both idle: the second
 * daemon's resident memory and how often it woke up in a quiet window.
 */
#include "bench/sync.h"

#include "crdt/base.h"
#include "transport/control.h"
#include "transport/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A device directory as `fieldmesh init` leaves it; the replica stays open for the caller. */
static int make_device(const char *dir, const char *name, fm_identity **id, fm_replica **r)
{
    char key[4096], db[4096];
    snprintf(key, sizeof key, "%s/device.key", dir);
    snprintf(db, sizeof db, "%s/store.db", dir);
    if (mkdir(dir, 0700) != 0)
        return FM_EIO;
    int rc = fm_identity_create(fm_env_system(), id);
    if (!rc)
        rc = fm_identity_save(*id, key);
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = *id};
    if (!rc)
        rc = fm_replica_open(&cfg, r);
    (void)name;
    return rc;
}

static int write_ops(fm_replica *r, uint64_t ops, uint32_t per_batch)
{
    int rc = 0;
    for (uint64_t i = 0; i < ops && !rc; i += per_batch) {
        fm_txn *t;
        if ((rc = fm_txn_begin(r, "bench", &t)))
            break;
        for (uint64_t k = i; k < i + per_batch && k < ops && !rc; k++) {
            char id[32];
            snprintf(id, sizeof id, "r%llu", (unsigned long long)(k / 5));
            rc = fm_txn_set(t, id, k % 5 ? "v" : "w", FM_KIND_LWW, fm_value_int((int64_t)k));
        }
        rc = rc ? (fm_txn_abort(t), rc) : fm_txn_commit(t);
    }
    return rc;
}

static pid_t spawn(const char *dir, char **args, int nargs)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    FILE *devnull = fopen("/dev/null", "w");
    _exit(fm_daemon_main(dir, nargs, args, devnull ? devnull : stderr));
}

/* ops held by the node running in dir (its status over the control socket), or -1. */
static long long node_ops(const char *dir)
{
    char *out = NULL;
    size_t len = 0;
    FILE *fo = open_memstream(&out, &len), *fe = fopen("/dev/null", "w");
    char *argv[] = {"fieldmesh", "status", "--json", NULL};
    int code = 1;
    int rc = fo && fe ? fm_control_call(dir, 3, argv, fo, fe, &code) : FM_ENOMEM;
    if (fo)
        fclose(fo);
    if (fe)
        fclose(fe);
    long long ops = -1;
    const char *p = out && !rc && code == 0 ? strstr(out, "\"ops\":") : NULL;
    if (p)
        ops = strtoll(p + 6, NULL, 10);
    free(out);
    return ops;
}

static void proc_status(pid_t pid, uint64_t *rss_kib, uint64_t *switches)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    *rss_kib = *switches = 0;
    if (!fp)
        return;
    unsigned long long v;
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "VmRSS: %llu", &v) == 1)
            *rss_kib = v;
        else if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1)
            *switches += v;
        else if (sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
            *switches += v;
    }
    fclose(fp);
}

int fm_bench_tcp(const char *tmp, uint64_t ops, uint32_t per_batch, uint32_t idle_ms,
                 fm_bench_tcp_result *out)
{
    memset(out, 0, sizeof *out);
    char da[4096], db[4096];
    snprintf(da, sizeof da, "%s/tcp-a", tmp);
    snprintf(db, sizeof db, "%s/tcp-b", tmp);
    fm_identity *ia = NULL, *ib = NULL, *auth = NULL;
    fm_replica *ra = NULL, *rb = NULL;
    int rc = make_device(da, "a", &ia, &ra);
    if (!rc)
        rc = make_device(db, "b", &ib, &rb);
    if (!rc)
        rc = fm_identity_create(fm_env_system(), &auth);
    if (!rc)
        rc = fm_replica_mesh_create(ra, auth, 30);
    char cert[FM_MEMBER_TEXT_MAX];
    uint8_t kb[FM_ID_BYTES];
    if (!rc) {
        fm_identity_public(ib, kb);
        rc = fm_mesh_admit(NULL, auth, kb, "b", 30, 0, cert, sizeof cert);
    }
    if (!rc)
        rc = fm_replica_join(rb, cert) ?: fm_replica_import_member(ra, cert);
    uint64_t t0 = mono_ms();
    if (!rc)
        rc = write_ops(ra, ops, per_batch);
    out->write_ms = mono_ms() - t0;
    fm_replica_close(ra);
    fm_replica_close(rb);
    fm_identity_free(ia);
    fm_identity_free(ib);
    fm_identity_free(auth);
    if (rc)
        return rc;
    /* Ports from the pid: parallel runs on one machine do not collide. */
    char la[32], lb[32], peer[32];
    unsigned port = 30000 + (unsigned)getpid() % 20000;
    snprintf(la, sizeof la, "127.0.0.1:%u", port);
    snprintf(lb, sizeof lb, "127.0.0.1:%u", port + 1);
    snprintf(peer, sizeof peer, "127.0.0.1:%u", port);
    char *aa[] = {"--listen", la, "--no-mdns", "--no-ble"};
    char *ab[] = {"--listen", lb, "--peer", peer, "--no-mdns", "--no-ble"};
    pid_t pa = spawn(da, aa, 4);
    while (node_ops(da) < 0 && mono_ms() - t0 < out->write_ms + 20000)
        sleep_ms(5);
    uint64_t start = mono_ms();
    pid_t pb = spawn(db, ab, 6);
    long long have = 0;
    while ((have = node_ops(db)) < (long long)ops && mono_ms() - start < 600000)
        sleep_ms(have < 0 ? 5 : 20);
    out->sync_ms = mono_ms() - start;
    out->complete = have == (long long)ops;
    if (out->complete) {
        uint64_t rss0, sw0, rss1, sw1;
        sleep_ms(500);
        proc_status(pb, &rss0, &sw0);
        sleep_ms(idle_ms);
        proc_status(pb, &rss1, &sw1);
        out->idle_rss_kib = rss1;
        out->idle_wakeups = sw1 - sw0;
        out->idle_ms = idle_ms;
    }
    kill(pa, SIGTERM);
    kill(pb, SIGTERM);
    int st;
    waitpid(pa, &st, 0);
    waitpid(pb, &st, 0);
    return out->complete ? 0 : FM_ETIMEOUT;
}
