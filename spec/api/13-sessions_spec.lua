-- The client sessions API (POST /api/v1/sessions and friends) against a real engine, once with the
-- in-process KV and once with a real Redis, on SQLite; then two engines sharing one Redis.
--
-- A route fixture (written to a temp dir, loaded with FM_EXTRA_ROUTES) ends a session's KV key
-- as its TTL would (both stores), reports its TTL, and exercises sessions.check_header:
--   POST /test/sessions/expire?id=ID   kv.del("sess:" .. ID) -> 200 {existed}
--   GET  /test/sessions/ttl?key=K      200 {ttl = kv.ttl(K)}
--   GET  /test/sessions/check          auth.protect + sessions.check_header -> 200 {session_id}
local helpers = require "spec.helpers"
local json = require "fm.json"

local FIXTURE = [[
local auth = require "fm.services.auth"
local kv = require "fm.kv"
local sessions = require "fm.services.sessions"
return function(r)
  r:post("/test/sessions/expire", function(req)
    return 200, { existed = kv.del("sess:" .. req.query.id) }
  end)
  r:get("/test/sessions/ttl", function(req)
    return 200, { ttl = kv.ttl(req.query.key) }
  end)
  r:get("/test/sessions/check", auth.protect(function(req)
    local s = sessions.check_header(req)
    return 200, { session_id = s and s.session_id or json_null }
  end))
end
]]

local function fixture_path()
  local dir = helpers.tmpdir("fm-sess-fixture-")
  helpers.write_file(dir .. "/fm_sess_fixture.lua",
    (FIXTURE:gsub("json_null", '(require "fm.json").null')))
  return dir .. "/?.lua;" .. helpers.root .. "/spec/fixtures/lua/?.lua"
end

local SECRET = "sessions-spec-secret-0123456789abcdef"

local function client_of(engine)
  local c = {}
  function c.req(method, path, opts)
    opts = opts or {}
    local headers = opts.headers or {}
    if opts.token then headers.Authorization = "Bearer " .. opts.token end
    opts.headers = headers
    return assert(engine:request(method, path, opts))
  end
  function c.login(name)
    local r = c.req("POST", "/api/v1/auth/dev-login", { json = { username = name } })
    assert.equal(200, r.status, r.body)
    return r.json().access_token, r.json().user.user_id
  end
  function c.create(token, body)
    return c.req("POST", "/api/v1/sessions", { token = token, json = body })
  end
  return c
end

local function iso_secs(s)
  local y, mo, d, h, mi, sec, ms = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$")
  assert(y, "not an ISO timestamp: " .. tostring(s))
  return os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d),
    hour = tonumber(h), min = tonumber(mi), sec = tonumber(sec), isdst = false }
    + tonumber(ms) / 1000
end

local function assert_expired(r)
  assert.equal(401, r.status, r.body)
  assert.same({ detail = "session expired", code = "SESSION_EXPIRED" }, r.json())
  assert.equal("SESSION_EXPIRED", r.headers["x-error-code"])
end

local kv_backends = {
  { name = "the in-process KV" },
  { name = "Redis", redis = true },
}

