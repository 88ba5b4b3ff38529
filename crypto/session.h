/*
 * session.h — the secure session between two devices (DESIGN.md §5) as a sans-I/O state machine:
 * bytes in, bytes out; no sockets, no clock, no randomness of its own (both come from the fm_env
 * given at creation).
 *
 * Handshake (SIGMA-I shape; every message is one length-prefixed record, see frame.h):
 *   msg1  I -> R  ver, 1, e_I, mesh_tag(e_I)
 *   msg2  R -> I  ver, 2, e_R, AEAD_hs_r2i(cert_R, sig_R("R" || transcript || cert_R))
 *   msg3  I -> R  ver, 3,      AEAD_hs_i2r(cert_I, sig_I("I" || transcript || cert_I))
 *   start I -> R  and  R -> I: secretstream header, then an empty message bound to the transcript
 * Identities travel only encrypted, so a passive listener learns none. Fresh ephemerals on both
 * sides make every handshake key unique: a message replayed from another session fails to
 * decrypt. After the handshake each direction is one crypto_secretstream_xchacha20poly1305 stream,
 * which detects tampered, truncated, reordered and duplicated frames.
 *
 * Any error is final: the session is dead (every later call returns the same error, or
 * FM_ECLOSED), its keys are wiped, and it emitted nothing for the input that failed.
 */
#ifndef FM_SESSION_H
#define FM_SESSION_H

#include "crdt/base.h"
#include "crypto/cert.h"

enum {
    FM_SESSION_PROTOCOL = 1,             /* version byte of handshake messages */
    FM_HANDSHAKE_TIMEOUT_MS = 10 * 1000, /* from fm_session_new to established */
    /* A frame carries one sync message; the largest holds one whole batch plus its framing. */
    FM_MAX_FRAME_PAYLOAD = FM_MAX_BATCH_BYTES + 4096,
    FM_FRAME_OVERHEAD = 17, /* crypto_secretstream_xchacha20poly1305_ABYTES */
    FM_MAX_FRAME_BYTES = FM_MAX_FRAME_PAYLOAD + FM_FRAME_OVERHEAD, /* record body on the wire */
    FM_MAX_HANDSHAKE_BYTES = 512, /* record body of any handshake message */
};

typedef enum fm_session_role {
    FM_SESSION_INITIATOR = 0,
    FM_SESSION_RESPONDER = 1,
} fm_session_role;

/* The type is the enum tag; fm_session_state() is the getter. */
enum fm_session_state {
    FM_SESSION_START = 0,   /* initiator, before fm_session_start */
    FM_SESSION_WAIT_MSG1,   /* responder */
    FM_SESSION_WAIT_MSG2,   /* initiator */
    FM_SESSION_WAIT_MSG3,   /* responder */
    FM_SESSION_WAIT_STREAM, /* peer authenticated; waiting for its stream start */
    FM_SESSION_ESTABLISHED, /* frames flow both ways */
    FM_SESSION_CLOSED,      /* peer's final frame received, or fm_session_close */
    FM_SESSION_FAILED,      /* any error; see the return value that caused it */
};

typedef struct fm_session fm_session;

/* A received frame; data is valid only during the call. The callback may call fm_session_send
 * on the same session, not fm_session_input or fm_session_free. */
typedef void (*fm_frame_fn)(void *arg, const uint8_t *data, size_t len);

/* env, id and m are borrowed and must outlive the session; cert (this device's certificate in its
 * canonical encoding) is copied. The handshake clock starts now. Errors: cert decode errors,
 * FM_EMESH / FM_ESIG (cert not from m's mesh authority), FM_EINVAL (cert is for another key, or
 * bad env/role), FM_ENOMEM. */
int fm_session_new(const fm_env *env, const fm_identity *id, const uint8_t *cert, size_t cert_len,
                   const fm_membership *m, fm_session_role role, fm_session **out);
void fm_session_free(fm_session *s);
/* Initiator: appends msg1 to out. FM_ESTATE if not an initiator in FM_SESSION_START. */
int fm_session_start(fm_session *s, fm_buf *out);
/* Feeds received bytes (any chunking). Appends any reply to out and calls fn for each frame
 * received, as soon as it is authenticated. Errors: FM_ETIMEOUT, FM_EVERSION, FM_EDECODE,
 * FM_ELIMIT, FM_EAUTH (decryption failed: tampered, replayed, reordered or duplicated), FM_EMESH,
 * FM_EUNKNOWN_DEVICE, FM_EEXPIRED, FM_EREVOKED, FM_ESIG, cert decode errors, FM_ECLOSED, FM_ENOMEM;
 * FM_ESTATE (session not live, initiator not started: the session is unchanged). */
int fm_session_input(fm_session *s, const uint8_t *in, size_t len, fm_buf *out, fm_frame_fn fn,
                     void *arg);
/* Appends one encrypted frame to out. FM_ESTATE before the session is established, FM_ELIMIT if
 * len > FM_MAX_FRAME_PAYLOAD (both leave the session unchanged). */
int fm_session_send(fm_session *s, const uint8_t *data, size_t len, fm_buf *out);
/* Appends the final frame (if established) and closes; later calls return FM_ECLOSED. */
int fm_session_close(fm_session *s, fm_buf *out);
/* The byte stream ended. 0 after the peer's final frame; FM_ETRUNC if a record was cut short
 * (nothing of it is delivered); FM_ECLOSED otherwise. The session is over either way. */
int fm_session_eof(fm_session *s);
/* Reads the clock: FM_ETIMEOUT once the handshake has run FM_HANDSHAKE_TIMEOUT_MS; else the
 * session's error if it is dead, or 0. */
int fm_session_tick(fm_session *s);
/* When fm_session_tick next has work: the handshake deadline, or UINT64_MAX. */
uint64_t fm_session_deadline(const fm_session *s);
/* Re-checks the peer against the membership view now (a revocation or newer certificate may have
 * arrived since the handshake); an error kills the session. */
int fm_session_recheck(fm_session *s);
enum fm_session_state fm_session_state(const fm_session *s);
/* The authenticated peer's device id / governing certificate; FM_ESTATE before the peer is
 * authenticated or after a failure. */
int fm_session_peer_id(const fm_session *s, uint8_t out[FM_ID_BYTES]);
int fm_session_peer_cert(const fm_session *s, fm_cert *out);

/* Tests only: as fm_session_new without checking that cert is valid and belongs to id, so a test
 * can play an impostor presenting another device's certificate. */
int fm__session_new_nocheck(const fm_env *env, const fm_identity *id, const uint8_t *cert,
                            size_t cert_len, const fm_membership *m, fm_session_role role,
                            fm_session **out);

#endif
