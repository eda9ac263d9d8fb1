/* test_vec_hnsw.c: the HNSW index: recall@10 against exact search on 100k random and 100k
 * clustered vectors, int8 traversal with rescoring, deletes and slot reuse, replace by label,
 * filters, concurrent searches during adds, save/load round trips and refused damaged files. */
#include "check.h"
#include "vec_internal.h"
#include "vecmath.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define N 100000
/* 128 by default; FM_VEC_TEST_DIM=384 measures the embedding size (Release builds). */
static size_t DIM = 128;
#define NQ 200
#define K 10

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static double unif(void) { return ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0; }
static float gauss(void) {
  return (float)(sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif()));
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static char tmpdir[] = "/tmp/fm_vec_testXXXXXX";

/* Ground truth for a query set: fm_hnsw_exact over the live vectors (computed once per state of
 * the index; valid = 0 makes recall() compute it again). */
struct truth {
  int valid;
  uint64_t labels[NQ][K];
  size_t n[NQ];
};

/* recall@K of the index against the exact search (same filter). */
static double recall(struct fm_hnsw *h, const float *qs, size_t nq, size_t ef, int quant,
                     fm_hnsw_filter f, void *ud, double *us_per_query, struct truth *gt) {
  uint64_t got[K];
  float gs[K], ws[K];
  size_t hit = 0, total = 0;
  double search_t = 0;
  if (!gt->valid)
    for (size_t j = 0; j < nq; j++)
      gt->n[j] = fm_hnsw_exact(h, qs + j * DIM, K, f, ud, gt->labels[j], ws);
  gt->valid = 1;
  for (size_t j = 0; j < nq; j++) {
    double t0 = now();
    size_t ng = fm_hnsw_search_ex(h, qs + j * DIM, K, ef, quant, f, ud, got, gs);
    search_t += now() - t0;
    for (size_t a = 0; a < gt->n[j]; a++)
      for (size_t b = 0; b < ng; b++)
        if (gt->labels[j][a] == got[b]) {
          hit++;
          break;
        }
    total += gt->n[j];
  }
  if (us_per_query) *us_per_query = search_t / (double)nq * 1e6;
  return total ? (double)hit / (double)total : 1.0;
}

static struct fm_hnsw *build(const float *data, size_t n, enum fm_metric m, int quant, size_t efc,
                             const char *what) {
  struct fm_hnsw_params p = {.M = 16, .ef_construction = efc, .ef_search = 64, .quantize = quant};
  struct fm_hnsw *h = NULL;
  struct fm_err e;
  CHECK(fm_hnsw_new(DIM, m, &p, &h, &e) == 0);
  double t0 = now();
  int fails = 0;
  for (size_t i = 0; i < n; i++) fails += fm_hnsw_add(h, i, data + i * DIM, &e) != 0;
  CHECK(fails == 0);
  CHECK(fm_hnsw_count(h) == n);
  double dt = now() - t0;
  printf("%s: efc %zu: built %zu x %zu in %.1f s (%.0f inserts/s), %.1f MiB\n", what, efc, n, DIM,
         dt, (double)n / dt, (double)fm_hnsw_memory(h) / 1048576.0);
  return h;
}

static int is_even(uint64_t label, void *ud) {
  (*(size_t *)ud)++;
  return (label & 1) == 0;
}

/* Gaussian random vectors: no neighbourhood structure, the hardest case for a graph index (the
 * recall curve over ef is printed; 0.95 needs a large ef here). */
