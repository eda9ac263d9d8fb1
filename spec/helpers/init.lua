-- The one front door for specs: `local helpers = require "spec.helpers"`.
--
-- Specs run inside the engine (`faultmaven exec /usr/bin/busted spec/...`) from the repository
-- root; `.busted` prefixes the Lua path with `./?.lua;./?/init.lua;./spec/fixtures/lua/?.lua` so
-- this module and the fixtures resolve. The path tweak below repeats that (with absolute paths)
-- for a runner started some other way, once this file itself was found.
--
-- What is here:
--   helpers.root                            repository root (FM_SOURCE_DIR, else found from here)
--   helpers.bin()                           engine binary: FM_BIN or <root>/build/faultmaven
--   helpers.free_port()                     a free loopback TCP port
--   helpers.tmpdir(prefix)                  a new temp dir, removed by helpers.cleanup()
--   helpers.copy_home(prefix)               a temp copy of config.lua, lua/, playbooks/
--   helpers.replace_file(path, data)        write beside + rename, like an editor saving
--   helpers.wait_until(fn, timeout, step)   poll fn until it returns a truthy value
--   helpers.sleep(s), helpers.now()         wall-clock helpers (monotonic where available)
--   helpers.shell(cmd)                      run a shell command: ok, exit code, output
--   helpers.spawn{argv, env, stdout, stderr, cwd}   a child process over fm.proc
--   helpers.engine.start(opts)              a real `faultmaven serve` on a free port
--   helpers.http                            raw HTTP/1.1 keep-alive client (spec/helpers/http.lua)
--   helpers.postgres.start(opts)            a real PostgreSQL server in a temp dir (below)
--   helpers.redis.start(opts)               a real redis-server in a temp dir (below)
--   helpers.redis.sentinel_setup(opts)      a master, a replica and three redis-sentinels
--   helpers.db_backends()                   the database backends a spec runs on (below)
--   helpers.each_db(fn)                     fn(url, name, backend) for each backend
--   helpers.cleanup()                       close fm.db's pool, stop every child still running,
--                                           remove temp dirs
--
-- PostgreSQL: helpers.postgres.start{fsync = false, database = "fm_test", settings = {k = v}}
-- runs initdb into a temp dir and starts `postgres` (/usr/lib/postgresql/<newest>/bin, or
-- FM_PG_BIN) on a free loopback port, its unix socket in the temp dir, fsync off unless
-- opts.fsync (durability tests), as user nobody when the specs run as root (setpriv). It returns
-- {port, host, dir, url = "postgresql://postgres@127.0.0.1:PORT/fm_test", dsn = "host=... port=...
-- user=postgres dbname=fm_test", log(), stop(), psql(sql [, dbname]) -> ok, output,
-- create_database([name]) -> name, url_for(dbname)}; it raises with the server log when the server
-- does not come up (a spec never skips because PostgreSQL is missing). stop() is a fast shutdown
-- (SIGINT); helpers.cleanup() stops it too.
--
-- Database backends: a spec written once runs on SQLite and PostgreSQL:
--   for _, b in ipairs(helpers.db_backends()) do
--     describe("things on " .. b.name, function()
--       local url
--       lazy_setup(function() url = b.url() end)   -- a fresh, empty database each call
--       lazy_teardown(helpers.cleanup)
--       ...
--     end)
--   end
-- b.name is "sqlite" or "postgres"; b.url([opts]) (or b:url()) is a new SQLite file in a temp
-- dir, or a new database on one PostgreSQL server shared by the spec file (started on first use;
-- opts.durable: on a second server with fsync on); b.server([opts]) is that server (nil for
-- SQLite). helpers.each_db(fn) calls fn(b.url(), b.name, b) for each at once.
--
-- Redis: helpers.redis.start{password = "pw"} starts `redis-server` on a free loopback port in a
-- temp dir, no persistence (--save '', no AOF). It returns {port, host, url =
-- "redis://[:pw@]127.0.0.1:PORT/0", dir, log(), stop(), restart() (a new server on the same port,
-- empty), alive(), cli(args...) -> ok, output (redis-cli with the password)}; it raises with the
-- log when the server does not come up. helpers.cleanup() stops it. opts.args: more redis-server
-- arguments. helpers.redis.sentinel_setup(opts): a master, a replica and three sentinels (below,
-- by its definition).
--
-- Later issues add servers the same way as helpers.postgres: a table with `start(opts)` that
-- picks a free port and a temp dir with helpers.free_port()/helpers.tmpdir(), launches the server
-- with helpers.spawn (logs to a file in the temp dir), waits with helpers.wait_until until it
-- answers, and returns an object with `port`, `url`/`dsn`, `log()` and `stop()`;
-- helpers.cleanup() already stops whatever helpers.spawn started.
--
-- S3: helpers.s3.start{bucket = "fm-test"} starts s3rver (a local S3-compatible server from npm;
-- `scripts/install-deps.sh test` installs it into $HOME/.cache/faultmaven/node_modules, FM_S3RVER
-- may name another executable) on a free loopback port with its data in a temp dir and one
-- bucket. It returns {port, host, endpoint = "http://127.0.0.1:PORT", bucket, access_key,
-- secret_key (s3rver's S3RVER/S3RVER), dir, log(), stop(kill), restart() (a new server on the
-- same port and data), alive(), env() (the STORAGE_PROVIDER=s3 settings for an engine)}; it
-- raises with the log when the server does not come up (or is not installed).

