-- Rate limiting (ARCHITECTURE section 7, lua/fm/middleware/ratelimit.lua, engine/ratelimit.c):
-- token buckets per client and class, the headers and the 429, exemptions, X-Forwarded-For from
-- trusted proxies only, one limit shared through Redis, and the in-process fallback.
--
-- helpers.engine.start turns the limiter off by default (RATE_LIMIT_ENABLED=false): these
-- engines turn it on.

local helpers = require "spec.helpers"

local function on(extra)
  local env = { RATE_LIMIT_ENABLED = "true", RATE_LIMIT_REQUESTS_PER_MINUTE = "60",
    RATE_LIMIT_BURST_SIZE = "5", FM_WORKERS = "2" }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function metric(engine, pattern)
  local res = assert(engine:get("/metrics"))
  local total = 0
  for line in res.body:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" and line:find(pattern, 1, true) then
      total = total + (tonumber(line:match("(%S+)$")) or 0)
    end
  end
  return total
end

describe("rate limiting (in-process)", function()
  local engine, plain
  lazy_setup(function()
    engine = helpers.engine.start({ env = on({ FM_TRUSTED_PROXIES = "127.0.0.1/32, ::1" }) })
    plain = helpers.engine.start({ env = on() })
  end)
  lazy_teardown(helpers.cleanup)

  local function get(path, client, e)
    return assert((e or engine):get(path, { headers = { ["X-Forwarded-For"] = client } }))
  end

  it("sends the headers, allows a burst, then 429 with Retry-After, and refills", function()
    local c = "203.0.113.1"
    for i = 1, 5 do
      local r = get("/", c)
      assert.equal(200, r.status, r.body)
      assert.equal("5", r.headers["x-ratelimit-limit"])
      assert.equal(tostring(5 - i), r.headers["x-ratelimit-remaining"])
      -- seconds until full again: i tokens spent at 1 a second
      local reset = tonumber(r.headers["x-ratelimit-reset"])
      assert.is_true(reset == i or reset == i - 1, r.headers["x-ratelimit-reset"])
      assert.is_nil(r.headers["retry-after"])
    end
    local r = get("/", c)
    assert.equal(429, r.status)
    assert.equal("1", r.headers["retry-after"])
    assert.equal("0", r.headers["x-ratelimit-remaining"])
    assert.equal("5", r.headers["x-ratelimit-limit"])
    assert.equal("5", r.headers["x-ratelimit-reset"])
    local body = r.json()
    assert.equal("rate_limit_exceeded", body.error)
    assert.equal("string", type(body.message))
    local n = 0
    for _ in pairs(body) do n = n + 1 end
    assert.equal(2, n)
    assert.matches("application/json", r.headers["content-type"])
    -- CORS exposes the headers to an extension
    local x = assert(engine:get("/", { headers = { ["X-Forwarded-For"] = c,
      Origin = "chrome-extension://abcdef" } }))
    assert.equal(429, x.status)
    assert.matches("X%-RateLimit%-Remaining", x.headers["access-control-expose-headers"])
    assert.matches("Retry%-After", x.headers["access-control-expose-headers"])
    -- one token a second
    helpers.sleep(1.1)
    r = get("/", c)
    assert.equal(200, r.status)
    if r.headers["x-ratelimit-remaining"] == "0" then assert.equal(429, get("/", c).status) end
  end)

  it("keeps reads, turns and other writes in separate buckets", function()
    local c = "203.0.113.2"
    for _ = 1, 5 do assert.equal(200, get("/", c).status) end
    assert.equal(429, get("/", c).status)
    local w = assert(engine:post("/test/echo", { body = "x",
      headers = { ["X-Forwarded-For"] = c } }))
    assert.equal(200, w.status)
    assert.equal("4", w.headers["x-ratelimit-remaining"])
    local t = assert(engine:post("/api/v1/cases/abc/turns", { body = "{}",
      headers = { ["X-Forwarded-For"] = c, ["Content-Type"] = "application/json" } }))
    assert.is_not.equal(429, t.status)
    assert.equal("4", t.headers["x-ratelimit-remaining"])
    -- the turn bucket is its own: writes used one, turns one
    w = assert(engine:post("/test/echo", { body = "x", headers = { ["X-Forwarded-For"] = c } }))
    assert.equal("3", w.headers["x-ratelimit-remaining"])
  end)

  it("exempts health, readiness, metrics and preflights", function()
    local c = "203.0.113.3"
    for _ = 1, 5 do get("/", c) end
    assert.equal(429, get("/", c).status)
    for _ = 1, 8 do
      for _, p in ipairs({ "/health", "/health/live", "/readiness", "/metrics" }) do
        local r = get(p, c)
        assert.equal(200, r.status, p)
        assert.is_nil(r.headers["x-ratelimit-limit"], p)
      end
      local o = assert(engine:request("OPTIONS", "/api/v1/cases", { headers = {
        ["X-Forwarded-For"] = c, Origin = "chrome-extension://abcdef",
        ["Access-Control-Request-Method"] = "POST" } }))
      assert.equal(204, o.status)
    end
  end)

  it("honours X-Forwarded-For only from a trusted proxy", function()
    -- trusted peer: the right-most untrusted entry is the client
    for _ = 1, 5 do assert.equal(200, get("/", "198.51.100.7, 127.0.0.1").status) end
    assert.equal(429, get("/", "10.9.9.9, 198.51.100.7").status) -- same client, spoofed left
    assert.equal(200, get("/", "198.51.100.8").status)         -- another client
    -- untrusted peer: the header is ignored, every "client" is 127.0.0.1
    for i = 1, 5 do assert.equal(200, get("/", "192.0.2." .. i, plain).status) end
    local r = get("/", "192.0.2.99", plain)
    assert.equal(429, r.status)
  end)

  it("puts the headers on error answers too, and keeps errors intact", function()
    local c = "203.0.113.4"
    local r = get("/test/raise_http", c)
    assert.is_true(r.status >= 400 and r.status < 500, tostring(r.status))
    assert.equal("4", r.headers["x-ratelimit-remaining"])
    r = get("/test/error", c)
    assert.equal(500, r.status)
    assert.equal("internal error", r.json().detail)
    assert.equal("3", r.headers["x-ratelimit-remaining"])
    r = get("/no/such/path", c)
    assert.equal(404, r.status)
    assert.equal("2", r.headers["x-ratelimit-remaining"])
  end)

  it("limits a signed-in user by user, not by address", function()
    local c = "203.0.113.5"
    local login = assert(engine:post("/api/v1/auth/dev-login", { json = { username = "rl-user" },
      headers = { ["X-Forwarded-For"] = "203.0.113.50" } }))
    assert.equal(200, login.status, login.body)
    local token = login.json().access_token
    for _ = 1, 5 do assert.equal(200, get("/", c).status) end
    assert.equal(429, get("/", c).status)
    local auth = { ["X-Forwarded-For"] = c, Authorization = "Bearer " .. token }
    local r = assert(engine:get("/", { headers = auth }))
    assert.equal(200, r.status)
    assert.equal("4", r.headers["x-ratelimit-remaining"])
    -- the same user from another address: the same bucket
    r = assert(engine:get("/", { headers = { ["X-Forwarded-For"] = "203.0.113.6",
      Authorization = "Bearer " .. token } }))
    assert.equal("3", r.headers["x-ratelimit-remaining"])
    -- a forged token is no user: the address's bucket
    r = assert(engine:get("/", { headers = { ["X-Forwarded-For"] = c,
      Authorization = "Bearer " .. token:sub(1, -3) .. "xx" } }))
    assert.equal(429, r.status)
  end)

  it("counts decisions", function()
    assert.is_true(metric(engine, 'result="limited"') >= 1)
    assert.is_true(metric(engine, 'fm_ratelimit_decisions_total{') >= 10)
    assert.equal(0, metric(engine, "fm_ratelimit_fallback_total"))
  end)
end)

