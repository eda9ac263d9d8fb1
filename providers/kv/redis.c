/* redis.c: standalone Redis on hiredis, with a thread-safe connection pool.
 *
 * At most REDIS_POOL_SIZE connections, opened on demand; each has REDIS_TIMEOUT_MS as its
 * connect and command timeout. A command that fails at the connection level (refused, reset,
 * timed out) closes its connection; the next call that gets that slot reconnects. After a failed
 * connect, further connects wait for a backoff (exponential from 50 ms to 2 s, with jitter): calls
 * in that window fail at once with KV_UNAVAILABLE instead of each waiting for a timeout, so a
 * Redis that is down costs requests nothing but an error.
 *
 * Sentinel (REDIS_MODE=sentinel): slot_connect asks the sentinels in order (SENTINEL
 * get-master-addr-by-name, short timeouts, AUTH with the sentinel password if set) for the
 * master of REDIS_MASTER_SET, connects to it and checks with ROLE that it is a master. The
 * address is cached in the store (one per process, under its own mutex) with a generation: a
 * command that fails at the connection level or gets READONLY (the old master is now a replica)
 * forgets the address and bumps the generation, so every pooled connection to the old master is
 * closed when next acquired; the failed command is retried once on a new connection (a new
 * lookup). The cached address is also asked of the sentinels again about once a second
 * (master_recheck), so a switch while the old master still answers (a manual failover) moves the
 * pool within a second. +switch-master is not subscribed to. */
#include "kv.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_BASE_S 0.05
#define BACKOFF_CAP_S 2.0
#define BACKOFF_CAP_SENTINEL_S 0.25 /* a failover is short: look again soon */
#define SENTINEL_TIMEOUT_MS 300     /* at most, for each sentinel asked */
#define MAX_SENTINELS 16
#define MASTER_RECHECK_S 1.0        /* how often a cached master is asked of the sentinels again */

struct slot {
  redisContext *c;
  int broken;
  unsigned long gen; /* sentinel: the master generation it was opened in */
  char host[256];    /* where it is connected */
  int port;
};

struct fm_kv_handle {
  struct fm_kv_config cfg;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  struct slot *slots;
  int *idle;
  int nidle, in_use, open;
  long long reconnects, failures;
  int fails;          /* connect failures in a row */
  double retry_at;    /* no connect before this (fm_time_mono) */
  char last_err[512]; /* why the last connect failed */
  /* sentinel */
  int sentinel;
  int nsent;
  char sent_host[MAX_SENTINELS][256];
  int sent_port[MAX_SENTINELS];
  pthread_mutex_t mmu; /* the master cache: */
  char master_host[256]; /* "": look it up */
  int master_port;
  unsigned long gen; /* bumped when the master is forgotten or changes */
  double checked_at; /* when the sentinels last confirmed the cached master (fm_time_mono) */
  long long master_changes;
};

static struct timeval tv_of_ms(int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  return tv;
}

/* A connection error of c as fm.kv's code. */
static int conn_fail(struct fm_kv_handle *h, redisContext *c, const char *what,
                     struct fm_kv_error *e) {
  const char *es = c ? c->errstr : "out of memory";
  int timeout = c && c->err == REDIS_ERR_IO &&
                (strstr(es, "temporarily unavailable") || strstr(es, "timed out"));
  return fm_kv_fail(e, timeout ? FM_KV_TIMEOUT : FM_KV_UNAVAILABLE, "redis %s: %s: %s",
                    h->cfg.display, what, timeout ? "no answer within REDIS_TIMEOUT_MS" : es);
}

static redisReply *run(redisContext *c, int argc, const char **argv, const size_t *argl) {
  return redisCommandArgv(c, argc, argv, argl);
}

/* One connection to host:port, authenticated and on the configured database; in sentinel mode,
 * checked with ROLE to be a master. */
