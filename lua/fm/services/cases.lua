-- fm.services.cases: cases and their messages, scoped to one user (another user's case does not
-- exist: 404). Every write that can race is guarded: updates carry the version they read
-- (optimistic concurrency, 409 CASE_VERSION_CONFLICT), creates with an Idempotency-Key run in one
-- transaction with the key's row. The investigation views (GET /ui, the TurnResponse's
-- progress_transparency and cause assurance) read what fm.services.turns stores: the case's
-- investigation JSON, milestones, hypotheses, solutions and evidence categories.
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local idempotency = require "fm.services.idempotency"
local json = require "fm.json"
local lifecycle = require "fm.agent.lifecycle"
local time = require "fm.time"

local M = {}

local null = json.null
local array_mt = json.array_mt

-- The contract's lifecycle (fm.agent.lifecycle has it once): inquiry -> investigating ->
-- resolved | closed; inquiry may go straight to resolved or closed. NEXT lists the next states
-- in order.
M.STATES = lifecycle.STATES
M.TERMINAL = lifecycle.TERMINAL
M.NEXT = lifecycle.NEXT_LIST
M.CLOSURE_REASONS = lifecycle.CLOSURE_REASONS
M.MILESTONES = lifecycle.MILESTONES

local check = require "fm.db.check"

local function arr(t)
  if t and json.is_array(t) then return t end -- decoded arrays are marked already
  return setmetatable(t or {}, array_mt)
end
local function n(v) if v == nil then return null end return v end
local function int(v) return math.tointeger(tonumber(v)) or 0 end

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

-- ---- shapes ---------------------------------------------------------------------------------

