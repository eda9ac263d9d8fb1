/* reload.c: Lua generations: snapshot, self-check, publish; the reload thread and the inotify
 * watcher. See reload.h for the model. */
#include "reload.h"

#include "buf.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "routes.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <lauxlib.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES (8u << 20)
#define MAX_TOTAL_BYTES (64u << 20)
#define MAX_FILES 10000
#define MAX_DEPTH 16
#define RUN_WAIT_S 60
#define RUN_WAIT_TEXT "60 s"
/* Instructions the self-check of one generation may run, playbook files included. */
#define CHECK_BUDGET 500000000ull

#include "worker.h" /* fm_workers_wake */

/* a/b into out; -1 when it does not fit (such a path is skipped) */
static int path_join(char *out, size_t n, const char *a, const char *b) {
  int r = snprintf(out, n, "%s/%s", a, b);
  return r < 0 || (size_t)r >= n ? -1 : 0;
}

/* ---- snapshot ------------------------------------------------------------------------------ */

struct snap {
  struct fm_source_file *v;
  size_t n, cap, bytes;
  const char *home;
  struct fm_err *err;
};

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && memcmp(s + a - b, suf, b) == 0;
}

/* Editors leave hidden swap and lock files (.x.lua.swp, .#x.lua); only visible files with the
 * tree's suffix (*.lua; *.sql under migrations/) count. */
static int wanted_name(const char *name, const char *suffix) {
  return name[0] != '.' && name[0] != '#' && ends_with(name, suffix);
}

static int snap_add(struct snap *s, const char *rel) {
  char path[PATH_MAX];
  if (path_join(path, sizeof path, s->home, rel)) return fm_err_set(s->err, FM_E_INVAL, "%s: path too long", rel);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0; /* removed while we walked: the next event rebuilds */
    return fm_err_set(s->err, FM_E_IO, "%s: %s", rel, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return 0;
  }
  if ((size_t)st.st_size > MAX_FILE_BYTES) {
    close(fd);
    return fm_err_set(s->err, FM_E_INVAL, "%s: file larger than %u MiB", rel, MAX_FILE_BYTES >> 20);
  }
  if (s->n >= MAX_FILES || s->bytes + (size_t)st.st_size > MAX_TOTAL_BYTES) {
    close(fd);
    return fm_err_set(s->err, FM_E_INVAL, "%s: more than %d files or %u MiB of Lua under FM_HOME", rel,
                      MAX_FILES, MAX_TOTAL_BYTES >> 20);
  }
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    struct fm_source_file *v = realloc(s->v, cap * sizeof *v);
    if (!v) {
      close(fd);
      return fm_err_set(s->err, FM_E_NOMEM, "out of memory");
    }
    s->v = v;
    s->cap = cap;
  }
  size_t want = (size_t)st.st_size, got = 0;
  char *data = malloc(want + 1);
  char *name = strdup(rel);
  if (!data || !name) {
    free(data);
    free(name);
    close(fd);
    return fm_err_set(s->err, FM_E_NOMEM, "out of memory");
  }
  while (got < want) { /* a file that shrinks while read is taken as it is now */
    ssize_t r = read(fd, data + got, want - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  data[got] = '\0';
  s->v[s->n++] = (struct fm_source_file){name, data, got};
  s->bytes += got;
  return 0;
}

static int snap_walk(struct snap *s, const char *rel, const char *suffix, int depth) {
  if (depth > MAX_DEPTH) return fm_err_set(s->err, FM_E_INVAL, "%s: directories nested too deep", rel);
  char path[PATH_MAX];
  if (path_join(path, sizeof path, s->home, rel)) return fm_err_set(s->err, FM_E_INVAL, "%s: path too long", rel);
  DIR *d = opendir(path);
  if (!d) return errno == ENOENT || errno == ENOTDIR ? 0 : fm_err_set(s->err, FM_E_IO, "%s: %s", rel, strerror(errno));
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char child[PATH_MAX];
    if (snprintf(child, sizeof child, "%s/%s", rel, e->d_name) >= (int)sizeof child) continue;
    int is_dir = e->d_type == DT_DIR, is_reg = e->d_type == DT_REG;
    if (e->d_type == DT_UNKNOWN || e->d_type == DT_LNK) {
      struct stat st;
      char full[PATH_MAX];
      if (path_join(full, sizeof full, s->home, child) || stat(full, &st) != 0) continue;
      is_dir = S_ISDIR(st.st_mode);
      is_reg = S_ISREG(st.st_mode);
    }
    if (is_dir) rc = snap_walk(s, child, suffix, depth + 1);
    else if (is_reg && wanted_name(e->d_name, suffix)) rc = snap_add(s, child);
  }
  closedir(d);
  return rc;
}

