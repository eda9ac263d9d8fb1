-- /api/v1/cases: the cases API (API.md Tier 1). Every route needs a bearer token (and checks an
-- X-Session-Id if one is sent) and sees only the caller's cases.
local cases = require "fm.services.cases"
local protect = require("fm.services.sessions").protect
local KB = 1024

local function gone(req)
  return 410, { detail = "this route is retired: send the case's input to POST /api/v1/cases/"
    .. req.params.case_id .. "/turns" }
end

return function(r)
  r:get("/api/v1/cases", protect(function(req)
    local out = cases.list(req.user, req.query)
    return 200, out, { ["X-Total-Count"] = tostring(out.total_count) }
  end))

  r:post("/api/v1/cases", protect(function(req)
    return cases.create(req.user, req.json, req.headers["idempotency-key"], req.body)
  end), { max_body = 256 * KB })

  r:post("/api/v1/cases/search", protect(function(req)
    return 200, cases.search(req.user, req.json)
  end), { max_body = 16 * KB })

  r:get("/api/v1/cases/{case_id}", protect(function(req)
    local row = cases.get_row(req.user, req.params.case_id)
    return 200, cases.detail(row), { ETag = '"' .. row.version .. '"' }
  end))

  r:put("/api/v1/cases/{case_id}", protect(function(req)
    local d = cases.update(req.user, req.params.case_id, req.json, req.headers["if-match"])
    return 200, d, { ETag = '"' .. d.version .. '"' }
  end), { max_body = 64 * KB })

  r:delete("/api/v1/cases/{case_id}", protect(function(req)
    cases.delete(req.user, req.params.case_id)
    return 204
  end))

  r:post("/api/v1/cases/{case_id}/archive", protect(function(req)
    return 200, cases.set_archived(req.user, req.params.case_id, true)
  end))

  r:post("/api/v1/cases/{case_id}/unarchive", protect(function(req)
    return 200, cases.set_archived(req.user, req.params.case_id, false)
  end))

  r:get("/api/v1/cases/{case_id}/messages", protect(function(req)
    local out = cases.messages(req.user, req.params.case_id, req.query)
    return 200, out, { ["X-Total-Count"] = tostring(out.total_count) }
  end))

  r:post("/api/v1/cases/{case_id}/title", protect(function(req)
    local force = req.query.force
    force = force == "true" or force == "1"
    local title, how = cases.title(req.user, req.params.case_id, req.json, force)
    return 200, { title = title, schema_version = "3.1.0" }, { ["x-title-source"] = how }
  end), { max_body = 16 * KB })

  r:post("/api/v1/cases/{case_id}/queries", protect(function(req)
    cases.get_row(req.user, req.params.case_id)
    return gone(req)
  end))
  r:post("/api/v1/cases/{case_id}/data", protect(function(req)
    cases.get_row(req.user, req.params.case_id)
    return gone(req)
  end))

  r:get("/api/v1/cases/{case_id}/ui", protect(function(req)
    return 200, cases.ui(cases.get_row(req.user, req.params.case_id))
  end))
end
