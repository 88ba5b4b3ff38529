/* test_mesh.c — mesh membership at the replica: who may write, and when. */
#include "fm_test.h"

#define DAY 86400000ull
#define T0 1750000000000ull

typedef struct dev {
    fm_identity *id;
    uint8_t key[FM_ID_BYTES];
    fm_replica *r;
} dev;

static fm_test_env TE;

static void dev_open(dev *d, uint8_t seed)
{
    uint8_t s[32] = {seed, 0x77};
    CHECK_OK(fm_identity_from_seed(s, &d->id));
    fm_identity_public(d->id, d->key);
    fm_replica_config cfg = {
        .version = FM_REPLICA_CONFIG_VERSION, .identity = d->id, .env = &TE.env};
    CHECK_OK(fm_replica_open(&cfg, &d->r));
}

static void dev_close(dev *d)
{
    fm_replica_close(d->r);
    fm_identity_free(d->id);
}

static int write_one(dev *d, const char *field, int64_t v)
{
    fm_txn *t;
    int rc = fm_txn_begin(d->r, "notes", &t);
    if (rc)
        return rc;
    if ((rc = fm_txn_set(t, "n1", field, FM_KIND_LWW, fm_value_int(v)))) {
        fm_txn_abort(t);
        return rc;
    }
    return fm_txn_commit(t);
}

typedef struct grab {
    fm_bytes b[16];
    size_t n;
} grab;

static int grab_fn(void *arg, const uint8_t *p, size_t len)
{
    grab *g = arg;
    if (g->n == 16)
        return FM_ELIMIT;
    g->b[g->n].data = malloc(len);
    memcpy(g->b[g->n].data, p, len);
    g->b[g->n++].len = len;
    return 0;
}

static void grab_free(grab *g)
{
    for (size_t i = 0; i < g->n; i++)
        fm_bytes_free(&g->b[i]);
    g->n = 0;
}

/* Everything `from` holds, offered to `to`; returns the per-batch result of the last one. */
static int offer_all(dev *to, dev *from, int *applied)
{
    grab g = {0};
    int results[16];
    CHECK_OK(fm_replica_export(from->r, "notes", NULL, 0, grab_fn, &g));
    int n = fm_replica_ingest(to->r, g.b, g.n, results);
    *applied = n;
    int last = g.n ? results[g.n - 1] : 0;
    grab_free(&g);
    return last;
}

static uint64_t ops_of(dev *d)
{
    fm_status s;
    CHECK_OK(fm_replica_status(d->r, &s));
    return s.ops;
}

