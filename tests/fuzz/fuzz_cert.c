/*
 * fuzz_cert.c — certificate and revocation decoders and text parsers on arbitrary bytes. Whatever
 * decodes must re-encode to the same bytes (the decoder also asserts this) and survive a text
 * round trip.
 */
#include "crypto/cert.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void cert_roundtrip(const fm_cert *c)
{
    uint8_t enc[FM_MAX_CERT_BYTES];
    size_t len;
    char text[FM_MAX_CERT_TEXT + 1];
    fm_cert back;
    FM_ASSERT(fm_cert_encode(c, enc, &len) == 0);
    FM_ASSERT(fm_cert_to_text(c, text, sizeof text) == 0);
    FM_ASSERT(fm_cert_from_text(text, &back) == 0);
    FM_ASSERT(memcmp(&back, c, sizeof back) == 0);
    (void)fm_cert_verify(c, c->mesh_id, c->not_before);
}

static void rev_roundtrip(const fm_revocation *r)
{
    uint8_t enc[FM_MAX_REVOCATION_BYTES];
    size_t len;
    char text[FM_MAX_REVOCATION_TEXT + 1];
    fm_revocation back;
    FM_ASSERT(fm_revocation_encode(r, enc, &len) == 0);
    FM_ASSERT(fm_revocation_to_text(r, text, sizeof text) == 0);
    FM_ASSERT(fm_revocation_from_text(text, &back) == 0);
    FM_ASSERT(memcmp(&back, r, sizeof back) == 0);
    (void)fm_revocation_verify(r, r->mesh_id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fm_cert c;
    fm_revocation r;
    if (fm_cert_decode(data, size, &c) == 0)
        cert_roundtrip(&c);
    if (fm_revocation_decode(data, size, &r) == 0)
        rev_roundtrip(&r);
    /* the same bytes as text: an exact-size heap copy so ASan sees any overread */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (fm_cert_from_text(text, &c) == 0)
        cert_roundtrip(&c);
    if (fm_revocation_from_text(text, &r) == 0)
        rev_roundtrip(&r);
    free(text);
    return 0;
}
