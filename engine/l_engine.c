/* fm.engine: facts about the running engine for health, metrics and the REPL. */
#include "cors.h"
#include "http.h"
#include "log.h"
#include "state.h"
#include "util.h"
#include "vm.h"

#include <lauxlib.h>
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
  if (vm) {
    set_int(L, "worker_id", vm->worker_id);
    set_str(L, "mode", vm->mode == FM_VM_EXEC ? "exec" : "serve");
    set_int(L, "lua_memory_bytes", (lua_Integer)vm->mem_used);
    set_int(L, "lua_memory_limit", (lua_Integer)vm->mem_limit);
  }
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
                                 {NULL, NULL}};

int luaopen_fm_engine(lua_State *L);
int luaopen_fm_engine(lua_State *L) {
  luaL_newlib(L, funcs);
  set_str(L, "version", FM_VERSION);
  return 1;
}
