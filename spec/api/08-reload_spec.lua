-- Hot reload of Lua generations: a real engine on a temp copy of the Lua tree, files changed
-- under it while clients loop requests.
local helpers = require "spec.helpers"
local http = require "spec.helpers.http"

local PROBE = [[
-- a route module for the reload specs; MARKER changes between versions
local engine = require "fm.engine"
local time = require "fm.time"
local MARKER = %q
return function(r)
  r:get("/probe", function() return 200, MARKER end)
  r:get("/probe/slow", function()
    local g1 = engine.info().vm_generation
    time.sleep(0.6)
    return 200, { marker = MARKER, gen_start = g1, gen_end = engine.info().vm_generation }
  end)
end
]]

local function probe(marker) return PROBE:format(marker) end

local PLAYBOOK = [[
return { id = %q, title = "Disk full", version = "1.0.0",
         description = "A filesystem ran out of space.", tags = { "disk" },
         category = "environment", match = function() return 0 end,
         steps = { { name = "look", run = function() end } } }
]]

-- Starts an engine on a fresh copy of the tree with lua/probe.lua as an extra route module.
local function start(env)
  local home = helpers.copy_home()
  -- the specs below add their own playbooks (the tree's would collide with their ids)
  assert(helpers.shell("rm -rf " .. helpers.shell_quote(home .. "/playbooks")))
  helpers.write_file(home .. "/lua/probe.lua", probe("v1"))
  local e = {
    FM_HOME = home,
    FM_EXTRA_ROUTES = "fm_test.routes,probe",
    FM_WORKERS = "4",
    FM_RELOAD_DEBOUNCE_MS = "50",
  }
  for k, v in pairs(env or {}) do e[k] = v end
  local engine = helpers.engine.start { env = e }
  engine.home = home
  return engine
end

local function body(engine, path)
  local r = assert(engine:get(path))
  return r.body, r
end

-- Waits until GET path answers want; returns the seconds it took.
local function wait_body(engine, path, want, timeout)
  local t0 = helpers.now()
  helpers.wait_until(function() return body(engine, path) == want end, timeout or 5, 0.01)
  return helpers.now() - t0
end

local function health(engine)
  local r = assert(engine:get("/health"))
  return r.json()
end

local function metric(engine, name_and_labels)
  local text = assert(engine:get("/metrics")).body
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) (%S+)$")
    if k == name_and_labels then return tonumber(v) end
  end
end

