/* logs.c: log analysis over a stream of lines, in bounded memory.
 *
 * Per line: a timestamp at the head of the line (ISO 8601 / RFC 3339, log4j, kubectl
 * --timestamps, syslog, Apache/nginx, Go, klog, JSON lines with epoch seconds or millis), the
 * severity (level token, JSON level, klog letter, HTTP status, keywords as a fallback), the
 * Drain template of the message, and a few trigger words for state transitions.
 *
 * Memory does not grow with the input: templates are capped (FM_LOGS_MAX_TEMPLATES, then an
 * "other" bucket), excerpts are fixed-size copies, the errors-per-minute series has a fixed
 * number of buckets whose width doubles as the span grows, bursts and transitions are capped.
 *
 * The hot path allocates only when a new template is made: the message is tokenised in place,
 * variable tokens are masked into a scratch buffer allocated once, and each token is hashed; a
 * cache of whole masked lines finds the template of a repeated shape in one lookup, and a
 * fixed-depth prefix tree (token count + first token, as a hash table) finds candidates. */
#include "analysis.h"
#include "logs_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FM_LOGS_MAX_TEMPLATES 5000 /* then lines of new shapes count in "other" */
#define FM_LOGS_MAX_TOKENS 32      /* tokens of a message that take part in templates */
#define FM_LOGS_TOKEN_TEXT 128     /* bytes of one token kept in a template's text */
#define FM_LOGS_LEAF_SCAN 128      /* candidates compared in one prefix-tree leaf */
#define FM_LOGS_SIM 0.5            /* Drain similarity threshold */
#define FM_LOGS_EXAMPLE 200        /* bytes of a template's example line */
#define FM_LOGS_CTX 5              /* context lines before and after an error */
#define FM_LOGS_CTX_BYTES 240      /* bytes kept of one context line */
#define FM_LOGS_TEXT_BYTES 512     /* bytes kept of the error line itself */
#define FM_LOGS_CANDIDATES 16      /* error templates whose first line is kept for "worst" */
#define FM_LOGS_BURST_ERRORS 10    /* a burst: this many errors ... */
#define FM_LOGS_BURST_LINES 50     /* ... within this many lines */
#define FM_LOGS_MAX_BURSTS 20
#define FM_LOGS_SERIES 240         /* buckets of the errors-per-minute series */
#define FM_LOGS_MAX_TRANSITIONS 50
#define FM_LOGS_OUT_TEMPLATES 50
#define FM_LOGS_OUT_CLUSTERS 20
#define LEAF_SLOTS 16384 /* power of two, > 2 * FM_LOGS_MAX_TEMPLATES */
#define CACHE_SLOTS 65536

enum { SEV_UNKNOWN, SEV_TRACE, SEV_DEBUG, SEV_INFO, SEV_WARN, SEV_ERROR, SEV_FATAL, SEV_N };
static const char *const sev_names[SEV_N] = {"unknown", "trace", "debug", "info",
                                              "warn",    "error", "fatal"};

enum {
  TS_NONE,
  TS_ISO8601,
  TS_LOG4J,
  TS_KUBERNETES,
  TS_SYSLOG,
  TS_APACHE,
  TS_NGINX_ERROR,
  TS_GO,
  TS_KLOG,
  TS_JSON,
  TS_CTIME,
  TS_N
};
static const char *const ts_names[TS_N] = {NULL,     "iso8601", "log4j", "kubernetes",
                                           "syslog", "apache",  "nginx_error", "go",
                                           "klog",   "json",    "ctime"};

/* ---- text helpers (shared with stack.c through logs_internal.h) ------------------------------ */

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the byte at p does not start one. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned min;
  if (c >= 0xc2 && c <= 0xdf) len = 2, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) len = 3, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  unsigned cp = c & (0x3f >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

int fm_an_text_clean(struct fm_buf *b, const char *p, size_t n) {
  const unsigned char *u = (const unsigned char *)p;
  size_t i = 0;
  if (fm_buf_reserve(b, n + 8) != 0) return -1;
  while (i < n) {
    size_t run = i;
    while (run < n && u[run] >= 0x20 && u[run] < 0x80) run++; /* fast path: printable ASCII */
    if (run > i && fm_buf_add(b, p + i, run - i) != 0) return -1;
    i = run;
    if (i >= n) break;
    if (u[i] == 0) {
      if (fm_buf_add(b, "\\0", 2) != 0) return -1;
      i++;
      continue;
    }
    size_t l = utf8_seq(u + i, n - i);
    if (l == 0) {
      if (fm_buf_add(b, "\xef\xbf\xbd", 3) != 0) return -1;
      i++;
    } else {
      if (fm_buf_add(b, p + i, l) != 0) return -1;
      i += l;
    }
  }
  return 0;
}

json_t *fm_an_text_json(const char *p, size_t n) {
  struct fm_buf b = {0};
  json_t *j = NULL;
  if (fm_an_text_clean(&b, p, n) == 0) j = json_stringn_nocheck(b.p ? b.p : "", b.len);
  fm_buf_free(&b);
  return j;
}

size_t fm_an_text_copy(char *dst, size_t cap, const char *p, size_t n) {
  if (n > cap) {
    n = cap;
    /* back up over continuation bytes so a multi-byte sequence is not cut */
    size_t k = n;
    while (k > 0 && k > n - 4 && ((unsigned char)p[k] & 0xc0) == 0x80) k--;
    if (k < n && ((unsigned char)p[k] & 0xc0) == 0x80) k = n;
    else if (k < n) n = k;
  }
  memcpy(dst, p, n);
  return n;
}

void fm_an_digest_append(struct fm_buf *out, const struct fm_buf *src, size_t max) {
  size_t n = src->len;
  if (n > max) {
    /* whole lines when the last one that fits ends in the second half; else a character cut */
    size_t nl = max;
    while (nl > 0 && src->p[nl - 1] != '\n') nl--;
    if (nl > max / 2) n = nl;
    else {
      n = max;
      while (n > 0 && ((unsigned char)src->p[n] & 0xc0) == 0x80) n--;
    }
  }
  if (n) fm_buf_add(out, src->p, n);
}

/* ---- character classes ---------------------------------------------------------------------- */

/* Punctuation that wraps a token, as bit sets (a table: strchr is slow on the hot path and
 * matches NUL). */
enum {
  C_MOPEN = 1,   /* ([{<'"      before a masked token */
  C_MCLOSE = 2,  /* )]}>'",;.:  after a masked token */
  C_VOPEN = 4,   /* "'[(        around a key=value value */
  C_VCLOSE = 8,  /* "')]                                 */
  C_WOPEN = 16,  /* "'`([{<     around a transition word */
  C_WCLOSE = 32, /* "'`)]}>.,;:!                         */
  C_LOPEN = 64,  /* [(<|        around a level token */
  C_LCLOSE = 128 /* ])>|:,                              */
};
static const unsigned char cls[256] = {
    ['('] = C_MOPEN | C_VOPEN | C_WOPEN | C_LOPEN,
    ['['] = C_MOPEN | C_VOPEN | C_WOPEN | C_LOPEN,
    ['{'] = C_MOPEN | C_WOPEN,
    ['<'] = C_MOPEN | C_WOPEN | C_LOPEN,
    ['\''] = C_MOPEN | C_MCLOSE | C_VOPEN | C_VCLOSE | C_WOPEN | C_WCLOSE,
    ['"'] = C_MOPEN | C_MCLOSE | C_VOPEN | C_VCLOSE | C_WOPEN | C_WCLOSE,
    ['`'] = C_WOPEN | C_WCLOSE,
    [')'] = C_MCLOSE | C_VCLOSE | C_WCLOSE | C_LCLOSE,
    [']'] = C_MCLOSE | C_VCLOSE | C_WCLOSE | C_LCLOSE,
    ['}'] = C_MCLOSE | C_WCLOSE,
    ['>'] = C_MCLOSE | C_WCLOSE | C_LCLOSE,
    [','] = C_MCLOSE | C_WCLOSE | C_LCLOSE,
    [';'] = C_MCLOSE | C_WCLOSE,
    ['.'] = C_MCLOSE | C_WCLOSE,
    [':'] = C_MCLOSE | C_WCLOSE | C_LCLOSE,
    ['!'] = C_WCLOSE,
    ['|'] = C_LOPEN | C_LCLOSE,
};
#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* ---- time ----------------------------------------------------------------------------------- */

static int64_t days_from_civil(int y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return (int64_t)era * 146097 + (int64_t)doe - 719468;
}

static int dig(char c) { return c >= '0' && c <= '9' ? c - '0' : -1; }

/* n digits at p as a number, or -1. */
static int num(const char *p, int n) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    int d = dig(p[i]);
    if (d < 0) return -1;
    v = v * 10 + d;
  }
  return v;
}

