/* vecmath.c: float32 kernels (AVX2/FMA chosen at run time, a portable fallback), int8 scalar
 * quantization, exact top-k, and the checksum the index files use. */
#include "vecmath.h"
#include "vec_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FM_VEC_X86 1
#endif

/* Under AddressSanitizer the kernels check their two input ranges once per call instead of at
 * every load (the per-load checks made the 100k-vector tests several times slower), so an
 * out-of-range vector is still reported, with the same power. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <stdio.h>
#define KERNEL __attribute__((no_sanitize("address", "undefined")))
static void range_check(const void *p, size_t bytes) {
  const void *bad = __asan_region_is_poisoned((void *)(uintptr_t)p, bytes);
  if (bad) {
    fprintf(stderr, "vecmath: kernel read out of bounds at %p (range %p + %zu)\n", bad, p, bytes);
    __asan_describe_address((void *)(uintptr_t)bad);
    abort();
  }
}
#define CHECK_RANGES(a, b, bytes) (range_check((a), (bytes)), range_check((b), (bytes)))
#else
#define KERNEL
#define CHECK_RANGES(a, b, bytes) ((void)0)
#endif

/* ---- portable kernels: several accumulators so the compiler can keep them in registers ----- */

KERNEL static float dot_portable(const float *a, const float *b, size_t n) {
  CHECK_RANGES(a, b, n * sizeof *a);
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

KERNEL static float l2sq_portable(const float *a, const float *b, size_t n) {
  CHECK_RANGES(a, b, n * sizeof *a);
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    float d0 = a[i] - b[i], d1 = a[i + 1] - b[i + 1], d2 = a[i + 2] - b[i + 2],
          d3 = a[i + 3] - b[i + 3];
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; i < n; i++) {
    float d = a[i] - b[i];
    s0 += d * d;
  }
  return (s0 + s1) + (s2 + s3);
}

KERNEL static void cos_parts_portable(const float *a, const float *b, size_t n, float *d, float *na,
                               float *nb) {
  CHECK_RANGES(a, b, n * sizeof *a);
  float sd = 0, sa = 0, sb = 0;
  for (size_t i = 0; i < n; i++) {
    sd += a[i] * b[i];
    sa += a[i] * a[i];
    sb += b[i] * b[i];
  }
  *d = sd;
  *na = sa;
  *nb = sb;
}

KERNEL static int32_t i8_dot_portable(const int8_t *a, const int8_t *b, size_t n) {
  CHECK_RANGES(a, b, n);
  int32_t s = 0;
  for (size_t i = 0; i < n; i++) s += (int32_t)a[i] * (int32_t)b[i];
  return s;
}

/* ---- AVX2/FMA kernels: compiled for that target per function, called only when the CPU has it */

#ifdef FM_VEC_X86
KERNEL __attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

KERNEL __attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b,
                                                          size_t n) {
  CHECK_RANGES(a, b, n * sizeof *a);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

KERNEL __attribute__((target("avx2,fma"))) static float l2sq_avx2(const float *a, const float *b,
                                                           size_t n) {
  CHECK_RANGES(a, b, n * sizeof *a);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
    s2 = _mm256_fmadd_ps(d2, d2, s2);
    s3 = _mm256_fmadd_ps(d3, d3, s3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s0 = _mm256_fmadd_ps(d, d, s0);
  }
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) {
    float d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

KERNEL __attribute__((target("avx2,fma"))) static void cos_parts_avx2(const float *a,
                                                                      const float *b,
                                                               size_t n, float *d, float *na,
                                                               float *nb) {
  CHECK_RANGES(a, b, n * sizeof *a);
  __m256 sd = _mm256_setzero_ps(), sa = _mm256_setzero_ps(), sb = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);
    sd = _mm256_fmadd_ps(x, y, sd);
    sa = _mm256_fmadd_ps(x, x, sa);
    sb = _mm256_fmadd_ps(y, y, sb);
  }
  float rd = hsum256(sd), ra = hsum256(sa), rb = hsum256(sb);
  for (; i < n; i++) {
    rd += a[i] * b[i];
    ra += a[i] * a[i];
    rb += b[i] * b[i];
  }
  *d = rd;
  *na = ra;
  *nb = rb;
}

KERNEL __attribute__((target("avx2,fma"))) static int32_t i8_dot_avx2(const int8_t *a,
                                                                      const int8_t *b,
                                                               size_t n) {
  CHECK_RANGES(a, b, n);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(a + i)));
    __m256i y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(b + i)));
    __m256i x1 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 16)));
    __m256i y1 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(b + i + 16)));
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x0, y0));
    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(x1, y1));
  }
  for (; i + 16 <= n; i += 16) {
    __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(a + i)));
    __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(b + i)));
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x, y));
  }
  __m256i s = _mm256_add_epi32(s0, s1);
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
  int32_t r = _mm_cvtsi128_si32(t);
  for (; i < n; i++) r += (int32_t)a[i] * (int32_t)b[i];
  return r;
}
#endif

/* ---- dispatch ----------------------------------------------------------------------------- */

