/*
 * test_sigcache.c — the verified-hash set: membership after add, no false positives, the bound
 * (adds past max_entries are ignored, what is held stays held), the all-zero hash, argument
 * checks, two caches never sharing state, and caches over a shared parent, from two threads.
 */
#include "crypto/sigcache.h"
#include "fm_test.h"

#include <pthread.h>
#include <sodium.h>

static void hash_of(uint32_t i, uint8_t out[FM_HASH_BYTES])
{
    uint8_t in[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
    crypto_generichash(out, FM_HASH_BYTES, in, sizeof in, NULL, 0);
}

static void test_add_has(void)
{
    fm_sigcache *c = NULL;
    CHECK_OK(fm_sigcache_new(1000, &c));
    uint8_t h[FM_HASH_BYTES];
    for (uint32_t i = 0; i < 1000; i++) {
        hash_of(i, h);
        CHECK(!fm_sigcache_has(c, h));
        fm_sigcache_add(c, h);
        CHECK(fm_sigcache_has(c, h));
    }
    CHECK_EQ_INT(fm_sigcache_count(c), 1000);
    /* Adding again changes nothing. */
    hash_of(7, h);
    fm_sigcache_add(c, h);
    CHECK_EQ_INT(fm_sigcache_count(c), 1000);
    /* Every one held, none of the others. */
    int held = 0, strangers = 0;
    for (uint32_t i = 0; i < 2000; i++) {
        hash_of(i, h);
        if (fm_sigcache_has(c, h))
            *(i < 1000 ? &held : &strangers) += 1;
    }
    CHECK_EQ_INT(held, 1000);
    CHECK_EQ_INT(strangers, 0);
    /* A hash one bit away from a held one is a different hash. */
    hash_of(3, h);
    h[FM_HASH_BYTES - 1] ^= 1;
    CHECK(!fm_sigcache_has(c, h));
    fm_sigcache_free(c);
}

static void test_bound(void)
{
    fm_sigcache *c = NULL;
    CHECK_OK(fm_sigcache_new(10, &c));
    uint8_t h[FM_HASH_BYTES];
    for (uint32_t i = 0; i < 25; i++) {
        hash_of(i, h);
        fm_sigcache_add(c, h);
    }
    CHECK_EQ_INT(fm_sigcache_count(c), 10); /* at the bound */
    for (uint32_t i = 0; i < 25; i++) {
        hash_of(i, h);
        CHECK(fm_sigcache_has(c, h) == (i < 10)); /* the first ten stay; later adds ignored */
    }
    /* Past the bound the all-zero hash is not taken either. */
    uint8_t zero[FM_HASH_BYTES] = {0};
    fm_sigcache_add(c, zero);
    CHECK(!fm_sigcache_has(c, zero));
    CHECK_EQ_INT(fm_sigcache_count(c), 10);
    fm_sigcache_free(c);
}

static void test_zero_hash_and_args(void)
{
    fm_sigcache *c = NULL, *d = NULL;
    CHECK_RC(fm_sigcache_new(0, &c), FM_EINVAL);
    CHECK_RC(fm_sigcache_new(FM_SIGCACHE_MAX_ENTRIES + 1, &c), FM_EINVAL);
    CHECK_RC(fm_sigcache_new(4, NULL), FM_EINVAL);
    CHECK_OK(fm_sigcache_new(1, &c));
    CHECK_OK(fm_sigcache_new(4, &d));
    uint8_t zero[FM_HASH_BYTES] = {0}, h[FM_HASH_BYTES];
    CHECK(!fm_sigcache_has(c, zero));
    fm_sigcache_add(c, zero);
    CHECK(fm_sigcache_has(c, zero));
    CHECK_EQ_INT(fm_sigcache_count(c), 1);
    hash_of(1, h);
    fm_sigcache_add(c, h); /* full: max 1 */
    CHECK(!fm_sigcache_has(c, h));
    /* Two caches share nothing. */
    CHECK(!fm_sigcache_has(d, zero));
    fm_sigcache_add(d, h);
    CHECK(fm_sigcache_has(d, h));
    CHECK(!fm_sigcache_has(c, h));
    fm_sigcache_free(c);
    fm_sigcache_free(d);
    fm_sigcache_free(NULL);
}

/* A child finds what its parent holds and keeps it; adds reach the parent; siblings meet there. */
static void test_parent(void)
{
    fm_sigcache *p = NULL, *a = NULL, *b = NULL;
    CHECK_OK(fm_sigcache_new_shared(100, &p));
    CHECK_OK(fm_sigcache_new(100, &a));
    CHECK_OK(fm_sigcache_new(100, &b));
    fm_sigcache_set_parent(a, p);
    fm_sigcache_set_parent(b, p);
    uint8_t h[FM_HASH_BYTES], g[FM_HASH_BYTES];
    hash_of(1, h);
    hash_of(2, g);
    fm_sigcache_add(a, h);
    CHECK_EQ_INT(fm_sigcache_count(a), 1);
    CHECK_EQ_INT(fm_sigcache_count(p), 1);
    CHECK_EQ_INT(fm_sigcache_count(b), 0);
    CHECK(fm_sigcache_has(b, h)); /* through the parent, and kept */
    CHECK_EQ_INT(fm_sigcache_count(b), 1);
    CHECK(!fm_sigcache_has(b, g));
    fm_sigcache_add(p, g); /* the parent itself is a cache like any */
    CHECK(fm_sigcache_has(a, g));
    CHECK(!fm_sigcache_has(p, (uint8_t[FM_HASH_BYTES]){0}));
    fm_sigcache_free(a);
    fm_sigcache_free(b);
    fm_sigcache_free(p);
}

typedef struct worker_arg {
    fm_sigcache *child;
    uint32_t first, found;
} worker_arg;

/* Adds its own 2000 hashes, then counts how many of the other worker's it finds. */
static void *worker(void *arg)
{
    worker_arg *w = arg;
    uint8_t h[FM_HASH_BYTES];
    for (uint32_t i = 0; i < 2000; i++) {
        hash_of(w->first + i, h);
        fm_sigcache_add(w->child, h);
    }
    for (uint32_t i = 0; i < 4000; i++) {
        hash_of(i, h);
        w->found += fm_sigcache_has(w->child, h);
    }
    return NULL;
}

/* Two threads on one shared parent: nothing lost, and (under TSan) no race. */
static void test_shared_threads(void)
{
    fm_sigcache *p = NULL;
    worker_arg w[2] = {{.first = 0}, {.first = 2000}};
    CHECK_OK(fm_sigcache_new_shared(8192, &p));
    for (int k = 0; k < 2; k++) {
        CHECK_OK(fm_sigcache_new(8192, &w[k].child));
        fm_sigcache_set_parent(w[k].child, p);
    }
    pthread_t t[2];
    for (int k = 0; k < 2; k++)
        CHECK(pthread_create(&t[k], NULL, worker, &w[k]) == 0);
    for (int k = 0; k < 2; k++)
        CHECK(pthread_join(t[k], NULL) == 0);
    CHECK_EQ_INT(fm_sigcache_count(p), 4000);
    uint8_t h[FM_HASH_BYTES];
    for (int k = 0; k < 2; k++) {
        CHECK(w[k].found >= 2000); /* its own at least; the other's as far as added by then */
        uint32_t all = 0;
        for (uint32_t i = 0; i < 4000; i++) {
            hash_of(i, h);
            all += fm_sigcache_has(w[k].child, h);
        }
        CHECK_EQ_INT(all, 4000);
        fm_sigcache_free(w[k].child);
    }
    fm_sigcache_free(p);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(test_add_has);
    RUN(test_bound);
    RUN(test_zero_hash_and_args);
    RUN(test_parent);
    RUN(test_shared_threads);
    TEST_MAIN_END();
}
