/* Unit tests for engine/analysis/logs.c: timestamps per format, severity, masking, Drain
 * grouping, bursts, the context window, worst error, errors per minute, transitions, hostile
 * lines and the digest bound. (The 2 M line memory bound is in test_an_logs_mem.c.) */
#include "analysis.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Runs the module over lines separated by "\n" and returns out.logs (the caller decrefs *root). */
static const json_t *run(const char *text, json_t **root) {
  struct fm_an_logs *s = fm_an_logs_new();
  uint64_t no = 0;
  const char *p = text;
  for (;;) {
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (!e && n == 0) break;
    struct fm_an_line l = {p, n, ++no, 0};
    fm_an_logs_line(s, &l);
    if (!e) break;
    p = e + 1;
  }
  *root = json_object();
  CHECK(fm_an_logs_finish(s, *root) == 0);
  fm_an_logs_free(s);
  return json_object_get(*root, "logs");
}

static const char *sget(const json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}
static long long iget(const json_t *o, const char *k) {
  return (long long)json_integer_value(json_object_get(o, k));
}

/* One line: the format, the first timestamp (UTC, ms) and the severity. */
/* fmt NULL: not checked; "": no timestamp expected */
static void ts_case(const char *line, const char *fmt, const char *iso, const char *sev) {
  json_t *root;
  const json_t *L = run(line, &root);
  const json_t *ts = json_object_get(L, "timestamps");
  if (fmt && fmt[0]) CHECK_STR(sget(ts, "format"), fmt);
  else if (fmt) CHECK(json_is_null(json_object_get(ts, "format")));
  if (iso) CHECK_STR(sget(ts, "first"), iso);
  if (sev) CHECK(iget(json_object_get(L, "severity"), sev) == 1);
  json_decref(root);
}

static int this_year(void) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  return tm.tm_year + 1900;
}

