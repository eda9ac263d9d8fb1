/* admin.c: the admin socket of `faultmaven serve`, the server side of `faultmaven repl`.
 *
 * Where: FM_ADMIN_SOCKET (default <data dir>/admin.sock; `off` disables it), a stream unix socket
 * created with mode 0600. Every connection's peer is checked with SO_PEERCRED: only the engine's
 * own effective uid is served; any other gets a refusal and is disconnected. A stale socket file
 * is removed at start; if another engine answers on it, this one logs an error and serves without
 * an admin socket. The file is unlinked at shutdown.
 *
 * Protocol (version 1). Every message, either way, is one frame: a 4-byte big-endian length N and
 * N bytes of one JSON object (UTF-8). A client frame is at most FM_ADMIN_MAX_FRAME (1 MiB) and,
 * once its first byte arrived, must be complete within 30 s.
 *
 *   server, on connect   {"type":"hello","ok":true,"protocol":1,"engine_version":"0.1.0","pid":N}
 *                        {"type":"hello","ok":false,"error":"..."}  refused (other uid, too many
 *                        sessions), then the connection is closed
 *   client               {"op":"eval","code":"..."}  run code in the admin VM (lua(1)'s REPL rules)
 *                        {"op":"reload"}             what `faultmaven reload` runs
 *                        {"op":"cancel"}             cancel this session's running eval/reload;
 *                                                    no answer of its own
 *   server, per request  {"type":"result","ok":bool,"outcome":"ok"|"error"|"cancelled",
 *                         "output":"...","result":"...","error":"...","duration_ms":1.5,
 *                         "incomplete":true (chunk ended early), "vm_reset":true (globals lost)}
 *   server, on a bad frame {"type":"error","error":"..."}: a malformed frame only gets this; an
 *                        oversized or stalled one also closes the connection
 *
 * One session runs one request at a time (another one meanwhile is answered with an error). A
 * session that disconnects cancels its running evaluation. At most FM_ADMIN_MAX_SESSIONS (8)
 * sessions at once. Evaluations run on a thread of their own, one at a time over the single admin
 * VM (g.vm_mu), so the session thread keeps reading the socket for a cancel.
 *
 * Audit log: FM_ADMIN_AUDIT_LOG (default <data dir>/admin-audit.log), mode 0600, O_APPEND, one
 * JSON line per request (ts, event, uid, pid, code, outcome, error, duration_ms) and per refused
 * connection (ts, event "refused", uid, pid, reason). If it cannot be opened the admin socket
 * does not start: nothing runs unrecorded. */
#include "admin.h"

#include "log.h"
#include "util.h"
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FRAME_STALL_S 30.0
#define SEND_TIMEOUT_S 30
#define STOP_WAIT_S 5.0
#define AUDIT_MAX_ERROR 4096

enum { OP_EVAL, OP_RELOAD };
enum { FRAME_NONE = 0, FRAME_OK = 1, FRAME_BAD = 2, FRAME_FATAL = -1 };
enum { IO_DATA, IO_EOF, IO_STOP, IO_EXTRA, IO_TIMEOUT, IO_AGAIN };

struct session;

struct job {
  struct session *s;
  int op;
  char *code;
  size_t code_len;
  atomic_int cancel;
  int efd; /* eventfd: written once when the evaluation is over */
  pthread_t thread;
  double t0;
  struct fm_admin_eval ev;
};

struct session {
  int used;         /* slot taken; the listener (or stop) clears it after joining the thread */
  atomic_int done;  /* the thread is over and can be joined */
  pthread_t thread;
  int fd;
  unsigned uid;
  int pid;
  struct fm_buf in;  /* bytes received, not yet a whole frame */
  double frame_t0;   /* when the partial frame in `in` started; 0 when none */
  int closing;       /* peer gone or protocol broken: stop reading, answer nothing more */
  int stop_seen;     /* the engine is stopping */
  struct job *job;   /* the running request (g.mu) */
};

