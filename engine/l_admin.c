/* l_admin.c: the admin VM (what `faultmaven repl` runs code in) and the fm.admin_core module.
 *
 * One lua_State for the whole engine, owned by the admin server (admin.c), which serialises
 * evaluations with a mutex; globals persist between commands and sessions. It is an FM_VM_ADMIN
 * VM: the worker modules plus fm.admin_core (and engine.reload), the worker memory cap, and no
 * instruction budget. Its count hook (chained before vm.c's, which still enforces fm.sandbox
 * budgets) raises "cancelled" when the evaluation's cancel flag is set
 * (Ctrl-C in the client, the client going away, shutdown); the VM's abort flag is set at the same
 * time so the guarded pcall/xpcall/coroutine.resume of vm.c re-raise it instead of swallowing it.
 * `print` and `io.write` append to the evaluation's output instead of the engine's stdout;
 * `os.exit` raises instead of ending the engine.
 *
 * fm.admin_core (Lua): memory() -> {rss_bytes, lua_workers_bytes, lua_admin_bytes}. */
#include "admin.h"

#include "log.h"
#include "metrics.h"
#include "state.h"
#include "vm.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOOK_STEP 1000
#define CHUNK_NAME "=repl"
#define PRETTY_KEY "fm.admin.pretty"
#define TRUNCATED "\n... (truncated at 1 MiB)\n"

int luaopen_fm_admin_core(lua_State *L);

struct fm_admin_vm {
  struct fm_vm *vm;
  char *home;
  char *extra_path;
  size_t mem_limit;
};

/* The evaluation running on this thread (the hook and print find it here). */
static _Thread_local struct fm_admin_eval *t_eval;
/* Set when the hook raised "cancelled" during the current evaluation. */
static _Thread_local int t_cancelled;

/* ---- output ------------------------------------------------------------------------------- */

/* Appends to one of an evaluation's texts, at most FM_ADMIN_MAX_TEXT (then says it was cut). */
static void text_add(struct fm_buf *b, const char *s, size_t n) {
  if (b->len >= FM_ADMIN_MAX_TEXT) return;
  size_t room = FM_ADMIN_MAX_TEXT - b->len;
  if (n <= room) {
    fm_buf_add(b, s, n);
    return;
  }
  fm_buf_add(b, s, room);
  fm_buf_adds(b, TRUNCATED);
}

static int l_print(lua_State *L) {
  int n = lua_gettop(L);
  struct fm_admin_eval *ev = t_eval;
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (ev) {
      if (i > 1) text_add(&ev->output, "\t", 1);
      text_add(&ev->output, s, len);
    }
    lua_pop(L, 1);
  }
  if (ev) text_add(&ev->output, "\n", 1);
  return 0;
}

