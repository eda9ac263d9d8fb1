/* repl.c: `faultmaven repl` and `faultmaven reload`, clients of the engine's admin socket.
 *
 * The code runs in the engine (admin.c, l_admin.c); this side reads input, sends it, and prints
 * what comes back. Interactive mode (stdin a terminal) edits lines with libedit, keeps history in
 * ~/.faultmaven_history (mode 0600), and continues a chunk while it is incomplete, like lua(1):
 * a chunk whose compile error ends in <eof> needs more lines (prompt ">> "). Completeness is
 * checked here with a bare Lua state that compiles and never runs anything.
 *
 * Ctrl-C while a command runs sends {"op":"cancel"}; the engine answers "cancelled" and the
 * session goes on. Ctrl-C at the prompt discards the input so far; Ctrl-D exits. */
#include "repl.h"

#include "admin.h"
#include "buf.h"
#include "util.h"

#include <editline/readline.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <lauxlib.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_ANSWER (64u << 20) /* largest frame accepted from the engine */
#define HELLO_TIMEOUT_MS 10000
#define HISTORY_MAX 1000

struct client {
  int fd;
  int pid; /* the engine's, from its hello */
  const char *path;
  int interactive;
};

static volatile sig_atomic_t g_sigint;
static int g_sigpipe[2] = {-1, -1};

static void on_sigint(int sig) {
  (void)sig;
  int e = errno;
  g_sigint = 1;
  if (g_sigpipe[1] >= 0) {
    ssize_t w = write(g_sigpipe[1], "x", 1);
    (void)w;
  }
  errno = e;
}

static void drain_sigpipe(void) {
  char buf[64];
  while (g_sigpipe[0] >= 0 && read(g_sigpipe[0], buf, sizeof buf) > 0) {
  }
}

/* SIGINT to a handler that notes it and wakes poll(); no SA_RESTART, so a blocking read in
 * libedit returns (readline then returns NULL with g_sigint set). */
static int catch_sigint(void) {
  if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGINT, &sa, NULL);
}

/* ---- frames ------------------------------------------------------------------------------- */

/* Sends {"op": op [, "code": code]}. */
static int send_request(struct client *c, const char *op, const char *code, size_t len) {
  struct fm_buf b = {0};
  fm_buf_add(&b, "\0\0\0\0{\"op\":", 10);
  fm_buf_add_json_str(&b, op, strlen(op));
  if (code) {
    fm_buf_adds(&b, ",\"code\":");
    fm_buf_add_json_str(&b, code, len);
  }
  fm_buf_addc(&b, '}');
  if (!b.p) return -1;
  size_t n = b.len - 4;
  if (n > FM_ADMIN_MAX_FRAME) {
    fm_buf_free(&b);
    errno = EMSGSIZE;
    return -2;
  }
  b.p[0] = (char)(n >> 24);
  b.p[1] = (char)(n >> 16);
  b.p[2] = (char)(n >> 8);
  b.p[3] = (char)n;
  int rc = fm_send_all(c->fd, b.p, b.len);
  fm_buf_free(&b);
  return rc;
}

/* Reads exactly n bytes. While `busy`, a Ctrl-C sends a cancel and the wait goes on. timeout_ms
 * -1 waits for ever. Returns 0, or -1 (connection closed or timed out). */
