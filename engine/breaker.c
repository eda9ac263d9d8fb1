/* breaker.c: the process-wide circuit-breaker registry (see breaker.h for the state machine).
 *
 * One mutex guards the registry and every breaker in it: acquire and release are a lookup in at
 * most FM_BREAKER_MAX names and a few assignments, far cheaper than the request they guard, and a
 * single lock makes "exactly one probe" trivially true. Breakers are never freed while the
 * process serves (tickets point at them); fm_breaker_free_all is for tests and exit.
 *
 * Metrics are updated under the lock (so the gauge follows the transitions in order); log lines
 * are written after it is released. */
#include "breaker.h"

#include "buf.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "reload.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct fm_breaker {
  char name[FM_BREAKER_NAME_MAX + 1];
  enum fm_breaker_state state;
  int failures;
  double opened_mono; /* when it last opened (the registry's clock); 0: never */
  int probe_in_flight;
  uint64_t epoch;
  uint64_t transitions;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fm_breaker *g_list[FM_BREAKER_MAX];
static size_t g_count;
static int g_configured;
static int g_full_logged;
static struct fm_breaker_config g_cfg = {1, 5, 30.0};
static double (*g_clock)(void) = fm_time_mono;

/* A transition to log once the lock is released. */
struct transition {
  char name[FM_BREAKER_NAME_MAX + 1];
  enum fm_breaker_state from, to;
  int failures;
  double retry_in;
  const char *why;
};

const char *fm_breaker_state_name(enum fm_breaker_state s) {
  switch (s) {
  case FM_BREAKER_CLOSED: return "closed";
  case FM_BREAKER_HALF_OPEN: return "half_open";
  case FM_BREAKER_OPEN: return "open";
  }
  return "unknown";
}

int fm_breaker_valid_name(const char *name) {
  if (!name || !*name) return 0;
  size_t n = 0;
  for (const char *p = name; *p; p++, n++) {
    char c = *p;
    if (n >= FM_BREAKER_NAME_MAX) return 0;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
    if (!strchr("._:/@+[]-", c)) return 0;
  }
  return 1;
}

/* ---- settings ------------------------------------------------------------------------------ */

static int parse_bool(const char *s, int def) {
  if (!s) return def;
  if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
    return 1;
  if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
    return 0;
  return def;
}

static double parse_num(const char *s, double def, double min, double max) {
  if (!s || !*s) return def;
  char *end;
  double v = strtod(s, &end);
  while (*end == ' ' || *end == '\t') end++;
  if (*end || v != v || v < min || v > max) return def;
  return v;
}

/* The settings the engine took at start (config.lua validated them), else the environment. */
static void load_config_locked(void) {
  struct fm_breaker_config c = {1, 5, 30.0};
  const char *boot = fm_reload_boot_settings();
  json_t *s = boot ? json_loads(boot, 0, NULL) : NULL;
  if (json_is_object(s)) {
    json_t *v = json_object_get(s, "circuit_breaker_enabled");
    if (json_is_boolean(v)) c.enabled = json_is_true(v);
    v = json_object_get(s, "circuit_breaker_fail_threshold");
    if (json_is_number(v) && json_number_value(v) >= 1) c.fail_threshold = (int)json_number_value(v);
    v = json_object_get(s, "circuit_breaker_reset_timeout");
    if (json_is_number(v) && json_number_value(v) > 0) c.reset_timeout_s = json_number_value(v);
  } else {
    c.enabled = parse_bool(getenv("CIRCUIT_BREAKER_ENABLED"), 1);
    c.fail_threshold = (int)parse_num(getenv("CIRCUIT_BREAKER_FAIL_THRESHOLD"), 5, 1, 1000000);
    c.reset_timeout_s = parse_num(getenv("CIRCUIT_BREAKER_RESET_TIMEOUT"), 30, 0.1, 86400);
  }
  json_decref(s);
  g_cfg = c;
  g_configured = 1;
}

void fm_breaker_configure(const struct fm_breaker_config *cfg) {
  pthread_mutex_lock(&g_mu);
  g_cfg = *cfg;
  if (g_cfg.fail_threshold < 1) g_cfg.fail_threshold = 1;
  if (!(g_cfg.reset_timeout_s > 0)) g_cfg.reset_timeout_s = 30;
  g_configured = 1;
  pthread_mutex_unlock(&g_mu);
}

void fm_breaker_get_config(struct fm_breaker_config *out) {
  pthread_mutex_lock(&g_mu);
  if (!g_configured) load_config_locked();
  *out = g_cfg;
  pthread_mutex_unlock(&g_mu);
}

void fm_breaker_set_clock(double (*mono)(void)) {
  pthread_mutex_lock(&g_mu);
  g_clock = mono ? mono : fm_time_mono;
  pthread_mutex_unlock(&g_mu);
}

/* ---- metrics and logs ---------------------------------------------------------------------- */

static void register_metrics(void) {
  fm_metrics_register("fm_breaker_state", FM_METRIC_GAUGE,
                      "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.", NULL,
                      0);
  fm_metrics_register("fm_breaker_transitions_total", FM_METRIC_COUNTER,
                      "Circuit breaker state changes by dependency, from and to.", NULL, 0);
}

