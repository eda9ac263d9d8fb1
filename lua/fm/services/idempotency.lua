-- fm.services.idempotency: Idempotency-Key records (API.md): per user, for 24 hours, in the
-- database (written in the same transaction as what they protect, so a replay can never miss a
-- case or a turn that exists). The same key with the same request answers the stored response
-- again with X-Idempotency-Replayed; with another request it is 409 IDEMPOTENCY_KEY_REUSE; while
-- the first request still runs it is 409 TURN_IN_PROGRESS with Retry-After.
--
-- Two ways to use it:
--   * all in one transaction (POST /cases): M.lookup, M.claim, the work, M.finish;
--   * claim first, work outside, finish in the work's transaction (POST /turns: storage and
--     analysis must not hold a database transaction open): M.begin, then M.finish in the
--     work's transaction, or M.release when the work fails so a retry can run.
local db = require "fm.db"
local errors = require "fm.errors"
local check = require "fm.db.check"
local time = require "fm.time"

local M = {}

M.PATTERN = "^[A-Za-z0-9_%-]+$"
M.TTL_S = 24 * 3600
-- A 'running' record older than this is taken to be abandoned (its engine died mid-request) and
-- may be claimed again: longer than the longest request (AGENT_REQUEST_TIMEOUT 120 s, uploads).
M.STALE_S = 600

local function int(v) return math.tointeger(tonumber(v)) or 0 end

--- Raises the 422 for a malformed key; returns the key (or nil when none was sent).
function M.validate(idem)
  if idem == nil then return nil end
  if #idem < 8 or #idem > 255 or not idem:match(M.PATTERN) then
    errors.raise(422, { { loc = { "header", "Idempotency-Key" },
      msg = "must match ^[A-Za-z0-9_-]{8,255}$", type = "value_error" } })
  end
  return idem
end

local function in_progress()
  return 409, { detail = "a request with this Idempotency-Key is in progress" },
    { ["x-error-code"] = "TURN_IN_PROGRESS", ["Retry-After"] = "1" }
end

--- Inside a transaction: the answer for a key already used (status, body, headers), or nil
-- when the key is free. Drops this user's expired keys (and an abandoned running one).
function M.lookup(user, idem, route, hash)
  local now = time.iso8601()
  check(db.exec("DELETE FROM idempotency_keys WHERE user_id = ? AND expires_at < ?", user.id, now))
  local prev = check(db.query("SELECT * FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
    user.id, idem))[1]
  if not prev then return nil end
  if prev.request_hash ~= hash or prev.route ~= route then
    return 409, { detail = "Idempotency-Key reused with a different request" },
      { ["x-error-code"] = "IDEMPOTENCY_KEY_REUSE" }
  end
  if prev.state ~= "done" then
    if prev.created_at < time.iso8601(os.time() - M.STALE_S) then
      check(db.exec("DELETE FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
        user.id, idem))
      return nil
    end
    return in_progress()
  end
  return int(prev.status_code), prev.response_body,
    { ["X-Idempotency-Replayed"] = "true", ["Content-Type"] = "application/json" }
end

--- Inside a transaction: records the key as running. A concurrent first use of the same key
-- raises {retry = true} (the caller's transaction rolls back and it looks again).
function M.claim(user, idem, route, hash)
  local t = time.iso8601()
  local res, msg, code = db.exec("INSERT INTO idempotency_keys (user_id, idem_key, route, "
    .. "request_hash, state, created_at, expires_at) VALUES (?, ?, ?, ?, 'running', ?, ?)",
    user.id, idem, route, hash, t, time.iso8601(os.time() + M.TTL_S))
  if not res then
    if code == "23505" or code == "40001" then error({ retry = true }) end
    error(string.format("database: %s (%s)", msg, tostring(code)), 0)
  end
end

--- Inside the work's transaction: stores the answer (body: JSON text).
function M.finish(user, idem, status, body)
  check(db.exec("UPDATE idempotency_keys SET state = 'done', status_code = ?, response_body = ? "
    .. "WHERE user_id = ? AND idem_key = ?", status, body, user.id, idem))
end

--- Forgets a running key after the work failed, so the client's retry runs again.
function M.release(user, idem)
  db.exec("DELETE FROM idempotency_keys WHERE user_id = ? AND idem_key = ? AND state = 'running'",
    user.id, idem)
end

--- Runs body_fn in a transaction with lookup and claim, retrying a concurrent first use.
-- body_fn() returns nil to go on; lookup's answer (a replay or a conflict) is returned instead.
local function with_retry(fn)
  for _ = 1, 3 do
    local ok, a, b, c = pcall(db.transaction, fn)
    if ok then return true, a, b, c end
    if not (type(a) == "table" and a.retry) then error(a, 0) end
    time.sleep(0.01)
  end
  return false
end

--- One transaction: lookup, claim, work() -> status, body (JSON text), headers; finish.
-- Returns status, body, headers (a replay or a conflict when the key was used).
function M.run_in_transaction(user, idem, route, hash, work)
  local status, out, headers
  local ok = with_retry(function()
    status, out, headers = M.lookup(user, idem, route, hash)
    if status then return end
    M.claim(user, idem, route, hash)
    status, out, headers = work()
    M.finish(user, idem, status, out)
  end)
  if not ok then return in_progress() end
  return status, out, headers
end

--- Claims the key in its own transaction. Returns nil when the caller should go on (it must
-- then M.finish in its work's transaction or M.release), or status, body, headers to answer.
function M.begin(user, idem, route, hash)
  local status, out, headers
  local ok = with_retry(function()
    status, out, headers = M.lookup(user, idem, route, hash)
    if status then return end
    M.claim(user, idem, route, hash)
  end)
  if not ok then return in_progress() end
  return status, out, headers
end

--- Housekeeping: removes every expired key (each user's expired keys also go on their next
-- keyed request). Returns how many went.
function M.sweep()
  local res = check(db.exec("DELETE FROM idempotency_keys WHERE expires_at < ?", time.iso8601()))
  return type(res) == "table" and (res.changes or res.affected) or 0
end

return M
