-- OOM killed: the kernel's out-of-memory killer terminated a process or a container
-- (kb/oom-killed.md).
--
-- Evidence it reads: kernel OOM lines (built-in oom_killer, CONSTRAINT_MEMCG vs CONSTRAINT_NONE),
-- Kubernetes OOMKilled / exit code 137 (kubectl describe pod, get pods, events), systemd units
-- killed by the OOM killer, host memory saturation (free, top), node MemoryPressure, and memory
-- metrics that ramp up (a leak behind the kills).
-- Competing explanations: the limit is below what the workload needs, a memory leak, the whole
-- host ran out of memory (overcommit, noisy neighbour), a single oversized request or job.

local kit = require "kit"
local where, signal_finding = kit.where, kit.signal_finding

-- Command-output findings of one kind across the given command kinds: { {ev, f}, ... }.
local function command_findings(ctx, kinds, fkind)
  local res = {}
  for _, kind in ipairs(kinds) do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, f in ipairs(c.findings or {}) do
        if f.kind == fkind then res[#res + 1] = { ev = ev, f = f } end
      end
    end
  end
  return res
end

-- A memory series that climbs steadily (a ramp, not a spike): range at least 30% of the
-- minimum, no |z| >= 3 outliers, spread like a uniform ramp (sd about 0.29 of the range).
local function memory_ramps(ctx)
  local res = {}
  for _, ev in ipairs(ctx.of_type("metrics")) do
    local m = ev.summary and ev.summary.metrics or {}
    for _, s in ipairs(m.series or {}) do
      local name = tostring(s.name or ""):lower()
      local mn, mx, sd = tonumber(s.min), tonumber(s.max), tonumber(s.stddev)
      if (name:find("mem") or name:find("rss") or name:find("heap")
          or name:find("working_set")) and s.value_kind ~= "increase"
         and mn and mx and sd and (s.count or 0) >= 10 and mx > mn then
        local range = mx - mn
        if range >= 0.3 * math.max(math.abs(mn), 1e-9) and (s.anomaly_count or 0) == 0
           and sd / range >= 0.2 and sd / range <= 0.4 then
          res[#res + 1] = { ev = ev, name = s.name, min = mn, max = mx }
        end
      end
    end
  end
  return res
end

-- Facts are computed once per run (ctx is the same read-only view across one run's steps).
local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { kernel = ctx.signal("oom_killer"), k8s = ctx.signal("k8s_oomkilled"),
        memcg = ctx.signal("oom_memcg_constraint"), host = ctx.signal("oom_host_constraint"),
        exit137 = ctx.signal("oom_exit_137"), unit = ctx.signal("oom_systemd_unit"),
        java = ctx.signal("java_out_of_memory"), pressure = ctx.signal("oom_node_memory_pressure"),
        containers = {}, restarts = 0 }
  f.cmd_kills = command_findings(ctx, { "dmesg", "journalctl", "kubectl_describe",
                                        "kubectl_get", "kubectl_events" }, "oom_kill")
  f.host_mem = command_findings(ctx, { "free", "top" }, "memory_saturation")
  f.node_pressure = command_findings(ctx, { "kubectl_describe" }, "memory_pressure")
  for _, ev in ipairs(ctx.command("kubectl_describe")) do
    local c = ev.summary and ev.summary.command or {}
    for _, ct in ipairs(c.containers or {}) do
      if ct.last_reason == "OOMKilled" or ct.reason == "OOMKilled" then
        f.containers[#f.containers + 1] = { pod = c.pod, name = ct.name, ev = ev,
          restarts = tonumber(ct.restart_count) or 0, exit = ct.exit_code }
        f.restarts = math.max(f.restarts, tonumber(ct.restart_count) or 0)
      end
    end
  end
  f.ramps = memory_ramps(ctx)
  f.container_limit = f.memcg > 0 or f.k8s > 0 or #f.containers > 0
  f.any_kill = f.kernel > 0 or f.k8s > 0 or #f.cmd_kills > 0 or f.unit > 0
  cache[ctx] = f
  return f
end

return {
  id = "oom-killed",
  title = "Process or container OOM killed",
  version = "1.0.0",
  description = "The kernel's OOM killer terminated a process, or a container hit its memory "
    .. "limit (OOMKilled, exit code 137). Tells a limit set too low, a memory leak, host-wide "
    .. "memory exhaustion and a one-off peak apart from kernel, kubelet and metric evidence.",
  tags = { "oom", "oomkilled", "memory", "cgroup", "exit-137", "kubernetes", "kernel" },
  category = "config",
  kb = "OOM killed container memory limit exit code 137 oom-killer cgroup",

  signals = {
    { name = "oom_memcg_constraint", severity = "critical",
      pattern = [[constraint=CONSTRAINT_MEMCG|Memory cgroup out of memory|memory\.max reached]],
      description = "the OOM kill was inside a cgroup: the container hit its own limit" },
    { name = "oom_host_constraint", severity = "critical",
      pattern = [[constraint=CONSTRAINT_NONE]],
      description = "the OOM kill was host wide: the whole machine ran out of memory" },
    { name = "oom_exit_137", severity = "error",
      pattern = [[[Ee]xit [Cc]ode: +137|exit(ed with)? code:? 137|"exitCode": ?137|]]
        .. [[status=9/KILL]],
      description = "terminated by SIGKILL (exit code 137), the OOM killer's signal" },
    { name = "oom_systemd_unit", severity = "critical",
      pattern = [[killed by the OOM killer|Failed with result 'oom-kill']],
      description = "a systemd unit lost a process to the OOM killer" },
    { name = "oom_node_memory_pressure", severity = "warning",
      pattern = [[MemoryPressure +True|NodeHasInsufficientMemory|low on resource: memory]],
      description = "the node is short of memory (kubelet pressure or eviction)" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.kernel > 0 then
      score = score + 0.55
      reasons[#reasons + 1] = "kernel OOM killer in " .. where(ctx, "oom_killer")
    end
    if f.k8s > 0 then
      score = score + 0.55
      reasons[#reasons + 1] = "OOMKilled in " .. where(ctx, "k8s_oomkilled")
    end
    if f.unit > 0 then
      score = score + 0.4
      reasons[#reasons + 1] = "systemd unit OOM killed in " .. where(ctx, "oom_systemd_unit")
    end
    if score == 0 and #f.cmd_kills > 0 then
      score = 0.45
      reasons[#reasons + 1] = "OOM kill in " .. tostring(f.cmd_kills[1].ev.filename)
        .. " line " .. tostring(f.cmd_kills[1].f.line)
    end
    if f.exit137 > 0 then
      score = score + (score > 0 and 0.1 or 0.2)
      reasons[#reasons + 1] = "exit code 137 in " .. where(ctx, "oom_exit_137")
    end
    if f.memcg > 0 or f.host > 0 then score = score + 0.1 end
    if f.java > 0 and score > 0 then score = score + 0.05 end
    if #f.host_mem > 0 and score > 0 then
      score = score + 0.1
      reasons[#reasons + 1] = "host memory saturated (" .. tostring(f.host_mem[1].f.message) .. ")"
    end
    if ctx.said("oom", "out of memory", "oomkilled", "exit code 137", "killed", "memory limit") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports an out-of-memory kill"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      signal_finding(ctx, out, "oom_killer", "Kernel OOM killer fired")
      signal_finding(ctx, out, "oom_memcg_constraint",
        "The kill was inside a memory cgroup (container limit reached)")
      signal_finding(ctx, out, "oom_host_constraint",
        "The kill was host wide (CONSTRAINT_NONE): the machine ran out of memory")
      signal_finding(ctx, out, "k8s_oomkilled", "Container terminated with reason OOMKilled")
      signal_finding(ctx, out, "oom_exit_137", "Exit code 137 (SIGKILL)")
      signal_finding(ctx, out, "oom_systemd_unit", "systemd reports a unit OOM killed")
      for _, c in ipairs(f.containers) do
        out:finding { text = string.format("Pod %s container %s: last termination OOMKilled, "
          .. "%d restarts", tostring(c.pod), tostring(c.name), c.restarts),
          evidence_id = c.ev.id, filename = c.ev.filename }
      end
      for _, k in ipairs(f.cmd_kills) do
        out:finding { text = tostring(k.f.message), evidence_id = k.ev.id,
                      filename = k.ev.filename, line = k.f.line }
      end
      for _, m in ipairs(f.host_mem) do
        out:finding { text = "Host " .. tostring(m.f.message), evidence_id = m.ev.id,
                      filename = m.ev.filename, line = m.f.line }
      end
      for _, r in ipairs(f.ramps) do
        out:finding { text = string.format("%s climbs steadily from %g to %g (%s)", r.name,
          r.min, r.max, tostring(r.ev.filename)), evidence_id = r.ev.id, filename = r.ev.filename }
      end
      signal_finding(ctx, out, "java_out_of_memory",
        "The JVM also ran out of heap (OutOfMemoryError): the heap is sized too close to the limit "
        .. "or the application retains too much")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local leak = #f.ramps > 0 and 0.6 or (f.restarts >= 5 and 0.35 or 0.2)
      local host = 0.15
      if f.host > 0 then host = 0.8
      elseif (#f.host_mem > 0 or f.pressure > 0 or #f.node_pressure > 0) and f.memcg == 0 then
        host = 0.55
      elseif f.memcg > 0 then host = 0.1 end
      local limit = 0.3
      if f.container_limit then limit = #f.ramps > 0 and 0.5 or 0.7 end
      if f.host > 0 and f.memcg == 0 then limit = 0.15 end
      out:hypothesis { key = "oom_limit_too_low", likelihood = limit, category = "config",
        statement = "The memory limit is below what the workload really needs (working set, "
          .. "runtime heap plus native memory), so the container hits its cgroup limit" }
      out:hypothesis { key = "oom_memory_leak", likelihood = leak, category = "code",
        statement = "A memory leak: usage grows with uptime until every instance reaches the "
          .. "limit and is killed, then the cycle repeats" }
      out:hypothesis { key = "oom_host_exhausted", likelihood = host, category = "environment",
        statement = "The whole host ran out of memory (overcommitted limits, a noisy neighbour); "
          .. "the killed process may be an innocent victim" }
      out:hypothesis { key = "oom_request_peak", category = "data",
        likelihood = ctx.said("spike", "large", "upload", "report", "batch") and 0.4 or 0.2,
        statement = "A single oversized request or job (huge upload, unbounded query result) "
          .. "pushed memory over the limit" }

      local m = ctx.signals.oom_memcg_constraint
      if m then
        out:evidence { hypothesis = "oom_limit_too_low", stance = "for", evidence_id =
          m.evidence_id, line = m.first_line, summary = "cgroup OOM: the container's own limit" }
        out:evidence { hypothesis = "oom_host_exhausted", stance = "against", evidence_id =
          m.evidence_id, line = m.first_line, summary = "CONSTRAINT_MEMCG, not a host-wide OOM" }
      end
      local h = ctx.signals.oom_host_constraint
      if h then
        out:evidence { hypothesis = "oom_host_exhausted", stance = "for", evidence_id =
          h.evidence_id, line = h.first_line, summary = "CONSTRAINT_NONE: host-wide OOM" }
      end
      for _, c in ipairs(f.containers) do
        out:evidence { hypothesis = "oom_limit_too_low", stance = "for", evidence_id = c.ev.id,
          summary = string.format("%s/%s OOMKilled after %d restarts", tostring(c.pod),
                                  tostring(c.name), c.restarts) }
      end
      for _, mm in ipairs(f.host_mem) do
        out:evidence { hypothesis = "oom_host_exhausted", stance = "for", evidence_id = mm.ev.id,
          line = mm.f.line, summary = tostring(mm.f.message) }
      end
      for _, r in ipairs(f.ramps) do
        out:evidence { hypothesis = "oom_memory_leak", stance = "for", evidence_id = r.ev.id,
          summary = string.format("%s ramps from %g to %g", r.name, r.min, r.max) }
      end
      if f.restarts >= 5 then
        out:evidence { hypothesis = "oom_memory_leak", stance = "for",
          summary = string.format("killed repeatedly (%d restarts): check whether memory "
            .. "climbs between kills", f.restarts) }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("OOMKilled exit code 137 memory limit oom-killer", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      if #ctx.command("dmesg") == 0 and f.kernel == 0 then
        out:ask { label = "Read the kernel OOM report", hypothesis = "oom_host_exhausted",
          command = "dmesg -T | grep -i -A20 'invoked oom-killer'",
          why = "CONSTRAINT_MEMCG (container limit) vs CONSTRAINT_NONE (host), and each "
            .. "process's RSS at kill time" }
      end
      local k8s = f.k8s > 0 or #ctx.command("kubectl_describe") > 0
        or #ctx.command("kubectl_get") > 0 or #ctx.command("kubectl_events") > 0
        or ctx.mentions("kubernetes", "kubectl", " pod ", "pods")
      if k8s and #ctx.command("kubectl_describe") == 0 then
        out:ask { label = "Describe the killed pod", hypothesis = "oom_limit_too_low",
          command = "kubectl describe pod <pod> -n <namespace> | grep -A5 'Last State'",
          why = "Reason OOMKilled and Exit Code 137 confirm the container limit was hit" }
      end
      if k8s then
        out:ask { label = "Compare the limit with real usage", hypothesis = "oom_limit_too_low",
          command = "kubectl top pod <pod> -n <namespace> --containers && kubectl get pod <pod> "
            .. "-n <namespace> -o jsonpath='{.spec.containers[*].resources}'",
          why = "working set close to the limit at normal load means the limit is too low" }
      else
        out:ask { label = "Largest memory users now", hypothesis = "oom_host_exhausted",
          command = "ps -eo pid,rss,vsz,comm --sort=-rss | head -15",
          why = "who holds the memory on the host; compare with the RSS table of the OOM report" }
        out:ask { label = "Limits of the killed unit", hypothesis = "oom_limit_too_low",
          command = "systemctl show <unit> -p MemoryMax -p MemoryHigh -p OOMScoreAdjust",
          why = "a unit with MemoryMax is killed at its own limit, not the host's" }
      end
      if #f.ramps == 0 then
        out:ask { label = "Memory over the last days", hypothesis = "oom_memory_leak",
          command = k8s and "container_memory_working_set_bytes{pod=~\"<app>-.*\"}[7d]  (PromQL)"
            or "process_resident_memory_bytes{job=\"<job>\"}[7d]  (PromQL), or sar -r 1 1",
          why = "a steady ramp between kills is a leak; flat then a jump is a peak" }
      end
      if #ctx.command("free") == 0 then
        out:ask { label = "Host memory", command = "free -m; cat /proc/pressure/memory",
          why = "host-wide shortage and memory stall (PSI)", hypothesis = "oom_host_exhausted" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if not f.any_kill then return end
      if f.host > 0 or ((#f.host_mem > 0 or #f.node_pressure > 0) and f.kernel > 0
                         and f.memcg == 0 and not f.container_limit) then
        out:conclude { hypothesis = "oom_host_exhausted", severity = "high",
          confidence = f.host > 0 and 0.8 or 0.7,
          root_cause = "The host ran out of memory and the kernel OOM killer killed a process "
            .. "(host-wide OOM, not a container limit): memory is overcommitted on this machine" }
      elseif f.container_limit and #f.ramps > 0 then
        out:conclude { hypothesis = "oom_memory_leak", severity = "high", confidence = 0.7,
          root_cause = "Memory grows steadily until the container hits its limit and is OOM "
            .. "killed: a leak, not a one-off peak" }
      elseif f.container_limit then
        local strong = (f.memcg > 0 or f.exit137 > 0 or #f.containers > 0)
        out:conclude { hypothesis = "oom_limit_too_low", severity = "high",
          confidence = strong and 0.75 or 0.6,
          root_cause = "The container reached its memory limit and was OOM killed (cgroup OOM, "
            .. "exit code 137): the limit is below the workload's working set" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      if f.host > 0 or (#f.host_mem > 0 and not f.container_limit) then
        out:mitigate { title = "Free memory on the host",
          command = "ps -eo pid,rss,comm --sort=-rss | head -15",
          description = "Stop the non-essential top consumer; protect critical daemons with "
            .. "OOMScoreAdjust=-500 in their unit",
          risk = "medium", undo = "start the stopped service again", verify = "free -m" }
        out:solve { title = "Stop overcommitting memory",
          description = "Set memory requests equal to limits for memory (Guaranteed QoS), reserve "
            .. "memory for the system (systemReserved, kubeReserved) or add nodes",
          risk = "low", undo = "restore the previous requests",
          verify = "kubectl describe node <node> | grep -A8 'Allocated resources'" }
      else
        out:mitigate { title = "Raise the memory limit to stop the kill loop",
          command = "kubectl -n <namespace> set resources deploy/<app> --limits=memory=<1.5x>",
          description = "About 50% more, if the node has room; it buys time, it does not fix "
            .. "a leak",
          risk = "low", undo = "kubectl -n <namespace> rollout undo deploy/<app>",
          verify = "kubectl -n <namespace> get pods -w  (RESTARTS stops rising)" }
        out:solve { title = "Size the runtime to the container",
          description = "Limit = measured peak working set plus headroom; heap at 60-75% of the "
            .. "limit: -XX:MaxRAMPercentage=70 (JVM), --max-old-space-size (Node.js), "
            .. "GOMEMLIMIT (Go)",
          risk = "low", undo = "revert the deployment change",
          verify = "working set stays below 80% of the limit at peak" }
      end
      if #f.ramps > 0 or f.restarts >= 5 then
        out:solve { title = "Find and fix the leak",
          description = "Two heap snapshots hours apart (jcmd GC.class_histogram, pprof -base, "
            .. "heap snapshots) and compare what grows; see the memory-leak playbook",
          risk = "low", undo = "none" }
      end
      out:solve { title = "Alert before the kill",
        description = "Alert when working set > 90% of the limit for 10 minutes and on "
          .. "kube_pod_container_status_last_terminated_reason{reason=\"OOMKilled\"}",
        risk = "low", undo = "remove the alert rule" }
    end },
  },
}
