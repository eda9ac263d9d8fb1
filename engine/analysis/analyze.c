/* analyze.c: the evidence-analysis driver.
 *
 * One pass over the input, in blocks of FM_AN_BLOCK bytes read with read() (or sliced from memory):
 *   1. The first block (at least FM_AN_SNIFF_BYTES of it, when the input is that long) is sniffed:
 *      magic numbers, control bytes, and the first FM_AN_SNIFF_LINES lines go to the classifier,
 *      which picks the modules that apply.
 *   2. Every block goes whole to the Hyperscan stream (scan.c), so signatures match across block
 *      boundaries and inside lines of any length, then through the UTF-8 / NUL / CRLF counters,
 *      then through the line splitter. A line that ends in the block is handed to the modules as
 *      a pointer into the block (no copy); only a line that crosses a block boundary is copied,
 *      and at most FM_AN_MAX_LINE + 1 bytes of it are kept, so a 1 GB line costs 64 KiB.
 *   3. Lines where the scan saw a secret trigger go to the secrets module.
 *   4. At the end the modules write their parts of the summary; every string in it is run
 *      through the redactor and made valid UTF-8; the digest is assembled from the parts,
 *      redacted, made valid UTF-8, and cut to FM_AN_DIGEST_MAX bytes on a character boundary.
 * Binary and compressed inputs get the scan and the encoding facts only: lines of a gzip stream
 * mean nothing. */
#include "analyze.h"

#include "buf.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- UTF-8 helpers ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when p starts an invalid one. NUL is
 * reported invalid so it becomes U+FFFD in text meant for prompts. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned char c = p[0];
  if (c == 0) return 0;
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) need = 1;
  else if (c == 0xe0) need = 2, lo = 0xa0;
  else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) need = 2;
  else if (c == 0xed) need = 2, hi = 0x9f;
  else if (c == 0xf0) need = 3, lo = 0x90;
  else if (c >= 0xf1 && c <= 0xf3) need = 3;
  else if (c == 0xf4) need = 3, hi = 0x8f;
  else return 0;
  if (n < need + 1) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k <= need; k++)
    if (p[k] < 0x80 || p[k] > 0xbf) return 0;
  return need + 1;
}

int fm_an_utf8_sanitize(struct fm_buf *out, const char *p, size_t n) {
  const unsigned char *u = (const unsigned char *)p;
  size_t i = 0, run = 0;
  while (i < n) {
    size_t l = utf8_seq(u + i, n - i);
    if (l) {
      i += l;
      run += l;
      continue;
    }
    if (fm_buf_add(out, p + i - run, run) || fm_buf_add(out, "\xef\xbf\xbd", 3)) return FM_E_NOMEM;
    run = 0;
    i++;
  }
  return fm_buf_add(out, p + i - run, run) ? FM_E_NOMEM : 0;
}

static int utf8_clean(const char *p, size_t n) {
  const unsigned char *u = (const unsigned char *)p;
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq(u + i, n - i);
    if (!l) return 0;
    i += l;
  }
  return 1;
}

json_t *fm_an_json_str(const char *p, size_t n) {
  if (utf8_clean(p, n)) return json_stringn_nocheck(p, n);
  struct fm_buf b = {0};
  json_t *j = NULL;
  if (!fm_an_utf8_sanitize(&b, p, n)) j = json_stringn_nocheck(b.p ? b.p : "", b.len);
  fm_buf_free(&b);
  return j;
}

size_t fm_an_utf8_cut(const char *p, size_t n, size_t max) {
  if (n <= max) return n;
  size_t k = max;
  while (k > 0 && ((unsigned char)p[k] & 0xc0) == 0x80) k--;
  return k;
}

/* ---- the driver's state ----------------------------------------------------------------- */

struct an {
  const struct fm_an_opts *o;
  struct fm_an_scan *scan;
  struct fm_an_class cls;
  int line_modules; /* lines go to the modules below */
  struct fm_an_logs *logs;
  struct fm_an_stack *stack;
  struct fm_an_metrics *metrics;
  struct fm_an_cmd *cmd;
  struct fm_an_secrets *secrets;
  /* the line crossing a block boundary */
  struct fm_buf carry;
  uint64_t carry_total;
  int carry_active;
  char carry_last;
  /* counters */
  uint64_t bytes, lines, truncated, crlf, nul, invalid;
  /* the UTF-8 validator's state across blocks */
  int u8_need;
  unsigned char u8_lo, u8_hi;
};

