/*
 * bench.c — fieldmesh-bench: throughput and size figures for a deterministic synthetic workload.
 *
 *   fieldmesh-bench [--json] [--ops N] [--records N] [--authors N] [--seed S] [--dir DIR]
 *
 * Workload: --ops field writes (100,000) over --records records (10,000) of five fields, picked at
 * random, from --authors authors (4). Values are small scalars (ints, short strings); record ids
 * are 22-char base64url strings of 128 random bits. Every random choice comes from one seeded
 * PRNG, so the encoded batches are the same bytes on every run with the same arguments; only the
 * timings vary. Time is read with clock_gettime(CLOCK_MONOTONIC), here and nowhere in the library.
 *
 * The writes are made twice:
 *   base        every batch has seen every earlier batch: no concurrent writes;
 *   conflict30  in each round the authors' batches are concurrent (each has seen only the earlier
 *               rounds) and 30% of the writes target a field another author writes in that round.
 * For apply and ingest each author's writes are grouped BATCH_OPS to a signed batch, so the batch
 * header and its 64-byte signature are amortised over BATCH_OPS ops; the single-op figures and the
 * durable local writes (one write per transaction) show the unamortised cost.
 *
 * Phases: crdt apply (fm_state only, batches decoded beforehand, median of APPLY_REPS), ingest into
 * a fresh file store (fm_replica_ingest, CALL_BATCHES batches per call; decoding and signature
 * verification included), a second store fed the conflict run in a shuffled order (convergence),
 * single-op batches, and durable local transactions. Files live in a temporary directory under
 * --dir (default $TMPDIR or /tmp), removed at exit.
 *
 * Sync figures: reconciliation after a partition (two node cores over an in-process link that
 * counts bytes and round trips, bench/sync.c) and two live daemons on loopback (bench/tcp.c):
 * --ops ops written on one, the time until the other holds them all, then its idle footprint.
 */
#include "bench/sync.h"
#include "crdt/batch.h"
#include "crdt/hlc.h"
#include "crdt/state.h"
#include "fieldmesh.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    BATCH_OPS = 64,      /* ops per batch for the apply and ingest figures */
    CALL_BATCHES = 1024, /* batches per fm_replica_ingest call (one store transaction) */
    APPLY_REPS = 3,      /* crdt apply repetitions; the median is reported */
    SINGLE_OPS = 4096,   /* single-op batches encoded and ingested */
    LOCAL_TXNS = 2000,   /* durable single-write local transactions */
    CONFLICT_PCT = 30,   /* share of the conflict run's writes that collide */
    SHUFFLE_WINDOW = 32, /* batches shuffled together for the convergence check */
    ID_LEN = 22,
    NFIELDS = 5,
    MAX_PHASES = 32,
};

#define HLC_BASE_MS UINT64_C(1700000000000) /* simulated wall clock of the first batch */
#define COLL "tasks"

/* Measured loops stay out of line, so a profile attributes each phase. */
#define MEASURED __attribute__((noinline))

/* Targets from the issue. */
#define TARGET_APPLY 2000000.0
#define TARGET_INGEST 250000.0
#define TARGET_VERIFIED 150000.0
#define TARGET_ENCODE_BPO 40.0
#define TARGET_STORE_BPO 150.0
#define SYNC_SHARED_OPS 100000 /* reconcile: ops both sides hold before the partition */
#define SYNC_FRESH 100         /* reconcile: single-op batches each side writes apart */

/* ---- plumbing -------------------------------------------------------------------------------- */

/* The stores the bench creates; each may have sqlite's side files too. */
enum { ST_BASE, ST_CONFLICT, ST_SHUFFLED, ST_SINGLE, ST_LOCAL, NSTORES };
static const char *const STORE_NAMES[NSTORES] = {"base.db", "conflict.db", "shuffled.db",
                                                 "single.db", "local.db"};
static const char *const SIDE_SUFFIXES[] = {"", "-wal", "-shm", "-journal"};
#define NSIDES FM_ARRAY_LEN(SIDE_SUFFIXES)

/* The temporary directory and every path in it, built before any store is opened, so cleanup
 * (also from a signal handler) calls only unlink and rmdir. */
static char tmp_dir[PATH_MAX];
static char tmp_files[NSTORES * NSIDES][PATH_MAX + 32];

static void tmp_cleanup(void)
{
    if (!tmp_dir[0])
        return;
    for (size_t i = 0; i < FM_ARRAY_LEN(tmp_files); i++)
        unlink(tmp_files[i]);
    rmdir(tmp_dir);
    tmp_dir[0] = '\0';
}

static void on_signal(int sig)
{
    tmp_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void tmp_init(void)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(tmp_files); i++) {
        int n = snprintf(tmp_files[i], sizeof tmp_files[i], "%s/%s%s", tmp_dir,
                         STORE_NAMES[i / NSIDES], SIDE_SUFFIXES[i % NSIDES]);
        if (n < 0 || (size_t)n >= sizeof tmp_files[i]) {
            fprintf(stderr, "fieldmesh-bench: --dir path too long\n");
            exit(1);
        }
    }
    atexit(tmp_cleanup);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
    for (size_t i = 0; i < FM_ARRAY_LEN(sigs); i++)
        signal(sigs[i], on_signal);
}

/* Path of a store's database file. */
static const char *store_path(int store)
{
    return tmp_files[store * NSIDES];
}