static int cmp_file(const void *a, const void *b) {
  return strcmp(((const struct fm_source_file *)a)->path, ((const struct fm_source_file *)b)->path);
}

int fm_snapshot_read(const char *home, struct fm_source_file **files, size_t *n, struct fm_err *err) {
  struct snap s = {.home = home, .err = err};
  int rc = snap_add(&s, "config.lua");
  if (!rc) rc = snap_walk(&s, "lua", ".lua", 0);
  if (!rc) rc = snap_walk(&s, "playbooks", ".lua", 0);
  if (!rc) rc = snap_walk(&s, "migrations", ".sql", 0);
  if (rc) {
    fm_snapshot_free(s.v, s.n);
    return rc;
  }
  if (s.n) qsort(s.v, s.n, sizeof *s.v, cmp_file);
  *files = s.v;
  *n = s.n;
  return 0;
}

void fm_snapshot_free(struct fm_source_file *files, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(files[i].path);
    free(files[i].data);
  }
  free(files);
}

const struct fm_source_file *fm_snapshot_find(const struct fm_source_file *files, size_t n,
                                              const char *path) {
  if (!files || !path) return NULL;
  struct fm_source_file key = {.path = (char *)path};
  return bsearch(&key, files, n, sizeof *files, cmp_file);
}

static int snapshot_equal(const struct fm_gen *a, const struct fm_source_file *v, size_t n) {
  if (!a || a->nfiles != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(a->files[i].path, v[i].path) != 0 || a->files[i].len != v[i].len ||
        memcmp(a->files[i].data, v[i].data, v[i].len) != 0)
      return 0;
  return 1;
}

/* ---- generations --------------------------------------------------------------------------- */

static struct fm_reload_config g_cfg;
static char g_home[PATH_MAX];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;      /* reload thread: work to do */
static pthread_cond_t g_done_cv = PTHREAD_COND_INITIALIZER; /* waiters: an attempt finished */
static struct fm_gen *g_current;
static atomic_long g_number;
static unsigned long g_req_seq, g_done_seq;
static char g_req_reason[64];
static struct fm_reload_outcome g_last;
static int g_have_last, g_failed_since_publish;
static atomic_long g_count_ok, g_count_failed;
static int g_stop, g_thread_started, g_watch_started;
static pthread_t g_thread, g_watch_thread;
static int g_watch_wake[2] = {-1, -1};
static char *g_boot_settings; /* generation 1's settings (JSON): what C took at start */
static char g_log_level[16];  /* log_level of the serving generation's config */

const struct fm_source_file *fm_gen_find(const struct fm_gen *g, const char *path) {
  return g ? fm_snapshot_find(g->files, g->nfiles, path) : NULL;
}

const char *fm_gen_report(const struct fm_gen *g) { return g && g->report_json ? g->report_json : "{}"; }

static void gen_free(struct fm_gen *g) {
  fm_snapshot_free(g->files, g->nfiles);
  free(g->report_json);
  free(g);
}

void fm_gen_release(struct fm_gen *g) {
  if (g && atomic_fetch_sub(&g->refs, 1) == 1) gen_free(g);
}

struct fm_gen *fm_gen_acquire(void) {
  pthread_mutex_lock(&g_mu);
  struct fm_gen *g = g_current;
  if (g) atomic_fetch_add(&g->refs, 1);
  pthread_mutex_unlock(&g_mu);
  return g;
}

