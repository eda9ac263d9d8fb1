#include "worker.h"

#include "log.h"
#include "metrics.h"
#include "reload.h"
#include "state.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fm_state fm_state;

struct worker {
  pthread_t thread;
  int id;
  struct fm_vm *vm;
  int handle_ref;
  struct fm_gen *gen;  /* the generation its VM was made from (a reference) */
  long failed_gen;     /* a generation this worker could not load; not retried */
  int started;
  char label[32]; /* worker="N" for the per-worker metrics */
  atomic_size_t lua_memory; /* after its last request, sampled by the metrics collector */
  struct fm_err err;
};

static struct fm_workers_config g_cfg;
static struct worker *g_workers;
static int g_nworkers;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_started_cv = PTHREAD_COND_INITIALIZER;
static struct fm_request *g_head, *g_tail;
static int g_stopping;
static int g_nstarted, g_nfailed;

static int l_require_app(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.app");
  lua_call(L, 1, 1);
  if (!lua_istable(L, -1)) return luaL_error(L, "fm.app must return a table");
  lua_getfield(L, -1, "handle");
  if (!lua_isfunction(L, -1)) return luaL_error(L, "fm.app.handle must be a function");
  return 1;
}

int fm_app_load(struct fm_vm *vm, int *handle_ref, struct fm_err *err) {
  lua_pushcfunction(vm->L, l_require_app);
  if (fm_vm_pcall(vm, 0, 1, err)) return FM_E_LUA;
  *handle_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
  return 0;
}

/* ---- one request through Lua --------------------------------------------------------------- */

static void push_kvs(lua_State *L, const struct fm_kv *v, size_t n) {
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    /* Repeated header or query keys: the first one wins, like most frameworks' get(). */
    lua_getfield(L, -1, v[i].key);
    int present = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (present) continue;
    lua_pushstring(L, v[i].value);
    lua_setfield(L, -2, v[i].key);
  }
}

