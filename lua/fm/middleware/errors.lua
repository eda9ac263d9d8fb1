-- Error handler: runs the rest of the chain protected. An fm.errors value becomes its status and
-- detail; any other error is a 500 {"detail": "internal error", "request_id": ...} with the
-- traceback in the log, never in the response. Budget and memory aborts are not caught here: the
-- engine re-raises them past every pcall and answers them itself.
local db = require "fm.db"
local dbcheck = require "fm.db.check"
local errors = require "fm.errors"
local log = require "fm.log"

local is_http = errors.is_http

local function on_error(e)
  if is_http(e) then return e end
  -- a transaction that failed because the database is unavailable: 503, like fm.db.check
  if type(e) == "table" and getmetatable(e) == db.error_mt and dbcheck.unavailable(e.code) then
    log.warn("database unavailable", { code = e.code, error = e.message })
    return errors.http(503, "the database is unavailable, retry shortly",
      { ["Retry-After"] = "1", ["x-error-code"] = "DATABASE_UNAVAILABLE" })
  end
  return debug.traceback(tostring(e), 2)
end

return function(req, nxt)
  local ok, status, body, headers = xpcall(nxt, on_error, req)
  if ok then return status, body, headers end
  local e = status
  if is_http(e) then
    return e.status, e.body or { detail = e.detail }, e.headers
  end
  log.error("unhandled error in handler", { route = req.route and req.route.pattern, error = e })
  return 500, { detail = "internal error", request_id = req.id }
end
