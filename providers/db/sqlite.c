/* sqlite.c: the embedded database driver (sqlite3). One connection per pool slot, opened with
 * SQLITE_OPEN_NOMUTEX (a connection is used by one thread at a time), WAL journal,
 * a busy handler that polls finely for up to 5 s, foreign_keys=ON, synchronous=FULL. Transactions start with BEGIN IMMEDIATE
 * so that a writer waits for the lock up front (busy_timeout) instead of failing when a read
 * transaction would have to upgrade. Errors carry SQLSTATE-like codes mapped from the extended
 * result codes (23505 unique, 23503 foreign key, 40001 busy, ...). */
#include "db.h"

#include "log.h"
#include "util.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUSY_TIMEOUT_MS 5000

struct fm_db_conn {
  sqlite3 *db;
  double busy_since; /* monotonic time of the first busy retry of the current wait */
};

/* Busy handler: SQLite's own (sqlite3_busy_timeout) sleeps in steps that grow to 100 ms, so a
 * writer that finds the lock taken often waits far longer than the holder needs it (bench/db
 * measured a 300 ms p99 for case creates with two workers). This one polls every 0.5 ms, backing
 * off to 2 ms after the first 20 ms, and gives up after BUSY_TIMEOUT_MS. */
static int busy_cb(void *ud, int attempt) {
  struct fm_db_conn *c = ud;
  double now = fm_time_mono();
  if (attempt == 0) c->busy_since = now;
  double waited = now - c->busy_since;
  if (waited * 1000.0 >= BUSY_TIMEOUT_MS) return 0; /* SQLITE_BUSY -> 40001 */
  fm_sleep(waited < 0.02 ? 0.0005 : 0.002);
  return 1;
}

static const char *sqlstate_of(int ext) {
  switch (ext) {
  case SQLITE_CONSTRAINT_UNIQUE:
  case SQLITE_CONSTRAINT_PRIMARYKEY: return "23505";
  case SQLITE_CONSTRAINT_FOREIGNKEY: return "23503";
  case SQLITE_CONSTRAINT_NOTNULL: return "23502";
  case SQLITE_CONSTRAINT_CHECK: return "23514";
  default: break;
  }
  switch (ext & 0xff) {
  case SQLITE_CONSTRAINT: return "23000";
  case SQLITE_BUSY:
  case SQLITE_LOCKED: return "40001";
  case SQLITE_ERROR: return "42000";
  case SQLITE_MISMATCH: return "42804";
  case SQLITE_TOOBIG: return "54000";
  case SQLITE_FULL: return "53100";
  case SQLITE_NOMEM: return "53200";
  case SQLITE_READONLY: return "25006";
  case SQLITE_INTERRUPT: return "57014";
  case SQLITE_CANTOPEN: return "08001";
  case SQLITE_IOERR: return "58030";
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB: return "XX001";
  default: return "58000";
  }
}

/* Errors after which the connection is closed and reopened. */
static int conn_level(int ext) {
  int prim = ext & 0xff;
  return prim == SQLITE_IOERR || prim == SQLITE_CORRUPT || prim == SQLITE_NOTADB ||
         prim == SQLITE_CANTOPEN;
}

static int fail_rc(sqlite3 *db, int rc, struct fm_db_error *e) {
  fm_db_fail(e, sqlstate_of(rc), "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  e->conn_lost = conn_level(rc);
  return -1;
}

static int run_simple(struct fm_db_conn *c, const char *sql, struct fm_db_error *e) {
  int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) return fail_rc(c->db, sqlite3_extended_errcode(c->db), e);
  return 0;
}

static int journal_cb(void *ud, int n, char **vals, char **names) {
  (void)names;
  if (n > 0 && vals[0]) snprintf(ud, 16, "%s", vals[0]);
  return 0;
}

