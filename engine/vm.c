#include "vm.h"

#include "log.h"
#include "reload.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_STEP 1000

int luaopen_fm_log(lua_State *L);
int luaopen_fm_metrics(lua_State *L);
int luaopen_fm_http(lua_State *L);
int luaopen_fm_time(lua_State *L);
int luaopen_fm_json(lua_State *L);
int luaopen_fm_crypto(lua_State *L);
int luaopen_fm_engine(lua_State *L);
int luaopen_fm_proc(lua_State *L);
int luaopen_fm_source(lua_State *L);
int luaopen_fm_sandbox_core(lua_State *L);
int luaopen_fm_db(lua_State *L);
int luaopen_fm_kv(lua_State *L);
int luaopen_fm_storage(lua_State *L);
int luaopen_fm_breaker_core(lua_State *L);
int luaopen_fm_ratelimit_core(lua_State *L);
int luaopen_fm_analyze(lua_State *L);
int luaopen_fm_vecmath(lua_State *L);
int luaopen_fm_embed_core(lua_State *L);
int luaopen_fm_vector_embedded(lua_State *L);
int luaopen_fm_jobs_core(lua_State *L);

static const luaL_Reg preloads[] = {
    {"fm.log", luaopen_fm_log},       {"fm.metrics", luaopen_fm_metrics},
    {"fm.http", luaopen_fm_http},     {"fm.time", luaopen_fm_time},
    {"fm.json", luaopen_fm_json},     {"fm.crypto", luaopen_fm_crypto},
    {"fm.engine", luaopen_fm_engine}, {"fm.source", luaopen_fm_source},
    {"fm.sandbox_core", luaopen_fm_sandbox_core}, {"fm.db", luaopen_fm_db},
    {"fm.kv", luaopen_fm_kv},
    {"fm.storage", luaopen_fm_storage},
    {"fm.breaker_core", luaopen_fm_breaker_core},
    {"fm.ratelimit_core", luaopen_fm_ratelimit_core},
    {"fm.analyze", luaopen_fm_analyze},
    {"fm.vecmath", luaopen_fm_vecmath},
    {"fm.embed_core", luaopen_fm_embed_core},
    {"fm.vector_embedded", luaopen_fm_vector_embedded},
    {"fm.jobs_core", luaopen_fm_jobs_core},
    {NULL, NULL},
};

struct fm_vm *fm_vm_from_lua(lua_State *L) { return *(struct fm_vm **)lua_getextraspace(L); }

void fm_lua_handle_type(lua_State *L, const char *name, const luaL_Reg *methods,
                        lua_CFunction close, lua_CFunction tostring) {
  if (luaL_newmetatable(L, name)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    if (tostring) {
      lua_pushcfunction(L, tostring);
      lua_setfield(L, -2, "__tostring");
    }
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct fm_vm *vm = ud;
  if (ptr == NULL) osize = 0; /* osize is a type tag for new blocks */
  if (nsize == 0) {
    free(ptr);
    vm->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize) {
    size_t after = vm->mem_used - osize + nsize;
    int over_vm = vm->mem_limit && after > vm->mem_limit;
    int over_sb = vm->sb_active && vm->sb_mem_cap && after > vm->sb_mem_base + vm->sb_mem_cap;
    if (over_vm || over_sb) {
      /* Lua retries a refused allocation once after an emergency full GC: a second refusal of
       * the same block means the memory error is real. */
      if (vm->fail_ptr == ptr && vm->fail_osize == osize && vm->fail_nsize == nsize &&
          vm->abort == FM_VM_OK) {
        /* the VM's own cap inside a request ends the request, even during a sandbox run */
        if (over_vm && vm->in_request) vm->abort = FM_VM_ABORT_MEMORY;
        else if (vm->sb_active) vm->abort = FM_VM_ABORT_SANDBOX_MEMORY;
      }
      vm->fail_ptr = ptr;
      vm->fail_osize = osize;
      vm->fail_nsize = nsize;
      return NULL;
    }
  }
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  vm->mem_used = vm->mem_used - osize + nsize;
  if (nsize > osize) vm->fail_nsize = 0;
  return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (vm->in_request && vm->budget) {
    vm->used += HOOK_STEP;
    if (vm->used > vm->budget || vm->abort == FM_VM_ABORT_BUDGET) {
      vm->abort = FM_VM_ABORT_BUDGET;
      luaL_error(L, "request exceeded its instruction budget (%I instructions)",
                 (lua_Integer)vm->budget);
    }
  }
  if (vm->sb_active && vm->sb_budget) {
    vm->sb_used += HOOK_STEP;
    if (vm->sb_used > vm->sb_budget || vm->abort == FM_VM_ABORT_SANDBOX_BUDGET) {
      if (vm->abort == FM_VM_OK) vm->abort = FM_VM_ABORT_SANDBOX_BUDGET;
      luaL_error(L, "exceeded its instruction budget (%I instructions)", (lua_Integer)vm->sb_budget);
    }
  }
}

/* After a protected call inside a request: a budget or memory abort must not be swallowed by
 * Lua code, so it is raised again in the caller. */
static int must_rethrow(lua_State *L, int status) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (!vm->in_request && !vm->sb_active) return 0;
  /* A memory error re-raised by coroutine.wrap arrives as a runtime error; Lua's own message
   * for it is fixed, so it is recognised here too (the error object is on the top). */
  if (vm->abort == FM_VM_OK &&
      (status == LUA_ERRMEM ||
       (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "not enough memory") == 0)))
    vm->abort = vm->sb_active ? FM_VM_ABORT_SANDBOX_MEMORY : FM_VM_ABORT_MEMORY;
  return vm->abort != FM_VM_OK;
}

