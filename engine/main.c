/* main.c: the faultmaven command line and the serve lifecycle. */
#include "admin.h"
#include "cors.h"
#include "db.h"
#include "kv.h"
#include "storage.h"
#include "http.h"
#include "housekeeping.h"
#include "jobs.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "reload.h"
#include "repl.h"
#include "state.h"
#include "util.h"
#include "vm.h"
#include "worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "faultmaven " FM_VERSION ": the FaultMaven troubleshooting engine\n"
    "\n"
    "usage:\n"
    "  faultmaven serve [options]       run the HTTP API (contract 2.0.0)\n"
    "  faultmaven exec FILE [ARGS...]   run a Lua file in an engine VM with the fm.* modules\n"
    "  faultmaven check-config          print the resolved settings (secrets masked); exit 2 if invalid\n"
    "  faultmaven migrate [status|up]   show or apply the database migrations (DATABASE_URL)\n"
    "  faultmaven kb export FILE | import FILE | reindex\n"
    "                                   move the knowledge base between providers; re-embed it\n"
    "  faultmaven diagnose FILE... [--symptom TEXT] [--format md|json] [--no-kb]\n"
    "                                   diagnose an incident offline from local files: evidence,\n"
    "                                   hypotheses, next checks, remediation, runbooks\n"
    "  faultmaven repl [-e CODE]        Lua REPL inside the running engine (admin socket)\n"
    "  faultmaven reload                reload config.lua, lua/ and playbooks/ in the running engine\n"
    "  faultmaven version               print version information\n"
    "  faultmaven --help                this text\n"
    "\n"
    "serve options (each overrides the environment variable named beside it):\n"
    "  --host ADDR          FM_HOST            listen address (local mode: 127.0.0.1)\n"
    "  --port N             FM_PORT            listen port (8090)\n"
    "  --data-dir DIR       FM_DATA_DIR        data directory (./data)\n"
    "  --home DIR           FM_HOME            where config.lua, lua/, playbooks/, kb/ live\n"
    "  --workers N          FM_WORKERS         Lua worker threads\n"
    "  --io-threads N       FM_HTTP_IO_THREADS HTTP I/O threads\n"
    "  --shutdown-grace S   FM_SHUTDOWN_GRACE_S seconds in-flight requests get on SIGTERM\n"
    "  --log-level L        LOG_LEVEL          debug, info, warn, error\n"
    "\n"
    "repl and reload options: --socket PATH (else FM_ADMIN_SOCKET, default <data dir>/admin.sock),\n"
    "  --data-dir DIR, --home DIR; repl -e CODE runs CODE and exits (1 on error); with stdin not a\n"
    "  terminal, repl runs stdin as one script.\n"
    "\n"
    "Every setting is listed in docs/CONFIG.md; `faultmaven check-config` shows their values.\n";

static const struct {
  const char *flag;
  const char *env;
} flag_env[] = {
    {"--host", "FM_HOST"},
    {"--port", "FM_PORT"},
    {"--data-dir", "FM_DATA_DIR"},
    {"--home", "FM_HOME"},
    {"--workers", "FM_WORKERS"},
    {"--io-threads", "FM_HTTP_IO_THREADS"},
    {"--shutdown-grace", "FM_SHUTDOWN_GRACE_S"},
    {"--log-level", "LOG_LEVEL"},
};

/* Settings C holds for the life of the process, read from fm.settings. */
struct settings {
  char host[256];
  int port;
  char data_dir[PATH_MAX];
  int workers;
  int io_threads;
  double grace_s;
  double housekeeping_s;
  int job_workers;
  double job_poll_s;
  int log_level;
  size_t lua_memory;
  uint64_t budget;
  size_t max_body;
  size_t max_url;
  size_t max_header;
  int idle_timeout_s;
  int max_connections;
  int reload_watch;
  int reload_debounce_ms;
  struct fm_db_url db_url; /* DATABASE_URL, parsed */
  int db_pool_size;
  double db_pool_timeout_s;
  double db_connect_timeout_s;
};

