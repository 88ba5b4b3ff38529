/*
 * fuzz_control.c — libFuzzer target for the control socket's request parser (fm_control_parse),
 * the one decoder a local client reaches: never crashes, never reads past its input, and a
 * request that parses re-encodes to exactly the bytes it used.
 */
#include "transport/control.h"

#include "crdt/base.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_control_request req;
    size_t used = 0;
    int rc = fm_control_parse(data, size, &req, &used);
    if (rc != 0) {
        if (req.argv != NULL)
            abort(); /* a failed parse hands out nothing */
        return 0;
    }
    if (used > size || req.argc < 1 || req.argc > FM_CONTROL_MAX_ARGS || req.argv[req.argc])
        abort();
    uint8_t *again = malloc(used);
    if (!again)
        abort();
    size_t off = 4;
    put32(again, (uint32_t)req.argc);
    for (int i = 0; i < req.argc; i++) {
        size_t n = strlen(req.argv[i]);
        if (off + 4 + n > used)
            abort();
        put32(again + off, (uint32_t)n);
        memcpy(again + off + 4, req.argv[i], n);
        off += 4 + n;
    }
    if (off != used || memcmp(again, data, used) != 0)
        abort();
    free(again);
    fm_control_request_free(&req);
    return 0;
}
