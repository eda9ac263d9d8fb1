/* Unit tests for engine/analysis/scan.c: the one-pass signature scanner (Hyperscan streaming):
 * matches across block boundaries, line numbers, a huge single line, NUL bytes, a user set
 * matched together with the built-ins, bad patterns, the set cache, secret trigger lines. */
#include "analysis.h"
#include "check.h"
#include "err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Index of a signature by name in a set, or (size_t)-1. */
static size_t sig_index(const struct fm_an_sigset *set, const char *name) {
  for (size_t i = 0; i < fm_an_sigset_count(set); i++)
    if (!strcmp(fm_an_sigset_sig(set, i)->name, name)) return i;
  return (size_t)-1;
}

/* Scans text cut into pieces of `step` bytes; returns the scan (caller frees). */
static struct fm_an_scan *scan_pieces(const struct fm_an_sigset *set, const char *text,
                                      size_t len, size_t step) {
  struct fm_err err = {0};
  struct fm_an_scan *s = NULL;
  if (fm_an_scan_new(set, &s, &err)) {
    fprintf(stderr, "scan_new: %s\n", err.msg);
    return NULL;
  }
  for (size_t at = 0; at < len; at += step)
    if (fm_an_scan_block(s, text + at, len - at < step ? len - at : step, &err))
      fprintf(stderr, "scan_block: %s\n", err.msg);
  if (fm_an_scan_end(s, &err)) fprintf(stderr, "scan_end: %s\n", err.msg);
  return s;
}

static void check_hits(struct fm_an_scan *s, size_t i, uint64_t count, uint64_t first,
                       uint64_t last) {
  uint64_t f = 0, l = 0, c = fm_an_scan_hits(s, i, &f, &l);
  if (c != count || (count && (f != first || l != last)))
    fprintf(stderr, "  signature %zu: count %llu first %llu last %llu; expected %llu %llu %llu\n",
            i, (unsigned long long)c, (unsigned long long)f, (unsigned long long)l,
            (unsigned long long)count, (unsigned long long)first, (unsigned long long)last);
  CHECK(c == count);
  if (count) CHECK(f == first && l == last);
}

/* Threads: each makes (or gets from the cache) a user set and scans with it and with the
 * built-ins, many times; scratch spaces come from the shared pool. */
static int thread_failures;
static pthread_mutex_t tf_mu = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg) {
  const char *text = "a\nthread marker 42\nsegfault at 0\nthread marker 7\n";
  struct fm_an_sig mine[] = {{"marker", "thread marker [0-9]+", NULL, NULL, NULL}};
  int bad = 0;
  for (int i = 0; i < 50; i++) {
    struct fm_err err = {0};
    struct fm_an_sigset *set = NULL;
    if (fm_an_sigset_new(mine, 1, &set, &err)) {
      bad++;
      continue;
    }
    const struct fm_an_sigset *use = (i + (int)(size_t)arg) % 2 ? set : fm_an_sigset_builtin(&err);
    struct fm_an_scan *s = scan_pieces(use, text, strlen(text), 3);
    uint64_t first, last;
    size_t m = sig_index(use, "marker"), sg = sig_index(use, "segfault");
    if (!s || fm_an_scan_hits(s, sg, &first, &last) != 1 || first != 3) bad++;
    if (s && m != (size_t)-1 && (fm_an_scan_hits(s, m, &first, &last) != 2 || last != 4)) bad++;
    fm_an_scan_free(s);
    fm_an_sigset_unref(set);
  }
  pthread_mutex_lock(&tf_mu);
  thread_failures += bad;
  pthread_mutex_unlock(&tf_mu);
  return NULL;
}

