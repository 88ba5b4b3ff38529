/*
 * main.c — fieldmesh-sim: run one simulation from flags, or `plot` several CSV time series into
 * one SVG. Exit 0 when the run converged with no lost writes, 1 when it did not (printing the
 * replay line), 2 on a usage or internal error.
 */
#include "sim/sim.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fieldmesh-sim [flags]\n"
            "       fieldmesh-sim plot --svg OUT.svg A.csv [B.csv ...]\n"
            "flags:\n"
            "  --nodes N --topology full|line|ring|grid|random|rgg --degree K --speed V\n"
            "  --link lan|wifi|ble --loss P --max-conns N --anti-entropy-ms MS --push-delay-ms MS\n"
            "  --cover on|off\n"
            "  --churn P --churn-period S --partition START:END[:GROUPS] --crash P\n"
            "  --skew-max MS --skew-nodes K --offline NODE:START:END\n"
            "  --writes N --write-phase S --writer NODE --conflict-rate P --hot-records N\n"
            "  --private-colls N\n"
            "  --subscribe-none NODE --fork NODE:OTHER --revoke NODE:SECONDS\n"
            "  --duration S --seed S --threads N --json --csv FILE --svg FILE --quiet --verbose\n"
            "  --progress\n");
}

static int plot_main(int argc, char **argv)
{
    const char *out = NULL;
    const char **in = calloc((size_t)argc, sizeof *in);
    size_t n = 0;
    if (!in)
        return 2;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--svg") && i + 1 < argc)
            out = argv[++i];
        else
            in[n++] = argv[i];
    }
    char err[256] = "";
    int rc = out && n ? fm_sim_plot(out, in, n, err, sizeof err) : FM_EINVAL;
    free(in);
    if (rc) {
        if (!out || !n)
            usage(stderr);
        else
            fprintf(stderr, "fieldmesh-sim plot: %s\n", err[0] ? err : fm_strerror(rc));
        return 2;
    }
    return 0;
}

/* From this many nodes on, a run's memory is worth backing with huge pages. */
#define BIG_RUN_NODES 500

/* A thousand nodes keep some 10 GB of small objects that every event touches at random: with
 * 4 KiB pages most of those touches miss the TLB, and the first touches fault page by page.
 * glibc backs malloc with transparent huge pages only when told so before the process starts
 * (the glibc.malloc.hugetlb tunable, glibc 2.35 on), so a large run executes itself once more
 * with it set: at 1000 nodes that took 11 % less CPU. The same run keeps what it frees (no trim,
 * and no mmap of its own for blocks under 32 MiB, the most glibc allows): memory given back was
 * soon faulted in again, and a first touch in a VM costs more than its use (1000 nodes: 5.6 %
 * less CPU in the nodes, 10 % fewer page faults). The run is the same, trace hash and all.
 * Huge pages not when the kernel's THP mode is "always" (already so) or "never" (no use); none
 * of it when GLIBC_TUNABLES already sets malloc tunables, nor under a sanitizer. */
static void reexec_for_big_run(char **argv)
{
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char mode[128] = "";
    bool madvise = f && fgets(mode, sizeof mode, f) && strstr(mode, "[madvise]");
    if (f)
        fclose(f);
    const char *old = getenv("GLIBC_TUNABLES");
    if (old && strstr(old, "glibc.malloc."))
        return;
    char val[1024];
    int k =
        snprintf(val, sizeof val,
                 "%s%sglibc.malloc.trim_threshold=4294967296:"
                 "glibc.malloc.mmap_threshold=33554432%s",
                 old ? old : "", old && *old ? ":" : "", madvise ? ":glibc.malloc.hugetlb=1" : "");
    if (k < 0 || (size_t)k >= sizeof val || setenv("GLIBC_TUNABLES", val, 1))
        return;
    execv("/proc/self/exe", argv);
    /* Still here: run as we are, without telling a child about tunables it never saw. */
    if (old)
        setenv("GLIBC_TUNABLES", old, 1);
    else
        unsetenv("GLIBC_TUNABLES");
#else
    (void)argv;
#endif
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "plot"))
        return plot_main(argc, argv);
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    fm_sim_config cfg;
    fm_sim_config_default(&cfg);
    char err[256];
    if (fm_sim_config_parse(&cfg, argc, argv, err, sizeof err)) {
        fprintf(stderr, "fieldmesh-sim: %s\n", err);
        usage(stderr);
        return 2;
    }
    if (cfg.nodes >= BIG_RUN_NODES)
        reexec_for_big_run(argv);
    fm_sim *s;
    int rc = fm_sim_open(&cfg, &s);
    if (rc) {
        fprintf(stderr, "fieldmesh-sim: cannot build the mesh: %s\n", fm_strerror(rc));
        return 2;
    }
    fm_sim_result r;
    rc = fm_sim_finish(s, &r);
    if (cfg.json)
        fm_sim_print_json(s, &r, stdout);
    else if (!cfg.quiet)
        fm_sim_print_summary(s, &r, stdout);
    if (cfg.csv && fm_sim_write_csv(s, cfg.csv))
        fprintf(stderr, "fieldmesh-sim: cannot write %s\n", cfg.csv);
    if (cfg.svg && fm_sim_write_svg(s, cfg.svg))
        fprintf(stderr, "fieldmesh-sim: cannot write %s\n", cfg.svg);
    int status = 0;
    if (rc) {
        fprintf(stderr, "fieldmesh-sim: internal error: %s\n", fm_strerror(rc));
        status = 2;
    } else if (!r.converged || r.lost_writes || r.refused_spread) {
        status = 1;
    }
    if (status)
        fprintf(stderr, "replay: fieldmesh-sim %s\n", cfg.args);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* Everything is printed and written; the nodes' stores are in memory. Exit gives a thousand
     * nodes' memory back in a fraction of the seconds that closing each one takes. A sanitizer
     * build closes everything, for the leak check. */
    if (fflush(stdout) == 0)
        _exit(status);
#endif
    fm_sim_close(s);
    return status;
}
