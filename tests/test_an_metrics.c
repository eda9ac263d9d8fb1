/* Unit tests for engine/analysis/metrics.c: detection, per-series statistics, percentiles,
 * z-score anomalies, histograms, hostile input and the memory bounds, on the fixtures in
 * spec/fixtures/evidence/metrics-*. */
#include "an_fixture.h"
#include "analysis.h"
#include "check.h"
#include "mcutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NEAR(a, b, eps) (fabs((a) - (b)) <= (eps))

/* Runs the module over text; returns out.metrics (the caller frees *root). */
static json_t *run_text(const char *p, size_t n, json_t **root) {
  size_t k;
  struct fm_an_line *l = an_split(p, n, &k);
  struct fm_an_metrics *m = fm_an_metrics_new();
  for (size_t i = 0; i < k; i++) fm_an_metrics_line(m, &l[i]);
  *root = json_object();
  CHECK(fm_an_metrics_finish(m, *root) == 0);
  fm_an_metrics_free(m);
  free(l);
  return json_object_get(*root, "metrics");
}

static json_t *run_file(const char *name, json_t **root) {
  size_t n;
  char *p = an_fixture_slurp(name, &n);
  json_t *m = run_text(p ? p : "", n, root);
  free(p);
  return m;
}

static double detect_text(const char *p, size_t n, const char **fmt) {
  size_t k;
  struct fm_an_line *l = an_split(p, n, &k);
  if (k > FM_AN_SNIFF_LINES) k = FM_AN_SNIFF_LINES;
  double c = fm_an_metrics_detect(l, k, fmt);
  free(l);
  return c;
}

static double detect_file(const char *name, const char **fmt) {
  size_t n;
  char *p = an_fixture_slurp(name, &n);
  double c = detect_text(p ? p : "", n, fmt);
  free(p);
  return c;
}

static json_t *series_named(json_t *m, const char *name, const char *label, const char *lv) {
  size_t i;
  json_t *s;
  json_array_foreach(json_object_get(m, "series"), i, s) {
    if (strcmp(json_string_value(json_object_get(s, "name")), name) != 0) continue;
    if (!label) return s;
    const char *v = json_string_value(json_object_get(json_object_get(s, "labels"), label));
    if (v && strcmp(v, lv) == 0) return s;
  }
  return NULL;
}

static double num(json_t *o, const char *k) {
  json_t *j = json_object_get(o, k);
  return json_is_number(j) ? json_number_value(j) : NAN;
}

static long long integer(json_t *o, const char *k) {
  return (long long)json_integer_value(json_object_get(o, k));
}

/* Valid UTF-8 everywhere: jansson re-parses what it dumped. */
static int dumps_valid(json_t *root) {
  char *d = json_dumps(root, JSON_COMPACT);
  if (!d) return 0;
  json_t *back = json_loads(d, 0, NULL);
  int ok = back != NULL;
  json_decref(back);
  free(d);
  return ok;
}

static void test_detect(void) {
  const char *fmt;
  CHECK(detect_file("metrics-wide.csv", &fmt) >= 0.8);
  CHECK_STR(fmt, "csv");
  CHECK(detect_file("metrics-long.csv", &fmt) >= 0.8);
  CHECK_STR(fmt, "csv");
  CHECK(detect_file("metrics-prom-latency.prom", &fmt) >= 0.9);
  CHECK_STR(fmt, "prometheus");
  CHECK(detect_file("metrics-query-range.json", &fmt) >= 0.9);
  CHECK_STR(fmt, "json");
  CHECK(detect_file("metrics-points.jsonl", &fmt) >= 0.8);
  CHECK_STR(fmt, "json");
  /* not metrics: an application log (with commas and numbers), df output, a Java trace */
  const char *applog =
      "2026-11-22 10:00:01,123 INFO  [main] Starting checkout, version 2.14.1\n"
      "2026-11-22 10:00:02,456 WARN  [http-1] slow request /pay took 1200 ms, retrying\n"
      "2026-11-22 10:00:03,789 ERROR [http-2] payment failed: timeout after 3000 ms\n"
      "2026-11-22 10:00:04,001 INFO  [http-3] GET /health 200 3ms\n";
  fmt = "x";
  CHECK(detect_text(applog, strlen(applog), &fmt) == 0);
  CHECK(fmt == NULL);
  CHECK(detect_file("cmd-df-h-full.txt", &fmt) == 0);
  CHECK(detect_file("cmd-kubectl-describe-crashloop.txt", &fmt) == 0);
  CHECK(detect_file("cmd-dmesg-oom.txt", &fmt) == 0);
  CHECK(detect_file("stack-java.txt", &fmt) == 0);
  /* no command output fixture is taken for metrics */
  static const char *cmds[] = {"cmd-df-h-full.txt", "cmd-df-i.txt", "cmd-top.txt", "cmd-free-m.txt",
                               "cmd-free-h.txt", "cmd-ps-aux.txt", "cmd-ps-ef.txt", "cmd-ss-tanp.txt",
                               "cmd-netstat-tanp.txt", "cmd-journalctl-restarts.txt",
                               "cmd-kubectl-get-pods.txt", "cmd-kubectl-get-nodes.txt",
                               "cmd-kubectl-events.txt", "cmd-kubectl-logs.txt"};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    double c = detect_file(cmds[i], &fmt);
    if (c > 0) fprintf(stderr, "%s detected as metrics %s (%.2f)\n", cmds[i], fmt, c);
    CHECK(c == 0);
  }
  const char *jsonlog = "{\"level\":\"error\",\"msg\":\"db down\",\"ts\":\"2026-11-22T10:00:00Z\"}\n"
                        "{\"level\":\"info\",\"msg\":\"retry\",\"ts\":\"2026-11-22T10:00:01Z\"}\n";
  CHECK(detect_text(jsonlog, strlen(jsonlog), &fmt) == 0);
}

