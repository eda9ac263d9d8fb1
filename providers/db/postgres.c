/* postgres.c: the PostgreSQL driver (libpq). `?` placeholders are numbered $1..$n here (the
 * dialect layer for placeholders, db.c); parameters go as text (NULL as NULL) and the server
 * infers their types. Results come back as text and are converted by column type OID: int2, int4,
 * int8 -> integer; float4, float8, numeric -> number; bool -> boolean; everything else string.
 * Server notices go to the log (debug; warnings and FATAL messages at warn) instead of stderr. */
#include "db.h"

#include "log.h"

#include <libpq-fe.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* type OIDs (src/include/catalog/pg_type.dat) */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

struct fm_db_conn {
  PGconn *pg;
};

int fm_db_pg_check_uri(const char *uri, struct fm_err *err);

/* The raw password of a postgresql:// URI (userinfo or password= in the query), so that a libpq
 * message quoting it can be masked; "" when there is none. */
static void uri_password(const char *uri, char *out, size_t outsz) {
  out[0] = '\0';
  const char *rest = strstr(uri, "://");
  rest = rest ? rest + 3 : uri;
  size_t head = strcspn(rest, "?");
  const char *at = NULL;
  for (const char *p = rest; p < rest + head; p++)
    if (*p == '@') at = p;
  if (at) {
    const char *colon = memchr(rest, ':', (size_t)(at - rest));
    if (colon) snprintf(out, outsz, "%.*s", (int)(at - colon - 1), colon + 1);
  }
  const char *q = strstr(rest + head, "password=");
  if (q && (q[-1] == '?' || q[-1] == '&')) snprintf(out, outsz, "%.*s", (int)strcspn(q + 9, "&"), q + 9);
}

/* Copies a libpq message into out on one line, with `secret` (if any) replaced by ****. */
static void clean_message(const char *msg, const char *secret, char *out, size_t outsz) {
  struct fm_buf b = {0};
  size_t sl = secret ? strlen(secret) : 0;
  for (const char *p = msg ? msg : ""; *p;) {
    if (sl && strncmp(p, secret, sl) == 0) {
      fm_buf_adds(&b, "****");
      p += sl;
      continue;
    }
    char c = *p++;
    if (c == '\n' || c == '\t' || c == '\r') {
      if (b.len && b.p[b.len - 1] != ' ') fm_buf_addc(&b, ' ');
      continue;
    }
    fm_buf_addc(&b, c);
  }
  while (b.len && b.p[b.len - 1] == ' ') b.len--;
  snprintf(out, outsz, "%.*s", (int)b.len, b.p ? b.p : "");
  fm_buf_free(&b);
}

int fm_db_pg_check_uri(const char *uri, struct fm_err *err) {
  char password[FM_DB_URL_MAX];
  uri_password(uri, password, sizeof password);
  char *msg = NULL;
  PQconninfoOption *o = PQconninfoParse(uri, &msg);
  if (o) {
    PQconninfoFree(o);
    return 0;
  }
  char m[400];
  clean_message(msg ? msg : "out of memory", password, m, sizeof m);
  if (msg) PQfreemem(msg);
  return fm_err_set(err, FM_E_INVAL, "%s", m);
}

static void notice(void *arg, const char *message) {
  (void)arg;
  char m[512];
  clean_message(message, NULL, m, sizeof m);
  int warn = strncmp(m, "WARNING", 7) == 0 || strncmp(m, "FATAL", 5) == 0;
  if (warn) fm_warn("postgres: %s", m);
  else fm_debug("postgres: %s", m);
}

static int pg_connect(const struct fm_db_url *url, double timeout_s, struct fm_db_conn **out,
                      struct fm_db_error *e) {
  *out = NULL;
  char to[16];
  /* libpq's connect_timeout counts whole seconds, at least 2; the URL's own wins (it comes
   * later in the list) */
  snprintf(to, sizeof to, "%d", timeout_s < 2 ? 2 : (int)ceil(timeout_s));
  /* A statement blocked on a lock or running away ends with 57014 (the request gets 503) instead
   * of holding a pooled connection for good. */
  char opts[64];
  snprintf(opts, sizeof opts, "-c statement_timeout=%d", url->statement_timeout_ms);
  const char *kw[] = {"connect_timeout", "application_name", "client_encoding", "options", "dbname",
                      NULL};
  const char *val[] = {to, "faultmaven", "UTF8", opts, url->conninfo, NULL};
  PGconn *pg = PQconnectdbParams(kw, val, 1);
  if (!pg) return fm_db_fail(e, "08001", "out of memory");
  if (PQstatus(pg) != CONNECTION_OK) {
    char m[400], password[FM_DB_URL_MAX];
    uri_password(url->conninfo, password, sizeof password);
    clean_message(PQerrorMessage(pg), password, m, sizeof m);
    PQfinish(pg);
    return fm_db_fail(e, "08001", "%s", m);
  }
  PQsetNoticeProcessor(pg, notice, NULL);
  struct fm_db_conn *c = calloc(1, sizeof *c);
  if (!c) {
    PQfinish(pg);
    return fm_db_fail(e, "53200", "out of memory");
  }
  c->pg = pg;
  *out = c;
  return 0;
}

