-- playbooks/kubernetes-cpu-throttling.lua against realistic evidence
-- (spec/fixtures/playbooks/kubernetes-cpu-throttling/).
local ID = "kubernetes-cpu-throttling"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/alerts.log", "positive/cadvisor.prom",
                           "positive/top-steal.txt" })
    assert.equal(2, ctx.signals.cputhrottle_alert.count)
    assert.equal(1, ctx.signals.cputhrottle_steal.count)
    assert.is_true(ctx.signals.cputhrottle_cfs_metric.count >= 20)
  end)

  it("cpu.stat with 41% of periods throttled at a 0.5 CPU quota: the limit", function()
    local result = P.run({ "positive/cgroup-cpu.txt" }, "checkout p99 spikes")
    local m = P.assert_matched(result, 0.5)
    P.assert_hypotheses(m, {
      "cputhrottle_limit_too_low", "cputhrottle_parallelism", "cputhrottle_noisy_neighbour",
      "cputhrottle_steal",
    })
    P.assert_conclusion(m, "cputhrottle_limit_too_low", 0.75)
    assert.matches("41%", m.conclusion.root_cause, 1, true)
    assert.matches("0.50 CPU", m.conclusion.root_cause, 1, true)
    local cmds = P.command_text(m)
    assert.matches(".resources", cmds, 1, true)
    assert.is_nil(cmds:find("cpu.stat", 1, true))      -- already given
  end)

  it("cAdvisor counters (62% throttled) and the CPUThrottlingHigh alert", function()
    local result = P.run({ "positive/cadvisor.prom", "positive/alerts.log" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "cputhrottle_limit_too_low")
    assert.matches("62%", m.conclusion.root_cause, 1, true)
    assert.matches("mpstat", P.command_text(m), 1, true)
    assert.is_true(#m.mitigations >= 2 and #m.solutions >= 1)
  end)

  it("top with 29% steal: hypervisor contention, not the quota", function()
    local result = P.run({ "positive/top-steal.txt" })
    local m = assert(P.matched(result))
    P.assert_conclusion(m, "cputhrottle_steal")
    assert.matches("cpu.stat", P.command_text(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("I think the pods are CPU throttled")
  end)

  it("does not match an unthrottled cgroup, healthy counters or an idle node", function()
    assert.is_true(P.score(P.run({ "negative/cgroup-cpu-idle.txt" }, "the api is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/cadvisor-healthy.prom" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/top-idle.txt" }, "latency is high")) < 0.3)
  end)
end)
