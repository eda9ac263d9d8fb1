-- fm.agent.context: what a playbook sees (docs/PLAYBOOKS.md, "ctx"). One builder serves the
-- engine (fm.agent.case, from the stored case) and the offline tools (from_files: `faultmaven
-- diagnose`, the specs, bench/eval), so a playbook sees the same thing everywhere.
--
--   local ctx = context.build{ symptom = "...", evidence = {record, ...}, case = {...},
--                              hypotheses = {...}, search_kb = function(query, limit) end }
--   local ctx, records = context.from_files({ "app.log", "df.txt" }, { symptom = "..." })
--
-- An evidence record: { id, filename, source_type, detailed_type, turn, digest, summary } where
-- summary is the analysis summary (a table, or its JSON text). The ctx holds data and a few
-- query functions; functions never raise on odd arguments (a playbook's bad call is its own
-- empty answer, not a failure of the turn).
local json = require "fm.json"
local time = require "fm.time"

local M = {}

M.MAX_EVIDENCE = 50          -- newest items a playbook sees
M.MAX_SYMPTOM = 20000        -- bytes of the user's words
M.MAX_GREP_PATTERN = 200     -- a Lua pattern longer than this finds nothing
M.KB_LIMIT_MAX = 10
M.MAX_SEARCHES = 20          -- knowledge searches one ctx (a turn) runs; the rest find nothing

