/* fm.db: the database for Lua, on SQLite or PostgreSQL (DATABASE_URL); Lua never knows which.
 *
 *   query(sql, ...)        -> rows | nil, message, code
 *   exec(sql, ...)         -> {changes = n, last_id = id|nil} | nil, message, code
 *   transaction(fn, ...)   -> fn's results; raises what fn raised, or {code, message} (error_mt)
 *                             when the transaction itself fails (begin, commit, a failed statement)
 *   in_transaction()       -> boolean
 *   ping([timeout_s])      -> true | nil, message, code
 *   dialect()              -> "sqlite" | "postgres"
 *   stats()                -> {size, open, in_use, idle, waiting, acquired, timeouts, reconnects}
 *                             | nil when no pool is open yet
 *   parse_url(url)         -> {backend, display, path?} | nil, message
 *   mask_url(url)          -> url with its password masked
 *   configure{url, pool_size, pool_timeout_s, connect_timeout_s} -> true | nil, message, code
 *                             (faultmaven exec only: replaces this process's pool)
 *   close()                (faultmaven exec only: closes the pool; the next call reopens it)
 *
 * Rules for SQL authors (docs/DATABASE.md): `?` placeholders only, outside literals and
 * comments; RETURNING works on both databases; times are ISO-8601 UTC text written by Lua
 * (fm.time.iso8601), so no dialect time functions are needed; booleans bind as 1/0 on SQLite and
 * true/false on PostgreSQL, and read back as 1/0 from SQLite. Rows are tables keyed by column
 * name (a NULL column is absent), in an array marked for fm.json (an empty result encodes []).
 *
 * Misuse raises (bad argument types, values that do not match the `?`, NaN); a failure of the
 * world returns nil, message, code where code is the SQLSTATE (PostgreSQL) or a mapped one
 * (SQLite): 23505 unique, 23503 foreign key, 40001 busy/serialization, 53300 pool exhausted,
 * 08001 cannot connect, 08006 connection lost, 25P02 statement in a failed transaction.
 *
 * Connections: every call outside a transaction borrows a pooled connection and gives it back
 * before converting the result, so a Lua error can never keep it. db.transaction borrows one for
 * the whole call and pins it to this VM: query/exec inside fn (and in functions it calls) use it.
 * A nested db.transaction is a SAVEPOINT. After a statement fails inside a transaction, the
 * transaction is aborted on both databases (further statements return 25P02) until its level
 * ends: db.transaction then rolls back and raises {code, message} of the first failure, even if
 * fn returned normally (a write is never lost silently). When fn raises (a budget or memory abort
 * included) the level is rolled back, the connection is given back, and the error is raised
 * again unchanged. */
#include "db.h"

#include "vm.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_KEY "fm.db.state"
#define RESULT_MT "fm.db.result"
#define ERROR_MT "fm.db.error"
#define MAX_PARAMS 65535

/* Per VM: the connection db.transaction pinned, and the state of its transaction. */
struct vmdb {
  struct fm_db_pool *pool;
  struct fm_db_slot *slot;
  int depth;  /* transaction levels open: 1 = BEGIN, more = SAVEPOINTs */
  int doomed; /* the level whose statement failed (0: none); its statements now return 25P02 */
  char doom_state[6];
  char doom_msg[512];
};

/* `faultmaven exec`: the pool settings db.configure gave (else fm.settings). */
static struct fm_db_pool_config g_exec_cfg;
static int g_exec_configured;

static struct vmdb *state(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

static int push_fail(lua_State *L, const struct fm_db_error *e) {
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, e->sqlstate[0] ? e->sqlstate : "58000");
  return 3;
}

/* db.transaction's own failures (cannot begin, commit failed, a statement in it failed) raise
 * an error object {code = SQLSTATE, message = text}; tostring gives "message (SQLSTATE code)". */
static int raise_fail(lua_State *L, const struct fm_db_error *e) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, e->sqlstate[0] ? e->sqlstate : "58000");
  lua_setfield(L, -2, "code");
  lua_pushstring(L, e->msg);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_MT);
  return lua_error(L);
}

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  lua_getfield(L, 1, "code");
  lua_pushfstring(L, "fm.db: %s (SQLSTATE %s)", luaL_optstring(L, -2, "?"), luaL_optstring(L, -1, "?"));
  return 1;
}

static int is_exec(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  return vm && vm->mode == FM_VM_EXEC;
}

