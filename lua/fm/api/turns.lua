-- /api/v1/cases/{case_id}/turns and /uploaded-files (API.md Tier 1), /evidence (Tier 2): a turn's
-- intake (evidence stored and analysed, see fm.services.turns), the case's uploaded files, their
-- analysis and raw bytes, and the evidence rows made from them. Every route needs a bearer token
-- and sees only the caller's cases.
local cases = require "fm.services.cases"
local evidence = require "fm.services.evidence"
local settings = require "fm.settings"
local turns = require "fm.services.turns"
local uploads = require "fm.services.uploads"
local protect = require("fm.services.sessions").protect

local MB = 1024 * 1024

return function(r)
  -- The body may hold one file of MAX_UPLOAD_SIZE_MB, pasted content of as much, and the
  -- form's small fields: past that the engine answers 413 before the handler runs.
  r:post("/api/v1/cases/{case_id}/turns", protect(function(req)
    return turns.submit(req.user, req.params.case_id, req)
  end), { max_body = 2 * settings.max_upload_size_mb * MB + MB })

  r:get("/api/v1/cases/{case_id}/uploaded-files", protect(function(req)
    local row = cases.get_row(req.user, req.params.case_id)
    local out = uploads.list(row.id, req.query, cases.paging)
    return 200, out, { ["X-Total-Count"] = tostring(out.total_count) }
  end))

  r:get("/api/v1/cases/{case_id}/uploaded-files/{file_id}", protect(function(req)
    local row = cases.get_row(req.user, req.params.case_id)
    return 200, uploads.detail(row.id, req.params.file_id)
  end))

  r:get("/api/v1/cases/{case_id}/evidence", protect(function(req)
    local out = evidence.list(cases.get_row(req.user, req.params.case_id), req.query, cases.paging)
    return 200, out, { ["X-Total-Count"] = tostring(out.total_count) }
  end))

  r:get("/api/v1/cases/{case_id}/evidence/{evidence_id}", protect(function(req)
    return 200, evidence.get(cases.get_row(req.user, req.params.case_id),
      req.params.evidence_id)
  end))

  r:get("/api/v1/cases/{case_id}/uploaded-files/{file_id}/download", protect(function(req)
    local row = cases.get_row(req.user, req.params.case_id)
    local body, headers = uploads.download(row.id, req.params.file_id)
    return 200, body, headers
  end))
end