long fm_generation(void) { return atomic_load(&g_number); }

const char *fm_reload_boot_settings(void) { return g_boot_settings; }

/* Runs require("fm.selfcheck").run() in the check VM: returns the report JSON or raises. */
static int l_selfcheck(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.selfcheck");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "run");
  lua_call(L, 0, 2);
  return 2;
}

/* "lua/fm/x.lua:12: message" -> file, line, message (the first such location in text). */
static void split_location(const char *text, struct fm_reload_outcome *out) {
  out->file[0] = '\0';
  out->line = 0;
  const char *tb = strstr(text, "\nstack traceback:");
  size_t tlen = tb ? (size_t)(tb - text) : strlen(text);
  snprintf(out->message, sizeof out->message, "%.*s", (int)(tlen < 1000 ? tlen : 1000), text);
  for (const char *p = text; p < text + tlen; p++) {
    if (strncmp(p, ".lua:", 5) != 0 || !(p[5] >= '0' && p[5] <= '9')) continue;
    const char *start = p;
    while (start > text && !strchr(" \t\n'\"", start[-1])) start--;
    size_t flen = (size_t)(p + 4 - start);
    snprintf(out->file, sizeof out->file, "%.*s", (int)(flen < 250 ? flen : 250), start);
    out->line = atoi(p + 5);
    return;
  }
}

static struct fm_routes *routes_from_report(json_t *report, struct fm_err *err) {
  json_t *def = json_object_get(report, "default_max_body");
  struct fm_routes *r = fm_routes_new(json_is_integer(def) ? (size_t)json_integer_value(def) : 1 << 20);
  if (!r) {
    fm_err_set(err, FM_E_NOMEM, "out of memory");
    return NULL;
  }
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(report, "routes"), i, e) {
    const char *m = json_string_value(json_object_get(e, "method"));
    const char *p = json_string_value(json_object_get(e, "pattern"));
    json_t *mb = json_object_get(e, "max_body");
    if (!m || !p || !json_is_integer(mb) ||
        fm_routes_add(r, m, p, (size_t)json_integer_value(mb), err)) {
      if (!err->code) fm_err_set(err, FM_E_INVAL, "selfcheck: malformed route in the report");
      fm_routes_free(r);
      return NULL;
    }
  }
  return r;
}

static void join_strings(json_t *arr, char *out, size_t outsz) {
  out[0] = '\0';
  size_t i, len = 0;
  json_t *e;
  json_array_foreach(arr, i, e) {
    const char *s = json_string_value(e);
    if (!s) continue;
    int n = snprintf(out + len, outsz - len, "%s%s", len ? "," : "", s);
    if (n < 0 || (size_t)n >= outsz - len) break;
    len += (size_t)n;
  }
}

/* Builds a candidate generation from the files now on disk and checks it. On success *out is the
 * candidate (refs 1) and *routes its route table; on failure o says why. Returns 0 when
 * unchanged (*out NULL, o->ok 1). */
