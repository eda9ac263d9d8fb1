-- playbooks/gc-pauses.lua against realistic evidence (spec/fixtures/playbooks/gc-pauses/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "gc-pauses"
local DIR = "spec/fixtures/playbooks/" .. ID .. "/"

local function run(files, symptom)
  local paths = {}
  for i, f in ipairs(files) do paths[i] = DIR .. f end
  local ctx = assert(context.from_files(paths, { symptom = symptom or "" }))
  return runner.run(ctx), ctx
end

local function matched(result)
  for _, m in ipairs(result.matched) do if m.id == ID then return m end end
end

local function score(result)
  for _, s in ipairs(result.scores) do if s.id == ID then return s.score end end
  return 0
end

local function keys(m)
  local t = {}
  for _, h in ipairs(m.hypotheses) do t[h.key] = h end
  return t
end

local function commands(m)
  local t = {}
  for _, a in ipairs(m.asks) do if a.command then t[#t + 1] = a.command end end
  return table.concat(t, "\n")
end

local function no_failure(result)
  for _, f in ipairs(result.failed) do
    assert.is_not.equal(ID, f.id, "playbook failed: " .. tostring(f.message))
  end
end

describe("playbook gc-pauses", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/gc-full.log", "positive/consumer.log",
                         "positive/gc-humongous.log" })
    assert.equal(5, ctx.signals.gcpause_long.count)      -- 3 full + 1.49 s young + 6.2 s full
    assert.equal(3, ctx.signals.gcpause_medium.count)    -- 121, 140, 152 ms (not 88 or 41 ms)
    assert.equal(4, ctx.signals.gcpause_full.count)
    assert.equal(1, ctx.signals.gcpause_to_space_exhausted.count)
    assert.equal(2, ctx.signals.gcpause_humongous.count)
    assert.equal(1, ctx.signals.gcpause_membership_lost.count)
  end)

  it("4 s full GCs leaving the heap 94% full, consumers leaving the group: heap too small",
     function()
    local result = run({ "positive/gc-full.log", "positive/consumer.log" },
                       "billing p99 spikes every few seconds")
    no_failure(result)
    local m = assert(matched(result), "gc-pauses not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.gcpause_heap_too_small and h.gcpause_memory_leak
                  and h.gcpause_allocation_spike and h.gcpause_cpu_starved)
    assert.equal("gcpause_heap_too_small", m.conclusion.hypothesis)
    assert.matches("94%", m.conclusion.root_cause, 1, true)
    local cmds = commands(m)
    assert.matches("jstat -gcutil", cmds, 1, true)
    assert.is_nil(cmds:find("gc.log", 1, true))     -- the GC log was given
  end)

  it("humongous allocations and to-space exhausted: allocation spikes", function()
    local result = run({ "positive/gc-humongous.log" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("gcpause_allocation_spike", m.conclusion.hypothesis)
    assert.matches("jvm_memory_used_bytes", commands(m), 1, true)
  end)

  it("2.4 s pause metric with the container throttled 64%: CPU-starved GC", function()
    local result = run({ "positive/quotes-metrics.prom" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("gcpause_cpu_starved", m.conclusion.hypothesis)
    assert.matches("set resources", m.mitigations[1].command, 1, true)
    local cmds = commands(m)
    assert.matches("gc.log", cmds, 1, true)            -- no GC log yet: asked for
    assert.is_nil(cmds:find("cpu.stat", 1, true))      -- throttling was shown
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "long GC pauses?")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match healthy young GCs, a short System.gc() or a database outage", function()
    assert.is_true(score(run({ "negative/gc-young-only.log" }, "checking")) < 0.3)
    assert.is_true(score(run({ "negative/gc-short-full.log" })) < 0.3)
    assert.is_true(score(run({ "negative/db-connection-refused.log" }, "orders fail")) < 0.3)
  end)
end)
