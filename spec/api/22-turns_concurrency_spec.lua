-- Turns that race, run too long or are retried, on SQLite and PostgreSQL: one turn of a case at a
-- time (409 TURN_IN_PROGRESS with Retry-After while another runs), 504 REQUEST_TIMEOUT past
-- AGENT_REQUEST_TIMEOUT with nothing of the turn stored and the case's lock released, and the
-- Idempotency-Key replay of a turn. A slow investigation comes from fm_test.turn_routes: a query
-- holding "[slow:S]" spends S seconds in the agent's LLM step (fm.agent.llm.register).
local helpers = require "spec.helpers"
local http = require "spec.helpers.http"
local tc = require "fm_test.turns_client"

local function engine_env(url, extra)
  local env = { DATABASE_URL = url, FM_WORKERS = "3",
    FM_LUA_PATH = helpers.root .. "/spec/fixtures/lua/?.lua",
    FM_EXTRA_ROUTES = "fm_test.routes,fm_test.upload_routes,fm_test.turn_routes",
    FM_HOUSEKEEPING_INTERVAL_S = "0" }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function login(engine, name)
  local r = assert(engine:request("POST", "/api/v1/auth/dev-login",
    { json = { username = name } }))
  assert.equal(200, r.status, r.body)
  return r.json().access_token
end