static void build(const char *reason, struct fm_gen **out, struct fm_routes **routes,
                  struct fm_reload_outcome *o) {
  struct fm_err err = {0};
  *out = NULL;
  *routes = NULL;
  memset(o, 0, sizeof *o);
  snprintf(o->reason, sizeof o->reason, "%s", reason);
  o->at = fm_time_now();
  struct fm_gen *cand = calloc(1, sizeof *cand);
  if (!cand) {
    snprintf(o->message, sizeof o->message, "out of memory");
    return;
  }
  atomic_init(&cand->refs, 1);
  if (fm_snapshot_read(g_home, &cand->files, &cand->nfiles, &err)) {
    split_location(err.msg, o);
    if (!o->file[0]) snprintf(o->file, sizeof o->file, "%.*s", 250, err.msg);
    gen_free(cand);
    return;
  }
  if (!fm_gen_find(cand, "config.lua")) {
    snprintf(o->file, sizeof o->file, "config.lua");
    snprintf(o->message, sizeof o->message, "config.lua: missing from FM_HOME");
    gen_free(cand);
    return;
  }
  pthread_mutex_lock(&g_mu);
  int same = snapshot_equal(g_current, cand->files, cand->nfiles);
  long cur = g_current ? g_current->number : 0;
  pthread_mutex_unlock(&g_mu);
  if (same) {
    gen_free(cand);
    o->ok = 1;
    o->generation = cur;
    return;
  }

  struct fm_vm_opts vo = g_cfg.vm;
  vo.gen = cand;
  vo.worker_id = -1;
  vo.mode = FM_VM_SERVE;
  struct fm_vm *vm = NULL;
  json_t *report = NULL;
  if (fm_vm_new(&vo, &vm, &err)) goto lua_fail;
  /* Module top levels run under a budget too: a `while true do end` there must not hang the
   * reload thread. */
  fm_vm_begin_request(vm, CHECK_BUDGET);
  lua_pushcfunction(vm->L, l_selfcheck);
  int rc = fm_vm_pcall(vm, 0, 2, &err);
  fm_vm_end_request(vm);
  if (rc) goto lua_fail;
  if (!lua_isstring(vm->L, -2)) { /* nil, {file=, line=, message=} */
    lua_State *L = vm->L;
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "message");
      snprintf(o->message, sizeof o->message, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "self-check failed");
      lua_getfield(L, -2, "file");
      snprintf(o->file, sizeof o->file, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
      lua_getfield(L, -3, "line");
      o->line = (int)lua_tointeger(L, -1);
      lua_pop(L, 3);
    } else {
      snprintf(o->message, sizeof o->message, "self-check failed");
    }
    fm_vm_free(vm);
    gen_free(cand);
    return;
  }
  json_error_t je;
  report = json_loads(lua_tostring(vm->L, -2), 0, &je);
  fm_vm_free(vm);
  vm = NULL;
  if (!json_is_object(report)) {
    snprintf(o->message, sizeof o->message, "selfcheck report is not JSON: %s", je.text);
    json_decref(report);
    gen_free(cand);
    return;
  }
  *routes = routes_from_report(report, &err);
  if (!*routes) {
    snprintf(o->message, sizeof o->message, "%s", err.msg);
    json_decref(report);
    gen_free(cand);
    return;
  }
  join_strings(json_object_get(report, "restart_required"), o->restart_required,
               sizeof o->restart_required);
  cand->report_json = json_dumps(report, JSON_COMPACT);
  if (!g_boot_settings) g_boot_settings = json_dumps(json_object_get(report, "settings"), JSON_COMPACT);
  const char *lv = json_string_value(json_object_get(json_object_get(report, "settings"), "log_level"));
  if (lv && g_log_level[0] && strcmp(lv, g_log_level) != 0) {
    int level = fm_log_parse_level(lv);
    if (level >= 0) fm_log_set_level(level);
  }
  if (lv) snprintf(g_log_level, sizeof g_log_level, "%s", lv);
  json_decref(report);
  o->ok = 1;
  o->changed = 1;
  *out = cand;
  return;

lua_fail:
  split_location(err.msg, o);
  fm_vm_free(vm);
  gen_free(cand);
}

/* Publishes cand as the next generation; workers switch between requests. */
static long publish(struct fm_gen *cand, struct fm_routes *routes) {
  pthread_mutex_lock(&g_mu);
  struct fm_gen *old = g_current;
  cand->number = old ? old->number + 1 : 1;
  g_current = cand;
  atomic_store(&g_number, cand->number);
  g_failed_since_publish = 0;
  pthread_mutex_unlock(&g_mu);
  fm_http_set_routes(routes);
  fm_gen_release(old);
  fm_metrics_set("fm_lua_generation", "", (double)cand->number);
  fm_workers_wake();
  return cand->number;
}