static struct {
  int running;
  int lfd;
  int stop_pipe[2];
  pthread_t listener;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  dev_t dev;
  ino_t ino;
  int audit_fd;
  pthread_mutex_t audit_mu;
  struct fm_admin_vm *vm;
  pthread_mutex_t vm_mu; /* one evaluation at a time */
  pthread_mutex_t mu;    /* sessions[], stopping */
  int stopping;
  struct session sessions[FM_ADMIN_MAX_SESSIONS];
} g = {.lfd = -1,
       .stop_pipe = {-1, -1},
       .audit_fd = -1,
       .audit_mu = PTHREAD_MUTEX_INITIALIZER,
       .vm_mu = PTHREAD_MUTEX_INITIALIZER,
       .mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- frames ------------------------------------------------------------------------------- */

/* A frame under construction: 4 bytes reserved for the length, then the JSON text. */
static void frame_begin(struct fm_buf *b) { fm_buf_add(b, "\0\0\0\0{", 5); }

static int frame_send(int fd, struct fm_buf *b, int dontwait) {
  if (fm_buf_addc(b, '}') || b->len < 4) return -1;
  size_t n = b->len - 4;
  b->p[0] = (char)(n >> 24);
  b->p[1] = (char)(n >> 16);
  b->p[2] = (char)(n >> 8);
  b->p[3] = (char)n;
  if (!dontwait) return fm_send_all(fd, b->p, b->len);
  return send(fd, b->p, b->len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)b->len ? 0 : -1;
}

static void json_key_str(struct fm_buf *b, const char *key, const char *s, size_t n) {
  if (b->len && b->p[b->len - 1] != '{') fm_buf_addc(b, ',');
  fm_buf_add_json_str(b, key, strlen(key));
  fm_buf_addc(b, ':');
  fm_buf_add_json_str(b, s, n);
}

static void json_key_raw(struct fm_buf *b, const char *key, const char *raw) {
  if (b->len && b->p[b->len - 1] != '{') fm_buf_addc(b, ',');
  fm_buf_add_json_str(b, key, strlen(key));
  fm_buf_addc(b, ':');
  fm_buf_adds(b, raw);
}

static void send_error(struct session *s, const char *msg) {
  if (s->closing) return;
  struct fm_buf b = {0};
  frame_begin(&b);
  json_key_str(&b, "type", "error", 5);
  json_key_str(&b, "error", msg, strlen(msg));
  if (frame_send(s->fd, &b, 0)) s->closing = 1;
  fm_buf_free(&b);
}

/* Takes the next whole frame from s->in. FRAME_OK: *out is a JSON object (decref it);
 * FRAME_BAD: consumed but malformed (why says so); FRAME_FATAL: the stream cannot go on. */
static int take_frame(struct session *s, json_t **out, char *why, size_t whysz) {
  *out = NULL;
  if (s->in.len < 4) return FRAME_NONE;
  const unsigned char *u = (const unsigned char *)s->in.p;
  size_t n = ((size_t)u[0] << 24) | ((size_t)u[1] << 16) | ((size_t)u[2] << 8) | u[3];
  if (n == 0 || n > FM_ADMIN_MAX_FRAME) {
    snprintf(why, whysz, "frame of %zu bytes refused (1 to %u): closing", n, FM_ADMIN_MAX_FRAME);
    return FRAME_FATAL;
  }
  if (s->in.len < 4 + n) return FRAME_NONE;
  json_error_t jerr;
  json_t *j = json_loadb(s->in.p + 4, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  memmove(s->in.p, s->in.p + 4 + n, s->in.len - 4 - n);
  s->in.len -= 4 + n;
  s->frame_t0 = s->in.len ? fm_time_mono() : 0;
  if (!j || !json_is_object(j)) {
    snprintf(why, whysz, "malformed frame: %.120s", j ? "not a JSON object" : jerr.text);
    json_decref(j);
    return FRAME_BAD;
  }
  *out = j;
  return FRAME_OK;
}

/* Waits for the socket (unless closing), the stop pipe (until seen) and extra_fd (-1: none), and
 * reads what the socket has. */
static int wait_io(struct session *s, int extra_fd) {
  struct pollfd p[3];
  int n = 0, ifd = -1, istop = -1, iext = -1;
  if (!s->closing) p[ifd = n++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
  if (!s->stop_seen) p[istop = n++] = (struct pollfd){.fd = g.stop_pipe[0], .events = POLLIN};
  if (extra_fd >= 0) p[iext = n++] = (struct pollfd){.fd = extra_fd, .events = POLLIN};
  if (n == 0) return IO_EOF;
  int timeout = -1;
  if (s->frame_t0 > 0 && !s->closing) {
    double left = FRAME_STALL_S - (fm_time_mono() - s->frame_t0);
    timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
  }
  int rc = poll(p, (nfds_t)n, timeout);
  if (rc < 0) return IO_AGAIN; /* EINTR */
  if (rc == 0) return IO_TIMEOUT;
  if (iext >= 0 && p[iext].revents) return IO_EXTRA;
  if (istop >= 0 && p[istop].revents) {
    s->stop_seen = 1;
    return IO_STOP;
  }
  if (ifd < 0 || !p[ifd].revents) return IO_AGAIN;
  char chunk[65536];
  ssize_t r = recv(s->fd, chunk, sizeof chunk, 0);
  if (r < 0 && (errno == EINTR || errno == EAGAIN)) return IO_AGAIN;
  if (r <= 0) return IO_EOF;
  if (s->in.len == 0) s->frame_t0 = fm_time_mono();
  if (fm_buf_add(&s->in, chunk, (size_t)r)) return IO_EOF;
  return IO_DATA;
}

/* ---- audit log ---------------------------------------------------------------------------- */

static void audit_write(struct fm_buf *b) {
  fm_buf_adds(b, "}\n");
  pthread_mutex_lock(&g.audit_mu);
  const char *p = fm_buf_cstr(b);
  size_t n = b->len;
  while (n > 0 && g.audit_fd >= 0) {
    ssize_t w = write(g.audit_fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      fm_error("admin audit log: write failed: %s", strerror(errno));
      break;
    }
    p += w;
    n -= (size_t)w;
  }
  pthread_mutex_unlock(&g.audit_mu);
}

static void audit_begin(struct fm_buf *b, const char *event, unsigned uid, int pid) {
  char ts[40], num[64];
  fm_time_iso8601(fm_time_now(), ts, sizeof ts);
  fm_buf_adds(b, "{");
  json_key_str(b, "ts", ts, strlen(ts));
  json_key_str(b, "event", event, strlen(event));
  snprintf(num, sizeof num, "%u", uid);
  json_key_raw(b, "uid", num);
  snprintf(num, sizeof num, "%d", pid);
  json_key_raw(b, "pid", num);
}

static void audit_refused(unsigned uid, int pid, const char *reason) {
  struct fm_buf b = {0};
  audit_begin(&b, "refused", uid, pid);
  json_key_str(&b, "reason", reason, strlen(reason));
  audit_write(&b);
  fm_buf_free(&b);
}

static const char *const outcome_names[] = {"ok", "error", "cancelled"};

/* Written before a command runs, so one that never ends (stuck in a C call, the engine killed)
 * is on record too. */
static void audit_start(const struct session *s, const struct job *j) {
  struct fm_buf b = {0};
  audit_begin(&b, j->op == OP_EVAL ? "eval" : "reload", s->uid, s->pid);
  json_key_str(&b, "code", j->code, j->code_len);
  json_key_str(&b, "outcome", "started", 7);
  audit_write(&b);
  fm_buf_free(&b);
}

static void audit_job(const struct session *s, const struct job *j, double ms) {
  struct fm_buf b = {0};
  audit_begin(&b, j->op == OP_EVAL ? "eval" : "reload", s->uid, s->pid);
  json_key_str(&b, "code", j->code, j->code_len);
  const char *outcome = outcome_names[j->ev.outcome >= 0 && j->ev.outcome <= 2 ? j->ev.outcome : 1];
  json_key_str(&b, "outcome", outcome, strlen(outcome));
  if (j->ev.outcome == FM_ADMIN_OK) {
    json_key_raw(&b, "error", "null");
  } else {
    /* the message, without the traceback */
    const char *e = fm_buf_cstr((struct fm_buf *)&j->ev.error);
    const char *tb = strstr(e, "\nstack traceback:");
    size_t n = tb ? (size_t)(tb - e) : strlen(e);
    json_key_str(&b, "error", e, n < AUDIT_MAX_ERROR ? n : AUDIT_MAX_ERROR);
  }
  char num[64];
  snprintf(num, sizeof num, "%.3f", ms);
  json_key_raw(&b, "duration_ms", num);
  audit_write(&b);
  fm_buf_free(&b);
}

static int audit_open(const char *path, struct fm_err *err) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    if (fm_mkdirs(dir, 0700, err)) return FM_E_IO;
  }
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return fm_err_set(err, FM_E_IO, "admin audit log %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) == 0 && (st.st_mode & 077) && fchmod(fd, 0600) != 0)
    fm_warn("admin audit log %s is mode %o and cannot be made 0600: %s", path,
            (unsigned)(st.st_mode & 0777), strerror(errno));
  g.audit_fd = fd;
  return 0;
}

/* ---- requests ----------------------------------------------------------------------------- */

static void *job_main(void *arg) {
  struct job *j = arg;
  pthread_mutex_lock(&g.vm_mu);
  if (atomic_load(&j->cancel)) {
    j->ev.outcome = FM_ADMIN_CANCELLED;
    fm_buf_adds(&j->ev.error, "cancelled");
  } else if (j->op == OP_EVAL) {
    fm_admin_vm_eval(g.vm, &j->ev);
  } else {
    fm_admin_vm_reload(g.vm, &j->ev);
  }
  pthread_mutex_unlock(&g.vm_mu);
  uint64_t one = 1;
  while (write(j->efd, &one, sizeof one) < 0 && errno == EINTR) {
  }
  return NULL;
}

static void send_result(struct session *s, struct job *j, double ms) {
  struct fm_buf b = {0};
  struct fm_admin_eval *ev = &j->ev;
  const char *outcome = outcome_names[ev->outcome >= 0 && ev->outcome <= 2 ? ev->outcome : 1];
  frame_begin(&b);
  json_key_str(&b, "type", "result", 6);
  json_key_raw(&b, "ok", ev->outcome == FM_ADMIN_OK ? "true" : "false");
  json_key_str(&b, "outcome", outcome, strlen(outcome));
  json_key_str(&b, "output", fm_buf_cstr(&ev->output), ev->output.len);
  json_key_str(&b, "result", fm_buf_cstr(&ev->result), ev->result.len);
  json_key_str(&b, "error", fm_buf_cstr(&ev->error), ev->error.len);
  if (ev->incomplete) json_key_raw(&b, "incomplete", "true");
  if (ev->vm_reset) json_key_raw(&b, "vm_reset", "true");
  char num[64];
  snprintf(num, sizeof num, "%.3f", ms);
  json_key_raw(&b, "duration_ms", num);
  if (frame_send(s->fd, &b, 0)) s->closing = 1;
  fm_buf_free(&b);
}

static void job_free(struct job *j) {
  if (!j) return;
  if (j->efd >= 0) close(j->efd);
  free(j->code);
  fm_admin_eval_free(&j->ev);
  free(j);
}

/* Frames that arrive while a request runs: cancel, or a complaint. */
static void frames_while_busy(struct session *s, struct job *j) {
  for (;;) {
    json_t *req;
    char why[160];
    int fr = take_frame(s, &req, why, sizeof why);
    if (fr == FRAME_NONE) return;
    if (fr == FRAME_FATAL) {
      send_error(s, why);
      s->closing = 1;
      atomic_store(&j->cancel, 1);
      return;
    }
    if (fr == FRAME_BAD) {
      send_error(s, why);
      continue;
    }
    const char *op = json_string_value(json_object_get(req, "op"));
    if (op && strcmp(op, "cancel") == 0) atomic_store(&j->cancel, 1);
    else send_error(s, "a request is running: send {\"op\":\"cancel\"} or wait for its result");
    json_decref(req);
  }
}

/* Runs one eval/reload on its own thread while watching the socket. Returns 0 to end the
 * session. */
static int run_job(struct session *s, int op, const char *code, size_t len) {
  struct job *j = calloc(1, sizeof *j);
  if (!j) return 0;
  j->efd = -1;
  j->s = s;
  j->op = op;
  j->t0 = fm_time_mono();
  j->code = malloc(len + 1);
  j->efd = eventfd(0, EFD_CLOEXEC);
  if (!j->code || j->efd < 0) {
    send_error(s, "out of resources");
    job_free(j);
    return !s->closing;
  }
  memcpy(j->code, code, len);
  j->code[len] = '\0';
  j->code_len = len;
  j->ev.code = j->code;
  j->ev.len = len;
  j->ev.cancel = &j->cancel;

  pthread_mutex_lock(&g.mu);
  int stopping = g.stopping;
  if (!stopping) s->job = j;
  pthread_mutex_unlock(&g.mu);
  if (!stopping) audit_start(s, j);
  if (stopping || pthread_create(&j->thread, NULL, job_main, j) != 0) {
    pthread_mutex_lock(&g.mu);
    s->job = NULL;
    pthread_mutex_unlock(&g.mu);
    send_error(s, stopping ? "the engine is shutting down" : "cannot start the evaluation");
    job_free(j);
    return 0;
  }

  for (;;) {
    int r = wait_io(s, j->efd);
    if (r == IO_EXTRA) break;
    if (r == IO_DATA) frames_while_busy(s, j);
    else if (r == IO_EOF) { /* the client left: its evaluation has no one to answer to */
      s->closing = 1;
      atomic_store(&j->cancel, 1);
    } else if (r == IO_STOP) {
      atomic_store(&j->cancel, 1);
    } else if (r == IO_TIMEOUT) {
      send_error(s, "frame incomplete after 30 s: closing");
      s->closing = 1;
      atomic_store(&j->cancel, 1);
    }
  }
  pthread_join(j->thread, NULL);
  pthread_mutex_lock(&g.mu);
  s->job = NULL;
  pthread_mutex_unlock(&g.mu);

  double ms = (fm_time_mono() - j->t0) * 1000.0;
  if (!s->closing) send_result(s, j, ms);
  audit_job(s, j, ms);
  job_free(j);
  return !s->closing && !s->stop_seen;
}

/* One request frame. Returns 0 to end the session. */
static int handle(struct session *s, json_t *req) {
  const char *op = json_string_value(json_object_get(req, "op"));
  if (!op) {
    send_error(s, "a request needs \"op\": eval, reload or cancel");
    return !s->closing;
  }
  if (strcmp(op, "eval") == 0) {
    json_t *code = json_object_get(req, "code");
    if (!json_is_string(code)) {
      send_error(s, "eval needs \"code\", a string");
      return !s->closing;
    }
    return run_job(s, OP_EVAL, json_string_value(code), json_string_length(code));
  }
  if (strcmp(op, "reload") == 0) return run_job(s, OP_RELOAD, "admin.reload()", 14);
  if (strcmp(op, "cancel") == 0) return 1; /* nothing is running */
  char msg[160];
  snprintf(msg, sizeof msg, "unknown op \"%.60s\": eval, reload or cancel", op);
  send_error(s, msg);
  return !s->closing;
}

static void send_hello(struct session *s) {
  struct fm_buf b = {0};
  char num[32];
  frame_begin(&b);
  json_key_str(&b, "type", "hello", 5);
  json_key_raw(&b, "ok", "true");
  json_key_raw(&b, "protocol", "1");
  json_key_str(&b, "engine_version", FM_VERSION, strlen(FM_VERSION));
  snprintf(num, sizeof num, "%d", (int)getpid());
  json_key_raw(&b, "pid", num);
  if (frame_send(s->fd, &b, 0)) s->closing = 1;
  fm_buf_free(&b);
}

static void *session_main(void *arg) {
  struct session *s = arg;
  send_hello(s);
  while (!s->closing) {
    json_t *req;
    char why[160];
    int fr = take_frame(s, &req, why, sizeof why);
    if (fr == FRAME_FATAL) {
      send_error(s, why);
      break;
    }
    if (fr == FRAME_BAD) {
      send_error(s, why);
      continue;
    }
    if (fr == FRAME_OK) {
      int go_on = handle(s, req);
      json_decref(req);
      if (!go_on) break;
      continue;
    }
    int r = wait_io(s, -1);
    if (r == IO_DATA || r == IO_AGAIN) continue;
    if (r == IO_TIMEOUT) send_error(s, "frame incomplete after 30 s: closing");
    break; /* EOF, stop, timeout */
  }
  pthread_mutex_lock(&g.mu);
  close(s->fd);
  s->fd = -1;
  pthread_mutex_unlock(&g.mu);
  fm_buf_free(&s->in);
  atomic_store(&s->done, 1);
  return NULL;
}

/* ---- accepting ---------------------------------------------------------------------------- */

static void refuse(int fd, const char *msg) {
  struct fm_buf b = {0};
  frame_begin(&b);
  json_key_str(&b, "type", "hello", 5);
  json_key_raw(&b, "ok", "false");
  json_key_str(&b, "error", msg, strlen(msg));
  frame_send(fd, &b, 1);
  fm_buf_free(&b);
  shutdown(fd, SHUT_WR);
  close(fd);
}

/* Joins sessions whose thread is over, so their slots can be reused. */
static void reap_sessions(void) {
  for (int i = 0; i < FM_ADMIN_MAX_SESSIONS; i++) {
    struct session *s = &g.sessions[i];
    if (s->used && atomic_load(&s->done)) {
      pthread_join(s->thread, NULL);
      pthread_mutex_lock(&g.mu);
      s->used = 0;
      pthread_mutex_unlock(&g.mu);
    }
  }
}

static void accept_one(int fd) {
  struct ucred cr;
  socklen_t len = sizeof cr;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
    close(fd);
    return;
  }
  char msg[200];
  if (cr.uid != geteuid()) {
    snprintf(msg, sizeof msg,
             "uid %u is not the engine's user (uid %u); run faultmaven repl as that user",
             (unsigned)cr.uid, (unsigned)geteuid());
    fm_warn("admin socket: refused pid %d: %s", (int)cr.pid, msg);
    audit_refused((unsigned)cr.uid, (int)cr.pid, msg);
    refuse(fd, msg);
    return;
  }
  reap_sessions();
  struct session *s = NULL;
  pthread_mutex_lock(&g.mu);
  for (int i = 0; i < FM_ADMIN_MAX_SESSIONS && !s; i++)
    if (!g.sessions[i].used) s = &g.sessions[i];
  if (s) {
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->fd = fd;
    s->uid = (unsigned)cr.uid;
    s->pid = (int)cr.pid;
  }
  pthread_mutex_unlock(&g.mu);
  if (!s) {
    snprintf(msg, sizeof msg, "too many admin sessions (%d)", FM_ADMIN_MAX_SESSIONS);
    audit_refused((unsigned)cr.uid, (int)cr.pid, msg);
    refuse(fd, msg);
    return;
  }
  struct timeval tv = {.tv_sec = SEND_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (pthread_create(&s->thread, NULL, session_main, s) != 0) {
    pthread_mutex_lock(&g.mu);
    s->used = 0;
    s->fd = -1;
    pthread_mutex_unlock(&g.mu);
    refuse(fd, "cannot start a session thread");
  }
}

static void *listener_main(void *arg) {
  (void)arg;
  for (;;) {
    struct pollfd p[2] = {{.fd = g.lfd, .events = POLLIN}, {.fd = g.stop_pipe[0], .events = POLLIN}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fm_error("admin socket: poll: %s", strerror(errno));
      return NULL;
    }
    if (p[1].revents) return NULL;
    if (!(p[0].revents & POLLIN)) continue;
    int fd = accept4(g.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) fm_sleep(0.1);
      continue;
    }
    accept_one(fd);
  }
}

/* ---- start and stop ----------------------------------------------------------------------- */

static int open_socket(const char *path, struct fm_err *err) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path)
    return fm_err_set(err, FM_E_INVAL, "admin socket path %s is too long (%zu bytes, at most %zu)",
                      path, strlen(path), sizeof sa.sun_path - 1);
  memcpy(sa.sun_path, path, strlen(path) + 1);
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    if (fm_mkdirs(dir, 0700, err)) return FM_E_IO;
  }

  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fm_err_set(err, FM_E_INVAL, "admin socket %s: the path exists and is not a socket",
                        path);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c < 0) return fm_err_set(err, FM_E_IO, "admin socket: %s", strerror(errno));
    int rc = connect(c, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(c);
    if (rc == 0 || e == EAGAIN || e == EINPROGRESS)
      return fm_err_set(err, FM_E_INVAL,
                        "another engine answers on the admin socket %s: not starting this one's "
                        "(set FM_ADMIN_SOCKET to another path, or off)", path);
    if (e != ECONNREFUSED)
      return fm_err_set(err, FM_E_IO, "admin socket %s exists and cannot be probed: %s", path,
                        strerror(e));
    if (unlink(path) != 0)
      return fm_err_set(err, FM_E_IO, "cannot remove the stale admin socket %s: %s", path,
                        strerror(errno));
    fm_info("removed a stale admin socket at %s", path);
  }

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fm_err_set(err, FM_E_IO, "admin socket: %s", strerror(errno));
  /* Linux creates the socket file with the socket inode's mode (less the umask): 0600 from the
   * start, so there is no moment where the file is open to others. chmod makes sure. */
  (void)fchmod(fd, 0600);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int e = errno;
    close(fd);
    return fm_err_set(err, FM_E_IO, "cannot bind the admin socket %s: %s", path, strerror(e));
  }
  if (chmod(path, 0600) != 0 || listen(fd, 16) != 0 || stat(path, &st) != 0) {
    int e = errno;
    close(fd);
    unlink(path);
    return fm_err_set(err, FM_E_IO, "admin socket %s: %s", path, strerror(e));
  }
  g.dev = st.st_dev;
  g.ino = st.st_ino;
  g.lfd = fd;
  snprintf(g.path, sizeof g.path, "%s", path);
  return 0;
}

