/* db.c: what every database driver shares: DATABASE_URL parsing and masking, the `?` placeholder
 * scanner (and its rewrite to $1..$n for PostgreSQL), query results and errors. */
#include "db.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* postgres.c: checks a libpq URI without connecting. */
int fm_db_pg_check_uri(const char *uri, struct fm_err *err);

/* ---- errors -------------------------------------------------------------------------------- */

int fm_db_fail(struct fm_db_error *e, const char *sqlstate, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  snprintf(e->sqlstate, sizeof e->sqlstate, "%s", sqlstate ? sqlstate : "58000");
  e->misuse = 0;
  return -1;
}

int fm_db_misuse(struct fm_db_error *e, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  e->misuse = 1;
  e->sqlstate[0] = '\0';
  return -1;
}

/* ---- DATABASE_URL -------------------------------------------------------------------------- */

void fm_db_url_mask(const char *url, char *out, size_t outsz) {
  if (!outsz) return;
  struct fm_buf b = {0};
  const char *sep = strstr(url, "://");
  const char *q = strchr(url, '?');
  size_t head = q ? (size_t)(q - url) : strlen(url);
  const char *at = NULL;
  if (sep && (size_t)(sep - url) < head && strncmp(url, "sqlite", 6) != 0) {
    for (const char *p = sep + 3; p < url + head; p++)
      if (*p == '@') at = p; /* a raw '@' in a password: the last one ends the userinfo */
  }
  const char *colon = NULL;
  if (at) colon = memchr(sep + 3, ':', (size_t)(at - (sep + 3)));
  if (colon) {
    fm_buf_add(&b, url, (size_t)(colon + 1 - url));
    fm_buf_adds(&b, "****");
    fm_buf_add(&b, at, head - (size_t)(at - url));
  } else {
    fm_buf_add(&b, url, head);
  }
  if (q) { /* password=... in the query */
    const char *p = q;
    while (*p) {
      const char *amp = strchr(p + 1, '&');
      size_t n = amp ? (size_t)(amp - p) : strlen(p);
      if (n >= 10 && strncmp(p + 1, "password=", 9) == 0) {
        fm_buf_add(&b, p, 10);
        fm_buf_adds(&b, "****");
      } else {
        fm_buf_add(&b, p, n);
      }
      p += n;
    }
  }
  snprintf(out, outsz, "%s", fm_buf_cstr(&b));
  fm_buf_free(&b);
}

static const char url_forms[] =
    "expected sqlite:///path/to/file.db (relative), sqlite:////abs/path.db or "
    "postgresql://user:password@host:5432/database";

static int parse_sqlite(const char *rest, const char *display, struct fm_db_url *out,
                        struct fm_err *err) {
  /* SQLAlchemy's form: sqlite://<no host>/<path>; the path follows the third slash. */
  if (rest[0] == '\0')
    return fm_err_set(err, FM_E_INVAL,
                      "%s: in-memory SQLite is not supported (each pooled connection would see its "
                      "own database); %s",
                      display, url_forms);
  if (rest[0] != '/')
    return fm_err_set(err, FM_E_INVAL, "%s: a sqlite URL has no host (%s)", display, url_forms);
  const char *path = rest + 1;
  const char *q = strchr(path, '?');
  size_t plen = q ? (size_t)(q - path) : strlen(path);
  if (q) {
    const char *p = q + 1;
    while (*p) {
      size_t n = strcspn(p, "&");
      if (n && !(strncmp(p, "check_same_thread=", 18) == 0 && n >= 18))
        return fm_err_set(err, FM_E_INVAL, "%s: unsupported sqlite URL parameter '%.*s'", display,
                          (int)strcspn(p, "=&"), p);
      p += n;
      if (*p == '&') p++;
    }
  }
  if (plen == 0 || (plen == 8 && strncmp(path, ":memory:", 8) == 0))
    return fm_err_set(err, FM_E_INVAL,
                      "%s: in-memory SQLite is not supported (each pooled connection would see its "
                      "own database); %s",
                      display, url_forms);
  char rel[PATH_MAX];
  if (plen >= sizeof rel) return fm_err_set(err, FM_E_INVAL, "%s: path too long", display);
  memcpy(rel, path, plen);
  rel[plen] = '\0';
  if (rel[plen - 1] == '/') return fm_err_set(err, FM_E_INVAL, "%s: the path names a directory", display);
  if (rel[0] == '/') {
    snprintf(out->path, sizeof out->path, "%s", rel);
    return 0;
  }
  const char *r = rel;
  while (r[0] == '.' && r[1] == '/') {
    r += 2;
    while (*r == '/') r++;
  }
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) return fm_err_set(err, FM_E_IO, "%s: cannot read the current directory", display);
  if ((size_t)snprintf(out->path, sizeof out->path, "%s/%s", strcmp(cwd, "/") ? cwd : "", r) >=
      sizeof out->path)
    return fm_err_set(err, FM_E_INVAL, "%s: path too long", display);
  return 0;
}

