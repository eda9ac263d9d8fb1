-- fm.vector against every backend in `backends` (the embedded store here; the external drivers run
-- the same contract, spec/vector/contract.lua, from their own spec files): ensure and the
-- dimension check, upsert, replace, delete, count, search (score range, order, filter
-- alternatives), ids paging, get, drop. Then what only the embedded store promises: persistence
-- across a restart of the engine (two `faultmaven exec` processes on one data dir), nothing
-- acknowledged lost to a kill -9 in the middle of an upsert loop (snapshots included), one
-- process per collection, and the start-up check of the index's dimension against EMBEDDING_DIM.
local helpers = require "spec.helpers"
local contract = require "spec.vector.contract"
local vector = require "fm.vector"

local backends = {
  { name = "embedded", ensure_required = true, setup = function()
    local dir = helpers.tmpdir("fm-vec-")
    vector.use("embedded", { data_dir = dir, vector_snapshot_every = 16 })
    return dir
  end },
}

for _, backend in ipairs(backends) do contract(backend, _ENV) end

describe("vector and embedding settings", function()
  local config = require "config"
  local function env(t) return function(k) return t[k] end end

  it("defaults to embedded vectors and hashing embeddings, 384 dimensions", function()
    local s = assert(config.resolve(env {}))
    assert.equal("embedded", s.vector_db_provider)
    assert.equal("hashing", s.embedding_provider)
    assert.equal(384, s.embedding_dim)
    assert.equal("qdrant", assert(config.resolve(env { VECTOR_BACKEND = "qdrant" }))
      .vector_db_provider, "VECTOR_BACKEND is an alias")
  end)

  it("refuses pgvector at start: it is not built", function()
    local s, errs = config.resolve(env { VECTOR_DB_PROVIDER = "pgvector" })
    assert.is_nil(s)
    assert.matches("pgvector is not built", table.concat(errs, "\n"), 1, true)
    assert.has_error(function() vector.use("pgvector", {}) end)
  end)

  it("checks the embedding settings against each other", function()
    local _, errs = config.resolve(env { EMBEDDING_DIM = "768" })
    assert.matches("384 or 512", table.concat(errs, "\n"), 1, true)
    _, errs = config.resolve(env { EMBEDDING_PROVIDER = "openai" })
    assert.matches("EMBEDDING_API_BASE", table.concat(errs, "\n"), 1, true)
    local s = assert(config.resolve(env { EMBEDDING_PROVIDER = "openai", EMBEDDING_DIM = "768",
      EMBEDDING_API_BASE = "http://localhost:11434/v1", EMBEDDING_MODEL = "nomic-embed-text",
      EMBEDDING_API_KEY = "sk-secret" }))
    assert.equal(768, s.embedding_dim)
    local ok, text = config.check(env { EMBEDDING_API_KEY = "sk-secret" })
    assert.is_true(ok)
    assert.matches("EMBEDDING_API_KEY", text, 1, true)
    assert.not_matches("sk-secret", text, 1, true)
  end)
end)

