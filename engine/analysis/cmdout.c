/* cmdout.c: output of diagnostic commands (top, ps, df, free, netstat, ss, dmesg, journalctl,
 * kubectl get / describe / logs / get events) parsed line by line into facts and findings.
 *
 * Thresholds are the issue's, all strictly "over": CPU over 70 %, memory over 80 %, disk and
 * inodes over 85 %. CPU used is 100 - idle. Memory used is (total - available) / total where
 * the command shows "available" (free, top's "avail Mem"), else used / total (and "mem_basis"
 * says which). Memory is bounded: at most CX_MAX_FINDINGS findings (CX_MAX_PER_KIND of a kind;
 * all are counted), and each list of facts has its own cap. */
#include "analysis.h"
#include "mcutil.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CX_CPU_THRESHOLD 70.0
#define CX_MEM_THRESHOLD 80.0
#define CX_DISK_THRESHOLD 85.0
#define CX_CLOSE_WAIT_THRESHOLD 20.0
#define CX_TIME_WAIT_THRESHOLD 1000.0
#define CX_CRASH_LOOP_RESTARTS 5.0

#define CX_MAX_FINDINGS 100
#define CX_MAX_PER_KIND 10
#define CX_MAX_KINDS 32
#define CX_MAX_ROWS 200 /* filesystems, pods, events kept as facts */
#define CX_TOP_PROCS 5
#define CX_MAX_UNITS 32
#define CX_MAX_NAMES 64 /* distinct reasons, states, programs counted */
#define CX_MAX_COLS 24
#define CX_MSG_MAX 300

enum cx_kind {
  CX_NONE,
  CX_TOP,
  CX_PS,
  CX_DF,
  CX_FREE,
  CX_NETSTAT,
  CX_SS,
  CX_DMESG,
  CX_JOURNAL,
  CX_KGET,
  CX_KDESC,
  CX_KLOGS,
  CX_KEVENTS,
  CX_NKINDS
};

static const char *const cx_kind_names[CX_NKINDS] = {
    NULL,         "top",         "ps",          "df",           "free",
    "netstat",    "ss",          "dmesg",       "journalctl",   "kubectl_get",
    "kubectl_describe", "kubectl_logs", "kubectl_events"};

struct cx_count {
  char name[48];
  uint64_t n;
  uint64_t line;
};

struct cx_proc {
  char pid[16], user[32], cmd[96], state[8];
  double cpu, mem;
};

struct cx_unit {
  char name[96];
  double restarts_max;
  uint64_t restart_line, kills, ooms, failures, start_limit, start_limit_line;
};

struct cx_container {
  char name[96], state[32], reason[48], last_state[32], last_reason[48];
  long exit_code, restarts;
  int has_exit;
  char ready[8];
};

struct fm_an_cmd {
  enum cx_kind kind;
  uint64_t lines;
  json_t *findings;
  struct cx_count fkinds[CX_MAX_KINDS];
  size_t nfkinds;
  uint64_t findings_dropped;
  int oom;
  /* a table: header column names and positions */
  int have_header;
  struct mc_tok hdr[CX_MAX_COLS];
  char hdr_text[512];
  size_t nhdr;
  size_t hdr_pos[CX_MAX_COLS];
  /* lists of facts */
  json_t *rows; /* filesystems, pods, events, containers' events ... */
  uint64_t rows_total;
  struct cx_count names[CX_MAX_NAMES]; /* states, statuses, reasons */
  size_t nnames;
  /* top / ps */
  struct cx_proc procs[CX_TOP_PROCS], mprocs[CX_TOP_PROCS];
  size_t nprocs, nmprocs;
  uint64_t proc_count, zombies, dstate, iterations;
  double cpu_used, cpu_max, iowait, mem_pct, mem_max, swap_pct, load[3];
  uint64_t cpu_line, cpu_max_line, mem_line, mem_max_line;
  int has_cpu, has_mem, has_load, has_swap;
  double mem_total, mem_used, mem_avail;
  const char *mem_basis; /* static; when there is no "available" figure */
  int has_avail, mem_pending;
  int col_cpu, col_mem, col_pid, col_user, col_cmd, col_state;
  /* df */
  char pending_fs[256];
  int inode_mode, col_use, col_mount;
  /* netstat / ss */
  int col_state_idx;
  struct cx_count progs[16];
  size_t nprogs;
  uint64_t connections;
  /* dmesg / journal */
  json_t *ooms;
  struct cx_unit units[CX_MAX_UNITS];
  size_t nunits;
  /* kubectl describe */
  char pod[128], ns[96], phase[32];
  struct cx_container conts[16];
  size_t nconts;
  int cur_cont, substate, in_events, in_containers, in_conditions, is_node;
  size_t ev_msg_pos;
  /* kubectl logs */
  uint64_t ts_lines;
  double first_ts, last_ts;
  int has_ts;
};

/* ---- findings -------------------------------------------------------------------------- */

static struct cx_count *cx_count_get(struct cx_count *arr, size_t *n, size_t cap, const char *name,
                                     size_t len) {
  if (len >= sizeof arr[0].name) len = sizeof arr[0].name - 1;
  for (size_t i = 0; i < *n; i++)
    if (strlen(arr[i].name) == len && memcmp(arr[i].name, name, len) == 0) return &arr[i];
  if (*n >= cap) return NULL;
  struct cx_count *c = &arr[(*n)++];
  memcpy(c->name, name, len);
  c->name[len] = '\0';
  c->n = 0;
  return c;
}

