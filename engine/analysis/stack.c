/* stack.c: stack traces (Python, Java, Go, JavaScript) found in a stream of lines.
 *
 * A small state machine per language, fed one line at a time:
 *   Python  "Traceback (most recent call last):", '  File "f", line N, in fn' frames, then the
 *           "Type: message" line; the chain phrases ("During handling of the above exception..."
 *           and "The above exception was the direct cause...") make the earlier trace a cause of
 *           the next one.
 *   Java    a header line ("Exception in thread ..." or any line with a qualified exception type)
 *           followed by "\tat pkg.Class.method(File.java:N)" frames; "Caused by:" opens a cause;
 *           "... N more" is kept as the count of frames omitted.
 *   Go      "panic: ..." or "fatal error: ...", "goroutine N [state]:", then function lines each
 *           followed by a tab-indented "file.go:N +0x.." line; only the first goroutine's frames
 *           are kept, the others are counted.
 *   JS      a header ("TypeError: ...", "Error: ...") followed by "    at fn (file:L:C)" frames.
 *
 * Bounded: at most FM_ST_TRACES distinct traces (repeats of one are counted, keyed on the type
 * and the top frames), FM_ST_FRAMES frames and FM_ST_CAUSES causes each, fixed-size strings. */
#include "analysis.h"
#include "logs_internal.h"

#include <stdlib.h>
#include <string.h>

#define FM_ST_TRACES 32
#define FM_ST_FRAMES 24
#define FM_ST_CAUSES 8
#define FM_ST_FUNC 160
#define FM_ST_FILE 200
#define FM_ST_TYPE 128
#define FM_ST_MSG 320

enum { L_NONE, L_PY, L_JAVA, L_GO, L_JS };
static const char *const lang_names[] = {NULL, "python", "java", "go", "javascript"};

struct frame {
  char func[FM_ST_FUNC];
  char file[FM_ST_FILE];
  long line; /* 0: unknown */
};

struct exc {
  char type[FM_ST_TYPE];
  char msg[FM_ST_MSG];
  struct frame frames[FM_ST_FRAMES];
  int nframes;
  long frames_total;
  long more; /* Java "... N more" */
  struct frame app;
  int has_app;
};

struct trace {
  int lang;
  uint64_t line;
  uint64_t occurrences;
  uint64_t sig;
  long goroutines;
  struct exc top;
  struct exc causes[FM_ST_CAUSES];
  int ncauses;
};

enum { ST_IDLE, ST_PY, ST_JAVA, ST_GO, ST_JS };

struct fm_an_stack {
  struct trace *traces[FM_ST_TRACES];
  int ntraces;
  uint64_t count, dropped;
  struct trace *cur; /* being built */
  struct exc *cx;    /* the exception receiving frames */
  int state;
  int go_in_first;   /* still in the first goroutine */
  int go_func;       /* a Go function line is waiting for its file line */
  char go_fn[FM_ST_FUNC]; /* that function */
  int py_chain;      /* a chain phrase was seen after the last Python trace */
  int py_last;       /* index of the last finished Python trace, or -1 */
  int py_idle;       /* non-empty lines since the last Python trace ended */
  /* the last line that was not a frame: the header of a Java or JS trace */
  char hdr[FM_ST_TYPE + FM_ST_MSG + 64];
  size_t hdr_len;
  uint64_t hdr_no;
};

struct fm_an_stack *fm_an_stack_new(void) {
  struct fm_an_stack *s = calloc(1, sizeof *s);
  if (s) s->py_last = -1;
  return s;
}

void fm_an_stack_free(struct fm_an_stack *s) {
  if (!s) return;
  for (int i = 0; i < s->ntraces; i++) free(s->traces[i]);
  free(s->cur);
  free(s);
}

/* ---- small parsing helpers ------------------------------------------------------------------ */

static int starts(const char *p, size_t n, const char *lit) {
  size_t l = strlen(lit);
  return n >= l && memcmp(p, lit, l) == 0;
}

/* Copies p[0..n) into dst as a clean C string (at most cap - 1 bytes): stored strings are
 * valid UTF-8 without NUL bytes (see fm_an_text_clean), cut at a character boundary. */
