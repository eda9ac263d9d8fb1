/* fm.kv: the cache and identity store for Lua, in process (memory) or on Redis (REDIS_URL or
 * REDIS_HOST); Lua never knows which.
 *
 *   get(key)                   -> value | nil            (nil: no such key)
 *   set(key, value [, ttl_s])  -> true
 *   del(key)                   -> true | false           (whether the key existed)
 *   incr(key [, by [, ttl_s]]) -> integer                (atomic; ttl_s set when it creates the key)
 *   expire(key, ttl_s)         -> true | false           (whether the key exists)
 *   ttl(key)                   -> seconds left | -1 (no expiry) | -2 (no such key)
 *   ping()                     -> true
 *   backend()                  -> "memory" | "redis"
 *   register_script(name, lua_source) -> true           (process-wide; every VM may repeat it)
 *   eval(name, keys, args)     -> the script's result (string, integer, table; status replies
 *                                 as their text; nil)    (Redis only: memory raises)
 *   stats()                    -> {backend, entries, bytes, max_bytes, evictions, expired} |
 *                                 {backend, size, open, in_use, reconnects, failures}
 *   configure{backend = "memory"|"redis", url, password, memory_max_mb, pool_size, timeout_ms,
 *             mode = "sentinel", sentinels = "h:p,h:p" (or a list), master_set,
 *             sentinel_password}
 *   close()                    (both `faultmaven exec` only: replace or close this process's
 *                               store; the next call opens it again from the settings)
 *
 * Keys are non-empty strings (numbers are converted); values strings or numbers, binary-safe.
 * Misuse raises; a failure of the world (every call after `backend`) returns nil, message, code
 * with code KV_UNAVAILABLE, KV_TIMEOUT, KV_ERROR, KV_NOT_INTEGER or KV_TOO_LARGE. Each call is
 * counted in fm_kv_operations_total{backend,op,result}. */
#include "kv.h"

#include "vm.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEY 65536
#define MAX_ARGS 4096

/* `faultmaven exec`: the store kv.configure gave (else fm.settings). */
static struct fm_kv_config g_exec_cfg;
static int g_exec_configured;

static int is_exec(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  return vm && vm->mode == FM_VM_EXEC;
}

