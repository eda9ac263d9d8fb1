/* embedded.c: the embedded vector store (embedded.h). Why C and not Lua over fm.vecmath: the id
 * map, the metadata and the write-ahead log must be one state for every worker VM of the
 * process, and a Lua table belongs to one VM; here they sit next to the index, behind one writer
 * mutex and one read-write lock, and no Lua code runs while either is held. */
#include "embedded.h"

#include "log.h"
#include "vecmath.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define WAL_MAGIC "FMVWAL1\n"
#define META_MAGIC "FMVMETA1"
#define ID_MAX 1024
#define META_MAX 65536
#define META_FIELDS_MAX 64
#define SNAPSHOT_EVERY 20000
#define EXACT_BELOW 4096 /* brute force below this many vectors: exact, and as fast */
#define OP_UPSERT 1
#define OP_DELETE 2

/* ---- small helpers -------------------------------------------------------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32_of(const unsigned char *p, size_t n) {
  pthread_once(&crc_once, crc_init);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

struct wbuf {
  unsigned char *p;
  size_t len, cap;
  int oom;
};

static void wb_put(struct wbuf *b, const void *d, size_t n) {
  if (b->oom) return;
  if (b->len + n > b->cap) {
    size_t ncap = b->cap ? b->cap : 4096;
    while (ncap < b->len + n) ncap *= 2;
    unsigned char *np = realloc(b->p, ncap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = ncap;
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void wb_u32(struct wbuf *b, uint32_t v) {
  unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                        (unsigned char)(v >> 24)};
  wb_put(b, x, 4);
}

static void wb_u64(struct wbuf *b, uint64_t v) {
  wb_u32(b, (uint32_t)v);
  wb_u32(b, (uint32_t)(v >> 32));
}

static uint32_t rd_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const unsigned char *p) {
  return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static void unpack_f32(const unsigned char *p, size_t dim, float *out) {
  for (size_t i = 0; i < dim; i++) {
    uint32_t u = rd_u32(p + 4 * i);
    memcpy(&out[i], &u, 4);
  }
}

static void pack_f32(const float *v, size_t dim, unsigned char *out) {
  for (size_t i = 0; i < dim; i++) {
    uint32_t u;
    memcpy(&u, &v[i], 4);
    out[4 * i] = (unsigned char)u;
    out[4 * i + 1] = (unsigned char)(u >> 8);
    out[4 * i + 2] = (unsigned char)(u >> 16);
    out[4 * i + 3] = (unsigned char)(u >> 24);
  }
}

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* dir/name <- data, atomically: temp file, fsync, rename, directory fsync. */
static int write_atomic(const char *dir, const char *name, const void *data, size_t n,
                        struct fm_err *err) {
  char path[4096], tmp[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fm_err_set(err, FM_E_IO, "%s: %s", tmp, strerror(errno));
  if (write_all(fd, data, n) || fsync(fd)) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return fm_err_set(err, FM_E_IO, "%s: %s", tmp, strerror(e));
  }
  close(fd);
  if (rename(tmp, path) || fsync_dir(dir)) {
    int e = errno;
    unlink(tmp);
    return fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(e));
  }
  return 0;
}

/* The whole file in a malloc'd buffer: 0, 1 (cannot open it: errno says why) or FM_E_NOMEM. */
static int read_whole(const char *path, unsigned char **out, size_t *n) {
  *out = NULL;
  *n = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  struct stat st;
  if (fstat(fd, &st)) {
    close(fd);
    return 1;
  }
  unsigned char *p = malloc((size_t)st.st_size + 1);
  if (!p) {
    close(fd);
    return FM_E_NOMEM;
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  p[got] = 0;
  *out = p;
  *n = got;
  return 0;
}

static int mkdir_p(const char *path) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *s = tmp + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(tmp, 0700) && errno != EEXIST) return -1;
    *s = '/';
  }
  if (mkdir(tmp, 0700) && errno != EEXIST) return -1;
  return 0;
}

/* ---- metadata: the JSON text plus its fields, in one block ------------------------------------- */

enum { V_STR = 1, V_INT, V_NUM, V_BOOL };

struct fval {
  int type;
  long long i; /* INT, BOOL */
  double d;    /* NUM (and INT as a double) */
  const char *s;
  size_t n;
};

struct mfield {
  const char *key;
  size_t klen;
  struct fval v;
};

struct meta {
  size_t n;
  size_t textlen;
  char *text; /* canonical JSON (sorted keys, compact), NUL-terminated */
  struct mfield f[];
};

static int fval_from_json(json_t *j, struct fval *v) {
  memset(v, 0, sizeof *v);
  if (json_is_string(j)) {
    v->type = V_STR;
    v->s = json_string_value(j);
    v->n = json_string_length(j);
  } else if (json_is_integer(j)) {
    v->type = V_INT;
    v->i = json_integer_value(j);
    v->d = (double)v->i;
  } else if (json_is_real(j)) {
    v->type = V_NUM;
    v->d = json_real_value(j);
  } else if (json_is_boolean(j)) {
    v->type = V_BOOL;
    v->i = json_is_true(j);
  } else {
    return -1;
  }
  return 0;
}

static int fval_eq(const struct fval *a, const struct fval *b) {
  if (a->type == V_STR || b->type == V_STR)
    return a->type == b->type && a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
  if (a->type == V_BOOL || b->type == V_BOOL) return a->type == b->type && a->i == b->i;
  if (a->type == V_INT && b->type == V_INT) return a->i == b->i;
  return a->d == b->d;
}

/* Parses a metadata object (text, n bytes; NULL: {}). *out malloc'd (free()); 0 or FM_E_INVAL /
 * FM_E_NOMEM with err set. */
