/*
 * net.c — simulated connections: reliable in-order byte streams over links with latency,
 * jitter, bandwidth, MTU and loss. A send is cut into MTU segments; each serialises at the link
 * rate behind the previous one (per direction), arrives after latency + jitter but never before
 * the segment ahead of it, and a lost segment is sent again after an RTO, as often as it is lost:
 * loss shows up as delay (head-of-line blocking), as over TCP.
 *
 * The io callbacks only queue events. A connection lives in a slot; its ids carry (gen, slot,
 * side) so a stale id or event is recognised after the slot is reused. Bytes in flight wait in
 * the direction's queue and are handed out in order as their segments arrive.
 */
#include "sim/sim_int.h"

#include <stdlib.h>

static fm_conn_id conn_id(uint32_t slot, uint32_t gen, int side)
{
    return (uint64_t)gen << 32 | (uint64_t)slot << 1 | (uint64_t)side;
}

sim_conn *sim_conn_at(const fm_sim *s, uint32_t slot)
{
    uint32_t node = slot / SIM_NODE_SLOTS, k = slot % SIM_NODE_SLOTS;
    /* The owner may be opening another slot in its own window: nslots is published last. */
    if (node >= s->n || k >= __atomic_load_n(&s->nodes[node].nslots, __ATOMIC_ACQUIRE))
        return NULL;
    return &s->nodes[node].chunk[k / SIM_SLOT_CHUNK][k % SIM_SLOT_CHUNK];
}

/* The live connection an id names, checking the node owns that side; NULL if stale. */
static sim_conn *conn_of(fm_sim *s, const sim_node *sn, fm_conn_id id, int *side)
{
    uint32_t slot = (uint32_t)(id & 0xffffffffu) >> 1, gen = (uint32_t)(id >> 32);
    int sd = (int)(id & 1);
    sim_conn *c = sim_conn_at(s, slot);
    if (!c || !c->used || c->gen != gen || c->node[sd] != sn->idx)
        return NULL;
    *side = sd;
    return c;
}

/* The connection an event names, or NULL if it is gone. */
static sim_conn *conn_ev(fm_sim *s, uint64_t slot, uint64_t genside, int *side)
{
    sim_conn *c = slot <= UINT32_MAX ? sim_conn_at(s, (uint32_t)slot) : NULL;
    if (!c || !c->used || c->gen != (uint32_t)(genside >> 1))
        return NULL;
    *side = (int)(genside & 1);
    return c;
}

/* ---- bytes in flight ------------------------------------------------------------------------ */

static void chunks_free(sim_chunk *ch)
{
    while (ch) {
        sim_chunk *next = ch->next;
        free(ch);
        ch = next;
    }
}

/* A chunk the worker's nodes are done with: kept for the next sends, up to SIM_SPARE_MAX. */
static void chunk_put(sim_worker *w, sim_chunk *ch)
{
    if (w->nspare >= SIM_SPARE_MAX) {
        free(ch);
        return;
    }
    ch->next = w->spare;
    w->spare = ch;
    w->nspare++;
}

/* The worker whose spares a direction read by node reader takes from and gives to. */
static sim_worker *reader_worker(fm_sim *s, uint32_t reader)
{
    return &s->w[reader < s->n ? s->nodes[reader].worker : 0];
}

/* Between windows: an empty chunk, from the spares of the worker that will read it. */
static sim_chunk *chunk_get(fm_sim *s, sim_worker *w)
{
    sim_chunk *ch = w->spare;
    if (ch) {
        w->spare = ch->next;
        w->nspare--;
    } else if (!(ch = malloc(sizeof *ch + s->chunk_cap))) {
        return NULL;
    }
    ch->next = NULL;
    ch->used = 0;
    return ch;
}

/* Between windows: gives back whatever a direction still holds. */
static void dir_clear(fm_sim *s, sim_dir *d, uint32_t reader)
{
    sim_worker *w = reader_worker(s, reader);
    while (d->head) {
        sim_chunk *next = d->head->next;
        chunk_put(w, d->head);
        d->head = next;
    }
    d->tail = NULL;
    d->off = 0;
}

