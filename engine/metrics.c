#include "metrics.h"

#include "err.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const double default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1,      2.5,   5,     10,   30,    60, 120};

struct series {
  struct series *next;
  uint64_t hash;
  char *labels;
  double value;     /* counter or gauge */
  double sum;       /* histogram */
  uint64_t count;   /* histogram */
  uint64_t *counts; /* histogram: per bucket, not cumulative */
};

struct family {
  struct family *next;
  uint64_t hash; /* of the name: lookups compare it before the string */
  char *name;
  char *help;
  enum fm_metric_type type;
  double *buckets;
  size_t nbuckets;
  struct series *series[64];
  size_t nseries;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct family *g_families;
static void (*_Atomic g_collector)(void);

void fm_metrics_set_collector(void (*fn)(void)) { g_collector = fn; }

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

static int valid_name(const char *n) {
  if (!n || !*n) return 0;
  for (const char *p = n; *p; p++) {
    int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':' ||
             (p != n && *p >= '0' && *p <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static struct family *find_family(const char *name) {
  uint64_t h = fnv1a(name);
  for (struct family *f = g_families; f; f = f->next)
    if (f->hash == h && strcmp(f->name, name) == 0) return f;
  return NULL;
}

int fm_metrics_register(const char *name, enum fm_metric_type type, const char *help,
                        const double *buckets, size_t nbuckets) {
  if (!valid_name(name)) return FM_E_INVAL;
  int rc = 0;
  pthread_mutex_lock(&g_mu);
  struct family *f = find_family(name);
  if (f) {
    rc = f->type == type ? 0 : FM_E_INVAL;
    goto done;
  }
  f = calloc(1, sizeof *f);
  if (!f) { rc = FM_E_NOMEM; goto done; }
  f->name = strdup(name);
  f->hash = fnv1a(name);
  f->help = strdup(help ? help : "");
  f->type = type;
  if (type == FM_METRIC_HISTOGRAM) {
    if (!buckets) {
      buckets = default_buckets;
      nbuckets = sizeof default_buckets / sizeof default_buckets[0];
    }
    f->buckets = malloc(sizeof(double) * (nbuckets ? nbuckets : 1));
    if (f->buckets) memcpy(f->buckets, buckets, sizeof(double) * nbuckets);
    f->nbuckets = nbuckets;
  }
  if (!f->name || !f->help || (type == FM_METRIC_HISTOGRAM && !f->buckets)) {
    free(f->name); free(f->help); free(f->buckets); free(f);
    rc = FM_E_NOMEM;
    goto done;
  }
  f->next = g_families;
  g_families = f;
done:
  pthread_mutex_unlock(&g_mu);
  return rc;
}

/* Finds or creates a series; call with g_mu held. */
static struct series *get_series(struct family *f, const char *labels) {
  uint64_t h = fnv1a(labels);
  size_t slot = h & 63;
  for (struct series *s = f->series[slot]; s; s = s->next)
    if (s->hash == h && strcmp(s->labels, labels) == 0) return s;
  struct series *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->labels = strdup(labels);
  if (f->type == FM_METRIC_HISTOGRAM) s->counts = calloc(f->nbuckets + 1, sizeof(uint64_t));
  if (!s->labels || (f->type == FM_METRIC_HISTOGRAM && !s->counts)) {
    free(s->labels); free(s->counts); free(s);
    return NULL;
  }
  s->hash = h;
  s->next = f->series[slot];
  f->series[slot] = s;
  f->nseries++;
  return s;
}

enum op { OP_INC, OP_SET, OP_ADD, OP_OBSERVE };

static int update(const char *name, const char *labels, double v, enum op op) {
  int rc = 0;
  if (!labels) labels = "";
  if (isnan(v)) return FM_E_INVAL;
  pthread_mutex_lock(&g_mu);
  struct family *f = find_family(name);
  if (!f) { rc = FM_E_INVAL; goto done; }
  int ok = (op == OP_INC && f->type == FM_METRIC_COUNTER && v >= 0) ||
           ((op == OP_SET || op == OP_ADD) && f->type == FM_METRIC_GAUGE) ||
           (op == OP_OBSERVE && f->type == FM_METRIC_HISTOGRAM);
  if (!ok) { rc = FM_E_INVAL; goto done; }
  struct series *s = get_series(f, labels);
  if (!s) { rc = FM_E_NOMEM; goto done; }
  switch (op) {
  case OP_INC:
  case OP_ADD: s->value += v; break;
  case OP_SET: s->value = v; break;
  case OP_OBSERVE: {
    size_t i = 0;
    while (i < f->nbuckets && v > f->buckets[i]) i++;
    s->counts[i]++;
    s->sum += v;
    s->count++;
    break;
  }
  }
done:
  pthread_mutex_unlock(&g_mu);
  return rc;
}

int fm_metrics_inc(const char *name, const char *labels, double v) {
  return update(name, labels, v, OP_INC);
}
int fm_metrics_set(const char *name, const char *labels, double v) {
  return update(name, labels, v, OP_SET);
}
int fm_metrics_add(const char *name, const char *labels, double v) {
  return update(name, labels, v, OP_ADD);
}
int fm_metrics_observe(const char *name, const char *labels, double v) {
  return update(name, labels, v, OP_OBSERVE);
}

double fm_metrics_get(const char *name, const char *labels) {
  double v = 0;
  if (!labels) labels = "";
  pthread_mutex_lock(&g_mu);
  struct family *f = find_family(name);
  if (f && f->type != FM_METRIC_HISTOGRAM) {
    uint64_t h = fnv1a(labels);
    for (struct series *s = f->series[h & 63]; s; s = s->next)
      if (s->hash == h && strcmp(s->labels, labels) == 0) { v = s->value; break; }
  }
  pthread_mutex_unlock(&g_mu);
  return v;
}

int fm_metrics_labels(struct fm_buf *out, const char *const *keys, const char *const *values,
                      size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!valid_name(keys[i])) return FM_E_INVAL;
    if (i) fm_buf_addc(out, ',');
    fm_buf_adds(out, keys[i]);
    fm_buf_adds(out, "=\"");
    for (const char *p = values[i] ? values[i] : ""; *p; p++) {
      if (*p == '\\') fm_buf_adds(out, "\\\\");
      else if (*p == '"') fm_buf_adds(out, "\\\"");
      else if (*p == '\n') fm_buf_adds(out, "\\n");
      else fm_buf_addc(out, *p);
    }
    if (fm_buf_addc(out, '"')) return FM_E_NOMEM;
  }
  return 0;
}

static void add_num(struct fm_buf *out, double v) {
  if (isinf(v)) fm_buf_adds(out, v > 0 ? "+Inf" : "-Inf");
  else if (v == floor(v) && fabs(v) < 1e15) fm_buf_printf(out, "%.0f", v);
  else fm_buf_printf(out, "%.17g", v);
}

static void add_help(struct fm_buf *out, const char *help) {
  for (const char *p = help; *p; p++) {
    if (*p == '\\') fm_buf_adds(out, "\\\\");
    else if (*p == '\n') fm_buf_adds(out, "\\n");
    else fm_buf_addc(out, *p);
  }
}

static int cmp_series(const void *a, const void *b) {
  return strcmp((*(struct series *const *)a)->labels, (*(struct series *const *)b)->labels);
}

static int cmp_family(const void *a, const void *b) {
  return strcmp((*(struct family *const *)a)->name, (*(struct family *const *)b)->name);
}

static void render_family(struct fm_buf *out, struct family *f) {
  static const char *const tnames[] = {"counter", "gauge", "histogram"};
  fm_buf_printf(out, "# HELP %s ", f->name);
  add_help(out, f->help);
  fm_buf_printf(out, "\n# TYPE %s %s\n", f->name, tnames[f->type]);
  struct series **all = f->nseries ? malloc(sizeof *all * f->nseries) : NULL;
  size_t n = 0;
  if (f->nseries && !all) return;
  for (size_t slot = 0; slot < 64; slot++)
    for (struct series *s = f->series[slot]; s; s = s->next) all[n++] = s;
  if (n > 1) qsort(all, n, sizeof *all, cmp_series); /* qsort(NULL, 0) is undefined */
  for (size_t i = 0; i < n; i++) {
    struct series *s = all[i];
    const char *sep = s->labels[0] ? "," : "";
    if (f->type != FM_METRIC_HISTOGRAM) {
      fm_buf_adds(out, f->name);
      if (s->labels[0]) fm_buf_printf(out, "{%s}", s->labels);
      fm_buf_addc(out, ' ');
      add_num(out, s->value);
      fm_buf_addc(out, '\n');
      continue;
    }
    uint64_t cum = 0;
    for (size_t b = 0; b <= f->nbuckets; b++) {
      cum += s->counts[b];
      fm_buf_printf(out, "%s_bucket{%s%sle=\"", f->name, s->labels, sep);
      if (b == f->nbuckets) fm_buf_adds(out, "+Inf");
      else fm_buf_printf(out, "%g", f->buckets[b]);
      fm_buf_printf(out, "\"} %llu\n", (unsigned long long)cum);
    }
    fm_buf_printf(out, "%s_sum", f->name);
    if (s->labels[0]) fm_buf_printf(out, "{%s}", s->labels);
    fm_buf_addc(out, ' ');
    add_num(out, s->sum);
    fm_buf_printf(out, "\n%s_count", f->name);
    if (s->labels[0]) fm_buf_printf(out, "{%s}", s->labels);
    fm_buf_printf(out, " %llu\n", (unsigned long long)s->count);
  }
  free(all);
}

int fm_metrics_render(struct fm_buf *out) {
  void (*collect)(void) = g_collector;
  if (collect) collect();
  pthread_mutex_lock(&g_mu);
  size_t nf = 0;
  for (struct family *f = g_families; f; f = f->next) nf++;
  struct family **fs = nf ? malloc(sizeof *fs * nf) : NULL;
  if (nf && !fs) {
    pthread_mutex_unlock(&g_mu);
    return FM_E_NOMEM;
  }
  size_t i = 0;
  for (struct family *f = g_families; f; f = f->next) fs[i++] = f;
  if (nf > 1) qsort(fs, nf, sizeof *fs, cmp_family);
  for (i = 0; i < nf; i++) render_family(out, fs[i]);
  free(fs);
  pthread_mutex_unlock(&g_mu);
  return 0;
}

void fm_metrics_reset(void) {
  pthread_mutex_lock(&g_mu);
  struct family *f = g_families;
  while (f) {
    struct family *next = f->next;
    for (size_t slot = 0; slot < 64; slot++) {
      struct series *s = f->series[slot];
      while (s) {
        struct series *sn = s->next;
        free(s->labels); free(s->counts); free(s);
        s = sn;
      }
    }
    free(f->name); free(f->help); free(f->buckets); free(f);
    f = next;
  }
  g_families = NULL;
  pthread_mutex_unlock(&g_mu);
}