static int finish_pcall(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (must_rethrow(L, status)) return lua_error(L);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int l_guarded_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
  return finish_pcall(L, status, 0);
}

static int l_guarded_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
  return finish_pcall(L, status, 2);
}

/* coroutine.resume that re-raises a budget or memory abort of the coroutine in the resumer. */
static int l_guarded_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  int narg = lua_gettop(L) - 1;
  int st = lua_status(co);
  if (st == LUA_OK && lua_gettop(co) == 0) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "cannot resume dead coroutine");
    return 2;
  }
  if (!lua_checkstack(co, narg)) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "too many arguments to resume");
    return 2;
  }
  lua_xmove(L, co, narg);
  int nres;
  int status = lua_resume(co, L, narg, &nres);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushboolean(L, 0);
      lua_pushliteral(L, "too many results to resume");
      return 2;
    }
    lua_pushboolean(L, 1);
    lua_xmove(co, L, nres);
    return nres + 1;
  }
  lua_xmove(co, L, 1); /* error object */
  if (must_rethrow(L, status)) return lua_error(L);
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

/* load() with a reader function parses inside Lua's own protected call: a budget or memory abort
 * raised in the reader would come back as load's `nil, message` and the loop around it would go
 * on. This load re-raises it. */
static int l_guarded_load(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  struct fm_vm *vm = fm_vm_from_lua(L);
  if ((vm->in_request || vm->sb_active) && vm->abort != FM_VM_OK && lua_isnil(L, 1))
    return lua_error(L); /* the message is on the top */
  return lua_gettop(L);
}

void fm_vm_preload(lua_State *L, enum fm_vm_mode mode) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *m = preloads; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  if (mode == FM_VM_EXEC) {
    lua_pushcfunction(L, luaopen_fm_proc);
    lua_setfield(L, -2, "fm.proc");
  }
  lua_pop(L, 1);
}

/* package.searchers entry for a VM made from a generation: FM_HOME modules come from the
 * generation's snapshot, never from the disk, so every worker runs the bytes that were checked.
 * "a.b" is lua/a/b.lua or lua/a/b/init.lua; "config" is config.lua. */
static int snapshot_searcher(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  const char *name = luaL_checkstring(L, 1);
  char rel[512];
  size_t n = strlen(name);
  if (n == 0 || n > 200) {
    lua_pushliteral(L, "\n\tnot a module name of the generation");
    return 1;
  }
  char mod[256];
  for (size_t i = 0; i <= n; i++) mod[i] = name[i] == '.' ? '/' : name[i];
  const char *tries[3];
  char c1[512], c2[512];
  snprintf(c1, sizeof c1, "lua/%s.lua", mod);
  snprintf(c2, sizeof c2, "lua/%s/init.lua", mod);
  tries[0] = c1;
  tries[1] = c2;
  tries[2] = strcmp(name, "config") == 0 ? "config.lua" : NULL;
  for (int i = 0; i < 3 && tries[i]; i++) {
    const struct fm_source_file *f = fm_gen_find(vm->gen, tries[i]);
    if (!f) continue;
    snprintf(rel, sizeof rel, "@%s", f->path);
    if (luaL_loadbufferx(L, f->data, f->len, rel, "t") != LUA_OK) return lua_error(L);
    lua_pushstring(L, f->path);
    return 2;
  }
  lua_pushfstring(L, "\n\tno file '%s' or '%s' in generation %d of FM_HOME", c1, c2,
                  (int)vm->gen->number);
  return 1;
}

