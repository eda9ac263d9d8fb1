-- Migrations: `faultmaven migrate`, startup migrations, the refusal to serve a schema that is
-- behind, and several engines migrating one database at once. On SQLite and PostgreSQL.
local helpers = require "spec.helpers"
local http = require "spec.helpers.http"
local migrate = require "fm.db.migrate"

local function run(args, env)
  local parts = {}
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. helpers.shell_quote(v) end
  local cmd = "env " .. table.concat(parts, " ") .. " " .. helpers.shell_quote(helpers.bin())
    .. " migrate " .. args .. " 2>&1"
  local ok, code, out = helpers.shell(cmd)
  return ok and 0 or code, out
end

describe("migration files", function()
  it("split into statements at a semicolon ending a line", function()
    assert.same({ "CREATE TABLE a (x TEXT DEFAULT 'a;b')", "CREATE INDEX i ON a (x)" },
      migrate.statements("-- comment;\nCREATE TABLE a (x TEXT DEFAULT 'a;b');\n\n"
        .. "CREATE INDEX i ON a (x);\n"))
  end)
end)

lazy_teardown(helpers.cleanup)

-- how many migrations the repository has (the specs below start from an empty database): one
-- per version number, whatever .sqlite.sql/.postgres.sql variants it has
local N = 0
do
  local seen = {}
  for _, f in ipairs(helpers.listdir(helpers.root .. "/migrations")) do
    local v = f:match("^(%d+)_")
    if v and not seen[v] then seen[v], N = true, N + 1 end
  end
end

for _, backend in ipairs(helpers.db_backends()) do
  describe("migrations on " .. backend.name, function()
    it("status, up, and up again with nothing to do", function()
      local env = { DATABASE_URL = backend.url(), FM_HOME = helpers.root,
                    FM_DATA_DIR = helpers.tmpdir("fm-mig-") }
      local code, out = run("status", env)
      assert.equal(0, code, out)
      assert.matches("0001 initial%s+pending", out)
      assert.matches(N .. " pending", out)
      code, out = run("up", env)
      assert.equal(0, code, out)
      assert.matches("applied 0001 initial", out)
      code, out = run("up", env)
      assert.equal(0, code, out)
      assert.matches("database is up to date", out)
      code, out = run("status", env)
      assert.equal(0, code, out)
      assert.matches("0001 initial%s+applied 20", out)
      code, out = run("sideways", env)
      assert.equal(2, code, out)
    end)

    it("status only reads; a changed applied migration stops up, status and the engine", function()
      local home = helpers.copy_home("fm-mig-home-")
      local url = backend.url()
      local env = { DATABASE_URL = url, FM_HOME = home, FM_DATA_DIR = helpers.tmpdir("fm-mig-") }
      assert.equal(0, (run("status", env)))
      local db = require "fm.db"
      assert(db.configure { url = url, pool_size = 1 })
      local probe = db.dialect() == "postgres"
        and "SELECT to_regclass('schema_migrations') IS NOT NULL AS present"
        or "SELECT COUNT(*) > 0 AS present FROM sqlite_master WHERE name = 'schema_migrations'"
      local present = assert(db.query(probe))[1].present
      assert.is_true(present == false or present == 0, "status created schema_migrations")
      db.close()
      assert.equal(0, (run("up", env)))
      local f = home .. "/migrations/0001_initial.sql"
      helpers.write_file(f, helpers.read_file(f) .. "\n-- an edit after the fact\n")
      local code, out = run("up", env)
      assert.equal(1, code, out)
      assert.matches("0001_initial.sql was changed after it was applied", out, 1, true)
      code, out = run("status", env)
      assert.equal(1, code, out)
      assert.matches("file changed since", out, 1, true)
      local dir = helpers.tmpdir("fm-mig-")
      local p = helpers.spawn { argv = { helpers.bin(), "serve" }, stdout = dir .. "/log",
        stderr = dir .. "/log", env = { DATABASE_URL = url, FM_HOME = home,
        FM_DATA_DIR = dir .. "/data", FM_PORT = tostring(helpers.free_port()) } }
      local how, c2 = p:wait(20)
      assert.equal("exit", how)
      assert.equal(1, c2)
      assert.matches("was changed after it was applied", helpers.read_file(dir .. "/log"), 1, true)
    end)

    it("engines refuse to serve a schema that is behind unless they may migrate", function()
      local url = backend.url()
      local dir = helpers.tmpdir("fm-mig-")
      local log = dir .. "/engine.log"
      local p = helpers.spawn { argv = { helpers.bin(), "serve" }, stdout = log, stderr = log,
        env = { DATABASE_URL = url, RUN_STARTUP_MIGRATIONS = "false", FM_HOME = helpers.root,
                FM_DATA_DIR = dir .. "/data", FM_PORT = tostring(helpers.free_port()) } }
      local how, code = p:wait(20)
      assert.equal("exit", how)
      assert.equal(1, code)
      assert.matches(N .. " database migration%(s%) pending: run `faultmaven migrate up`",
        helpers.read_file(log))
    end)

    it("applies each migration once when several engines start at once", function()
      local url = backend.url()
      local engines = {}
      for i = 1, 3 do -- started together, not one after the other
        local dir = helpers.tmpdir("fm-mig-")
        local port = helpers.free_port()
        engines[i] = { port = port, log = dir .. "/engine.log", proc = helpers.spawn {
          argv = { helpers.bin(), "serve" }, stdout = dir .. "/engine.log",
          stderr = dir .. "/engine.log",
          env = { DATABASE_URL = url, RUN_STARTUP_MIGRATIONS = "true", FM_HOME = helpers.root,
                  FM_DATA_DIR = dir .. "/data", FM_PORT = tostring(port), FM_WORKERS = "2" } } }
      end
      local applied = {}
      for _, e in ipairs(engines) do
        helpers.wait_until(function()
          local r = http.request("127.0.0.1", e.port, "GET", "/readiness", { timeout = 1 })
          return r and r.status == 200
        end, 30, 0.05)
        for line in (helpers.read_file(e.log) or ""):gmatch("[^\n]+") do
          if line:find('"database migration applied"', 1, true) then
            local v = line:match('"version":(%d+)')
            applied[v] = (applied[v] or 0) + 1
          end
        end
      end
      local versions = 0
      for v, times in pairs(applied) do
        versions = versions + 1
        assert.equal(1, times, "migration " .. v .. " applied " .. times .. " times")
      end
      assert.equal(N, versions)
      local code, out = run("status", { DATABASE_URL = url, FM_HOME = helpers.root,
                                        FM_DATA_DIR = helpers.tmpdir("fm-mig-") })
      assert.equal(0, code)
      assert.matches("database is up to date", out)
    end)
  end)
