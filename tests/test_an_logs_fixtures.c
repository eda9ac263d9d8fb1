/* engine/analysis/logs.c over the fixtures spec/fixtures/evidence/logs-*: the expected values
 * are what the fixture files contain (counted by hand and with grep). */
#include "an_fixture.h"
#include "analysis.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void feed(void *s, const struct fm_an_line *l) { fm_an_logs_line(s, l); }

static json_t *run_file(const char *name) {
  struct fm_an_logs *s = fm_an_logs_new();
  if (an_feed_fixture(name, feed, s)) {
    fm_an_logs_free(s);
    return NULL;
  }
  json_t *out = json_object();
  CHECK(fm_an_logs_finish(s, out) == 0);
  fm_an_logs_free(s);
  return out;
}

static const char *sget(const json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}
static long long iget(const json_t *o, const char *k) {
  return (long long)json_integer_value(json_object_get(o, k));
}
static const json_t *at(const json_t *o, const char *k, size_t i) {
  return json_array_get(json_object_get(o, k), i);
}

/* logback: 20 OK requests, a pool warning, "state changed from UP to DOWN" (line 22), 12 ERROR
 * lines from line 23 to 40 with a Java trace after the 6th, back UP (line 41), 10 OK requests. */
static void test_logback(void) {
  json_t *root = run_file("logs-logback-pool.log");
  if (!root) {
    CHECK(0);
    return;
  }
  const json_t *L = json_object_get(root, "logs");
  CHECK(iget(L, "lines") == 51);
  const json_t *ts = json_object_get(L, "timestamps");
  CHECK_STR(sget(ts, "format"), "log4j");
  CHECK(iget(ts, "parsed") == 45); /* 51 lines less the 6 lines of the stack trace */
  CHECK_STR(sget(ts, "first"), "2024-03-05T14:20:00.431Z");
  CHECK_STR(sget(ts, "last"), "2024-03-05T14:20:21.216Z");
  const json_t *sv = json_object_get(L, "severity");
  /* 12 ERROR lines + the exception line without a level */
  CHECK(iget(sv, "error") == 13 && iget(sv, "warn") == 1 && iget(sv, "info") == 32);
  CHECK(iget(sv, "unknown") == 5); /* frames, "Caused by:", "... 48 more" */
  const json_t *t0 = at(L, "templates", 0), *t1 = at(L, "templates", 1);
  CHECK(iget(t0, "count") == 30);
  CHECK_STR(sget(t0, "template"), "[<*>] c.a.orders.OrderController - GET <*> <*> <*>");
  CHECK(iget(t1, "count") == 12);
  CHECK_STR(sget(t1, "severity"), "error");
  const json_t *ec = at(L, "error_clusters", 0);
  CHECK_STR(sget(ec, "template"), "[<*>] c.a.orders.OrderController - Request <*> failed: could not "
                                  "get JDBC connection after <*> ms");
  CHECK(iget(ec, "count") == 12 && iget(ec, "first_line") == 23 && iget(ec, "last_line") == 40);
  const json_t *b = at(L, "bursts", 0);
  CHECK(json_array_size(json_object_get(L, "bursts")) == 1);
  CHECK(iget(b, "start_line") == 23 && iget(b, "end_line") == 40 && iget(b, "errors") == 13);
  const json_t *fe = json_object_get(L, "first_error");
  CHECK(iget(fe, "line") == 23);
  CHECK(strstr(sget(fe, "text"), "Request 2000 failed") != NULL);
  CHECK_STR(json_string_value(json_array_get(json_object_get(json_object_get(fe, "context"), "before"), 4)),
            "2024-03-05 14:20:09,766 INFO  [main] c.a.orders.Health - database state changed from UP to DOWN");
  /* the worst: the error template with the most lines, its first line */
  CHECK(iget(json_object_get(L, "worst_error"), "line") == 23);
  const json_t *tr0 = at(L, "transitions", 0), *tr1 = at(L, "transitions", 1);
  CHECK(json_array_size(json_object_get(L, "transitions")) == 2);
  CHECK(iget(tr0, "line") == 22);
  CHECK_STR(sget(tr0, "from"), "UP");
  CHECK_STR(sget(tr0, "to"), "DOWN");
  CHECK(iget(tr1, "line") == 41);
  CHECK_STR(sget(tr1, "to"), "UP");
  const json_t *pk = json_object_get(json_object_get(L, "errors_per_minute"), "peak");
  CHECK_STR(sget(pk, "minute"), "2024-03-05T14:20:00.000Z");
  CHECK(iget(pk, "count") == 13);
  json_decref(root);
}

