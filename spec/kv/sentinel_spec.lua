-- fm.kv on Redis Sentinel (REDIS_MODE=sentinel): the master found through the sentinels, a
-- failover (the master killed with SIGKILL, or a manual SENTINEL FAILOVER) followed without a
-- restart, in `faultmaven exec` and in an engine serving a KV-backed route.
local helpers = require "spec.helpers"
local kv = require "fm.kv"
local time = require "fm.time"

-- Polls fn until it returns a truthy value; returns the seconds it took and the failures seen.
local function until_ok(fn, timeout_s)
  local t0, fails, last = time.monotonic(), 0, nil
  while true do
    local ok, err, code = fn()
    if ok then return time.monotonic() - t0, fails, last end
    fails = fails + 1
    last = tostring(code) .. ": " .. tostring(err)
    assert(time.monotonic() - t0 < timeout_s, "still failing after " .. timeout_s .. " s: " .. last)
    time.sleep(0.02)
  end
end

describe("fm.kv on Redis Sentinel", function()
  local st
  lazy_setup(function()
    st = helpers.redis.sentinel_setup { replicas = 2 }
    assert(kv.configure { mode = "sentinel", sentinels = st.hosts, timeout_ms = 500,
      pool_size = 4 })
  end)
  lazy_teardown(helpers.cleanup)

  it("finds the master through the sentinels, and gets, sets and increments there", function()
    assert.equal("redis", kv.backend())
    assert.is_true(kv.ping())
    assert.is_true(kv.set("s1", "v1"))
    assert.equal("v1", kv.get("s1"))
    assert.equal(1, kv.incr("scount"))
    assert.equal(3, kv.incr("scount", 2))
    local _, out = st.master:cli("GET", "s1")
    assert.matches("v1", out, 1, true)
    assert.matches("^redis%-sentinel://127%.0%.0%.1:%d+,", kv.stats().url)
  end)

  it("skips a sentinel that does not answer, and says when none knows the master set", function()
    local dead = "127.0.0.1:" .. helpers.free_port()
    assert(kv.configure { mode = "sentinel", sentinels = { dead, st.hosts }, timeout_ms = 500 })
    assert.equal("v1", kv.get("s1"))
    assert(kv.configure { mode = "sentinel", sentinels = st.hosts, master_set = "nope",
      timeout_ms = 500 })
    local v, err, code = kv.get("s1")
    assert.is_nil(v)
    assert.equal("KV_UNAVAILABLE", code)
    assert.matches("no master for 'nope'", err, 1, true)
    assert.has_error(function() kv.configure { mode = "sentinel", timeout_ms = 500 } end)
    assert(kv.configure { mode = "sentinel", sentinels = st.hosts, timeout_ms = 500,
      pool_size = 4 })
  end)

  it("moves writes to the new master after the master is killed, without a restart", function()
    for i = 1, 20 do assert(kv.set("pre" .. i, tostring(i))) end
    local before = assert(kv.incr("scount"))
    assert(st:wait_settled(15):cli("WAIT", "1", "2000"))
    local t0 = time.monotonic()
    st:kill_master()
    local took, fails, last = until_ok(function() return kv.set("during", "x") end, 20)
    print(("\n  master killed: writes failed for %.2f s (%d failed attempts, last %s)")
      :format(took, fails, tostring(last)))
    assert.is_true(took < 15, tostring(took))
    local new = st:wait_new_master(5)
    local _, out = new:cli("GET", "during")
    assert.matches("x", out, 1, true)
    for i = 1, 20 do assert.equal(tostring(i), kv.get("pre" .. i)) end
    assert.equal(before + 1, kv.incr("scount"))
    assert.equal(1, kv.incr("window", 1, 10)) -- the pipelined SET NX + INCRBY
    assert.is_true(time.monotonic() - t0 < 20)
  end)
  it("follows a manual failover while the old master still answers", function()
    assert(st:wait_settled(15))
    assert.is_true(kv.set("before-manual", "m"))
    local _, old = st:master_addr()
    assert(st:sentinel_cli(1, "SENTINEL", "FAILOVER", st.master_set))
    local t0 = time.monotonic()
    -- every sentinel names the new master
    local port = helpers.wait_until(function()
      local p
      for i = 1, #st.sentinels do
        local ok, out = st:sentinel_cli(i, "SENTINEL", "get-master-addr-by-name", st.master_set)
        local sp = tonumber((ok and out or ""):match("\n(%d+)"))
        if not sp or sp == old or (p and sp ~= p) then return nil end
        p = sp
      end
      return p
    end, 15, 0.05)
    local switched = time.monotonic() - t0
    -- Sentinel demotes the old master only seconds later: meanwhile it accepts writes. The
    -- engine asks the sentinels again about once a second, so its writes move within ~1 s.
    local new = st:server_on(port)
    local took = until_ok(function()
      assert(kv.set("after-manual", "a"))
      local _, out = new:cli("GET", "after-manual")
      return out:match("a")
    end, 5)
    print(("\n  manual failover: sentinels switched after %.2f s; writes on the new master %.2f s "
      .. "later"):format(switched, took))
    assert.is_true(took < 2.5, tostring(took))
    assert.equal("m", kv.get("before-manual"))
  end)
end)