/* Records a finding: counted always, kept while under the caps. NAN value/threshold -> null. */
__attribute__((format(printf, 7, 8))) static void
cx_find(struct fm_an_cmd *s, const char *kind, const char *severity, uint64_t line, double value,
        double threshold, const char *fmt, ...) {
  struct cx_count *c = cx_count_get(s->fkinds, &s->nfkinds, CX_MAX_KINDS, kind, strlen(kind));
  if (c) c->n++;
  if ((c && c->n > CX_MAX_PER_KIND) || json_array_size(s->findings) >= CX_MAX_FINDINGS) {
    s->findings_dropped++;
    return;
  }
  char msg[CX_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *f = json_object();
  if (!f) { s->oom = 1; return; }
  json_object_set_new(f, "kind", json_string(kind));
  json_object_set_new(f, "severity", json_string(severity));
  json_object_set_new(f, "message", mc_jstr(msg, strlen(msg), CX_MSG_MAX));
  json_object_set_new(f, "line", line ? json_integer((json_int_t)line) : json_null());
  mc_set_num(f, "value", value);
  mc_set_num(f, "threshold", threshold);
  if (json_array_append_new(s->findings, f)) s->oom = 1;
}

/* Copies a token into a fixed buffer as a C string (cut to fit; cleaned at output time). */
static void cx_cpy(char *dst, size_t cap, const char *p, size_t n) {
  if (n >= cap) n = cap - 1;
  memcpy(dst, p, n);
  dst[n] = '\0';
  for (size_t i = 0; i < n; i++)
    if (dst[i] == '\0') dst[i] = '?';
}

static json_t *cx_str(const char *p) { return mc_jstr(p, strlen(p), 256); }

static void cx_row(struct fm_an_cmd *s, json_t *row) {
  s->rows_total++;
  if (!row) { s->oom = 1; return; }
  if (json_array_size(s->rows) >= CX_MAX_ROWS) {
    json_decref(row);
    return;
  }
  json_array_append_new(s->rows, row);
}

/* A new row object, or NULL when the list is full (the row is counted then). */
static json_t *cx_row_new(struct fm_an_cmd *s) {
  if (json_array_size(s->rows) < CX_MAX_ROWS) {
    json_t *o = json_object();
    if (o) return o;
    s->oom = 1;
  }
  s->rows_total++;
  return NULL;
}

static void cx_name_count(struct fm_an_cmd *s, const char *name, size_t len, uint64_t line) {
  struct cx_count *c = cx_count_get(s->names, &s->nnames, CX_MAX_NAMES, name, len);
  if (c) {
    if (!c->n) c->line = line;
    c->n++;
  }
}

/* A parsed number as a long, clamped (a cast of an out-of-range double is undefined). */
static long cx_long(double v) {
  if (!(v > -1e15)) return v > 0 ? 1000000000000000L : -1000000000000000L;
  if (v > 1e15) return 1000000000000000L;
  return (long)v;
}

/* Length of the prefix of p[0..n) without any byte of reject (strcspn for unterminated text). */
static size_t cx_span(const char *p, size_t n, const char *reject) {
  size_t i = 0;
  while (i < n && !strchr(reject, p[i])) i++;
  return i;
}

/* Leading number of p[0..n) ("97%" -> 97); 1 when one was read. */
static int cx_lead_num(const char *p, size_t n, double *out) {
  char tmp[48];
  mc_trim(&p, &n);
  if (n == 0 || n >= sizeof tmp) return 0;
  memcpy(tmp, p, n);
  tmp[n] = '\0';
  char *end;
  double v = strtod(tmp, &end);
  if (end == tmp || !isfinite(v)) return 0;
  *out = v;
  return 1;
}

/* A size with an optional unit (free -h: "15Gi", "512M", "1.2T", "0B"); in KiB-free units. */
static int cx_size(const char *p, size_t n, double *out) {
  char tmp[48];
  mc_trim(&p, &n);
  if (n == 0 || n >= sizeof tmp) return 0;
  memcpy(tmp, p, n);
  tmp[n] = '\0';
  char *end;
  double v = strtod(tmp, &end);
  if (end == tmp || !isfinite(v)) return 0;
  double mul = 1;
  switch (*end) {
  case 'K': case 'k': mul = 1024.0; break;
  case 'M': case 'm': mul = 1048576.0; break;
  case 'G': case 'g': mul = 1073741824.0; break;
  case 'T': case 't': mul = 1099511627776.0; break;
  case 'P': case 'p': mul = 1125899906842624.0; break;
  case 'B': case 'b': case '\0': break;
  default: return 0;
  }
  *out = v * mul;
  return 1;
}

/* ---- header tables --------------------------------------------------------------------- */

/* Remembers the header's tokens and their byte offsets (kubectl columns are aligned on them). */
static void cx_header(struct fm_an_cmd *s, const struct fm_an_line *l) {
  size_t n = l->len < sizeof s->hdr_text - 1 ? l->len : sizeof s->hdr_text - 1;
  memcpy(s->hdr_text, l->p, n);
  s->hdr_text[n] = '\0';
  s->nhdr = mc_split_ws(s->hdr_text, n, s->hdr, CX_MAX_COLS, 0);
  for (size_t i = 0; i < s->nhdr; i++) s->hdr_pos[i] = (size_t)(s->hdr[i].p - s->hdr_text);
  s->have_header = 1;
}

static int cx_col(const struct fm_an_cmd *s, const char *name) {
  for (size_t i = 0; i < s->nhdr; i++)
    if (mc_tok_eq(&s->hdr[i], name)) return (int)i;
  return -1;
}

/* ---- top and ps ------------------------------------------------------------------------ */

static void cx_proc_keep(struct cx_proc *arr, size_t *n, const struct cx_proc *p, int by_mem) {
  double v = by_mem ? p->mem : p->cpu;
  size_t at = *n < CX_TOP_PROCS ? (*n)++ : CX_TOP_PROCS;
  if (at == CX_TOP_PROCS) {
    double last = by_mem ? arr[CX_TOP_PROCS - 1].mem : arr[CX_TOP_PROCS - 1].cpu;
    if (v <= last) return;
    at = CX_TOP_PROCS - 1;
  }
  while (at > 0 && (by_mem ? arr[at - 1].mem : arr[at - 1].cpu) < v) {
    arr[at] = arr[at - 1];
    at--;
  }
  arr[at] = *p;
}

/* A process row under a header with PID (top, ps aux, ps -ef). */
static void cx_proc_row(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[CX_MAX_COLS];
  size_t k = mc_split_ws(l->p, l->len, t, s->nhdr, 1);
  if (k < s->nhdr || s->col_pid < 0) return;
  double pid;
  if (!cx_lead_num(t[s->col_pid].p, t[s->col_pid].n, &pid)) return;
  struct cx_proc p = {0};
  cx_cpy(p.pid, sizeof p.pid, t[s->col_pid].p, t[s->col_pid].n);
  if (s->col_user >= 0) cx_cpy(p.user, sizeof p.user, t[s->col_user].p, t[s->col_user].n);
  if (s->col_cmd >= 0) cx_cpy(p.cmd, sizeof p.cmd, t[s->col_cmd].p, t[s->col_cmd].n);
  if (s->col_state >= 0) cx_cpy(p.state, sizeof p.state, t[s->col_state].p, t[s->col_state].n);
  if (s->col_cpu >= 0) cx_lead_num(t[s->col_cpu].p, t[s->col_cpu].n, &p.cpu);
  if (s->col_mem >= 0) cx_lead_num(t[s->col_mem].p, t[s->col_mem].n, &p.mem);
  s->proc_count++;
  if (strchr(p.state, 'Z') || strstr(p.cmd, "<defunct>")) s->zombies++;
  if (p.state[0] == 'D') s->dstate++;
  cx_proc_keep(s->procs, &s->nprocs, &p, 0);
  cx_proc_keep(s->mprocs, &s->nmprocs, &p, 1);
  if (s->col_mem >= 0 && p.mem > CX_MEM_THRESHOLD)
    cx_find(s, "memory_saturation", "high", l->no, p.mem, CX_MEM_THRESHOLD,
            "process %s (pid %s) uses %.1f%% of memory", p.cmd, p.pid, p.mem);
}

static void cx_proc_header(struct fm_an_cmd *s, const struct fm_an_line *l) {
  cx_header(s, l);
  s->col_pid = cx_col(s, "PID");
  s->col_cpu = cx_col(s, "%CPU");
  if (s->col_cpu < 0) s->col_cpu = cx_col(s, "C");
  s->col_mem = cx_col(s, "%MEM");
  s->col_user = cx_col(s, "USER");
  if (s->col_user < 0) s->col_user = cx_col(s, "UID");
  s->col_state = cx_col(s, "S");
  if (s->col_state < 0) s->col_state = cx_col(s, "STAT");
  s->col_cmd = (int)s->nhdr - 1; /* COMMAND / CMD is last and takes the rest of the line */
}

/* "key: 1.0 us, 2.0 sy, ..." style: the number before `label` in a comma list. */
static int cx_labeled(const char *p, size_t n, const char *label, double *out) {
  size_t ll = strlen(label);
  for (size_t i = 0; i + ll <= n; i++) {
    if (memcmp(p + i, label, ll) != 0) continue;
    size_t after = i + ll;
    if (after < n && isalnum((unsigned char)p[after])) continue;
    size_t e = i;
    while (e > 0 && (p[e - 1] == ' ' || p[e - 1] == '%')) e--;
    /* old top: "16330364k total" (one unit for the whole line, so ratios hold) */
    if (e > 1 && strchr("kKmMgG", p[e - 1]) && p[e - 1] && isdigit((unsigned char)p[e - 2])) e--;
    size_t b = e;
    while (b > 0 && (isdigit((unsigned char)p[b - 1]) || p[b - 1] == '.')) b--;
    if (b == e) continue;
    if (b > 0 && isalpha((unsigned char)p[b - 1])) continue;
    return cx_lead_num(p + b, e - b, out);
  }
  return 0;
}

static void cx_mem_done(struct fm_an_cmd *s) {
  if (!s->mem_pending || !(s->mem_total > 0)) return;
  s->mem_pending = 0;
  double used = s->has_avail ? s->mem_total - s->mem_avail : s->mem_used;
  s->mem_pct = used / s->mem_total * 100.0;
  s->has_mem = 1;
  if (s->mem_pct > s->mem_max || s->mem_max_line == 0) {
    s->mem_max = s->mem_pct;
    s->mem_max_line = s->mem_line;
  }
}

static void cx_top_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  if (mc_starts(p, n, "top - ")) {
    cx_mem_done(s);
    s->iterations++;
    s->have_header = 0;
    s->nprocs = s->nmprocs = 0; /* the process facts are those of the last iteration */
    s->proc_count = s->zombies = s->dstate = 0;
    const char *la = mc_find(p, n, "load average:");
    if (la) {
      size_t off = (size_t)(la - p) + 13;
      struct mc_tok t[3];
      size_t k = mc_split_ws(p + off, n - off, t, 3, 0);
      for (size_t i = 0; i < k; i++) {
        s->has_load |= cx_lead_num(t[i].p, t[i].n, &s->load[i]);
      }
    }
    return;
  }
  if (mc_starts(p, n, "%Cpu") || mc_starts(p, n, "Cpu(s)")) {
    double id, wa;
    if (cx_labeled(p, n, "id", &id)) {
      s->cpu_used = 100.0 - id;
      s->cpu_line = l->no;
      s->has_cpu = 1;
      if (s->cpu_used > s->cpu_max || s->cpu_max_line == 0) {
        s->cpu_max = s->cpu_used;
        s->cpu_max_line = l->no;
      }
    }
    if (cx_labeled(p, n, "wa", &wa)) s->iowait = wa;
    return;
  }
  if (mc_starts(p, n, "MiB Mem") || mc_starts(p, n, "KiB Mem") || mc_starts(p, n, "GiB Mem") ||
      mc_starts(p, n, "Mem:")) {
    double total, used = 0, buffers = 0;
    if (cx_labeled(p, n, "total", &total)) {
      cx_labeled(p, n, "used", &used);
      /* old top counts buffers (here) and the page cache (on the Swap line) as used */
      if (cx_labeled(p, n, "buffers", &buffers)) s->mem_basis = "used-buffers-cached";
      else s->mem_basis = "used";
      s->mem_total = total;
      s->mem_used = used - buffers;
      s->mem_line = l->no;
      s->has_avail = 0;
      s->mem_pending = 1;
    }
    return;
  }
  if (mc_starts(p, n, "MiB Swap") || mc_starts(p, n, "KiB Swap") || mc_starts(p, n, "GiB Swap") ||
      mc_starts(p, n, "Swap:")) {
    double st, su, av;
    if (cx_labeled(p, n, "total", &st) && cx_labeled(p, n, "used", &su) && st > 0) {
      s->swap_pct = su / st * 100.0;
      s->has_swap = 1;
    }
    if (cx_labeled(p, n, "avail", &av)) {
      s->mem_avail = av;
      s->has_avail = 1;
    }
    double cached;
    if (!s->has_avail && cx_labeled(p, n, "cached", &cached)) s->mem_used -= cached;
    cx_mem_done(s);
    return;
  }
  if (mc_starts(p, n, "Tasks:")) return;
  struct mc_tok t[2];
  size_t k = mc_split_ws(p, n, t, 2, 0);
  if (k >= 1 && mc_tok_eq(&t[0], "PID")) {
    cx_proc_header(s, l);
    return;
  }
  if (s->have_header && k >= 1) cx_proc_row(s, l);
}

static void cx_ps_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[3];
  size_t k = mc_split_ws(l->p, l->len, t, 3, 0);
  if (k >= 2 && (mc_tok_eq(&t[1], "PID") || mc_tok_eq(&t[0], "PID"))) {
    cx_proc_header(s, l);
    return;
  }
  if (s->have_header) cx_proc_row(s, l);
}

