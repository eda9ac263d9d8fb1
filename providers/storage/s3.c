/* s3.c: the S3 storage driver (AWS S3 and S3-compatible servers: MinIO, Ceph, R2, s3rver) on
 * libcurl. Requests are signed by libcurl itself (CURLOPT_AWS_SIGV4 "aws:amz:<region>:s3" with
 * the key pair as user and password); x-amz-content-sha256 is computed here and sent with every
 * request (S3 wants it; libcurl signs it as given). Presigned URLs come from sigv4.c.
 *
 *   small objects    one PUT from memory (below S3_MULTIPART_THRESHOLD_MB)
 *   large objects    multipart upload read part by part from the file (S3_PART_SIZE_MB each, one
 *                    part in memory at a time), completed at the end and aborted on any failure:
 *                    no object is visible unless every part arrived
 *   downloads        streamed: to a file (get_file), or through a thread that runs the GET and a
 *                    bounded buffer libmicrohttpd reads from (open_stream)
 *   failures         5xx, throttling (429, SlowDown) and network errors are retried
 *                    S3_MAX_RETRIES times with exponential backoff and jitter; every attempt takes
 *                    a ticket from the "s3" circuit breaker, which answers STORAGE_UNAVAILABLE at
 *                    once while it is open. 403 is STORAGE_DENIED with the bucket named. */
#include "storage.h"

#include "breaker.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct fm_storage_handle {
  struct fm_storage_config cfg;
  char scheme[8];
  char host[800];     /* the Host of object requests: [bucket.]endpoint-host[:port] */
  char base[1200];    /* scheme://host[/bucket]: object URLs are base "/" key */
  char root_path[300]; /* "/bucket" (path style) or "" */
  char sigv4[128];
  char userpwd[600];
  char token_hdr[2100];
};

static const char empty_sha[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/* ---- open ---------------------------------------------------------------------------------- */

static int s3_open(const struct fm_storage_config *cfg, struct fm_storage_handle **out,
                   struct fm_err *err) {
  if (!cfg->bucket[0])
    return fm_err_set(err, FM_E_INVAL, "STORAGE_PROVIDER=s3 needs S3_BUCKET_NAME");
  if (!cfg->access_key[0] || !cfg->secret_key[0])
    return fm_err_set(err, FM_E_INVAL,
                      "STORAGE_PROVIDER=s3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  for (const char *p = cfg->bucket; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
      return fm_err_set(err, FM_E_INVAL, "S3_BUCKET_NAME: expected [a-z0-9.-]");
  struct fm_storage_handle *h = calloc(1, sizeof *h);
  if (!h) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  h->cfg = *cfg;
  if (h->cfg.part_size < (5u << 20)) h->cfg.part_size = 5u << 20;
  if (h->cfg.timeout_s <= 0) h->cfg.timeout_s = 60;
  if (!h->cfg.breaker[0]) snprintf(h->cfg.breaker, sizeof h->cfg.breaker, "s3");
  char ephost[512];
  if (cfg->endpoint[0]) {
    const char *e = cfg->endpoint;
    const char *sep = strstr(e, "://");
    if (!sep || (strncmp(e, "http://", 7) && strncmp(e, "https://", 8))) {
      free(h);
      return fm_err_set(err, FM_E_INVAL, "S3_ENDPOINT_URL: expected http(s)://host[:port]");
    }
    snprintf(h->scheme, sizeof h->scheme, "%.*s", (int)(sep - e), e);
    const char *hp = sep + 3;
    size_t n = strcspn(hp, "/?#");
    if (n == 0 || n >= sizeof ephost || (hp[n] && strcmp(hp + n, "/") != 0)) {
      free(h);
      return fm_err_set(err, FM_E_INVAL,
                        "S3_ENDPOINT_URL: expected http(s)://host[:port], no path");
    }
    snprintf(ephost, sizeof ephost, "%.*s", (int)n, hp);
  } else {
    snprintf(h->scheme, sizeof h->scheme, "https");
    snprintf(ephost, sizeof ephost, "s3.%s.amazonaws.com",
             cfg->region[0] ? cfg->region : "us-east-1");
  }
  if (cfg->path_style) {
    snprintf(h->host, sizeof h->host, "%s", ephost);
    snprintf(h->root_path, sizeof h->root_path, "/%s", cfg->bucket);
  } else {
    snprintf(h->host, sizeof h->host, "%s.%s", cfg->bucket, ephost);
    h->root_path[0] = '\0';
  }
  snprintf(h->base, sizeof h->base, "%s://%s%s", h->scheme, h->host, h->root_path);
  snprintf(h->sigv4, sizeof h->sigv4, "aws:amz:%s:s3", cfg->region[0] ? cfg->region : "us-east-1");
  snprintf(h->userpwd, sizeof h->userpwd, "%s:%s", cfg->access_key, cfg->secret_key);
  if (cfg->session_token[0])
    snprintf(h->token_hdr, sizeof h->token_hdr, "x-amz-security-token: %s", cfg->session_token);
  *out = h;
  return 0;
}

static void s3_close(struct fm_storage_handle *h) {
  if (!h) return;
  memset(h->userpwd, 0, sizeof h->userpwd);
  free(h);
}

/* ---- one request, with retries ------------------------------------------------------------- */

struct s3_call {
  const char *method;
  const char *key;   /* NULL: the bucket itself */
  const char *query; /* already encoded, parameters sorted by name; may be NULL */
  const void *body;
  size_t body_len;
  const char *content_type;
  /* response */
  struct fm_buf body_out; /* the body (error bodies always; success bodies unless sink is set) */
  size_t max_body;        /* 0: 1 MiB */
  size_t (*sink)(char *p, size_t size, size_t n, void *ud); /* success bodies go here */
  void *sink_ud;
  void (*reset)(void *ud); /* before a retry (sink: start over) */
  struct fm_buf headers;
  long status;
  int too_big;
};

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  struct s3_call *c = ud;
  size_t len = size * n;
  if (len > 5 && strncmp(p, "HTTP/", 5) == 0) {
    c->headers.len = 0;
    long st = 0;
    const char *sp = memchr(p, ' ', len);
    if (sp) st = strtol(sp + 1, NULL, 10);
    c->status = st;
  }
  if (c->headers.len + len > 64 * 1024) return 0;
  return fm_buf_add(&c->headers, p, len) ? 0 : len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  struct s3_call *c = ud;
  size_t len = size * n;
  if (c->sink && c->status >= 200 && c->status < 300) return c->sink(p, size, n, c->sink_ud);
  size_t max = c->max_body ? c->max_body : (1u << 20);
  if (c->body_out.len + len > max) {
    c->too_big = 1;
    return 0;
  }
  return fm_buf_add(&c->body_out, p, len) ? 0 : len;
}

/* A response header's value (case-insensitive name) into out; 1 when found. */
static int header_value(const struct fm_buf *hb, const char *name, char *out, size_t outsz) {
  size_t nl = strlen(name);
  const char *p = hb->p, *end = hb->p ? hb->p + hb->len : NULL;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      const char *ve = eol;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
      snprintf(out, outsz, "%.*s", (int)(ve - v), v);
      return 1;
    }
    p = eol + 1;
  }
  return 0;
}

