/*
 * frame.h — length-prefixed records on a byte stream: a 4-byte big-endian length, then that many
 * bytes. The reader accepts input in chunks of any size (one byte at a time works) and holds at
 * most one record, whose length is checked against the caller's bound before anything is
 * buffered, so a peer cannot make it allocate past that bound.
 */
#ifndef FM_FRAME_H
#define FM_FRAME_H

#include "crdt/base.h"

enum {
    FM_RECORD_HEADER_BYTES = 4,
    /* A record buffer bigger than this is freed once its record is taken: a connection keeps
     * little between bursts, and a thousand simulated nodes' connections do not each hold
     * their largest record ever. */
    FM_FRAME_KEEP_BYTES = 16 * 1024,
};

typedef struct fm_frame_reader {
    uint8_t hdr[FM_RECORD_HEADER_BYTES];
    size_t hdr_have;
    size_t need; /* body length once the header is complete */
    fm_buf body;
} fm_frame_reader;

void fm_frame_reader_init(fm_frame_reader *r);
void fm_frame_reader_free(fm_frame_reader *r);
/* Consumes bytes from in until one record is complete or in is used up; *used gets the count.
 * *done is set when a whole record sits in r->body (consume it, then fm_frame_reader_next).
 * Errors: FM_EDECODE (zero length), FM_ELIMIT (length above max), FM_ENOMEM. */
int fm_frame_reader_feed(fm_frame_reader *r, const uint8_t *in, size_t len, size_t max,
                         size_t *used, bool *done);
/* Drops the completed record to make way for the next one. */
void fm_frame_reader_next(fm_frame_reader *r);
/* Bytes of an incomplete record held (0 at a record boundary). */
size_t fm_frame_reader_pending(const fm_frame_reader *r);
/* Appends a record header for a body of len bytes (len <= UINT32_MAX). */
int fm_frame_put_header(fm_buf *out, size_t len);

#endif
