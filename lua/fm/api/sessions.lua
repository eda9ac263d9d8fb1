-- /api/v1/sessions: the contract's client sessions (API.md Tier 1), kept in fm.kv. Every route
-- needs a bearer token; a session belongs to the user who created it.
local auth = require "fm.services.auth"
local sessions = require "fm.services.sessions"

local protect = auth.protect
local KB = 1024

return function(r)
  -- new or resumed: 201 either way (the contract's status); session_resumed tells which
  r:post("/api/v1/sessions", protect(function(req)
    return 201, sessions.create(req.user, req.json)
  end), { max_body = 32 * KB })

  r:get("/api/v1/sessions/{session_id}", protect(function(req)
    return 200, sessions.response(sessions.get(req.user, req.params.session_id), false)
  end))

  r:post("/api/v1/sessions/{session_id}/heartbeat", protect(function(req)
    return 200, sessions.heartbeat(req.user, req.params.session_id)
  end))

  r:delete("/api/v1/sessions/{session_id}", protect(function(req)
    sessions.delete(req.user, req.params.session_id)
    return 204
  end))
end