static int month_abbr(const char *p) {
  static const char m[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  for (int i = 0; i < 12; i++)
    if (p[0] == m[i * 3] && p[1] == m[i * 3 + 1] && p[2] == m[i * 3 + 2]) return i + 1;
  return 0;
}

struct ts {
  int fmt;
  int has_year;
  int year;
  int64_t ms; /* milliseconds since the epoch, UTC */
  size_t end; /* bytes of the line taken by the timestamp (and its brackets) */
  int sev;    /* a severity the format itself carries (klog letter, HTTP status), else 0 */
};

static int valid_dt(int mo, int d, int h, int mi, int sec) {
  return mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h >= 0 && h <= 23 && mi >= 0 && mi <= 59 &&
         sec >= 0 && sec <= 60;
}

static int64_t to_ms(int y, int mo, int d, int h, int mi, int sec, int frac_ms, int off_min) {
  int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
  return ((days * 86400 + h * 3600 + mi * 60 + sec) - (int64_t)off_min * 60) * 1000 + frac_ms;
}

/* ".123" or ",123456789": returns the bytes taken, *ms the milliseconds. */
static size_t parse_frac(const char *p, size_t n, int *ms, int *ndig) {
  *ms = 0;
  *ndig = 0;
  if (n < 2 || (p[0] != '.' && p[0] != ',') || dig(p[1]) < 0) return 0;
  size_t i = 1;
  int v = 0, k = 0;
  while (i < n && dig(p[i]) >= 0) {
    if (k < 3) v = v * 10 + dig(p[i]);
    k++;
    i++;
  }
  for (int j = k; j < 3; j++) v *= 10;
  *ms = v;
  *ndig = k;
  return i;
}

/* "Z", "+02:00", "+0200", "-05": returns the bytes taken, *off in minutes east of UTC. */
static size_t parse_zone(const char *p, size_t n, int *off) {
  *off = 0;
  if (n >= 1 && p[0] == 'Z') return 1;
  if (n >= 3 && (p[0] == '+' || p[0] == '-')) {
    int h = num(p + 1, 2);
    if (h < 0 || h > 14) return 0;
    int mi = 0;
    size_t k = 3;
    if (n >= 6 && p[3] == ':' && num(p + 4, 2) >= 0) mi = num(p + 4, 2), k = 6;
    else if (n >= 5 && num(p + 3, 2) >= 0) mi = num(p + 3, 2), k = 5;
    *off = (p[0] == '-' ? -1 : 1) * (h * 60 + mi);
    return k;
  }
  return 0;
}

/* "YYYY-MM-DD[T ]HH:MM:SS[.frac][zone]" at p. */
static size_t parse_iso(const char *p, size_t n, struct ts *t, int *sep_t, int *ndig, int *zoned) {
  if (n < 19 || p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != ' ') || p[13] != ':' ||
      p[16] != ':')
    return 0;
  int y = num(p, 4), mo = num(p + 5, 2), d = num(p + 8, 2), h = num(p + 11, 2),
      mi = num(p + 14, 2), s = num(p + 17, 2);
  if (y < 0 || !valid_dt(mo, d, h, mi, s)) return 0;
  size_t i = 19;
  int ms = 0, off = 0;
  i += parse_frac(p + i, n - i, &ms, ndig);
  size_t z = parse_zone(p + i, n - i, &off);
  *zoned = z > 0;
  i += z;
  *sep_t = p[10] == 'T';
  t->has_year = 1;
  t->year = y;
  t->ms = to_ms(y, mo, d, h, mi, s, ms, off);
  return i;
}

/* "YYYY/MM/DD HH:MM:SS[.frac]" (Go's log package, nginx error log). */
static size_t parse_slash(const char *p, size_t n, struct ts *t) {
  if (n < 19 || p[4] != '/' || p[7] != '/' || p[10] != ' ' || p[13] != ':' || p[16] != ':')
    return 0;
  int y = num(p, 4), mo = num(p + 5, 2), d = num(p + 8, 2), h = num(p + 11, 2),
      mi = num(p + 14, 2), s = num(p + 17, 2);
  if (y < 0 || !valid_dt(mo, d, h, mi, s)) return 0;
  int ms = 0, nd = 0;
  size_t i = 19 + parse_frac(p + 19, n - 19, &ms, &nd);
  t->has_year = 1;
  t->year = y;
  t->ms = to_ms(y, mo, d, h, mi, s, ms, 0);
  return i;
}

/* "Mar  5 14:22:01" (syslog, no year). */
static size_t parse_syslog(const char *p, size_t n, struct ts *t, int year) {
  if (n < 15 || p[3] != ' ' || p[9] != ':' || p[12] != ':') return 0;
  int mo = month_abbr(p);
  if (!mo) return 0;
  int d = p[4] == ' ' ? dig(p[5]) : num(p + 4, 2);
  int h = num(p + 7, 2), mi = num(p + 10, 2), s = num(p + 13, 2);
  if (d < 0 || !valid_dt(mo, d, h, mi, s)) return 0;
  int ms = 0, nd = 0;
  size_t i = 15 + parse_frac(p + 15, n - 15, &ms, &nd);
  t->ms = to_ms(year, mo, d, h, mi, s, ms, 0);
  return i;
}

/* "Tue Mar  5 14:22:01 2024" / "Tue Mar 05 14:22:01.123456 2024" (dmesg -T, Apache error log). */
static size_t parse_ctime(const char *p, size_t n, struct ts *t) {
  if (n < 24 || p[3] != ' ' || p[7] != ' ' || p[10] != ' ' || p[13] != ':' || p[16] != ':')
    return 0;
  int mo = month_abbr(p + 4);
  int d = p[8] == ' ' ? dig(p[9]) : num(p + 8, 2);
  int h = num(p + 11, 2), mi = num(p + 14, 2), sec = num(p + 17, 2);
  if (!mo || d < 0 || !valid_dt(mo, d, h, mi, sec)) return 0;
  int ms = 0, nd = 0;
  size_t i = 19 + parse_frac(p + 19, n - 19, &ms, &nd);
  if (i + 5 > n || p[i] != ' ') return 0;
  int y = num(p + i + 1, 4);
  if (y < 0) return 0;
  t->has_year = 1;
  t->year = y;
  t->ms = to_ms(y, mo, d, h, mi, sec, ms, 0);
  return i + 5;
}

/* "E0305 14:22:01.123456" (klog; no year). */
static size_t parse_klog(const char *p, size_t n, struct ts *t, int year) {
  if (n < 21 || (p[0] != 'I' && p[0] != 'W' && p[0] != 'E' && p[0] != 'F') || p[5] != ' ' || p[8] != ':' || p[11] != ':' ||
      p[14] != '.')
    return 0;
  int mo = num(p + 1, 2), d = num(p + 3, 2), h = num(p + 6, 2), mi = num(p + 9, 2),
      s = num(p + 12, 2);
  if (!valid_dt(mo, d, h, mi, s)) return 0;
  int ms = 0, nd = 0;
  size_t i = 14 + parse_frac(p + 14, n - 14, &ms, &nd);
  t->ms = to_ms(year, mo, d, h, mi, s, ms, 0);
  t->sev = p[0] == 'I' ? SEV_INFO : p[0] == 'W' ? SEV_WARN : p[0] == 'E' ? SEV_ERROR : SEV_FATAL;
  return i;
}

/* "[05/Mar/2024:14:22:01 +0000]" anywhere in the first bytes (Apache/nginx access logs); the
 * HTTP status after the quoted request sets the severity. */
static size_t parse_apache(const char *p, size_t n, struct ts *t) {
  size_t lim = n < 128 ? n : 128;
  const char *b = memchr(p, '[', lim);
  if (!b) return 0;
  size_t i = (size_t)(b - p) + 1;
  if (n - i < 27 || p[i + 2] != '/' || p[i + 6] != '/' || p[i + 11] != ':' || p[i + 20] != ' ')
    return 0;
  const char *q = p + i;
  int d = num(q, 2), mo = month_abbr(q + 3), y = num(q + 7, 4), h = num(q + 12, 2),
      mi = num(q + 15, 2), s = num(q + 18, 2), off = 0;
  if (y < 0 || !valid_dt(mo, d, h, mi, s)) return 0;
  size_t z = parse_zone(q + 21, n - i - 21, &off);
  if (!z || i + 21 + z >= n || q[21 + z] != ']') return 0;
  t->has_year = 1;
  t->year = y;
  t->ms = to_ms(y, mo, d, h, mi, s, 0, off);
  size_t end = i + 22 + z;
  /* ' "GET / HTTP/1.1" 503 ' */
  const char *rq = memchr(p + end, '"', n - end < 8 ? n - end : 8);
  if (rq) {
    const char *rq2 = memchr(rq + 1, '"', (size_t)(p + n - rq - 1));
    if (rq2 && p + n - rq2 >= 5 && rq2[1] == ' ') {
      int st = num(rq2 + 2, 3);
      if (st >= 100 && st <= 599 && (rq2 + 5 == p + n || rq2[5] == ' '))
        t->sev = st >= 500 ? SEV_ERROR : st >= 400 ? SEV_WARN : SEV_INFO;
    }
  }
  return end;
}

/* ---- severity words ------------------------------------------------------------------------- */

/* Case-insensitive equality with a lower-case literal; the length test comes first and is a
 * constant, which keeps the many word tests of the hot path cheap. */
static int ieq_n(const char *a, const char *lit, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)a[i];
    if (c >= 'A' && c <= 'Z') c += 32;
    if (c != (unsigned char)lit[i]) return 0;
  }
  return 1;
}
#define ieq(a, n, lit) ((n) == sizeof(lit) - 1 && ieq_n((a), (lit), sizeof(lit) - 1))

/* The severity a level word names ("ERROR", "warning", "E"? no), or 0. */
static int level_word(const char *p, size_t n) {
  if (n < 3 || n > 11) return 0;
  switch (tolower((unsigned char)p[0])) {
  case 'a': return ieq(p, n, "alert") ? SEV_FATAL : 0;
  case 'c': return ieq(p, n, "crit") || ieq(p, n, "critical") ? SEV_FATAL : 0;
  case 'd': return ieq(p, n, "debug") || ieq(p, n, "dbug") ? SEV_DEBUG : 0;
  case 'e':
    if (ieq(p, n, "error") || ieq(p, n, "err") || ieq(p, n, "eror")) return SEV_ERROR;
    return ieq(p, n, "emerg") || ieq(p, n, "emergency") ? SEV_FATAL : 0;
  case 'f':
    if (ieq(p, n, "fatal")) return SEV_FATAL;
    return ieq(p, n, "fine") ? SEV_DEBUG : ieq(p, n, "finer") || ieq(p, n, "finest") ? SEV_TRACE : 0;
  case 'i': return ieq(p, n, "info") || ieq(p, n, "information") ? SEV_INFO : 0;
  case 'n': return ieq(p, n, "notice") ? SEV_INFO : 0;
  case 'p': return ieq(p, n, "panic") ? SEV_FATAL : 0;
  case 's': return ieq(p, n, "severe") ? SEV_ERROR : 0;
  case 't': return ieq(p, n, "trace") ? SEV_TRACE : 0;
  case 'v': return ieq(p, n, "verbose") ? SEV_TRACE : 0;
  case 'w': return ieq(p, n, "warn") || ieq(p, n, "warning") ? SEV_WARN : 0;
  default: return 0;
  }
}

/* A level token with its decorations: "ERROR", "[error]", "<warn>", "ERROR:", "level=error",
 * "lvl=warn", "severity=info". */
