/* pool.c: a thread-safe pool of database connections.
 *
 * At most `size` connections, opened on demand (the first one at open, with retries). Free
 * connections are lent most recently used first, so an idle pool keeps reusing a few warm ones.
 * A borrower waits up to the acquire timeout, then gets "database pool exhausted". A connection
 * that failed at the connection level, or that the driver finds gone when it is lent again
 * (PostgreSQL: the server closed it), is closed and reopened by that acquire: one attempt and one
 * quick retry, so that a request fails fast with "database unavailable" while the database is
 * down instead of hanging. */
#include "db.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_BASE_S 0.25
#define BACKOFF_CAP_S 5.0

struct fm_db_slot {
  struct fm_db_pool *pool;
  struct fm_db_conn *conn;
  int broken; /* failed at the connection level: close before it is lent again */
};

struct fm_db_pool {
  struct fm_db_pool_config cfg;
  const struct fm_db_driver *drv;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  struct fm_db_slot *slots;
  int *idle; /* free slots; the top (idle[nidle-1]) is lent first */
  int nidle;
  int in_use, waiting, open;
  long long acquired, timeouts, reconnects;
};

static struct fm_db_pool *g_pool;

static void log_attempt(int level, const struct fm_db_pool_config *cfg, const char *backend,
                        int attempt, const char *error, double retry_in) {
  struct fm_buf f = {0};
  fm_buf_printf(&f, "\"backend\":\"%s\",\"attempt\":%d,\"url\":", backend, attempt);
  fm_buf_add_json_str(&f, cfg->url.display, strlen(cfg->url.display));
  fm_buf_adds(&f, ",\"error\":");
  fm_buf_add_json_str(&f, error, strlen(error));
  if (retry_in >= 0) fm_buf_printf(&f, ",\"retry_in_s\":%.2f", retry_in);
  fm_log_fields(level,
                retry_in >= 0 ? "database: connect failed, retrying" : "database: connect failed",
                fm_buf_cstr(&f));
  fm_buf_free(&f);
}

static int pool_init(struct fm_db_pool *p, const struct fm_db_pool_config *cfg) {
  p->cfg = *cfg;
  p->drv = fm_db_driver_for(cfg->url.backend);
  p->slots = calloc((size_t)cfg->size, sizeof *p->slots);
  p->idle = calloc((size_t)cfg->size, sizeof *p->idle);
  if (!p->drv || !p->slots || !p->idle) return -1;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&p->mu, NULL);
  for (int i = 0; i < cfg->size; i++) p->slots[i].pool = p;
  /* slot 0 gets the first connection and goes on top; the unopened ones below it */
  for (int i = cfg->size - 1; i >= 0; i--) p->idle[p->nidle++] = i;
  return 0;
}

int fm_db_pool_open(const struct fm_db_pool_config *cfg, struct fm_db_pool **out,
                    struct fm_err *err) {
  *out = NULL;
  if (cfg->size < 1) return fm_err_set(err, FM_E_INVAL, "database pool size must be >= 1");
  struct fm_db_pool *p = calloc(1, sizeof *p);
  if (!p || pool_init(p, cfg)) {
    if (p) {
      free(p->slots);
      free(p->idle);
    }
    free(p);
    return fm_err_set(err, FM_E_NOMEM, "database pool: out of memory");
  }
  const char *backend = p->drv->name;
  double start = fm_time_mono(), deadline = start + (cfg->connect_budget_s > 0 ? cfg->connect_budget_s : 0);
  struct fm_db_error e = {0};
  for (int attempt = 1;; attempt++) {
    double left = deadline - fm_time_mono();
    double per = left < 2 ? 2 : left > 10 ? 10 : left;
    if (p->drv->connect(&cfg->url, per, &p->slots[0].conn, &e) == 0) break;
    left = deadline - fm_time_mono();
    if (left <= 0) {
      log_attempt(FM_LOG_WARN, cfg, backend, attempt, e.msg, -1);
      fm_err_set(err, FM_E_CONNECT, "database %s: cannot connect (%d attempts in %.1f s): %s",
                 cfg->url.display, attempt, fm_time_mono() - start, e.msg);
      fm_db_pool_close(p);
      return FM_E_CONNECT;
    }
    double exp = BACKOFF_BASE_S * (double)(1u << (attempt < 8 ? attempt - 1 : 7));
    double delay = fm_jitter(exp < BACKOFF_CAP_S ? exp : BACKOFF_CAP_S);
    if (delay > left) delay = left;
    log_attempt(FM_LOG_WARN, cfg, backend, attempt, e.msg, delay);
    fm_sleep(delay);
  }
  p->open = 1;
  {
    struct fm_buf f = {0};
    fm_buf_printf(&f, "\"backend\":\"%s\",\"pool_size\":%d,\"url\":", backend, cfg->size);
    fm_buf_add_json_str(&f, cfg->url.display, strlen(cfg->url.display));
    fm_log_fields(FM_LOG_INFO, "database: connected", fm_buf_cstr(&f));
    fm_buf_free(&f);
  }
  *out = p;
  return 0;
}

