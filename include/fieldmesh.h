/*
 * fieldmesh.h — the one public header of libfieldmesh.
 *
 * A replica holds collections of records of typed fields (lww, mv, counter, set) and replicates
 * them as signed, hash-chained batches ("feeds", one per author and collection). All handles are
 * opaque; every open has a close and every buffer handed out has an fm_*_free(). Functions return 0
 * on success and a negative FM_E* code on failure; a failed call leaves no partial state.
 *
 * Ownership: the caller owns its inputs (the library copies what it keeps). Borrowed results say
 * how long they stay valid.
 */
#ifndef FIELDMESH_H
#define FIELDMESH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FM_API __attribute__((visibility("default")))
#else
#define FM_API
#endif

#define FM_VERSION_STRING "0.1.0"

/* Error codes: appended, never renumbered. */
#define FM_ERRORS(X)                                                                               \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(LIMIT, -2, "limit reached")                                                                  \
    X(AUTH, -3, "authentication failed")                                                           \
    X(INVAL, -4, "invalid argument")                                                               \
    X(DECODE, -5, "malformed encoding")                                                            \
    X(TRUNC, -6, "truncated input")                                                                \
    X(NONCANON, -7, "non-canonical encoding")                                                      \
    X(IO, -8, "input/output error")                                                                \
    X(STORE, -9, "store error")                                                                    \
    X(SCHEMA, -10, "store schema is newer than this program or foreign")                           \
    X(NOTFOUND, -11, "not found")                                                                  \
    X(EXISTS, -12, "already exists")                                                               \
    X(SIG, -13, "bad signature")                                                                   \
    X(CHAIN, -14, "feed hash chain broken")                                                        \
    X(FORK, -15, "author forked its feed")                                                         \
    X(GAP, -16, "batch does not follow its feed")                                                  \
    X(PENDING, -17, "causal context not yet satisfied")                                            \
    X(DUP, -18, "batch already applied")                                                           \
    X(KIND, -19, "field kind mismatch")                                                            \
    X(DELETED, -20, "record is deleted")                                                           \
    X(PERM, -21, "permission denied")                                                              \
    X(KEYFILE, -22, "key file unusable (missing, or readable by others)")                          \
    X(VERSION, -23, "unsupported version")                                                         \
    X(STATE, -24, "call not valid in this state")                                                  \
    X(CLOSED, -25, "connection closed")                                                            \
    X(TIMEOUT, -26, "timed out")                                                                   \
    X(MESH, -27, "wrong mesh")                                                                     \
    X(UNKNOWN_DEVICE, -28, "device not admitted to this mesh")                                     \
    X(EXPIRED, -29, "certificate expired or not yet valid")                                        \
    X(REVOKED, -30, "device revoked")                                                              \
    X(REPLAY, -31, "replayed message")                                                             \
    X(SKEW, -32, "clock skew beyond limit")

enum {
#define FM__ERR_ENUM(name, code, text) FM_E##name = (code),
    FM_ERRORS(FM__ERR_ENUM)
#undef FM__ERR_ENUM
};

/* Static text for an error code; never NULL. */
FM_API const char *fm_strerror(int rc);

/* Limits: every bound of the data model. Inputs past a bound fail with FM_ELIMIT. */
enum {
    FM_ID_BYTES = 32,              /* device (author) id: an Ed25519 public key */
    FM_HASH_BYTES = 32,            /* BLAKE2b-256 */
    FM_SIG_BYTES = 64,             /* Ed25519 signature */
    FM_MAX_COLLECTION_LEN = 64,    /* bytes of a collection name */
    FM_MAX_RECORD_ID_LEN = 128,    /* bytes of a record id */
    FM_MAX_FIELD_LEN = 64,         /* bytes of a field name */
    FM_MAX_VALUE_LEN = 16384,      /* bytes of a string/binary value */
    FM_MAX_BATCH_OPS = 4096,       /* ops in one batch */
    FM_MAX_BATCH_BYTES = 1 << 20,  /* encoded bytes of one batch */
    FM_MAX_VV_ENTRIES = 4096,      /* authors in one version vector */
    FM_MAX_PENDING_BATCHES = 4096, /* out-of-order batches held per replica */
    FM_MAX_PENDING_BYTES = 16 << 20,
    FM_MAX_FIELDS_PER_RECORD = 256, /* enforced on local writes */
    FM_MAX_COLLECTIONS = 1024,
};

