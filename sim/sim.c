/*
 * sim.c — the simulator's core: building the mesh (identities, in-memory stores, certificates,
 * node cores), the event loop over virtual time, the workload and its ledger of acknowledged
 * writes, crashes and restarts, and the end-of-run checks (convergence per connected component,
 * lost writes).
 *
 * Every call into a node goes through one pattern: trace the event, call, then sim_after_call
 * (count it, mark the node's cached digest stale, re-read its next deadline and schedule its
 * timer). Timer events carry a generation; only the newest counts, and one firing early (the
 * deadline moved later) just reschedules.
 */
#include "sim/sim_int.h"

#include "crypto/cert.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- small helpers -------------------------------------------------------------------------- */

/* The worker running on this thread inside a window; NULL outside windows. */
static __thread sim_worker *cur_worker;

void sim_fail(fm_sim *s, int rc)
{
    int none = 0;
    __atomic_compare_exchange_n(&s->error, &none, rc, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->stop, true, __ATOMIC_SEQ_CST);
}

static int sim_error(const fm_sim *s)
{
    return __atomic_load_n(&s->error, __ATOMIC_SEQ_CST);
}

uint64_t sim_now(const fm_sim *s)
{
    return cur_worker ? cur_worker->now : s->now;
}

sim_worker *sim_cur(fm_sim *s)
{
    return cur_worker ? cur_worker : &s->w[0];
}

bool sim_node_event(uint32_t kind)
{
    return kind == EV_TIMER || kind == EV_OPEN || kind == EV_FAIL || kind == EV_DATA ||
           kind == EV_FIN || kind == EV_WRITE_RUN;
}

void sim_push(fm_sim *s, uint64_t t, uint32_t kind, uint32_t node, uint64_t a, uint64_t b)
{
    fm_sim_heap *h = sim_node_event(kind) ? &s->w[s->nodes[node].worker].heap : &s->heap;
    /* Inside a window a node schedules only its own events (the rest are ops). */
    FM_ASSERT(!cur_worker || h == &cur_worker->heap);
    int rc = fm_sim_heap_push(h, t, kind, node, a, b);
    if (rc)
        sim_fail(s, rc);
}

bool sim_running(const sim_node *sn)
{
    return sn->n != NULL && !sn->crashed;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Folds one delivered event into the node's trace hash: (time, kind, node, conn, length, first
 * bytes). */
void sim_trace(fm_sim *s, uint32_t kind, uint32_t node, uint64_t conn, const uint8_t *data,
               size_t len)
{
    FM_ASSERT(node < s->n);
    uint8_t p[40];
    put64(p, sim_now(s));
    put64(p + 8, (uint64_t)kind << 32 | node);
    put64(p + 16, conn);
    put64(p + 24, len);
    memset(p + 32, 0, 8);
    if (data)
        memcpy(p + 32, data, FM_MIN(len, (size_t)8));
    crypto_generichash_update(s->nodes[node].trace, p, sizeof p);
}

/* Virtual time at which node clock time t_ms comes (never before now). */
static uint64_t vt_of(const fm_sim *s, const sim_node *sn, uint64_t t_ms)
{
    int64_t base = (int64_t)SIM_BASE_EPOCH_MS + sn->skew_ms;
    if (t_ms > (uint64_t)INT64_MAX / 2)
        return SIM_NEVER;
    int64_t ms = (int64_t)t_ms - base;
    uint64_t now = sim_now(s);
    if (ms < 0)
        return now;
    uint64_t us = (uint64_t)ms * 1000;
    return us < now ? now : us;
}

void sim_after_call(fm_sim *s, sim_node *sn)
{
    sim_cur(s)->node_calls++;
    sn->ops_stale = sn->digest_stale = true;
    if (!sim_running(sn))
        return;
    uint64_t d = fm_node_next_deadline(sn->n);
    if (d == UINT64_MAX)
        return;
    uint64_t t = vt_of(s, sn, d), now = sim_now(s);
    if (t == SIM_NEVER)
        return;
    /* Due now but already ticked now: the node's clock must move for it to make progress. */
    if (t <= now && sn->last_tick_us == now && sn->timer_gen)
        t = now + 1000;
    if (sn->timer_at != SIM_NEVER && sn->timer_at <= t)
        return; /* an earlier timer is pending; it reschedules when it fires */
    sn->timer_at = t;
    sn->timer_gen++;
    sim_push(s, t, EV_TIMER, sn->idx, sn->timer_gen, 0);
}

/* ---- environments -----------------------------------------------------------------------------
 */

static void stream_init(sim_stream *st, uint64_t seed, const char *label, uint32_t idx)
{
    uint8_t msg[64];
    size_t n = strlen(label);
    FM_ASSERT(n + 12 <= sizeof msg);
    memcpy(msg, label, n);
    put64(msg + n, seed);
    for (int i = 0; i < 4; i++)
        msg[n + 8 + i] = (uint8_t)(idx >> (8 * i));
    crypto_generichash(st->key, sizeof st->key, msg, n + 12, NULL, 0);
    st->nonce = 0;
    st->pos = sizeof st->buf;
}

static void stream_read(sim_stream *st, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        if (st->pos == sizeof st->buf) {
            uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];
            put64(nonce, st->nonce++);
            crypto_stream_chacha20(st->buf, sizeof st->buf, nonce, st->key);
            st->pos = 0;
        }
        size_t k = FM_MIN(len, sizeof st->buf - st->pos);
        memcpy(p, st->buf + st->pos, k);
        st->pos += (uint32_t)k;
        p += k;
        len -= k;
    }
}

static uint64_t node_now_ms(void *ctx)
{
    const sim_node *sn = ctx;
    return (uint64_t)((int64_t)SIM_BASE_EPOCH_MS + sn->skew_ms) + sim_now(sn->sim) / 1000;
}

static void node_random(void *ctx, void *buf, size_t len)
{
    sim_node *sn = ctx;
    stream_read(&sn->rs, buf, len);
}

/* The authority issues certificates from 10 years before the epoch, valid 100 years: skewed
 * clocks still accept them. */
static uint64_t auth_now_ms(void *ctx)
{
    (void)ctx;
    return SIM_BASE_EPOCH_MS - 10 * SIM_YEAR_MS;
}

static void auth_random(void *ctx, void *buf, size_t len)
{
    fm_sim *s = ctx;
    stream_read(&s->auth_rs, buf, len);
}

static void node_log(void *ctx, int level, const char *line)
{
    sim_node *sn = ctx;
    fprintf(stderr, "[%10.3f] node %u (%d): %s\n", sim_now(sn->sim) / 1e6, sn->idx, level, line);
}

/* ---- node lifecycle ---------------------------------------------------------------------------
 */

static int node_start(fm_sim *s, sim_node *sn)
{
    fm_replica_config rc_cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .identity = sn->id, .env = &sn->env};
    int rc = fm__replica_open_on(&rc_cfg, sn->store, &sn->r);
    if (rc)
        return rc;
    fm__replica_set_sigcache(sn->r, s->w[sn->worker].sigcache);
    return 0;
}

static int node_core_open(fm_sim *s, sim_node *sn)
{
    /* sim addresses name no transport: what AUTO would do on these links */
    bool ble = s->cfg.link.name && strcmp(s->cfg.link.name, "ble") == 0;
    fm_node_config nc = {.version = FM_NODE_CONFIG_VERSION,
                         .replica = sn->r,
                         .io = &sn->io,
                         .subscribe_none = sn->subscribe_none,
                         .max_conns = s->cfg.max_conns,
                         .anti_entropy_ms = s->cfg.anti_entropy_ms,
                         .push_delay_ms =
                             s->cfg.push_delay_ms ? s->cfg.push_delay_ms : FM_NODE_PUSH_AT_ONCE,
                         .lazy_push = ble ? FM_LAZY_ON : FM_LAZY_OFF,
                         .push_cover = s->cfg.no_cover || ble ? FM_COVER_OFF : FM_COVER_ON};
    int rc = fm_node_open(&nc, &sn->n);
    if (rc)
        return rc;
    sn->timer_at = SIM_NEVER;
    sim_after_call(s, sn);
    return 0;
}

