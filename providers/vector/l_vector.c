/* fm.vector_embedded: the embedded vector store (embedded.h) for Lua; lua/fm/vector/embedded.lua
 * wraps it as a driver of fm.vector. Every function takes the collection's directory first; the
 * state behind it is the process's, shared by every VM.
 *
 *   params{M, ef_construction, ef_search, quantize, snapshot_every}   for collections opened
 *                                                   from now on (process-wide)
 *   open(dir, dim)                 -> true          (creates it; dim mismatch: VECTOR_DIM_MISMATCH)
 *   dim(dir)                       -> dim | nil     (nil: no such collection)
 *   upsert(dir, ids, vectors, metas_json) -> n
 *   delete(dir, ids)               -> n             (how many existed)
 *   search(dir, q, k, filter_json) -> {{id, score, meta = json}, ...}
 *   count(dir)                     -> n             (0: no such collection)
 *   ids(dir, after, limit)         -> {ids}, next | nil
 *   get(dir, id)                   -> vector, meta_json | nil
 *   snapshot(dir)                  -> true
 *   drop(dir)                      -> true
 *   close_all()                    closes every collection (a snapshot of those with a log)
 *
 * Misuse raises; failures return nil, message, code: VECTOR_DIM_MISMATCH, VECTOR_INVALID,
 * VECTOR_UNAVAILABLE (another process has the collection, I/O), VECTOR_ERROR. */
#include "embedded.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define RESULTS_MT "fm.vector.results"
#define IDLIST_MT "fm.vector.idlist"

static pthread_mutex_t g_params_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fm_vcoll_params g_params;

static struct fm_vcoll_params get_params(void) {
  pthread_mutex_lock(&g_params_mu);
  struct fm_vcoll_params p = g_params;
  pthread_mutex_unlock(&g_params_mu);
  return p;
}

static int fail(lua_State *L, int rc, const struct fm_err *err) {
  const char *code = "VECTOR_ERROR";
  switch (rc) {
  case FM_VEC_E_DIM: code = "VECTOR_DIM_MISMATCH"; break;
  case FM_E_INVAL: code = "VECTOR_INVALID"; break;
  case FM_VEC_E_NOCOLL: code = "VECTOR_INVALID"; break;
  case FM_VEC_E_BUSY:
  case FM_E_IO: code = "VECTOR_UNAVAILABLE"; break;
  default: break;
  }
  lua_pushnil(L);
  lua_pushstring(L, err->msg);
  lua_pushstring(L, code);
  return 3;
}

/* The collection at dir (a reference the caller releases), or NULL with the failure pushed
 * (3 values). */
static struct fm_vcoll *get_coll(lua_State *L, const char *dir, size_t dim, int *nret) {
  struct fm_vcoll_params p = get_params();
  struct fm_vcoll *c;
  struct fm_err err = {0};
  int rc = fm_vcoll_open(dir, dim, &p, &c, &err);
  if (rc) {
    *nret = fail(L, rc, &err);
    return NULL;
  }
  return c;
}

static lua_Integer int_field(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

static int l_vector_params(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  struct fm_vcoll_params p = {0};
  p.M = (size_t)int_field(L, 1, "M", 0);
  p.ef_construction = (size_t)int_field(L, 1, "ef_construction", 0);
  p.ef_search = (size_t)int_field(L, 1, "ef_search", 0);
  p.snapshot_every = (size_t)int_field(L, 1, "snapshot_every", 0);
  lua_getfield(L, 1, "quantize");
  p.quantize = lua_toboolean(L, -1);
  lua_pop(L, 1);
  pthread_mutex_lock(&g_params_mu);
  g_params = p;
  pthread_mutex_unlock(&g_params_mu);
  return 0;
}

static int l_vector_open(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  lua_Integer dim = luaL_checkinteger(L, 2);
  if (dim < 1 || dim > 65536) luaL_argerror(L, 2, "dim: expected 1..65536");
  int n;
  struct fm_vcoll *c = get_coll(L, dir, (size_t)dim, &n);
  if (!c) return n;
  fm_vcoll_release(c);
  lua_pushboolean(L, 1);
  return 1;
}

/* The collection at dir, opened (the caller releases it). NULL when it does not exist (*nret = 0:
 * the caller pushes its answer for "none") or on an error (*nret = what fail() pushed). */
static struct fm_vcoll *open_existing(lua_State *L, const char *dir, int *nret) {
  struct fm_vcoll_params p = get_params();
  struct fm_vcoll *c;
  struct fm_err err = {0};
  int rc = fm_vcoll_open(dir, 0, &p, &c, &err);
  *nret = 0;
  if (rc == FM_VEC_E_NOCOLL) return NULL;
  if (rc) {
    *nret = fail(L, rc, &err);
    return NULL;
  }
  return c;
}

static int l_vector_dim(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)fm_vcoll_dim(c));
  fm_vcoll_release(c);
  return 1;
}