/* nginx access: 40 requests, 26 x 200, 2 x 404 (lines 6, 34), 12 x 502 (lines 16-27). */
static void test_nginx(void) {
  json_t *root = run_file("logs-nginx-access.log");
  if (!root) {
    CHECK(0);
    return;
  }
  const json_t *L = json_object_get(root, "logs");
  const json_t *ts = json_object_get(L, "timestamps");
  CHECK_STR(sget(ts, "format"), "apache");
  CHECK(json_real_value(json_object_get(ts, "coverage")) == 1.0);
  CHECK_STR(sget(ts, "first"), "2024-03-05T14:22:00.000Z");
  CHECK_STR(sget(ts, "last"), "2024-03-05T14:23:18.000Z");
  const json_t *sv = json_object_get(L, "severity");
  CHECK(iget(sv, "error") == 12 && iget(sv, "warn") == 2 && iget(sv, "info") == 26);
  CHECK(iget(L, "total_templates") == 1);
  const json_t *b = at(L, "bursts", 0);
  CHECK(iget(b, "start_line") == 16 && iget(b, "end_line") == 27 && iget(b, "errors") == 12);
  CHECK(iget(json_object_get(L, "first_error"), "line") == 16);
  json_decref(root);
}

/* syslog: OOM kill of app.service and its restart; no year in the file. */
static void test_syslog(void) {
  json_t *root = run_file("logs-syslog-oom.log");
  if (!root) {
    CHECK(0);
    return;
  }
  const json_t *L = json_object_get(root, "logs");
  const json_t *ts = json_object_get(L, "timestamps");
  CHECK_STR(sget(ts, "format"), "syslog");
  CHECK(json_real_value(json_object_get(ts, "span_seconds")) == 61.0);
  CHECK(json_is_integer(json_object_get(ts, "year_assumed")));
  /* keywords: "oom-kill" (lines 2 and 5), "Out of memory" (line 3) */
  CHECK(iget(json_object_get(L, "severity"), "error") == 3);
  CHECK(iget(json_object_get(L, "first_error"), "line") == 2);
  const json_t *tr = json_object_get(L, "transitions");
  CHECK(json_array_size(tr) == 5);
  CHECK_STR(sget(json_array_get(tr, 0), "to"), "started");
  CHECK_STR(sget(json_array_get(tr, 1), "kind"), "oom");
  CHECK(iget(json_array_get(tr, 1), "line") == 3);
  CHECK_STR(sget(json_array_get(tr, 2), "kind"), "restart");
  CHECK_STR(sget(json_array_get(tr, 3), "to"), "stopped");
  CHECK(iget(json_array_get(tr, 4), "line") == 8);
  /* the pid in "systemd[1]:" is masked inside its brackets */
  int found = 0;
  size_t i;
  const json_t *v;
  json_array_foreach(json_object_get(L, "templates"), i, v)
    if (!strcmp(sget(v, "template"), "<*> systemd[<*>]: app.service: Failed with result 'oom-kill'."))
      found = 1;
  CHECK(found);
  json_decref(root);
}

/* pino JSON lines: numeric levels, epoch millis, the "msg" field as the template. */
static void test_pino(void) {
  json_t *root = run_file("logs-pino.jsonl");
  if (!root) {
    CHECK(0);
    return;
  }
  const json_t *L = json_object_get(root, "logs");
  const json_t *ts = json_object_get(L, "timestamps");
  CHECK_STR(sget(ts, "format"), "json");
  CHECK_STR(sget(ts, "first"), "2024-03-05T14:22:01.000Z");
  CHECK(json_real_value(json_object_get(ts, "span_seconds")) == 9.0);
  const json_t *sv = json_object_get(L, "severity");
  CHECK(iget(sv, "error") == 2 && iget(sv, "warn") == 1 && iget(sv, "info") == 4);
  CHECK(iget(L, "total_templates") == 4);
  CHECK_STR(sget(at(L, "templates", 0), "template"), "request completed");
  CHECK(iget(at(L, "templates", 0), "count") == 3);
  CHECK_STR(sget(at(L, "error_clusters", 0), "template"), "cache read failed");
  const json_t *tr = json_object_get(L, "transitions");
  CHECK(json_array_size(tr) == 2);
  CHECK_STR(sget(json_array_get(tr, 0), "to"), "lost");
  CHECK_STR(sget(json_array_get(tr, 1), "to"), "restored");
  struct fm_buf d = {0};
  fm_an_logs_digest(root, &d, FM_AN_DIGEST_MAX);
  CHECK(strstr(fm_buf_cstr(&d), "Transitions:") != NULL);
  CHECK(strstr(fm_buf_cstr(&d), "2x (lines 4-5) cache read failed") != NULL);
  fm_buf_free(&d);
  json_decref(root);
}

int main(void) {
  test_logback();
  test_nginx();
  test_syslog();
  test_pino();
  return check_done();
}