describe("rate limiting (Redis)", function()
  local redis, a, b
  lazy_setup(function()
    redis = helpers.redis.start()
    -- 6 a minute: no token comes back while the spec runs
    local env = on({ REDIS_URL = redis.url, RATE_LIMIT_REQUESTS_PER_MINUTE = "6",
      REDIS_TIMEOUT_MS = "500" })
    a = helpers.engine.start({ env = env })
    b = helpers.engine.start({ env = env })
  end)
  lazy_teardown(helpers.cleanup)

  it("two engines sharing one Redis enforce one combined limit", function()
    local allowed, limited = 0, 0
    for i = 1, 10 do
      local r = assert((i % 2 == 0 and a or b):get("/"))
      if r.status == 200 then allowed = allowed + 1 else
        assert.equal(429, r.status)
        local wait = tonumber(r.headers["retry-after"]) -- 0.1 token a second
        assert.is_true(wait >= 9 and wait <= 10, r.headers["retry-after"])
        limited = limited + 1
      end
    end
    assert.equal(5, allowed)
    assert.equal(5, limited)
    assert.is_true(metric(a, 'backend="redis"') >= 5)
    local _, out = redis:cli("KEYS", "fm:rl:*")
    assert.matches("fm:rl:read:ip:127.0.0.1", out)
    local _, ttl = redis:cli("PTTL", "fm:rl:read:ip:127.0.0.1")
    assert.is_true(tonumber(ttl:match("%-?%d+")) > 0, ttl)
  end)

  it("falls back to in-process limits when Redis is down (fail open, counted)", function()
    redis:stop(true)
    for _ = 1, 5 do
      local r = assert(a:get("/"))
      assert.equal(200, r.status, r.body)
    end
    local r = assert(a:get("/"))
    assert.equal(429, r.status)
    assert.is_true(metric(a, "fm_ratelimit_fallback_total") >= 6)
    assert.is_true(metric(a, 'backend="memory"') >= 6)
    a:wait_log(function(e) return e.msg and e.msg:match("rate limiter: Redis failed") end)
  end)
end)
