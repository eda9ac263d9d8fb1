/* metrics.c: metrics evidence (CSV/TSV, JSON, Prometheus text) streamed into per-series
 * statistics with bounded memory.
 *
 * Per series: count, min, max, mean and standard deviation (Welford, population), first and
 * last timestamp, p50/p95/p99 from a reservoir of MX_RES values (Algorithm R with a fixed seed,
 * so runs are reproducible), and the MX_TOPK highest and lowest points with their timestamp and
 * line. z-scores are taken at finish against the final mean and stddev; since z is monotonic in
 * the value, the most extreme points by |z| are always among those kept, so the reported
 * anomalies are exact. The per-series count of |z| >= 3 points is exact unless all MX_TOPK kept
 * points of a side are anomalous; then it is estimated from the reservoir (and flagged).
 *
 * Percentile error: exact (linear interpolation between closest ranks) up to MX_RES values;
 * beyond, the reservoir is a uniform sample, so the rank of the reported quantile q has a
 * standard deviation of sqrt(q(1-q)/MX_RES): 1.6 points of rank at p50, 0.7 at p95, 0.3 at p99.
 *
 * Prometheus counters are analysed as their increase between samples (a drop is a reset), and
 * histograms as quantiles estimated from their last cumulative buckets.
 *
 * Bounds: MX_MAX_SERIES series (later series are counted, not kept), MX_MAX_HIST histograms,
 * a JSON document of at most MX_DOC_MAX bytes (then "truncated") nested at most MX_JSON_DEPTH.
 * A JSON document is held whole and parsed at finish; everything else streams. */
#include "analysis.h"
#include "mcutil.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MX_MAX_SERIES 1000
#define MX_RES 1024
#define MX_TOPK 8
#define MX_HASH 2048
#define MX_DROP_SET (1u << 18) /* distinct dropped series remembered (2 MiB of hashes) */
#define MX_DOC_MAX ((size_t)64 << 20)
#define MX_JSON_DEPTH 64
#define MX_MAX_COLS 256
#define MX_MAX_HIST 200
#define MX_HIST_BUCKETS 64
#define MX_OUT_SERIES 50
#define MX_OUT_HIST 20
#define MX_OUT_ANOM 10
#define MX_NAME_MAX 200
#define MX_Z 3.0

enum mx_mode { MX_UNKNOWN, MX_CSV, MX_JSONL, MX_JSONDOC, MX_PROM };

struct mx_point {
  double v, ts;
  double dev; /* |v - mean|, set at finish to sort by */
  uint64_t line, seq;
  int has_ts;
};

struct mx_series {
  struct mx_series *next; /* hash chain */
  uint64_t hash;
  char *key;
  size_t keylen;
  char *name;
  json_t *labels;
  uint64_t count, nonfinite;
  double min, max, mean, m2;
  double first_ts, last_ts;
  int has_ts;
  double *res;
  size_t res_len, res_cap;
  struct mx_point hi[MX_TOPK], lo[MX_TOPK];
  size_t nhi, nlo, whi, wlo;
  /* set at finish */
  double sd, maxz;
  size_t idx;
  /* Prometheus counters: the statistics are over the increase between samples */
  const char *type; /* static: "counter", "gauge", ... or NULL */
  double last_raw;
  int is_counter, has_raw;
  uint64_t resets;
  uint64_t anomaly_count;
  int anomaly_estimated;
};

struct mx_hist {
  char *key, *name;
  size_t keylen;
  json_t *labels;
  double le[MX_HIST_BUCKETS], cnt[MX_HIST_BUCKETS];
  size_t n;
  uint64_t line;
};

#define MX_MAX_TYPES 1000
struct mx_type {
  char name[120];
  const char *type;
};

struct mx_col {
  char *name;
  struct mx_series *series; /* wide layout: the column's series once a number was seen */
};

struct fm_an_metrics {
  enum mx_mode mode;
  uint64_t lines, samples, bad_lines, nonfinite, non_numeric, ragged_rows, oom;
  /* series */
  struct mx_series *tab[MX_HASH];
  struct mx_series **list;
  size_t nseries;
  uint64_t series_dropped, samples_dropped;
  uint64_t *dropset;
  size_t ndrop;
  int drop_capped;
  uint64_t rng, seq;
  /* # TYPE lines (Prometheus text): metric family -> type */
  struct mx_type *types;
  size_t ntypes;
  /* histograms (Prometheus text) */
  struct mx_hist *hists[MX_MAX_HIST];
  size_t nhist;
  uint64_t hist_dropped;
  /* CSV */
  char delim;
  int header_done, long_layout, ts_col, metric_col, value_col, ts_decided;
  struct mx_col cols[MX_MAX_COLS];
  size_t ncols;
  uint64_t cols_ignored;
  struct fm_buf scratch;
  /* JSON */
  struct fm_buf doc;
  uint64_t doc_first_line;
  int doc_truncated, doc_long_line;
  struct fm_buf raw; /* fm_an_metrics_block's bytes, while the input may be JSON */
  int raw_seen, raw_over;
  char json_error[160];
};

/* ---- series table ---------------------------------------------------------------------- */

static uint64_t mx_hash(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
  return h;
}

static uint64_t mx_rand(struct fm_an_metrics *s) {
  uint64_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return s->rng = x;
}

/* Remembers the hash of a series that did not fit, so series_dropped counts distinct series. */
static void mx_drop(struct fm_an_metrics *s, uint64_t h) {
  if (!s->dropset) {
    s->dropset = calloc(MX_DROP_SET, sizeof *s->dropset);
    if (!s->dropset) { s->oom = 1; return; }
  }
  if (h == 0) h = 1;
  size_t i = (size_t)(h & (MX_DROP_SET - 1));
  for (;;) {
    if (s->dropset[i] == h) return;
    if (s->dropset[i] == 0) break;
    i = (i + 1) & (MX_DROP_SET - 1);
  }
  /* keep the set at most 3/4 full; past that, every new key is counted (an upper bound) */
  if (s->ndrop < MX_DROP_SET / 4 * 3) {
    s->dropset[i] = h;
    s->ndrop++;
  } else s->drop_capped = 1;
  s->series_dropped++;
}

static struct mx_series *mx_find(struct fm_an_metrics *s, const char *key, size_t keylen) {
  uint64_t h = mx_hash(key, keylen);
  for (struct mx_series *e = s->tab[h & (MX_HASH - 1)]; e; e = e->next)
    if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0) return e;
  return NULL;
}

/* Finds or creates the series for key; labels (owned, may be NULL) are used only on creation.
 * Returns NULL when the table is full (counted) or out of memory. */
static struct mx_series *mx_get(struct fm_an_metrics *s, const char *key, size_t keylen,
                                const char *name, size_t namelen, json_t *labels) {
  uint64_t h = mx_hash(key, keylen);
  for (struct mx_series *e = s->tab[h & (MX_HASH - 1)]; e; e = e->next)
    if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0) {
      json_decref(labels);
      return e;
    }
  if (s->nseries >= MX_MAX_SERIES) {
    json_decref(labels);
    mx_drop(s, h);
    return NULL;
  }
  struct mx_series *e = calloc(1, sizeof *e);
  if (!e) goto oom;
  e->key = malloc(keylen + 1);
  json_t *nm = mc_jstr(name, namelen, MX_NAME_MAX);
  if (!e->key || !nm) {
    json_decref(nm);
    free(e->key);
    free(e);
    goto oom;
  }
  e->name = strdup(json_string_value(nm));
  json_decref(nm);
  if (!e->name) {
    free(e->key);
    free(e);
    goto oom;
  }
  memcpy(e->key, key, keylen);
  e->key[keylen] = '\0';
  e->keylen = keylen;
  e->hash = h;
  e->labels = labels ? labels : json_object();
  e->min = INFINITY;
  e->max = -INFINITY;
  e->next = s->tab[h & (MX_HASH - 1)];
  s->tab[h & (MX_HASH - 1)] = e;
  s->list[s->nseries++] = e;
  return e;
