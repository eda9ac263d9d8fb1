/* fm.storage: file storage for Lua, in a local directory or an S3 bucket; Lua never knows which.
 *
 *   backend()                        -> "local" | "s3"
 *   put_file(path, opts)             -> {key, size, etag}       (the file is only read)
 *   put_string(data, opts)           -> {key, size, etag}
 *       opts.prefix (required, [a-z0-9_/-]), opts.content_type; the key is generated:
 *       prefix "/" 32 random hex
 *   get_string(key [, max_bytes])    -> data                    (max_bytes default 16 MiB)
 *   get_file(key, path)              -> true                    (streamed into a new file)
 *   head(key)                        -> {size, etag, last_modified, content_type}
 *   delete(key)                      -> true                    (a missing key is not an error)
 *   list(prefix [, {after, limit}])  -> {{key, size, last_modified}...}, next_after | nil
 *   presign(key [, expires_s])       -> url                     (s3; local: STORAGE_UNSUPPORTED)
 *   ping()                           -> {latency_ms}
 *   response(key [, {filename, content_type}]) -> a body a route handler returns: the engine
 *                                       streams the object to the client (local: the file
 *                                       descriptor; s3: a GET running in a thread)
 *   release_streams([keep])          closes the streams response() opened in this VM except keep
 *                                    (fm.app, after each request)
 *   configure{backend, dir, bucket, region, access_key, secret_key, session_token, endpoint,
 *             path_style, multipart_threshold_mb, part_size_mb, timeout_s, max_retries}
 *   close()                          (both `faultmaven exec` only)
 *
 * Misuse raises; a failure of the world returns nil, message, code with code STORAGE_NOT_FOUND,
 * STORAGE_DENIED, STORAGE_UNAVAILABLE, STORAGE_INVALID (bad key or prefix), STORAGE_UNSUPPORTED,
 * STORAGE_TOO_LARGE or STORAGE_ERROR. Keys are checked on every call (storage.h). Each call is
 * counted in fm_storage_operations_total{backend,op,result}. */
#include "storage.h"

#include "util.h"
#include "vm.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct fm_storage_config g_exec_cfg;
static int g_exec_configured;

static int is_exec(lua_State *L) {
  struct fm_vm *vm = fm_vm_from_lua(L);
  return vm && vm->mode == FM_VM_EXEC;
}

static void str_field(lua_State *L, int t, const char *k, char *out, size_t outsz) {
  lua_getfield(L, t, k);
  const char *v = lua_isnil(L, -1) ? "" : luaL_checkstring(L, -1);
  if (strlen(v) >= outsz) luaL_error(L, "%s: too long", k);
  snprintf(out, outsz, "%s", v);
  lua_pop(L, 1);
}

