-- Faults inside Lua handlers are contained: errors, endless loops (also inside pcall) and memory
-- bombs answer 500/503 and the same single worker then serves the next request.

local helpers = require "spec.helpers"
local http = require "spec.helpers.http"

describe("Lua faults", function()
  local engine

  lazy_setup(function()
    engine = helpers.engine.start({ env = {
      FM_WORKERS = "1",
      FM_REQUEST_INSTRUCTION_LIMIT = "20000000",
      FM_LUA_MEMORY_MB = "32",
    } })
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  local function next_request_ok()
    local res = assert(engine:get("/"))
    assert.equal(200, res.status)
    assert.equal("faultmaven", res.json().name)
    res = assert(engine:get("/health"))
    assert.equal(200, res.status)
    assert.is_true(engine:alive())
  end

  describe("handler error", function()
    it("answers 500 {detail, request_id} without leaking the message", function()
      local res = assert(engine:get("/test/error", { headers = { ["X-Request-Id"] = "err-1" } }))
      assert.equal(500, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      assert.equal("err-1", res.headers["x-request-id"])
      assert.same({ detail = "internal error", request_id = "err-1" }, res.json())
      assert.is_nil(res.body:find("boom", 1, true))
    end)

    it("puts the generated id in the body when none was sent", function()
      local res = assert(engine:get("/test/error"))
      assert.equal(500, res.status)
      local id = res.headers["x-request-id"]
      assert.is_true(helpers.is_hex_id(id))
      assert.equal(id, res.json().request_id)
    end)

    it("logs the error with its traceback and request id", function()
      local res = assert(engine:get("/test/error", { headers = { ["X-Request-Id"] = "err-tb" } }))
      assert.equal(500, res.status)
      local entry = engine:wait_log(function(e)
        return e.request_id == "err-tb" and e._raw:find("boom from /test/error", 1, true) ~= nil
          and e._raw:find("traceback", 1, true) ~= nil
      end)
      assert.equal("error", entry.level)
      local access = engine:wait_log(function(e)
        return e.msg == "access" and e.request_id == "err-tb"
      end)
      assert.equal(500, access.status)
    end)

    for _, kind in ipairs({ "nil", "table", "tostring_raises" }) do
      it("answers 500 for an error object of kind " .. kind, function()
        local res = assert(engine:get("/test/error_obj?kind=" .. kind))
        assert.equal(500, res.status)
        assert.equal("internal error", res.json().detail)
        assert.equal(res.headers["x-request-id"], res.json().request_id)
      end)
    end

    it("answers the next request with 200", next_request_ok)

    it("puts CORS headers on a 500 for an allowed origin", function()
      local res = assert(engine:get("/test/error", {
        headers = { Origin = "chrome-extension://abc" },
      }))
      assert.equal(500, res.status)
      assert.equal("chrome-extension://abc", res.headers["access-control-allow-origin"])
    end)

    it("turns fm.errors.http(418) into a 418 {detail}", function()
      local res = assert(engine:get("/test/raise_http"))
      assert.equal(418, res.status)
      assert.same({ detail = "teapot" }, res.json())
    end)
  end)

  describe("instruction budget", function()
    local function budget_stops(path)
      local t0 = helpers.now()
      local res = assert(engine:get(path, { timeout = 20 }))
      local elapsed = helpers.now() - t0
      assert.equal(500, res.status)
      local body = res.json()
      assert.matches("instruction budget", body.detail)
      assert.equal(res.headers["x-request-id"], body.request_id)
      assert.is_true(elapsed < 5, ("took %.2fs"):format(elapsed))
    end

    it("stops GET /test/loop", function()
      budget_stops("/test/loop")
    end)

    it("serves the next request on the same (only) worker", next_request_ok)

    it("stops GET /test/pcall_loop: pcall cannot swallow the budget", function()
      budget_stops("/test/pcall_loop")
    end)

    it("serves the next request after the pcall loop", next_request_ok)

    it("stops a loop inside coroutine.wrap", function()
      budget_stops("/test/co_loop?kind=wrap")
    end)

    it("stops a loop of coroutine.resume (which catches errors like pcall)", function()
      budget_stops("/test/co_loop?kind=resume")
    end)

    it("serves the next request after the coroutine loops", next_request_ok)

    it("puts CORS headers on the budget 500 for an allowed origin", function()
      local res = assert(engine:get("/test/loop", { headers = { Origin = "chrome-extension://abc" },
        timeout = 20 }))
      assert.equal(500, res.status)
      assert.equal("chrome-extension://abc", res.headers["access-control-allow-origin"])
    end)

    it("stops loops again and again without losing the worker", function()
      for _ = 1, 3 do
        budget_stops("/test/loop")
        local res = assert(engine:get("/"))
        assert.equal(200, res.status)
      end
    end)

    it("logs the budget failure at error level", function()
      local res = assert(engine:get("/test/loop", { headers = { ["X-Request-Id"] = "loop-log" } }))
      assert.equal(500, res.status)
      local entry = engine:wait_log(function(e)
        return e.msg == "access" and e.request_id == "loop-log"
      end)
      assert.equal(500, entry.status)
    end)
  end)

  describe("bad handler results", function()
    -- (a 1xx final status would leave the client waiting for the real answer)
    for _, kind in ipairs({ "status", "status_range", "informational", "unencodable" }) do
      it("answers 500 {internal error} when a handler returns a bad " .. kind, function()
        local res = assert(engine:get("/test/bad_return?kind=" .. kind))
        assert.equal(500, res.status)
        assert.same({ detail = "internal error", request_id = res.headers["x-request-id"] },
          res.json())
      end)
    end

    it("never lets a handler's header value split the response", function()
      local res = assert(engine:get("/test/bad_return?kind=header_injection"))
      assert.truthy(res.status == 200 or res.status == 500, "status " .. res.status)
      assert.is_nil(res.headers["set-cookie"])
      for _, pair in ipairs(res.header_list) do
        assert.is_nil(pair[2]:find("pwned", 1, true), "injected header: " .. pair[1])
      end
    end)

    it("serves the next request", next_request_ok)
  end)

  describe("memory cap", function()
    local function contained(path)
      local res = assert(engine:get(path, { timeout = 20 }))
      assert.truthy(res.status == 500 or res.status == 503, "status " .. res.status)
      local body = res.json()
      assert.is_string(body.detail)
      assert.equal(res.headers["x-request-id"], body.request_id)
      return res
    end

    it("contains a string-doubling bomb", function()
      local res = contained("/test/membomb")
      if res.status == 503 then
        assert.equal("request exceeded the Lua memory limit", res.json().detail)
      end
    end)

    it("serves the next request and the engine is alive", next_request_ok)

    it("contains a table-growing bomb", function()
      contained("/test/membomb?kind=table")
    end)

    it("contains repeated bombs without losing the worker", function()
      for _ = 1, 3 do
        contained("/test/membomb")
        local res = assert(engine:get("/"))
        assert.equal(200, res.status)
      end
    end)

    it("does not replace the VM after ordinary requests that leave garbage", function()
      local function restarts()
        return assert(engine:get("/health")).json().components.engine.vm_restarts
      end
      local before = restarts()
      for _ = 1, 3 do -- 7.5 MiB bodies against a 32 MiB cap: garbage above half the cap
        local res = assert(engine:post("/test/big", {
          headers = { ["Content-Type"] = "application/octet-stream" },
          body = string.rep("g", 7 * 1024 * 1024 + 512 * 1024),
        }))
        assert.equal(200, res.status)
      end
      assert.equal(before, restarts())
    end)

    it("serves a normal JSON request after the bombs", function()
      local res = assert(engine:post("/test/echo", { json = { ok = true } }))
      assert.equal(200, res.status)
      assert.is_true(res.json().json.ok)
      next_request_ok()
    end)
  end)

  it("wrote only JSON log lines through all of the above", function()
    local lines = engine:log_lines() -- complete lines: the last may still be being written
    assert.is_true(#lines > 10)
    for _, line in ipairs(lines) do
      assert.equal("{", line:sub(1, 1), "log line is not JSON: " .. line)
      local ok, entry = pcall(http.json_decode, line)
      assert.is_true(ok and type(entry) == "table", "log line is not a JSON object: " .. line)
    end
  end)
end)
