-- fm.breaker: circuit breakers around outbound dependencies (ARCHITECTURE section 7).
--
-- The breakers live in C (engine/breaker.c), one per dependency name, shared by every worker;
-- fm.http consults them on every request (`breaker = "llm"`, default the URL's "host:port",
-- `false` for none) and, while one is open, returns nil, "circuit open for <name>",
-- "CIRCUIT_OPEN" without sending anything. This module reads them and builds the answer a route
-- gives then:
--
--   local res, err, code = http.request{ url = ..., breaker = "llm" }
--   if code == breaker.CODE then return breaker.unavailable("llm") end   -- 503 + Retry-After
--
--   state(name) -> {name, state = "closed"|"half_open"|"open", failures, opened_at, retry_in,
--                   probe_in_flight, transitions} | nil (no request went to it yet)
--   list()      -> every breaker, sorted by name
--   reset(name) -> true when it existed (it is closed, its failures forgotten)
--   config()    -> {enabled, fail_threshold, reset_timeout}
--   name_for(url) -> the default name fm.http uses for a URL
--   unavailable(name) -> 503, body, headers
local core = require "fm.breaker_core"
local json = require "fm.json"

local M = {}

-- The third value fm.http returns for a request an open breaker refused.
M.CODE = "CIRCUIT_OPEN"

M.state = core.state
M.list = core.list
M.reset = core.reset
M.config = core.config
M.name_for = core.name_for

-- The ARCHITECTURE section 7 answer for a refused dependency: status 503, the body
-- {"error":"service_unavailable","message":"<name> temporarily unavailable"} (keys in that
-- order) and Retry-After: the whole seconds until the breaker lets a probe through (at least 1).
-- The name is shown to the client: name dependencies ("llm") rather than rely on host:port.
function M.unavailable(name)
  name = tostring(name)
  local st = core.state(name)
  local retry = math.max(1, math.ceil(st and st.retry_in or 1))
  local body = '{"error":"service_unavailable","message":'
    .. json.encode(name .. " temporarily unavailable") .. "}"
  return 503, body, {
    ["Content-Type"] = "application/json",
    ["Retry-After"] = tostring(math.tointeger(retry) or retry),
  }
end

return M