static double num_field(lua_State *L, int t, const char *k, double def) {
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The settings from a table with fm.settings keys. Raises when invalid. */
static void config_from_table(lua_State *L, int t, struct fm_storage_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  char backend[16];
  str_field(L, t, "storage_provider", backend, sizeof backend);
  if (!backend[0] || strcmp(backend, "local") == 0) cfg->backend = FM_STORAGE_LOCAL;
  else if (strcmp(backend, "s3") == 0) cfg->backend = FM_STORAGE_S3;
  else luaL_error(L, "STORAGE_PROVIDER: expected local or s3, got '%s'", backend);
  str_field(L, t, "uploads_dir", cfg->uploads_dir, sizeof cfg->uploads_dir);
  str_field(L, t, "s3_bucket_name", cfg->bucket, sizeof cfg->bucket);
  str_field(L, t, "aws_region", cfg->region, sizeof cfg->region);
  if (!cfg->region[0]) snprintf(cfg->region, sizeof cfg->region, "us-east-1");
  str_field(L, t, "aws_access_key_id", cfg->access_key, sizeof cfg->access_key);
  str_field(L, t, "aws_secret_access_key", cfg->secret_key, sizeof cfg->secret_key);
  str_field(L, t, "aws_session_token", cfg->session_token, sizeof cfg->session_token);
  str_field(L, t, "s3_endpoint_url", cfg->endpoint, sizeof cfg->endpoint);
  size_t el = strlen(cfg->endpoint);
  while (el && cfg->endpoint[el - 1] == '/') cfg->endpoint[--el] = '\0';
  lua_getfield(L, t, "s3_force_path_style");
  cfg->path_style = lua_isnil(L, -1) ? cfg->endpoint[0] != '\0' : lua_toboolean(L, -1);
  lua_pop(L, 1);
  cfg->multipart_threshold = (size_t)(num_field(L, t, "s3_multipart_threshold_mb", 16) * 1048576);
  cfg->part_size = (size_t)(num_field(L, t, "s3_part_size_mb", 8) * 1048576);
  if (cfg->part_size < (5u << 20)) luaL_error(L, "S3_PART_SIZE_MB: at least 5");
  cfg->timeout_s = num_field(L, t, "s3_timeout_s", 60);
  cfg->max_retries = (int)num_field(L, t, "s3_max_retries", 3);
  snprintf(cfg->breaker, sizeof cfg->breaker, "s3");
}

static int l_config_from_settings(lua_State *L) {
  struct fm_storage_config *cfg = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "fm.settings");
  lua_call(L, 1, 1);
  config_from_table(L, lua_gettop(L), cfg);
  return 0;
}

int fm_storage_open_from_settings(struct fm_vm *vm, struct fm_err *err) {
  struct fm_storage_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) return fm_err_set(err, FM_E_NOMEM, "out of memory");
  lua_pushcfunction(vm->L, l_config_from_settings);
  lua_pushlightuserdata(vm->L, cfg);
  int rc = fm_vm_pcall(vm, 1, 0, err) ? FM_E_INVAL : 0;
  struct fm_storage *st = NULL;
  if (!rc && fm_storage_open(cfg, &st, err)) rc = err->code ? err->code : FM_E_INVAL;
  free(cfg);
  if (!rc) fm_storage_global_set(st);
  return rc;
}

static struct fm_storage *get_store(lua_State *L) {
  struct fm_storage *st = fm_storage_global();
  if (st) return st;
  if (!is_exec(L)) {
    luaL_error(L, "fm.storage: no store is open in this process");
    return NULL;
  }
  struct fm_storage_config *cfg = lua_newuserdatauv(L, sizeof *cfg, 0);
  if (g_exec_configured) {
    *cfg = g_exec_cfg;
  } else {
    lua_pushcfunction(L, l_config_from_settings);
    lua_pushlightuserdata(L, cfg);
    lua_call(L, 1, 0);
  }
  struct fm_err err = {0};
  if (fm_storage_open(cfg, &st, &err)) luaL_error(L, "fm.storage: %s", err.msg);
  lua_pop(L, 1);
  fm_storage_global_set(st);
  return st;
}

static int fail(lua_State *L, struct fm_storage *st, const char *op,
                const struct fm_storage_error *e) {
  fm_storage_count(st, op, 0);
  lua_pushnil(L);
  lua_pushstring(L, e->msg[0] ? e->msg : "storage error");
  lua_pushstring(L, e->code[0] ? e->code : FM_STORAGE_ERROR);
  return 3;
}

static int invalid(lua_State *L, struct fm_storage *st, const char *op, const char *what) {
  struct fm_storage_error e = {0};
  fm_storage_fail(&e, FM_STORAGE_INVALID, "%s", what);
  return fail(L, st, op, &e);
}

static void push_info(lua_State *L, const char *key, const struct fm_storage_info *info) {
  lua_createtable(L, 0, 5);
  if (key) {
    lua_pushstring(L, key);
    lua_setfield(L, -2, "key");
  }
  lua_pushinteger(L, (lua_Integer)info->size);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, info->etag);
  lua_setfield(L, -2, "etag");
}

/* opts.prefix -> a new key; opts.content_type -> ctype. Misuse raises; a bad prefix is
 * STORAGE_INVALID (returns 0 then, with e set). */
