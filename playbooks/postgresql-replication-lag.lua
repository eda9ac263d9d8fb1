-- PostgreSQL replication lag: a streaming replica falls behind the primary, or lost the WAL it
-- needs. Knowledge pack: kb/postgresql-replication-lag.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

-- Replication lag series in metrics evidence (postgres_exporter names, CSV columns):
-- the worst {name, max, min, unit = "s"|"bytes", evidence_id, filename}.
local function lag_series(ctx)
  local worst
  for _, e in ipairs(ctx.evidence) do
    local m = e.summary.metrics
    if type(m) == "table" and type(m.series) == "table" then
      for _, s in ipairs(m.series) do
        local name = type(s.name) == "string" and s.name:lower() or ""
        if (name:find("replication_lag", 1, true) or name:find("replay_lag", 1, true)
            or name:find("^pg_.*lag")) and type(s.max) == "number" then
          local unit = (name:find("byte") or name:find("lsn")) and "bytes" or "s"
          -- seconds: over 30 s is lag; bytes: over 64 MiB of WAL behind
          local bad = unit == "s" and s.max > 30 or unit == "bytes" and s.max > 64 * 2 ^ 20
          if bad and (not worst or s.max > worst.max) then
            worst = { name = s.name, max = s.max, min = s.min, unit = unit,
                      evidence_id = e.id, filename = e.filename }
          end
        end
      end
    end
  end
  return worst
end

-- A WAL generation series whose peak is several times its floor (a write burst).
local function wal_burst(ctx)
  for _, e in ipairs(ctx.evidence) do
    local m = e.summary.metrics
    if type(m) == "table" and type(m.series) == "table" then
      for _, s in ipairs(m.series) do
        local name = type(s.name) == "string" and s.name:lower() or ""
        if name:find("wal") and not name:find("lag") and type(s.max) == "number"
            and type(s.min) == "number" and s.min > 0 and s.max >= 3 * s.min then
          return { name = s.name, max = s.max, min = s.min, evidence_id = e.id,
                   filename = e.filename }
        end
      end
    end
  end
end

local function assess(ctx)
  local a = {
    removed = ctx.signal("pgrepl_wal_removed"),
    lost = count(ctx, "pgrepl_stream_lost", "pgrepl_slot_invalidated"),
    conflict = count(ctx, "pgrepl_recovery_conflict", "pgrepl_standby_delay"),
    bulk = ctx.signal("pgrepl_bulk_write"),
    marker = ctx.signal("pgrepl_lag_view"),
    lag = lag_series(ctx),
    wal = wal_burst(ctx),
    words = ctx.said("replication lag", "replica lag", "replica is behind", "standby",
                     "stale read", "stale data", "replay lag", "wal"),
  }
  a.strong = a.removed + a.lost + a.conflict > 0 or a.lag ~= nil
  return a
end

local function fmt(v)
  if v >= 2 ^ 30 then return string.format("%.1f GiB", v / 2 ^ 30) end
  if v >= 2 ^ 20 then return string.format("%.1f MiB", v / 2 ^ 20) end
  return string.format("%g", v)
end

