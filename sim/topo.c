/*
 * topo.c — who can reach whom. The base graph (the topology; for rgg, who is within radio range
 * of whom) is kept as CSR with sorted rows. A link is up when its base edge exists, both ends are
 * present (running, in range: not churned out, not in an --offline window) and no active
 * partition puts them in different groups. Every change of any of these inputs is turned into
 * link transitions: up tells both ends fm_node_peer_seen with the other's digest; down cuts every
 * connection on the link (sim_net_cut) and tells both ends fm_node_peer_lost. The state is
 * updated before anyone is told, so a node reacting to the news sees the new graph.
 *
 * rgg: nodes move by random waypoint in the unit square; every FM_SIM_MOVE_US the graph is
 * rebuilt with a bucket grid of cell size >= radius (each node looks at 3x3 cells), and diffed
 * row by row against the previous one: O(N * degree) per step, not O(N^2).
 */
#include "sim/sim_int.h"

#include <math.h>
#include <stdlib.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* CSR from edges (i << 32 | j, i < j); sorts and dedups edges in place. */
static int csr_from_edges(fm_sim *s, uint64_t *e, size_t ne)
{
    qsort(e, ne, sizeof *e, cmp_u64);
    size_t k = 0;
    for (size_t x = 0; x < ne; x++)
        if (k == 0 || e[x] != e[k - 1])
            e[k++] = e[x];
    ne = k;
    if (ne > UINT32_MAX / 2)
        return FM_ELIMIT;
    uint32_t *off = calloc((size_t)s->n + 1, sizeof *off);
    uint32_t *pos = calloc((size_t)s->n, sizeof *pos);
    uint32_t *adj = malloc((2 * ne + 1) * sizeof *adj);
    if (!off || !pos || !adj) {
        free(off), free(pos), free(adj);
        return FM_ENOMEM;
    }
    for (size_t x = 0; x < ne; x++) {
        off[(e[x] >> 32) + 1]++;
        off[(e[x] & 0xffffffffu) + 1]++;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        off[i + 1] += off[i];
        pos[i] = off[i];
    }
    /* Edges sorted by (i, j): row r gets its smaller neighbours first, each ascending. */
    for (size_t x = 0; x < ne; x++) {
        uint32_t i = (uint32_t)(e[x] >> 32), j = (uint32_t)(e[x] & 0xffffffffu);
        adj[pos[i]++] = j;
        adj[pos[j]++] = i;
    }
    free(pos);
    free(s->off);
    free(s->adj);
    s->off = off;
    s->adj = adj;
    s->nadj = s->cadj = (uint32_t)(2 * ne);
    return 0;
}

static int edges_push(uint64_t **e, size_t *n, size_t *cap, uint32_t i, uint32_t j)
{
    if (i == j)
        return 0;
    if (i > j) {
        uint32_t t = i;
        i = j;
        j = t;
    }
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        uint64_t *p = fm_reallocarray(*e, c, sizeof *p);
        if (!p)
            return FM_ENOMEM;
        *e = p;
        *cap = c;
    }
    (*e)[(*n)++] = (uint64_t)i << 32 | j;
    return 0;
}

/* Random K-regular-ish graph: the configuration model, dropping self-loops and duplicates. */
static int random_edges(fm_sim *s, uint64_t **e, size_t *ne, size_t *cap)
{
    uint32_t k = s->cfg.degree;
    size_t nstubs = (size_t)s->n * k;
    uint32_t *stub = malloc((nstubs + 1) * sizeof *stub);
    if (!stub)
        return FM_ENOMEM;
    for (size_t x = 0; x < nstubs; x++)
        stub[x] = (uint32_t)(x / k);
    for (size_t x = nstubs; x > 1; x--) {
        size_t y = fm_sim_rng_below(&s->rng_topo, x);
        uint32_t t = stub[x - 1];
        stub[x - 1] = stub[y];
        stub[y] = t;
    }
    int rc = 0;
    for (size_t x = 0; !rc && x + 1 < nstubs; x += 2)
        rc = edges_push(e, ne, cap, stub[x], stub[x + 1]);
    free(stub);
    return rc;
}

