/* fm.log: JSON log lines from Lua, stamped with the current request id. */
#include "l_json.h"
#include "log.h"

#include <lauxlib.h>
#include <string.h>

/* log(level, msg [, fields]) with fields a table of extra keys. */
static int write_level(lua_State *L, int level) {
  const char *msg = luaL_checkstring(L, 1);
  if (!fm_log_enabled(level)) return 0;
  if (lua_isnoneornil(L, 2)) {
    fm_log_fields(level, msg, NULL);
    return 0;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  struct fm_buf *b = fm_json_guarded_buf(L);
  fm_json_encode_value(L, 2, b);
  /* fields must be an object: strip the braces and splice the members into the line */
  const char *s = fm_buf_cstr(b);
  if (b->len >= 2 && s[0] == '{') {
    b->p[b->len - 1] = '\0';
    fm_log_fields(level, msg, s + 1);
  } else {
    fm_log_fields(level, msg, NULL);
  }
  fm_buf_free(b);
  return 0;
}

static int l_log_debug(lua_State *L) { return write_level(L, FM_LOG_DEBUG); }
static int l_log_info(lua_State *L) { return write_level(L, FM_LOG_INFO); }
static int l_log_warn(lua_State *L) { return write_level(L, FM_LOG_WARN); }
static int l_log_error(lua_State *L) { return write_level(L, FM_LOG_ERROR); }

/* level() -> name ; level(name) sets it and returns the previous name */
static int l_log_level(lua_State *L) {
  int old = fm_log_get_level();
  if (!lua_isnoneornil(L, 1)) {
    int lv = fm_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0) return luaL_argerror(L, 1, "expected debug, info, warn, error or off");
    fm_log_set_level(lv);
  }
  lua_pushstring(L, fm_log_level_name(old));
  return 1;
}

static int l_log_enabled(lua_State *L) {
  int lv = fm_log_parse_level(luaL_checkstring(L, 1));
  if (lv < 0) return luaL_argerror(L, 1, "unknown level");
  lua_pushboolean(L, fm_log_enabled(lv));
  return 1;
}

static int l_log_request_id(lua_State *L) {
  const char *id = fm_log_request_id();
  if (id) lua_pushstring(L, id);
  else lua_pushnil(L);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"debug", l_log_debug}, {"info", l_log_info},       {"warn", l_log_warn},
    {"error", l_log_error}, {"level", l_log_level},     {"enabled", l_log_enabled},
    {"request_id", l_log_request_id}, {NULL, NULL},
};

int luaopen_fm_log(lua_State *L);
int luaopen_fm_log(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
