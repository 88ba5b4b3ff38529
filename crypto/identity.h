/*
 * identity.h — device identity internals: signing and verification with domain separation.
 * The secret key lives in sodium_malloc'd memory and is wiped on free.
 */
#ifndef FM_IDENTITY_H
#define FM_IDENTITY_H

#include "crdt/base.h"

/* Signs domain || msg. Domain strings keep a signature for one purpose from being valid for
 * another (a batch signature is never a valid certificate signature). */
void fm_identity_sign(const fm_identity *id, const char *domain, const uint8_t *msg, size_t len,
                      uint8_t sig[FM_SIG_BYTES]);
/* 0 or FM_ESIG. */
int fm_sig_verify(const uint8_t pub[FM_ID_BYTES], const char *domain, const uint8_t *msg,
                  size_t len, const uint8_t sig[FM_SIG_BYTES]);
/* A copy (for handles that keep their own). */
int fm_identity_dup(const fm_identity *id, fm_identity **out);
/* The 64-byte libsodium secret key (seed || public); borrowed. */
const uint8_t *fm_identity_secret(const fm_identity *id);

#endif