static void test_wide_csv(void) {
  json_t *root;
  json_t *m = run_file("metrics-wide.csv", &root);
  CHECK_STR(json_string_value(json_object_get(m, "format")), "csv");
  CHECK_STR(json_string_value(json_object_get(m, "layout")), "wide");
  CHECK(integer(m, "series_count") == 3); /* cpu_pct, mem_pct, latency_ms; host is text */
  CHECK(integer(m, "non_numeric") == 120);
  json_t *lat = series_named(m, "latency_ms", NULL, NULL);
  CHECK(lat != NULL);
  CHECK(json_array_get(json_object_get(m, "series"), 0) == lat); /* anomalous series first */
  CHECK(integer(lat, "count") == 120);
  CHECK(num(lat, "min") == 100 && num(lat, "max") == 5000);
  CHECK(NEAR(num(lat, "p50"), 101, 1e-9));
  CHECK_STR(json_string_value(json_object_get(lat, "first_ts")), "2026-11-28T10:00:00.000Z");
  CHECK_STR(json_string_value(json_object_get(lat, "last_ts")), "2026-11-28T11:59:00.000Z");
  json_t *a = json_array_get(json_object_get(lat, "anomalies"), 0);
  CHECK(json_array_size(json_object_get(lat, "anomalies")) == 1);
  CHECK(integer(a, "line") == 75); /* grep -n ,5000, metrics-wide.csv */
  CHECK(num(a, "value") == 5000);
  CHECK(num(a, "z") > 10);
  CHECK_STR(json_string_value(json_object_get(a, "ts")), "2026-11-28T11:13:00.000Z");
  CHECK(integer(m, "anomalies_total") == 1);
  json_t *cpu = series_named(m, "cpu_pct", NULL, NULL);
  CHECK(cpu && num(cpu, "min") == 40 && num(cpu, "max") == 49 && NEAR(num(cpu, "mean"), 44.5, 1e-9));
  CHECK(cpu && json_array_size(json_object_get(cpu, "anomalies")) == 0);
  struct fm_buf d = {0};
  fm_an_metrics_digest(root, &d, 2000);
  CHECK(d.len > 0 && d.len <= 2000);
  CHECK(strstr(fm_buf_cstr(&d), "latency_ms") != NULL);
  CHECK(strstr(fm_buf_cstr(&d), "line 75") != NULL);
  size_t full = d.len;
  d.len = 0;
  fm_an_metrics_digest(root, &d, 60);
  CHECK(d.len <= 60 && d.len < full);
  fm_buf_free(&d);
  json_decref(root);
}