static void test_random(void) {
  float *data = malloc((size_t)N * DIM * sizeof *data), *qs = malloc(NQ * DIM * sizeof *qs);
  for (size_t i = 0; i < (size_t)N * DIM; i++) data[i] = gauss();
  for (size_t i = 0; i < NQ * DIM; i++) qs[i] = gauss();
  struct fm_hnsw *h = build(data, N, FM_METRIC_L2, 0, 64, "random L2");
  double us, rmax = 0;
  static struct truth gt;
  size_t efs[] = {64, 256, 1024, 2048};
  for (size_t i = 0; i < sizeof efs / sizeof *efs; i++) {
    double r = recall(h, qs, NQ, efs[i], 0, NULL, NULL, &us, &gt);
    printf("random L2: recall@10 %.4f at ef %zu (%.0f us/query)\n", r, efs[i], us);
    rmax = r;
  }
  CHECK(rmax >= 0.95);

  /* The exact search agrees with fm_vec_topk on the raw matrix (labels are row numbers). */
  uint64_t lab[K];
  float sc[K], tsc[K];
  uint32_t tid[K];
  fm_hnsw_exact(h, qs, K, NULL, NULL, lab, sc);
  fm_vec_topk(data, N, DIM, FM_METRIC_L2, qs, K, tid, tsc);
  int same = 1;
  for (int i = 0; i < K; i++) same &= lab[i] == tid[i] && sc[i] == tsc[i];
  CHECK(same);
  fm_hnsw_free(h);
  free(data);
  free(qs);
}

/* Filter, deletes, slot reuse and replace on a built index (labels 0..N-1 = rows of data). */
static void test_mutations(struct fm_hnsw *h, const float *data, const float *qs, size_t ef) {
  uint64_t lab[K];
  float sc[K];
  double us;
  static struct truth gt;
  /* A filter: only even labels come back, and recall holds against the filtered exact search. */
  size_t calls = 0;
  double rf = recall(h, qs, NQ, ef, 1, is_even, &calls, NULL, &gt);
  printf("clustered: recall@10 %.4f with a 50%% filter at ef %zu (%zu filter calls)\n", rf, ef,
         calls);
  CHECK(rf >= 0.95);
  CHECK(calls > 0);
  int odd = 0;
  for (size_t j = 0; j < 50; j++) {
    size_t got = fm_hnsw_search(h, qs + j * DIM, K, ef, is_even, &calls, lab, sc);
    for (size_t i = 0; i < got; i++) odd += (int)(lab[i] & 1);
    CHECK(got == K);
  }
  CHECK(odd == 0);

  /* Delete 10%: never returned; recall against the exact search over what is left holds. */
  int del_fails = 0;
  for (size_t i = 0; i < N; i += 10) del_fails += fm_hnsw_delete(h, i) != 0;
  CHECK(del_fails == 0);
  CHECK(fm_hnsw_count(h) == N - N / 10);
  CHECK(fm_hnsw_delete(h, 0) == FM_E_NOTFOUND);
  CHECK(!fm_hnsw_contains(h, 10) && fm_hnsw_contains(h, 11));
  int returned_deleted = 0;
  for (size_t j = 0; j < NQ; j++) {
    size_t got = fm_hnsw_search(h, qs + j * DIM, K, ef, NULL, NULL, lab, sc);
    for (size_t i = 0; i < got; i++) returned_deleted += lab[i] % 10 == 0;
  }
  CHECK(returned_deleted == 0);
  /* A deleted vector's own query does not find it. */
  size_t got = fm_hnsw_search(h, data + 20 * DIM, 1, ef, NULL, NULL, lab, sc);
  CHECK(got == 1 && lab[0] != 20);
  gt.valid = 0;
  double rd = recall(h, qs, NQ, ef, 1, NULL, NULL, &us, &gt);
  printf("clustered: recall@10 %.4f after deleting 10%% (ef %zu)\n", rd, ef);
  CHECK(rd >= 0.95);

  /* Re-adding 10% (perturbed copies of the deleted rows) reuses their slots; recall holds. */
  size_t slots = fm_hnsw_slots(h);
  struct fm_err e;
  float *v = malloc(DIM * sizeof *v);
  int fails = 0;
  for (size_t i = 0; i < N / 10; i++) {
    const float *src = data + (size_t)(rnd() % N) * DIM;
    for (size_t d = 0; d < DIM; d++) v[d] = src[d] + 0.2f * gauss();
    fails += fm_hnsw_add(h, N + i, v, &e) != 0;
  }
  CHECK(fails == 0);
  CHECK(fm_hnsw_slots(h) == slots);
  CHECK(fm_hnsw_count(h) == N);
  gt.valid = 0;
  double rr = recall(h, qs, NQ, ef, 1, NULL, NULL, &us, &gt);
  printf("clustered: recall@10 %.4f after re-adding 10%% into reused slots (ef %zu)\n", rr, ef);
  CHECK(rr >= 0.95);

  /* Replace by label: the new vector is found under the label, the count is unchanged. */
  for (size_t d = 0; d < DIM; d++) v[d] = gauss() * 10;
  CHECK(fm_hnsw_add(h, 12345, v, &e) == 0);
  CHECK(fm_hnsw_count(h) == N);
  float *back = malloc(DIM * sizeof *back);
  fm_vec_normalize(v, DIM);
  CHECK(fm_hnsw_get(h, 12345, back) == 0 && fm_vec_l2sq(back, v, DIM) < 1e-10f);
  got = fm_hnsw_search(h, v, 1, ef, NULL, NULL, lab, sc);
  CHECK(got == 1 && lab[0] == 12345 && fabsf(sc[0] - 1) < 1e-4f);
  CHECK(fm_hnsw_get(h, 10, back) == FM_E_NOTFOUND);
  free(back);
  free(v);
}

