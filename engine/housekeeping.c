/* housekeeping.c: see housekeeping.h. */
#include "housekeeping.h"

#include "log.h"
#include "metrics.h"
#include "reload.h"
#include "util.h"

#include <lauxlib.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int started, stopping;
  double interval_s;
  struct fm_vm_opts opts;
  struct fm_vm *vm;
  struct fm_gen *gen;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* A VM of the published generation, made again when a newer one is published. */
static int ensure_vm(struct fm_err *err) {
  long want = fm_generation();
  if (g.vm && g.gen && g.gen->number == want) return 0;
  struct fm_vm_opts o = g.opts;
  o.worker_id = -1;
  o.gen = fm_gen_acquire();
  struct fm_vm *vm = NULL;
  if (fm_vm_new(&o, &vm, err)) {
    fm_gen_release(o.gen);
    return -1;
  }
  fm_vm_free(g.vm);
  if (g.gen) fm_gen_release(g.gen);
  g.vm = vm;
  g.gen = o.gen;
  return 0;
}

static void run_once(void) {
  struct fm_err err = {0};
  if (ensure_vm(&err)) {
    fm_warn("housekeeping: cannot build a VM: %s", err.msg);
    fm_metrics_inc("fm_housekeeping_runs_total", "result=\"error\"", 1);
    return;
  }
  lua_State *L = g.vm->L;
  lua_getglobal(L, "require");
  lua_pushstring(L, "fm.housekeeping");
  if (fm_vm_pcall(g.vm, 1, 1, &err)) goto fail;
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  fm_vm_begin_request(g.vm, 0);
  int rc = fm_vm_pcall(g.vm, 0, 0, &err);
  if (fm_vm_end_request(g.vm)) { /* memory cap hit: start from a fresh VM next time */
    fm_vm_free(g.vm);
    g.vm = NULL;
  }
  if (rc) goto fail;
  fm_metrics_inc("fm_housekeeping_runs_total", "result=\"ok\"", 1);
  return;
fail:
  fm_warn("housekeeping: run failed: %s", err.msg);
  fm_metrics_inc("fm_housekeeping_runs_total", "result=\"error\"", 1);
  lua_settop(L, 0);
}

static void *main_loop(void *arg) {
  (void)arg;
  double wait = g.interval_s < 30 ? g.interval_s : 30;
  pthread_mutex_lock(&g.mu);
  while (!g.stopping) {
    struct timespec ts;
    fm_deadline_ts(CLOCK_REALTIME, wait, &ts); /* the condition uses the default clock */
    while (!g.stopping && pthread_cond_timedwait(&g.cv, &g.mu, &ts) == 0) {
    }
    if (g.stopping) break;
    pthread_mutex_unlock(&g.mu);
    run_once();
    pthread_mutex_lock(&g.mu);
    wait = g.interval_s;
  }
  pthread_mutex_unlock(&g.mu);
  fm_vm_free(g.vm);
  g.vm = NULL;
  if (g.gen) fm_gen_release(g.gen);
  g.gen = NULL;
  return NULL;
}

void fm_housekeeping_start(const struct fm_vm_opts *vm_opts, double interval_s) {
  if (interval_s <= 0 || g.started) return;
  fm_metrics_register("fm_housekeeping_runs_total", FM_METRIC_COUNTER,
                      "Housekeeping runs (upload sweeper, expired keys and tokens) by result", NULL, 0);
  g.opts = *vm_opts;
  g.interval_s = interval_s;
  g.stopping = 0;
  if (pthread_create(&g.thread, NULL, main_loop, NULL) != 0) {
    fm_warn("housekeeping: cannot start its thread; stored objects no row names are not swept");
    return;
  }
  g.started = 1;
}

void fm_housekeeping_stop(void) {
  if (!g.started) return;
  pthread_mutex_lock(&g.mu);
  g.stopping = 1;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  pthread_join(g.thread, NULL);
  g.started = 0;
}
