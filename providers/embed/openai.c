/* openai.c: the C half of the OpenAI-compatible embedder: an /v1/embeddings answer turned into
 * normalised float32 vectors (embed.h). The request, batching, retries and the breaker are Lua
 * (lua/fm/embed.lua over fm.http). */
#include "embed.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int fm_embed_openai_parse(const char *body, size_t len, size_t n, size_t dim_expected,
                          float **out, size_t *dim, struct fm_err *err) {
  *out = NULL;
  *dim = 0;
  json_error_t jerr;
  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  float *m = NULL;
  unsigned char *seen = NULL;
  int rc = FM_E_PROTO;
  if (!root) {
    fm_err_set(err, FM_E_PROTO, "answer is not JSON: %s", jerr.text);
    goto done;
  }
  json_t *data = json_object_get(root, "data");
  if (!json_is_array(data)) {
    fm_err_set(err, FM_E_PROTO, "answer has no \"data\" array");
    goto done;
  }
  if (json_array_size(data) != n) {
    fm_err_set(err, FM_E_PROTO, "answer has %zu embeddings for %zu inputs",
               json_array_size(data), n);
    goto done;
  }
  seen = calloc(n ? n : 1, 1);
  if (!seen) {
    rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *item = json_array_get(data, i);
    json_t *emb = json_object_get(item, "embedding");
    json_t *jix = json_object_get(item, "index");
    if (!json_is_array(emb) || json_array_size(emb) == 0) {
      fm_err_set(err, FM_E_PROTO, "data[%zu] has no \"embedding\" array (base64 encoding is not "
                 "supported)", i);
      goto done;
    }
    size_t d = json_array_size(emb);
    if (d > FM_EMBED_DIM_MAX) {
      fm_err_set(err, FM_E_PROTO, "data[%zu]: %zu dimensions, more than %d", i, d,
                 FM_EMBED_DIM_MAX);
      goto done;
    }
    if (!m) {
      if (dim_expected && d != dim_expected) {
        rc = fm_err_set(err, FM_E_INVAL, "the model returns %zu dimensions, %zu expected", d,
                        dim_expected);
        goto done;
      }
      *dim = d;
      m = malloc(n * d * sizeof *m);
      if (!m) {
        rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
        goto done;
      }
    } else if (d != *dim) {
      fm_err_set(err, FM_E_PROTO, "data[%zu]: %zu dimensions, data[0] had %zu", i, d, *dim);
      goto done;
    }
    size_t at = i;
    if (jix) {
      if (!json_is_integer(jix) || json_integer_value(jix) < 0 ||
          (size_t)json_integer_value(jix) >= n) {
        fm_err_set(err, FM_E_PROTO, "data[%zu]: \"index\" out of range", i);
        goto done;
      }
      at = (size_t)json_integer_value(jix);
    }
    if (seen[at]) {
      fm_err_set(err, FM_E_PROTO, "data[%zu]: index %zu given twice", i, at);
      goto done;
    }
    seen[at] = 1;
    float *row = m + at * d;
    for (size_t j = 0; j < d; j++) {
      json_t *x = json_array_get(emb, j);
      if (!json_is_number(x) || !isfinite(json_number_value(x))) {
        fm_err_set(err, FM_E_PROTO, "data[%zu].embedding[%zu] is not a finite number", i, j);
        goto done;
      }
      row[j] = (float)json_number_value(x);
    }
    fm_embed_normalize(row, d);
  }
  *out = m;
  m = NULL;
  rc = 0;
done:
  free(m);
  free(seen);
  json_decref(root);
  if (rc) *dim = 0;
  return rc;
}
