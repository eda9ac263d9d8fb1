/* secrets.c: secrets found and redacted.
 *
 * One hand-written detector serves both the line module (counting what a file holds) and the
 * redactor (what the driver runs over every string of the summary and over the digest). It looks
 * for, in this order at each position:
 *   -----BEGIN ... PRIVATE KEY-----    the block up to its END marker (or the end of the text)
 *   AKIA/ASIA/... + 16 [0-9A-Z]         an AWS access key id, on word boundaries
 *   eyJ<b64url>.<b64url>[.<b64url>]     a JWT (a cut one too: header and the dot are enough)
 *   scheme://user:PASSWORD@host          the password of a connection string
 *   Bearer TOKEN, Basic CREDENTIALS      authorization headers
 *   ghp_..., xoxb-..., sk_live_..., glpat-..., AIza...   well-known token prefixes
 *   NAME = VALUE, NAME: VALUE, "NAME": "VALUE"   when NAME ends in password / passwd / pwd /
 *       passphrase / secret / token / key / credentials (case and _-. ignored)
 * Field rules keep false positives down: the name must END with the keyword
 * ("password_policy: strict" is a policy), placeholders are not secrets (empty, null, true,
 * ${VAR}, <...>, {{...}}, ****), and token / secret / key fields need a value that looks like a
 * key (8+ characters, not all digits, no spaces; a "key" field 12+ with letters and digits), so
 * "primary_key: id" and "max_token: 512" stay. Public keys are not secrets. */
#include "analysis.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[FM_AN_SECRET_NKINDS] = {
    "password", "token", "secret", "key", "aws_access_key", "private_key", "jwt",
    "connection_string_password",
};

const char *fm_an_secret_kind_name(int kind) {
  return kind >= 0 && kind < FM_AN_SECRET_NKINDS ? kind_names[kind] : "secret";
}

struct find {
  size_t start, end; /* the span to replace */
  int kind;
  size_t fstart, fend; /* the field name, when a field rule matched */
};

static int is_alnum(unsigned char c) { return isalnum(c) != 0; }
static int is_b64url(unsigned char c) { return isalnum(c) || c == '-' || c == '_'; }
static int is_keychar(unsigned char c) { return isalnum(c) || c == '_' || c == '-' || c == '.'; }

static int has_prefix(const char *p, size_t n, const char *pre) {
  size_t l = strlen(pre);
  return n >= l && memcmp(p, pre, l) == 0;
}

static int has_prefix_ci(const char *p, size_t n, const char *pre) {
  size_t l = strlen(pre);
  return n >= l && strncasecmp(p, pre, l) == 0;
}

/* ---- the pattern rules ------------------------------------------------------------------ */

static int private_key(const char *p, size_t n, size_t i, struct find *f) {
  if (!has_prefix(p + i, n - i, "-----BEGIN ")) return 0;
  size_t j = i + 11;
  while (j < n && (isupper((unsigned char)p[j]) || p[j] == ' ')) j++;
  /* the marker must say PRIVATE KEY: "-----BEGIN RSA PRIVATE KEY-----" */
  size_t mlen = j - (i + 11);
  const char *m = p + i + 11;
  int priv = 0;
  for (size_t k = 0; k + 11 <= mlen; k++)
    if (!memcmp(m + k, "PRIVATE KEY", 11)) priv = 1;
  if (!priv || !has_prefix(p + j, n - j, "-----")) return 0;
  j += 5;
  if (has_prefix(p + j, n - j, "[REDACTED")) return 0; /* redacted already */
  const char *end = NULL;
  for (size_t k = j; k + 9 <= n; k++) {
    if (p[k] == '-' && !memcmp(p + k, "-----END ", 9)) {
      end = p + k;
      break;
    }
  }
  size_t e = n;
  if (end) {
    e = (size_t)(end - p) + 9;
    while (e < n && p[e] != '-' && p[e] != '\n') e++;
    while (e < n && p[e] == '-') e++;
  }
  f->start = j; /* the BEGIN marker stays: it says what was there */
  f->end = e;
  f->kind = FM_AN_SECRET_PRIVATE_KEY;
  return 1;
}