static int node_open_first(fm_sim *s, uint32_t i, void *arg)
{
    (void)arg;
    s->nodes[i].crashed = false;
    return node_core_open(s, &s->nodes[i]);
}

static void stats_add(fm_node_stats *acc, const fm_node_stats *x)
{
    acc->frames_out += x->frames_out;
    acc->frames_in += x->frames_in;
    acc->bytes_out += x->bytes_out;
    acc->bytes_in += x->bytes_in;
    acc->batches_out += x->batches_out;
    acc->batches_in += x->batches_in;
    acc->batches_dup += x->batches_dup;
    acc->batches_refused += x->batches_refused;
    acc->sessions_ok += x->sessions_ok;
    acc->sessions_failed += x->sessions_failed;
    acc->ihave_out += x->ihave_out;
    acc->prunes_out += x->prunes_out;
    acc->grafts_out += x->grafts_out;
    acc->push_covered += x->push_covered;
    acc->vectors_deferred += x->vectors_deferred;
}

/* Closes node and replica. A crash: peers see their connections drop, the node is told nothing
 * (its io callbacks find no live connection and do nothing). */
static void node_stop(fm_sim *s, sim_node *sn)
{
    if (!sn->n && !sn->r)
        return;
    sn->crashed = true;
    sim_topo_presence(s, sn->idx);
    sim_net_cut(s, sn->idx, UINT32_MAX);
    if (sn->n) {
        fm_node_stats st;
        fm_node_stats_get(sn->n, &st);
        stats_add(&sn->acc, &st);
        fm_node_close(sn->n);
        sn->n = NULL;
    }
    fm_replica_close(sn->r);
    sn->r = NULL;
    sn->timer_gen++;
    sn->timer_at = SIM_NEVER;
}

static void node_crash(fm_sim *s, sim_node *sn)
{
    if (sn->crashed || !sn->n)
        return;
    sim_trace(s, TR_CRASH, sn->idx, 0, NULL, 0);
    node_stop(s, sn);
    uint64_t down = 1000000 + fm_sim_rng_below(&s->rng_churn, 4000001);
    sim_push(s, s->now + down, EV_RESTART, sn->idx, 0, 0);
}

static void node_restart(fm_sim *s, sim_node *sn)
{
    if (!sn->crashed)
        return;
    sim_trace(s, TR_RESTART, sn->idx, 0, NULL, 0);
    int rc = node_start(s, sn);
    if (!rc)
        rc = node_core_open(s, sn);
    if (rc) {
        fprintf(stderr, "fieldmesh-sim: node %u failed to restart: %s\n", sn->idx, fm_strerror(rc));
        sim_fail(s, rc);
        return;
    }
    sn->restarts++;
    sn->crashed = false;
    sn->ops_stale = sn->digest_stale = true;
    sim_topo_presence(s, sn->idx);
}

/* ---- workload -----------------------------------------------------------------------------------
 */

static void coll_name(const fm_sim *s, uint32_t coll, char out[24])
{
    (void)s;
    if (coll == 0)
        snprintf(out, 24, "hot");
    else
        snprintf(out, 24, "p%" PRIu32, coll - 1);
}

uint64_t fm_sim_held_seq(fm_sim *s, uint32_t i, const char *collection,
                         const uint8_t author[FM_ID_BYTES])
{
    fm_replica *r = s->nodes[i].r;
    if (!r)
        return 0;
    fm_coll *c = fm_state_coll(&r->st, (const uint8_t *)collection, (uint32_t)strlen(collection));
    return c ? fm_vv_get(&c->vv, author) : 0;
}

static int ledger_add(fm_sim *s, const sim_write *w)
{
    if (fm_grow((void **)&s->ledger, s->nledger, &s->cledger, sizeof *s->ledger))
        return FM_ENOMEM;
    s->ledger[s->nledger++] = *w;
    return 0;
}

static int write_ops(fm_txn *t, const sim_wreq *q)
{
    char v[32];
    snprintf(v, sizeof v, "w%" PRIu32, q->widx);
    switch (q->op) {
    case 0:
        return fm_txn_set(t, q->rid, "title", FM_KIND_LWW, fm_value_str(v));
    case 1:
        return fm_txn_set(t, q->rid, "dose", FM_KIND_MV, fm_value_int((int64_t)q->widx));
    case 2:
        return fm_txn_incr(t, q->rid, "count", 1);
    default:
        snprintf(v, sizeof v, "t%" PRIu32, q->tag);
        return fm_txn_set_add(t, q->rid, "tags", fm_value_str(v));
    }
}

/* A write's random choices, drawn from the workload stream in one order whoever makes it. */
static void write_plan(fm_sim *s, uint32_t i, sim_wreq *q)
{
    sim_node *sn = &s->nodes[i];
    bool hot = fm_sim_rng_chance(&s->rng_work, s->cfg.conflict_rate);
    uint32_t pc = s->cfg.private_colls ? s->cfg.private_colls : s->n;
    /* A fork clone writes its original's private records: the same feeds, a second history. */
    *q = (sim_wreq){.node = i, .coll = hot ? 0 : 1 + sn->ident % pc, .t_us = s->now};
    coll_name(s, q->coll, q->cname);
    if (hot)
        snprintf(q->rid, sizeof q->rid, "h%" PRIu64,
                 fm_sim_rng_below(&s->rng_work, s->cfg.hot_records));
    else
        snprintf(q->rid, sizeof q->rid, "n%" PRIu32 ".%" PRIu64, sn->ident,
                 fm_sim_rng_below(&s->rng_work, 4));
    q->op = (uint32_t)fm_sim_rng_below(&s->rng_work, 4);
    if (q->op == 3)
        q->tag = (uint32_t)fm_sim_rng_below(&s->rng_work, 16);
    q->widx = s->writes_planned++;
    q->expect_refused = sn->fork_clone || sn->revoked_at_us <= s->now;
}

/* Makes a planned write on its node (between windows, or in its worker inside one). */
static void write_make(fm_sim *s, sim_wreq *q)
{
    sim_node *sn = &s->nodes[q->node];
    q->done = true;
    if (!sim_running(sn)) {
        q->rc = FM_ESTATE; /* down since it was planned: not made */
        return;
    }
    fm_txn *t;
    int rc = fm_txn_begin(sn->r, q->cname, &t);
    if (!rc) {
        rc = write_ops(t, q);
        if (rc)
            fm_txn_abort(t);
        else
            rc = fm_txn_commit(t);
    }
    sim_trace(s, TR_WRITE, q->node, (uint64_t)(int64_t)rc, NULL, q->op);
    sim_after_call(s, sn);
    q->seq = rc ? 0 : fm_sim_held_seq(s, q->node, q->cname, sn->dev);
    FM_ASSERT(rc || q->seq > 0);
    q->rc = rc;
}

/* Between windows: the outcome of a made write, into the ledger if acknowledged. */
static int write_settle(fm_sim *s, const sim_wreq *q)
{
    FM_ASSERT(q->done);
    if (q->rc) {
        s->writes_failed++;
        return q->rc;
    }
    sim_write w = {.node = q->node,
                   .coll = q->coll,
                   .seq = q->seq,
                   .t_us = q->t_us,
                   .nops = 1,
                   .expect_refused = q->expect_refused};
    int rc = ledger_add(s, &w);
    if (rc)
        sim_fail(s, rc);
    s->last_write_us = FM_MAX(s->last_write_us, q->t_us);
    s->converged_at = SIM_NEVER;
    return rc;
}

/* The writes the last window made, in plan order up to the first not made yet (every planned
 * write is due in the next window, so none should wait). Pending events name their plans by
 * index: the list only empties once all are settled. */
