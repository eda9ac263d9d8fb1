-- Kafka consumer lag growing: a consumer group reads slower than producers write. Separates a
-- rebalance storm (poll timeouts), consumers gone (no active members), one stuck or hot
-- partition (a poison message, a hot key) and plain throughput shortfall.
-- Knowledge pack: kb/kafka-consumer-lag.md

local kit = require "kit"
local sig, span, see, sat = kit.fired, kit.span, kit.span_finding, kit.sat

-- Consumer lag from kafka_exporter / Burrow style metrics: the total, the worst partition and
-- the median partition (skew), and where they came from.
local function lag_metrics(ctx)
  local parts, total, from = {}, 0, nil
  for _, e in ipairs(ctx.evidence) do
    local m = e.summary.metrics
    if type(m) == "table" and type(m.series) == "table" then
      for _, s in ipairs(m.series) do
        local name = type(s.name) == "string" and s.name:lower() or ""
        if (name:find("consumergroup_lag", 1, true) or name:find("consumer_lag", 1, true)
            or name:find("records_lag", 1, true)) and type(s.max) == "number" then
          local labels = type(s.labels) == "table" and s.labels or {}
          parts[#parts + 1] = { value = s.max, partition = labels.partition,
                                topic = labels.topic }
          total = total + s.max
          from = from or e
        end
      end
    end
  end
  if #parts == 0 then return nil end
  table.sort(parts, function(x, y) return x.value > y.value end)
  local median = parts[(#parts + 1) // 2].value
  return { total = total, worst = parts[1], median = median, n = #parts,
           skewed = #parts >= 3 and parts[1].value >= 10000
             and parts[1].value >= 5 * math.max(median, 1),
           evidence_id = from.id, filename = from.filename }
end

local function assess(ctx)
  local a = {
    poll = ctx.signal("kafka_poll_timeout"),
    rebalance = ctx.signal("kafka_rebalance"),
    commit = ctx.signal("kafka_commit_failed"),
    empty = ctx.signal("kafka_no_members"),
    poison = ctx.signal("kafka_record_error"),
    big = ctx.signal("kafka_partition_lag_high"),
    lag = lag_metrics(ctx),
    words = ctx.said("kafka", "consumer lag", "consumer group", "offset lag", "burrow"),
  }
  a.churn = a.poll + a.rebalance + a.commit
  a.high = a.lag and a.lag.worst.value >= 10000 or a.big > 0
  a.strong = a.churn + a.empty + a.poison > 0 or a.high
  return a
end

return {
  id = "kafka-consumer-lag",
  title = "Kafka consumer lag growing",
  version = "1.0.0",
  description = "A consumer group falls behind its topic: data arrives late downstream and may "
    .. "be lost past retention. Reads consumer logs, kafka-consumer-groups output and "
    .. "kafka_exporter metrics to separate a rebalance storm, consumers gone, one stuck or "
    .. "hot partition, and a throughput shortfall.",
  tags = { "kafka", "consumer-lag", "consumer-group", "rebalance", "partitions", "offsets",
           "messaging" },
  category = "code",
  kb = "kafka consumer lag consumer group rebalance poll timeout partitions",
  signals = {
    { name = "kafka_poll_timeout", severity = "error",
      pattern = [=[consumer poll timeout has expired|the poll loop is spending too much time]=],
      description = "processing a batch took longer than max.poll.interval.ms" },
    { name = "kafka_rebalance", severity = "warning",
      pattern = [=[group is rebalancing|\(Re-\)joining group|Revoke previously assigned ]=]
        .. [=[partitions|REBALANCE_IN_PROGRESS|PreparingRebalance|sending LeaveGroup request]=],
      description = "consumer group rebalances" },
    { name = "kafka_commit_failed", severity = "error",
      pattern = [=[CommitFailedException|Offset commit cannot be completed|Commit cannot be ]=]
        .. [=[completed since the group has already rebalanced]=],
      description = "offset commits fail (the member was kicked out)" },
    { name = "kafka_no_members", severity = "critical",
      pattern = [=[has no active members]=],
      description = "nobody consumes: the group is empty" },
    { name = "kafka_record_error", severity = "error",
      pattern = [=[(Error|error|Failed|failed) (processing|to process|handling) (record|message)]=]
        .. [=[[^\n]*offset|RecordDeserializationException|SerializationException[^\n]*]=]
        .. [=[partition]=],
      description = "a record fails again and again (a poison message blocks its partition)" },
    { name = "kafka_partition_lag_high", severity = "warning",
      pattern = [=[^[^ ]+ +[^ ]+ +[0-9]+ +[0-9-]+ +[0-9]+ +[0-9]{5,} ]=],
      description = "kafka-consumer-groups --describe: a partition 10,000+ records behind" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    if a.lag and a.high then
      score = 0.55 + 0.2 * sat(a.lag.worst.value, 100000)
      why[#why + 1] = string.format("consumer lag up to %.0f (partition %s) in %s",
        a.lag.worst.value, tostring(a.lag.worst.partition or "?"), a.lag.filename or "metrics")
    elseif a.big > 0 then
      score = 0.55
      why[#why + 1] = "partitions far behind: " .. span(sig(ctx, "kafka_partition_lag_high"))
    end
    local c = sig(ctx, "kafka_poll_timeout") or sig(ctx, "kafka_commit_failed")
      or sig(ctx, "kafka_no_members")
    if c then
      score = math.max(score, 0.5 + 0.2 * sat(a.churn + a.empty, 4)) + (a.high and 0.1 or 0)
      why[#why + 1] = "consumer group trouble: " .. span(c)
    elseif a.rebalance > 0 then               -- rebalances alone happen on every deploy
      score = math.max(score, 0.3) + (a.high and 0.1 or 0)
      why[#why + 1] = "group rebalances: " .. span(sig(ctx, "kafka_rebalance"))
    end
    local p = sig(ctx, "kafka_record_error")
    if p then
      score = math.max(score, 0.4) + ((c or a.high) and 0.05 or 0)
      why[#why + 1] = "records failing repeatedly: " .. span(p)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.25)
      why[#why + 1] = "the user describes Kafka consumer lag"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local a = assess(ctx)
      see(ctx, out, "kafka_poll_timeout", "Consumer poll timeout expired")
      see(ctx, out, "kafka_rebalance", "Group rebalances")
      see(ctx, out, "kafka_commit_failed", "Offset commits failed")
      see(ctx, out, "kafka_no_members", "Consumer group has no active members")
      see(ctx, out, "kafka_record_error", "Records failing repeatedly")
      see(ctx, out, "kafka_partition_lag_high", "Partitions far behind (describe output)")
      if a.lag then
        out:finding { text = string.format("Lag %.0f in all over %d partitions; worst %.0f "
          .. "(topic %s partition %s), median %.0f%s", a.lag.total, a.lag.n, a.lag.worst.value,
          tostring(a.lag.worst.topic or "?"), tostring(a.lag.worst.partition or "?"),
          a.lag.median, a.lag.skewed and ": concentrated on one partition" or ""),
          evidence_id = a.lag.evidence_id, filename = a.lag.filename,
          severity = a.high and "error" or "info" }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("kafka consumer lag rebalance max.poll.interval.ms partitions poison message")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      out:hypothesis { key = "kafka_rebalance_storm", category = "config",
        statement = "Processing a batch takes longer than max.poll.interval.ms: members are "
          .. "kicked out, partitions move, work restarts, and the group never catches up",
        likelihood = a.poll + a.commit > 0 and math.min(0.85, 0.5 + 0.2 * sat(a.poll
          + a.commit, 3) + (a.rebalance > 0 and 0.1 or 0)) or (a.rebalance > 0 and 0.35 or 0.1) }
      out:hypothesis { key = "kafka_consumers_down", category = "environment",
        statement = "No consumer is running (crashed, scaled to zero, stuck deploy), so "
          .. "nothing reads the topic",
        likelihood = a.empty > 0 and 0.8 or 0.1 }
      out:hypothesis { key = "kafka_stuck_partition", category = "data",
        statement = "One partition is stuck or hot: a poison message retried forever, or a hot "
          .. "key sending most traffic to one partition",
        likelihood = math.min(0.8, (a.poison > 0 and 0.55 or 0.1)
          + (a.lag and a.lag.skewed and 0.25 or 0)) }
      out:hypothesis { key = "kafka_slow_processing", category = "code",
        statement = "The group's throughput is below the produce rate: slower processing per "
          .. "message (a slow database or HTTP call) or a producer traffic spike",
        likelihood = a.high and (a.churn + a.empty + a.poison == 0
          and not (a.lag and a.lag.skewed)) and 0.5 or 0.2 }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("kafka_rebalance_storm", "for", "kafka_poll_timeout", "poll timeouts")
      ev("kafka_rebalance_storm", "for", "kafka_rebalance", "rebalances")
      ev("kafka_rebalance_storm", "for", "kafka_commit_failed", "commits fail after rebalances")
      ev("kafka_consumers_down", "for", "kafka_no_members", "the group has no members")
      ev("kafka_stuck_partition", "for", "kafka_record_error", "a record fails repeatedly")
      if a.lag then
        out:evidence { hypothesis = a.lag.skewed and "kafka_stuck_partition"
            or "kafka_slow_processing", stance = "for", evidence_id = a.lag.evidence_id,
          summary = string.format("worst partition %.0f behind, median %.0f", a.lag.worst.value,
            a.lag.median) }
        if not a.lag.skewed and a.lag.n >= 3 then
          out:evidence { hypothesis = "kafka_stuck_partition", stance = "against",
            evidence_id = a.lag.evidence_id,
            summary = "lag is spread evenly over the partitions, not on one" }
        end
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      out:ask { label = "Lag per partition and owner", hypothesis = "kafka_stuck_partition",
        command = "kafka-consumer-groups --bootstrap-server <broker>:9092 --describe "
          .. "--group <group>",
        why = "lag on one partition: stuck or hot; CONSUMER-ID '-': nobody owns it" }
      out:ask { label = "Group state and members", hypothesis = "kafka_rebalance_storm",
        command = "kafka-consumer-groups --bootstrap-server <broker>:9092 --describe "
          .. "--group <group> --state --members",
        why = "flipping between PreparingRebalance and Stable is a rebalance storm" }
      if a.empty == 0 then
        out:ask { label = "Are the consumers running?", hypothesis = "kafka_consumers_down",
          command = "kubectl -n <ns> get deploy,pods -l app=<consumer>" }
      end
      out:ask { label = "Produce rate vs consume rate", hypothesis = "kafka_slow_processing",
        command = "sum(rate(kafka_topic_partition_current_offset{topic=\"<topic>\"}[5m]))"
          .. "   # PromQL, compare with the group's consume rate" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.empty > 0 then
        out:conclude { hypothesis = "kafka_consumers_down", severity = "high", confidence = 0.75,
          root_cause = "The consumer group has no active members ("
            .. span(sig(ctx, "kafka_no_members")) .. "): nothing reads the topic." }
      elseif a.poll + a.commit > 0 then
        local s = sig(ctx, "kafka_poll_timeout") or sig(ctx, "kafka_commit_failed")
        out:conclude { hypothesis = "kafka_rebalance_storm", severity = "high",
          confidence = math.min(0.85, 0.55 + 0.15 * sat(a.poll + a.commit, 3)
            + (a.rebalance > 0 and 0.05 or 0) + (a.high and 0.05 or 0)),
          root_cause = "Batches take longer than max.poll.interval.ms (" .. span(s) .. "): "
            .. "consumers are kicked out of the group, partitions are reassigned and the "
            .. "work restarts, so the lag grows." }
      elseif a.poison > 0 then
        out:conclude { hypothesis = "kafka_stuck_partition", severity = "high",
          confidence = math.min(0.8, 0.55 + (a.high and 0.1 or 0)
            + (a.lag and a.lag.skewed and 0.1 or 0)),
          root_cause = "A record fails and is retried forever ("
            .. span(sig(ctx, "kafka_record_error")) .. "), blocking its partition while "
            .. "the others move on." }
      elseif a.lag and a.lag.skewed then
        out:conclude { hypothesis = "kafka_stuck_partition", severity = "medium",
          confidence = 0.55,
          root_cause = string.format("Lag is concentrated on partition %s (%.0f vs a median "
            .. "of %.0f): a hot key or a stuck consumer on that partition.",
            tostring(a.lag.worst.partition or "?"), a.lag.worst.value, a.lag.median) }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.poll + a.commit + a.rebalance > 0 or not a.strong then
        out:mitigate { title = "Stop the rebalance storm",
          description = "raise max.poll.interval.ms or lower max.poll.records so a batch "
            .. "finishes between polls",
          risk = "low", undo = "restore the previous consumer settings" }
        out:solve { title = "Cooperative rebalancing and static membership",
          description = "partition.assignment.strategy=CooperativeStickyAssignor and "
            .. "group.instance.id; make per-record processing faster (batch writes, async I/O)",
          risk = "low", undo = "revert the consumer configuration" }
      end
      if a.empty > 0 or not a.strong then
        out:mitigate { title = "Start the consumers again",
          command = "kubectl -n <ns> scale deploy/<consumer> --replicas=<partitions>",
          risk = "low", undo = "kubectl -n <ns> scale deploy/<consumer> --replicas=<previous>" }
      end
      if a.poison > 0 or (a.lag and a.lag.skewed) then
        out:mitigate { title = "Park the poison record (group stopped)",
          command = "kafka-consumer-groups --bootstrap-server <broker>:9092 --group <group> "
            .. "--topic <topic>:<partition> --reset-offsets --to-offset <offset+1> --execute",
          description = "only with no active members; better: send it to a dead letter topic",
          risk = "high", undo = "reset the offset back to <offset> and restart the group" }
        out:solve { title = "Bounded retries with a dead letter topic; spread hot keys",
          risk = "low", undo = "none" }
      end
      if a.high then
        out:mitigate { title = "Scale consumers up to the partition count",
          command = "kubectl -n <ns> scale deploy/<consumer> --replicas=<partitions>",
          risk = "low", undo = "kubectl -n <ns> scale deploy/<consumer> --replicas=<previous>" }
        out:mitigate { title = "Keep unread data: raise retention while catching up",
          command = "kafka-configs --bootstrap-server <broker>:9092 --alter --entity-type topics "
            .. "--entity-name <topic> --add-config retention.ms=<ms>",
          risk = "medium", undo = "kafka-configs ... --delete-config retention.ms" }
      end
    end },
  },
}
