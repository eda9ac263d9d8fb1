/* scan_bench.c: throughput of the signature scanner and of the analysis driver.
 *
 *   scan_bench SIGNATURES.tsv FILE [rounds] [full]
 *
 * SIGNATURES.tsv: "name<TAB>pattern" per line (patterns that mean the same in Hyperscan and in
 * POSIX ERE, so grep -E and rg can run the same set). Measures, best of `rounds`:
 *   scan     only these signatures (fm_an_sigset_new_bare: no built-ins, no secret triggers),
 *            the file read with read() in 1 MiB blocks, each block through the Hyperscan stream
 *            and the line mapping (per signature: matching lines, first, last) -- the work grep -c
 *            and rg -c do, plus per-signature counts;
 *   driver   fm_an_analyze_file with modules off: the built-ins + secret triggers, line splitting,
 *            UTF-8/NUL/CRLF counting, secrets on trigger lines, the summary and the digest;
 *   full     (when the 4th argument is "full") fm_an_analyze_file with every module, once.
 * Prints "count <name> <lines>" per signature, then one JSON line for run.sh (with the peak
 * resident set size of the process). */
#include "analyze.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Peak resident set of this process (every run above): the file is never held whole. */
static long max_rss_kib(void) {
  struct rusage ru;
  return getrusage(RUSAGE_SELF, &ru) ? -1 : ru.ru_maxrss;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: scan_bench SIGNATURES.tsv FILE [rounds] [full]\n");
    return 2;
  }
  int rounds = argc > 3 ? atoi(argv[3]) : 3;
  int full = argc > 4 && !strcmp(argv[4], "full");
  FILE *sf = fopen(argv[1], "r");
  if (!sf) {
    perror(argv[1]);
    return 1;
  }
  struct fm_an_sig sigs[256];
  size_t n = 0;
  char line[4096];
  while (n < 256 && fgets(line, sizeof line, sf)) {
    line[strcspn(line, "\n")] = '\0';
    char *tab = strchr(line, '\t');
    if (!tab) continue;
    *tab = '\0';
    sigs[n].name = strdup(line);
    sigs[n].pattern = strdup(tab + 1);
    sigs[n].severity = sigs[n].flags = sigs[n].description = NULL;
    n++;
  }
  fclose(sf);
  struct fm_err err = {0};
  struct fm_an_sigset *set = NULL;
  if (fm_an_sigset_new_bare(sigs, n, &set, &err)) {
    fprintf(stderr, "signatures: %s\n", err.msg);
    return 1;
  }
  char *buf = malloc(FM_AN_BLOCK);
  double best = 1e9;
  unsigned long long bytes = 0;
  struct fm_an_scan *keep = NULL;
  for (int r = 0; r < rounds; r++) {
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) {
      perror(argv[2]);
      return 1;
    }
    struct fm_an_scan *s = NULL;
    if (fm_an_scan_new(set, &s, &err)) {
      fprintf(stderr, "scan: %s\n", err.msg);
      return 1;
    }
    double t0 = now();
    ssize_t got;
    bytes = 0;
    while ((got = read(fd, buf, FM_AN_BLOCK)) > 0) {
      if (fm_an_scan_block(s, buf, (size_t)got, &err)) {
        fprintf(stderr, "scan: %s\n", err.msg);
        return 1;
      }
      bytes += (unsigned long long)got;
    }
    fm_an_scan_end(s, &err);
    double dt = now() - t0;
    close(fd);
    if (dt < best) best = dt;
    fm_an_scan_free(keep);
    keep = s;
  }
  unsigned long long total_hits = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t c = fm_an_scan_hits(keep, i, NULL, NULL);
    total_hits += c;
    printf("count %s %llu\n", sigs[i].name, (unsigned long long)c);
  }
  fm_an_scan_free(keep);
  double scan_mbs = (double)bytes / 1e6 / best;

  double dbest = 1e9;
  unsigned long long lines = 0;
  for (int r = 0; r < rounds; r++) {
    struct fm_an_opts o = {.no_modules = 1};
    struct fm_an_result res;
    double t0 = now();
    if (fm_an_analyze_file(argv[2], &o, &res, &err)) {
      fprintf(stderr, "driver: %s\n", err.msg);
      return 1;
    }
    double dt = now() - t0;
    lines = res.lines;
    fm_an_result_free(&res);
    if (dt < dbest) dbest = dt;
  }
  double full_s = 0;
  if (full) {
    struct fm_an_result res;
    double t0 = now();
    if (fm_an_analyze_file(argv[2], NULL, &res, &err)) {
      fprintf(stderr, "driver: %s\n", err.msg);
      return 1;
    }
    full_s = now() - t0;
    fprintf(stderr, "full analysis: %s/%s, digest %zu bytes, summary %zu bytes\n",
            res.source_type, res.detailed_type, res.digest_len, res.summary_len);
    fm_an_result_free(&res);
  }
  printf("{\"bytes\":%llu,\"lines\":%llu,\"signatures\":%zu,\"matching_lines_sum\":%llu,"
         "\"scan_s\":%.3f,\"scan_MBps\":%.1f,\"driver_scan_only_s\":%.3f,"
         "\"driver_scan_only_MBps\":%.1f,\"full_s\":%.3f,\"full_MBps\":%.1f,"
         "\"full_lines_per_s\":%.0f,\"max_rss_kib\":%ld}\n",
         bytes, lines, n, total_hits, best, scan_mbs, dbest, (double)bytes / 1e6 / dbest, full_s,
         full ? (double)bytes / 1e6 / full_s : 0.0, full ? (double)lines / full_s : 0.0,
         max_rss_kib());
  fm_an_sigset_unref(set);
  free(buf);
  for (size_t i = 0; i < n; i++) {
    free((char *)sigs[i].name);
    free((char *)sigs[i].pattern);
  }
  return 0;
}
