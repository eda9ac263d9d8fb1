-- Database connection exhaustion: the database refuses new connections (max_connections,
-- PgBouncer limits) or the application pool has no free connection and requests wait.
-- Knowledge pack: kb/database-connection-exhaustion.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

-- What the evidence says, computed once per step from ctx (cheap).
local function assess(ctx)
  local a = {
    server = count(ctx, "postgres_too_many_clients", "mysql_too_many_connections",
                   "dbconn_pgbouncer_limit"),
    pool = count(ctx, "dbconn_pool_timeout", "dbconn_pool_saturated"),
    idle = count(ctx, "dbconn_idle_in_tx"),
    leak = count(ctx, "dbconn_leak"),
    slow = count(ctx, "dbconn_slow_query", "dbconn_lock_wait"),
    words = ctx.said("too many connections", "too many clients", "max_connections",
                     "connection pool", "pool exhausted", "connection limit",
                     "out of connections", "hikari", "pgbouncer", "queuepool"),
  }
  a.any = a.server + a.pool > 0
  return a
end

return {
  id = "database-connection-exhaustion",
  title = "Database connection exhaustion",
  version = "1.0.0",
  description = "The database refuses new connections because it reached max_connections (or "
    .. "a PgBouncer limit), or the application's connection pool has no free connection and "
    .. "requests time out waiting for one. Separates a connection budget overrun, sessions "
    .. "held idle in transaction (leaks) and slow queries draining the pool.",
  tags = { "database", "postgresql", "mysql", "connections", "max-connections",
           "connection-pool", "pgbouncer", "hikaricp" },
  category = "database",
  kb = "database connection exhaustion too many clients max_connections connection pool",
  signals = {
    { name = "dbconn_pool_timeout", severity = "error",
      pattern = [[Connection is not available, request timed out after|QueuePool limit of ]]
        .. [[size [0-9]+ overflow|Timeout waiting for idle object|Unable to acquire JDBC ]]
        .. [[Connection|timeout exceeded when trying to connect|Timed out waiting for ]]
        .. [[(a )?connection from (the )?pool|pool timed out while waiting for an open conn]],
      description = "application connection pool empty: a request timed out waiting" },
    { name = "dbconn_pool_saturated", severity = "warning",
      pattern = [[Pool stats \(total=[0-9]+, active=[0-9]+, idle=0, waiting=[1-9]|]]
        .. [=[hikaricp_connections_pending\{[^}]*\} [1-9]]=],
      description = "HikariCP: no idle connection and threads waiting" },
    { name = "dbconn_pgbouncer_limit", severity = "critical",
      pattern = [[no more connections allowed \((max_client_conn|max_db_connections|]]
        .. [[max_user_connections)\)]],
      description = "PgBouncer refused a client: limit reached" },
    { name = "dbconn_idle_in_tx", severity = "warning",
      pattern = [[idle in transaction|idle-in-transaction (session )?timeout]],
      description = "sessions idle in transaction (pg_stat_activity, server log)" },
    { name = "dbconn_leak", severity = "error",
      pattern = [[Connection leak detection triggered|[Ll]eaked connection|unclosed ]]
        .. [[connection|connection (was )?not (returned|closed)]],
      description = "pool leak detection: a connection was not returned" },
    { name = "dbconn_slow_query", severity = "warning",
      pattern = [[duration: [0-9]{4,}(\.[0-9]+)? ms +(statement|execute)|Query_time: ]]
        .. [=[[1-9][0-9]*\.]=],
      description = "slow queries (PostgreSQL log_min_duration_statement, MySQL slow log)" },
    { name = "dbconn_lock_wait", severity = "warning",
      pattern = [[still waiting for [A-Za-z]+Lock on]],
      description = "sessions waiting on locks (log_lock_waits)" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local s = sig(ctx, "postgres_too_many_clients") or sig(ctx, "mysql_too_many_connections")
      or sig(ctx, "dbconn_pgbouncer_limit")
    if s then
      score = 0.6 + 0.3 * sat(a.server, 5)
      why[#why + 1] = "database refused connections: " .. span(s)
    end
    local p = sig(ctx, "dbconn_pool_timeout") or sig(ctx, "dbconn_pool_saturated")
    if p then
      score = math.max(score, 0.5 + 0.3 * sat(a.pool, 5)) + (s and 0.05 or 0)
      why[#why + 1] = "connection pool timeouts: " .. span(p)
    end
    local i = sig(ctx, "dbconn_idle_in_tx") or sig(ctx, "dbconn_leak")
    if i then
      score = a.any and score + 0.1 or math.max(score, 0.25)   -- alone: not exhaustion yet
      why[#why + 1] = "sessions held (idle in transaction / leak): " .. span(i)
    end
    if a.words then
      score = score + (a.any and 0.1 or 0.25)
      why[#why + 1] = "the user describes connection exhaustion"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "postgres_too_many_clients", "PostgreSQL refused connections "
        .. "(too many clients / reserved slots)")
      see(ctx, out, "mysql_too_many_connections",
          "MySQL refused connections (Too many connections)")
      see(ctx, out, "dbconn_pgbouncer_limit", "PgBouncer refused clients (connection limit)")
      see(ctx, out, "dbconn_pool_timeout", "Application pool timed out waiting for a connection")
      see(ctx, out, "dbconn_pool_saturated", "Pool saturated: no idle connection, threads waiting")
      see(ctx, out, "dbconn_idle_in_tx", "Sessions idle in transaction")
      see(ctx, out, "dbconn_leak", "Pool leak detection fired")
      see(ctx, out, "dbconn_slow_query", "Slow queries logged")
      see(ctx, out, "dbconn_lock_wait", "Sessions waiting on locks")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("database connection exhaustion max_connections pool idle in transaction")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      out:hypothesis { key = "dbconn_budget_exceeded", category = "database",
        statement = "Clients open more connections than the database allows: replicas x pool "
          .. "size (or a batch job, a reconnect storm) exceeds max_connections",
        likelihood = a.server > 0 and 0.45 + 0.3 * sat(a.server, 5) or 0.15 }
      out:hypothesis { key = "dbconn_held_idle_in_tx", category = "code",
        statement = "Connections are held and never returned: sessions idle in transaction "
          .. "(a missing commit/rollback on an error path, slow work inside a transaction) or a "
          .. "pool leak",
        likelihood = (a.idle + a.leak > 0) and (a.any and 0.75 or 0.5) or 0.2 }
      out:hypothesis { key = "dbconn_slow_queries", category = "database",
        statement = "Slow queries or lock waits hold each connection longer, so the pool drains "
          .. "under normal load while the database is below its limit",
        likelihood = (a.pool > 0 and a.server == 0) and (a.slow > 0 and 0.55 or 0.35)
          or (a.slow > 0 and 0.3 or 0.1) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("dbconn_budget_exceeded", "for", "postgres_too_many_clients",
         "the server itself hit its connection limit")
      ev("dbconn_budget_exceeded", "for", "mysql_too_many_connections",
         "the server itself hit its connection limit")
      ev("dbconn_budget_exceeded", "for", "dbconn_pgbouncer_limit", "PgBouncer limit reached")
      ev("dbconn_held_idle_in_tx", "for", "dbconn_idle_in_tx", "sessions idle in transaction")
      ev("dbconn_held_idle_in_tx", "for", "dbconn_leak", "the pool reports a leaked connection")
      ev("dbconn_slow_queries", "for", "dbconn_slow_query", "slow statements logged")
      ev("dbconn_slow_queries", "for", "dbconn_lock_wait", "sessions waiting on locks")
      if a.pool > 0 and a.server == 0 then
        local p = sig(ctx, "dbconn_pool_timeout") or sig(ctx, "dbconn_pool_saturated")
        out:evidence { hypothesis = "dbconn_budget_exceeded", stance = "against",
          evidence_id = p.evidence_id, line = p.first_line,
          summary = "only the application pool times out; no server-side refusal in the evidence" }
      end
      if a.server > 0 and a.idle + a.leak == 0 then
        local s = sig(ctx, "postgres_too_many_clients") or sig(ctx, "mysql_too_many_connections")
          or sig(ctx, "dbconn_pgbouncer_limit")
        out:evidence { hypothesis = "dbconn_slow_queries", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the server refuses connections: the limit itself is reached, not only "
            .. "the pool" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      if a.idle == 0 then
        out:ask { label = "Count connections by state", hypothesis = "dbconn_held_idle_in_tx",
          command = "SELECT count(*), state FROM pg_stat_activity GROUP BY state ORDER BY 1 DESC",
          why = "many 'idle in transaction' rows mean connections are held, not used" }
      end
      out:ask { label = "Compare with the limit", hypothesis = "dbconn_budget_exceeded",
        command = "SHOW max_connections",
        why = "the count must stay below max_connections minus superuser_reserved_connections" }
      out:ask { label = "Find who owns the connections", hypothesis = "dbconn_budget_exceeded",
        command = "SELECT usename, application_name, client_addr, state, count(*) FROM "
          .. "pg_stat_activity GROUP BY 1,2,3,4 ORDER BY 5 DESC LIMIT 20",
        why = "one application or client address owning most connections is the culprit" }
      out:ask { label = "Oldest open transactions", hypothesis = "dbconn_held_idle_in_tx",
        command = "SELECT pid, application_name, state, now() - xact_start AS xact_age, "
          .. "left(query, 80) FROM pg_stat_activity WHERE xact_start IS NOT NULL "
          .. "ORDER BY xact_age DESC LIMIT 20",
        why = "old transactions show the code path that does not commit" }
      if ctx.signal("mysql_too_many_connections") > 0 then
        out:ask { label = "MySQL connections and limit", hypothesis = "dbconn_budget_exceeded",
          command = "mysql -e \"SHOW STATUS LIKE 'Threads_connected'; SHOW VARIABLES LIKE "
            .. "'max_connections'; SHOW PROCESSLIST;\"" }
      end
      out:ask { label = "Replicas x pool size", hypothesis = "dbconn_budget_exceeded",
        command = "kubectl get deploy -A -o custom-columns=NS:.metadata.namespace,"
          .. "NAME:.metadata.name,REPLICAS:.spec.replicas",
        why = "multiply each client's replicas by its pool size and compare with max_connections" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if not a.any then return end            -- words alone never conclude
      if a.idle + a.leak > 0 then
        local s = sig(ctx, "dbconn_idle_in_tx") or sig(ctx, "dbconn_leak")
        out:conclude { hypothesis = "dbconn_held_idle_in_tx", severity = "high",
          confidence = math.min(0.9, 0.6 + 0.2 * sat(a.idle + a.leak, 3)
            + (a.server > 0 and a.pool > 0 and 0.05 or 0)),
          root_cause = "Connections are exhausted because sessions are held idle in transaction "
            .. "(or leaked by the pool) instead of being returned: " .. span(s)
            .. ". A code path opens a transaction and does not commit or roll back." }
      elseif a.server > 0 then
        local s = sig(ctx, "postgres_too_many_clients") or sig(ctx, "mysql_too_many_connections")
          or sig(ctx, "dbconn_pgbouncer_limit")
        out:conclude { hypothesis = "dbconn_budget_exceeded", severity = "high",
          confidence = math.min(0.8, 0.5 + 0.25 * sat(a.server, 5)),
          root_cause = "The database reached its connection limit (" .. span(s) .. "): the "
            .. "clients' pools together open more connections than max_connections allows." }
      elseif a.slow > 0 then
        out:conclude { hypothesis = "dbconn_slow_queries", severity = "medium",
          confidence = 0.5,
          root_cause = "The application pool drains because slow queries or lock waits hold "
            .. "connections longer; the database itself is not refusing connections." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.idle + a.leak > 0 or not a.any then
        out:mitigate { title = "Terminate sessions idle in transaction for over 5 minutes",
          command = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = "
            .. "'idle in transaction' AND now() - state_change > interval '5 minutes'",
          risk = "medium",
          undo = "none needed: clients reconnect; their open transactions roll back",
          verify = "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'" }
        out:solve { title = "Time out idle transactions for the application role",
          command = "ALTER ROLE app_user SET idle_in_transaction_session_timeout = '60s'",
          description = "then fix the code path that leaves transactions open (commit or roll "
            .. "back in finally / a context manager; enable HikariCP leakDetectionThreshold)",
          risk = "low", undo = "ALTER ROLE app_user RESET idle_in_transaction_session_timeout" }
      end
      if a.server > 0 or not a.any then
        out:mitigate { title = "Scale the heaviest client down or lower its pool size",
          command = "kubectl scale deploy/<app> --replicas=<n>",
          description = "replicas x pool size of all clients must stay below max_connections",
          risk = "medium", undo = "kubectl scale deploy/<app> --replicas=<previous>",
          verify = "SELECT count(*) FROM pg_stat_activity" }
        out:solve { title = "Put a transaction pooler in front of the database",
          description = "PgBouncer in transaction mode (or RDS Proxy) lets many clients share "
            .. "few server connections; document the connection budget per service",
          risk = "medium", undo = "point the clients back at the database host" }
      end
      if a.slow > 0 or (a.pool > 0 and a.server == 0) then
        out:mitigate { title = "Cancel the longest-running statements",
          command = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE state = 'active' "
            .. "AND now() - query_start > interval '2 minutes'",
          risk = "medium", undo = "none: the cancelled statements can be rerun" }
        out:solve { title = "Bound statement time and fix the slow queries",
          command = "ALTER ROLE app_user SET statement_timeout = '30s'",
          description = "index or rewrite the slow statements found in the log",
          risk = "low", undo = "ALTER ROLE app_user RESET statement_timeout" }
      end
    end },
  },
}
