/* fm.analyze: evidence analysis for Lua (the driver in analyze.c).
 *
 *   file(path [, opts])   -> result | nil, message, code
 *   text(s [, opts])      -> result | nil, message, code
 *       opts: filename (hint and shown), content_type (hint), signatures (a set from
 *             signatures()), modules = false (only the signature scan, secrets, encoding)
 *       result: {source_type, detailed_type, confidence, summary (table), summary_json,
 *                digest (<= 10000 bytes), bytes, lines, binary, compressed ("gzip" ... | nil)}
 *   signatures(list)      -> set | nil, message, code
 *       list: {{name=, pattern=, severity=?, flags=?, description=?}, ...}; the set matches them
 *       together with the built-ins in one pass. A pattern that does not compile names its
 *       signature in the message.
 *   builtin_signatures()  -> {{name, pattern, severity, flags, description}, ...}
 *   redact(text)          -> redacted text, count
 *
 * Codes: IO (the file cannot be read), UNSUPPORTED (Hyperscan cannot run on this CPU), INVALID
 * (bad signatures), NOMEM. Misuse (wrong argument types) raises. */
#include "analyze.h"
#include "vm.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#define SIGSET_MT "fm.analyze.sigset"

int luaopen_fm_json(lua_State *L);

static const char *code_name(int code, int platform) {
  if (platform) return "UNSUPPORTED";
  switch (code) {
  case FM_E_IO: return "IO";
  case FM_E_NOMEM: return "NOMEM";
  default: return "INVALID";
  }
}

static int fail(lua_State *L, const struct fm_err *err, int platform) {
  luaL_pushfail(L);
  lua_pushstring(L, err->msg[0] ? err->msg : "analysis failed");
  lua_pushstring(L, code_name(err->code, platform));
  return 3;
}

struct sigset_ud {
  struct fm_an_sigset *set;
};

static struct sigset_ud *check_set(lua_State *L, int idx) {
  struct sigset_ud *u = luaL_checkudata(L, idx, SIGSET_MT);
  if (!u->set) luaL_argerror(L, idx, "signature set is closed");
  return u;
}

static int l_sigset_close(lua_State *L) {
  struct sigset_ud *u = luaL_checkudata(L, 1, SIGSET_MT);
  fm_an_sigset_unref(u->set);
  u->set = NULL;
  return 0;
}

static int l_sigset_count(lua_State *L) {
  struct sigset_ud *u = check_set(L, 1);
  lua_pushinteger(L, (lua_Integer)fm_an_sigset_count(u->set));
  return 1;
}

static int l_sigset_tostring(lua_State *L) {
  struct sigset_ud *u = luaL_checkudata(L, 1, SIGSET_MT);
  if (u->set) lua_pushfstring(L, "fm.analyze.sigset (%d signatures)",
                              (int)fm_an_sigset_count(u->set));
  else lua_pushliteral(L, "fm.analyze.sigset (closed)");
  return 1;
}

static const char *opt_str_field(lua_State *L, int t, const char *k, int i) {
  lua_getfield(L, t, k);
  const char *v = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "signatures[%d].%s: a string expected", i, k);
    v = lua_tostring(L, -1);
  }
  lua_pop(L, 1); /* the string stays alive: the list table holds it */
  return v;
}

static int l_signatures(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 0 || n > 10000) return luaL_error(L, "signatures: at most 10000 signatures");
  struct fm_an_sig *sigs = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *sigs, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (!lua_istable(L, -1)) return luaL_error(L, "signatures[%d]: a table expected", (int)i);
    int t = lua_gettop(L);
    struct fm_an_sig *g = &sigs[i - 1];
    g->name = opt_str_field(L, t, "name", (int)i);
    g->pattern = opt_str_field(L, t, "pattern", (int)i);
    g->severity = opt_str_field(L, t, "severity", (int)i);
    g->flags = opt_str_field(L, t, "flags", (int)i);
    g->description = opt_str_field(L, t, "description", (int)i);
    if (!g->name) return luaL_error(L, "signatures[%d].name: a string expected", (int)i);
    if (!g->pattern) return luaL_error(L, "signatures[%d].pattern: a string expected", (int)i);
    lua_pop(L, 1); /* the entry: strings stay referenced by the list */
  }
  struct sigset_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->set = NULL;
  luaL_setmetatable(L, SIGSET_MT);
  struct fm_err err = {0};
  int platform = fm_an_platform_check(&err) != 0;
  if (platform || fm_an_sigset_new(sigs, (size_t)n, &u->set, &err)) return fail(L, &err, platform);
  return 1;
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static int l_builtin_signatures(lua_State *L) {
  size_t n;
  const struct fm_an_sig *b = fm_an_builtin_sigs(&n);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 5);
    set_str(L, "name", b[i].name);
    set_str(L, "pattern", b[i].pattern);
    set_str(L, "severity", b[i].severity ? b[i].severity : "warning");
    set_str(L, "flags", b[i].flags ? b[i].flags : "");
    set_str(L, "description", b[i].description);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_redact(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  struct fm_buf b = {0};
  long found = fm_an_redact(s, n, &b, NULL);
  if (found < 0) {
    fm_buf_free(&b);
    return luaL_error(L, "fm.analyze.redact: out of memory");
  }
  lua_pushlstring(L, b.p ? b.p : "", b.len);
  fm_buf_free(&b);
  lua_pushinteger(L, found);
  return 2;
}