static int meta_parse(const char *text, size_t n, struct meta **out, struct fm_err *err) {
  *out = NULL;
  if (!text) text = "{}", n = 2;
  if (n > META_MAX) return fm_err_set(err, FM_E_INVAL, "metadata larger than 64 KiB");
  json_error_t je;
  json_t *o = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
  if (!o || !json_is_object(o)) {
    json_decref(o);
    return fm_err_set(err, FM_E_INVAL, "metadata: expected a JSON object");
  }
  if (json_object_size(o) > META_FIELDS_MAX) {
    json_decref(o);
    return fm_err_set(err, FM_E_INVAL, "metadata: more than %d fields", META_FIELDS_MAX);
  }
  char *canon = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
  size_t chars = canon ? strlen(canon) + 1 : 0, nf = json_object_size(o);
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v) {
    struct fval fv;
    if (fval_from_json(v, &fv)) {
      fm_err_set(err, FM_E_INVAL, "metadata.%s: expected a string, number or boolean", k);
      free(canon);
      json_decref(o);
      return FM_E_INVAL;
    }
    chars += strlen(k) + 1 + (fv.type == V_STR ? fv.n + 1 : 0);
  }
  struct meta *m = canon ? malloc(sizeof *m + nf * sizeof(struct mfield) + chars) : NULL;
  if (!m) {
    free(canon);
    json_decref(o);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  char *c = (char *)(m->f + nf);
  m->n = 0;
  m->text = c;
  m->textlen = strlen(canon);
  memcpy(c, canon, m->textlen + 1);
  c += m->textlen + 1;
  free(canon);
  json_object_foreach(o, k, v) {
    struct mfield *f = &m->f[m->n++];
    fval_from_json(v, &f->v);
    f->klen = strlen(k);
    memcpy(c, k, f->klen + 1);
    f->key = c;
    c += f->klen + 1;
    if (f->v.type == V_STR) {
      memcpy(c, f->v.s, f->v.n);
      c[f->v.n] = 0;
      f->v.s = c;
      c += f->v.n + 1;
    }
  }
  json_decref(o);
  *out = m;
  return 0;
}

/* ---- filters: [{field: value | [values]}, ...] ------------------------------------------------- */

struct cond {
  const char *key;
  size_t klen;
  size_t nv;
  struct fval *v;
};

struct alt {
  size_t nc;
  struct cond *c;
};

struct filter {
  json_t *root; /* the strings point into it */
  size_t na;
  struct alt *a;
  struct fval *vals;
  struct cond *conds;
};

static void filter_free(struct filter *f) {
  free(f->a);
  free(f->conds);
  free(f->vals);
  json_decref(f->root);
}

static int filter_parse(const char *text, size_t n, struct filter *f, struct fm_err *err) {
  memset(f, 0, sizeof *f);
  if (!text || n == 0) return 0;
  json_error_t je;
  f->root = json_loadb(text, n, 0, &je);
  if (!f->root || !(json_is_array(f->root) || json_is_null(f->root)))
    return fm_err_set(err, FM_E_INVAL, "filter: expected a list of alternatives");
  if (json_is_null(f->root)) return 0;
  size_t na = json_array_size(f->root), nc = 0, nv = 0;
  json_t *a, *v;
  size_t i;
  const char *k;
  json_array_foreach(f->root, i, a) {
    if (!json_is_object(a) || json_object_size(a) == 0)
      return fm_err_set(err, FM_E_INVAL, "filter[%zu]: expected a non-empty table", i + 1);
    json_object_foreach(a, k, v) {
      nc++;
      nv += json_is_array(v) ? json_array_size(v) : 1;
    }
  }
  f->a = calloc(na ? na : 1, sizeof *f->a);
  f->conds = calloc(nc ? nc : 1, sizeof *f->conds);
  f->vals = calloc(nv ? nv : 1, sizeof *f->vals);
  if (!f->a || !f->conds || !f->vals) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  size_t ci = 0, vi = 0;
  json_array_foreach(f->root, i, a) {
    struct alt *al = &f->a[f->na++];
    al->c = &f->conds[ci];
    json_object_foreach(a, k, v) {
      struct cond *c = &f->conds[ci++];
      al->nc++;
      c->key = k;
      c->klen = strlen(k);
      c->v = &f->vals[vi];
      if (json_is_array(v)) {
        size_t j;
        json_t *x;
        if (json_array_size(v) == 0)
          return fm_err_set(err, FM_E_INVAL, "filter[%zu].%s: empty list of values", i + 1, k);
        json_array_foreach(v, j, x) {
          if (fval_from_json(x, &f->vals[vi++]))
            return fm_err_set(err, FM_E_INVAL, "filter[%zu].%s: expected strings, numbers or "
                              "booleans", i + 1, k);
          c->nv++;
        }
      } else {
        if (fval_from_json(v, &f->vals[vi++]))
          return fm_err_set(err, FM_E_INVAL, "filter[%zu].%s: expected a string, number, "
                            "boolean or a list of them", i + 1, k);
        c->nv = 1;
      }
    }
  }
  return 0;
}

static int filter_match(const struct filter *f, const struct meta *m) {
  if (f->na == 0) return 1;
  for (size_t a = 0; a < f->na; a++) {
    const struct alt *al = &f->a[a];
    int all = 1;
    for (size_t c = 0; c < al->nc && all; c++) {
      const struct cond *cd = &al->c[c];
      const struct mfield *mf = NULL;
      for (size_t j = 0; j < m->n; j++)
        if (m->f[j].klen == cd->klen && memcmp(m->f[j].key, cd->key, cd->klen) == 0) {
          mf = &m->f[j];
          break;
        }
      int any = 0;
      for (size_t v = 0; mf && v < cd->nv && !any; v++) any = fval_eq(&mf->v, &cd->v[v]);
      all = any;
    }
    if (all) return 1;
  }
  return 0;
}

/* ---- collections ------------------------------------------------------------------------------ */

