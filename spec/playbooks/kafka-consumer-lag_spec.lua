-- playbooks/kafka-consumer-lag.lua against realistic evidence
-- (spec/fixtures/playbooks/kafka-consumer-lag/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "kafka-consumer-lag"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/rebalance-storm", {
      "kafka_poll_timeout",
      "kafka_rebalance",
      "kafka_commit_failed",
    })
    P.assert_signals("positive/poison-message", {
      "kafka_record_error",
      "kafka_partition_lag_high",
    })
  end)

  it("poll timeouts, LeaveGroup and CommitFailedException with lag over 180k", function()
    local m = P.check_positive {
      dir = "positive/rebalance-storm",
      symptom = "invoices are processed hours late",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = {
        "kafka_rebalance_storm", "kafka_consumers_down", "kafka_stuck_partition",
        "kafka_slow_processing",
      },
      conclusion = "kafka_rebalance_storm",
      asks = {
        "kafka-consumer-groups --bootstrap-server <broker>:9092 --describe", "--state --members",
      },
    }
    assert.matches("max%.poll%.interval%.ms", m.conclusion.root_cause)
  end)

  it("one record retried forever while partition 3 falls 120k behind", function()
    local m = P.check_positive {
      dir = "positive/poison-message",
      symptom = "orders from one region are missing",
      min_score = 0.5,
      min_confidence = 0.6,
      hypotheses = { "kafka_rebalance_storm", "kafka_stuck_partition", "kafka_slow_processing" },
      conclusion = "kafka_stuck_partition",
      asks = { "kubectl -n <ns> get deploy,pods" },
    }
    assert.truthy(P.mitigation_with(m, "--reset-offsets"))
  end)

  it("under the threshold: PostgreSQL replication lag (a lag, not Kafka)", function()
    P.check_negative {
      dir = "negative/replication-lag",
      symptom = "lag alert fired",
      first = "postgresql-replication-lag",
    }
  end)

  it("under the threshold: a 5xx burst after a deploy", function()
    P.check_negative {
      dir = "negative/deploy-5xx",
      symptom = "checkout errors",
      first = "bad-deploy-rollback",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("kafka consumer lag keeps growing")
  end)
end)