static void setstr(char *dst, size_t cap, const char *p, size_t n) {
  char tmp[512];
  struct fm_buf b;
  fm_buf_init_with(&b, tmp, sizeof tmp);
  if (n > cap) n = cap; /* each input byte gives at least one output byte */
  size_t o = 0;
  if (fm_an_text_clean(&b, p, n) == 0) {
    o = b.len < cap - 1 ? b.len : cap - 1;
    while (o > 0 && o < b.len && ((unsigned char)b.p[o] & 0xc0) == 0x80) o--;
    memcpy(dst, b.p, o);
  }
  dst[o] = 0;
  fm_buf_free(&b);
}

static size_t skip_sp(const char *p, size_t n, size_t i) {
  while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
  return i;
}

static long parse_long(const char *p, size_t n) {
  long v = 0;
  size_t i = 0;
  for (; i < n && i < 10 && p[i] >= '0' && p[i] <= '9'; i++) v = v * 10 + (p[i] - '0');
  return i ? v : 0;
}

static int is_ident(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '$' || c == '.';
}

/* ---- application code heuristics ------------------------------------------------------------ */

static int py_is_lib(const char *file) {
  return file[0] == '<' || strstr(file, "/lib/python") || strstr(file, "site-packages") ||
         strstr(file, "dist-packages");
}

static int java_is_lib(const char *fn) {
  static const char *const lib[] = {
      "java.",          "javax.",          "jdk.",           "sun.",          "com.sun.",
      "jakarta.",       "kotlin.",         "kotlinx.",       "scala.",        "org.springframework.",
      "org.apache.",    "org.hibernate.",  "io.netty.",      "com.google.",   "org.eclipse.",
      "reactor.",       "io.grpc.",        "okhttp3.",       "com.fasterxml.", "ch.qos.logback.",
      "org.slf4j.",     "org.junit.",      "akka.",          "io.micrometer.", "io.undertow.",
      "org.glassfish.", "com.zaxxer.",     "net.bytebuddy.", "io.vertx.",     "io.quarkus."};
  for (size_t i = 0; i < sizeof lib / sizeof lib[0]; i++)
    if (!strncmp(fn, lib[i], strlen(lib[i]))) return 1;
  return 0;
}

static int go_is_lib(const char *fn, const char *file) {
  if (strstr(file, "/pkg/mod/") || strstr(file, "/vendor/") || strstr(file, "/usr/local/go/") ||
      strstr(file, "/usr/lib/go"))
    return 1;
  if (!strncmp(fn, "created by ", 11)) fn += 11;
  if (!strncmp(fn, "main.", 5)) return 0;
  /* The standard library's import paths have no dot in their first element ("net/http",
   * "runtime", "sync"); modules do ("github.com/acme/api"). */
  const char *slash = strchr(fn, '/');
  if (!slash) return 1;
  return memchr(fn, '.', (size_t)(slash - fn)) == NULL;
}

static int js_is_lib(const char *file) {
  return !strncmp(file, "node:", 5) || !strncmp(file, "internal/", 9) ||
         strstr(file, "/node_modules/") || !strcmp(file, "<anonymous>") || !strcmp(file, "native") ||
         file[0] == 0;
}

static int frame_is_app(int lang, const struct frame *f) {
  switch (lang) {
  case L_PY: return !py_is_lib(f->file);
  case L_JAVA: return !java_is_lib(f->func);
  case L_GO: return !go_is_lib(f->func, f->file);
  case L_JS: return !js_is_lib(f->file);
  default: return 0;
  }
}

/* Adds a frame to the current exception. Python prints the innermost call last, so it keeps the
 * last frames and its nearest application frame is the last one; the others print innermost
 * first, keep the first frames and take the first application frame. */
static void add_frame(struct fm_an_stack *s, const struct frame *f) {
  struct exc *e = s->cx;
  if (!e) return;
  int lang = s->cur->lang;
  e->frames_total++;
  if (e->nframes < FM_ST_FRAMES) e->frames[e->nframes++] = *f;
  else if (lang == L_PY) {
    memmove(e->frames, e->frames + 1, (FM_ST_FRAMES - 1) * sizeof *f);
    e->frames[FM_ST_FRAMES - 1] = *f;
  }
  if (frame_is_app(lang, f) && (lang == L_PY || !e->has_app)) {
    e->app = *f;
    e->has_app = 1;
  }
}

