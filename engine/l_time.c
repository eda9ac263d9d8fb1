/* fm.time: wall clock, monotonic clock, sleep and ISO 8601 formatting. */
#include "util.h"

#include <lauxlib.h>

static int l_time_now(lua_State *L) {
  lua_pushnumber(L, fm_time_now());
  return 1;
}

static int l_time_monotonic(lua_State *L) {
  lua_pushnumber(L, fm_time_mono());
  return 1;
}

static int l_time_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s < 0 || s > 3600) return luaL_argerror(L, 1, "0 to 3600 seconds");
  fm_sleep(s);
  return 0;
}

static int l_time_iso8601(lua_State *L) {
  char out[40];
  fm_time_iso8601(luaL_optnumber(L, 1, fm_time_now()), out, sizeof out);
  lua_pushstring(L, out);
  return 1;
}

static const luaL_Reg funcs[] = {{"now", l_time_now},
                                 {"monotonic", l_time_monotonic},
                                 {"sleep", l_time_sleep},
                                 {"iso8601", l_time_iso8601},
                                 {NULL, NULL}};

int luaopen_fm_time(lua_State *L);
int luaopen_fm_time(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
