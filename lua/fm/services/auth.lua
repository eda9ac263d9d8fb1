-- fm.services.auth: local users, passwords, access and refresh tokens.
--
-- Access tokens: JWT HS256, claims sub (user id), iss "faultmaven", aud "faultmaven-api", iat,
-- exp, jti, typ "access", sid (the session: the refresh-token family). Refresh tokens: the same
-- with typ "refresh"; only their SHA-256 is stored (refresh_tokens), so a database leak does not
-- leak usable tokens. A refresh token is good once: using it marks it used and issues the next of
-- its family; presenting a used or revoked one again is taken as theft and revokes the whole family
-- (every token of that session, the new one included). Logout revokes the session's family, and an
-- access token of a revoked family stops working at once (each request checks its family).
local crypto = require "fm.crypto"
local db = require "fm.db"
local engine = require "fm.engine"
local errors = require "fm.errors"
local jwt = require "fm.auth.jwt"
local settings = require "fm.settings"
local time = require "fm.time"

local M = {}

M.ISSUER, M.AUDIENCE = "faultmaven", "faultmaven-api"

local function now_iso() return time.iso8601() end
local function iso_at(t) return time.iso8601(t) end

local hex = crypto.hex

local check = require "fm.db.check"

-- The signing key: JWT_SECRET_KEY, else <data dir>/.jwt_secret (created at start by startup.lua).
local key
function M.key()
  if key then return key end
  local k = settings.jwt_secret_key
  if k == "" then
    local err
    local path = engine.info().data_dir .. "/.jwt_secret"
    k, err = crypto.secret_file(path)
    if not k then error("JWT secret: " .. err, 0) end
    if #k < 32 then error(path .. " holds fewer than 32 bytes: remove it to get a new key", 0) end
  elseif #k < 32 then
    error("JWT_SECRET_KEY must be at least 32 bytes", 0)
  end
  key = k
  return key
end

function M.dev_login_allowed()
  return settings.deployment_mode == "local" or settings.allow_dev_login
end

-- ---- users ----------------------------------------------------------------------------------

local USERNAME = "^[%w][%w_.@%-]*$"

