-- fm.agent.runner against hostile and broken playbooks (registries from in-memory sources):
-- each one is reported in result.failed and skipped, a well-behaved playbook in the same
-- registry still produces its result, and nothing raises out of runner.run.
local playbooks = require "fm.playbooks"
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"
local time = require "fm.time"

local GOOD = [[return {
  id = "good", title = "Good", version = "1.0.0", description = "well behaved",
  tags = { "test" }, category = "environment",
  match = function(ctx) return 0.5, { "always" } end,
  steps = { { name = "inspect", run = function(ctx, out)
    out:finding("good ran: " .. ctx.signal("disk_full"))
    out:hypothesis{ key = "good_key", statement = "good statement", likelihood = 0.5 }
  end } },
}]]

local function registry(files)
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  local reg = playbooks.load_all {
    list = function(prefix)
      local out = {}
      for _, p in ipairs(paths) do if p:sub(1, #prefix) == prefix then out[#out + 1] = p end end
      return out
    end,
    read = function(p) return files[p] end,
    instructions = 2000000, memory = 8 << 20, signatures = false,
  }
  assert(#reg.errors == 0, reg.errors[1] and reg.errors[1].message)
  return reg
end

-- A hostile playbook "evil": its match (an expression) and the body of its one step.
local function evil(match, step, lib)
  local files = {
    ["playbooks/evil.lua"] = string.format([[return {
  id = "evil", title = "Evil", version = "1.0.0", description = "hostile",
  tags = { "test" }, category = "other",
  match = %s,
  steps = { { name = "attack", run = function(ctx, out)
%s
  end } },
}]], match or "function() return 0.9 end", step or ""),
    ["playbooks/good.lua"] = GOOD,
  }
  for k, v in pairs(lib or {}) do files[k] = v end
  return registry(files)
end

local function ctx_of(search_kb)
  return context.build {
    symptom = "disk full",
    evidence = { { id = "ev_1", filename = "app.log", source_type = "logs", turn = 1,
      digest = "No space left on device\n",
      summary = { signatures = { { name = "disk_full", count = 2, first_line = 1,
                                   last_line = 1, severity = "error" } } } } },
    search_kb = search_kb,
  }
end

-- Runs the registry; asserts runner.run did not raise and "good" produced its result.
local function run(reg, ctx)
  local t0 = time.monotonic()
  local ok, r = pcall(runner.run, ctx or ctx_of(), { registry = reg })
  assert(ok, "runner.run raised: " .. tostring(r))
  assert.is_true(time.monotonic() - t0 < 20, "the run took too long")
  local good
  for _, m in ipairs(r.matched) do if m.id == "good" then good = m end end
  assert(good, "the good playbook did not run")
  assert.same({ { text = "good ran: 2" } }, good.findings)
  assert.equal("good_key", good.hypotheses[1].key)
  for _, f in ipairs(r.failed) do
    assert.is_not.equal("good", f.id, "good failed: " .. tostring(f.message))
  end
  return r
end

local function failure(r, id)
  id = id or "evil"
  for _, f in ipairs(r.failed) do if f.id == id then return f end end
  error("no failure reported for " .. id, 2)
end

local function evil_matched(r)
  for _, m in ipairs(r.matched) do if m.id == "evil" then return m end end
end

describe("hostile playbooks: errors", function()
  it("an error in match: reported (phase match), skipped", function()
    local r = run(evil("function() error('match broke') end"))
    local f = failure(r)
    assert.equal("match", f.phase)
    assert.equal("error", f.kind)
    assert.matches("playbooks/evil.lua:%d+: match broke", f.message)
    assert.is_nil(evil_matched(r))
    for _, s in ipairs(r.scores) do assert.is_not.equal("evil", s.id) end
  end)

  it("an error in a step: reported with the step's name", function()
    local r = run(evil(nil, "out:finding('before') error('step broke')"))
    local f = failure(r)
    assert.equal("step", f.phase)
    assert.equal("attack", f.step)
    assert.equal("error", f.kind)
    assert.matches("step broke", f.message, 1, true)
    assert.same({ { text = "before" } }, evil_matched(r).findings)
  end)

  it("an error object whose __tostring would loop: reported by type, never stringified",
    function()
    local r = run(evil(nil, [[
      error(setmetatable({}, { __tostring = function() while true do end end,
                               __index = function() while true do end end }))]]))
    local f = failure(r)
    assert.equal("error", f.kind)
    assert.matches("error object is a table value", f.message, 1, true)
    r = run(evil("function() error(setmetatable({}, { __tostring = function() "
      .. "while true do end end })) end"))
    assert.matches("error object is a table value", failure(r).message, 1, true)
  end)

  it("a lib module that errors when required", function()
    local r = run(evil(nil, "local m = require 'bad'", {
      ["playbooks/lib/bad.lua"] = "error('lib broke')" }))
    assert.matches("lib broke", failure(r).message, 1, true)
  end)
end)

describe("hostile playbooks: budgets", function()
  it("an endless loop in match: the instruction budget", function()
    local f = failure(run(evil("function() while true do end end")))
    assert.equal("instructions", f.kind)
    assert.equal("match", f.phase)
  end)

  it("an endless loop in a step, and one hidden in a coroutine", function()
    local f = failure(run(evil(nil, "while true do end")))
    assert.equal("instructions", f.kind)
    assert.equal("step", f.phase)
    f = failure(run(evil(nil, [[
      local co = coroutine.wrap(function() while true do end end)
      co()]])))
    assert.equal("instructions", f.kind)
  end)

  it("an endless loop caught by pcall still ends the run", function()
    local f = failure(run(evil(nil, [[
      for _ = 1, 100 do pcall(function() while true do end end) end
      out:finding("escaped the budget")]])))
    assert.equal("instructions", f.kind)
  end)

  it("huge memory: a 50 MB string, a growing table", function()
    local f = failure(run(evil(nil, "local s = string.rep('x', 50 * 1024 * 1024)")))
    assert.equal("memory", f.kind)
    f = failure(run(evil(nil, "local t = {} for i = 1, 1e8 do t[i] = { i } end")))
    assert.is_true(f.kind == "memory" or f.kind == "instructions", f.kind)
    f = failure(run(evil("function() return ('x'):rep(50 * 1024 * 1024) end")))
    assert.equal("memory", f.kind)
  end)

  it("deep recursion", function()
    local f = failure(run(evil(nil, "local function g(n) return 1 + g(n + 1) end g(1)")))
    assert.is_true(f.kind == "error" or f.kind == "memory", f.kind)
  end)
end)

describe("hostile playbooks: output", function()
  it("100000 findings: capped at 50 (or stopped by the budget), never raised", function()
    local r = run(evil(nil, "for i = 1, 100000 do out:finding('f' .. i) end"))
    local m = evil_matched(r)
    assert.is_true(#m.findings <= 50)
    local capped = table.concat(m.warnings, "\n"):find("more than 50 findings", 1, true)
    local stopped = false
    for _, f in ipairs(r.failed) do
      if f.id == "evil" and f.kind == "instructions" then stopped = true end
    end
    assert.is_true(capped ~= nil or stopped)
  end)

  it("a 4 MB finding is cut to 2000 bytes", function()
    local r = run(evil(nil, "out:finding(string.rep('y', 4 * 1024 * 1024))"))
    assert.equal(2000, #evil_matched(r).findings[1].text)
  end)

  local wrong = {
    { "a string", "'0.9'" }, { "nil", "nil" }, { "NaN", "0/0" }, { "5", "5" },
    { "a table", "{ 0.9 }" }, { "-1", "-1" }, { "infinity", "math.huge" },
    { "a function", "print" },
  }
  for _, w in ipairs(wrong) do
    it("match returning " .. w[1] .. ": reported as output, not run", function()
      local r = run(evil("function() return " .. w[2] .. " end", "out:finding('ran')"))
      local f = failure(r)
      assert.equal("output", f.kind)
      assert.equal("match", f.phase)
      assert.matches("score 0..1", f.message, 1, true)
      assert.is_nil(evil_matched(r))
    end)
  end

  it("match returning reasons of the wrong shape: kept to 10 strings", function()
    local r = run(evil([[function()
      local reasons = setmetatable({}, { __index = function() while true do end end,
                                         __len = function() while true do end end })
      for i = 1, 1000 do reasons[i] = (i % 2 == 0) and ("r" .. i) or { i } end
      return 0.9, reasons end]]))
    local m = evil_matched(r)
    assert.is_true(#m.reasons <= 10)
    for _, s in ipairs(m.reasons) do assert.is_string(s) end
  end)

  local bad_calls = {
    { "finding(5)", "out:finding(5)", "out:finding" },
    { "finding{} without text", "out:finding{}", "out:finding: 'text' is required" },
    { "finding line a string", "out:finding{ text = 't', line = 'x' }", "'line'" },
    { "a dot call", "out.finding('x')", "out:finding" },
    { "hypothesis key", "out:hypothesis{ key = 'Bad Key', statement = 's', likelihood = 0.5 }",
      "out:hypothesis: 'key'" },
    { "likelihood 2", "out:hypothesis{ key = 'k', statement = 's', likelihood = 2 }",
      "'likelihood' must be a number 0..1" },
    { "likelihood NaN", "out:hypothesis{ key = 'k', statement = 's', likelihood = 0/0 }",
      "'likelihood'" },
    { "hypothesis category", "out:hypothesis{ key = 'k', statement = 's', likelihood = 0.1, "
      .. "category = 'weather' }", "'category' must be one of" },
    { "evidence stance", "out:evidence{ hypothesis = 'k', stance = 'maybe', summary = 's' }",
      "'stance'" },
    { "ask without label", "out:ask{ command = 'df -h' }", "out:ask: 'label' is required" },
    { "ask command a table", "out:ask{ label = 'l', command = {} }", "'command' must be a string" },
    { "conclude confidence", "out:conclude{ root_cause = 'r', confidence = 'high' }",
      "'confidence'" },
    { "conclude severity", "out:conclude{ root_cause = 'r', confidence = 1, severity = 'meh' }",
      "'severity'" },
    { "mitigate risk", "out:mitigate{ title = 't', risk = 'extreme', undo = 'u' }", "'risk'" },
    { "mitigate without undo", "out:mitigate{ title = 't', risk = 'low' }", "'undo'" },
    { "solve a string", "out:solve('fix it')", "out:solve" },
    { "runbook query a number", "out:runbook(5)", "out:runbook" },
    { "fields behind __index", "out:finding(setmetatable({}, { __index = function() "
      .. "while true do end end }))", "'text' is required" },
  }
  for _, c in ipairs(bad_calls) do
    it("out called wrongly (" .. c[1] .. "): the step fails, naming the method", function()
      local f = failure(run(evil(nil, c[2])))
      assert.equal("error", f.kind)
      assert.equal("step", f.phase)
      assert.matches(c[3], f.message, 1, true)
    end)
  end

  it("invalid UTF-8 and long reasons are cleaned", function()
    local r = run(evil("function() return 0.9, { string.rep('r', 5000) } end",
      "out:finding('bad \\255\\254 bytes')"))
    local m = evil_matched(r)
    assert.equal(300, #m.reasons[1])
    assert.truthy(utf8.len(m.findings[1].text))
    assert.matches("^bad .* bytes$", m.findings[1].text)
  end)

  it("a playbook that rewrites its own definition while it runs", function()
    local reg = registry {
      ["playbooks/good.lua"] = GOOD,
      ["playbooks/evil.lua"] = [[
        local P
        P = { id = "evil", title = "Evil", version = "1.0.0", description = "hostile",
          tags = { "test" }, category = "other",
          match = function()
            P.steps = setmetatable({ "not a step" }, {
              __index = function() while true do end end,
              __len = function() while true do end end })
            P.match = "no longer a function"
            P.category = setmetatable({}, { __tostring = function() while true do end end })
            return 0.9
          end,
          steps = { { name = "s", run = function() end } } }
        return P]],
    }
    local r = run(reg)
    local f = failure(r)
    assert.equal("output", f.kind)
    assert.equal("step", f.phase)
    r = run(reg) -- every run gets a fresh instance: the rewrite did not outlive its run
    f = failure(r)
    assert.equal("step", f.phase)
    assert.equal("output", f.kind)
  end)

  it("out and ctx cannot be replaced or reached through their metatables", function()
    local r = run(evil(nil, [[
      assert(getmetatable(out) ~= nil and type(getmetatable(out)) ~= "table")
      assert(type(getmetatable(ctx)) ~= "table")
      assert(not pcall(setmetatable, ctx, {}))
      assert(not pcall(function() out.finding = print end))
      rawset(out, "finding", function() end)   -- its own out only
      out:finding("x")
      out:hypothesis{ key = "k", statement = "still recorded", likelihood = 0.2 }]]))
    assert.same({}, r.failed)
    assert.equal("still recorded", evil_matched(r).hypotheses[1].statement)
  end)

  it("out:runbook results changed by the box do not reach the host (runner-bugs.md #1)",
    function()
    local function kb() return { { document_id = "doc_1", title = "t", score = 0.5 } } end
    local r = run(evil(nil, [[
      local found = out:runbook("disk")
      if found[1] then
        rawset(found[1], "document_id", nil)
        setmetatable(found[1], { __index = function() error("host read a box table") end })
      end]]), ctx_of(kb))
    local m = evil_matched(r)
    assert.equal("doc_1", m.runbooks[1].document_id)
  end)
end)

describe("hostile playbooks: sandbox escapes", function()
  local escapes = {
    { "io.open", "io.open('/etc/passwd')", "global 'io'" },
    { "os.execute", "os.execute('touch /tmp/fm-pwned')", "field 'execute'" },
    { "os.getenv", "return os.getenv('HOME')", "field 'getenv'" },
    { "debug", "debug.sethook()", "global 'debug'" },
    { "string.dump", "string.dump(function() end)", "field 'dump'" },
    { "load of bytecode", "assert(load('\27Lua' .. string.rep('x', 20)))", "binary chunks" },
    { "load with a reader", "assert(load(function() return nil end))", "load takes a string" },
    { "the string metatable", "local i = getmetatable('').__index", "attempt to index" },
    { "require fm.db", "require 'fm.db'", "not found" },
    { "require fm.app", "require 'fm.app'", "not found" },
    { "require a path", "require '../../lua/fm/db'", "invalid module name" },
    { "package.loadlib", "package.loadlib('x', 'y')", "global 'package'" },
    { "dofile", "dofile('/etc/passwd')", "global 'dofile'" },
    { "collectgarbage('stop')", "collectgarbage('stop')", "is not allowed" },
    { "a __gc finalizer", "setmetatable({}, { __gc = function() while true do end end })",
      "__gc metamethods are not allowed" },
    { "fm.time.sleep", "require('fm.time').sleep(10)", "field 'sleep'" },
    { "yield out of the step", "coroutine.yield()", "yield" },
  }
  for _, e in ipairs(escapes) do
    it(e[1] .. ": the step fails, the good playbook runs", function()
      local f = failure(run(evil(nil, e[2])))
      assert.equal("error", f.kind)
      assert.equal("step", f.phase)
      assert.matches(e[3], f.message, 1, true)
    end)
  end

  it("a playbook's globals stay in its own box", function()
    local r = run(evil(nil, [[
      string.format = nil
      table.concat = nil
      _G.ipairs = nil
      out:finding("vandalised")]]))
    assert.same({}, r.failed)
    assert.is_function(string.format)
    assert.is_function(table.concat)
  end)
end)

describe("hostile playbooks: state between runs", function()
  it("globals and upvalues do not outlive a run: one case's words never reach the next",
    function()
      local reg = evil("function() return 0.9 end", [[
        LEAK = LEAK or ctx.symptom
        HOARD = HOARD or {}
        HOARD[#HOARD + 1] = string.rep("x", 1000000)
        out:finding(LEAK .. " / " .. #HOARD)]])
      local first = context.build { symptom = "case A: secret words", evidence = {} }
      local r = run(reg, ctx_of())
      assert.equal("disk full / 1", evil_matched(r).findings[1].text)
      for _ = 1, 5 do r = runner.run(first, { registry = reg }) end
      assert.equal("case A: secret words / 1", evil_matched(r).findings[1].text)
      r = run(reg, ctx_of())
      assert.equal("disk full / 1", evil_matched(r).findings[1].text)
    end)
end)

describe("hostile playbooks: knowledge searches", function()
  it("a turn makes at most context.MAX_SEARCHES real searches, however a playbook loops",
    function()
      local calls = 0
      local ctx = ctx_of(function() calls = calls + 1; return {} end)
      run(evil("function() return 0.9 end",
        [[for _ = 1, 100000 do ctx.search_kb("disk") end]]), ctx)
      assert.equal(context.MAX_SEARCHES, calls)
    end)
end)
