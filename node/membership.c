/*
 * membership.c — the replica's mesh: which devices' batches it accepts. Certificates and
 * revocations are authority-signed, so any node may relay them; the store keeps every one
 * installed and the membership view (crypto/cert.c) decides which governs.
 *
 * Batches are judged by their own time (the batch HLC), not by the local clock, so replicas that
 * hold the same certificates and revocations accept the same batches: acceptance must not depend
 * on when a batch happens to arrive. Expiry therefore limits sessions (crypto/session.c), while
 * revocation limits data from its effective instant on.
 */
#include "crdt/hlc.h"
#include "crypto/cert.h"
#include "crypto/identity.h"
#include "node/replica.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FM_MEMBER_TEXT_MAX > FM_MAX_CERT_TEXT, "member text buffer too small");
_Static_assert(FM_MEMBER_TEXT_MAX > FM_MAX_REVOCATION_TEXT, "member text buffer too small");

#define DAY_MS (24ull * 3600 * 1000)

/* ---- the installed records' hashes -------------------------------------------------------
 * Sorted, so the digest is over a canonical order; kept in step with the store (rebuilt from it
 * with the view after a failed install). */

static void hashes_reset(fm_replica *r)
{
    r->nmember_hash = 0;
    r->member_digest_ok = false;
}

/* Adds the hash of one record's encoding (a no-op if present). */
static int hashes_add(fm_replica *r, const uint8_t *data, size_t len)
{
    uint8_t h[FM_HASH_BYTES];
    crypto_generichash(h, sizeof h, data, len, NULL, 0);
    uint32_t lo = 0, hi = r->nmember_hash;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = memcmp(r->member_hash[mid], h, FM_HASH_BYTES);
        if (c == 0)
            return 0;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (fm_grow((void **)&r->member_hash, r->nmember_hash, &r->cmember_hash, FM_HASH_BYTES))
        return FM_ENOMEM;
    memmove(r->member_hash[lo + 1], r->member_hash[lo], (r->nmember_hash - lo) * FM_HASH_BYTES);
    memcpy(r->member_hash[lo], h, FM_HASH_BYTES);
    r->nmember_hash++;
    r->member_digest_ok = false;
    return 0;
}

int fm__replica_member_digest(fm_replica *r, uint8_t out[FM_HASH_BYTES], uint32_t *count)
{
    if (!r || !out)
        return FM_EINVAL;
    if (!r->member_digest_ok) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, FM_HASH_BYTES);
        for (uint32_t i = 0; i < r->nmember_hash; i++)
            crypto_generichash_update(&st, r->member_hash[i], FM_HASH_BYTES);
        crypto_generichash_final(&st, r->member_digest, FM_HASH_BYTES);
        r->member_digest_ok = true;
    }
    memcpy(out, r->member_digest, FM_HASH_BYTES);
    if (count)
        *count = r->nmember_hash;
    return 0;
}

uint64_t fm__replica_member_epoch(const fm_replica *r)
{
    return r->member_epoch;
}

/* ---- loading --------------------------------------------------------------------------------- */

static int load_member(void *arg, fm_member_kind kind, const uint8_t *data, size_t len)
{
    fm_replica *r = arg;
    int rc;
    if (kind == FM_MEMBER_CERT) {
        fm_cert c;
        rc = fm_cert_decode(data, len, &c) ? FM_ESTORE : fm_membership_add_cert(r->mesh, &c);
    } else {
        fm_revocation rv;
        rc = fm_revocation_decode(data, len, &rv) ? FM_ESTORE
                                                  : fm_membership_add_revocation(r->mesh, &rv);
    }
    return rc ? rc : hashes_add(r, data, len);
}

void fm__mesh_free(fm_replica *r)
{
    fm_membership_free(r->mesh);
    r->mesh = NULL;
    free(r->member_hash);
    r->member_hash = NULL;
    r->nmember_hash = r->cmember_hash = 0;
    r->member_digest_ok = false;
}

int fm__mesh_load(fm_replica *r)
{
    hashes_reset(r);
    fm_buf id;
    fm_buf_init(&id);
    int rc = fm_store_meta_get(r->store, "mesh_id", &id);
    if (rc == FM_ENOTFOUND) {
        fm_buf_free(&id);
        return 0;
    }
    if (!rc && id.len != FM_ID_BYTES)
        rc = FM_ESTORE;
    /* Offline admission: a session admits any device presenting a valid certificate of the
     * authority. Its batches are accepted once the certificate is installed, which the node
     * does after the handshake and membership gossip does everywhere else. */
    if (!rc)
        rc = fm_membership_new(id.data, FM_ADMIT_PRESENTED, &r->mesh);
    if (!rc)
        fm_membership_set_sigcache(r->mesh, r->sigcache);
    if (!rc)
        rc = fm_store_each_member(r->store, load_member, r);
    fm_buf_free(&id);
    return rc;
}

