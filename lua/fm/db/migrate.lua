-- fm.db.migrate: numbered SQL migrations under migrations/ (FM_HOME).
--
-- Files are NNNN_name.sql; a dialect variant NNNN_name.postgres.sql or NNNN_name.sqlite.sql
-- replaces the common file on that database. Statements end with a semicolon at the end of a line.
-- Applied versions are rows of schema_migrations (version, name, checksum, applied_at).
--
-- up() applies every pending migration in ONE transaction, under a lock: an advisory transaction
-- lock on PostgreSQL (any number of replicas starting at once apply each migration once: the
-- others wait, then find nothing to do) and SQLite's write lock. A migration that fails rolls the
-- whole run back and names the file and the statement.
local crypto = require "fm.crypto"
local db = require "fm.db"
local source = require "fm.source"

local M = {}

local LOCK_ID = 7370630 -- pg_advisory_xact_lock key: "fm" migrations

local hex = crypto.hex

local function now() return require("fm.time").iso8601() end

--- The migrations known to this tree for the current dialect, sorted by version:
-- {version, name, file, sql, checksum}. Raises on a malformed name or a duplicate version.
function M.available()
  local dialect = db.dialect()
  local by_version = {}
  for _, path in ipairs(source.list("migrations/")) do
    local file = path:match("^migrations/([^/]+)$")
    if file then
      local num, name, variant = file:match("^(%d+)_([%w_%-]+)%.(%a+)%.sql$")
      if not num then num, name = file:match("^(%d+)_([%w_%-]+)%.sql$") end
      if not num then error("migrations: file name must be NNNN_name.sql: " .. path, 0) end
      local v = tonumber(num)
      local e = by_version[v] or { version = v, name = name }
      if e.name ~= name then
        error(string.format("migrations: version %d used by two names (%s, %s)", v, e.name,
          name), 0)
      end
      if variant == nil then e.common = path
      elseif variant == dialect then e.variant = path
      elseif variant ~= "postgres" and variant ~= "sqlite" then
        error("migrations: unknown dialect '" .. variant .. "' in " .. path, 0)
      end
      by_version[v] = e
    end
  end
  local list = {}
  for _, e in pairs(by_version) do
    local file = e.variant or e.common
    if file then
      local sql = assert(source.read(file))
      list[#list + 1] = { version = e.version, name = e.name, file = file, sql = sql,
                          checksum = hex(crypto.sha256(sql)) }
    end
  end
  table.sort(list, function(a, b) return a.version < b.version end)
  return list
end

