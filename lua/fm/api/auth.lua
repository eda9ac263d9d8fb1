-- /api/v1/auth/*: local authentication (API.md Tier 1).
--   GET  config        AuthConfigResponse
--   POST register      201 AuthTokenResponse (a password is required unless dev login is allowed)
--   POST login         AuthTokenResponse (password checked when the user has one)
--   POST dev-register  201, POST dev-login: username only; 403 unless dev login is allowed
--   POST refresh       TokenRefreshResponse (the refresh token rotates)
--   GET  me            UserInfoResponse
--   POST logout        LogoutResponse (ends this session: its refresh tokens are revoked)
local auth = require "fm.services.auth"
local errors = require "fm.errors"

local BEARER = { ["WWW-Authenticate"] = "Bearer" }

local DEV_DISABLED = "username-only login is disabled outside local mode "
  .. "(set FM_ALLOW_DEV_LOGIN=true to allow it)"

local function credentials(req)
  return auth.parse_credentials(req.json)
end

local function register(req, dev)
  local username, email, display, password = credentials(req)
  if dev then password = nil end
  if not password and not auth.dev_login_allowed() then
    if dev then errors.raise(403, DEV_DISABLED) end
    errors.raise(422, { { loc = { "body", "password" }, msg = "field required",
                          type = "value_error.missing" } })
  end
  if password and #password < 8 then
    errors.raise(422, { { loc = { "body", "password" }, msg = "at least 8 characters",
                          type = "value_error" } })
  end
  local row, err = auth.create_user(username, email, display, password)
  if not row then
    if err == "exists" then errors.raise(409, "username already registered") end
    errors.raise(500, "cannot create the user")
  end
  auth.touch_login(row)
  return 201, auth.login_response(row)
end

local function login(req, dev)
  local username, email, display, password = credentials(req)
  if dev then password = nil end
  local row = auth.user_by_name(username)
  if password then
    -- the same answer whether the user is unknown or the password wrong
    if not auth.verify_password(row, password) then
      errors.raise(401, "invalid username or password", BEARER)
    end
  else
    if not auth.dev_login_allowed() then
      if dev then errors.raise(403, DEV_DISABLED) end
      errors.raise(401, "invalid username or password", BEARER)
    end
    if row and row.password_hash then
      -- a user with a password never logs in without it
      errors.raise(401, "invalid username or password", BEARER)
    end
    if not row then -- dev login creates the user, as FaultMaven's local mode does
      local err
      row, err = auth.create_user(username, email, display, nil)
      if not row and err == "exists" then row = auth.user_by_name(username) end
      if not row then errors.raise(500, "cannot create the user") end
    end
  end
  auth.touch_login(row)
  return 200, auth.login_response(row)
end

return function(r)
  r:get("/api/v1/auth/config", function()
    return 200, { auth_mode = "local", supports_registration = true,
                  login_endpoint = "/api/v1/auth/login",
                  register_endpoint = "/api/v1/auth/register" }
  end)
  r:post("/api/v1/auth/register", function(req) return register(req, false) end,
    { max_body = 16384 })
  r:post("/api/v1/auth/dev-register", function(req) return register(req, true) end,
    { max_body = 16384 })
  r:post("/api/v1/auth/login", function(req) return login(req, false) end, { max_body = 16384 })
  r:post("/api/v1/auth/dev-login", function(req) return login(req, true) end,
    { max_body = 16384 })
  r:post("/api/v1/auth/refresh", function(req)
    local body = req.json
    local token = type(body) == "table" and body.refresh_token
    if type(token) ~= "string" then
      errors.raise(422, { { loc = { "body", "refresh_token" }, msg = "field required",
                            type = "value_error.missing" } })
    end
    local out = auth.refresh(token)
    if not out then errors.raise(401, "invalid or expired refresh token", BEARER) end
    return 200, out
  end, { max_body = 16384 })
  r:get("/api/v1/auth/me", auth.protect(function(req)
    return 200, auth.profile(req.user, true)
  end))
  r:post("/api/v1/auth/logout", auth.protect(function(req)
    local n = auth.logout(req.session_id)
    return 200, { message = "logged out", revoked_tokens = n, all_sessions_ended = false }
  end))
end
