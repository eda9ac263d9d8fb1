/* http.h: the HTTP server (libmicrohttpd, internal epoll threads) and the request record that
 * passes from an I/O thread to a Lua worker and back. I/O threads never run Lua. */
#ifndef FM_HTTP_H
#define FM_HTTP_H

#include "buf.h"
#include "err.h"
#include "routes.h"

#include <stddef.h>
#include <stdint.h>

struct fm_kv {
  char *key;
  char *value;
};

/* One multipart/form-data part. Small parts stay in `mem`; a part that grows past the spool
 * threshold moves to a temp file at `path` (removed when the request ends, whatever happens). */
struct fm_part {
  char *name;
  char *filename;
  char *content_type;
  struct fm_buf mem;
  char *path; /* NULL while in memory */
  int fd;
  size_t size;
};

/* A response body that libmicrohttpd streams instead of a copied buffer: a file (fd >= 0, sent
 * from offset 0, size bytes) or a reader callback (fd < 0). Once set on a request, http.c owns it
 * and closes it on every path (sent, client gone, error, shutdown) with fm_resp_stream_close. */
struct fm_resp_stream {
  int fd;
  uint64_t size; /* bytes; FM_RESP_SIZE_UNKNOWN: sent chunked */
  /* fd < 0: copies up to max bytes at pos into buf; returns the count, 0 at the end, -1 on
   * error, or FM_RESP_PARKED when it has no bytes yet: it then called fm_http_park(conn) and
   * calls fm_http_unpark(conn) once bytes (or the end, or an error) are there, so the I/O thread
   * never waits for the source. Runs on an I/O thread. */
  long (*read)(void *ud, uint64_t pos, char *buf, size_t max, void *conn);
  void (*close)(void *ud); /* fd < 0: frees ud; may be NULL */
  void *ud;
};
#define FM_RESP_SIZE_UNKNOWN UINT64_MAX
/* Metatable name of a Lua userdata whose first member is a struct fm_resp_stream: a route that
 * returns one as its body has it streamed (worker.c takes it over; fd -1 and read NULL after). */
#define FM_RESP_STREAM_MT "fm.response.stream"

#define FM_RESP_PARKED (-2)

/* Closes a stream (its fd, or its close callback) and marks it empty. Idempotent. */
void fm_resp_stream_close(struct fm_resp_stream *s);
/* For a stream's read callback: parks its connection (libmicrohttpd suspends it) until
 * fm_http_unpark. Call it from inside read, under the lock the producer takes to unpark, and
 * return FM_RESP_PARKED. A parked connection is never closed under the stream. */
void fm_http_park(void *conn);
/* Resumes a parked connection (any thread, exactly once per park). */
void fm_http_unpark(void *conn);

struct fm_request {
  struct fm_request *next; /* worker queue link */
  void *conn;              /* struct MHD_Connection *, owned by http.c */
  /* request, filled by the I/O thread, read-only for the worker */
  char method[16];
  char *path;
  struct fm_kv *headers;
  size_t nheaders;
  struct fm_kv *query;
  size_t nquery;
  struct fm_buf body;
  struct fm_part *parts;
  size_t nparts;
  char request_id[132];
  char remote_addr[64];
  const char *route; /* matched pattern (points at route_pat), or NULL */
  char route_pat[160];
  size_t max_body;
  double t_start;
  /* response, filled by whoever answers */
  int status;
  struct fm_kv *resp_headers;
  size_t nresp_headers;
  struct fm_buf resp_body;
  struct fm_resp_stream resp_stream; /* used instead of resp_body when has_stream */
  int has_stream;
  char resp_route[160];
  /* private to http.c */
  int state;
  int multipart;
  void *pp; /* struct MHD_PostProcessor * */
  int pp_error;
  size_t received;
  int has_response;
  size_t raw_uri_len; /* request-target as sent, query included */
  int deferred_status; /* error to answer once the body has been drained */
  const char *deferred_detail;
  void *mhd_resp; /* struct MHD_Response *, built by the worker */
};

struct fm_http_config {
  const char *host;         /* literal IPv4/IPv6 address or name */
  int port;
  int io_threads;
  size_t max_url;           /* 414 above this */
  size_t max_header;        /* 431 above this (all header lines) */
  size_t spool_threshold;   /* multipart parts above this go to a temp file */
  const char *tmp_dir;      /* where spooled parts go */
  int idle_timeout_s;
  int max_connections;
  struct fm_routes *routes; /* body limits; owned by http from here on (fm_http_set_routes) */
};

/* Called on an I/O thread with a complete request; must hand it to a worker and return quickly. */
typedef void (*fm_http_dispatch_fn)(struct fm_request *req, void *ud);

/* Starts the daemon. On failure nothing is left running and err names the bad field. */
int fm_http_start(const struct fm_http_config *cfg, fm_http_dispatch_fn dispatch, void *ud,
                  struct fm_err *err);
/* Stops accepting new connections (closes the listening socket); in-flight requests go on. */
void fm_http_quiesce(void);
/* Number of requests between first byte and completion (includes queued and running ones). */
int fm_http_inflight(void);
/* Stops the daemon and closes every connection. Only after fm_http_inflight() reached 0. */
void fm_http_stop(void);

/* Readiness: 0 starting, 1 ready, 2 shutting down. /readiness answers 200 only for 1. */
void fm_http_set_ready(int state);
int fm_http_ready(void);

/* Worker side: sets a response header (copies name and value). */
int fm_request_add_header(struct fm_request *req, const char *name, const char *value);
/* Worker side: the response is complete; hands the request back to its I/O thread. */
void fm_http_finish(struct fm_request *req);
/* Replaces any response so far with {"detail": detail, "request_id": id} and status. */
void fm_request_set_error(struct fm_request *req, int status, const char *detail);
/* Replaces the route table (a reload changed the routes); takes ownership and frees the old one
 * once no lookup uses it. */
void fm_http_set_routes(struct fm_routes *routes);
/* The port the daemon listens on (useful with port 0), or -1. */
int fm_http_bound_port(void);
/* Looks up a request header by lower-case name; NULL when absent. */
const char *fm_request_header(const struct fm_request *req, const char *lname);

#endif
