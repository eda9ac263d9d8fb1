/* breaker.h: circuit breakers around outbound dependencies (ARCHITECTURE section 7).
 *
 * One breaker per named dependency ("llm", or "host:port" by default in fm.http), in one registry
 * shared by every thread of the process (workers, the admin VM, the reload thread), behind one
 * mutex: the state is the same whichever worker asks.
 *
 *   CLOSED     requests go through; CIRCUIT_BREAKER_FAIL_THRESHOLD consecutive failures -> OPEN
 *   OPEN       requests are refused at once (no network call) until CIRCUIT_BREAKER_RESET_TIMEOUT
 *              seconds have passed since it opened; the next request then becomes the probe
 *              and the breaker is HALF_OPEN
 *   HALF_OPEN  exactly one probe is in flight, everything else is refused; the probe's success
 *              closes the breaker, its failure opens it again with a fresh timeout
 *
 * Failures are 5xx answers, timeouts and connection errors; any other answer (1xx-4xx) is a
 * success: the dependency answered, a 4xx is the caller's fault, never the dependency's health.
 *
 * A caller takes a ticket before the request and hands in the outcome after it. Each transition
 * bumps the breaker's epoch, and outcomes of tickets taken in an earlier epoch are ignored: a
 * request that started before the breaker opened (or before an admin reset) cannot close or
 * re-open it afterwards.
 *
 * Settings: fm_breaker_configure, or, on first use, the settings the engine took at start (the
 * boot settings of engine/reload.c, validated by config.lua), or in `faultmaven exec` the
 * environment (CIRCUIT_BREAKER_ENABLED, _FAIL_THRESHOLD, _RESET_TIMEOUT) with the same defaults.
 * Disabled means no breaker exists and every request goes through.
 *
 * Metrics: fm_breaker_state{dependency} (0 closed, 1 half-open, 2 open) and
 * fm_breaker_transitions_total{dependency,from,to}. Each transition is logged (warn on opening). */
#ifndef FM_BREAKER_H
#define FM_BREAKER_H

#include <stddef.h>
#include <stdint.h>

/* The numbers are the values of the fm_breaker_state gauge. */
enum fm_breaker_state { FM_BREAKER_CLOSED = 0, FM_BREAKER_HALF_OPEN = 1, FM_BREAKER_OPEN = 2 };

enum fm_breaker_result {
  FM_BREAKER_SUCCESS, /* the dependency answered (not 5xx) */
  FM_BREAKER_FAILURE, /* 5xx, timeout, connection or transfer error */
  FM_BREAKER_NEUTRAL, /* nothing was learnt (the request was never sent): a probe slot is freed */
};

#define FM_BREAKER_NAME_MAX 128 /* bytes of a dependency name */
#define FM_BREAKER_MAX 256      /* breakers at most; past it new names go unguarded (logged once) */

struct fm_breaker_config {
  int enabled;
  int fail_threshold;     /* >= 1 */
  double reset_timeout_s; /* > 0 */
};

struct fm_breaker;

/* What fm_breaker_acquire hands out; pass it back to fm_breaker_release exactly once. */
struct fm_breaker_ticket {
  struct fm_breaker *b; /* NULL: not guarded (disabled, no name, registry full) */
  uint64_t epoch;
  int probe; /* this request is the HALF_OPEN probe */
};

/* A breaker as seen from outside. */
struct fm_breaker_info {
  char name[FM_BREAKER_NAME_MAX + 1];
  enum fm_breaker_state state;
  int failures;          /* consecutive failures counted while CLOSED */
  double opened_at;      /* wall-clock time it last opened; 0 when it never did */
  double retry_in;       /* OPEN: seconds until a probe may go; else 0 */
  int probe_in_flight;   /* HALF_OPEN with the probe still running */
  uint64_t transitions;  /* state changes so far */
};

/* Sets the settings (and marks the registry configured: no lazy lookup happens then). Breakers
 * that exist keep their state; a lower threshold applies at their next failure. */
void fm_breaker_configure(const struct fm_breaker_config *cfg);
/* The settings in force (looking them up first if nobody set them yet). */
void fm_breaker_get_config(struct fm_breaker_config *out);
/* Replaces the monotonic clock (tests); NULL restores fm_time_mono. */
void fm_breaker_set_clock(double (*mono)(void));

/* True when name is 1..FM_BREAKER_NAME_MAX bytes of [A-Za-z0-9._:/@+[]-]. */
int fm_breaker_valid_name(const char *name);

/* Asks to send a request to `name`. Returns 1 when it may go (t filled; t->probe set when it is
 * the HALF_OPEN probe) or 0 when the breaker refuses it; *retry_in (may be NULL) is then the
 * seconds until a probe may go (0 while a probe is in flight). An invalid name, a disabled
 * registry or a full one return 1 with t->b NULL. */
int fm_breaker_acquire(const char *name, struct fm_breaker_ticket *t, double *retry_in);
/* Hands in the outcome of a request fm_breaker_acquire let through. */
void fm_breaker_release(struct fm_breaker_ticket *t, enum fm_breaker_result r);

/* The outcome of an fm_httpc_request: rc 0 with a status below 500 is a success; rc 0 with a
 * 5xx, FM_E_TIMEOUT, FM_E_CONNECT, FM_E_IO and FM_E_PROTO are failures; FM_E_TOOBIG (it answered,
 * too much) is a success; anything else (FM_E_INVAL, FM_E_NOMEM: never sent) is neutral. */
enum fm_breaker_result fm_breaker_classify(int rc, long status);

/* Reads one breaker. Returns 1 when it exists, 0 otherwise. */
int fm_breaker_info(const char *name, struct fm_breaker_info *out);
/* Every breaker, sorted by name, in a malloc'd array (*out, caller frees; NULL when none).
 * Returns the count, or -1 when out of memory. */
int fm_breaker_list(struct fm_breaker_info **out);
/* Closes a breaker and forgets its failures (admin). Returns 1 when it existed, 0 otherwise. */
int fm_breaker_reset(const char *name);

/* "closed", "half_open", "open". */
const char *fm_breaker_state_name(enum fm_breaker_state s);

/* Forgets every breaker and the settings (tests, exit). No ticket may be outstanding. */
void fm_breaker_free_all(void);

#endif
