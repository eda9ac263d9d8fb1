-- The command line: exit codes and messages a user or a supervisor sees.
local helpers = require "spec.helpers"

local function run(argv, env)
  local dir = helpers.tmpdir("fm-cli-")
  local out, err = dir .. "/out", dir .. "/err"
  local p = helpers.spawn({ argv = argv, env = env or {}, stdout = out, stderr = err,
                            cwd = helpers.root })
  local how, code = p:wait(20)
  assert.equal("exit", how, "did not exit in time: " .. tostring(code))
  return code, helpers.read_file(out) or "", helpers.read_file(err) or ""
end

describe("faultmaven CLI", function()
  local bin = helpers.bin()
  lazy_teardown(function() helpers.cleanup() end)

  it("version prints the version and the libraries", function()
    local code, out = run({ bin, "version" })
    assert.equal(0, code)
    assert.matches("^faultmaven %d+%.%d+%.%d+\n", out)
    assert.matches("libmicrohttpd 0.9", out, 1, true)
  end)

  it("--help exits 0, no arguments exits 2, an unknown command exits 2", function()
    local code, out = run({ bin, "--help" })
    assert.equal(0, code)
    assert.matches("faultmaven serve", out, 1, true)
    assert.equal(2, (run({ bin })))
    local c3, _, err = run({ bin, "frobnicate" })
    assert.equal(2, c3)
    assert.matches("unknown command 'frobnicate'", err, 1, true)
  end)

  it("check-config exits 0 with every setting, 2 naming each bad one", function()
    local code, out = run({ bin, "check-config" })
    assert.equal(0, code)
    assert.matches("FM_PORT%s+8090", out)
    local bad, _, err = run({ bin, "check-config" }, { FM_PORT = "eighty", LOG_LEVEL = "loud" })
    assert.equal(2, bad)
    assert.matches("FM_PORT: expected a number, got 'eighty'", err, 1, true)
    assert.matches("LOG_LEVEL: expected one of", err, 1, true)
  end)

  it("serve refuses an invalid setting with exit 2 and no traceback", function()
    local env = { FM_WORKERS = "-3", FM_DATA_DIR = helpers.tmpdir() }
    local code, _, err = run({ bin, "serve" }, env)
    assert.equal(2, code)
    assert.matches("FM_WORKERS: expected 1 to 512, got '-3'", err, 1, true)
    assert.not_matches("stack traceback", err, 1, true)
  end)

  it("serve flags override the environment, and a bad flag exits 2", function()
    assert.equal(2, (run({ bin, "serve", "--port" })))
    assert.equal(2, (run({ bin, "serve", "--no-such-flag", "1" })))
    local code, _, err = run({ bin, "serve", "--workers=0" }, { FM_WORKERS = "2" })
    assert.equal(2, code)
    assert.matches("FM_WORKERS: expected 1 to 512, got '0'", err, 1, true)
  end)

  it("serve on a port already in use exits 1 and says so", function()
    local engine = helpers.engine.start()
    local code, _, err = run({ bin, "serve", "--port", tostring(engine.port) },
      { FM_DATA_DIR = helpers.tmpdir(), FM_HOST = "127.0.0.1" })
    assert.equal(1, code)
    assert.matches("cannot listen on 127.0.0.1:" .. engine.port, err, 1, true)
    assert.equal(200, assert(engine:get("/health/live")).status) -- the first one is unharmed
  end)

  it("exec passes arguments like lua(1) and returns the script's exit status", function()
    local dir = helpers.tmpdir("fm-exec-")
    local script = dir .. "/s.lua"
    helpers.write_file(script, table.concat({
      "#!/usr/bin/env faultmaven-exec (first line skipped)",
      "local a, b = ...",
      "io.write(arg[0], '|', arg[1], '|', arg[2], '|', a, '|', b, '|',",
      "  tostring(require('fm.json') ~= nil), '\\n')",
      "os.exit(tonumber(arg[2]))",
    }, "\n"))
    local code, out = run({ bin, "exec", script, "x y", "3" })
    assert.equal(3, code)
    assert.equal(script .. "|x y|3|x y|3|true\n", out)

    helpers.write_file(script, "error('exec failure here')")
    local c2, _, err = run({ bin, "exec", script })
    assert.equal(1, c2)
    assert.matches("exec failure here", err, 1, true)

    local c3, _, err3 = run({ bin, "exec", dir .. "/missing.lua" })
    assert.equal(1, c3)
    assert.matches("missing.lua", err3, 1, true)
  end)

  it("exec VMs have fm.proc; serve VMs do not", function()
    local dir = helpers.tmpdir("fm-exec-")
    local script = dir .. "/p.lua"
    helpers.write_file(script, "io.write(type(require('fm.proc').spawn))")
    local code, out = run({ bin, "exec", script })
    assert.equal(0, code)
    assert.equal("function", out)
    local engine = helpers.engine.start()
    local res = assert(engine:get("/test/has_module?name=fm.proc"))
    assert.equal(200, res.status)
    assert.is_false(res.json().loaded)
    res = assert(engine:get("/test/has_module?name=fm.http"))
    assert.is_true(res.json().loaded)
  end)
end)
