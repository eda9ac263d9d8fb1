/* hashing.c: the built-in embedder: signed feature hashing of word unigrams, word bigrams and
 * character 3-grams, sublinear TF, L2-normalised (embed.h). No model, no corpus statistics: two
 * texts are close when they share words and word pieces, whatever they mean. docs/VECTORS.md
 * says what that is good and bad at. */
#include "embed.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SEED_UNI 0x9e3779b97f4a7c15ull
#define SEED_BI 0xc2b2ae3d27d4eb4full
#define SEED_TRI 0x165667b19e3779f9ull
#define W_UNI 1.0f
#define W_BI 0.7f
#define W_TRI 0.4f
#define TRI_MAX 48 /* character 3-grams of one word at most (long hex ids, base64 blobs) */

/* ---- hash ----------------------------------------------------------------------------------- */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian on every machine: the hash, and so every stored vector, must not depend on it. */
static inline uint64_t rd_le(const unsigned char *p, size_t n) {
  uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(&v, p, n);
#else
  for (size_t i = n; i-- > 0;) v = (v << 8) | p[i];
#endif
  return v;
}

static inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

/* xxHash64-style rounds over 8-byte words, the tail packed into one word, murmur3's finalizer:
 * every input bit reaches every output bit. */
uint64_t fm_embed_hash64(const void *data, size_t n, uint64_t seed) {
  const uint64_t P1 = 0x9e3779b185ebca87ull, P2 = 0xc2b2ae3d27d4eb4full;
  const unsigned char *p = data;
  uint64_t h = seed ^ ((uint64_t)n * P1);
  while (n >= 8) {
    h ^= rotl64(rd_le(p, 8) * P2, 31) * P1;
    h = rotl64(h, 27) * P1 + 0x85ebca77c2b2ae63ull;
    p += 8;
    n -= 8;
  }
  if (n) {
    h ^= rotl64(rd_le(p, n) * P2, 31) * P1;
    h = rotl64(h, 27) * P1 + 0x85ebca77c2b2ae63ull;
  }
  return fmix64(h);
}

/* ---- tokens --------------------------------------------------------------------------------- */

/* Decodes one UTF-8 sequence at p (< end). Returns its length (1..4) and *cp, or 0 when it is
 * not well-formed (overlong, surrogate, truncated). */
