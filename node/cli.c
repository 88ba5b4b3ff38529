/*
 * cli.c — the fieldmesh commands over a store directory:
 *   fieldmesh [--dir DIR] COMMAND [ARGS...]   (--dir may also follow the command)
 * Exit status: 0 ok, 1 failure (message on the error stream), 2 usage error (nothing written).
 *
 * The same code serves both ways a command runs: in the CLI process against the store (no node
 * running), and inside a running node for a CLI that reached it over the control socket, where
 * the node lends its open replica (the store must have one writer, or feeds would fork).
 */
#include "node/cli.h"

#include "crypto/identity.h"
#include "node/json.h"
#include "node/node.h"
#include "node/replica.h"
#include "node/store.h"
#include "transport/control.h"
#include "transport/daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_USAGE 2

typedef struct cli {
    FILE *out, *err;
    const fm_cli_host *host; /* the running node, when called through its control socket */
    const char *dir;
    int argc;
    char **argv; /* the command's arguments, options removed */
    bool json;
    bool read_only;
    const char *name;
    const char *days;
    char home_dir[4096];
} cli;

static const char USAGE[] =
    "usage: fieldmesh [--dir DIR] COMMAND [ARGS...]\n"
    "\n"
    "commands:\n"
    "  init --name NAME                 create a device identity and store in DIR\n"
    "  put COLLECTION ID FIELD=VALUE... write fields in one transaction; VALUE is a JSON scalar\n"
    "        FIELD=V        last-writer-wins field (or the field's register kind)\n"
    "        FIELD:mv=V     multi-value field: concurrent writes are kept as a conflict\n"
    "        FIELD+=N       add N to a counter (FIELD-=N subtracts)\n"
    "        FIELD[]+=V     add V to a set (FIELD[]-=V removes it)\n"
    "  get COLLECTION ID                print the record as one JSON object\n"
    "  list COLLECTION                  print every record as JSON lines\n"
    "  del COLLECTION ID                delete a record (final)\n"
    "  conflicts                        list fields in conflict as JSON lines\n"
    "  status [--json]                  device id, mesh id, ops, records, state hash; with a\n"
    "                                   running node also peers, sync progress and warnings\n"
    "\n"
    "live node:\n"
    "  run [--listen ADDR:PORT]... [--peer HOST:PORT]... [--no-mdns] [--no-ble]\n"
    "      [--config FILE] [--log-level LEVEL]\n"
    "                                   run the node in the foreground (logs on stderr); other\n"
    "                                   commands then go through it (DIR/control.sock)\n"
    "  peers [--json]                   the running node's peers and connections\n"
    "  sync-now                         start an anti-entropy round with every peer now\n"
    "\n"
    "mesh membership:\n"
    "  mesh create [--days N]           make a new mesh with this device as its authority\n"
    "  admit DEVICE_KEY --name NAME [--days N] [--read-only]\n"
    "                                   (authority) print a certificate for a device\n"
    "  join CERT                        install this device's certificate: join its mesh\n"
    "  revoke DEVICE_KEY                (authority) revoke a device; prints the revocation\n"
    "  mesh import TEXT                 install a certificate or revocation from a peer\n"
    "  mesh members                     print every certificate and revocation held\n"
    "\n"
    "DIR defaults to $FIELDMESH_DIR, else ~/.local/share/fieldmesh.\n";

static int usage(const cli *c, const char *why)
{
    if (why)
        fprintf(c->err, "fieldmesh: %s\n", why);
    fputs(USAGE, c->err);
    return EXIT_USAGE;
}

static int fail(const cli *c, const char *what, int rc)
{
    fprintf(c->err, "fieldmesh: %s: %s\n", what, fm_strerror(rc));
    return 1;
}

static void path_in(const cli *c, const char *file, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", c->dir, file);
}

/* mkdir -p with mode 0700 for the directories we create. */
static int make_dirs(const char *dir)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp)
        return FM_ELIMIT;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return FM_EIO;
        *p = '/';
    }
    return mkdir(tmp, 0700) != 0 && errno != EEXIST ? FM_EIO : 0;
}

typedef struct opened {
    fm_identity *id;
    fm_replica *r;
    bool borrowed; /* the running node's */
} opened;

static void close_opened(opened *o)
{
    if (o->borrowed)
        return;
    fm_replica_close(o->r);
    fm_identity_free(o->id);
}