/* 100 Gaussian clusters, cosine, int8 traversal with float rescoring; save and load; then the
 * mutations. */
static void test_clustered(void) {
  const size_t nc = 100;
  float *cent = malloc(nc * DIM * sizeof *cent);
  float *data = malloc((size_t)N * DIM * sizeof *data), *qs = malloc(NQ * DIM * sizeof *qs);
  for (size_t i = 0; i < nc * DIM; i++) cent[i] = gauss();
  for (size_t i = 0; i < N; i++) {
    const float *c = cent + (rnd() % nc) * DIM;
    for (size_t d = 0; d < DIM; d++) data[i * DIM + d] = c[d] + 0.35f * gauss();
  }
  for (size_t j = 0; j < NQ; j++) {
    const float *c = cent + (rnd() % nc) * DIM;
    for (size_t d = 0; d < DIM; d++) qs[j * DIM + d] = c[d] + 0.35f * gauss();
  }
  struct fm_hnsw *h = build(data, N, FM_METRIC_COSINE, 1, 64, "clustered cosine q8");
  double us, rq = 0, rf = 0;
  static struct truth gt;
  size_t efs[] = {32, 64, 128};
  for (size_t i = 0; i < sizeof efs / sizeof *efs; i++) {
    double q = recall(h, qs, NQ, efs[i], 1, NULL, NULL, &us, &gt);
    printf("clustered cosine: recall@10 %.4f at ef %zu, int8 traversal + rescoring (%.0f us/q)\n",
           q, efs[i], us);
    double f = recall(h, qs, NQ, efs[i], 0, NULL, NULL, &us, &gt);
    printf("clustered cosine: recall@10 %.4f at ef %zu, float32 traversal (%.0f us/q)\n", f, efs[i],
           us);
    if (efs[i] == 64) rq = q, rf = f;
  }
  CHECK(rq >= 0.95);
  CHECK(rf >= 0.95);

  /* Scores are cosines: the best match of a stored vector is itself, score ~1. */
  uint64_t lab[K], lab2[K];
  float sc[K], sc2[K];
  size_t got = fm_hnsw_search(h, data + 777 * DIM, K, 64, NULL, NULL, lab, sc);
  CHECK(got == K && lab[0] == 777 && fabsf(sc[0] - 1) < 1e-4f);

  char path[128];
  snprintf(path, sizeof path, "%s/clustered.hnsw", tmpdir);
  struct fm_err e;
  double t0 = now();
  CHECK(fm_hnsw_save(h, path, &e) == 0);
  double ts = now() - t0;
  t0 = now();
  struct fm_hnsw *l = NULL;
  CHECK(fm_hnsw_load(path, &l, &e) == 0);
  struct stat st;
  stat(path, &st);
  printf("clustered: saved %.1f MiB in %.2f s, loaded in %.2f s\n", st.st_size / 1048576.0, ts,
         now() - t0);
  if (l) {
    CHECK(fm_hnsw_count(l) == N && fm_hnsw_dim(l) == DIM &&
          fm_hnsw_metric(l) == FM_METRIC_COSINE);
    int diff = 0;
    for (size_t j = 0; j < NQ; j++) {
      size_t a = fm_hnsw_search(h, qs + j * DIM, K, 100, NULL, NULL, lab, sc);
      size_t b = fm_hnsw_search(l, qs + j * DIM, K, 100, NULL, NULL, lab2, sc2);
      diff += a != b || memcmp(lab, lab2, a * sizeof *lab) || memcmp(sc, sc2, a * sizeof *sc);
    }
    CHECK(diff == 0);
    fm_hnsw_free(l);
  }
  unlink(path);
  test_mutations(h, data, qs, 128);
  fm_hnsw_free(h);
  free(cent);
  free(data);
  free(qs);
}

