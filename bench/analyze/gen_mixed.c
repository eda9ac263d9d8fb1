/* gen_mixed.c: writes about SIZE bytes of realistic mixed log lines to stdout, for the signature
 * scan benchmark (bench/analyze/run.sh). Deterministic for a seed.
 *
 * The mix, per line (percentages of lines):
 *   62%  nginx access log (combined format + request time, 3% of requests over a second);
 *        0.8% of them 502, 0.2% 504, some 4xx
 *    8%  nginx error log (upstream timed out / connection refused / prematurely closed)
 *   22%  application lines (ISO timestamp, level, logger, logfmt fields; some timeouts, some
 *        "password authentication failed", some DNS failures)
 *    8%  Java (logback lines; now and then an exception header with 3-12 "at" frames,
 *        OutOfMemoryError in a few of them)
 * Lines are 80-300 bytes, ASCII, "\n"-terminated; timestamps move forward.
 *
 *   cc -O2 -o /tmp/gen_mixed bench/analyze/gen_mixed.c
 *   /tmp/gen_mixed 1073741824 7 > /tmp/mixed.log        # bytes, seed
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs;
static uint64_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return rs;
}
static unsigned rn(unsigned n) { return (unsigned)(rnd() % n); }

static const char *const paths[] = {"/api/v1/cases", "/api/v1/cases/1842/messages", "/health",
                                    "/static/js/app.4f9a1c.js", "/api/v1/auth/login",
                                    "/api/v1/knowledge/search?q=timeout", "/favicon.ico",
                                    "/api/v1/uploads", "/metrics", "/api/v1/sessions"};
static const char *const methods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
static const char *const agents[] = {
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "curl/8.4.0", "kube-probe/1.28", "python-requests/2.31.0", "Go-http-client/1.1"};
static const char *const loggers[] = {"c.f.cases.CaseService", "c.f.auth.TokenFilter",
                                      "o.h.engine.jdbc.spi.SqlExceptionHelper",
                                      "c.f.search.KnowledgeIndex", "o.a.k.clients.NetworkClient"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static long t_ms = 1772000000000L; /* advances ~2 ms a line */

static void iso(char *o, size_t n) {
  long s = t_ms / 1000;
  int ms = (int)(t_ms % 1000), sec = (int)(s % 60), min = (int)(s / 60 % 60),
      hour = (int)(s / 3600 % 24), day = 1 + (int)(s / 86400 % 28);
  snprintf(o, n, "2026-03-%02d %02d:%02d:%02d.%03d", day, hour, min, sec, ms);
}

static void clf(char *o, size_t n) {
  long s = t_ms / 1000;
  snprintf(o, n, "%02d/%s/2026:%02d:%02d:%02d +0000", 1 + (int)(s / 86400 % 28), months[2],
           (int)(s / 3600 % 24), (int)(s / 60 % 60), (int)(s % 60));
}

