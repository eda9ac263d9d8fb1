/* analyze.h: the evidence-analysis driver: one streaming pass over a file, a descriptor or a
 * string, giving a JSON summary and a bounded text digest (docs/EVIDENCE.md). */
#ifndef FM_ANALYZE_H
#define FM_ANALYZE_H

#include "analysis.h"
#include "err.h"

#include <stdint.h>

/* Read size: the scanner and the line splitter see the input in blocks of this many bytes. */
#define FM_AN_BLOCK (1u << 20)

struct fm_an_opts {
  const char *filename;              /* a hint (extension) and shown in the summary; may be NULL */
  const char *content_type;          /* a hint; may be NULL */
  const struct fm_an_sigset *sigs;   /* NULL: the built-ins alone */
  int no_modules;                    /* 1: only the signature scan, secrets and encoding facts */
};

struct fm_an_result {
  char *summary_json;        /* the summary (valid UTF-8 JSON, secrets redacted); malloc'd */
  size_t summary_len;
  char *digest;              /* at most FM_AN_DIGEST_MAX bytes, valid UTF-8, NUL-terminated */
  size_t digest_len;
  json_t *summary;           /* the same summary as a jansson object (one reference) */
  const char *source_type;   /* static strings */
  const char *detailed_type;
  const char *compressed;    /* "gzip", ... or NULL */
  double confidence;
  uint64_t bytes, lines;
  int binary;
};

/* Analyzes everything read from fd until EOF (the descriptor stays open). Never holds more than
 * a block or two of the input in memory. Returns 0 and fills r (free it with
 * fm_an_result_free), or FM_E_IO / FM_E_NOMEM / FM_E_INVAL (Hyperscan unusable) with err set.
 * Thread-safe: analyses may run on many threads at once. */
int fm_an_analyze_fd(int fd, const struct fm_an_opts *o, struct fm_an_result *r,
                     struct fm_err *err);
/* The same for a file by path (FM_E_IO when it cannot be opened). */
int fm_an_analyze_file(const char *path, const struct fm_an_opts *o, struct fm_an_result *r,
                       struct fm_err *err);
/* The same for p[0..n) in memory (not copied). */
int fm_an_analyze_mem(const char *p, size_t n, const struct fm_an_opts *o,
                      struct fm_an_result *r, struct fm_err *err);
/* Frees what a result holds; r may be zeroed or NULL. */
void fm_an_result_free(struct fm_an_result *r);

#endif
