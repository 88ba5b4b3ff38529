/* test_crdt.c — the field kinds and the causality-first rule, scenario by scenario. */
#include "crdt_harness.h"

#define COLL "people"
#define T0 1700000000000ull

static h_author A, B, C, D;
static h_log L;

static void setup(void)
{
    h_author_init(&A, 1);
    h_author_init(&B, 2);
    h_author_init(&C, 3);
    h_author_init(&D, 4);
    memset(&L, 0, sizeof L);
}

static void teardown(void)
{
    h_author_free(&A);
    h_author_free(&B);
    h_author_free(&C);
    h_author_free(&D);
    h_log_free(&L);
}

static fm_rec *record_of(fm_state *st, const char *id)
{
    fm_coll *c = fm_state_coll(st, (const uint8_t *)COLL, strlen(COLL));
    int rc;
    return c ? fm_state_record(st, c, (const uint8_t *)id, (uint32_t)strlen(id), &rc) : NULL;
}

/* enc, decoded with authors' interning and encoded again: the same bytes. */
static void check_reencodes(fm_authors *authors, const fm_buf *enc)
{
    fm_rec *back = fm_rec_new((const uint8_t *)"r", 1);
    fm_buf e2;
    fm_buf_init(&e2);
    CHECK_OK(fm_rec_decode(back, authors, enc->data, enc->len));
    CHECK_OK(fm_rec_encode(back, authors, &e2));
    CHECK_EQ_INT(enc->len, e2.len);
    CHECK_MEM(enc->data, e2.data, enc->len);
    fm_buf_free(&e2);
    fm_rec_free(back);
}

static fm_field *field_of(fm_state *st, const char *id, const char *name)
{
    fm_rec *r = record_of(st, id);
    if (!r)
        return NULL;
    for (uint32_t i = 0; i < r->nfields; i++)
        if (r->fields[i].name_len == strlen(name) &&
            !memcmp(fm_field_name(&r->fields[i]), name, strlen(name)))
            return &r->fields[i];
    return NULL;
}

static bool is_deleted(fm_state *st, const char *id)
{
    fm_coll *c = fm_state_coll(st, (const uint8_t *)COLL, strlen(COLL));
    int rc;
    fm_rec *r = fm_state_record(st, c, (const uint8_t *)id, (uint32_t)strlen(id), &rc);
    return r && r->deleted;
}

/* The lww winner as a string (values in these tests are strings). */
static const char *winner_str(fm_state *st, const char *id, const char *name, char *buf)
{
    fm_field *f = field_of(st, id, name);
    const fm_reg *g = f ? fm_field_winner(f, &st->authors) : NULL;
    fm_value v;
    if (!g || fm_value_decode(fm_reg_value(g), g->vlen, &v) || v.type != FM_V_STR)
        return "(none)";
    memcpy(buf, v.u.s.bytes, v.u.s.len);
    buf[v.u.s.len] = 0;
    return buf;
}

static void all_converge(h_author **as, int n)
{
    char h0[65], h[65];
    for (int i = 0; i < n; i++)
        h_deliver(&as[i]->st, L.b, L.n);
    h_state_hash_hex(&as[0]->st, h0);
    for (int i = 1; i < n; i++) {
        h_state_hash_hex(&as[i]->st, h);
        CHECK_STR(h, h0);
    }
}

static void test_lww_per_field(void)
{
    setup();
    char buf[64];
    h_op(&A, FM_OP_SET_LWW, "p1", "name", fm_value_str("Ann"));
    h_op(&A, FM_OP_SET_LWW, "p1", "address", fm_value_str("1 Old Rd"));
    h_commit(&A, COLL, T0, &L);
    h_deliver(&B.st, L.b, L.n);
    /* Concurrently: A renames, B moves. */
    h_op(&A, FM_OP_SET_LWW, "p1", "name", fm_value_str("Anne"));
    h_commit(&A, COLL, T0 + 10, &L);
    h_op(&B, FM_OP_SET_LWW, "p1", "address", fm_value_str("2 New St"));
    h_commit(&B, COLL, T0 + 5, &L);
    h_author *as[] = {&A, &B, &C};
    all_converge(as, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_STR(winner_str(&as[i]->st, "p1", "name", buf), "Anne");
        CHECK_STR(winner_str(&as[i]->st, "p1", "address", buf), "2 New St");
    }
    teardown();
}

