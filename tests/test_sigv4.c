/* test_sigv4.c: the SigV4 pieces of providers/storage/sigv4.c against AWS's published vectors:
 *   - the presigned-URL example of the S3 docs ("Authenticating Requests: Using Query
 *     Parameters"): canonical request, string to sign, signature;
 *   - the header-signing GetObject example of the S3 docs (canonical request given there);
 *   - the AWS SigV4 test suite (get-vanilla, get-vanilla-query-order-key): string to sign and
 *     signature from the suite's canonical requests;
 * plus the storage key rules (paths that must never reach the file system). */
#include "check.h"
#include "storage.h"

#include <stdio.h>
#include <string.h>

static const char suite_secret[] = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
static const char s3doc_secret[] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/* Signs a canonical request the header way: checks the string to sign's hash and the signature. */
static void check_signed(const char *canonical, const char *date, const char *scope,
                         const char *secret, const char *region, const char *service,
                         const char *want_hash, const char *want_sig) {
  char h[65];
  fm_sigv4_sha256_hex(canonical, strlen(canonical), h);
  CHECK_STR(h, want_hash);
  struct fm_buf sts = {0};
  CHECK(fm_sigv4_string_to_sign(date, scope, canonical, &sts) == 0);
  char want_sts[512];
  snprintf(want_sts, sizeof want_sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", date, scope, want_hash);
  CHECK_STR(fm_buf_cstr(&sts), want_sts);
  char date8[9];
  memcpy(date8, date, 8);
  date8[8] = '\0';
  unsigned char key[32];
  fm_sigv4_signing_key(secret, date8, region, service, key);
  char sig[65];
  fm_sigv4_hmac_hex(key, sts.p, sts.len, sig);
  CHECK_STR(sig, want_sig);
  fm_buf_free(&sts);
}

static void test_presign_doc_example(void) {
  struct fm_sigv4_presign p = {
      .method = "GET", .scheme = "https", .host = "examplebucket.s3.amazonaws.com",
      .path = "/test.txt", .access_key = "AKIAIOSFODNN7EXAMPLE", .secret_key = s3doc_secret,
      .region = "us-east-1", .service = "s3", .amz_date = "20130524T000000Z",
      .expires_s = 86400};
  struct fm_buf url = {0}, canon = {0}, sts = {0};
  struct fm_err err = {0};
  CHECK(fm_sigv4_presign_url(&p, &url, &canon, &sts, &err) == 0);
  CHECK_STR(fm_buf_cstr(&canon),
            "GET\n"
            "/test.txt\n"
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
            "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
            "X-Amz-SignedHeaders=host\n"
            "host:examplebucket.s3.amazonaws.com\n"
            "\n"
            "host\n"
            "UNSIGNED-PAYLOAD");
  CHECK_STR(fm_buf_cstr(&sts),
            "AWS4-HMAC-SHA256\n"
            "20130524T000000Z\n"
            "20130524/us-east-1/s3/aws4_request\n"
            "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04");
  CHECK_STR(fm_buf_cstr(&url),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&"
            "X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&"
            "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
  fm_buf_free(&url);
  fm_buf_free(&canon);
  fm_buf_free(&sts);
}

static void test_presign_options(void) {
  /* a session token joins the signed query (sorted before X-Amz-SignedHeaders); path style */
  struct fm_sigv4_presign p = {
      .method = "GET", .scheme = "http", .host = "127.0.0.1:9000", .path = "/bucket/a b/c.txt",
      .access_key = "AK", .secret_key = "SK", .session_token = "tok/en+=",
      .region = "eu-west-1", .service = "s3", .amz_date = "20240101T000000Z", .expires_s = 60};
  struct fm_buf url = {0}, canon = {0};
  struct fm_err err = {0};
  CHECK(fm_sigv4_presign_url(&p, &url, &canon, NULL, &err) == 0);
  CHECK(strstr(fm_buf_cstr(&url), "http://127.0.0.1:9000/bucket/a%20b/c.txt?") ==
        fm_buf_cstr(&url));
  CHECK(strstr(fm_buf_cstr(&canon),
               "&X-Amz-Security-Token=tok%2Fen%2B%3D&X-Amz-SignedHeaders=host\n"));
  CHECK(strstr(fm_buf_cstr(&canon), "\nhost:127.0.0.1:9000\n"));
  fm_buf_free(&url);
  fm_buf_free(&canon);
  /* bad input is refused, not signed */
  p.expires_s = 604801;
  CHECK(fm_sigv4_presign_url(&p, &url, NULL, NULL, &err) == FM_E_INVAL);
  p.expires_s = 60;
  p.amz_date = "2024-01-01";
  CHECK(fm_sigv4_presign_url(&p, &url, NULL, NULL, &err) == FM_E_INVAL);
  fm_buf_free(&url);
}

static void test_header_doc_example(void) {
  /* S3 docs, "Example: GET Object" (header-based, Range: bytes=0-9) */
  check_signed(
      "GET\n"
      "/test.txt\n"
      "\n"
      "host:examplebucket.s3.amazonaws.com\n"
      "range:bytes=0-9\n"
      "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
      "x-amz-date:20130524T000000Z\n"
      "\n"
      "host;range;x-amz-content-sha256;x-amz-date\n"
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", s3doc_secret, "us-east-1", "s3",
      "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
      "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

static void test_suite(void) {
  const char *scope = "20150830/us-east-1/service/aws4_request";
  /* get-vanilla */
  check_signed("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
               "host;x-amz-date\n"
               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
               "20150830T123600Z", scope, suite_secret, "us-east-1", "service",
               "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
               "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
  /* get-vanilla-query-order-key */
  check_signed("GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\n"
               "x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
               "20150830T123600Z", scope, suite_secret, "us-east-1", "service",
               "704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89",
               "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1");
}

static void test_uri_encode(void) {
  struct fm_buf b = {0};
  CHECK(fm_sigv4_uri_encode("a-b_c.d~e/f g+h=%", 1, &b) == 0);
  CHECK_STR(fm_buf_cstr(&b), "a-b_c.d~e/f%20g%2Bh%3D%25");
  fm_buf_free(&b);
  CHECK(fm_sigv4_uri_encode("x/y", 0, &b) == 0);
  CHECK_STR(fm_buf_cstr(&b), "x%2Fy");
  fm_buf_free(&b);
}

static void test_keys(void) {
  CHECK(fm_storage_valid_key("uploads/abc/0123456789abcdef.txt"));
  CHECK(fm_storage_valid_key("a"));
  CHECK(fm_storage_valid_key("A_b-c.d/e"));
  const char *bad[] = {"", "/etc/passwd", "../x", "a/../b", "a/..", "..", ".", "a/./b",
                       "a//b", "a/", "a/.hidden", ".tmp/x", "a\\b", "a b", "a\nb", "é",
                       "a%2F..", "a..b"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (fm_storage_valid_key(bad[i])) fprintf(stderr, "accepted bad key '%s'\n", bad[i]);
    CHECK(!fm_storage_valid_key(bad[i]));
  }
  char long_key[FM_STORAGE_KEY_MAX + 2];
  memset(long_key, 'a', sizeof long_key - 1);
  long_key[sizeof long_key - 1] = '\0';
  CHECK(!fm_storage_valid_key(long_key));
  CHECK(fm_storage_valid_prefix("cases/case_1/evidence"));
  const char *badp[] = {"", "/a", "a/", "a//b", "A", "a.b", "..", "a/../b", "a b"};
  for (size_t i = 0; i < sizeof badp / sizeof badp[0]; i++)
    CHECK(!fm_storage_valid_prefix(badp[i]));
  char key[128], key2[128];
  struct fm_storage_error e = {0};
  CHECK(fm_storage_new_key("cases/x", key, sizeof key, &e) == 0);
  CHECK(fm_storage_new_key("cases/x", key2, sizeof key2, &e) == 0);
  CHECK(strlen(key) == strlen("cases/x/") + 32);
  CHECK(strncmp(key, "cases/x/", 8) == 0);
  CHECK(strcmp(key, key2) != 0);
  CHECK(fm_storage_valid_key(key));
  CHECK(fm_storage_new_key("../etc", key, sizeof key, &e) == -1);
  CHECK_STR(e.code, FM_STORAGE_INVALID);
}

int main(void) {
  test_presign_doc_example();
  test_presign_options();
  test_header_doc_example();
  test_suite();
  test_uri_encode();
  test_keys();
  return check_done();
}
