/* test_vecmath.c: the float32 kernels against a double-precision reference on both dispatch
 * paths, int8 quantization bounds, exact top-k against a full sort, and the file checksum. */
#include "check.h"
#include "vec_internal.h"
#include "vecmath.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static float frand(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static void fill(float *v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
}

/* Kernels vs double references for n = 1..64 and random sizes up to 1000. */
static void test_kernels(int portable) {
  fm_vec_force_portable(portable);
  int bad_dot = 0, bad_l2 = 0, bad_cos = 0, bad_norm = 0;
  float *a = malloc(1000 * sizeof *a), *b = malloc(1000 * sizeof *b);
  for (int t = 0; t < 400; t++) {
    size_t n = t < 64 ? (size_t)t + 1 : 1 + rnd() % 1000;
    fill(a, n, 3.0f);
    fill(b, n, 0.5f);
    double dot = 0, l2 = 0, na = 0, nb = 0, abs = 0;
    for (size_t i = 0; i < n; i++) {
      dot += (double)a[i] * b[i];
      abs += fabs((double)a[i] * b[i]);
      l2 += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
      na += (double)a[i] * a[i];
      nb += (double)b[i] * b[i];
    }
    double tol = 1e-5 * abs + 1e-6;
    if (fabs(fm_vec_dot(a, b, n) - dot) > tol) bad_dot++;
    if (fabs(fm_vec_l2sq(a, b, n) - l2) > 1e-5 * l2 + 1e-6) bad_l2++;
    double cs = dot / sqrt(na * nb);
    if (fabs(fm_vec_cosine(a, b, n) - cs) > 1e-5 * abs / sqrt(na * nb) + 1e-6) bad_cos++;
    fm_vec_normalize(a, n);
    double nn = 0;
    for (size_t i = 0; i < n; i++) nn += (double)a[i] * a[i];
    if (fabs(nn - 1.0) > 1e-5) bad_norm++;
  }
  CHECK(bad_dot == 0);
  CHECK(bad_l2 == 0);
  CHECK(bad_cos == 0);
  CHECK(bad_norm == 0);
  /* Edge cases: zero vectors. */
  float z[5] = {0};
  CHECK(fm_vec_cosine(z, b, 5) == 0);
  fm_vec_normalize(z, 5);
  CHECK(z[0] == 0 && z[4] == 0);
  CHECK(fm_vec_dot(a, b, 0) == 0);
  free(a);
  free(b);
  fm_vec_force_portable(0);
}

static void test_dispatch(void) {
  fm_vec_force_portable(1);
  CHECK_STR(fm_vec_simd(), "portable");
  fm_vec_force_portable(0);
  __builtin_cpu_init();
  int has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  CHECK_STR(fm_vec_simd(), has ? "avx2+fma" : "portable");
  printf("simd: %s\n", fm_vec_simd());
  /* The two paths agree closely on the same data. */
  float a[777], b[777];
  fill(a, 777, 1);
  fill(b, 777, 1);
  float x = fm_vec_dot(a, b, 777);
  fm_vec_force_portable(1);
  float y = fm_vec_dot(a, b, 777);
  fm_vec_force_portable(0);
  CHECK(fabsf(x - y) < 1e-3f);
}

static void test_q8(int portable) {
  fm_vec_force_portable(portable);
  int bad_code = 0, bad_int = 0, bad_dot = 0;
  int8_t *ca = malloc(1000), *cb = malloc(1000);
  float *a = malloc(1000 * sizeof *a), *b = malloc(1000 * sizeof *b);
  for (int t = 0; t < 200; t++) {
    size_t n = t < 40 ? (size_t)t + 1 : 1 + rnd() % 1000;
    fill(a, n, 2.0f);
    fill(b, n, 0.1f);
    float sa, sb;
    fm_vec_q8_encode(a, n, ca, &sa);
    fm_vec_q8_encode(b, n, cb, &sb);
    double sumabs_a = 0, sumabs_b = 0, dot = 0;
    int64_t idot = 0;
    for (size_t i = 0; i < n; i++) {
      if (fabs(a[i] - ca[i] * (double)sa) > sa * 0.5001 || ca[i] < -127) bad_code++;
      if (fabs(b[i] - cb[i] * (double)sb) > sb * 0.5001) bad_code++;
      sumabs_a += fabs(a[i]);
      sumabs_b += fabs(b[i]);
      dot += (double)a[i] * b[i];
      idot += (int64_t)ca[i] * cb[i];
    }
    /* The int8 kernel is exact in integers. */
    if (fm_vec_i8_dot_fn()(ca, cb, n) != idot) bad_int++;
    /* |a.b - qa.qb| <= sa/2 * sum|b| + sb/2 * sum|a| + n * sa * sb / 4 (plus float rounding). */
    double bound = sa * 0.5 * sumabs_b + sb * 0.5 * sumabs_a + n * sa * sb * 0.25;
    if (fabs(fm_vec_q8_dot(ca, sa, cb, sb, n) - dot) > bound * 1.001 + 1e-5) bad_dot++;
  }
  CHECK(bad_code == 0);
  CHECK(bad_int == 0);
  CHECK(bad_dot == 0);
  float zero[4] = {0}, s = 1;
  int8_t zc[4] = {1, 1, 1, 1};
  fm_vec_q8_encode(zero, 4, zc, &s);
  CHECK(s == 0 && zc[0] == 0 && zc[3] == 0);
  free(ca);
  free(cb);
  free(a);
  free(b);
  fm_vec_force_portable(0);
}