static int level_token(const char *p, size_t n) {
  const char *eq = n > 3 && n < 24 ? memchr(p, '=', n) : NULL;
  if (eq) {
    size_t kl = (size_t)(eq - p);
    if (!ieq(p, kl, "level") && !ieq(p, kl, "lvl") && !ieq(p, kl, "severity") &&
        !ieq(p, kl, "loglevel"))
      return 0;
    p += kl + 1, n -= kl + 1;
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') p++, n -= 2;
    return level_word(p, n);
  }
  while (n && IS(p[0], C_LOPEN)) p++, n--;
  while (n && IS(p[n - 1], C_LCLOSE)) n--;
  /* Apache 2.4 error log: "[proxy:error]" */
  const char *colon = n > 4 && n < 24 ? memchr(p, ':', n) : NULL;
  if (colon) n -= (size_t)(colon + 1 - p), p = colon + 1;
  return level_word(p, n);
}

/* Keywords when no level token was found (syslog, dmesg, plain output). Case-sensitive: the
 * capitalised forms are what loggers and the kernel print. One pass over the line: only bytes
 * that start a keyword are looked at (memmem per keyword was the slowest part for such logs). */
static const struct {
  const char *w;
  unsigned char len, sev;
} kw[] = {
    /* grouped by first byte; kw_first below indexes the groups */
    {"panic:", 6, SEV_FATAL},        {"FATAL", 5, SEV_FATAL},       {"Failed", 6, SEV_WARN},
    {"Kernel panic", 12, SEV_FATAL}, {"CRITICAL", 8, SEV_FATAL},    {"Call Trace:", 11, SEV_ERROR},
    {"Traceback (most recent call last)", 33, SEV_ERROR},           {"Exception", 9, SEV_ERROR},
    {"ERROR", 5, SEV_ERROR},         {"Error:", 6, SEV_ERROR},      {"error:", 6, SEV_ERROR},
    {"Out of memory", 13, SEV_ERROR}, {"oom-kill", 8, SEV_ERROR},   {"segfault", 8, SEV_ERROR},
    {"BUG:", 4, SEV_ERROR},          {"WARN", 4, SEV_WARN},         {"failed", 6, SEV_WARN},
    {"timed out", 9, SEV_WARN},      {"refused", 7, SEV_WARN},
};
/* 1 + the index of the first keyword starting with the byte, or 0 */
static const unsigned char kw_first[256] = {
    ['p'] = 1,  ['F'] = 2,  ['K'] = 4,  ['C'] = 5,  ['T'] = 7,  ['E'] = 8,  ['e'] = 11,
    ['O'] = 12, ['o'] = 13, ['s'] = 14, ['B'] = 15, ['W'] = 16, ['f'] = 17, ['t'] = 18, ['r'] = 19};

static int keyword_severity(const char *p, size_t n) {
  int best = 0;
  if (n < 4) return 0;
  for (size_t i = 0; i + 4 <= n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (!kw_first[c]) continue;
    for (size_t k = kw_first[c] - 1u; k < sizeof kw / sizeof kw[0] && kw[k].w[0] == (char)c; k++)
      if (kw[k].sev > best && i + kw[k].len <= n && memcmp(p + i, kw[k].w, kw[k].len) == 0) {
        best = kw[k].sev;
        if (best == SEV_FATAL) return best;
      }
  }
  return best;
}

/* ---- JSON lines ----------------------------------------------------------------------------- */

/* Skips a JSON string starting at p[i] == '"'; returns the index after the closing quote. */
static size_t js_skip_str(const char *p, size_t n, size_t i) {
  for (i++; i < n; i++) {
    if (p[i] == '\\') i++;
    else if (p[i] == '"') return i + 1;
  }
  return n;
}

static size_t js_skip_value(const char *p, size_t n, size_t i) {
  if (i >= n) return n;
  if (p[i] == '"') return js_skip_str(p, n, i);
  if (p[i] == '{' || p[i] == '[') {
    int depth = 0;
    for (; i < n; i++) {
      if (p[i] == '"') {
        i = js_skip_str(p, n, i) - 1;
        continue;
      }
      if (p[i] == '{' || p[i] == '[') depth++;
      else if ((p[i] == '}' || p[i] == ']') && --depth == 0) return i + 1;
    }
    return n;
  }
  while (i < n && p[i] != ',' && p[i] != '}') i++;
  return i;
}

static int64_t epoch_to_ms(double v) {
  if (v > 1e17) return (int64_t)(v / 1e6); /* nanoseconds */
  if (v > 1e14) return (int64_t)(v / 1e3); /* microseconds */
  if (v > 1e11) return (int64_t)v;         /* milliseconds */
  return (int64_t)(v * 1000.0);            /* seconds */
}

/* Top-level keys of a JSON object line: the timestamp, the level and the message. Returns 1 when
 * the line is an object. */
static int parse_json_line(const char *p, size_t n, struct ts *t, int *sev, const char **msg,
                           size_t *msglen) {
  size_t i = 1;
  int got = 0;
  while (i < n) {
    while (i < n && (p[i] == ' ' || p[i] == ',' || p[i] == '\t')) i++;
    if (i >= n || p[i] != '"') break;
    size_t ks = i + 1, ke = js_skip_str(p, n, i);
    size_t kl = ke - 1 - ks;
    i = ke;
    while (i < n && (p[i] == ' ' || p[i] == ':')) i++;
    size_t vs = i, ve = js_skip_value(p, n, i);
    i = ve;
    const char *k = p + ks;
    int is_ts = ieq(k, kl, "ts") || ieq(k, kl, "time") || ieq(k, kl, "@timestamp") ||
                ieq(k, kl, "timestamp") || ieq(k, kl, "t") || ieq(k, kl, "datetime");
    int is_lvl = ieq(k, kl, "level") || ieq(k, kl, "severity") || ieq(k, kl, "lvl") ||
                 ieq(k, kl, "levelname") || ieq(k, kl, "log.level") || ieq(k, kl, "loglevel");
    int is_msg = ieq(k, kl, "msg") || ieq(k, kl, "message") || ieq(k, kl, "log");
    if (is_ts && !t->fmt && ve > vs) {
      if (p[vs] == '"') {
        int st, nd, z;
        struct ts tt = {0};
        if (parse_iso(p + vs + 1, ve - vs - 1, &tt, &st, &nd, &z)) {
          t->ms = tt.ms, t->has_year = 1, t->year = tt.year, got = 1;
        }
      } else if (dig(p[vs]) >= 0) {
        char tmp[32];
        size_t l = ve - vs < sizeof tmp - 1 ? ve - vs : sizeof tmp - 1;
        memcpy(tmp, p + vs, l);
        tmp[l] = 0;
        double v = strtod(tmp, NULL);
        if (v > 1e8 && v < 1e19) {
          t->ms = epoch_to_ms(v), got = 1;
          time_t sec = (time_t)(t->ms / 1000);
          struct tm tm;
          if (gmtime_r(&sec, &tm)) t->has_year = 1, t->year = tm.tm_year + 1900;
        }
      }
      if (got) t->fmt = TS_JSON;
    } else if (is_lvl && ve > vs) {
      if (p[vs] == '"') *sev = level_word(p + vs + 1, ve - vs - 2);
      else {
        int v = num(p + vs, (int)(ve - vs < 2 ? ve - vs : 2));
        /* bunyan / pino numeric levels */
        if (v >= 60) *sev = SEV_FATAL;
        else if (v >= 50) *sev = SEV_ERROR;
        else if (v >= 40) *sev = SEV_WARN;
        else if (v >= 30) *sev = SEV_INFO;
        else if (v >= 20) *sev = SEV_DEBUG;
        else if (v >= 10) *sev = SEV_TRACE;
      }
    } else if (is_msg && ve > vs + 1 && p[vs] == '"') {
      *msg = p + vs + 1;
      *msglen = ve - vs - 2;
    }
  }
  return 1;
}

/* ---- header: timestamp and level ------------------------------------------------------------ */

struct hdr {
  struct ts t;
  int sev;
  const char *msg; /* the part that goes to template mining */
  size_t msglen;
};

static int is_sp(char c) { return c == ' ' || c == '\t'; }

/* Parses the timestamp at the head of the line (after an optional "[" or "<PRI>"). */
static void parse_ts(const char *p, size_t n, int year, struct ts *t) {
  memset(t, 0, sizeof *t);
  size_t i = 0;
  if (n > 3 && p[0] == '<') { /* syslog priority "<34>" */
    size_t k = 1;
    while (k < n && k < 5 && dig(p[k]) >= 0) k++;
    if (k < n && p[k] == '>') i = k + 1;
  }
  int bracket = i < n && p[i] == '[';
  if (bracket) i++;
  const char *q = p + i;
  size_t m = n - i, l;
  int sep_t, nd, zoned;
  if (m >= 19 && dig(q[0]) >= 0) {
    if ((l = parse_iso(q, m, t, &sep_t, &nd, &zoned))) {
      /* kubectl --timestamps: RFC 3339 with nanoseconds (Go trims trailing zeros, so 7+ digits)
       * and Z, then one space */
      if (sep_t && nd >= 7 && zoned && p[l - 1] == 'Z' && i == 0 && l < n && p[l] == ' ')
        t->fmt = TS_KUBERNETES;
      else t->fmt = TS_ISO8601; /* refined to log4j by the caller when a level follows */
      t->end = i + l;
    } else if ((l = parse_slash(q, m, t))) {
      t->fmt = TS_GO;
      t->end = i + l;
      if (i + l + 2 < n && p[i + l] == ' ' && p[i + l + 1] == '[') t->fmt = TS_NGINX_ERROR;
    }
  } else if (m >= 15 && q[0] >= 'A' && q[0] <= 'Z') {
    if ((l = parse_syslog(q, m, t, year))) t->fmt = TS_SYSLOG, t->end = i + l;
    else if (!bracket && (l = parse_klog(q, m, t, year))) t->fmt = TS_KLOG, t->end = i + l;
    else if ((l = parse_ctime(q, m, t))) t->fmt = TS_CTIME, t->end = i + l;
  }
  if (t->fmt && bracket && t->end < n && p[t->end] == ']') t->end++;
  if (!t->fmt && n >= 28 && (l = parse_apache(p, n, t))) {
    t->fmt = TS_APACHE;
    t->end = 0; /* the whole access line is the message (client address, request, status) */
  }
}