static void test_admission(void)
{
    fm_test_env_init(&TE, T0, 1);
    dev auth, ann, ro, stranger, fresh;
    dev_open(&auth, 1);
    dev_open(&ann, 2);
    dev_open(&ro, 3);
    dev_open(&stranger, 4);
    dev_open(&fresh, 5);
    fm_identity *mesh_key;
    uint8_t seed[32] = {99};
    CHECK_OK(fm_identity_from_seed(seed, &mesh_key));
    CHECK_OK(fm_replica_mesh_create(auth.r, mesh_key, 365));
    CHECK_RC(fm_replica_mesh_create(auth.r, mesh_key, 365), FM_EEXISTS);
    uint8_t mesh[FM_ID_BYTES], got[FM_ID_BYTES];
    fm_identity_public(mesh_key, mesh);
    CHECK_OK(fm_replica_mesh(auth.r, got));
    CHECK_MEM(got, mesh, FM_ID_BYTES);
    CHECK_RC(fm_replica_mesh(ann.r, got), FM_ENOTFOUND);

    char ann_cert[FM_MEMBER_TEXT_MAX], ro_cert[FM_MEMBER_TEXT_MAX];
    CHECK_OK(fm_mesh_admit(&TE.env, mesh_key, ann.key, "ann", 30, 0, ann_cert, sizeof ann_cert));
    CHECK_OK(fm_mesh_admit(&TE.env, mesh_key, ro.key, "ro", 30, FM_MESH_READ_ONLY, ro_cert,
                           sizeof ro_cert));
    /* Joining: only with one's own certificate. */
    CHECK_RC(fm_replica_join(ro.r, ann_cert), FM_EINVAL);
    CHECK_RC(fm_replica_mesh(ro.r, got), FM_ENOTFOUND);
    CHECK_OK(fm_replica_join(ann.r, ann_cert));
    CHECK_OK(fm_replica_join(ro.r, ro_cert));
    CHECK_OK(fm_replica_import_member(auth.r, ann_cert));
    CHECK_OK(fm_replica_import_member(auth.r, ro_cert));
    CHECK_OK(fm_replica_import_member(auth.r, ro_cert));                 /* gossip repeats itself */
    CHECK_RC(fm_replica_import_member(fresh.r, ann_cert), FM_ENOTFOUND); /* fresh: no mesh yet */

    int applied;
    CHECK_OK(write_one(&ann, "a", 1));
    CHECK_RC(offer_all(&auth, &ann, &applied), 0);
    CHECK_EQ_INT(applied, 1);
    /* A read-only member cannot write, even offline. */
    CHECK_RC(write_one(&ro, "r", 1), FM_EPERM);
    CHECK_EQ_INT(ops_of(&ro), 0);
    /* A device outside the mesh writes happily in its own (open) replica, but the mesh refuses
     * its batches, and nothing of them is stored. */
    CHECK_OK(write_one(&stranger, "s", 1));
    uint64_t before = ops_of(&auth);
    CHECK_RC(offer_all(&auth, &stranger, &applied), FM_EUNKNOWN_DEVICE);
    CHECK_EQ_INT(applied, 0);
    CHECK_EQ_INT(ops_of(&auth), before);

    /* Revocation: ann's batches from the revocation instant on are refused; earlier ones, even
     * relayed later, still count. */
    char rev[FM_MEMBER_TEXT_MAX];
    CHECK_RC(fm_replica_revoke(ann.r, ann.id, ro.key, rev, sizeof rev), FM_EMESH);
    TE.now = T0 + 1000;
    CHECK_OK(write_one(&ann, "b", 2)); /* before the revocation */
    TE.now = T0 + 2000;
    CHECK_OK(fm_replica_revoke(auth.r, mesh_key, ann.key, rev, sizeof rev));
    TE.now = T0 + 3000;
    CHECK_OK(write_one(&ann, "c", 3)); /* after: ann has not heard of it */
    CHECK_RC(fm_replica_join(fresh.r, ann_cert), FM_EINVAL);
    char fresh_cert[FM_MEMBER_TEXT_MAX];
    CHECK_OK(
        fm_mesh_admit(&TE.env, mesh_key, fresh.key, "fresh", 30, 0, fresh_cert, sizeof fresh_cert));
    CHECK_OK(fm_replica_join(fresh.r, fresh_cert));
    CHECK_OK(fm_replica_import_member(fresh.r, ann_cert));
    CHECK_OK(fm_replica_import_member(fresh.r, rev));
    CHECK_RC(offer_all(&fresh, &ann, &applied), FM_EREVOKED);
    CHECK_EQ_INT(applied, 2);
    CHECK_EQ_INT(ops_of(&fresh), 2);

    /* Bad certificates: tampered, garbage, expired, another mesh. */
    char bad[FM_MEMBER_TEXT_MAX];
    snprintf(bad, sizeof bad, "%s", fresh_cert);
    bad[40] = bad[40] == 'A' ? 'B' : 'A';
    CHECK(fm_replica_join(fresh.r, bad) < 0);
    CHECK(fm_replica_join(fresh.r, "fmcert1:@@@") < 0);
    CHECK(fm_replica_join(fresh.r, "hello") < 0);
    TE.now = T0 + 31 * DAY;
    CHECK_RC(fm_replica_join(fresh.r, fresh_cert), FM_EEXPIRED);
    fm_identity *other_key;
    seed[0] = 98;
    CHECK_OK(fm_identity_from_seed(seed, &other_key));
    char other[FM_MEMBER_TEXT_MAX];
    CHECK_OK(fm_mesh_admit(&TE.env, other_key, fresh.key, "x", 30, 0, other, sizeof other));
    CHECK_RC(fm_replica_join(fresh.r, other), FM_EMESH);
    CHECK_RC(fm_replica_import_member(fresh.r, other), FM_EMESH);

    fm_identity_free(other_key);
    fm_identity_free(mesh_key);
    dev_close(&auth);
    dev_close(&ann);
    dev_close(&ro);
    dev_close(&stranger);
    dev_close(&fresh);
}

int main(void)
{
    RUN(test_admission);
    TEST_MAIN_END();
}