static void log_outcome(const struct fm_reload_outcome *o, size_t nfiles, double ms) {
  char f[2048];
  struct fm_buf b;
  fm_buf_init_with(&b, f, sizeof f);
  fm_buf_adds(&b, "\"reason\":");
  fm_buf_add_json_str(&b, o->reason, strlen(o->reason));
  fm_buf_printf(&b, ",\"generation\":%ld,\"duration_ms\":%.1f", o->generation, ms);
  if (o->ok) {
    if (o->changed) fm_buf_printf(&b, ",\"files\":%zu", nfiles);
    fm_log_fields(FM_LOG_INFO, o->changed ? "reload: new generation published" : "reload: no change",
                  fm_buf_cstr(&b));
    if (o->restart_required[0]) {
      fm_buf_adds(&b, ",\"settings\":");
      fm_buf_add_json_str(&b, o->restart_required, strlen(o->restart_required));
      fm_log_fields(FM_LOG_WARN,
                    "reload: settings changed that apply only after a restart; they keep their values",
                    fm_buf_cstr(&b));
    }
  } else {
    fm_buf_adds(&b, ",\"file\":");
    fm_buf_add_json_str(&b, o->file, strlen(o->file));
    fm_buf_printf(&b, ",\"line\":%d,\"error\":", o->line);
    fm_buf_add_json_str(&b, o->message, strlen(o->message));
    fm_log_fields(FM_LOG_ERROR, "reload failed: the previous generation keeps serving",
                  fm_buf_cstr(&b));
  }
  fm_buf_free(&b);
}

/* One attempt, start to finish; updates g_last and the counters. */
static void attempt(const char *reason, struct fm_reload_outcome *o) {
  double t0 = fm_time_mono();
  struct fm_gen *cand;
  struct fm_routes *routes;
  build(reason, &cand, &routes, o);
  size_t nfiles = cand ? cand->nfiles : 0;
  o->generation = cand ? publish(cand, routes) : fm_generation();
  pthread_mutex_lock(&g_mu);
  g_last = *o;
  g_have_last = 1;
  if (!o->ok) g_failed_since_publish = 1;
  pthread_mutex_unlock(&g_mu);
  if (o->ok) atomic_fetch_add(&g_count_ok, 1);
  else atomic_fetch_add(&g_count_failed, 1);
  fm_metrics_inc("fm_reload_total", o->ok ? (o->changed ? "result=\"ok\"" : "result=\"unchanged\"")
                                           : "result=\"failed\"", 1);
  log_outcome(o, nfiles, (fm_time_mono() - t0) * 1000.0);
}

int fm_reload_init(const struct fm_reload_config *cfg, struct fm_err *err) {
  g_cfg = *cfg;
  snprintf(g_home, sizeof g_home, "%s", cfg->vm.home);
  g_cfg.vm.home = g_home;
  fm_metrics_register("fm_reload_total", FM_METRIC_COUNTER,
                      "Reload attempts of the Lua generation, by result (ok, unchanged, failed).", NULL, 0);
  fm_metrics_register("fm_lua_generation", FM_METRIC_GAUGE,
                      "Number of the Lua generation being served (1 at start).", NULL, 0);
  struct fm_reload_outcome o;
  double t0 = fm_time_mono();
  struct fm_gen *cand;
  struct fm_routes *routes;
  build("start", &cand, &routes, &o);
  if (!cand) {
    if (o.file[0] && !strstr(o.message, o.file))
      return fm_err_set(err, FM_E_LUA, "%s:%d: %s", o.file, o.line, o.message);
    return fm_err_set(err, FM_E_LUA, "%s", o.message);
  }
  o.generation = publish(cand, routes);
  pthread_mutex_lock(&g_mu);
  g_last = o;
  g_have_last = 1;
  pthread_mutex_unlock(&g_mu);
  fm_metrics_inc("fm_reload_total", "result=\"ok\"", 0); /* the series exist from the start */
  fm_metrics_inc("fm_reload_total", "result=\"failed\"", 0);
  fm_metrics_inc("fm_reload_total", "result=\"unchanged\"", 0);
  log_outcome(&o, cand->nfiles, (fm_time_mono() - t0) * 1000.0);
  return 0;
}

