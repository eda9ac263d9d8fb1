-- Knowledge search (API.md): `POST /api/v1/knowledge/search` (Tier 1: the chunks that answer a
-- query) and `POST /api/v1/knowledge/documents/search` (Tier 2: the documents they come from).
-- Both need a bearer token and see only the documents the caller may read (fm.services.knowledge);
-- ranking is fm.services.retrieval's.
local protect = require("fm.services.sessions").protect
local retrieval = require "fm.services.retrieval"

-- a 10,000-byte query may be sent with every byte escaped (\u0001: 6 bytes each)
local MAX_BODY = 128 * 1024

return function(r)
  r:post("/api/v1/knowledge/search", protect(function(req)
    return 200, retrieval.search(req.user, retrieval.validate(req.json))
  end), { max_body = MAX_BODY })

  r:post("/api/v1/knowledge/documents/search", protect(function(req)
    return 200, retrieval.documents(req.user, retrieval.validate(req.json))
  end), { max_body = MAX_BODY })
end