int fm__mesh_check_batch(fm_replica *r, const fm_batch *b)
{
    if (!r->mesh)
        return 0;
    uint32_t perms = 0;
    int rc = fm_membership_perms(r->mesh, b->author, fm_hlc_ms(b->hlc), &perms);
    if (rc == FM_EEXPIRED) {
        /* Outside its certificate's window by the batch's own clock: still the author's data. */
        const fm_cert *c = fm_membership_cert(r->mesh, b->author);
        FM_ASSERT(c);
        perms = c->perms, rc = 0;
    }
    if (rc)
        return rc;
    return perms & FM_PERM_WRITE ? 0 : FM_EPERM;
}

int fm__mesh_check_local(fm_replica *r)
{
    if (!r->mesh)
        return 0;
    fm_batch self = {0};
    memcpy(self.author, r->device, FM_ID_BYTES);
    self.hlc = (r->env->now_ms(r->env->ctx)) << FM_HLC_LOGICAL_BITS;
    return fm__mesh_check_batch(r, &self);
}

int fm_replica_mesh(fm_replica *r, uint8_t mesh_id[FM_ID_BYTES])
{
    if (!r || !r->mesh)
        return r ? FM_ENOTFOUND : FM_EINVAL;
    fm_membership_mesh_id(r->mesh, mesh_id);
    return 0;
}

/* ---- installing ------------------------------------------------------------------------------ */

/* Adds one certificate or revocation (exactly one of c, rv) to view m, which verifies it
 * (FM_EMESH, FM_ESIG; FM_ELIMIT past a view bound: nothing changed then), and then to the store
 * inside the caller's transaction and to the hashes. 1 if the store did not hold it yet, 0 if it
 * did, or a negative code. */
static int install_one(fm_replica *r, fm_membership *m, const fm_cert *c, const fm_revocation *rv)
{
    FM_ASSERT(!c != !rv);
    uint8_t enc[FM_MAX_CERT_BYTES > FM_MAX_REVOCATION_BYTES ? FM_MAX_CERT_BYTES
                                                            : FM_MAX_REVOCATION_BYTES];
    size_t len;
    int rc = c ? fm_cert_encode(c, enc, &len) : fm_revocation_encode(rv, enc, &len);
    if (!rc)
        rc = c ? fm_membership_add_cert(m, c) : fm_membership_add_revocation(m, rv);
    if (!rc)
        rc = fm_store_put_member(r->store, c ? FM_MEMBER_CERT : FM_MEMBER_REVOCATION,
                                 c ? c->device_id : rv->device_id, enc, len);
    if (rc == 1 && (rc = hashes_add(r, enc, len)) == 0)
        rc = 1;
    return rc;
}

/* After a revocation was new to the store (inside the install transaction; rv NULL: a
 * certificate, nothing to do): what the replica holds of its device follows the view at once, so
 * acceptance does not depend on arrival order. *enforced is set if the data may have changed.
 * A newer certificate without write also refuses a device's batches, all of them; rolling those
 * back would erase writes made while it could write, so that stays as it was. */
static int enforce(fm_replica *r, const fm_revocation *rv, bool *enforced)
{
    if (!r->mesh || !rv)
        return 0;
    *enforced = true;
    return fm__revocation_enforce(r, rv->device_id);
}

/* Ends an install transaction: commits (the epoch moves if anything was new), or rolls back and
 * rebuilds the view and the hashes from the store, which may hold less than they do now. When an
 * install was enforced on the data, the state is flushed with the commit (or reloaded). */
static int install_finish(fm_replica *r, int rc, uint32_t added, bool enforced)
{
    if (enforced)
        rc = fm__replica_finish_members(r, rc);
    else if (!rc)
        rc = fm_store_commit(r->store);
    if (!rc) {
        r->member_epoch += added > 0;
        return 0;
    }
    fm_store_rollback(r->store);
    hashes_reset(r);
    if (r->mesh) {
        fm_membership_free(r->mesh);
        r->mesh = NULL;
        fm__mesh_load(r);
    }
    return rc;
}

/* Installs a verified certificate or revocation (and, when joining, the mesh itself) in one
 * transaction. */
