/* log.h: JSON-lines logging to stderr, one line per event, carrying the current request id. */
#ifndef FM_LOG_H
#define FM_LOG_H

enum fm_log_level { FM_LOG_DEBUG = 0, FM_LOG_INFO, FM_LOG_WARN, FM_LOG_ERROR, FM_LOG_OFF };

/* Parses "debug|info|warn|warning|error|off" (any case). Returns the level or -1. */
int fm_log_parse_level(const char *s);
/* Name of a level ("info"). */
const char *fm_log_level_name(int level);
/* Sets and reads the global threshold (thread-safe). */
void fm_log_set_level(int level);
int fm_log_get_level(void);
/* True when a line at `level` would be written. */
int fm_log_enabled(int level);

/* Sets the request id that this thread stamps on every line until cleared with NULL. The string
 * must outlive the setting (it is not copied). */
void fm_log_set_request_id(const char *id);
const char *fm_log_request_id(void);

/* Writes {"ts","level","msg","request_id"?, <fields>} where `fields_json` is either NULL or the
 * inside of a JSON object (`"k":1,"s":"x"`) that the caller rendered. Thread-safe; one write(2). */
void fm_log_fields(int level, const char *msg, const char *fields_json);
/* printf-style message with no extra fields. */
void fm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fm_debug(...) (fm_log_enabled(FM_LOG_DEBUG) ? fm_log(FM_LOG_DEBUG, __VA_ARGS__) : (void)0)
#define fm_info(...) fm_log(FM_LOG_INFO, __VA_ARGS__)
#define fm_warn(...) fm_log(FM_LOG_WARN, __VA_ARGS__)
#define fm_error(...) fm_log(FM_LOG_ERROR, __VA_ARGS__)

#endif
