/* Unit tests for engine/metrics.c: types, label escaping, histogram rendering. */
#include "check.h"
#include "metrics.h"

#include <stdlib.h>

int main(void) {
  struct fm_buf out = {0}, lb = {0};
  CHECK(fm_metrics_register("t_requests_total", FM_METRIC_COUNTER, "Requests.", NULL, 0) == 0);
  CHECK(fm_metrics_register("t_requests_total", FM_METRIC_COUNTER, "again", NULL, 0) == 0);
  CHECK(fm_metrics_register("t_requests_total", FM_METRIC_GAUGE, "clash", NULL, 0) != 0);
  CHECK(fm_metrics_register("1bad", FM_METRIC_GAUGE, "", NULL, 0) != 0);
  CHECK(fm_metrics_register("t_busy", FM_METRIC_GAUGE, "Busy.", NULL, 0) == 0);
  double buckets[] = {0.1, 1};
  CHECK(fm_metrics_register("t_latency_seconds", FM_METRIC_HISTOGRAM, "Latency.", buckets, 2) == 0);

  const char *keys[] = {"route", "status"};
  const char *vals[] = {"/a\"b\\c\nd", "200"};
  CHECK(fm_metrics_labels(&lb, keys, vals, 2) == 0);
  CHECK_STR(fm_buf_cstr(&lb), "route=\"/a\\\"b\\\\c\\nd\",status=\"200\"");
  CHECK(fm_metrics_inc("t_requests_total", fm_buf_cstr(&lb), 1) == 0);
  CHECK(fm_metrics_inc("t_requests_total", fm_buf_cstr(&lb), 2) == 0);
  CHECK(fm_metrics_inc("t_requests_total", "", -1) != 0);      /* counters never go down */
  CHECK(fm_metrics_set("t_requests_total", "", 5) != 0);       /* wrong type */
  CHECK(fm_metrics_inc("t_unknown_total", "", 1) != 0);
  CHECK(fm_metrics_get("t_requests_total", fm_buf_cstr(&lb)) == 3);
  CHECK(fm_metrics_set("t_busy", "", 4) == 0 && fm_metrics_add("t_busy", "", -1) == 0);
  CHECK(fm_metrics_get("t_busy", "") == 3);
  CHECK(fm_metrics_observe("t_latency_seconds", "route=\"/\"", 0.05) == 0);
  CHECK(fm_metrics_observe("t_latency_seconds", "route=\"/\"", 0.5) == 0);
  CHECK(fm_metrics_observe("t_latency_seconds", "route=\"/\"", 5) == 0);

  CHECK(fm_metrics_render(&out) == 0);
  const char *s = fm_buf_cstr(&out);
  CHECK(strstr(s, "# TYPE t_requests_total counter\n") != NULL);
  CHECK(strstr(s, "t_requests_total{route=\"/a\\\"b\\\\c\\nd\",status=\"200\"} 3\n") != NULL);
  CHECK(strstr(s, "t_busy 3\n") != NULL);
  CHECK(strstr(s, "t_latency_seconds_bucket{route=\"/\",le=\"0.1\"} 1\n") != NULL);
  CHECK(strstr(s, "t_latency_seconds_bucket{route=\"/\",le=\"1\"} 2\n") != NULL);
  CHECK(strstr(s, "t_latency_seconds_bucket{route=\"/\",le=\"+Inf\"} 3\n") != NULL);
  CHECK(strstr(s, "t_latency_seconds_count{route=\"/\"} 3\n") != NULL);
  CHECK(strstr(s, "t_latency_seconds_sum{route=\"/\"} 5.5499999999999998\n") != NULL ||
        strstr(s, "t_latency_seconds_sum{route=\"/\"} 5.55\n") != NULL);
  /* families are sorted by name */
  CHECK(strstr(s, "t_busy") < strstr(s, "t_latency_seconds") &&
        strstr(s, "t_latency_seconds") < strstr(s, "t_requests_total"));
  fm_buf_free(&out);
  fm_buf_free(&lb);
  fm_metrics_reset();
  return check_done();
}