/* io.write(...): strings and numbers to the output; returns true (not a file to chain on). */
static int l_io_write(lua_State *L) {
  int n = lua_gettop(L);
  struct fm_admin_eval *ev = t_eval;
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_checklstring(L, i, &len);
    if (ev) text_add(&ev->output, s, len);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- cancellation ------------------------------------------------------------------------- */

/* vm.c's count hook (budgets of fm.sandbox runs), which admin_hook chains to. */
static lua_Hook g_vm_hook;

static void admin_hook(lua_State *L, lua_Debug *ar) {
  struct fm_admin_eval *ev = t_eval;
  if (!ev || !ev->cancel || !atomic_load(ev->cancel)) {
    if (g_vm_hook) g_vm_hook(L, ar);
    return;
  }
  struct fm_vm *vm = fm_vm_from_lua(L);
  vm->abort = FM_VM_ABORT_BUDGET; /* makes the guarded pcall re-raise in its caller */
  t_cancelled = 1;
  lua_pushliteral(L, "cancelled");
  lua_error(L);
}

/* ---- building the VM ---------------------------------------------------------------------- */

/* os.exit in the admin VM would end the whole engine without draining it. */
static int l_no_exit(lua_State *L) {
  return luaL_error(L, "os.exit would stop the engine at once: stop it with SIGTERM instead");
}

/* __index of the stand-in `admin` table when fm.admin failed to load: says why. */
static int l_admin_missing(lua_State *L) {
  return luaL_error(L, "the admin table is not available: %s",
                    lua_tostring(L, lua_upvalueindex(1)));
}

static int l_setup(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_fm_admin_core);
  lua_setfield(L, -2, "fm.admin_core");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  lua_getglobal(L, "io");
  lua_pushcfunction(L, l_io_write);
  lua_setfield(L, -2, "write");
  lua_pop(L, 1);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_no_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);

  /* The pretty printer is kept in the registry: the REPL works even if the user clobbers globals,
   * and without it (a broken file) values are shown with tostring. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.pretty");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) {
    lua_getfield(L, -1, "repl");
    lua_setfield(L, LUA_REGISTRYINDEX, PRETTY_KEY);
  } else {
    fm_warn("admin VM: cannot load fm.pretty: %s", lua_tostring(L, -1));
  }
  lua_settop(L, 0);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.admin");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fm_warn("admin VM: cannot load fm.admin: %s", msg ? msg : "?");
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, l_admin_missing, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
  }
  lua_setglobal(L, "admin");
  return 0;
}

static int build_vm(struct fm_admin_vm *a, struct fm_vm **out, struct fm_err *err) {
  struct fm_vm_opts o = {0};
  o.home = a->home;
  o.extra_path = a->extra_path;
  o.mem_limit = a->mem_limit;
  o.mode = FM_VM_ADMIN;
  o.worker_id = -1;
  struct fm_vm *vm;
  if (fm_vm_new(&o, &vm, err)) return FM_E_LUA;
  lua_Hook own = lua_gethook(vm->L);
  if (own != admin_hook) g_vm_hook = own; /* the same function for every VM */
  lua_sethook(vm->L, admin_hook, LUA_MASKCOUNT, HOOK_STEP);
  lua_pushcfunction(vm->L, l_setup);
  if (fm_vm_pcall(vm, 0, 0, err)) {
    fm_vm_free(vm);
    return FM_E_LUA;
  }
  *out = vm;
  return 0;
}

int fm_admin_vm_new(const struct fm_vm_opts *opts, struct fm_admin_vm **out, struct fm_err *err) {
  *out = NULL;
  struct fm_admin_vm *a = calloc(1, sizeof *a);
  if (!a) return fm_err_set(err, FM_E_NOMEM, "admin VM: out of memory");
  a->home = strdup(opts->home ? opts->home : ".");
  a->extra_path = opts->extra_path ? strdup(opts->extra_path) : NULL;
  a->mem_limit = opts->mem_limit;
  if (!a->home || (opts->extra_path && !a->extra_path)) {
    fm_admin_vm_free(a);
    return fm_err_set(err, FM_E_NOMEM, "admin VM: out of memory");
  }
  if (build_vm(a, &a->vm, err)) {
    fm_admin_vm_free(a);
    return FM_E_LUA;
  }
  *out = a;
  return 0;
}

void fm_admin_vm_free(struct fm_admin_vm *a) {
  if (!a) return;
  fm_vm_free(a->vm);
  free(a->home);
  free(a->extra_path);
  free(a);
}

static int l_get_setting(lua_State *L) {
  const char *key = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.settings");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, key);
  luaL_tolstring(L, -1, NULL);
  return 1;
}

int fm_admin_vm_setting(struct fm_admin_vm *a, const char *key, char *out, size_t outsz,
                        struct fm_err *err) {
  lua_State *L = a->vm->L;
  lua_pushcfunction(L, l_get_setting);
  lua_pushlightuserdata(L, (void *)key);
  if (fm_vm_pcall(a->vm, 1, 1, err)) return FM_E_LUA;
  const char *v = lua_tostring(L, -1);
  snprintf(out, outsz, "%s", v ? v : "");
  lua_pop(L, 1);
  return 0;
}

/* ---- evaluation --------------------------------------------------------------------------- */

/* Message handler: a string error (or one with __tostring) gets a traceback; any other error
 * object is passed through so it can be shown pretty-printed. */
