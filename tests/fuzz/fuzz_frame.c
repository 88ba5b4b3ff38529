/*
 * fuzz_frame.c — an established session's frame reader on arbitrary bytes. Byte 0 picks the
 * shape: even = the rest goes raw to the responder (chunk size in byte 1, 0 = one call); odd =
 * structured: byte 1 = number of frames the initiator really sends (<= 8), each as a length byte
 * plus payload, then (position, xor) edits on the wire and a cut length, so valid, tampered,
 * truncated and reordered streams all occur.
 */
#include "fuzz_rig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct sink {
    size_t frames;
    size_t bytes;
} sink;

static void on_frame(void *arg, const uint8_t *p, size_t len)
{
    sink *k = arg;
    FM_ASSERT(len <= FM_MAX_FRAME_PAYLOAD);
    k->frames++;
    for (size_t i = 0; i < len; i++)
        k->bytes += p[i]; /* touch every byte: ASan checks the buffer */
}

/* Structured mode: real frames, then edits. Returns the number of frames sent. */
static size_t build_wire(rig *g, const uint8_t **data, size_t *size, fm_buf *wire)
{
    size_t n = *size ? (*data)[0] % 9 : 0, sent = 0;
    (*data)++, (*size)--;
    for (size_t f = 0; f<n && * size> 0; f++) {
        size_t len = FM_MIN((size_t)(*data)[0], *size - 1);
        FM_ASSERT(fm_session_send(g->i.s, *data + 1, len, wire) == 0);
        *data += 1 + len, *size -= 1 + len;
        sent++;
    }
    while (*size >= 3 && wire->len > 0) { /* edits */
        size_t pos = ((size_t)(*data)[0] << 8 | (*data)[1]) % wire->len;
        wire->data[pos] ^= (*data)[2];
        *data += 3, *size -= 3;
    }
    if (*size > 0 && wire->len > 0) /* cut */
        wire->len -= (*data)[0] % (wire->len + 1);
    return sent;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    rig g;
    if (rig_init(&g) != 0)
        FM_ASSERT(!"rig setup failed");
    FM_ASSERT(rig_handshake(&g, 4) == 0);
    FM_ASSERT(fm_session_state(g.r.s) == FM_SESSION_ESTABLISHED);
    sink k = {0, 0};
    int rc;
    if (data[0] % 2 == 0) {
        rc = rig_feed(g.r.s, data + 2, size - 2, data[1], &g.r.out, on_frame, &k);
    } else {
        fm_buf wire;
        fm_buf_init(&wire);
        const uint8_t *p = data + 1;
        size_t n = size - 1;
        size_t sent = build_wire(&g, &p, &n, &wire);
        rc = rig_feed(g.r.s, wire.data, wire.len, 0, &g.r.out, on_frame, &k);
        FM_ASSERT(k.frames <= sent); /* nothing is delivered that was not sent */
        fm_buf_free(&wire);
    }
    FM_ASSERT(g.r.out.len == 0); /* the reader never answers */
    if (rc != 0) {
        FM_ASSERT(fm_session_state(g.r.s) == FM_SESSION_FAILED ||
                  fm_session_state(g.r.s) == FM_SESSION_CLOSED);
        FM_ASSERT(fm_session_input(g.r.s, data, 1, &g.r.out, on_frame, &k) != 0);
    }
    (void)fm_session_eof(g.r.s);
    rig_free(&g);
    return 0;
}
