/* fm.source: the Lua sources of this VM's generation (config.lua, lua/, playbooks/ under FM_HOME).
 * In a VM made from a generation (serve), the snapshot that passed the self-check; otherwise
 * (exec) the files on disk now.
 *   source.read(path) -> string | nil, message      path relative to FM_HOME
 *   source.list(prefix) -> {path, ...}              sorted; prefix "playbooks/" lists playbooks
 *   source.generation() -> integer | nil            nil when reading the disk */
#include "reload.h"
#include "vm.h"

#include <lauxlib.h>
#include <string.h>

/* The files to read: the VM's generation, or a snapshot of the disk made for this call (freed
 * by the caller through the returned flag). */
static const struct fm_source_file *files_of(lua_State *L, size_t *n, int *owned) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  *owned = 0;
  *n = 0;
  if (vm->gen) {
    *n = vm->gen->nfiles;
    return vm->gen->files;
  }
  struct fm_source_file *v = NULL;
  struct fm_err err = {0};
  if (fm_snapshot_read(vm->home, &v, n, &err)) {
    luaL_error(L, "%s", err.msg);
    return NULL;
  }
  *owned = 1;
  return v;
}

static int l_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n;
  int owned;
  const struct fm_source_file *v = files_of(L, &n, &owned);
  const struct fm_source_file *f = fm_snapshot_find(v, n, path);
  if (f) lua_pushlstring(L, f->data, f->len);
  else lua_pushnil(L);
  if (owned) fm_snapshot_free((struct fm_source_file *)v, n);
  if (f) return 1;
  lua_pushfstring(L, "%s: no such file in the sources", path);
  return 2;
}

static int l_list(lua_State *L) {
  size_t plen;
  const char *prefix = luaL_optlstring(L, 1, "", &plen);
  size_t n = 0;
  int owned;
  const struct fm_source_file *v = files_of(L, &n, &owned);
  lua_createtable(L, 0, 0);
  lua_Integer k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(v[i].path, prefix, plen) == 0) {
      lua_pushstring(L, v[i].path);
      lua_rawseti(L, -2, ++k);
    }
  if (owned) fm_snapshot_free((struct fm_source_file *)v, n);
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