static void test_empty(void) {
  struct fm_hnsw *h = NULL;
  struct fm_err e;
  CHECK(fm_hnsw_new(8, FM_METRIC_IP, NULL, &h, &e) == 0);
  float q[8] = {1, 0, 0, 0, 0, 0, 0, 0}, v[8];
  uint64_t lab[4];
  float sc[4];
  CHECK(fm_hnsw_count(h) == 0);
  CHECK(fm_hnsw_search(h, q, 4, 0, NULL, NULL, lab, sc) == 0);
  CHECK(fm_hnsw_exact(h, q, 4, NULL, NULL, lab, sc) == 0);
  CHECK(fm_hnsw_delete(h, 1) == FM_E_NOTFOUND);
  CHECK(fm_hnsw_get(h, 1, v) == FM_E_NOTFOUND);
  CHECK(!fm_hnsw_contains(h, 1));
  char path[128];
  snprintf(path, sizeof path, "%s/empty.hnsw", tmpdir);
  CHECK(fm_hnsw_save(h, path, &e) == 0);
  struct fm_hnsw *l = NULL;
  CHECK(fm_hnsw_load(path, &l, &e) == 0);
  if (l) {
    CHECK(fm_hnsw_count(l) == 0 && fm_hnsw_dim(l) == 8);
    CHECK(fm_hnsw_search(l, q, 4, 0, NULL, NULL, lab, sc) == 0);
    CHECK(fm_hnsw_add(l, 3, q, &e) == 0);
    CHECK(fm_hnsw_search(l, q, 4, 0, NULL, NULL, lab, sc) == 1 && lab[0] == 3 && sc[0] == 1);
  }
  fm_hnsw_free(l);
  /* One vector, deleted: nothing comes back; re-adding works. */
  CHECK(fm_hnsw_add(h, 7, q, &e) == 0);
  CHECK(fm_hnsw_delete(h, 7) == 0);
  CHECK(fm_hnsw_search(h, q, 4, 0, NULL, NULL, lab, sc) == 0);
  CHECK(fm_hnsw_add(h, 8, q, &e) == 0);
  CHECK(fm_hnsw_search(h, q, 4, 0, NULL, NULL, lab, sc) == 1 && lab[0] == 8);
  /* Bad input is refused with a message. */
  float bad[8] = {1, NAN};
  CHECK(fm_hnsw_add(h, 9, bad, &e) == FM_E_INVAL && strstr(e.msg, "not finite"));
  CHECK(fm_hnsw_new(0, FM_METRIC_IP, NULL, &l, &e) == FM_E_INVAL && l == NULL);
  CHECK(fm_hnsw_new(4, (enum fm_metric)7, NULL, &l, &e) == FM_E_INVAL);
  fm_hnsw_free(h);
  fm_hnsw_free(NULL);
  unlink(path);
}

static int copy_file(const char *from, const char *to, long cut, long flip) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  if (!a || !b) return -1;
  int c;
  long i = 0;
  while ((c = fgetc(a)) != EOF && (cut < 0 || i < cut)) {
    if (i == flip) c ^= 0x10;
    fputc(c, b);
    i++;
  }
  fclose(a);
  fclose(b);
  return 0;
}

