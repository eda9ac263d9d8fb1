/* vec_common.h: what the three harnesses of bench/vector share (the engine's vec_fm.c, FAISS's
 * vec_faiss.cpp, hnswlib's vec_hnswlib.cpp): the data file, the clock, latency percentiles, peak
 * resident set, recall@k against the ground truth, and the one-line result format run.sh parses.
 * Header-only, C and C++.
 *
 * Data file (written by gen_vectors.c): a 32-byte header
 *   char magic[8] = "FMVEC01\0"; uint32 dim; uint32 nq; uint64 n; uint64 seed;
 * then n x dim float32 base vectors, then nq x dim float32 queries, row-major, little-endian,
 * every row of unit length.
 * Ids file (exact top-k of every query, written by the exact searches, read as ground truth):
 *   uint32 nq; uint32 k; then nq x k uint32 ids (best first); then nq x k float32 scores. */
#ifndef VEC_COMMON_H
#define VEC_COMMON_H

#define _GNU_SOURCE 1
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define VEC_K 10

struct vec_data {
  uint32_t dim, nq;
  uint64_t n, seed;
  float *base;    /* n x dim, 64-byte aligned */
  float *queries; /* nq x dim */
};

static inline void vec_die(const char *what) {
  fprintf(stderr, "vector bench: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
  exit(1);
}

static inline double vec_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of this thread / this process: on a shared machine, the time the code ran, without the
 * time it waited for a CPU (co-runners still cost it caches and memory bandwidth). */
static inline double vec_thread_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static inline double vec_proc_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int vec_read_all(FILE *f, void *dst, size_t bytes) {
  char *p = (char *)dst;
  while (bytes > 0) {
    size_t chunk = bytes > ((size_t)1 << 28) ? ((size_t)1 << 28) : bytes;
    size_t got = fread(p, 1, chunk, f);
    if (got != chunk) return -1;
    p += got;
    bytes -= got;
  }
  return 0;
}

/* Reads the whole data file into two aligned buffers (the caller frees both). The environment
 * variable VEC_NQ, when set, caps the number of queries used. */
static inline void vec_load(const char *path, struct vec_data *d) {
  FILE *f = fopen(path, "rb");
  char magic[8];
  if (!f) vec_die(path);
  errno = 0;
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "FMVEC01", 8) != 0) vec_die("bad magic");
  if (fread(&d->dim, 4, 1, f) != 1 || fread(&d->nq, 4, 1, f) != 1 || fread(&d->n, 8, 1, f) != 1 ||
      fread(&d->seed, 8, 1, f) != 1)
    vec_die("short header");
  size_t bb = (size_t)d->n * d->dim * sizeof(float), qb = (size_t)d->nq * d->dim * sizeof(float);
  if (posix_memalign((void **)&d->base, 64, bb ? bb : 64) != 0 ||
      posix_memalign((void **)&d->queries, 64, qb ? qb : 64) != 0)
    vec_die("out of memory");
  if (vec_read_all(f, d->base, bb) != 0 || vec_read_all(f, d->queries, qb) != 0)
    vec_die("short data file");
  fclose(f);
  /* VEC_NQ=m: use only the first m queries (the long exact runs at 1M) */
  const char *lim = getenv("VEC_NQ");
  if (lim && strtoul(lim, NULL, 10) > 0 && strtoul(lim, NULL, 10) < d->nq)
    d->nq = (uint32_t)strtoul(lim, NULL, 10);
}

/* VmHWM (peak) or VmRSS (now) of this process in KiB, from /proc/self/status. */
static inline long vec_status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = strtol(line + kl + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

static inline int vec_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Sorts lat (seconds) in place; p in [0,100]: the nearest-rank percentile. */
static inline double vec_pct(double *lat, size_t n, double p, int sorted) {
  if (!sorted) qsort(lat, n, sizeof *lat, vec_cmp_double);
  size_t r = (size_t)((p / 100.0) * (double)n + 0.999999);
  if (r < 1) r = 1;
  if (r > n) r = n;
  return lat[r - 1];
}

struct vec_ids {
  uint32_t nq, k;
  uint32_t *ids;
  float *scores;
};

static inline void vec_ids_write(const char *path, uint32_t nq, uint32_t k, const uint32_t *ids,
                          const float *scores) {
  FILE *f = fopen(path, "wb");
  if (!f) vec_die(path);
  if (fwrite(&nq, 4, 1, f) != 1 || fwrite(&k, 4, 1, f) != 1 ||
      fwrite(ids, 4, (size_t)nq * k, f) != (size_t)nq * k ||
      fwrite(scores, 4, (size_t)nq * k, f) != (size_t)nq * k || fclose(f) != 0)
    vec_die("writing the ids file");
}

static inline void vec_ids_read(const char *path, struct vec_ids *g) {
  FILE *f = fopen(path, "rb");
  if (!f) vec_die(path);
  if (fread(&g->nq, 4, 1, f) != 1 || fread(&g->k, 4, 1, f) != 1) vec_die("short ids file");
  size_t m = (size_t)g->nq * g->k;
  g->ids = (uint32_t *)malloc(m * 4);
  g->scores = (float *)malloc(m * 4);
  if (!g->ids || !g->scores) vec_die("out of memory");
  if (fread(g->ids, 4, m, f) != m || fread(g->scores, 4, m, f) != m) vec_die("short ids file");
  fclose(f);
  if (g->k != VEC_K) vec_die("the ids file does not hold top-10 rows");
}

/* Mean over queries of |found[0..k) intersect truth[0..k)| / k. found rows have k entries
 * (UINT32_MAX or any id not in truth for "nothing"). */
static inline double vec_recall(const struct vec_ids *truth, const uint32_t *found, uint32_t nq,
                         uint32_t k) {
  double sum = 0;
  if (truth->nq < nq) vec_die("the ground truth has fewer queries than the run");
  for (uint32_t q = 0; q < nq; q++) {
    unsigned hit = 0;
    for (uint32_t i = 0; i < k; i++)
      for (uint32_t j = 0; j < k; j++)
        if (found[(size_t)q * k + i] == truth->ids[(size_t)q * truth->k + j]) {
          hit++;
          break;
        }
    sum += (double)hit / k;
  }
  return sum / nq;
}

/* The start of a result line: "RESULT system=... n=... " (run.sh parses key=value pairs). */
static inline void vec_result_head(const char *system, const char *mode, const struct vec_data *d) {
  printf("RESULT system=%s mode=%s n=%llu dim=%u nq=%u", system, mode, (unsigned long long)d->n,
         d->dim, d->nq);
}

/* Times nq single-query searches (one call each): fills qps, p50, p99 (microseconds). */
struct vec_timing {
  double qps, p50_us, p99_us, mean_us;
};

static inline void vec_timing_from(double *lat, size_t n, double wall, struct vec_timing *t) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += lat[i];
  t->qps = (double)n / wall;
  t->mean_us = s / (double)n * 1e6;
  t->p50_us = vec_pct(lat, n, 50, 0) * 1e6;
  t->p99_us = vec_pct(lat, n, 99, 1) * 1e6;
}

#endif