/* ---- environment: the outside world, injected (sans-I/O core) ----------------------------------
 */

typedef struct fm_env {
    int version; /* FM_ENV_VERSION */
    void *ctx;
    uint64_t (*now_ms)(void *ctx);                    /* wall clock, ms since the Unix epoch */
    void (*random)(void *ctx, void *buf, size_t len); /* cryptographic randomness */
} fm_env;
#define FM_ENV_VERSION 1

/* The process environment: real clock and libsodium randomness. Static, never freed. */
FM_API const fm_env *fm_env_system(void);

/* ---- device identity ------------------------------------------------------------------------- */

typedef struct fm_identity fm_identity;

/* A new Ed25519 key pair from the environment's randomness. */
FM_API int fm_identity_create(const fm_env *env, fm_identity **out);
/* From a 32-byte seed (tests, golden vectors). */
FM_API int fm_identity_from_seed(const uint8_t seed[32], fm_identity **out);
/* Key file: created with mode 0600; loading refuses a file readable by group or others. */
FM_API int fm_identity_save(const fm_identity *id, const char *path);
FM_API int fm_identity_load(const char *path, fm_identity **out);
FM_API void fm_identity_free(fm_identity *id);
FM_API void fm_identity_public(const fm_identity *id, uint8_t out[FM_ID_BYTES]);
/* Short base32 fingerprint of a device id for people, NUL-terminated (FM_FINGERPRINT_LEN+1). */
#define FM_FINGERPRINT_LEN 16
FM_API void fm_fingerprint(const uint8_t id[FM_ID_BYTES], char out[FM_FINGERPRINT_LEN + 1]);
/* Full device id as lowercase base32 (52 chars), NUL-terminated. */
#define FM_ID_TEXT_LEN 52
FM_API void fm_id_to_text(const uint8_t id[FM_ID_BYTES], char out[FM_ID_TEXT_LEN + 1]);
FM_API int fm_id_from_text(const char *text, uint8_t out[FM_ID_BYTES]);

/* ---- values and field kinds ------------------------------------------------------------------ */

typedef enum fm_kind {
    FM_KIND_LWW = 0,     /* one value; concurrent writes resolve to (hlc, author) max */
    FM_KIND_MV = 1,      /* every concurrent value kept; a conflict until resolved */
    FM_KIND_COUNTER = 2, /* PN-counter */
    FM_KIND_SET = 3,     /* observed-remove set, add wins */
} fm_kind;

typedef enum fm_vtype {
    FM_V_NIL = 0,
    FM_V_BOOL,
    FM_V_INT,
    FM_V_FLOAT,
    FM_V_STR,
    FM_V_BIN,
} fm_vtype;

/* A scalar value. For STR/BIN, bytes is borrowed (caller's or the result's memory). */
typedef struct fm_value {
    fm_vtype type;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const uint8_t *bytes;
            uint32_t len;
        } s;
    } u;
} fm_value;

FM_API fm_value fm_value_nil(void);
FM_API fm_value fm_value_bool(int b);
FM_API fm_value fm_value_int(int64_t i);
FM_API fm_value fm_value_float(double f);
FM_API fm_value fm_value_str(const char *s); /* NUL-terminated UTF-8 */
FM_API fm_value fm_value_bin(const void *p, uint32_t len);

/* ---- replica --------------------------------------------------------------------------------- */

typedef struct fm_replica fm_replica;
typedef struct fm_txn fm_txn;

