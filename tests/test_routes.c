/* Unit tests for engine/routes.c: the body-limit table C consults before Lua runs. */
#include "check.h"
#include "routes.h"

int main(void) {
  struct fm_err err = {0};
  struct fm_routes *r = fm_routes_new(1000);
  CHECK(r != NULL);
  CHECK(fm_routes_add(r, "POST", "/api/v1/cases/{case_id}/turns", 5000, &err) == 0);
  CHECK(fm_routes_add(r, "GET", "/", 1, &err) == 0);
  CHECK(fm_routes_add(r, "*", "/any/{x}", 7, &err) == 0);
  CHECK(fm_routes_add(r, "GET", "no-slash", 1, &err) == FM_E_INVAL);
  CHECK(fm_routes_add(r, "AVERYLONGMETHODNAME", "/x", 1, &err) == FM_E_INVAL);

  const char *pat;
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/case_1/turns", &pat) == 5000);
  CHECK_STR(pat, "/api/v1/cases/{case_id}/turns");
  CHECK(fm_routes_max_body(r, "GET", "/api/v1/cases/case_1/turns", &pat) == 1000 && pat == NULL);
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases//turns", &pat) == 1000); /* empty segment */
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/a/b/turns", &pat) == 1000);
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/case_1/turns/", &pat) == 5000); /* like Lua */
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/case_1/turns//", &pat) == 5000);
  CHECK(fm_routes_max_body(r, "GET", "/", &pat) == 1);
  CHECK(fm_routes_max_body(r, "DELETE", "/any/thing", &pat) == 7);
  CHECK(fm_routes_max_body(r, "GET", "", &pat) == 1000);
  /* a literal route wins over a pattern added before it, as in the Lua router */
  CHECK(fm_routes_add(r, "POST", "/api/v1/cases/{case_id}", 10, &err) == 0);
  CHECK(fm_routes_add(r, "POST", "/api/v1/cases/search", 20, &err) == 0);
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/search", &pat) == 20);
  CHECK(fm_routes_max_body(r, "POST", "/api/v1/cases/other", &pat) == 10);
  fm_routes_free(r);
  fm_routes_free(NULL);
  return check_done();
}
