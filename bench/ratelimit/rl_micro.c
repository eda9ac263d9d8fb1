/* bench/ratelimit/rl_micro.c -- micro-benchmark of the in-process rate-limit check.
 *
 *   rl_micro IMPL THREADS KEYS OPS_PER_THREAD
 *
 * IMPL:
 *   fm     fm_rl_take() of engine/ratelimit.c (linked from libfmcore.a): 64 mutex-protected shards,
 *          chained hash, monotonic clock read and token-bucket refill per check, sweep once a second.
 *   mutex  the peer: ONE pthread mutex around a chained hash map (same FNV-1a hash, same key
 *          compare) whose value is a counter, incremented per check. No clock, no refill, no
 *          expiry: the least any limiter shared by threads must do per check.
 *
 * Keys look like the middleware's ("fm:rl:read:ip:10.a.b.c", 22-24 bytes) and are all inserted
 * before the clock starts. Each thread walks the keys in its own scattered order (stride over a
 * prime). Every 64th check of thread 0 is timed on its own (two clock_gettime calls) for p50/p99;
 * the timer's own cost is measured and printed, not subtracted.
 *
 * Output, one line: RLMICRO impl=.. threads=.. keys=.. ops=.. wall_s=.. ns_per_check=..
 * checks_per_s=.. p50_ns=.. p99_ns=.. timer_ns=..
 * ns_per_check = wall time / checks per thread (the latency of one check as a thread sees it);
 * checks_per_s = all checks of all threads / wall time. */
#define _GNU_SOURCE
#include "ratelimit.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* --- the peer: one mutex, chained hash map, counter increment ------------------------------ */
struct pentry {
  struct pentry *next;
  uint64_t hash;
  uint64_t count;
  size_t kn;
  char key[];
};
static pthread_mutex_t p_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pentry **p_slots;
static size_t p_nslots;

