-- playbooks/lib/kit.lua: small helpers for playbook authors. local kit = require "kit" (a
-- module's name is its path under playbooks/lib/).
-- Everything here is plain Lua over ctx and out (docs/PLAYBOOKS.md); use what reads well.
local kit = {}

-- Signals ----------------------------------------------------------------------------------------

--- The ctx.signals entry of a signal that fired (count > 0), else nil.
function kit.fired(ctx, name)
  local s = ctx.signals[name]
  if s and (s.count or 0) > 0 then return s end
end

--- The total count of the named signals (ctx.signal of each), given as a list or as arguments:
-- kit.count(ctx, { "disk_full", "disk_inodes_exhausted" }), kit.count(ctx, "a", "b").
function kit.count(ctx, names, ...)
  if type(names) ~= "table" then names = { names, ... } end
  local n = 0
  for _, name in ipairs(names) do n = n + ctx.signal(name) end
  return n
end

--- Where a signal fired, short: "app.log line 12, 3 lines"; nil when it did not fire.
function kit.where(ctx, name)
  local s = kit.fired(ctx, name)
  if not s then return nil end
  return string.format("%s line %s, %d line%s", s.filename or "evidence",
    tostring(s.first_line or "?"), s.count, s.count == 1 and "" or "s")
end

--- Where a fired signal's entry (kit.fired) points, with its line range:
-- "postgresql.log line 12-80 (34 lines)", "... (40 lines in all files)" when the count (summed
-- over every evidence item) is more than the first item's range can hold.
function kit.span(s)
  local at = (s.filename or "evidence") .. " line " .. tostring(s.first_line or "?")
  local span = 1
  if s.first_line and s.last_line and s.last_line ~= s.first_line then
    at, span = at .. "-" .. s.last_line, s.last_line - s.first_line + 1
  end
  return at .. " (" .. s.count .. (s.count == 1 and " line" or " lines")
    .. (s.count > span and " in all files)" or ")")
end

-- Findings and evidence from signals -------------------------------------------------------------

--- One finding per signal present, with its file and lines; returns the total count.
-- label (optional): signal name -> human wording ("No space left on device").
function kit.signal_findings(ctx, out, names, label)
  local total = 0
  for _, name in ipairs(names) do
    local s = ctx.signals[name]
    if s and s.count > 0 then
      total = total + s.count
      local what = label and label[name] or name
      local where = s.filename and (" in " .. s.filename) or ""
      local lines = s.first_line and (s.first_line == s.last_line
        and string.format(" (line %d)", s.first_line)
        or string.format(" (lines %d-%d)", s.first_line, s.last_line)) or ""
      out:finding { text = string.format("%s: %d line%s%s%s", what, s.count,
                                         s.count == 1 and "" or "s", where, lines),
                    evidence_id = s.evidence_id, filename = s.filename, line = s.first_line,
                    severity = s.severity }
    end
  end
  return total
end

--- A finding "text (app.log line 12, 3 lines)" (kit.where) pointing at the first line where a
-- signal fired; true, or false when it did not fire.
function kit.signal_finding(ctx, out, name, text)
  local s = kit.fired(ctx, name)
  if not s then return false end
  out:finding { text = text .. " (" .. kit.where(ctx, name) .. ")", evidence_id = s.evidence_id,
                filename = s.filename, line = s.first_line }
  return true
end

--- A finding "what: postgresql.log line 12-80 (34 lines)" (kit.span) with the signal's
-- severity, pointing at its first line; returns the signal's count, 0 when it did not fire.
function kit.span_finding(ctx, out, name, what)
  local s = kit.fired(ctx, name)
  if not s then return 0 end
  out:finding { text = what .. ": " .. kit.span(s), evidence_id = s.evidence_id,
                filename = s.filename, line = s.first_line, severity = s.severity }
  return s.count
end

--- out:evidence for or against (stance "for" / "against") hypothesis key when a signal fired:
-- "summary (app.log line 12, 3 lines)" (kit.where), at its first line; true, or false when it
-- did not fire.
function kit.signal_evidence(ctx, out, key, stance, name, summary)
  local s = kit.fired(ctx, name)
  if not s then return false end
  out:evidence { hypothesis = key, stance = stance, evidence_id = s.evidence_id,
                 line = s.first_line, summary = summary .. " (" .. kit.where(ctx, name) .. ")" }
  return true
end

--- out:evidence for or against hypothesis key when a signal fired: "text (postgresql.log line
-- 12-80 (34 lines))" (kit.span), at its first line. Nothing when it did not fire.
function kit.span_evidence(ctx, out, key, stance, name, text)
  local s = kit.fired(ctx, name)
  if s then
    out:evidence { hypothesis = key, stance = stance, evidence_id = s.evidence_id,
                   line = s.first_line, summary = text .. " (" .. kit.span(s) .. ")" }
  end