static void test_long_csv(void) {
  json_t *root;
  json_t *m = run_file("metrics-long.csv", &root);
  CHECK_STR(json_string_value(json_object_get(m, "layout")), "long");
  CHECK(integer(m, "series_count") == 2);
  json_t *w2 = series_named(m, "error_rate", "host", "web-2");
  json_t *w1 = series_named(m, "error_rate", "host", "web-1");
  CHECK(w1 && w2 && integer(w2, "count") == 60 && integer(w1, "count") == 60);
  json_t *a = json_array_get(json_object_get(w2, "anomalies"), 0);
  CHECK(a && integer(a, "line") == 85 && num(a, "value") == 9.5);
  /* epoch milliseconds: 1795860615000 */
  CHECK_STR(json_string_value(json_object_get(a, "ts")), "2026-11-28T10:10:15.000Z");
  CHECK(w1 && json_array_size(json_object_get(w1, "anomalies")) == 0);
  json_decref(root);
}

static void test_prometheus(void) {
  json_t *root;
  json_t *m = run_file("metrics-prom-latency.prom", &root);
  CHECK_STR(json_string_value(json_object_get(m, "format")), "prometheus");
  /* the p99 gauge, _sum, _count, process_resident_memory_bytes, go_goroutines */
  CHECK(integer(m, "series_count") == 5);
  CHECK(integer(m, "bad_lines") == 0);
  json_t *p99 = series_named(m, "http_request_duration_p99_seconds", "route", "/pay");
  CHECK(p99 && integer(p99, "count") == 40);
  CHECK(p99 && json_string_value(json_object_get(json_object_get(p99, "labels"), "service")) &&
        strcmp(json_string_value(json_object_get(json_object_get(p99, "labels"), "service")),
               "checkout") == 0);
  json_t *a = json_array_get(json_object_get(p99, "anomalies"), 0);
  CHECK(a && integer(a, "line") == 30 && num(a, "value") == 6.0);
  CHECK(a && num(a, "z") > 5);
  CHECK_STR(json_string_value(json_object_get(a, "ts")), "2026-11-28T10:06:45.000Z");
  json_t *h = json_array_get(json_object_get(m, "histograms"), 0);
  CHECK_STR(json_string_value(json_object_get(h, "name")), "http_request_duration_seconds");
  CHECK(num(h, "count") == 1000 && integer(h, "buckets") == 9);
  /* linear within the bucket: p50 in (0.05, 0.1]: 0.05 + 0.05 * 300/420 */
  CHECK(NEAR(num(h, "p50"), 0.05 + 0.05 * 300.0 / 420.0, 1e-9));
  CHECK(NEAR(num(h, "p95"), 0.25 + 0.25 * 20.0 / 30.0, 1e-9));
  CHECK(NEAR(num(h, "p99"), 2.5 + 2.5 * 5.0 / 7.0, 1e-9));
  json_t *p99t = series_named(m, "http_request_duration_p99_seconds", "route", "/pay");
  CHECK_STR(json_string_value(json_object_get(p99t, "type")), "gauge");
  /* a histogram's _count is cumulative: one scrape gives its last value, no increase yet */
  json_t *hc = series_named(m, "http_request_duration_seconds_count", NULL, NULL);
  CHECK_STR(json_string_value(json_object_get(hc, "type")), "counter");
  CHECK(hc && integer(hc, "count") == 0 && num(hc, "last_value") == 1000);
  json_t *g = series_named(m, "go_goroutines", NULL, NULL);
  CHECK(g && num(g, "max") == 512 && json_is_null(json_object_get(g, "first_ts")));
  struct fm_buf d = {0};
  fm_an_metrics_digest(root, &d, FM_AN_DIGEST_MAX);
  CHECK(strstr(fm_buf_cstr(&d), "histogram http_request_duration_seconds") != NULL);
  fm_buf_free(&d);
  json_decref(root);
}

