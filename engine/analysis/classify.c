/* classify.c: source type and detailed type with a confidence, from the first bytes and lines.
 *
 * The modules' detect functions score logs, stack traces, metrics and command output; this file
 * adds configuration (YAML, INI/TOML, .env, JSON, XML), source code, trace data and error output,
 * and the hints (file extension, content type). The most specific evidence wins when it is
 * strong: a known command's output beats "looks like YAML" (kubectl describe does), metrics beat
 * logs (a Prometheus dump has no timestamps at the start of its lines), a stack trace without log
 * timestamps is a stack trace, timestamped lines are a log. Below every threshold it is text. */
#include "analysis.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

enum { S_LOGS, S_STACK, S_METRICS, S_CMD, S_CONFIG, S_CODE, S_TRACE, S_ERROR, S_N };
static const char *const score_names[S_N] = {"logs",   "stack", "metrics", "command",
                                              "config", "code",  "trace",   "error"};

const char *fm_an_class_score_name(size_t i) { return i < S_N ? score_names[i] : NULL; }

const char *fm_an_magic(const unsigned char *p, size_t n, int *compressed) {
  static const struct {
    const char *name;
    const char *magic;
    size_t len;
    int compressed;
  } m[] = {
      {"gzip", "\x1f\x8b", 2, 1},
      {"bzip2", "BZh", 3, 1},
      {"xz", "\xfd" "7zXZ\x00", 6, 1},
      {"zstd", "\x28\xb5\x2f\xfd", 4, 1},
      {"zip", "PK\x03\x04", 4, 1},
      {"zip", "PK\x05\x06", 4, 1},
      {"elf", "\x7f" "ELF", 4, 0},
      {"png", "\x89PNG\r\n\x1a\n", 8, 0},
      {"jpeg", "\xff\xd8\xff", 3, 0},
      {"gif", "GIF8", 4, 0},
      {"pdf", "%PDF-", 5, 0},
      {"sqlite", "SQLite format 3", 16, 0},
  };
  if (compressed) *compressed = 0;
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
    if (n >= m[i].len && !memcmp(p, m[i].magic, m[i].len)) {
      /* "BZh" is also the start of words: bzip2 has a block size digit after it */
      if (!strcmp(m[i].name, "bzip2") && (n < 4 || p[3] < '1' || p[3] > '9')) continue;
      if (compressed) *compressed = m[i].compressed;
      return m[i].name;
    }
  }
  return NULL;
}

/* ---- line heuristics -------------------------------------------------------------------- */

static size_t skip_ws(const char *p, size_t n, size_t i) {
  while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
  return i;
}

static int starts(const char *p, size_t n, const char *w) {
  size_t l = strlen(w);
  return n >= l && !memcmp(p, w, l);
}

static int contains(const char *p, size_t n, const char *w) {
  size_t l = strlen(w);
  if (l > n) return 0;
  for (size_t i = 0; i + l <= n; i++)
    if (p[i] == w[0] && !memcmp(p + i, w, l)) return 1;
  return 0;
}

static int contains_ci(const char *p, size_t n, const char *w) {
  size_t l = strlen(w);
  if (l > n) return 0;
  for (size_t i = 0; i + l <= n; i++)
    if (!strncasecmp(p + i, w, l)) return 1;
  return 0;
}

/* A configuration line: "key: value", "key = value", "[section]", "- item", "KEY=value",
 * "<tag ...>", JSON "\"key\": value". *fmt gets the flavour. */
