-- fm.db.check: turns fm.db's `nil, message, code` into what a request should answer.
--   local check = require "fm.db.check"
--   local rows = check(db.query(...))
-- A failure of the database's availability (pool exhausted, cannot connect, connection lost,
-- busy, statement timeout) is a 503 with Retry-After: the client may retry, and the engine says
-- so instead of "internal error". Any other failure is an error (500, logged with the SQLSTATE).
local errors = require "fm.errors"

local UNAVAILABLE = {
  ["53300"] = true, -- pool exhausted / too many connections
  ["08000"] = true, ["08001"] = true, ["08003"] = true, ["08004"] = true, ["08006"] = true,
  ["57P01"] = true, ["57P02"] = true, ["57P03"] = true, -- server shutting down or starting
  ["40001"] = true, ["40P01"] = true, -- busy / serialization failure / deadlock
  ["57014"] = true, -- statement timeout or cancel
}

local M = {}

function M.unavailable(code) return UNAVAILABLE[code] == true end

return setmetatable(M, { __call = function(_, ok, err, code)
  if ok ~= nil then return ok end
  if UNAVAILABLE[code] then
    error(errors.http(503, "the database is unavailable, retry shortly",
      { ["Retry-After"] = "1", ["x-error-code"] = "DATABASE_UNAVAILABLE" }), 2)
  end
  error(string.format("database: %s (%s)", tostring(err), tostring(code)), 2)
end })
