-- playbooks/credential-rotation-auth-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/credential-rotation-auth-failures/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "credential-rotation-auth-failures"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/pg-password-after-rotation", {
      "cred_db_password",
      "cred_rotation_event",
    })
    P.assert_signals("positive/aws-expired-token", {
      "cred_token_expired",
    })
    P.assert_signals("positive/iam-permission-removed", {
      "cred_forbidden",
    })
  end)

  it("password authentication failed right after a secret rotation", function()
    local m = P.check_positive {
      dir = "positive/pg-password-after-rotation",
      symptom = "orders API lost its database",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = { "cred_stale_secret", "cred_expired_or_revoked", "cred_permission_change" },
      conclusion = "cred_stale_secret",
      asks = { "custom-columns=NAME:.metadata.name,START:.status.startTime", "psql -h" },
    }
    assert.truthy(P.mitigation_with(m, "rollout restart"))
  end)

  it("boto3 ExpiredToken on every S3 call: the token is not refreshed", function()
    local m = P.check_positive {
      dir = "positive/aws-expired-token",
      symptom = "daily export stopped uploading",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "cred_stale_secret", "cred_expired_or_revoked", "cred_permission_change" },
      conclusion = "cred_expired_or_revoked",
      asks = { "aws sts get-caller-identity" },
    }
    assert.truthy(m)
  end)

  it("S3 AccessDenied 'not authorized to perform': a permission change", function()
    local m = P.check_positive {
      dir = "positive/iam-permission-removed",
      symptom = "daily export fails",
      min_score = 0.4,
      min_confidence = 0.5,
      hypotheses = { "cred_stale_secret", "cred_expired_or_revoked", "cred_permission_change" },
      conclusion = "cred_permission_change",
      asks = { "aws sts get-caller-identity" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: filesystem permission denied (EACCES)", function()
    P.check_negative {
      dir = "negative/file-permissions",
      symptom = "uploader cannot write its spool",
    }
  end)

  it("under the threshold: GitHub 403 secondary rate limit (throttling)", function()
    P.check_negative {
      dir = "negative/github-rate-limit",
      symptom = "repository sync is stuck",
      first = "upstream-rate-limiting",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("authentication fails since the password rotation")
  end)
end)
