/*
 * sigcache.c — the verified-hash set: a power-of-two table of 32-byte slots, linear probing,
 * load factor at most 1/2 (the table is sized for max_entries up front, so it never rehashes).
 * An all-zero slot is empty; the all-zero hash itself is tracked by a flag so it needs no slot.
 */
#include "crypto/sigcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct fm_sigcache {
    uint8_t (*slots)[FM_HASH_BYTES];
    uint32_t mask;   /* slots - 1 */
    uint32_t n, max; /* entries held (the zero hash included), and the bound */
    bool has_zero;
    bool shared; /* lock held around every look-up and add */
    pthread_mutex_t lock;
    fm_sigcache *parent; /* borrowed; NULL: none */
};

static const uint8_t ZERO[FM_HASH_BYTES];

int fm_sigcache_new(uint32_t max_entries, fm_sigcache **out)
{
    if (!out || max_entries == 0 || max_entries > FM_SIGCACHE_MAX_ENTRIES)
        return FM_EINVAL;
    uint32_t nslots = 16;
    while (nslots < 2 * max_entries)
        nslots *= 2;
    fm_sigcache *c = calloc(1, sizeof *c);
    if (!c || !(c->slots = fm_calloc(nslots, FM_HASH_BYTES))) {
        free(c);
        return FM_ENOMEM;
    }
    c->mask = nslots - 1;
    c->max = max_entries;
    *out = c;
    return 0;
}

int fm_sigcache_new_shared(uint32_t max_entries, fm_sigcache **out)
{
    int rc = fm_sigcache_new(max_entries, out);
    if (rc)
        return rc;
    if (pthread_mutex_init(&(*out)->lock, NULL) != 0) {
        fm_sigcache_free(*out);
        *out = NULL;
        return FM_ENOMEM;
    }
    (*out)->shared = true;
    return 0;
}

void fm_sigcache_free(fm_sigcache *c)
{
    if (!c)
        return;
    if (c->shared)
        pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c);
}

void fm_sigcache_set_parent(fm_sigcache *c, fm_sigcache *parent)
{
    FM_ASSERT(c != parent && !c->shared);
    c->parent = parent;
}

/* The keys are BLAKE2b outputs, so their leading bytes already place them uniformly. Someone who
 * can sign may grind hashes that share a slot prefix; probing then degrades towards linear in the
 * number of entries, which is bounded by max. */
static uint32_t slot_of(const fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    uint32_t h;
    memcpy(&h, hash, sizeof h);
    return h & c->mask;
}

/* The slot holding hash, or the empty slot where it would go. */
static uint32_t probe(const fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    for (uint32_t i = slot_of(c, hash);; i = (i + 1) & c->mask)
        if (memcmp(c->slots[i], hash, FM_HASH_BYTES) == 0 ||
            memcmp(c->slots[i], ZERO, FM_HASH_BYTES) == 0)
            return i;
}

static bool has_here(const fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    if (memcmp(hash, ZERO, FM_HASH_BYTES) == 0)
        return c->has_zero;
    return memcmp(c->slots[probe(c, hash)], hash, FM_HASH_BYTES) == 0;
}

static void add_here(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    if (c->n >= c->max)
        return;
    if (memcmp(hash, ZERO, FM_HASH_BYTES) == 0) {
        c->n += !c->has_zero;
        c->has_zero = true;
        return;
    }
    uint32_t i = probe(c, hash);
    if (memcmp(c->slots[i], hash, FM_HASH_BYTES) == 0)
        return;
    memcpy(c->slots[i], hash, FM_HASH_BYTES);
    c->n++;
    FM_ASSERT(c->n <= (c->mask + 1) / 2);
}

static bool has_locked(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    if (!c->shared)
        return has_here(c, hash);
    pthread_mutex_lock(&c->lock);
    bool held = has_here(c, hash);
    pthread_mutex_unlock(&c->lock);
    return held;
}

static void add_locked(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    if (!c->shared) {
        add_here(c, hash);
        return;
    }
    pthread_mutex_lock(&c->lock);
    add_here(c, hash);
    pthread_mutex_unlock(&c->lock);
}

bool fm_sigcache_has(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    if (has_locked(c, hash))
        return true;
    if (!c->parent || !has_locked(c->parent, hash))
        return false;
    add_locked(c, hash);
    return true;
}

void fm_sigcache_add(fm_sigcache *c, const uint8_t hash[FM_HASH_BYTES])
{
    add_locked(c, hash);
    if (c->parent)
        add_locked(c->parent, hash);
}

uint32_t fm_sigcache_count(fm_sigcache *c)
{
    if (!c->shared)
        return c->n;
    pthread_mutex_lock(&c->lock);
    uint32_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}
