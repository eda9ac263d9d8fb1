-- fm.settings: the resolved settings of this engine (config.lua over the environment).
-- Loading fails with every invalid setting named, so a bad value stops the engine at start.
local config = require "config"

local settings, errs = config.resolve(os.getenv)
if not settings then
  error("invalid configuration:\n  " .. table.concat(errs, "\n  "), 0)
end
return settings