static double opt_number_field(lua_State *L, int t, const char *k, double def) {
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* Pool settings from fm.settings (config.lua over the environment); raises when invalid. */
static void config_from_settings(lua_State *L, struct fm_db_pool_config *cfg) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.settings");
  lua_call(L, 1, 1);
  int t = lua_gettop(L);
  lua_getfield(L, t, "database_url");
  const char *url = luaL_checkstring(L, -1);
  struct fm_err err = {0};
  if (fm_db_url_parse(url, &cfg->url, &err)) luaL_error(L, "DATABASE_URL: %s", err.msg);
  lua_pop(L, 1);
  cfg->size = (int)opt_number_field(L, t, "database_pool_size", 4);
  cfg->acquire_timeout_s = opt_number_field(L, t, "database_pool_timeout_s", 10);
  cfg->connect_budget_s = opt_number_field(L, t, "database_connect_timeout_s", 30);
  lua_pop(L, 1);
}

/* The process's pool. In `faultmaven exec` it is opened here on first use; elsewhere it is the
 * one `faultmaven serve` opened (none: a Lua error). NULL with e set when it cannot open. */
static struct fm_db_pool *get_pool(lua_State *L, struct fm_db_error *e) {
  struct fm_db_pool *p = fm_db_global();
  if (p) return p;
  if (!is_exec(L)) {
    luaL_error(L, "fm.db: no database is open in this process");
    return NULL;
  }
  struct fm_db_pool_config cfg;
  if (g_exec_configured) cfg = g_exec_cfg;
  else config_from_settings(L, &cfg);
  struct fm_err err = {0};
  if (fm_db_pool_open(&cfg, &p, &err)) {
    fm_db_fail(e, "08001", "%s", err.msg);
    return NULL;
  }
  fm_db_global_set(p);
  return p;
}

/* Memory the VM (or the sandbox run) has left: a result built in C may not outgrow it. */
static size_t memory_left(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  size_t left = 0; /* 0: no limit */
  if (!vm) return left;
  if (vm->mem_limit) left = vm->mem_limit > vm->mem_used ? vm->mem_limit - vm->mem_used : 1;
  if (vm->sb_active && vm->sb_mem_cap) {
    size_t used = vm->mem_used > vm->sb_mem_base ? vm->mem_used - vm->sb_mem_base : 0;
    size_t sb = vm->sb_mem_cap > used ? vm->sb_mem_cap - used : 1;
    if (!left || sb < left) left = sb;
  }
  return left;
}

/* A result owned by a userdata, so that a Lua error while converting it frees it. */
static int result_gc(lua_State *L) {
  fm_db_result_free(lua_touserdata(L, 1));
  return 0;
}

static struct fm_db_result *guarded_result(lua_State *L) {
  struct fm_db_result *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  if (luaL_newmetatable(L, RESULT_MT)) {
    lua_pushcfunction(L, result_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  r->max_bytes = memory_left(L);
  return r;
}

static void check_param(lua_State *L, int idx, struct fm_db_value *v) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
  case LUA_TNIL: v->type = FM_DB_NULL; return;
  case LUA_TBOOLEAN:
    v->type = FM_DB_BOOL;
    v->i = lua_toboolean(L, idx);
    return;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      v->type = FM_DB_INT;
      v->i = (long long)lua_tointeger(L, idx);
      return;
    }
    v->type = FM_DB_FLOAT;
    v->d = lua_tonumber(L, idx);
    if (isnan(v->d)) luaL_argerror(L, idx, "NaN cannot be stored");
    return;
  case LUA_TSTRING:
    v->type = FM_DB_TEXT;
    v->s = lua_tolstring(L, idx, &v->n);
    return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) { /* fm.json.null */
      v->type = FM_DB_NULL;
      return;
    }
    break;
  default: break;
  }
  luaL_argerror(L, idx,
                lua_pushfstring(L, "expected nil, boolean, number or string, got %s",
                                luaL_typename(L, idx)));
}

static void push_cell(lua_State *L, const struct fm_db_result *r, const struct fm_db_cell *c) {
  switch (c->type) {
  case FM_DB_INT: lua_pushinteger(L, (lua_Integer)c->i); break;
  case FM_DB_FLOAT: lua_pushnumber(L, c->d); break;
  case FM_DB_BOOL: lua_pushboolean(L, (int)c->i); break;
  case FM_DB_TEXT: lua_pushlstring(L, fm_db_result_text(r, c), c->len); break;
  default: lua_pushnil(L); break;
  }
}