static int l_msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (!luaL_callmeta(L, 1, "__tostring") || lua_type(L, -1) != LUA_TSTRING) {
      lua_settop(L, 1);
      return 1;
    }
    msg = lua_tostring(L, -1);
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Appends the text of the value at idx: fm.pretty's, else tostring's. */
static void add_value(lua_State *L, int idx, struct fm_buf *b) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, LUA_REGISTRYINDEX, PRETTY_KEY);
  size_t len;
  const char *s;
  if (lua_isfunction(L, -1)) {
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
      s = lua_tolstring(L, -1, &len);
      text_add(b, s, len);
      lua_pop(L, 1);
      return;
    }
    /* fm.pretty failed (or was cancelled): fall back to tostring, which runs no Lua unless a
     * __tostring/__name metamethod does */
  }
  lua_pop(L, 1);
  s = luaL_tolstring(L, idx, &len);
  text_add(b, s, len);
  lua_pop(L, 1);
}

/* Cuts the trailing "[C]: in ?" frames (the engine's own call into the chunk) off a traceback. */
static void trim_traceback(struct fm_buf *b) {
  static const char tail[] = "\n\t[C]: in ?";
  size_t n = sizeof tail - 1;
  while (b->len >= n && memcmp(b->p + b->len - n, tail, n) == 0) {
    b->len -= n;
    b->p[b->len] = '\0';
  }
}

static int ends_with(const char *s, size_t len, const char *suffix) {
  size_t n = strlen(suffix);
  return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Compiles ev->code as `return <code>;` or else as is; pushes the chunk and returns 1, or sets
 * the syntax error and returns 0. */
static int compile(lua_State *L, struct fm_admin_eval *ev) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "return ");
  luaL_addlstring(&b, ev->code, ev->len);
  luaL_addchar(&b, ';');
  luaL_pushresult(&b);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  if (luaL_loadbuffer(L, s, n, CHUNK_NAME) == LUA_OK) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 2);
  int st = luaL_loadbuffer(L, ev->code, ev->len, CHUNK_NAME);
  if (st == LUA_OK) return 1;
  size_t ml;
  const char *msg = lua_tolstring(L, -1, &ml);
  if (!msg) {
    msg = "(no message)";
    ml = strlen(msg);
  }
  ev->incomplete = st == LUA_ERRSYNTAX && ends_with(msg, ml, "<eof>");
  text_add(&ev->error, msg, ml);
  ev->outcome = FM_ADMIN_ERROR;
  lua_pop(L, 1);
  return 0;
}

/* The whole evaluation, inside one protected call (so a memory error anywhere is an error, not a
 * panic). */
static int l_eval_main(lua_State *L) {
  struct fm_admin_eval *ev = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (!compile(L, ev)) return 0;
  lua_pushcfunction(L, l_msgh);
  lua_insert(L, 1);
  if (lua_pcall(L, 0, LUA_MULTRET, 1) != LUA_OK) {
    ev->outcome = FM_ADMIN_ERROR;
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      const char *msg = lua_tolstring(L, -1, &len);
      text_add(&ev->error, msg, len);
      trim_traceback(&ev->error);
    } else {
      text_add(&ev->error, "error object: ", 14);
      add_value(L, -1, &ev->error);
    }
    return 0;
  }
  int top = lua_gettop(L);
  for (int i = 2; i <= top; i++) {
    if (i > 2) text_add(&ev->result, "\t", 1);
    add_value(L, i, &ev->result);
  }
  ev->outcome = FM_ADMIN_OK;
  return 0;
}

/* admin.reload_summary() from the module itself (the global may have been replaced). */
static int l_reload_main(lua_State *L) {
  struct fm_admin_eval *ev = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.admin");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "reload_summary");
  lua_call(L, 0, 2);
  size_t len;
  const char *text = luaL_tolstring(L, -1, &len);
  ev->outcome = lua_toboolean(L, -3) ? FM_ADMIN_OK : FM_ADMIN_ERROR;
  if (ev->outcome == FM_ADMIN_OK) { /* printed as is: end the line */
    text_add(&ev->output, text, len);
    text_add(&ev->output, "\n", 1);
  } else {
    text_add(&ev->error, text, len);
  }
  return 0;
}

