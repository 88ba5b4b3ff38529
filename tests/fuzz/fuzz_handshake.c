/*
 * fuzz_handshake.c — arbitrary bytes as handshake input at each step: byte 0 picks the state of
 * the session under attack (0 responder waiting for msg1, 1 initiator waiting for msg2,
 * 2 responder waiting for msg3, 3 initiator waiting for the responder's stream start), byte 1
 * the chunk size (0: one call). The rig is deterministic, so recorded handshake bytes in the
 * corpus are valid and mutations reach the checks behind the AEAD.
 */
#include "fuzz_rig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_frame(void *arg, const uint8_t *p, size_t len)
{
    (void)arg, (void)p, (void)len;
}

/* Whatever the state the input left, the session must still answer every call sanely. */
static void poke(fm_session *s, int rc_input)
{
    fm_buf out;
    uint8_t id[FM_ID_BYTES];
    fm_buf_init(&out);
    int state = fm_session_state(s);
    FM_ASSERT(rc_input == 0 || state == FM_SESSION_FAILED || state == FM_SESSION_CLOSED ||
              rc_input == FM_ESTATE);
    FM_ASSERT((fm_session_peer_id(s, id) == 0) ==
              (state >= FM_SESSION_WAIT_STREAM && state != FM_SESSION_FAILED));
    if (state == FM_SESSION_ESTABLISHED)
        FM_ASSERT(fm_session_send(s, (const uint8_t *)"ping", 4, &out) == 0);
    (void)fm_session_tick(s);
    (void)fm_session_close(s, &out);
    (void)fm_session_eof(s);
    fm_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int mode = data[0] % 4;
    size_t chunk = data[1];
    rig g;
    if (rig_init(&g) != 0)
        FM_ASSERT(!"rig setup failed");
    fm_session *target = mode % 2 == 0 ? g.r.s : g.i.s;
    fm_buf *out = mode % 2 == 0 ? &g.r.out : &g.i.out;
    if (mode > 0)
        FM_ASSERT(rig_handshake(&g, mode - 1) == 0);
    fm_buf_reset(&g.i.out);
    fm_buf_reset(&g.r.out);
    int rc = rig_feed(target, data + 2, size - 2, chunk, out, on_frame, NULL);
    if (rc != 0)
        FM_ASSERT(out->len == 0 || chunk != 0); /* a failing call emits nothing */
    poke(target, rc);
    rig_free(&g);
    return 0;
}