typedef struct fm_replica_config {
    int version;                 /* FM_REPLICA_CONFIG_VERSION */
    const char *path;            /* sqlite store file; NULL = in memory only */
    const fm_identity *identity; /* borrowed; the replica keeps a copy */
    const fm_env *env;           /* borrowed; must outlive the replica; NULL = fm_env_system() */
    uint64_t max_skew_ms;        /* 0 = default (5 minutes) */
} fm_replica_config;
#define FM_REPLICA_CONFIG_VERSION 1

FM_API int fm_replica_open(const fm_replica_config *cfg, fm_replica **out);
FM_API void fm_replica_close(fm_replica *r);
FM_API void fm_replica_device_id(const fm_replica *r, uint8_t out[FM_ID_BYTES]);

/* A transaction: ops on one collection, committed as one signed batch. Durable when commit
 * returns 0. A failed op leaves the transaction usable; abort discards it. */
FM_API int fm_txn_begin(fm_replica *r, const char *collection, fm_txn **out);
FM_API int fm_txn_set(fm_txn *t, const char *id, const char *field, fm_kind kind, fm_value v);
FM_API int fm_txn_incr(fm_txn *t, const char *id, const char *field, int64_t delta);
FM_API int fm_txn_set_add(fm_txn *t, const char *id, const char *field, fm_value elem);
FM_API int fm_txn_set_remove(fm_txn *t, const char *id, const char *field, fm_value elem);
FM_API int fm_txn_delete(fm_txn *t, const char *id);
FM_API int fm_txn_commit(fm_txn *t); /* frees t whatever it returns */
FM_API void fm_txn_abort(fm_txn *t);

/* ---- reads ----------------------------------------------------------------------------------- */

typedef struct fm_record fm_record;

typedef struct fm_field_view {
    const char *name;
    fm_kind kind;
    int conflict;           /* mv field with more than one concurrent value */
    size_t nvalues;         /* lww: 1 (the winner); mv: all concurrent; set: the elements */
    const fm_value *values; /* valid while the record lives */
    int64_t counter;        /* counter fields */
} fm_field_view;

/* FM_ENOTFOUND if the record never existed, FM_EDELETED if it was deleted. */
FM_API int fm_record_get(fm_replica *r, const char *collection, const char *id, fm_record **out);
FM_API const char *fm_record_id(const fm_record *rec);
FM_API size_t fm_record_field_count(const fm_record *rec);
FM_API void fm_record_field(const fm_record *rec, size_t i, fm_field_view *out);
/* One JSON object field -> value (counter: number; set: array; mv in conflict: {"conflict":[..]}).
 */
FM_API char *fm_record_json(const fm_record *rec);
FM_API void fm_record_free(fm_record *rec);

/* Calls fn for every live record of a collection, in id order; stops early if fn returns non-zero
 * (and returns that value). rec is valid only during the call. */
typedef int (*fm_record_fn)(void *arg, const fm_record *rec);
FM_API int fm_collection_list(fm_replica *r, const char *collection, fm_record_fn fn, void *arg);
/* Calls fn for every record that has a field in conflict, across collections. */
FM_API int fm_conflicts_list(fm_replica *r, fm_record_fn fn, void *arg);
FM_API const char *fm_record_collection(const fm_record *rec);

/* ---- replication ----------------------------------------------------------------------------- */

typedef struct fm_bytes {
    uint8_t *data;
    size_t len;
} fm_bytes;
FM_API void fm_bytes_free(fm_bytes *b); /* frees data, zeroes the struct */

/* Canonical encoding of the collection's version vector. */
FM_API int fm_replica_vv(fm_replica *r, const char *collection, fm_bytes *out);
/* Calls fn for each batch the given vector lacks, in causal order. */
typedef int (*fm_batch_fn)(void *arg, const uint8_t *batch, size_t len);
FM_API int fm_replica_export(fm_replica *r, const char *collection, const uint8_t *vv, size_t vvlen,
                             fm_batch_fn fn, void *arg);
