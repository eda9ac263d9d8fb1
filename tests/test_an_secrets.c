/* Unit tests for engine/analysis/secrets.c: each kind of secret is found and redacted, and the
 * look-alikes are left alone (a policy named password_*, a UUID, token counts, public keys). */
#include "analysis.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

static struct fm_buf out;
static uint64_t counts[FM_AN_SECRET_NKINDS];

/* Redacts s; returns the text (valid until the next call) and sets *n to the number found. */
static const char *red(const char *s, long *n) {
  out.len = 0;
  memset(counts, 0, sizeof counts);
  *n = fm_an_redact(s, strlen(s), &out, counts);
  return fm_buf_cstr(&out);
}

/* s has exactly one secret of kind, whose value `value` is gone from the output. */
static void one(const char *s, int kind, const char *value) {
  long n;
  const char *r = red(s, &n);
  int ok = n == 1 && counts[kind] == 1 && !strstr(r, value) && strstr(r, "[REDACTED:");
  if (!ok) fprintf(stderr, "  input:  %s\n  output: %s (n=%ld)\n", s, r, n);
  CHECK(ok);
}

/* s has no secret: the output equals the input. */
static void none(const char *s) {
  long n;
  const char *r = red(s, &n);
  if (n != 0) fprintf(stderr, "  false positive: %s\n  -> %s\n", s, r);
  CHECK(n == 0 && strcmp(r, s) == 0);
}

