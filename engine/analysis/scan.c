/* scan.c: named regex signatures, all matched in one pass with Hyperscan in streaming mode.
 *
 * A set is one Hyperscan stream database holding the built-in signatures, the user's, and the
 * driver's internal secret triggers (ids past the named ones). Streaming mode is what makes one
 * pass possible over input read in blocks: a match that starts in one block and ends in the next,
 * or that sits in the middle of a 1 GB line, is still reported, with its end offset in the whole
 * input. The scan maps that offset to a line number by counting newlines up to it; Hyperscan
 * reports matches in increasing end order, so a cursor moves forward through the block and
 * counting costs one memchr pass over it at most.
 *
 * Scratch space: a Hyperscan scratch may be used by one thread at a time and must be big enough
 * for the database. Scans borrow one from a process-wide pool (grown with hs_alloc_scratch for
 * the set at hand) and give it back when freed, so worker threads share a handful of scratches,
 * nothing is tied to a thread's lifetime, and the pool stays reachable (no leak reports). */
#include "analysis.h"
#include "err.h"

#include <hs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- the built-in signatures ------------------------------------------------------------ */

/* The HTTP version is a bounded repeat ([0-9.]{1,3}), not "+": "HTTP/" is on most access-log
 * lines, and with a bounded prefix Hyperscan can lead with the rarer '" 502 ' literal instead
 * (the built-in set scans about 40% faster on the mixed benchmark log). */