for _, b in ipairs(kv_backends) do
  describe("sessions with " .. b.name, function()
    local engine, c, redis

    lazy_setup(function()
      local env = { FM_WORKERS = "2", FM_LUA_PATH = fixture_path(),
                    FM_EXTRA_ROUTES = "fm_test.routes,fm_sess_fixture" }
      if b.redis then
        redis = helpers.redis.start()
        env.REDIS_URL = redis.url
      end
      engine = helpers.engine.start { env = env }
      c = client_of(engine)
    end)
    lazy_teardown(helpers.cleanup)

    it("needs a bearer token", function()
      local r = c.create(nil, { client_id = "c1" })
      assert.equal(401, r.status)
      assert.equal("Bearer", r.headers["www-authenticate"])
      assert.equal(401, c.req("GET", "/api/v1/sessions/sess_" .. string.rep("a", 32)).status)
      assert.equal(401, c.req("POST", "/api/v1/sessions/sess_" .. string.rep("a", 32)
        .. "/heartbeat").status)
    end)

    it("creates a session with the contract's fields and the KV TTL = its timeout", function()
      local tok, uid = c.login("alice")
      local t0 = os.time()
      local r = c.create(tok, { client_id = "ext-1", session_type = "troubleshooting",
                                metadata = { browser = "firefox" } })
      assert.equal(201, r.status, r.body)
      local s = r.json()
      assert.matches("^sess_%x+$", s.session_id)
      assert.equal(37, #s.session_id)
      assert.is_false(s.session_resumed)
      assert.equal("ext-1", s.client_id)
      assert.equal(uid, s.user_id)
      assert.equal("active", s.status)
      assert.equal("3.1.0", s.schema_version)
      assert.same({ browser = "firefox" }, s.metadata)
      local left = iso_secs(s.expires_at) - iso_secs(s.created_at)
      assert.near(180 * 60, left, 2)
      assert.is_true(iso_secs(s.created_at) >= t0 - 2)
      -- the KV holds it with that TTL
      local ttl = c.req("GET", "/test/sessions/ttl?key=sess:" .. s.session_id).json().ttl
      assert.near(180 * 60, ttl, 5)
      ttl = c.req("GET", "/test/sessions/ttl?key=sess_client:" .. uid .. ":ext-1").json().ttl
      assert.near(180 * 60, ttl, 5)
      if redis then
        local ok, out = redis:cli("TTL", "sess:" .. s.session_id)
        assert.is_true(ok)
        assert.near(180 * 60, tonumber(out:match("%d+")), 5)
      end
      -- GET answers it
      local g = c.req("GET", "/api/v1/sessions/" .. s.session_id, { token = tok })
      assert.equal(200, g.status, g.body)
      assert.equal(s.session_id, g.json().session_id)
      assert.equal(s.expires_at, g.json().expires_at)
      -- defaults: no session_type, no metadata, timeout 180; an explicit timeout is kept
      local d = c.create(tok, { client_id = "ext-2", timeout_minutes = 60 }).json()
      assert.near(3600, iso_secs(d.expires_at) - iso_secs(d.created_at), 2)
      assert.same({}, d.metadata)
      assert.equal("{}", c.create(tok, { client_id = "ext-3" }).body:match('"metadata":(%b{})'))
    end)

    it("resumes the live session of the same user and client_id, extending it", function()
      local tok = c.login("bob")
      local a = c.create(tok, { client_id = "tab", timeout_minutes = 60 }).json()
      helpers.sleep(1.1)
      local r = c.create(tok, { client_id = "tab", timeout_minutes = 120, metadata = { v = 2 } })
      assert.equal(201, r.status, r.body)
      local b2 = r.json()
      assert.is_true(b2.session_resumed)
      assert.equal(a.session_id, b2.session_id)
      assert.equal(a.created_at, b2.created_at)
      assert.same({ v = 2 }, b2.metadata)
      assert.near(iso_secs(b2.created_at) + 120 * 60 + 1.1, iso_secs(b2.expires_at), 1)
      -- another client_id of the same user: another session
      local other = c.create(tok, { client_id = "tab-2" }).json()
      assert.is_false(other.session_resumed)
      assert.not_equal(a.session_id, other.session_id)
    end)

    it("never resumes or shows another user's session", function()
      local t1 = c.login("carol")
      local t2 = c.login("dave")
      local s1 = c.create(t1, { client_id = "shared-id" }).json()
      local s2 = c.create(t2, { client_id = "shared-id" }).json()
      assert.is_false(s2.session_resumed)
      assert.not_equal(s1.session_id, s2.session_id)
      -- carol's is still hers and resumes
      local again = c.create(t1, { client_id = "shared-id" }).json()
      assert.is_true(again.session_resumed)
      assert.equal(s1.session_id, again.session_id)
      -- dave cannot read, heartbeat or delete it
      local path = "/api/v1/sessions/" .. s1.session_id
      assert.equal(404, c.req("GET", path, { token = t2 }).status)
      assert.equal(404, c.req("POST", path .. "/heartbeat", { token = t2 }).status)
      assert.equal(404, c.req("DELETE", path, { token = t2 }).status)
      assert.equal(200, c.req("GET", path, { token = t1 }).status)
    end)

    it("a heartbeat extends expires_at by the timeout", function()
      local tok = c.login("erin")
      local s = c.create(tok, { client_id = "hb", timeout_minutes = 60 }).json()
      helpers.sleep(1.2)
      local r = c.req("POST", "/api/v1/sessions/" .. s.session_id .. "/heartbeat", { token = tok })
      assert.equal(200, r.status, r.body)
      local h = r.json()
      assert.equal(s.session_id, h.session_id)
      assert.is_true(iso_secs(h.expires_at) - iso_secs(s.expires_at) >= 1)
      assert.near(os.time() + 3600, iso_secs(h.expires_at), 3)
      local g = c.req("GET", "/api/v1/sessions/" .. s.session_id, { token = tok }).json()
      assert.equal(h.expires_at, g.expires_at)
    end)

    it("an expired or unknown session is 401 SESSION_EXPIRED; a new one can be made", function()
      local tok = c.login("frank")
      local s = c.create(tok, { client_id = "exp" }).json()
      local path = "/api/v1/sessions/" .. s.session_id
      -- the KV key goes away as its TTL would end it
      if redis then
        local ok, out = redis:cli("DEL", "sess:" .. s.session_id)
        assert.is_true(ok)
        assert.matches("1", out)
      else
        local r = c.req("POST", "/test/sessions/expire?id=" .. s.session_id)
        assert.is_true(r.json().existed)
      end
      assert_expired(c.req("POST", path .. "/heartbeat", { token = tok }))
      assert_expired(c.req("GET", path, { token = tok }))
      assert_expired(c.req("GET", "/api/v1/sessions/sess_" .. string.rep("0", 32),
        { token = tok }))
      -- a malformed id cannot be a session: 404
      assert.equal(404, c.req("GET", "/api/v1/sessions/nope", { token = tok }).status)
      -- deleting an ended session is fine
      assert.equal(204, c.req("DELETE", path, { token = tok }).status)
      -- the client re-creates: the same client_id gets a new session
      local n = c.create(tok, { client_id = "exp" }).json()
      assert.is_false(n.session_resumed)
      assert.not_equal(s.session_id, n.session_id)
    end)

    if b.redis then
      it("answers 503 with the KV's code while Redis is away", function()
        local tok = c.login("mona")
        redis:stop(true)
        local r = c.create(tok, { client_id = "down" })
        assert.equal(503, r.status, r.body)
        assert.equal("1", r.headers["retry-after"])
        assert.matches("^KV_", r.headers["x-error-code"])
        redis:restart()
        assert(helpers.wait_until(function()
          return c.create(tok, { client_id = "down" }).status == 201
        end, 15, 0.2))
      end)

      it("ends with its Redis TTL", function()
        local tok = c.login("gina")
        local s = c.create(tok, { client_id = "ttl" }).json()
        assert.is_true((redis:cli("PEXPIRE", "sess:" .. s.session_id, "200")))
        helpers.sleep(0.4)
        assert_expired(c.req("POST", "/api/v1/sessions/" .. s.session_id .. "/heartbeat",
          { token = tok }))
      end)
    end

    it("DELETE ends the session", function()
      local tok, uid = c.login("hank")
      local s = c.create(tok, { client_id = "del" }).json()
      local path = "/api/v1/sessions/" .. s.session_id
      assert.equal(204, c.req("DELETE", path, { token = tok }).status)
      assert_expired(c.req("GET", path, { token = tok }))
      assert.equal(-2, c.req("GET", "/test/sessions/ttl?key=sess_client:" .. uid .. ":del")
        .json().ttl)
      assert.is_false(c.create(tok, { client_id = "del" }).json().session_resumed)
    end)

    it("check_header: no header passes; a live session of the caller passes; else 401", function()
      local t1 = c.login("ivan")
      local t2 = c.login("judy")
      local s = c.create(t1, { client_id = "hdr" }).json()
      local r = c.req("GET", "/test/sessions/check", { token = t1 })
      assert.equal(200, r.status, r.body)
      assert.equal(json.null, r.json().session_id)
      r = c.req("GET", "/test/sessions/check", { token = t1,
        headers = { ["X-Session-Id"] = s.session_id } })
      assert.equal(200, r.status, r.body)
      assert.equal(s.session_id, r.json().session_id)
      -- another user's session, an unknown one, a malformed one
      assert_expired(c.req("GET", "/test/sessions/check", { token = t2,
        headers = { ["X-Session-Id"] = s.session_id } }))
      assert_expired(c.req("GET", "/test/sessions/check", { token = t1,
        headers = { ["X-Session-Id"] = "sess_" .. string.rep("f", 32) } }))
      assert_expired(c.req("GET", "/test/sessions/check", { token = t1,
        headers = { ["X-Session-Id"] = "garbage" } }))
      -- an ended one
      c.req("POST", "/test/sessions/expire?id=" .. s.session_id)
      assert_expired(c.req("GET", "/test/sessions/check", { token = t1,
        headers = { ["X-Session-Id"] = s.session_id } }))
      -- without a token the token's 401 comes first (not SESSION_EXPIRED)
      r = c.req("GET", "/test/sessions/check", { headers = { ["X-Session-Id"] = s.session_id } })
      assert.equal(401, r.status)
      assert.is_nil(r.json().code)
    end)

    it("answers bad input with 422 in the contract's shape", function()
      local tok = c.login("kate")
      local bad = {
        { {}, "client_id" }, { { client_id = json.null }, "client_id" },
        { { client_id = "" }, "client_id" }, { { client_id = string.rep("x", 129) }, "client_id" },
        { { client_id = 42 }, "client_id" }, { { client_id = "a\nb" }, "client_id" },
        { { client_id = "c", timeout_minutes = 59 }, "timeout_minutes" },
        { { client_id = "c", timeout_minutes = 481 }, "timeout_minutes" },
        { { client_id = "c", timeout_minutes = 90.5 }, "timeout_minutes" },
        { { client_id = "c", timeout_minutes = "90" }, "timeout_minutes" },
        { { client_id = "c", session_type = "chat" }, "session_type" },
        { { client_id = "c", session_type = 1 }, "session_type" },
        { { client_id = "c", metadata = "x" }, "metadata" },
        { { client_id = "c", metadata = json.array { 1 } }, "metadata" },
        { { client_id = "c", metadata = { blob = string.rep("m", 17 * 1024) } }, "metadata" },
        { json.array {}, nil },
      }
      for _, case in ipairs(bad) do
        local r = c.create(tok, case[1])
        assert.equal(422, r.status, r.body)
        local d = r.json().detail
        assert.is_table(d)
        assert.equal("body", d[1].loc[1])
        assert.equal(case[2], d[1].loc[2])
        assert.is_string(d[1].msg)
        assert.is_string(d[1].type)
      end
      -- no body at all: client_id is required
      local r = c.req("POST", "/api/v1/sessions", { token = tok })
      assert.equal(422, r.status, r.body)
      -- the bounds are accepted, a null session_type is the default
      assert.equal(201, c.create(tok, { client_id = "c", timeout_minutes = 60 }).status)
      assert.equal(201, c.create(tok, { client_id = "c2", timeout_minutes = 480,
        session_type = json.null, metadata = json.null }).status)
      assert.equal(201, c.create(tok, { client_id = string.rep("x", 128) }).status)
      assert.equal(200, c.req("GET", "/health/live").status)
    end)
  end)
end

describe("sessions shared by two engines on one Redis", function()
  lazy_teardown(helpers.cleanup)

  it("a session made on one engine is seen, extended and ended on the other", function()
    local redis = helpers.redis.start()
    local db = "sqlite:///" .. helpers.tmpdir("fm-sess-db-") .. "/shared.db"
    local env = { REDIS_URL = redis.url, DATABASE_URL = db, JWT_SECRET_KEY = SECRET,
                  FM_WORKERS = "2" }
    local e1 = helpers.engine.start { env = env }
    local e2 = helpers.engine.start { env = env }
    local c1, c2 = client_of(e1), client_of(e2)
    local tok = c1.login("lena")
    local s = c1.create(tok, { client_id = "replica" }).json()
    assert.is_false(s.session_resumed)
    local g = c2.req("GET", "/api/v1/sessions/" .. s.session_id, { token = tok })
    assert.equal(200, g.status, g.body)
    assert.equal(s.session_id, g.json().session_id)
    -- resumed on the other replica by client_id
    local r = c2.create(tok, { client_id = "replica" }).json()
    assert.is_true(r.session_resumed)
    assert.equal(s.session_id, r.session_id)
    assert.equal(200, c2.req("POST", "/api/v1/sessions/" .. s.session_id .. "/heartbeat",
      { token = tok }).status)
    -- ended on one, expired on the other
    assert.equal(204, c1.req("DELETE", "/api/v1/sessions/" .. s.session_id, { token = tok }).status)
    assert_expired(c2.req("POST", "/api/v1/sessions/" .. s.session_id .. "/heartbeat",
      { token = tok }))
  end)
end)
