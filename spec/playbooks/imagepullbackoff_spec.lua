-- playbooks/imagepullbackoff.lua against realistic evidence
-- (spec/fixtures/playbooks/imagepullbackoff/).
local ID = "imagepullbackoff"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/describe-notfound.txt", "positive/events-ratelimit.txt",
                           "positive/kubelet-auth.log" })
    assert.equal(1, ctx.signals.imagepull_not_found.count)
    assert.equal(2, ctx.signals.imagepull_rate_limit.count)
    assert.equal(2, ctx.signals.imagepull_unauthorized.count)
    assert.is_true(ctx.signals.imagepull_failed_pull.count >= 5)
  end)

  it("NotFound from the registry: the tag does not exist", function()
    local result = P.run({ "positive/describe-notfound.txt" }, "the reports rollout is stuck")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "imagepull_bad_reference", "imagepull_credentials", "imagepull_rate_limited",
      "imagepull_registry_unreachable",
    })
    P.assert_conclusion(m, "imagepull_bad_reference", 0.8)
    assert.matches("reports:2.7.1", m.conclusion.root_cause, 1, true)
    assert.matches("docker manifest inspect registry.example.com/analytics/reports:2.7.1",
                   P.command_text(m), 1, true)
  end)

  it("toomanyrequests in the events: the registry rate limit", function()
    local result = P.run({ "positive/get-pods-pull.txt", "positive/events-ratelimit.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "imagepull_rate_limited")
    assert.is_true(#m.mitigations >= 2)
    local cmds = P.command_text(m)
    assert.matches("ratelimit", cmds, 1, true)
    assert.is_nil(cmds:find("manifest inspect", 1, true))   -- the tag is not in question
  end)

  it("no basic auth credentials in the kubelet log: credentials, and asks for the events",
     function()
    local result = P.run({ "positive/kubelet-auth.log" })
    local m = assert(P.matched(result))
    P.assert_conclusion(m, "imagepull_credentials")
    local cmds = P.command_text(m)
    assert.matches("kubectl describe pod", cmds, 1, true)
    assert.matches("imagePullSecrets", cmds, 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("pods are stuck in ImagePullBackOff")
  end)

  it("does not match healthy pulls, a crash loop or a service registry log", function()
    assert.is_true(P.score(P.run({ "negative/events-healthy-pulls.txt" }, "deploy is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/get-pods-crashloop.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/app-registry-word.log" }, "orders time out")) < 0.3)
  end)
end)
