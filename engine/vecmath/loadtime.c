/* loadtime.c: measures fm_hnsw_save and fm_hnsw_load on a large index (not part of the build).
 * The graph is built cheaply (M 8, efConstruction 8): load time depends on the bytes, and the
 * vectors are ~90% of them at dim 384 (a node's layer-0 links are 68 bytes here, 132 at M 16).
 *   cc -O2 -Iengine -Iengine/vecmath engine/vecmath/loadtime.c build-vec-rel/libfmcore.a -lm \
 *      -lpthread -o /tmp/loadtime && /tmp/loadtime 1000000 384 /tmp/idx.hnsw */
#include "vecmath.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: loadtime N DIM PATH\n");
    return 2;
  }
  size_t n = strtoull(argv[1], NULL, 10), dim = strtoull(argv[2], NULL, 10);
  struct fm_hnsw_params p = {.M = 8, .ef_construction = 8};
  struct fm_hnsw *h = NULL, *l = NULL;
  struct fm_err e;
  if (fm_hnsw_new(dim, FM_METRIC_IP, &p, &h, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
  float *v = malloc(dim * sizeof *v);
  uint64_t s = 42;
  double t0 = now();
  for (size_t i = 0; i < n; i++) {
    for (size_t d = 0; d < dim; d++) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      v[d] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
    if (fm_hnsw_add(h, i, v, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
  }
  printf("built %zu x %zu in %.1f s, memory %.0f MiB\n", n, dim, now() - t0,
         fm_hnsw_memory(h) / 1048576.0);
  t0 = now();
  if (fm_hnsw_save(h, argv[3], &e)) return fprintf(stderr, "%s\n", e.msg), 1;
  printf("save (write, fsync, rename, fsync dir): %.2f s\n", now() - t0);
  fm_hnsw_free(h);
  t0 = now();
  if (fm_hnsw_load(argv[3], &l, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
  printf("load (read, checksum, validate, label map): %.2f s, %zu vectors\n", now() - t0,
         fm_hnsw_count(l));
  uint64_t lab[10];
  float sc[10];
  printf("search after load: %zu results\n", fm_hnsw_search(l, v, 10, 0, NULL, NULL, lab, sc));
  fm_hnsw_free(l);
  free(v);
  unlink(argv[3]);
  return 0;
}
