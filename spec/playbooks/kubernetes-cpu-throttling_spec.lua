-- playbooks/kubernetes-cpu-throttling.lua against realistic evidence
-- (spec/fixtures/playbooks/kubernetes-cpu-throttling/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "kubernetes-cpu-throttling"
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

describe("playbook kubernetes-cpu-throttling", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/alerts.log", "positive/cadvisor.prom",
                         "positive/top-steal.txt" })
    assert.equal(2, ctx.signals.cputhrottle_alert.count)
    assert.equal(1, ctx.signals.cputhrottle_steal.count)
    assert.is_true(ctx.signals.cputhrottle_cfs_metric.count >= 20)
  end)

  it("cpu.stat with 41% of periods throttled at a 0.5 CPU quota: the limit", function()
    local result = run({ "positive/cgroup-cpu.txt" }, "checkout p99 spikes")
    no_failure(result)
    local m = assert(matched(result), "kubernetes-cpu-throttling not matched")
    assert.is_true(m.score >= 0.5)
    local h = keys(m)
    assert.truthy(h.cputhrottle_limit_too_low and h.cputhrottle_parallelism
                  and h.cputhrottle_noisy_neighbour and h.cputhrottle_steal)
    assert.equal("cputhrottle_limit_too_low", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.75)
    assert.matches("41%", m.conclusion.root_cause, 1, true)
    assert.matches("0.50 CPU", m.conclusion.root_cause, 1, true)
    local cmds = commands(m)
    assert.matches(".resources", cmds, 1, true)
    assert.is_nil(cmds:find("cpu.stat", 1, true))      -- already given
  end)

  it("cAdvisor counters (62% throttled) and the CPUThrottlingHigh alert", function()
    local result = run({ "positive/cadvisor.prom", "positive/alerts.log" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("cputhrottle_limit_too_low", m.conclusion.hypothesis)
    assert.matches("62%", m.conclusion.root_cause, 1, true)
    assert.matches("mpstat", commands(m), 1, true)
    assert.is_true(#m.mitigations >= 2 and #m.solutions >= 1)
  end)

  it("top with 29% steal: hypervisor contention, not the quota", function()
    local result = run({ "positive/top-steal.txt" })
    local m = assert(matched(result))
    assert.equal("cputhrottle_steal", m.conclusion.hypothesis)
    assert.matches("cpu.stat", commands(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "I think the pods are CPU throttled")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match an unthrottled cgroup, healthy counters or an idle node", function()
    assert.is_true(score(run({ "negative/cgroup-cpu-idle.txt" }, "the api is slow")) < 0.3)
    assert.is_true(score(run({ "negative/cadvisor-healthy.prom" })) < 0.3)
    assert.is_true(score(run({ "negative/top-idle.txt" }, "latency is high")) < 0.3)
  end)
end)