/* Runs inside lua_pcall so an allocation failure during setup is an error, not a panic. */
static int vm_setup(lua_State *L) {
  const struct fm_vm_opts *o = lua_touserdata(L, 1);
  luaL_openlibs(L);

  lua_pushcfunction(L, l_guarded_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, l_guarded_xpcall);
  lua_setglobal(L, "xpcall");
  lua_getglobal(L, "coroutine");
  lua_pushcfunction(L, l_guarded_resume);
  lua_setfield(L, -2, "resume");
  lua_pop(L, 1);
  lua_getglobal(L, "load");
  lua_pushcclosure(L, l_guarded_load, 1);
  lua_setglobal(L, "load");
  if (o->mode == FM_VM_SERVE) {
    /* Served VMs run sandboxed playbooks, and ("").dump reaches the string table through the
     * string metatable: no bytecode is made where none is loaded. */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
  }

  lua_getglobal(L, "package");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (o->extra_path && o->extra_path[0]) {
    luaL_addstring(&b, o->extra_path);
    luaL_addchar(&b, ';');
  }
  if (!o->gen) { /* with a generation, FM_HOME is searched in its snapshot instead */
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;", o->home, o->home, o->home);
    luaL_addvalue(&b);
  }
  lua_getfield(L, -2, "path");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, -2, "path");
  if (o->gen) { /* searchers: preload, snapshot, then Lua and C paths */
    lua_getfield(L, -1, "searchers");
    for (lua_Integer i = (lua_Integer)luaL_len(L, -1); i >= 2; i--) {
      lua_rawgeti(L, -1, i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, snapshot_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  fm_vm_preload(L, o->mode);
  return 0;
}

int fm_vm_new(const struct fm_vm_opts *opts, struct fm_vm **out, struct fm_err *err) {
  *out = NULL;
  if (!opts->home) return fm_err_set(err, FM_E_INVAL, "vm: home is required");
  struct fm_vm *vm = calloc(1, sizeof *vm);
  if (!vm) return fm_err_set(err, FM_E_NOMEM, "vm: out of memory");
  vm->mem_limit = opts->mem_limit;
  vm->worker_id = opts->worker_id;
  vm->mode = opts->mode;
  vm->gen = opts->gen;
  snprintf(vm->home, sizeof vm->home, "%s", opts->home);
  vm->L = lua_newstate(vm_alloc, vm);
  if (!vm->L) {
    free(vm);
    return fm_err_set(err, FM_E_NOMEM, "vm: cannot create a Lua state");
  }
  *(struct fm_vm **)lua_getextraspace(vm->L) = vm;
  lua_sethook(vm->L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
  lua_pushcfunction(vm->L, vm_setup);
  lua_pushlightuserdata(vm->L, (void *)opts);
  if (fm_vm_pcall(vm, 1, 0, err)) {
    fm_vm_free(vm);
    return FM_E_LUA;
  }
  *out = vm;
  return 0;
}

void fm_vm_free(struct fm_vm *vm) {
  if (!vm) return;
  if (vm->L) lua_close(vm->L);
  free(vm);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    /* Non-string errors (tables from fm.errors) pass through untouched for the caller. */
    if (lua_type(L, 1) == LUA_TTABLE) {
      lua_settop(L, 1);
      return 1;
    }
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int fm_vm_pcall(struct fm_vm *vm, int nargs, int nresults, struct fm_err *err) {
  lua_State *L = vm->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  if (status == LUA_OK) {
    lua_remove(L, base);
    return 0;
  }
  if (status == LUA_ERRMEM && vm->in_request) vm->abort = FM_VM_ABORT_MEMORY;
  const char *msg = lua_tostring(L, -1);
  fm_err_set(err, FM_E_LUA, "%s", msg ? msg : "(non-string error)");
  lua_settop(L, base - 1);
  return FM_E_LUA;
}

void fm_vm_begin_request(struct fm_vm *vm, uint64_t budget) {
  vm->budget = budget;
  vm->used = 0;
  vm->abort = FM_VM_OK;
  vm->fail_nsize = 0;
  vm->in_request = 1;
}

int fm_vm_end_request(struct fm_vm *vm) {
  int hit = vm->abort == FM_VM_ABORT_MEMORY;
  vm->in_request = 0;
  vm->budget = 0;
  if (!hit) return 0;
  lua_gc(vm->L, LUA_GCCOLLECT);
  return vm->mem_limit && vm->mem_used > vm->mem_limit / 2;
}
