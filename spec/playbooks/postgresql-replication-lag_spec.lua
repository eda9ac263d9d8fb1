-- playbooks/postgresql-replication-lag.lua against realistic evidence
-- (spec/fixtures/playbooks/postgresql-replication-lag/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "postgresql-replication-lag"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/wal-removed", {
      "pgrepl_wal_removed",
      "pgrepl_stream_lost",
      "pgrepl_lag_view",
    })
    P.assert_signals("positive/write-burst", {
      "pgrepl_bulk_write",
    })
    P.assert_signals("positive/recovery-conflicts", {
      "pgrepl_recovery_conflict",
      "pgrepl_lag_view",
    })
  end)

  it("the replica asks for a WAL segment already removed: it must be rebuilt", function()
    local m = P.check_positive {
      dir = "positive/wal-removed",
      symptom = "the read replica serves stale data",
      min_score = 0.7,
      min_confidence = 0.8,
      hypotheses = { "pgrepl_replica_disconnected", "pgrepl_write_burst", "pgrepl_replay_blocked" },
      conclusion = "pgrepl_replica_disconnected",
      asks = { "pg_stat_replication", "pg_replication_slots" },
    }
    assert.matches("rebuilt", m.conclusion.root_cause)
    assert.truthy(P.solution_with(m, "pg_basebackup"))
  end)

  it("lag metric climbing with a WAL burst from a bulk COPY on the primary", function()
    local m = P.check_positive {
      dir = "positive/write-burst",
      symptom = "replica lag alert",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "pgrepl_replica_disconnected", "pgrepl_write_burst", "pgrepl_replay_blocked" },
      conclusion = "pgrepl_write_burst",
      asks = { "pg_last_wal_replay_lsn" },
    }
    assert.matches("pg_replication_lag_seconds", m.conclusion.root_cause)
  end)

  it("recovery conflicts on an analytics replica 900 s behind", function()
    local m = P.check_positive {
      dir = "positive/recovery-conflicts",
      symptom = "dashboards show old numbers",
      min_score = 0.6,
      min_confidence = 0.5,
      hypotheses = { "pgrepl_replica_disconnected", "pgrepl_write_burst", "pgrepl_replay_blocked" },
      conclusion = "pgrepl_replay_blocked",
      asks = { "pg_stat_replication" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: Kafka consumer lag (a lag, not replication)", function()
    P.check_negative {
      dir = "negative/kafka-lag",
      symptom = "consumer lag keeps growing on the invoices topic",
      first = "kafka-consumer-lag",
    }
  end)

  it("under the threshold: a PostgreSQL deadlock", function()
    P.check_negative {
      dir = "negative/deadlock",
      symptom = "stock reservations fail",
      first = "database-deadlocks",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("the replica is behind, replication lag")
  end)
end)
