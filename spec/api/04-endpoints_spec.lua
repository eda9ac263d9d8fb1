-- The engine's own endpoints: /, /health*, /readiness, capabilities, /metrics.

local helpers = require "spec.helpers"

describe("built-in endpoints", function()
  local engine

  lazy_setup(function()
    engine = helpers.engine.start()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  local function get_json(path)
    local res = assert(engine:get(path))
    assert.equal(200, res.status, path .. " -> " .. res.status .. " " .. res.body)
    assert.matches("^application/json", res.headers["content-type"])
    return res.json(), res
  end

  it("GET / names the engine and its version", function()
    local body = get_json("/")
    assert.equal("faultmaven", body.name)
    assert.is_string(body.version)
    assert.matches("^%d+%.%d+%.%d+", body.version)
  end)

  it("GET /health is healthy with a components table", function()
    local body = get_json("/health")
    assert.equal("healthy", body.status)
    assert.is_table(body.components)
  end)

  it("GET /health/live is alive", function()
    local body = get_json("/health/live")
    assert.same({ status = "alive" }, body)
  end)

  it("GET /readiness is ready", function()
    local body = get_json("/readiness")
    assert.same({ status = "ready" }, body)
  end)

  describe("capabilities", function()
    local function check(body)
      assert.truthy(body.deploymentMode == "self-hosted" or body.deploymentMode == "cloud",
        "deploymentMode " .. tostring(body.deploymentMode))
      assert.is_not_nil(body.kbManagement)
      assert.is_not_nil(body.dashboardUrl)
      assert.is_table(body.features)
      for _, k in ipairs({ "extensionKB", "adminKB", "teamSharing", "caseHistory", "sso" }) do
        assert.is_boolean(body.features[k], "features." .. k)
      end
      assert.is_table(body.limits)
      assert.is_number(body.limits.maxFileBytes)
      assert.is_true(body.limits.maxFileBytes > 0)
      assert.is_table(body.limits.allowedExtensions)
      assert.is_true(#body.limits.allowedExtensions > 0)
      for _, ext in ipairs(body.limits.allowedExtensions) do assert.is_string(ext) end
    end

    it("GET /v1/meta/capabilities has the contract's fields", function()
      check(get_json("/v1/meta/capabilities"))
    end)

    it("GET /api/v1/meta/capabilities is the same document", function()
      local a = get_json("/v1/meta/capabilities")
      local b = get_json("/api/v1/meta/capabilities")
      check(b)
      assert.same(a, b)
    end)

    it("reports a self-hosted deployment by default", function()
      assert.equal("self-hosted", get_json("/v1/meta/capabilities").deploymentMode)
    end)
  end)

  describe("workers", function()
    it("run Lua requests in parallel; liveness and readiness answer while all are busy", function()
      local e2 = helpers.engine.start({ env = { FM_WORKERS = "2" } })
      local busy = {}
      local t0 = helpers.now()
      for i = 1, 2 do
        busy[i] = e2:client()
        assert(busy[i]:send_raw("GET /test/slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\n"))
      end
      helpers.sleep(0.2)
      for _, path in ipairs({ "/health/live", "/readiness" }) do
        local t1 = helpers.now()
        local res = assert(e2:get(path, { timeout = 3 }))
        assert.equal(200, res.status)
        assert.is_true(helpers.now() - t1 < 0.5, path .. " waited for a Lua worker")
      end
      for i = 1, 2 do
        local res = assert(busy[i]:read_response({ timeout = 5 }))
        assert.equal(200, res.status)
        busy[i]:close()
      end
      local elapsed = helpers.now() - t0
      assert.is_true(elapsed < 1.8, ("two 1 s requests on two workers took %.2fs"):format(elapsed))
      assert.same({ "exit", 0 }, { e2:stop() })
    end)
  end)

  describe("/metrics", function()
    local res

    lazy_setup(function()
      -- traffic first, so the request counters have samples
      for _ = 1, 3 do assert(engine:get("/health")) end
      assert(engine:get("/nope"))
      res = assert(engine:get("/metrics"))
    end)

    it("is text/plain in the Prometheus text format", function()
      assert.equal(200, res.status)
      assert.matches("^text/plain", res.headers["content-type"])
      assert.matches("version=0.0.4", res.headers["content-type"], 1, true)
    end)

    for _, name in ipairs({ "fm_http_requests_total", "fm_http_request_duration_seconds_bucket",
      "fm_lua_memory_bytes", "fm_workers_busy", "fm_build_info" }) do
      it("has a sample of " .. name, function()
        local found = false
        for line in res.body:gmatch("[^\n]+") do
          if line:sub(1, #name) == name and line:sub(#name + 1, #name + 1):match("[{ ]") then
            found = true
            break
          end
        end
        assert.is_true(found, name .. " missing from /metrics")
      end)
    end

    it("counts requests: fm_http_requests_total sums to at least 4", function()
      local total = 0
      for line in res.body:gmatch("[^\n]+") do
        local v = line:match("^fm_http_requests_total[{ ].-%s(%S+)$")
        if v then total = total + tonumber(v) end
      end
      assert.is_true(total >= 4, "fm_http_requests_total sum " .. total)
    end)

    it("passes promtool check metrics", function()
      local dir = helpers.tmpdir("fm-metrics-")
      local file = helpers.write_file(dir .. "/metrics.txt", res.body)
      local ok, code, out = helpers.shell("promtool check metrics < "
        .. helpers.shell_quote(file) .. " 2>&1")
      assert.is_true(ok, ("promtool exit %s:\n%s"):format(tostring(code), out))
    end)
  end)
end)
