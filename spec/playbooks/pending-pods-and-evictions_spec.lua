-- playbooks/pending-pods-and-evictions.lua against realistic evidence
-- (spec/fixtures/playbooks/pending-pods-and-evictions/).
local ID = "pending-pods-and-evictions"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/describe-pending.txt", "positive/events-taint.txt",
                           "positive/describe-evicted.txt" })
    assert.is_true(ctx.signals.pending_failed_scheduling.count >= 2)
    assert.equal(1, ctx.signals.pending_insufficient_resources.count)
    assert.equal(1, ctx.signals.pending_autoscaler_limit.count)
    assert.equal(1, ctx.signals.pending_untolerated_taint.count)
    assert.equal(1, ctx.signals.pending_affinity_mismatch.count)
    assert.equal(2, ctx.signals.pending_evict_disk.count)
  end)

  it("Insufficient cpu/memory on all 12 nodes and the autoscaler at max: capacity", function()
    local result = P.run({ "positive/describe-pending.txt" }, "the indexer will not start")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "pending_capacity", "pending_constraints", "pending_volume", "pending_node_pressure",
    })
    P.assert_conclusion(m, "pending_capacity", 0.7)
    assert.matches("Allocated resources", P.command_text(m), 1, true)
  end)

  it("taints and a node selector reject all 6 nodes: placement constraints", function()
    local result = P.run({ "positive/events-taint.txt" })
    local m = P.assert_matched(result)
    local h = P.keys(m)
    assert.is_true(h.pending_constraints.likelihood > h.pending_capacity.likelihood)
    P.assert_conclusion(m, "pending_constraints")
    assert.matches("TAINTS", P.command_text(m), 1, true)
  end)

  it("Evicted pods, node low on ephemeral storage: node pressure", function()
    local result = P.run({ "positive/get-pods-evicted.txt", "positive/describe-evicted.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "pending_node_pressure")
    assert.matches("disk", m.conclusion.root_cause)
    local cmds = P.command_text(m)
    assert.matches("reason=Evicted", cmds, 1, true)
    assert.is_nil(cmds:find("Allocated resources", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("my pods are pending")
  end)

  it("does not match a Pending pod that waits on its image, running pods or normal events",
     function()
    assert.is_true(P.score(P.run({ "negative/describe-pending-imagepull.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/get-pods-running.txt" }, "search is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/events-normal.txt" })) < 0.3)
  end)
end)