static int aws_key(const char *p, size_t n, size_t i, struct find *f) {
  static const char *const pre[] = {"AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA",
                                    "AROA", "AIPA", "ANPA", "ANVA", "APKA"};
  if (p[i] != 'A' || n - i < 20 || (i > 0 && is_alnum((unsigned char)p[i - 1]))) return 0;
  int ok = 0;
  for (size_t k = 0; k < sizeof pre / sizeof pre[0] && !ok; k++) ok = !memcmp(p + i, pre[k], 4);
  if (!ok) return 0;
  for (size_t k = 4; k < 20; k++) {
    unsigned char c = (unsigned char)p[i + k];
    if (!(isupper(c) || isdigit(c))) return 0;
  }
  if (i + 20 < n && is_alnum((unsigned char)p[i + 20])) return 0;
  f->start = i;
  f->end = i + 20;
  f->kind = FM_AN_SECRET_AWS_KEY;
  return 1;
}

static int jwt(const char *p, size_t n, size_t i, struct find *f) {
  if (!has_prefix(p + i, n - i, "eyJ") || (i > 0 && is_b64url((unsigned char)p[i - 1]))) return 0;
  size_t j = i + 3;
  while (j < n && is_b64url((unsigned char)p[j])) j++;
  if (j - i < 11 || j >= n || p[j] != '.') return 0;
  j++;
  for (int part = 0; part < 2; part++) {
    while (j < n && is_b64url((unsigned char)p[j])) j++;
    if (part == 0 && j < n && p[j] == '.' && j + 1 < n && is_b64url((unsigned char)p[j + 1])) j++;
    else break;
  }
  f->start = i;
  f->end = j;
  f->kind = FM_AN_SECRET_JWT;
  return 1;
}

static int placeholder(const char *v, size_t n) {
  static const char *const words[] = {"null", "none", "nil", "true", "false", "yes", "no",
                                      "undefined", "redacted", "hidden", "~"};
  if (n == 0) return 1;
  for (size_t k = 0; k < sizeof words / sizeof words[0]; k++)
    if (strlen(words[k]) == n && !strncasecmp(v, words[k], n)) return 1;
  if (v[0] == '$' || v[0] == '<' || v[0] == '{' || v[0] == '[' || v[0] == '%') return 1;
  if (has_prefix(v, n, "[REDACTED")) return 1;
  /* masks: "****", "xxxxxx" */
  size_t stars = 0, xs = 0;
  for (size_t k = 0; k < n; k++) {
    stars += v[k] == '*';
    xs += v[k] == 'x' || v[k] == 'X';
  }
  return stars == n || (xs == n && n >= 3);
}

static int conn_string(const char *p, size_t n, size_t i, struct find *f) {
  if (!has_prefix(p + i, n - i, "://")) return 0;
  size_t s = i;
  while (s > 0 && (is_alnum((unsigned char)p[s - 1]) || p[s - 1] == '+' || p[s - 1] == '.' ||
                   p[s - 1] == '-'))
    s--;
  if (i - s < 2) return 0;
  size_t u = i + 3, colon = 0, at = 0;
  if (has_prefix(p + u, n - u, "[REDACTED")) return 0; /* redacted already */
  for (size_t j = u; j < n; j++) {
    unsigned char c = (unsigned char)p[j];
    if (c == '[' && has_prefix(p + j, n - j, "[REDACTED:")) { /* an earlier redaction: opaque */
      const char *close = memchr(p + j, ']', n - j);
      if (!close) break;
      j = (size_t)(close - p);
      continue;
    }
    if (c == '/' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'' ||
        c == '?' || c == '#')
      break;
    if (c == ':' && !colon) colon = j;
    if (c == '@') at = j; /* the last @ before the path: passwords may hold an unescaped @ */
  }
  if (!colon || !at || colon > at) return 0;
  if (placeholder(p + colon + 1, at - colon - 1)) return 0;
  f->start = colon + 1;
  f->end = at;
  f->kind = FM_AN_SECRET_CONN;
  return 1;
}

