/* Unit tests for engine/analysis/stack.c: one real-looking fixture per language
 * (spec/fixtures/evidence/stack-*.txt); the expected values are what the fixtures contain. */
#include "an_fixture.h"
#include "analysis.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Feeds a file line by line (as the driver does: no "\n", no trailing "\r") and returns the
 * object finish() filled. */
static void feed(void *s, const struct fm_an_line *l) { fm_an_stack_line(s, l); }

static json_t *run_file(const char *name) {
  struct fm_an_stack *s = fm_an_stack_new();
  if (an_feed_fixture(name, feed, s)) {
    fm_an_stack_free(s);
    return NULL;
  }
  json_t *out = json_object();
  CHECK(fm_an_stack_finish(s, out) == 0);
  fm_an_stack_free(s);
  return out;
}

static const char *sget(const json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}
static long long iget(const json_t *o, const char *k) {
  return (long long)json_integer_value(json_object_get(o, k));
}
static const json_t *trace(const json_t *out, size_t i) {
  return json_array_get(json_object_get(json_object_get(out, "stack"), "traces"), i);
}
static const json_t *frame(const json_t *exc, size_t i) {
  return json_array_get(json_object_get(exc, "frames"), i);
}

static void test_python(void) {
  json_t *out = run_file("stack-python.txt");
  if (!out) {
    CHECK(0);
    return;
  }
  const json_t *S = json_object_get(out, "stack");
  /* two tracebacks chained by "During handling...": one trace with the first as its cause */
  CHECK(iget(S, "count") == 1);
  CHECK(json_array_size(json_object_get(S, "traces")) == 1);
  const json_t *t = trace(out, 0);
  CHECK_STR(sget(t, "language"), "python");
  CHECK_STR(sget(t, "exception"), "orders.errors.OrderNotFound");
  CHECK_STR(sget(t, "message"), "order 8812 does not exist");
  CHECK(iget(t, "line") == 11);
  CHECK(json_array_size(json_object_get(t, "frames")) == 4);
  CHECK_STR(sget(frame(t, 0), "file"), "/app/worker.py");
  CHECK_STR(sget(frame(t, 0), "function"), "run");
  CHECK(iget(frame(t, 0), "line") == 112);
  /* the nearest application frame to the raise (the logging frame is the standard library) */
  const json_t *app = json_object_get(t, "first_app_frame");
  CHECK_STR(sget(app, "file"), "/app/orders/db.py");
  CHECK(iget(app, "line") == 44);
  CHECK_STR(sget(app, "function"), "fetch_order");
  const json_t *cb = json_object_get(t, "caused_by");
  CHECK(json_array_size(cb) == 1);
  const json_t *c0 = json_array_get(cb, 0);
  CHECK_STR(sget(c0, "exception"), "KeyError");
  CHECK_STR(sget(c0, "message"), "'order_id'");
  CHECK(json_array_size(json_object_get(c0, "frames")) == 2);
  CHECK(iget(json_object_get(c0, "first_app_frame"), "line") == 41);
  json_decref(out);
}

static void test_java(void) {
  json_t *out = run_file("stack-java.txt");
  if (!out) {
    CHECK(0);
    return;
  }
  CHECK(iget(json_object_get(out, "stack"), "count") == 1);
  const json_t *t = trace(out, 0);
  CHECK_STR(sget(t, "language"), "java");
  CHECK_STR(sget(t, "exception"), "org.springframework.web.util.NestedServletException");
  CHECK(strncmp(sget(t, "message") ? sget(t, "message") : "", "Request processing failed;", 26) == 0);
  CHECK(iget(t, "line") == 2);
  CHECK(json_array_size(json_object_get(t, "frames")) == 4);
  CHECK_STR(sget(frame(t, 0), "function"),
            "org.springframework.web.servlet.FrameworkServlet.processRequest");
  CHECK_STR(sget(frame(t, 0), "file"), "FrameworkServlet.java");
  CHECK(iget(frame(t, 0), "line") == 1014);
  /* "java.base/java.lang.Thread.run": the module prefix is dropped */
  CHECK_STR(sget(frame(t, 3), "function"), "java.lang.Thread.run");
  /* only framework and JDK frames at the top level */
  CHECK(json_is_null(json_object_get(t, "first_app_frame")));
  const json_t *cb = json_object_get(t, "caused_by");
  CHECK(json_array_size(cb) == 2);
  const json_t *c0 = json_array_get(cb, 0), *c1 = json_array_get(cb, 1);
  CHECK_STR(sget(c0, "exception"), "java.lang.IllegalStateException");
  CHECK_STR(sget(c0, "message"), "payment gateway unavailable");
  CHECK(json_array_size(json_object_get(c0, "frames")) == 4);
  CHECK(iget(c0, "more") == 12);
  CHECK_STR(sget(json_object_get(c0, "first_app_frame"), "function"),
            "com.acme.orders.PaymentClient.charge");
  CHECK(iget(json_object_get(c0, "first_app_frame"), "line") == 88);
  /* "(Native Method)": a file with no line */
  CHECK_STR(sget(frame(c0, 3), "file"), "Native Method");
  CHECK(json_is_null(json_object_get(frame(c0, 3), "line")));
  CHECK_STR(sget(c1, "exception"), "java.net.ConnectException");
  CHECK_STR(sget(c1, "message"), "Connection refused (Connection refused)");
  CHECK(iget(c1, "more") == 15);
  CHECK_STR(sget(json_object_get(c1, "first_app_frame"), "function"), "com.acme.http.Pool.open");
  json_decref(out);
}