int main(void) {
  /* fields */
  one("password: hunter2", FM_AN_SECRET_PASSWORD, "hunter2");
  one("  db_password = \"p@ss word!\"", FM_AN_SECRET_PASSWORD, "p@ss word");
  one("{\"password\": \"s3cr3t\", \"user\": \"bob\"}", FM_AN_SECRET_PASSWORD, "s3cr3t");
  one("export DB_PASSWD=abc123", FM_AN_SECRET_PASSWORD, "abc123");
  one("login user=bob password=hunter22 ip=10.0.0.1", FM_AN_SECRET_PASSWORD, "hunter22");
  one("api_token: 8f14e45fceea167a5a36dedd4bea2543", FM_AN_SECRET_TOKEN, "8f14e45f");
  one("client_secret=Zm9vYmFyYmF6cXV4", FM_AN_SECRET_SECRET, "Zm9vYmFy");
  one("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", FM_AN_SECRET_KEY,
      "wJalrXUtnFEMI");
  one("GET /cb?access_token=ya29a0AfH6SMBx3kq&state=1", FM_AN_SECRET_TOKEN, "ya29a0AfH6SMBx3kq");
  /* patterns */
  one("id AKIAIOSFODNN7EXAMPLE used", FM_AN_SECRET_AWS_KEY, "AKIAIOSFODNN7EXAMPLE");
  one("ASIAY34FZKBOKMUTVV7A", FM_AN_SECRET_AWS_KEY, "ASIAY34FZKBOKMUTVV7A");
  one("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAABG5vbmUAAAAE\n"
      "-----END OPENSSH PRIVATE KEY-----\nafter",
      FM_AN_SECRET_PRIVATE_KEY, "b3BlbnNzaC1rZXktdjEAAAAA");
  /* a block cut off before its END marker: everything after BEGIN goes */
  one("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMx", FM_AN_SECRET_PRIVATE_KEY,
      "MIIEowIBAAKCAQEA");
  one("access_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6y",
      FM_AN_SECRET_TOKEN, "SflKxwRJSMeKKF2QT4fw"); /* a token field holding a JWT: one secret */
  one("saw eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c in",
      FM_AN_SECRET_JWT, "eyJzdWIiOiIxMjM0In0");
  one("cut eyJhbGciOiJIUzI1NiJ9.eyJzdW", FM_AN_SECRET_JWT, "eyJzdW");
  one("dsn postgres://app:Tr0ub4dor@db:5432/app", FM_AN_SECRET_CONN, "Tr0ub4dor");
  one("redis://:p4ss@cache:6379/0", FM_AN_SECRET_CONN, "p4ss");
  one("uri mongodb+srv://app:M0ng0pw@cluster0.example.net/db", FM_AN_SECRET_CONN, "M0ng0pw");
  one("Server=db;User Id=sa;Password=Secr3t!;Encrypt=true", FM_AN_SECRET_PASSWORD, "Secr3t");
  one("url jdbc:postgresql://db:5432/app?user=app&password=Jd8cPw&ssl=true",
      FM_AN_SECRET_PASSWORD, "Jd8cPw");
  one("Authorization: Bearer abcdef0123456789abcdef", FM_AN_SECRET_TOKEN, "abcdef0123456789");
  one("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", FM_AN_SECRET_TOKEN, "ghp_abcdefghij");
  one("hook xoxb-123456789012-abcdefghijkl", FM_AN_SECRET_TOKEN, "xoxb-1234");

  /* what stays: the field names, the user of a connection string, the BEGIN marker */
  long n;
  const char *r = red("url=postgres://app:pw1234@db/app", &n);
  CHECK(n == 1 && strstr(r, "postgres://app:[REDACTED:") && strstr(r, "@db/app"));
  r = red("password: x", &n);
  CHECK_STR(r, "password: [REDACTED:password]");
  r = red("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\nok", &n);
  CHECK_STR(r, "-----BEGIN EC PRIVATE KEY-----[REDACTED:private_key]\nok");
  /* several on one line, each counted */
  r = red("user=a password=b1 token=abcdefgh12 key AKIAIOSFODNN7EXAMPLE", &n);
  CHECK(n == 3 && counts[FM_AN_SECRET_PASSWORD] == 1 && counts[FM_AN_SECRET_TOKEN] == 1 &&
        counts[FM_AN_SECRET_AWS_KEY] == 1);
  CHECK(!strstr(r, "b1 ") && !strstr(r, "abcdefgh12") && !strstr(r, "AKIA"));

  /* false positives */
  none("password_policy: strict");
  none("password_min_length = 12");
  none("id: 123e4567-e89b-12d3-a456-426614174000");
  none("trace 9F8E7D6C-5B4A-3928-1706-F5E4D3C2B1A0 done");
  none("AKIAIOSFODNN7EXAMPL"); /* 19 characters */
  none("XAKIAIOSFODNN7EXAMPLE"); /* inside a word */
  none("token_ttl: 3600");
  none("max_tokens: 512");
  none("primary_key: id");
  none("sort_key = created_at");
  none("public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmZ5PYr3s7nQ0x");
  none("password: ${DB_PASSWORD}");
  none("password: \"\"");
  none("password: null");
  none("password: ********");
  none("password: <your password here>");
  none("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
       "-----END PUBLIC KEY-----");
  none("-----BEGIN CERTIFICATE-----");
  none("PWD=/srv/app");
  none("FATAL: password authentication failed for user \"bob\"");
  none("see https://example.com:8443/path?q=1");
  none("basic authentication is enabled");
  none("if (a == b) { token = next(); }");
  none("2026-03-12 14:02:11 UTC [2345] FATAL:  sorry, too many clients already");

  /* the line module: counts per kind, findings with the field and never the value */
  struct fm_an_secrets *s = fm_an_secrets_new();
  const char *lines[] = {"a: 1", "db_password: hunter2", "aws: AKIAIOSFODNN7EXAMPLE",
                         "password_policy: strict"};
  for (size_t i = 0; i < 4; i++) {
    struct fm_an_line l = {lines[i], strlen(lines[i]), i + 1, 0};
    fm_an_secrets_line(s, &l);
  }
  json_t *o = json_object();
  CHECK(fm_an_secrets_finish(s, o) == 0);
  CHECK(json_integer_value(json_object_get(o, "count")) == 2);
  CHECK(json_integer_value(json_object_get(json_object_get(o, "kinds"), "password")) == 1);
  CHECK(json_integer_value(json_object_get(json_object_get(o, "kinds"), "aws_access_key")) == 1);
  json_t *f0 = json_array_get(json_object_get(o, "findings"), 0);
  CHECK(json_integer_value(json_object_get(f0, "line")) == 2);
  CHECK_STR(json_string_value(json_object_get(f0, "field")), "db_password");
  char *dump = json_dumps(o, 0);
  CHECK(dump && !strstr(dump, "hunter2") && !strstr(dump, "AKIAIOSFODNN7EXAMPLE"));
  free(dump);
  json_decref(o);
  fm_an_secrets_free(s);
  /* fuzz: random text made of the pieces the rules look for, 20,000 times; under ASan any
   * out-of-bounds read fails. (Redacting twice is not always a no-op for such soup: a second
   * pass can read a "[REDACTED:...]" marker as part of a new field; real text was not seen to.) */
  static const char *const pieces[] = {
      "-----BEGIN ", "RSA ", "PRIVATE KEY", "-----", "-----END ", "eyJ", "abcDEF012_-", ".", "://",
      ":", "=", " ", "\n", "\"", "'", "AKIA", "ABCDEFGHIJKLMNOP", "0123", "@", "/", "Bearer ",
      "password", "token", "_key", "secret", "ghp_", "xoxb-", "${X}", "#", "\t", "export ", "-",
      "user", "\xc3\xa9", "\xff", "*"};
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  struct fm_buf in = {0}, again = {0};
  int bad = 0;
  for (int iter = 0; iter < 20000; iter++) {
    in.len = 0;
    int np = 1 + (int)(seed % 24);
    for (int k = 0; k < np; k++) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      fm_buf_adds(&in, pieces[seed % (sizeof pieces / sizeof pieces[0])]);
    }
    out.len = 0;
    long c1 = fm_an_redact(in.p, in.len, &out, NULL);
    again.len = 0;
    long c2 = fm_an_redact(out.p ? out.p : "", out.len, &again, NULL);
    bad += c1 < 0 || c2 < 0 || (c1 == 0 && (out.len != in.len || memcmp(out.p, in.p, in.len)));
  }
  CHECK(bad == 0);
  fm_buf_free(&in);
  fm_buf_free(&again);
  fm_buf_free(&out);
  return check_done();
}