static void emit_line(struct an *a, const char *p, size_t stored, uint64_t total, char last) {
  uint64_t eff = total;
  if (total && last == '\r') {
    eff--;
    a->crlf++;
  }
  size_t len = stored < eff ? stored : (size_t)eff;
  int truncated = eff > FM_AN_MAX_LINE;
  if (len > FM_AN_MAX_LINE) len = FM_AN_MAX_LINE;
  a->lines++;
  a->truncated += truncated != 0;
  struct fm_an_line l = {p, len, a->lines, truncated};
  if (a->secrets && fm_an_scan_secret_line(a->scan, a->lines)) fm_an_secrets_line(a->secrets, &l);
  if (!a->line_modules) return;
  if (a->logs) fm_an_logs_line(a->logs, &l);
  if (a->stack) fm_an_stack_line(a->stack, &l);
  if (a->metrics) fm_an_metrics_line(a->metrics, &l);
  if (a->cmd) fm_an_cmd_line(a->cmd, &l);
}

/* UTF-8 validity and NUL bytes over a block, carrying an unfinished sequence to the next. */
static void encoding_block(struct an *a, const unsigned char *p, size_t n) {
  const unsigned char *e = p + n;
  for (const unsigned char *z = p; z < e && (z = memchr(z, 0, (size_t)(e - z))); z++) a->nul++;
  size_t i = 0;
  while (i < n) {
    if (!a->u8_need) {
      /* ASCII runs, eight bytes at a time */
      while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull) break;
        i += 8;
      }
      if (i >= n) break;
      unsigned char c = p[i++];
      if (c < 0x80) continue;
      a->u8_lo = 0x80;
      a->u8_hi = 0xbf;
      if (c >= 0xc2 && c <= 0xdf) a->u8_need = 1;
      else if (c == 0xe0) a->u8_need = 2, a->u8_lo = 0xa0;
      else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) a->u8_need = 2;
      else if (c == 0xed) a->u8_need = 2, a->u8_hi = 0x9f;
      else if (c == 0xf0) a->u8_need = 3, a->u8_lo = 0x90;
      else if (c >= 0xf1 && c <= 0xf3) a->u8_need = 3;
      else if (c == 0xf4) a->u8_need = 3, a->u8_hi = 0x8f;
      else a->invalid++;
    } else {
      unsigned char c = p[i];
      if (c < a->u8_lo || c > a->u8_hi) {
        a->invalid++;
        a->u8_need = 0; /* this byte starts over as a lead byte */
        continue;
      }
      i++;
      a->u8_need--;
      a->u8_lo = 0x80;
      a->u8_hi = 0xbf;
    }
  }
}

static void carry_add(struct an *a, const char *p, size_t n) {
  size_t room = FM_AN_MAX_LINE + 1 > a->carry.len ? FM_AN_MAX_LINE + 1 - a->carry.len : 0;
  size_t take = n < room ? n : room;
  /* out of memory here only shortens the line: the counts stay right */
  if (take) (void)fm_buf_add(&a->carry, p, take);
  a->carry_total += n;
  if (n) a->carry_last = p[n - 1];
  a->carry_active = 1;
}

static void carry_emit(struct an *a) {
  emit_line(a, a->carry.p ? a->carry.p : "", a->carry.len, a->carry_total, a->carry_last);
  a->carry.len = 0;
  a->carry_total = 0;
  a->carry_last = 0;
  a->carry_active = 0;
}