/* The text of <tag>...</tag> in xml from `from` on into out; returns the end of the element or
 * NULL. */
static const char *xml_text(const char *xml, const char *tag, char *out, size_t outsz) {
  char open[64], close_[64];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close_, sizeof close_, "</%s>", tag);
  const char *a = xml ? strstr(xml, open) : NULL;
  if (!a) return NULL;
  a += strlen(open);
  const char *b = strstr(a, close_);
  if (!b) return NULL;
  size_t o = 0;
  for (const char *p = a; p < b && o + 1 < outsz; p++) { /* the five XML entities */
    static const struct {
      const char *ent;
      char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    char c = *p;
    for (size_t i = 0; i < 5; i++) {
      size_t el = strlen(ents[i].ent);
      if ((size_t)(b - p) >= el && strncmp(p, ents[i].ent, el) == 0) {
        c = ents[i].c;
        p += el - 1;
        break;
      }
    }
    out[o++] = c;
  }
  out[o] = '\0';
  return b + strlen(close_);
}

static int retryable_status(long st, const struct fm_buf *body) {
  if (st >= 500 || st == 429) return 1;
  return st == 400 && body->p && strstr(body->p, "<Code>RequestTimeout</Code>");
}

/* Performs one attempt. Returns 0 (an answer came: c->status), or an FM_E_* code with e set. */
static int attempt(struct fm_storage_handle *h, struct s3_call *c, struct fm_storage_error *e) {
  struct fm_buf url = {0};
  char sha_hdr[100], ctype_hdr[300];
  struct curl_slist *hdrs = NULL;
  int rc = 0;
  CURL *cu = curl_easy_init();
  if (!cu) {
    fm_storage_fail(e, FM_STORAGE_ERROR, "curl_easy_init failed");
    return FM_E_NOMEM;
  }
  if (fm_buf_adds(&url, h->base) || (c->key && fm_buf_printf(&url, "/%s", c->key)) ||
      (!c->key && !h->root_path[0] && fm_buf_addc(&url, '/')) ||
      (c->query && fm_buf_printf(&url, "?%s", c->query))) {
    rc = FM_E_NOMEM;
    fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    goto done;
  }
  char sha[65];
  if (c->body && c->body_len) fm_sigv4_sha256_hex(c->body, c->body_len, sha);
  else memcpy(sha, empty_sha, sizeof sha);
  snprintf(sha_hdr, sizeof sha_hdr, "x-amz-content-sha256: %s", sha);
  hdrs = curl_slist_append(hdrs, sha_hdr);
  if (h->token_hdr[0]) hdrs = curl_slist_append(hdrs, h->token_hdr);
  if (c->body) {
    snprintf(ctype_hdr, sizeof ctype_hdr, "Content-Type: %s",
             c->content_type && *c->content_type ? c->content_type : "application/octet-stream");
    hdrs = curl_slist_append(hdrs, ctype_hdr);
  }
  hdrs = curl_slist_append(hdrs, "Expect:");
  if (!hdrs) {
    rc = FM_E_NOMEM;
    fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    goto done;
  }
  c->status = 0;
  c->too_big = 0;
  fm_buf_free(&c->body_out);
  fm_buf_free(&c->headers);
  curl_easy_setopt(cu, CURLOPT_URL, fm_buf_cstr(&url));
  curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(cu, CURLOPT_AWS_SIGV4, h->sigv4);
  curl_easy_setopt(cu, CURLOPT_USERPWD, h->userpwd);
  curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  /* no total timeout for a streamed body; a transfer slower than 1 byte/s for the timeout fails */
  if (c->sink) {
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_TIME, (long)h->cfg.timeout_s);
  } else {
    curl_easy_setopt(cu, CURLOPT_TIMEOUT_MS, (long)(h->cfg.timeout_s * 1000));
  }
  curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(cu, CURLOPT_HEADERDATA, c);
  curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(cu, CURLOPT_WRITEDATA, c);
  curl_easy_setopt(cu, CURLOPT_USERAGENT, "faultmaven/" FM_VERSION);
  if (strcmp(c->method, "HEAD") == 0) curl_easy_setopt(cu, CURLOPT_NOBODY, 1L);
  else if (strcmp(c->method, "GET") != 0) curl_easy_setopt(cu, CURLOPT_CUSTOMREQUEST, c->method);
  if (c->body) {
    curl_easy_setopt(cu, CURLOPT_POSTFIELDS, c->body_len ? c->body : "");
    curl_easy_setopt(cu, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
  }
  CURLcode cr = curl_easy_perform(cu);
  if (cr != CURLE_OK && !(c->too_big && c->status)) {
    const char *what = cr == CURLE_OPERATION_TIMEDOUT ? "timed out" : curl_easy_strerror(cr);
    rc = cr == CURLE_OPERATION_TIMEDOUT ? FM_E_TIMEOUT
         : cr == CURLE_COULDNT_CONNECT || cr == CURLE_COULDNT_RESOLVE_HOST ? FM_E_CONNECT
         : cr == CURLE_WRITE_ERROR && c->sink ? FM_E_INVAL /* our sink refused: not S3's fault */
                                                : FM_E_IO;
    fm_storage_fail(e, FM_STORAGE_UNAVAILABLE, "S3 %s %s%s%.60s (bucket %s): %s", c->method,
                    c->key ? c->key : "(bucket)", c->query ? "?" : "", c->query ? c->query : "",
                    h->cfg.bucket, what);
    goto done;
  }
  if (!c->status) curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &c->status);