static void set_gauge(const struct fm_breaker *b) {
  const char *k[] = {"dependency"};
  const char *v[] = {b->name};
  char mem[256];
  struct fm_buf l;
  fm_buf_init_with(&l, mem, sizeof mem);
  if (fm_metrics_labels(&l, k, v, 1) == 0)
    fm_metrics_set("fm_breaker_state", fm_buf_cstr(&l), (double)b->state);
  fm_buf_free(&l);
}

/* Changes b's state under the lock: epoch, gauge, counter, and what to log afterwards. */
static void transition_locked(struct fm_breaker *b, enum fm_breaker_state to, const char *why,
                              struct transition *log) {
  enum fm_breaker_state from = b->state;
  b->state = to;
  b->epoch++;
  b->transitions++;
  b->probe_in_flight = 0;
  double now = g_clock();
  if (to == FM_BREAKER_OPEN) b->opened_mono = now;
  if (to == FM_BREAKER_CLOSED) b->failures = 0;
  set_gauge(b);
  const char *k[] = {"dependency", "from", "to"};
  const char *v[] = {b->name, fm_breaker_state_name(from), fm_breaker_state_name(to)};
  char mem[320];
  struct fm_buf l;
  fm_buf_init_with(&l, mem, sizeof mem);
  if (fm_metrics_labels(&l, k, v, 3) == 0)
    fm_metrics_inc("fm_breaker_transitions_total", fm_buf_cstr(&l), 1);
  fm_buf_free(&l);
  if (log) {
    snprintf(log->name, sizeof log->name, "%s", b->name);
    log->from = from;
    log->to = to;
    log->failures = b->failures;
    log->retry_in = to == FM_BREAKER_OPEN ? g_cfg.reset_timeout_s : 0;
    log->why = why;
  }
}

static void log_transition(const struct transition *t) {
  if (!t->why) return;
  char mem[512];
  struct fm_buf f;
  fm_buf_init_with(&f, mem, sizeof mem);
  fm_buf_adds(&f, "\"dependency\":");
  fm_buf_add_json_str(&f, t->name, strlen(t->name));
  fm_buf_printf(&f, ",\"from\":\"%s\",\"to\":\"%s\",\"reason\":\"%s\",\"failures\":%d",
                fm_breaker_state_name(t->from), fm_breaker_state_name(t->to), t->why, t->failures);
  if (t->to == FM_BREAKER_OPEN) fm_buf_printf(&f, ",\"retry_in_s\":%.3f", t->retry_in);
  char msg[64];
  snprintf(msg, sizeof msg, "circuit breaker %s",
           t->to == FM_BREAKER_OPEN ? "opened"
           : t->to == FM_BREAKER_HALF_OPEN ? "half-open: probing"
                                            : "closed");
  fm_log_fields(t->to == FM_BREAKER_OPEN ? FM_LOG_WARN : FM_LOG_INFO, msg, fm_buf_cstr(&f));
  fm_buf_free(&f);
}

/* ---- the registry -------------------------------------------------------------------------- */

static struct fm_breaker *find_locked(const char *name) {
  for (size_t i = 0; i < g_count; i++)
    if (strcmp(g_list[i]->name, name) == 0) return g_list[i];
  return NULL;
}

/* Finds or creates; NULL when the registry is full or out of memory. *full set on a full one. */
static struct fm_breaker *get_locked(const char *name, int *full) {
  struct fm_breaker *b = find_locked(name);
  if (b) return b;
  if (g_count == FM_BREAKER_MAX) {
    *full = !g_full_logged;
    g_full_logged = 1;
    return NULL;
  }
  b = calloc(1, sizeof *b);
  if (!b) return NULL;
  snprintf(b->name, sizeof b->name, "%s", name);
  b->state = FM_BREAKER_CLOSED;
  if (g_count == 0) register_metrics();
  g_list[g_count++] = b;
  set_gauge(b);
  return b;
}

int fm_breaker_acquire(const char *name, struct fm_breaker_ticket *t, double *retry_in) {
  memset(t, 0, sizeof *t);
  if (retry_in) *retry_in = 0;
  if (!fm_breaker_valid_name(name)) return 1;
  struct transition tr = {0};
  int full = 0, allow = 1;
  pthread_mutex_lock(&g_mu);
  if (!g_configured) load_config_locked();
  if (!g_cfg.enabled) {
    pthread_mutex_unlock(&g_mu);
    return 1;
  }
  struct fm_breaker *b = get_locked(name, &full);
  if (b) {
    switch (b->state) {
    case FM_BREAKER_CLOSED: break;
    case FM_BREAKER_OPEN: {
      double left = b->opened_mono + g_cfg.reset_timeout_s - g_clock();
      if (left > 0) {
        allow = 0;
        if (retry_in) *retry_in = left;
        break;
      }
      transition_locked(b, FM_BREAKER_HALF_OPEN, "reset timeout passed", &tr);
      b->probe_in_flight = 1;
      t->probe = 1;
      break;
    }
    case FM_BREAKER_HALF_OPEN:
      if (b->probe_in_flight) {
        allow = 0;
      } else { /* the last probe was never sent: this one goes instead */
        b->probe_in_flight = 1;
        t->probe = 1;
      }
      break;
    }
    if (allow) {
      t->b = b;
      t->epoch = b->epoch;
    }
  }
  pthread_mutex_unlock(&g_mu);
  if (full)
    fm_warn("circuit breakers: %d dependencies already guarded; %s and later ones go unguarded",
            FM_BREAKER_MAX, name);
  log_transition(&tr);
  return allow;
}

