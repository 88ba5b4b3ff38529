/* json.c — strict JSON scalars in, JSON out. */
#include "node/json.h"

#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void fm_json_string(fm_buf *b, const uint8_t *s, size_t n)
{
    fm_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            fm_buf_putc(b, '\\');
            fm_buf_putc(b, c);
        } else if (c == '\n') {
            fm_buf_append(b, "\\n", 2);
        } else if (c == '\t') {
            fm_buf_append(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            fm_buf_printf(b, "\\u%04x", c);
        } else {
            fm_buf_putc(b, c);
        }
    }
    fm_buf_putc(b, '"');
}

void fm_json_value(fm_buf *b, const fm_value *v)
{
    switch (v->type) {
    case FM_V_NIL:
        fm_buf_append(b, "null", 4);
        break;
    case FM_V_BOOL:
        fm_buf_printf(b, "%s", v->u.b ? "true" : "false");
        break;
    case FM_V_INT:
        fm_buf_printf(b, "%lld", (long long)v->u.i);
        break;
    case FM_V_FLOAT:
        if (isinf(v->u.f)) {
            fm_buf_printf(b, "%s", v->u.f > 0 ? "1e999" : "-1e999");
        } else {
            char num[40];
            snprintf(num, sizeof num, "%.17g", v->u.f);
            /* Keep floats recognisable as floats when read back. */
            if (!strpbrk(num, ".eE"))
                strcat(num, ".0");
            fm_buf_printf(b, "%s", num);
        }
        break;
    case FM_V_STR:
        fm_json_string(b, v->u.s.bytes, v->u.s.len);
        break;
    case FM_V_BIN: {
        size_t n = sodium_base64_encoded_len(v->u.s.len, sodium_base64_VARIANT_ORIGINAL);
        char *t = malloc(n);
        if (!t) {
            b->oom = true;
            return;
        }
        sodium_bin2base64(t, n, v->u.s.bytes, v->u.s.len, sodium_base64_VARIANT_ORIGINAL);
        fm_buf_printf(b, "{\"$bin\":\"%s\"}", t);
        free(t);
        break;
    }
    }
}

void fm_json_record_members(fm_buf *b, const fm_record *rec)
{
    size_t n = fm_record_field_count(rec);
    for (size_t i = 0; i < n; i++) {
        fm_field_view f;
        fm_record_field(rec, i, &f);
        if (i)
            fm_buf_putc(b, ',');
        fm_json_string(b, (const uint8_t *)f.name, strlen(f.name));
        fm_buf_putc(b, ':');
        if (f.kind == FM_KIND_COUNTER) {
            fm_buf_printf(b, "%lld", (long long)f.counter);
        } else if (f.kind == FM_KIND_SET || (f.kind == FM_KIND_MV && f.conflict)) {
            fm_buf_printf(b, "%s", f.kind == FM_KIND_SET ? "[" : "{\"conflict\":[");
            for (size_t k = 0; k < f.nvalues; k++) {
                if (k)
                    fm_buf_putc(b, ',');
                fm_json_value(b, &f.values[k]);
            }
            fm_buf_printf(b, "%s", f.kind == FM_KIND_SET ? "]" : "]}");
        } else if (f.nvalues) {
            fm_json_value(b, &f.values[0]);
        } else {
            fm_buf_append(b, "null", 4);
        }
    }
}

char *fm_record_json(const fm_record *rec)
{
    fm_buf b;
    fm_buf_init(&b);
    fm_buf_putc(&b, '{');
    fm_json_record_members(&b, rec);
    fm_buf_putc(&b, '}');
    if (b.oom) {
        fm_buf_free(&b);
        return NULL;
    }
    return fm_buf_take_str(&b);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int read_u4(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return FM_EINVAL;
        v = v << 4 | (uint32_t)h;
    }
    *out = v;
    return 0;
}

