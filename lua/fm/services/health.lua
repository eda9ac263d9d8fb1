-- fm.services.health: named health checks. Each provider registers one when it lands (a query,
-- a PING, a HEAD on the bucket); /health runs them all for real on every call.
--   health.register(name, fn)  fn() -> "healthy"|"degraded"|"unhealthy", details table
local engine = require "fm.engine"

local M = {}

local checks, order = {}, {}

function M.register(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("health.register(name, fn)", 2)
  end
  if not checks[name] then order[#order + 1] = name end
  checks[name] = fn
end

local function run(name)
  local ok, status, details = pcall(checks[name])
  if not ok then return { status = "unhealthy", error = tostring(status) } end
  local out = details or {}
  out.status = status
  return out
end

local rank = { healthy = 0, degraded = 1, unhealthy = 2 }

--- Runs every check. Returns overall status and {name = {status=..., ...}}.
function M.check_all()
  local components, worst = {}, "healthy"
  for _, name in ipairs(order) do
    local c = run(name)
    components[name] = c
    local r = rank[c.status] or rank.unhealthy
    if r > rank[worst] then worst = rank[c.status] and c.status or "unhealthy" end
  end
  return worst, components
end

--- One check by name, or nil.
function M.check(name)
  if not checks[name] then return nil end
  return run(name)
end

function M.names() return order end

-- The engine itself: workers and the Lua VM answering this request.
M.register("engine", function()
  local i = engine.info()
  local status = i.readiness == "ready" and "healthy" or "degraded"
  return status, {
    version = i.version, uptime_s = i.uptime_s, readiness = i.readiness,
    workers = i.workers, workers_busy = i.workers_busy, queued = i.queued,
    requests = i.requests, vm_restarts = i.vm_restarts,
  }
end)

-- The Lua side: memory of the VM answering, the generation served, and the last reload. A failed
-- reload leaves the previous generation serving and turns this component degraded, with where
-- the build failed, until a later reload succeeds.
M.register("lua", function()
  local i = engine.info()
  local used, limit = i.lua_memory_bytes, i.lua_memory_limit
  local status = (limit > 0 and used > limit * 0.8) and "degraded" or "healthy"
  local r = engine.reload_status()
  local out = { version = i.lua_version, generation = r.generation, memory_bytes = used,
                memory_limit_bytes = limit, reloads_ok = r.reloads_ok,
                reloads_failed = r.reloads_failed }
  local last = r.last
  if last then
    out.last_reload = { ok = last.ok, reason = last.reason, at = last.at,
                        generation = last.generation }
  end
  if r.failed and last and not last.ok then
    status = "degraded"
    out.reload_error = { file = last.file, line = last.line, message = last.message,
                         at = last.at }
  end
  local restart = r.report and r.report.restart_required
  if restart and #restart > 0 then out.restart_required = restart end
  return status, out
end)

-- The data directory must be writable: uploads, the embedded database and temp files live there.
M.register("data_dir", function()
  local dir = engine.info().data_dir
  local probe = dir .. "/tmp/.health-" .. require("fm.crypto").random_hex(6)
  local f, err = io.open(probe, "w")
  if not f then return "unhealthy", { path = dir, error = err } end
  local ok, werr = f:write("ok")
  f:close()
  os.remove(probe)
  if not ok then return "unhealthy", { path = dir, error = werr } end
  return "healthy", { path = dir }
end)

-- File storage (fm.storage): a HEAD on the bucket (s3) or a write check in the uploads directory
-- (local: a temp file written, fsync'd and removed). Unhealthy with the error and its code
-- (STORAGE_DENIED, STORAGE_UNAVAILABLE, ...) when that fails.
M.register("storage", function()
  local storage = require "fm.storage"
  local ok, backend = pcall(storage.backend)
  if not ok then return "unhealthy", { error = tostring(backend) } end
  local r, err, code = storage.ping()
  if not r then return "unhealthy", { backend = backend, error = err, code = code } end
  return "healthy", { backend = backend, latency_ms = r.latency_ms }
end)

-- Vectors (fm.vector): the driver's ping (embedded: a file written in the data dir; external: a
-- request to the server). Degraded when it fails: knowledge search falls back to full text.
M.register("vectors", function()
  local vector = require "fm.vector"
  local ok, backend = pcall(vector.backend)
  if not ok then return "unhealthy", { error = tostring(backend) } end
  local r, err, code = vector.ping()
  if not r then return "degraded", { backend = backend, error = err, code = code } end
  return "healthy", { backend = backend, latency_ms = r.latency_ms }
end)

-- Embeddings (fm.embed): hashing needs nothing; openai is not called on every /health (each call
-- is billed): its `embeddings` circuit breaker says whether recent requests failed.
M.register("embeddings", function()
  local embed = require "fm.embed"
  local out = { provider = embed.provider(), model = embed.model(), dim = embed.dim() }
  if out.provider ~= "openai" then return "healthy", out end
  local st = require("fm.breaker").state(embed.BREAKER)
  out.breaker = st and st.state or "closed"
  return out.breaker == "closed" and "healthy" or "degraded", out
end)

return M
