-- /health, /health/components/{name}, /health/dependencies. /health/live and /readiness are
-- answered in C so probes never wait for a Lua worker.
local health = require "fm.services.health"
local errors = require "fm.errors"

return function(r)
  r:get("/health", function()
    local status, components = health.check_all()
    local code = status == "unhealthy" and 503 or 200
    return code, { status = status, components = components }, { ["Cache-Control"] = "no-store" }
  end)

  r:get("/health/components/{component_name}", function(req)
    local name = req.params.component_name
    local c = health.check(name)
    if not c then errors.raise(404, "unknown component: " .. name) end
    return c.status == "unhealthy" and 503 or 200, { component = name, health = c }
  end)

  r:get("/health/dependencies", function()
    local status, components = health.check_all()
    return 200, { status = status, dependencies = components }
  end)
end