static int open_store(const cli *c, opened *o)
{
    char key[4096], db[4096];
    memset(o, 0, sizeof *o);
    if (c->host) {
        o->r = c->host->replica;
        o->borrowed = true;
        return 0;
    }
    path_in(c, "device.key", key, sizeof key);
    path_in(c, "store.db", db, sizeof db);
    int rc = fm_identity_load(key, &o->id);
    if (rc) {
        if (access(key, F_OK) != 0)
            fprintf(c->err, "fieldmesh: no device in %s: run 'fieldmesh init --name NAME'\n",
                    c->dir);
        else
            fprintf(c->err, "fieldmesh: %s: %s (it must be mode 0600)\n", key, fm_strerror(rc));
        return 1;
    }
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = db, .identity = o->id};
    if ((rc = fm_replica_open(&cfg, &o->r))) {
        fprintf(c->err, "fieldmesh: %s: %s\n", db, fm_strerror(rc));
        fm_identity_free(o->id);
        return 1;
    }
    return 0;
}

static int cmd_init(const cli *c)
{
    if (c->argc != 0 || !c->name || !c->name[0])
        return usage(c, "init takes --name NAME");
    if (fm_name_check((const uint8_t *)c->name, strlen(c->name), 64))
        return usage(c, "the name must be 1-64 bytes of printable UTF-8");
    char key[4096], db[4096];
    path_in(c, "device.key", key, sizeof key);
    path_in(c, "store.db", db, sizeof db);
    if (access(key, F_OK) == 0) {
        fprintf(c->err, "fieldmesh: %s already holds a device (%s)\n", c->dir, key);
        return 1;
    }
    int rc = make_dirs(c->dir);
    if (rc)
        return fail(c, c->dir, rc);
    fm_identity *id;
    if ((rc = fm_identity_create(fm_env_system(), &id)))
        return fail(c, "init", rc);
    fm_store *st = NULL;
    if (!(rc = fm_store_open(db, &st)))
        rc = fm_store_meta_set(st, "name", c->name, strlen(c->name));
    fm_store_close(st);
    if (rc) {
        fm_identity_free(id);
        return fail(c, db, rc);
    }
    if ((rc = fm_identity_save(id, key))) {
        fm_identity_free(id);
        return fail(c, key, rc);
    }
    uint8_t pk[FM_ID_BYTES];
    char fpr[FM_FINGERPRINT_LEN + 1];
    fm_identity_public(id, pk);
    fm_fingerprint(pk, fpr);
    fm_identity_free(id);
    fprintf(c->out, "%s\n", fpr);
    return 0;
}

/* One parsed FIELD assignment of `put`. */
typedef struct assign {
    char field[FM_MAX_FIELD_LEN + 1];
    enum { A_SET, A_MV, A_INCR, A_ADD, A_REMOVE } kind;
    fm_value v;
    char *storage;
} assign;

static int parse_assign(const char *arg, assign *a)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return FM_EINVAL;
    size_t n = (size_t)(eq - arg);
    const char *val = eq + 1;
    a->kind = A_SET;
    /* n is the name plus its operator; a bare operator ("+=1") leaves an empty name. */
    if (n >= 3 && arg[n - 1] == '+' && arg[n - 2] == ']' && arg[n - 3] == '[')
        a->kind = A_ADD, n -= 3;
    else if (n >= 3 && arg[n - 1] == '-' && arg[n - 2] == ']' && arg[n - 3] == '[')
        a->kind = A_REMOVE, n -= 3;
    else if (arg[n - 1] == '+' || arg[n - 1] == '-')
        a->kind = A_INCR, n -= 1;
    else if (n >= 3 && memcmp(arg + n - 3, ":mv", 3) == 0)
        a->kind = A_MV, n -= 3;
    if (n == 0 || n > FM_MAX_FIELD_LEN)
        return FM_EINVAL;
    memcpy(a->field, arg, n);
    a->field[n] = '\0';
    int rc = fm_json_parse_scalar(val, &a->v, &a->storage);
    if (rc)
        return rc;
    if (a->kind == A_INCR) {
        if (a->v.type != FM_V_INT)
            return FM_EINVAL;
        if (arg[n] == '-') {
            if (a->v.u.i == INT64_MIN)
                return FM_EINVAL;
            a->v.u.i = -a->v.u.i;
        }
    }
    return 0;
}