static void push_rows(lua_State *L, const struct fm_db_result *r) {
  int nc = r->ncols;
  luaL_checkstack(L, nc + 4, "fm.db: too many columns");
  int names = lua_gettop(L) + 1;
  for (int i = 0; i < nc; i++) push_cell(L, r, &r->cols[i]);
  lua_createtable(L, r->nrows > INT32_MAX ? INT32_MAX : (int)r->nrows, 0);
  luaL_getmetatable(L, "fm.json.array");
  if (lua_istable(L, -1)) lua_setmetatable(L, -2);
  else lua_pop(L, 1);
  for (size_t row = 0; row < r->nrows; row++) {
    const struct fm_db_cell *cells = r->cells + row * (size_t)nc;
    lua_createtable(L, 0, nc);
    for (int i = 0; i < nc; i++) {
      if (cells[i].type == FM_DB_NULL) continue;
      lua_pushvalue(L, names + i);
      push_cell(L, r, &cells[i]);
      lua_rawset(L, -3);
    }
    lua_rawseti(L, -2, (lua_Integer)row + 1);
  }
}

/* A statement failed inside a transaction: the level it ran in is aborted. */
static void doom(struct vmdb *st, const struct fm_db_error *e) {
  if (st->doomed || e->misuse) return;
  st->doomed = st->depth;
  snprintf(st->doom_state, sizeof st->doom_state, "%s", e->sqlstate);
  snprintf(st->doom_msg, sizeof st->doom_msg, "%s", e->msg);
}

static int doomed_error(const struct vmdb *st, struct fm_db_error *e) {
  return fm_db_fail(e, "25P02",
                    "current transaction is aborted, commands ignored until end of transaction "
                    "block (it failed with: %s)",
                    st->doom_msg);
}

/* query and exec: params are checked first (a misuse raises before any connection is taken);
 * the connection goes back to the pool before the result becomes Lua values. */
static int run(lua_State *L, int want_rows) {
  struct vmdb *st = state(L);
  size_t len;
  luaL_checktype(L, 1, LUA_TSTRING); /* a number is not SQL */
  const char *sql = lua_tolstring(L, 1, &len);
  int n = lua_gettop(L) - 1;
  if (n > MAX_PARAMS) return luaL_error(L, "fm.db: more than %d values", MAX_PARAMS);
  struct fm_db_value *params = NULL;
  if (n > 0) {
    params = lua_newuserdatauv(L, (size_t)n * sizeof *params, 0);
    for (int i = 0; i < n; i++) check_param(L, i + 2, &params[i]);
  }
  struct fm_db_result *res = guarded_result(L);
  struct fm_db_error e = {0};
  int rc;
  if (st->slot) { /* inside db.transaction: its connection */
    rc = st->doomed ? doomed_error(st, &e)
                    : fm_db_slot_exec(st->slot, sql, len, params, n, res, &e);
    if (rc) doom(st, &e);
  } else {
    struct fm_db_pool *pool = get_pool(L, &e);
    struct fm_db_slot *slot = NULL;
    rc = !pool || fm_db_pool_acquire(pool, -1, &slot, &e) ? -1 : 0;
    if (rc == 0) {
      rc = fm_db_slot_exec(slot, sql, len, params, n, res, &e);
      fm_db_pool_release(pool, slot);
    }
  }
  if (rc) {
    fm_db_result_free(res);
    if (e.misuse) return luaL_error(L, "fm.db.%s: %s", want_rows ? "query" : "exec", e.msg);
    return push_fail(L, &e);
  }
  if (want_rows) {
    push_rows(L, res);
  } else {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)res->changes);
    lua_setfield(L, -2, "changes");
    if (res->has_last_id && res->last_id.type != FM_DB_NULL) {
      push_cell(L, res, &res->last_id);
      lua_setfield(L, -2, "last_id");
    }
  }
  fm_db_result_free(res);
  return 1;
}

static int l_query(lua_State *L) { return run(L, 1); }
static int l_exec(lua_State *L) { return run(L, 0); }

/* A fixed statement on the pinned connection (SAVEPOINT and friends). */
static int pinned_simple(struct vmdb *st, const char *sql, struct fm_db_error *e) {
  struct fm_db_result r = {0};
  int rc = fm_db_slot_exec(st->slot, sql, strlen(sql), NULL, 0, &r, e);
  fm_db_result_free(&r);
  return rc;
}

/* Gives the pinned connection back (rolled back if a transaction is still open). C only: it runs
 * between a failed call and lua_error, where nothing may allocate in Lua. */
