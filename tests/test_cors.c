/* Unit tests for engine/cors.c: which origins may read responses. */
#include "check.h"
#include "cors.h"

int main(void) {
  const char *origins[] = {"https://dash.example.com/", "http://localhost:5173"};
  CHECK(fm_cors_configure(origins, 2) == 0);
  CHECK(fm_cors_allowed("chrome-extension://abcdefghijklmnop"));
  CHECK(fm_cors_allowed("moz-extension://0f1e2d3c-aaaa-bbbb-cccc-0123456789ab"));
  CHECK(fm_cors_allowed("https://dash.example.com")); /* trailing slash of the setting ignored */
  CHECK(fm_cors_allowed("http://localhost:5173"));
  CHECK(!fm_cors_allowed("http://localhost:5174"));
  CHECK(!fm_cors_allowed("https://evil.example"));
  CHECK(!fm_cors_allowed("chrome-extension://"));
  CHECK(!fm_cors_allowed("chrome-extension://abc/../x"));
  CHECK(!fm_cors_allowed("chrome-extension://abc def"));
  CHECK(!fm_cors_allowed("https://dash.example.com.evil.example"));
  CHECK(!fm_cors_allowed(""));
  CHECK(!fm_cors_allowed(NULL));
  const char *any[] = {"*"};
  CHECK(fm_cors_configure(any, 1) == 0);
  CHECK(fm_cors_allowed("https://evil.example"));
  CHECK(!fm_cors_allowed("https://x.example\r\nSet-Cookie: a=b"));
  fm_cors_reset();
  CHECK(!fm_cors_allowed("https://evil.example"));
  CHECK(fm_cors_allowed("chrome-extension://abc"));
  return check_done();
}