done:
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(cu);
  fm_buf_free(&url);
  return rc;
}

/* The call with retries and the breaker. Returns 0 with c->status set (any status: the caller
 * maps it with s3_status_error), or -1 with e set (STORAGE_UNAVAILABLE, or misuse). */
static int perform(struct fm_storage_handle *h, struct s3_call *c, struct fm_storage_error *e) {
  for (int n = 0;; n++) {
    struct fm_breaker_ticket t;
    double retry_in = 0;
    if (!fm_breaker_acquire(h->cfg.breaker, &t, &retry_in))
      return fm_storage_fail(e, FM_STORAGE_UNAVAILABLE,
                             "S3 (bucket %s) temporarily unavailable: circuit breaker '%s' is open "
                             "(retry in %.0f s)",
                             h->cfg.bucket, h->cfg.breaker, retry_in);
    if (n > 0 && c->reset) c->reset(c->sink_ud);
    int rc = attempt(h, c, e);
    fm_breaker_release(&t, rc == FM_E_INVAL || rc == FM_E_NOMEM
                               ? FM_BREAKER_NEUTRAL
                               : fm_breaker_classify(rc, c->status));
    if (rc == FM_E_INVAL || rc == FM_E_NOMEM) return -1;
    int again = rc ? 1 : retryable_status(c->status, &c->body_out);
    if (!again) return 0;
    if (n >= h->cfg.max_retries) {
      if (rc) return -1; /* e says what the network did */
      char code[64] = "";
      xml_text(c->body_out.p, "Code", code, sizeof code);
      return fm_storage_fail(e, FM_STORAGE_UNAVAILABLE,
                             "S3 %s (bucket %s) answered %ld%s%s after %d attempts", c->method,
                             h->cfg.bucket, c->status, code[0] ? " " : "", code, n + 1);
    }
    double d = 0.1 * (double)(1 << (n < 6 ? n : 6));
    fm_sleep(fm_jitter(d > 5 ? 5 : d));
  }
}

/* Maps a non-2xx answer to an error. Returns -1 with e set. */
static int status_error(struct fm_storage_handle *h, struct s3_call *c,
                        struct fm_storage_error *e) {
  char code[64] = "", msg[256] = "";
  xml_text(c->body_out.p, "Code", code, sizeof code);
  xml_text(c->body_out.p, "Message", msg, sizeof msg);
  const char *what = c->key ? c->key : "(bucket)";
  if (c->status == 404) {
    if (strcmp(code, "NoSuchBucket") == 0)
      return fm_storage_fail(e, FM_STORAGE_ERROR, "S3 bucket %s does not exist", h->cfg.bucket);
    return fm_storage_fail(e, FM_STORAGE_NOT_FOUND, "no object %s in bucket %s", what,
                           h->cfg.bucket);
  }
  if (c->status == 403 || c->status == 401)
    return fm_storage_fail(e, FM_STORAGE_DENIED,
                           "S3 bucket %s refused the credentials (access key %.8s...): %ld %s%s%s",
                           h->cfg.bucket, h->cfg.access_key, c->status,
                           code[0] ? code : "Forbidden", msg[0] ? ": " : "", msg);
  return fm_storage_fail(e, c->status >= 500 ? FM_STORAGE_UNAVAILABLE : FM_STORAGE_ERROR,
                         "S3 %s %s (bucket %s): %ld %s%s%s", c->method, what, h->cfg.bucket,
                         c->status, code, msg[0] ? ": " : "", msg);
}