/* Reads opts at idx into o; strings stay referenced by the opts table. */
static void read_opts(lua_State *L, int idx, struct fm_an_opts *o) {
  memset(o, 0, sizeof *o);
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "filename");
  if (!lua_isnil(L, -1)) o->filename = luaL_checkstring(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, idx, "content_type");
  if (!lua_isnil(L, -1)) o->content_type = luaL_checkstring(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, idx, "signatures");
  if (!lua_isnil(L, -1)) o->sigs = check_set(L, lua_gettop(L))->set;
  lua_pop(L, 1);
  lua_getfield(L, idx, "modules");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TBOOLEAN);
    o->no_modules = !lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
}

/* A userdata that frees a result when collected, so a Lua error while pushing cannot leak it. */
static int result_gc(lua_State *L) {
  fm_an_result_free(lua_touserdata(L, 1));
  return 0;
}

static struct fm_an_result *guarded_result(lua_State *L) {
  struct fm_an_result *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  if (luaL_newmetatable(L, "fm.analyze.result")) {
    lua_pushcfunction(L, result_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return r;
}

static int push_result(lua_State *L, struct fm_an_result *r) {
  lua_createtable(L, 0, 12);
  int t = lua_gettop(L);
  set_str(L, "source_type", r->source_type);
  set_str(L, "detailed_type", r->detailed_type);
  set_str(L, "compressed", r->compressed);
  lua_pushnumber(L, r->confidence);
  lua_setfield(L, t, "confidence");
  lua_pushinteger(L, (lua_Integer)r->bytes);
  lua_setfield(L, t, "bytes");
  lua_pushinteger(L, (lua_Integer)r->lines);
  lua_setfield(L, t, "lines");
  lua_pushboolean(L, r->binary);
  lua_setfield(L, t, "binary");
  lua_pushlstring(L, r->digest, r->digest_len);
  lua_setfield(L, t, "digest");
  lua_pushlstring(L, r->summary_json, r->summary_len);
  lua_setfield(L, t, "summary_json");
  /* the summary table through fm.json.decode: arrays keep fm.json's array marker, so they
   * encode back as arrays even when empty */
  luaL_requiref(L, "fm.json", luaopen_fm_json, 0);
  lua_getfield(L, -1, "decode");
  lua_pushlstring(L, r->summary_json, r->summary_len);
  lua_pushinteger(L, 64);
  lua_call(L, 2, 1);
  lua_setfield(L, t, "summary");
  lua_pop(L, 1);
  return 1;
}

static int l_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct fm_an_opts o;
  read_opts(L, 2, &o);
  struct fm_err err = {0};
  if (fm_an_platform_check(&err)) return fail(L, &err, 1);
  struct fm_an_result *r = guarded_result(L);
  if (fm_an_analyze_file(path, &o, r, &err)) return fail(L, &err, 0);
  return push_result(L, r);
}

static int l_text(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  struct fm_an_opts o;
  read_opts(L, 2, &o);
  struct fm_err err = {0};
  if (fm_an_platform_check(&err)) return fail(L, &err, 1);
  struct fm_an_result *r = guarded_result(L);
  if (fm_an_analyze_mem(s, n, &o, r, &err)) return fail(L, &err, 0);
  return push_result(L, r);
}

static const luaL_Reg funcs[] = {
    {"file", l_file},
    {"text", l_text},
    {"signatures", l_signatures},
    {"builtin_signatures", l_builtin_signatures},
    {"redact", l_redact},
    {NULL, NULL},
};

static const luaL_Reg set_methods[] = {
    {"count", l_sigset_count},
    {"close", l_sigset_close},
    {NULL, NULL},
};

int luaopen_fm_analyze(lua_State *L);
int luaopen_fm_analyze(lua_State *L) {
  fm_lua_handle_type(L, SIGSET_MT, set_methods, l_sigset_close, l_sigset_tostring);
  luaL_newlib(L, funcs);
  return 1;
}