static int connect_to(struct fm_kv_handle *h, const char *host, int port, redisContext **out,
                      struct fm_kv_error *e) {
  *out = NULL;
  redisContext *c = redisConnectWithTimeout(host, port, tv_of_ms(h->cfg.timeout_ms));
  if (!c || c->err) {
    conn_fail(h, c, "cannot connect", e);
    if (c) redisFree(c);
    return -1;
  }
  redisSetTimeout(c, tv_of_ms(h->cfg.timeout_ms));
  redisReply *r = NULL;
  if (h->cfg.password[0]) {
    const char *av[3] = {"AUTH", h->cfg.username, h->cfg.password};
    size_t al[3] = {4, strlen(h->cfg.username), strlen(h->cfg.password)};
    r = h->cfg.username[0] ? run(c, 3, av, al) : run(c, 2, (const char *[]){"AUTH", h->cfg.password},
                                                       (size_t[]){4, al[2]});
    if (!r) goto conn_error;
    if (r->type == REDIS_REPLY_ERROR) {
      fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s: authentication failed: %s", h->cfg.display, r->str);
      goto fail;
    }
    freeReplyObject(r);
    r = NULL;
  }
  if (h->cfg.db) {
    char db[16];
    snprintf(db, sizeof db, "%d", h->cfg.db);
    r = run(c, 2, (const char *[]){"SELECT", db}, (size_t[]){6, strlen(db)});
    if (!r) goto conn_error;
    if (r->type == REDIS_REPLY_ERROR) {
      fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s: SELECT %s: %s", h->cfg.display, db, r->str);
      goto fail;
    }
    freeReplyObject(r);
    r = NULL;
  } else {
    /* without AUTH or SELECT nothing has been said yet: a PING tells a server that wants a
     * password (NOAUTH) from one that answers */
    r = run(c, 1, (const char *[]){"PING"}, (size_t[]){4});
    if (!r) goto conn_error;
    if (r->type == REDIS_REPLY_ERROR) {
      fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s: %s", h->cfg.display, r->str);
      goto fail;
    }
    freeReplyObject(r);
    r = NULL;
  }
  if (h->sentinel) {
    r = run(c, 1, (const char *[]){"ROLE"}, (size_t[]){4});
    if (!r) goto conn_error;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        (r->element[0]->type != REDIS_REPLY_STRING && r->element[0]->type != REDIS_REPLY_STATUS) ||
        strcmp(r->element[0]->str, "master") != 0) {
      fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s: %s:%d is not a master (ROLE: %s)",
                 h->cfg.display, host, port,
                 r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->str
                     ? r->element[0]->str
                     : (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
      goto fail;
    }
    freeReplyObject(r);
    r = NULL;
  }
  *out = c;
  return 0;
conn_error:
  conn_fail(h, c, "handshake failed", e);
fail:
  if (r) freeReplyObject(r);
  redisFree(c);
  return -1;
}

/* Asks the sentinels, in order, for the master of REDIS_MASTER_SET. */
static int sentinel_lookup(struct fm_kv_handle *h, char host[256], int *port,
                           struct fm_kv_error *e) {
  int tmo = h->cfg.timeout_ms < SENTINEL_TIMEOUT_MS ? h->cfg.timeout_ms : SENTINEL_TIMEOUT_MS;
  char why[512] = "no sentinel";
  for (int i = 0; i < h->nsent; i++) {
    redisContext *c = redisConnectWithTimeout(h->sent_host[i], h->sent_port[i], tv_of_ms(tmo));
    redisReply *r = NULL;
    if (!c || c->err) {
      snprintf(why, sizeof why, "sentinel %s:%d: %s", h->sent_host[i], h->sent_port[i],
               c ? c->errstr : "out of memory");
      goto next;
    }
    redisSetTimeout(c, tv_of_ms(tmo));
    if (h->cfg.sentinel_password[0]) {
      r = run(c, 2, (const char *[]){"AUTH", h->cfg.sentinel_password},
              (size_t[]){4, strlen(h->cfg.sentinel_password)});
      if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "sentinel %s:%d: AUTH: %s", h->sent_host[i], h->sent_port[i],
                 r ? r->str : c->errstr);
        goto next;
      }
      freeReplyObject(r);
    }
    r = run(c, 3, (const char *[]){"SENTINEL", "get-master-addr-by-name", h->cfg.master_set},
            (size_t[]){8, 23, strlen(h->cfg.master_set)});
    if (!r) {
      snprintf(why, sizeof why, "sentinel %s:%d: %s", h->sent_host[i], h->sent_port[i],
               c->errstr);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[0]->type == REDIS_REPLY_STRING &&
               r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len < 256) {
      int p = atoi(r->element[1]->str);
      if (p > 0 && p < 65536) {
        snprintf(host, 256, "%s", r->element[0]->str);
        *port = p;
        freeReplyObject(r);
        redisFree(c);
        return 0;
      }
      snprintf(why, sizeof why, "sentinel %s:%d: bad port", h->sent_host[i], h->sent_port[i]);
    } else if (r->type == REDIS_REPLY_ERROR) {
      snprintf(why, sizeof why, "sentinel %s:%d: %s", h->sent_host[i], h->sent_port[i], r->str);
    } else {
      snprintf(why, sizeof why, "sentinel %s:%d does not know the master set", h->sent_host[i],
               h->sent_port[i]);
    }
  next:
    if (r) freeReplyObject(r);
    if (c) redisFree(c);
  }
  return fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s: no master for '%s' (last: %s)",
                    h->cfg.display, h->cfg.master_set, why);
}

