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

#include <string.h>

_Static_assert(FM_MEMBER_TEXT_MAX > FM_MAX_CERT_TEXT, "member text buffer too small");
_Static_assert(FM_MEMBER_TEXT_MAX > FM_MAX_REVOCATION_TEXT, "member text buffer too small");

#define DAY_MS (24ull * 3600 * 1000)

static int load_member(void *arg, fm_member_kind kind, const uint8_t *data, size_t len)
{
    fm_membership *m = arg;
    if (kind == FM_MEMBER_CERT) {
        fm_cert c;
        return fm_cert_decode(data, len, &c) ? FM_ESTORE : fm_membership_add_cert(m, &c);
    }
    fm_revocation rv;
    return fm_revocation_decode(data, len, &rv) ? FM_ESTORE : fm_membership_add_revocation(m, &rv);
}

int fm__mesh_load(fm_replica *r)
{
    fm_buf id;
    fm_buf_init(&id);
    int rc = fm_store_meta_get(r->store, "mesh_id", &id);
    if (rc == FM_ENOTFOUND) {
        fm_buf_free(&id);
        return 0;
    }
    if (!rc && id.len != FM_ID_BYTES)
        rc = FM_ESTORE;
    if (!rc)
        rc = fm_membership_new(id.data, FM_ADMIT_INSTALLED, &r->mesh);
    if (!rc)
        rc = fm_store_each_member(r->store, load_member, r->mesh);
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

/* Installs a verified certificate (and, when joining, the mesh itself) in one transaction. */
static int install(fm_replica *r, const uint8_t *mesh_id, const fm_cert *c, const fm_revocation *rv)
{
    uint8_t enc[FM_MAX_CERT_BYTES > FM_MAX_REVOCATION_BYTES ? FM_MAX_CERT_BYTES
                                                            : FM_MAX_REVOCATION_BYTES];
    size_t len;
    fm_membership *fresh = NULL;
    int rc = c ? fm_cert_encode(c, enc, &len) : fm_revocation_encode(rv, enc, &len);
    if (!rc && !r->mesh)
        rc = fm_membership_new(mesh_id, FM_ADMIT_INSTALLED, &fresh);
    fm_membership *m = r->mesh ? r->mesh : fresh;
    if (!rc)
        rc = c ? fm_membership_add_cert(m, c) : fm_membership_add_revocation(m, rv);
    if (!rc)
        rc = fm_store_begin(r->store);
    if (rc)
        goto out;
    if (fresh)
        rc = fm_store_meta_set(r->store, "mesh_id", mesh_id, FM_ID_BYTES);
    if (!rc)
        rc = fm_store_put_member(r->store, c ? FM_MEMBER_CERT : FM_MEMBER_REVOCATION,
                                 c ? c->device_id : rv->device_id, enc, len);
    if (!rc)
        rc = fm_store_commit(r->store);
    if (rc) {
        fm_store_rollback(r->store);
        goto out;
    }
    if (fresh)
        r->mesh = fresh, fresh = NULL;
out:
    fm_membership_free(fresh);
    if (rc && r->mesh) {
        /* The view may hold what the store refused: rebuild it from the store. */
        fm_membership_free(r->mesh);
        r->mesh = NULL;
        fm__mesh_load(r);
    }
    return rc;
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
    fm_cert c;
    int rc = fm_cert_issue(authority, mesh, r->device, "authority", FM_PERM_ALL, now,
                           now + days * DAY_MS, now, &c);
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
