/* vec_fm.c: the engine's side of bench/vector, linked against libfmcore.a (engine/vecmath).
 *   vec_fm exact DATA OUT_IDS PEER_IDS BATCH_NQ
 *     fm_vec_topk (FM_METRIC_IP, k = 10) over the base matrix in place (no copy: "build" is 0),
 *     the nq queries one at a time; then fm_vec_topk_batch over the first BATCH_NQ queries in one
 *     call (0: skipped). Writes its top-10 to OUT_IDS and checks them against PEER_IDS (FAISS
 *     IndexFlatIP's): recall against the peer, queries whose sets differ, and whether every
 *     difference is a near tie (|score difference| <= 1e-5).
 *   vec_fm hnsw DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH QUANTIZE
 *     fm_hnsw_new (FM_METRIC_IP) + fm_hnsw_add of every vector in order (label = row), one thread;
 *     for each ef of EF_LIST the nq queries one at a time with fm_hnsw_search; then fm_hnsw_save
 *     and fm_hnsw_load times, and the recall of the loaded index at the last ef.
 * One RESULT line per measurement (vec_common.h). */
#include "vec_common.h"
#include "vecmath.h"

#include <math.h>

static int run_exact(const struct vec_data *d, const char *out_ids, const char *peer_ids,
                     uint32_t batch_nq) {
  size_t m = (size_t)d->nq * VEC_K;
  uint32_t *ids = malloc(m * sizeof *ids);
  float *scores = malloc(m * sizeof *scores);
  double *lat = malloc(d->nq * sizeof *lat);
  struct vec_ids peer;
  struct vec_timing t;
  if (!ids || !scores || !lat) vec_die("out of memory");

  vec_result_head("fm-exact", "build", d);
  printf(" build_s=0 rss_before_kib=%ld hwm_kib=%ld index_bytes=0 simd=%s\n",
         vec_status_kib("VmRSS"), vec_status_kib("VmHWM"), fm_vec_simd());
  fflush(stdout);
  for (uint32_t q = 0; q < d->nq && q < 10; q++) /* warm-up */
    fm_vec_topk(d->base, d->n, d->dim, FM_METRIC_IP, d->queries, VEC_K, ids, scores);
  double c0 = vec_thread_cpu(), t0 = vec_now();
  for (uint32_t q = 0; q < d->nq; q++) {
    double a = vec_now();
    size_t got = fm_vec_topk(d->base, d->n, d->dim, FM_METRIC_IP, d->queries + (size_t)q * d->dim,
                             VEC_K, ids + (size_t)q * VEC_K, scores + (size_t)q * VEC_K);
    lat[q] = vec_now() - a;
    for (size_t i = got; i < VEC_K; i++) ids[(size_t)q * VEC_K + i] = UINT32_MAX;
  }
  double wall = vec_now() - t0, cpu = vec_thread_cpu() - c0;
  vec_timing_from(lat, d->nq, wall, &t);
  vec_ids_write(out_ids, d->nq, VEC_K, ids, scores);

  /* agreement with the peer: a differing id is fine only when it is a near tie at the 10th place */
  vec_ids_read(peer_ids, &peer);
  if (peer.nq != d->nq || peer.k != VEC_K) vec_die("the peer's ids file does not match");
  unsigned differ = 0, non_tie = 0;
  double max_score_diff = 0;
  for (uint32_t q = 0; q < d->nq; q++) {
    int same = 1;
    for (int i = 0; i < VEC_K; i++) {
      size_t o = (size_t)q * VEC_K + i;
      double sd = fabs((double)scores[o] - (double)peer.scores[o]);
      if (sd > max_score_diff) max_score_diff = sd;
      if (sd > 1e-5) non_tie++;
    }
    for (int i = 0; i < VEC_K && same; i++) {
      int found = 0;
      for (int j = 0; j < VEC_K; j++)
        found |= ids[(size_t)q * VEC_K + i] == peer.ids[(size_t)q * VEC_K + j];
      same = found;
    }
    differ += !same;
  }
  vec_result_head("fm-exact", "exact", d);
  printf(" qps=%.2f p50_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us=%.1f recall=%.4f queries_differing=%u"
         " rank_scores_off_by_more_than_1e-5=%u max_rank_score_diff=%.2e\n",
         t.qps, t.p50_us, t.p99_us, t.mean_us, cpu / d->nq * 1e6, vec_recall(&peer, ids, d->nq, VEC_K), differ,
         non_tie, max_score_diff);
  fflush(stdout);

  if (batch_nq > d->nq) batch_nq = d->nq;
  if (batch_nq > 0) {
    c0 = vec_thread_cpu();
    t0 = vec_now();
    fm_vec_topk_batch(d->base, d->n, d->dim, FM_METRIC_IP, d->queries, batch_nq, VEC_K, ids,
                      scores);
    double bs = vec_now() - t0;
    cpu = vec_thread_cpu() - c0;
    struct vec_ids sub = {batch_nq, VEC_K, peer.ids, peer.scores};
    vec_result_head("fm-exact", "batch", d);
    printf(" batch_nq=%u qps=%.2f wall_s=%.3f cpu_us=%.1f recall=%.4f\n", batch_nq, batch_nq / bs, bs,
           cpu / batch_nq * 1e6,
           vec_recall(&sub, ids, batch_nq, VEC_K));
  }
  free(ids);
  free(scores);
  free(lat);
  free(peer.ids);
  free(peer.scores);
  return 0;
}

static double loop_cpu; /* thread CPU seconds of the last search_all */

