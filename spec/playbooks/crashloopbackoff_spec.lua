-- playbooks/crashloopbackoff.lua against realistic evidence
-- (spec/fixtures/playbooks/crashloopbackoff/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "crashloopbackoff"
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

describe("playbook crashloopbackoff", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/describe-config.txt", "positive/logs-previous.txt",
                         "positive/events-liveness.txt" })
    assert.equal(3, ctx.signals.crashloop_backoff_restart.count)
    assert.equal(1, ctx.signals.crashloop_config_error.count)
    assert.equal(2, ctx.signals.crashloop_liveness_kill.count)
  end)

  it("exit code 1 and a missing variable in the previous log: configuration", function()
    local result = run({ "positive/describe-config.txt", "positive/logs-previous.txt" },
                       "ledger api is down after the deploy")
    no_failure(result)
    local m = assert(matched(result), "crashloopbackoff not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.crashloop_startup_config and h.crashloop_oom and h.crashloop_liveness
                  and h.crashloop_app_crash)
    assert.equal("crashloop_startup_config", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    -- the pod was described and its log given: the asks are events and rollout history
    local cmds = commands(m)
    assert.matches("kubectl get events %-n finance", cmds)
    assert.is_nil(cmds:find("--previous", 1, true))
    assert.is_true(#m.mitigations >= 2)
  end)

  it("CrashLoopBackOff rows and liveness kills in the events: the probe", function()
    local result = run({ "positive/get-pods.txt", "positive/events-liveness.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("crashloop_liveness", m.conclusion.hypothesis)
    local cmds = commands(m)
    assert.matches("kubectl describe pod storefront%-5d8c7b6a9%-2kq4m %-n web", cmds)
    assert.matches("%-%-previous", cmds)
  end)

  it("a Go panic on every start of a crash-looping worker: an application crash", function()
    local result = run({ "positive/get-pods-worker.txt", "positive/logs-panic.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("crashloop_app_crash", m.conclusion.hypothesis)
    assert.equal("code", m.conclusion.category)
    assert.matches("kubectl rollout history deploy/<app> -n jobs", commands(m), 1, true)
  end)

  it("the OOMKilled crash loop of the shared evidence is told apart", function()
    local ctx = assert(context.from_files({
      "spec/fixtures/evidence/cmd-kubectl-describe-crashloop.txt" }, {}))
    local m = assert(matched(runner.run(ctx)))
    assert.equal("crashloop_oom", m.conclusion.hypothesis)
    -- an OOM kill leaves nothing in the log: memory against the limit is asked for instead
    local cmds = commands(m)
    assert.matches("kubectl top pod checkout-7d9f8b6c5-x2x9z -n shop", cmds, 1, true)
    assert.is_nil(cmds:find("--previous", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "my pod keeps restarting")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match image pull errors, a healthy pod or a planned restart", function()
    assert.is_true(score(run({ "negative/get-pods-imagepull.txt" }, "pods do not start")) < 0.3)
    assert.is_true(score(run({ "negative/describe-healthy.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/journal-planned-restart.txt" })) < 0.3)
  end)
end)