static void parse_header(const char *p, size_t n, int year, struct hdr *h) {
  parse_ts(p, n, year, &h->t);
  h->sev = h->t.sev;
  h->msg = p + h->t.end;
  h->msglen = n - h->t.end;
  if (!h->t.fmt && n >= 2 && p[0] == '{') {
    parse_json_line(p, n, &h->t, &h->sev, &h->msg, &h->msglen);
    return;
  }
  /* kubectl --timestamps: the container's own line follows; parse its header for the level */
  if (h->t.fmt == TS_KUBERNETES && h->msglen > 1) {
    struct hdr inner;
    parse_header(h->msg + 1, h->msglen - 1, year, &inner);
    h->sev = inner.sev;
    h->msg = inner.msg;
    h->msglen = inner.msglen;
    return;
  }
  if (h->sev) return;
  /* The level is one of the first tokens after the timestamp (after a thread, pid or host);
   * logfmt puts "level=..." anywhere, so look a little further for that form. */
  const char *q = h->msg, *e = p + n;
  for (int k = 0; k < 8 && q < e; k++) {
    while (q < e && is_sp(*q)) q++;
    const char *s = q;
    while (q < e && !is_sp(*q)) q++;
    if (q == s) break;
    int v = level_token(s, (size_t)(q - s));
    if (v && (k < 4 || (q - s > 4 && memchr(s, '=', (size_t)(q - s))))) {
      h->sev = v;
      if (k == 0) { /* the level right after the timestamp is header, not message */
        h->msg = q;
        h->msglen = (size_t)(e - q);
        if (h->t.fmt == TS_ISO8601 && !memchr(p, 'T', h->t.end)) h->t.fmt = TS_LOG4J;
      } else if (k <= 2 && h->t.fmt == TS_ISO8601 && !memchr(p, 'T', h->t.end))
        h->t.fmt = TS_LOG4J; /* "2024-03-05 14:22:01,123 [main] ERROR ..." */
      break;
    }
  }
  while (h->msglen && is_sp(h->msg[0])) h->msg++, h->msglen--;
}

/* ---- masking and hashing -------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *p, size_t n, uint64_t h) {
  const uint64_t m = 0x9e3779b97f4a7c15ull;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = (h ^ w) * m;
    h ^= h >> 29;
    p += 8, n -= 8;
  }
  uint64_t w = 0;
  memcpy(&w, p, n);
  h = (h ^ w ^ ((uint64_t)n << 56)) * m;
  h ^= h >> 32;
  return h;
}

static uint64_t mix(uint64_t a, uint64_t b) {
  a ^= b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2);
  a *= 0xff51afd7ed558ccdull;
  return a ^ (a >> 33);
}

static int is_hexc(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Is the token a variable: anything with a digit (numbers, ids, IPs, UUIDs, durations, hex,
 * versions), a path, an email address, or a long hex string without digits. */
static int is_variable(const char *p, size_t n) {
  if (n == 0) return 0;
  int hexonly = 1, at = 0, dot_after_at = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= '0' && c <= '9') return 1;
    if (!is_hexc(c)) hexonly = 0;
    if (c == '@') at = 1;
    else if (c == '.' && at) dot_after_at = 1;
    else if (c == '\\' && i > 0) return 1; /* C:\dir\file */
  }
  if (p[0] == '/' || (n > 1 && p[0] == '~' && p[1] == '/') || (n > 2 && p[0] == '.' && p[1] == '/'))
    return n > 1;
  if (n > 1 && memchr(p + 1, '/', n - 2)) return 1; /* a/b/c relative path */
  if (at && dot_after_at && p[0] != '@') return 1;
  return hexonly && n >= 8;
}

/* Masks one token into dst (room for n + 3 bytes): the variable part becomes "<*>", keeping
 * wrapping punctuation and a "key=" or "key:" prefix. Returns the masked length. */
static size_t mask_token(const char *p, size_t n, char *dst) {
  size_t a = 0, b = n;
  while (a < b && IS(p[a], C_MOPEN)) a++;
  while (b > a && IS(p[b - 1], C_MCLOSE)) b--;
  /* key=value, key:value, name[pid], fn(arg): mask the value only */
  size_t v = a;
  for (size_t i = a; i < b && i < a + 40 && (isalpha((unsigned char)p[a]) || p[a] == '_'); i++) {
    if (p[i] == '=' || (i > a && (p[i] == '[' || p[i] == '(')) ||
        (p[i] == ':' && i + 1 < b && p[i + 1] != '/' && p[i + 1] != ':' && i > a &&
         !is_hexc((unsigned char)p[i - 1]))) {
      v = i + 1;
      break;
    }
    if (dig(p[i]) >= 0 || p[i] == '/') break;
  }
  if (v > a && v < b) {
    size_t vb = v, ve = b;
    while (vb < ve && IS(p[vb], C_VOPEN)) vb++;
    while (ve > vb && IS(p[ve - 1], C_VCLOSE)) ve--;
    if (ve > vb && is_variable(p + vb, ve - vb)) {
      memcpy(dst, p, vb);
      memcpy(dst + vb, "<*>", 3);
      memcpy(dst + vb + 3, p + ve, n - ve);
      return n - (ve - vb) + 3;
    }
    memcpy(dst, p, n);
    return n;
  }
  if (b > a && is_variable(p + a, b - a)) {
    memcpy(dst, p, a);
    memcpy(dst + a, "<*>", 3);
    memcpy(dst + a + 3, p + b, n - b);
    return n - (b - a) + 3;
  }
  memcpy(dst, p, n);
  return n;
}

/* ---- state ---------------------------------------------------------------------------------- */

struct tmpl {
  uint64_t *h;       /* token hashes (WILD for a merged wildcard) */
  uint16_t *off;     /* token offsets in text */
  uint16_t *len;     /* token lengths in text */
  char *text;        /* tokens joined by one space */
  size_t text_len;
  uint32_t ntok;
  int32_t next;      /* next template in the same leaf */
  uint64_t count, first_line, err_count, err_first, err_last;
  int sev;           /* the highest severity seen on its lines */
  char example[FM_LOGS_EXAMPLE];
  size_t example_len;
};

struct capture {
  int used, sev, pending;
  int32_t tmpl;
  uint64_t line;
  char text[FM_LOGS_TEXT_BYTES];
  size_t text_len;
  char before[FM_LOGS_CTX][FM_LOGS_CTX_BYTES];
  size_t blen[FM_LOGS_CTX];
  int nbefore;
  char after[FM_LOGS_CTX][FM_LOGS_CTX_BYTES];
  size_t alen[FM_LOGS_CTX];
  int nafter;
};

struct burst {
  uint64_t start, end, errors;
};

struct transition {
  uint64_t line, count;
  const char *kind;
  char from[48], to[48];
  char text[FM_LOGS_CTX_BYTES];
  size_t text_len;
};

struct leaf {
  uint64_t key;
  int32_t head; /* -1: empty slot */
};

struct cache_ent {
  uint64_t key;
  int32_t tmpl;
};

struct fm_an_logs {
  uint64_t lines, nonempty;
  uint64_t sev[SEV_N];
  /* timestamps */
  uint64_t ts_fmt[TS_N], ts_parsed;
  int year_hint; /* year of the first dated timestamp, else the current UTC year */
  int have_year;
  int64_t last_noyear; /* the last syslog/klog time (0: none yet), to see the year roll over */
  int64_t ts_min, ts_max, ts_last;
  int have_ts;
  /* templates */
  struct tmpl *t;
  uint32_t nt;
  uint64_t other;
  int32_t last_tmpl;
  struct leaf *leaves;
  struct cache_ent *cache;
  char *scratch; /* masked tokens of the current line */
  /* errors */
  uint64_t errors;
  struct capture first;
  struct capture cand[FM_LOGS_CANDIDATES];
  int pending; /* captures still collecting "after" lines */
  char ring[FM_LOGS_CTX][FM_LOGS_CTX_BYTES];
  size_t ring_len[FM_LOGS_CTX];
  uint64_t ring_n;
  /* bursts */
  uint64_t last_err[FM_LOGS_BURST_ERRORS];
  uint64_t nerr_ring;
  struct burst bursts[FM_LOGS_MAX_BURSTS];
  int nbursts;
  uint64_t bursts_total;
  struct burst cur;
  int in_burst;
  /* errors per minute */
  int64_t min_base, min_cur;
  uint64_t min_cur_count, peak_count;
  int64_t peak_min;
  uint64_t series[FM_LOGS_SERIES];
  uint64_t bucket; /* minutes per bucket */
  int have_series;
  /* transitions */
  struct transition tr[FM_LOGS_MAX_TRANSITIONS];
  int ntr;
  uint64_t tr_total;
};

static const uint64_t WILD = 0x5d1f0c2a7be39a41ull;

struct fm_an_logs *fm_an_logs_new(void) {
  struct fm_an_logs *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->t = calloc(FM_LOGS_MAX_TEMPLATES, sizeof *s->t);
  s->leaves = malloc(LEAF_SLOTS * sizeof *s->leaves);
  s->cache = calloc(CACHE_SLOTS, sizeof *s->cache);
  s->scratch = malloc(FM_AN_MAX_LINE + 4 * FM_LOGS_MAX_TOKENS + 16);
  if (!s->t || !s->leaves || !s->cache || !s->scratch) {
    fm_an_logs_free(s);
    return NULL;
  }
  for (size_t i = 0; i < LEAF_SLOTS; i++) s->leaves[i].head = -1;
  for (size_t i = 0; i < CACHE_SLOTS; i++) s->cache[i].tmpl = -1;
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  s->year_hint = tm.tm_year + 1900;
  s->bucket = 1;
  return s;
}

void fm_an_logs_free(struct fm_an_logs *s) {
  if (!s) return;
  if (s->t)
    for (uint32_t i = 0; i < s->nt; i++) {
      free(s->t[i].h);
      free(s->t[i].text);
    }
  free(s->t);
  free(s->leaves);
  free(s->cache);
  free(s->scratch);
  free(s);
}

/* ---- Drain ---------------------------------------------------------------------------------- */