oom:
  json_decref(labels);
  s->oom = 1;
  return NULL;
}

/* Keeps the MX_TOPK highest (or lowest) points; *w caches the index of the weakest kept one,
 * so the common case (not extreme) costs one comparison. */
static void mx_topk(struct mx_point *arr, size_t *n, size_t *w, const struct mx_point *p, int high) {
  if (*n < MX_TOPK) {
    arr[(*n)++] = *p;
    if (*n < MX_TOPK) return;
  } else {
    if (high ? p->v <= arr[*w].v : p->v >= arr[*w].v) return;
    arr[*w] = *p;
  }
  *w = 0;
  for (size_t i = 1; i < MX_TOPK; i++)
    if (high ? arr[i].v < arr[*w].v : arr[i].v > arr[*w].v) *w = i;
}

static void mx_add(struct fm_an_metrics *s, struct mx_series *e, double v, double ts, int has_ts,
                   uint64_t line) {
  if (!e) { /* a series over the cap (or out of memory) */
    s->samples_dropped++;
    return;
  }
  if (!isfinite(v)) {
    e->nonfinite++;
    s->nonfinite++;
    return;
  }
  s->samples++;
  e->count++;
  double d = v - e->mean;
  e->mean += d / (double)e->count;
  e->m2 += d * (v - e->mean);
  if (v < e->min) e->min = v;
  if (v > e->max) e->max = v;
  if (has_ts) {
    if (!e->has_ts) e->first_ts = ts;
    e->last_ts = ts;
    e->has_ts = 1;
  }
  if (e->res_len < MX_RES) {
    if (e->res_len == e->res_cap) {
      size_t nc = e->res_cap ? e->res_cap * 2 : 16;
      double *r = realloc(e->res, nc * sizeof *r);
      if (!r) { s->oom = 1; return; }
      e->res = r;
      e->res_cap = nc;
    }
    e->res[e->res_len++] = v;
  } else {
    uint64_t j = mx_rand(s) % e->count;
    if (j < MX_RES) e->res[j] = v;
  }
  struct mx_point p = {.v = v, .ts = ts, .line = line, .seq = ++s->seq, .has_ts = has_ts};
  mx_topk(e->hi, &e->nhi, &e->whi, &p, 1);
  mx_topk(e->lo, &e->nlo, &e->wlo, &p, 0);
}

/* ---- Prometheus text ------------------------------------------------------------------- */

static int mx_name_start(unsigned char c) { return isalpha(c) || c == '_' || c == ':'; }
static int mx_name_char(unsigned char c) { return isalnum(c) || c == '_' || c == ':'; }

/* Parses `name{labels} value [ts]`. Fills the spans; returns 1 when the line is a sample. */
struct mx_prom {
  const char *name, *labels, *value, *ts;
  size_t namelen, labelslen, valuelen, tslen;
};

static int mx_prom_parse(const char *p, size_t n, struct mx_prom *o) {
  size_t i = 0;
  memset(o, 0, sizeof *o);
  if (n == 0 || !mx_name_start((unsigned char)p[0])) return 0;
  while (i < n && mx_name_char((unsigned char)p[i])) i++;
  o->name = p;
  o->namelen = i;
  if (i < n && p[i] == '{') {
    size_t s = ++i;
    int inq = 0;
    for (; i < n; i++) {
      if (inq) {
        if (p[i] == '\\') i++;
        else if (p[i] == '"') inq = 0;
      } else if (p[i] == '"') inq = 1;
      else if (p[i] == '}') break;
    }
    if (i >= n) return 0;
    o->labels = p + s;
    o->labelslen = i - s;
    i++;
  }
  if (i >= n || (p[i] != ' ' && p[i] != '\t')) return 0;
  /* OpenMetrics exemplar: "value [ts] # {trace_id="..."} 1.0" */
  for (size_t j = i; j + 2 < n; j++)
    if (p[j] == ' ' && p[j + 1] == '#' && p[j + 2] == ' ') {
      n = j;
      break;
    }
  struct mc_tok t[3];
  size_t k = mc_split_ws(p + i, n - i, t, 3, 0);
  if (k < 1 || k > 2) return 0;
  double v;
  if (!mc_parse_num(t[0].p, t[0].n, &v)) return 0;
  o->value = t[0].p;
  o->valuelen = t[0].n;
  if (k == 2) {
    if (mc_parse_num(t[1].p, t[1].n, &v) != 1) return 0;
    o->ts = t[1].p;
    o->tslen = t[1].n;
  }
  return 1;
}

/* Labels text to a JSON object; skip_le drops the "le" label (histogram buckets), and *le gets
 * its value. */
static json_t *mx_prom_labels(const char *p, size_t n, int skip_le, double *le, int *has_le) {
  json_t *o = json_object();
  struct fm_buf val = {0};
  if (has_le) *has_le = 0;
  size_t i = 0;
  while (o && i < n) {
    while (i < n && (p[i] == ' ' || p[i] == ',')) i++;
    size_t ks = i;
    while (i < n && mx_name_char((unsigned char)p[i])) i++;
    size_t ke = i;
    while (i < n && p[i] == ' ') i++;
    if (ke == ks || i >= n || p[i] != '=') break;
    i++;
    while (i < n && p[i] == ' ') i++;
    if (i >= n || p[i] != '"') break;
    i++;
    val.len = 0;
    while (i < n && p[i] != '"') {
      char c = p[i];
      if (c == '\\' && i + 1 < n) {
        c = p[++i];
        if (c == 'n') c = '\n';
      }
      fm_buf_addc(&val, c);
      i++;
    }
    i++;
    int is_le = ke - ks == 2 && memcmp(p + ks, "le", 2) == 0;
    if (is_le && le) {
      double v;
      if (mc_parse_num(val.p ? val.p : "", val.len, &v)) {
        *le = v;
        if (has_le) *has_le = 1;
      }
    }
    if (is_le && skip_le) continue;
    char key[128];
    size_t kl = ke - ks < sizeof key - 1 ? ke - ks : sizeof key - 1;
    memcpy(key, p + ks, kl);
    key[kl] = '\0';
    json_object_set_new(o, key, mc_jstr(val.p ? val.p : "", val.len, MX_NAME_MAX));
  }
  fm_buf_free(&val);
  return o;
}

static struct mx_hist *mx_hist_get(struct fm_an_metrics *s, const char *key, size_t keylen,
                                   const char *name, size_t namelen, json_t *labels) {
  for (size_t i = 0; i < s->nhist; i++)
    if (s->hists[i]->keylen == keylen && memcmp(s->hists[i]->key, key, keylen) == 0) {
      json_decref(labels);
      return s->hists[i];
    }
  if (s->nhist >= MX_MAX_HIST) {
    json_decref(labels);
    s->hist_dropped++;
    return NULL;
  }
  struct mx_hist *h = calloc(1, sizeof *h);
  json_t *nm = mc_jstr(name, namelen, MX_NAME_MAX);
  if (!h || !nm || !(h->key = malloc(keylen + 1)) || !(h->name = strdup(json_string_value(nm)))) {
    if (h) free(h->key);
    free(h);
    json_decref(nm);
    json_decref(labels);
    s->oom = 1;
    return NULL;
  }
  json_decref(nm);
  memcpy(h->key, key, keylen);
  h->key[keylen] = '\0';
  h->keylen = keylen;
  h->labels = labels;
  s->hists[s->nhist++] = h;
  return h;
}

