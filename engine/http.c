#include "http.h"

#include "cors.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ST_NEW = 0, ST_BODY, ST_LOCAL, ST_DISPATCHED, ST_RESPOND };
enum { PP_OK = 0, PP_MALFORMED, PP_TOO_MANY, PP_IO };

#define MAX_PARTS 64

static struct MHD_Daemon *g_daemon;
static struct fm_http_config g_cfg;
static fm_http_dispatch_fn g_dispatch;
static void *g_dispatch_ud;
static atomic_int g_inflight;
static atomic_int g_ready;
/* The route table: looked up by I/O threads under the read lock, replaced by a reload. */
static pthread_rwlock_t g_routes_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct fm_routes *g_routes;

void fm_http_set_ready(int state) { atomic_store(&g_ready, state); }
int fm_http_ready(void) { return atomic_load(&g_ready); }
int fm_http_inflight(void) { return atomic_load(&g_inflight); }

/* ---- request record ------------------------------------------------------------------------ */

/* A key and its value share one allocation (the value follows the key's NUL). */
static void free_kvs(struct fm_kv *v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i].key);
  free(v);
}

static int push_kv(struct fm_kv **v, size_t *n, const char *k, const char *val, int lower) {
  if (*n == 0 || (*n >= 8 && (*n & (*n - 1)) == 0)) { /* capacity 8, then doubling */
    struct fm_kv *nv = realloc(*v, (*n ? *n * 2 : 8) * sizeof **v);
    if (!nv) return FM_E_NOMEM;
    *v = nv;
  }
  if (!val) val = "";
  size_t kl = strlen(k), vl = strlen(val);
  char *blk = malloc(kl + vl + 2);
  if (!blk) return FM_E_NOMEM;
  memcpy(blk, k, kl + 1);
  memcpy(blk + kl + 1, val, vl + 1);
  if (lower)
    for (char *p = blk; *p; p++) *p = (char)tolower((unsigned char)*p);
  (*v)[*n].key = blk;
  (*v)[*n].value = blk + kl + 1;
  (*n)++;
  return 0;
}

void fm_resp_stream_close(struct fm_resp_stream *s) {
  if (!s) return;
  if (s->fd >= 0) close(s->fd);
  else if (s->close) s->close(s->ud);
  s->fd = -1;
  s->read = NULL;
  s->close = NULL;
  s->ud = NULL;
}

static void free_request(struct fm_request *req) {
  if (!req) return;
  if (req->has_stream) { /* never handed to libmicrohttpd (an error replaced it, say) */
    fm_resp_stream_close(&req->resp_stream);
    req->has_stream = 0;
  }
  if (req->pp) MHD_destroy_post_processor(req->pp);
  for (size_t i = 0; i < req->nparts; i++) {
    struct fm_part *p = &req->parts[i];
    if (p->fd >= 0) close(p->fd);
    if (p->path) {
      if (unlink(p->path) != 0 && errno != ENOENT)
        fm_warn("cannot remove spooled upload %s: %s", p->path, strerror(errno));
      free(p->path);
    }
    free(p->name);
    free(p->filename);
    free(p->content_type);
    fm_buf_free(&p->mem);
  }
  free(req->parts);
  if (req->mhd_resp) MHD_destroy_response(req->mhd_resp);
  free(req->path);
  free_kvs(req->headers, req->nheaders);
  free_kvs(req->query, req->nquery);
  free_kvs(req->resp_headers, req->nresp_headers);
  fm_buf_free(&req->body);
  fm_buf_free(&req->resp_body);
  free(req);
}

int fm_request_add_header(struct fm_request *req, const char *name, const char *value) {
  return push_kv(&req->resp_headers, &req->nresp_headers, name, value, 0);
}

const char *fm_request_header(const struct fm_request *req, const char *lname) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].key, lname) == 0) return req->headers[i].value;
  return NULL;
}

/* ---- responses ----------------------------------------------------------------------------- */

/* CORS response headers for an allowed Origin, on every answer (Lua's or C's own), unless the
 * handler set them itself. */
