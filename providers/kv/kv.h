/* kv.h: the key-value provider layer (cache and identity store: sessions, rate limits,
 * idempotency, breaker state). One driver table (struct fm_kv_driver) with one .c per provider:
 * memory.c (an in-process shared dictionary, the default) and redis.c (standalone Redis on
 * hiredis, with its own connection pool). kv.c holds what they share (settings, REDIS_URL
 * parsing, the script registry, the process's store); the Lua binding is l_kv.c (fm.kv).
 *
 * Keys and values are binary-safe byte strings. TTLs are in milliseconds here (fm.kv takes
 * seconds). Every driver call returns 0 (or a documented non-negative result), or -1 with the
 * error set: misuse (the caller's mistake, fm.kv raises) or a failure of the world (fm.kv returns
 * nil, message, code). */
#ifndef FM_KV_H
#define FM_KV_H

#include "err.h"

#include <stddef.h>

enum fm_kv_backend { FM_KV_MEMORY = 1, FM_KV_REDIS = 2 };

/* ---- errors -------------------------------------------------------------------------------- */

/* Codes of failures of the world (fm.kv's third result). */
#define FM_KV_UNAVAILABLE "KV_UNAVAILABLE" /* cannot connect, connection lost, pool exhausted */
#define FM_KV_TIMEOUT "KV_TIMEOUT"         /* no answer within REDIS_TIMEOUT_MS */
#define FM_KV_ERROR "KV_ERROR"             /* the server refused the command (script error...) */
#define FM_KV_NOT_INTEGER "KV_NOT_INTEGER" /* incr on a value that is not an integer */
#define FM_KV_TOO_LARGE "KV_TOO_LARGE"     /* memory: an entry larger than a shard may hold */

struct fm_kv_error {
  int misuse;
  char code[24];
  char msg[512];
};