/* Between windows: room for one segment of m bytes at the direction's end (NULL: no memory). */
static uint8_t *dir_room(fm_sim *s, sim_dir *d, uint32_t reader, uint32_t m)
{
    FM_ASSERT(m <= s->chunk_cap);
    if (d->head && d->head == d->tail && d->off == d->tail->used)
        d->off = d->tail->used = 0; /* drained: start the chunk over */
    if (!d->tail || s->chunk_cap - d->tail->used < m) {
        sim_chunk *ch = chunk_get(s, reader_worker(s, reader));
        if (!ch)
            return NULL;
        if (d->tail)
            d->tail->next = ch;
        else
            d->head = ch;
        d->tail = ch;
    }
    uint8_t *p = d->tail->data + d->tail->used;
    d->tail->used += m;
    return p;
}

/* Inside the reader's window: the next m bytes, whole in one chunk; a chunk left behind goes
 * to the reading worker's spares (the writer never looks behind its tail). */
static const uint8_t *dir_read(fm_sim *s, sim_dir *d, uint32_t m)
{
    FM_ASSERT(d->head);
    if (d->off == d->head->used) {
        sim_chunk *done = d->head;
        FM_ASSERT(done->next);
        d->head = done->next;
        d->off = 0;
        chunk_put(sim_cur(s), done);
    }
    FM_ASSERT(d->head->used - d->off >= m);
    const uint8_t *p = d->head->data + d->off;
    d->off += m;
    return p;
}

void sim_net_free(fm_sim *s)
{
    for (uint32_t i = 0; s->nodes && i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        for (uint32_t k = 0; k < SIM_SLOT_CHUNKS && sn->chunk[k]; k++) {
            for (uint32_t j = 0; j < SIM_SLOT_CHUNK; j++)
                for (int d = 0; d < 2; d++)
                    chunks_free(sn->chunk[k][j].dir[d].head);
            free(sn->chunk[k]);
            sn->chunk[k] = NULL;
        }
        free(sn->freec);
        sn->freec = NULL;
    }
    for (uint32_t k = 0; s->w && k < s->nworkers; k++) {
        chunks_free(s->w[k].spare);
        s->w[k].spare = NULL;
        s->w[k].nspare = 0;
    }
    free(s->scratch_u32);
    free(s->allops);
}

static int node_list_add(sim_node *sn, uint32_t slot)
{
    if (fm_grow((void **)&sn->conns, sn->nconns, &sn->cconns, sizeof *sn->conns))
        return FM_ENOMEM;
    sn->conns[sn->nconns++] = slot;
    return 0;
}

static void node_list_del(sim_node *sn, uint32_t slot)
{
    for (uint32_t i = 0; i < sn->nconns; i++)
        if (sn->conns[i] == slot) {
            sn->conns[i] = sn->conns[--sn->nconns];
            return;
        }
    FM_ASSERT(!"connection missing from its node's list");
}

/* A slot of node a's for a connection to b (UINT32_MAX: unreachable), listed at a only: b
 * lists it when the connect op is applied. Touches nothing but a's own slots. */
static int conn_new(fm_sim *s, uint32_t a, uint32_t b, uint32_t *slot_out)
{
    sim_node *sn = &s->nodes[a];
    uint32_t k;
    if (sn->nfree) {
        k = sn->freec[--sn->nfree];
    } else {
        if (sn->nslots == SIM_NODE_SLOTS)
            return FM_ELIMIT;
        uint32_t ch = sn->nslots / SIM_SLOT_CHUNK;
        if (!sn->chunk[ch]) {
            sim_conn *c = calloc(SIM_SLOT_CHUNK, sizeof *c);
            if (!c)
                return FM_ENOMEM;
            for (uint32_t j = 0; j < SIM_SLOT_CHUNK; j++)
                c[j].gen = 1;
            sn->chunk[ch] = c;
        }
        k = sn->nslots;
        __atomic_store_n(&sn->nslots, k + 1, __ATOMIC_RELEASE);
    }
    uint32_t slot = a * SIM_NODE_SLOTS + k;
    /* Reserve the free-list room now so freeing never fails. */
    if (fm_grow((void **)&sn->freec, sn->nslots, &sn->cfree, sizeof *sn->freec) ||
        node_list_add(sn, slot)) {
        sn->freec[sn->nfree++] = k;
        return FM_ENOMEM;
    }
    sim_conn *c = sim_conn_at(s, slot);
    uint64_t now = sim_now(s);
    c->used = true;
    c->node[0] = a;
    c->node[1] = b;
    c->end[0] = END_NONE;
    c->end[1] = b == UINT32_MAX ? END_GONE : END_NONE;
    for (int d = 0; d < 2; d++) {
        FM_ASSERT(!c->dir[d].head && !c->dir[d].tail); /* conn_free cleared them */
        c->dir[d].busy_until = c->dir[d].last_arrival = now;
    }
    *slot_out = slot;
    return 0;
}

