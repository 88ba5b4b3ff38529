/*
 * test_crash.c — durability under SIGKILL. A child (crash_writer) writes transactions to a file
 * store and reports each one before ("try") and after ("ack") fm_txn_commit; the parent kills it
 * at random moments, then reopens the store in-process and checks:
 *
 *   - every acknowledged transaction is there, and the one in flight is there entirely or not at
 *     all: the records equal a model of the acknowledged writes, with or without the in-flight
 *     transaction (so an lww value is the last acknowledged one or the in-flight one, a counter
 *     is the acknowledged sum or that plus the in-flight increments, and so on);
 *   - the state equals a replay of the log: every batch exported from the reopened store and
 *     ingested into a fresh in-memory replica gives the same state hash and the same records.
 *
 * The writer continues from the same store in the next round, so the store grows across rounds.
 * Some rounds kill the writer before it has even opened the store (during recovery).
 *
 * usage: test_crash PATH-TO-crash_writer   (FM_TEST_SEED=N to reproduce a run's choices; the
 * kill instants themselves depend on timing, so the seed fixes delays and ops, not outcomes)
 */
#include "crdt/base.h"
#include "fm_test.h"
#include "replica_dump.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 60
#define NCOLLS 2
#define NRECS 4
#define T0 1700000000000ull

static const char *const COLLS[NCOLLS] = {"crash", "log"}; /* in name order */

/* ---- the model of acknowledged writes -------------------------------------------------------- */

typedef struct mrec {
    bool has_v, has_m, has_n, has_s;
    int64_t v, m, n;
    int64_t *set; /* sorted */
    size_t nset, cap;
} mrec;

typedef struct model {
    mrec rec[NCOLLS][NRECS];
    uint64_t ops;
} model;

typedef struct mop {
    char kind; /* L M C A R */
    int coll, rec;
    int64_t val;
} mop;

typedef struct txn {
    uint64_t t;
    mop ops[3];
    int nops;
} txn;

static void set_add(mrec *r, int64_t v)
{
    size_t i = 0;
    while (i < r->nset && r->set[i] < v)
        i++;
    if (i < r->nset && r->set[i] == v)
        return;
    if (r->nset == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->set = realloc(r->set, r->cap * sizeof *r->set);
    }
    memmove(&r->set[i + 1], &r->set[i], (r->nset - i) * sizeof *r->set);
    r->set[i] = v;
    r->nset++;
}

static void set_remove(mrec *r, int64_t v)
{
    for (size_t i = 0; i < r->nset; i++)
        if (r->set[i] == v) {
            memmove(&r->set[i], &r->set[i + 1], (r->nset - i - 1) * sizeof *r->set);
            r->nset--;
            return;
        }
}

static void model_apply(model *m, const txn *t)
{
    for (int i = 0; i < t->nops; i++) {
        const mop *o = &t->ops[i];
        mrec *r = &m->rec[o->coll][o->rec];
        switch (o->kind) {
        case 'L':
            r->has_v = true;
            r->v = o->val;
            break;
        case 'M':
            r->has_m = true;
            r->m = o->val;
            break;
        case 'C':
            r->has_n = true;
            r->n += o->val;
            break;
        case 'A':
            r->has_s = true;
            set_add(r, o->val);
            break;
        default:
            r->has_s = true;
            set_remove(r, o->val);
            break;
        }
    }
    m->ops += (uint64_t)t->nops;
}

static void model_copy(model *dst, const model *src)
{
    *dst = *src;
    for (int c = 0; c < NCOLLS; c++)
        for (int k = 0; k < NRECS; k++) {
            mrec *r = &dst->rec[c][k];
            r->set = malloc((r->cap ? r->cap : 1) * sizeof *r->set);
            if (r->nset)
                memcpy(r->set, src->rec[c][k].set, r->nset * sizeof *r->set);
        }
}

static void model_free(model *m)
{
    for (int c = 0; c < NCOLLS; c++)
        for (int k = 0; k < NRECS; k++)
            free(m->rec[c][k].set);
    memset(m, 0, sizeof *m);
}