function M.summary(row)
  local next_states = {}
  for _, s in ipairs(M.NEXT[row.state] or {}) do next_states[#next_states + 1] = s end
  return {
    case_id = row.id, user_id = row.user_id, organization_id = row.organization_id,
    title = row.title, description = row.description, state = row.state, stage = n(row.stage),
    source = row.source, closure_reason = n(row.closure_reason),
    current_turn = int(row.current_turn), turns_without_progress = int(row.turns_without_progress),
    is_terminal = M.TERMINAL[row.state] == true, created_at = row.created_at,
    updated_at = row.updated_at, last_activity_at = row.last_activity_at,
    resolved_at = n(row.resolved_at), closed_at = n(row.closed_at),
    valid_next_states = arr(next_states), shared_team_ids = arr(),
    archived = int(row.archived) == 1, version = int(row.version),
  }
end

local function count(sql, id)
  return int(check(db.query(sql, id))[1].n)
end

function M.detail(row)
  local d = M.summary(row)
  d.stage = nil
  d.current_stage = n(row.stage)
  d.escalated = int(row.escalated) == 1
  local done = json.decode(row.milestones or "[]") or {}
  local seen = {}
  for _, m in ipairs(done) do seen[m] = true end
  local pending = {}
  for _, m in ipairs(M.MILESTONES) do if not seen[m] then pending[#pending + 1] = m end end
  d.milestones_completed = arr(done)
  d.pending_milestones = arr(pending)
  d.evidence_count = count("SELECT COUNT(*) AS n FROM evidence WHERE case_id = ?", row.id)
  d.hypothesis_count = count("SELECT COUNT(*) AS n FROM hypotheses WHERE case_id = ?", row.id)
  d.solution_count = count("SELECT COUNT(*) AS n FROM solutions WHERE case_id = ?", row.id)
  return d
end

function M.message(row)
  return { message_id = row.id, role = row.role, content = row.content,
           turn_number = int(row.turn_number), created_at = row.created_at,
           author_id = n(row.author_id), token_count = n(row.token_count and int(row.token_count)),
           metadata = row.metadata and json.decode(row.metadata) or nil }
end

-- ---- reading --------------------------------------------------------------------------------

--- The caller's case or a 404.
function M.get_row(user, id)
  -- ids are made here: anything else (bad UTF-8 included) cannot name a case
  if type(id) ~= "string" or #id > 64 or not id:match("^case_%x+$") then
    errors.raise(404, "case not found")
  end
  local row = check(db.query("SELECT * FROM cases WHERE id = ? AND user_id = ?", id, user.id))[1]
  if not row then errors.raise(404, "case not found") end
  return row
end

--- Paging from ?limit&offset or ?page&page_size (the dashboard). max: the largest page.
function M.paging(q, default, max)
  local function num(name)
    local v = q[name]
    if v == nil or v == "" then return nil end
    local x = math.tointeger(tonumber(v))
    if not x then invalid({ "query", name }, "must be an integer", "type_error.integer") end
    return x
  end
  local limit, offset = num("limit"), num("offset")
  local page, size = num("page"), num("page_size")
  if size and not limit then limit = size end
  limit = limit or default
  if limit < 1 or limit > max then invalid({ "query", "limit" }, "must be 1 to " .. max) end
  if page and not offset then
    if page < 1 then invalid({ "query", "page" }, "must be >= 1") end
    offset = (page - 1) * limit
  end
  offset = offset or 0
  if offset < 0 then invalid({ "query", "offset" }, "must be >= 0") end
  return limit, offset
end

local function bool_param(q, name)
  local v = q[name]
  if v == nil or v == "" then return false end
  v = v:lower()
  if v == "true" or v == "1" or v == "yes" then return true end
  if v == "false" or v == "0" or v == "no" then return false end
  invalid({ "query", name }, "must be a boolean", "type_error.bool")
end

--- CaseListResponse and the total.
function M.list(user, q)
  local limit, offset = M.paging(q, 50, 100)
  local where, args = { "user_id = ?" }, { user.id }
  if q.state and q.state ~= "" then
    if not M.STATES[q.state] then
      invalid({ "query", "state" }, "must be one of inquiry, investigating, resolved, closed",
        "type_error.enum")
    end
    where[#where + 1] = "state = ?"
    args[#args + 1] = q.state
  end
  if q.source and q.source ~= "" then
    if #q.source > 64 or not utf8.len(q.source) then
      invalid({ "query", "source" }, "at most 64 characters of UTF-8")
    end
    where[#where + 1] = "source = ?"
    args[#args + 1] = q.source
  end
  if not bool_param(q, "include_archived") then where[#where + 1] = "archived = 0" end
  local w = table.concat(where, " AND ")
  local total = int(check(db.query("SELECT COUNT(*) AS n FROM cases WHERE " .. w,
    table.unpack(args)))[1].n)
  args[#args + 1] = limit
  args[#args + 1] = offset
  local rows = check(db.query("SELECT * FROM cases WHERE " .. w
    .. " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", table.unpack(args)))
  local out = arr()
  for i, r in ipairs(rows) do out[i] = M.summary(r) end
  return { cases = out, total_count = total, limit = limit, offset = offset,
           has_more = offset + #out < total }
end

-- LIKE pattern for a user's text: % and _ are literal.
local function like(s) return "%" .. s:lower():gsub("[\\%%_]", "\\%0") .. "%" end

function M.search(user, body)
  if type(body) ~= "table" then invalid({ "body" }, "a JSON object is required", "type_error") end
  local query = body.query
  if type(query) ~= "string" then
    invalid({ "body", "query" }, "field required", "value_error.missing")
  end
  if #query > 1000 then invalid({ "body", "query" }, "at most 1000 characters") end
  local limit = body.limit == nil and 20 or math.tointeger(body.limit)
  if not limit or limit < 1 or limit > 100 then invalid({ "body", "limit" }, "must be 1 to 100") end
  local sql = "SELECT * FROM cases WHERE user_id = ? AND (LOWER(title) LIKE ? ESCAPE '\\' "
    .. "OR LOWER(description) LIKE ? ESCAPE '\\')"
  local args = { user.id, like(query), like(query) }
  if body.state ~= nil and body.state ~= null then
    if not M.STATES[body.state] then
      invalid({ "body", "state" }, "not a case state", "type_error.enum")
    end
    sql = sql .. " AND state = ?"
    args[#args + 1] = body.state
  end
  args[#args + 1] = limit
  local rows = check(db.query(sql .. " ORDER BY last_activity_at DESC, id DESC LIMIT ?",
    table.unpack(args)))
  local out = arr()
  for i, r in ipairs(rows) do out[i] = M.summary(r) end
  return out
end

function M.messages(user, id, q)
  M.get_row(user, id)
  local limit, offset = M.paging(q, 50, 100)
  local total = count("SELECT COUNT(*) AS n FROM case_messages WHERE case_id = ?", id)
  local rows = check(db.query("SELECT * FROM case_messages WHERE case_id = ? "
    .. "ORDER BY created_at, turn_number, CASE role WHEN 'user' THEN 0 ELSE 1 END, id "
    .. "LIMIT ? OFFSET ?", id, limit, offset))
  local out = arr()
  for i, r in ipairs(rows) do out[i] = M.message(r) end
  local more = offset + #out < total
  return { messages = out, total_count = total, retrieved_count = #out, has_more = more,
           next_offset = more and (offset + #out) or null }
end

-- ---- writing --------------------------------------------------------------------------------

local function opt_string(body, name, max)
  local v = body[name]
  if v == nil or v == null then return nil end
  if type(v) ~= "string" then invalid({ "body", name }, "must be a string", "type_error.str") end
  if #v > max then invalid({ "body", name }, "at most " .. max .. " characters") end
  -- PostgreSQL text cannot hold NUL; refused on every backend alike
  if v:find("\0", 1, true) then invalid({ "body", name }, "must not contain NUL characters") end
  return v
end

-- Case-YYMMDD-N: N counts the user's default titles of that UTC day, from 1, with a counter row
-- (an upsert both databases share), so it never repeats. Runs inside the create's transaction.
local function default_title(user, now_iso)
  local day = now_iso:sub(1, 10)
  local res = check(db.exec("INSERT INTO case_title_counters (user_id, day, n) VALUES (?, ?, 1) "
    .. "ON CONFLICT (user_id, day) DO UPDATE SET n = case_title_counters.n + 1 RETURNING n",
    user.id, day))
  return string.format("Case-%s%s%s-%d", day:sub(3, 4), day:sub(6, 7), day:sub(9, 10),
    int(res.last_id))
end

local function insert_case(user, fields)
  if not db.in_transaction() then -- the title counter and the case: both or neither
    local row
    db.transaction(function() row = insert_case(user, fields) end)
    return row
  end
  local t = time.iso8601()
  local id = "case_" .. crypto.random_hex(12)
  local title = fields.title
  if not title or not title:find("%S") then title = default_title(user, t) end
  check(db.exec("INSERT INTO cases (id, user_id, organization_id, title, description, state, "
    .. "source, session_id, created_at, updated_at, last_activity_at) "
    .. "VALUES (?, ?, ?, ?, ?, 'inquiry', ?, ?, ?, ?, ?)", id, user.id, user.organization_id,
    title, fields.description or "", fields.source, fields.session_id, t, t, t))
  if fields.initial_message then
    check(db.exec("INSERT INTO case_messages (id, case_id, turn_number, role, content, author_id, "
      .. "created_at) VALUES (?, ?, 0, 'user', ?, ?, ?)", "msg_" .. crypto.random_hex(12), id,
      fields.initial_message, user.id, t))
  end
  return check(db.query("SELECT * FROM cases WHERE id = ?", id))[1]
end

M.IDEMPOTENCY_KEY = idempotency.PATTERN

local hex = crypto.hex

--- Creates a case from CaseCreateRequest. Returns status, body, headers.
-- idem: the Idempotency-Key header or nil; raw: the request body text (its hash is the identity
-- of the request for the key).
function M.create(user, body, idem, raw)
  if type(body) ~= "table" or json.is_array(body) then
    invalid({ "body" }, "a JSON object is required", "type_error")
  end
  local fields = {
    title = opt_string(body, "title", 200),
    description = opt_string(body, "description", 20000),
    initial_message = opt_string(body, "initial_message", 100000),
    session_id = opt_string(body, "session_id", 128),
    source = "api", -- not the client's to choose (the contract's request has no source)
  }
  if not idem then return 201, M.summary(insert_case(user, fields)) end
  idempotency.validate(idem)
  return idempotency.run_in_transaction(user, idem, "POST /api/v1/cases",
    hex(crypto.sha256(raw or "")), function()
      return 201, json.encode(M.summary(insert_case(user, fields))),
        { ["Content-Type"] = "application/json" }
    end)
end

--- PUT: CaseUpdateRequest; version from body.version or If-Match. Returns the new CaseDetail.
function M.update(user, id, body, if_match)
  if type(body) ~= "table" or json.is_array(body) then
    invalid({ "body" }, "a JSON object is required", "type_error")
  end
  local row = M.get_row(user, id)
  local want = body.version
  if want == nil and if_match then want = tonumber((if_match:gsub('^W/', ''):gsub('"', ''))) end
  if want ~= nil and want ~= null and not math.tointeger(want) then
    invalid({ "body", "version" }, "must be an integer", "type_error.integer")
  end
  want = want ~= null and math.tointeger(want) or nil
  local version = int(row.version)
  local conflict = { ["x-error-code"] = "CASE_VERSION_CONFLICT" }
  if want and want ~= version then
    errors.raise(409, string.format("case changed since version %d (now %d)", want, version),
      conflict)
  end
  local sets, args = {}, {}
  local title = opt_string(body, "title", 200)
  if title then
    if not title:find("%S") then invalid({ "body", "title" }, "must not be blank") end
    sets[#sets + 1] = "title = ?"
    args[#args + 1] = title
  end
  local desc = opt_string(body, "description", 20000)
  if desc then
    sets[#sets + 1] = "description = ?"
    args[#args + 1] = desc
  end
  local state = body.state
  local t = time.iso8601()
  if state ~= nil and state ~= null and state ~= row.state then
    if type(state) ~= "string" or not M.STATES[state] then
      invalid({ "body", "state" }, "must be one of inquiry, investigating, resolved, closed",
        "type_error.enum")
    end
    if M.TERMINAL[row.state] then
      errors.raise(409, "case is " .. row.state .. ": its state cannot change",
        { ["x-error-code"] = "CASE_TERMINAL" })
    end
    local allowed = false
    for _, s in ipairs(M.NEXT[row.state]) do if s == state then allowed = true end end
    if not allowed then
      invalid({ "body", "state" }, string.format("cannot go from %s to %s (allowed: %s)",
        row.state, state, table.concat(M.NEXT[row.state], ", ")))
    end
    sets[#sets + 1] = "state = ?"
    args[#args + 1] = state
    if state == "investigating" then sets[#sets + 1] = "stage = 'diagnosis'" end
    if state == "resolved" then sets[#sets + 1] = "resolved_at = ?"; args[#args + 1] = t end
    if state == "closed" then
      sets[#sets + 1] = "closed_at = ?"
      args[#args + 1] = t
      local reason = body.closure_reason
      if reason ~= nil and reason ~= null then
        if not M.CLOSURE_REASONS[reason] then
          invalid({ "body", "closure_reason" }, "must be one of inquiry_only, solution_deferred, "
            .. "closed_rca_infeasible, mitigation_sufficient, closed_insufficient_evidence",
            "type_error.enum")
        end
        sets[#sets + 1] = "closure_reason = ?"
        args[#args + 1] = reason
      end
    end
  end
  sets[#sets + 1] = "updated_at = ?"
  args[#args + 1] = t
  sets[#sets + 1] = "version = version + 1"
  args[#args + 1] = id
  args[#args + 1] = user.id
  args[#args + 1] = version
  local res = check(db.exec("UPDATE cases SET " .. table.concat(sets, ", ")
    .. " WHERE id = ? AND user_id = ? AND version = ?", table.unpack(args)))
  if (res.changes or 0) ~= 1 then
    errors.raise(409, "case was changed by another request; reload it and retry", conflict)
  end
  return M.detail(M.get_row(user, id))
end

function M.delete(user, id)
  M.get_row(user, id)
  check(db.exec("DELETE FROM cases WHERE id = ? AND user_id = ?", id, user.id))
end

function M.set_archived(user, id, archived)
  M.get_row(user, id)
  check(db.exec("UPDATE cases SET archived = ?, updated_at = ?, version = version + 1 "
    .. "WHERE id = ? AND user_id = ?", archived and 1 or 0, time.iso8601(), id, user.id))
  return M.summary(M.get_row(user, id))
end

M.CATEGORIES = {}
for c in ("code config environment network data database hardware security external human "
  .. "other"):gmatch("%a+") do M.CATEGORIES[c] = true end
local CATEGORIES = M.CATEGORIES

-- ---- the investigation views (TurnResponse, GET /ui) ------------------------------------------

local INDICATORS = { symptom_verified = true, root_cause_identified = true,
                     solution_proposed = true }
local MILESTONE_TEXT = {
  symptom_verified = "Confirm the symptom with evidence (logs, metrics, command output)",
  root_cause_identified = "Identify the root cause from the evidence",
  solution_proposed = "Propose a fix for the root cause",
  mitigation_accepted = "Accept a mitigation to stop the impact",
  mitigation_verified = "Verify that the mitigation stopped the impact",
  solution_accepted = "Accept the proposed fix",
  solution_verified = "Verify with fresh evidence that the fix removed the problem",
}

local function decode_obj(text)
  local v = type(text) == "string" and json.decode(text) or nil
  if type(v) ~= "table" or json.is_array(v) then return {} end
  return v
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(type(list) == "table" and list or {}) do s[v] = true end
  return s
end

-- The milestone this stage waits for next (nil outside an investigation or when all are done).
local function pending_milestone(stage, done)
  local order = { "symptom_verified", "root_cause_identified", "solution_proposed" }
  if stage == "mitigation" then
    order[#order + 1], order[#order + 2] = "mitigation_accepted", "mitigation_verified"
  else
    order[#order + 1], order[#order + 2] = "solution_accepted", "solution_verified"
  end
  for _, m in ipairs(order) do if not done[m] then return m end end
  return nil
end

--- The assurance of the case's stated root cause: nil, nil when none was stated; else a grade
-- and whether the conclusion claims more than the grade supports. Grades: "no_root" (no
-- validated hypothesis behind it), "mechanistic" (a validated hypothesis, its removal not yet
-- observed), "confirmed" (the fix was verified, or evidence shows the cause absent and the
-- problem gone). Overclaim: a conclusion of confidence >= 0.9 that is not "confirmed".
function M.assurance(case_id, inv, done)
  local rc = inv.root_cause
  if type(rc) ~= "table" then return nil, nil end
  local validated = check(db.query("SELECT item_key FROM hypotheses WHERE case_id = ? "
    .. "AND status = 'validated'", case_id))
  local grade
  if #validated == 0 then
    grade = "no_root"
  elseif done.solution_verified or done.mitigation_verified then
    grade = "confirmed"
  else
    grade = "mechanistic"
    local keys = {}
    for _, h in ipairs(validated) do if h.item_key then keys[h.item_key] = true end end
    for _, e in ipairs(check(db.query("SELECT data FROM evidence WHERE case_id = ? AND "
      .. "category = 'causal_absence_evidence'", case_id))) do
      for _, l in ipairs(decode_obj(e.data).hypotheses or {}) do
        if type(l) == "table" and keys[l.key] and l.stance ~= "against" then
          grade = "confirmed"
        end
      end
    end
  end
  if type(inv.cause_assurance) == "string" then grade = inv.cause_assurance end
  return grade, (tonumber(rc.confidence) or 0) >= 0.9 and grade ~= "confirmed"
end

--- {progress_transparency, cause_assurance, cause_overclaim} of a case (JSON nulls where
-- nothing applies).
function M.investigation_view(case_id, state, stage, milestones, inv)
  local done = set_of(milestones)
  local grade, overclaim = M.assurance(case_id, inv, done)
  local active = state == "investigating"
  local pending = active and pending_milestone(stage, done) or nil
  local repair = (stage == "mitigation" and "mitigation")
    or (stage == "treatment" and "solution") or nil
  local verification
  if repair then
    local v, a = repair .. "_verified", repair .. "_accepted"
    if repair == "solution" then v, a = "solution_verified", "solution_accepted" end
    verification = done[v] and "verified" or done[a] and "awaiting_verification"
      or "not_started"
  elseif done.solution_verified then
    verification = "verified"
  end
  return {
    progress_transparency = { active = active, cause_assurance = n(grade),
      milestone_description = n(pending and MILESTONE_TEXT[pending]),
      pending_milestone = n(pending), repair_type = n(repair),
      verification_status = n(verification) },
    cause_assurance = n(grade), cause_overclaim = n(overclaim),
  }
end

local function iso_epoch(s)
  local y, mo, d, h, mi, sec = tostring(s or ""):match("^(%d+)%-(%d+)%-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  -- os.time reads a local time: the offset of the epoch in this zone corrects it to UTC
  local t = os.time({ year = y, month = mo, day = d, hour = h, min = mi, sec = sec })
  local off = os.time(os.date("!*t", 0)) -- local seconds at the epoch's UTC wall clock
  return t - off
end

local function hypothesis_rows(case_id)
  local out = {}
  for i, r in ipairs(check(db.query("SELECT * FROM hypotheses WHERE case_id = ? "
    .. "ORDER BY confidence DESC, created_at, id", case_id))) do
    r.d = decode_obj(r.data)
    out[i] = r
  end
  return out
end

local function evidence_count_of(h)
  local function len(t) return type(t) == "table" and #t or 0 end
  return len(h.d.evidence_for) + len(h.d.evidence_against)
end

-- The labels of the suggested actions of the case's last answer.
local function next_actions(case_id)
  local m = check(db.query("SELECT metadata FROM case_messages WHERE case_id = ? AND "
    .. "role = 'assistant' ORDER BY turn_number DESC, created_at DESC LIMIT 1", case_id))[1]
  local out = {}
  for _, a in ipairs(decode_obj(m and m.metadata).suggested_actions or {}) do
    if type(a) == "table" and type(a.label) == "string" then out[#out + 1] = a.label end
  end
  return arr(out)
end

local function latest_evidence(case_id, limit)
  local rows = check(db.query("SELECT e.*, f.filename AS f_filename FROM evidence e LEFT JOIN "
    .. "uploaded_files f ON f.id = e.file_id WHERE e.case_id = ? ORDER BY e.turn_number DESC, "
    .. "e.created_at DESC, e.id LIMIT ?", case_id, limit))
  local out = {}
  for i, e in ipairs(rows) do
    local links = decode_obj(e.data).hypotheses
    out[i] = { evidence_id = e.id, category = e.category, collected_at_turn = int(e.turn_number),
               relevance_score = (type(links) == "table" and #links > 0) and 1.0 or 0.5,
               source_filename = n(e.f_filename), summary = e.summary or "",
               timestamp = e.created_at, type = e.source_type }
  end
  return arr(out)
end

--- The CaseUIResponse of a case: _Inquiry, _Investigating or _Resolved (resolved and closed),
-- chosen by its state.
function M.ui(row)
  local inv = decode_obj(row.investigation)
  local milestones = json.decode(row.milestones or "[]") or {}
  local done = set_of(milestones)
  local next_states = {}
  for _, s in ipairs(M.NEXT[row.state] or {}) do next_states[#next_states + 1] = s end
  local ui = {
    case_id = row.id, created_at = row.created_at, current_turn = int(row.current_turn),
    title = row.title, updated_at = row.updated_at, state = row.state,
    uploaded_files_count = count("SELECT COUNT(*) AS n FROM uploaded_files WHERE case_id = ?",
      row.id),
    valid_next_states = arr(next_states),
  }
  local statement = inv.problem_statement or inv.proposed_problem_statement
  if row.state == "inquiry" then
    ui.inquiry = {
      decided_to_investigate = inv.problem_confirmed == true,
      inquiry_turns = math.tointeger(inv.inquiry_turns) or int(row.current_turn),
      problem_confirmation = {
        problem_statement_confirmed = inv.problem_confirmed == true,
        proposed_problem_statement = n(inv.proposed_problem_statement or inv.problem_statement),
      },
    }
    return ui
  end
  local hyps = hypothesis_rows(row.id)
  local total_evidence = count("SELECT COUNT(*) AS n FROM evidence WHERE case_id = ?", row.id)
  if row.state == "investigating" then
    local active, n_active = {}, 0
    for _, h in ipairs(hyps) do
      if h.status ~= "retired" then
        active[#active + 1] = { hypothesis_id = h.id, text = h.statement, state = h.status,
          likelihood = tonumber(h.confidence) or 0, evidence_count = evidence_count_of(h),
          refutation_reason = n(h.d.refutation_reason) }
      end
      if h.status == "active" or h.status == "captured" or h.status == "validated" then
        n_active = n_active + 1
      end
    end
    local indicators, gates = {}, {}
    for _, m in ipairs(milestones) do
      if INDICATORS[m] then indicators[#indicators + 1] = m else gates[#gates + 1] = m end
    end
    local view = M.investigation_view(row.id, row.state, row.stage, milestones, inv)
    local wc = inv.working_conclusion
    local pending = type(inv.pending_transition) == "table"
    ui.active_hypotheses = arr(active)
    ui.agent_status = pending and "awaiting_confirmation"
      or (view.progress_transparency.pending_milestone ~= null and "investigating")
      or "awaiting_user"
    ui.latest_evidence = latest_evidence(row.id, 5)
    ui.next_actions = next_actions(row.id)
    ui.problem_statement = n(statement)
    ui.progress = { active_hypotheses = n_active, completed_indicators = arr(indicators),
      completed_stage_gates = arr(gates), current_stage = row.stage or "diagnosis",
      total_evidence = total_evidence,
      turns_without_progress = int(row.turns_without_progress) }
    ui.working_conclusion = type(wc) == "table" and {
      summary = tostring(wc.summary or ""), confidence = tonumber(wc.confidence) or 0,
      last_updated = wc.last_updated or row.updated_at } or null
    ui.progress_transparency = view.progress_transparency
    return ui
  end
  -- resolved or closed
  local ended = row.resolved_at or row.closed_at or row.updated_at
  local grade, overclaim = M.assurance(row.id, inv, done)
  local rc = type(inv.root_cause) == "table" and inv.root_cause or nil
  local tested = 0
  for _, h in ipairs(hyps) do
    if h.status ~= "captured" and h.status ~= "active" then tested = tested + 1 end
  end
  local sol = check(db.query("SELECT * FROM solutions WHERE case_id = ? ORDER BY "
    .. "CASE status WHEN 'verified' THEN 0 WHEN 'applied' THEN 1 WHEN 'accepted' THEN 2 "
    .. "ELSE 3 END, updated_at DESC, id LIMIT 1", row.id))[1]
  local sd = sol and decode_obj(sol.data) or {}
  local applied = sol and (sol.status == "applied" or sol.status == "verified")
  local insights = {}
  if rc and type(rc.description) == "string" then insights[#insights + 1] = rc.description end
  if applied then insights[#insights + 1] = "Fix applied: " .. (sd.title or sol.description) end
  if row.closure_reason then insights[#insights + 1] = "Closed: " .. row.closure_reason end
  local t0, t1 = iso_epoch(row.created_at), iso_epoch(ended)
  ui.problem_statement = n(statement)
  ui.resolved_at = ended
  ui.resolution_summary = {
    evidence_collected = total_evidence, hypotheses_tested = tested,
    key_insights = arr(insights), milestones_completed = #milestones,
    total_duration_minutes = (t0 and t1) and math.max(0, (t1 - t0) // 60) or 0,
  }
  ui.root_cause = {
    root_cause_id = rc and tostring(rc.root_cause_id or rc.hypothesis or "rc_" .. row.id)
      or "none",
    description = rc and tostring(rc.description or "") or "no root cause was identified",
    category = rc and CATEGORIES[rc.category] and rc.category or "other",
    severity = rc and tostring(rc.severity or "medium") or "unknown",
    cause_assurance = grade or "no_root", cause_overclaim = overclaim == true,
  }
  ui.solution_applied = {
    description = applied and (sd.title or sol.description) or "no solution was applied",
    applied_at = applied and sol.updated_at or ended,
    applied_by = applied and row.user_id or "",
  }
  -- the fix is verified by evidence collected after it that shows the problem gone
  local verified = done.solution_verified == true
    or (row.state == "closed" and done.mitigation_verified == true)
  local proof = verified and check(db.query("SELECT e.turn_number, f.filename AS f_filename "
    .. "FROM evidence e LEFT JOIN uploaded_files f ON f.id = e.file_id WHERE e.case_id = ? AND "
    .. "e.category IN ('symptom_absence_evidence', 'causal_absence_evidence') "
    .. "ORDER BY e.turn_number DESC, e.created_at DESC LIMIT 1", row.id))[1]
  local details
  if verified then
    details = (done.solution_verified and "the fix" or "the mitigation")
      .. " was verified: evidence collected after it shows the problem gone"
    if proof then
      details = details .. string.format(" (%s, turn %d)", proof.f_filename or "evidence",
        int(proof.turn_number))
    end
  elseif row.state == "closed" then
    details = "closed without a verified fix (" .. tostring(row.closure_reason
      or "no reason given") .. ")"
  else
    details = "not verified"
  end
  ui.verification_status = { verified = verified,
    verification_method = verified and "evidence_recheck" or "none", details = details }
  return ui
end

-- ---- titles ---------------------------------------------------------------------------------

local STOP = {}
for w in ("a an the is are was were be been of to in on at for with and or but my our your "
  .. "this that it its i we you me us please help can could would should how why what when "
  .. "where do does did not no"):gmatch("%a+") do STOP[w] = true end

--- A title from text, the same for the same text: the first sentence's significant words.
function M.heuristic_title(text, max_words)
  max_words = max_words or 8
  local sentence = (text or ""):match("^%s*([^%.%?!\n]+)") or ""
  local words = {}
  for w in sentence:gmatch("[%w][%w%-_/%.:]*") do
    if not STOP[w:lower()] then words[#words + 1] = w end
    if #words >= max_words then break end
  end
  if #words == 0 then return nil end
  local t = table.concat(words, " ")
  return (t:gsub("^%l", string.upper))
end

--- A title from a problem statement: its first sentence without parenthetical asides, cut to
-- max_words words (filler words kept inside, dropped at the end).
function M.statement_title(text, max_words)
  max_words = max_words or 8
  local s = tostring(text or ""):gsub("%b()", ""):gsub("%b[]", ""):gsub("%s+([,:;])", "%1")
  local sentence = s:match("^%s*(.-)%.%s") or s:match("^%s*(.-)%.?%s*$") or ""
  sentence = sentence:match("^[^\n]*")
  local words = {}
  for w in sentence:gmatch("%S+") do
    words[#words + 1] = w
    if #words >= max_words then break end
  end
  while #words > 1 and STOP[words[#words]:lower():gsub("%p+$", "")] do words[#words] = nil end
  if #words == 0 then return nil end
  local t = table.concat(words, " "):gsub("[%s%p]+$", "")
  if t == "" then return nil end
  return (t:gsub("^%l", string.upper))
end

function M.title(user, id, body, force)
  local row = M.get_row(user, id)
  body = type(body) == "table" and body or {}
  local max_words = body.max_words
  if max_words ~= nil and max_words ~= null then
    max_words = math.tointeger(max_words)
    if not max_words or max_words < 1 or max_words > 20 then
      invalid({ "body", "max_words" }, "must be 1 to 20")
    end
  else
    max_words = 8
  end
  local auto = row.title:match("^Case%-%d%d%d%d%d%d%-%d+$") ~= nil
  if not auto and not force then return row.title, "existing" end
  -- the case's own account of its problem first: the problem statement (confirmed, else
  -- proposed), then the client's hint, the description, the first thing the user wrote
  local inv = decode_obj(row.investigation)
  local statement = inv.problem_statement or inv.proposed_problem_statement
  local title, how
  if type(statement) == "string" then
    title, how = M.statement_title(statement, max_words), "problem_statement"
  end
  if not title then
    local first
    for _, m in ipairs(check(db.query("SELECT content FROM case_messages WHERE case_id = ? AND "
      .. "role = 'user' ORDER BY turn_number, created_at, id LIMIT 20", id))) do
      if not m.content:match("^%s*%[") then first = m.content break end
    end
    local hint = type(body.hint) == "string" and body.hint or nil
    title, how = M.heuristic_title(hint or row.description ~= "" and row.description
      or first, max_words), "heuristic"
  end
  if not title then return row.title, "existing" end
  check(db.exec("UPDATE cases SET title = ?, updated_at = ?, version = version + 1 WHERE id = ? "
    .. "AND user_id = ?", title, time.iso8601(), id, user.id))
  return title, how
end

return M