struct toks {
  uint32_t n;
  uint64_t h[FM_LOGS_MAX_TOKENS];
  const char *m[FM_LOGS_MAX_TOKENS]; /* masked token text (in scratch) */
  uint32_t ml[FM_LOGS_MAX_TOKENS]; /* full masked length (the text keeps FM_LOGS_TOKEN_TEXT) */
  const char *raw[FM_LOGS_MAX_TOKENS];
  uint32_t rawl[FM_LOGS_MAX_TOKENS];
  int more; /* tokens beyond FM_LOGS_MAX_TOKENS were dropped */
};

static void tokenise(struct fm_an_logs *s, const char *p, size_t n, struct toks *tk) {
  const char *e = p + n;
  char *dst = s->scratch;
  tk->n = 0;
  tk->more = 0;
  while (p < e) {
    while (p < e && (is_sp(*p) || *p == 0)) p++;
    if (p >= e) break;
    if (tk->n == FM_LOGS_MAX_TOKENS) {
      tk->more = 1;
      break;
    }
    const char *st = p;
    while (p < e && !is_sp(*p) && *p != 0) p++;
    size_t l = (size_t)(p - st);
    size_t ml = mask_token(st, l, dst);
    uint32_t i = tk->n++;
    tk->raw[i] = st;
    tk->rawl[i] = (uint32_t)l;
    tk->m[i] = dst;
    tk->ml[i] = (uint32_t)ml;
    tk->h[i] = (ml == 3 && memcmp(dst, "<*>", 3) == 0) ? WILD : hash_bytes(dst, ml, 0x12345);
    dst += ml;
  }
}

/* Builds a template's text from token pieces; 0 or -1. */
static int tmpl_set_text(struct tmpl *t, const char *const *piece, const uint32_t *plen, int more) {
  size_t total = more ? 4 : 0;
  for (uint32_t i = 0; i < t->ntok; i++)
    total += (plen[i] > FM_LOGS_TOKEN_TEXT ? FM_LOGS_TOKEN_TEXT : plen[i]) + 1;
  char *txt = malloc(total + 1);
  if (!txt) return -1;
  size_t o = 0;
  for (uint32_t i = 0; i < t->ntok; i++) {
    if (i) txt[o++] = ' ';
    size_t l = fm_an_text_copy(txt + o, FM_LOGS_TOKEN_TEXT, piece[i], plen[i]);
    t->off[i] = (uint16_t)o;
    t->len[i] = (uint16_t)l;
    o += l;
  }
  if (more) memcpy(txt + o, " ...", 4), o += 4;
  txt[o] = 0;
  free(t->text);
  t->text = txt;
  t->text_len = o;
  return 0;
}

static struct leaf *leaf_find(struct fm_an_logs *s, uint64_t key, int create) {
  size_t i = (size_t)key & (LEAF_SLOTS - 1);
  for (;;) {
    struct leaf *lf = &s->leaves[i];
    if (lf->head < 0) {
      if (!create) return NULL;
      lf->key = key;
      return lf;
    }
    if (lf->key == key) return lf;
    i = (i + 1) & (LEAF_SLOTS - 1);
  }
}

/* Finds or makes the template of the line; -1 when it falls in "other". */
static int32_t drain(struct fm_an_logs *s, const struct toks *tk, const char *line, size_t len) {
  uint64_t full = 0x51ed27;
  for (uint32_t i = 0; i < tk->n; i++) full = mix(full, tk->h[i]);
  full = mix(full, tk->n + ((uint64_t)tk->more << 32));
  struct cache_ent *ce = &s->cache[full & (CACHE_SLOTS - 1)];
  if (ce->tmpl >= 0 && ce->key == full) return ce->tmpl;

  /* The prefix tree has one token level (Drain with depth 3): a variable that masking missed in
   * the second position ("User alice logged in") still meets its siblings in the same leaf. */
  uint64_t key = mix(mix(0xd1a, tk->n), tk->n > 0 ? tk->h[0] : 0);
  struct leaf *lf = leaf_find(s, key, 0);
  int32_t best = -1;
  double best_sim = -1;
  uint32_t best_wild = 0;
  int scanned = 0;
  if (lf) {
    for (int32_t c = lf->head; c >= 0 && scanned < FM_LOGS_LEAF_SCAN; c = s->t[c].next, scanned++) {
      const struct tmpl *t = &s->t[c];
      uint32_t same = 0, wild = 0;
      for (uint32_t i = 0; i < tk->n; i++) {
        if (t->h[i] == tk->h[i]) same++;
        else if (t->h[i] == WILD) wild++;
      }
      double sim = tk->n ? (double)same / tk->n : 1.0;
      if (sim > best_sim || (sim == best_sim && wild > best_wild)) {
        best = c, best_sim = sim, best_wild = wild;
      }
    }
  }
  if (best >= 0 && best_sim >= FM_LOGS_SIM) {
    struct tmpl *t = &s->t[best];
    int changed = 0;
    for (uint32_t i = 0; i < tk->n; i++)
      if (t->h[i] != tk->h[i] && t->h[i] != WILD) t->h[i] = WILD, changed = 1;
    if (changed) {
      const char *piece[FM_LOGS_MAX_TOKENS];
      uint32_t plen[FM_LOGS_MAX_TOKENS];
      char *old = t->text;
      for (uint32_t i = 0; i < t->ntok; i++) {
        if (t->h[i] == WILD) piece[i] = "<*>", plen[i] = 3;
        else piece[i] = old + t->off[i], plen[i] = t->len[i];
      }
      t->text = NULL; /* keep the old text alive while the new one is built from it */
      if (tmpl_set_text(t, piece, plen, tk->more) != 0) t->text = old;
      else free(old);
    }
    ce->key = full, ce->tmpl = best;
    return best;
  }
  if (s->nt >= FM_LOGS_MAX_TEMPLATES) return -1;
  struct tmpl *t = &s->t[s->nt];
  size_t per = sizeof(uint64_t) + 2 * sizeof(uint16_t);
  void *blk = malloc(per * (tk->n ? tk->n : 1));
  if (!blk) return -1;
  memset(t, 0, sizeof *t);
  t->h = blk;
  t->off = (uint16_t *)(t->h + tk->n);
  t->len = t->off + tk->n;
  t->ntok = tk->n;
  memcpy(t->h, tk->h, tk->n * sizeof(uint64_t));
  if (tmpl_set_text(t, tk->m, tk->ml, tk->more) != 0) {
    free(blk);
    return -1;
  }
  t->example_len = fm_an_text_copy(t->example, sizeof t->example, line, len);
  lf = leaf_find(s, key, 1);
  t->next = lf->head;
  lf->head = (int32_t)s->nt;
  ce->key = full, ce->tmpl = (int32_t)s->nt;
  return (int32_t)s->nt++;
}

/* ---- errors: captures, bursts, per minute --------------------------------------------------- */

static void capture_start(struct fm_an_logs *s, struct capture *c, const struct fm_an_line *l,
                          int sev, int32_t tmpl) {
  c->used = 1;
  c->sev = sev;
  c->tmpl = tmpl;
  c->line = l->no;
  c->text_len = fm_an_text_copy(c->text, sizeof c->text, l->p, l->len);
  uint64_t have = s->ring_n < FM_LOGS_CTX ? s->ring_n : FM_LOGS_CTX;
  c->nbefore = (int)have;
  for (uint64_t k = 0; k < have; k++) {
    size_t idx = (size_t)((s->ring_n - have + k) % FM_LOGS_CTX);
    memcpy(c->before[k], s->ring[idx], s->ring_len[idx]);
    c->blen[k] = s->ring_len[idx];
  }
  c->nafter = 0;
  c->pending = 1;
  s->pending++;
}

static void capture_after(struct fm_an_logs *s, struct capture *c, const struct fm_an_line *l) {
  if (!c->pending) return;
  c->alen[c->nafter] = fm_an_text_copy(c->after[c->nafter], FM_LOGS_CTX_BYTES, l->p, l->len);
  if (++c->nafter == FM_LOGS_CTX) c->pending = 0, s->pending--;
}

static void burst_push(struct fm_an_logs *s, const struct burst *b) {
  s->bursts_total++;
  if (s->nbursts < FM_LOGS_MAX_BURSTS) {
    s->bursts[s->nbursts++] = *b;
    return;
  }
  /* keep the biggest: replace the smallest if this one is bigger */
  int lo = 0;
  for (int i = 1; i < s->nbursts; i++)
    if (s->bursts[i].errors < s->bursts[lo].errors) lo = i;
  if (b->errors > s->bursts[lo].errors) s->bursts[lo] = *b;
}

/* An error at line no: the ring holds the line numbers of the last FM_LOGS_BURST_ERRORS errors.
 * A burst is a run where every error closes a window of FM_LOGS_BURST_ERRORS errors that spans
 * at most FM_LOGS_BURST_LINES lines (first to last, inclusive). */
static void burst_error(struct fm_an_logs *s, uint64_t no) {
  s->last_err[s->nerr_ring % FM_LOGS_BURST_ERRORS] = no;
  s->nerr_ring++;
  if (s->nerr_ring < FM_LOGS_BURST_ERRORS) return;
  uint64_t oldest = s->last_err[s->nerr_ring % FM_LOGS_BURST_ERRORS];
  int hit = no - oldest + 1 <= FM_LOGS_BURST_LINES;
  if (hit) {
    if (s->in_burst) {
      s->cur.end = no;
      s->cur.errors++;
    } else {
      s->in_burst = 1;
      s->cur.start = oldest;
      s->cur.end = no;
      s->cur.errors = FM_LOGS_BURST_ERRORS;
    }
  } else if (s->in_burst) {
    burst_push(s, &s->cur);
    s->in_burst = 0;
  }
}

static void series_add(struct fm_an_logs *s, int64_t minute) {
  if (!s->have_series) {
    s->have_series = 1;
    s->min_base = minute;
    s->min_cur = minute;
  }
  /* exact peak for logs in time order: count the current minute */
  if (minute == s->min_cur) s->min_cur_count++;
  else s->min_cur = minute, s->min_cur_count = 1;
  if (s->min_cur_count > s->peak_count) s->peak_count = s->min_cur_count, s->peak_min = minute;
  int64_t d = minute - s->min_base;
  if (d < 0) d = 0; /* out of order before the first error: counted in the first bucket */
  uint64_t idx = (uint64_t)d / s->bucket;
  while (idx >= FM_LOGS_SERIES) {
    for (size_t i = 0; i < FM_LOGS_SERIES / 2; i++)
      s->series[i] = s->series[2 * i] + s->series[2 * i + 1];
    memset(s->series + FM_LOGS_SERIES / 2, 0, sizeof s->series / 2);
    s->bucket *= 2;
    idx = (uint64_t)d / s->bucket;
  }
  s->series[idx]++;
}

