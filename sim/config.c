/*
 * config.c — the simulator's flags: defaults, parsing, link profiles, and the flag text kept for
 * the replay line a failing run prints.
 */
#include "sim/sim.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>

static const fm_sim_link_profile PROFILES[] = {
    {"lan", 1000, 200, 100000000, 1500, 0.0},
    {"wifi", 5000, 3000, 20000000, 1500, 0.01},
    {"ble", 15000, 5000, 160000, 180, 0.0},
};

int fm_sim_link_by_name(const char *name, fm_sim_link_profile *out)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(PROFILES); i++)
        if (strcmp(PROFILES[i].name, name) == 0) {
            *out = PROFILES[i];
            return 0;
        }
    return FM_EINVAL;
}

void fm_sim_config_default(fm_sim_config *c)
{
    memset(c, 0, sizeof *c);
    c->nodes = 10;
    c->topology = FM_SIM_TOPO_FULL;
    c->degree = 6;
    fm_sim_link_by_name("lan", &c->link);
    c->loss = -1;
    c->churn_period_s = 20;
    c->writes = 100;
    c->conflict_rate = 0.1;
    c->hot_records = FM_SIM_HOT_RECORDS_DEFAULT;
    c->write_phase_s = 10;
    c->duration_s = 600;
    c->seed = 1;
    c->speed = 0.002;
    c->private_colls = 16;
    c->push_delay_ms = FM_NODE_DEFAULT_PUSH_DELAY_MS;
}

static int bad(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t cap, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return FM_EINVAL;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

/* "A:B[:C]" of seconds (fractions allowed) or integers; returns how many fields were read. */
static int parse_fields(const char *s, double *f, int max)
{
    char buf[128];
    if (!s || strlen(s) >= sizeof buf)
        return 0;
    snprintf(buf, sizeof buf, "%s", s);
    int n = 0;
    for (char *tok = buf, *next; tok && n < max; tok = next) {
        next = strchr(tok, ':');
        if (next)
            *next++ = '\0';
        if (!parse_double(tok, 0, 1e12, &f[n]))
            return 0;
        n++;
        if (!next)
            return n;
    }
    return 0; /* too many fields */
}

static int parse_topology(const char *v, fm_sim_topology *out)
{
    static const char *names[] = {"full", "line", "ring", "grid", "random", "rgg"};
    for (size_t i = 0; v && i < FM_ARRAY_LEN(names); i++)
        if (strcmp(v, names[i]) == 0) {
            *out = (fm_sim_topology)i;
            return 0;
        }
    return FM_EINVAL;
}

static void args_append(fm_sim_config *c, const char *a)
{
    size_t len = strlen(c->args);
    bool plain = *a != '\0';
    for (const char *p = a; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("-_.:/=,+", *p)))
            plain = false;
    snprintf(c->args + len, sizeof c->args - len, plain ? "%s%s" : "%s'%s'", len ? " " : "", a);
}

