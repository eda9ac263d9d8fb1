/* fm.http: outbound HTTP for Lua on libcurl.
 *   fm.http.request{method=, url=, headers={name=value}, body=, timeout=, connect_timeout=,
 *                   max_body=, breaker=} -> {status=, headers={lower-case name=value}, body=}
 *   Failures of the world return nil, message, code ("connect"|"timeout"|"too_large"|"io").
 *   Every request goes through the circuit breaker (engine/breaker.h) named by `breaker` (default
 *   the URL's "host:port"; false: none). While it is open the request is not sent and the call
 *   returns nil, "circuit open for <name>", "CIRCUIT_OPEN" (lua/fm/breaker.lua builds the 503). */
#include "breaker.h"
#include "httpc.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADERS 64

static double opt_number(lua_State *L, int t, const char *k, double def) {
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void push_headers(lua_State *L, const struct fm_buf *raw) {
  lua_newtable(L);
  const char *p = raw->p, *end = raw->p ? raw->p + raw->len : NULL;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && strncmp(p, "HTTP/", 5) != 0) {
      luaL_Buffer name;
      luaL_buffinit(L, &name);
      for (const char *c = p; c < colon; c++) luaL_addchar(&name, (char)tolower((unsigned char)*c));
      luaL_pushresult(&name);
      const char *v = colon + 1;
      const char *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) { /* repeated header: join with ", " */
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = eol + 1;
  }
}

/* The response lives in a userdata until it is copied into Lua, so an error while copying
 * (the memory cap) still frees it through __gc. */
static int res_gc(lua_State *L) {
  fm_httpc_res_free(lua_touserdata(L, 1));
  return 0;
}

static int l_http_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  struct fm_httpc_req req = {0};
  const char *hdrs[MAX_HEADERS];
  lua_getfield(L, 1, "url");
  req.url = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "method");
  req.method = luaL_optstring(L, -1, "GET");
  lua_getfield(L, 1, "body");
  req.body = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &req.body_len);
  req.timeout_s = opt_number(L, 1, "timeout", 30);
  req.connect_timeout_s = opt_number(L, 1, "connect_timeout", 10);
  double max_body = opt_number(L, 1, "max_body", 16 << 20);
  if (max_body < 1) return luaL_argerror(L, 1, "max_body must be positive");
  req.max_body = (size_t)max_body;
  /* "Name: value" strings are kept in a table (not on the stack, which holds only ~20 slots). */
  lua_newtable(L);
  int keep = lua_gettop(L);
  lua_getfield(L, 1, "headers");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (req.nheaders == MAX_HEADERS) return luaL_error(L, "too many headers (max %d)", MAX_HEADERS);
      if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "header names must be strings");
      if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        return luaL_error(L, "header %s: value must be a string", lua_tostring(L, -2));
      lua_pushvalue(L, -1); /* convert a copy: lua_next needs the key and value untouched */
      hdrs[req.nheaders] = lua_pushfstring(L, "%s: %s", lua_tostring(L, -3), lua_tostring(L, -1));
      lua_rawseti(L, keep, (lua_Integer)req.nheaders + 1);
      req.nheaders++;
      lua_pop(L, 2);
    }
  }
  req.headers = hdrs;
  /* The breaker's name: given, the URL's host:port by default, or none (false). */
  char bname[FM_BREAKER_NAME_MAX + 1] = "";
  lua_getfield(L, 1, "breaker");
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *n = lua_tostring(L, -1);
    if (!fm_breaker_valid_name(n))
      return luaL_error(L, "breaker: a name of 1 to %d characters [A-Za-z0-9._:/@+[]-] expected",
                        FM_BREAKER_NAME_MAX);
    snprintf(bname, sizeof bname, "%s", n);
  } else if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && lua_toboolean(L, -1))) {
    if (fm_httpc_url_hostport(req.url, bname, sizeof bname) || !fm_breaker_valid_name(bname))
      bname[0] = '\0'; /* no breaker for a URL without a usable host (it fails below anyway) */
  } else if (!lua_isboolean(L, -1)) {
    return luaL_error(L, "breaker: a name or false expected");
  }
  lua_pop(L, 1);
  struct fm_httpc_res *res = lua_newuserdatauv(L, sizeof *res, 0);
  memset(res, 0, sizeof *res);
  if (luaL_newmetatable(L, "fm.http.response")) {
    lua_pushcfunction(L, res_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  struct fm_err err = {0};
  struct fm_breaker_ticket ticket = {0};
  if (bname[0] && !fm_breaker_acquire(bname, &ticket, NULL)) {
    lua_pushnil(L);
    lua_pushfstring(L, "circuit open for %s", bname);
    lua_pushliteral(L, "CIRCUIT_OPEN");
    return 3;
  }
  int rc = fm_httpc_request(&req, res, &err);
  /* before anything that can raise: the ticket must be handed back exactly once */
  fm_breaker_release(&ticket, fm_breaker_classify(rc, res->status));
  if (rc) {
    if (rc == FM_E_INVAL) return luaL_error(L, "%s", err.msg);
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    lua_pushstring(L, fm_err_name(rc));
    return 3;
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, res->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, fm_buf_cstr(&res->body), res->body.len);
  lua_setfield(L, -2, "body");
  push_headers(L, &res->headers);
  lua_setfield(L, -2, "headers");
  fm_httpc_res_free(res);
  return 1;
}

static const luaL_Reg funcs[] = {{"request", l_http_request}, {NULL, NULL}};

int luaopen_fm_http(lua_State *L);
int luaopen_fm_http(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
