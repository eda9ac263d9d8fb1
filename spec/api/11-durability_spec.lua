-- Durability: kill -9 the engine during a burst of case creates; after a restart every case that
-- got a 201 is there. On SQLite and on PostgreSQL.
local helpers = require "spec.helpers"

for _, backend in ipairs(helpers.db_backends()) do
  describe("durability on " .. backend.name, function()
    lazy_teardown(helpers.cleanup)

    it("keeps every acknowledged case through kill -9", function()
      local url = backend.url { durable = true }
      local data = helpers.tmpdir("fm-durable-")
      local env = { DATABASE_URL = url, FM_DATA_DIR = data, FM_WORKERS = "4" }
      local engine = helpers.engine.start { env = env }
      local login = assert(engine:post("/api/v1/auth/dev-login", { json = { username = "dur" } }))
      local token = login.json().access_token
      local out = helpers.tmpdir("fm-burst-") .. "/ids"
      local clients = {}
      for i = 1, 2 do
        clients[i] = helpers.spawn {
          argv = { helpers.bin(), "exec", helpers.root .. "/spec/fixtures/create_burst.lua",
                   tostring(engine.port), token, out .. i },
          env = { FM_SOURCE_DIR = helpers.root }, cwd = helpers.root,
          stdout = out .. i .. ".log", stderr = out .. i .. ".log" }
      end
      helpers.wait_until(function()
        local s = helpers.read_file(out .. "1") or ""
        return select(2, s:gsub("\n", "")) >= 50
      end, 20, 0.05)
      engine:signal("KILL")
      for _, c in ipairs(clients) do assert.equal("exit", (c:wait(30))) end
      local ids = {}
      for i = 1, 2 do
        for id in (helpers.read_file(out .. i) or ""):gmatch("[^\n]+") do ids[#ids + 1] = id end
      end
      assert.is_true(#ids >= 50, #ids .. " cases acknowledged")
      local again = helpers.engine.start { env = env }
      for _, id in ipairs(ids) do
        local r = assert(again:get("/api/v1/cases/" .. id,
          { headers = { Authorization = "Bearer " .. token } }))
        assert.equal(200, r.status, id .. " acknowledged but lost")
      end
      local list = assert(again:get("/api/v1/cases?include_archived=true&limit=1",
        { headers = { Authorization = "Bearer " .. token } })).json()
      assert.is_true(list.total_count >= #ids)
    end)
  end)
end