static int process_block(struct an *a, const char *p, size_t n, struct fm_err *err) {
  if (!n) return 0;
  a->bytes += n;
  int rc = fm_an_scan_block(a->scan, p, n, err);
  if (rc) return rc;
  encoding_block(a, (const unsigned char *)p, n);
  /* a JSON metrics document may be one line longer than FM_AN_MAX_LINE (curl's output) */
  if (a->metrics) fm_an_metrics_block(a->metrics, p, n);
  size_t i = 0;
  while (i < n) {
    const char *nl = memchr(p + i, '\n', n - i);
    size_t end = nl ? (size_t)(nl - p) : n;
    if (a->carry_active || !nl) {
      carry_add(a, p + i, end - i);
      if (nl) carry_emit(a);
    } else {
      size_t len = end - i;
      emit_line(a, p + i, len, len, len ? p[end - 1] : 0);
    }
    i = nl ? end + 1 : n;
  }
  return 0;
}

/* The sniffed lines of head[0..n): complete lines only, unless the first is all there is. */
static size_t sniff_lines(const char *p, size_t n, int at_eof, struct fm_an_line *out) {
  size_t k = 0, i = 0;
  while (i < n && k < FM_AN_SNIFF_LINES) {
    const char *nl = memchr(p + i, '\n', n - i);
    if (!nl && !at_eof && k > 0) break;
    size_t end = nl ? (size_t)(nl - p) : n, len = end - i;
    if (len && p[end - 1] == '\r') len--;
    if (len > FM_AN_MAX_LINE) len = FM_AN_MAX_LINE;
    out[k] = (struct fm_an_line){p + i, len, k + 1, 0};
    k++;
    i = end + 1;
  }
  return k;
}

static int setup(struct an *a, const char *head, size_t headlen, int at_eof, struct fm_err *err) {
  const struct fm_an_sigset *set = a->o->sigs;
  if (!set && !(set = fm_an_sigset_builtin(err))) return err ? err->code : FM_E_INVAL;
  int rc = fm_an_scan_new(set, &a->scan, err);
  if (rc) return rc;
  size_t hl = headlen < FM_AN_SNIFF_BYTES ? headlen : FM_AN_SNIFF_BYTES;
  struct fm_an_line *lines = calloc(FM_AN_SNIFF_LINES, sizeof *lines);
  if (!lines) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  size_t nl = sniff_lines(head, hl, at_eof && hl == headlen, lines);
  fm_an_classify((const unsigned char *)head, hl, lines, nl, a->o->filename, a->o->content_type,
                 &a->cls);
  free(lines);
  if (headlen == 0) {
    a->cls.source_type = "text";
    a->cls.detailed_type = "empty";
    a->cls.confidence = 0.99;
  }
  if (!a->cls.binary) a->secrets = fm_an_secrets_new();
  if (!a->cls.binary && !a->secrets) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  if (a->cls.binary || a->o->no_modules || headlen == 0) return 0;
  a->line_modules = 1;
  const char *dt = a->cls.detailed_type;
  if (a->cls.command) {
    a->cmd = fm_an_cmd_new(a->cls.command);
    if (!strcmp(dt, "dmesg") || !strcmp(dt, "journalctl") || !strcmp(dt, "kubectl_logs")) {
      a->logs = fm_an_logs_new();
      a->stack = fm_an_stack_new();
    }
  } else if (!strcmp(dt, "metrics_data")) {
    a->metrics = fm_an_metrics_new();
  } else if (!strcmp(a->cls.source_type, "logs") || !strcmp(dt, "text")) {
    /* plain text gets the log modules too: an unrecognised format still has errors and
     * repeated lines worth counting */
    a->logs = fm_an_logs_new();
    a->stack = fm_an_stack_new();
  }
  if (!a->secrets || (a->cls.command && !a->cmd) ||
      ((!strcmp(a->cls.source_type, "logs") || !strcmp(dt, "text")) && !a->cls.command &&
       (!a->logs || !a->stack)) ||
      (!strcmp(dt, "metrics_data") && !a->metrics))
    return fm_err_set(err, FM_E_NOMEM, "out of memory");
  return 0;
}

static void an_free(struct an *a) {
  fm_an_scan_free(a->scan);
  /* the modules' free functions are not asked to accept NULL */
  if (a->logs) fm_an_logs_free(a->logs);
  if (a->stack) fm_an_stack_free(a->stack);
  if (a->metrics) fm_an_metrics_free(a->metrics);
  if (a->cmd) fm_an_cmd_free(a->cmd);
  fm_an_secrets_free(a->secrets);
  fm_buf_free(&a->carry);
}