static int apply_assign(fm_txn *t, const char *id, const assign *a)
{
    switch (a->kind) {
    case A_SET:
        return fm_txn_set(t, id, a->field, FM_KIND_LWW, a->v);
    case A_MV:
        return fm_txn_set(t, id, a->field, FM_KIND_MV, a->v);
    case A_INCR:
        return fm_txn_incr(t, id, a->field, a->v.u.i);
    case A_ADD:
        return fm_txn_set_add(t, id, a->field, a->v);
    default:
        return fm_txn_set_remove(t, id, a->field, a->v);
    }
}

/* A plain FIELD=V on an existing mv field keeps it mv: kinds are chosen once, by the writer
 * who made the field, unless the command says otherwise. */
static void keep_register_kind(fm_replica *r, const char *coll, const char *id, assign *as, int n)
{
    fm_record *rec;
    if (fm_record_get(r, coll, id, &rec))
        return;
    for (int i = 0; i < n; i++) {
        if (as[i].kind != A_SET)
            continue;
        for (size_t k = 0; k < fm_record_field_count(rec); k++) {
            fm_field_view f;
            fm_record_field(rec, k, &f);
            if (strcmp(f.name, as[i].field) == 0 && f.kind == FM_KIND_MV)
                as[i].kind = A_MV;
        }
    }
    fm_record_free(rec);
}

static int cmd_put(const cli *c)
{
    if (c->argc < 3)
        return usage(c, "put takes COLLECTION ID FIELD=VALUE...");
    const char *coll = c->argv[0], *id = c->argv[1];
    int n = c->argc - 2, rc = 0, ret = 1;
    assign *as = calloc((size_t)n, sizeof *as);
    if (!as)
        return fail(c, "put", FM_ENOMEM);
    for (int i = 0; i < n && !rc; i++) {
        if ((rc = parse_assign(c->argv[i + 2], &as[i]))) {
            fprintf(c->err,
                    "fieldmesh: bad assignment '%s' (values are JSON: name='\"Ann\"', "
                    "age=42, n+=1, tags[]+='\"x\"')\n",
                    c->argv[i + 2]);
            ret = EXIT_USAGE;
        }
    }
    opened o;
    if (rc || open_store(c, &o))
        goto out;
    fm_txn *t;
    keep_register_kind(o.r, coll, id, as, n);
    if ((rc = fm_txn_begin(o.r, coll, &t))) {
        ret = rc == FM_EINVAL || rc == FM_ELIMIT ? usage(c, "bad collection name")
                                                 : fail(c, coll, rc);
        goto out_close;
    }
    for (int i = 0; i < n && !rc; i++)
        if ((rc = apply_assign(t, id, &as[i])))
            fprintf(c->err, "fieldmesh: %s: %s\n", c->argv[i + 2], fm_strerror(rc));
    if (rc) {
        fm_txn_abort(t);
        ret = rc == FM_EINVAL || rc == FM_ELIMIT ? EXIT_USAGE : 1;
        goto out_close;
    }
    ret = (rc = fm_txn_commit(t)) ? fail(c, "commit", rc) : 0;
out_close:
    close_opened(&o);
out:
    for (int i = 0; i < n; i++)
        free(as[i].storage);
    free(as);
    return ret;
}

static int cmd_get(const cli *c)
{
    if (c->argc != 2)
        return usage(c, "get takes COLLECTION ID");
    opened o;
    if (open_store(c, &o))
        return 1;
    fm_record *rec;
    int rc = fm_record_get(o.r, c->argv[0], c->argv[1], &rec), ret = 0;
    if (rc) {
        fprintf(c->err, "fieldmesh: %s/%s: %s\n", c->argv[0], c->argv[1],
                rc == FM_ENOTFOUND ? "no such record" : fm_strerror(rc));
        ret = 1;
    } else {
        char *j = fm_record_json(rec);
        fprintf(c->out, "%s\n", j ? j : "{}");
        free(j);
        fm_record_free(rec);
    }
    close_opened(&o);
    return ret;
}

static int print_line(void *arg, const fm_record *rec)
{
    const cli *x = arg;
    fm_buf b;
    fm_buf_init(&b);
    fm_buf_append(&b, "{\"_id\":", 7);
    fm_json_string(&b, (const uint8_t *)fm_record_id(rec), strlen(fm_record_id(rec)));
    if (fm_record_field_count(rec))
        fm_buf_putc(&b, ',');
    fm_json_record_members(&b, rec);
    fm_buf_append(&b, "}\n", 2);
    int rc = b.oom ? FM_ENOMEM : 0;
    if (!rc)
        fwrite(b.data, 1, b.len, x->out);
    fm_buf_free(&b);
    return rc;
}

