-- playbooks/upstream-rate-limiting.lua against realistic evidence
-- (spec/fixtures/playbooks/upstream-rate-limiting/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "upstream-rate-limiting"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/github-retry-storm", {
      "ratelimit_provider",
      "ratelimit_retrying",
      "ratelimit_retry_after",
      "ratelimit_remaining_zero",
    })
    P.assert_signals("positive/stripe-backfill-quota", {
      "ratelimit_429_status",
      "ratelimit_batch_job",
      "ratelimit_remaining_zero",
    })
    P.assert_signals("positive/aws-throttling", {
      "ratelimit_provider",
    })
  end)

  it("GitHub secondary rate limit with immediate retries: a retry storm", function()
    local m = P.check_positive {
      dir = "positive/github-retry-storm",
      symptom = "repository sync is stuck",
      min_score = 0.7,
      min_confidence = 0.6,
      hypotheses = {
        "ratelimit_retry_storm", "ratelimit_quota_exceeded", "ratelimit_inbound_limiter",
      },
      conclusion = "ratelimit_retry_storm",
      asks = { "grep -c ' 429 '", "x-ratelimit" },
    }
    assert.matches("Retry%-After", m.conclusion.root_cause)
  end)

  it("Stripe 429 rate_limit while an invoice backfill shares the key", function()
    local m = P.check_positive {
      dir = "positive/stripe-backfill-quota",
      symptom = "checkout payments fail",
      min_score = 0.7,
      min_confidence = 0.65,
      hypotheses = { "ratelimit_retry_storm", "ratelimit_quota_exceeded" },
      conclusion = "ratelimit_quota_exceeded",
      asks = { "kubectl get cronjob,job -A" },
    }
    assert.matches("batch job", m.conclusion.root_cause)
  end)

  it("DynamoDB ThrottlingException and SQS RequestLimitExceeded", function()
    local m = P.check_positive {
      dir = "positive/aws-throttling",
      symptom = "ingest lambda drops records",
      min_score = 0.6,
      min_confidence = 0.55,
      hypotheses = { "ratelimit_retry_storm", "ratelimit_quota_exceeded" },
      conclusion = "ratelimit_quota_exceeded",
      asks = { "http_client_retries_total" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: a 5xx burst caused by a deploy", function()
    P.check_negative {
      dir = "negative/deploy-5xx",
      symptom = "checkout errors since the release",
      first = "bad-deploy-rollback",
    }
  end)

  it("under the threshold: 429s from our own nginx limit_req", function()
    P.check_negative {
      dir = "negative/inbound-limit-req",
      symptom = "clients get 429 too many requests on login",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("the partner API is throttling us, rate limit")
  end)
end)