static void test_json(void) {
  json_t *root;
  json_t *m = run_file("metrics-query-range.json", &root);
  CHECK_STR(json_string_value(json_object_get(m, "format")), "json");
  CHECK_STR(json_string_value(json_object_get(m, "layout")), "document");
  CHECK(integer(m, "series_count") == 2);
  json_t *s18 = series_named(m, "node_load1", "instance", "10.0.3.18:9100");
  json_t *s17 = series_named(m, "node_load1", "instance", "10.0.3.17:9100");
  CHECK(s17 && s18 && integer(s18, "count") == 60);
  json_t *a = json_array_get(json_object_get(s18, "anomalies"), 0);
  CHECK(a && num(a, "value") == 18.49 && json_is_null(json_object_get(a, "line")));
  CHECK_STR(json_string_value(json_object_get(a, "ts")), "2026-11-28T10:22:00.000Z"); /* t0 + 30*44 */
  CHECK(s17 && integer(s17, "anomaly_count") == 0);
  CHECK(json_object_get(json_object_get(s18, "labels"), "__name__") == NULL);
  json_decref(root);

  m = run_file("metrics-points.jsonl", &root);
  CHECK_STR(json_string_value(json_object_get(m, "layout")), "lines");
  json_t *q = series_named(m, "queue_depth", "queue", "orders");
  CHECK(q && integer(q, "count") == 30);
  a = json_array_get(json_object_get(q, "anomalies"), 0);
  CHECK(a && integer(a, "line") == 20 && num(a, "value") == 600);
  json_decref(root);

  /* one-line query (curl output) and a plain array of points */
  const char *one = "{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":["
                    "{\"metric\":{\"__name__\":\"up\",\"job\":\"api\"},\"value\":[1795860000,\"1\"]},"
                    "{\"metric\":{\"__name__\":\"up\",\"job\":\"db\"},\"value\":[1795860000,\"0\"]}]}}\n";
  m = run_text(one, strlen(one), &root);
  CHECK(integer(m, "series_count") == 2 && integer(m, "samples") == 2);
  json_decref(root);
  const char *arr = "[{\"ts\":1795860000,\"name\":\"rps\",\"value\":10},\n"
                    " {\"ts\":1795860010,\"name\":\"rps\",\"value\":\"12\"}]\n";
  m = run_text(arr, strlen(arr), &root);
  json_t *rps = series_named(m, "rps", NULL, NULL);
  CHECK(rps && integer(rps, "count") == 2 && num(rps, "max") == 12);
  json_decref(root);
}

/* Fisher-Yates with a fixed LCG so the order is scrambled but reproducible. */
static void shuffle(double *v, size_t n) {
  uint64_t x = 12345;
  for (size_t i = n - 1; i > 0; i--) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    size_t j = (size_t)((x >> 33) % (i + 1));
    double t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}

static json_t *run_values(const double *v, size_t n, json_t **root) {
  struct fm_buf b = {0};
  fm_buf_adds(&b, "value\n");
  for (size_t i = 0; i < n; i++) fm_buf_printf(&b, "%.17g\n", v[i]);
  json_t *m = run_text(b.p, b.len, root);
  fm_buf_free(&b);
  return json_array_get(json_object_get(m, "series"), 0);
}

static void test_percentiles(void) {
  double *v = malloc(100000 * sizeof *v);
  for (int i = 0; i < 1000; i++) v[i] = i + 1;
  shuffle(v, 1000);
  json_t *root;
  json_t *s = run_values(v, 1000, &root);
  /* 1000 values fit the reservoir: exact, linear between closest ranks */
  CHECK(json_is_true(json_object_get(s, "percentiles_exact")));
  CHECK(NEAR(num(s, "p50"), 500.5, 1e-9));
  CHECK(NEAR(num(s, "p95"), 950.05, 1e-9));
  CHECK(NEAR(num(s, "p99"), 990.01, 1e-9));
  CHECK(NEAR(num(s, "mean"), 500.5, 1e-9));
  CHECK(NEAR(num(s, "stddev"), sqrt((1000.0 * 1000.0 - 1) / 12.0), 1e-6));
  CHECK(integer(s, "anomaly_count") == 0); /* uniform: max |z| is 1.73 */
  json_decref(root);
  /* 100 000 values: a 1024-value reservoir; stated error: rank sd sqrt(q(1-q)/1024), test 4 sd */
  for (int i = 0; i < 100000; i++) v[i] = i + 1;
  shuffle(v, 100000);
  s = run_values(v, 100000, &root);
  CHECK(json_is_false(json_object_get(s, "percentiles_exact")));
  CHECK(fabs(num(s, "p50") - 50000) <= 4 * sqrt(0.25 / 1024) * 100000);
  CHECK(fabs(num(s, "p95") - 95000) <= 4 * sqrt(0.95 * 0.05 / 1024) * 100000);
  CHECK(fabs(num(s, "p99") - 99000) <= 4 * sqrt(0.99 * 0.01 / 1024) * 100000);
  CHECK(num(s, "min") == 1 && num(s, "max") == 100000 && integer(s, "count") == 100000);
  CHECK(NEAR(num(s, "mean"), 50000.5, 1e-6));
  json_decref(root);
  free(v);
}

static void test_spike(void) {
  /* a 50x spike in a flat series of 2000 points, with two small wobbles, at line 1201 */
  struct fm_buf b = {0};
  fm_buf_adds(&b, "ts,rps\n");
  for (int i = 0; i < 2000; i++)
    fm_buf_printf(&b, "%d,%d\n", 1795860000 + i, i == 1199 ? 500 : (i % 500 == 7 ? 11 : 10));
  json_t *root;
  json_t *m = run_text(b.p, b.len, &root);
  json_t *s = json_array_get(json_object_get(m, "series"), 0);
  json_t *an = json_object_get(s, "anomalies");
  CHECK(json_array_size(an) >= 1);
  json_t *a = json_array_get(an, 0);
  CHECK(integer(a, "line") == 1201 && num(a, "value") == 500);
  CHECK(num(a, "z") > 40);
  /* the +1 wobbles are not anomalies: only the spike has |z| >= 3 */
  CHECK(json_array_size(an) == 1 && integer(s, "anomaly_count") == 1);
  CHECK(json_is_false(json_object_get(s, "percentiles_exact")));
  json_decref(root);
  fm_buf_free(&b);
}

static void test_hostile(void) {
  json_t *root;
  /* NUL bytes and invalid UTF-8 in names and values, ragged rows, text, NaN and Inf */
  static const char csv[] = "time,c\0pu,l\xff\xfe" "at,\xc3(mem\n"
                            "2026-11-22T10:00:00Z,1,2,3\n"
                            "2026-11-22T10:00:01Z,1,2\n"
                            "2026-11-22T10:00:02Z,1,2,3,4,5\n"
                            "2026-11-22T10:00:03Z,abc,NaN,+Inf\n"
                            "2026-11-22T10:00:04Z,\"2\",\x00\x01,-inf\n"
                            "garbage\xff\n";
  json_t *m = run_text(csv, sizeof csv - 1, &root);
  CHECK(dumps_valid(root));
  CHECK(integer(m, "ragged_rows") == 3);
  CHECK(integer(m, "non_numeric") == 2);
  CHECK(integer(m, "non_finite") == 3);
  json_t *s;
  size_t i;
  json_array_foreach(json_object_get(m, "series"), i, s) {
    CHECK(isfinite(num(s, "mean")));
    const char *nm = json_string_value(json_object_get(s, "name"));
    CHECK(nm && strlen(nm) == json_string_length(json_object_get(s, "name"))); /* no NUL */
  }
  json_t *cpu = series_named(m, "c\xef\xbf\xbdpu", NULL, NULL);
  CHECK(cpu && integer(cpu, "count") == 4 && num(cpu, "max") == 2);
  json_decref(root);

  /* a huge line (cut by the driver) in Prometheus text, and labels with invalid UTF-8 */
  size_t big = 200000;
  char *p = malloc(big + 200);
  size_t n = (size_t)snprintf(p, 200, "up{job=\"a\xff\"} 1\nx{l=\"");
  memset(p + n, 'A', big);
  n += big;
  n += (size_t)snprintf(p + n, 200, "\"} 2\nup{job=\"b\"} 3 notatime\nrequests_total 7\n");
  m = run_text(p, n, &root);
  CHECK(dumps_valid(root));
  CHECK(integer(m, "series_count") == 2); /* up{job=a?} and requests_total */
  CHECK(integer(m, "bad_lines") == 2);    /* the cut line and the bad timestamp */
  json_decref(root);
  free(p);

  /* counters: statistics over the increase per scrape, resets handled; a burst of +500 in a
   * counter growing by 10 per scrape is the anomaly, not the counter's growing value */
  struct fm_buf cb = {0};
  fm_buf_adds(&cb, "# HELP errors_total errors\n# TYPE errors_total counter\n");
  double total = 0;
  for (int k = 0; k < 40; k++) {
    total += k == 25 ? 500 : 10;
    if (k == 30) total = 5; /* restart: the counter starts again */
    fm_buf_printf(&cb, "errors_total{svc=\"api\"} %.0f %lld\n", total, (1795860000LL + 15 * k) * 1000);
  }
  fm_buf_adds(&cb, "temperature 20\ntemperature 21\nrequests_total 7\n");
  m = run_text(cb.p, cb.len, &root);
  json_t *ce = series_named(m, "errors_total", "svc", "api");
  CHECK(ce && integer(ce, "count") == 39 && integer(ce, "resets") == 1);
  CHECK_STR(json_string_value(json_object_get(ce, "value_kind")), "increase");
  CHECK(ce && num(ce, "min") == 5 && num(ce, "max") == 500 && num(ce, "p50") == 10);
  json_t *ca = json_array_get(json_object_get(ce, "anomalies"), 0);
  CHECK(ca && integer(ca, "line") == 28 && num(ca, "value") == 500);
  CHECK(json_array_size(json_object_get(ce, "anomalies")) == 1);
  json_t *rt = series_named(m, "requests_total", NULL, NULL); /* _total: a counter without TYPE */
  CHECK(rt && integer(rt, "count") == 0 && num(rt, "last_value") == 7);
  json_t *tp = series_named(m, "temperature", NULL, NULL);
  CHECK(tp && integer(tp, "count") == 2 && json_object_get(tp, "value_kind") == NULL);
  json_decref(root);
  fm_buf_free(&cb);

  /* the series cap in a query_range document: samples of dropped series are counted once */
  struct fm_buf qd = {0};
  fm_buf_adds(&qd, "{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[\n");
  for (int k = 0; k < 1010; k++)
    fm_buf_printf(&qd, "%s{\"metric\":{\"__name__\":\"up\",\"i\":\"%d\"},\"values\":[[1795860000,\"1\"],[1795860015,\"1\"]]}\n",
                  k ? "," : "", k);
  fm_buf_adds(&qd, "]}}\n");
  m = run_text(qd.p, qd.len, &root);
  CHECK(integer(m, "series_count") == 1000 && integer(m, "series_dropped") == 10);
  CHECK(integer(m, "samples") == 2000 && integer(m, "samples_dropped") == 20);
  json_decref(root);
  fm_buf_free(&qd);

  /* OpenMetrics: an exemplar after the value, and # EOF */
  const char *om = "# TYPE rpc_seconds histogram\n"
                   "rpc_seconds_bucket{le=\"0.1\"} 8 # {trace_id=\"abc\"} 0.05 1795860000.1\n"
                   "rpc_seconds_bucket{le=\"+Inf\"} 10\n"
                   "rpc_seconds_count 10 1795860000000 # {trace_id=\"def\"} 3.2\n"
                   "# EOF\n";
  m = run_text(om, strlen(om), &root);
  CHECK(integer(m, "bad_lines") == 0 && integer(m, "series_count") == 1);
  CHECK(num(json_array_get(json_object_get(m, "histograms"), 0), "count") == 10);
  json_decref(root);

  /* JSON: truncated, too deep */
  const char *trunc = "{\n \"status\": \"success\",\n \"data\": {\"resultType\": \"matrix\", \"result\": [\n";
  m = run_text(trunc, strlen(trunc), &root);
  CHECK(integer(m, "series_count") == 0 && json_is_string(json_object_get(m, "json_error")));
  json_decref(root);
  struct fm_buf deep = {0};
  fm_buf_adds(&deep, "{\"data\":\n");
  for (int k = 0; k < 5000; k++) fm_buf_addc(&deep, '[');
  fm_buf_adds(&deep, "\n");
  for (int k = 0; k < 5000; k++) fm_buf_addc(&deep, ']');
  fm_buf_adds(&deep, "}\n");
  m = run_text(deep.p, deep.len, &root);
  CHECK(json_string_value(json_object_get(m, "json_error")) &&
        strstr(json_string_value(json_object_get(m, "json_error")), "deeper") != NULL);
  json_decref(root);
  fm_buf_free(&deep);

  /* a document over 64 MiB is not parsed and says so (lines of 64 KiB) */
  struct fm_an_metrics *mm = fm_an_metrics_new();
  char *chunk = malloc(FM_AN_MAX_LINE);
  memset(chunk, ' ', FM_AN_MAX_LINE);
  chunk[0] = '"';
  chunk[FM_AN_MAX_LINE - 2] = '"';
  chunk[FM_AN_MAX_LINE - 1] = ',';
  struct fm_an_line l = {"[", 1, 1, 0};
  fm_an_metrics_line(mm, &l);
  for (uint64_t k = 0; k < 1100; k++) {
    struct fm_an_line c = {chunk, FM_AN_MAX_LINE, k + 2, 0};
    fm_an_metrics_line(mm, &c);
  }
  root = json_object();
  CHECK(fm_an_metrics_finish(mm, root) == 0);
  m = json_object_get(root, "metrics");
  CHECK(json_is_true(json_object_get(m, "truncated")));
  fm_an_metrics_free(mm);
  free(chunk);
  json_decref(root);

  /* curl's one-line query_range output over FM_AN_MAX_LINE: the driver cuts the line; with the
   * raw blocks the document is parsed whole, without them it says why it could not be */
  struct fm_buf one = {0};
  fm_buf_adds(&one, "{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[");
  for (int k = 0; k < 300; k++) {
    fm_buf_printf(&one, "%s{\"metric\":{\"__name__\":\"up\",\"pod\":\"p%d\"},\"values\":[", k ? "," : "", k);
    for (int j = 0; j < 20; j++) fm_buf_printf(&one, "%s[%d,\"%d\"]", j ? "," : "", 1795860000 + 15 * j, j == 7 && k == 3 ? 900 : 1);
    fm_buf_adds(&one, "]}");
  }
  fm_buf_adds(&one, "]}}\n");
  CHECK(one.len > FM_AN_MAX_LINE);
  m = run_text(one.p, one.len, &root);
  CHECK(json_is_true(json_object_get(m, "truncated")) && integer(m, "series_count") == 0);
  CHECK(json_string_value(json_object_get(m, "json_error")) &&
        strstr(json_string_value(json_object_get(m, "json_error")), "longer than") != NULL);
  json_decref(root);
  for (int pass = 0; pass < 2; pass++) {
    /* blocks before their lines (pass 0) and after them (pass 1), in 4 KiB pieces */
    mm = fm_an_metrics_new();
    struct fm_an_line cut = {one.p, FM_AN_MAX_LINE, 1, 1};
    if (pass) fm_an_metrics_line(mm, &cut);
    for (size_t off = 0; off < one.len; off += 4096)
      fm_an_metrics_block(mm, one.p + off, one.len - off < 4096 ? one.len - off : 4096);
    if (!pass) fm_an_metrics_line(mm, &cut);
    root = json_object();
    CHECK(fm_an_metrics_finish(mm, root) == 0);
    m = json_object_get(root, "metrics");
    CHECK(integer(m, "series_count") == 300 && integer(m, "samples") == 6000);
    json_t *p3 = series_named(m, "up", "pod", "p3");
    CHECK(p3 && num(json_array_get(json_object_get(p3, "anomalies"), 0), "value") == 900);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(p3, "anomalies"), 0), "ts")),
              "2026-11-28T10:01:45.000Z");
    fm_an_metrics_free(mm);
    json_decref(root);
  }
  /* raw blocks of CSV are not kept */
  mm = fm_an_metrics_new();
  struct fm_an_line hl = {"a,b", 3, 1, 0};
  fm_an_metrics_line(mm, &hl);
  fm_an_metrics_block(mm, "a,b\n1,2\n", 8);
  fm_an_metrics_free(mm);
  fm_buf_free(&one);

  /* a byte-order mark before a CSV header and before a JSON document */
  const char *bom = "\xEF\xBB\xBFtimestamp,v\n2026-11-22T10:00:00Z,1\n2026-11-22T10:00:01Z,3\n";
  const char *fmt = NULL;
  CHECK(detect_text(bom, strlen(bom), &fmt) > 0.8 && fmt && strcmp(fmt, "csv") == 0);
  m = run_text(bom, strlen(bom), &root);
  json_t *bv = series_named(m, "v", NULL, NULL);
  CHECK(bv && integer(bv, "count") == 2 && json_is_string(json_object_get(bv, "first_ts")));
  json_decref(root);
  const char *bomj = "\xEF\xBB\xBF{\n\"data\": {\"resultType\": \"vector\", \"result\": [\n"
                     "{\"metric\": {\"__name__\": \"up\"}, \"value\": [1795860000, \"1\"]}]}}\n";
  CHECK(detect_text(bomj, strlen(bomj), &fmt) > 0.8 && fmt && strcmp(fmt, "json") == 0);
  m = run_text(bomj, strlen(bomj), &root);
  CHECK(integer(m, "series_count") == 1);
  json_decref(root);

  /* an empty input and a module freed without finish */
  m = run_text("", 0, &root);
  CHECK(integer(m, "series_count") == 0);
  json_decref(root);
  fm_an_metrics_free(fm_an_metrics_new());
  fm_an_metrics_free(NULL);
}

