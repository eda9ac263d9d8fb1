-- fm.sandbox: hostile code fails cleanly, with the box's name, and leaves the host intact.
local sandbox = require "fm.sandbox"

local files = {
  ["playbooks/lib/util.lua"] = "return { double = function(x) return 2 * x end }",
  ["playbooks/lib/loop.lua"] = "while true do end",
}
local function read(path) return files[path] end

local function box(opts)
  opts = opts or {}
  return sandbox.new { name = "playbook 'evil'", instructions = opts.instructions or 2000000,
                       memory = opts.memory or (4 << 20), source = read }
end

-- Loads and runs code in a fresh box: ok, kind|result, message.
local function run(code, opts)
  local b = box(opts)
  local fn, err = b:load(code, "playbooks/evil.lua")
  if not fn then return false, "load", err end
  return b:run(fn)
end

describe("fm.sandbox", function()
  it("runs ordinary code and returns its results", function()
    local ok, a, b = run("local t = {} for i = 1, 10 do t[i] = i * i end return #t, t[10]")
    assert.is_true(ok)
    assert.equal(10, a)
    assert.equal(100, b)
  end)

  it("has no io, debug, package, os.execute/remove/rename/exit/getenv, string.dump", function()
    local ok, res = run([[
      return { io = io, debug = debug, package = package, exec = os.execute, remove = os.remove,
               rename = os.rename, exit = os.exit, getenv = os.getenv, dump = string.dump,
               dofile = dofile, loadfile = loadfile }
    ]])
    assert.is_true(ok)
    assert.same({}, res)
  end)

  it("fails cleanly on os.execute and io.open, naming the box", function()
    local codes = { "os.execute('touch /tmp/fm-sandbox-pwned')", "io.open('/etc/passwd')" }
    for _, code in ipairs(codes) do
      local ok, kind, msg = run(code)
      assert.is_false(ok)
      assert.equal("error", kind)
      assert.matches("^playbook 'evil': ", msg)
      assert.matches("attempt to %a+ a nil value", msg)
    end
    assert.is_nil(io.open("/tmp/fm-sandbox-pwned"))
  end)

  it("refuses binary chunks, from Box:load and from load inside the box", function()
    local bytecode = string.dump(function() return 1 end)
    local b = box()
    local fn, err = b:load(bytecode, "playbooks/bin.lua")
    assert.is_nil(fn)
    assert.matches("binary chunks", err)
    b.env.code = bytecode
    local f2 = assert(b:load("return load(code, 'x', 'b')", "playbooks/x.lua"))
    local ok, r1, r2 = b:run(f2)
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.matches("only text chunks", r2)
    local f3 = assert(b:load("return load(code)", "playbooks/x.lua"))
    ok, r1, r2 = b:run(f3)
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.matches("binary chunks", r2)
  end)

  it("stops a string.rep memory bomb at the box's memory cap", function()
    local ok, kind, msg = run("local s = string.rep('x', 1 << 30) return #s")
    assert.is_false(ok)
    assert.equal("memory", kind)
    assert.matches("playbook 'evil': exceeded its memory cap", msg)
    -- a slower bomb: a table that grows
    ok, kind = run("local t = {} for i = 1, 1e9 do t[i] = ('y'):rep(100) .. i end")
    assert.is_false(ok)
    assert.equal("memory", kind)
  end)

  it("stops `while true do end` at the instruction budget", function()
    local ok, kind, msg = run("while true do end")
    assert.is_false(ok)
    assert.equal("instructions", kind)
    assert.matches("playbook 'evil': exceeded its instruction budget", msg)
  end)

  it("cannot catch its own budget or memory abort with pcall, xpcall or coroutines", function()
    local cases = {
      "while not pcall(function() while true do end end) do end",
      "for i = 1, 100 do pcall(function() while true do end end) end return 'survived'",
      "local ok = xpcall(function() while true do end end, function() return 1 end) return ok",
      "local co = coroutine.wrap(function() while true do end end) pcall(co) return 'survived'",
      "local co = coroutine.create(function() while true do end end)"
        .. " coroutine.resume(co) return 'survived'",
    }
    for _, code in ipairs(cases) do
      local ok, kind = run(code)
      assert.is_false(ok, code)
      assert.equal("instructions", kind, code)
    end
    local ok, kind = run("pcall(string.rep, 'x', 1 << 30) return 'survived'")
    assert.is_false(ok)
    assert.equal("memory", kind)
  end)

  it("metatable tricks on the environment reach nothing of the host", function()
    local ok, res = run([[
      local seen = {}
      setmetatable(_ENV, { __index = function(_, k) seen[#seen + 1] = k; return nil end })
      local g = _G
      return { same = (g == _ENV), io = g.io, req = g.package, mt = getmetatable(''),
               host_string = (getmetatable('') or {}).__index }
    ]])
    assert.is_true(ok)
    assert.is_true(res.same)
    assert.is_nil(res.io)
    assert.is_nil(res.req)
    assert.is_nil(res.mt)
    assert.is_nil(res.host_string)
  end)

  it("changes to library tables stay inside the box", function()
    local ok = run("string.rep = nil; string.format = nil; table.concat = nil; math.floor = nil")
    assert.is_true(ok)
    assert.equal("aaa", string.rep("a", 3))
    assert.equal("1", string.format("%d", 1))
    assert.equal("aaa", ("a"):rep(3))
    local ok2, v = run("return ('a'):rep(2) .. string.format('%d', 7)")
    assert.is_true(ok2)
    assert.equal("aa7", v)
  end)

  it("refuses __gc metamethods and collectgarbage control", function()
    local ok, kind, msg = run("setmetatable({}, { __gc = function() while true do end end })")
    assert.is_false(ok)
    assert.equal("error", kind)
    assert.matches("__gc metamethods are not allowed in playbook 'evil'", msg)
    for _, opt in ipairs { "stop", "collect", "step", "incremental", "generational" } do
      ok, _, msg = run("collectgarbage('" .. opt .. "')")
      assert.is_false(ok, opt)
      assert.matches("is not allowed", msg)
    end
    local ok2, count = run("return collectgarbage('count')")
    assert.is_true(ok2)
    assert.is_number(count)
  end)

  it("requires modules from playbooks/lib/ only", function()
    local ok, v = run("return require('util').double(21)")
    assert.is_true(ok)
    assert.equal(42, v)
    for _, name in ipairs { "config", "fm.app", "fm.sandbox_core", "../lua/fm/app", "os", "io",
                            "lib.util", "..util", "/etc/passwd", "socket" } do
      local ok2, kind, msg = run("return require(" .. string.format("%q", name) .. ")")
      assert.is_false(ok2, name)
      assert.equal("error", kind, name)
      assert.matches("require", msg, nil, true)
    end
    -- a module that loops is stopped by the budget of the run that required it
    local ok3, kind3 = run("return require('loop')")
    assert.is_false(ok3)
    assert.equal("instructions", kind3)
  end)

  it("gets copies of the pure fm modules it may require", function()
    local ok, v = run("local json = require 'fm.json'; json.encode = nil;"
      .. " return json.decode('[1]')[1]")
    assert.is_true(ok)
    assert.equal(1, v)
    assert.is_function(require("fm.json").encode)
  end)

  it("does not run an error object's __tostring outside the box", function()
    local ok, kind, msg = run("error(setmetatable({}, { __tostring = function()"
      .. " while true do end end }))")
    assert.is_false(ok)
    assert.equal("error", kind)
    assert.matches("error object is a table value", msg, nil, true)
  end)

  it("leaves the host VM usable after every failure", function()
    for _ = 1, 3 do
      run("while true do end")
      run("local s = string.rep('x', 1 << 30)")
    end
    local ok, v = run("return 1 + 1")
    assert.is_true(ok)
    assert.equal(2, v)
  end)

  it("refuses load with a reader function (its errors are caught inside load)", function()
    local ok, r1, r2 = run("return load(function() while true do end end)")
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.matches("load takes a string", r2)
  end)

  it("the engine's load re-raises a budget abort raised in a reader", function()
    local core = require "fm.sandbox_core"
    local ok, kind = core.run({ instructions = 100000 }, function()
      while true do load(function() while true do end end) end
    end)
    assert.is_false(ok)
    assert.equal("instructions", kind)
  end)

  it("gets only functions of fm.json and fm.time: no shared metatable, no sleep", function()
    local ok, res = run([[
      local json, time = require "fm.json", require "fm.time"
      local a = json.array {}
      local changed = pcall(setmetatable, a, nil)
      pcall(function() getmetatable(a).__gc = function() while true do end end end)
      return { mt = json.array_mt, seen = getmetatable(a), changed = changed,
               sleep = time.sleep, now = type(time.now) }
    ]])
    assert.is_true(ok)
    assert.is_nil(res.mt)
    assert.equal("string", type(res.seen)) -- protected: never the metatable itself
    assert.is_false(res.changed)
    assert.is_nil(res.sleep)
    assert.equal("function", res.now)
    -- the host's arrays are untouched
    local json = require "fm.json"
    assert.equal("[]", json.encode(json.array {}))
    local mt = debug.getmetatable(json.array {})
    assert.is_nil(rawget(mt, "__gc"))
    assert.equal("fm.json.array", rawget(mt, "__metatable"))
  end)

  it("cannot make fm.json build more text than its memory cap allows", function()
    local ok, kind, msg = run([[
      local s = string.rep("x", 1 << 20)
      local t = {}
      for i = 1, 1024 do t[i] = s end
      return #require("fm.json").encode(t)
    ]], { memory = 4 << 20 })
    assert.is_false(ok)
    assert.matches("outgrow the Lua memory left", msg, nil, true)
    assert.equal("error", kind)
    local ok2, r1, r2 = run([[
      return require("fm.json").decode("[" .. string.rep("1,", 300000) .. "1]")
    ]], { memory = 2 << 20 })
    assert.is_true(ok2)
    assert.is_nil(r1)
    assert.matches("too large", r2)
  end)

  it("does not nest runs", function()
    local b = box()
    local inner = assert(b:load("return 1", "playbooks/inner.lua"))
    b.env.again = function() return b:run(inner) end
    local fn = assert(b:load("return again()", "playbooks/outer.lua"))
    local ok, kind, msg = b:run(fn)
    assert.is_false(ok)
    assert.equal("error", kind)
    assert.matches("do not nest", msg)
  end)
end)