struct entry {
  struct entry *next; /* hash chain */
  uint64_t label;
  uint64_t hash;
  struct meta *meta;
  size_t idlen;
  char id[]; /* NUL-terminated */
};

struct fm_vcoll {
  char *dir;
  char *given; /* the spelling it was first opened with: found again without realpath() */
  size_t dim;
  struct fm_vcoll_params p;
  int refs; /* under g_reg_mu */
  int closed;
  struct fm_vcoll *next_open;
  pthread_mutex_t wlock;  /* writers: log, apply, snapshot */
  pthread_rwlock_t mlock; /* the maps */
  struct fm_hnsw *h;
  struct entry **buckets;
  size_t nbuckets, nentries;
  struct entry **labels; /* by label; NULL: free */
  size_t labels_cap;
  uint64_t next_label;
  int wal_fd, lock_fd;
  uint64_t seq, snap_seq;
  size_t wal_records;
  size_t snapshot_retry_at; /* after a failed snapshot: wal_records to try again at */
};

static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fm_vcoll *g_open;
static int g_atexit;

static uint64_t id_hash(const char *id, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)id[i]) * 0x100000001b3ull;
  return h ^ (h >> 31);
}

static struct entry *find(const struct fm_vcoll *c, const char *id, size_t n, uint64_t h) {
  if (!c->nbuckets) return NULL;
  for (struct entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->next)
    if (e->hash == h && e->idlen == n && memcmp(e->id, id, n) == 0) return e;
  return NULL;
}

