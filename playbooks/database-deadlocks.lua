-- Database deadlocks and lock contention: transactions wait on each other's locks (the
-- database aborts one: a deadlock) or queue behind one long lock holder or a schema change.
-- Knowledge pack: kb/database-deadlocks.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local function assess(ctx)
  local a = {
    deadlock = count(ctx, "db_deadlock", "deadlock_pg_detail", "deadlock_innodb_report",
                     "deadlock_app_exception"),
    detected = ctx.signal("db_deadlock"),
    detail = count(ctx, "deadlock_pg_detail", "deadlock_innodb_report"),
    app = ctx.signal("deadlock_app_exception"),
    timeout = ctx.signal("deadlock_lock_timeout"),
    waiting = ctx.signal("deadlock_lock_waiting"),
    ddl = ctx.signal("deadlock_ddl_lock"),
    idle_tx = ctx.signal("deadlock_idle_in_tx"),
    words = ctx.said("deadlock", "lock wait", "lock timeout", "blocked queries", "locks",
                     "blocking", "40p01"),
  }
  a.contention = a.timeout + a.waiting + a.ddl
  return a
end

return {
  id = "database-deadlocks",
  title = "Database deadlocks and lock contention",
  version = "1.0.0",
  description = "Transactions abort with deadlock errors (PostgreSQL 40P01, MySQL 1213) or "
    .. "time out waiting for locks (55P03, MySQL 1205). Separates true deadlocks from an "
    .. "inconsistent lock order, a long transaction blocking everyone, and a schema change "
    .. "waiting for an exclusive lock.",
  tags = { "database", "deadlock", "locks", "postgresql", "mysql", "innodb", "lock-wait",
           "transaction" },
  category = "database",
  kb = "database deadlocks lock contention lock wait timeout blocking",
  signals = {
    { name = "deadlock_pg_detail", severity = "error",
      pattern = [[Process [0-9]+ waits for [A-Za-z]+Lock on (transaction|relation|tuple)]]
        .. [[[^;\n]*; blocked by process [0-9]+]],
      description = "PostgreSQL deadlock report: who waits for whom" },
    { name = "deadlock_innodb_report", severity = "error",
      pattern = [[LATEST DETECTED DEADLOCK|WE ROLL BACK TRANSACTION \([0-9]+\)|ERROR 1213 ]]
        .. [[\(40001\)]],
      description = "InnoDB deadlock report (SHOW ENGINE INNODB STATUS) or error 1213" },
    { name = "deadlock_app_exception", severity = "error",
      pattern = [[DeadlockLoserDataAccessException|CannotAcquireLockException|]]
        .. [[LockAcquisitionException|MySQLTransactionRollbackException|]]
        .. [[psycopg2?\.errors\.DeadlockDetected|DeadlockDetected|SQLSTATE\[40001\]|]]
        .. [[SQLSTATE 40P01|\(SQLSTATE 40P01\)]],
      description = "application saw a transaction aborted by a deadlock" },
    { name = "deadlock_lock_timeout", severity = "error",
      pattern = [[canceling statement due to lock timeout|Lock wait timeout exceeded]],
      description = "a statement gave up waiting for a lock (55P03 / MySQL 1205)" },
    { name = "deadlock_lock_waiting", severity = "warning",
      pattern = [[still waiting for [A-Za-z]+Lock on|wait_event_type *[|:]? *Lock\b|]]
        .. [[\| *Lock *\|]],
      description = "sessions waiting on locks (log_lock_waits, pg_stat_activity)" },
    { name = "deadlock_ddl_lock", severity = "warning",
      pattern = [[AccessExclusiveLock|Waiting for table metadata lock]],
      description = "a schema change holds or waits for an exclusive table lock" },
    { name = "deadlock_idle_in_tx", severity = "warning",
      pattern = [[idle in transaction]],
      description = "a session holds its locks idle in transaction" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local d = sig(ctx, "db_deadlock") or sig(ctx, "deadlock_innodb_report")
      or sig(ctx, "deadlock_app_exception")
    if d then
      score = 0.6 + 0.3 * sat(a.deadlock, 4)
      why[#why + 1] = "deadlocks reported: " .. span(d)
    end
    local w = sig(ctx, "deadlock_lock_timeout") or sig(ctx, "deadlock_lock_waiting")
      or sig(ctx, "deadlock_ddl_lock")
    if w then
      if d then score = score + 0.05
      else score = math.max(score, (a.timeout > 0 and 0.5 or 0.35) + 0.2 * sat(a.contention, 5))
      end
      why[#why + 1] = "lock waits / timeouts: " .. span(w)
    end
    if a.words then
      score = score + ((d or w) and 0.1 or 0.25)
      why[#why + 1] = "the user describes deadlocks or lock waits"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "db_deadlock", "Deadlock detected by the database")
      see(ctx, out, "deadlock_pg_detail", "Deadlock report: processes waiting for each other")
      see(ctx, out, "deadlock_innodb_report", "InnoDB deadlock report / error 1213")
      see(ctx, out, "deadlock_app_exception", "Application transactions aborted by deadlocks")
      see(ctx, out, "deadlock_lock_timeout", "Statements cancelled waiting for a lock")
      see(ctx, out, "deadlock_lock_waiting", "Sessions waiting on locks")
      see(ctx, out, "deadlock_ddl_lock", "Exclusive table lock (schema change)")
      see(ctx, out, "deadlock_idle_in_tx", "Sessions idle in transaction (holding locks)")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("database deadlock lock order lock wait timeout blocking pid")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      out:hypothesis { key = "deadlock_lock_order", category = "code",
        statement = "Concurrent transactions update the same rows in a different order, so "
          .. "they deadlock and the database aborts one of them",
        likelihood = a.deadlock > 0 and math.min(0.85, 0.5 + 0.2 * sat(a.deadlock, 3)
          + (a.detail > 0 and 0.1 or 0)) or 0.15 }
      out:hypothesis { key = "deadlock_long_tx_blocker", category = "code",
        statement = "One long or idle-in-transaction session holds row locks and everything "
          .. "else queues behind it (lock timeouts rather than deadlocks)",
        likelihood = (a.timeout + a.waiting > 0)
          and math.min(0.8, 0.4 + 0.2 * sat(a.timeout + a.waiting, 3)
            + (a.idle_tx > 0 and 0.2 or 0) - (a.deadlock > 0 and 0.15 or 0))
          or (a.idle_tx > 0 and 0.3 or 0.1) }
      out:hypothesis { key = "deadlock_ddl_blocking", category = "config",
        statement = "A schema change (ALTER TABLE, VACUUM FULL) waits for an ACCESS EXCLUSIVE "
          .. "lock and every query on the table queues behind it",
        likelihood = a.ddl > 0 and 0.6 or 0.05 }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("deadlock_lock_order", "for", "db_deadlock", "the database detected deadlock cycles")
      ev("deadlock_lock_order", "for", "deadlock_pg_detail",
         "two processes each wait for a lock the other holds")
      ev("deadlock_lock_order", "for", "deadlock_innodb_report", "InnoDB rolled back a victim")
      ev("deadlock_lock_order", "for", "deadlock_app_exception",
         "the application got deadlock aborts")
      ev("deadlock_long_tx_blocker", "for", "deadlock_lock_timeout",
         "statements gave up after waiting for a lock")
      ev("deadlock_long_tx_blocker", "for", "deadlock_lock_waiting", "sessions wait on locks")
      ev("deadlock_long_tx_blocker", "for", "deadlock_idle_in_tx",
         "a session sits idle in transaction")
      ev("deadlock_ddl_blocking", "for", "deadlock_ddl_lock", "exclusive table lock seen")
      if a.deadlock > 0 and a.ddl == 0 then
        local s = sig(ctx, "db_deadlock") or sig(ctx, "deadlock_innodb_report")
          or sig(ctx, "deadlock_app_exception")
        out:evidence { hypothesis = "deadlock_ddl_blocking", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the failures are deadlock cycles between row locks, no exclusive table lock" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local mysql = ctx.signal("deadlock_innodb_report") > 0 or ctx.mentions("innodb", "mysql")
      if mysql then
        out:ask { label = "Read the latest InnoDB deadlock", hypothesis = "deadlock_lock_order",
          command = "mysql -e 'SHOW ENGINE INNODB STATUS\\G' | sed -n "
            .. "'/LATEST DETECTED DEADLOCK/,/TRANSACTIONS/p'",
          why = "the two statements and the order in which they take row locks" }
      end
      out:ask { label = "Who blocks whom right now", hypothesis = "deadlock_long_tx_blocker",
        command = "SELECT blocked.pid, left(blocked.query, 60) AS blocked_query, blocking.pid "
          .. "AS blocking_pid, left(blocking.query, 60) AS blocking_query, now() - "
          .. "blocking.xact_start AS blocking_age, blocking.state FROM pg_stat_activity blocked "
          .. "JOIN LATERAL unnest(pg_blocking_pids(blocked.pid)) AS b(pid) ON true "
          .. "JOIN pg_stat_activity blocking ON blocking.pid = b.pid",
        why = "one blocking pid at the root of a chain is the problem, not the waiters" }
      out:ask { label = "Deadlock counter", hypothesis = "deadlock_lock_order",
        command = "SELECT datname, deadlocks FROM pg_stat_database ORDER BY deadlocks DESC",
        why = "run twice a minute apart: a rising counter confirms ongoing deadlocks" }
      if ctx.signal("deadlock_pg_detail") == 0 and not mysql then
        out:ask { label = "Deadlock details in the server log", hypothesis = "deadlock_lock_order",
          command = "grep -A4 'deadlock detected' /var/log/postgresql/postgresql-*.log | tail -40",
          why = "DETAIL and STATEMENT lines name the two statements and tables" }
      end
      out:ask { label = "Recent schema changes", hypothesis = "deadlock_ddl_blocking",
        command = "SELECT pid, now() - query_start AS age, left(query, 80) FROM pg_stat_activity "
          .. "WHERE query ~* '^(alter|vacuum full|create index|drop|truncate)'",
        why = "a DDL waiting for AccessExclusiveLock blocks every query on the table" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.ddl > 0 and a.contention > a.deadlock then
        local s = sig(ctx, "deadlock_ddl_lock")
        out:conclude { hypothesis = "deadlock_ddl_blocking", severity = "high",
          confidence = 0.6,
          root_cause = "A schema change holds or waits for an ACCESS EXCLUSIVE lock (" .. span(s)
            .. ") and queries on the table queue behind it." }
      elseif a.deadlock > 0 then
        local s = sig(ctx, "deadlock_pg_detail") or sig(ctx, "db_deadlock")
          or sig(ctx, "deadlock_innodb_report") or sig(ctx, "deadlock_app_exception")
        out:conclude { hypothesis = "deadlock_lock_order", severity = "medium",
          confidence = math.min(0.85, 0.55 + 0.2 * sat(a.deadlock, 3)
            + (a.detail > 0 and 0.1 or 0)),
          root_cause = "Concurrent transactions lock the same rows in opposite orders and "
            .. "deadlock (" .. span(s) .. "); the database aborts one each time." }
      elseif a.timeout + a.waiting > 0 then
        local s = sig(ctx, "deadlock_lock_timeout") or sig(ctx, "deadlock_lock_waiting")
        out:conclude { hypothesis = "deadlock_long_tx_blocker", severity = "medium",
          confidence = math.min(0.75, 0.45 + 0.15 * sat(a.timeout + a.waiting, 3)
            + (a.idle_tx > 0 and 0.15 or 0)),
          root_cause = "Statements wait for and time out on locks held by a long-running "
            .. "transaction (" .. span(s) .. "), not a deadlock cycle." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.deadlock > 0 or a.contention == 0 then
        out:mitigate { title = "Retry transactions aborted by a deadlock",
          description = "40P01 / 40001 aborts are safe to retry as a whole transaction; make "
            .. "sure the application does so with a small jittered back-off",
          risk = "low", undo = "remove the retry wrapper" }
        out:solve { title = "Take row locks in one consistent order",
          description = "sort the ids before updating several rows (or SELECT ... ORDER BY id "
            .. "FOR UPDATE first), keep transactions short, index foreign-key columns",
          risk = "low", undo = "revert the change",
          verify = "SELECT datname, deadlocks FROM pg_stat_database  -- stops increasing" }
      end
      if a.timeout + a.waiting + a.idle_tx > 0 then
        out:mitigate { title = "Terminate the root blocker",
          command = "SELECT pg_terminate_backend(<blocking_pid>)",
          description = "only the session at the root of the chain, after checking it is "
            .. "idle in transaction or a runaway batch",
          risk = "medium", undo = "none: its transaction rolls back; rerun it if needed" }
        out:solve { title = "Bound lock waits and idle transactions",
          command = "ALTER ROLE app_user SET lock_timeout = '5s'; ALTER ROLE app_user SET "
            .. "idle_in_transaction_session_timeout = '60s'",
          risk = "low", undo = "ALTER ROLE app_user RESET lock_timeout; ALTER ROLE app_user "
            .. "RESET idle_in_transaction_session_timeout" }
      end
      if a.ddl > 0 then
        out:mitigate { title = "Cancel the waiting schema change",
          command = "SELECT pg_cancel_backend(<ddl_pid>)",
          risk = "low", undo = "rerun the migration off peak with SET lock_timeout = '5s'" }
        out:solve { title = "Run migrations with lock_timeout and non-blocking forms",
          description = "SET lock_timeout with retries; CREATE INDEX CONCURRENTLY",
          risk = "low", undo = "none" }
      end
    end },
  },
}
