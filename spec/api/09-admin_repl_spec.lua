-- The admin REPL: `faultmaven repl` and `faultmaven reload` against a real engine's admin socket,
-- the socket's protocol under hostile input, the uid check, and the audit log.
local helpers = require "spec.helpers"
local json = require "fm.json"
local unix = require "socket.unix"

local bin = helpers.bin()
local q = helpers.shell_quote

local function is_root()
  local _, _, out = helpers.shell("id -u")
  return (out or ""):match("^0%s") ~= nil
end

local function have(cmd)
  return (helpers.shell("command -v " .. cmd .. " >/dev/null 2>&1"))
end

-- Runs the real client: `faultmaven <cmd> <args>` with stdin from a string (or /dev/null).
-- Returns the exit code, stdout, stderr.
local function client(cmd, args, opts)
  opts = opts or {}
  local dir = helpers.tmpdir("fm-repl-")
  local line = (opts.prefix or "") .. q(bin) .. " " .. cmd .. " " .. args
  if opts.stdin then
    helpers.write_file(dir .. "/in", opts.stdin)
    line = line .. " < " .. q(dir .. "/in")
  else
    line = line .. " < /dev/null"
  end
  line = line .. " > " .. q(dir .. "/out") .. " 2> " .. q(dir .. "/err")
  local env = ""
  for k, v in pairs(opts.env or {}) do env = env .. k .. "=" .. q(v) .. " " end
  local _, code = helpers.shell(env .. line)
  return code, helpers.read_file(dir .. "/out") or "", helpers.read_file(dir .. "/err") or ""
end

-- A raw protocol session over socket.unix: frames are a 4-byte big-endian length and JSON.
local Raw = {}
Raw.__index = Raw

local function raw_connect(path)
  local s = assert(unix.stream())
  s:settimeout(10)
  assert(s:connect(path))
  return setmetatable({ s = s }, Raw)
end

function Raw:send_bytes(b) return self.s:send(b) end

