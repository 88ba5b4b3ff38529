/*
 * heap.h — the simulator's event queue: a binary min-heap keyed by (time, insertion seq), so
 * events due at the same virtual time fire in the order they were scheduled. Events are plain
 * values (no allocation per event); the array grows by doubling.
 */
#ifndef FM_SIM_HEAP_H
#define FM_SIM_HEAP_H

#include "crdt/base.h"

typedef struct fm_sim_event {
    uint64_t t; /* virtual microseconds */
    uint64_t seq;
    uint32_t kind;
    uint32_t node;
    uint64_t a, b;
} fm_sim_event;

typedef struct fm_sim_heap {
    fm_sim_event *ev;
    uint32_t n, cap;
    uint64_t next_seq;
} fm_sim_heap;

void fm_sim_heap_init(fm_sim_heap *h);
void fm_sim_heap_free(fm_sim_heap *h);
/* FM_ENOMEM (the heap is unchanged), FM_ELIMIT past UINT32_MAX / 2 events. */
int fm_sim_heap_push(fm_sim_heap *h, uint64_t t, uint32_t kind, uint32_t node, uint64_t a,
                     uint64_t b);
/* Removes the earliest event into *out; false when empty. */
bool fm_sim_heap_pop(fm_sim_heap *h, fm_sim_event *out);
/* The sum of weight(e) over the events due before until: O(those events), the heap's order
 * bounds the walk. */
uint64_t fm_sim_heap_weigh(const fm_sim_heap *h, uint64_t until,
                           uint64_t (*weight)(const fm_sim_event *e));
/* The earliest event, or NULL; valid until the next push or pop. */
const fm_sim_event *fm_sim_heap_top(const fm_sim_heap *h);

#endif
