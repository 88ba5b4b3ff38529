/* base.c — assertions, error text, the growable buffer. */
#include "crdt/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fm__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "fieldmesh: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

const char *fm_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "ok";
#define FM__ERR_TEXT(name, code, text)                                                             \
    case code:                                                                                     \
        return text;
        FM_ERRORS(FM__ERR_TEXT)
#undef FM__ERR_TEXT
    default:
        return "unknown error";
    }
}

void fm_bytes_free(fm_bytes *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

void fm_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void fm_buf_init(fm_buf *b)
{
    memset(b, 0, sizeof *b);
}

void fm_buf_free(fm_buf *b)
{
    free(b->data);
    fm_buf_init(b);
}

void fm_buf_reset(fm_buf *b)
{
    b->len = 0;
    b->oom = false;
}

/* Per thread, so the simulator's workers need no lock; a block may move between threads' caches
 * (any thread may free what another allocated). Unsorted: a linear pass over eight is cheaper
 * than keeping them in order. */
enum { SPARES = 8 };
static _Thread_local struct spare {
    uint8_t *p;
    size_t cap;
} spares[SPARES];
static _Thread_local unsigned nspares;

/* Keeps block p if the cache has room or holds a smaller one; otherwise frees it. */
static void spare_put(uint8_t *p, size_t cap)
{
    if (cap < FM_BUF_SPARE_MIN || cap > FM_BUF_SPARE_MAX) {
        free(p);
        return;
    }
    if (nspares < SPARES) {
        spares[nspares++] = (struct spare){p, cap};
        return;
    }
    unsigned least = 0;
    for (unsigned i = 1; i < SPARES; i++)
        if (spares[i].cap < spares[least].cap)
            least = i;
    if (spares[least].cap < cap) {
        free(spares[least].p);
        spares[least] = (struct spare){p, cap};
    } else {
        free(p);
    }
}

/* The smallest spare block of at least need bytes, taken out of the cache (NULL: none). */
static uint8_t *spare_take(size_t need, size_t *cap)
{
    unsigned best = SPARES;
    for (unsigned i = 0; i < nspares; i++)
        if (spares[i].cap >= need && (best == SPARES || spares[i].cap < spares[best].cap))
            best = i;
    if (best == SPARES)
        return NULL;
    uint8_t *p = spares[best].p;
    *cap = spares[best].cap;
    spares[best] = spares[--nspares];
    return p;
}

void fm_buf_spares_release(void)
{
    while (nspares)
        free(spares[--nspares].p);
}

void fm_buf_recycle(fm_buf *b, size_t keep)
{
    if (b->cap > keep) {
        spare_put(b->data, b->cap);
        fm_buf_init(b);
    } else {
        fm_buf_reset(b);
    }
}

int fm_buf_reserve(fm_buf *b, size_t extra)
{
    if (b->oom)
        return FM_ENOMEM;
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return FM_ENOMEM;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < extra)
        cap *= 2;
    if (cap > FM_BUF_SPARE_MIN && nspares) {
        size_t got;
        uint8_t *q = spare_take(b->len + extra, &got);
        if (q) {
            if (b->len)
                memcpy(q, b->data, b->len);
            free(b->data);
            b->data = q;
            b->cap = got;
            return 0;
        }
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return FM_ENOMEM;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int fm_buf__append_slow(fm_buf *b, const void *p, size_t n)
{
    int rc = fm_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int fm_buf_putc(fm_buf *b, uint8_t c)
{
    return fm_buf_append(b, &c, 1);
}

int fm_buf_printf(fm_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return FM_EINVAL;
    int rc = fm_buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *fm_buf_take_str(fm_buf *b)
{
    if (fm_buf_putc(b, 0)) {
        fm_buf_free(b);
        return NULL;
    }
    char *s = (char *)b->data;
    fm_buf_init(b);
    return s;
}

static int grow(void **arr, uint32_t n, uint32_t *cap, size_t size, uint32_t first)
{
    if (n < *cap)
        return 0;
    if (*cap > UINT32_MAX / 2)
        return FM_ENOMEM;
    uint32_t c = *cap ? *cap * 2 : first;
    void *p = fm_reallocarray(*arr, c, size);
    if (!p)
        return FM_ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

int fm_grow(void **arr, uint32_t n, uint32_t *cap, size_t size)
{
    return grow(arr, n, cap, size, 4);
}

int fm_grow_from1(void **arr, uint32_t n, uint32_t *cap, size_t size)
{
    return grow(arr, n, cap, size, 1);
}

void *fm_calloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size ? size : 1);
}

void *fm_reallocarray(void *p, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = n * size;
    return realloc(p, bytes ? bytes : 1);
}

char *fm_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

bool fm_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

int fm_bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

void fm_vlog(fm_log_fn fn, void *ctx, int level, const char *fmt, va_list ap)
{
    if (!fn)
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    fn(ctx, level, line);
}