/* "# TYPE name type": remembered (bounded) so counters can be told from gauges. */
static void mx_prom_type(struct fm_an_metrics *s, const char *p, size_t n) {
  static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped",
                                      "gaugehistogram", "stateset", "info", "unknown", NULL};
  struct mc_tok t[4];
  if (mc_split_ws(p, n, t, 4, 0) != 4 || t[2].n >= sizeof s->types[0].name) return;
  const char *type = NULL;
  for (const char *const *k = types; *k && !type; k++)
    if (mc_tok_eq(&t[3], *k)) type = *k;
  if (!type) return;
  if (!s->types && !(s->types = calloc(MX_MAX_TYPES, sizeof *s->types))) {
    s->oom = 1;
    return;
  }
  if (s->ntypes >= MX_MAX_TYPES) return;
  memcpy(s->types[s->ntypes].name, t[2].p, t[2].n);
  s->types[s->ntypes].name[t[2].n] = '\0';
  s->types[s->ntypes++].type = type;
}

static const char *mx_type_of(const struct fm_an_metrics *s, const char *name, size_t n) {
  for (size_t i = 0; i < s->ntypes; i++)
    if (strlen(s->types[i].name) == n && memcmp(s->types[i].name, name, n) == 0)
      return s->types[i].type;
  return NULL;
}

static int mx_ends(const char *p, size_t n, const char *suffix) {
  size_t k = strlen(suffix);
  return n > k && memcmp(p + n - k, suffix, k) == 0;
}

/* Types a new series: a counter is TYPE counter, a name ending in _total (OpenMetrics), or the
 * _count/_sum of a histogram or summary (cumulative as well). */
static void mx_prom_classify(const struct fm_an_metrics *s, struct mx_series *e, const char *name,
                             size_t n) {
  e->type = mx_type_of(s, name, n);
  const char *base = NULL;
  if (!e->type && mx_ends(name, n, "_count")) base = mx_type_of(s, name, n - 6);
  if (!e->type && !base && mx_ends(name, n, "_sum")) base = mx_type_of(s, name, n - 4);
  if (!e->type && !base && mx_ends(name, n, "_total")) e->type = mx_type_of(s, name, n - 6);
  if (base && (strcmp(base, "histogram") == 0 || strcmp(base, "summary") == 0)) {
    e->type = "counter";
  }
  e->is_counter = (e->type && strcmp(e->type, "counter") == 0) ||
                  (!e->type && mx_ends(name, n, "_total"));
  if (e->is_counter) e->type = "counter";
}

/* A counter sample: the first one is the baseline; later ones add their increase (a drop is a
 * counter reset, whose increase is the new value, as Prometheus' rate() assumes). */
static void mx_add_counter(struct fm_an_metrics *s, struct mx_series *e, double v, double ts,
                           int has_ts, uint64_t line) {
  if (!isfinite(v)) {
    mx_add(s, e, v, ts, has_ts, line);
    return;
  }
  if (!e->has_raw) {
    e->has_raw = 1;
    e->last_raw = v;
    if (has_ts && !e->has_ts) {
      e->first_ts = e->last_ts = ts;
      e->has_ts = 1;
    }
    s->samples++;
    return;
  }
  double d = v - e->last_raw;
  if (d < 0) {
    e->resets++;
    d = v;
  }
  e->last_raw = v;
  mx_add(s, e, d, ts, has_ts, line);
}

static void mx_prom_line(struct fm_an_metrics *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  mc_trim(&p, &n);
  if (n == 0) return;
  if (p[0] == '#') {
    if (mc_starts(p, n, "# TYPE ")) mx_prom_type(s, p, n);
    return;
  }
  struct mx_prom o;
  if (!mx_prom_parse(p, n, &o)) {
    s->bad_lines++;
    return;
  }
  double v = 0, ts = 0;
  int vk = mc_parse_num(o.value, o.valuelen, &v);
  int has_ts = o.ts && mc_parse_ts(o.ts, o.tslen, &ts);
  if (o.namelen > 7 && memcmp(o.name + o.namelen - 7, "_bucket", 7) == 0 && o.labels) {
    double le = 0;
    int has_le = 0;
    json_t *labels = mx_prom_labels(o.labels, o.labelslen, 1, &le, &has_le);
    if (labels && has_le) {
      /* the histogram key: base name plus the labels without le, in a canonical order */
      char *lk = json_dumps(labels, JSON_COMPACT | JSON_SORT_KEYS);
      struct fm_buf key = {0};
      fm_buf_add(&key, o.name, o.namelen - 7);
      fm_buf_adds(&key, lk ? lk : "");
      free(lk);
      struct mx_hist *h =
          key.p ? mx_hist_get(s, key.p, key.len, o.name, o.namelen - 7, labels) : NULL;
      if (!key.p) json_decref(labels);
      fm_buf_free(&key);
      if (h && vk == 1) {
        size_t i = 0;
        while (i < h->n && h->le[i] != le) i++;
        if (i == h->n && h->n < MX_HIST_BUCKETS) h->le[h->n++] = le;
        if (i < h->n) h->cnt[i] = v; /* cumulative: the last scrape wins */
        h->line = l->no;
      }
      s->samples++;
      return;
    }
    json_decref(labels);
  }
  /* name{labels} is contiguous in the line: that text is the key */
  size_t keylen = o.namelen + (o.labels ? o.labelslen + 2 : 0);
  struct mx_series *e = mx_find(s, o.name, keylen);
  if (!e && s->nseries >= MX_MAX_SERIES) { /* full: count it without building its labels */
    mx_drop(s, mx_hash(o.name, keylen));
    s->samples_dropped++;
    return;
  }
  if (!e) {
    json_t *labels = o.labels ? mx_prom_labels(o.labels, o.labelslen, 0, NULL, NULL) : NULL;
    e = mx_get(s, o.name, keylen, o.name, o.namelen, labels);
    if (e) mx_prom_classify(s, e, o.name, o.namelen);
  }
  if (e && e->is_counter) mx_add_counter(s, e, v, ts, has_ts, l->no);
  else mx_add(s, e, v, ts, has_ts, l->no);
}

/* ---- CSV / TSV ------------------------------------------------------------------------- */

/* Splits a CSV line into fields (quotes with "" escapes; no fields spanning lines). The field
 * bytes live in s->scratch. Returns the number of fields (all of them, even past max). */
static size_t mx_csv_split(struct fm_an_metrics *s, const char *p, size_t n, struct mc_tok *f,
                           size_t max) {
  s->scratch.len = 0;
  if (fm_buf_reserve(&s->scratch, n + 1)) { s->oom = 1; return 0; }
  char *out = s->scratch.p;
  size_t o = 0, k = 0, i = 0;
  for (;;) {
    size_t start = o;
    while (i < n && (p[i] == ' ') && s->delim != ' ') i++;
    if (i < n && p[i] == '"') {
      i++;
      while (i < n) {
        if (p[i] == '"') {
          if (i + 1 < n && p[i + 1] == '"') { out[o++] = '"'; i += 2; continue; }
          i++;
          break;
        }
        out[o++] = p[i++];
      }
      while (i < n && p[i] != s->delim) i++; /* junk after the closing quote is dropped */
    } else {
      while (i < n && p[i] != s->delim) out[o++] = p[i++];
    }
    if (k < max) {
      f[k].p = out + start;
      f[k].n = o - start;
    }
    k++;
    if (i >= n) break;
    i++; /* the delimiter */
  }
  return k;
}

static int mx_is_ts_name(const struct mc_tok *t) {
  static const char *names[] = {"timestamp", "time", "ts", "date", "datetime", "@timestamp",
                                "_time", "t", "epoch", "time_stamp"};
  const char *p = t->p;
  size_t n = t->n;
  mc_trim(&p, &n);
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == n && strncasecmp(p, names[i], n) == 0) return 1;
  return 0;
}

