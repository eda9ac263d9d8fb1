/* fm.proc: child processes for `faultmaven exec` scripts (test harnesses start the engine,
 * PostgreSQL, Redis ... this way). Not available to request handlers.
 *   spawn{argv={...}, env={K=V|false}, stdout=path, stderr=path, cwd=dir} -> pid | nil, msg
 *   kill(pid, "TERM"|"INT"|"KILL"|"HUP"|n) -> true | nil, msg
 *   wait(pid [, timeout_s]) -> "exit"|"signal", code | nil, "timeout"
 *   getpid() -> pid */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *opt_string(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  return s; /* stays on the stack, so it stays alive */
}

static int l_proc_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "argv");
  luaL_checktype(L, -1, LUA_TTABLE);
  int argv_idx = lua_gettop(L);
  lua_Integer argc = (lua_Integer)lua_rawlen(L, argv_idx);
  if (argc < 1 || argc > 1000) return luaL_argerror(L, 1, "argv needs 1 to 1000 strings");
  const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
  for (lua_Integer i = 1; i <= argc; i++) {
    lua_rawgeti(L, argv_idx, i);
    argv[i - 1] = luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the string is still referenced by the argv table */
  }
  argv[argc] = NULL;

  /* environment: the current one, with the given keys replaced (false removes) */
  lua_newtable(L);
  int env_idx = lua_gettop(L);
  for (char **e = environ; *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, env_idx);
  }
  lua_getfield(L, 1, "env");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "environment names must be strings");
      const char *k = lua_tostring(L, -2);
      if (!*k || strchr(k, '=')) return luaL_error(L, "bad environment name '%s'", k);
      lua_pushvalue(L, -2);
      if (lua_toboolean(L, -2)) luaL_tolstring(L, -2, NULL); /* false or nil removes it */
      else lua_pushnil(L);
      lua_rawset(L, env_idx);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  size_t nenv = 0;
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    nenv++;
    lua_pop(L, 1);
  }
  const char **envp = lua_newuserdatauv(L, sizeof(char *) * (nenv + 1), 0);
  int envp_idx = lua_gettop(L);
  lua_newtable(L); /* keeps the "K=V" strings alive */
  int keep_idx = lua_gettop(L);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    envp[i] = lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_rawseti(L, keep_idx, (lua_Integer)i + 1);
    i++;
    lua_pop(L, 1);
  }
  envp[i] = NULL;
  (void)envp_idx;

  const char *out = opt_string(L, 1, "stdout");
  const char *errp = opt_string(L, 1, "stderr");
  const char *cwd = opt_string(L, 1, "cwd");

  pid_t pid = fork();
  if (pid < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "fork: %s", strerror(errno));
    return 2;
  }
  if (pid == 0) {
    /* child: async-signal-safe calls only */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (out) {
      int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 1);
    }
    if (errp) {
      int fd = open(errp, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 2);
    }
    if (cwd && chdir(cwd) != 0) _exit(126);
    execve(argv[0], (char *const *)argv, (char *const *)envp);
    if (!strchr(argv[0], '/')) execvpe(argv[0], (char *const *)argv, (char *const *)envp);
    _exit(127);
  }
  lua_pushinteger(L, pid);
  return 1;
}

static int signal_arg(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER) return (int)luaL_checkinteger(L, idx);
  static const char *const names[] = {"TERM", "INT", "KILL", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT", NULL};
  static const int sigs[] = {SIGTERM, SIGINT, SIGKILL, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGSTOP, SIGCONT};
  return sigs[luaL_checkoption(L, idx, "TERM", names)];
}

static int l_proc_kill(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  if (pid <= 0) return luaL_argerror(L, 1, "pid must be positive");
  int sig = signal_arg(L, 2);
  if (kill((pid_t)pid, sig) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_proc_wait(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  double timeout = luaL_optnumber(L, 2, -1);
  double deadline = fm_time_mono() + timeout;
  for (;;) {
    int st;
    pid_t r = waitpid((pid_t)pid, &st, timeout < 0 ? 0 : WNOHANG);
    if (r == (pid_t)pid) {
      if (WIFEXITED(st)) {
        lua_pushliteral(L, "exit");
        lua_pushinteger(L, WEXITSTATUS(st));
      } else {
        lua_pushliteral(L, "signal");
        lua_pushinteger(L, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
      }
      return 2;
    }
    if (r < 0 && errno != EINTR) {
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
    if (timeout >= 0 && fm_time_mono() >= deadline) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    fm_sleep(0.005);
  }
}

static int l_proc_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static const luaL_Reg funcs[] = {{"spawn", l_proc_spawn},
                                 {"kill", l_proc_kill},
                                 {"wait", l_proc_wait},
                                 {"getpid", l_proc_getpid},
                                 {NULL, NULL}};

int luaopen_fm_proc(lua_State *L);
int luaopen_fm_proc(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