/* "pkg.Type: message" / "Type" at p: the exception type and its message. */
static void set_exc(struct exc *e, const char *p, size_t n) {
  size_t i = skip_sp(p, n, 0);
  size_t t = i;
  while (t < n && p[t] != ':' && p[t] != ' ') t++;
  setstr(e->type, sizeof e->type, p + i, t - i);
  if (t < n && p[t] == ':') {
    size_t m = skip_sp(p, n, t + 1);
    setstr(e->msg, sizeof e->msg, p + m, n - m);
  } else if (t < n) {
    size_t m = skip_sp(p, n, t);
    setstr(e->msg, sizeof e->msg, p + m, n - m);
  }
}

/* Finds an exception type in a header line (a log line, "Exception in thread ...", "Uncaught
 * TypeError: ..."): the first token, followed by ':' or the end of the line, that names a type
 * ending in Exception, Error, Throwable or Fault (or, for Java, any qualified name with an
 * upper-case last part followed by ':'). Returns 1 when found. */
static int find_exc(struct exc *e, const char *p, size_t n, int lang) {
  size_t i = 0;
  while (i < n) {
    while (i < n && !is_ident(p[i])) i++;
    size_t st = i;
    while (i < n && is_ident(p[i])) i++;
    if (i == st) break;
    if (i < n && p[i] != ':') continue;
    size_t len = i - st;
    const char *tok = p + st;
    const char *last = tok;
    for (size_t k = 0; k < len; k++)
      if (tok[k] == '.') last = tok + k + 1;
    size_t ll = (size_t)(tok + len - last);
    int named = (ll >= 5 && (!memcmp(last + ll - 5, "Error", 5) || !memcmp(last + ll - 5, "Fault", 5))) ||
                (ll >= 9 && !memcmp(last + ll - 9, "Exception", 9)) ||
                (ll >= 9 && !memcmp(last + ll - 9, "Throwable", 9));
    int qualified = lang == L_JAVA && last != tok && ll > 0 && last[0] >= 'A' && last[0] <= 'Z';
    if (named || qualified) {
      set_exc(e, tok, n - st);
      return 1;
    }
  }
  return 0;
}

/* ---- finishing traces ----------------------------------------------------------------------- */

