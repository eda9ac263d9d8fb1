-- fm.agent.diagnose: `faultmaven diagnose FILE... [--symptom TEXT] [--format md|json] [--no-kb]`
-- (engine/main.c runs main() in an EXEC VM). Diagnoses an incident offline from local files:
-- the same analysis (fm.analyze with the playbooks' signals, through fm.agent.context), the same
-- playbooks (fm.agent.runner) and the same hybrid search over the built-in knowledge pack
-- (fm.services.retrieval) as a case's turn, and prints one report.
--
-- Exit codes: 0 a report was printed (also when nothing is recognised: the report says so),
-- 1 a file cannot be read (missing, a directory, a FIFO or other non-regular file, no
-- permission: the message names it) or the analysis failed, 2 usage (unknown flag, no file, a
-- bad --format).
--
-- Knowledge offline: the pack (KB_PACK_DIR) is ingested once into a private cache,
-- <cache>/faultmaven/kb-<hash>/ (<cache> = $XDG_CACHE_HOME, else ~/.cache, else
-- <FM_DATA_DIR>/cache), keyed by the SHA-256 of the pack's files: an embedded SQLite database
-- (full text, FTS5) and an embedded vector index, with the built-in hashing embedder (no network,
-- whatever EMBEDDING_PROVIDER says). The configured database is never touched, so a running
-- `faultmaven serve` (which holds its vector store) does not stand in the way. A changed pack is a
-- new cache. When another diagnose holds the cache's vector index, search uses the full text alone.
--
-- --format json prints one document (keys are stable; lists are best first):
--   { format = "faultmaven-diagnose", version = 1, recognised = bool,
--     problem = {statement, source = "symptom"|"playbook"|"none"},
--     conclusion = {playbook, hypothesis, root_cause, confidence, severity, category} | null,
--     files = [{path, filename, source_type, detailed_type, bytes, lines, binary, compressed,
--               note (empty, binary, compressed, cut lines) | null,
--               signatures = [{name, count, first_line, last_line, severity}]}],
--     evidence = [{kind = "signature"|"first_error"|"finding", file, line, text, severity?,
--                  signature?, count?, also? (signatures on the same lines), last_line?,
--                  last_text?, note?, playbook?}],
--     hypotheses = [{rank, key, playbook, statement, category, likelihood, reasons,
--                    evidence_for = [{summary, file?, line?, text?}], evidence_against}],
--     playbooks = [{id, title, score, reasons, ran}],
--     next_checks = [{label, command?, why?, playbook, hypothesis?}],
--     mitigations = [{title, command?, description?, risk, undo, verify?, playbook}],
--     solutions = [...same...],
--     runbooks = [{title, path, source = "playbook"|"search", playbook?, document_id?, score?,
--                  heading?}],
--     failures = [{playbook (its id, or its file when it did not load), phase = "load"|"match"|
--                  "step", step?, kind, message}],
--     collect = [{label, command?, why}],   -- what to gather next when nothing is recognised
--     knowledge = {status = "ok"|"keyword_only"|"off"|"skipped"|"unavailable", message?,
--                  cache?, documents?, built?},
--     timings_ms = {analysis, playbooks, knowledge, total} }
local json = require "fm.json"
local time = require "fm.time"

local M = {}

M.USAGE = "usage: faultmaven diagnose FILE... [--symptom TEXT] [--format md|json] [--no-kb]\n"
M.LINE_WIDTH = 160      -- characters of an evidence line shown
M.MAX_SIGNATURES = 8    -- evidence highlights from the signatures, per file
M.MAX_RUNBOOKS = 5
M.DEADLINE_S = 30       -- the playbooks' time, as a turn's
M.CACHE_FORMAT = "diagnose-kb-1"
M.EMBED_DIM = 384

local null = json.null
local A = json.array

-- ---- arguments --------------------------------------------------------------------------------

--- Parses argv (strings); returns opts {files, symptom, format, kb, help} or nil, message.
function M.parse(argv)
  local o = { files = {}, format = "md", kb = true }
  local symptoms = {}
  local i, n, rest = 1, #argv, false
  while i <= n do
    local a = argv[i]
    if rest or a == "-" or a:sub(1, 1) ~= "-" then
      o.files[#o.files + 1] = a
    elseif a == "--" then
      rest = true
    elseif a == "--help" or a == "-h" then
      o.help = true
    elseif a == "--no-kb" then
      o.kb = false
    else
      local name, value = a:match("^(%-%-[%w-]+)=(.*)$")
      name = name or a
      if name == "--symptom" or name == "--format" then
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then return nil, name .. " needs a value" end
        end
        if name == "--symptom" then
          symptoms[#symptoms + 1] = value
        else
          if value ~= "md" and value ~= "json" then
            return nil, "--format must be md or json (got '" .. value .. "')"
          end
          o.format = value
        end
      else
        return nil, "unknown option '" .. a .. "'"
      end
    end
    i = i + 1
  end
  o.symptom = table.concat(symptoms, "\n")
  if not o.help and #o.files == 0 then return nil, "no file given" end
  return o
end

-- ---- files ------------------------------------------------------------------------------------

local function kind_of(path, file_kind)
  if file_kind then return file_kind(path) end
  local ok, lfs = pcall(require, "lfs")
  if ok then
    local mode, err = lfs.attributes(path, "mode")
    if not mode then return nil, err end
    local map = { file = "file", directory = "directory", ["named pipe"] = "fifo",
                  socket = "socket", ["char device"] = "char", ["block device"] = "block" }
    return map[mode] or "other"
  end
  return "file" -- no way to tell: io.open below still refuses what it cannot read
end

local KIND_NAMES = { directory = "is a directory", fifo = "is a FIFO (named pipe)",
                     socket = "is a socket", char = "is a character device",
                     block = "is a block device", other = "is not a regular file" }

--- nil when path is a readable regular file, else the message naming it.
function M.check_file(path, file_kind)
  if path == "-" then return "-: standard input is not read: save the output to a file first" end
  local kind, err = kind_of(path, file_kind)
  if not kind then return path .. ": " .. tostring(err) end
  if kind ~= "file" then return path .. ": " .. KIND_NAMES[kind] .. ", not a file to analyse" end
  local f, oerr = io.open(path, "rb")
  if not f then return (tostring(oerr):find(path, 1, true) and "" or path .. ": ") .. oerr end
  f:close()
  return nil
end

-- The text of the wanted line numbers of a file ({[n] = true}), read in blocks so a huge file
-- or a 1 GB line costs one block and the first bytes of each wanted line. Returns {[n] = text}.
local BLOCK, KEEP = 1 << 20, 4096
function M.read_lines(path, wanted)
  local max = 0
  for n in pairs(wanted) do if n > max then max = n end end
  local out = {}
  if max == 0 then return out end
  local f = io.open(path, "rb")
  if not f then return out end
  local line, parts, kept = 1, {}, 0
  local function keep(s)
    if wanted[line] and kept < KEEP then
      s = s:sub(1, KEEP - kept)
      parts[#parts + 1] = s
      kept = kept + #s
    end
  end
  while line <= max do
    local block = f:read(BLOCK)
    if not block then break end
    local pos = 1
    while line <= max do
      local nl = block:find("\n", pos, true)
      if not nl then
        keep(block:sub(pos))
        break
      end
      keep(block:sub(pos, nl - 1))
      if wanted[line] then out[line] = table.concat(parts) end
      line, parts, kept, pos = line + 1, {}, 0, nl + 1
    end
  end
  if wanted[line] and #parts > 0 and not out[line] then out[line] = table.concat(parts) end
  f:close()
  return out
end

-- Where in a line a signature (name, or any when nil) matches: the byte offset of the end of
-- its first match, or nil. Hyperscan reports a match at its end, so the shortest prefix of the
-- line that still matches ends there (found by bisection, a dozen scans of a short text).
function M.match_end(line, name, analyze, set)
  local function names(text)
    local ok, r = pcall(analyze.text, text, { signatures = set, modules = false })
    local out = {}
    if ok and r then
      for _, g in ipairs(r.summary.signatures or {}) do out[#out + 1] = g.name end
    end
    return out
  end
  if not name then
    name = names(line)[1]
    if not name then return nil end
  end
  local function hits(n)
    for _, g in ipairs(names(line:sub(1, n))) do if g == name then return true end end
    return false
  end
  if not hits(#line) then return nil end
  local lo, hi = 1, #line
  while lo < hi do
    local mid = (lo + hi) // 2
    if hits(mid) then hi = mid else lo = mid + 1 end
  end
  return hi
end

-- A line as shown: secrets redacted, CR and control bytes dropped, invalid UTF-8 as '?', tabs
-- as spaces, cut to M.LINE_WIDTH characters. A longer line is cut around where the signature
-- (focus: a name, or true for any) matches, so the part that matters is what is shown.
function M.show_line(s, analyze, focus, set)
  s = s:gsub("\r$", "")
  if analyze then
    local ok, r = pcall(analyze.redact, s) -- before any cut: a cut could hide a secret's name
    if ok and type(r) == "string" then s = r end
  end
  local first, last = 1, #s
  if #s > M.LINE_WIDTH and focus and analyze then
    local e = M.match_end(s, focus ~= true and focus or nil, analyze, set)
    if e and e > M.LINE_WIDTH - 30 then
      first = math.max(1, e - M.LINE_WIDTH + 40)
      while first > 1 and (s:byte(first) or 0) & 0xC0 == 0x80 do first = first - 1 end
    end
  end
  local cut = s:sub(first, last):gsub("\t", "  "):gsub("[%z\1-\31\127]", "?")
  if not utf8.len(cut) then cut = cut:gsub("[\128-\255]", "?") end
  local width = first > 1 and M.LINE_WIDTH - 3 or M.LINE_WIDTH
  if utf8.len(cut) > width then cut = cut:sub(1, utf8.offset(cut, width) - 1) .. "..." end
  return (first > 1 and "..." or "") .. cut
end

-- ---- knowledge --------------------------------------------------------------------------------

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function cache_root(settings)
  local x = os.getenv("XDG_CACHE_HOME")
  if x and x:sub(1, 1) == "/" then return x .. "/faultmaven" end
  local home = os.getenv("HOME")
  if home and home:sub(1, 1) == "/" then return home .. "/.cache/faultmaven" end
  return settings.data_dir .. "/cache"
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- Opens (building it on first use) the private knowledge cache of the pack. Returns kb =
-- {search = function(query, limit) -> list, status, message?, cache, documents, built,
-- paths = {[document_id] = "kb/<file>"}, pack_dir, titles = {[file] = title}}; kb.search is
-- nil when there is no knowledge to search (status says why).
function M.open_kb(settings)
  local pack = require "fm.kb.pack"
  local crypto = require "fm.crypto"
  local kb = { status = "off", paths = {}, titles = {}, documents = 0, built = false }
  local dir = settings.kb_pack_dir
  kb.pack_dir = dir
  if dir == nil or dir == "off" or dir == "" then
    kb.message = "KB_PACK_DIR is off"
    return kb
  end
  local names = pack.files(dir)
  if #names == 0 then
    kb.message = "no runbooks in " .. dir
    return kb
  end
  local h = { M.CACHE_FORMAT, "hashing-" .. M.EMBED_DIM }
  for _, name in ipairs(names) do
    local text = read_all(dir .. "/" .. name) or ""
    h[#h + 1] = name .. "\0" .. crypto.hex(crypto.sha256(text))
    local doc = pack.parse(text)
    if doc then kb.titles[name] = doc.title end
  end
  local key = crypto.hex(crypto.sha256(table.concat(h, "\n"))):sub(1, 16)
  local cdir = cache_root(settings) .. "/kb-" .. key
  kb.cache = cdir

  local db = require "fm.db"
  local embed = require "fm.embed"
  local vector = require "fm.vector"
  -- a local file: no reason to retry for long when it cannot be made
  local ok, err = db.configure { url = "sqlite:///" .. cdir .. "/kb.db", pool_size = 1,
                                 connect_timeout_s = 0.2 }
  if not ok then
    kb.status, kb.message = "unavailable", "knowledge cache " .. cdir .. ": " .. tostring(err)
    return kb
  end
  embed.configure { provider = "hashing", dim = M.EMBED_DIM }
  vector.use("embedded", { data_dir = cdir, hnsw_m = settings.hnsw_m,
                           hnsw_ef_construction = settings.hnsw_ef_construction,
                           hnsw_ef_search = settings.hnsw_ef_search,
                           vector_quantize = settings.vector_quantize })
  -- the index's lock says who may write the cache: another diagnose holding it is building or
  -- searching; then this run reads the full text of a cache that is ready, or goes without
  local vok, verr = vector.ensure("knowledge", M.EMBED_DIM)
  local marker = cdir .. "/ready"
  local ready = file_exists(marker)
  if vok and not ready then
    local built, berr = pcall(function()
      require("fm.db.migrate").up()
      pack.sync(dir)
    end)
    if not built then
      kb.status, kb.message = "unavailable", "building the knowledge cache: " .. tostring(berr)
      return kb
    end
    local f = io.open(marker, "wb")
    if f then f:write(time.iso8601(), "\n"); f:close() end
    ready, kb.built = true, true
  end
  if not ready then
    kb.status = "unavailable"
    kb.message = "the knowledge cache is being built by another run (" .. tostring(verr) .. ")"
    return kb
  end
  local rows = db.query("SELECT id, filename FROM knowledge_documents WHERE origin = 'pack' "
    .. "AND status = 'ready'")
  if not rows then
    kb.status, kb.message = "unavailable", "the knowledge cache cannot be read: " .. cdir
    return kb
  end
  for _, r in ipairs(rows) do kb.paths[r.id] = "kb/" .. tostring(r.filename) end
  kb.documents = #rows
  if vok then
    kb.status = "ok"
  else
    kb.status = "keyword_only"
    kb.message = "vector index busy (" .. tostring(verr) .. "): full-text search only"
    -- retrieval's vector recall fails the same way and it ranks by the full text alone
  end
  local retrieval = require "fm.services.retrieval"
  function kb.search(query, limit)
    local res = retrieval.documents(nil, { query = query, limit = limit or 3 })
    local out = {}
    for _, d in ipairs(res.documents) do
      out[#out + 1] = { document_id = d.document_id, title = d.title, category = d.category,
                        tags = d.tags, snippet = d.snippet, score = d.similarity_score,
                        heading = d.snippet_heading, path = kb.paths[d.document_id] }
    end
    return out
  end
  return kb
end

-- ---- the report -------------------------------------------------------------------------------

local SEVERITY_RANK = { critical = 4, error = 3, warning = 2, info = 1 }

local function basename(p) return (p:match("([^/]+)/*$") or p) end

local function round(x, places)
  if type(x) ~= "number" then return x end
  local m = 10 ^ (places or 2)
  return math.floor(x * m + 0.5) / m
end

-- The standard questions when no playbook recognises the evidence.
M.COLLECT = {
  { label = "State the symptom in your own words", command = nil,
    why = "what fails, for whom, since when: pass it with --symptom \"...\"" },
  { label = "The failing service's log around the start of the incident",
    command = "journalctl -u <service> --since \"<start - 15 min>\" --until \"<start + 15 min>\"",
    why = "errors, their first occurrence and what changed just before" },
  { label = "Kernel messages", command = "dmesg -T | tail -n 300",
    why = "OOM kills, disk and network errors, hung tasks" },
  { label = "Disk and memory of the host", command = "df -h; df -i; free -m",
    why = "full filesystems, exhausted inodes, memory pressure" },
  { label = "Kubernetes: the pod and its events",
    command = "kubectl describe pod <pod> -n <namespace>; "
      .. "kubectl get events -n <namespace> --sort-by=.lastTimestamp",
    why = "restarts, OOMKilled, probe failures, scheduling and image problems" },
  { label = "Recent changes", command = "git log --since=\"2 days ago\" --oneline",
    why = "deploys and configuration changes near the start time" },
}

-- Builds the report table (the JSON document's shape, see the header).
local function build_report(o, records, result, kb, timings, analyze)
  local by_id = {}
  for _, r in ipairs(records) do by_id[r.id] = r end

  -- line numbers wanted per file, filled in one pass over each file at the end
  local want = {}
  local function ask_line(rec, n)
    n = math.tointeger(tonumber(n))
    if not rec or not n or n < 1 then return end
    want[rec] = want[rec] or {}
    want[rec][n] = true
  end

  local files = A {}
  local evidence = A {}
  for _, r in ipairs(records) do
    local s = r.summary or {}
    local sigs = A {}
    for _, g in ipairs(type(s.signatures) == "table" and s.signatures or {}) do
      sigs[#sigs + 1] = { name = g.name, count = g.count, first_line = g.first_line or null,
                          last_line = g.last_line or null, severity = g.severity or null }
    end
    local bytes = r.bytes or s.bytes or 0
    local note = null
    if bytes == 0 then
      note = "empty: nothing to analyse"
    elseif s.compressed and s.compressed ~= null then
      note = "compressed (" .. tostring(s.compressed) .. "): not decompressed; only known "
        .. "signatures were searched in the raw bytes"
    elseif s.binary == true then
      note = "binary: only known signatures were searched, no log or command analysis"
    elseif (tonumber(s.truncated_lines) or 0) > 0 then
      note = string.format("%d line(s) longer than 64 KiB were cut for the analysis",
        s.truncated_lines)
    end
    files[#files + 1] = { path = r.path, filename = r.filename, source_type = r.source_type,
                          detailed_type = r.detailed_type, bytes = bytes,
                          lines = r.lines or s.lines or 0, binary = s.binary == true,
                          compressed = s.compressed or null, signatures = sigs, note = note }
    local ranked = {}
    for _, g in ipairs(sigs) do ranked[#ranked + 1] = g end
    table.sort(ranked, function(a, b)
      local ra, rb = SEVERITY_RANK[a.severity] or 0, SEVERITY_RANK[b.severity] or 0
      if ra ~= rb then return ra > rb end
      if a.count ~= b.count then return (a.count or 0) > (b.count or 0) end
      return a.name < b.name
    end)
    local shown, first_at = 0, {}
    for _, g in ipairs(ranked) do
      local same = first_at[tostring(g.first_line)]
      if same and same.count == g.count then
        -- another signature over the same lines (fatal_log under too_many_clients): one entry
        same.also[#same.also + 1] = g.name
      elseif shown < M.MAX_SIGNATURES then
        shown = shown + 1
        local e = { kind = "signature", file = r.path, signature = g.name,
                    severity = g.severity, count = g.count, line = g.first_line, also = A {},
                    _rec = r }
        if g.last_line ~= null and g.last_line ~= g.first_line then e.last_line = g.last_line end
        ask_line(r, g.first_line)
        ask_line(r, e.last_line)
        evidence[#evidence + 1] = e
        first_at[tostring(g.first_line)] = first_at[tostring(g.first_line)] or e
      end
    end
    -- the log's first error line, when no signature already points at it
    local logs = type(s.logs) == "table" and s.logs or {}
    local fe = type(logs.first_error) == "table" and logs.first_error or nil
    local fl = fe and math.tointeger(tonumber(fe.line))
    if fl and not first_at[tostring(fl)] then
      local n = tonumber(logs.errors) or 0
      local e = { kind = "first_error", file = r.path, line = fl, severity = fe.severity,
                  note = string.format("first of %d error line%s in this log", n,
                    n == 1 and "" or "s"), _rec = r }
      ask_line(r, fl)
      evidence[#evidence + 1] = e
    end
  end
  -- the playbooks' findings that point at a line of a file
  local at = {}
  for _, e in ipairs(evidence) do at[e.file .. ":" .. tostring(e.line)] = e end
  for _, m in ipairs(result.matched) do
    for _, fd in ipairs(m.findings) do
      local rec = fd.evidence_id and by_id[fd.evidence_id]
      if not rec and fd.filename then
        for _, r in ipairs(records) do if r.filename == fd.filename then rec = r break end end
      end
      local same = rec and fd.line and at[rec.path .. ":" .. fd.line]
      if same and not same.note then
        -- the playbook's words for a line already shown
        same.note, same.playbook = fd.text, m.id
      else
        local e = { kind = "finding", playbook = m.id, note = fd.text, severity = fd.severity,
                    file = rec and rec.path or fd.filename, line = fd.line, _rec = rec }
        if rec then ask_line(rec, fd.line) end
        evidence[#evidence + 1] = e
      end
    end
  end

  -- hypotheses: the runner's, best first, with the playbook's reasons as the why
  local reasons_of = {}
  for _, m in ipairs(result.matched) do reasons_of[m.id] = m.reasons end
  local hyps = A {}
  local function stance_list(list)
    local out = A {}
    for _, e in ipairs(list or {}) do
      local rec = e.evidence_id and by_id[e.evidence_id]
      local item = { summary = e.summary, file = rec and rec.path or null,
                     line = e.line or null, _rec = rec }
      if rec then ask_line(rec, e.line) end
      out[#out + 1] = item
    end
    return out
  end
  for i, h in ipairs(result.hypotheses) do
    hyps[#hyps + 1] = { rank = i, key = h.key, playbook = h.playbook, statement = h.statement,
                        category = h.category, likelihood = round(h.likelihood, 3),
                        reasons = A(reasons_of[h.playbook] or {}),
                        evidence_for = stance_list(h.evidence_for),
                        evidence_against = stance_list(h.evidence_against) }
  end

  -- the lines themselves
  local texts = {}
  for rec, set in pairs(want) do texts[rec] = M.read_lines(rec.path, set) end
  local okset, set = pcall(function() return require("fm.playbooks").signature_set() end)
  set = okset and set or nil
  local function text_of(rec, n, focus)
    local t = rec and texts[rec] and texts[rec][math.tointeger(tonumber(n)) or -1]
    return t and M.show_line(t, analyze, focus or true, set) or nil
  end
  for _, e in ipairs(evidence) do
    e.text = text_of(e._rec, e.line, e.signature) or null
    if e.last_line then e.last_text = text_of(e._rec, e.last_line, e.signature) or null end
    e.line = e.line or null
    e._rec = nil
  end
  for _, h in ipairs(hyps) do
    for _, list in ipairs({ h.evidence_for, h.evidence_against }) do
      for _, e in ipairs(list) do
        e.text = text_of(e._rec, e.line) or null
        e._rec = nil
      end
    end
  end

  local function copy_list(list, fields)
    local out = A {}
    for _, x in ipairs(list or {}) do
      local t = {}
      for _, k in ipairs(fields) do
        local v = x[k]
        if v == nil then v = null end
        t[k] = v
      end
      out[#out + 1] = t
    end
    return out
  end
  local REMEDY = { "title", "command", "description", "risk", "undo", "verify", "playbook" }

  -- runbooks: the matched playbooks' own (kb/<id>.md), then what their searches found
  local runbooks, seen = A {}, {}
  -- a playbook's runbook is kb/<its id>.md: no search needed, so --no-kb lists it too
  local pack_dir = kb and kb.pack_dir or require("fm.settings").kb_pack_dir
  local function add_runbook(rb)
    if #runbooks >= M.MAX_RUNBOOKS or seen[rb.path] then return end
    seen[rb.path] = true
    runbooks[#runbooks + 1] = rb
  end
  for _, m in ipairs(result.matched) do
    local name = m.id .. ".md"
    local title = kb and kb.titles[name]
    if not title and pack_dir and pack_dir ~= "off" then
      local text = read_all(pack_dir .. "/" .. name)
      local doc = text and require("fm.kb.pack").parse(text)
      title = doc and doc.title
    end
    if title then
      add_runbook({ title = title, path = "kb/" .. name, source = "playbook", playbook = m.id,
                    document_id = null, score = null, heading = null })
    end
  end
  local function add_found(list)
    for _, r in ipairs(list or {}) do
      local path = r.path or (kb and kb.paths[r.document_id])
      if path then
        add_runbook({ title = r.title, path = path, source = "search", playbook = null,
                      document_id = r.document_id, score = r.score or null,
                      heading = r.heading or null })
      end
    end
  end
  add_found(result.runbooks)

  local recognised = #result.matched > 0
  if not recognised and kb and kb.search then
    -- no playbook: the user's words and the strongest signals still find runbooks
    local q = { o.symptom }
    for _, e in ipairs(evidence) do
      if e.kind == "signature" then q[#q + 1] = e.signature:gsub("_", " ") end
    end
    local query = table.concat(q, " "):gsub("^%s+", "")
    if query:find("%S") then
      local ok, found = pcall(kb.search, query:sub(1, 1000), 3)
      if ok then add_found(found) end
    end
  end

  local c = result.conclusion
  local problem
  if o.symptom:find("%S") then
    problem = { statement = o.symptom, source = "symptom" }
  elseif recognised then
    local top = result.matched[1]
    problem = { statement = top.title, source = "playbook" }
  else
    problem = { statement = "not stated (use --symptom)", source = "none" }
  end

  local playbooks = A {}
  local ran = {}
  for _, m in ipairs(result.matched) do ran[m.id] = true end
  for _, s in ipairs(result.scores) do
    if s.score > 0 or ran[s.id] then
      playbooks[#playbooks + 1] = { id = s.id, title = s.title, score = round(s.score, 3),
                                    reasons = A(s.reasons or {}), ran = ran[s.id] == true }
    end
  end

  local failures = A {}
  -- playbooks that did not load (a syntax error, a field the contract refuses) are failures too
  local okr, reg = pcall(function() return require("fm.playbooks").registry() end)
  for _, f in ipairs(okr and type(reg) == "table" and reg.errors or {}) do
    local msg = tostring(f.message)
    if f.line and not msg:find(":" .. tostring(f.line) .. ":", 1, true) then
      msg = "line " .. tostring(f.line) .. ": " .. msg
    end
    failures[#failures + 1] = { playbook = tostring(f.file), phase = "load", step = null,
                                kind = "error", message = msg }
  end
  for _, f in ipairs(result.failed) do
    failures[#failures + 1] = { playbook = f.id, phase = f.phase, step = f.step or null,
                                kind = f.kind, message = f.message }
  end

  local knowledge = { status = "skipped" }
  if kb then
    knowledge = { status = kb.status, message = kb.message or null, cache = kb.cache or null,
                  documents = kb.documents, built = kb.built }
  end

  return {
    format = "faultmaven-diagnose", version = 1, recognised = recognised,
    problem = problem,
    conclusion = c and { playbook = c.playbook, hypothesis = c.hypothesis or null,
                         root_cause = c.root_cause, confidence = round(c.confidence, 3),
                         severity = c.severity, category = c.category or null } or null,
    files = files, evidence = evidence, hypotheses = hyps, playbooks = playbooks,
    next_checks = copy_list(result.asks, { "label", "command", "why", "playbook",
                                           "hypothesis" }),
    mitigations = copy_list(result.mitigations, REMEDY),
    solutions = copy_list(result.solutions, REMEDY),
    runbooks = runbooks, failures = failures,
    collect = recognised and A {} or copy_list(M.COLLECT, { "label", "command", "why" }),
    knowledge = knowledge, timings_ms = timings,
  }
end

-- ---- output -----------------------------------------------------------------------------------

-- JSON with sorted keys and two-space indentation: the same report gives the same bytes.
local function encode_pretty(v, indent, out)
  local t = type(v)
  if t ~= "table" or v == null then
    out[#out + 1] = json.encode(v)
    return
  end
  local pad = string.rep("  ", indent + 1)
  if json.is_array(v) or (next(v) == nil and getmetatable(v) == json.array_mt) then
    if #v == 0 then out[#out + 1] = "[]" return end
    out[#out + 1] = "[\n"
    for i, x in ipairs(v) do
      out[#out + 1] = pad
      encode_pretty(x, indent + 1, out)
      out[#out + 1] = i < #v and ",\n" or "\n"
    end
    out[#out + 1] = string.rep("  ", indent) .. "]"
    return
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  if #keys == 0 then out[#out + 1] = "{}" return end
  out[#out + 1] = "{\n"
  for i, k in ipairs(keys) do
    out[#out + 1] = pad .. json.encode(k) .. ": "
    encode_pretty(v[k], indent + 1, out)
    out[#out + 1] = i < #keys and ",\n" or "\n"
  end
  out[#out + 1] = string.rep("  ", indent) .. "}"
end

function M.to_json(report)
  local out = {}
  encode_pretty(report, 0, out)
  out[#out + 1] = "\n"
  return table.concat(out)
end

local function s(v) if v == nil or v == null then return nil end return tostring(v) end

-- file:line as grep -n and editors write it, with the path as the user gave it.
local function where(file, line)
  if not s(file) then return "" end
  if s(line) then return file .. ":" .. line end
  return file
end

-- Inline code that survives any text (backticks inside get a longer fence).
local function code(text)
  local fence = "`"
  while text:find(fence, 1, true) do fence = fence .. "`" end
  local pad = (text:sub(1, 1) == "`" or text:sub(-1) == "`") and " " or ""
  return fence .. pad .. text .. pad .. fence
end

local function one_line(text) return (tostring(text):gsub("%s*\n%s*", " ")) end

function M.to_markdown(r)
  local L = {}
  local function add(...) L[#L + 1] = table.concat({ ... }) end
  add("# FaultMaven diagnosis")
  add("")
  add("**Problem:** ", one_line(r.problem.statement))
  local c = r.conclusion
  if not r.recognised then
    add("")
    add("**Not recognised.** No playbook matches this evidence, so FaultMaven cannot name the ",
        "incident yet. What the files show is below; collect what is listed under ",
        "\"What to collect\" and run it again.")
  elseif c ~= null then
    add("**Likely root cause:** ", one_line(c.root_cause), string.format(
      " (confidence %.2f, severity %s, playbook %s)", c.confidence, c.severity, c.playbook))
  else
    local top = r.playbooks[1]
    add(string.format("**Matches:** %s (score %.2f); no playbook reached a conclusion",
      top and top.title or "?", top and top.score or 0))
  end
  add("")
  local fl = {}
  for _, f in ipairs(r.files) do
    fl[#fl + 1] = string.format("%s (%s, %d lines%s)", basename(f.path), f.detailed_type,
      f.lines, f.binary and ", binary" or "")
  end
  add("Files: ", table.concat(fl, ", "))
  for _, f in ipairs(r.files) do
    if s(f.note) then add("", "- ", basename(f.path), ": ", f.note) end
  end

  add("")
  add("## Evidence")
  add("")
  if #r.evidence == 0 then
    add("No known error signature or finding in these files.")
  end
  local quoted = {} -- file:line already quoted: a later entry names it without the text
  local function quote(e, line, text)
    local k = tostring(e.file) .. ":" .. tostring(line)
    if not s(text) or quoted[k] then return end
    quoted[k] = true
    return true
  end
  for _, e in ipairs(r.evidence) do
    if e.kind == "signature" then
      add(string.format("- **%s** (%s, %d line%s) at %s%s", e.signature, tostring(e.severity),
        e.count, e.count == 1 and "" or "s", where(e.file, e.line),
        #e.also > 0 and (", also " .. table.concat(e.also, ", ")) or ""))
      if quote(e, e.line, e.text) then add("  ", code(e.text)) end
      if e.last_line and s(e.last_line) then
        quote(e, e.last_line, e.last_text)
        add("  last at ", where(e.file, e.last_line), s(e.last_text)
          and (": " .. code(e.last_text)) or "")
      end
      if s(e.note) then add("  ", one_line(e.note), " [", e.playbook, "]") end
    elseif e.kind == "first_error" then
      add("- first error at ", where(e.file, e.line), " (", e.note, ")")
      if quote(e, e.line, e.text) then add("  ", code(e.text)) end
    else
      local loc = where(e.file, e.line)
      add("- ", one_line(e.note), loc ~= "" and (" (" .. loc .. ")") or "",
        " [", e.playbook, "]")
      if quote(e, e.line, e.text) then add("  ", code(e.text)) end
    end
  end

  if #r.hypotheses > 0 then
    add("")
    add("## Hypotheses")
    add("")
    local why_shown = {}
    for _, h in ipairs(r.hypotheses) do
      add(string.format("%d. **%s** (likelihood %.2f; %s, playbook %s)", h.rank,
        one_line(h.statement), h.likelihood, h.category, h.playbook))
      -- the playbook's reasons once, at its best hypothesis
      if #h.reasons > 0 and not why_shown[h.playbook] then
        why_shown[h.playbook] = true
        add("   - why ", h.playbook, " applies: ", one_line(table.concat(h.reasons, "; ")))
      end
      for _, pair in ipairs({ { "for", h.evidence_for }, { "against", h.evidence_against } }) do
        for _, e in ipairs(pair[2]) do
          local loc = where(e.file, e.line)
          add("   - ", pair[1], ": ", one_line(e.summary), loc ~= "" and (" (" .. loc .. ")")
            or "", s(e.text) and (": " .. code(e.text)) or "")
        end
      end
    end
  end

  if #r.next_checks > 0 then
    add("")
    add("## Next checks")
    add("")
    for i, a in ipairs(r.next_checks) do
      add(string.format("%d. %s", i, one_line(a.label)), s(a.command) and
        (": " .. code(one_line(a.command))) or "")
      if s(a.why) then add("   ", one_line(a.why)) end
    end
  end

  local function remedies(title, list)
    if #list == 0 then return end
    add("")
    add("### ", title)
    add("")
    for _, m in ipairs(list) do
      add("- **", one_line(m.title), "** (risk ", m.risk, ", ", m.playbook, ")")
      if s(m.description) then add("  ", one_line(m.description)) end
      if s(m.command) then add("  run: ", code(one_line(m.command))) end
      add("  undo: ", one_line(m.undo))
      if s(m.verify) then add("  verify: ", code(one_line(m.verify))) end
    end
  end
  if #r.mitigations + #r.solutions > 0 then
    add("")
    add("## Remediation")
    remedies("Mitigate (stop the bleeding)", r.mitigations)
    remedies("Fix (the lasting change)", r.solutions)
  end

  if #r.collect > 0 then
    add("")
    add("## What to collect")
    add("")
    for i, a in ipairs(r.collect) do
      add(string.format("%d. %s", i, a.label), s(a.command) and (": " .. code(a.command)) or "")
      add("   ", a.why)
    end
  end

  add("")
  add("## Runbooks")
  add("")
  if #r.runbooks == 0 then
    add(r.knowledge.status == "skipped" and "Knowledge search skipped (--no-kb)."
      or "No runbook applies.")
  end
  for _, b in ipairs(r.runbooks) do
    add("- ", b.title, " (", b.path, b.source == "playbook" and (", playbook " .. b.playbook)
      or string.format(", search score %.2f", tonumber(b.score) or 0), ")")
  end
  if s(r.knowledge.message) and r.knowledge.status ~= "off" then
    add("")
    add("Knowledge: ", r.knowledge.message)
  end

  if #r.failures > 0 then
    add("")
    add("## Playbook failures")
    add("")
    for _, f in ipairs(r.failures) do
      add("- ", f.playbook, " (", f.phase, s(f.step) and (" " .. f.step) or "", "): ", f.kind,
        ": ", one_line(f.message))
    end
  end

  local t = r.timings_ms
  add("")
  local ran = 0
  for _, p in ipairs(r.playbooks) do if p.ran then ran = ran + 1 end end
  add(string.format("_%d file%s, %d playbook%s ran; analysis %d ms, playbooks %d ms, knowledge "
    .. "%d ms, total %d ms._", #r.files, #r.files == 1 and "" or "s", ran, ran == 1 and "" or "s",
    t.analysis, t.playbooks, t.knowledge, t.total))
  return table.concat(L, "\n") .. "\n"
end

-- ---- main -------------------------------------------------------------------------------------

local function ms(t0) return math.floor((time.monotonic() - t0) * 1000 + 0.5) end

--- Runs a diagnosis: o from M.parse. Returns the report table, or nil, message (exit 1).
function M.diagnose(o, file_kind)
  local t0 = time.monotonic()
  for _, p in ipairs(o.files) do
    local bad = M.check_file(p, file_kind)
    if bad then return nil, bad end
  end
  local settings = require "fm.settings"
  local timings = { analysis = 0, playbooks = 0, knowledge = 0, total = 0 }

  local kb
  if o.kb then
    local tk = time.monotonic()
    local ok, res = pcall(M.open_kb, settings)
    if ok then kb = res
    else kb = { status = "unavailable", message = tostring(res), paths = {}, titles = {},
                documents = 0, built = false, pack_dir = settings.kb_pack_dir } end
    timings.knowledge = ms(tk)
  end

  local ta = time.monotonic()
  local context = require "fm.agent.context"
  local ctx, records = context.from_files(o.files, {
    symptom = o.symptom, search_kb = kb and kb.search or nil })
  if not ctx then return nil, records end
  timings.analysis = ms(ta)

  local tp = time.monotonic()
  local result = require("fm.agent.runner").run(ctx, {
    deadline = time.monotonic() + M.DEADLINE_S })
  timings.playbooks = ms(tp)

  local analyze = require "fm.analyze"
  local report = build_report(o, records, result, kb, timings, analyze)
  timings.total = ms(t0)
  return report
end

--- argv: the arguments after `diagnose`, plus tty (stdout is a terminal) and file_kind (the
-- engine's stat(): a FIFO is never opened). Prints the report; returns the exit code.
function M.main(argv)
  local args = {}
  for i = 1, #argv do args[i] = argv[i] end
  local o, err = M.parse(args)
  if not o then
    io.stderr:write("faultmaven: diagnose: ", err, "\n", M.USAGE)
    return 2
  end
  if o.help then
    io.stdout:write(M.USAGE, "\n",
      "Diagnoses an incident from local files (logs, command output, kubectl describe ...)\n"
      .. "offline: evidence with file:line, ranked hypotheses, next checks, remediation and\n"
      .. "the runbooks of the knowledge pack that apply.\n\n"
      .. "  --symptom TEXT   what you see, in your own words (may be repeated)\n"
      .. "  --format md|json a Markdown report (default) or one JSON document\n"
      .. "  --no-kb          skip the knowledge search (no cache is built or read)\n\n"
      .. "Exit status: 0 a report, 1 a file cannot be read, 2 usage.\n")
    return 0
  end
  local report, msg = M.diagnose(o, argv.file_kind)
  if not report then
    io.stderr:write("faultmaven: diagnose: ", msg, "\n")
    return 1
  end
  if o.format == "json" then
    io.stdout:write(M.to_json(report))
  else
    io.stdout:write(M.to_markdown(report))
  end
  io.stdout:flush()
  return 0
end

return M
