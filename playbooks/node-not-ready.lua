-- Kubernetes node NotReady (kb/node-not-ready.md).
--
-- Evidence it reads: kubectl get nodes (NotReady/Unknown rows), kubectl describe node
-- (conditions: Ready False/Unknown with the kubelet's reason, Memory/Disk/PID pressure, the
-- unreachable/not-ready taints), kubelet and containerd logs from the node (journalctl -u
-- kubelet: PLEG, runtime down, CNI not initialised, x509 errors, lease/status update failures).
-- Competing explanations: the kubelet itself failed (crash, bad config, expired certificate),
-- the container runtime hung (PLEG), the node starved of memory/disk/PIDs, node networking
-- (CNI not ready, API server unreachable), the VM is gone (stopped, preempted, host failure).

local kit = require "kit"
local where, signal_finding, sig_evidence = kit.where, kit.signal_finding, kit.signal_evidence

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { not_ready = {}, pressure = {}, ready_nodes = 0 }
  for _, kind in ipairs { "kubectl_get", "kubectl_describe", "kubectl_events" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, fd in ipairs(c.findings or {}) do
        if fd.kind == "node_not_ready" then
          f.not_ready[#f.not_ready + 1] = { ev = ev, f = fd }
        elseif fd.kind == "memory_pressure" or fd.kind == "disk_pressure"
               or fd.kind == "pid_pressure" then
          f.pressure[#f.pressure + 1] = { ev = ev, f = fd }
        end
      end
      for _, row in ipairs(c.rows or {}) do
        if row.status and tostring(row.status):find("^Ready") then
          f.ready_nodes = f.ready_nodes + 1
        end
      end
      if c.node and not f.node then f.node = c.node end
    end
  end
  if not f.node then
    for _, ev in ipairs(ctx.command("kubectl_get")) do
      for _, row in ipairs(ev.summary.command and ev.summary.command.rows or {}) do
        if row.status == "NotReady" or row.status == "Unknown" then
          f.node = f.node or row.name
        end
      end
    end
  end
  f.stopped_posting = ctx.signal("node_status_unknown")
  f.pleg = ctx.signal("node_pleg_unhealthy")
  f.runtime = ctx.signal("node_runtime_down")
  f.cni = ctx.signal("node_cni_not_ready")
  f.cert = ctx.signal("node_kubelet_certificate")
  f.kubelet_exit = ctx.signal("node_kubelet_exited")
  f.api = ctx.signal("node_api_unreachable")
  f.pid = ctx.signal("node_pid_exhaustion")
  f.taint = ctx.signal("node_unreachable_taint")
  f.lost = ctx.signal("node_instance_lost")
  f.notready_words = ctx.signal("node_not_ready_event")
  f.down = #f.not_ready > 0 or f.stopped_posting > 0 or f.taint > 0 or f.notready_words > 0
  cache[ctx] = f
  return f
end

-- key, confidence, root cause: the most specific cause the evidence shows.
local function diagnose(f)
  if f.cert > 0 then
    return "node_kubelet_failure", 0.85, "The kubelet cannot authenticate to the API server: "
      .. "its client certificate expired (x509), so the node stopped reporting status"
  end
  if #f.pressure > 0 or f.pid > 0 then
    local what = {}
    for _, p in ipairs(f.pressure) do what[#what + 1] = tostring(p.f.kind):gsub("_", " ") end
    if f.pid > 0 then what[#what + 1] = "PID exhaustion" end
    return "node_resource_exhaustion", (f.pleg + f.runtime > 0) and 0.75 or 0.7,
      "The node ran short of resources (" .. table.concat(what, ", ") .. ") and the kubelet"
      .. ((f.pleg + f.runtime > 0) and " and container runtime stopped responding" or
      " could no longer keep the node healthy")
  end
  if f.cni > 0 then
    return "node_network", 0.8, "The node's network plugin (CNI) is not ready, so the kubelet "
      .. "reports NetworkReady=false and the node NotReady"
  end
  if f.pleg + f.runtime > 0 then
    return "node_runtime_failure", 0.8, "The container runtime on the node is down or hung "
      .. "(PLEG not healthy / runtime not responding), so the kubelet marks the node NotReady"
  end
  if f.kubelet_exit > 0 then
    return "node_kubelet_failure", 0.75, "The kubelet service exited or fails to start on the "
      .. "node, so nothing reports its status"
  end
  if f.api > 0 then
    return "node_network", 0.7, "The node cannot reach the API server (status and lease "
      .. "updates time out or are refused), so the control plane marks it NotReady/Unknown"
  end
  if f.lost > 0 then
    return "node_instance_lost", 0.75, "The node's VM was stopped, terminated or preempted"
  end
end

local STATEMENTS = {
  node_kubelet_failure = "The kubelet stopped or crash-loops (bad configuration, expired "
    .. "client certificate)",
  node_runtime_failure = "The container runtime (containerd, CRI-O) is hung or crashed; PLEG "
    .. "is unhealthy",
  node_resource_exhaustion = "The node is starved of memory, disk or PIDs, so the kubelet and "
    .. "the runtime cannot work",
  node_network = "Node networking: the CNI plugin is not running, or the node cannot reach the "
    .. "API server",
  node_instance_lost = "The VM was stopped, terminated, preempted (spot) or its host failed",
}
local CATEGORY = { node_network = "network", node_instance_lost = "hardware" }

return {
  id = "node-not-ready",
  title = "Kubernetes node NotReady",
  version = "1.0.0",
  description = "A node stopped reporting healthy status (NotReady or Unknown). Reads node "
    .. "conditions and kubelet/runtime logs to tell a failed kubelet, a hung container runtime, "
    .. "resource starvation, node networking and a lost VM apart.",
  tags = { "kubernetes", "node", "notready", "kubelet", "container-runtime", "cni" },
  category = "environment",
  kb = "node NotReady kubelet stopped posting node status PLEG container runtime CNI",

  signals = {
    { name = "node_status_unknown", severity = "critical",
      pattern = [[Kubelet stopped posting node status|NodeStatusUnknown]],
      description = "the control plane stopped hearing from the kubelet" },
    { name = "node_not_ready_event", severity = "error",
      pattern = [[status is now: NodeNotReady|KubeletNotReady|KubeNodeNotReady]],
      description = "the node was marked NotReady (event, condition reason or alert)" },
    { name = "node_pleg_unhealthy", severity = "error",
      pattern = [[PLEG is not healthy|pleg was last seen active]],
      description = "the kubelet's pod lifecycle event generator is stuck (runtime slow or hung)" },
    { name = "node_runtime_down", severity = "critical",
      pattern = [[container runtime is down|ContainerRuntimeNotReady|RuntimeReady=false]]
        .. [[|(containerd|crio|dockershim)\.sock: connect: (connection refused|no such file)]]
        .. [[|Cannot connect to the Docker daemon]],
      description = "the kubelet cannot talk to the container runtime" },
    { name = "node_cni_not_ready", severity = "critical",
      pattern = [[NetworkPluginNotReady|cni plugin not initialized|network plugin is not ready]]
        .. [[|NetworkReady=false]],
      description = "the node's CNI plugin is not ready" },
    { name = "node_kubelet_certificate", severity = "critical",
      pattern = [[(kube-apiserver-client-kubelet|certificate_manager\.go)[^\n]*]]
        .. [[(certificate has expired|is not yet valid)|kubelet[^\n]{0,100}x509: certificate ]]
        .. [[has expired|part of the existing bootstrap client certificate[^\n]*expired]]
        .. [[|unable to load bootstrap kubeconfig]],
      description = "the kubelet's client certificate expired or cannot be loaded" },
    { name = "node_kubelet_exited", severity = "critical",
      pattern = [[kubelet\.service: (Main process exited|Failed with result)|]]
        .. [[Failed to start kubelet|failed to run Kubelet]],
      description = "the kubelet service exited or failed to start" },
    { name = "node_api_unreachable", severity = "error",
      pattern = [[(Error updating node status|Failed to update lease|failed to ensure lease]]
        .. [[|Unable to register node)[^\n]*(connection refused|i/o timeout|context deadline ]]
        .. [[exceeded|no route to host|TLS handshake timeout)]],
      description = "the kubelet cannot reach the API server" },
    { name = "node_pid_exhaustion", severity = "error",
      pattern = [[PIDPressure +True|fork: retry: Resource temporarily unavailable]]
        .. [[|fork/exec [^:]+: resource temporarily unavailable]],
      description = "the node ran out of PIDs" },
    { name = "node_unreachable_taint", severity = "warning",
      pattern = [[node\.kubernetes\.io/(unreachable|not-ready):No(Execute|Schedule)$]],
      description = "the node is tainted unreachable/not-ready (a pod's default tolerations "
        .. "of these taints end in 'for 300s' and do not match)" },
    { name = "node_instance_lost", flags = "i", severity = "error",
      pattern = [[spot instance interruption|instance (was )?(terminated|preempted)]]
        .. [[|instance-status check failed|EC2 Spot Instance Interruption]],
      description = "the VM was stopped, preempted or failed its status checks" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if #f.not_ready > 0 then
      score = 0.55
      reasons[#reasons + 1] = string.format("%s (%s line %s)", tostring(f.not_ready[1].f.message),
        tostring(f.not_ready[1].ev.filename), tostring(f.not_ready[1].f.line))
    end
    for _, n in ipairs { "node_status_unknown", "node_not_ready_event",
                         "node_unreachable_taint" } do
      if ctx.signal(n) > 0 then
        score = score > 0 and score + 0.05 or 0.45
        reasons[#reasons + 1] = n .. " in " .. where(ctx, n)
      end
    end
    local key = diagnose(f)
    if key then
      score = score + (score > 0 and 0.25 or 0.25)
      reasons[#reasons + 1] = "cause seen: " .. key
    end
    if ctx.said("notready", "not ready", "node down", "node is down", "unreachable node",
                "kubelet") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports a node problem"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for _, n in ipairs(f.not_ready) do
        out:finding { text = tostring(n.f.message), evidence_id = n.ev.id,
                      filename = n.ev.filename, line = n.f.line }
      end
      for _, p in ipairs(f.pressure) do
        out:finding { text = tostring(p.f.message), evidence_id = p.ev.id,
                      filename = p.ev.filename, line = p.f.line }
      end
      signal_finding(ctx, out, "node_status_unknown", "Kubelet stopped posting node status")
      signal_finding(ctx, out, "node_unreachable_taint", "Unreachable/not-ready taint")
      signal_finding(ctx, out, "node_pleg_unhealthy", "PLEG is not healthy")
      signal_finding(ctx, out, "node_runtime_down", "Container runtime down")
      signal_finding(ctx, out, "node_cni_not_ready", "CNI network plugin not ready")
      signal_finding(ctx, out, "node_kubelet_certificate", "Kubelet certificate problem")
      signal_finding(ctx, out, "node_kubelet_exited", "Kubelet service exited")
      signal_finding(ctx, out, "node_api_unreachable", "API server unreachable from the node")
      signal_finding(ctx, out, "node_pid_exhaustion", "PID exhaustion")
      signal_finding(ctx, out, "node_instance_lost", "VM stopped or preempted")
      if f.ready_nodes > 0 and #f.not_ready > 0 then
        out:finding(string.format("%d other node(s) are Ready: the problem is local to the "
          .. "node, not the control plane", f.ready_nodes))
      end
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local key, conf = diagnose(f)
      local base = { node_kubelet_failure = 0.3, node_runtime_failure = 0.25,
                     node_resource_exhaustion = 0.25, node_network = 0.2,
                     node_instance_lost = 0.15 }
      if f.pleg + f.runtime > 0 then base.node_runtime_failure = 0.5 end
      if f.stopped_posting > 0 and not key then
        base.node_instance_lost, base.node_network = 0.35, 0.3
      end
      if key then base[key] = conf end
      for _, k in ipairs { "node_kubelet_failure", "node_runtime_failure",
                           "node_resource_exhaustion", "node_network", "node_instance_lost" } do
        out:hypothesis { key = k, statement = STATEMENTS[k], likelihood = base[k],
                         category = CATEGORY[k] or "environment" }
      end
      sig_evidence(ctx, out, "node_kubelet_failure", "for", "node_kubelet_certificate",
        "kubelet certificate expired")
      sig_evidence(ctx, out, "node_kubelet_failure", "for", "node_kubelet_exited", "kubelet exited")
      sig_evidence(ctx, out, "node_runtime_failure", "for", "node_pleg_unhealthy",
        "PLEG not healthy")
      sig_evidence(ctx, out, "node_runtime_failure", "for", "node_runtime_down", "runtime down")
      sig_evidence(ctx, out, "node_network", "for", "node_cni_not_ready", "CNI not ready")
      sig_evidence(ctx, out, "node_network", "for", "node_api_unreachable",
        "API server unreachable")
      sig_evidence(ctx, out, "node_resource_exhaustion", "for", "node_pid_exhaustion",
        "PID exhaustion")
      sig_evidence(ctx, out, "node_instance_lost", "for", "node_instance_lost", "VM lost")
      for _, p in ipairs(f.pressure) do
        out:evidence { hypothesis = "node_resource_exhaustion", stance = "for",
          evidence_id = p.ev.id, line = p.f.line, summary = tostring(p.f.message) }
      end
      if f.ready_nodes > 0 and #f.not_ready > 0 then
        out:evidence { hypothesis = "node_network", stance = "against", summary = string.format(
          "%d other nodes are Ready: the API server itself is reachable", f.ready_nodes) }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("node NotReady kubelet container runtime PLEG", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local node = f.node or "<node>"
      local described = false
      for _, ev in ipairs(ctx.command("kubectl_describe")) do
        if ev.summary.command and ev.summary.command.node then described = true end
      end
      if not described then
        out:ask { label = "Node conditions", hypothesis = "node_resource_exhaustion",
          command = "kubectl describe node " .. node .. " | sed -n '/Conditions:/,/Addresses:/p'",
          why = "the Ready condition's reason and message, and pressure before it went NotReady" }
      end
      local kubelet_log = f.pleg + f.runtime + f.cni + f.cert + f.kubelet_exit + f.api > 0
      if not kubelet_log then
        out:ask { label = "Kubelet log on the node", hypothesis = "node_kubelet_failure",
          command = "journalctl -u kubelet --since '30 min ago' | tail -50",
          why = "x509, runtime, CNI and API errors are logged here" }
      end
      out:ask { label = "Kubelet and runtime state on the node", hypothesis =
        "node_runtime_failure", command = "systemctl status kubelet containerd; crictl info | "
        .. "head -30",
        why = "is each service running, and does the runtime answer" }
      out:ask { label = "Last lease renewal", hypothesis = "node_network",
        command = "kubectl get lease -n kube-node-lease " .. node
          .. " -o jsonpath='{.spec.renewTime}{\"\\n\"}'",
        why = "an old renewTime: the kubelet cannot reach or update the API server" }
      if f.stopped_posting > 0 and not diagnose(f) then
        out:ask { label = "Is the VM still there?", hypothesis = "node_instance_lost",
          command = "aws ec2 describe-instance-status --instance-ids <id> --include-all-instances",
          why = "stopped, terminated, preempted or failing status checks (or your cloud's "
            .. "equivalent)" }
      end
      if #f.pressure == 0 then
        out:ask { label = "Node resources", hypothesis = "node_resource_exhaustion",
          command = "free -m; df -h /var/lib/kubelet /var/lib/containerd; ps -eLf | wc -l",
          why = "memory, disk and PID exhaustion starve the kubelet" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if not f.down and f.pleg + f.runtime + f.cni == 0 then return end
      local key, conf, text = diagnose(f)
      if key then
        out:conclude { hypothesis = key, confidence = conf, root_cause = text,
                       severity = "high" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local node = f.node or "<node>"
      local key = diagnose(f)
      out:mitigate { title = "Move workloads off the node",
        command = "kubectl cordon " .. node .. " && kubectl drain " .. node
          .. " --ignore-daemonsets --delete-emptydir-data",
        description = "Stops new scheduling and reschedules its pods", risk = "medium",
        undo = "kubectl uncordon " .. node, verify = "kubectl get pods -A -o wide | grep " .. node }
      if key == "node_runtime_failure" or key == "node_kubelet_failure" or not key then
        out:mitigate { title = "Restart the runtime and the kubelet on the node",
          command = "sudo systemctl restart containerd kubelet",
          description = "Running containers survive a containerd restart in most setups",
          risk = "medium", undo = "none; if it fails to start, read journalctl -u kubelet",
          verify = "kubectl get node " .. node }
      end
      if key == "node_kubelet_failure" and f.cert > 0 then
        out:solve { title = "Enable kubelet certificate rotation",
          description = "rotateCertificates: true in the kubelet configuration and approve "
            .. "CSRs (or the managed node group's bootstrap)", risk = "low",
          undo = "restore the previous kubelet configuration" }
      end
      if key == "node_resource_exhaustion" then
        out:solve { title = "Reserve resources for the system",
          description = "systemReserved, kubeReserved and eviction thresholds so workloads "
            .. "cannot starve the kubelet; memory limits on every pod", risk = "low",
          undo = "restore the kubelet configuration" }
      end
      if key == "node_network" then
        out:mitigate { title = "Restart the CNI agent on the node",
          command = "kubectl -n kube-system delete pod -l k8s-app=<cni-daemonset> "
            .. "--field-selector spec.nodeName=" .. node,
          risk = "medium", undo = "the DaemonSet recreates the pod" }
      end
      out:solve { title = "Replace unhealthy nodes automatically",
        description = "Node auto-repair / health-check based replacement; spread replicas "
          .. "with topology spread constraints and PodDisruptionBudgets", risk = "low",
        undo = "disable auto-repair" }
    end },
  },
}