static void test_series_cap(void) {
  /* 100 000 distinct series in Prometheus text: 1 000 kept, the rest counted */
  struct fm_an_metrics *m = fm_an_metrics_new();
  char buf[128];
  for (int i = 0; i < 100000; i++) {
    int n = snprintf(buf, sizeof buf, "http_requests_total{pod=\"api-%d\",code=\"200\"} %d", i, i);
    struct fm_an_line l = {buf, (size_t)n, (uint64_t)i + 1, 0};
    fm_an_metrics_line(m, &l);
  }
  /* a second scrape of a kept series and of a dropped one */
  int n = snprintf(buf, sizeof buf, "http_requests_total{pod=\"api-5\",code=\"200\"} 9");
  struct fm_an_line l = {buf, (size_t)n, 100001, 0};
  fm_an_metrics_line(m, &l);
  n = snprintf(buf, sizeof buf, "http_requests_total{pod=\"api-99999\",code=\"200\"} 9");
  struct fm_an_line l2 = {buf, (size_t)n, 100002, 0};
  fm_an_metrics_line(m, &l2);
  json_t *root = json_object();
  CHECK(fm_an_metrics_finish(m, root) == 0);
  json_t *mm = json_object_get(root, "metrics");
  CHECK(integer(mm, "series_count") == 1000);
  CHECK(integer(mm, "series_dropped") == 99000);
  CHECK(integer(mm, "samples_dropped") == 99001);
  CHECK(integer(mm, "samples") == 1001);
  CHECK(json_array_size(json_object_get(mm, "series")) == 50); /* output bounded */
  CHECK(integer(mm, "series_omitted") == 950);
  struct fm_buf d = {0};
  fm_an_metrics_digest(root, &d, FM_AN_DIGEST_MAX);
  CHECK(d.len <= FM_AN_DIGEST_MAX && d.len > 0);
  fm_buf_free(&d);
  fm_an_metrics_free(m);
  json_decref(root);
}