static int key_from_opts(lua_State *L, int idx, char *key, size_t keysz, char *ctype,
                         size_t ctsz, struct fm_storage_error *e) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "prefix");
  size_t pn = 0;
  const char *prefix = luaL_optlstring(L, -1, NULL, &pn);
  if (!prefix) luaL_error(L, "opts.prefix is required");
  if (strlen(prefix) != pn) prefix = ""; /* an embedded NUL: invalid */
  int rc = fm_storage_new_key(prefix, key, keysz, e);
  lua_pop(L, 1);
  lua_getfield(L, idx, "content_type");
  const char *ct = luaL_optstring(L, -1, "");
  if (strlen(ct) >= ctsz || strpbrk(ct, "\r\n")) luaL_error(L, "opts.content_type: invalid");
  snprintf(ctype, ctsz, "%s", ct);
  lua_pop(L, 1);
  return rc == 0;
}

static int l_put_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char key[FM_STORAGE_KEY_MAX + 1], ctype[256];
  struct fm_storage_error e = {0};
  int ok = key_from_opts(L, 2, key, sizeof key, ctype, sizeof ctype, &e);
  struct fm_storage *st = get_store(L);
  if (!ok) return fail(L, st, "put", &e);
  struct fm_storage_info info;
  if (st->drv->put_file(st->h, key, path, ctype, &info, &e)) return fail(L, st, "put", &e);
  fm_storage_count(st, "put", 1);
  push_info(L, key, &info);
  return 1;
}

static int l_put_string(lua_State *L) {
  size_t n;
  const char *data = luaL_checklstring(L, 1, &n);
  char key[FM_STORAGE_KEY_MAX + 1], ctype[256];
  struct fm_storage_error e = {0};
  int ok = key_from_opts(L, 2, key, sizeof key, ctype, sizeof ctype, &e);
  struct fm_storage *st = get_store(L);
  if (!ok) return fail(L, st, "put", &e);
  struct fm_storage_info info;
  if (st->drv->put_mem(st->h, key, data, n, ctype, &info, &e)) return fail(L, st, "put", &e);
  fm_storage_count(st, "put", 1);
  push_info(L, key, &info);
  return 1;
}

/* The key argument; one with an embedded NUL becomes "" (invalid: refused as STORAGE_INVALID). */
static const char *check_key(lua_State *L, int idx) {
  size_t n;
  const char *k = luaL_checklstring(L, idx, &n);
  return strlen(k) == n ? k : "";
}

/* A malloc'd buffer owned by a userdata, freed by its __gc if a Lua error comes first. */
static int guard_gc(lua_State *L) {
  char **p = lua_touserdata(L, 1);
  free(*p);
  *p = NULL;
  return 0;
}

static int l_get_string(lua_State *L) {
  const char *key = check_key(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, 16 << 20);
  if (max < 0) luaL_argerror(L, 2, "max_bytes: expected >= 0");
  struct fm_storage *st = get_store(L);
  if (!fm_storage_valid_key(key)) return invalid(L, st, "get", "invalid key");
  char **buf = lua_newuserdatauv(L, sizeof *buf, 0);
  *buf = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  size_t n = 0;
  struct fm_storage_error e = {0};
  if (st->drv->get_mem(st->h, key, (size_t)max, buf, &n, &e)) return fail(L, st, "get", &e);
  fm_storage_count(st, "get", 1);
  lua_pushlstring(L, *buf, n);
  free(*buf);
  *buf = NULL;
  return 1;
}

