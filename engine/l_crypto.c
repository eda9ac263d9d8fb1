/* fm.crypto: random ids and bytes from the kernel CSPRNG; HMAC-SHA256, SHA-256, constant-time
 * comparison, base64url and argon2id password hashing (libsodium), for JWT and local auth.
 *
 *   random_hex(n), random_bytes(n)
 *   hmac_sha256(key, msg) -> 32 raw bytes        sha256(data) -> 32 raw bytes
 *   sha256_file(path) -> 32 raw bytes, size | nil, message   streamed, never read whole
 *   equal(a, b) -> boolean                       constant time for equal lengths
 *   hex(bytes) -> lower-case hex text
 *   b64url_encode(bytes) -> text (no padding)     b64url_decode(text) -> bytes | nil
 *   password_hash(pw, ops, mem_kib) -> "$argon2id$..."   (libsodium's string format)
 *   password_verify(hash, pw) -> boolean
 *   password_needs_rehash(hash, ops, mem_kib) -> boolean
 *   secret_file(path) -> text | nil, message    read it, or create it (mode 0600) with 64
 *                                                random bytes in base64url, atomically */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static int l_crypto_hmac_sha256(lua_State *L) {
  size_t klen, mlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *msg = luaL_checklstring(L, 2, &mlen);
  crypto_auth_hmacsha256_state st;
  unsigned char out[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, klen);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, mlen);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof st);
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

static int l_crypto_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char out[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(out, (const unsigned char *)s, n);
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

/* SHA-256 of a file read in 1 MiB blocks (uploads can be large): digest and byte count. */
static int l_crypto_sha256_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
    return 2;
  }
  enum { BLOCK = 1 << 20 };
  unsigned char *buf = malloc(BLOCK);
  if (!buf) {
    close(fd);
    return luaL_error(L, "out of memory");
  }
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  lua_Integer total = 0;
  for (;;) {
    ssize_t n = read(fd, buf, BLOCK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      free(buf);
      close(fd);
      lua_pushnil(L);
      lua_pushfstring(L, "cannot read %s: %s", path, strerror(e));
      return 2;
    }
    if (n == 0) break;
    crypto_hash_sha256_update(&st, buf, (unsigned long long)n);
    total += n;
  }
  free(buf);
  close(fd);
  unsigned char out[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&st, out);
  lua_pushlstring(L, (const char *)out, sizeof out);
  lua_pushinteger(L, total);
  return 2;
}

static int l_crypto_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  static const char digits[] = "0123456789abcdef";
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n * 2);
  for (size_t i = 0; i < n; i++) {
    p[2 * i] = digits[(unsigned char)s[i] >> 4];
    p[2 * i + 1] = digits[(unsigned char)s[i] & 15];
  }
  luaL_pushresultsize(&b, n * 2);
  return 1;
}

static int l_crypto_equal(lua_State *L) {
  size_t a_len, b_len;
  const char *a = luaL_checklstring(L, 1, &a_len);
  const char *b = luaL_checklstring(L, 2, &b_len);
  lua_pushboolean(L, a_len == b_len && sodium_memcmp(a, b, a_len) == 0);
  return 1;
}

static int l_crypto_b64url_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  const int variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
  size_t cap = sodium_base64_ENCODED_LEN(n, variant);
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, cap);
  sodium_bin2base64(p, cap, (const unsigned char *)s, n, variant);
  luaL_pushresultsize(&b, strlen(p));
  return 1;
}

static int l_crypto_b64url_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t cap = n / 4 * 3 + 3, out_len = 0;
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, cap);
  const char *end = NULL;
  if (sodium_base642bin((unsigned char *)p, cap, s, n, NULL, &out_len, &end,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
      end != s + n) {
    lua_pushnil(L);
    return 1;
  }
  luaL_pushresultsize(&b, out_len);
  return 1;
}

/* Cost arguments: ops (passes, >= 1) and memory in KiB (>= 8 MiB; libsodium's interactive
 * profile is 2 passes over 64 MiB). */
static void pwhash_cost(lua_State *L, int idx, unsigned long long *ops, size_t *mem) {
  lua_Integer o = luaL_optinteger(L, idx, (lua_Integer)crypto_pwhash_OPSLIMIT_INTERACTIVE);
  lua_Integer kib = luaL_optinteger(L, idx + 1, (lua_Integer)(crypto_pwhash_MEMLIMIT_INTERACTIVE / 1024));
  if (o < 1 || o > 64) luaL_argerror(L, idx, "1 to 64 passes");
  if (kib < 8192 || kib > 4194304) luaL_argerror(L, idx + 1, "8 MiB to 4 GiB in KiB");
  *ops = (unsigned long long)o;
  *mem = (size_t)kib * 1024;
}