describe("hot reload", function()
  lazy_teardown(helpers.cleanup)

  it("serves a changed route within 1 s with zero failed requests under load", function()
    local engine = start()
    assert.equal("v1", body(engine, "/probe"))
    local dir = helpers.tmpdir("fm-loop-")
    local loops = {}
    for i, mode in ipairs { "keepalive", "fresh", "keepalive" } do
      local out = dir .. "/out" .. i .. ".json"
      loops[i] = { out = out, proc = helpers.spawn {
        argv = { helpers.bin(), "exec", helpers.root .. "/spec/fixtures/request_loop.lua",
                 tostring(engine.port), "/probe", out, dir .. "/stop", mode },
        env = { FM_SOURCE_DIR = helpers.root }, cwd = helpers.root,
        stdout = dir .. "/loop.log", stderr = dir .. "/loop.log" } }
    end
    helpers.sleep(0.5)
    local took = {}
    for n = 2, 4 do -- three reloads while the clients loop
      helpers.replace_file(engine.home .. "/lua/probe.lua", probe("v" .. n))
      took[#took + 1] = wait_body(engine, "/probe", "v" .. n, 5)
      helpers.sleep(0.3)
    end
    helpers.write_file(dir .. "/stop", "")
    for _, l in ipairs(loops) do
      assert.equal("exit", (l.proc:wait(10)))
      local res = http.json_decode(assert(helpers.read_file(l.out),
        helpers.read_file(dir .. "/loop.log")))
      assert.equal(0, res.nfailures, table.concat(res.failures, "\n"))
      assert.is_true(res.requests > 50, "only " .. res.requests .. " requests")
      assert.same({ "v1", "v2", "v3", "v4" }, res.sequence)
      assert.equal(0, res.regressions, "a client saw an older generation after a newer one")
    end
    for _, t in ipairs(took) do assert.is_true(t < 1.0, "new behaviour after " .. t .. " s") end
    assert.equal(4, metric(engine, "fm_lua_generation"))
    assert.equal(3, metric(engine, 'fm_reload_total{result="ok"}'))
    local entry = engine:wait_log(function(e) return e.msg == "reload: new generation published"
      and e.generation == 4 end)
    assert.equal("inotify", entry.reason)
  end)

  it("keeps serving the old generation on a syntax error, degraded with file and line", function()
    local engine = start()
    assert.equal("healthy", health(engine).status)
    helpers.replace_file(engine.home .. "/lua/probe.lua", "local x = = 1\n")
    local h = helpers.wait_until(function()
      local hh = health(engine)
      return hh.status == "degraded" and hh
    end, 5, 0.02)
    local lua = h.components.lua
    assert.equal("degraded", lua.status)
    assert.equal("lua/probe.lua", lua.reload_error.file)
    assert.equal(1, lua.reload_error.line)
    assert.matches("unexpected symbol near '='", lua.reload_error.message)
    assert.equal(1, lua.generation)
    -- traffic is untouched
    for _ = 1, 20 do assert.equal("v1", body(engine, "/probe")) end
    assert.equal(1, metric(engine, 'fm_reload_total{result="failed"}'))
    assert.equal(1, metric(engine, "fm_lua_generation"))
    local entry = engine:wait_log(function(e)
      return e.msg == "reload failed: the previous generation keeps serving" end)
    assert.equal("lua/probe.lua", entry.file)
    assert.equal(1, entry.line)
    -- a runtime error at load time in another module: also a failed build
    helpers.replace_file(engine.home .. "/lua/probe.lua", "error('probe refuses to load')\n")
    helpers.wait_until(function()
      return metric(engine, 'fm_reload_total{result="failed"}') == 2
    end, 5, 0.02)
    lua = health(engine).components.lua
    assert.equal("lua/probe.lua", lua.reload_error.file)
    assert.matches("probe refuses to load", lua.reload_error.message)
    -- the fix restores healthy and the new behaviour
    helpers.replace_file(engine.home .. "/lua/probe.lua", probe("fixed"))
    wait_body(engine, "/probe", "fixed", 5)
    h = health(engine)
    assert.equal("healthy", h.status)
    assert.is_nil(h.components.lua.reload_error)
    assert.equal(2, h.components.lua.generation)
  end)

  it("runs a request start to finish on one generation", function()
    local engine = start()
    local c = assert(http.connect("127.0.0.1", engine.port))
    assert(c:send_raw("GET /probe/slow HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.1) -- the slow request is running on generation 1
    helpers.replace_file(engine.home .. "/lua/probe.lua", probe("v2"))
    wait_body(engine, "/probe", "v2", 5)
    local r = assert(c:read_response())
    assert.equal(200, r.status)
    local j = r.json()
    assert.equal("v1", j.marker)
    assert.equal(1, j.gen_start)
    assert.equal(1, j.gen_end)
    -- and the next request on that worker runs generation 2
    for _ = 1, 8 do
      local r2 = assert(engine:get("/probe/slow?x=1", { timeout = 5 })).json()
      assert.equal("v2", r2.marker)
      assert.equal(2, r2.gen_start)
    end
  end)

  it("watches new directories and editors that save by rename", function()
    local engine = start()
    helpers.mkdir(engine.home .. "/lua/newdir/deeper")
    helpers.sleep(0.2)
    helpers.write_file(engine.home .. "/lua/newdir/deeper/marker.lua", "return 'from-newdir'")
    helpers.replace_file(engine.home .. "/lua/probe.lua",
      probe("x"):gsub('local MARKER = "x"', 'local MARKER = require "newdir.deeper.marker"'))
    wait_body(engine, "/probe", "from-newdir", 5)
    -- a change in the new directory alone is seen too
    helpers.write_file(engine.home .. "/lua/newdir/deeper/marker.lua", "return 'changed'")
    wait_body(engine, "/probe", "changed", 5)
    -- swap files and backups do not trigger reloads
    local before = metric(engine, 'fm_reload_total{result="ok"}')
    local before_unchanged = metric(engine, 'fm_reload_total{result="unchanged"}')
    helpers.write_file(engine.home .. "/lua/.probe.lua.swp", "garbage")
    helpers.write_file(engine.home .. "/lua/probe.lua~", "garbage")
    helpers.write_file(engine.home .. "/lua/notes.txt", "garbage")
    helpers.sleep(0.5)
    assert.equal(before, metric(engine, 'fm_reload_total{result="ok"}'))
    assert.equal(before_unchanged, metric(engine, 'fm_reload_total{result="unchanged"}'))
  end)

  it("reloads on SIGHUP when watching is off", function()
    local engine = start { FM_RELOAD_WATCH = "false" }
    helpers.replace_file(engine.home .. "/lua/probe.lua", probe("v2"))
    helpers.sleep(0.5)
    assert.equal("v1", body(engine, "/probe"))
    engine:signal("HUP")
    wait_body(engine, "/probe", "v2", 5)
    engine:wait_log(function(e) return e.msg == "reload: new generation published"
      and e.reason == "SIGHUP" end)
    -- SIGHUP with nothing changed: no new generation
    engine:signal("HUP")
    engine:wait_log(function(e) return e.msg == "reload: no change" end)
    assert.equal(2, metric(engine, "fm_lua_generation"))
    assert.is_true(engine:alive())
  end)

  it("applies reloadable settings and reports the others as restart required", function()
    local engine = start()
    local cfg = helpers.read_file(engine.home .. "/config.lua")
    local n1, n2
    cfg, n1 = cfg:gsub('default = "http://localhost:3333"', 'default = "http://dash.example:1"')
    cfg, n2 = cfg:gsub("max = 86400, default = 60,", "max = 86400, default = 61,")
    assert.equal(1, n1)
    assert.equal(1, n2)
    helpers.replace_file(engine.home .. "/config.lua", cfg)
    helpers.wait_until(function()
      local r = assert(engine:get("/v1/meta/capabilities"))
      return r.json().dashboardUrl == "http://dash.example:1"
    end, 5, 0.02)
    local lua = health(engine).components.lua
    assert.same({ "FM_HTTP_IDLE_TIMEOUT_S" }, lua.restart_required)
    engine:wait_log(function(e)
      return e.msg:find("restart", 1, true) and e.settings == "FM_HTTP_IDLE_TIMEOUT_S"
    end)
    -- an invalid config.lua is a failed build like any other
    helpers.replace_file(engine.home .. "/config.lua", "return {")
    helpers.wait_until(function() return health(engine).status == "degraded" end, 5, 0.02)
    assert.equal("config.lua", health(engine).components.lua.reload_error.file)
    assert.equal(200, assert(engine:get("/v1/meta/capabilities")).status)
  end)

  it("checks playbooks: a hostile or invalid one fails the build, naming it", function()
    local engine = start()
    helpers.mkdir(engine.home .. "/playbooks")
    helpers.write_file(engine.home .. "/playbooks/disk.lua", PLAYBOOK:format("disk-full"))
    helpers.wait_until(function() return metric(engine, "fm_lua_generation") == 2 end, 5, 0.02)
    local cases = {
      { "while true do end", "exceeded its instruction budget" },
      { "return string.rep('x', 1 << 30)", "exceeded its memory cap" },
      { "os.execute('touch " .. engine.home .. "/pwned') return {}",
        "attempt to call a nil value" },
      { PLAYBOOK:format("disk-full"), "duplicate playbook id 'disk%-full'" },
      { "return { id = 'x', title = 'X', version = 'latest', description = 'd' }",
        "semantic version" },
      { "local b = (''):dump(function() end) return {}", "attempt to call a nil value" },
      { "require('fm.time').sleep(3600) return {}", "attempt to call a nil value" },
    }
    for i, case in ipairs(cases) do
      helpers.replace_file(engine.home .. "/playbooks/evil.lua", case[1])
      helpers.wait_until(function()
        return metric(engine, 'fm_reload_total{result="failed"}') == i
      end, 10, 0.02)
      local lua = health(engine).components.lua
      assert.equal("degraded", lua.status)
      assert.equal("playbooks/evil.lua", lua.reload_error.file, case[1])
      assert.matches(case[2], lua.reload_error.message)
      assert.equal(2, lua.generation)
      assert.equal("v1", body(engine, "/probe"))
    end
    assert.is_false(helpers.file_exists(engine.home .. "/pwned"))
    os.remove(engine.home .. "/playbooks/evil.lua")
    helpers.wait_until(function() return health(engine).status == "healthy" end, 5, 0.02)
  end)

  it("sees playbooks added as symlinks, hard links and Kubernetes ConfigMap swaps", function()
    local engine = start()
    local pb = engine.home .. "/playbooks"
    helpers.mkdir(pb)
    helpers.wait_until(function() return metric(engine, 'fm_reload_total{result="unchanged"}') >= 1
      or metric(engine, "fm_lua_generation") >= 2 end, 5, 0.02)
    local outside = helpers.tmpdir("fm-outside-")
    local function gen() return metric(engine, "fm_lua_generation") end
    local function expect_new_generation(fn)
      local before = gen()
      fn()
      helpers.wait_until(function() return gen() == before + 1 end, 5, 0.02)
      assert.equal("healthy", health(engine).status)
    end
    helpers.write_file(outside .. "/a.lua", PLAYBOOK:format("from-symlink"))
    expect_new_generation(function()
      assert(helpers.shell("ln -s " .. outside .. "/a.lua " .. pb .. "/a.lua"))
    end)
    helpers.write_file(outside .. "/b.lua", PLAYBOOK:format("from-hardlink"))
    expect_new_generation(function()
      assert(helpers.shell("ln " .. outside .. "/b.lua " .. pb .. "/b.lua"))
    end)
    -- the kubelet's atomic writer: versions in hidden dirs, a ..data symlink swapped by rename
    helpers.mkdir(pb .. "/..v1")
    helpers.write_file(pb .. "/..v1/c.lua", PLAYBOOK:format("cm-v1"))
    expect_new_generation(function()
      assert(helpers.shell("cd " .. pb .. " && ln -s ..v1 ..data && ln -s ..data/c.lua c.lua"))
    end)
    helpers.mkdir(pb .. "/..v2")
    helpers.write_file(pb .. "/..v2/c.lua", PLAYBOOK:format("cm-v2"))
    expect_new_generation(function()
      assert(helpers.shell("cd " .. pb .. " && ln -s ..v2 ..data_tmp && mv -T ..data_tmp ..data"))
    end)
    local log_entry = engine:wait_log(function(e)
      return e.msg == "reload: new generation published" and e.generation == gen()
    end)
    assert.equal("inotify", log_entry.reason)
  end)

  it("refuses to start when generation 1 does not load, saying where", function()
    local home = helpers.copy_home()
    helpers.write_file(home .. "/lua/probe.lua", "return function(r) r:get('/x', nil) end x")
    local dir = helpers.tmpdir()
    local log = dir .. "/engine.log"
    local p = helpers.spawn {
      argv = { helpers.bin(), "serve" }, stdout = log, stderr = log,
      env = { FM_HOME = home, FM_EXTRA_ROUTES = "probe", FM_PORT = tostring(helpers.free_port()),
              FM_DATA_DIR = dir .. "/data" } }
    local how, code = p:wait(15)
    assert.equal("exit", how)
    assert.equal(1, code)
    assert.matches("the Lua code does not load: .*lua/probe.lua:1: <eof> expected",
      helpers.read_file(log))
  end)
end)
