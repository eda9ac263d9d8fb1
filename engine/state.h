/* state.h: process-wide facts that Lua may read through fm.engine (set once at start, then
 * read-only, except the atomic counters). */
#ifndef FM_STATE_H
#define FM_STATE_H

#include <stdatomic.h>

struct fm_state {
  double started_at;    /* wall clock */
  double started_mono;  /* monotonic */
  int workers;
  int io_threads;
  char host[256];
  int port;
  char home[4096];
  char data_dir[4096];
  atomic_int busy;        /* workers running a request */
  atomic_int queued;      /* requests waiting for a worker */
  atomic_llong requests;  /* requests handled by workers */
  atomic_int vm_restarts; /* VMs replaced after hitting the memory cap */
};

extern struct fm_state fm_state;

#endif
