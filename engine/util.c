#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double fm_time_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double fm_time_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void fm_time_iso8601(double t, char *out, size_t outsz) {
  /* Log lines format the same second many times: keep it per thread. */
  static _Thread_local time_t cached_secs = -1;
  static _Thread_local char cached[64]; /* "YYYY-MM-DDTHH:MM:SS" (room for any int) */
  time_t secs = (time_t)t;
  int ms = (int)((t - (double)secs) * 1000.0);
  if (ms < 0) ms = 0;
  if (ms > 999) ms = 999;
  if (secs != cached_secs) {
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_secs = secs;
  }
  if (outsz < 25) {
    if (outsz) out[0] = '\0';
    return;
  }
  memcpy(out, cached, 19);
  out[19] = '.';
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
  out[23] = 'Z';
  out[24] = '\0';
}

void fm_sleep(double secs) {
  if (secs <= 0) return;
  struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

int fm_random_bytes(void *p, size_t n) {
  unsigned char *c = p;
  while (n > 0) {
    ssize_t r = getrandom(c, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return FM_E_IO;
    }
    c += r;
    n -= (size_t)r;
  }
  return 0;
}

int fm_random_hex(char *out, size_t outsz, size_t nbytes) {
  static const char hex[] = "0123456789abcdef";
  unsigned char raw[64];
  if (nbytes > sizeof raw || outsz < nbytes * 2 + 1) return FM_E_INVAL;
  if (fm_random_bytes(raw, nbytes)) return FM_E_IO;
  for (size_t i = 0; i < nbytes; i++) {
    out[2 * i] = hex[raw[i] >> 4];
    out[2 * i + 1] = hex[raw[i] & 15];
  }
  out[nbytes * 2] = '\0';
  return 0;
}

static _Thread_local uint64_t t_rng[4];
static _Thread_local int t_rng_seeded;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(void) {
  uint64_t *s = t_rng;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

void fm_fast_id_hex(char *out, size_t outsz) {
  static const char hex[] = "0123456789abcdef";
  if (outsz < 33) {
    if (outsz) out[0] = '\0';
    return;
  }
  if (!t_rng_seeded) {
    if (fm_random_bytes(t_rng, sizeof t_rng) != 0) {
      /* no kernel randomness: time and address still keep threads apart */
      t_rng[0] = (uint64_t)(fm_time_now() * 1e9);
      t_rng[1] = (uint64_t)(uintptr_t)&t_rng;
      t_rng[2] = 0x9e3779b97f4a7c15ULL;
      t_rng[3] = (uint64_t)(fm_time_mono() * 1e9);
    }
    t_rng_seeded = 1;
  }
  uint64_t v[2] = {xoshiro_next(), xoshiro_next()};
  for (int i = 0; i < 16; i++) {
    unsigned b = (unsigned)(v[i / 8] >> ((i % 8) * 8)) & 0xff;
    out[2 * i] = hex[b >> 4];
    out[2 * i + 1] = hex[b & 15];
  }
  out[32] = '\0';
}


int fm_mkdirs(const char *path, unsigned mode, struct fm_err *err) {
  char tmp[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof tmp) return fm_err_set(err, FM_E_INVAL, "bad directory path");
  memcpy(tmp, path, n + 1);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, mode) != 0 && errno != EEXIST)
      return fm_err_set(err, FM_E_IO, "mkdir %s: %s", tmp, strerror(errno));
    *p = '/';
  }
  if (mkdir(tmp, mode) != 0 && errno != EEXIST)
    return fm_err_set(err, FM_E_IO, "mkdir %s: %s", tmp, strerror(errno));
  struct stat st;
  if (stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode))
    return fm_err_set(err, FM_E_IO, "%s is not a directory", tmp);
  return 0;
}

int fm_clean_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int removed = 0;
  struct dirent *e;
  char path[PATH_MAX];
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && unlink(path) == 0) removed++;
  }
  closedir(d);
  return removed;
}

int fm_send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

void fm_deadline_ts(clockid_t clock, double secs, struct timespec *ts) {
  clock_gettime(clock, ts);
  if (secs < 0) secs = 0;
  double whole = (double)(long long)secs;
  ts->tv_sec += (time_t)whole;
  ts->tv_nsec += (long)((secs - whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

double fm_jitter(double d) {
  uint32_t r = 0;
  if (fm_random_bytes(&r, sizeof r)) r = (uint32_t)(fm_time_mono() * 1e6);
  return d / 2 + (d / 2) * ((double)r / 4294967295.0);
}
