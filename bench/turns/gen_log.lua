-- Writes a synthetic application log of exactly BYTES bytes (default 10,000,000) to PATH: a
-- Spring-style service log, mostly INFO request lines with WARN and ERROR lines and a few Java
-- stack traces (about 1 % errors, a connection-pool incident in the last tenth), seeded so every
-- run writes the same bytes. The first line is a fixed-width header (`# bench-turns 0000 ...`)
-- that bench/turns/run.sh rewrites per turn, so every upload has different content.
--
--   faultmaven exec bench/turns/gen_log.lua PATH [BYTES]
local path = assert(arg[1], "usage: gen_log.lua PATH [BYTES]")
local bytes = math.tointeger(tonumber(arg[2] or "10000000")) or 10000000

math.randomseed(42)
local rnd = math.random
local out = assert(io.open(path, "wb"))
local header = "# bench-turns 0000 synthetic service log for bench/turns/run.sh\n"
out:write(header)
local size = #header

local paths = { "/api/v1/orders", "/api/v1/orders/%d", "/api/v1/cart", "/api/v1/search",
                "/api/v1/users/%d", "/api/v1/payments/%d", "/health", "/api/v1/inventory/%d" }
local threads = { "http-nio-8080-exec-%d", "scheduling-1", "kafka-consumer-%d", "main" }
local t = os.time({ year = 2026, month = 11, day = 22, hour = 0, min = 0, sec = 0 })
local ms = 0
local stack = {
  "org.springframework.jdbc.CannotGetJdbcConnectionException: Failed to obtain JDBC Connection",
  "\tat org.springframework.jdbc.datasource.DataSourceUtils.getConnection(DataSourceUtils.java:84)",
  "\tat com.acme.orders.repo.OrderRepository.find(OrderRepository.java:41)",
  "\tat com.acme.orders.api.OrderController.get(OrderController.java:58)",
  "Caused by: java.sql.SQLTransientConnectionException: HikariPool-1 - Connection is not "
    .. "available, request timed out after 30000ms.",
  "\tat com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)",
}

local function stamp()
  ms = ms + rnd(1, 40)
  if ms >= 1000 then t = t + ms // 1000; ms = ms % 1000 end
  return os.date("!%Y-%m-%dT%H:%M:%S", t) .. string.format(".%03dZ", ms)
end

local buf = {}
while size < bytes do
  local line
  local th = string.format(threads[rnd(#threads)], rnd(1, 200))
  local r = rnd()
  local late = size > bytes * 0.9
  if r < (late and 0.05 or 0.005) then
    line = string.format("%s ERROR 1 --- [%s] c.a.orders.web.ErrorHandler : GET %s -> 500\n",
      stamp(), th, string.format(paths[rnd(#paths)], rnd(1000, 99999)))
      .. table.concat(stack, "\n") .. "\n"
  elseif r < 0.03 then
    line = string.format("%s WARN  1 --- [%s] c.a.orders.client.PaymentClient : slow call to "
      .. "payments: %d ms (attempt %d)\n", stamp(), th, rnd(1000, 9000), rnd(1, 3))
  else
    local p = string.format(paths[rnd(#paths)], rnd(1000, 99999))
    line = string.format("%s INFO  1 --- [%s] c.a.orders.web.AccessLog : %s %s %d %d ms "
      .. "user=u_%d trace=%08x%08x\n", stamp(), th, rnd() < 0.8 and "GET" or "POST", p,
      rnd() < 0.97 and 200 or 404, rnd(2, 250), rnd(1, 500000), rnd(0, 0x7fffffff),
      rnd(0, 0x7fffffff))
  end
  if size + #line > bytes then line = string.rep("#", bytes - size - 1) .. "\n" end
  buf[#buf + 1] = line
  size = size + #line
  if #buf >= 4096 then out:write(table.concat(buf)); buf = {} end
end
out:write(table.concat(buf))
out:close()
