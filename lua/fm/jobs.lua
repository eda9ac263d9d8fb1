-- fm.jobs: background jobs kept in the `jobs` table, run by the jobs runner (engine/jobs.c:
-- FM_JOB_WORKERS threads, each with its own VM of the serving generation, calling work_one() in a
-- loop). Several engines may share one PostgreSQL database: a job is claimed atomically
-- (PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED; SQLite: in a BEGIN IMMEDIATE transaction) and
-- runs in one place at a time.
--
--   jobs.enqueue(kind, payload, {max_attempts, delay_s, dedup_key}) -> id
--   jobs.handlers[kind] = function(payload, job) ... end   raise to fail the attempt
--   jobs.work_one() -> true when a job ran (the runner loops at once), false when none was due
--
-- A job: queued -> running (locked_by, locked_at) -> done | queued again after a failure, with
-- exponential backoff (2 s doubling, at most 1 h), until max_attempts: then failed with
-- last_error. A running job whose lock is older than FM_JOB_LEASE_S (its engine died) is taken
-- again; a handler that runs long calls jobs.touch(job) to keep its lease. A dedup_key keeps at
-- most one queued job per key, and a job is not started while another of its key runs.
local crypto = require "fm.crypto"
local db = require "fm.db"
local json = require "fm.json"
local log = require "fm.log"
local metrics = require "fm.metrics"
local time = require "fm.time"

local M = {}

--- Handlers by kind: fn(payload, job). A module that defines jobs registers them when loaded.
M.handlers = {}
--- Modules loaded by work_one before it looks for a handler (they register theirs).
M.handler_modules = { "fm.services.knowledge" }
--- Functions run once when the runner starts (its first thread): recovery after a crash.
M.on_start = {}
M.BACKOFF_BASE_S, M.BACKOFF_MAX_S = 2, 3600

-- This VM's identity in locked_by: random, so two threads or two engines never share one.
M.worker = "jw_" .. crypto.random_hex(8)

local function core()
  local ok, mod = pcall(require, "fm.jobs_core")
  return ok and mod or nil
end

local function lease_s()
  local ok, s = pcall(require, "fm.settings")
  return ok and s.job_lease_s or 300
end

pcall(metrics.register, "fm_jobs_total", "counter", "Background job attempts by kind and result "
  .. "(done, retry, failed, requeued).")
pcall(metrics.register, "fm_jobs_queue_depth", "gauge",
  "Background jobs queued or running (as the last runner poll saw it).")

local function check(ok, err, code)
  if ok == nil then error(string.format("jobs: %s (%s)", tostring(err), tostring(code)), 2) end
  return ok
end

local function iso(t) return time.iso8601(t) end

--- Queues a job. payload: a table (JSON). opts.max_attempts (default 5), opts.delay_s (default
-- 0), opts.dedup_key: when a queued job has the same key, no new one is made and its id is
-- returned. Wakes the local runner. Returns the job id.
function M.enqueue(kind, payload, opts)
  if type(kind) ~= "string" or kind == "" then error("jobs.enqueue: kind must be a string", 2) end
  opts = opts or {}
  local now = time.now()
  local id = "job_" .. crypto.random_hex(16)
  if opts.dedup_key then
    local same = check(db.query("SELECT id FROM jobs WHERE dedup_key = ? AND state = 'queued' "
      .. "LIMIT 1", opts.dedup_key))[1]
    if same then
      local c = core()
      if c then c.wake() end
      return same.id
    end
  end
  check(db.exec("INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, run_after, "
    .. "created_at, updated_at, dedup_key) VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
    id, kind, json.encode(payload or {}), opts.max_attempts or 5,
    iso(now + (opts.delay_s or 0)), iso(now), iso(now), opts.dedup_key))
  local c = core()
  if c then c.wake() end
  return id
end

--- Jobs queued or running.
function M.depth()
  local row = check(db.query("SELECT COUNT(*) AS n FROM jobs WHERE state IN ('queued', "
    .. "'running')"))[1]
  return math.tointeger(row.n) or 0
end

--- Claims the next due job for this VM, or nil: a queued job whose time has come, or a running
-- one whose lease expired, and not while another job of its dedup_key holds a live lease.
function M.claim()
  local now = time.now()
  local t, stale = iso(now), iso(now - lease_s())
  local sql = "SELECT * FROM jobs j WHERE ((j.state = 'queued' AND j.run_after <= ?) "
    .. "OR (j.state = 'running' AND j.locked_at < ?)) AND (j.dedup_key IS NULL OR NOT EXISTS "
    .. "(SELECT 1 FROM jobs r WHERE r.dedup_key = j.dedup_key AND r.id <> j.id "
    .. "AND r.state = 'running' AND r.locked_at >= ?)) ORDER BY j.run_after, j.id LIMIT 1"
  if db.dialect() == "postgres" then sql = sql .. " FOR UPDATE OF j SKIP LOCKED" end
  return db.transaction(function()
    local job = check(db.query(sql, t, stale, stale))[1]
    if not job then return nil end
    check(db.exec("UPDATE jobs SET state = 'running', locked_by = ?, locked_at = ?, "
      .. "attempts = attempts + 1, updated_at = ? WHERE id = ?", M.worker, t, t, job.id))
    job.attempts = (math.tointeger(job.attempts) or 0) + 1
    job.max_attempts = math.tointeger(job.max_attempts) or 5
    job.locked_by, job.locked_at, job.state = M.worker, t, "running"
    return job
  end)