static int cmd_list(const cli *c)
{
    if (c->argc != 1)
        return usage(c, "list takes COLLECTION");
    opened o;
    if (open_store(c, &o))
        return 1;
    int rc = fm_collection_list(o.r, c->argv[0], print_line, (void *)c);
    close_opened(&o);
    return rc ? fail(c, "list", rc) : 0;
}

static int cmd_del(const cli *c)
{
    if (c->argc != 2)
        return usage(c, "del takes COLLECTION ID");
    opened o;
    if (open_store(c, &o))
        return 1;
    fm_txn *t;
    int rc = fm_txn_begin(o.r, c->argv[0], &t);
    if (!rc && (rc = fm_txn_delete(t, c->argv[1])))
        fm_txn_abort(t);
    else if (!rc)
        rc = fm_txn_commit(t);
    close_opened(&o);
    if (rc == FM_EINVAL || rc == FM_ELIMIT)
        return usage(c, "bad collection or record id");
    return rc ? fail(c, "del", rc) : 0;
}

static int print_conflicts(void *arg, const fm_record *rec)
{
    const cli *x = arg;
    fm_buf b;
    fm_buf_init(&b);
    for (size_t i = 0; i < fm_record_field_count(rec); i++) {
        fm_field_view f;
        fm_record_field(rec, i, &f);
        if (!f.conflict)
            continue;
        fm_buf_append(&b, "{\"collection\":", 14);
        fm_json_string(&b, (const uint8_t *)fm_record_collection(rec),
                       strlen(fm_record_collection(rec)));
        fm_buf_append(&b, ",\"id\":", 6);
        fm_json_string(&b, (const uint8_t *)fm_record_id(rec), strlen(fm_record_id(rec)));
        fm_buf_append(&b, ",\"field\":", 9);
        fm_json_string(&b, (const uint8_t *)f.name, strlen(f.name));
        fm_buf_append(&b, ",\"values\":[", 11);
        for (size_t k = 0; k < f.nvalues; k++) {
            if (k)
                fm_buf_putc(&b, ',');
            fm_json_value(&b, &f.values[k]);
        }
        fm_buf_append(&b, "]}\n", 3);
    }
    int rc = b.oom ? FM_ENOMEM : 0;
    if (!rc)
        fwrite(b.data, 1, b.len, x->out);
    fm_buf_free(&b);
    return rc;
}

static int cmd_conflicts(const cli *c)
{
    if (c->argc != 0)
        return usage(c, "conflicts takes no arguments");
    opened o;
    if (open_store(c, &o))
        return 1;
    int rc = fm_conflicts_list(o.r, print_conflicts, (void *)c);
    close_opened(&o);
    return rc ? fail(c, "conflicts", rc) : 0;
}

/* What a running node adds to status: peers, sync progress, warnings. */
typedef struct node_view {
    bool running;
    fm_node_stats st;
    uint64_t behind_ops;   /* ops connected peers hold that we lack */
    uint64_t behind_bytes; /* estimate: at the bytes per op of what this node received so far */
    uint32_t synced;       /* connected peers with nothing to exchange */
} node_view;

static int count_synced(void *arg, const fm_peer_info *p)
{
    node_view *v = arg;
    v->synced += p->state == FM_PEER_SYNCED;
    return 0;
}

static void view_node(const cli *c, node_view *v)
{
    memset(v, 0, sizeof *v);
    if (!c->host)
        return;
    v->running = true;
    fm_node_stats_get(c->host->node, &v->st);
    v->behind_ops = fm_node_ops_behind(c->host->node);
    if (v->st.ops_in)
        v->behind_bytes = v->behind_ops * v->st.op_bytes_in / v->st.ops_in;
    fm_node_peers(c->host->node, count_synced, v);
}

