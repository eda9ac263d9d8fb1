-- File descriptor exhaustion: "Too many open files" (kb/file-descriptor-exhaustion.md).
--
-- Evidence it reads: EMFILE / ENFILE errors in any runtime's words (Go's lower-case "accept4:
-- too many open files", Java SocketException, nginx "(24: Too many open files)", Node EMFILE),
-- the process's limits (/proc/PID/limits, ulimit -a, systemd LimitNOFILE), ss/netstat output
-- (CLOSE_WAIT build-up with the owning program), process_open_fds / process_max_fds metrics.
-- Competing explanations: the limit is too low for the load, a descriptor leak, sockets stuck in
-- CLOSE_WAIT because the application never closes them, the system-wide file-max.

local kit = require "kit"
local where, signal_finding, sig_evidence = kit.where, kit.signal_finding, kit.signal_evidence
local is_ramp = kit.is_ramp

local cache = setmetatable({}, { __mode = "k" })

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = { close_wait = nil, open_max = nil, max_fds = nil, ramp = nil, limit = nil }
  -- ss / netstat: CLOSE_WAIT count and owner
  for _, kind in ipairs { "ss", "netstat" } do
    for _, ev in ipairs(ctx.command(kind)) do
      local c = ev.summary and ev.summary.command or {}
      local n = c.states and tonumber(c.states.CLOSE_WAIT) or 0
      if n > 0 and (not f.close_wait or n > f.close_wait.n) then
        local owner, most = nil, 0
        for prog, k in pairs(c.close_wait_by_program or {}) do
          k = tonumber(k) or 0
          if k > most or (k == most and owner and prog < owner) then owner, most = prog, k end
        end
        local line
        for _, fd in ipairs(c.findings or {}) do
          if fd.kind == "close_wait" then line = fd.line end
        end
        f.close_wait = { n = n, owner = owner, ev = ev, line = line }
      end
    end
  end
  -- process_open_fds / process_max_fds
  for _, ev in ipairs(ctx.of_type("metrics")) do
    for _, s in ipairs(ev.summary.metrics and ev.summary.metrics.series or {}) do
      local name = tostring(s.name or "")
      if name == "process_open_fds" then
        local mx = tonumber(s.max)
        if mx and (not f.open_max or mx > f.open_max) then f.open_max, f.open_ev = mx, ev end
        if is_ramp(s) then f.ramp = { min = tonumber(s.min), max = mx, ev = ev } end
      elseif name == "process_max_fds" then
        f.max_fds = tonumber(s.max)
      end
    end
  end
  -- /proc/PID/limits or ulimit -a seen as text: the templates keep one example line each
  for _, ev in ipairs(ctx.evidence) do
    for _, t in ipairs(ev.summary.logs and ev.summary.logs.templates or {}) do
      local ex = tostring(t.example or "")
      local soft, hard = ex:match("^Max open files%s+(%d+)%s+(%d+)")
      if not soft then soft = ex:match("^open files%s+%(%-n%)%s+(%d+)") end
      if not soft then soft = ex:match("LimitNOFILE=(%d+)") end
      if soft then
        f.limit = { soft = tonumber(soft), hard = tonumber(hard), ev = ev,
                    line = tonumber(t.first_line) }
      end
    end
  end
  if not f.limit and f.max_fds then f.limit = { soft = f.max_fds, ev = f.open_ev } end
  f.emfile = math.max(ctx.signal("too_many_open_files"), ctx.signal("fd_too_many_open_files"))
  f.enfile = ctx.signal("fd_system_limit")
  f.accept = ctx.signal("fd_accept_failure")
  f.low_limit = f.limit and f.limit.soft and f.limit.soft <= 4096
  f.near_limit = f.open_max and f.max_fds and f.max_fds > 0 and f.open_max / f.max_fds >= 0.8
  f.exhausted = f.emfile > 0 or f.enfile > 0 or f.near_limit
  cache[ctx] = f
  return f
end