/* ---- the reload thread --------------------------------------------------------------------- */

static void *reload_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&g_mu);
  for (;;) {
    while (!g_stop && g_req_seq == g_done_seq) pthread_cond_wait(&g_cv, &g_mu);
    if (g_stop) break;
    unsigned long seq = g_req_seq;
    char reason[64];
    snprintf(reason, sizeof reason, "%s", g_req_reason);
    pthread_mutex_unlock(&g_mu);
    struct fm_reload_outcome o;
    attempt(reason, &o);
    pthread_mutex_lock(&g_mu);
    g_done_seq = seq;
    pthread_cond_broadcast(&g_done_cv);
  }
  pthread_mutex_unlock(&g_mu);
  return NULL;
}

void fm_reload_trigger(const char *reason) {
  pthread_mutex_lock(&g_mu);
  g_req_seq++;
  snprintf(g_req_reason, sizeof g_req_reason, "%s", reason);
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

int fm_reload_run(const char *reason, struct fm_reload_outcome *out) {
  pthread_mutex_lock(&g_mu);
  if (!g_thread_started) {
    pthread_mutex_unlock(&g_mu);
    memset(out, 0, sizeof *out);
    snprintf(out->message, sizeof out->message, "the reload thread is not running");
    return -1;
  }
  unsigned long mine = ++g_req_seq;
  snprintf(g_req_reason, sizeof g_req_reason, "%s", reason);
  pthread_cond_signal(&g_cv);
  /* A build is bounded by its instruction budget; the deadline is a second line of defence
   * (time spent inside one C call is not counted), so a caller is never stuck for good. */
  struct timespec deadline;
  fm_deadline_ts(CLOCK_REALTIME, RUN_WAIT_S, &deadline);
  int timed_out = 0;
  while (g_done_seq < mine && !g_stop && !timed_out)
    timed_out = pthread_cond_timedwait(&g_done_cv, &g_mu, &deadline) == ETIMEDOUT;
  if (g_done_seq >= mine) {
    *out = g_last;
  } else {
    memset(out, 0, sizeof *out);
    snprintf(out->reason, sizeof out->reason, "%s", reason);
    out->generation = fm_generation();
    snprintf(out->message, sizeof out->message, "%s",
             g_stop ? "the engine is stopping" : "the reload is still running after " RUN_WAIT_TEXT);
  }
  pthread_mutex_unlock(&g_mu);
  return out->ok ? 0 : -1;
}

int fm_reload_last(struct fm_reload_outcome *out, int *failed_since_publish) {
  pthread_mutex_lock(&g_mu);
  int have = g_have_last;
  if (have) *out = g_last;
  if (failed_since_publish) *failed_since_publish = g_failed_since_publish;
  pthread_mutex_unlock(&g_mu);
  return have;
}

long fm_reload_count(int ok) { return atomic_load(ok ? &g_count_ok : &g_count_failed); }

/* ---- the inotify watcher ------------------------------------------------------------------- */

#define WATCH_MASK                                                                                 \
  (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF |         \
   IN_MOVE_SELF | IN_ATTRIB)

struct watches {
  int fd;
  int home_wd;
  struct {
    int wd;
    char rel[PATH_MAX]; /* relative to home */
  } *v;
  size_t n, cap;
};

static const char *wd_rel(struct watches *w, int wd) {
  for (size_t i = 0; i < w->n; i++)
    if (w->v[i].wd == wd) return w->v[i].rel;
  return NULL;
}

static void watch_tree(struct watches *w, const char *rel, int depth) {
  if (depth > MAX_DEPTH) return;
  char path[PATH_MAX];
  if (path_join(path, sizeof path, g_home, rel)) return;
  int wd = inotify_add_watch(w->fd, path, WATCH_MASK | IN_ONLYDIR);
  if (wd < 0) {
    if (errno != ENOENT && errno != ENOTDIR)
      fm_warn("reload: cannot watch %s: %s (changes there need SIGHUP)", path, strerror(errno));
    return;
  }
  if (!wd_rel(w, wd)) {
    if (w->n == w->cap) {
      size_t cap = w->cap ? w->cap * 2 : 32;
      void *v = realloc(w->v, cap * sizeof *w->v);
      if (!v) return;
      w->v = v;
      w->cap = cap;
    }
    w->v[w->n].wd = wd;
    snprintf(w->v[w->n].rel, sizeof w->v[w->n].rel, "%s", rel);
    w->n++;
  }
  DIR *d = opendir(path);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char child[PATH_MAX];
    if (snprintf(child, sizeof child, "%s/%s", rel, e->d_name) >= (int)sizeof child) continue;
    char full[PATH_MAX];
    struct stat st;
    if (path_join(full, sizeof full, g_home, child) == 0 && stat(full, &st) == 0 && S_ISDIR(st.st_mode)) watch_tree(w, child, depth + 1);
  }
  closedir(d);
}