end

-- Scores -----------------------------------------------------------------------------------------

--- Combines independent pieces of evidence into one score: 1 - (1 - w1)(1 - w2)...
-- Each weight is 0..1; the result stays below 1 unless one weight is 1.
function kit.combine(weights)
  local miss = 1.0
  for _, w in ipairs(weights) do
    if w > 0 then miss = miss * (1 - math.min(w, 1)) end
  end
  return 1 - miss
end

--- A reasons list and a weights list built together:
--   local ev = kit.evidence()
--   ev:add(0.6, "ENOSPC in app.log (12 lines)")  -- when the evidence is there
--   return ev:score(), ev.reasons
function kit.evidence()
  local e = { weights = {}, reasons = {} }
  function e.add(self, weight, reason)
    self.weights[#self.weights + 1] = weight
    if reason then self.reasons[#self.reasons + 1] = reason end
  end
  function e.score(self) return kit.combine(self.weights) end
  return e
end

--- Saturation: n / (n + k), from 0 (n = 0) towards 1, one half at n == k. Turns a count into a
-- weight (sat(lines, 10): 1 line 0.09, 10 lines 0.5, 90 lines 0.9).
function kit.sat(n, k) return n / (n + k) end

-- Evidence facts ---------------------------------------------------------------------------------

--- Filesystems at or above min_pct in df output (df -h, df -i: the analysis parses them into
-- summary.command.filesystems): { {pct, mount, filesystem, size, used, avail, filename,
-- evidence_id}, ... }, fullest first.
function kit.full_filesystems(ctx, min_pct)
  local out = {}
  for _, ev in ipairs(ctx.command("df")) do
    local cmd = ev.summary.command
    for _, fs in ipairs(cmd and cmd.filesystems or {}) do
      local pct = tonumber(fs.use_pct)
      pct = pct and (math.tointeger(pct) or pct)
      if pct and pct >= min_pct then
        out[#out + 1] = { pct = pct, mount = fs.mount, filesystem = fs.filesystem,
                          size = fs.size, used = fs.used, avail = fs.avail,
                          filename = ev.filename, evidence_id = ev.id }
      end
    end
  end
  table.sort(out, function(a, b) return a.pct > b.pct end)
  return out
end

--- True when a metric series (an entry of summary.metrics.series: min, max, stddev, count,
-- anomaly_count) climbs steadily: at least 10 points, a range of at least 30 % of the minimum
-- (0.3 when the minimum is below 1), no outliers, and a standard deviation 0.2 to 0.4 of the
-- range (about 0.29 for a straight ramp).
function kit.is_ramp(s)
  local mn, mx, sd = tonumber(s.min), tonumber(s.max), tonumber(s.stddev)
  if not (mn and mx and sd) or (tonumber(s.count) or 0) < 10 or mx <= mn then return false end
  local range = mx - mn
  return range >= 0.3 * math.max(mn, 1) and (tonumber(s.anomaly_count) or 0) == 0
    and sd / range >= 0.2 and sd / range <= 0.4
end

--- A metric series' labels as one sorted text, "container=api,pod=api-7d9f": a key to pair
-- the series of the same labels; "" when there are none.
function kit.label_key(labels)
  local parts = {}
  for k, v in pairs(labels or {}) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
  table.sort(parts)
  return table.concat(parts, ",")
end

-- The endpoint of a failing TLS connection, from the lines the analysis kept (log template
-- examples): the host and port of an openssl -connect, a curl, an https:// URL or an nginx
-- upstream.
local TLS_TARGET_PATTERNS = {
  "%-connect ([%w%.%-]+):(%d+)", "Connected to ([%w%.%-]+) %(", "https://([%w%.%-]+):(%d+)",
  "https://([%w%.%-]+%a)[/\"]", "Trying ([%d%.]+):(%d+)",
}

--- host, port of the endpoint a TLS failure is about (port "443" when none is given), from the
-- log lines the analysis kept; "<host>", "443" when none is found.
function kit.tls_target(ctx)
  for _, p in ipairs(TLS_TARGET_PATTERNS) do
    for _, e in ipairs(ctx.evidence) do
      local logs = e.summary.logs
      if type(logs) == "table" and type(logs.templates) == "table" then
        for _, t in ipairs(logs.templates) do
          local host, port = (type(t.example) == "string" and t.example or ""):match(p)
          if host then return host, port or "443" end
        end
      end
    end
  end
  return "<host>", "443"
end

return kit