/* Only between windows: both nodes' lists change. */
static void conn_free(fm_sim *s, uint32_t slot)
{
    sim_conn *c = sim_conn_at(s, slot);
    FM_ASSERT(c && c->used);
    node_list_del(&s->nodes[c->node[0]], slot);
    if (c->listed)
        node_list_del(&s->nodes[c->node[1]], slot);
    c->used = false;
    c->listed = false;
    c->gen++;
    for (int d = 0; d < 2; d++)
        dir_clear(s, &c->dir[d], c->node[1 - d]);
    sim_node *owner = &s->nodes[slot / SIM_NODE_SLOTS];
    FM_ASSERT(owner->nfree < owner->cfree);
    owner->freec[owner->nfree++] = slot % SIM_NODE_SLOTS;
}

/* Records what a node did to a connection, for sim_net_flush. */
static void op_add(fm_sim *s, uint32_t kind, uint32_t node, uint32_t slot, uint32_t gen, int side,
                   const uint8_t *data, size_t len)
{
    sim_worker *w = sim_cur(s);
    if (fm_grow((void **)&w->ops, w->nops, &w->cops, sizeof *w->ops)) {
        sim_fail(s, FM_ENOMEM);
        return;
    }
    sim_op *op = &w->ops[w->nops];
    *op = (sim_op){.t = sim_now(s),
                   .seq = s->nodes[node].opseq++,
                   .node = node,
                   .kind = kind,
                   .slot = slot,
                   .gen = gen,
                   .side = (uint32_t)side,
                   .len = (uint32_t)len,
                   .off = w->opdata.len};
    if (len && fm_buf_append(&w->opdata, data, len)) {
        sim_fail(s, FM_ENOMEM);
        return;
    }
    w->nops++;
}

/* A connection both ends may be done with is freed after the window, if they are: the other
 * end's state is another worker's until then. */
static void free_if_done(fm_sim *s, uint32_t node, uint32_t slot)
{
    sim_conn *c = sim_conn_at(s, slot);
    op_add(s, OP_FREE, node, slot, c->gen, 0, NULL, 0);
}

/* One-way delay of a segment: latency +- jitter, never negative. */
static uint64_t delay_us(fm_sim *s)
{
    uint64_t lat = s->link.latency_us, j = s->link.jitter_us;
    if (!j)
        return lat;
    uint64_t span = 2 * j + 1, d = lat + fm_sim_rng_below(&s->rng_link, span);
    return d > j ? d - j : 0;
}

/* Extra delay from losses: one RTO per time the segment (or handshake packet) is lost. */
static uint64_t loss_us(fm_sim *s)
{
    uint64_t extra = 0;
    while (fm_sim_rng_chance(&s->rng_link, s->loss) && extra < 3600ull * 1000 * 1000) {
        extra += s->rto_us;
        s->retransmits++;
    }
    return extra;
}

static uint64_t serialise_us(const fm_sim *s, size_t bytes)
{
    return ((uint64_t)bytes * 8 * 1000000 + s->link.bits_per_s - 1) / s->link.bits_per_s;
}

/* After the window that recorded it: the bytes go into the link at t. */
static void net_send(fm_sim *s, uint64_t t, uint32_t slot, int side, const uint8_t *data,
                     size_t len)
{
    sim_conn *c = sim_conn_at(s, slot);
    sim_dir *d = &c->dir[side];
    int recv = 1 - side;
    uint64_t genside = (uint64_t)c->gen << 1 | (uint64_t)recv;
    uint32_t to = c->node[recv];
    s->messages++;
    s->bytes += len;
    for (size_t off = 0; off < len;) {
        size_t m = FM_MIN((size_t)s->link.mtu, len - off);
        uint8_t *room = dir_room(s, d, to, (uint32_t)m);
        if (!room) {
            sim_fail(s, FM_ENOMEM);
            return;
        }
        memcpy(room, data + off, m);
        uint64_t start = FM_MAX(t, d->busy_until);
        d->busy_until = start + serialise_us(s, m);
        uint64_t arrive = d->busy_until + delay_us(s) + loss_us(s);
        arrive = FM_MAX(arrive, d->last_arrival);
        d->last_arrival = arrive;
        sim_push(s, arrive, EV_DATA, to, (uint64_t)slot | (uint64_t)m << 32, genside);
        s->segments++;
        off += m;
    }
}