local function words_of(args, n)
  local out = {}
  for i = 1, n do
    local w = args[i]
    if type(w) == "string" and w ~= "" then out[#out + 1] = w:lower() end
  end
  return out
end

local function decode_summary(s)
  if type(s) == "table" then return s end
  if type(s) ~= "string" or s == "" then return {} end
  local ok, t = pcall(json.decode, s)
  if ok and type(t) == "table" then return t end
  return {}
end

-- name -> {count, first_line, last_line, severity, evidence_id, filename}; counts are summed,
-- the lines and file are the first item's that has the signature.
local function aggregate_signals(evidence)
  local signals = {}
  for _, ev in ipairs(evidence) do
    local sigs = ev.summary.signatures
    if type(sigs) == "table" then
      for _, s in ipairs(sigs) do
        if type(s) == "table" and type(s.name) == "string" then
          local cur = signals[s.name]
          local n = math.tointeger(tonumber(s.count)) or 0
          if cur then
            cur.count = cur.count + n
          else
            signals[s.name] = { count = n, first_line = s.first_line, last_line = s.last_line,
                                severity = s.severity, evidence_id = ev.id,
                                filename = ev.filename }
          end
        end
      end
    end
  end
  return signals
end

local function normalize(rec, i)
  local summary = decode_summary(rec.summary)
  return {
    id = type(rec.id) == "string" and rec.id or ("evidence-" .. i),
    filename = type(rec.filename) == "string" and rec.filename or nil,
    source_type = rec.source_type or summary.source_type or "text",
    detailed_type = rec.detailed_type or summary.detailed_type or "text",
    turn = math.tointeger(tonumber(rec.turn)),
    digest = type(rec.digest) == "string" and rec.digest or "",
    summary = summary,
  }
end

--- The ctx of docs/PLAYBOOKS.md from plain inputs (see the header).
function M.build(opts)
  opts = opts or {}
  local evidence = {}
  local given = opts.evidence or {}
  local first = math.max(1, #given - M.MAX_EVIDENCE + 1)
  for i = first, #given do evidence[#evidence + 1] = normalize(given[i], i) end
  local symptom = type(opts.symptom) == "string" and opts.symptom or ""
  if #symptom > M.MAX_SYMPTOM then symptom = symptom:sub(1, M.MAX_SYMPTOM) end

  local ctx = {
    case = opts.case or {},
    symptom = symptom,
    evidence = evidence,
    signals = aggregate_signals(evidence),
    hypotheses = opts.hypotheses or {},
    now = time.iso8601(),
  }

  -- Lower-cased texts, made on first use (most playbooks ask a signal first).
  local lower_symptom, lower_digests
  local function texts()
    if not lower_symptom then
      lower_symptom = symptom:lower()
      lower_digests = {}
      for i, ev in ipairs(evidence) do lower_digests[i] = ev.digest:lower() end
    end
    return lower_symptom, lower_digests
  end

  function ctx.signal(name)
    local s = type(name) == "string" and ctx.signals[name]
    return s and s.count or 0
  end

  function ctx.said(...)
    local ws = words_of({ ... }, select("#", ...))
    local s = texts()
    for _, w in ipairs(ws) do
      if s:find(w, 1, true) then return true end
    end
    return false
  end

  function ctx.mentions(...)
    local ws = words_of({ ... }, select("#", ...))
    local s, digests = texts()
    for _, w in ipairs(ws) do
      if s:find(w, 1, true) then return true end
      for _, d in ipairs(digests) do
        if d:find(w, 1, true) then return true end
      end
    end
    return false
  end

  function ctx.grep(pattern, max)
    local out = {}
    if type(pattern) ~= "string" or pattern == "" or #pattern > M.MAX_GREP_PATTERN then
      return out
    end
    max = math.tointeger(tonumber(max)) or 20
    if max < 1 then return out end
    if max > 200 then max = 200 end
    local nocase = pattern:lower() == pattern
    for _, ev in ipairs(evidence) do
      for line in ev.digest:gmatch("[^\n]+") do
        local ok, hit = pcall(string.find, nocase and line:lower() or line, pattern)
        if not ok then return {} end -- a malformed pattern
        if hit then
          out[#out + 1] = { evidence_id = ev.id, filename = ev.filename, text = line }
          if #out >= max then return out end
        end
      end
    end
    return out
  end

  local function select_evidence(pred)
    local out = {}
    for _, ev in ipairs(evidence) do if pred(ev) then out[#out + 1] = ev end end
    return out
  end

  function ctx.command(kind)
    if type(kind) ~= "string" then return {} end
    return select_evidence(function(ev)
      local c = ev.summary.command
      return ev.detailed_type == kind or (type(c) == "table" and c.kind == kind)
    end)
  end

  function ctx.of_type(t)
    if type(t) ~= "string" then return {} end
    return select_evidence(function(ev) return ev.source_type == t or ev.detailed_type == t end)
  end

  -- A search is real work in C (SQL, perhaps an embedding request) that no instruction budget
  -- sees: a turn gets MAX_SEARCHES of them.
  local search, searches = opts.search_kb, 0
  function ctx.search_kb(query, limit)
    if not search or type(query) ~= "string" or not query:find("%S") then return {} end
    searches = searches + 1
    if searches > M.MAX_SEARCHES then return {} end
    limit = math.tointeger(tonumber(limit)) or 3
    if limit < 1 then return {} end
    if limit > M.KB_LIMIT_MAX then limit = M.KB_LIMIT_MAX end
    local ok, res = pcall(search, query:sub(1, 1000), limit)
    if not ok or type(res) ~= "table" then return {} end
    return res
  end

  return ctx
end

local function basename(p) return (p:match("([^/]+)/*$") or p) end

--- Analyses local files (fm.analyze, with the playbooks' signals) and builds their ctx.
-- Returns ctx, records (each with .path) or nil, message when a file cannot be analysed.
function M.from_files(paths, opts)
  opts = opts or {}
  local analyze = require "fm.analyze"
  local set
  local ok, playbooks = pcall(require, "fm.playbooks")
  if ok and playbooks.signature_set then set = playbooks.signature_set() end
  local records = {}
  for i, path in ipairs(paths) do
    local name = basename(path)
    local r, msg = analyze.file(path, { filename = name, signatures = set or nil })
    if not r then return nil, path .. ": " .. tostring(msg) end
    records[#records + 1] = {
      id = "file" .. i, path = path, filename = name, source_type = r.source_type,
      detailed_type = r.detailed_type, turn = 0, digest = r.digest or "",
      summary = r.summary or {}, bytes = r.bytes, lines = r.lines,
    }
  end
  local ctx = M.build { symptom = opts.symptom, evidence = records, case = opts.case,
                        search_kb = opts.search_kb }
  return ctx, records
end

return M