static void add_cors(const struct fm_request *req, struct MHD_Response *r) {
  const char *origin = fm_request_header(req, "origin");
  if (!origin || !fm_cors_allowed(origin)) return;
  for (size_t i = 0; i < req->nresp_headers; i++)
    if (strcasecmp(req->resp_headers[i].key, "Access-Control-Allow-Origin") == 0) return;
  MHD_add_response_header(r, "Access-Control-Allow-Origin", origin);
  MHD_add_response_header(r, "Access-Control-Allow-Credentials", "true");
  MHD_add_response_header(r, "Access-Control-Expose-Headers", fm_cors_expose_headers());
  MHD_add_response_header(r, "Vary", "Origin");
}

void fm_http_park(void *conn) { MHD_suspend_connection(conn); }
void fm_http_unpark(void *conn) { MHD_resume_connection(conn); }

/* What libmicrohttpd's reader gets: the stream (a copy it owns) and its connection. */
struct stream_ctx {
  struct fm_resp_stream s; /* first: stream_free closes it */
  void *conn;
};

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  struct stream_ctx *c = cls;
  long n = c->s.read ? c->s.read(c->s.ud, pos, buf, max, c->conn) : -1;
  if (n > 0) return (ssize_t)n;
  if (n == FM_RESP_PARKED) return 0; /* suspended: called again once unparked */
  return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls) {
  struct stream_ctx *c = cls;
  fm_resp_stream_close(&c->s);
  free(c);
}

/* A response over the request's stream, which belongs to libmicrohttpd from here on (closed
 * when the response is destroyed: after sending, or when the client or the daemon goes away). */
static struct MHD_Response *stream_response(struct fm_request *req) {
  struct fm_resp_stream s = req->resp_stream;
  req->has_stream = 0;
  memset(&req->resp_stream, 0, sizeof req->resp_stream);
  req->resp_stream.fd = -1;
  req->resp_body.len = s.size == FM_RESP_SIZE_UNKNOWN ? 0 : (size_t)s.size; /* access log */
  struct MHD_Response *r = NULL;
  if (s.fd >= 0) {
    r = MHD_create_response_from_fd64(s.size, s.fd);
    if (!r) fm_resp_stream_close(&s);
    return r;
  }
  struct stream_ctx *copy = malloc(sizeof *copy);
  if (!copy) {
    fm_resp_stream_close(&s);
    return NULL;
  }
  copy->s = s;
  copy->conn = req->conn;
  r = MHD_create_response_from_callback(s.size == FM_RESP_SIZE_UNKNOWN ? MHD_SIZE_UNKNOWN : s.size,
                                        64 * 1024, stream_read, copy, stream_free);
  if (!r) stream_free(copy);
  return r;
}

