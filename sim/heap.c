/*
 * heap.c — binary min-heap of events ordered by (t, seq). seq is unique and increasing, so the
 * order is total and equal deadlines fire in insertion order (libuv's timer rule).
 */
#include "sim/heap.h"

#include <stdlib.h>

static bool before(const fm_sim_event *a, const fm_sim_event *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

void fm_sim_heap_init(fm_sim_heap *h)
{
    memset(h, 0, sizeof *h);
}

void fm_sim_heap_free(fm_sim_heap *h)
{
    free(h->ev);
    memset(h, 0, sizeof *h);
}

int fm_sim_heap_push(fm_sim_heap *h, uint64_t t, uint32_t kind, uint32_t node, uint64_t a,
                     uint64_t b)
{
    if (h->n >= UINT32_MAX / 2)
        return FM_ELIMIT;
    if (h->n == h->cap && fm_grow((void **)&h->ev, h->n, &h->cap, sizeof *h->ev))
        return FM_ENOMEM;
    fm_sim_event e = {.t = t, .seq = h->next_seq++, .kind = kind, .node = node, .a = a, .b = b};
    uint32_t i = h->n++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(&e, &h->ev[p]))
            break;
        h->ev[i] = h->ev[p];
        i = p;
    }
    h->ev[i] = e;
    return 0;
}

bool fm_sim_heap_pop(fm_sim_heap *h, fm_sim_event *out)
{
    if (h->n == 0)
        return false;
    *out = h->ev[0];
    fm_sim_event last = h->ev[--h->n];
    uint32_t i = 0, n = h->n;
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= n)
            break;
        uint32_t m = l + 1 < n && before(&h->ev[l + 1], &h->ev[l]) ? l + 1 : l;
        if (!before(&h->ev[m], &last))
            break;
        h->ev[i] = h->ev[m];
        i = m;
    }
    if (n)
        h->ev[i] = last;
    FM_ASSERT(h->n == 0 || !before(&h->ev[0], out));
    return true;
}

const fm_sim_event *fm_sim_heap_top(const fm_sim_heap *h)
{
    return h->n ? &h->ev[0] : NULL;
}

static uint64_t weigh(const fm_sim_heap *h, uint32_t i, uint64_t until,
                      uint64_t (*weight)(const fm_sim_event *e))
{
    /* A child is never due before its parent: recursion as deep as the heap, at most 32. */
    if (i >= h->n || h->ev[i].t >= until)
        return 0;
    return weight(&h->ev[i]) + weigh(h, 2 * i + 1, until, weight) +
           weigh(h, 2 * i + 2, until, weight);
}

uint64_t fm_sim_heap_weigh(const fm_sim_heap *h, uint64_t until,
                           uint64_t (*weight)(const fm_sim_event *e))
{
    return weigh(h, 0, until, weight);
}
