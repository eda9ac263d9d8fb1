-- fm.services.turns: POST /api/v1/cases/{id}/turns (API.md Tier 1): one turn of an
-- investigation.
--
-- A turn is a multipart form (or, for curl users, a JSON object) with at most one file, pasted
-- content, a query, an intent and the contract's other fields. In order: the case (404, 409
-- CASE_TERMINAL), the input (422s, 413, 415), the Idempotency-Key (fm.services.idempotency), the
-- case's turn lock (one turn of a case at a time: 409 TURN_IN_PROGRESS), the evidence analysed
-- and stored (fm.services.uploads, outside any transaction, its ids chosen first), the agent
-- (fm.agent.turn, outside any transaction, at most AGENT_REQUEST_TIMEOUT: else 504
-- REQUEST_TIMEOUT and nothing of the turn is kept), then ONE transaction: the turn counter, the
-- upload rows, the user's message and the answer, the agent's TurnOutput applied (case state,
-- stage, milestones, investigation JSON, hypotheses, solutions, evidence classification), the
-- lock released and the key's answer stored. A failure anywhere releases the lock and the key
-- and removes the stored objects; a lock left by a worker that died goes stale after
-- AGENT_REQUEST_TIMEOUT + M.LOCK_MARGIN_S.
local cases = require "fm.services.cases"
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local idempotency = require "fm.services.idempotency"
local json = require "fm.json"
local output = require "fm.agent.output"
local log = require "fm.log"
local settings = require "fm.settings"
local time = require "fm.time"
local uploads = require "fm.services.uploads"
local check = require "fm.db.check"

local M = {}

local null = json.null
local array_mt = json.array_mt
local function arr(t)
  if t and json.is_array(t) then return t end -- decoded arrays are marked already
  return setmetatable(t or {}, array_mt)
end
local function int(v) return math.tointeger(tonumber(v)) or 0 end

M.INPUT_TYPES = { file = true, page_capture = true, paste = true }
M.INTENT_TYPES = { conversation = true, status_transition = true, confirmation = true,
                   hypothesis_action = true }
M.QUERY_MAX = 100000
M.FIELD_MAX = 4096
M.ROUTE = "POST /api/v1/cases/{case_id}/turns"

local TEXT_FIELDS = { "query", "pasted_content", "intent_type", "intent_data", "input_type",
                      "source_url", "observed_at" }

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