describe("the engine on Redis Sentinel", function()
  lazy_teardown(helpers.cleanup)

  it("keeps a KV-backed route and its sessions through a failover, with passwords", function()
    local st = helpers.redis.sentinel_setup { password = "data pw", sentinel_password = "sen pw" }
    local engine = helpers.engine.start { env = { REDIS_MODE = "sentinel",
      REDIS_SENTINEL_HOSTS = st.hosts, REDIS_PASSWORD = "data pw",
      REDIS_SENTINEL_PASSWORD = "sen pw", REDIS_TIMEOUT_MS = "500", FM_WORKERS = "2",
      RATE_LIMIT_ENABLED = "true", RATE_LIMIT_REQUESTS_PER_MINUTE = "60000",
      RATE_LIMIT_BURST_SIZE = "1000",
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.kv_routes" } }
    local h = assert(engine:get("/health")).json()
    assert.equal("healthy", h.components.kv.status)
    assert.matches("redis-sentinel://", h.components.kv.url, 1, true)
    assert.not_matches("pw", h.components.kv.url, 1, true)
    for i = 1, 3 do
      assert.same({ value = i, backend = "redis" },
        assert(engine:get("/test/kv/incr?key=hits")).json())
    end
    -- a client session made before the failover
    local login = assert(engine:request("POST", "/api/v1/auth/dev-login",
      { json = { username = "failover" } }))
    assert.equal(200, login.status, login.body)
    local token = login.json().access_token
    local auth = { Authorization = "Bearer " .. token }
    local made = assert(engine:request("POST", "/api/v1/sessions",
      { headers = auth, json = { client_id = "before-failover" } }))
    assert.equal(201, made.status, made.body)
    local sid = made.json().session_id
    assert(st.master:cli("WAIT", "1", "2000"))
    st:kill_master()
    local codes, unlimited = {}, 0
    local took = until_ok(function()
      local res = engine:get("/test/kv/incr?key=hits")
      if res and not res.headers["x-ratelimit-limit"] then unlimited = unlimited + 1 end
      if res and res.status == 200 then return res.json() end
      local code = res and res.json and (res.json() or {}).code or tostring(res and res.status)
      codes[#codes + 1] = code
      return nil, "status " .. tostring(res and res.status), code
    end, 20)
    print(("\n  engine: the route failed for %.2f s (%d requests, codes %s)")
      :format(took, #codes, table.concat(codes, ",", 1, math.min(#codes, 5))))
    for _, c in ipairs(codes) do assert.equal("KV_UNAVAILABLE", c) end
    -- every answer during the failover was still rate limited (in-process while Redis failed)
    assert.equal(0, unlimited)
    -- the value written before the failover was replicated: the count goes on
    assert.equal(5, assert(engine:get("/test/kv/incr?key=hits")).json().value)
    -- the session made before the failover is still valid, and resumes by client_id
    local got = assert(engine:request("GET", "/api/v1/sessions/" .. sid, { headers = auth }))
    assert.equal(200, got.status, got.body)
    assert.equal(sid, got.json().session_id)
    local hb = assert(engine:request("POST", "/api/v1/sessions/" .. sid .. "/heartbeat",
      { headers = auth }))
    assert.equal(200, hb.status, hb.body)
    local again = assert(engine:request("POST", "/api/v1/sessions",
      { headers = auth, json = { client_id = "before-failover" } }))
    assert.equal(sid, again.json().session_id, again.body)
    assert.is_true(again.json().session_resumed)
    local new = st:wait_new_master(5)
    local _, out = new:cli("GET", "hits")
    assert.matches("5", out, 1, true)
    -- and the limiter is back on Redis: its buckets live on the new master
    local res = assert(engine:get("/test/kv/incr?key=hits"))
    assert.is_truthy(res.headers["x-ratelimit-remaining"])
    _, out = new:cli("--scan", "--pattern", "fm:rl:*")
    assert.matches("fm:rl:", out, 1, true)
    h = assert(engine:get("/health")).json()
    assert.equal("healthy", h.components.kv.status)
    local how, code = engine:stop()
    assert.equal("exit", how)
    assert.equal(0, code, engine:log_tail(40))
  end)
end)
