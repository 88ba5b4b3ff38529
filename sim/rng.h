/*
 * rng.h — the simulator's seeded choices: xoshiro256** seeded through splitmix64. One stream per
 * concern (topology, links, workload, churn) so a change in one does not reshuffle the others.
 * Node randomness (keys, nonces) is a separate ChaCha20 stream per node (sim.c).
 */
#ifndef FM_SIM_RNG_H
#define FM_SIM_RNG_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct fm_sim_rng {
    uint64_t s[4];
} fm_sim_rng;

static inline uint64_t fm_sim_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void fm_sim_rng_seed(fm_sim_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = fm_sim_splitmix(&x);
}

static inline uint64_t fm_sim_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t fm_sim_rng_next(fm_sim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = fm_sim_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = fm_sim_rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static inline double fm_sim_rng_unit(fm_sim_rng *r)
{
    return (double)(fm_sim_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [0, n) (n > 0); Lemire's multiply, bias below 2^-32 for the n used here. */
static inline uint64_t fm_sim_rng_below(fm_sim_rng *r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)fm_sim_rng_next(r) * n) >> 64);
}

static inline bool fm_sim_rng_chance(fm_sim_rng *r, double p)
{
    return p > 0 && fm_sim_rng_unit(r) < p;
}

/* Exponential with the given mean. */
static inline double fm_sim_rng_exp(fm_sim_rng *r, double mean)
{
    return -mean * log(1.0 - fm_sim_rng_unit(r));
}

#endif
