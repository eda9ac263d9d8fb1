/* gen_vectors.c: writes the data file of bench/vector (format in vec_common.h): n base vectors and
 * nq queries of dim float32 each, every coordinate drawn from N(0,1) (xoshiro256** seeded by
 * splitmix64(seed), Box-Muller in double), each row scaled to unit length. The base vectors come
 * first, then the queries, from one stream: the same arguments give the same file.
 *
 * DIST "normal": every coordinate N(0,1), then normalised: points spread uniformly over the
 *   sphere, no neighbourhood structure (the data; the hardest case for a graph index:
 *   the 10 nearest of a query are barely nearer than any other point).
 * DIST "latentR" (e.g. latent32): x = A z + 0.25 e, normalised, with A a fixed dim x R matrix of
 *   N(0, 1/R) entries (drawn first from the stream), z ~ N(0, I_R), e ~ N(0, I_dim): points near an
 *   R-dimensional subspace, as text embeddings are (their intrinsic dimension is far below 384).
 *
 *   gen_vectors N NQ DIM SEED DIST OUT */
#include "vec_common.h"

#include <math.h>

static uint64_t s[4];

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(void) {
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

static double next_unit(void) { return ((double)(next_u64() >> 11) + 0.5) * 0x1.0p-53; }

static void seed_all(uint64_t seed) {
  for (int i = 0; i < 4; i++) {
    uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    s[i] = z ^ (z >> 31);
  }
}

/* n standard normal deviates into v (Box-Muller; v has room for n + 1) */
static void normals(double *v, uint32_t n) {
  for (uint32_t i = 0; i < n; i += 2) {
    double u1 = next_unit(), u2 = next_unit(), m = sqrt(-2.0 * log(u1));
    v[i] = m * cos(2 * M_PI * u2);
    v[i + 1] = m * sin(2 * M_PI * u2);
  }
}

/* latent: A is dim x r (row-major), NULL for "normal" */
static void write_rows(FILE *f, uint64_t rows, uint32_t dim, const double *A, uint32_t r) {
  double *v = malloc(sizeof(double) * (dim + 1)), *z = malloc(sizeof(double) * (r + 1));
  float *out = malloc(sizeof(float) * dim);
  if (!v || !z || !out) vec_die("out of memory");
  for (uint64_t row = 0; row < rows; row++) {
    double norm = 0;
    normals(v, dim);
    if (A) {
      normals(z, r);
      for (uint32_t i = 0; i < dim; i++) {
        double s = 0;
        for (uint32_t j = 0; j < r; j++) s += A[(size_t)i * r + j] * z[j];
        v[i] = s + 0.25 * v[i];
      }
    }
    for (uint32_t i = 0; i < dim; i++) norm += v[i] * v[i];
    norm = sqrt(norm);
    for (uint32_t i = 0; i < dim; i++) out[i] = (float)(v[i] / norm);
    if (fwrite(out, sizeof(float), dim, f) != dim) vec_die("write");
  }
  free(v);
  free(z);
  free(out);
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: gen_vectors N NQ DIM SEED normal|latentR OUT\n");
    return 2;
  }
  uint64_t n = strtoull(argv[1], NULL, 10), seed = strtoull(argv[4], NULL, 10);
  uint32_t nq = (uint32_t)strtoul(argv[2], NULL, 10), dim = (uint32_t)strtoul(argv[3], NULL, 10);
  if (n == 0 || nq == 0 || dim == 0 || n > UINT32_MAX) {
    fprintf(stderr, "gen_vectors: N, NQ, DIM must be positive (N < 2^32)\n");
    return 2;
  }
  uint32_t r = 0;
  double *A = NULL;
  if (strncmp(argv[5], "latent", 6) == 0) {
    r = (uint32_t)strtoul(argv[5] + 6, NULL, 10);
    if (r == 0 || r > dim) {
      fprintf(stderr, "gen_vectors: latentR needs 0 < R <= DIM\n");
      return 2;
    }
  } else if (strcmp(argv[5], "normal") != 0) {
    fprintf(stderr, "gen_vectors: DIST is normal or latentR\n");
    return 2;
  }
  FILE *f = fopen(argv[6], "wb");
  if (!f) vec_die(argv[6]);
  seed_all(seed);
  if (r) {
    A = malloc(sizeof(double) * ((size_t)dim * r + 1));
    if (!A) vec_die("out of memory");
    normals(A, dim * r);
    for (size_t i = 0; i < (size_t)dim * r; i++) A[i] /= sqrt((double)r);
  }
  if (fwrite("FMVEC01", 1, 8, f) != 8 || fwrite(&dim, 4, 1, f) != 1 || fwrite(&nq, 4, 1, f) != 1 ||
      fwrite(&n, 8, 1, f) != 1 || fwrite(&seed, 8, 1, f) != 1)
    vec_die("write");
  write_rows(f, n, dim, A, r);
  write_rows(f, nq, dim, A, r);
  free(A);
  if (fclose(f) != 0) vec_die("close");
  return 0;
}