/* perform + status check: 0 on 2xx. */
static int run(struct fm_storage_handle *h, struct s3_call *c, struct fm_storage_error *e) {
  if (perform(h, c, e)) return -1;
  if (c->status < 200 || c->status >= 300) return status_error(h, c, e);
  return 0;
}

static void call_free(struct s3_call *c) {
  fm_buf_free(&c->body_out);
  fm_buf_free(&c->headers);
}

static void info_from_headers(const struct fm_buf *hb, struct fm_storage_info *info) {
  char v[256];
  memset(info, 0, sizeof *info);
  if (header_value(hb, "Content-Length", v, sizeof v)) info->size = strtoull(v, NULL, 10);
  if (header_value(hb, "ETag", v, sizeof v)) {
    char *p = v;
    size_t n = strlen(p);
    if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
      p[n - 1] = '\0';
      p++;
    }
    snprintf(info->etag, sizeof info->etag, "%.127s", p);
  }
  if (header_value(hb, "Last-Modified", v, sizeof v)) {
    time_t t = curl_getdate(v, NULL);
    info->last_modified = t > 0 ? (int64_t)t : 0;
  }
  if (!header_value(hb, "Content-Type", info->content_type, sizeof info->content_type))
    snprintf(info->content_type, sizeof info->content_type, "application/octet-stream");
}

/* ---- objects ------------------------------------------------------------------------------- */

static int s3_put_mem(struct fm_storage_handle *h, const char *key, const void *data, size_t n,
                      const char *ctype, struct fm_storage_info *info,
                      struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  struct s3_call c = {.method = "PUT", .key = key, .body = data ? data : "", .body_len = n,
                      .content_type = ctype};
  int rc = run(h, &c, e);
  if (!rc) {
    info_from_headers(&c.headers, info);
    info->size = n;
    snprintf(info->content_type, sizeof info->content_type, "%s",
             ctype && *ctype ? ctype : "application/octet-stream");
    info->last_modified = (int64_t)fm_time_now();
  }
  call_free(&c);
  return rc;
}

