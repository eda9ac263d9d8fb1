/* fm.crypto: random ids and bytes from the kernel CSPRNG (JWT and hashing come with auth). */
#include "util.h"

#include <lauxlib.h>

static int l_crypto_random_hex(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 16);
  if (n < 1 || n > 64) return luaL_argerror(L, 1, "1 to 64 bytes");
  char out[129];
  if (fm_random_hex(out, sizeof out, (size_t)n)) return luaL_error(L, "getrandom failed");
  lua_pushstring(L, out);
  return 1;
}

static int l_crypto_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 4096) return luaL_argerror(L, 1, "1 to 4096 bytes");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)n);
  if (fm_random_bytes(p, (size_t)n)) return luaL_error(L, "getrandom failed");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

static const luaL_Reg funcs[] = {{"random_hex", l_crypto_random_hex},
                                 {"random_bytes", l_crypto_random_bytes},
                                 {NULL, NULL}};

int luaopen_fm_crypto(lua_State *L);
int luaopen_fm_crypto(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
