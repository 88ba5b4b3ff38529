/*
 * simclock.c — the one wall-clock read the simulator may make: how long a run took (wall_ms)
 * and how long its threads waited for each other (wait_ms).
 * It lives outside sim/ so tools/check-determinism.sh keeps sim/ free of clocks; nothing it
 * returns ever reaches a node or the trace.
 */
#include <stdint.h>
#include <time.h>

uint64_t fm_sim_wall_us(void);
uint64_t fm_sim_wall_ms(void);

uint64_t fm_sim_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t fm_sim_wall_ms(void)
{
    return fm_sim_wall_us() / 1000;
}