/* Sentinel: forgets the cached master if it is still host:port (a connection error or READONLY
 * there); every pooled connection of the old generation is closed when next acquired. */
static void master_forget(struct fm_kv_handle *h, const char *host, int port) {
  if (!h->sentinel) return;
  pthread_mutex_lock(&h->mmu);
  if (h->master_host[0] && h->master_port == port && strcmp(h->master_host, host) == 0) {
    h->master_host[0] = '\0';
    h->gen++;
  }
  pthread_mutex_unlock(&h->mmu);
}

/* Sentinel: about once a second (one caller at a time), asks the sentinels again whether the
 * cached master is still the master; when they name another, every pooled connection moves
 * (this bounds how long writes may go to a demoted master that still accepts them, as in a
 * manual failover, where Sentinel demotes the old master only some seconds after the switch).
 * A lookup that fails keeps the cache: the sentinels being away does not stop the data path. */
static void master_recheck(struct fm_kv_handle *h) {
  if (!h->sentinel) return;
  double now = fm_time_mono();
  pthread_mutex_lock(&h->mmu);
  int due = h->master_host[0] && now - h->checked_at >= MASTER_RECHECK_S;
  if (due) h->checked_at = now;
  pthread_mutex_unlock(&h->mmu);
  if (!due) return;
  char host[256];
  int port;
  struct fm_kv_error e = {0};
  if (sentinel_lookup(h, host, &port, &e)) return;
  pthread_mutex_lock(&h->mmu);
  int moved = h->master_host[0] && (strcmp(h->master_host, host) != 0 || h->master_port != port);
  if (moved) {
    snprintf(h->master_host, sizeof h->master_host, "%s", host);
    h->master_port = port;
    h->gen++;
    h->master_changes++;
  }
  pthread_mutex_unlock(&h->mmu);
  if (moved) fm_info("kv: sentinel: the master of '%s' is now %s:%d", h->cfg.master_set, host, port);
}

