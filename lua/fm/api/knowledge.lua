-- /api/v1/knowledge/documents and /api/v1/knowledge/stats (API.md Tiers 1 and 2): knowledge
-- documents with their scopes (fm.services.knowledge). Every route needs a bearer token; a
-- document the caller cannot read is a 404 everywhere. The search routes are
-- fm.api.knowledge_search.
local knowledge = require "fm.services.knowledge"
local settings = require "fm.settings"
local protect = require("fm.services.sessions").protect

local KB, MB = 1024, 1024 * 1024

return function(r)
  r:post("/api/v1/knowledge/documents", protect(function(req)
    return 201, knowledge.upload(req.user, req)
  end), { max_body = settings.max_upload_size_mb * MB + 256 * KB })

  r:get("/api/v1/knowledge/documents", protect(function(req)
    local out = knowledge.list(req.user, req.query)
    return 200, out, { ["X-Total-Count"] = tostring(out.total_count) }
  end))

  r:post("/api/v1/knowledge/documents/bulk-delete", protect(function(req)
    return 200, knowledge.bulk_delete(req.user, req.json)
  end), { max_body = 64 * KB })

  r:get("/api/v1/knowledge/documents/{document_id}", protect(function(req)
    return 200, knowledge.detail(req.user, req.params.document_id)
  end))

  r:put("/api/v1/knowledge/documents/{document_id}", protect(function(req)
    return 200, knowledge.update(req.user, req.params.document_id, req.json)
  end), { max_body = settings.max_upload_size_mb * MB + 256 * KB })

  r:delete("/api/v1/knowledge/documents/{document_id}", protect(function(req)
    knowledge.delete(req.user, req.params.document_id)
    return 204
  end))

  r:get("/api/v1/knowledge/documents/{document_id}/snippet", protect(function(req)
    return 200, knowledge.snippet(req.user, req.params.document_id, req.query)
  end))

  r:get("/api/v1/knowledge/stats", protect(function(req)
    return 200, knowledge.stats(req.user)
  end))
end
