/* Unit tests for engine/buf.c: growth and JSON string escaping. */
#include "buf.h"
#include "check.h"

#include <stdlib.h>

static const char *json_str(struct fm_buf *b, const char *s, size_t n) {
  b->len = 0;
  fm_buf_add_json_str(b, s, n);
  return fm_buf_cstr(b);
}

int main(void) {
  struct fm_buf b = {0};
  CHECK_STR(fm_buf_cstr(&b), "");
  for (int i = 0; i < 10000; i++) fm_buf_addc(&b, 'x');
  CHECK(b.len == 10000 && b.cap > 10000 && b.p[10000] == '\0');
  b.len = 0;
  fm_buf_printf(&b, "%d-%s", 42, "abc");
  CHECK_STR(fm_buf_cstr(&b), "42-abc");
  b.len = 0;
  char big[600];
  memset(big, 'y', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  fm_buf_printf(&b, "<%s>", big); /* longer than the printf stack buffer */
  CHECK(b.len == 601 && b.p[0] == '<' && b.p[600] == '>');

  CHECK_STR(json_str(&b, "plain", 5), "\"plain\"");
  CHECK_STR(json_str(&b, "q\"b\\n\nt\tc\x01", 10), "\"q\\\"b\\\\n\\nt\\tc\\u0001\"");
  CHECK_STR(json_str(&b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14), "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  /* invalid UTF-8: a lone continuation byte, an overlong encoding, a surrogate, a truncation */
  CHECK_STR(json_str(&b, "a\x80z", 3), "\"a\xef\xbf\xbdz\"");
  CHECK_STR(json_str(&b, "\xc0\xaf", 2), "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK_STR(json_str(&b, "\xed\xa0\x80", 3), "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK_STR(json_str(&b, "ok\xe2\x82", 4), "\"ok\xef\xbf\xbd\xef\xbf\xbd\"");
  CHECK_STR(json_str(&b, "nul\0in", 6), "\"nul\\u0000in\"");

  /* caller storage: used while it fits, then moved to the heap; steal always yields heap memory */
  char mem[8];
  struct fm_buf s;
  fm_buf_init_with(&s, mem, sizeof mem);
  fm_buf_adds(&s, "abc");
  CHECK(s.p == mem && s.borrowed);
  fm_buf_adds(&s, "defghijk");
  CHECK(s.p != mem && !s.borrowed);
  CHECK_STR(fm_buf_cstr(&s), "abcdefghijk");
  CHECK_STR(mem, "abc");
  fm_buf_free(&s);
  fm_buf_init_with(&s, mem, sizeof mem);
  fm_buf_adds(&s, "xy");
  size_t sl;
  char *heap = fm_buf_steal(&s, &sl);
  CHECK(heap != mem && sl == 2 && strcmp(heap, "xy") == 0);
  free(heap);
  fm_buf_free(&s); /* nothing left to free: fine */

  size_t len;
  char *p = fm_buf_steal(&b, &len);
  CHECK(p != NULL && b.p == NULL && b.len == 0);
  free(p);
  fm_buf_free(&b);
  fm_buf_free(&b); /* twice is fine */
  return check_done();
}