static lua_Integer int_field(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isnil(L, -1) ? def : (lua_Integer)luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void str_field(lua_State *L, int t, const char *k, char *out, size_t outsz) {
  lua_getfield(L, t, k);
  const char *v = lua_isnil(L, -1) ? "" : luaL_checkstring(L, -1);
  if (strlen(v) >= outsz) luaL_error(L, "%s: too long", k);
  snprintf(out, outsz, "%s", v);
  lua_pop(L, 1);
}

/* The store settings from the table at t (fm.settings keys). Raises when invalid. */
static void config_from_table(lua_State *L, int t, struct fm_kv_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  char url[FM_KV_STR_MAX * 2];
  str_field(L, t, "redis_mode", cfg->mode, sizeof cfg->mode);
  if (!cfg->mode[0]) snprintf(cfg->mode, sizeof cfg->mode, "standalone");
  str_field(L, t, "redis_url", url, sizeof url);
  str_field(L, t, "redis_host", cfg->host, sizeof cfg->host);
  cfg->memory_max_bytes = (size_t)int_field(L, t, "kv_memory_max_mb", 64) << 20;
  cfg->pool_size = (int)int_field(L, t, "redis_pool_size", 4);
  cfg->timeout_ms = (int)int_field(L, t, "redis_timeout_ms", 2000);
  if (strcmp(cfg->mode, "sentinel") == 0) {
    /* the master comes from the sentinels; REDIS_PASSWORD and REDIS_DB apply to it */
    cfg->backend = FM_KV_REDIS;
    lua_getfield(L, t, "redis_sentinel_hosts");
    if (lua_istable(L, -1)) { /* fm.settings: a list */
      size_t o = 0;
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, -1, i);
        size_t hn;
        const char *hs = luaL_checklstring(L, -1, &hn);
        if (o + hn + 2 > sizeof cfg->sentinels) luaL_error(L, "redis_sentinel_hosts: too long");
        if (o) cfg->sentinels[o++] = ',';
        memcpy(cfg->sentinels + o, hs, hn);
        o += hn;
        cfg->sentinels[o] = '\0';
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    } else {
      lua_pop(L, 1);
      str_field(L, t, "redis_sentinel_hosts", cfg->sentinels, sizeof cfg->sentinels);
    }
    str_field(L, t, "redis_master_set", cfg->master_set, sizeof cfg->master_set);
    if (!cfg->master_set[0]) snprintf(cfg->master_set, sizeof cfg->master_set, "mymaster");
    str_field(L, t, "redis_sentinel_password", cfg->sentinel_password,
              sizeof cfg->sentinel_password);
    str_field(L, t, "redis_password", cfg->password, sizeof cfg->password);
    cfg->db = (int)int_field(L, t, "redis_db", 0);
    cfg->port = 0;
    cfg->host[0] = '\0';
  } else if (url[0]) {
    struct fm_err err = {0};
    if (fm_kv_redis_url_parse(url, cfg, &err)) luaL_error(L, "REDIS_URL: %s", err.msg);
    cfg->backend = FM_KV_REDIS;
    char pw[FM_KV_STR_MAX];
    str_field(L, t, "redis_password", pw, sizeof pw);
    if (!cfg->password[0] && pw[0]) snprintf(cfg->password, sizeof cfg->password, "%s", pw);
  } else if (cfg->host[0]) {
    cfg->backend = FM_KV_REDIS;
    cfg->port = (int)int_field(L, t, "redis_port", 6379);
    cfg->db = (int)int_field(L, t, "redis_db", 0);
    str_field(L, t, "redis_password", cfg->password, sizeof cfg->password);
  } else {
    cfg->backend = FM_KV_MEMORY;
  }
  if (cfg->backend == FM_KV_REDIS) fm_kv_config_display(cfg);
}

static int l_config_from_settings(lua_State *L) {
  struct fm_kv_config *cfg = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.settings");
  lua_call(L, 1, 1);
  config_from_table(L, lua_gettop(L), cfg);
  return 0;
}

int fm_kv_open_from_settings(struct fm_vm *vm, struct fm_err *err) {
  struct fm_kv_config cfg;
  lua_pushcfunction(vm->L, l_config_from_settings);
  lua_pushlightuserdata(vm->L, &cfg);
  if (fm_vm_pcall(vm, 1, 0, err)) return FM_E_INVAL;
  struct fm_kv_store *kv;
  if (fm_kv_open(&cfg, &kv, err)) return err->code ? err->code : FM_E_INVAL;
  fm_kv_global_set(kv);
  return 0;
}

/* The process's store: serve opened it; exec opens it here on first use. */
static struct fm_kv_store *get_kv(lua_State *L) {
  struct fm_kv_store *kv = fm_kv_global();
  if (kv) return kv;
  if (!is_exec(L)) {
    luaL_error(L, "fm.kv: no store is open in this process");
    return NULL;
  }
  struct fm_kv_config cfg;
  if (g_exec_configured) {
    cfg = g_exec_cfg;
  } else {
    lua_pushcfunction(L, l_config_from_settings);
    lua_pushlightuserdata(L, &cfg);
    lua_call(L, 1, 0);
  }
  struct fm_err err = {0};
  if (fm_kv_open(&cfg, &kv, &err)) luaL_error(L, "fm.kv: %s", err.msg);
  fm_kv_global_set(kv);
  return kv;
}

static const char *check_key(lua_State *L, int idx, size_t *n) {
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_argerror(L, idx, lua_pushfstring(L, "key: expected a string, got %s", luaL_typename(L, idx)));
  const char *k = lua_tolstring(L, idx, n);
  if (*n == 0) luaL_argerror(L, idx, "key: empty");
  if (*n > MAX_KEY) luaL_argerror(L, idx, "key: longer than 64 KiB");
  return k;
}

