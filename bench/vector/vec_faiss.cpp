// vec_faiss.cpp: the FAISS peer of bench/vector (Debian libfaiss-dev, static libfaiss.a, BLAS from
// libblas3 unless the system's libblas.so.3 alternative points elsewhere). One OpenMP thread.
//   vec_faiss flat DATA OUT_IDS BATCH_NQ
//     IndexFlatIP: add (timed as "build"), the nq queries one at a time (search(1, ...), k = 10),
//     then the first BATCH_NQ queries in one search() call (0: skipped). Writes the exact top-10
//     of every query (the ground truth) to OUT_IDS.
//   vec_faiss hnsw DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH
//     IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT): add, then for each efSearch of EF_LIST the nq
//     queries one at a time; write_index / read_index times.
// One RESULT line per measurement (vec_common.h).
#include "vec_common.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>
#include <omp.h>

#include <memory>

typedef faiss::Index::idx_t fidx;
#include <vector>

static void to_u32(const fidx *in, uint32_t *out, size_t m) {
  for (size_t i = 0; i < m; i++) out[i] = in[i] < 0 ? UINT32_MAX : (uint32_t)in[i];
}

static double loop_cpu; // thread CPU seconds of the last search_all

static double search_all(faiss::Index *ix, const vec_data &d, uint32_t *ids, float *scores,
                         double *lat) {
  fidx I[VEC_K];
  float D[VEC_K];
  double c0 = vec_thread_cpu(), t0 = vec_now();
  for (uint32_t q = 0; q < d.nq; q++) {
    double a = vec_now();
    ix->search(1, d.queries + (size_t)q * d.dim, VEC_K, D, I);
    lat[q] = vec_now() - a;
    to_u32(I, ids + (size_t)q * VEC_K, VEC_K);
    if (scores) memcpy(scores + (size_t)q * VEC_K, D, sizeof D);
  }
  loop_cpu = vec_thread_cpu() - c0;
  return vec_now() - t0;
}

static int run_flat(const vec_data &d, const char *out_ids, uint32_t batch_nq) {
  long rss0 = vec_status_kib("VmRSS");
  double t0 = vec_now();
  faiss::IndexFlatIP ix(d.dim);
  ix.add((fidx)d.n, d.base);
  double build_s = vec_now() - t0;
  vec_result_head("faiss-flat", "build", &d);
  printf(" build_s=%.3f rss_before_kib=%ld hwm_kib=%ld index_bytes=%zu\n", build_s, rss0,
         vec_status_kib("VmHWM"), (size_t)d.n * d.dim * sizeof(float));
  fflush(stdout);

  std::vector<uint32_t> ids((size_t)d.nq * VEC_K);
  std::vector<float> scores((size_t)d.nq * VEC_K);
  std::vector<double> lat(d.nq);
  {
    fidx I[VEC_K];
    float D[VEC_K];
    for (uint32_t q = 0; q < d.nq && q < 10; q++) ix.search(1, d.queries, VEC_K, D, I); // warm-up
  }
  double wall = search_all(&ix, d, ids.data(), scores.data(), lat.data());
  vec_timing t;
  vec_timing_from(lat.data(), d.nq, wall, &t);
  vec_result_head("faiss-flat", "exact", &d);
  printf(" qps=%.2f p50_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us=%.1f recall=1.0000\n", t.qps,
         t.p50_us, t.p99_us, t.mean_us, loop_cpu / d.nq * 1e6);
  fflush(stdout);
  vec_ids_write(out_ids, d.nq, VEC_K, ids.data(), scores.data());

  if (batch_nq > d.nq) batch_nq = d.nq;
  if (batch_nq > 0) {
    std::vector<fidx> I((size_t)batch_nq * VEC_K);
    std::vector<float> D((size_t)batch_nq * VEC_K);
    std::vector<uint32_t> bids((size_t)batch_nq * VEC_K);
    double c0 = vec_thread_cpu();
    t0 = vec_now();
    ix.search(batch_nq, d.queries, VEC_K, D.data(), I.data());
    double bs = vec_now() - t0, cpu = vec_thread_cpu() - c0;
    to_u32(I.data(), bids.data(), bids.size());
    vec_ids sub = {batch_nq, VEC_K, ids.data(), scores.data()};
    vec_result_head("faiss-flat", "batch", &d);
    printf(" batch_nq=%u qps=%.2f wall_s=%.3f cpu_us=%.1f recall=%.4f blas_threshold=%d\n", batch_nq,
           batch_nq / bs, bs, cpu / batch_nq * 1e6, vec_recall(&sub, bids.data(), batch_nq, VEC_K),
           faiss::distance_compute_blas_threshold);
  }
  return 0;
}

