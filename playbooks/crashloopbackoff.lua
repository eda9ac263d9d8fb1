-- CrashLoopBackOff: a container starts, exits, and is restarted with a growing back-off
-- (kb/crashloopbackoff.md). CrashLoopBackOff is a state, not a cause: this playbook finds why
-- the container exits.
--
-- Evidence it reads: kubectl describe pod (State Waiting/CrashLoopBackOff, Last State reason and
-- exit code, restart count), kubectl get pods and events (BackOff, liveness kills), the crashed
-- instance's log (kubectl logs --previous: missing configuration, a panic, a dependency that
-- refuses connections), exec format / entrypoint errors, systemd start-limit loops.
-- Competing explanations: bad configuration at startup, a required dependency down at startup,
-- an application crash (panic, exception, segfault), OOMKilled, liveness probe kills, a broken
-- image or entrypoint, a process that simply finishes.

local kit = require "kit"
local where, signal_finding, sig_evidence = kit.where, kit.signal_finding, kit.signal_evidence

-- A built-in signal's count outside kubectl describe/events/get output (probe messages there
-- say "connection refused" too, about the probe, not about a dependency of the application).
local function log_signal(ctx, name)
  local n = 0
  for _, ev in ipairs(ctx.evidence) do
    local t = ev.detailed_type
    if t ~= "kubectl_describe" and t ~= "kubectl_events" and t ~= "kubectl_get" then
      for _, s in ipairs(ev.summary.signatures or {}) do
        if s.name == name then n = n + (tonumber(s.count) or 0) end
      end
    end
  end
  return n
