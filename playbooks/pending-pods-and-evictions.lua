-- Pods stuck Pending or evicted (kb/pending-pods-and-evictions.md).
--
-- Evidence it reads: the scheduler's FailedScheduling message ("0/12 nodes are available: 4
-- Insufficient cpu, 8 node(s) had untolerated taint ...", parsed here into groups of nodes per
-- reason), kubectl get pods (Pending, Evicted rows), eviction messages ("The node was low on
-- resource: memory"), node pressure conditions, PVC binding errors, quota and autoscaler
-- messages.
-- Competing explanations: not enough free capacity (requests), placement constraints no node
-- satisfies (selectors, affinity, taints), an unbound volume, a namespace quota, evictions under
-- node memory/disk pressure.

local kit = require "kit"
local where, signal_finding = kit.where, kit.signal_finding

-- Scheduler reasons -> hypothesis group.
local function group_of(reason)
  local r = reason:lower()
  if r:find("insufficient") or r:find("too many pods") then return "pending_capacity" end
  if r:find("taint") or r:find("affinity/selector") or r:find("node affinity")
     or r:find("anti%-affinity") or r:find("pod affinity") or r:find("topology spread")
     or r:find("unschedulable") or r:find("didn't match") then
    if r:find("volume") then return "pending_volume" end
    return "pending_constraints"
  end
  if r:find("volume") or r:find("persistentvolumeclaim") then return "pending_volume" end
  return nil
end

-- "0/6 nodes are available: 3 Insufficient cpu, 3 node(s) had untolerated taint {..}." ->
-- { pending_capacity = 3, pending_constraints = 3 }, total nodes. The preemption tail is ignored.
local function parse_scheduler(msg)
  local total, body = msg:match("0/(%d+) nodes are available: (.*)")
  if not body then return nil end
  body = body:gsub("preemption:.*$", "")
  local groups = {}
  for n, reason in body:gmatch("(%d+) ([^,]+)") do
    local g = group_of(reason)
    if g then groups[g] = (groups[g] or 0) + tonumber(n) end
  end
  return groups, tonumber(total)
end

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { pending = {}, evicted = {}, sched = {}, groups = {}, pressure = {} }
  for _, ev in ipairs(ctx.command("kubectl_get")) do
    for _, row in ipairs(ev.summary and ev.summary.command and ev.summary.command.rows or {}) do
      if row.status == "Pending" then
        f.pending[#f.pending + 1] = { name = row.name, namespace = row.namespace, ev = ev }
      elseif row.status == "Evicted" then
        f.evicted[#f.evicted + 1] = { name = row.name, namespace = row.namespace, ev = ev }
      end
    end
  end
  for _, kind in ipairs { "kubectl_describe", "kubectl_events" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, e in ipairs(c.events or {}) do
        local msg = tostring(e.message or "")
        local groups, total = parse_scheduler(msg)
        if groups then
          f.sched[#f.sched + 1] = { text = msg, line = e.line, ev = ev, total = total,
                                    pod = c.pod, namespace = c.namespace }
          for g, n in pairs(groups) do f.groups[g] = math.max(f.groups[g] or 0, n) end
        end
      end
      for _, fd in ipairs(c.findings or {}) do
        if fd.kind == "memory_pressure" or fd.kind == "disk_pressure"
           or fd.kind == "pid_pressure" then
          f.pressure[#f.pressure + 1] = { ev = ev, f = fd }
        end
      end
      if kind == "kubectl_describe" and c.pod and not f.pod then
        f.pod, f.namespace = c.pod, c.namespace
      end
    end
  end
  if not f.pod and f.pending[1] then
    f.pod, f.namespace = f.pending[1].name, f.pending[1].namespace
  end
  if f.namespace == "" then f.namespace = nil end
  f.failed_sched = ctx.signal("pending_failed_scheduling")
  f.evictions = ctx.signal("k8s_evicted") + ctx.signal("pending_evict_memory")
    + ctx.signal("pending_evict_disk")
  f.evict_memory = ctx.signal("pending_evict_memory")
  f.evict_disk = ctx.signal("pending_evict_disk")
  f.quota = ctx.signal("pending_quota_exceeded")
  f.autoscaler = ctx.signal("pending_autoscaler_limit")
  -- Signals stand in for the parsed message when only logs were given.
  local function sig_group(g, names)
    if (f.groups[g] or 0) == 0 then
      for _, n in ipairs(names) do
        if ctx.signal(n) > 0 then f.groups[g] = 0.5 end
      end
    end
  end
  sig_group("pending_capacity", { "pending_insufficient_resources", "pending_too_many_pods" })
  sig_group("pending_constraints", { "pending_untolerated_taint", "pending_affinity_mismatch" })
  sig_group("pending_volume", { "pending_unbound_pvc" })
  -- The dominant scheduling reason.
  local best, n = nil, 0
  for _, g in ipairs { "pending_capacity", "pending_constraints", "pending_volume" } do
    if (f.groups[g] or 0) > n then best, n = g, f.groups[g] end
  end
  f.dominant = best
  f.scheduling = f.failed_sched > 0 or #f.sched > 0 or #f.pending > 0
  cache[ctx] = f
  return f
end

local STATEMENTS = {
  pending_capacity = "No node has enough free allocatable capacity for the pod's requests "
    .. "(requests, not real usage, count) and the cluster cannot grow",
  pending_constraints = "Placement constraints no node satisfies: node selector, node/pod "
    .. "affinity or anti-affinity, topology spread, or taints without tolerations",
  pending_volume = "The pod's PersistentVolumeClaim is not bound or its volume is in another "
    .. "zone (volume node affinity conflict)",
  pending_quota = "The namespace's ResourceQuota is exhausted, so new pods are rejected",
  pending_node_pressure = "The kubelet evicts pods because the node is short of memory, disk "
    .. "(ephemeral storage, logs, emptyDir) or PIDs",
}

return {
  id = "pending-pods-and-evictions",
  title = "Pods stuck Pending or evicted",
  version = "1.0.0",
  description = "The scheduler cannot place a pod (Pending) or the kubelet evicts pods under "
    .. "node pressure. Parses the scheduler's per-node reasons to tell capacity, placement "
    .. "constraints and volumes apart, and reads eviction messages, quota and autoscaler limits.",
  tags = { "kubernetes", "pending", "evicted", "scheduling", "capacity", "taints", "pvc" },
  category = "environment",
  kb = "pods pending FailedScheduling insufficient cpu memory taint evicted node pressure",

  signals = {
    { name = "pending_failed_scheduling", severity = "error",
      pattern = [[FailedScheduling|[0-9]+/[0-9]+ nodes are available]],
      description = "the scheduler could not place a pod" },
    { name = "pending_insufficient_resources", severity = "error",
      pattern = [[Insufficient (cpu|memory|ephemeral-storage|pods|nvidia\.com/gpu|hugepages)]],
      description = "no node has enough free allocatable resources" },
    { name = "pending_too_many_pods", severity = "error", pattern = [[[0-9]+ Too many pods]],
      description = "nodes are at their pod limit" },
    { name = "pending_untolerated_taint", severity = "warning",
      pattern = [[had untolerated taint|had taint \{[^}]*\}, that the pod didn't tolerate]],
      description = "nodes have taints the pod does not tolerate" },
    { name = "pending_affinity_mismatch", severity = "warning",
      pattern = [[didn't match (Pod's )?node affinity/selector|didn't match pod (anti-)?affinity]]
        .. [[|didn't match pod topology spread constraints|didn't satisfy existing pods]],
      description = "no node satisfies the pod's selector/affinity/spread" },
    { name = "pending_unbound_pvc", severity = "error",
      pattern = [[unbound immediate PersistentVolumeClaims|volume node affinity conflict]]
        .. [[|persistentvolumeclaim "[^"]+" not found|waiting for first consumer]],
      description = "the pod's volume cannot be bound or is in another zone" },
    { name = "pending_quota_exceeded", severity = "error",
      pattern = [[exceeded quota: |forbidden: exceeded quota]],
      description = "the namespace's ResourceQuota rejected the pod" },
    { name = "pending_autoscaler_limit", severity = "warning",
      pattern = [[max node group size reached|pod didn't trigger scale-up|NotTriggerScaleUp]],
      description = "the cluster autoscaler cannot add nodes" },
    { name = "pending_evict_memory", severity = "error",
      pattern = [[low on resource: memory|MemoryPressure +True]],
      description = "eviction because the node is short of memory" },
    { name = "pending_evict_disk", severity = "error",
      pattern = [[low on resource: (ephemeral-storage|nodefs|imagefs)|DiskPressure +True]]
        .. [[|exceeded its local ephemeral storage limit|usage of ephemeral local storage]],
      description = "eviction because the node or the pod used too much disk" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if #f.sched > 0 or f.failed_sched > 0 then
      score = 0.6
      local s = f.sched[1]
      reasons[#reasons + 1] = s and string.format("FailedScheduling in %s line %s: %s",
        tostring(s.ev.filename), tostring(s.line), s.text:sub(1, 120))
        or ("FailedScheduling in " .. where(ctx, "pending_failed_scheduling"))
    elseif #f.pending > 0 then
      score = 0.35
      reasons[#reasons + 1] = string.format("%d pod(s) Pending in %s", #f.pending,
                                            tostring(f.pending[1].ev.filename))
    end
    if f.evictions > 0 or #f.evicted > 0 then
      score = score + (score > 0 and 0.15 or 0.55)
      reasons[#reasons + 1] = f.evictions > 0 and ("evictions in " .. where(ctx,
        ctx.signal("k8s_evicted") > 0 and "k8s_evicted" or (f.evict_memory > 0
        and "pending_evict_memory" or "pending_evict_disk")))
        or string.format("%d Evicted pod(s)", #f.evicted)
    end
    if f.evict_memory + f.evict_disk > 0 then
      score = score + 0.15
      local n = f.evict_disk > f.evict_memory and "pending_evict_disk" or "pending_evict_memory"
      reasons[#reasons + 1] = "node low on " .. (n == "pending_evict_disk" and "disk" or "memory")
        .. " in " .. where(ctx, n)
    end
    if f.quota > 0 then
      score = score + (score > 0 and 0.2 or 0.5)
      reasons[#reasons + 1] = "quota exceeded in " .. where(ctx, "pending_quota_exceeded")
    end
    if score > 0 and f.dominant then
      score = score + 0.2
      reasons[#reasons + 1] = "scheduler reason: " .. f.dominant
    end
    if f.autoscaler > 0 and score > 0 then score = score + 0.05 end
    if ctx.said("pending", "evicted", "eviction", "unschedulable", "failedscheduling",
                "cannot schedule", "not scheduled") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports pending or evicted pods"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for i, s in ipairs(f.sched) do
        if i > 5 then break end
        out:finding { text = "Scheduler: " .. s.text, evidence_id = s.ev.id,
                      filename = s.ev.filename, line = tonumber(s.line) }
      end
      if #f.pending > 0 then
        local names = {}
        for i, p in ipairs(f.pending) do if i <= 5 then names[#names + 1] = p.name end end
        out:finding { text = string.format("%d pod(s) Pending: %s", #f.pending,
          table.concat(names, ", ")), evidence_id = f.pending[1].ev.id,
          filename = f.pending[1].ev.filename }
      end
      if #f.evicted > 0 then
        out:finding { text = string.format("%d pod(s) Evicted", #f.evicted),
                      evidence_id = f.evicted[1].ev.id, filename = f.evicted[1].ev.filename }
      end
      for _, p in ipairs(f.pressure) do
        out:finding { text = tostring(p.f.message), evidence_id = p.ev.id,
                      filename = p.ev.filename, line = p.f.line }
      end
      signal_finding(ctx, out, "pending_insufficient_resources", "Insufficient resources")
      signal_finding(ctx, out, "pending_untolerated_taint", "Untolerated taints")
      signal_finding(ctx, out, "pending_affinity_mismatch", "Selector/affinity not satisfied")
      signal_finding(ctx, out, "pending_unbound_pvc", "Volume not bound")
      signal_finding(ctx, out, "pending_quota_exceeded", "ResourceQuota exceeded")
      signal_finding(ctx, out, "pending_autoscaler_limit", "Cluster autoscaler cannot scale up")
      signal_finding(ctx, out, "pending_evict_memory", "Evicted: node low on memory")
      signal_finding(ctx, out, "pending_evict_disk", "Evicted: node/pod low on disk")
      signal_finding(ctx, out, "k8s_evicted", "Evictions")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local lk = { pending_capacity = 0.25, pending_constraints = 0.2, pending_volume = 0.1,
                   pending_quota = f.quota > 0 and 0.8 or 0.05,
                   pending_node_pressure = f.evictions > 0 and 0.75 or 0.1 }
      if f.dominant then lk[f.dominant] = 0.8 end
      for g, n in pairs(f.groups) do
        if g ~= f.dominant and n > 0 then lk[g] = math.max(lk[g], 0.4) end
      end
      if not f.scheduling and f.evictions > 0 then
        lk.pending_capacity, lk.pending_constraints = 0.1, 0.05
      end
      for _, key in ipairs { "pending_capacity", "pending_constraints", "pending_volume",
                             "pending_quota", "pending_node_pressure" } do
        out:hypothesis { key = key, statement = STATEMENTS[key], likelihood = lk[key],
          category = (key == "pending_constraints" or key == "pending_quota"
                      or key == "pending_volume") and "config" or "environment" }
      end
      for _, s in ipairs(f.sched) do
        local groups = parse_scheduler(s.text) or {}
        for g, n in pairs(groups) do
          out:evidence { hypothesis = g, stance = "for", evidence_id = s.ev.id,
            line = tonumber(s.line), summary = string.format("%d of %s nodes rejected the pod "
            .. "for this reason", n, tostring(s.total)) }
        end
      end
      local a = ctx.signals.pending_autoscaler_limit
      if a then
        out:evidence { hypothesis = "pending_capacity", stance = "for", evidence_id =
          a.evidence_id, line = a.first_line, summary = "the autoscaler cannot add nodes" }
      end
      for _, n in ipairs { "pending_evict_memory", "pending_evict_disk" } do
        local s = ctx.signals[n]
        if s then
          out:evidence { hypothesis = "pending_node_pressure", stance = "for", evidence_id =
            s.evidence_id, line = s.first_line, summary = n .. " at " .. where(ctx, n) }
        end
      end
      local q = ctx.signals.pending_quota_exceeded
      if q then
        out:evidence { hypothesis = "pending_quota", stance = "for", evidence_id = q.evidence_id,
          line = q.first_line,
          summary = "exceeded quota at " .. where(ctx, "pending_quota_exceeded") }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("pods pending FailedScheduling evicted node pressure", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local pod, ns = f.pod or "<pod>", f.namespace or "<namespace>"
      if #f.sched == 0 and f.scheduling then
        out:ask { label = "The scheduler's reason", hypothesis = "pending_capacity",
          command = "kubectl describe pod " .. pod .. " -n " .. ns .. " | sed -n '/Events:/,$p'",
          why = "FailedScheduling lists, per reason, how many nodes rejected the pod" }
      end
      if f.dominant == "pending_capacity" or (not f.dominant and f.scheduling) then
        out:ask { label = "Requests against allocatable per node", hypothesis = "pending_capacity",
          command = "kubectl describe nodes | grep -A8 'Allocated resources'",
          why = "95-100% of CPU/memory requests on every node: full by reservation" }
        out:ask { label = "Cluster autoscaler decisions", hypothesis = "pending_capacity",
          command = "kubectl -n kube-system logs deploy/cluster-autoscaler --tail=100 "
            .. "| grep -i scale",
          why = "max node group size reached, or no capacity in the zone" }
      end
      if f.dominant == "pending_constraints" then
        out:ask { label = "Taints and labels of the nodes", hypothesis = "pending_constraints",
          command = "kubectl get nodes -o custom-columns=NAME:.metadata.name,"
            .. "TAINTS:.spec.taints,LABELS:.metadata.labels",
          why = "compare with the pod's nodeSelector, affinity and tolerations" }
      end
      if f.dominant == "pending_volume" then
        out:ask { label = "The claim's state", hypothesis = "pending_volume",
          command = "kubectl get pvc -n " .. ns .. "; kubectl describe pvc <pvc> -n " .. ns,
          why = "no StorageClass, a zone mismatch or a provisioning error" }
      end
      if f.evictions > 0 or #f.evicted > 0 then
        out:ask { label = "Evictions and node pressure", hypothesis = "pending_node_pressure",
          command = "kubectl get events -A --field-selector reason=Evicted "
            .. "--sort-by=.lastTimestamp | tail -20",
          why = "evictions concentrated on one node point at that node's disk or memory" }
        out:ask { label = "Pressure conditions of the node", hypothesis = "pending_node_pressure",
          command = "kubectl describe node <node> | grep -E 'Conditions|Pressure|Taints' -A6",
          why = "MemoryPressure/DiskPressure True and the matching NoSchedule taints" }
        if f.evict_disk > 0 then
          out:ask { label = "What fills the node's disk", hypothesis = "pending_node_pressure",
            command = "sudo du -xh --max-depth=2 /var/lib/kubelet /var/log/pods 2>/dev/null "
              .. "| sort -h | tail -15",
            why = "container logs and emptyDir volumes count as ephemeral storage" }
        end
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if f.quota > 0 then
        out:conclude { hypothesis = "pending_quota", confidence = 0.8, severity = "medium",
          root_cause = "The namespace's ResourceQuota is exhausted: new pods are rejected" }
      elseif f.dominant and #f.sched > 0 then
        local groups = {}
        for _, s in ipairs(f.sched) do groups[#groups + 1] = s.text:sub(1, 200) end
        out:conclude { hypothesis = f.dominant, confidence = 0.8, severity = "high",
          root_cause = STATEMENTS[f.dominant] .. ". Scheduler: " .. groups[1] }
      elseif f.dominant and f.failed_sched > 0 then
        out:conclude { hypothesis = f.dominant, confidence = 0.7, severity = "high",
          root_cause = STATEMENTS[f.dominant] }
      elseif f.evict_memory + f.evict_disk > 0 then
        local what = f.evict_disk > f.evict_memory and "disk (ephemeral storage)" or "memory"
        out:conclude { hypothesis = "pending_node_pressure", confidence = 0.8, severity = "high",
          root_cause = "The kubelet evicted pods because the node ran low on " .. what
            .. " (pods without limits, or logs/emptyDir growth)" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local key = f.quota > 0 and "pending_quota" or f.dominant
        or ((f.evictions > 0) and "pending_node_pressure") or nil
      if key == "pending_capacity" or key == nil then
        out:mitigate { title = "Add capacity",
          command = "kubectl get nodes; # then raise the node group / autoscaler maximum",
          description = "Scale the node group or add a pool with the needed shape; or lower "
            .. "oversized requests of the pending workload", risk = "medium",
          undo = "scale the node group back down",
          verify = "kubectl get pods -A --field-selector=status.phase=Pending" }
        out:solve { title = "Set requests from measured usage",
          description = "VPA recommendations; keep spare capacity or over-provisioning pods; "
            .. "alert on cluster request utilisation above 85%", risk = "low",
          undo = "restore the previous requests" }
      end
      if key == "pending_constraints" then
        out:mitigate { title = "Relax the constraint that rejects most nodes",
          description = "Add the toleration, fix the nodeSelector label, or make a hard "
            .. "anti-affinity preferredDuringSchedulingIgnoredDuringExecution",
          risk = "medium", undo = "kubectl -n <namespace> rollout undo deploy/<app>" }
      elseif key == "pending_volume" then
        out:solve { title = "Bind volumes where the pod runs",
          description = "StorageClass with volumeBindingMode: WaitForFirstConsumer so the volume "
            .. "is created in the pod's zone", risk = "low", undo = "restore the StorageClass" }
      elseif key == "pending_quota" then
        out:mitigate { title = "Raise or free the namespace quota",
          command = "kubectl -n <namespace> describe resourcequota",
          risk = "low", undo = "restore the previous quota" }
      elseif key == "pending_node_pressure" then
        out:mitigate { title = "Relieve the pressured node",
          command = "kubectl cordon <node>; # clean up disk/memory; kubectl uncordon <node>",
          description = "Then delete the leftover Evicted pods: kubectl delete pods -A "
            .. "--field-selector=status.phase=Failed", risk = "medium",
          undo = "kubectl uncordon <node>" }
        out:solve { title = "Limit what a pod can use on the node",
          description = "Memory limits on every pod, resources.limits.ephemeral-storage, "
            .. "container log size caps", risk = "low", undo = "remove the limits" }
      end
    end },
  },
}
