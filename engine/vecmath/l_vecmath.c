/* fm.vecmath: the Lua binding of vecmath.h (issue 7).
 *   simd() -> "avx2+fma" | "portable"
 *   pack({floats}) -> packed little-endian float32 string; unpack(s) -> {floats}
 *   dot(a, b), cosine(a, b), l2sq(a, b) on packed strings of equal length; normalize(s) -> packed
 *   hnsw{dim, metric = "cosine"|"ip"|"l2", M, ef_construction, ef_search, quantize, seed} -> idx
 *   load(path) -> idx | nil, message, code
 *   share(name, idx) / shared(name) -> idx | nil / unshare(name): a process-wide registry, so the
 *   VMs of several workers use one index (refcounted: the index lives while any handle or the
 *   registry holds it).
 * Index methods: add, delete, contains, search, get, count, dim, metric, memory, save, close (also
 * __gc and __close; closing drops only this handle's reference).
 * A search filter is a Lua function called during the search under the index's read lock: it is
 * called protected, and its error is raised again once the lock is released. Index calls from
 * inside a filter are refused (they could deadlock on the lock the search holds). */
#include "vecmath.h"
#include "vm.h"

#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HNSW_MT "fm.vecmath.hnsw"
#define MAX_K 100000

/* An index shared by handles in any number of VMs. */
struct shared_idx {
  struct fm_hnsw *h;
  int refs; /* atomic */
};

struct handle {
  struct shared_idx *s; /* NULL once closed */
};

struct reg_entry {
  char *name;
  struct shared_idx *s;
  struct reg_entry *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct reg_entry *registry;
static _Thread_local int in_filter;

static void ref_drop(struct shared_idx *s) {
  if (s && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    fm_hnsw_free(s->h);
    free(s);
  }
}

static int push_fail(lua_State *L, const struct fm_err *e) {
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, e->code == FM_E_NOTFOUND ? "notfound" : fm_err_name(e->code));
  return 3;
}

/* ---- packed vectors ----------------------------------------------------------------------- */

/* The floats of a packed string argument; copied into a userdata when not 4-byte aligned. */
static const float *check_vec(lua_State *L, int idx, size_t *n) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (len % 4) luaL_argerror(L, idx, "packed float32 vector (length not a multiple of 4)");
  *n = len / 4;
  if (((uintptr_t)s & 3) == 0) return (const float *)(const void *)s;
  void *copy = lua_newuserdatauv(L, len ? len : 1, 0);
  memcpy(copy, s, len);
  lua_replace(L, idx); /* keeps the copy alive as the argument */
  return copy;
}

static int l_simd(lua_State *L) {
  lua_pushstring(L, fm_vec_simd());
  return 1;
}

static int l_pack(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  luaL_Buffer b;
  float *out = (float *)(void *)luaL_buffinitsize(L, &b, (size_t)n * 4);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    int ok;
    lua_Number x = lua_tonumberx(L, -1, &ok);
    if (!ok) return luaL_error(L, "pack: element %d is not a number", (int)i);
    lua_pop(L, 1);
    float f = (float)x;
    memcpy((char *)out + (size_t)(i - 1) * 4, &f, 4);
  }
  luaL_pushresultsize(&b, (size_t)n * 4);
  return 1;
}