void fm_db_pool_close(struct fm_db_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  int lent = p->in_use;
  pthread_mutex_unlock(&p->mu);
  if (lent) fm_error("database pool closed with %d connections still lent", lent);
  for (int i = 0; i < p->cfg.size; i++) {
    if (p->slots[i].conn) p->drv->close(p->slots[i].conn);
    p->slots[i].conn = NULL;
  }
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->slots);
  free(p->idle);
  free(p);
}

/* Puts slot i back: on top when it holds a connection, at the bottom when it does not (so that
 * open connections are lent first). Called with p->mu held. */
static void push_idle(struct fm_db_pool *p, int i) {
  if (p->slots[i].conn) {
    p->idle[p->nidle++] = i;
  } else {
    memmove(p->idle + 1, p->idle, (size_t)p->nidle * sizeof *p->idle);
    p->idle[0] = i;
    p->nidle++;
  }
}

static void close_slot(struct fm_db_pool *p, struct fm_db_slot *s) {
  if (!s->conn) return;
  p->drv->close(s->conn);
  s->conn = NULL;
  pthread_mutex_lock(&p->mu);
  p->open--;
  pthread_mutex_unlock(&p->mu);
}

/* (Re)opens the slot's connection: one attempt and one quick retry. */
static int open_slot(struct fm_db_pool *p, struct fm_db_slot *s, struct fm_db_error *e) {
  double per = p->cfg.acquire_timeout_s < 2 ? 2 : p->cfg.acquire_timeout_s > 10 ? 10 : p->cfg.acquire_timeout_s;
  for (int attempt = 1; attempt <= 2; attempt++) {
    if (p->drv->connect(&p->cfg.url, per, &s->conn, e) == 0) {
      pthread_mutex_lock(&p->mu);
      p->open++;
      p->reconnects++;
      pthread_mutex_unlock(&p->mu);
      return 0;
    }
    /* under load every call that needs a connection gets here: one warning per failed call */
    if (attempt == 1) {
      log_attempt(FM_LOG_DEBUG, &p->cfg, p->drv->name, attempt, e->msg, 0.1);
      fm_sleep(fm_jitter(0.2));
    } else {
      log_attempt(FM_LOG_WARN, &p->cfg, p->drv->name, attempt, e->msg, -1);
    }
  }
  char m[sizeof e->msg];
  snprintf(m, sizeof m, "%s", e->msg);
  return fm_db_fail(e, "08001", "database unavailable: %s", m);
}


int fm_db_pool_acquire(struct fm_db_pool *p, double timeout_s, struct fm_db_slot **out,
                       struct fm_db_error *e) {
  *out = NULL;
  if (timeout_s < 0) timeout_s = p->cfg.acquire_timeout_s;
  struct timespec ts;
  fm_deadline_ts(CLOCK_MONOTONIC, timeout_s, &ts);
  pthread_mutex_lock(&p->mu);
  p->waiting++;
  while (p->nidle == 0) {
    int rc = pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    if (rc == ETIMEDOUT && p->nidle == 0) {
      p->waiting--;
      p->timeouts++;
      int size = p->cfg.size;
      pthread_mutex_unlock(&p->mu);
      return fm_db_fail(e, "53300",
                        "database pool exhausted: all %d connections in use for %.1f s "
                        "(DATABASE_POOL_SIZE, DATABASE_POOL_TIMEOUT_S)",
                        size, timeout_s);
    }
  }
  p->waiting--;
  int i = p->idle[--p->nidle];
  p->in_use++;
  p->acquired++;
  pthread_mutex_unlock(&p->mu);

  struct fm_db_slot *s = &p->slots[i];
  if (s->conn && (s->broken || !p->drv->alive(s->conn))) {
    fm_info("database: a pooled connection was lost; reconnecting");
    close_slot(p, s);
  }
  s->broken = 0;
  if (!s->conn && open_slot(p, s, e)) {
    pthread_mutex_lock(&p->mu);
    p->in_use--;
    push_idle(p, i);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return -1;
  }
  *out = s;
  return 0;
}

