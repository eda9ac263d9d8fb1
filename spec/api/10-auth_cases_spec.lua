-- Auth and the cases API against a real engine, once on SQLite and once on a real PostgreSQL.
local helpers = require "spec.helpers"
local http = require "spec.helpers.http"
local jwt = require "fm.auth.jwt"
local crypto = require "fm.crypto"
local json = require "fm.json"

local function hexdate()
  local d = os.date("!*t")
  return string.format("%02d%02d%02d", d.year % 100, d.month, d.day)
end

for _, backend in ipairs(helpers.db_backends()) do
  describe("auth and cases on " .. backend.name, function()
    local engine, db_url

    lazy_setup(function()
      db_url = backend.url()
      engine = helpers.engine.start { env = {
        DATABASE_URL = db_url, PASSWORD_HASH_MEMORY_KIB = "8192", PASSWORD_HASH_OPSLIMIT = "1",
        FM_WORKERS = "4", REFRESH_REUSE_GRACE_S = "1",
      } }
    end)
    lazy_teardown(helpers.cleanup)

    local function req(method, path, opts)
      opts = opts or {}
      local headers = opts.headers or {}
      if opts.token then headers.Authorization = "Bearer " .. opts.token end
      opts.headers = headers
      return assert(engine:request(method, path, opts))
    end

    local function login(name, extra)
      local body = { username = name }
      for k, v in pairs(extra or {}) do body[k] = v end
      local r = req("POST", "/api/v1/auth/dev-login", { json = body })
      assert.equal(200, r.status, r.body)
      return r.json()
    end

    describe("auth", function()
      it("describes itself", function()
        local r = req("GET", "/api/v1/auth/config")
        assert.equal(200, r.status)
        assert.equal("local", r.json().auth_mode)
        assert.is_true(r.json().supports_registration)
      end)

      it("dev-login creates the user; the first user of a local engine is admin", function()
        local a = login("alice", { email = "alice@example.com", display_name = "Alice" })
        assert.equal("bearer", a.token_type)
        assert.equal(900, a.expires_in)
        assert.matches("^sess_", a.session_id)
        assert.matches("^user_", a.user.user_id)
        assert.same({ "user", "admin" }, a.user.roles)
        assert.is_true(a.user.is_dev_user)
        local b = login("bob")
        assert.same({ "user" }, b.user.roles)
        assert.equal("bob", b.user.display_name)
        -- the same user again
        assert.equal(a.user.user_id, login("alice").user.user_id)
        local me = req("GET", "/api/v1/auth/me", { token = a.access_token })
        assert.equal(200, me.status)
        assert.equal("alice@example.com", me.json().email)
        assert.is_string(me.json().last_login)
      end)

      it("registers with a password (argon2id) and logs in with it only", function()
        local r = req("POST", "/api/v1/auth/register", { json = {
          username = "carol", password = "correct horse battery" } })
        assert.equal(201, r.status, r.body)
        assert.is_false(r.json().user.is_dev_user)
        assert.equal(409, req("POST", "/api/v1/auth/register", { json = {
          username = "carol", password = "another password" } }).status)
        assert.equal(200, req("POST", "/api/v1/auth/login", { json = {
          username = "carol", password = "correct horse battery" } }).status)
        local wrong = req("POST", "/api/v1/auth/login", { json = {
          username = "carol", password = "wrong password" } })
        local unknown = req("POST", "/api/v1/auth/login", { json = {
          username = "nobody-here", password = "wrong password" } })
        assert.equal(401, wrong.status)
        assert.equal(401, unknown.status)
        assert.equal(wrong.json().detail, unknown.json().detail) -- no user enumeration
        -- a user with a password cannot use the username-only door
        assert.equal(401, req("POST", "/api/v1/auth/dev-login", { json = {
          username = "carol" } }).status)
        assert.equal(422, req("POST", "/api/v1/auth/register", { json = {
          username = "dave", password = "short" } }).status)
      end)

      it("answers bad input with 422, 400 and 413, and the engine stays up", function()
        local cases = {
          { {}, 422 }, { { username = "" }, 422 }, { { username = "a b" }, 422 },
          { { username = "x'; DROP TABLE users; --" }, 422 }, { { username = 42 }, 422 },
          { { username = string.rep("u", 65) }, 422 }, { json.array {}, 422 },
        }
        for _, c in ipairs(cases) do
          local r = req("POST", "/api/v1/auth/dev-login", { json = c[1] })
          assert.equal(c[2], r.status, r.body)
          assert.is_table(r.json().detail)
          assert.is_table(r.json().detail[1].loc)
        end
        assert.equal(400, req("POST", "/api/v1/auth/dev-login", {
          headers = { ["Content-Type"] = "application/json" }, body = '{"username":' }).status)
        assert.equal(413, req("POST", "/api/v1/auth/dev-login", {
          headers = { ["Content-Type"] = "application/json" },
          body = '{"username":"' .. string.rep("x", 20000) .. '"}' }).status)
        assert.equal(200, req("GET", "/health/live").status)
      end)

      it("refuses forged, expired, wrong-audience and refresh tokens as access tokens", function()
        local a = login("erin")
        local key = assert(helpers.read_file(engine.data_dir .. "/.jwt_secret"))
        local now = os.time()
        local base = { sub = a.user.user_id, iss = "faultmaven", aud = "faultmaven-api",
                       iat = now, exp = now + 600, jti = "x", typ = "access", sid = a.session_id }
        local function with(over)
          local c = {}
          for k, v in pairs(base) do c[k] = v end
          for k, v in pairs(over) do c[k] = v end
          return c
        end
        -- a token we sign with the engine's own key is accepted: the checks below are the claims
        assert.equal(200, req("GET", "/api/v1/auth/me", { token = jwt.sign(base, key) }).status)
        local bad = {
          jwt.sign(base, string.rep("z", 64)),                              -- forged
          jwt.sign(with { exp = now - 120 }, key),                          -- expired
          jwt.sign(with { aud = "someone-else" }, key),                     -- wrong audience
          jwt.sign(with { iss = "evil" }, key),                             -- wrong issuer
          jwt.sign(with { typ = "refresh" }, key),                          -- a refresh token
          jwt.sign(with { sid = "sess_unknown" }, key),                     -- no such session
          jwt.sign(with { sub = "user_ghost" }, key),                       -- no such user
          crypto.b64url_encode('{"alg":"none","typ":"JWT"}') .. "."
            .. crypto.b64url_encode(json.encode(base)) .. ".",              -- alg none
          a.refresh_token,                                                  -- refresh as access
          "garbage", "",
        }
        for i, t in ipairs(bad) do
          local r = req("GET", "/api/v1/auth/me", { token = t })
          assert.equal(401, r.status, "case " .. i)
        end
        assert.equal(401, req("GET", "/api/v1/auth/me").status)
        assert.equal(401, req("GET", "/api/v1/auth/me",
          { headers = { Authorization = "Basic YWxhZGRpbjpvcGVu" } }).status)
      end)

      it("rotates refresh tokens; reusing one revokes the whole session", function()
        local a = login("frank")
        local r1 = req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = a.refresh_token } })
        assert.equal(200, r1.status, r1.body)
        local t1 = r1.json()
        assert.are_not.equal(a.refresh_token, t1.refresh_token)
        assert.equal(200, req("GET", "/api/v1/auth/me", { token = t1.access_token }).status)
        -- the first refresh token again, within the grace (REFRESH_REUSE_GRACE_S=1 here): a
        -- second tab, refused without ending the session
        assert.equal(401, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = a.refresh_token } }).status)
        assert.equal(200, req("GET", "/api/v1/auth/me", { token = t1.access_token }).status)
        helpers.sleep(1.1)
        -- after it: theft; the family dies
        assert.equal(401, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = a.refresh_token } }).status)
        assert.equal(401, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = t1.refresh_token } }).status)
        assert.equal(401, req("GET", "/api/v1/auth/me", { token = t1.access_token }).status)
        assert.equal(401, req("GET", "/api/v1/auth/me", { token = a.access_token }).status)
        -- an access token is not a refresh token
        assert.equal(401, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = login("frank").access_token } }).status)
        assert.equal(422, req("POST", "/api/v1/auth/refresh", { json = {} }).status)
      end)

      it("two refreshes of one token at once: one wins, the session survives", function()
        local a = login("twotabs")
        local body = json.encode { refresh_token = a.refresh_token }
        local conns = {}
        for i = 1, 4 do
          conns[i] = assert(http.connect("127.0.0.1", engine.port))
          assert(conns[i]:send_raw(("POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\n"
            .. "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(#body,
            body)))
        end
        local winners = {}
        for i = 1, 4 do
          local r = assert(conns[i]:read_response())
          if r.status == 200 then winners[#winners + 1] = r.json() else
            assert.equal(401, r.status)
            assert.equal("Bearer", r.headers["www-authenticate"])
          end
        end
        assert.equal(1, #winners)
        -- the winner's tokens work: the losers did not end the session
        assert.equal(200, req("GET", "/api/v1/auth/me", { token = winners[1].access_token }).status)
        assert.equal(200, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = winners[1].refresh_token } }).status)
      end)

      it("logs out: the session's tokens stop working, other sessions go on", function()
        local s1, s2 = login("gina"), login("gina")
        local r = req("POST", "/api/v1/auth/logout", { token = s1.access_token })
        assert.equal(200, r.status)
        assert.is_true(r.json().revoked_tokens >= 1)
        assert.is_false(r.json().all_sessions_ended)
        assert.equal(401, req("GET", "/api/v1/auth/me", { token = s1.access_token }).status)
        assert.equal(401, req("POST", "/api/v1/auth/refresh",
          { json = { refresh_token = s1.refresh_token } }).status)
        assert.equal(200, req("GET", "/api/v1/auth/me", { token = s2.access_token }).status)
      end)
    end)

    describe("cases", function()
      local alice, mallory

      lazy_setup(function()
        alice = login("case-alice").access_token
        mallory = login("case-mallory").access_token
      end)

      local function create(body, token, headers)
        return req("POST", "/api/v1/cases", { json = body, token = token or alice,
                                               headers = headers })
      end

      it("creates cases; a null title becomes Case-YYMMDD-N", function()
        local r = create { title = json.null, description = "disk full on db-1" }
        assert.equal(201, r.status, r.body)
        local c = r.json()
        assert.matches("^case_", c.case_id)
        assert.equal("Case-" .. hexdate() .. "-1", c.title)
        assert.equal("inquiry", c.state)
        assert.equal(json.null, c.closed_at)
        assert.equal(json.null, c.stage)
        assert.is_false(c.is_terminal)
        assert.same({ "investigating", "resolved", "closed" }, c.valid_next_states)
        assert.equal("Case-" .. hexdate() .. "-2", create({ description = "x" }).json().title)
        assert.equal("Named", create({ title = "Named", description = "y" }).json().title)
        -- N never repeats, even after a delete
        assert.equal(204, req("DELETE", "/api/v1/cases/" .. c.case_id, { token = alice }).status)
        assert.equal("Case-" .. hexdate() .. "-3", create({ description = "z" }).json().title)
        -- the client does not choose the source
        assert.equal("api", create({ description = "s", source = "evil<script>" }).json().source)
      end)

      it("stores hostile strings verbatim", function()
        local evil = "'; DROP TABLE cases; -- \" \\ %_ ☃ <script> $1 ? :x"
        local c = create({ title = evil, description = evil }).json()
        local got = req("GET", "/api/v1/cases/" .. c.case_id, { token = alice }).json()
        assert.equal(evil, got.title)
        assert.equal(evil, got.description)
        assert.equal(422, create({ title = "nul\0byte", description = "" }).status)
      end)

      it("lists with paging, filters and X-Total-Count", function()
        local tok = login("lister").access_token
        for i = 1, 7 do
          assert.equal(201, create({ title = "c" .. i, description = "" }, tok).status)
        end
        local r = req("GET", "/api/v1/cases?limit=3&offset=0", { token = tok })
        assert.equal(200, r.status)
        local l = r.json()
        assert.equal(7, l.total_count)
        assert.equal("7", r.headers["x-total-count"])
        assert.equal(3, #l.cases)
        assert.is_true(l.has_more)
        assert.equal("c7", l.cases[1].title) -- newest first
        local p3 = req("GET", "/api/v1/cases?page=3&page_size=3", { token = tok }).json()
        assert.equal(1, #p3.cases)
        assert.is_false(p3.has_more)
        assert.equal(6, p3.offset)
        assert.equal(422, req("GET", "/api/v1/cases?limit=0", { token = tok }).status)
        assert.equal(422, req("GET", "/api/v1/cases?limit=101", { token = tok }).status)
        assert.equal(422, req("GET", "/api/v1/cases?offset=-1", { token = tok }).status)
        assert.equal(422, req("GET", "/api/v1/cases?limit=abc", { token = tok }).status)
        assert.equal(422, req("GET", "/api/v1/cases?state=bogus", { token = tok }).status)
        assert.equal(0, req("GET", "/api/v1/cases?state=closed", { token = tok })
          .json().total_count)
        -- archived cases leave the default list
        local first = l.cases[1].case_id
        assert.equal(200, req("POST", "/api/v1/cases/" .. first .. "/archive",
          { token = tok }).status)
        assert.equal(6, req("GET", "/api/v1/cases", { token = tok }).json().total_count)
        assert.equal(7, req("GET", "/api/v1/cases?include_archived=true", { token = tok })
          .json().total_count)
        assert.equal(200, req("POST", "/api/v1/cases/" .. first .. "/unarchive",
          { token = tok }).status)
        assert.equal(7, req("GET", "/api/v1/cases", { token = tok }).json().total_count)
      end)

      it("gives the detail, and updates with optimistic concurrency", function()
        local c = create({ title = "t", description = "d" }).json()
        local path = "/api/v1/cases/" .. c.case_id
        local d = req("GET", path, { token = alice })
        assert.equal(200, d.status)
        local detail = d.json()
        assert.equal(0, detail.evidence_count)
        assert.same({}, detail.milestones_completed)
        assert.equal(7, #detail.pending_milestones)
        assert.equal('"1"', d.headers.etag)
        local u = req("PUT", path, { token = alice, json = { title = "t2", version = 1 } })
        assert.equal(200, u.status, u.body)
        assert.equal("t2", u.json().title)
        assert.equal(2, u.json().version)
        -- a stale version
        local stale = req("PUT", path, { token = alice, json = { title = "t3", version = 1 } })
        assert.equal(409, stale.status)
        assert.equal("CASE_VERSION_CONFLICT", stale.headers["x-error-code"])
        assert.equal(409, req("PUT", path, { token = alice, json = { title = "t3" },
                                             headers = { ["If-Match"] = '"1"' } }).status)
        -- two concurrent updates of the same version: exactly one wins
        local c1 = assert(http.connect("127.0.0.1", engine.port))
        local c2 = assert(http.connect("127.0.0.1", engine.port))
        local function put(conn, title)
          local body = json.encode { title = title, version = 2 }
          assert(conn:send_raw(("PUT %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            .. "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(
            path, alice, #body, body)))
        end
        put(c1, "one")
        put(c2, "two")
        local s = { assert(c1:read_response()).status, assert(c2:read_response()).status }
        table.sort(s)
        assert.same({ 200, 409 }, s)
        assert.equal(3, req("GET", path, { token = alice }).json().version)
      end)

      it("follows the lifecycle", function()
        local c = create({ description = "x" }).json()
        local path = "/api/v1/cases/" .. c.case_id
        local bad = req("PUT", path, { token = alice, json = { state = "archived" } })
        assert.equal(422, bad.status)
        assert.equal("state", bad.json().detail[1].loc[2])
        local r = req("PUT", path, { token = alice, json = { state = "investigating" } })
        assert.equal(200, r.status)
        assert.equal(422, req("PUT", path, { token = alice, json = { state = "inquiry" } }).status)
        r = req("PUT", path, { token = alice, json = { state = "resolved" } })
        assert.equal(200, r.status)
        assert.is_true(r.json().is_terminal)
        assert.is_string(r.json().resolved_at)
        local t = req("PUT", path, { token = alice, json = { state = "closed" } })
        assert.equal(409, t.status)
        assert.equal("CASE_TERMINAL", t.headers["x-error-code"])
        -- investigating starts at diagnosis; closing records a valid reason
        local c2 = create({ description = "y" }).json()
        local p2 = "/api/v1/cases/" .. c2.case_id
        local inv = req("PUT", p2, { token = alice, json = { state = "investigating" } }).json()
        assert.equal("diagnosis", inv.current_stage)
        assert.equal(422, req("PUT", p2, { token = alice, json = { state = "closed",
          closure_reason = "bored" } }).status)
        local closed = req("PUT", p2, { token = alice, json = { state = "closed",
          closure_reason = "solution_deferred" } }).json()
        assert.equal("solution_deferred", closed.closure_reason)
        assert.is_string(closed.closed_at)
      end)

      it("pages messages and deletes cases", function()
        local c = create({ description = "d", initial_message = "hello there" }).json()
        local m = req("GET", "/api/v1/cases/" .. c.case_id .. "/messages", { token = alice })
        assert.equal(200, m.status)
        local mm = m.json()
        assert.equal(1, mm.total_count)
        assert.equal("hello there", mm.messages[1].content)
        assert.equal("user", mm.messages[1].role)
        assert.equal(json.null, mm.next_offset)
        assert.equal(204, req("DELETE", "/api/v1/cases/" .. c.case_id, { token = alice }).status)
        assert.equal(404, req("GET", "/api/v1/cases/" .. c.case_id, { token = alice }).status)
      end)

      it("searches the caller's cases, with LIKE wildcards taken literally", function()
        local tok = login("searcher").access_token
        create({ title = "Disk full on db-1", description = "" }, tok)
        create({ title = "100% CPU", description = "" }, tok)
        create({ title = "DNS flaps", description = "resolver timeouts" }, tok)
        local function search(q) return req("POST", "/api/v1/cases/search",
          { token = tok, json = { query = q, limit = 10 } }) end
        assert.equal(1, #search("disk").json())
        assert.equal(1, #search("%").json())
        assert.equal(1, #search("RESOLVER").json())
        assert.equal(0, #search("_").json())
        assert.equal(422, req("POST", "/api/v1/cases/search", { token = tok, json = {} }).status)
        -- another user finds nothing of this one's
        assert.equal(0, #req("POST", "/api/v1/cases/search", { token = mallory,
          json = { query = "disk", limit = 10 } }).json())
      end)

      it("titles a case from its text, deterministically", function()
        local c = create({ description = "The payment API returns 502 errors since the deploy."
          .. " More text." }).json()
        local path = "/api/v1/cases/" .. c.case_id .. "/title"
        local r = req("POST", path, { token = alice, json = {} })
        assert.equal(200, r.status)
        assert.equal("heuristic", r.headers["x-title-source"])
        assert.equal("Payment API returns 502 errors since deploy", r.json().title)
        local again = req("POST", path, { token = alice, json = {} })
        assert.equal("existing", again.headers["x-title-source"])
        local forced = req("POST", path .. "?force=true",
          { token = alice, json = { max_words = 2 } })
        assert.equal("Payment API", forced.json().title)
      end)

      it("replays an idempotent create and refuses the key with another body", function()
        local key = "idem-" .. crypto.random_hex(8)
        local body = { title = "once", description = "only once" }
        local r1 = create(body, alice, { ["Idempotency-Key"] = key })
        assert.equal(201, r1.status, r1.body)
        local r2 = create(body, alice, { ["Idempotency-Key"] = key })
        assert.equal(201, r2.status)
        assert.equal("true", r2.headers["x-idempotency-replayed"])
        assert.equal(r1.json().case_id, r2.json().case_id)
        local r3 = create({ title = "other", description = "x" }, alice,
          { ["Idempotency-Key"] = key })
        assert.equal(409, r3.status)
        assert.equal("IDEMPOTENCY_KEY_REUSE", r3.headers["x-error-code"])
        -- keys are per user
        local r4 = create(body, mallory, { ["Idempotency-Key"] = key })
        assert.equal(201, r4.status)
        assert.are_not.equal(r1.json().case_id, r4.json().case_id)
        assert.equal(422, create(body, alice, { ["Idempotency-Key"] = "short" }).status)
        assert.equal(422, create(body, alice,
          { ["Idempotency-Key"] = "bad key with spaces" }).status)
        -- the same key sent twice at once: one case
        local key2 = "idem-" .. crypto.random_hex(8)
        local c1 = assert(http.connect("127.0.0.1", engine.port))
        local c2 = assert(http.connect("127.0.0.1", engine.port))
        local text = json.encode(body)
        for _, c in ipairs { c1, c2 } do
          assert(c:send_raw(("POST /api/v1/cases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
            .. "\r\nIdempotency-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d"
            .. "\r\n\r\n%s"):format(alice, key2, #text, text)))
        end
        local a, b = assert(c1:read_response()), assert(c2:read_response())
        assert.equal(201, a.status, a.body)
        assert.equal(201, b.status, b.body)
        assert.equal(a.json().case_id, b.json().case_id)
      end)

      it("checks X-Session-Id when sent: SESSION_EXPIRED for an unknown or foreign one", function()
        local sess = req("POST", "/api/v1/sessions", { token = alice,
          json = { client_id = "spec-client-" .. backend.name } })
        assert.equal(201, sess.status, sess.body)
        local sid = sess.json().session_id
        assert.equal(200, req("GET", "/api/v1/cases", { token = alice,
          headers = { ["X-Session-Id"] = sid } }).status)
        assert.equal(200, req("GET", "/api/v1/cases", { token = alice }).status)
        for _, bad in ipairs { "sess_" .. string.rep("0", 32), "garbage" } do
          local r = req("GET", "/api/v1/cases", { token = alice,
            headers = { ["X-Session-Id"] = bad } })
          assert.equal(401, r.status)
          assert.equal("SESSION_EXPIRED", r.json().code)
          assert.equal("session expired", r.json().detail)
        end
        -- another user's session is not the caller's
        assert.equal(401, req("GET", "/api/v1/cases", { token = mallory,
          headers = { ["X-Session-Id"] = sid } }).status)
      end)

      it("answers retired routes with 410 naming /turns", function()
        local c = create({ description = "x" }).json()
        for _, sub in ipairs { "queries", "data" } do
          local r = req("POST", "/api/v1/cases/" .. c.case_id .. "/" .. sub, { token = alice })
          assert.equal(410, r.status)
          assert.matches("/turns", r.json().detail, 1, true)
        end
      end)

      it("isolates users: another user's case is 404 on every route", function()
        local c = create({ title = "private", description = "secret" }).json()
        local p = "/api/v1/cases/" .. c.case_id
        local routes = {
          { "GET", p }, { "PUT", p, { title = "pwned" } }, { "DELETE", p },
          { "POST", p .. "/archive" }, { "POST", p .. "/unarchive" }, { "GET", p .. "/messages" },
          { "POST", p .. "/title", {} }, { "POST", p .. "/queries" }, { "POST", p .. "/data" },
          { "GET", p .. "/ui" },
        }
        for _, rt in ipairs(routes) do
          local r = req(rt[1], rt[2], { token = mallory, json = rt[3] })
          assert.equal(404, r.status, rt[1] .. " " .. rt[2])
        end
        for _, rt in ipairs(routes) do
          assert.equal(401, req(rt[1], rt[2], { json = rt[3] }).status, rt[1] .. " " .. rt[2])
        end
        local mine = req("GET", p, { token = alice })
        assert.equal("private", mine.json().title)
        local theirs = req("GET", "/api/v1/cases?include_archived=true&limit=100",
          { token = mallory }).json()
        for _, other in ipairs(theirs.cases) do assert.are_not.equal(c.case_id, other.case_id) end
      end)

      it("answers malformed, oversized and mistyped bodies with 400, 413 and 422", function()
        local function raw(body, ctype)
          return req("POST", "/api/v1/cases", { token = alice, body = body,
            headers = { ["Content-Type"] = ctype or "application/json" } })
        end
        assert.equal(400, raw('{"title": ').status)
        assert.equal(400, raw('{"title": "\xff\xfe"}').status)
        assert.equal(400, raw(string.rep("[", 500) .. string.rep("]", 500)).status)
        assert.equal(413, raw('{"description":"' .. string.rep("x", 300 * 1024) .. '"}').status)
        assert.equal(422, raw('{"title": 5}').status)
        assert.equal(422, raw('[]').status)
        assert.equal(422, raw('"just a string"').status)
        assert.equal(422, raw('{"title": "' .. string.rep("t", 201) .. '"}').status)
        assert.equal(422, raw('{"title":"x"}', "text/plain").status)
        assert.equal(200, req("GET", "/health/live").status)
      end)

      it("answers ids and filters that are not even UTF-8 with 404 and 422, never 500", function()
        for _, p in ipairs { "/api/v1/cases/%FF", "/api/v1/cases/%C3%28/messages",
                             "/api/v1/cases/case_zz", "/api/v1/cases/" .. string.rep("a", 300) } do
          assert.equal(404, req("GET", p, { token = alice }).status, p)
          if not p:find("/messages", 1, true) then
            assert.equal(404, req("DELETE", p, { token = alice }).status, p)
          end
        end
        assert.equal(422, req("GET", "/api/v1/cases?source=%FF", { token = alice }).status)
        assert.equal(200, req("GET", "/api/v1/cases?source=api", { token = alice }).status)
        assert.equal(200, req("GET", "/api/v1/auth/me",
          { headers = { Authorization = "BEARER " .. alice } }).status)
      end)
    end)

    it("outside local mode: no username-only login unless allowed; FM_ADMIN_USERS", function()
      local prod = helpers.engine.start { env = {
        DATABASE_URL = backend.url(), DEPLOYMENT_MODE = "docker", FM_HOST = "127.0.0.1",
        RUN_STARTUP_MIGRATIONS = "true", PASSWORD_HASH_MEMORY_KIB = "8192",
        PASSWORD_HASH_OPSLIMIT = "1",
        FM_ADMIN_USERS = "root-op, other" } }
      local function post(path, body) return assert(prod:post(path, { json = body })) end
      for _, p in ipairs { "/api/v1/auth/dev-login", "/api/v1/auth/dev-register" } do
        local r = post(p, { username = "dev" })
        assert.equal(403, r.status)
        assert.matches("FM_ALLOW_DEV_LOGIN=true", r.json().detail, 1, true)
      end
      local r = post("/api/v1/auth/register", { username = "nopass" })
      assert.equal(422, r.status)
      assert.equal("password", r.json().detail[1].loc[2])
      assert.equal(401, post("/api/v1/auth/login", { username = "nopass" }).status)
      -- the first user outside local mode is not admin; FM_ADMIN_USERS names admins
      local first = post("/api/v1/auth/register", { username = "first", password = "pw-12345678" })
      assert.same({ "user" }, first.json().user.roles)
      local op = post("/api/v1/auth/register", { username = "root-op", password = "pw-12345678" })
      assert.same({ "user", "admin" }, op.json().user.roles)
      local allowed = helpers.engine.start { env = {
        DATABASE_URL = backend.url(), DEPLOYMENT_MODE = "docker", FM_HOST = "127.0.0.1",
        RUN_STARTUP_MIGRATIONS = "true", FM_ALLOW_DEV_LOGIN = "true" } }
      assert.equal(200, assert(allowed:post("/api/v1/auth/dev-login",
        { json = { username = "dev" } })).status)
    end)

    it("reports the database in /health", function()
      local h = req("GET", "/health").json()
      assert.equal("healthy", h.components.database.status)
    end)
  end)
end
