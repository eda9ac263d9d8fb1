-- fm.agent.case: the playbook context (docs/PLAYBOOKS.md, "ctx") of a stored case.
--
--   case.context(case_row, {user?, turn?, extra?, query?}) -> ctx   via fm.agent.context.build
--   case.records(case_id) -> {evidence record, ...}   the newest 50 evidence items, oldest first
--   case.hypotheses(case_id) -> {hypothesis, ...}
--   case.symptom(case_row) -> string                  the user's own words
--
-- Reads the database only; writes nothing.
local db = require "fm.db"
local json = require "fm.json"
local log = require "fm.log"
local check = require "fm.db.check"

local M = {}

M.MAX_EVIDENCE = 50          -- newest evidence items in a context
M.MAX_MESSAGE_BYTES = 20000  -- of the user's messages in the symptom

local null = json.null

local function v(x) if x == null then return nil end return x end

-- A JSON column decoded into a table; {} for NULL, a missing column or text that is not JSON.
local function decode(s)
  if type(s) == "table" then return s end
  if type(s) ~= "string" or s == "" then return {} end
  local ok, t = pcall(json.decode, s)
  if ok and type(t) == "table" then return t end
  return {}
end

-- s cut to at most n bytes, on a UTF-8 character boundary.
local function cut(s, n)
  if #s <= n then return s end
  s = s:sub(1, n)
  return (s:gsub("[\192-\255][\128-\191]*$", ""))
end

--- The newest M.MAX_EVIDENCE evidence items of a case, oldest first, as context records:
-- {id, filename, source_type, detailed_type, turn, digest, summary (table)}.
function M.records(case_id)
  local rows = check(db.query("SELECT e.id, e.source_type AS e_source_type, e.content, "
    .. "e.turn_number, e.created_at, f.filename, f.source_type AS f_source_type, "
    .. "f.detailed_type, f.analysis, f.digest FROM evidence e LEFT JOIN uploaded_files f "
    .. "ON f.id = e.file_id WHERE e.case_id = ? "
    .. "ORDER BY e.created_at DESC, e.turn_number DESC, e.id DESC LIMIT ?",
    case_id, M.MAX_EVIDENCE))
  local out = {}
  for i = #rows, 1, -1 do
    local r = rows[i]
    local summary = decode(v(r.analysis))
    out[#out + 1] = {
      id = r.id,
      filename = v(r.filename),
      source_type = v(r.f_source_type) or v(r.e_source_type) or "text",
      detailed_type = v(r.detailed_type) or v(summary.detailed_type),
      turn = math.tointeger(tonumber(r.turn_number)) or 0,
      digest = v(r.digest) or v(r.content) or "",
      summary = summary,
    }
  end
  return out
end

--- The case's hypotheses (table hypotheses; key (data.key, else item_key), playbook and evidence
-- lists from its data JSON):
-- {id, key, playbook, statement, category, state, likelihood, evidence_for, evidence_against}.
function M.hypotheses(case_id)
  local rows = check(db.query("SELECT * FROM hypotheses WHERE case_id = ? "
    .. "ORDER BY created_at, id", case_id))
  local out = {}
  for i, r in ipairs(rows) do
    local data = decode(v(r.data))
    out[i] = {
      id = r.id, key = v(data.key) or v(r.item_key), playbook = v(data.playbook),
      statement = r.statement, category = r.category, state = r.status,
      likelihood = tonumber(v(r.confidence)),
      evidence_for = type(data.evidence_for) == "table" and data.evidence_for or {},
      evidence_against = type(data.evidence_against) == "table" and data.evidence_against or {},
      refutation_reason = v(data.refutation_reason),
    }
  end
  return out
end

--- The user's own words: the problem statement (confirmed, else proposed), the description and
-- the user's messages, newest first (query: the message of the turn in progress, the newest),
-- at most M.MAX_MESSAGE_BYTES of messages.
function M.symptom(case_row, query)
  local inv = decode(v(case_row.investigation))
  local parts = {}
  local statement = v(inv.problem_statement) or v(inv.proposed_problem_statement)
  if type(statement) == "string" and statement:find("%S") then parts[#parts + 1] = statement end
  local desc = v(case_row.description)
  if type(desc) == "string" and desc:find("%S") then parts[#parts + 1] = desc end
  local rows = check(db.query("SELECT content FROM case_messages WHERE case_id = ? AND "
    .. "role = 'user' ORDER BY created_at DESC, turn_number DESC, id DESC LIMIT 500",
    case_row.id))
  local room = M.MAX_MESSAGE_BYTES
  if type(query) == "string" then table.insert(rows, 1, { content = query }) end
  for _, r in ipairs(rows) do
    local text = v(r.content)
    if type(text) == "string" and text:find("%S") then
      if room <= 0 then break end
      text = cut(text, room)
      room = room - #text - 1
      parts[#parts + 1] = text
    end
  end
  return table.concat(parts, "\n")
end

-- The case owner's user row (what knowledge visibility needs: id, organization_id).
local function owner(case_row)
  local r = check(db.query("SELECT * FROM users WHERE id = ?", case_row.user_id))[1]
  return r
end

--- A search_kb for ctx: function(query, limit) -> {{document_id, title, category, tags,
-- snippet, score, heading}, ...} over the knowledge user may read; {} on any failure (logged).
function M.search_kb(user)
  return function(query, limit)
    if type(query) ~= "string" or not query:find("%S") or not user then return {} end
    limit = math.tointeger(tonumber(limit)) or 3
    if limit < 1 then limit = 1 elseif limit > 10 then limit = 10 end
    local ok, res = pcall(function()
      local retrieval = require "fm.services.retrieval"
      local req = retrieval.validate { query = cut(query, retrieval.MAX_QUERY), limit = limit }
      return retrieval.documents(user, req)
    end)
    if not ok then
      log.warn("playbook knowledge search failed", { error = tostring(res) })
      return {}
    end
    local out = {}
    for i, d in ipairs(res.documents or {}) do
      local tags = {}
      for j, t in ipairs(type(v(d.tags)) == "table" and d.tags or {}) do tags[j] = t end
      out[i] = { document_id = d.document_id, title = v(d.title), category = v(d.category),
                 tags = tags, snippet = v(d.snippet), score = v(d.similarity_score),
                 heading = v(d.snippet_heading) }
    end
    return out
  end
end

--- The ctx of a stored case for the playbook runner. opts: user (whose knowledge search_kb
-- reads; default the case's owner), turn (default the case's current turn), extra (evidence
-- records of the turn in progress, not stored yet: they count as the newest), query (the turn's
-- message, not stored yet: the newest of the user's words).
function M.context(case_row, opts)
  opts = opts or {}
  local user = opts.user or owner(case_row)
  local evidence = M.records(case_row.id)
  if type(opts.extra) == "table" and #opts.extra > 0 then
    local have = {}
    for _, r in ipairs(evidence) do have[r.id] = true end
    for _, r in ipairs(opts.extra) do
      if not (r.id and have[r.id]) then evidence[#evidence + 1] = r end
    end
    while #evidence > M.MAX_EVIDENCE do table.remove(evidence, 1) end
  end
  return require("fm.agent.context").build {
    symptom = M.symptom(case_row, opts.query),
    evidence = evidence,
    hypotheses = M.hypotheses(case_row.id),
    case = { id = case_row.id, state = v(case_row.state), stage = v(case_row.stage),
             title = v(case_row.title),
             turn = opts.turn or math.tointeger(tonumber(v(case_row.current_turn))) },
    search_kb = M.search_kb(user),
  }
end

return M
