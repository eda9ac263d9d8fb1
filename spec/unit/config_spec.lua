-- config.lua: parsing, validation messages, defaults, and docs/CONFIG.md kept in sync.
local config = require "config"

local function env(t) return function(k) return t[k] end end

describe("config.resolve", function()
  it("uses documented defaults with an empty environment", function()
    local s = assert(config.resolve(env {}))
    assert.equal(8090, s.port)
    assert.equal("127.0.0.1", s.host)
    assert.equal("./data", s.data_dir)
    assert.equal("info", s.log_level)
    assert.is_true(s.workers >= 2)
  end)

  it("binds 0.0.0.0 outside local mode unless FM_HOST says otherwise", function()
    assert.equal("0.0.0.0", assert(config.resolve(env { DEPLOYMENT_MODE = "kubernetes" })).host)
    assert.equal("10.1.2.3",
      assert(config.resolve(env { DEPLOYMENT_MODE = "docker", FM_HOST = "10.1.2.3" })).host)
  end)

  it("accepts the FaultMaven spellings of LOG_LEVEL", function()
    assert.equal("info", assert(config.resolve(env { LOG_LEVEL = "INFO" })).log_level)
    assert.equal("warn", assert(config.resolve(env { LOG_LEVEL = "WARNING" })).log_level)
  end)

  it("names every invalid setting and the value it got", function()
    local s, errs = config.resolve(env {
      FM_PORT = "80x", FM_WORKERS = "0", LOG_LEVEL = "loud", FM_SHUTDOWN_GRACE_S = "-1",
      FM_JSON_MAX_DEPTH = "2.5",
    })
    assert.is_nil(s)
    local all = table.concat(errs, "\n")
    assert.matches("FM_PORT: expected a number, got '80x'", all, 1, true)
    assert.matches("FM_WORKERS: expected 1 to 512, got '0'", all, 1, true)
    assert.matches("LOG_LEVEL: expected one of", all, 1, true)
    assert.matches("FM_SHUTDOWN_GRACE_S", all, 1, true)
    assert.matches("FM_JSON_MAX_DEPTH: expected a whole number", all, 1, true)
    assert.equal(5, #errs)
  end)

  it("splits lists and trims their items", function()
    local origins = " https://a.example , ,https://b.example"
    local s = assert(config.resolve(env { CORS_ALLOW_ORIGINS = origins }))
    assert.same({ "https://a.example", "https://b.example" }, s.cors_allow_origins)
  end)

  it("refuses to read a setting that does not exist", function()
    local s = assert(config.resolve(env {}))
    assert.has_error(function() return s.no_such_setting end)
  end)

  it("check() reports ok and every variable, or the errors", function()
    local ok, text = config.check(env { FM_PORT = "9" })
    assert.is_true(ok)
    for _, spec in ipairs(config.specs) do assert.matches(spec.env, text, 1, true) end
    ok, text = config.check(env { FM_PORT = "99999" })
    assert.is_false(ok)
    assert.matches("FM_PORT: expected 0 to 65535, got '99999'", text, 1, true)
  end)
end)

describe("config.check", function()
  it("masks secrets", function()
    table.insert(config.specs, { env = "FM_TEST_SECRET", key = "test_secret", kind = "string",
                                 default = "", secret = true, doc = "test only" })
    local ok, text = config.check(env { FM_TEST_SECRET = "hunter2-very-secret" })
    table.remove(config.specs)
    assert.is_true(ok)
    assert.matches("FM_TEST_SECRET%s+%*%*%*%*%*%*%*%*", text)
    assert.not_matches("hunter2", text, 1, true)
  end)
end)

describe("config.describe (admin.config())", function()
  it("gives every setting by variable name, secrets masked", function()
    table.insert(config.specs, { env = "FM_TEST_SECRET", key = "test_secret", kind = "string",
                                 default = "", secret = true, doc = "test only" })
    local s = config.resolve(env { FM_TEST_SECRET = "hunter2", FM_PORT = "9000",
                                   CORS_ALLOW_ORIGINS = "http://a, http://b" })
    local d = config.describe(s)
    table.remove(config.specs)
    assert.equal("********", d.FM_TEST_SECRET)
    assert.equal("9000", d.FM_PORT)
    assert.equal("http://a,http://b", d.CORS_ALLOW_ORIGINS)
    for k in pairs(d) do assert.is_string(d[k], k) end
  end)
end)

describe("config.pin", function()
  it("keeps the start value of restart settings and names them; reload settings change", function()
    local boot = config.resolve(env { FM_PORT = "9000" })
    local now = config.resolve(env { FM_PORT = "9001", LOG_LEVEL = "debug",
                                     CORS_ALLOW_ORIGINS = "http://x" })
    local changed = config.pin(now, boot)
    assert.same({ "CORS_ALLOW_ORIGINS", "FM_PORT" }, changed)
    assert.equal(9000, now.port)
    assert.same(boot.cors_allow_origins, now.cors_allow_origins)
    assert.equal("debug", now.log_level) -- reload = true
    assert.same({}, config.pin(config.resolve(env {}), config.resolve(env {})))
  end)
end)

describe("docs/CONFIG.md", function()
  it("is what scripts/config-doc.lua generates from config.lua", function()
    local root = os.getenv("FM_SOURCE_DIR") or "."
    local bin = os.getenv("FM_BIN") or (root .. "/build/faultmaven")
    local p = assert(io.popen("cd '" .. root .. "' && '" .. bin .. "' exec scripts/config-doc.lua"))
    local generated = p:read("a")
    p:close()
    local f = assert(io.open(root .. "/docs/CONFIG.md"))
    local current = f:read("a")
    f:close()
    assert.equal(generated, current,
      "docs/CONFIG.md is stale: run build/faultmaven exec scripts/config-doc.lua > docs/CONFIG.md")
  end)
end)