/* ---- redaction over the finished summary ------------------------------------------------ */

static int redact_string(const char *s, size_t n, json_t **out, uint64_t *count) {
  struct fm_buf b = {0};
  *out = NULL;
  long found = fm_an_redact(s, n, &b, NULL);
  if (found < 0) {
    fm_buf_free(&b);
    return -1;
  }
  if (found > 0) {
    *count += (uint64_t)found;
    *out = fm_an_json_str(b.p ? b.p : "", b.len);
    fm_buf_free(&b);
    return *out ? 0 : -1;
  }
  fm_buf_free(&b);
  return 0;
}

static int redact_json(json_t *j, uint64_t *count, int depth) {
  if (depth > 64) return 0;
  if (json_is_string(j)) {
    json_t *r;
    if (redact_string(json_string_value(j), json_string_length(j), &r, count)) return -1;
    if (r) {
      int rc = json_string_setn_nocheck(j, json_string_value(r), json_string_length(r));
      json_decref(r);
      return rc;
    }
    return 0;
  }
  if (json_is_array(j)) {
    for (size_t i = 0; i < json_array_size(j); i++)
      if (redact_json(json_array_get(j, i), count, depth + 1)) return -1;
    return 0;
  }
  if (!json_is_object(j)) return 0;
  json_t *renamed = NULL; /* {new key: value} for keys that held a secret */
  const char *k;
  json_t *v;
  void *tmp;
  json_object_foreach_safe(j, tmp, k, v) {
    if (redact_json(v, count, depth + 1)) return -1;
    json_t *rk;
    if (redact_string(k, strlen(k), &rk, count)) return -1;
    if (rk) {
      if (!renamed) renamed = json_object();
      if (!renamed || json_object_set(renamed, json_string_value(rk), v)) {
        json_decref(rk);
        json_decref(renamed);
        return -1;
      }
      json_decref(rk);
      json_object_del(j, k);
    }
  }
  if (renamed) {
    int rc = json_object_update(j, renamed);
    json_decref(renamed);
    return rc;
  }
  return 0;
}

/* ---- the summary and the digest --------------------------------------------------------- */

static int set_new(json_t *o, const char *k, json_t *v) {
  return v ? json_object_set_new(o, k, v) : -1;
}

static double round2(double x) { return floor(x * 100 + 0.5) / 100; }

static void human_bytes(uint64_t b, char *out, size_t sz) {
  if (b < 10 * 1024) snprintf(out, sz, "%llu B", (unsigned long long)b);
  else if (b < 10ull << 20) snprintf(out, sz, "%.1f KiB", (double)b / 1024);
  else if (b < 10ull << 30) snprintf(out, sz, "%.1f MiB", (double)b / 1048576);
  else snprintf(out, sz, "%.1f GiB", (double)b / 1073741824);
}