static int l_get_file(lua_State *L) {
  const char *key = check_key(L, 1);
  const char *path = luaL_checkstring(L, 2);
  struct fm_storage *st = get_store(L);
  if (!fm_storage_valid_key(key)) return invalid(L, st, "get", "invalid key");
  struct fm_storage_error e = {0};
  if (st->drv->get_file(st->h, key, path, &e)) return fail(L, st, "get", &e);
  fm_storage_count(st, "get", 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_head(lua_State *L) {
  const char *key = check_key(L, 1);
  struct fm_storage *st = get_store(L);
  if (!fm_storage_valid_key(key)) return invalid(L, st, "head", "invalid key");
  struct fm_storage_error e = {0};
  struct fm_storage_info info;
  if (st->drv->head(st->h, key, &info, &e)) return fail(L, st, "head", &e);
  fm_storage_count(st, "head", 1);
  push_info(L, NULL, &info);
  lua_pushinteger(L, (lua_Integer)info.last_modified);
  lua_setfield(L, -2, "last_modified");
  lua_pushstring(L, info.content_type);
  lua_setfield(L, -2, "content_type");
  return 1;
}

static int l_delete(lua_State *L) {
  const char *key = check_key(L, 1);
  struct fm_storage *st = get_store(L);
  if (!fm_storage_valid_key(key)) return invalid(L, st, "delete", "invalid key");
  struct fm_storage_error e = {0};
  if (st->drv->del(st->h, key, &e)) return fail(L, st, "delete", &e);
  fm_storage_count(st, "delete", 1);
  lua_pushboolean(L, 1);
  return 1;
}

/* A list prefix: "" or key characters (a trailing "/" allowed). */
static int valid_list_prefix(const char *p) {
  size_t n = strlen(p);
  if (n == 0) return 1;
  if (n > FM_STORAGE_KEY_MAX) return 0;
  char tmp[FM_STORAGE_KEY_MAX + 1];
  memcpy(tmp, p, n + 1);
  if (tmp[n - 1] == '/') tmp[n - 1] = '\0';
  return tmp[0] && fm_storage_valid_key(tmp);
}

struct entries {
  struct fm_storage_entry *v;
  size_t n;
};

static int entries_gc(lua_State *L) {
  struct entries *en = lua_touserdata(L, 1);
  fm_storage_entries_free(en->v, en->n);
  en->v = NULL;
  en->n = 0;
  return 0;
}

static int l_list(lua_State *L) {
  const char *prefix = luaL_optstring(L, 1, "");
  const char *after = NULL;
  lua_Integer limit = 1000;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "after");
    after = luaL_optstring(L, -1, NULL);
    lua_pop(L, 1); /* still referenced by the table */
    lua_getfield(L, 2, "limit");
    limit = luaL_optinteger(L, -1, 1000);
    lua_pop(L, 1);
  }
  if (limit < 1 || limit > 1000) luaL_argerror(L, 2, "limit: 1 to 1000");
  struct fm_storage *st = get_store(L);
  if (!valid_list_prefix(prefix)) return invalid(L, st, "list", "invalid prefix");
  if (after && !fm_storage_valid_key(after)) return invalid(L, st, "list", "invalid 'after' key");
  struct entries *en = lua_newuserdatauv(L, sizeof *en, 0);
  en->v = NULL;
  en->n = 0;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, entries_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  int more = 0;
  struct fm_storage_error e = {0};
  if (st->drv->list(st->h, prefix, after, (int)limit, &en->v, &en->n, &more, &e))
    return fail(L, st, "list", &e);
  fm_storage_count(st, "list", 1);
  lua_createtable(L, (int)en->n, 0);
  for (size_t i = 0; i < en->n; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, en->v[i].key);
    lua_setfield(L, -2, "key");
    lua_pushinteger(L, (lua_Integer)en->v[i].size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)en->v[i].last_modified);
    lua_setfield(L, -2, "last_modified");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (more && en->n) lua_pushstring(L, en->v[en->n - 1].key);
  else lua_pushnil(L);
  return 2;
}

static int l_presign(lua_State *L) {
  const char *key = check_key(L, 1);
  lua_Integer exp = luaL_optinteger(L, 2, 900);
  if (exp < 1 || exp > 604800) luaL_argerror(L, 2, "expires_s: 1 to 604800");
  struct fm_storage *st = get_store(L);
  struct fm_storage_error e = {0};
  if (!st->drv->presign) {
    fm_storage_fail(&e, FM_STORAGE_UNSUPPORTED, "presigned URLs need STORAGE_PROVIDER=s3 (the "
                    "%s backend has none)", st->drv->name);
    return fail(L, st, "presign", &e);
  }
  if (!fm_storage_valid_key(key)) return invalid(L, st, "presign", "invalid key");
  char url[8192];
  if (st->drv->presign(st->h, key, (long)exp, url, sizeof url, &e))
    return fail(L, st, "presign", &e);
  fm_storage_count(st, "presign", 1);
  lua_pushstring(L, url);
  return 1;
}

