// vec_hnswlib.cpp: the hnswlib peer of bench/vector (Debian libhnswlib-dev, header-only).
//   vec_hnswlib DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH
// Builds HierarchicalNSW<float> over InnerProductSpace (distance 1 - dot; the vectors are unit
// length) with one thread, adding the vectors in order with labels 0..n-1; then for each ef of
// EF_LIST (comma-separated) searches the nq queries one at a time (k = 10) and prints QPS,
// p50/p99 and recall@10 against GT; then saveIndex / loadIndex times and the recall of the
// loaded index at the last ef. One RESULT line per measurement (vec_common.h); the system name is
// "hnswlib", or $VEC_NAME (run.sh's AVX2-only build is "hnswlib-avx2").
#include "vec_common.h"

#include <hnswlib/hnswlib.h>

#include <string>
#include <vector>

static double loop_cpu; // thread CPU seconds of the last search_all

static double search_all(hnswlib::HierarchicalNSW<float> *h, const vec_data &d, size_t ef,
                         uint32_t *ids, double *lat) {
  h->setEf(ef);
  double c0 = vec_thread_cpu(), t0 = vec_now();
  for (uint32_t q = 0; q < d.nq; q++) {
    double a = vec_now();
    auto pq = h->searchKnn(d.queries + (size_t)q * d.dim, VEC_K);
    lat[q] = vec_now() - a;
    // the queue pops the worst first
    uint32_t *row = ids + (size_t)q * VEC_K;
    for (int i = VEC_K - 1; i >= 0; i--) {
      if (pq.empty()) {
        row[i] = UINT32_MAX;
        continue;
      }
      row[i] = (uint32_t)pq.top().second;
      pq.pop();
    }
  }
  loop_cpu = vec_thread_cpu() - c0;
  return vec_now() - t0;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: vec_hnswlib DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH\n");
    return 2;
  }
  vec_data d;
  vec_ids gt;
  vec_load(argv[1], &d);
  vec_ids_read(argv[2], &gt);
  size_t M = strtoul(argv[3], NULL, 10), efc = strtoul(argv[4], NULL, 10);
  std::vector<size_t> efs;
  for (char *p = argv[5]; *p;) {
    efs.push_back(strtoul(p, &p, 10));
    if (*p == ',') p++;
  }
  std::string save = argv[6];
  const char *name = getenv("VEC_NAME") ? getenv("VEC_NAME") : "hnswlib";

  long rss0 = vec_status_kib("VmRSS");
  hnswlib::InnerProductSpace space(d.dim);
  double bc0 = vec_proc_cpu(), t0 = vec_now();
  auto *h = new hnswlib::HierarchicalNSW<float>(&space, d.n, M, efc, 100);
  for (uint64_t i = 0; i < d.n; i++) h->addPoint(d.base + i * d.dim, (hnswlib::labeltype)i);
  double build_s = vec_now() - t0, build_cpu = vec_proc_cpu() - bc0;
  // what the index holds: level 0 (vectors, links, labels) plus the upper layers' links
  size_t upper = 0;
  for (size_t i = 0; i < h->cur_element_count; i++)
    if (h->element_levels_[i] > 0) upper += h->size_links_per_element_ * h->element_levels_[i];
  size_t index_bytes = h->max_elements_ * h->size_data_per_element_ + upper +
                       h->max_elements_ * sizeof(void *);
  vec_result_head(name, "build", &d);
  printf(" M=%zu efc=%zu build_s=%.3f build_cpu_s=%.3f rss_before_kib=%ld hwm_kib=%ld"
         " index_bytes=%zu\n", M, efc, build_s, build_cpu, rss0, vec_status_kib("VmHWM"), index_bytes);
  fflush(stdout);

  std::vector<uint32_t> ids((size_t)d.nq * VEC_K);
  std::vector<double> lat(d.nq);
  search_all(h, d, efs.empty() ? 64 : efs[0], ids.data(), lat.data()); // warm-up, not reported
  for (size_t ef : efs) {
    vec_timing t;
    double wall = search_all(h, d, ef, ids.data(), lat.data());
    double rec = vec_recall(&gt, ids.data(), d.nq, VEC_K);
    vec_timing_from(lat.data(), d.nq, wall, &t);
    vec_result_head(name, "search", &d);
    printf(" ef=%zu qps=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us=%.1f recall=%.4f\n", ef,
           t.qps, t.p50_us, t.p99_us, t.mean_us, loop_cpu / d.nq * 1e6, rec);
    fflush(stdout);
  }

  size_t last_ef = efs.empty() ? 64 : efs.back();
  t0 = vec_now();
  h->saveIndex(save);
  double save_s = vec_now() - t0;
  delete h;
  t0 = vec_now();
  h = new hnswlib::HierarchicalNSW<float>(&space, save);
  double load_s = vec_now() - t0;
  double wall = search_all(h, d, last_ef, ids.data(), lat.data());
  (void)wall;
  FILE *f = fopen(save.c_str(), "rb");
  long bytes = -1;
  if (f) {
    fseek(f, 0, SEEK_END);
    bytes = ftell(f);
    fclose(f);
  }
  vec_result_head(name, "persist", &d);
  printf(" save_s=%.3f load_s=%.3f file_bytes=%ld ef=%zu recall_after_load=%.4f fsync=no\n",
         save_s, load_s, bytes, last_ef, vec_recall(&gt, ids.data(), d.nq, VEC_K));
  delete h;
  remove(save.c_str());
  free(d.base);
  free(d.queries);
  return 0;
}
