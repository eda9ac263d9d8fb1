-- playbooks/database-connection-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/database-connection-exhaustion/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "database-connection-exhaustion"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/pg-server-limit", {
      "dbconn_pool_timeout",
      "dbconn_pool_saturated",
    })
    P.assert_signals("positive/idle-in-transaction", {
      "dbconn_pool_timeout",
      "dbconn_idle_in_tx",
    })
    P.assert_signals("positive/mysql-pgbouncer", {
      "dbconn_pgbouncer_limit",
    })
  end)

  it("too many clients and HikariCP timeouts: connection budget exceeded", function()
    local m = P.check_positive {
      dir = "positive/pg-server-limit",
      symptom = "orders API returns 500s, checkout is down",
      min_score = 0.7,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx", "dbconn_slow_queries" },
      conclusion = "dbconn_budget_exceeded",
      asks = {
        "SELECT count(*), state FROM pg_stat_activity GROUP BY state", "SHOW max_connections",
      },
    }
    assert.matches("connection limit", m.conclusion.root_cause)
    assert.truthy(P.finding_at(m, "orders-api.log"))
  end)

  it("QueuePool timeouts and sessions idle in transaction: connections held", function()
    local m = P.check_positive {
      dir = "positive/idle-in-transaction",
      symptom = "invoice workers time out",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx", "dbconn_slow_queries" },
      conclusion = "dbconn_held_idle_in_tx",
      asks = { "SHOW max_connections" },
    }
    assert.matches("pg_stat_activity.txt", m.conclusion.root_cause)
    -- the pg_stat_activity output was given: it is not asked for again
    for _, c in ipairs(P.commands(m)) do
      assert.is_nil(c:find("GROUP BY state", 1, true))
    end
  end)

  it("MySQL error 1040 and PgBouncer max_client_conn", function()
    local m = P.check_positive {
      dir = "positive/mysql-pgbouncer",
      symptom = "catalog API errors",
      min_score = 0.7,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx" },
      conclusion = "dbconn_budget_exceeded",
      asks = { "SHOW STATUS LIKE 'Threads_connected'" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: a PostgreSQL deadlock (database, not connections)", function()
    P.check_negative {
      dir = "negative/deadlock",
      symptom = "the inventory service fails to reserve stock",
      first = "database-deadlocks",
    }
  end)

  it("under the threshold: PostgreSQL PANIC on a full disk", function()
    P.check_negative { dir = "negative/pg-disk-full", symptom = "postgres keeps restarting" }
  end)

  it("scores the user's words alone low", function()
    P.check_words("we are out of database connections, too many clients")
  end)
end)
