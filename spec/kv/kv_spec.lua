-- fm.kv: the same behaviours on the in-process store and on a real Redis (with and without a
-- password); Redis going away and coming back; scripts (EVALSHA, NOSCRIPT after SCRIPT FLUSH);
-- an engine started with REDIS_URL shows the `kv` health component.
local helpers = require "spec.helpers"
local kv = require "fm.kv"
local time = require "fm.time"

local function wait_gone(key, timeout)
  return helpers.wait_until(function() return kv.get(key) == nil end, timeout or 3, 0.02)
end

local backends = {
  { name = "memory", open = function() assert(kv.configure { backend = "memory" }) end },
  { name = "redis", open = function()
    local r = helpers.redis.start()
    assert(kv.configure { url = r.url, timeout_ms = 500, pool_size = 4 })
    return r
  end },
  { name = "redis with a password", open = function()
    local r = helpers.redis.start { password = "s3cret pw" }
    assert(kv.configure { url = ("redis://:%s@127.0.0.1:%d/3"):format("s3cret%20pw", r.port),
      timeout_ms = 500 })
    return r
  end },
}

for _, b in ipairs(backends) do
  describe("fm.kv on " .. b.name, function()
    lazy_setup(function() b.open() end)
    lazy_teardown(helpers.cleanup)

    it("reports its backend and answers ping", function()
      assert.equal(b.name == "memory" and "memory" or "redis", kv.backend())
      assert.is_true(kv.ping())
    end)

    it("gets, sets and deletes", function()
      assert.is_nil(kv.get("missing"))
      assert.is_true(kv.set("k1", "v1"))
      assert.equal("v1", kv.get("k1"))
      assert.is_true(kv.set("k1", "v2"))
      assert.equal("v2", kv.get("k1"))
      assert.is_true(kv.del("k1"))
      assert.is_false(kv.del("k1"))
      assert.is_nil(kv.get("k1"))
    end)

    it("keeps binary values and converts numbers to strings", function()
      local bin = "a\0b\255\r\n" .. string.rep("\0", 1000) .. "end"
      assert(kv.set("bin\0key", bin))
      assert.equal(bin, kv.get("bin\0key"))
      assert(kv.set(42, 3.5))
      assert.equal("3.5", kv.get("42"))
      assert(kv.set("big", string.rep("x", 200000)))
      assert.equal(200000, #kv.get("big"))
    end)

    it("expires keys after their TTL", function()
      assert(kv.set("short", "v", 0.2))
      local ttl = kv.ttl("short")
      assert.is_true(ttl > 0 and ttl <= 0.2, tostring(ttl))
      assert.equal("v", kv.get("short"))
      wait_gone("short")
      assert.equal(-2, kv.ttl("short"))
      assert(kv.set("forever", "v"))
      assert.equal(-1, kv.ttl("forever"))
      assert.is_true(kv.expire("forever", 0.2))
      assert.is_false(kv.expire("nobody", 1))
      wait_gone("forever")
    end)

    it("increments atomically, with a TTL set when the key is created", function()
      assert.equal(1, kv.incr("counter"))
      assert.equal(6, kv.incr("counter", 5))
      assert.equal(4, kv.incr("counter", -2))
      assert.equal(-1, kv.ttl("counter"), "no TTL asked")
      assert.equal(1, kv.incr("window", 1, 0.3))
      local t1 = kv.ttl("window")
      assert.is_true(t1 > 0 and t1 <= 0.3)
      time.sleep(0.1)
      assert.equal(2, kv.incr("window", 1, 10)) -- the TTL is the creator's
      assert.is_true(kv.ttl("window") <= 0.3)
      wait_gone("window")
      assert.equal(1, kv.incr("window", 1, 10))
      assert(kv.set("text", "abc"))
      local v, err, code = kv.incr("text")
      assert.is_nil(v)
      assert.equal("KV_NOT_INTEGER", code, err)
    end)

    it("raises on misuse", function()
      assert.has_error(function() kv.get({}) end)
      assert.has_error(function() kv.get("") end)
      assert.has_error(function() kv.set("k", {}) end)
      assert.has_error(function() kv.set("k", "v", 0) end)
      assert.has_error(function() kv.set("k", "v", -1) end)
      assert.has_error(function() kv.incr("k", 1.5) end)
      assert.has_error(function() kv.expire("k") end)
      assert.has_error(function() kv.eval("nope", {}, {}) end)
    end)

    it("counts operations in fm_kv_operations_total", function()
      local metrics = require "fm.metrics"
      local backend = kv.backend()
      local labels = { backend = backend, op = "get", result = "ok" }
      local before = metrics.get("fm_kv_operations_total", labels) or 0
      kv.get("x")
      assert.equal(before + 1, metrics.get("fm_kv_operations_total", labels))
    end)
  end)
end

describe("fm.kv on memory", function()
  lazy_teardown(helpers.cleanup)

  it("refuses scripts with a clear error", function()
    assert(kv.configure { backend = "memory" })
    kv.register_script("noop", "return 1")
    local ok, err = pcall(kv.eval, "noop", {}, {})
    assert.is_false(ok)
    assert.matches("scripts need Redis", err, 1, true)
  end)

  it("stays within KV_MEMORY_MAX_MB, evicting the oldest entries", function()
    assert(kv.configure { backend = "memory", memory_max_mb = 1 })
    local value = string.rep("v", 1000)
    for i = 1, 5000 do assert(kv.set("key" .. i, value)) end
    local s = kv.stats()
    assert.is_true(s.bytes <= 1024 * 1024, tostring(s.bytes))
    assert.is_true(s.evictions > 0)
    assert.equal(value, kv.get("key5000"))
    assert.is_nil(kv.get("key1"))
    local v, _, code = kv.set("huge", string.rep("x", 2 * 1024 * 1024))
    assert.is_nil(v)
    assert.equal("KV_TOO_LARGE", code)
  end)
end)

describe("fm.kv on redis", function()
  local r
  lazy_setup(function()
    r = helpers.redis.start()
    assert(kv.configure { url = r.url, timeout_ms = 500, pool_size = 2 })
  end)
  lazy_teardown(helpers.cleanup)

  it("runs registered scripts with EVALSHA, loading them again after SCRIPT FLUSH", function()
    kv.register_script("bump", [[
      local v = redis.call('INCRBY', KEYS[1], ARGV[1])
      return {v, ARGV[2], 'ok'}
    ]])
    assert.same({ 3, "tag", "ok" }, kv.eval("bump", { "sk" }, { 3, "tag" }))
    assert.same({ 5, "t", "ok" }, kv.eval("bump", { "sk" }, { 2, "t" }))
    assert(r:cli("SCRIPT", "FLUSH"))
    assert.same({ 6, "x", "ok" }, kv.eval("bump", { "sk" }, { 1, "x" }))
    kv.register_script("boom", "error('boom')")
    local v, err, code = kv.eval("boom", {}, {})
    assert.is_nil(v)
    assert.equal("KV_ERROR", code)
    assert.matches("boom", err, 1, true)
    kv.register_script("nil", "return nil")
    assert.is_nil(kv.eval("nil"))
  end)

  it("fails fast with KV_UNAVAILABLE while Redis is down, and recovers when it is back", function()
    assert(kv.set("before", "1"))
    r:stop(true)
    for _ = 1, 5 do
      local t0 = time.monotonic()
      local v, err, code = kv.get("before")
      assert.is_nil(v)
      assert.equal("KV_UNAVAILABLE", code, err)
      assert.is_true(time.monotonic() - t0 < 0.5, "within REDIS_TIMEOUT_MS")
      local ok, _, pcode = kv.ping()
      assert.is_nil(ok)
      assert.equal("KV_UNAVAILABLE", pcode)
    end
    r:restart()
    helpers.wait_until(function() return kv.set("after", "2") end, 5, 0.05)
    assert.equal("2", kv.get("after"))
    assert.is_nil(kv.get("before"), "a new, empty server")
    assert.is_true(kv.stats().reconnects >= 2)
  end)

  it("answers KV_TIMEOUT when Redis does not answer within REDIS_TIMEOUT_MS", function()
    assert(r:cli("CONFIG", "SET", "lua-time-limit", "100"))
    kv.register_script("spin", "while true do end")
    local t0 = time.monotonic()
    local v, err, code = kv.eval("spin", {}, {})
    local took = time.monotonic() - t0
    assert.is_nil(v)
    assert.equal("KV_TIMEOUT", code, err)
    assert.is_true(took >= 0.4 and took < 2, tostring(took))
    helpers.wait_until(function()
      local _, out = r:cli("SCRIPT", "KILL")
      return out and (out:match("OK") or out:match("NOTBUSY"))
    end, 5, 0.05)
    helpers.wait_until(function() return kv.set("after-spin", "1") end, 5, 0.05)
    assert.equal("1", kv.get("after-spin"))
  end)

  it("increments atomically from several processes", function()
    local dir = helpers.tmpdir("fm-kv-incr-")
    local script = dir .. "/incr.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
      local kv = require "fm.kv"
      assert(kv.configure { url = %q })
      for _ = 1, 200 do assert(kv.incr("shared")) end
    ]]):format(r.url))
    f:close()
    local procs = {}
    for i = 1, 4 do
      procs[i] = helpers.spawn({ argv = { helpers.bin(), "exec", script },
        env = { FM_HOME = helpers.root }, stdout = dir .. "/out" .. i,
        stderr = dir .. "/err" .. i })
    end
    for i = 1, 4 do
      local how, code = procs[i]:wait(60)
      assert.equal("exit", how)
      assert.equal(0, code, helpers.read_file(dir .. "/err" .. i))
    end
    assert.equal("800", kv.get("shared"))
  end)

  it("says why a wrong password fails", function()
    local pr = helpers.redis.start { password = "right" }
    assert(kv.configure { url = ("redis://:wrong@127.0.0.1:%d/0"):format(pr.port),
      timeout_ms = 500 })
    local v, err, code = kv.get("x")
    assert.is_nil(v)
    assert.equal("KV_UNAVAILABLE", code)
    assert.not_matches("wrong", err, 1, true)
    assert(kv.configure { url = r.url, timeout_ms = 500 })
  end)