/* ---- transitions ---------------------------------------------------------------------------- */

static size_t strip_word(const char *p, size_t n, const char **out) {
  while (n && IS(p[0], C_WOPEN)) p++, n--;
  while (n && IS(p[n - 1], C_WCLOSE)) n--;
  *out = p;
  return n;
}

static int tok_is_n(const struct toks *tk, uint32_t i, const char *w, size_t wl) {
  const char *p;
  size_t n = strip_word(tk->raw[i], tk->rawl[i], &p);
  return n == wl && ieq_n(p, w, wl);
}
#define tok_is(tk, i, w) tok_is_n((tk), (i), (w), sizeof(w) - 1)

static int tr_add(struct fm_an_logs *s, const struct fm_an_line *l, const char *kind,
                  const char *from, size_t fl, const char *to, size_t tl) {
  s->tr_total++;
  struct transition *last = s->ntr ? &s->tr[s->ntr - 1] : NULL;
  char f[48] = "", t[48] = "";
  f[fm_an_text_copy(f, sizeof f - 1, from ? from : "", from ? fl : 0)] = 0;
  t[fm_an_text_copy(t, sizeof t - 1, to ? to : "", to ? tl : 0)] = 0;
  /* a crash loop repeats the same transition: count it on the last entry */
  if (last && last->kind == kind && !strcmp(last->from, f) && !strcmp(last->to, t)) {
    last->count++;
    return 1;
  }
  if (s->ntr >= FM_LOGS_MAX_TRANSITIONS) return 1;
  struct transition *x = &s->tr[s->ntr++];
  x->line = l->no;
  x->count = 1;
  x->kind = kind;
  memcpy(x->from, f, sizeof f);
  memcpy(x->to, t, sizeof t);
  x->text_len = fm_an_text_copy(x->text, sizeof x->text, l->p, l->len);
  return 1;
}

/* Cheap test: does any token start a transition phrase? Only then is the line looked at. */
static int tr_trigger(const struct toks *tk) {
  for (uint32_t i = 0; i < tk->n; i++) {
    const char *p;
    size_t n = tk->rawl[i];
    if (n == 2 && (tk->raw[i][0] == '-' || tk->raw[i][0] == '=') && tk->raw[i][1] == '>') return 1;
    n = strip_word(tk->raw[i], n, &p);
    if (n < 3 || n > 16) continue;
    switch (p[0] | 0x20) {
    case 'b': if (ieq(p, n, "back-off") || ieq(p, n, "backoff")) return 1; break;
    case 'c': if (ieq(p, n, "changed") || ieq(p, n, "crashloopbackoff")) return 1; break;
    case 'd': if (ieq(p, n, "disconnected")) return 1; break;
    case 'h': if (ieq(p, n, "healthy")) return 1; break;
    case 'l': if (ieq(p, n, "leader") || ieq(p, n, "leadership") || ieq(p, n, "lost")) return 1; break;
    case 'o': if (ieq(p, n, "oomkilled") || ieq(p, n, "out")) return 1; break;
    case 'r':
      if (ieq(p, n, "restarting") || ieq(p, n, "restarted") || ieq(p, n, "restored") ||
          ieq(p, n, "restart") ||
          ieq(p, n, "reconnected") || ieq(p, n, "re-established"))
        return 1;
      break;
    case 's':
      if (ieq(p, n, "state") || ieq(p, n, "status") || ieq(p, n, "started") ||
          ieq(p, n, "stopped") || ieq(p, n, "stopping") || ieq(p, n, "shutting") ||
          ieq(p, n, "switched"))
        return 1;
      break;
    case 't': if (ieq(p, n, "transitioned") || ieq(p, n, "transition")) return 1; break;
    case 'u': if (ieq(p, n, "unhealthy")) return 1; break;
    case 'p': if (ieq(p, n, "phase")) return 1; break;
    case 'm': if (ieq(p, n, "moved")) return 1; break;
    default: break;
    }
  }
  return 0;
}

/* Returns 1 when the line was recorded as a transition. */
static int transitions(struct fm_an_logs *s, const struct fm_an_line *l, const struct toks *tk) {
  if (!tr_trigger(tk)) return 0;
  const char *w;
  size_t wl;
  /* first the explicit "from X to Y" and "X -> Y" forms, then the words */
  for (uint32_t i = 0; i < tk->n; i++) {
    wl = strip_word(tk->raw[i], tk->rawl[i], &w);
    if (wl == 0 && tk->rawl[i] != 2) continue;
    /* "... from X to Y" with a state-ish word before it */
    if (ieq(w, wl, "from") && i + 3 < tk->n + 1 && i + 2 < tk->n && tok_is(tk, i + 2, "to") &&
        i + 3 < tk->n) {
      int stateish = 0;
      for (uint32_t k = 0; k < i; k++)
        if (tok_is(tk, k, "state") || tok_is(tk, k, "status") || tok_is(tk, k, "changed") ||
            tok_is(tk, k, "transitioned") || tok_is(tk, k, "transition") ||
            tok_is(tk, k, "phase") || tok_is(tk, k, "moved") || tok_is(tk, k, "switched"))
          stateish = 1;
      if (stateish) {
        const char *f, *t;
        size_t fl = strip_word(tk->raw[i + 1], tk->rawl[i + 1], &f);
        size_t tl = strip_word(tk->raw[i + 3], tk->rawl[i + 3], &t);
        return tr_add(s, l, "state_change", f, fl, t, tl);
      }
    }
    if (tk->rawl[i] == 2 && (!memcmp(tk->raw[i], "->", 2) || !memcmp(tk->raw[i], "=>", 2)) &&
        i > 0 && i + 1 < tk->n) {
      const char *f, *t;
      size_t fl = strip_word(tk->raw[i - 1], tk->rawl[i - 1], &f);
      size_t tl = strip_word(tk->raw[i + 1], tk->rawl[i + 1], &t);
      if (fl && tl && fl <= 32 && tl <= 32 && !memchr(f, '/', fl) && !memchr(t, '/', tl)) {
        return tr_add(s, l, "state_change", f, fl, t, tl);
      }
    }
  }
  for (uint32_t i = 0; i < tk->n; i++) {
    wl = strip_word(tk->raw[i], tk->rawl[i], &w);
    if (wl == 0) continue;
    if (ieq(w, wl, "unhealthy")) return tr_add(s, l, "health", NULL, 0, "unhealthy", 9);
    if (ieq(w, wl, "healthy") && i > 0 && !tok_is(tk, i - 1, "not"))
      return tr_add(s, l, "health", NULL, 0, "healthy", 7);
    if (ieq(w, wl, "back-off") || ieq(w, wl, "backoff") || ieq(w, wl, "crashloopbackoff"))
      return tr_add(s, l, "restart", NULL, 0, "back-off", 8);
    if (ieq(w, wl, "restarting") || ieq(w, wl, "restarted"))
      return tr_add(s, l, "restart", NULL, 0, "restarting", 10);
    if (ieq(w, wl, "oomkilled") || (ieq(w, wl, "out") && i + 2 < tk->n && tok_is(tk, i + 1, "of") &&
                                    tok_is(tk, i + 2, "memory")))
      return tr_add(s, l, "oom", NULL, 0, "oom_killed", 10);
    if ((ieq(w, wl, "connection") && i + 1 < tk->n && tok_is(tk, i + 1, "lost")) ||
        ieq(w, wl, "disconnected"))
      return tr_add(s, l, "connection", NULL, 0, "lost", 4);
    if ((ieq(w, wl, "connection") && i + 1 < tk->n &&
         (tok_is(tk, i + 1, "restored") || tok_is(tk, i + 1, "re-established"))) ||
        ieq(w, wl, "reconnected"))
      return tr_add(s, l, "connection", NULL, 0, "restored", 8);
    if (ieq(w, wl, "leader") || ieq(w, wl, "leadership")) {
      for (uint32_t k = 0; k < tk->n; k++) {
        if (tok_is(tk, k, "elected") || tok_is(tk, k, "became") || tok_is(tk, k, "acquired") ||
            tok_is(tk, k, "new"))
          return tr_add(s, l, "leadership", NULL, 0, "leader_elected", 14);
        if (tok_is(tk, k, "lost") || tok_is(tk, k, "stepping") || tok_is(tk, k, "resigned"))
          return tr_add(s, l, "leadership", NULL, 0, "leadership_lost", 15);
      }
    }
    /* systemd's "Started x.service" / "Stopped ...": the first word of the message, or right
     * after a "prog[pid]:" tag */
    if ((i == 0 || tk->raw[i - 1][tk->rawl[i - 1] - 1] == ':') &&
        (ieq(w, wl, "started") || ieq(w, wl, "stopped") || ieq(w, wl, "stopping"))) {
      const char *to = ieq(w, wl, "started") ? "started" : ieq(w, wl, "stopped") ? "stopped" : "stopping";
      return tr_add(s, l, "lifecycle", NULL, 0, to, strlen(to));
    }
    if (ieq(w, wl, "restart") && i > 0 && tok_is(tk, i - 1, "scheduled"))
      return tr_add(s, l, "restart", NULL, 0, "restarting", 10);
    if (ieq(w, wl, "shutting") && i + 1 < tk->n && tok_is(tk, i + 1, "down"))
      return tr_add(s, l, "lifecycle", NULL, 0, "stopping", 8);
  }
  return 0;
}

/* ---- per line ------------------------------------------------------------------------------- */

static int is_continuation(const char *p, size_t n) {
  if (n == 0) return 0;
  if (is_sp(p[0])) return 1;
  if (n >= 10 && !memcmp(p, "Caused by:", 10)) return 1;
  if (n >= 4 && !memcmp(p, "... ", 4)) return 1;
  return 0;
}