static const char *check_value(lua_State *L, int idx, size_t *n) {
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_argerror(L, idx,
                  lua_pushfstring(L, "value: expected a string or number, got %s", luaL_typename(L, idx)));
  return lua_tolstring(L, idx, n);
}

/* ttl_s at idx: nil/absent -> 0 (none, when optional); else > 0 seconds, to ms (at least 1). */
static long long check_ttl(lua_State *L, int idx, int optional) {
  if (optional && lua_isnoneornil(L, idx)) return 0;
  lua_Number s = luaL_checknumber(L, idx);
  if (!(s > 0) || isinf(s) || s > 1e12) luaL_argerror(L, idx, "ttl_s: expected a number of seconds > 0");
  long long ms = (long long)llround(s * 1000.0);
  return ms < 1 ? 1 : ms;
}

static int fail(lua_State *L, struct fm_kv_store *kv, const char *op, const struct fm_kv_error *e) {
  fm_kv_count(kv, op, 0);
  if (e->misuse) return luaL_error(L, "fm.kv.%s: %s", op, e->msg);
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, e->code[0] ? e->code : FM_KV_ERROR);
  return 3;
}

/* A malloc'd buffer owned by a userdata, freed by its __gc if a Lua error comes first. */
static int guard_gc(lua_State *L) {
  char **p = lua_touserdata(L, 1);
  free(*p);
  *p = NULL;
  return 0;
}

static char **guard(lua_State *L) {
  char **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  return p;
}

static int l_get(lua_State *L) {
  size_t kn;
  const char *k = check_key(L, 1, &kn);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  char **v = guard(L);
  size_t vn = 0;
  int rc = kv->drv->get(kv->h, k, kn, v, &vn, &e);
  if (rc < 0) return fail(L, kv, "get", &e);
  fm_kv_count(kv, "get", 1);
  if (rc == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, *v, vn); /* may raise (memory): the guard frees the copy then */
  free(*v);
  *v = NULL;
  return 1;
}

static int l_set(lua_State *L) {
  size_t kn, vn;
  const char *k = check_key(L, 1, &kn);
  const char *v = check_value(L, 2, &vn);
  long long ttl = check_ttl(L, 3, 1);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  if (kv->drv->set(kv->h, k, kn, v, vn, ttl, &e)) return fail(L, kv, "set", &e);
  fm_kv_count(kv, "set", 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_del(lua_State *L) {
  size_t kn;
  const char *k = check_key(L, 1, &kn);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  int rc = kv->drv->del(kv->h, k, kn, &e);
  if (rc < 0) return fail(L, kv, "del", &e);
  fm_kv_count(kv, "del", 1);
  lua_pushboolean(L, rc);
  return 1;
}

static int l_incr(lua_State *L) {
  size_t kn;
  const char *k = check_key(L, 1, &kn);
  lua_Integer by = 1;
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isinteger(L, 2)) {
      lua_Number d = luaL_checknumber(L, 2);
      if (d != floor(d) || fabs(d) > 9007199254740992.0) luaL_argerror(L, 2, "by: expected an integer");
      by = (lua_Integer)d;
    } else {
      by = lua_tointeger(L, 2);
    }
  }
  long long ttl = check_ttl(L, 3, 1);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  long long out = 0;
  if (kv->drv->incr(kv->h, k, kn, (long long)by, ttl, &out, &e)) return fail(L, kv, "incr", &e);
  fm_kv_count(kv, "incr", 1);
  lua_pushinteger(L, (lua_Integer)out);
  return 1;
}

static int l_expire(lua_State *L) {
  size_t kn;
  const char *k = check_key(L, 1, &kn);
  long long ttl = check_ttl(L, 2, 0);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  int rc = kv->drv->expire(kv->h, k, kn, ttl, &e);
  if (rc < 0) return fail(L, kv, "expire", &e);
  fm_kv_count(kv, "expire", 1);
  lua_pushboolean(L, rc);
  return 1;
}