--- Splits a migration into statements: a statement ends with ';' at the end of a line; lines that
-- are only a -- comment are dropped.
function M.statements(sql)
  local out, cur = {}, {}
  for line in (sql .. "\n"):gmatch("([^\n]*)\n") do
    if not line:match("^%s*%-%-") and line:match("%S") then
      cur[#cur + 1] = line
      if line:match(";%s*$") then
        out[#out + 1] = table.concat(cur, "\n"):gsub(";%s*$", "")
        cur = {}
      end
    end
  end
  if #cur > 0 then out[#out + 1] = table.concat(cur, "\n") end
  return out
end

local function check(what, ok, err, code)
  if ok == nil then error(string.format("%s: %s (%s)", what, tostring(err), tostring(code)), 0) end
  return ok
end

local function ensure_table_and_lock()
  if db.dialect() == "postgres" then
    check("migration lock", db.query("SELECT pg_advisory_xact_lock(?)", LOCK_ID))
  end
  check("schema_migrations", db.exec([[CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL)]]))
  -- on SQLite a write takes the database's write lock for the rest of the transaction
  check("migration lock", db.exec("DELETE FROM schema_migrations WHERE 1 = 0"))
end

local function applied_map()
  local rows = check("schema_migrations",
    db.query("SELECT version, name, checksum, applied_at FROM schema_migrations"))
  local m = {}
  for _, r in ipairs(rows) do m[math.tointeger(r.version) or r.version] = r end
  return m
end

-- Does schema_migrations exist? Read-only, so an engine whose database role may not create
-- tables can still check that the schema is current.
local function table_exists()
  local sql = db.dialect() == "postgres"
    and "SELECT to_regclass('schema_migrations') IS NOT NULL AS present"
    or "SELECT COUNT(*) > 0 AS present FROM sqlite_master WHERE type = 'table' "
      .. "AND name = 'schema_migrations'"
  local row = check("schema_migrations", db.query(sql))[1]
  return row.present == true or row.present == 1
end

local function merge(list, applied)
  local out = {}
  for _, m in ipairs(list) do
    local a = applied[m.version]
    out[#out + 1] = { version = m.version, name = m.name, file = m.file, applied = a ~= nil,
                      applied_at = a and a.applied_at,
                      modified = a ~= nil and a.checksum ~= m.checksum }
    applied[m.version] = nil
  end
  for v, a in pairs(applied) do -- applied by a newer engine: this tree does not know it
    out[#out + 1] = { version = v, name = a.name, applied = true, applied_at = a.applied_at,
                      unknown = true }
  end
  table.sort(out, function(a, b) return a.version < b.version end)
  return out
end

--- {version, name, file, applied, applied_at, modified, unknown} for every known or applied
-- migration. Reads only: no lock, no table created.
function M.status()
  local applied = table_exists() and applied_map() or {}
  return merge(M.available(), applied)
end

--- Raises if an applied migration's file was changed since (its checksum differs): the schema
-- in the database is then not what the files say.
function M.check_unchanged(status)
  for _, m in ipairs(status or M.status()) do
    if m.modified then
      error(string.format("%s was changed after it was applied (checksum differs): restore the "
        .. "file and put the change in a new migration", m.file), 0)
    end
  end
end

--- Number of migrations not applied yet (raises if an applied one was changed).
function M.pending()
  local st = M.status()
  M.check_unchanged(st)
  local n = 0
  for _, m in ipairs(st) do if not m.applied then n = n + 1 end end
  return n
end

--- Applies the pending migrations. Returns the list applied (empty when up to date).
function M.up()
  local list = M.available()
  local done = {}
  db.transaction(function()
    ensure_table_and_lock()
    local applied = applied_map()
    M.check_unchanged(merge(list, applied_map()))
    for _, m in ipairs(list) do
      if not applied[m.version] then
        for i, stmt in ipairs(M.statements(m.sql)) do
          check(string.format("%s, statement %d", m.file, i), db.exec(stmt))
        end
        check("schema_migrations", db.exec("INSERT INTO schema_migrations "
          .. "(version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
          m.version, m.name, m.checksum, now()))
        done[#done + 1] = m
      end
    end
  end)
  return done
end

--- `faultmaven migrate [status|up]`: prints and returns an exit code.
function M.cli(cmd)
  cmd = cmd or "status"
  if cmd == "up" then
    local done = M.up()
    if #done == 0 then print("database is up to date") end
    for _, m in ipairs(done) do print(string.format("applied %04d %s", m.version, m.name)) end
    return 0
  elseif cmd == "status" then
    local pending, changed = 0, 0
    for _, m in ipairs(M.status()) do
      if m.modified then changed = changed + 1 end
      local state = m.unknown and "applied (unknown to this engine)"
        or m.applied and ("applied " .. m.applied_at
          .. (m.modified and " (file changed since)" or ""))
        or "pending"
      if not m.applied then pending = pending + 1 end
      print(string.format("%04d %-30s %s", m.version, m.name, state))
    end
    print(pending == 0 and "database is up to date" or (pending .. " pending"))
    if changed > 0 then
      print(changed .. " applied migration file(s) changed since: `migrate up` and the engine "
        .. "refuse to run until they are restored")
      return 1
    end
    return 0
  end
  io.stderr:write("usage: faultmaven migrate [status|up]\n")
  return 2
end

return M
