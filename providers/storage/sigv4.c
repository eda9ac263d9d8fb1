/* sigv4.c: AWS Signature Version 4 pieces the S3 driver needs besides what libcurl signs itself:
 * the query-string presigner (presigned GET URLs). Requests are signed by libcurl
 * (CURLOPT_AWS_SIGV4); URLs handed to others cannot be, so they are built here. SHA-256 and
 * HMAC-SHA256 come from libsodium. Checked against the AWS test vectors in tests/test_sigv4.c. */
#include "storage.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

static void hex(const unsigned char *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

void fm_sigv4_sha256_hex(const void *data, size_t n, char out[65]) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, data, n);
  hex(h, sizeof h, out);
}

static void hmac(const unsigned char *key, size_t keylen, const void *msg, size_t n,
                 unsigned char out[32]) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, keylen);
  crypto_auth_hmacsha256_update(&st, msg, n);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof st);
}

void fm_sigv4_signing_key(const char *secret, const char *date8, const char *region,
                          const char *service, unsigned char key[32]) {
  unsigned char k[32];
  char first[300];
  int n = snprintf(first, sizeof first, "AWS4%s", secret);
  if (n < 0 || (size_t)n >= sizeof first) n = (int)sizeof first - 1;
  hmac((const unsigned char *)first, (size_t)n, date8, strlen(date8), k);
  hmac(k, sizeof k, region, strlen(region), k);
  hmac(k, sizeof k, service, strlen(service), k);
  hmac(k, sizeof k, "aws4_request", 12, key);
  sodium_memzero(first, sizeof first);
  sodium_memzero(k, sizeof k);
}

void fm_sigv4_hmac_hex(const unsigned char key[32], const char *msg, size_t n, char out[65]) {
  unsigned char m[32];
  hmac(key, 32, msg, n, m);
  hex(m, sizeof m, out);
}

int fm_sigv4_string_to_sign(const char *amz_date, const char *scope, const char *canonical,
                            struct fm_buf *out) {
  char h[65];
  fm_sigv4_sha256_hex(canonical, strlen(canonical), h);
  return fm_buf_printf(out, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, h);
}

int fm_sigv4_uri_encode(const char *s, int keep_slash, struct fm_buf *out) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char c = *p;
    int unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
    int rc = unreserved || (keep_slash && c == '/') ? fm_buf_addc(out, (char)c)
                                                     : fm_buf_printf(out, "%%%02X", c);
    if (rc) return FM_E_NOMEM;
  }
  return 0;
}

static int valid_date(const char *d) {
  if (strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z') return 0;
  for (int i = 0; i < 15; i++)
    if (i != 8 && (d[i] < '0' || d[i] > '9')) return 0;
  return 1;
}

int fm_sigv4_presign_url(const struct fm_sigv4_presign *p, struct fm_buf *url,
                         struct fm_buf *canonical, struct fm_buf *sts, struct fm_err *err) {
  if (!p->amz_date || !valid_date(p->amz_date))
    return fm_err_set(err, FM_E_INVAL, "sigv4: the date must be YYYYMMDDTHHMMSSZ");
  if (p->expires_s < 1 || p->expires_s > 604800)
    return fm_err_set(err, FM_E_INVAL, "sigv4: expires must be 1 to 604800 seconds (7 days)");
  if (!p->path || p->path[0] != '/' || !p->host || !p->host[0] || !p->access_key ||
      !p->secret_key || !p->region || !p->service)
    return fm_err_set(err, FM_E_INVAL, "sigv4: missing host, path, credentials or region");
  if (sodium_init() < 0) return fm_err_set(err, FM_E_IO, "sigv4: libsodium did not initialise");
  char date8[9];
  memcpy(date8, p->amz_date, 8);
  date8[8] = '\0';
  struct fm_buf scope = {0}, q = {0}, path = {0}, canon = {0}, tosign = {0};
  int rc = FM_E_NOMEM;
  if (fm_buf_printf(&scope, "%s/%s/%s/aws4_request", date8, p->region, p->service)) goto done;
  /* The query, its parameters in byte order of their names (X-Amz-Security-Token sorts last). */
  if (fm_buf_adds(&q, "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=") ||
      fm_sigv4_uri_encode(p->access_key, 0, &q) || fm_buf_adds(&q, "%2F") ||
      fm_sigv4_uri_encode(fm_buf_cstr(&scope), 0, &q) ||
      fm_buf_printf(&q, "&X-Amz-Date=%s&X-Amz-Expires=%ld", p->amz_date, p->expires_s))
    goto done;
  if (p->session_token && p->session_token[0] &&
      (fm_buf_adds(&q, "&X-Amz-Security-Token=") || fm_sigv4_uri_encode(p->session_token, 0, &q)))
    goto done;
  if (fm_buf_adds(&q, "&X-Amz-SignedHeaders=host")) goto done;
  if (fm_sigv4_uri_encode(p->path, 1, &path)) goto done;
  if (fm_buf_printf(&canon, "%s\n%s\n%s\nhost:%s\n\nhost\nUNSIGNED-PAYLOAD",
                    p->method ? p->method : "GET", fm_buf_cstr(&path), fm_buf_cstr(&q), p->host))
    goto done;
  if (fm_sigv4_string_to_sign(p->amz_date, fm_buf_cstr(&scope), fm_buf_cstr(&canon), &tosign))
    goto done;
  unsigned char key[32];
  char sig[65];
  fm_sigv4_signing_key(p->secret_key, date8, p->region, p->service, key);
  fm_sigv4_hmac_hex(key, fm_buf_cstr(&tosign), tosign.len, sig);
  sodium_memzero(key, sizeof key);
  if (fm_buf_printf(url, "%s://%s%s?%s&X-Amz-Signature=%s", p->scheme ? p->scheme : "https",
                    p->host, fm_buf_cstr(&path), fm_buf_cstr(&q), sig))
    goto done;
  if (canonical && fm_buf_add(canonical, canon.p, canon.len)) goto done;
  if (sts && fm_buf_add(sts, tosign.p, tosign.len)) goto done;
  rc = 0;
done:
  if (rc) fm_err_set(err, rc, "out of memory");
  fm_buf_free(&scope);
  fm_buf_free(&q);
  fm_buf_free(&path);
  fm_buf_free(&canon);
  fm_buf_free(&tosign);
  return rc;
}
