-- The fm.vector driver contract, as busted blocks: every backend runs the same checks.
--   require("spec.vector.contract")(backend, _ENV)
--   backend = {name = "embedded", setup = function() ... vector.use(name, settings) end,
--              ensure_required = true (upsert before ensure is VECTOR_INVALID)}
-- spec/vector/embedded_spec.lua runs it for the embedded store; the external drivers' specs run
-- it against their servers. Covers ensure and the dimension check, upsert, replace, delete,
-- count, search (score range and order, filter alternatives), ids paging, get, drop, ping.
local helpers = require "spec.helpers"
local core = require "fm.embed_core"
local vector = require "fm.vector"

local DIM = 8

local function vec(t) return core.pack(t) end

local function unit(i)
  local t = {}
  for j = 1, DIM do t[j] = j == i and 1 or 0 end
  return vec(t)
end

-- busted's functions live in the spec file's environment, not in this module's: pass `_ENV`.
return function(backend, env)
  local describe, it, assert = env.describe, env.it, env.assert
  local lazy_setup, lazy_teardown = env.lazy_setup, env.lazy_teardown
  local before_each, after_each = env.before_each, env.after_each
  describe("fm.vector " .. backend.name, function()
    local C

    lazy_setup(function() backend.setup() end)
    lazy_teardown(helpers.cleanup)
    before_each(function()
      C = ("spec_%d"):format(math.random(1, 1e9))
      assert(vector.ensure(C, DIM))
    end)
    after_each(function() vector.drop(C) end)

    it("names its backend", function()
      assert.equal(backend.name, vector.backend())
    end)

    it("ensure is idempotent and refuses another dimension, naming the reindex", function()
      assert.is_true(vector.ensure(C, DIM))
      local ok, err, code = vector.ensure(C, DIM * 2)
      assert.is_nil(ok)
      assert.equal("VECTOR_DIM_MISMATCH", code)
      assert.matches("faultmaven kb reindex", err, 1, true)
      assert.matches(tostring(DIM), err, 1, true)
    end)

    it("upserts, replaces, counts, gets", function()
      assert.equal(3, vector.upsert(C, {
        { id = "a", vector = unit(1), metadata = { scope = "global", n = 1 } },
        { id = "b", vector = unit(2), metadata = { scope = "personal", owner_id = "user_1" } },
        { id = "c", vector = unit(3) },
      }))
      assert.equal(3, vector.count(C))
      assert.equal(1, vector.upsert(C, { { id = "a", vector = unit(4),
        metadata = { scope = "global", n = 2, fresh = true } } }))
      assert.equal(3, vector.count(C), "a replace is not a new item")
      local a = assert(vector.get(C, "a"))
      assert.equal("a", a.id)
      assert.same({ scope = "global", n = 2, fresh = true }, a.metadata)
      assert.equal(unit(4), a.vector)
      assert.same({}, assert(vector.get(C, "c")).metadata)
      assert.is_nil(vector.get(C, "nope"))
      local top = assert(vector.search(C, unit(4), 1))
      assert.equal("a", top[1].id)
    end)

    it("deletes what exists and says how many", function()
      assert(vector.upsert(C, { { id = "a", vector = unit(1) }, { id = "b", vector = unit(2) } }))
      assert.equal(1, vector.delete(C, { "a", "missing" }))
      assert.equal(1, vector.count(C))
      assert.is_nil(vector.get(C, "a"))
      assert.equal(0, vector.delete(C, { "a" }))
      for _, r in ipairs(assert(vector.search(C, unit(1), 10))) do assert.not_equal("a", r.id) end
    end)

    it("scores 0..1, best first: same vector ~1, orthogonal ~0.5, opposite ~0", function()
      local neg = {}
      for j = 1, DIM do neg[j] = j == 1 and -1 or 0 end
      assert(vector.upsert(C, {
        { id = "same", vector = unit(1) }, { id = "orth", vector = unit(2) },
        { id = "opp", vector = vec(neg) },
        { id = "near", vector = vec({ 0.9, 0.1, 0, 0, 0, 0, 0, 0 }) },
      }))
      local r = assert(vector.search(C, unit(1), 10))
      assert.equal(4, #r)
      assert.same({ "same", "near", "orth", "opp" }, { r[1].id, r[2].id, r[3].id, r[4].id })
      assert.near(1, r[1].score, 1e-4)
      assert.near(0.5, r[3].score, 1e-4)
      assert.near(0, r[4].score, 1e-4)
      for i, x in ipairs(r) do
        assert.is_true(x.score >= 0 and x.score <= 1)
        if i > 1 then assert.is_true(r[i - 1].score >= x.score) end
      end
      assert.equal(2, #assert(vector.search(C, unit(1), 2)))
    end)

    it("filters: AND inside an alternative, OR between them, lists of values", function()
      assert(vector.upsert(C, {
        { id = "g1", vector = unit(1), metadata = { scope = "global", kind = "runbook" } },
        { id = "g2", vector = unit(2), metadata = { scope = "global", kind = "faq" } },
        { id = "p1", vector = unit(3), metadata = { scope = "personal", owner_id = "user_1" } },
        { id = "p2", vector = unit(4), metadata = { scope = "personal", owner_id = "user_2" } },
        { id = "n1", vector = unit(5), metadata = { level = 3, pinned = true } },
      }))
      local function ids(filter)
        local out = {}
        for _, r in ipairs(assert(vector.search(C, unit(1), 10, filter))) do
          out[#out + 1] = r.id
        end
        table.sort(out)
        return out
      end
      assert.same({ "g1", "g2", "p1" },
        ids({ { scope = "global" }, { scope = "personal", owner_id = "user_1" } }))
      assert.same({ "p1", "p2" }, ids({ { scope = "personal" } }))
      assert.same({ "p1", "p2" }, ids({ scope = "personal" }), "one alternative given bare")
      assert.same({ "g2", "p2" }, ids({ { kind = "faq" }, { owner_id = { "user_2", "user_9" } } }))
      assert.same({ "n1" }, ids({ { level = 3, pinned = true } }))
      assert.same({ "n1" }, ids({ { level = 3.0 } }), "3 and 3.0 are the same number")
      assert.same({}, ids({ { level = "3" } }), "a string is not a number")
      assert.same({}, ids({ { scope = "global", owner_id = "user_1" } }))
      assert.equal(5, #ids(nil))
      assert.equal(5, #ids({ { scope = "personal" }, {} }), "an empty alternative matches all")
      local r, err, code = vector.search(C, unit(1), 10, { { scope = {} } })
      assert.is_nil(r)
      assert.equal("VECTOR_INVALID", code, err)
    end)

    it("pages through ids with a cursor", function()
      local items, want = {}, {}
      for i = 1, 23 do
        items[i] = { id = ("id%02d"):format(i), vector = unit(i % DIM + 1) }
        want[i] = items[i].id
      end
      assert(vector.upsert(C, items))
      assert(vector.delete(C, { "id05" }))
      table.remove(want, 5)
      local got, after, pages = {}, nil, 0
      repeat
        local ids, nxt = assert(vector.ids(C, after, 5))
        assert.is_true(#ids <= 5)
        for _, id in ipairs(ids) do got[#got + 1] = id end
        after, pages = nxt, pages + 1
      until not after
      table.sort(got)
      assert.same(want, got)
      assert.is_true(pages >= 5, "pages of at most 5")
    end)

    it("refuses vectors of another dimension and malformed items", function()
      local n, err, code = vector.upsert(C, { { id = "x", vector = vec({ 1, 2, 3 }) } })
      assert.is_nil(n)
      assert.equal("VECTOR_DIM_MISMATCH", code)
      assert.matches("faultmaven kb reindex", err, 1, true)
      local _, _, qcode = vector.search(C, vec({ 1, 0 }), 3)
      assert.equal("VECTOR_DIM_MISMATCH", qcode)
      _, _, code = vector.upsert(C, { { id = "", vector = unit(1) } })
      assert.equal("VECTOR_INVALID", code)
      _, _, code = vector.upsert(C, { { id = "x", vector = unit(1), metadata = { t = {} } } })
      assert.equal("VECTOR_INVALID", code)
      assert.equal(0, vector.count(C), "nothing of a refused batch is written")
    end)

    it("drops a collection", function()
      assert(vector.upsert(C, { { id = "a", vector = unit(1) } }))
      assert.is_true(vector.drop(C))
      assert.equal(0, vector.count(C))
      assert.same({}, assert(vector.search(C, unit(1), 3)))
      if backend.ensure_required then
        local _, _, code = vector.upsert(C, { { id = "a", vector = unit(1) } })
        assert.equal("VECTOR_INVALID", code, "upsert needs ensure first")
      end
    end)

    it("pings", function()
      local p = assert(vector.ping())
      assert.is_number(p.latency_ms)
    end)
  end)
end
