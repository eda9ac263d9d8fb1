-- fm.services.database: the `database` component of /health. Requiring this module registers
-- the check; M.check() is the check itself (a real round trip on a pooled connection).
--
--   healthy    the database answered; details: backend, latency_ms, pool counters
--   degraded   every pooled connection stayed busy for ACQUIRE_TIMEOUT_S: the database may be
--              fine, the pool is too small for the load (DATABASE_POOL_SIZE)
--   unhealthy  no answer: error and code (SQLSTATE) say why
local db = require "fm.db"
local health = require "fm.services.health"
local time = require "fm.time"

local M = {}

-- The check waits at most this long for a free connection: /health must not hang on a full pool.
M.ACQUIRE_TIMEOUT_S = 2

function M.check()
  local t0 = time.monotonic()
  local ok, err, code = db.ping(M.ACQUIRE_TIMEOUT_S)
  local latency_ms = math.floor((time.monotonic() - t0) * 1e6 + 0.5) / 1e3
  local stats = db.stats() or {}
  local details = {
    backend = db.dialect(), latency_ms = latency_ms,
    pool = { size = stats.size, open = stats.open, in_use = stats.in_use,
             waiting = stats.waiting, timeouts = stats.timeouts, reconnects = stats.reconnects },
  }
  if not ok then
    details.error, details.code = err, code
    if code == "53300" then return "degraded", details end -- the pool is full, not the database
    return "unhealthy", details
  end
  return "healthy", details
end

health.register("database", M.check)

return M