static int mx_col_is(const char *name, const char *const *names) {
  for (; *names; names++)
    if (strcasecmp(name, *names) == 0) return 1;
  return 0;
}

static char mx_pick_delim(const char *p, size_t n) {
  size_t c = 0, t = 0, sc = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == ',') c++;
    else if (p[i] == '\t') t++;
    else if (p[i] == ';') sc++;
  }
  if (t >= c && t >= sc && t > 0) return '\t';
  if (sc > c) return ';';
  return c ? ',' : 0;
}

static void mx_csv_header(struct fm_an_metrics *s, const struct fm_an_line *l) {
  static const char *const metric_names[] = {"metric", "name", "series", "__name__",
                                             "metric_name", NULL};
  static const char *const value_names[] = {"value", "val", "v", NULL};
  struct mc_tok f[MX_MAX_COLS];
  s->delim = mx_pick_delim(l->p, l->len);
  if (!s->delim) s->delim = ',';
  size_t k = mx_csv_split(s, l->p, l->len, f, MX_MAX_COLS);
  if (k > MX_MAX_COLS) {
    s->cols_ignored = k - MX_MAX_COLS;
    k = MX_MAX_COLS;
  }
  s->ts_col = s->metric_col = s->value_col = -1;
  for (size_t i = 0; i < k; i++) {
    const char *p = f[i].p;
    size_t n = f[i].n;
    mc_trim(&p, &n);
    json_t *j = mc_jstr(p, n, MX_NAME_MAX);
    s->cols[i].name = strdup(j ? json_string_value(j) : "?");
    json_decref(j);
    if (!s->cols[i].name) { s->oom = 1; break; }
    s->ncols = i + 1;
    if (s->ts_col < 0 && mx_is_ts_name(&f[i])) s->ts_col = (int)i;
    if (s->metric_col < 0 && mx_col_is(s->cols[i].name, metric_names)) s->metric_col = (int)i;
    if (s->value_col < 0 && mx_col_is(s->cols[i].name, value_names)) s->value_col = (int)i;
  }
  s->long_layout = s->metric_col >= 0 && s->value_col >= 0;
  s->ts_decided = s->ts_col >= 0;
  s->header_done = 1;
}

static void mx_csv_line(struct fm_an_metrics *s, const struct fm_an_line *l) {
  if (l->len == 0) return;
  if (!s->header_done) {
    mx_csv_header(s, l);
    return;
  }
  struct mc_tok f[MX_MAX_COLS];
  size_t k = mx_csv_split(s, l->p, l->len, f, MX_MAX_COLS);
  if (k != s->ncols + s->cols_ignored) s->ragged_rows++;
  if (k > s->ncols) k = s->ncols;
  double ts = 0;
  if (!s->ts_decided) {
    /* no timestamp header name: the first column is the time if its first value parses as one */
    s->ts_decided = 1;
    if (k > 0 && mc_parse_ts(f[0].p, f[0].n, &ts)) s->ts_col = 0;
  }
  int has_ts = s->ts_col >= 0 && (size_t)s->ts_col < k && mc_parse_ts(f[s->ts_col].p, f[s->ts_col].n, &ts);
  if (s->long_layout) {
    if ((size_t)s->metric_col >= k || (size_t)s->value_col >= k) {
      s->bad_lines++;
      return;
    }
    double v;
    int vk = mc_parse_num(f[s->value_col].p, f[s->value_col].n, &v);
    if (!vk) {
      s->non_numeric++;
      return;
    }
    /* key: metric, then every other non-time column as a label */
    struct fm_buf key = {0};
    const char *mp = f[s->metric_col].p;
    size_t mn = f[s->metric_col].n;
    mc_trim(&mp, &mn);
    fm_buf_add(&key, mp, mn);
    for (size_t i = 0; i < k; i++) {
      if ((int)i == s->ts_col || (int)i == s->metric_col || (int)i == s->value_col) continue;
      fm_buf_addc(&key, '\x1f');
      fm_buf_add(&key, f[i].p, f[i].n);
    }
    if (!key.p) { s->oom = 1; return; }
    json_t *labels = NULL;
    if (!mx_find(s, key.p, key.len) && s->nseries >= MX_MAX_SERIES) {
      mx_drop(s, mx_hash(key.p, key.len));
      s->samples_dropped++;
      fm_buf_free(&key);
      return;
    }
    if (!mx_find(s, key.p, key.len)) {
      labels = json_object();
      for (size_t i = 0; labels && i < k; i++) {
        if ((int)i == s->ts_col || (int)i == s->metric_col || (int)i == s->value_col) continue;
        const char *lp = f[i].p;
        size_t ln = f[i].n;
        mc_trim(&lp, &ln);
        json_object_set_new(labels, s->cols[i].name, mc_jstr(lp, ln, MX_NAME_MAX));
      }
    }
    struct mx_series *e = mx_get(s, key.p, key.len, mp, mn, labels);
    fm_buf_free(&key);
    mx_add(s, e, v, ts, has_ts, l->no);
    return;
  }
  for (size_t i = 0; i < k; i++) {
    if ((int)i == s->ts_col) continue;
    double v;
    int vk = mc_parse_num(f[i].p, f[i].n, &v);
    if (!vk) {
      const char *p = f[i].p;
      size_t n = f[i].n;
      mc_trim(&p, &n);
      if (n) s->non_numeric++;
      continue;
    }
    if (!s->cols[i].series)
      s->cols[i].series = mx_get(s, s->cols[i].name, strlen(s->cols[i].name), s->cols[i].name,
                                 strlen(s->cols[i].name), NULL);
    mx_add(s, s->cols[i].series, v, ts, has_ts, l->no);
  }
}

/* ---- JSON ------------------------------------------------------------------------------ */

/* Deepest nesting of [ and { outside strings, stopping early past limit. */
static int mx_json_depth(const char *p, size_t n, int limit) {
  int d = 0, max = 0, inq = 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (inq) {
      if (c == '\\') i++;
      else if (c == '"') inq = 0;
    } else if (c == '"') inq = 1;
    else if (c == '[' || c == '{') {
      if (++d > max) max = d;
      if (max > limit) return max;
    } else if (c == ']' || c == '}') d--;
  }
  return max;
}

static int mx_json_num(const json_t *j, double *out) {
  if (json_is_number(j)) {
    *out = json_number_value(j);
    return 1;
  }
  if (json_is_string(j))
    return mc_parse_num(json_string_value(j), json_string_length(j), out) != 0;
  return 0;
}

static int mx_json_ts(const json_t *j, double *out) {
  if (json_is_number(j)) {
    double v = json_number_value(j);
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.17g", v);
    return mc_parse_ts(tmp, strlen(tmp), out);
  }
  if (json_is_string(j)) return mc_parse_ts(json_string_value(j), json_string_length(j), out);
  return 0;
}

