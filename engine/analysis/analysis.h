/* analysis.h: evidence analysis in C (issue 6). The driver (analyze.c) reads a file or a string in
 * large blocks, never whole, splits it into lines, sniffs the first lines to classify the evidence,
 * runs the signature scanner over every byte, and feeds each line to the modules that apply:
 *
 *   logs.c     timestamps, severity, template mining (Drain), error clusters, bursts, first and
 *              worst error with context, errors per minute, state transitions
 *   stack.c    stack traces (Python, Java, Go, JavaScript)
 *   metrics.c  metrics (CSV, JSON, Prometheus text): per-series statistics and anomalies
 *   cmdout.c   command output (top, ps, df, free, netstat/ss, dmesg, journalctl, kubectl ...)
 *   secrets.c  secrets found and redacted
 *   scan.c     named regex signatures, all matched in one pass (Hyperscan)
 *   classify.c source type and detailed type with a confidence
 *
 * Each module is an opaque state with new / line / finish / free, plus a detect function used by
 * the classifier on the first lines and a digest function that renders its part of the summary as
 * bounded text. Modules add their results to a jansson object; the shapes are documented in
 * docs/EVIDENCE.md. Modules never keep a pointer to a line after the call returns.
 *
 * finish() gets the whole summary object and adds the module's key to it ("logs", "stack",
 * "metrics", "command"); digest() gets the same summary and renders that key.
 * Every string that leaves a module is passed through the redactor (secrets.c) and made valid
 * UTF-8 by the driver; modules may use fm_an_json_str below to make strings from raw bytes. */
#ifndef FM_ANALYSIS_H
#define FM_ANALYSIS_H

#include "buf.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Lines longer than this are cut for the line modules (the scanner still sees every byte). */
#define FM_AN_MAX_LINE 65536
/* At most this many lines are sniffed for classification (and at most FM_AN_SNIFF_BYTES). */
#define FM_AN_SNIFF_LINES 200
#define FM_AN_SNIFF_BYTES 65536
/* The text digest of a whole analysis is at most this many bytes. */
#define FM_AN_DIGEST_MAX 10000

struct fm_an_line {
  const char *p;  /* the line without its "\n" and without a trailing "\r"; not NUL-terminated */
  size_t len;     /* <= FM_AN_MAX_LINE */
  uint64_t no;    /* 1-based line number */
  int truncated;  /* the line was longer than FM_AN_MAX_LINE and was cut */
};

/* ---- logs.c ---------------------------------------------------------------------------- */
struct fm_an_logs;
struct fm_an_logs *fm_an_logs_new(void);
void fm_an_logs_line(struct fm_an_logs *s, const struct fm_an_line *l);
/* Adds its fields to out (an object); returns 0 or -1 when out of memory. */
int fm_an_logs_finish(struct fm_an_logs *s, json_t *out);
void fm_an_logs_free(struct fm_an_logs *s);
/* Share of lines (0..1) that start with a timestamp the log parser knows; *format gets the
 * dominant format's name (static string) or NULL. */
double fm_an_logs_detect(const struct fm_an_line *lines, size_t n, const char **format);
/* Appends a bounded text rendering of the part finish() wrote (at most max bytes). */
void fm_an_logs_digest(const json_t *summary, struct fm_buf *out, size_t max);
/* The template id (the "id" in out.logs.templates) given to the last line fed, or -1 when that
 * line was empty or fell in the "other" bucket. For evaluation (bench/analyze/drain_bench.c). */
int32_t fm_an_logs_last_template(const struct fm_an_logs *s);

/* ---- stack.c --------------------------------------------------------------------------- */
struct fm_an_stack;
struct fm_an_stack *fm_an_stack_new(void);
void fm_an_stack_line(struct fm_an_stack *s, const struct fm_an_line *l);
int fm_an_stack_finish(struct fm_an_stack *s, json_t *out);
void fm_an_stack_free(struct fm_an_stack *s);
/* Share of lines (0..1) that look like stack frames or exception headers; *lang gets "python",
 * "java", "go" or "javascript" (static) or NULL. */
double fm_an_stack_detect(const struct fm_an_line *lines, size_t n, const char **lang);
void fm_an_stack_digest(const json_t *summary, struct fm_buf *out, size_t max);

/* ---- metrics.c ------------------------------------------------------------------------- */
struct fm_an_metrics;
struct fm_an_metrics *fm_an_metrics_new(void);
void fm_an_metrics_line(struct fm_an_metrics *s, const struct fm_an_line *l);
int fm_an_metrics_finish(struct fm_an_metrics *s, json_t *out);
void fm_an_metrics_free(struct fm_an_metrics *s);
/* Confidence (0..1) that the lines are metrics; *format gets "csv", "json" or "prometheus"
 * (static) or NULL. */