-- Sends a turn on its own connection and returns a function that reads its answer later.
local function send_turn(engine, token, case_id, fields, headers)
  local conn = assert(http.connect(engine.host, engine.port, { timeout = 60 }))
  local body = tc.form(fields)
  local head = { ("POST /api/v1/cases/%s/turns HTTP/1.1"):format(case_id),
    ("Host: 127.0.0.1:%d"):format(engine.port), "Authorization: Bearer " .. token,
    "Content-Type: multipart/form-data; boundary=" .. tc.BOUNDARY,
    "Content-Length: " .. #body }
  for k, v in pairs(headers or {}) do head[#head + 1] = k .. ": " .. v end
  assert(conn:send_raw(table.concat(head, "\r\n") .. "\r\n\r\n" .. body))
  return function()
    local res = assert(conn:read_response({ timeout = 60 }))
    conn:close()
    return res
  end
end

local function stored_keys(c, case_id)
  return c:get("/test/storage/list?prefix=cases/" .. case_id).keys
end

for _, b in ipairs(helpers.db_backends()) do
  describe("turn concurrency on " .. b.name, function()
    local engine, c, tok, url
    lazy_setup(function()
      url = b.url()
      engine = helpers.engine.start { env = engine_env(url) }
      tok = login(engine, "racer")
      c = tc.new(engine, tok)
    end)
    lazy_teardown(helpers.cleanup)

    -- Waits until a turn of the case holds its lock (read from the database itself).
    local function wait_locked(case_id)
      local db = require "fm.db"
      db.configure { url = url, pool_size = 1 }
      helpers.wait_until(function()
        local row = assert(db.query("SELECT turn_lock FROM cases WHERE id = ?", case_id))[1]
        return row and row.turn_lock ~= nil
      end, 20, 0.02)
      db.close()
    end

    it("runs one turn of a case at a time: the second is 409 TURN_IN_PROGRESS", function()
      assert.is_true(c:get("/test/turns/hook").registered)
      local case_id = c:new_case { description = "the api is slow" }
      local first = send_turn(engine, tok, case_id,
        { query = "[slow:2] our api answers slowly since this morning" })
      -- the first turn holds the case's lock while its agent sleeps
      wait_locked(case_id)
      local before = c:snapshot(case_id)
      local second = c:turn(case_id, { query = "and errors too",
        file = { "app-enospc.log", tc.fixture("app-enospc.log") } })
      assert.equal(409, second.status, second.body)
      assert.equal("TURN_IN_PROGRESS", second.headers["x-error-code"])
      assert.is_truthy(tonumber(second.headers["retry-after"]))
      assert.is_string(second.json().detail)
      -- a turn on another case is not blocked
      local other = c:new_case { description = "other" }
      local o = c:turn(other, { query = "is this blocked?" })
      assert.equal(200, o.status, o.body)
      -- the refused turn stored nothing, not even its file's object
      assert.same(before, c:snapshot(case_id))
      assert.same({}, stored_keys(c, case_id))
      local r1 = first()
      assert.equal(200, r1.status, r1.body)
      assert.equal(1, r1.json().turn_number)
      -- the lock is free again: the next turn runs
      local r3 = c:turn(case_id, { query = "and errors too",
        file = { "app-enospc.log", tc.fixture("app-enospc.log") } })
      assert.equal(200, r3.status, r3.body)
      assert.equal(2, r3.json().turn_number)
      local s = c:snapshot(case_id)
      assert.equal(2, s.current_turn)
      assert.equal(4, s.messages)
      assert.equal(1, s.files)
    end)

    it("replays a turn for its Idempotency-Key and refuses the key with another body", function()
      local case_id = c:new_case { description = "replay" }
      local key = "turn-key-" .. tostring(math.random(1e9))
      local fields = { query = "disk full on the ingest host",
                       file = { "app-enospc.log", tc.fixture("app-enospc.log") } }
      local r1 = c:turn(case_id, fields, { headers = { ["Idempotency-Key"] = key } })
      assert.equal(200, r1.status, r1.body)
      assert.is_nil(r1.headers["x-idempotency-replayed"])
      local r2 = c:turn(case_id, fields, { headers = { ["Idempotency-Key"] = key } })
      assert.equal(200, r2.status, r2.body)
      assert.equal("true", r2.headers["x-idempotency-replayed"])
      assert.equal(r1.body, r2.body)
      -- nothing ran twice
      local s = c:snapshot(case_id)
      assert.equal(1, s.current_turn)
      assert.equal(2, s.messages)
      assert.equal(1, s.files)
      local r3 = c:turn(case_id, { query = "something else" },
        { headers = { ["Idempotency-Key"] = key } })
      assert.equal(409, r3.status, r3.body)
      assert.equal("IDEMPOTENCY_KEY_REUSE", r3.headers["x-error-code"])
      assert.same(s, c:snapshot(case_id))
      -- the same key while its first use still runs: 409 TURN_IN_PROGRESS
      local key2 = "turn-key-slow-" .. tostring(math.random(1e9))
      local slow = { query = "[slow:2] still slow?" }
      local pending = send_turn(engine, tok, case_id, slow, { ["Idempotency-Key"] = key2 })
      wait_locked(case_id)
      local dup = c:turn(case_id, slow, { headers = { ["Idempotency-Key"] = key2 } })
      assert.equal(409, dup.status, dup.body)
      assert.equal("TURN_IN_PROGRESS", dup.headers["x-error-code"])
      assert.is_truthy(dup.headers["retry-after"])
      local done = pending()
      assert.equal(200, done.status, done.body)
      local again = c:turn(case_id, slow, { headers = { ["Idempotency-Key"] = key2 } })
      assert.equal("true", again.headers["x-idempotency-replayed"])
      assert.equal(done.body, again.body)
    end)
  end)

  describe("turn timeout on " .. b.name, function()
    local engine, c, url
    lazy_setup(function()
      url = b.url()
      engine = helpers.engine.start { env = engine_env(url, { AGENT_REQUEST_TIMEOUT = "1" }) }
      c = tc.new(engine, login(engine, "patient"))
    end)
    lazy_teardown(helpers.cleanup)

    it("answers 504 REQUEST_TIMEOUT past AGENT_REQUEST_TIMEOUT and stores nothing", function()
      local case_id = c:new_case { description = "timeouts" }
      local r0 = c:turn(case_id, { query = "the ingest host fails writes" })
      assert.equal(200, r0.status, r0.body)
      local before = c:snapshot(case_id)
      local key = "timeout-key-" .. tostring(math.random(1e9))
      local fields = { query = "[slow:2] here is the log",
                       file = { "app-enospc.log", tc.fixture("app-enospc.log") } }
      local t0 = helpers.now()
      local r = c:turn(case_id, fields, { headers = { ["Idempotency-Key"] = key } })
      assert.equal(504, r.status, r.body)
      assert.equal("REQUEST_TIMEOUT", r.headers["x-error-code"])
      assert.matches("AGENT_REQUEST_TIMEOUT", r.json().detail, 1, true)
      assert.is_true(helpers.now() - t0 < 10)
      -- nothing of the turn: no message, no file row, no stored object, the turn counter as it was
      assert.same(before, c:snapshot(case_id))
      assert.same({}, stored_keys(c, case_id))
      -- the lock and the key were released: the same request (without the delay) runs now
      fields.query = "here is the log"
      local again = c:turn(case_id, fields, { headers = { ["Idempotency-Key"] = key .. "b" } })
      assert.equal(200, again.status, again.body)
      assert.equal(before.current_turn + 1, again.json().turn_number)
      assert.equal(1, #stored_keys(c, case_id))
      -- the timed-out key was released too: it takes a new request (a key still held would be
      -- 409 TURN_IN_PROGRESS or IDEMPOTENCY_KEY_REUSE)
      local retry = c:turn(case_id, { query = "retry with the timed out key" },
        { headers = { ["Idempotency-Key"] = key } })
      assert.equal(200, retry.status, retry.body)
      assert.is_nil(retry.headers["x-idempotency-replayed"])
    end)

    it("takes over the lock of a turn whose worker died, once it is stale", function()
      local db = require "fm.db"
      local time = require "fm.time"
      db.configure { url = url, pool_size = 1 }
      local case_id = c:new_case { description = "crashed worker" }
      -- a worker died mid-turn 30 s ago: its lock (AGENT_REQUEST_TIMEOUT 1 s + the 60 s
      -- margin) still holds
      local function dead_lock(age_s)
        local res = assert(db.exec("UPDATE cases SET turn_lock = 'turn_dead', "
          .. "turn_started_at = ? WHERE id = ?", time.iso8601(os.time() - age_s), case_id))
        assert.equal(1, res.changes)
      end
      dead_lock(30)
      local r = c:turn(case_id, { query = "anyone there?" })
      assert.equal(409, r.status, r.body)
      assert.equal("TURN_IN_PROGRESS", r.headers["x-error-code"])
      assert.equal(0, c:snapshot(case_id).current_turn)
      -- 2 minutes old: stale, taken over, and released by the turn that took it
      dead_lock(120)
      r = c:turn(case_id, { query = "anyone there?" })
      assert.equal(200, r.status, r.body)
      assert.equal(1, r.json().turn_number)
      local row = assert(db.query("SELECT turn_lock, turn_started_at FROM cases WHERE id = ?",
        case_id))[1]
      assert.is_nil(row.turn_lock)
      assert.is_nil(row.turn_started_at)
      db.close()
    end)
  end)
end