static void watch_all(struct watches *w) {
  w->home_wd = inotify_add_watch(w->fd, g_home, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                                   IN_CREATE | IN_DELETE | IN_ATTRIB | IN_ONLYDIR);
  if (w->home_wd < 0) fm_warn("reload: cannot watch %s: %s", g_home, strerror(errno));
  watch_tree(w, "lua", 0);
  watch_tree(w, "playbooks", 0);
}

/* Kubernetes mounts a ConfigMap as symlinks into a hidden "..2026_11_22..." directory and swaps
 * versions by renaming a new "..data" symlink over the old one: such names count. */
static int atomic_writer_name(const char *name) { return name[0] == '.' && name[1] == '.' && name[2]; }

/* Stops watching a directory moved away (and everything below it). */
static void unwatch_tree(struct watches *w, const char *rel) {
  size_t n = strlen(rel);
  for (size_t i = 0; i < w->n;) {
    const char *r = w->v[i].rel;
    if (strncmp(r, rel, n) == 0 && (r[n] == '\0' || r[n] == '/')) {
      inotify_rm_watch(w->fd, w->v[i].wd);
      w->v[i] = w->v[--w->n];
    } else {
      i++;
    }
  }
}

/* Does this event ask for a reload? Adds and removes watches for directories on the way. The
 * snapshot comparison turns a needless trigger into "unchanged", so this errs on the side of
 * reloading. */
static int relevant(struct watches *w, const struct inotify_event *ev) {
  if (ev->mask & IN_Q_OVERFLOW) return 1;
  const char *name = ev->len ? ev->name : "";
  if (ev->wd == w->home_wd) {
    if (strcmp(name, "config.lua") == 0 || atomic_writer_name(name)) return 1;
    if (strcmp(name, "lua") == 0 || strcmp(name, "playbooks") == 0) {
      if (ev->mask & (IN_CREATE | IN_MOVED_TO)) watch_tree(w, name, 0);
      return 1;
    }
    return 0;
  }
  if (ev->mask & IN_IGNORED) { /* the directory is gone; forget its watch */
    for (size_t i = 0; i < w->n; i++)
      if (w->v[i].wd == ev->wd) {
        w->v[i] = w->v[--w->n];
        break;
      }
    return 0;
  }
  if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) return 1;
  const char *rel = wd_rel(w, ev->wd);
  if (!rel) return 0;
  if (atomic_writer_name(name)) return (ev->mask & (IN_CREATE | IN_MOVED_TO | IN_DELETE)) != 0;
  if (name[0] == '.' || name[0] == '#') return 0;
  char child[PATH_MAX];
  if (snprintf(child, sizeof child, "%s/%s", rel, name) >= (int)sizeof child) return 0;
  if (ev->mask & IN_ISDIR) {
    if (ev->mask & (IN_CREATE | IN_MOVED_TO)) watch_tree(w, child, 1);
    if (ev->mask & IN_MOVED_FROM) unwatch_tree(w, child);
    return 1;
  }
  /* a new file, a symlink or a hard link (IN_CREATE), written, renamed in or out, removed */
  return ends_with(name, ".lua");
}

