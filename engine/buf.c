#include "buf.h"

#include "err.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fm_buf_init_with(struct fm_buf *b, char *mem, size_t cap) {
  b->p = mem;
  b->len = 0;
  b->cap = cap;
  b->borrowed = 1;
  if (cap) mem[0] = '\0';
}

int fm_buf_reserve(struct fm_buf *b, size_t extra) {
  if (extra >= SIZE_MAX - b->len - 1) return FM_E_NOMEM;
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p;
  if (b->borrowed) {
    p = malloc(cap);
    if (!p) return FM_E_NOMEM;
    if (b->len) memcpy(p, b->p, b->len + 1);
    b->borrowed = 0;
  } else {
    p = realloc(b->p, cap);
    if (!p) return FM_E_NOMEM;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

int fm_buf_add(struct fm_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (fm_buf_reserve(b, n)) return FM_E_NOMEM;
  memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

int fm_buf_adds(struct fm_buf *b, const char *s) { return fm_buf_add(b, s, strlen(s)); }

int fm_buf_addc(struct fm_buf *b, char c) { return fm_buf_add(b, &c, 1); }

int fm_buf_printf(struct fm_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return FM_E_INVAL;
  if ((size_t)n < sizeof tmp) return fm_buf_add(b, tmp, (size_t)n);
  if (fm_buf_reserve(b, (size_t)n)) return FM_E_NOMEM;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
  else return 0;
  if (n < len) return 0;
  unsigned cp = c & (0x7F >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

int fm_buf_add_json_str(struct fm_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *u = (const unsigned char *)s;
  if (fm_buf_reserve(b, n + 2)) return FM_E_NOMEM;
  if (fm_buf_addc(b, '"')) return FM_E_NOMEM;
  size_t i = 0, run = 0;
  while (i < n) {
    unsigned c = u[i];
    const char *esc = NULL;
    char ubuf[7];
    size_t adv = 1;
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') { i++; run++; continue; }
    if (c >= 0x80) {
      adv = utf8_seq(u + i, n - i);
      if (adv) { i += adv; run += adv; continue; }
      esc = "\xEF\xBF\xBD"; /* U+FFFD for an invalid byte */
      adv = 1;
    } else if (c == '"') esc = "\\\"";
    else if (c == '\\') esc = "\\\\";
    else if (c == '\n') esc = "\\n";
    else if (c == '\r') esc = "\\r";
    else if (c == '\t') esc = "\\t";
    else {
      ubuf[0] = '\\'; ubuf[1] = 'u'; ubuf[2] = '0'; ubuf[3] = '0';
      ubuf[4] = hex[c >> 4]; ubuf[5] = hex[c & 15]; ubuf[6] = '\0';
      esc = ubuf;
    }
    if (fm_buf_add(b, u + i - run, run)) return FM_E_NOMEM;
    run = 0;
    if (fm_buf_adds(b, esc)) return FM_E_NOMEM;
    i += adv;
  }
  if (fm_buf_add(b, u + i - run, run)) return FM_E_NOMEM;
  return fm_buf_addc(b, '"');
}

const char *fm_buf_cstr(struct fm_buf *b) { return b->p ? b->p : ""; }

char *fm_buf_steal(struct fm_buf *b, size_t *len) {
  if (b->borrowed) { /* the caller gets heap memory it can free */
    char *copy = malloc(b->len + 1);
    if (copy) memcpy(copy, b->p, b->len + 1);
    if (len) *len = copy ? b->len : 0;
    b->p = NULL;
    b->len = b->cap = 0;
    b->borrowed = 0;
    return copy;
  }
  char *p = b->p;
  if (len) *len = b->len;
  b->p = NULL;
  b->len = b->cap = 0;
  return p;
}

void fm_buf_free(struct fm_buf *b) {
  if (!b->borrowed) free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
  b->borrowed = 0;
}