static void writes_settle(fm_sim *s)
{
    while (s->wsettled < s->nwreq && s->wreq[s->wsettled].done)
        write_settle(s, &s->wreq[s->wsettled++]);
    if (s->wsettled == s->nwreq)
        s->nwreq = s->wsettled = 0;
}

int fm_sim_write(fm_sim *s, uint32_t i)
{
    if (i >= s->n)
        return FM_EINVAL;
    if (!sim_running(&s->nodes[i]))
        return FM_ESTATE;
    sim_wreq q;
    write_plan(s, i, &q);
    write_make(s, &q);
    return write_settle(s, &q);
}

static uint64_t write_time(fm_sim *s, uint32_t k)
{
    double w = s->cfg.write_phase_s * 1e6 / s->cfg.writes;
    return (uint64_t)((k + fm_sim_rng_unit(&s->rng_work)) * w);
}

static void ev_write(fm_sim *s, uint32_t k)
{
    /* --writer: that node only; a write due while it is down is not made. Otherwise a uniformly
     * random running node; if the pick is down, the next running one. */
    uint32_t start =
        s->cfg.one_writer ? s->cfg.writer : (uint32_t)fm_sim_rng_below(&s->rng_work, s->n);
    for (uint32_t x = 0; x < (s->cfg.one_writer ? 1 : s->n); x++) {
        uint32_t i = (start + x) % s->n;
        if (!sim_running(&s->nodes[i]))
            continue;
        /* Made in the writer's worker, in parallel with other nodes' events: signing and
         * verifying ten thousand writes alone between windows was 4 % of a 1000-node run. */
        if (fm_grow((void **)&s->wreq, s->nwreq, &s->cwreq, sizeof *s->wreq)) {
            sim_fail(s, FM_ENOMEM);
            break;
        }
        write_plan(s, i, &s->wreq[s->nwreq]);
        sim_push(s, s->now, EV_WRITE_RUN, i, s->nwreq++, 0);
        break;
    }
    if (k + 1 < s->cfg.writes)
        sim_push(s, write_time(s, k + 1), EV_WRITE, 0, k + 1, 0);
}

static void ev_revoke(fm_sim *s, uint32_t idx)
{
    const fm_sim_pair *p = &s->cfg.revoke[idx];
    sim_node *holder = &s->nodes[0], *victim = &s->nodes[p->node];
    if (!holder->r) {
        sim_fail(s, FM_ESTATE);
        return;
    }
    char text[FM_MEMBER_TEXT_MAX];
    int rc = fm_replica_revoke(holder->r, s->authority, victim->dev, text, sizeof text);
    sim_trace(s, TR_REVOKE, 0, p->node, NULL, (size_t)(int64_t)rc);
    if (rc) {
        fprintf(stderr, "fieldmesh-sim: revoke failed: %s\n", fm_strerror(rc));
        sim_fail(s, rc);
        return;
    }
    for (uint32_t i = 0; i < s->n; i++)
        if (memcmp(s->nodes[i].dev, victim->dev, FM_ID_BYTES) == 0)
            s->nodes[i].revoked_at_us = s->now;
    if (sim_running(holder)) {
        fm_node_sync_now(holder->n); /* let the revocation out at once */
        sim_after_call(s, holder);
    }
}

/* ---- checks -------------------------------------------------------------------------------------
 */

static uint64_t node_ops(sim_node *sn)
{
    if (sn->ops_stale && sim_running(sn)) {
        sn->ops = sn->r->st.held;
        sn->ops_stale = false;
    }
    return sn->ops;
}

const uint8_t *sim_node_digest(sim_node *sn)
{
    if (sn->digest_stale && sim_running(sn)) {
        fm_node_digest(sn->n, sn->digest);
        sn->digest_stale = false;
    }
    return sn->digest;
}

static uint64_t spreadable_ops(const fm_sim *s)
{
    uint64_t n = 0;
    for (uint32_t k = 0; k < s->nledger; k++)
        n += s->ledger[k].expect_refused ? 0 : s->ledger[k].nops;
    return n;
}

static double coverage(fm_sim *s, uint64_t want)
{
    uint64_t have = 0, nodes = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        if (sn->excluded)
            continue;
        nodes++;
        if (sim_running(sn))
            have += FM_MIN(node_ops(sn), want);
    }
    return nodes && want ? (double)have / ((double)nodes * want) : 1.0;
}

static bool digests_agree(fm_sim *s)
{
    sim_components(s);
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        if (sn->excluded)
            continue;
        if (!sim_running(sn))
            return false;
        sim_node *root = &s->nodes[s->uf[i]];
        if (root != sn && memcmp(sim_node_digest(root), sim_node_digest(sn), FM_HASH_BYTES) != 0)
            return false;
    }
    return true;
}

static void ev_check(fm_sim *s)
{
    uint64_t want = spreadable_ops(s);
    double cov = coverage(s, want);
    uint32_t online = 0;
    for (uint32_t i = 0; i < s->n; i++)
        online += s->nodes[i].present;
    if (s->nsamples < FM_SIM_MAX_SAMPLES &&
        !fm_grow((void **)&s->samples, s->nsamples, &s->csamples, sizeof *s->samples))
        s->samples[s->nsamples++] = (sim_sample){s->now / 1000, cov, s->bytes, s->messages, online};
    /* Converged: everyone is back, and every component agrees. A later failing check or write
     * starts the wait again. */
    if (s->now >= s->settle_us && s->now >= s->last_write_us && digests_agree(s)) {
        if (s->converged_at == SIM_NEVER)
            s->converged_at = s->now;
        if (s->finishing) {
            s->stop = true;
            return;
        }
    } else {
        s->converged_at = SIM_NEVER;
    }
    sim_push(s, s->now + FM_SIM_CHECK_US, EV_CHECK, 0, 0, 0);
}

/* ---- events --------------------------------------------------------------------------------- */

static void ev_timer(fm_sim *s, sim_node *sn, uint64_t gen)
{
    if (gen != sn->timer_gen || !sim_running(sn))
        return;
    sn->timer_at = SIM_NEVER;
    uint64_t d = fm_node_next_deadline(sn->n);
    if (d != UINT64_MAX && vt_of(s, sn, d) <= sim_now(s)) {
        sim_trace(s, TR_TIMER, sn->idx, 0, NULL, 0);
        fm_node_tick(sn->n);
        sn->last_tick_us = sim_now(s);
    }
    sim_after_call(s, sn);
}

static void schedule_churn(fm_sim *s, sim_node *sn)
{
    double period = s->cfg.churn_period_s * 1e6;
    double mean = sn->out ? s->cfg.churn * period : (1 - s->cfg.churn) * period;
    uint64_t dt = (uint64_t)fm_sim_rng_exp(&s->rng_churn, mean) + 1;
    sim_push(s, s->now + dt, EV_CHURN, sn->idx, 0, 0);
}

static void ev_phase_end(fm_sim *s)
{
    s->phase_over = true;
    for (uint32_t i = 0; i < s->n; i++) {
        s->nodes[i].out = false;
        sim_topo_presence(s, i);
    }
}

/* A node's own event, inside a window. */
static void dispatch_node(fm_sim *s, const fm_sim_event *e)
{
    if (e->kind == EV_TIMER)
        ev_timer(s, &s->nodes[e->node], e->a);
    else if (e->kind == EV_WRITE_RUN)
        write_make(s, &s->wreq[e->a]);
    else
        sim_net_event(s, e);
}

