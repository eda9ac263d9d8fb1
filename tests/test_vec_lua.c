/* test_vec_lua.c: the fm.vecmath binding, run in real Lua states: packing, kernels, an index's
 * methods, filters (including one that raises), save/load, and an index shared by two VMs. */
#include "check.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <unistd.h>

int luaopen_fm_vecmath(lua_State *L);

static lua_State *new_vm(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_fm_vecmath);
  lua_setfield(L, -2, "fm.vecmath");
  lua_pop(L, 1);
  return L;
}

/* Runs chunk; it returns true on success or raises. */
static int run(lua_State *L, const char *name, const char *chunk) {
  if (luaL_loadbuffer(L, chunk, strlen(chunk), name) || lua_pcall(L, 0, 1, 0)) {
    fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  int ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

static const char *basics =
    "local vm = require 'fm.vecmath'\n"
    "assert(vm.simd() == 'avx2+fma' or vm.simd() == 'portable')\n"
    "local a, b = vm.pack{1, 2, 3, 4}, vm.pack{4, 3, 2, 1}\n"
    "assert(#a == 16)\n"
    "local t = vm.unpack(a); assert(#t == 4 and t[1] == 1 and t[4] == 4)\n"
    "assert(vm.dot(a, b) == 20)\n"
    "assert(vm.l2sq(a, b) == 20)\n"
    "assert(math.abs(vm.cosine(a, b) - 20 / 30) < 1e-6)\n"
    "local n = vm.unpack(vm.normalize(vm.pack{3, 4}))\n"
    "assert(math.abs(n[1] - 0.6) < 1e-6 and math.abs(n[2] - 0.8) < 1e-6)\n"
    "assert(not pcall(vm.dot, a, vm.pack{1}))\n"
    "assert(not pcall(vm.pack, {1, 'x'}))\n"
    "assert(not pcall(vm.unpack, 'abc'))\n"
    "-- a misaligned string (a substring) works too\n"
    "local s = ('x' .. a):sub(2); assert(vm.dot(s, b) == 20)\n"
    "return true\n";

static const char *index_ops =
    "local vm = require 'fm.vecmath'\n"
    "local idx = vm.hnsw{dim = 3, metric = 'l2', M = 8, ef_construction = 50}\n"
    "assert(idx:dim() == 3 and idx:metric() == 'l2' and idx:count() == 0)\n"
    "assert(#idx:search(vm.pack{0, 0, 0}, 5) == 0)\n"
    "for i = 0, 199 do assert(idx:add(i, vm.pack{i, i % 7, -i})) end\n"
    "assert(idx:count() == 200 and idx:contains(10) and not idx:contains(1000))\n"
    "local r = idx:search(vm.pack{10, 3, -10}, 3)\n"
    "assert(#r == 3 and r[1].label == 10 and r[1].score == 0 and r[2].score <= r[1].score)\n"
    "local e = idx:search(vm.pack{10, 3, -10}, 3, {exact = true})\n"
    "for i = 1, 3 do assert(e[i].label == r[i].label) end\n"
    "assert(idx:delete(10) == true and idx:delete(10) == false)\n"
    "assert(idx:get(10) == nil and idx:count() == 199)\n"
    "assert(idx:search(vm.pack{10, 3, -10}, 1)[1].label ~= 10)\n"
    "assert(vm.unpack(idx:get(11))[1] == 11)\n"
    "-- replace by label\n"
    "idx:add(11, vm.pack{500, 0, 0}); assert(idx:search(vm.pack{500, 0, 0}, 1)[1].label == 11)\n"
    "assert(idx:count() == 199)\n"
    "-- filter\n"
    "local odd = function(l) return l % 2 == 1 end\n"
    "local f = idx:search(vm.pack{50, 1, -50}, 5, {ef = 100, filter = odd})\n"
    "assert(#f == 5); for _, x in ipairs(f) do assert(x.label % 2 == 1) end\n"
    "-- a filter that raises: the error comes out, the index stays usable\n"
    "local boom = function() error('boom') end\n"
    "local ok, err = pcall(idx.search, idx, vm.pack{1, 1, 1}, 3, {filter = boom})\n"
    "assert(not ok and tostring(err):find('boom'))\n"
    "assert(idx:add(1000, vm.pack{1, 1, 1}))\n"
    "-- index calls inside a filter are refused\n"
    "local nested = function() idx:add(5000, vm.pack{0, 0, 0}) return true end\n"
    "ok, err = pcall(idx.search, idx, vm.pack{1, 1, 1}, 3, {filter = nested})\n"
    "assert(not ok and tostring(err):find('inside a search filter'))\n"
    "assert(idx:add(1001, vm.pack{1, 1, 2}))\n"
    "-- misuse raises\n"
    "assert(not pcall(idx.add, idx, -1, vm.pack{1, 1, 1}))\n"
    "assert(not pcall(idx.add, idx, 1, vm.pack{1, 1}))\n"
    "assert(not pcall(vm.hnsw, {dim = 3, metric = 'manhattan'}))\n"
    "assert(not pcall(vm.hnsw, {metric = 'l2'}))\n"
    "assert(idx:memory() > 200 * 12)\n"
    "-- save and load\n"
    "local path = os.getenv('VEC_TMP') .. '/lua.hnsw'\n"
    "assert(idx:save(path) == true)\n"
    "local l = assert(vm.load(path))\n"
    "assert(l:count() == idx:count() and l:metric() == 'l2')\n"
    "local a, b = idx:search(vm.pack{20, 6, -20}, 5), l:search(vm.pack{20, 6, -20}, 5)\n"
    "for i = 1, 5 do assert(a[i].label == b[i].label and a[i].score == b[i].score) end\n"
    "local none, msg, code = vm.load(path .. '.missing')\n"
    "assert(none == nil and msg:find('No such file') and code == 'io')\n"
    "local bad = io.open(path, 'r+b'); bad:seek('set', 300); bad:write('\\255\\255'); bad:close()\n"
    "none, msg, code = vm.load(path)\n"
    "assert(none == nil and msg:find('checksum') and code == 'invalid')\n"
    "os.remove(path)\n"
    "l:close(); assert(not pcall(l.count, l))\n"
    "do local c <close> = vm.hnsw{dim = 2}; c:add(1, vm.pack{1, 0}) end\n"
    "-- the process-wide registry\n"
    "assert(vm.share('kb', idx)); idx:close()\n"
    "return true\n";

static const char *other_vm =
    "local vm = require 'fm.vecmath'\n"
    "assert(vm.shared('nope') == nil)\n"
    "local s = assert(vm.shared('kb'))\n"
    "assert(s:count() == 201 and s:contains(1001))\n"
    "s:add(2000, vm.pack{9, 9, 9})\n"
    "return true\n";

static const char *first_vm_again =
    "local vm = require 'fm.vecmath'\n"
    "local s = assert(vm.shared('kb'))\n"
    "assert(s:contains(2000))\n"
    "assert(vm.unshare('kb') == true and vm.unshare('kb') == false)\n"
    "assert(s:count() == 202)\n"
    "s:close()\n"
    "return true\n";

int main(void) {
  char dir[] = "/tmp/fm_vec_luaXXXXXX";
  if (!mkdtemp(dir)) return 2;
  setenv("VEC_TMP", dir, 1);
  lua_State *a = new_vm(), *b = new_vm();
  CHECK(run(a, "basics", basics));
  CHECK(run(a, "index_ops", index_ops));
  lua_gc(a, LUA_GCCOLLECT);
  CHECK(run(b, "other_vm", other_vm));
  lua_close(b); /* b's handle goes; the registry keeps the index */
  CHECK(run(a, "first_vm_again", first_vm_again));
  lua_close(a);
  rmdir(dir);
  return check_done();
}
