/* reload.h: Lua generations and hot reload.
 *
 * A generation is one consistent load of config.lua, lua/ and playbooks/ under FM_HOME: the
 * reload thread reads every *.lua file of those trees into memory (the snapshot), builds a fresh
 * VM from that snapshot and runs the self-check (lua/fm/selfcheck.lua: config validates, every
 * route resolves to a function, every playbook validates). Only then is the generation published.
 * Workers load their VMs from the published snapshot between two requests, so every worker runs
 * exactly the bytes that were checked, even if the files change again meanwhile.
 *
 * Triggers: inotify on the three trees (debounced), SIGHUP, admin.reload() in the REPL (and
 * `faultmaven reload`, which runs admin.reload() over the admin socket). */
#ifndef FM_RELOAD_H
#define FM_RELOAD_H

#include "err.h"
#include "vm.h"

#include <stdatomic.h>
#include <stddef.h>

struct fm_source_file {
  char *path; /* relative to FM_HOME: "config.lua", "lua/fm/app.lua", "playbooks/disk.lua" */
  char *data;
  size_t len;
};

/* One generation. Immutable once published; shared by the workers that run it. */
struct fm_gen {
  long number;
  atomic_int refs;
  struct fm_source_file *files; /* sorted by path */
  size_t nfiles;
  char *report_json;            /* selfcheck report: {"routes":[...],"playbooks":[...],...} */
};

struct fm_reload_config {
  struct fm_vm_opts vm; /* how worker VMs are made (home, extra path, memory cap) */
  int watch;            /* inotify on */
  int debounce_ms;
};

/* The outcome of one reload attempt. */
struct fm_reload_outcome {
  int ok;             /* 1: published or unchanged; 0: build failed, old generation serves */
  int changed;        /* a new generation was published */
  long generation;    /* the generation serving after the attempt */
  char reason[64];    /* what asked for it: "inotify", "SIGHUP", "admin", "start" */
  char file[256];     /* on failure, where (may be empty) */
  int line;
  char message[1024]; /* on failure, what */
  char restart_required[512]; /* comma-separated settings that changed but need a restart */
  double at;          /* wall clock */
};

/* Builds generation 1 synchronously (same self-check as a reload). On failure the engine must
 * not start: err holds "file:line: message". */
int fm_reload_init(const struct fm_reload_config *cfg, struct fm_err *err);
/* Starts the reload thread and, if configured, the inotify watcher. */
int fm_reload_start(struct fm_err *err);
/* Stops both threads (no build starts or runs afterwards). */
void fm_reload_stop(void);
/* Drops the current generation and the start settings: after the workers stopped. */
void fm_reload_free(void);

/* Asks for a reload and returns at once (SIGHUP, inotify). */
void fm_reload_trigger(const char *reason);
/* Asks for a reload and waits for the outcome of an attempt that started after this call. */
int fm_reload_run(const char *reason, struct fm_reload_outcome *out);

/* The published generation number (lock-free). */
long fm_generation(void);
/* The published generation with a reference taken; release with fm_gen_release. Never NULL after
 * fm_reload_init succeeded. */
struct fm_gen *fm_gen_acquire(void);
void fm_gen_release(struct fm_gen *g);
/* A file of a generation's snapshot, or NULL. */
const struct fm_source_file *fm_gen_find(const struct fm_gen *g, const char *path);

/* The last attempt (ok or not) and whether the serving generation is degraded by a failed build
 * since it was published. Returns 0 if no attempt was made since start. */
int fm_reload_last(struct fm_reload_outcome *out, int *failed_since_publish);

/* Reload attempts since start: ok (published or unchanged) or failed. */
long fm_reload_count(int ok);

/* Generation 1's resolved settings as JSON: the values C took at start. NULL before init. */
const char *fm_reload_boot_settings(void);

/* The report of the generation's self-check as JSON text (owned by the generation). */
const char *fm_gen_report(const struct fm_gen *g);

/* Reads config.lua, every *.lua file under lua/ and playbooks/ and every *.sql file under
 * migrations/ in home into a sorted array.
 * Returns 0, or an error naming the file (too large, unreadable, too many files). */
int fm_snapshot_read(const char *home, struct fm_source_file **files, size_t *n, struct fm_err *err);
void fm_snapshot_free(struct fm_source_file *files, size_t n);
/* Binary search in a sorted snapshot. */
const struct fm_source_file *fm_snapshot_find(const struct fm_source_file *files, size_t n,
                                              const char *path);

#endif
