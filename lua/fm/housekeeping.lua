-- fm.housekeeping: what engine/housekeeping.c runs every FM_HOUSEKEEPING_INTERVAL_S on its own
-- VM. Every task is safe on several replicas at once (deletes of what is no longer needed).
--   * the upload sweeper: stored objects that no uploaded_files row names (a crash between the
--     object and the row, a deleted case) once older than FM_UPLOAD_SWEEP_GRACE_S;
--   * expired Idempotency-Key records and refresh tokens (each user's also go on their next
--     request; these are the ones of users who do not come back);
--   * the knowledge index reconciled with its tables (fm.services.knowledge.reconcile) and
--     finished jobs older than 7 days removed.
local db = require "fm.db"
local log = require "fm.log"
local time = require "fm.time"

local M = {}

local function task(name, fn)
  local ok, res = pcall(fn)
  if not ok then log.warn("housekeeping: " .. name .. " failed: " .. tostring(res)) end
  return ok and res or nil
end

--- Runs every task once; returns {uploads = sweep result, idempotency_keys = n,
-- refresh_tokens = n} (a failed task's entry is absent and its failure logged).
function M.run()
  local out = {}
  out.uploads = task("upload sweep", function()
    return require("fm.services.uploads").sweep()
  end)
  out.idempotency_keys = task("idempotency keys", function()
    return require("fm.services.idempotency").sweep()
  end)
  out.refresh_tokens = task("refresh tokens", function()
    local res, msg = db.exec("DELETE FROM refresh_tokens WHERE expires_at < ?", time.iso8601())
    if not res then error(msg, 0) end
    return res.changes
  end)
  out.knowledge = task("knowledge reconcile", function()
    return require("fm.services.knowledge").reconcile()
  end)
  out.jobs = task("finished jobs", function() return require("fm.jobs").sweep() end)
  log.debug("housekeeping: done", { idempotency_keys = out.idempotency_keys,
    refresh_tokens = out.refresh_tokens,
    uploads_removed = out.uploads and out.uploads.removed })
  return out
end

return M
