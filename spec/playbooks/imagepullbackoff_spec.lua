-- playbooks/imagepullbackoff.lua against realistic evidence
-- (spec/fixtures/playbooks/imagepullbackoff/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "imagepullbackoff"
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

describe("playbook imagepullbackoff", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/describe-notfound.txt", "positive/events-ratelimit.txt",
                         "positive/kubelet-auth.log" })
    assert.equal(1, ctx.signals.imagepull_not_found.count)
    assert.equal(2, ctx.signals.imagepull_rate_limit.count)
    assert.equal(2, ctx.signals.imagepull_unauthorized.count)
    assert.is_true(ctx.signals.imagepull_failed_pull.count >= 5)
  end)

  it("NotFound from the registry: the tag does not exist", function()
    local result = run({ "positive/describe-notfound.txt" }, "the reports rollout is stuck")
    no_failure(result)
    local m = assert(matched(result), "imagepullbackoff not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.imagepull_bad_reference and h.imagepull_credentials
                  and h.imagepull_rate_limited and h.imagepull_registry_unreachable)
    assert.equal("imagepull_bad_reference", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.8)
    assert.matches("reports:2.7.1", m.conclusion.root_cause, 1, true)
    assert.matches("docker manifest inspect registry.example.com/analytics/reports:2.7.1",
                   commands(m), 1, true)
  end)

  it("toomanyrequests in the events: the registry rate limit", function()
    local result = run({ "positive/get-pods-pull.txt", "positive/events-ratelimit.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("imagepull_rate_limited", m.conclusion.hypothesis)
    assert.is_true(#m.mitigations >= 2)
    local cmds = commands(m)
    assert.matches("ratelimit", cmds, 1, true)
    assert.is_nil(cmds:find("manifest inspect", 1, true))   -- the tag is not in question
  end)

  it("no basic auth credentials in the kubelet log: credentials, and asks for the events",
     function()
    local result = run({ "positive/kubelet-auth.log" })
    local m = assert(matched(result))
    assert.equal("imagepull_credentials", m.conclusion.hypothesis)
    local cmds = commands(m)
    assert.matches("kubectl describe pod", cmds, 1, true)
    assert.matches("imagePullSecrets", cmds, 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "pods are stuck in ImagePullBackOff")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match healthy pulls, a crash loop or a service registry log", function()
    assert.is_true(score(run({ "negative/events-healthy-pulls.txt" }, "deploy is slow")) < 0.3)
    assert.is_true(score(run({ "negative/get-pods-crashloop.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/app-registry-word.log" }, "orders time out")) < 0.3)
  end)
end)