end

--- Extends the lease of a job this VM runs. Returns false when the job is no longer ours (its
-- lease expired and another runner took it): the handler should stop.
function M.touch(job)
  local t = iso(time.now())
  local res = check(db.exec("UPDATE jobs SET locked_at = ?, updated_at = ? WHERE id = ? AND "
    .. "locked_by = ? AND state = 'running'", t, t, job.id, M.worker))
  if res.changes > 0 then job.locked_at = t end
  return res.changes > 0
end

--- True when the runner is stopping (engine shutdown): a long handler may give up early with
-- jobs.requeue_error(); its job is queued again without counting the attempt.
function M.stopping()
  local c = core()
  return c ~= nil and c.stopping()
end

local REQUEUE = setmetatable({}, { __tostring = function() return "jobs: requeue" end })
function M.requeue_error() error(REQUEUE, 0) end

local function finish(job, result, sql, ...)
  local args = table.pack(...)
  args[args.n + 1], args[args.n + 2] = job.id, M.worker
  check(db.exec(sql .. " WHERE id = ? AND locked_by = ?", table.unpack(args, 1, args.n + 2)))
  pcall(metrics.inc, "fm_jobs_total", { kind = job.kind, result = result })
end

local warned = {}
local function load_handlers()
  for _, name in ipairs(M.handler_modules) do
    local ok, err = pcall(require, name)
    if not ok and not warned[name] then -- once per VM, not on every poll
      warned[name] = true
      log.warn("jobs: cannot load " .. name .. ": " .. tostring(err))
    end
  end
end

--- Runs one due job, if any. Returns true when a job was claimed (whatever its outcome).
function M.work_one()
  load_handlers()
  local job = M.claim()
  if not job then
    local ok, n = pcall(M.depth)
    if ok then pcall(metrics.set, "fm_jobs_queue_depth", nil, n) end
    return false
  end
  local fn = M.handlers[job.kind]
  local ok, err
  if not fn then
    ok, err = false, "no handler for job kind " .. job.kind
  else
    local payload = json.decode(job.payload or "{}") or {}
    local t0 = time.monotonic()
    ok, err = pcall(fn, payload, job)
    log.debug("jobs: ran " .. job.kind, { job_id = job.id, ok = ok,
      seconds = time.monotonic() - t0, attempt = job.attempts })
  end
  local t = iso(time.now())
  if ok then
    finish(job, "done", "UPDATE jobs SET state = 'done', last_error = NULL, locked_by = NULL, "
      .. "locked_at = NULL, updated_at = ?", t)
  elseif err == REQUEUE then
    finish(job, "requeued", "UPDATE jobs SET state = 'queued', attempts = attempts - 1, "
      .. "locked_by = NULL, locked_at = NULL, updated_at = ?", t)
  else
    local msg = tostring(err)
    if #msg > 2000 then msg = msg:sub(1, 2000) end
    if job.attempts >= job.max_attempts then
      log.error("jobs: " .. job.kind .. " failed for good", { job_id = job.id, error = msg,
        attempts = job.attempts })
      finish(job, "failed", "UPDATE jobs SET state = 'failed', last_error = ?, locked_by = NULL, "
        .. "locked_at = NULL, updated_at = ?", msg, t)
      local on_fail = M.handlers[job.kind .. ":failed"]
      if on_fail then
        local fok, ferr = pcall(on_fail, json.decode(job.payload or "{}") or {}, job, msg)
        if not fok then log.warn("jobs: failure hook: " .. tostring(ferr)) end
      end
    else
      local wait = math.min(M.BACKOFF_BASE_S * 2 ^ (job.attempts - 1), M.BACKOFF_MAX_S)
      log.warn("jobs: " .. job.kind .. " failed, retrying", { job_id = job.id, error = msg,
        attempt = job.attempts, retry_in_s = wait })
      finish(job, "retry", "UPDATE jobs SET state = 'queued', last_error = ?, run_after = ?, "
        .. "locked_by = NULL, locked_at = NULL, updated_at = ?", msg, iso(time.now() + wait), t)
    end
  end
  return true
end

--- Runs the on_start functions (the runner's first thread calls it once at start).
function M.startup()
  load_handlers()
  for name, fn in pairs(M.on_start) do
    local ok, err = pcall(fn)
    if not ok then log.warn("jobs: start task " .. name .. " failed: " .. tostring(err)) end
  end
end

--- Removes finished jobs (done or failed) older than keep_s (default 7 days). Returns the count.
function M.sweep(keep_s)
  local cutoff = iso(time.now() - (keep_s or 7 * 86400))
  local res = check(db.exec("DELETE FROM jobs WHERE state IN ('done', 'failed') AND "
    .. "updated_at < ?", cutoff))
  return res.changes
end

--- {queued, running, failed, runner_threads}: the /health component "jobs".
function M.health()
  local out = { queued = 0, running = 0, failed = 0 }
  for _, r in ipairs(check(db.query("SELECT state, COUNT(*) AS n FROM jobs WHERE state IN "
    .. "('queued', 'running', 'failed') GROUP BY state"))) do
    out[r.state] = math.tointeger(r.n) or 0
  end
  out.queue_depth = out.queued + out.running
  local c = core()
  out.runner_threads = c and c.threads() or 0
  return "healthy", out
end

do
  local ok, health = pcall(require, "fm.services.health")
  if ok then health.register("jobs", M.health) end
end

return M