static struct MHD_Response *build_response(struct fm_request *req) {
  size_t len = 0;
  struct MHD_Response *r;
  if (req->has_stream) {
    fm_buf_free(&req->resp_body);
    r = stream_response(req);
    len = req->resp_body.len;
  } else {
    char *body = fm_buf_steal(&req->resp_body, &len);
    if (body && len) {
      r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
      if (!r) free(body);
    } else {
      free(body);
      r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
  }
  if (!r) return NULL;
  for (size_t i = 0; i < req->nresp_headers; i++) {
    const struct fm_kv *h = &req->resp_headers[i];
    if (MHD_add_response_header(r, h->key, h->value) != MHD_YES)
      fm_warn("dropped invalid response header %s", h->key);
  }
  MHD_add_response_header(r, "X-Request-Id", req->request_id);
  add_cors(req, r);
  req->resp_body.len = len; /* remembered for the access log; storage now belongs to MHD */
  return r;
}

/* Builds {"detail": msg, "request_id": id} with status on the request itself. */
static void set_error(struct fm_request *req, int status, const char *detail) {
  req->status = status;
  if (req->has_stream) {
    fm_resp_stream_close(&req->resp_stream);
    req->has_stream = 0;
  }
  int with_limit = status == 413;
  fm_buf_free(&req->resp_body);
  free_kvs(req->resp_headers, req->nresp_headers);
  req->resp_headers = NULL;
  req->nresp_headers = 0;
  fm_buf_adds(&req->resp_body, "{\"detail\":");
  fm_buf_add_json_str(&req->resp_body, detail, strlen(detail));
  fm_buf_adds(&req->resp_body, ",\"request_id\":");
  fm_buf_add_json_str(&req->resp_body, req->request_id, strlen(req->request_id));
  if (with_limit) fm_buf_printf(&req->resp_body, ",\"limit\":%zu", req->max_body);
  fm_buf_adds(&req->resp_body, "}");
  fm_request_add_header(req, "Content-Type", "application/json");
}

void fm_request_set_error(struct fm_request *req, int status, const char *detail) {
  set_error(req, status, detail);
}

static enum MHD_Result queue(struct MHD_Connection *conn, struct fm_request *req,
                             struct MHD_Response *r) {
  if (!r) return MHD_NO;
  enum MHD_Result rc = MHD_queue_response(conn, (unsigned)req->status, r);
  MHD_destroy_response(r);
  req->has_response = 1;
  return rc;
}

/* An error answered by the I/O thread before (or instead of) reading the body: the connection
 * closes afterwards because the rest of the request is not read. */
static enum MHD_Result reply_error(struct MHD_Connection *conn, struct fm_request *req, int status,
                                   const char *detail) {
  set_error(req, status, detail);
  fm_request_add_header(req, "Connection", "close");
  return queue(conn, req, build_response(req));
}

static enum MHD_Result reply_local(struct MHD_Connection *conn, struct fm_request *req) {
  int is_get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
  snprintf(req->resp_route, sizeof req->resp_route, "%s", req->path);
  if (strcmp(req->method, "OPTIONS") == 0) {
    req->status = 204;
    fm_request_add_header(req, "Allow", "GET, HEAD, OPTIONS");
    return queue(conn, req, build_response(req));
  }
  if (!is_get) {
    set_error(req, 405, "method not allowed");
    fm_request_add_header(req, "Allow", "GET, HEAD, OPTIONS");
    return queue(conn, req, build_response(req));
  }
  fm_request_add_header(req, "Content-Type", "application/json");
  fm_request_add_header(req, "Cache-Control", "no-store");
  if (strcmp(req->path, "/health/live") == 0) {
    req->status = 200;
    fm_buf_adds(&req->resp_body, "{\"status\":\"alive\"}");
  } else {
    int ready = fm_http_ready();
    static const char *const names[] = {"starting", "ready", "shutting_down"};
    req->status = ready == 1 ? 200 : 503;
    fm_buf_printf(&req->resp_body, "{\"status\":\"%s\"}", names[ready >= 0 && ready <= 2 ? ready : 0]);
  }
  return queue(conn, req, build_response(req));
}

void fm_http_finish(struct fm_request *req) {
  req->mhd_resp = build_response(req);
  req->state = ST_RESPOND;
  MHD_resume_connection(req->conn);
}

/* ---- request intake ------------------------------------------------------------------------ */

struct header_scan {
  struct fm_request *req;
  size_t bytes;
  int oom;
};

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value) {
  struct header_scan *s = cls;
  s->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
  if (s->bytes > g_cfg.max_header) return MHD_NO; /* stop; the size is reported as 431 */
  if (push_kv(&s->req->headers, &s->req->nheaders, key, value, 1)) s->oom = 1;
  return MHD_YES;
}

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
  struct header_scan *s = cls;
  if (push_kv(&s->req->query, &s->req->nquery, key, value, 0)) s->oom = 1;
  return MHD_YES;
}

static int valid_request_id(const char *s) {
  size_t n = 0;
  for (; s[n]; n++) {
    unsigned char c = (unsigned char)s[n];
    if (!(isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')) return 0;
  }
  return n >= 1 && n <= 128;
}

static void client_addr(struct MHD_Connection *conn, char *out, size_t outsz) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  snprintf(out, outsz, "unknown");
  if (!ci || !ci->client_addr) return;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)outsz);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
              (socklen_t)outsz);
}