static int build_rgg(fm_sim *s, uint32_t **off, uint32_t **adj, uint32_t *nadj, uint32_t *cadj);

int sim_topo_build(fm_sim *s)
{
    uint32_t n = s->n;
    uint64_t *e = NULL;
    size_t ne = 0, cap = 0;
    int rc = 0;
    uint32_t w = 1;
    while ((uint64_t)w * w < n)
        w++;
    switch (s->cfg.topology) {
    case FM_SIM_TOPO_FULL:
        for (uint32_t i = 0; !rc && i < n; i++)
            for (uint32_t j = i + 1; !rc && j < n; j++)
                rc = edges_push(&e, &ne, &cap, i, j);
        break;
    case FM_SIM_TOPO_LINE:
    case FM_SIM_TOPO_RING:
        for (uint32_t i = 0; !rc && i + 1 < n; i++)
            rc = edges_push(&e, &ne, &cap, i, i + 1);
        if (!rc && s->cfg.topology == FM_SIM_TOPO_RING && n > 2)
            rc = edges_push(&e, &ne, &cap, 0, n - 1);
        break;
    case FM_SIM_TOPO_GRID:
        for (uint32_t i = 0; !rc && i < n; i++) {
            if ((i + 1) % w != 0 && i + 1 < n)
                rc = edges_push(&e, &ne, &cap, i, i + 1);
            if (!rc && i + w < n)
                rc = edges_push(&e, &ne, &cap, i, i + w);
        }
        break;
    case FM_SIM_TOPO_RANDOM:
        if (s->cfg.degree + 1 >= n) {
            for (uint32_t i = 0; !rc && i < n; i++)
                for (uint32_t j = i + 1; !rc && j < n; j++)
                    rc = edges_push(&e, &ne, &cap, i, j);
        } else {
            rc = random_edges(s, &e, &ne, &cap);
        }
        break;
    case FM_SIM_TOPO_RGG: {
        double k = s->cfg.degree ? s->cfg.degree : 6;
        s->radius = n > 1 ? sqrt(k / (M_PI * (n - 1))) : 1.0;
        if (s->radius > 1.5)
            s->radius = 1.5;
        for (uint32_t i = 0; i < n; i++) {
            sim_node *sn = &s->nodes[i];
            sn->x = fm_sim_rng_unit(&s->rng_move);
            sn->y = fm_sim_rng_unit(&s->rng_move);
            sn->tx = fm_sim_rng_unit(&s->rng_move);
            sn->ty = fm_sim_rng_unit(&s->rng_move);
            sn->v = s->cfg.speed * (0.5 + fm_sim_rng_unit(&s->rng_move));
        }
        free(e);
        return build_rgg(s, &s->off, &s->adj, &s->nadj, &s->cadj);
    }
    }
    if (!rc)
        rc = csr_from_edges(s, e, ne);
    free(e);
    return rc;
}

void sim_topo_free(fm_sim *s)
{
    free(s->off);
    free(s->adj);
    free(s->off2);
    free(s->adj2);
    free(s->cell_start);
    free(s->cell_nodes);
}

bool sim_base_edge(const fm_sim *s, uint32_t i, uint32_t j)
{
    uint32_t lo = s->off[i], hi = s->off[i + 1];
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->adj[mid] < j)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->off[i + 1] && s->adj[lo] == j;
}

static bool same_side(const fm_sim *s, uint32_t i, uint32_t j)
{
    for (uint32_t p = 0; p < s->cfg.npart; p++) {
        if (!s->part_active[p])
            continue;
        uint64_t g = s->cfg.part[p].groups;
        if ((uint64_t)i * g / s->n != (uint64_t)j * g / s->n)
            return false;
    }
    return true;
}

/* Everything but the base edge. */
static bool reachable(const fm_sim *s, uint32_t i, uint32_t j)
{
    return s->nodes[i].present && s->nodes[j].present && same_side(s, i, j);
}