local socket = require "socket"
local http = require "spec.helpers.http"

local helpers = {}

helpers.http = http

-- Repository root: FM_SOURCE_DIR, else derived from this file's path, else the cwd.
local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end
helpers.shell_quote = shell_quote

local function cwd()
  local p = io.popen("pwd")
  local dir = p and p:read("l")
  if p then p:close() end
  return dir or "."
end

local function find_root()
  local env = os.getenv("FM_SOURCE_DIR")
  if env and env ~= "" then return (env:gsub("/+$", "")) end
  local src = debug.getinfo(1, "S").source
  local file = src:match("^@(.*)$")
  if file then
    local dir = file:match("^(.*)/spec/helpers/init%.lua$")
    if dir then
      if dir:sub(1, 1) == "/" then return dir end
      if dir == "." or dir == "" then return cwd() end
      return cwd() .. "/" .. dir:gsub("^%./", "")
    end
  end
  return cwd()
end

helpers.root = find_root()

do
  local extra = helpers.root .. "/?.lua;" .. helpers.root .. "/?/init.lua;"
    .. helpers.root .. "/spec/fixtures/lua/?.lua;"
  if not package.path:find(helpers.root .. "/?.lua;", 1, true) then
    package.path = extra .. package.path
  end
end

-- The engine binary under test.
function helpers.bin()
  local bin = os.getenv("FM_BIN")
  if bin and bin ~= "" then return bin end
  return helpers.root .. "/build/faultmaven"
end

local fmtime do
  local ok, mod = pcall(require, "fm.time")
  fmtime = ok and mod or nil
end

-- Monotonic seconds when the engine provides them, else wall clock.
function helpers.now()
  if fmtime and fmtime.monotonic then return fmtime.monotonic() end
  return socket.gettime()
end

function helpers.sleep(s)
  if fmtime and fmtime.sleep then return fmtime.sleep(s) end
  return socket.sleep(s)
end

-- Polls fn() every step_s (default 0.05) until it returns a truthy value, for at most timeout_s
-- (default 10). Returns what fn returned; raises "wait_until: timed out ..." (with the last error
-- fn raised, if any) otherwise. Errors raised by fn count as "not yet".
function helpers.wait_until(fn, timeout_s, step_s)
  timeout_s = timeout_s or 10
  step_s = step_s or 0.05
  local deadline = helpers.now() + timeout_s
  local last_err
  while true do
    local ok, a, b, c = pcall(fn)
    if ok and a then return a, b, c end
    if not ok then last_err = a end
    if helpers.now() >= deadline then
      error(("wait_until: timed out after %.1fs%s"):format(timeout_s,
        last_err and (" (last error: " .. tostring(last_err) .. ")") or ""), 2)
    end
    helpers.sleep(step_s)
  end
end

-- A loopback TCP port nobody listens on right now (bind to port 0, read it, close).
function helpers.free_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return tonumber(port)
end

