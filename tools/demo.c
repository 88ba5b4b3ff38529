/*
 * demo.c — `make demo` until live networking exists: three field devices, each with its own
 * store, edit the same records while offline (a conflicting dose on an mv field, a shared
 * counter, a set, a rename and a move), then meet and exchange batches. Every replica ends with
 * the same state hash; the conflict stays open until someone resolves it with a plain write.
 */
#include "fieldmesh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COLL "patients"

typedef struct device {
    const char *name;
    fm_identity *id;
    fm_replica *r;
} device;

static void die(const char *what, int rc)
{
    fprintf(stderr, "demo: %s: %s\n", what, fm_strerror(rc));
    exit(1);
}

static void check(const char *what, int rc)
{
    if (rc < 0)
        die(what, rc);
}

static void open_device(device *d, const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    d->name = name;
    check("identity", fm_identity_create(fm_env_system(), &d->id));
    fm_replica_config cfg = {.version = FM_REPLICA_CONFIG_VERSION, .path = path, .identity = d->id};
    check("open", fm_replica_open(&cfg, &d->r));
}

typedef struct collect {
    fm_bytes *b;
    size_t n, cap;
} collect;

static int collect_batch(void *arg, const uint8_t *p, size_t len)
{
    collect *c = arg;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->b = realloc(c->b, c->cap * sizeof *c->b);
        if (!c->b)
            return FM_ENOMEM;
    }
    c->b[c->n].data = malloc(len);
    if (!c->b[c->n].data)
        return FM_ENOMEM;
    memcpy(c->b[c->n].data, p, len);
    c->b[c->n++].len = len;
    return 0;
}

/* One direction of a sync: `to` sends its vector, `from` answers with what it lacks. */
static int pull(device *to, device *from)
{
    fm_bytes vv;
    collect got = {0};
    check("vv", fm_replica_vv(to->r, COLL, &vv));
    check("export", fm_replica_export(from->r, COLL, vv.data, vv.len, collect_batch, &got));
    int applied = fm_replica_ingest(to->r, got.b, got.n, NULL);
    check("ingest", applied);
    printf("  %s <- %s: %zu batches offered, %d applied\n", to->name, from->name, got.n, applied);
    for (size_t i = 0; i < got.n; i++)
        fm_bytes_free(&got.b[i]);
    free(got.b);
    fm_bytes_free(&vv);
    return applied;
}

static void print_records(device *d)
{
    fm_record *rec;
    const char *ids[] = {"pt-1042", "pt-2077"};
    for (size_t i = 0; i < 2; i++) {
        int rc = fm_record_get(d->r, COLL, ids[i], &rec);
        if (rc) {
            printf("  %s/%s: %s\n", COLL, ids[i], fm_strerror(rc));
            continue;
        }
        char *j = fm_record_json(rec);
        printf("  %s/%s %s\n", COLL, ids[i], j);
        free(j);
        fm_record_free(rec);
    }
}

static int print_conflict(void *arg, const fm_record *rec)
{
    (void)arg;
    for (size_t i = 0; i < fm_record_field_count(rec); i++) {
        fm_field_view f;
        fm_record_field(rec, i, &f);
        if (!f.conflict)
            continue;
        printf("  CONFLICT %s/%s field '%s' has %zu concurrent values:", fm_record_collection(rec),
               fm_record_id(rec), f.name, f.nvalues);
        for (size_t k = 0; k < f.nvalues; k++)
            printf(" %lld", (long long)f.values[k].u.i);
        printf("\n");
    }
    return 0;
}

static void state_line(device *d)
{
    fm_status s;
    char hex[2 * FM_HASH_BYTES + 1];
    check("status", fm_replica_status(d->r, &s));
    fm_hex(s.state_hash, 12, hex);
    printf("  %-6s ops=%-3llu records=%llu conflicts=%llu state=%s…\n", d->name,
           (unsigned long long)s.ops, (unsigned long long)s.records,
           (unsigned long long)s.conflicts, hex);
}