static json_t *cx_procs_json(const struct cx_proc *arr, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n; i++) {
    json_t *o = json_object();
    if (!o) break;
    json_object_set_new(o, "pid", cx_str(arr[i].pid));
    json_object_set_new(o, "user", cx_str(arr[i].user));
    json_object_set_new(o, "command", cx_str(arr[i].cmd));
    json_object_set_new(o, "cpu_pct", json_real(arr[i].cpu));
    json_object_set_new(o, "mem_pct", json_real(arr[i].mem));
    json_array_append_new(a, o);
  }
  return a;
}

/* ---- df -------------------------------------------------------------------------------- */

static void cx_df_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  if (mc_starts(p, n, "Filesystem")) {
    cx_header(s, l);
    s->inode_mode = cx_col(s, "IUse%") >= 0;
    s->col_use = s->inode_mode ? cx_col(s, "IUse%") : cx_col(s, "Use%");
    if (s->col_use < 0) s->col_use = cx_col(s, "Capacity");
    /* "Mounted on" is two header words and one column, always the last */
    s->col_mount = cx_col(s, "Mounted");
    if (s->col_mount >= 0) s->nhdr = (size_t)s->col_mount + 1;
    s->pending_fs[0] = '\0';
    return;
  }
  if (!s->have_header || s->col_use < 0 || s->col_mount < 0) return;
  struct mc_tok t[CX_MAX_COLS + 1];
  char joined[FM_AN_MAX_LINE < 1024 ? FM_AN_MAX_LINE : 1024];
  size_t jn = 0;
  if (s->pending_fs[0]) {
    /* a long device name printed alone on the previous line */
    jn = (size_t)snprintf(joined, sizeof joined, "%s ", s->pending_fs);
    if (jn >= sizeof joined) jn = sizeof joined - 1;
    size_t add = n < sizeof joined - jn ? n : sizeof joined - jn;
    memcpy(joined + jn, p, add);
    jn += add;
    p = joined;
    n = jn;
    s->pending_fs[0] = '\0';
  }
  size_t k = mc_split_ws(p, n, t, s->nhdr, 1);
  if (k == 1) {
    cx_cpy(s->pending_fs, sizeof s->pending_fs, t[0].p, t[0].n);
    return;
  }
  if (k < s->nhdr) return;
  double pct;
  const struct mc_tok *u = &t[s->col_use];
  if (!cx_lead_num(u->p, u->n, &pct) || u->n == 0 || u->p[u->n - 1] != '%') return;
  char fs[160], mount[160];
  cx_cpy(fs, sizeof fs, t[0].p, t[0].n);
  cx_cpy(mount, sizeof mount, t[s->col_mount].p, t[s->col_mount].n);
  json_t *row = cx_row_new(s);
  if (row) {
    json_object_set_new(row, "filesystem", cx_str(fs));
    json_object_set_new(row, "mount", cx_str(mount));
    for (int c = 1; c < s->col_use; c++) {
      char key[32];
      cx_cpy(key, sizeof key, s->hdr[c].p, s->hdr[c].n);
      for (char *q = key; *q; q++) *q = (char)tolower((unsigned char)*q);
      json_object_set_new(row, key, mc_jstr(t[c].p, t[c].n, 64));
    }
    json_object_set_new(row, s->inode_mode ? "inode_use_pct" : "use_pct", json_real(pct));
  }
  if (row) cx_row(s, row);
  /* read-only images (snap squashfs on loop devices) are always full by design */
  if (strncmp(fs, "/dev/loop", 9) == 0 || strncmp(mount, "/snap/", 6) == 0) return;
  if (pct > CX_DISK_THRESHOLD)
    cx_find(s, s->inode_mode ? "inode_saturation" : "disk_saturation", pct >= 95 ? "high" : "medium",
            l->no, pct, CX_DISK_THRESHOLD, "%s mounted on %s is %.0f%% full%s", fs, mount, pct,
            s->inode_mode ? " (inodes)" : "");
}

/* ---- free ------------------------------------------------------------------------------ */

static void cx_free_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[CX_MAX_COLS];
  size_t k = mc_split_ws(l->p, l->len, t, CX_MAX_COLS, 0);
  if (k == 0) return;
  if (!s->have_header || mc_tok_eq(&t[0], "total")) {
    if (mc_tok_eq(&t[0], "total")) cx_header(s, l);
    return;
  }
  int mem = mc_tok_eq(&t[0], "Mem:"), swap = mc_tok_eq(&t[0], "Swap:");
  int bc = mc_tok_eq(&t[0], "-/+");
  if (bc) {
    /* old free: "-/+ buffers/cache: used free" is memory used without the cache */
    double used;
    if (k >= 3 && cx_size(t[2].p, t[2].n, &used) && s->mem_total > 0 && !s->has_avail) {
      s->mem_used = used;
      s->mem_basis = "used-buffers-cache";
      s->mem_line = l->no;
      s->mem_pending = 1;
    }
    return;
  }
  if (!mem && !swap) return;
  double total = 0, used = 0, avail = 0;
  int has_total = 0, has_used = 0, has_av = 0;
  for (size_t c = 0; c < s->nhdr && c + 1 < k; c++) {
    double v;
    if (!cx_size(t[c + 1].p, t[c + 1].n, &v)) continue;
    if (mc_tok_eq(&s->hdr[c], "total")) { total = v; has_total = 1; }
    else if (mc_tok_eq(&s->hdr[c], "used")) { used = v; has_used = 1; }
    else if (mc_tok_eq(&s->hdr[c], "available")) { avail = v; has_av = 1; }
  }
  if (!has_total || !(total > 0)) return;
  if (swap) {
    if (has_used) {
      s->swap_pct = used / total * 100.0;
      s->has_swap = 1;
    }
    return;
  }
  s->mem_total = total;
  s->mem_used = used;
  s->mem_avail = avail;
  s->has_avail = has_av;
  s->mem_line = l->no;
  s->mem_pending = has_av || has_used;
}

/* ---- netstat / ss ---------------------------------------------------------------------- */

static void cx_norm_state(const char *p, size_t n, char *out, size_t cap) {
  cx_cpy(out, cap, p, n);
  for (char *q = out; *q; q++) {
    if (*q == '-') *q = '_';
    *q = (char)toupper((unsigned char)*q);
  }
  if (strcmp(out, "ESTAB") == 0) snprintf(out, cap, "ESTABLISHED");
  else if (strcmp(out, "FIN_WAIT_1") == 0) snprintf(out, cap, "FIN_WAIT1");
  else if (strcmp(out, "FIN_WAIT_2") == 0) snprintf(out, cap, "FIN_WAIT2");
}

static void cx_net_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[8];
  size_t k = mc_split_ws(l->p, l->len, t, 8, 1);
  if (k == 0) return;
  if (mc_tok_eq(&t[0], "Proto") || mc_tok_eq(&t[0], "State") || mc_tok_eq(&t[0], "Netid")) {
    cx_header(s, l);
    s->col_state_idx = mc_tok_eq(&t[0], "Netid") ? 1 : mc_tok_eq(&t[0], "State") ? 0 : 5;
    return;
  }
  if (!s->have_header) return;
  int netstat = s->col_state_idx == 5;
  if (netstat && !(t[0].n >= 3 && memcmp(t[0].p, "tcp", 3) == 0)) return; /* udp has no state */
  if ((size_t)s->col_state_idx >= k) return;
  char st[32];
  cx_norm_state(t[s->col_state_idx].p, t[s->col_state_idx].n, st, sizeof st);
  if (!isalpha((unsigned char)st[0])) return;
  s->connections++;
  cx_name_count(s, st, strlen(st), l->no);
  if (strcmp(st, "CLOSE_WAIT") != 0) return;
  /* the owning program: netstat "1234/java", ss users:(("java",pid=1234,fd=5)) */
  size_t pk = netstat ? 6 : (size_t)s->col_state_idx + 5;
  char prog[48] = "?";
  if (pk < k) {
    struct mc_tok rest = t[pk];
    const char *q = memchr(rest.p, '"', rest.n);
    if (q) {
      const char *e = memchr(q + 1, '"', rest.n - (size_t)(q + 1 - rest.p));
      if (e) cx_cpy(prog, sizeof prog, q + 1, (size_t)(e - q - 1));
    } else {
      const char *sl = memchr(rest.p, '/', rest.n);
      if (sl) {
        size_t end = (size_t)(sl + 1 - rest.p);
        size_t e2 = end;
        while (e2 < rest.n && rest.p[e2] != ' ') e2++;
        cx_cpy(prog, sizeof prog, sl + 1, e2 - end);
      }
    }
  }
  struct cx_count *c = cx_count_get(s->progs, &s->nprogs, 16, prog, strlen(prog));
  if (c) c->n++;
}

/* ---- dmesg and kernel lines ------------------------------------------------------------ */

/* Kernel messages: OOM kills, segfaults, I/O errors, hung tasks, conntrack. Returns 1 if the
 * line was one of them. */