/* Strings of the list at idx into arrays held by a userdata on the stack (the strings stay
 * referenced by the list). */
static size_t str_list(lua_State *L, int idx, const char *what, const char ***s, size_t **len) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = luaL_len(L, idx);
  if (n < 0 || n > 100000) luaL_error(L, "%s: at most 100000", what);
  void *blk = lua_newuserdatauv(L, (size_t)(n ? n : 1) * (sizeof(char *) + sizeof(size_t)), 0);
  *s = blk;
  *len = (size_t *)((char *)blk + (size_t)(n ? n : 1) * sizeof(char *));
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, idx, i) != LUA_TSTRING)
      luaL_error(L, "%s[%d]: expected a string, got %s", what, (int)i, luaL_typename(L, -1));
    (*s)[i - 1] = lua_tolstring(L, -1, &(*len)[i - 1]);
    lua_pop(L, 1);
  }
  return (size_t)n;
}

static int l_vector_upsert(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  const char **ids, **vecs, **metas;
  size_t *idl, *vecl, *metal;
  size_t n = str_list(L, 2, "ids", &ids, &idl);
  if (str_list(L, 3, "vectors", &vecs, &vecl) != n) luaL_error(L, "vectors: one per id");
  if (str_list(L, 4, "metas", &metas, &metal) != n) luaL_error(L, "metas: one per id");
  int nr;
  struct fm_vcoll *c = get_coll(L, dir, 0, &nr);
  if (!c) return nr;
  size_t dim = fm_vcoll_dim(c);
  for (size_t i = 0; i < n; i++) {
    if (vecl[i] != 4 * dim) {
      fm_vcoll_release(c);
      struct fm_err err = {0};
      fm_err_set(&err, FM_VEC_E_DIM,
                 "items[%zu].vector: %zu dimensions, the collection has %zu (rebuild it with "
                 "`faultmaven kb reindex` after changing the embedding model)",
                 i + 1, vecl[i] / 4, dim);
      return fail(L, FM_VEC_E_DIM, &err);
    }
  }
  struct fm_err err = {0};
  int rc = fm_vcoll_upsert(c, n, ids, idl, (const unsigned char *const *)vecs, metas, metal, &err);
  fm_vcoll_release(c);
  if (rc < 0) return fail(L, rc, &err);
  lua_pushinteger(L, rc);
  return 1;
}

static int l_vector_delete(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  const char **ids;
  size_t *idl;
  size_t n = str_list(L, 2, "ids", &ids, &idl);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    lua_pushinteger(L, 0);
    return 1;
  }
  struct fm_err err = {0};
  int rc = fm_vcoll_delete(c, n, ids, idl, &err);
  fm_vcoll_release(c);
  if (rc < 0) return fail(L, rc, &err);
  lua_pushinteger(L, rc);
  return 1;
}

struct results {
  struct fm_vresult *r;
  size_t n;
};

static int results_gc(lua_State *L) {
  struct results *r = lua_touserdata(L, 1);
  fm_vresults_free(r->r, r->n);
  r->r = NULL;
  r->n = 0;
  return 0;
}

static int l_vector_search(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  size_t qlen, flen = 0;
  const char *q = luaL_checklstring(L, 2, &qlen);
  lua_Integer k = luaL_checkinteger(L, 3);
  const char *filter = luaL_optlstring(L, 4, NULL, &flen);
  if (k < 1 || k > 10000) luaL_argerror(L, 3, "k: expected 1..10000");
  struct results *res = lua_newuserdatauv(L, sizeof *res, 0);
  res->r = NULL;
  res->n = 0;
  luaL_setmetatable(L, RESULTS_MT);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    lua_newtable(L);
    return 1;
  }
  struct fm_err err = {0};
  if (qlen != 4 * fm_vcoll_dim(c)) {
    fm_err_set(&err, FM_VEC_E_DIM, "query vector: %zu dimensions, the collection has %zu",
               qlen / 4, fm_vcoll_dim(c));
    fm_vcoll_release(c);
    return fail(L, FM_VEC_E_DIM, &err);
  }
  int rc = fm_vcoll_search(c, (const unsigned char *)q, (size_t)k, filter, flen, &res->r, &res->n,
                       &err);
  fm_vcoll_release(c);
  if (rc) return fail(L, rc, &err);
  lua_createtable(L, (int)res->n, 0);
  for (size_t i = 0; i < res->n; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, res->r[i].id);
    lua_setfield(L, -2, "id");
    lua_pushnumber(L, res->r[i].score);
    lua_setfield(L, -2, "score");
    lua_pushstring(L, res->r[i].meta);
    lua_setfield(L, -2, "meta");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_vector_count(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    lua_pushinteger(L, 0);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)fm_vcoll_count(c));
  fm_vcoll_release(c);
  return 1;
}

