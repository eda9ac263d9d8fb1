/* routes.h: the route table C needs before Lua runs: body-size limits by method and path pattern.
 * Built once from the Lua router at start; read-only afterwards, so lookups are thread-safe. */
#ifndef FM_ROUTES_H
#define FM_ROUTES_H

#include "err.h"

#include <stddef.h>

struct fm_routes;

/* Creates an empty table whose unmatched limit is default_max_body. Returns NULL on OOM. */
struct fm_routes *fm_routes_new(size_t default_max_body);
/* Adds a route: method ("GET", "*" for any) and pattern ("/api/v1/cases/{case_id}/turns"). */
int fm_routes_add(struct fm_routes *r, const char *method, const char *pattern, size_t max_body,
                  struct fm_err *err);
/* Finds the body limit and the matched pattern for a request. `pattern` may be NULL; when no
 * route matches, it gets NULL and the default limit is returned. */
size_t fm_routes_max_body(const struct fm_routes *r, const char *method, const char *path,
                          const char **pattern);
/* Frees the table; NULL is a no-op. */
void fm_routes_free(struct fm_routes *r);

#endif
