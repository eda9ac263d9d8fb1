-- CORS as the contract asks: browser extensions (chrome-extension://, moz-extension://) and the
-- configured origins (CORS_ALLOW_ORIGINS; "*" allows any). Preflights are answered here.
local settings = require "fm.settings"

local EXPOSE = table.concat({
  "X-Request-Id", "X-Total-Count", "X-RateLimit-Limit", "X-RateLimit-Remaining",
  "X-RateLimit-Reset", "Retry-After", "x-error-code", "X-Idempotency-Replayed", "x-title-source",
}, ", ")
local ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
local ALLOW_HEADERS = "Authorization, Content-Type, X-Session-Id, Idempotency-Key, X-Request-Id"

local configured, any = {}, false
for _, o in ipairs(settings.cors_allow_origins) do
  if o == "*" then any = true else configured[o:gsub("/+$", "")] = true end
end

local function allowed(origin)
  if not origin or #origin > 256 or origin:find("[%c%s]") then return false end
  if any or configured[origin] then return true end
  return origin:match("^chrome%-extension://[%w%-_]+$") ~= nil
      or origin:match("^moz%-extension://[%w%-_]+$") ~= nil
end

return function(req, nxt)
  local origin = req.headers.origin
  local ok = allowed(origin)
  if req.method == "OPTIONS" and req.headers["access-control-request-method"] then
    if not ok then return 403, { detail = "origin not allowed" } end
    local asked = req.headers["access-control-request-headers"]
    return 204, nil, {
      ["Access-Control-Allow-Origin"] = origin,
      ["Access-Control-Allow-Methods"] = ALLOW_METHODS,
      ["Access-Control-Allow-Headers"] =
        (asked and asked:match("^[%w%-_, ]+$") and #asked <= 1024) and asked or ALLOW_HEADERS,
      ["Access-Control-Allow-Credentials"] = "true",
      ["Access-Control-Max-Age"] = "600",
      ["Vary"] = "Origin",
    }
  end
  local status, body, headers = nxt(req)
  if ok then
    headers = headers or {}
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Expose-Headers"] = EXPOSE
    headers["Vary"] = "Origin"
  end
  return status, body, headers
end