static void test_timestamps(void) {
  /* ISO 8601 / RFC 3339 */
  ts_case("2024-03-05T14:22:01.123Z INFO started", "iso8601", "2024-03-05T14:22:01.123Z", "info");
  ts_case("2024-03-05T14:22:01+02:00 app ready", "iso8601", "2024-03-05T12:22:01.000Z", NULL);
  ts_case("2024-03-05T14:22:01.5-0130 x", "iso8601", "2024-03-05T15:52:01.500Z", NULL);
  ts_case("2024-03-05 14:22:01 worker up", "iso8601", "2024-03-05T14:22:01.000Z", "unknown");
  ts_case("[2024-03-05 14:22:01] production.ERROR: boom", "iso8601", "2024-03-05T14:22:01.000Z",
          NULL);
  /* log4j / logback */
  ts_case("2024-03-05 14:22:01,123 ERROR [main] c.a.App - boom", "log4j",
          "2024-03-05T14:22:01.123Z", "error");
  ts_case("2024-03-05 14:22:01.123 [main] WARN  c.a.App - slow", "log4j",
          "2024-03-05T14:22:01.123Z", "warn");
  /* kubectl logs --timestamps, with a klog line inside */
  ts_case("2024-03-05T14:22:01.123456789Z E0305 14:22:01.123456 1 sync.go:9] failed", "kubernetes",
          "2024-03-05T14:22:01.123Z", "error");
  ts_case("2024-03-05T14:22:01.123456789Z level=warn msg=\"slow\"", "kubernetes", NULL, "warn");
  /* Go's RFC3339Nano trims trailing zeros */
  ts_case("2024-03-05T14:22:01.1234567Z {\"level\":\"error\",\"msg\":\"x\"}", "kubernetes",
          "2024-03-05T14:22:01.123Z", "error");
  /* syslog: no year; the current year when nothing else says */
  char want[40];
  snprintf(want, sizeof want, "%d-03-05T14:22:01.000Z", this_year());
  ts_case("Mar  5 14:22:01 web1 sshd[812]: Accepted publickey for deploy", "syslog", want, NULL);
  ts_case("<34>Oct 11 22:14:15 mymachine su: 'su root' failed", "syslog", NULL, NULL);
  {
    json_t *root;
    const json_t *L = run("2023-12-31T23:59:00Z boot\nDec 31 23:59:30 host kernel: oom-killer",
                          &root);
    const json_t *ts = json_object_get(L, "timestamps");
    CHECK_STR(sget(ts, "last"), "2023-12-31T23:59:30.000Z");
    CHECK(iget(ts, "year_assumed") == 2023);
    CHECK(json_real_value(json_object_get(ts, "span_seconds")) == 30.0);
    json_decref(root);
  }
  {
    /* the year rolls over between "Dec 31" and "Jan  1" */
    json_t *root;
    const json_t *L = run("2023-12-31T23:59:00Z boot\nDec 31 23:59:59 h a: x\nJan  1 00:00:01 h a: y",
                          &root);
    const json_t *ts = json_object_get(L, "timestamps");
    CHECK_STR(sget(ts, "last"), "2024-01-01T00:00:01.000Z");
    CHECK(json_real_value(json_object_get(ts, "span_seconds")) == 61.0);
    CHECK(iget(ts, "year_assumed") == 2024);
    json_decref(root);
  }
  /* Apache / nginx access: the status gives the severity */
  ts_case("10.0.0.1 - - [05/Mar/2024:14:22:01 +0100] \"GET /x HTTP/1.1\" 503 12 \"-\" \"curl\"",
          "apache", "2024-03-05T13:22:01.000Z", "error");
  ts_case("10.0.0.1 - bob [05/Mar/2024:14:22:01 +0000] \"GET /x HTTP/1.1\" 404 0", "apache", NULL,
          "warn");
  ts_case("10.0.0.1 - - [05/Mar/2024:14:22:01 +0000] \"POST /y HTTP/2.0\" 200 55", "apache", NULL,
          "info");
  /* nginx error log and Go's log package */
  ts_case("2024/03/05 14:22:01 [error] 31#31: *7 connect() failed (111: Connection refused)",
          "nginx_error", "2024-03-05T14:22:01.000Z", "error");
  ts_case("2024/03/05 14:22:01 listening on :8080", "go", "2024-03-05T14:22:01.000Z", NULL);
  ts_case("2024/03/05 14:22:01.250000 handler done", "go", "2024-03-05T14:22:01.250Z", NULL);
  /* klog */
  snprintf(want, sizeof want, "%d-03-05T14:22:01.123Z", this_year());
  ts_case("E0305 14:22:01.123456   12 file.go:123] failed to sync pod", "klog", want, "error");
  ts_case("W0305 14:22:01.123456   12 file.go:123] retrying", "klog", NULL, "warn");
  /* dmesg -T and the Apache error log (ctime, with the year last) */
  ts_case("[Tue Mar  5 14:22:01 2024] Out of memory: Killed process 4242 (app)", "ctime",
          "2024-03-05T14:22:01.000Z", "error");
  ts_case("[Tue Mar 05 14:22:01.123456 2024] [proxy:error] [pid 12] AH00940: disabled", "ctime",
          "2024-03-05T14:22:01.123Z", "error");
  /* JSON lines: ISO strings, epoch seconds and millis, text and numeric levels */
  ts_case("{\"ts\":\"2024-03-05T14:22:01.123Z\",\"level\":\"error\",\"msg\":\"db timeout\"}", "json",
          "2024-03-05T14:22:01.123Z", "error");
  ts_case("{\"time\":1709648521,\"level\":\"WARN\",\"msg\":\"x\"}", "json",
          "2024-03-05T14:22:01.000Z", "warn");
  ts_case("{\"@timestamp\":1709648521123,\"severity\":\"info\",\"message\":\"x\"}", "json",
          "2024-03-05T14:22:01.123Z", "info");
  ts_case("{\"level\":50,\"time\":1709648521000,\"msg\":\"pino error\"}", "json",
          "2024-03-05T14:22:01.000Z", "error");
  ts_case("{\"a\":{\"time\":\"nested\"},\"t\":1709648521.5,\"lvl\":\"debug\"}", "json",
          "2024-03-05T14:22:01.500Z", "debug");
  /* not timestamps */
  ts_case("2024-13-05T14:22:01Z month 13", "", NULL, NULL);
  ts_case("hello world", "", NULL, NULL);
  ts_case("Marvin 5 14:22:01 x", "", NULL, NULL);
  ts_case("2024-03-05", "", NULL, NULL);

  /* detect: share of lines with a known timestamp and the dominant format */
  const char *ls[] = {"2024/03/05 14:22:01 [error] x", "2024/03/05 14:22:02 [warn] y", "junk", ""};
  struct fm_an_line l[4];
  for (int i = 0; i < 4; i++) l[i] = (struct fm_an_line){ls[i], strlen(ls[i]), (uint64_t)i + 1, 0};
  const char *fmt = NULL;
  double share = fm_an_logs_detect(l, 4, &fmt);
  CHECK(share > 0.66 && share < 0.67);
  CHECK_STR(fmt, "nginx_error");
}