static int cx_kernel(struct fm_an_cmd *s, const char *p, size_t n, uint64_t line) {
  const char *k = mc_find(p, n, "Killed process ");
  if (!k) k = mc_find(p, n, "Kill process ");
  if (k && mc_find(p, n, "out of memory")) {
    const char *num = memchr(k, ' ', n - (size_t)(k - p));
    num = num ? memchr(num + 1, ' ', n - (size_t)(num + 1 - p)) : NULL;
    char pid[16] = "?", name[64] = "?";
    if (num) {
      num++;
      size_t i = 0;
      size_t rem = n - (size_t)(num - p);
      while (i < rem && isdigit((unsigned char)num[i])) i++;
      cx_cpy(pid, sizeof pid, num, i);
      if (i + 1 < rem && num[i] == ' ' && num[i + 1] == '(') {
        const char *e = memchr(num + i + 2, ')', rem - i - 2);
        if (e) cx_cpy(name, sizeof name, num + i + 2, (size_t)(e - (num + i + 2)));
      }
    }
    const char *rss = mc_find(p, n, "anon-rss:");
    char rssv[32] = "";
    if (rss) {
      size_t i = 9, rem = n - (size_t)(rss - p);
      while (i < rem && rss[i] != ',' && rss[i] != ' ') i++;
      cx_cpy(rssv, sizeof rssv, rss + 9, i - 9);
    }
    cx_find(s, "oom_kill", "high", line, NAN, NAN, "OOM killer killed %s (pid %s)%s%s", name, pid,
            rssv[0] ? ", anon-rss " : "", rssv);
    if (json_array_size(s->ooms) < 20) {
      json_t *o = json_object();
      if (o) {
        json_object_set_new(o, "pid", cx_str(pid));
        json_object_set_new(o, "process", cx_str(name));
        json_object_set_new(o, "line", json_integer((json_int_t)line));
        json_array_append_new(s->ooms, o);
      }
    }
    return 1;
  }
  if (mc_find(p, n, "invoked oom-killer")) {
    cx_name_count(s, "oom_invocations", 15, line);
    return 1;
  }
  const char *sf = mc_find(p, n, " segfault at ");
  if (sf) {
    /* "java[1234]: segfault at 0 ip ..." : the task is the word before the colon */
    size_t e = (size_t)(sf - p);
    while (e > 0 && p[e - 1] == ':') e--;
    size_t b = e;
    while (b > 0 && p[b - 1] != ' ') b--;
    char task[64];
    cx_cpy(task, sizeof task, p + b, e - b);
    cx_find(s, "segfault", "medium", line, NAN, NAN, "%s crashed with a segmentation fault", task);
    return 1;
  }
  if (mc_find(p, n, "I/O error") || mc_find(p, n, "EXT4-fs error") ||
      mc_find(p, n, "critical medium error") || (mc_find(p, n, "XFS") && mc_find(p, n, "error"))) {
    char msg[160];
    cx_cpy(msg, sizeof msg, p, n);
    cx_find(s, "io_error", "high", line, NAN, NAN, "disk I/O error: %s", msg);
    return 1;
  }
  if (mc_find(p, n, "blocked for more than")) {
    char msg[160];
    cx_cpy(msg, sizeof msg, p, n);
    cx_find(s, "hung_task", "medium", line, NAN, NAN, "hung task: %s", msg);
    return 1;
  }
  if (mc_find(p, n, "nf_conntrack: table full")) {
    cx_find(s, "conntrack_full", "high", line, NAN, NAN, "conntrack table full, packets dropped");
    return 1;
  }
  if (mc_find(p, n, "Kernel panic")) {
    cx_find(s, "kernel_panic", "high", line, NAN, NAN, "kernel panic");
    return 1;
  }
  return 0;
}

static void cx_dmesg_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  cx_kernel(s, l->p, l->len, l->no);
}

/* ---- journalctl ------------------------------------------------------------------------ */

static struct cx_unit *cx_unit_get(struct fm_an_cmd *s, const char *p, size_t n) {
  if (n >= sizeof s->units[0].name) n = sizeof s->units[0].name - 1;
  for (size_t i = 0; i < s->nunits; i++)
    if (strlen(s->units[i].name) == n && memcmp(s->units[i].name, p, n) == 0) return &s->units[i];
  if (s->nunits >= CX_MAX_UNITS) return NULL;
  struct cx_unit *u = &s->units[s->nunits++];
  memset(u, 0, sizeof *u);
  cx_cpy(u->name, sizeof u->name, p, n);
  return u;
}

static void cx_journal_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  if (mc_starts(p, n, "-- ")) return;
  cx_kernel(s, p, n, l->no);
  /* systemd: "<unit>: Main process exited, ...": the unit is the word before ": " */
  const char *markers[] = {": Main process exited", ": Scheduled restart job", ": Failed with result",
                           ": Start request repeated too quickly"};
  for (size_t m = 0; m < 4; m++) {
    const char *at = mc_find(p, n, markers[m]);
    if (!at) continue;
    size_t b = (size_t)(at - p);
    while (b > 0 && p[b - 1] != ' ') b--;
    struct cx_unit *u = cx_unit_get(s, p + b, (size_t)(at - p) - b);
    const char *rest = at + 2;
    size_t rn = n - (size_t)(rest - p);
    char unit[96];
    cx_cpy(unit, sizeof unit, p + b, (size_t)(at - p) - b);
    if (m == 0) {
      const char *st = mc_find(rest, rn, "status=");
      double code = NAN;
      if (st) {
        size_t from = (size_t)(st + 7 - rest);
        cx_lead_num(st + 7, cx_span(st + 7, rn - from, "/, "), &code);
      }
      if (mc_find(rest, rn, "code=killed")) {
        if (u) u->kills++;
        cx_find(s, "process_killed", "high", l->no, code, NAN,
                "%s: main process killed by signal %.0f%s", unit, code,
                code == 9 ? " (SIGKILL: OOM killer or a forced stop)" : "");
      } else if (mc_find(rest, rn, "code=dumped")) {
        if (u) u->failures++;
        cx_find(s, "process_crash", "high", l->no, code, NAN, "%s: main process dumped core (signal %.0f)",
                unit, code);
      } else if (isfinite(code) && code != 0) {
        if (u) u->failures++;
        cx_find(s, "process_exit", "medium", l->no, code, NAN, "%s: main process exited with status %.0f",
                unit, code);
      }
    } else if (m == 1) {
      double c;
      const char *at2 = mc_find(rest, rn, "counter is at ");
      if (at2 && cx_lead_num(at2 + 14, rn - (size_t)(at2 + 14 - rest), &c) && u &&
          c >= u->restarts_max) {
        u->restarts_max = c;
        u->restart_line = l->no;
      }
    } else if (m == 2) {
      if (mc_find(rest, rn, "'oom-kill'")) {
        if (u) u->ooms++;
        cx_find(s, "oom_kill", "high", l->no, NAN, NAN, "%s failed: killed by the OOM killer", unit);
      } else if (mc_find(rest, rn, "'start-limit-hit'")) {
        if (u && !u->start_limit_line) u->start_limit_line = l->no;
        if (u) u->start_limit++;
      } else if (u) u->failures++;
    } else {
      if (u && !u->start_limit_line) u->start_limit_line = l->no;
      if (u) u->start_limit++;
    }
    return;
  }
}

static void cx_journal_finish(struct fm_an_cmd *s) {
  for (size_t i = 0; i < s->nunits; i++) {
    struct cx_unit *u = &s->units[i];
    if (u->restarts_max > 0)
      cx_find(s, "restart", u->restarts_max >= CX_CRASH_LOOP_RESTARTS ? "high" : "medium",
              u->restart_line, u->restarts_max, NAN, "%s restarted by systemd (restart counter %.0f)",
              u->name, u->restarts_max);
    if (u->start_limit)
      cx_find(s, "crash_loop", "high", u->start_limit_line, u->restarts_max, NAN,
              "%s: start request repeated too quickly (systemd gave up restarting it)", u->name);
    else if (u->restarts_max >= CX_CRASH_LOOP_RESTARTS)
      cx_find(s, "crash_loop", "high", u->restart_line, u->restarts_max, CX_CRASH_LOOP_RESTARTS,
              "%s is crash looping (restart counter %.0f)", u->name, u->restarts_max);
    json_t *o = json_object();
    if (o) {
      json_object_set_new(o, "unit", cx_str(u->name));
      json_object_set_new(o, "restarts", json_real(u->restarts_max));
      json_object_set_new(o, "kills", json_integer((json_int_t)u->kills));
      json_object_set_new(o, "oom_kills", json_integer((json_int_t)u->ooms));
      json_object_set_new(o, "failures", json_integer((json_int_t)u->failures));
      json_object_set_new(o, "start_limit_hit", json_boolean(u->start_limit > 0));
    }
    cx_row(s, o);
  }
}

/* ---- kubectl get ----------------------------------------------------------------------- */

/* A kubectl status to a finding kind (NULL: healthy or unknown). */
static const char *cx_pod_status_kind(const char *st, const char **sev) {
  *sev = "high";
  if (strstr(st, "CrashLoopBackOff")) return "crash_loop";
  if (strstr(st, "OOMKilled")) return "oom_kill";
  if (strstr(st, "ImagePullBackOff") || strstr(st, "ErrImagePull")) return "image_pull";
  if (strstr(st, "CreateContainerConfigError") || strstr(st, "CreateContainerError")) return "config_error";
  *sev = "medium";
  if (strstr(st, "Error")) return "pod_error";
  if (strcmp(st, "Pending") == 0 || strstr(st, "ContainerCreating")) return "pending";
  if (strstr(st, "Evicted")) return "eviction";
  if (strstr(st, "NotReady")) {
    *sev = "high";
    return "node_not_ready";
  }
  return NULL;
}