static int parse_postgres(const char *rest, const char *display, struct fm_db_url *out,
                          struct fm_err *err) {
  struct fm_buf b = {0};
  fm_buf_adds(&b, "postgresql://");
  const char *q = strchr(rest, '?');
  fm_buf_add(&b, rest, q ? (size_t)(q - rest) : strlen(rest));
  if (q) { /* asyncpg's ssl=<mode|true|false> is libpq's sslmode= */
    const char *p = q + 1;
    char lead = '?';
    while (*p) {
      size_t n = strcspn(p, "&");
      if (n) {
        fm_buf_addc(&b, lead);
        lead = '&';
        if (n >= 4 && strncmp(p, "ssl=", 4) == 0) {
          const char *v = p + 4;
          size_t vn = n - 4;
          fm_buf_adds(&b, "sslmode=");
          if (vn == 4 && strncmp(v, "true", 4) == 0) fm_buf_adds(&b, "require");
          else if (vn == 5 && strncmp(v, "false", 5) == 0) fm_buf_adds(&b, "disable");
          else fm_buf_add(&b, v, vn);
        } else {
          fm_buf_add(&b, p, n);
        }
      }
      p += n;
      if (*p == '&') p++;
    }
  }
  if (b.len >= sizeof out->conninfo) {
    fm_buf_free(&b);
    return fm_err_set(err, FM_E_INVAL, "%s: URL too long", display);
  }
  snprintf(out->conninfo, sizeof out->conninfo, "%s", fm_buf_cstr(&b));
  fm_buf_free(&b);
  struct fm_err e = {0};
  if (fm_db_pg_check_uri(out->conninfo, &e))
    return fm_err_set(err, FM_E_INVAL, "%s: %s", display, e.msg);
  return 0;
}

int fm_db_url_parse(const char *url, struct fm_db_url *out, struct fm_err *err) {
  memset(out, 0, sizeof *out);
  if (!url) url = "";
  while (isspace((unsigned char)*url)) url++;
  size_t n = strlen(url);
  while (n && isspace((unsigned char)url[n - 1])) n--;
  if (n >= FM_DB_URL_MAX) return fm_err_set(err, FM_E_INVAL, "URL too long (%zu bytes)", n);
  char u[FM_DB_URL_MAX];
  memcpy(u, url, n);
  u[n] = '\0';
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)u[i] < 0x20 || u[i] == 0x7f)
      return fm_err_set(err, FM_E_INVAL, "URL holds a control character");
  fm_db_url_mask(u, out->display, sizeof out->display);
  const char *sep = strstr(u, "://");
  if (!n) return fm_err_set(err, FM_E_INVAL, "empty URL: %s", url_forms);
  if (!sep) return fm_err_set(err, FM_E_INVAL, "%s: not a URL: %s", out->display, url_forms);
  char scheme[32];
  size_t sl = (size_t)(sep - u);
  size_t plus = strcspn(u, "+");
  if (plus < sl) sl = plus; /* sqlite+aiosqlite, postgresql+asyncpg: the driver part is dropped */
  if (sl == 0 || sl >= sizeof scheme)
    return fm_err_set(err, FM_E_INVAL, "%s: unsupported database: %s", out->display, url_forms);
  for (size_t i = 0; i < sl; i++) scheme[i] = (char)tolower((unsigned char)u[i]);
  scheme[sl] = '\0';
  if (strcmp(scheme, "sqlite") == 0) {
    out->backend = FM_DB_SQLITE;
    return parse_sqlite(sep + 3, out->display, out, err);
  }
  if (strcmp(scheme, "postgresql") == 0 || strcmp(scheme, "postgres") == 0) {
    out->backend = FM_DB_POSTGRES;
    return parse_postgres(sep + 3, out->display, out, err);
  }
  return fm_err_set(err, FM_E_INVAL, "%s: unsupported database '%s': %s", out->display, scheme,
                    url_forms);
}

