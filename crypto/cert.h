/*
 * cert.h — device certificates, revocations and the membership view of one mesh.
 *
 * A mesh is named by its authority's Ed25519 public key (the mesh id). The authority signs device
 * certificates (which admit a device key, with a name, permissions and a validity window) and
 * revocations (which end a device's membership from a given instant on, for good). Both have one
 * canonical msgpack encoding; the signature covers the encoding of the signed body, so a decoder
 * that accepts only canonical bytes gives every record exactly one spelling. Text form for people:
 * "fmcert1:" / "fmrev1:" + unpadded base64url of the encoding, one line.
 *
 * No I/O and no clock: "now" always comes in as an argument (ms since the Unix epoch).
 */
#ifndef FM_CERT_H
#define FM_CERT_H

#include "crdt/base.h"

#define FM_CERT_DOMAIN "fieldmesh-cert-v1"
#define FM_REVOCATION_DOMAIN "fieldmesh-revocation-v1"
#define FM_CERT_TEXT_PREFIX "fmcert1:"
#define FM_REVOCATION_TEXT_PREFIX "fmrev1:"

enum {
    FM_CERT_VERSION = 1,
    FM_PERM_READ = 1 << 0,
    FM_PERM_WRITE = 1 << 1,
    FM_PERM_ALL = FM_PERM_READ | FM_PERM_WRITE,
    FM_MAX_DEVICE_NAME = 64,       /* bytes of UTF-8 */
    FM_MAX_CERT_BYTES = 256,       /* canonical encoding; the largest certificate is 231 bytes */
    FM_MAX_REVOCATION_BYTES = 160, /* the largest revocation is 155 bytes */
    /* "fmcert1:" + unpadded base64 of the encoding, without the terminating NUL */
    FM_MAX_CERT_TEXT = 8 + (FM_MAX_CERT_BYTES * 4 + 2) / 3,
    FM_MAX_REVOCATION_TEXT = 7 + (FM_MAX_REVOCATION_BYTES * 4 + 2) / 3,
    FM_MAX_MEMBERS = 4096,     /* certificates held by one membership view */
    FM_MAX_REVOCATIONS = 4096, /* revocations held by one membership view */
};

/* A device certificate. name is NUL-terminated (no NUL inside: rejected by the decoder). */
typedef struct fm_cert {
    uint8_t version;
    uint8_t mesh_id[FM_ID_BYTES];
    uint8_t device_id[FM_ID_BYTES];
    char name[FM_MAX_DEVICE_NAME + 1];
    uint32_t perms;      /* FM_PERM_* bits, non-zero */
    uint64_t issued_at;  /* ms; orders certificates of one device: the newest governs */
    uint64_t not_before; /* ms; valid for not_before <= now < not_after */
    uint64_t not_after;
    uint8_t sig[FM_SIG_BYTES];
} fm_cert;

/* The authority's record that a device is out of the mesh from effective_ms on. */
typedef struct fm_revocation {
    uint8_t version;
    uint8_t mesh_id[FM_ID_BYTES];
    uint8_t device_id[FM_ID_BYTES];
    uint64_t effective_ms; /* revoked for now >= effective_ms */
    uint64_t issued_at;
    uint8_t sig[FM_SIG_BYTES];
} fm_revocation;

/* ---- certificates ---------------------------------------------------------------------------- */

/* Signs a certificate with the mesh authority's key. authority's public key must equal mesh_id
 * (FM_EMESH otherwise). FM_EINVAL: perms zero or unknown bits, not_before > not_after.
 * FM_ELIMIT: name longer than FM_MAX_DEVICE_NAME. FM_EDECODE: name not UTF-8. */
int fm_cert_issue(const fm_identity *authority, const uint8_t mesh_id[FM_ID_BYTES],
                  const uint8_t device_id[FM_ID_BYTES], const char *name, uint32_t perms,
                  uint64_t not_before, uint64_t not_after, uint64_t issued_at, fm_cert *out);
/* Canonical encoding into out (FM_MAX_CERT_BYTES); *len gets its length. FM_EINVAL if the struct
 * holds values no certificate can have. */
int fm_cert_encode(const fm_cert *c, uint8_t *out, size_t *len);
/* Strict decoder: FM_ETRUNC, FM_ENONCANON, FM_ELIMIT, FM_EVERSION, FM_EDECODE (wrong type,
 * trailing bytes, bad UTF-8, bad field values). Does not check the signature. */
int fm_cert_decode(const uint8_t *in, size_t len, fm_cert *out);
/* NUL-terminated text form into out (FM_MAX_CERT_TEXT + 1). */
int fm_cert_to_text(const fm_cert *c, char *out, size_t cap);
/* Accepts the text form with surrounding blanks/newlines; errors as fm_cert_decode, and
 * FM_EDECODE for a wrong prefix or bad base64. */
int fm_cert_from_text(const char *text, fm_cert *out);

