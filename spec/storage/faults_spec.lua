-- fm.storage on S3 when S3 misbehaves, against a scriptable fake (spec/fixtures/fake_s3.lua):
-- 5xx and throttling retried with backoff, retries given up, 4xx not retried, a multipart upload
-- whose part is refused is aborted (the DELETE ?uploadId= is seen), a retried part still
-- completes, a streamed GET retried before its headers, and the `s3` circuit breaker.
local helpers = require "spec.helpers"
local breaker = require "fm.breaker"
local storage = require "fm.storage"
local time = require "fm.time"

local q = helpers.shell_quote

describe("fm.storage on a failing S3", function()
  local port, work

  local function ctl(path)
    local ok, _, out = helpers.shell(("curl -s -f %s"):format(
      q(("http://127.0.0.1:%d/_ctl/%s"):format(port, path))))
    assert(ok, "fake_s3 " .. path)
    return out
  end

  local function requests(pattern)
    local n = 0
    for line in ctl("log"):gmatch("[^\n]+") do
      if line:find(pattern) then n = n + 1 end
    end
    return n
  end

  local function fail(match, status, code, times)
    ctl(("fail?match=%s&status=%d&code=%s&times=%d"):format(
      match:gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end), status, code,
      times))
  end

  local function configure(retries)
    assert(storage.configure { backend = "s3", bucket = "fake",
      endpoint = ("http://127.0.0.1:%d"):format(port), access_key = "AK", secret_key = "SK",
      max_retries = retries or 3, multipart_threshold_mb = 5, part_size_mb = 5, timeout_s = 10 })
  end

  lazy_setup(function()
    work = helpers.tmpdir("fm-s3fault-")
    port = helpers.free_port()
    helpers.spawn({ argv = { helpers.bin(), "exec", helpers.root .. "/spec/fixtures/fake_s3.lua",
      tostring(port) }, stdout = work .. "/fake.log", stderr = work .. "/fake.log",
      cwd = helpers.root })
    helpers.wait_until(function() return pcall(ctl, "reset") end, 10)
    configure()
  end)
  lazy_teardown(helpers.cleanup)
  before_each(function()
    ctl("reset")
    breaker.reset("s3")
    configure()
  end)

  it("retries 503 SlowDown with backoff, then succeeds", function()
    fail("PUT /fake/retry/", 503, "SlowDown", 2)
    local t0 = time.monotonic()
    local r, err = storage.put_string("after two 503s", { prefix = "retry" })
    assert.is_table(r, err)
    assert.is_true(time.monotonic() - t0 >= 0.15, "backoff: 0.05-0.1 s, then 0.1-0.2 s")
    assert.equal(3, requests("^PUT /fake/retry/"))
    assert.equal("after two 503s", storage.get_string(r.key))
  end)

  it("retries 429 and 500", function()
    local r = assert(storage.put_string("x", { prefix = "t" }))
    fail("HEAD /fake/t/", 429, "SlowDown", 1)
    assert.equal(1, assert(storage.head(r.key)).size)
    fail("GET /fake/t/", 500, "InternalError", 1)
    assert.equal("x", storage.get_string(r.key))
    assert.equal(2, requests("^HEAD /fake/t/"))
    assert.equal(2, requests("^GET /fake/t/"))
  end)

  it("gives up after S3_MAX_RETRIES and says so", function()
    fail("GET /fake/gone/", 500, "InternalError", 10)
    local v, err, code = storage.get_string("gone/x")
    assert.is_nil(v)
    assert.equal("STORAGE_UNAVAILABLE", code)
    assert.matches("answered 500 InternalError after 4 attempts", err, 1, true)
    assert.equal(4, requests("^GET /fake/gone/x"))
  end)

  it("does not retry a 4xx", function()
    fail("PUT /fake/four/", 400, "InvalidRequest", 5)
    local v, err, code = storage.put_string("x", { prefix = "four" })
    assert.is_nil(v)
    assert.equal("STORAGE_ERROR", code)
    assert.matches("400 InvalidRequest", err, 1, true)
    assert.equal(1, requests("^PUT /fake/four/"))
  end)

  it("aborts a multipart upload whose part is refused; nothing is stored", function()
    local src = work .. "/12mb.bin"
    assert(helpers.shell(("head -c %d /dev/urandom > %s"):format(12 * 1024 * 1024, q(src))))
    fail("partNumber=2&", 400, "InvalidPart", 5)
    local v, err, code = storage.put_file(src, { prefix = "mp" })
    assert.is_nil(v)
    assert.equal("STORAGE_ERROR", code, err)
    assert.equal(1, requests("^POST /fake/mp/%x+%?uploads="))
    assert.equal(1, requests("^DELETE /fake/mp/%x+%?uploadId=up%d+$"))
    assert.equal(0, requests("^POST /fake/mp/%x+%?uploadId="), "never completed")
    local key = ctl("log"):match("POST /fake/(mp/%x+)%?uploads=")
    assert.equal("STORAGE_NOT_FOUND", select(3, storage.head(key)))
  end)

  it("completes a multipart upload whose part needed a retry", function()
    local src = work .. "/12mb.bin"
    fail("partNumber=2&", 503, "SlowDown", 1)
    local r = assert(storage.put_file(src, { prefix = "mp2" }))
    assert.equal(12 * 1024 * 1024, r.size)
    assert.equal("joined-1", r.etag)
    assert.equal(4, requests("^PUT /fake/mp2/%x+%?partNumber=%d"), "3 parts, one sent twice")
    assert.equal(2, requests("^PUT /fake/mp2/%x+%?partNumber=2&"))
    assert.is_true(storage.get_file(r.key, work .. "/12mb.out"))
    assert.equal(helpers.read_file(src), helpers.read_file(work .. "/12mb.out"))
  end)

  it("retries a streamed GET that failed before its headers", function()
    local r = assert(storage.put_string(string.rep("s", 1000), { prefix = "st" }))
    fail("GET /fake/st/", 503, "SlowDown", 1)
    local body <close> = assert(storage.response(r.key))
    assert.equal(1000, body:size())
    assert.equal(2, requests("^GET /fake/st/"))
    fail("GET /fake/st/", 404, "NoSuchKey", 1)
    assert.equal("STORAGE_NOT_FOUND", select(3, storage.response(r.key)))
  end)

  it("streams from a slow S3 through the engine without holding its I/O thread", function()
    local engine = helpers.engine.start { env = {
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.storage_routes", FM_HTTP_IO_THREADS = "1",
      STORAGE_PROVIDER = "s3", S3_BUCKET_NAME = "fake", AWS_ACCESS_KEY_ID = "AK",
      AWS_SECRET_ACCESS_KEY = "SK", S3_ENDPOINT_URL = ("http://127.0.0.1:%d"):format(port) } }
    local data = {}
    for i = 1, 2048 do data[i] = ("%07d\n"):format(i):rep(128) end
    data = table.concat(data) -- 2 MiB
    local r = assert(storage.put_string(data, { prefix = "slow" }))
    ctl("slow?match=" .. r.key .. "&chunks=5&delay_ms=1000")
    local out = work .. "/slow.out"
    assert(helpers.shell(("curl -s -o %s %s >/dev/null 2>&1 &"):format(q(out),
      q(engine.url .. "/test/storage/object?key=" .. r.key))))
    helpers.sleep(0.6) -- the download is under way, waiting for S3 between pieces
    -- the one I/O thread still answers at once
    local worst = 0
    for _ = 1, 5 do
      local t0 = time.monotonic()
      assert.equal(200, assert(engine:get("/health/live")).status)
      worst = math.max(worst, time.monotonic() - t0)
      helpers.sleep(0.1)
    end
    assert.is_true(worst < 0.4, ("/health/live took %.3f s"):format(worst))
    helpers.wait_until(function() return #(helpers.read_file(out) or "") == #data end, 15)
    assert.equal(data, helpers.read_file(out))
    engine:stop()
  end)

  it("opens the `s3` breaker after consecutive failures and then answers at once", function()
    configure(0)
    local threshold = breaker.config().fail_threshold
    fail("GET /fake/b/", 503, "SlowDown", 1000)
    for _ = 1, threshold do
      assert.equal("STORAGE_UNAVAILABLE", select(3, storage.get_string("b/x")))
    end
    assert.equal("open", breaker.state("s3").state)
    local before = requests("^GET /fake/b/")
    local t0 = time.monotonic()
    local v, err, code = storage.get_string("b/x")
    assert.is_true(time.monotonic() - t0 < 0.05)
    assert.is_nil(v)
    assert.equal("STORAGE_UNAVAILABLE", code)
    assert.matches("circuit breaker 's3' is open", err, 1, true)
    assert.equal(before, requests("^GET /fake/b/"), "nothing was sent")
    breaker.reset("s3")
  end)
end)