/* Map changes; the caller holds mlock for writing. */
static int map_insert(struct fm_vcoll *c, struct entry *e) {
  if (c->nentries + 1 > c->nbuckets) {
    size_t nb = c->nbuckets ? c->nbuckets * 2 : 1024;
    struct entry **b = calloc(nb, sizeof *b);
    if (!b) return FM_E_NOMEM;
    for (size_t i = 0; i < c->nbuckets; i++) {
      for (struct entry *x = c->buckets[i], *nx; x; x = nx) {
        nx = x->next;
        x->next = b[x->hash & (nb - 1)];
        b[x->hash & (nb - 1)] = x;
      }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
  }
  if (e->label >= c->labels_cap) {
    size_t cap = c->labels_cap ? c->labels_cap : 1024;
    while (cap <= e->label) cap *= 2;
    struct entry **l = realloc(c->labels, cap * sizeof *l);
    if (!l) return FM_E_NOMEM;
    memset(l + c->labels_cap, 0, (cap - c->labels_cap) * sizeof *l);
    c->labels = l;
    c->labels_cap = cap;
  }
  size_t b = e->hash & (c->nbuckets - 1);
  e->next = c->buckets[b];
  c->buckets[b] = e;
  c->labels[e->label] = e;
  c->nentries++;
  if (e->label >= c->next_label) c->next_label = e->label + 1;
  return 0;
}

static void map_remove(struct fm_vcoll *c, struct entry *e) {
  struct entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->next;
  *pp = e->next;
  c->labels[e->label] = NULL;
  c->nentries--;
}

/* Applies an upsert (the vector packed). label 0: a new id gets the next label; a snapshot
 * load passes the label it had. m is taken (freed on failure). */
static int apply_upsert(struct fm_vcoll *c, const char *id, size_t idlen, const float *v,
                        struct meta *m, uint64_t label, struct fm_err *err) {
  uint64_t h = id_hash(id, idlen);
  pthread_rwlock_wrlock(&c->mlock);
  struct entry *e = find(c, id, idlen, h);
  struct meta *old = NULL;
  int rc = 0;
  if (e) {
    old = e->meta;
    e->meta = m;
  } else {
    e = malloc(sizeof *e + idlen + 1);
    if (!e) {
      rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
    } else {
      e->label = label ? label : (c->next_label ? c->next_label : 1);
      e->hash = h;
      e->meta = m;
      e->idlen = idlen;
      memcpy(e->id, id, idlen);
      e->id[idlen] = 0;
      if (map_insert(c, e)) {
        free(e);
        e = NULL;
        rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
      }
    }
  }
  uint64_t lab = e ? e->label : 0;
  pthread_rwlock_unlock(&c->mlock);
  free(old);
  if (rc) {
    free(m);
    return rc;
  }
  return fm_hnsw_add(c->h, lab, v, err);
}

static int apply_delete(struct fm_vcoll *c, const char *id, size_t idlen) {
  uint64_t h = id_hash(id, idlen);
  pthread_rwlock_rdlock(&c->mlock);
  struct entry *e = find(c, id, idlen, h);
  uint64_t lab = e ? e->label : 0;
  pthread_rwlock_unlock(&c->mlock);
  if (!e) return 0;
  /* out of the index first: a search that still finds the label finds no entry and skips it */
  fm_hnsw_delete(c->h, lab);
  pthread_rwlock_wrlock(&c->mlock);
  map_remove(c, e);
  pthread_rwlock_unlock(&c->mlock);
  free(e->meta);
  free(e);
  return 1;
}

static void coll_free(struct fm_vcoll *c) {
  if (!c) return;
  for (size_t i = 0; i < c->nbuckets; i++) {
    for (struct entry *e = c->buckets[i], *n; e; e = n) {
      n = e->next;
      free(e->meta);
      free(e);
    }
  }
  free(c->buckets);
  free(c->labels);
  fm_hnsw_free(c->h);
  if (c->wal_fd >= 0) close(c->wal_fd);
  if (c->lock_fd >= 0) close(c->lock_fd);
  pthread_mutex_destroy(&c->wlock);
  pthread_rwlock_destroy(&c->mlock);
  free(c->dir);
  free(c->given);
  free(c);
}

/* ---- the log ---------------------------------------------------------------------------------- */

static void rec_upsert(struct wbuf *b, uint64_t seq, const char *id, size_t idlen,
                       const unsigned char *vec, size_t dim, const char *meta, size_t metalen) {
  size_t plen = 1 + 8 + 4 + idlen + 4 + 4 * dim + 4 + metalen;
  size_t start = b->len;
  wb_u32(b, (uint32_t)plen);
  wb_u32(b, 0); /* crc, below */
  unsigned char op = OP_UPSERT;
  wb_put(b, &op, 1);
  wb_u64(b, seq);
  wb_u32(b, (uint32_t)idlen);
  wb_put(b, id, idlen);
  wb_u32(b, (uint32_t)dim);
  wb_put(b, vec, 4 * dim);
  wb_u32(b, (uint32_t)metalen);
  wb_put(b, meta, metalen);
  if (b->oom) return;
  uint32_t crc = crc32_of(b->p + start + 8, plen);
  unsigned char x[4] = {(unsigned char)crc, (unsigned char)(crc >> 8), (unsigned char)(crc >> 16),
                        (unsigned char)(crc >> 24)};
  memcpy(b->p + start + 4, x, 4);
}

static void rec_delete(struct wbuf *b, uint64_t seq, const char *id, size_t idlen) {
  size_t plen = 1 + 8 + 4 + idlen;
  size_t start = b->len;
  wb_u32(b, (uint32_t)plen);
  wb_u32(b, 0);
  unsigned char op = OP_DELETE;
  wb_put(b, &op, 1);
  wb_u64(b, seq);
  wb_u32(b, (uint32_t)idlen);
  wb_put(b, id, idlen);
  if (b->oom) return;
  uint32_t crc = crc32_of(b->p + start + 8, plen);
  unsigned char x[4] = {(unsigned char)crc, (unsigned char)(crc >> 8), (unsigned char)(crc >> 16),
                        (unsigned char)(crc >> 24)};
  memcpy(b->p + start + 4, x, 4);
}

/* Appends b to the log and makes it durable; on failure the log is cut back to where it was. */
static int wal_append(struct fm_vcoll *c, const struct wbuf *b, struct fm_err *err) {
  if (b->oom) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  off_t end = lseek(c->wal_fd, 0, SEEK_END);
  if (end < 0 || write_all(c->wal_fd, b->p, b->len) || fdatasync(c->wal_fd)) {
    int e = errno;
    if (end >= 0 && ftruncate(c->wal_fd, end) == 0) (void)fdatasync(c->wal_fd);
    return fm_err_set(err, FM_E_IO, "%s/wal.log: %s", c->dir, strerror(e));
  }
  return 0;
}

/* Replays the log after the snapshot; cuts off a torn tail. */
static int wal_replay(struct fm_vcoll *c, struct fm_err *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/wal.log", c->dir);
  unsigned char *p;
  size_t n;
  int rc = read_whole(path, &p, &n);
  if (rc == FM_E_NOMEM) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (rc && errno != ENOENT) return fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
  size_t at = 8, good = 8;
  float *v = malloc(c->dim * sizeof *v);
  if (!v) {
    free(p);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  if (n < 8 || memcmp(p, WAL_MAGIC, 8) != 0) {
    if (n >= 8) { /* shorter: a crash while the header was written */
      rc = fm_err_set(err, FM_E_PROTO, "%s: not a vector log", path);
      goto done;
    }
    good = 0;
  }
  while (good && at + 8 <= n) {
    uint32_t plen = rd_u32(p + at), crc = rd_u32(p + at + 4);
    if (plen < 13 || plen > n - at - 8 || crc32_of(p + at + 8, plen) != crc) break;
    const unsigned char *r = p + at + 8;
    uint64_t seq = rd_u64(r + 1);
    uint32_t idlen = rd_u32(r + 9);
    if (13 + (size_t)idlen > plen) break;
    const char *id = (const char *)r + 13;
    if (seq > c->snap_seq) {
      if (r[0] == OP_UPSERT) {
        const unsigned char *q = r + 13 + idlen;
        if (13 + (size_t)idlen + 4 > plen) break;
        uint32_t dim = rd_u32(q);
        if (dim != c->dim || 13 + (size_t)idlen + 8 + 4 * (size_t)dim > plen) break;
        uint32_t ml = rd_u32(q + 4 + 4 * (size_t)dim);
        if (13 + (size_t)idlen + 8 + 4 * (size_t)dim + ml != plen) break;
        struct meta *m;
        if ((rc = meta_parse((const char *)q + 8 + 4 * (size_t)dim, ml, &m, err))) goto done;
        unpack_f32(q + 4, dim, v);
        if ((rc = apply_upsert(c, id, idlen, v, m, 0, err))) goto done;
      } else if (r[0] == OP_DELETE) {
        apply_delete(c, id, idlen);
      } else {
        break;
      }
      if (seq > c->seq) c->seq = seq;
      c->wal_records++;
    }
    at += 8 + plen;
    good = at;
  }
  if (good != n) {
    fm_warn("vector log %s: cut %zu bytes of a torn or damaged tail", path, n - good);
  }
  c->wal_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c->wal_fd < 0) {
    rc = fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
    goto done;
  }
  if (good == 0) {
    if (ftruncate(c->wal_fd, 0) || write_all(c->wal_fd, WAL_MAGIC, 8) || fdatasync(c->wal_fd)) {
      rc = fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
      goto done;
    }
  } else if (good != n) {
    if (ftruncate(c->wal_fd, (off_t)good) || fdatasync(c->wal_fd)) {
      rc = fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
      goto done;
    }
  }
  rc = 0;
done:
  free(v);
  free(p);
  return rc;
}

/* ---- snapshots -------------------------------------------------------------------------------- */

static void remove_old_snapshots(const char *dir, uint64_t keep) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char keep_h[64], keep_m[64], path[4096];
  snprintf(keep_h, sizeof keep_h, "snap-%llu.hnsw", (unsigned long long)keep);
  snprintf(keep_m, sizeof keep_m, "snap-%llu.meta", (unsigned long long)keep);
  while ((de = readdir(d))) {
    if (strncmp(de->d_name, "snap-", 5) != 0) continue;
    if (strcmp(de->d_name, keep_h) == 0 || strcmp(de->d_name, keep_m) == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    unlink(path);
  }
  closedir(d);
}

/* The caller holds wlock (no writer runs; readers may). */
static int snapshot_locked(struct fm_vcoll *c, struct fm_err *err) {
  char name[64], path[4096];
  uint64_t seq = c->seq;
  snprintf(path, sizeof path, "%s/snap-%llu.hnsw", c->dir, (unsigned long long)seq);
  int rc = fm_hnsw_save(c->h, path, err);
  if (rc) return rc;
  struct wbuf b = {0};
  wb_put(&b, META_MAGIC, 8);
  wb_u64(&b, seq);
  wb_u64(&b, c->next_label);
  wb_u32(&b, (uint32_t)c->dim);
  pthread_rwlock_rdlock(&c->mlock);
  wb_u64(&b, c->nentries);
  for (size_t l = 0; l < c->labels_cap; l++) {
    const struct entry *e = c->labels[l];
    if (!e) continue;
    wb_u64(&b, e->label);
    wb_u32(&b, (uint32_t)e->idlen);
    wb_put(&b, e->id, e->idlen);
    wb_u32(&b, (uint32_t)e->meta->textlen);
    wb_put(&b, e->meta->text, e->meta->textlen);
  }
  pthread_rwlock_unlock(&c->mlock);
  if (!b.oom) wb_u32(&b, crc32_of(b.p, b.len));
  if (b.oom) {
    free(b.p);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  snprintf(name, sizeof name, "snap-%llu.meta", (unsigned long long)seq);
  rc = write_atomic(c->dir, name, b.p, b.len, err);
  free(b.p);
  if (rc) return rc;
  char cur[32];
  int cn = snprintf(cur, sizeof cur, "%llu\n", (unsigned long long)seq);
  if ((rc = write_atomic(c->dir, "CURRENT", cur, (size_t)cn, err))) return rc;
  /* the snapshot is durable: the log may go */
  c->snap_seq = seq;
  if (ftruncate(c->wal_fd, 8) || fdatasync(c->wal_fd)) {
    /* not fatal: the records it still holds are skipped by sequence number on replay */
    fm_err_set(err, FM_E_IO, "%s/wal.log: %s", c->dir, strerror(errno));
  } else {
    c->wal_records = 0;
  }
  remove_old_snapshots(c->dir, seq);
  return 0;
}

static int snapshot_load(struct fm_vcoll *c, struct fm_err *err) {
  char path[4096];
  unsigned char *p;
  size_t n;
  snprintf(path, sizeof path, "%s/CURRENT", c->dir);
  int rc = read_whole(path, &p, &n);
  if (rc == FM_E_NOMEM) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (rc && errno != ENOENT) return fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
  if (rc) { /* no snapshot yet */
    struct fm_hnsw_params hp = {.M = c->p.M, .ef_construction = c->p.ef_construction,
                                .ef_search = c->p.ef_search, .quantize = c->p.quantize};
    return fm_hnsw_new(c->dim, FM_METRIC_COSINE, &hp, &c->h, err);
  }
  unsigned long long seq = strtoull((char *)p, NULL, 10);
  free(p);
  snprintf(path, sizeof path, "%s/snap-%llu.hnsw", c->dir, seq);
  if ((rc = fm_hnsw_load(path, &c->h, err))) return rc;
  if (fm_hnsw_dim(c->h) != c->dim)
    return fm_err_set(err, FM_E_PROTO, "%s: %zu dimensions, the collection has %zu", path,
                      fm_hnsw_dim(c->h), c->dim);
  snprintf(path, sizeof path, "%s/snap-%llu.meta", c->dir, seq);
  rc = read_whole(path, &p, &n);
  if (rc == FM_E_NOMEM) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (rc) return fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
  rc = fm_err_set(err, FM_E_PROTO, "%s: corrupt snapshot (run `faultmaven kb reindex`)", path);
  if (n < 40 || memcmp(p, META_MAGIC, 8) != 0 || crc32_of(p, n - 4) != rd_u32(p + n - 4) ||
      rd_u64(p + 8) != seq || rd_u32(p + 24) != c->dim)
    goto done;
  c->seq = c->snap_seq = seq;
  uint64_t next_label = rd_u64(p + 16), count = rd_u64(p + 28);
  size_t at = 36, end = n - 4;
  for (uint64_t i = 0; i < count; i++) {
    if (at + 12 > end) goto done;
    uint64_t label = rd_u64(p + at);
    uint32_t idlen = rd_u32(p + at + 8);
    if (at + 12 + idlen + 4 > end) goto done;
    const char *id = (const char *)p + at + 12;
    uint32_t ml = rd_u32(p + at + 12 + idlen);
    if (at + 16 + idlen + ml > end) goto done;
    struct meta *m;
    if (meta_parse((const char *)p + at + 16 + idlen, ml, &m, err)) goto done;
    struct entry *e = malloc(sizeof *e + idlen + 1);
    if (!e) {
      free(m);
      rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
      goto done;
    }
    e->label = label;
    e->hash = id_hash(id, idlen);
    e->meta = m;
    e->idlen = idlen;
    memcpy(e->id, id, idlen);
    e->id[idlen] = 0;
    if (map_insert(c, e)) {
      free(m);
      free(e);
      rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
      goto done;
    }
    at += 16 + idlen + ml;
  }
  if (next_label > c->next_label) c->next_label = next_label;
  rc = 0;
done:
  free(p);
  return rc;
}

/* ---- open, close, drop ------------------------------------------------------------------------ */

static int read_dim(const char *dir, size_t *dim, struct fm_err *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/collection.json", dir);
  json_error_t je;
  json_t *o = json_load_file(path, 0, &je);
  if (!o) {
    if (access(path, F_OK) != 0) return 1; /* none */
    return fm_err_set(err, FM_E_PROTO, "%s: %s", path, je.text);
  }
  json_t *d = json_object_get(o, "dim");
  int rc = 0;
  if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 65536)
    rc = fm_err_set(err, FM_E_PROTO, "%s: no valid \"dim\"", path);
  else
    *dim = (size_t)json_integer_value(d);
  json_decref(o);
  return rc;
}

static void close_all_atexit(void) { fm_vcoll_close_all(); }

/* The registry's key for dir: its real path when it exists (two spellings of one directory are
 * one collection), else dir as given. */
static const char *dir_key(const char *dir, char *buf) {
  return realpath(dir, buf) ? buf : dir;
}

int fm_vcoll_open(const char *dir_in, size_t dim, const struct fm_vcoll_params *p,
                  struct fm_vcoll **out, struct fm_err *err) {
  *out = NULL;
  if (strlen(dir_in) >= 3800) return fm_err_set(err, FM_E_INVAL, "vector directory path too long");
  /* Every fm.vector call opens its collection: the usual spelling is matched first, so the hot
   * path costs a string compare under the registry lock, not the syscalls of realpath(). */
  pthread_mutex_lock(&g_reg_mu);
  for (struct fm_vcoll *c = g_open; c; c = c->next_open) {
    if (!c->given || strcmp(c->given, dir_in) != 0) continue;
    if (dim && dim != c->dim) break; /* the slow path below reports it */
    c->refs++;
    *out = c;
    pthread_mutex_unlock(&g_reg_mu);
    return 0;
  }
  pthread_mutex_unlock(&g_reg_mu);
  char real[PATH_MAX];
  const char *dir = dir_key(dir_in, real);
  if (strlen(dir) >= 3800) return fm_err_set(err, FM_E_INVAL, "vector directory path too long");
  pthread_mutex_lock(&g_reg_mu);
  if (!g_atexit) {
    g_atexit = 1;
    atexit(close_all_atexit);
  }
  for (struct fm_vcoll *c = g_open; c; c = c->next_open) {
    if (strcmp(c->dir, dir) != 0) continue;
    if (dim && dim != c->dim) {
      pthread_mutex_unlock(&g_reg_mu);
      return fm_err_set(err, FM_VEC_E_DIM, "the collection holds %zu-dimension vectors, not %zu",
                        c->dim, dim);
    }
    c->refs++;
    *out = c;
    pthread_mutex_unlock(&g_reg_mu);
    return 0;
  }
  struct fm_vcoll *c = NULL;
  size_t have = 0;
  int rc = read_dim(dir, &have, err);
  if (rc < 0) goto fail;
  if (rc == 1) { /* no collection */
    if (!dim) {
      rc = fm_err_set(err, FM_VEC_E_NOCOLL, "no such collection");
      goto fail;
    }
    if (mkdir_p(dir)) {
      rc = fm_err_set(err, FM_E_IO, "%s: %s", dir, strerror(errno));
      goto fail;
    }
    char js[256];
    int jn = snprintf(js, sizeof js,
                      "{\"dim\":%zu,\"metric\":\"cosine\",\"m\":%zu,\"ef_construction\":%zu,"
                      "\"quantize\":%s,\"format\":1}\n",
                      dim, p ? p->M : 0, p ? p->ef_construction : 0,
                      p && p->quantize ? "true" : "false");
    if ((rc = write_atomic(dir, "collection.json", js, (size_t)jn, err))) goto fail;
    have = dim;
    if (dir != real && realpath(dir_in, real) && strlen(real) < 3800) dir = real;
  } else if (dim && dim != have) {
    rc = fm_err_set(err, FM_VEC_E_DIM, "the collection holds %zu-dimension vectors, not %zu",
                    have, dim);
    goto fail;
  }
  c = calloc(1, sizeof *c);
  if (!c || !(c->dir = strdup(dir)) || !(c->given = strdup(dir_in))) {
    if (c) free(c->dir);
    free(c);
    c = NULL;
    rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto fail;
  }
  c->dim = have;
  if (p) c->p = *p;
  if (!c->p.snapshot_every) c->p.snapshot_every = SNAPSHOT_EVERY;
  c->wal_fd = c->lock_fd = -1;
  c->next_label = 1;
  pthread_mutex_init(&c->wlock, NULL);
  pthread_rwlock_init(&c->mlock, NULL);
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/LOCK", dir);
  c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c->lock_fd < 0) {
    rc = fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  if (flock(c->lock_fd, LOCK_EX | LOCK_NB)) {
    rc = fm_err_set(err, FM_VEC_E_BUSY, "%s is open in another process", dir);
    goto fail;
  }
  if ((rc = snapshot_load(c, err))) goto fail;
  if ((rc = wal_replay(c, err))) goto fail;
  c->refs = 2; /* the registry's and the caller's */
  c->next_open = g_open;
  g_open = c;
  *out = c;
  pthread_mutex_unlock(&g_reg_mu);
  return 0;
fail:
  pthread_mutex_unlock(&g_reg_mu);
  coll_free(c);
  return rc;
}

void fm_vcoll_release(struct fm_vcoll *c) {
  if (!c) return;
  pthread_mutex_lock(&g_reg_mu);
  int last = --c->refs == 0;
  pthread_mutex_unlock(&g_reg_mu);
  if (last) coll_free(c);
}

/* Takes c out of the registry (caller holds g_reg_mu) and marks it closed. */
static void unregister(struct fm_vcoll *c) {
  for (struct fm_vcoll **pp = &g_open; *pp; pp = &(*pp)->next_open) {
    if (*pp == c) {
      *pp = c->next_open;
      break;
    }
  }
  pthread_mutex_lock(&c->wlock);
  c->closed = 1;
  pthread_mutex_unlock(&c->wlock);
}

void fm_vcoll_close_all(void) {
  pthread_mutex_lock(&g_reg_mu);
  while (g_open) {
    struct fm_vcoll *c = g_open;
    pthread_mutex_lock(&c->wlock);
    if (c->wal_records > 0) {
      struct fm_err err = {0};
      if (snapshot_locked(c, &err))
        fm_warn("vector snapshot at close failed: %s", err.msg);
    }
    pthread_mutex_unlock(&c->wlock);
    unregister(c);
    int last = --c->refs == 0;
    if (last) coll_free(c);
  }
  pthread_mutex_unlock(&g_reg_mu);
}

static int rm_tree_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : -1;
  struct dirent *de;
  char path[4096];
  while ((de = readdir(d))) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    unlink(path);
  }
  closedir(d);
  return rmdir(dir);
}

