/* Unit tests for engine/analysis/classify.c (source and detailed type with a confidence) and for
 * the driver (analyze.c) on hostile input: empty, CRLF, invalid UTF-8, NUL bytes, binary,
 * compressed magic, lines longer than FM_AN_MAX_LINE across block boundaries, secrets kept out
 * of the summary and the digest, the digest bound. */
#include "analyze.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

/* Splits text into lines (at most 200) and classifies it. */
static void classify(const char *text, const char *filename, struct fm_an_class *c) {
  static struct fm_an_line lines[FM_AN_SNIFF_LINES];
  size_t n = 0, len = strlen(text);
  const char *p = text, *e = text + len;
  while (p < e && n < FM_AN_SNIFF_LINES) {
    const char *nl = memchr(p, '\n', (size_t)(e - p));
    size_t l = nl ? (size_t)(nl - p) : (size_t)(e - p);
    lines[n] = (struct fm_an_line){p, l, n + 1, 0};
    n++;
    p += l + 1;
  }
  fm_an_classify((const unsigned char *)text, len, lines, n, filename, NULL, c);
}

static void expect(const char *text, const char *filename, const char *source,
                   const char *detailed) {
  struct fm_an_class c;
  classify(text, filename, &c);
  if (strcmp(c.source_type, source) || strcmp(c.detailed_type, detailed))
    fprintf(stderr, "  %s: got %s/%s, expected %s/%s\n", filename ? filename : "(text)",
            c.source_type, c.detailed_type, source, detailed);
  CHECK(!strcmp(c.source_type, source) && !strcmp(c.detailed_type, detailed));
  CHECK(c.confidence > 0 && c.confidence < 1);
}

static char *read_fixture(const char *name, size_t *len) {
  /* __FILE__ is .../tests/test_an_classify.c: fixtures are beside tests/ */
  char path[4096];
  const char *f = __FILE__;
  const char *slash = strrchr(f, '/');
  int dir = slash ? (int)(slash - f) : 0;
  snprintf(path, sizeof path, "%.*s/../spec/fixtures/evidence/%s", dir, f, name);
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  char *buf = malloc(1 << 20);
  *len = fread(buf, 1, (1 << 20) - 1, fp);
  buf[*len] = '\0';
  fclose(fp);
  return buf;
}

static int analyze(const char *p, size_t n, const char *filename, struct fm_an_result *r) {
  struct fm_err err = {0};
  struct fm_an_opts o = {.filename = filename};
  int rc = fm_an_analyze_mem(p, n, &o, r, &err);
  if (rc) fprintf(stderr, "analyze: %s\n", err.msg);
  return rc;
}

static int valid_utf8(const char *p, size_t n) {
  struct fm_buf b = {0};
  fm_an_utf8_sanitize(&b, p, n);
  /* sanitizing a valid string without NULs changes nothing */
  int same = b.len == n && (n == 0 || !memcmp(b.p, p, n));
  fm_buf_free(&b);
  return same;
}

static json_int_t enc(const struct fm_an_result *r, const char *k) {
  json_t *v = json_object_get(json_object_get(r->summary, "encoding"), k);
  return json_is_boolean(v) ? json_is_true(v) : json_integer_value(v);
}