/* Everything else, alone between windows. */
static void dispatch(fm_sim *s, const fm_sim_event *e)
{
    sim_node *sn = e->node < s->n ? &s->nodes[e->node] : NULL;
    s->events++;
    switch (e->kind) {
    case EV_WRITE:
        ev_write(s, (uint32_t)e->a);
        break;
    case EV_ADVERT:
        sim_topo_advert(s, e->node);
        sim_push(s,
                 s->now + FM_SIM_ADVERT_US * 9 / 10 +
                     fm_sim_rng_below(&s->rng_churn, FM_SIM_ADVERT_US / 5 + 1),
                 EV_ADVERT, e->node, 0, 0);
        break;
    case EV_CHURN:
        if (s->phase_over)
            break;
        sn->out = !sn->out;
        sim_topo_presence(s, e->node);
        schedule_churn(s, sn);
        break;
    case EV_CRASH:
        node_crash(s, sn);
        break;
    case EV_RESTART:
        node_restart(s, sn);
        break;
    case EV_PART:
        sim_topo_partition(s, (uint32_t)e->a, e->b != 0);
        break;
    case EV_MOVE:
        sim_topo_move(s);
        sim_push(s, s->now + FM_SIM_MOVE_US, EV_MOVE, 0, 0, 0);
        break;
    case EV_CHECK:
        ev_check(s);
        break;
    case EV_OFFLINE:
        if (e->b)
            sn->offline++;
        else if (sn->offline)
            sn->offline--;
        sim_topo_presence(s, e->node);
        break;
    case EV_REVOKE:
        ev_revoke(s, (uint32_t)e->a);
        break;
    case EV_PHASE_END:
        ev_phase_end(s);
        break;
    default:
        FM_ASSERT(!"unknown event");
    }
}

/* ---- windows -------------------------------------------------------------------------------- */

/* Worker threads beyond the calling one, started at the first window that has them work. */
typedef struct sim_pool {
    pthread_t th[SIM_MAX_THREADS];
    struct sim_thread {
        fm_sim *s;
        uint32_t idx;
    } arg[SIM_MAX_THREADS];
    uint32_t started;
    uint64_t done_us[SIM_MAX_THREADS]; /* when each thread ran out of work in this window */
    pthread_barrier_t go, done;
    bool quit;
    /* The workers, the most work first: sort keys, (cap - load) << ORDER_IDX_BITS | worker
     * (order_workers); worker_at reads one. */
    uint64_t *order;
    uint8_t taken[]; /* per worker (shard of nodes): claimed in this window */
} sim_pool;

/* Runs the worker's events before its window's end. */
static void worker_run(sim_worker *w)
{
    fm_sim *s = w->s;
    cur_worker = w;
    const fm_sim_event *top;
    while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED) && (top = fm_sim_heap_top(&w->heap)) &&
           top->t < w->until) {
        fm_sim_event e;
        fm_sim_heap_pop(&w->heap, &e);
        FM_ASSERT(e.t >= w->now);
        w->now = w->last_t = e.t;
        w->events++;
        dispatch_node(s, &e);
    }
    cur_worker = NULL;
}

/* Runs the setup step on the worker's nodes in order, up to the first that fails. */
static void job_run(sim_worker *w)
{
    fm_sim *s = w->s;
    cur_worker = w;
    w->now = s->now;
    for (uint32_t i = w->idx; i < s->n && !w->job_rc; i += s->nworkers) {
        w->job_rc = s->job(s, i, s->job_arg);
        w->job_node = i;
    }
    cur_worker = NULL;
}

static void run_one(fm_sim *s, uint32_t k)
{
    if (s->job)
        job_run(&s->w[k]);
    else
        worker_run(&s->w[k]);
}

enum { ORDER_IDX_BITS = 24 };
_Static_assert(SIM_MAX_THREADS *SIM_WORKERS_PER_THREAD < 1u << ORDER_IDX_BITS, "index fits");

/* The worker i-th in the window's order. */
static uint32_t worker_at(const sim_pool *p, uint32_t i)
{
    return (uint32_t)(p->order[i] & ((1u << ORDER_IDX_BITS) - 1));
}

static void run_claimed(fm_sim *s, uint32_t k)
{
    if (!__atomic_exchange_n(&s->pool->taken[k], 1, __ATOMIC_ACQ_REL))
        run_one(s, k);
}

/* Thread t runs its own workers (t, t + nthreads, ...) first, the most work first, and then
 * takes over whichever others are still unclaimed, the least work first. A shard thus stays on
 * one thread while the load is even (its memory in that thread's caches and malloc arena: one
 * shared queue of all workers cost 1000 nodes 7 % more CPU), what ends a window is small, and no
 * thread idles while another has a queue. The outcome does not depend on which thread runs a
 * worker. */
static void run_workers(fm_sim *s, uint32_t t)
{
    const sim_pool *p = s->pool;
    for (uint32_t i = 0; i < s->nworkers; i++)
        if (worker_at(p, i) % s->nthreads == t)
            run_claimed(s, worker_at(p, i));
    for (uint32_t i = s->nworkers; i-- > 0;)
        run_claimed(s, worker_at(p, i));
}

static void *thread_main(void *arg)
{
    const struct sim_thread *th = arg;
    fm_sim *s = th->s;
    sim_pool *p = s->pool;
    for (;;) {
        pthread_barrier_wait(&p->go);
        if (p->quit) {
            fm_buf_spares_release();
            return NULL;
        }
        run_workers(s, th->idx);
        p->done_us[th->idx] = fm_sim_wall_us();
        pthread_barrier_wait(&p->done);
    }
}

static int pool_start(fm_sim *s)
{
    sim_pool *p = calloc(1, sizeof *p + s->nworkers);
    if (!p)
        return FM_ENOMEM;
    p->order = calloc(s->nworkers, sizeof *p->order);
    bool go = false;
    if (!p->order || !(go = !pthread_barrier_init(&p->go, NULL, s->nthreads)) ||
        pthread_barrier_init(&p->done, NULL, s->nthreads)) {
        if (go)
            pthread_barrier_destroy(&p->go);
        free(p->order), free(p);
        return FM_ENOMEM;
    }
    for (uint32_t k = 0; k < s->nworkers; k++)
        p->order[k] = k;
    s->pool = p;
    for (uint32_t k = 1; k < s->nthreads; k++) {
        p->arg[k] = (struct sim_thread){.s = s, .idx = k};
        if (pthread_create(&p->th[k], NULL, thread_main, &p->arg[k]))
            break; /* fewer threads: the calling one runs every worker itself */
        p->started = k;
    }
    return 0;
}

static void pool_stop(fm_sim *s)
{
    sim_pool *p = s->pool;
    if (!p)
        return;
    if (p->started + 1 == s->nthreads) {
        p->quit = true;
        pthread_barrier_wait(&p->go);
        for (uint32_t k = 1; k < s->nthreads; k++)
            pthread_join(p->th[k], NULL);
    } else {
        /* A thread failed to start: the barriers never had all their parties. */
        for (uint32_t k = 1; k <= p->started; k++)
            pthread_cancel(p->th[k]), pthread_join(p->th[k], NULL);
    }
    pthread_barrier_destroy(&p->go);
    pthread_barrier_destroy(&p->done);
    free(p->order);
    free(p);
    s->pool = NULL;
}

/* The pool to run a step on when asked for threads, started at first use; NULL: the calling
 * thread runs every worker (one CPU, or a thread that failed to start). */
static sim_pool *pool_get(fm_sim *s, bool threads)
{
    if (!threads || s->nthreads < 2)
        return NULL;
    if (!s->pool && pool_start(s)) {
        sim_fail(s, FM_ENOMEM);
        return NULL;
    }
    return s->pool->started + 1 == s->nthreads ? s->pool : NULL;
}

/* Runs every worker (its events, or s->job): on the threads when asked and they all started,
 * otherwise on the calling one. */
static void run_all(fm_sim *s, bool threads)
{
    sim_pool *p = pool_get(s, threads);
    if (p) {
        memset(p->taken, 0, s->nworkers);
        pthread_barrier_wait(&p->go);
        run_workers(s, 0);
        p->done_us[0] = fm_sim_wall_us();
        pthread_barrier_wait(&p->done);
        /* A window's waits (setup steps are not windows). The barrier orders the threads'
         * writes before these reads. */
        if (!s->job) {
            uint64_t end = fm_sim_wall_us();
            for (uint32_t t = 0; t < s->nthreads; t++)
                s->wait_us += end > p->done_us[t] ? end - p->done_us[t] : 0;
            s->windows++;
        }
    } else {
        for (uint32_t k = 0; k < s->nworkers; k++)
            run_one(s, k);
    }
}

