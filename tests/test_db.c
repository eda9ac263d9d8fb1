/* Unit tests for providers/db: DATABASE_URL parsing and masking, the `?` scanner and its rewrite
 * to $1..$n, and the pool (on SQLite in a temp dir): lending, exhaustion, reconnection, reset of
 * a transaction left open. */
#include "check.h"
#include "db.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct fm_db_url u;
static struct fm_err err;

static int parse(const char *url) {
  memset(&err, 0, sizeof err);
  return fm_db_url_parse(url, &u, &err);
}

static void test_urls(void) {
  char cwd[PATH_MAX], want[PATH_MAX + 64];
  CHECK(getcwd(cwd, sizeof cwd) != NULL);

  CHECK(parse("sqlite:////var/lib/fm/faultmaven.db") == 0);
  CHECK(u.backend == FM_DB_SQLITE);
  CHECK_STR(u.path, "/var/lib/fm/faultmaven.db");
  CHECK(parse("sqlite:///./data/faultmaven.db") == 0);
  snprintf(want, sizeof want, "%s/data/faultmaven.db", cwd);
  CHECK_STR(u.path, want);
  CHECK(parse("sqlite:///data/x.db") == 0);
  snprintf(want, sizeof want, "%s/data/x.db", cwd);
  CHECK_STR(u.path, want);
  CHECK(parse("  sqlite+aiosqlite:///./data/faultmaven.db\n") == 0);
  snprintf(want, sizeof want, "%s/data/faultmaven.db", cwd);
  CHECK_STR(u.path, want);
  CHECK(parse("sqlite:///x.db?check_same_thread=false") == 0);
  CHECK(parse("SQLite:////tmp/a.db") == 0);

  CHECK(parse("sqlite://") == FM_E_INVAL);
  CHECK(strstr(err.msg, "in-memory") != NULL);
  CHECK(parse("sqlite:///:memory:") == FM_E_INVAL);
  CHECK(parse("sqlite://host/x.db") == FM_E_INVAL);
  CHECK(strstr(err.msg, "no host") != NULL);
  CHECK(parse("sqlite:///x.db?mode=ro") == FM_E_INVAL);
  CHECK(parse("sqlite:////tmp/") == FM_E_INVAL);
  CHECK(parse("") == FM_E_INVAL);
  CHECK(parse("faultmaven.db") == FM_E_INVAL);
  CHECK(strstr(err.msg, "not a URL") != NULL);
  CHECK(parse("mysql://u:hunter2@h/db") == FM_E_INVAL);
  CHECK(strstr(err.msg, "unsupported database 'mysql'") != NULL);
  CHECK(strstr(err.msg, "hunter2") == NULL);

  CHECK(parse("postgresql://fm:s3cret@db.example:5432/faultmaven?sslmode=require") == 0);
  CHECK(u.backend == FM_DB_POSTGRES);
  CHECK_STR(u.conninfo, "postgresql://fm:s3cret@db.example:5432/faultmaven?sslmode=require");
  CHECK_STR(u.display, "postgresql://fm:****@db.example:5432/faultmaven?sslmode=require");
  CHECK(parse("postgres://fm@localhost/db") == 0);
  CHECK_STR(u.conninfo, "postgresql://fm@localhost/db");
  CHECK_STR(u.display, "postgres://fm@localhost/db");
  CHECK(parse("postgresql+asyncpg://fm:pw@h/db?ssl=true&application_name=x") == 0);
  CHECK_STR(u.conninfo, "postgresql://fm:pw@h/db?sslmode=require&application_name=x");
  CHECK_STR(u.display, "postgresql+asyncpg://fm:****@h/db?ssl=true&application_name=x");
  CHECK(parse("postgresql:///faultmaven") == 0); /* unix socket */
  /* libpq's own parser checks the rest; its message never carries the password */
  CHECK(parse("postgresql://fm:p%zzw@h/db") == FM_E_INVAL);
  CHECK(strstr(err.msg, "p%zzw") == NULL);
  CHECK(parse("postgresql://fm:hunter2@h/db?nosuchoption=1") == FM_E_INVAL);
  CHECK(strstr(err.msg, "nosuchoption") != NULL);
  CHECK(strstr(err.msg, "hunter2") == NULL);
  CHECK(strstr(err.msg, "fm:****@h") != NULL);
  CHECK(parse("postgresql://h/db?password=hunter2&port=x%zz") == FM_E_INVAL);
  CHECK(strstr(err.msg, "hunter2") == NULL);

  char m[256];
  fm_db_url_mask("postgresql://a:b@c@h/db", m, sizeof m); /* a raw @ in the password */
  CHECK_STR(m, "postgresql://a:****@h/db");
  fm_db_url_mask("postgresql://h/db?user=a&password=xyz&sslmode=disable", m, sizeof m);
  CHECK_STR(m, "postgresql://h/db?user=a&password=****&sslmode=disable");
  fm_db_url_mask("postgresql://user@h/db", m, sizeof m);
  CHECK_STR(m, "postgresql://user@h/db");
  fm_db_url_mask("sqlite:////tmp/a:b@c.db", m, sizeof m);
  CHECK_STR(m, "sqlite:////tmp/a:b@c.db");
}

