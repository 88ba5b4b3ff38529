/*
 * sysenv.c — the process environment for the real driver: wall clock and libsodium randomness.
 * The only place outside tests where the deterministic layers' inputs come from the OS.
 */
#include "crdt/base.h"

#include <sodium.h>
#include <time.h>

static uint64_t sys_now_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sys_random(void *ctx, void *buf, size_t len)
{
    (void)ctx;
    FM_ASSERT(sodium_init() >= 0);
    randombytes_buf(buf, len);
}

static const fm_env SYSTEM_ENV = {FM_ENV_VERSION, NULL, sys_now_ms, sys_random};

const fm_env *fm_env_system(void)
{
    return &SYSTEM_ENV;
}