static void test_damaged(void) {
  const size_t n = 3000, dim = 24;
  struct fm_hnsw *h = NULL;
  struct fm_err e;
  struct fm_hnsw_params p = {.M = 8, .ef_construction = 50, .quantize = 1};
  CHECK(fm_hnsw_new(dim, FM_METRIC_L2, &p, &h, &e) == 0);
  float v[24];
  for (size_t i = 0; i < n; i++) {
    for (size_t d = 0; d < dim; d++) v[d] = gauss();
    fm_hnsw_add(h, i * 3, v, &e);
  }
  for (size_t i = 0; i < n; i += 7) fm_hnsw_delete(h, i * 3);
  char path[128], bad[160];
  snprintf(path, sizeof path, "%s/small.hnsw", tmpdir);
  snprintf(bad, sizeof bad, "%s/bad.hnsw", tmpdir);
  CHECK(fm_hnsw_save(h, path, &e) == 0);
  struct stat st;
  stat(path, &st);
  struct fm_hnsw *l = NULL;
  /* Round trip of a quantized L2 index with deletions. */
  CHECK(fm_hnsw_load(path, &l, &e) == 0);
  if (l) {
    uint64_t a[10], b[10];
    float sa[10], sb[10];
    int diff = 0;
    for (int j = 0; j < 20; j++) {
      for (size_t d = 0; d < dim; d++) v[d] = gauss();
      size_t na = fm_hnsw_search(h, v, 10, 0, NULL, NULL, a, sa);
      size_t nb = fm_hnsw_search(l, v, 10, 0, NULL, NULL, b, sb);
      diff += na != nb || memcmp(a, b, na * sizeof *a) || memcmp(sa, sb, na * sizeof *sa);
    }
    CHECK(diff == 0);
    CHECK(fm_hnsw_count(l) == fm_hnsw_count(h));
    CHECK(!fm_hnsw_contains(l, 0) && fm_hnsw_contains(l, 3));
    fm_hnsw_free(l);
    l = NULL;
  }
  /* Truncated anywhere: refused with a clear message. */
  long cuts[] = {0, 10, 143, 144, 1000, (long)st.st_size - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    copy_file(path, bad, cuts[i], -1);
    int rc = fm_hnsw_load(bad, &l, &e);
    CHECK(rc != 0 && l == NULL && strstr(e.msg, "truncated"));
  }
  /* A flipped bit in the body, or in the header. */
  long flips[] = {(long)st.st_size / 2, (long)st.st_size - 3, 200, 20, 100};
  const char *expect[] = {"checksum mismatch", "checksum mismatch", "checksum mismatch",
                          "header checksum", "header checksum"};
  for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
    copy_file(path, bad, -1, flips[i]);
    int rc = fm_hnsw_load(bad, &l, &e);
    CHECK(rc == FM_E_INVAL && l == NULL && strstr(e.msg, expect[i]));
    if (rc == 0) fm_hnsw_free(l), l = NULL;
  }
  /* Checksums right but a link points past the slots (a buggy or hostile writer): refused. */
  {
    FILE *in = fopen(path, "rb");
    unsigned char *b = malloc((size_t)st.st_size);
    CHECK(in && fread(b, 1, (size_t)st.st_size, in) == (size_t)st.st_size);
    if (in) fclose(in);
    size_t links0 = 144 + 30000 + n * dim * 4 + (n * 4 + n * dim + 7) / 8 * 8;
    uint32_t cnt, bad_id = 0xfffffff0u;
    memcpy(&cnt, b + links0, 4);
    CHECK(cnt >= 1 && cnt <= 16);
    memcpy(b + links0 + 4, &bad_id, 4);
    struct fm_vec_hash hs;
    fm_vec_hash_init(&hs, 0);
    fm_vec_hash_update(&hs, b + 144, (size_t)st.st_size - 144);
    uint64_t hv = fm_vec_hash_final(&hs);
    memcpy(b + 128, &hv, 8);
    fm_vec_hash_init(&hs, 0x1234);
    fm_vec_hash_update(&hs, b, 136);
    hv = fm_vec_hash_final(&hs);
    memcpy(b + 136, &hv, 8);
    FILE *out = fopen(bad, "wb");
    fwrite(b, 1, (size_t)st.st_size, out);
    fclose(out);
    free(b);
    CHECK(fm_hnsw_load(bad, &l, &e) == FM_E_INVAL && l == NULL &&
          strstr(e.msg, "inconsistent graph"));
  }
  /* Not an index, and missing. */
  FILE *f = fopen(bad, "wb");
  for (int i = 0; i < 300; i++) fputc('x', f);
  fclose(f);
  CHECK(fm_hnsw_load(bad, &l, &e) == FM_E_INVAL && strstr(e.msg, "not a vecmath index"));
  CHECK(fm_hnsw_load("/nonexistent/x.hnsw", &l, &e) == FM_E_IO && strstr(e.msg, "No such file"));
  /* Saving into a missing directory fails cleanly and leaves no temp file. */
  CHECK(fm_hnsw_save(h, "/nonexistent/dir/x.hnsw", &e) == FM_E_IO);
  unlink(bad);
  unlink(path);
  fm_hnsw_free(h);
}

