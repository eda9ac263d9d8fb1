-- playbooks/pending-pods-and-evictions.lua against realistic evidence
-- (spec/fixtures/playbooks/pending-pods-and-evictions/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "pending-pods-and-evictions"
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

describe("playbook pending-pods-and-evictions", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/describe-pending.txt", "positive/events-taint.txt",
                         "positive/describe-evicted.txt" })
    assert.is_true(ctx.signals.pending_failed_scheduling.count >= 2)
    assert.equal(1, ctx.signals.pending_insufficient_resources.count)
    assert.equal(1, ctx.signals.pending_autoscaler_limit.count)
    assert.equal(1, ctx.signals.pending_untolerated_taint.count)
    assert.equal(1, ctx.signals.pending_affinity_mismatch.count)
    assert.equal(2, ctx.signals.pending_evict_disk.count)
  end)

  it("Insufficient cpu/memory on all 12 nodes and the autoscaler at max: capacity", function()
    local result = run({ "positive/describe-pending.txt" }, "the indexer will not start")
    no_failure(result)
    local m = assert(matched(result), "pending-pods-and-evictions not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.pending_capacity and h.pending_constraints and h.pending_volume
                  and h.pending_node_pressure)
    assert.equal("pending_capacity", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    assert.matches("Allocated resources", commands(m), 1, true)
  end)

  it("taints and a node selector reject all 6 nodes: placement constraints", function()
    local result = run({ "positive/events-taint.txt" })
    no_failure(result)
    local m = assert(matched(result))
    local h = keys(m)
    assert.is_true(h.pending_constraints.likelihood > h.pending_capacity.likelihood)
    assert.equal("pending_constraints", m.conclusion.hypothesis)
    assert.matches("TAINTS", commands(m), 1, true)
  end)

  it("Evicted pods, node low on ephemeral storage: node pressure", function()
    local result = run({ "positive/get-pods-evicted.txt", "positive/describe-evicted.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("pending_node_pressure", m.conclusion.hypothesis)
    assert.matches("disk", m.conclusion.root_cause)
    local cmds = commands(m)
    assert.matches("reason=Evicted", cmds, 1, true)
    assert.is_nil(cmds:find("Allocated resources", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "my pods are pending")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match a Pending pod that waits on its image, running pods or normal events",
     function()
    assert.is_true(score(run({ "negative/describe-pending-imagepull.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/get-pods-running.txt" }, "search is slow")) < 0.3)
    assert.is_true(score(run({ "negative/events-normal.txt" })) < 0.3)
  end)
end)
