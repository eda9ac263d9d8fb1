/* jobs.h: the background jobs runner. FM_JOB_WORKERS threads, each with its own VM of the
 * published generation (rebuilt when a newer one is published), call
 * require("fm.jobs").work_one() in a loop: at once again after a job ran, else after
 * FM_JOB_POLL_MS or as soon as fm_jobs_wake() is called (an enqueue in this process). The first
 * thread runs require("fm.jobs").startup() once (recovery after a crash). The jobs themselves
 * live in the database (fm.jobs), so any number of engines may run this against one database. */
#ifndef FM_JOBS_H
#define FM_JOBS_H

#include "vm.h"

/* Starts `threads` runner threads (threads <= 0: does nothing). vm_opts is copied; its gen
 * field is ignored (each thread takes the published generation). A thread that cannot start is
 * logged; serving goes on. Not thread-safe: call from the main thread. */
void fm_jobs_start(const struct fm_vm_opts *vm_opts, int threads, double poll_s);
/* Asks the threads to stop and waits for each to finish its current job. Idempotent. */
void fm_jobs_stop(void);
/* Wakes idle runner threads at once (thread-safe; a no-op when the runner is not started). */
void fm_jobs_wake(void);
/* 1 once fm_jobs_stop was called: a long job may give up and be queued again. Thread-safe. */
int fm_jobs_stopping(void);
/* Runner threads started. */
int fm_jobs_threads(void);

#endif