-- key, confidence, root cause.
local function diagnose(f)
  if not f.exhausted then return nil end
  if f.enfile > 0 then
    return "fd_system_wide", 0.8, "The whole system reached fs.file-max (ENFILE): every "
      .. "process fails to open files and sockets"
  end
  if f.close_wait and f.close_wait.n >= 20 then
    return "fd_close_wait", 0.75, string.format("%d sockets are stuck in CLOSE_WAIT%s: the "
      .. "application never closes connections the peer closed, and they use up its file "
      .. "descriptors", f.close_wait.n, f.close_wait.owner and (" (owned by "
      .. f.close_wait.owner .. ")") or "")
  end
  if f.ramp then
    return "fd_leak", 0.75, string.format("Open descriptors climb steadily from %g to %g: a "
      .. "descriptor leak (files or sockets opened and never closed) exhausts the limit",
      f.ramp.min, f.ramp.max)
  end
  if f.low_limit then
    return "fd_limit_too_low", 0.75, string.format("The process runs with a soft limit of %d "
      .. "open files, too low for its connections; new accepts and opens fail with EMFILE",
      f.limit.soft)
  end
end

local STATEMENTS = {
  fd_limit_too_low = "The open-files limit is too low for the load (the 1024 default, a "
    .. "systemd unit without LimitNOFILE)",
  fd_leak = "A descriptor leak: files or sockets opened and never closed (error paths, an HTTP "
    .. "client per request, response bodies not closed)",
  fd_close_wait = "Sockets pile up in CLOSE_WAIT: the peer closed, the application never closes "
    .. "its side",
  fd_system_wide = "The system-wide limit fs.file-max is reached (ENFILE)",
}