struct idlist {
  char **ids;
  size_t n;
};

static int idlist_gc(lua_State *L) {
  struct idlist *l = lua_touserdata(L, 1);
  for (size_t i = 0; i < l->n; i++) free(l->ids[i]);
  free(l->ids);
  l->ids = NULL;
  l->n = 0;
  return 0;
}

static int l_vector_ids(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  lua_Integer after = luaL_optinteger(L, 2, 0);
  lua_Integer limit = luaL_optinteger(L, 3, 1000);
  if (after < 0) luaL_argerror(L, 2, "after: expected a cursor from ids()");
  if (limit < 1 || limit > 100000) luaL_argerror(L, 3, "limit: expected 1..100000");
  struct idlist *l = lua_newuserdatauv(L, sizeof *l, 0);
  l->ids = NULL;
  l->n = 0;
  luaL_setmetatable(L, IDLIST_MT);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    lua_newtable(L);
    return 1;
  }
  uint64_t next = fm_vcoll_ids(c, (uint64_t)after, (size_t)limit, &l->ids, &l->n);
  fm_vcoll_release(c);
  lua_createtable(L, (int)l->n, 0);
  for (size_t i = 0; i < l->n; i++) {
    lua_pushstring(L, l->ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (!next) return 1;
  lua_pushinteger(L, (lua_Integer)next);
  return 2;
}

static int l_vector_get(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  size_t idlen;
  const char *id = luaL_checklstring(L, 2, &idlen);
  int nr;
  struct fm_vcoll *c = open_existing(L, dir, &nr);
  if (!c) {
    if (nr) return nr;
    return 0;
  }
  size_t dim = fm_vcoll_dim(c);
  unsigned char *vec = lua_newuserdatauv(L, 4 * dim, 0);
  struct results *res = lua_newuserdatauv(L, sizeof *res, 0); /* owns meta until it is pushed */
  res->n = 0;
  res->r = NULL;
  luaL_setmetatable(L, RESULTS_MT);
  res->r = calloc(1, sizeof *res->r);
  int found = res->r && fm_vcoll_get(c, id, idlen, vec, &res->r[0].meta);
  res->n = 1;
  fm_vcoll_release(c);
  if (!found) return 0;
  lua_pushlstring(L, (const char *)vec, 4 * dim);
  lua_pushstring(L, res->r[0].meta);
  return 2;
}

static int l_vector_snapshot(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  int n;
  struct fm_vcoll *c = get_coll(L, dir, 0, &n);
  if (!c) return n;
  struct fm_err err = {0};
  int rc = fm_vcoll_snapshot(c, &err);
  fm_vcoll_release(c);
  if (rc) return fail(L, rc, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_vector_drop(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  struct fm_err err = {0};
  int rc = fm_vcoll_drop(dir, &err);
  if (rc) return fail(L, rc, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_vector_close_all(lua_State *L) {
  fm_vcoll_close_all();
  return 0;
}

static const luaL_Reg funcs[] = {
    {"params", l_vector_params}, {"open", l_vector_open},         {"dim", l_vector_dim},
    {"upsert", l_vector_upsert}, {"delete", l_vector_delete},     {"search", l_vector_search},
    {"count", l_vector_count},   {"ids", l_vector_ids},           {"get", l_vector_get},
    {"drop", l_vector_drop},     {"snapshot", l_vector_snapshot}, {"close_all", l_vector_close_all},
    {NULL, NULL}};

int luaopen_fm_vector_embedded(lua_State *L);
int luaopen_fm_vector_embedded(lua_State *L) {
  if (luaL_newmetatable(L, RESULTS_MT)) {
    lua_pushcfunction(L, results_gc);
    lua_setfield(L, -2, "__gc");
  }
  if (luaL_newmetatable(L, IDLIST_MT)) {
    lua_pushcfunction(L, idlist_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  return 1;
}
