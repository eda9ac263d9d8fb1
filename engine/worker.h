/* worker.h: the Lua worker pool. Each worker thread owns one VM and runs fm.app.handle for one
 * request at a time. Between two requests a worker replaces its VM when a new Lua generation was
 * published (reload.h), or when the VM stayed above half its memory cap. */
#ifndef FM_WORKER_H
#define FM_WORKER_H

#include "err.h"
#include "http.h"
#include "vm.h"

#include <stdint.h>

struct fm_workers_config {
  int count;
  struct fm_vm_opts vm;   /* copied per worker; worker_id is set by the pool */
  uint64_t budget;        /* instructions per request, 0 = unlimited */
};

/* Loads the application (require "fm.app") into vm and leaves a registry reference to
 * app.handle in *handle_ref. Returns 0 or FM_E_LUA with the Lua traceback in err. */
int fm_app_load(struct fm_vm *vm, int *handle_ref, struct fm_err *err);

/* Starts the workers and waits until each has loaded the application. On failure none remain. */
int fm_workers_start(const struct fm_workers_config *cfg, struct fm_err *err);
/* fm_http_dispatch_fn: queues a request for the next free worker. */
void fm_workers_dispatch(struct fm_request *req, void *ud);
/* Wakes idle workers so they switch to a newly published generation before the next request. */
void fm_workers_wake(void);
/* Lets the workers finish the queue, then joins them and frees their VMs. */
void fm_workers_stop(void);

#endif