static void test_severity(void) {
  ts_case("Traceback (most recent call last):", NULL, NULL, "error");
  ts_case("panic: runtime error: index out of range", NULL, NULL, "fatal");
  ts_case("java.lang.NullPointerException: x", NULL, NULL, "error");
  ts_case("\tat com.acme.X.y(X.java:1)", NULL, NULL, "unknown");
  ts_case("Caused by: java.io.IOException: x", NULL, NULL, "unknown");
  ts_case("time=2024-03-05T14:22:01Z level=warn msg=slow", NULL, NULL, "warn");
  ts_case("2024-03-05T14:22:01Z [CRITICAL] disk", NULL, NULL, "fatal");
  ts_case("2024-03-05T14:22:01Z web1 app: FATAL out of memory", NULL, NULL, "fatal");
  ts_case("2024-03-05T14:22:01Z DEBUG x", NULL, NULL, "debug");
  ts_case("2024-03-05T14:22:01Z TRACE x", NULL, NULL, "trace");
  ts_case("2024-03-05T14:22:01Z info: x", NULL, NULL, "info");
  ts_case("all good here", NULL, NULL, "unknown");
}

/* The template of a single line. */
static void mask_case(const char *line, const char *tmpl) {
  json_t *root;
  const json_t *L = run(line, &root);
  const json_t *t = json_array_get(json_object_get(L, "templates"), 0);
  CHECK_STR(sget(t, "template"), tmpl);
  json_decref(root);
}

static void test_masking(void) {
  mask_case("took 123 ms", "took <*> ms");
  mask_case("took 1.5s and -3", "took <*> and <*>");
  mask_case("req 3f2b9c1e-8a4d-4b7e-9f10-2c3d4e5f6a7b done", "req <*> done");
  mask_case("from 10.0.0.1 and 192.168.1.20:5432", "from <*> and <*>");
  mask_case("peer fe80::1ff:fe23:4567:890a and ::1", "peer <*> and <*>");
  mask_case("addr 0x7f3a2b hash deadbeefcafe word cafe", "addr <*> hash <*> word cafe");
  mask_case("open /var/log/app.log and C:\\tmp\\x.txt", "open <*> and <*>");
  mask_case("mail alice@example.com sent", "mail <*> sent");
  mask_case("user_id=42 status=ok path=/a/b", "user_id=<*> status=ok path=<*>");
  mask_case("failed (id 42), retry", "failed (id <*>), retry");
  mask_case("pod web-7f8d9c-x2kq9 ready", "pod <*> ready");
  /* the timestamp and the level right after it are not part of the template */
  mask_case("2024-03-05 14:22:01,123 ERROR cannot connect", "cannot connect");
  mask_case("{\"ts\":1709648521,\"msg\":\"user 42 logged in\"}", "user <*> logged in");
}

