/* admin.h: the admin REPL inside `faultmaven serve`.
 *
 * admin.c serves a unix socket (FM_ADMIN_SOCKET, default <data>/admin.sock, mode 0600, peers
 * checked with SO_PEERCRED) and writes the audit log (FM_ADMIN_AUDIT_LOG); l_admin.c owns the one
 * admin Lua VM that runs what operators type and the fm.admin_core module. The client,
 * `faultmaven repl` and `faultmaven reload`, is repl.c. The wire protocol is described at the top
 * of admin.c. */
#ifndef FM_ADMIN_H
#define FM_ADMIN_H

#include "buf.h"
#include "err.h"

#include <stdatomic.h>
#include <stddef.h>

struct fm_vm_opts;

/* Largest client frame (the code of one command) and the cap on each text of an answer. */
#define FM_ADMIN_MAX_FRAME (1u << 20)
#define FM_ADMIN_MAX_TEXT (1u << 20)
/* Concurrent sessions; more are answered "too many admin sessions" and closed. */
#define FM_ADMIN_MAX_SESSIONS 8

/* ---- server (admin.c) ---------------------------------------------------------------------- */

/* Starts the admin socket for `faultmaven serve`: builds the admin VM from vm_opts (home, extra
 * path, memory cap; the mode is set to FM_VM_ADMIN), reads admin_socket and admin_audit_log from
 * fm.settings, and listens. Never fails the engine: a problem is logged and the engine serves
 * without the admin socket. */
void fm_admin_start(const struct fm_vm_opts *vm_opts);
/* Closes the socket (and unlinks it), cancels running evaluations, ends the sessions and frees
 * the VM. A no-op when the admin socket is not running. */
void fm_admin_stop(void);

/* ---- the admin VM (l_admin.c) --------------------------------------------------------------- */

enum fm_admin_outcome { FM_ADMIN_OK = 0, FM_ADMIN_ERROR = 1, FM_ADMIN_CANCELLED = 2 };

/* One evaluation. The caller sets code/len/cancel, zero-initialises the rest, and frees the
 * texts with fm_admin_eval_free. */
struct fm_admin_eval {
  const char *code;
  size_t len;
  atomic_int *cancel;  /* non-zero: the count hook raises "cancelled" */
  int outcome;         /* enum fm_admin_outcome */
  int incomplete;      /* the chunk ends early (<eof>): an interactive client reads more */
  int vm_reset;        /* the VM hit its memory cap and was replaced: globals are gone */
  struct fm_buf output; /* what print and io.write wrote (at most FM_ADMIN_MAX_TEXT) */
  struct fm_buf result; /* the values, pretty-printed, tab-separated; empty when none */
  struct fm_buf error;  /* the message (and traceback) when outcome is not OK */
};

struct fm_admin_vm;

/* Builds the admin VM: FM_VM_ADMIN mode, the caller's memory cap, no instruction budget, a count
 * hook that honours eval->cancel, print captured, and the global `admin` = require "fm.admin". */
int fm_admin_vm_new(const struct fm_vm_opts *opts, struct fm_admin_vm **out, struct fm_err *err);
void fm_admin_vm_free(struct fm_admin_vm *a);
/* A string setting of fm.settings (tostring'ed), e.g. "admin_socket". */
int fm_admin_vm_setting(struct fm_admin_vm *a, const char *key, char *out, size_t outsz,
                        struct fm_err *err);
/* Runs code like lua(1)'s REPL: `return <code>` first, else the code as is. One caller at a time. */
void fm_admin_vm_eval(struct fm_admin_vm *a, struct fm_admin_eval *ev);
/* Runs admin.reload_summary() (what `faultmaven reload` asks for): outcome OK or ERROR, the
 * summary text in output. */
void fm_admin_vm_reload(struct fm_admin_vm *a, struct fm_admin_eval *ev);
void fm_admin_eval_free(struct fm_admin_eval *ev);

#endif