static const struct fm_an_sig builtins[] = {
    {"http_502_bad_gateway", "HTTP/[0-9.]{1,3}\" 502 |502 Bad Gateway", "error", NULL,
     "HTTP 502 answers (access log status or error page)"},
    {"http_504_gateway_timeout", "HTTP/[0-9.]{1,3}\" 504 |504 Gateway Time-?out", "error", NULL,
     "HTTP 504 answers"},
    {"http_503_unavailable", "HTTP/[0-9.]{1,3}\" 503 |503 Service (Temporarily )?Unavailable",
     "error", NULL, "HTTP 503 answers"},
    {"http_5xx", "HTTP/[0-9.]{1,3}\" 5[0-9][0-9] ", "warning", NULL,
     "any 5xx status in an access log line"},
    {"nginx_upstream_error",
     "upstream (prematurely closed connection|timed out|sent too big header|sent invalid)|"
     "no live upstreams|while connecting to upstream",
     "error", NULL, "nginx could not get an answer from its upstream"},
    {"oom_killer",
     "Out of memory: Kill(ed)? process|invoked oom-killer|oom-kill:|Memory cgroup out of memory|"
     "oom_reaper: reaped process",
     "critical", NULL, "the kernel OOM killer ended a process"},
    {"k8s_oomkilled", "OOMKilled", "critical", NULL, "a container was killed for memory"},
    {"java_out_of_memory", "java\\.lang\\.OutOfMemoryError", "critical", NULL,
     "the JVM ran out of heap, metaspace or native threads"},
    {"java_exception", "Exception in thread \"|^Caused by: [A-Za-z0-9_$.]+(Exception|Error)",
     "error", NULL, "an uncaught Java exception or its cause"},
    {"python_traceback", "^Traceback \\(most recent call last\\):", "error", NULL,
     "a Python traceback"},
    {"go_panic", "^panic: |^goroutine [0-9]+ \\[running\\]:|^fatal error: ", "critical", NULL,
     "a Go panic"},
    {"postgres_too_many_clients",
     "too many clients already|remaining connection slots are reserved", "critical", NULL,
     "PostgreSQL refused a connection: max_connections reached"},
    {"mysql_too_many_connections", "Too many connections", "critical", NULL,
     "MySQL refused a connection: max_connections reached"},
    {"db_deadlock", "deadlock detected|Deadlock found when trying to get lock", "error", "i",
     "a database deadlock"},
    {"connection_refused", "connection refused|ECONNREFUSED", "error", "i",
     "nothing listens on the target port, or a firewall rejects"},
    {"connection_reset", "connection reset by peer|ECONNRESET", "warning", "i",
     "the peer reset a connection"},
    {"timeout", "timed out|deadline exceeded|ETIMEDOUT|read timeout|connect timeout", "warning",
     "i", "an operation ran out of time"},
    {"segfault", "segfault at |Segmentation fault|SIGSEGV", "critical", NULL,
     "a process crashed on a bad memory access"},
    {"disk_full", "No space left on device|ENOSPC|disk quota exceeded", "critical", "i",
     "a file system is full"},
    {"too_many_open_files", "Too many open files|EMFILE", "error", NULL,
     "a process hit its file descriptor limit"},
    {"k8s_crashloop", "CrashLoopBackOff", "critical", NULL,
     "a container keeps crashing and Kubernetes backs off restarting it"},
    {"k8s_image_pull", "ImagePullBackOff|ErrImagePull", "error", NULL,
     "Kubernetes cannot pull an image"},
    {"k8s_probe_failed", "(Liveness|Readiness|Startup) probe failed", "warning", NULL,
     "a Kubernetes health probe failed"},
    {"k8s_evicted", "The node was low on resource|Evicted pod|\\bEvicted\\b", "error", NULL,
     "a pod was evicted under node pressure"},
    {"permission_denied", "permission denied|EACCES|access denied", "error", "i",
     "an operation was refused for lack of permission"},
    {"dns_failure",
     "Name or service not known|NXDOMAIN|Temporary failure in name resolution|no such host|"
     "getaddrinfo ENOTFOUND|could not resolve host|SERVFAIL",
     "error", "i", "a host name did not resolve"},
    {"tls_handshake_error",
     "SSL_do_handshake\\(\\) failed|TLS handshake (error|timeout|failed)|handshake failure|"
     "certificate verify failed|x509: certificate|SSL routines|unknown certificate authority",
     "error", "i", "a TLS handshake failed"},
    {"certificate_expired", "certificate (has )?expired|certificate is not yet valid", "critical",
     "i", "a certificate is expired or not yet valid"},
    {"broken_pipe", "broken pipe|EPIPE", "warning", "i", "a peer closed a connection mid-write"},
    {"stack_overflow", "java\\.lang\\.StackOverflowError|stack overflow", "error", "i",
     "unbounded recursion"},
    {"kernel_panic",
     "Kernel panic|BUG: unable to handle|soft lockup|blocked for more than [0-9]+ seconds",
     "critical", NULL, "the kernel crashed or a task hung"},
    {"redis_error", "MISCONF Redis|OOM command not allowed|LOADING Redis is loading", "error",
     NULL, "Redis refused a command (persistence error, maxmemory, loading)"},
    {"rate_limited", "429 Too Many Requests|rate limit(ed)? exceeded|HTTP/[0-9.]{1,3}\" 429 ",
     "warning", "i", "requests were throttled"},
    {"auth_failure",
     "authentication failed|invalid credentials|401 Unauthorized|HTTP/[0-9.]{1,3}\" 401 ",
     "warning", "i", "a login or token check failed"},
    {"fatal_log", "\\b(FATAL|CRITICAL|EMERG|PANIC)\\b", "error", NULL,
     "a line logged at a fatal level"},
};
#define NBUILTIN (sizeof builtins / sizeof builtins[0])

/* Secret triggers: a hit marks the line for the exact secret detector (secrets.c). They need
 * not be precise, only never miss what secrets.c finds; [^\n] keeps each on one line. */
static const char *const secret_triggers[] = {
    "(pass(word|wd|phrase)?|pwd|secret|token|key|credentials?)[\"']?[ \\t]*[:=]",
    "(AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}",
    "-----BEGIN [A-Z ]*PRIVATE KEY",
    "eyJ[A-Za-z0-9_-]{8,}\\.",
    "[A-Za-z0-9+.-]://[^ \\t\\r\\n/@]*:[^ \\t\\r\\n/@]*@",
    "bearer[ \\t]+[A-Za-z0-9._~+/=-]{8}",
    "gh[pousr]_[A-Za-z0-9]{20}|github_pat_|xox[abposr]-|sk_live_|rk_live_|glpat-|"
    "AIza[0-9A-Za-z_-]{30}",
};
#define NTRIGGER (sizeof secret_triggers / sizeof secret_triggers[0])
static const unsigned trigger_flags[NTRIGGER] = {HS_FLAG_CASELESS, 0, 0, 0, 0, HS_FLAG_CASELESS, 0};