/* A setup step on every node, each on its worker's own thread while the load is even, so that
 * what a node allocates sits in the arena of the thread that runs it later. The result is that
 * of the lowest-numbered node that failed, as if the nodes had been set up one after another. */
static int run_nodes(fm_sim *s, int (*job)(fm_sim *s, uint32_t node, void *arg), void *arg)
{
    for (uint32_t k = 0; k < s->nworkers; k++)
        s->w[k].job_rc = 0;
    s->job = job;
    s->job_arg = arg;
    run_all(s, s->n > 64);
    s->job = NULL;
    int rc = 0;
    uint32_t first = UINT32_MAX;
    for (uint32_t k = 0; k < s->nworkers; k++)
        if (s->w[k].job_rc && s->w[k].job_node < first)
            first = s->w[k].job_node, rc = s->w[k].job_rc;
    return rc ? rc : sim_error(s);
}

/* Every worker runs its events before until; with threads, at once. The outcome is the same
 * either way (sim_int.h), so a small window is not worth waking threads for. */
/* An event's work, roughly: a segment's bytes, or a fixed cost (what a node does with 64 bytes
 * of batches is about what a timer or a connection event costs it). */
static uint64_t event_weight(const fm_sim_event *e)
{
    return 64 + (e->kind == EV_DATA ? e->a >> 32 : 0);
}

static int key_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The window's workers, the most work first (run_workers); equal loads in worker order. */
static void order_workers(fm_sim *s, uint64_t until)
{
    const uint64_t cap = (1ull << (64 - ORDER_IDX_BITS)) - 1;
    sim_pool *p = s->pool;
    for (uint32_t k = 0; k < s->nworkers; k++) {
        uint64_t load = FM_MIN(fm_sim_heap_weigh(&s->w[k].heap, until, event_weight), cap);
        p->order[k] = (cap - load) << ORDER_IDX_BITS | k;
    }
    qsort(p->order, s->nworkers, sizeof *p->order, key_cmp);
}

static void run_window(fm_sim *s, uint64_t until, uint32_t busy)
{
    for (uint32_t k = 0; k < s->nworkers; k++)
        s->w[k].until = until;
    bool threads = busy > 64;
    if (pool_get(s, threads))
        order_workers(s, until);
    run_all(s, threads);
    for (uint32_t k = 0; k < s->nworkers; k++)
        s->now = FM_MAX(s->now, s->w[k].last_t);
}

int fm_sim_run_until(fm_sim *s, uint64_t t_ms)
{
    uint64_t until = t_ms * 1000;
    sim_net_flush(s); /* what nodes did when a test called them directly */
    while (!sim_error(s) && !s->stop) {
        const fm_sim_event *g = fm_sim_heap_top(&s->heap);
        uint64_t tg = g ? g->t : SIM_NEVER, tn = SIM_NEVER;
        uint32_t busy = 0;
        for (uint32_t k = 0; k < s->nworkers; k++) {
            const fm_sim_event *e = fm_sim_heap_top(&s->w[k].heap);
            tn = e ? FM_MIN(tn, e->t) : tn;
            busy += s->w[k].heap.n;
        }
        if (FM_MIN(tg, tn) > until)
            break;
        if (tg <= tn) {
            fm_sim_event e;
            fm_sim_heap_pop(&s->heap, &e);
            FM_ASSERT(e.t >= s->now);
            s->now = e.t;
            dispatch(s, &e);
        } else {
            uint64_t end = FM_MIN(FM_MIN(tn + s->window_us, tg), until + 1);
            run_window(s, end, busy);
            writes_settle(s);
        }
        sim_net_flush(s);
        if (!s->cfg.progress)
            continue;
        uint64_t events = s->events;
        for (uint32_t k = 0; k < s->nworkers; k++)
            events += s->w[k].events;
        if (events >> 20 != s->progress_mark) {
            s->progress_mark = events >> 20;
            fprintf(stderr, "fieldmesh-sim: t=%.3f s, %" PRIu64 " events, %" PRIu32 " writes\n",
                    s->now / 1e6, events, s->nledger);
        }
    }
    if (!s->stop && until > s->now)
        s->now = until;
    return sim_error(s);
}

/* ---- building the mesh ---------------------------------------------------------------------- */

static void seed_bytes(uint64_t seed, const char *label, uint32_t idx, uint8_t out[32])
{
    sim_stream st;
    stream_init(&st, seed, label, idx);
    memcpy(out, st.key, 32);
    sodium_memzero(&st, sizeof st);
}

static uint32_t identity_of(const fm_sim_config *c, uint32_t i)
{
    for (uint32_t k = 0; k < c->nfork; k++)
        if (c->fork[k].node == i)
            return c->fork[k].other;
    return i;
}

/* A node's identity, its store (held open, so that a crash keeps it) and its replica. */
static int node_init(fm_sim *s, uint32_t i, void *arg)
{
    (void)arg;
    const fm_sim_config *c = &s->cfg;
    sim_node *sn = &s->nodes[i];
    bool revoked = false;
    for (uint32_t x = 0; x < c->nrevoke; x++)
        revoked |= identity_of(c, c->revoke[x].node) == identity_of(c, i);
    sn->excluded = sn->subscribe_none || sn->fork_clone || revoked;
    sn->ident = identity_of(c, i);
    uint8_t seed[32];
    seed_bytes(c->seed, "fmsim-identity", identity_of(c, i), seed);
    int rc = fm_identity_from_seed(seed, &sn->id);
    sodium_memzero(seed, sizeof seed);
    if (rc)
        return rc;
    fm_identity_public(sn->id, sn->dev);
    if ((rc = fm_store_open(sn->uri, &sn->store)))
        return rc;
    return node_start(s, sn);
}

static int nodes_init(fm_sim *s)
{
    const fm_sim_config *c = &s->cfg;
    fm_sim_rng skew;
    fm_sim_rng_seed(&skew, c->seed, 7);
    /* --skew-nodes K: a random K of the nodes, chosen by a partial shuffle. */
    uint32_t *order = malloc((size_t)s->n * sizeof *order);
    if (!order)
        return FM_ENOMEM;
    for (uint32_t i = 0; i < s->n; i++)
        order[i] = i;
    uint32_t k = c->skew_nodes && c->skew_nodes < s->n ? c->skew_nodes : s->n;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t j = i + (uint32_t)fm_sim_rng_below(&skew, s->n - i);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        sn->sim = s;
        sn->idx = i;
        snprintf(sn->addr, sizeof sn->addr, "sim:%" PRIu32, i);
        stream_init(&sn->rs, c->seed, "fmsim-node-random", i);
        sn->env = (fm_env){FM_ENV_VERSION, sn, node_now_ms, node_random};
        sn->io = (fm_node_io){sn, sim_io_send, sim_io_close, sim_io_connect,
                              c->verbose ? node_log : NULL};
        sn->revoked_at_us = SIM_NEVER;
        sn->timer_at = SIM_NEVER;
        sn->last_tick_us = SIM_NEVER;
        sn->ops_stale = sn->digest_stale = true;
        sn->crashed = true; /* until started */
        /* An in-memory database on one connection, the node's store (sn->store), which the
         * simulator keeps open across the node's crashes. Pages live once, in its cache. */
        snprintf(sn->uri, sizeof sn->uri, "file:fmsim-%s-%" PRIu32 "?mode=memory", s->tag, i);
    }
    for (uint32_t x = 0; x < k && c->skew_max_ms; x++) {
        uint64_t span = 2 * c->skew_max_ms + 1;
        s->nodes[order[x]].skew_ms =
            (int64_t)fm_sim_rng_below(&skew, span) - (int64_t)c->skew_max_ms;
    }
    free(order);
    for (uint32_t x = 0; x < c->nsubscribe_none; x++)
        s->nodes[c->subscribe_none[x]].subscribe_none = true;
    for (uint32_t x = 0; x < c->nfork; x++)
        s->nodes[c->fork[x].node].fork_clone = true;
    return run_nodes(s, node_init, NULL);
}

