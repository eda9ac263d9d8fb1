-- Long garbage collection pauses (kb/gc-pauses.md).
--
-- Evidence it reads: JVM GC logs (unified JDK 9+ "Pause Full (...) 3900M->3850M(4096M)
-- 4521.337ms" and JDK 8 "[Full GC ... real=3.87 secs]"), "GC overhead limit exceeded",
-- To-space exhausted / humongous allocations, the collector in use, GC pause and heap metrics
-- (jvm_gc_pause_seconds_max, jvm_memory_used_bytes / jvm_memory_max_bytes), consequences of
-- pauses (Kafka consumers leaving the group, sessions expiring), CPU throttling and swap.
-- Competing explanations: a heap too small for the live set, a memory leak filling the old
-- generation, allocation spikes (humongous objects), the wrong collector for a latency goal,
-- GC threads starved of CPU by a low limit, swapping.

local kit = require "kit"
local where, signal_finding, sig_evidence = kit.where, kit.signal_finding, kit.signal_evidence
local is_ramp = kit.is_ramp

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { full_heap = nil, pause_metric = nil, heap_ratio = nil, heap_ramp = nil, throttle = nil,
        swap = nil }
  for _, ev in ipairs(ctx.evidence) do
    local sum = ev.summary or {}
    -- a full GC line kept as a template example: heap before->after(max) and the pause
    for _, t in ipairs(sum.logs and sum.logs.templates or {}) do
      local ex = tostring(t.example or "")
      if ex:find("Pause Full") or ex:find("Full GC") then
        local _, after, max = ex:match("(%d+)[MK]%->(%d+)[MK]%((%d+)[MK]%)")
        after, max = tonumber(after), tonumber(max)
        if after and max and max > 0 and (not f.full_heap or after / max > f.full_heap.ratio) then
          f.full_heap = { ratio = after / max, after = after, max = max, ev = ev,
                          line = tonumber(t.first_line), text = ex }
        end
      end
    end
    -- metrics
    local used, maxb, periods, throttled = {}, {}, nil, nil
    for _, s in ipairs(sum.metrics and sum.metrics.series or {}) do
      local name = tostring(s.name or "")
      local area = s.labels and s.labels.area
      if name == "jvm_gc_pause_seconds_max" or name == "jvm_gc_pause_seconds" then
        local mx = tonumber(s.max)
        if mx and (not f.pause_metric or mx > f.pause_metric.max) then
          f.pause_metric = { max = mx, ev = ev }
        end
      elseif name == "jvm_memory_used_bytes" and (area == nil or area == "heap") then
        used[#used + 1] = tonumber(s.max)
        if is_ramp(s) then
          f.heap_ramp = { min = tonumber(s.min), max = tonumber(s.max), ev = ev }
        end
      elseif name == "jvm_memory_max_bytes" and (area == nil or area == "heap") then
        maxb[#maxb + 1] = tonumber(s.max)
      elseif name == "container_cpu_cfs_periods_total" then periods = tonumber(s.mean)
      elseif name == "container_cpu_cfs_throttled_periods_total" then
        throttled = tonumber(s.mean)
      end
    end
    if #used > 0 and #maxb > 0 then
      local u, m = 0, 0
      for _, v in ipairs(used) do u = u + (v or 0) end
      for _, v in ipairs(maxb) do if v and v > 0 then m = m + v end end
      if m > 0 then f.heap_ratio = { ratio = u / m, ev = ev } end
    end
    if periods and throttled and periods > 0 then
      f.throttle = { ratio = throttled / periods, ev = ev }
    end
    -- swap in use (free, top)
    local c = sum.command
    if c and tonumber(c.swap_used_pct) and tonumber(c.swap_used_pct) >= 10 then
      f.swap = { pct = tonumber(c.swap_used_pct), ev = ev }
    end
  end
  f.long = ctx.signal("gcpause_long")
  f.medium = ctx.signal("gcpause_medium")
  f.full = ctx.signal("gcpause_full")
  f.overhead = ctx.signal("gcpause_overhead")
  f.to_space = ctx.signal("gcpause_to_space_exhausted")
  f.humongous = ctx.signal("gcpause_humongous")
  f.parallel = ctx.signal("gcpause_parallel_collector")
  f.membership = ctx.signal("gcpause_membership_lost")
  f.throttle_alert = ctx.signal("cputhrottle_alert")
  f.leak_signals = ctx.signal("leak_gc_overhead") + ctx.signal("java_out_of_memory")
  f.metric_long = f.pause_metric and f.pause_metric.max >= 1
  f.pausing = f.long > 0 or f.metric_long or f.medium >= 3 or f.overhead > 0
  f.full_heap_high = (f.full_heap and f.full_heap.ratio >= 0.85)
    or (f.heap_ratio and f.heap_ratio.ratio >= 0.9)
  f.starved = (f.throttle and f.throttle.ratio >= 0.25) or f.throttle_alert > 0
  cache[ctx] = f
  return f
end

local function diagnose(f)
  if not f.pausing then return nil end
  if f.heap_ramp and (f.full_heap_high or f.overhead > 0 or f.full >= 3) then
    return "gcpause_memory_leak", 0.75, string.format("The heap's used memory climbs steadily "
      .. "(%g to %g) until full collections run back to back and reclaim almost nothing: a "
      .. "memory leak drives the GC pauses", f.heap_ramp.min, f.heap_ramp.max)
  end
  if f.to_space > 0 or f.humongous > 0 then
    return "gcpause_allocation_spike", 0.7, "Allocation bursts (humongous objects / to-space "
      .. "exhausted) overflow the free heap and force long evacuation failures and full GCs"
  end
  if f.starved then
    return "gcpause_cpu_starved", 0.7, "The GC threads are throttled by the container's CPU "
      .. "limit, so every pause stretches out"
  end
  if f.swap then
    return "gcpause_swapping", 0.7, string.format("The host swaps (%d%% of swap used): heap "
      .. "pages on disk make every collection slow", math.floor(f.swap.pct))
  end
  if f.full_heap_high or f.overhead > 0 then
    local r = f.full_heap and f.full_heap.ratio or (f.heap_ratio and f.heap_ratio.ratio)
    return "gcpause_heap_too_small", 0.7, string.format("The live data set nearly fills the "
      .. "heap%s: full collections run constantly and free little, pausing the application",
      r and string.format(" (%.0f%% of the heap still used after a full GC)", r * 100) or "")
  end
  if f.parallel > 0 and (f.long > 0 or f.metric_long) then
    return "gcpause_wrong_collector", 0.6, "A throughput collector (Parallel GC) makes long "
      .. "stop-the-world pauses on a latency-sensitive service"
  end
end

local STATEMENTS = {
  gcpause_heap_too_small = "The heap is too small for the live data set: collections run "
    .. "constantly and free little",
  gcpause_memory_leak = "A memory leak fills the old generation until full GCs run back to back",
  gcpause_allocation_spike = "Allocation spikes (large responses, batch jobs, humongous objects) "
    .. "overflow the free heap",
  gcpause_wrong_collector = "The collector does not fit the latency goal (Parallel GC on a "
    .. "latency-sensitive service)",
  gcpause_cpu_starved = "GC threads are starved of CPU (container CPU limit throttling)",
  gcpause_swapping = "The host swaps, so heap pages on disk make collections slow",
}
local CATEGORY = { gcpause_heap_too_small = "config", gcpause_memory_leak = "code",
                   gcpause_allocation_spike = "code", gcpause_wrong_collector = "config",
                   gcpause_cpu_starved = "config", gcpause_swapping = "environment" }
local ORDER = { "gcpause_heap_too_small", "gcpause_memory_leak", "gcpause_allocation_spike",
                "gcpause_wrong_collector", "gcpause_cpu_starved", "gcpause_swapping" }

return {
  id = "gc-pauses",
  title = "Long garbage collection pauses",
  version = "1.0.0",
  description = "The runtime stops the application for garbage collection long enough to hurt "
    .. "latency, or collects constantly because the heap is nearly full. Reads GC logs, GC and "
    .. "heap metrics, throttling and swap to tell a small heap, a leak, allocation spikes, the "
    .. "collector choice and CPU starvation apart.",
  tags = { "gc", "garbage-collection", "jvm", "g1", "stop-the-world", "heap", "latency" },
  category = "config",
  kb = "long GC pauses full GC heap too small stop the world G1",

  signals = {
    { name = "gcpause_long", severity = "error",
      pattern = [[Pause (Full|Young|Remark|Cleanup|Mixed)[^\n]* [0-9]{4,}\.[0-9]+ ?ms$]]
        .. [[|real=[1-9][0-9]*\.[0-9]+ secs|threads were stopped: [1-9][0-9]*\.[0-9]+ seconds]],
      description = "a stop-the-world GC pause of a second or more" },
    { name = "gcpause_medium", severity = "warning",
      pattern = [[Pause (Full|Young|Remark|Cleanup|Mixed)[^\n]* [1-9][0-9]{2}\.[0-9]+ ?ms$]]
        .. [[|real=0\.[1-9][0-9] secs]],
      description = "a GC pause of 100 to 999 ms" },
    { name = "gcpause_full", severity = "warning",
      pattern = [[Pause Full|\[Full GC|Full GC \(]],
      description = "a full (whole-heap) collection" },
    { name = "gcpause_overhead", severity = "critical",
      pattern = [[GC overhead limit exceeded]],
      description = "the JVM spends almost all its time collecting" },
    { name = "gcpause_to_space_exhausted", severity = "error",
      pattern = [[To-space exhausted|to-space overflow|Evacuation Failure]],
      description = "G1 ran out of free regions while copying (evacuation failure)" },
    { name = "gcpause_humongous", flags = "i", severity = "warning",
      pattern = [[G1 Humongous Allocation|humongous allocation]],
      description = "objects larger than half a G1 region" },
    { name = "gcpause_parallel_collector", severity = "info",
      pattern = [[Using Parallel|PSYoungGen|ParOldGen|Full GC \(Ergonomics\)]]
        .. [[|Pause Full \(Ergonomics\)]],
      description = "the Parallel (throughput) collector is in use" },
    { name = "gcpause_membership_lost", flags = "i", severity = "warning",
      pattern = [[sending LeaveGroup request|consumer poll timeout has expired]]
        .. [[|session (expired|timed out)[^\n]{0,60}(zookeeper|etcd|consul)]]
        .. [[|(zookeeper|etcd|consul)[^\n]{0,80}session (expired|timed out)]],
      description = "a member lost its group or session (typical while paused)" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.long > 0 then
      score = 0.5
      reasons[#reasons + 1] = "GC pauses of a second or more in " .. where(ctx, "gcpause_long")
    elseif f.medium >= 3 then
      score = 0.35
      reasons[#reasons + 1] = "GC pauses of 100+ ms in " .. where(ctx, "gcpause_medium")
    end
    if f.metric_long then
      score = score + (score > 0 and 0.1 or 0.5)
      reasons[#reasons + 1] = string.format("jvm_gc_pause_seconds max %.2f s (%s)",
        f.pause_metric.max, tostring(f.pause_metric.ev.filename))
    end
    if f.overhead > 0 then
      score = score + (score > 0 and 0.1 or 0.4)
      reasons[#reasons + 1] = "GC overhead limit exceeded in " .. where(ctx, "gcpause_overhead")
    end
    if f.full >= 3 then
      score = score + (score > 0 and 0.1 or 0.2)
      reasons[#reasons + 1] = string.format("%d full GCs (%s)", f.full, where(ctx, "gcpause_full"))
    end
    if f.membership > 0 and score > 0 then
      score = score + 0.05
      reasons[#reasons + 1] = "group/session lost in " .. where(ctx, "gcpause_membership_lost")
    end
    local key = score > 0 and diagnose(f)
    if key then
      score = score + 0.15
      reasons[#reasons + 1] = "cause seen: " .. key
    end
    if ctx.said("gc pause", "garbage collect", "stop the world", "stop-the-world", "full gc",
                "gc overhead") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports GC pauses"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      signal_finding(ctx, out, "gcpause_long", "GC pauses of 1 s or more")
      signal_finding(ctx, out, "gcpause_medium", "GC pauses of 100-999 ms")
      signal_finding(ctx, out, "gcpause_full", "Full GCs")
      signal_finding(ctx, out, "gcpause_overhead", "GC overhead limit exceeded")
      signal_finding(ctx, out, "gcpause_to_space_exhausted", "To-space exhausted")
      signal_finding(ctx, out, "gcpause_humongous", "Humongous allocations")
      signal_finding(ctx, out, "gcpause_parallel_collector", "Parallel collector in use")
      signal_finding(ctx, out, "gcpause_membership_lost", "Group membership/session lost")
      if f.full_heap then
        out:finding { text = string.format("After a full GC the heap is still %.0f%% used "
          .. "(%d of %d MB)", f.full_heap.ratio * 100, f.full_heap.after, f.full_heap.max),
          evidence_id = f.full_heap.ev.id, filename = f.full_heap.ev.filename,
          line = f.full_heap.line }
      end
      if f.pause_metric then
        out:finding { text = string.format("jvm_gc_pause_seconds max %.2f s",
          f.pause_metric.max), evidence_id = f.pause_metric.ev.id,
          filename = f.pause_metric.ev.filename }
      end
      if f.heap_ratio then
        out:finding { text = string.format("Heap used up to %.0f%% of max",
          f.heap_ratio.ratio * 100), evidence_id = f.heap_ratio.ev.id,
          filename = f.heap_ratio.ev.filename }
      end
      if f.heap_ramp then
        out:finding { text = string.format("Heap used climbs steadily from %g to %g",
          f.heap_ramp.min, f.heap_ramp.max), evidence_id = f.heap_ramp.ev.id,
          filename = f.heap_ramp.ev.filename }
      end
      if f.throttle then
        out:finding { text = string.format("CPU throttled in %.0f%% of CFS periods",
          f.throttle.ratio * 100), evidence_id = f.throttle.ev.id,
          filename = f.throttle.ev.filename }
      end
      if f.swap then
        out:finding { text = string.format("%d%% of swap in use", math.floor(f.swap.pct)),
                      evidence_id = f.swap.ev.id, filename = f.swap.ev.filename }
      end
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local key, conf = diagnose(f)
      local lk = { gcpause_heap_too_small = f.full_heap_high and 0.5 or 0.3,
                   gcpause_memory_leak = f.heap_ramp and 0.5 or 0.25,
                   gcpause_allocation_spike = (f.to_space + f.humongous > 0) and 0.5 or 0.2,
                   gcpause_wrong_collector = f.parallel > 0 and 0.35 or 0.1,
                   gcpause_cpu_starved = f.starved and 0.5 or 0.1,
                   gcpause_swapping = f.swap and 0.5 or 0.05 }
      if key then lk[key] = conf end
      for _, k in ipairs(ORDER) do
        out:hypothesis { key = k, statement = STATEMENTS[k], likelihood = lk[k],
                         category = CATEGORY[k] }
      end
      if f.full_heap then
        out:evidence { hypothesis = "gcpause_heap_too_small",
          stance = f.full_heap.ratio >= 0.85 and "for" or "against",
          evidence_id = f.full_heap.ev.id, line = f.full_heap.line,
          summary = string.format("%.0f%% of the heap still used after a full GC",
                                  f.full_heap.ratio * 100) }
      end
      if f.heap_ramp then
        out:evidence { hypothesis = "gcpause_memory_leak", stance = "for",
          evidence_id = f.heap_ramp.ev.id, summary = string.format("heap used climbs from %g "
          .. "to %g", f.heap_ramp.min, f.heap_ramp.max) }
      end
      sig_evidence(ctx, out, "gcpause_heap_too_small", "for", "gcpause_overhead",
        "GC overhead limit")
      sig_evidence(ctx, out, "gcpause_allocation_spike", "for", "gcpause_to_space_exhausted",
        "to-space exhausted")
      sig_evidence(ctx, out, "gcpause_allocation_spike", "for", "gcpause_humongous",
        "humongous allocations")
      sig_evidence(ctx, out, "gcpause_wrong_collector", "for", "gcpause_parallel_collector",
        "Parallel GC")
      sig_evidence(ctx, out, "gcpause_cpu_starved", "for", "cputhrottle_alert", "CPUThrottlingHigh")
      if f.throttle then
        out:evidence { hypothesis = "gcpause_cpu_starved",
          stance = f.throttle.ratio >= 0.25 and "for" or "against", evidence_id =
          f.throttle.ev.id, summary = string.format("%.0f%% of CFS periods throttled",
          f.throttle.ratio * 100) }
      end
      if f.swap then
        out:evidence { hypothesis = "gcpause_swapping", stance = "for", evidence_id = f.swap.ev.id,
          summary = string.format("%d%% swap used", math.floor(f.swap.pct)) }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("long GC pauses full GC heap sizing", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      out:ask { label = "Old generation after each full GC", hypothesis =
        "gcpause_heap_too_small", command = "jstat -gcutil <pid> 1000 10",
        why = "O (old gen %) staying above 90% after FGC increments: the live set does not fit" }
      out:ask { label = "Collector and heap flags", hypothesis = "gcpause_wrong_collector",
        command = "jcmd <pid> VM.flags | tr ' ' '\\n' | grep -E 'Use.*GC|MaxHeapSize|"
          .. "MaxRAMPercentage'",
        why = "which collector runs, and how big the heap is against the container limit" }
      if not f.heap_ramp then
        out:ask { label = "Heap after GC over days", hypothesis = "gcpause_memory_leak",
          command = "jvm_memory_used_bytes{area=\"heap\"}[3d]  (PromQL), or two "
            .. "jcmd <pid> GC.class_histogram hours apart",
          why = "a rising floor after each GC is a leak; a flat one a heap too small" }
      end
      if not f.throttle and f.throttle_alert == 0 then
        out:ask { label = "CPU throttling during pauses", hypothesis = "gcpause_cpu_starved",
          command = "kubectl -n <namespace> exec <pod> -- cat /sys/fs/cgroup/cpu.stat",
          why = "nr_throttled growing: the GC threads wait for CPU quota" }
      end
      if f.long + f.medium + f.full == 0 then
        out:ask { label = "The GC log", hypothesis = "gcpause_heap_too_small",
          command = "grep -E 'Pause (Full|Young)' /var/log/app/gc.log | tail -50  "
            .. "(enable with -Xlog:gc*:file=/var/log/app/gc.log:time,uptime)",
          why = "pause lengths, heap before/after and the cause of each collection" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local key, conf, text = diagnose(facts(ctx))
      if key then
        out:conclude { hypothesis = key, confidence = conf, root_cause = text,
                       severity = "medium" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local key = diagnose(facts(ctx))
      if key == "gcpause_cpu_starved" then
        out:mitigate { title = "Raise the CPU limit so GC threads can run",
          command = "kubectl -n <namespace> set resources deploy/<app> --limits=cpu=<2x>",
          risk = "low", undo = "kubectl -n <namespace> rollout undo deploy/<app>" }
      elseif key == "gcpause_swapping" then
        out:mitigate { title = "Stop the host swapping the heap",
          command = "sudo swapoff -a   # after freeing memory; or lower the heap",
          risk = "medium", undo = "sudo swapon -a" }
      else
        out:mitigate { title = "Raise the heap and the container limit together",
          command = "kubectl -n <namespace> set env deploy/<app> "
            .. "JAVA_TOOL_OPTIONS='-XX:MaxRAMPercentage=70' && kubectl -n <namespace> set "
            .. "resources deploy/<app> --limits=memory=<1.5x>",
          description = "Buys headroom; a leak will fill it again", risk = "medium",
          undo = "kubectl -n <namespace> rollout undo deploy/<app>",
          verify = "no full GCs under normal load; pause p99 within budget" }
        out:mitigate { title = "Restart the worst instances one at a time",
          command = "kubectl -n <namespace> delete pod <pod>", risk = "low",
          undo = "none needed", description = "Resets a filling heap; not a fix" }
      end
      out:solve { title = "Size the heap for the live set and pick the collector for the goal",
        description = "Heap about 2-3x the live set; G1 or ZGC/Shenandoah for low pauses with "
          .. "a realistic MaxGCPauseMillis; stream large payloads; fix leaks found in heap dumps",
        risk = "low", undo = "revert the JVM flags" }
      out:solve { title = "Keep GC logging on and alert on GC time",
        description = "-Xlog:gc*:file=...:filecount=5,filesize=20m; alert when GC takes more "
          .. "than 10% of wall time or pause max exceeds the latency budget",
        risk = "low", undo = "remove the alert" }
    end },
  },
}