static void write_offline(device *ana, device *ben, device *cai)
{
    fm_txn *t;
    printf("\n1. ana registers two patients and syncs with ben and cai before they part.\n");
    check("begin", fm_txn_begin(ana->r, COLL, &t));
    check("set", fm_txn_set(t, "pt-1042", "name", FM_KIND_LWW, fm_value_str("M. Okafor")));
    check("set", fm_txn_set(t, "pt-1042", "ward", FM_KIND_LWW, fm_value_str("tent B")));
    check("set", fm_txn_set(t, "pt-1042", "dose_mg", FM_KIND_MV, fm_value_int(5)));
    check("set", fm_txn_set(t, "pt-2077", "name", FM_KIND_LWW, fm_value_str("J. Silva")));
    check("commit", fm_txn_commit(t));
    pull(ben, ana);
    pull(cai, ana);

    printf("\n2. Offline, each device edits on its own:\n");
    printf("   ana: dose 5 -> 7 mg, counts 2 doses given, tags 'allergy'\n");
    check("begin", fm_txn_begin(ana->r, COLL, &t));
    check("set", fm_txn_set(t, "pt-1042", "dose_mg", FM_KIND_MV, fm_value_int(7)));
    check("incr", fm_txn_incr(t, "pt-1042", "doses_given", 2));
    check("add", fm_txn_set_add(t, "pt-1042", "tags", fm_value_str("allergy")));
    check("commit", fm_txn_commit(t));
    printf("   ben: dose 5 -> 10 mg (concurrent with ana!), counts 1 dose, moves ward\n");
    check("begin", fm_txn_begin(ben->r, COLL, &t));
    check("set", fm_txn_set(t, "pt-1042", "dose_mg", FM_KIND_MV, fm_value_int(10)));
    check("incr", fm_txn_incr(t, "pt-1042", "doses_given", 1));
    check("set", fm_txn_set(t, "pt-1042", "ward", FM_KIND_LWW, fm_value_str("tent D")));
    check("commit", fm_txn_commit(t));
    printf("   cai: corrects the name spelling, tags 'diabetic'\n");
    check("begin", fm_txn_begin(cai->r, COLL, &t));
    check("set", fm_txn_set(t, "pt-1042", "name", FM_KIND_LWW, fm_value_str("M. Okafor-Eze")));
    check("add", fm_txn_set_add(t, "pt-1042", "tags", fm_value_str("diabetic")));
    check("commit", fm_txn_commit(t));
}

int main(void)
{
    char dir[] = "/tmp/fieldmesh-demo-XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", FM_EIO);
    printf("fieldmesh demo: three devices, one store each, in %s\n", dir);
    device dev[3] = {0};
    open_device(&dev[0], dir, "ana");
    open_device(&dev[1], dir, "ben");
    open_device(&dev[2], dir, "cai");
    write_offline(&dev[0], &dev[1], &dev[2]);
    for (int i = 0; i < 3; i++)
        state_line(&dev[i]);

    printf("\n3. They meet again and exchange what each lacks (ring: ana<-ben<-cai<-ana, "
           "twice):\n");
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 3; i++)
            pull(&dev[i], &dev[(i + 1) % 3]);
    for (int i = 0; i < 3; i++)
        state_line(&dev[i]);

    printf("\n4. Merged records (identical on every device):\n");
    print_records(&dev[1]);
    check("conflicts", fm_conflicts_list(dev[1].r, print_conflict, NULL));

    printf("\n5. The doctor on cai resolves the dose with an ordinary write; everyone syncs:\n");
    fm_txn *t;
    check("begin", fm_txn_begin(dev[2].r, COLL, &t));
    check("set", fm_txn_set(t, "pt-1042", "dose_mg", FM_KIND_MV, fm_value_int(7)));
    check("commit", fm_txn_commit(t));
    for (int i = 0; i < 2; i++)
        pull(&dev[i], &dev[2]);
    print_records(&dev[0]);
    for (int i = 0; i < 3; i++)
        state_line(&dev[i]);

    for (int i = 0; i < 3; i++) {
        char path[600];
        fm_replica_close(dev[i].r);
        fm_identity_free(dev[i].id);
        for (const char *sfx = ""; sfx; sfx = *sfx ? NULL : "-wal") {
            snprintf(path, sizeof path, "%s/%s.db%s", dir, dev[i].name, sfx);
            unlink(path);
        }
        snprintf(path, sizeof path, "%s/%s.db-shm", dir, dev[i].name);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}