static int install(fm_replica *r, const uint8_t *mesh_id, const fm_cert *c, const fm_revocation *rv)
{
    fm_membership *fresh = NULL;
    int rc = r->mesh ? 0 : fm_membership_new(mesh_id, FM_ADMIT_PRESENTED, &fresh);
    if (!rc)
        rc = fm__replica_begin(r);
    if (rc) {
        fm_membership_free(fresh);
        return rc;
    }
    if (fresh)
        rc = fm_store_meta_set(r->store, "mesh_id", mesh_id, FM_ID_BYTES);
    if (!rc)
        rc = install_one(r, r->mesh ? r->mesh : fresh, c, rv);
    uint32_t added = rc == 1 || fresh;
    bool enforced = false;
    if (rc == 1)
        rc = enforce(r, rv, &enforced);
    rc = install_finish(r, rc < 0 ? rc : 0, added, enforced);
    if (!rc && fresh)
        r->mesh = fresh, fresh = NULL;
    if (r->mesh)
        fm_membership_set_sigcache(r->mesh, r->sigcache);
    fm_membership_free(fresh);
    return rc;
}

/* One binary record: a certificate or a revocation (strict decoders: one spelling each). */
static int decode_member(const fm_bytes *rec, fm_cert *c, fm_revocation *rv, bool *is_cert)
{
    if (!rec->data)
        return FM_EDECODE;
    *is_cert = fm_cert_decode(rec->data, rec->len, c) == 0;
    if (*is_cert)
        return 0;
    return fm_revocation_decode(rec->data, rec->len, rv) ? FM_EDECODE : 0;
}

int fm__replica_import_members(fm_replica *r, const fm_bytes *recs, size_t n)
{
    if (!r || (n && !recs))
        return FM_EINVAL;
    if (!r->mesh)
        return FM_ENOTFOUND;
    int rc = fm__replica_begin(r);
    if (rc)
        return rc;
    uint32_t added = 0, skipped = 0;
    bool enforced = false;
    for (size_t i = 0; i < n && rc >= 0; i++) {
        fm_cert c;
        fm_revocation rv;
        bool is_cert;
        rc = decode_member(&recs[i], &c, &rv, &is_cert);
        if (!rc)
            rc = install_one(r, r->mesh, is_cert ? &c : NULL, is_cert ? NULL : &rv);
        if (rc == 1) {
            added++;
            /* Any failure here is the store's or memory's: never a skipped record. */
            rc = enforce(r, is_cert ? NULL : &rv, &enforced);
            rc = rc < 0 ? rc : 1;
        } else if (rc == FM_EDECODE || rc == FM_EMESH || rc == FM_ESIG || rc == FM_ELIMIT) {
            skipped++, rc = 0;
        }
    }
    if ((rc = install_finish(r, rc < 0 ? rc : 0, added, enforced)))
        return rc;
    r->members_skipped += skipped;
    return (int)added;
}

typedef struct each_bin_ctx {
    int (*fn)(void *arg, const uint8_t *rec, size_t len);
    void *arg;
} each_bin_ctx;

static int each_bin(void *arg, fm_member_kind kind, const uint8_t *data, size_t len)
{
    (void)kind;
    each_bin_ctx *x = arg;
    return x->fn(x->arg, data, len);
}

int fm__replica_each_member_bin(fm_replica *r, int (*fn)(void *arg, const uint8_t *rec, size_t len),
                                void *arg)
{
    if (!r || !fn)
        return FM_EINVAL;
    each_bin_ctx x = {fn, arg};
    return fm_store_each_member(r->store, each_bin, &x);
}

int fm_replica_mesh_create(fm_replica *r, const fm_identity *authority, uint32_t days)
{
    if (!r || !authority || days == 0)
        return FM_EINVAL;
    if (r->mesh)
        return FM_EEXISTS;
    uint8_t mesh[FM_ID_BYTES];
    fm_identity_public(authority, mesh);
    uint64_t now = r->env->now_ms(r->env->ctx);
    /* The device's own certificate carries the name it was made with (`init --name`). */
    char name[FM_MAX_DEVICE_NAME + 1] = "authority";
    fm_buf nm;
    fm_buf_init(&nm);
    if (fm_store_meta_get(r->store, "name", &nm) == 0 && nm.len && nm.len <= FM_MAX_DEVICE_NAME)
        snprintf(name, sizeof name, "%.*s", (int)nm.len, (const char *)nm.data);
    fm_buf_free(&nm);
    fm_cert c;
    int rc = fm_cert_issue(authority, mesh, r->device, name, FM_PERM_ALL, now, now + days * DAY_MS,
                           now, &c);
    return rc ? rc : install(r, mesh, &c, NULL);
}

