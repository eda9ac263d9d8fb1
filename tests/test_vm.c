/* Unit tests for engine/vm.c: the memory cap, the instruction budget that pcall, xpcall and
 * coroutines cannot swallow, and that a VM serves again after either; plus fm.json in a VM. */
#include "check.h"
#include "vm.h"

#include <lauxlib.h>

static struct fm_vm *new_vm(size_t limit) {
  struct fm_vm_opts o = {.home = "/nonexistent", .mem_limit = limit, .mode = FM_VM_SERVE, .worker_id = 0};
  struct fm_vm *vm = NULL;
  struct fm_err err = {0};
  if (fm_vm_new(&o, &vm, &err)) fprintf(stderr, "fm_vm_new: %s\n", err.msg);
  return vm;
}

/* Runs code as one request; returns 0 on success, else the abort kind (or -1 for a plain error). */
static int run(struct fm_vm *vm, const char *code, uint64_t budget, char *msg, size_t msgsz) {
  struct fm_err err = {0};
  if (luaL_loadstring(vm->L, code) != LUA_OK) {
    snprintf(msg, msgsz, "%s", lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
    return -2;
  }
  fm_vm_begin_request(vm, budget);
  int rc = fm_vm_pcall(vm, 0, 1, &err);
  int abort = vm->abort;
  fm_vm_end_request(vm);
  if (rc) {
    snprintf(msg, msgsz, "%s", err.msg);
    return abort ? abort : -1;
  }
  snprintf(msg, msgsz, "%s", lua_tostring(vm->L, -1) ? lua_tostring(vm->L, -1) : "");
  lua_pop(vm->L, 1);
  return 0;
}

int main(void) {
  char msg[600];
  struct fm_vm *vm = new_vm(16u << 20);
  CHECK(vm != NULL);
  if (!vm) return check_done();

  CHECK(run(vm, "return tostring(1 + 1)", 1000000, msg, sizeof msg) == 0);
  CHECK_STR(msg, "2");

  /* budget: a bare loop, a loop that swallows errors with pcall, xpcall and coroutines */
  CHECK(run(vm, "while true do end", 2000000, msg, sizeof msg) == FM_VM_ABORT_BUDGET);
  CHECK(strstr(msg, "instruction budget") != NULL);
  CHECK(run(vm, "while true do pcall(function() while true do end end) end", 2000000, msg, sizeof msg) ==
        FM_VM_ABORT_BUDGET);
  CHECK(run(vm, "while true do xpcall(function() while true do end end, function(e) return e end) end",
            2000000, msg, sizeof msg) == FM_VM_ABORT_BUDGET);
  CHECK(run(vm, "local co = coroutine.create(function() while true do end end)\n"
                "while true do coroutine.resume(co) end", 2000000, msg, sizeof msg) == FM_VM_ABORT_BUDGET);
  CHECK(run(vm, "local f = coroutine.wrap(function() while true do end end)\n"
                "while true do pcall(f) end", 2000000, msg, sizeof msg) == FM_VM_ABORT_BUDGET);
  /* ordinary errors are still caught by pcall as usual */
  CHECK(run(vm, "local ok, e = pcall(error, 'x') return tostring(ok) .. e", 1000000, msg, sizeof msg) == 0);
  CHECK_STR(msg, "falsex");
  CHECK(run(vm, "local ok, e = xpcall(error, function(m) return 'h:' .. m end, 'y') return e", 1000000,
            msg, sizeof msg) == 0);
  CHECK_STR(msg, "h:y");
  CHECK(run(vm, "local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) return b * 2 end)\n"
                "local _, x = coroutine.resume(co, 1) local _, y = coroutine.resume(co, 10)\n"
                "return x .. ',' .. y .. ',' .. tostring(coroutine.resume(co))", 1000000, msg, sizeof msg) == 0);
  CHECK_STR(msg, "2,20,false");
  CHECK(run(vm, "error('plain')", 1000000, msg, sizeof msg) == -1);
  CHECK(strstr(msg, "plain") != NULL && strstr(msg, "stack traceback") != NULL);

  /* memory: a doubling string, a growing table, a bomb inside pcall */
  CHECK(run(vm, "local s = 'x' while true do s = s .. s end", 0, msg, sizeof msg) == FM_VM_ABORT_MEMORY);
  CHECK(run(vm, "local t = {} for i = 1, 1e9 do t[i] = {i} end", 0, msg, sizeof msg) == FM_VM_ABORT_MEMORY);
  CHECK(run(vm, "local ok = pcall(string.rep, 'x', 1 << 30) return 'swallowed'", 0, msg, sizeof msg) ==
        FM_VM_ABORT_MEMORY);
  CHECK(run(vm, "collectgarbage('stop')\n"
                "local f = coroutine.wrap(function() local s = 'x' while true do s = s .. s end end)\n"
                "local ok = pcall(f) collectgarbage('restart') return 'swallowed'", 0, msg, sizeof msg) ==
        FM_VM_ABORT_MEMORY);
  lua_gc(vm->L, LUA_GCRESTART);
  CHECK(vm->mem_used < vm->mem_limit / 2);
  /* and the VM serves again */
  CHECK(run(vm, "return string.rep('a', 3)", 1000000, msg, sizeof msg) == 0);
  CHECK_STR(msg, "aaa");
  /* near the cap but fitting after a collection is not an abort */
  CHECK(run(vm, "for i = 1, 40 do local s = string.rep('z', 1 << 20) end return 'ok'", 0, msg, sizeof msg) == 0);

  /* fm.json in a VM */
  CHECK(run(vm, "local j = require 'fm.json'\n"
                "return j.encode({a = j.array(), b = {1, 2, 3}, c = j.null, d = 'x\\n', e = 1.5, f = 10})",
            0, msg, sizeof msg) == 0);
  CHECK(strstr(msg, "\"a\":[]") && strstr(msg, "\"b\":[1,2,3]") && strstr(msg, "\"c\":null") &&
        strstr(msg, "\"d\":\"x\\n\"") && strstr(msg, "\"e\":1.5") && strstr(msg, "\"f\":10"));
  CHECK(run(vm, "local j = require 'fm.json'\n"
                "local v = j.decode('{\"a\":[],\"b\":[1,{\"c\":null}],\"d\":\"\\\\u00e9\"}')\n"
                "return j.encode(v.a) .. j.encode(v.b) .. v.d .. tostring(v.b[2].c == j.null)",
            0, msg, sizeof msg) == 0);
  CHECK_STR(msg, "[][1,{\"c\":null}]\xc3\xa9true");
  CHECK(run(vm, "local j = require 'fm.json'\n"
                "local bad = {'{\"a\":', '[1,]', '\"\\xff\"', 'nul', '{} x', string.rep('[', 3000)}\n"
                "for _, s in ipairs(bad) do if j.decode(s) ~= nil then return 'accepted ' .. s end end\n"
                "local v, e = j.decode('[[[1]]]', 2) return tostring(v) .. ':' .. e", 0, msg, sizeof msg) == 0);
  CHECK_STR(msg, "nil:nesting deeper than 2 levels");
  CHECK(run(vm, "local j = require 'fm.json' local t = {} t.t = t return j.encode(t)", 0, msg, sizeof msg) == -1);
  CHECK(strstr(msg, "nesting deeper") != NULL);
  CHECK(run(vm, "return require('fm.json').encode(0/0)", 0, msg, sizeof msg) == -1);
  CHECK(run(vm, "return require('fm.json').encode({[true] = 1})", 0, msg, sizeof msg) == -1);

  fm_vm_free(vm);
  fm_vm_free(NULL);
  return check_done();
}
