-- Memory leak: a process's memory grows with uptime until it is OOM killed or restarted
-- (kb/memory-leak.md).
--
-- Evidence it reads: memory metrics (working set, RSS, heap) that ramp up steadily instead of
-- following load (CSV, Prometheus, JSON series from the analyser), goroutine or thread counts
-- that ramp, out-of-memory errors of each runtime (Java heap / GC overhead / direct buffers,
-- Node.js heap limit, Go runtime), repeated full GCs, and repeated OOM kills.
-- Competing explanations: retained objects (unbounded caches, listeners), native/off-heap
-- memory, leaked goroutines/threads, and "not a leak": memory following load or an undersized
-- heap for a legitimate working set.

local kit = require "kit"
local where, signal_finding = kit.where, kit.signal_finding

local function is_memory(name)
  return name:find("mem") or name:find("rss") or name:find("heap") or name:find("working_set")
end

-- Shape of one series: "ramp" (steady climb or sawtooth: range >= 30% of the minimum, no
-- |z| >= 3 outliers, sd about 0.29 of the range as for a uniform ramp), "spike" (outliers),
-- "flat" (range under 15% of the mean) or nil.
local function shape(s)
  local mn, mx, sd, mean = tonumber(s.min), tonumber(s.max), tonumber(s.stddev), tonumber(s.mean)
  if not (mn and mx and sd and mean) or (tonumber(s.count) or 0) < 10
     or s.value_kind == "increase" then
    return nil
  end
  local range = mx - mn
  if range <= 0.15 * math.max(math.abs(mean), 1e-9) then return "flat" end
  if (tonumber(s.anomaly_count) or 0) > 0 then return "spike" end
  if range >= 0.3 * math.max(math.abs(mn), 1e-9) and sd / range >= 0.2 and sd / range <= 0.4 then
    return "ramp"
  end
  return nil
end

local function label_text(labels)              -- "{k=v,...}" (kit.label_key), "" for none
  local key = kit.label_key(labels)
  return key ~= "" and ("{" .. key .. "}") or ""