static void test_go(void) {
  json_t *out = run_file("stack-go.txt");
  if (!out) {
    CHECK(0);
    return;
  }
  CHECK(iget(json_object_get(out, "stack"), "count") == 1);
  const json_t *t = trace(out, 0);
  CHECK_STR(sget(t, "language"), "go");
  CHECK_STR(sget(t, "exception"), "panic");
  CHECK_STR(sget(t, "message"), "runtime error: invalid memory address or nil pointer dereference");
  CHECK(iget(t, "line") == 2);
  CHECK(iget(t, "goroutines") == 2);
  /* frames of the panicking goroutine only (5, with "created by") */
  CHECK(json_array_size(json_object_get(t, "frames")) == 5);
  CHECK_STR(sget(frame(t, 0), "function"), "github.com/acme/api/handlers.(*Server).GetUser");
  CHECK_STR(sget(frame(t, 0), "file"), "/src/api/handlers/user.go");
  CHECK(iget(frame(t, 0), "line") == 57);
  CHECK_STR(sget(frame(t, 4), "function"), "created by net/http.(*Server).Serve in goroutine 1");
  CHECK(iget(frame(t, 4), "line") == 3089);
  const json_t *app = json_object_get(t, "first_app_frame");
  CHECK_STR(sget(app, "function"), "github.com/acme/api/handlers.(*Server).GetUser");
  json_decref(out);
}

static void test_node(void) {
  json_t *out = run_file("stack-node.txt");
  if (!out) {
    CHECK(0);
    return;
  }
  CHECK(iget(json_object_get(out, "stack"), "count") == 1);
  const json_t *t = trace(out, 0);
  CHECK_STR(sget(t, "language"), "javascript");
  CHECK_STR(sget(t, "exception"), "TypeError");
  CHECK_STR(sget(t, "message"), "Cannot read properties of undefined (reading 'reduce')");
  CHECK(iget(t, "line") == 6);
  CHECK(json_array_size(json_object_get(t, "frames")) == 4);
  CHECK_STR(sget(frame(t, 0), "function"), "CartService.total");
  CHECK_STR(sget(frame(t, 0), "file"), "/app/src/cart/service.js");
  CHECK(iget(frame(t, 0), "line") == 48);
  CHECK_STR(sget(frame(t, 1), "file"), "/app/node_modules/express/lib/router/index.js");
  CHECK_STR(sget(frame(t, 2), "file"), "/app/src/routes/cart.js");
  CHECK(iget(frame(t, 2), "line") == 17);
  CHECK_STR(sget(frame(t, 3), "file"), "node:internal/process/task_queues");
  CHECK_STR(sget(json_object_get(t, "first_app_frame"), "function"), "CartService.total");
  json_decref(out);
}

/* The same trace twice is one entry with two occurrences; a bounded number is kept. */
static void test_repeats_and_bound(void) {
  struct fm_an_stack *s = fm_an_stack_new();
  char buf[256];
  uint64_t no = 0;
  for (int k = 0; k < 100; k++) {
    snprintf(buf, sizeof buf, "Exception in thread \"main\" com.acme.E%dException: boom %d", k % 50, k);
    struct fm_an_line l = {buf, strlen(buf), ++no, 0};
    fm_an_stack_line(s, &l);
    const char *fr = "\tat com.acme.Main.main(Main.java:10)";
    struct fm_an_line f = {fr, strlen(fr), ++no, 0};
    fm_an_stack_line(s, &f);
  }
  json_t *out = json_object();
  CHECK(fm_an_stack_finish(s, out) == 0);
  const json_t *S = json_object_get(out, "stack");
  CHECK(iget(S, "count") == 100);
  CHECK(iget(S, "distinct") == 32);
  CHECK(json_array_size(json_object_get(S, "traces")) == 32);
  CHECK(iget(S, "dropped") == 36); /* types 32..49 twice each */
  CHECK(iget(json_array_get(json_object_get(S, "traces"), 0), "occurrences") == 2);
  CHECK_STR(sget(json_array_get(json_object_get(S, "traces"), 0), "exception"),
            "com.acme.E0Exception");
  struct fm_buf d = {0};
  fm_an_stack_digest(out, &d, 120);
  CHECK(d.len > 0 && d.len <= 120);
  fm_buf_free(&d);
  json_decref(out);
  fm_an_stack_free(s);
}

