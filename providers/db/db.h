/* db.h: the database provider layer. One driver table (struct fm_db_driver) with one .c per
 * provider (sqlite.c, postgres.c), the pieces every driver shares (db.c: DATABASE_URL parsing,
 * the `?` placeholder scanner and its rewrite to $1..$n, query results), and a thread-safe
 * connection pool (pool.c). The Lua binding is l_db.c (fm.db).
 *
 * SQL is written once for both databases: `?` placeholders (outside string literals, quoted
 * identifiers and comments), RETURNING, times as ISO-8601 UTC text written by Lua. See
 * docs/DATABASE.md. */
#ifndef FM_DB_H
#define FM_DB_H

#include "buf.h"
#include "err.h"

#include <limits.h>
#include <stddef.h>

enum fm_db_backend { FM_DB_SQLITE = 1, FM_DB_POSTGRES = 2 };

/* ---- DATABASE_URL -------------------------------------------------------------------------- */

#define FM_DB_URL_MAX 2048

/* A parsed DATABASE_URL. */
struct fm_db_url {
  enum fm_db_backend backend;
  char path[PATH_MAX];          /* sqlite: absolute file path */
  char conninfo[FM_DB_URL_MAX]; /* postgres: the libpq URI (postgresql://...) */
  char display[FM_DB_URL_MAX];  /* the URL with its password masked, for logs and errors */
  int statement_timeout_ms;     /* postgres: statement_timeout of every session, 0 = none */
};

/* Parses DATABASE_URL:
 *   sqlite:///rel/path, sqlite:///./rel/path   relative to the current directory
 *   sqlite:////abs/path                        absolute (SQLAlchemy's rule: the path is what
 *                                              follows the third slash)
 *   postgresql://user:pass@host:port/db?sslmode=..., postgres://...
 * A `+driver` suffix of the scheme (sqlite+aiosqlite, postgresql+asyncpg) is dropped; asyncpg's
 * `ssl=` query parameter becomes libpq's `sslmode=`. The PostgreSQL URI is checked by libpq's own
 * parser (no connection is made). Returns 0, or FM_E_INVAL with a message that never holds the
 * password. */
int fm_db_url_parse(const char *url, struct fm_db_url *out, struct fm_err *err);
/* Writes url with the password of its userinfo and any password= query parameter replaced by
 * "****" (always NUL-terminated, truncated to outsz). */
void fm_db_url_mask(const char *url, char *out, size_t outsz);

/* ---- placeholders -------------------------------------------------------------------------- */

/* Scans sql for `?` placeholders outside '...' literals (with '' and, for E'...', backslash
 * escapes), "..." identifiers, -- and block comments (nested on PostgreSQL); on SQLite also [...] and
 * `...` identifiers. With `out` (PostgreSQL) writes the SQL with the placeholders numbered $1..$n.
 * Sets *nparams and *multi (1 when a statement follows a top-level `;`). Returns 0, or FM_E_INVAL
 * (misuse: ?1, $1 placeholders, a NUL byte, an unterminated literal) with err set. */
int fm_db_scan_sql(const char *sql, size_t len, enum fm_db_backend dialect, struct fm_buf *out,
                   int *nparams, int *multi, struct fm_err *err);
/* True when sql holds only blanks and comments. */
int fm_db_sql_blank(const char *sql, size_t len);
/* True when the first keyword of sql (after blanks and comments) is `word` (any case). */
int fm_db_sql_starts_with(const char *sql, size_t len, const char *word);

/* ---- values and results -------------------------------------------------------------------- */

enum fm_db_type { FM_DB_NULL = 0, FM_DB_INT, FM_DB_FLOAT, FM_DB_TEXT, FM_DB_BOOL };

/* A bound parameter. TEXT is borrowed for the call (binary-safe on SQLite). */
struct fm_db_value {
  enum fm_db_type type;
  long long i; /* INT, BOOL (0/1) */
  double d;
  const char *s;
  size_t n;
};

/* A result cell; TEXT bytes live in the result's text buffer at [off, off+len). */
struct fm_db_cell {
  enum fm_db_type type;
  long long i;
  double d;
  size_t off, len;
};

/* What a statement gave back: column names, rows (nrows x ncols cells), rows changed, and
 * last_id (the first column of the first row when rows came back; SQLite's rowid after an INSERT
 * without RETURNING). Zero-init, then fm_db_result_free. */
struct fm_db_result {
  int ncols;
  size_t nrows;
  struct fm_db_cell *cols;  /* ncols names (TEXT cells) */
  struct fm_db_cell *cells; /* nrows * ncols */
  size_t cap;               /* cells allocated */
  struct fm_buf text;
  long long changes;
  int has_last_id;
  struct fm_db_cell last_id;
  size_t max_bytes; /* 0 = no limit; else exceeding it fails the statement (54000) */
};

void fm_db_result_free(struct fm_db_result *r);
/* Drops rows and columns (a script's earlier statements), keeping the buffers. */
void fm_db_result_clear(struct fm_db_result *r);
/* Declares ncols columns; names are added with fm_db_result_set_col. 0 or FM_E_NOMEM. */
int fm_db_result_columns(struct fm_db_result *r, int ncols);
int fm_db_result_set_col(struct fm_db_result *r, int col, const char *name, size_t n);
/* Appends a row of NULL cells and returns it (ncols cells), or NULL (out of memory or over
 * max_bytes: *toobig tells which). */