/* The model in the format of fm_test_dump() (replica_dump.h). Caller frees. */
static char *model_dump(const model *m)
{
    fm_buf b;
    fm_buf_init(&b);
    for (int c = 0; c < NCOLLS; c++)
        for (int k = 0; k < NRECS; k++) {
            const mrec *r = &m->rec[c][k];
            if (!r->has_v && !r->has_m && !r->has_n && !r->has_s)
                continue;
            fm_buf_printf(&b, "%s/w%d {", COLLS[c], k);
            const char *sep = "";
            if (r->has_m)
                fm_buf_printf(&b, "%s\"m\":%lld", sep, (long long)r->m), sep = ",";
            if (r->has_n)
                fm_buf_printf(&b, "%s\"n\":%lld", sep, (long long)r->n), sep = ",";
            if (r->has_s) {
                fm_buf_printf(&b, "%s\"s\":[", sep), sep = ",";
                for (size_t i = 0; i < r->nset; i++)
                    fm_buf_printf(&b, "%s%lld", i ? "," : "", (long long)r->set[i]);
                fm_buf_putc(&b, ']');
            }
            if (r->has_v)
                fm_buf_printf(&b, "%s\"v\":%lld", sep, (long long)r->v);
            fm_buf_append(&b, "}\n", 2);
        }
    fm_buf_putc(&b, '\0');
    return (char *)b.data;
}

/* ---- the replica side ---------------------------------------------------------------------- */

typedef struct replay_ctx {
    fm_replica *src, *dst;
    size_t batches, refused;
} replay_ctx;

static int replay_batch(void *arg, const uint8_t *batch, size_t len)
{
    replay_ctx *x = arg;
    fm_bytes b = {(uint8_t *)batch, len};
    int res = 1;
    int rc = fm_replica_ingest(x->dst, &b, 1, &res);
    x->batches++;
    if (rc != 1 || res != 0) {
        fprintf(stderr, "  replay: batch %zu: ingest %d, result %d (%s)\n", x->batches, rc, res,
                fm_strerror(res));
        x->refused++;
    }
    return 0;
}

static int replay_coll(void *arg, const char *name)
{
    replay_ctx *x = arg;
    return fm_replica_export(x->src, name, NULL, 0, replay_batch, x);
}

/* Prints the lines of a that b lacks (prefixed "-") and of b that a lacks ("+"). */
static void print_diff(const char *what, const char *a, const char *b)
{
    fprintf(stderr, "  %s:\n", what);
    for (int side = 0; side < 2; side++) {
        const char *x = side ? b : a, *y = side ? a : b;
        for (const char *l = x; *l;) {
            const char *e = strchr(l, '\n');
            size_t n = e ? (size_t)(e - l) + 1 : strlen(l);
            bool found = false;
            for (const char *m = y; *m && !found;) {
                const char *f = strchr(m, '\n');
                size_t k = f ? (size_t)(f - m) + 1 : strlen(m);
                found = k == n && memcmp(l, m, n) == 0;
                m += k;
            }
            if (!found)
                fprintf(stderr, "    %c %.*s", side ? '+' : '-', (int)n, l);
            l += n;
        }
    }
}

static fm_identity *g_reader;
static fm_test_env g_env;

/* Checks the store against the model; tells whether the in-flight transaction made it. */
static void verify(const char *store, const model *acked, const txn *inflight, bool *applied,
                   int round)
{
    *applied = false;
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION,
                             .path = store,
                             .identity = g_reader,
                             .env = &g_env.env};
    fm_replica *r = NULL;
    CHECK_OK(fm_replica_open(&cfg, &r));
    if (!r) {
        fprintf(stderr, "round %d: the store does not open after the crash\n", round);
        return;
    }
    fm_status s;
    CHECK_OK(fm_replica_status(r, &s));
    char *actual = fm_test_dump(r);
    char *without = model_dump(acked), *with = NULL;
    model m1;
    if (inflight) {
        model_copy(&m1, acked);
        model_apply(&m1, inflight);
        with = model_dump(&m1);
    }
    fm_test_checks++;
    if (strcmp(actual, without) == 0 && s.ops == acked->ops) {
        *applied = false;
    } else if (with && strcmp(actual, with) == 0 && s.ops == m1.ops) {
        *applied = true;
    } else {
        fm_test_failures++;
        fprintf(stderr,
                "round %d: the store is neither the acknowledged state nor that plus the "
                "in-flight transaction\n  ops in store %llu, acknowledged %llu, in flight %d\n",
                round, (unsigned long long)s.ops, (unsigned long long)acked->ops,
                inflight ? inflight->nops : 0);
        print_diff("store (-) vs acknowledged (+)", actual, without);
        if (with)
            print_diff("store (-) vs acknowledged + in-flight (+)", actual, with);
    }
    CHECK_EQ_INT(s.pending, 0);
    CHECK_EQ_INT(s.forked_authors, 0);

    /* The state is a replay of the log. */
    fm_test_env renv;
    fm_test_env_init(&renv, T0, 99);
    fm_replica_config fcfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .path = NULL, .identity = g_reader, .env = &renv.env};
    fm_replica *fresh = NULL;
    CHECK_OK(fm_replica_open(&fcfg, &fresh));
    if (fresh) {
        replay_ctx x = {r, fresh, 0, 0};
        CHECK_OK(fm_replica_collections(r, replay_coll, &x));
        CHECK_EQ_INT(x.refused, 0);
        CHECK_EQ_INT(x.batches, s.batches);
        fm_status fs;
        CHECK_OK(fm_replica_status(fresh, &fs));
        char h1[65], h2[65];
        fm_hex(s.state_hash, FM_HASH_BYTES, h1);
        fm_hex(fs.state_hash, FM_HASH_BYTES, h2);
        if (strcmp(h1, h2) != 0)
            fprintf(stderr, "round %d: replayed state differs from the stored state\n", round);
        CHECK_STR(h2, h1);
        CHECK_EQ_INT(fs.ops, s.ops);
        char *replayed = fm_test_dump(fresh);
        CHECK_STR(replayed, actual);
        free(replayed);
        fm_replica_close(fresh);
    }
    if (inflight)
        model_free(&m1);
    free(with);
    free(without);
    free(actual);
    fm_replica_close(r);
}