static int config_line(const char *p, size_t n, const char **fmt) {
  size_t i = skip_ws(p, n, 0);
  if (i == n) return 0;
  if (p[i] == '[' && p[n - 1] == ']') {
    *fmt = "ini";
    return 1;
  }
  if (p[i] == '<') {
    *fmt = "xml";
    return 1;
  }
  if (p[i] == '-' && i + 1 < n && p[i + 1] == ' ') {
    *fmt = "yaml";
    return 1;
  }
  if (p[i] == '"') {
    size_t j = i + 1;
    while (j < n && p[j] != '"') j++;
    j = skip_ws(p, n, j + 1);
    if (j < n && p[j] == ':') {
      *fmt = "json";
      return 1;
    }
    return 0;
  }
  if (p[i] == '{' || p[i] == '}' || p[i] == ']') {
    if (n - i <= 2) {
      *fmt = "json";
      return 1;
    }
    return 0;
  }
  size_t k = i;
  while (k < n && (isalnum((unsigned char)p[k]) || p[k] == '_' || p[k] == '-' || p[k] == '.'))
    k++;
  if (k == i) return 0;
  int upper = 1;
  for (size_t j = i; j < k; j++) upper &= !islower((unsigned char)p[j]);
  if (starts(p + i, n - i, "export ")) {
    *fmt = "env";
    return 1;
  }
  size_t s = skip_ws(p, n, k);
  if (s < n && p[s] == '=' && (s + 1 >= n || p[s + 1] != '=')) {
    *fmt = upper && s == k && i == 0 ? "env" : "ini";
    return 1;
  }
  if (s == k && s < n && p[s] == ':' && (s + 1 == n || p[s + 1] == ' ' || p[s + 1] == '\t')) {
    /* "error: could not open file" is a message, not a setting */
    static const char *const levels[] = {"error", "fatal", "warning", "warn", "panic", "note",
                                         "hint", "info", "debug", "exception", "caused", NULL};
    for (const char *const *w = levels; *w; w++)
      if (k - i == strlen(*w) && !strncasecmp(p + i, *w, k - i)) return 0;
    *fmt = "yaml";
    return 1;
  }
  return 0;
}

static int comment_line(const char *p, size_t n) {
  size_t i = skip_ws(p, n, 0);
  return i < n && (p[i] == '#' || p[i] == ';' || starts(p + i, n - i, "//"));
}

static int code_line(const char *p, size_t n) {
  static const char *const kw[] = {
      "def ",     "class ",   "import ",    "from ",   "func ",    "package ", "#include",
      "public ",  "private ", "protected ", "static ", "function ", "const ",  "let ",
      "var ",     "return",   "if (",       "if ",     "for (",    "for ",     "while ",
      "fn ",      "use ",     "impl ",      "struct ", "#!/",      "else",     "elif ",
      "try:",     "except",   "catch",      "throw ",  "async ",   "await ",   "module ",
      "require(", "local ",   "end",        "int ",    "void ",    "void*",    "typedef "};
  size_t i = skip_ws(p, n, 0);
  if (i == n) return 0;
  for (size_t k = 0; k < sizeof kw / sizeof kw[0]; k++)
    if (starts(p + i, n - i, kw[k])) return 1;
  char last = p[n - 1];
  return last == ';' || last == '{' || (last == '}' && n - i <= 3) ||
         (last == ')' && contains(p, n, "("));
}

static int error_line(const char *p, size_t n) {
  return contains_ci(p, n, "error") || contains_ci(p, n, "exception") ||
         contains(p, n, "Traceback") || contains_ci(p, n, "fatal") || contains(p, n, "panic:") ||
         contains_ci(p, n, "failed");
}

static int trace_line(const char *p, size_t n) {
  return contains(p, n, "\"traceId\"") || contains(p, n, "\"trace_id\"") ||
         contains(p, n, "\"spanId\"") || contains(p, n, "\"span_id\"") ||
         contains(p, n, "\"parentSpanId\"") || contains(p, n, "\"traceID\"");
}

/* The extension of the filename (after the last dot of the last component), or "". */
static const char *extension(const char *filename) {
  if (!filename) return "";
  const char *base = strrchr(filename, '/');
  base = base ? base + 1 : filename;
  const char *dot = strrchr(base, '.');
  if (!dot) return !strcmp(base, ".env") ? "env" : "";
  return dot + 1;
}

static int ext_in(const char *ext, const char *const *list) {
  for (; *list; list++)
    if (!strcasecmp(ext, *list)) return 1;
  return 0;
}