bool sim_link_eff(const fm_sim *s, uint32_t i, uint32_t j)
{
    return i != j && reachable(s, i, j) && sim_base_edge(s, i, j);
}

static void tell_seen(fm_sim *s, uint32_t to, uint32_t from, const uint8_t *digest)
{
    sim_node *sn = &s->nodes[to];
    if (!sim_running(sn))
        return;
    sim_trace(s, TR_SEEN, to, from, digest, FM_HASH_BYTES);
    fm_node_peer_seen(sn->n, s->nodes[from].addr, digest, 0);
    sim_after_call(s, sn);
}

static void link_up(fm_sim *s, uint32_t i, uint32_t j)
{
    uint8_t di[FM_HASH_BYTES], dj[FM_HASH_BYTES];
    if (!sim_running(&s->nodes[i]) || !sim_running(&s->nodes[j]))
        return;
    memcpy(di, sim_node_digest(&s->nodes[i]), FM_HASH_BYTES);
    memcpy(dj, sim_node_digest(&s->nodes[j]), FM_HASH_BYTES);
    tell_seen(s, j, i, di);
    tell_seen(s, i, j, dj);
}

static void tell_lost(fm_sim *s, uint32_t to, uint32_t from)
{
    sim_node *sn = &s->nodes[to];
    if (!sim_running(sn))
        return;
    sim_trace(s, TR_LOST, to, from, NULL, 0);
    fm_node_peer_lost(sn->n, s->nodes[from].addr);
    sim_after_call(s, sn);
}

static void link_down(fm_sim *s, uint32_t i, uint32_t j)
{
    sim_net_cut(s, i, j);
    tell_lost(s, i, j);
    tell_lost(s, j, i);
}

/* Link transitions, each as i << 32 | j, collected before anyone is told. */
typedef struct trans {
    uint64_t *up, *down;
    size_t nup, ndown, cup, cdown;
} trans;

static int trans_add(fm_sim *s, trans *t, bool up, uint32_t i, uint32_t j)
{
    uint64_t **v = up ? &t->up : &t->down;
    size_t *n = up ? &t->nup : &t->ndown, *cap = up ? &t->cup : &t->cdown;
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        uint64_t *p = fm_reallocarray(*v, c, sizeof *p);
        if (!p) {
            sim_fail(s, FM_ENOMEM);
            return FM_ENOMEM;
        }
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = (uint64_t)i << 32 | j;
    return 0;
}

/* Downs first (connections cut before anyone reconnects), then ups, each in (i, j) order. */
static void trans_apply(fm_sim *s, trans *t)
{
    for (size_t x = 0; x < t->ndown; x++)
        link_down(s, (uint32_t)(t->down[x] >> 32), (uint32_t)t->down[x]);
    for (size_t x = 0; x < t->nup; x++)
        link_up(s, (uint32_t)(t->up[x] >> 32), (uint32_t)t->up[x]);
    free(t->up);
    free(t->down);
}

void sim_topo_presence(fm_sim *s, uint32_t i)
{
    sim_node *sn = &s->nodes[i];
    bool now = sim_running(sn) && !sn->out && sn->offline == 0;
    if (now == sn->present)
        return;
    trans t = {0};
    for (uint32_t x = s->off[i]; x < s->off[i + 1]; x++) {
        uint32_t j = s->adj[x];
        if (s->nodes[j].present && same_side(s, i, j) && trans_add(s, &t, now, i, j))
            break;
    }
    sn->present = now;
    trans_apply(s, &t);
}

