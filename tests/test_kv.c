/* test_kv.c: the in-process key-value store (providers/kv/memory.c): get/set/del, TTL expiry on an
 * injected clock (lazy and periodic), incr atomicity under threads, the memory bound and its
 * eviction order; REDIS_URL parsing. */
#include "check.h"
#include "kv.h"
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic long long fake_ms = 1000000;
static long long fake_clock(void) { return fake_ms; }

static struct fm_kv_store *open_mem(size_t max_bytes) {
  struct fm_kv_config cfg = {0};
  cfg.backend = FM_KV_MEMORY;
  cfg.memory_max_bytes = max_bytes;
  struct fm_kv_store *kv = NULL;
  struct fm_err err = {0};
  CHECK(fm_kv_open(&cfg, &kv, &err) == 0);
  return kv;
}

static int get_str(struct fm_kv_store *kv, const char *k, char *out, size_t outsz) {
  char *v = NULL;
  size_t n = 0;
  struct fm_kv_error e = {0};
  int rc = kv->drv->get(kv->h, k, strlen(k), &v, &n, &e);
  if (rc == 1) snprintf(out, outsz, "%.*s", (int)n, v);
  free(v);
  return rc;
}

static void test_basic(void) {
  struct fm_kv_store *kv = open_mem(0);
  struct fm_kv_error e = {0};
  char buf[64];
  CHECK(kv->drv->set(kv->h, "a", 1, "one", 3, 0, &e) == 0);
  CHECK(get_str(kv, "a", buf, sizeof buf) == 1);
  CHECK_STR(buf, "one");
  CHECK(kv->drv->set(kv->h, "a", 1, "uno!", 4, 0, &e) == 0);
  CHECK(get_str(kv, "a", buf, sizeof buf) == 1);
  CHECK_STR(buf, "uno!");
  CHECK(kv->drv->del(kv->h, "a", 1, &e) == 1);
  CHECK(kv->drv->del(kv->h, "a", 1, &e) == 0);
  CHECK(get_str(kv, "a", buf, sizeof buf) == 0);
  /* binary keys and values */
  CHECK(kv->drv->set(kv->h, "k\0x", 3, "v\0w", 3, 0, &e) == 0);
  char *v = NULL;
  size_t n = 0;
  CHECK(kv->drv->get(kv->h, "k\0x", 3, &v, &n, &e) == 1);
  CHECK(n == 3 && memcmp(v, "v\0w", 3) == 0);
  free(v);
  CHECK(kv->drv->get(kv->h, "k\0y", 3, &v, &n, &e) == 0);
  /* incr */
  long long out = 0;
  CHECK(kv->drv->incr(kv->h, "n", 1, 5, 0, &out, &e) == 0 && out == 5);
  CHECK(kv->drv->incr(kv->h, "n", 1, -7, 0, &out, &e) == 0 && out == -2);
  kv->drv->set(kv->h, "s", 1, "12x", 3, 0, &e);
  CHECK(kv->drv->incr(kv->h, "s", 1, 1, 0, &out, &e) == -1);
  CHECK_STR(e.code, FM_KV_NOT_INTEGER);
  kv->drv->set(kv->h, "max", 3, "9223372036854775807", 19, 0, &e);
  CHECK(kv->drv->incr(kv->h, "max", 3, 1, 0, &out, &e) == -1);
  /* many keys: the buckets grow */
  for (int i = 0; i < 10000; i++) {
    char k[32];
    int kn = snprintf(k, sizeof k, "key%d", i);
    kv->drv->set(kv->h, k, (size_t)kn, k, (size_t)kn, 0, &e);
  }
  CHECK(get_str(kv, "key9999", buf, sizeof buf) == 1);
  CHECK_STR(buf, "key9999");
  struct fm_kv_stats st;
  kv->drv->stats(kv->h, &st);
  CHECK(st.entries == 10000 + 4); /* k\0x, n, s, max */
  fm_kv_close(kv);
}

