/* fm.source: the Lua sources of this VM's generation (config.lua, lua/, playbooks/ under FM_HOME).
 * In a VM made from a generation (serve), the snapshot that passed the self-check; otherwise
 * (exec, the admin VM) the files on disk now, read again on each call.
 *   source.read(path) -> string | nil, message      path relative to FM_HOME
 *   source.list(prefix) -> {path, ...}              sorted; prefix "playbooks/" lists playbooks
 *   source.generation() -> integer | nil            nil when reading the disk */
#include "reload.h"
#include "vm.h"

#include <lauxlib.h>
#include <string.h>

/* A snapshot of the disk read for one call, owned by a userdata on the stack: freed by __gc
 * even when pushing the results raises (out of memory). */
struct disk_snap {
  struct fm_source_file *v;
  size_t n;
};

static int disk_snap_gc(lua_State *L) {
  struct disk_snap *d = lua_touserdata(L, 1);
  fm_snapshot_free(d->v, d->n);
  d->v = NULL;
  d->n = 0;
  return 0;
}

/* The files to read: the VM's generation, or (exec, admin) a snapshot of the disk now. */
static const struct fm_source_file *files_of(lua_State *L, size_t *n) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (vm->gen) {
    *n = vm->gen->nfiles;
    return vm->gen->files;
  }
  struct disk_snap *d = lua_newuserdatauv(L, sizeof *d, 0);
  d->v = NULL;
  d->n = 0;
  if (luaL_newmetatable(L, "fm.source.snapshot")) {
    lua_pushcfunction(L, disk_snap_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  struct fm_err err = {0};
  if (fm_snapshot_read(vm->home, &d->v, &d->n, &err)) luaL_error(L, "%s", err.msg);
  *n = d->n;
  return d->v;
}

static int l_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n = 0;
  const struct fm_source_file *v = files_of(L, &n);
  const struct fm_source_file *f = fm_snapshot_find(v, n, path);
  if (f) {
    lua_pushlstring(L, f->data, f->len);
    return 1;
  }
  lua_pushnil(L);
  lua_pushfstring(L, "%s: no such file in the sources", path);
  return 2;
}

static int l_list(lua_State *L) {
  size_t plen;
  const char *prefix = luaL_optlstring(L, 1, "", &plen);
  size_t n = 0;
  const struct fm_source_file *v = files_of(L, &n);
  lua_createtable(L, 0, 0);
  lua_Integer k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(v[i].path, prefix, plen) == 0) {
      lua_pushstring(L, v[i].path);
      lua_rawseti(L, -2, ++k);
    }
  return 1;
}

static int l_generation(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  if (vm->gen) lua_pushinteger(L, vm->gen->number);
  else lua_pushnil(L);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"read", l_read}, {"list", l_list}, {"generation", l_generation}, {NULL, NULL}};

int luaopen_fm_source(lua_State *L);
int luaopen_fm_source(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