static int read_at(int fd, char *buf, size_t n, off_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static void abort_upload(struct fm_storage_handle *h, const char *key, const char *qid) {
  struct fm_storage_error e2 = {0};
  struct s3_call c = {.method = "DELETE", .key = key, .query = qid};
  if (run(h, &c, &e2))
    fm_warn("S3: could not abort the multipart upload of %s (bucket %s): %s; a lifecycle rule "
            "for incomplete uploads will have to remove its parts",
            key, h->cfg.bucket, e2.msg);
  call_free(&c);
}

static int multipart(struct fm_storage_handle *h, const char *key, int fd, uint64_t size,
                     const char *ctype, struct fm_storage_info *info, struct fm_storage_error *e) {
  struct s3_call c = {.method = "POST", .key = key, .query = "uploads=", .body = "",
                      .content_type = ctype};
  if (run(h, &c, e)) {
    call_free(&c);
    return -1;
  }
  char upload_id[512] = "";
  xml_text(c.body_out.p, "UploadId", upload_id, sizeof upload_id);
  call_free(&c);
  if (!upload_id[0])
    return fm_storage_fail(e, FM_STORAGE_ERROR, "S3 bucket %s: no UploadId in the answer to "
                           "CreateMultipartUpload", h->cfg.bucket);
  struct fm_buf qid = {0}, done = {0};
  char *buf = malloc(h->cfg.part_size);
  int rc = -1;
  if (!buf || fm_buf_adds(&qid, "uploadId=") || fm_sigv4_uri_encode(upload_id, 0, &qid) ||
      fm_buf_adds(&done, "<CompleteMultipartUpload>")) {
    fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    goto out;
  }
  size_t nparts = size ? (size_t)((size + h->cfg.part_size - 1) / h->cfg.part_size) : 1;
  if (nparts > 10000) {
    fm_storage_fail(e, FM_STORAGE_INVALID, "object of %llu bytes needs more than 10000 parts of "
                    "%zu bytes: raise S3_PART_SIZE_MB", (unsigned long long)size, h->cfg.part_size);
    goto out;
  }
  for (size_t i = 0; i < nparts; i++) {
    uint64_t off = (uint64_t)i * h->cfg.part_size;
    size_t n = (size_t)(size - off < h->cfg.part_size ? size - off : h->cfg.part_size);
    if (read_at(fd, buf, n, (off_t)off)) {
      fm_storage_fail(e, FM_STORAGE_ERROR, "read the source file: %s", strerror(errno));
      goto out;
    }
    char q[700];
    snprintf(q, sizeof q, "partNumber=%zu&%s", i + 1, fm_buf_cstr(&qid));
    struct s3_call pc = {.method = "PUT", .key = key, .query = q, .body = buf, .body_len = n};
    if (run(h, &pc, e)) {
      call_free(&pc);
      goto out;
    }
    char etag[256] = "";
    header_value(&pc.headers, "ETag", etag, sizeof etag);
    call_free(&pc);
    if (fm_buf_printf(&done, "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>", i + 1,
                      etag)) {
      fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
      goto out;
    }
  }
  if (fm_buf_adds(&done, "</CompleteMultipartUpload>")) {
    fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    goto out;
  }
  struct s3_call cc = {.method = "POST", .key = key, .query = fm_buf_cstr(&qid), .body = done.p,
                       .body_len = done.len, .content_type = "application/xml"};
  if (run(h, &cc, e)) {
    call_free(&cc);
    goto out;
  }
  /* S3 may answer 200 and report the failure in the body */
  if (cc.body_out.p && strstr(cc.body_out.p, "<Error>")) {
    char code[64] = "";
    xml_text(cc.body_out.p, "Code", code, sizeof code);
    fm_storage_fail(e, FM_STORAGE_ERROR, "S3 bucket %s: CompleteMultipartUpload failed: %s",
                    h->cfg.bucket, code);
    call_free(&cc);
    goto out;
  }
  memset(info, 0, sizeof *info);
  char etag[128] = "";
  xml_text(cc.body_out.p, "ETag", etag, sizeof etag);
  char *p = etag;
  size_t el = strlen(p);
  if (el >= 2 && p[0] == '"' && p[el - 1] == '"') {
    p[el - 1] = '\0';
    p++;
  }
  snprintf(info->etag, sizeof info->etag, "%s", p);
  call_free(&cc);
  info->size = size;
  rc = 0;
out:
  if (rc) abort_upload(h, key, fm_buf_cstr(&qid));
  free(buf);
  fm_buf_free(&qid);
  fm_buf_free(&done);
  return rc;
}

static int s3_put_file(struct fm_storage_handle *h, const char *key, const char *path,
                       const char *ctype, struct fm_storage_info *info,
                       struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fm_storage_fail(e, errno == ENOENT ? FM_STORAGE_NOT_FOUND : FM_STORAGE_ERROR,
                           "open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "%s is not a regular file", path);
  }
  uint64_t size = (uint64_t)st.st_size;
  int rc;
  if (size >= h->cfg.multipart_threshold && size > 0) {
    rc = multipart(h, key, fd, size, ctype, info, e);
  } else {
    char *buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
      close(fd);
      return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    }
    rc = read_at(fd, buf, (size_t)size, 0)
             ? fm_storage_fail(e, FM_STORAGE_ERROR, "read %s: %s", path, strerror(errno))
             : s3_put_mem(h, key, buf, (size_t)size, ctype, info, e);
    free(buf);
  }
  close(fd);
  if (!rc) {
    snprintf(info->content_type, sizeof info->content_type, "%s",
             ctype && *ctype ? ctype : "application/octet-stream");
    info->last_modified = (int64_t)fm_time_now();
  }
  return rc;
}

static int s3_get_mem(struct fm_storage_handle *h, const char *key, size_t max, char **out,
                      size_t *n, struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  struct s3_call c = {.method = "GET", .key = key, .max_body = max};
  if (perform(h, &c, e)) {
    call_free(&c);
    return -1;
  }
  if (c.too_big) {
    call_free(&c);
    return fm_storage_fail(e, FM_STORAGE_TOO_LARGE, "object %s is larger than %zu bytes", key, max);
  }
  if (c.status < 200 || c.status >= 300) {
    status_error(h, &c, e);
    call_free(&c);
    return -1;
  }
  if (fm_buf_reserve(&c.body_out, 1)) {
    call_free(&c);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
  }
  c.body_out.p[c.body_out.len] = '\0';
  *out = fm_buf_steal(&c.body_out, n);
  call_free(&c);
  return 0;
}

struct file_sink {
  int fd;
  int failed;
};

static size_t file_write(char *p, size_t size, size_t n, void *ud) {
  struct file_sink *f = ud;
  size_t len = size * n, off = 0;
  while (off < len) {
    ssize_t w = write(f->fd, p + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      f->failed = errno ? errno : EIO;
      return 0;
    }
    off += (size_t)w;
  }
  return len;
}

static void file_reset(void *ud) {
  struct file_sink *f = ud;
  if (ftruncate(f->fd, 0) == 0) lseek(f->fd, 0, SEEK_SET);
}

