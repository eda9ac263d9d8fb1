/* hnsw.c: the HNSW index of vecmath.h (Malkov & Yashunin; layout and heuristics after hnswlib).
 *
 * Storage is flat and indexed by an internal id (a "slot"): vectors (slot * dim floats), int8
 * codes and scales when quantizing, layer-0 links as fixed arrays of 1 + 2M uint32 (count, then
 * ids), upper-layer links per node (level * (1 + M) uint32, few nodes have any), levels, deleted
 * flags and labels. A label -> slot hash map (linear probing, backward-shift deletion) finds slots.
 *
 * Deletes mark the slot deleted: it stays in the graph for navigation and is never returned.
 * A later add reuses a deleted slot: the slot keeps its level, gets the new vector, is inserted
 * again (new out-links chosen by the heuristic), and its old neighbours that still link to it
 * re-prune their lists against the new vector ("repair" as in hnswlib's updatePoint, simplified).
 *
 * Concurrency: a pthread rwlock; searches take it shared (each with its own scratch from a
 * mutex-protected pool: visited tags, heaps, the query's copy and codes), add/delete exclusive. */
#include "vecmath.h"
#include "vec_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE UINT32_MAX
#define MAX_LEVEL 31

struct pair {
  float d;
  uint32_t id;
};

/* Per-search scratch, pooled. */
struct scratch {
  uint16_t *tags;
  size_t ntags;
  uint16_t mark;
  struct pair *cand, *res, *tmp;
  size_t ncand_cap, nres_cap, ntmp_cap;
  float *qv;
  int8_t *qc;
  struct scratch *next;
};

struct fm_hnsw {
  size_t dim, M, M0, efc, efs;
  enum fm_metric metric;
  int quantize;
  uint64_t seed, rng;
  double mult;

  size_t cap, n, live;
  float *vecs;
  int8_t *codes;
  float *scales, *norms; /* norms: squared norms for L2 on codes */
  uint32_t *links0;
  uint32_t **upper;
  uint8_t *levels, *deleted;
  uint64_t *labels;

  uint64_t *mkeys;
  uint32_t *mvals; /* NONE: empty */
  size_t mcap, mcount;

  uint32_t *freel;
  size_t nfree, freecap;

  uint32_t entry;
  int maxlevel;

  pthread_rwlock_t lock;
  pthread_mutex_t pool_mu;
  struct scratch *pool;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static double rng_uniform(struct fm_hnsw *h) {
  h->rng += 0x9e3779b97f4a7c15ULL;
  return ((double)(mix64(h->rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static int random_level(struct fm_hnsw *h) {
  double l = -log(rng_uniform(h)) * h->mult;
  return l > MAX_LEVEL ? MAX_LEVEL : (int)l;
}

static inline uint32_t *links_at(const struct fm_hnsw *h, uint32_t id, int level) {
  if (level == 0) return h->links0 + (size_t)id * (h->M0 + 1);
  return h->upper[id] + (size_t)(level - 1) * (h->M + 1);
}

static inline const float *vec_of(const struct fm_hnsw *h, uint32_t id) {
  return h->vecs + (size_t)id * h->dim;
}

static void pair_sort(struct pair *p, size_t n); /* ascending by d */

/* Max-heap on d (the root is the farthest). A min-heap stores -d. */
static void heap_push(struct pair *a, size_t *n, struct pair x) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (a[p].d >= x.d) break;
    a[i] = a[p];
    i = p;
  }
  a[i] = x;
}

static struct pair heap_pop(struct pair *a, size_t *n) {
  struct pair top = a[0], x = a[--(*n)];
  size_t i = 0, m = *n;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, b = i;
    float bd = x.d;
    if (l < m && a[l].d > bd) b = l, bd = a[l].d;
    if (r < m && a[r].d > bd) b = r;
    if (b == i) break;
    a[i] = a[b];
    i = b;
  }
  if (m) a[i] = x;
  return top;
}

static int pair_cmp(const void *x, const void *y) {
  const struct pair *a = x, *b = y;
  if (a->d < b->d) return -1;
  if (a->d > b->d) return 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

static void pair_sort(struct pair *p, size_t n) { qsort(p, n, sizeof *p, pair_cmp); }

static int grow_pairs(struct pair **p, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  struct pair *np = realloc(*p, c * sizeof *np);
  if (!np) return FM_E_NOMEM;
  *p = np;
  *cap = c;
  return 0;
}

/* ---- label map ---------------------------------------------------------------------------- */

static size_t map_slot(const struct fm_hnsw *h, uint64_t label) {
  return (size_t)mix64(label ^ 0x5851f42d4c957f2dULL) & (h->mcap - 1);
}

static uint32_t map_get(const struct fm_hnsw *h, uint64_t label) {
  if (!h->mcap) return NONE;
  for (size_t i = map_slot(h, label);; i = (i + 1) & (h->mcap - 1)) {
    if (h->mvals[i] == NONE) return NONE;
    if (h->mkeys[i] == label) return h->mvals[i];
  }
}

static void map_put_nogrow(struct fm_hnsw *h, uint64_t label, uint32_t id) {
  size_t i = map_slot(h, label);
  while (h->mvals[i] != NONE && h->mkeys[i] != label) i = (i + 1) & (h->mcap - 1);
  if (h->mvals[i] == NONE) h->mcount++;
  h->mkeys[i] = label;
  h->mvals[i] = id;
}

static int map_reserve(struct fm_hnsw *h, size_t want) {
  if ((want + 1) * 10 <= h->mcap * 7) return 0;
  size_t c = h->mcap ? h->mcap : 1024;
  while ((want + 1) * 10 > c * 7) c *= 2;
  uint64_t *nk = malloc(c * sizeof *nk);
  uint32_t *nv = malloc(c * sizeof *nv);
  if (!nk || !nv) {
    free(nk);
    free(nv);
    return FM_E_NOMEM;
  }
  memset(nv, 0xff, c * sizeof *nv);
  uint64_t *ok = h->mkeys;
  uint32_t *ov = h->mvals;
  size_t oc = h->mcap;
  h->mkeys = nk, h->mvals = nv, h->mcap = c, h->mcount = 0;
  for (size_t i = 0; i < oc; i++)
    if (ov[i] != NONE) map_put_nogrow(h, ok[i], ov[i]);
  free(ok);
  free(ov);
  return 0;
}

static void map_del(struct fm_hnsw *h, uint64_t label) {
  if (!h->mcap) return;
  size_t mask = h->mcap - 1, i = map_slot(h, label);
  for (;; i = (i + 1) & mask) {
    if (h->mvals[i] == NONE) return;
    if (h->mkeys[i] == label) break;
  }
  /* Backward-shift deletion keeps probe chains intact without tombstones. */
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (h->mvals[j] == NONE) break;
    size_t home = map_slot(h, h->mkeys[j]);
    /* j's entry can move to i if its home is not in (i, j] cyclically. */
    int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (between) continue;
    h->mkeys[i] = h->mkeys[j];
    h->mvals[i] = h->mvals[j];
    i = j;
  }
  h->mvals[i] = NONE;
  h->mcount--;
}

/* ---- scratch pool ------------------------------------------------------------------------- */

static struct scratch *scratch_get(const struct fm_hnsw *hc) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  pthread_mutex_lock(&h->pool_mu);
  struct scratch *s = h->pool;
  if (s) h->pool = s->next;
  pthread_mutex_unlock(&h->pool_mu);
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->qv = malloc((h->dim ? h->dim : 1) * sizeof(float));
    s->qc = malloc(h->dim ? h->dim : 1);
    if (!s->qv || !s->qc) goto fail;
  }
  if (s->ntags < h->n) { /* grown since: fresh tags */
    size_t nt = h->cap > h->n ? h->cap : h->n;
    uint16_t *t = calloc(nt, sizeof *t);
    if (!t) goto fail;
    free(s->tags);
    s->tags = t;
    s->ntags = nt;
    s->mark = 0;
  }
  if (++s->mark == 0) {
    memset(s->tags, 0, s->ntags * sizeof *s->tags);
    s->mark = 1;
  }
  return s;
fail:
  free(s->tags);
  free(s->qv);
  free(s->qc);
  free(s->cand);
  free(s->res);
  free(s->tmp);
  free(s);
  return NULL;
}

