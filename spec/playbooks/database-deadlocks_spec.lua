-- playbooks/database-deadlocks.lua against realistic evidence
-- (spec/fixtures/playbooks/database-deadlocks/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "database-deadlocks"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/pg-deadlock", {
      "deadlock_pg_detail",
      "deadlock_app_exception",
      "deadlock_lock_waiting",
    })
    P.assert_signals("positive/mysql-innodb", {
      "deadlock_innodb_report",
    })
    P.assert_signals("positive/lock-timeouts", {
      "deadlock_lock_timeout",
      "deadlock_lock_waiting",
      "deadlock_idle_in_tx",
    })
  end)

  it("PostgreSQL deadlock reports and Spring deadlock loser exceptions", function()
    local m = P.check_positive {
      dir = "positive/pg-deadlock",
      symptom = "stock reservations fail with 500 now and then",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = { "deadlock_lock_order", "deadlock_long_tx_blocker", "deadlock_ddl_blocking" },
      conclusion = "deadlock_lock_order",
      asks = { "pg_blocking_pids", "SELECT datname, deadlocks FROM pg_stat_database" },
    }
    assert.matches("opposite orders", m.conclusion.root_cause)
  end)

  it("InnoDB LATEST DETECTED DEADLOCK and Go errors 1213", function()
    local m = P.check_positive {
      dir = "positive/mysql-innodb",
      symptom = "money transfers fail intermittently",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "deadlock_lock_order", "deadlock_long_tx_blocker", "deadlock_ddl_blocking" },
      conclusion = "deadlock_lock_order",
      asks = { "SHOW ENGINE INNODB STATUS" },
    }
    assert.truthy(m)
  end)

  it("lock timeouts behind a session idle in transaction", function()
    local m = P.check_positive {
      dir = "positive/lock-timeouts",
      symptom = "invoice updates hang and fail",
      min_score = 0.5,
      min_confidence = 0.6,
      hypotheses = { "deadlock_lock_order", "deadlock_long_tx_blocker", "deadlock_ddl_blocking" },
      conclusion = "deadlock_long_tx_blocker",
      asks = { "pg_blocking_pids" },
    }
    assert.truthy(P.mitigation_with(m, "pg_terminate_backend"))
  end)

  it("under the threshold: too many clients (database, not locks)", function()
    P.check_negative {
      dir = "negative/too-many-clients",
      symptom = "orders API is down",
      first = "database-connection-exhaustion",
    }
  end)

  it("under the threshold: statement timeouts on slow analytics queries", function()
    P.check_negative { dir = "negative/statement-timeout", symptom = "reports time out" }
  end)

  it("scores the user's words alone low", function()
    P.check_words("we see deadlocks in the database")
  end)
end)