static void test_future_clock_loses_once_seen(void)
{
    setup();
    char buf[64];
    D.clock_offset_ms = 4ull * 365 * 24 * 3600 * 1000; /* four years ahead */
    h_op(&D, FM_OP_SET_LWW, "p1", "status", fm_value_str("from-the-future"));
    h_commit(&D, COLL, T0, &L);
    /* A has not seen D's write: its concurrent write loses to D's larger HLC. */
    h_op(&A, FM_OP_SET_LWW, "p1", "status", fm_value_str("concurrent"));
    h_commit(&A, COLL, T0 + 1, &L);
    h_deliver(&B.st, L.b, L.n);
    CHECK_STR(winner_str(&B.st, "p1", "status", buf), "from-the-future");
    /* B saw both; its write covers them whatever its clock says (and B's HLC is not dragged
     * into the future: D is beyond the skew bound). */
    bool skew = fm_hlc_observe(&B.hlc, D.hlc, T0 + 2, FM_HLC_DEFAULT_MAX_SKEW_MS);
    CHECK(skew);
    h_op(&B, FM_OP_SET_LWW, "p1", "status", fm_value_str("corrected"));
    h_commit(&B, COLL, T0 + 2, &L);
    CHECK(fm_hlc_ms(B.hlc) < T0 + 1000);
    h_author *as[] = {&A, &B, &C, &D};
    all_converge(as, 4);
    for (int i = 0; i < 4; i++) {
        CHECK_STR(winner_str(&as[i]->st, "p1", "status", buf), "corrected");
        CHECK_EQ_INT(field_of(&as[i]->st, "p1", "status")->nregs, 1);
    }
    teardown();
}

static bool has_elem(fm_state *st, const char *id, const char *name, const char *e)
{
    fm_field *f = field_of(st, id, name);
    fm_buf enc;
    fm_buf_init(&enc);
    fm_value v = fm_value_str(e);
    fm_value_encode(&v, &enc);
    bool found = false;
    for (uint32_t i = 0; f && i < f->nelems; i++)
        found |= f->elems[i].vlen == enc.len && !memcmp(f->elems[i].v, enc.data, enc.len);
    fm_buf_free(&enc);
    return found;
}

static void test_set_add_wins(void)
{
    setup();
    h_op(&A, FM_OP_ADD, "p1", "tags", fm_value_str("medic"));
    h_op(&A, FM_OP_ADD, "p1", "tags", fm_value_str("driver"));
    h_commit(&A, COLL, T0, &L);
    h_deliver(&B.st, L.b, L.n);
    h_deliver(&C.st, L.b, L.n);
    /* B removes "medic" having seen it; C concurrently re-adds it: add wins. B also removes
     * "driver", which nobody re-adds: it goes. */
    h_op(&B, FM_OP_REMOVE, "p1", "tags", fm_value_str("medic"));
    h_op(&B, FM_OP_REMOVE, "p1", "tags", fm_value_str("driver"));
    h_commit(&B, COLL, T0 + 1, &L);
    h_op(&C, FM_OP_ADD, "p1", "tags", fm_value_str("medic"));
    h_commit(&C, COLL, T0 + 1, &L);
    h_author *as[] = {&A, &B, &C, &D};
    all_converge(as, 4);
    for (int i = 0; i < 4; i++) {
        CHECK(has_elem(&as[i]->st, "p1", "tags", "medic"));
        CHECK(!has_elem(&as[i]->st, "p1", "tags", "driver"));
        CHECK_EQ_INT(field_of(&as[i]->st, "p1", "tags")->kind, FM_KIND_SET);
    }
    teardown();
}