int fm_kv_fail(struct fm_kv_error *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int fm_kv_misuse(struct fm_kv_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- settings ------------------------------------------------------------------------------ */

#define FM_KV_STR_MAX 512

struct fm_kv_config {
  enum fm_kv_backend backend;
  size_t memory_max_bytes; /* memory: KV_MEMORY_MAX_MB */
  /* redis: standalone (host, port) or sentinel (the master of master_set, asked of the
   * sentinels before each connect; redis.c: slot_connect). */
  char mode[16]; /* "standalone" | "sentinel" */
  char sentinels[1024];                  /* sentinel: "host:port,host:port,..." */
  char master_set[128];                  /* sentinel: REDIS_MASTER_SET */
  char sentinel_password[FM_KV_STR_MAX]; /* sentinel: AUTH for the sentinels, optional */
  char host[256];
  int port;
  char username[128];
  char password[FM_KV_STR_MAX];
  int db;
  int pool_size;
  int timeout_ms;              /* connect and command timeout */
  char display[FM_KV_STR_MAX]; /* redis://host:port/db, password masked, for logs and errors */
};

/* Parses redis://[[user]:password@]host[:port][/db] into cfg (host, port, username, password,
 * db, display). 0, or FM_E_INVAL with a message that never holds the password. */
int fm_kv_redis_url_parse(const char *url, struct fm_kv_config *cfg, struct fm_err *err);
/* Fills cfg->display from host, port, db (sentinel: the sentinels, the master set and db). */
void fm_kv_config_display(struct fm_kv_config *cfg);

/* ---- values (script results) --------------------------------------------------------------- */

enum fm_kv_vtype { FM_KV_NIL = 0, FM_KV_INT, FM_KV_STR, FM_KV_STATUS, FM_KV_ARRAY };

struct fm_kv_value {
  enum fm_kv_vtype type;
  long long i;
  char *s; /* STR, STATUS: malloc'd, NUL-terminated, n bytes */
  size_t n; /* STR, STATUS: bytes; ARRAY: elements */
  struct fm_kv_value *elem;
};

void fm_kv_value_free(struct fm_kv_value *v);

/* ---- drivers ------------------------------------------------------------------------------- */

struct fm_kv_stats {
  long long entries, bytes, max_bytes, evictions, expired; /* memory */
  int size, open, in_use;                                  /* redis pool */
  long long reconnects, failures;
};

struct fm_kv_handle; /* a driver's store: thread-safe */

struct fm_kv_driver {
  const char *name; /* "memory" | "redis" (fm.kv.backend()) */
  int (*open)(const struct fm_kv_config *cfg, struct fm_kv_handle **out, struct fm_err *err);
  void (*close)(struct fm_kv_handle *h);
  /* 1 and *val (malloc'd, NUL-terminated, *vn bytes) when found, 0 when absent. */
  int (*get)(struct fm_kv_handle *h, const char *k, size_t kn, char **val, size_t *vn,
             struct fm_kv_error *e);
  /* ttl_ms 0: no expiry. */
  int (*set)(struct fm_kv_handle *h, const char *k, size_t kn, const char *v, size_t vn,
             long long ttl_ms, struct fm_kv_error *e);
  /* 1 when the key existed, 0 when not. */
  int (*del)(struct fm_kv_handle *h, const char *k, size_t kn, struct fm_kv_error *e);
  /* Atomic; a missing key starts at 0 and gets ttl_ms (0: none) when this call creates it. */
  int (*incr)(struct fm_kv_handle *h, const char *k, size_t kn, long long by, long long ttl_ms,
              long long *out, struct fm_kv_error *e);
  /* 1 when the key exists (its TTL is now ttl_ms), 0 when not. */
  int (*expire)(struct fm_kv_handle *h, const char *k, size_t kn, long long ttl_ms,
                struct fm_kv_error *e);
  /* *ttl_ms: milliseconds left, -1 no expiry, -2 no such key. */
  int (*ttl)(struct fm_kv_handle *h, const char *k, size_t kn, long long *ttl_ms,
             struct fm_kv_error *e);
  int (*ping)(struct fm_kv_handle *h, struct fm_kv_error *e);
  /* Runs a Lua script (Redis): EVALSHA sha (in/out: empty = unknown, filled after SCRIPT LOAD),
   * falling back to SCRIPT LOAD on NOSCRIPT. NULL: the backend has no scripts. */
  int (*eval)(struct fm_kv_handle *h, const char *src, size_t srcn, char sha[41], int nkeys,
              const char *const *argv, const size_t *argl, int argc, struct fm_kv_value *out,
              struct fm_kv_error *e);
  void (*stats)(struct fm_kv_handle *h, struct fm_kv_stats *out);
};

extern const struct fm_kv_driver fm_kv_memory_driver;
extern const struct fm_kv_driver fm_kv_redis_driver;

/* memory.c: the clock of every memory store (ms, monotonic), replaceable by tests; NULL
 * restores the real one. */
void fm_kv_memory_set_clock(long long (*now_ms)(void));
/* memory.c: drops every expired entry now (the stores also do it about once a second). */
void fm_kv_memory_sweep(struct fm_kv_handle *h);

/* ---- the store ----------------------------------------------------------------------------- */

struct fm_kv_store {
  const struct fm_kv_driver *drv;
  struct fm_kv_handle *h;
  struct fm_kv_config cfg;
};

/* Opens the store cfg names (a Redis store connects once, and starts anyway when Redis is
 * down: calls fail with KV_UNAVAILABLE until it is back). 0 and *out, or an error. */
int fm_kv_open(const struct fm_kv_config *cfg, struct fm_kv_store **out, struct fm_err *err);
void fm_kv_close(struct fm_kv_store *kv);

/* Scripts, process-wide: register_script(name, source) in any VM; eval runs it by name. */
int fm_kv_script_register(const char *name, const char *src, size_t n, struct fm_err *err);
int fm_kv_eval(struct fm_kv_store *kv, const char *name, int nkeys, const char *const *argv,
               const size_t *argl, int argc, struct fm_kv_value *out, struct fm_kv_error *e);
void fm_kv_scripts_reset(void);

/* Counts one operation in fm_kv_operations_total{backend,op,result}. */
void fm_kv_count(const struct fm_kv_store *kv, const char *op, int ok);

/* The process's store: opened by `faultmaven serve` before the workers start, closed after they
 * stop; in `faultmaven exec`, opened by fm.kv on first use. fm_kv_global_set closes the previous
 * one. */
struct fm_kv_store *fm_kv_global(void);
void fm_kv_global_set(struct fm_kv_store *kv);
void fm_kv_global_close(void);

/* l_kv.c: opens the process's store from fm.settings, read in vm (serve, before the workers). */
struct fm_vm;
int fm_kv_open_from_settings(struct fm_vm *vm, struct fm_err *err);

#endif