void fm_breaker_release(struct fm_breaker_ticket *t, enum fm_breaker_result r) {
  struct fm_breaker *b = t->b;
  if (!b) return;
  t->b = NULL;
  struct transition tr = {0};
  pthread_mutex_lock(&g_mu);
  if (t->epoch == b->epoch) { /* else: the breaker moved on since the request started */
    if (b->state == FM_BREAKER_CLOSED) {
      if (r == FM_BREAKER_SUCCESS) {
        b->failures = 0;
      } else if (r == FM_BREAKER_FAILURE) {
        b->failures++;
        if (b->failures >= g_cfg.fail_threshold)
          transition_locked(b, FM_BREAKER_OPEN, "consecutive failures", &tr);
      }
    } else if (b->state == FM_BREAKER_HALF_OPEN && t->probe) {
      if (r == FM_BREAKER_SUCCESS) transition_locked(b, FM_BREAKER_CLOSED, "probe succeeded", &tr);
      else if (r == FM_BREAKER_FAILURE) transition_locked(b, FM_BREAKER_OPEN, "probe failed", &tr);
      else b->probe_in_flight = 0;
    }
  }
  pthread_mutex_unlock(&g_mu);
  log_transition(&tr);
}

enum fm_breaker_result fm_breaker_classify(int rc, long status) {
  switch (rc) {
  case 0: return status >= 500 && status <= 599 ? FM_BREAKER_FAILURE : FM_BREAKER_SUCCESS;
  case FM_E_TIMEOUT:
  case FM_E_CONNECT:
  case FM_E_IO:
  case FM_E_PROTO: return FM_BREAKER_FAILURE;
  case FM_E_TOOBIG: return FM_BREAKER_SUCCESS;
  default: return FM_BREAKER_NEUTRAL;
  }
}

static void info_locked(const struct fm_breaker *b, struct fm_breaker_info *out, double now,
                        double wall) {
  memset(out, 0, sizeof *out);
  snprintf(out->name, sizeof out->name, "%s", b->name);
  out->state = b->state;
  out->failures = b->failures;
  out->opened_at = b->opened_mono > 0 ? wall - (now - b->opened_mono) : 0;
  if (b->state == FM_BREAKER_OPEN) {
    double left = b->opened_mono + g_cfg.reset_timeout_s - now;
    out->retry_in = left > 0 ? left : 0;
  }
  out->probe_in_flight = b->probe_in_flight;
  out->transitions = b->transitions;
}

int fm_breaker_info(const char *name, struct fm_breaker_info *out) {
  if (!name) return 0;
  double wall = fm_time_now();
  pthread_mutex_lock(&g_mu);
  if (!g_configured) load_config_locked();
  struct fm_breaker *b = find_locked(name);
  if (b) info_locked(b, out, g_clock(), wall);
  pthread_mutex_unlock(&g_mu);
  return b != NULL;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const struct fm_breaker_info *)a)->name, ((const struct fm_breaker_info *)b)->name);
}

int fm_breaker_list(struct fm_breaker_info **out) {
  *out = NULL;
  double wall = fm_time_now();
  pthread_mutex_lock(&g_mu);
  if (!g_configured) load_config_locked();
  size_t n = g_count;
  struct fm_breaker_info *v = n ? malloc(n * sizeof *v) : NULL;
  if (n && !v) {
    pthread_mutex_unlock(&g_mu);
    return -1;
  }
  double now = g_clock();
  for (size_t i = 0; i < n; i++) info_locked(g_list[i], &v[i], now, wall);
  pthread_mutex_unlock(&g_mu);
  if (n) qsort(v, n, sizeof *v, by_name);
  *out = v;
  return (int)n;
}

int fm_breaker_reset(const char *name) {
  if (!name) return 0;
  struct transition tr = {0};
  pthread_mutex_lock(&g_mu);
  struct fm_breaker *b = find_locked(name);
  if (b) {
    if (b->state != FM_BREAKER_CLOSED) {
      transition_locked(b, FM_BREAKER_CLOSED, "reset", &tr);
    } else {
      b->failures = 0;
      b->epoch++; /* outcomes of requests already running no longer count */
    }
  }
  pthread_mutex_unlock(&g_mu);
  log_transition(&tr);
  return b != NULL;
}

void fm_breaker_free_all(void) {
  pthread_mutex_lock(&g_mu);
  for (size_t i = 0; i < g_count; i++) free(g_list[i]);
  g_count = 0;
  g_configured = 0;
  g_full_logged = 0;
  g_cfg = (struct fm_breaker_config){1, 5, 30.0};
  pthread_mutex_unlock(&g_mu);
}
