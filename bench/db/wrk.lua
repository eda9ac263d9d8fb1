-- wrk script for bench/db/run.sh. Every request carries the bearer token; what is sent comes from
-- the environment (run.sh sets it):
--   FM_TOKEN   access token from POST /api/v1/auth/dev-login (required)
--   FM_METHOD  GET or POST (default GET)
--   FM_BODY    request body (sent with Content-Type: application/json when set)
-- The request is built once per thread (the same bytes every time). There is no response()
-- callback, so wrk does not hand every answer to Lua (that costs CPU that the server, sharing the
-- cores, would miss); a non-2xx answer >= 400 (401, 422, 500...) shows in err_status, and run.sh
-- checks one request of each kind with curl before measuring.
-- After wrk's --latency report, done() prints one machine-readable line that run.sh parses
-- (latencies in microseconds): the format of bench/http/report.lua.
local token = os.getenv("FM_TOKEN")
if not token or token == "" then error("bench/db/wrk.lua: FM_TOKEN is not set") end
wrk.method = os.getenv("FM_METHOD") or "GET"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Accept"] = "application/json"
local body = os.getenv("FM_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local req
init = function()
  req = wrk.format()
end
request = function()
  return req
end

done = function(summary, latency)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "FMBENCH requests=%d bytes=%d duration_s=%.3f rps=%.2f " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.bytes, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