/* A series from a metric name and a labels object (borrowed). */
static struct mx_series *mx_json_series(struct fm_an_metrics *s, const char *name,
                                        const json_t *labels) {
  char *lk = labels ? json_dumps(labels, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  struct fm_buf key = {0};
  fm_buf_adds(&key, name);
  fm_buf_addc(&key, '\x1f');
  fm_buf_adds(&key, lk ? lk : "");
  free(lk);
  if (!key.p) { s->oom = 1; return NULL; }
  json_t *lab = json_object();
  const char *k;
  json_t *v;
  if (labels && lab)
    json_object_foreach((json_t *)labels, k, v) {
      if (strcmp(k, "__name__") == 0) continue;
      if (json_is_string(v))
        json_object_set_new(lab, k, mc_jstr(json_string_value(v), json_string_length(v), MX_NAME_MAX));
      else json_object_set(lab, k, v);
    }
  struct mx_series *e = mx_get(s, key.p, key.len, name, strlen(name), lab);
  fm_buf_free(&key);
  return e;
}

static void mx_json_pair(struct fm_an_metrics *s, struct mx_series *e, const json_t *pair,
                         uint64_t line) {
  double ts = 0, v;
  if (!json_is_array(pair) || json_array_size(pair) < 2) {
    s->bad_lines++;
    return;
  }
  int has_ts = mx_json_ts(json_array_get(pair, 0), &ts);
  if (!mx_json_num(json_array_get(pair, 1), &v)) {
    s->non_numeric++;
    return;
  }
  if (e) mx_add(s, e, v, ts, has_ts, line);
  else s->samples_dropped++;
}

/* One Prometheus result: {"metric":{...}, "values":[[ts,"v"],...]} or "value":[ts,"v"]. */
static void mx_json_result(struct fm_an_metrics *s, const json_t *r, uint64_t line) {
  const json_t *metric = json_object_get(r, "metric");
  const json_t *nm = json_object_get(metric, "__name__");
  const char *name = json_is_string(nm) ? json_string_value(nm) : "{}";
  struct mx_series *e = mx_json_series(s, name, json_is_object(metric) ? metric : NULL);
  const json_t *values = json_object_get(r, "values");
  size_t i;
  const json_t *pair;
  if (json_is_array(values))
    json_array_foreach(values, i, pair) mx_json_pair(s, e, pair, line);
  const json_t *value = json_object_get(r, "value");
  if (json_is_array(value)) mx_json_pair(s, e, value, line);
}

/* One point: {timestamp|ts|time, metric|name|__name__, value, labels|tags}. */
static int mx_json_point(struct fm_an_metrics *s, const json_t *o, uint64_t line) {
  static const char *const name_keys[] = {"metric", "name", "__name__", "series", NULL};
  static const char *const ts_keys[] = {"timestamp", "ts", "time", "@timestamp", "t", NULL};
  const json_t *val = json_object_get(o, "value");
  if (!val) return 0;
  const char *name = NULL;
  const json_t *labels = NULL;
  for (const char *const *k = name_keys; *k && !name; k++) {
    const json_t *j = json_object_get(o, *k);
    if (json_is_string(j)) name = json_string_value(j);
    else if (json_is_object(j) && !labels) {
      labels = j;
      const json_t *n2 = json_object_get(j, "__name__");
      if (json_is_string(n2)) name = json_string_value(n2);
    }
  }
  if (!name) name = "value";
  if (!labels) labels = json_object_get(o, "labels");
  if (!labels) labels = json_object_get(o, "tags");
  if (!json_is_object(labels)) labels = NULL;
  double ts = 0, v;
  int has_ts = 0;
  for (const char *const *k = ts_keys; *k && !has_ts; k++)
    has_ts = mx_json_ts(json_object_get(o, *k), &ts);
  if (!mx_json_num(val, &v)) {
    s->non_numeric++;
    return 1;
  }
  mx_add(s, mx_json_series(s, name, labels), v, ts, has_ts, line);
  return 1;
}

static void mx_json_value(struct fm_an_metrics *s, const json_t *j, uint64_t line, int depth) {
  if (json_is_object(j)) {
    const json_t *data = json_object_get(j, "data");
    if (json_is_object(data)) {
      const json_t *result = json_object_get(data, "result");
      const json_t *rt = json_object_get(data, "resultType");
      const char *rts = json_is_string(rt) ? json_string_value(rt) : "";
      if ((strcmp(rts, "scalar") == 0 || strcmp(rts, "string") == 0) && json_is_array(result)) {
        struct mx_series *e = mx_json_series(s, rts, NULL);
        mx_json_pair(s, e, result, line);
        return;
      }
      size_t i;
      const json_t *r;
      if (json_is_array(result)) {
        json_array_foreach(result, i, r) mx_json_result(s, r, line);
        return;
      }
    }
    if (json_object_get(j, "values") && json_object_get(j, "metric")) {
      mx_json_result(s, j, line);
      return;
    }
    if (!mx_json_point(s, j, line)) s->bad_lines++;
    return;
  }
  if (json_is_array(j) && depth == 0) {
    size_t i;
    const json_t *e;
    json_array_foreach(j, i, e) mx_json_value(s, e, line, depth + 1);
    return;
  }
  s->bad_lines++;
}

static void mx_json_parse(struct fm_an_metrics *s, const char *p, size_t n, uint64_t line) {
  if (mx_json_depth(p, n, MX_JSON_DEPTH) > MX_JSON_DEPTH) {
    s->bad_lines++;
    snprintf(s->json_error, sizeof s->json_error, "nested deeper than %d", MX_JSON_DEPTH);
    return;
  }
  json_error_t err;
  json_t *j = json_loadb(p, n, JSON_DECODE_INT_AS_REAL, &err);
  if (!j) {
    s->bad_lines++;
    snprintf(s->json_error, sizeof s->json_error, "line %d: %.120s",
             err.line + (line && line < 1000000000 ? (int)line - 1 : 0), err.text);
    return;
  }
  mx_json_value(s, j, line, 0);
  json_decref(j);
}

/* ---- line dispatch --------------------------------------------------------------------- */

static int mx_blank(const struct fm_an_line *l) {
  for (size_t i = 0; i < l->len; i++)
    if (l->p[i] != ' ' && l->p[i] != '\t') return 0;
  return 1;
}

static const char *mx_skip_ws(const char *p, size_t n, size_t *rest) {
  size_t i = n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0; /* a byte-order mark */
  while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
  *rest = n - i;
  return p + i;
}

struct fm_an_metrics *fm_an_metrics_new(void) {
  struct fm_an_metrics *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->list = calloc(MX_MAX_SERIES, sizeof *s->list);
  if (!s->list) {
    free(s);
    return NULL;
  }
  s->rng = 0x9E3779B97F4A7C15ULL;
  return s;
}

void fm_an_metrics_line(struct fm_an_metrics *s, const struct fm_an_line *l) {
  if (!s || !l) return;
  s->lines++;
  struct fm_an_line nobom;
  if (s->lines == 1 && l->len >= 3 && memcmp(l->p, "\xEF\xBB\xBF", 3) == 0) {
    /* spreadsheet exports start with a byte-order mark */
    nobom = *l;
    nobom.p += 3;
    nobom.len -= 3;
    l = &nobom;
  }
  if (s->mode == MX_UNKNOWN) {
    if (mx_blank(l)) return;
    size_t n;
    const char *p = mx_skip_ws(l->p, l->len, &n);
    struct mx_prom o;
    if (p[0] == '{' || p[0] == '[') {
      json_error_t err;
      json_t *j = mx_json_depth(p, n, MX_JSON_DEPTH) <= MX_JSON_DEPTH
                      ? json_loadb(p, n, JSON_DECODE_INT_AS_REAL, &err)
                      : NULL;
      s->mode = j ? MX_JSONL : MX_JSONDOC;
      json_decref(j);
      s->doc_first_line = l->no;
    } else if (p[0] == '#' || mx_prom_parse(p, n, &o)) s->mode = MX_PROM;
    else s->mode = MX_CSV;
  }
  switch (s->mode) {
  case MX_PROM: mx_prom_line(s, l); break;
  case MX_CSV: mx_csv_line(s, l); break;
  case MX_JSONL:
    if (!mx_blank(l)) mx_json_parse(s, l->p, l->len, l->no);
    break;
  case MX_JSONDOC:
    if (s->raw_seen || s->doc_truncated) break; /* the raw bytes are the document */
    if (l->truncated) s->doc_long_line = 1;
    if (s->doc.len + l->len + 1 > MX_DOC_MAX || l->truncated) {
      s->doc_truncated = 1;
      fm_buf_free(&s->doc);
      break;
    }
    if (fm_buf_add(&s->doc, l->p, l->len) || fm_buf_addc(&s->doc, '\n')) s->oom = 1;
    break;
  case MX_UNKNOWN: break;
  }
}

void fm_an_metrics_block(struct fm_an_metrics *s, const char *p, size_t n) {
  if (!s || (!p && n)) return;
  s->raw_seen = 1;
  if (s->raw_over || s->mode == MX_CSV || s->mode == MX_PROM || s->mode == MX_JSONL) {
    fm_buf_free(&s->raw);
    return;
  }
  if (s->raw.len == 0 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
    p += 3;
    n -= 3;
  }
  if (s->raw.len + n > MX_DOC_MAX) {
    s->raw_over = 1;
    fm_buf_free(&s->raw);
    return;
  }
  if (fm_buf_add(&s->raw, p, n)) s->oom = 1;
}

/* ---- finish ---------------------------------------------------------------------------- */

static int mx_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double mx_quantile(const double *sorted, size_t n, double q) {
  if (n == 0) return NAN;
  double r = q * (double)(n - 1);
  size_t lo = (size_t)r;
  if (lo + 1 >= n) return sorted[n - 1];
  return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * (r - (double)lo);
}

static json_t *mx_ts_json(int has, double ts) {
  if (!has) return json_null();
  char buf[40];
  fm_time_iso8601(ts, buf, sizeof buf);
  return json_string(buf);
}

static int mx_cmp_series(const void *a, const void *b) {
  const struct mx_series *x = *(struct mx_series *const *)a, *y = *(struct mx_series *const *)b;
  int ax = x->anomaly_count > 0, ay = y->anomaly_count > 0;
  if (ax != ay) return ay - ax;
  if (ax && x->maxz != y->maxz) return x->maxz < y->maxz ? 1 : -1;
  if (x->count != y->count) return x->count < y->count ? 1 : -1;
  return strcmp(x->key, y->key);
}

static int mx_cmp_point_dev(const void *a, const void *b) {
  double x = ((const struct mx_point *)a)->dev, y = ((const struct mx_point *)b)->dev;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Computes sd, the anomalies and the estimated anomaly count; returns the anomalies array. */
static json_t *mx_anomalies(struct mx_series *e) {
  json_t *arr = json_array();
  e->sd = e->count ? sqrt(e->m2 / (double)e->count) : 0;
  e->maxz = 0;
  e->anomaly_count = 0;
  if (!arr || e->count < 2 || !(e->sd > 0)) return arr;
  struct mx_point cand[2 * MX_TOPK];
  size_t nc = 0;
  for (size_t i = 0; i < e->nhi; i++) cand[nc++] = e->hi[i];
  for (size_t i = 0; i < e->nlo; i++) {
    int dup = 0;
    for (size_t j = 0; j < e->nhi; j++) dup |= e->hi[j].seq == e->lo[i].seq;
    if (!dup) cand[nc++] = e->lo[i];
  }
  for (size_t i = 0; i < nc; i++) cand[i].dev = fabs(cand[i].v - e->mean);
  qsort(cand, nc, sizeof cand[0], mx_cmp_point_dev);
  uint64_t kept = 0;
  for (size_t i = 0; i < nc; i++) {
    double z = (cand[i].v - e->mean) / e->sd;
    if (fabs(z) < MX_Z) break;
    kept++;
    if (fabs(z) > e->maxz) e->maxz = fabs(z);
    if (json_array_size(arr) >= MX_OUT_ANOM) continue;
    json_t *a = json_object();
    if (!a) break;
    json_object_set_new(a, "ts", mx_ts_json(cand[i].has_ts, cand[i].ts));
    json_object_set_new(a, "value", json_real(cand[i].v));
    json_object_set_new(a, "z", json_real(round(z * 100) / 100));
    json_object_set_new(a, "line", cand[i].line ? json_integer((json_int_t)cand[i].line) : json_null());
    json_array_append_new(arr, a);
  }
  /* If some kept point on a side is not anomalous, every anomaly of that side was kept (the
   * kept points are the most extreme ones), so the count is exact. Otherwise more may exist:
   * scale the reservoir's share, never below what was seen, and say it is an estimate. */
  size_t hi_anom = 0, lo_anom = 0;
  for (size_t i = 0; i < e->nhi; i++) hi_anom += (e->hi[i].v - e->mean) / e->sd >= MX_Z;
  for (size_t i = 0; i < e->nlo; i++) lo_anom += (e->lo[i].v - e->mean) / e->sd <= -MX_Z;
  if (hi_anom < MX_TOPK && lo_anom < MX_TOPK) e->anomaly_count = kept;
  else {
    size_t hits = 0;
    for (size_t i = 0; i < e->res_len; i++)
      if (fabs((e->res[i] - e->mean) / e->sd) >= MX_Z) hits++;
    uint64_t est = (uint64_t)llround((double)hits / (double)e->res_len * (double)e->count);
    e->anomaly_count = est > kept ? est : kept;
    e->anomaly_estimated = 1;
  }
  return arr;
}

static json_t *mx_series_json(struct mx_series *e, json_t *anoms) {
  json_t *o = json_object();
  if (!o) {
    json_decref(anoms);
    return NULL;
  }
  if (e->res_len) qsort(e->res, e->res_len, sizeof *e->res, mx_cmp_double);
  json_object_set_new(o, "name", json_string(e->name));
  json_object_set(o, "labels", e->labels);
  if (e->type) json_object_set_new(o, "type", json_string(e->type));
  if (e->is_counter) {
    /* the statistics below are over the increase between consecutive samples */
    json_object_set_new(o, "value_kind", json_string("increase"));
    if (e->has_raw) mc_set_num(o, "last_value", e->last_raw);
    if (e->resets) json_object_set_new(o, "resets", json_integer((json_int_t)e->resets));
  }
  json_object_set_new(o, "count", json_integer((json_int_t)e->count));
  if (e->nonfinite) json_object_set_new(o, "non_finite", json_integer((json_int_t)e->nonfinite));
  if (e->count) {
    mc_set_num(o, "min", e->min);
    mc_set_num(o, "max", e->max);
    mc_set_num(o, "mean", e->mean);
    mc_set_num(o, "stddev", e->sd);
    mc_set_num(o, "p50", mx_quantile(e->res, e->res_len, 0.50));
    mc_set_num(o, "p95", mx_quantile(e->res, e->res_len, 0.95));
    mc_set_num(o, "p99", mx_quantile(e->res, e->res_len, 0.99));
    json_object_set_new(o, "percentiles_exact", json_boolean(e->count <= e->res_len));
  }
  json_object_set_new(o, "first_ts", mx_ts_json(e->has_ts, e->first_ts));
  json_object_set_new(o, "last_ts", mx_ts_json(e->has_ts, e->last_ts));
  json_object_set_new(o, "anomaly_count", json_integer((json_int_t)e->anomaly_count));
  if (e->anomaly_estimated) json_object_set_new(o, "anomaly_count_estimated", json_true());
  json_object_set_new(o, "anomalies", anoms);
  return o;
}

static int mx_cmp_bucket(const void *a, const void *b) {
  const double *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* histogram_quantile as Prometheus does it: linear within the bucket holding the rank; a rank
 * in the +Inf bucket reports the highest finite bound. */
static double mx_hist_q(const double (*b)[2], size_t n, double q) {
  if (n == 0) return NAN;
  double total = b[n - 1][1];
  if (!(total > 0)) return NAN;
  double rank = q * total, prev_le = 0, prev_c = 0;
  for (size_t i = 0; i < n; i++) {
    if (b[i][1] >= rank) {
      if (isinf(b[i][0])) return prev_le;
      if (b[i][1] == prev_c) return b[i][0];
      return prev_le + (b[i][0] - prev_le) * (rank - prev_c) / (b[i][1] - prev_c);
    }
    prev_le = b[i][0];
    prev_c = b[i][1];
  }
  return prev_le;
}

static json_t *mx_hist_json(const struct mx_hist *h) {
  double b[MX_HIST_BUCKETS][2];
  for (size_t i = 0; i < h->n; i++) {
    b[i][0] = h->le[i];
    b[i][1] = h->cnt[i];
  }
  qsort(b, h->n, sizeof b[0], mx_cmp_bucket);
  json_t *o = json_object();
  if (!o) return NULL;
  json_object_set_new(o, "name", json_string(h->name));
  json_object_set(o, "labels", h->labels);
  json_object_set_new(o, "count", json_real(h->n ? b[h->n - 1][1] : 0));
  json_object_set_new(o, "buckets", json_integer((json_int_t)h->n));
  mc_set_num(o, "p50", mx_hist_q((const double(*)[2])b, h->n, 0.50));
  mc_set_num(o, "p95", mx_hist_q((const double(*)[2])b, h->n, 0.95));
  mc_set_num(o, "p99", mx_hist_q((const double(*)[2])b, h->n, 0.99));
  json_object_set_new(o, "line", json_integer((json_int_t)h->line));
  return o;
}

int fm_an_metrics_finish(struct fm_an_metrics *s, json_t *out) {
  if (!s || !out) return -1;
  if (s->mode == MX_JSONDOC) {
    if (s->raw_seen) {
      if (s->raw_over) s->doc_truncated = 1;
      else if (s->raw.len) mx_json_parse(s, s->raw.p, s->raw.len, 0);
    } else if (s->doc.len && !s->doc_truncated) mx_json_parse(s, s->doc.p, s->doc.len, 0);
    else if (s->doc_long_line)
      snprintf(s->json_error, sizeof s->json_error,
               "a line longer than %d bytes: the document was cut (no raw bytes given)",
               FM_AN_MAX_LINE);
  }
  static const char *const fmt[] = {"unknown", "csv", "json", "json", "prometheus"};
  json_t *m = json_object();
  json_t *series = json_array();
  json_t *hists = json_array();
  if (!m || !series || !hists) goto oom;
  json_object_set_new(m, "format", json_string(fmt[s->mode]));
  if (s->mode == MX_CSV)
    json_object_set_new(m, "layout", json_string(s->long_layout ? "long" : "wide"));
  if (s->mode == MX_JSONL || s->mode == MX_JSONDOC)
    json_object_set_new(m, "layout", json_string(s->mode == MX_JSONL ? "lines" : "document"));
  uint64_t total = 0;
  json_t **anoms = calloc(s->nseries ? s->nseries : 1, sizeof *anoms);
  if (!anoms) goto oom;
  for (size_t i = 0; i < s->nseries; i++) {
    anoms[i] = mx_anomalies(s->list[i]);
    total += s->list[i]->anomaly_count;
  }
  /* the anomaly arrays are indexed by the position before sorting */
  for (size_t i = 0; i < s->nseries; i++) s->list[i]->idx = i;
  qsort(s->list, s->nseries, sizeof *s->list, mx_cmp_series);
  for (size_t i = 0; i < s->nseries; i++) {
    json_t *a = anoms[s->list[i]->idx];
    if (i < MX_OUT_SERIES) json_array_append_new(series, mx_series_json(s->list[i], a));
    else json_decref(a);
  }
  free(anoms);
  json_object_set_new(m, "series_count", json_integer((json_int_t)s->nseries));
  json_object_set_new(m, "series_dropped", json_integer((json_int_t)s->series_dropped));
  if (s->drop_capped) json_object_set_new(m, "series_dropped_is_upper_bound", json_true());
  if (s->nseries > MX_OUT_SERIES)
    json_object_set_new(m, "series_omitted", json_integer((json_int_t)(s->nseries - MX_OUT_SERIES)));
  json_object_set_new(m, "samples", json_integer((json_int_t)s->samples));
  json_object_set_new(m, "samples_dropped", json_integer((json_int_t)s->samples_dropped));
  json_object_set_new(m, "anomalies_total", json_integer((json_int_t)total));
  json_object_set_new(m, "series", series);
  series = NULL;
  if (s->nhist) {
    for (size_t i = 0; i < s->nhist && i < MX_OUT_HIST; i++)
      json_array_append_new(hists, mx_hist_json(s->hists[i]));
    json_object_set_new(m, "histograms", hists);
    hists = NULL;
    if (s->hist_dropped)
      json_object_set_new(m, "histograms_dropped", json_integer((json_int_t)s->hist_dropped));
  }
  json_object_set_new(m, "bad_lines", json_integer((json_int_t)s->bad_lines));
  if (s->non_numeric) json_object_set_new(m, "non_numeric", json_integer((json_int_t)s->non_numeric));
  if (s->nonfinite) json_object_set_new(m, "non_finite", json_integer((json_int_t)s->nonfinite));
  if (s->ragged_rows) json_object_set_new(m, "ragged_rows", json_integer((json_int_t)s->ragged_rows));
  if (s->cols_ignored) json_object_set_new(m, "columns_ignored", json_integer((json_int_t)s->cols_ignored));
  if (s->doc_truncated) json_object_set_new(m, "truncated", json_true());
  if (s->json_error[0]) json_object_set_new(m, "json_error", json_string(s->json_error));
  if (s->oom) json_object_set_new(m, "out_of_memory", json_true());
  json_decref(hists);
  if (json_object_set_new(out, "metrics", m)) return -1;
  return s->oom ? -1 : 0;
oom:
  json_decref(m);
  json_decref(series);
  json_decref(hists);
  return -1;
}

void fm_an_metrics_free(struct fm_an_metrics *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nseries; i++) {
    struct mx_series *e = s->list[i];
    free(e->key);
    free(e->name);
    json_decref(e->labels);
    free(e->res);
    free(e);
  }
  free(s->list);
  free(s->dropset);
  free(s->types);
  for (size_t i = 0; i < s->nhist; i++) {
    free(s->hists[i]->key);
    free(s->hists[i]->name);
    json_decref(s->hists[i]->labels);
    free(s->hists[i]);
  }
  for (size_t i = 0; i < s->ncols; i++) free(s->cols[i].name);
  fm_buf_free(&s->scratch);
  fm_buf_free(&s->doc);
  fm_buf_free(&s->raw);
  free(s);
}

/* ---- detect ---------------------------------------------------------------------------- */

double fm_an_metrics_detect(const struct fm_an_line *lines, size_t n, const char **format) {
  if (format) *format = NULL;
  size_t first = 0;
  while (first < n && mx_blank(&lines[first])) first++;
  if (first >= n) return 0;
  size_t fl;
  const char *fp = mx_skip_ws(lines[first].p, lines[first].len, &fl);
  if (fp[0] == '{' || fp[0] == '[') {
    /* JSON: look for the keys of the shapes we read in the sniffed text */
    int prom = 0, point = 0, value = 0;
    size_t parsed = 0, total = 0;
    for (size_t i = first; i < n; i++) {
      const char *p = lines[i].p;
      size_t len = lines[i].len;
      if (mc_find(p, len, "\"resultType\"")) prom = 1;
      if (mc_find(p, len, "\"value\"") || mc_find(p, len, "\"values\"")) value = 1;
      if (mc_find(p, len, "\"metric\"") || mc_find(p, len, "\"name\"") ||
          mc_find(p, len, "\"__name__\""))
        point = 1;
      if (!mx_blank(&lines[i])) {
        total++;
        json_t *j = mx_json_depth(p, len, MX_JSON_DEPTH) <= MX_JSON_DEPTH
                        ? json_loadb(p, len, JSON_DECODE_INT_AS_REAL, NULL)
                        : NULL;
        if (j && (json_object_get(j, "value") || json_object_get(j, "data"))) parsed++;
        json_decref(j);
      }
    }
    double c = 0;
    if (prom && value) c = 0.95;
    else if (total && parsed * 10 >= total * 8) c = 0.9;
    else if (value && point) c = 0.7;
    if (c > 0 && format) *format = "json";
    return c;
  }
  size_t samples = 0, meta = 0, total = 0;
  for (size_t i = first; i < n; i++) {
    size_t len;
    const char *p = mx_skip_ws(lines[i].p, lines[i].len, &len);
    if (len == 0) continue;
    total++;
    struct mx_prom o;
    if (mc_starts(p, len, "# HELP ") || mc_starts(p, len, "# TYPE ") || mc_starts(p, len, "# EOF"))
      meta++;
    else if (mx_prom_parse(p, len, &o)) samples++;
  }
  if (samples > 0 && (samples + meta) * 10 >= total * 9) {
    if (format) *format = "prometheus";
    return meta ? 0.95 : 0.8 * (double)samples / (double)total;
  }
  /* CSV: a header of at least two fields, rows with the same field count and numbers */
  char d = mx_pick_delim(fp, fl);
  if (!d) return 0;
  struct fm_an_metrics tmp = {0};
  tmp.delim = d;
  struct mc_tok f[MX_MAX_COLS];
  size_t hk = mx_csv_split(&tmp, fp, fl, f, MX_MAX_COLS);
  size_t hnum = 0;
  int value_col = 0; /* the long layout: one numeric column among text ones */
  for (size_t i = 0; i < hk && i < MX_MAX_COLS; i++) {
    double v;
    const char *hp = f[i].p;
    size_t hn = f[i].n;
    mc_trim(&hp, &hn);
    if (mc_parse_num(hp, hn, &v)) hnum++;
    if (hn == 5 && strncasecmp(hp, "value", 5) == 0) value_col = 1;
  }
  size_t rows = 0, good = 0;
  for (size_t i = first + 1; i < n; i++) {
    if (mx_blank(&lines[i])) continue;
    rows++;
    size_t k = mx_csv_split(&tmp, lines[i].p, lines[i].len, f, MX_MAX_COLS);
    if (k != hk) continue;
    size_t nums = 0;
    for (size_t c = 0; c < k && c < MX_MAX_COLS; c++) {
      double v, ts;
      if (c == 0 && mc_parse_ts(f[c].p, f[c].n, &ts)) continue;
      if (mc_parse_num(f[c].p, f[c].n, &v)) nums++;
    }
    if (nums > 0 && (nums * 2 >= k - 1 || value_col)) good++;
  }
  fm_buf_free(&tmp.scratch);
  if (hk < 2 || hnum * 2 > hk || rows == 0) return 0;
  double share = (double)good / (double)rows;
  if (share < 0.6) return 0;
  if (format) *format = "csv";
  return 0.9 * share;
}

/* ---- digest ---------------------------------------------------------------------------- */

static void mx_fmt_labels(struct fm_buf *b, const json_t *labels) {
  if (!json_is_object(labels) || json_object_size(labels) == 0) return;
  const char *k;
  json_t *v;
  int first = 1;
  fm_buf_addc(b, '{');
  json_object_foreach((json_t *)labels, k, v) {
    if (!first) fm_buf_addc(b, ',');
    first = 0;
    fm_buf_printf(b, "%s=\"%s\"", k, json_is_string(v) ? json_string_value(v) : "?");
  }
  fm_buf_addc(b, '}');
}

static double mx_num(const json_t *o, const char *k) {
  const json_t *j = json_object_get(o, k);
  return json_is_number(j) ? json_number_value(j) : NAN;
}

void fm_an_metrics_digest(const json_t *summary, struct fm_buf *out, size_t max) {
  const json_t *m = json_object_get(summary, "metrics");
  if (!m) m = summary;
  if (!json_is_object(m) || !out || max == 0) return;
  struct fm_buf b = {0};
  const json_t *fmtj = json_object_get(m, "format");
  fm_buf_printf(&b, "Metrics (%s): %lld series", json_is_string(fmtj) ? json_string_value(fmtj) : "?",
                (long long)json_integer_value(json_object_get(m, "series_count")));
  json_int_t dropped = json_integer_value(json_object_get(m, "series_dropped"));
  if (dropped) fm_buf_printf(&b, " (+%lld dropped over the cap)", (long long)dropped);
  fm_buf_printf(&b, ", %lld samples, %lld anomalies (|z| >= 3)\n",
                (long long)json_integer_value(json_object_get(m, "samples")),
                (long long)json_integer_value(json_object_get(m, "anomalies_total")));
  if (json_is_true(json_object_get(m, "truncated")))
    fm_buf_adds(&b, "JSON document over 64 MiB: not parsed (truncated)\n");
  size_t i;
  const json_t *e;
  json_array_foreach(json_object_get(m, "series"), i, e) {
    fm_buf_adds(&b, "- ");
    fm_buf_adds(&b, json_string_value(json_object_get(e, "name")) ? json_string_value(json_object_get(e, "name")) : "?");
    mx_fmt_labels(&b, json_object_get(e, "labels"));
    long long cnt = (long long)json_integer_value(json_object_get(e, "count"));
    int incr = json_is_string(json_object_get(e, "value_kind"));
    if (incr) fm_buf_printf(&b, " (counter, last %.6g; stats of the increase per sample)",
                            mx_num(e, "last_value"));
    if (cnt == 1) fm_buf_printf(&b, ": value=%.6g", mx_num(e, "max"));
    else if (cnt > 1)
      fm_buf_printf(&b, ": n=%lld min=%.6g p50=%.6g p95=%.6g p99=%.6g max=%.6g mean=%.6g sd=%.6g",
                    cnt, mx_num(e, "min"), mx_num(e, "p50"), mx_num(e, "p95"), mx_num(e, "p99"),
                    mx_num(e, "max"), mx_num(e, "mean"), mx_num(e, "stddev"));
    size_t j;
    const json_t *a;
    json_array_foreach(json_object_get(e, "anomalies"), j, a) {
      if (j >= 3) break;
      const json_t *ts = json_object_get(a, "ts");
      fm_buf_printf(&b, "%s %.6g (z=%.1f)", j ? ";" : "; anomalies:", mx_num(a, "value"),
                    mx_num(a, "z"));
      if (json_is_string(ts)) fm_buf_printf(&b, " at %s", json_string_value(ts));
      if (json_is_integer(json_object_get(a, "line")))
        fm_buf_printf(&b, " line %lld", (long long)json_integer_value(json_object_get(a, "line")));
    }
    fm_buf_addc(&b, '\n');
  }
  json_array_foreach(json_object_get(m, "histograms"), i, e) {
    fm_buf_adds(&b, "- histogram ");
    fm_buf_adds(&b, json_string_value(json_object_get(e, "name")) ? json_string_value(json_object_get(e, "name")) : "?");
    mx_fmt_labels(&b, json_object_get(e, "labels"));
    fm_buf_printf(&b, ": count=%.0f p50~%.6g p95~%.6g p99~%.6g (from buckets)\n", mx_num(e, "count"),
                  mx_num(e, "p50"), mx_num(e, "p95"), mx_num(e, "p99"));
  }
  if (b.p) mc_append_bounded(out, b.p, b.len, max);
  fm_buf_free(&b);
}