static void test_parsers(void) {
  /* the fast decimal path agrees with strtod bit for bit */
  uint64_t x = 99;
  int same = 1;
  for (int i = 0; i < 200000; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    char digs[24], buf[40];
    int digits = 1 + (int)((x >> 20) % 15), point = (int)((x >> 8) % (unsigned)(digits + 1));
    uint64_t m = (x >> 11) % 1000000000000000ULL;
    snprintf(digs, sizeof digs, "%015llu", (unsigned long long)m);
    /* the last `digits` digits, with a decimal point `point` places from the right */
    const char *d = digs + 15 - digits;
    snprintf(buf, sizeof buf, "%s%.*s%s%s", (x & 1) ? "-" : "", digits - point, d, point ? "." : "",
             d + digits - point);
    double v, w = strtod(buf, NULL);
    if (mc_parse_num(buf, strlen(buf), &v) != 1 || memcmp(&v, &w, sizeof v) != 0) {
      if (same) fprintf(stderr, "parse %s: %.17g vs strtod %.17g\n", buf, v, w);
      same = 0;
    }
  }
  CHECK(same);
  double v;
  CHECK(mc_parse_num("1e3", 3, &v) == 1 && v == 1000);
  CHECK(mc_parse_num(" 0.1 ", 5, &v) == 1 && v == 0.1);
  CHECK(mc_parse_num("12345678901234567890", 20, &v) == 1 && v == 12345678901234567890.0);
  CHECK(mc_parse_num("NaN", 3, &v) == 2 && mc_parse_num("+Inf", 4, &v) == 2);
  CHECK(mc_parse_num("0x10", 4, &v) == 0 && mc_parse_num("1.2.3", 5, &v) == 0);
  CHECK(mc_parse_num("", 0, &v) == 0 && mc_parse_num("-", 1, &v) == 0 && mc_parse_num("12ms", 4, &v) == 0);
  double t;
  CHECK(mc_parse_ts("2026-11-22T10:00:00Z", 20, &t) == 1 && t == 1795341600);
  CHECK(mc_parse_ts("2026-11-22 12:00:00.250+02:00", 29, &t) == 1 && t == 1795341600.25);
  CHECK(mc_parse_ts("1795341600", 10, &t) == 1 && t == 1795341600);
  CHECK(mc_parse_ts("1795341600123", 13, &t) == 1 && fabs(t - 1795341600.123) < 1e-6);
  CHECK(mc_parse_ts("42", 2, &t) == 0 && mc_parse_ts("2026-13-01", 10, &t) == 0);
  CHECK(mc_parse_ts("2026-11-22Tjunk", 15, &t) == 0);
}

int main(void) {
  test_parsers();
  test_detect();
  test_wide_csv();
  test_long_csv();
  test_prometheus();
  test_json();
  test_percentiles();
  test_spike();
  test_hostile();
  test_series_cap();
  return check_done();
}