/* Ingest remote batches in one store transaction (all or nothing: if the store fails, every
 * result[i] gets that code and nothing is applied). Each result[i] (if results != NULL) gets 0
 * (applied), FM_EPENDING (held until its context is satisfied), FM_EDUP, or an error. Returns the
 * number applied (including pending ones released), or a negative code if the store failed. */
FM_API int fm_replica_ingest(fm_replica *r, const fm_bytes *batches, size_t n, int *results);
/* Names of the collections this replica holds, sorted; call fn for each. */
typedef int (*fm_name_fn)(void *arg, const char *name);
FM_API int fm_replica_collections(fm_replica *r, fm_name_fn fn, void *arg);

typedef struct fm_status {
    uint64_t ops; /* ops applied, all collections */
    uint64_t batches;
    uint64_t records;                  /* live records */
    uint64_t pending;                  /* batches waiting for their context */
    uint64_t conflicts;                /* fields in conflict */
    uint8_t state_hash[FM_HASH_BYTES]; /* equal on replicas that applied the same batches */
    int clock_skew;                    /* a remote HLC was beyond max_skew */
    uint64_t forked_authors;           /* authors caught signing two histories */
} fm_status;
FM_API int fm_replica_status(fm_replica *r, fm_status *out);
/* Calls fn with the id of every author caught forking its feed (proof kept in the store). */
typedef int (*fm_author_fn)(void *arg, const uint8_t author[FM_ID_BYTES]);
FM_API int fm_replica_forks(fm_replica *r, fm_author_fn fn, void *arg);

/* ---- mesh membership (DESIGN.md §5) ---------------------------------------------------------- */

/* A replica in no mesh (the default) accepts every correctly signed batch. Once it belongs to a
 * mesh, it accepts batches only from devices holding a certificate of that mesh's authority,
 * with write permission, and not revoked at the batch's time; the mesh id is the authority's
 * public key. Certificates and revocations travel as text: "fmcert1:..." and "fmrev1:...". */
FM_API int fm_replica_mesh(fm_replica *r, uint8_t mesh_id[FM_ID_BYTES]); /* FM_ENOTFOUND: none */
/* Makes authority's key the authority of a new mesh and admits this device to it (all
 * permissions, valid for days). FM_EEXISTS if the replica already belongs to a mesh. */
FM_API int fm_replica_mesh_create(fm_replica *r, const fm_identity *authority, uint32_t days);
/* Issues a certificate admitting device for days as text into out (cap bytes). */
#define FM_MESH_READ_ONLY 1
FM_API int fm_mesh_admit(const fm_env *env, const fm_identity *authority,
                         const uint8_t device[FM_ID_BYTES], const char *name, uint32_t days,
                         int flags, char *out, size_t cap);
/* Joins the mesh of a certificate for this device, valid now. FM_EINVAL: not for this device;
 * FM_EMESH: the replica belongs to another mesh; FM_ESIG, FM_EEXPIRED, FM_EDECODE. Joining
 * again with a newer certificate renews it. */
FM_API int fm_replica_join(fm_replica *r, const char *cert_text);
/* Revokes device from now on: installs the revocation here and writes its text into out. */
FM_API int fm_replica_revoke(fm_replica *r, const fm_identity *authority,
                             const uint8_t device[FM_ID_BYTES], char *out, size_t cap);
/* Installs a certificate or revocation of this replica's mesh (text or binary), as gossip does. */
FM_API int fm_replica_import_member(fm_replica *r, const char *text);
/* Every certificate and revocation held, as text, for relaying to peers. */
FM_API int fm_replica_members(fm_replica *r, fm_name_fn fn, void *arg);
#define FM_MEMBER_TEXT_MAX 400

/* Lowercase hex of n bytes into out (2n+1). */
FM_API void fm_hex(const uint8_t *in, size_t n, char *out);

#ifdef __cplusplus
}
#endif
#endif