static int build_summary(struct an *a, json_t *sum) {
  const struct fm_an_class *c = &a->cls;
  if (a->o->filename && set_new(sum, "filename", fm_an_json_str(a->o->filename,
                                                                strlen(a->o->filename))))
    return -1;
  json_t *scores = json_object();
  if (set_new(sum, "source_type", json_string(c->source_type)) ||
      set_new(sum, "detailed_type", json_string(c->detailed_type)) ||
      set_new(sum, "confidence", json_real(round2(c->confidence))) ||
      set_new(sum, "format", c->format ? json_string(c->format) : json_null()) ||
      set_new(sum, "bytes", json_integer((json_int_t)a->bytes)) ||
      set_new(sum, "lines", json_integer((json_int_t)a->lines)) ||
      set_new(sum, "truncated_lines", json_integer((json_int_t)a->truncated)) ||
      set_new(sum, "binary", json_boolean(c->binary)) ||
      set_new(sum, "compressed", c->compressed ? json_string(c->compressed) : json_null()) ||
      set_new(sum, "encoding",
              json_pack("{s:b, s:I, s:b, s:I, s:I}", "valid_utf8", a->invalid == 0,
                        "invalid_sequences", (json_int_t)a->invalid, "crlf", a->crlf > 0,
                        "crlf_lines", (json_int_t)a->crlf, "nul_bytes", (json_int_t)a->nul)) ||
      set_new(sum, "scores", scores))
    return -1;
  for (size_t i = 0; i < sizeof c->scores / sizeof c->scores[0]; i++)
    if (set_new(scores, fm_an_class_score_name(i), json_real(round2(c->scores[i])))) return -1;
  json_t *sigs = json_array();
  if (set_new(sum, "signatures", sigs) || fm_an_scan_results(a->scan, sigs)) return -1;
  json_t *sec = json_object();
  if (set_new(sum, "secrets", sec)) return -1;
  if (a->secrets) {
    if (fm_an_secrets_finish(a->secrets, sec)) return -1;
  } else if (set_new(sec, "count", json_integer(0)) || set_new(sec, "kinds", json_object()) ||
             set_new(sec, "findings", json_array())) {
    return -1;
  }
  /* each module adds its own key ("logs", "stack", "metrics", "command") to the summary */
  if (a->logs && fm_an_logs_finish(a->logs, sum)) return -1;
  if (a->stack && fm_an_stack_finish(a->stack, sum)) return -1;
  if (a->metrics && fm_an_metrics_finish(a->metrics, sum)) return -1;
  if (a->cmd) {
    if (fm_an_cmd_finish(a->cmd, sum)) return -1;
    json_t *o = json_object_get(sum, "command");
    if (json_is_object(o) && !json_object_get(o, "kind") &&
        set_new(o, "kind", json_string(c->command)))
      return -1;
  }
  return 0;
}

static void digest_head(struct an *a, json_t *sum, struct fm_buf *d) {
  const struct fm_an_class *c = &a->cls;
  char sz[32];
  human_bytes(a->bytes, sz, sizeof sz);
  fm_buf_adds(d, "Evidence");
  if (a->o->filename) {
    fm_buf_adds(d, " ");
    fm_buf_adds(d, a->o->filename);
  }
  if (c->binary) {
    if (c->compressed)
      fm_buf_printf(d, ": %s-compressed file, %s (not decompressed: upload the text itself)\n",
                    c->compressed, sz);
    else
      fm_buf_printf(d, ": binary file%s%s, %s (not analysed as text)\n",
                    c->format ? " " : "", c->format ? c->format : "", sz);
  } else {
    fm_buf_printf(d, ": %s (%s", c->detailed_type, c->source_type);
    if (c->format && strcmp(c->format, c->detailed_type)) fm_buf_printf(d, ", %s", c->format);
    fm_buf_printf(d, ", confidence %.2f), %llu lines, %s\n", c->confidence,
                  (unsigned long long)a->lines, sz);
  }
  if (a->invalid || a->crlf || a->nul || a->truncated) {
    fm_buf_adds(d, "Encoding:");
    if (a->invalid)
      fm_buf_printf(d, " %llu invalid UTF-8 sequences (shown as U+FFFD);",
                    (unsigned long long)a->invalid);
    if (a->crlf) fm_buf_printf(d, " CRLF line endings (%llu lines);", (unsigned long long)a->crlf);
    if (a->nul) fm_buf_printf(d, " %llu NUL bytes;", (unsigned long long)a->nul);
    if (a->truncated)
      fm_buf_printf(d, " %llu lines longer than %d bytes (cut);", (unsigned long long)a->truncated,
                    FM_AN_MAX_LINE);
    d->len--;
    fm_buf_adds(d, "\n");
  }
  json_t *sigs = json_object_get(sum, "signatures");
  if (json_array_size(sigs)) {
    fm_buf_adds(d, "Signatures (matching lines):");
    size_t i;
    json_t *s;
    json_array_foreach(sigs, i, s) {
      if (i == 15) {
        fm_buf_printf(d, " ... %zu more;", json_array_size(sigs) - 15);
        break;
      }
      fm_buf_printf(d, " %s [%s] %lld (lines %lld-%lld);",
                    json_string_value(json_object_get(s, "name")),
                    json_string_value(json_object_get(s, "severity")),
                    (long long)json_integer_value(json_object_get(s, "count")),
                    (long long)json_integer_value(json_object_get(s, "first_line")),
                    (long long)json_integer_value(json_object_get(s, "last_line")));
    }
    d->len--;
    fm_buf_adds(d, "\n");
  }
  json_t *sec = json_object_get(sum, "secrets");
  json_int_t ns = json_integer_value(json_object_get(sec, "count"));
  if (ns) {
    fm_buf_printf(d, "Secrets: %lld found and redacted (", (long long)ns);
    const char *k;
    json_t *v;
    int first = 1;
    json_object_foreach(json_object_get(sec, "kinds"), k, v) {
      fm_buf_printf(d, "%s%s %lld", first ? "" : ", ", k, (long long)json_integer_value(v));
      first = 0;
    }
    fm_buf_adds(d, ")\n");
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(sec, "findings"), i, f) {
      if (i == 10) break;
      const char *field = json_string_value(json_object_get(f, "field"));
      fm_buf_printf(d, "  line %lld: %s%s%s%s\n",
                    (long long)json_integer_value(json_object_get(f, "line")),
                    json_string_value(json_object_get(f, "kind")), field ? " (field " : "",
                    field ? field : "", field ? ")" : "");
    }
  }
}

