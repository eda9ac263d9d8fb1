-- fm.db on SQLite and on a real PostgreSQL: values, NULLs, placeholders, errors and their codes,
-- transactions (commit, rollback, savepoints, aborts), the pool, lost connections; and the engine
-- with a database: exhaustion under load, /health, refusing to start.
local helpers = require "spec.helpers"
local db = require "fm.db"
local json = require "fm.json"
local sandbox_core = require "fm.sandbox_core"

local SCHEMA = {
  [[CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT NOT NULL)]],
  [[CREATE TABLE items (
      id INTEGER PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      qty INTEGER,
      big BIGINT,
      price DOUBLE PRECISION,
      ok BOOLEAN,
      note TEXT,
      owner_id INTEGER REFERENCES owners (id),
      created_at TEXT)]],
}

local function count(where, ...)
  local rows = assert(db.query("SELECT COUNT(*) AS n FROM items" .. (where or ""), ...))
  return rows[1].n
end

-- one PostgreSQL server for the whole file: stopped (and fm.db's pool closed) at the end
lazy_teardown(helpers.cleanup)

for _, backend in ipairs(helpers.db_backends()) do
  local pg = backend.name == "postgres"

  describe("fm.db on " .. backend.name, function()
    lazy_setup(function()
      assert(db.configure { url = backend:url(), pool_size = 3, pool_timeout_s = 0.3,
                            connect_timeout_s = 5 })
      for _, sql in ipairs(SCHEMA) do assert(db.exec(sql)) end
      assert(db.exec("INSERT INTO owners (id, name) VALUES (?, ?)", 1, "ops"))
    end)
    lazy_teardown(db.close)
    before_each(function() assert(db.exec("DELETE FROM items")) end)

    it("names its dialect and answers a ping", function()
      assert.equal(backend.name, db.dialect())
      assert.is_true(db.ping())
      local s = db.stats()
      assert.equal(backend.name, s.backend)
      assert.equal(3, s.size)
      assert.equal(0, s.in_use)
    end)

    it("stores and reads back every value type", function()
      local text = "it's \"quoted\" ? $1 -- not a comment /* nor this */ \u{e9}\u{1F600}"
      local res = assert(db.exec("INSERT INTO items (id, name, qty, big, price, ok, note, "
        .. "owner_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        1, text, -42, math.maxinteger, 1.25, true, nil, 1, "2026-11-22T06:40:00.123Z"))
      assert.equal(1, res.changes)
      local row = assert(db.query("SELECT * FROM items WHERE id = ?", 1))[1]
      assert.equal(text, row.name)
      assert.equal(-42, row.qty)
      assert.equal("integer", math.type(row.qty))
      assert.equal(math.maxinteger, row.big)
      assert.equal(1.25, row.price)
      assert.equal("float", math.type(row.price))
      if pg then assert.equal(true, row.ok) else assert.equal(1, row.ok) end
      assert.is_nil(row.note) -- NULL columns are absent
      assert.is_nil(rawget(row, "note"))
      assert.equal("2026-11-22T06:40:00.123Z", row.created_at)
      assert.equal(1, row.owner_id)

      assert(db.exec("INSERT INTO items (id, name, ok, price) VALUES (?, ?, ?, ?)", 2, "f", false,
        -1e300))
      row = db.query("SELECT ok, price FROM items WHERE id = 2")[1]
      if pg then assert.equal(false, row.ok) else assert.equal(0, row.ok) end
      assert.equal(-1e300, row.price)
    end)

    it("converts expressions by type: integers, numbers, booleans, text", function()
      local row = assert(db.query("SELECT 1 + 1 AS i, 2.5 AS f, 'x' AS s, NULL AS n, "
        .. "1 = 1 AS b, COUNT(*) AS c FROM owners"))[1]
      assert.equal(2, row.i)
      assert.equal("integer", math.type(row.i))
      assert.equal(2.5, row.f)
      assert.equal("x", row.s)
      assert.is_nil(row.n)
      if pg then assert.equal(true, row.b) else assert.equal(1, row.b) end
      assert.equal(1, row.c)
      assert.equal("integer", math.type(row.c))
    end)

    it("binds trailing nils and fm.json.null as NULL", function()
      assert(db.exec("INSERT INTO items (id, name, note, qty) VALUES (?, ?, ?, ?)", 3, "n", nil,
        nil))
      assert(db.exec("INSERT INTO items (id, name, note) VALUES (?, ?, ?)", 4, "j", json.null))
      assert.equal(2, count(" WHERE note IS NULL AND qty IS NULL OR id = 4 AND note IS NULL"))
      local row = db.query("SELECT ? AS a, ? AS b", "x", nil)[1]
      assert.same({ a = "x" }, row)
    end)

    it("raises on misuse: wrong number of values, bad types, NaN, $n and ?n placeholders",
      function()
        assert.has_error(function() db.query("SELECT ? AS a", 1, 2) end,
          "fm.db.query: the SQL has 1 ? placeholder but 2 values were given")
        assert.has_error(function() db.exec("SELECT ?, ?", 1) end,
          "fm.db.exec: the SQL has 2 ? placeholders but 1 value was given")
        assert.has_error(function() db.query("SELECT ?", nil, nil) end)
        assert.has_error(function() db.query("SELECT ?", {}) end)
        assert.has_error(function() db.query("SELECT ?", print) end)
        assert.has_error(function() db.query("SELECT ?", 0 / 0) end)
        assert.has_error(function() db.query("SELECT ?1", 1) end)
        assert.has_error(function() db.query(42) end)
        assert.has_error(function() db.query("SELECT 'unterminated") end)
        assert.has_error(function() db.exec("SELECT ?; SELECT ?", 1, 2) end)
        if pg then assert.has_error(function() db.query("SELECT $1", 1) end)
        else assert.has_error(function() db.query("SELECT :name") end) end
        assert.equal(0, db.stats().in_use)
      end)

    it("counts ? only outside literals, quoted names and comments", function()
      local rows = assert(db.query("SELECT '?' AS q, 'it''s ?' AS r, ? AS v /* ? */ -- ?\n",
        "x"))
      assert.same({ { q = "?", r = "it's ?", v = "x" } }, rows)
    end)

    it("stores SQL injection attempts verbatim", function()
      local evil = {
        "Robert'); DROP TABLE items;--", "' OR '1'='1", "\\'; DELETE FROM items; --",
        "?", "$1", "'; SELECT pg_sleep(10); --", "*/ DROP TABLE owners; /*",
      }
      for i, s in ipairs(evil) do
        assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 100 + i, s))
      end
      assert.equal(#evil, count())
      for i, s in ipairs(evil) do
        local rows = assert(db.query("SELECT name FROM items WHERE name = ?", s))
        assert.equal(1, #rows)
        assert.equal(s, rows[1].name)
        assert.equal(100 + i, db.query("SELECT id FROM items WHERE name = ?", s)[1].id)
      end
      assert.equal(1, #assert(db.query("SELECT * FROM owners")))
    end)

    it("returns nil, message, SQLSTATE for constraint violations", function()
      assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 1, "dup"))
      local res, msg, code = db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 2, "dup")
      assert.is_nil(res)
      assert.equal("23505", code)
      assert.is_string(msg)
      res, msg, code = db.exec("INSERT INTO items (id, name, owner_id) VALUES (?, ?, ?)", 3, "o",
        999)
      assert.is_nil(res, msg)
      assert.equal("23503", code)
      res, _, code = db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 4, nil)
      assert.is_nil(res)
      assert.equal("23502", code)
      res, _, code = db.query("SELECT * FROM no_such_table")
      assert.is_nil(res)
      assert.matches("^42", code)
      assert.equal(0, db.stats().in_use)
    end)

    it("reports changes and last_id (RETURNING on both; rowid on SQLite)", function()
      for i = 1, 3 do assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", i, "n" .. i)) end
      assert.equal(2, db.exec("UPDATE items SET qty = 1 WHERE id > ?", 1).changes)
      assert.equal(0, db.exec("UPDATE items SET qty = 1 WHERE id > 100").changes)
      assert.equal(0, db.exec("SELECT * FROM items").changes)
      local res = assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?) RETURNING id", 7,
        "r"))
      assert.equal(7, res.last_id)
      assert.equal(1, res.changes)
      res = assert(db.exec("INSERT INTO items (id, name) VALUES (8, 'n8') RETURNING name"))
      assert.equal("n8", res.last_id)
      res = assert(db.exec("INSERT INTO items (id, name) VALUES (9, 'n9')"))
      if pg then assert.is_nil(res.last_id) else assert.equal(9, res.last_id) end
      assert.is_nil(db.exec("DELETE FROM items WHERE id = 9").last_id)
      local rows = assert(db.query("DELETE FROM items WHERE id >= ? RETURNING id", 7))
      assert.equal(2, #rows)
    end)

    it("gives an empty result as an array fm.json encodes as []", function()
      local rows = assert(db.query("SELECT * FROM items WHERE id < 0"))
      assert.equal(0, #rows)
      assert.equal("[]", json.encode(rows))
      assert.equal('{"items":[]}', json.encode({ items = rows }))
    end)

    it("runs a script of statements when no values are bound", function()
      assert(db.exec([[
        CREATE TABLE s1 (a INTEGER); -- first
        /* second */ CREATE TABLE s2 (b TEXT);
        INSERT INTO s1 (a) VALUES (1);
      ]]))
      assert.same({ { a = 1 } }, db.query("SELECT a FROM s1"))
      assert(db.exec("DROP TABLE s1; DROP TABLE s2"))
    end)

    it("keeps bytes: NUL bytes on SQLite, refused with 22021 on PostgreSQL", function()
      local s = "a\0b\255"
      if pg then
        local res, msg, code = db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 1, s)
        assert.is_nil(res)
        assert.equal("22021", code, msg)
      else
        assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 1, s))
        assert.equal(s, db.query("SELECT name FROM items WHERE id = 1")[1].name)
      end
    end)

    describe("transactions", function()
      it("commit and return fn's results", function()
        assert.is_false(db.in_transaction())
        local a, b, c = db.transaction(function(x)
          assert.is_true(db.in_transaction())
          assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 1, "t1"))
          assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 2, "t2"))
          assert.equal(2, count()) -- its own writes are visible inside
          return x, nil, "z"
        end, "arg")
        assert.equal("arg", a)
        assert.is_nil(b)
        assert.equal("z", c)
        assert.is_false(db.in_transaction())
        assert.equal(2, count())
        assert.equal(0, db.stats().in_use)
      end)

      it("roll back and re-raise fn's error unchanged", function()
        local err = setmetatable({ why = "x" }, {})
        local ok, got = pcall(db.transaction, function()
          assert(db.exec("INSERT INTO items (id, name) VALUES (?, ?)", 1, "gone"))
          error(err)
        end)
        assert.is_false(ok)
        assert.equal(err, got)
        assert.equal(0, count())
        ok, got = pcall(db.transaction, function() error("plain", 0) end)
        assert.is_false(ok)
        assert.equal("plain", got)
        assert.equal(0, db.stats().in_use)
      end)

      it("use savepoints when nested: an inner failure rolls back only the inner part",
        function()
          db.transaction(function()
            assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'outer')"))
            local ok = pcall(db.transaction, function()
              assert(db.exec("INSERT INTO items (id, name) VALUES (2, 'inner')"))
              error("inner fails")
            end)
            assert.is_false(ok)
            assert.equal(3, db.transaction(function()
              assert(db.exec("INSERT INTO items (id, name) VALUES (3, 'inner ok')"))
              return 3
            end))
          end)
          local names = {}
          for _, r in ipairs(db.query("SELECT name FROM items ORDER BY id")) do
            names[#names + 1] = r.name
          end
          assert.same({ "outer", "inner ok" }, names)
        end)

      it("are aborted by a failed statement on both databases (25P02, then an error)",
        function()
          local second
          local ok, err = pcall(db.transaction, function()
            assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'a')"))
            local res, _, code = db.exec("INSERT INTO items (id, name) VALUES (2, 'a')")
            assert.is_nil(res)
            assert.equal("23505", code)
            second = { db.query("SELECT 1 AS one") }
            return "fn returned normally"
          end)
          assert.is_false(ok)
          assert.equal("23505", err.code)
          assert.equal(db.error_mt, getmetatable(err))
          assert.matches("SQLSTATE 23505", tostring(err), 1, true)
          assert.is_nil(second[1])
          assert.equal("25P02", second[3])
          assert.equal(0, count()) -- the first insert was rolled back too
          -- a savepoint contains the failure: the usual "insert or keep going" shape
          db.transaction(function()
            assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'a')"))
            local inner_ok, inner = pcall(db.transaction, function()
              return db.exec("INSERT INTO items (id, name) VALUES (2, 'a')")
            end)
            assert.is_false(inner_ok)
            assert.equal("23505", inner.code)
            assert(db.exec("INSERT INTO items (id, name) VALUES (3, 'b')"))
          end)
          assert.equal(2, count())
        end)

      it("roll back and give the connection back on an instruction budget abort", function()
        local ok, kind = sandbox_core.run({ instructions = 200000 }, function()
          db.transaction(function()
            assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'spin')"))
            while true do end
          end)
        end)
        assert.is_false(ok)
        assert.equal("instructions", kind)
        assert.is_false(db.in_transaction())
        assert.equal(0, db.stats().in_use)
        assert.equal(0, count())
        assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'after')")) -- usable again
        assert.equal(1, count())
      end)

      it("roll back and give the connection back on a memory abort", function()
        local ok, kind = sandbox_core.run({ memory = 2 * 1024 * 1024 }, function()
          db.transaction(function()
            assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'hog')"))
            local t = {}
            for i = 1, 1e8 do t[i] = { i } end
            return #t
          end)
        end)
        assert.is_false(ok)
        assert.equal("memory", kind)
        assert.is_false(db.in_transaction())
        assert.equal(0, db.stats().in_use)
        assert.equal(0, count())
      end)

      it("need one connection only: queries and nested levels use the pinned one", function()
        -- (exhaustion needs a second borrower: tests/test_db.c and the engine test below)
        assert(db.configure { url = backend:url(), pool_size = 1, pool_timeout_s = 0.1 })
        for _, sql in ipairs(SCHEMA) do assert(db.exec(sql)) end
        db.transaction(function()
          assert.equal(1, db.stats().in_use)
          assert(db.exec("INSERT INTO items (id, name) VALUES (1, 'one')"))
          db.transaction(function()
            assert.equal(1, count())
            assert.is_true(db.ping(0))
          end)
        end)
        assert.equal(0, db.stats().in_use)
        assert.equal(1, count())
      end)
    end)

    if pg then
      describe("lost connections", function()
        lazy_setup(function()
          assert(db.configure { url = backend:url(), pool_size = 2, pool_timeout_s = 1 })
          for _, sql in ipairs(SCHEMA) do assert(db.exec(sql)) end
        end)

        local function terminate(pid)
          local server = backend:server()
          local ok, out = server:psql(("SELECT pg_terminate_backend(%d)"):format(pid))
          assert(ok, out)
          helpers.wait_until(function()
            local _, n = server:psql(("SELECT count(*) FROM pg_stat_activity WHERE pid = %d")
              :format(pid))
            return tonumber(n) == 0
          end, 5)
        end

        it("reconnects at the next use after the server ended an idle connection", function()
          local pid = assert(db.query("SELECT pg_backend_pid() AS pid"))[1].pid
          local before = db.stats().reconnects
          terminate(pid)
          local rows = assert(db.query("SELECT pg_backend_pid() AS pid"))
          assert.not_equal(pid, rows[1].pid)
          assert.equal(before + 1, db.stats().reconnects)
        end)

        it("fails the call that finds it lost (08006/57P01), then the next one reconnects",
          function()
            local got
            local ok, err = pcall(db.transaction, function()
              local pid = assert(db.query("SELECT pg_backend_pid() AS pid"))[1].pid
              terminate(pid)
              got = { db.query("SELECT 1 AS one") }
            end)
            assert.is_nil(got[1])
            assert.is_string(got[2])
            assert.truthy(got[3] == "57P01" or got[3] == "08006", tostring(got[3]))
            assert.is_false(ok) -- the transaction could not commit
            assert.truthy(err.code == "57P01" or err.code == "08006", tostring(err))
            assert.equal(0, db.stats().in_use)
            assert.same({ { one = 1 } }, assert(db.query("SELECT 1 AS one")))
          end)
      end)
    end

    describe("the database health check", function()
      it("is healthy with the backend, latency and pool counters", function()
        local check = require("fm.services.database").check
        local status, details = check()
        assert.equal("healthy", status)
        assert.equal(backend.name, details.backend)
        assert.is_number(details.latency_ms)
        assert.is_number(details.pool.size)
      end)
    end)
  end)

  describe("the engine on " .. backend.name, function()

    it("answers 'database pool exhausted' when every connection is held, and /health shows "
      .. "the database", function()
      local engine = helpers.engine.start { env = {
        DATABASE_URL = backend:url(), DATABASE_POOL_SIZE = "1", DATABASE_POOL_TIMEOUT_S = "0.3",
        FM_WORKERS = "2", FM_EXTRA_ROUTES = "fm_test.routes,fm_test.db_routes" } }
      local h = assert(engine:get("/health")).json()
      assert.equal("healthy", h.components.database.status)
      assert.equal(backend.name, h.components.database.backend)

      local holder = engine:client()
      holder:send_raw("GET /test/db/hold?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
      helpers.wait_until(function()
        return assert(engine:get("/test/db/query")).status == 503
      end, 3, 0.05)
      local r = assert(engine:get("/test/db/query"))
      assert.equal(503, r.status)
      assert.equal("53300", r.json().code)
      assert.matches("database pool exhausted", r.json().error, 1, true)
      local held = assert(holder:read_response({ timeout = 5 }))
      assert.equal(200, held.status)
      r = assert(engine:get("/test/db/query"))
      assert.equal(200, r.status)
      assert.same({ one = 1, dialect = backend.name }, r.json())
      local how, code = engine:stop()
      assert.equal("exit", how)
      assert.equal(0, code, engine:log_tail(40))
    end)
  end)
end

describe("the engine and DATABASE_URL", function()
  local bin = helpers.bin()

  local function run(argv, env)
    local dir = helpers.tmpdir("fm-dbcli-")
    local out, err = dir .. "/out", dir .. "/err"
    local p = helpers.spawn({ argv = argv, env = env, stdout = out, stderr = err,
                              cwd = helpers.root })
    local how, code = p:wait(30)
    assert.equal("exit", how, "did not exit in time: " .. tostring(code))
    return code, helpers.read_file(out) or "", helpers.read_file(err) or ""
  end

  it("refuses an invalid URL with exit 2, never showing the password", function()
    for _, url in ipairs({ "mysql://u:hunter2@h/db", "sqlite://", "faultmaven.db",
                           "postgresql://u:hunter2@h/db?bogus=1" }) do
      local code, _, err = run({ bin, "serve" }, { DATABASE_URL = url,
        FM_DATA_DIR = helpers.tmpdir(), FM_PORT = "0" })
      assert.equal(2, code, err)
      assert.matches("DATABASE_URL: ", err, 1, true)
      assert.not_matches("hunter2", err, 1, true)
      assert.not_matches("stack traceback", err, 1, true)
    end
  end)

  it("check-config masks the password", function()
    local code, out = run({ bin, "check-config" },
      { DATABASE_URL = "postgresql+asyncpg://fm:hunter2@db:5432/fm" })
    assert.equal(0, code)
    assert.matches("DATABASE_URL%s+postgresql%+asyncpg://fm:%*%*%*%*@db:5432/fm", out)
    assert.not_matches("hunter2", out, 1, true)
    code, out = run({ bin, "check-config" }, { FM_DATA_DIR = "/srv/fm" })
    assert.equal(0, code)
    assert.matches("DATABASE_URL%s+sqlite:////srv/fm/faultmaven.db", out)
  end)

  it("exits 1 when PostgreSQL never answers within the retry budget, logging each attempt",
    function()
      local port = helpers.free_port()
      local t0 = helpers.now()
      local code, out, err = run({ bin, "serve" }, {
        DATABASE_URL = ("postgresql://fm:hunter2@127.0.0.1:%d/fm"):format(port),
        DATABASE_CONNECT_TIMEOUT_S = "1", FM_DATA_DIR = helpers.tmpdir(), FM_PORT = "0" })
      local took = helpers.now() - t0
      local all = out .. err
      assert.equal(1, code, all)
      assert.is_true(took >= 0.9 and took < 10, "took " .. took)
      assert.matches("cannot connect", all, 1, true)
      assert.matches("database: connect failed, retrying", all, 1, true)
      local attempts = 0
      for _ in all:gmatch('"attempt":%d+') do attempts = attempts + 1 end
      assert.is_true(attempts >= 2, all)
      assert.matches("fm:****@127.0.0.1", all, 1, true)
      assert.not_matches("hunter2", all, 1, true)
    end)
end)
