-- fm.services.kv: the `kv` component of /health. Requiring this module registers the check;
-- M.check() is the check itself.
--
--   healthy    Redis answered a PING (details: backend, latency_ms, pool counters), or the
--              in-process store (details: entries, bytes, max_bytes, evictions)
--   unhealthy  Redis did not answer: error and code (KV_UNAVAILABLE, KV_TIMEOUT) say why
local health = require "fm.services.health"
local kv = require "fm.kv"
local time = require "fm.time"

local M = {}

function M.check()
  local t0 = time.monotonic()
  local ok, err, code = kv.ping()
  local latency_ms = math.floor((time.monotonic() - t0) * 1e6 + 0.5) / 1e3
  local stats = kv.stats()
  local details = { backend = stats.backend }
  if stats.backend == "memory" then
    details.entries, details.bytes = stats.entries, stats.bytes
    details.max_bytes, details.evictions = stats.max_bytes, stats.evictions
  else
    details.latency_ms, details.url = latency_ms, stats.url
    details.pool = { size = stats.size, open = stats.open, in_use = stats.in_use,
                     reconnects = stats.reconnects, failures = stats.failures }
  end
  if not ok then
    details.error, details.code = err, code
    return "unhealthy", details
  end
  return "healthy", details
end

health.register("kv", M.check)

return M