static void cx_kget_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[CX_MAX_COLS];
  size_t k = mc_split_ws(l->p, l->len, t, CX_MAX_COLS, 0);
  if (k == 0) return;
  if (mc_tok_eq(&t[0], "NAME") || (mc_tok_eq(&t[0], "NAMESPACE") && k > 1 && mc_tok_eq(&t[1], "NAME"))) {
    cx_header(s, l);
    return;
  }
  if (!s->have_header) return;
  int cns = cx_col(s, "NAMESPACE"), cname = cx_col(s, "NAME"), cready = cx_col(s, "READY");
  int cst = cx_col(s, "STATUS"), crs = cx_col(s, "RESTARTS");
  /* "RESTARTS" may read "5 (2m ago)": fold the parenthesis into it, shifting later columns */
  if (crs >= 0 && (size_t)crs + 1 < k && t[crs + 1].n && t[crs + 1].p[0] == '(') {
    size_t e = (size_t)crs + 1;
    while (e < k && t[e].p[t[e].n - 1] != ')') e++;
    if (e < k) {
      size_t drop = e - (size_t)crs;
      t[crs].n = (size_t)(t[e].p + t[e].n - t[crs].p);
      memmove(&t[crs + 1], &t[e + 1], (k - e - 1) * sizeof t[0]);
      k -= drop;
    }
  }
  if (cname < 0 || (size_t)cname >= k) return;
  char name[128], ns[64] = "", ready[16] = "", st[64] = "";
  double restarts = 0;
  cx_cpy(name, sizeof name, t[cname].p, t[cname].n);
  if (cns >= 0 && (size_t)cns < k) cx_cpy(ns, sizeof ns, t[cns].p, t[cns].n);
  if (cready >= 0 && (size_t)cready < k) cx_cpy(ready, sizeof ready, t[cready].p, t[cready].n);
  if (cst >= 0 && (size_t)cst < k) cx_cpy(st, sizeof st, t[cst].p, t[cst].n);
  int has_rs = crs >= 0 && (size_t)crs < k && cx_lead_num(t[crs].p, t[crs].n, &restarts);
  json_t *row = cx_row_new(s);
  if (row) {
    json_object_set_new(row, "name", cx_str(name));
    if (ns[0]) json_object_set_new(row, "namespace", cx_str(ns));
    if (ready[0]) json_object_set_new(row, "ready", cx_str(ready));
    if (st[0]) json_object_set_new(row, "status", cx_str(st));
    if (has_rs) json_object_set_new(row, "restarts", json_real(restarts));
  }
  if (row) cx_row(s, row);
  if (st[0]) cx_name_count(s, st, strlen(st), l->no);
  const char *sev;
  const char *fk = st[0] ? cx_pod_status_kind(st, &sev) : NULL;
  if (fk)
    cx_find(s, fk, sev, l->no, has_rs ? restarts : NAN, NAN, "%s%s%s is %s%s", ns, ns[0] ? "/" : "",
            name, st, has_rs && restarts > 0 ? " after restarts" : "");
  if (has_rs && restarts > 0 && (!fk || strcmp(fk, "crash_loop") != 0))
    cx_find(s, "restart", restarts >= CX_CRASH_LOOP_RESTARTS ? "medium" : "low", l->no, restarts, NAN,
            "%s%s%s restarted %.0f times", ns, ns[0] ? "/" : "", name, restarts);
  /* deployments and the like: READY "x/y" with x < y */
  if (ready[0] && !fk && (strcmp(st, "Running") == 0 || !st[0])) {
    char *end, *end2 = NULL;
    long a = strtol(ready, &end, 10), b = *end == '/' ? strtol(end + 1, &end2, 10) : -1;
    if (*end == '/' && end2 != end + 1 && a >= 0 && a < b)
      cx_find(s, "not_ready", "medium", l->no, (double)a, (double)b, "%s%s%s has %ld of %ld ready", ns,
              ns[0] ? "/" : "", name, a, b);
  }
}

/* ---- kubectl describe ------------------------------------------------------------------ */

static void cx_kdesc_event(struct fm_an_cmd *s, const struct fm_an_line *l, const char *type,
                           const char *reason, const char *msg, double count) {
  json_t *e = json_array_size(s->rows) < CX_MAX_ROWS ? json_object() : NULL;
  if (!e) s->rows_total++; /* full (or out of memory): counted only */
  else {
    json_object_set_new(e, "type", cx_str(type));
    json_object_set_new(e, "reason", cx_str(reason));
    if (isfinite(count)) json_object_set_new(e, "count", json_real(count));
    json_object_set_new(e, "message", cx_str(msg));
    json_object_set_new(e, "line", json_integer((json_int_t)l->no));
  }
  if (e) cx_row(s, e);
  cx_name_count(s, reason, strlen(reason), l->no);
  if (strcmp(type, "Warning") != 0) return;
  const char *what = s->pod[0] ? s->pod : "";
  if (strstr(msg, "Back-off restarting failed container"))
    cx_find(s, "crash_loop", "high", l->no, count, NAN, "%s: %s", what, msg);
  else if (strcmp(reason, "Unhealthy") == 0 || strstr(msg, "probe failed"))
    cx_find(s, "probe_failure", strstr(msg, "Liveness") ? "high" : "medium", l->no, count, NAN,
            "%s: %s", what, msg);
  else if (strcmp(reason, "FailedScheduling") == 0)
    cx_find(s, "scheduling_failure", "high", l->no, count, NAN, "%s: %s", what, msg);
  else if (strcmp(reason, "OOMKilling") == 0)
    cx_find(s, "oom_kill", "high", l->no, count, NAN, "%s: %s", what, msg);
  else if (strstr(msg, "ImagePull") || strstr(msg, "pull image") || strstr(msg, "pulling image"))
    cx_find(s, "image_pull", "high", l->no, count, NAN, "%s: %s", what, msg);
  else if (strcmp(reason, "FailedMount") == 0 || strcmp(reason, "FailedAttachVolume") == 0)
    cx_find(s, "mount_failure", "high", l->no, count, NAN, "%s: %s", what, msg);
  else if (strcmp(reason, "Evicted") == 0)
    cx_find(s, "eviction", "medium", l->no, count, NAN, "%s: %s", what, msg);
  else cx_find(s, "warning_event", "low", l->no, count, NAN, "%s: %s: %s", what, reason, msg);
}

/* "(x50 over 12m)" in an Age column: the repeat count, else 1. */
static double cx_event_count(const char *p, size_t n) {
  const char *x = mc_find(p, n, "(x");
  double c;
  if (x && cx_lead_num(x + 2, cx_span(x + 2, n - (size_t)(x + 2 - p), " )"), &c)) return c;
  return 1;
}

/* A row of "Conditions:" (kubectl describe node): a pressure that is True, or a node that is not
 * Ready. Pods' conditions (Ready False) are covered by their containers' states. */
static void cx_kdesc_condition(struct fm_an_cmd *s, const struct fm_an_line *l) {
  struct mc_tok t[3];
  if (mc_split_ws(l->p, l->len, t, 3, 0) < 2) return;
  char type[48], st[16];
  cx_cpy(type, sizeof type, t[0].p, t[0].n);
  cx_cpy(st, sizeof st, t[1].p, t[1].n);
  static const struct {
    const char *type, *kind;
  } pressures[] = {{"MemoryPressure", "memory_pressure"},
                   {"DiskPressure", "disk_pressure"},
                   {"PIDPressure", "pid_pressure"},
                   {"NetworkUnavailable", "network_unavailable"}};
  for (size_t i = 0; i < sizeof pressures / sizeof pressures[0]; i++)
    if (strcmp(type, pressures[i].type) == 0 && strcmp(st, "True") == 0)
      cx_find(s, pressures[i].kind, "high", l->no, NAN, NAN, "node %s: %s is True", s->pod, type);
  if (s->is_node && strcmp(type, "Ready") == 0 && strcmp(st, "True") != 0)
    cx_find(s, "node_not_ready", "high", l->no, NAN, NAN, "node %s is not Ready (%s)", s->pod, st);
}