return {
  id = "file-descriptor-exhaustion",
  title = "File descriptor exhaustion (too many open files)",
  version = "1.0.0",
  description = "A process reached its open-files limit (EMFILE) or the system reached "
    .. "file-max (ENFILE): new connections and opens fail. Reads the errors, the limits, "
    .. "CLOSE_WAIT build-up and fd metrics to tell a low limit, a leak, unclosed sockets and a "
    .. "system-wide limit apart.",
  tags = { "file-descriptors", "emfile", "ulimit", "nofile", "sockets", "close-wait" },
  category = "config",
  kb = "too many open files file descriptors ulimit nofile EMFILE CLOSE_WAIT",

  signals = {
    { name = "fd_too_many_open_files", flags = "i", severity = "error",
      pattern = [[too many open files]],
      description = "EMFILE in any case (Go and Node write it in lower case)" },
    { name = "fd_system_limit", severity = "critical",
      pattern = [[Too many open files in system|ENFILE|file-max limit [0-9]+ reached]],
      description = "the system-wide descriptor limit (fs.file-max) was reached" },
    { name = "fd_accept_failure", flags = "i", severity = "error",
      pattern = [[accept4?(\(\) failed \(24|: too many open files)|socket\(\) failed \(24]],
      description = "the server cannot accept new connections for lack of descriptors" },
    { name = "fd_limits_shown", severity = "info",
      pattern = [[^Max open files +[0-9]+ +[0-9]+|^open files +\(-n\) [0-9]+|LimitNOFILE=]],
      description = "the process's open-files limit is in the evidence" },
    { name = "fd_metric", severity = "info",
      pattern = [[^process_(open|max)_fds]],
      description = "process_open_fds / process_max_fds metrics are in the evidence" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    if f.enfile > 0 then
      score = 0.6
      reasons[#reasons + 1] = "ENFILE (system-wide) in " .. where(ctx, "fd_system_limit")
    end
    if f.emfile > 0 then
      score = score > 0 and score + 0.1 or 0.55
      local n = ctx.signal("fd_too_many_open_files") >= ctx.signal("too_many_open_files")
        and "fd_too_many_open_files" or "too_many_open_files"
      reasons[#reasons + 1] = "Too many open files in " .. where(ctx, n)
    end
    if f.accept > 0 and score > 0 then
      score = score + 0.1
      reasons[#reasons + 1] = "accept() fails in " .. where(ctx, "fd_accept_failure")
    end
    if f.near_limit then
      score = score + (score > 0 and 0.1 or 0.5)
      reasons[#reasons + 1] = string.format("process_open_fds %g of process_max_fds %g",
                                            f.open_max, f.max_fds)
    end
    local key = score > 0 and diagnose(f)
    if key then
      score = score + 0.15
      reasons[#reasons + 1] = "cause seen: " .. key
    end
    if f.close_wait and f.close_wait.n >= 20 and score == 0 then
      score = 0.15    -- CLOSE_WAIT alone is a leak in the making, not an exhaustion yet
      reasons[#reasons + 1] = string.format("%d CLOSE_WAIT sockets", f.close_wait.n)
    end
    if ctx.said("too many open files", "file descriptor", "emfile", "ulimit", "nofile",
                "open files") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports descriptor exhaustion"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      if not signal_finding(ctx, out, "fd_too_many_open_files", "Too many open files") then
        signal_finding(ctx, out, "too_many_open_files", "Too many open files (EMFILE)")
      end
      signal_finding(ctx, out, "fd_system_limit", "System-wide file limit reached (ENFILE)")
      signal_finding(ctx, out, "fd_accept_failure", "accept()/socket() failed for lack of fds")
      if f.limit then
        out:finding { text = string.format("Open-files soft limit: %s%s", tostring(f.limit.soft),
          f.limit.hard and (" (hard " .. f.limit.hard .. ")") or ""),
          evidence_id = f.limit.ev and f.limit.ev.id, filename = f.limit.ev
          and f.limit.ev.filename, line = f.limit.line }
      end
      if f.close_wait then
        out:finding { text = string.format("%d sockets in CLOSE_WAIT%s", f.close_wait.n,
          f.close_wait.owner and (", most owned by " .. f.close_wait.owner) or ""),
          evidence_id = f.close_wait.ev.id, filename = f.close_wait.ev.filename,
          line = f.close_wait.line }
      end
      if f.open_max then
        out:finding { text = string.format("process_open_fds up to %g%s", f.open_max,
          f.max_fds and (" of " .. f.max_fds) or ""), evidence_id = f.open_ev.id,
          filename = f.open_ev.filename }
      end
      if f.ramp then
        out:finding { text = string.format("Open descriptors climb steadily from %g to %g",
          f.ramp.min, f.ramp.max), evidence_id = f.ramp.ev.id, filename = f.ramp.ev.filename }
      end
      signal_finding(ctx, out, "connection_refused", "Connections refused (often new clients "
        .. "only, while descriptors are exhausted)")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local key, conf = diagnose(f)
      local lk = { fd_limit_too_low = f.low_limit and 0.5 or 0.3, fd_leak = 0.3,
                   fd_close_wait = (f.close_wait and f.close_wait.n >= 20) and 0.5 or 0.15,
                   fd_system_wide = 0.1 }
      if f.limit and f.limit.soft and f.limit.soft >= 65536 then
        lk.fd_limit_too_low, lk.fd_leak = 0.15, 0.5
      end
      if key then lk[key] = conf end
      for _, k in ipairs { "fd_limit_too_low", "fd_leak", "fd_close_wait", "fd_system_wide" } do
        out:hypothesis { key = k, statement = STATEMENTS[k], likelihood = lk[k],
          category = (k == "fd_leak" or k == "fd_close_wait") and "code" or "config" }
      end
      if f.limit and f.limit.soft then
        out:evidence { hypothesis = "fd_limit_too_low",
          stance = f.low_limit and "for" or "against",
          evidence_id = f.limit.ev and f.limit.ev.id, line = f.limit.line,
          summary = "soft limit " .. tostring(f.limit.soft) .. " open files" }
      end
      if f.close_wait then
        out:evidence { hypothesis = "fd_close_wait", stance = f.close_wait.n >= 20 and "for"
          or "against", evidence_id = f.close_wait.ev.id, line = f.close_wait.line,
          summary = string.format("%d CLOSE_WAIT sockets", f.close_wait.n) }
      end
      if f.ramp then
        out:evidence { hypothesis = "fd_leak", stance = "for", evidence_id = f.ramp.ev.id,
          summary = string.format("open fds ramp from %g to %g", f.ramp.min, f.ramp.max) }
      end
      sig_evidence(ctx, out, "fd_system_wide", "for", "fd_system_limit", "ENFILE")
      if f.emfile > 0 and f.enfile == 0 then
        out:evidence { hypothesis = "fd_system_wide", stance = "against",
          summary = "the errors are per process (EMFILE), not system wide (ENFILE)" }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("too many open files file descriptor limit leak", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      if not f.limit then
        out:ask { label = "The limits the process really has", hypothesis = "fd_limit_too_low",
          command = "grep 'open files' /proc/<pid>/limits",
          why = "the soft limit applies, not the shell's ulimit" }
      end
      out:ask { label = "Descriptors in use now", hypothesis = "fd_leak",
        command = "ls /proc/<pid>/fd | wc -l",
        why = "close to the soft limit: exhausted; compare again in an hour at the same load" }
      out:ask { label = "What the descriptors are", hypothesis = "fd_leak",
        command = "sudo lsof -nP -p <pid> | awk '{print $5}' | sort | uniq -c | sort -n; "
          .. "sudo lsof -nP -p <pid> | awk '{print $9}' | sort | uniq -c | sort -n | tail",
        why = "by type (REG, IPv4, sock) and the most repeated targets" }
      if not f.close_wait then
        out:ask { label = "TCP states of its sockets", hypothesis = "fd_close_wait",
          command = "ss -tanp | grep 'pid=<pid>,' | awk '{print $1}' | sort | uniq -c",
          why = "thousands of CLOSE_WAIT: the application does not close sockets" }
      end
      if f.enfile == 0 then
        out:ask { label = "System-wide usage", hypothesis = "fd_system_wide",
          command = "cat /proc/sys/fs/file-nr",
          why = "allocated vs maximum for the whole system" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local key, conf, text = diagnose(facts(ctx))
      if key then
        out:conclude { hypothesis = key, confidence = conf, root_cause = text,
                       severity = "high" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local f = facts(ctx)
      local key = diagnose(f)
      out:mitigate { title = "Raise the limit of the running process",
        command = "sudo prlimit --pid <pid> --nofile=65536:65536",
        description = "No restart needed (Linux, util-linux); buys time for a leak",
        risk = "low", undo = "sudo prlimit --pid <pid> --nofile=<old soft>:<old hard>",
        verify = "grep 'open files' /proc/<pid>/limits" }
      out:mitigate { title = "Restart the instance to release descriptors",
        command = "sudo systemctl restart <service>   # or kubectl rollout restart",
        description = "Take it out of rotation first; a leak will come back", risk = "medium",
        undo = "none needed" }
      if key == "fd_system_wide" then
        out:mitigate { title = "Raise fs.file-max", command = "sudo sysctl -w fs.file-max=2097152",
          risk = "low", undo = "sudo sysctl -w fs.file-max=<previous>" }
      end
      out:solve { title = "Set the limit where the service starts",
        command = "sudo systemctl edit <service>   # [Service] LimitNOFILE=65536",
        description = "Then systemctl daemon-reload and restart; worker_rlimit_nofile for "
          .. "nginx; --ulimit nofile=65536:65536 for containers",
        risk = "low", undo = "remove the override and restart" }
      if key == "fd_leak" or key == "fd_close_wait" or not key then
        out:solve { title = "Close what is opened",
          description = "Close in finally/defer/with; reuse HTTP clients; close response "
            .. "bodies (Go: defer resp.Body.Close()); close sockets on read EOF and set idle "
            .. "timeouts", risk = "low", undo = "revert the change",
          verify = "open fds flat under steady traffic; CLOSE_WAIT near zero" }
      end
    end },
  },
}