struct fm_db_cell *fm_db_result_add_row(struct fm_db_result *r, int *toobig);
/* Stores text in a cell. 0, FM_E_NOMEM or FM_E_TOOBIG. */
int fm_db_result_set_text(struct fm_db_result *r, struct fm_db_cell *c, const char *s, size_t n);
/* The bytes of a TEXT cell. */
const char *fm_db_result_text(const struct fm_db_result *r, const struct fm_db_cell *c);

/* ---- errors -------------------------------------------------------------------------------- */

/* A failed call. misuse: the caller's mistake (fm.db raises); otherwise a failure of the world
 * (fm.db returns nil, msg, sqlstate). conn_lost: the connection cannot be used again. */
struct fm_db_error {
  int misuse;
  int conn_lost;
  char sqlstate[6]; /* PostgreSQL's SQLSTATE; on SQLite a mapped one (23505, 23503, 40001...) */
  char msg[512];
};

int fm_db_fail(struct fm_db_error *e, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int fm_db_misuse(struct fm_db_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- drivers ------------------------------------------------------------------------------- */

struct fm_db_conn; /* a driver's connection; used by one thread at a time */

/* Every call returns 0, or -1 with e set. */
struct fm_db_driver {
  const char *name; /* "sqlite" | "postgres" (fm.db.dialect()) */
  int (*connect)(const struct fm_db_url *url, double timeout_s, struct fm_db_conn **out,
                 struct fm_db_error *e);
  void (*close)(struct fm_db_conn *c);
  /* A round trip (SELECT 1). */
  int (*ping)(struct fm_db_conn *c, struct fm_db_error *e);
  /* Cheap check before a pooled connection is reused (no round trip): 0 when it is gone. */
  int (*alive)(struct fm_db_conn *c);
  /* Runs sql with nparams bound values (the count was checked against the `?`). Without
   * parameters sql may hold several statements; rows come from the last one. */
  int (*exec)(struct fm_db_conn *c, const char *sql, size_t len, const struct fm_db_value *params,
              int nparams, struct fm_db_result *res, struct fm_db_error *e);
  int (*begin)(struct fm_db_conn *c, struct fm_db_error *e);
  int (*commit)(struct fm_db_conn *c, struct fm_db_error *e);
  int (*rollback)(struct fm_db_conn *c, struct fm_db_error *e);
  /* Before a connection goes back to the pool: ends a transaction left open. 0 when the
   * connection is usable, -1 when it must be closed. */
  int (*reset)(struct fm_db_conn *c);
};

extern const struct fm_db_driver fm_db_sqlite_driver;
extern const struct fm_db_driver fm_db_postgres_driver;
const struct fm_db_driver *fm_db_driver_for(enum fm_db_backend b);

/* ---- pool ---------------------------------------------------------------------------------- */

struct fm_db_pool_config {
  struct fm_db_url url;
  int size;                 /* connections at most (opened on demand; one at open) */
  double acquire_timeout_s; /* waiting for a free connection: then "database pool exhausted" */
  double connect_budget_s;  /* fm_db_pool_open: retry the first connection this long */
};

struct fm_db_pool;
struct fm_db_slot; /* one pooled connection, lent by fm_db_pool_acquire */

struct fm_db_stats {
  int size, open, in_use, waiting;
  long long acquired, timeouts, reconnects;
};

/* Opens a pool and its first connection, retrying with exponential backoff and jitter for
 * connect_budget_s (each failed attempt is logged). 0 and *out, or an error (FM_E_CONNECT) that
 * names the database (password masked) and the last failure. */
int fm_db_pool_open(const struct fm_db_pool_config *cfg, struct fm_db_pool **out,
                    struct fm_err *err);
/* Closes every connection and frees the pool; no connection may be lent. NULL is a no-op. */
void fm_db_pool_close(struct fm_db_pool *p);
/* Lends a connection, waiting up to timeout_s (< 0: the pool's timeout). A connection that was
 * lost is reopened here (one attempt and one quick retry). 0 and *out, or -1 with e set
 * ("database pool exhausted" 53300, "database unavailable" 08001). */
int fm_db_pool_acquire(struct fm_db_pool *p, double timeout_s, struct fm_db_slot **out,
                       struct fm_db_error *e);
/* Gives a connection back (reset first: a transaction left open is rolled back; a connection
 * that failed at the connection level is closed and reopened by a later acquire). */
void fm_db_pool_release(struct fm_db_pool *p, struct fm_db_slot *s);
const struct fm_db_driver *fm_db_pool_driver(const struct fm_db_pool *p);
const struct fm_db_pool_config *fm_db_pool_config(const struct fm_db_pool *p);
void fm_db_pool_stats(struct fm_db_pool *p, struct fm_db_stats *out);

/* On a lent connection: the driver call, with the placeholder count checked and a connection
 * error marking the slot for reconnection. */
int fm_db_slot_exec(struct fm_db_slot *s, const char *sql, size_t len,
                    const struct fm_db_value *params, int nparams, struct fm_db_result *res,
                    struct fm_db_error *e);
int fm_db_slot_ping(struct fm_db_slot *s, struct fm_db_error *e);
int fm_db_slot_begin(struct fm_db_slot *s, struct fm_db_error *e);
int fm_db_slot_commit(struct fm_db_slot *s, struct fm_db_error *e);
int fm_db_slot_rollback(struct fm_db_slot *s, struct fm_db_error *e);

/* The process's pool: opened by `faultmaven serve` before the workers start, closed after they
 * stop; in `faultmaven exec`, opened by fm.db on first use. fm_db_global_set closes the previous
 * one (none of its connections may be lent). */
struct fm_db_pool *fm_db_global(void);
void fm_db_global_set(struct fm_db_pool *p);
void fm_db_global_close(void);

#endif