struct scored {
  float s;
  uint32_t id;
};
static int by_score_desc(const void *x, const void *y) {
  const struct scored *a = x, *b = y;
  return a->s > b->s ? -1 : a->s < b->s ? 1 : 0;
}

static float score1(enum fm_metric m, const float *q, const float *r, size_t dim) {
  return m == FM_METRIC_COSINE ? fm_vec_cosine(q, r, dim)
         : m == FM_METRIC_L2   ? -fm_vec_l2sq(q, r, dim)
                               : fm_vec_dot(q, r, dim);
}

static void test_topk(void) {
  const size_t count = 5000, dim = 37, nq = 7;
  float *base = malloc(count * dim * sizeof *base), *qs = malloc(nq * dim * sizeof *qs);
  fill(base, count * dim, 1);
  fill(qs, nq * dim, 1);
  struct scored *all = malloc(count * sizeof *all);
  uint32_t *ids = malloc(nq * 6000 * sizeof *ids), *ids1 = malloc(6000 * sizeof *ids1);
  float *sc = malloc(nq * 6000 * sizeof *sc), *sc1 = malloc(6000 * sizeof *sc1);
  size_t ks[] = {1, 10, 100, 5000, 6000};
  int bad_sort = 0, bad_batch = 0, bad_n = 0;
  for (int m = 0; m < 3; m++) {
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
      size_t k = ks[ki];
      fm_vec_topk_batch(base, count, dim, (enum fm_metric)m, qs, nq, k, ids, sc);
      for (size_t j = 0; j < nq; j++) {
        const float *q = qs + j * dim;
        for (size_t r = 0; r < count; r++)
          all[r] = (struct scored){score1((enum fm_metric)m, q, base + r * dim, dim), (uint32_t)r};
        qsort(all, count, sizeof *all, by_score_desc);
        size_t got = fm_vec_topk(base, count, dim, (enum fm_metric)m, q, k, ids1, sc1);
        if (got != (k < count ? k : count)) bad_n++;
        for (size_t i = 0; i < got; i++) {
          if (sc1[i] != all[i].s) bad_sort++;
          if (score1((enum fm_metric)m, q, base + (size_t)ids1[i] * dim, dim) != sc1[i]) bad_sort++;
          if (ids[j * k + i] != ids1[i] || sc[j * k + i] != sc1[i]) bad_batch++;
        }
        for (size_t i = got; i < k; i++)
          if (ids[j * k + i] != UINT32_MAX) bad_batch++;
      }
    }
  }
  CHECK(bad_n == 0);
  CHECK(bad_sort == 0);
  CHECK(bad_batch == 0);
  CHECK(fm_vec_topk(base, 0, dim, FM_METRIC_IP, qs, 5, ids1, sc1) == 0);
  CHECK(fm_vec_topk(base, count, dim, FM_METRIC_IP, qs, 0, ids1, sc1) == 0);
  free(base);
  free(qs);
  free(all);
  free(ids);
  free(ids1);
  free(sc);
  free(sc1);
}

static void test_hash(void) {
  unsigned char buf[1000];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)rnd();
  struct fm_vec_hash a, b;
  fm_vec_hash_init(&a, 0);
  fm_vec_hash_update(&a, buf, sizeof buf);
  uint64_t one = fm_vec_hash_final(&a);
  fm_vec_hash_init(&b, 0);
  for (size_t off = 0, step = 1; off < sizeof buf; off += step, step = step * 3 % 37 + 1)
    fm_vec_hash_update(&b, buf + off, off + step > sizeof buf ? sizeof buf - off : step);
  CHECK(fm_vec_hash_final(&b) == one);
  int diff = 0;
  for (size_t bit = 0; bit < 8 * sizeof buf; bit += 97) {
    buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    fm_vec_hash_init(&a, 0);
    fm_vec_hash_update(&a, buf, sizeof buf);
    diff += fm_vec_hash_final(&a) != one;
    buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
  }
  CHECK(diff == (int)((8 * sizeof buf + 96) / 97));
  fm_vec_hash_init(&a, 0);
  fm_vec_hash_update(&a, buf, 999);
  CHECK(fm_vec_hash_final(&a) != one);
}

int main(void) {
  test_dispatch();
  test_kernels(0);
  test_kernels(1);
  test_q8(0);
  test_q8(1);
  test_topk();
  test_hash();
  return check_done();
}