static int l_unpack(lua_State *L) {
  size_t n;
  const float *v = check_vec(L, 1, &n);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int two_vecs(lua_State *L, const float **a, const float **b) {
  size_t na, nb;
  *a = check_vec(L, 1, &na);
  *b = check_vec(L, 2, &nb);
  if (na != nb) luaL_error(L, "vectors of different lengths (%d and %d)", (int)na, (int)nb);
  return (int)na;
}

static int l_dot(lua_State *L) {
  const float *a, *b;
  size_t n = (size_t)two_vecs(L, &a, &b);
  lua_pushnumber(L, fm_vec_dot(a, b, n));
  return 1;
}

static int l_cosine(lua_State *L) {
  const float *a, *b;
  size_t n = (size_t)two_vecs(L, &a, &b);
  lua_pushnumber(L, fm_vec_cosine(a, b, n));
  return 1;
}

static int l_l2sq(lua_State *L) {
  const float *a, *b;
  size_t n = (size_t)two_vecs(L, &a, &b);
  lua_pushnumber(L, fm_vec_l2sq(a, b, n));
  return 1;
}

static int l_normalize(lua_State *L) {
  size_t n;
  const float *v = check_vec(L, 1, &n);
  luaL_Buffer b;
  float *out = (float *)(void *)luaL_buffinitsize(L, &b, n * 4);
  /* luaL_Buffer storage is malloc'd or a stack array, both suitably aligned for float. */
  memcpy(out, v, n * 4);
  fm_vec_normalize(out, n);
  luaL_pushresultsize(&b, n * 4);
  return 1;
}

/* ---- index handles ------------------------------------------------------------------------ */

static struct handle *new_handle(lua_State *L) {
  struct handle *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL; /* created closed: a failure before the index exists leaves nothing to free */
  luaL_setmetatable(L, HNSW_MT);
  return u;
}

static struct fm_hnsw *check_idx(lua_State *L) {
  struct handle *u = luaL_checkudata(L, 1, HNSW_MT);
  if (!u->s) luaL_error(L, "vecmath: index is closed");
  if (in_filter) luaL_error(L, "vecmath: index calls are not allowed inside a search filter");
  return u->s->h;
}

static const float *check_dim_vec(lua_State *L, int idx, struct fm_hnsw *h) {
  size_t n;
  const float *v = check_vec(L, idx, &n);
  if (n != fm_hnsw_dim(h))
    luaL_error(L, "vecmath: vector has %d floats, the index has dim %d", (int)n,
               (int)fm_hnsw_dim(h));
  return v;
}

static uint64_t check_label(lua_State *L, int idx) {
  lua_Integer l = luaL_checkinteger(L, idx);
  luaL_argcheck(L, l >= 0, idx, "label must be a non-negative integer");
  return (uint64_t)l;
}

static size_t opt_size(lua_State *L, int t, const char *field, size_t dflt, size_t max) {
  lua_getfield(L, t, field);
  size_t r = dflt;
  if (!lua_isnil(L, -1)) {
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < 0 || (size_t)v > max)
      luaL_error(L, "vecmath: %s must be an integer in 0..%d", field, (int)max);
    r = (size_t)v;
  }
  lua_pop(L, 1);
  return r;
}

static enum fm_metric check_metric(lua_State *L, const char *m) {
  if (!strcmp(m, "cosine")) return FM_METRIC_COSINE;
  if (!strcmp(m, "ip")) return FM_METRIC_IP;
  if (!strcmp(m, "l2")) return FM_METRIC_L2;
  luaL_error(L, "vecmath: metric must be \"cosine\", \"ip\" or \"l2\" (got \"%s\")", m);
  return FM_METRIC_IP;
}

static int adopt(lua_State *L, struct handle *u, struct fm_hnsw *h) {
  struct shared_idx *s = malloc(sizeof *s);
  if (!s) {
    fm_hnsw_free(h);
    return luaL_error(L, "vecmath: out of memory");
  }
  s->h = h;
  s->refs = 1;
  u->s = s;
  return 1;
}

static int l_hnsw(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t dim = opt_size(L, 1, "dim", 0, 65536);
  if (!dim) return luaL_error(L, "vecmath: dim is required (1..65536)");
  lua_getfield(L, 1, "metric");
  enum fm_metric metric = check_metric(L, luaL_optstring(L, -1, "cosine"));
  lua_pop(L, 1);
  struct fm_hnsw_params p = {0};
  p.M = opt_size(L, 1, "M", 0, 512);
  p.ef_construction = opt_size(L, 1, "ef_construction", 0, 100000);
  p.ef_search = opt_size(L, 1, "ef_search", 0, 100000);
  p.seed = (uint64_t)opt_size(L, 1, "seed", 0, (size_t)INT32_MAX);
  lua_getfield(L, 1, "quantize");
  p.quantize = lua_toboolean(L, -1);
  lua_pop(L, 1);
  struct handle *u = new_handle(L);
  struct fm_hnsw *h;
  struct fm_err e;
  if (fm_hnsw_new(dim, metric, &p, &h, &e)) return push_fail(L, &e);
  return adopt(L, u, h);
}

static int l_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct handle *u = new_handle(L);
  struct fm_hnsw *h;
  struct fm_err e;
  if (fm_hnsw_load(path, &h, &e)) return push_fail(L, &e);
  return adopt(L, u, h);
}

