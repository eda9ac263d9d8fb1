-- GET /: name and version.
local engine = require "fm.engine"

return function(r)
  r:get("/", function()
    return 200, { name = "faultmaven", version = engine.version, api_contract = "2.0.0" }
  end)
end