void sim_topo_partition(fm_sim *s, uint32_t p, bool active)
{
    if (s->part_active[p] == active)
        return;
    uint8_t *was = malloc((size_t)s->nadj + 1);
    if (!was) {
        sim_fail(s, FM_ENOMEM);
        return;
    }
    for (uint32_t i = 0; i < s->n; i++)
        for (uint32_t x = s->off[i]; x < s->off[i + 1]; x++)
            was[x] = s->adj[x] > i && reachable(s, i, s->adj[x]);
    s->part_active[p] = active;
    trans t = {0};
    for (uint32_t i = 0; i < s->n; i++)
        for (uint32_t x = s->off[i]; x < s->off[i + 1]; x++) {
            uint32_t j = s->adj[x];
            if (j <= i)
                continue;
            bool is = reachable(s, i, j);
            if (is != was[x] && trans_add(s, &t, is, i, j))
                goto out;
        }
out:
    free(was);
    trans_apply(s, &t);
}

/* ---- random geometric graph ----------------------------------------------------------------- */

static uint32_t cell_of(const fm_sim *s, double v)
{
    int64_t c = (int64_t)(v * s->grid);
    return (uint32_t)(c < 0 ? 0 : c >= (int64_t)s->grid ? s->grid - 1 : c);
}

static int build_rgg(fm_sim *s, uint32_t **offp, uint32_t **adjp, uint32_t *nadjp, uint32_t *cadjp)
{
    uint32_t n = s->n;
    if (!s->cell_start) {
        double g = floor(1.0 / s->radius);
        s->grid = g < 1 ? 1 : g > 2048 ? 2048 : (uint32_t)g;
        s->ncells = s->grid * s->grid;
        s->cell_start = calloc((size_t)s->ncells + 1, sizeof *s->cell_start);
        s->cell_nodes = calloc((size_t)n + 1, sizeof *s->cell_nodes);
        if (!s->cell_start || !s->cell_nodes)
            return FM_ENOMEM;
    }
    if (!*offp && !(*offp = calloc((size_t)n + 1, sizeof **offp)))
        return FM_ENOMEM;
    /* Counting sort of nodes by cell. */
    uint32_t *cs = s->cell_start;
    memset(cs, 0, ((size_t)s->ncells + 1) * sizeof *cs);
    for (uint32_t i = 0; i < n; i++)
        cs[cell_of(s, s->nodes[i].y) * s->grid + cell_of(s, s->nodes[i].x) + 1]++;
    for (uint32_t c = 0; c < s->ncells; c++)
        cs[c + 1] += cs[c];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t c = cell_of(s, s->nodes[i].y) * s->grid + cell_of(s, s->nodes[i].x);
        s->cell_nodes[cs[c]++] = i;
    }
    for (uint32_t c = s->ncells; c > 0; c--)
        cs[c] = cs[c - 1];
    cs[0] = 0;
    double r2 = s->radius * s->radius;
    uint32_t *off = *offp, *adj = *adjp, nadj = 0, cadj = *cadjp;
    off[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        const sim_node *a = &s->nodes[i];
        int64_t cx = cell_of(s, a->x), cy = cell_of(s, a->y);
        uint32_t row = nadj;
        for (int64_t y = cy - 1; y <= cy + 1; y++)
            for (int64_t x = cx - 1; x <= cx + 1; x++) {
                if (x < 0 || y < 0 || x >= (int64_t)s->grid || y >= (int64_t)s->grid)
                    continue;
                uint32_t c = (uint32_t)(y * s->grid + x);
                for (uint32_t k = cs[c]; k < cs[c + 1]; k++) {
                    uint32_t j = s->cell_nodes[k];
                    const sim_node *b = &s->nodes[j];
                    double dx = a->x - b->x, dy = a->y - b->y;
                    if (j == i || dx * dx + dy * dy > r2)
                        continue;
                    if (nadj == cadj && fm_grow((void **)&adj, nadj, &cadj, sizeof *adj))
                        return FM_ENOMEM;
                    *adjp = adj, *cadjp = cadj;
                    adj[nadj++] = j;
                }
            }
        /* Rows are short: insertion sort. */
        for (uint32_t p = row + 1; p < nadj; p++) {
            uint32_t v = adj[p], q = p;
            while (q > row && adj[q - 1] > v) {
                adj[q] = adj[q - 1];
                q--;
            }
            adj[q] = v;
        }
        off[i + 1] = nadj;
    }
    *nadjp = nadj;
    return 0;
}

