/* test_embed.c: the hashing embedder (providers/embed/hashing.c) and the parser of
 * OpenAI-compatible answers (providers/embed/openai.c), without a VM. */
#include "check.h"
#include "embed.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

struct toks {
  char buf[512];
  size_t len;
};

static void collect(const char *t, size_t n, void *ud) {
  struct toks *k = ud;
  if (k->len + n + 2 >= sizeof k->buf) return;
  memcpy(k->buf + k->len, t, n);
  k->len += n;
  k->buf[k->len++] = '|';
  k->buf[k->len] = 0;
}

static void test_tokens(void) {
  struct toks k = {{0}, 0};
  const char *text = "The DB-01 refused: Ünïcödé «Привет» 東京。x_y of";
  size_t n = fm_embed_tokens(text, strlen(text), collect, &k);
  CHECK(n == 8);
  CHECK_STR(k.buf, "db|01|refused|ünïcödé|привет|東京|x|y|");
  struct toks e = {{0}, 0};
  CHECK(fm_embed_tokens(" ,.;", 4, collect, &e) == 0);
  /* invalid UTF-8 separates and is never copied */
  struct toks b = {{0}, 0};
  CHECK(fm_embed_tokens("ab\xff" "cd\xe2\x82", 7, collect, &b) == 2);
  CHECK_STR(b.buf, "ab|cd|");
}

static void test_hashing(void) {
  float a[384], b[384], c[384], d[384];
  const char *t1 = "postgres connection refused on port 5432";
  const char *t2 = "Connection refused when connecting to PostgreSQL (port 5432)";
  const char *t3 = "how to bake sourdough bread at home";
  CHECK(fm_embed_hashing(t1, strlen(t1), 384, a) > 0);
  CHECK(fm_embed_hashing(t1, strlen(t1), 384, d) > 0);
  CHECK(memcmp(a, d, sizeof a) == 0); /* deterministic */
  CHECK(fabs(dot(a, a, 384) - 1.0) < 1e-5);
  fm_embed_hashing(t2, strlen(t2), 384, b);
  fm_embed_hashing(t3, strlen(t3), 384, c);
  CHECK(dot(a, b, 384) > dot(a, c, 384) + 0.2);
  /* no token: the zero vector */
  CHECK(fm_embed_hashing("...", 3, 384, d) == 0);
  CHECK(dot(d, d, 384) == 0);
  /* 512 dimensions: a different vector of unit length */
  float *e = malloc(512 * sizeof *e);
  fm_embed_hashing(t1, strlen(t1), 512, e);
  CHECK(fabs(dot(e, e, 512) - 1.0) < 1e-5);
  free(e);
  /* a very long word: trigrams are capped, nothing overflows (ASan watches) */
  char *big = malloc(100000);
  for (size_t i = 0; i < 100000; i++) big[i] = (char)('a' + i % 26);
  CHECK(fm_embed_hashing(big, 100000, 384, d) > 0);
  CHECK(fabs(dot(d, d, 384) - 1.0) < 1e-5);
  free(big);
  /* the hash is fixed: stored indexes depend on it */
  CHECK(fm_embed_hash64("abc", 3, 1) == fm_embed_hash64("abc", 3, 1));
  CHECK(fm_embed_hash64("abc", 3, 1) != fm_embed_hash64("abc", 3, 2));
  CHECK(fm_embed_hash64("abcdefghij", 10, 0) != fm_embed_hash64("abcdefghik", 10, 0));
}

static void test_pack(void) {
  float v[3] = {1.5f, -2.25f, 0.0f}, w[3];
  unsigned char p[12];
  fm_embed_pack(v, 3, p);
  CHECK(p[0] == 0x00 && p[1] == 0x00 && p[2] == 0xc0 && p[3] == 0x3f); /* 1.5f, little-endian */
  fm_embed_unpack(p, 3, w);
  CHECK(memcmp(v, w, sizeof v) == 0);
}

static void test_openai_parse(void) {
  struct fm_err err = {0};
  float *m;
  size_t dim;
  const char *ok = "{\"data\":[{\"index\":1,\"embedding\":[0,2]},{\"index\":0,\"embedding\":[3,4]}]}";
  CHECK(fm_embed_openai_parse(ok, strlen(ok), 2, 2, &m, &dim, &err) == 0);
  CHECK(dim == 2);
  CHECK(fabsf(m[0] - 0.6f) < 1e-6f && fabsf(m[1] - 0.8f) < 1e-6f); /* index 0 first, normalised */
  CHECK(m[2] == 0.0f && m[3] == 1.0f);
  free(m);
  CHECK(fm_embed_openai_parse(ok, strlen(ok), 2, 3, &m, &dim, &err) == FM_E_INVAL);
  CHECK(strstr(err.msg, "2 dimensions, 3 expected") != NULL);
  CHECK(m == NULL);
  CHECK(fm_embed_openai_parse(ok, strlen(ok), 3, 0, &m, &dim, &err) == FM_E_PROTO);
  const char *bad = "{\"data\": [ nope";
  CHECK(fm_embed_openai_parse(bad, strlen(bad), 1, 0, &m, &dim, &err) == FM_E_PROTO);
  CHECK(strstr(err.msg, "not JSON") != NULL);
  const char *ragged = "{\"data\":[{\"embedding\":[1,2]},{\"embedding\":[1,2,3]}]}";
  CHECK(fm_embed_openai_parse(ragged, strlen(ragged), 2, 0, &m, &dim, &err) == FM_E_PROTO);
  const char *dup = "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":0,\"embedding\":[1]}]}";
  CHECK(fm_embed_openai_parse(dup, strlen(dup), 2, 0, &m, &dim, &err) == FM_E_PROTO);
  const char *str = "{\"data\":[{\"embedding\":[1,\"x\"]}]}";
  CHECK(fm_embed_openai_parse(str, strlen(str), 1, 0, &m, &dim, &err) == FM_E_PROTO);
  const char *b64 = "{\"data\":[{\"embedding\":\"AAAA\"}]}";
  CHECK(fm_embed_openai_parse(b64, strlen(b64), 1, 0, &m, &dim, &err) == FM_E_PROTO);
}

static void bench(void) {
  /* not a test: the number goes to the log */
  char doc[1024];
  snprintf(doc, sizeof doc,
           "the service returned 503 because the upstream connection pool was exhausted after "
           "the database failover; retries amplified the load and the circuit breaker opened "
           "while kubelet reported memory pressure on node ip-10-0-3-17 and evicted pods");
  float v[384];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int n = 2000;
  for (int i = 0; i < n; i++) {
    doc[i % 200] ^= 1; /* not the same text twice */
    fm_embed_hashing(doc, strlen(doc), 384, v);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("hashing: %d docs of %zu bytes in %.3f s: %.0f docs/s\n", n, strlen(doc), s, n / s);
}

int main(void) {
  test_tokens();
  test_hashing();
  test_pack();
  test_openai_parse();
  bench();
  return check_done();
}