static void cx_kdesc_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  size_t ind = 0;
  while (ind < n && p[ind] == ' ') ind++;
  if (ind == n) return;
  if (s->in_events) {
    struct mc_tok t[3];
    size_t k = mc_split_ws(p, n, t, 3, 0);
    if (ind == 0) s->in_events = 0;
    else if (k >= 1 && mc_tok_eq(&t[0], "Type")) {
      const char *m = mc_find(p, n, "Message");
      s->ev_msg_pos = m ? (size_t)(m - p) : 0;
      return;
    } else if (k >= 1 && t[0].p[0] == '-') return;
    else if (k >= 2) {
      char type[16], reason[64], msg[256];
      cx_cpy(type, sizeof type, t[0].p, t[0].n);
      cx_cpy(reason, sizeof reason, t[1].p, t[1].n);
      size_t mp = s->ev_msg_pos && s->ev_msg_pos < n && p[s->ev_msg_pos - 1] == ' ' ? s->ev_msg_pos
                                                                                    : (size_t)(t[1].p + t[1].n - p);
      const char *m = p + mp;
      size_t mn = n - mp;
      mc_trim(&m, &mn);
      cx_cpy(msg, sizeof msg, m, mn);
      cx_kdesc_event(s, l, type, reason, msg, cx_event_count(p, mp));
      return;
    }
  }
  const char *colon = memchr(p + ind, ':', n - ind);
  if (!colon) return;
  const char *key = p + ind;
  size_t kn = (size_t)(colon - key);
  const char *val = colon + 1;
  size_t vn = n - (size_t)(val - p);
  mc_trim(&val, &vn);
  if (ind == 0) {
    s->in_containers = s->in_conditions = 0;
    if (kn == 4 && memcmp(key, "Name", 4) == 0 && !s->pod[0]) cx_cpy(s->pod, sizeof s->pod, val, vn);
    else if (kn == 5 && memcmp(key, "Roles", 5) == 0) s->is_node = 1;
    else if (kn == 10 && memcmp(key, "Conditions", 10) == 0) s->in_conditions = 1;
    else if (kn == 9 && memcmp(key, "Namespace", 9) == 0 && !s->ns[0]) cx_cpy(s->ns, sizeof s->ns, val, vn);
    else if (kn == 6 && memcmp(key, "Status", 6) == 0 && !s->phase[0]) cx_cpy(s->phase, sizeof s->phase, val, vn);
    else if (kn == 6 && memcmp(key, "Events", 6) == 0) s->in_events = 1;
    else if ((kn == 10 && memcmp(key, "Containers", 10) == 0) ||
             (kn == 15 && memcmp(key, "Init Containers", 15) == 0))
      s->in_containers = 1;
    return;
  }
  if (s->in_conditions) {
    cx_kdesc_condition(s, l);
    return;
  }
  if (!s->in_containers) return;
  if (ind == 2 && vn == 0) { /* "  app:" starts a container */
    if (s->nconts < 16) {
      s->cur_cont = (int)s->nconts++;
      struct cx_container *c = &s->conts[s->cur_cont];
      memset(c, 0, sizeof *c);
      c->restarts = -1;
      cx_cpy(c->name, sizeof c->name, key, kn);
    } else s->cur_cont = -1;
    s->substate = 0;
    return;
  }
  if (s->cur_cont < 0 || s->nconts == 0) return;
  struct cx_container *c = &s->conts[s->cur_cont];
  if (ind == 4) {
    s->substate = 0;
    if (kn == 5 && memcmp(key, "State", 5) == 0) {
      s->substate = 1;
      cx_cpy(c->state, sizeof c->state, val, vn);
    } else if (kn == 10 && memcmp(key, "Last State", 10) == 0) {
      s->substate = 2;
      cx_cpy(c->last_state, sizeof c->last_state, val, vn);
    } else if (kn == 5 && memcmp(key, "Ready", 5) == 0) cx_cpy(c->ready, sizeof c->ready, val, vn);
    else if (kn == 13 && memcmp(key, "Restart Count", 13) == 0) {
      double r;
      if (cx_lead_num(val, vn, &r)) {
        c->restarts = cx_long(r);
        if (r > 0)
          cx_find(s, "restart", r >= CX_CRASH_LOOP_RESTARTS ? "medium" : "low", l->no, r, NAN,
                  "container %s of pod %s restarted %.0f times", c->name, s->pod, r);
      }
    }
    return;
  }
  if (ind > 4 && s->substate) {
    if (kn == 6 && memcmp(key, "Reason", 6) == 0) {
      char reason[48];
      cx_cpy(reason, sizeof reason, val, vn);
      cx_cpy(s->substate == 1 ? c->reason : c->last_reason, sizeof c->reason, val, vn);
      if (strcmp(reason, "CrashLoopBackOff") == 0)
        cx_find(s, "crash_loop", "high", l->no, NAN, NAN, "container %s of pod %s is in CrashLoopBackOff",
                c->name, s->pod);
      else if (strcmp(reason, "OOMKilled") == 0)
        cx_find(s, "oom_kill", "high", l->no, NAN, NAN, "container %s of pod %s was OOMKilled%s", c->name,
                s->pod, s->substate == 2 ? " (last termination)" : "");
      else if (strstr(reason, "ImagePull") || strcmp(reason, "ErrImagePull") == 0)
        cx_find(s, "image_pull", "high", l->no, NAN, NAN, "container %s of pod %s: %s", c->name, s->pod,
                reason);
    } else if (kn == 9 && memcmp(key, "Exit Code", 9) == 0) {
      double code;
      if (cx_lead_num(val, vn, &code)) {
        c->exit_code = cx_long(code);
        c->has_exit = 1;
        const char *reason = s->substate == 1 ? c->reason : c->last_reason;
        if (code == 137 && strcmp(reason, "OOMKilled") != 0)
          cx_find(s, "killed", "high", l->no, code, NAN,
                  "container %s of pod %s exited 137 (SIGKILL: memory limit or failed liveness probe)",
                  c->name, s->pod);
        else if (code != 0 && code != 137)
          cx_find(s, "container_exit", "medium", l->no, code, NAN, "container %s of pod %s exited with code %.0f",
                  c->name, s->pod, code);
      }
    }
  }
}

/* ---- kubectl get events ---------------------------------------------------------------- */

static void cx_kevents_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  if (mc_starts(p, n, "LAST SEEN") || mc_starts(p, n, "NAMESPACE")) {
    cx_header(s, l);
    return;
  }
  if (!s->have_header) return;
  int ct = cx_col(s, "TYPE"), cr = cx_col(s, "REASON"), co = cx_col(s, "OBJECT"), cm = cx_col(s, "MESSAGE");
  if (ct < 0 || cr < 0 || cm < 0) return;
  /* columns are aligned on the header; the message takes the rest of the line */
  size_t pt = s->hdr_pos[ct], pr = s->hdr_pos[cr], pm = s->hdr_pos[cm];
  size_t po = co >= 0 ? s->hdr_pos[co] : pm;
  char type[16], reason[64], obj[128], msg[256];
  struct mc_tok t[CX_MAX_COLS];
  if (n > pm && p[pm - 1] == ' ' && p[pt - 1] == ' ' && p[pr - 1] == ' ') {
    const char *q;
    size_t qn;
    q = p + pt; qn = pr - pt; mc_trim(&q, &qn); cx_cpy(type, sizeof type, q, qn);
    q = p + pr; qn = (co >= 0 ? po : pm) - pr; mc_trim(&q, &qn); cx_cpy(reason, sizeof reason, q, qn);
    q = p + po; qn = pm - po; mc_trim(&q, &qn); cx_cpy(obj, sizeof obj, q, qn);
    q = p + pm; qn = n - pm; mc_trim(&q, &qn); cx_cpy(msg, sizeof msg, q, qn);
  } else {
    /* not aligned (pasted through something that squeezed spaces): whitespace columns */
    size_t want = (size_t)cm + 1 - (mc_starts(s->hdr_text, strlen(s->hdr_text), "LAST SEEN") ? 1 : 0);
    size_t k = mc_split_ws(p, n, t, want < CX_MAX_COLS ? want : CX_MAX_COLS, 1);
    int shift = mc_starts(s->hdr_text, strlen(s->hdr_text), "LAST SEEN") ? 1 : 0;
    if (k < want) return;
    cx_cpy(type, sizeof type, t[ct - shift].p, t[ct - shift].n);
    cx_cpy(reason, sizeof reason, t[cr - shift].p, t[cr - shift].n);
    if (co >= 0) cx_cpy(obj, sizeof obj, t[co - shift].p, t[co - shift].n);
    else obj[0] = '\0';
    cx_cpy(msg, sizeof msg, t[cm - shift].p, t[cm - shift].n);
  }
  if (!type[0] || !reason[0]) return;
  char save[128];
  memcpy(save, s->pod, sizeof save);
  cx_cpy(s->pod, sizeof s->pod, obj, strlen(obj));
  cx_kdesc_event(s, l, type, reason, msg, NAN);
  memcpy(s->pod, save, sizeof save);
}

/* ---- kubectl logs ---------------------------------------------------------------------- */

static void cx_klogs_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  const char *p = l->p;
  size_t n = l->len;
  if (mc_starts(p, n, "[pod/")) {
    const char *e = memchr(p, ']', n);
    if (e) {
      cx_name_count(s, p + 1, (size_t)(e - p - 1), l->no);
      p = e + 1;
      n = n - (size_t)(e + 1 - l->p);
      while (n && *p == ' ') { p++; n--; }
    }
  }
  const char *sp = memchr(p, ' ', n);
  double ts;
  if (sp && mc_parse_ts(p, (size_t)(sp - p), &ts)) {
    s->ts_lines++;
    if (!s->has_ts) s->first_ts = ts;
    s->last_ts = ts;
    s->has_ts = 1;
  }
}

/* ---- module ---------------------------------------------------------------------------- */

struct fm_an_cmd *fm_an_cmd_new(const char *kind) {
  if (!kind) return NULL;
  enum cx_kind k = CX_NONE;
  for (int i = 1; i < CX_NKINDS; i++)
    if (strcmp(kind, cx_kind_names[i]) == 0) k = (enum cx_kind)i;
  if (k == CX_NONE) return NULL;
  struct fm_an_cmd *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->kind = k;
  s->findings = json_array();
  s->rows = json_array();
  s->ooms = json_array();
  s->cur_cont = -1;
  s->col_use = s->col_mount = -1;
  if (!s->findings || !s->rows || !s->ooms) {
    fm_an_cmd_free(s);
    return NULL;
  }
  return s;
}

void fm_an_cmd_line(struct fm_an_cmd *s, const struct fm_an_line *l) {
  if (!s || !l) return;
  s->lines++;
  switch (s->kind) {
  case CX_TOP: cx_top_line(s, l); break;
  case CX_PS: cx_ps_line(s, l); break;
  case CX_DF: cx_df_line(s, l); break;
  case CX_FREE: cx_free_line(s, l); break;
  case CX_NETSTAT:
  case CX_SS: cx_net_line(s, l); break;
  case CX_DMESG: cx_dmesg_line(s, l); break;
  case CX_JOURNAL: cx_journal_line(s, l); break;
  case CX_KGET: cx_kget_line(s, l); break;
  case CX_KDESC: cx_kdesc_line(s, l); break;
  case CX_KLOGS: cx_klogs_line(s, l); break;
  case CX_KEVENTS: cx_kevents_line(s, l); break;
  default: break;
  }
}

static json_t *cx_counts_json(const struct cx_count *arr, size_t n) {
  json_t *o = json_object();
  for (size_t i = 0; o && i < n; i++) {
    json_t *k = cx_str(arr[i].name);
    if (k) json_object_set_new(o, json_string_value(k), json_integer((json_int_t)arr[i].n));
    json_decref(k);
  }
  return o;
}