/* -1 not probed yet, 0 portable, 1 AVX2+FMA. Probing is idempotent, so a race only repeats it. */
static int cpu_avx2 = -1;
static int forced_portable;

static int use_avx2(void) {
  int c = __atomic_load_n(&cpu_avx2, __ATOMIC_RELAXED);
  if (c < 0) {
#ifdef FM_VEC_X86
    __builtin_cpu_init();
    c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    c = 0;
#endif
    __atomic_store_n(&cpu_avx2, c, __ATOMIC_RELAXED);
  }
  return c && !__atomic_load_n(&forced_portable, __ATOMIC_RELAXED);
}

void fm_vec_force_portable(int on) {
  __atomic_store_n(&forced_portable, on != 0, __ATOMIC_RELAXED);
}

const char *fm_vec_simd(void) { return use_avx2() ? "avx2+fma" : "portable"; }

fm_vec_f32_fn fm_vec_dot_fn(void) {
#ifdef FM_VEC_X86
  if (use_avx2()) return dot_avx2;
#endif
  return dot_portable;
}

fm_vec_f32_fn fm_vec_l2sq_fn(void) {
#ifdef FM_VEC_X86
  if (use_avx2()) return l2sq_avx2;
#endif
  return l2sq_portable;
}

fm_vec_i8_fn fm_vec_i8_dot_fn(void) {
#ifdef FM_VEC_X86
  if (use_avx2()) return i8_dot_avx2;
#endif
  return i8_dot_portable;
}

float fm_vec_dot(const float *a, const float *b, size_t n) { return fm_vec_dot_fn()(a, b, n); }

float fm_vec_l2sq(const float *a, const float *b, size_t n) { return fm_vec_l2sq_fn()(a, b, n); }

float fm_vec_cosine(const float *a, const float *b, size_t n) {
  float d, na, nb;
#ifdef FM_VEC_X86
  if (use_avx2()) cos_parts_avx2(a, b, n, &d, &na, &nb);
  else
#endif
    cos_parts_portable(a, b, n, &d, &na, &nb);
  if (na <= 0 || nb <= 0) return 0;
  return (float)((double)d / sqrt((double)na * (double)nb));
}

void fm_vec_normalize(float *v, size_t n) {
  float s = fm_vec_dot(v, v, n);
  if (!(s > 0)) return;
  float inv = (float)(1.0 / sqrt((double)s));
  for (size_t i = 0; i < n; i++) v[i] *= inv;
}

/* ---- int8 quantization -------------------------------------------------------------------- */

void fm_vec_q8_encode(const float *v, size_t n, int8_t *out, float *scale) {
  float mx = 0;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(v[i]);
    if (a > mx) mx = a;
  }
  if (!(mx > 0) || !isfinite(mx)) {
    memset(out, 0, n);
    *scale = 0;
    return;
  }
  float s = mx / 127.0f, inv = 127.0f / mx;
  for (size_t i = 0; i < n; i++) {
    long q = lrintf(v[i] * inv);
    out[i] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
  }
  *scale = s;
}

float fm_vec_q8_dot(const int8_t *a, float sa, const int8_t *b, float sb, size_t n) {
  return (float)fm_vec_i8_dot_fn()(a, b, n) * sa * sb;
}

/* ---- exact top-k -------------------------------------------------------------------------- */

/* A min-heap on score of at most k entries: the root is the worst kept. */
struct topk_heap {
  uint32_t *ids;
  float *sc;
  size_t n, k;
};

static void topk_push(struct topk_heap *h, uint32_t id, float s) {
  size_t i;
  if (h->n < h->k) {
    i = h->n++;
    while (i > 0) {
      size_t p = (i - 1) / 2;
      if (h->sc[p] <= s) break;
      h->sc[i] = h->sc[p];
      h->ids[i] = h->ids[p];
      i = p;
    }
  } else {
    if (!(s > h->sc[0])) return;
    i = 0;
    for (;;) {
      size_t l = 2 * i + 1, r = l + 1, m = i;
      float ms = s;
      if (l < h->n && h->sc[l] < ms) m = l, ms = h->sc[l];
      if (r < h->n && h->sc[r] < ms) m = r;
      if (m == i) break;
      h->sc[i] = h->sc[m];
      h->ids[i] = h->ids[m];
      i = m;
    }
  }
  h->sc[i] = s;
  h->ids[i] = id;
}

/* Sorts the heap's contents best first, in place (heap sort of a min-heap gives descending). */
static size_t topk_finish(struct topk_heap *h) {
  size_t n = h->n;
  while (h->n > 1) {
    size_t last = --h->n;
    uint32_t id = h->ids[last];
    float s = h->sc[last];
    h->ids[last] = h->ids[0];
    h->sc[last] = h->sc[0];
    size_t i = 0;
    for (;;) {
      size_t l = 2 * i + 1, r = l + 1, m = i;
      float ms = s;
      if (l < h->n && h->sc[l] < ms) m = l, ms = h->sc[l];
      if (r < h->n && h->sc[r] < ms) m = r;
      if (m == i) break;
      h->sc[i] = h->sc[m];
      h->ids[i] = h->ids[m];
      i = m;
    }
    h->sc[i] = s;
    h->ids[i] = id;
  }
  h->n = 0;
  return n;
}