-- A spooled text part (large pasted content) is read only when it is small enough for its field.
local function part_text(p, name, max)
  if p.value then
    if #p.value > max then invalid({ "body", name }, "at most " .. max .. " bytes") end
    return p.value
  end
  if p.size > max then invalid({ "body", name }, "at most " .. max .. " bytes") end
  local f = assert(io.open(p.file, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- True for an ISO 8601 date-time: YYYY-MM-DD[T ]hh:mm[:ss[.fff]] with Z or an offset (or none).
function M.is_iso8601(v)
  local y, mo, d, h, mi, rest = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d)(.*)$")
  if not y then return false end
  local sec, tail = rest:match("^:(%d%d)(.*)$")
  if sec then
    rest = tail:match("^%.%d+(.*)$") or tail
    if tonumber(sec) > 60 then return false end
  end
  if not (rest == "" or rest == "Z" or rest == "z" or rest:match("^[+-]%d%d:?%d%d$")) then
    return false
  end
  mo, d, h, mi = tonumber(mo), tonumber(d), tonumber(h), tonumber(mi)
  return tonumber(y) >= 1970 and mo >= 1 and mo <= 12 and d >= 1 and d <= 31 and h <= 23
    and mi <= 59
end

--- The turn's input from the request: {query, pasted (text) or pasted_file (a spooled part),
-- file (a part with a filename), input_type, intent_type, intent_data, source_url,
-- observed_at}. Raises the contract's 422s.
function M.parse(req)
  local input, seen = {}, {}
  if req.form then
    for _, p in ipairs(req.form) do
      if p.filename ~= nil or p.name == "files" or p.name == "file" then
        if p.name ~= "files" and p.name ~= "file" then
          invalid({ "body", p.name }, "only the files field may carry a file")
        end
        if input.file then invalid({ "body", "files" }, "at most one file per turn") end
        input.file = p
      elseif seen[p.name] then
        invalid({ "body", p.name }, "given more than once")
      else
        seen[p.name] = true
        if p.name == "pasted_content" then
          local limit = uploads.max_bytes()
          if p.size > limit then
            errors.raise(413, string.format("pasted_content is larger than %d MB "
              .. "(MAX_UPLOAD_SIZE_MB)", limit // (1024 * 1024)))
          end
          if p.file then input.pasted_file = p else input.pasted = p.value end
        elseif p.name == "query" then
          input.query = part_text(p, "query", M.QUERY_MAX)
        else
          input[p.name] = part_text(p, p.name, M.FIELD_MAX)
        end
      end
    end
  elseif req.json ~= nil then
    local b = req.json
    if type(b) ~= "table" or json.is_array(b) then
      invalid({ "body" }, "a JSON object or a multipart form is required", "type_error")
    end
    for _, name in ipairs(TEXT_FIELDS) do
      local v = b[name]
      if v ~= nil and v ~= null then
        if type(v) ~= "string" then
          invalid({ "body", name }, "must be a string", "type_error.str")
        end
        input[name] = v
      end
    end
    if input.query and #input.query > M.QUERY_MAX then
      invalid({ "body", "query" }, "at most " .. M.QUERY_MAX .. " bytes")
    end
    input.pasted, input.pasted_content = input.pasted_content, nil
    if input.pasted and #input.pasted > uploads.max_bytes() then
      errors.raise(413, "pasted_content is larger than MAX_UPLOAD_SIZE_MB")
    end
  else
    invalid({ "body" }, "a multipart form (or a JSON object) is required", "missing")
  end
  input.pasted_content = nil
  for _, name in ipairs({ "query", "intent_type", "input_type", "source_url", "observed_at",
                         "intent_data" }) do
    local v = input[name]
    if v ~= nil and not utf8.len(v) then invalid({ "body", name }, "must be valid UTF-8") end
    -- PostgreSQL text cannot hold NUL; refused on every backend alike
    if v ~= nil and v:find("\0", 1, true) then
      invalid({ "body", name }, "must not contain NUL characters")
    end
    if v ~= nil and not v:find("%S") then input[name] = nil end
  end
  if input.pasted == "" then input.pasted = nil end
  if input.input_type and not M.INPUT_TYPES[input.input_type] then
    invalid({ "body", "input_type" }, "must be one of file, page_capture, paste", "enum")
  end
  if input.intent_type and not M.INTENT_TYPES[input.intent_type] then
    invalid({ "body", "intent_type" },
      "must be one of conversation, status_transition, confirmation, hypothesis_action", "enum")
  end
  if input.intent_data then
    local d = json.decode(input.intent_data)
    if type(d) ~= "table" or json.is_array(d) then
      invalid({ "body", "intent_data" }, "must be a JSON object (as a string)", "json_invalid")
    end
    input.intent = d
  end
  if input.source_url then
    local url = input.source_url
    if #url > 2048 or not url:lower():match("^https?://[^%s]+$") then
      invalid({ "body", "source_url" }, "must be an http(s) URL of at most 2048 bytes")
    end
  end
  if input.observed_at then
    if not M.is_iso8601(input.observed_at) then
      invalid({ "body", "observed_at" }, "must be an ISO 8601 date-time")
    end
  end
  if input.file and input.file.size == 0 then
    invalid({ "body", "files" }, "the file is empty")
  end
  if not (input.query or input.pasted or input.pasted_file or input.file or input.intent
    or input.intent_type) then
    invalid({ "body" }, "a turn needs a query, a file, pasted content or an intent", "missing")
  end
  return input
end

-- SHA-256 and size of a part's content (a spooled file is read once, here; prepare reuses it).
local function content_sha(part)
  if not part.file then return crypto.sha256(part.value or ""), #(part.value or "") end
  local sha, size = crypto.sha256_file(part.file)
  if not sha then errors.raise(500, "cannot read the upload: " .. tostring(size)) end
  return sha, size
end

-- The identity of a turn request for its Idempotency-Key: every field, and the contents.
local function request_hash(input)
  local parts = {}
  for _, name in ipairs({ "query", "pasted", "input_type", "intent_type", "intent_data",
                         "source_url", "observed_at" }) do
    parts[#parts + 1] = name .. "=" .. tostring(input[name] or "")
  end
  if input.pasted_file then parts[#parts + 1] = "pasted_file=" .. crypto.hex(input.pasted_sha) end
  if input.file then
    parts[#parts + 1] = "file=" .. tostring(input.file.filename) .. ":"
      .. crypto.hex(input.file_sha)
  end
  return crypto.hex(crypto.sha256(table.concat(parts, "\0")))
end

-- What the case will hold as the user's message.
local function user_message(input, names)
  local text = input.query or ""
  if #names > 0 then
    text = text .. (text ~= "" and "\n\n" or "") .. "[attached: " .. table.concat(names, ", ")
      .. "]"
  end
  if text == "" and input.intent then
    text = "[" .. tostring(input.intent.type or "intent") .. "]"
  end
  return text
end

local function terminal(row)
  errors.raise(409, "the case is " .. row.state .. ": it takes no more turns",
    { ["x-error-code"] = "CASE_TERMINAL" })
end

-- ---- intents ----------------------------------------------------------------------------------

local INTENT_FIELDS = { type = "string", from_state = "string", to_state = "string",
                        user_confirmed = "boolean", hypothesis_id = "string", action = "string",
                        closure_reason = "string", reason = "string" }
local ACTIONS = { validate = true, refute = true, retire = true }

-- The intent's fields checked against the contract and the case (what can be refused before
-- anything runs is refused with a 422 naming the field). Returns the intent type (or nil).
local function check_intent(row, input)
  local d = input.intent
  local function bad(field, msg, typ)
    invalid({ "body", "intent_data", field }, msg, typ)
  end
  if not d then
    if input.intent_type == "hypothesis_action" or input.intent_type == "status_transition" then
      invalid({ "body", "intent_data" }, input.intent_type .. " needs intent_data", "missing")
    end
    return input.intent_type
  end
  for k, v in pairs(d) do
    local want = INTENT_FIELDS[k]
    if want and v ~= null and type(v) ~= want then bad(k, "must be a " .. want, "type_error") end
    if type(v) == "string" and (#v > 1000 or v:find("\0", 1, true)) then
      bad(k, "at most 1000 bytes, no NUL")
    end
  end
  local typ = d.type ~= null and d.type or nil
  if typ and not M.INTENT_TYPES[typ] then
    bad("type", "must be one of conversation, status_transition, confirmation, "
      .. "hypothesis_action", "enum")
  end
  if typ and input.intent_type and typ ~= input.intent_type then
    bad("type", "differs from intent_type")
  end
  typ = typ or input.intent_type
  if typ == "status_transition" then
    local to = d.to_state
    if type(to) ~= "string" then bad("to_state", "field required", "missing") end
    if not cases.STATES[to] then
      bad("to_state", "must be one of inquiry, investigating, resolved, closed", "enum")
    end
    local allowed = false
    for _, s in ipairs(cases.NEXT[row.state] or {}) do if s == to then allowed = true end end
    if not allowed then
      bad("to_state", string.format("cannot go from %s to %s (allowed: %s)", row.state, to,
        table.concat(cases.NEXT[row.state] or {}, ", ")))
    end
    if d.closure_reason ~= nil and d.closure_reason ~= null
      and not cases.CLOSURE_REASONS[d.closure_reason] then
      bad("closure_reason", "not a closure reason", "enum")
    end
  elseif typ == "hypothesis_action" then
    local hid = d.hypothesis_id
    if type(hid) ~= "string" then bad("hypothesis_id", "field required", "missing") end
    if type(d.action) ~= "string" or not ACTIONS[d.action] then
      bad("action", "must be one of validate, refute, retire", "enum")
    end
    local found = #hid <= 64 and hid:match("^hyp_%x+$") and check(db.query(
      "SELECT id FROM hypotheses WHERE id = ? AND case_id = ?", hid, row.id))[1]
    if not found then bad("hypothesis_id", "no such hypothesis on this case") end
  end
  return typ
end

-- ---- the turn lock ----------------------------------------------------------------------------

--- Seconds one turn's investigation may take (AGENT_REQUEST_TIMEOUT).
function M.timeout_s()
  return tonumber(settings.agent_request_timeout) or 120
end

-- A lock older than the timeout and this margin was left by a worker that died mid-turn.
M.LOCK_MARGIN_S = 60

local function busy()
  errors.raise(409, "another turn of this case is in progress; retry when it has finished",
    { ["x-error-code"] = "TURN_IN_PROGRESS", ["Retry-After"] = "2" })
end

-- Takes the case's turn lock (one statement: free or stale, else someone else's). Returns its
-- token; raises 409 TURN_IN_PROGRESS when another turn holds it.
local function lock(user, case_id)
  local token = "turn_" .. crypto.random_hex(12)
  local now = os.time()
  local stale = time.iso8601(now - math.ceil(M.timeout_s()) - M.LOCK_MARGIN_S)
  local res = check(db.exec("UPDATE cases SET turn_lock = ?, turn_started_at = ? WHERE id = ? "
    .. "AND user_id = ? AND (turn_lock IS NULL OR turn_started_at IS NULL OR "
    .. "turn_started_at < ?)", token, time.iso8601(now), case_id, user.id, stale))
  if (res.changes or 0) ~= 1 then
    cases.get_row(user, case_id) -- 404 when the case went away
    busy()
  end
  return token
end

local function unlock(case_id, token)
  local ok, err = pcall(db.exec, "UPDATE cases SET turn_lock = NULL, turn_started_at = NULL "
    .. "WHERE id = ? AND turn_lock = ?", case_id, token)
  if not ok then log.warn("turns: cannot release a turn lock: " .. tostring(err)) end
end

-- ---- the agent's state --------------------------------------------------------------------------

local function decode(text, default)
  if type(text) ~= "string" or text == "" then return default end
  local v = json.decode(text)
  if type(v) ~= "table" then return default end
  return v
end

--- The case's hypotheses as the agent sees them (contract section 7).
function M.hypotheses(case_id)
  local out = {}
  for i, r in ipairs(check(db.query("SELECT * FROM hypotheses WHERE case_id = ? "
    .. "ORDER BY created_at, id", case_id))) do
    local d = decode(r.data, {})
    out[i] = { id = r.id, key = r.item_key or d.key, playbook = d.playbook,
               statement = r.statement, category = r.category, state = r.status,
               likelihood = tonumber(r.confidence) or 0,
               evidence_for = arr(d.evidence_for), evidence_against = arr(d.evidence_against),
               refutation_reason = d.refutation_reason }
  end
  return out
end

--- The case's solutions and mitigations as the agent sees them.
function M.solutions(case_id)
  local out = {}
  for i, r in ipairs(check(db.query("SELECT * FROM solutions WHERE case_id = ? "
    .. "ORDER BY created_at, id", case_id))) do
    local d = decode(r.data, {})
    out[i] = { id = r.id, key = r.item_key or d.key, kind = d.kind or "solution",
               title = d.title or r.description, description = r.description,
               command = d.command, risk = d.risk, undo = d.undo, verify = d.verify,
               status = r.status, playbook = d.playbook }
  end
  return out
end

local function build_state(user, row, input, prepared, turn)
  local attachments, records, new_ids = {}, {}, {}
  for _, p in ipairs(prepared) do
    if p.duplicate then
      local ev = check(db.query("SELECT id FROM evidence WHERE file_id = ? ORDER BY created_at "
        .. "LIMIT 1", p.duplicate.id))[1]
      attachments[#attachments + 1] = { evidence_id = ev and ev.id, file_id = p.duplicate.id,
        filename = p.duplicate.filename, source_type = p.duplicate.source_type, duplicate = true }
    else
      attachments[#attachments + 1] = { evidence_id = p.evidence_id, file_id = p.id,
        filename = p.filename, source_type = p.source_type, duplicate = false }
      records[#records + 1] = { id = p.evidence_id, filename = p.filename,
        source_type = p.source_type, detailed_type = p.detailed_type, turn = turn,
        digest = p.digest or "", summary = p.analysis or "{}" }
      new_ids[#new_ids + 1] = p.evidence_id
    end
  end
  local ctx = require("fm.agent.case").context(row, { user = user, extra = records, turn = turn,
    query = input.query })
  return {
    case = { id = row.id, state = row.state, stage = row.stage, title = row.title,
             description = row.description, turn = turn,
             milestones = decode(row.milestones, {}),
             investigation = decode(row.investigation, {}) },
    hypotheses = M.hypotheses(row.id),
    solutions = M.solutions(row.id),
    message = { query = input.query, intent = input.intent, intent_type = input.intent_type,
                attachments = attachments },
    ctx = ctx,
    new_evidence_ids = new_ids,
    deadline = time.monotonic() + M.timeout_s(),
  }
end

-- ---- applying the agent's answer ----------------------------------------------------------------

local function str(v, max)
  if type(v) ~= "string" then return nil end
  if #v > max then
    v = v:sub(1, max)
    while #v > 0 and not utf8.len(v) do v = v:sub(1, -2) end
  end
  return v
end

-- What the agent returned, checked again where the database and the lifecycle depend on it
-- (types, enums, the transitions the user confirmed): a wrong output is the engine's bug (500),
-- never stored. Returns the case's new state.
local function check_output(out, state)
  local ok, errs = output.validate(out, state)
  if not ok then
    error("fm.agent.turn returned a bad TurnOutput: " .. table.concat(errs, "; "), 0)
  end
  return out.case.state or state.case.state
end

local function upsert_hypotheses(case_id, list, t)
  for _, h in ipairs(list) do
    local key = str(h.key, 160)
    local data = json.encode({ key = key, playbook = h.playbook,
      evidence_for = arr(h.evidence_for), evidence_against = arr(h.evidence_against),
      refutation_reason = h.refutation_reason })
    local category = h.category or "other"
    local likelihood = tonumber(h.likelihood)
    if likelihood then likelihood = math.max(0, math.min(1, likelihood)) end
    local state = h.state or "active"
    local res = check(db.exec("UPDATE hypotheses SET statement = ?, category = ?, status = ?, "
      .. "confidence = ?, data = ?, updated_at = ? WHERE case_id = ? AND item_key = ?",
      str(h.statement, 2000), category, state, likelihood, data, t, case_id, key))
    if (res.changes or 0) == 0 then
      check(db.exec("INSERT INTO hypotheses (id, case_id, statement, category, status, "
        .. "confidence, data, item_key, created_at, updated_at) "
        .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", "hyp_" .. crypto.random_hex(12), case_id,
        str(h.statement, 2000), category, state, likelihood, data, key, t, t))
    end
  end
end

local function upsert_solutions(case_id, list, t)
  for _, s in ipairs(list) do
    local key = str(s.key, 160)
    local data = json.encode({ key = key, kind = s.kind == "mitigation" and "mitigation"
      or "solution", title = str(s.title, 2000), command = str(s.command, 1000),
      risk = s.risk, undo = s.undo, verify = s.verify, playbook = s.playbook })
    local desc = str(s.description, 2000) or str(s.title, 2000)
    local status = s.status or "proposed"
    local res = check(db.exec("UPDATE solutions SET description = ?, status = ?, data = ?, "
      .. "updated_at = ? WHERE case_id = ? AND item_key = ?", desc, status, data, t, case_id,
      key))
    if (res.changes or 0) == 0 then
      check(db.exec("INSERT INTO solutions (id, case_id, description, status, data, item_key, "
        .. "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        "sol_" .. crypto.random_hex(12), case_id, desc, status, data, key, t, t))
    end
  end
end

local function classify_evidence(case_id, list)
  for _, e in ipairs(list) do
    local links = {}
    for _, l in ipairs(type(e.hypotheses) == "table" and e.hypotheses or {}) do
      if type(l) == "table" and type(l.key) == "string" then
        links[#links + 1] = { key = l.key, stance = l.stance == "against" and "against" or "for" }
      end
    end
    check(db.exec("UPDATE evidence SET category = COALESCE(?, category), data = ? "
      .. "WHERE id = ? AND case_id = ?", e.category, json.encode({ hypotheses = arr(links) }),
      e.evidence_id, case_id))
  end
end

-- ---- the turn ---------------------------------------------------------------------------------

local function timed_out()
  errors.raise(504, string.format("the investigation of this turn took longer than %g s "
    .. "(AGENT_REQUEST_TIMEOUT); nothing of it was stored: send it again", M.timeout_s()),
    { ["x-error-code"] = "REQUEST_TIMEOUT" })
end

local function prepare_all(user, row, input, prepared)
  if input.file then
    local name = uploads.display_name(input.file.filename)
    local p = uploads.prepare(user, row.id, {
      path = input.file.file, text = input.file.value, filename = name,
      content_type = input.file.content_type, sha256 = input.file_sha, size = input.file_size,
      upload_source = input.input_type == "page_capture" and "page_capture" or "file",
      source_url = input.source_url, observed_at = input.observed_at })
    p.display_name = name
    prepared[#prepared + 1] = p
  end
  if input.pasted or input.pasted_file then
    local name = input.input_type == "page_capture" and "page-capture.txt" or "pasted-content.txt"
    local p = uploads.prepare(user, row.id, {
      path = input.pasted_file and input.pasted_file.file, text = input.pasted,
      sha256 = input.pasted_sha, size = input.pasted_size, filename = name,
      content_type = "text/plain",
      upload_source = input.input_type == "page_capture" and "page_capture" or "paste",
      source_url = input.source_url, observed_at = input.observed_at })
    p.display_name = name
    prepared[#prepared + 1] = p
  end
end

-- The agent, outside any transaction. Returns its TurnOutput; raises 504 past the deadline.
local function investigate(state)
  local ok, agent = pcall(require, "fm.agent")
  if not ok then
    errors.raise(503, "the investigation engine is not available: " .. tostring(agent))
  end
  local out, why = agent.turn(state)
  if time.monotonic() > state.deadline or (out == nil and why == "timeout") then timed_out() end
  if out == nil and why == "terminal" then terminal(state.case) end
  if out == nil then error("fm.agent.turn failed: " .. tostring(why), 0) end
  return out
end

-- One transaction: the turn's rows and the agent's answer applied, the lock released.
local function store(user, row, input, prepared, state, out, token, idem)
  local status, body, headers
  db.transaction(function()
    local t = time.iso8601()
    local cur = check(db.query("UPDATE cases SET current_turn = current_turn + 1, "
      .. "version = version + 1, updated_at = ?, last_activity_at = ? WHERE id = ? AND "
      .. "user_id = ? AND turn_lock = ? RETURNING current_turn, state", t, t, row.id, user.id,
      token))[1]
    if not cur then
      cases.get_row(user, row.id)
      busy() -- the lock went stale and another turn took it: this one is not stored
    end
    if cases.TERMINAL[cur.state] then terminal(cur) end
    if cur.state ~= row.state then
      errors.raise(409, "the case changed state during the turn; send it again",
        { ["x-error-code"] = "CASE_VERSION_CONFLICT" })
    end
    local new_state = check_output(out, state)
    local turn = int(cur.current_turn)
    local names, results = {}, {}
    for _, p in ipairs(prepared) do
      if not p.duplicate then uploads.insert(p, turn) end
      names[#names + 1] = p.display_name
      results[#results + 1] = uploads.attachment(p)
    end
    local suggested = arr(type(out.suggested_actions) == "table" and out.suggested_actions)
    local meta = json.encode({ input_type = input.input_type, intent = input.intent,
      intent_type = input.intent_type, source_url = input.source_url,
      observed_at = input.observed_at, attachments = arr(results) })
    check(db.exec("INSERT INTO case_messages (id, case_id, turn_number, role, content, "
      .. "author_id, metadata, created_at) VALUES (?, ?, ?, 'user', ?, ?, ?, ?)",
      "msg_" .. crypto.random_hex(16), row.id, turn, user_message(input, names), user.id, meta, t))
    check(db.exec("INSERT INTO case_messages (id, case_id, turn_number, role, content, "
      .. "metadata, created_at) VALUES (?, ?, ?, 'assistant', ?, ?, ?)",
      "msg_" .. crypto.random_hex(16), row.id, turn, str(out.response, 65536),
      json.encode({ suggested_actions = suggested, playbook_report = out.playbook_report }), t))
    -- the case: what the agent returned (its state moves only as the user confirmed)
    local c = out.case
    local stage = c.stage ~= null and c.stage or nil
    if new_state == "investigating" and not stage then stage = "diagnosis" end
    local milestones = arr(type(c.milestones) == "table" and c.milestones or {})
    local inv = type(c.investigation) == "table" and c.investigation or {}
    local progress = out.progress_made == true
    check(db.exec("UPDATE cases SET state = ?, stage = ?, "
      .. "closure_reason = COALESCE(?, closure_reason), milestones = ?, "
      .. "investigation = ?, turns_without_progress = CASE WHEN ? = 1 THEN 0 ELSE "
      .. "turns_without_progress + 1 END, resolved_at = CASE WHEN ? = 'resolved' THEN "
      .. "COALESCE(resolved_at, ?) ELSE resolved_at END, closed_at = CASE WHEN ? = 'closed' "
      .. "THEN COALESCE(closed_at, ?) ELSE closed_at END, turn_lock = NULL, "
      .. "turn_started_at = NULL WHERE id = ?", new_state, stage,
      c.closure_reason ~= null and c.closure_reason or nil, json.encode(milestones),
      json.encode(inv), progress and 1 or 0, new_state, t, new_state, t, row.id))
    upsert_hypotheses(row.id, type(out.hypotheses) == "table" and out.hypotheses or {}, t)
    upsert_solutions(row.id, type(out.solutions) == "table" and out.solutions or {}, t)
    classify_evidence(row.id, type(out.evidence) == "table" and out.evidence or {})
    local view = cases.investigation_view(row.id, new_state, stage, milestones, inv)
    local resp = {
      agent_response = out.response, turn_number = turn, case_state = new_state,
      milestones_completed = milestones, progress_made = progress,
      attachments_processed = arr(results), suggested_actions = suggested,
      progress_transparency = view.progress_transparency,
      cause_assurance = view.cause_assurance, cause_overclaim = view.cause_overclaim,
    }
    status, body, headers = 200, json.encode(resp), { ["Content-Type"] = "application/json" }
    if idem then idempotency.finish(user, idem, status, body) end
  end)
  return status, body, headers
end

-- The work of a turn under the case's lock: evidence stored first (outside any transaction), the
-- agent (outside any transaction), then one transaction. Any failure releases the lock and
-- removes this turn's stored objects.
local function run(user, row, input, idem)
  local token = lock(user, row.id)
  local prepared, stored = {}, false
  local ok, s, b, h = pcall(function()
    row = cases.get_row(user, row.id) -- as it is now that no other turn can change it
    if cases.TERMINAL[row.state] then terminal(row) end
    input.intent_type = check_intent(row, input)
    prepare_all(user, row, input, prepared)
    local state = build_state(user, row, input, prepared, int(row.current_turn) + 1)
    local out = investigate(state)
    local s1, b1, h1 = store(user, row, input, prepared, state, out, token, idem)
    stored = true
    return s1, b1, h1
  end)
  if not ok or not stored then
    for _, p in ipairs(prepared) do if not p.duplicate then uploads.discard(p) end end
    unlock(row.id, token)
    error(s, 0)
  end
  return s, b, h
end

--- POST /turns. Returns status, body, headers.
function M.submit(user, case_id, req)
  local row = cases.get_row(user, case_id)
  if cases.TERMINAL[row.state] then terminal(row) end
  local input = M.parse(req)
  local idem = idempotency.validate(req.headers["idempotency-key"])
  if input.file then
    uploads.check_extension(uploads.display_name(input.file.filename))
    input.file_sha, input.file_size = content_sha(input.file)
  end
  if input.pasted_file then input.pasted_sha, input.pasted_size = content_sha(input.pasted_file) end
  if idem then
    local s, b, h = idempotency.begin(user, idem, M.ROUTE, request_hash(input))
    if s then return s, b, h end
  end
  local ok, s, b, h = pcall(run, user, row, input, idem)
  if not ok then
    if idem then idempotency.release(user, idem) end
    error(s, 0)
  end
  return s, b, h
end

return M