static void unpin(struct vmdb *st) {
  struct fm_db_slot *s = st->slot;
  struct fm_db_pool *p = st->pool;
  st->slot = NULL;
  st->pool = NULL;
  st->depth = 0;
  st->doomed = 0;
  if (s) fm_db_pool_release(p, s);
}

static int l_transaction(lua_State *L) {
  struct vmdb *st = state(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  struct fm_db_error e = {0};
  int depth = st->depth + 1;
  char sp[48];
  snprintf(sp, sizeof sp, "fm_sp_%d", depth);
  if (depth == 1) {
    struct fm_db_pool *pool = get_pool(L, &e);
    struct fm_db_slot *slot = NULL;
    if (!pool || fm_db_pool_acquire(pool, -1, &slot, &e)) return raise_fail(L, &e);
    if (fm_db_slot_begin(slot, &e)) {
      fm_db_pool_release(pool, slot);
      return raise_fail(L, &e);
    }
    st->pool = pool;
    st->slot = slot;
    st->doomed = 0;
  } else {
    char sql[64];
    snprintf(sql, sizeof sql, "SAVEPOINT %s", sp);
    if (st->doomed) {
      doomed_error(st, &e);
      return raise_fail(L, &e);
    }
    if (pinned_simple(st, sql, &e)) {
      doom(st, &e);
      return raise_fail(L, &e);
    }
  }
  st->depth = depth;

  int status = lua_pcall(L, nargs, LUA_MULTRET, 0);

  /* From here to the return, nothing allocates in Lua until the connection is settled: the
   * error may be a memory abort, and the results are already on the stack. */
  int failed = status != LUA_OK;
  int doomed = st->doomed == depth;
  struct fm_db_error end = {0};
  if (doomed) {
    snprintf(end.sqlstate, sizeof end.sqlstate, "%s", st->doom_state);
    snprintf(end.msg, sizeof end.msg, "%s", st->doom_msg);
  }
  int end_failed = 0;
  if (depth == 1) {
    if (failed || doomed) {
      fm_db_slot_rollback(st->slot, &e); /* if it fails, release closes the connection */
    } else if (fm_db_slot_commit(st->slot, &end)) {
      end_failed = 1;
    }
    unpin(st);
  } else {
    char sql[96];
    if (failed || doomed) {
      snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT %s", sp);
      int rc = pinned_simple(st, sql, &e);
      snprintf(sql, sizeof sql, "RELEASE SAVEPOINT %s", sp);
      if (!rc) rc = pinned_simple(st, sql, &e);
      st->doomed = 0;
      st->depth = depth - 1;
      if (rc) doom(st, &e); /* the outer level cannot go on either */
    } else {
      snprintf(sql, sizeof sql, "RELEASE SAVEPOINT %s", sp);
      st->depth = depth - 1;
      if (pinned_simple(st, sql, &end)) {
        end_failed = 1;
        doom(st, &end);
      }
    }
  }
  if (failed) return lua_error(L); /* fn's error object, unchanged */
  if (doomed || end_failed) {
    lua_settop(L, 0);
    return raise_fail(L, &end);
  }
  return lua_gettop(L);
}

static int l_in_transaction(lua_State *L) {
  lua_pushboolean(L, state(L)->slot != NULL);
  return 1;
}

static int l_ping(lua_State *L) {
  struct vmdb *st = state(L);
  double timeout = luaL_optnumber(L, 1, -1);
  struct fm_db_error e = {0};
  int rc;
  if (st->slot) {
    rc = st->doomed ? doomed_error(st, &e) : fm_db_slot_ping(st->slot, &e);
  } else {
    struct fm_db_pool *pool = get_pool(L, &e);
    struct fm_db_slot *slot = NULL;
    rc = !pool || fm_db_pool_acquire(pool, timeout, &slot, &e) ? -1 : 0;
    if (rc == 0) {
      rc = fm_db_slot_ping(slot, &e);
      fm_db_pool_release(pool, slot);
    }
  }
  if (rc) return push_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_dialect(lua_State *L) {
  struct fm_db_pool *p = fm_db_global();
  enum fm_db_backend b;
  if (p) {
    b = fm_db_pool_config(p)->url.backend;
  } else if (is_exec(L)) {
    struct fm_db_pool_config cfg;
    if (g_exec_configured) cfg = g_exec_cfg;
    else config_from_settings(L, &cfg);
    b = cfg.url.backend;
  } else {
    return luaL_error(L, "fm.db: no database is open in this process");
  }
  lua_pushstring(L, fm_db_driver_for(b)->name);
  return 1;
}

static int l_stats(lua_State *L) {
  struct fm_db_pool *p = fm_db_global();
  if (!p) {
    lua_pushnil(L);
    return 1;
  }
  struct fm_db_stats s;
  fm_db_pool_stats(p, &s);
  lua_createtable(L, 0, 9);
  lua_pushstring(L, fm_db_pool_driver(p)->name);
  lua_setfield(L, -2, "backend");
  const struct {
    const char *k;
    long long v;
  } f[] = {{"size", s.size},         {"open", s.open},
           {"in_use", s.in_use},     {"idle", s.size - s.in_use},
           {"waiting", s.waiting},   {"acquired", s.acquired},
           {"timeouts", s.timeouts}, {"reconnects", s.reconnects}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushinteger(L, (lua_Integer)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

static int l_parse_url(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  struct fm_db_url *u = lua_newuserdatauv(L, sizeof *u, 0); /* large: not on the C stack */
  struct fm_err err = {0};
  if (fm_db_url_parse(url, u, &err)) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, fm_db_driver_for(u->backend)->name);
  lua_setfield(L, -2, "backend");
  lua_pushstring(L, u->display);
  lua_setfield(L, -2, "display");
  if (u->backend == FM_DB_SQLITE) {
    lua_pushstring(L, u->path);
    lua_setfield(L, -2, "path");
  }
  return 1;
}

static int l_mask_url(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  char out[FM_DB_URL_MAX + 64];
  fm_db_url_mask(url, out, sizeof out);
  lua_pushstring(L, out);
  return 1;
}

static void exec_only(lua_State *L, const char *what) {
  if (!is_exec(L)) luaL_error(L, "fm.db.%s is for `faultmaven exec` only", what);
  if (state(L)->slot) luaL_error(L, "fm.db.%s: inside a transaction", what);
}

static int l_configure(lua_State *L) {
  exec_only(L, "configure");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "url");
  const char *url = luaL_checkstring(L, -1);
  struct fm_db_pool_config *cfg = lua_newuserdatauv(L, sizeof *cfg, 0);
  memset(cfg, 0, sizeof *cfg);
  struct fm_err err = {0};
  if (fm_db_url_parse(url, &cfg->url, &err)) return luaL_error(L, "fm.db.configure: %s", err.msg);
  cfg->size = (int)opt_number_field(L, 1, "pool_size", 2);
  cfg->acquire_timeout_s = opt_number_field(L, 1, "pool_timeout_s", 10);
  cfg->connect_budget_s = opt_number_field(L, 1, "connect_timeout_s", 30);
  if (cfg->size < 1 || cfg->size > 1024) return luaL_error(L, "fm.db.configure: pool_size 1 to 1024");
  fm_db_global_close();
  g_exec_cfg = *cfg;
  g_exec_configured = 1;
  struct fm_db_error e = {0};
  if (!get_pool(L, &e)) return push_fail(L, &e);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  exec_only(L, "close");
  fm_db_global_close();
  return 0;
}

/* The VM is closing with a transaction still pinned (an exec script that exited inside one):
 * roll it back and give the connection back. */
static int state_gc(lua_State *L) {
  struct vmdb *st = lua_touserdata(L, 1);
  unpin(st);
  return 0;
}

static const luaL_Reg funcs[] = {
    {"query", l_query},         {"exec", l_exec},
    {"transaction", l_transaction}, {"in_transaction", l_in_transaction},
    {"ping", l_ping},           {"dialect", l_dialect},
    {"stats", l_stats},         {"parse_url", l_parse_url},
    {"mask_url", l_mask_url},   {"configure", l_configure},
    {"close", l_close},         {NULL, NULL},
};

int luaopen_fm_json(lua_State *L);
int luaopen_fm_db(lua_State *L);
int luaopen_fm_db(lua_State *L) {
  /* rows are marked as arrays for fm.json (its metatable is registered when it opens) */
  luaL_requiref(L, "fm.json", luaopen_fm_json, 0);
  lua_pop(L, 1);
  lua_newtable(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    struct vmdb *st = lua_newuserdatauv(L, sizeof *st, 0);
    memset(st, 0, sizeof *st);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  }
  luaL_setfuncs(L, funcs, 1);
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setfield(L, -2, "error_mt");
  return 1;
}
