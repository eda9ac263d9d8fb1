/* jobs.c: see jobs.h. */
#include "jobs.h"

#include "log.h"
#include "reload.h"
#include "util.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64

struct runner {
  int index;
  pthread_t thread;
  struct fm_vm *vm;
  struct fm_gen *gen;
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned long wakes; /* under mu: bumped by every wake, so a wake during a poll is not lost */
  int started;         /* threads running */
  atomic_int stopping;
  double poll_s;
  struct fm_vm_opts opts;
  struct runner runners[MAX_THREADS];
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* A VM of the published generation, made again when a newer one is published. */
static int ensure_vm(struct runner *r, struct fm_err *err) {
  long want = fm_generation();
  if (r->vm && r->gen && r->gen->number == want) return 0;
  struct fm_vm_opts o = g.opts;
  o.worker_id = -1;
  o.gen = fm_gen_acquire();
  struct fm_vm *vm = NULL;
  if (fm_vm_new(&o, &vm, err)) {
    fm_gen_release(o.gen);
    return -1;
  }
  fm_vm_free(r->vm);
  if (r->gen) fm_gen_release(r->gen);
  r->vm = vm;
  r->gen = o.gen;
  return 0;
}

/* Calls require("fm.jobs")[fname]() on the runner's VM. Returns 1 when it returned true, 0 when
 * it returned anything else, -1 on an error (logged). */
static int call(struct runner *r, const char *fname) {
  struct fm_err err = {0};
  if (ensure_vm(r, &err)) {
    fm_warn("jobs: cannot build a VM: %s", err.msg);
    return -1;
  }
  lua_State *L = r->vm->L;
  lua_getglobal(L, "require");
  lua_pushstring(L, "fm.jobs");
  if (fm_vm_pcall(r->vm, 1, 1, &err)) goto fail;
  lua_getfield(L, -1, fname);
  lua_remove(L, -2);
  fm_vm_begin_request(r->vm, 0);
  int rc = fm_vm_pcall(r->vm, 0, 1, &err);
  int ran = rc == 0 && lua_toboolean(L, -1);
  if (rc == 0) lua_settop(L, 0);
  if (fm_vm_end_request(r->vm)) { /* memory cap hit: start from a fresh VM next time */
    fm_vm_free(r->vm);
    r->vm = NULL;
  }
  if (rc) goto fail;
  return ran;
fail:
  fm_warn("jobs: fm.jobs.%s failed: %s", fname, err.msg);
  if (r->vm) lua_settop(r->vm->L, 0);
  return -1;
}

static void *main_loop(void *arg) {
  struct runner *r = arg;
  if (r->index == 0) call(r, "startup");
  pthread_mutex_lock(&g.mu);
  while (!atomic_load(&g.stopping)) {
    unsigned long seen = g.wakes;
    pthread_mutex_unlock(&g.mu);
    int ran = call(r, "work_one");
    pthread_mutex_lock(&g.mu);
    if (ran == 1 || g.wakes != seen) continue;
    /* an error (the database is down, say) waits at least a second: no busy loop of warnings */
    double wait = ran < 0 && g.poll_s < 1 ? 1 : g.poll_s;
    struct timespec ts;
    fm_deadline_ts(CLOCK_REALTIME, wait, &ts); /* the condition uses the default clock */
    while (!atomic_load(&g.stopping) && g.wakes == seen &&
           pthread_cond_timedwait(&g.cv, &g.mu, &ts) == 0) {
    }
  }
  pthread_mutex_unlock(&g.mu);
  fm_vm_free(r->vm);
  r->vm = NULL;
  if (r->gen) fm_gen_release(r->gen);
  r->gen = NULL;
  return NULL;
}

void fm_jobs_start(const struct fm_vm_opts *vm_opts, int threads, double poll_s) {
  if (threads <= 0 || g.started) return;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  g.opts = *vm_opts;
  g.opts.gen = NULL;
  g.poll_s = poll_s > 0 ? poll_s : 1;
  atomic_store(&g.stopping, 0);
  for (int i = 0; i < threads; i++) {
    struct runner *r = &g.runners[i];
    memset(r, 0, sizeof *r);
    r->index = i;
    if (pthread_create(&r->thread, NULL, main_loop, r) != 0) {
      fm_warn("jobs: cannot start runner thread %d; background jobs wait for the others", i);
      break;
    }
    g.started++;
  }
}

void fm_jobs_stop(void) {
  if (!g.started) return;
  pthread_mutex_lock(&g.mu);
  atomic_store(&g.stopping, 1);
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  for (int i = 0; i < g.started; i++) pthread_join(g.runners[i].thread, NULL);
  g.started = 0;
}

void fm_jobs_wake(void) {
  pthread_mutex_lock(&g.mu);
  g.wakes++;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
}

int fm_jobs_stopping(void) { return atomic_load(&g.stopping); }

int fm_jobs_threads(void) { return g.started; }