/* ---- placeholders -------------------------------------------------------------------------- */

static int ident_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == '$'; }

/* If a comment starts at i, returns the index after it; else i. */
static size_t skip_comment(const char *s, size_t len, size_t i, int nested) {
  if (i + 1 < len && s[i] == '-' && s[i + 1] == '-') {
    while (i < len && s[i] != '\n') i++;
    return i;
  }
  if (i + 1 < len && s[i] == '/' && s[i + 1] == '*') {
    int depth = 1;
    i += 2;
    while (i < len && depth) {
      if (i + 1 < len && s[i] == '*' && s[i + 1] == '/') {
        depth--;
        i += 2;
      } else if (nested && i + 1 < len && s[i] == '/' && s[i + 1] == '*') {
        depth++;
        i += 2;
      } else {
        i++;
      }
    }
    return i; /* an unterminated comment runs to the end: the server says what it thinks */
  }
  return i;
}

/* The end (index after the closing quote) of a literal opened by s[i] == q, or len + 1 when it
 * is not closed. A doubled quote stands for itself; backslash escapes when bs. */
static size_t skip_quoted(const char *s, size_t len, size_t i, char q, char close, int bs) {
  size_t j = i + 1;
  while (j < len) {
    if (bs && s[j] == '\\') {
      j += 2;
      continue;
    }
    if (s[j] == close) {
      if (close == q && j + 1 < len && s[j + 1] == q) {
        j += 2;
        continue;
      }
      return j + 1;
    }
    j++;
  }
  return len + 1;
}

/* $tag$ ... $tag$ (PostgreSQL): the end of the body, or 0 when s[i] does not open one. */
static size_t skip_dollar_quote(const char *s, size_t len, size_t i) {
  size_t j = i + 1;
  if (j < len && (isdigit((unsigned char)s[j]))) return 0;
  while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
  if (j >= len || s[j] != '$') return 0;
  size_t tag = j + 1 - i; /* "$tag$" */
  for (size_t k = j + 1; k + tag <= len; k++)
    if (s[k] == '$' && memcmp(s + k, s + i, tag) == 0) return k + tag;
  return len + 1;
}

int fm_db_scan_sql(const char *sql, size_t len, enum fm_db_backend dialect, struct fm_buf *out,
                   int *nparams, int *multi, struct fm_err *err) {
  int pg = dialect == FM_DB_POSTGRES;
  int n = 0, semi = 0;
  size_t copied = 0, i = 0;
  *multi = 0;
  *nparams = 0;
  while (i < len) {
    char c = sql[i];
    if (c == '\0') return fm_err_set(err, FM_E_INVAL, "the SQL text holds a NUL byte");
    size_t after = skip_comment(sql, len, i, pg);
    if (after != i) {
      i = after;
      continue;
    }
    if (isspace((unsigned char)c)) {
      i++;
      continue;
    }
    if (c == ';') {
      semi = 1;
      i++;
      continue;
    }
    if (semi) *multi = 1;
    size_t end = 0;
    const char *what = NULL;
    if (c == '\'') {
      int esc = pg && i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                (i < 2 || !ident_char(sql[i - 2]));
      end = skip_quoted(sql, len, i, '\'', '\'', esc);
      what = "string literal";
    } else if (c == '"') {
      end = skip_quoted(sql, len, i, '"', '"', 0);
      what = "quoted identifier";
    } else if (!pg && c == '`') {
      end = skip_quoted(sql, len, i, '`', '`', 0);
      what = "quoted identifier";
    } else if (!pg && c == '[') {
      end = skip_quoted(sql, len, i, '[', ']', 0);
      what = "quoted identifier";
    } else if (pg && c == '$' && (i == 0 || !ident_char(sql[i - 1]))) {
      if (i + 1 < len && isdigit((unsigned char)sql[i + 1]))
        return fm_err_set(err, FM_E_INVAL, "write placeholders as ?, not $%c", sql[i + 1]);
      end = skip_dollar_quote(sql, len, i);
      what = "dollar-quoted string";
    } else if (c == '?') {
      if (i + 1 < len && isdigit((unsigned char)sql[i + 1]))
        return fm_err_set(err, FM_E_INVAL, "numbered placeholders (?%c) are not supported: use ?",
                          sql[i + 1]);
      n++;
      if (out) {
        if (fm_buf_add(out, sql + copied, i - copied) || fm_buf_printf(out, "$%d", n))
          return fm_err_set(err, FM_E_NOMEM, "out of memory");
        copied = i + 1;
      }
      i++;
      continue;
    }
    if (what && end) {
      if (end > len) return fm_err_set(err, FM_E_INVAL, "unterminated %s in the SQL text", what);
      for (size_t k = i; k < end; k++)
        if (sql[k] == '\0') return fm_err_set(err, FM_E_INVAL, "the SQL text holds a NUL byte");
      i = end;
      continue;
    }
    i++;
  }
  if (out && fm_buf_add(out, sql + copied, len - copied))
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  *nparams = n;
  return 0;
}