static int auth_header(const char *p, size_t n, size_t i, struct find *f) {
  size_t j;
  if (has_prefix_ci(p + i, n - i, "bearer ")) j = i + 7;
  else if (has_prefix_ci(p + i, n - i, "basic ")) j = i + 6;
  else return 0;
  if (i > 0 && is_alnum((unsigned char)p[i - 1])) return 0;
  while (j < n && p[j] == ' ') j++;
  size_t v = j;
  while (j < n && (is_b64url((unsigned char)p[j]) || p[j] == '.' || p[j] == '~' || p[j] == '+' ||
                   p[j] == '/' || p[j] == '='))
    j++;
  if (j - v < 8 || placeholder(p + v, j - v)) return 0;
  /* "basic auth" in prose: a credential has a digit or is long */
  int digit = 0;
  for (size_t k = v; k < j; k++) digit |= isdigit((unsigned char)p[k]) != 0;
  if (!digit && j - v < 16) return 0;
  f->start = v;
  f->end = j;
  f->kind = FM_AN_SECRET_TOKEN;
  return 1;
}

static int token_prefix(const char *p, size_t n, size_t i, struct find *f) {
  static const struct {
    const char *pre;
    size_t min;
    int dash; /* '-' may occur in the rest (Slack, GitLab, Google), else letters, digits, '_' */
  } pre[] = {{"ghp_", 20, 0},        {"gho_", 20, 0},     {"ghu_", 20, 0},    {"ghs_", 20, 0},
             {"ghr_", 20, 0},        {"github_pat_", 20, 0}, {"xoxb-", 10, 1}, {"xoxa-", 10, 1},
             {"xoxp-", 10, 1},       {"xoxr-", 10, 1},    {"xoxs-", 10, 1},   {"sk_live_", 16, 0},
             {"rk_live_", 16, 0},    {"glpat-", 16, 1},   {"AIza", 30, 1}};
  if (i > 0 && is_b64url((unsigned char)p[i - 1])) return 0;
  for (size_t k = 0; k < sizeof pre / sizeof pre[0]; k++) {
    if (!has_prefix(p + i, n - i, pre[k].pre)) continue;
    size_t j = i + strlen(pre[k].pre);
    size_t v = j;
    while (j < n && (is_alnum((unsigned char)p[j]) || p[j] == '_' || (pre[k].dash && p[j] == '-')))
      j++;
    if (j - v < pre[k].min) return 0;
    f->start = i;
    f->end = j;
    f->kind = FM_AN_SECRET_TOKEN;
    return 1;
  }
  return 0;
}

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t l = strlen(suffix);
  return n >= l && !strcmp(s + n - l, suffix);
}

/* Which secret a field name announces, by its ending (case, '_', '-' and '.' ignored), or -1. */
static int field_kind(const char *k, size_t n) {
  /* the last 63 letters and digits of the name, in order: the ending is what counts */
  char norm[64];
  size_t m = 0, start = n;
  while (start > 0 && m < sizeof norm - 1)
    if (isalnum((unsigned char)k[--start])) m++;
  m = 0;
  for (size_t i = start; i < n; i++)
    if (isalnum((unsigned char)k[i])) norm[m++] = (char)tolower((unsigned char)k[i]);
  norm[m] = '\0';
  if (m == 0) return -1;
  if (strstr(norm, "public")) return -1;
  if (!strcmp(norm, "pwd") || !strcmp(norm, "oldpwd")) return -1; /* the shell's cwd */
  static const struct {
    const char *suffix;
    int kind;
  } rules[] = {
      {"password", FM_AN_SECRET_PASSWORD}, {"passwd", FM_AN_SECRET_PASSWORD},
      {"pwd", FM_AN_SECRET_PASSWORD},      {"passphrase", FM_AN_SECRET_PASSWORD},
      {"pass", FM_AN_SECRET_PASSWORD},     {"secret", FM_AN_SECRET_SECRET},
      {"token", FM_AN_SECRET_TOKEN},       {"credentials", FM_AN_SECRET_SECRET},
      {"credential", FM_AN_SECRET_SECRET}, {"key", FM_AN_SECRET_KEY},
  };
  for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
    size_t l = strlen(rules[r].suffix);
    if (m >= l && !strcmp(norm + m - l, rules[r].suffix)) {
      /* "pass" alone is too short a word to trust in the middle of names like "bypass" */
      if (!strcmp(rules[r].suffix, "pass") && m != 4 && !ends_with(norm, m, "dbpass") &&
          !ends_with(norm, m, "userpass"))
        return -1;
      return rules[r].kind;
    }
  }
  return -1;
}

