#include "routes.h"

#include <stdlib.h>
#include <string.h>

struct route {
  char method[16];
  char *pattern;
  size_t max_body;
  int has_params;
};

struct fm_routes {
  struct route *v;
  size_t n, cap;
  size_t default_max;
};

struct fm_routes *fm_routes_new(size_t default_max_body) {
  struct fm_routes *r = calloc(1, sizeof *r);
  if (r) r->default_max = default_max_body;
  return r;
}

int fm_routes_add(struct fm_routes *r, const char *method, const char *pattern, size_t max_body,
                  struct fm_err *err) {
  if (!method || strlen(method) >= sizeof r->v[0].method || !pattern || pattern[0] != '/')
    return fm_err_set(err, FM_E_INVAL, "route needs a method and a pattern starting with /");
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 32;
    struct route *v = realloc(r->v, cap * sizeof *v);
    if (!v) return fm_err_set(err, FM_E_NOMEM, "out of memory");
    r->v = v;
    r->cap = cap;
  }
  struct route *e = &r->v[r->n];
  strcpy(e->method, method);
  e->pattern = strdup(pattern);
  if (!e->pattern) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  e->max_body = max_body;
  e->has_params = strchr(pattern, '{') != NULL;
  r->n++;
  return 0;
}

/* Segment-wise match of the first plen bytes of path: "{x}" matches one non-empty segment,
 * anything else matches literally. */
static int match(const char *pat, const char *path, size_t plen) {
  const char *pend = path + plen;
  while (*pat && path < pend) {
    if (*pat != '/' || *path != '/') return 0;
    pat++;
    path++;
    const char *pe = strchr(pat, '/');
    const char *se = memchr(path, '/', (size_t)(pend - path));
    size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
    size_t sl = se ? (size_t)(se - path) : (size_t)(pend - path);
    if (pl >= 2 && pat[0] == '{' && pat[pl - 1] == '}') {
      if (sl == 0) return 0;
    } else if (pl != sl || memcmp(pat, path, pl) != 0) {
      return 0;
    }
    pat += pl;
    path += sl;
  }
  return *pat == '\0' && path == pend;
}

size_t fm_routes_max_body(const struct fm_routes *r, const char *method, const char *path,
                          const char **pattern) {
  if (pattern) *pattern = NULL;
  if (!r) return 0;
  /* The same rules as the Lua router: trailing slashes do not count, literal routes win. */
  size_t plen = strlen(path);
  while (plen > 1 && path[plen - 1] == '/') plen--;
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < r->n; i++) {
      const struct route *e = &r->v[i];
      if (e->has_params != pass) continue;
      if ((strcmp(e->method, "*") == 0 || strcmp(e->method, method) == 0) &&
          match(e->pattern, path, plen)) {
        if (pattern) *pattern = e->pattern;
        return e->max_body;
      }
    }
  }
  return r->default_max;
}

void fm_routes_free(struct fm_routes *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++) free(r->v[i].pattern);
  free(r->v);
  free(r);
}