static void test_counters_sum(void)
{
    setup();
    h_op(&A, FM_OP_INCR, "stock", "water", fm_value_int(10));
    h_commit(&A, COLL, T0, &L);
    h_op(&B, FM_OP_INCR, "stock", "water", fm_value_int(-3));
    h_commit(&B, COLL, T0, &L);
    h_op(&C, FM_OP_INCR, "stock", "water", fm_value_int(5));
    h_op(&C, FM_OP_INCR, "stock", "water", fm_value_int(1));
    h_commit(&C, COLL, T0, &L);
    h_author *as[] = {&A, &B, &C, &D};
    all_converge(as, 4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(fm_field_counter(field_of(&as[i]->st, "stock", "water")), 13);
    teardown();
}

static void test_delete_is_final(void)
{
    setup();
    h_op(&A, FM_OP_SET_LWW, "p1", "name", fm_value_str("Ann"));
    h_commit(&A, COLL, T0, &L);
    h_deliver(&B.st, L.b, L.n);
    h_op(&A, FM_OP_DELETE, "p1", NULL, fm_value_nil());
    h_commit(&A, COLL, T0 + 1, &L);
    /* B is stale: it never saw the delete, and writes later by the clock. */
    h_op(&B, FM_OP_SET_LWW, "p1", "name", fm_value_str("Zombie"));
    h_commit(&B, COLL, T0 + 100000, &L);
    h_author *as[] = {&A, &B, &C};
    all_converge(as, 3);
    for (int i = 0; i < 3; i++) {
        CHECK(is_deleted(&as[i]->st, "p1"));
        CHECK(field_of(&as[i]->st, "p1", "name") == NULL);
    }
    /* A write after the delete was seen does not resurrect it either. */
    h_op(&B, FM_OP_SET_LWW, "p1", "name", fm_value_str("Again"));
    h_commit(&B, COLL, T0 + 200000, &L);
    all_converge(as, 3);
    CHECK(is_deleted(&A.st, "p1"));
    teardown();
}

static void test_mv_conflict_then_resolved(void)
{
    setup();
    h_op(&A, FM_OP_SET_MV, "pt7", "dose_mg", fm_value_int(5));
    h_commit(&A, COLL, T0, &L);
    h_op(&B, FM_OP_SET_MV, "pt7", "dose_mg", fm_value_int(10));
    h_commit(&B, COLL, T0, &L);
    h_author *as[] = {&A, &B, &C};
    all_converge(as, 3);
    for (int i = 0; i < 3; i++) {
        fm_field *f = field_of(&as[i]->st, "pt7", "dose_mg");
        CHECK_EQ_INT(f->nregs, 2);
        CHECK_EQ_INT(f->kind, FM_KIND_MV);
        fm_coll *c = fm_state_coll(&as[i]->st, (const uint8_t *)COLL, 4 + 2);
        int rc;
        CHECK_EQ_INT(
            fm_rec_conflicts(fm_state_record(&as[i]->st, c, (const uint8_t *)"pt7", 3, &rc)), 1);
    }
    /* C saw both and resolves with an ordinary write. */
    h_op(&C, FM_OP_SET_MV, "pt7", "dose_mg", fm_value_int(7));
    h_commit(&C, COLL, T0 + 1, &L);
    all_converge(as, 3);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(field_of(&as[i]->st, "pt7", "dose_mg")->nregs, 1);
    teardown();
}

static void test_record_roundtrip_canonical(void)
{
    setup();
    h_op(&A, FM_OP_SET_MV, "r", "a", fm_value_int(1));
    h_op(&A, FM_OP_INCR, "r", "n", fm_value_int(-7));
    h_op(&A, FM_OP_ADD, "r", "s", fm_value_str("x"));
    /* Names at, and past, what a field keeps inline. */
    h_op(&A, FM_OP_SET_MV, "r", "eightchr", fm_value_int(8));
    h_op(&A, FM_OP_SET_MV, "r", "ninechars", fm_value_int(9));
    h_op(&A, FM_OP_INCR, "r", "a_name_of_forty_bytes_for_the_heap_path_", fm_value_int(40));
    h_commit(&A, COLL, T0, &L);
    h_op(&B, FM_OP_SET_MV, "r", "a", fm_value_float(2.5));
    h_op(&B, FM_OP_ADD, "r", "s", fm_value_bin("\0\1", 2));
    h_commit(&B, COLL, T0, &L);
    h_deliver(&C.st, L.b, L.n);
    fm_buf e1;
    fm_buf_init(&e1);
    CHECK_OK(fm_rec_encode(record_of(&C.st, "r"), &C.st.authors, &e1));
    check_reencodes(&C.st.authors, &e1);
    CHECK(field_of(&C.st, "r", "eightchr") && field_of(&C.st, "r", "ninechars"));
    CHECK(field_of(&C.st, "r", "a_name_of_forty_bytes_for_the_heap_path_") != NULL);
    CHECK(field_of(&C.st, "r", "eightch") == NULL && field_of(&C.st, "r", "ninechar") == NULL);
    /* Every truncation is refused cleanly. */
    fm_rec *back = fm_rec_new((const uint8_t *)"r", 1);
    for (size_t n = 0; n < e1.len; n++)
        CHECK(fm_rec_decode(back, &C.st.authors, e1.data, n) < 0);
    fm_rec_free(back);
    fm_buf_free(&e1);
    teardown();
}

/* Ids at, and past, what a record keeps inline: each found by all its bytes, none by a prefix,
 * and each record's encoding decodes back under its own id. */
static void test_record_id_lengths(void)
{
    setup();
    static const char *const ids[] = {"a", "eightchr", "ninechars",
                                      "an id of thirty-two bytes long!!"};
    for (size_t i = 0; i < FM_ARRAY_LEN(ids); i++)
        h_op(&A, FM_OP_SET_MV, ids[i], "f", fm_value_int((int64_t)i));
    h_commit(&A, COLL, T0, &L);
    h_deliver(&C.st, L.b, L.n);
    for (size_t i = 0; i < FM_ARRAY_LEN(ids); i++) {
        fm_rec *r = record_of(&C.st, ids[i]);
        CHECK(r != NULL);
        if (!r)
            continue;
        CHECK_MEM(fm_rec_id(r), ids[i], strlen(ids[i]));
        fm_buf e;
        fm_buf_init(&e);
        CHECK_OK(fm_rec_encode(r, &C.st.authors, &e));
        fm_rec *back = fm_rec_new(fm_rec_id(r), r->id_len);
        CHECK(back != NULL);
        CHECK_OK(fm_rec_decode(back, &C.st.authors, e.data, e.len));
        CHECK_EQ_INT(back->id_len, strlen(ids[i]));
        CHECK_MEM(fm_rec_id(back), ids[i], strlen(ids[i]));
        fm_rec_free(back);
        fm_buf_free(&e);
    }
    CHECK(record_of(&C.st, "eightch") == NULL && record_of(&C.st, "ninechar") == NULL);
    CHECK(record_of(&C.st, "an id of thirty-two bytes long!") == NULL);
    teardown();
}

/* A record that forty devices wrote (a counter, a multi-value register and a set each): its
 * encoding names them in key order whatever order a replica interned them in. */
static void test_record_many_authors(void)
{
    setup();
    enum { N = 40 };
    static h_author w[N];
    for (int i = 0; i < N; i++) {
        h_author_init(&w[i], (uint8_t)(10 + i));
        h_op(&w[i], FM_OP_INCR, "r", "n", fm_value_int(i + 1));
        h_op(&w[i], FM_OP_SET_MV, "r", "a", fm_value_int(i));
        char v[8];
        snprintf(v, sizeof v, "v%d", i % 7);
        h_op(&w[i], FM_OP_ADD, "r", "s", fm_value_str(v));
        h_commit(&w[i], COLL, T0 + (uint64_t)i, &L);
    }
    CHECK_EQ_INT(h_deliver(&C.st, L.b, L.n), N);
    CHECK_EQ_INT(field_of(&C.st, "r", "n")->nctrs, N);
    fm_buf e1;
    fm_buf_init(&e1);
    CHECK_OK(fm_rec_encode(record_of(&C.st, "r"), &C.st.authors, &e1));
    /* The authors: array(3), deleted, then N bin32 keys, strictly ascending. */
    fm_rd rd;
    fm_rd_init(&rd, e1.data, e1.len);
    uint32_t n;
    uint64_t del;
    CHECK_OK(fm_rd_array(&rd, &n));
    CHECK_OK(fm_rd_uint(&rd, &del));
    CHECK_OK(fm_rd_array(&rd, &n));
    CHECK_EQ_INT(n, N);
    const uint8_t *prev = NULL;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint32_t len;
        CHECK_OK(fm_rd_bin(&rd, &k, &len, FM_ID_BYTES));
        CHECK_EQ_INT(len, FM_ID_BYTES);
        CHECK(!prev || memcmp(prev, k, FM_ID_BYTES) < 0);
        prev = k;
    }
    /* Another replica that met the authors in the opposite order encodes the same bytes. */
    fm_authors other;
    fm_authors_init(&other);
    for (int i = C.st.authors.n; i-- > 0;) {
        uint32_t idx;
        CHECK_OK(fm_authors_intern(&other, fm_authors_key(&C.st.authors, (uint32_t)i), &idx));
    }
    check_reencodes(&other, &e1);
    fm_authors_free(&other);
    fm_buf_free(&e1);
    for (int i = 0; i < N; i++)
        h_author_free(&w[i]);
    teardown();
}

int main(void)
{
    RUN(test_lww_per_field);
    RUN(test_future_clock_loses_once_seen);
    RUN(test_set_add_wins);
    RUN(test_counters_sum);
    RUN(test_delete_is_final);
    RUN(test_mv_conflict_then_resolved);
    RUN(test_record_roundtrip_canonical);
    RUN(test_record_id_lengths);
    RUN(test_record_many_authors);
    TEST_MAIN_END();
}