end

describe("a database that goes away", function()
  lazy_teardown(helpers.cleanup)

  it("turns into 503 with Retry-After, and the engine recovers when it is back", function()
    local pg = helpers.postgres.start()
    local url = pg:url_for(pg:create_database())
    local engine = helpers.engine.start { env = { DATABASE_URL = url,
      DATABASE_POOL_TIMEOUT_S = "1", FM_WORKERS = "2" } }
    local login = assert(engine:post("/api/v1/auth/dev-login", { json = { username = "u" } }))
    local token = login.json().access_token
    local function list()
      return assert(engine:get("/api/v1/cases", { headers = { Authorization = "Bearer " .. token },
                                                  timeout = 20 }))
    end
    assert.equal(200, list().status)
    pg:stop()
    local r = list()
    assert.equal(503, r.status, r.body)
    assert.equal("1", r.headers["retry-after"])
    assert.equal("DATABASE_UNAVAILABLE", r.headers["x-error-code"])
    assert.equal(200, assert(engine:get("/health/live")).status)
  end)
end)

describe("a statement that runs too long on PostgreSQL", function()
  lazy_teardown(helpers.cleanup)

  it("ends at DATABASE_STATEMENT_TIMEOUT_S with a 503, and frees its connection", function()
    local pg = helpers.postgres.start()
    local engine = helpers.engine.start { env = {
      DATABASE_URL = pg:url_for(pg:create_database()), DATABASE_STATEMENT_TIMEOUT_S = "0.5",
      DATABASE_POOL_SIZE = "1", FM_WORKERS = "2",
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.db_routes" } }
    assert.equal(200, assert(engine:get("/test/db/sleep?ms=50")).status)
    local t0 = helpers.now()
    local r = assert(engine:get("/test/db/sleep?ms=5000", { timeout = 10 }))
    assert.equal(503, r.status, r.body)
    assert.is_true(helpers.now() - t0 < 3, "the statement was not cut at its timeout")
    -- the one pooled connection is usable again
    assert.equal(200, assert(engine:get("/test/db/query")).status)
  end)
end)