/* Rewrites for PostgreSQL; returns the text (static) or the error message. */
static const char *rewrite(const char *sql, int *n, int *multi) {
  static char out[1024];
  struct fm_buf b = {0};
  struct fm_err e = {0};
  if (fm_db_scan_sql(sql, strlen(sql), FM_DB_POSTGRES, &b, n, multi, &e)) {
    snprintf(out, sizeof out, "error: %s", e.msg);
  } else {
    snprintf(out, sizeof out, "%s", fm_buf_cstr(&b));
  }
  fm_buf_free(&b);
  return out;
}

static int count_sqlite(const char *sql, int *multi) {
  int n = -1, m = 0;
  struct fm_err e = {0};
  if (fm_db_scan_sql(sql, strlen(sql), FM_DB_SQLITE, NULL, &n, &m, &e)) return -1;
  if (multi) *multi = m;
  return n;
}

static void test_placeholders(void) {
  int n, multi;
  CHECK_STR(rewrite("SELECT * FROM t WHERE a = ? AND b = ?", &n, &multi),
            "SELECT * FROM t WHERE a = $1 AND b = $2");
  CHECK(n == 2 && !multi);
  CHECK_STR(rewrite("SELECT '?', 'it''s ?', ? -- a ? comment\n, ?", &n, &multi),
            "SELECT '?', 'it''s ?', $1 -- a ? comment\n, $2");
  CHECK(n == 2);
  CHECK_STR(rewrite("SELECT /* ? /* nested ? */ still ? */ ?", &n, &multi),
            "SELECT /* ? /* nested ? */ still ? */ $1");
  CHECK_STR(rewrite("SELECT \"we?ird\"\"col\" FROM t WHERE x = ?", &n, &multi),
            "SELECT \"we?ird\"\"col\" FROM t WHERE x = $1");
  CHECK_STR(rewrite("SELECT E'a\\'?', ?", &n, &multi), "SELECT E'a\\'?', $1");
  CHECK(n == 1);
  CHECK_STR(rewrite("SELECT 'a\\', ?", &n, &multi), "SELECT 'a\\', $1"); /* standard strings */
  CHECK_STR(rewrite("DO $$ BEGIN PERFORM '?'; END $$; SELECT ?", &n, &multi),
            "DO $$ BEGIN PERFORM '?'; END $$; SELECT $1");
  CHECK(n == 1 && multi);
  CHECK_STR(rewrite("SELECT $fn$ ? $fn$, ?", &n, &multi), "SELECT $fn$ ? $fn$, $1");
  CHECK_STR(rewrite("SELECT arr[?] FROM t", &n, &multi), "SELECT arr[$1] FROM t");
  CHECK_STR(rewrite("SELECT a$1 FROM t WHERE b = ?", &n, &multi), "SELECT a$1 FROM t WHERE b = $1");
  CHECK_STR(rewrite("INSERT INTO t VALUES (?);", &n, &multi), "INSERT INTO t VALUES ($1);");
  CHECK(!multi);
  CHECK_STR(rewrite("SELECT 1; -- trailing comment\n", &n, &multi), "SELECT 1; -- trailing comment\n");
  CHECK(!multi);
  CHECK_STR(rewrite("SELECT 1; SELECT 2", &n, &multi), "SELECT 1; SELECT 2");
  CHECK(multi);
  CHECK(strncmp(rewrite("SELECT $1", &n, &multi), "error: write placeholders as ?", 30) == 0);
  CHECK(strncmp(rewrite("SELECT ?1", &n, &multi), "error: numbered placeholders", 28) == 0);
  CHECK(strncmp(rewrite("SELECT 'open", &n, &multi), "error: unterminated string", 26) == 0);
  CHECK(strncmp(rewrite("SELECT \"open", &n, &multi), "error: unterminated quoted", 26) == 0);
  CHECK(rewrite("SELECT ?", &n, &multi) && n == 1);
  {
    struct fm_buf b = {0};
    struct fm_err e = {0};
    CHECK(fm_db_scan_sql("SELECT ?\0 ?", 11, FM_DB_POSTGRES, &b, &n, &multi, &e) == FM_E_INVAL);
    CHECK(strstr(e.msg, "NUL") != NULL);
    fm_buf_free(&b);
  }

  /* SQLite: [..] and `..` quote identifiers; block comments do not nest */
  CHECK(count_sqlite("SELECT [a?b], `c?d`, ? FROM t", NULL) == 1);
  CHECK(count_sqlite("SELECT /* /* ? */ ?", NULL) == 1);
  CHECK(count_sqlite("SELECT $1", NULL) == 0); /* SQLite itself refuses it: not a ? */
  CHECK(count_sqlite("CREATE TABLE a (x); CREATE TABLE b (y);", &multi) == 0 && multi);

  CHECK(fm_db_sql_blank(" -- x\n /* y */ ", 15));
  CHECK(!fm_db_sql_blank(" -- x\n z", 8));
  CHECK(fm_db_sql_starts_with("/* c */ insert into t", 21, "insert"));
  CHECK(fm_db_sql_starts_with("INSERT", 6, "insert"));
  CHECK(!fm_db_sql_starts_with("inserted", 8, "insert"));
}