int fm_vcoll_drop(const char *dir_in, struct fm_err *err) {
  char real[PATH_MAX];
  const char *dir = dir_key(dir_in, real);
  pthread_mutex_lock(&g_reg_mu);
  struct fm_vcoll *found = NULL;
  for (struct fm_vcoll *c = g_open; c; c = c->next_open)
    if (strcmp(c->dir, dir) == 0) found = c;
  int rc = 0;
  if (found) {
    unregister(found);
    if (--found->refs == 0) {
      coll_free(found);
    } else { /* still in use by a call: its files go, its fds stay open until it is freed */
    }
  } else {
    char path[4096];
    snprintf(path, sizeof path, "%s/LOCK", dir);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB)) rc = fm_err_set(err, FM_VEC_E_BUSY,
                                                                 "%s is open in another process",
                                                                 dir);
    if (fd >= 0) close(fd);
  }
  if (!rc && rm_tree_files(dir)) rc = fm_err_set(err, FM_E_IO, "%s: %s", dir, strerror(errno));
  pthread_mutex_unlock(&g_reg_mu);
  return rc;
}

/* ---- operations ------------------------------------------------------------------------------- */

size_t fm_vcoll_dim(const struct fm_vcoll *c) { return c->dim; }

size_t fm_vcoll_count(struct fm_vcoll *c) {
  pthread_rwlock_rdlock(&c->mlock);
  size_t n = c->nentries;
  pthread_rwlock_unlock(&c->mlock);
  return n;
}

