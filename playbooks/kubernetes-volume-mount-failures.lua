-- Pod stuck ContainerCreating on a volume attach or mount
-- (kb/kubernetes-volume-mount-failures.md).
--
-- Evidence it reads: kubectl get pods (ContainerCreating rows), kubectl describe pod and kubectl
-- get events (FailedAttachVolume, FailedMount, Multi-Attach errors, MountVolume.SetUp failures),
-- kubelet and CSI driver logs.
-- Competing explanations: the volume is still attached to another (often dead) node, a
-- referenced ConfigMap/Secret/PVC does not exist, the CSI driver is down or lacks cloud
-- permissions, the volume is in another zone, the node's attach limit, a damaged filesystem.

local kit = require "kit"
local where, signal_finding = kit.where, kit.signal_finding

-- The causes, most specific first, each with the signal that shows it.
local CAUSES = {
  { key = "volmount_missing_object", signal = "volmount_missing_ref", confidence = 0.9,
    category = "config",
    statement = "A ConfigMap, Secret or PVC the pod mounts does not exist in its namespace "
      .. "(a typo, not created yet, created in another namespace)",
    root_cause = "The pod mounts a ConfigMap/Secret/PVC that does not exist in its namespace, "
      .. "so the kubelet cannot set up the volume" },
  { key = "volmount_stale_attachment", signal = "volmount_multi_attach", confidence = 0.85,
    category = "environment",
    statement = "The volume is still attached to another node (the old node crashed or is "
      .. "NotReady, the pod was force-deleted, the detach has not happened yet)",
    root_cause = "The ReadWriteOnce volume is still attached to another node (Multi-Attach "
      .. "error): it cannot attach to the new pod's node until the old attachment is released" },
  { key = "volmount_filesystem", signal = "volmount_fs_error", confidence = 0.8,
    category = "data",
    statement = "The filesystem on the volume is damaged or not what the mount expects (wrong "
      .. "fs type, bad superblock)",
    root_cause = "The volume's filesystem cannot be mounted (wrong fs type / bad superblock / "
      .. "needs fsck)" },
  { key = "volmount_attach_limit", signal = "volmount_attach_limit", confidence = 0.8,
    category = "environment",
    statement = "The node reached its maximum number of attachable volumes",
    root_cause = "The node has reached its attachable-volume limit, so the new volume cannot be "
      .. "attached there" },
  { key = "volmount_zone_mismatch", signal = "volmount_zone_conflict", confidence = 0.8,
    category = "config",
    statement = "The volume is in another availability zone than the nodes the pod can use",
    root_cause = "The persistent volume is in another zone than the pod's node (volume node "
      .. "affinity conflict)" },
  { key = "volmount_csi_driver", signal = "volmount_csi_problem", confidence = 0.75,
    category = "environment",
    statement = "The CSI driver (controller or node plugin) is not running, not registered on "
      .. "the node, or lacks cloud permissions / is throttled by the cloud API",
    root_cause = "The CSI driver cannot attach or mount the volume (driver not registered on "
      .. "the node, or the cloud API refuses or throttles its calls)" },
}

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { creating = {}, events = {} }
  for _, ev in ipairs(ctx.command("kubectl_get")) do
    for _, row in ipairs(ev.summary.command and ev.summary.command.rows or {}) do
      if row.status == "ContainerCreating" then
        f.creating[#f.creating + 1] = { name = row.name, namespace = row.namespace, ev = ev }
      end
    end
  end
  for _, kind in ipairs { "kubectl_describe", "kubectl_events" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, e in ipairs(c.events or {}) do
        local reason = tostring(e.reason or "")
        if reason == "FailedMount" or reason == "FailedAttachVolume" then
          f.events[#f.events + 1] = { reason = reason, text = tostring(e.message or ""),
                                      line = e.line, ev = ev }
          local pvc = tostring(e.message or ""):match('volume "(pvc%-[%w%-]+)"')
          f.pv = f.pv or pvc
        end
      end
      if kind == "kubectl_describe" and c.pod and not f.pod then
        f.pod, f.namespace = c.pod, c.namespace
      end
    end
  end
  if not f.pod and f.creating[1] then
    f.pod, f.namespace = f.creating[1].name, f.creating[1].namespace
  end
  if f.namespace == "" then f.namespace = nil end
  f.failed = ctx.signal("volmount_failed_mount") + ctx.signal("volmount_attach_failed")
  f.timeout = ctx.signal("volmount_mount_timeout")
  f.mounting = f.failed > 0 or #f.events > 0 or f.timeout > 0
  f.cause = nil
  for _, c in ipairs(CAUSES) do
    if ctx.signal(c.signal) > 0 then f.cause = c break end
  end
  cache[ctx] = f
  return f
end

return {
  id = "kubernetes-volume-mount-failures",
  title = "Pod stuck ContainerCreating on volume mount or attach",
  version = "1.0.0",
  description = "A scheduled pod cannot attach or mount its volumes and stays ContainerCreating. "
    .. "Reads FailedAttachVolume/FailedMount events and kubelet/CSI logs to tell a stale "
    .. "attachment, a missing ConfigMap/Secret/PVC, the CSI driver, a zone mismatch, the attach "
    .. "limit and a damaged filesystem apart.",
  tags = { "kubernetes", "volume", "pvc", "failedmount", "multi-attach", "csi" },
  category = "environment",
  kb = "FailedMount FailedAttachVolume Multi-Attach volume ContainerCreating CSI",

  signals = {
    { name = "volmount_failed_mount", severity = "error",
      pattern = [[FailedMount|MountVolume\.(SetUp|MountDevice|WaitForAttach) failed]],
      description = "the kubelet failed to mount a volume" },
    { name = "volmount_attach_failed", severity = "error",
      pattern = [[FailedAttachVolume|AttachVolume\.Attach failed]],
      description = "the attach/detach controller failed to attach a volume" },
    { name = "volmount_mount_timeout", severity = "warning",
      pattern = [[Unable to attach or mount volumes: unmounted volumes=]],
      description = "the kubelet gave up waiting for the pod's volumes" },
    { name = "volmount_multi_attach", severity = "error",
      pattern = [[Multi-Attach error for volume|already exclusively attached to one node]],
      description = "the volume is still attached to another node" },
    { name = "volmount_missing_ref", severity = "error",
      pattern = [[(configmap|secret|persistentvolumeclaim) "[^"]+" not found]],
      description = "a mounted ConfigMap/Secret/PVC does not exist" },
    { name = "volmount_fs_error", severity = "critical",
      pattern = [[wrong fs type, bad option, bad superblock|Structure needs cleaning]]
        .. [[|mount failed: exit status 32[^\n]*(bad superblock|wrong fs type)]],
      description = "the volume's filesystem cannot be mounted" },
    { name = "volmount_attach_limit", severity = "error",
      pattern = [[exceed max volume count|AttachVolumeLimitExceeded|AttachmentLimitExceeded]],
      description = "the node's attachable-volume limit is reached" },
    { name = "volmount_zone_conflict", severity = "error",
      pattern = [[had volume node affinity conflict|didn't match PersistentVolume's node affinity]],
      description = "the volume is in another zone than the node" },
    { name = "volmount_csi_problem", severity = "error",
      pattern = [[not found in the list of registered CSI drivers|CSINode [^ ]+ does not contain ]]
        .. [[driver|UnauthorizedOperation|not authorized to perform: ec2:(Attach|Detach)Volume]]
        .. [[|RequestLimitExceeded]],
      description = "the CSI driver is not registered or the cloud API refuses it" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.mounting then
      score = 0.55
      local e = f.events[1]
      reasons[#reasons + 1] = e and string.format("%s in %s line %s", e.reason,
        tostring(e.ev.filename), tostring(e.line)) or ("volume attach/mount failures in "
        .. (where(ctx, "volmount_failed_mount") or where(ctx, "volmount_attach_failed")
            or where(ctx, "volmount_mount_timeout")))
    end
    if #f.creating > 0 then
      score = score + (score > 0 and 0.05 or 0.15)
      reasons[#reasons + 1] = string.format("%d pod(s) ContainerCreating", #f.creating)
    end
    if f.cause then
      score = score + (f.mounting and 0.3 or 0.1)
      reasons[#reasons + 1] = f.cause.signal .. " in " .. where(ctx, f.cause.signal)
    end
    if ctx.said("failedmount", "multi-attach", "volume", "pvc", "containercreating",
                "mount") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports a volume problem"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for i, e in ipairs(f.events) do
        if i > 5 then break end
        out:finding { text = e.reason .. ": " .. e.text, evidence_id = e.ev.id,
                      filename = e.ev.filename, line = tonumber(e.line) }
      end
      if #f.creating > 0 then
        out:finding { text = string.format("%d pod(s) stuck ContainerCreating (%s)",
          #f.creating, f.creating[1].name), evidence_id = f.creating[1].ev.id,
          filename = f.creating[1].ev.filename }
      end
      for _, c in ipairs(CAUSES) do
        signal_finding(ctx, out, c.signal, (c.statement:match("^[^(:]+"):gsub("%s+$", "")))
      end
      signal_finding(ctx, out, "volmount_mount_timeout", "Timed out waiting for the volumes")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      for _, c in ipairs(CAUSES) do
        local lk = 0.1
        if f.cause == c then lk = c.confidence
        elseif not f.cause and (c.key == "volmount_stale_attachment"
                                or c.key == "volmount_csi_driver") then lk = 0.35 end
        out:hypothesis { key = c.key, statement = c.statement, category = c.category,
                         likelihood = lk }
        local s = ctx.signals[c.signal]
        if s and s.count > 0 then
          out:evidence { hypothesis = c.key, stance = "for", evidence_id = s.evidence_id,
            line = s.first_line, summary = c.signal .. " (" .. where(ctx, c.signal) .. ")" }
        end
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("FailedMount Multi-Attach volume attach ContainerCreating", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local pod, ns = f.pod or "<pod>", f.namespace or "<namespace>"
      local pv = f.pv or "<pv>"
      if #f.events == 0 then
        out:ask { label = "Volume events of the pod", hypothesis = "volmount_stale_attachment",
          command = "kubectl -n " .. ns .. " describe pod " .. pod .. " | sed -n '/Volumes:/,$p'",
          why = "FailedAttachVolume / FailedMount messages name the cause" }
      end
      local key = f.cause and f.cause.key
      if not key or key == "volmount_stale_attachment" then
        out:ask { label = "Which node holds the attachment", hypothesis =
          "volmount_stale_attachment", command = "kubectl get volumeattachment | grep " .. pv
          .. "; kubectl get nodes",
          why = "an attachment on an old or NotReady node has not been detached" }
      end
      if not key or key == "volmount_csi_driver" then
        out:ask { label = "CSI driver pods and logs", hypothesis = "volmount_csi_driver",
          command = "kubectl get pods -A -o wide | grep -iE 'csi|ebs|pd|disk'; kubectl -n "
            .. "kube-system logs -l app=ebs-csi-controller -c csi-attacher --tail=50",
          why = "driver not running on the node, missing permissions, cloud API throttling" }
      end
      if not key or key == "volmount_zone_mismatch" then
        out:ask { label = "Zone of the volume and of the node", hypothesis =
          "volmount_zone_mismatch", command = "kubectl get pv " .. pv
          .. " -o jsonpath='{.spec.nodeAffinity}{\"\\n\"}'; kubectl get nodes -L "
          .. "topology.kubernetes.io/zone",
          why = "a zonal disk can only attach to nodes in its zone" }
      end
      if key == "volmount_missing_object" then
        out:ask { label = "What exists in the namespace", hypothesis = "volmount_missing_object",
          command = "kubectl -n " .. ns .. " get configmap,secret,pvc",
          why = "compare with the names the pod's volumes reference" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if f.mounting and f.cause then
        out:conclude { hypothesis = f.cause.key, confidence = f.cause.confidence,
                       severity = "high", root_cause = f.cause.root_cause }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local key = f.cause and f.cause.key
      if key == "volmount_missing_object" then
        out:mitigate { title = "Create the missing object or fix the reference",
          command = "kubectl -n " .. (f.namespace or "<namespace>") .. " create configmap "
            .. "<name> --from-file=<file>   # or fix the name in the pod spec",
          risk = "low", undo = "kubectl -n <namespace> delete configmap <name>",
          verify = "kubectl -n <namespace> get pod " .. (f.pod or "<pod>") }
        out:solve { title = "Ship config objects with the workload",
          description = "Deploy ConfigMaps/Secrets in the same release as the workload and "
            .. "validate references in CI", risk = "low", undo = "none" }
        return
      end
      if key == "volmount_stale_attachment" or not key then
        out:mitigate { title = "Release the attachment held by the dead node",
          command = "kubectl delete node <old-node>   # only once it is really powered off",
          description = "Or delete the stale VolumeAttachment after confirming the old node is "
            .. "off; the controller otherwise force-detaches after about 6 minutes. Never "
            .. "force-detach from a node that is still writing",
          risk = "high", undo = "the node re-registers when its kubelet starts again",
          verify = "kubectl get volumeattachment | grep " .. (f.pv or "<pv>") }
        out:solve { title = "Remove dead nodes promptly",
          description = "Node auto-repair so dead nodes are deleted and volumes released",
          risk = "low", undo = "disable auto-repair" }
      end
      if key == "volmount_csi_driver" or not key then
        out:mitigate { title = "Restart the CSI driver pods",
          command = "kubectl -n kube-system rollout restart deploy/ebs-csi-controller "
            .. "ds/ebs-csi-node   # your driver's names",
          risk = "medium", undo = "none needed" }
      end
      if key == "volmount_zone_mismatch" then
        out:solve { title = "Bind volumes in the pod's zone",
          description = "StorageClass volumeBindingMode: WaitForFirstConsumer", risk = "low",
          undo = "restore the StorageClass" }
      elseif key == "volmount_filesystem" then
        out:mitigate { title = "Check the filesystem from a node, unmounted",
          command = "sudo fsck -n /dev/<device>   # read-only check first",
          description = "Snapshot the volume before any repair", risk = "high",
          undo = "restore the snapshot" }
      elseif key == "volmount_attach_limit" then
        out:mitigate { title = "Spread the volumes over more nodes",
          command = "kubectl cordon <node>   # then delete one pod so it lands elsewhere",
          risk = "medium", undo = "kubectl uncordon <node>" }
      end
    end },
  },
}