static void move_nodes(fm_sim *s, double dt)
{
    for (uint32_t i = 0; i < s->n; i++) {
        sim_node *sn = &s->nodes[i];
        double dx = sn->tx - sn->x, dy = sn->ty - sn->y, d = sqrt(dx * dx + dy * dy);
        double step = sn->v * dt;
        if (d <= step) {
            sn->x = sn->tx, sn->y = sn->ty;
            sn->tx = fm_sim_rng_unit(&s->rng_move);
            sn->ty = fm_sim_rng_unit(&s->rng_move);
            sn->v = s->cfg.speed * (0.5 + fm_sim_rng_unit(&s->rng_move));
        } else {
            sn->x += dx / d * step;
            sn->y += dy / d * step;
        }
    }
}

void sim_topo_move(fm_sim *s)
{
    if (s->cfg.topology != FM_SIM_TOPO_RGG || s->cfg.speed <= 0)
        return;
    move_nodes(s, FM_SIM_MOVE_US / 1e6);
    int rc = build_rgg(s, &s->off2, &s->adj2, &s->nadj2, &s->cadj2);
    if (rc) {
        sim_fail(s, rc);
        return;
    }
    /* Swap in the new graph, keeping the old rows to diff against. */
    uint32_t *old_off = s->off, *old_adj = s->adj, old_n = s->nadj, old_c = s->cadj;
    s->off = s->off2, s->adj = s->adj2, s->nadj = s->nadj2, s->cadj = s->cadj2;
    s->off2 = old_off, s->adj2 = old_adj, s->nadj2 = old_n, s->cadj2 = old_c;
    trans t = {0};
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t a = old_off[i], ae = old_off[i + 1], b = s->off[i], be = s->off[i + 1];
        while (a < ae || b < be) {
            uint32_t ja = a < ae ? old_adj[a] : UINT32_MAX, jb = b < be ? s->adj[b] : UINT32_MAX;
            uint32_t j = FM_MIN(ja, jb);
            bool was = ja == j, is = jb == j;
            a += was, b += is;
            if (j > i && was != is && reachable(s, i, j) && trans_add(s, &t, is, i, j))
                goto out;
        }
    }
out:
    trans_apply(s, &t);
}

void sim_topo_advert(fm_sim *s, uint32_t i)
{
    sim_node *sn = &s->nodes[i];
    if (!sn->present || !sim_running(sn))
        return;
    uint8_t d[FM_HASH_BYTES];
    memcpy(d, sim_node_digest(sn), FM_HASH_BYTES);
    for (uint32_t x = s->off[i]; x < s->off[i + 1]; x++) {
        uint32_t j = s->adj[x];
        if (reachable(s, i, j))
            tell_seen(s, j, i, d);
    }
}

/* ---- components --------------------------------------------------------------------------------
 */

static uint32_t uf_find(uint32_t *uf, uint32_t x)
{
    while (uf[x] != x) {
        uf[x] = uf[uf[x]];
        x = uf[x];
    }
    return x;
}

uint32_t sim_components(fm_sim *s)
{
    uint32_t *uf = s->uf;
    for (uint32_t i = 0; i < s->n; i++)
        uf[i] = i;
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->nodes[i].excluded)
            continue;
        for (uint32_t x = s->off[i]; x < s->off[i + 1]; x++) {
            uint32_t j = s->adj[x];
            if (j <= i || s->nodes[j].excluded || !reachable(s, i, j))
                continue;
            uint32_t a = uf_find(uf, i), b = uf_find(uf, j);
            if (a != b)
                uf[a > b ? a : b] = a > b ? b : a; /* smallest index is the root */
        }
    }
    uint32_t count = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        uf[i] = uf_find(uf, i);
        count += uf[i] == i && !s->nodes[i].excluded;
    }
    return count;
}

double sim_mean_degree(const fm_sim *s)
{
    return s->n ? (double)s->nadj / s->n : 0;
}