void fm_db_pool_release(struct fm_db_pool *p, struct fm_db_slot *s) {
  if (!s) return;
  if (s->conn && !s->broken && p->drv->reset(s->conn) != 0) s->broken = 1;
  if (s->broken) close_slot(p, s);
  s->broken = 0;
  pthread_mutex_lock(&p->mu);
  p->in_use--;
  push_idle(p, (int)(s - p->slots));
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

const struct fm_db_driver *fm_db_pool_driver(const struct fm_db_pool *p) { return p->drv; }
const struct fm_db_pool_config *fm_db_pool_config(const struct fm_db_pool *p) { return &p->cfg; }

void fm_db_pool_stats(struct fm_db_pool *p, struct fm_db_stats *out) {
  pthread_mutex_lock(&p->mu);
  out->size = p->cfg.size;
  out->open = p->open;
  out->in_use = p->in_use;
  out->waiting = p->waiting;
  out->acquired = p->acquired;
  out->timeouts = p->timeouts;
  out->reconnects = p->reconnects;
  pthread_mutex_unlock(&p->mu);
}

/* ---- on a lent connection ------------------------------------------------------------------ */

static int after(struct fm_db_slot *s, int rc, struct fm_db_error *e) {
  if (rc && e->conn_lost) s->broken = 1;
  return rc;
}

int fm_db_slot_exec(struct fm_db_slot *s, const char *sql, size_t len,
                    const struct fm_db_value *params, int nparams, struct fm_db_result *res,
                    struct fm_db_error *e) {
  struct fm_err serr = {0};
  int want = 0, multi = 0;
  if (fm_db_scan_sql(sql, len, s->pool->cfg.url.backend, NULL, &want, &multi, &serr))
    return serr.code == FM_E_NOMEM ? fm_db_fail(e, "53200", "out of memory")
                                   : fm_db_misuse(e, "%s", serr.msg);
  if (want != nparams)
    return fm_db_misuse(e, "the SQL has %d ? placeholder%s but %d value%s given", want,
                        want == 1 ? "" : "s", nparams, nparams == 1 ? " was" : "s were");
  if (multi && nparams)
    return fm_db_misuse(e, "bound values need a single statement (the SQL holds several)");
  if (!s->conn) return fm_db_fail(e, "08003", "no connection");
  int rc = after(s, s->pool->drv->exec(s->conn, sql, len, params, nparams, res, e), e);
  if (rc == 0 && res->nrows > 0 && res->ncols > 0) { /* RETURNING id: the first column */
    res->has_last_id = 1;
    res->last_id = res->cells[0];
  }
  return rc;
}

int fm_db_slot_ping(struct fm_db_slot *s, struct fm_db_error *e) {
  return after(s, s->pool->drv->ping(s->conn, e), e);
}
int fm_db_slot_begin(struct fm_db_slot *s, struct fm_db_error *e) {
  return after(s, s->pool->drv->begin(s->conn, e), e);
}
int fm_db_slot_commit(struct fm_db_slot *s, struct fm_db_error *e) {
  return after(s, s->pool->drv->commit(s->conn, e), e);
}
int fm_db_slot_rollback(struct fm_db_slot *s, struct fm_db_error *e) {
  return after(s, s->pool->drv->rollback(s->conn, e), e);
}

/* ---- the process's pool -------------------------------------------------------------------- */

struct fm_db_pool *fm_db_global(void) { return g_pool; }

void fm_db_global_set(struct fm_db_pool *p) {
  struct fm_db_pool *old = g_pool;
  g_pool = p;
  fm_db_pool_close(old);
}

void fm_db_global_close(void) { fm_db_global_set(NULL); }