static int sq_connect(const struct fm_db_url *url, double timeout_s, struct fm_db_conn **out,
                      struct fm_db_error *e) {
  (void)timeout_s;
  *out = NULL;
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", url->path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    struct fm_err ferr = {0};
    if (fm_mkdirs(dir, 0750, &ferr)) return fm_db_fail(e, "08001", "%s", ferr.msg);
  }
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(url->path, &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    fm_db_fail(e, "08001", "%s: %s", url->path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return -1;
  }
  sqlite3_extended_result_codes(db, 1);
  struct fm_db_conn *c = calloc(1, sizeof *c);
  if (!c) {
    sqlite3_close_v2(db);
    return fm_db_fail(e, "53200", "out of memory");
  }
  c->db = db;
  sqlite3_busy_handler(db, busy_cb, c);
  char mode[16] = "";
  rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", journal_cb, mode, NULL);
  if (rc != SQLITE_OK || run_simple(c, "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL", e)) {
    if (rc != SQLITE_OK) fail_rc(db, sqlite3_extended_errcode(db), e);
    char m[sizeof e->msg];
    snprintf(m, sizeof m, "%s", e->msg);
    fm_db_fail(e, e->sqlstate, "%s: %s", url->path, m);
    sqlite3_close_v2(db);
    free(c);
    return -1;
  }
  if (strcmp(mode, "wal") != 0)
    fm_warn("database %s: journal mode is '%s', not WAL (the filesystem may not support it)",
            url->path, mode);
  *out = c;
  return 0;
}

static void sq_close(struct fm_db_conn *c) {
  if (!c) return;
  sqlite3_close_v2(c->db);
  free(c);
}

static int sq_alive(struct fm_db_conn *c) { return c && c->db; }

static int sq_ping(struct fm_db_conn *c, struct fm_db_error *e) { return run_simple(c, "SELECT 1", e); }

static int bind_all(sqlite3_stmt *st, const struct fm_db_value *params, int n) {
  for (int i = 0; i < n; i++) {
    const struct fm_db_value *v = &params[i];
    int rc;
    switch (v->type) {
    case FM_DB_INT: rc = sqlite3_bind_int64(st, i + 1, (sqlite3_int64)v->i); break;
    case FM_DB_BOOL: rc = sqlite3_bind_int(st, i + 1, v->i ? 1 : 0); break;
    case FM_DB_FLOAT: rc = sqlite3_bind_double(st, i + 1, v->d); break;
    case FM_DB_TEXT:
      rc = sqlite3_bind_text64(st, i + 1, v->s ? v->s : "", (sqlite3_uint64)v->n, SQLITE_STATIC,
                               SQLITE_UTF8);
      break;
    default: rc = sqlite3_bind_null(st, i + 1); break;
    }
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

/* Copies the current row of st into res. SQLITE_OK, or SQLITE_NOMEM / SQLITE_TOOBIG. */
static int take_row(sqlite3_stmt *st, struct fm_db_result *res) {
  int toobig;
  struct fm_db_cell *row = fm_db_result_add_row(res, &toobig);
  if (!row) return toobig ? SQLITE_TOOBIG : SQLITE_NOMEM;
  for (int i = 0; i < res->ncols; i++) {
    struct fm_db_cell *cell = &row[i];
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
      cell->type = FM_DB_INT;
      cell->i = (long long)sqlite3_column_int64(st, i);
      break;
    case SQLITE_FLOAT:
      cell->type = FM_DB_FLOAT;
      cell->d = sqlite3_column_double(st, i);
      break;
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
      const void *p = sqlite3_column_type(st, i) == SQLITE_TEXT
                          ? (const void *)sqlite3_column_text(st, i)
                          : sqlite3_column_blob(st, i);
      int n = sqlite3_column_bytes(st, i);
      int rc = fm_db_result_set_text(res, cell, p ? p : "", p ? (size_t)n : 0);
      if (rc) return rc == FM_E_TOOBIG ? SQLITE_TOOBIG : SQLITE_NOMEM;
      break;
    }
    default: cell->type = FM_DB_NULL; break;
    }
  }
  return SQLITE_OK;
}

