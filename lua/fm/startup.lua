-- fm.startup: what `faultmaven serve` does once, in its boot VM, after the database pool opened
-- and before the workers start (engine/main.c):
--   * the JWT signing key: JWT_SECRET_KEY is checked, or <data dir>/.jwt_secret created (0600);
--   * database migrations: applied when RUN_STARTUP_MIGRATIONS is true (the default in local
--     mode); otherwise pending migrations stop the engine with what to run.
-- Raises with a message for the operator; the engine then exits 1.
local log = require "fm.log"

local M = {}

function M.run()
  local settings = require "fm.settings"
  require("fm.services.auth").key()
  local migrate = require "fm.db.migrate"
  if settings.run_startup_migrations then
    for _, m in ipairs(migrate.up()) do
      log.info("database migration applied", { version = m.version, name = m.name, file = m.file })
    end
  else
    local pending = migrate.pending()
    if pending > 0 then
      error(string.format("%d database migration(s) pending: run `faultmaven migrate up` "
        .. "(or set RUN_STARTUP_MIGRATIONS=true)", pending), 0)
    end
  end
end

return M