static size_t utf8_decode(const unsigned char *p, const unsigned char *end, uint32_t *cp) {
  unsigned c = p[0];
  size_t len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xe0) == 0xc0) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if ((size_t)(end - p) < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    v = (v << 6) | (p[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return len;
}

static size_t utf8_encode(uint32_t cp, unsigned char *o) {
  if (cp < 0x80) {
    o[0] = (unsigned char)cp;
    return 1;
  } else if (cp < 0x800) {
    o[0] = (unsigned char)(0xc0 | (cp >> 6));
    o[1] = (unsigned char)(0x80 | (cp & 0x3f));
    return 2;
  } else if (cp < 0x10000) {
    o[0] = (unsigned char)(0xe0 | (cp >> 12));
    o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (unsigned char)(0xf0 | (cp >> 18));
  o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (unsigned char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Non-ASCII code points that separate words: Latin-1 punctuation and symbols, the general
 * punctuation block (dashes, curly quotes, spaces), arrows to dingbats, CJK punctuation, full-width
 * ASCII punctuation, specials and emoji planes. Everything else non-ASCII counts as a letter. */
static int cp_is_separator(uint32_t cp) {
  if (cp >= 0x80 && cp <= 0xbf) return cp != 0xaa && cp != 0xb5 && cp != 0xba;
  if (cp == 0xd7 || cp == 0xf7) return 1;
  if (cp >= 0x2000 && cp <= 0x2bff) return 1; /* punctuation, symbols, arrows, box drawing */
  if (cp >= 0x3000 && cp <= 0x303f) return 1;
  if (cp >= 0xfe30 && cp <= 0xfe4f) return 1;
  if ((cp >= 0xff00 && cp <= 0xff0f) || (cp >= 0xff1a && cp <= 0xff20)) return 1;
  if (cp >= 0xfff0 && cp <= 0xffff) return 1;
  if (cp >= 0x1f000 && cp <= 0x1faff) return 1; /* emoji and pictographs */
  return 0;
}

/* Lower case for the scripts most logs and documents use beyond ASCII: Latin-1, Latin
 * Extended-A (pairs), Greek, Cyrillic, full-width Latin. Others are kept as they are. */
static uint32_t cp_lower(uint32_t cp) {
  if (cp >= 0xc0 && cp <= 0xde && cp != 0xd7) return cp + 0x20;
  if (cp >= 0x100 && cp <= 0x17f && cp != 0x130 && cp != 0x131 && cp != 0x138 && cp != 0x149 &&
      cp != 0x178 && cp != 0x17f) {
    int pairs_odd = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17e);
    if (pairs_odd) return (cp & 1) ? cp + 1 : cp;
    return (cp & 1) ? cp : cp + 1;
  }
  if (cp >= 0x391 && cp <= 0x3ab && cp != 0x3a2) return cp + 0x20;
  if (cp >= 0x410 && cp <= 0x42f) return cp + 0x20;
  if (cp >= 0x400 && cp <= 0x40f) return cp + 0x50;
  if (cp >= 0xff21 && cp <= 0xff3a) return cp + 0x20;
  return cp;
}

static const char *const stop_words[] = {"a",   "an",   "the",  "of",   "to",  "in",  "on",
                                         "at",  "by",   "for",  "is",   "are", "was", "be",
                                         "and", "or",   "it",   "as",   "with", "this",
                                         "that", "from", "its", "were", NULL};

static int is_stop(const unsigned char *t, size_t n) {
  if (n > 4 || t[0] >= 0x80) return 0;
  for (const char *const *w = stop_words; *w; w++)
    if ((*w)[0] == (char)t[0] && strlen(*w) == n && memcmp(*w, t, n) == 0) return 1;
  return 0;
}

struct tok {
  size_t off, len; /* in the token buffer */
  size_t ncp;      /* code points */
};

struct toks {
  unsigned char *buf; /* kept tokens, lower-cased, each followed by one 0x1f byte */
  size_t used;
  struct tok *t;
  size_t n;
};

static void toks_free(struct toks *k) {
  free(k->buf);
  free(k->t);
}

/* Splits text into kept tokens. 0 or FM_E_NOMEM. */
static int tokenize(const char *text, size_t n, struct toks *k) {
  memset(k, 0, sizeof *k);
  /* lower-casing keeps the byte length of every mapping above; +1 separator per token */
  k->buf = malloc(2 * n + 1);
  k->t = malloc((n / 2 + 1) * sizeof *k->t);
  if (!k->buf || !k->t) {
    toks_free(k);
    return FM_E_NOMEM;
  }
  const unsigned char *p = (const unsigned char *)text, *end = p + n;
  size_t start = 0, ncp = 0;
  int in_tok = 0;
  while (p <= end) {
    uint32_t cp = 0;
    size_t len = 0;
    int letter = 0;
    if (p < end) {
      len = utf8_decode(p, end, &cp);
      if (len == 0) {
        len = 1; /* a stray byte separates */
      } else if (cp < 0x80) {
        letter = (cp >= 'a' && cp <= 'z') || (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z');
        if (cp >= 'A' && cp <= 'Z') cp += 32;
      } else {
        letter = !cp_is_separator(cp);
        if (letter) cp = cp_lower(cp);
      }
    }
    if (letter) {
      if (!in_tok) {
        in_tok = 1;
        start = k->used;
        ncp = 0;
      }
      k->used += utf8_encode(cp, k->buf + k->used);
      ncp++;
    } else if (in_tok) {
      in_tok = 0;
      size_t tl = k->used - start;
      if (is_stop(k->buf + start, tl)) {
        k->used = start;
      } else {
        k->t[k->n++] = (struct tok){start, tl, ncp};
        k->buf[k->used++] = 0x1f;
      }
    }
    if (p == end) break;
    p += len;
  }
  return 0;
}

size_t fm_embed_tokens(const char *text, size_t n,
                       void (*fn)(const char *tok, size_t len, void *ud), void *ud) {
  struct toks k;
  if (tokenize(text, n, &k)) return 0;
  for (size_t i = 0; i < k.n; i++) fn((const char *)k.buf + k.t[i].off, k.t[i].len, ud);
  size_t count = k.n;
  toks_free(&k);
  return count;
}

/* ---- feature counts: open addressing on the 64-bit hash --------------------------------------- */

struct feat {
  uint64_t h; /* 0: empty */
  float w;
  uint32_t tf;
};

struct ftab {
  struct feat *e;
  size_t cap, n;
};

static int ftab_add(struct ftab *t, uint64_t h, float w) {
  if (h == 0) h = 1;
  if ((t->n + 1) * 2 > t->cap) {
    size_t ncap = t->cap ? t->cap * 2 : 256;
    struct feat *ne = calloc(ncap, sizeof *ne);
    if (!ne) return FM_E_NOMEM;
    for (size_t i = 0; i < t->cap; i++) {
      if (!t->e[i].h) continue;
      size_t j = (size_t)t->e[i].h & (ncap - 1);
      while (ne[j].h) j = (j + 1) & (ncap - 1);
      ne[j] = t->e[i];
    }
    free(t->e);
    t->e = ne;
    t->cap = ncap;
  }
  size_t j = (size_t)h & (t->cap - 1);
  while (t->e[j].h && t->e[j].h != h) j = (j + 1) & (t->cap - 1);
  if (t->e[j].h) {
    t->e[j].tf++;
  } else {
    t->e[j] = (struct feat){h, w, 1};
    t->n++;
  }
  return 0;
}

/* The byte offsets of the first (at most max) code points of b[0..len) in offs[0..k), and in
 * offs[k] where the next one starts. Returns k. */
static size_t cp_offsets(const unsigned char *b, size_t len, size_t *offs, size_t max) {
  size_t k = 0, i = 0;
  for (; i < len; i++) {
    if ((b[i] & 0xc0) == 0x80) continue;
    if (k == max) break;
    offs[k++] = i;
  }
  offs[k] = i; /* the end, or where code point max + 1 starts */
  return k;
}

int fm_embed_hashing(const char *text, size_t n, size_t dim, float *out) {
  memset(out, 0, dim * sizeof *out);
  struct toks k;
  struct ftab ft = {0};
  int rc = tokenize(text, n, &k);
  if (rc) return rc;
  /* sized once for about 2 word features and 6 trigrams a token, at most half full */
  ft.cap = 256;
  while (ft.cap < 16 * k.n && ft.cap < ((size_t)1 << 22)) ft.cap *= 2;
  if (!(ft.e = calloc(ft.cap, sizeof *ft.e))) {
    rc = FM_E_NOMEM;
    goto done;
  }
  unsigned char pad[2 + 4 * (TRI_MAX + 2)];
  size_t offs[TRI_MAX + 4];
  for (size_t i = 0; i < k.n; i++) {
    const unsigned char *w = k.buf + k.t[i].off;
    size_t wl = k.t[i].len;
    if ((rc = ftab_add(&ft, fm_embed_hash64(w, wl, SEED_UNI), W_UNI))) goto done;
    if (i > 0) { /* the previous token, its 0x1f, this token: contiguous in buf */
      const unsigned char *pw = k.buf + k.t[i - 1].off;
      if ((rc = ftab_add(&ft, fm_embed_hash64(pw, (size_t)(w + wl - pw), SEED_BI), W_BI)))
        goto done;
    }
    /* "<word>" in code points; trigrams of its first TRI_MAX + 2 code points */
    size_t ncp = cp_offsets(w, wl, offs, TRI_MAX + 1);
    size_t body = offs[ncp];
    pad[0] = '<';
    memcpy(pad + 1, w, body);
    size_t plen = body + 1;
    if (ncp == k.t[i].ncp) pad[plen++] = '>'; /* whole word: close it */
    size_t poffs[TRI_MAX + 4];
    size_t pn = cp_offsets(pad, plen, poffs, TRI_MAX + 3);
    for (size_t j = 0; j + 3 <= pn && j < TRI_MAX; j++) {
      if ((rc = ftab_add(&ft, fm_embed_hash64(pad + poffs[j], poffs[j + 3] - poffs[j], SEED_TRI),
                         W_TRI)))
        goto done;
    }
  }
  for (size_t j = 0; j < ft.cap; j++) {
    const struct feat *f = &ft.e[j];
    if (!f->h) continue;
    size_t idx = (size_t)(((f->h >> 32) * (uint64_t)dim) >> 32);
    float v = f->tf == 1 ? f->w : f->w * (1.0f + logf((float)f->tf));
    out[idx] += (f->h & 1) ? -v : v;
  }
  fm_embed_normalize(out, dim);
  rc = (int)(ft.n > (size_t)0x7fffffff ? 0x7fffffff : ft.n);
done:
  free(ft.e);
  toks_free(&k);
  if (rc < 0) memset(out, 0, dim * sizeof *out);
  return rc;
}

double fm_embed_normalize(float *v, size_t dim) {
  double s = 0;
  for (size_t i = 0; i < dim; i++) s += (double)v[i] * v[i];
  double norm = sqrt(s);
  if (norm > 0) {
    float inv = (float)(1.0 / norm);
    for (size_t i = 0; i < dim; i++) v[i] *= inv;
  }
  return norm;
}

void fm_embed_pack(const float *v, size_t dim, unsigned char *out) {
  for (size_t i = 0; i < dim; i++) {
    uint32_t u;
    memcpy(&u, &v[i], 4);
    out[4 * i] = (unsigned char)u;
    out[4 * i + 1] = (unsigned char)(u >> 8);
    out[4 * i + 2] = (unsigned char)(u >> 16);
    out[4 * i + 3] = (unsigned char)(u >> 24);
  }
}

void fm_embed_unpack(const unsigned char *p, size_t dim, float *out) {
  for (size_t i = 0; i < dim; i++) {
    uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                 (uint32_t)p[4 * i + 3] << 24;
    memcpy(&out[i], &u, 4);
  }
}
