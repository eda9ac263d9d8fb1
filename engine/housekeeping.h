/* housekeeping.h: a background thread that runs fm.housekeeping.run() every interval on its own
 * VM of the published generation (rebuilt when the generation changes): the upload sweeper and
 * the removal of expired idempotency keys and refresh tokens. Each replica runs it; every task
 * is safe to run on several replicas at once. */
#ifndef FM_HOUSEKEEPING_H
#define FM_HOUSEKEEPING_H

#include "vm.h"

/* Starts the thread (interval_s <= 0: does nothing). The first run is after min(interval, 30 s).
 * A failure to start is logged; serving goes on. */
void fm_housekeeping_start(const struct fm_vm_opts *vm_opts, double interval_s);
/* Stops the thread, waiting for a run in progress to end. */
void fm_housekeeping_stop(void);

#endif