static void scratch_put(const struct fm_hnsw *hc, struct scratch *s) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  pthread_mutex_lock(&h->pool_mu);
  s->next = h->pool;
  h->pool = s;
  pthread_mutex_unlock(&h->pool_mu);
}

static void scratch_free_all(struct fm_hnsw *h) {
  while (h->pool) {
    struct scratch *s = h->pool;
    h->pool = s->next;
    free(s->tags);
    free(s->qv);
    free(s->qc);
    free(s->cand);
    free(s->res);
    free(s->tmp);
    free(s);
  }
}

/* ---- distances ---------------------------------------------------------------------------- */

/* A query as traversal sees it: float, or int8 codes with scale (and squared norm for L2). */
struct query {
  const float *v;
  const int8_t *c;
  float scale, norm;
  int quant;
  fm_vec_f32_fn dot, l2;
  fm_vec_i8_fn i8;
};

static inline float qdist(const struct fm_hnsw *h, const struct query *q, uint32_t id) {
  if (q->quant) {
    float d = (float)q->i8(q->c, h->codes + (size_t)id * h->dim, h->dim) * q->scale * h->scales[id];
    return h->metric == FM_METRIC_L2 ? q->norm + h->norms[id] - 2 * d : -d;
  }
  if (h->metric == FM_METRIC_L2) return q->l2(q->v, vec_of(h, id), h->dim);
  return -q->dot(q->v, vec_of(h, id), h->dim);
}

static inline float ndist(const struct fm_hnsw *h, const struct query *q, uint32_t a, uint32_t b) {
  if (h->metric == FM_METRIC_L2) return q->l2(vec_of(h, a), vec_of(h, b), h->dim);
  return -q->dot(vec_of(h, a), vec_of(h, b), h->dim);
}

static inline void prefetch_node(const struct fm_hnsw *h, const struct query *q, uint32_t id) {
  if (q->quant) __builtin_prefetch(h->codes + (size_t)id * h->dim);
  else {
    const char *p = (const char *)vec_of(h, id);
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
  }
}

/* ---- search primitives -------------------------------------------------------------------- */

/* Greedy descent from ep through levels from..to+1; never lands on `exclude`. */
static uint32_t greedy(const struct fm_hnsw *h, const struct query *q, uint32_t ep, int from,
                       int to, uint32_t exclude) {
  uint32_t cur = ep;
  float curd = cur == exclude ? INFINITY : qdist(h, q, cur);
  for (int l = from; l > to; l--) {
    int changed = 1;
    while (changed) {
      changed = 0;
      const uint32_t *ls = links_at(h, cur, l);
      uint32_t cnt = ls[0];
      for (uint32_t i = 1; i <= cnt; i++) {
        uint32_t nb = ls[i];
        if (nb == exclude) continue;
        if (i < cnt) prefetch_node(h, q, ls[i + 1]);
        float d = qdist(h, q, nb);
        if (d < curd) {
          curd = d;
          cur = nb;
          changed = 1;
        }
      }
    }
  }
  return cur;
}

struct sopts {
  int build;        /* construction: deleted nodes are valid results (they stay navigable) */
  uint32_t exclude; /* never a result (the slot being reinserted) */
  fm_hnsw_filter filter;
  void *ud;
};