static int s3_get_file(struct fm_storage_handle *h, const char *key, const char *dst,
                       struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  char tmp[PATH_MAX + 16];
  snprintf(tmp, sizeof tmp, "%s.XXXXXX", dst);
  struct file_sink f = {mkostemp(tmp, O_CLOEXEC), 0};
  if (f.fd < 0) return fm_storage_fail(e, FM_STORAGE_ERROR, "create %s: %s", tmp, strerror(errno));
  struct s3_call c = {.method = "GET", .key = key, .sink = file_write, .sink_ud = &f,
                      .reset = file_reset};
  int rc = run(h, &c, e);
  if (rc && f.failed)
    fm_storage_fail(e, FM_STORAGE_ERROR, "write %s: %s", tmp, strerror(f.failed));
  call_free(&c);
  if (close(f.fd) && !rc)
    rc = fm_storage_fail(e, FM_STORAGE_ERROR, "write %s: %s", tmp, strerror(errno));
  if (!rc && rename(tmp, dst))
    rc = fm_storage_fail(e, FM_STORAGE_ERROR, "rename into %s: %s", dst, strerror(errno));
  if (rc) unlink(tmp);
  return rc;
}

static int s3_head(struct fm_storage_handle *h, const char *key, struct fm_storage_info *info,
                   struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  struct s3_call c = {.method = "HEAD", .key = key};
  int rc = run(h, &c, e);
  if (!rc) info_from_headers(&c.headers, info);
  call_free(&c);
  return rc;
}

static int s3_del(struct fm_storage_handle *h, const char *key, struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  struct s3_call c = {.method = "DELETE", .key = key};
  int rc = perform(h, &c, e);
  if (!rc && c.status != 404 && (c.status < 200 || c.status >= 300)) rc = status_error(h, &c, e);
  call_free(&c);
  return rc;
}

static int64_t iso_time(const char *s) {
  struct tm tm = {0};
  if (sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
             &tm.tm_sec) != 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm);
}

static int s3_list(struct fm_storage_handle *h, const char *prefix, const char *after, int limit,
                   struct fm_storage_entry **out, size_t *n, int *more,
                   struct fm_storage_error *e) {
  *out = NULL;
  *n = 0;
  *more = 0;
  if (limit > 1000) limit = 1000;
  if (limit <= 0) limit = 1000;
  struct fm_buf q = {0};
  /* parameters in byte order of their names, as the canonical request has them */
  int oom = fm_buf_printf(&q, "list-type=2&max-keys=%d", limit);
  if (!oom && prefix && *prefix)
    oom = fm_buf_adds(&q, "&prefix=") || fm_sigv4_uri_encode(prefix, 0, &q);
  if (!oom && after && *after)
    oom = fm_buf_adds(&q, "&start-after=") || fm_sigv4_uri_encode(after, 0, &q);
  if (oom) {
    fm_buf_free(&q);
    return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
  }
  struct s3_call c = {.method = "GET", .query = fm_buf_cstr(&q), .max_body = 16u << 20};
  int rc = run(h, &c, e);
  fm_buf_free(&q);
  if (rc) {
    call_free(&c);
    return -1;
  }
  size_t cap = 0;
  const char *p = c.body_out.p;
  char tv[16];
  if (xml_text(p, "IsTruncated", tv, sizeof tv)) *more = strcmp(tv, "true") == 0;
  while (p && (p = strstr(p, "<Contents>"))) {
    const char *end = strstr(p, "</Contents>");
    if (!end) break;
    size_t len = (size_t)(end - p);
    char *one = strndup(p, len);
    p = end + 11;
    if (!one) continue;
    char key[FM_STORAGE_KEY_MAX + 1] = "", size[32] = "0", lm[64] = "";
    xml_text(one, "Key", key, sizeof key);
    xml_text(one, "Size", size, sizeof size);
    xml_text(one, "LastModified", lm, sizeof lm);
    free(one);
    if (!fm_storage_valid_key(key)) continue; /* not ours: written by something else */
    if (*n == cap) {
      size_t nc = cap ? cap * 2 : 64;
      struct fm_storage_entry *nv = realloc(*out, nc * sizeof *nv);
      if (!nv) {
        fm_storage_entries_free(*out, *n);
        *out = NULL;
        *n = 0;
        call_free(&c);
        return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
      }
      *out = nv;
      cap = nc;
    }
    struct fm_storage_entry *en = &(*out)[*n];
    en->key = strdup(key);
    if (!en->key) continue;
    en->size = strtoull(size, NULL, 10);
    en->last_modified = iso_time(lm);
    (*n)++;
  }
  call_free(&c);
  return 0;
}

static int s3_presign(struct fm_storage_handle *h, const char *key, long expires_s, char *out,
                      size_t outsz, struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  char path[FM_STORAGE_KEY_MAX + 400];
  snprintf(path, sizeof path, "%s/%s", h->root_path, key);
  char date[20];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%Y%m%dT%H%M%SZ", &tm);
  struct fm_sigv4_presign p = {.method = "GET", .scheme = h->scheme, .host = h->host,
                               .path = path, .access_key = h->cfg.access_key,
                               .secret_key = h->cfg.secret_key,
                               .session_token = h->cfg.session_token,
                               .region = h->cfg.region[0] ? h->cfg.region : "us-east-1",
                               .service = "s3", .amz_date = date, .expires_s = expires_s};
  struct fm_buf url = {0};
  struct fm_err err = {0};
  if (fm_sigv4_presign_url(&p, &url, NULL, NULL, &err)) {
    fm_buf_free(&url);
    return fm_storage_fail(e, err.code == FM_E_INVAL ? FM_STORAGE_INVALID : FM_STORAGE_ERROR,
                           "%s", err.msg);
  }
  int rc = 0;
  if (url.len >= outsz) rc = fm_storage_fail(e, FM_STORAGE_ERROR, "presigned URL too long");
  else memcpy(out, url.p, url.len + 1);
  fm_buf_free(&url);
  return rc;
}

