-- fm.router: matching, parameters, 405 allow lists, and misuse.
local router = require "fm.router"

local function h() return 200 end

describe("fm.router", function()
  local r
  before_each(function()
    r = router.new()
    r:get("/", h)
    r:get("/api/v1/cases", h)
    r:post("/api/v1/cases", h)
    r:get("/api/v1/cases/{case_id}", h)
    r:delete("/api/v1/cases/{case_id}", h)
    r:post("/api/v1/cases/{case_id}/turns", h, { max_body = 1000 })
    r:get("/api/v1/cases/search", h) -- a literal beside a pattern
  end)

  it("matches literal routes and ignores a trailing slash", function()
    assert.equal("/api/v1/cases", r:match("GET", "/api/v1/cases").pattern)
    assert.equal("/api/v1/cases", r:match("GET", "/api/v1/cases/").pattern)
    assert.equal("/", r:match("GET", "/").pattern)
  end)

  it("binds path parameters", function()
    local route, params = r:match("POST", "/api/v1/cases/case_42/turns")
    assert.equal("/api/v1/cases/{case_id}/turns", route.pattern)
    assert.same({ case_id = "case_42" }, params)
  end)

  it("prefers a literal route to a pattern", function()
    assert.equal("/api/v1/cases/search", r:match("GET", "/api/v1/cases/search").pattern)
    assert.equal("/api/v1/cases/{case_id}", r:match("GET", "/api/v1/cases/other").pattern)
  end)

  it("matches HEAD to GET routes", function()
    assert.equal("/api/v1/cases/{case_id}", r:match("HEAD", "/api/v1/cases/x").pattern)
  end)

  it("gives the allowed methods when only the method is wrong", function()
    local route, allowed = r:match("PUT", "/api/v1/cases/x")
    assert.is_nil(route)
    assert.same({ "DELETE", "GET", "HEAD", "OPTIONS" }, allowed)
    route, allowed = r:match("DELETE", "/api/v1/cases")
    assert.is_nil(route)
    assert.same({ "GET", "HEAD", "OPTIONS", "POST" }, allowed)
  end)

  it("gives nothing for an unknown path, empty segments or extra segments", function()
    for _, p in ipairs({ "/nope", "/api/v1/cases/x/turns/y", "/api/v1/cases//turns", "/api/v2" }) do
      local route, allowed = r:match("GET", p)
      assert.is_nil(route, p)
      assert.is_nil(allowed, p)
    end
  end)

  it("does not treat path characters as Lua patterns", function()
    r:get("/a.b/{x}", h)
    assert.is_nil((r:match("GET", "/aXb/1")))
    assert.equal("/a.b/{x}", r:match("GET", "/a.b/1").pattern)
    local route, params = r:match("GET", "/a.b/%5B%5D(.*)")
    assert.equal("/a.b/{x}", route.pattern)
    assert.equal("%5B%5D(.*)", params.x)
  end)

  it("reports body limits for C, with the default where a route sets none", function()
    local limits = r:limits(555)
    local by = {}
    for _, l in ipairs(limits) do by[l.method .. " " .. l.pattern] = l.max_body end
    assert.equal(1000, by["POST /api/v1/cases/{case_id}/turns"])
    assert.equal(555, by["GET /"])
    assert.equal(7, #limits)
  end)

  it("refuses misuse with an error that names the problem", function()
    assert.has_error(function() r:get("no-slash", h) end, "router: pattern must start with /")
    assert.has_error(function() r:add("get", "/x", h) end,
      "router: method must be an upper-case HTTP method")
    assert.has_error(function() r:get("/x", "not a function") end)
    assert.has_error(function() r:get("/", h) end, "router: duplicate route GET /")
    assert.has_error(function() r:get("/a{b}", h) end)
    assert.has_error(function() r:post("/y", h, { max_body = -1 }) end)
  end)
end)
