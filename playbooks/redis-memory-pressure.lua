-- Redis memory pressure: Redis reached maxmemory (evicts keys or rejects writes), or the host
-- runs short because of fragmentation, fork copy-on-write or client buffers.
-- Knowledge pack: kb/redis-memory-pressure.md

local kit = require "kit"
local sig, span, see, sat = kit.fired, kit.span, kit.span_finding, kit.sat

-- A value of `redis-cli INFO` output ("used_memory:4294012345") from the log templates the
-- analysis kept (their examples are real lines): value, evidence item, line.
local function info(ctx, key)
  for _, e in ipairs(ctx.evidence) do
    local logs = e.summary.logs
    if type(logs) == "table" and type(logs.templates) == "table" then
      for _, t in ipairs(logs.templates) do
        local v = type(t.example) == "string" and t.example:match("^" .. key .. ":(%S+)")
        if v then return v, e, t.first_line end
      end
    end
  end
end

local function human(b)
  if b >= 2 ^ 30 then return string.format("%.2f GiB", b / 2 ^ 30) end
  return string.format("%.0f MiB", b / 2 ^ 20)
end

local function assess(ctx)
  local a = {
    oom = ctx.signal("redismem_oom_command"),
    fork = ctx.signal("redismem_fork_failed"),
    misconf = ctx.grep("misconf redis is configured to save rdb snapshots", 1)[1] ~= nil,
    overcommit = ctx.signal("redismem_overcommit"),
    noeviction = ctx.signal("redismem_noeviction"),
    evicting = ctx.signal("redismem_evicting"),
    frag_sig = ctx.signal("redismem_frag_high"),
    buffers = ctx.signal("redismem_client_buffer"),
    bigkey = ctx.signal("redismem_bigkey"),
    words = ctx.said("redis", "maxmemory", "evict", "oom command"),
    -- the kernel killed Redis itself
    killed = ctx.signal("oom_killer") + ctx.signal("k8s_oomkilled") > 0
      and #ctx.grep("redis%-server", 1) > 0,
  }
  local used, ev, line = info(ctx, "used_memory")
  a.used, a.info_ev, a.info_line = tonumber(used), ev, line
  a.max = tonumber((info(ctx, "maxmemory")))
  a.rss = tonumber((info(ctx, "used_memory_rss")))
  a.frag = tonumber((info(ctx, "mem_fragmentation_ratio")))
  a.policy = info(ctx, "maxmemory_policy")
  local ks = info(ctx, "db0")                   -- keys=812345,expires=1022,avg_ttl=0
  if ks then
    a.keys, a.expires = tonumber(ks:match("keys=(%d+)")), tonumber(ks:match("expires=(%d+)"))
  end
  a.ratio = a.used and a.max and a.max > 0 and a.used / a.max or nil
  a.full = (a.ratio and a.ratio >= 0.9) or a.oom > 0
  a.fragmented = (a.frag and a.frag >= 1.5) or a.frag_sig > 0
  a.no_ttl = (a.keys and a.expires and a.keys >= 1000 and a.expires < 0.1 * a.keys)
    or ctx.signal("redismem_keys_no_ttl") > 0
  a.strong = a.full or a.fork > 0 or a.fragmented or a.buffers > 0
  return a
end

