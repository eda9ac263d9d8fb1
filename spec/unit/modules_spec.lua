-- The fm.* C modules as Lua sees them: metrics, time, crypto, json edge cases, http misuse.
local metrics = require "fm.metrics"
local json = require "fm.json"
local time = require "fm.time"
local crypto = require "fm.crypto"
local fmhttp = require "fm.http"

describe("fm.metrics", function()
  it("counts, sets and observes series and renders them for Prometheus", function()
    metrics.register("spec_jobs_total", "counter", "Jobs.")
    metrics.register("spec_queue", "gauge", "Queue.")
    metrics.register("spec_seconds", "histogram", "Time.", { 0.1, 1 })
    metrics.inc("spec_jobs_total", { kind = "ingest", result = "ok" })
    metrics.inc("spec_jobs_total", { result = "ok", kind = "ingest" }, 2) -- label order is free
    metrics.set("spec_queue", nil, 7)
    metrics.add("spec_queue", nil, -2)
    metrics.observe("spec_seconds", { op = "x" }, 0.5)
    assert.equal(3, metrics.get("spec_jobs_total", { kind = "ingest", result = "ok" }))
    assert.equal(5, metrics.get("spec_queue"))
    local text = metrics.render()
    assert.matches('spec_jobs_total{kind="ingest",result="ok"} 3\n', text, 1, true)
    assert.matches("spec_queue 5\n", text, 1, true)
    assert.matches('spec_seconds_bucket{op="x",le="1"} 1\n', text, 1, true)
    assert.matches("# TYPE spec_seconds histogram\n", text, 1, true)
  end)

  it("escapes label values a client controls", function()
    metrics.register("spec_escape_total", "counter", "Escapes.")
    metrics.inc("spec_escape_total", { path = 'a"b\\c\nd' })
    assert.matches('spec_escape_total{path="a\\"b\\\\c\\nd"} 1', metrics.render(), 1, true)
  end)

  it("raises on misuse", function()
    assert.has_error(function() metrics.inc("spec_unknown_total") end)
    assert.has_error(function() metrics.register("spec_queue", "counter", "clash") end)
    assert.has_error(function() metrics.inc("spec_jobs_total", nil, -1) end)
    assert.has_error(function() metrics.register("bad name", "gauge") end)
    assert.has_error(function() metrics.register("spec_h", "histogram", "", { 1, 0.5 }) end)
    assert.has_error(function() metrics.inc("spec_jobs_total", { ["bad-label"] = "x" }) end)
  end)
end)

describe("fm.time and fm.crypto", function()
  it("tells time in both clocks and formats ISO 8601 UTC", function()
    local t0 = time.monotonic()
    time.sleep(0.02)
    assert.is_true(time.monotonic() - t0 >= 0.02)
    assert.is_true(math.abs(time.now() - os.time()) < 2)
    assert.equal("2026-11-22T06:40:00.123Z", time.iso8601(1795329600.1234))
    assert.has_error(function() time.sleep(-1) end)
  end)

  it("makes random ids of the asked length, different each time", function()
    local a, b = crypto.random_hex(16), crypto.random_hex(16)
    assert.matches("^%x+$", a)
    assert.equal(32, #a)
    assert.not_equal(a, b)
    assert.equal(10, #crypto.random_bytes(10))
    assert.has_error(function() crypto.random_hex(0) end)
  end)
end)

describe("fm.json", function()
  it("round-trips the contract's shapes, empty arrays included", function()
    local v = assert(json.decode('{"cases":[],"total_count":0,"has_more":false,"x":null}'))
    local again = assert(json.decode(json.encode(v)))
    assert.is_true(json.is_array(again.cases))
    assert.equal(json.null, again.x)
    assert.matches('"cases":%[%]', json.encode(v))
  end)

  it("keeps integers integers and floats exact", function()
    assert.equal("[1,-2,9007199254740993,0.1,1e+300]",
      json.encode({ 1, -2, 9007199254740993, 0.1, 1e300 }))
    assert.equal(math.type(json.decode("3")), "integer")
    assert.equal(math.type(json.decode("3.0")), "float")
  end)

  it("turns invalid UTF-8 in strings into U+FFFD instead of broken JSON", function()
    assert.equal('"a\xEF\xBF\xBDb"', json.encode("a\xffb"))
  end)

  it("returns nil and a reason for malformed input, never raises", function()
    for _, s in ipairs({ "", "{", "[1,2", '{"a" 1}', "01", "NaN", "\"\\x\"", "[] []" }) do
      local v, err = json.decode(s)
      assert.is_nil(v, s)
      assert.is_string(err, s)
    end
  end)
end)

describe("fm.http misuse", function()
  it("raises for bad arguments but returns nil, err for failures of the world", function()
    assert.has_error(function() fmhttp.request({ url = "ftp://x/" }) end)
    assert.has_error(function() fmhttp.request({ url = "http://x/", headers = { a = {} } }) end)
    local res, err, code = fmhttp.request({ url = "http://127.0.0.1:1/", timeout = 2 })
    assert.is_nil(res)
    assert.is_string(err)
    assert.equal("connect", code)
  end)
end)