end)

describe("the engine with fm.kv", function()
  lazy_teardown(helpers.cleanup)

  it("shows the kv component in /health on Redis, and serves through it", function()
    local r = helpers.redis.start { password = "pw" }
    local engine = helpers.engine.start { env = { REDIS_URL = r.url, FM_WORKERS = "2",
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.kv_routes" } }
    local h = assert(engine:get("/health")).json()
    assert.equal("healthy", h.components.kv.status)
    assert.equal("redis", h.components.kv.backend)
    assert.not_matches("pw@", h.components.kv.url, 1, true)
    local res = assert(engine:get("/test/kv/incr?key=hits"))
    assert.equal(200, res.status)
    assert.same({ value = 1, backend = "redis" }, res.json())
    local _, out = r:cli("GET", "hits")
    assert.matches("1", out, 1, true)
    r:stop(true)
    res = assert(engine:get("/test/kv/incr?key=hits"))
    assert.equal(503, res.status)
    assert.equal("KV_UNAVAILABLE", res.json().code)
    h = assert(engine:get("/health")).json()
    assert.equal("unhealthy", h.components.kv.status)
    r:restart()
    helpers.wait_until(function()
      return assert(engine:get("/test/kv/incr?key=hits")).status == 200
    end, 5, 0.05)
    local how, code = engine:stop()
    assert.equal("exit", how)
    assert.equal(0, code, engine:log_tail(40))
  end)

  it("uses the in-process store without REDIS_URL", function()
    local engine = helpers.engine.start { env = { FM_WORKERS = "2",
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.kv_routes" } }
    for i = 1, 3 do
      assert.same({ value = i, backend = "memory" },
        assert(engine:get("/test/kv/incr?key=n")).json())
    end
    local h = assert(engine:get("/health")).json()
    assert.equal("healthy", h.components.kv.status)
    assert.equal("memory", h.components.kv.backend)
    assert.equal(1, h.components.kv.entries)
    local m = assert(engine:get("/metrics")).body
    assert.matches('fm_kv_operations_total{backend="memory",op="incr",result="ok"} 3', m, 1, true)
    assert.matches("fm_kv_memory_entries", m, 1, true)
    assert.equal("exit", (engine:stop()))
  end)

  it("refuses REDIS_MODE=sentinel without REDIS_SENTINEL_HOSTS with a clear message", function()
    local dir = helpers.tmpdir("fm-kv-sentinel-")
    local p = helpers.spawn({ argv = { helpers.bin(), "serve" }, env = { REDIS_MODE = "sentinel",
      REDIS_HOST = "127.0.0.1", FM_DATA_DIR = dir, FM_PORT = "0", FM_HOME = helpers.root },
      stdout = dir .. "/out", stderr = dir .. "/err", cwd = helpers.root })
    local how, code = p:wait(30)
    assert.equal("exit", how)
    assert.is_not.equal(0, code)
    assert.matches("sentinel needs REDIS_SENTINEL_HOSTS", helpers.read_file(dir .. "/err"), 1,
      true)
  end)
end)