/* Best-first search of one layer; leaves up to ef results in s->res (max-heap on d, nres). */
static int search_layer(const struct fm_hnsw *h, struct scratch *s, const struct query *q,
                        uint32_t ep, size_t ef, int level, const struct sopts *o, size_t *nres) {
  size_t nc = 0, nr = 0;
  uint16_t mark = s->mark;
  if (grow_pairs(&s->res, &s->nres_cap, ef + 1) || grow_pairs(&s->cand, &s->ncand_cap, 64))
    return FM_E_NOMEM;
  float d = qdist(h, q, ep);
  s->tags[ep] = mark;
  float bound = INFINITY;
  int restricted = o->exclude != NONE || o->filter || (!o->build && h->live < h->n);
  if (ep != o->exclude && (o->build || !h->deleted[ep]) &&
      (!o->filter || o->filter(h->labels[ep], o->ud))) {
    heap_push(s->res, &nr, (struct pair){d, ep});
    bound = d;
  }
  heap_push(s->cand, &nc, (struct pair){-d, ep});
  while (nc) {
    struct pair c = s->cand[0];
    /* With deletions, a filter or an excluded node, keep going until the results are full. */
    if (-c.d > bound && (nr == ef || !restricted)) break;
    heap_pop(s->cand, &nc);
    const uint32_t *ls = links_at(h, c.id, level);
    uint32_t cnt = ls[0];
    if (cnt) __builtin_prefetch(&s->tags[ls[1]]);
    for (uint32_t i = 1; i <= cnt; i++) {
      uint32_t nb = ls[i];
      if (i < cnt) {
        __builtin_prefetch(&s->tags[ls[i + 1]]);
        prefetch_node(h, q, ls[i + 1]);
      }
      if (s->tags[nb] == mark) continue;
      s->tags[nb] = mark;
      float dn = qdist(h, q, nb);
      if (nr < ef || dn < bound) {
        if (grow_pairs(&s->cand, &s->ncand_cap, nc + 1)) return FM_E_NOMEM;
        heap_push(s->cand, &nc, (struct pair){-dn, nb});
        /* The next node to expand: its link list (a separate array here) is needed soon. */
        __builtin_prefetch(links_at(h, s->cand[0].id, level));
        if (nb != o->exclude && (o->build || !h->deleted[nb]) &&
            (!o->filter || o->filter(h->labels[nb], o->ud))) {
          heap_push(s->res, &nr, (struct pair){dn, nb});
          if (nr > ef) heap_pop(s->res, &nr);
          if (nr) bound = s->res[0].d;
        }
      }
    }
  }
  *nres = nr;
  return 0;
}

/* The HNSW paper's heuristic: keep a candidate only if it is closer to the base than to every
 * neighbour kept so far. cand is sorted ascending; the kept ones are moved to its front. */
static size_t select_heuristic(const struct fm_hnsw *h, const struct query *q, struct pair *cand,
                               size_t n, size_t m) {
  if (n <= m) return n;
  size_t kept = 0;
  for (size_t i = 0; i < n && kept < m; i++) {
    int good = 1;
    for (size_t j = 0; j < kept; j++)
      if (ndist(h, q, cand[i].id, cand[j].id) < cand[i].d) {
        good = 0;
        break;
      }
    if (good) cand[kept++] = cand[i];
  }
  return kept;
}

/* Re-chooses node's links on level among its current ones plus `extra` (NONE: none). */
static int reprune(struct fm_hnsw *h, struct scratch *s, const struct query *q, uint32_t node,
                   int level, uint32_t extra) {
  uint32_t *ls = links_at(h, node, level);
  size_t mmax = level ? h->M : h->M0, n = 0;
  if (grow_pairs(&s->tmp, &s->ntmp_cap, mmax + 2)) return FM_E_NOMEM;
  for (uint32_t i = 1; i <= ls[0]; i++)
    if (ls[i] != node) s->tmp[n++] = (struct pair){ndist(h, q, node, ls[i]), ls[i]};
  if (extra != NONE) s->tmp[n++] = (struct pair){ndist(h, q, node, extra), extra};
  pair_sort(s->tmp, n);
  n = select_heuristic(h, q, s->tmp, n, mmax);
  ls[0] = (uint32_t)n;
  for (size_t i = 0; i < n; i++) ls[i + 1] = s->tmp[i].id;
  return 0;
}

/* Links slot id (vector already stored, level set) into the graph. Write lock held. */
static int insert_node(struct fm_hnsw *h, struct scratch *s, uint32_t id, int reuse) {
  int level = h->levels[id];
  struct query q = {.v = vec_of(h, id), .dot = fm_vec_dot_fn(), .l2 = fm_vec_l2sq_fn()};
  if (h->entry == NONE) {
    for (int l = 0; l <= level; l++) links_at(h, id, l)[0] = 0;
    h->entry = id;
    h->maxlevel = level;
    return 0;
  }
  /* The old neighbours of a reused slot, to repair after the slot's links are rewritten. */
  uint32_t *old = NULL;
  size_t nold = 0;
  if (reuse) {
    size_t tot = 0;
    for (int l = 0; l <= level; l++) tot += links_at(h, id, l)[0] + 1;
    old = malloc(tot * sizeof *old);
    if (!old) return FM_E_NOMEM;
    for (int l = 0; l <= level; l++) {
      const uint32_t *ls = links_at(h, id, l);
      memcpy(old + nold, ls, (ls[0] + 1) * sizeof *ls);
      nold += ls[0] + 1;
    }
  }
  uint32_t ep = h->entry;
  struct sopts o = {.build = 1, .exclude = id};
  if (level < h->maxlevel) ep = greedy(h, &q, ep, h->maxlevel, level, id);
  int rc = 0;
  for (int l = level < h->maxlevel ? level : h->maxlevel; l >= 0; l--) {
    size_t nr = 0;
    if (++s->mark == 0) {
      memset(s->tags, 0, s->ntags * sizeof *s->tags);
      s->mark = 1;
    }
    if ((rc = search_layer(h, s, &q, ep, h->efc, l, &o, &nr))) goto done;
    struct pair *cand = s->res;
    pair_sort(cand, nr);
    if (nr) ep = cand[0].id;
    size_t m = select_heuristic(h, &q, cand, nr, h->M);
    uint32_t *ls = links_at(h, id, l);
    ls[0] = (uint32_t)m;
    for (size_t i = 0; i < m; i++) ls[i + 1] = cand[i].id;
    /* Reverse links: append, or re-prune a full list with the newcomer as a candidate. */
    size_t mmax = l ? h->M : h->M0;
    for (size_t i = 0; i < m; i++) {
      uint32_t nb = ls[i + 1];
      uint32_t *nl = links_at(h, nb, l);
      int has = 0;
      for (uint32_t j = 1; j <= nl[0]; j++)
        if (nl[j] == id) has = 1;
      if (has) continue;
      if (nl[0] < mmax) nl[++nl[0]] = id;
      else if ((rc = reprune(h, s, &q, nb, l, id))) goto done;
    }
  }
  if (reuse) { /* old neighbours that still link here measured the old vector: re-prune them */
    size_t off = 0;
    for (int l = 0; l <= level; l++) {
      uint32_t cnt = old[off];
      for (uint32_t i = 1; i <= cnt; i++) {
        uint32_t nb = old[off + i];
        if (nb == id || nb >= h->n) continue;
        if (l > h->levels[nb]) continue;
        const uint32_t *nl = links_at(h, nb, l);
        int has = 0;
        for (uint32_t j = 1; j <= nl[0]; j++)
          if (nl[j] == id) has = 1;
        if (has && (rc = reprune(h, s, &q, nb, l, NONE))) goto done;
      }
      off += cnt + 1;
    }
  }
  if (level > h->maxlevel) {
    h->entry = id;
    h->maxlevel = level;
  }
done:
  free(old);
  return rc;
}