static void test_ttl(void) {
  fm_kv_memory_set_clock(fake_clock);
  struct fm_kv_store *kv = open_mem(0);
  struct fm_kv_error e = {0};
  char buf[16];
  long long ttl = 0, out = 0;
  kv->drv->set(kv->h, "t", 1, "v", 1, 500, &e);
  kv->drv->set(kv->h, "p", 1, "v", 1, 0, &e);
  CHECK(kv->drv->ttl(kv->h, "t", 1, &ttl, &e) == 0 && ttl == 500);
  CHECK(kv->drv->ttl(kv->h, "p", 1, &ttl, &e) == 0 && ttl == -1);
  CHECK(kv->drv->ttl(kv->h, "none", 4, &ttl, &e) == 0 && ttl == -2);
  fake_ms += 499;
  CHECK(get_str(kv, "t", buf, sizeof buf) == 1);
  fake_ms += 1;
  CHECK(get_str(kv, "t", buf, sizeof buf) == 0); /* lazy expiry */
  /* incr: the TTL is set by the call that creates the key only */
  CHECK(kv->drv->incr(kv->h, "c", 1, 1, 100, &out, &e) == 0 && out == 1);
  fake_ms += 50;
  CHECK(kv->drv->incr(kv->h, "c", 1, 1, 100000, &out, &e) == 0 && out == 2);
  CHECK(kv->drv->ttl(kv->h, "c", 1, &ttl, &e) == 0 && ttl == 50);
  fake_ms += 50;
  CHECK(kv->drv->incr(kv->h, "c", 1, 1, 100, &out, &e) == 0 && out == 1);
  /* expire */
  CHECK(kv->drv->expire(kv->h, "p", 1, 10, &e) == 1);
  CHECK(kv->drv->expire(kv->h, "zz", 2, 10, &e) == 0);
  /* periodic expiry: entries nobody reads go too */
  for (int i = 0; i < 100; i++) {
    char k[16];
    int kn = snprintf(k, sizeof k, "e%d", i);
    kv->drv->set(kv->h, k, (size_t)kn, "x", 1, 20, &e);
  }
  struct fm_kv_stats st;
  kv->drv->stats(kv->h, &st);
  CHECK(st.entries >= 100);
  fake_ms += 2000;
  fm_kv_memory_sweep(kv->h);
  kv->drv->stats(kv->h, &st);
  CHECK(st.entries == 0);
  CHECK(st.expired >= 100);
  fm_kv_close(kv);
  fm_kv_memory_set_clock(NULL);
}

static struct fm_kv_store *g_shared;

static void *incr_thread(void *arg) {
  struct fm_kv_error e = {0};
  long long out;
  for (int i = 0; i < 20000; i++) g_shared->drv->incr(g_shared->h, "hits", 4, 1, 0, &out, &e);
  return NULL;
}

static void test_threads(void) {
  g_shared = open_mem(0);
  pthread_t t[8];
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, incr_thread, NULL);
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  char buf[32];
  CHECK(get_str(g_shared, "hits", buf, sizeof buf) == 1);
  CHECK_STR(buf, "160000");
  fm_kv_close(g_shared);
}

