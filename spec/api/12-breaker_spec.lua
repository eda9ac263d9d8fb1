-- Circuit breakers (ARCHITECTURE section 7, engine/breaker.c, lua/fm/breaker.lua): fm.http calls
-- made by an engine's workers (spec/fixtures/lua/fm_test/breaker_routes.lua) against a scriptable
-- upstream (spec/fixtures/breaker_upstream.lua) that counts what reaches it.

local helpers = require "spec.helpers"
local json = require "fm.json"

local THRESHOLD = 3
local RESET_S = 1

local function enc(s)
  return (s:gsub("[^%w%-._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

describe("circuit breakers", function()
  local engine, upstream_port, upstream_url

  local function ctl(path)
    local c = assert(helpers.http.connect("127.0.0.1", upstream_port, { timeout = 5 }))
    local res = assert(c:request("GET", path))
    c:close()
    return json.decode(res.body)
  end
  local function count() return ctl("/_ctl/count").count end
  local function mode(status, delay_ms)
    ctl(("/_ctl/mode?status=%d&delay_ms=%d"):format(status, delay_ms or 0))
    ctl("/_ctl/reset")
  end

  local function call_path(name, opts)
    opts = opts or {}
    local p = "/test/breaker/call?url=" .. enc(upstream_url .. "/x") .. "&timeout="
      .. tostring(opts.timeout or 5)
    if name then p = p .. "&name=" .. enc(name) end
    if opts.off then p = p .. "&off=1" end
    return p
  end
  local function call(name, opts)
    return assert(engine:get(call_path(name, opts)))
  end
  local function state(name)
    return assert(engine:get("/test/breaker/state?name=" .. enc(name))).json()
  end

  -- Sends the same call n times at once on n connections; returns the responses.
  local function concurrent(n, name, opts)
    local conns = {}
    for i = 1, n do
      conns[i] = assert(helpers.http.connect("127.0.0.1", engine.port, { timeout = 10 }))
      assert(conns[i]:send_raw(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n"):format(
        call_path(name, opts))))
    end
    local out = {}
    for i = 1, n do
      out[i] = assert(conns[i]:read_response())
      conns[i]:close()
    end
    return out
  end

  local function open_breaker(name)
    mode(500)
    for _ = 1, THRESHOLD do
      local res = call(name)
      assert.equal(200, res.status)
      assert.equal(500, res.json().status)
    end
    assert.equal("open", state(name).state)
    assert.equal(THRESHOLD, count())
  end

  lazy_setup(function()
    upstream_port = helpers.free_port()
    upstream_url = ("http://127.0.0.1:%d"):format(upstream_port)
    local dir = helpers.tmpdir("fm-upstream-")
    helpers.spawn({
      argv = { helpers.bin(), "exec", helpers.root .. "/spec/fixtures/breaker_upstream.lua",
        tostring(upstream_port) },
      stdout = dir .. "/log", stderr = dir .. "/log", cwd = helpers.root,
    })
    helpers.wait_until(function() return pcall(count) end, 10)
    engine = helpers.engine.start({ env = {
      FM_WORKERS = "4",
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.breaker_routes",
      CIRCUIT_BREAKER_FAIL_THRESHOLD = tostring(THRESHOLD),
      CIRCUIT_BREAKER_RESET_TIMEOUT = tostring(RESET_S),
    } })
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("opens after the threshold of 5xx and then answers at once without a request", function()
    open_breaker("t-open")
    local res = call("t-open")
    assert.equal(503, res.status)
    assert.equal('{"error":"service_unavailable","message":"t-open temporarily unavailable"}',
      res.body)
    assert.equal("1", res.headers["retry-after"])
    assert.is_true(tonumber(res.headers["x-call-ms"]) < 50, res.headers["x-call-ms"])
    assert.equal(THRESHOLD, count()) -- the upstream saw nothing
    local st = state("t-open")
    assert.equal(THRESHOLD, st.failures)
    assert.is_true(st.retry_in > 0 and st.retry_in <= RESET_S)
    assert.is_number(st.opened_at)
    -- metrics and the log
    local metrics = assert(engine:get("/metrics")).body
    assert.truthy(metrics:find('fm_breaker_state{dependency="t-open"} 2', 1, true), metrics)
    assert.truthy(metrics:find(
      'fm_breaker_transitions_total{dependency="t-open",from="closed",to="open"} 1', 1, true))
    engine:wait_log(function(e)
      return e.msg == "circuit breaker opened" and e.dependency == "t-open" and e.level == "warn"
    end)
  end)

  it("lets one probe through after the reset timeout and closes on its success", function()
    open_breaker("t-probe")
    mode(200)
    helpers.sleep(RESET_S + 0.1)
    local res = call("t-probe")
    assert.equal(200, res.status)
    assert.equal(200, res.json().status)
    assert.equal(1, count())
    local st = state("t-probe")
    assert.equal("closed", st.state)
    assert.equal(0, st.failures)
    assert.equal(200, call("t-probe").json().status)
    assert.equal(2, count())
    local metrics = assert(engine:get("/metrics")).body
    assert.truthy(metrics:find('fm_breaker_state{dependency="t-probe"} 0', 1, true))
    assert.truthy(metrics:find(
      'fm_breaker_transitions_total{dependency="t-probe",from="half_open",to="closed"} 1', 1,
      true))
  end)

  it("opens again with a fresh timeout when the probe fails", function()
    open_breaker("t-reopen")
    helpers.sleep(RESET_S + 0.1)
    ctl("/_ctl/reset")
    assert.equal(500, call("t-reopen").json().status) -- the probe
    assert.equal(1, count())
    local st = state("t-reopen")
    assert.equal("open", st.state)
    assert.is_true(st.retry_in > RESET_S / 2, tostring(st.retry_in))
    assert.equal(503, call("t-reopen").status)
    assert.equal(1, count())
  end)

  it("never opens on 4xx, which count as answers", function()
    mode(404)
    for _ = 1, THRESHOLD * 3 do assert.equal(404, call("t-4xx").json().status) end
    assert.equal(THRESHOLD * 3, count())
    local st = state("t-4xx")
    assert.equal("closed", st.state)
    assert.equal(0, st.failures)
    -- a 4xx between failures breaks the run of consecutive failures
    mode(500)
    for _ = 1, THRESHOLD - 1 do call("t-4xx") end
    mode(429)
    call("t-4xx")
    mode(500)
    for _ = 1, THRESHOLD - 1 do call("t-4xx") end
    st = state("t-4xx")
    assert.equal("closed", st.state)
    assert.equal(THRESHOLD - 1, st.failures)
  end)

  it("counts timeouts as failures", function()
    mode(200, -1) -- hang
    for _ = 1, THRESHOLD do
      local res = call("t-timeout", { timeout = 0.3 })
      assert.equal(502, res.status)
      assert.equal("timeout", res.json().code)
    end
    assert.equal("open", state("t-timeout").state)
    local t0 = helpers.now()
    local res = call("t-timeout", { timeout = 0.3 })
    assert.equal(503, res.status)
    assert.is_true(tonumber(res.headers["x-call-ms"]) < 50)
    assert.is_true(helpers.now() - t0 < 0.3)
    assert.equal(THRESHOLD, count())
  end)

  it("counts connection errors as failures", function()
    local dead = ("http://127.0.0.1:%d/"):format(helpers.free_port())
    for _ = 1, THRESHOLD do
      local res = assert(engine:get("/test/breaker/call?name=t-conn&url=" .. enc(dead)))
      assert.equal("connect", res.json().code)
    end
    assert.equal("open", state("t-conn").state)
  end)

  it("lets only one of many concurrent requests through in HALF_OPEN", function()
    open_breaker("t-race")
    mode(200, 800) -- the probe is slow: everything else arrives while it is in flight
    helpers.sleep(RESET_S + 0.1)
    local out = concurrent(8, "t-race")
    local ok, refused = 0, 0
    for _, res in ipairs(out) do
      if res.status == 200 then ok = ok + 1 elseif res.status == 503 then refused = refused + 1 end
    end
    assert.equal(1, ok)
    assert.equal(7, refused)
    assert.equal(1, count())
    assert.equal("closed", state("t-race").state)
  end)

  it("shares one state between all workers", function()
    mode(500, 200)
    -- the failures arrive on different workers at once
    for _, res in ipairs(concurrent(THRESHOLD, "t-shared")) do
      assert.equal(500, res.json().status)
    end
    assert.equal("open", state("t-shared").state)
    mode(200)
    for _, res in ipairs(concurrent(8, "t-shared")) do assert.equal(503, res.status) end
    assert.equal(0, count())
  end)

  it("names a breaker after the URL's host:port by default; breaker = false opts out", function()
    local name = ("127.0.0.1:%d"):format(upstream_port)
    mode(502)
    for _ = 1, THRESHOLD do call(nil) end
    assert.equal("open", state(name).state)
    local res = call(nil)
    assert.equal(503, res.status)
    assert.equal(name .. " temporarily unavailable", res.json().message)
    assert.equal(502, call(nil, { off = true }).json().status)
    assert.equal(THRESHOLD + 1, count())
    local list = assert(engine:get("/test/breaker/list")).json()
    local found
    for _, b in ipairs(list) do if b.name == name then found = b end end
    assert.equal("open", found and found.state)
    -- reset: closed at once
    assert.is_true(assert(engine:post("/test/breaker/reset?name=" .. enc(name))).json().existed)
    assert.equal("closed", state(name).state)
    mode(200)
    assert.equal(200, call(nil).json().status)
  end)

  it("is listed and reset by admin.breakers() in the REPL", function()
    open_breaker("t-admin")
    local sock = engine.data_dir .. "/admin.sock"
    local q = helpers.shell_quote
    local ok, _, out = helpers.shell(q(helpers.bin()) .. " repl --socket " .. q(sock) .. " -e "
      .. q("admin.breakers()") .. " 2>&1")
    assert.is_true(ok, out)
    assert.truthy(out:find("t-admin", 1, true), out)
    assert.truthy(out:find("open", 1, true), out)
    assert.truthy(out:find("retry_in", 1, true), out)
    ok, _, out = helpers.shell(q(helpers.bin()) .. " repl --socket " .. q(sock) .. " -e "
      .. q('admin.breakers("reset", "t-admin")') .. " 2>&1")
    assert.is_true(ok, out)
    assert.truthy(out:find("true", 1, true), out)
    assert.equal("closed", state("t-admin").state)
  end)
end)

describe("circuit breakers disabled", function()
  lazy_teardown(function() helpers.cleanup() end)

  it("never refuses a request with CIRCUIT_BREAKER_ENABLED=false", function()
    local engine = helpers.engine.start({ env = {
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.breaker_routes",
      CIRCUIT_BREAKER_ENABLED = "false",
      CIRCUIT_BREAKER_FAIL_THRESHOLD = "1",
    } })
    local dead = ("http://127.0.0.1:%d/"):format(helpers.free_port())
    for _ = 1, 3 do
      local res = assert(engine:get("/test/breaker/call?name=t-off&url=" .. enc(dead)))
      assert.equal("connect", res.json().code)
    end
    assert.is_true(assert(engine:get("/test/breaker/state?name=t-off")).json().missing)
  end)
end)

describe("fm.breaker in this VM", function()
  local breaker = require "fm.breaker"
  local fmhttp = require "fm.http"

  it("derives default names from http(s) URLs only", function()
    assert.equal("api.example.com:443", breaker.name_for("https://API.example.com/v1/x?y=1"))
    assert.equal("h:8080", breaker.name_for("http://user:pw@h:8080/"))
    assert.equal("[::1]:80", breaker.name_for("http://[::1]/"))
    assert.is_nil(breaker.name_for("ftp://h/"))
    assert.is_nil(breaker.name_for("not a url"))
  end)

  it("refuses a breaker name it cannot use", function()
    assert.has_error(function()
      fmhttp.request({ url = "http://127.0.0.1:1/", breaker = "has space" })
    end)
    assert.has_error(function()
      fmhttp.request({ url = "http://127.0.0.1:1/", breaker = 42 })
    end, "breaker: a name or false expected")
  end)

  it("builds the 503 answer", function()
    local status, body, headers = breaker.unavailable("never-used")
    assert.equal(503, status)
    assert.equal('{"error":"service_unavailable","message":"never-used temporarily unavailable"}',
      body)
    assert.equal("1", headers["Retry-After"])
    assert.equal("application/json", headers["Content-Type"])
    assert.is_nil(breaker.state("never-used"))
  end)
end)