static uint64_t sig_of(const struct trace *t) {
  uint64_t h = 1469598103934665603ull ^ (uint64_t)t->lang;
  const char *parts[2 + 2 * 5];
  int np = 0;
  parts[np++] = t->top.type;
  for (int i = 0; i < t->top.nframes && i < 5; i++) parts[np++] = t->top.frames[i].func;
  for (int k = 0; k < np; k++)
    for (const char *c = parts[k]; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
  for (int i = 0; i < t->top.nframes && i < 5; i++) h = (h ^ (uint64_t)t->top.frames[i].line) * 31;
  return h;
}

/* Ends the trace being built: stores it, or counts it on an identical earlier one. */
static void end_trace(struct fm_an_stack *s) {
  struct trace *t = s->cur;
  s->cur = NULL;
  s->cx = NULL;
  int was_py = s->state == ST_PY;
  s->state = ST_IDLE;
  s->go_func = 0;
  if (!t) return;
  if (!t->top.type[0] && t->lang == L_PY) {
    free(t); /* a Traceback header with no exception line: not a trace */
    return;
  }
  s->count++;
  t->sig = sig_of(t);
  for (int i = 0; i < s->ntraces; i++)
    if (s->traces[i]->sig == t->sig) {
      s->traces[i]->occurrences++;
      if (was_py) s->py_last = -1; /* a repeat does not chain */
      free(t);
      return;
    }
  if (s->ntraces >= FM_ST_TRACES) {
    s->dropped++;
    free(t);
    return;
  }
  t->occurrences = 1;
  s->traces[s->ntraces] = t;
  if (was_py) s->py_last = s->ntraces, s->py_chain = 0, s->py_idle = 0;
  s->ntraces++;
}

static struct trace *begin_trace(struct fm_an_stack *s, int lang, int state, uint64_t no) {
  if (s->cur) end_trace(s);
  struct trace *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->lang = lang;
  t->line = no;
  s->cur = t;
  s->cx = &t->top;
  s->state = state;
  return t;
}

/* ---- per language --------------------------------------------------------------------------- */

/* '  File "/app/x.py", line 12, in handler' */
static int py_frame(const char *p, size_t n, struct frame *f) {
  size_t i = skip_sp(p, n, 0);
  if (i == 0 || !starts(p + i, n - i, "File \"")) return 0;
  i += 6;
  const char *q = memchr(p + i, '"', n - i);
  if (!q) return 0;
  memset(f, 0, sizeof *f);
  setstr(f->file, sizeof f->file, p + i, (size_t)(q - p - i));
  size_t j = (size_t)(q - p) + 1;
  if (starts(p + j, n - j, ", line ")) {
    j += 7;
    f->line = parse_long(p + j, n - j);
    while (j < n && p[j] >= '0' && p[j] <= '9') j++;
  }
  if (starts(p + j, n - j, ", in ")) setstr(f->func, sizeof f->func, p + j + 5, n - j - 5);
  return 1;
}

/* Java "at pkg.Cls.m(Cls.java:12)" or JavaScript "at fn (file:12:5)" / "at file:12:5"; returns
 * the language or 0. */
static int at_frame(const char *p, size_t n, struct frame *f) {
  size_t i = skip_sp(p, n, 0);
  if (i == 0 || !starts(p + i, n - i, "at ")) return 0;
  i += 3;
  while (n > i && (p[n - 1] == ' ')) n--;
  memset(f, 0, sizeof *f);
  if (starts(p + i, n - i, "async ")) i += 6;
  if (starts(p + i, n - i, "new ")) i += 4;
  if (i >= n) return 0;
  const char *body = p + i;
  size_t bl = n - i;
  const char *sp_paren = NULL;
  for (size_t k = 0; k + 1 < bl; k++)
    if (body[k] == ' ' && body[k + 1] == '(') sp_paren = body + k;
  const char *open = memchr(body, '(', bl);
  if (!sp_paren && open && body[bl - 1] == ')') {
    const char *in = open + 1;
    size_t il = (size_t)(body + bl - 1 - in);
    /* Java: no ":L:C" in the location */
    const char *c1 = memchr(in, ':', il);
    const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(in + il - c1 - 1)) : NULL;
    if (!c2) {
      const char *fn = body;
      size_t fl = (size_t)(open - body);
      const char *slash = memchr(fn, '/', fl); /* "java.base@17/java.lang.Thread.run" */
      if (slash) fl -= (size_t)(slash + 1 - fn), fn = slash + 1;
      setstr(f->func, sizeof f->func, fn, fl);
      if (c1) {
        setstr(f->file, sizeof f->file, in, (size_t)(c1 - in));
        f->line = parse_long(c1 + 1, (size_t)(in + il - c1 - 1));
      } else setstr(f->file, sizeof f->file, in, il);
      return L_JAVA;
    }
  }
  /* JavaScript */
  const char *loc = body;
  size_t ll = bl;
  if (sp_paren && body[bl - 1] == ')') {
    setstr(f->func, sizeof f->func, body, (size_t)(sp_paren - body));
    loc = sp_paren + 2;
    ll = (size_t)(body + bl - 1 - loc);
  }
  /* location "file:line:col" from the right */
  const char *c2 = NULL, *c1 = NULL;
  for (size_t k = ll; k > 0; k--)
    if (loc[k - 1] == ':') {
      if (!c2) c2 = loc + k - 1;
      else {
        c1 = loc + k - 1;
        break;
      }
    }
  if (!c1 || !c2) {
    if (!sp_paren) return 0;
    setstr(f->file, sizeof f->file, loc, ll); /* "at fn (native)", "(<anonymous>)" */
    return L_JS;
  }
  if (parse_long(c1 + 1, (size_t)(c2 - c1 - 1)) == 0 || c2[1] < '0' || c2[1] > '9') return 0;
  setstr(f->file, sizeof f->file, loc, (size_t)(c1 - loc));
  f->line = parse_long(c1 + 1, (size_t)(c2 - c1 - 1));
  return L_JS;
}