static int l_ping(lua_State *L) {
  struct fm_storage *st = get_store(L);
  struct fm_storage_error e = {0};
  double t0 = fm_time_mono();
  if (st->drv->ping(st->h, &e)) return fail(L, st, "ping", &e);
  fm_storage_count(st, "ping", 1);
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, (double)(long long)((fm_time_mono() - t0) * 1e6) / 1e3);
  lua_setfield(L, -2, "latency_ms");
  lua_pushstring(L, st->drv->name);
  lua_setfield(L, -2, "backend");
  return 1;
}

static int l_backend(lua_State *L) {
  lua_pushstring(L, get_store(L)->drv->name);
  return 1;
}

/* ---- response bodies ----------------------------------------------------------------------- */

/* The userdata a handler returns: its first member is what worker.c takes over. */
struct lresp {
  struct fm_resp_stream s;
  char ctype[256];
  char disposition[700];
};

static int resp_close(lua_State *L) {
  struct lresp *r = luaL_checkudata(L, 1, FM_RESP_STREAM_MT);
  fm_resp_stream_close(&r->s);
  return 0;
}

/* The headers the body brings: Content-Type, Content-Disposition (when a filename was given). */
static int resp_headers(lua_State *L) {
  struct lresp *r = luaL_checkudata(L, 1, FM_RESP_STREAM_MT);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, r->ctype);
  lua_setfield(L, -2, "Content-Type");
  if (r->disposition[0]) {
    lua_pushstring(L, r->disposition);
    lua_setfield(L, -2, "Content-Disposition");
  }
  return 1;
}

static int resp_size(lua_State *L) {
  struct lresp *r = luaL_checkudata(L, 1, FM_RESP_STREAM_MT);
  if (r->s.size == FM_RESP_SIZE_UNKNOWN) lua_pushnil(L);
  else lua_pushinteger(L, (lua_Integer)r->s.size);
  return 1;
}

/* attachment; filename="<ASCII, quotes and controls replaced>"; filename*=UTF-8''<encoded> */
static void disposition(const char *name, char *out, size_t outsz) {
  char ascii[200];
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)name; *p && o + 1 < sizeof ascii; p++)
    ascii[o++] = (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == '\\' || *p == '/') ? '_' : (char)*p;
  ascii[o] = '\0';
  struct fm_buf enc = {0};
  fm_sigv4_uri_encode(name, 0, &enc);
  if (enc.len > 400) enc.len = 0; /* too long to be useful: the ASCII form is enough */
  if (enc.len) snprintf(out, outsz, "attachment; filename=\"%s\"; filename*=UTF-8''%.*s", ascii,
                        (int)enc.len, enc.p);
  else snprintf(out, outsz, "attachment; filename=\"%s\"", ascii);
  fm_buf_free(&enc);
}

/* The streams response() opened in this VM, in a weak-keyed registry table. */
static const char live_key = 0;

static void push_live(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &live_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 4);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &live_key);
}

/* release_streams([keep]): closes every stream response() opened in this VM except keep (fm.app
 * calls it after each request: a stream a handler dropped is closed at once, not at the next
 * garbage collection). Returns how many it closed. */
static int l_release_streams(lua_State *L) {
  push_live(L);
  int t = lua_gettop(L);
  int closed = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (!lua_rawequal(L, -1, 1)) {
      struct lresp *r = luaL_testudata(L, -1, FM_RESP_STREAM_MT);
      if (r && (r->s.fd >= 0 || r->s.read)) {
        fm_resp_stream_close(&r->s);
        closed++;
      }
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, t); /* clearing the current key is allowed during lua_next */
    }
  }
  lua_pushinteger(L, closed);
  return 1;
}