const struct fm_an_sig *fm_an_builtin_sigs(size_t *n) {
  *n = NBUILTIN;
  return builtins;
}

int fm_an_platform_check(struct fm_err *err) {
  if (hs_valid_platform() != HS_SUCCESS)
    return fm_err_set(err, FM_E_INVAL,
                      "evidence analysis needs Hyperscan, which runs only on x86-64 CPUs with "
                      "SSSE3; this CPU does not have it");
  return 0;
}

/* ---- sets ------------------------------------------------------------------------------- */

struct fm_an_sigset {
  atomic_int refs;
  hs_database_t *db;
  size_t nsigs;             /* named signatures: built-ins then the user's */
  struct fm_an_sig *sigs;   /* strings owned by `strings` for the user's part */
  char *strings;
  char *key;                /* the cache key (canonical text of the user's list) */
  size_t keylen;
};

static unsigned parse_flags(const char *f) {
  unsigned flags = HS_FLAG_MULTILINE;
  for (; f && *f; f++) {
    if (*f == 'i') flags |= HS_FLAG_CASELESS;
    else if (*f == 's') flags |= HS_FLAG_DOTALL;
  }
  return flags;
}

static int valid_flags(const char *f) {
  for (; f && *f; f++)
    if (*f != 'i' && *f != 's' && *f != 'm') return 0;
  return 1;
}

static int valid_severity(const char *s) {
  return !s || !strcmp(s, "critical") || !strcmp(s, "error") || !strcmp(s, "warning") ||
         !strcmp(s, "info");
}

static void sigset_destroy(struct fm_an_sigset *s) {
  if (!s) return;
  hs_free_database(s->db);
  free(s->sigs);
  free(s->strings);
  free(s->key);
  free(s);
}

void fm_an_sigset_ref(const struct fm_an_sigset *s) {
  if (s) atomic_fetch_add(&((struct fm_an_sigset *)s)->refs, 1);
}

void fm_an_sigset_unref(const struct fm_an_sigset *s) {
  if (s && atomic_fetch_sub(&((struct fm_an_sigset *)s)->refs, 1) == 1)
    sigset_destroy((struct fm_an_sigset *)s);
}

size_t fm_an_sigset_count(const struct fm_an_sigset *s) { return s->nsigs; }

const struct fm_an_sig *fm_an_sigset_sig(const struct fm_an_sigset *s, size_t i) {
  return i < s->nsigs ? &s->sigs[i] : NULL;
}

static size_t opt_len(const char *s) { return s ? strlen(s) + 1 : 0; }

