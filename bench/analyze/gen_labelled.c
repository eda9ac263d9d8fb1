/* gen_labelled.c: writes N labelled log lines "<template id>\t<line>\n" to stdout, for
 * bench/analyze/drain_bench.c. 50 message templates (web server, database, queue, kubelet,
 * auth, cache ...) with random variables: integers, durations, IPv4 and IPv6 addresses with
 * ports, UUIDs, hex, paths, emails, host and pod names, and user names and status words that no
 * mask catches (Drain must generalise those). Timestamps advance ~1 ms a line; levels are fixed
 * per template; a few per cent of lines are errors, in bursts now and then.
 *
 *   cc -O2 -o /tmp/fm_gen_labelled bench/analyze/gen_labelled.c
 *   /tmp/fm_gen_labelled 1000000 42 > /tmp/fm_labelled.log      # lines, seed
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

/* %d int, %t duration, %i IPv4:port, %6 IPv6, %u UUID, %x hex, %p path, %e email, %h host,
 * %k pod, %w user name, %s status word, %q SQL table */
static const struct {
  const char *level;
  const char *fmt;
} T[] = {
    {"INFO", "GET /api/v1/users/%d 200 %t"},
    {"INFO", "POST /api/v1/orders 201 %t bytes=%d"},
    {"WARN", "GET /api/v1/orders/%d 404 %t"},
    {"ERROR", "POST /api/v1/payments 502 %t upstream=%i"},
    {"INFO", "Accepted connection from %i"},
    {"INFO", "Closed connection from %i after %d requests"},
    {"ERROR", "connect to %i failed: connection refused"},
    {"WARN", "slow query on %q took %t rows=%d"},
    {"ERROR", "deadlock detected on table %q, transaction %d rolled back"},
    {"INFO", "user %w logged in from %i"},
    {"INFO", "user %w logged out"},
    {"WARN", "invalid password for user %w from %i"},
    {"INFO", "session %u created for %e"},
    {"INFO", "cache hit key=%x ttl=%d"},
    {"INFO", "cache miss key=%x"},
    {"INFO", "evicted %d entries from cache in %t"},
    {"INFO", "job %u started on worker %h"},
    {"INFO", "job %u finished in %t status=%s"},
    {"ERROR", "job %u failed after %d attempts: timeout"},
    {"INFO", "published message %u to topic orders partition %d offset %d"},
    {"WARN", "consumer lag on partition %d is %d messages"},
    {"INFO", "pulling image registry.example.com/app:%x"},
    {"INFO", "Started container app in pod %k"},
    {"WARN", "Back-off restarting failed container app in pod %k"},
    {"ERROR", "Liveness probe failed: HTTP probe failed with statuscode: 503 pod %k"},
    {"INFO", "Successfully assigned default/%k to %h"},
    {"INFO", "opening file %p"},
    {"ERROR", "cannot open %p: permission denied"},
    {"WARN", "disk usage on %p is at %d percent"},
    {"INFO", "listening on [%6]:%d"},
    {"INFO", "peer %6 joined the cluster"},
    {"WARN", "peer %6 missed %d heartbeats"},
    {"INFO", "leader elected: %h term %d"},
    {"INFO", "snapshot %d written to %p in %t"},
    {"INFO", "gc pause %t heap=%dMB"},
    {"WARN", "memory usage %d percent above threshold on %h"},
    {"ERROR", "out of memory allocating %d bytes"},
    {"INFO", "sent email to %e template=welcome"},
    {"ERROR", "smtp delivery to %e failed code=%d"},
    {"INFO", "config reloaded from %p version %d"},
    {"INFO", "TLS handshake with %i completed cipher=TLS_AES_128_GCM_SHA256"},
    {"WARN", "certificate for %h expires in %d days"},
    {"INFO", "request %u by %w took %t"},
    {"ERROR", "request %u by %w failed with status %d"},
    {"INFO", "rate limit for %w is %d per minute"},
    {"WARN", "rate limit exceeded for %w on %h"},
    {"INFO", "health check %s for %h"},
    {"INFO", "worker %h processed %d items in %t"},
    {"INFO", "scheduled task cleanup ran, removed %d rows from %q"},
    {"ERROR", "panic recovered in handler %x: nil pointer dereference"},
};
enum { NT = sizeof T / sizeof T[0] };