local function roles_of(row)
  local out = {}
  for r in (row.roles or "user"):gmatch("[^,]+") do out[#out + 1] = r end
  return setmetatable(out, require("fm.json").array_mt)
end

--- UserProfile / UserInfoResponse from a users row.
function M.profile(row, with_login)
  local p = {
    user_id = row.id, username = row.username, email = row.email,
    display_name = row.display_name,
    is_dev_user = (row.is_dev_user == 1 or row.is_dev_user == true),
    roles = roles_of(row), created_at = row.created_at,
  }
  if with_login then p.last_login = row.last_login end
  return p
end

function M.user_by_id(id)
  local rows = check(db.query("SELECT * FROM users WHERE id = ?", id))
  return rows[1]
end

function M.user_by_name(username)
  local rows = check(db.query("SELECT * FROM users WHERE username = ?", username))
  return rows[1]
end

local function is_admin_name(username)
  for _, u in ipairs(settings.admin_users) do if u == username then return true end end
  return false
end

--- Validates the DevLoginRequest-shaped body. Returns username, email, display_name, password.
function M.parse_credentials(body)
  if type(body) ~= "table" or require("fm.json").is_array(body) then
    errors.raise(422, { { loc = { "body" }, msg = "a JSON object is required",
                          type = "type_error" } })
  end
  local function field(name, max, required)
    local v = body[name]
    if v == nil or v == require("fm.json").null then
      if required then errors.raise(422, { { loc = { "body", name }, msg = "field required",
                                             type = "value_error.missing" } }) end
      return nil
    end
    if type(v) ~= "string" then
      errors.raise(422, { { loc = { "body", name }, msg = "must be a string",
                            type = "type_error" } })
    end
    if #v > max then
      errors.raise(422, { { loc = { "body", name }, msg = "at most " .. max .. " characters",
                            type = "value_error" } })
    end
    if v:find("\0", 1, true) then
      errors.raise(422, { { loc = { "body", name }, msg = "must not contain NUL characters",
                            type = "value_error" } })
    end
    return v
  end
  local username = field("username", 64, true)
  if not username:match(USERNAME) then
    errors.raise(422, { { loc = { "body", "username" }, type = "value_error",
      msg = "letters, digits, '_', '.', '@' and '-', starting with a letter or digit" } })
  end
  local email = field("email", 254, false)
  local display = field("display_name", 128, false)
  local password = field("password", 1024, false)
  if password == "" then password = nil end
  return username, email, display, password
end

--- Creates a user. Returns the row, or nil and "exists".
function M.create_user(username, email, display, password)
  local opts = settings
  local hash = password and crypto.password_hash(password, opts.password_hash_opslimit,
    opts.password_hash_memory_kib)
  local id = "user_" .. crypto.random_hex(12)
  local t = now_iso()
  local row
  local ok, err = pcall(db.transaction, function()
    local admin = is_admin_name(username)
    if not admin and settings.deployment_mode == "local" then
      -- two first users at once: only one may see an empty table (SQLite's BEGIN IMMEDIATE
      -- serialises already; PostgreSQL's READ COMMITTED does not)
      if db.dialect() == "postgres" then
        check(db.query("SELECT pg_advisory_xact_lock(?)", 7370631))
      end
      local n = check(db.query("SELECT COUNT(*) AS n FROM users"))[1].n
      admin = tonumber(n) == 0
    end
    local res, msg, code = db.exec("INSERT INTO users (id, username, email, display_name, "
      .. "password_hash, roles, is_dev_user, created_at, updated_at) "
      .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
      id, username, email or "", display or username, hash, admin and "user,admin" or "user",
      password and 0 or 1, t, t)
    if not res then
      if code == "23505" then error("exists", 0) end
      error(string.format("database: %s (%s)", msg, tostring(code)), 0)
    end
    row = M.user_by_id(id)
  end)
  if not ok then
    if err == "exists" then return nil, "exists" end
    error(err, 0)
  end
  return row
end

-- A hash to check against when there is no user or no password: a login then takes as long as
-- one with a wrong password, so timing does not tell which usernames exist.
local dummy_hash

--- row may be nil (unknown user): false, after the same work as a real check.
function M.verify_password(row, password)
  if not row or not row.password_hash then
    dummy_hash = dummy_hash or crypto.password_hash(crypto.random_hex(16),
      settings.password_hash_opslimit, settings.password_hash_memory_kib)
    crypto.password_verify(dummy_hash, password)
    return false
  end
  return crypto.password_verify(row.password_hash, password)
end

function M.touch_login(row)
  local t = now_iso()
  check(db.exec("UPDATE users SET last_login = ? WHERE id = ?", t, row.id))
  row.last_login = t
end

-- ---- tokens ---------------------------------------------------------------------------------

local function sign(user_id, typ, ttl, sid)
  local now = os.time()
  local claims = { sub = user_id, iss = M.ISSUER, aud = M.AUDIENCE, iat = now, exp = now + ttl,
                   jti = crypto.random_hex(16), typ = typ, sid = sid }
  return jwt.sign(claims, M.key()), claims
end

-- Stores a refresh token of family sid and returns it.
local function new_refresh(user_id, sid)
  local token, claims = sign(user_id, "refresh", settings.refresh_token_ttl_s, sid)
  check(db.exec("INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, session_id, "
    .. "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)", claims.jti, user_id, sid,
    hex(crypto.sha256(token)), sid, now_iso(), iso_at(claims.exp)))
  return token, claims
end

--- AuthTokenResponse for a user starting a new session. The user's expired refresh tokens are
-- swept on the way (a session's rows otherwise only grow).
function M.login_response(row)
  check(db.exec("DELETE FROM refresh_tokens WHERE user_id = ? AND expires_at < ?", row.id,
    now_iso()))
  local sid = "sess_" .. crypto.random_hex(16)
  local refresh = new_refresh(row.id, sid)
  local access = sign(row.id, "access", settings.access_token_ttl_s, sid)
  return { access_token = access, token_type = "bearer", expires_in = settings.access_token_ttl_s,
           refresh_token = refresh, session_id = sid, user = M.profile(row) }
end

local function revoke_family(sid)
  local res = check(db.exec("UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? "
    .. "AND revoked_at IS NULL", now_iso(), sid))
  return res.changes or 0
end

--- Rotates a refresh token. Returns TokenRefreshResponse, or nil and a reason (the caller answers
-- 401 without saying which).
function M.refresh(token)
  local claims, why = jwt.verify(token, M.key(), { iss = M.ISSUER, aud = M.AUDIENCE,
                                                   typ = "refresh" })
  if not claims then return nil, why end
  local rows = check(db.query("SELECT * FROM refresh_tokens WHERE token_hash = ?",
    hex(crypto.sha256(token))))
  local rt = rows[1]
  if not rt then return nil, "unknown refresh token" end
  if rt.used_at and not rt.revoked_at
    and rt.used_at >= time.iso8601(time.now() - settings.refresh_reuse_grace_s) then
    -- used a moment ago: another tab of the same client, not a thief
    return nil, "refresh token used by a concurrent request"
  end
  if rt.revoked_at or rt.used_at then
    revoke_family(rt.family_id)
    return nil, "refresh token reused: session revoked"
  end
  local lost_race = false
  local out
  db.transaction(function()
    -- only one of two concurrent uses can mark it used; the loser is a reuse
    local res = check(db.exec("UPDATE refresh_tokens SET used_at = ? WHERE id = ? "
      .. "AND used_at IS NULL AND revoked_at IS NULL", now_iso(), rt.id))
    if (res.changes or 0) ~= 1 then
      lost_race = true
      return
    end
    local user = M.user_by_id(rt.user_id)
    if not user then return end
    local next_token, next_claims = new_refresh(rt.user_id, rt.family_id)
    check(db.exec("UPDATE refresh_tokens SET replaced_by = ? WHERE id = ?", next_claims.jti, rt.id))
    out = { access_token = (sign(rt.user_id, "access", settings.access_token_ttl_s, rt.family_id)),
            token_type = "bearer", expires_in = settings.access_token_ttl_s,
            refresh_token = next_token }
  end)
  if lost_race then
    -- two refreshes of one token in flight at once (two tabs): the other one won; this one is
    -- refused without ending the session the winner just renewed
    return nil, "refresh token used by a concurrent request"
  end
  if not out then
    revoke_family(rt.family_id)
    return nil, "refresh token reused: session revoked"
  end
  return out
end

--- Ends a session (its refresh family). Returns the number of tokens revoked.
function M.logout(sid)
  return revoke_family(sid)
end

--- The verified claims of the request's bearer access token, or nil and why ("no bearer token"
-- or jwt.verify's reason). Verified once per request and kept on req: the rate limiter and
-- authenticate both ask.
function M.bearer_claims(req)
  local cached = req._bearer
  if cached then return cached.claims, cached.why end
  local h = req.headers.authorization
  local scheme, token
  if h then scheme, token = h:match("^(%a+)%s+(%S+)%s*$") end
  local claims, why
  if not scheme or scheme:lower() ~= "bearer" then
    why = "no bearer token"
  else
    claims, why = jwt.verify(token, M.key(), { iss = M.ISSUER, aud = M.AUDIENCE, typ = "access" })
  end
  req._bearer = { claims = claims, why = why }
  return claims, why
end

--- The caller of a request: verifies the bearer token and that its session is live. Raises 401.
function M.authenticate(req)
  local claims, why = M.bearer_claims(req)
  if why == "no bearer token" then
    errors.raise(401, "not authenticated", { ["WWW-Authenticate"] = "Bearer" })
  end
  if not claims or type(claims.sid) ~= "string" then
    errors.raise(401, "invalid or expired token", { ["WWW-Authenticate"] = "Bearer" })
  end
  local rows = check(db.query("SELECT u.* FROM users u WHERE u.id = ? AND EXISTS (SELECT 1 "
    .. "FROM refresh_tokens r WHERE r.family_id = ? AND r.revoked_at IS NULL)",
    claims.sub, claims.sid))
  local user = rows[1]
  if not user then
    errors.raise(401, "session ended", { ["WWW-Authenticate"] = "Bearer" })
  end
  req.user, req.session_id, req.token_claims = user, claims.sid, claims
  return user
end

--- Wraps a handler so it runs only for an authenticated caller (req.user set).
function M.protect(handler)
  return function(req)
    M.authenticate(req)
    return handler(req)
  end
end

return M