/* Builds (compiles) a set of the built-ins plus user[0..n). */
static int sigset_build(const struct fm_an_sig *user, size_t n, int bare,
                        struct fm_an_sigset **out, struct fm_err *err) {
  int rc = FM_E_NOMEM;
  struct fm_an_sigset *s = calloc(1, sizeof *s);
  size_t nb = bare ? 0 : NBUILTIN, total = nb + n, nexpr = total + (bare ? 0 : NTRIGGER);
  const char **exprs = calloc(nexpr, sizeof *exprs);
  unsigned *flags = calloc(nexpr, sizeof *flags), *ids = calloc(nexpr, sizeof *ids);
  if (!s || !exprs || !flags || !ids) {
    fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto done;
  }
  atomic_init(&s->refs, 1);
  s->nsigs = total;
  s->sigs = calloc(total, sizeof *s->sigs);
  size_t strsz = 1;
  for (size_t i = 0; i < n; i++)
    strsz += opt_len(user[i].name) + opt_len(user[i].pattern) + opt_len(user[i].severity) +
             opt_len(user[i].flags) + opt_len(user[i].description);
  s->strings = malloc(strsz);
  if (!s->sigs || !s->strings) {
    fm_err_set(err, FM_E_NOMEM, "out of memory");
    goto done;
  }
  if (!bare) memcpy(s->sigs, builtins, sizeof builtins);
  char *o = s->strings;
#define COPY(field)                                                                               \
  do {                                                                                            \
    if (user[i].field) {                                                                          \
      size_t l_ = strlen(user[i].field) + 1;                                                      \
      memcpy(o, user[i].field, l_);                                                               \
      d->field = o;                                                                               \
      o += l_;                                                                                    \
    }                                                                                             \
  } while (0)
  for (size_t i = 0; i < n; i++) {
    struct fm_an_sig *d = &s->sigs[nb + i];
    COPY(name);
    COPY(pattern);
    COPY(severity);
    COPY(flags);
    COPY(description);
  }
#undef COPY
  for (size_t i = 0; i < total; i++) {
    exprs[i] = s->sigs[i].pattern;
    flags[i] = parse_flags(s->sigs[i].flags);
    ids[i] = (unsigned)i;
  }
  for (size_t i = 0; i < nexpr - total; i++) {
    exprs[total + i] = secret_triggers[i];
    flags[total + i] = trigger_flags[i];
    ids[total + i] = (unsigned)(total + i);
  }
  hs_compile_error_t *cerr = NULL;
  if (hs_compile_multi(exprs, flags, ids, (unsigned)nexpr, HS_MODE_STREAM, NULL, &s->db, &cerr) !=
      HS_SUCCESS) {
    int at = cerr ? cerr->expression : -1;
    if (at >= 0 && (size_t)at < total)
      fm_err_set(err, FM_E_INVAL, "signature '%s': %s", s->sigs[at].name,
                 cerr && cerr->message ? cerr->message : "does not compile");
    else
      fm_err_set(err, FM_E_INVAL, "signatures: %s",
                 cerr && cerr->message ? cerr->message : "do not compile");
    hs_free_compile_error(cerr);
    rc = FM_E_INVAL;
    goto done;
  }
  *out = s;
  s = NULL;
  rc = 0;
done:
  sigset_destroy(s);
  free(exprs);
  free(flags);
  free(ids);
  return rc;
}

static pthread_once_t builtin_once = PTHREAD_ONCE_INIT;
static struct fm_an_sigset *builtin_set;
static struct fm_err builtin_err;

static void builtin_init(void) {
  if (fm_an_platform_check(&builtin_err)) return;
  sigset_build(NULL, 0, 0, &builtin_set, &builtin_err);
}

const struct fm_an_sigset *fm_an_sigset_builtin(struct fm_err *err) {
  pthread_once(&builtin_once, builtin_init);
  if (!builtin_set && err) *err = builtin_err;
  return builtin_set;
}

/* The cache: the last CACHE_MAX sets made from a user list, most recent first. Playbooks make
 * their sets when a generation loads, in every worker's VM: the first compiles, the rest hit. */
#define CACHE_MAX 16
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fm_an_sigset *cache[CACHE_MAX];

/* Canonical text of a list: every field with its length, so no two lists collide. */
static int list_key(const struct fm_an_sig *sigs, size_t n, struct fm_buf *key) {
  for (size_t i = 0; i < n; i++) {
    const char *f[5] = {sigs[i].name, sigs[i].pattern, sigs[i].severity, sigs[i].flags,
                        sigs[i].description};
    for (int j = 0; j < 5; j++) {
      if (fm_buf_printf(key, "%zu:", f[j] ? strlen(f[j]) : (size_t)-1)) return FM_E_NOMEM;
      if (f[j] && fm_buf_adds(key, f[j])) return FM_E_NOMEM;
    }
  }
  return fm_buf_addc(key, '\0');
}