static void test_drain(void) {
  json_t *root;
  const json_t *L = run("Connected to db-7 in 12 ms\n"
                        "User alice logged in\n"
                        "Connected to db-3 in 40 ms\n"
                        "User bob logged in\n"
                        "Disk full on /dev/sda1\n"
                        "Connection refused by peer\n"
                        "User carol logged in\n"
                        "User dave logged out of session\n",
                        &root);
  const json_t *ts = json_object_get(L, "templates");
  CHECK(iget(L, "total_templates") == 5);
  CHECK(json_array_size(ts) == 5);
  /* sorted by count, then first line */
  CHECK_STR(sget(json_array_get(ts, 0), "template"), "User <*> logged in");
  CHECK(iget(json_array_get(ts, 0), "count") == 3);
  CHECK(iget(json_array_get(ts, 0), "first_line") == 2);
  CHECK_STR(sget(json_array_get(ts, 0), "example"), "User alice logged in");
  CHECK_STR(sget(json_array_get(ts, 1), "template"), "Connected to <*> in <*> ms");
  CHECK(iget(json_array_get(ts, 1), "count") == 2);
  CHECK_STR(sget(json_array_get(ts, 2), "template"), "Disk full on <*>");
  CHECK_STR(sget(json_array_get(ts, 3), "template"), "Connection refused by peer");
  CHECK(iget(L, "other_lines") == 0);
  json_decref(root);
}

/* n error lines at the given line numbers among info lines; returns out.logs. */
static const json_t *errors_at(const int *at, int n, int total, json_t **root) {
  struct fm_buf b = {0};
  int k = 0;
  for (int i = 1; i <= total; i++) {
    if (k < n && at[k] == i) {
      fm_buf_printf(&b, "2024-03-05T14:%02d:%02dZ ERROR request %d failed\n", (i / 60) % 60, i % 60, i);
      k++;
    } else
      fm_buf_printf(&b, "2024-03-05T14:%02d:%02dZ INFO line %d\n", (i / 60) % 60, i % 60, i);
  }
  const json_t *L = run(fm_buf_cstr(&b), root);
  fm_buf_free(&b);
  return L;
}

