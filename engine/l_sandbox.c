/* fm.sandbox_core: run a function under its own instruction budget and memory cap, inside the
 * current VM. lua/fm/sandbox.lua builds the allow-listed environment on top of it.
 *
 *   core.run({instructions = N, memory = BYTES}, fn, ...) -> true, results...
 *                                                        | false, kind, message
 * kind is "instructions" or "memory" when the run hit its own limit, "error" when fn raised
 * (message is then the error object as raised). A limit of the enclosing request (its budget, the
 * VM's memory cap) is not the run's to catch: it propagates as before. Runs do not nest. */
#include "vm.h"

#include <lauxlib.h>

static int l_run(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (vm->sb_active) return luaL_error(L, "sandbox runs do not nest");
  lua_getfield(L, 1, "instructions");
  lua_Integer budget = luaL_optinteger(L, -1, 0);
  lua_getfield(L, 1, "memory");
  lua_Integer mem = luaL_optinteger(L, -1, 0);
  lua_pop(L, 2);
  if (budget < 0 || mem < 0) return luaL_error(L, "sandbox limits must be >= 0");
  int nargs = lua_gettop(L) - 2;
  vm->sb_active = 1;
  vm->sb_budget = (uint64_t)budget;
  vm->sb_used = 0;
  vm->sb_mem_base = vm->mem_used;
  vm->sb_mem_cap = (size_t)mem;
  vm->fail_nsize = 0;
  int status = lua_pcall(L, nargs, LUA_MULTRET, 0);
  vm->sb_active = 0;
  int abort = vm->abort;
  if (status == LUA_ERRMEM && abort == FM_VM_OK) abort = FM_VM_ABORT_SANDBOX_MEMORY;
  if (abort == FM_VM_ABORT_SANDBOX_BUDGET || abort == FM_VM_ABORT_SANDBOX_MEMORY) {
    vm->abort = FM_VM_OK;
    lua_settop(L, 0);
    lua_pushboolean(L, 0);
    if (abort == FM_VM_ABORT_SANDBOX_BUDGET) {
      lua_pushliteral(L, "instructions");
      lua_pushfstring(L, "exceeded its instruction budget (%I instructions)", (lua_Integer)budget);
    } else {
      lua_gc(L, LUA_GCCOLLECT); /* give the memory back before anything else runs */
      lua_pushliteral(L, "memory");
      lua_pushfstring(L, "exceeded its memory cap (%I bytes)", (lua_Integer)mem);
    }
    return 3;
  }
  if (status != LUA_OK) {
    if (abort != FM_VM_OK) return lua_error(L); /* the request's own limit: not ours to catch */
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "error");
    lua_rotate(L, -3, 2); /* false, "error", errobj */
    return 3;
  }
  lua_pushboolean(L, 1); /* the limits table at 1 becomes true; the results follow it */
  lua_replace(L, 1);
  return lua_gettop(L);
}

static const luaL_Reg funcs[] = {{"run", l_run}, {NULL, NULL}};

int luaopen_fm_sandbox_core(lua_State *L);
int luaopen_fm_sandbox_core(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
