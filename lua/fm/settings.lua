-- fm.settings: the resolved settings of this engine (config.lua over the environment).
-- Loading fails with every invalid setting named, so a bad value stops the engine at start (and
-- fails a reload, which leaves the previous generation serving).
--
-- In a running engine, settings that C holds from start keep their start values in every later
-- generation (config.pin); the names of those that a reload tried to change are in
-- require("fm.settings.restart_required").
local config = require "config"
local engine = require "fm.engine"
local json = require "fm.json"

local settings, errs = config.resolve(os.getenv)
if not settings then
  error("invalid configuration:\n  " .. table.concat(errs, "\n  "), 0)
end
local boot = engine.boot_settings()
package.loaded["fm.settings.restart_required"] = boot and config.pin(settings, json.decode(boot))
  or {}
return settings