static void status_json(const cli *c, const fm_status *s, const char *fpr, const char *full,
                        const char *mesh_text, const char *hash, const node_view *v)
{
    fprintf(c->out,
            "{\"device_id\":\"%s\",\"device_key\":\"%s\",\"mesh_id\":%s,\"ops\":%llu,"
            "\"batches\":%llu,\"records\":%llu,\"conflicts\":%llu,\"pending\":%llu,"
            "\"state_hash\":\"%s\",\"clock_skew\":%s,\"forked_authors\":%llu,\"running\":%s",
            fpr, full, mesh_text, (unsigned long long)s->ops, (unsigned long long)s->batches,
            (unsigned long long)s->records, (unsigned long long)s->conflicts,
            (unsigned long long)s->pending, hash, s->clock_skew ? "true" : "false",
            (unsigned long long)s->forked_authors, v->running ? "true" : "false");
    if (v->running)
        fprintf(c->out,
                ",\"connections\":%u,\"peers_synced\":%u,\"to_receive_ops\":%llu,"
                "\"to_receive_bytes_est\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                "\"batches_in\":%llu,\"batches_out\":%llu",
                v->st.conns, v->synced, (unsigned long long)v->behind_ops,
                (unsigned long long)v->behind_bytes, (unsigned long long)v->st.bytes_in,
                (unsigned long long)v->st.bytes_out, (unsigned long long)v->st.batches_in,
                (unsigned long long)v->st.batches_out);
    fputs("}\n", c->out);
}

static void status_text(const cli *c, const fm_status *s, const char *fpr, const char *full,
                        const char *mesh_text, const char *hash, const node_view *v)
{
    fprintf(c->out,
            "device     %s\nkey        %s\nmesh       %s\nops        %llu\nbatches    %llu\n"
            "records    %llu\nconflicts  %llu\nstate hash %s\n",
            fpr, full, mesh_text, (unsigned long long)s->ops, (unsigned long long)s->batches,
            (unsigned long long)s->records, (unsigned long long)s->conflicts, hash);
    if (v->running) {
        fprintf(c->out, "node       running: %u connection%s, %u synced, %llu ops", v->st.conns,
                v->st.conns == 1 ? "" : "s", v->synced, (unsigned long long)v->behind_ops);
        if (v->st.ops_in) /* a size estimate needs something received to go by */
            fprintf(c->out, " (~%llu KiB)", (unsigned long long)(v->behind_bytes + 1023) / 1024);
        fprintf(c->out, " to receive\n");
    } else {
        fprintf(c->out, "node       not running\n");
    }
    if (s->pending)
        fprintf(c->out, "waiting    %llu batches wait for their causal context\n",
                (unsigned long long)s->pending);
    if (s->clock_skew)
        fprintf(c->out, "warning    a peer's clock is more than the allowed skew ahead\n");
    if (s->forked_authors)
        fprintf(c->out, "warning    %llu author%s signed two histories (fork proof kept)\n",
                (unsigned long long)s->forked_authors, s->forked_authors == 1 ? "" : "s");
}

static int cmd_status(const cli *c)
{
    if (c->argc != 0)
        return usage(c, "status takes only --json");
    opened o;
    if (open_store(c, &o))
        return 1;
    fm_status s;
    int rc = fm_replica_status(o.r, &s);
    if (rc) {
        close_opened(&o);
        return fail(c, "status", rc);
    }
    uint8_t pk[FM_ID_BYTES];
    char fpr[FM_FINGERPRINT_LEN + 1], full[FM_ID_TEXT_LEN + 1], hash[2 * FM_HASH_BYTES + 1];
    fm_replica_device_id(o.r, pk);
    fm_fingerprint(pk, fpr);
    fm_id_to_text(pk, full);
    fm_hex(s.state_hash, FM_HASH_BYTES, hash);
    uint8_t mesh[FM_ID_BYTES];
    char mesh_text[FM_ID_TEXT_LEN + 3] = "null";
    if (fm_replica_mesh(o.r, mesh) == 0) {
        char t[FM_ID_TEXT_LEN + 1];
        fm_id_to_text(mesh, t);
        snprintf(mesh_text, sizeof mesh_text, "\"%s\"", t);
    }
    close_opened(&o);
    node_view v;
    view_node(c, &v);
    if (c->json)
        status_json(c, &s, fpr, full, mesh_text, hash, &v);
    else
        status_text(c, &s, fpr, full, mesh_text, hash, &v);
    return 0;
}

/* --days N: 1..36500, default 365. */
static int parse_days(const cli *c, uint32_t *days)
{
    *days = 365;
    if (!c->days)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(c->days, &end, 10);
    if (errno || *end || v < 1 || v > 36500)
        return FM_EINVAL;
    *days = (uint32_t)v;
    return 0;
}

static int load_authority(const cli *c, fm_identity **out)
{
    char key[4096];
    path_in(c, "authority.key", key, sizeof key);
    int rc = fm_identity_load(key, out);
    if (rc)
        fprintf(c->err, "fieldmesh: %s: %s (only the mesh authority's device can do this)\n", key,
                fm_strerror(rc));
    return rc;
}

