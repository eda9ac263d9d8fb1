-- fm.services.sessions: the contract's client sessions (POST /api/v1/sessions, API.md Tier 1),
-- kept in fm.kv so every replica sharing one Redis sees them (the in-process store serves one
-- process only).
--
-- Keys (the KV TTL is the truth: a session is live exactly as long as its key exists):
--   sess:<id>                        JSON {session_id, user_id, client_id, session_type,
--                                    timeout_minutes, metadata, created_at, expires_at},
--                                    TTL = timeout_minutes
--   sess_client:<user_id>:<client_id>  the session id of that client of that user, same TTL
-- Ids are "sess_" and 32 hex (fm.crypto.random_hex(16)).
--
-- An unknown or expired session is answered 401 {"detail": "session expired", "code":
-- "SESSION_EXPIRED"} (the contract's signal to create a new one); another user's live session
-- is 404, as for cases. A KV failure is 503 with the KV's code in x-error-code.
local crypto = require "fm.crypto"
local errors = require "fm.errors"
local json = require "fm.json"
local kv = require "fm.kv"
local time = require "fm.time"

local M = {}

M.SCHEMA_VERSION = "3.1.0"
M.TYPES = { troubleshooting = true }
M.TIMEOUT_MIN, M.TIMEOUT_MAX, M.TIMEOUT_DEFAULT = 60, 480, 180
M.CLIENT_ID_MAX = 128
M.METADATA_MAX = 16 * 1024 -- bytes of the metadata object encoded as JSON

local null = json.null

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

-- A failure of the KV (nil, message, code): 503, retry shortly.
local function unavailable(msg, code)
  errors.raise(503, "the session store is unavailable, retry shortly: " .. tostring(msg),
    { ["Retry-After"] = "1", ["x-error-code"] = code or "KV_UNAVAILABLE" })
end

local function kv_ok(v, msg, code)
  if v == nil and msg ~= nil then unavailable(msg, code) end
  return v
end

--- The 401 the contract gives an expired session (the client creates a new one and retries).
function M.expired()
  errors.raise(401, "session expired", { ["WWW-Authenticate"] = "Bearer",
    ["x-error-code"] = "SESSION_EXPIRED" }, { detail = "session expired",
    code = "SESSION_EXPIRED" })
end

function M.key(id) return "sess:" .. id end
function M.client_key(user_id, client_id) return "sess_client:" .. user_id .. ":" .. client_id end

--- Whether s can be a session id of the engine's form.
function M.valid_id(s)
  return type(s) == "string" and #s == 37 and s:match("^sess_%x+$") ~= nil
end

-- ---- validation -----------------------------------------------------------------------------

local function absent(v) return v == nil or v == null end

--- Validates the AuthSessionCreateRequest body. Returns client_id, session_type,
-- timeout_minutes (nil: not given), metadata (nil: not given).
function M.parse_create(body)
  if absent(body) then body = {} end
  if type(body) ~= "table" or json.is_array(body) then
    invalid({ "body" }, "a JSON object is required", "type_error")
  end
  local cid = body.client_id
  if absent(cid) then invalid({ "body", "client_id" }, "field required", "value_error.missing") end
  if type(cid) ~= "string" then
    invalid({ "body", "client_id" }, "must be a string", "type_error")
  end
  if #cid < 1 or #cid > M.CLIENT_ID_MAX then
    invalid({ "body", "client_id" }, "1 to " .. M.CLIENT_ID_MAX .. " characters")
  end
  if cid:find("[%c]") or not utf8.len(cid) then
    invalid({ "body", "client_id" }, "must be UTF-8 text without control characters")
  end

  local stype = body.session_type
  if absent(stype) then
    stype = "troubleshooting"
  elseif type(stype) ~= "string" or not M.TYPES[stype] then
    invalid({ "body", "session_type" }, "must be 'troubleshooting'", "value_error.enum")
  end

  local timeout = body.timeout_minutes
  if absent(timeout) then
    timeout = nil
  else
    local t = math.type(timeout) and math.tointeger(timeout)
    if not t then
      invalid({ "body", "timeout_minutes" }, "must be an integer", "type_error.integer")
    end
    if t < M.TIMEOUT_MIN or t > M.TIMEOUT_MAX then
      invalid({ "body", "timeout_minutes" },
        ("must be %d to %d"):format(M.TIMEOUT_MIN, M.TIMEOUT_MAX))
    end
    timeout = t
  end

  local meta = body.metadata
  if absent(meta) then
    meta = nil
  else
    if type(meta) ~= "table" or json.is_array(meta) then
      invalid({ "body", "metadata" }, "must be an object", "type_error.dict")
    end
    if #json.encode(meta) > M.METADATA_MAX then
      invalid({ "body", "metadata" }, "at most " .. M.METADATA_MAX .. " bytes as JSON")
    end
  end
  return cid, stype, timeout, meta
end

-- ---- storage --------------------------------------------------------------------------------

-- The stored record of id, or nil (unknown or expired).
local function load(id)
  local raw = kv_ok(kv.get(M.key(id)))
  if raw == nil then return nil end
  local ok, s = pcall(json.decode, raw)
  if not ok or type(s) ~= "table" then return nil end
  return s
end

-- Writes s with expires_at = now + its timeout, and its client index, both with that TTL.
local function save(s)
  local ttl = s.timeout_minutes * 60
  s.expires_at = time.iso8601(time.now() + ttl)
  kv_ok(kv.set(M.key(s.session_id), json.encode(s), ttl))
  kv_ok(kv.set(M.client_key(s.user_id, s.client_id), s.session_id, ttl))
  return s
end

--- SessionResponse of a stored record.
function M.response(s, resumed)
  local meta = s.metadata
  if type(meta) ~= "table" then meta = {} end
  return {
    session_id = s.session_id, session_resumed = resumed == true, client_id = s.client_id,
    user_id = s.user_id, status = "active", session_type = s.session_type,
    timeout_minutes = s.timeout_minutes, metadata = meta, created_at = s.created_at,
    expires_at = s.expires_at, schema_version = M.SCHEMA_VERSION,
  }
end

--- Creates a session, or resumes (and extends) the live one of the same user and client_id.
-- Returns the response.
function M.create(user, body)
  local cid, stype, timeout, meta = M.parse_create(body)
  local ckey = M.client_key(user.id, cid)
  local existing = kv_ok(kv.get(ckey))
  if existing ~= nil then
    local s = M.valid_id(existing) and load(existing)
    if s and s.user_id == user.id and s.client_id == cid then
      if timeout then s.timeout_minutes = timeout end
      if meta then s.metadata = meta end
      s.session_type = stype
      return M.response(save(s), true)
    end
  end
  local s = {
    session_id = "sess_" .. crypto.random_hex(16), user_id = user.id, client_id = cid,
    session_type = stype, timeout_minutes = timeout or M.TIMEOUT_DEFAULT, metadata = meta or {},
    created_at = time.iso8601(),
  }
  return M.response(save(s), false)
end

--- The caller's live session id: the record, or 401 SESSION_EXPIRED (unknown or expired), or 404
-- (another user's live session, or an id that cannot be a session).
function M.get(user, id)
  if not M.valid_id(id) then errors.raise(404, "session not found") end
  local s = load(id)
  if not s then M.expired() end
  if s.user_id ~= user.id then errors.raise(404, "session not found") end
  return s
end

--- Extends the caller's live session by its timeout. Returns the response.
function M.heartbeat(user, id)
  local s = M.get(user, id)
  return M.response(save(s), false)
end

--- Ends the caller's session. An unknown or expired one is already ended (true, no error);
-- another user's is 404.
function M.delete(user, id)
  if not M.valid_id(id) then errors.raise(404, "session not found") end
  local s = load(id)
  if not s then return true end
  if s.user_id ~= user.id then errors.raise(404, "session not found") end
  kv_ok(kv.del(M.key(id)))
  -- the client index only if it still names this session (a newer one may have replaced it)
  local ckey = M.client_key(s.user_id, s.client_id)
  if kv_ok(kv.get(ckey)) == id then kv_ok(kv.del(ckey)) end
  return true
end

--- For other routes: if the request carries X-Session-Id, it must name a live session of the
-- authenticated caller (req.user, set by auth.authenticate), else 401 SESSION_EXPIRED (another
-- user's session included: for this client its session is not valid). Without the header (or
-- with an empty one) the request passes: sessions are optional for the API. Returns the session
-- record or nil; does not extend it (clients send heartbeats).
function M.check_header(req)
  local id = req.headers["x-session-id"]
  if id == nil or id == "" then return nil end
  if not req.user then error("sessions.check_header: the request is not authenticated", 2) end
  if not M.valid_id(id) then M.expired() end
  local s = load(id)
  if not s or s.user_id ~= req.user.id then M.expired() end
  req.client_session = s
  return s
end

--- A route handler behind a bearer token and, when the client sends X-Session-Id, a live
-- session of that user: an expired one is the contract's SESSION_EXPIRED 401, so the client
-- re-creates it and retries.
function M.protect(handler)
  return require("fm.services.auth").protect(function(req)
    M.check_header(req)
    return handler(req)
  end)
end

return M