int fm_an_sigset_new(const struct fm_an_sig *sigs, size_t n, struct fm_an_sigset **out,
                     struct fm_err *err) {
  *out = NULL;
  if (fm_an_platform_check(err)) return FM_E_INVAL;
  for (size_t i = 0; i < n; i++) {
    const struct fm_an_sig *g = &sigs[i];
    if (!g->name || !g->name[0])
      return fm_err_set(err, FM_E_INVAL, "signature %zu: no name", i + 1);
    if (!g->pattern || !g->pattern[0])
      return fm_err_set(err, FM_E_INVAL, "signature '%s': empty pattern", g->name);
    if (!valid_severity(g->severity))
      return fm_err_set(err, FM_E_INVAL,
                        "signature '%s': severity must be critical, error, warning or info",
                        g->name);
    if (!valid_flags(g->flags))
      return fm_err_set(err, FM_E_INVAL, "signature '%s': flags may hold only i, s and m",
                        g->name);
    for (size_t j = 0; j < NBUILTIN + i; j++) {
      const char *other = j < NBUILTIN ? builtins[j].name : sigs[j - NBUILTIN].name;
      if (!strcmp(other, g->name))
        return fm_err_set(err, FM_E_INVAL, "signature '%s': the name is used twice%s", g->name,
                          j < NBUILTIN ? " (a built-in has it)" : "");
    }
  }
  struct fm_buf key = {0};
  if (list_key(sigs, n, &key)) {
    fm_buf_free(&key);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  pthread_mutex_lock(&cache_mu);
  for (int i = 0; i < CACHE_MAX && cache[i]; i++) {
    if (cache[i]->keylen == key.len && !memcmp(cache[i]->key, key.p, key.len)) {
      struct fm_an_sigset *hit = cache[i];
      memmove(&cache[1], &cache[0], (size_t)i * sizeof cache[0]);
      cache[0] = hit;
      fm_an_sigset_ref(hit);
      pthread_mutex_unlock(&cache_mu);
      fm_buf_free(&key);
      *out = hit;
      return 0;
    }
  }
  pthread_mutex_unlock(&cache_mu);
  /* Compile outside the lock: it can take tens of milliseconds. Two threads compiling the same
   * list at once both succeed; the cache then holds both until one ages out. */
  struct fm_an_sigset *s = NULL;
  int rc = sigset_build(sigs, n, 0, &s, err);
  if (rc) {
    fm_buf_free(&key);
    return rc;
  }
  s->key = fm_buf_steal(&key, &s->keylen);
  fm_an_sigset_ref(s); /* the cache's reference */
  pthread_mutex_lock(&cache_mu);
  struct fm_an_sigset *old = cache[CACHE_MAX - 1];
  memmove(&cache[1], &cache[0], (CACHE_MAX - 1) * sizeof cache[0]);
  cache[0] = s;
  pthread_mutex_unlock(&cache_mu);
  fm_an_sigset_unref(old);
  *out = s;
  return 0;
}

int fm_an_sigset_new_bare(const struct fm_an_sig *sigs, size_t n, struct fm_an_sigset **out,
                          struct fm_err *err) {
  *out = NULL;
  if (fm_an_platform_check(err)) return FM_E_INVAL;
  if (!n) return fm_err_set(err, FM_E_INVAL, "no signatures");
  for (size_t i = 0; i < n; i++)
    if (!sigs[i].name || !sigs[i].pattern || !sigs[i].pattern[0])
      return fm_err_set(err, FM_E_INVAL, "signature %zu: a name and a pattern are needed", i + 1);
  return sigset_build(sigs, n, 1, out, err);
}

/* ---- the scratch pool ------------------------------------------------------------------- */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static hs_scratch_t **pool;
static size_t pool_n, pool_cap;

static hs_scratch_t *scratch_get(const hs_database_t *db, struct fm_err *err) {
  hs_scratch_t *s = NULL;
  pthread_mutex_lock(&pool_mu);
  if (pool_n) s = pool[--pool_n];
  pthread_mutex_unlock(&pool_mu);
  /* grows a pooled scratch when this database needs more than the one it was made for */
  if (hs_alloc_scratch(db, &s) != HS_SUCCESS) {
    if (s) hs_free_scratch(s);
    fm_err_set(err, FM_E_NOMEM, "hyperscan: cannot allocate scratch space");
    return NULL;
  }
  return s;
}

static void scratch_put(hs_scratch_t *s) {
  if (!s) return;
  pthread_mutex_lock(&pool_mu);
  if (pool_n == pool_cap) {
    size_t cap = pool_cap ? pool_cap * 2 : 8;
    hs_scratch_t **np = realloc(pool, cap * sizeof *np);
    if (!np) {
      pthread_mutex_unlock(&pool_mu);
      hs_free_scratch(s);
      return;
    }
    pool = np;
    pool_cap = cap;
  }
  pool[pool_n++] = s;
  pthread_mutex_unlock(&pool_mu);
}

/* ---- a scan ----------------------------------------------------------------------------- */

struct hit {
  uint64_t count, first, last;
};

struct fm_an_scan {
  const struct fm_an_sigset *set;
  hs_stream_t *stream;
  hs_scratch_t *scratch;
  struct hit *hits; /* nsigs */
  /* the block being scanned and a cursor in it: line number `cur_line` holds offset cur_off */
  const char *blk;
  uint64_t blk_off, blk_len;
  uint64_t cur_off, cur_line;
  int ended;
  uint64_t end_line; /* line of the last byte, for matches reported at the end */
  /* secret-trigger lines, increasing, not yet asked for */
  uint64_t *cand;
  size_t ncand, cand_head, cand_cap;
  int oom;
};

static uint64_t count_nl(const char *p, size_t n) {
  uint64_t c = 0;
  const char *e = p + n;
  while (p < e && (p = memchr(p, '\n', (size_t)(e - p)))) {
    c++;
    p++;
  }
  return c;
}

/* Line number of the byte at absolute offset `at` (in the current block). */
static uint64_t line_of(struct fm_an_scan *s, uint64_t at) {
  if (s->ended) return s->end_line;
  if (at < s->blk_off) at = s->blk_off; /* cannot happen: the match ends in this block */
  if (at >= s->cur_off) {
    s->cur_line += count_nl(s->blk + (s->cur_off - s->blk_off), (size_t)(at - s->cur_off));
    s->cur_off = at;
    return s->cur_line;
  }
  /* out of order: count back without moving the cursor */
  return s->cur_line - count_nl(s->blk + (at - s->blk_off), (size_t)(s->cur_off - at));
}

static void add_candidate(struct fm_an_scan *s, uint64_t line) {
  if (s->ncand > s->cand_head && s->cand[s->ncand - 1] >= line) {
    /* Hyperscan reports in end-offset order as a rule; should a match come late, keep the
     * list sorted (lines not yet asked for only) */
    size_t i = s->ncand;
    while (i > s->cand_head && s->cand[i - 1] > line) i--;
    if (i > s->cand_head && s->cand[i - 1] == line) return;
    if (s->cand[s->ncand - 1] == line) return;
    if (s->ncand < s->cand_cap) {
      memmove(s->cand + i + 1, s->cand + i, (s->ncand - i) * sizeof *s->cand);
      s->cand[i] = line;
      s->ncand++;
    }
    return;
  }
  if (s->cand_head && s->cand_head == s->ncand) s->cand_head = s->ncand = 0;
  if (s->ncand == s->cand_cap) {
    if (s->cand_head) { /* reuse the consumed front */
      memmove(s->cand, s->cand + s->cand_head, (s->ncand - s->cand_head) * sizeof *s->cand);
      s->ncand -= s->cand_head;
      s->cand_head = 0;
    }
    if (s->ncand == s->cand_cap) {
      size_t cap = s->cand_cap ? s->cand_cap * 2 : 64;
      uint64_t *np = realloc(s->cand, cap * sizeof *np);
      if (!np) {
        s->oom = 1;
        return;
      }
      s->cand = np;
      s->cand_cap = cap;
    }
  }
  s->cand[s->ncand++] = line;
}

static int on_match(unsigned int id, unsigned long long from, unsigned long long to,
                    unsigned int flags, void *ctx) {
  (void)from;
  (void)flags;
  struct fm_an_scan *s = ctx;
  uint64_t line = line_of(s, to ? (uint64_t)to - 1 : 0);
  size_t nsigs = s->set->nsigs;
  if (id >= nsigs) {
    add_candidate(s, line);
    return 0;
  }
  struct hit *h = &s->hits[id];
  if (h->count && h->last == line) return 0; /* counted: lines, not matches */
  if (!h->count) h->first = line;
  h->count++;
  h->last = line;
  return 0;
}

int fm_an_scan_new(const struct fm_an_sigset *set, struct fm_an_scan **out, struct fm_err *err) {
  *out = NULL;
  struct fm_an_scan *s = calloc(1, sizeof *s);
  if (!s) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  s->hits = calloc(set->nsigs, sizeof *s->hits);
  if (!s->hits) {
    free(s);
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  }
  fm_an_sigset_ref(set);
  s->set = set;
  s->cur_line = 1;
  s->scratch = scratch_get(set->db, err);
  if (!s->scratch) goto fail;
  if (hs_open_stream(set->db, 0, &s->stream) != HS_SUCCESS) {
    fm_err_set(err, FM_E_NOMEM, "hyperscan: cannot open a stream");
    goto fail;
  }
  *out = s;
  return 0;
fail:
  fm_an_scan_free(s);
  return err ? err->code : FM_E_NOMEM;
}

int fm_an_scan_block(struct fm_an_scan *s, const char *p, size_t n, struct fm_err *err) {
  if (!n) return 0;
  s->blk = p;
  s->blk_len = n;
  s->cur_off = s->blk_off;
  hs_error_t e = hs_scan_stream(s->stream, p, (unsigned)n, 0, s->scratch, on_match, s);
  /* the cursor goes to the block's end: the next block starts counting from there */
  s->cur_line += count_nl(p + (s->cur_off - s->blk_off), (size_t)(s->blk_off + n - s->cur_off));
  s->end_line = p[n - 1] == '\n' ? s->cur_line - 1 : s->cur_line;
  s->blk_off += n;
  s->cur_off = s->blk_off;
  s->blk = NULL;
  if (e != HS_SUCCESS) return fm_err_set(err, FM_E_INVAL, "hyperscan: scan failed (%d)", (int)e);
  if (s->oom) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  return 0;
}

int fm_an_scan_end(struct fm_an_scan *s, struct fm_err *err) {
  if (!s->stream) return 0;
  s->ended = 1;
  hs_error_t e = hs_close_stream(s->stream, s->scratch, on_match, s);
  s->stream = NULL;
  if (e != HS_SUCCESS) return fm_err_set(err, FM_E_INVAL, "hyperscan: close failed (%d)", (int)e);
  return 0;
}

uint64_t fm_an_scan_hits(const struct fm_an_scan *s, size_t i, uint64_t *first, uint64_t *last) {
  if (i >= s->set->nsigs) return 0;
  if (first) *first = s->hits[i].first;
  if (last) *last = s->hits[i].last;
  return s->hits[i].count;
}

int fm_an_scan_secret_line(struct fm_an_scan *s, uint64_t no) {
  while (s->cand_head < s->ncand && s->cand[s->cand_head] < no) s->cand_head++;
  return s->cand_head < s->ncand && s->cand[s->cand_head] == no;
}

int fm_an_scan_results(const struct fm_an_scan *s, json_t *arr) {
  size_t n = 0, *idx = malloc((s->set->nsigs + 1) * sizeof *idx);
  if (!idx) return -1;
  for (size_t i = 0; i < s->set->nsigs; i++)
    if (s->hits[i].count) idx[n++] = i;
  /* most lines first (a stable insertion sort: qsort has no context argument, and n is small) */
  for (size_t i = 1; i < n; i++) {
    size_t v = idx[i], j = i;
    while (j > 0 && (s->hits[idx[j - 1]].count < s->hits[v].count)) {
      idx[j] = idx[j - 1];
      j--;
    }
    idx[j] = v;
  }
  int rc = 0;
  for (size_t k = 0; k < n && !rc; k++) {
    const struct fm_an_sig *g = &s->set->sigs[idx[k]];
    const struct hit *h = &s->hits[idx[k]];
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:s}", "name", g->name, "count",
                          (json_int_t)h->count, "first_line", (json_int_t)h->first, "last_line",
                          (json_int_t)h->last, "severity", g->severity ? g->severity : "warning");
    if (!o || json_array_append_new(arr, o)) rc = -1;
  }
  free(idx);
  return rc;
}

void fm_an_scan_free(struct fm_an_scan *s) {
  if (!s) return;
  if (s->stream) hs_close_stream(s->stream, NULL, NULL, NULL);
  scratch_put(s->scratch);
  fm_an_sigset_unref(s->set);
  free(s->hits);
  free(s->cand);
  free(s);
}
