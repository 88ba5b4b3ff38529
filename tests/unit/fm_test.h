/*
 * fm_test.h — a tiny test harness: each CHECK prints both sides on failure; a test file is one
 * executable run by ctest, exiting non-zero if any check failed.
 */
#ifndef FM_TEST_H
#define FM_TEST_H

#include "fieldmesh.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fm_test_failures;
static int fm_test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        fm_test_checks++;                                                                          \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        fm_test_checks++;                                                                          \
        if (_a != _b) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK_EQ_INT failed: %s == %s (%lld vs %lld)\n", __FILE__,     \
                    __LINE__, #a, #b, _a, _b);                                                     \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* rc checks print the error text of both sides. */
#define CHECK_RC(a, b)                                                                             \
    do {                                                                                           \
        int _a = (a), _b = (b);                                                                    \
        fm_test_checks++;                                                                          \
        if (_a != _b) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK_RC failed: %s == %s (%d \"%s\" vs %d \"%s\")\n",         \
                    __FILE__, __LINE__, #a, #b, _a, fm_strerror(_a), _b, fm_strerror(_b));         \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define CHECK_OK(a) CHECK_RC(a, 0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *_a = (a), *_b = (b);                                                           \
        fm_test_checks++;                                                                          \
        if (!_a || !_b || strcmp(_a, _b) != 0) {                                                   \
            fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s\n  got:  %s\n  want: %s\n",         \
                    __FILE__, __LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)");           \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define CHECK_MEM(a, b, n)                                                                         \
    do {                                                                                           \
        fm_test_checks++;                                                                          \
        if (memcmp((a), (b), (n)) != 0) {                                                          \
            fprintf(stderr, "%s:%d: CHECK_MEM failed: %s == %s (%zu bytes)\n", __FILE__, __LINE__, \
                    #a, #b, (size_t)(n));                                                          \
            fm_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define RUN(test)                                                                                  \
    do {                                                                                           \
        int _before = fm_test_failures;                                                            \
        test();                                                                                    \
        fprintf(stderr, "%s %s\n", fm_test_failures == _before ? "ok  " : "FAIL", #test);          \
    } while (0)

#define TEST_MAIN_END()                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%d checks, %d failed\n", fm_test_checks, fm_test_failures);               \
        return fm_test_failures ? 1 : 0;                                                           \
    } while (0)

/* A deterministic environment for tests: a settable clock and a seeded xorshift stream. */
typedef struct fm_test_env {
    fm_env env;
    uint64_t now;
    uint64_t rng;
} fm_test_env;

static inline uint64_t fm_test_rand64(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static inline uint64_t fm_test_env_now(void *ctx)
{
    return ((fm_test_env *)ctx)->now;
}

static inline void fm_test_env_random(void *ctx, void *buf, size_t len)
{
    fm_test_env *te = ctx;
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)(fm_test_rand64(&te->rng) >> 24);
}

static inline void fm_test_env_init(fm_test_env *te, uint64_t now, uint64_t seed)
{
    te->env.version = FM_ENV_VERSION;
    te->env.ctx = te;
    te->env.now_ms = fm_test_env_now;
    te->env.random = fm_test_env_random;
    te->now = now;
    te->rng = seed * 0x9e3779b97f4a7c15ull + 1;
}

/* Golden-vector check: the file at path must hold exactly `want` (FM_WRITE_VECTORS=1 rewrites
 * it first, for regenerating vectors after a deliberate format change). */
static inline void fm_test_golden(const char *path, const char *want)
{
    if (getenv("FM_WRITE_VECTORS")) {
        FILE *out = fopen(path, "wb");
        CHECK(out != NULL);
        if (out) {
            fputs(want, out);
            fclose(out);
        }
    }
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    if (!fp)
        return;
    size_t cap = strlen(want) + 2, len = 0, n;
    char *have = malloc(cap);
    while (have && (n = fread(have + len, 1, cap - 1 - len, fp)) > 0)
        len += n;
    fclose(fp);
    if (have)
        have[len] = '\0';
    CHECK_STR(have, want);
    free(have);
}

/* A fresh directory $TMPDIR/fm-test-NAME-XXXXXX (or under /tmp) into dir; exits if none can be
 * made: no test can run without it. */
static inline void fm_test_tmpdir(char *dir, size_t cap, const char *name)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, cap, "%s/fm-test-%s-XXXXXX", base && base[0] ? base : "/tmp", name);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Removes the files in dir (stores, their WAL and SHM files), then dir. */
static inline void fm_test_tmpdir_remove(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        remove(p);
    }
    if (d)
        closedir(d);
    if (remove(dir) != 0)
        perror("remove");
}

#endif