/* ---- life cycle --------------------------------------------------------------------------- */

static int alloc_core(size_t dim, enum fm_metric metric, const struct fm_hnsw_params *p,
                      struct fm_hnsw **out, struct fm_err *err) {
  if (dim == 0 || dim > 65536)
    return fm_err_set(err, FM_E_INVAL, "vecmath: dim %zu out of range (1..65536)", dim);
  if (metric != FM_METRIC_IP && metric != FM_METRIC_COSINE && metric != FM_METRIC_L2)
    return fm_err_set(err, FM_E_INVAL, "vecmath: unknown metric %d", (int)metric);
  struct fm_hnsw_params d = {0};
  if (!p) p = &d;
  size_t M = p->M ? p->M : 16;
  if (M < 2 || M > 512)
    return fm_err_set(err, FM_E_INVAL, "vecmath: M %zu out of range (2..512)", M);
  struct fm_hnsw *h = calloc(1, sizeof *h);
  if (!h) return fm_err_set(err, FM_E_NOMEM, "vecmath: out of memory");
  h->dim = dim;
  h->metric = metric;
  h->M = M;
  h->M0 = 2 * M;
  h->efc = p->ef_construction ? p->ef_construction : 200;
  if (h->efc < M) h->efc = M;
  h->efs = p->ef_search ? p->ef_search : 64;
  h->quantize = p->quantize != 0;
  h->seed = p->seed ? p->seed : 0x6a09e667f3bcc908ULL;
  h->rng = h->seed;
  h->mult = 1.0 / log((double)M);
  h->entry = NONE;
  h->maxlevel = -1;
  /* Writer-preferring: with glibc's default (readers first) a steady stream of searches starves
   * adds forever. The price: a filter callback must not call into the same index (it would wait
   * behind a queued writer while holding its read lock). */
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  int lrc = pthread_rwlock_init(&h->lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  if (lrc) {
    free(h);
    return fm_err_set(err, FM_E_NOMEM, "vecmath: rwlock init failed");
  }
  pthread_mutex_init(&h->pool_mu, NULL);
  *out = h;
  return 0;
}

int fm_hnsw_new(size_t dim, enum fm_metric metric, const struct fm_hnsw_params *p,
                struct fm_hnsw **out, struct fm_err *err) {
  *out = NULL;
  return alloc_core(dim, metric, p, out, err);
}

void fm_hnsw_free(struct fm_hnsw *h) {
  if (!h) return;
  if (h->upper)
    for (size_t i = 0; i < h->n; i++) free(h->upper[i]);
  free(h->upper);
  free(h->vecs);
  free(h->codes);
  free(h->scales);
  free(h->norms);
  free(h->links0);
  free(h->levels);
  free(h->deleted);
  free(h->labels);
  free(h->mkeys);
  free(h->mvals);
  free(h->freel);
  scratch_free_all(h);
  pthread_rwlock_destroy(&h->lock);
  pthread_mutex_destroy(&h->pool_mu);
  free(h);
}

#define GROW(field, count)                                                                        \
  do {                                                                                            \
    void *np_ = realloc(h->field, (count) * sizeof *h->field);                                    \
    if (!np_) return FM_E_NOMEM;                                                                  \
    h->field = np_;                                                                               \
  } while (0)

/* Makes room for cap slots (the arrays are never shrunk). Write lock held. */
static int reserve_slots(struct fm_hnsw *h, size_t cap) {
  if (cap <= h->cap) return 0;
  if (cap >= NONE) return FM_E_TOOBIG;
  GROW(vecs, cap * h->dim);
  if (h->quantize) {
    GROW(codes, cap * h->dim);
    GROW(scales, cap);
    GROW(norms, cap);
  }
  GROW(links0, cap * (h->M0 + 1));
  GROW(upper, cap);
  GROW(levels, cap);
  GROW(deleted, cap);
  GROW(labels, cap);
  GROW(freel, cap);
  h->freecap = cap;
  h->cap = cap;
  return 0;
}

static void store_vector(struct fm_hnsw *h, uint32_t id, const float *v) {
  float *dst = h->vecs + (size_t)id * h->dim;
  memcpy(dst, v, h->dim * sizeof *dst);
  if (h->metric == FM_METRIC_COSINE) fm_vec_normalize(dst, h->dim);
  if (h->quantize) {
    fm_vec_q8_encode(dst, h->dim, h->codes + (size_t)id * h->dim, &h->scales[id]);
    h->norms[id] = fm_vec_dot(dst, dst, h->dim);
  }
}

static void delete_locked(struct fm_hnsw *h, uint32_t id) {
  map_del(h, h->labels[id]);
  h->deleted[id] = 1;
  h->freel[h->nfree++] = id;
  h->live--;
}

int fm_hnsw_add(struct fm_hnsw *h, uint64_t label, const float *v, struct fm_err *err) {
  for (size_t i = 0; i < h->dim; i++)
    if (!isfinite(v[i]))
      return fm_err_set(err, FM_E_INVAL, "vecmath: component %zu of the vector is not finite", i);
  pthread_rwlock_wrlock(&h->lock);
  int rc = 0;
  struct scratch *s = NULL;
  uint32_t old = map_get(h, label);
  if (old == NONE && (rc = map_reserve(h, h->mcount + 1))) goto done;
  if (old == NONE && !h->nfree && h->n == h->cap &&
      (rc = reserve_slots(h, h->cap ? h->cap * 2 : 1024))) {
    rc = fm_err_set(err, rc, "vecmath: %s growing the index past %zu vectors",
                    rc == FM_E_NOMEM ? "out of memory" : "too many slots", h->cap);
    goto done;
  }
  if (old != NONE) delete_locked(h, old); /* replace: the slot comes back from the free list */
  int reuse = h->nfree > 0;
  uint32_t id;
  if (reuse) id = h->freel[--h->nfree];
  else {
    id = (uint32_t)h->n;
    int level = random_level(h);
    h->upper[id] = NULL;
    if (level > 0) {
      h->upper[id] = malloc((size_t)level * (h->M + 1) * sizeof(uint32_t));
      if (!h->upper[id]) {
        rc = fm_err_set(err, FM_E_NOMEM, "vecmath: out of memory");
        goto done;
      }
    }
    h->levels[id] = (uint8_t)level;
    for (int l = 0; l <= level; l++) links_at(h, id, l)[0] = 0;
    h->n++;
  }
  store_vector(h, id, v);
  h->labels[id] = label;
  h->deleted[id] = 1; /* not a result until it is linked */
  if (!(s = scratch_get(h))) {
    rc = FM_E_NOMEM;
  } else {
    rc = insert_node(h, s, id, reuse);
  }
  if (rc) {
    /* The slot stays deleted (its links are valid ids) and goes back to the free list. */
    h->freel[h->nfree++] = id;
    rc = fm_err_set(err, rc, "vecmath: out of memory while linking a vector");
    goto done;
  }
  h->deleted[id] = 0;
  map_put_nogrow(h, label, id);
  h->live++;
done:
  if (s) scratch_put(h, s);
  pthread_rwlock_unlock(&h->lock);
  return rc;
}

int fm_hnsw_delete(struct fm_hnsw *h, uint64_t label) {
  pthread_rwlock_wrlock(&h->lock);
  uint32_t id = map_get(h, label);
  if (id != NONE) delete_locked(h, id);
  pthread_rwlock_unlock(&h->lock);
  return id == NONE ? FM_E_NOTFOUND : 0;
}

int fm_hnsw_contains(const struct fm_hnsw *hc, uint64_t label) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  pthread_rwlock_rdlock(&h->lock);
  int r = map_get(h, label) != NONE;
  pthread_rwlock_unlock(&h->lock);
  return r;
}

