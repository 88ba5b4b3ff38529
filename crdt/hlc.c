/* hlc.c — hybrid logical clock (Kulkarni et al.), with skew bounding. */
#include "crdt/hlc.h"

#include "crdt/base.h"

#define HLC_MS_MAX ((UINT64_C(1) << (64 - FM_HLC_LOGICAL_BITS)) - 1)

uint64_t fm_hlc_tick(uint64_t *local, uint64_t now_ms)
{
    if (now_ms > HLC_MS_MAX)
        now_ms = HLC_MS_MAX;
    uint64_t wall = now_ms << FM_HLC_LOGICAL_BITS;
    /* If the wall clock moved past us, take it with counter 0; else count up logically (a full
     * counter rolls into the millisecond field, which keeps the order). */
    uint64_t next = wall > *local ? wall : *local + 1;
    FM_ASSERT(next > *local);
    *local = next;
    return next;
}

bool fm_hlc_observe(uint64_t *local, uint64_t remote, uint64_t now_ms, uint64_t max_skew_ms)
{
    uint64_t limit = now_ms + max_skew_ms;
    if (fm_hlc_ms(remote) > limit)
        return true;
    if (remote > *local)
        *local = remote;
    return false;
}
