/* ratelimit.h: the in-process token buckets of the rate limiter (ARCHITECTURE section 7).
 *
 * One table shared by every thread of the process (all workers), in FM_RL_SHARDS shards, each
 * behind its own mutex. A bucket is named by an opaque key (the Lua middleware builds it: class
 * and client) and holds at most `capacity` tokens, refilled continuously at `rate` tokens a
 * second; a request takes one token or is refused. A bucket seen for the first time is full.
 *
 * Entries expire: a bucket that would be full again at `now` is the same as no bucket, so it is
 * dropped (lazily when touched, and by a sweep of the shard at most once a second). A shard holds
 * at most FM_RL_SHARD_MAX buckets; when a new one does not fit even after a sweep, the request is
 * allowed (fail open) and not remembered.
 *
 * Used when Redis is not configured, and as the fallback while it fails. */
#ifndef FM_RATELIMIT_H
#define FM_RATELIMIT_H

#include <stddef.h>

#define FM_RL_SHARDS 64
#define FM_RL_SHARD_MAX 16384
#define FM_RL_KEY_MAX 512

/* Takes one token from the bucket `key` (rate > 0 tokens a second, capacity >= 1). Returns 1
 * when allowed, 0 when refused; *tokens (may be NULL) is what the bucket holds after the call
 * (a fraction: remaining = floor, time to full = (capacity - tokens) / rate). */
int fm_rl_take(const char *key, size_t kn, double rate, double capacity, double *tokens);

/* Buckets held now (all shards). */
size_t fm_rl_count(void);
/* Drops every bucket that is full at the current time. */
void fm_rl_sweep(void);
/* Forgets every bucket (tests). */
void fm_rl_free_all(void);
/* Replaces the monotonic clock (tests); NULL restores fm_time_mono. */
void fm_rl_set_clock(double (*mono)(void));

/* Process-wide "log at most once per interval" gate: 1 when the caller may log now. */
int fm_rl_log_gate(double interval_s);

/* Whether addr (IPv4 or IPv6 text; IPv4-mapped IPv6 counts as IPv4) is in cidr ("10.0.0.0/8",
 * "::1", "192.168.1.7"). 1 yes, 0 no (or addr unparsable), -1 cidr malformed. */
int fm_rl_addr_in(const char *addr, const char *cidr);

#endif