-- Runs a shell command. Returns ok (exit status 0), the exit code (or signal number), the output
-- (stdout; add 2>&1 to the command for stderr).
function helpers.shell(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok == true, code, out
end

local tmpdirs = {}

-- Creates a fresh directory under $TMPDIR (or /tmp) named <prefix>XXXXXX; removed by
-- helpers.cleanup() unless FM_SPEC_KEEP_TMP is set. Returns its absolute path.
function helpers.tmpdir(prefix)
  prefix = prefix or "fm-spec-"
  assert(prefix:match("^[%w_.-]+$"), "tmpdir prefix must be [A-Za-z0-9_.-]")
  local base = os.getenv("TMPDIR")
  if not base or base == "" then base = "/tmp" end
  local ok, _, out = helpers.shell("mktemp -d " .. shell_quote(base .. "/" .. prefix .. "XXXXXX"))
  local dir = out and out:match("^(%S+)")
  assert(ok and dir, "mktemp -d failed")
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end

function helpers.mkdir(path)
  local ok = helpers.shell("mkdir -p " .. shell_quote(path))
  assert(ok, "mkdir -p failed: " .. path)
  return path
end

-- Names of the entries of a directory (not recursive, no . and ..), sorted; {} if it is missing.
function helpers.listdir(path)
  local _, _, out = helpers.shell("ls -A " .. shell_quote(path) .. " 2>/dev/null")
  local names = {}
  for name in (out or ""):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

function helpers.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function helpers.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
  return path
end

function helpers.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- ------------------------------------------------------------------------------------------------
-- Processes

local proc_mod
local function fmproc()
  if not proc_mod then
    local ok, mod = pcall(require, "fm.proc")
    if not ok then
      error("fm.proc is not available: run specs with `faultmaven exec /usr/bin/busted ...`", 3)
    end
    proc_mod = mod
  end
  return proc_mod
end

local Proc = {}
Proc.__index = Proc

local procs = {}

-- Starts a child process.
--   argv    array, argv[1] is the program (absolute path or looked up in PATH by fm.proc)
--   env     map NAME -> value merged over the current environment (false removes a name)
--   stdout, stderr  file paths (may be the same file)
--   cwd     working directory
-- Returns a Proc with fields pid, argv and methods wait/stop/kill/signal/alive. Raises on failure.
function helpers.spawn(opts)
  assert(type(opts) == "table" and type(opts.argv) == "table", "spawn{argv=...} required")
  -- fm.proc merges env over the current environment itself (false removes a name)
  local env = {}
  for k, v in pairs(opts.env or {}) do
    if v == false then env[k] = false else env[k] = tostring(v) end
  end
  local pid, err = fmproc().spawn({
    argv = opts.argv,
    env = env,
    stdout = opts.stdout,
    stderr = opts.stderr,
    cwd = opts.cwd,
  })
  if not pid then
    error(("spawn %s failed: %s"):format(tostring(opts.argv[1]), tostring(err)), 2)
  end
  local p = setmetatable({ pid = pid, argv = opts.argv }, Proc)
  procs[#procs + 1] = p
  return p
end

-- Waits for the process to end, at most timeout seconds (default 0: just look).
-- Returns "exit"|"signal", code; or nil, "timeout" when it is still running.
function Proc:wait(timeout)
  if self.how then return self.how, self.code end
  local how, code = fmproc().wait(self.pid, timeout or 0)
  if not how then return nil, code or "timeout" end
  self.how, self.code = how, code
  return how, code
end

function Proc:alive()
  return self:wait(0) == nil
end

-- Sends a signal ("TERM", "INT", "KILL", "HUP" or a number) without waiting.
function Proc:signal(sig)
  if self.how then return nil, "process already ended" end
  return fmproc().kill(self.pid, sig or "TERM")
end

-- Sends sig (default "TERM") and waits up to timeout (default 15) seconds for the exit.
-- Returns "exit"|"signal", code. If the process outlives the timeout it is killed with SIGKILL and
-- stop returns nil, "timeout" so a spec asserting a clean stop fails.
function Proc:stop(sig, timeout)
  if self.how then return self.how, self.code end
  self:signal(sig or "TERM")
  local how, code = self:wait(timeout or 15)
  if how then return how, code end
  self:kill()
  return nil, "timeout"
end

-- SIGKILL and reap. Returns "exit"|"signal", code.
function Proc:kill()
  if self.how then return self.how, self.code end
  self:signal("KILL")
  return self:wait(10)
end

-- A copy of the engine's Lua tree (config.lua, lua/, playbooks/ and migrations/ if any) in a new
-- temp dir, to start an engine with FM_HOME pointing at it and change files under it. Returns
-- the dir.
function helpers.copy_home(prefix)
  local dir = helpers.tmpdir(prefix or "fm-home-")
  local cmd = "cp -R " .. shell_quote(helpers.root .. "/config.lua") .. " "
    .. shell_quote(helpers.root .. "/lua") .. " " .. shell_quote(dir .. "/")
  local ok, _, out = helpers.shell(cmd)
  assert(ok, "copy_home: " .. tostring(out))
  for _, sub in ipairs { "playbooks", "migrations" } do
    if helpers.file_exists(helpers.root .. "/" .. sub) then
      assert(helpers.shell("cp -R " .. shell_quote(helpers.root .. "/" .. sub) .. " "
        .. shell_quote(dir .. "/")))
    end
  end
  return dir
end

-- Replaces a file the way editors save: write a temp file beside it, then rename over it.
function helpers.replace_file(path, data)
  local tmp = path .. ".fm-tmp~"
  helpers.write_file(tmp, data)
  assert(os.rename(tmp, path))
end

-- ------------------------------------------------------------------------------------------------
-- The engine

local Engine = {}
Engine.__index = Engine

helpers.engine = {}

-- Reads the whole engine log (stdout + stderr).
function Engine:log()
  return helpers.read_file(self.log_path) or ""
end

-- The last n lines of the log, as one string.
function Engine:log_tail(n)
  local lines = {}
  for line in self:log():gmatch("[^\n]+") do lines[#lines + 1] = line end
  local from = math.max(1, #lines - (n or 40) + 1)
  return table.concat(lines, "\n", from)
end

-- The complete lines of the log (a line the engine is still writing is left out).
function Engine:log_lines()
  local out = {}
  for line in self:log():gmatch("([^\n]*)\n") do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

-- The JSON log lines, decoded (lines that are not JSON objects are skipped), each with `_raw`.
function Engine:log_entries()
  local out = {}
  for _, line in ipairs(self:log_lines()) do
    if line:sub(1, 1) == "{" then
      local ok, entry = pcall(http.json_decode, line)
      if ok and type(entry) == "table" then
        entry._raw = line
        out[#out + 1] = entry
      end
    end
  end
  return out
end

-- Waits (default 5 s) until a log entry satisfies pred(entry) and returns it; raises otherwise.
function Engine:wait_log(pred, timeout)
  return helpers.wait_until(function()
    for _, entry in ipairs(self:log_entries()) do
      if pred(entry) then return entry end
    end
    return nil
  end, timeout or 5)
end

-- A new keep-alive connection to the engine (raises if it cannot connect).
function Engine:client(opts)
  return assert(http.connect(self.host, self.port, opts))
end

-- One request on a fresh connection: engine:request("GET", "/", {headers=..., body=...}).
-- Returns res or nil, err.
function Engine:request(method, path, opts)
  return http.request(self.host, self.port, method, path, opts)
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head", "options" }) do
  Engine[m] = function(self, path, opts)
    return self:request(m:upper(), path, opts)
  end
end

function Engine:alive()
  return self.proc:alive()
end

function Engine:signal(sig)
  return self.proc:signal(sig)
end

function Engine:wait(timeout)
  return self.proc:wait(timeout)
end

-- Stops the engine: sig (default "TERM"), at most timeout seconds (default 15) before SIGKILL.
-- Returns "exit"|"signal", code, or nil, "timeout".
function Engine:stop(sig, timeout)
  return self.proc:stop(sig or "TERM", timeout or 15)
end

function Engine:_wait_ready(timeout)
  local deadline = helpers.now() + timeout
  local last = "no answer"
  while helpers.now() < deadline do
    local how, code = self.proc:wait(0)
    if how then
      return nil, ("engine exited before it was ready (%s %s)"):format(how, tostring(code))
    end
    local res, err = http.request(self.host, self.port, "GET", "/readiness", { timeout = 2 })
    if res and res.status == 200 then return true end
    last = res and ("GET /readiness -> " .. res.status) or tostring(err)
    helpers.sleep(0.05)
  end
  return nil, ("engine not ready after %ss (last: %s)"):format(timeout, last)
end

-- Starts `faultmaven serve` on a free loopback port with a fresh data dir and the test routes.
--   opts.env    map of extra/overriding environment (false removes a name)
--   opts.args   extra command-line arguments after `serve`
--   opts.ready_timeout  seconds to wait for GET /readiness == 200 (default 15)
-- Returns an engine object: port, host, url, pid, dir, data_dir, log_path, and methods log(),
-- log_entries(), wait_log(pred), client(), request()/get()/post()/..., signal(), wait(), stop().
-- Raises with the log tail if the engine does not become ready.
function helpers.engine.start(opts)
  opts = opts or {}
  local port = helpers.free_port()
  local dir = helpers.tmpdir("fm-engine-")
  local data_dir = helpers.mkdir(dir .. "/data")
  local log_path = dir .. "/engine.log"
  local env = {
    FM_PORT = tostring(port),
    FM_HOST = "127.0.0.1",
    FM_DATA_DIR = data_dir,
    FM_HOME = helpers.root,
    FM_LUA_PATH = helpers.root .. "/spec/fixtures/lua/?.lua",
    FM_EXTRA_ROUTES = "fm_test.routes",
    LOG_LEVEL = "debug",
    -- most specs send bursts to one engine: the rate limiter is off unless a spec turns it on
    RATE_LIMIT_ENABLED = "false",
    -- the built-in knowledge pack (31 runbooks to embed) loads only where a spec asks for it
    KB_PACK_DIR = "off",
  }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local argv = { helpers.bin(), "serve" }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end

  local p = helpers.spawn({
    argv = argv, env = env, stdout = log_path, stderr = log_path, cwd = helpers.root,
  })
  local e = setmetatable({
    proc = p,
    pid = p.pid,
    host = "127.0.0.1",
    port = port,
    url = ("http://127.0.0.1:%d"):format(port),
    dir = dir,
    data_dir = data_dir,
    log_path = log_path,
    env = env,
  }, Engine)
  local ok, err = e:_wait_ready(opts.ready_timeout or 15)
  if not ok then
    p:kill()
    error(("%s\n--- %s (tail) ---\n%s"):format(err, log_path, e:log_tail(40)), 2)
  end
  return e
end

-- ------------------------------------------------------------------------------------------------
-- PostgreSQL

helpers.postgres = {}

local function pg_bindir()
  local env = os.getenv("FM_PG_BIN")
  if env and env ~= "" then return env end
  local _, _, out = helpers.shell(
    "ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1")
  local dir = out and out:match("^(%S+)")
  if not dir then
    error("PostgreSQL server not found in /usr/lib/postgresql/*/bin: run scripts/install-deps.sh "
      .. "test (or set FM_PG_BIN)", 3)
  end
  return dir
end

-- postgres refuses to run as root: then initdb and the server run as nobody.
local function pg_user_prefix(dir)
  local _, _, uid = helpers.shell("id -u")
  if not (uid and uid:match("^0%s")) then return {} end
  local _, _, gid = helpers.shell("id -g nobody")
  gid = gid and gid:match("^(%d+)")
  local _, _, setpriv = helpers.shell("command -v setpriv")
  setpriv = setpriv and setpriv:match("^(%S+)")
  assert(gid and setpriv, "running as root needs user nobody and setpriv (util-linux)")
  assert(helpers.shell("chown nobody:" .. gid .. " " .. shell_quote(dir)), "chown " .. dir)
  return { setpriv, "--reuid=nobody", "--regid=" .. gid, "--clear-groups", "--" }
end

local function argv_line(argv)
  local out = {}
  for i, a in ipairs(argv) do out[i] = shell_quote(a) end
  return table.concat(out, " ")
end

local Pg = {}
Pg.__index = Pg

function Pg:log() return helpers.read_file(self.log_path) or "" end

function Pg:url_for(dbname)
  return ("postgresql://postgres@127.0.0.1:%d/%s"):format(self.port, dbname)
end

-- Runs SQL with psql (as the superuser postgres). Returns ok, output (stdout and stderr).
function Pg:psql(sql, dbname)
  local ok, _, out = helpers.shell(argv_line({ self.bin .. "/psql", "-X", "-q", "-A", "-t",
    "-v", "ON_ERROR_STOP=1", "-d", self:url_for(dbname or self.database), "-c", sql }) .. " 2>&1")
  return ok, out
end

-- A new empty database; returns its name.
local db_counter = 0
function Pg:create_database(name)
  db_counter = db_counter + 1
  name = name or ("fm_test_%d_%d"):format(db_counter, math.random(1, 1e6))
  local ok, _, out = helpers.shell(argv_line({ self.bin .. "/psql", "-X", "-q", "-v",
    "ON_ERROR_STOP=1", "-d", self:url_for("postgres"), "-c", 'CREATE DATABASE "' .. name .. '"' })
    .. " 2>&1")
  assert(ok, "CREATE DATABASE " .. name .. ": " .. tostring(out))
  return name
end

-- Fast shutdown (SIGINT: open sessions are ended); KILL after timeout_s (default 10).
function Pg:stop(timeout_s)
  return self.proc:stop("INT", timeout_s or 10)
end

function Pg:alive() return self.proc:alive() end

function helpers.postgres.start(opts)
  opts = opts or {}
  local bin = pg_bindir()
  local dir = helpers.tmpdir("fm-pg-")
  local prefix = pg_user_prefix(dir)
  local data = dir .. "/data"
  local log_path = dir .. "/postgres.log"
  local initdb = {}
  for _, a in ipairs(prefix) do initdb[#initdb + 1] = a end
  for _, a in ipairs({ bin .. "/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E",
    "UTF8", "--no-locale", "--no-sync" }) do initdb[#initdb + 1] = a end
  local ok, _, out = helpers.shell(argv_line(initdb) .. " 2>&1")
  assert(ok, "initdb failed: " .. tostring(out))
  local port = helpers.free_port()
  local argv = {}
  for _, a in ipairs(prefix) do argv[#argv + 1] = a end
  local settings = {
    listen_addresses = "127.0.0.1", unix_socket_directories = dir, max_connections = "200",
    fsync = opts.fsync and "on" or "off", full_page_writes = opts.fsync and "on" or "off",
    synchronous_commit = opts.fsync and "on" or "off",
  }
  for k, v in pairs(opts.settings or {}) do settings[k] = tostring(v) end
  for _, a in ipairs({ bin .. "/postgres", "-D", data, "-p", tostring(port) }) do
    argv[#argv + 1] = a
  end
  local names = {}
  for k in pairs(settings) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    argv[#argv + 1] = "-c"
    argv[#argv + 1] = k .. "=" .. settings[k]
  end
  local p = helpers.spawn({ argv = argv, stdout = log_path, stderr = log_path, cwd = dir })
  p.stop_signal = "INT" -- helpers.cleanup: a fast shutdown, open sessions or not
  local pg = setmetatable({ proc = p, pid = p.pid, bin = bin, dir = dir, data_dir = data,
    log_path = log_path, host = "127.0.0.1", port = port,
    database = opts.database or "fm_test" }, Pg)
  local ready, err = pcall(helpers.wait_until, function()
    if not p:alive() then error("postgres exited", 0) end
    return helpers.shell(argv_line({ bin .. "/pg_isready", "-q", "-h", "127.0.0.1", "-p",
      tostring(port), "-U", "postgres" }))
  end, 30, 0.05)
  if not ready then
    p:kill()
    error(("postgres did not start: %s\n--- %s ---\n%s"):format(tostring(err), log_path,
      pg:log()), 2)
  end
  pg:create_database(pg.database)
  pg.url = pg:url_for(pg.database)
  pg.dsn = ("host=127.0.0.1 port=%d user=postgres dbname=%s"):format(port, pg.database)
  return pg
end

-- ------------------------------------------------------------------------------------------------
-- Redis

helpers.redis = {}

local Redis = {}
Redis.__index = Redis

function Redis:log() return helpers.read_file(self.log_path) or "" end
function Redis:alive() return self.proc ~= nil and self.proc:alive() end

-- Runs redis-cli against the server: ok, output (stdout and stderr).
function Redis:cli(...)
  local argv = { "redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", tostring(self.port) }
  if self.password then
    argv[#argv + 1] = "-a"
    argv[#argv + 1] = self.password
  end
  for _, a in ipairs({ ... }) do argv[#argv + 1] = tostring(a) end
  local ok, _, out = helpers.shell(argv_line(argv) .. " 2>&1")
  return ok, out
end

-- Stops the server (SIGKILL when kill is true: no goodbye to clients).
function Redis:stop(kill)
  if not self:alive() then return end
  if kill then
    self.proc:kill()
    self.proc:wait(5)
    return
  end
  return self.proc:stop("TERM", 10)
end

function Redis:_launch()
  local argv = { "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
    "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
    "--logfile", "" }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
    argv[#argv + 1] = "--masterauth" -- as a replica (Sentinel), the same password upstream
    argv[#argv + 1] = self.password
  end
  for _, a in ipairs(self.args or {}) do argv[#argv + 1] = a end
  self.proc = helpers.spawn({ argv = argv, stdout = self.log_path, stderr = self.log_path,
    cwd = self.dir })
  self.pid = self.proc.pid
  local ready, err = pcall(helpers.wait_until, function()
    if not self.proc:alive() then error("redis-server exited", 0) end
    local ok, out = self:cli("PING")
    return ok and out and out:match("PONG")
  end, 15, 0.05)
  if not ready then
    self.proc:kill()
    error(("redis-server did not start: %s\n--- %s ---\n%s"):format(tostring(err),
      self.log_path, self:log()), 3)
  end
end

-- A new, empty server on the same port (after stop()).
function Redis:restart()
  self:stop()
  self:_launch()
  return self
end

function helpers.redis.start(opts)
  opts = opts or {}
  local dir = helpers.tmpdir("fm-redis-")
  local r = setmetatable({ dir = dir, log_path = dir .. "/redis.log", host = "127.0.0.1",
    port = helpers.free_port(), password = opts.password, args = opts.args }, Redis)
  r:_launch()
  r.url = ("redis://%s127.0.0.1:%d/0"):format(opts.password and (":" .. opts.password .. "@")
    or "", r.port)
  return r
end

-- Redis Sentinel: helpers.redis.sentinel_setup{password, sentinel_password, master_set,
-- sentinels = 3, replicas = 1, down_after_ms = 1000, failover_timeout_ms = 5000} starts a master
-- and `replicas` replicas (replicaof) with helpers.redis.start, and `sentinels` redis-sentinel
-- processes on free loopback ports (config files in a temp dir, quorum 2), and waits until every
-- sentinel knows the master, the replicas and the other sentinels (so a failover can be
-- authorised). Returns
--   {master, replica, replicas (Redis objects as helpers.redis.start's),
--    servers = {master, replicas...}, sentinels = {{port, proc, dir, log()}...},
--    hosts = "127.0.0.1:P1,127.0.0.1:P2,...", master_set,
--    sentinel_cli(i, args...) -> ok, output,
--    master_addr() -> host, port (as the first sentinel that answers says),
--    kill_master() (SIGKILL; returns the killed server),
--    wait_new_master(timeout_s) -> the Redis object the sentinels promoted after kill_master,
--    wait_settled(timeout_s) -> the master once sentinels, master and replicas all agree,
--    stop()}.
-- helpers.cleanup() stops everything.
local Sentinels = {}
Sentinels.__index = Sentinels

function Sentinels:sentinel_cli(i, ...)
  local sen = self.sentinels[i]
  local argv = { "redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", tostring(sen.port) }
  if self.sentinel_password then
    argv[#argv + 1] = "-a"
    argv[#argv + 1] = self.sentinel_password
  end
  for _, a in ipairs({ ... }) do argv[#argv + 1] = tostring(a) end
  local ok, _, out = helpers.shell(argv_line(argv) .. " 2>&1")
  return ok, out
end

-- SENTINEL master <set> of sentinel i as a table (redis-cli prints names and values by line).
function Sentinels:_master_info(i)
  local ok, out = self:sentinel_cli(i, "SENTINEL", "master", self.master_set)
  if not ok then return nil end
  local t, key = {}, nil
  for line in out:gmatch("[^\n]+") do
    if key then t[key] = line key = nil else key = line end
  end
  return t
end

function Sentinels:master_addr()
  for i = 1, #self.sentinels do
    local ok, out = self:sentinel_cli(i, "SENTINEL", "get-master-addr-by-name", self.master_set)
    local host, port = (ok and out or ""):match("^(%S+)\n(%d+)")
    if host then return host, tonumber(port) end
  end
  return nil
end

function Sentinels:server_on(port)
  for _, r in ipairs(self.servers) do if r.port == port then return r end end
  return nil
end

function Sentinels:kill_master()
  local _, port = self:master_addr()
  local m = assert(self:server_on(port), "no master known to the sentinels")
  m:stop(true)
  self.killed = m
  return m
end

function Sentinels:wait_new_master(timeout_s)
  return helpers.wait_until(function()
    local _, port = self:master_addr()
    if not port or (self.killed and port == self.killed.port) then return nil end
    local r = self:server_on(port)
    local ok, out = r:cli("ROLE")
    return ok and out:match("^master") and r
  end, timeout_s or 15, 0.05)
end

-- Waits until the sentinels agree on one master that says it is one, and every other live
-- server is its replica with the link up and is known to every sentinel as a healthy replica (a
-- further failover can then promote it). Returns the master's Redis object.
function Sentinels:wait_settled(timeout_s)
  return helpers.wait_until(function()
    local port
    for i = 1, #self.sentinels do
      local t = self:_master_info(i)
      if not t or t.flags ~= "master" or (port and tonumber(t.port) ~= port) then return nil end
      port = tonumber(t.port)
      local ok, out = self:sentinel_cli(i, "SENTINEL", "replicas", self.master_set)
      local good = 0
      for flags in (ok and out or ""):gmatch("\nflags\n([^\n]+)") do
        if flags == "slave" then good = good + 1 end
      end
      local live = 0
      for _, r in ipairs(self.servers) do if r:alive() then live = live + 1 end end
      if good < live - 1 then return nil end
    end
    local m = self:server_on(port)
    if not (m and m:alive() and (select(2, m:cli("ROLE")) or ""):match("^master")) then
      return nil
    end
    for _, r in ipairs(self.servers) do
      if r ~= m and r:alive() then
        local ok, out = r:cli("INFO", "replication")
        if not (ok and out:match("role:slave") and out:match("master_link_status:up")
          and out:match("master_port:" .. port .. "%s")) then
          return nil
        end
      end
    end
    return m
  end, timeout_s or 15, 0.1)
end

function Sentinels:stop()
  for _, sen in ipairs(self.sentinels) do sen.proc:stop("TERM", 5) end
  for _, r in ipairs(self.servers) do r:stop(true) end
end

function helpers.redis.sentinel_setup(opts)
  opts = opts or {}
  local set = opts.master_set or "mymaster"
  local master = helpers.redis.start { password = opts.password }
  local st = setmetatable({ master = master, servers = { master }, replicas = {},
    sentinels = {}, master_set = set, sentinel_password = opts.sentinel_password }, Sentinels)
  for i = 1, opts.replicas or 1 do
    st.replicas[i] = helpers.redis.start { password = opts.password,
      args = { "--replicaof", "127.0.0.1", tostring(master.port) } }
    st.servers[i + 1] = st.replicas[i]
  end
  st.replica = st.replicas[1]
  local hosts = {}
  for i = 1, opts.sentinels or 3 do
    local dir = helpers.tmpdir("fm-sentinel-")
    local port = helpers.free_port()
    local conf = {
      "port " .. port, "bind 127.0.0.1", "daemonize no", "dir " .. dir, 'logfile ""',
      "sentinel resolve-hostnames no",
      ("sentinel monitor %s 127.0.0.1 %d 2"):format(set, master.port),
      ("sentinel down-after-milliseconds %s %d"):format(set, opts.down_after_ms or 1000),
      ("sentinel failover-timeout %s %d"):format(set, opts.failover_timeout_ms or 5000),
      ("sentinel parallel-syncs %s 1"):format(set),
    }
    local function q(v) return '"' .. v:gsub('[\\"]', "\\%0") .. '"' end
    if opts.password then
      conf[#conf + 1] = ("sentinel auth-pass %s %s"):format(set, q(opts.password))
    end
    if opts.sentinel_password then
      conf[#conf + 1] = "requirepass " .. q(opts.sentinel_password)
      conf[#conf + 1] = "sentinel sentinel-pass " .. q(opts.sentinel_password)
    end
    local path = helpers.write_file(dir .. "/sentinel.conf", table.concat(conf, "\n") .. "\n")
    local log_path = dir .. "/sentinel.log"
    local proc = helpers.spawn({ argv = { "redis-sentinel", path }, stdout = log_path,
      stderr = log_path, cwd = dir })
    st.sentinels[i] = { port = port, proc = proc, dir = dir, log_path = log_path,
      log = function() return helpers.read_file(log_path) or "" end }
    hosts[i] = "127.0.0.1:" .. port
  end
  st.hosts = table.concat(hosts, ",")
  local n = #st.sentinels
  local ready, err = pcall(helpers.wait_until, function()
    for _, replica in ipairs(st.replicas) do
      local ok, out = replica:cli("INFO", "replication")
      if not (ok and out:match("master_link_status:up")) then return nil end
    end
    for i = 1, n do
      if not st.sentinels[i].proc:alive() then error("redis-sentinel " .. i .. " exited", 0) end
      local t = st:_master_info(i)
      if not t or t.flags ~= "master" or tonumber(t.port) ~= master.port
        or tonumber(t["num-slaves"] or 0) < #st.replicas
        or tonumber(t["num-other-sentinels"] or 0) < n - 1 then
        return nil
      end
    end
    return true
  end, 20, 0.1)
  if not ready then
    local logs = {}
    for i, sen in ipairs(st.sentinels) do
      logs[i] = "--- sentinel " .. i .. " ---\n" .. sen.log()
    end
    error(("sentinels did not agree: %s\n%s"):format(tostring(err), table.concat(logs, "\n")), 2)
  end
  return st
end

-- PostgreSQL servers for the spec file, started on first use (helpers.cleanup stops them): one
-- with fsync off, one with fsync on for durability specs.
local shared_pg = {}
local function shared_postgres(durable)
  local key = durable and "durable" or "fast"
  local pg = shared_pg[key]
  if not pg or not pg:alive() then
    pg = helpers.postgres.start { fsync = durable }
    shared_pg[key] = pg
  end
  return pg
end

-- opts.durable: a PostgreSQL server with fsync on (SQLite always syncs: synchronous=FULL).
local function backend_url(name, opts)
  if name == "sqlite" then
    return "sqlite:///" .. helpers.tmpdir("fm-db-") .. "/test.db"
  end
  local pg = shared_postgres(opts.durable)
  return pg:url_for(pg:create_database())
end

-- The database backends every provider spec runs on: {name = "sqlite"|"postgres",
-- url([opts]), server([opts])}, callable as b.url() or b:url(). Nothing starts until url() or
-- server() is called.
function helpers.db_backends()
  local list = {}
  for _, name in ipairs({ "sqlite", "postgres" }) do
    local b = { name = name }
    b.url = function(a, o)
      if a ~= b then o = a end
      return backend_url(name, o or {})
    end
    b.server = function(a, o)
      if a ~= b then o = a end
      if name == "postgres" then return shared_postgres((o or {}).durable) end
      return nil
    end
    list[#list + 1] = b
  end
  return list
end

-- Calls fn(url, name, backend) for each backend, each with a fresh database.
function helpers.each_db(fn)
  for _, b in ipairs(helpers.db_backends()) do fn(b.url(), b.name, b) end
end

-- ------------------------------------------------------------------------------------------------
-- S3 (s3rver)

helpers.s3 = {}

local function s3rver_bin()
  local env = os.getenv("FM_S3RVER")
  if env and env ~= "" then return env end
  local home = os.getenv("HOME") or ""
  local cached = home .. "/.cache/faultmaven/node_modules/.bin/s3rver"
  if helpers.file_exists(cached) then return cached end
  local _, _, out = helpers.shell("command -v s3rver 2>/dev/null")
  local found = out and out:match("^(%S+)")
  if found then return found end
  error("s3rver not found: run scripts/install-deps.sh test (npm install into "
    .. "$HOME/.cache/faultmaven) or set FM_S3RVER", 3)
end

local S3 = {}
S3.__index = S3

function S3:log() return helpers.read_file(self.log_path) or "" end
function S3:alive() return self.proc ~= nil and self.proc:alive() end

function S3:stop(kill)
  if not self:alive() then return end
  if kill then
    self.proc:kill()
    return
  end
  return self.proc:stop("TERM", 10)
end

function S3:env()
  return { STORAGE_PROVIDER = "s3", S3_BUCKET_NAME = self.bucket, S3_ENDPOINT_URL = self.endpoint,
    S3_FORCE_PATH_STYLE = "true", AWS_REGION = "us-east-1", AWS_ACCESS_KEY_ID = self.access_key,
    AWS_SECRET_ACCESS_KEY = self.secret_key }
end

function S3:_launch()
  self.proc = helpers.spawn({ argv = { self.bin, "-d", self.data, "-a", "127.0.0.1", "-p",
    tostring(self.port), "--configure-bucket", self.bucket }, stdout = self.log_path,
    stderr = self.log_path, cwd = self.dir,
    -- s3rver 3.7 makes list continuation tokens with a cipher OpenSSL 3 (Node >= 17) hides
    env = { NODE_OPTIONS = "--openssl-legacy-provider" } })
  self.pid = self.proc.pid
  local ready, err = pcall(helpers.wait_until, function()
    if not self.proc:alive() then error("s3rver exited", 0) end
    local c = socket.connect("127.0.0.1", self.port)
    if c then c:close() end
    return c ~= nil and self:log():find("listening", 1, true) ~= nil
  end, 30, 0.05)
  if not ready then
    self.proc:kill()
    error(("s3rver did not start: %s\n--- %s ---\n%s"):format(tostring(err), self.log_path,
      self:log()), 3)
  end
end

function S3:restart()
  self:stop()
  self:_launch()
  return self
end

function helpers.s3.start(opts)
  opts = opts or {}
  local dir = helpers.tmpdir("fm-s3-")
  local s = setmetatable({ bin = s3rver_bin(), dir = dir, data = helpers.mkdir(dir .. "/data"),
    log_path = dir .. "/s3rver.log", host = "127.0.0.1", port = helpers.free_port(),
    bucket = opts.bucket or "fm-test", access_key = "S3RVER", secret_key = "S3RVER" }, S3)
  s.endpoint = ("http://127.0.0.1:%d"):format(s.port)
  s:_launch()
  return s
end

-- ------------------------------------------------------------------------------------------------
-- Small assertions helpers

-- The comma-separated tokens of a header value, lower-cased, as a set:
-- tokens("GET, HEAD").get == true.
function helpers.tokens(value)
  local set = {}
  for t in (value or ""):gmatch("[^,%s]+") do set[t:lower()] = true end
  return set
end

-- True when s is a generated request id: 32 lower- or upper-case hex digits.
function helpers.is_hex_id(s)
  return type(s) == "string" and #s == 32 and s:match("^%x+$") ~= nil
end

-- ------------------------------------------------------------------------------------------------
-- Cleanup

-- Closes fm.db's pool (if fm.db was loaded), stops every process helpers.spawn started that still
-- runs (TERM, or the process's stop_signal; KILL after 5 s) and removes the temp dirs (kept when
-- FM_SPEC_KEEP_TMP is set). Call it from lazy_teardown/teardown.
function helpers.cleanup()
  local fmdb = package.loaded["fm.db"] -- its connections first: servers are about to stop
  if fmdb and fmdb.close then pcall(fmdb.close) end
  local fmkv = package.loaded["fm.kv"]
  if fmkv and fmkv.close then pcall(fmkv.close) end
  local fmstorage = package.loaded["fm.storage"]
  if fmstorage and fmstorage.close then pcall(fmstorage.close) end
  for i = #procs, 1, -1 do
    local p = procs[i]
    if not p.how then p:stop(p.stop_signal or "TERM", 5) end
    procs[i] = nil
  end
  shared_pg = {}
  local keep = os.getenv("FM_SPEC_KEEP_TMP")
  for i = #tmpdirs, 1, -1 do
    local dir = tmpdirs[i]
    if keep and keep ~= "" then
      io.stderr:write("FM_SPEC_KEEP_TMP: kept ", dir, "\n")
    else
      helpers.shell("rm -rf -- " .. shell_quote(dir))
    end
    tmpdirs[i] = nil
  end
end

-- Safety net: if a spec file forgets cleanup or busted exits early, close the state cleans up.
helpers._guard = setmetatable({}, { __gc = function() pcall(helpers.cleanup) end })

return helpers