/* ---- four searchers while one writer adds ----------------------------------------------- */

#define CDIM 32
#define CN 6000
struct conc {
  struct fm_hnsw *h;
  int stop;
  size_t searches, bad;
};
struct searcher_arg {
  struct conc *c;
  uint64_t seed;
};

static void *searcher(void *arg) {
  struct searcher_arg *a = arg;
  struct conc *c = a->c;
  uint64_t s = a->seed;
  float q[CDIM];
  uint64_t lab[10];
  float sc[10];
  size_t n = 0, bad = 0;
  while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE) || n < 50) {
    for (int d = 0; d < CDIM; d++) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      q[d] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
    size_t got = fm_hnsw_search(c->h, q, 10, 32, NULL, NULL, lab, sc);
    for (size_t i = 0; i < got; i++) {
      if (lab[i] >= CN || (i && sc[i] > sc[i - 1])) bad++;
    }
    n++;
  }
  __atomic_add_fetch(&c->searches, n, __ATOMIC_RELAXED);
  __atomic_add_fetch(&c->bad, bad, __ATOMIC_RELAXED);
  return NULL;
}

static void test_concurrent(void) {
  struct conc c = {0};
  struct fm_err e;
  struct fm_hnsw_params p = {.M = 12, .ef_construction = 64, .quantize = 1};
  CHECK(fm_hnsw_new(CDIM, FM_METRIC_COSINE, &p, &c.h, &e) == 0);
  pthread_t t[4];
  struct searcher_arg args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (struct searcher_arg){&c, 1000 + (uint64_t)i};
    pthread_create(&t[i], NULL, searcher, &args[i]);
  }
  float v[CDIM];
  int fails = 0;
  size_t deleted = 0;
  double t0 = now();
  for (size_t i = 0; i < CN; i++) {
    for (int d = 0; d < CDIM; d++) v[d] = gauss();
    fails += fm_hnsw_add(c.h, i, v, &e) != 0;
    if (i % 10 == 0 && i > 100) {
      fails += fm_hnsw_delete(c.h, i - 100) != 0;
      deleted++;
    }
  }
  __atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  printf("concurrent: %zu adds with 4 searching threads (%zu searches) in %.1f s\n", (size_t)CN,
         c.searches, now() - t0);
  CHECK(fails == 0);
  CHECK(c.bad == 0);
  CHECK(c.searches >= 200);
  CHECK(fm_hnsw_count(c.h) == CN - deleted);
  fm_hnsw_free(c.h);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  const char *d = getenv("FM_VEC_TEST_DIM");
  if (d && atoi(d) > 0) DIM = (size_t)atoi(d);
  if (!mkdtemp(tmpdir)) return 2;
  double t0 = now();
  printf("simd: %s\n", fm_vec_simd());
  test_empty();
  test_damaged();
  test_concurrent();
  if (!getenv("FM_VEC_TEST_SMALL")) { /* set for ThreadSanitizer runs of the rest */
    test_random();
    test_clustered();
  }
  rmdir(tmpdir);
  printf("total %.1f s\n", now() - t0);
  return check_done();
}