describe("fm.vector embedded durability", function()
  local function run(...)
    local work = helpers.tmpdir("fm-vecw-")
    local p = helpers.spawn({ argv = { helpers.bin(), "exec",
      helpers.root .. "/spec/fixtures/vector_worker.lua", ... },
      stdout = work .. "/out", stderr = work .. "/err", cwd = helpers.root })
    return p, work
  end

  local function run_wait(...)
    local p, work = run(...)
    local how, code = p:wait(120)
    assert.equal("exit", how, helpers.read_file(work .. "/err"))
    assert.equal(0, code, helpers.read_file(work .. "/err"))
    return helpers.read_file(work .. "/out")
  end

  local function dump(dir)
    local out = run_wait("dump", dir)
    local count = tonumber(out:match("^count (%d+)"))
    local items = {}
    for id, i in out:gmatch("\n(k%d+) (%-?%d+)") do items[id] = tonumber(i) end
    return count, items
  end

  lazy_teardown(helpers.cleanup)

  it("keeps everything across a restart of the engine", function()
    local dir = helpers.tmpdir("fm-vecd-")
    assert.matches("done", run_wait("write", dir, "100"))
    local count, items = dump(dir)
    assert.equal(99, count)
    assert.is_nil(items.k1, "deleted")
    assert.equal(-2, items.k2, "replaced")
    for i = 3, 100 do assert.equal(i, items["k" .. i]) end
    -- a snapshot was taken on the way (40 records) and at the clean exit
    assert.is_true(helpers.file_exists(dir .. "/vectors/durable/CURRENT"))
    -- and once more: reopening a reopened store changes nothing
    local count2, items2 = dump(dir)
    assert.equal(count, count2)
    assert.same(items, items2)
  end)

  it("loses nothing acknowledged to a kill -9 in the middle of an upsert loop", function()
    local dir = helpers.tmpdir("fm-veck-")
    local p, work = run("loop", dir)
    helpers.wait_until(function()
      local out = helpers.read_file(work .. "/out") or ""
      local _, lines = out:gsub("\n", "")
      return lines >= 400
    end, 120, 0.05)
    p:signal("KILL")
    assert.equal("signal", (p:wait(10)))
    local out = helpers.read_file(work .. "/out")
    local present, deleted, acked, batches, last_op, last_id = {}, {}, 0, 0, nil, nil
    for line in out:gmatch("([^\n]*)\n") do -- complete lines only: those were acknowledged
      local op, rest = line:match("^(%u) (.*)$")
      if op == "U" then batches = batches + 1 end
      last_op = op
      for id in rest:gmatch("%S+") do
        last_id = id
        if op == "U" then
          present[id], acked = true, acked + 1
        else
          present[id], deleted[id] = nil, true
        end
      end
    end
    assert.is_true(acked >= 400)
    -- the kill may have come after a delete was durable but before it was acknowledged
    local in_flight_delete = last_op == "U" and batches % 7 == 0
      and ("k%d"):format(tonumber(last_id:sub(2)) - 4) or nil
    local count, items = dump(dir)
    local missing = {}
    for id in pairs(present) do
      if not items[id] and id ~= in_flight_delete then missing[#missing + 1] = id end
      if items[id] then assert.equal(tonumber(id:sub(2)), items[id]) end
    end
    assert.same({}, missing)
    for id in pairs(deleted) do assert.is_nil(items[id], id .. " was deleted") end
    -- at most the one batch in flight when the kill came is there unacknowledged
    local n = 0
    for _ in pairs(present) do n = n + 1 end
    assert.is_true(count >= n - 1 and count <= n + 3,
      ("count %d, acknowledged %d"):format(count, n))
    print(("\nkill -9 after %d acknowledged upserts: all %d live ids present"):format(acked, n))
  end)

  it("stops the engine at start when the index and EMBEDDING_DIM disagree, naming the reindex",
    function()
      local e = helpers.engine.start()
      local health = assert(e:request("GET", "/health")).json()
      assert.equal("healthy", health.components.vectors.status)
      assert.equal("embedded", health.components.vectors.backend)
      assert.same({ status = "healthy", provider = "hashing", model = "hashing-v1-384", dim = 384 },
        health.components.embeddings)
      assert.equal("exit", (e:stop()))
      local dim = helpers.read_file(e.data_dir .. "/vectors/knowledge/collection.json")
      assert.matches('"dim":384', dim, 1, true)
      local ok, err = pcall(helpers.engine.start, { env = { FM_DATA_DIR = e.data_dir,
        EMBEDDING_DIM = "512" } })
      assert.is_false(ok)
      assert.matches("faultmaven kb reindex", err, 1, true)
      assert.matches("384-dimension", err, 1, true)
      -- the same settings as the index: it starts
      local again = helpers.engine.start({ env = { FM_DATA_DIR = e.data_dir } })
      assert.equal("exit", (again:stop()))
    end)

  it("shares one store between the worker VMs and keeps it across a stop and a kill -9",
    function()
      local env = { FM_WORKERS = "4", KB_PACK_DIR = "off", FM_HOUSEKEEPING_INTERVAL_S = "0",
        FM_EXTRA_ROUTES = "fm_test.routes,fm_test.vector_routes" }
      local e = helpers.engine.start({ env = env })
      env.FM_DATA_DIR = e.data_dir
      local vms = {}
      local function put(eng, from, to)
        for i = from, to do
          local r = eng:request("POST", ("/test/vector/put?id=v%04d"):format(i))
          assert.equal(200, r.status, r.body)
          vms[r.json().vm] = true
        end
      end
      local function count(eng)
        local r = eng:request("GET", "/test/vector/count")
        assert.equal(200, r.status, r.body)
        local b = r.json()
        vms[b.vm] = true
        assert.equal(b.count, #b.ids)
        return b.count
      end
      put(e, 1, 40)
      -- every worker VM sees every vector, whichever worker put it
      for _ = 1, 12 do assert.equal(40, count(e)) end
      local seen = 0
      for _ in pairs(vms) do seen = seen + 1 end
      assert.is_true(seen >= 2, "requests were answered by " .. seen .. " VM(s)")
      assert.equal("exit", (e:stop()))
      local e2 = helpers.engine.start({ env = env })
      assert.equal(40, count(e2))
      put(e2, 41, 60)
      e2.proc:kill() -- kill -9: the last 20 are only in the log
      local e3 = helpers.engine.start({ env = env })
      assert.equal(60, count(e3))
      assert.equal("exit", (e3:stop()))
    end)

  it("lets one process at a time open a collection", function()
    local dir = helpers.tmpdir("fm-vecl-")
    local p, work = run("loop", dir)
    helpers.wait_until(function()
      return #(helpers.read_file(work .. "/out") or "") > 0
    end, 60, 0.05)
    local out = helpers.read_file(work .. "/out")
    assert.truthy(out)
    local p2, work2 = run("dump", dir)
    local how, code = p2:wait(60)
    assert.equal("exit", how)
    assert.not_equal(0, code)
    assert.matches("open in another process", helpers.read_file(work2 .. "/err"), 1, true)
    p:kill()
  end)
end)