static void test_bursts(void) {
  json_t *root;
  int ten[10] = {1, 6, 11, 16, 21, 26, 31, 36, 41, 50}; /* 10 errors, lines 1..50 */
  const json_t *L = errors_at(ten, 10, 80, &root);
  const json_t *b = json_object_get(L, "bursts");
  CHECK(json_array_size(b) == 1);
  CHECK(iget(json_array_get(b, 0), "start_line") == 1);
  CHECK(iget(json_array_get(b, 0), "end_line") == 50);
  CHECK(iget(json_array_get(b, 0), "errors") == 10);
  CHECK(iget(L, "errors") == 10);
  json_decref(root);

  int nine[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  L = errors_at(nine, 9, 80, &root);
  CHECK(json_array_size(json_object_get(L, "bursts")) == 0);
  json_decref(root);

  int wide[10] = {1, 6, 11, 16, 21, 26, 31, 36, 41, 51}; /* 10 errors over 51 lines */
  L = errors_at(wide, 10, 80, &root);
  CHECK(json_array_size(json_object_get(L, "bursts")) == 0);
  json_decref(root);

  /* two bursts: 20 consecutive errors, a quiet stretch, then 12 more */
  int two[32];
  for (int i = 0; i < 20; i++) two[i] = 101 + i;
  for (int i = 0; i < 12; i++) two[20 + i] = 301 + 2 * i;
  L = errors_at(two, 32, 400, &root);
  b = json_object_get(L, "bursts");
  CHECK(json_array_size(b) == 2);
  CHECK(iget(json_array_get(b, 0), "start_line") == 101);
  CHECK(iget(json_array_get(b, 0), "end_line") == 120);
  CHECK(iget(json_array_get(b, 0), "errors") == 20);
  CHECK(iget(json_array_get(b, 1), "start_line") == 301);
  CHECK(iget(json_array_get(b, 1), "end_line") == 323);
  CHECK(iget(json_array_get(b, 1), "errors") == 12);
  CHECK(iget(L, "bursts_total") == 2);
  /* one error template for all 32 */
  const json_t *ec = json_object_get(L, "error_clusters");
  CHECK(json_array_size(ec) == 1);
  CHECK_STR(sget(json_array_get(ec, 0), "template"), "request <*> failed");
  CHECK(iget(json_array_get(ec, 0), "count") == 32);
  CHECK(iget(json_array_get(ec, 0), "first_line") == 101);
  CHECK(iget(json_array_get(ec, 0), "last_line") == 323);
  json_decref(root);
}

static void test_context(void) {
  json_t *root;
  int at[1] = {10};
  const json_t *L = errors_at(at, 1, 20, &root);
  const json_t *fe = json_object_get(L, "first_error");
  CHECK(iget(fe, "line") == 10);
  CHECK_STR(sget(fe, "text"), "2024-03-05T14:00:10Z ERROR request 10 failed");
  CHECK_STR(sget(fe, "severity"), "error");
  const json_t *bf = json_object_get(json_object_get(fe, "context"), "before");
  const json_t *af = json_object_get(json_object_get(fe, "context"), "after");
  CHECK(json_array_size(bf) == 5 && json_array_size(af) == 5);
  CHECK_STR(json_string_value(json_array_get(bf, 0)), "2024-03-05T14:00:05Z INFO line 5");
  CHECK_STR(json_string_value(json_array_get(bf, 4)), "2024-03-05T14:00:09Z INFO line 9");
  CHECK_STR(json_string_value(json_array_get(af, 0)), "2024-03-05T14:00:11Z INFO line 11");
  CHECK_STR(json_string_value(json_array_get(af, 4)), "2024-03-05T14:00:15Z INFO line 15");
  json_decref(root);

  /* at the edges: fewer lines before and after */
  int edge[2] = {2, 19};
  L = errors_at(edge, 2, 20, &root);
  fe = json_object_get(L, "first_error");
  CHECK(iget(fe, "line") == 2);
  CHECK(json_array_size(json_object_get(json_object_get(fe, "context"), "before")) == 1);
  json_decref(root);

  /* worst: fatal beats error; among errors the template with more lines */
  L = run("x ERROR disk full on sda\n"
          "x ERROR timeout calling 10.0.0.1\n"
          "y INFO fine\n"
          "x ERROR timeout calling 10.0.0.2\n"
          "x ERROR timeout calling 10.0.0.3\n",
          &root);
  /* "x ERROR": the level is the second token (a host, then the level) */
  CHECK(iget(json_object_get(L, "first_error"), "line") == 1);
  CHECK(iget(json_object_get(L, "worst_error"), "line") == 2);
  CHECK(iget(json_object_get(L, "worst_error"), "template_errors") == 3);
  json_decref(root);
  L = run("x ERROR timeout calling 10.0.0.1\n"
          "x ERROR timeout calling 10.0.0.2\n"
          "x FATAL out of memory, exiting\n"
          "after fatal\n",
          &root);
  const json_t *we = json_object_get(L, "worst_error");
  CHECK(iget(we, "line") == 3);
  CHECK_STR(sget(we, "severity"), "fatal");
  CHECK(json_array_size(json_object_get(json_object_get(we, "context"), "before")) == 2);
  CHECK_STR(json_string_value(json_array_get(json_object_get(json_object_get(we, "context"), "after"), 0)),
            "after fatal");
  json_decref(root);
}

static void test_per_minute(void) {
  json_t *root;
  const json_t *L = run("2024-03-05T14:22:01Z ERROR a 1\n"
                        "2024-03-05T14:22:30Z ERROR a 2\n"
                        "2024-03-05T14:22:40Z INFO fine\n"
                        "2024-03-05T14:22:59Z ERROR a 3\n"
                        "2024-03-05T14:25:10Z ERROR a 4\n",
                        &root);
  const json_t *e = json_object_get(L, "errors_per_minute");
  CHECK_STR(sget(json_object_get(e, "peak"), "minute"), "2024-03-05T14:22:00.000Z");
  CHECK(iget(json_object_get(e, "peak"), "count") == 3);
  CHECK_STR(sget(e, "start"), "2024-03-05T14:22:00.000Z");
  CHECK(iget(e, "bucket_minutes") == 1);
  const json_t *sr = json_object_get(e, "series");
  CHECK(json_array_size(sr) == 4);
  CHECK(json_integer_value(json_array_get(sr, 0)) == 3 && json_integer_value(json_array_get(sr, 3)) == 1);
  json_decref(root);

  /* ten days of one error an hour: the series stays bounded, the buckets widen */
  struct fm_buf b = {0};
  for (int h = 0; h < 240; h++)
    fm_buf_printf(&b, "2024-03-%02dT%02d:10:00Z ERROR tick\n", 1 + h / 24, h % 24);
  L = run(fm_buf_cstr(&b), &root);
  fm_buf_free(&b);
  e = json_object_get(L, "errors_per_minute");
  CHECK(iget(e, "bucket_minutes") == 64);
  CHECK(json_array_size(json_object_get(e, "series")) <= 240);
  long long sum = 0;
  size_t i;
  const json_t *v;
  json_array_foreach(json_object_get(e, "series"), i, v) sum += json_integer_value(v);
  CHECK(sum == 240);
  CHECK(iget(json_object_get(e, "peak"), "count") == 1);
  json_decref(root);

  /* no timestamps: no series */
  L = run("ERROR x\nERROR y", &root);
  CHECK(json_is_null(json_object_get(L, "errors_per_minute")));
  json_decref(root);
}

static void test_transitions(void) {
  json_t *root;
  const json_t *L = run("2024-03-05T14:22:01Z INFO channel state changed from CONNECTING to READY\n"
                        "2024-03-05T14:22:02Z WARN node-1: HEALTHY -> UNHEALTHY\n"
                        "GET /api/users 200 12ms\n"
                        "moving items from queue to worker\n"
                        "Back-off restarting failed container app in pod web-1\n"
                        "Back-off restarting failed container app in pod web-1\n"
                        "Back-off restarting failed container app in pod web-1\n"
                        "WARN connection lost to broker 10.0.0.5\n"
                        "INFO connection restored to broker 10.0.0.5\n"
                        "raft: leader elected: node-2\n"
                        "Started nginx.service - A high performance web server.\n"
                        "Container app was OOMKilled\n"
                        "service is healthy\n",
                        &root);
  const json_t *tr = json_object_get(L, "transitions");
  CHECK(json_array_size(tr) == 9);
  CHECK(iget(L, "transitions_total") == 11);
  const json_t *t0 = json_array_get(tr, 0);
  CHECK(iget(t0, "line") == 1);
  CHECK_STR(sget(t0, "kind"), "state_change");
  CHECK_STR(sget(t0, "from"), "CONNECTING");
  CHECK_STR(sget(t0, "to"), "READY");
  const json_t *t1 = json_array_get(tr, 1);
  CHECK_STR(sget(t1, "from"), "HEALTHY");
  CHECK_STR(sget(t1, "to"), "UNHEALTHY");
  const json_t *t2 = json_array_get(tr, 2);
  CHECK(iget(t2, "line") == 5);
  CHECK_STR(sget(t2, "kind"), "restart");
  CHECK(iget(t2, "count") == 3);
  CHECK_STR(sget(json_array_get(tr, 3), "to"), "lost");
  CHECK_STR(sget(json_array_get(tr, 4), "to"), "restored");
  CHECK_STR(sget(json_array_get(tr, 5), "to"), "leader_elected");
  CHECK_STR(sget(json_array_get(tr, 6), "kind"), "lifecycle");
  CHECK_STR(sget(json_array_get(tr, 7), "kind"), "oom");
  CHECK_STR(sget(json_array_get(tr, 8), "to"), "healthy");
  CHECK(iget(json_array_get(tr, 8), "line") == 13);
  json_decref(root);
}

static void test_hostile(void) {
  struct fm_an_logs *s = fm_an_logs_new();
  char *big = malloc(FM_AN_MAX_LINE);
  memset(big, 'z', FM_AN_MAX_LINE);
  char *words = malloc(FM_AN_MAX_LINE);
  for (size_t i = 0; i < FM_AN_MAX_LINE; i++) words[i] = (i % 4 == 3) ? ' ' : (char)('a' + i % 3);
  struct fm_an_line ls[] = {
      {"", 0, 1, 0},
      {"ERROR bad\0byte \xff\xfe here", 22, 2, 0},
      {"\xc3", 1, 3, 0},
      {big, FM_AN_MAX_LINE, 4, 1},
      {words, FM_AN_MAX_LINE, 5, 1},
      {"{\"ts\":\"", 7, 6, 0},
      {"{", 1, 7, 0},
      {"{\"level\":", 9, 8, 0},
      {"[", 1, 9, 0},
      {"<1", 2, 10, 0},
      {"2024-03-05T14:22:01", 19, 11, 0},
      {"10.0.0.1 - - [05/Mar/2024:14:22:01 +0000] \"GET", 46, 12, 0},
      {" -> ", 4, 13, 0},
      {"state changed from", 18, 14, 0},
  };
  for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) fm_an_logs_line(s, &ls[i]);
  json_t *root = json_object();
  CHECK(fm_an_logs_finish(s, root) == 0);
  char *dump = json_dumps(root, 0);
  CHECK(dump != NULL);
  /* NUL as a visible "\0", invalid bytes as U+FFFD */
  CHECK(dump && strstr(dump, "bad\\\\0byte \xef\xbf\xbd\xef\xbf\xbd here") != NULL);
  const json_t *L = json_object_get(root, "logs");
  CHECK(iget(L, "lines") == 14);
  /* a template keeps at most 128 bytes of one token */
  const json_t *v;
  size_t i;
  int found = 0;
  json_array_foreach(json_object_get(L, "templates"), i, v) {
    const char *t = sget(v, "template");
    if (t && t[0] == 'z' && t[1] == 'z') {
      found = 1;
      CHECK(strlen(t) == 128);
    }
    if (t && !strncmp(t, "abc ", 4)) CHECK(strstr(t, " ...") != NULL);
  }
  CHECK(found);
  struct fm_buf d = {0};
  fm_an_logs_digest(root, &d, 200);
  CHECK(d.len > 0 && d.len <= 200);
  free(dump);
  json_decref(root);
  fm_an_logs_free(s);
  fm_buf_free(&d);
  free(big);
  free(words);
}

