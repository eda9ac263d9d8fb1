/* storage.c: what every storage driver shares: errors, the key rules, the operation counter and
 * the process's store. */
#include "storage.h"

#include "metrics.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fm_storage_fail(struct fm_storage_error *e, const char *code, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  snprintf(e->code, sizeof e->code, "%s", code ? code : FM_STORAGE_ERROR);
  return -1;
}

/* ---- keys ---------------------------------------------------------------------------------- */

int fm_storage_valid_key(const char *key) {
  if (!key) return 0;
  size_t n = strlen(key);
  if (n == 0 || n > FM_STORAGE_KEY_MAX || key[0] == '/' || key[n - 1] == '/') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = key[i];
    int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '/' || c == '.' || c == '-';
    if (!ok) return 0;
    /* a component may not start with ".": no ".", "..", and no hidden names (the local
     * driver's temp directory is one) */
    if ((i == 0 || key[i - 1] == '/') && (c == '.' || c == '/')) return 0;
  }
  return strstr(key, "..") == NULL;
}

int fm_storage_valid_prefix(const char *prefix) {
  if (!prefix) return 0;
  size_t n = strlen(prefix);
  if (n == 0 || n > 512 || prefix[0] == '/' || prefix[n - 1] == '/') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = prefix[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '/' || c == '-'))
      return 0;
    if (c == '/' && prefix[i + 1] == '/') return 0;
  }
  return 1; /* no "." at all, so no ".." */
}

int fm_storage_new_key(const char *prefix, char *out, size_t outsz, struct fm_storage_error *e) {
  if (!fm_storage_valid_prefix(prefix))
    return fm_storage_fail(e, FM_STORAGE_INVALID,
                           "invalid prefix: expected [a-z0-9_/-], no leading, trailing or "
                           "doubled '/'");
  char rnd[33];
  if (fm_random_hex(rnd, sizeof rnd, 16))
    return fm_storage_fail(e, FM_STORAGE_ERROR, "no randomness for a key (getrandom failed)");
  int n = snprintf(out, outsz, "%s/%s", prefix, rnd);
  if (n < 0 || (size_t)n >= outsz) return fm_storage_fail(e, FM_STORAGE_INVALID, "prefix too long");
  return 0;
}

void fm_storage_entries_free(struct fm_storage_entry *v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++) free(v[i].key);
  free(v);
}

/* ---- the store ----------------------------------------------------------------------------- */

static struct fm_storage *g_storage;

int fm_storage_open(const struct fm_storage_config *cfg, struct fm_storage **out,
                    struct fm_err *err) {
  *out = NULL;
  fm_metrics_register("fm_storage_operations_total", FM_METRIC_COUNTER,
                      "File storage operations, by backend, operation and result (ok or error).",
                      NULL, 0);
  struct fm_storage *st = calloc(1, sizeof *st);
  if (!st) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  st->cfg = *cfg;
  st->drv = cfg->backend == FM_STORAGE_S3 ? &fm_storage_s3_driver : &fm_storage_local_driver;
  if (st->drv->open(cfg, &st->h, err)) {
    free(st);
    return err && err->code ? err->code : FM_E_INVAL;
  }
  *out = st;
  return 0;
}

void fm_storage_close(struct fm_storage *st) {
  if (!st) return;
  st->drv->close(st->h);
  free(st);
}

void fm_storage_count(const struct fm_storage *st, const char *op, int ok) {
  char labels[128];
  snprintf(labels, sizeof labels, "backend=\"%s\",op=\"%s\",result=\"%s\"", st->drv->name, op,
           ok ? "ok" : "error");
  fm_metrics_inc("fm_storage_operations_total", labels, 1);
}

struct fm_storage *fm_storage_global(void) { return g_storage; }

void fm_storage_global_set(struct fm_storage *st) {
  struct fm_storage *old = g_storage;
  g_storage = st;
  fm_storage_close(old);
}

void fm_storage_global_close(void) { fm_storage_global_set(NULL); }