int fm_hnsw_get(const struct fm_hnsw *hc, uint64_t label, float *out) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  pthread_rwlock_rdlock(&h->lock);
  uint32_t id = map_get(h, label);
  if (id != NONE) memcpy(out, vec_of(h, id), h->dim * sizeof *out);
  pthread_rwlock_unlock(&h->lock);
  return id == NONE ? FM_E_NOTFOUND : 0;
}

#define LOCKED_GET(expr)                                                                          \
  struct fm_hnsw *h = (struct fm_hnsw *)hc;                                                      \
  pthread_rwlock_rdlock(&h->lock);                                                                \
  size_t r = (expr);                                                                              \
  pthread_rwlock_unlock(&h->lock);                                                                \
  return r

size_t fm_hnsw_count(const struct fm_hnsw *hc) { LOCKED_GET(h->live); }
size_t fm_hnsw_slots(const struct fm_hnsw *hc) { LOCKED_GET(h->n); }
size_t fm_hnsw_dim(const struct fm_hnsw *h) { return h->dim; }
enum fm_metric fm_hnsw_metric(const struct fm_hnsw *h) { return h->metric; }

static size_t memory_locked(const struct fm_hnsw *h) {
  size_t b = sizeof *h;
  b += h->cap * (h->dim * sizeof(float) + (h->M0 + 1) * sizeof(uint32_t) + sizeof(uint32_t *) + 2 +
                 sizeof(uint64_t) + sizeof(uint32_t));
  if (h->quantize) b += h->cap * (h->dim + 2 * sizeof(float));
  for (size_t i = 0; i < h->n; i++) b += (size_t)h->levels[i] * (h->M + 1) * sizeof(uint32_t);
  b += h->mcap * (sizeof(uint64_t) + sizeof(uint32_t));
  return b;
}

size_t fm_hnsw_memory(const struct fm_hnsw *hc) { LOCKED_GET(memory_locked(h)); }

/* ---- search ------------------------------------------------------------------------------- */