end

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { ramps = {}, spikes = {}, flats = {}, goroutine_ramps = {} }
  for _, ev in ipairs(ctx.of_type("metrics")) do
    local m = ev.summary and ev.summary.metrics or {}
    for _, s in ipairs(m.series or {}) do
      local name = tostring(s.name or ""):lower()
      local sh = shape(s)
      local item = { ev = ev, name = tostring(s.name) .. label_text(s.labels),
                     min = tonumber(s.min), max = tonumber(s.max), from = s.first_ts,
                     to = s.last_ts, anomalies = s.anomalies }
      if is_memory(name) then
        if sh == "ramp" then f.ramps[#f.ramps + 1] = item
        elseif sh == "spike" then f.spikes[#f.spikes + 1] = item
        elseif sh == "flat" then f.flats[#f.flats + 1] = item end
      elseif (name:find("goroutine") or name:find("thread")) and sh == "ramp" then
        f.goroutine_ramps[#f.goroutine_ramps + 1] = item
      end
    end
  end
  f.java_heap = ctx.signal("java_out_of_memory")
  f.gc_overhead = ctx.signal("leak_gc_overhead")
  f.js_heap = ctx.signal("leak_js_heap")
  f.go_oom = ctx.signal("leak_go_oom")
  f.native = ctx.signal("leak_native_memory")
  f.threads = ctx.signal("leak_native_thread")
  f.full_gc = ctx.signal("leak_full_gc")
  f.kills = ctx.signal("k8s_oomkilled") + ctx.signal("oom_killer")
  f.oom_errors = f.java_heap + f.js_heap + f.go_oom + f.native + f.threads
  cache[ctx] = f
  return f
end

local function first_ramp(f) return f.ramps[1] or f.goroutine_ramps[1] end

return {
  id = "memory-leak",
  title = "Memory leak in a long-running service",
  version = "1.0.0",
  description = "Memory grows with uptime and never settles until the process is OOM killed or "
    .. "restarted. Reads memory and goroutine metrics (ramp vs spike vs flat), runtime "
    .. "out-of-memory errors and GC logs; tells retained objects, native memory and leaked "
    .. "goroutines from load-driven peaks and an undersized heap.",
  tags = { "memory", "leak", "heap", "rss", "gc", "outofmemoryerror", "pprof" },
  category = "code",
  kb = "memory leak heap growth rss sawtooth heap dump profiling",

  signals = {
    { name = "leak_js_heap", severity = "critical",
      pattern = [[JavaScript heap out of memory|Reached heap limit Allocation failed]],
      description = "Node.js reached its heap limit" },
    { name = "leak_go_oom", severity = "critical",
      pattern = [[runtime: out of memory|fatal error: runtime: cannot allocate memory]],
      description = "the Go runtime could not allocate memory" },
    { name = "leak_gc_overhead", severity = "error",
      pattern = [[GC overhead limit exceeded]],
      description = "the JVM spends almost all its time in GC reclaiming almost nothing" },
    { name = "leak_native_memory", severity = "error",
      pattern = [[OutOfMemoryError: (Direct buffer memory|Metaspace|Compressed class space)]]
        .. [[|malloc\(\) failed|Native memory allocation \(malloc\) failed]],
      description = "off-heap memory exhausted (direct buffers, metaspace, malloc)" },
    { name = "leak_native_thread", severity = "error",
      pattern = [[unable to create (new )?native thread|pthread_create failed]],
      description = "threads leak until the process cannot create more" },
    { name = "leak_full_gc", severity = "warning",
      pattern = [[Pause Full|\[Full GC|Full GC \(|Mark-[Ss]weep [0-9.]+ \([0-9.]+\) -> ]],
      description = "full (stop-the-world) collections: frequent ones mean the live set is near "
        .. "the heap limit" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if #f.ramps > 0 then
      local r = f.ramps[1]
      score = score + 0.5
      reasons[#reasons + 1] = string.format("%s climbs steadily from %g to %g in %s", r.name,
        r.min, r.max, tostring(r.ev.filename))
    end
    if #f.goroutine_ramps > 0 then
      local r = f.goroutine_ramps[1]
      score = score + 0.3
      reasons[#reasons + 1] = string.format("%s climbs from %g to %g in %s", r.name, r.min,
        r.max, tostring(r.ev.filename))
    end
    if f.oom_errors > 0 then
      score = score + 0.25
      for _, n in ipairs { "java_out_of_memory", "leak_js_heap", "leak_go_oom",
                           "leak_native_memory", "leak_native_thread" } do
        if ctx.signal(n) > 0 then reasons[#reasons + 1] = n .. " in " .. where(ctx, n) end
      end
    end
    if f.gc_overhead > 0 then
      score = score + 0.05
      reasons[#reasons + 1] = "GC overhead limit exceeded in " .. where(ctx, "leak_gc_overhead")
    end
    if f.full_gc >= 3 then
      score = score + 0.15
      reasons[#reasons + 1] = string.format("%d full GCs (%s)", f.full_gc,
                                            where(ctx, "leak_full_gc"))
    end
    if f.kills > 0 and score > 0 then
      score = score + 0.1
      local n = ctx.signal("k8s_oomkilled") > 0 and "k8s_oomkilled" or "oom_killer"
      reasons[#reasons + 1] = "OOM kills in " .. where(ctx, n)
    end
    if #f.spikes > 0 and #f.ramps == 0 then score = score * 0.6 end
    if ctx.said("leak", "keeps growing", "grows over time", "memory grows", "creeping",
                "sawtooth", "restart fixes", "until restart") then
      score = score + (score > 0 and 0.15 or 0.3)
      reasons[#reasons + 1] = "the user describes memory growing with uptime"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for _, r in ipairs(f.ramps) do
        out:finding { text = string.format("%s ramps from %g to %g between %s and %s", r.name,
          r.min, r.max, tostring(r.from or "?"), tostring(r.to or "?")),
          evidence_id = r.ev.id, filename = r.ev.filename }
      end
      for _, r in ipairs(f.goroutine_ramps) do
        out:finding { text = string.format("%s ramps from %g to %g", r.name, r.min, r.max),
                      evidence_id = r.ev.id, filename = r.ev.filename }
      end
      for _, r in ipairs(f.spikes) do
        local a = r.anomalies and r.anomalies[1]
        out:finding { text = string.format("%s jumps to %g%s (a spike, not a ramp)", r.name,
          r.max, a and (" at " .. tostring(a.ts)) or ""), evidence_id = r.ev.id,
          filename = r.ev.filename, line = a and tonumber(a.line) or nil }
      end
      signal_finding(ctx, out, "java_out_of_memory", "Java OutOfMemoryError")
      signal_finding(ctx, out, "leak_gc_overhead", "GC overhead limit exceeded")
      signal_finding(ctx, out, "leak_js_heap", "Node.js heap limit reached")
      signal_finding(ctx, out, "leak_go_oom", "Go runtime out of memory")
      signal_finding(ctx, out, "leak_native_memory", "Off-heap memory exhausted")
      signal_finding(ctx, out, "leak_native_thread", "Cannot create more threads")
      signal_finding(ctx, out, "leak_full_gc", "Full garbage collections")
      signal_finding(ctx, out, "k8s_oomkilled", "Container OOMKilled")
      signal_finding(ctx, out, "oom_killer", "Kernel OOM killer")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local ramp = #f.ramps > 0
      local heap = ramp and 0.6 or (f.oom_errors > 0 and 0.4 or 0.25)
      if f.java_heap + f.js_heap + f.gc_overhead > 0 and ramp then heap = 0.75 end
      if f.native > 0 or #f.goroutine_ramps > 0 or f.threads > 0 then heap = heap - 0.2 end
      out:hypothesis { key = "leak_retained_objects", likelihood = math.max(heap, 0.1),
        statement = "Objects are retained without bound (a cache or map keyed by request, "
          .. "listeners never removed, a static collection), so the heap grows with uptime" }
      out:hypothesis { key = "leak_native_memory", likelihood = f.native > 0 and 0.7 or 0.15,
        statement = "Native/off-heap memory leaks (direct buffers, unclosed streams, "
          .. "compression contexts, malloc arena fragmentation): RSS grows while heap is flat" }
      out:hypothesis { key = "leak_goroutines_threads",
        likelihood = (#f.goroutine_ramps > 0 or f.threads > 0) and 0.7 or 0.15,
        statement = "Goroutines or threads block forever (a channel, a lock, a call without a "
          .. "timeout) and each keeps its stack and references" }
      local load = 0.2
      if #f.spikes > 0 and not ramp then load = 0.6 elseif ramp then load = 0.1 end
      out:hypothesis { key = "leak_load_driven", likelihood = load, category = "data",
        statement = "Not a leak: memory follows load or one large request/job (it jumps with "
          .. "traffic and comes back down), so the limit is hit at peaks" }
      out:hypothesis { key = "leak_heap_undersized", category = "config",
        likelihood = (f.oom_errors > 0 and not ramp and #f.spikes == 0) and 0.35 or 0.1,
        statement = "The heap or container limit is simply too small for the legitimate "
          .. "working set (it plateaus just above the limit)" }

      for _, r in ipairs(f.ramps) do
        out:evidence { hypothesis = "leak_retained_objects", stance = "for", evidence_id =
          r.ev.id, summary = string.format("%s climbs from %g to %g with no outliers: a ramp, "
          .. "not a spike", r.name, r.min, r.max) }
        out:evidence { hypothesis = "leak_load_driven", stance = "against", evidence_id =
          r.ev.id, summary = r.name .. " grows steadily instead of following load" }
      end
      for _, r in ipairs(f.goroutine_ramps) do
        out:evidence { hypothesis = "leak_goroutines_threads", stance = "for", evidence_id =
          r.ev.id, summary = string.format("%s climbs from %g to %g", r.name, r.min, r.max) }
      end
      for _, r in ipairs(f.spikes) do
        out:evidence { hypothesis = "leak_load_driven", stance = "for", evidence_id = r.ev.id,
          summary = r.name .. " jumps suddenly (outliers) rather than climbing" }
        if not ramp then
          out:evidence { hypothesis = "leak_retained_objects", stance = "against",
            evidence_id = r.ev.id, summary = r.name .. " is flat apart from a spike" }
        end
      end
      for _, r in ipairs(f.flats) do
        out:evidence { hypothesis = "leak_retained_objects", stance = "against",
          evidence_id = r.ev.id, summary = r.name .. " stays flat over the window" }
      end
      local n = ctx.signals.leak_native_memory
      if n then
        out:evidence { hypothesis = "leak_native_memory", stance = "for", evidence_id =
          n.evidence_id, line = n.first_line, summary = "off-heap OutOfMemoryError at "
          .. where(ctx, "leak_native_memory") }
      end
      local g = ctx.signals.leak_gc_overhead or ctx.signals.leak_full_gc
      if g and ramp then
        out:evidence { hypothesis = "leak_retained_objects", stance = "for", evidence_id =
          g.evidence_id, line = g.first_line, summary = "collections reclaim almost nothing: "
          .. "the live set keeps growing" }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("memory leak heap dump growth between snapshots", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      if #f.ramps == 0 then
        out:ask { label = "Memory per instance over several days", hypothesis =
          "leak_retained_objects", command = "container_memory_working_set_bytes{pod=~\"<app>-.*\"}"
          .. "[7d]  (PromQL; or process_resident_memory_bytes)",
          why = "a leak is a ramp tied to uptime, not to traffic: compare instances started "
            .. "at different times" }
      end
      local java = f.java_heap + f.gc_overhead + f.native > 0
        or ctx.mentions("java", "jvm", "spring", "tomcat")
      local node = f.js_heap > 0 or ctx.mentions("node.js", "nodejs")
      local go = f.go_oom > 0 or #f.goroutine_ramps > 0 or ctx.mentions("golang", "goroutine")
      if java or not (node or go) then
        out:ask { label = "Two class histograms hours apart (JVM)", hypothesis =
          "leak_retained_objects", command = "jcmd <pid> GC.class_histogram | head -25",
          why = "the class whose instance count grows between the two is the leak" }
        out:ask { label = "Heap dump for the dominator tree (JVM)", hypothesis =
          "leak_retained_objects", command = "jcmd <pid> GC.heap_dump /tmp/heap.hprof",
          why = "Eclipse MAT's Leak Suspects shows what retains the heap" }
      end
      if go then
        out:ask { label = "Heap and goroutine profiles (Go)", hypothesis =
          "leak_goroutines_threads", command = "curl -s http://localhost:6060/debug/pprof/heap "
          .. "> heap1.pb.gz; sleep 3600; curl -s http://localhost:6060/debug/pprof/heap > "
          .. "heap2.pb.gz; go tool pprof -top -base heap1.pb.gz heap2.pb.gz",
          why = "what grew between the two profiles" }
        out:ask { label = "Goroutine dump", hypothesis = "leak_goroutines_threads",
          command = "curl -s 'http://localhost:6060/debug/pprof/goroutine?debug=1' | head -60",
          why = "thousands of goroutines parked on the same line are the leak" }
      end
      if node then
        out:ask { label = "Two heap snapshots (Node.js)", hypothesis = "leak_retained_objects",
          command = "kill -USR2 <pid>   # with node --heapsnapshot-signal=SIGUSR2",
          why = "compare the snapshots in Chrome DevTools (Comparison view)" }
      end
      out:ask { label = "Native memory map", hypothesis = "leak_native_memory",
        command = "pmap -x <pid> | sort -k3 -n | tail -10",
        why = "RSS growing in anonymous mappings while the heap is flat means native memory" }
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      local r = first_ramp(f)
      if not r then return end
      -- backed: the runtime ran out (errors, kills, futile GCs) or two series ramp together
      local backed = f.oom_errors + f.kills + f.gc_overhead + f.full_gc > 0
        or (#f.ramps > 0 and #f.goroutine_ramps > 0)
      local key, what = "leak_retained_objects", "retained heap objects"
      if #f.goroutine_ramps > 0 or f.threads > 0 then
        key, what = "leak_goroutines_threads", "leaked goroutines/threads"
        r = f.goroutine_ramps[1] or r
      elseif f.native > 0 then
        key, what = "leak_native_memory", "native (off-heap) memory"
      end
      out:conclude { hypothesis = key, severity = "high", confidence = backed and 0.75 or 0.6,
        root_cause = string.format("A memory leak (%s): %s climbs steadily from %g to %g%s",
          what, r.name, r.min, r.max, f.oom_errors + f.kills > 0
          and " until the process runs out of memory" or " with uptime") }
    end },

    { name = "remediate", run = function(_, out)
      out:mitigate { title = "Rolling restart before instances reach the limit",
        command = "kubectl -n <namespace> rollout restart deploy/<app>",
        description = "A stopgap (schedule it, e.g. every 12 hours) and say so in the incident "
          .. "notes; raising the limit lengthens the interval between kills",
        risk = "low", undo = "none needed; stop the schedule once fixed",
        verify = "memory per pod starts from the baseline again" }
      out:mitigate { title = "Roll back the release that started the growth",
        command = "kubectl -n <namespace> rollout undo deploy/<app>",
        description = "When the ramp began with a deploy", risk = "medium",
        undo = "kubectl -n <namespace> rollout undo deploy/<app>  (forward again)" }
      out:solve { title = "Fix what the profile shows growing",
        description = "Bound every cache (size and TTL), deregister listeners and timers, close "
          .. "resources deterministically, use contexts with timeouts for goroutines; for glibc "
          .. "fragmentation set MALLOC_ARENA_MAX=2",
        risk = "low", undo = "revert the change",
        verify = "memory per instance plateaus after warm-up over several days" }
      out:solve { title = "Add a soak test and a growth alert",
        description = "Run the service for hours in CI and fail if memory keeps rising; alert "
          .. "on deriv(container_memory_working_set_bytes[6h]) > 0 per instance",
        risk = "low", undo = "remove the test and the alert" }
    end },
  },
}