static int parse_flags(int argc, char **argv, int first) {
  for (int i = first; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    size_t k;
    for (k = 0; k < sizeof flag_env / sizeof flag_env[0]; k++) {
      size_t fl = strlen(flag_env[k].flag);
      if (strncmp(a, flag_env[k].flag, fl) == 0 && (a[fl] == '\0' || a[fl] == '=')) {
        if (a[fl] == '=') val = a + fl + 1;
        else if (i + 1 < argc) val = argv[++i];
        break;
      }
    }
    if (k == sizeof flag_env / sizeof flag_env[0]) {
      fprintf(stderr, "faultmaven: unknown option '%s' (see faultmaven --help)\n", a);
      return -1;
    }
    if (!val) {
      fprintf(stderr, "faultmaven: option %s needs a value\n", flag_env[k].flag);
      return -1;
    }
    setenv(flag_env[k].env, val, 1);
  }
  return 0;
}

/* FM_HOME: the environment, else the current directory if it has config.lua, else the install
 * prefix. Made absolute and exported so every VM and child sees the same. */
static int resolve_home(struct fm_err *err) {
  const char *h = getenv("FM_HOME");
  char buf[PATH_MAX];
  if (!h || !*h) h = access("config.lua", R_OK) == 0 ? "." : FM_INSTALL_HOME;
  if (!realpath(h, buf)) return fm_err_set(err, FM_E_INVAL, "FM_HOME %s: %s", h, strerror(errno));
  char cfg[PATH_MAX + 16];
  snprintf(cfg, sizeof cfg, "%s/config.lua", buf);
  if (access(cfg, R_OK) != 0)
    return fm_err_set(err, FM_E_INVAL, "FM_HOME %s has no readable config.lua", buf);
  setenv("FM_HOME", buf, 1);
  snprintf(fm_state.home, sizeof fm_state.home, "%s", buf);
  return 0;
}

static void register_metrics(void) {
  fm_metrics_register("fm_http_requests_total", FM_METRIC_COUNTER,
                      "HTTP requests answered, by route pattern, method and status.", NULL, 0);
  fm_metrics_register("fm_http_request_duration_seconds", FM_METRIC_HISTOGRAM,
                      "Time from the first byte of a request to the end of its response.", NULL, 0);
  fm_metrics_register("fm_lua_memory_bytes", FM_METRIC_GAUGE,
                      "Bytes allocated by each worker's Lua VM after its last request.", NULL, 0);
  fm_metrics_register("fm_workers_busy", FM_METRIC_GAUGE, "Lua workers running a request now.", NULL, 0);
  fm_metrics_register("fm_workers", FM_METRIC_GAUGE, "Lua worker threads.", NULL, 0);
  fm_metrics_register("fm_build_info", FM_METRIC_GAUGE, "Build information; the value is 1.", NULL, 0);
  char labels[256];
  snprintf(labels, sizeof labels, "version=\"%s\",lua=\"%s\",libmicrohttpd=\"%s\"", FM_VERSION,
           LUA_RELEASE, MHD_get_version());
  fm_metrics_set("fm_build_info", labels, 1);
}

/* A VM outside the worker pool: serve's boot VM, check-config's, exec's. */
static struct fm_vm *boot_vm(enum fm_vm_mode mode, struct fm_err *err) {
  struct fm_vm_opts o = {0};
  o.home = fm_state.home;
  o.extra_path = getenv("FM_LUA_PATH");
  o.mode = mode;
  o.worker_id = -1;
  struct fm_vm *vm;
  if (fm_vm_new(&o, &vm, err)) return NULL;
  return vm;
}

static int l_require_settings(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.settings");
  lua_call(L, 1, 1);
  return 1;
}