static int value_ok(int kind, const char *v, size_t n) {
  if (placeholder(v, n)) return 0;
  if (kind == FM_AN_SECRET_PASSWORD) return 1;
  int digit = 0, alpha = 0, space = 0;
  for (size_t k = 0; k < n; k++) {
    unsigned char c = (unsigned char)v[k];
    digit |= isdigit(c) != 0;
    alpha |= isalpha(c) != 0;
    space |= c == ' ';
  }
  if (space || !alpha) return 0;
  if (kind == FM_AN_SECRET_KEY) return n >= 12 && digit;
  return n >= 8;
}

/* Whether p[i..] starts "name=" or "name: " (another field on the same line). */
static int next_field(const char *p, size_t n, size_t i) {
  if (i >= n || !(isalpha((unsigned char)p[i]) || p[i] == '_')) return 0;
  while (i < n && is_keychar((unsigned char)p[i])) i++;
  return i < n && (p[i] == '=' || (p[i] == ':' && (i + 1 == n || p[i + 1] == ' ')));
}

/* A field at the separator p[i] (':' or '='). */
static int field(const char *p, size_t n, size_t i, struct find *f) {
  char sep = p[i];
  if (sep == ':' && i + 1 < n && (p[i + 1] == '/' || p[i + 1] == ':')) return 0; /* URL, C++ */
  if (sep == '=' && i + 1 < n && p[i + 1] == '=') return 0;                        /* a == b */
  size_t ke = i;
  while (ke > 0 && (p[ke - 1] == ' ' || p[ke - 1] == '\t')) ke--;
  if (ke > 0 && (p[ke - 1] == '"' || p[ke - 1] == '\'')) ke--;
  size_t ks = ke;
  while (ks > 0 && is_keychar((unsigned char)p[ks - 1])) ks--;
  if (ks == ke) return 0;
  int kind = field_kind(p + ks, ke - ks);
  if (kind < 0) return 0;
  size_t ls = ks;
  if (ls > 0 && (p[ls - 1] == '"' || p[ls - 1] == '\'')) ls--;
  while (ls > 0 && (p[ls - 1] == ' ' || p[ls - 1] == '\t' || p[ls - 1] == '-')) ls--;
  if (ls >= 7 && !memcmp(p + ls - 7, "export ", 7)) ls -= 7;
  /* YAML "name: value" and INI "name = value" take the rest of the line as the value (it may
   * hold spaces); .env and logfmt "name=value" end at a space */
  int line_start = (ls == 0 || p[ls - 1] == '\n') &&
                   (sep == ':' || ke < i || (i + 1 < n && (p[i + 1] == ' ' || p[i + 1] == '\t')));
  size_t v = i + 1;
  if (v < n && p[v] == '>') v++; /* => */
  while (v < n && (p[v] == ' ' || p[v] == '\t')) v++;
  size_t ve;
  if (v < n && (p[v] == '"' || p[v] == '\'')) {
    char q = p[v++];
    ve = v;
    while (ve < n && p[ve] != q && p[ve] != '\n') {
      if (p[ve] == '\\' && ve + 1 < n) ve++;
      ve++;
    }
    if (ve > n) ve = n;
  } else if (line_start) {
    /* to the end of the line, or to the next "name=" / "name: " on it (logfmt lines) */
    ve = v;
    while (ve < n && p[ve] != '\n' && p[ve] != '\r') {
      if ((p[ve] == ' ' || p[ve] == '\t') && next_field(p, n, ve + 1)) break;
      ve++;
    }
    /* a trailing comment is not part of the value */
    for (size_t k = v; k + 1 < ve; k++)
      if ((p[k] == ' ' || p[k] == '\t') && p[k + 1] == '#') {
        ve = k;
        break;
      }
    while (ve > v && (p[ve - 1] == ' ' || p[ve - 1] == '\t' || p[ve - 1] == ',')) ve--;
  } else {
    ve = v;
    while (ve < n) {
      unsigned char c = (unsigned char)p[ve];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ';' || c == '&' ||
          c == '"' || c == '\'' || c == '}' || c == ')' || c == ']')
        break;
      ve++;
    }
  }
  if (!value_ok(kind, p + v, ve - v)) return 0;
  f->start = v;
  f->end = ve;
  f->kind = kind;
  f->fstart = ks;
  f->fend = ke;
  return 1;
}