int main(int argc, char **argv) {
  unsigned long long size = argc > 1 ? strtoull(argv[1], NULL, 10) : 1ull << 30;
  rs = (argc > 2 ? strtoull(argv[2], NULL, 10) : 7) * 0x9e3779b97f4a7c15ull + 1;
  static char out[1 << 20];
  size_t o = 0;
  unsigned long long written = 0;
  char ts[64], line[2048];
  int frames_left = 0;
  while (written < size) {
    t_ms += 1 + rn(3);
    int len;
    unsigned r = rn(1000);
    if (frames_left > 0) {
      frames_left--;
      len = snprintf(line, sizeof line, "\tat com.faultmaven.%s.%s(%s.java:%u)\n",
                     rn(2) ? "cases.CaseRepository" : "search.Index",
                     rn(2) ? "findByOwner" : "query", rn(2) ? "CaseRepository" : "Index",
                     20 + rn(400));
    } else if (r < 620) {
      unsigned st = 200, sr = rn(1000);
      if (sr < 8) st = 502;
      else if (sr < 10) st = 504;
      else if (sr < 40) st = 404;
      else if (sr < 50) st = 401;
      else if (sr < 60) st = 304;
      else if (sr < 120) st = 201;
      clf(ts, sizeof ts);
      len = snprintf(line, sizeof line,
                     "10.%u.%u.%u - - [%s] \"%s %s HTTP/1.1\" %u %u \"-\" \"%s\" rt=%u.%03u "
                     "uct=\"0.%03u\" upstream=\"10.0.9.%u:8080\"\n",
                     rn(256), rn(256), rn(256), ts, methods[rn(6)], paths[rn(10)], st,
                     120 + rn(40000), agents[rn(6)], rn(100) < 3 ? 1 + rn(9) : 0, rn(1000),
                     rn(20), rn(8));
    } else if (r < 700) {
      static const char *const e[] = {
          "upstream timed out (110: Connection timed out) while reading response header from "
          "upstream",
          "connect() failed (111: Connection refused) while connecting to upstream",
          "upstream prematurely closed connection while reading response header from upstream",
          "client intended to send too large body: 104857601 bytes",
          "open() \"/usr/share/nginx/html/favicon.ico\" failed (2: No such file or directory)"};
      long s = t_ms / 1000;
      len = snprintf(line, sizeof line,
                     "2026/03/%02d %02d:%02d:%02d [error] %u#%u: *%u %s, client: 10.1.%u.%u, "
                     "server: api.example.com, request: \"%s %s HTTP/1.1\"\n",
                     1 + (int)(s / 86400 % 28), (int)(s / 3600 % 24), (int)(s / 60 % 60),
                     (int)(s % 60), 20 + rn(8), 0, rn(9000000), e[rn(5)], rn(256), rn(256),
                     methods[rn(6)], paths[rn(10)]);
    } else if (r < 920) {
      static const char *const m[] = {
          "request completed", "cache refreshed", "case updated", "query slow",
          "call to llm timed out after 30s", "password authentication failed for user \"app\"",
          "lookup db.internal: no such host", "job finished", "session created",
          "retrying after error"};
      static const char *const lv[] = {"INFO", "INFO", "INFO", "WARN", "ERROR",
                                       "ERROR", "ERROR", "INFO", "DEBUG", "WARN"};
      unsigned k = rn(1000) < 900 ? (unsigned[]){0, 1, 2, 3, 7, 8}[rn(6)] : rn(10);
      iso(ts, sizeof ts);
      len = snprintf(line, sizeof line,
                     "%s %s [worker-%u] fm.app - %s request_id=%08x%08x user=u%u case=%u "
                     "duration_ms=%u status=%u\n",
                     ts, lv[k], rn(16), m[k], (unsigned)rnd(), (unsigned)rnd(), rn(5000),
                     rn(100000), rn(3000), k >= 4 && k <= 6 ? 500 : 200);
    } else {
      iso(ts, sizeof ts);
      unsigned k = rn(100);
      if (k < 3) {
        len = snprintf(line, sizeof line,
                       "%s ERROR [http-nio-8080-exec-%u] %s - request failed\n"
                       "%s\n",
                       ts, rn(200), loggers[rn(5)],
                       rn(4) ? "java.net.SocketTimeoutException: Read timed out"
                             : "java.lang.OutOfMemoryError: Java heap space");
        frames_left = 3 + (int)rn(10);
      } else {
        len = snprintf(line, sizeof line,
                       "%s %s [http-nio-8080-exec-%u] %s - handled case %u in %u ms (pool "
                       "active=%u idle=%u)\n",
                       ts, k < 10 ? "WARN" : "INFO", rn(200), loggers[rn(5)], rn(100000),
                       rn(2000), rn(50), rn(50));
      }
    }
    if (len <= 0) continue;
    if ((size_t)len > sizeof line - 1) len = (int)sizeof line - 1;
    if (o + (size_t)len > sizeof out) {
      fwrite(out, 1, o, stdout);
      o = 0;
    }
    memcpy(out + o, line, (size_t)len);
    o += (size_t)len;
    written += (unsigned long long)len;
  }
  fwrite(out, 1, o, stdout);
  return 0;
}
