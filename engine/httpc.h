/* httpc.h: outbound HTTP on libcurl, for providers and for Lua (fm.http). Thread-safe: each call
 * uses its own easy handle. TLS peer and host verification are always on. */
#ifndef FM_HTTPC_H
#define FM_HTTPC_H

#include "buf.h"
#include "err.h"

#include <stddef.h>

struct fm_httpc_req {
  const char *method;          /* "GET" when NULL */
  const char *url;             /* http:// or https:// only */
  const char *const *headers;  /* "Name: value" strings, may be NULL */
  size_t nheaders;
  const char *body;            /* may be NULL */
  size_t body_len;
  double timeout_s;            /* whole request; 30 when <= 0 */
  double connect_timeout_s;    /* 10 when <= 0 */
  size_t max_body;             /* response cap; 16 MiB when 0 */
};

struct fm_httpc_res {
  long status;
  struct fm_buf headers; /* raw header block of the final response, "Name: value\r\n" lines */
  struct fm_buf body;
};

/* Calls curl_global_init once; call from main before threads start. */
int fm_httpc_global_init(struct fm_err *err);
void fm_httpc_global_cleanup(void);

/* Performs one request. On success fills res (caller frees with fm_httpc_res_free) and returns 0.
 * Failures of the world return FM_E_CONNECT, FM_E_TIMEOUT, FM_E_TOOBIG, FM_E_IO or FM_E_INVAL with
 * err set; res is freed then. */
int fm_httpc_request(const struct fm_httpc_req *req, struct fm_httpc_res *res, struct fm_err *err);
void fm_httpc_res_free(struct fm_httpc_res *res);

/* Writes the URL's "host:port" (lower-case host, the scheme's port when none is given, IPv6 in
 * brackets) to out: the default circuit-breaker name of a dependency (engine/breaker.h).
 * Returns 0, or FM_E_INVAL for a URL that is not http(s) or that libcurl cannot parse, or a
 * result that does not fit. */
int fm_httpc_url_hostport(const char *url, char *out, size_t outsz);

#endif