int main(void) {
  struct fm_err err = {0};
  CHECK(fm_an_platform_check(&err) == 0);
  size_t nb;
  const struct fm_an_sig *b = fm_an_builtin_sigs(&nb);
  CHECK(nb >= 25);
  const struct fm_an_sigset *bi = fm_an_sigset_builtin(&err);
  CHECK(bi != NULL);
  if (!bi) return check_done();
  CHECK(fm_an_sigset_count(bi) == nb);
  CHECK_STR(fm_an_sigset_sig(bi, 0)->name, b[0].name);
  size_t refused = sig_index(bi, "connection_refused"), disk = sig_index(bi, "disk_full");
  size_t s502 = sig_index(bi, "http_502_bad_gateway"), segv = sig_index(bi, "segfault");
  size_t oom = sig_index(bi, "java_out_of_memory");
  CHECK(refused != (size_t)-1 && disk != (size_t)-1 && s502 != (size_t)-1 && segv != (size_t)-1);

  /* line numbers, lines counted once however often they match, and case-insensitivity */
  const char *text = "ok\n"
                     "first Connection refused\n"
                     "fine\n"
                     "again connection REFUSED and connection refused\n"
                     "x\n"
                     "10.0.0.1 - - [t] \"GET / HTTP/1.1\" 502 157\n"
                     "last connection refused";
  struct fm_an_scan *s = scan_pieces(bi, text, strlen(text), 1 << 20);
  CHECK(s != NULL);
  if (s) {
    check_hits(s, refused, 3, 2, 7);
    check_hits(s, s502, 1, 6, 6);
    check_hits(s, disk, 0, 0, 0);
    json_t *arr = json_array();
    CHECK(fm_an_scan_results(s, arr) == 0);
    CHECK(json_array_size(arr) >= 2);
    /* most lines first */
    CHECK_STR(json_string_value(json_object_get(json_array_get(arr, 0), "name")),
              "connection_refused");
    CHECK(json_integer_value(json_object_get(json_array_get(arr, 0), "count")) == 3);
    json_decref(arr);
    fm_an_scan_free(s);
  }

  /* the same text cut into 1-byte and 5-byte blocks: every match crosses a boundary */
  for (size_t step = 1; step <= 5; step += 4) {
    s = scan_pieces(bi, text, strlen(text), step);
    if (s) {
      check_hits(s, refused, 3, 2, 7);
      check_hits(s, s502, 1, 6, 6);
      fm_an_scan_free(s);
    }
  }

  /* a huge single line (12 MiB) with the signature straddling the 1 MiB block boundaries, then
   * a second line: lines 1 and 2, both found */
  size_t big = 12u << 20;
  char *huge = malloc(big + 64);
  memset(huge, 'a', big);
  const char *needle = " No space left on device ";
  memcpy(huge + (5u << 20) - 10, needle, strlen(needle));
  memcpy(huge + big - 40, " java.lang.OutOfMemoryError ", 28);
  size_t hl = big;
  memcpy(huge + hl, "\nSegmentation fault\n", 20);
  hl += 20;
  s = scan_pieces(bi, huge, hl, 1u << 20);
  if (s) {
    check_hits(s, disk, 1, 1, 1);
    check_hits(s, oom, 1, 1, 1);
    check_hits(s, segv, 1, 2, 2);
    fm_an_scan_free(s);
  }
  free(huge);

  /* NUL bytes around and inside lines do not stop the scan */
  const char nul[] = "\0\0bin\0ary\n\0segfault at 0 ip \0\n\0\0No space left on device\0";
  s = scan_pieces(bi, nul, sizeof nul - 1, 7);
  if (s) {
    check_hits(s, segv, 1, 2, 2);
    check_hits(s, disk, 1, 3, 3);
    fm_an_scan_free(s);
  }

  /* a user set: its signatures and the built-ins in one pass; end-anchored patterns too */
  struct fm_an_sig mine[] = {
      {"deploy_failed", "deploy(ment)? [a-z0-9-]+ failed", "critical", "i", "a deploy failed"},
      {"ends_done", "done$", NULL, NULL, NULL},
      {"multi", "begin.*end", "info", "s", NULL},
  };
  struct fm_an_sigset *set = NULL;
  CHECK(fm_an_sigset_new(mine, 3, &set, &err) == 0);
  if (set) {
    CHECK(fm_an_sigset_count(set) == nb + 3);
    size_t dep = sig_index(set, "deploy_failed"), done = sig_index(set, "ends_done");
    size_t multi = sig_index(set, "multi"), r2 = sig_index(set, "connection_refused");
    CHECK(dep == nb && done == nb + 1 && multi == nb + 2 && r2 == refused);
    const char *t = "Deployment api-7 FAILED: connection refused\nbegin x\ny end\nall done";
    s = scan_pieces(set, t, strlen(t), 3);
    if (s) {
      check_hits(s, dep, 1, 1, 1);
      check_hits(s, r2, 1, 1, 1);
      check_hits(s, done, 1, 4, 4); /* reported when the stream ends */
      check_hits(s, multi, 1, 3, 3); /* "s": the match spans lines; counted at its end */
      json_t *arr = json_array();
      fm_an_scan_results(s, arr);
      size_t i;
      json_t *o;
      int saw = 0;
      json_array_foreach(arr, i, o) {
        if (!strcmp(json_string_value(json_object_get(o, "name")), "deploy_failed")) {
          saw = 1;
          CHECK_STR(json_string_value(json_object_get(o, "severity")), "critical");
        }
      }
      CHECK(saw);
      json_decref(arr);
      fm_an_scan_free(s);
    }
    /* the cache: the same list gives the same compiled set */
    struct fm_an_sigset *again = NULL;
    CHECK(fm_an_sigset_new(mine, 3, &again, &err) == 0);
    CHECK(again == set);
    fm_an_sigset_unref(again);
    fm_an_sigset_unref(set);
  }

  /* bad signatures: the message names the signature */
  struct fm_an_sig bad[] = {{"ok_one", "fine", NULL, NULL, NULL},
                            {"broken_one", "(unclosed", NULL, NULL, NULL}};
  memset(&err, 0, sizeof err);
  CHECK(fm_an_sigset_new(bad, 2, &set, &err) == FM_E_INVAL && set == NULL);
  CHECK(strstr(err.msg, "broken_one") != NULL);
  struct fm_an_sig backref[] = {{"backref", "(a)\\1", NULL, NULL, NULL}};
  CHECK(fm_an_sigset_new(backref, 1, &set, &err) == FM_E_INVAL && strstr(err.msg, "backref"));
  struct fm_an_sig dup[] = {{"x", "a", NULL, NULL, NULL}, {"x", "b", NULL, NULL, NULL}};
  CHECK(fm_an_sigset_new(dup, 2, &set, &err) == FM_E_INVAL && strstr(err.msg, "twice"));
  struct fm_an_sig clash[] = {{"segfault", "a", NULL, NULL, NULL}};
  CHECK(fm_an_sigset_new(clash, 1, &set, &err) == FM_E_INVAL && strstr(err.msg, "built-in"));
  struct fm_an_sig sev[] = {{"s", "a", "loud", NULL, NULL}};
  CHECK(fm_an_sigset_new(sev, 1, &set, &err) == FM_E_INVAL && strstr(err.msg, "severity"));
  struct fm_an_sig empty[] = {{"e", "", NULL, NULL, NULL}};
  CHECK(fm_an_sigset_new(empty, 1, &set, &err) == FM_E_INVAL);
  struct fm_an_sig flags[] = {{"f", "a", NULL, "q", NULL}};
  CHECK(fm_an_sigset_new(flags, 1, &set, &err) == FM_E_INVAL && strstr(err.msg, "flags"));

  /* secret trigger lines, asked in increasing order */
  const char *st = "plain\npassword=x1\nplain\nkey AKIAIOSFODNN7EXAMPLE\nplain\n";
  s = scan_pieces(bi, st, strlen(st), 4);
  if (s) {
    CHECK(!fm_an_scan_secret_line(s, 1));
    CHECK(fm_an_scan_secret_line(s, 2));
    CHECK(!fm_an_scan_secret_line(s, 3));
    CHECK(fm_an_scan_secret_line(s, 4));
    CHECK(!fm_an_scan_secret_line(s, 5));
    fm_an_scan_free(s);
  }
  pthread_t th[4];
  for (size_t i = 0; i < 4; i++) pthread_create(&th[i], NULL, worker, (void *)i);
  for (size_t i = 0; i < 4; i++) pthread_join(th[i], NULL);
  CHECK(thread_failures == 0);
  return check_done();
}