function Raw:send(obj)
  local payload = type(obj) == "string" and obj or json.encode(obj)
  return self.s:send(string.pack(">I4", #payload) .. payload)
end

function Raw:recv()
  local h, err = self.s:receive(4)
  if not h then return nil, err end
  local n = string.unpack(">I4", h)
  local body, err2 = self.s:receive(n)
  if not body then return nil, err2 end
  return json.decode(body)
end

-- After the server closed: nil once the buffered frames are read.
function Raw:closed()
  self.s:settimeout(10)
  local _, err = self.s:receive(1)
  return err == "closed"
end

function Raw:close() self.s:close() end

local function eval(raw, code)
  assert(raw:send({ op = "eval", code = code }))
  return assert(raw:recv())
end

-- io.open cannot open a socket: ask test(1).
local function exists(path)
  return (helpers.shell("test -e " .. q(path)))
end

local function mode_of(path)
  local _, _, out = helpers.shell("stat -c %a " .. q(path))
  return (out or ""):match("%d+")
end

local function audit_entries(path)
  local out = {}
  for line in (helpers.read_file(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = json.decode(line)
  end
  return out
end

describe("admin REPL", function()
  local engine, sock

  local function repl(args, opts)
    return client("repl", "--socket " .. q(sock) .. " " .. args, opts)
  end

  lazy_setup(function()
    engine = helpers.engine.start({ env = { FM_TEST_ADMIN_SECRET = "hunter2-very-secret" } })
    sock = engine.data_dir .. "/admin.sock"
  end)
  lazy_teardown(function() helpers.cleanup() end)

  it("listens on <data dir>/admin.sock, mode 0600, with its audit log 0600", function()
    assert.is_true(helpers.file_exists(engine.data_dir .. "/admin-audit.log"))
    assert.equal("600", mode_of(sock))
    assert.equal("600", mode_of(engine.data_dir .. "/admin-audit.log"))
    engine:wait_log(function(e) return e.msg == "admin socket listening" and e.socket == sock end)
  end)

  it("-e prints an expression's value without `return` and exits 0", function()
    local code, out, err = repl("-e " .. q("1+1"))
    assert.equal(0, code, err)
    assert.equal("2\n", out)
    code, out = repl("-e " .. q("return 'a', 2, nil"))
    assert.equal(0, code)
    assert.equal("a\t2\tnil\n", out)
    code, out = repl("-e " .. q("x_unused = 1")) -- a statement prints nothing
    assert.equal(0, code)
    assert.equal("", out)
  end)

  it("pretty-prints tables: nested, keys sorted, strings quoted, cycles marked", function()
    local code, out = repl("-e " .. q([[{ b = { 1, 2 }, a = "x\ny", [10] = true, "first" }]]))
    assert.equal(0, code)
    assert.equal([[{ "first", [10] = true, a = "x\ny", b = { 1, 2 } }]] .. "\n", out)
    code, out = repl("-e " .. q("local t = { name = 'loop' } t.self = t return t"))
    assert.equal(0, code)
    assert.matches('^{ name = "loop", self = <cycle: table: 0x%x+> }\n$', out)
    code, out = repl("-e " .. q("local t = {} for i = 1, 500 do t[i] = i end return t"))
    assert.equal(0, code)
    assert.matches("... (400 more)", out, 1, true)
  end)

  it("runs a piped multi-line script as one chunk", function()
    local script = table.concat({
      "local function mul(a,",
      "                   b)",
      "  return a * b",
      "end",
      "print('product', mul(6, 7))",
      "return mul(2, 3)",
    }, "\n") .. "\n"
    local code, out, err = repl("", { stdin = script })
    assert.equal(0, code, err)
    assert.equal("product\t42\n6\n", out)
    local c2, _, err2 = repl("", { stdin = "error('script failed')\n" })
    assert.equal(1, c2)
    assert.matches("repl:1: script failed", err2, 1, true)
  end)

  it("says when a chunk is incomplete (the engine too, for interactive clients)", function()
    local code, _, err = repl("-e " .. q("function f("))
    assert.equal(1, code)
    assert.matches("<eof>", err, 1, true)
    local raw = raw_connect(sock)
    assert.is_true(raw:recv().ok)
    local r = eval(raw, "for i = 1, 2 do\n  x = i")
    assert.is_false(r.ok)
    assert.is_true(r.incomplete)
    r = eval(raw, "for i = 1, 2 do\n  x_loop = i\nend\nreturn x_loop")
    assert.is_true(r.ok)
    assert.equal("2", r.result)
    r = eval(raw, "x = = 1") -- a plain syntax error is not incomplete
    assert.is_false(r.ok)
    assert.is_nil(r.incomplete)
    raw:close()
  end)

  it("shows an error and the session goes on; globals persist across sessions", function()
    local raw = raw_connect(sock)
    local hello = raw:recv()
    assert.is_true(hello.ok)
    assert.equal(engine.pid, hello.pid)
    local r = eval(raw, "error('first one fails')")
    assert.is_false(r.ok)
    assert.equal("error", r.outcome)
    assert.matches("repl:1: first one fails", r.error, 1, true)
    assert.matches("stack traceback", r.error, 1, true)
    r = eval(raw, "answer = 6 * 7")
    assert.is_true(r.ok)
    r = eval(raw, "error({ code = 7 })") -- a non-string error object is shown, not lost
    assert.matches("error object: { code = 7 }", r.error, 1, true)
    raw:close()
    local code, out = repl("-e answer")
    assert.equal(0, code)
    assert.equal("42\n", out)
  end)

  it("-e exits 1 with the error on stderr", function()
    local code, out, err = repl("-e " .. q("error('boom')"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("repl:1: boom", err, 1, true)
    local c2, _, err2 = repl("-e " .. q("nil + 1"))
    assert.equal(1, c2)
    assert.matches("attempt to perform arithmetic on a nil value", err2, 1, true)
  end)

  it("says clearly when there is no admin socket", function()
    local missing = helpers.tmpdir("fm-nosock-") .. "/admin.sock"
    local code, _, err = client("repl", "--socket " .. q(missing) .. " -e 1")
    assert.equal(1, code)
    assert.matches("cannot connect to the admin socket " .. missing, err, 1, true)
    assert.matches("is `faultmaven serve` running", err, 1, true)
    code, _, err = client("reload", "--socket " .. q(missing))
    assert.equal(1, code)
    assert.matches("kill -HUP", err, 1, true)
    code, _, err = client("repl", "-e 1", { env = { FM_ADMIN_SOCKET = "off" } })
    assert.equal(1, code)
    assert.matches("the admin socket is off", err, 1, true)
    code, _, err = client("reload", "", { env = { FM_ADMIN_SOCKET = "off" } })
    assert.equal(1, code)
    assert.matches("kill -HUP", err, 1, true)
    assert.equal(2, (client("repl", "--no-such-flag")))
    assert.equal(2, (client("reload", "-e 1")))
  end)

  it("finds the socket from the settings like serve (FM_DATA_DIR, --data-dir)", function()
    local code, out, err = client("repl", "-e " .. q("1+2"),
      { env = { FM_DATA_DIR = engine.data_dir } })
    assert.equal(0, code, err)
    assert.equal("3\n", out)
    code, out = client("repl", "--data-dir " .. q(engine.data_dir) .. " -e " .. q("2+2"))
    assert.equal(0, code)
    assert.equal("4\n", out)
    code, out = client("repl", "-e " .. q("3+3"), { env = { FM_ADMIN_SOCKET = sock } })
    assert.equal(0, code)
    assert.equal("6\n", out)
  end)

  it("captures print and io.write into the answer, not the engine's output", function()
    local code, out = repl("-e " .. q("print('captured-marker', 1, nil) io.write('w', 2) return 5"))
    assert.equal(0, code)
    assert.equal("captured-marker\t1\tnil\nw25\n", out)
    assert.not_matches("captured-marker", engine:log(), 1, true)
  end)

  it("os.exit raises instead of ending the engine", function()
    local code, _, err = repl("-e " .. q("os.exit(3)"))
    assert.equal(1, code)
    assert.matches("os.exit would stop the engine", err, 1, true)
    assert.equal(200, assert(engine:get("/health/live")).status)
  end)

  it("runs in an admin VM with the fm.* modules and engine.reload", function()
    local code, out = repl("-e " .. q(
      "local e = require('fm.engine') "
      .. "return e.info().mode, type(e.reload), type(require('fm.json'))"))
    assert.equal(0, code)
    assert.equal("admin\tfunction\ttable\n", out)
  end)

  it("admin.stats() reports uptime, generation, requests, workers and memory", function()
    assert.equal(200, assert(engine:get("/health")).status)
    local code, out, err = repl("-e " .. q([[
      local s = admin.stats()
      return s.generation, s.workers > 0, s.requests >= 1, s.uptime_s > 0, s.queued,
        s.workers_busy, s.memory.rss_bytes > 1e6, s.memory.lua_workers_bytes > 0,
        s.memory.lua_admin_bytes > 0]]))
    assert.equal(0, code, err)
    assert.equal("1\ttrue\ttrue\ttrue\t0\t0\ttrue\ttrue\ttrue\n", out)
    code, out = repl("-e " .. q("admin.stats()"))
    assert.equal(0, code)
    assert.matches("memory = {", out, 1, true)
    assert.matches("rss_bytes = %d+", out)
  end)

  -- (masking itself: config.describe in spec/unit/config_spec.lua; admin.config() is the serving
  -- generation's config.describe)
  it("admin.config() lists every setting with secrets masked", function()
    local code, out, err = repl("-e " .. q([[
      local c = admin.config()
      return c.FM_PORT, c.FM_ADMIN_SOCKET, c.DASHBOARD_URL]]))
    assert.equal(0, code, err)
    assert.equal(("%d\t%s\thttp://localhost:3333\n"):format(engine.port, sock), out)
    code, out = repl("-e " .. q("admin.config()"))
    assert.equal(0, code)
    assert.matches("FM_WORKERS = \"%d+\"", out)
    assert.not_matches("hunter2", out, 1, true)
    code, out = repl("-e " .. q([[admin.mask({ secret = true }, "s3cret"), admin.mask({}, "plain"),
      admin.mask({ secret = true }, "")]]))
    assert.equal(0, code)
    assert.equal("********\tplain\t\n", out)
  end)

  it("admin.log_level() reads and sets the engine's log level", function()
    local code, out = repl("-e " .. q("admin.log_level()"))
    assert.equal(0, code)
    assert.equal("debug\n", out)
    code, out = repl("-e " .. q("admin.log_level('warn')"))
    assert.equal(0, code)
    assert.equal("debug\n", out) -- the previous level
    assert.equal("warn\n", select(2, repl("-e " .. q("admin.log_level()"))))
    local before = #engine:log()
    assert.equal(200, assert(engine:get("/health/live")).status)
    assert.equal(200, assert(engine:get("/")).status)
    helpers.sleep(0.2)
    assert.not_matches('"msg":"access"', engine:log():sub(before + 1), 1, true)
    local c2, _, err = repl("-e " .. q("admin.log_level('loud')"))
    assert.equal(1, c2)
    assert.matches("expected debug, info, warn, error or off", err, 1, true)
    assert.equal(0, (repl("-e " .. q("admin.log_level('debug')"))))
    assert.equal(200, assert(engine:get("/")).status)
    engine:wait_log(function(e) return e.msg == "access" and e.path == "/" end)
  end)

  it("admin.routes(), admin.playbooks(), admin.health() and admin.help()", function()
    local code, out, err = repl("-e " .. q([[
      local found
      for _, r in ipairs(admin.routes()) do
        if r.pattern == "/health" then found = r.method .. " " .. r.max_body end
      end
      local p = admin.playbooks()
      local h = admin.health()
      return found, type(p.playbooks), type(p.errors), h.status, h.components.engine.status]]))
    assert.equal(0, code, err)
    assert.matches("^GET %d+\ttable\ttable\thealthy\thealthy\n$", out)
    code, out = repl("-e " .. q("admin.help()"))
    assert.equal(0, code)
    for _, name in ipairs({ "stats", "reload", "routes", "playbooks", "config", "health",
                            "log_level", "help" }) do
      assert.matches("admin." .. name .. "(", out, 1, true)
    end
  end)

  it("faultmaven reload runs admin.reload() and reports the generation", function()
    local code, out, err = client("reload", "--socket " .. q(sock))
    assert.equal(0, code, err)
    assert.matches("^unchanged: generation 1 still serving", out)
    code, out = repl("-e " .. q("local o = admin.reload() return o.ok, o.generation, o.reason"))
    assert.equal(0, code)
    assert.equal("true\t1\tadmin\n", out)
  end)

  it("Ctrl-C (SIGINT to the client) cancels a running evaluation; the next one works", function()
    local dir = helpers.tmpdir("fm-cancel-")
    local started = dir .. "/started"
    local function run_until_started(code)
      os.remove(started)
      local p = helpers.spawn({
        argv = { bin, "repl", "--socket", sock, "-e",
                 ("io.open(%q, 'w'):close() %s"):format(started, code) },
        stdout = dir .. "/out", stderr = dir .. "/err",
      })
      helpers.wait_until(function() return helpers.file_exists(started) end, 10)
      return p
    end
    for _, code in ipairs({ "while true do end",
                            "while true do pcall(function() while true do end end) end",
                            "local co = coroutine.wrap(function() while true do end end) co()" }) do
      local p = run_until_started(code)
      helpers.sleep(0.2)
      assert(p:signal("INT"))
      local how, status = p:wait(10)
      assert.equal("exit", how, "the client did not end after SIGINT: " .. code)
      assert.equal(1, status)
      assert.matches("cancelled", helpers.read_file(dir .. "/err"), 1, true)
      local c, out = repl("-e " .. q("'still here'"))
      assert.equal(0, c)
      assert.equal("still here\n", out)
    end
  end)

  it("a client that disconnects mid-evaluation cancels it", function()
    local raw = raw_connect(sock)
    assert.is_true(raw:recv().ok)
    assert(raw:send({ op = "eval", code = "while true do end -- disconnect-marker" }))
    helpers.sleep(0.3)
    raw:close()
    local t0 = helpers.now()
    local code, out = repl("-e " .. q("'free again'"))
    assert.equal(0, code)
    assert.equal("free again\n", out)
    assert.is_true(helpers.now() - t0 < 5)
    local raw2 = raw_connect(sock)
    assert.is_true(raw2:recv().ok)
    assert(raw2:send({ op = "eval", code = "while true do end" }))
    helpers.sleep(0.2)
    assert(raw2:send({ op = "cancel" }))
    local r = assert(raw2:recv())
    assert.equal("cancelled", r.outcome)
    assert.equal("cancelled", r.error)
    assert.equal(2, tonumber(eval(raw2, "1 + 1").result))
    raw2:close()
  end)

  describe("hostile input", function()
    local function engine_ok()
      assert.equal(200, assert(engine:get("/health/live")).status)
      local code, out = repl("-e " .. q("'alive'"))
      assert.equal(0, code)
      assert.equal("alive\n", out)
    end

    it("garbage bytes get an error frame and the connection is closed", function()
      local raw = raw_connect(sock)
      assert.is_true(raw:recv().ok)
      raw:send_bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      local r = assert(raw:recv())
      assert.equal("error", r.type)
      assert.matches("refused", r.error, 1, true)
      assert.is_true(raw:closed())
      raw:close()
      engine_ok()
    end)

    it("an oversized frame is refused before its body is read", function()
      local raw = raw_connect(sock)
      assert.is_true(raw:recv().ok)
      raw:send_bytes(string.pack(">I4", 2 * 1024 * 1024) .. ("x"):rep(1000))
      local r = assert(raw:recv())
      assert.equal("error", r.type)
      assert.matches("frame of 2097152 bytes refused", r.error, 1, true)
      assert.is_true(raw:closed())
      raw:close()
      engine_ok()
    end)

    it("a malformed frame gets an error and the session goes on", function()
      local raw = raw_connect(sock)
      assert.is_true(raw:recv().ok)
      for _, bad in ipairs({ "{nope", "[1,2]", '{"op":"frobnicate"}', '{"op":"eval"}',
                             '{"op":"eval","code":42}', '"just a string"' }) do
        assert(raw:send(bad))
        local r = assert(raw:recv())
        assert.equal("error", r.type, bad)
      end
      assert(raw:send({ op = "cancel" })) -- nothing runs: no answer
      assert.equal("3", eval(raw, "1 + 2").result)
      raw:close()
      engine_ok()
    end)

    it("half a frame then a disconnect leaves the engine serving", function()
      local raw = raw_connect(sock)
      assert.is_true(raw:recv().ok)
      raw:send_bytes(string.pack(">I4", 100) .. '{"op":"ev')
      raw:close()
      engine_ok()
      local raw2 = raw_connect(sock) -- and a header cut in half
      raw2:send_bytes("\0\0")
      raw2:close()
      engine_ok()
    end)

    it("at most 8 sessions at once; the 9th is told so", function()
      -- sessions of earlier specs end asynchronously once their client left: retry until all
      -- 8 slots are ours
      local open = helpers.wait_until(function()
        local got = {}
        for i = 1, 8 do
          got[i] = raw_connect(sock)
          if not got[i]:recv().ok then
            for _, r in ipairs(got) do r:close() end
            return nil
          end
        end
        return got
      end, 10)
      local extra = raw_connect(sock)
      local hello = assert(extra:recv())
      assert.is_false(hello.ok)
      assert.matches("too many admin sessions (8)", hello.error, 1, true)
      extra:close()
      assert.equal("ok", eval(open[8], "'ok'").result) -- the open ones still work
      for _, r in ipairs(open) do r:close() end
      helpers.wait_until(function()
        local code = repl("-e 1")
        return code == 0
      end, 10)
      engine_ok()
    end)
  end)

  it("refuses a client of another uid: the socket is 0600 (EACCES)", function()
    if not is_root() then
      pending("needs root to run the client as nobody (setpriv)")
      return
    end
    local exe = bin
    local as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    if not helpers.shell(as_nobody .. "test -x " .. q(bin)) then
      local dir = helpers.tmpdir("fm-bin-")
      helpers.shell("chmod 0755 " .. q(dir) .. " && cp " .. q(bin) .. " "
        .. q(dir .. "/faultmaven"))
      exe = dir .. "/faultmaven"
    end
    local dir = helpers.tmpdir("fm-nobody-")
    local _, code = helpers.shell(as_nobody .. q(exe) .. " repl --socket " .. q(sock)
      .. " -e 1 > " .. q(dir .. "/out") .. " 2> " .. q(dir .. "/err") .. " < /dev/null")
    local err = helpers.read_file(dir .. "/err") or ""
    assert.equal(1, code, err)
    assert.matches("cannot connect to the admin socket", err, 1, true)
    assert.matches("Permission denied", err, 1, true)
  end)

  it("writes an audit line per command (ok, error, cancelled), mode 0600", function()
    local path = engine.data_dir .. "/admin-audit.log"
    local _, _, uid = helpers.shell("id -u")
    uid = tonumber(uid:match("%d+"))
    local entries = audit_entries(path)
    local function find(pred, started) -- the line written at the end, or the one at the start
      for _, e in ipairs(entries) do
        if pred(e) and (e.outcome == "started") == (started == true) then return e end
      end
    end
    local ok = assert(find(function(e) return e.code == "1+1" end))
    local ok_start = assert(find(function(e) return e.code == "1+1" end, true))
    assert.equal("eval", ok_start.event)
    assert.is_nil(ok_start.duration_ms)
    assert.equal("eval", ok.event)
    assert.equal("ok", ok.outcome)
    assert.equal(json.null, ok.error)
    assert.equal(uid, ok.uid)
    assert.is_true(math.type(ok.pid) == "integer" and ok.pid > 0)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", ok.ts)
    assert.is_number(ok.duration_ms)
    local bad = assert(find(function(e) return e.code == "error('boom')" end))
    assert.equal("error", bad.outcome)
    assert.equal("repl:1: boom", bad.error)
    local cancelled = assert(find(function(e)
      return e.code == "while true do end -- disconnect-marker"
    end))
    assert(find(function(e) return e.code == "while true do end -- disconnect-marker" end, true))
    assert.equal("cancelled", cancelled.outcome)
    assert.equal("cancelled", cancelled.error)
    local rel = assert(find(function(e) return e.event == "reload" end))
    assert.equal("admin.reload()", rel.code)
    assert.equal("ok", rel.outcome)
    local refused = find(function(e) return e.event == "refused" end)
    assert.matches("too many admin sessions", refused.reason, 1, true)
    assert.equal("600", mode_of(path))
  end)

  it("interactive: multi-line input, errors, Ctrl-C to cancel and to discard, Ctrl-D", function()
    if not have("tmux") then
      pending("tmux is not installed (scripts/install-deps.sh test installs it)")
      return
    end
    local home = helpers.tmpdir("fm-tty-")
    local tname = "fmspec" .. require("fm.proc").getpid()
    local function tmux(args)
      return helpers.shell("tmux -L " .. tname .. " " .. args .. " 2>&1")
    end
    local function screen()
      local _, _, out = tmux("capture-pane -p -J -S - -t repl")
      return out or ""
    end
    local function wait_screen(pattern, plain)
      return helpers.wait_until(function() return screen():find(pattern, 1, plain) end, 10)
    end
    local function type_line(text)
      assert(tmux("send-keys -t repl -l " .. q(text)))
      assert(tmux("send-keys -t repl Enter"))
    end
    local function prompts() -- number of lines starting with the primary prompt
      local n = 0
      for line in screen():gmatch("[^\n]*") do if line:sub(1, 2) == "> " or line == ">" then
        n = n + 1 end end
      return n
    end
    local function wait_prompt(n) helpers.wait_until(function() return prompts() >= n end, 10) end

    assert(tmux("new-session -d -s repl -x 160 -y 60 " .. q("env HOME=" .. q(home) .. " "
      .. q(bin) .. " repl --socket " .. q(sock))))
    finally(function() tmux("kill-server") end)
    wait_screen("admin REPL", true)
    wait_prompt(1)
    type_line("function mul(a,")
    wait_screen(">> ", true)
    type_line("              b)")
    type_line("  return a * b")
    type_line("end")
    wait_prompt(2)
    type_line("mul(6, 7)")
    wait_screen("\n42\n", true)
    type_line("error('interactive oops')")
    wait_screen("repl:1: interactive oops", true)
    wait_prompt(4)
    type_line("'after the error'")
    wait_screen("\nafter the error\n", true)
    wait_prompt(5)
    type_line("while true do end")
    helpers.sleep(0.5)
    assert(tmux("send-keys -t repl C-c"))
    wait_screen("\ncancelled\n", true)
    wait_prompt(6)
    assert(tmux("send-keys -t repl -l " .. q("this is not lua at all")))
    helpers.sleep(0.2)
    assert(tmux("send-keys -t repl C-c")) -- discards the line
    wait_prompt(7)
    type_line("3 * 3")
    wait_screen("\n9\n", true)
    assert.not_matches("unexpected symbol", screen(), 1, true)
    wait_prompt(8)
    assert(tmux("send-keys -t repl C-d"))
    helpers.wait_until(function() return not tmux("has-session -t repl") end, 10)
    local hist = home .. "/.faultmaven_history"
    assert.matches("mul(6,", helpers.read_file(hist) or "", 1, true)
    assert.equal("600", mode_of(hist))
  end)
end)

describe("admin socket lifecycle", function()
  lazy_teardown(function() helpers.cleanup() end)

  it("is unlinked at shutdown, and FM_ADMIN_SOCKET=off disables it", function()
    local e = helpers.engine.start()
    local sock = e.data_dir .. "/admin.sock"
    assert.is_true(exists(sock))
    assert.equal("exit", (e:stop()))
    assert.is_false(exists(sock))
    local off = helpers.engine.start({ env = { FM_ADMIN_SOCKET = "off" } })
    off:wait_log(function(x) return x.msg and x.msg:find("admin socket off", 1, true) end)
    assert.is_false(exists(off.data_dir .. "/admin.sock"))
  end)

  it("shutdown cancels a running command and still exits cleanly", function()
    local e = helpers.engine.start()
    local dir = helpers.tmpdir("fm-stop-")
    local started = dir .. "/started"
    local p = helpers.spawn({
      argv = { bin, "repl", "--socket", e.data_dir .. "/admin.sock", "-e",
               ("io.open(%q, 'w'):close() while true do end"):format(started) },
      stdout = dir .. "/out", stderr = dir .. "/err",
    })
    helpers.wait_until(function() return helpers.file_exists(started) end, 10)
    local t0 = helpers.now()
    local how, code = e:stop("TERM", 20)
    assert.equal("exit", how)
    assert.equal(0, code)
    assert.is_true(helpers.now() - t0 < 10)
    how, code = p:wait(10)
    assert.equal("exit", how)
    assert.equal(1, code)
    assert.is_false(exists(e.data_dir .. "/admin.sock"))
  end)

  it("removes a stale socket at start; leaves one another engine answers on", function()
    local dir = helpers.tmpdir("fm-sock-")
    local path = dir .. "/admin.sock"
    local stale = assert(unix.stream())
    assert(stale:bind(path))
    assert(stale:listen())
    stale:close() -- the file stays behind, nobody answers on it
    assert.is_true(exists(path))
    local a = helpers.engine.start({ env = { FM_ADMIN_SOCKET = path } })
    a:wait_log(function(x) return x.msg and x.msg:find("removed a stale admin socket", 1, true) end)
    local code, out = client("repl", "--socket " .. q(path) .. " -e "
      .. q("marker = 'A' return marker"))
    assert.equal(0, code)
    assert.equal("A\n", out)

    local b = helpers.engine.start({ env = { FM_ADMIN_SOCKET = path } })
    b:wait_log(function(x)
      return x.level == "error"
        and x.msg:find("another engine answers on the admin socket", 1, true)
    end)
    assert.equal(200, assert(b:get("/readiness")).status) -- b serves without it
    code, out = client("repl", "--socket " .. q(path) .. " -e marker")
    assert.equal(0, code)
    assert.equal("A\n", out) -- still a's
    assert.equal("exit", (b:stop()))
    assert.is_true(exists(path)) -- b did not unlink a's socket
    code = client("repl", "--socket " .. q(path) .. " -e 1")
    assert.equal(0, code)
  end)

  it("a refused peer (another uid) is told why and disconnected (SO_PEERCRED)", function()
    if not is_root() then
      pending("needs root to start an engine as nobody (setpriv)")
      return
    end
    -- everything the nobody engine reads must be reachable by nobody
    local home = helpers.copy_home("fm-home-")
    local top = helpers.tmpdir("fm-nobody-")
    local exe = top .. "/faultmaven"
    assert(helpers.shell("cp " .. q(bin) .. " " .. q(exe)))
    local data = top .. "/data"
    helpers.mkdir(data)
    assert(helpers.shell("chmod 0777 " .. q(top) .. " && chmod -R a+rX " .. q(home)
      .. " && chown 65534:65534 " .. q(data)))
    if not helpers.shell("setpriv --reuid=65534 --regid=65534 --clear-groups test -r "
        .. q(home .. "/config.lua") .. " -a -x " .. q(exe)) then
      pending("nobody cannot reach the temp dir (TMPDIR's parents are not traversable)")
      return
    end
    local port = helpers.free_port()
    local log = top .. "/engine.log"
    local p = helpers.spawn({
      argv = { "/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", exe,
               "serve" },
      env = { FM_PORT = port, FM_HOST = "127.0.0.1", FM_DATA_DIR = data, FM_HOME = home,
              FM_LUA_PATH = false, FM_EXTRA_ROUTES = false, LOG_LEVEL = "info" },
      stdout = log, stderr = log, cwd = top,
    })
    local sock = data .. "/admin.sock"
    helpers.wait_until(function() return exists(sock) end, 20)
    local code, _, err = client("repl", "--socket " .. q(sock) .. " -e 1")
    assert.equal(1, code, err)
    assert.matches("the engine refused the connection: uid 0 is not the engine's user (uid 65534)",
      err, 1, true)
    local entries = audit_entries(data .. "/admin-audit.log")
    assert.equal("refused", entries[#entries].event)
    assert.equal(0, entries[#entries].uid)
    assert.equal("exit", (p:stop()))
    assert.is_false(exists(sock))
  end)

  it("faultmaven reload reports a failed build (file:line), restart-required settings", function()
    local home = helpers.copy_home("fm-home-")
    local e = helpers.engine.start({ env = { FM_HOME = home, FM_RELOAD_WATCH = "false" } })
    local sock = e.data_dir .. "/admin.sock"
    local root = home .. "/lua/fm/api/root.lua"
    local good = assert(helpers.read_file(root))
    helpers.write_file(root, "return function(r)\n  r:get('/', function() return 200 end\nend\n")
    local code, out, err = client("reload", "--socket " .. q(sock))
    assert.equal(1, code, out)
    assert.matches("^reload failed: lua/fm/api/root.lua:%d+: ", err)
    assert.matches("generation 1 still serving", err, 1, true)
    code, out = client("repl", "--socket " .. q(sock) .. " -e "
      .. q("local p = admin.stats() return p.generation, p.reload_failed"))
    assert.equal(0, code)
    assert.equal("1\ttrue\n", out)

    helpers.write_file(root, good)
    local cfg = assert(helpers.read_file(home .. "/config.lua"))
    -- a setting C holds from start (FM_HTTP_IDLE_TIMEOUT_S, not set in the environment)
    local changed = cfg:gsub("max = 86400, default = 60,", "max = 86400, default = 61,", 1)
    assert.are_not.equal(cfg, changed)
    -- and one that applies on reload
    changed = changed:gsub('default = "http://localhost:3333"', 'default = "http://dash.example:1"')
    helpers.write_file(home .. "/config.lua", changed)
    code, out, err = client("reload", "--socket " .. q(sock))
    assert.equal(0, code, err)
    assert.matches("^reloaded: generation 2 serving\n", out)
    assert.matches("restart required to apply: FM_HTTP_IDLE_TIMEOUT_S", out, 1, true)
    code, out = client("repl", "--socket " .. q(sock) .. " -e "
      .. q("admin.config().FM_HTTP_IDLE_TIMEOUT_S")) -- the value the engine runs with
    assert.equal(0, code)
    assert.equal("60\n", out)
    code, out = client("repl", "--socket " .. q(sock) .. " -e "
      .. q("admin.config().DASHBOARD_URL")) -- the new generation's value
    assert.equal(0, code)
    assert.equal("http://dash.example:1\n", out)
  end)

  it("past the memory cap: the command fails, the VM is replaced if need be", function()
    local e = helpers.engine.start({ env = { FM_LUA_MEMORY_MB = "16", FM_WORKERS = "2" } })
    local sock = e.data_dir .. "/admin.sock"
    local function repl(code) return client("repl", "--socket " .. q(sock) .. " -e " .. q(code)) end
    assert.equal(0, (repl("kept = 'yes'")))
    local code, _, err = repl("local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(64) .. i end")
    assert.equal(1, code)
    assert.matches("not enough memory", err, 1, true)
    local c2, out = repl("kept")
    assert.equal(0, c2)
    assert.equal("yes\n", out) -- a local table: collected, the VM kept
    code, _, err = repl("big = {} for i = 1, 1e8 do big[i] = ('x'):rep(64) .. i end")
    assert.equal(1, code)
    assert.matches("not enough memory", err, 1, true)
    assert.matches("globals are gone", err, 1, true)
    c2, out = repl("return kept, big")
    assert.equal(0, c2)
    assert.equal("nil\tnil\n", out)
    assert.equal(200, assert(e:get("/health/live")).status)
  end)
end)
