/*
 * json.h — the JSON the CLI speaks: scalar values in (strict JSON, one scalar), values and
 * records out. Binary values are written as {"$bin":"<base64>"}.
 */
#ifndef FM_JSON_H
#define FM_JSON_H

#include "crdt/base.h"

/* Parses one JSON scalar (null, true, false, number, string). Strings are unescaped into
 * *storage (caller frees); v borrows it. FM_EINVAL on anything else. */
int fm_json_parse_scalar(const char *text, fm_value *v, char **storage);
void fm_json_string(fm_buf *b, const uint8_t *s, size_t n);
void fm_json_value(fm_buf *b, const fm_value *v);
/* The record's fields as the members of an object (without braces). */
void fm_json_record_members(fm_buf *b, const fm_record *rec);

#endif