static int sq_exec(struct fm_db_conn *c, const char *sql, size_t len,
                   const struct fm_db_value *params, int nparams, struct fm_db_result *res,
                   struct fm_db_error *e) {
  if (len > (size_t)1 << 30) return fm_db_misuse(e, "SQL text too long (%zu bytes)", len);
  const char *p = sql, *end = sql + len;
  long long changes = 0;
  int is_insert = 0;
  fm_db_result_clear(res);
  while (p < end) {
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(c->db, p, (int)(end - p), &st, &tail);
    if (rc != SQLITE_OK) return fail_rc(c->db, rc, e);
    if (!st) { /* only blanks or comments were left */
      if (!tail || tail <= p) break;
      p = tail;
      continue;
    }
    if (nparams || sqlite3_bind_parameter_count(st)) {
      if (sqlite3_bind_parameter_count(st) != nparams) {
        sqlite3_finalize(st);
        return fm_db_misuse(e, "write placeholders as ? (not :name, @name or $name)");
      }
      rc = bind_all(st, params, nparams);
      if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return fail_rc(c->db, rc, e);
      }
    }
    fm_db_result_clear(res); /* a script gives back its last statement's rows */
    int ncols = sqlite3_column_count(st);
    if (ncols > 0) {
      if (fm_db_result_columns(res, ncols)) {
        sqlite3_finalize(st);
        return fm_db_fail(e, "53200", "out of memory");
      }
      for (int i = 0; i < ncols; i++) {
        const char *name = sqlite3_column_name(st, i);
        if (!name || fm_db_result_set_col(res, i, name, strlen(name))) {
          sqlite3_finalize(st);
          return fm_db_fail(e, "53200", "out of memory");
        }
      }
    }
    sqlite3_int64 total0 = sqlite3_total_changes64(c->db);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      int trc = take_row(st, res);
      if (trc != SQLITE_OK) {
        sqlite3_finalize(st);
        if (trc == SQLITE_TOOBIG)
          return fm_db_fail(e, "54000", "the result is larger than the Lua memory left");
        return fm_db_fail(e, "53200", "out of memory");
      }
    }
    if (rc != SQLITE_DONE) {
      fail_rc(c->db, rc, e);
      sqlite3_finalize(st);
      return -1;
    }
    /* sqlite3_changes keeps the count of the last INSERT/UPDATE/DELETE: count it only when
     * this statement changed rows */
    changes = sqlite3_total_changes64(c->db) > total0 ? (long long)sqlite3_changes64(c->db) : 0;
    is_insert = fm_db_sql_starts_with(p, (size_t)(tail - p), "insert") ||
                fm_db_sql_starts_with(p, (size_t)(tail - p), "replace");
    sqlite3_finalize(st);
    p = tail;
  }
  res->changes = changes;
  if (is_insert && changes > 0 && res->ncols == 0) {
    res->has_last_id = 1;
    res->last_id.type = FM_DB_INT;
    res->last_id.i = (long long)sqlite3_last_insert_rowid(c->db);
  }
  return 0;
}

static int sq_begin(struct fm_db_conn *c, struct fm_db_error *e) {
  return run_simple(c, "BEGIN IMMEDIATE", e);
}
static int sq_commit(struct fm_db_conn *c, struct fm_db_error *e) { return run_simple(c, "COMMIT", e); }
static int sq_rollback(struct fm_db_conn *c, struct fm_db_error *e) {
  if (sqlite3_get_autocommit(c->db)) return 0; /* SQLite may have rolled back already */
  return run_simple(c, "ROLLBACK", e);
}

static int sq_reset(struct fm_db_conn *c) {
  if (sqlite3_get_autocommit(c->db)) return 0;
  return sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

const struct fm_db_driver fm_db_sqlite_driver = {
    .name = "sqlite",
    .connect = sq_connect,
    .close = sq_close,
    .ping = sq_ping,
    .alive = sq_alive,
    .exec = sq_exec,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .reset = sq_reset,
};
