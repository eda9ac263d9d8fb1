/* fm.breaker_core: the C half of fm.breaker (lua/fm/breaker.lua), over engine/breaker.h. The
 * registry is process-wide, so every VM (workers, admin, exec) sees the same breakers.
 *   state(name) -> {name, state = "closed"|"half_open"|"open", failures, opened_at (epoch
 *                   seconds or nil), retry_in (seconds), probe_in_flight, transitions} | nil
 *   list() -> array of those, sorted by name
 *   reset(name) -> true when it existed
 *   config() -> {enabled, fail_threshold, reset_timeout}
 *   name_for(url) -> the default breaker name of a URL ("host:port") | nil */
#include "breaker.h"
#include "httpc.h"

#include <lauxlib.h>
#include <stdlib.h>

static void push_info(lua_State *L, const struct fm_breaker_info *i) {
  lua_createtable(L, 0, 7);
  lua_pushstring(L, i->name);
  lua_setfield(L, -2, "name");
  lua_pushstring(L, fm_breaker_state_name(i->state));
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, i->failures);
  lua_setfield(L, -2, "failures");
  if (i->opened_at > 0) {
    lua_pushnumber(L, i->opened_at);
    lua_setfield(L, -2, "opened_at");
  }
  lua_pushnumber(L, i->retry_in);
  lua_setfield(L, -2, "retry_in");
  lua_pushboolean(L, i->probe_in_flight);
  lua_setfield(L, -2, "probe_in_flight");
  lua_pushinteger(L, (lua_Integer)i->transitions);
  lua_setfield(L, -2, "transitions");
}

static int l_state(lua_State *L) {
  struct fm_breaker_info i;
  if (!fm_breaker_info(luaL_checkstring(L, 1), &i)) {
    lua_pushnil(L);
    return 1;
  }
  push_info(L, &i);
  return 1;
}

/* The registry's snapshot is copied into a userdata and freed at once, so a Lua error (the
 * memory cap) while the result table is built cannot leak it. */
static int l_list(lua_State *L) {
  /* room for the most breakers first: raising after fm_breaker_list would leak its array */
  struct fm_breaker_info *box = lua_newuserdatauv(L, FM_BREAKER_MAX * sizeof *box, 0);
  struct fm_breaker_info *v = NULL;
  int n = fm_breaker_list(&v);
  if (n < 0) return luaL_error(L, "out of memory");
  if (n > FM_BREAKER_MAX) n = FM_BREAKER_MAX;
  for (int k = 0; k < n; k++) box[k] = v[k];
  free(v);
  lua_createtable(L, n, 0);
  for (int k = 0; k < n; k++) {
    push_info(L, &box[k]);
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}

static int l_reset(lua_State *L) {
  lua_pushboolean(L, fm_breaker_reset(luaL_checkstring(L, 1)));
  return 1;
}

static int l_config(lua_State *L) {
  struct fm_breaker_config c;
  fm_breaker_get_config(&c);
  lua_createtable(L, 0, 3);
  lua_pushboolean(L, c.enabled);
  lua_setfield(L, -2, "enabled");
  lua_pushinteger(L, c.fail_threshold);
  lua_setfield(L, -2, "fail_threshold");
  lua_pushnumber(L, c.reset_timeout_s);
  lua_setfield(L, -2, "reset_timeout");
  return 1;
}

static int l_name_for(lua_State *L) {
  char name[FM_BREAKER_NAME_MAX + 1];
  if (fm_httpc_url_hostport(luaL_checkstring(L, 1), name, sizeof name) ||
      !fm_breaker_valid_name(name)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushstring(L, name);
  return 1;
}

static const luaL_Reg funcs[] = {{"state", l_state},   {"list", l_list},
                                 {"reset", l_reset},   {"config", l_config},
                                 {"name_for", l_name_for}, {NULL, NULL}};

int luaopen_fm_breaker_core(lua_State *L);
int luaopen_fm_breaker_core(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