/* One connection to the server (sentinel: to the master, looked up when not cached). */
static int slot_connect(struct fm_kv_handle *h, struct slot *s, redisContext **out,
                        struct fm_kv_error *e) {
  if (!h->sentinel) {
    snprintf(s->host, sizeof s->host, "%s", h->cfg.host);
    s->port = h->cfg.port;
    return connect_to(h, h->cfg.host, h->cfg.port, out, e);
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    char host[256];
    int port;
    unsigned long gen;
    pthread_mutex_lock(&h->mmu);
    snprintf(host, sizeof host, "%s", h->master_host);
    port = h->master_port;
    pthread_mutex_unlock(&h->mmu);
    int cached = host[0] != '\0';
    if (!cached) {
      if (sentinel_lookup(h, host, &port, e)) return -1;
      pthread_mutex_lock(&h->mmu);
      h->checked_at = fm_time_mono();
      if (strcmp(h->master_host, host) != 0 || h->master_port != port) {
        snprintf(h->master_host, sizeof h->master_host, "%s", host);
        h->master_port = port;
        h->gen++;
        h->master_changes++;
        pthread_mutex_unlock(&h->mmu);
        fm_info("kv: sentinel: the master of '%s' is %s:%d", h->cfg.master_set, host, port);
        pthread_mutex_lock(&h->mmu);
      }
      pthread_mutex_unlock(&h->mmu);
    }
    pthread_mutex_lock(&h->mmu);
    gen = h->gen;
    pthread_mutex_unlock(&h->mmu);
    if (connect_to(h, host, port, out, e) == 0) {
      s->gen = gen;
      snprintf(s->host, sizeof s->host, "%s", host);
      s->port = port;
      return 0;
    }
    master_forget(h, host, port);
    if (!cached) return -1; /* a fresh answer that does not work: back off */
  }
  return -1;
}

