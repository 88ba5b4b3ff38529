/*
 * fuzz_vv.c — libFuzzer target for fm_vv_decode: never crashes, and whatever decodes is canonical
 * (sorted unique authors, seqs > 0, within FM_MAX_VV_ENTRIES) and re-encodes to the input bytes.
 */
#include "crdt/vv.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_vv v;
    fm_vv_init(&v);
    if (fm_vv_decode(data, size, &v) == 0) {
        if (v.n > FM_MAX_VV_ENTRIES)
            abort();
        for (uint32_t i = 0; i < v.n; i++)
            if (v.e[i].seq == 0 || (i && memcmp(v.e[i - 1].author, v.e[i].author, 32) >= 0))
                abort();
        fm_buf out;
        fm_buf_init(&out);
        if (fm_vv_encode(&v, &out) != 0 || out.len != size || memcmp(out.data, data, size) != 0)
            abort();
        if (fm_vv_compare(&v, &v) != FM_VV_EQUAL)
            abort();
        fm_buf_free(&out);
    }
    fm_vv_free(&v);
    return 0;
}