static int l_add(lua_State *L) {
  struct fm_hnsw *h = check_idx(L);
  uint64_t label = check_label(L, 2);
  const float *v = check_dim_vec(L, 3, h);
  struct fm_err e;
  if (fm_hnsw_add(h, label, v, &e)) return push_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_delete(lua_State *L) {
  struct fm_hnsw *h = check_idx(L);
  lua_pushboolean(L, fm_hnsw_delete(h, check_label(L, 2)) == 0);
  return 1;
}

static int l_contains(lua_State *L) {
  struct fm_hnsw *h = check_idx(L);
  lua_pushboolean(L, fm_hnsw_contains(h, check_label(L, 2)));
  return 1;
}

static int l_get(lua_State *L) {
  struct fm_hnsw *h = check_idx(L);
  uint64_t label = check_label(L, 2);
  size_t dim = fm_hnsw_dim(h);
  luaL_Buffer b;
  float *out = (float *)(void *)luaL_buffinitsize(L, &b, dim * 4);
  if (fm_hnsw_get(h, label, out)) {
    lua_pushnil(L);
    return 1;
  }
  luaL_pushresultsize(&b, dim * 4);
  return 1;
}

struct lfilter {
  lua_State *L;
  int fn, errslot, failed;
};

static int filter_cb(uint64_t label, void *ud) {
  struct lfilter *f = ud;
  if (f->failed) return 0;
  lua_State *L = f->L;
  lua_pushvalue(L, f->fn);
  lua_pushinteger(L, (lua_Integer)label);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_replace(L, f->errslot); /* raised again after the search released its lock */
    f->failed = 1;
    return 0;
  }
  int keep = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return keep;
}

static int l_search(lua_State *L) {
  lua_settop(L, 4);
  struct fm_hnsw *h = check_idx(L);
  const float *q = check_dim_vec(L, 2, h);
  lua_Integer k = luaL_checkinteger(L, 3);
  luaL_argcheck(L, k >= 0 && k <= MAX_K, 3, "k must be in 0..100000");
  size_t ef = 0;
  int exact = 0, has_filter = 0;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    ef = opt_size(L, 4, "ef", 0, 100000);
    lua_getfield(L, 4, "exact");
    exact = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 4, "filter");
    if (!lua_isnil(L, -1)) {
      luaL_argcheck(L, lua_isfunction(L, -1), 4, "filter must be a function");
      has_filter = 1;
    }
  }
  lua_settop(L, 5); /* 5: the filter or nil */
  lua_pushnil(L);   /* 6: the filter's error, if any */
  struct lfilter f = {L, 5, 6, 0};
  luaL_checkstack(L, 8, "vecmath: search");
  size_t kk = (size_t)k;
  void *mem = lua_newuserdatauv(L, kk ? kk * (sizeof(uint64_t) + sizeof(float)) : 1, 0);
  uint64_t *labels = mem;
  float *scores = (float *)(labels + kk);
  fm_hnsw_filter cb = has_filter ? filter_cb : NULL;
  in_filter++;
  size_t got = exact ? fm_hnsw_exact(h, q, kk, cb, &f, labels, scores)
                     : fm_hnsw_search(h, q, kk, ef, cb, &f, labels, scores);
  in_filter--;
  if (f.failed) {
    lua_pushvalue(L, 6);
    return lua_error(L);
  }
  lua_createtable(L, (int)got, 0);
  for (size_t i = 0; i < got; i++) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)labels[i]);
    lua_setfield(L, -2, "label");
    lua_pushnumber(L, scores[i]);
    lua_setfield(L, -2, "score");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fm_hnsw_count(check_idx(L)));
  return 1;
}

static int l_dim(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fm_hnsw_dim(check_idx(L)));
  return 1;
}

static int l_metric(lua_State *L) {
  static const char *const names[] = {"ip", "cosine", "l2"};
  lua_pushstring(L, names[fm_hnsw_metric(check_idx(L))]);
  return 1;
}

static int l_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fm_hnsw_memory(check_idx(L)));
  return 1;
}