static int check_id(const char *id, size_t n, size_t i, struct fm_err *err) {
  if (n == 0 || n > ID_MAX || memchr(id, 0, n))
    return fm_err_set(err, FM_E_INVAL, "items[%zu].id: expected 1..1024 bytes without NUL", i + 1);
  return 0;
}

static void maybe_snapshot(struct fm_vcoll *c) {
  if (c->wal_records < c->p.snapshot_every || c->wal_records < c->snapshot_retry_at) return;
  struct fm_err err = {0};
  if (snapshot_locked(c, &err)) {
    /* the log keeps everything; try again after as many records again, not on every call */
    c->snapshot_retry_at = c->wal_records + c->p.snapshot_every;
    fm_warn("vector snapshot of %s failed (the log keeps everything): %s", c->dir, err.msg);
  } else {
    c->snapshot_retry_at = 0;
  }
}

int fm_vcoll_upsert(struct fm_vcoll *c, size_t n, const char *const *ids, const size_t *idlen,
                    const unsigned char *const *vectors, const char *const *metas,
                    const size_t *metalen, struct fm_err *err) {
  struct meta **ms = calloc(n ? n : 1, sizeof *ms);
  float *v = malloc(c->dim * sizeof *v);
  struct wbuf b = {0};
  int rc = 0;
  size_t applied = 0;
  if (!ms || !v) {
    rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    if ((rc = check_id(ids[i], idlen[i], i, err))) goto done;
    if ((rc = meta_parse(metas ? metas[i] : NULL, metas ? metalen[i] : 0, &ms[i], err))) {
      char m[sizeof err->msg];
      snprintf(m, sizeof m, "%s", err->msg);
      rc = fm_err_set(err, rc, "items[%zu].%s", i + 1, m);
      goto done;
    }
    unpack_f32(vectors[i], c->dim, v);
    for (size_t j = 0; j < c->dim; j++) {
      if (!isfinite(v[j])) {
        rc = fm_err_set(err, FM_E_INVAL, "items[%zu].vector: not a finite number at %zu", i + 1,
                        j + 1);
        goto done;
      }
    }
  }
  pthread_mutex_lock(&c->wlock);
  if (c->closed) {
    pthread_mutex_unlock(&c->wlock);
    rc = fm_err_set(err, FM_VEC_E_NOCOLL, "the collection was dropped");
    goto done;
  }
  for (size_t i = 0; i < n; i++)
    rec_upsert(&b, c->seq + 1 + i, ids[i], idlen[i], vectors[i], c->dim, ms[i]->text,
               ms[i]->textlen);
  if ((rc = wal_append(c, &b, err))) {
    pthread_mutex_unlock(&c->wlock);
    goto done;
  }
  c->seq += n;
  c->wal_records += n;
  for (; applied < n; applied++) {
    unpack_f32(vectors[applied], c->dim, v);
    struct meta *m = ms[applied];
    ms[applied] = NULL;
    if ((rc = apply_upsert(c, ids[applied], idlen[applied], v, m, 0, err))) break;
  }
  if (!rc) maybe_snapshot(c);
  pthread_mutex_unlock(&c->wlock);
done:
  if (ms)
    for (size_t i = 0; i < n; i++) free(ms[i]);
  free(ms);
  free(v);
  free(b.p);
  return rc ? rc : (int)n;
}

