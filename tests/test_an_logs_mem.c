/* Memory bound of engine/analysis/logs.c: 2 M distinct random lines (no two share a template),
 * then the template cap and the "other" bucket hold, and the resident size stops growing once
 * the cap is reached. */
#include "analysis.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Resident set size in bytes (/proc/self/statm). */
static long rss(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
  }
  return res * sysconf(_SC_PAGESIZE);
}

int main(void) {
  enum { LINES = 2000000 };
  struct fm_an_logs *s = fm_an_logs_new();
  CHECK(s != NULL);
  char line[128];
  long rss_early = 0;
  for (uint64_t i = 1; i <= LINES; i++) {
    /* five random words of letters g..z (never hex, never masked) */
    size_t n = 0;
    for (int w = 0; w < 5; w++) {
      uint64_t r = next();
      int len = 5 + (int)(r % 4);
      for (int k = 0; k < len; k++) line[n++] = (char)('g' + (r >> (8 + 4 * k)) % 20);
      line[n++] = ' ';
    }
    n += (size_t)snprintf(line + n, sizeof line - n, "%s", i % 7 == 0 ? "ERROR" : "done");
    struct fm_an_line l = {line, n, i, 0};
    fm_an_logs_line(s, &l);
    if (i == 200000) rss_early = rss();
  }
  long rss_late = rss();
  json_t *root = json_object();
  CHECK(fm_an_logs_finish(s, root) == 0);
  const json_t *L = json_object_get(root, "logs");
  CHECK(json_integer_value(json_object_get(L, "lines")) == LINES);
  CHECK(json_integer_value(json_object_get(L, "total_templates")) == 5000);
  CHECK(json_integer_value(json_object_get(L, "other_lines")) == LINES - 5000);
  CHECK(json_array_size(json_object_get(L, "templates")) == 50);
  CHECK(json_array_size(json_object_get(L, "error_clusters")) == 20);
  /* after the cap, 1.8 M more lines add nothing that stays */
  long growth = rss_late - rss_early;
  printf("rss at 200k lines %ld KiB, at 2M lines %ld KiB, growth %ld KiB\n", rss_early / 1024,
         rss_late / 1024, growth / 1024);
  CHECK(growth < 4L * 1024 * 1024);
  json_decref(root);
  fm_an_logs_free(s);
  return check_done();
}
