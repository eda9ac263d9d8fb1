-- playbooks/http-5xx-spike.lua against realistic evidence
-- (spec/fixtures/playbooks/http-5xx-spike/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "http-5xx-spike"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/deploy-500s", {
      "http5xx_500",
      "http5xx_deploy",
    })
    P.assert_signals("positive/oom-502s", {
      "http5xx_upstream_closed",
      "http5xx_upstream_refused",
      "http5xx_container_restart",
    })
    P.assert_signals("positive/upstream-timeouts", {
      "http5xx_upstream_timeout",
    })
  end)

  it("500s on checkout routes right after a rollout, with NullPointerExceptions", function()
    local m = P.check_positive {
      dir = "positive/deploy-500s",
      symptom = "checkout error rate jumped",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = {
        "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow",
        "http5xx_no_backends",
      },
      conclusion = "http5xx_app_errors",
      asks = { "grep -c ' 5[0-9][0-9] '", "get endpoints" },
      first = false,
    }
    assert.truthy(P.mitigation_with(m, "rollout undo"))
  end)

  it("502s with upstream closed/refused and an OOMKilled backend", function()
    local m = P.check_positive {
      dir = "positive/oom-502s",
      symptom = "reports API gives bad gateway",
      min_score = 0.6,
      min_confidence = 0.7,
      first = false,
      hypotheses = { "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow" },
      conclusion = "http5xx_backend_crash",
      asks = { "rollout history" },
    }
    assert.matches("502 13", m.conclusion.root_cause)
  end)

  it("504s with upstream timed out in the nginx error log: a slow backend", function()
    local m = P.check_positive {
      dir = "positive/upstream-timeouts",
      symptom = "search is failing",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = {
        "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow",
        "http5xx_no_backends",
      },
      conclusion = "http5xx_upstream_slow",
      asks = { "rollout history" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: DNS lookup timeouts with 200 responses", function()
    P.check_negative {
      dir = "negative/dns-timeouts",
      symptom = "payments are slow",
      first = "dns-resolution-failures",
    }
  end)

  it("under the threshold: healthy JSON access log (200, 304, 404)", function()
    P.check_negative { dir = "negative/healthy-traffic", symptom = "is the items API healthy?" }
  end)

  it("scores the user's words alone low", function()
    P.check_words("we have a spike of 502 errors")
  end)
end)
