/* memory.c: the in-process key-value store, shared by every worker thread of the process.
 *
 * A hash map split in NSHARDS shards, each with its own mutex, chained buckets and an LRU list
 * (most recently used first). Expiry is lazy (an expired entry found by a lookup is dropped) and
 * periodic (the first operation on a shard after a second without a sweep drops every expired
 * entry of that shard). Memory is bounded: each shard may hold KV_MEMORY_MAX_MB / NSHARDS bytes
 * (keys, values and the entry's overhead); a write that does not fit first drops the shard's
 * expired entries, then its least recently used ones. An entry larger than a shard's share fails
 * with KV_TOO_LARGE. The gauges fm_kv_memory_entries and fm_kv_memory_bytes are updated at most
 * once a second, by an operation. */
#include "kv.h"

#include "metrics.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NSHARDS 16
#define SWEEP_EVERY_MS 1000
#define ENTRY_OVERHEAD 64 /* bytes counted for an entry beyond its key and value */

struct entry {
  struct entry *hnext;       /* bucket chain */
  struct entry *prev, *next; /* LRU list */
  uint64_t hash;
  long long expire_at; /* ms on the store's clock; 0: never */
  char *val;
  size_t vn, kn;
  char key[];
};

struct shard {
  pthread_mutex_t mu;
  struct entry **buckets;
  size_t nbuckets, count, bytes;
  struct entry lru; /* sentinel: lru.next is the most recent, lru.prev the least */
  long long last_sweep;
};

struct fm_kv_handle {
  struct shard shards[NSHARDS];
  size_t shard_max;
  size_t max_bytes;
  uint64_t seed;
  atomic_llong evictions, expired, last_gauges;
};

static long long real_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long (*_Atomic g_clock)(void) = real_now_ms;

void fm_kv_memory_set_clock(long long (*now_ms)(void)) { g_clock = now_ms ? now_ms : real_now_ms; }

static long long now_ms(void) { return g_clock(); }

