/*
 * control.h — the control socket through which the fieldmesh CLI talks to a running node:
 * DIR/control.sock, a Unix stream socket of mode 0600 that only the node's own user (or root)
 * may use. One request per connection:
 *   request   u32 argc, then argc times (u32 len, bytes): the CLI's argv
 *   response  u32 exit status, u32 len + stdout bytes, u32 len + stderr bytes
 * All integers big-endian. Bounded: FM_CONTROL_MAX_ARGS arguments, FM_CONTROL_MAX_REQUEST bytes.
 */
#ifndef FM_CONTROL_H
#define FM_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FM_CONTROL_SOCKET "control.sock"

enum {
    FM_CONTROL_MAX_ARGS = 1024,
    FM_CONTROL_MAX_REQUEST = 1 << 20,
    FM_CONTROL_MAX_RESPONSE = 64 << 20,
    FM_CONTROL_TIMEOUT_MS = 60 * 1000,
};

/* Client: hands argv to the node running in dir and copies its output to out and err.
 * FM_ENOTFOUND: no node runs there (run the command locally). Other errors: the node was
 * reached but the exchange failed (a message is written to err, *code = 1). */
int fm_control_call(const char *dir, int argc, char **argv, FILE *out, FILE *err, int *code);

/* Server side, for the node's event loop: a parsed request. */
typedef struct fm_control_request {
    int argc;
    char **argv; /* NULL-terminated; one allocation, free with fm_control_request_free */
} fm_control_request;

/* Parses a complete request from buf; 0 and *used on success, FM_ETRUNC if more bytes are
 * needed, FM_ELIMIT or FM_EDECODE for a bad one. */
int fm_control_parse(const uint8_t *buf, size_t len, fm_control_request *req, size_t *used);
void fm_control_request_free(fm_control_request *req);
/* Encodes a response into a malloc'd buffer. */
int fm_control_response(int code, const char *out, size_t out_len, const char *err, size_t err_len,
                        uint8_t **buf, size_t *len);

#endif
