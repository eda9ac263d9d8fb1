-- Graceful shutdown: SIGTERM drains in-flight requests, stops accepting, reports not-ready and
-- exits 0; a second SIGTERM exits at once; the grace period bounds the drain.

local helpers = require "spec.helpers"
local http = helpers.http

-- True when a new TCP connection to the engine is refused (the listening socket is closed). A
-- connection accepted into a backlog that nobody serves any more does not count.
local function connect_refused(engine)
  local c, err = http.connect(engine.host, engine.port, { timeout = 0.5 })
  if c then
    c:close()
    return false
  end
  return err == "connection refused"
end

describe("shutdown", function()
  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("drains an in-flight request, refuses new work, exits 0", function()
    local engine = helpers.engine.start({ env = { FM_SHUTDOWN_GRACE_S = "10" } })

    local idle = engine:client()
    local res = assert(idle:request("GET", "/readiness"))
    assert.equal(200, res.status)

    local slow = engine:client()
    assert(slow:send_raw("GET /test/slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    local t_term = helpers.now()
    assert(engine:signal("TERM"))
    helpers.sleep(0.1)

    -- an open keep-alive connection either hears "not ready" or is closed
    local ready = idle:request("GET", "/readiness", { timeout = 2 })
    if ready then
      assert.equal(503, ready.status)
      assert.same({ status = "shutting_down" }, ready.json())
    else
      assert.is_true(idle:is_closed(1))
    end

    -- a new connection is refused soon, while the slow request is still running
    helpers.wait_until(function() return connect_refused(engine) end, 1.0)
    assert.is_true(helpers.now() - t_term < 1.4, "new connections still served while draining")
    assert.is_true(engine:alive(), "engine exited before draining the slow request")

    local done = assert(slow:read_response({ timeout = 5 }))
    assert.equal(200, done.status)
    assert.same({ slept_ms = 1500 }, done.json())

    local how, code = engine:wait(10)
    assert.equal("exit", how)
    assert.equal(0, code)
    assert.is_true(helpers.now() - t_term < 10)
    idle:close()
    slow:close()
  end)

  it("exits at once on a second SIGTERM while a request is in flight", function()
    local engine = helpers.engine.start({ env = { FM_SHUTDOWN_GRACE_S = "30" } })
    local slow = engine:client()
    assert(slow:send_raw("GET /test/slow?ms=8000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    local t0 = helpers.now()
    assert(engine:signal("TERM"))
    helpers.sleep(0.3)
    assert.is_true(engine:alive(), "the first SIGTERM did not wait for the slow request")
    assert(engine:signal("TERM"))
    local how = engine:wait(3)
    assert.truthy(how, "engine still running 3 s after the second SIGTERM")
    assert.is_true(helpers.now() - t0 < 4)
    slow:close()
  end)

  it("gives up on a request that outlives the grace period", function()
    local engine = helpers.engine.start({ env = { FM_SHUTDOWN_GRACE_S = "1" } })
    local slow = engine:client()
    assert(slow:send_raw("GET /test/slow?ms=8000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    local t0 = helpers.now()
    assert(engine:signal("TERM"))
    local how = engine:wait(5)
    assert.truthy(how, "engine still running 5 s after SIGTERM with a 1 s grace period")
    assert.is_true(helpers.now() - t0 < 5)
    slow:close()
  end)

  it("does not wait for idle keep-alive connections", function()
    local engine = helpers.engine.start({ env = { FM_SHUTDOWN_GRACE_S = "20" } })
    local idle = {}
    for i = 1, 3 do
      idle[i] = engine:client()
      assert.equal(200, assert(idle[i]:request("GET", "/")).status)
    end
    local t0 = helpers.now()
    local how, code = engine:stop("TERM", 20)
    assert.equal("exit", how)
    assert.equal(0, code)
    assert.is_true(helpers.now() - t0 < 3, ("exit took %.2fs"):format(helpers.now() - t0))
    for i = 1, 3 do
      assert.is_true(idle[i]:is_closed(1))
      idle[i]:close()
    end
  end)

  -- Requests keep arriving on open keep-alive connections while the engine drains: none may be
  -- dispatched after the drain completes (libmicrohttpd aborts when stopped with a suspended
  -- connection). curl processes give the concurrent load; three rounds because it is a race.
  it("exits 0 on SIGTERM under keep-alive load, answering late requests 503", function()
    for round = 1, 3 do
      local engine = helpers.engine.start({ env = { FM_SHUTDOWN_GRACE_S = "10" } })
      local dir = helpers.tmpdir("fm-load-")
      -- curl URL globbing: 3000 requests over one keep-alive connection per process
      local url = engine.url .. "/test/slow?ms=1&n=[1-3000]"
      local loaders = {}
      for i = 1, 4 do
        local argv = { "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", url }
        loaders[i] = helpers.spawn({ argv = argv, stdout = dir .. "/codes" .. i })
      end
      helpers.sleep(0.4)
      local how, code = engine:stop("TERM", 15)
      assert.same({ "exit", 0 }, { how, code }, "round " .. round .. ": " .. engine:log():sub(-600))
      for i = 1, 4 do
        loaders[i]:wait(10)
        local codes = helpers.read_file(dir .. "/codes" .. i) or ""
        for c in codes:gmatch("%d+") do
          assert.truthy(c == "200" or c == "503" or c == "000", "round " .. round .. ": got " .. c)
        end
      end
    end
  end)

  it("exits 0 on SIGTERM when idle and on SIGINT", function()
    local a = helpers.engine.start()
    assert.same({ "exit", 0 }, { a:stop("TERM", 10) })
    local b = helpers.engine.start()
    assert.same({ "exit", 0 }, { b:stop("INT", 10) })
  end)
end)
