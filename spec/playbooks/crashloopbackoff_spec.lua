-- playbooks/crashloopbackoff.lua against realistic evidence
-- (spec/fixtures/playbooks/crashloopbackoff/).
local ID = "crashloopbackoff"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/describe-config.txt", "positive/logs-previous.txt",
                           "positive/events-liveness.txt" })
    assert.equal(3, ctx.signals.crashloop_backoff_restart.count)
    assert.equal(1, ctx.signals.crashloop_config_error.count)
    assert.equal(2, ctx.signals.crashloop_liveness_kill.count)
  end)

  it("exit code 1 and a missing variable in the previous log: configuration", function()
    local result = P.run({ "positive/describe-config.txt", "positive/logs-previous.txt" },
                         "ledger api is down after the deploy")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "crashloop_startup_config", "crashloop_oom", "crashloop_liveness", "crashloop_app_crash",
    })
    P.assert_conclusion(m, "crashloop_startup_config", 0.7)
    -- the pod was described and its log given: the asks are events and rollout history
    local cmds = P.command_text(m)
    assert.matches("kubectl get events %-n finance", cmds)
    assert.is_nil(cmds:find("--previous", 1, true))
    assert.is_true(#m.mitigations >= 2)
  end)

  it("CrashLoopBackOff rows and liveness kills in the events: the probe", function()
    local result = P.run({ "positive/get-pods.txt", "positive/events-liveness.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "crashloop_liveness")
    local cmds = P.command_text(m)
    assert.matches("kubectl describe pod storefront%-5d8c7b6a9%-2kq4m %-n web", cmds)
    assert.matches("%-%-previous", cmds)
  end)

  it("a Go panic on every start of a crash-looping worker: an application crash", function()
    local result = P.run({ "positive/get-pods-worker.txt", "positive/logs-panic.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "crashloop_app_crash")
    assert.equal("code", m.conclusion.category)
    assert.matches("kubectl rollout history deploy/<app> -n jobs", P.command_text(m), 1, true)
  end)

  it("the OOMKilled crash loop of the shared evidence is told apart", function()
    local m = assert(P.matched(P.run_paths({
      "spec/fixtures/evidence/cmd-kubectl-describe-crashloop.txt" })))
    P.assert_conclusion(m, "crashloop_oom")
    -- an OOM kill leaves nothing in the log: memory against the limit is asked for instead
    local cmds = P.command_text(m)
    assert.matches("kubectl top pod checkout-7d9f8b6c5-x2x9z -n shop", cmds, 1, true)
    assert.is_nil(cmds:find("--previous", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("my pod keeps restarting")
  end)

  it("does not match image pull errors, a healthy pod or a planned restart", function()
    assert.is_true(P.score(P.run({ "negative/get-pods-imagepull.txt" }, "pods do not start")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/describe-healthy.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/journal-planned-restart.txt" })) < 0.3)
  end)
end)