static int l_response(lua_State *L) {
  const char *key = check_key(L, 1);
  const char *filename = NULL, *ctype = NULL;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "filename");
    filename = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 2, "content_type");
    ctype = luaL_optstring(L, -1, NULL);
    lua_pop(L, 2); /* still referenced by the table */
    if (ctype && (strlen(ctype) > 255 || strpbrk(ctype, "\r\n")))
      luaL_argerror(L, 2, "content_type: invalid");
  }
  struct fm_storage *st = get_store(L);
  if (!fm_storage_valid_key(key)) return invalid(L, st, "response", "invalid key");
  /* created closed, its metatable set, and only then is the object opened */
  struct lresp *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->s.fd = -1;
  luaL_setmetatable(L, FM_RESP_STREAM_MT);
  struct fm_storage_info info;
  struct fm_storage_error e = {0};
  if (st->drv->open_stream(st->h, key, &r->s, &info, &e)) return fail(L, st, "response", &e);
  fm_storage_count(st, "response", 1);
  push_live(L);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  snprintf(r->ctype, sizeof r->ctype, "%s", ctype ? ctype : info.content_type);
  if (filename && *filename) disposition(filename, r->disposition, sizeof r->disposition);
  return 1;
}

/* ---- exec only ----------------------------------------------------------------------------- */

static void exec_only(lua_State *L, const char *what) {
  if (!is_exec(L)) luaL_error(L, "fm.storage.%s is for `faultmaven exec` only", what);
}

static int l_configure(lua_State *L) {
  exec_only(L, "configure");
  luaL_checktype(L, 1, LUA_TTABLE);
  struct fm_storage_config *cfg = lua_newuserdatauv(L, sizeof *cfg, 0);
  lua_createtable(L, 0, 16);
  int t = lua_gettop(L);
  static const char *const map[][2] = {
      {"backend", "storage_provider"},
      {"dir", "uploads_dir"},
      {"bucket", "s3_bucket_name"},
      {"region", "aws_region"},
      {"access_key", "aws_access_key_id"},
      {"secret_key", "aws_secret_access_key"},
      {"session_token", "aws_session_token"},
      {"endpoint", "s3_endpoint_url"},
      {"path_style", "s3_force_path_style"},
      {"multipart_threshold_mb", "s3_multipart_threshold_mb"},
      {"part_size_mb", "s3_part_size_mb"},
      {"timeout_s", "s3_timeout_s"},
      {"max_retries", "s3_max_retries"},
  };
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
    lua_getfield(L, 1, map[i][0]);
    lua_setfield(L, t, map[i][1]);
  }
  config_from_table(L, t, cfg);
  struct fm_storage *st;
  struct fm_err err = {0};
  if (fm_storage_open(cfg, &st, &err)) return luaL_error(L, "fm.storage.configure: %s", err.msg);
  fm_storage_global_set(st);
  g_exec_cfg = *cfg;
  g_exec_configured = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  exec_only(L, "close");
  fm_storage_global_close();
  g_exec_configured = 0;
  return 0;
}

static const luaL_Reg funcs[] = {
    {"backend", l_backend},       {"put_file", l_put_file}, {"put_string", l_put_string},
    {"get_string", l_get_string}, {"get_file", l_get_file}, {"head", l_head},
    {"delete", l_delete},         {"list", l_list},         {"presign", l_presign},
    {"ping", l_ping},             {"response", l_response}, {"configure", l_configure},
    {"close", l_close},           {"release_streams", l_release_streams},
    {NULL, NULL},
};

static const luaL_Reg resp_methods[] = {
    {"headers", resp_headers}, {"size", resp_size}, {"close", resp_close}, {NULL, NULL}};

int luaopen_fm_storage(lua_State *L);
int luaopen_fm_storage(lua_State *L) {
  fm_lua_handle_type(L, FM_RESP_STREAM_MT, resp_methods, resp_close, NULL);
  luaL_newlib(L, funcs);
  return 1;
}