static void *watch_main(void *arg) {
  struct watches *w = arg;
  double first = 0, last = 0;
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  for (;;) {
    int timeout = -1;
    double now = fm_time_mono();
    if (first > 0) {
      double due = last + g_cfg.debounce_ms / 1000.0;
      if (due > first + 2.0) due = first + 2.0; /* a steady stream of writes still reloads */
      timeout = due <= now ? 0 : (int)((due - now) * 1000.0) + 1;
    }
    struct pollfd p[2] = {{.fd = w->fd, .events = POLLIN}, {.fd = g_watch_wake[0], .events = POLLIN}};
    int r = poll(p, 2, timeout);
    if (r < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    now = fm_time_mono();
    if (r > 0 && (p[0].revents & POLLIN)) {
      ssize_t len = read(w->fd, buf, sizeof buf);
      for (char *q = buf; len > 0 && q < buf + len;) {
        const struct inotify_event *ev = (const struct inotify_event *)(void *)q;
        if (ev->mask & IN_Q_OVERFLOW) watch_all(w);
        if (relevant(w, ev)) {
          if (first == 0) first = now;
          last = now;
        }
        q += sizeof *ev + ev->len;
      }
    }
    if (first > 0) {
      double due = last + g_cfg.debounce_ms / 1000.0;
      if (due > first + 2.0) due = first + 2.0;
      if (now >= due) {
        first = last = 0;
        watch_all(w); /* re-points watches at directories a symlink swap replaced */
        fm_reload_trigger("inotify");
      }
    }
  }
  close(w->fd);
  free(w->v);
  free(w);
  return NULL;
}

int fm_reload_start(struct fm_err *err) {
  g_stop = 0;
  if (pthread_create(&g_thread, NULL, reload_main, NULL) != 0)
    return fm_err_set(err, FM_E_IO, "cannot start the reload thread");
  pthread_mutex_lock(&g_mu);
  g_thread_started = 1;
  pthread_mutex_unlock(&g_mu);
  if (!g_cfg.watch) return 0;
  struct watches *w = calloc(1, sizeof *w);
  if (!w || pipe2(g_watch_wake, O_CLOEXEC) != 0) {
    free(w);
    fm_warn("reload: cannot start the file watcher; use SIGHUP or admin.reload()");
    return 0;
  }
  w->fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (w->fd < 0) {
    fm_warn("reload: inotify unavailable (%s); use SIGHUP or admin.reload()", strerror(errno));
    free(w);
    return 0;
  }
  watch_all(w);
  if (pthread_create(&g_watch_thread, NULL, watch_main, w) != 0) {
    close(w->fd);
    free(w->v);
    free(w);
    fm_warn("reload: cannot start the file watcher thread; use SIGHUP or admin.reload()");
    return 0;
  }
  g_watch_started = 1;
  return 0;
}

void fm_reload_stop(void) {
  if (g_watch_started) {
    if (write(g_watch_wake[1], "x", 1) < 0) { /* the watcher exits on any byte */
    }
    pthread_join(g_watch_thread, NULL);
    g_watch_started = 0;
  }
  if (g_watch_wake[0] >= 0) {
    close(g_watch_wake[0]);
    close(g_watch_wake[1]);
    g_watch_wake[0] = g_watch_wake[1] = -1;
  }
  pthread_mutex_lock(&g_mu);
  g_stop = 1;
  pthread_cond_broadcast(&g_cv);
  pthread_cond_broadcast(&g_done_cv);
  int started = g_thread_started;
  g_thread_started = 0;
  pthread_mutex_unlock(&g_mu);
  if (started) pthread_join(g_thread, NULL);
}

void fm_reload_free(void) {
  pthread_mutex_lock(&g_mu);
  struct fm_gen *g = g_current;
  g_current = NULL;
  pthread_mutex_unlock(&g_mu);
  fm_gen_release(g);
  free(g_boot_settings);
  g_boot_settings = NULL;
}