/* After the window: side's end closed at t; the other end hears a FIN. */
static void net_close(fm_sim *s, uint64_t t, uint32_t slot, int side)
{
    sim_conn *c = sim_conn_at(s, slot);
    int other = 1 - side;
    if (c->end[other] != END_GONE && c->node[other] != UINT32_MAX) {
        /* FIN: after the bytes already sent, and not before the other end is open. */
        sim_dir *d = &c->dir[side];
        uint64_t at = FM_MAX(t + delay_us(s), d->last_arrival);
        if (c->end[other] == END_NONE)
            at = FM_MAX(at, c->open_at[other]);
        d->last_arrival = at;
        sim_push(s, at, EV_FIN, c->node[other], slot, (uint64_t)c->gen << 1 | (uint64_t)other);
    }
    if (c->end[0] == END_GONE && c->end[1] == END_GONE)
        conn_free(s, slot);
}

/* After the window: the SYN leaves at t. */
static void net_connect(fm_sim *s, uint64_t t, uint32_t slot)
{
    sim_conn *c = sim_conn_at(s, slot);
    uint32_t i = c->node[0], j = c->node[1];
    uint64_t gen2 = (uint64_t)c->gen << 1;
    /* Cut since the connect (between windows), or out of memory: as if unreachable. */
    if (j != UINT32_MAX && (!sim_link_eff(s, i, j) || !sim_running(&s->nodes[j]) ||
                            node_list_add(&s->nodes[j], slot))) {
        c->node[1] = UINT32_MAX;
        c->end[1] = END_GONE;
        j = UINT32_MAX;
    }
    c->listed = j != UINT32_MAX;
    if (j != UINT32_MAX) {
        /* SYN reaches the responder after one delay; SYN-ACK the initiator after another. */
        c->open_at[1] = t + delay_us(s) + loss_us(s);
        c->open_at[0] = c->open_at[1] + delay_us(s) + loss_us(s);
        c->dir[0].last_arrival = FM_MAX(c->dir[0].last_arrival, c->open_at[1]);
        c->dir[1].last_arrival = FM_MAX(c->dir[1].last_arrival, c->open_at[0]);
        sim_push(s, c->open_at[1], EV_OPEN, j, slot, gen2 | 1);
        sim_push(s, c->open_at[0], EV_OPEN, i, slot, gen2);
    } else {
        c->open_at[0] = t + s->connect_timeout_us;
        sim_push(s, c->open_at[0], EV_FAIL, i, slot, gen2);
    }
}

