-- fm.services.cases: cases and their messages, scoped to one user (another user's case does not
-- exist: 404). Every write that can race is guarded: updates carry the version they read
-- (optimistic concurrency, 409 CASE_VERSION_CONFLICT), creates with an Idempotency-Key run in one
-- transaction with the key's row.
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local idempotency = require "fm.services.idempotency"
local json = require "fm.json"
local time = require "fm.time"

local M = {}

local null = json.null
local array_mt = json.array_mt

M.STATES = { inquiry = true, investigating = true, resolved = true, closed = true }
M.TERMINAL = { resolved = true, closed = true }
-- The contract's lifecycle: inquiry -> investigating -> resolved | closed; inquiry may go straight
-- to resolved or closed.
M.NEXT = { inquiry = { "investigating", "resolved", "closed" },
           investigating = { "resolved", "closed" }, resolved = {}, closed = {} }
M.CLOSURE_REASONS = { inquiry_only = true, solution_deferred = true,
                      closed_rca_infeasible = true, mitigation_sufficient = true,
                      closed_insufficient_evidence = true }
M.MILESTONES = { "symptom_verified", "root_cause_identified", "solution_proposed",
                 "mitigation_accepted", "mitigation_verified", "solution_accepted",
                 "solution_verified" }

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
  local first = check(db.query("SELECT content FROM case_messages WHERE case_id = ? AND "
    .. "role = 'user' ORDER BY created_at, id LIMIT 1", id))[1]
  local hint = type(body.hint) == "string" and body.hint or nil
  local title = M.heuristic_title(hint or row.description ~= "" and row.description
    or (first and first.content), max_words)
  if not title then return row.title, "existing" end
  check(db.exec("UPDATE cases SET title = ?, updated_at = ?, version = version + 1 WHERE id = ? "
    .. "AND user_id = ?", title, time.iso8601(), id, user.id))
  return title, "heuristic"
end

return M
