/* fm.embed_core: the C half of fm.embed (lua/fm/embed.lua is the public module).
 *
 *   hashing(texts, dim)          -> {packed, ...}       the built-in embedder (embed.h)
 *   parse_openai(body, n, dim)   -> {packed, ...}, dim | nil, message, "proto" | "dim"
 *                                   an /v1/embeddings answer (dim 0: any dimension)
 *   tokens(text)                 -> {token, ...}        the hashing embedder's tokens
 *   pack({numbers})              -> packed              float32 little-endian
 *   unpack(packed)               -> {numbers}
 *   dot(a, b)                    -> number              (same dimension, else raises)
 *   norm(packed)                 -> number
 *
 * A packed vector is a string of 4 x dim bytes. Misuse raises. */
#include "embed.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TEXTS 100000
#define MATRIX_MT "fm.embed.matrix"

/* A scratch buffer owned by the VM (freed by the collector even when a later call raises). */
static void *scratch(lua_State *L, size_t n) {
  return lua_newuserdatauv(L, n ? n : 1, 0);
}

static size_t check_dim(lua_State *L, int idx) {
  lua_Integer d = luaL_checkinteger(L, idx);
  if (d < 1 || d > FM_EMBED_DIM_MAX) luaL_argerror(L, idx, "dim: expected 1..8192");
  return (size_t)d;
}

static void push_packed(lua_State *L, const float *v, size_t dim) {
  luaL_Buffer b;
  unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, 4 * dim);
  fm_embed_pack(v, dim, p);
  luaL_pushresultsize(&b, 4 * dim);
}

static int l_embed_hashing(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t dim = check_dim(L, 2);
  lua_Integer n = luaL_len(L, 1);
  if (n > MAX_TEXTS) luaL_argerror(L, 1, "more than 100000 texts");
  float *v = scratch(L, dim * sizeof *v);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "texts[%d]: expected a string, got %s", (int)i, luaL_typename(L, -1));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (fm_embed_hashing(s, len, dim, v) < 0) return luaL_error(L, "fm.embed: out of memory");
    lua_pop(L, 1);
    push_packed(L, v, dim);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

static int l_embed_parse_openai(lua_State *L) {
  size_t len;
  const char *body = luaL_checklstring(L, 1, &len);
  lua_Integer n = luaL_checkinteger(L, 2);
  lua_Integer want = luaL_optinteger(L, 3, 0);
  if (n < 0 || n > MAX_TEXTS) luaL_argerror(L, 2, "n: expected 0..100000");
  if (want < 0 || want > FM_EMBED_DIM_MAX) luaL_argerror(L, 3, "dim: expected 0..8192");
  float *m;
  size_t dim;
  struct fm_err err = {0};
  int rc = fm_embed_openai_parse(body, len, (size_t)n, (size_t)want, &m, &dim, &err);
  if (rc == FM_E_NOMEM) return luaL_error(L, "fm.embed: out of memory");
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    lua_pushstring(L, rc == FM_E_INVAL ? "dim" : "proto");
    return 3;
  }
  /* copy into Lua with m owned by a userdata, so a memory error while copying frees it */
  float **owner = lua_newuserdatauv(L, sizeof *owner, 0);
  *owner = m;
  luaL_setmetatable(L, MATRIX_MT);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    push_packed(L, m + (size_t)i * dim, dim);
    lua_rawseti(L, -2, i + 1);
  }
  free(m);
  *owner = NULL;
  lua_pushinteger(L, (lua_Integer)dim);
  return 2;
}

static int matrix_gc(lua_State *L) {
  float **owner = luaL_checkudata(L, 1, MATRIX_MT);
  free(*owner);
  *owner = NULL;
  return 0;
}

static void add_token(const char *tok, size_t len, void *ud) {
  lua_State *L = ud;
  lua_pushlstring(L, tok, len);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
}

static int l_embed_tokens(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_newtable(L);
  fm_embed_tokens(s, len, add_token, L);
  return 1;
}

static int l_embed_pack(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 1 || n > FM_EMBED_DIM_MAX) luaL_argerror(L, 1, "expected 1..8192 numbers");
  float *v = scratch(L, (size_t)n * sizeof *v);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    int ok;
    lua_Number x = lua_tonumberx(L, -1, &ok);
    if (!ok || !isfinite(x)) return luaL_error(L, "[%d]: expected a finite number", (int)i);
    v[i - 1] = (float)x;
    lua_pop(L, 1);
  }
  push_packed(L, v, (size_t)n);
  return 1;
}

static const unsigned char *check_packed(lua_State *L, int idx, size_t *dim) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (len == 0 || len % 4 || len / 4 > FM_EMBED_DIM_MAX)
    luaL_argerror(L, idx, "expected a packed float32 vector");
  *dim = len / 4;
  return (const unsigned char *)s;
}

static int l_embed_unpack(lua_State *L) {
  size_t dim;
  const unsigned char *p = check_packed(L, 1, &dim);
  float *v = scratch(L, dim * sizeof *v);
  fm_embed_unpack(p, dim, v);
  lua_createtable(L, (int)dim, 0);
  for (size_t i = 0; i < dim; i++) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_embed_dot(lua_State *L) {
  size_t da, db;
  const unsigned char *a = check_packed(L, 1, &da), *b = check_packed(L, 2, &db);
  if (da != db) return luaL_error(L, "dot: dimensions differ (%d, %d)", (int)da, (int)db);
  float *va = scratch(L, 2 * da * sizeof *va);
  fm_embed_unpack(a, da, va);
  fm_embed_unpack(b, da, va + da);
  double s = 0;
  for (size_t i = 0; i < da; i++) s += (double)va[i] * va[da + i];
  lua_pushnumber(L, s);
  return 1;
}

static int l_embed_norm(lua_State *L) {
  size_t d;
  const unsigned char *a = check_packed(L, 1, &d);
  float *v = scratch(L, d * sizeof *v);
  fm_embed_unpack(a, d, v);
  lua_pushnumber(L, fm_embed_normalize(v, d));
  return 1;
}

static const luaL_Reg funcs[] = {
    {"hashing", l_embed_hashing}, {"parse_openai", l_embed_parse_openai},
    {"tokens", l_embed_tokens},   {"pack", l_embed_pack},
    {"unpack", l_embed_unpack},   {"dot", l_embed_dot},
    {"norm", l_embed_norm},       {NULL, NULL}};

int luaopen_fm_embed_core(lua_State *L);
int luaopen_fm_embed_core(lua_State *L) {
  if (luaL_newmetatable(L, MATRIX_MT)) {
    lua_pushcfunction(L, matrix_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
