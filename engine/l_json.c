/* fm.json: decode with jansson (UTF-8 validated, depth-limited, arrays marked so they encode
 * back as arrays even when empty); encode with a small direct encoder. */
#include "l_json.h"

#include "vm.h"

#include <jansson.h>
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_MT "fm.json.array"
#define ENCODE_MAX_DEPTH 128

/* Runs in a protected call set up by the binding, so raising here cannot leak the buffer: the
 * caller owns it through a userdata with __gc. */
static void encode(lua_State *L, int idx, struct fm_buf *b, int depth);

/* The text encode builds is plain malloc, outside the VM's allocator: it may grow only as far as
 * the memory the VM (or the sandbox run) has left, or one shared 1 MiB string referenced a
 * thousand times becomes a gigabyte nobody counted. */
static _Thread_local size_t t_encode_limit = SIZE_MAX;

static size_t memory_left(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  size_t left = SIZE_MAX;
  if (!vm) return left;
  if (vm->mem_limit) left = vm->mem_limit > vm->mem_used ? vm->mem_limit - vm->mem_used : 0;
  if (vm->sb_active && vm->sb_mem_cap) {
    size_t used = vm->mem_used > vm->sb_mem_base ? vm->mem_used - vm->sb_mem_base : 0;
    size_t sb = vm->sb_mem_cap > used ? vm->sb_mem_cap - used : 0;
    if (sb < left) left = sb;
  }
  return left;
}

static void encode_number(lua_State *L, int idx, struct fm_buf *b) {
  if (lua_isinteger(L, idx)) {
    fm_buf_printf(b, "%lld", (long long)lua_tointeger(L, idx));
    return;
  }
  double d = lua_tonumber(L, idx);
  if (!isfinite(d)) luaL_error(L, "cannot encode %s as JSON", isnan(d) ? "NaN" : "infinity");
  char tmp[40];
  snprintf(tmp, sizeof tmp, "%.15g", d);
  if (strtod(tmp, NULL) != d) snprintf(tmp, sizeof tmp, "%.17g", d);
  fm_buf_adds(b, tmp);
}

static int is_array_mt(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ARRAY_MT);
  int eq = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return eq;
}

/* 1..n with n>0 and no other keys: a sequence. */
static lua_Integer sequence_length(lua_State *L, int idx) {
  lua_Integer count = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return -1;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1) {
      lua_pop(L, 1);
      return -1;
    }
    if (k > max) max = k;
    count++;
  }
  return count > 0 && count == max ? count : -1;
}

static void encode_table(lua_State *L, int idx, struct fm_buf *b, int depth) {
  if (depth > ENCODE_MAX_DEPTH) luaL_error(L, "cannot encode JSON: nesting deeper than %d (a cycle?)", ENCODE_MAX_DEPTH);
  luaL_checkstack(L, 4, "json encode");
  lua_Integer n = is_array_mt(L, idx) ? (lua_Integer)lua_rawlen(L, idx) : sequence_length(L, idx);
  if (n >= 0) {
    fm_buf_addc(b, '[');
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1) fm_buf_addc(b, ',');
      lua_rawgeti(L, idx, i);
      encode(L, lua_gettop(L), b, depth + 1);
      lua_pop(L, 1);
    }
    fm_buf_addc(b, ']');
    return;
  }
  fm_buf_addc(b, '{');
  int first = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int kt = lua_type(L, -2);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
      luaL_error(L, "cannot encode JSON: object key of type %s", lua_typename(L, kt));
    if (!first) fm_buf_addc(b, ',');
    first = 0;
    size_t kl;
    lua_pushvalue(L, -2); /* convert a copy: lua_next needs the original key */
    const char *k = lua_tolstring(L, -1, &kl);
    fm_buf_add_json_str(b, k, kl);
    lua_pop(L, 1);
    fm_buf_addc(b, ':');
    encode(L, lua_gettop(L), b, depth + 1);
    lua_pop(L, 1);
  }
  fm_buf_addc(b, '}');
}

static void encode(lua_State *L, int idx, struct fm_buf *b, int depth) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL: fm_buf_adds(b, "null"); return;
  case LUA_TBOOLEAN: fm_buf_adds(b, lua_toboolean(L, idx) ? "true" : "false"); return;
  case LUA_TNUMBER: encode_number(L, idx, b); return;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > t_encode_limit || b->len > t_encode_limit - n)
      luaL_error(L, "cannot encode JSON: the text would outgrow the Lua memory left (%I bytes)",
                 (lua_Integer)t_encode_limit);
    fm_buf_add_json_str(b, s, n);
    return;
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) {
      fm_buf_adds(b, "null");
      return;
    }
    break;
  case LUA_TTABLE: encode_table(L, idx, b, depth); return;
  default: break;
  }
  luaL_error(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
}

