/* cors.h: the CORS policy, applied by C to every response (including the ones C answers itself:
 * 413, 414, 431, budget and memory errors, probes) and consulted by the Lua preflight middleware.
 * Allowed: chrome-extension:// and moz-extension:// origins, and the configured ones ("*": any).
 * Configure once before serving; lookups are then read-only and thread-safe. */
#ifndef FM_CORS_H
#define FM_CORS_H

#include <stddef.h>

/* Replaces the configured origins (copies them). Returns 0 or FM_E_NOMEM. */
int fm_cors_configure(const char *const *origins, size_t n);
/* True when origin may read responses. NULL or malformed origins are never allowed. */
int fm_cors_allowed(const char *origin);
/* The response headers exposed to scripts (Access-Control-Expose-Headers). */
const char *fm_cors_expose_headers(void);
/* Frees the configuration. */
void fm_cors_reset(void);

#endif