typedef struct dev_order {
    uint8_t dev[FM_ID_BYTES];
    uint32_t node;
} dev_order;

/* qsort order of 32-byte keys (device ids, hashes) at the start of each element. */
_Static_assert(FM_ID_BYTES == FM_HASH_BYTES, "ids and hashes compare alike");
static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, FM_ID_BYTES);
}

/* Certificates for every node, each joins, then every node installs them all in one call. They
 * go in device order: a membership view keeps its certificates sorted, and a thousand inserted
 * in random order made every node's import move half its array each time. */
typedef struct admit_ctx {
    char (*text)[FM_MEMBER_TEXT_MAX];
    const fm_bytes *recs;
    uint32_t nrecs;
} admit_ctx;

/* A node joins the mesh with its own certificate and installs everyone's. */
static int node_admit(fm_sim *s, uint32_t i, void *arg)
{
    const admit_ctx *x = arg;
    int rc = fm_replica_join(s->nodes[i].r, x->text[identity_of(&s->cfg, i)]);
    int got = rc ? rc : fm__replica_import_members(s->nodes[i].r, x->recs, x->nrecs);
    return got < 0 ? got : 0;
}

static int mesh_init(fm_sim *s)
{
    uint8_t seed[32];
    seed_bytes(s->cfg.seed, "fmsim-authority", 0, seed);
    int rc = fm_identity_from_seed(seed, &s->authority);
    sodium_memzero(seed, sizeof seed);
    if (rc)
        return rc;
    stream_init(&s->auth_rs, s->cfg.seed, "fmsim-authority-random", 0);
    s->auth_env = (fm_env){FM_ENV_VERSION, s, auth_now_ms, auth_random};
    fm_bytes *recs = calloc(s->n, sizeof *recs);
    uint8_t *enc = malloc((size_t)s->n * FM_MAX_CERT_BYTES);
    char(*text)[FM_MEMBER_TEXT_MAX] = malloc((size_t)s->n * sizeof *text);
    dev_order *order = malloc((size_t)s->n * sizeof *order);
    uint32_t nrecs = 0, nids = 0;
    rc = recs && enc && text && order ? 0 : FM_ENOMEM;
    for (uint32_t i = 0; !rc && i < s->n; i++) {
        if (identity_of(&s->cfg, i) != i)
            continue; /* a fork clone shares its original's identity */
        memcpy(order[nids].dev, s->nodes[i].dev, FM_ID_BYTES);
        order[nids++].node = i;
    }
    if (!rc)
        qsort(order, nids, sizeof *order, cmp_key);
    for (uint32_t x = 0; !rc && x < nids; x++) {
        uint32_t i = order[x].node;
        char name[32];
        snprintf(name, sizeof name, "sim%" PRIu32, i);
        rc = fm_mesh_admit(&s->auth_env, s->authority, s->nodes[i].dev, name, 36525, 0, text[i],
                           sizeof text[i]);
        fm_cert cert;
        size_t len = 0;
        if (!rc)
            rc = fm_cert_from_text(text[i], &cert);
        if (!rc)
            rc = fm_cert_encode(&cert, enc + (size_t)nrecs * FM_MAX_CERT_BYTES, &len);
        recs[nrecs].data = enc + (size_t)nrecs * FM_MAX_CERT_BYTES;
        recs[nrecs].len = len;
        nrecs++;
    }
    admit_ctx x = {.text = text, .recs = recs, .nrecs = nrecs};
    if (!rc)
        rc = run_nodes(s, node_admit, &x);
    free(recs);
    free(enc);
    free(text);
    free(order);
    return rc;
}

static void schedule(fm_sim *s)
{
    const fm_sim_config *c = &s->cfg;
    s->write_end_us = (uint64_t)(c->write_phase_s * 1e6);
    s->settle_us = s->write_end_us;
    sim_push(s, s->write_end_us, EV_PHASE_END, 0, 0, 0);
    if (c->writes)
        sim_push(s, write_time(s, 0), EV_WRITE, 0, 0, 0);
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        sim_push(s, fm_sim_rng_below(&s->rng_churn, FM_SIM_ADVERT_US), EV_ADVERT, i, 0, 0);
        if (c->churn > 0) {
            sn->out = fm_sim_rng_chance(&s->rng_churn, c->churn);
            schedule_churn(s, sn);
        }
        if (c->crash > 0 && fm_sim_rng_chance(&s->rng_churn, c->crash)) {
            uint64_t t = fm_sim_rng_below(&s->rng_churn, s->write_end_us + 1);
            sim_push(s, t, EV_CRASH, i, 0, 0);
            s->settle_us = FM_MAX(s->settle_us, t + 5000000);
        }
    }
    for (uint32_t p = 0; p < c->npart; p++) {
        sim_push(s, c->part[p].start_ms * 1000, EV_PART, 0, p, 1);
        sim_push(s, c->part[p].end_ms * 1000, EV_PART, 0, p, 0);
        s->settle_us = FM_MAX(s->settle_us, c->part[p].end_ms * 1000);
    }
    for (uint32_t x = 0; x < c->noffline; x++) {
        const fm_sim_window *w = &c->offline[x];
        if (w->start_ms == 0)
            s->nodes[w->node].offline++; /* out from the first instant */
        else
            sim_push(s, w->start_ms * 1000, EV_OFFLINE, w->node, 0, 1);
        sim_push(s, w->end_ms * 1000, EV_OFFLINE, w->node, 0, 0);
        s->settle_us = FM_MAX(s->settle_us, w->end_ms * 1000);
    }
    for (uint32_t x = 0; x < c->nrevoke; x++)
        sim_push(s, c->revoke[x].at_ms * 1000, EV_REVOKE, 0, x, 0);
    if (c->topology == FM_SIM_TOPO_RGG)
        sim_push(s, FM_SIM_MOVE_US, EV_MOVE, 0, 0, 0);
    sim_push(s, FM_SIM_CHECK_US, EV_CHECK, 0, 0, 0);
}

static int check_config(const fm_sim_config *c)
{
    if (c->nodes < 1 || c->nodes > FM_SIM_MAX_NODES || c->write_phase_s <= 0 ||
        c->duration_s <= 0 || c->link.mtu == 0 || c->link.bits_per_s == 0 ||
        c->skew_max_ms > 50 * SIM_YEAR_MS || c->hot_records == 0 ||
        (c->one_writer && c->writer >= c->nodes))
        return FM_EINVAL;
    for (uint32_t x = 0; x < c->nsubscribe_none; x++)
        if (c->subscribe_none[x] >= c->nodes)
            return FM_EINVAL;
    for (uint32_t x = 0; x < c->nfork; x++)
        if (c->fork[x].node >= c->nodes || c->fork[x].other >= c->nodes ||
            c->fork[x].node == c->fork[x].other ||
            identity_of(c, c->fork[x].other) != c->fork[x].other)
            return FM_EINVAL;
    for (uint32_t x = 0; x < c->nrevoke; x++)
        if (c->revoke[x].node >= c->nodes || identity_of(c, c->revoke[x].node) == identity_of(c, 0))
            return FM_EINVAL;
    for (uint32_t x = 0; x < c->noffline; x++)
        if (c->offline[x].node >= c->nodes || c->offline[x].end_ms < c->offline[x].start_ms)
            return FM_EINVAL;
    for (uint32_t p = 0; p < c->npart; p++)
        if (c->part[p].groups < 2 || c->part[p].end_ms < c->part[p].start_ms)
            return FM_EINVAL;
    return 0;
}