static size_t skip_blank(const char *s, size_t len, size_t i) {
  for (;;) {
    while (i < len && isspace((unsigned char)s[i])) i++;
    size_t after = skip_comment(s, len, i, 1);
    if (after == i) return i;
    i = after;
  }
}

int fm_db_sql_blank(const char *sql, size_t len) { return skip_blank(sql, len, 0) >= len; }

int fm_db_sql_starts_with(const char *sql, size_t len, const char *word) {
  size_t i = skip_blank(sql, len, 0);
  size_t wl = strlen(word);
  if (len - i < wl || strncasecmp(sql + i, word, wl) != 0) return 0;
  return i + wl == len || !ident_char(sql[i + wl]);
}

/* ---- results ------------------------------------------------------------------------------- */

void fm_db_result_free(struct fm_db_result *r) {
  free(r->cols);
  free(r->cells);
  fm_buf_free(&r->text);
  size_t max = r->max_bytes;
  memset(r, 0, sizeof *r);
  r->max_bytes = max;
}

void fm_db_result_clear(struct fm_db_result *r) {
  r->ncols = 0;
  r->nrows = 0;
  r->text.len = 0;
  r->has_last_id = 0;
}

static size_t result_bytes(const struct fm_db_result *r) {
  return r->text.len + (r->nrows + 1) * (size_t)r->ncols * sizeof(struct fm_db_cell);
}

int fm_db_result_columns(struct fm_db_result *r, int ncols) {
  free(r->cols);
  r->cols = calloc(ncols > 0 ? (size_t)ncols : 1, sizeof *r->cols);
  if (!r->cols) return FM_E_NOMEM;
  r->ncols = ncols;
  r->nrows = 0;
  return 0;
}

int fm_db_result_set_text(struct fm_db_result *r, struct fm_db_cell *c, const char *s, size_t n) {
  if (r->max_bytes && result_bytes(r) + n > r->max_bytes) return FM_E_TOOBIG;
  c->type = FM_DB_TEXT;
  c->off = r->text.len;
  c->len = n;
  if (fm_buf_add(&r->text, s, n)) return FM_E_NOMEM;
  return 0;
}

int fm_db_result_set_col(struct fm_db_result *r, int col, const char *name, size_t n) {
  return fm_db_result_set_text(r, &r->cols[col], name, n);
}

struct fm_db_cell *fm_db_result_add_row(struct fm_db_result *r, int *toobig) {
  *toobig = 0;
  size_t nc = r->ncols > 0 ? (size_t)r->ncols : 1;
  if (r->max_bytes && result_bytes(r) + nc * sizeof(struct fm_db_cell) > r->max_bytes) {
    *toobig = 1;
    return NULL;
  }
  if ((r->nrows + 1) * nc > r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16 * nc;
    while (cap < (r->nrows + 1) * nc) cap *= 2;
    struct fm_db_cell *p = realloc(r->cells, cap * sizeof *p);
    if (!p) return NULL;
    r->cells = p;
    r->cap = cap;
  }
  struct fm_db_cell *row = r->cells + r->nrows * nc;
  memset(row, 0, nc * sizeof *row);
  r->nrows++;
  return row;
}

const char *fm_db_result_text(const struct fm_db_result *r, const struct fm_db_cell *c) {
  return r->text.p ? r->text.p + c->off : "";
}

const struct fm_db_driver *fm_db_driver_for(enum fm_db_backend b) {
  switch (b) {
  case FM_DB_SQLITE: return &fm_db_sqlite_driver;
  case FM_DB_POSTGRES: return &fm_db_postgres_driver;
  }
  return NULL;
}