/* Copies the query (normalised for COSINE) and, for quantized traversal, its codes. */
static void prep_query(const struct fm_hnsw *h, struct scratch *s, const float *q, int quant,
                       struct query *out) {
  memcpy(s->qv, q, h->dim * sizeof *s->qv);
  if (h->metric == FM_METRIC_COSINE) fm_vec_normalize(s->qv, h->dim);
  *out = (struct query){.v = s->qv, .dot = fm_vec_dot_fn(), .l2 = fm_vec_l2sq_fn(),
                        .i8 = fm_vec_i8_dot_fn()};
  if (quant) {
    fm_vec_q8_encode(s->qv, h->dim, s->qc, &out->scale);
    out->c = s->qc;
    out->norm = fm_vec_dot(s->qv, s->qv, h->dim);
    out->quant = 1;
  }
}

size_t fm_hnsw_search_ex(const struct fm_hnsw *hc, const float *q, size_t k, size_t ef,
                         int quantize, fm_hnsw_filter filter, void *ud, uint64_t *labels,
                         float *scores) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  if (k == 0) return 0;
  pthread_rwlock_rdlock(&h->lock);
  size_t got = 0;
  struct scratch *s = NULL;
  if (h->entry == NONE || h->live == 0) goto done;
  if (!ef) ef = h->efs;
  if (ef < k) ef = k;
  if (!(s = scratch_get(h))) goto done;
  struct query qq;
  int quant = quantize && h->quantize;
  prep_query(h, s, q, quant, &qq);
  uint32_t ep = greedy(h, &qq, h->entry, h->maxlevel, 0, NONE);
  struct sopts o = {.build = 0, .exclude = NONE, .filter = filter, .ud = ud};
  size_t nr = 0;
  if (search_layer(h, s, &qq, ep, ef, 0, &o, &nr)) goto done;
  if (quant) { /* rescore the ef candidates in float32 */
    qq.quant = 0;
    for (size_t i = 0; i < nr; i++) s->res[i].d = qdist(h, &qq, s->res[i].id);
  }
  pair_sort(s->res, nr);
  got = nr < k ? nr : k;
  for (size_t i = 0; i < got; i++) {
    labels[i] = h->labels[s->res[i].id];
    scores[i] = -s->res[i].d;
  }
done:
  if (s) scratch_put(h, s);
  pthread_rwlock_unlock(&h->lock);
  return got;
}

size_t fm_hnsw_search(const struct fm_hnsw *h, const float *q, size_t k, size_t ef,
                      fm_hnsw_filter filter, void *ud, uint64_t *labels, float *scores) {
  return fm_hnsw_search_ex(h, q, k, ef, 1, filter, ud, labels, scores);
}

size_t fm_hnsw_exact(const struct fm_hnsw *hc, const float *q, size_t k, fm_hnsw_filter filter,
                     void *ud, uint64_t *labels, float *scores) {
  struct fm_hnsw *h = (struct fm_hnsw *)hc;
  if (k == 0) return 0;
  pthread_rwlock_rdlock(&h->lock);
  size_t got = 0, nr = 0;
  struct scratch *s = scratch_get(h);
  if (!s || grow_pairs(&s->res, &s->nres_cap, k + 1)) goto done;
  struct query qq;
  prep_query(h, s, q, 0, &qq);
  for (uint32_t id = 0; id < h->n; id++) {
    if (h->deleted[id]) continue;
    float d = qdist(h, &qq, id);
    if (nr == k && d >= s->res[0].d) continue;
    if (filter && !filter(h->labels[id], ud)) continue;
    heap_push(s->res, &nr, (struct pair){d, id});
    if (nr > k) heap_pop(s->res, &nr);
  }
  pair_sort(s->res, nr);
  got = nr;
  for (size_t i = 0; i < got; i++) {
    labels[i] = h->labels[s->res[i].id];
    scores[i] = -s->res[i].d;
  }
done:
  if (s) scratch_put(h, s);
  pthread_rwlock_unlock(&h->lock);
  return got;
}

/* ---- persistence -------------------------------------------------------------------------- */

/* The file: a 144-byte header, then the body (little-endian, sections 8-byte aligned):
 * labels u64[n], levels u8[n], deleted u8[n], pad; vectors f32[n*dim]; if quantized scales
 * f32[n], codes i8[n*dim], pad; layer-0 links u32[n*(2M+1)]; upper links u32[upper] (for each
 * node with level > 0, in slot order, level * (M+1)). The label map and the free list are
 * rebuilt from labels and deleted flags. */
#define FILE_MAGIC "FMHNSW\r\n"
#define FILE_VERSION 1u

struct file_header {
  char magic[8];
  uint32_t version, header_size;
  uint64_t dim, metric, M, efc, efs, quantize, seed, rng, n, live, entry, maxlevel, upper;
  uint64_t body_size, body_hash, header_hash;
};

_Static_assert(sizeof(struct file_header) == 144, "the header is 144 bytes, no padding");

static uint64_t header_hash(const struct file_header *fh) {
  struct fm_vec_hash st;
  fm_vec_hash_init(&st, 0x1234);
  fm_vec_hash_update(&st, fh, offsetof(struct file_header, header_hash));
  return fm_vec_hash_final(&st);
}

static size_t pad8(size_t x) { return (x + 7) & ~(size_t)7; }

/* Body size for the header's counts, or 0 on overflow. */
static uint64_t body_size_for(uint64_t n, uint64_t dim, uint64_t M0, int quant, uint64_t upper) {
  const uint64_t lim = UINT64_MAX / 64;
  if (n > lim / (dim + 16) || upper > lim / 4 || n > lim / (M0 + 1)) return 0;
  uint64_t s = pad8(n * 10) + n * dim * 4;
  if (quant) s += pad8(n * 4 + n * dim);
  s += n * (M0 + 1) * 4 + upper * 4;
  return s;
}

struct writer {
  int fd;
  struct fm_vec_hash hash;
  unsigned char *buf;
  size_t len, cap;
};

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static int w_flush(struct writer *w) {
  if (w->len && write_all(w->fd, w->buf, w->len)) return -1;
  w->len = 0;
  return 0;
}