return {
  id = "postgresql-replication-lag",
  title = "PostgreSQL replication lag",
  version = "1.0.0",
  description = "A streaming replica falls behind the primary: stale reads, WAL piling up on "
    .. "the primary, or a replica that lost the WAL it needs. Separates a write burst on the "
    .. "primary, replay blocked on the replica, and a replica disconnected from its stream.",
  tags = { "postgresql", "replication", "replica-lag", "standby", "wal", "replication-slot",
           "database" },
  category = "database",
  kb = "postgresql replication lag replica standby wal replay",
  signals = {
    { name = "pgrepl_wal_removed", severity = "critical",
      pattern = [[requested WAL segment [0-9A-F]+ has already been removed]],
      description = "the replica needs WAL the primary already removed: rebuild it" },
    { name = "pgrepl_stream_lost", severity = "error",
      pattern = [[could not receive data from WAL stream|terminating walreceiver (process )?]]
        .. [[due to|replication terminated by primary server|terminating walsender process ]]
        .. [[due to replication timeout|could not connect to the primary server]],
      description = "the WAL stream between primary and replica broke" },
    { name = "pgrepl_slot_invalidated", severity = "error",
      pattern = [[invalidating (obsolete )?(replication )?slot|replication slot "[^"]+" ]]
        .. [[(has been|is) invalidated|exceeds max_slot_wal_keep_size]],
      description = "a replication slot was invalidated (max_slot_wal_keep_size)" },
    { name = "pgrepl_recovery_conflict", severity = "warning",
      pattern = [[canceling statement due to conflict with recovery]],
      description = "replica queries cancelled because replay needed to proceed" },
    { name = "pgrepl_standby_delay", severity = "info",
      pattern = [[max_standby_(streaming|archive)_delay]],
      description = "standby delay setting mentioned (replay waits for replica queries)" },
    { name = "pgrepl_bulk_write", severity = "info",
      pattern = [[checkpoints are occurring too frequently|VACUUM FULL|REINDEX (TABLE|INDEX|]]
        .. [[DATABASE)|COPY [A-Za-z_."]+ FROM]],
      description = "heavy WAL generation on the primary (bulk load, rewrite, checkpoints)" },
    { name = "pgrepl_lag_view", severity = "info",
      pattern = [[pg_stat_replication|replay_lag|pg_last_xact_replay_timestamp|]]
        .. [[pg_replication_lag]],
      description = "replication status output or lag metric present" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local r = sig(ctx, "pgrepl_wal_removed") or sig(ctx, "pgrepl_stream_lost")
      or sig(ctx, "pgrepl_slot_invalidated")
    if r then
      score = 0.65 + 0.25 * sat(a.removed * 3 + a.lost, 3)
      why[#why + 1] = "replica lost its WAL stream: " .. span(r)
    end
    if a.lag then
      score = math.max(score, 0.65) + (r and 0.05 or 0)
      why[#why + 1] = string.format("%s peaks at %s%s in %s", a.lag.name, fmt(a.lag.max),
        a.lag.unit == "s" and " s" or "", a.lag.filename or "metrics")
    end
    local c = sig(ctx, "pgrepl_recovery_conflict")
    if c then
      score = math.max(score, 0.5) + (a.lag and 0.05 or 0)
      why[#why + 1] = "replica queries cancelled by recovery conflicts: " .. span(c)
    end
    local b = sig(ctx, "pgrepl_bulk_write")
    if b and (a.strong or a.words) then
      score = score + 0.05
      why[#why + 1] = "heavy WAL generation on the primary: " .. span(b)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.25)
      why[#why + 1] = "the user describes replica lag or stale reads"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local a = assess(ctx)
      see(ctx, out, "pgrepl_wal_removed", "Replica asks for WAL the primary already removed")
      see(ctx, out, "pgrepl_stream_lost", "WAL stream broken")
      see(ctx, out, "pgrepl_slot_invalidated", "Replication slot invalidated")
      see(ctx, out, "pgrepl_recovery_conflict", "Replica queries cancelled by recovery")
      see(ctx, out, "pgrepl_bulk_write", "Heavy WAL generation on the primary")
      if a.lag then
        out:finding { text = string.format("Replication lag %s: %s -> %s%s", a.lag.name,
          fmt(a.lag.min or 0), fmt(a.lag.max), a.lag.unit == "s" and " s" or ""),
          evidence_id = a.lag.evidence_id, filename = a.lag.filename, severity = "error" }
      end
      if a.wal then
        out:finding { text = string.format("WAL generation %s rose from %s to %s", a.wal.name,
          fmt(a.wal.min), fmt(a.wal.max)), evidence_id = a.wal.evidence_id,
          filename = a.wal.filename, severity = "warning" }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("postgresql replication lag replay_lag replication slot wal")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local gone = a.removed + a.lost > 0
      out:hypothesis { key = "pgrepl_replica_disconnected", category = "database",
        statement = "The replica lost its WAL stream (network, primary restart, slot "
          .. "invalidated) and, if the WAL it needs was removed, can never catch up by itself",
        likelihood = a.removed > 0 and 0.85 or (a.lost > 0 and 0.6 or 0.1) }
      out:hypothesis { key = "pgrepl_write_burst", category = "database",
        statement = "A write burst on the primary (bulk load, migration, VACUUM FULL, index "
          .. "rebuild) produces WAL faster than the replica replays it",
        likelihood = math.min(0.8, (a.bulk > 0 and 0.35 or 0.15) + (a.wal and 0.3 or 0)
          + (a.lag and 0.1 or 0) - (gone and 0.1 or 0)) }
      out:hypothesis { key = "pgrepl_replay_blocked", category = "database",
        statement = "Replay on the replica is slow or held back: long queries on the replica "
          .. "(max_standby_streaming_delay), or a replica with slower disk or CPU",
        likelihood = a.conflict > 0 and math.min(0.7, 0.45 + 0.2 * sat(a.conflict, 3))
          or (a.lag and not a.wal and a.bulk == 0 and 0.3 or 0.1) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("pgrepl_replica_disconnected", "for", "pgrepl_wal_removed",
         "the replica requests a WAL segment that no longer exists on the primary")
      ev("pgrepl_replica_disconnected", "for", "pgrepl_stream_lost", "the WAL stream broke")
      ev("pgrepl_replica_disconnected", "for", "pgrepl_slot_invalidated",
         "the slot keeping WAL for the replica was invalidated")
      ev("pgrepl_write_burst", "for", "pgrepl_bulk_write", "heavy WAL producers on the primary")
      ev("pgrepl_replay_blocked", "for", "pgrepl_recovery_conflict",
         "replay conflicts with queries on the replica")
      if a.wal then
        out:evidence { hypothesis = "pgrepl_write_burst", stance = "for",
          evidence_id = a.wal.evidence_id, summary = string.format(
            "WAL rate %s went from %s to %s", a.wal.name, fmt(a.wal.min), fmt(a.wal.max)) }
      end
      if a.lag then
        out:evidence { hypothesis = gone and "pgrepl_replica_disconnected" or "pgrepl_write_burst",
          stance = "for", evidence_id = a.lag.evidence_id, summary = string.format(
            "%s peaks at %s%s", a.lag.name, fmt(a.lag.max), a.lag.unit == "s" and " s" or "") }
      end
      if a.removed > 0 then
        local s = sig(ctx, "pgrepl_wal_removed")
        out:evidence { hypothesis = "pgrepl_replay_blocked", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the replica is not replaying slowly: it has no WAL to replay" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      out:ask { label = "Replication state on the primary",
        hypothesis = "pgrepl_replica_disconnected",
        command = "SELECT application_name, client_addr, state, sync_state, "
          .. "pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) AS "
          .. "replay_lag_bytes, "
          .. "write_lag, flush_lag, replay_lag FROM pg_stat_replication",
        why = "a missing replica is disconnected; large write_lag is network, large replay_lag "
          .. "with small write_lag is slow replay" }
      out:ask { label = "Replication slots and retained WAL",
        hypothesis = "pgrepl_replica_disconnected",
        command = "SELECT slot_name, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), "
          .. "restart_lsn)) AS retained FROM pg_replication_slots",
        why = "an inactive slot retains WAL and fills the primary's disk" }
      if not a.conflict or a.conflict == 0 then
        out:ask { label = "Long queries on the replica", hypothesis = "pgrepl_replay_blocked",
          command = "SELECT pid, now() - query_start AS runtime, left(query, 80) FROM "
            .. "pg_stat_activity WHERE state = 'active' ORDER BY runtime DESC LIMIT 5",
          why = "long replica queries hold replay back (max_standby_streaming_delay)" }
      end
      out:ask { label = "Replay position on the replica", hypothesis = "pgrepl_write_burst",
        command = "SELECT pg_is_in_recovery(), now() - pg_last_xact_replay_timestamp() AS "
          .. "replay_delay, pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
        why = "compare LSNs, not only time: the delay also grows when the primary is idle" }
      if not a.wal then
        out:ask { label = "WAL generation rate on the primary", hypothesis = "pgrepl_write_burst",
          command = "SELECT pg_current_wal_lsn(); -- run twice 60 s apart and diff with "
            .. "pg_wal_lsn_diff()",
          why = "a burst of WAL (bulk load, migration) outpacing replay" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.removed > 0 then
        out:conclude { hypothesis = "pgrepl_replica_disconnected", severity = "high",
          confidence = 0.85,
          root_cause = "The replica fell behind and lost its stream; the WAL it needs was "
            .. "already removed on the primary (" .. span(sig(ctx, "pgrepl_wal_removed"))
            .. "), so it cannot catch up and must be rebuilt or fed from the WAL archive." }
      elseif a.lost > 0 then
        local s = sig(ctx, "pgrepl_stream_lost") or sig(ctx, "pgrepl_slot_invalidated")
        out:conclude { hypothesis = "pgrepl_replica_disconnected", severity = "high",
          confidence = 0.6,
          root_cause = "The replica's WAL stream broke (" .. span(s) .. "), so it stopped "
            .. "receiving changes and lags further every second." }
      elseif a.lag and (a.wal or a.bulk > 0) then
        out:conclude { hypothesis = "pgrepl_write_burst", severity = "medium",
          confidence = a.wal and a.bulk > 0 and 0.75 or 0.6,
          root_cause = string.format("A write burst on the primary (%s) produced WAL faster "
            .. "than the replica replays it; %s reached %s.", a.wal and ("WAL rate up to "
            .. fmt(a.wal.max)) or "bulk statements in the log", a.lag.name,
            fmt(a.lag.max) .. (a.lag.unit == "s" and " s" or "")) }
      elseif a.conflict > 0 then
        out:conclude { hypothesis = "pgrepl_replay_blocked", severity = "medium",
          confidence = 0.55,
          root_cause = "Replay on the replica is held back by long queries running there ("
            .. span(sig(ctx, "pgrepl_recovery_conflict") or sig(ctx, "pgrepl_standby_delay"))
            .. ")." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.removed > 0 or a.lost > 0 then
        out:mitigate { title = "Route fresh reads to the primary",
          description = "take the lagging replica out of the read pool until it is healthy",
          risk = "low", undo = "add the replica back to the read pool" }
        out:solve { title = "Rebuild the replica",
          command = "patronictl reinit <cluster> <member>   # or pg_basebackup -h <primary> "
            .. "-D <datadir> -X stream -R",
          description = "then cap retained WAL with max_slot_wal_keep_size (PostgreSQL 13+)",
          risk = "medium", undo = "none: the old replica data is replaced",
          verify = "SELECT state, replay_lag FROM pg_stat_replication" }
      end
      if a.removed + a.lost == 0 then
        out:mitigate { title = "Pause or throttle the bulk job on the primary",
          risk = "low", undo = "resume the job off peak" }
        out:mitigate { title = "Cancel long queries on the replica that hold replay back",
          command = "SELECT pg_cancel_backend(<pid>)",
          risk = "low", undo = "rerun the query on an analytics replica" }
        out:solve { title = "Give replicas the primary's storage class; batch large writes",
          description = "move analytics to a dedicated replica with a relaxed "
            .. "max_standby_streaming_delay; keep failover candidates free of long queries",
          risk = "low", undo = "none" }
      end
    end },
  },
}
