/* repl.h: `faultmaven repl` and `faultmaven reload`, the clients of the admin socket that
 * `faultmaven serve` runs (admin.c describes the protocol). */
#ifndef FM_REPL_H
#define FM_REPL_H

struct fm_repl_opts {
  const char *socket; /* --socket; else the caller resolves admin_socket from the settings */
  const char *code;   /* -e CODE */
  int reload;         /* `faultmaven reload`: run admin.reload() and report */
};

/* Parses the options after the command, argv[first..]: --socket PATH, -e CODE (repl only), and
 * --data-dir DIR / --home DIR, exported as FM_DATA_DIR / FM_HOME so the settings resolve like
 * serve's. Returns 0, or 2 after printing why. */
int fm_repl_parse_args(int argc, char **argv, int first, struct fm_repl_opts *o);

/* Connects and runs: -e CODE, else stdin as one script when it is not a terminal, else the
 * interactive REPL (libedit, history in ~/.faultmaven_history); or the reload. Returns the exit
 * status: 0, or 1 on an error (of the code, the connection, or the reload). */
int fm_repl_run(const struct fm_repl_opts *o);

#endif
