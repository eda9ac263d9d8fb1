/* util.h: time, random ids, small string and file helpers shared by the core. */
#ifndef FM_UTIL_H
#define FM_UTIL_H

#include "err.h"

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Wall-clock seconds since the epoch, with sub-second precision. */
double fm_time_now(void);
/* Monotonic seconds (for durations and deadlines). */
double fm_time_mono(void);
/* Formats t as ISO 8601 UTC with milliseconds and Z: "2026-11-22T06:40:00.123Z". */
void fm_time_iso8601(double t, char *out, size_t outsz);
/* Sleeps for secs (restarting on EINTR). */
void fm_sleep(double secs);
/* Now on `clock` plus secs, as a timespec (for pthread_cond_timedwait and friends). */
void fm_deadline_ts(clockid_t clock, double secs, struct timespec *ts);
/* "Equal jitter" for retry backoff: a random delay in [d/2, d]. */
double fm_jitter(double d);

/* Fills p with n bytes from the kernel CSPRNG. Returns 0 or FM_E_IO. */
int fm_random_bytes(void *p, size_t n);
/* Writes 2*nbytes lower-case hex characters plus NUL into out (outsz >= 2*nbytes+1). */
int fm_random_hex(char *out, size_t outsz, size_t nbytes);

/* Writes 32 lower-case hex characters plus NUL into out (outsz >= 33): an id that is unique, not
 * secret (request ids). A per-thread xoshiro256** generator seeded from the kernel, so it costs
 * no system call. For secrets use fm_random_bytes. */
void fm_fast_id_hex(char *out, size_t outsz);

/* mkdir -p with mode for new directories. Returns 0 or FM_E_IO (err set). */
int fm_mkdirs(const char *path, unsigned mode, struct fm_err *err);
/* Sends all n bytes on a socket (no SIGPIPE; retries EINTR and short writes). 0 or -1. */
int fm_send_all(int fd, const void *p, size_t n);
/* Removes the regular files directly in dir (not recursive). Returns the number removed. */
int fm_clean_dir(const char *dir);

#endif