/* A long token of three-byte characters: the template keeps at most 128 bytes, cut between
 * characters (42 of them, 126 bytes). */
static void test_utf8_token(void) {
  char line[512];
  for (int i = 0; i < 100; i++) memcpy(line + 3 * i, "\xe2\x82\xac", 3);
  json_t *root;
  line[300] = 0;
  const json_t *L = run(line, &root);
  const char *t = sget(json_array_get(json_object_get(L, "templates"), 0), "template");
  CHECK(t && strlen(t) == 126);
  CHECK(t && strstr(t, "\xef\xbf\xbd") == NULL);
  json_decref(root);
}

/* The digest is bounded and never cuts a UTF-8 sequence. */
static void test_digest(void) {
  json_t *root;
  run("2024-03-05T14:22:01Z ERROR \xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 caf\xc3\xa9 failed\n"
      "2024-03-05T14:22:02Z INFO ok",
      &root);
  struct fm_buf d = {0};
  fm_an_logs_digest(root, &d, FM_AN_DIGEST_MAX);
  CHECK(strstr(fm_buf_cstr(&d), "First error (line 1, error)") != NULL);
  CHECK(strstr(fm_buf_cstr(&d), "Severity: fatal 0, error 1, warn 0, info 1") != NULL);
  size_t full = d.len;
  for (size_t max = 1; max < full; max++) {
    struct fm_buf c = {0};
    fm_an_logs_digest(root, &c, max);
    CHECK(c.len <= max);
    /* the byte after the cut is not a continuation byte */
    if (c.len < full) CHECK(((unsigned char)d.p[c.len] & 0xc0) != 0x80);
    CHECK(c.len == 0 || memcmp(c.p, d.p, c.len) == 0);
    fm_buf_free(&c);
  }
  fm_buf_free(&d);
  json_decref(root);
}

int main(void) {
  test_timestamps();
  test_severity();
  test_masking();
  test_drain();
  test_bursts();
  test_context();
  test_per_minute();
  test_transitions();
  test_hostile();
  test_utf8_token();
  test_digest();
  return check_done();
}
