-- fm.http, the outbound client (libcurl), used from this spec's VM against a started engine.

local helpers = require "spec.helpers"
local fmhttp = require "fm.http"

-- Header lookup that does not depend on how fm.http cases the names.
local function header(headers, name)
  name = name:lower()
  for k, v in pairs(headers or {}) do
    if type(k) == "string" and k:lower() == name then return v end
  end
  return nil
end

describe("fm.http", function()
  local engine

  lazy_setup(function()
    engine = helpers.engine.start()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("GETs a URL: status, body, headers", function()
    local res, err = fmhttp.request({ method = "GET", url = engine.url .. "/", timeout = 5,
      headers = { ["X-Request-Id"] = "out-1" } })
    assert.is_nil(err)
    assert.is_table(res)
    assert.equal(200, res.status)
    assert.is_string(res.body)
    assert.equal("faultmaven", helpers.http.json_decode(res.body).name)
    assert.is_table(res.headers)
    assert.equal("out-1", header(res.headers, "x-request-id"))
    assert.matches("^application/json", header(res.headers, "content-type"))
  end)

  it("sends 64 headers (more than the Lua C stack's guaranteed slots)", function()
    local h = {}
    for i = 1, 64 do h["X-H" .. i] = "v" .. i end
    h["X-Request-Id"] = "many-headers"
    h["X-H64"] = nil
    local res = assert(fmhttp.request({ url = engine.url .. "/", headers = h, timeout = 5 }))
    assert.equal(200, res.status)
    assert.equal("many-headers", header(res.headers, "x-request-id"))
    h["X-H64"], h["X-H65"] = "x", "y"
    assert.has_error(function() fmhttp.request({ url = engine.url .. "/", headers = h }) end)
  end)

  it("raises for a header name that is not a string", function()
    assert.has_error(function()
      fmhttp.request({ url = engine.url .. "/", headers = { [1] = "a" } })
    end, "header names must be strings")
  end)

  it("defaults to GET", function()
    local res = assert(fmhttp.request({ url = engine.url .. "/health", timeout = 5 }))
    assert.equal(200, res.status)
  end)

  it("POSTs a body with headers", function()
    local res = assert(fmhttp.request({
      method = "POST",
      url = engine.url .. "/test/echo",
      headers = { ["Content-Type"] = "application/json" },
      body = '{"a":[1,2]}',
      timeout = 5,
    }))
    assert.equal(200, res.status)
    local body = helpers.http.json_decode(res.body)
    assert.same({ a = { 1, 2 } }, body.json)
    assert.equal(11, body.body_len)
  end)

  it("returns non-2xx statuses as responses, not errors", function()
    local res, err = fmhttp.request({ url = engine.url .. "/nope", timeout = 5 })
    assert.is_nil(err)
    assert.equal(404, res.status)
    assert.equal("not found", helpers.http.json_decode(res.body).detail)
  end)

  it("returns nil, err for a refused connection", function()
    local port = helpers.free_port()
    local t0 = helpers.now()
    local res, err = fmhttp.request({ url = ("http://127.0.0.1:%d/"):format(port), timeout = 5 })
    assert.is_nil(res)
    assert.is_string(err)
    assert.is_true(#err > 0)
    assert.is_true(helpers.now() - t0 < 2)
  end)

  it("returns nil, err when the response is larger than max_body", function()
    -- the check is only meaningful if /metrics really is bigger than the cap
    local full = assert(engine:get("/metrics"))
    assert.is_true(#full.body > 1000, "/metrics body is only " .. #full.body .. " bytes")
    local res, err = fmhttp.request({ url = engine.url .. "/metrics", timeout = 5,
      max_body = 1000 })
    assert.is_nil(res)
    assert.is_string(err)
    local e = err:lower()
    assert.truthy(e:find("size") or e:find("large") or e:find("max") or e:find("limit"),
      "error does not mention the size: " .. err)
  end)

  it("returns the whole response when it fits in max_body", function()
    local res = assert(fmhttp.request({ url = engine.url .. "/", timeout = 5, max_body = 1000 }))
    assert.equal(200, res.status)
  end)

  it("returns nil, err quickly on timeout", function()
    local t0 = helpers.now()
    local res, err = fmhttp.request({ url = engine.url .. "/test/slow?ms=3000", timeout = 0.5 })
    local elapsed = helpers.now() - t0
    assert.is_nil(res)
    assert.is_string(err)
    assert.is_true(elapsed < 1.5, ("timeout took %.2fs"):format(elapsed))
    assert.truthy(err:lower():find("time"), "error does not say timeout: " .. err)
  end)

  it("rejects a request without url", function()
    local ok, res, err = pcall(fmhttp.request, { method = "GET" })
    -- either a raised argument error or nil, err: never a response
    if ok then
      assert.is_nil(res)
      assert.is_string(err)
    end
  end)
end)