static const char *const users[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace",
                                    "heidi", "ivan", "judy", "mallory", "oscar", "peggy", "trent"};
static const char *const status[] = {"ok", "degraded", "passing", "warning", "skipped"};
static const char *const tables[] = {"orders", "users", "payments", "sessions", "audit_log"};

static void var(char c, char *o, size_t n) {
  switch (c) {
  case 'd': snprintf(o, n, "%u", rn(100000)); break;
  case 't': snprintf(o, n, rn(2) ? "%ums" : "%u.%03us", rn(900) + 1, rn(1000)); break;
  case 'i':
    snprintf(o, n, "10.%u.%u.%u:%u", rn(256), rn(256), rn(256), 1024 + rn(60000));
    break;
  case '6': snprintf(o, n, "fd00::%x:%x", rn(65536), rn(65536)); break;
  case 'u': {
    uint64_t a = rnd(), b = rnd();
    snprintf(o, n, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)a, (unsigned)(a >> 32) & 0xffff,
             (unsigned)(a >> 48) & 0xfff, (unsigned)(b & 0xffff) | 0x8000,
             (unsigned long long)(b >> 16) & 0xffffffffffffull);
    break;
  }
  case 'x': snprintf(o, n, "%08llx%04x", (unsigned long long)(rnd() & 0xffffffff), rn(65536)); break;
  case 'p': snprintf(o, n, "/var/lib/app/data/%u/segment-%u.log", rn(50), rn(10000)); break;
  case 'e': snprintf(o, n, "%s%u@example.com", users[rn(14)], rn(100)); break;
  case 'h': snprintf(o, n, "node-%u.prod.internal", rn(40)); break;
  case 'k': snprintf(o, n, "web-%x-%05u", rn(1u << 24), rn(100000)); break;
  case 'w': snprintf(o, n, "%s", users[rn(14)]); break;
  case 's': snprintf(o, n, "%s", status[rn(5)]); break;
  case 'q': snprintf(o, n, "%s", tables[rn(5)]); break;
  default: snprintf(o, n, "?"); break;
  }
}

int main(int argc, char **argv) {
  long lines = argc > 1 ? atol(argv[1]) : 1000000;
  rs = argc > 2 ? strtoull(argv[2], NULL, 10) * 0x9e3779b97f4a7c15ull + 1 : 42;
  /* skewed popularity: a few templates make most lines, as in real logs */
  unsigned weight[NT], total = 0;
  for (unsigned i = 0; i < NT; i++) weight[i] = T[i].level[0] == 'E' ? 2 : 5 + (i * 37) % 60, total += weight[i];
  long long ms = 1709648521000LL;
  char line[1024], v[128];
  int burst = 0;
  for (long k = 0; k < lines; k++) {
    unsigned t;
    if (burst > 0) {
      burst--;
      t = 3; /* upstream 502s */
    } else {
      unsigned r = rn(total);
      for (t = 0; t < NT && r >= weight[t]; t++) r -= weight[t];
      if (rn(20000) == 0) burst = 30;
    }
    ms += rn(3);
    long long s = ms / 1000;
    int sec = (int)(s % 60), min = (int)(s / 60 % 60), hr = (int)(s / 3600 % 24);
    size_t o = (size_t)snprintf(line, sizeof line, "2024-03-05T%02d:%02d:%02d.%03dZ %-5s ", hr, min,
                                sec, (int)(ms % 1000), T[t].level);
    for (const char *f = T[t].fmt; *f && o < sizeof line - 130; f++) {
      if (*f == '%' && f[1]) {
        var(*++f, v, sizeof v);
        size_t l = strlen(v);
        memcpy(line + o, v, l);
        o += l;
      } else
        line[o++] = *f;
    }
    line[o] = 0;
    printf("%u\t%s\n", t, line);
  }
  return 0;
}