static void push_parts(lua_State *L, const struct fm_request *req) {
  lua_createtable(L, (int)req->nparts, 0);
  for (size_t i = 0; i < req->nparts; i++) {
    const struct fm_part *p = &req->parts[i];
    lua_createtable(L, 0, 6);
    lua_pushstring(L, p->name);
    lua_setfield(L, -2, "name");
    if (p->filename) {
      lua_pushstring(L, p->filename);
      lua_setfield(L, -2, "filename");
    }
    if (p->content_type) {
      lua_pushstring(L, p->content_type);
      lua_setfield(L, -2, "content_type");
    }
    lua_pushinteger(L, (lua_Integer)p->size);
    lua_setfield(L, -2, "size");
    if (p->path) {
      lua_pushstring(L, p->path);
      lua_setfield(L, -2, "file");
    } else {
      lua_pushlstring(L, p->mem.p ? p->mem.p : "", p->mem.len);
      lua_setfield(L, -2, "value");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* Runs protected: builds the request table, calls app.handle, copies the results back. */
static int l_run_request(lua_State *L) {
  struct fm_request *req = lua_touserdata(L, 1);
  int handle_ref = (int)lua_tointeger(L, 2);
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, handle_ref);
  lua_createtable(L, 0, 12);
  lua_pushstring(L, req->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, req->path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, req->request_id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, req->remote_addr);
  lua_setfield(L, -2, "remote_addr");
  push_kvs(L, req->headers, req->nheaders);
  lua_setfield(L, -2, "headers");
  push_kvs(L, req->query, req->nquery);
  lua_setfield(L, -2, "query");
  if (req->body.len) {
    lua_pushlstring(L, req->body.p, req->body.len);
    lua_setfield(L, -2, "body");
  }
  if (req->multipart) {
    push_parts(L, req);
    lua_setfield(L, -2, "form");
  }
  lua_pushinteger(L, (lua_Integer)req->max_body);
  lua_setfield(L, -2, "max_body");
  lua_call(L, 1, 4);

  int isnum;
  lua_Integer status = lua_tointegerx(L, 1, &isnum);
  if (!isnum || status < 200 || status > 599) /* a 1xx would leave the client waiting */
    return luaL_error(L, "fm.app.handle returned an invalid status (%s)", luaL_tolstring(L, 1, NULL));
  req->status = (int)status;
  if (lua_istable(L, 2)) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        lua_pushvalue(L, -1); /* tostring on a copy keeps lua_next's key intact */
        const char *v = lua_tostring(L, -1);
        if (fm_request_add_header(req, lua_tostring(L, -3), v)) return luaL_error(L, "out of memory");
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  struct fm_resp_stream *stream = luaL_testudata(L, 3, FM_RESP_STREAM_MT);
  if (stream) { /* a streamed body (fm.storage.response): http.c owns it from here on */
    if (stream->fd < 0 && !stream->read)
      return luaL_error(L, "a response stream was returned twice, or after it was closed");
    req->resp_stream = *stream;
    req->has_stream = 1;
    stream->fd = -1;
    stream->read = NULL;
    stream->close = NULL;
    stream->ud = NULL;
  } else if (lua_type(L, 3) == LUA_TSTRING) {
    size_t blen = 0;
    const char *body = lua_tolstring(L, 3, &blen);
    if (fm_buf_add(&req->resp_body, body, blen)) return luaL_error(L, "out of memory");
  }
  const char *route = lua_tostring(L, 4);
  snprintf(req->resp_route, sizeof req->resp_route, "%s", route ? route : "unmatched");
  return 0;
}

/* Metrics collector: gauges sampled when /metrics is scraped, not on every request. */
static void collect_gauges(void) {
  fm_metrics_set("fm_workers_busy", "", (double)atomic_load(&fm_state.busy));
  pthread_mutex_lock(&g_mu); /* the worker array is stable while g_mu is held */
  for (int i = 0; i < g_nworkers; i++)
    if (g_workers[i].started)
      fm_metrics_set("fm_lua_memory_bytes", g_workers[i].label,
                     (double)atomic_load(&g_workers[i].lua_memory));
  pthread_mutex_unlock(&g_mu);
}

/* A new VM from the published generation into w (w->vm, w->handle_ref, w->gen). */
static int make_vm(struct worker *w, struct fm_err *err) {
  struct fm_vm_opts o = g_cfg.vm;
  o.worker_id = w->id;
  o.gen = fm_gen_acquire();
  if (fm_vm_new(&o, &w->vm, err)) {
    fm_gen_release(o.gen);
    return FM_E_LUA;
  }
  if (fm_app_load(w->vm, &w->handle_ref, err)) {
    fm_vm_free(w->vm);
    w->vm = NULL;
    fm_gen_release(o.gen);
    return FM_E_LUA;
  }
  w->gen = o.gen;
  return 0;
}

/* Replaces the worker's VM with a new one; on failure keeps the old one (and returns nonzero). */
static int replace_vm(struct worker *w, const char *why) {
  struct fm_vm *old = w->vm;
  int old_ref = w->handle_ref;
  struct fm_gen *old_gen = w->gen;
  struct fm_err e = {0};
  if (make_vm(w, &e)) {
    /* Keep serving on the old VM rather than lose the worker (the host may be short of memory). */
    fm_error("worker %d: cannot build a new VM (%s), keeping the old one: %s", w->id, why, e.msg);
    w->vm = old;
    w->handle_ref = old_ref;
    w->gen = old_gen;
    return -1;
  }
  fm_vm_free(old);
  fm_gen_release(old_gen);
  atomic_store(&w->lua_memory, w->vm->mem_used);
  return 0;
}

static long vm_gen(const struct worker *w) { return w->gen ? w->gen->number : 0; }

/* Should this worker switch to the published generation now? (Called with g_mu held.) */
static int gen_stale(const struct worker *w) {
  long g = fm_generation();
  return g != vm_gen(w) && g != w->failed_gen;
}

static void run_one(struct worker *w, struct fm_request *req) {
  struct fm_err err = {0};
  /* A copy: once fm_http_finish hands the request back, the I/O thread may free it. */
  char request_id[sizeof req->request_id];
  memcpy(request_id, req->request_id, sizeof request_id);
  fm_log_set_request_id(request_id);
  fm_vm_begin_request(w->vm, g_cfg.budget);
  lua_pushcfunction(w->vm->L, l_run_request);
  lua_pushlightuserdata(w->vm->L, req);
  lua_pushinteger(w->vm->L, w->handle_ref);
  int rc = fm_vm_pcall(w->vm, 2, 0, &err);
  int aborted = w->vm->abort;
  int replace = fm_vm_end_request(w->vm);
  if (rc) {
    snprintf(req->resp_route, sizeof req->resp_route, "%s", req->route ? req->route : "unmatched");
    if (aborted == FM_VM_ABORT_BUDGET) {
      fm_log_fields(FM_LOG_ERROR, "request exceeded its instruction budget", NULL);
      fm_request_set_error(req, 500, "request exceeded its instruction budget");
    } else if (aborted == FM_VM_ABORT_MEMORY) {
      fm_log_fields(FM_LOG_ERROR, "request exceeded the Lua memory limit", NULL);
      fm_request_set_error(req, 503, "request exceeded the Lua memory limit");
    } else {
      struct fm_buf f = {0};
      fm_buf_adds(&f, "\"error\":");
      fm_buf_add_json_str(&f, err.msg, strlen(err.msg));
      fm_log_fields(FM_LOG_ERROR, "unhandled error in request", fm_buf_cstr(&f));
      fm_buf_free(&f);
      fm_request_set_error(req, 500, "internal error");
    }
  }
  atomic_store(&w->lua_memory, w->vm->mem_used);
  atomic_fetch_add(&fm_state.requests, 1);
  fm_http_finish(req); /* req belongs to the I/O thread from here on */
  if (replace) {
    fm_warn("worker %d: Lua memory still %zu bytes after a full GC, replacing its VM", w->id,
            w->vm->mem_used);
    if (replace_vm(w, "memory") == 0) atomic_fetch_add(&fm_state.vm_restarts, 1);
  }
  fm_log_set_request_id(NULL);
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  int rc = make_vm(w, &w->err);
  pthread_mutex_lock(&g_mu);
  if (rc) g_nfailed++;
  else g_nstarted++;
  pthread_cond_broadcast(&g_started_cv);
  pthread_mutex_unlock(&g_mu);
  if (rc) return NULL;
  atomic_store(&w->lua_memory, w->vm->mem_used);

  for (;;) {
    pthread_mutex_lock(&g_mu);
    while (!g_head && !g_stopping && !gen_stale(w)) pthread_cond_wait(&g_cv, &g_mu);
    if (gen_stale(w) && !g_stopping) { /* between two requests: switch generations */
      long target = fm_generation();
      pthread_mutex_unlock(&g_mu);
      if (replace_vm(w, "new generation")) w->failed_gen = target;
      else fm_debug("worker %d: now on generation %ld", w->id, vm_gen(w));
      continue;
    }
    struct fm_request *req = g_head;
    if (!req) { /* stopping and the queue is empty */
      pthread_mutex_unlock(&g_mu);
      break;
    }
    g_head = req->next;
    if (!g_head) g_tail = NULL;
    req->next = NULL;
    atomic_fetch_sub(&fm_state.queued, 1);
    atomic_fetch_add(&fm_state.busy, 1);
    pthread_mutex_unlock(&g_mu);
    run_one(w, req);
    atomic_fetch_sub(&fm_state.busy, 1);
  }
  fm_vm_free(w->vm);
  w->vm = NULL;
  fm_gen_release(w->gen);
  w->gen = NULL;
  return NULL;
}

void fm_workers_wake(void) {
  pthread_mutex_lock(&g_mu);
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

void fm_workers_dispatch(struct fm_request *req, void *ud) {
  (void)ud;
  pthread_mutex_lock(&g_mu);
  req->next = NULL;
  if (g_tail) g_tail->next = req;
  else g_head = req;
  g_tail = req;
  atomic_fetch_add(&fm_state.queued, 1);
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

int fm_workers_start(const struct fm_workers_config *cfg, struct fm_err *err) {
  if (cfg->count < 1) return fm_err_set(err, FM_E_INVAL, "FM_WORKERS: must be >= 1");
  g_cfg = *cfg;
  g_workers = calloc((size_t)cfg->count, sizeof *g_workers);
  if (!g_workers) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  g_nworkers = cfg->count;
  g_stopping = 0;
  g_nstarted = g_nfailed = 0;
  int spawned = 0;
  for (int i = 0; i < cfg->count; i++) {
    g_workers[i].id = i;
    snprintf(g_workers[i].label, sizeof g_workers[i].label, "worker=\"%d\"", i);
    if (pthread_create(&g_workers[i].thread, NULL, worker_main, &g_workers[i]) != 0) break;
    g_workers[i].started = 1;
    spawned++;
  }
  pthread_mutex_lock(&g_mu);
  while (g_nstarted + g_nfailed < spawned) pthread_cond_wait(&g_started_cv, &g_mu);
  int failed = g_nfailed || spawned < cfg->count;
  pthread_mutex_unlock(&g_mu);
  if (!failed) fm_metrics_set_collector(collect_gauges);
  if (failed) {
    for (int i = 0; i < spawned; i++)
      if (g_workers[i].err.code) {
        fm_err_set(err, FM_E_LUA, "worker %d: %s", i, g_workers[i].err.msg);
        break;
      }
    if (spawned < cfg->count) fm_err_set(err, FM_E_IO, "cannot create worker threads");
    fm_workers_stop();
    return err ? err->code : FM_E_LUA;
  }
  return 0;
}

void fm_workers_stop(void) {
  fm_metrics_set_collector(NULL);
  pthread_mutex_lock(&g_mu);
  g_stopping = 1;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  for (int i = 0; i < g_nworkers; i++)
    if (g_workers[i].started) pthread_join(g_workers[i].thread, NULL);
  pthread_mutex_lock(&g_mu); /* a scrape already inside collect_gauges holds g_mu */
  free(g_workers);
  g_workers = NULL;
  g_nworkers = 0;
  pthread_mutex_unlock(&g_mu);
}