static void cx_mem_findings(struct fm_an_cmd *s, json_t *c) {
  cx_mem_done(s);
  if (s->has_mem) {
    mc_set_num(c, "mem_used_pct", round(s->mem_pct * 10) / 10);
    json_object_set_new(c, "mem_basis", json_string(s->has_avail ? "total-available"
                                                    : s->mem_basis ? s->mem_basis : "used"));
    if (s->mem_max > CX_MEM_THRESHOLD)
      cx_find(s, "memory_saturation", s->mem_max >= 95 ? "high" : "medium", s->mem_max_line,
              round(s->mem_max * 10) / 10, CX_MEM_THRESHOLD, "memory %.1f%% used (%s)", s->mem_max,
              s->has_avail ? "total - available" : s->mem_basis ? s->mem_basis : "used");
  }
  if (s->has_swap) mc_set_num(c, "swap_used_pct", round(s->swap_pct * 10) / 10);
}

int fm_an_cmd_finish(struct fm_an_cmd *s, json_t *out) {
  if (!s || !out) return -1;
  json_t *c = json_object();
  if (!c) return -1;
  json_object_set_new(c, "kind", json_string(cx_kind_names[s->kind]));
  json_object_set_new(c, "lines", json_integer((json_int_t)s->lines));
  switch (s->kind) {
  case CX_TOP:
    json_object_set_new(c, "iterations", json_integer((json_int_t)s->iterations));
    if (s->has_load) {
      json_t *la = json_array();
      for (int i = 0; la && i < 3; i++) json_array_append_new(la, json_real(s->load[i]));
      json_object_set_new(c, "load_average", la);
    }
    if (s->has_cpu) {
      mc_set_num(c, "cpu_used_pct", round(s->cpu_used * 10) / 10);
      mc_set_num(c, "iowait_pct", s->iowait);
      if (s->cpu_max > CX_CPU_THRESHOLD)
        cx_find(s, "cpu_saturation", s->cpu_max >= 90 ? "high" : "medium", s->cpu_max_line,
                round(s->cpu_max * 10) / 10, CX_CPU_THRESHOLD, "CPU %.1f%% busy (100 - idle)", s->cpu_max);
    }
    cx_mem_findings(s, c);
    /* fall through: the process table */
    __attribute__((fallthrough));
  case CX_PS:
    json_object_set_new(c, "process_count", json_integer((json_int_t)s->proc_count));
    json_object_set_new(c, "zombies", json_integer((json_int_t)s->zombies));
    json_object_set_new(c, "uninterruptible", json_integer((json_int_t)s->dstate));
    json_object_set_new(c, "top_cpu", cx_procs_json(s->procs, s->nprocs));
    json_object_set_new(c, "top_mem", cx_procs_json(s->mprocs, s->nmprocs));
    if (s->zombies)
      cx_find(s, "zombies", s->zombies >= 10 ? "medium" : "low", 0, (double)s->zombies, NAN,
              "%llu zombie processes (a parent is not reaping its children)", (unsigned long long)s->zombies);
    break;
  case CX_DF: json_object_set(c, "filesystems", s->rows); break;
  case CX_FREE:
    if (s->mem_total > 0) {
      mc_set_num(c, "mem_total_bytes", s->mem_total);
      if (s->has_avail) mc_set_num(c, "mem_available_bytes", s->mem_avail);
    }
    cx_mem_findings(s, c);
    if (s->has_swap && s->swap_pct > CX_MEM_THRESHOLD)
      cx_find(s, "swap_saturation", "medium", 0, round(s->swap_pct * 10) / 10, CX_MEM_THRESHOLD,
              "swap %.1f%% used", s->swap_pct);
    break;
  case CX_NETSTAT:
  case CX_SS: {
    json_object_set_new(c, "connections", json_integer((json_int_t)s->connections));
    json_object_set_new(c, "states", cx_counts_json(s->names, s->nnames));
    uint64_t cw = 0, tw = 0, cwl = 0, twl = 0;
    for (size_t i = 0; i < s->nnames; i++) {
      if (strcmp(s->names[i].name, "CLOSE_WAIT") == 0) { cw = s->names[i].n; cwl = s->names[i].line; }
      if (strcmp(s->names[i].name, "TIME_WAIT") == 0) { tw = s->names[i].n; twl = s->names[i].line; }
    }
    if (s->nprogs) json_object_set_new(c, "close_wait_by_program", cx_counts_json(s->progs, s->nprogs));
    if ((double)cw >= CX_CLOSE_WAIT_THRESHOLD) {
      const struct cx_count *top = NULL;
      for (size_t i = 0; i < s->nprogs; i++)
        if (!top || s->progs[i].n > top->n) top = &s->progs[i];
      cx_find(s, "close_wait", cw >= 100 ? "high" : "medium", cwl, (double)cw, CX_CLOSE_WAIT_THRESHOLD,
              "%llu connections in CLOSE_WAIT (the application does not close sockets the peer closed)%s%s",
              (unsigned long long)cw, top ? "; most owned by " : "", top ? top->name : "");
    }
    if ((double)tw >= CX_TIME_WAIT_THRESHOLD)
      cx_find(s, "time_wait", "low", twl, (double)tw, CX_TIME_WAIT_THRESHOLD,
              "%llu connections in TIME_WAIT (many short-lived connections)", (unsigned long long)tw);
    break;
  }
  case CX_DMESG:
  case CX_JOURNAL:
    json_object_set(c, "oom_kills", s->ooms);
    if (s->kind == CX_JOURNAL) {
      cx_journal_finish(s);
      json_object_set(c, "units", s->rows);
    }
    break;
  case CX_KGET:
    json_object_set(c, "rows", s->rows);
    json_object_set_new(c, "status_counts", cx_counts_json(s->names, s->nnames));
    break;
  case CX_KDESC: {
    json_object_set_new(c, s->is_node ? "node" : "pod", cx_str(s->pod));
    json_object_set_new(c, "namespace", cx_str(s->ns));
    json_object_set_new(c, "status", cx_str(s->phase));
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < s->nconts; i++) {
      struct cx_container *k = &s->conts[i];
      json_t *o = json_object();
      if (!o) break;
      json_object_set_new(o, "name", cx_str(k->name));
      json_object_set_new(o, "state", cx_str(k->state));
      if (k->reason[0]) json_object_set_new(o, "reason", cx_str(k->reason));
      if (k->last_state[0]) json_object_set_new(o, "last_state", cx_str(k->last_state));
      if (k->last_reason[0]) json_object_set_new(o, "last_reason", cx_str(k->last_reason));
      if (k->has_exit) json_object_set_new(o, "exit_code", json_integer(k->exit_code));
      if (k->restarts >= 0) json_object_set_new(o, "restart_count", json_integer(k->restarts));
      if (k->ready[0]) json_object_set_new(o, "ready", json_boolean(strcmp(k->ready, "True") == 0));
      json_array_append_new(arr, o);
    }
    json_object_set_new(c, "containers", arr);
    json_object_set(c, "events", s->rows);
    break;
  }
  case CX_KEVENTS:
    json_object_set(c, "events", s->rows);
    json_object_set_new(c, "reason_counts", cx_counts_json(s->names, s->nnames));
    break;
  case CX_KLOGS:
    json_object_set_new(c, "timestamped_lines", json_integer((json_int_t)s->ts_lines));
    if (s->has_ts) {
      char buf[40];
      fm_time_iso8601(s->first_ts, buf, sizeof buf);
      json_object_set_new(c, "first_ts", json_string(buf));
      fm_time_iso8601(s->last_ts, buf, sizeof buf);
      json_object_set_new(c, "last_ts", json_string(buf));
    }
    json_object_set_new(c, "sources", cx_counts_json(s->names, s->nnames));
    break;
  default: break;
  }
  if (s->rows_total > json_array_size(s->rows))
    json_object_set_new(c, "rows_omitted", json_integer((json_int_t)(s->rows_total - json_array_size(s->rows))));
  json_object_set(c, "findings", s->findings);
  json_object_set_new(c, "finding_counts", cx_counts_json(s->fkinds, s->nfkinds));
  if (s->findings_dropped) json_object_set_new(c, "findings_dropped", json_integer((json_int_t)s->findings_dropped));
  if (s->oom) json_object_set_new(c, "out_of_memory", json_true());
  if (json_object_set_new(out, "command", c)) return -1;
  return s->oom ? -1 : 0;
}

void fm_an_cmd_free(struct fm_an_cmd *s) {
  if (!s) return;
  json_decref(s->findings);
  json_decref(s->rows);
  json_decref(s->ooms);
  free(s);
}

/* ---- detect ---------------------------------------------------------------------------- */

/* "[ 1234.567890] " or "[Mon Nov 22 10:00:01 2026] " (dmesg -T) */
static int cx_is_dmesg(const char *p, size_t n) {
  if (n < 4 || p[0] != '[') return 0;
  const char *e = memchr(p, ']', n < 40 ? n : 40);
  if (!e) return 0;
  size_t i = 1, dig = 0, dot = 0;
  while (p + i < e && p[i] == ' ') i++;
  for (; p + i < e; i++) {
    if (isdigit((unsigned char)p[i])) dig++;
    else if (p[i] == '.') dot++;
    else break;
  }
  if (p + i == e && dig && dot == 1) return 1;
  /* dmesg -T */
  return e - p >= 25 && isupper((unsigned char)p[1]) && p[4] == ' ' && mc_find(p, (size_t)(e - p), ":");
}

