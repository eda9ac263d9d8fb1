-- fm.services.turns: POST /api/v1/cases/{id}/turns (API.md Tier 1), the intake half.
--
-- A turn is a multipart form (or, for curl users, a JSON object) with at most one file, pasted
-- content, a query and the contract's other fields. Its evidence is stored and analysed
-- (fm.services.uploads), the case's turn counter moves, the user's message and the answer are
-- recorded, all in one transaction; an Idempotency-Key makes a retry answer the same turn.
--
-- The answer: until the investigation engine (playbooks, agent) exists, agent_response is an
-- acknowledgement that says what was received and what the analysis found, and says plainly
-- that no investigation ran. M.respond is the one place that changes when it lands.
local cases = require "fm.services.cases"
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local idempotency = require "fm.services.idempotency"
local json = require "fm.json"
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
    if v == "" then input[name] = nil end
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
  if not (input.query or input.pasted or input.pasted_file or input.file or input.intent) then
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

--- The answer of a turn. Until the investigation engine exists: an honest acknowledgement.
function M.respond(_, input, prepared)
  local lines = {}
  for _, p in ipairs(prepared) do
    local a = p.duplicate or p
    if p.duplicate then
      lines[#lines + 1] = string.format("- `%s` has the same content as `%s` (turn %d): not "
        .. "stored again.", p.display_name, a.filename, int(a.turn_number))
    else
      lines[#lines + 1] = string.format("- `%s` (%s) stored; analysis %s: %s", a.filename,
        uploads.size_display(a.size_bytes), a.analysis_status, a.summary or "")
    end
  end
  local out = {}
  if #lines > 0 then
    out[#out + 1] = "**Evidence received**\n\n" .. table.concat(lines, "\n")
  end
  if input.query then out[#out + 1] = "Your question is recorded on the case." end
  out[#out + 1] = "_No investigation ran: this engine does not have its troubleshooting "
    .. "playbooks and agent yet. The evidence is stored and analysed and will be used when "
    .. "they are available._"
  return table.concat(out, "\n\n"), { progress_made = false, suggested_actions = arr() }
end

local function terminal(row)
  errors.raise(409, "the case is " .. row.state .. ": it takes no more turns",
    { ["x-error-code"] = "CASE_TERMINAL" })
end

-- The work of a turn: evidence stored first (outside any transaction), then one transaction.
local function run(user, row, input, idem)
  local prepared = {}
  local function discard_all()
    for _, p in ipairs(prepared) do if not p.duplicate then uploads.discard(p) end end
  end
  local ok, err = pcall(function()
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
  end)
  if not ok then
    discard_all()
    error(err, 0)
  end
  local status, body, headers
  ok, err = pcall(db.transaction, function()
    local t = time.iso8601()
    local cur = check(db.query("UPDATE cases SET current_turn = current_turn + 1, "
      .. "version = version + 1, updated_at = ?, last_activity_at = ? WHERE id = ? AND "
      .. "user_id = ? RETURNING current_turn, state, milestones", t, t, row.id, user.id))[1]
    if not cur then errors.raise(404, "case not found") end
    if cases.TERMINAL[cur.state] then terminal(cur) end
    local turn = int(cur.current_turn)
    local names, results = {}, {}
    for _, p in ipairs(prepared) do
      if not p.duplicate then uploads.insert(p, turn) end
      names[#names + 1] = p.display_name
      results[#results + 1] = uploads.attachment(p)
    end
    local answer, extra = M.respond(row, input, prepared)
    local meta = json.encode({ input_type = input.input_type, intent = input.intent,
      source_url = input.source_url, observed_at = input.observed_at,
      attachments = results })
    check(db.exec("INSERT INTO case_messages (id, case_id, turn_number, role, content, "
      .. "author_id, metadata, created_at) VALUES (?, ?, ?, 'user', ?, ?, ?, ?)",
      "msg_" .. crypto.random_hex(16), row.id, turn, user_message(input, names), user.id, meta, t))
    check(db.exec("INSERT INTO case_messages (id, case_id, turn_number, role, content, "
      .. "created_at) VALUES (?, ?, ?, 'assistant', ?, ?)",
      "msg_" .. crypto.random_hex(16), row.id, turn, answer, t))
    local milestones = json.decode(cur.milestones or "[]") or {}
    local resp = {
      agent_response = answer, turn_number = turn, case_state = cur.state,
      milestones_completed = arr(milestones), progress_made = extra.progress_made,
      attachments_processed = arr(results), suggested_actions = extra.suggested_actions,
    }
    status, body, headers = 200, json.encode(resp), { ["Content-Type"] = "application/json" }
    if idem then idempotency.finish(user, idem, status, body) end
  end)
  if not ok then
    discard_all()
    error(err, 0)
  end
  return status, body, headers
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