static int mesh_create(const cli *c, opened *o, uint32_t days)
{
    char key[4096];
    path_in(c, "authority.key", key, sizeof key);
    fm_identity *auth;
    int rc = fm_identity_create(fm_env_system(), &auth);
    if (rc)
        return fail(c, "mesh create", rc);
    if ((rc = fm_identity_save(auth, key))) {
        fm_identity_free(auth);
        return fail(c, key, rc);
    }
    if ((rc = fm_replica_mesh_create(o->r, auth, days))) {
        unlink(key);
        fm_identity_free(auth);
        return fail(c, "mesh create", rc);
    }
    uint8_t mesh[FM_ID_BYTES];
    char text[FM_ID_TEXT_LEN + 1];
    fm_identity_public(auth, mesh);
    fm_identity_free(auth);
    fm_id_to_text(mesh, text);
    fprintf(c->out, "%s\n", text);
    return 0;
}

static int print_text(void *arg, const char *text)
{
    const cli *c = arg;
    return fprintf(c->out, "%s\n", text) < 0 ? FM_EIO : 0;
}

static int cmd_mesh(const cli *c)
{
    const char *sub = c->argc ? c->argv[0] : "";
    uint32_t days = 0;
    if (strcmp(sub, "create") == 0    ? c->argc != 1 || parse_days(c, &days)
        : strcmp(sub, "import") == 0  ? c->argc != 2
        : strcmp(sub, "members") == 0 ? c->argc != 1
                                      : 1)
        return usage(c, "mesh takes: create [--days N] | import TEXT | members");
    opened o;
    if (open_store(c, &o))
        return 1;
    int rc = 0, ret = 0;
    uint8_t mesh[FM_ID_BYTES];
    if (sub[0] == 'c') {
        if (fm_replica_mesh(o.r, mesh) == 0) {
            fprintf(c->err, "fieldmesh: this device already belongs to a mesh\n");
            ret = 1;
        } else {
            ret = mesh_create(c, &o, days);
        }
    } else if (sub[0] == 'i') {
        if ((rc = fm_replica_import_member(o.r, c->argv[1])))
            ret = fail(c, "mesh import", rc);
    } else if ((rc = fm_replica_members(o.r, print_text, (void *)c))) {
        ret = fail(c, "mesh members", rc);
    }
    close_opened(&o);
    return ret;
}

static int cmd_admit(const cli *c)
{
    uint8_t dev[FM_ID_BYTES];
    uint32_t days;
    if (c->argc != 1 || !c->name || fm_id_from_text(c->argv[0], dev) || parse_days(c, &days))
        return usage(c, "admit takes DEVICE_KEY (52 characters, from 'status --json') --name NAME "
                        "[--days N] [--read-only]");
    fm_identity *auth;
    if (load_authority(c, &auth))
        return 1;
    char text[FM_MEMBER_TEXT_MAX];
    int rc = fm_mesh_admit(NULL, auth, dev, c->name, days, c->read_only ? FM_MESH_READ_ONLY : 0,
                           text, sizeof text);
    fm_identity_free(auth);
    if (rc == FM_ELIMIT || rc == FM_EDECODE)
        return usage(c, "the name must be 1-64 bytes of UTF-8");
    if (rc)
        return fail(c, "admit", rc);
    /* The authority's own replica accepts the new member's batches from now on. */
    opened o;
    if (open_store(c, &o))
        return 1;
    rc = fm_replica_import_member(o.r, text);
    close_opened(&o);
    if (rc)
        return fail(c, "admit", rc);
    fprintf(c->out, "%s\n", text);
    return 0;
}

static int cmd_join(const cli *c)
{
    if (c->argc != 1)
        return usage(c, "join takes CERT (the fmcert1:... line from 'admit')");
    opened o;
    if (open_store(c, &o))
        return 1;
    int rc = fm_replica_join(o.r, c->argv[0]);
    close_opened(&o);
    if (rc == FM_EINVAL) {
        fprintf(c->err, "fieldmesh: join: this certificate is for another device\n");
        return 1;
    }
    return rc ? fail(c, "join", rc) : 0;
}

