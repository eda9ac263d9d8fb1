-- playbooks/bad-deploy-rollback.lua against realistic evidence
-- (spec/fixtures/playbooks/bad-deploy-rollback/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "bad-deploy-rollback"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/regression-500s", {
      "deploy_rollout",
    })
    P.assert_signals("positive/schema-mismatch", {
      "deploy_migration",
      "deploy_schema_mismatch",
    })
  end)

  it("500s and NullPointerExceptions right after the checkout rollout", function()
    local m = P.check_positive {
      dir = "positive/regression-500s",
      symptom = "checkout broke this morning",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = {
        "deploy_code_regression", "deploy_schema_mismatch", "deploy_config_change",
        "deploy_rollout_stuck",
      },
      conclusion = "deploy_code_regression",
      asks = { "kubectl -n <ns> rollout history deploy/<app>", "app.kubernetes.io/version" },
    }
    assert.truthy(P.mitigation_with(m, "rollout undo"))
  end)

  it("a Flyway rename migration and 'column does not exist' from running code", function()
    local m = P.check_positive {
      dir = "positive/schema-mismatch",
      symptom = "customer pages fail",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = { "deploy_code_regression", "deploy_schema_mismatch" },
      conclusion = "deploy_schema_mismatch",
      asks = { "flyway_schema_history" },
    }
    -- no plain code rollback over an irreversible migration
    assert.is_nil(P.mitigation_with(m, "rollout undo"))
  end)

  it("under the threshold: a healthy rollout (deploy, nothing broken)", function()
    P.check_negative {
      dir = "negative/healthy-rollout",
      symptom = "we deployed catalog 2.3, all good?",
    }
  end)

  it("under the threshold: 502s from an OOM-killed backend, no deploy", function()
    P.check_negative {
      dir = "negative/oom-502s",
      symptom = "reports API gives bad gateway",
      first = "http-5xx-spike",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("errors started after the release, should we roll back?")
  end)
end)