static int build_digest(struct an *a, json_t *sum, char **out, size_t *outlen) {
  struct fm_buf d = {0}, r = {0}, u = {0};
  int rc = -1;
  digest_head(a, sum, &d);
  /* each module gets what is left, minus room for the ones after it */
  struct {
    void (*fn)(const json_t *, struct fm_buf *, size_t);
    const char *key;
  } parts[] = {{fm_an_cmd_digest, "command"},
               {fm_an_logs_digest, "logs"},
               {fm_an_stack_digest, "stack"},
               {fm_an_metrics_digest, "metrics"}};
  size_t nparts = 0;
  for (size_t i = 0; i < 4; i++) nparts += json_object_get(sum, parts[i].key) != NULL;
  for (size_t i = 0; i < 4; i++) {
    if (!json_object_get(sum, parts[i].key)) continue;
    size_t left = d.len < FM_AN_DIGEST_MAX ? FM_AN_DIGEST_MAX - d.len : 0;
    size_t budget = nparts > 1 ? left * 2 / (nparts + 1) : left;
    nparts--;
    if (budget < 64) continue;
    size_t before = d.len;
    parts[i].fn(sum, &d, budget);
    if (d.len > before + budget) d.len = before + fm_an_utf8_cut(d.p + before, d.len - before,
                                                                 budget);
    if (d.len > before && d.p[d.len - 1] != '\n') fm_buf_addc(&d, '\n');
  }
  /* the modules' text may hold secrets and bad bytes as well */
  if (fm_an_redact(d.p ? d.p : "", d.len, &r, NULL) < 0) goto done;
  if (fm_an_utf8_sanitize(&u, r.p ? r.p : "", r.len)) goto done;
  size_t n = fm_an_utf8_cut(u.p ? u.p : "", u.len, FM_AN_DIGEST_MAX);
  u.len = n;
  if (fm_buf_reserve(&u, 1)) goto done;
  u.p[n] = '\0';
  *out = fm_buf_steal(&u, outlen);
  rc = 0;
done:
  fm_buf_free(&d);
  fm_buf_free(&r);
  fm_buf_free(&u);
  return rc;
}

