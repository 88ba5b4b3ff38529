/*
 * hlc.h — hybrid logical clock: 48 bits of milliseconds, 16 bits of logical counter, in one
 * uint64 so HLCs compare as integers. Time is always passed in (the core reads no clock).
 */
#ifndef FM_HLC_H
#define FM_HLC_H

#include <stdbool.h>
#include <stdint.h>

#define FM_HLC_LOGICAL_BITS 16
#define FM_HLC_DEFAULT_MAX_SKEW_MS (5u * 60u * 1000u)

static inline uint64_t fm_hlc_ms(uint64_t h)
{
    return h >> FM_HLC_LOGICAL_BITS;
}

/* Advances the local clock for a local event at wall time now_ms; returns the new timestamp,
 * strictly greater than every timestamp returned or observed before. */
uint64_t fm_hlc_tick(uint64_t *local, uint64_t now_ms);

/* Observes a remote timestamp. A remote clock more than max_skew_ms ahead of now_ms is not
 * adopted (our clock stays sane; causality still orders its writes) and true is returned so
 * the caller can flag the skew. */
bool fm_hlc_observe(uint64_t *local, uint64_t remote, uint64_t now_ms, uint64_t max_skew_ms);

#endif