/* One flag with its value; returns 1 if it used the value, 0 if not, or FM_EINVAL. */
static int flag(fm_sim_config *c, const char *f, const char *v, char *err, size_t cap)
{
    double d[3];
    int k;
#define NEED(ok, what)                                                                             \
    do {                                                                                           \
        if (!v || !(ok))                                                                           \
            return bad(err, cap, "%s: expected %s", f, what);                                      \
    } while (0)
    if (!strcmp(f, "--json"))
        return c->json = true, 0;
    if (!strcmp(f, "--quiet"))
        return c->quiet = true, 0;
    if (!strcmp(f, "--verbose"))
        return c->verbose = true, 0;
    if (!strcmp(f, "--progress"))
        return c->progress = true, 0;
    if (!strcmp(f, "--nodes"))
        NEED(parse_u32(v, &c->nodes) && c->nodes >= 1 && c->nodes <= FM_SIM_MAX_NODES,
             "a node count 1..100000");
    else if (!strcmp(f, "--topology"))
        NEED(parse_topology(v, &c->topology) == 0, "full, line, ring, grid, random or rgg");
    else if (!strcmp(f, "--degree"))
        NEED(parse_u32(v, &c->degree) && c->degree >= 1, "a degree >= 1");
    else if (!strcmp(f, "--link"))
        NEED(fm_sim_link_by_name(v, &c->link) == 0, "lan, wifi or ble");
    else if (!strcmp(f, "--loss"))
        NEED(parse_double(v, 0, 0.9, &c->loss), "a probability 0..0.9");
    else if (!strcmp(f, "--churn"))
        NEED(parse_double(v, 0, 0.95, &c->churn), "a fraction 0..0.95");
    else if (!strcmp(f, "--churn-period"))
        NEED(parse_double(v, 0.1, 1e6, &c->churn_period_s), "seconds");
    else if (!strcmp(f, "--crash"))
        NEED(parse_double(v, 0, 1, &c->crash), "a probability 0..1");
    else if (!strcmp(f, "--skew-max"))
        NEED(parse_u64(v, &c->skew_max_ms), "milliseconds");
    else if (!strcmp(f, "--skew-nodes"))
        NEED(parse_u32(v, &c->skew_nodes), "a node count");
    else if (!strcmp(f, "--writes"))
        NEED(parse_u32(v, &c->writes), "a write count");
    else if (!strcmp(f, "--writer")) {
        NEED(parse_u32(v, &c->writer), "a node index");
        c->one_writer = true;
    } else if (!strcmp(f, "--conflict-rate"))
        NEED(parse_double(v, 0, 1, &c->conflict_rate), "a probability 0..1");
    else if (!strcmp(f, "--hot-records"))
        NEED(parse_u32(v, &c->hot_records) && c->hot_records >= 1, "a record count >= 1");
    else if (!strcmp(f, "--private-colls"))
        NEED(parse_u32(v, &c->private_colls) && c->private_colls < FM_MAX_COLLECTIONS,
             "a collection count (0: one per node)");
    else if (!strcmp(f, "--write-phase"))
        NEED(parse_double(v, 0.001, 1e6, &c->write_phase_s), "seconds");
    else if (!strcmp(f, "--duration"))
        NEED(parse_double(v, 0.001, 1e7, &c->duration_s), "seconds");
    else if (!strcmp(f, "--seed"))
        NEED(parse_u64(v, &c->seed), "an unsigned integer");
    else if (!strcmp(f, "--anti-entropy-ms"))
        NEED(parse_u32(v, &c->anti_entropy_ms), "milliseconds");
    else if (!strcmp(f, "--threads"))
        NEED(parse_u32(v, &c->threads) && c->threads >= 1 && c->threads <= 16, "1..16");
    else if (!strcmp(f, "--push-delay-ms"))
        NEED(parse_u32(v, &c->push_delay_ms) && c->push_delay_ms <= FM_NODE_MAX_PUSH_DELAY_MS,
             "0..1000 (0: push at once)");
    else if (!strcmp(f, "--cover")) {
        NEED(!strcmp(v, "on") || !strcmp(v, "off"), "on or off");
        c->no_cover = !strcmp(v, "off");
    } else if (!strcmp(f, "--max-conns"))
        NEED(parse_u32(v, &c->max_conns) && c->max_conns <= FM_NODE_MAX_CONNS, "1..256");
    else if (!strcmp(f, "--speed"))
        NEED(parse_double(v, 0, 1, &c->speed), "unit-square widths per second");
    else if (!strcmp(f, "--csv"))
        NEED(*v, "a file");
    else if (!strcmp(f, "--svg"))
        NEED(*v, "a file");
    else if (!strcmp(f, "--partition")) {
        NEED(c->npart < FM_SIM_MAX_PARTITIONS, "at most 16 partitions");
        k = parse_fields(v, d, 3);
        NEED(k >= 2 && d[1] >= d[0] && (k == 2 || (d[2] >= 2 && d[2] <= 1e5)),
             "START:END[:GROUPS] (seconds, GROUPS >= 2)");
        c->part[c->npart++] = (fm_sim_partition){(uint64_t)(d[0] * 1000), (uint64_t)(d[1] * 1000),
                                                 k == 3 ? (uint32_t)d[2] : 2};
    } else if (!strcmp(f, "--offline")) {
        NEED(c->noffline < FM_SIM_MAX_SPECIAL, "at most 64 --offline");
        k = parse_fields(v, d, 3);
        NEED(k == 3 && d[2] >= d[1], "NODE:START:END (seconds)");
        c->offline[c->noffline++] =
            (fm_sim_window){(uint32_t)d[0], (uint64_t)(d[1] * 1000), (uint64_t)(d[2] * 1000)};
    } else if (!strcmp(f, "--subscribe-none")) {
        NEED(c->nsubscribe_none < FM_SIM_MAX_SPECIAL, "at most 64 --subscribe-none");
        NEED(parse_u32(v, &c->subscribe_none[c->nsubscribe_none]), "a node index");
        c->nsubscribe_none++;
    } else if (!strcmp(f, "--fork")) {
        NEED(c->nfork < FM_SIM_MAX_SPECIAL, "at most 64 --fork");
        k = parse_fields(v, d, 2);
        NEED(k == 2, "NODE:OTHER (NODE uses OTHER's identity)");
        c->fork[c->nfork++] = (fm_sim_pair){(uint32_t)d[0], (uint32_t)d[1], 0};
    } else if (!strcmp(f, "--revoke")) {
        NEED(c->nrevoke < FM_SIM_MAX_SPECIAL, "at most 64 --revoke");
        k = parse_fields(v, d, 2);
        NEED(k == 2, "NODE:SECONDS");
        c->revoke[c->nrevoke++] = (fm_sim_pair){(uint32_t)d[0], 0, (uint64_t)(d[1] * 1000)};
    } else {
        return bad(err, cap, "unknown flag %s", f);
    }
#undef NEED
    return 1;
}

int fm_sim_config_parse(fm_sim_config *c, int argc, char **argv, char *err, size_t cap)
{
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int used = flag(c, f, v, err, cap);
        if (used < 0)
            return used;
        args_append(c, f);
        if (used) {
            args_append(c, v);
            if (!strcmp(f, "--csv"))
                c->csv = argv[i + 1];
            else if (!strcmp(f, "--svg"))
                c->svg = argv[i + 1];
            i++;
        }
    }
    /* Checked once every flag is read: --nodes may come after it. */
    if (c->one_writer && c->writer >= c->nodes)
        return bad(err, cap,
                   "--writer %" PRIu32 ": no such node (--nodes %" PRIu32 ": 0..%" PRIu32 ")",
                   c->writer, c->nodes, c->nodes - 1);
    return 0;
}

int fm_sim_config_parse_line(fm_sim_config *c, const char *line, char *err, size_t cap)
{
    char buf[FM_SIM_MAX_ARGS_TEXT];
    char *argv[256];
    int argc = 0;
    if (strlen(line) >= sizeof buf)
        return bad(err, cap, "flag line too long");
    snprintf(buf, sizeof buf, "%s", line);
    argv[argc++] = "fieldmesh-sim";
    for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
        if (argc == (int)FM_ARRAY_LEN(argv))
            return bad(err, cap, "too many flags");
        argv[argc++] = tok;
    }
    /* --csv/--svg keep pointers into argv: not supported from a line. */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--csv") || !strcmp(argv[i], "--svg"))
            return bad(err, cap, "%s is not supported in a flag line", argv[i]);
    return fm_sim_config_parse(c, argc, argv, err, cap);
}
