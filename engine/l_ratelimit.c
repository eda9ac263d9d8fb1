/* fm.ratelimit_core: the C half of fm.middleware.ratelimit, over engine/ratelimit.h. The table
 * is process-wide: every worker VM sees the same buckets.
 *   take(key, rate_per_s, capacity) -> allowed (boolean), tokens left (number)
 *   addr_in(addr, cidr) -> boolean | nil, "malformed"
 *   log_gate(interval_s) -> true at most once per interval, process-wide
 *   count() -> buckets held */
#include "ratelimit.h"

#include <lauxlib.h>

static int l_take(lua_State *L) {
  size_t kn;
  const char *k = luaL_checklstring(L, 1, &kn);
  double rate = luaL_checknumber(L, 2), cap = luaL_checknumber(L, 3);
  double tokens = 0;
  lua_pushboolean(L, fm_rl_take(k, kn, rate, cap, &tokens));
  lua_pushnumber(L, tokens);
  return 2;
}

static int l_addr_in(lua_State *L) {
  int r = fm_rl_addr_in(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
  if (r < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "malformed");
    return 2;
  }
  lua_pushboolean(L, r);
  return 1;
}

static int l_log_gate(lua_State *L) {
  lua_pushboolean(L, fm_rl_log_gate(luaL_checknumber(L, 1)));
  return 1;
}

static int l_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fm_rl_count());
  return 1;
}

static const luaL_Reg funcs[] = {{"take", l_take},
                                 {"addr_in", l_addr_in},
                                 {"log_gate", l_log_gate},
                                 {"count", l_count},
                                 {NULL, NULL}};

int luaopen_fm_ratelimit_core(lua_State *L);
int luaopen_fm_ratelimit_core(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