static int finish(struct an *a, struct fm_an_result *r, struct fm_err *err) {
  if (a->carry_active) carry_emit(a);
  if (a->u8_need) a->invalid++; /* the input ended inside a sequence */
  int rc = fm_an_scan_end(a->scan, err);
  if (rc) return rc;
  json_t *sum = json_object();
  uint64_t redacted = 0;
  if (!sum || build_summary(a, sum) || redact_json(sum, &redacted, 0)) {
    json_decref(sum);
    return fm_err_set(err, FM_E_NOMEM, "out of memory building the summary");
  }
  char *js = json_dumps(sum, JSON_COMPACT | JSON_REAL_PRECISION(6));
  if (!js) {
    json_decref(sum);
    return fm_err_set(err, FM_E_NOMEM, "out of memory building the summary");
  }
  size_t jl = strlen(js);
  if (!utf8_clean(js, jl)) {
    /* a module put raw bytes into a string: mend the text, and the object from it */
    struct fm_buf b = {0};
    json_t *again = NULL;
    if (!fm_an_utf8_sanitize(&b, js, jl)) again = json_loadb(b.p, b.len, 0, NULL);
    free(js);
    js = again ? json_dumps(again, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    fm_buf_free(&b);
    json_decref(sum);
    sum = again;
    if (!js) {
      json_decref(sum);
      return fm_err_set(err, FM_E_NOMEM, "out of memory building the summary");
    }
    jl = strlen(js);
  }
  if (build_digest(a, sum, &r->digest, &r->digest_len)) {
    free(js);
    json_decref(sum);
    return fm_err_set(err, FM_E_NOMEM, "out of memory building the digest");
  }
  r->summary_json = js;
  r->summary_len = jl;
  r->summary = sum;
  r->source_type = a->cls.source_type;
  r->detailed_type = a->cls.detailed_type;
  r->compressed = a->cls.compressed;
  r->confidence = round2(a->cls.confidence);
  r->bytes = a->bytes;
  r->lines = a->lines;
  r->binary = a->cls.binary;
  return 0;
}

/* ---- entry points ----------------------------------------------------------------------- */

static const struct fm_an_opts no_opts;

int fm_an_analyze_fd(int fd, const struct fm_an_opts *o, struct fm_an_result *r,
                     struct fm_err *err) {
  memset(r, 0, sizeof *r);
  struct an a = {.o = o ? o : &no_opts};
  char *buf = malloc(FM_AN_BLOCK);
  if (!buf) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  int rc = 0, eof = 0;
  size_t len = 0;
  /* the first block: at least the sniff size unless the input is shorter */
  while (len < FM_AN_SNIFF_BYTES) {
    ssize_t got = read(fd, buf + len, FM_AN_BLOCK - len);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      rc = fm_err_set(err, FM_E_IO, "read: %s", strerror(errno));
      goto done;
    }
    if (got == 0) {
      eof = 1;
      break;
    }
    len += (size_t)got;
  }
  if ((rc = setup(&a, buf, len, eof, err))) goto done;
  if ((rc = process_block(&a, buf, len, err))) goto done;
  while (!eof) {
    ssize_t got = read(fd, buf, FM_AN_BLOCK);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      rc = fm_err_set(err, FM_E_IO, "read: %s", strerror(errno));
      goto done;
    }
    if (got == 0) break;
    if ((rc = process_block(&a, buf, (size_t)got, err))) goto done;
  }
  rc = finish(&a, r, err);
done:
  an_free(&a);
  free(buf);
  return rc;
}

int fm_an_analyze_file(const char *path, const struct fm_an_opts *o, struct fm_an_result *r,
                       struct fm_err *err) {
  memset(r, 0, sizeof *r);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fm_err_set(err, FM_E_IO, "%s: %s", path, strerror(errno));
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  int rc = fm_an_analyze_fd(fd, o, r, err);
  close(fd);
  return rc;
}

int fm_an_analyze_mem(const char *p, size_t n, const struct fm_an_opts *o,
                      struct fm_an_result *r, struct fm_err *err) {
  memset(r, 0, sizeof *r);
  struct an a = {.o = o ? o : &no_opts};
  int rc = setup(&a, p, n, 1, err);
  for (size_t at = 0; !rc && at < n; at += FM_AN_BLOCK)
    rc = process_block(&a, p + at, n - at < FM_AN_BLOCK ? n - at : FM_AN_BLOCK, err);
  if (!rc) rc = finish(&a, r, err);
  an_free(&a);
  return rc;
}

void fm_an_result_free(struct fm_an_result *r) {
  if (!r) return;
  free(r->summary_json);
  free(r->digest);
  json_decref(r->summary);
  memset(r, 0, sizeof *r);
}