static double search_all(const struct fm_hnsw *h, const struct vec_data *d, size_t ef,
                         uint32_t *ids, double *lat) {
  uint64_t labels[VEC_K];
  float sc[VEC_K];
  double c0 = vec_thread_cpu(), t0 = vec_now();
  for (uint32_t q = 0; q < d->nq; q++) {
    double a = vec_now();
    size_t got = fm_hnsw_search(h, d->queries + (size_t)q * d->dim, VEC_K, ef, NULL, NULL, labels,
                                sc);
    lat[q] = vec_now() - a;
    for (size_t i = 0; i < VEC_K; i++)
      ids[(size_t)q * VEC_K + i] = i < got ? (uint32_t)labels[i] : UINT32_MAX;
  }
  loop_cpu = vec_thread_cpu() - c0;
  return vec_now() - t0;
}

static int run_hnsw(const struct vec_data *d, const struct vec_ids *gt, size_t M, size_t efc,
                    const char *ef_list, const char *save, int quantize) {
  const char *sys = quantize ? "fm-hnsw-q8" : "fm-hnsw";
  struct fm_hnsw_params p = {.M = M, .ef_construction = efc, .ef_search = 64,
                             .quantize = quantize, .seed = 0};
  struct fm_err err = {0};
  struct fm_hnsw *h = NULL;
  uint32_t *ids = malloc((size_t)d->nq * VEC_K * sizeof *ids);
  double *lat = malloc(d->nq * sizeof *lat);
  size_t efs[64], nef = 0;
  if (!ids || !lat) vec_die("out of memory");
  for (const char *s = ef_list; *s && nef < 64;) {
    char *end;
    efs[nef++] = strtoul(s, &end, 10);
    s = *end == ',' ? end + 1 : end;
  }

  long rss0 = vec_status_kib("VmRSS");
  double bc0 = vec_proc_cpu(), t0 = vec_now();
  if (fm_hnsw_new(d->dim, FM_METRIC_IP, &p, &h, &err) != 0) {
    fprintf(stderr, "fm_hnsw_new: %s\n", err.msg);
    return 1;
  }
  for (uint64_t i = 0; i < d->n; i++)
    if (fm_hnsw_add(h, i, d->base + i * d->dim, &err) != 0) {
      fprintf(stderr, "fm_hnsw_add: %s\n", err.msg);
      return 1;
    }
  double build_s = vec_now() - t0, build_cpu = vec_proc_cpu() - bc0;
  vec_result_head(sys, "build", d);
  printf(" M=%zu efc=%zu build_s=%.3f build_cpu_s=%.3f rss_before_kib=%ld hwm_kib=%ld index_bytes=%zu simd=%s\n", M,
         efc, build_s, build_cpu, rss0, vec_status_kib("VmHWM"), fm_hnsw_memory(h), fm_vec_simd());
  fflush(stdout);

  search_all(h, d, nef ? efs[0] : 64, ids, lat); /* warm-up, not reported */
  for (size_t e = 0; e < nef; e++) {
    struct vec_timing t;
    double wall = search_all(h, d, efs[e], ids, lat);
    vec_timing_from(lat, d->nq, wall, &t);
    vec_result_head(sys, "search", d);
    printf(" ef=%zu qps=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us=%.1f recall=%.4f\n",
           efs[e], t.qps, t.p50_us, t.p99_us, t.mean_us, loop_cpu / d->nq * 1e6,
           vec_recall(gt, ids, d->nq, VEC_K));
    fflush(stdout);
  }

  size_t last_ef = nef ? efs[nef - 1] : 64;
  t0 = vec_now();
  if (fm_hnsw_save(h, save, &err) != 0) {
    fprintf(stderr, "fm_hnsw_save: %s\n", err.msg);
    return 1;
  }
  double save_s = vec_now() - t0;
  fm_hnsw_free(h);
  h = NULL;
  t0 = vec_now();
  if (fm_hnsw_load(save, &h, &err) != 0) {
    fprintf(stderr, "fm_hnsw_load: %s\n", err.msg);
    return 1;
  }
  double load_s = vec_now() - t0;
  search_all(h, d, last_ef, ids, lat);
  FILE *f = fopen(save, "rb");
  long bytes = -1;
  if (f) {
    fseek(f, 0, SEEK_END);
    bytes = ftell(f);
    fclose(f);
  }
  vec_result_head(sys, "persist", d);
  printf(" save_s=%.3f load_s=%.3f file_bytes=%ld ef=%zu recall_after_load=%.4f fsync=yes\n",
         save_s, load_s, bytes, last_ef, vec_recall(gt, ids, d->nq, VEC_K));
  fm_hnsw_free(h);
  remove(save);
  free(ids);
  free(lat);
  return 0;
}

int main(int argc, char **argv) {
  struct vec_data d;
  if (argc == 6 && strcmp(argv[1], "exact") == 0) {
    vec_load(argv[2], &d);
    return run_exact(&d, argv[3], argv[4], (uint32_t)strtoul(argv[5], NULL, 10));
  }
  if (argc == 9 && strcmp(argv[1], "hnsw") == 0) {
    struct vec_ids gt;
    vec_load(argv[2], &d);
    vec_ids_read(argv[3], &gt);
    return run_hnsw(&d, &gt, strtoul(argv[4], NULL, 10), strtoul(argv[5], NULL, 10), argv[6],
                    argv[7], atoi(argv[8]));
  }
  fprintf(stderr, "usage: vec_fm exact DATA OUT_IDS PEER_IDS BATCH_NQ\n"
                  "       vec_fm hnsw DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH QUANTIZE\n");
  return 2;
}
