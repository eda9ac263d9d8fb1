-- fm.services.evidence: a case's evidence (GET /api/v1/cases/{id}/evidence and /evidence/{eid},
-- API.md Tier 2) in the contract's EvidenceDetailsResponse shape. Evidence rows are written with
-- each upload (fm.services.uploads); the investigation (fm.services.turns) sets their category
-- and links them to hypotheses (evidence.data = {hypotheses = [{key, stance}]}), shown as
-- related_hypotheses with the hypotheses' ids and statements.
local db = require "fm.db"
local errors = require "fm.errors"
local json = require "fm.json"
local check = require "fm.db.check"

local M = {}

local null = json.null
local function arr(t) return setmetatable(t or {}, json.array_mt) end
local function int(v) return math.tointeger(tonumber(v)) or 0 end

-- evidence joined with the file it came from (if any)
local SELECT = "SELECT e.*, f.filename AS f_filename, f.turn_number AS f_turn, "
  .. "f.user_id AS f_user FROM evidence e LEFT JOIN uploaded_files f ON f.id = e.file_id "

-- The case's hypotheses by key: {id, statement}.
local function hypotheses_by_key(case_id)
  local out = {}
  for _, h in ipairs(check(db.query("SELECT id, statement, item_key FROM hypotheses WHERE "
    .. "case_id = ?", case_id))) do
    if h.item_key then out[h.item_key] = h end
  end
  return out
end

local function related(row, hyps)
  local d = row.data and json.decode(row.data)
  local out = {}
  if type(d) ~= "table" or type(d.hypotheses) ~= "table" then return arr(out) end
  for _, l in ipairs(d.hypotheses) do
    local h = type(l) == "table" and hyps[l.key]
    if h then
      out[#out + 1] = { hypothesis_id = h.id, statement = h.statement,
                        stance = l.stance == "against" and "against" or "for" }
    end
  end
  return arr(out)
end

local function shape(row, case_row, hyps)
  local source = null
  if row.file_id and row.f_filename then
    source = { file_id = row.file_id, filename = row.f_filename,
               uploaded_at_turn = int(row.f_turn) }
  end
  return {
    evidence_id = row.id, case_id = row.case_id, category = row.category,
    primary_purpose = (row.category or ""):gsub("_evidence$", ""),
    summary = row.summary or "", analysis = row.content or null, extract = null,
    collected_at = row.created_at, collected_at_turn = int(row.turn_number),
    collected_by = row.f_user or case_row.user_id, source_type = row.source_type,
    source_file = source, related_hypotheses = related(row, hyps),
  }
end

--- CaseEvidenceListResponse of a case the caller owns (cases.get_row first), oldest first.
function M.list(case_row, q, paging)
  local limit, offset = paging(q, 100, 200)
  local rows = check(db.query(SELECT .. "WHERE e.case_id = ? ORDER BY e.created_at, e.id "
    .. "LIMIT ? OFFSET ?", case_row.id, limit, offset))
  local total = int(check(db.query("SELECT COUNT(*) AS n FROM evidence WHERE case_id = ?",
    case_row.id))[1].n)
  local out, hyps = {}, hypotheses_by_key(case_row.id)
  for i, r in ipairs(rows) do out[i] = shape(r, case_row, hyps) end
  return { case_id = case_row.id, evidence = arr(out), total_count = total, limit = limit,
           offset = offset, has_more = offset + #out < total }
end

--- EvidenceDetailsResponse, or a 404 (ids are made here: anything else names nothing).
function M.get(case_row, eid)
  if type(eid) ~= "string" or #eid > 64 or not eid:match("^ev_%x+$") then
    errors.raise(404, "evidence not found")
  end
  local row = check(db.query(SELECT .. "WHERE e.id = ? AND e.case_id = ?", eid, case_row.id))[1]
  if not row then errors.raise(404, "evidence not found") end
  return shape(row, case_row, hypotheses_by_key(case_row.id))
end

return M