/* Closes what start opened. stuck: a session thread that could not be stopped still uses the stop
 * pipe and the audit log, so they stay open (the process is exiting). */
static void close_all(int stuck) {
  if (g.lfd >= 0) {
    close(g.lfd);
    g.lfd = -1;
    /* only our own file: another engine may have taken the path since */
    struct stat st;
    if (g.path[0] && stat(g.path, &st) == 0 && st.st_dev == g.dev && st.st_ino == g.ino)
      unlink(g.path);
  }
  if (stuck) return;
  for (int i = 0; i < 2; i++) {
    if (g.stop_pipe[i] >= 0) close(g.stop_pipe[i]);
    g.stop_pipe[i] = -1;
  }
  if (g.audit_fd >= 0) close(g.audit_fd);
  g.audit_fd = -1;
}

void fm_admin_start(const struct fm_vm_opts *vm_opts) {
  struct fm_err err = {0};
  char sock[PATH_MAX], audit[PATH_MAX];
  if (g.running) return;
  if (fm_admin_vm_new(vm_opts, &g.vm, &err) ||
      fm_admin_vm_setting(g.vm, "admin_socket", sock, sizeof sock, &err) ||
      fm_admin_vm_setting(g.vm, "admin_audit_log", audit, sizeof audit, &err)) {
    fm_error("admin socket not started: %s", err.msg);
    goto fail;
  }
  if (strcmp(sock, "off") == 0 || sock[0] == '\0') {
    fm_info("admin socket off (FM_ADMIN_SOCKET=off)");
    goto fail;
  }
  if (pipe2(g.stop_pipe, O_CLOEXEC) != 0) {
    fm_error("admin socket not started: pipe: %s", strerror(errno));
    goto fail;
  }
  if (audit_open(audit, &err) || open_socket(sock, &err)) {
    fm_error("admin socket not started: %s", err.msg);
    goto fail;
  }
  g.stopping = 0;
  if (pthread_create(&g.listener, NULL, listener_main, NULL) != 0) {
    fm_error("admin socket not started: cannot start its thread");
    goto fail;
  }
  g.running = 1;
  {
    struct fm_buf f = {0};
    fm_buf_adds(&f, "\"socket\":");
    fm_buf_add_json_str(&f, sock, strlen(sock));
    fm_buf_adds(&f, ",\"audit_log\":");
    fm_buf_add_json_str(&f, audit, strlen(audit));
    fm_log_fields(FM_LOG_INFO, "admin socket listening", fm_buf_cstr(&f));
    fm_buf_free(&f);
  }
  return;

fail:
  close_all(0);
  fm_admin_vm_free(g.vm);
  g.vm = NULL;
}