static void run(struct fm_admin_vm *a, struct fm_admin_eval *ev, lua_CFunction main) {
  if (!a->vm) {
    struct fm_err err = {0};
    if (build_vm(a, &a->vm, &err)) {
      ev->outcome = FM_ADMIN_ERROR;
      fm_buf_adds(&ev->error, "the admin VM is not available: ");
      text_add(&ev->error, err.msg, strlen(err.msg));
      return;
    }
    ev->vm_reset = 1;
  }
  lua_State *L = a->vm->L;
  t_eval = ev;
  t_cancelled = 0;
  ev->outcome = FM_ADMIN_ERROR;
  fm_vm_begin_request(a->vm, 0); /* no instruction budget; memory aborts become unswallowable */
  lua_settop(L, 0);
  lua_pushcfunction(L, main);
  lua_pushlightuserdata(L, ev);
  int st = lua_pcall(L, 1, 0, 0);
  if (st != LUA_OK && !t_cancelled) {
    const char *msg = lua_tostring(L, -1);
    if (st == LUA_ERRMEM) msg = "not enough memory (the admin VM's cap is FM_LUA_MEMORY_MB)";
    ev->outcome = FM_ADMIN_ERROR;
    text_add(&ev->error, msg ? msg : "(error)", strlen(msg ? msg : "(error)"));
  }
  lua_settop(L, 0);
  if (t_cancelled) {
    ev->outcome = FM_ADMIN_CANCELLED;
    ev->error.len = 0;
    fm_buf_adds(&ev->error, "cancelled");
  }
  int replace = fm_vm_end_request(a->vm);
  t_eval = NULL;
  if (replace) {
    /* Still above half its cap after a full collection: start afresh (globals are lost). */
    struct fm_vm *fresh = NULL;
    struct fm_err err = {0};
    if (build_vm(a, &fresh, &err) == 0) {
      fm_vm_free(a->vm);
      a->vm = fresh;
      ev->vm_reset = 1;
      fm_warn("admin VM replaced after hitting its memory cap");
    } else {
      fm_warn("admin VM above half its memory cap; a fresh one could not be built: %s", err.msg);
    }
  }
}

void fm_admin_vm_eval(struct fm_admin_vm *a, struct fm_admin_eval *ev) { run(a, ev, l_eval_main); }

void fm_admin_vm_reload(struct fm_admin_vm *a, struct fm_admin_eval *ev) {
  run(a, ev, l_reload_main);
}

void fm_admin_eval_free(struct fm_admin_eval *ev) {
  fm_buf_free(&ev->output);
  fm_buf_free(&ev->result);
  fm_buf_free(&ev->error);
}

/* ---- fm.admin_core ------------------------------------------------------------------------ */

/* Resident set size from /proc/self/statm, or -1. */
static long long rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long size, resident;
  int n = fscanf(f, "%lld %lld", &size, &resident);
  fclose(f);
  if (n != 2) return -1;
  return resident * (long long)sysconf(_SC_PAGESIZE);
}

/* Sum of the workers' Lua memory after their last request: the worker pool publishes it as the
 * fm_lua_memory_bytes gauges, which its collector samples when the metrics are rendered. */
static long long workers_lua_bytes(void) {
  struct fm_buf b = {0};
  fm_metrics_render(&b); /* runs the collector */
  fm_buf_free(&b);
  double sum = 0;
  for (int i = 0; i < fm_state.workers; i++) {
    char label[32];
    snprintf(label, sizeof label, "worker=\"%d\"", i);
    sum += fm_metrics_get("fm_lua_memory_bytes", label);
  }
  return (long long)sum;
}

static int l_core_memory(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  lua_createtable(L, 0, 4);
  long long rss = rss_bytes();
  if (rss >= 0) {
    lua_pushinteger(L, (lua_Integer)rss);
    lua_setfield(L, -2, "rss_bytes");
  }
  lua_pushinteger(L, (lua_Integer)workers_lua_bytes());
  lua_setfield(L, -2, "lua_workers_bytes");
  if (vm) {
    lua_pushinteger(L, (lua_Integer)vm->mem_used);
    lua_setfield(L, -2, "lua_admin_bytes");
  }
  return 1;
}

static const luaL_Reg core_funcs[] = {{"memory", l_core_memory}, {NULL, NULL}};

int luaopen_fm_admin_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  return 1;
}