void fm_an_classify(const unsigned char *head, size_t headlen, const struct fm_an_line *lines,
                    size_t n, const char *filename, const char *content_type,
                    struct fm_an_class *out) {
  memset(out, 0, sizeof *out);
  int compressed = 0;
  const char *magic = fm_an_magic(head, headlen, &compressed);
  /* binary: a known binary format, or control bytes (NUL, and controls other than tab, newline,
   * CR, form feed and ESC, which logs carry for colours) in more than 10% of the head */
  size_t ctl = 0;
  for (size_t i = 0; i < headlen; i++) {
    unsigned char c = head[i];
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != 0x1b) || c == 0x7f)
      ctl++;
  }
  if (magic && (compressed || strcmp(magic, "pdf"))) {
    out->binary = 1;
    out->compressed = compressed ? magic : NULL;
    out->source_type = "binary";
    out->detailed_type = compressed ? "compressed" : "binary";
    out->format = magic;
    out->confidence = 0.99;
    return;
  }
  if (headlen && ctl * 10 > headlen) {
    out->binary = 1;
    out->source_type = "binary";
    out->detailed_type = "binary";
    out->confidence = ctl * 4 > headlen ? 0.95 : 0.8;
    return;
  }

  const char *logs_fmt = NULL, *stack_lang = NULL, *metrics_fmt = NULL, *cmd_kind = NULL;
  double *sc = out->scores;
  sc[S_LOGS] = fm_an_logs_detect(lines, n, &logs_fmt);
  sc[S_STACK] = fm_an_stack_detect(lines, n, &stack_lang);
  sc[S_METRICS] = fm_an_metrics_detect(lines, n, &metrics_fmt);
  sc[S_CMD] = fm_an_cmd_detect(lines, n, &cmd_kind);

  size_t nonempty = 0, cfg = 0, code = 0, err = 0, trace = 0, comments = 0;
  size_t fmt_count[6] = {0};
  static const char *const cfg_fmts[6] = {"yaml", "ini", "env", "json", "xml", "toml"};
  for (size_t i = 0; i < n; i++) {
    const char *p = lines[i].p;
    size_t len = lines[i].len;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    if (skip_ws(p, len, 0) == len) continue;
    nonempty++;
    if (comment_line(p, len)) {
      comments++;
      continue;
    }
    const char *f = NULL;
    if (config_line(p, len, &f)) {
      cfg++;
      for (int k = 0; k < 6; k++)
        if (!strcmp(f, cfg_fmts[k])) fmt_count[k]++;
    }
    code += code_line(p, len);
    err += error_line(p, len);
    trace += trace_line(p, len);
  }
  size_t body = nonempty > comments ? nonempty - comments : 0;
  if (body) {
    sc[S_CONFIG] = (double)cfg / (double)body;
    sc[S_CODE] = (double)code / (double)body;
    sc[S_ERROR] = (double)err / (double)body;
    sc[S_TRACE] = (double)trace / (double)body;
  }
  const char *cfg_fmt = "yaml";
  size_t best = 0;
  for (int k = 0; k < 6; k++)
    if (fmt_count[k] > best) {
      best = fmt_count[k];
      cfg_fmt = cfg_fmts[k];
    }

  /* hints */
  static const char *const ext_logs[] = {"log", "out", "err", NULL};
  static const char *const ext_cfg[] = {"yaml", "yml", "ini", "toml", "conf", "cfg", "env",
                                        "properties", "xml", "cnf", "tf", "hcl", NULL};
  static const char *const ext_code[] = {"py", "js", "ts", "go", "java", "c", "h", "cc", "cpp",
                                         "rs", "rb", "php", "cs", "kt", "scala", "sh", "lua",
                                         "swift", NULL};
  static const char *const ext_metrics[] = {"csv", "prom", "tsv", NULL};
  const char *ext = extension(filename);
  const char *ct = content_type ? content_type : "";
  if (ext_in(ext, ext_logs) || contains_ci(ct, strlen(ct), "log")) sc[S_LOGS] += 0.15;
  if (ext_in(ext, ext_cfg) || contains_ci(ct, strlen(ct), "yaml") ||
      contains_ci(ct, strlen(ct), "toml"))
    sc[S_CONFIG] += 0.2;
  if (ext_in(ext, ext_code)) sc[S_CODE] += 0.3;
  if (ext_in(ext, ext_metrics) || contains_ci(ct, strlen(ct), "csv") ||
      contains_ci(ct, strlen(ct), "openmetrics"))
    sc[S_METRICS] += 0.15;
  if (!strcasecmp(ext, "env")) cfg_fmt = "env";
  else if (!strcasecmp(ext, "toml")) cfg_fmt = "toml";
  else if (!strcasecmp(ext, "json") && sc[S_CONFIG] > 0.3) cfg_fmt = "json";

  /* Decide: the most specific strong evidence first. */
  if (sc[S_CMD] >= 0.5 && cmd_kind) {
    out->command = cmd_kind;
    out->detailed_type = cmd_kind;
    out->format = cmd_kind;
    if (!strcmp(cmd_kind, "dmesg") || !strcmp(cmd_kind, "journalctl") ||
        !strcmp(cmd_kind, "kubectl_logs") || !strcmp(cmd_kind, "kubectl_events"))
      out->source_type = "logs";
    else if (!strcmp(cmd_kind, "kubectl_get") || !strcmp(cmd_kind, "kubectl_describe"))
      out->source_type = "text";
    else
      out->source_type = "metrics"; /* top, ps, df, free, netstat, ss: resource snapshots */
    out->confidence = sc[S_CMD];
  } else if (sc[S_METRICS] >= 0.8 || (sc[S_METRICS] >= 0.6 && sc[S_METRICS] >= sc[S_LOGS])) {
    /* timestamped JSON or CSV points look like log lines too: strong metrics evidence wins */
    out->source_type = "metrics";
    out->detailed_type = "metrics_data";
    out->format = metrics_fmt;
    out->confidence = sc[S_METRICS];
  } else if (sc[S_TRACE] >= 0.5) {
    out->source_type = "logs";
    out->detailed_type = "trace_data";
    out->format = "json";
    out->confidence = sc[S_TRACE];
  } else if (sc[S_STACK] >= 0.3 && sc[S_LOGS] < 0.3) {
    out->source_type = "logs";
    out->detailed_type = "stack_trace";
    out->format = stack_lang;
    out->confidence = sc[S_STACK] > 0.5 ? sc[S_STACK] : 0.5 + sc[S_STACK] / 2;
  } else if (sc[S_LOGS] >= 0.4) {
    out->source_type = "logs";
    out->detailed_type = "log_file";
    out->format = logs_fmt;
    out->confidence = sc[S_LOGS];
  } else if (sc[S_CONFIG] >= 0.6 && sc[S_CONFIG] >= sc[S_CODE]) {
    out->source_type = "configuration";
    out->detailed_type = "config_file";
    out->format = cfg_fmt;
    out->confidence = sc[S_CONFIG];
  } else if (sc[S_CODE] >= 0.4) {
    out->source_type = "code";
    out->detailed_type = "source_code";
    out->confidence = sc[S_CODE];
  } else if (sc[S_ERROR] >= 0.25) {
    out->source_type = "logs";
    out->detailed_type = "error_output";
    out->confidence = 0.4 + sc[S_ERROR] / 2;
  } else {
    out->source_type = "text";
    out->detailed_type = "text";
    double top = 0;
    for (int k = 0; k < S_N; k++)
      if (sc[k] > top) top = sc[k];
    out->confidence = nonempty ? 1.0 - top : 1.0;
  }
  if (out->confidence > 0.99) out->confidence = 0.99;
  if (out->confidence < 0.05) out->confidence = 0.05;
  for (int k = 0; k < S_N; k++)
    if (sc[k] > 1) sc[k] = 1;
}
