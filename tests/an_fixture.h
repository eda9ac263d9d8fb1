/* an_fixture.h: reading evidence fixtures (spec/fixtures/evidence/) for the analysis module
 * tests, and splitting text into lines the way the driver does (no "\n", no trailing "\r", cut
 * at FM_AN_MAX_LINE). Header-only: each test is one translation unit. */
#ifndef FM_TEST_AN_FIXTURE_H
#define FM_TEST_AN_FIXTURE_H

#include "analysis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fixture's path, found from this header's own path (the tests run from the build dir). */
static inline const char *an_fixture_path(const char *name) {
  static char path[1024];
  const char *f = __FILE__;
  const char *t = strstr(f, "tests/an_fixture.h");
  size_t dir = t ? (size_t)(t - f) : 0;
  snprintf(path, sizeof path, "%.*sspec/fixtures/evidence/%s", (int)dir, f, name);
  return path;
}

/* The whole fixture, NUL-terminated (caller frees), or NULL with a message. */
static inline char *an_fixture_slurp(const char *name, size_t *len) {
  FILE *fp = fopen(an_fixture_path(name), "rb");
  *len = 0;
  if (!fp) {
    fprintf(stderr, "cannot open %s\n", an_fixture_path(name));
    return NULL;
  }
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (!p) {
    fclose(fp);
    return NULL;
  }
  *len = fread(p, 1, (size_t)n, fp);
  p[*len] = '\0';
  fclose(fp);
  return p;
}

/* The lines of p[0..n) (pointing into p; caller frees the array). */
static inline struct fm_an_line *an_split(const char *p, size_t n, size_t *count) {
  size_t cap = 16, k = 0, s = 0;
  struct fm_an_line *l = malloc(cap * sizeof *l);
  for (size_t i = 0; l && i <= n; i++) {
    if (i < n && p[i] != '\n') continue;
    if (i == n && s == n) break;
    size_t len = i - s;
    if (len && p[s + len - 1] == '\r') len--;
    if (k == cap) {
      struct fm_an_line *nl = realloc(l, (cap *= 2) * sizeof *l);
      if (!nl) {
        free(l);
        l = NULL;
        break;
      }
      l = nl;
    }
    l[k].p = p + s;
    l[k].truncated = len > FM_AN_MAX_LINE;
    l[k].len = len > FM_AN_MAX_LINE ? FM_AN_MAX_LINE : len;
    l[k].no = k + 1;
    k++;
    s = i + 1;
  }
  *count = l ? k : 0;
  return l;
}

/* Feeds every line of a fixture to line(state, l). Returns 0, or -1 when it cannot be read. */
static inline int an_feed_fixture(const char *name, void (*line)(void *, const struct fm_an_line *),
                                  void *state) {
  size_t n, k;
  char *p = an_fixture_slurp(name, &n);
  if (!p) return -1;
  struct fm_an_line *l = an_split(p, n, &k);
  for (size_t i = 0; i < k; i++) line(state, &l[i]);
  free(l);
  free(p);
  return l || n == 0 ? 0 : -1;
}

#endif