static lua_Integer get_int(lua_State *L, const char *k) {
  lua_getfield(L, -1, k);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

static double get_num(lua_State *L, const char *k) {
  lua_getfield(L, -1, k);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void get_str(lua_State *L, const char *k, char *out, size_t outsz) {
  lua_getfield(L, -1, k);
  const char *v = lua_tostring(L, -1);
  snprintf(out, outsz, "%s", v ? v : "");
  lua_pop(L, 1);
}

/* Loads fm.settings (config.lua over the environment) and copies what C needs. */
static int load_settings(struct fm_vm *vm, struct settings *s, struct fm_err *err) {
  lua_pushcfunction(vm->L, l_require_settings);
  if (fm_vm_pcall(vm, 0, 1, err)) return FM_E_INVAL;
  lua_State *L = vm->L;
  get_str(L, "host", s->host, sizeof s->host);
  s->port = (int)get_int(L, "port");
  get_str(L, "data_dir", s->data_dir, sizeof s->data_dir);
  s->workers = (int)get_int(L, "workers");
  s->io_threads = (int)get_int(L, "http_io_threads");
  s->grace_s = get_num(L, "shutdown_grace_s");
  s->housekeeping_s = get_num(L, "housekeeping_interval_s");
  s->job_workers = (int)get_int(L, "job_workers");
  s->job_poll_s = get_num(L, "job_poll_ms") / 1000.0;
  char lv[32];
  get_str(L, "log_level", lv, sizeof lv);
  s->log_level = fm_log_parse_level(lv);
  s->lua_memory = (size_t)get_int(L, "lua_memory_mb") << 20;
  s->budget = (uint64_t)get_int(L, "request_instruction_limit");
  s->max_body = (size_t)get_int(L, "max_body_bytes");
  s->max_url = (size_t)get_int(L, "max_url_bytes");
  s->max_header = (size_t)get_int(L, "max_header_bytes");
  s->idle_timeout_s = (int)get_int(L, "http_idle_timeout_s");
  s->max_connections = (int)get_int(L, "http_max_connections");
  lua_getfield(L, -1, "reload_watch");
  s->reload_watch = lua_toboolean(L, -1);
  lua_pop(L, 1);
  s->reload_debounce_ms = (int)get_int(L, "reload_debounce_ms");
  lua_getfield(L, -1, "database_url");
  int bad_url = fm_db_url_parse(lua_tostring(L, -1), &s->db_url, err);
  lua_pop(L, 1);
  if (bad_url) {
    char m[sizeof err->msg];
    snprintf(m, sizeof m, "%s", err->msg);
    lua_pop(L, 1);
    return fm_err_set(err, FM_E_INVAL, "invalid configuration:\n  DATABASE_URL: %s", m);
  }
  s->db_pool_size = (int)get_int(L, "database_pool_size");
  s->db_pool_timeout_s = get_num(L, "database_pool_timeout_s");
  s->db_url.statement_timeout_ms = (int)(get_num(L, "database_statement_timeout_s") * 1000.0);
  s->db_connect_timeout_s = get_num(L, "database_connect_timeout_s");
  lua_getfield(L, -1, "cors_allow_origins");
  size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
  const char *origins[256];
  if (n > 256) n = 256;
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    origins[i] = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the list */
  }
  int rc = fm_cors_configure(origins, n);
  lua_pop(L, 2);
  if (rc) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (s->log_level < 0) s->log_level = FM_LOG_INFO;
  return 0;
}

/* The process's database pool (fm.db): the first connection is retried for
 * DATABASE_CONNECT_TIMEOUT_S, each failed attempt logged. */
static int open_database(const struct settings *s, struct fm_err *err) {
  struct fm_db_pool_config cfg = {0};
  cfg.url = s->db_url;
  cfg.size = s->db_pool_size;
  cfg.acquire_timeout_s = s->db_pool_timeout_s;
  cfg.connect_budget_s = s->db_connect_timeout_s;
  struct fm_db_pool *p;
  if (fm_db_pool_open(&cfg, &p, err)) return err->code;
  fm_db_global_set(p);
  return 0;
}

/* The process's key-value store (fm.kv): memory, or Redis from REDIS_URL / REDIS_HOST. */
static int open_kv(struct fm_err *err) {
  struct fm_vm *vm = boot_vm(FM_VM_SERVE, err);
  if (!vm) return FM_E_LUA;
  int rc = fm_kv_open_from_settings(vm, err);
  fm_vm_free(vm);
  return rc;
}

/* The process's file store (fm.storage): the uploads directory, or S3 (STORAGE_PROVIDER). */
static int open_storage(struct fm_err *err) {
  struct fm_vm *vm = boot_vm(FM_VM_SERVE, err);
  if (!vm) return FM_E_LUA;
  int rc = fm_storage_open_from_settings(vm, err);
  fm_vm_free(vm);
  return rc;
}

/* Calls require(module)[fn](arg) in a fresh VM (mode SERVE inside serve, EXEC for commands) and
 * returns its integer result in *out (0 when it returns none). */
static int l_call_step(lua_State *L) {
  const char *module = lua_tostring(L, 1), *fn = lua_tostring(L, 2);
  lua_getglobal(L, "require");
  lua_pushstring(L, module);
  lua_call(L, 1, 1);
  lua_getfield(L, -1, fn);
  lua_pushvalue(L, 3);
  lua_call(L, 1, 1);
  return 1;
}

static int run_lua_step_mode(enum fm_vm_mode mode, const char *module, const char *fn,
                             const char *arg, int *out, struct fm_err *err) {
  struct fm_vm *vm = boot_vm(mode, err);
  if (!vm) return FM_E_LUA;
  lua_pushcfunction(vm->L, l_call_step);
  lua_pushstring(vm->L, module);
  lua_pushstring(vm->L, fn);
  if (arg) lua_pushstring(vm->L, arg);
  else lua_pushnil(vm->L);
  int rc = fm_vm_pcall(vm, 3, 1, err);
  if (!rc && out) *out = (int)lua_tointeger(vm->L, -1);
  fm_vm_free(vm);
  return rc;
}

static int run_lua_step(const char *module, const char *fn, const char *arg, struct fm_err *err) {
  return run_lua_step_mode(FM_VM_SERVE, module, fn, arg, NULL, err);
}

/* ---- signals ------------------------------------------------------------------------------- */

static pthread_mutex_t g_sig_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_sig_cv = PTHREAD_COND_INITIALIZER;
static int g_shutdown_signal;

static void *signal_thread(void *arg) {
  sigset_t *set = arg;
  for (;;) {
    int sig;
    if (sigwait(set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      fm_info("SIGHUP received: reloading the Lua generation");
      fm_reload_trigger("SIGHUP");
      continue;
    }
    pthread_mutex_lock(&g_sig_mu);
    int second = g_shutdown_signal != 0;
    if (!second) g_shutdown_signal = sig;
    pthread_cond_broadcast(&g_sig_cv);
    pthread_mutex_unlock(&g_sig_mu);
    if (second) {
      fm_log_fields(FM_LOG_WARN, "second signal: exiting at once", NULL);
      _exit(128 + sig);
    }
  }
  return NULL;
}

/* ---- commands ------------------------------------------------------------------------------ */

static int cmd_serve(void) {
  struct fm_err err = {0};
  struct settings s = {0};
  char tmp_dir[PATH_MAX + 8];
  int rc = 1;

  if (resolve_home(&err)) goto fail;
  fm_state.started_at = fm_time_now();
  fm_state.started_mono = fm_time_mono();
  register_metrics();
  if (fm_httpc_global_init(&err)) goto fail;

  struct fm_vm *boot = boot_vm(FM_VM_SERVE, &err);
  if (!boot) goto fail;
  if (load_settings(boot, &s, &err)) {
    char *tb = strstr(err.msg, "\nstack traceback:"); /* the message says it all */
    if (tb) *tb = '\0';
    fm_vm_free(boot);
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 2;
  }
  fm_log_set_level(s.log_level);
  fm_vm_free(boot);

  /* Generation 1: the same snapshot and self-check as every reload. It also gives the HTTP side
   * its route table (body limits). */
  struct fm_reload_config rc_cfg = {0};
  rc_cfg.vm.home = fm_state.home;
  rc_cfg.vm.extra_path = getenv("FM_LUA_PATH");
  rc_cfg.vm.mem_limit = s.lua_memory;
  rc_cfg.vm.mode = FM_VM_SERVE;
  rc_cfg.vm.worker_id = -1;
  rc_cfg.watch = s.reload_watch;
  rc_cfg.debounce_ms = s.reload_debounce_ms;
  if (fm_reload_init(&rc_cfg, &err)) {
    fprintf(stderr, "faultmaven: the Lua code does not load: %s\n", err.msg);
    fm_log_fields(FM_LOG_ERROR, "the Lua code does not load", NULL);
    fm_reload_stop();
    fm_reload_free();
    return 1;
  }

  if (fm_mkdirs(s.data_dir, 0750, &err)) goto fail;
  snprintf(tmp_dir, sizeof tmp_dir, "%s/tmp", s.data_dir);
  if (fm_mkdirs(tmp_dir, 0700, &err)) goto fail;
  int stale = fm_clean_dir(tmp_dir);
  if (stale) fm_warn("removed %d stale temp files from %s", stale, tmp_dir);
  /* the database before the workers: a database that never answers stops the start here */
  if (open_database(&s, &err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    goto fail;
  }
  if (open_kv(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    goto fail;
  }
  if (open_storage(&err)) {
    char *tb = strstr(err.msg, "\nstack traceback:");
    if (tb) *tb = '\0';
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    goto fail;
  }
  snprintf(fm_state.host, sizeof fm_state.host, "%s", s.host);
  snprintf(fm_state.data_dir, sizeof fm_state.data_dir, "%s", s.data_dir);
  fm_state.workers = s.workers;
  fm_state.io_threads = s.io_threads;
  fm_metrics_set("fm_workers", "", s.workers);
  fm_metrics_set("fm_workers_busy", "", 0);
  /* once, before any worker: the JWT key, database migrations (lua/fm/startup.lua) */
  if (run_lua_step("fm.startup", "run", NULL, &err)) {
    char *tb = strstr(err.msg, "\nstack traceback:");
    if (tb) *tb = '\0';
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    goto fail;
  }

  /* Signals are taken by one thread with sigwait; every other thread inherits this mask. */
  static sigset_t set; /* the signal thread keeps a pointer to it */
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  pthread_t sigthr;
  if (pthread_create(&sigthr, NULL, signal_thread, &set) != 0) {
    fm_err_set(&err, FM_E_IO, "cannot start the signal thread");
    goto fail;
  }
  pthread_detach(sigthr);

  /* The listener starts first so probes get answers (/readiness 503) while workers load. */
  fm_http_set_ready(0);
  struct fm_http_config hc = {
      .host = s.host,
      .port = s.port,
      .io_threads = s.io_threads,
      .max_url = s.max_url,
      .max_header = s.max_header,
      .spool_threshold = 64 * 1024,
      .tmp_dir = tmp_dir,
      .idle_timeout_s = s.idle_timeout_s,
      .max_connections = s.max_connections,
      .routes = NULL, /* set by fm_reload_init */
  };
  if (fm_http_start(&hc, fm_workers_dispatch, NULL, &err)) goto fail;
  fm_state.port = fm_http_bound_port();

  struct fm_workers_config wc = {0};
  wc.count = s.workers;
  wc.vm.home = fm_state.home;
  wc.vm.extra_path = getenv("FM_LUA_PATH");
  wc.vm.mem_limit = s.lua_memory;
  wc.vm.mode = FM_VM_SERVE;
  wc.budget = s.budget;
  if (fm_workers_start(&wc, &err)) {
    /* Requests may already be queued and suspended: libmicrohttpd aborts if stopped with
     * suspended connections, so say why and leave without stopping it. */
    fm_http_set_ready(2);
    fm_log_fields(FM_LOG_ERROR, err.msg, NULL);
    _exit(1);
  }
  if (fm_reload_start(&err)) fm_log_fields(FM_LOG_ERROR, err.msg, NULL); /* serving goes on */
  /* the admin socket (a problem is logged, serving goes on) is up before readiness says so */
  fm_admin_start(&wc.vm);
  fm_housekeeping_start(&wc.vm, s.housekeeping_s);
  fm_jobs_start(&wc.vm, s.job_workers, s.job_poll_s);
  fm_http_set_ready(1);
  {
    char f[512];
    snprintf(f, sizeof f, "\"host\":\"%s\",\"port\":%d,\"workers\":%d,\"io_threads\":%d,\"version\":\"%s\"",
             s.host, fm_state.port, s.workers, s.io_threads, FM_VERSION);
    fm_log_fields(FM_LOG_INFO, "listening", f);
  }

  pthread_mutex_lock(&g_sig_mu);
  while (!g_shutdown_signal) pthread_cond_wait(&g_sig_cv, &g_sig_mu);
  int sig = g_shutdown_signal;
  pthread_mutex_unlock(&g_sig_mu);

  fm_http_set_ready(2);
  fm_info("%s received: draining (grace %.0fs)", sig == SIGINT ? "SIGINT" : "SIGTERM", s.grace_s);
  fm_http_quiesce();
  double deadline = fm_time_mono() + s.grace_s;
  while (fm_http_inflight() > 0 && fm_time_mono() < deadline) fm_sleep(0.01);
  int left = fm_http_inflight();
  if (left > 0) {
    /* Workers still hold requests: tearing the daemon down under them is unsafe, so leave now. */
    fm_warn("shutdown grace of %.0fs over with %d requests still running; exiting", s.grace_s, left);
    _exit(0);
  }
  fm_admin_stop(); /* ends admin sessions first: admin.reload() waits on the reload thread */
  fm_housekeeping_stop(); /* its VM holds a generation and borrows database connections */
  fm_jobs_stop();         /* the same; waits for the job in progress */
  fm_reload_stop(); /* before the workers: a build must not start while they are torn down */
  fm_http_stop();
  fm_workers_stop();
  fm_db_global_close(); /* after the workers: they borrow its connections */
  fm_kv_global_close();
  fm_storage_global_close(); /* after the workers and the daemon: streams borrow it */
  fm_kv_scripts_reset();
  fm_reload_free(); /* workers read the generation and the start settings until they stop */
  fm_httpc_global_cleanup();
  fm_metrics_reset();
  fm_cors_reset();
  fm_info("stopped");
  return 0;

fail:
  fm_log_fields(FM_LOG_ERROR, err.msg[0] ? err.msg : "start failed", NULL);
  fm_reload_stop();
  fm_reload_free();
  fm_db_global_close();
  fm_kv_global_close();
  fm_storage_global_close();
  fm_kv_scripts_reset();
  return rc;
}

static int cmd_exec(int argc, char **argv) {
  struct fm_err err = {0};
  if (argc < 3) {
    fprintf(stderr, "usage: faultmaven exec FILE [ARGS...]\n");
    return 2;
  }
  if (resolve_home(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 2;
  }
  int lv = fm_log_parse_level(getenv("LOG_LEVEL"));
  fm_log_set_level(lv >= 0 ? lv : FM_LOG_INFO);
  register_metrics();
  if (fm_httpc_global_init(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 1;
  }
  struct fm_vm *vm = boot_vm(FM_VM_EXEC, &err);
  if (!vm) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 1;
  }
  lua_State *L = vm->L;
  /* arg like lua(1): arg[0] = script, arg[1..] = its arguments, arg[-1] = the engine */
  lua_createtable(L, argc - 3, 2);
  lua_pushstring(L, argv[0]);
  lua_rawseti(L, -2, -1);
  for (int i = 2; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 2);
  }
  lua_setglobal(L, "arg");
  int rc = 0;
  if (luaL_loadfile(L, argv[2]) != LUA_OK) {
    fprintf(stderr, "faultmaven: %s\n", lua_tostring(L, -1));
    rc = 1;
  } else {
    for (int i = 3; i < argc; i++) lua_pushstring(L, argv[i]);
    if (fm_vm_pcall(vm, argc - 3, 0, &err)) {
      fprintf(stderr, "faultmaven: %s\n", err.msg);
      rc = 1;
    }
  }
  fm_vm_free(vm);
  fm_db_global_close(); /* fm.db opens it on first use in exec */
  fm_kv_global_close(); /* so does fm.kv */
  fm_storage_global_close(); /* and fm.storage */
  fm_kv_scripts_reset();
  fm_httpc_global_cleanup();
  fm_metrics_reset();
  return rc;
}

static int l_check_config(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "config");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "check");
  lua_call(L, 0, 2);
  return 2;
}

static int cmd_check_config(void) {
  struct fm_err err = {0};
  if (resolve_home(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 2;
  }
  struct fm_vm *vm = boot_vm(FM_VM_SERVE, &err);
  if (!vm) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 1;
  }
  lua_pushcfunction(vm->L, l_check_config);
  int rc;
  if (fm_vm_pcall(vm, 0, 2, &err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    rc = 2;
  } else {
    const char *report = lua_tostring(vm->L, -1);
    rc = lua_toboolean(vm->L, -2) ? 0 : 2;
    fputs(report ? report : "", rc ? stderr : stdout);
  }
  fm_vm_free(vm);
  return rc;
}

/* faultmaven migrate [status|up]: the same settings as serve (DATABASE_URL, FM_HOME). */
static int cmd_migrate(int argc, char **argv) {
  struct fm_err err = {0};
  const char *sub = argc > 2 && argv[2][0] != '-' ? argv[2] : "status";
  if (parse_flags(argc, argv, argc > 2 && argv[2][0] != '-' ? 3 : 2)) return 2;
  if (resolve_home(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 2;
  }
  int lv = fm_log_parse_level(getenv("LOG_LEVEL"));
  fm_log_set_level(lv >= 0 ? lv : FM_LOG_WARN);
  int code = 1;
  if (run_lua_step_mode(FM_VM_EXEC, "fm.db.migrate", "cli", sub, &code, &err)) {
    char *tb = strstr(err.msg, "\nstack traceback:");
    if (tb) *tb = '\0';
    fprintf(stderr, "faultmaven: migrate: %s\n", err.msg);
    code = 1;
  }
  fm_db_global_close();
  return code;
}

/* diagnose's file check, for Lua: file_kind(path) -> "file" | "directory" | "fifo" | "socket" |
 * "char" | "block" | "other", or nil, message. stat() only: a FIFO is never opened (that would
 * block until a writer came). */
static int l_diagnose_file_kind(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st)) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  const char *k = S_ISREG(st.st_mode)    ? "file"
                  : S_ISDIR(st.st_mode)  ? "directory"
                  : S_ISFIFO(st.st_mode) ? "fifo"
                  : S_ISSOCK(st.st_mode) ? "socket"
                  : S_ISCHR(st.st_mode)  ? "char"
                  : S_ISBLK(st.st_mode)  ? "block"
                                         : "other";
  lua_pushstring(L, k);
  return 1;
}

/* The Lua half of a CLI command: require(<upvalue 1>).main(args), args the table at 1. */
static int l_cli_step(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* faultmaven <name> ARGS...: <module>.main{args..., tty, file_kind} in an EXEC VM with the
 * settings serve would use; returns its exit code. log_level: the default when LOG_LEVEL is
 * unset; tty_fd: the stream whose terminal-ness `tty` reports. */
static int run_lua_cli(const char *name, const char *module, int argc, char **argv,
                       int log_level, int tty_fd) {
  struct fm_err err = {0};
  if (resolve_home(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 2;
  }
  int lv = fm_log_parse_level(getenv("LOG_LEVEL"));
  fm_log_set_level(lv >= 0 ? lv : log_level);
  if (fm_httpc_global_init(&err)) {
    fprintf(stderr, "faultmaven: %s\n", err.msg);
    return 1;
  }
  int code = 1;
  struct fm_vm *vm = boot_vm(FM_VM_EXEC, &err);
  if (vm) {
    lua_State *L = vm->L;
    lua_pushstring(L, module);
    lua_pushcclosure(L, l_cli_step, 1);
    lua_createtable(L, argc - 2, 2);
    for (int i = 2; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i - 1);
    }
    lua_pushboolean(L, isatty(tty_fd));
    lua_setfield(L, -2, "tty");
    lua_pushcfunction(L, l_diagnose_file_kind);
    lua_setfield(L, -2, "file_kind");
    if (!fm_vm_pcall(vm, 1, 1, &err)) code = (int)lua_tointeger(L, -1);
    fm_vm_free(vm);
  }
  if (err.msg[0]) {
    char *tb = strstr(err.msg, "\nstack traceback:");
    if (tb) *tb = '\0';
    fprintf(stderr, "faultmaven: %s: %s\n", name, err.msg);
    code = 1;
  }
  fflush(stdout);
  fm_db_global_close();
  fm_kv_global_close();
  fm_storage_global_close();
  fm_kv_scripts_reset();
  fm_httpc_global_cleanup();
  return code;
}

/* faultmaven kb export FILE | import FILE | reindex (fm.kb.cli); tty: stderr shows a progress
 * bar. */
static int cmd_kb(int argc, char **argv) {
  if (argc < 3) {
    fputs("usage: faultmaven kb export FILE | import FILE | reindex\n", stderr);
    return 2;
  }
  return run_lua_cli("kb", "fm.kb.cli", argc, argv, FM_LOG_WARN, STDERR_FILENO);
}

/* faultmaven diagnose FILE... (fm.agent.diagnose): a report on stdout and nothing else
 * (warnings such as a busy vector index are in the report); exit 0 report, 1 unreadable file
 * or failure, 2 usage. */
static int cmd_diagnose(int argc, char **argv) {
  return run_lua_cli("diagnose", "fm.agent.diagnose", argc, argv, FM_LOG_ERROR, STDOUT_FILENO);
}

/* repl and reload: the admin socket comes from --socket, else from the same settings serve
 * resolves (FM_HOME/config.lua over the environment and the flags). */
static int cmd_admin_client(int argc, char **argv, int reload) {
  struct fm_repl_opts o = {.reload = reload};
  if (fm_repl_parse_args(argc, argv, 2, &o)) return 2;
  char path[PATH_MAX];
  if (!o.socket) {
    struct fm_err err = {0};
    struct fm_vm *vm = NULL;
    if (resolve_home(&err) || !(vm = boot_vm(FM_VM_SERVE, &err))) {
      fprintf(stderr, "faultmaven: %s\n", err.msg);
      return 2;
    }
    lua_pushcfunction(vm->L, l_require_settings);
    if (fm_vm_pcall(vm, 0, 1, &err)) {
      char *tb = strstr(err.msg, "\nstack traceback:");
      if (tb) *tb = '\0';
      fprintf(stderr, "faultmaven: %s\n", err.msg);
      fm_vm_free(vm);
      return 2;
    }
    get_str(vm->L, "admin_socket", path, sizeof path);
    fm_vm_free(vm);
    o.socket = path;
  }
  return fm_repl_run(&o);
}

static int cmd_version(void) {
  printf("faultmaven %s\n", FM_VERSION);
  printf("  %s, libmicrohttpd %s, %s, jansson %s\n", LUA_RELEASE, MHD_get_version(),
         curl_version(), JANSSON_VERSION);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "serve")) {
    if (parse_flags(argc, argv, 2)) return 2;
    return cmd_serve();
  }
  if (!strcmp(cmd, "exec")) return cmd_exec(argc, argv);
  if (!strcmp(cmd, "migrate")) return cmd_migrate(argc, argv);
  if (!strcmp(cmd, "kb")) return cmd_kb(argc, argv);
  if (!strcmp(cmd, "diagnose")) return cmd_diagnose(argc, argv);
  if (!strcmp(cmd, "check-config")) {
    if (parse_flags(argc, argv, 2)) return 2;
    return cmd_check_config();
  }
  if (!strcmp(cmd, "repl")) return cmd_admin_client(argc, argv, 0);
  if (!strcmp(cmd, "reload")) return cmd_admin_client(argc, argv, 1);
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) return cmd_version();
  fprintf(stderr, "faultmaven: unknown command '%s' (see faultmaven --help)\n", cmd);
  return 2;
}
