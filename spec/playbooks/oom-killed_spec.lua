-- playbooks/oom-killed.lua against realistic evidence (spec/fixtures/playbooks/oom-killed/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "oom-killed"
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

describe("playbook oom-killed", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/dmesg-memcg.txt", "positive/journal-host-oom.txt",
                         "positive/describe-pod-oomkilled.txt" })
    assert.is_true(ctx.signals.oom_memcg_constraint.count >= 1)
    assert.equal(1, ctx.signals.oom_host_constraint.count)
    assert.equal(2, ctx.signals.oom_exit_137.count)   -- Exit Code: 137, status=9/KILL
    assert.equal(2, ctx.signals.oom_systemd_unit.count)
  end)

  it("OOMKilled pod and a CONSTRAINT_MEMCG kernel report: the container limit", function()
    local result = run({ "positive/describe-pod-oomkilled.txt", "positive/dmesg-memcg.txt" },
                       "payments pods keep restarting")
    no_failure(result)
    local m = assert(matched(result), "oom-killed not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.oom_limit_too_low and h.oom_memory_leak and h.oom_host_exhausted)
    assert.is_true(h.oom_limit_too_low.likelihood > h.oom_host_exhausted.likelihood)
    assert.equal("oom_limit_too_low", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    local cmds = commands(m)
    assert.matches("kubectl top pod", cmds)
    assert.is_nil(cmds:find("dmesg", 1, true))             -- the kernel report was given
    assert.is_true(#m.mitigations > 0)
    assert.matches("set resources", m.mitigations[1].command)
  end)

  it("host-wide OOM (CONSTRAINT_NONE) on a plain host with memory saturated", function()
    local result = run({ "positive/journal-host-oom.txt", "positive/free-m.txt" },
                       "postgres died overnight")
    no_failure(result)
    local m = assert(matched(result))
    local h = keys(m)
    assert.is_true(h.oom_host_exhausted.likelihood > h.oom_limit_too_low.likelihood)
    assert.equal("oom_host_exhausted", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    local cmds = commands(m)
    assert.matches("ps %-eo pid,rss", cmds)
    assert.is_nil(cmds:find("kubectl", 1, true))           -- no Kubernetes in sight
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "I think the app got OOM killed")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match healthy memory, a config crash loop or a JVM heap error", function()
    assert.is_true(score(run({ "negative/free-m-healthy.txt" }, "service is slow")) < 0.3)
    assert.is_true(score(run({ "negative/describe-pod-config-error.txt" },
                             "billing api keeps crashing")) < 0.3)
    assert.is_true(score(run({ "negative/java-heap-batch.log" })) < 0.3)
  end)
end)