static _Noreturn void fail(const char *what, int rc, int line)
{
    fprintf(stderr, "fieldmesh-bench: line %d: %s: %s\n", line, what,
            rc < 0 ? fm_strerror(rc) : "failed");
    exit(1); /* tmp_cleanup runs at exit */
}

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ < 0)                                                                               \
            fail(#expr, rc_, __LINE__);                                                            \
    } while (0)
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail(#cond, 0, __LINE__);                                                              \
    } while (0)

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    EXPECT(p != NULL);
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Process CPU time: with the wall time of a phase, tells waiting (fsync, a busy machine) from work.
 */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct stamp {
    double wall, cpu;
} stamp;

static stamp stamp_now(void)
{
    return (stamp){now_s(), cpu_s()};
}

static double rate(double n, double seconds)
{
    return seconds > 0 ? n / seconds : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- deterministic randomness (splitmix64) --------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Independent stream k of the seed. */
static rng rng_stream(uint64_t seed, uint64_t k)
{
    rng r = {seed};
    r.s = rng_next(&r) ^ (k * UINT64_C(0xd1b54a32d192ed03));
    return r;
}

static uint32_t rng_below(rng *r, uint32_t n)
{
    return (uint32_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

static void rng_bytes(rng *r, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)(rng_next(r) >> 56);
}

/* ---- workload: record ids, fields, values ---------------------------------------------------- */

typedef struct rec_id {
    char s[ID_LEN + 1];
} rec_id;

/* 128 random bits as unpadded base64url: 22 chars, like a UUID in a URL. */
static void gen_id(rng *r, rec_id *id)
{
    static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t raw[16];
    rng_bytes(r, raw, sizeof raw);
    uint32_t acc = 0, bits = 0, o = 0;
    for (size_t i = 0; i < sizeof raw; i++) {
        acc = (acc << 8) | raw[i];
        for (bits += 8; bits >= 6; bits -= 6)
            id->s[o++] = B64[(acc >> (bits - 6)) & 63];
    }
    if (bits)
        id->s[o++] = B64[(acc << (6 - bits)) & 63];
    id->s[o] = '\0';
}

typedef struct wval {
    bool is_str;
    int64_t i;
    char s[16];
} wval;

static void gen_title(rng *r, wval *v)
{
    uint32_t n = 4 + rng_below(r, 9);
    for (uint32_t i = 0; i < n; i++)
        v->s[i] = (char)('a' + rng_below(r, 26));
    v->s[n] = '\0';
    v->is_str = true;
}

static void gen_status(rng *r, wval *v)
{
    static const char *const STATUS[] = {"open", "doing", "done", "blocked"};
    snprintf(v->s, sizeof v->s, "%s", STATUS[rng_below(r, 4)]);
    v->is_str = true;
}

static void gen_qty(rng *r, wval *v)
{
    v->i = rng_below(r, 1000);
    v->is_str = false;
}

static void gen_owner(rng *r, wval *v)
{
    snprintf(v->s, sizeof v->s, "user%u", (unsigned)rng_below(r, 100));
    v->is_str = true;
}

static void gen_due(rng *r, wval *v)
{
    v->i = 19000 + rng_below(r, 2000); /* a day number */
    v->is_str = false;
}

typedef struct field_def {
    const char *name;
    fm_kind kind;
    void (*gen)(rng *r, wval *v);
} field_def;

/* A task-list record: one mv field, so concurrent writes show up as conflicts. */
static const field_def FIELDS[NFIELDS] = {
    {"title", FM_KIND_LWW, gen_title}, {"status", FM_KIND_MV, gen_status},
    {"qty", FM_KIND_LWW, gen_qty},     {"owner", FM_KIND_LWW, gen_owner},
    {"due", FM_KIND_LWW, gen_due},
};

static fm_value wval_value(const wval *v)
{
    return v->is_str ? fm_value_str(v->s) : fm_value_int(v->i);
}

/* ---- workload plan: ops grouped into per-author batches, round by round ---------------------- */

typedef struct wop {
    uint32_t rec;
    uint8_t field;
    wval v;
} wop;

typedef struct bspec {
    uint32_t author, round, first, nops;
} bspec;

typedef struct plan_params {
    uint32_t ops, authors, batch_ops, records, conflict_pct;
} plan_params;

typedef struct plan {
    wop *ops; /* in batch order */
    bspec *b;
    uint32_t nops, nb;
    uint64_t copied; /* writes aimed at a field another author writes concurrently */
} plan;

/* Slot j of a round belongs to author j % authors. A colliding write copies the target of an
 * earlier slot of another author in the same round. */
static void pick_target(rng *r, const plan_params *pp, const wop *slot, uint32_t j, wop *w,
                        uint64_t *copied)
{
    if (pp->conflict_pct && pp->authors > 1 && j > 0 && rng_below(r, 100) < pp->conflict_pct) {
        uint32_t k = rng_below(r, j);
        if (k % pp->authors == j % pp->authors)
            k++; /* k <= j - authors, so k + 1 < j belongs to another author */
        w->rec = slot[k].rec;
        w->field = slot[k].field;
        (*copied)++;
        return;
    }
    w->rec = rng_below(r, pp->records);
    w->field = (uint8_t)rng_below(r, NFIELDS);
}

static void gen_round(rng *r, const plan_params *pp, uint32_t round, uint32_t m, wop *slot, plan *p)
{
    for (uint32_t j = 0; j < m; j++) {
        pick_target(r, pp, slot, j, &slot[j], &p->copied);
        FIELDS[slot[j].field].gen(r, &slot[j].v);
    }
    for (uint32_t a = 0; a < pp->authors; a++) {
        uint32_t first = p->nops;
        for (uint32_t j = a; j < m; j += pp->authors)
            p->ops[p->nops++] = slot[j];
        if (p->nops > first)
            p->b[p->nb++] = (bspec){a, round, first, p->nops - first};
    }
}

static void gen_plan(rng *r, const plan_params *pp, plan *p)
{
    uint32_t per_round = pp->authors * pp->batch_ops;
    uint32_t rounds = (uint32_t)(((uint64_t)pp->ops + per_round - 1) / per_round);
    memset(p, 0, sizeof *p);
    p->ops = xcalloc(pp->ops, sizeof *p->ops);
    p->b = xcalloc((size_t)rounds * pp->authors, sizeof *p->b);
    wop *slot = xcalloc(per_round, sizeof *slot);
    for (uint32_t rd = 0; rd < rounds; rd++)
        gen_round(r, pp, rd, FM_MIN(per_round, pp->ops - rd * per_round), slot, p);
    free(slot);
}

static void plan_free(plan *p)
{
    free(p->ops);
    free(p->b);
}

/* ---- encoding: signed, hash-chained batches -------------------------------------------------- */

typedef struct author {
    fm_identity *id;
    uint8_t pk[FM_ID_BYTES];
    uint64_t seq, hlc;
    uint8_t head[FM_HASH_BYTES];
} author;

typedef struct bset {
    fm_buf arena; /* every encoded batch, back to back */
    size_t *off;  /* n + 1 offsets into arena */
    fm_bytes *b;  /* views into arena, set by bset_finish */
    uint32_t n;
    uint64_t ops, op_bytes; /* op_bytes: the encoded ops alone, without batch overhead */
} bset;

static void encode_ops(const plan *p, const bspec *s, const rec_id *recs, fm_buf *out)
{
    fm_buf val;
    fm_buf_init(&val);
    fm_buf_reset(out);
    for (uint32_t i = s->first; i < s->first + s->nops; i++) {
        const wop *w = &p->ops[i];
        const field_def *f = &FIELDS[w->field];
        fm_value v = wval_value(&w->v);
        fm_buf_reset(&val);
        CHECK(fm_value_encode(&v, &val));
        CHECK(fm_op_encode(out, f->kind == FM_KIND_MV ? FM_OP_SET_MV : FM_OP_SET_LWW,
                           recs[w->rec].s, ID_LEN, f->name, strlen(f->name), val.data, val.len));
    }
    fm_buf_free(&val);
}

/* The batch context: what the author has seen of the others (seqs, or their current feeds). */
static void batch_ctx(const author *au, uint32_t n, uint32_t self, const uint64_t *seqs, fm_vv *ctx)
{
    for (uint32_t a = 0; a < n; a++) {
        uint64_t seq = seqs ? seqs[a] : au[a].seq;
        if (a != self && seq)
            CHECK(fm_vv_set(ctx, au[a].pk, seq));
    }
}

static void encode_batch(author *a, const fm_vv *ctx, uint64_t now_ms, const fm_buf *ops,
                         uint32_t nops, bset *bs)
{
    size_t start = bs->arena.len;
    fm_batch_head h = {.coll = (const uint8_t *)COLL,
                       .coll_len = (uint32_t)strlen(COLL),
                       .first_seq = a->seq + 1,
                       .prev = a->seq ? a->head : NULL,
                       .ctx = ctx,
                       .hlc = fm_hlc_tick(&a->hlc, now_ms),
                       .nops = nops};
    CHECK(fm_batch_encode(a->id, &h, ops->data, ops->len, &bs->arena));
    crypto_generichash(a->head, FM_HASH_BYTES, bs->arena.data + start, bs->arena.len - start, NULL,
                       0);
    a->seq += nops;
    bs->off[bs->n++] = start;
    bs->ops += nops;
    bs->op_bytes += ops->len;
}

static void bset_finish(bset *bs)
{
    bs->off[bs->n] = bs->arena.len;
    bs->b = xcalloc(bs->n, sizeof *bs->b);
    for (uint32_t i = 0; i < bs->n; i++)
        bs->b[i] = (fm_bytes){bs->arena.data + bs->off[i], bs->off[i + 1] - bs->off[i]};
}

static void bset_free(bset *bs)
{
    fm_buf_free(&bs->arena);
    free(bs->off);
    free(bs->b);
}

/* concurrent: a batch's context is the round's start, not every batch before it. */
static void encode_plan(author *au, uint32_t nauthors, const plan *p, const rec_id *recs,
                        bool concurrent, bset *bs)
{
    uint64_t *snap = xcalloc(nauthors, sizeof *snap);
    for (uint32_t a = 0; a < nauthors; a++)
        au[a].seq = au[a].hlc = 0;
    memset(bs, 0, sizeof *bs);
    fm_buf_init(&bs->arena);
    bs->off = xcalloc((size_t)p->nb + 1, sizeof *bs->off);
    fm_buf ops;
    fm_buf_init(&ops);
    for (uint32_t i = 0; i < p->nb; i++) {
        const bspec *s = &p->b[i];
        if (i == 0 || s->round != p->b[i - 1].round)
            for (uint32_t a = 0; a < nauthors; a++)
                snap[a] = au[a].seq; /* a round starts: what each author has seen */
        fm_vv ctx;
        fm_vv_init(&ctx);
        batch_ctx(au, nauthors, s->author, concurrent ? snap : NULL, &ctx);
        encode_ops(p, s, recs, &ops);
        encode_batch(&au[s->author], &ctx, HLC_BASE_MS + i, &ops, s->nops, bs);
        fm_vv_free(&ctx);
    }
    fm_buf_free(&ops);
    free(snap);
    bset_finish(bs);
}

/* The same batches, shuffled within windows of SHUFFLE_WINDOW (some arrive before their
 * context and wait in the pending area). */
static fm_bytes *shuffled(const bset *bs, rng *r)
{
    fm_bytes *b = xcalloc(bs->n, sizeof *b);
    memcpy(b, bs->b, bs->n * sizeof *b);
    for (uint32_t w = 0; w < bs->n; w += SHUFFLE_WINDOW) {
        uint32_t m = FM_MIN((uint32_t)SHUFFLE_WINDOW, bs->n - w);
        for (uint32_t i = m - 1; i > 0; i--) {
            uint32_t k = rng_below(r, i + 1);
            fm_bytes t = b[w + i];
            b[w + i] = b[w + k];
            b[w + k] = t;
        }
    }
    return b;
}

/* ---- results and phases ---------------------------------------------------------------------- */

typedef struct run_res {
    char sfx[24]; /* key suffix: "" or "_conflict30" */
    uint64_t ops, batches, copied, arena_bytes, op_bytes, store_bytes;
    double decode_s, verify_s, apply_s, ingest_s, shuffled_s;
    fm_status st;
    uint8_t digest[FM_HASH_BYTES]; /* of every encoded batch: equal workloads, equal digests */
    bool hash_match, converged;
} run_res;

typedef struct single_res {
    uint64_t ops, bytes, store_bytes;
    double ingest_s;
} single_res;

typedef struct local_res {
    uint32_t txns;
    double total_s, p50_s, p99_s;
} local_res;

typedef struct phase {
    char name[48];
    double wall, cpu;
} phase;

typedef struct config {
    bool json;
    uint64_t ops, records, authors, seed;
    const char *dir;
} config;

typedef struct bench {
    config cfg;
    rec_id *recs;
    author *au;
    fm_identity *device; /* the replicas' own identity */
    phase phases[MAX_PHASES];
    uint32_t nphases;
} bench;

/* Records a phase that began at since. */
static void phase_add(bench *bn, const char *name, const char *sfx, stamp since)
{
    EXPECT(bn->nphases < MAX_PHASES);
    stamp now = stamp_now();
    phase *p = &bn->phases[bn->nphases++];
    snprintf(p->name, sizeof p->name, "%s%s", name, sfx);
    p->wall = now.wall - since.wall;
    p->cpu = now.cpu - since.cpu;
}

/* ---- crdt layer: decode, verify, apply through fm_state -------------------------------------- */

MEASURED static double time_decode(const bset *bs)
{
    fm_batch b;
    fm_batch_init(&b);
    double t0 = now_s();
    for (uint32_t i = 0; i < bs->n; i++)
        CHECK(fm_batch_decode(bs->b[i].data, bs->b[i].len, &b));
    double t = now_s() - t0;
    fm_batch_free(&b);
    return t;
}

static fm_batch *predecode(const bset *bs)
{
    fm_batch *bt = xcalloc(bs->n, sizeof *bt);
    for (uint32_t i = 0; i < bs->n; i++) {
        fm_batch_init(&bt[i]);
        CHECK(fm_batch_decode(bs->b[i].data, bs->b[i].len, &bt[i]));
    }
    return bt;
}

MEASURED static double time_verify(const bset *bs, const fm_batch *bt)
{
    double t0 = now_s();
    for (uint32_t i = 0; i < bs->n; i++)
        CHECK(fm_batch_verify(&bt[i], bs->b[i].data, bs->b[i].len));
    return now_s() - t0;
}

/* check + apply every batch into a fresh in-memory state, then flush and hash it. */
MEASURED static double time_apply(const fm_batch *bt, uint32_t n, uint8_t hash[FM_HASH_BYTES])
{
    fm_state st;
    fm_state_init(&st, NULL);
    double t0 = now_s();
    for (uint32_t i = 0; i < n; i++) {
        CHECK(fm_state_check(&st, &bt[i]));
        CHECK(fm_state_apply(&st, &bt[i]));
    }
    CHECK(fm_state_flush(&st));
    CHECK(fm_state_hash(&st, hash));
    double t = now_s() - t0;
    fm_state_free(&st);
    return t;
}

static void run_crdt(bench *bn, const bset *bs, run_res *res, uint8_t hash[FM_HASH_BYTES])
{
    stamp t0 = stamp_now();
    res->decode_s = time_decode(bs);
    fm_batch *bt = predecode(bs);
    res->verify_s = time_verify(bs, bt);
    phase_add(bn, "decode_verify", res->sfx, t0);
    t0 = stamp_now();
    double reps[APPLY_REPS];
    for (int k = 0; k < APPLY_REPS; k++)
        reps[k] = time_apply(bt, bs->n, hash);
    qsort(reps, APPLY_REPS, sizeof *reps, cmp_double);
    res->apply_s = reps[APPLY_REPS / 2];
    phase_add(bn, "crdt_apply", res->sfx, t0);
    for (uint32_t i = 0; i < bs->n; i++)
        fm_batch_free(&bt[i]);
    free(bt);
}

/* ---- node layer: file stores ----------------------------------------------------------------- */

static fm_replica *open_replica(const bench *bn, const char *path)
{
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .path = path, .identity = bn->device};
    fm_replica *r;
    CHECK(fm_replica_open(&cfg, &r));
    return r;
}

static uint64_t file_size(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 ? (uint64_t)s.st_size : 0;
}

/* Size of a closed store: checkpoint the WAL into the db, then db + wal. */
static uint64_t store_size(const char *path)
{
    sqlite3 *db;
    EXPECT(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK);
    EXPECT(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    char wal[PATH_MAX + 80];
    snprintf(wal, sizeof wal, "%s-wal", path);
    return file_size(path) + file_size(wal);
}

/* Ingests n batches CALL_BATCHES per call; in_order: every batch must apply at once. */
MEASURED static double ingest_all(fm_replica *r, const fm_bytes *b, uint32_t n, bool in_order)
{
    int res[CALL_BATCHES];
    double t0 = now_s();
    for (uint32_t i = 0; i < n; i += CALL_BATCHES) {
        uint32_t k = FM_MIN(n - i, (uint32_t)CALL_BATCHES);
        CHECK(fm_replica_ingest(r, b + i, k, res));
        for (uint32_t j = 0; j < k; j++)
            EXPECT(res[j] == 0 || (!in_order && res[j] == FM_EPENDING));
    }
    return now_s() - t0;
}

/* A fresh store in the temp dir fed the batches; its status and size after closing. */
static double ingest_file(const bench *bn, int store, const fm_bytes *b, uint32_t n, bool in_order,
                          fm_status *st, uint64_t *bytes)
{
    const char *path = store_path(store);
    fm_replica *r = open_replica(bn, path);
    double t = ingest_all(r, b, n, in_order);
    CHECK(fm_replica_status(r, st));
    fm_replica_close(r);
    *bytes = store_size(path);
    return t;
}

static void run_store(bench *bn, const bset *bs, run_res *res)
{
    stamp t0 = stamp_now();
    int store = res->sfx[0] ? ST_CONFLICT : ST_BASE;
    res->ingest_s = ingest_file(bn, store, bs->b, bs->n, true, &res->st, &res->store_bytes);
    EXPECT(res->st.ops == bs->ops && res->st.pending == 0 && res->st.batches == bs->n);
    phase_add(bn, "store_ingest", res->sfx, t0);
}

/* A second store fed the same batches in another order must reach the same state hash. */
static void run_shuffled(bench *bn, const bset *bs, run_res *res, rng *r)
{
    fm_bytes *b = shuffled(bs, r);
    fm_status st;
    uint64_t bytes;
    stamp t0 = stamp_now();
    res->shuffled_s = ingest_file(bn, ST_SHUFFLED, b, bs->n, false, &st, &bytes);
    EXPECT(st.ops == bs->ops && st.pending == 0);
    res->converged = memcmp(st.state_hash, res->st.state_hash, FM_HASH_BYTES) == 0;
    phase_add(bn, "store_ingest_shuffled", res->sfx, t0);
    free(b);
}

static void run_one(bench *bn, bool conflict, run_res *res)
{
    const config *c = &bn->cfg;
    plan_params pp = {(uint32_t)c->ops, (uint32_t)c->authors, BATCH_OPS, (uint32_t)c->records,
                      conflict ? CONFLICT_PCT : 0};
    rng r = rng_stream(c->seed, conflict ? 2 : 1);
    if (conflict)
        snprintf(res->sfx, sizeof res->sfx, "_conflict%d", CONFLICT_PCT);
    else
        res->sfx[0] = '\0';
    stamp t0 = stamp_now();
    plan p;
    gen_plan(&r, &pp, &p);
    bset bs;
    encode_plan(bn->au, pp.authors, &p, bn->recs, conflict, &bs);
    phase_add(bn, "generate_encode", res->sfx, t0);
    res->ops = bs.ops, res->batches = bs.n, res->copied = p.copied;
    res->arena_bytes = bs.arena.len, res->op_bytes = bs.op_bytes;
    crypto_generichash(res->digest, FM_HASH_BYTES, bs.arena.data, bs.arena.len, NULL, 0);
    uint8_t crdt_hash[FM_HASH_BYTES];
    run_crdt(bn, &bs, res, crdt_hash);
    run_store(bn, &bs, res);
    res->hash_match = memcmp(crdt_hash, res->st.state_hash, FM_HASH_BYTES) == 0;
    if (conflict)
        run_shuffled(bn, &bs, res, &r);
    bset_free(&bs);
    plan_free(&p);
}

/* One op per batch: the unamortised encoding and verified-ingest cost. */
static void run_single(bench *bn, single_res *res)
{
    const config *c = &bn->cfg;
    plan_params pp = {(uint32_t)FM_MIN(c->ops, (uint64_t)SINGLE_OPS), (uint32_t)c->authors, 1,
                      (uint32_t)c->records, 0};
    rng r = rng_stream(c->seed, 3);
    stamp t0 = stamp_now();
    plan p;
    gen_plan(&r, &pp, &p);
    bset bs;
    encode_plan(bn->au, pp.authors, &p, bn->recs, false, &bs);
    res->ops = bs.ops;
    res->bytes = bs.arena.len;
    fm_status st;
    res->ingest_s = ingest_file(bn, ST_SINGLE, bs.b, bs.n, true, &st, &res->store_bytes);
    EXPECT(st.ops == bs.ops);
    phase_add(bn, "single", "", t0);
    bset_free(&bs);
    plan_free(&p);
}

/* One durable local transaction with one write; returns its duration. */
MEASURED static double local_txn(fm_replica *r, const rec_id *recs, uint32_t nrecs, rng *g)
{
    const field_def *f = &FIELDS[rng_below(g, NFIELDS)];
    const char *id = recs[rng_below(g, nrecs)].s;
    wval v;
    f->gen(g, &v);
    fm_txn *t;
    double t0 = now_s();
    CHECK(fm_txn_begin(r, COLL, &t));
    CHECK(fm_txn_set(t, id, f->name, f->kind, wval_value(&v)));
    CHECK(fm_txn_commit(t));
    return now_s() - t0;
}

static void run_local(bench *bn, local_res *res)
{
    rng g = rng_stream(bn->cfg.seed, 4);
    fm_replica *r = open_replica(bn, store_path(ST_LOCAL));
    res->txns = (uint32_t)FM_MIN(bn->cfg.ops, (uint64_t)LOCAL_TXNS);
    double *lat = xcalloc(res->txns, sizeof *lat);
    stamp t0 = stamp_now();
    for (uint32_t i = 0; i < res->txns; i++)
        lat[i] = local_txn(r, bn->recs, (uint32_t)bn->cfg.records, &g);
    res->total_s = now_s() - t0.wall;
    fm_replica_close(r);
    qsort(lat, res->txns, sizeof *lat, cmp_double);
    res->p50_s = lat[res->txns / 2];
    res->p99_s = lat[FM_MIN(res->txns - 1, res->txns * 99 / 100)];
    free(lat);
    phase_add(bn, "local_writes", "", t0);
}

/* ---- output: one JSON object, or aligned lines ----------------------------------------------- */

typedef struct emit {
    bool json, first;
    int depth;
} emit;

static void out_key(emit *o, const char *key, const char *sfx)
{
    char k[128];
    snprintf(k, sizeof k, "%s%s", key, sfx ? sfx : "");
    if (o->json)
        printf("%s\"%s\":", o->first ? "" : ",", k);
    else
        printf("%*s%-*s ", 2 * o->depth, "", 46 - 2 * o->depth, k);
    o->first = false;
}

static void out_end(const emit *o)
{
    if (!o->json)
        putchar('\n');
}

static void out_u64(emit *o, const char *key, const char *sfx, uint64_t v)
{
    out_key(o, key, sfx);
    printf("%" PRIu64, v);
    out_end(o);
}

static void out_num(emit *o, const char *key, const char *sfx, double v, int prec)
{
    out_key(o, key, sfx);
    printf("%.*f", prec, v);
    out_end(o);
}

static void out_bool(emit *o, const char *key, const char *sfx, bool v)
{
    out_key(o, key, sfx);
    fputs(v ? "true" : "false", stdout);
    out_end(o);
}

static void out_str(emit *o, const char *key, const char *s)
{
    out_key(o, key, NULL);
    if (o->json)
        putchar('"');
    for (; *s; s++) {
        if (o->json && (*s == '"' || *s == '\\'))
            putchar('\\');
        if (!o->json || (unsigned char)*s >= 0x20)
            putchar(*s);
    }
    if (o->json)
        putchar('"');
    out_end(o);
}

/* The first 8 bytes of a hash, as hex: enough to tell runs apart. */
static void out_hex(emit *o, const char *key, const char *sfx, const uint8_t *h)
{
    char hex[17];
    fm_hex(h, 8, hex);
    out_key(o, key, sfx);
    printf(o->json ? "\"%s\"" : "%s", hex);
    out_end(o);
}

static void out_open(emit *o, const char *key)
{
    if (o->json) {
        out_key(o, key, NULL);
        putchar('{');
    } else {
        printf("%*s%s:\n", 2 * o->depth, "", key);
    }
    o->first = true;
    o->depth++;
}

static void out_close(emit *o)
{
    if (o->json)
        putchar('}');
    o->first = false;
    o->depth--;
}

static void report_params(emit *o, const bench *bn)
{
    const config *c = &bn->cfg;
    out_str(o, "bench", "fieldmesh-bench " FM_VERSION_STRING);
    out_u64(o, "ops", NULL, c->ops);
    out_u64(o, "records", NULL, c->records);
    out_u64(o, "authors", NULL, c->authors);
    out_u64(o, "seed", NULL, c->seed);
    out_u64(o, "batch_ops", NULL, BATCH_OPS);
    out_u64(o, "ingest_batches_per_call", NULL, CALL_BATCHES);
    out_u64(o, "crdt_apply_reps", NULL, APPLY_REPS);
    out_str(o, "dir", c->dir);
}

static double unsigned_bpo(const run_res *r)
{
    return (double)(r->arena_bytes - r->batches * (2 + FM_SIG_BYTES)) / (double)r->ops;
}

static void report_run(emit *o, const run_res *r)
{
    const char *s = r->sfx;
    double ops = (double)r->ops;
    out_u64(o, "batches", s, r->batches);
    /* The figure is "before signatures": the 66-byte sig element (bin8 header + 64) of
     * each batch is left out; encode_signed_bytes_per_op includes it. */
    out_num(o, "encode_bytes_per_op", s, unsigned_bpo(r), 2);
    out_num(o, "encode_signed_bytes_per_op", s, (double)r->arena_bytes / ops, 2);
    out_num(o, "encode_op_only_bytes_per_op", s, (double)r->op_bytes / ops, 2);
    out_num(o, "encode_batch_overhead_bytes", s,
            (double)(r->arena_bytes - r->op_bytes) / (double)r->batches, 1);
    out_num(o, "decode_ops_per_s", s, rate(ops, r->decode_s), 0);
    out_num(o, "verify_ops_per_s", s, rate(ops, r->verify_s), 0);
    out_num(o, "crdt_apply_ops_per_s", s, rate(ops, r->apply_s), 0);
    out_num(o, "store_ingest_ops_per_s", s, rate(ops, r->ingest_s), 0);
    out_num(o, "verified_ingest_ops_per_s", s, rate(ops, r->ingest_s), 0);
    out_u64(o, "store_bytes", s, r->store_bytes);
    out_num(o, "store_bytes_per_op", s, (double)r->store_bytes / ops, 1);
    out_u64(o, "live_records", s, r->st.records);
    out_u64(o, "mv_conflicts", s, r->st.conflicts);
    out_bool(o, "crdt_store_hash_match", s, r->hash_match);
    out_hex(o, "workload_digest", s, r->digest);
    out_hex(o, "state_hash", s, r->st.state_hash);
}

static void report_conflict(emit *o, const run_res *r)
{
    out_u64(o, "colliding_writes", r->sfx, r->copied);
    out_num(o, "colliding_share", r->sfx, (double)r->copied / (double)r->ops, 3);
    out_num(o, "store_ingest_shuffled_ops_per_s", r->sfx, rate((double)r->ops, r->shuffled_s), 0);
    out_bool(o, "converged", NULL, r->converged);
}

static void report_single_local(emit *o, const single_res *s, const local_res *l)
{
    out_num(o, "encode_bytes_per_op_single", NULL, (double)s->bytes / (double)s->ops, 2);
    out_num(o, "verified_ingest_ops_per_s_single", NULL, rate((double)s->ops, s->ingest_s), 0);
    out_num(o, "store_bytes_per_op_single", NULL, (double)s->store_bytes / (double)s->ops, 1);
    out_u64(o, "local_write_txns", NULL, l->txns);
    out_num(o, "local_write_ops_per_s", NULL, rate(l->txns, l->total_s), 1);
    out_num(o, "local_write_p50_us", NULL, l->p50_s * 1e6, 1);
    out_num(o, "local_write_p99_us", NULL, l->p99_s * 1e6, 1);
}

static void report_targets(emit *o, const run_res *r)
{
    double ops = (double)r->ops;
    out_bool(o, "crdt_apply", r->sfx, rate(ops, r->apply_s) >= TARGET_APPLY);
    out_bool(o, "store_ingest", r->sfx, rate(ops, r->ingest_s) >= TARGET_INGEST);
    out_bool(o, "verified_ingest", r->sfx, rate(ops, r->ingest_s) >= TARGET_VERIFIED);
    out_bool(o, "encode_bytes_per_op", r->sfx, unsigned_bpo(r) <= TARGET_ENCODE_BPO);
    out_bool(o, "store_bytes_per_op", r->sfx, (double)r->store_bytes / ops <= TARGET_STORE_BPO);
}

static uint64_t peak_rss_bytes(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_maxrss * 1024 : 0;
}

/* Sync figures (bench/sync.c, bench/tcp.c) and their targets. */
typedef struct sync_res {
    fm_bench_sync_result rec;
    int rec_rc;
    fm_bench_tcp_result tcp;
    int tcp_rc;
    uint64_t tcp_ops;
} sync_res;

enum {
    TARGET_TCP_OPS_PER_S = 100000,
    TARGET_IDLE_RSS_KIB = 8 * 1024,
    TARGET_IDLE_BYTES = 200,
    TARGET_SYNC_ROUND_TRIPS = 3,
};

static void report_sync(emit *o, const sync_res *y)
{
    const fm_bench_sync_result *r = &y->rec;
    out_open(o, "reconcile");
    out_bool(o, "ok", NULL, y->rec_rc == 0 && r->converged);
    out_u64(o, "shared_ops", NULL, SYNC_SHARED_OPS);
    out_u64(o, "new_batches_each_side", NULL, SYNC_FRESH);
    out_u64(o, "new_batch_bytes", NULL, r->fresh_bytes);
    out_u64(o, "wire_bytes", NULL, r->bytes);
    out_num(o, "wire_over_new", NULL, r->fresh_bytes ? (double)r->bytes / r->fresh_bytes : 0, 3);
    out_num(o, "round_trips_with_handshake", NULL, r->waves / 2.0, 1);
    out_num(o, "sync_round_trips", NULL, r->sync_waves / 2.0, 1);
    out_u64(o, "idle_exchange_bytes", NULL, r->idle_bytes);
    out_u64(o, "idle_exchange_messages", NULL, r->idle_frames);
    out_close(o);
    const fm_bench_tcp_result *t = &y->tcp;
    double rate = t->sync_ms ? (double)y->tcp_ops * 1000.0 / (double)t->sync_ms : 0;
    out_open(o, "tcp");
    out_bool(o, "ok", NULL, y->tcp_rc == 0 && t->complete);
    out_u64(o, "ops", NULL, y->tcp_ops);
    out_u64(o, "sync_ms", NULL, t->sync_ms);
    out_num(o, "tcp_sync_ops_per_s", NULL, rate, 0);
    out_u64(o, "idle_rss_bytes", NULL, t->idle_rss_kib * 1024);
    out_u64(o, "idle_wakeups", NULL, t->idle_wakeups);
    out_u64(o, "idle_window_ms", NULL, t->idle_ms);
    out_close(o);
    out_open(o, "sync_targets_met");
    out_bool(o, "reconcile_bytes", NULL, r->bytes <= 2 * r->fresh_bytes + 4096);
    out_bool(o, "reconcile_round_trips", NULL, r->sync_waves <= 2 * TARGET_SYNC_ROUND_TRIPS);
    out_bool(o, "idle_exchange", NULL, r->idle_bytes <= TARGET_IDLE_BYTES && r->idle_waves <= 2);
    out_bool(o, "tcp_sync_ops_per_s", NULL, rate >= TARGET_TCP_OPS_PER_S);
    out_bool(o, "idle_rss", NULL, t->complete && t->idle_rss_kib <= TARGET_IDLE_RSS_KIB);
    out_close(o);
}

static void report(const bench *bn, const run_res *runs, const single_res *s, const local_res *l,
                   const sync_res *y)
{
    emit o = {.json = bn->cfg.json, .first = true};
    if (o.json)
        putchar('{');
    report_params(&o, bn);
    report_run(&o, &runs[0]);
    report_run(&o, &runs[1]);
    report_conflict(&o, &runs[1]);
    report_single_local(&o, s, l);
    out_u64(&o, "peak_rss_bytes", NULL, peak_rss_bytes());
    report_sync(&o, y);
    out_open(&o, "targets_met");
    report_targets(&o, &runs[0]);
    report_targets(&o, &runs[1]);
    out_close(&o);
    out_open(&o, "phase_s");
    for (uint32_t i = 0; i < bn->nphases; i++)
        out_num(&o, bn->phases[i].name, NULL, bn->phases[i].wall, 3);
    out_close(&o);
    out_open(&o, "phase_cpu_s");
    for (uint32_t i = 0; i < bn->nphases; i++)
        out_num(&o, bn->phases[i].name, NULL, bn->phases[i].cpu, 3);
    out_close(&o);
    if (o.json)
        puts("}");
}

/* ---- setup and arguments --------------------------------------------------------------------- */

static fm_identity *identity_from(rng *r)
{
    uint8_t seed[32];
    rng_bytes(r, seed, sizeof seed);
    fm_identity *id;
    CHECK(fm_identity_from_seed(seed, &id));
    return id;
}

static void setup(bench *bn)
{
    char tmpl[PATH_MAX];
    int n = snprintf(tmpl, sizeof tmpl, "%s/fieldmesh-bench-XXXXXX", bn->cfg.dir);
    EXPECT(n > 0 && (size_t)n < sizeof tmpl);
    if (!mkdtemp(tmpl)) {
        fprintf(stderr, "fieldmesh-bench: mkdtemp %s: %s\n", tmpl, strerror(errno));
        exit(1);
    }
    memcpy(tmp_dir, tmpl, sizeof tmpl);
    tmp_init();
    rng r = rng_stream(bn->cfg.seed, 0);
    bn->recs = xcalloc(bn->cfg.records, sizeof *bn->recs);
    for (uint64_t i = 0; i < bn->cfg.records; i++)
        gen_id(&r, &bn->recs[i]);
    bn->au = xcalloc(bn->cfg.authors, sizeof *bn->au);
    for (uint64_t a = 0; a < bn->cfg.authors; a++) {
        bn->au[a].id = identity_from(&r);
        fm_identity_public(bn->au[a].id, bn->au[a].pk);
    }
    bn->device = identity_from(&r);
}

static void teardown(bench *bn)
{
    for (uint64_t a = 0; a < bn->cfg.authors; a++)
        fm_identity_free(bn->au[a].id);
    free(bn->au);
    free(bn->recs);
    fm_identity_free(bn->device);
    tmp_cleanup();
}

static void usage(FILE *f)
{
    fputs("usage: fieldmesh-bench [--json] [--ops N] [--records N] [--authors N] [--seed S]"
          " [--dir DIR]\n"
          "  --ops N      field writes per run (default 100000)\n"
          "  --records N  records written to (default 10000)\n"
          "  --authors N  writing devices, 1..256 (default 4)\n"
          "  --seed S     PRNG seed; same seed, same batches (default 1)\n"
          "  --dir DIR    where the temporary stores go (default $TMPDIR or /tmp)\n"
          "  --json       one JSON object instead of lines\n",
          f);
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_opt(config *c, const char *name, const char *val)
{
    const struct {
        const char *name;
        uint64_t *dst, min, max;
    } opts[] = {{"--ops", &c->ops, 1, 10000000},
                {"--records", &c->records, 1, 10000000},
                {"--authors", &c->authors, 1, 256},
                {"--seed", &c->seed, 0, UINT64_MAX}};
    if (strcmp(name, "--dir") == 0) {
        c->dir = val;
        return 0;
    }
    for (size_t i = 0; i < FM_ARRAY_LEN(opts); i++)
        if (strcmp(name, opts[i].name) == 0)
            return parse_u64(val, opts[i].min, opts[i].max, opts[i].dst);
    return -1;
}

static int parse_args(int argc, char **argv, config *c)
{
    const char *tmp = getenv("TMPDIR");
    *c = (config){.ops = 100000, .records = 10000, .authors = 4, .seed = 1};
    c->dir = tmp && *tmp ? tmp : "/tmp";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            c->json = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (i + 1 >= argc || parse_opt(c, argv[i], argv[i + 1]) != 0) {
            fprintf(stderr, "fieldmesh-bench: bad argument: %s\n", argv[i]);
            usage(stderr);
            return -1;
        } else {
            i++;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench bn = {0};
    if (parse_args(argc, argv, &bn.cfg) != 0)
        return 2;
    EXPECT(sodium_init() >= 0);
    stamp t0 = stamp_now();
    setup(&bn);
    run_res runs[2];
    memset(runs, 0, sizeof runs);
    single_res single = {0};
    local_res local = {0};
    run_one(&bn, false, &runs[0]);
    run_one(&bn, true, &runs[1]);
    run_single(&bn, &single);
    run_local(&bn, &local);
    sync_res sync = {.tcp_ops = bn.cfg.ops};
    stamp ts = stamp_now();
    sync.rec_rc = fm_bench_reconcile(SYNC_SHARED_OPS, SYNC_FRESH, &sync.rec);
    phase_add(&bn, "reconcile", "", ts);
    ts = stamp_now();
    sync.tcp_rc = fm_bench_tcp(tmp_dir, bn.cfg.ops, 100, 10000, &sync.tcp);
    phase_add(&bn, "tcp_sync", "", ts);
    phase_add(&bn, "total", "", t0);
    report(&bn, runs, &single, &local, &sync);
    teardown(&bn);
    return 0;
}
