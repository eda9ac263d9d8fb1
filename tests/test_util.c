/* Unit tests for engine/util.c: timestamps and ids. */
#include "check.h"
#include "util.h"

int main(void) {
  char ts[40];
  fm_time_iso8601(1795329600.1234, ts, sizeof ts);
  CHECK_STR(ts, "2026-11-22T06:40:00.123Z");
  fm_time_iso8601(1795329600.999, ts, sizeof ts); /* same second, from the per-thread cache */
  CHECK_STR(ts, "2026-11-22T06:40:00.999Z");
  fm_time_iso8601(1795329661.0, ts, sizeof ts); /* the next minute */
  CHECK_STR(ts, "2026-11-22T06:41:01.000Z");
  fm_time_iso8601(0, ts, sizeof ts);
  CHECK_STR(ts, "1970-01-01T00:00:00.000Z");
  char small[10];
  fm_time_iso8601(0, small, sizeof small);
  CHECK_STR(small, "");

  char a[33], b[33];
  fm_fast_id_hex(a, sizeof a);
  fm_fast_id_hex(b, sizeof b);
  CHECK(strlen(a) == 32 && strspn(a, "0123456789abcdef") == 32);
  CHECK(strcmp(a, b) != 0);
  char r[65];
  CHECK(fm_random_hex(r, sizeof r, 32) == 0 && strlen(r) == 64);
  CHECK(fm_random_hex(r, 10, 32) != 0);

  return check_done();
}