static int l_crypto_password_hash(lua_State *L) {
  size_t n;
  const char *pw = luaL_checklstring(L, 1, &n);
  unsigned long long ops;
  size_t mem;
  pwhash_cost(L, 2, &ops, &mem);
  char out[crypto_pwhash_STRBYTES];
  if (crypto_pwhash_str_alg(out, pw, n, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0)
    return luaL_error(L, "password hashing failed (out of memory)");
  lua_pushstring(L, out);
  return 1;
}

static int l_crypto_password_verify(lua_State *L) {
  const char *hash = luaL_checkstring(L, 1);
  size_t n;
  const char *pw = luaL_checklstring(L, 2, &n);
  lua_pushboolean(L, crypto_pwhash_str_verify(hash, pw, n) == 0);
  return 1;
}

static int l_crypto_password_needs_rehash(lua_State *L) {
  const char *hash = luaL_checkstring(L, 1);
  unsigned long long ops;
  size_t mem;
  pwhash_cost(L, 2, &ops, &mem);
  lua_pushboolean(L, crypto_pwhash_str_needs_rehash(hash, ops, mem) != 0);
  return 1;
}

/* Reads a whole small file (at most 4 KiB). Returns bytes read or -1. */
static ssize_t read_small(const char *path, char *buf, size_t cap, int *mode) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st;
  if (fstat(fd, &st) == 0) *mode = (int)(st.st_mode & 0777);
  ssize_t n = read(fd, buf, cap);
  int e = errno;
  close(fd);
  errno = e;
  return n;
}

static int l_crypto_secret_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[4097];
  int mode = 0;
  ssize_t n = read_small(path, buf, sizeof buf - 1, &mode);
  if (n < 0 && errno == ENOENT) {
    /* Written to a temp file, then linked into place: a reader never sees a half-written
     * secret, and of two engines starting at once, one secret wins for both. */
    unsigned char raw[64];
    if (fm_random_bytes(raw, sizeof raw)) return luaL_error(L, "getrandom failed");
    char text[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    sodium_bin2base64(text, sizeof text, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp) return luaL_error(L, "path too long");
    int fd = mkstemp(tmp);
    if (fd < 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s: %s", tmp, strerror(errno));
      return 2;
    }
    size_t len = strlen(text);
    int ok = fchmod(fd, 0600) == 0 && write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (ok && link(tmp, path) != 0 && errno != EEXIST) {
      ok = 0;
      e = errno;
    }
    unlink(tmp);
    if (!ok) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s: %s", path, strerror(e));
      return 2;
    }
    n = read_small(path, buf, sizeof buf - 1, &mode);
  }
  if (n < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  if (mode & 077) chmod(path, 0600); /* a secret readable by others is tightened, not trusted less */
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
  if (n == 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s is empty", path);
    return 2;
  }
  lua_pushlstring(L, buf, (size_t)n);
  sodium_memzero(buf, sizeof buf);
  return 1;
}

static const luaL_Reg funcs[] = {{"secret_file", l_crypto_secret_file},{"random_hex", l_crypto_random_hex},
                                 {"random_bytes", l_crypto_random_bytes},
                                 {"hmac_sha256", l_crypto_hmac_sha256},
                                 {"sha256", l_crypto_sha256},
                                 {"sha256_file", l_crypto_sha256_file},
                                 {"hex", l_crypto_hex},
                                 {"equal", l_crypto_equal},
                                 {"b64url_encode", l_crypto_b64url_encode},
                                 {"b64url_decode", l_crypto_b64url_decode},
                                 {"password_hash", l_crypto_password_hash},
                                 {"password_verify", l_crypto_password_verify},
                                 {"password_needs_rehash", l_crypto_password_needs_rehash},
                                 {NULL, NULL}};

int luaopen_fm_crypto(lua_State *L);
int luaopen_fm_crypto(lua_State *L) {
  if (sodium_init() < 0) return luaL_error(L, "libsodium cannot initialise");
  luaL_newlib(L, funcs);
  return 1;
}