static int op_order(const void *a, const void *b)
{
    const sim_op *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

void sim_net_flush(fm_sim *s)
{
    uint32_t total = 0;
    for (uint32_t k = 0; k < s->nworkers; k++)
        total += s->w[k].nops;
    if (!total)
        return;
    if (total > s->callops) {
        sim_op *p = fm_reallocarray(s->allops, total, sizeof *p);
        if (!p) {
            sim_fail(s, FM_ENOMEM);
            return;
        }
        s->allops = p;
        s->callops = total;
    }
    /* An op's bytes are in its worker's opdata: the worker goes in side's high bits. */
    uint32_t n = 0;
    for (uint32_t k = 0; k < s->nworkers; k++)
        for (uint32_t i = 0; i < s->w[k].nops; i++) {
            s->allops[n] = s->w[k].ops[i];
            s->allops[n++].side |= k << 1;
        }
    qsort(s->allops, n, sizeof *s->allops, op_order);
    for (uint32_t i = 0; i < n; i++) {
        const sim_op *op = &s->allops[i];
        int side = (int)(op->side & 1);
        const sim_worker *w = &s->w[op->side >> 1];
        sim_conn *c = sim_conn_at(s, op->slot);
        if (!c || !c->used || c->gen != op->gen)
            continue; /* cut meanwhile */
        switch (op->kind) {
        case OP_SEND:
            net_send(s, op->t, op->slot, side, w->opdata.data + op->off, op->len);
            break;
        case OP_CLOSE:
            net_close(s, op->t, op->slot, side);
            break;
        case OP_CONNECT:
            net_connect(s, op->t, op->slot);
            break;
        case OP_FREE:
            if (c->end[0] == END_GONE && c->end[1] == END_GONE)
                conn_free(s, op->slot);
            break;
        default:
            FM_ASSERT(!"unknown op");
        }
    }
    for (uint32_t k = 0; k < s->nworkers; k++) {
        s->w[k].nops = 0;
        fm_buf_reset(&s->w[k].opdata);
        if (s->w[k].opdata.cap > (16u << 20))
            fm_buf_free(&s->w[k].opdata);
    }
}

/* ---- io callbacks (they only record ops) ---------------------------------------------------- */

void sim_io_send(void *ctx, fm_conn_id id, const uint8_t *data, size_t len)
{
    sim_node *sn = ctx;
    fm_sim *s = sn->sim;
    int side;
    sim_conn *c = conn_of(s, sn, id, &side);
    if (!c || c->end[side] != END_OPEN || !len)
        return; /* the transport is gone: the bytes are lost, as on a dead socket */
    uint32_t slot = (uint32_t)(id & 0xffffffffu) >> 1;
    op_add(s, OP_SEND, sn->idx, slot, c->gen, side, data, len);
}

void sim_io_close(void *ctx, fm_conn_id id)
{
    sim_node *sn = ctx;
    fm_sim *s = sn->sim;
    int side;
    sim_conn *c = conn_of(s, sn, id, &side);
    if (!c || c->end[side] == END_GONE)
        return;
    c->end[side] = END_GONE; /* this side's own state: nothing more goes out */
    uint32_t slot = (uint32_t)(id & 0xffffffffu) >> 1;
    op_add(s, OP_CLOSE, sn->idx, slot, c->gen, side, NULL, 0);
}

static bool parse_addr(const fm_sim *s, const char *addr, uint32_t *out)
{
    if (strncmp(addr, "sim:", 4) != 0)
        return false;
    const char *p = addr + 4;
    uint64_t v = 0;
    if (!*p)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > s->n)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v >= s->n)
        return false;
    *out = (uint32_t)v;
    return true;
}

int sim_io_connect(void *ctx, const char *addr, fm_conn_id *out)
{
    sim_node *sn = ctx;
    fm_sim *s = sn->sim;
    uint32_t j;
    if (!addr || !parse_addr(s, addr, &j) || j == sn->idx)
        return FM_EINVAL;
    /* Topology and crashes change only between windows. */
    bool up = sim_link_eff(s, sn->idx, j) && sim_running(&s->nodes[j]);
    uint32_t slot;
    int rc = conn_new(s, sn->idx, up ? j : UINT32_MAX, &slot);
    if (rc)
        return rc;
    sim_conn *c = sim_conn_at(s, slot);
    op_add(s, OP_CONNECT, sn->idx, slot, c->gen, 0, NULL, 0);
    *out = conn_id(slot, c->gen, 0);
    return 0;
}

/* ---- events -----------------------------------------------------------------------------------
 */

static void ev_open(fm_sim *s, uint32_t slot, sim_conn *c, int side)
{
    /* An initiator that gave up before the SYN arrived sends its FIN after it. */
    if (c->end[side] != END_NONE)
        return;
    sim_node *sn = &s->nodes[c->node[side]];
    c->end[side] = END_OPEN;
    if (!sim_running(sn))
        return;
    fm_conn_id id = conn_id(slot, c->gen, side);
    const char *addr = s->nodes[c->node[1 - side]].addr;
    if (side == 0)
        sim_cur(s)->conns_opened++;
    sim_trace(s, TR_OPEN, sn->idx, id, NULL, 0);
    fm_node_conn_open(sn->n, id, side == 0, addr);
    sim_after_call(s, sn);
}

static void ev_data(fm_sim *s, uint32_t slot, sim_conn *c, int side, size_t len)
{
    /* Nothing writes this direction's chunks during the window: the node reads them in place. */
    const uint8_t *data = dir_read(s, &c->dir[1 - side], (uint32_t)len);
    sim_node *sn = &s->nodes[c->node[side]];
    fm_conn_id id = conn_id(slot, c->gen, side);
    if (c->end[side] != END_OPEN || !sim_running(sn))
        return;
    sim_trace(s, TR_DATA, sn->idx, id, data, len);
    fm_node_conn_data(sn->n, id, data, len);
    sim_after_call(s, sn);
}