double fm_an_metrics_detect(const struct fm_an_line *lines, size_t n, const char **format);
void fm_an_metrics_digest(const json_t *summary, struct fm_buf *out, size_t max);
/* Optional: the evidence's raw bytes, every block in order (before or after its lines). Lets a
 * JSON document whose lines are longer than FM_AN_MAX_LINE (curl's one-line query_range output)
 * be parsed whole; kept only while the input may be JSON, at most 64 MiB. p is not kept. */
void fm_an_metrics_block(struct fm_an_metrics *s, const char *p, size_t n);

/* ---- cmdout.c -------------------------------------------------------------------------- */
struct fm_an_cmd;
/* kind: what fm_an_cmd_detect returned */
struct fm_an_cmd *fm_an_cmd_new(const char *kind);
void fm_an_cmd_line(struct fm_an_cmd *s, const struct fm_an_line *l);
int fm_an_cmd_finish(struct fm_an_cmd *s, json_t *out);
void fm_an_cmd_free(struct fm_an_cmd *s);
/* Confidence (0..1) that the lines are the output of a known command; *kind gets one of "top",
 * "ps", "df", "free", "netstat", "ss", "dmesg", "journalctl", "kubectl_get", "kubectl_describe",
 * "kubectl_logs", "kubectl_events" (static) or NULL. */
double fm_an_cmd_detect(const struct fm_an_line *lines, size_t n, const char **kind);
void fm_an_cmd_digest(const json_t *summary, struct fm_buf *out, size_t max);

/* ---- helpers (analyze.c) ------------------------------------------------------------- */
/* A JSON string from raw bytes: invalid UTF-8 and NUL bytes become U+FFFD, so it never fails
 * for bad input (jansson's json_stringn refuses invalid UTF-8). NULL only when out of memory. */
json_t *fm_an_json_str(const char *p, size_t n);
/* Appends p[0..n) to out with invalid UTF-8 and NUL bytes replaced by U+FFFD. 0 or FM_E_NOMEM. */
int fm_an_utf8_sanitize(struct fm_buf *out, const char *p, size_t n);
/* The length of the longest prefix of p[0..n) that is at most max bytes and does not end inside
 * a UTF-8 sequence. */
size_t fm_an_utf8_cut(const char *p, size_t n, size_t max);

/* ---- scan.c: named signatures, all matched in one pass (Hyperscan, streaming mode) -------- */
struct fm_err;

/* A signature as given: name, regex (Hyperscan syntax, a PCRE subset: no back-references or
 * look-arounds), severity ("critical", "error", "warning", "info"; NULL: "warning"), flags
 * (NULL or letters: "i" caseless, "s" dot matches newline). Patterns are always multi-line
 * (^ and $ match at line boundaries). */
struct fm_an_sig {
  const char *name;
  const char *pattern;
  const char *severity;
  const char *flags;
  const char *description; /* may be NULL */
};

/* The built-in signatures (static storage; *n gets the count). */
const struct fm_an_sig *fm_an_builtin_sigs(size_t *n);

/* 0 when Hyperscan can run on this CPU (x86-64 with SSSE3), else FM_E_INVAL with a message. */
int fm_an_platform_check(struct fm_err *err);

/* A compiled set: the built-ins plus the signatures it was made with, in one Hyperscan stream
 * database, plus the driver's internal secret triggers. Immutable, reference-counted, shared by
 * threads. */
struct fm_an_sigset;
/* The built-ins alone, compiled once per process (thread-safe). Borrowed: never freed by the
 * caller. NULL (err set) when Hyperscan is unusable. */
const struct fm_an_sigset *fm_an_sigset_builtin(struct fm_err *err);
/* Compiles the built-ins plus sigs[0..n) into one set, or returns the cached set compiled from
 * the same list (a process-wide cache of recent sets). A pattern that does not compile fails
 * with FM_E_INVAL and a message naming the signature; duplicate or empty names are refused.
 * *out gets a new reference (release it with fm_an_sigset_unref). Thread-safe. */
int fm_an_sigset_new(const struct fm_an_sig *sigs, size_t n, struct fm_an_sigset **out,
                     struct fm_err *err);
/* Only sigs[0..n): no built-ins, no secret triggers, not cached (benchmarks, tests). */
int fm_an_sigset_new_bare(const struct fm_an_sig *sigs, size_t n, struct fm_an_sigset **out,
                          struct fm_err *err);
void fm_an_sigset_ref(const struct fm_an_sigset *s);
void fm_an_sigset_unref(const struct fm_an_sigset *s); /* NULL is a no-op */
/* Number of named signatures (built-ins first, then the user's) and their fields (borrowed). */
size_t fm_an_sigset_count(const struct fm_an_sigset *s);
const struct fm_an_sig *fm_an_sigset_sig(const struct fm_an_sigset *s, size_t i);

/* A streaming scan of one input with one set. Matches across block boundaries and inside
 * lines of any length are found; each is mapped to its line number. Not thread-safe (one per
 * analysis); it borrows a Hyperscan scratch from a process-wide pool until freed. */