/* Parses REDIS_SENTINEL_HOSTS into h. */
static int parse_sentinels(struct fm_kv_handle *h, struct fm_err *err) {
  const char *p = h->cfg.sentinels;
  while (*p) {
    size_t n = strcspn(p, ",");
    char item[300];
    if (n == 0 || n >= sizeof item) goto bad;
    memcpy(item, p, n);
    item[n] = '\0';
    char *a = item, *z = item + n;
    while (*a == ' ') a++;
    while (z > a && z[-1] == ' ') *--z = '\0';
    char *colon = strrchr(a, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 26379;
    if (colon && (end == colon + 1 || *end || port < 1 || port > 65535)) goto bad;
    if (colon) *colon = '\0';
    if (a[0] == '[' && colon && colon[-1] == ']') { /* [ipv6]:port */
      a++;
      colon[-1] = '\0';
    }
    if (!a[0] || strlen(a) >= 256) goto bad;
    if (h->nsent == MAX_SENTINELS)
      return fm_err_set(err, FM_E_INVAL, "REDIS_SENTINEL_HOSTS: at most %d sentinels",
                        MAX_SENTINELS);
    memcpy(h->sent_host[h->nsent], a, strlen(a) + 1); /* < 256, checked above */
    h->sent_port[h->nsent++] = (int)port;
    p += n;
    if (*p == ',') p++;
    continue;
  bad:
    return fm_err_set(err, FM_E_INVAL, "REDIS_SENTINEL_HOSTS: expected host:port,host:port,...");
  }
  if (!h->nsent) return fm_err_set(err, FM_E_INVAL, "REDIS_SENTINEL_HOSTS is empty");
  return 0;
}


static void push_idle(struct fm_kv_handle *h, int i) {
  if (h->slots[i].c) {
    h->idle[h->nidle++] = i;
  } else {
    memmove(h->idle + 1, h->idle, (size_t)h->nidle * sizeof *h->idle);
    h->idle[0] = i;
    h->nidle++;
  }
}

static void give_back(struct fm_kv_handle *h, struct slot *s) {
  if (s->c && s->broken) {
    redisFree(s->c);
    s->c = NULL;
    pthread_mutex_lock(&h->mu);
    h->open--;
    pthread_mutex_unlock(&h->mu);
  }
  s->broken = 0;
  pthread_mutex_lock(&h->mu);
  h->in_use--;
  push_idle(h, (int)(s - h->slots));
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static int acquire(struct fm_kv_handle *h, struct slot **out, struct fm_kv_error *e) {
  *out = NULL;
  double timeout_s = h->cfg.timeout_ms / 1000.0;
  struct timespec ts;
  fm_deadline_ts(CLOCK_MONOTONIC, timeout_s, &ts);
  pthread_mutex_lock(&h->mu);
  while (h->nidle == 0) {
    if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == ETIMEDOUT && h->nidle == 0) {
      h->failures++;
      pthread_mutex_unlock(&h->mu);
      return fm_kv_fail(e, FM_KV_UNAVAILABLE,
                        "redis pool exhausted: all %d connections in use for %.1f s "
                        "(REDIS_POOL_SIZE)",
                        h->cfg.pool_size, timeout_s);
    }
  }
  int i = h->idle[--h->nidle];
  h->in_use++;
  struct slot *s = &h->slots[i];
  if (s->c && h->sentinel) { /* opened before the master was forgotten or changed: close it */
    pthread_mutex_lock(&h->mmu);
    int stale = s->gen != h->gen;
    pthread_mutex_unlock(&h->mmu);
    if (stale) {
      redisFree(s->c);
      s->c = NULL;
      h->open--;
    }
  }
  if (!s->c) {
    double now = fm_time_mono();
    if (now < h->retry_at) { /* backing off: fail now */
      h->failures++;
      fm_kv_fail(e, FM_KV_UNAVAILABLE, "redis %s unavailable (%s); next attempt in %.2f s",
                 h->cfg.display, h->last_err, h->retry_at - now);
      h->in_use--;
      push_idle(h, i);
      pthread_cond_signal(&h->cv);
      pthread_mutex_unlock(&h->mu);
      return -1;
    }
    pthread_mutex_unlock(&h->mu);
    redisContext *c = NULL;
    int rc = slot_connect(h, s, &c, e);
    pthread_mutex_lock(&h->mu);
    if (rc) {
      h->failures++;
      h->fails++;
      double exp = BACKOFF_BASE_S * (double)(1u << (h->fails < 8 ? h->fails - 1 : 7));
      double cap = h->sentinel ? BACKOFF_CAP_SENTINEL_S : BACKOFF_CAP_S;
      double delay = fm_jitter(exp < cap ? exp : cap);
      h->retry_at = fm_time_mono() + delay;
      int first = h->fails == 1;
      memcpy(h->last_err, e->msg, sizeof h->last_err);
      h->in_use--;
      push_idle(h, i);
      pthread_cond_signal(&h->cv);
      pthread_mutex_unlock(&h->mu);
      if (first) fm_warn("kv: %s; retrying with backoff", e->msg);
      return -1;
    }
    if (h->fails) fm_info("kv: redis %s is back after %d failed connects", h->cfg.display, h->fails);
    h->fails = 0;
    h->retry_at = 0;
    h->open++;
    h->reconnects++;
    s->c = c;
  }
  pthread_mutex_unlock(&h->mu);
  *out = s;
  return 0;
}

static int is_readonly(const redisReply *r) {
  return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0;
}

/* Sentinel: after a connection error or READONLY on s, forgets the master and says whether to
 * retry (once) on a new one. */
static int failover_retry(struct fm_kv_handle *h, struct slot *s, int attempt) {
  if (!h->sentinel) return 0;
  s->broken = 1;
  master_forget(h, s->host, s->port);
  return attempt == 0;
}

/* Runs one command on a pooled connection. *out: the reply (an error reply included). */
static int command(struct fm_kv_handle *h, int argc, const char **argv, const size_t *argl,
                   redisReply **out, struct fm_kv_error *e) {
  *out = NULL;
  master_recheck(h);
  for (int attempt = 0;; attempt++) {
    struct slot *s;
    if (acquire(h, &s, e)) return -1;
    redisReply *r = run(s->c, argc, argv, argl);
    int rc = 0;
    if (!r) {
      rc = conn_fail(h, s->c, argv[0], e);
      s->broken = 1;
    }
    int retry = (!r || is_readonly(r)) && failover_retry(h, s, attempt);
    give_back(h, s);
    if (retry) {
      if (r) freeReplyObject(r);
      continue;
    }
    *out = r;
    return rc;
  }
}

static int reply_error(struct fm_kv_handle *h, redisReply *r, const char *what,
                       struct fm_kv_error *e) {
  const char *code = strstr(r->str, "not an integer") || strstr(r->str, "overflow")
                         ? FM_KV_NOT_INTEGER
                     : is_readonly(r) ? FM_KV_UNAVAILABLE /* a replica: failover in progress */
                                      : FM_KV_ERROR;
  fm_kv_fail(e, code, "redis %s: %s", what, r->str);
  freeReplyObject(r);
  return -1;
}

/* ---- the driver ---------------------------------------------------------------------------- */

static int r_open(const struct fm_kv_config *cfg, struct fm_kv_handle **out, struct fm_err *err) {
  *out = NULL;
  if (cfg->pool_size < 1) return fm_err_set(err, FM_E_INVAL, "REDIS_POOL_SIZE must be >= 1");
  struct fm_kv_handle *h = calloc(1, sizeof *h);
  if (!h) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  h->cfg = *cfg;
  if (h->cfg.timeout_ms < 1) h->cfg.timeout_ms = 2000;
  h->sentinel = strcmp(cfg->mode, "sentinel") == 0;
  if (h->sentinel) {
    if (!h->cfg.master_set[0]) snprintf(h->cfg.master_set, sizeof h->cfg.master_set, "mymaster");
    if (parse_sentinels(h, err)) {
      free(h);
      return err->code ? err->code : FM_E_INVAL;
    }
  }
  h->slots = calloc((size_t)cfg->pool_size, sizeof *h->slots);
  h->idle = calloc((size_t)cfg->pool_size, sizeof *h->idle);
  if (!h->slots || !h->idle) {
    free(h->slots);
    free(h->idle);
    free(h);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&h->mu, NULL);
  pthread_mutex_init(&h->mmu, NULL);
  for (int i = cfg->pool_size - 1; i >= 0; i--) h->idle[h->nidle++] = i;
  /* one connection now, to say in the log whether Redis answers; a Redis that is down does not
   * stop the start (calls fail with KV_UNAVAILABLE until it is back, /health says so) */
  struct slot *s;
  struct fm_kv_error e = {0};
  if (acquire(h, &s, &e) == 0) {
    give_back(h, s);
    char f[FM_KV_STR_MAX + 64];
    snprintf(f, sizeof f, "\"backend\":\"redis\",\"pool_size\":%d,\"url\":\"%s\"", cfg->pool_size,
             h->cfg.display);
    fm_log_fields(FM_LOG_INFO, "kv: connected", f);
  }
  *out = h;
  return 0;
}

static void r_close(struct fm_kv_handle *h) {
  if (!h) return;
  for (int i = 0; i < h->cfg.pool_size; i++)
    if (h->slots[i].c) redisFree(h->slots[i].c);
  pthread_mutex_destroy(&h->mu);
  pthread_mutex_destroy(&h->mmu);
  pthread_cond_destroy(&h->cv);
  free(h->slots);
  free(h->idle);
  free(h);
}

static int r_get(struct fm_kv_handle *h, const char *k, size_t kn, char **val, size_t *vn,
                 struct fm_kv_error *e) {
  redisReply *r;
  if (command(h, 2, (const char *[]){"GET", k}, (size_t[]){3, kn}, &r, e)) return -1;
  if (r->type == REDIS_REPLY_ERROR) return reply_error(h, r, "GET", e);
  int rc = 0;
  if (r->type == REDIS_REPLY_STRING) {
    *val = malloc(r->len + 1);
    if (!*val) {
      rc = fm_kv_fail(e, FM_KV_ERROR, "out of memory");
    } else {
      memcpy(*val, r->str, r->len);
      (*val)[r->len] = '\0';
      *vn = r->len;
      rc = 1;
    }
  }
  freeReplyObject(r);
  return rc;
}

static int r_set(struct fm_kv_handle *h, const char *k, size_t kn, const char *v, size_t vn,
                 long long ttl_ms, struct fm_kv_error *e) {
  char ms[24];
  int n = snprintf(ms, sizeof ms, "%lld", ttl_ms);
  redisReply *r;
  if (command(h, ttl_ms > 0 ? 5 : 3, (const char *[]){"SET", k, v, "PX", ms},
              (size_t[]){3, kn, vn, 2, (size_t)n}, &r, e))
    return -1;
  if (r->type == REDIS_REPLY_ERROR) return reply_error(h, r, "SET", e);
  freeReplyObject(r);
  return 0;
}

static int int_command(struct fm_kv_handle *h, int argc, const char **argv, const size_t *argl,
                       long long *out, struct fm_kv_error *e) {
  redisReply *r;
  if (command(h, argc, argv, argl, &r, e)) return -1;
  if (r->type == REDIS_REPLY_ERROR) return reply_error(h, r, argv[0], e);
  if (r->type != REDIS_REPLY_INTEGER) {
    freeReplyObject(r);
    return fm_kv_fail(e, FM_KV_ERROR, "redis %s: unexpected reply", argv[0]);
  }
  *out = r->integer;
  freeReplyObject(r);
  return 0;
}

static int r_del(struct fm_kv_handle *h, const char *k, size_t kn, struct fm_kv_error *e) {
  long long n;
  if (int_command(h, 2, (const char *[]){"DEL", k}, (size_t[]){3, kn}, &n, e)) return -1;
  return n > 0;
}

static int r_incr(struct fm_kv_handle *h, const char *k, size_t kn, long long by, long long ttl_ms,
                  long long *out, struct fm_kv_error *e) {
  char bys[24], ms[24];
  int bn = snprintf(bys, sizeof bys, "%lld", by);
  if (ttl_ms <= 0)
    return int_command(h, 3, (const char *[]){"INCRBY", k, bys}, (size_t[]){6, kn, (size_t)bn},
                       out, e);
  /* SET k 0 PX ttl NX, then INCRBY, pipelined: the TTL is set only by the call that creates the
   * key, and each command is atomic */
  int mn = snprintf(ms, sizeof ms, "%lld", ttl_ms);
  redisReply *r = NULL;
  master_recheck(h);
  for (int attempt = 0;; attempt++) {
    struct slot *s;
    if (acquire(h, &s, e)) return -1;
    redisAppendCommandArgv(s->c, 6, (const char *[]){"SET", k, "0", "PX", ms, "NX"},
                           (size_t[]){3, kn, 1, 2, (size_t)mn, 2});
    redisAppendCommandArgv(s->c, 3, (const char *[]){"INCRBY", k, bys},
                           (size_t[]){6, kn, (size_t)bn});
    void *r1 = NULL, *r2 = NULL;
    int rc = 0;
    if (redisGetReply(s->c, &r1) != REDIS_OK || redisGetReply(s->c, &r2) != REDIS_OK) {
      rc = conn_fail(h, s->c, "INCRBY", e);
      s->broken = 1;
    }
    int retry = (rc || is_readonly(r1) || is_readonly(r2)) && failover_retry(h, s, attempt);
    give_back(h, s);
    if (r1) freeReplyObject(r1);
    if (rc || retry) {
      if (r2) freeReplyObject(r2);
      if (retry) continue;
      return rc;
    }
    r = r2;
    break;
  }
  if (r->type == REDIS_REPLY_ERROR) return reply_error(h, r, "INCRBY", e);
  *out = r->integer;
  freeReplyObject(r);
  return 0;
}

static int r_expire(struct fm_kv_handle *h, const char *k, size_t kn, long long ttl_ms,
                    struct fm_kv_error *e) {
  char ms[24];
  int mn = snprintf(ms, sizeof ms, "%lld", ttl_ms);
  long long n;
  if (int_command(h, 3, (const char *[]){"PEXPIRE", k, ms}, (size_t[]){7, kn, (size_t)mn}, &n, e))
    return -1;
  return n > 0;
}

static int r_ttl(struct fm_kv_handle *h, const char *k, size_t kn, long long *ttl_ms,
                 struct fm_kv_error *e) {
  return int_command(h, 2, (const char *[]){"PTTL", k}, (size_t[]){4, kn}, ttl_ms, e);
}

static int r_ping(struct fm_kv_handle *h, struct fm_kv_error *e) {
  redisReply *r;
  if (command(h, 1, (const char *[]){"PING"}, (size_t[]){4}, &r, e)) return -1;
  if (r->type == REDIS_REPLY_ERROR) return reply_error(h, r, "PING", e);
  freeReplyObject(r);
  return 0;
}

static int convert(const redisReply *r, struct fm_kv_value *v) {
  memset(v, 0, sizeof *v);
  switch (r->type) {
  case REDIS_REPLY_INTEGER:
    v->type = FM_KV_INT;
    v->i = r->integer;
    return 0;
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    v->type = r->type == REDIS_REPLY_STRING ? FM_KV_STR : FM_KV_STATUS;
    v->s = malloc(r->len + 1);
    if (!v->s) return -1;
    memcpy(v->s, r->str, r->len);
    v->s[r->len] = '\0';
    v->n = r->len;
    return 0;
  case REDIS_REPLY_ARRAY:
    v->type = FM_KV_ARRAY;
    v->elem = calloc(r->elements ? r->elements : 1, sizeof *v->elem);
    if (!v->elem) return -1;
    v->n = r->elements;
    for (size_t i = 0; i < r->elements; i++)
      if (convert(r->element[i], &v->elem[i])) return -1;
    return 0;
  default: v->type = FM_KV_NIL; return 0;
  }
}

static int r_eval(struct fm_kv_handle *h, const char *src, size_t srcn, char sha[41], int nkeys,
                  const char *const *argv, const size_t *argl, int argc, struct fm_kv_value *out,
                  struct fm_kv_error *e) {
  memset(out, 0, sizeof *out);
  const char **av = calloc((size_t)argc + 3, sizeof *av);
  size_t *al = calloc((size_t)argc + 3, sizeof *al);
  if (!av || !al) {
    free(av);
    free(al);
    return fm_kv_fail(e, FM_KV_ERROR, "out of memory");
  }
  char nk[16];
  snprintf(nk, sizeof nk, "%d", nkeys);
  av[0] = "EVALSHA";
  al[0] = 7;
  av[2] = nk;
  al[2] = strlen(nk);
  for (int i = 0; i < argc; i++) {
    av[i + 3] = argv[i];
    al[i + 3] = argl[i];
  }
  int rc = -1;
  redisReply *r = NULL;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (!sha[0]) { /* SCRIPT LOAD: the server says the SHA1 */
      if (command(h, 3, (const char *[]){"SCRIPT", "LOAD", src}, (size_t[]){6, 4, srcn}, &r, e))
        goto done;
      if (r->type == REDIS_REPLY_ERROR) {
        rc = reply_error(h, r, "SCRIPT LOAD", e);
        r = NULL;
        goto done;
      }
      if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        fm_kv_fail(e, FM_KV_ERROR, "redis SCRIPT LOAD: unexpected reply");
        goto done;
      }
      memcpy(sha, r->str, 40);
      sha[40] = '\0';
      freeReplyObject(r);
      r = NULL;
    }
    av[1] = sha;
    al[1] = 40;
    if (command(h, argc + 3, av, al, &r, e)) goto done;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 && attempt == 0) {
      freeReplyObject(r); /* SCRIPT FLUSH, a restarted or another server: load it again */
      r = NULL;
      sha[0] = '\0';
      continue;
    }
    break;
  }
  if (!r) {
    fm_kv_fail(e, FM_KV_ERROR, "redis EVALSHA: no reply");
  } else if (r->type == REDIS_REPLY_ERROR) {
    rc = reply_error(h, r, "script", e);
    r = NULL;
  } else if (convert(r, out)) {
    fm_kv_value_free(out);
    fm_kv_fail(e, FM_KV_ERROR, "out of memory");
  } else {
    rc = 0;
  }
done:
  if (r) freeReplyObject(r);
  free(av);
  free(al);
  return rc;
}

static void r_stats(struct fm_kv_handle *h, struct fm_kv_stats *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&h->mu);
  out->size = h->cfg.pool_size;
  out->open = h->open;
  out->in_use = h->in_use;
  out->reconnects = h->reconnects;
  out->failures = h->failures;
  pthread_mutex_unlock(&h->mu);
}

const struct fm_kv_driver fm_kv_redis_driver = {
    .name = "redis",
    .open = r_open,
    .close = r_close,
    .get = r_get,
    .set = r_set,
    .del = r_del,
    .incr = r_incr,
    .expire = r_expire,
    .ttl = r_ttl,
    .ping = r_ping,
    .eval = r_eval,
    .stats = r_stats,
};
