/* Randomised smoke test for engine/analysis/metrics.c and cmdout.c: lines built from fragments
 * of the formats (headers, keys, numbers, NUL, invalid UTF-8, lines of FM_AN_MAX_LINE) go to
 * every command kind and to the metrics module; the JSON must stay valid and the digests within
 * their bound. The seed is fixed, so a failure reproduces; under ASan+UBSan it also catches
 * memory errors and undefined behaviour. */
#include "analysis.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ULL;

static uint64_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static const char *const frags[] = {
    "Filesystem", " Use%", " 97%", "Mounted on", "%Cpu(s):", " id,", "MiB Mem :", " total,",
    " avail Mem", "PID", " %CPU", "USER", "State", "CLOSE-WAIT", "Proto", "tcp", "Name:",
    "Namespace:", "Containers:", "  app:", "    State:", "      Reason:", "OOMKilled", "Exit Code:",
    "Restart Count:", "Events:", "  Type", "Message", "Warning", "LAST SEEN", "TYPE", "REASON",
    "OBJECT", "MESSAGE", "[pod/", "]", "2026-11-22T10:00:00.123456789Z ",
    "Out of memory: Killed process ", " (", ")", "status=", "counter is at ",
    ": Main process exited", ": Scheduled restart job", "(x", " over", "{", "}", "[", "\"", "=",
    ",", "\t", " ", "le=\"", "_bucket", "# TYPE ", " counter", "1e308", "-1e308", "NaN", "+Inf",
    "value", "metric", "\"values\":[[", "\xff", "", "\xc3", "123", "0.5", "-", "/", ":",
    "\"data\":{\"result\":["};
#define NFRAGS (sizeof frags / sizeof frags[0])

/* One random line into buf; returns its length. An empty fragment stands for a NUL byte. */
static size_t random_line(char *buf) {
  size_t len = 0;
  int nf = (int)(rnd() % 20);
  for (int f = 0; f < nf; f++) {
    char num[32];
    const char *fr = frags[rnd() % NFRAGS];
    size_t fl = fr[0] ? strlen(fr) : 1;
    if (rnd() % 4 == 0) {
      fl = (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)(rnd() % 100000));
      fr = num;
    }
    if (len + fl < 4000) {
      memcpy(buf + len, fr, fl);
      len += fl;
    }
  }
  if (rnd() % 50 == 0) { /* a line as long as the driver ever passes */
    memset(buf + len, 'A', FM_AN_MAX_LINE - len);
    len = FM_AN_MAX_LINE;
  }
  return len;
}

int main(int argc, char **argv) {
  static const char *const kinds[] = {"top",         "ps",           "df",
                                      "free",        "netstat",      "ss",
                                      "dmesg",       "journalctl",   "kubectl_get",
                                      "kubectl_describe", "kubectl_logs", "kubectl_events"};
  int iters = argc > 1 ? atoi(argv[1]) : 400;
  char *buf = malloc(FM_AN_MAX_LINE);
  for (int it = 0; it < iters; it++) {
    struct fm_an_cmd *c = fm_an_cmd_new(kinds[it % 12]);
    struct fm_an_metrics *m = fm_an_metrics_new();
    CHECK(c != NULL && m != NULL);
    struct fm_an_line sniff[64];
    char *keep[64];
    size_t ns = 0;
    int nl = (int)(rnd() % 300);
    for (int i = 0; i < nl; i++) {
      size_t len = random_line(buf);
      /* each line in its own exact-size block, so a read past its end is an ASan error */
      char *copy = malloc(len ? len : 1);
      memcpy(copy, buf, len);
      struct fm_an_line l = {copy, len, (uint64_t)i + 1, 0};
      fm_an_cmd_line(c, &l);
      fm_an_metrics_line(m, &l);
      if (rnd() % 3 == 0) fm_an_metrics_block(m, copy, len);
      if (ns < 64) {
        sniff[ns] = l;
        keep[ns++] = copy;
      } else free(copy);
    }
    const char *k;
    double conf = fm_an_cmd_detect(sniff, ns, &k);
    CHECK(conf >= 0 && conf <= 1);
    conf = fm_an_metrics_detect(sniff, ns, &k);
    CHECK(conf >= 0 && conf <= 1);
    json_t *o = json_object();
    CHECK(fm_an_cmd_finish(c, o) == 0);
    CHECK(fm_an_metrics_finish(m, o) == 0);
    char *d = json_dumps(o, 0);
    json_t *back = d ? json_loads(d, 0, NULL) : NULL;
    CHECK(back != NULL);
    if (!back) fprintf(stderr, "invalid JSON at iteration %d\n", it);
    json_decref(back);
    free(d);
    struct fm_buf b = {0};
    fm_an_cmd_digest(o, &b, 500);
    size_t l1 = b.len;
    fm_an_metrics_digest(o, &b, 500);
    CHECK(l1 <= 500 && b.len - l1 <= 500);
    fm_buf_free(&b);
    json_decref(o);
    fm_an_cmd_free(c);
    fm_an_metrics_free(m);
    for (size_t i = 0; i < ns; i++) free(keep[i]);
  }
  free(buf);
  return check_done();
}
