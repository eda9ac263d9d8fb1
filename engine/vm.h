/* vm.h: one engine Lua VM: a lua_State with a memory cap (custom allocator), a per-request
 * instruction budget (count hook), the fm.* modules in package.preload, and one protected-call
 * helper with a traceback. A VM is used by one thread at a time. */
#ifndef FM_VM_H
#define FM_VM_H

#include "err.h"

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* SERVE: workers and the reload check; EXEC: `faultmaven exec` (adds fm.proc); ADMIN: the REPL's VM
 * (adds fm.admin_core and engine.reload). */
enum fm_vm_mode { FM_VM_SERVE = 0, FM_VM_EXEC = 1, FM_VM_ADMIN = 2 };
/* BUDGET and MEMORY end the request; SANDBOX_* end only the sandbox run (fm.sandbox) that hit
 * its own limit. */
enum fm_vm_abort {
  FM_VM_OK = 0,
  FM_VM_ABORT_BUDGET = 1,
  FM_VM_ABORT_MEMORY = 2,
  FM_VM_ABORT_SANDBOX_BUDGET = 3,
  FM_VM_ABORT_SANDBOX_MEMORY = 4,
};

struct fm_gen;

struct fm_vm_opts {
  const char *home;       /* FM_HOME: config.lua and lua/ live here; required */
  const char *extra_path; /* FM_LUA_PATH templates prepended to package.path; may be NULL */
  size_t mem_limit;       /* bytes; 0 = unlimited */
  enum fm_vm_mode mode;   /* EXEC adds fm.proc */
  int worker_id;          /* -1 outside the worker pool */
  struct fm_gen *gen;     /* load FM_HOME modules from this generation's snapshot (reload.h);
                           * NULL: from the files on disk (exec, check-config) */
};

struct fm_vm {
  lua_State *L;
  size_t mem_used;
  size_t mem_limit;
  uint64_t budget; /* instructions for the current request, 0 = unlimited */
  uint64_t used;
  int in_request;
  int abort; /* enum fm_vm_abort, set when the current request hit a limit */
  int worker_id;
  enum fm_vm_mode mode;
  struct fm_gen *gen; /* not owned: whoever made the VM keeps the generation alive */
  char home[4096];
  /* the current sandbox run (fm.sandbox), if any: its own budget and memory cap */
  int sb_active;
  uint64_t sb_budget, sb_used;
  size_t sb_mem_base, sb_mem_cap;
  /* last refused allocation, to tell Lua's retry-after-GC from a first refusal */
  const void *fail_ptr;
  size_t fail_osize, fail_nsize;
};

/* Creates a VM with the standard libraries and fm.* preloads. Returns 0 and *out (free with
 * fm_vm_free), or an error with err set. */
int fm_vm_new(const struct fm_vm_opts *opts, struct fm_vm **out, struct fm_err *err);
/* Closes the state and frees the VM. NULL is a no-op. */
void fm_vm_free(struct fm_vm *vm);
/* The VM that owns L (works from coroutines too). */
struct fm_vm *fm_vm_from_lua(lua_State *L);

/* Calls the function below nargs arguments with a traceback handler. On error returns FM_E_LUA
 * with the message and traceback in err, and leaves nothing on the stack; on success the results
 * are on the stack. */
int fm_vm_pcall(struct fm_vm *vm, int nargs, int nresults, struct fm_err *err);

/* Arms the budget (instructions, 0 = none) and resets the abort flag for one request. */
void fm_vm_begin_request(struct fm_vm *vm, uint64_t budget);
/* Disarms the budget. If the request hit the memory cap, runs a full GC and returns 1 when the
 * VM should be replaced (still above half its cap after collecting); otherwise returns 0. */
int fm_vm_end_request(struct fm_vm *vm);

struct luaL_Reg;
/* Declares the metatable of a handle type exposed to Lua (once per state): methods as __index,
 * close as both __gc and __close, tostring (may be NULL) as __tostring, and the name as
 * __metatable so Lua code cannot swap it. Leaves the stack as it was. */
void fm_lua_handle_type(lua_State *L, const char *name, const struct luaL_Reg *methods,
                        lua_CFunction close, lua_CFunction tostring);

/* Registers the fm.* C modules in package.preload (used by fm_vm_new). */
void fm_vm_preload(lua_State *L, enum fm_vm_mode mode);

#endif