int fm_vcoll_delete(struct fm_vcoll *c, size_t n, const char *const *ids, const size_t *idlen,
                    struct fm_err *err) {
  for (size_t i = 0; i < n; i++)
    if (check_id(ids[i], idlen[i], i, err)) return FM_E_INVAL;
  struct wbuf b = {0};
  int rc = 0, count = 0;
  pthread_mutex_lock(&c->wlock);
  if (c->closed) {
    rc = fm_err_set(err, FM_VEC_E_NOCOLL, "the collection was dropped");
    goto done;
  }
  for (size_t i = 0; i < n; i++) rec_delete(&b, c->seq + 1 + i, ids[i], idlen[i]);
  if (n && (rc = wal_append(c, &b, err))) goto done;
  c->seq += n;
  c->wal_records += n;
  for (size_t i = 0; i < n; i++) count += apply_delete(c, ids[i], idlen[i]);
  maybe_snapshot(c);
done:
  pthread_mutex_unlock(&c->wlock);
  free(b.p);
  return rc ? rc : count;
}

struct search_ud {
  const struct fm_vcoll *c;
  const struct filter *f;
};

static int search_filter(uint64_t label, void *ud) {
  const struct search_ud *s = ud;
  if (label >= s->c->labels_cap) return 0;
  const struct entry *e = s->c->labels[label];
  return e && filter_match(s->f, e->meta);
}