static void pg_close(struct fm_db_conn *c) {
  if (!c) return;
  PQfinish(c->pg);
  free(c);
}

/* An idle connection has nothing to read unless the server ended it (a FATAL message and EOF,
 * after pg_terminate_backend or a restart): read what is there and look at the status. */
static int pg_alive(struct fm_db_conn *c) {
  if (PQstatus(c->pg) != CONNECTION_OK) return 0;
  for (int i = 0; i < 4; i++) {
    int fd = PQsocket(c->pg);
    if (fd < 0) return 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, 0);
    if (n <= 0) break;
    if (pfd.revents & (POLLERR | POLLNVAL)) return 0;
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) != CONNECTION_OK) return 0;
    if (pfd.revents & POLLHUP) return 0;
  }
  return PQtransactionStatus(c->pg) == PQTRANS_IDLE;
}

/* A failed result (or none) into e; marks the connection lost when libpq says so. */
static int fail_result(struct fm_db_conn *c, PGresult *r, struct fm_db_error *e) {
  const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  char m[400];
  clean_message(primary ? primary : r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg), NULL, m,
                sizeof m);
  int lost = PQstatus(c->pg) != CONNECTION_OK;
  if (!m[0]) snprintf(m, sizeof m, "%s", lost ? "the connection to the server was lost" : "query failed");
  fm_db_fail(e, state && *state ? state : lost ? "08006" : "XX000", "%s", m);
  e->conn_lost = lost;
  return -1;
}

static int run_simple(struct fm_db_conn *c, const char *sql, const char *want_tag,
                      struct fm_db_error *e) {
  PGresult *r = PQexec(c->pg, sql);
  if (!r || (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)) {
    fail_result(c, r, e);
    PQclear(r);
    return -1;
  }
  /* COMMIT of a transaction that failed answers "ROLLBACK", not an error */
  if (want_tag && strcmp(PQcmdStatus(r), want_tag) != 0) {
    fm_db_fail(e, "40000", "the transaction was rolled back by the server (%s)", PQcmdStatus(r));
    PQclear(r);
    return -1;
  }
  PQclear(r);
  return 0;
}

static int pg_ping(struct fm_db_conn *c, struct fm_db_error *e) {
  return run_simple(c, "SELECT 1", NULL, e);
}

static int convert_cell(struct fm_db_result *res, struct fm_db_cell *cell, Oid type,
                        const char *v, size_t n) {
  switch (type) {
  case OID_INT2:
  case OID_INT4:
  case OID_INT8:
    cell->type = FM_DB_INT;
    cell->i = strtoll(v, NULL, 10);
    return 0;
  case OID_FLOAT4:
  case OID_FLOAT8:
  case OID_NUMERIC:
    cell->type = FM_DB_FLOAT;
    cell->d = strtod(v, NULL); /* handles NaN, Infinity, -Infinity */
    return 0;
  case OID_BOOL:
    cell->type = FM_DB_BOOL;
    cell->i = v[0] == 't';
    return 0;
  default: return fm_db_result_set_text(res, cell, v, n);
  }
}

static int take_result(PGresult *r, struct fm_db_result *res, struct fm_db_error *e) {
  int ncols = PQnfields(r), nrows = PQntuples(r);
  if (fm_db_result_columns(res, ncols)) return fm_db_fail(e, "53200", "out of memory");
  for (int i = 0; i < ncols; i++) {
    const char *name = PQfname(r, i);
    if (fm_db_result_set_col(res, i, name ? name : "?column?", name ? strlen(name) : 8))
      return fm_db_fail(e, "53200", "out of memory");
  }
  for (int row = 0; row < nrows; row++) {
    int toobig;
    struct fm_db_cell *cells = fm_db_result_add_row(res, &toobig);
    if (!cells) {
      if (toobig) return fm_db_fail(e, "54000", "the result is larger than the Lua memory left");
      return fm_db_fail(e, "53200", "out of memory");
    }
    for (int col = 0; col < ncols; col++) {
      if (PQgetisnull(r, row, col)) continue;
      int rc = convert_cell(res, &cells[col], PQftype(r, col), PQgetvalue(r, row, col),
                            (size_t)PQgetlength(r, row, col));
      if (rc == FM_E_TOOBIG) return fm_db_fail(e, "54000", "the result is larger than the Lua memory left");
      if (rc) return fm_db_fail(e, "53200", "out of memory");
    }
  }
  return 0;
}