static int l_ttl(lua_State *L) {
  size_t kn;
  const char *k = check_key(L, 1, &kn);
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  long long ms = 0;
  if (kv->drv->ttl(kv->h, k, kn, &ms, &e)) return fail(L, kv, "ttl", &e);
  fm_kv_count(kv, "ttl", 1);
  if (ms < 0) lua_pushinteger(L, (lua_Integer)ms);
  else lua_pushnumber(L, (lua_Number)ms / 1000.0);
  return 1;
}

static int l_ping(lua_State *L) {
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_error e = {0};
  if (kv->drv->ping(kv->h, &e)) return fail(L, kv, "ping", &e);
  fm_kv_count(kv, "ping", 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_backend(lua_State *L) {
  lua_pushstring(L, get_kv(L)->drv->name);
  return 1;
}

static int l_register_script(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  size_t n;
  const char *src = luaL_checklstring(L, 2, &n);
  if (!name[0] || strlen(name) > 128) luaL_argerror(L, 1, "name: 1 to 128 bytes");
  struct fm_err err = {0};
  if (fm_kv_script_register(name, src, n, &err)) return luaL_error(L, "fm.kv.register_script: %s", err.msg);
  lua_pushboolean(L, 1);
  return 1;
}

static void push_value(lua_State *L, const struct fm_kv_value *v) {
  luaL_checkstack(L, 4, "fm.kv: script result too deep");
  switch (v->type) {
  case FM_KV_INT: lua_pushinteger(L, (lua_Integer)v->i); break;
  case FM_KV_STR:
  case FM_KV_STATUS: lua_pushlstring(L, v->s, v->n); break;
  case FM_KV_ARRAY:
    lua_createtable(L, v->n > 1000000 ? 1000000 : (int)v->n, 0);
    for (size_t i = 0; i < v->n; i++) {
      push_value(L, &v->elem[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  default: lua_pushnil(L); break;
  }
}

/* A script result owned by a userdata, so that a Lua error while converting it frees it. */
static int value_gc(lua_State *L) {
  fm_kv_value_free(lua_touserdata(L, 1));
  return 0;
}

static int l_eval(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  int nkeys = lua_istable(L, 2) ? (int)lua_rawlen(L, 2) : 0;
  int nargs = lua_istable(L, 3) ? (int)lua_rawlen(L, 3) : 0;
  if (nkeys + nargs > MAX_ARGS) return luaL_error(L, "fm.kv.eval: more than %d keys and args", MAX_ARGS);
  int total = nkeys + nargs;
  luaL_checkstack(L, total + 16, "fm.kv.eval: too many keys and args");
  const char **argv = lua_newuserdatauv(L, (size_t)(total ? total : 1) * sizeof *argv, 0);
  size_t *argl = lua_newuserdatauv(L, (size_t)(total ? total : 1) * sizeof *argl, 0);
  for (int i = 0; i < total; i++) {
    int t = i < nkeys ? 2 : 3;
    lua_rawgeti(L, t, i < nkeys ? i + 1 : i - nkeys + 1);
    int ty = lua_type(L, -1);
    if (ty != LUA_TSTRING && ty != LUA_TNUMBER)
      return luaL_error(L, "fm.kv.eval: %s[%d]: expected a string or number, got %s",
                        i < nkeys ? "keys" : "args", i < nkeys ? i + 1 : i - nkeys + 1,
                        luaL_typename(L, -1));
    argv[i] = lua_tolstring(L, -1, &argl[i]); /* stays referenced: left on the stack */
  }
  luaL_checkstack(L, 8, "fm.kv.eval");
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_value *v = lua_newuserdatauv(L, sizeof *v, 0);
  memset(v, 0, sizeof *v);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, value_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  struct fm_kv_error e = {0};
  if (fm_kv_eval(kv, name, nkeys, argv, argl, total, v, &e)) return fail(L, kv, "eval", &e);
  fm_kv_count(kv, "eval", 1);
  push_value(L, v);
  return 1;
}

static int l_stats(lua_State *L) {
  struct fm_kv_store *kv = get_kv(L);
  struct fm_kv_stats s;
  kv->drv->stats(kv->h, &s);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, kv->drv->name);
  lua_setfield(L, -2, "backend");
  const struct {
    const char *k;
    long long v;
  } mem[] = {{"entries", s.entries},     {"bytes", s.bytes},     {"max_bytes", s.max_bytes},
             {"evictions", s.evictions}, {"expired", s.expired}},
    red[] = {{"size", s.size},           {"open", s.open},       {"in_use", s.in_use},
             {"reconnects", s.reconnects}, {"failures", s.failures}};
  int redis = kv->cfg.backend == FM_KV_REDIS;
  for (size_t i = 0; i < 5; i++) {
    lua_pushinteger(L, (lua_Integer)(redis ? red[i].v : mem[i].v));
    lua_setfield(L, -2, redis ? red[i].k : mem[i].k);
  }
  if (redis) {
    lua_pushstring(L, kv->cfg.display);
    lua_setfield(L, -2, "url");
  }
  return 1;
}

static void exec_only(lua_State *L, const char *what) {
  if (!is_exec(L)) luaL_error(L, "fm.kv.%s is for `faultmaven exec` only", what);
}

static int l_configure(lua_State *L) {
  exec_only(L, "configure");
  luaL_checktype(L, 1, LUA_TTABLE);
  struct fm_kv_config *cfg = lua_newuserdatauv(L, sizeof *cfg, 0);
  /* the same keys as fm.settings, in short: url, host, port, password, db, pool_size,
   * timeout_ms, memory_max_mb, mode, sentinels, master_set, sentinel_password */
  lua_createtable(L, 0, 12);
  int t = lua_gettop(L);
  static const char *const map[][2] = {
      {"url", "redis_url"},         {"host", "redis_host"},         {"port", "redis_port"},
      {"password", "redis_password"}, {"db", "redis_db"},         {"pool_size", "redis_pool_size"},
      {"timeout_ms", "redis_timeout_ms"}, {"memory_max_mb", "kv_memory_max_mb"},
      {"mode", "redis_mode"},           {"sentinels", "redis_sentinel_hosts"},
      {"master_set", "redis_master_set"}, {"sentinel_password", "redis_sentinel_password"}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
    lua_getfield(L, 1, map[i][0]);
    lua_setfield(L, t, map[i][1]);
  }
  config_from_table(L, t, cfg);
  lua_getfield(L, 1, "backend");
  const char *b = luaL_optstring(L, -1, NULL);
  if (b && strcmp(b, "memory") == 0 && cfg->backend != FM_KV_MEMORY)
    return luaL_error(L, "fm.kv.configure: backend memory with a Redis address");
  if (b && strcmp(b, "redis") == 0 && cfg->backend != FM_KV_REDIS)
    return luaL_error(L, "fm.kv.configure: backend redis needs url or host");
  if (cfg->pool_size < 1 || cfg->pool_size > 1024) return luaL_error(L, "fm.kv.configure: pool_size 1 to 1024");
  struct fm_kv_store *kv;
  struct fm_err err = {0};
  if (fm_kv_open(cfg, &kv, &err)) return luaL_error(L, "fm.kv.configure: %s", err.msg);
  fm_kv_global_set(kv);
  g_exec_cfg = *cfg;
  g_exec_configured = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  exec_only(L, "close");
  fm_kv_global_close();
  g_exec_configured = 0;
  return 0;
}

static const luaL_Reg funcs[] = {
    {"get", l_get},         {"set", l_set},         {"del", l_del},
    {"incr", l_incr},       {"expire", l_expire},   {"ttl", l_ttl},
    {"ping", l_ping},       {"backend", l_backend}, {"register_script", l_register_script},
    {"eval", l_eval},       {"stats", l_stats},     {"configure", l_configure},
    {"close", l_close},     {NULL, NULL},
};

int luaopen_fm_kv(lua_State *L);
int luaopen_fm_kv(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