/* "Nov 22 10:00:01 host ident[pid]: " (journalctl's default short format, or short-iso) */
static int cx_is_syslog(const char *p, size_t n) {
  static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (n >= 20 && isdigit((unsigned char)p[0]) && p[4] == '-') {
    /* journalctl -o short-iso: "2026-11-22T10:00:01+0000 host ident[pid]: " */
    struct mc_tok t[3];
    double ts;
    return mc_split_ws(p, n, t, 3, 0) == 3 && mc_parse_ts(t[0].p, t[0].n, &ts) &&
           t[2].p[t[2].n - 1] == ':';
  }
  if (n < 20 || p[3] != ' ' || p[9] != ':' || p[12] != ':' || p[15] != ' ') return 0;
  int ok = 0;
  for (int i = 0; i < 12; i++) ok |= memcmp(p, mon[i], 3) == 0;
  if (!ok) return 0;
  const char *colon = memchr(p + 16, ':', n - 16);
  return colon != NULL;
}

/* kubectl --timestamps: RFC 3339 with nanoseconds and Z, then a space */
static int cx_is_kts(const char *p, size_t n) {
  if (mc_starts(p, n, "[pod/")) return 1;
  if (n < 31 || p[4] != '-' || p[10] != 'T' || p[19] != '.') return 0;
  const char *sp = memchr(p, ' ', n < 40 ? n : 40);
  if (!sp || sp[-1] != 'Z' || sp - p < 28) return 0;
  double ts;
  return mc_parse_ts(p, (size_t)(sp - p), &ts);
}

static int cx_hdr_has(const char *p, size_t n, const char *const *words) {
  struct mc_tok t[CX_MAX_COLS];
  size_t k = mc_split_ws(p, n, t, CX_MAX_COLS, 0);
  for (; *words; words++) {
    int found = 0;
    for (size_t i = 0; i < k && !found; i++) found = mc_tok_eq(&t[i], *words);
    if (!found) return 0;
  }
  return 1;
}

double fm_an_cmd_detect(const struct fm_an_line *lines, size_t n, const char **kind) {
  static const char *const h_df[] = {"Filesystem", "Mounted", NULL};
  static const char *const h_ps_aux[] = {"USER", "PID", "%CPU", "%MEM", NULL};
  static const char *const h_ps_ef[] = {"UID", "PID", "PPID", NULL};
  static const char *const h_ps_plain[] = {"PID", "TTY", "TIME", "CMD", NULL};
  static const char *const h_free[] = {"total", "used", "free", NULL};
  static const char *const h_netstat[] = {"Proto", "Recv-Q", "Send-Q", "Local", NULL};
  static const char *const h_ss[] = {"State", "Recv-Q", "Send-Q", NULL};
  static const char *const h_pods[] = {"NAME", "READY", "STATUS", "RESTARTS", NULL};
  static const char *const h_kget[] = {"NAME", "AGE", NULL};
  static const char *const h_nodes[] = {"NAME", "STATUS", "ROLES", "AGE", "VERSION", NULL};
  static const char *const h_deploy[] = {"NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", NULL};
  static const char *const h_events[] = {"LAST", "SEEN", "TYPE", "REASON", "MESSAGE", NULL};
  if (kind) *kind = NULL;
  enum cx_kind best = CX_NONE;
  double conf = 0;
  size_t nonblank = 0, dm = 0, sl = 0, kts = 0, systemd = 0;
  int desc_name = 0, desc_ns = 0, desc_sect = 0, free_mem = 0, top_head = 0, top_cpu = 0;
#define CX_CAND(k, c)                                                                              \
  do {                                                                                             \
    if ((c) > conf) { conf = (c); best = (k); }                                                    \
  } while (0)
  for (size_t i = 0; i < n; i++) {
    const char *p = lines[i].p;
    size_t len = lines[i].len;
    size_t ind = 0;
    while (ind < len && (p[ind] == ' ' || p[ind] == '\t')) ind++;
    if (ind == len) continue;
    nonblank++;
    if (cx_is_dmesg(p, len)) dm++;
    if (cx_is_syslog(p, len)) {
      sl++;
      if (mc_find(p, len, "systemd[")) systemd++;
    }
    if (cx_is_kts(p, len)) kts++;
    if (mc_starts(p, len, "top - ") && mc_find(p, len, "load average")) top_head = 1;
    if (mc_starts(p, len, "%Cpu(s):") || mc_starts(p, len, "Cpu(s):")) top_cpu = 1;
    if (mc_starts(p, len, "Mem:")) free_mem = 1;
    if (mc_starts(p, len, "Name:")) desc_name = 1;
    if (mc_starts(p, len, "Namespace:") || mc_starts(p, len, "Roles:")) desc_ns = 1;
    if (mc_starts(p, len, "Containers:") || mc_starts(p, len, "Events:") ||
        mc_starts(p, len, "Conditions:") ||
        mc_starts(p, len, "Node:") || mc_starts(p, len, "Controlled By:"))
      desc_sect = 1;
    if (mc_starts(p, len, "-- Logs begin at") || mc_starts(p, len, "-- Journal begins at") ||
        mc_starts(p, len, "-- No entries --"))
      CX_CAND(CX_JOURNAL, 0.95);
    if (i > 8) continue; /* headers are near the top */
    if (mc_starts(p, len, "Filesystem") && cx_hdr_has(p, len, h_df)) CX_CAND(CX_DF, 0.95);
    if (cx_hdr_has(p, len, h_ps_aux) || cx_hdr_has(p, len, h_ps_ef)) {
      if (!top_head && !top_cpu) CX_CAND(CX_PS, 0.9);
    }
    if (i == 0 && cx_hdr_has(p, len, h_ps_plain)) CX_CAND(CX_PS, 0.8);
    if (cx_hdr_has(p, len, h_free) && !mc_find(p, len, "Mem")) CX_CAND(CX_FREE, 0.6);
    if (mc_starts(p, len, "Active Internet connections") || cx_hdr_has(p, len, h_netstat))
      CX_CAND(CX_NETSTAT, 0.95);
    if ((mc_starts(p, len, "State") || mc_starts(p, len, "Netid")) && cx_hdr_has(p, len, h_ss))
      CX_CAND(CX_SS, 0.95);
    if (cx_hdr_has(p, len, h_pods) || cx_hdr_has(p, len, h_nodes) || cx_hdr_has(p, len, h_deploy))
      CX_CAND(CX_KGET, 0.95);
    else if ((mc_starts(p, len, "NAME ") || mc_starts(p, len, "NAMESPACE ")) && cx_hdr_has(p, len, h_kget))
      CX_CAND(CX_KGET, 0.75);
    if ((mc_starts(p, len, "LAST SEEN") || mc_starts(p, len, "NAMESPACE")) && cx_hdr_has(p, len, h_events))
      CX_CAND(CX_KEVENTS, 0.95);
  }
  if (conf > 0 && best == CX_FREE && free_mem) conf = 0.95;
  else if (best == CX_FREE) conf = 0.3;
  if (top_head && top_cpu) CX_CAND(CX_TOP, 0.97);
  else if (top_head || top_cpu) CX_CAND(CX_TOP, 0.7);
  if (desc_name && desc_ns && desc_sect) CX_CAND(CX_KDESC, 0.95);
  if (nonblank) {
    double sd = (double)dm / (double)nonblank, ss = (double)sl / (double)nonblank;
    double sk = (double)kts / (double)nonblank;
    if (dm >= 2) CX_CAND(CX_DMESG, 0.95 * sd);
    /* syslog-shaped lines are journalctl's short format; systemd lines make it likelier */
    if (sl >= 2) CX_CAND(CX_JOURNAL, (systemd ? 0.85 : 0.6) * ss);
    if (kts >= 2) CX_CAND(CX_KLOGS, 0.85 * sk);
  }
#undef CX_CAND
  if (best == CX_NONE || conf < 0.3) return 0;
  if (kind) *kind = cx_kind_names[best];
  return conf;
}

/* ---- digest ---------------------------------------------------------------------------- */

void fm_an_cmd_digest(const json_t *summary, struct fm_buf *out, size_t max) {
  const json_t *c = json_object_get(summary, "command");
  if (!c) c = summary;
  if (!json_is_object(c) || !out || max == 0) return;
  struct fm_buf b = {0};
  const json_t *kind = json_object_get(c, "kind");
  fm_buf_printf(&b, "Command output (%s)", json_is_string(kind) ? json_string_value(kind) : "?");
  const json_t *v;
  if ((v = json_object_get(c, "cpu_used_pct")) && json_is_number(v))
    fm_buf_printf(&b, ", CPU %.1f%% used", json_number_value(v));
  if ((v = json_object_get(c, "mem_used_pct")) && json_is_number(v))
    fm_buf_printf(&b, ", memory %.1f%% used", json_number_value(v));
  if ((v = json_object_get(c, "connections")) && json_is_integer(v))
    fm_buf_printf(&b, ", %lld connections", (long long)json_integer_value(v));
  const json_t *findings = json_object_get(c, "findings");
  fm_buf_printf(&b, ": %zu findings\n", json_array_size(findings));
  size_t i;
  const json_t *f;
  json_array_foreach(findings, i, f) {
    const json_t *line = json_object_get(f, "line");
    fm_buf_printf(&b, "- [%s] %s: %s", json_string_value(json_object_get(f, "severity")),
                  json_string_value(json_object_get(f, "kind")), json_string_value(json_object_get(f, "message")));
    if (json_is_integer(line)) fm_buf_printf(&b, " (line %lld)", (long long)json_integer_value(line));
    fm_buf_addc(&b, '\n');
  }
  if (b.p) mc_append_bounded(out, b.p, b.len, max);
  fm_buf_free(&b);
}