static int spool_part(struct fm_part *p) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/upload-XXXXXX", g_cfg.tmp_dir) >= (int)sizeof path) return -1;
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  p->path = strdup(path);
  p->fd = fd;
  if (!p->path) return -1;
  size_t off = 0;
  while (off < p->mem.len) {
    ssize_t w = write(fd, p->mem.p + off, p->mem.len - off);
    if (w <= 0) return -1;
    off += (size_t)w;
  }
  fm_buf_free(&p->mem);
  return 0;
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size) {
  struct fm_request *req = cls;
  struct fm_part *p = req->nparts ? &req->parts[req->nparts - 1] : NULL;
  if (off == 0) { /* libmicrohttpd starts each part at offset 0 */
    if (req->nparts >= MAX_PARTS) {
      req->pp_error = PP_TOO_MANY;
      return MHD_NO;
    }
    struct fm_part *np = realloc(req->parts, (req->nparts + 1) * sizeof *np);
    if (!np) goto io;
    req->parts = np;
    p = &np[req->nparts++];
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->name = strdup(key ? key : "");
    p->filename = filename ? strdup(filename) : NULL;
    p->content_type = content_type ? strdup(content_type) : NULL;
    if (!p->name) goto io;
  }
  if (!p) goto io;
  if (size == 0) return MHD_YES;
  if (!p->path && p->mem.len + size > g_cfg.spool_threshold && spool_part(p) != 0) goto io;
  if (p->path) {
    size_t done = 0;
    while (done < size) {
      ssize_t w = write(p->fd, data + done, size - done);
      if (w <= 0) goto io;
      done += (size_t)w;
    }
  } else if (fm_buf_add(&p->mem, data, size)) {
    goto io;
  }
  p->size += size;
  return MHD_YES;
io:
  req->pp_error = PP_IO;
  return MHD_NO;
}

/* RFC 2046: boundary := 1*70 characters, optionally quoted in the header. */
static int valid_boundary(const char *ctype) {
  const char *b = strcasestr(ctype, "boundary=");
  if (!b) return 0;
  b += 9;
  size_t n;
  if (*b == '"') {
    const char *end = strchr(b + 1, '"');
    if (!end) return 0;
    n = (size_t)(end - b - 1);
  } else {
    n = strcspn(b, "; \t");
  }
  return n >= 1 && n <= 70;
}

static const char *method_label(const char *m) {
  static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(m, known[i]) == 0) return known[i];
  return "OTHER";
}

/* Called by libmicrohttpd with the request-target as sent, before it splits off the query: the
 * request record starts here so the URL limit covers the query string too. */
static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decoding of the path and the query (MHD's own, except that "%00" stays as it is): a
 * decoded NUL would cut the C string, and "/files/%00" would be routed as "/files/". */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s) {
  (void)cls;
  (void)conn;
  char *w = s;
  for (const char *r = s; *r;) {
    int hi, lo;
    if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 && (hi | lo) != 0) {
      *w++ = (char)(hi * 16 + lo);
      r += 3;
    } else {
      *w++ = *r++;
    }
  }
  *w = '\0';
  return (size_t)(w - s);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  struct fm_request *req = calloc(1, sizeof *req);
  if (!req) return NULL;
  req->raw_uri_len = uri ? strlen(uri) : 0;
  req->state = ST_NEW;
  req->t_start = fm_time_mono();
  atomic_fetch_add(&g_inflight, 1);
  return req;
}

