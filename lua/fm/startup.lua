-- fm.startup: what `faultmaven serve` does once, in its boot VM, after the database pool opened
-- and before the workers start (engine/main.c):
--   * the JWT signing key: JWT_SECRET_KEY is checked, or <data dir>/.jwt_secret created (0600);
--   * database migrations: applied when RUN_STARTUP_MIGRATIONS is true (the default in local
--     mode); otherwise pending migrations stop the engine with what to run;
--   * the built-in knowledge pack (fm.kb.pack): kb/*.md in step with the database.
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
  -- the embedder and the vector index agree on the dimension, or the engine stops with what to
  -- run (docs/VECTORS.md)
  require("fm.embed").check_index(require("fm.services.knowledge").COLLECTION)
  -- the built-in knowledge pack (KB_PACK_DIR); a failure (an embeddings API down) is logged and
  -- the engine serves without the pack's changes: the next start tries again
  local ok, err = pcall(require("fm.kb.pack").sync)
  if not ok then log.error("kb pack not loaded", { error = tostring(err) }) end
end

return M