end

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { containers = {}, loop_findings = {}, restarts = 0, looping = {} }
  -- kubectl describe pod: the containers' state, last state and exit code
  for _, ev in ipairs(ctx.command("kubectl_describe")) do
    local c = ev.summary and ev.summary.command or {}
    for _, ct in ipairs(c.containers or {}) do
      local rc = tonumber(ct.restart_count) or 0
      local looping = ct.reason == "CrashLoopBackOff" or rc >= 3
      if looping and (ct.last_state == "Terminated" or ct.reason == "CrashLoopBackOff") then
        f.containers[#f.containers + 1] = { pod = c.pod, namespace = c.namespace, name = ct.name,
          reason = ct.reason, last_reason = ct.last_reason, exit = tonumber(ct.exit_code),
          restarts = rc, ev = ev }
      end
      f.restarts = math.max(f.restarts, rc)
    end
  end
  -- kubectl get pods rows in CrashLoopBackOff
  for _, ev in ipairs(ctx.command("kubectl_get")) do
    local c = ev.summary and ev.summary.command or {}
    for _, row in ipairs(c.rows or {}) do
      if row.status == "CrashLoopBackOff" then
        f.looping[#f.looping + 1] = { name = row.name, namespace = row.namespace, ev = ev,
                                      restarts = tonumber(row.restarts) or 0 }
        f.restarts = math.max(f.restarts, tonumber(row.restarts) or 0)
      end
    end
  end
  for _, kind in ipairs { "kubectl_describe", "kubectl_get", "kubectl_events", "journalctl" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      for _, fd in ipairs(c.findings or {}) do
        if fd.kind == "crash_loop" then
          f.loop_findings[#f.loop_findings + 1] = { ev = ev, f = fd }
        end
      end
    end
  end
  f.state = ctx.signal("k8s_crashloop")
  f.backoff = ctx.signal("crashloop_backoff_restart")
  f.systemd = ctx.signal("crashloop_systemd_start_limit")
  f.config = ctx.signal("crashloop_config_error")
  f.exec = ctx.signal("crashloop_exec_error")
  f.liveness = ctx.signal("crashloop_liveness_kill")
  f.probe = ctx.signal("k8s_probe_failed")
  f.readonly = ctx.signal("crashloop_readonly_fs")
  f.crash = ctx.signal("go_panic") + ctx.signal("python_traceback") + ctx.signal("java_exception")
    + ctx.signal("segfault") + ctx.signal("crashloop_node_crash")
  f.dependency = log_signal(ctx, "connection_refused") + log_signal(ctx, "dns_failure")
    + ctx.signal("crashloop_dependency_exit")
  f.oom = ctx.signal("k8s_oomkilled")
  -- last termination, from the first crash-looping container described
  local c = f.containers[1]
  f.last_reason = c and c.last_reason
  f.exit = c and c.exit
  if f.last_reason == "OOMKilled" then f.oom = f.oom + 1 end
  f.loop = f.state > 0 or f.backoff > 0 or f.systemd > 0 or #f.loop_findings > 0
    or #f.containers > 0 or #f.looping > 0
  cache[ctx] = f
  return f
end

-- The cause the evidence points at: key, confidence, root cause text (or nil).
local function diagnose(f)
  local ex = f.exit
  if f.oom > 0 then
    -- the oom-killed playbook is the specialist for why memory ran out: a loop of OOM kills
    -- ranks below its conclusions (it concludes at 0.7 and above)
    return "crashloop_oom", 0.65, "The container is OOMKilled (exit code 137) on every run: its "
      .. "memory limit is below what it needs, so the kubelet restarts it in a loop"
  end
  if f.exec > 0 or ex == 126 or ex == 127 or ex == 128 then
    return "crashloop_bad_image", f.exec > 0 and 0.85 or 0.7, "The container cannot start its "
      .. "entrypoint (exec format error / executable not found, exit code "
      .. tostring(ex or "?") .. "): wrong command, missing binary or an image built for another "
      .. "CPU architecture"
  end
  if f.config > 0 then
    return "crashloop_startup_config", 0.8, "The application exits at startup because its "
      .. "configuration is missing or invalid (a required variable, secret or config file), "
      .. "exit code " .. tostring(ex or "non-zero")
  end
  if f.liveness > 0 and (ex == nil or ex == 137 or ex == 143) then
    return "crashloop_liveness", 0.75, "The kubelet kills the container because its liveness "
      .. "probe fails (exit code " .. tostring(ex or "137/143") .. "), before or while the "
      .. "application is able to answer it"
  end
  if f.crash > 0 or ex == 139 or ex == 134 then
    return "crashloop_app_crash", 0.7, "The application crashes on every start (uncaught "
      .. "exception, panic or segmentation fault, exit code " .. tostring(ex or "non-zero") .. ")"
  end
  if f.dependency > 0 and ex and ex ~= 0 then
    return "crashloop_dependency", 0.65, "The application exits at startup because a required "
      .. "dependency refuses connections or does not resolve, instead of retrying"
  end
  if f.last_reason == "Completed" or ex == 0 then
    return "crashloop_completes", 0.75, "The container's process finishes (exit code 0): a "
      .. "command that is not long-running is used as a Deployment container"
  end
end

return {
  id = "crashloopbackoff",
  title = "Pod in CrashLoopBackOff",
  version = "1.0.0",
  description = "A container keeps exiting and the kubelet restarts it with a growing back-off. "
    .. "Finds why it exits from the last termination (reason, exit code), the previous "
    .. "instance's log and the events: bad configuration, dependency down at startup, crash, "
    .. "OOMKilled, liveness kills, broken image or a process that just finishes.",
  tags = { "kubernetes", "crashloopbackoff", "restart", "exit-code", "liveness-probe", "pod" },
  category = "config",
  kb = "CrashLoopBackOff back-off restarting failed container exit code previous logs",

  signals = {
    { name = "crashloop_backoff_restart", severity = "error",
      pattern = [[Back-off restarting failed container]],
      description = "kubelet back-off after a container exited" },
    { name = "crashloop_liveness_kill", severity = "error",
      pattern = [[failed (liveness|startup) probe, will be restarted]],
      description = "the kubelet killed the container because its probe failed" },
    { name = "crashloop_exec_error", severity = "critical",
      pattern = [[exec format error|executable file not found in \$PATH|exec: "[^"]*": stat ]]
        .. [[|OCI runtime create failed|ContainerCannotRun|StartError]],
      description = "the entrypoint cannot be executed (wrong architecture, missing binary)" },
    { name = "crashloop_config_error", flags = "i", severity = "error",
      pattern = [[(environment variable|env var|config(uration)?|setting|property|secret)]]
        .. [[[^\n]{0,80}(not set|is missing|missing|is required|must be set|undefined)]]
        .. [[|missing required|KeyError: '[A-Z][A-Z0-9_]{2,}'|(secret|configmap) "[^"]+" not found]]
        .. [[|invalid configuration|failed to (load|parse|read) config]],
      description = "the application reports missing or invalid configuration" },
    { name = "crashloop_dependency_exit", flags = "i", severity = "error",
      pattern = [[(unable|failed|could not) to (connect|reach)[^\n]{0,80}(exiting|shutting down|]]
        .. [[giving up)|startup (check|probe) failed[^\n]{0,80}(database|redis|kafka|upstream)]],
      description = "the application gives up at startup because a dependency is unreachable" },
    { name = "crashloop_node_crash", severity = "error",
      pattern = [[UnhandledPromiseRejection|^Uncaught [A-Za-z]*Error]]
        .. [[|^Node\.js v[0-9]+\.[0-9]+\.[0-9]+$]],
      description = "a Node.js process died on an uncaught error" },
    { name = "crashloop_readonly_fs", severity = "error",
      pattern = [[Read-only file system|EROFS]],
      description = "writes refused: read-only root filesystem" },
    { name = "crashloop_systemd_start_limit", severity = "error",
      pattern = [[Start request repeated too quickly|start-limit-hit]],
      description = "systemd gave up restarting a unit that keeps failing (the same loop)" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.state > 0 then
      score = 0.55
      reasons[#reasons + 1] = "CrashLoopBackOff in " .. where(ctx, "k8s_crashloop")
    end
    if f.backoff > 0 then
      score = score > 0 and score + 0.15 or 0.5
      reasons[#reasons + 1] = "back-off restarts in " .. where(ctx, "crashloop_backoff_restart")
    end
    if f.systemd > 0 then
      score = score > 0 and score + 0.1 or 0.45
      reasons[#reasons + 1] = "systemd start limit hit in "
        .. where(ctx, "crashloop_systemd_start_limit")
    end
    if score == 0 and #f.loop_findings > 0 then
      score = 0.45
      reasons[#reasons + 1] = tostring(f.loop_findings[1].f.message)
    end
    if f.restarts >= 5 then
      score = score + (score > 0 and 0.1 or 0.25)
      reasons[#reasons + 1] = string.format("restart count %d", f.restarts)
    end
    if score > 0 then
      local cause = diagnose(f)
      if cause then
        score = score + 0.15
        reasons[#reasons + 1] = "exit cause: " .. cause
      end
    end
    if ctx.said("crashloop", "crash loop", "keeps restarting", "restart loop", "back-off",
                "backoff", "keeps crashing") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports restarts"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      for _, c in ipairs(f.containers) do
        out:finding { text = string.format("Pod %s container %s: %s, last termination %s, exit "
          .. "code %s, %d restarts", tostring(c.pod), tostring(c.name), tostring(c.reason or
          "restarting"), tostring(c.last_reason or "?"), tostring(c.exit or "?"), c.restarts),
          evidence_id = c.ev.id, filename = c.ev.filename }
      end
      for _, r in ipairs(f.looping) do
        out:finding { text = string.format("%s/%s is in CrashLoopBackOff (%d restarts)",
          tostring(r.namespace or "-"), tostring(r.name), r.restarts), evidence_id = r.ev.id,
          filename = r.ev.filename }
      end
      signal_finding(ctx, out, "crashloop_backoff_restart", "Back-off restarting failed container")
      signal_finding(ctx, out, "crashloop_systemd_start_limit", "systemd start limit hit")
      signal_finding(ctx, out, "crashloop_config_error", "Missing or invalid configuration")
      signal_finding(ctx, out, "crashloop_exec_error", "Entrypoint cannot be executed")
      signal_finding(ctx, out, "crashloop_liveness_kill", "Killed by a failing probe")
      signal_finding(ctx, out, "k8s_probe_failed", "Probe failures")
      signal_finding(ctx, out, "k8s_oomkilled", "OOMKilled")
      signal_finding(ctx, out, "go_panic", "Go panic")
      signal_finding(ctx, out, "python_traceback", "Python traceback")
      signal_finding(ctx, out, "java_exception", "Uncaught Java exception")
      signal_finding(ctx, out, "crashloop_node_crash", "Uncaught Node.js error")
      signal_finding(ctx, out, "segfault", "Segmentation fault")
      signal_finding(ctx, out, "crashloop_dependency_exit", "Gave up on a dependency at startup")
      signal_finding(ctx, out, "connection_refused", "Connections refused")
      signal_finding(ctx, out, "dns_failure", "Name resolution failures")
      signal_finding(ctx, out, "crashloop_readonly_fs", "Read-only file system")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local key, conf = diagnose(f)
      local function lk(k, base) return k == key and math.max(conf, base) or base end
      local ex = f.exit
      out:hypothesis { key = "crashloop_startup_config", category = "config",
        likelihood = lk("crashloop_startup_config", (ex == 1 and f.config == 0) and 0.35 or 0.2),
        statement = "The application exits at startup on missing or invalid configuration "
          .. "(environment variable, Secret, ConfigMap, config file)" }
      out:hypothesis { key = "crashloop_dependency", category = "external",
        likelihood = lk("crashloop_dependency", f.dependency > 0 and 0.4 or 0.15),
        statement = "A dependency required at startup (database, broker, API) is unreachable "
          .. "and the application exits instead of retrying" }
      out:hypothesis { key = "crashloop_app_crash", category = "code",
        likelihood = lk("crashloop_app_crash", f.crash > 0 and 0.45 or 0.2),
        statement = "The application crashes (uncaught exception, panic, segfault), often "
          .. "since a new release" }
      out:hypothesis { key = "crashloop_oom", category = "config",
        likelihood = lk("crashloop_oom", 0.1),
        statement = "The container is OOMKilled at its memory limit (exit code 137)" }
      out:hypothesis { key = "crashloop_liveness", category = "config",
        likelihood = lk("crashloop_liveness", (f.probe > 0 and f.oom == 0) and 0.35 or 0.1),
        statement = "The liveness probe kills a container that is slow to start or checks a "
          .. "dependency (no startupProbe, initialDelaySeconds too short)" }
      out:hypothesis { key = "crashloop_bad_image", category = "config",
        likelihood = lk("crashloop_bad_image", 0.1),
        statement = "The image or entrypoint is broken: wrong command, missing binary, image "
          .. "built for another CPU architecture" }
      if f.last_reason == "Completed" or ex == 0 then
        out:hypothesis { key = "crashloop_completes", category = "config",
          likelihood = lk("crashloop_completes", 0.5),
          statement = "The container's process is not long-running: it finishes and the "
            .. "Deployment restarts it" }
      end

      for _, c in ipairs(f.containers) do
        local s = string.format("%s last terminated: %s, exit code %s", tostring(c.name),
          tostring(c.last_reason or "?"), tostring(c.exit or "?"))
        if c.last_reason == "OOMKilled" then
          out:evidence { hypothesis = "crashloop_oom", stance = "for", evidence_id = c.ev.id,
                         summary = s }
        else
          out:evidence { hypothesis = "crashloop_oom", stance = "against",
                         evidence_id = c.ev.id, summary = s .. " (not OOMKilled)" }
        end
        if c.exit == 1 then
          out:evidence { hypothesis = "crashloop_startup_config", stance = "for",
            evidence_id = c.ev.id, summary = "exit code 1: the application chose to exit" }
        end
      end
      sig_evidence(ctx, out, "crashloop_startup_config", "for", "crashloop_config_error",
        "the log names missing or invalid configuration")
      sig_evidence(ctx, out, "crashloop_bad_image", "for", "crashloop_exec_error",
        "the entrypoint cannot be executed")
      sig_evidence(ctx, out, "crashloop_liveness", "for", "crashloop_liveness_kill",
        "the kubelet restarts it after liveness failures")
      sig_evidence(ctx, out, "crashloop_dependency", "for", "crashloop_dependency_exit",
        "gives up on a dependency at startup")
      if log_signal(ctx, "connection_refused") > 0 then
        sig_evidence(ctx, out, "crashloop_dependency", "for", "connection_refused",
          "connections refused")
      end
      for _, n in ipairs { "go_panic", "python_traceback", "java_exception", "segfault",
                           "crashloop_node_crash" } do
        sig_evidence(ctx, out, "crashloop_app_crash", "for", n, n)
      end
      sig_evidence(ctx, out, "crashloop_oom", "for", "k8s_oomkilled", "OOMKilled")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("CrashLoopBackOff exit code previous logs liveness probe", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      local c = f.containers[1] or f.looping[1]
      local pod = c and (c.pod or c.name) or "<pod>"
      local ns = c and c.namespace or "<namespace>"
      if ns == "" then ns = "<namespace>" end
      if #f.containers == 0 then
        out:ask { label = "Describe the crashing pod", hypothesis = "crashloop_startup_config",
          command = "kubectl describe pod " .. pod .. " -n " .. ns,
          why = "Last State: the termination reason and exit code say why it exits" }
      end
      local logs = #ctx.command("kubectl_logs") > 0 or f.config + f.crash + f.dependency > 0
      if diagnose(f) == "crashloop_oom" then
        out:ask { label = "Memory use against the limit", hypothesis = "crashloop_oom",
          command = "kubectl top pod " .. pod .. " -n " .. ns .. " --containers; kubectl get pod "
            .. pod .. " -n " .. ns .. " -o jsonpath='{.spec.containers[*].resources}'",
          why = "an OOM-killed container leaves no message in its log; compare its working "
            .. "set with the limit" }
      elseif not logs then
        out:ask { label = "Log of the crashed instance", hypothesis = "crashloop_app_crash",
          command = "kubectl logs " .. pod .. " -n " .. ns .. " --previous --tail=100",
          why = "the last lines before the exit name the missing variable, the panic or the "
            .. "failed connection; without --previous you see the new, short-lived instance" }
      end
      if #ctx.command("kubectl_events") == 0 then
        out:ask { label = "Events of the pod", hypothesis = "crashloop_liveness",
          command = "kubectl get events -n " .. ns .. " --field-selector involvedObject.name="
            .. pod .. " --sort-by=.lastTimestamp",
          why = "probe kills, OOM kills and back-off, in order" }
      end
      out:ask { label = "Did it start with a rollout?", hypothesis = "crashloop_app_crash",
        command = "kubectl rollout history deploy/<app> -n " .. ns,
        why = "a crash loop that began with a new revision points at that change" }
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if not f.loop then return end
      local key, conf, text = diagnose(f)
      if key then
        out:conclude { hypothesis = key, confidence = conf, root_cause = text,
                       severity = "high" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local key = diagnose(f)
      out:mitigate { title = "Roll back if it started with a rollout",
        command = "kubectl -n <namespace> rollout undo deploy/<app>",
        description = "The quickest way back to a working revision",
        risk = "low", undo = "kubectl -n <namespace> rollout undo deploy/<app>",
        verify = "kubectl -n <namespace> rollout status deploy/<app>" }
      if key == "crashloop_startup_config" then
        out:mitigate { title = "Restore the missing configuration, then restart",
          command = "kubectl -n <namespace> get deploy <app> -o yaml | grep -A20 'env:'; "
            .. "kubectl -n <namespace> rollout restart deploy/<app>",
          description = "Recreate the Secret/ConfigMap key or environment variable the log names",
          risk = "low", undo = "revert the Secret/ConfigMap change" }
        out:solve { title = "Validate configuration before it ships",
          description = "Schema-check ConfigMaps and required variables in CI; log one clear "
            .. "fatal message naming the missing setting", risk = "low", undo = "none" }
      elseif key == "crashloop_liveness" then
        out:mitigate { title = "Give the application time to start",
          command = "kubectl -n <namespace> patch deploy <app> --type=json -p '[{\"op\":"
            .. "\"replace\",\"path\":\"/spec/template/spec/containers/0/livenessProbe/"
            .. "failureThreshold\",\"value\":10}]'",
          description = "Or add a startupProbe; liveness must check only the process itself",
          risk = "low", undo = "restore the previous probe settings" }
      elseif key == "crashloop_oom" then
        out:mitigate { title = "Raise the memory limit",
          command = "kubectl -n <namespace> set resources deploy/<app> --limits=memory=<1.5x>",
          description = "See the oom-killed playbook for sizing", risk = "low",
          undo = "kubectl -n <namespace> rollout undo deploy/<app>" }
      elseif key == "crashloop_bad_image" then
        out:solve { title = "Build for the node architecture",
          command = "docker buildx build --platform linux/amd64,linux/arm64 -t <image> --push .",
          description = "Or pin nodeSelector kubernetes.io/arch; check the command/args",
          risk = "low", undo = "push the previous tag" }
      elseif key == "crashloop_dependency" then
        out:solve { title = "Retry dependencies at startup",
          description = "Retry with back-off instead of exiting; readiness, not liveness, "
            .. "should reflect dependencies", risk = "low", undo = "revert the change" }
      end
      out:solve { title = "Progressive rollouts that stop a crashing version",
        description = "maxUnavailable: 0 and a readiness gate so a crashing revision never "
          .. "replaces healthy pods; alert on restart rate", risk = "low", undo = "none" }
    end },
  },
}