void fm_vresults_free(struct fm_vresult *r, size_t n) {
  if (!r) return;
  for (size_t i = 0; i < n; i++) {
    free(r[i].id);
    free(r[i].meta);
  }
  free(r);
}

int fm_vcoll_search(struct fm_vcoll *c, const unsigned char *q, size_t k, const char *ftext,
                    size_t flen, struct fm_vresult **out, size_t *nout, struct fm_err *err) {
  *out = NULL;
  *nout = 0;
  if (k == 0) return 0;
  if (k > 10000) return fm_err_set(err, FM_E_INVAL, "k: at most 10000");
  struct filter f;
  int rc = filter_parse(ftext, flen, &f, err);
  float *qv = malloc(c->dim * sizeof *qv);
  uint64_t *labels = malloc(k * sizeof *labels);
  float *scores = malloc(k * sizeof *scores);
  struct fm_vresult *r = calloc(k, sizeof *r);
  size_t got = 0, nr = 0;
  if (rc) goto done;
  if (!qv || !labels || !scores || !r) {
    rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto done;
  }
  unpack_f32(q, c->dim, qv);
  for (size_t j = 0; j < c->dim; j++)
    if (!isfinite(qv[j])) {
      rc = fm_err_set(err, FM_E_INVAL, "query vector: not a finite number at %zu", j + 1);
      goto done;
    }
  struct search_ud ud = {c, &f};
  pthread_rwlock_rdlock(&c->mlock);
  if (c->nentries <= EXACT_BELOW)
    got = fm_hnsw_exact(c->h, qv, k, search_filter, &ud, labels, scores);
  else
    got = fm_hnsw_search(c->h, qv, k, c->p.ef_search, search_filter, &ud, labels, scores);
  for (size_t i = 0; i < got; i++) {
    const struct entry *e = labels[i] < c->labels_cap ? c->labels[labels[i]] : NULL;
    if (!e) continue; /* deleted meanwhile */
    r[nr].id = strdup(e->id);
    r[nr].meta = strdup(e->meta->text);
    double s = (1.0 + (double)scores[i]) / 2.0;
    r[nr].score = s < 0 ? 0 : s > 1 ? 1 : s;
    if (!r[nr].id || !r[nr].meta) {
      nr++;
      rc = fm_err_set(err, FM_E_NOMEM, "out of memory");
      break;
    }
    nr++;
  }
  pthread_rwlock_unlock(&c->mlock);
done:
  filter_free(&f);
  free(qv);
  free(labels);
  free(scores);
  if (rc) {
    fm_vresults_free(r, nr);
    return rc;
  }
  *out = r;
  *nout = nr;
  return 0;
}

int fm_vcoll_get(struct fm_vcoll *c, const char *id, size_t idlen, unsigned char *vec,
                 char **meta) {
  *meta = NULL;
  float *v = malloc(c->dim * sizeof *v);
  if (!v) return 0;
  int found = 0;
  pthread_rwlock_rdlock(&c->mlock);
  const struct entry *e = find(c, id, idlen, id_hash(id, idlen));
  if (e && fm_hnsw_get(c->h, e->label, v) == 0) {
    *meta = strdup(e->meta->text);
    found = *meta != NULL;
  }
  pthread_rwlock_unlock(&c->mlock);
  if (found) pack_f32(v, c->dim, vec);
  free(v);
  return found;
}

uint64_t fm_vcoll_ids(struct fm_vcoll *c, uint64_t after, size_t limit, char ***out, size_t *n) {
  *out = NULL;
  *n = 0;
  char **ids = calloc(limit ? limit : 1, sizeof *ids);
  if (!ids) return 0;
  uint64_t next = 0;
  size_t got = 0;
  pthread_rwlock_rdlock(&c->mlock);
  uint64_t l = after + 1;
  for (; l < c->labels_cap && got < limit; l++) {
    const struct entry *e = c->labels[l];
    if (!e) continue;
    if (!(ids[got] = strdup(e->id))) break;
    got++;
  }
  if (got == limit) {
    for (uint64_t m = l; m < c->labels_cap; m++)
      if (c->labels[m]) {
        next = l - 1;
        break;
      }
  }
  pthread_rwlock_unlock(&c->mlock);
  *out = ids;
  *n = got;
  return next;
}

int fm_vcoll_snapshot(struct fm_vcoll *c, struct fm_err *err) {
  pthread_mutex_lock(&c->wlock);
  int rc = c->closed ? fm_err_set(err, FM_VEC_E_NOCOLL, "the collection was dropped")
                     : snapshot_locked(c, err);
  pthread_mutex_unlock(&c->wlock);
  return rc;
}