static void put_utf8(fm_buf *b, uint32_t cp)
{
    if (cp < 0x80) {
        fm_buf_putc(b, (uint8_t)cp);
    } else if (cp < 0x800) {
        fm_buf_putc(b, (uint8_t)(0xc0 | cp >> 6));
        fm_buf_putc(b, (uint8_t)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        fm_buf_putc(b, (uint8_t)(0xe0 | cp >> 12));
        fm_buf_putc(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
        fm_buf_putc(b, (uint8_t)(0x80 | (cp & 0x3f)));
    } else {
        fm_buf_putc(b, (uint8_t)(0xf0 | cp >> 18));
        fm_buf_putc(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3f)));
        fm_buf_putc(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
        fm_buf_putc(b, (uint8_t)(0x80 | (cp & 0x3f)));
    }
}

/* A \u escape at p (after the backslash-u); consumes a following low surrogate if needed. */
static int read_escape_u(const char **pp, fm_buf *b)
{
    const char *p = *pp;
    uint32_t cp, lo;
    if (read_u4(p, &cp))
        return FM_EINVAL;
    p += 4;
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p[0] != '\\' || p[1] != 'u' || read_u4(p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
            return FM_EINVAL;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        return FM_EINVAL;
    }
    put_utf8(b, cp);
    *pp = p;
    return 0;
}

static int parse_string(const char *p, fm_value *v, char **storage)
{
    static const char ESC_IN[] = "\"\\/bfnrt", ESC_OUT[] = "\"\\/\b\f\n\r\t";
    fm_buf b;
    fm_buf_init(&b);
    p++;
    while (*p && *p != '"') {
        if ((uint8_t)*p < 0x20)
            goto bad;
        if (*p != '\\') {
            fm_buf_putc(&b, (uint8_t)*p++);
            continue;
        }
        p++;
        const char *e = *p ? strchr(ESC_IN, *p) : NULL;
        if (e) {
            fm_buf_putc(&b, (uint8_t)ESC_OUT[e - ESC_IN]);
            p++;
        } else if (*p == 'u') {
            p++;
            if (read_escape_u(&p, &b))
                goto bad;
        } else {
            goto bad;
        }
    }
    if (*p != '"' || p[1] != '\0' || b.oom || !fm_utf8_valid(b.data, b.len))
        goto bad;
    size_t len = b.len;
    *storage = fm_buf_take_str(&b);
    if (!*storage)
        return FM_ENOMEM;
    v->type = FM_V_STR;
    v->u.s.bytes = (const uint8_t *)*storage;
    v->u.s.len = (uint32_t)len;
    return len > FM_MAX_VALUE_LEN ? FM_ELIMIT : 0;
bad:
    fm_buf_free(&b);
    return FM_EINVAL;
}

/* JSON number grammar, then integer if it has no fraction or exponent and fits int64. */
static int parse_number(const char *p, fm_value *v)
{
    const char *s = p;
    bool is_float = false;
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9')
            s++;
    else
        return FM_EINVAL;
    if (*s == '.') {
        is_float = true;
        if (!(*++s >= '0' && *s <= '9'))
            return FM_EINVAL;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        is_float = true;
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!(*s >= '0' && *s <= '9'))
            return FM_EINVAL;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s)
        return FM_EINVAL;
    errno = 0;
    if (!is_float) {
        long long i = strtoll(p, NULL, 10);
        if (errno == 0) {
            *v = fm_value_int(i);
            return 0;
        }
    }
    errno = 0;
    double d = strtod(p, NULL);
    *v = fm_value_float(d);
    return 0;
}

int fm_json_parse_scalar(const char *text, fm_value *v, char **storage)
{
    *storage = NULL;
    if (strcmp(text, "null") == 0)
        *v = fm_value_nil();
    else if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0)
        *v = fm_value_bool(text[0] == 't');
    else if (text[0] == '"')
        return parse_string(text, v, storage);
    else
        return parse_number(text, v);
    return 0;
}
