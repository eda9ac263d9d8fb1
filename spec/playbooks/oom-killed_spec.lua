-- playbooks/oom-killed.lua against realistic evidence (spec/fixtures/playbooks/oom-killed/).
local ID = "oom-killed"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/dmesg-memcg.txt", "positive/journal-host-oom.txt",
                           "positive/describe-pod-oomkilled.txt" })
    assert.is_true(ctx.signals.oom_memcg_constraint.count >= 1)
    assert.equal(1, ctx.signals.oom_host_constraint.count)
    assert.equal(2, ctx.signals.oom_exit_137.count)   -- Exit Code: 137, status=9/KILL
    assert.equal(2, ctx.signals.oom_systemd_unit.count)
  end)

  it("OOMKilled pod and a CONSTRAINT_MEMCG kernel report: the container limit", function()
    local result = P.run({ "positive/describe-pod-oomkilled.txt", "positive/dmesg-memcg.txt" },
                         "payments pods keep restarting")
    local m = P.assert_matched(result, 0.7)
    local h = P.assert_hypotheses(m, {
      "oom_limit_too_low", "oom_memory_leak", "oom_host_exhausted",
    })
    assert.is_true(h.oom_limit_too_low.likelihood > h.oom_host_exhausted.likelihood)
    P.assert_conclusion(m, "oom_limit_too_low", 0.7)
    local cmds = P.command_text(m)
    assert.matches("kubectl top pod", cmds)
    assert.is_nil(cmds:find("dmesg", 1, true))             -- the kernel report was given
    assert.is_true(#m.mitigations > 0)
    assert.matches("set resources", m.mitigations[1].command)
  end)

  it("host-wide OOM (CONSTRAINT_NONE) on a plain host with memory saturated", function()
    local result = P.run({ "positive/journal-host-oom.txt", "positive/free-m.txt" },
                         "postgres died overnight")
    local m = P.assert_matched(result)
    local h = P.keys(m)
    assert.is_true(h.oom_host_exhausted.likelihood > h.oom_limit_too_low.likelihood)
    P.assert_conclusion(m, "oom_host_exhausted", 0.7)
    local cmds = P.command_text(m)
    assert.matches("ps %-eo pid,rss", cmds)
    assert.is_nil(cmds:find("kubectl", 1, true))           -- no Kubernetes in sight
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("I think the app got OOM killed")
  end)

  it("does not match healthy memory, a config crash loop or a JVM heap error", function()
    assert.is_true(P.score(P.run({ "negative/free-m-healthy.txt" }, "service is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/describe-pod-config-error.txt" },
                                 "billing api keeps crashing")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/java-heap-batch.log" })) < 0.3)
  end)
end)
