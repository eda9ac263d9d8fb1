/* vecmath.h: vector math for the knowledge base (issue 7). float32 kernels with SIMD (AVX2/FMA
 * chosen at run time, a portable fallback), int8 scalar quantization with float rescoring, exact
 * top-k, and an HNSW index with deletes, one writer and concurrent readers, and crash-safe
 * persistence. Plain C, no Lua: engine/vecmath/l_vecmath.c is the binding (fm.vecmath).
 *
 * Scores: higher is better for every metric. IP: the dot product; COSINE: the cosine (vectors
 * are normalised on insert and queries on search); L2: the negated squared distance. */
#ifndef FM_VECMATH_H
#define FM_VECMATH_H

#include "err.h"

#include <stddef.h>
#include <stdint.h>

/* err.h has no "not found" code yet. A macro (not an enum member) so that err.h may gain one
 * later without a clash; fm_err_name() reports it as "error" until then. */
#ifndef FM_E_NOTFOUND
#define FM_E_NOTFOUND (-9)
#endif

/* ---- kernels (dispatch chosen once, at first use) ------------------------------------------ */
float fm_vec_dot(const float *a, const float *b, size_t n);
float fm_vec_l2sq(const float *a, const float *b, size_t n);
float fm_vec_cosine(const float *a, const float *b, size_t n);
/* Scales v to unit length (a zero vector stays zero). */
void fm_vec_normalize(float *v, size_t n);
/* "avx2+fma" or "portable": what the kernels run on this machine. */
const char *fm_vec_simd(void);
/* Forces the portable kernels (tests compare both); 0 restores the run-time choice. */
void fm_vec_force_portable(int on);

/* ---- int8 scalar quantization --------------------------------------------------------------- */
/* Symmetric per-vector quantization: out[i] = round(v[i] / scale), scale = max|v| / 127. */
void fm_vec_q8_encode(const float *v, size_t n, int8_t *out, float *scale);
/* Approximate dot product of two quantized vectors (int32 accumulation, SIMD when available). */
float fm_vec_q8_dot(const int8_t *a, float sa, const int8_t *b, float sb, size_t n);

/* ---- exact top-k over a row-major matrix ------------------------------------------------------ */
enum fm_metric { FM_METRIC_IP = 0, FM_METRIC_COSINE = 1, FM_METRIC_L2 = 2 };
/* The k best rows of base (count x dim) for q, best first: their row numbers in ids and scores in
 * scores (both of room k). Returns how many were written (min(k, count)). */
size_t fm_vec_topk(const float *base, size_t count, size_t dim, enum fm_metric metric,
                   const float *q, size_t k, uint32_t *ids, float *scores);
/* The same for nq queries at once (batched: better cache use); ids/scores are nq x k. */
void fm_vec_topk_batch(const float *base, size_t count, size_t dim, enum fm_metric metric,
                       const float *qs, size_t nq, size_t k, uint32_t *ids, float *scores);

/* ---- HNSW ----------------------------------------------------------------------------------- */
struct fm_hnsw_params {
  size_t M;               /* links per node (layer 0 has 2M); 0: 16 */
  size_t ef_construction; /* 0: 200 */
  size_t ef_search;       /* default ef of fm_hnsw_search when it gets 0; 0: 64 */
  int quantize;           /* 1: traverse on int8 codes, rescore the candidates in float32 */
  uint64_t seed;          /* level generator; 0: a fixed default (builds are reproducible) */
};

struct fm_hnsw;
/* Keep a label's vector passing? Called during search; return nonzero to keep it. */
typedef int (*fm_hnsw_filter)(uint64_t label, void *ud);

int fm_hnsw_new(size_t dim, enum fm_metric metric, const struct fm_hnsw_params *p,
                struct fm_hnsw **out, struct fm_err *err);
void fm_hnsw_free(struct fm_hnsw *h);
/* Adds a vector under label; a label already present is replaced (its old node deleted).
 * Takes the write lock. */
int fm_hnsw_add(struct fm_hnsw *h, uint64_t label, const float *v, struct fm_err *err);
/* Deletes label: 0, or FM_E_NOTFOUND. Deleted nodes are skipped by searches and their space is
 * reused by later adds. Takes the write lock. */
int fm_hnsw_delete(struct fm_hnsw *h, uint64_t label);
int fm_hnsw_contains(const struct fm_hnsw *h, uint64_t label);
/* The k best live labels for q (ef 0: the index's ef_search; ef is raised to k), best first;
 * filter may be NULL. Returns how many were written. Takes the read lock: searches run
 * concurrently with each other, and one add or delete at a time runs between them. */
size_t fm_hnsw_search(const struct fm_hnsw *h, const float *q, size_t k, size_t ef,
                      fm_hnsw_filter filter, void *ud, uint64_t *labels, float *scores);
/* Exact search over the live vectors (brute force with the SIMD kernels): recall tests and small
 * indexes. Same contract as fm_hnsw_search. */
size_t fm_hnsw_exact(const struct fm_hnsw *h, const float *q, size_t k, fm_hnsw_filter filter,
                     void *ud, uint64_t *labels, float *scores);
size_t fm_hnsw_count(const struct fm_hnsw *h); /* live vectors */
size_t fm_hnsw_dim(const struct fm_hnsw *h);
enum fm_metric fm_hnsw_metric(const struct fm_hnsw *h);
size_t fm_hnsw_memory(const struct fm_hnsw *h); /* bytes held */
/* Copies label's stored vector (normalised for COSINE) into out (dim floats): 0 or FM_E_NOTFOUND. */
int fm_hnsw_get(const struct fm_hnsw *h, uint64_t label, float *out);

/* Writes the whole index to path atomically (temp file, fsync, rename, fsync of the directory);
 * readers may search meanwhile. */
int fm_hnsw_save(struct fm_hnsw *h, const char *path, struct fm_err *err);
/* Loads an index written by fm_hnsw_save (checked: magic, version, sizes, checksum); one read of
 * the file, no rebuild, so a million vectors load in seconds. */
int fm_hnsw_load(const char *path, struct fm_hnsw **out, struct fm_err *err);

/* ---- additions (not used by the first consumers) ------------------------------------------- */
/* Like fm_hnsw_search, but when the index quantizes, quantize selects the traversal: 1 int8 codes
 * (the default of fm_hnsw_search), 0 float32 vectors. Measuring tests and benchmarks use it. */
size_t fm_hnsw_search_ex(const struct fm_hnsw *h, const float *q, size_t k, size_t ef,
                         int quantize, fm_hnsw_filter filter, void *ud, uint64_t *labels,
                         float *scores);
/* Slots held, live or deleted (deleted ones are reused by later adds). */
size_t fm_hnsw_slots(const struct fm_hnsw *h);

#endif