static int s3_ping(struct fm_storage_handle *h, struct fm_storage_error *e) {
  struct s3_call c = {.method = "HEAD"};
  int rc = perform(h, &c, e);
  if (!rc && (c.status < 200 || c.status >= 300)) {
    if (c.status == 404)
      rc = fm_storage_fail(e, FM_STORAGE_ERROR, "S3 bucket %s does not exist", h->cfg.bucket);
    else rc = status_error(h, &c, e);
  }
  call_free(&c);
  return rc;
}

/* ---- streaming GET ------------------------------------------------------------------------- */

/* A GET running in its own thread into a bounded ring that libmicrohttpd's reader drains. */
#define RING (1u << 20)

struct s3_stream {
  struct fm_storage_handle *h;
  char key[FM_STORAGE_KEY_MAX + 1];
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *ring;
  size_t head, len; /* read position, bytes buffered */
  int headers_done; /* the status line and headers of the final answer arrived */
  int finished;     /* the transfer ended (rc / status say how) */
  int closed;       /* the reader went away: stop */
  void *parked;     /* the connection parked by the reader for want of bytes, or NULL */
  int rc;
  struct s3_call call;
  struct fm_storage_error err;
};

/* With s->mu held: resumes a connection parked for want of bytes. */
static void unpark(struct s3_stream *s) {
  if (!s->parked) return;
  void *conn = s->parked;
  s->parked = NULL;
  fm_http_unpark(conn);
}

static size_t stream_sink(char *p, size_t size, size_t n, void *ud) {
  struct s3_stream *s = ud;
  size_t len = size * n, off = 0;
  pthread_mutex_lock(&s->mu);
  s->headers_done = 1;
  while (off < len) {
    while (s->len == RING && !s->closed) pthread_cond_wait(&s->cv, &s->mu);
    if (s->closed) break;
    size_t tail = (s->head + s->len) % RING;
    size_t room = RING - s->len;
    size_t chunk = len - off < room ? len - off : room;
    if (chunk > RING - tail) chunk = RING - tail;
    memcpy(s->ring + tail, p + off, chunk);
    s->len += chunk;
    off += chunk;
    pthread_cond_broadcast(&s->cv);
    unpark(s);
  }
  pthread_mutex_unlock(&s->mu);
  return off == len ? len : 0;
}

static size_t stream_header(char *p, size_t size, size_t n, void *ud) {
  struct s3_stream *s = ud;
  size_t r = on_header(p, size, n, &s->call);
  if (size * n == 2 && p[0] == '\r' && s->call.status >= 200) { /* the end of a final answer */
    pthread_mutex_lock(&s->mu);
    s->headers_done = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
  return r;
}

static int stream_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
  struct s3_stream *s = ud;
  pthread_mutex_lock(&s->mu);
  int stop = s->closed;
  pthread_mutex_unlock(&s->mu);
  return stop;
}

