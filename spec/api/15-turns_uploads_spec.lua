-- POST /api/v1/cases/{id}/turns (the intake: evidence stored and analysed) and the uploaded-files
-- routes, against a real engine: on SQLite with local storage, on PostgreSQL with local storage,
-- and on SQLite with a real S3-compatible server (s3rver). Then the sweeper and the
-- housekeeping thread.
local helpers = require "spec.helpers"
local crypto = require "fm.crypto"

local BOUNDARY = "----fmTurnSpec0b7c9d"
local MiB = 1024 * 1024

local function part(name, content, filename, ctype)
  local disp = ('Content-Disposition: form-data; name="%s"'):format(name)
  if filename then disp = disp .. ('; filename="%s"'):format(filename) end
  local lines = { "--" .. BOUNDARY, disp }
  if ctype then lines[#lines + 1] = "Content-Type: " .. ctype end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. content .. "\r\n"
end

local function form(parts)
  return table.concat(parts) .. "--" .. BOUNDARY .. "--\r\n"
end

local NGINX_LOG = {}
for i = 1, 40 do
  NGINX_LOG[#NGINX_LOG + 1] = ("2024/03/05 14:22:%02d [error] 311#311: *%d upstream prematurely "
    .. "closed connection while reading response header from upstream, client: 10.0.0.%d, "
    .. "server: api.example.com, request: \"GET /v1/orders HTTP/1.1\", upstream: "
    .. "\"http://10.1.2.3:8080/v1/orders\""):format(i % 60, 1000 + i, i % 250)
end
NGINX_LOG = table.concat(NGINX_LOG, "\n") .. "\n"

local function fixture_path()
  return helpers.root .. "/spec/fixtures/lua/?.lua"
end

local setups = {
  { name = "SQLite, local storage", db = "sqlite" },
  { name = "PostgreSQL, local storage", db = "postgres" },
  { name = "SQLite, S3 (s3rver)", db = "sqlite", s3 = true },
}

for _, setup in ipairs(setups) do
  describe("turns and uploads on " .. setup.name, function()
    local engine, tok, other_tok, user_id

    local function req(method, path, opts)
      opts = opts or {}
      opts.headers = opts.headers or {}
      local t = opts.token == nil and tok or opts.token
      if t then opts.headers.Authorization = "Bearer " .. t end
      return assert(engine:request(method, path, opts))
    end

    local function turn(case_id, parts, headers, token)
      headers = headers or {}
      headers["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY
      return req("POST", "/api/v1/cases/" .. case_id .. "/turns",
        { headers = headers, body = form(parts), token = token })
    end

    local function new_case(token)
      local r = req("POST", "/api/v1/cases", { json = { title = "upload case",
        description = "d" }, token = token })
      assert.equal(201, r.status, r.body)
      return r.json().case_id
    end

    local function stored_keys(case_id)
      local r = req("GET", "/test/storage/list?prefix=cases/" .. case_id)
      assert.equal(200, r.status, r.body)
      return r.json().keys
    end

    lazy_setup(function()
      local env = { FM_WORKERS = "3", MAX_UPLOAD_SIZE_MB = "2", FM_LUA_PATH = fixture_path(),
        FM_EXTRA_ROUTES = "fm_test.routes,fm_test.upload_routes",
        FM_HOUSEKEEPING_INTERVAL_S = "0" }
      local backend
      for _, b in ipairs(helpers.db_backends()) do if b.name == setup.db then backend = b end end
      env.DATABASE_URL = backend.url()
      if setup.s3 then
        local s3 = helpers.s3.start { bucket = "fm-turns" }
        for k, v in pairs(s3:env()) do env[k] = v end
      end
      engine = helpers.engine.start { env = env }
      local function login(name)
        local r = req("POST", "/api/v1/auth/dev-login", { json = { username = name },
          token = false })
        assert.equal(200, r.status, r.body)
        return r.json().access_token, r.json().user.user_id
      end
      tok, user_id = login("uploader")
      other_tok = login("intruder")
    end)
    lazy_teardown(helpers.cleanup)

    it("stores a file with its analysis, lists it, details it, and downloads the same bytes",
      function()
      local case_id = new_case()
      local r = turn(case_id, { part("query", "why 502s?"),
        part("files", NGINX_LOG, "nginx-error.log", "text/plain") })
      assert.equal(200, r.status, r.body)
      local t = r.json()
      assert.equal(1, t.turn_number)
      assert.equal("inquiry", t.case_state)
      -- the answer is the investigation engine's (spec/api/19-turns_agent_spec.lua covers it)
      assert.is_boolean(t.progress_made)
      assert.is_table(t.milestones_completed)
      assert.is_true(#t.suggested_actions >= 2 and #t.suggested_actions <= 4)
      assert.is_true(#t.agent_response > 0)
      assert.equal(1, #t.attachments_processed)
      local a = t.attachments_processed[1]
      assert.matches("^file_%x+$", a.file_id)
      assert.equal("nginx-error.log", a.filename)
      assert.equal(#NGINX_LOG, a.file_size)
      assert.equal("file", a.upload_source)
      assert.equal("completed", a.processing_status)
      assert.equal("logs", a.source_type)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT.*Z$", a.uploaded_at)
      -- the list
      local l = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files")
      assert.equal(200, l.status, l.body)
      local list = l.json()
      assert.equal(1, list.total_count)
      assert.equal("1", l.headers["x-total-count"])
      local f = list.files[1]
      assert.equal(a.file_id, f.file_id)
      assert.equal(#NGINX_LOG, f.size_bytes)
      assert.equal(1, f.uploaded_at_turn)
      assert.equal("completed", f.analysis_status)
      assert.is_string(f.size_display)
      -- the detail, with the analysis and its evidence
      local d = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files/" .. a.file_id)
      assert.equal(200, d.status, d.body)
      local det = d.json()
      assert.equal(crypto.hex(crypto.sha256(NGINX_LOG)), det.content_hash)
      assert.equal(1, det.evidence_count)
      assert.equal(1, det.derived_evidence[1].collected_at_turn)
      assert.equal("logs", det.analysis.source_type)
      assert.is_true(#det.digest > 0 and #det.digest <= 10000)
      -- the raw bytes, streamed, as an attachment that a browser will not render
      local g = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files/" .. a.file_id
        .. "/download")
      assert.equal(200, g.status)
      assert.equal(NGINX_LOG, g.body)
      assert.equal("text/plain", g.headers["content-type"])
      assert.equal("nosniff", g.headers["x-content-type-options"])
      assert.matches('^attachment; filename="nginx%-error%.log"', g.headers["content-disposition"])
      -- one object in the store, and the messages of the turn
      assert.equal(1, #stored_keys(case_id))
      local m = req("GET", "/api/v1/cases/" .. case_id .. "/messages").json()
      assert.equal(2, m.total_count)
      assert.equal("user", m.messages[1].role)
      assert.matches("why 502s?", m.messages[1].content, 1, true)
      assert.equal("assistant", m.messages[2].role)
      local c = req("GET", "/api/v1/cases/" .. case_id).json()
      assert.equal(1, c.current_turn)
    end)

    it("lists the case's evidence with its source file, and details one", function()
      local case_id = new_case()
      local a = turn(case_id, { part("files", NGINX_LOG, "ev.log") }).json()
        .attachments_processed[1]
      local base = "/api/v1/cases/" .. case_id .. "/evidence"
      local l = req("GET", base)
      assert.equal(200, l.status, l.body)
      local list = l.json()
      assert.equal(case_id, list.case_id)
      assert.equal(1, list.total_count)
      local ev = list.evidence[1]
      assert.matches("^ev_%x+$", ev.evidence_id)
      -- the investigation engine classifies it (spec/api/19-turns_agent_spec.lua)
      assert.is_truthy(({ symptom_evidence = 1, causal_evidence = 1, symptom_absence_evidence = 1,
        causal_absence_evidence = 1 })[ev.category], ev.category)
      assert.equal(1, ev.collected_at_turn)
      assert.same({ file_id = a.file_id, filename = "ev.log", uploaded_at_turn = 1 },
        ev.source_file)
      assert.is_table(ev.related_hypotheses)
      assert.is_true(#ev.analysis > 0 and #ev.analysis <= 10000)
      local d = req("GET", base .. "/" .. ev.evidence_id)
      assert.equal(200, d.status, d.body)
      assert.equal(ev.evidence_id, d.json().evidence_id)
      assert.equal(404, req("GET", base .. "/" .. ev.evidence_id, { token = other_tok }).status)
      assert.equal(404, req("GET", base, { token = other_tok }).status)
      assert.equal(404, req("GET", "/api/v1/cases/" .. new_case() .. "/evidence/"
        .. ev.evidence_id).status)
      for _, bad in ipairs({ "ev_zz", "file_" .. ("a"):rep(32), "%00", ("e"):rep(200) }) do
        assert.equal(404, req("GET", base .. "/" .. bad).status, bad)
      end
    end)

    it("does not store the same content twice in one case, but does in another", function()
      local case_id = new_case()
      local first = turn(case_id, { part("files", NGINX_LOG, "a.log") }).json()
      local second = turn(case_id, { part("files", NGINX_LOG, "again.log") })
      assert.equal(200, second.status, second.body)
      local s = second.json()
      assert.equal(2, s.turn_number)
      local a = s.attachments_processed[1]
      assert.equal(first.attachments_processed[1].file_id, a.duplicate_of)
      assert.equal(1, a.duplicate_turn)
      assert.equal("duplicate", a.processing_status)
      local files = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files").json()
      assert.equal(1, files.total_count)
      assert.equal(1, #stored_keys(case_id))
      local other = new_case()
      local o = turn(other, { part("files", NGINX_LOG, "a.log") }).json()
      assert.is_true(o.attachments_processed[1].duplicate_of == nil
        or o.attachments_processed[1].duplicate_of == require("fm.json").null)
      assert.equal(1, #stored_keys(other))
    end)

    it("takes pasted content and JSON turns", function()
      local case_id = new_case()
      local r = turn(case_id, { part("pasted_content", "Filesystem Size Used Avail Use% Mounted "
        .. "on\n/dev/sda1 50G 49G 1G 98% /\n"), part("input_type", "paste") })
      assert.equal(200, r.status, r.body)
      local a = r.json().attachments_processed[1]
      assert.equal("paste", a.upload_source)
      assert.equal("pasted-content.txt", a.filename)
      local j = req("POST", "/api/v1/cases/" .. case_id .. "/turns",
        { json = { query = "and now?" } })
      assert.equal(200, j.status, j.body)
      assert.equal(2, j.json().turn_number)
      assert.same({}, j.json().attachments_processed)
    end)

    it("answers 413 past MAX_UPLOAD_SIZE_MB and stores nothing", function()
      local case_id = new_case()
      local big = ("x"):rep(2 * MiB + 1)
      local r = turn(case_id, { part("files", big, "big.log") })
      assert.equal(413, r.status, r.body)
      assert.matches("MAX_UPLOAD_SIZE_MB", r.json().detail, 1, true)
      -- far past the route's body limit: the engine refuses it before the handler
      local huge = turn(case_id, { part("files", ("y"):rep(6 * MiB), "huge.log") })
      assert.equal(413, huge.status)
      assert.equal(0, #stored_keys(case_id))
      assert.equal(0, req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files").json()
        .total_count)
      assert.equal(0, req("GET", "/api/v1/cases/" .. case_id).json().current_turn)
    end)

    it("refuses bad input with the contract's errors, storing nothing", function()
      local case_id = new_case()
      local function status_of(parts) return turn(case_id, parts).status end
      assert.equal(415, status_of({ part("files", "MZ\0\0", "tool.exe") }))
      assert.equal(422, status_of({ part("files", "a", "a.log"), part("files", "b", "b.log") }))
      assert.equal(400, status_of({})) -- a multipart body without parts: the engine's 400
      assert.equal(422, req("POST", "/api/v1/cases/" .. case_id .. "/turns", { json = {} }).status)
      assert.equal(422, req("POST", "/api/v1/cases/" .. case_id .. "/turns",
        { json = { query = 42 } }).status)
      assert.equal(422, status_of({ part("query", "q"), part("input_type", "carrier-pigeon") }))
      assert.equal(422, status_of({ part("query", "q"), part("intent_data", "{not json") }))
      assert.equal(422, status_of({ part("query", "q"), part("intent_data", "[1,2]") }))
      assert.equal(422, status_of({ part("query", "q"), part("observed_at", "yesterday") }))
      assert.equal(422, status_of({ part("query", "q"), part("source_url",
        "javascript:alert(1)") }))
      assert.equal(422, status_of({ part("query", "\255\254bad utf8") }))
      assert.equal(422, status_of({ part("query", "q"), part("query", "q2") }))
      assert.equal(422, status_of({ part("files", "", "empty.log") }))
      -- truncated multipart: 400, and the server goes on
      local r = req("POST", "/api/v1/cases/" .. case_id .. "/turns", { headers = {
        ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY },
        body = "--" .. BOUNDARY .. '\r\nContent-Disposition: form-data; name="files"; '
          .. 'filename="t.log"\r\n\r\npartial' })
      assert.equal(400, r.status)
      local ok = req("POST", "/api/v1/cases/" .. case_id .. "/turns", { json = { query = "ok" } })
      assert.equal(200, ok.status, ok.body)
      assert.equal(1, ok.json().turn_number)
      assert.equal(0, #stored_keys(case_id))
    end)

    it("never takes a path from a file name, and shows hostile names cleaned", function()
      local case_id = new_case()
      local r = turn(case_id, { part("files", "root:x:0:0\n", "../../../etc/passwd.log") })
      assert.equal(200, r.status, r.body)
      local a = r.json().attachments_processed[1]
      assert.equal("passwd.log", a.filename)
      local keys = stored_keys(case_id)
      assert.equal(1, #keys)
      assert.matches("^cases/" .. case_id .. "/%x+$", keys[1])
      assert.is_nil(keys[1]:find("passwd", 1, true))
      r = turn(case_id, { part("files", "x\n", "we\1ird\255name.log") })
      assert.equal(200, r.status, r.body)
      local name = r.json().attachments_processed[1].filename
      assert.truthy(utf8.len(name))
      assert.is_nil(name:find("\1", 1, true))
      if not setup.s3 then
        -- nothing was written outside the uploads directory
        local ok, _, out = helpers.shell("find " .. helpers.shell_quote(engine.data_dir)
          .. " -name 'passwd*'")
        assert.is_true(ok)
        assert.equal("", out)
      end
    end)

    it("shows a case's files to its owner only", function()
      local case_id = new_case()
      local a = turn(case_id, { part("files", "secret log\n", "s.log") }).json()
        .attachments_processed[1]
      local base = "/api/v1/cases/" .. case_id
      assert.equal(404, req("GET", base .. "/uploaded-files", { token = other_tok }).status)
      assert.equal(404, req("GET", base .. "/uploaded-files/" .. a.file_id,
        { token = other_tok }).status)
      assert.equal(404, req("GET", base .. "/uploaded-files/" .. a.file_id .. "/download",
        { token = other_tok }).status)
      assert.equal(404, turn(case_id, { part("query", "mine now") }, nil, other_tok).status)
      assert.equal(401, req("GET", base .. "/uploaded-files", { token = false }).status)
      -- a file id of another case of the same user is not found under this case
      local other = new_case()
      assert.equal(404, req("GET", "/api/v1/cases/" .. other .. "/uploaded-files/"
        .. a.file_id).status)
      for _, bad in ipairs({ "file_zz", "../x", "file_" .. ("a"):rep(100), "%00" }) do
        assert.equal(404, req("GET", base .. "/uploaded-files/" .. bad).status, bad)
      end
      assert.equal(422, req("GET", base .. "/uploaded-files?sort_by=password").status)
      assert.equal(422, req("GET", base .. "/uploaded-files?sort_order=sideways").status)
    end)

    it("replays a turn sent again with its Idempotency-Key", function()
      local case_id = new_case()
      local parts = { part("query", "q"), part("files", "line one\nline two\n", "k.log") }
      local h = { ["Idempotency-Key"] = "turn-key-0001" }
      local first = turn(case_id, parts, { ["Idempotency-Key"] = "turn-key-0001" })
      assert.equal(200, first.status, first.body)
      local again = turn(case_id, parts, h)
      assert.equal(200, again.status)
      assert.equal("true", again.headers["x-idempotency-replayed"])
      assert.equal(first.json().turn_number, again.json().turn_number)
      assert.equal(first.json().attachments_processed[1].file_id,
        again.json().attachments_processed[1].file_id)
      local other = turn(case_id, { part("query", "another question") },
        { ["Idempotency-Key"] = "turn-key-0001" })
      assert.equal(409, other.status)
      assert.equal("IDEMPOTENCY_KEY_REUSE", other.headers["x-error-code"])
      assert.equal(1, req("GET", "/api/v1/cases/" .. case_id).json().current_turn)
      assert.equal(422, turn(case_id, parts, { ["Idempotency-Key"] = "short" }).status)
    end)

    it("takes no turn on a closed case", function()
      local case_id = new_case()
      local u = req("PUT", "/api/v1/cases/" .. case_id, { json = { state = "closed",
        closure_reason = "inquiry_only" } })
      assert.equal(200, u.status, u.body)
      local r = turn(case_id, { part("files", "late\n", "late.log") })
      assert.equal(409, r.status)
      assert.equal("CASE_TERMINAL", r.headers["x-error-code"])
      assert.equal(0, #stored_keys(case_id))
    end)

    it("leaves no row without an object, and sweeps objects no row names", function()
      local case_id = new_case()
      local kept = turn(case_id, { part("files", NGINX_LOG, "kept.log") })
      assert.equal(200, kept.status, kept.body)
      -- an upload that stopped between its object and its row (as a crash would)
      local crash = req("POST", "/test/uploads/crash?case_id=" .. case_id .. "&user_id=" .. user_id)
      assert.equal(200, crash.status, crash.body)
      local orphan = req("POST", "/test/uploads/orphan?case_id=" .. case_id).json().key
      assert.equal(3, #stored_keys(case_id))
      assert.equal(1, req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files").json()
        .total_count)
      -- young orphans are kept (an upload may be in flight) ...
      local s = req("POST", "/test/uploads/sweep?grace=3600").json()
      assert.equal(0, s.removed)
      assert.is_true(s.kept_young >= 2)
      -- ... old ones go; what a row names stays
      helpers.sleep(1.1)
      s = req("POST", "/test/uploads/sweep?grace=1").json()
      assert.is_true(s.removed >= 2, require("fm.json").encode(s))
      local left = stored_keys(case_id)
      assert.equal(1, #left)
      assert.not_equal(orphan, left[1])
      assert.not_equal(crash.json().key, left[1])
      local f = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files").json().files[1]
      local g = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files/" .. f.file_id
        .. "/download")
      assert.equal(NGINX_LOG, g.body)
      -- a deleted case's files are swept too
      assert.equal(204, req("DELETE", "/api/v1/cases/" .. case_id).status)
      helpers.sleep(1.1)
      req("POST", "/test/uploads/sweep?grace=1")
      assert.equal(0, #stored_keys(case_id))
    end)
  end)
end

describe("the housekeeping thread", function()
  lazy_teardown(helpers.cleanup)

  it("sweeps unreferenced uploads on its own, every FM_HOUSEKEEPING_INTERVAL_S", function()
    local engine = helpers.engine.start { env = { FM_HOUSEKEEPING_INTERVAL_S = "1",
      FM_UPLOAD_SWEEP_GRACE_S = "2", FM_LUA_PATH = fixture_path(),
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.upload_routes" } }
    local orphan = assert(engine:post("/test/uploads/orphan?case_id=case_feed")).json().key
    assert.is_string(orphan)
    local function keys()
      return assert(engine:get("/test/storage/list?prefix=cases/case_feed")).json().keys
    end
    assert.equal(1, #keys())
    -- the thread runs (its metric moves) and removes the orphan once it is older than the grace
    helpers.wait_until(function() return #keys() == 0 end, 15)
    local m = assert(engine:get("/metrics")).body
    assert.matches('fm_housekeeping_runs_total{result="ok"} [1-9]', m)
    assert.is_nil(engine:log():match("housekeeping: run failed"))
    assert.is_nil(engine:log():match("housekeeping: upload sweep failed"))
    local how, code = engine:stop()
    assert.equal("exit", how)
    assert.equal(0, code, engine:log_tail(30))
  end)
end)