int fm_sim_open(const fm_sim_config *cfg, fm_sim **out)
{
    int rc = check_config(cfg);
    if (rc)
        return rc;
    /* sqlite counts every allocation under one global mutex, which the worker threads then fight
     * over (5-8 % of a run's wall time). Only possible before sqlite is first used; later calls
     * fail harmlessly and keep the count. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (sodium_init() < 0)
        return FM_ENOMEM;
    fm_sim *s = calloc(1, sizeof *s);
    if (!s)
        return FM_ENOMEM;
    s->wall_start = fm_sim_wall_ms();
    s->cfg = *cfg;
    s->n = cfg->nodes;
    s->link = cfg->link;
    s->loss = cfg->loss >= 0 ? cfg->loss : cfg->link.loss;
    s->rto_us = 3 * s->link.latency_us + 200000;
    s->connect_timeout_us = 1000000 + 2 * s->link.latency_us;
    s->chunk_cap = FM_MAX((uint32_t)(SIM_CHUNK_BYTES - sizeof(sim_chunk)), s->link.mtu);
    s->converged_at = SIM_NEVER;
    fm_sim_heap_init(&s->heap);
    fm_sim_rng_seed(&s->rng_topo, cfg->seed, 1);
    fm_sim_rng_seed(&s->rng_link, cfg->seed, 2);
    fm_sim_rng_seed(&s->rng_work, cfg->seed, 3);
    fm_sim_rng_seed(&s->rng_churn, cfg->seed, 4);
    fm_sim_rng_seed(&s->rng_move, cfg->seed, 5);
    /* The run is the same for any number of threads and workers (shards of nodes): a thread per
     * CPU, and several workers per thread so that one slow shard does not hold the window. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    s->nthreads = cfg->threads ? cfg->threads : cpus > 0 ? (uint32_t)cpus : 1;
    s->nthreads = FM_MAX(1u, FM_MIN(s->nthreads, (uint32_t)SIM_MAX_THREADS));
    s->nworkers = FM_MAX(1u, FM_MIN(SIM_WORKERS_PER_THREAD * s->nthreads, s->n));
    /* Nothing reaches another node sooner than this (net.c). */
    s->window_us =
        s->link.latency_us > s->link.jitter_us ? s->link.latency_us - s->link.jitter_us : 1;
    /* Names for the nodes' in-memory stores: labels only, as each is private to its connection. */
    snprintf(s->tag, sizeof s->tag, "%" PRIx64 "-%" PRIxPTR, cfg->seed, (uintptr_t)s);
    s->nodes = calloc(s->n, sizeof *s->nodes);
    s->uf = calloc(s->n, sizeof *s->uf);
    s->w = calloc(s->nworkers, sizeof *s->w);
    if (!s->nodes || !s->uf || !s->w) {
        rc = FM_ENOMEM;
        goto fail;
    }
    /* A signature cache per worker over one shared by all: verifying is the same whoever did it
     * first, and a worker takes the shared cache's lock only on its first sight of a hash. */
    uint64_t want = (uint64_t)cfg->writes + cfg->nodes + 1024;
    uint32_t entries =
        (uint32_t)FM_MIN((uint64_t)FM_SIGCACHE_MAX_ENTRIES, FM_MAX(1ull << 16, 4 * want));
    /* A worker's own holds what its nodes saw (their misses go to the shared one): there are
     * many workers, so a smaller table each. */
    uint32_t own = (uint32_t)FM_MIN((uint64_t)entries, FM_MAX(1ull << 12, 2 * want));
    if ((rc = fm_sigcache_new_shared(entries, &s->sigcache)))
        goto fail;
    for (uint32_t k = 0; k < s->nworkers; k++) {
        sim_worker *w = &s->w[k];
        w->s = s;
        w->idx = k;
        fm_sim_heap_init(&w->heap);
        fm_buf_init(&w->opdata);
        if ((rc = fm_sigcache_new(own, &w->sigcache)))
            goto fail;
        fm_sigcache_set_parent(w->sigcache, s->sigcache);
    }
    for (uint32_t i = 0; i < s->n; i++) {
        s->nodes[i].worker = i % s->nworkers;
        if (!(s->nodes[i].trace = malloc(sizeof *s->nodes[i].trace))) {
            rc = FM_ENOMEM;
            goto fail;
        }
        crypto_generichash_init(s->nodes[i].trace, (const uint8_t *)"fieldmesh-sim-trace", 19,
                                FM_HASH_BYTES);
    }
    if ((rc = nodes_init(s)) || (rc = mesh_init(s)) || (rc = sim_topo_build(s)))
        goto fail;
    schedule(s);
    rc = run_nodes(s, node_open_first, NULL);
    for (uint32_t i = 0; !rc && i < s->n; i++)
        sim_topo_presence(s, i);
    if (!rc)
        sim_net_flush(s);
    if (rc || (rc = s->error))
        goto fail;
    s->setup_wall_ms = fm_sim_wall_ms() - s->wall_start;
    *out = s;
    return 0;
fail:
    fm_sim_close(s);
    return rc;
}

void fm_sim_close(fm_sim *s)
{
    if (!s)
        return;
    pool_stop(s);
    for (uint32_t i = 0; s->nodes && i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        sn->crashed = true;
        if (sn->n)
            fm_node_close(sn->n);
        sn->n = NULL;
    }
    for (uint32_t i = 0; s->nodes && i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        fm_replica_close(sn->r);
        fm_identity_free(sn->id);
        fm_store_close(sn->store);
        free(sn->conns);
        free(sn->trace);
    }
    sim_net_free(s);
    sim_topo_free(s);
    for (uint32_t k = 0; s->w && k < s->nworkers; k++) {
        fm_sim_heap_free(&s->w[k].heap);
        fm_buf_free(&s->w[k].opdata);
        free(s->w[k].ops);
        fm_sigcache_free(s->w[k].sigcache);
    }
    free(s->w);
    fm_sigcache_free(s->sigcache);
    fm_identity_free(s->authority);
    fm_sim_heap_free(&s->heap);
    free(s->nodes);
    free(s->uf);
    free(s->ledger);
    free(s->wreq);
    free(s->samples);
    sodium_memzero(&s->auth_rs, sizeof s->auth_rs);
    free(s);
    fm_buf_spares_release(); /* the blocks the run left with this thread */
}

/* ---- the end of a run ---------------------------------------------------------------------- */

