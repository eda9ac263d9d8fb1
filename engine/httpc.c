#include "httpc.h"

#include <curl/curl.h>
#include <string.h>
#include <strings.h>

int fm_httpc_global_init(struct fm_err *err) {
  CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (rc != CURLE_OK) return fm_err_set(err, FM_E_IO, "curl_global_init: %s", curl_easy_strerror(rc));
  return 0;
}

void fm_httpc_global_cleanup(void) { curl_global_cleanup(); }

struct sink {
  struct fm_buf *buf;
  size_t max;
  int too_big;
};

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  struct sink *s = ud;
  size_t len = size * n;
  if (s->buf->len + len > s->max) {
    s->too_big = 1;
    return 0; /* aborts the transfer */
  }
  return fm_buf_add(s->buf, p, len) ? 0 : len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  struct sink *s = ud;
  size_t len = size * n;
  /* A new status line starts a new header block (after 100-continue or a redirect). */
  if (len > 5 && strncmp(p, "HTTP/", 5) == 0) s->buf->len = 0;
  if (s->buf->len + len > 256 * 1024) {
    s->too_big = 1;
    return 0;
  }
  return fm_buf_add(s->buf, p, len) ? 0 : len;
}

void fm_httpc_res_free(struct fm_httpc_res *res) {
  if (!res) return;
  fm_buf_free(&res->headers);
  fm_buf_free(&res->body);
}

int fm_httpc_request(const struct fm_httpc_req *req, struct fm_httpc_res *res, struct fm_err *err) {
  memset(res, 0, sizeof *res);
  if (!req->url || (strncasecmp(req->url, "http://", 7) && strncasecmp(req->url, "https://", 8)))
    return fm_err_set(err, FM_E_INVAL, "url must start with http:// or https://");
  int rc = 0;
  struct curl_slist *hdrs = NULL;
  CURL *c = curl_easy_init();
  if (!c) return fm_err_set(err, FM_E_NOMEM, "curl_easy_init failed");
  struct sink body = {&res->body, req->max_body ? req->max_body : 16u << 20, 0};
  struct sink head = {&res->headers, 0, 0};
  const char *method = req->method ? req->method : "GET";
  double timeout = req->timeout_s > 0 ? req->timeout_s : 30;
  double ctimeout = req->connect_timeout_s > 0 ? req->connect_timeout_s : 10;

  curl_easy_setopt(c, CURLOPT_URL, req->url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(ctimeout * 1000));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &head);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "faultmaven/" FM_VERSION);
  if (strcmp(method, "HEAD") == 0) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  else if (strcmp(method, "GET") != 0) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  if (req->body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
  }
  for (size_t i = 0; i < req->nheaders; i++) {
    if (strpbrk(req->headers[i], "\r\n")) {
      rc = fm_err_set(err, FM_E_INVAL, "header contains a line break");
      goto done;
    }
    struct curl_slist *n = curl_slist_append(hdrs, req->headers[i]);
    if (!n) { rc = fm_err_set(err, FM_E_NOMEM, "out of memory"); goto done; }
    hdrs = n;
  }
  /* No "Expect: 100-continue" round trip for uploads. */
  struct curl_slist *n = curl_slist_append(hdrs, "Expect:");
  if (n) hdrs = n;
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);

  CURLcode cr = curl_easy_perform(c);
  if (cr != CURLE_OK) {
    if (body.too_big)
      rc = fm_err_set(err, FM_E_TOOBIG, "response body larger than %zu bytes", body.max);
    else if (head.too_big)
      rc = fm_err_set(err, FM_E_TOOBIG, "response headers too large");
    else if (cr == CURLE_OPERATION_TIMEDOUT)
      rc = fm_err_set(err, FM_E_TIMEOUT, "%s %s: timed out after %.3gs", method, req->url, timeout);
    else if (cr == CURLE_COULDNT_CONNECT || cr == CURLE_COULDNT_RESOLVE_HOST)
      rc = fm_err_set(err, FM_E_CONNECT, "%s %s: %s", method, req->url, curl_easy_strerror(cr));
    else
      rc = fm_err_set(err, FM_E_IO, "%s %s: %s", method, req->url, curl_easy_strerror(cr));
    goto done;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
done:
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  if (rc) fm_httpc_res_free(res);
  return rc;
}

int fm_httpc_url_hostport(const char *url, char *out, size_t outsz) {
  if (!url || !outsz) return FM_E_INVAL;
  out[0] = '\0';
  CURLU *u = curl_url();
  if (!u) return FM_E_NOMEM;
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = FM_E_INVAL;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    int n = snprintf(out, outsz, "%s:%s", host, port);
    if (n > 0 && (size_t)n < outsz) {
      for (char *p = out; *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
      rc = 0;
    } else {
      out[0] = '\0';
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}