struct fm_an_scan;
int fm_an_scan_new(const struct fm_an_sigset *set, struct fm_an_scan **out, struct fm_err *err);
/* Scans the next n bytes of the input. */
int fm_an_scan_block(struct fm_an_scan *s, const char *p, size_t n, struct fm_err *err);
/* Ends the input (end-anchored matches are reported here). */
int fm_an_scan_end(struct fm_an_scan *s, struct fm_err *err);
/* Per signature i: the number of lines it matched, the first and last such line (1-based). */
uint64_t fm_an_scan_hits(const struct fm_an_scan *s, size_t i, uint64_t *first, uint64_t *last);
/* Whether line no (1-based) holds a secret trigger (an AWS key prefix, "password=", "-----BEGIN",
 * "eyJ...", "user:pw@" ...); lines must be asked in increasing order, once the block holding
 * the line's end was scanned. */
int fm_an_scan_secret_line(struct fm_an_scan *s, uint64_t no);
/* Appends [{name, count, first_line, last_line, severity}] for the signatures that matched, most
 * lines first, to arr. 0 or -1 when out of memory. */
int fm_an_scan_results(const struct fm_an_scan *s, json_t *arr);
void fm_an_scan_free(struct fm_an_scan *s);

/* ---- secrets.c: secrets found and redacted ----------------------------------------------- */
enum fm_an_secret_kind {
  FM_AN_SECRET_PASSWORD,    /* password / passwd / pwd / passphrase fields */
  FM_AN_SECRET_TOKEN,       /* *token fields, Bearer tokens, known token prefixes (ghp_ ...) */
  FM_AN_SECRET_SECRET,      /* *secret fields */
  FM_AN_SECRET_KEY,         /* *key fields with a key-like value (api_key, secret_access_key) */
  FM_AN_SECRET_AWS_KEY,     /* AWS access key ids (AKIA..., ASIA...) */
  FM_AN_SECRET_PRIVATE_KEY, /* -----BEGIN ... PRIVATE KEY----- blocks */
  FM_AN_SECRET_JWT,         /* eyJ... JSON Web Tokens */
  FM_AN_SECRET_CONN,        /* passwords in connection strings (scheme://user:pw@host) */
  FM_AN_SECRET_NKINDS
};
/* The kind's name ("password", "aws_access_key", ...), static. */
const char *fm_an_secret_kind_name(int kind);

/* Copies p[0..n) to out with every secret value replaced by "[REDACTED:<kind>]" (field names,
 * the user of a connection string and the BEGIN marker of a key block stay). counts (may be
 * NULL) gets the number found per kind added. Returns the number redacted, or -1 when out of
 * memory. Thread-safe; does not allocate when nothing is found beyond out's growth. */
long fm_an_redact(const char *p, size_t n, struct fm_buf *out,
                  uint64_t counts[FM_AN_SECRET_NKINDS]);

/* The secrets line module: counts per kind and the first findings (line, kind, field name;
 * never the value). */
struct fm_an_secrets;
struct fm_an_secrets *fm_an_secrets_new(void);
void fm_an_secrets_line(struct fm_an_secrets *s, const struct fm_an_line *l);
/* Adds {count, kinds:{kind:n}, findings:[{line, kind, field?}]} to out. */
int fm_an_secrets_finish(struct fm_an_secrets *s, json_t *out);
void fm_an_secrets_free(struct fm_an_secrets *s);

/* ---- classify.c ------------------------------------------------------------------------ */
struct fm_an_class {
  const char *source_type;   /* "logs", "metrics", "configuration", "code", "text", "binary" */
  const char *detailed_type; /* "log_file", "metrics_data", "config_file", "trace_data",
                              * "error_output", "stack_trace", "source_code", "text", "binary",
                              * "compressed", or a command kind ("top", "kubectl_describe" ...) */
  double confidence;         /* 0..1 */
  const char *format;        /* the sub-format when known ("nginx", "prometheus", "yaml",
                              * "java", "gzip" ...), static, or NULL */
  const char *command;       /* the command kind for command output, else NULL */
  int binary;                /* binary or compressed: no line modules */
  const char *compressed;    /* "gzip", "bzip2", "xz", "zstd", "zip" or NULL */
  double scores[8];          /* per candidate, for the summary: see fm_an_class_score_name */
};
/* The name of scores[i] ("logs", "stack", "metrics", "command", "config", "code", "trace",
 * "error"), static. */
const char *fm_an_class_score_name(size_t i);
/* Compression or binary format from the first bytes: "gzip", "bzip2", "xz", "zstd", "zip",
 * "elf", "png", "jpeg", "pdf"... (static) or NULL; *compressed set to 1 for the first five. */
const char *fm_an_magic(const unsigned char *p, size_t n, int *compressed);
/* Classifies from the first bytes (head, for magic and binary checks) and the first lines,
 * with the filename's extension and a content type as hints (both may be NULL). */
void fm_an_classify(const unsigned char *head, size_t headlen, const struct fm_an_line *lines,
                    size_t n, const char *filename, const char *content_type,
                    struct fm_an_class *out);

#endif
