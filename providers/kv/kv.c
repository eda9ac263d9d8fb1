/* kv.c: what every key-value driver shares: errors, REDIS_URL parsing, script results, the
 * process-wide script registry, the operation counter and the process's store. */
#include "kv.h"

#include "log.h"
#include "metrics.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors -------------------------------------------------------------------------------- */

int fm_kv_fail(struct fm_kv_error *e, const char *code, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  snprintf(e->code, sizeof e->code, "%s", code ? code : FM_KV_ERROR);
  e->misuse = 0;
  return -1;
}

int fm_kv_misuse(struct fm_kv_error *e, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  e->misuse = 1;
  e->code[0] = '\0';
  return -1;
}

/* ---- REDIS_URL ----------------------------------------------------------------------------- */

void fm_kv_config_display(struct fm_kv_config *cfg) {
  if (strcmp(cfg->mode, "sentinel") == 0) {
    snprintf(cfg->display, sizeof cfg->display, "redis-sentinel://%s%.300s/%s/%d",
             cfg->password[0] ? ":****@" : "", cfg->sentinels, cfg->master_set, cfg->db);
    return;
  }
  snprintf(cfg->display, sizeof cfg->display, "redis://%s%s%s:%d/%d",
           cfg->password[0] ? (cfg->username[0] ? cfg->username : "") : "",
           cfg->password[0] ? ":****@" : "", cfg->host, cfg->port, cfg->db);
}

static int pct_decode(const char *s, size_t n, char *out, size_t outsz) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
        isxdigit((unsigned char)s[i + 2])) {
      char hex[3] = {s[i + 1], s[i + 2], 0};
      c = (char)strtol(hex, NULL, 16);
      i += 2;
    }
    if (o + 1 >= outsz) return -1;
    out[o++] = c;
  }
  out[o] = '\0';
  return 0;
}

int fm_kv_redis_url_parse(const char *url, struct fm_kv_config *cfg, struct fm_err *err) {
  static const char forms[] = "expected redis://[:password@]host[:port][/db]";
  if (strncmp(url, "rediss://", 9) == 0)
    return fm_err_set(err, FM_E_INVAL, "rediss:// (TLS) is not supported yet; %s", forms);
  if (strncmp(url, "redis://", 8) != 0) return fm_err_set(err, FM_E_INVAL, "not a redis URL: %s", forms);
  const char *p = url + 8;
  const char *end = p + strcspn(p, "/?#");
  const char *at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q; /* the last '@' ends the userinfo */
  cfg->username[0] = cfg->password[0] = '\0';
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon) {
      if (pct_decode(p, (size_t)(colon - p), cfg->username, sizeof cfg->username) ||
          pct_decode(colon + 1, (size_t)(at - colon - 1), cfg->password, sizeof cfg->password))
        return fm_err_set(err, FM_E_INVAL, "redis URL: user or password too long");
    } else if (pct_decode(p, (size_t)(at - p), cfg->password, sizeof cfg->password)) {
      return fm_err_set(err, FM_E_INVAL, "redis URL: password too long");
    }
    p = at + 1;
  }
  const char *hend = end;
  cfg->port = 6379;
  if (*p == '[') { /* [ipv6]:port */
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (!rb) return fm_err_set(err, FM_E_INVAL, "redis URL: unterminated [ in the host; %s", forms);
    if ((size_t)(rb - p - 1) >= sizeof cfg->host) return fm_err_set(err, FM_E_INVAL, "redis URL: host too long");
    memcpy(cfg->host, p + 1, (size_t)(rb - p - 1));
    cfg->host[rb - p - 1] = '\0';
    hend = rb + 1;
  } else {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (colon) hend = colon;
    if ((size_t)(hend - p) >= sizeof cfg->host) return fm_err_set(err, FM_E_INVAL, "redis URL: host too long");
    memcpy(cfg->host, p, (size_t)(hend - p));
    cfg->host[hend - p] = '\0';
  }
  if (!cfg->host[0]) return fm_err_set(err, FM_E_INVAL, "redis URL without a host; %s", forms);
  if (hend < end && *hend == ':') {
    char *e2;
    long port = strtol(hend + 1, &e2, 10);
    if (e2 != end || port < 1 || port > 65535)
      return fm_err_set(err, FM_E_INVAL, "redis URL: bad port; %s", forms);
    cfg->port = (int)port;
  }
  cfg->db = 0;
  if (*end == '/' && end[1] && end[1] != '?') {
    char *e2;
    long db = strtol(end + 1, &e2, 10);
    if ((*e2 && *e2 != '?') || db < 0 || db > 1000000)
      return fm_err_set(err, FM_E_INVAL, "redis URL: the database must be a number; %s", forms);
    cfg->db = (int)db;
  }
  fm_kv_config_display(cfg);
  return 0;
}

/* ---- values -------------------------------------------------------------------------------- */

void fm_kv_value_free(struct fm_kv_value *v) {
  if (!v) return;
  if (v->type == FM_KV_ARRAY) {
    for (size_t i = 0; i < v->n; i++) fm_kv_value_free(&v->elem[i]);
    free(v->elem);
  }
  free(v->s);
  memset(v, 0, sizeof *v);
}

/* ---- scripts ------------------------------------------------------------------------------- */

struct script {
  char *name;
  char *src;
  size_t n;
  char sha[41];
  struct script *next;
};

static pthread_mutex_t g_scripts_mu = PTHREAD_MUTEX_INITIALIZER;
static struct script *g_scripts;