return {
  id = "redis-memory-pressure",
  title = "Redis memory pressure and evictions",
  version = "1.0.0",
  description = "Redis reached maxmemory and rejects writes (OOM command not allowed) or "
    .. "evicts keys, or memory runs short because of fragmentation, fork copy-on-write during "
    .. "BGSAVE/AOF rewrite, or client output buffers. Reads INFO memory/keyspace output when "
    .. "given.",
  tags = { "redis", "memory", "maxmemory", "eviction", "oom", "fragmentation", "cache" },
  category = "database",
  kb = "redis memory pressure maxmemory eviction OOM command not allowed fragmentation",
  signals = {
    { name = "redismem_oom_command", severity = "error",
      pattern = [[OOM command not allowed when used memory]],
      description = "Redis rejected a write: used memory above maxmemory" },
    { name = "redismem_fork_failed", severity = "error",
      pattern = [[Can't save in background: fork|fork: Cannot allocate memory|Background ]]
        .. [[saving error|Can't rewrite append only file in background: fork]],
      description = "BGSAVE / AOF rewrite could not fork for lack of memory" },
    { name = "redismem_overcommit", severity = "warning",
      pattern = [[overcommit_memory is set to 0]],
      description = "vm.overcommit_memory = 0: background saves may fail under pressure" },
    { name = "redismem_noeviction", severity = "warning",
      pattern = [[maxmemory[-_]policy:? *"?noeviction]],
      description = "eviction policy noeviction: writes fail at maxmemory" },
    { name = "redismem_evicting", severity = "warning",
      pattern = [=[^evicted_keys:[1-9]|redis_evicted_keys_total\{[^}]*\} [1-9]]=],
      description = "Redis is evicting keys" },
    { name = "redismem_frag_high", severity = "warning",
      pattern = [[^mem_fragmentation_ratio:([2-9]|[1-9][0-9]+|1\.[5-9])]],
      description = "RSS at least 1.5 times the data: fragmentation" },
    { name = "redismem_client_buffer", severity = "warning",
      pattern = [[omem=[1-9][0-9]{6,}|scheduled to be closed ASAP for overcoming of output ]]
        .. [[buffer limits]],
      description = "client output buffers holding memory (pub/sub, slow replica)" },
    { name = "redismem_keys_no_ttl", severity = "warning",   -- expires 2+ digits shorter
      pattern = [[^db[0-9]+:keys=(]] .. table.concat({ "[0-9]{4},expires=[0-9]{1,2}",
        "[0-9]{5},expires=[0-9]{1,3}", "[0-9]{6},expires=[0-9]{1,4}",
        "[0-9]{7},expires=[0-9]{1,5}", "[0-9]{8},expires=[0-9]{1,6}",
        "[0-9]{9},expires=[0-9]{1,7}", "[0-9]{10},expires=[0-9]{1,8}" }, "|") .. "),",
      description = "INFO keyspace: under 10 % of the keys have a TTL" },
    { name = "redismem_bigkey", severity = "info",
      pattern = [[Biggest +[a-z]+ +found]],
      description = "redis-cli --bigkeys output" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local o = sig(ctx, "redismem_oom_command")
    if o then
      score = 0.65 + 0.3 * sat(a.oom, 5)
      why[#why + 1] = "Redis rejected writes at maxmemory: " .. span(o)
    end
    if a.ratio and a.ratio >= 0.9 then
      score = math.max(score, 0.6) + (o and 0.05 or 0)
      why[#why + 1] = string.format("INFO memory: used_memory %s of maxmemory %s (%.0f%%) in %s",
        human(a.used), human(a.max), a.ratio * 100, a.info_ev.filename or "evidence")
    end
    local f = sig(ctx, "redismem_fork_failed")
    if f then
      score = math.max(score, 0.55 + 0.2 * sat(a.fork, 3))
      why[#why + 1] = "background save could not fork: " .. span(f)
    end
    if a.fragmented then
      score = math.max(score, 0.45) + (score > 0.45 and 0.05 or 0)
      why[#why + 1] = "mem_fragmentation_ratio " .. tostring(a.frag or ">= 1.5")
    end
    if a.killed and a.strong then
      score = score + 0.15
      why[#why + 1] = "the kernel OOM killer killed redis-server"
    end
    local b = sig(ctx, "redismem_client_buffer")
    if b then
      score = math.max(score, 0.45)
      why[#why + 1] = "client output buffers: " .. span(b)
    end
    local e = sig(ctx, "redismem_evicting")
    if e and a.strong then
      score = score + 0.05
      why[#why + 1] = "keys are being evicted: " .. span(e)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user mentions Redis memory"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local a = assess(ctx)
      see(ctx, out, "redismem_oom_command", "Writes rejected: OOM command not allowed")
      see(ctx, out, "redismem_fork_failed", "Background save / AOF rewrite could not fork")
      see(ctx, out, "redismem_overcommit", "vm.overcommit_memory is 0")
      see(ctx, out, "redismem_noeviction", "Eviction policy is noeviction")
      see(ctx, out, "redismem_evicting", "Keys are being evicted")
      see(ctx, out, "redismem_frag_high", "High memory fragmentation")
      see(ctx, out, "redismem_client_buffer", "Client output buffers hold memory")
      see(ctx, out, "redismem_bigkey", "Big keys report")
      see(ctx, out, "redismem_keys_no_ttl", "Keyspace: under 10 % of keys have a TTL")
      if a.used and a.max and a.max > 0 then
        out:finding { text = string.format("INFO memory: used_memory %s, maxmemory %s (%.0f%%), "
          .. "policy %s, fragmentation %s", human(a.used), human(a.max), a.ratio * 100,
          a.policy or "?", a.frag and tostring(a.frag) or "?"),
          evidence_id = a.info_ev.id, filename = a.info_ev.filename, line = a.info_line,
          severity = a.ratio >= 0.9 and "error" or "info" }
      end
      if a.keys and a.expires then
        out:finding { text = string.format("Keyspace db0: %d keys, %d with a TTL (%.1f%%)",
          a.keys, a.expires, a.keys > 0 and 100 * a.expires / a.keys or 0),
          severity = a.no_ttl and "warning" or "info" }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("redis maxmemory eviction policy fragmentation big keys")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      out:hypothesis { key = "redismem_data_growth", category = "data",
        statement = "The dataset grew to maxmemory: keys written without a TTL or a few huge "
          .. "keys; with policy noeviction Redis rejects writes instead of evicting",
        likelihood = a.full and math.min(0.9, 0.6 + (a.no_ttl and 0.15 or 0)
          + ((a.noeviction > 0 or a.policy == "noeviction") and 0.1 or 0)) or 0.15 }
      out:hypothesis { key = "redismem_fragmentation", category = "environment",
        statement = "Memory fragmentation: RSS far above the data after many deletes, so the "
          .. "process uses much more memory than used_memory shows",
        likelihood = a.fragmented and (a.full and 0.35 or 0.6) or 0.1 }
      out:hypothesis { key = "redismem_fork_cow", category = "config",
        statement = "Persistence forks (BGSAVE / AOF rewrite) fail or double memory through "
          .. "copy-on-write; with overcommit_memory = 0 the fork is refused",
        likelihood = a.fork > 0 and math.min(0.85, 0.6 + (a.overcommit > 0 and 0.15 or 0))
          or (a.overcommit > 0 and 0.25 or 0.1) }
      out:hypothesis { key = "redismem_output_buffers", category = "code",
        statement = "Client output buffers (slow pub/sub subscribers, a slow replica) hold the "
          .. "memory",
        likelihood = a.buffers > 0 and 0.55 or 0.05 }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("redismem_data_growth", "for", "redismem_oom_command", "writes rejected at maxmemory")
      ev("redismem_data_growth", "for", "redismem_noeviction", "policy noeviction")
      ev("redismem_data_growth", "for", "redismem_bigkey", "big keys listed")
      ev("redismem_fragmentation", "for", "redismem_frag_high", "fragmentation ratio >= 1.5")
      if a.killed then
        local k = sig(ctx, "oom_killer") or sig(ctx, "k8s_oomkilled")
        out:evidence { hypothesis = a.fragmented and "redismem_fragmentation"
            or "redismem_data_growth", stance = "for", evidence_id = k.evidence_id,
          line = k.first_line, summary = "the kernel killed redis-server for memory ("
            .. span(k) .. ")" }
      end
      ev("redismem_fork_cow", "for", "redismem_fork_failed", "fork for persistence failed")
      ev("redismem_fork_cow", "for", "redismem_overcommit", "overcommit_memory is 0")
      ev("redismem_output_buffers", "for", "redismem_client_buffer", "large output buffers")
      if a.ratio then
        out:evidence { hypothesis = "redismem_data_growth", stance = a.ratio >= 0.9 and "for"
          or "against", evidence_id = a.info_ev.id, line = a.info_line,
          summary = string.format("used_memory is %.0f%% of maxmemory", a.ratio * 100) }
      end
      ev("redismem_data_growth", "for", "redismem_keys_no_ttl",
         "INFO keyspace: under 10 % of the keys have a TTL")
      if a.frag and a.frag < 1.5 then
        out:evidence { hypothesis = "redismem_fragmentation", stance = "against",
          evidence_id = a.info_ev and a.info_ev.id,
          summary = "mem_fragmentation_ratio is " .. a.frag .. " (below 1.5)" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      if not a.used then
        out:ask { label = "Redis memory figures", hypothesis = "redismem_data_growth",
          command = "redis-cli -h <host> INFO memory",
          why = "used_memory vs maxmemory, RSS and fragmentation, the eviction policy" }
      end
      if not a.keys then
        out:ask { label = "Keys and expiries per database", hypothesis = "redismem_data_growth",
          command = "redis-cli -h <host> INFO keyspace",
          why = "many keys without expiry in a cache means TTLs are missing" }
      end
      out:ask { label = "Evictions and hit ratio", hypothesis = "redismem_data_growth",
        command = "redis-cli -h <host> INFO stats | grep -E "
          .. "'evicted_keys|expired_keys|keyspace_(hits|misses)'" }
      if a.bigkey == 0 then
        out:ask { label = "Largest keys", hypothesis = "redismem_data_growth",
          command = "redis-cli -h <host> --bigkeys",
          why = "one runaway key (hash, list, zset) can hold most of the memory" }
      end
      out:ask { label = "Clients holding output buffers", hypothesis = "redismem_output_buffers",
        command = "redis-cli -h <host> CLIENT LIST | grep -v ' omem=0 '" }
      if a.fork > 0 or a.misconf then
        out:ask { label = "Persistence status", hypothesis = "redismem_fork_cow",
          command = "redis-cli -h <host> INFO persistence; sysctl vm.overcommit_memory" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.fork > 0 and not a.full then
        out:conclude { hypothesis = "redismem_fork_cow", severity = "high",
          confidence = math.min(0.85, 0.6 + (a.overcommit > 0 and 0.15 or 0)
            + (a.misconf and 0.05 or 0)),
          root_cause = "Redis cannot fork for BGSAVE/AOF rewrite (" .. span(sig(ctx,
            "redismem_fork_failed")) .. ")" .. (a.overcommit > 0 and " with "
            .. "vm.overcommit_memory = 0" or "") .. "; persistence fails and, with "
            .. "stop-writes-on-bgsave-error, writes are refused (MISCONF)." }
      elseif a.full then
        local detail = a.ratio and string.format("used_memory at %.0f%% of maxmemory",
          a.ratio * 100) or span(sig(ctx, "redismem_oom_command"))
        out:conclude { hypothesis = "redismem_data_growth", severity = "high",
          confidence = math.min(0.9, 0.6 + (a.ratio and 0.1 or 0) + (a.no_ttl and 0.1 or 0)
            + ((a.noeviction > 0 or a.policy == "noeviction") and 0.05 or 0)),
          root_cause = "Redis is full (" .. detail .. ")" .. ((a.noeviction > 0
            or a.policy == "noeviction") and " with policy noeviction, so writes are rejected"
            or "") .. (a.no_ttl and "; most keys have no TTL, so the data grows without bound"
            or "") .. "." }
      elseif a.fragmented then
        out:conclude { hypothesis = "redismem_fragmentation", severity = "medium",
          confidence = 0.6,
          root_cause = "Memory fragmentation (ratio " .. tostring(a.frag or ">= 1.5")
            .. "): Redis' RSS is far above its data." }
      elseif a.buffers > 0 then
        out:conclude { hypothesis = "redismem_output_buffers", severity = "medium",
          confidence = 0.55,
          root_cause = "Client output buffers hold the memory (" .. span(sig(ctx,
            "redismem_client_buffer")) .. ")." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.full or not a.strong then
        out:mitigate { title = "Evict instead of failing writes (pure cache only)",
          command = "redis-cli -h <host> CONFIG SET maxmemory-policy allkeys-lru",
          risk = "medium", undo = "redis-cli -h <host> CONFIG SET maxmemory-policy "
            .. (a.policy or "noeviction"),
          verify = "redis-cli -h <host> INFO stats | grep evicted_keys" }
        out:mitigate { title = "Raise maxmemory if the host has headroom",
          command = "redis-cli -h <host> CONFIG SET maxmemory <bytes> && redis-cli -h <host> "
            .. "CONFIG REWRITE",
          description = "keep room for fork and buffers: maxmemory at 60-75 % of host memory",
          risk = "medium", undo = "redis-cli -h <host> CONFIG SET maxmemory "
            .. (a.max and string.format("%d", a.max) or "<previous>") }
        out:solve { title = "Put a TTL on every cache key and bound collections",
          description = "SET key value EX <seconds>; LTRIM / ZREMRANGEBYRANK for lists and "
            .. "sorted sets; split big keys; UNLINK (not DEL) runaway keys",
          risk = "low", undo = "revert the client change" }
      end
      if a.fork > 0 or a.overcommit > 0 then
        out:mitigate { title = "Allow the fork: vm.overcommit_memory = 1",
          command = "sysctl -w vm.overcommit_memory=1",
          risk = "low", undo = "sysctl -w vm.overcommit_memory=0",
          verify = "redis-cli -h <host> BGSAVE && redis-cli -h <host> INFO persistence | grep "
            .. "rdb_last_bgsave_status" }
        out:solve { title = "Size maxmemory for persistence and persist the sysctl",
          description = "vm.overcommit_memory = 1 in /etc/sysctl.d; maxmemory <= 60-75 % of "
            .. "the host or container limit so copy-on-write during BGSAVE fits",
          risk = "low", undo = "remove the sysctl.d file" }
      end
      if a.fragmented then
        out:mitigate { title = "Defragment online",
          command = "redis-cli -h <host> CONFIG SET activedefrag yes",
          risk = "low", undo = "redis-cli -h <host> CONFIG SET activedefrag no" }
        out:solve { title = "Keep fragmentation in check",
          description = "activedefrag yes in redis.conf (CONFIG REWRITE); avoid churn of many "
            .. "short-lived keys of varied sizes; leave headroom between maxmemory and the "
            .. "container / host limit for RSS",
          risk = "low", undo = "activedefrag no" }
      end
      if a.buffers > 0 then
        out:mitigate { title = "Kill the client with the huge output buffer",
          command = "redis-cli -h <host> CLIENT KILL ID <id>",
          risk = "low", undo = "none: the client reconnects" }
        out:solve { title = "Limit output buffers",
          command = "redis-cli -h <host> CONFIG SET client-output-buffer-limit "
            .. "'pubsub 32mb 8mb 60'",
          risk = "low", undo = "CONFIG SET client-output-buffer-limit to the previous value" }
      end
    end },
  },
}