/* "\t/path/file.go:123 +0x1d" */
static int go_file_line(const char *p, size_t n, struct frame *f) {
  if (n < 2 || p[0] != '\t') return 0;
  size_t e = n;
  const char *plus = memmem(p, n, " +0x", 4);
  if (plus) e = (size_t)(plus - p);
  const char *c = NULL;
  for (size_t k = e; k > 1; k--)
    if (p[k - 1] == ':') {
      c = p + k - 1;
      break;
    }
  if (!c) return 0;
  setstr(f->file, sizeof f->file, p + 1, (size_t)(c - p - 1));
  f->line = parse_long(c + 1, (size_t)(p + e - c - 1));
  return 1;
}

static int go_func_line(const char *p, size_t n) {
  if (n < 3 || p[0] == '\t' || p[0] == ' ') return 0;
  if (starts(p, n, "created by ")) return 1;
  return p[n - 1] == ')' && memchr(p, '(', n) != NULL && memchr(p, '.', n) != NULL;
}

/* ---- per line ------------------------------------------------------------------------------- */

static void set_header(struct fm_an_stack *s, const char *p, size_t n, uint64_t no) {
  s->hdr_len = fm_an_text_copy(s->hdr, sizeof s->hdr, p, n);
  s->hdr_no = no;
}

void fm_an_stack_line(struct fm_an_stack *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  /* kubectl logs --timestamps: "2024-03-05T14:22:01.123456789Z " before the container's line */
  if (n > 28 && p[4] == '-' && p[10] == 'T' && p[19] == '.') {
    size_t k = 20;
    while (k < n && k < 30 && p[k] >= '0' && p[k] <= '9') k++;
    if (k >= 27 && k + 1 < n && p[k] == 'Z' && p[k + 1] == ' ') p += k + 2, n -= k + 2;
  }
  struct frame f;

  if (s->state == ST_PY) {
    if (py_frame(p, n, &f)) {
      add_frame(s, &f);
      return;
    }
    if (n == 0 || p[0] == ' ' || p[0] == '\t') return; /* source lines, carets */
    set_exc(&s->cur->top, p, n);
    end_trace(s);
    return;
  }
  if (s->state == ST_GO) {
    if (n == 0 || starts(p, n, "[signal ") || starts(p, n, "exit status ") ||
        starts(p, n, "\t[recovered]"))
      return;
    if (starts(p, n, "goroutine ")) {
      s->cur->goroutines++;
      s->go_in_first = s->cur->goroutines == 1;
      s->go_func = 0;
      return;
    }
    if (go_func_line(p, n)) {
      if (s->go_in_first) {
        memset(&f, 0, sizeof f);
        const char *e = p + n;
        if (!starts(p, n, "created by ") && p[n - 1] == ')') {
          /* "main.handler(0xc000010000, 0x3)": drop the argument list */
          int depth = 0;
          for (const char *q = p + n - 1; q >= p; q--) {
            if (*q == ')') depth++;
            else if (*q == '(' && --depth == 0) {
              e = q;
              break;
            }
          }
        }
        setstr(s->go_fn, sizeof s->go_fn, p, (size_t)(e - p));
        s->go_func = 1;
      }
      return;
    }
    if (p[0] == '\t') {
      if (s->go_func && go_file_line(p, n, &f)) {
        memcpy(f.func, s->go_fn, sizeof f.func);
        add_frame(s, &f);
      }
      s->go_func = 0;
      return;
    }
    end_trace(s);
    /* fall through: the line may start something else */
  }
  if (s->state == ST_JAVA || s->state == ST_JS) {
    int lang = at_frame(p, n, &f);
    if (lang == s->cur->lang) {
      add_frame(s, &f);
      return;
    }
    if (s->state == ST_JAVA) {
      size_t i = skip_sp(p, n, 0);
      if (starts(p + i, n - i, "Caused by: ")) {
        if (s->cur->ncauses < FM_ST_CAUSES) {
          s->cx = &s->cur->causes[s->cur->ncauses++];
          set_exc(s->cx, p + i + 11, n - i - 11);
        } else s->cx = NULL;
        return;
      }
      if (starts(p + i, n - i, "... ") && memmem(p, n, " more", 5)) {
        if (s->cx) s->cx->more = parse_long(p + i + 4, n - i - 4);
        return;
      }
      if (starts(p + i, n - i, "Suppressed: ")) {
        s->cx = NULL; /* frames of suppressed exceptions are not kept */
        return;
      }
    }
    end_trace(s);
  }

  /* idle: look for the start of a trace */
  if (n == 0) return;
  if (memmem(p, n, "Traceback (most recent call last):", 34)) {
    int chain = s->py_chain && s->py_last >= 0 && s->py_last == s->ntraces - 1;
    struct trace *prev = chain ? s->traces[s->py_last] : NULL;
    struct trace *t = begin_trace(s, L_PY, ST_PY, l->no);
    if (t && prev) {
      /* the earlier trace becomes the cause (nearest first, root last) */
      t->causes[t->ncauses++] = prev->top;
      for (int i = 0; i < prev->ncauses && t->ncauses < FM_ST_CAUSES; i++)
        t->causes[t->ncauses++] = prev->causes[i];
      s->count--; /* it is counted again as part of this one */
      free(prev);
      s->traces[--s->ntraces] = NULL;
    }
    s->py_chain = 0;
    s->py_last = -1;
    return;
  }
  if (starts(p, n, "During handling of the above exception") ||
      starts(p, n, "The above exception was the direct cause")) {
    s->py_chain = 1;
    return;
  }
  if (s->py_last >= 0 && ++s->py_idle > 2) s->py_last = -1;
  if (starts(p, n, "panic: ") || starts(p, n, "fatal error: ")) {
    struct trace *t = begin_trace(s, L_GO, ST_GO, l->no);
    if (t) {
      int panic = p[0] == 'p';
      strcpy(t->top.type, panic ? "panic" : "fatal error");
      size_t k = panic ? 7 : 13;
      setstr(t->top.msg, sizeof t->top.msg, p + k, n - k);
      s->go_in_first = 0;
    }
    return;
  }
  int lang = at_frame(p, n, &f);
  if (lang) {
    struct trace *t = begin_trace(s, lang, lang == L_JAVA ? ST_JAVA : ST_JS, s->hdr_no);
    if (t) {
      if (!find_exc(&t->top, s->hdr, s->hdr_len, lang) && lang == L_JS)
        set_exc(&t->top, s->hdr, s->hdr_len);
      add_frame(s, &f);
    }
    return;
  }
  set_header(s, p, n, l->no);
}