static void test_detect(void) {
  const char *ls[] = {"Traceback (most recent call last):", "  File \"/app/x.py\", line 3, in f",
                      "    g()", "ValueError: bad"};
  struct fm_an_line l[4];
  for (int i = 0; i < 4; i++) l[i] = (struct fm_an_line){ls[i], strlen(ls[i]), (uint64_t)i + 1, 0};
  const char *lang = NULL;
  double share = fm_an_stack_detect(l, 4, &lang);
  CHECK(share == 0.5);
  CHECK_STR(lang, "python");
  const char *js[] = {"Error: x", "    at f (/a.js:1:2)"};
  for (int i = 0; i < 2; i++) l[i] = (struct fm_an_line){js[i], strlen(js[i]), (uint64_t)i + 1, 0};
  CHECK(fm_an_stack_detect(l, 2, &lang) == 0.5);
  CHECK_STR(lang, "javascript");
  CHECK(fm_an_stack_detect(l, 0, &lang) == 0.0 && lang == NULL);
}

/* Hostile input: no crash, strings valid. */
static void test_hostile(void) {
  struct fm_an_stack *s = fm_an_stack_new();
  char *big = malloc(FM_AN_MAX_LINE);
  memset(big, 'a', FM_AN_MAX_LINE);
  memcpy(big, "\tat ", 4);
  struct fm_an_line ls[] = {
      {"java.lang.RuntimeException: bad \xff\xfe\0x", 37, 1, 0},
      {"\tat com.acme.X.y(X.java:1)", 26, 2, 0},
      {big, FM_AN_MAX_LINE, 3, 1},
      {"", 0, 4, 0},
      {"\tat (", 5, 5, 0},
      {"    at :", 8, 6, 0},
      {"panic: ", 7, 7, 0},
      {"\t", 1, 8, 0},
  };
  for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) fm_an_stack_line(s, &ls[i]);
  json_t *out = json_object();
  CHECK(fm_an_stack_finish(s, out) == 0);
  char *dump = json_dumps(out, 0);
  CHECK(dump != NULL);
  CHECK(dump && strstr(dump, "bad \xef\xbf\xbd\xef\xbf\xbd\\\\0x") != NULL);
  free(dump);
  json_decref(out);
  fm_an_stack_free(s);
  free(big);
}

static json_t *run_lines(const char *const *ls, size_t n) {
  struct fm_an_stack *s = fm_an_stack_new();
  for (size_t i = 0; i < n; i++) {
    struct fm_an_line l = {ls[i], strlen(ls[i]), (uint64_t)i + 1, 0};
    fm_an_stack_line(s, &l);
  }
  json_t *out = json_object();
  CHECK(fm_an_stack_finish(s, out) == 0);
  fm_an_stack_free(s);
  return out;
}

/* Traces inside a log: kubectl --timestamps prefixes, a Java exception named in a log line, and
 * traces of different languages one after the other. */
static void test_in_logs(void) {
  const char *ls[] = {
      "2024-03-05T14:22:01.123456789Z Traceback (most recent call last):",
      "2024-03-05T14:22:01.123456789Z   File \"/srv/app/main.py\", line 9, in <module>",
      "2024-03-05T14:22:01.123456789Z     main()",
      "2024-03-05T14:22:01.123456789Z ConnectionRefusedError: [Errno 111] Connection refused",
      "2024-03-05 14:22:02,001 ERROR [main] c.a.Job - run failed: java.util.concurrent.TimeoutException: 30 s",
      "\tat com.acme.Job.run(Job.java:77)",
      "\tat java.lang.Thread.run(Thread.java:833)",
      "fatal error: all goroutines are asleep - deadlock!",
      "",
      "goroutine 1 [chan receive]:",
      "main.main()",
      "\t/src/cmd/worker/main.go:21 +0x3c",
  };
  json_t *out = run_lines(ls, sizeof ls / sizeof ls[0]);
  const json_t *S = json_object_get(out, "stack");
  CHECK(iget(S, "count") == 3);
  const json_t *t0 = trace(out, 0), *t1 = trace(out, 1), *t2 = trace(out, 2);
  CHECK_STR(sget(t0, "exception"), "ConnectionRefusedError");
  CHECK_STR(sget(t0, "message"), "[Errno 111] Connection refused");
  CHECK_STR(sget(json_object_get(t0, "first_app_frame"), "file"), "/srv/app/main.py");
  CHECK_STR(sget(t1, "language"), "java");
  CHECK_STR(sget(t1, "exception"), "java.util.concurrent.TimeoutException");
  CHECK_STR(sget(t1, "message"), "30 s");
  CHECK(iget(t1, "line") == 5);
  CHECK_STR(sget(json_object_get(t1, "first_app_frame"), "function"), "com.acme.Job.run");
  CHECK_STR(sget(t2, "exception"), "fatal error");
  CHECK_STR(sget(t2, "message"), "all goroutines are asleep - deadlock!");
  CHECK_STR(sget(json_object_get(t2, "first_app_frame"), "function"), "main.main");
  CHECK(iget(json_object_get(t2, "first_app_frame"), "line") == 21);
  json_decref(out);
}

int main(void) {
  test_in_logs();
  test_python();
  test_java();
  test_go();
  test_node();
  test_repeats_and_bound();
  test_detect();
  test_hostile();
  return check_done();
}
