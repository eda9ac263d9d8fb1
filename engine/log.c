#include "log.h"

#include "buf.h"
#include "util.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static atomic_int g_level = FM_LOG_INFO;
static _Thread_local const char *t_request_id;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int fm_log_parse_level(const char *s) {
  if (!s) return -1;
  for (int i = 0; i <= FM_LOG_OFF; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return FM_LOG_WARN;
  return -1;
}

const char *fm_log_level_name(int level) {
  return level >= 0 && level <= FM_LOG_OFF ? level_names[level] : "info";
}

void fm_log_set_level(int level) { atomic_store(&g_level, level); }
int fm_log_get_level(void) { return atomic_load(&g_level); }
int fm_log_enabled(int level) { return level >= atomic_load(&g_level) && level < FM_LOG_OFF; }

void fm_log_set_request_id(const char *id) { t_request_id = id; }
const char *fm_log_request_id(void) { return t_request_id; }

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return; /* nowhere to report a failing stderr */
    p += w;
    n -= (size_t)w;
  }
}

void fm_log_fields(int level, const char *msg, const char *fields_json) {
  if (!fm_log_enabled(level)) return;
  char stack[2048];
  struct fm_buf b;
  fm_buf_init_with(&b, stack, sizeof stack); /* a line rarely needs the heap */
  char ts[40];
  fm_time_iso8601(fm_time_now(), ts, sizeof ts);
  fm_buf_adds(&b, "{\"ts\":\"");
  fm_buf_adds(&b, ts);
  fm_buf_adds(&b, "\",\"level\":\"");
  fm_buf_adds(&b, fm_log_level_name(level));
  fm_buf_adds(&b, "\",\"msg\":");
  fm_buf_add_json_str(&b, msg ? msg : "", msg ? strlen(msg) : 0);
  if (t_request_id) {
    fm_buf_adds(&b, ",\"request_id\":");
    fm_buf_add_json_str(&b, t_request_id, strlen(t_request_id));
  }
  if (fields_json && fields_json[0]) {
    fm_buf_addc(&b, ',');
    fm_buf_adds(&b, fields_json);
  }
  fm_buf_adds(&b, "}\n");
  if (b.p) write_all(STDERR_FILENO, b.p, b.len);
  fm_buf_free(&b);
}

void fm_log(int level, const char *fmt, ...) {
  if (!fm_log_enabled(level)) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fm_log_fields(level, msg, NULL);
}
