/* vec_internal.h: what hnsw.c needs from vecmath.c beyond vecmath.h (not for other modules). */
#ifndef FM_VEC_INTERNAL_H
#define FM_VEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

typedef float (*fm_vec_f32_fn)(const float *a, const float *b, size_t n);
typedef int32_t (*fm_vec_i8_fn)(const int8_t *a, const int8_t *b, size_t n);

/* The kernels the current dispatch selects (resolved once per search, not per distance). */
fm_vec_f32_fn fm_vec_dot_fn(void);
fm_vec_f32_fn fm_vec_l2sq_fn(void);
fm_vec_i8_fn fm_vec_i8_dot_fn(void);

/* A 64-bit checksum computed incrementally over arbitrary chunks (xxhash64-like, 4 lanes). */
struct fm_vec_hash {
  uint64_t v[4];
  uint64_t total;
  unsigned char tail[32];
  size_t ntail;
};
void fm_vec_hash_init(struct fm_vec_hash *s, uint64_t seed);
void fm_vec_hash_update(struct fm_vec_hash *s, const void *p, size_t n);
uint64_t fm_vec_hash_final(const struct fm_vec_hash *s);

#endif