/* Rows an INSERT, UPDATE, DELETE (or MERGE) changed; 0 for anything else (a SELECT's row count
 * is not a change). */
static long long changes_of(PGresult *r) {
  const char *tag = PQcmdStatus(r);
  const char *tuples = PQcmdTuples(r);
  if (!tag || strncmp(tag, "SELECT", 6) == 0 || !tuples || !*tuples) return 0;
  return strtoll(tuples, NULL, 10);
}

static int pg_exec(struct fm_db_conn *c, const char *sql, size_t len,
                   const struct fm_db_value *params, int nparams, struct fm_db_result *res,
                   struct fm_db_error *e) {
  struct fm_buf q = {0};
  struct fm_err serr = {0};
  int n = 0, multi = 0;
  if (fm_db_scan_sql(sql, len, FM_DB_POSTGRES, &q, &n, &multi, &serr)) {
    fm_buf_free(&q);
    return serr.code == FM_E_NOMEM ? fm_db_fail(e, "53200", "out of memory")
                                   : fm_db_misuse(e, "%s", serr.msg);
  }
  const char **values = NULL;
  char *numbuf = NULL;
  int rc = -1;
  PGresult *r = NULL;
  fm_db_result_clear(res);
  if (nparams) {
    values = calloc((size_t)nparams, sizeof *values);
    numbuf = malloc((size_t)nparams * 32);
    if (!values || !numbuf) {
      fm_db_fail(e, "53200", "out of memory");
      goto out;
    }
    for (int i = 0; i < nparams; i++) {
      const struct fm_db_value *v = &params[i];
      char *nb = numbuf + (size_t)i * 32;
      switch (v->type) {
      case FM_DB_NULL: values[i] = NULL; break;
      case FM_DB_BOOL: values[i] = v->i ? "true" : "false"; break;
      case FM_DB_INT:
        snprintf(nb, 32, "%lld", v->i);
        values[i] = nb;
        break;
      case FM_DB_FLOAT:
        if (isnan(v->d)) snprintf(nb, 32, "NaN");
        else if (isinf(v->d)) snprintf(nb, 32, "%sInfinity", v->d < 0 ? "-" : "");
        else snprintf(nb, 32, "%.17g", v->d);
        values[i] = nb;
        break;
      case FM_DB_TEXT:
        /* text parameters end at a NUL: refuse rather than cut the value short */
        if (memchr(v->s, '\0', v->n)) {
          fm_db_fail(e, "22021", "invalid byte sequence for encoding \"UTF8\": 0x00 (parameter %d)",
                     i + 1);
          goto out;
        }
        values[i] = v->s;
        break;
      }
    }
  }
  const char *text = fm_buf_cstr(&q);
  if (multi && !nparams) r = PQexec(c->pg, text);
  else r = PQexecParams(c->pg, text, nparams, NULL, values, NULL, NULL, 0);
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  switch (st) {
  case PGRES_TUPLES_OK: /* INSERT ... RETURNING counts its rows too */
    if (take_result(r, res, e)) goto out;
    res->changes = changes_of(r);
    rc = 0;
    break;
  case PGRES_COMMAND_OK:
    res->changes = changes_of(r);
    rc = 0;
    break;
  case PGRES_EMPTY_QUERY: rc = 0; break;
  case PGRES_COPY_IN:
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    fm_db_fail(e, "0A000", "COPY is not supported through fm.db");
    e->conn_lost = 1; /* the connection is mid-COPY: close it */
    break;
  default: fail_result(c, r, e); break;
  }
out:
  PQclear(r);
  free(values);
  free(numbuf);
  fm_buf_free(&q);
  return rc;
}

static int pg_begin(struct fm_db_conn *c, struct fm_db_error *e) {
  return run_simple(c, "BEGIN", NULL, e);
}
static int pg_commit(struct fm_db_conn *c, struct fm_db_error *e) {
  return run_simple(c, "COMMIT", "COMMIT", e);
}
static int pg_rollback(struct fm_db_conn *c, struct fm_db_error *e) {
  if (PQtransactionStatus(c->pg) == PQTRANS_IDLE) return 0;
  return run_simple(c, "ROLLBACK", NULL, e);
}

static int pg_reset(struct fm_db_conn *c) {
  if (PQstatus(c->pg) != CONNECTION_OK) return -1;
  switch (PQtransactionStatus(c->pg)) {
  case PQTRANS_IDLE: return 0;
  case PQTRANS_INTRANS:
  case PQTRANS_INERROR: {
    struct fm_db_error e = {0};
    return run_simple(c, "ROLLBACK", NULL, &e);
  }
  default: return -1;
  }
}

const struct fm_db_driver fm_db_postgres_driver = {
    .name = "postgres",
    .connect = pg_connect,
    .close = pg_close,
    .ping = pg_ping,
    .alive = pg_alive,
    .exec = pg_exec,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .reset = pg_reset,
};
