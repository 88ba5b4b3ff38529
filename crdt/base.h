/*
 * base.h — internal basics shared by every module: always-on assertions, the growable byte buffer
 * and small helpers. No I/O, no globals.
 */
#ifndef FM_BASE_H
#define FM_BASE_H

#include "fieldmesh.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Invariants and programmer errors only; bad input is an error return, never an assert. */
#define FM_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(!(cond), 0))                                                          \
            fm__assert_fail(#cond, __FILE__, __LINE__);                                            \
    } while (0)
_Noreturn void fm__assert_fail(const char *expr, const char *file, int line);

#define FM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Growable byte buffer. A failed append leaves the buffer as it was and sets oom (sticky), so a
 * sequence of appends can be checked once at the end. */
typedef struct fm_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool oom;
} fm_buf;

/* memcmp of two FM_ID_BYTES keys (same order): the first eight bytes of a public key or hash
 * decide nearly always, and the binary searches over vectors of a thousand authors did little
 * else but call memcmp. */
static inline int fm_id_cmp(const uint8_t *a, const uint8_t *b)
{
    uint64_t x, y;
    memcpy(&x, a, sizeof x);
    memcpy(&y, b, sizeof y);
    if (x != y) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        x = __builtin_bswap64(x);
        y = __builtin_bswap64(y);
#endif
        return x < y ? -1 : 1;
    }
    return memcmp(a + sizeof x, b + sizeof y, FM_ID_BYTES - sizeof x);
}

/* Hash for in-memory maps (record ids, collection names): 8 bytes at a time with a
 * multiply-xorshift mix. Not keyed: the maps only place keys, nothing is ever ordered by it,
 * and the keys it takes are short and capped. */
static inline uint32_t fm_hash32(const uint8_t *p, uint32_t len)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ len;
    uint32_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, p + i, len - i);
    h = (h ^ tail) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return (uint32_t)h;
}

void fm_buf_init(fm_buf *b);
void fm_buf_free(fm_buf *b);
void fm_buf_reset(fm_buf *b); /* len = 0, keeps capacity, clears oom */
/* Reset for reuse, keeping the allocation only if it is at most keep bytes: a buffer grown from
 * nothing again for every burst costs a chain of reallocs, one kept at its largest burst costs
 * memory. A larger block goes to the calling thread's few spare blocks, where the next buffer
 * that grows past FM_BUF_SPARE_MIN takes it: the frame, plaintext and output buffers of one
 * burst after another share a handful of blocks instead of each getting its own from malloc. */
void fm_buf_recycle(fm_buf *b, size_t keep);
enum {
    FM_BUF_SPARE_MIN = 16 * 1024,      /* buffers growing past this take a spare block */
    FM_BUF_SPARE_MAX = 4 * 1024 * 1024 /* larger blocks go back to malloc */
};
/* Frees the calling thread's spare blocks: a thread that used buffers calls it before it ends. */
void fm_buf_spares_release(void);
int fm_buf_reserve(fm_buf *b, size_t extra);
int fm_buf__append_slow(fm_buf *b, const void *p, size_t n);
/* Inline fast path: the codec appends a few bytes at a time. */
static inline int fm_buf_append(fm_buf *b, const void *p, size_t n)
{
    if (__builtin_expect(!b->oom && n <= b->cap - b->len, 1)) {
        if (n)
            memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    return fm_buf__append_slow(b, p, n);
}
int fm_buf_putc(fm_buf *b, uint8_t c);
int fm_buf_printf(fm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Moves the contents out as a NUL-terminated string (caller frees); NULL on oom. */
char *fm_buf_take_str(fm_buf *b);

/* Grows an array of n used elements and *cap allocated ones (of size bytes each) so one more
 * fits, doubling (from 4). On failure the array is unchanged. */
int fm_grow(void **arr, uint32_t n, uint32_t *cap, size_t size);
/* As fm_grow, from room for one: for arrays that most often hold a single element, of which
 * there are very many (a vector per collection per connection). */
int fm_grow_from1(void **arr, uint32_t n, uint32_t *cap, size_t size);

/* Checked allocation helpers: NULL on overflow or failure. */
void *fm_calloc(size_t n, size_t size);
void *fm_reallocarray(void *p, size_t n, size_t size);
char *fm_strndup(const char *s, size_t n);

/* True if p[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool fm_utf8_valid(const uint8_t *p, size_t n);

/* Formats one log line (at most 511 bytes) and hands it to fn, if fn is set. */
typedef void (*fm_log_fn)(void *ctx, int level, const char *line);
void fm_vlog(fm_log_fn fn, void *ctx, int level, const char *fmt, va_list ap);

/* Byte-string compare: memcmp then length. */
int fm_bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

#endif