static float score_of(enum fm_metric metric, const float *q, const float *row, size_t dim) {
  switch (metric) {
  case FM_METRIC_COSINE: return fm_vec_cosine(q, row, dim);
  case FM_METRIC_L2: return -fm_vec_l2sq(q, row, dim);
  default: return fm_vec_dot(q, row, dim);
  }
}

size_t fm_vec_topk(const float *base, size_t count, size_t dim, enum fm_metric metric,
                   const float *q, size_t k, uint32_t *ids, float *scores) {
  if (k == 0 || count == 0) return 0;
  struct topk_heap h = {ids, scores, 0, k};
  for (size_t r = 0; r < count; r++)
    topk_push(&h, (uint32_t)r, score_of(metric, q, base + r * dim, dim));
  return topk_finish(&h);
}

void fm_vec_topk_batch(const float *base, size_t count, size_t dim, enum fm_metric metric,
                       const float *qs, size_t nq, size_t k, uint32_t *ids, float *scores) {
  if (k == 0 || nq == 0) return;
  /* Rows in blocks that stay in L2 while every query passes over them. */
  size_t block = dim ? (256 * 1024) / (dim * sizeof(float)) : count;
  if (block < 16) block = 16;
  struct topk_heap *hs = calloc(nq, sizeof *hs);
  if (!hs) { /* no memory for the heaps: one query at a time needs none */
    for (size_t j = 0; j < nq; j++) {
      size_t got = fm_vec_topk(base, count, dim, metric, qs + j * dim, k, ids + j * k,
                               scores + j * k);
      for (; got < k; got++) ids[j * k + got] = UINT32_MAX, scores[j * k + got] = -INFINITY;
    }
    return;
  }
  for (size_t j = 0; j < nq; j++) hs[j] = (struct topk_heap){ids + j * k, scores + j * k, 0, k};
  for (size_t r0 = 0; r0 < count; r0 += block) {
    size_t r1 = r0 + block < count ? r0 + block : count;
    for (size_t j = 0; j < nq; j++)
      for (size_t r = r0; r < r1; r++)
        topk_push(&hs[j], (uint32_t)r, score_of(metric, qs + j * dim, base + r * dim, dim));
  }
  for (size_t j = 0; j < nq; j++) {
    size_t got = topk_finish(&hs[j]);
    /* Fewer rows than k: the rest is marked empty. */
    for (; got < k; got++) ids[j * k + got] = UINT32_MAX, scores[j * k + got] = -INFINITY;
  }
  free(hs);
}

/* ---- checksum ----------------------------------------------------------------------------- */

#define P1 11400714785074694791ULL
#define P2 14029467366897019727ULL
#define P3 1609587929392839161ULL
#define P4 9650029242287828579ULL
#define P5 2870177450012600261ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v; /* little-endian hosts only (x86-64, aarch64): the file format is little-endian */
}
static inline uint64_t round64(uint64_t acc, uint64_t in) {
  return rotl64(acc + in * P2, 31) * P1;
}

void fm_vec_hash_init(struct fm_vec_hash *s, uint64_t seed) {
  s->v[0] = seed + P1 + P2;
  s->v[1] = seed + P2;
  s->v[2] = seed;
  s->v[3] = seed - P1;
  s->total = 0;
  s->ntail = 0;
}

void fm_vec_hash_update(struct fm_vec_hash *s, const void *data, size_t n) {
  const unsigned char *p = data;
  if (!n) return;
  s->total += n;
  if (s->ntail) {
    size_t take = 32 - s->ntail < n ? 32 - s->ntail : n;
    memcpy(s->tail + s->ntail, p, take);
    s->ntail += take;
    p += take;
    n -= take;
    if (s->ntail < 32) return;
    for (int i = 0; i < 4; i++) s->v[i] = round64(s->v[i], rd64(s->tail + 8 * i));
    s->ntail = 0;
  }
  uint64_t v0 = s->v[0], v1 = s->v[1], v2 = s->v[2], v3 = s->v[3];
  for (; n >= 32; p += 32, n -= 32) {
    v0 = round64(v0, rd64(p));
    v1 = round64(v1, rd64(p + 8));
    v2 = round64(v2, rd64(p + 16));
    v3 = round64(v3, rd64(p + 24));
  }
  s->v[0] = v0, s->v[1] = v1, s->v[2] = v2, s->v[3] = v3;
  memcpy(s->tail, p, n);
  s->ntail = n;
}

uint64_t fm_vec_hash_final(const struct fm_vec_hash *s) {
  uint64_t h = rotl64(s->v[0], 1) + rotl64(s->v[1], 7) + rotl64(s->v[2], 12) + rotl64(s->v[3], 18);
  for (int i = 0; i < 4; i++) h = (h ^ round64(0, s->v[i])) * P1 + P4;
  h += s->total;
  size_t i = 0;
  for (; i + 8 <= s->ntail; i += 8) h = rotl64(h ^ round64(0, rd64(s->tail + i)), 27) * P1 + P4;
  for (; i < s->ntail; i++) h = rotl64(h ^ (s->tail[i] * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}