static enum MHD_Result first_call(struct MHD_Connection *conn, struct fm_request *req,
                                  const char *url, const char *method) {
  struct header_scan scan = {req, 0, 0};
  const char *rid;
  const char *ctype;
  const char *clen;

  req->conn = conn;
  client_addr(conn, req->remote_addr, sizeof req->remote_addr);
  snprintf(req->method, sizeof req->method, "%s", strlen(method) < sizeof req->method ? method : "OTHER");
  req->path = strdup(url);
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, &scan);
  int too_many_headers = scan.bytes > g_cfg.max_header;
  MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, &scan);
  rid = fm_request_header(req, "x-request-id");
  if (rid && valid_request_id(rid)) snprintf(req->request_id, sizeof req->request_id, "%s", rid);
  else fm_fast_id_hex(req->request_id, sizeof req->request_id);
  if (!req->path || scan.oom) return reply_error(conn, req, 503, "server out of memory");
  if (strlen(url) > g_cfg.max_url || req->raw_uri_len > g_cfg.max_url)
    return reply_error(conn, req, 414, "request URL too long");
  if (too_many_headers) return reply_error(conn, req, 431, "request header fields too large");
  if (strcmp(req->method, "OTHER") == 0) return reply_error(conn, req, 400, "bad request method");

  const char *match_method = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
  {
    const char *pat = NULL;
    pthread_rwlock_rdlock(&g_routes_lock);
    req->max_body = fm_routes_max_body(g_routes, match_method, req->path, &pat);
    if (pat) { /* copied: the table may be replaced while the request runs */
      snprintf(req->route_pat, sizeof req->route_pat, "%s", pat);
      req->route = req->route_pat;
    }
    pthread_rwlock_unlock(&g_routes_lock);
  }
  clen = fm_request_header(req, "content-length");
  if (clen) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(clen, &end, 10);
    if (errno || *end || n > req->max_body) return reply_error(conn, req, 413, "request body too large");
  }
  if (strcmp(req->path, "/health/live") == 0 || strcmp(req->path, "/readiness") == 0) {
    req->state = ST_LOCAL;
    return MHD_YES;
  }
  /* Draining: requests that arrive on open keep-alive connections after shutdown began are not
   * dispatched (main waits for the in-flight count, which counts from the URI callback, so
   * nothing can slip in between its last check and the daemon's stop). */
  if (fm_http_ready() == 2) {
    set_error(req, 503, "shutting down");
    fm_request_add_header(req, "Connection", "close");
    fm_request_add_header(req, "Retry-After", "1");
    return queue(conn, req, build_response(req));
  }
  ctype = fm_request_header(req, "content-type");
  if (ctype && strncasecmp(ctype, "multipart/form-data", 19) == 0) {
    if (!valid_boundary(ctype))
      return reply_error(conn, req, 400, "multipart Content-Type needs a boundary of 1 to 70 characters");
    req->multipart = 1;
    req->pp = MHD_create_post_processor(conn, 16 * 1024, on_part, req);
    if (!req->pp) return reply_error(conn, req, 400, "malformed multipart Content-Type (no boundary)");
  }
  req->state = ST_BODY;
  return MHD_YES;
}

/* libmicrohttpd 0.9.75 accepts a response only before the body phase or after it: an error found
 * while the body streams in is remembered, the rest of the body is read and dropped, and the
 * error is answered at the end. A client that keeps sending past this allowance is cut off. */
static size_t drain_allowance(const struct fm_request *req) {
  size_t extra = req->max_body < (16u << 20) ? (16u << 20) : req->max_body;
  return req->max_body + extra;
}