static void test_pool(void) {
  char dir[] = "/tmp/fm-test-db-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char url[PATH_MAX + 32];
  snprintf(url, sizeof url, "sqlite:///%s/sub/t.db", dir); /* the sub dir is made on open */
  struct fm_db_pool_config cfg = {0};
  CHECK(fm_db_url_parse(url, &cfg.url, &err) == 0);
  cfg.size = 2;
  cfg.acquire_timeout_s = 0.05;
  cfg.connect_budget_s = 1;
  struct fm_db_pool *p = NULL;
  CHECK(fm_db_pool_open(&cfg, &p, &err) == 0);
  if (!p) return;
  CHECK_STR(fm_db_pool_driver(p)->name, "sqlite");

  struct fm_db_slot *a = NULL, *b = NULL, *c = NULL;
  struct fm_db_error e = {0};
  CHECK(fm_db_pool_acquire(p, -1, &a, &e) == 0);
  CHECK(fm_db_pool_acquire(p, -1, &b, &e) == 0);
  CHECK(a && b && a != b);
  CHECK(fm_db_pool_acquire(p, -1, &c, &e) == -1); /* exhausted after 50 ms */
  CHECK_STR(e.sqlstate, "53300");
  CHECK(strstr(e.msg, "database pool exhausted") != NULL);
  struct fm_db_stats st;
  fm_db_pool_stats(p, &st);
  CHECK(st.in_use == 2 && st.open == 2 && st.timeouts == 1);

  struct fm_db_result r = {0};
  CHECK(fm_db_slot_exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)", 54, NULL, 0, &r, &e) == 0);
  struct fm_db_value v[2] = {{.type = FM_DB_TEXT, .s = "x?y", .n = 3}, {.type = FM_DB_INT, .i = 7}};
  const char *ins = "INSERT INTO t (v, id) VALUES (?, ?)";
  CHECK(fm_db_slot_exec(a, ins, strlen(ins), v, 2, &r, &e) == 0);
  CHECK(r.changes == 1 && r.has_last_id && r.last_id.i == 7);
  CHECK(fm_db_slot_exec(a, ins, strlen(ins), v, 2, &r, &e) == -1);
  CHECK_STR(e.sqlstate, "23505");
  CHECK(!e.misuse && !e.conn_lost);
  CHECK(fm_db_slot_exec(a, ins, strlen(ins), v, 1, &r, &e) == -1);
  CHECK(e.misuse);
  CHECK(strstr(e.msg, "2 ? placeholders but 1 value was given") != NULL);
  const char *named = "SELECT :name";
  CHECK(fm_db_slot_exec(a, named, strlen(named), NULL, 0, &r, &e) == -1 && e.misuse);
  const char *two = "SELECT ?; SELECT ?";
  CHECK(fm_db_slot_exec(a, two, strlen(two), v, 2, &r, &e) == -1 && e.misuse);
  const char *sel = "SELECT id, v, NULL AS n, 1.5 AS f FROM t";
  CHECK(fm_db_slot_exec(b, sel, strlen(sel), NULL, 0, &r, &e) == 0);
  CHECK(r.nrows == 1 && r.ncols == 4);
  if (r.nrows == 1 && r.ncols == 4) {
    CHECK(r.cells[0].type == FM_DB_INT && r.cells[0].i == 7);
    CHECK(r.cells[1].type == FM_DB_TEXT && r.cells[1].len == 3);
    CHECK(memcmp(fm_db_result_text(&r, &r.cells[1]), "x?y", 3) == 0);
    CHECK(r.cells[2].type == FM_DB_NULL);
    CHECK(r.cells[3].type == FM_DB_FLOAT && r.cells[3].d == 1.5);
    CHECK(r.cols[3].len == 1 && fm_db_result_text(&r, &r.cols[3])[0] == 'f');
  }
  /* a result that would outgrow its byte limit fails instead of growing */
  struct fm_db_result small = {.max_bytes = 64};
  const char *big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) "
                    "SELECT x FROM c";
  CHECK(fm_db_slot_exec(b, big, strlen(big), NULL, 0, &small, &e) == -1);
  CHECK_STR(e.sqlstate, "54000");
  fm_db_result_free(&small);

  /* a transaction left open is rolled back when the connection goes back */
  CHECK(fm_db_slot_begin(a, &e) == 0);
  const char *del = "DELETE FROM t";
  CHECK(fm_db_slot_exec(a, del, strlen(del), NULL, 0, &r, &e) == 0 && r.changes == 1);
  fm_db_pool_release(p, a);
  fm_db_pool_release(p, b);
  CHECK(fm_db_pool_acquire(p, -1, &c, &e) == 0);
  const char *cnt = "SELECT count(*) AS n FROM t";
  CHECK(fm_db_slot_exec(c, cnt, strlen(cnt), NULL, 0, &r, &e) == 0);
  CHECK(r.nrows == 1 && r.cells[0].i == 1);
  fm_db_pool_release(p, c);
  fm_db_result_free(&r);
  fm_db_pool_stats(p, &st);
  CHECK(st.in_use == 0 && st.waiting == 0);
  fm_db_pool_close(p);

  /* a database that cannot be opened: retried for the budget, then a clear error */
  struct fm_db_pool_config bad = cfg;
  snprintf(bad.url.path, sizeof bad.url.path, "/proc/fm-no-such-dir/x.db");
  bad.connect_budget_s = 0.3;
  CHECK(fm_db_pool_open(&bad, &p, &err) == FM_E_CONNECT);
  CHECK(strstr(err.msg, "cannot connect") != NULL);
  CHECK(p == NULL);

  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
}

int main(void) {
  test_urls();
  test_placeholders();
  test_pool();
  return check_done();
}
