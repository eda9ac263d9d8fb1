-- playbooks/memory-leak.lua against realistic evidence (spec/fixtures/playbooks/memory-leak/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "memory-leak"
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

describe("playbook memory-leak", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/node-heap-oom.log" })
    assert.equal(1, ctx.signals.leak_js_heap.count)
    assert.equal(3, ctx.signals.leak_full_gc.count)
  end)

  it("working set ramps and pods are OOMKilled: retained objects, concluded", function()
    local result = run({ "positive/working-set.csv", "positive/get-pods.txt" },
                       "cart pods restart about once a day")
    no_failure(result)
    local m = assert(matched(result), "memory-leak not matched")
    assert.is_true(m.score >= 0.5)
    local h = keys(m)
    assert.truthy(h.leak_retained_objects and h.leak_native_memory and h.leak_load_driven)
    assert.is_true(h.leak_retained_objects.likelihood > h.leak_load_driven.likelihood)
    assert.equal("leak_retained_objects", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    assert.matches("working_set_mb climbs", m.conclusion.root_cause)
    assert.matches("GC.class_histogram", commands(m))
    assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
  end)

  it("goroutines and RSS ramp together in a Go service: leaked goroutines", function()
    local result = run({ "positive/go-runtime.prom" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("leak_goroutines_threads", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    assert.matches("pprof/goroutine", commands(m))
  end)

  it("a Node.js heap OOM without metrics: matched, asks for the graph, no conclusion", function()
    local result = run({ "positive/node-heap-oom.log" })
    no_failure(result)
    local m = assert(matched(result))
    assert.is_true(m.score >= 0.3)
    assert.is_nil(m.conclusion)
    local cmds = commands(m)
    assert.matches("container_memory_working_set_bytes", cmds)
    assert.matches("heapsnapshot", cmds)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "we may have a memory leak")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match a one-off spike, healthy GC or a TLS outage", function()
    local result = run({ "negative/memory-spike.csv" }, "memory alert fired at noon")
    assert.is_true(score(result) < 0.3)
    assert.is_true(score(run({ "negative/gc-young-only.log" })) < 0.3)
    assert.is_true(score(run({ "negative/tls-errors.log" }, "clients fail to connect")) < 0.3)
  end)
end)