static int cmd_revoke(const cli *c)
{
    uint8_t dev[FM_ID_BYTES];
    if (c->argc != 1 || fm_id_from_text(c->argv[0], dev))
        return usage(c, "revoke takes DEVICE_KEY (52 characters)");
    fm_identity *auth;
    opened o;
    if (load_authority(c, &auth))
        return 1;
    if (open_store(c, &o)) {
        fm_identity_free(auth);
        return 1;
    }
    char text[FM_MEMBER_TEXT_MAX];
    int rc = fm_replica_revoke(o.r, auth, dev, text, sizeof text);
    fm_identity_free(auth);
    close_opened(&o);
    if (rc)
        return fail(c, "revoke", rc);
    fprintf(c->out, "%s\n", text);
    return 0;
}

/* ---- commands of a running node --------------------------------------------------------- */

static const char *const PEER_STATE[] = {"idle", "connecting", "syncing", "synced", "backoff"};

typedef struct peers_ctx {
    const cli *c;
    uint64_t now;
    int count;
} peers_ctx;

static void ago(char *out, size_t n, uint64_t now, uint64_t t)
{
    if (!t)
        snprintf(out, n, "never");
    else
        snprintf(out, n, "%llu s ago", (unsigned long long)(now > t ? (now - t) / 1000 : 0));
}

static int print_peer(void *arg, const fm_peer_info *p)
{
    peers_ctx *x = arg;
    const cli *c = x->c;
    char fpr[FM_FINGERPRINT_LEN + 1] = "-", seen[32], synced[32];
    if (p->has_id)
        fm_fingerprint(p->id, fpr);
    const char *state = PEER_STATE[p->state];
    const char *transport = p->addr && strncmp(p->addr, "ble:", 4) == 0 ? "ble" : "tcp";
    if (c->json) {
        fm_buf b;
        fm_buf_init(&b);
        fm_buf_printf(&b, "%s{\"id\":", x->count ? "," : "");
        if (p->has_id)
            fm_buf_printf(&b, "\"%s\"", fpr);
        else
            fm_buf_printf(&b, "null");
        fm_buf_printf(&b, ",\"name\":");
        fm_json_string(&b, (const uint8_t *)p->name, strlen(p->name));
        fm_buf_printf(&b, ",\"address\":");
        if (p->addr)
            fm_json_string(&b, (const uint8_t *)p->addr, strlen(p->addr));
        else
            fm_buf_printf(&b, "null");
        fm_buf_printf(&b,
                      ",\"transport\":\"%s\",\"state\":\"%s\",\"inbound\":%s,"
                      "\"last_seen_ms\":%llu,\"last_synced_ms\":%llu,\"bytes_in\":%llu,"
                      "\"bytes_out\":%llu}",
                      transport, state, p->inbound ? "true" : "false",
                      (unsigned long long)p->last_seen_ms, (unsigned long long)p->last_synced_ms,
                      (unsigned long long)p->bytes_in, (unsigned long long)p->bytes_out);
        if (b.oom) {
            fm_buf_free(&b);
            return FM_ENOMEM;
        }
        fwrite(b.data, 1, b.len, c->out);
        fm_buf_free(&b);
    } else {
        ago(seen, sizeof seen, x->now, p->last_seen_ms);
        ago(synced, sizeof synced, x->now, p->last_synced_ms);
        fprintf(c->out, "%-16s %-16s %-28s %-4s %-10s %-12s %s\n", fpr, p->name[0] ? p->name : "-",
                p->addr ? p->addr : "(inbound)", transport, state, seen, synced);
    }
    x->count++;
    return 0;
}

static int need_node(const cli *c, const char *what)
{
    if (c->host)
        return 0;
    fprintf(c->err, "fieldmesh: %s: no node is running in %s (start one with 'fieldmesh run')\n",
            what, c->dir);
    return 1;
}

static int cmd_peers(const cli *c)
{
    if (c->argc != 0)
        return usage(c, "peers takes only --json");
    if (need_node(c, "peers"))
        return 1;
    peers_ctx x = {.c = c, .now = fm_env_system()->now_ms(NULL)};
    if (c->json)
        fputc('[', c->out);
    else
        fprintf(c->out, "%-16s %-16s %-28s %-4s %-10s %-12s %s\n", "ID", "NAME", "ADDRESS", "VIA",
                "STATE", "LAST SEEN", "LAST SYNCED");
    int rc = fm_node_peers(c->host->node, print_peer, &x);
    if (c->json)
        fputs("]\n", c->out);
    return rc ? fail(c, "peers", rc) : 0;
}

static int cmd_sync_now(const cli *c)
{
    if (c->argc != 0)
        return usage(c, "sync-now takes no arguments");
    if (need_node(c, "sync-now"))
        return 1;
    fm_node_sync_now(c->host->node);
    fm_node_stats st;
    fm_node_stats_get(c->host->node, &st);
    fprintf(c->out, "sync started with %u connected peer%s\n", st.conns, st.conns == 1 ? "" : "s");
    return 0;
}

