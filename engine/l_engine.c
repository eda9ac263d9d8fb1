/* fm.engine: facts about the running engine for health, metrics and the REPL. */
#include "cors.h"
#include "http.h"
#include "log.h"
#include "reload.h"
#include "state.h"
#include "util.h"
#include "vm.h"

#include <lauxlib.h>
#include <string.h>
#include <unistd.h>

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static int l_engine_info(lua_State *L) {
  static const char *const ready[] = {"starting", "ready", "shutting_down"};
  struct fm_vm *vm = fm_vm_from_lua(L);
  int r = fm_http_ready();
  lua_createtable(L, 0, 20);
  set_str(L, "version", FM_VERSION);
  set_str(L, "lua_version", LUA_RELEASE);
  lua_pushnumber(L, fm_state.started_at);
  lua_setfield(L, -2, "started_at");
  lua_pushnumber(L, fm_state.started_mono > 0 ? fm_time_mono() - fm_state.started_mono : 0);
  lua_setfield(L, -2, "uptime_s");
  set_int(L, "workers", fm_state.workers);
  set_int(L, "io_threads", fm_state.io_threads);
  set_int(L, "workers_busy", atomic_load(&fm_state.busy));
  set_int(L, "queued", atomic_load(&fm_state.queued));
  set_int(L, "requests", atomic_load(&fm_state.requests));
  set_int(L, "inflight", fm_http_inflight());
  set_int(L, "vm_restarts", atomic_load(&fm_state.vm_restarts));
  set_str(L, "readiness", ready[r >= 0 && r <= 2 ? r : 0]);
  set_str(L, "host", fm_state.host);
  set_int(L, "port", fm_state.port);
  set_str(L, "home", fm_state.home);
  set_str(L, "data_dir", fm_state.data_dir);
  set_str(L, "log_level", fm_log_level_name(fm_log_get_level()));
  set_int(L, "generation", fm_generation());
  if (vm) {
    if (vm->gen) set_int(L, "vm_generation", vm->gen->number);
    set_int(L, "worker_id", vm->worker_id);
    set_str(L, "mode", vm->mode == FM_VM_EXEC ? "exec" : vm->mode == FM_VM_ADMIN ? "admin" : "serve");
    set_int(L, "lua_memory_bytes", (lua_Integer)vm->mem_used);
    set_int(L, "lua_memory_limit", (lua_Integer)vm->mem_limit);
  }
  return 1;
}

/* Pushes a reload outcome as {ok, changed, generation, reason, at, file?, line?, message?,
 * restart_required = {...}}. */
static void push_outcome(lua_State *L, const struct fm_reload_outcome *o) {
  lua_createtable(L, 0, 10);
  lua_pushboolean(L, o->ok);
  lua_setfield(L, -2, "ok");
  lua_pushboolean(L, o->changed);
  lua_setfield(L, -2, "changed");
  set_int(L, "generation", o->generation);
  set_str(L, "reason", o->reason);
  lua_pushnumber(L, o->at);
  lua_setfield(L, -2, "at");
  if (!o->ok) {
    if (o->file[0]) set_str(L, "file", o->file);
    if (o->line > 0) set_int(L, "line", o->line);
    set_str(L, "message", o->message);
  }
  lua_newtable(L);
  lua_Integer k = 0;
  for (const char *p = o->restart_required; *p;) {
    const char *c = strchr(p, ',');
    size_t n = c ? (size_t)(c - p) : strlen(p);
    lua_pushlstring(L, p, n);
    lua_rawseti(L, -2, ++k);
    p += n + (c ? 1 : 0);
  }
  lua_setfield(L, -2, "restart_required");
}

/* reload_status() -> {generation, failed, reloads_ok, reloads_failed, last = outcome | nil,
 * report = the serving generation's self-check report (routes, playbooks, restart_required)}. */
static int l_engine_reload_status(lua_State *L) {
  struct fm_reload_outcome o;
  int failed = 0;
  int have = fm_reload_last(&o, &failed);
  lua_createtable(L, 0, 6);
  set_int(L, "generation", fm_generation());
  lua_pushboolean(L, failed);
  lua_setfield(L, -2, "failed");
  set_int(L, "reloads_ok", fm_reload_count(1));
  set_int(L, "reloads_failed", fm_reload_count(0));
  if (have) {
    push_outcome(L, &o);
    lua_setfield(L, -2, "last");
  }
  struct fm_gen *g = fm_gen_acquire();
  if (g) {
    lua_pushstring(L, fm_gen_report(g));
    fm_gen_release(g);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "fm.json");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_rotate(L, -3, 1); /* decode, report text, module */
    lua_pop(L, 1);
    lua_call(L, 1, 1);
    lua_setfield(L, -2, "report");
  }
  return 1;
}

/* reload(reason) -> outcome: admin VM only (it blocks until the attempt ends). */
static int l_engine_reload(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (!vm || vm->mode != FM_VM_ADMIN) return luaL_error(L, "engine.reload is for the admin VM");
  const char *reason = luaL_optstring(L, 1, "admin");
  struct fm_reload_outcome o;
  fm_reload_run(reason, &o);
  push_outcome(L, &o);
  return 1;
}

/* boot_settings() -> JSON text of the settings C took at start, or nil before the engine ran. */
static int l_engine_boot_settings(lua_State *L) {
  const char *s = fm_reload_boot_settings();
  if (s) lua_pushstring(L, s);
  else lua_pushnil(L);
  return 1;
}

static int l_engine_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* cors_allowed(origin) -> boolean: the policy C applies to every response. */
static int l_engine_cors_allowed(lua_State *L) {
  lua_pushboolean(L, fm_cors_allowed(luaL_optstring(L, 1, NULL)));
  return 1;
}

static const luaL_Reg funcs[] = {{"info", l_engine_info},
                                 {"cpu_count", l_engine_cpu_count},
                                 {"cors_allowed", l_engine_cors_allowed},
                                 {"reload_status", l_engine_reload_status},
                                 {"reload", l_engine_reload},
                                 {"boot_settings", l_engine_boot_settings},
                                 {NULL, NULL}};

int luaopen_fm_engine(lua_State *L);
int luaopen_fm_engine(lua_State *L) {
  luaL_newlib(L, funcs);
  set_str(L, "version", FM_VERSION);
  return 1;
}