void fm_an_logs_line(struct fm_an_logs *s, const struct fm_an_line *l) {
  s->lines++;
  if (s->pending) {
    capture_after(s, &s->first, l);
    for (int i = 0; i < FM_LOGS_CANDIDATES && s->pending; i++) capture_after(s, &s->cand[i], l);
  }
  s->last_tmpl = -1;
  if (l->len == 0) {
    s->sev[SEV_UNKNOWN]++;
    goto ring;
  }
  s->nonempty++;
  struct hdr h;
  parse_header(l->p, l->len, s->year_hint, &h);
  if (h.t.fmt == TS_SYSLOG || h.t.fmt == TS_KLOG) {
    /* no year in the line: "Dec 31" then "Jan  1" is the next year */
    if (s->last_noyear && h.t.ms < s->last_noyear - 180LL * 86400 * 1000) {
      s->year_hint++;
      parse_header(l->p, l->len, s->year_hint, &h);
    }
    s->last_noyear = h.t.ms;
  }
  if (h.t.fmt) {
    s->ts_fmt[h.t.fmt]++;
    s->ts_parsed++;
    if (h.t.has_year && !s->have_year) s->have_year = 1, s->year_hint = h.t.year;
    if (!s->have_ts || h.t.ms < s->ts_min) s->ts_min = h.t.ms;
    if (!s->have_ts || h.t.ms > s->ts_max) s->ts_max = h.t.ms;
    s->have_ts = 1;
    s->ts_last = h.t.ms;
  }
  int sev = h.sev;
  if (!sev && !is_continuation(l->p, l->len)) sev = keyword_severity(l->p, l->len);
  s->sev[sev]++;

  struct toks tk;
  tokenise(s, h.msg, h.msglen, &tk);
  int32_t ti = drain(s, &tk, l->p, l->len);
  s->last_tmpl = ti;
  if (ti >= 0) {
    struct tmpl *t = &s->t[ti];
    if (t->count++ == 0) t->first_line = l->no;
    if (sev > t->sev) t->sev = sev;
  } else {
    s->other++;
  }

  if (sev >= SEV_ERROR) {
    s->errors++;
    if (ti >= 0) {
      struct tmpl *t = &s->t[ti];
      if (t->err_count++ == 0) t->err_first = l->no;
      t->err_last = l->no;
    }
    if (!s->first.used) capture_start(s, &s->first, l, sev, ti);
    if (ti >= 0) {
      int found = 0, freeslot = -1;
      for (int i = 0; i < FM_LOGS_CANDIDATES; i++) {
        if (!s->cand[i].used) {
          if (freeslot < 0) freeslot = i;
        } else if (s->cand[i].tmpl == ti && s->cand[i].sev >= sev) {
          found = 1;
          break;
        } else if (s->cand[i].tmpl == ti) { /* a fatal line of a template seen as error */
          if (s->cand[i].pending) s->cand[i].pending = 0, s->pending--;
          capture_start(s, &s->cand[i], l, sev, ti);
          found = 1;
          break;
        }
      }
      if (!found && freeslot >= 0) capture_start(s, &s->cand[freeslot], l, sev, ti);
    }
    burst_error(s, l->no);
    if (s->have_ts) series_add(s, s->ts_last / 60000 - (s->ts_last < 0 && s->ts_last % 60000));
  }
  transitions(s, l, &tk);
ring:;
  size_t idx = (size_t)(s->ring_n % FM_LOGS_CTX);
  s->ring_len[idx] = fm_an_text_copy(s->ring[idx], FM_LOGS_CTX_BYTES, l->p, l->len);
  s->ring_n++;
}

int32_t fm_an_logs_last_template(const struct fm_an_logs *s) { return s->last_tmpl; }

/* ---- finish --------------------------------------------------------------------------------- */