/* The next secret at or after `from`; 0 when none. */
static int find_next(const char *p, size_t n, size_t from, struct find *f) {
  for (size_t i = from; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    f->fstart = f->fend = 0;
    switch (c) {
    case '-':
      if (private_key(p, n, i, f)) return 1;
      break;
    case 'A':
      if (aws_key(p, n, i, f) || token_prefix(p, n, i, f)) return 1;
      break;
    case 'e':
      if (jwt(p, n, i, f)) return 1;
      break;
    case ':':
      if (conn_string(p, n, i, f) || field(p, n, i, f)) return 1;
      break;
    case '=':
      if (field(p, n, i, f)) return 1;
      break;
    case 'b':
    case 'B':
      if (auth_header(p, n, i, f)) return 1;
      break;
    case 'g':
    case 'x':
    case 's':
    case 'r':
      if (token_prefix(p, n, i, f)) return 1;
      break;
    default:
      break;
    }
  }
  return 0;
}

long fm_an_redact(const char *p, size_t n, struct fm_buf *out,
                  uint64_t counts[FM_AN_SECRET_NKINDS]) {
  long found = 0;
  size_t at = 0;
  struct find f;
  while (at < n && find_next(p, n, at, &f)) {
    if (fm_buf_add(out, p + at, f.start - at) || fm_buf_printf(out, "[REDACTED:%s]",
                                                                kind_names[f.kind]))
      return -1;
    if (counts) counts[f.kind]++;
    found++;
    at = f.end; /* every rule's span starts past the position it was found at */
  }
  if (at < n && fm_buf_add(out, p + at, n - at)) return -1;
  return found;
}

/* ---- the line module -------------------------------------------------------------------- */

#define MAX_FINDINGS 50

struct finding {
  uint64_t line;
  int kind;
  char field[64];
};

struct fm_an_secrets {
  uint64_t counts[FM_AN_SECRET_NKINDS];
  uint64_t total;
  struct finding findings[MAX_FINDINGS];
  size_t nfind;
};

struct fm_an_secrets *fm_an_secrets_new(void) { return calloc(1, sizeof(struct fm_an_secrets)); }

void fm_an_secrets_line(struct fm_an_secrets *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len, at = 0;
  struct find f;
  while (at < n && find_next(p, n, at, &f)) {
    s->counts[f.kind]++;
    s->total++;
    if (s->nfind < MAX_FINDINGS) {
      struct finding *d = &s->findings[s->nfind++];
      d->line = l->no;
      d->kind = f.kind;
      size_t fl = f.fend - f.fstart;
      if (fl >= sizeof d->field) fl = sizeof d->field - 1;
      memcpy(d->field, p + f.fstart, fl);
      d->field[fl] = '\0';
    }
    at = f.end;
  }
}

int fm_an_secrets_finish(struct fm_an_secrets *s, json_t *out) {
  json_t *kinds = json_object(), *list = json_array();
  if (!kinds || !list) goto oom;
  for (int k = 0; k < FM_AN_SECRET_NKINDS; k++)
    if (s->counts[k] &&
        json_object_set_new(kinds, kind_names[k], json_integer((json_int_t)s->counts[k])))
      goto oom;
  for (size_t i = 0; i < s->nfind; i++) {
    json_t *o = json_pack("{s:I, s:s}", "line", (json_int_t)s->findings[i].line, "kind",
                          kind_names[s->findings[i].kind]);
    if (!o) goto oom;
    if (s->findings[i].field[0]) {
      json_t *fs = fm_an_json_str(s->findings[i].field, strlen(s->findings[i].field));
      if (!fs || json_object_set_new(o, "field", fs)) {
        json_decref(o);
        goto oom;
      }
    }
    if (json_array_append_new(list, o)) goto oom;
  }
  if (json_object_set_new(out, "count", json_integer((json_int_t)s->total)) ||
      json_object_set_new(out, "kinds", kinds) || json_object_set_new(out, "findings", list))
    return -1;
  return 0;
oom:
  json_decref(kinds);
  json_decref(list);
  return -1;
}

void fm_an_secrets_free(struct fm_an_secrets *s) { free(s); }