/* The buffer lives in a userdata so that an error mid-encode frees it through __gc. */
static int buf_gc(lua_State *L) {
  fm_buf_free(lua_touserdata(L, 1));
  return 0;
}

struct fm_buf *fm_json_guarded_buf(lua_State *L) {
  struct fm_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, "fm.json.buf")) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

void fm_json_encode_value(lua_State *L, int idx, struct fm_buf *b) {
  t_encode_limit = SIZE_MAX; /* a failed fm.json.encode may have left its limit */
  encode(L, lua_absindex(L, idx), b, 0);
}

static int l_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  struct fm_buf *b = fm_json_guarded_buf(L);
  t_encode_limit = memory_left(L);
  encode(L, 1, b, 0);
  t_encode_limit = SIZE_MAX;
  lua_pushlstring(L, fm_buf_cstr(b), b->len);
  fm_buf_free(b);
  return 1;
}

/* ---- decode -------------------------------------------------------------------------------- */

static int to_lua(lua_State *L, json_t *j, int depth, int max_depth) {
  if (depth > max_depth) return -1;
  luaL_checkstack(L, 3, "json decode");
  switch (json_typeof(j)) {
  case JSON_OBJECT: {
    lua_createtable(L, 0, (int)json_object_size(j));
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
      lua_pushstring(L, k);
      if (to_lua(L, v, depth + 1, max_depth)) return -1;
      lua_rawset(L, -3);
    }
    return 0;
  }
  case JSON_ARRAY: {
    size_t n = json_array_size(j);
    lua_createtable(L, n > 1 << 20 ? 1 << 20 : (int)n, 0);
    for (size_t i = 0; i < n; i++) {
      if (to_lua(L, json_array_get(j, i), depth + 1, max_depth)) return -1;
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    luaL_setmetatable(L, ARRAY_MT);
    return 0;
  }
  case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); return 0;
  case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(j)); return 0;
  case JSON_REAL: lua_pushnumber(L, json_real_value(j)); return 0;
  case JSON_TRUE: lua_pushboolean(L, 1); return 0;
  case JSON_FALSE: lua_pushboolean(L, 0); return 0;
  case JSON_NULL: lua_pushlightuserdata(L, NULL); return 0;
  }
  return -1;
}

struct decode_guard {
  json_t *j;
};

static int guard_gc(lua_State *L) {
  struct decode_guard *g = lua_touserdata(L, 1);
  if (g->j) json_decref(g->j);
  g->j = NULL;
  return 0;
}

/* decode(text [, max_depth]) -> value | nil, message */
static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer max_depth = luaL_optinteger(L, 2, 512);
  if (max_depth < 1) max_depth = 1;
  /* jansson's tree is outside the VM's allocator too, and takes several times the text: a
   * sandbox run may decode only what its allowance could hold. */
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (vm && vm->sb_active && n > memory_left(L) / 8) {
    lua_pushnil(L);
    lua_pushliteral(L, "JSON text too large for the memory this run has left");
    return 2;
  }
  json_error_t e;
  json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  if (!j) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s at line %d column %d", e.text, e.line, e.column);
    return 2;
  }
  /* The tree is released by __gc even if converting it raises (out of memory). */
  struct decode_guard *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->j = j;
  if (luaL_newmetatable(L, "fm.json.guard")) {
    lua_pushcfunction(L, guard_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  int top = lua_gettop(L);
  if (to_lua(L, j, 1, (int)max_depth)) {
    lua_settop(L, top);
    json_decref(j);
    g->j = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "nesting deeper than %d levels", (int)max_depth);
    return 2;
  }
  json_decref(j);
  g->j = NULL;
  return 1;
}

static int l_json_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, ARRAY_MT);
  return 1;
}

static int l_json_is_array(lua_State *L) {
  lua_pushboolean(L, lua_istable(L, 1) && is_array_mt(L, 1));
  return 1;
}

static const luaL_Reg funcs[] = {
    {"encode", l_json_encode},
    {"decode", l_json_decode},
    {"array", l_json_array},
    {"is_array", l_json_is_array},
    {NULL, NULL},
};

int luaopen_fm_json(lua_State *L);
int luaopen_fm_json(lua_State *L) {
  luaL_newlib(L, funcs);
  if (luaL_newmetatable(L, ARRAY_MT)) {
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__name");
    /* Shared by every array of the VM: getmetatable() must not hand it out for changing (a
     * sandboxed playbook could add a __gc to every array). */
    lua_pushliteral(L, ARRAY_MT);
    lua_setfield(L, -2, "__metatable");
  }
  lua_setfield(L, -2, "array_mt");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  return 1;
}