int fm_mesh_admit(const fm_env *env, const fm_identity *authority,
                  const uint8_t device[FM_ID_BYTES], const char *name, uint32_t days, int flags,
                  char *out, size_t cap)
{
    if (!authority || !device || !name || !out || days == 0)
        return FM_EINVAL;
    env = env ? env : fm_env_system();
    uint8_t mesh[FM_ID_BYTES];
    fm_identity_public(authority, mesh);
    uint64_t now = env->now_ms(env->ctx);
    uint32_t perms = flags & FM_MESH_READ_ONLY ? FM_PERM_READ : FM_PERM_ALL;
    fm_cert c;
    int rc = fm_cert_issue(authority, mesh, device, name, perms, now, now + days * DAY_MS, now, &c);
    return rc ? rc : fm_cert_to_text(&c, out, cap);
}

int fm_replica_join(fm_replica *r, const char *cert_text)
{
    if (!r || !cert_text)
        return FM_EINVAL;
    fm_cert c;
    int rc = fm_cert_from_text(cert_text, &c);
    if (rc)
        return rc;
    if (r->mesh) {
        uint8_t mine[FM_ID_BYTES];
        fm_membership_mesh_id(r->mesh, mine);
        if (memcmp(mine, c.mesh_id, FM_ID_BYTES) != 0)
            return FM_EMESH;
    }
    if ((rc = fm_cert_verify(&c, c.mesh_id, r->env->now_ms(r->env->ctx))))
        return rc;
    if (!fm_cert_is_for(&c, r->device))
        return FM_EINVAL;
    return install(r, c.mesh_id, &c, NULL);
}

int fm_replica_revoke(fm_replica *r, const fm_identity *authority,
                      const uint8_t device[FM_ID_BYTES], char *out, size_t cap)
{
    if (!r || !authority || !device || !out)
        return FM_EINVAL;
    uint8_t mesh[FM_ID_BYTES], auth[FM_ID_BYTES];
    if (!r->mesh)
        return FM_ENOTFOUND;
    fm_membership_mesh_id(r->mesh, mesh);
    fm_identity_public(authority, auth);
    if (memcmp(mesh, auth, FM_ID_BYTES) != 0)
        return FM_EMESH;
    uint64_t now = r->env->now_ms(r->env->ctx);
    fm_revocation rv;
    int rc = fm_revocation_issue(authority, mesh, device, now, now, &rv);
    if (!rc)
        rc = install(r, mesh, NULL, &rv);
    return rc ? rc : fm_revocation_to_text(&rv, out, cap);
}

int fm_replica_import_member(fm_replica *r, const char *text)
{
    if (!r || !text)
        return FM_EINVAL;
    if (!r->mesh)
        return FM_ENOTFOUND;
    uint8_t mesh[FM_ID_BYTES];
    fm_membership_mesh_id(r->mesh, mesh);
    fm_cert c;
    fm_revocation rv;
    int rc = fm_cert_from_text(text, &c);
    if (rc == 0)
        return (rc = fm_cert_verify_signature(&c, mesh)) ? rc : install(r, mesh, &c, NULL);
    if ((rc = fm_revocation_from_text(text, &rv)))
        return rc;
    return (rc = fm_revocation_verify(&rv, mesh)) ? rc : install(r, mesh, NULL, &rv);
}

typedef struct members_ctx {
    fm_name_fn fn;
    void *arg;
} members_ctx;

static int member_text(void *arg, fm_member_kind kind, const uint8_t *data, size_t len)
{
    members_ctx *x = arg;
    char text[FM_MEMBER_TEXT_MAX];
    fm_cert c;
    fm_revocation rv;
    int rc = kind == FM_MEMBER_CERT
                 ? (fm_cert_decode(data, len, &c) ?: fm_cert_to_text(&c, text, sizeof text))
                 : (fm_revocation_decode(data, len, &rv)
                        ?: fm_revocation_to_text(&rv, text, sizeof text));
    return rc ? FM_ESTORE : x->fn(x->arg, text);
}

int fm_replica_members(fm_replica *r, fm_name_fn fn, void *arg)
{
    if (!r || !fn)
        return FM_EINVAL;
    members_ctx x = {fn, arg};
    return fm_store_each_member(r->store, member_text, &x);
}