/* ---- finish --------------------------------------------------------------------------------- */

static json_t *frame_json(const struct frame *f) {
  json_t *o = json_object();
  if (!o) return NULL;
  int rc = json_object_set_new(o, "function", fm_an_text_json(f->func, strlen(f->func)));
  rc |= json_object_set_new(o, "file", fm_an_text_json(f->file, strlen(f->file)));
  rc |= json_object_set_new(o, "line", f->line ? json_integer(f->line) : json_null());
  if (rc) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static int exc_fields(json_t *o, const struct exc *e) {
  int rc = json_object_set_new(o, "exception", fm_an_text_json(e->type, strlen(e->type)));
  rc |= json_object_set_new(o, "message", fm_an_text_json(e->msg, strlen(e->msg)));
  json_t *fr = json_array();
  for (int i = 0; fr && i < e->nframes; i++) rc |= json_array_append_new(fr, frame_json(&e->frames[i]));
  rc |= json_object_set_new(o, "frames", fr);
  rc |= json_object_set_new(o, "frames_total", json_integer(e->frames_total));
  rc |= json_object_set_new(o, "first_app_frame", e->has_app ? frame_json(&e->app) : json_null());
  if (e->more) rc |= json_object_set_new(o, "more", json_integer(e->more));
  return rc ? -1 : 0;
}

int fm_an_stack_finish(struct fm_an_stack *s, json_t *out) {
  if (s->cur) end_trace(s);
  json_t *S = json_object(), *arr = json_array();
  int rc = (S && arr) ? 0 : -1;
  for (int i = 0; rc == 0 && i < s->ntraces; i++) {
    const struct trace *t = s->traces[i];
    json_t *o = json_object(), *cb = json_array();
    if (!o || !cb) {
      json_decref(o);
      json_decref(cb);
      rc = -1;
      break;
    }
    rc |= json_object_set_new(o, "language", json_string(lang_names[t->lang]));
    rc |= exc_fields(o, &t->top);
    rc |= json_object_set_new(o, "line", json_integer((json_int_t)t->line));
    rc |= json_object_set_new(o, "occurrences", json_integer((json_int_t)t->occurrences));
    if (t->lang == L_GO) rc |= json_object_set_new(o, "goroutines", json_integer(t->goroutines));
    for (int k = 0; k < t->ncauses; k++) {
      json_t *c = json_object();
      if (!c || exc_fields(c, &t->causes[k]) != 0 || json_array_append_new(cb, c) != 0) rc = -1;
    }
    rc |= json_object_set_new(o, "caused_by", cb);
    rc |= json_array_append_new(arr, o);
  }
  if (rc == 0) {
    rc |= json_object_set_new(S, "count", json_integer((json_int_t)s->count));
    rc |= json_object_set_new(S, "distinct", json_integer(s->ntraces));
    rc |= json_object_set_new(S, "dropped", json_integer((json_int_t)s->dropped));
    rc |= json_object_set(S, "traces", arr);
    rc |= json_object_set(out, "stack", S);
  }
  json_decref(arr);
  json_decref(S);
  return rc ? -1 : 0;
}

/* ---- detect --------------------------------------------------------------------------------- */

double fm_an_stack_detect(const struct fm_an_line *lines, size_t n, const char **lang) {
  size_t used = 0, hit = 0, cnt[5] = {0};
  struct frame f;
  for (size_t i = 0; i < n; i++) {
    const char *p = lines[i].p;
    size_t len = lines[i].len;
    if (len == 0) continue;
    used++;
    int l = at_frame(p, len, &f);
    if (!l) {
      if (py_frame(p, len, &f) || memmem(p, len, "Traceback (most recent call last):", 34))
        l = L_PY;
      else if (starts(p, len, "panic: ") || starts(p, len, "goroutine ") ||
               (len > 1 && p[0] == '\t' && memmem(p, len, ".go:", 4)))
        l = L_GO;
    }
    if (l) hit++, cnt[l]++;
  }
  int best = 0;
  for (int k = 1; k < 5; k++)
    if (cnt[k] > cnt[best]) best = k;
  if (lang) *lang = best ? lang_names[best] : NULL;
  return used ? (double)hit / (double)used : 0.0;
}

/* ---- digest --------------------------------------------------------------------------------- */

static void digest_frame(struct fm_buf *b, const char *what, const json_t *f) {
  if (!json_is_object(f)) return;
  const json_t *ln = json_object_get(f, "line");
  fm_buf_printf(b, "    %s %s (%s:%lld)\n", what, json_string_value(json_object_get(f, "function")),
                json_string_value(json_object_get(f, "file")),
                json_is_integer(ln) ? (long long)json_integer_value(ln) : 0LL);
}

void fm_an_stack_digest(const json_t *summary, struct fm_buf *out, size_t max) {
  const json_t *S = json_object_get(summary, "stack");
  if (!S) S = summary;
  const json_t *tr = json_object_get(S, "traces");
  if (!json_array_size(tr) || max == 0) return;
  struct fm_buf b = {0};
  fm_buf_printf(&b, "Stack traces: %lld (%lld distinct)\n",
                (long long)json_integer_value(json_object_get(S, "count")),
                (long long)json_integer_value(json_object_get(S, "distinct")));
  size_t i, k;
  const json_t *t, *c, *f;
  json_array_foreach(tr, i, t) {
    if (i >= 6) break;
    fm_buf_printf(&b, "- %s %s: %s (line %lld, x%lld)\n",
                  json_string_value(json_object_get(t, "language")),
                  json_string_value(json_object_get(t, "exception")),
                  json_string_value(json_object_get(t, "message")),
                  (long long)json_integer_value(json_object_get(t, "line")),
                  (long long)json_integer_value(json_object_get(t, "occurrences")));
    digest_frame(&b, "app frame:", json_object_get(t, "first_app_frame"));
    json_array_foreach(json_object_get(t, "frames"), k, f) {
      if (k >= 3) break;
      digest_frame(&b, "at", f);
    }
    json_array_foreach(json_object_get(t, "caused_by"), k, c) {
      fm_buf_printf(&b, "  caused by %s: %s\n", json_string_value(json_object_get(c, "exception")),
                    json_string_value(json_object_get(c, "message")));
      digest_frame(&b, "app frame:", json_object_get(c, "first_app_frame"));
    }
  }
  fm_an_digest_append(out, &b, max);
  fm_buf_free(&b);
}
