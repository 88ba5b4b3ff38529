/* frame.c — length-prefixed records: the incremental reader and the header writer. */
#include "crypto/frame.h"

#include <string.h>

void fm_frame_reader_init(fm_frame_reader *r)
{
    memset(r, 0, sizeof *r);
    fm_buf_init(&r->body);
}

void fm_frame_reader_free(fm_frame_reader *r)
{
    fm_buf_free(&r->body);
    fm_frame_reader_init(r);
}

static int take_header(fm_frame_reader *r, size_t max)
{
    uint32_t n = (uint32_t)r->hdr[0] << 24 | (uint32_t)r->hdr[1] << 16 | (uint32_t)r->hdr[2] << 8 |
                 r->hdr[3];
    if (n == 0)
        return FM_EDECODE;
    if (n > max)
        return FM_ELIMIT;
    r->need = n;
    return fm_buf_reserve(&r->body, n);
}

int fm_frame_reader_feed(fm_frame_reader *r, const uint8_t *in, size_t len, size_t max,
                         size_t *used, bool *done)
{
    size_t u = 0;
    *done = false;
    *used = 0;
    FM_ASSERT(r->need == 0 || r->body.len < r->need); /* the last record was taken */
    while (r->hdr_have < FM_RECORD_HEADER_BYTES && u < len)
        r->hdr[r->hdr_have++] = in[u++];
    if (r->hdr_have < FM_RECORD_HEADER_BYTES) {
        *used = u;
        return 0;
    }
    if (r->need == 0) {
        int rc = take_header(r, max);
        if (rc)
            return rc;
    }
    size_t take = FM_MIN(r->need - r->body.len, len - u);
    int rc = fm_buf_append(&r->body, in + u, take);
    FM_ASSERT(rc == 0); /* reserved in take_header */
    *used = u + take;
    *done = r->body.len == r->need;
    return 0;
}

void fm_frame_reader_next(fm_frame_reader *r)
{
    r->hdr_have = 0;
    r->need = 0;
    fm_buf_recycle(&r->body, FM_FRAME_KEEP_BYTES);
}

size_t fm_frame_reader_pending(const fm_frame_reader *r)
{
    return r->hdr_have + r->body.len;
}

int fm_frame_put_header(fm_buf *out, size_t len)
{
    FM_ASSERT(len <= UINT32_MAX);
    uint8_t h[FM_RECORD_HEADER_BYTES] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
                                         (uint8_t)(len >> 8), (uint8_t)len};
    return fm_buf_append(out, h, sizeof h);
}
