/* buf.h: a growable byte buffer. */
#ifndef FM_BUF_H
#define FM_BUF_H

#include <stddef.h>

/* A byte buffer; `p` is NUL-terminated whenever len > 0 or after fm_buf_cstr. Zero-init is empty. */
struct fm_buf {
  char *p;
  size_t len;
  size_t cap;
  int borrowed; /* p is caller storage (fm_buf_init_with): never realloc'd or freed */
};

/* Starts an empty buffer on caller storage (a stack array, say); it moves to the heap only if it
 * outgrows it. fm_buf_free is still required (it frees only what was allocated). */
void fm_buf_init_with(struct fm_buf *b, char *mem, size_t cap);

/* Ensures room for `extra` more bytes. Returns 0 or FM_E_NOMEM (the buffer is unchanged then). */
int fm_buf_reserve(struct fm_buf *b, size_t extra);
/* Appends n bytes. Returns 0 or FM_E_NOMEM. */
int fm_buf_add(struct fm_buf *b, const void *p, size_t n);
/* Appends a NUL-terminated string. */
int fm_buf_adds(struct fm_buf *b, const char *s);
/* Appends one byte. */
int fm_buf_addc(struct fm_buf *b, char c);
/* Appends printf-formatted text. */
int fm_buf_printf(struct fm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes included); invalid UTF-8 becomes U+FFFD. */
int fm_buf_add_json_str(struct fm_buf *b, const char *s, size_t n);
/* Returns a NUL-terminated view (never NULL; "" for an empty buffer with no storage). */
const char *fm_buf_cstr(struct fm_buf *b);
/* Hands the storage to the caller (who frees it with free()); the buffer becomes empty. */
char *fm_buf_steal(struct fm_buf *b, size_t *len);
/* Frees the storage; the buffer becomes empty and reusable. */
void fm_buf_free(struct fm_buf *b);

#endif