static void defer_error(struct fm_request *req, int status, const char *detail) {
  if (!req->deferred_status) {
    req->deferred_status = status;
    req->deferred_detail = detail;
  }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls) {
  struct fm_request *req = *con_cls;
  if (!req) { /* the URI callback could not allocate */
    return MHD_NO;
  }
  if (req->state == ST_NEW) {
    req->state = ST_BODY;
    /* The response is never queued on this first call when all is well: libmicrohttpd 0.9.75
     * closes keep-alive connections whose response is queued before the body phase. */
    return first_call(conn, req, url, method);
  }
  if (req->has_response) {
    *size = 0; /* an early error was queued: discard whatever body still arrives */
    return MHD_YES;
  }
  if (req->state == ST_RESPOND) {
    struct MHD_Response *r = req->mhd_resp;
    req->mhd_resp = NULL;
    return queue(conn, req, r);
  }
  if (*size) {
    size_t n = *size;
    *size = 0;
    req->received += n;
    if (req->deferred_status) {
      if (req->received > drain_allowance(req)) {
        fm_warn("closing a connection that sent %zu body bytes after a %d", req->received,
                req->deferred_status);
        return MHD_NO;
      }
      return MHD_YES;
    }
    if (req->received > req->max_body) {
      defer_error(req, 413, "request body too large");
      return MHD_YES;
    }
    if (req->state == ST_LOCAL) return MHD_YES;
    if (req->multipart) {
      if (MHD_post_process(req->pp, data, n) != MHD_YES && !req->pp_error) req->pp_error = PP_MALFORMED;
      if (req->pp_error == PP_IO) defer_error(req, 500, "could not store the upload");
      else if (req->pp_error == PP_TOO_MANY) defer_error(req, 400, "too many multipart parts");
      else if (req->pp_error) defer_error(req, 400, "malformed multipart body");
    } else if (fm_buf_add(&req->body, data, n)) {
      defer_error(req, 503, "server out of memory");
    }
    return MHD_YES;
  }
  /* final call: the whole request is in */
  if (req->deferred_status) return reply_error(conn, req, req->deferred_status, req->deferred_detail);
  if (req->state == ST_LOCAL) return reply_local(conn, req);
  if (req->state != ST_BODY) return MHD_YES;
  if (req->multipart) {
    enum MHD_Result complete = MHD_destroy_post_processor(req->pp);
    req->pp = NULL;
    if (complete != MHD_YES || req->pp_error)
      return reply_error(conn, req, 400, "malformed or truncated multipart body");
    if (req->nparts == 0) return reply_error(conn, req, 400, "multipart body has no parts");
    for (size_t i = 0; i < req->nparts; i++)
      if (req->parts[i].fd >= 0) {
        close(req->parts[i].fd);
        req->parts[i].fd = -1;
      }
  }
  req->state = ST_DISPATCHED;
  MHD_suspend_connection(conn);
  g_dispatch(req, g_dispatch_ud);
  return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  struct fm_request *req = *con_cls;
  if (!req) return;
  *con_cls = NULL;
  double dur = fm_time_mono() - req->t_start;
  /* 499: the client went away first; 0: libmicrohttpd rejected the request line or headers itself
   * (it answers 400, 414 or 431 without telling us which) */
  int status = req->has_response ? req->status : req->state == ST_NEW ? 0 : 499;
  const char *route = req->resp_route[0] ? req->resp_route : req->route ? req->route : "unmatched";
  const char *mlabel = method_label(req->method);
  char st[16];
  snprintf(st, sizeof st, "%d", status);
  {
    char mem[512];
    struct fm_buf lb;
    fm_buf_init_with(&lb, mem, sizeof mem); /* labels rarely need the heap */
    const char *keys[] = {"route", "method", "status"};
    const char *vals[] = {route, mlabel, st};
    if (fm_metrics_labels(&lb, keys, vals, 3) == 0)
      fm_metrics_inc("fm_http_requests_total", fm_buf_cstr(&lb), 1);
    fm_buf_free(&lb);
    fm_buf_init_with(&lb, mem, sizeof mem);
    const char *hkeys[] = {"route"};
    const char *hvals[] = {route};
    if (fm_metrics_labels(&lb, hkeys, hvals, 1) == 0)
      fm_metrics_observe("fm_http_request_duration_seconds", fm_buf_cstr(&lb), dur);
    fm_buf_free(&lb);
  }
  if (fm_log_enabled(FM_LOG_INFO)) {
    char mem[1024];
    struct fm_buf f;
    fm_buf_init_with(&f, mem, sizeof mem);
    fm_buf_adds(&f, "\"method\":");
    fm_buf_add_json_str(&f, req->method, strlen(req->method));
    fm_buf_adds(&f, ",\"route\":");
    fm_buf_add_json_str(&f, route, strlen(route));
    fm_buf_adds(&f, ",\"path\":");
    size_t plen = req->path ? strlen(req->path) : 0;
    fm_buf_add_json_str(&f, req->path ? req->path : "", plen > 512 ? 512 : plen); /* bounded */
    if (plen > 512) fm_buf_adds(&f, ",\"path_truncated\":true");
    fm_buf_printf(&f, ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f,\"remote_addr\":\"%s\"",
                  status, req->resp_body.len, dur * 1000.0, req->remote_addr);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) fm_buf_adds(&f, ",\"aborted\":true");
    fm_log_set_request_id(req->request_id);
    fm_log_fields(FM_LOG_INFO, "access", fm_buf_cstr(&f));
    fm_log_set_request_id(NULL);
    fm_buf_free(&f);
  }
  free_request(req);
  atomic_fetch_sub(&g_inflight, 1);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  fm_log_fields(FM_LOG_WARN, msg, "\"component\":\"libmicrohttpd\"");
}

