-- CORS preflights. The policy (chrome-extension://, moz-extension:// and CORS_ALLOW_ORIGINS, "*"
-- for any) lives in C, which adds the response headers to every answer, including the ones C
-- gives itself (413, 414, 431, budget and memory errors); this middleware answers the preflight
-- OPTIONS request with the same decision.
local engine = require "fm.engine"

local ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
local ALLOW_HEADERS = "Authorization, Content-Type, X-Session-Id, Idempotency-Key, X-Request-Id"

return function(req, nxt)
  if req.method ~= "OPTIONS" or not req.headers["access-control-request-method"] then
    return nxt(req)
  end
  local origin = req.headers.origin
  if not engine.cors_allowed(origin) then return 403, { detail = "origin not allowed" } end
  local asked = req.headers["access-control-request-headers"]
  if not (asked and #asked <= 1024 and asked:match("^[%w%-_, ]+$")) then asked = ALLOW_HEADERS end
  return 204, nil, {
    ["Access-Control-Allow-Origin"] = origin,
    ["Access-Control-Allow-Methods"] = ALLOW_METHODS,
    ["Access-Control-Allow-Headers"] = asked,
    ["Access-Control-Allow-Credentials"] = "true",
    ["Access-Control-Max-Age"] = "600",
    ["Vary"] = "Origin",
  }
end