static int cmd_run(const cli *c)
{
    if (c->host)
        return usage(c, "a node is already running in this directory");
    return fm_daemon_main(c->dir, c->argc, c->argv, c->err);
}

static const struct {
    const char *name;
    int (*fn)(const cli *c);
    bool local_only; /* never forwarded to a running node */
} COMMANDS[] = {
    {"mesh", cmd_mesh, false},         {"admit", cmd_admit, false},
    {"join", cmd_join, false},         {"revoke", cmd_revoke, false},
    {"init", cmd_init, true},          {"put", cmd_put, false},
    {"get", cmd_get, false},           {"list", cmd_list, false},
    {"del", cmd_del, false},           {"conflicts", cmd_conflicts, false},
    {"status", cmd_status, false},     {"peers", cmd_peers, false},
    {"sync-now", cmd_sync_now, false}, {"run", cmd_run, true},
};

/* Pulls global options (--dir, --json, --name) out of argv, wherever they appear. */
static int parse_options(int argc, char **argv, cli *c, const char **cmd)
{
    c->argv = calloc((size_t)argc + 1, sizeof *c->argv);
    if (!c->argv)
        return FM_ENOMEM;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool dir_opt = strcmp(a, "--dir") == 0 || strncmp(a, "--dir=", 6) == 0;
        if (*cmd && strcmp(*cmd, "run") == 0 && !dir_opt) {
            c->argv[c->argc++] = argv[i]; /* the node's own options: fm_daemon_main parses them */
            continue;
        }
        if (strcmp(a, "--dir") == 0 || strcmp(a, "--name") == 0 || strcmp(a, "--days") == 0) {
            if (i + 1 >= argc)
                return FM_EINVAL;
            *(a[2] == 'n' ? &c->name : a[3] == 'i' ? &c->dir : &c->days) = argv[++i];
        } else if (strcmp(a, "--read-only") == 0) {
            c->read_only = true;
        } else if (strncmp(a, "--dir=", 6) == 0) {
            c->dir = a + 6;
        } else if (strncmp(a, "--name=", 7) == 0) {
            c->name = a + 7;
        } else if (strcmp(a, "--json") == 0) {
            c->json = true;
        } else if (strcmp(a, "--") != 0 && a[0] == '-' && a[1] == '-') {
            return FM_EINVAL;
        } else if (!*cmd) {
            *cmd = a;
        } else {
            c->argv[c->argc++] = argv[i];
        }
    }
    if (!c->dir || !c->dir[0]) {
        const char *env = getenv("FIELDMESH_DIR"), *home = getenv("HOME");
        if (env && env[0])
            c->dir = env;
        else if (home && home[0]) {
            snprintf(c->home_dir, sizeof c->home_dir, "%s/.local/share/fieldmesh", home);
            c->dir = c->home_dir;
        } else {
            return FM_EINVAL;
        }
    }
    return 0;
}

int fm_cli_run(int argc, char **argv, const fm_cli_host *host, FILE *out, FILE *err)
{
    cli c = {.out = out, .err = err, .host = host};
    const char *cmd = NULL;
    int rc = parse_options(argc, argv, &c, &cmd), ret = EXIT_USAGE;
    if (rc == FM_ENOMEM) {
        free(c.argv);
        return fail(&c, "fieldmesh", rc);
    }
    if (rc || !cmd) {
        ret = usage(&c, rc ? "bad option" : NULL);
    } else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(USAGE, out);
        ret = 0;
    } else {
        ret = -1;
        for (size_t i = 0; i < FM_ARRAY_LEN(COMMANDS); i++) {
            if (strcmp(cmd, COMMANDS[i].name) != 0)
                continue;
            if (host && COMMANDS[i].local_only) {
                ret = usage(&c, "this command does not run inside a node");
                break;
            }
            /* A running node owns the store: hand the command to it. */
            int code = 1;
            if (!host && !COMMANDS[i].local_only &&
                fm_control_call(c.dir, argc, argv, out, err, &code) != FM_ENOTFOUND)
                ret = code; /* reached the node (its answer, or 1 if the exchange broke) */
            else
                ret = COMMANDS[i].fn(&c);
        }
        if (ret < 0)
            ret = usage(&c, "unknown command");
    }
    free(c.argv);
    return ret;
}
