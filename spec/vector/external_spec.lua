-- The external vector drivers (fm.vector.qdrant, .pinecone, .chroma) against local fakes of
-- their HTTP APIs (spec/fixtures/fake_<name>.lua): Qdrant, Pinecone and Chroma cannot run here,
-- so each fake implements the documented subset of its service's API, filters evaluated the way
-- the service documents them. The same cases run for each driver: ensure and dimension
-- mismatch, upsert and replace, delete, count, search order and score range, filter
-- alternatives, ids paging, get, drop, ping, the API key in the documented header, a 500 and a
-- refused connection (VECTOR_UNAVAILABLE), a malformed JSON answer (VECTOR_ERROR).
local helpers = require "spec.helpers"
local breaker = require "fm.breaker"
local http = require "fm.http"
local json = require "fm.json"

local DIM = 4
local KEY = "test-key-123"

local function vec(t) return string.pack("<ffff", t[1], t[2], t[3], t[4]) end
local function chk(i) return ("chk_%032x"):format(i) end

local providers = {
  {
    name = "qdrant",
    args = { KEY },
    settings = function(port, key)
      return { qdrant_url = ("http://127.0.0.1:%d"):format(port), qdrant_api_key = key,
        vector_timeout_s = 5 }
    end,
    key_header = "api-key",
    search_target = "/points/search",
    -- the native filter the driver sent for {{kind = "log", sev = {2, 3}}, {ok = false}}
    check_filter = function(body)
      local f = body.filter
      assert.equal(2, #f.should)
      assert.same({ key = "kind", match = { value = "log" } }, f.should[1].must[1])
      assert.same({ key = "sev", match = { any = { 2, 3 } } }, f.should[1].must[2])
      assert.same({ key = "ok", match = { value = false } }, f.should[2].must[1])
    end,
  },
  {
    name = "pinecone",
    args = { KEY, tostring(DIM) },
    settings = function(port, key)
      return { pinecone_api_key = key, pinecone_index_name = "fm-test",
        pinecone_host = ("http://127.0.0.1:%d"):format(port), vector_timeout_s = 5 }
    end,
    key_header = "api-key",
    fixed_dim = true, -- a Pinecone index has one dimension: a collection is a namespace in it
    search_target = "/query",
    check_filter = function(body)
      local f = body.filter
      assert.equal(2, #f["$or"])
      assert.same({ kind = { ["$eq"] = "log" } }, f["$or"][1]["$and"][1])
      assert.same({ sev = { ["$in"] = { 2, 3 } } }, f["$or"][1]["$and"][2])
      assert.same({ ok = { ["$eq"] = false } }, f["$or"][2])
    end,
  },
  {
    name = "chroma",
    args = { KEY },
    settings = function(port, key)
      return { chroma_host = "127.0.0.1", chroma_port = port, chroma_api_key = key,
        chroma_tenant = "t1", chroma_database = "d1", vector_timeout_s = 5 }
    end,
    key_header = "x-chroma-token",
    search_target = "/query",
    check_filter = function(body)
      local w = body.where
      assert.equal(2, #w["$or"])
      assert.same({ kind = { ["$eq"] = "log" } }, w["$or"][1]["$and"][1])
      assert.same({ sev = { ["$in"] = { 2, 3 } } }, w["$or"][1]["$and"][2])
      assert.same({ ok = { ["$eq"] = false } }, w["$or"][2])
    end,
  },
}

for _, pv in ipairs(providers) do
  describe("fm.vector." .. pv.name .. " against a fake " .. pv.name, function()
    local driver_mod = require("fm.vector." .. pv.name)
    local port, d
    local C = "fm_test"

    local function ctl(path)
      local res, err = http.request { url = ("http://127.0.0.1:%d/_ctl/%s"):format(port, path),
        breaker = false, timeout = 5 }
      assert(res and res.status == 200, "fake " .. pv.name .. " " .. path .. ": "
        .. tostring(err))
      return res.body
    end

    local function log()
      return json.decode(ctl("log"))
    end

    local function new(key, p)
      return driver_mod.new(pv.settings(p or port, key == nil and KEY or key))
    end

    local function set(list)
      local s = {}
      for _, x in ipairs(list) do s[type(x) == "table" and x.id or x] = true end
      return s
    end

    lazy_setup(function()
      local work = helpers.tmpdir("fm-vfake-")
      port = helpers.free_port()
      local argv = { helpers.bin(), "exec",
        helpers.root .. "/spec/fixtures/fake_" .. pv.name .. ".lua", tostring(port) }
      for _, a in ipairs(pv.args) do argv[#argv + 1] = a end
      helpers.spawn({ argv = argv, stdout = work .. "/fake.log", stderr = work .. "/fake.log",
        cwd = helpers.root })
      helpers.wait_until(function() return pcall(ctl, "reset") end, 10)
    end)
    lazy_teardown(helpers.cleanup)
    before_each(function()
      ctl("reset")
      breaker.reset(pv.name)
      d = new()
    end)

    it("ensure creates a collection once and refuses another dimension", function()
      assert.is_true(assert(d:ensure(C, DIM)))
      assert.is_true(assert(new():ensure(C, DIM)), "an existing one of the same dimension")
      local ok, err, code = new():ensure(C, DIM + 1)
      assert.is_nil(ok)
      assert.equal("VECTOR_DIM_MISMATCH", code, err)
      assert.equal(0, d:count(C))
    end)

    it("upserts, replaces by id, counts, gets", function()
      assert(d:ensure(C, DIM))
      local n = assert(d:upsert(C, {
        { id = chk(1), vector = vec { 1, 0, 0, 0 }, metadata = { kind = "log", sev = 1 } },
        { id = chk(2), vector = vec { 0, 1, 0, 0 }, metadata = { kind = "doc", ok = true } },
        { id = "plain-id", vector = vec { 0, 0, 1, 0 } },
      }))
      assert.equal(3, n)
      assert.equal(3, d:count(C))
      assert.equal(1, assert(d:upsert(C, { { id = chk(1), vector = vec { 0, 0, 0, 1 },
        metadata = { kind = "doc", w = 0.25 } } })))
      assert.equal(3, d:count(C))
      local g = assert(d:get(C, chk(1)))
      assert.equal(chk(1), g.id)
      assert.equal(vec { 0, 0, 0, 1 }, g.vector)
      assert.same({ kind = "doc", w = 0.25 }, g.metadata)
      local p = assert(d:get(C, "plain-id"))
      assert.equal("plain-id", p.id)
      assert.same({}, p.metadata)
      assert.is_nil(d:get(C, chk(99)))
      assert.is_nil(d:get("no_such_collection", chk(1)))
    end)

    it("keeps the last of an id given twice in one upsert", function()
      assert(d:ensure(C, DIM))
      assert.equal(1, assert(d:upsert(C, {
        { id = chk(1), vector = vec { 1, 0, 0, 0 }, metadata = { v = 1 } },
        { id = chk(1), vector = vec { 0, 1, 0, 0 }, metadata = { v = 2 } },
      })))
      assert.equal(1, d:count(C))
      assert.same({ v = 2 }, assert(d:get(C, chk(1))).metadata)
    end)

    if not pv.fixed_dim then
      it("notices a collection made again elsewhere with another dimension", function()
        assert(d:ensure(C, DIM))
        assert(d:upsert(C, { { id = chk(1), vector = vec { 1, 0, 0, 0 } } }))
        local other = new()
        assert(other:drop(C))
        assert(other:ensure(C, 2))
        assert.equal(0, assert(d:count(C)))
        assert.equal(1, assert(d:upsert(C, { { id = chk(2), vector = string.pack("<ff", 1, 0) } })))
        assert.equal(1, assert(d:count(C)))
        assert.equal(chk(2), assert(d:search(C, string.pack("<ff", 1, 0), 1))[1].id)
      end)
    end

    it("refuses a vector of another dimension", function()
      assert(d:ensure(C, DIM))
      local ok, err, code = d:upsert(C, { { id = chk(1), vector = string.pack("<fff", 1, 0, 0) } })
      assert.is_nil(ok)
      assert.equal("VECTOR_DIM_MISMATCH", code, err)
      ok, err, code = d:search(C, string.pack("<fff", 1, 0, 0), 3)
      assert.is_nil(ok)
      assert.equal("VECTOR_DIM_MISMATCH", code, err)
      ok, err, code = d:upsert(C, { { id = chk(1), vector = "abc" } })
      assert.is_nil(ok)
      assert.equal("VECTOR_INVALID", code, err)
    end)

    it("deletes what exists and says how many", function()
      assert(d:ensure(C, DIM))
      assert(d:upsert(C, {
        { id = chk(1), vector = vec { 1, 0, 0, 0 } },
        { id = chk(2), vector = vec { 0, 1, 0, 0 } },
        { id = chk(3), vector = vec { 0, 0, 1, 0 } },
      }))
      assert.equal(2, assert(d:delete(C, { chk(1), chk(3), chk(42) })))
      assert.equal(1, d:count(C))
      assert.is_nil(d:get(C, chk(1)))
      assert.is_table(d:get(C, chk(2)))
      assert.equal(0, assert(d:delete(C, { chk(1) })))
    end)

    it("searches best first with scores normalised to 0..1", function()
      assert(d:ensure(C, DIM))
      assert(d:upsert(C, {
        { id = chk(4), vector = vec { -1, 0, 0, 0 }, metadata = { n = 4 } },
        { id = chk(2), vector = vec { 0.8, 0.6, 0, 0 }, metadata = { n = 2 } },
        { id = chk(1), vector = vec { 2, 0, 0, 0 }, metadata = { n = 1 } },
        { id = chk(3), vector = vec { 0, 1, 0, 0 }, metadata = { n = 3 } },
      }))
      local hits = assert(d:search(C, vec { 1, 0, 0, 0 }, 10))
      assert.equal(4, #hits)
      local want = { 1, 0.9, 0.5, 0 } -- (1 + cos) / 2
      for i, h in ipairs(hits) do
        assert.equal(chk(i), h.id)
        assert.equal(i, h.metadata.n)
        assert.near(want[i], h.score, 1e-4)
        assert.is_true(h.score >= 0 and h.score <= 1)
      end
      local top = assert(d:search(C, vec { 1, 0, 0, 0 }, 2))
      assert.same({ chk(1), chk(2) }, { top[1].id, top[2].id })
      assert.same({}, assert(d:search("no_such_collection", vec { 1, 0, 0, 0 }, 2)))
    end)

    describe("filters", function()
      local items = {
        { "a", { kind = "log", sev = 1, ok = true, w = 0.5 } },
        { "b", { kind = "log", sev = 2, ok = true, w = 1.5 } },
        { "c", { kind = "log", sev = 3, ok = false, w = 0.5 } },
        { "d", { kind = "doc", sev = 2, ok = true, w = 2.5 } },
        { "e", { kind = "doc", sev = 3, ok = false, w = 0.5 } },
        { "f", { kind = "doc", sev = 1, ok = true, w = 1.5 } },
      }
      before_each(function()
        assert(d:ensure(C, DIM))
        local list = {}
        for i, it in ipairs(items) do
          list[i] = { id = "chk_" .. it[1]:rep(32), vector = vec { 1, i / 10, 0, 0 },
            metadata = it[2] }
        end
        assert(d:upsert(C, list))
      end)
      local function found(filter)
        local hits = assert(d:search(C, vec { 1, 0, 0, 0 }, 10, filter))
        local s = {}
        for _, h in ipairs(hits) do s[#s + 1] = h.id:sub(5, 5) end
        table.sort(s)
        return table.concat(s)
      end
      local cases = {
        { "AND inside, OR between, a list is any of", { { kind = "log", sev = { 2, 3 } },
          { ok = false } }, "bce" },
        { "a float value", { { w = 0.5 } }, "ace" },
        { "a one-element list and a boolean", { { kind = { "doc" }, ok = true } }, "df" },
        { "two alternatives of different fields", { { sev = 1 }, { sev = 3, kind = "doc" } },
          "aef" },
        { "a list of booleans", { { ok = { true, false }, kind = "log" } }, "abc" },
        { "a list of strings", { { kind = { "doc", "log" }, sev = 2 } }, "bd" },
        { "a list of floats", { { w = { 0.5, 2.5 }, ok = true } }, "ad" },
        { "nothing matches", { { kind = "nope" } }, "" },
        { "no filter", nil, "abcdef" },
      }
      for _, case in ipairs(cases) do
        it(case[1], function()
          assert.equal(case[3], found(case[2]))
        end)
      end
      it("sends the provider's own filter syntax", function()
        found({ { kind = "log", sev = { 2, 3 } }, { ok = false } })
        local sent
        for _, r in ipairs(log()) do
          if r.target:find(pv.search_target, 1, true) then sent = json.decode(r.body) end
        end
        assert.is_table(sent)
        pv.check_filter(sent)
      end)
      it("refuses a malformed filter", function()
        local ok, err, code = d:search(C, vec { 1, 0, 0, 0 }, 3, { { kind = { {} } } })
        assert.is_nil(ok)
        assert.equal("VECTOR_INVALID", code, err)
      end)
    end)

    it("pages through ids", function()
      assert(d:ensure(C, DIM))
      local list = {}
      for i = 1, 7 do list[i] = { id = chk(i), vector = vec { 1, i, 0, 0 } } end
      assert(d:upsert(C, list))
      local seen, after, pages = {}, nil, 0
      repeat
        local ids, nxt = assert(d:ids(C, after, 3))
        pages = pages + 1
        assert.is_true(#ids <= 3)
        for _, id in ipairs(ids) do
          assert.is_nil(seen[id], "no id twice")
          seen[id] = true
        end
        after = nxt
      until not after or pages > 10
      assert.equal(3, pages)
      assert.same(set { chk(1), chk(2), chk(3), chk(4), chk(5), chk(6), chk(7) }, seen)
      local all, nxt = assert(d:ids(C, nil, 100))
      assert.equal(7, #all)
      assert.is_nil(nxt)
    end)

    it("drops a collection", function()
      assert(d:ensure(C, DIM))
      assert(d:upsert(C, { { id = chk(1), vector = vec { 1, 0, 0, 0 } } }))
      assert.is_true(assert(d:drop(C)))
      assert.equal(0, d:count(C))
      assert.is_true(assert(d:drop(C)), "dropping what is not there")
      if not pv.fixed_dim then
        assert.is_true(assert(d:ensure(C, DIM + 4)), "made again with another dimension")
      end
    end)

    it("is what fm.vector uses for VECTOR_DB_PROVIDER=" .. pv.name, function()
      local vector = require "fm.vector"
      assert(vector.use(pv.name, pv.settings(port, KEY)))
      assert.equal(pv.name, vector.backend())
      assert(vector.ensure(C, DIM))
      assert.equal(1, assert(vector.upsert(C, { { id = chk(1), vector = vec { 1, 0, 0, 0 } } })))
      assert.equal(chk(1), assert(vector.search(C, vec { 1, 0, 0, 0 }, 1))[1].id)
    end)

    it("pings", function()
      local p = assert(d:ping())
      assert.is_number(p.latency_ms)
      assert.is_true(p.latency_ms >= 0)
    end)

    it("sends the API key in " .. pv.key_header .. " and fails without it", function()
      assert(d:ensure(C, DIM))
      local reqs = log()
      assert.is_true(#reqs > 0)
      for _, r in ipairs(reqs) do assert.equal(KEY, r.headers[pv.key_header]) end
      local ok, err, code = new("wrong-key"):count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_ERROR", code, err)
      assert.matches("401", err)
    end)

    it("maps a 500 to VECTOR_UNAVAILABLE through its circuit breaker", function()
      assert(d:ensure(C, DIM))
      ctl("fail?status=500&times=1")
      local ok, err, code = new():count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_UNAVAILABLE", code, err)
      local st = breaker.state(pv.name)
      assert.is_table(st)
      assert.is_true(st.failures >= 1)
      assert.equal(0, assert(new():count(C)))
    end)

    it("maps a timeout to VECTOR_UNAVAILABLE", function()
      assert(d:ensure(C, DIM))
      ctl("stall?delay_ms=1500&times=1")
      local s = pv.settings(port, KEY)
      s.vector_timeout_s = 0.5
      local t0 = helpers.now()
      local ok, err, code = driver_mod.new(s):count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_UNAVAILABLE", code, err)
      assert.is_true(helpers.now() - t0 < 1.4, "gave up at the timeout")
    end)

    it("stops calling while its circuit breaker is open", function()
      assert(d:ensure(C, DIM))
      local threshold = breaker.config().fail_threshold
      ctl(("fail?status=503&times=%d"):format(threshold))
      for _ = 1, threshold do
        local _, _, code = new():count(C)
        assert.equal("VECTOR_UNAVAILABLE", code)
      end
      assert.equal("open", breaker.state(pv.name).state)
      local before = #log()
      local ok, err, code = new():count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_UNAVAILABLE", code)
      assert.matches("circuit open", err)
      assert.equal(before, #log(), "nothing sent")
    end)

    it("maps a refused connection to VECTOR_UNAVAILABLE", function()
      local ok, err, code = new(nil, helpers.free_port()):count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_UNAVAILABLE", code, err)
      ok, err, code = new(nil, helpers.free_port()):ping()
      assert.is_nil(ok)
      assert.equal("VECTOR_UNAVAILABLE", code, err)
    end)

    it("maps a malformed JSON answer to VECTOR_ERROR", function()
      assert(d:ensure(C, DIM))
      ctl("fail?status=200&times=5&raw=%7Bnot%20json")
      local ok, err, code = new():count(C)
      assert.is_nil(ok)
      assert.equal("VECTOR_ERROR", code, err)
      assert.matches("malformed JSON", err)
    end)

    if pv.name == "qdrant" then
      it("stores chk_ ids as the UUID of their hex and keeps the id in the payload", function()
        assert(d:ensure(C, DIM))
        local id = "chk_0123456789abcdef0123456789ABCDEF"
        assert(d:upsert(C, { { id = id, vector = vec { 1, 0, 0, 0 }, metadata = { a = 1 } } }))
        local body
        for _, r in ipairs(log()) do
          if r.method == "PUT" and r.target:find("/points", 1, true) then
            body = json.decode(r.body)
          end
        end
        assert.equal("01234567-89ab-cdef-0123-456789abcdef", body.points[1].id)
        assert.equal(id, body.points[1].payload._fm_id)
        assert.equal(id, assert(d:search(C, vec { 1, 0, 0, 0 }, 1))[1].id)
        assert.equal("01234567-89ab-cdef-0123-456789abcdef", driver_mod.point_id(id))
        assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", driver_mod.point_id("other"))
        local ok, err, code = d:upsert(C, { { id = chk(1), vector = vec { 1, 0, 0, 0 },
          metadata = { _fm_id = "x" } } })
        assert.is_nil(ok)
        assert.equal("VECTOR_INVALID", code, err)
      end)
    end
    if pv.name == "pinecone" then
      local function url() return ("http://127.0.0.1:%d"):format(port) end
      it("finds the index host through the control plane without PINECONE_HOST", function()
        local p = driver_mod.new { pinecone_api_key = KEY, pinecone_index_name = "fm-test",
          pinecone_controller_url = url(), vector_timeout_s = 5 }
        assert.equal(0, assert(p:count(C)))
        assert.equal(url(), p:host())
        local reqs = log()
        assert.equal("GET /indexes/fm-test", reqs[1].method .. " " .. reqs[1].target)
        assert.equal("POST /describe_index_stats", reqs[2].method .. " " .. reqs[2].target)
        assert.equal("2025-04", reqs[2].headers["x-pinecone-api-version"])
      end)
      it("builds a legacy host from PINECONE_ENVIRONMENT and whoami", function()
        local p = driver_mod.new { pinecone_api_key = KEY, pinecone_index_name = "old-index",
          pinecone_environment = "us-west1-gcp", pinecone_controller_url = url(),
          pinecone_legacy_controller_url = url(), vector_timeout_s = 5 }
        assert.equal("https://old-index-proj1.svc.us-west1-gcp.pinecone.io", assert(p:host()))
        local ok, err, code = driver_mod.new({ pinecone_index_name = "x" }):count(C)
        assert.is_nil(ok)
        assert.equal("VECTOR_INVALID", code, err)
      end)
    end
  end)
end
