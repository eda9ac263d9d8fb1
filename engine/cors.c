#include "cors.h"

#include "err.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static char **g_origins;
static size_t g_n;
static int g_any;

void fm_cors_reset(void) {
  for (size_t i = 0; i < g_n; i++) free(g_origins[i]);
  free(g_origins);
  g_origins = NULL;
  g_n = 0;
  g_any = 0;
}

int fm_cors_configure(const char *const *origins, size_t n) {
  fm_cors_reset();
  g_origins = calloc(n ? n : 1, sizeof *g_origins);
  if (!g_origins) return FM_E_NOMEM;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(origins[i], "*") == 0) {
      g_any = 1;
      continue;
    }
    char *o = strdup(origins[i]);
    if (!o) return FM_E_NOMEM;
    size_t len = strlen(o);
    while (len > 0 && o[len - 1] == '/') o[--len] = '\0';
    g_origins[g_n++] = o;
  }
  return 0;
}

/* scheme://id where id is [A-Za-z0-9_-]+ */
static int extension_origin(const char *o, const char *scheme) {
  size_t sl = strlen(scheme);
  if (strncmp(o, scheme, sl) != 0 || !o[sl]) return 0;
  for (const char *p = o + sl; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') return 0;
  return 1;
}

int fm_cors_allowed(const char *origin) {
  if (!origin || !*origin || strlen(origin) > 256) return 0;
  for (const char *p = origin; *p; p++)
    if ((unsigned char)*p <= ' ' || *p == 0x7f) return 0;
  if (g_any) return 1;
  if (extension_origin(origin, "chrome-extension://") || extension_origin(origin, "moz-extension://"))
    return 1;
  for (size_t i = 0; i < g_n; i++)
    if (strcmp(g_origins[i], origin) == 0) return 1;
  return 0;
}

const char *fm_cors_expose_headers(void) {
  return "X-Request-Id, X-Total-Count, X-RateLimit-Limit, X-RateLimit-Remaining, "
         "X-RateLimit-Reset, Retry-After, x-error-code, X-Idempotency-Replayed, x-title-source";
}