static int l_save(lua_State *L) {
  struct fm_hnsw *h = check_idx(L);
  const char *path = luaL_checkstring(L, 2);
  struct fm_err e;
  if (fm_hnsw_save(h, path, &e)) return push_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  struct handle *u = luaL_checkudata(L, 1, HNSW_MT);
  if (in_filter && u->s) return luaL_error(L, "vecmath: cannot close an index inside a filter");
  struct shared_idx *s = u->s;
  u->s = NULL;
  ref_drop(s);
  return 0;
}

static int l_gc(lua_State *L) {
  struct handle *u = luaL_checkudata(L, 1, HNSW_MT);
  struct shared_idx *s = u->s;
  u->s = NULL;
  ref_drop(s);
  return 0;
}

static int l_tostring(lua_State *L) {
  struct handle *u = luaL_checkudata(L, 1, HNSW_MT);
  if (!u->s) lua_pushliteral(L, "fm.vecmath.hnsw (closed)");
  else if (in_filter) /* no lock may be taken here (see check_idx) */
    lua_pushfstring(L, "fm.vecmath.hnsw (dim %d)", (int)fm_hnsw_dim(u->s->h));
  else
    lua_pushfstring(L, "fm.vecmath.hnsw (dim %d, %d vectors)", (int)fm_hnsw_dim(u->s->h),
                    (int)fm_hnsw_count(u->s->h));
  return 1;
}

/* ---- the process-wide registry ------------------------------------------------------------- */

static int l_share(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  struct handle *u = luaL_checkudata(L, 2, HNSW_MT);
  if (!u->s) return luaL_error(L, "vecmath: index is closed");
  char *copy = strdup(name);
  struct reg_entry *fresh = malloc(sizeof *fresh);
  if (!copy || !fresh) {
    free(copy);
    free(fresh);
    return luaL_error(L, "vecmath: out of memory");
  }
  __atomic_add_fetch(&u->s->refs, 1, __ATOMIC_ACQ_REL);
  struct shared_idx *old = NULL;
  pthread_mutex_lock(&reg_mu);
  struct reg_entry *e = registry;
  while (e && strcmp(e->name, name)) e = e->next;
  if (e) {
    old = e->s;
    e->s = u->s;
    free(copy);
    free(fresh);
  } else {
    fresh->name = copy;
    fresh->s = u->s;
    fresh->next = registry;
    registry = fresh;
  }
  pthread_mutex_unlock(&reg_mu);
  ref_drop(old);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_shared(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  struct handle *u = new_handle(L);
  pthread_mutex_lock(&reg_mu);
  struct reg_entry *e = registry;
  while (e && strcmp(e->name, name)) e = e->next;
  if (e) {
    __atomic_add_fetch(&e->s->refs, 1, __ATOMIC_ACQ_REL);
    u->s = e->s;
  }
  pthread_mutex_unlock(&reg_mu);
  if (!u->s) lua_pushnil(L);
  return 1;
}

static int l_unshare(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  struct shared_idx *old = NULL;
  pthread_mutex_lock(&reg_mu);
  for (struct reg_entry **pe = &registry; *pe; pe = &(*pe)->next) {
    if (strcmp((*pe)->name, name)) continue;
    struct reg_entry *e = *pe;
    *pe = e->next;
    old = e->s;
    free(e->name);
    free(e);
    break;
  }
  pthread_mutex_unlock(&reg_mu);
  ref_drop(old);
  lua_pushboolean(L, old != NULL);
  return 1;
}

static const luaL_Reg methods[] = {
    {"add", l_add},       {"delete", l_delete}, {"contains", l_contains}, {"search", l_search},
    {"get", l_get},       {"count", l_count},   {"dim", l_dim},           {"metric", l_metric},
    {"memory", l_memory}, {"save", l_save},     {"close", l_close},       {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"simd", l_simd},       {"pack", l_pack},     {"unpack", l_unpack}, {"dot", l_dot},
    {"cosine", l_cosine},   {"l2sq", l_l2sq},     {"normalize", l_normalize},
    {"hnsw", l_hnsw},       {"load", l_load},     {"share", l_share},   {"shared", l_shared},
    {"unshare", l_unshare}, {NULL, NULL}};

int luaopen_fm_vecmath(lua_State *L);
int luaopen_fm_vecmath(lua_State *L) {
  fm_lua_handle_type(L, HNSW_MT, methods, l_gc, l_tostring);
  luaL_newlib(L, funcs);
  return 1;
}