/* ---- the child ------------------------------------------------------------------------------ */

typedef struct child {
    pid_t pid;
    int fd;
    char buf[1 << 16];
    size_t len;
    bool eof, ready;
    txn inflight;
    bool has_inflight;
} child;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool spawn(child *c, const char *writer, const char *store, int round, uint64_t seed)
{
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        return false;
    }
    char rs[32], ss[32];
    snprintf(rs, sizeof rs, "%d", round);
    snprintf(ss, sizeof ss, "%llu", (unsigned long long)seed);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return false;
    }
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        close(p[0]);
        close(p[1]);
        execl(writer, writer, store, rs, ss, (char *)NULL);
        perror("execl");
        _exit(127);
    }
    close(p[1]);
    c->pid = pid;
    c->fd = p[0];
    c->len = 0;
    c->eof = c->ready = c->has_inflight = false;
    return true;
}

static int coll_index(const char *name)
{
    for (int i = 0; i < NCOLLS; i++)
        if (strcmp(COLLS[i], name) == 0)
            return i;
    return -1;
}

/* Parses "try T OP..." into t. */
static bool parse_try(char *line, txn *t)
{
    char *save = NULL, *tok = strtok_r(line, " ", &save);
    if (!tok || strcmp(tok, "try") != 0 || !(tok = strtok_r(NULL, " ", &save)))
        return false;
    t->t = strtoull(tok, NULL, 10);
    t->nops = 0;
    while ((tok = strtok_r(NULL, " ", &save))) {
        char *coll = strtok_r(NULL, " ", &save), *id = strtok_r(NULL, " ", &save);
        char *val = strtok_r(NULL, " ", &save);
        if (!coll || !id || !val || t->nops == 3 || id[0] != 'w')
            return false;
        mop *o = &t->ops[t->nops++];
        o->kind = tok[0];
        o->coll = coll_index(coll);
        o->rec = atoi(id + 1);
        o->val = strtoll(val, NULL, 10);
        if (o->coll < 0 || o->rec < 0 || o->rec >= NRECS || !strchr("LMCAR", o->kind))
            return false;
    }
    return t->nops > 0;
}

/* Consumes complete lines: acknowledged transactions go into the model. */
static void consume(child *c, model *acked, uint64_t *nacked)
{
    char *start = c->buf, *nl;
    while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
        *nl = '\0';
        if (strcmp(start, "ready") == 0) {
            c->ready = true;
        } else if (strncmp(start, "try ", 4) == 0) {
            CHECK(!c->has_inflight); /* one transaction at a time */
            c->has_inflight = parse_try(start, &c->inflight);
            if (!c->has_inflight)
                fprintf(stderr, "cannot parse a writer line: %s\n", start);
            CHECK(c->has_inflight);
        } else if (strncmp(start, "ack ", 4) == 0) {
            uint64_t t = strtoull(start + 4, NULL, 10);
            CHECK(c->has_inflight && c->inflight.t == t);
            if (c->has_inflight && c->inflight.t == t) {
                model_apply(acked, &c->inflight);
                (*nacked)++;
            }
            c->has_inflight = false;
        } else {
            fprintf(stderr, "unexpected writer line: %s\n", start);
            CHECK(0);
        }
        start = nl + 1;
    }
    c->len -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->len);
}