static void *stream_main(void *arg) {
  struct s3_stream *s = arg;
  struct fm_storage_handle *h = s->h;
  struct curl_slist *hdrs = NULL;
  char url[2400], sha_hdr[100];
  snprintf(url, sizeof url, "%s/%s", h->base, s->key);
  snprintf(sha_hdr, sizeof sha_hdr, "x-amz-content-sha256: %s", empty_sha);
  hdrs = curl_slist_append(hdrs, sha_hdr);
  if (h->token_hdr[0]) hdrs = curl_slist_append(hdrs, h->token_hdr);
  CURL *cu = curl_easy_init();
  int rc = FM_E_NOMEM;
  if (cu && hdrs) {
    curl_easy_setopt(cu, CURLOPT_URL, url);
    curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(cu, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt(cu, CURLOPT_USERPWD, h->userpwd);
    curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_TIME, (long)h->cfg.timeout_s);
    curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, stream_header);
    curl_easy_setopt(cu, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(cu, CURLOPT_WRITEDATA, &s->call);
    curl_easy_setopt(cu, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(cu, CURLOPT_XFERINFOFUNCTION, stream_progress);
    curl_easy_setopt(cu, CURLOPT_XFERINFODATA, s);
    curl_easy_setopt(cu, CURLOPT_USERAGENT, "faultmaven/" FM_VERSION);
    CURLcode cr = curl_easy_perform(cu);
    rc = cr == CURLE_OK ? 0
         : cr == CURLE_OPERATION_TIMEDOUT ? FM_E_TIMEOUT
         : cr == CURLE_COULDNT_CONNECT || cr == CURLE_COULDNT_RESOLVE_HOST ? FM_E_CONNECT
                                                                           : FM_E_IO;
    if (rc)
      fm_storage_fail(&s->err, FM_STORAGE_UNAVAILABLE, "S3 GET %s (bucket %s): %s", s->key,
                      h->cfg.bucket, curl_easy_strerror(cr));
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(cu);
  pthread_mutex_lock(&s->mu);
  s->rc = rc;
  s->finished = 1;
  pthread_cond_broadcast(&s->cv);
  unpark(s);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static void stream_free(struct s3_stream *s) {
  pthread_mutex_lock(&s->mu);
  s->closed = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  call_free(&s->call);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->ring);
  free(s);
}

static void stream_close_cb(void *ud) { stream_free(ud); }

/* libmicrohttpd's I/O thread: hands over what the GET brought so far. With nothing there yet
 * it parks the connection (fm_http_park) instead of waiting; the GET thread unparks it when
 * bytes, the end or an error arrive (a stalled S3 ends the GET after S3_TIMEOUT_S). */
static long stream_read_cb(void *ud, uint64_t pos, char *buf, size_t max, void *conn) {
  struct s3_stream *s = ud;
  pthread_mutex_lock(&s->mu);
  long n;
  if (s->len) {
    size_t chunk = s->len < max ? s->len : max;
    if (chunk > RING - s->head) chunk = RING - s->head;
    memcpy(buf, s->ring + s->head, chunk);
    s->head = (s->head + chunk) % RING;
    s->len -= chunk;
    pthread_cond_broadcast(&s->cv);
    n = (long)chunk;
  } else if (!s->finished) {
    s->parked = conn; /* under s->mu: the GET thread cannot unpark before this park */
    fm_http_park(conn);
    n = FM_RESP_PARKED;
  } else if (s->rc == 0) {
    n = 0;
  } else {
    fm_warn("%s", s->err.msg);
    n = -1; /* the client sees a cut connection, never a short body passed off as whole */
  }
  pthread_mutex_unlock(&s->mu);
  return n;
}

static int s3_open_stream(struct fm_storage_handle *h, const char *key, struct fm_resp_stream *rs,
                          struct fm_storage_info *info, struct fm_storage_error *e) {
  if (!fm_storage_valid_key(key)) return fm_storage_fail(e, FM_STORAGE_INVALID, "invalid key");
  for (int n = 0;; n++) {
    struct fm_breaker_ticket t;
    double retry_in = 0;
    if (!fm_breaker_acquire(h->cfg.breaker, &t, &retry_in))
      return fm_storage_fail(e, FM_STORAGE_UNAVAILABLE,
                             "S3 (bucket %s) temporarily unavailable: circuit breaker '%s' is open",
                             h->cfg.bucket, h->cfg.breaker);
    struct s3_stream *s = calloc(1, sizeof *s);
    if (s) s->ring = malloc(RING);
    if (!s || !s->ring) {
      if (s) free(s);
      fm_breaker_release(&t, FM_BREAKER_NEUTRAL);
      return fm_storage_fail(e, FM_STORAGE_ERROR, "out of memory");
    }
    s->h = h;
    snprintf(s->key, sizeof s->key, "%s", key);
    s->call.method = "GET";
    s->call.key = s->key;
    s->call.sink = stream_sink;
    s->call.sink_ud = s;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, stream_main, s) != 0) {
      pthread_mutex_destroy(&s->mu);
      pthread_cond_destroy(&s->cv);
      free(s->ring);
      free(s);
      fm_breaker_release(&t, FM_BREAKER_NEUTRAL);
      return fm_storage_fail(e, FM_STORAGE_ERROR, "cannot start a download thread");
    }
    /* wait for the answer's headers (or the end, for an error answer or a network failure) */
    pthread_mutex_lock(&s->mu);
    while (!s->finished && !(s->headers_done && s->call.status >= 200 && s->call.status < 300))
      pthread_cond_wait(&s->cv, &s->mu);
    int rc = s->rc;
    long status = s->call.status;
    pthread_mutex_unlock(&s->mu);
    fm_breaker_release(&t, fm_breaker_classify(rc, status));
    if (!rc && status >= 200 && status < 300) {
      info_from_headers(&s->call.headers, info);
      memset(rs, 0, sizeof *rs);
      rs->fd = -1;
      rs->size = header_value(&s->call.headers, "Content-Length", (char[32]){0}, 32)
                     ? info->size
                     : FM_RESP_SIZE_UNKNOWN;
      rs->read = stream_read_cb;
      rs->close = stream_close_cb;
      rs->ud = s;
      return 0;
    }
    int again = rc ? 1 : retryable_status(status, &s->call.body_out);
    int out;
    if (rc) {
      out = fm_storage_fail(e, s->err.code, "%s", s->err.msg);
    } else {
      s->call.key = key;
      out = status_error(h, &s->call, e);
    }
    stream_free(s);
    if (!again || n >= h->cfg.max_retries) return out;
    double d = 0.1 * (double)(1 << (n < 6 ? n : 6));
    fm_sleep(fm_jitter(d > 5 ? 5 : d));
  }
}

const struct fm_storage_driver fm_storage_s3_driver = {
    .name = "s3",
    .open = s3_open,
    .close = s3_close,
    .put_file = s3_put_file,
    .put_mem = s3_put_mem,
    .get_mem = s3_get_mem,
    .get_file = s3_get_file,
    .head = s3_head,
    .del = s3_del,
    .list = s3_list,
    .presign = s3_presign,
    .ping = s3_ping,
    .open_stream = s3_open_stream,
};