static int cmp_write(const void *a, const void *b)
{
    const sim_write *x = a, *y = b;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    if (x->coll != y->coll)
        return x->coll < y->coll ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Lost: an acknowledged write some node of its author's component (or the author) lacks.
 * Refused-but-spread: a write expected to be refused (revoked author) held by another node. */
static void count_lost(fm_sim *s, fm_sim_result *r, const uint32_t *members, const uint32_t *mstart)
{
    sim_write *w = malloc(((size_t)s->nledger + 1) * sizeof *w);
    if (!w) {
        sim_fail(s, FM_ENOMEM);
        return;
    }
    memcpy(w, s->ledger, (size_t)s->nledger * sizeof *w);
    qsort(w, s->nledger, sizeof *w, cmp_write);
    for (uint32_t g = 0; g < s->nledger;) {
        uint32_t e = g;
        while (e < s->nledger && w[e].node == w[g].node && w[e].coll == w[g].coll)
            e++;
        uint32_t a = w[g].node;
        char cname[24];
        coll_name(s, w[g].coll, cname);
        const uint8_t *dev = s->nodes[a].dev;
        if (s->nodes[a].fork_clone) {
            g = e;
            continue; /* its refusal shows as a fork count and equal hashes, not by seq */
        }
        uint64_t held = fm_sim_held_seq(s, a, cname, dev);
        uint64_t spread = 0;
        if (!s->nodes[a].excluded) {
            uint32_t root = s->uf[a];
            for (uint32_t k = mstart[root]; k < mstart[root + 1]; k++)
                held = FM_MIN(held, fm_sim_held_seq(s, members[k], cname, dev));
        } else {
            for (uint32_t v = 0; v < s->n; v++)
                if (v != a && !s->nodes[v].excluded)
                    spread = FM_MAX(spread, fm_sim_held_seq(s, v, cname, dev));
        }
        for (uint32_t k = g; k < e; k++) {
            if (w[k].expect_refused)
                r->refused_spread += w[k].seq <= spread;
            else
                r->lost_writes += w[k].seq > held;
        }
        g = e;
    }
    free(w);
}

static void final_hashes(fm_sim *s, fm_sim_result *r)
{
    uint8_t(*h)[FM_HASH_BYTES] = calloc((size_t)s->n + 1, FM_HASH_BYTES);
    uint8_t(*sorted)[FM_HASH_BYTES] = calloc((size_t)s->n + 1, FM_HASH_BYTES);
    if (!h || !sorted) {
        free(h), free(sorted);
        sim_fail(s, FM_ENOMEM);
        return;
    }
    uint32_t k = 0;
    bool same = true;
    r->min_ops = r->conflicts_min = r->forked_min = UINT64_MAX;
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        if (sn->excluded)
            continue;
        fm_status st;
        if (!sim_running(sn) || fm_replica_status(sn->r, &st) != 0) {
            same = false;
            continue;
        }
        memcpy(h[i], st.state_hash, FM_HASH_BYTES);
        memcpy(sorted[k++], st.state_hash, FM_HASH_BYTES);
        r->min_ops = FM_MIN(r->min_ops, st.ops);
        r->max_ops = FM_MAX(r->max_ops, st.ops);
        r->conflicts_min = FM_MIN(r->conflicts_min, st.conflicts);
        r->conflicts_max = FM_MAX(r->conflicts_max, st.conflicts);
        r->forked_min = FM_MIN(r->forked_min, st.forked_authors);
        r->forked_max = FM_MAX(r->forked_max, st.forked_authors);
        if (memcmp(h[i], h[s->uf[i]], FM_HASH_BYTES) != 0)
            same = false;
    }
    if (!k)
        r->min_ops = r->conflicts_min = r->forked_min = 0;
    qsort(sorted, k, FM_HASH_BYTES, cmp_key);
    for (uint32_t x = 0; x < k; x++)
        r->distinct_state_hashes += x == 0 || memcmp(sorted[x], sorted[x - 1], FM_HASH_BYTES);
    r->checked_nodes = k;
    r->converged = same && !s->error;
    free(h);
    free(sorted);
}

static void collect_stats(fm_sim *s, fm_sim_result *r)
{
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        fm_node_stats st = sn->acc, cur;
        if (sn->n) {
            fm_node_stats_get(sn->n, &cur);
            stats_add(&st, &cur);
        }
        r->sessions_ok += st.sessions_ok;
        r->sessions_failed += st.sessions_failed;
        r->batches_in += st.batches_in;
        r->batches_out += st.batches_out;
        r->batches_dup += st.batches_dup;
        r->batches_refused += st.batches_refused;
        r->frames += st.frames_out;
        r->ihave += st.ihave_out;
        r->prunes += st.prunes_out;
        r->grafts += st.grafts_out;
        r->covered += st.push_covered;
        r->deferred += st.vectors_deferred;
    }
}

int fm_sim_finish(fm_sim *s, fm_sim_result *r)
{
    FM_ASSERT(!s->finished);
    s->finished = true;
    memset(r, 0, sizeof *r);
    s->finishing = true;
    fm_sim_run_until(s, (uint64_t)(s->cfg.duration_s * 1000));
    /* Components of the final up-link graph, and their members grouped by root. */
    r->components = sim_components(s);
    uint32_t *mstart = calloc((size_t)s->n + 2, sizeof *mstart);
    uint32_t *members = calloc((size_t)s->n + 1, sizeof *members);
    if (!mstart || !members) {
        sim_fail(s, FM_ENOMEM);
    } else {
        for (uint32_t i = 0; i < s->n; i++)
            mstart[s->uf[i] + 1] += !s->nodes[i].excluded;
        for (uint32_t i = 0; i < s->n; i++)
            mstart[i + 1] += mstart[i];
        uint32_t *pos = calloc((size_t)s->n + 1, sizeof *pos);
        if (!pos) {
            sim_fail(s, FM_ENOMEM);
        } else {
            memcpy(pos, mstart, (size_t)s->n * sizeof *pos);
            for (uint32_t i = 0; i < s->n; i++)
                if (!s->nodes[i].excluded)
                    members[pos[s->uf[i]]++] = i;
            free(pos);
            count_lost(s, r, members, mstart);
        }
    }
    free(mstart);
    free(members);
    final_hashes(s, r);
    collect_stats(s, r);
    uint64_t want = spreadable_ops(s);
    r->coverage = coverage(s, want);
    r->end_ms = s->now / 1000;
    r->last_write_ms = s->last_write_us / 1000;
    r->settle_ms = s->settle_us / 1000;
    r->convergence_ms = s->converged_at != SIM_NEVER && r->converged
                            ? (s->converged_at - FM_MIN(s->converged_at, s->last_write_us)) / 1000
                            : UINT64_MAX;
    if (s->converged_at == SIM_NEVER)
        r->converged = false;
    r->messages = s->messages;
    r->bytes = s->bytes;
    r->segments = s->segments;
    r->retransmits = s->retransmits;
    r->writes_acked = s->nledger;
    r->writes_failed = s->writes_failed;
    for (uint32_t k = 0; k < s->nledger; k++) {
        r->ops += s->ledger[k].nops;
        r->expected_refused += s->ledger[k].expect_refused;
    }
    r->conns_opened = s->conns_opened;
    r->connects_failed = s->connects_failed;
    r->events = s->events;
    r->node_calls = s->node_calls;
    for (uint32_t k = 0; k < s->nworkers; k++) {
        r->conns_opened += s->w[k].conns_opened;
        r->connects_failed += s->w[k].connects_failed;
        r->events += s->w[k].events;
        r->node_calls += s->w[k].node_calls;
    }
    for (uint32_t i = 0; i < s->n; i++)
        r->crashes += s->nodes[i].restarts + s->nodes[i].crashed;
    /* The nodes' traces in node order: the same for any number of workers. */
    crypto_generichash_state t;
    crypto_generichash_init(&t, (const uint8_t *)"fieldmesh-sim-run", 17, FM_HASH_BYTES);
    for (uint32_t i = 0; i < s->n; i++) {
        crypto_generichash_state one = *s->nodes[i].trace;
        uint8_t h[FM_HASH_BYTES];
        crypto_generichash_final(&one, h, sizeof h);
        crypto_generichash_update(&t, h, sizeof h);
    }
    crypto_generichash_final(&t, r->trace, FM_HASH_BYTES);
    r->wall_ms = fm_sim_wall_ms() - s->wall_start;
    r->setup_wall_ms = s->setup_wall_ms;
    r->threads = s->windows ? s->nthreads : 1;
    r->windows = s->windows;
    r->wait_ms = s->wait_us / 1000;
    return s->error;
}

/* ---- accessors ------------------------------------------------------------------------------ */

uint64_t fm_sim_now_ms(const fm_sim *s)
{
    return s->now / 1000;
}

uint32_t fm_sim_nodes(const fm_sim *s)
{
    return s->n;
}

fm_replica *fm_sim_replica(fm_sim *s, uint32_t i)
{
    return i < s->n && !s->nodes[i].crashed ? s->nodes[i].r : NULL;
}

fm_node *fm_sim_node(fm_sim *s, uint32_t i)
{
    return i < s->n && !s->nodes[i].crashed ? s->nodes[i].n : NULL;
}

void fm_sim_device(const fm_sim *s, uint32_t i, uint8_t out[FM_ID_BYTES])
{
    memcpy(out, s->nodes[i].dev, FM_ID_BYTES);
}

bool fm_sim_link_up(const fm_sim *s, uint32_t i, uint32_t j)
{
    return i < s->n && j < s->n && sim_link_eff(s, i, j);
}
