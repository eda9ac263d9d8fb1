/* fm.metrics: counters, gauges and histograms in the shared registry, and its rendering. */
#include "l_json.h"
#include "metrics.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LABELS 16

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Renders the labels table at idx (or none) into a guarded buffer left on the stack. */
static const char *labels_arg(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return ""; /* before anything is pushed: idx may be past the top */
  luaL_checktype(L, idx, LUA_TTABLE);
  idx = lua_absindex(L, idx);
  struct fm_buf *b = fm_json_guarded_buf(L);
  const char *keys[MAX_LABELS], *vals[MAX_LABELS];
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (n == MAX_LABELS) luaL_error(L, "too many labels (max %d)", MAX_LABELS);
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "label names must be strings");
    keys[n++] = lua_tostring(L, -2);
    lua_pop(L, 1);
  }
  qsort(keys, n, sizeof *keys, cmp_str);
  for (size_t i = 0; i < n; i++) {
    lua_getfield(L, idx, keys[i]);
    vals[i] = luaL_tolstring(L, -1, NULL);
    lua_replace(L, -2); /* keep the string alive on the stack */
  }
  if (fm_metrics_labels(b, keys, vals, n)) luaL_error(L, "invalid label name");
  return fm_buf_cstr(b);
}

static int check(lua_State *L, int rc, const char *name) {
  if (rc == 0) return 0;
  return luaL_error(L, "metric %s: unknown, or used with the wrong type or a negative increment", name);
}

/* register(name, "counter"|"gauge"|"histogram", help [, buckets]) */
static int l_metrics_register(lua_State *L) {
  static const char *const types[] = {"counter", "gauge", "histogram", NULL};
  const char *name = luaL_checkstring(L, 1);
  int t = luaL_checkoption(L, 2, NULL, types);
  const char *help = luaL_optstring(L, 3, "");
  double buckets[64];
  size_t nb = 0;
  int have = !lua_isnoneornil(L, 4);
  if (have) {
    luaL_checktype(L, 4, LUA_TTABLE);
    nb = lua_rawlen(L, 4);
    if (nb == 0 || nb > 64) return luaL_argerror(L, 4, "1 to 64 buckets");
    for (size_t i = 0; i < nb; i++) {
      lua_rawgeti(L, 4, (lua_Integer)i + 1);
      buckets[i] = luaL_checknumber(L, -1);
      lua_pop(L, 1);
      if (i && buckets[i] <= buckets[i - 1]) return luaL_argerror(L, 4, "buckets must ascend");
    }
  }
  if (fm_metrics_register(name, (enum fm_metric_type)t, help, have ? buckets : NULL, nb))
    return luaL_error(L, "metric %s: invalid name or registered with another type", name);
  return 0;
}

/* name, labels table or nil, value (optional for inc: 1) */
static int update(lua_State *L, int (*fn)(const char *, const char *, double), int value_optional) {
  const char *name = luaL_checkstring(L, 1);
  double v = value_optional ? luaL_optnumber(L, 3, 1) : luaL_checknumber(L, 3);
  const char *labels = labels_arg(L, 2);
  return check(L, fn(name, labels, v), name);
}

static int l_metrics_inc(lua_State *L) { return update(L, fm_metrics_inc, 1); }
static int l_metrics_set(lua_State *L) { return update(L, fm_metrics_set, 0); }
static int l_metrics_add(lua_State *L) { return update(L, fm_metrics_add, 0); }
static int l_metrics_observe(lua_State *L) { return update(L, fm_metrics_observe, 0); }

static int l_metrics_get(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *labels = labels_arg(L, 2);
  lua_pushnumber(L, fm_metrics_get(name, labels));
  return 1;
}

static int l_metrics_render(lua_State *L) {
  struct fm_buf *b = fm_json_guarded_buf(L);
  if (fm_metrics_render(b)) return luaL_error(L, "out of memory");
  lua_pushlstring(L, fm_buf_cstr(b), b->len);
  fm_buf_free(b);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"register", l_metrics_register}, {"inc", l_metrics_inc}, {"set", l_metrics_set},
    {"add", l_metrics_add},           {"observe", l_metrics_observe}, {"get", l_metrics_get},
    {"render", l_metrics_render},     {NULL, NULL},
};

int luaopen_fm_metrics(lua_State *L);
int luaopen_fm_metrics(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