static void iso_ms(int64_t ms, char *out, size_t n) {
  time_t sec = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  int frac = (int)(ms - (int64_t)sec * 1000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

static int set_new(json_t *o, const char *k, json_t *v) {
  if (!v) return -1;
  return json_object_set_new(o, k, v);
}

static json_t *capture_json(const struct fm_an_logs *s, const struct capture *c) {
  json_t *o = json_object(), *ctx = json_object(), *b = json_array(), *a = json_array();
  int rc = (o && ctx && b && a) ? 0 : -1;
  for (int i = 0; rc == 0 && i < c->nbefore; i++)
    rc = json_array_append_new(b, fm_an_text_json(c->before[i], c->blen[i]));
  for (int i = 0; rc == 0 && i < c->nafter; i++)
    rc = json_array_append_new(a, fm_an_text_json(c->after[i], c->alen[i]));
  if (rc == 0) {
    rc |= set_new(o, "line", json_integer((json_int_t)c->line));
    rc |= set_new(o, "severity", json_string(sev_names[c->sev]));
    rc |= set_new(o, "text", fm_an_text_json(c->text, c->text_len));
    rc |= set_new(o, "template_id", c->tmpl >= 0 ? json_integer(c->tmpl) : json_null());
    if (c->tmpl >= 0)
      rc |= set_new(o, "template_errors", json_integer((json_int_t)s->t[c->tmpl].err_count));
    rc |= json_object_set(ctx, "before", b);
    rc |= json_object_set(ctx, "after", a);
    rc |= json_object_set(o, "context", ctx);
  }
  json_decref(ctx);
  json_decref(b);
  json_decref(a);
  if (rc) {
    json_decref(o);
    return NULL;
  }
  return o;
}

struct rank {
  uint64_t count, first;
  uint32_t id;
};

static int cmp_rank(const void *a, const void *b) {
  const struct rank *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return x->first < y->first ? -1 : x->first > y->first;
}

/* Template ids ordered by line count (or by error-line count), then first line; the caller
 * frees. The keys are copied so the sort needs no shared state (finish may run on several
 * threads at once, one state each). */
static uint32_t *top_templates(const struct fm_an_logs *s, int err, uint32_t *k) {
  uint32_t n = 0;
  struct rank *r = malloc((s->nt ? s->nt : 1) * sizeof *r);
  uint32_t *ix = malloc((s->nt ? s->nt : 1) * sizeof *ix);
  if (!r || !ix) {
    free(r);
    free(ix);
    return NULL;
  }
  for (uint32_t i = 0; i < s->nt; i++) {
    const struct tmpl *t = &s->t[i];
    if (err && !t->err_count) continue;
    r[n++] = (struct rank){err ? t->err_count : t->count, err ? t->err_first : t->first_line, i};
  }
  qsort(r, n, sizeof *r, cmp_rank);
  for (uint32_t i = 0; i < n; i++) ix[i] = r[i].id;
  free(r);
  *k = n;
  return ix;
}

int fm_an_logs_finish(struct fm_an_logs *s, json_t *out) {
  json_t *L = json_object();
  if (!L) return -1;
  int rc = 0;
  char b1[96], b2[96];
  rc |= set_new(L, "lines", json_integer((json_int_t)s->lines));

  json_t *ts = json_object(), *fmts = json_object();
  int dom = 0;
  for (int f = 1; f < TS_N; f++) {
    if (s->ts_fmt[f] > s->ts_fmt[dom]) dom = f;
    if (s->ts_fmt[f] && fmts) rc |= set_new(fmts, ts_names[f], json_integer((json_int_t)s->ts_fmt[f]));
  }
  if (ts) {
    rc |= set_new(ts, "format", dom ? json_string(ts_names[dom]) : json_null());
    rc |= set_new(ts, "formats", fmts ? json_incref(fmts) : NULL);
    rc |= set_new(ts, "parsed", json_integer((json_int_t)s->ts_parsed));
    rc |= set_new(ts, "coverage", json_real(s->nonempty ? (double)s->ts_parsed / s->nonempty : 0));
    if (s->have_ts) {
      iso_ms(s->ts_min, b1, sizeof b1);
      iso_ms(s->ts_max, b2, sizeof b2);
      rc |= set_new(ts, "first", json_string(b1));
      rc |= set_new(ts, "last", json_string(b2));
      rc |= set_new(ts, "span_seconds", json_real((double)(s->ts_max - s->ts_min) / 1000.0));
    } else {
      rc |= set_new(ts, "first", json_null());
      rc |= set_new(ts, "last", json_null());
      rc |= set_new(ts, "span_seconds", json_null());
    }
    rc |= set_new(ts, "year_assumed", (s->ts_fmt[TS_SYSLOG] || s->ts_fmt[TS_KLOG])
                                          ? json_integer(s->year_hint) : json_null());
  }
  json_decref(fmts);
  rc |= set_new(L, "timestamps", ts);

  json_t *sv = json_object();
  for (int i = SEV_N - 1; sv && i >= 0; i--)
    rc |= set_new(sv, sev_names[i], json_integer((json_int_t)s->sev[i]));
  rc |= set_new(L, "severity", sv);
  rc |= set_new(L, "errors", json_integer((json_int_t)s->errors));

  uint32_t k = 0;
  uint32_t *ix = top_templates(s, 0, &k);
  json_t *ta = json_array();
  for (uint32_t i = 0; ix && ta && i < k && i < FM_LOGS_OUT_TEMPLATES; i++) {
    const struct tmpl *t = &s->t[ix[i]];
    json_t *o = json_object();
    if (!o) { rc = -1; break; }
    rc |= set_new(o, "id", json_integer(ix[i]));
    rc |= set_new(o, "template", fm_an_text_json(t->text, t->text_len));
    rc |= set_new(o, "count", json_integer((json_int_t)t->count));
    rc |= set_new(o, "first_line", json_integer((json_int_t)t->first_line));
    rc |= set_new(o, "severity", json_string(sev_names[t->sev]));
    rc |= set_new(o, "example", fm_an_text_json(t->example, t->example_len));
    rc |= json_array_append_new(ta, o);
  }
  free(ix);
  if (!ix) rc = -1;
  rc |= set_new(L, "templates", ta);
  rc |= set_new(L, "total_templates", json_integer(s->nt));
  rc |= set_new(L, "template_cap", json_integer(FM_LOGS_MAX_TEMPLATES));
  rc |= set_new(L, "other_lines", json_integer((json_int_t)s->other));

  ix = top_templates(s, 1, &k);
  json_t *ca = json_array();
  for (uint32_t i = 0; ix && ca && i < k && i < FM_LOGS_OUT_CLUSTERS; i++) {
    const struct tmpl *t = &s->t[ix[i]];
    json_t *o = json_object();
    if (!o) { rc = -1; break; }
    rc |= set_new(o, "id", json_integer(ix[i]));
    rc |= set_new(o, "template", fm_an_text_json(t->text, t->text_len));
    rc |= set_new(o, "count", json_integer((json_int_t)t->err_count));
    rc |= set_new(o, "first_line", json_integer((json_int_t)t->err_first));
    rc |= set_new(o, "last_line", json_integer((json_int_t)t->err_last));
    rc |= json_array_append_new(ca, o);
  }
  free(ix);
  if (!ix) rc = -1;
  rc |= set_new(L, "error_clusters", ca);

  if (s->in_burst) burst_push(s, &s->cur), s->in_burst = 0;
  json_t *ba = json_array();
  /* kept bursts are in line order except where a bigger one replaced a smaller one: sort */
  for (int i = 1; i < s->nbursts; i++)
    for (int j = i; j > 0 && s->bursts[j].start < s->bursts[j - 1].start; j--) {
      struct burst tmp = s->bursts[j];
      s->bursts[j] = s->bursts[j - 1];
      s->bursts[j - 1] = tmp;
    }
  for (int i = 0; ba && i < s->nbursts; i++) {
    json_t *o = json_object();
    if (!o) { rc = -1; break; }
    rc |= set_new(o, "start_line", json_integer((json_int_t)s->bursts[i].start));
    rc |= set_new(o, "end_line", json_integer((json_int_t)s->bursts[i].end));
    rc |= set_new(o, "errors", json_integer((json_int_t)s->bursts[i].errors));
    rc |= json_array_append_new(ba, o);
  }
  rc |= set_new(L, "bursts", ba);
  rc |= set_new(L, "bursts_total", json_integer((json_int_t)s->bursts_total));

  rc |= set_new(L, "first_error", s->first.used ? capture_json(s, &s->first) : json_null());
  /* worst: the highest severity, then the template with the most error lines, then the earliest */
  const struct capture *w = NULL;
  for (int i = 0; i < FM_LOGS_CANDIDATES; i++) {
    const struct capture *c = &s->cand[i];
    if (!c->used) continue;
    if (!w || c->sev > w->sev ||
        (c->sev == w->sev && (s->t[c->tmpl].err_count > s->t[w->tmpl].err_count ||
                              (s->t[c->tmpl].err_count == s->t[w->tmpl].err_count &&
                               c->line < w->line))))
      w = c;
  }
  if (!w && s->first.used) w = &s->first;
  rc |= set_new(L, "worst_error", w ? capture_json(s, w) : json_null());

  json_t *epm = json_object();
  if (epm && s->have_series) {
    json_t *pk = json_object(), *ser = json_array();
    iso_ms(s->peak_min * 60000, b1, sizeof b1);
    if (pk) {
      rc |= set_new(pk, "minute", json_string(b1));
      rc |= set_new(pk, "count", json_integer((json_int_t)s->peak_count));
    }
    rc |= set_new(epm, "peak", pk);
    iso_ms(s->min_base * 60000, b2, sizeof b2);
    rc |= set_new(epm, "start", json_string(b2));
    rc |= set_new(epm, "bucket_minutes", json_integer((json_int_t)s->bucket));
    size_t last = 0;
    for (size_t i = 0; i < FM_LOGS_SERIES; i++)
      if (s->series[i]) last = i + 1;
    for (size_t i = 0; ser && i < last; i++)
      rc |= json_array_append_new(ser, json_integer((json_int_t)s->series[i]));
    rc |= set_new(epm, "series", ser);
  }
  rc |= set_new(L, "errors_per_minute", s->have_series ? epm : (json_decref(epm), json_null()));

  json_t *tra = json_array();
  for (int i = 0; tra && i < s->ntr; i++) {
    const struct transition *x = &s->tr[i];
    json_t *o = json_object();
    if (!o) { rc = -1; break; }
    rc |= set_new(o, "line", json_integer((json_int_t)x->line));
    rc |= set_new(o, "kind", json_string(x->kind));
    rc |= set_new(o, "from", x->from[0] ? fm_an_text_json(x->from, strlen(x->from)) : json_null());
    rc |= set_new(o, "to", fm_an_text_json(x->to, strlen(x->to)));
    rc |= set_new(o, "count", json_integer((json_int_t)x->count));
    rc |= set_new(o, "text", fm_an_text_json(x->text, x->text_len));
    rc |= json_array_append_new(tra, o);
  }
  rc |= set_new(L, "transitions", tra);
  rc |= set_new(L, "transitions_total", json_integer((json_int_t)s->tr_total));

  rc |= json_object_set_new(out, "logs", L);
  return rc ? -1 : 0;
}

/* ---- detect --------------------------------------------------------------------------------- */

double fm_an_logs_detect(const struct fm_an_line *lines, size_t n, const char **format) {
  uint64_t cnt[TS_N] = {0};
  size_t used = 0, hit = 0;
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  for (size_t i = 0; i < n; i++) {
    if (lines[i].len == 0) continue;
    used++;
    struct hdr h;
    parse_header(lines[i].p, lines[i].len, tm.tm_year + 1900, &h);
    if (h.t.fmt) cnt[h.t.fmt]++, hit++;
  }
  int dom = 0;
  for (int f = 1; f < TS_N; f++)
    if (cnt[f] > cnt[dom]) dom = f;
  if (format) *format = dom ? ts_names[dom] : NULL;
  return used ? (double)hit / (double)used : 0.0;
}

/* ---- digest --------------------------------------------------------------------------------- */

static const char *jstr(const json_t *o, const char *k) {
  const char *v = json_string_value(json_object_get(o, k));
  return v ? v : "";
}
static long long jint(const json_t *o, const char *k) {
  return (long long)json_integer_value(json_object_get(o, k));
}

static void digest_capture(struct fm_buf *b, const char *what, const json_t *c) {
  if (!json_is_object(c)) return;
  fm_buf_printf(b, "%s (line %lld, %s): %s\n", what, jint(c, "line"), jstr(c, "severity"),
                jstr(c, "text"));
  /* three lines either side: the context the module keeps is five, the prompt needs less */
  const json_t *ctx = json_object_get(c, "context"), *bf = json_object_get(ctx, "before");
  size_t i, nb = json_array_size(bf);
  const json_t *v;
  json_array_foreach(bf, i, v)
    if (i + 3 >= nb) fm_buf_printf(b, "  | %s\n", json_string_value(v));
  fm_buf_printf(b, "  > %s\n", jstr(c, "text"));
  json_array_foreach(json_object_get(ctx, "after"), i, v)
    if (i < 3) fm_buf_printf(b, "  | %s\n", json_string_value(v));
}

void fm_an_logs_digest(const json_t *summary, struct fm_buf *out, size_t max) {
  const json_t *L = json_object_get(summary, "logs");
  if (!L) L = summary;
  if (!json_is_object(L) || max == 0) return;
  struct fm_buf b = {0};
  const json_t *ts = json_object_get(L, "timestamps"), *sv = json_object_get(L, "severity");
  fm_buf_printf(&b, "Log: %lld lines", jint(L, "lines"));
  if (json_is_string(json_object_get(ts, "format")))
    fm_buf_printf(&b, ", timestamps %s (%.0f%% of lines) from %s to %s (%.0f s)",
                  jstr(ts, "format"), 100 * json_real_value(json_object_get(ts, "coverage")),
                  jstr(ts, "first"), jstr(ts, "last"),
                  json_real_value(json_object_get(ts, "span_seconds")));
  fm_buf_printf(&b, "\nSeverity: fatal %lld, error %lld, warn %lld, info %lld, debug %lld\n",
                jint(sv, "fatal"), jint(sv, "error"), jint(sv, "warn"), jint(sv, "info"),
                jint(sv, "debug"));
  digest_capture(&b, "First error", json_object_get(L, "first_error"));
  const json_t *fe = json_object_get(L, "first_error"), *we = json_object_get(L, "worst_error");
  if (json_is_object(we) && jint(we, "line") != jint(fe, "line"))
    digest_capture(&b, "Worst error", we);
  size_t i;
  const json_t *v;
  const json_t *cl = json_object_get(L, "error_clusters");
  if (json_array_size(cl)) fm_buf_adds(&b, "Error templates:\n");
  json_array_foreach(cl, i, v) {
    if (i >= 8) break;
    fm_buf_printf(&b, "  %lldx (lines %lld-%lld) %s\n", jint(v, "count"), jint(v, "first_line"),
                  jint(v, "last_line"), jstr(v, "template"));
  }
  const json_t *epm = json_object_get(L, "errors_per_minute");
  if (json_is_object(epm)) {
    const json_t *pk = json_object_get(epm, "peak");
    fm_buf_printf(&b, "Peak errors per minute: %lld at %s\n", jint(pk, "count"),
                  jstr(pk, "minute"));
  }
  const json_t *bu = json_object_get(L, "bursts");
  json_array_foreach(bu, i, v) {
    if (i >= 5) break;
    fm_buf_printf(&b, "Burst: %lld errors in lines %lld-%lld\n", jint(v, "errors"),
                  jint(v, "start_line"), jint(v, "end_line"));
  }
  const json_t *tr = json_object_get(L, "transitions");
  if (json_array_size(tr)) fm_buf_adds(&b, "Transitions:\n");
  json_array_foreach(tr, i, v) {
    if (i >= 10) break;
    fm_buf_printf(&b, "  line %lld %s %s%s%s (x%lld): %s\n", jint(v, "line"), jstr(v, "kind"),
                  jstr(v, "from"), json_is_string(json_object_get(v, "from")) ? " -> " : "",
                  jstr(v, "to"), jint(v, "count"), jstr(v, "text"));
  }
  const json_t *tp = json_object_get(L, "templates");
  fm_buf_printf(&b, "Top templates (%lld in all):\n", jint(L, "total_templates"));
  json_array_foreach(tp, i, v) {
    if (i >= 10) break;
    fm_buf_printf(&b, "  %lldx [%s] %s\n", jint(v, "count"), jstr(v, "severity"),
                  jstr(v, "template"));
  }
  fm_an_digest_append(out, &b, max);
  fm_buf_free(&b);
}
