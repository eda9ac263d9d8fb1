/* l_jobs.c: fm.jobs_core, the C half of fm.jobs (engine/jobs.c):
 *   wake()      wakes idle runner threads of this process (after an enqueue)
 *   stopping()  true once the runner is stopping (engine shutdown)
 *   threads()   runner threads started in this process (0 outside `serve`) */
#include "jobs.h"

#include <lauxlib.h>
#include <lua.h>

int luaopen_fm_jobs_core(lua_State *L);

static int l_jobs_wake(lua_State *L) {
  (void)L;
  fm_jobs_wake();
  return 0;
}

static int l_jobs_stopping(lua_State *L) {
  lua_pushboolean(L, fm_jobs_stopping());
  return 1;
}

static int l_jobs_threads(lua_State *L) {
  lua_pushinteger(L, fm_jobs_threads());
  return 1;
}

static const luaL_Reg funcs[] = {
    {"wake", l_jobs_wake}, {"stopping", l_jobs_stopping}, {"threads", l_jobs_threads}, {NULL, NULL}};

int luaopen_fm_jobs_core(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