/* Reads what the child says until the deadline (or until it is ready, if asked), keeping the
 * pipe drained so the writer never stalls on it. */
static void pump(child *c, uint64_t deadline, bool until_ready, model *acked, uint64_t *nacked)
{
    while (!c->eof && !(until_ready && c->ready)) {
        uint64_t now = mono_ms();
        if (deadline && now >= deadline)
            break;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int n = poll(&pfd, 1, deadline ? (int)(deadline - now) : 100);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1);
        if (got <= 0) {
            c->eof = true;
            break;
        }
        c->len += (size_t)got;
        consume(c, acked, nacked);
    }
}

/* ---- main ----------------------------------------------------------------------------------- */

static char g_dir[256];

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_crash PATH-TO-crash_writer\n");
        return 2;
    }
    uint64_t seed = 1234567;
    const char *env_seed = getenv("FM_TEST_SEED");
    if (env_seed && env_seed[0])
        seed = strtoull(env_seed, NULL, 10);
    fprintf(stderr, "test_crash: seed %llu (FM_TEST_SEED=%llu to reuse it)\n",
            (unsigned long long)seed, (unsigned long long)seed);
    fm_test_tmpdir(g_dir, sizeof g_dir, "crash");
    char store[512];
    snprintf(store, sizeof store, "%s/store.db", g_dir);
    uint8_t rs[32] = {8, 8, 8};
    CHECK_OK(fm_identity_from_seed(rs, &g_reader));
    fm_test_env_init(&g_env, T0, seed);

    model acked = {0};
    uint64_t rng = seed, nacked = 0;
    int early = 0, inflight_kept = 0, inflight_lost = 0;
    static child c;
    int rounds = 0;
    for (int round = 0; round < ROUNDS && fm_test_failures == 0; round++, rounds++) {
        if (!spawn(&c, argv[1], store, round, seed)) {
            CHECK(0);
            break;
        }
        /* Every seventh round dies before (or while) opening the store. */
        bool before_ready = round % 7 == 3;
        uint64_t delay = before_ready ? fm_test_rand64(&rng) % 30 : 5 + fm_test_rand64(&rng) % 76;
        if (!before_ready) {
            pump(&c, mono_ms() + 60000, true, &acked, &nacked);
            if (!c.ready) {
                fprintf(stderr, "round %d: the writer never got ready\n", round);
                CHECK(c.ready);
            }
        }
        pump(&c, mono_ms() + delay, false, &acked, &nacked);
        kill(c.pid, SIGKILL);
        int status = 0;
        while (waitpid(c.pid, &status, 0) < 0 && errno == EINTR)
            ;
        pump(&c, 0, false, &acked, &nacked); /* the rest, to EOF */
        close(c.fd);
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
            fprintf(stderr, "round %d: the writer ended by itself (status 0x%x)\n", round, status);
            CHECK(0);
        }
        early += !c.ready;
        bool applied;
        verify(store, &acked, c.has_inflight ? &c.inflight : NULL, &applied, round);
        if (c.has_inflight && applied)
            model_apply(&acked, &c.inflight), inflight_kept++;
        else if (c.has_inflight)
            inflight_lost++;
    }
    struct stat st;
    long long size = stat(store, &st) == 0 ? (long long)st.st_size : -1;
    fprintf(stderr,
            "test_crash: %d rounds, %llu acknowledged transactions (%llu ops in the model), "
            "in-flight at the kill: %d kept, %d lost; %d killed before ready; store %lld bytes\n",
            rounds, (unsigned long long)nacked, (unsigned long long)acked.ops, inflight_kept,
            inflight_lost, early, size);
    if (rounds == ROUNDS)
        CHECK(nacked >= ROUNDS); /* the writer did get to write */
    if (fm_test_failures)
        fprintf(stderr, "test_crash: reproduce with FM_TEST_SEED=%llu\n", (unsigned long long)seed);
    model_free(&acked);
    fm_identity_free(g_reader);
    fm_test_tmpdir_remove(g_dir);
    TEST_MAIN_END();
}
