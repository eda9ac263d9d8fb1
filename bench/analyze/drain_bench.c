/* drain_bench.c: throughput and grouping accuracy of the log module (engine/analysis/logs.c).
 *
 * Reads a labelled file from gen_labelled ("<template id>\t<line>" per line) into memory, feeds
 * every line (without its label) through fm_an_logs_line, and reports:
 *   - lines/s and MB/s of the whole module (timestamps, severity, Drain, bursts, transitions),
 *     timed over the feeding loop only, best of `rounds` runs;
 *   - grouping accuracy of the Drain templates against the true template ids: pairwise
 *     precision, recall and F1 (over all pairs of lines: "same template" as the positive class)
 *     and the grouping accuracy GA of the Loghub benchmark (share of lines whose predicted group
 *     has exactly the same lines as their true group); lines in the "other" bucket count as one
 *     group each (never right unless alone);
 *   - the resident set size after the run.
 * One line of JSON at the end, for bench/analyze/run.sh.
 *
 * Build and run (Release, no sanitizers), from the repository root:
 *   cc -O2 -o /tmp/fm_gen_labelled bench/analyze/gen_labelled.c
 *   cc -O2 -D_GNU_SOURCE -Iengine -Iengine/analysis -o /tmp/fm_drain_bench \
 *      bench/analyze/drain_bench.c engine/analysis/logs.c engine/buf.c $(pkg-config --cflags --libs jansson)
 *   /tmp/fm_gen_labelled 1000000 42 > /tmp/fm_labelled.log && /tmp/fm_drain_bench /tmp/fm_labelled.log 3
 *   /tmp/fm_gen_labelled 12000000 7 | /tmp/fm_drain_bench --stream      # ~1 GB through, memory flat
 */
#include "analysis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long a = 0, r = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &a, &r) != 2) r = 0;
    fclose(f);
  }
  return r * (sysconf(_SC_PAGESIZE) / 1024);
}

static double pairs(double n) { return n * (n - 1) / 2; }

/* --stream: lines from stdin ("<label>\t" prefixes are skipped), never held: shows that the
 * module's memory does not grow with the input. */