int fm_http_start(const struct fm_http_config *cfg, fm_http_dispatch_fn dispatch, void *ud,
                  struct fm_err *err) {
  struct addrinfo hints = {0}, *ai = NULL;
  if (g_daemon) return fm_err_set(err, FM_E_INVAL, "http: already started");
  if (!cfg->host || !*cfg->host) return fm_err_set(err, FM_E_INVAL, "FM_HOST: empty");
  if (cfg->port < 0 || cfg->port > 65535) return fm_err_set(err, FM_E_INVAL, "FM_PORT: out of range");
  if (cfg->io_threads < 1) return fm_err_set(err, FM_E_INVAL, "FM_HTTP_IO_THREADS: must be >= 1");
  if (!cfg->tmp_dir) return fm_err_set(err, FM_E_INVAL, "http: tmp_dir is required");
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int gai = getaddrinfo(cfg->host, NULL, &hints, &ai);
  if (gai != 0) return fm_err_set(err, FM_E_INVAL, "FM_HOST %s: %s", cfg->host, gai_strerror(gai));
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  if (ss.ss_family == AF_INET6) {
    ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)cfg->port);
    flags |= MHD_USE_IPv6;
  } else {
    ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)cfg->port);
  }
  freeaddrinfo(ai);

  g_cfg = *cfg;
  g_cfg.routes = NULL;
  if (cfg->routes) fm_http_set_routes(cfg->routes);
  g_dispatch = dispatch;
  g_dispatch_ud = ud;
  /* libmicrohttpd 0.9.75 zeroes the whole connection pool on every request (8% of the CPU time
   * of a Lua JSON request with a 56 KiB pool, in perf): keep it as small as the header limit
   * allows. The request line and the headers share it. */
  size_t pool = cfg->max_header + 4096;
  g_daemon = MHD_start_daemon(
      flags, (uint16_t)cfg->port, NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL, MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
      MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
      MHD_OPTION_SOCK_ADDR, &ss,
      MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->io_threads, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      pool, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, NULL, MHD_OPTION_END);
  /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: 1 would set SO_REUSEPORT and let a second engine share
   * the port silently; libmicrohttpd's default (SO_REUSEADDR) is what a restart needs. */
  if (!g_daemon)
    return fm_err_set(err, FM_E_IO, "cannot listen on %s:%d (in use, or not an address of this host)",
                      cfg->host, cfg->port);
  return 0;
}

int fm_http_bound_port(void) {
  if (!g_daemon) return -1;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(g_daemon, MHD_DAEMON_INFO_BIND_PORT);
  return di ? di->port : -1;
}

void fm_http_quiesce(void) {
  if (!g_daemon) return;
  MHD_socket fd = MHD_quiesce_daemon(g_daemon);
  if (fd != MHD_INVALID_SOCKET) close(fd);
}

void fm_http_stop(void) {
  if (!g_daemon) return;
  MHD_stop_daemon(g_daemon);
  g_daemon = NULL;
  fm_http_set_routes(NULL);
}

void fm_http_set_routes(struct fm_routes *routes) {
  pthread_rwlock_wrlock(&g_routes_lock);
  struct fm_routes *old = g_routes;
  g_routes = routes;
  pthread_rwlock_unlock(&g_routes_lock);
  fm_routes_free(old);
}