static int w_put(struct writer *w, const void *p, size_t n) {
  if (!n) return 0;
  fm_vec_hash_update(&w->hash, p, n);
  if (w->len + n <= w->cap) {
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    return 0;
  }
  if (w_flush(w)) return -1;
  if (n >= w->cap) return write_all(w->fd, p, n);
  memcpy(w->buf, p, n);
  w->len = n;
  return 0;
}

static int w_pad(struct writer *w, size_t written) {
  static const unsigned char zero[8];
  size_t p = pad8(written) - written;
  return p ? w_put(w, zero, p) : 0;
}

int fm_hnsw_save(struct fm_hnsw *h, const char *path, struct fm_err *err) {
  static unsigned counter;
  char tmp[4096];
  int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(),
                   __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
  if (n < 0 || (size_t)n >= sizeof tmp)
    return fm_err_set(err, FM_E_INVAL, "vecmath: path too long: %s", path);
  struct writer w = {.fd = -1, .cap = 4u << 20};
  if (!(w.buf = malloc(w.cap))) return fm_err_set(err, FM_E_NOMEM, "vecmath: out of memory");
  int rc = 0;
  pthread_rwlock_rdlock(&h->lock);
  w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd < 0) {
    rc = fm_err_set(err, FM_E_IO, "vecmath: %s: %s", tmp, strerror(errno));
    goto done;
  }
  uint64_t upper = 0;
  for (size_t i = 0; i < h->n; i++) upper += (uint64_t)h->levels[i] * (h->M + 1);
  struct file_header fh;
  memset(&fh, 0, sizeof fh);
  memcpy(fh.magic, FILE_MAGIC, 8);
  fh.version = FILE_VERSION;
  fh.header_size = sizeof fh;
  fh.dim = h->dim, fh.metric = (uint64_t)h->metric, fh.M = h->M, fh.efc = h->efc;
  fh.efs = h->efs, fh.quantize = (uint64_t)h->quantize, fh.seed = h->seed, fh.rng = h->rng;
  fh.n = h->n, fh.live = h->live, fh.entry = h->entry == NONE ? UINT64_MAX : h->entry;
  fh.maxlevel = (uint64_t)(int64_t)h->maxlevel, fh.upper = upper;
  fh.body_size = body_size_for(h->n, h->dim, h->M0, h->quantize, upper);
  if (write_all(w.fd, &fh, sizeof fh)) goto io;
  fm_vec_hash_init(&w.hash, 0);
  if (w_put(&w, h->labels, h->n * 8) || w_put(&w, h->levels, h->n) ||
      w_put(&w, h->deleted, h->n) || w_pad(&w, h->n * 10) ||
      w_put(&w, h->vecs, h->n * h->dim * sizeof(float)))
    goto io;
  if (h->quantize && (w_put(&w, h->scales, h->n * 4) || w_put(&w, h->codes, h->n * h->dim) ||
                      w_pad(&w, h->n * 4 + h->n * h->dim)))
    goto io;
  if (w_put(&w, h->links0, h->n * (h->M0 + 1) * sizeof(uint32_t))) goto io;
  for (size_t i = 0; i < h->n; i++)
    if (h->levels[i] && w_put(&w, h->upper[i], (size_t)h->levels[i] * (h->M + 1) * 4)) goto io;
  if (w_flush(&w)) goto io;
  fh.body_hash = fm_vec_hash_final(&w.hash);
  fh.header_hash = header_hash(&fh);
  if (pwrite(w.fd, &fh, sizeof fh, 0) != (ssize_t)sizeof fh || fsync(w.fd)) goto io;
  if (close(w.fd)) {
    w.fd = -1;
    goto io;
  }
  w.fd = -1;
  if (rename(tmp, path)) goto io;
  {
    /* The rename is durable only once the directory is synced. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd)) {
      rc = fm_err_set(err, FM_E_IO, "vecmath: fsync of directory %s: %s", dir, strerror(errno));
      if (dfd >= 0) close(dfd);
      goto done;
    }
    close(dfd);
  }
  goto done;
io:
  rc = fm_err_set(err, FM_E_IO, "vecmath: writing %s: %s", tmp, strerror(errno));
  if (w.fd >= 0) close(w.fd);
  w.fd = -1;
  unlink(tmp);
done:
  pthread_rwlock_unlock(&h->lock);
  free(w.buf);
  return rc;
}

/* Reads n bytes into p in large chunks, hashing as it goes. */
static int read_hashed(int fd, void *p, size_t n, struct fm_vec_hash *st) {
  char *c = p;
  while (n) {
    size_t want = n > (64u << 20) ? (64u << 20) : n;
    ssize_t r = read(fd, c, want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    fm_vec_hash_update(st, c, (size_t)r);
    c += r;
    n -= (size_t)r;
  }
  return 0;
}

int fm_hnsw_load(const char *path, struct fm_hnsw **out, struct fm_err *err) {
  *out = NULL;
  struct fm_hnsw *h = NULL;
  uint32_t *flat = NULL;
  int rc = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fm_err_set(err, FM_E_IO, "vecmath: %s: %s", path, strerror(errno));
  struct stat st;
  struct file_header fh;
  if (fstat(fd, &st)) {
    rc = fm_err_set(err, FM_E_IO, "vecmath: %s: %s", path, strerror(errno));
    goto fail;
  }
  if ((uint64_t)st.st_size < sizeof fh) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: truncated (%lld bytes, shorter than the header)",
                    path, (long long)st.st_size);
    goto fail;
  }
  struct fm_vec_hash hs;
  fm_vec_hash_init(&hs, 0);
  if (read_hashed(fd, &fh, sizeof fh, &hs)) {
    rc = fm_err_set(err, FM_E_IO, "vecmath: %s: reading the header failed", path);
    goto fail;
  }
  if (memcmp(fh.magic, FILE_MAGIC, 8)) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: not a vecmath index file (bad magic)", path);
    goto fail;
  }
  if (fh.version != FILE_VERSION || fh.header_size != sizeof fh) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: unsupported version %u", path, fh.version);
    goto fail;
  }
  if (fh.header_hash != header_hash(&fh)) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: header checksum mismatch (file corrupted)",
                    path);
    goto fail;
  }
  if (fh.dim == 0 || fh.dim > 65536 || fh.metric > 2 || fh.M < 2 || fh.M > 512 ||
      fh.n >= NONE || fh.live > fh.n || fh.quantize > 1 ||
      (fh.n ? fh.entry >= fh.n || fh.maxlevel > MAX_LEVEL : fh.entry != UINT64_MAX)) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: header values out of range (file corrupted)",
                    path);
    goto fail;
  }
  uint64_t body = body_size_for(fh.n, fh.dim, 2 * fh.M, (int)fh.quantize, fh.upper);
  if (!body && fh.n) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: sizes overflow (file corrupted)", path);
    goto fail;
  }
  if (body != fh.body_size || (uint64_t)st.st_size != sizeof fh + body) {
    rc = fm_err_set(err, FM_E_INVAL,
                    "vecmath: %s: truncated or wrong size (%lld bytes, the header says %llu)",
                    path, (long long)st.st_size, (unsigned long long)(sizeof fh + body));
    goto fail;
  }
  struct fm_hnsw_params p = {.M = fh.M, .ef_construction = fh.efc, .ef_search = fh.efs,
                             .quantize = (int)fh.quantize, .seed = fh.seed};
  if ((rc = alloc_core(fh.dim, (enum fm_metric)fh.metric, &p, &h, err))) goto fail;
  h->rng = fh.rng;
  size_t n = fh.n;
  if ((rc = reserve_slots(h, n > 1024 ? n : 1024)) || (rc = map_reserve(h, fh.live))) {
    rc = fm_err_set(err, FM_E_NOMEM, "vecmath: %s: out of memory for %zu vectors", path, n);
    goto fail;
  }
  memset(h->upper, 0, h->cap * sizeof *h->upper);
  h->n = n; /* from here fm_hnsw_free releases the upper lists allocated so far */
  fm_vec_hash_init(&hs, 0);
  char pad[8];
  int bad = read_hashed(fd, h->labels, n * 8, &hs) || read_hashed(fd, h->levels, n, &hs) ||
            read_hashed(fd, h->deleted, n, &hs) ||
            read_hashed(fd, pad, pad8(n * 10) - n * 10, &hs) ||
            read_hashed(fd, h->vecs, n * fh.dim * 4, &hs);
  if (!bad && h->quantize)
    bad = read_hashed(fd, h->scales, n * 4, &hs) || read_hashed(fd, h->codes, n * fh.dim, &hs) ||
          read_hashed(fd, pad, pad8(n * 4 + n * fh.dim) - (n * 4 + n * fh.dim), &hs);
  if (!bad) bad = read_hashed(fd, h->links0, n * (h->M0 + 1) * 4, &hs);
  if (!bad && fh.upper) {
    if (!(flat = malloc(fh.upper * 4))) {
      rc = fm_err_set(err, FM_E_NOMEM, "vecmath: %s: out of memory", path);
      goto fail;
    }
    bad = read_hashed(fd, flat, fh.upper * 4, &hs);
  }
  if (bad) {
    rc = fm_err_set(err, FM_E_IO, "vecmath: %s: short read (file changed while loading?)", path);
    goto fail;
  }
  if (fm_vec_hash_final(&hs) != fh.body_hash) {
    rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: checksum mismatch (file corrupted)", path);
    goto fail;
  }
  /* The checksum matched; still check every value a search would trust, so a file written by a
   * buggy or hostile writer cannot send a search out of bounds. */
  uint64_t upper = 0, live = 0;
  for (size_t i = 0; i < n; i++) {
    if (h->levels[i] > fh.maxlevel || h->deleted[i] > 1) goto corrupt;
    upper += (uint64_t)h->levels[i] * (h->M + 1);
    live += !h->deleted[i];
  }
  if (upper != fh.upper || live != fh.live || (n && h->levels[fh.entry] != fh.maxlevel))
    goto corrupt;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    if (!h->levels[i]) continue;
    size_t sz = (size_t)h->levels[i] * (h->M + 1);
    if (!(h->upper[i] = malloc(sz * 4))) {
      rc = fm_err_set(err, FM_E_NOMEM, "vecmath: %s: out of memory", path);
      goto fail;
    }
    memcpy(h->upper[i], flat + off, sz * 4);
    off += sz;
  }
  for (size_t i = 0; i < n; i++)
    for (int l = 0; l <= h->levels[i]; l++) {
      const uint32_t *ls = links_at(h, (uint32_t)i, l);
      if (ls[0] > (l ? h->M : h->M0)) goto corrupt;
      for (uint32_t j = 1; j <= ls[0]; j++)
        if (ls[j] >= n) goto corrupt;
    }
  for (size_t i = 0; i < n; i++) {
    /* Deleted nodes are still traversed: they need their norms too. */
    const float *vi = vec_of(h, (uint32_t)i);
    if (h->quantize) h->norms[i] = fm_vec_dot(vi, vi, h->dim);
    if (h->deleted[i]) {
      h->freel[h->nfree++] = (uint32_t)i;
      continue;
    }
    if (map_get(h, h->labels[i]) != NONE) goto corrupt;
    map_put_nogrow(h, h->labels[i], (uint32_t)i);
  }
  h->live = live;
  h->entry = n ? (uint32_t)fh.entry : NONE;
  h->maxlevel = n ? (int)fh.maxlevel : -1;
  free(flat);
  close(fd);
  *out = h;
  return 0;
corrupt:
  rc = fm_err_set(err, FM_E_INVAL, "vecmath: %s: inconsistent graph (file corrupted)", path);
fail:
  free(flat);
  fm_hnsw_free(h);
  close(fd);
  return rc;
}