static int stream(void) {
  struct fm_an_logs *s = fm_an_logs_new();
  char *line = NULL;
  size_t cap = 0, n = 0, bytes = 0;
  ssize_t len;
  long rss0 = 0;
  double t0 = now();
  while ((len = getline(&line, &cap, stdin)) >= 0) {
    bytes += (size_t)len;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    char *p = line, *tab = memchr(line, '\t', (size_t)len);
    if (tab && tab - line < 4) p = tab + 1;
    size_t l = (size_t)(line + len - p);
    struct fm_an_line fl = {p, l > FM_AN_MAX_LINE ? FM_AN_MAX_LINE : l, ++n, l > FM_AN_MAX_LINE};
    fm_an_logs_line(s, &fl);
    if (n == 100000) rss0 = rss_kib();
  }
  double dt = now() - t0;
  json_t *out = json_object();
  fm_an_logs_finish(s, out);
  const json_t *lg = json_object_get(out, "logs");
  printf("stream: %zu lines, %.1f MB in %.2f s (%.0f lines/s, including reading stdin); "
         "templates %lld, rss at 100k lines %ld KiB, at the end %ld KiB\n",
         n, (double)bytes / 1e6, dt, (double)n / dt,
         (long long)json_integer_value(json_object_get(lg, "total_templates")), rss0, rss_kib());
  json_decref(out);
  fm_an_logs_free(s);
  free(line);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: drain_bench labelled.log [rounds] | drain_bench --stream < log\n");
    return 2;
  }
  if (!strcmp(argv[1], "--stream")) return stream();
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  FILE *f = fopen(argv[1], "rb");
  if (!f) {
    perror(argv[1]);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *data = malloc((size_t)size + 1);
  if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) return 1;
  fclose(f);
  data[size] = 0;
  size_t cap = 1 << 20, n = 0;
  struct fm_an_line *lines = malloc(cap * sizeof *lines);
  int *label = malloc(cap * sizeof *label);
  size_t bytes = 0;
  for (char *p = data; p < data + size;) {
    char *e = memchr(p, '\n', (size_t)(data + size - p));
    if (!e) e = data + size;
    char *tab = memchr(p, '\t', (size_t)(e - p));
    if (tab) {
      if (n == cap) {
        cap *= 2;
        lines = realloc(lines, cap * sizeof *lines);
        label = realloc(label, cap * sizeof *label);
      }
      label[n] = atoi(p);
      lines[n] = (struct fm_an_line){tab + 1, (size_t)(e - tab - 1), n + 1, 0};
      bytes += lines[n].len + 1;
      n++;
    }
    p = e + 1;
  }
  int32_t *pred = malloc(n * sizeof *pred);
  double best = 1e30;
  json_t *out = NULL;
  for (int r = 0; r < rounds; r++) {
    struct fm_an_logs *s = fm_an_logs_new();
    double t0 = now();
    for (size_t i = 0; i < n; i++) {
      fm_an_logs_line(s, &lines[i]);
      pred[i] = fm_an_logs_last_template(s);
    }
    double dt = now() - t0;
    if (dt < best) best = dt;
    if (r == rounds - 1) {
      out = json_object();
      fm_an_logs_finish(s, out);
    }
    fm_an_logs_free(s);
  }

  /* contingency table: predicted group x true template */
  int maxl = 0;
  int32_t maxp = 0;
  for (size_t i = 0; i < n; i++) {
    if (label[i] > maxl) maxl = label[i];
    if (pred[i] > maxp) maxp = pred[i];
  }
  size_t L = (size_t)maxl + 1, P = (size_t)maxp + 1;
  double *cont = calloc(P * L, sizeof *cont), *ps = calloc(P, sizeof *ps), *ls = calloc(L, sizeof *ls);
  size_t other = 0;
  for (size_t i = 0; i < n; i++) {
    ls[label[i]]++;
    if (pred[i] < 0) {
      other++;
      continue;
    }
    cont[(size_t)pred[i] * L + (size_t)label[i]]++;
    ps[pred[i]]++;
  }
  double tp = 0, pp = 0, ap = 0;
  for (size_t i = 0; i < P * L; i++) tp += pairs(cont[i]);
  for (size_t i = 0; i < P; i++) pp += pairs(ps[i]);
  for (size_t i = 0; i < L; i++) ap += pairs(ls[i]);
  double prec = pp ? tp / pp : 1, rec = ap ? tp / ap : 1, f1 = prec + rec ? 2 * prec * rec / (prec + rec) : 0;
  /* GA: a true group is right when one predicted group holds exactly its lines */
  double ga_lines = 0;
  size_t groups_ok = 0;
  for (size_t l = 0; l < L; l++) {
    for (size_t p = 0; p < P; p++)
      if (cont[p * L + l] > 0) {
        if (cont[p * L + l] == ls[l] && ps[p] == ls[l]) ga_lines += ls[l], groups_ok++;
        break;
      }
  }
  const json_t *lg = json_object_get(out, "logs");
  if (getenv("DRAIN_BENCH_VERBOSE")) { /* predicted groups that mix true templates */
    for (size_t p = 0; p < P; p++) {
      int mixed = 0;
      for (size_t l = 0; l < L; l++) mixed += cont[p * L + l] > 0;
      if (mixed < 2) continue;
      printf("group %zu mixes:", p);
      for (size_t l = 0; l < L; l++)
        if (cont[p * L + l] > 0) printf(" %zu(%.0f)", l, cont[p * L + l]);
      size_t i;
      const json_t *t;
      json_array_foreach(json_object_get(lg, "templates"), i, t)
        if ((size_t)json_integer_value(json_object_get(t, "id")) == p)
          printf("  %s", json_string_value(json_object_get(t, "template")));
      printf("\n");
    }
  }
  long long nt = (long long)json_integer_value(json_object_get(lg, "total_templates"));
  double lps = (double)n / best;
  printf("lines %zu, bytes %zu, best of %d: %.3f s, %.0f lines/s, %.1f MB/s\n", n, bytes, rounds,
         best, lps, (double)bytes / best / 1e6);
  printf("true templates %zu, found %lld, other %zu\n", L, nt, other);
  printf("pairwise precision %.4f recall %.4f F1 %.4f; grouping accuracy %.4f (%zu of %zu templates exact)\n",
         prec, rec, f1, ga_lines / (double)n, groups_ok, L);
  printf("rss %ld KiB (input held in memory: %ld KiB)\n", rss_kib(), size / 1024);
  printf("{\"bench\":\"drain\",\"lines\":%zu,\"seconds\":%.4f,\"lines_per_s\":%.0f,\"templates_true\":%zu,"
         "\"templates_found\":%lld,\"precision\":%.4f,\"recall\":%.4f,\"f1\":%.4f,\"ga\":%.4f}\n",
         n, best, lps, L, nt, prec, rec, f1, ga_lines / (double)n);
  json_decref(out);
  free(cont);
  free(ps);
  free(ls);
  free(pred);
  free(lines);
  free(label);
  free(data);
  return 0;
}
