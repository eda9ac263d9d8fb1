/* logs_internal.h: helpers shared by logs.c and stack.c (not part of the analysis contract). */
#ifndef FM_AN_LOGS_INTERNAL_H
#define FM_AN_LOGS_INTERNAL_H

#include "analysis.h"

/* Appends p[0..n) to b as valid UTF-8: invalid bytes become U+FFFD and NUL becomes the two
 * characters "\0", so the result is always safe for json_stringn_nocheck and for prompts.
 * Returns 0 or -1 (out of memory). */
int fm_an_text_clean(struct fm_buf *b, const char *p, size_t n);
/* A new jansson string holding the clean text of p[0..n); NULL when out of memory. */
json_t *fm_an_text_json(const char *p, size_t n);
/* Copies at most cap bytes of p[0..n) into dst, cutting at a UTF-8 boundary of the source
 * (never in the middle of a sequence). Returns the number of bytes copied. */
size_t fm_an_text_copy(char *dst, size_t cap, const char *p, size_t n);
/* Appends src (valid UTF-8) to out, at most max bytes in all, cutting at a character boundary. */
void fm_an_digest_append(struct fm_buf *out, const struct fm_buf *src, size_t max);

#endif
