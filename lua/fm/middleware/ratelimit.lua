-- Rate limiting (ARCHITECTURE section 7): a token bucket per client and class of request.
--
-- Client: the user when the request carries a valid access token (its `sub`), else the client
-- address: the socket's peer, or, when the peer is one of FM_TRUSTED_PROXIES, the right-most
-- X-Forwarded-For entry that is not a trusted proxy.
-- Class: "read" (GET, HEAD), "turn" (POST /api/v1/cases/{id}/turns), "write" (anything else):
-- separate buckets, so a client polling cannot starve its own turns.
-- Bucket: capacity RATE_LIMIT_BURST_SIZE tokens, refilled at RATE_LIMIT_REQUESTS_PER_MINUTE / 60
-- tokens a second; a request takes one token or is answered 429. A client idle long enough may
-- send BURST requests at once, then one every 60 / RATE seconds.
-- Backend: one Redis script (atomic, with Redis's clock, so replicas share one limit) when the
-- kv store is Redis; the in-process table of engine/ratelimit.c otherwise, and as the fallback
-- (fail open: the request is still limited, by this process only) while Redis fails.
-- Headers on every answer the limiter saw (allowed or not):
--   X-RateLimit-Limit      the bucket's capacity (RATE_LIMIT_BURST_SIZE)
--   X-RateLimit-Remaining  whole tokens left after this request
--   X-RateLimit-Reset      seconds (integer, rounded up) until the bucket is full again
--   Retry-After            on 429 only: seconds (integer, rounded up, >= 1) until one token
-- Exempt: /health, /health/*, /readiness, /metrics and every OPTIONS request.
local core = require "fm.ratelimit_core"
local kv = require "fm.kv"
local log = require "fm.log"
local metrics = require "fm.metrics"
local settings = require "fm.settings"

local enabled = settings.rate_limit_enabled
local rate = settings.rate_limit_requests_per_minute / 60 -- tokens a second
local capacity = settings.rate_limit_burst_size
local trusted = settings.trusted_proxies

metrics.register("fm_ratelimit_decisions_total", "counter",
  "Rate-limit decisions by result (allowed, limited) and backend (redis, memory).")
metrics.register("fm_ratelimit_fallback_total", "counter",
  "Rate-limit checks decided in-process because Redis failed.")

local SCRIPT_NAME = "fm_ratelimit_v1"
-- KEYS[1] the bucket (a hash: tk = tokens, ts = ms of the last update); ARGV rate (tokens a
-- second), capacity. Returns {allowed 0|1, tokens left as a string}.
local SCRIPT = [[
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens, ts = tonumber(h[1]), tonumber(h[2])
if tokens == nil or ts == nil then tokens, ts = cap, now end
if now > ts then tokens = tokens + (now - ts) / 1000 * rate end
if tokens > cap then tokens = cap end
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tk', string.format('%.6f', tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.6f', tokens)}
]]
kv.register_script(SCRIPT_NAME, SCRIPT)

local EXEMPT = { ["/health"] = true, ["/readiness"] = true, ["/metrics"] = true }

local function exempt(req)
  local p = req.path
  return req.method == "OPTIONS" or EXEMPT[p] or p:sub(1, 8) == "/health/"
end

local function class_of(req)
  local m = req.method
  if m == "GET" or m == "HEAD" then return "read" end
  if m == "POST" and req.path:match("^/api/v1/cases/[^/]+/turns/?$") then return "turn" end
  return "write"
end

local function is_trusted(addr)
  for i = 1, #trusted do
    if core.addr_in(addr, trusted[i]) then return true end
  end
  return false
end

--- The client address of req (see the header comment).
local function client_addr(req)
  local addr = req.remote_addr or "unknown"
  if #trusted == 0 or not is_trusted(addr) then return addr end
  local xff = req.headers["x-forwarded-for"]
  if not xff then return addr end
  local hops = {}
  for item in xff:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then hops[#hops + 1] = item end
  end
  for i = #hops, 1, -1 do
    if not is_trusted(hops[i]) then return hops[i]:sub(1, 64) end
  end
  return hops[1] and hops[1]:sub(1, 64) or addr
end

-- The user of a valid bearer access token, or nil (no database: signature and claims only; the
-- verified claims stay on req for auth.authenticate).
local auth
local function user_of(req)
  auth = auth or require "fm.services.auth"
  local vok, claims = pcall(auth.bearer_claims, req)
  local sub = vok and type(claims) == "table" and claims.sub
  if type(sub) ~= "string" and type(sub) ~= "number" then return nil end
  return tostring(sub):sub(1, 128)
end

local function take_redis(key)
  local res, err, code = kv.eval(SCRIPT_NAME, { key }, { rate, capacity })
  if type(res) == "table" and res[1] ~= nil then
    return res[1] == 1, tonumber(res[2]) or 0, "redis"
  end
  metrics.inc("fm_ratelimit_fallback_total")
  if core.log_gate(10) then
    log.warn("rate limiter: Redis failed, limiting in-process (fail open)",
      { error = tostring(err), code = code })
  end
  return nil
end

-- The store is opened after generation 1 is checked: ask on first use.
local use_redis

--- Takes a token for key: allowed, tokens left, backend name.
local function take(key)
  if use_redis == nil then
    local ok, backend = pcall(kv.backend)
    if not ok then
      local allowed, tokens = core.take(key, rate, capacity)
      return allowed, tokens, "memory"
    end
    use_redis = backend == "redis"
  end
  if use_redis then
    local allowed, tokens, backend = take_redis(key)
    if allowed ~= nil then return allowed, tokens, backend end
  end
  local allowed, tokens = core.take(key, rate, capacity)
  return allowed, tokens, "memory"
end

local function add_headers(h, hdrs)
  for k, v in pairs(hdrs) do
    if h[k] == nil then h[k] = v end
  end
  return h
end

local on_errors = require "fm.middleware.errors"

return function(req, nxt)
  if not enabled or exempt(req) then return nxt(req) end
  local cls = class_of(req)
  local user = user_of(req)
  local id = user and ("u:" .. user) or ("ip:" .. client_addr(req))
  local allowed, tokens, backend = take("fm:rl:" .. cls .. ":" .. id)
  metrics.inc("fm_ratelimit_decisions_total",
    { result = allowed and "allowed" or "limited", backend = backend })
  local hdrs = {
    ["X-RateLimit-Limit"] = tostring(capacity),
    ["X-RateLimit-Remaining"] = tostring(math.floor(tokens)),
    ["X-RateLimit-Reset"] = tostring(math.ceil(math.max(0, capacity - tokens) / rate - 1e-9)),
  }
  if not allowed then
    local wait = math.max(1, math.ceil((1 - tokens) / rate - 1e-9))
    hdrs["Retry-After"] = tostring(wait)
    return 429, {
      error = "rate_limit_exceeded",
      message = ("too many requests: %d a minute, bursts of %d (%s); retry in %d s"):format(
        settings.rate_limit_requests_per_minute, capacity, cls, wait),
    }, hdrs
  end
  -- the error middleware once more inside: an error answer (4xx raised, 500) gets the headers
  local status, body, headers = on_errors(req, nxt)
  return status, body, add_headers(headers or {}, hdrs)
end