static void ev_fin(fm_sim *s, uint32_t slot, sim_conn *c, int side)
{
    uint8_t was = c->end[side];
    c->end[side] = END_GONE;
    sim_node *sn = &s->nodes[c->node[side]];
    fm_conn_id id = conn_id(slot, c->gen, side);
    free_if_done(s, sn->idx, slot);
    if (was != END_OPEN || !sim_running(sn))
        return;
    sim_trace(s, TR_CLOSED, sn->idx, id, NULL, 0);
    fm_node_conn_closed(sn->n, id);
    sim_after_call(s, sn);
}

static void ev_fail(fm_sim *s, uint32_t slot, sim_conn *c)
{
    if (c->end[0] != END_NONE)
        return;
    c->end[0] = END_GONE;
    sim_node *sn = &s->nodes[c->node[0]];
    fm_conn_id id = conn_id(slot, c->gen, 0);
    free_if_done(s, sn->idx, slot);
    sim_cur(s)->connects_failed++;
    if (!sim_running(sn))
        return;
    sim_trace(s, TR_FAIL, sn->idx, id, NULL, 0);
    fm_node_conn_failed(sn->n, id);
    sim_after_call(s, sn);
}

void sim_net_event(fm_sim *s, const fm_sim_event *e)
{
    int side;
    uint32_t slot = (uint32_t)(e->a & 0xffffffffu);
    sim_conn *c = conn_ev(s, slot, e->b, &side);
    if (!c)
        return; /* the connection is gone */
    switch (e->kind) {
    case EV_OPEN:
        ev_open(s, slot, c, side);
        break;
    case EV_DATA:
        ev_data(s, slot, c, side, (size_t)(e->a >> 32));
        break;
    case EV_FIN:
        ev_fin(s, slot, c, side);
        break;
    case EV_FAIL:
        ev_fail(s, slot, c);
        break;
    default:
        FM_ASSERT(!"not a network event");
    }
}

/* Tells one end that its connection is gone (the slot is already freed). */
static void tell_cut(fm_sim *s, uint32_t node, fm_conn_id id, uint8_t end, int side)
{
    sim_node *sn = &s->nodes[node];
    if (!sim_running(sn))
        return;
    if (end == END_OPEN) {
        sim_trace(s, TR_CLOSED, node, id, NULL, 0);
        fm_node_conn_closed(sn->n, id);
    } else if (end == END_NONE && side == 0) {
        sim_cur(s)->connects_failed++;
        sim_trace(s, TR_FAIL, node, id, NULL, 0);
        fm_node_conn_failed(sn->n, id);
    } else {
        return;
    }
    sim_after_call(s, sn);
}

void sim_net_cut(fm_sim *s, uint32_t i, uint32_t j)
{
    sim_node *a = &s->nodes[i];
    /* Snapshot first: telling the nodes may open or close connections. */
    if (a->nconns > s->cscratch) {
        uint32_t *p = fm_reallocarray(s->scratch_u32, a->nconns, 2 * sizeof *p);
        if (!p) {
            sim_fail(s, FM_ENOMEM);
            return;
        }
        s->scratch_u32 = p;
        s->cscratch = a->nconns;
    }
    uint32_t k = 0;
    for (uint32_t x = 0; x < a->nconns; x++) {
        const sim_conn *c = sim_conn_at(s, a->conns[x]);
        uint32_t other = c->node[0] == i ? c->node[1] : c->node[0];
        if (j == UINT32_MAX || other == j) {
            s->scratch_u32[2 * k] = a->conns[x];
            s->scratch_u32[2 * k + 1] = c->gen;
            k++;
        }
    }
    for (uint32_t x = 0; x < k; x++) {
        /* The io callbacks the nodes call only queue events: the snapshot stays valid. */
        uint32_t slot = s->scratch_u32[2 * x];
        sim_conn *c = sim_conn_at(s, slot);
        if (!c->used || c->gen != s->scratch_u32[2 * x + 1])
            continue;
        uint32_t node[2] = {c->node[0], c->node[1]};
        uint8_t end[2] = {c->end[0], c->end[1]};
        fm_conn_id id[2] = {conn_id(slot, c->gen, 0), conn_id(slot, c->gen, 1)};
        c->end[0] = c->end[1] = END_GONE;
        conn_free(s, slot);
        for (int side = 0; side < 2; side++)
            if (node[side] != UINT32_MAX)
                tell_cut(s, node[side], id[side], end[side], side);
    }
}