static void test_bound(void) {
  fm_kv_memory_set_clock(fake_clock);
  size_t max = 256 * 1024;
  struct fm_kv_store *kv = open_mem(max);
  struct fm_kv_error e = {0};
  char val[500];
  memset(val, 'v', sizeof val);
  /* expired entries go before live ones */
  for (int i = 0; i < 100; i++) {
    char k[16];
    int kn = snprintf(k, sizeof k, "old%d", i);
    kv->drv->set(kv->h, k, (size_t)kn, val, sizeof val, 10, &e);
  }
  fake_ms += 100;
  for (int i = 0; i < 5000; i++) {
    char k[16];
    int kn = snprintf(k, sizeof k, "k%d", i);
    CHECK(kv->drv->set(kv->h, k, (size_t)kn, val, sizeof val, 0, &e) == 0);
  }
  struct fm_kv_stats st;
  kv->drv->stats(kv->h, &st);
  CHECK(st.bytes <= (long long)max);
  CHECK(st.evictions > 0);
  CHECK(st.expired >= 100);
  char buf[8];
  CHECK(get_str(kv, "k4999", buf, sizeof buf) == 1); /* the newest are there */
  CHECK(get_str(kv, "k0", buf, sizeof buf) == 0);    /* the oldest went */
  /* too large for a shard */
  char *big = calloc(1, max);
  CHECK(kv->drv->set(kv->h, "big", 3, big, max, 0, &e) == -1);
  CHECK_STR(e.code, FM_KV_TOO_LARGE);
  free(big);
  fm_kv_close(kv);
  fm_kv_memory_set_clock(NULL);
}

static void test_lru(void) {
  /* with one shard's worth of room, a key read recently survives a key written earlier */
  size_t max = 16 * 8 * 1000; /* 8 KB a shard */
  struct fm_kv_store *kv = open_mem(max);
  struct fm_kv_error e = {0};
  char val[900];
  memset(val, 'x', sizeof val);
  kv->drv->set(kv->h, "keep", 4, val, sizeof val, 0, &e);
  char buf[8];
  for (int i = 0; i < 2000; i++) {
    char k[16];
    int kn = snprintf(k, sizeof k, "f%d", i);
    kv->drv->set(kv->h, k, (size_t)kn, val, sizeof val, 0, &e);
    get_str(kv, "keep", buf, sizeof buf);
  }
  CHECK(get_str(kv, "keep", buf, sizeof buf) == 1);
  fm_kv_close(kv);
}

static void test_url(void) {
  struct fm_kv_config c = {0};
  struct fm_err err = {0};
  CHECK(fm_kv_redis_url_parse("redis://localhost", &c, &err) == 0);
  CHECK_STR(c.host, "localhost");
  CHECK(c.port == 6379 && c.db == 0 && c.password[0] == '\0');
  CHECK(fm_kv_redis_url_parse("redis://:p%40ss@10.0.0.1:7000/2", &c, &err) == 0);
  CHECK_STR(c.host, "10.0.0.1");
  CHECK_STR(c.password, "p@ss");
  CHECK(c.port == 7000 && c.db == 2);
  CHECK_STR(c.display, "redis://:****@10.0.0.1:7000/2");
  CHECK(fm_kv_redis_url_parse("redis://user:pw@h:1/0", &c, &err) == 0);
  CHECK_STR(c.username, "user");
  CHECK(fm_kv_redis_url_parse("redis://[::1]:6380", &c, &err) == 0);
  CHECK_STR(c.host, "::1");
  CHECK(c.port == 6380);
  CHECK(fm_kv_redis_url_parse("http://h", &c, &err) != 0);
  CHECK(fm_kv_redis_url_parse("redis://h:99999", &c, &err) != 0);
  CHECK(fm_kv_redis_url_parse("redis://:secret@h/x", &c, &err) != 0);
  CHECK(strstr(err.msg, "secret") == NULL);
  CHECK(fm_kv_redis_url_parse("rediss://h", &c, &err) != 0);
  struct fm_kv_config s = {0};
  s.backend = FM_KV_REDIS;
  snprintf(s.mode, sizeof s.mode, "sentinel");
  struct fm_kv_store *kv = NULL;
  CHECK(fm_kv_open(&s, &kv, &err) != 0); /* sentinel mode without sentinel hosts */
  CHECK(strstr(err.msg, "needs REDIS_SENTINEL_HOSTS") != NULL);
}

int main(void) {
  test_basic();
  test_ttl();
  test_threads();
  test_bound();
  test_lru();
  test_url();
  fm_metrics_reset();
  return check_done();
}