static uint64_t fnv1a(const char *k, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

static int peer_take(const char *key, size_t kn) {
  uint64_t h = fnv1a(key, kn);
  pthread_mutex_lock(&p_mu);
  struct pentry *e = p_slots[h & (p_nslots - 1)];
  for (; e; e = e->next)
    if (e->hash == h && e->kn == kn && memcmp(e->key, key, kn) == 0) break;
  if (!e) {
    e = malloc(sizeof *e + kn);
    if (!e) abort();
    e->hash = h;
    e->count = 0;
    e->kn = kn;
    memcpy(e->key, key, kn);
    e->next = p_slots[h & (p_nslots - 1)];
    p_slots[h & (p_nslots - 1)] = e;
  }
  e->count++;
  int allowed = e->count < (1ULL << 62);
  pthread_mutex_unlock(&p_mu);
  return allowed;
}

/* --- driver -------------------------------------------------------------------------------- */
static int g_fm;
static int g_nkeys;
static long g_ops;
static char (*g_keys)[32];
static size_t *g_klen;
static pthread_barrier_t g_bar;
static uint64_t *g_samples;
static long g_nsamples;
static volatile long g_sink;

static inline int take(int k) {
  if (g_fm) return fm_rl_take(g_keys[k], g_klen[k], 1.0, 1e9, NULL);
  return peer_take(g_keys[k], g_klen[k]);
}

struct targ {
  int id;
};

static void *worker(void *arg) {
  int id = ((struct targ *)arg)->id;
  /* scattered order: k = (start + i * stride) mod nkeys, stride prime and not a divisor */
  long stride = 7919, k = (long)id * (g_nkeys / 2 + 1) % g_nkeys, allowed = 0;
  pthread_barrier_wait(&g_bar);
  for (long i = 0; i < g_ops; i++) {
    if (id == 0 && (i & 63) == 0) {
      uint64_t t0 = now_ns();
      allowed += take((int)k);
      g_samples[g_nsamples++] = now_ns() - t0;
    } else {
      allowed += take((int)k);
    }
    k += stride;
    if (k >= g_nkeys) k %= g_nkeys;
  }
  pthread_barrier_wait(&g_bar);
  __atomic_fetch_add(&g_sink, allowed, __ATOMIC_RELAXED);
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s fm|mutex THREADS KEYS OPS_PER_THREAD\n", argv[0]);
    return 2;
  }
  g_fm = strcmp(argv[1], "fm") == 0;
  if (!g_fm && strcmp(argv[1], "mutex") != 0) {
    fprintf(stderr, "impl must be fm or mutex\n");
    return 2;
  }
  int nth = atoi(argv[2]);
  g_nkeys = atoi(argv[3]);
  g_ops = atol(argv[4]);
  if (nth < 1 || nth > 64 || g_nkeys < 1 || g_nkeys > 1000000 || g_ops < 1000) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  g_keys = calloc((size_t)g_nkeys, sizeof *g_keys);
  g_klen = calloc((size_t)g_nkeys, sizeof *g_klen);
  g_samples = calloc((size_t)(g_ops / 64 + 2), sizeof *g_samples);
  if (!g_keys || !g_klen || !g_samples) return 1;
  for (int i = 0; i < g_nkeys; i++) {
    int n = snprintf(g_keys[i], sizeof g_keys[i], "fm:rl:read:ip:10.%d.%d.%d", (i >> 16) & 255,
                     (i >> 8) & 255, i & 255);
    g_klen[i] = (size_t)n;
  }
  if (!g_fm) {
    p_nslots = 1;
    while (p_nslots < (size_t)g_nkeys) p_nslots <<= 1; /* load factor <= 1, like fm's shards */
    p_slots = calloc(p_nslots, sizeof *p_slots);
    if (!p_slots) return 1;
  }
  /* insert every key (and warm the caches) before timing */
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < g_nkeys; i++) take(i);
  if (g_fm && fm_rl_count() != (size_t)g_nkeys) {
    fprintf(stderr, "fm_rl_count() = %zu, expected %d: keys not all held\n", fm_rl_count(), g_nkeys);
    return 1;
  }
  /* the timer's own cost: back-to-back clock_gettime pairs */
  uint64_t tmin = UINT64_MAX;
  for (int i = 0; i < 100000; i++) {
    uint64_t a = now_ns(), b = now_ns();
    if (b - a < tmin) tmin = b - a;
  }

  pthread_barrier_init(&g_bar, NULL, (unsigned)nth + 1);
  pthread_t th[64];
  struct targ ta[64];
  for (int i = 0; i < nth; i++) {
    ta[i].id = i;
    pthread_create(&th[i], NULL, worker, &ta[i]);
  }
  double t0 = now_s();
  pthread_barrier_wait(&g_bar);
  t0 = now_s();
  pthread_barrier_wait(&g_bar);
  double wall = now_s() - t0;
  for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);

  if (g_sink != (long)nth * g_ops) {
    fprintf(stderr, "only %ld of %ld checks allowed: the bucket parameters are wrong\n", g_sink,
            (long)nth * g_ops);
    return 1;
  }
  qsort(g_samples, (size_t)g_nsamples, sizeof *g_samples, cmp_u64);
  uint64_t p50 = g_samples[(size_t)(g_nsamples * 0.50)];
  uint64_t p99 = g_samples[(size_t)(g_nsamples * 0.99)];
  printf("RLMICRO impl=%s threads=%d keys=%d ops=%ld wall_s=%.4f ns_per_check=%.1f "
         "checks_per_s=%.0f p50_ns=%llu p99_ns=%llu timer_ns=%llu\n",
         argv[1], nth, g_nkeys, (long)nth * g_ops, wall, wall / (double)g_ops * 1e9,
         (double)nth * (double)g_ops / wall, (unsigned long long)p50, (unsigned long long)p99,
         (unsigned long long)tmin);
  return 0;
}