int main(void) {
  /* configuration, code, text, binary: the classifier's own heuristics */
  expect("server:\n  port: 8080\n  host: 0.0.0.0\nlogging:\n  level: info\n  - a\n", "app.yaml",
         "configuration", "config_file");
  expect("[database]\nhost = db\nport = 5432\n\n[cache]\nttl = 60\n", "my.cnf", "configuration",
         "config_file");
  expect("APP_ENV=prod\nLOG_LEVEL=info\nPORT=8080\n", ".env", "configuration", "config_file");
  expect("{\n  \"name\": \"x\",\n  \"port\": 8080,\n  \"debug\": false\n}\n", "settings.json",
         "configuration", "config_file");
  expect("#include <stdio.h>\n\nint main(void) {\n  printf(\"hi\");\n  return 0;\n}\n", "m.c",
         "code", "source_code");
  expect("We rolled back the deploy and latency recovered.\nNobody was paged.\n", NULL, "text",
         "text");
  expect("{\"traceId\":\"4bf92f\",\"spanId\":\"00f067\",\"name\":\"GET /\"}\n"
         "{\"traceId\":\"4bf92f\",\"spanId\":\"00f068\",\"name\":\"SELECT\"}\n",
         "spans.jsonl", "logs", "trace_data");
  expect("error: could not open file\nfatal: not a git repository\nerror: build failed\n", NULL,
         "logs", "error_output");

  struct fm_an_class c;
  classify("\x1f\x8b\x08\x00\x00\x00\x00\x00", NULL, &c);
  CHECK(c.binary && c.compressed && !strcmp(c.compressed, "gzip"));
  const unsigned char magics[][8] = {{'B', 'Z', 'h', '9', '1', 'A', 'Y', '&'},
                                     {0xfd, '7', 'z', 'X', 'Z', 0, 0, 4},
                                     {0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0},
                                     {'P', 'K', 3, 4, 20, 0, 0, 0}};
  const char *names[] = {"bzip2", "xz", "zstd", "zip"};
  for (int i = 0; i < 4; i++) {
    int z = 0;
    const char *m = fm_an_magic(magics[i], 8, &z);
    CHECK(m && !strcmp(m, names[i]) && z == 1);
  }
  int z = 1;
  CHECK(fm_an_magic((const unsigned char *)"BZhello", 7, &z) == NULL && z == 0);
  unsigned char bin[512];
  for (size_t i = 0; i < sizeof bin; i++) bin[i] = (unsigned char)(i * 7);
  struct fm_an_line none = {(const char *)bin, 0, 1, 0};
  fm_an_classify(bin, sizeof bin, &none, 1, NULL, NULL, &c);
  CHECK(c.binary && !c.compressed && !strcmp(c.source_type, "binary"));

  /* my fixtures through the driver */
  static const struct {
    const char *file, *source, *detailed;
  } fx[] = {
      {"an-config-secrets.yaml", "configuration", "config_file"},
      {"an-app.env", "configuration", "config_file"},
      {"an-code.py", "code", "source_code"},
      {"an-notes.txt", "text", "text"},
  };
  for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) {
    size_t len;
    char *t = read_fixture(fx[i].file, &len);
    CHECK(t != NULL);
    if (!t) continue;
    struct fm_an_result r;
    if (analyze(t, len, fx[i].file, &r) == 0) {
      if (strcmp(r.source_type, fx[i].source) || strcmp(r.detailed_type, fx[i].detailed))
        fprintf(stderr, "  %s: %s/%s\n", fx[i].file, r.source_type, r.detailed_type);
      CHECK_STR(r.source_type, fx[i].source);
      CHECK_STR(r.detailed_type, fx[i].detailed);
    }
    fm_an_result_free(&r);
    free(t);
  }

  /* the config with secrets: 9 secrets found; none of the values anywhere in the output */
  size_t len;
  char *t = read_fixture("an-config-secrets.yaml", &len);
  struct fm_an_result r;
  if (t && analyze(t, len, "an-config-secrets.yaml", &r) == 0) {
    json_t *sec = json_object_get(r.summary, "secrets");
    CHECK(json_integer_value(json_object_get(sec, "count")) == 9);
    const char *values[] = {"Sup3r-S3cret", "Hunter2Pass", "9f8e7d6c5b4a", "AKIAIOSFODNN7EXAMPLE",
                            "wJalrXUtnFEMI", "MIIEowIBAAKCAQEA", "xoxb-1234", "ghp_abcdef",
                            "eyJzdWIiOiJhZG1pbiJ9"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
      CHECK(!strstr(r.summary_json, values[i]));
      CHECK(!strstr(r.digest, values[i]));
    }
    CHECK(strstr(r.digest, "Secrets: 9") != NULL);
    fm_an_result_free(&r);
  }
  free(t);

  /* empty input */
  if (analyze("", 0, NULL, &r) == 0) {
    CHECK(r.bytes == 0 && r.lines == 0 && !r.binary);
    CHECK_STR(r.detailed_type, "empty");
    fm_an_result_free(&r);
  }

  /* CRLF, invalid UTF-8 and NUL bytes: counted, and the output is valid UTF-8 */
  const char hostile[] = "line one\r\nbad \xff\xfe bytes \xc3\x28 here\r\nnul \0 in \0 line\r\n"
                         "cut \xe2\x82";
  if (analyze(hostile, sizeof hostile - 1, "h.log", &r) == 0) {
    CHECK(r.lines == 4);
    CHECK(enc(&r, "crlf_lines") == 3 && enc(&r, "crlf") == 1);
    CHECK(enc(&r, "nul_bytes") == 2);
    CHECK(enc(&r, "valid_utf8") == 0 && enc(&r, "invalid_sequences") == 4);
    CHECK(valid_utf8(r.summary_json, r.summary_len));
    CHECK(valid_utf8(r.digest, r.digest_len));
    CHECK(!r.binary);
    fm_an_result_free(&r);
  }

  /* a line of 3 MiB crossing block boundaries, between short lines: cut, counted, and a
   * signature at its very end is still found on line 2 */
  size_t big = 3u << 20;
  char *b = malloc(big + 64);
  memcpy(b, "first\n", 6);
  memset(b + 6, 'x', big);
  memcpy(b + 6 + big - 25, " No space left on device", 24);
  memcpy(b + 6 + big, "\nlast\n", 6);
  if (analyze(b, big + 12, NULL, &r) == 0) {
    CHECK(r.lines == 3);
    CHECK(json_integer_value(json_object_get(r.summary, "truncated_lines")) == 1);
    json_t *sig = json_array_get(json_object_get(r.summary, "signatures"), 0);
    CHECK_STR(json_string_value(json_object_get(sig, "name")), "disk_full");
    CHECK(json_integer_value(json_object_get(sig, "first_line")) == 2);
    CHECK(r.digest_len <= FM_AN_DIGEST_MAX);
    fm_an_result_free(&r);
  }
  free(b);

  /* binary: no line modules, the scan still runs */
  unsigned char blob[4096];
  for (size_t i = 0; i < sizeof blob; i++) blob[i] = (unsigned char)((i * 131) ^ (i >> 3));
  memcpy(blob + 2000, "Segmentation fault", 18);
  if (analyze((const char *)blob, sizeof blob, "core", &r) == 0) {
    CHECK(r.binary && !strcmp(r.source_type, "binary"));
    CHECK(!json_object_get(r.summary, "logs"));
    CHECK(json_array_size(json_object_get(r.summary, "signatures")) >= 1);
    CHECK(valid_utf8(r.summary_json, r.summary_len));
    fm_an_result_free(&r);
  }
  /* gzip: reported, not decompressed */
  const char gz[] = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9\xc9\x07\x00";
  if (analyze(gz, sizeof gz - 1, "x.log.gz", &r) == 0) {
    CHECK(r.binary && r.compressed && !strcmp(r.compressed, "gzip"));
    CHECK_STR(json_string_value(json_object_get(r.summary, "compressed")), "gzip");
    CHECK(strstr(r.digest, "gzip") != NULL);
    fm_an_result_free(&r);
  }

  /* the digest bound: many distinct error lines with multi-byte characters */
  struct fm_buf many = {0};
  for (int i = 0; i < 20000; i++)
    fm_buf_printf(&many, "2026-03-12 10:%02d:%02d ERROR \xc3\xa9v\xc3\xa9nement %d \xe2\x82\xac "
                         "failed for user u%d password=pw%d\n",
                  (i / 60) % 60, i % 60, i, i * 7, i);
  if (analyze(many.p, many.len, "big.log", &r) == 0) {
    CHECK(r.digest_len <= FM_AN_DIGEST_MAX && strlen(r.digest) == r.digest_len);
    CHECK(valid_utf8(r.digest, r.digest_len));
    CHECK(!strstr(r.digest, "password=pw") && !strstr(r.summary_json, "password=pw"));
    CHECK(json_integer_value(json_object_get(json_object_get(r.summary, "secrets"), "count")) ==
          20000);
    fm_an_result_free(&r);
  }
  fm_buf_free(&many);

  /* the 10,000-byte cut never splits a character */
  const char euro[] = "\xe2\x82\xac\xe2\x82\xac";
  CHECK(fm_an_utf8_cut(euro, 6, 4) == 3);
  CHECK(fm_an_utf8_cut(euro, 6, 6) == 6);
  CHECK(fm_an_utf8_cut(euro, 6, 2) == 0);
  return check_done();
}