int fm_kv_script_register(const char *name, const char *src, size_t n, struct fm_err *err) {
  pthread_mutex_lock(&g_scripts_mu);
  struct script *s = g_scripts;
  while (s && strcmp(s->name, name) != 0) s = s->next;
  if (s && s->n == n && memcmp(s->src, src, n) == 0) { /* every VM registers it again */
    pthread_mutex_unlock(&g_scripts_mu);
    return 0;
  }
  char *copy = malloc(n + 1);
  if (!copy) {
    pthread_mutex_unlock(&g_scripts_mu);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  memcpy(copy, src, n);
  copy[n] = '\0';
  if (!s) {
    s = calloc(1, sizeof *s);
    if (s) s->name = strdup(name);
    if (!s || !s->name) {
      if (s) free(s);
      free(copy);
      pthread_mutex_unlock(&g_scripts_mu);
      return fm_err_set(err, FM_E_NOMEM, "out of memory");
    }
    s->next = g_scripts;
    g_scripts = s;
  }
  free(s->src);
  s->src = copy;
  s->n = n;
  s->sha[0] = '\0';
  pthread_mutex_unlock(&g_scripts_mu);
  return 0;
}

void fm_kv_scripts_reset(void) {
  pthread_mutex_lock(&g_scripts_mu);
  while (g_scripts) {
    struct script *s = g_scripts;
    g_scripts = s->next;
    free(s->name);
    free(s->src);
    free(s);
  }
  pthread_mutex_unlock(&g_scripts_mu);
}

int fm_kv_eval(struct fm_kv_store *kv, const char *name, int nkeys, const char *const *argv,
               const size_t *argl, int argc, struct fm_kv_value *out, struct fm_kv_error *e) {
  if (!kv->drv->eval)
    return fm_kv_misuse(e, "scripts need Redis: the %s backend does not run them (set REDIS_URL)",
                        kv->drv->name);
  pthread_mutex_lock(&g_scripts_mu);
  struct script *s = g_scripts;
  while (s && strcmp(s->name, name) != 0) s = s->next;
  if (!s) {
    pthread_mutex_unlock(&g_scripts_mu);
    return fm_kv_misuse(e, "no script registered as '%s' (fm.kv.register_script)", name);
  }
  char *src = malloc(s->n + 1);
  size_t n = s->n;
  char sha[41];
  memcpy(sha, s->sha, sizeof sha);
  if (src) memcpy(src, s->src, n + 1);
  pthread_mutex_unlock(&g_scripts_mu);
  if (!src) return fm_kv_fail(e, FM_KV_ERROR, "out of memory");
  int rc = kv->drv->eval(kv->h, src, n, sha, nkeys, argv, argl, argc, out, e);
  if (sha[0]) { /* remember the SHA that SCRIPT LOAD gave, if the source is still the same */
    pthread_mutex_lock(&g_scripts_mu);
    for (s = g_scripts; s; s = s->next)
      if (strcmp(s->name, name) == 0 && s->n == n && memcmp(s->src, src, n) == 0)
        memcpy(s->sha, sha, sizeof sha);
    pthread_mutex_unlock(&g_scripts_mu);
  }
  free(src);
  return rc;
}

/* ---- the store ----------------------------------------------------------------------------- */

static struct fm_kv_store *g_kv;

static void register_kv_metrics(void) {
  fm_metrics_register("fm_kv_operations_total", FM_METRIC_COUNTER,
                      "Key-value operations, by backend, operation and result (ok or error).",
                      NULL, 0);
  fm_metrics_register("fm_kv_memory_entries", FM_METRIC_GAUGE,
                      "Entries in the in-process key-value store.", NULL, 0);
  fm_metrics_register("fm_kv_memory_bytes", FM_METRIC_GAUGE,
                      "Bytes held by the in-process key-value store (keys, values, overhead).",
                      NULL, 0);
}

int fm_kv_open(const struct fm_kv_config *cfg, struct fm_kv_store **out, struct fm_err *err) {
  *out = NULL;
  register_kv_metrics();
  struct fm_kv_store *kv = calloc(1, sizeof *kv);
  if (!kv) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  kv->cfg = *cfg;
  if (cfg->backend == FM_KV_REDIS) {
    if (strcmp(cfg->mode, "sentinel") == 0 && !cfg->sentinels[0]) {
      free(kv);
      return fm_err_set(err, FM_E_INVAL,
                        "REDIS_MODE=sentinel needs REDIS_SENTINEL_HOSTS (host:port,host:port,...)");
    }
    kv->drv = &fm_kv_redis_driver;
  } else {
    kv->drv = &fm_kv_memory_driver;
  }
  if (kv->drv->open(cfg, &kv->h, err)) {
    free(kv);
    return err->code ? err->code : FM_E_INVAL;
  }
  *out = kv;
  return 0;
}

void fm_kv_close(struct fm_kv_store *kv) {
  if (!kv) return;
  kv->drv->close(kv->h);
  free(kv);
}

void fm_kv_count(const struct fm_kv_store *kv, const char *op, int ok) {
  char labels[128];
  snprintf(labels, sizeof labels, "backend=\"%s\",op=\"%s\",result=\"%s\"", kv->drv->name, op,
           ok ? "ok" : "error");
  fm_metrics_inc("fm_kv_operations_total", labels, 1);
}

struct fm_kv_store *fm_kv_global(void) { return g_kv; }

void fm_kv_global_set(struct fm_kv_store *kv) {
  struct fm_kv_store *old = g_kv;
  g_kv = kv;
  fm_kv_close(old);
}

void fm_kv_global_close(void) { fm_kv_global_set(NULL); }
