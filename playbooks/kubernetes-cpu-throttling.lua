-- CPU throttling and noisy neighbours in Kubernetes (kb/kubernetes-cpu-throttling.md).
--
-- Evidence it reads: the cgroup's cpu.stat (nr_periods / nr_throttled, as metrics or as text)
-- and cpu.max (the quota), cAdvisor counters container_cpu_cfs_periods_total and
-- container_cpu_cfs_throttled_periods_total (the throttled ratio per container), the
-- CPUThrottlingHigh alert, top output (node CPU saturation, the busiest process, steal time).
-- Competing explanations: the CPU limit is too low for bursty work, runtime parallelism sized
-- from the node's CPUs, a noisy neighbour on a busy node, hypervisor steal.

local kit = require "kit"
local where, signal_finding, label_key = kit.where, kit.signal_finding, kit.label_key

-- Throttled ratios found in the evidence: { {ratio, what, ev}, ... }.
local function throttle_ratios(ctx)
  local res = {}
  for _, ev in ipairs(ctx.evidence) do
    local sum = ev.summary or {}
    -- cpu.stat parsed as metrics: nr_periods / nr_throttled
    local vals, periods, throttled = {}, {}, {}
    for _, s in ipairs(sum.metrics and sum.metrics.series or {}) do
      local name = tostring(s.name or "")
      vals[name] = tonumber(s.mean)
      local key = label_key(s.labels)
      -- cAdvisor counters: the increase per sample of each, paired by labels
      if name == "container_cpu_cfs_periods_total" then periods[key] = tonumber(s.mean)
      elseif name == "container_cpu_cfs_throttled_periods_total" then
        throttled[key] = tonumber(s.mean)
      elseif name:find("throttl") and (name:find("ratio") or name:find("pct")
                                       or name:find("percent")) then
        local mx = tonumber(s.max)
        if mx then
          res[#res + 1] = { ratio = mx > 1 and mx / 100 or mx, what = name, ev = ev }
        end
      end
    end
    -- cpu.stat seen as text: the log templates keep one example line each
    for _, t in ipairs(sum.logs and sum.logs.templates or {}) do
      local ex = tostring(t.example or "")
      local k, v = ex:match("^%s*([%a_]+)%s+(%d+)%s*$")
      if k then vals[k] = tonumber(v) end
      local q, p = ex:match("^%s*(%d+)%s+(%d+)%s*$")
      if q and not vals.quota then vals.quota, vals.period = tonumber(q), tonumber(p) end
    end
    local np, nt = vals.nr_periods, vals.nr_throttled
    if np and nt and np > 0 then
      res[#res + 1] = { ratio = nt / np, what = "cpu.stat nr_throttled/nr_periods", ev = ev,
                        quota = vals.quota and vals.period and vals.quota / vals.period }
    end
    for key, p in pairs(periods) do
      local t = throttled[key]
      if t and p > 0 then
        res[#res + 1] = { ratio = t / p, what = "container_cpu_cfs_throttled_periods / periods {"
          .. key .. "}", ev = ev }
      end
    end
  end
  table.sort(res, function(a, b)
    if a.ratio ~= b.ratio then return a.ratio > b.ratio end
    return a.what < b.what -- ties in a fixed order: pairs() above has none
  end)
  return res
end

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { ratios = throttle_ratios(ctx), cpu_busy = {}, top = nil }
  f.best = f.ratios[1]
  f.ratio = f.best and f.best.ratio or nil
  for _, ev in ipairs(ctx.command("top")) do
    local c = ev.summary and ev.summary.command or {}
    for _, fd in ipairs(c.findings or {}) do
      if fd.kind == "cpu_saturation" then f.cpu_busy[#f.cpu_busy + 1] = { ev = ev, f = fd } end
    end
    local p = c.top_cpu and c.top_cpu[1]
    if p and not f.top then f.top = { command = p.command, cpu = tonumber(p.cpu_pct), ev = ev } end
  end
  f.alert = ctx.signal("cputhrottle_alert")
  f.steal = ctx.signal("cputhrottle_steal")
  f.cadvisor = ctx.signal("cputhrottle_cfs_metric")
  f.gomaxprocs = ctx.signal("cputhrottle_parallelism")
  f.high = f.ratio and f.ratio >= 0.25
  cache[ctx] = f
  return f
end

local function pct(r) return string.format("%.0f%%", r * 100) end

return {
  id = "kubernetes-cpu-throttling",
  title = "CPU throttling and noisy neighbours in Kubernetes",
  version = "1.0.0",
  description = "A container is slowed down by its CFS quota (CPU limit) or by other workloads "
    .. "on the node. Computes the throttled ratio from cpu.stat or cAdvisor counters, reads the "
    .. "CPUThrottlingHigh alert and top, and tells a too-low limit, runtime parallelism, a noisy "
    .. "neighbour and hypervisor steal apart.",
  tags = { "kubernetes", "cpu", "throttling", "cfs-quota", "limits", "noisy-neighbour" },
  category = "config",
  kb = "CPU throttling CFS quota cpu limits noisy neighbour steal",

  signals = {
    { name = "cputhrottle_alert", severity = "warning",
      pattern = [[CPUThrottlingHigh|elevated CPU throttling]],
      description = "the kube-prometheus throttling alert" },
    { name = "cputhrottle_cfs_metric", severity = "info",
      pattern = [[container_cpu_cfs_throttled_(periods|seconds)_total]],
      description = "cAdvisor CFS throttling counters are present" },
    { name = "cputhrottle_steal", severity = "warning",
      pattern = [[%Cpu\(s\):[^\n]*[ ,]([5-9]|[1-9][0-9])\.[0-9] st]],
      description = "top shows 5% or more CPU steal (hypervisor contention)" },
    { name = "cputhrottle_parallelism", flags = "i", severity = "info",
      pattern = [[GOMAXPROCS=[0-9]+|ActiveProcessorCount|availableProcessors[=:( ]+[0-9]+]],
      description = "the runtime reports how many CPUs it schedules on" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.ratio then
      if f.ratio >= 0.25 then score = 0.6
      elseif f.ratio >= 0.1 then score = 0.3 end
      if f.ratio >= 0.1 then
        reasons[#reasons + 1] = string.format("%s throttled (%s in %s)", pct(f.ratio),
          f.best.what, tostring(f.best.ev.filename))
      end
    end
    if f.alert > 0 then
      score = score + (score > 0 and 0.15 or 0.5)
      reasons[#reasons + 1] = "CPUThrottlingHigh in " .. where(ctx, "cputhrottle_alert")
    end
    if f.steal > 0 then
      score = score + (score > 0 and 0.1 or 0.45)
      reasons[#reasons + 1] = "CPU steal in " .. where(ctx, "cputhrottle_steal")
    end
    if #f.cpu_busy > 0 and score > 0 then score = score + 0.1 end
    if f.ratio and f.ratio < 0.05 and f.alert == 0 then score = score * 0.5 end
    if ctx.said("throttl", "cpu limit", "cfs", "noisy neighbour", "noisy neighbor",
                "steal time") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports CPU throttling"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for i, r in ipairs(f.ratios) do
        if i > 5 then break end
        out:finding { text = string.format("%s of CFS periods throttled (%s)%s", pct(r.ratio),
          r.what, r.quota and string.format("; quota %.2f CPU", r.quota) or ""),
          evidence_id = r.ev.id, filename = r.ev.filename }
      end
      signal_finding(ctx, out, "cputhrottle_alert", "CPUThrottlingHigh firing")
      signal_finding(ctx, out, "cputhrottle_steal", "CPU steal time 5% or more")
      for _, b in ipairs(f.cpu_busy) do
        out:finding { text = "Node " .. tostring(b.f.message), evidence_id = b.ev.id,
                      filename = b.ev.filename, line = b.f.line }
      end
      if f.top and f.top.cpu and f.top.cpu >= 50 then
        out:finding { text = string.format("Busiest process: %s at %.0f%% CPU",
          tostring(f.top.command), f.top.cpu), evidence_id = f.top.ev.id,
          filename = f.top.ev.filename }
      end
      signal_finding(ctx, out, "cputhrottle_parallelism", "Runtime CPU count reported")
      signal_finding(ctx, out, "k8s_probe_failed", "Probe failures (slow under throttling)")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local limit = 0.3
      if f.high then limit = f.ratio >= 0.5 and 0.85 or 0.8
      elseif f.alert > 0 then limit = 0.65
      elseif f.ratio and f.ratio < 0.05 then limit = 0.05 end
      out:hypothesis { key = "cputhrottle_limit_too_low", likelihood = limit, category = "config",
        statement = "The CPU limit is too low for bursty work: the CFS quota is used up early "
          .. "in each 100 ms period and the container waits for the rest of it" }
      out:hypothesis { key = "cputhrottle_parallelism", category = "config",
        likelihood = (f.high or f.alert > 0) and (f.gomaxprocs > 0 and 0.5 or 0.35) or 0.1,
        statement = "Runtime parallelism sized from the node's CPUs, not the limit (GOMAXPROCS, "
          .. "JVM ActiveProcessorCount, worker counts), burns the quota in bursts" }
      local noisy = 0.15
      if #f.cpu_busy > 0 and not f.high then noisy = 0.5 end
      out:hypothesis { key = "cputhrottle_noisy_neighbour", likelihood = noisy,
        category = "environment",
        statement = "Another workload on the same node takes the CPU (batch pods without "
          .. "limits, requests too low to protect this pod's share)" }
      out:hypothesis { key = "cputhrottle_steal", category = "environment",
        likelihood = f.steal > 0 and 0.7 or 0.05,
        statement = "The hypervisor gives the vCPUs to other tenants (high steal time)" }

      for _, r in ipairs(f.ratios) do
        out:evidence { hypothesis = "cputhrottle_limit_too_low",
          stance = r.ratio >= 0.1 and "for" or "against", evidence_id = r.ev.id,
          summary = string.format("%s of periods throttled (%s)", pct(r.ratio), r.what) }
        if r.ratio >= 0.25 then
          out:evidence { hypothesis = "cputhrottle_noisy_neighbour", stance = "against",
            evidence_id = r.ev.id, summary = "the container hits its own quota; a neighbour "
              .. "would not show as CFS throttling" }
        end
      end
      local a = ctx.signals.cputhrottle_alert
      if a then
        out:evidence { hypothesis = "cputhrottle_limit_too_low", stance = "for",
          evidence_id = a.evidence_id, line = a.first_line,
          summary = "CPUThrottlingHigh (" .. where(ctx, "cputhrottle_alert") .. ")" }
      end
      local st = ctx.signals.cputhrottle_steal
      if st then
        out:evidence { hypothesis = "cputhrottle_steal", stance = "for", evidence_id =
          st.evidence_id, line = st.first_line, summary = "steal time in top" }
      end
      for _, b in ipairs(f.cpu_busy) do
        out:evidence { hypothesis = "cputhrottle_noisy_neighbour", stance = "for",
          evidence_id = b.ev.id, line = b.f.line, summary = "node " .. tostring(b.f.message) }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("CPU throttling CFS quota limits noisy neighbour", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      if not f.ratio then
        out:ask { label = "Throttling counters of the container",
          hypothesis = "cputhrottle_limit_too_low",
          command = "kubectl -n <namespace> exec <pod> -- cat /sys/fs/cgroup/cpu.max "
            .. "/sys/fs/cgroup/cpu.stat",
          why = "nr_throttled / nr_periods is the share of 100 ms periods the container was "
            .. "stopped; read twice to see it grow" }
        out:ask { label = "Throttled ratio over time", hypothesis = "cputhrottle_limit_too_low",
          command = "sum by (pod, container) (rate(container_cpu_cfs_throttled_periods_total"
            .. "{namespace=\"<namespace>\"}[5m])) / sum by (pod, container) (rate("
            .. "container_cpu_cfs_periods_total{namespace=\"<namespace>\"}[5m]))  (PromQL)",
          why = "above 25% at the times latency spikes" }
      end
      out:ask { label = "Requests and limits of the container",
        hypothesis = "cputhrottle_limit_too_low",
        command = "kubectl -n <namespace> get pod <pod> -o jsonpath='{range "
          .. ".spec.containers[*]}{.name}{\" \"}{.resources}{\"\\n\"}{end}'",
        why = "the limit the quota enforces, and the request that sets its CPU share" }
      if #ctx.command("top") == 0 then
        out:ask { label = "Node CPU and steal", hypothesis = "cputhrottle_noisy_neighbour",
          command = "top -b -n 1 | head -20; mpstat -P ALL 1 3",
          why = "a node at 100% with one pod using most of it, or %st above a few percent" }
      end
      out:ask { label = "What else runs on the node", hypothesis = "cputhrottle_noisy_neighbour",
        command = "kubectl get pods -A -o wide --field-selector spec.nodeName=<node>; "
          .. "kubectl describe node <node> | sed -n '/Allocated resources/,/Events/p'",
        why = "batch pods without limits next to latency-sensitive ones" }
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if f.high then
        out:conclude { hypothesis = "cputhrottle_limit_too_low", severity = "medium",
          confidence = f.ratio >= 0.5 and 0.85 or 0.8,
          root_cause = string.format("The container is throttled in %s of CFS periods (%s): "
            .. "its CPU limit%s is too low for its bursts, so requests wait for the next period",
            pct(f.ratio), f.best.what, f.best.quota and string.format(" (%.2f CPU)",
            f.best.quota) or "") }
      elseif f.alert > 0 and not (f.ratio and f.ratio < 0.1) then
        out:conclude { hypothesis = "cputhrottle_limit_too_low", severity = "medium",
          confidence = 0.65, root_cause = "CPUThrottlingHigh fires: the container is throttled "
            .. "at its CPU limit" }
      elseif f.steal > 0 then
        out:conclude { hypothesis = "cputhrottle_steal", severity = "medium", confidence = 0.7,
          root_cause = "The VM loses CPU time to other tenants on the hypervisor (steal time "
            .. "5% or more)" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      if f.steal > 0 and not f.high then
        out:mitigate { title = "Move the workload off the contended VM",
          command = "kubectl cordon <node> && kubectl drain <node> --ignore-daemonsets "
            .. "--delete-emptydir-data",
          description = "Replace the instance (another host) or use a larger/dedicated type",
          risk = "medium", undo = "kubectl uncordon <node>" }
        return
      end
      out:mitigate { title = "Raise (or remove) the CPU limit of the throttled container",
        command = "kubectl -n <namespace> set resources deploy/<app> -c <container> "
          .. "--limits=cpu=<2x>",
        description = "Latency-sensitive services often run without a CPU limit and with an "
          .. "accurate request, which still guarantees their share",
        risk = "low", undo = "kubectl -n <namespace> rollout undo deploy/<app>",
        verify = "throttled ratio below 5% at peak; p99 back within SLO" }
      out:mitigate { title = "Scale out so each replica does less work",
        command = "kubectl -n <namespace> scale deploy/<app> --replicas=<n+2>",
        risk = "low", undo = "kubectl -n <namespace> scale deploy/<app> --replicas=<n>" }
      out:solve { title = "Align runtime parallelism with the limit",
        description = "GOMAXPROCS (automaxprocs), -XX:ActiveProcessorCount for the JVM, worker "
          .. "counts for Gunicorn/Node cluster", risk = "low", undo = "revert the setting" }
      out:solve { title = "Set requests from measured usage; separate batch from online work",
        description = "p95 CPU as the request; node pools with taints for batch; Guaranteed QoS "
          .. "with the static CPU manager for the most sensitive workloads", risk = "low",
        undo = "restore the previous requests" }
    end },
  },
}
