/* mcutil.h: small text helpers shared by metrics.c and cmdout.c (private to those two files).
 *
 * Strings that come from evidence may hold NUL bytes and invalid UTF-8, and jansson's
 * json_string rejects invalid UTF-8. Both modules therefore build every JSON string with
 * mc_jstr, which replaces each invalid byte and each NUL with U+FFFD, cuts at a bound without
 * splitting a sequence, and then uses json_stringn_nocheck on the clean copy. */
#ifndef FM_AN_MCUTIL_H
#define FM_AN_MCUTIL_H

#include "analysis.h"
#include "buf.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one. */
static inline size_t mc_utf8_seq(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
  else return 0;
  if (n < len) return 0;
  unsigned cp = c & (0x3F >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

/* Appends p[0..n) to b as valid UTF-8 without NUL bytes, at most max bytes (whole sequences).
 * Returns 0 or -1 when out of memory. */
static inline int mc_add_clean(struct fm_buf *b, const char *p, size_t n, size_t max) {
  const unsigned char *u = (const unsigned char *)p;
  size_t start = b->len;
  for (size_t i = 0; i < n;) {
    size_t adv = u[i] ? mc_utf8_seq(u + i, n - i) : 0;
    size_t outlen = adv ? adv : 3;
    if (b->len - start + outlen > max) break;
    if (adv) {
      if (fm_buf_add(b, u + i, adv)) return -1;
      i += adv;
    } else {
      if (fm_buf_add(b, "\xEF\xBF\xBD", 3)) return -1;
      i++;
    }
  }
  return 0;
}

/* A new JSON string from evidence bytes, cleaned as above and cut at max bytes; NULL when out
 * of memory. The caller owns the reference. */
static inline json_t *mc_jstr(const char *p, size_t n, size_t max) {
  char stackmem[512];
  struct fm_buf b;
  fm_buf_init_with(&b, stackmem, sizeof stackmem);
  json_t *j = NULL;
  if (mc_add_clean(&b, p, n, max) == 0) j = json_stringn_nocheck(b.p ? b.p : "", b.len);
  fm_buf_free(&b);
  return j;
}

/* Appends at most max bytes of text (valid UTF-8) to out, cutting at the last newline that fits,
 * or else at a sequence boundary, so no UTF-8 sequence is ever split. */
static inline void mc_append_bounded(struct fm_buf *out, const char *text, size_t len, size_t max) {
  if (len <= max) {
    fm_buf_add(out, text, len);
    return;
  }
  size_t cut = max;
  while (cut > 0 && text[cut - 1] != '\n') cut--;
  if (cut == 0) {
    cut = max;
    while (cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80) cut--;
  }
  fm_buf_add(out, text, cut);
}

/* Trims spaces, tabs and one pair of surrounding double quotes. */
static inline void mc_trim(const char **p, size_t *n) {
  const char *s = *p;
  size_t len = *n;
  while (len && (*s == ' ' || *s == '\t')) { s++; len--; }
  while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
  if (len >= 2 && s[0] == '"' && s[len - 1] == '"') { s++; len -= 2; }
  *p = s;
  *n = len;
}

/* Parses a number. Returns 1 for a finite value, 2 for NaN or an infinity (*out set), 0 when the
 * text is not a number. Hex and empty strings are refused. */
static inline int mc_parse_num(const char *p, size_t n, double *out) {
  char tmp[64];
  mc_trim(&p, &n);
  if (n == 0 || n >= sizeof tmp) return 0;
  {
    /* fast path for plain decimals ("-12.375"): with at most 15 digits the mantissa and the
     * power of ten are exact doubles, so one division is correctly rounded (as strtod) */
    size_t i = 0, digits = 0, frac = 0;
    int neg = 0, dot = 0;
    uint64_t m = 0;
    if (p[0] == '-' || p[0] == '+') { neg = p[0] == '-'; i = 1; }
    for (; i < n; i++) {
      char c = p[i];
      if (c >= '0' && c <= '9') {
        if (++digits > 15) break;
        m = m * 10 + (uint64_t)(c - '0');
        frac += (size_t)dot;
      } else if (c == '.' && !dot) dot = 1;
      else break;
    }
    if (i == n && digits > 0) {
      static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7,
                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
      double v = (double)m / pow10[frac];
      *out = neg ? -v : v;
      return 1;
    }
  }
  memcpy(tmp, p, n);
  tmp[n] = '\0';
  for (size_t i = 0; i < n; i++)
    if (tmp[i] == 'x' || tmp[i] == 'X') return 0;
  char *end;
  double v = strtod(tmp, &end);
  if (end == tmp || *end != '\0') return 0;
  *out = v;
  return isfinite(v) ? 1 : 2;
}

static inline int mc_digits(const char *p, size_t n, size_t at, size_t k, int *out) {
  if (at + k > n) return 0;
  int v = 0;
  for (size_t i = 0; i < k; i++) {
    if (!isdigit((unsigned char)p[at + i])) return 0;
    v = v * 10 + (p[at + i] - '0');
  }
  *out = v;
  return 1;
}

/* Parses a timestamp: ISO 8601 ("2026-11-22T10:00:00Z", "2026-11-22 10:00:00.123+02:00", no
 * zone = UTC) or an epoch number in seconds, milliseconds, microseconds or nanoseconds (told
 * apart by magnitude; seconds must be after 1973). Returns 1 with *out in epoch seconds, or 0. */
static inline int mc_parse_ts(const char *p, size_t n, double *out) {
  mc_trim(&p, &n);
  if (n == 0) return 0;
  if (n >= 10 && p[4] == '-' && p[7] == '-') {
    int Y, M, D, h = 0, mi = 0, s = 0;
    if (!mc_digits(p, n, 0, 4, &Y) || !mc_digits(p, n, 5, 2, &M) || !mc_digits(p, n, 8, 2, &D))
      return 0;
    if (M < 1 || M > 12 || D < 1 || D > 31) return 0;
    size_t i = 10;
    double frac = 0;
    long off = 0;
    if (i < n && (p[i] == 'T' || p[i] == ' ')) {
      if (!mc_digits(p, n, i + 1, 2, &h) || i + 3 >= n || p[i + 3] != ':' ||
          !mc_digits(p, n, i + 4, 2, &mi))
        return 0;
      i += 6;
      if (i < n && p[i] == ':') {
        if (!mc_digits(p, n, i + 1, 2, &s)) return 0;
        i += 3;
        if (i < n && (p[i] == '.' || p[i] == ',')) {
          double scale = 0.1;
          i++;
          while (i < n && isdigit((unsigned char)p[i])) {
            frac += (p[i] - '0') * scale;
            scale /= 10;
            i++;
          }
        }
      }
      while (i < n && p[i] == ' ') i++;
      if (i < n && (p[i] == 'Z' || p[i] == 'z')) i++;
      else if (i < n && (p[i] == '+' || p[i] == '-')) {
        int oh, om = 0;
        int sign = p[i] == '-' ? -1 : 1;
        if (!mc_digits(p, n, i + 1, 2, &oh)) return 0;
        i += 3;
        if (i < n && p[i] == ':') i++;
        if (mc_digits(p, n, i, 2, &om)) i += 2;
        off = sign * (oh * 3600L + om * 60L);
      }
    }
    if (i != n || h > 23 || mi > 59 || s > 60) return 0;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    *out = (double)timegm(&tm) - (double)off + frac;
    return 1;
  }
  double v;
  if (mc_parse_num(p, n, &v) != 1 || v <= 0) return 0;
  if (v >= 1e17) v /= 1e9;
  else if (v >= 1e14) v /= 1e6;
  else if (v >= 1e11) v /= 1e3;
  else if (v < 1e8) return 0;
  *out = v;
  return 1;
}

/* Case-insensitive search for a NUL-terminated needle in p[0..n). */
static inline const char *mc_find(const char *p, size_t n, const char *needle) {
  size_t k = strlen(needle);
  if (k == 0 || k > n) return k == 0 ? p : NULL;
  unsigned char lo = (unsigned char)tolower((unsigned char)needle[0]);
  unsigned char up = (unsigned char)toupper((unsigned char)needle[0]);
  for (size_t i = 0; i + k <= n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c != lo && c != up) continue; /* cheap first-byte filter before the compare */
    if (strncasecmp(p + i + 1, needle + 1, k - 1) == 0) return p + i;
  }
  return NULL;
}

/* Does p[0..n) start with the NUL-terminated prefix (case-sensitive)? */
static inline int mc_starts(const char *p, size_t n, const char *prefix) {
  size_t k = strlen(prefix);
  return n >= k && memcmp(p, prefix, k) == 0;
}

/* Whitespace tokenizer: up to max tokens; the last one may take the rest of the line when
 * rest_last is set. Returns the count. */
struct mc_tok {
  const char *p;
  size_t n;
};
static inline size_t mc_split_ws(const char *p, size_t n, struct mc_tok *t, size_t max,
                                 int rest_last) {
  size_t k = 0, i = 0;
  while (k < max) {
    while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
    if (i >= n) break;
    size_t s = i;
    if (rest_last && k == max - 1) {
      size_t e = n;
      while (e > s && (p[e - 1] == ' ' || p[e - 1] == '\t')) e--;
      t[k].p = p + s;
      t[k].n = e - s;
      k++;
      break;
    }
    while (i < n && p[i] != ' ' && p[i] != '\t') i++;
    t[k].p = p + s;
    t[k].n = i - s;
    k++;
  }
  return k;
}

static inline int mc_tok_eq(const struct mc_tok *t, const char *s) {
  size_t k = strlen(s);
  return t->n == k && memcmp(t->p, s, k) == 0;
}

/* Sets key to a number, or null for NaN; returns 0 or -1. */
static inline int mc_set_num(json_t *o, const char *key, double v) {
  return json_object_set_new(o, key, isfinite(v) ? json_real(v) : json_null());
}

#endif