/* Mesh and authority signature only: 0, FM_EMESH, FM_ESIG, FM_EDECODE (unencodable struct). */
int fm_cert_verify_signature(const fm_cert *c, const uint8_t mesh_id[FM_ID_BYTES]);
/* 0 or FM_EEXPIRED (not yet valid, or expired). */
int fm_cert_check_time(const fm_cert *c, uint64_t now_ms);
/* Both of the above: 0, FM_EMESH, FM_ESIG, FM_EEXPIRED, FM_EDECODE. */
int fm_cert_verify(const fm_cert *c, const uint8_t mesh_id[FM_ID_BYTES], uint64_t now_ms);
/* True if the certificate is for this device key. */
bool fm_cert_is_for(const fm_cert *c, const uint8_t device_id[FM_ID_BYTES]);
/* >0 if a supersedes b (later issued_at; ties broken by encoding so the order is total). Both
 * must be for the same device. */
int fm_cert_newer(const fm_cert *a, const fm_cert *b);

/* ---- revocations ----------------------------------------------------------------------------- */

int fm_revocation_issue(const fm_identity *authority, const uint8_t mesh_id[FM_ID_BYTES],
                        const uint8_t device_id[FM_ID_BYTES], uint64_t effective_ms,
                        uint64_t issued_at, fm_revocation *out);
int fm_revocation_encode(const fm_revocation *r, uint8_t *out, size_t *len);
int fm_revocation_decode(const uint8_t *in, size_t len, fm_revocation *out);
int fm_revocation_to_text(const fm_revocation *r, char *out, size_t cap);
int fm_revocation_from_text(const char *text, fm_revocation *out);
/* 0, FM_EMESH, FM_ESIG, FM_EDECODE. */
int fm_revocation_verify(const fm_revocation *r, const uint8_t mesh_id[FM_ID_BYTES]);

/* ---- membership view ------------------------------------------------------------------------- */

/* Who may join a session. PRESENTED: any valid authority-signed certificate the peer presents
 * admits it (offline admission: nobody else needs to have seen the certificate); an installed
 * newer certificate for the same device still governs. INSTALLED: only devices whose certificate
 * was installed here are admitted (an allow-list). */
typedef enum fm_admit_policy {
    FM_ADMIT_PRESENTED = 0,
    FM_ADMIT_INSTALLED = 1,
} fm_admit_policy;

typedef struct fm_membership fm_membership;

int fm_membership_new(const uint8_t mesh_id[FM_ID_BYTES], fm_admit_policy policy,
                      fm_membership **out);
void fm_membership_free(fm_membership *m);
struct fm_sigcache;
/* Authority signatures checked once per cache (borrowed; shared by every view of a process,
 * as the simulator's thousand replicas do): a record whose hash (over its domain and encoding)
 * verified before is not verified again. NULL: verify every time. */
void fm_membership_set_sigcache(fm_membership *m, struct fm_sigcache *c);
void fm_membership_mesh_id(const fm_membership *m, uint8_t out[FM_ID_BYTES]);
/* fm_cert_verify_signature against this view's mesh, through its signature cache if it has one:
 * a session checks its own certificate each time one starts. */
int fm_membership_cert_verify(const fm_membership *m, const fm_cert *c);
/* Verifies mesh and signature (FM_EMESH, FM_ESIG), then keeps the newest certificate per device.
 * An older or equal certificate is ignored and still returns 0, so gossip may repeat itself.
 * FM_ELIMIT past FM_MAX_MEMBERS devices. */
int fm_membership_add_cert(fm_membership *m, const fm_cert *c);
/* Verifies and keeps the earliest revocation per device. Revocation is final: a later certificate
 * for the same key does not undo it (re-admission takes a new device key). */
int fm_membership_add_revocation(fm_membership *m, const fm_revocation *r);
/* Installed state only: 0, FM_EREVOKED, FM_EUNKNOWN_DEVICE, FM_EEXPIRED (checked in that order). */
int fm_membership_check(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES],
                        uint64_t now_ms);
/* A certificate a peer presented: verified (FM_EMESH, FM_ESIG), then revocation (FM_EREVOKED),
 * admission policy (FM_EUNKNOWN_DEVICE), validity of the governing certificate (FM_EEXPIRED). On
 * 0, *effective (if not NULL) gets the governing certificate: the newest of presented and
 * installed. */
int fm_membership_check_cert(const fm_membership *m, const fm_cert *presented, uint64_t now_ms,
                             fm_cert *effective);
/* A device's permissions, granted only if fm_membership_check passes (else its error; *perms = 0).
 */
int fm_membership_perms(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES],
                        uint64_t now_ms, uint32_t *perms);
/* The installed certificate of a device, or NULL; valid until the next add on this view. */
const fm_cert *fm_membership_cert(const fm_membership *m, const uint8_t device_id[FM_ID_BYTES]);
/* The governing (earliest effective) revocation of a device, or NULL; valid until the next add on
 * this view. */
const fm_revocation *fm_membership_revocation(const fm_membership *m,
                                              const uint8_t device_id[FM_ID_BYTES]);

#endif