static int run_hnsw(const vec_data &d, const vec_ids &gt, size_t M, size_t efc,
                    const std::vector<int> &efs, const char *save) {
  long rss0 = vec_status_kib("VmRSS");
  double bc0 = vec_proc_cpu(), t0 = vec_now();
  auto ix = std::make_unique<faiss::IndexHNSWFlat>((int)d.dim, (int)M, faiss::METRIC_INNER_PRODUCT);
  ix->hnsw.efConstruction = (int)efc;
  ix->add((fidx)d.n, d.base);
  double build_s = vec_now() - t0, build_cpu = vec_proc_cpu() - bc0;
  size_t index_bytes = (size_t)d.n * d.dim * sizeof(float) +
                       ix->hnsw.neighbors.size() * sizeof(faiss::HNSW::storage_idx_t) +
                       ix->hnsw.offsets.size() * sizeof(size_t) + ix->hnsw.levels.size() * sizeof(int);
  vec_result_head("faiss-hnsw", "build", &d);
  printf(" M=%zu efc=%zu build_s=%.3f build_cpu_s=%.3f rss_before_kib=%ld hwm_kib=%ld"
         " index_bytes=%zu\n", M, efc, build_s, build_cpu, rss0, vec_status_kib("VmHWM"), index_bytes);
  fflush(stdout);

  std::vector<uint32_t> ids((size_t)d.nq * VEC_K);
  std::vector<double> lat(d.nq);
  ix->hnsw.efSearch = efs.empty() ? 64 : efs[0];
  search_all(ix.get(), d, ids.data(), NULL, lat.data()); // warm-up, not reported
  for (int ef : efs) {
    ix->hnsw.efSearch = ef;
    double wall = search_all(ix.get(), d, ids.data(), NULL, lat.data());
    vec_timing t;
    vec_timing_from(lat.data(), d.nq, wall, &t);
    vec_result_head("faiss-hnsw", "search", &d);
    printf(" ef=%d qps=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us=%.1f recall=%.4f\n", ef,
           t.qps, t.p50_us, t.p99_us, t.mean_us, loop_cpu / d.nq * 1e6, vec_recall(&gt, ids.data(), d.nq, VEC_K));
    fflush(stdout);
  }

  int last_ef = efs.empty() ? 64 : efs.back();
  t0 = vec_now();
  faiss::write_index(ix.get(), save);
  double save_s = vec_now() - t0;
  ix.reset();
  t0 = vec_now();
  std::unique_ptr<faiss::Index> loaded(faiss::read_index(save));
  double load_s = vec_now() - t0;
  dynamic_cast<faiss::IndexHNSW *>(loaded.get())->hnsw.efSearch = last_ef;
  search_all(loaded.get(), d, ids.data(), NULL, lat.data());
  FILE *f = fopen(save, "rb");
  long bytes = -1;
  if (f) {
    fseek(f, 0, SEEK_END);
    bytes = ftell(f);
    fclose(f);
  }
  vec_result_head("faiss-hnsw", "persist", &d);
  printf(" save_s=%.3f load_s=%.3f file_bytes=%ld ef=%d recall_after_load=%.4f fsync=no\n", save_s,
         load_s, bytes, last_ef, vec_recall(&gt, ids.data(), d.nq, VEC_K));
  remove(save);
  return 0;
}

int main(int argc, char **argv) {
  omp_set_num_threads(1);
  vec_data d;
  if (argc == 5 && strcmp(argv[1], "flat") == 0) {
    vec_load(argv[2], &d);
    return run_flat(d, argv[3], (uint32_t)strtoul(argv[4], NULL, 10));
  }
  if (argc == 8 && strcmp(argv[1], "hnsw") == 0) {
    vec_ids gt;
    vec_load(argv[2], &d);
    vec_ids_read(argv[3], &gt);
    std::vector<int> efs;
    for (char *p = argv[6]; *p;) {
      efs.push_back((int)strtol(p, &p, 10));
      if (*p == ',') p++;
    }
    return run_hnsw(d, gt, strtoul(argv[4], NULL, 10), strtoul(argv[5], NULL, 10), efs, argv[7]);
  }
  fprintf(stderr, "usage: vec_faiss flat DATA OUT_IDS BATCH_NQ\n"
                  "       vec_faiss hnsw DATA GT M EF_CONSTRUCTION EF_LIST SAVE_PATH\n");
  return 2;
}