/* Joins a session thread, giving up at the deadline (monotonic). */
static int join_until(pthread_t t, double deadline) {
  double left = deadline - fm_time_mono();
  if (left < 0) left = 0;
  struct timespec ts;
  fm_deadline_ts(CLOCK_REALTIME, left, &ts);
  return pthread_timedjoin_np(t, NULL, &ts);
}

void fm_admin_stop(void) {
  if (!g.running) return;
  pthread_mutex_lock(&g.mu);
  g.stopping = 1;
  for (int i = 0; i < FM_ADMIN_MAX_SESSIONS; i++)
    if (g.sessions[i].used && g.sessions[i].job) atomic_store(&g.sessions[i].job->cancel, 1);
  pthread_mutex_unlock(&g.mu);
  while (write(g.stop_pipe[1], "x", 1) < 0 && errno == EINTR) {
  }
  pthread_join(g.listener, NULL);

  /* Sessions see the stop pipe; running evaluations are cancelled at their next hook. One stuck
   * in C (a blocking call) is cut off: its socket is shut down, and if it still does not end the
   * VM is left alone (the process is exiting). */
  double deadline = fm_time_mono() + STOP_WAIT_S;
  int stuck = 0;
  for (int i = 0; i < FM_ADMIN_MAX_SESSIONS; i++) {
    struct session *s = &g.sessions[i];
    if (!s->used) continue;
    if (join_until(s->thread, deadline) != 0) {
      pthread_mutex_lock(&g.mu);
      if (s->fd >= 0) shutdown(s->fd, SHUT_RDWR);
      pthread_mutex_unlock(&g.mu);
      if (join_until(s->thread, fm_time_mono() + 1.0) != 0) {
        stuck++;
        continue;
      }
    }
    s->used = 0;
  }
  close_all(stuck);
  if (stuck) {
    fm_warn("admin socket: %d session(s) still running at shutdown; left behind", stuck);
  } else {
    fm_admin_vm_free(g.vm);
    g.vm = NULL;
  }
  g.running = 0;
}