static uint64_t hash_key(const struct fm_kv_handle *h, const char *k, size_t n) {
  uint64_t x = 1469598103934665603ULL ^ h->seed; /* FNV-1a, seeded */
  for (size_t i = 0; i < n; i++) {
    x ^= (unsigned char)k[i];
    x *= 1099511628211ULL;
  }
  x ^= x >> 33; /* finalizer: spread the bits the shard and the bucket use */
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

static struct shard *shard_of(struct fm_kv_handle *h, uint64_t hash) {
  return &h->shards[hash >> 60 & (NSHARDS - 1)];
}

static size_t entry_bytes(const struct entry *e) { return e->kn + e->vn + ENTRY_OVERHEAD; }

static void lru_unlink(struct entry *e) {
  e->prev->next = e->next;
  e->next->prev = e->prev;
}

static void lru_push_front(struct shard *s, struct entry *e) {
  e->next = s->lru.next;
  e->prev = &s->lru;
  s->lru.next->prev = e;
  s->lru.next = e;
}

static void drop(struct shard *s, struct entry *e) {
  struct entry **pp = &s->buckets[e->hash & (s->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(e);
  s->count--;
  s->bytes -= entry_bytes(e);
  free(e->val);
  free(e);
}

static int expired(const struct entry *e, long long now) { return e->expire_at && e->expire_at <= now; }

static void sweep(struct fm_kv_handle *h, struct shard *s, long long now) {
  long long n = 0;
  for (struct entry *e = s->lru.next, *nx; e != &s->lru; e = nx) {
    nx = e->next;
    if (expired(e, now)) {
      drop(s, e);
      n++;
    }
  }
  s->last_sweep = now;
  if (n) atomic_fetch_add(&h->expired, n);
}

static void update_gauges(struct fm_kv_handle *h, long long now) {
  long long last = atomic_load(&h->last_gauges);
  if (now - last < SWEEP_EVERY_MS || !atomic_compare_exchange_strong(&h->last_gauges, &last, now))
    return;
  long long entries = 0, bytes = 0;
  for (int i = 0; i < NSHARDS; i++) {
    pthread_mutex_lock(&h->shards[i].mu);
    entries += (long long)h->shards[i].count;
    bytes += (long long)h->shards[i].bytes;
    pthread_mutex_unlock(&h->shards[i].mu);
  }
  fm_metrics_set("fm_kv_memory_entries", "", (double)entries);
  fm_metrics_set("fm_kv_memory_bytes", "", (double)bytes);
}

/* Locks the key's shard (sweeping it when due) and returns the live entry, or NULL. */
static struct shard *lock_shard(struct fm_kv_handle *h, uint64_t hash, long long now) {
  struct shard *s = shard_of(h, hash);
  pthread_mutex_lock(&s->mu);
  if (now - s->last_sweep >= SWEEP_EVERY_MS) sweep(h, s, now);
  return s;
}

static struct entry *find(struct fm_kv_handle *h, struct shard *s, uint64_t hash, const char *k,
                          size_t kn, long long now) {
  for (struct entry *e = s->buckets[hash & (s->nbuckets - 1)]; e; e = e->hnext) {
    if (e->hash == hash && e->kn == kn && memcmp(e->key, k, kn) == 0) {
      if (expired(e, now)) {
        drop(s, e);
        atomic_fetch_add(&h->expired, 1);
        return NULL;
      }
      return e;
    }
  }
  return NULL;
}

static void grow(struct shard *s) {
  size_t nb = s->nbuckets * 2;
  struct entry **b = calloc(nb, sizeof *b);
  if (!b) return; /* chains just get longer */
  for (size_t i = 0; i < s->nbuckets; i++) {
    for (struct entry *e = s->buckets[i], *nx; e; e = nx) {
      nx = e->hnext;
      e->hnext = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
    }
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = nb;
}

/* Makes room for `need` more bytes in the shard: expired entries first, then the least recently
 * used (never `keep`, the entry being rewritten). */
static int make_room(struct fm_kv_handle *h, struct shard *s, size_t total, size_t need,
                     struct entry *keep, long long now, struct fm_kv_error *e) {
  if (total > h->shard_max)
    return fm_kv_fail(e, FM_KV_TOO_LARGE,
                      "entry of %zu bytes is larger than the memory store allows (%zu bytes: "
                      "KV_MEMORY_MAX_MB / %d)",
                      total, h->shard_max, NSHARDS);
  if (s->bytes + need <= h->shard_max) return 0;
  sweep(h, s, now);
  while (s->bytes + need > h->shard_max) {
    struct entry *victim = s->lru.prev;
    if (victim == keep) victim = victim->prev;
    if (victim == &s->lru) break;
    drop(s, victim);
    atomic_fetch_add(&h->evictions, 1);
  }
  return 0;
}

/* Stores v as the value of k (creating the entry when absent). Called with the shard locked. */
static int put(struct fm_kv_handle *h, struct shard *s, uint64_t hash, struct entry *ent,
               const char *k, size_t kn, const char *v, size_t vn, long long expire_at, int keep_ttl,
               long long now, struct fm_kv_error *e) {
  char *val = malloc(vn + 1);
  if (!val) return fm_kv_fail(e, FM_KV_ERROR, "out of memory");
  memcpy(val, v, vn);
  val[vn] = '\0';
  if (ent) {
    size_t grow_by = vn > ent->vn ? vn - ent->vn : 0;
    if (make_room(h, s, kn + vn + ENTRY_OVERHEAD, grow_by, ent, now, e)) {
      free(val);
      return -1;
    }
    s->bytes -= ent->vn;
    s->bytes += vn;
    free(ent->val);
    ent->val = val;
    ent->vn = vn;
    if (!keep_ttl) ent->expire_at = expire_at;
    lru_unlink(ent);
    lru_push_front(s, ent);
    return 0;
  }
  size_t need = kn + vn + ENTRY_OVERHEAD;
  if (make_room(h, s, need, need, NULL, now, e)) {
    free(val);
    return -1;
  }
  ent = malloc(sizeof *ent + kn);
  if (!ent) {
    free(val);
    return fm_kv_fail(e, FM_KV_ERROR, "out of memory");
  }
  memcpy(ent->key, k, kn);
  ent->kn = kn;
  ent->val = val;
  ent->vn = vn;
  ent->hash = hash;
  ent->expire_at = expire_at;
  if (s->count + 1 > s->nbuckets) grow(s);
  size_t b = hash & (s->nbuckets - 1);
  ent->hnext = s->buckets[b];
  s->buckets[b] = ent;
  lru_push_front(s, ent);
  s->count++;
  s->bytes += need;
  return 0;
}

/* ---- the driver ---------------------------------------------------------------------------- */

static int mem_open(const struct fm_kv_config *cfg, struct fm_kv_handle **out, struct fm_err *err) {
  struct fm_kv_handle *h = calloc(1, sizeof *h);
  if (!h) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  h->max_bytes = cfg->memory_max_bytes ? cfg->memory_max_bytes : (size_t)64 << 20;
  h->shard_max = h->max_bytes / NSHARDS;
  if (fm_random_bytes(&h->seed, sizeof h->seed)) h->seed = (uint64_t)real_now_ms();
  long long now = now_ms();
  for (int i = 0; i < NSHARDS; i++) {
    struct shard *s = &h->shards[i];
    pthread_mutex_init(&s->mu, NULL);
    s->nbuckets = 64;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    s->lru.next = s->lru.prev = &s->lru;
    s->last_sweep = now;
    if (!s->buckets) {
      for (int j = 0; j <= i; j++) free(h->shards[j].buckets);
      free(h);
      return fm_err_set(err, FM_E_NOMEM, "out of memory");
    }
  }
  atomic_store(&h->last_gauges, LLONG_MIN / 2);
  *out = h;
  return 0;
}

static void mem_close(struct fm_kv_handle *h) {
  if (!h) return;
  for (int i = 0; i < NSHARDS; i++) {
    struct shard *s = &h->shards[i];
    for (struct entry *e = s->lru.next, *nx; e != &s->lru; e = nx) {
      nx = e->next;
      free(e->val);
      free(e);
    }
    free(s->buckets);
    pthread_mutex_destroy(&s->mu);
  }
  free(h);
}

void fm_kv_memory_sweep(struct fm_kv_handle *h) {
  long long now = now_ms();
  for (int i = 0; i < NSHARDS; i++) {
    pthread_mutex_lock(&h->shards[i].mu);
    sweep(h, &h->shards[i], now);
    pthread_mutex_unlock(&h->shards[i].mu);
  }
}

static int mem_get(struct fm_kv_handle *h, const char *k, size_t kn, char **val, size_t *vn,
                   struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  int rc = 0;
  if (ent) {
    *val = malloc(ent->vn + 1);
    if (!*val) {
      rc = fm_kv_fail(e, FM_KV_ERROR, "out of memory");
    } else {
      memcpy(*val, ent->val, ent->vn + 1);
      *vn = ent->vn;
      lru_unlink(ent);
      lru_push_front(s, ent);
      rc = 1;
    }
  }
  pthread_mutex_unlock(&s->mu);
  update_gauges(h, now);
  return rc;
}

static int mem_set(struct fm_kv_handle *h, const char *k, size_t kn, const char *v, size_t vn,
                   long long ttl_ms, struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  int rc = put(h, s, hash, ent, k, kn, v, vn, ttl_ms > 0 ? now + ttl_ms : 0, 0, now, e);
  pthread_mutex_unlock(&s->mu);
  update_gauges(h, now);
  return rc;
}

static int mem_del(struct fm_kv_handle *h, const char *k, size_t kn, struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  if (ent) drop(s, ent);
  pthread_mutex_unlock(&s->mu);
  update_gauges(h, now);
  return ent ? 1 : 0;
}

/* Redis's rule: an optional '-' and digits, nothing else, within 64 bits. */
static int parse_int(const char *v, size_t n, long long *out) {
  if (n == 0 || n > 20) return -1;
  char buf[24];
  memcpy(buf, v, n);
  buf[n] = '\0';
  if (!(buf[0] == '-' || (buf[0] >= '0' && buf[0] <= '9'))) return -1;
  char *end;
  errno = 0;
  long long x = strtoll(buf, &end, 10);
  if (errno || *end || end == buf || (buf[0] == '-' && n == 1)) return -1;
  *out = x;
  return 0;
}

static int mem_incr(struct fm_kv_handle *h, const char *k, size_t kn, long long by,
                    long long ttl_ms, long long *out, struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  long long cur = 0;
  int rc = 0;
  if (ent && parse_int(ent->val, ent->vn, &cur)) {
    rc = fm_kv_fail(e, FM_KV_NOT_INTEGER, "value is not an integer or out of range");
  } else if ((by > 0 && cur > LLONG_MAX - by) || (by < 0 && cur < LLONG_MIN - by)) {
    rc = fm_kv_fail(e, FM_KV_NOT_INTEGER, "increment or decrement would overflow");
  } else {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", cur + by);
    rc = put(h, s, hash, ent, k, kn, buf, (size_t)n, ttl_ms > 0 ? now + ttl_ms : 0, ent != NULL,
             now, e);
    if (!rc) *out = cur + by;
  }
  pthread_mutex_unlock(&s->mu);
  update_gauges(h, now);
  return rc;
}

static int mem_expire(struct fm_kv_handle *h, const char *k, size_t kn, long long ttl_ms,
                      struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  if (ent) ent->expire_at = now + ttl_ms;
  pthread_mutex_unlock(&s->mu);
  return ent ? 1 : 0;
}

static int mem_ttl(struct fm_kv_handle *h, const char *k, size_t kn, long long *ttl_ms,
                   struct fm_kv_error *e) {
  long long now = now_ms();
  uint64_t hash = hash_key(h, k, kn);
  struct shard *s = lock_shard(h, hash, now);
  struct entry *ent = find(h, s, hash, k, kn, now);
  *ttl_ms = !ent ? -2 : ent->expire_at ? ent->expire_at - now : -1;
  pthread_mutex_unlock(&s->mu);
  return 0;
}

static int mem_ping(struct fm_kv_handle *h, struct fm_kv_error *e) { return 0; }

static void mem_stats(struct fm_kv_handle *h, struct fm_kv_stats *out) {
  memset(out, 0, sizeof *out);
  for (int i = 0; i < NSHARDS; i++) {
    pthread_mutex_lock(&h->shards[i].mu);
    out->entries += (long long)h->shards[i].count;
    out->bytes += (long long)h->shards[i].bytes;
    pthread_mutex_unlock(&h->shards[i].mu);
  }
  out->max_bytes = (long long)h->max_bytes;
  out->evictions = atomic_load(&h->evictions);
  out->expired = atomic_load(&h->expired);
  fm_metrics_set("fm_kv_memory_entries", "", (double)out->entries);
  fm_metrics_set("fm_kv_memory_bytes", "", (double)out->bytes);
}

const struct fm_kv_driver fm_kv_memory_driver = {
    .name = "memory",
    .open = mem_open,
    .close = mem_close,
    .get = mem_get,
    .set = mem_set,
    .del = mem_del,
    .incr = mem_incr,
    .expire = mem_expire,
    .ttl = mem_ttl,
    .ping = mem_ping,
    .eval = NULL,
    .stats = mem_stats,
};
