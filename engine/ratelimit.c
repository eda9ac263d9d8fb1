/* ratelimit.c: see ratelimit.h. */
#include "ratelimit.h"

#include "util.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry {
  struct entry *next;
  uint64_t hash;
  double tokens, last; /* tokens at time `last` */
  double rate, cap;    /* as last used: decides when it is full */
  size_t kn;
  char key[];
};

struct shard {
  pthread_mutex_t mu;
  struct entry **slots;
  size_t nslots, n;
  double last_sweep;
};

static struct shard g_shards[FM_RL_SHARDS];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static double (*g_clock)(void) = fm_time_mono;
static pthread_mutex_t g_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static double g_gate_last = -1e18;

static void init_shards(void) {
  for (int i = 0; i < FM_RL_SHARDS; i++) pthread_mutex_init(&g_shards[i].mu, NULL);
}

void fm_rl_set_clock(double (*mono)(void)) { g_clock = mono ? mono : fm_time_mono; }

static uint64_t fnv1a(const char *k, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

static double level(const struct entry *e, double now) {
  double dt = now - e->last;
  if (dt < 0) dt = 0;
  double t = e->tokens + dt * e->rate;
  return t > e->cap ? e->cap : t;
}

/* Drops full entries of a locked shard. */
static void sweep_locked(struct shard *s, double now) {
  s->last_sweep = now;
  for (size_t i = 0; i < s->nslots; i++) {
    struct entry **pp = &s->slots[i];
    while (*pp) {
      struct entry *e = *pp;
      if (level(e, now) >= e->cap) {
        *pp = e->next;
        free(e);
        s->n--;
      } else {
        pp = &e->next;
      }
    }
  }
}

static int grow_locked(struct shard *s) {
  size_t nn = s->nslots ? s->nslots * 2 : 64;
  struct entry **ns = calloc(nn, sizeof *ns);
  if (!ns) return -1;
  for (size_t i = 0; i < s->nslots; i++) {
    struct entry *e = s->slots[i];
    while (e) {
      struct entry *next = e->next;
      size_t j = (size_t)(e->hash & (nn - 1));
      e->next = ns[j];
      ns[j] = e;
      e = next;
    }
  }
  free(s->slots);
  s->slots = ns;
  s->nslots = nn;
  return 0;
}

int fm_rl_take(const char *key, size_t kn, double rate, double capacity, double *tokens) {
  pthread_once(&g_once, init_shards);
  if (!(rate > 0)) rate = 1e-9;
  if (!(capacity >= 1)) capacity = 1;
  if (kn > FM_RL_KEY_MAX) kn = FM_RL_KEY_MAX;
  uint64_t h = fnv1a(key, kn);
  struct shard *s = &g_shards[(h >> 40) % FM_RL_SHARDS];
  double now = g_clock();
  pthread_mutex_lock(&s->mu);
  if (now - s->last_sweep >= 1.0 && s->n > 0) sweep_locked(s, now);
  struct entry *e = NULL;
  if (s->nslots) {
    for (e = s->slots[h & (s->nslots - 1)]; e; e = e->next)
      if (e->hash == h && e->kn == kn && memcmp(e->key, key, kn) == 0) break;
  }
  double t;
  if (e) {
    e->rate = rate;
    e->cap = capacity;
    t = level(e, now);
  } else {
    t = capacity;
  }
  int allowed = t >= 1.0;
  if (allowed) t -= 1.0;
  if (e) {
    e->tokens = t;
    e->last = now;
  } else if (allowed || t < capacity) {
    /* a new bucket: remember it (it is below full now) */
    if (s->n >= FM_RL_SHARD_MAX) sweep_locked(s, now);
    if (s->n < FM_RL_SHARD_MAX && (s->n < s->nslots || grow_locked(s) == 0)) {
      e = malloc(sizeof *e + kn);
      if (e) {
        e->hash = h;
        e->tokens = t;
        e->last = now;
        e->rate = rate;
        e->cap = capacity;
        e->kn = kn;
        memcpy(e->key, key, kn);
        size_t j = (size_t)(h & (s->nslots - 1));
        e->next = s->slots[j];
        s->slots[j] = e;
        s->n++;
      }
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (tokens) *tokens = t;
  return allowed;
}

size_t fm_rl_count(void) {
  pthread_once(&g_once, init_shards);
  size_t n = 0;
  for (int i = 0; i < FM_RL_SHARDS; i++) {
    pthread_mutex_lock(&g_shards[i].mu);
    n += g_shards[i].n;
    pthread_mutex_unlock(&g_shards[i].mu);
  }
  return n;
}

void fm_rl_sweep(void) {
  pthread_once(&g_once, init_shards);
  double now = g_clock();
  for (int i = 0; i < FM_RL_SHARDS; i++) {
    pthread_mutex_lock(&g_shards[i].mu);
    sweep_locked(&g_shards[i], now);
    pthread_mutex_unlock(&g_shards[i].mu);
  }
}

void fm_rl_free_all(void) {
  pthread_once(&g_once, init_shards);
  for (int i = 0; i < FM_RL_SHARDS; i++) {
    struct shard *s = &g_shards[i];
    pthread_mutex_lock(&s->mu);
    for (size_t j = 0; j < s->nslots; j++) {
      struct entry *e = s->slots[j];
      while (e) {
        struct entry *next = e->next;
        free(e);
        e = next;
      }
    }
    free(s->slots);
    s->slots = NULL;
    s->nslots = s->n = 0;
    s->last_sweep = 0;
    pthread_mutex_unlock(&s->mu);
  }
  pthread_mutex_lock(&g_gate_mu);
  g_gate_last = -1e18;
  pthread_mutex_unlock(&g_gate_mu);
}

int fm_rl_log_gate(double interval_s) {
  double now = g_clock();
  int ok = 0;
  pthread_mutex_lock(&g_gate_mu);
  if (now - g_gate_last >= interval_s) {
    g_gate_last = now;
    ok = 1;
  }
  pthread_mutex_unlock(&g_gate_mu);
  return ok;
}

/* addr -> 16 bytes (IPv4 as ::ffff:a.b.c.d) and whether it is IPv4. */
static int parse_ip(const char *s, unsigned char out[16], int *v4) {
  struct in_addr a4;
  if (inet_pton(AF_INET, s, &a4) == 1) {
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &a4, 4);
    *v4 = 1;
    return 0;
  }
  if (inet_pton(AF_INET6, s, out) == 1) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    *v4 = memcmp(out, mapped, 12) == 0;
    return 0;
  }
  return -1;
}

int fm_rl_addr_in(const char *addr, const char *cidr) {
  char net[64];
  const char *slash = strchr(cidr, '/');
  size_t nl = slash ? (size_t)(slash - cidr) : strlen(cidr);
  if (nl == 0 || nl >= sizeof net) return -1;
  memcpy(net, cidr, nl);
  net[nl] = '\0';
  unsigned char nb[16], ab[16];
  int nv4, av4;
  if (parse_ip(net, nb, &nv4)) return -1;
  int maxbits = nv4 ? 32 : 128;
  long bits = maxbits;
  if (slash) {
    char *end;
    if (!slash[1]) return -1;
    bits = strtol(slash + 1, &end, 10);
    if (*end || bits < 0 || bits > maxbits) return -1;
  }
  if (!addr || parse_ip(addr, ab, &av4)) return 0;
  if (nv4 != av4) return 0;
  int total = (int)bits + (nv4 ? 96 : 0);
  int full = total / 8, rem = total % 8;
  if (memcmp(nb, ab, (size_t)full) != 0) return 0;
  if (rem) {
    unsigned char mask = (unsigned char)(0xff << (8 - rem));
    if ((nb[full] & mask) != (ab[full] & mask)) return 0;
  }
  return 1;
}