static int read_exact(struct client *c, char *p, size_t n, int busy, int timeout_ms) {
  while (n > 0) {
    struct pollfd pf[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = g_sigpipe[0], .events = POLLIN}};
    int rc = poll(pf, g_sigpipe[0] >= 0 ? 2 : 1, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return -1;
    if (g_sigpipe[0] >= 0 && pf[1].revents) {
      drain_sigpipe();
      g_sigint = 0;
      if (busy) {
        if (c->interactive) fputc('\n', stderr); /* after the ^C the terminal echoed */
        send_request(c, "cancel", NULL, 0);        /* the answer says "cancelled" */
      }
    }
    if (!pf[0].revents) continue;
    ssize_t r = recv(c->fd, p, n, 0);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* The next frame from the engine as a JSON object, or NULL when the connection ended. */
static json_t *read_frame(struct client *c, int busy, int timeout_ms) {
  unsigned char h[4];
  if (read_exact(c, (char *)h, 4, busy, timeout_ms)) return NULL;
  size_t n = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
  if (n == 0 || n > MAX_ANSWER) return NULL;
  char *body = malloc(n);
  if (!body) return NULL;
  json_t *j = NULL;
  if (read_exact(c, body, n, busy, timeout_ms) == 0) {
    json_error_t jerr;
    j = json_loadb(body, n, JSON_ALLOW_NUL, &jerr);
    if (j && !json_is_object(j)) {
      json_decref(j);
      j = NULL;
    }
  }
  free(body);
  return j;
}

static const char *jstr(json_t *o, const char *k, size_t *len) {
  json_t *v = json_object_get(o, k);
  if (len) *len = json_is_string(v) ? json_string_length(v) : 0;
  return json_is_string(v) ? json_string_value(v) : "";
}

/* Sends one request and waits for its answer (a result, or an error frame). NULL: the
 * connection ended (message printed). */
static json_t *request(struct client *c, const char *op, const char *code, size_t len) {
  int rc = send_request(c, op, code, len);
  if (rc == -2) {
    char msg[96];
    snprintf(msg, sizeof msg, "faultmaven: the code is too large (at most %u bytes once encoded)",
             FM_ADMIN_MAX_FRAME);
    return json_pack("{s:s,s:b,s:s}", "type", "result", "ok", 0, "error", msg);
  }
  if (rc < 0) {
    fprintf(stderr, "faultmaven: the engine closed the admin connection\n");
    return NULL;
  }
  json_t *j = read_frame(c, 1, -1);
  if (!j) fprintf(stderr, "faultmaven: the engine closed the admin connection\n");
  return j;
}

/* Prints an answer: output and the value on stdout, an error on stderr. Returns 0 if ok. */
static int show(json_t *r) {
  size_t n;
  const char *s = jstr(r, "output", &n);
  fwrite(s, 1, n, stdout);
  int ok = json_is_true(json_object_get(r, "ok"));
  if (ok) {
    s = jstr(r, "result", &n);
    if (n) {
      fwrite(s, 1, n, stdout);
      fputc('\n', stdout);
    }
  }
  fflush(stdout);
  if (!ok) {
    s = jstr(r, "error", &n);
    fwrite(s, 1, n, stderr);
    fputc('\n', stderr);
  }
  if (json_is_true(json_object_get(r, "vm_reset")))
    fputs("(the admin VM hit its memory cap and was replaced: globals are gone)\n", stderr);
  fflush(stderr);
  return ok ? 0 : 1;
}

/* ---- connecting --------------------------------------------------------------------------- */

static void no_engine_hint(const struct fm_repl_opts *o) {
  if (o->reload)
    fputs("  without the admin socket, reload with: kill -HUP <pid of faultmaven serve>\n", stderr);
  else
    fputs("  is `faultmaven serve` running with the same FM_DATA_DIR (or FM_ADMIN_SOCKET)?\n",
          stderr);
}

static int connect_engine(const struct fm_repl_opts *o, struct client *c) {
  const char *path = o->socket;
  c->fd = -1;
  c->path = path;
  if (!path || !*path || strcmp(path, "off") == 0) {
    fprintf(stderr, "faultmaven: the admin socket is off (FM_ADMIN_SOCKET=off)\n");
    no_engine_hint(o);
    return -1;
  }
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    fprintf(stderr, "faultmaven: admin socket path too long: %s\n", path);
    return -1;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    fprintf(stderr, "faultmaven: cannot connect to the admin socket %s: %s\n", path, strerror(e));
    if (e == EACCES)
      fputs("  the socket is mode 0600: run this as the user the engine runs as\n", stderr);
    else
      no_engine_hint(o);
    return -1;
  }
  c->fd = fd;
  json_t *hello = read_frame(c, 0, HELLO_TIMEOUT_MS);
  if (!hello) {
    fprintf(stderr, "faultmaven: no greeting on the admin socket %s\n", path);
    close(fd);
    return -1;
  }
  if (!json_is_true(json_object_get(hello, "ok"))) {
    fprintf(stderr, "faultmaven: the engine refused the connection: %s\n",
            jstr(hello, "error", NULL));
    json_decref(hello);
    close(fd);
    return -1;
  }
  c->pid = (int)json_integer_value(json_object_get(hello, "pid"));
  json_decref(hello);
  return 0;
}

/* ---- modes -------------------------------------------------------------------------------- */

static int run_once(struct client *c, const char *code, size_t len) {
  json_t *r = request(c, "eval", code, len);
  if (!r) return 1;
  int rc = show(r);
  json_decref(r);
  return rc;
}

static int run_reload(struct client *c) {
  json_t *r = request(c, "reload", NULL, 0);
  if (!r) return 1;
  int rc = show(r);
  json_decref(r);
  return rc;
}

/* stdin, not a terminal: the whole of it is one chunk. Returns 0, or 1 (message printed). */
static int read_stdin(struct fm_buf *b) {
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
    if (b->len + n > FM_ADMIN_MAX_FRAME || fm_buf_add(b, chunk, n)) {
      fprintf(stderr, "faultmaven: the script on stdin is too large (at most %u bytes)\n",
              FM_ADMIN_MAX_FRAME);
      return 1;
    }
  }
  if (ferror(stdin)) {
    fprintf(stderr, "faultmaven: cannot read stdin: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}

/* 1 when the chunk is incomplete Lua (its compile error ends in <eof>), like lua(1). */
static int incomplete(lua_State *L, const char *s, size_t n) {
  struct fm_buf b = {0};
  fm_buf_adds(&b, "return ");
  fm_buf_add(&b, s, n);
  fm_buf_addc(&b, ';');
  int st = luaL_loadbuffer(L, fm_buf_cstr(&b), b.len, "=repl");
  fm_buf_free(&b);
  lua_settop(L, 0);
  if (st == LUA_OK) return 0;
  st = luaL_loadbuffer(L, s, n, "=repl");
  int more = 0;
  if (st == LUA_ERRSYNTAX) {
    size_t ml;
    const char *msg = lua_tolstring(L, -1, &ml);
    more = msg && ml >= 5 && memcmp(msg + ml - 5, "<eof>", 5) == 0;
  }
  lua_settop(L, 0);
  return more;
}

static int blank(const char *s) {
  for (; *s; s++)
    if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
  return 1;
}

static void history_path(char *out, size_t outsz) {
  const char *home = getenv("HOME");
  out[0] = '\0';
  if (home && *home) snprintf(out, outsz, "%s/.faultmaven_history", home);
}

static int run_interactive(struct client *c) {
  lua_State *L = luaL_newstate();
  if (!L) return 1;
  c->interactive = 1;
  char hist[PATH_MAX];
  history_path(hist, sizeof hist);
  umask(077); /* the history may hold secrets typed at the prompt */
  using_history();
  stifle_history(HISTORY_MAX);
  if (hist[0]) read_history(hist);
  rl_catch_signals = 0; /* our SIGINT handler: it discards the line or cancels the command */

  printf("faultmaven %s admin REPL, engine pid %d, on %s\n"
         "admin.help() lists the admin functions; Ctrl-C cancels, Ctrl-D exits.\n",
         FM_VERSION, c->pid, c->path);
  fflush(stdout);

  struct fm_buf chunk = {0};
  int rc = 0;
  for (;;) {
    g_sigint = 0;
    drain_sigpipe();
    char *line = readline(chunk.len ? ">> " : "> ");
    if (g_sigint) { /* Ctrl-C at the prompt: drop what was typed so far */
      free(line);
      chunk.len = 0;
      fputs("^C\n", stdout);
      fflush(stdout);
      continue;
    }
    if (!line) { /* Ctrl-D */
      fputc('\n', stdout);
      break;
    }
    if (chunk.len) fm_buf_addc(&chunk, '\n');
    fm_buf_adds(&chunk, line);
    free(line);
    if (chunk.len == 0 || blank(fm_buf_cstr(&chunk))) {
      chunk.len = 0;
      continue;
    }
    if (incomplete(L, chunk.p, chunk.len)) continue;
    add_history(chunk.p);
    if (hist[0] && write_history(hist) == 0) chmod(hist, 0600);
    json_t *r = request(c, "eval", chunk.p, chunk.len);
    if (!r) {
      rc = 1;
      break;
    }
    if (json_is_true(json_object_get(r, "incomplete"))) { /* the engine wants more */
      json_decref(r);
      continue;
    }
    show(r);
    json_decref(r);
    chunk.len = 0;
  }
  fm_buf_free(&chunk);
  lua_close(L);
  return rc;
}

/* ---- entry points ------------------------------------------------------------------------- */

int fm_repl_parse_args(int argc, char **argv, int first, struct fm_repl_opts *o) {
  static const char *const names[] = {"-e", "--socket", "--data-dir", "--home"};
  for (int i = first; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    size_t k;
    for (k = 0; k < sizeof names / sizeof names[0]; k++) {
      size_t nl = strlen(names[k]);
      if (strncmp(a, names[k], nl) == 0 && (a[nl] == '\0' || a[nl] == '=')) {
        if (a[nl] == '=') val = a + nl + 1;
        else if (i + 1 < argc) val = argv[++i];
        break;
      }
    }
    if (k == sizeof names / sizeof names[0] || (k == 0 && o->reload)) {
      fprintf(stderr, "faultmaven: unknown option '%s' (see faultmaven --help)\n", a);
      return 2;
    }
    if (!val) {
      fprintf(stderr, "faultmaven: option %s needs a value\n", names[k]);
      return 2;
    }
    if (k == 0) o->code = val;
    else if (k == 1) o->socket = val;
    else setenv(k == 2 ? "FM_DATA_DIR" : "FM_HOME", val, 1);
  }
  return 0;
}

int fm_repl_run(const struct fm_repl_opts *o) {
  struct client c = {0};
  struct fm_buf script = {0};
  int piped = !o->reload && !o->code && !isatty(STDIN_FILENO);
  if (connect_engine(o, &c)) return 1;
  int rc = 1;
  if (piped && read_stdin(&script)) goto out;
  /* From here Ctrl-C cancels the running command (or discards the input at the prompt). */
  if (catch_sigint() != 0) {
    fprintf(stderr, "faultmaven: cannot set up signals: %s\n", strerror(errno));
    goto out;
  }
  if (o->reload) rc = run_reload(&c);
  else if (o->code) rc = run_once(&c, o->code, strlen(o->code));
  else if (piped) rc = run_once(&c, fm_buf_cstr(&script), script.len);
  else rc = run_interactive(&c);
out:
  fm_buf_free(&script);
  close(c.fd);
  return rc;
}
