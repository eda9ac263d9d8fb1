-- Streaming stored objects through the engine (fm.storage.response as a route's body), on the
-- local directory and on s3rver: headers, byte-identical 100 MB downloads with their MB/s, HEAD,
-- missing keys, an upload through the engine, a client that disconnects halfway (the engine
-- stays up, its descriptors and threads come back), and the `storage` health component.
local helpers = require "spec.helpers"
local socket = require "socket"
local storage = require "fm.storage"
local time = require "fm.time"

local MB = 1024 * 1024
local q = helpers.shell_quote

local function sha256(path)
  local ok, _, out = helpers.shell("sha256sum " .. q(path))
  assert(ok, "sha256sum " .. path)
  return out:match("^(%x+)")
end

-- curl to a file: status, headers (lower-case names), seconds
local function curl_get(url, out, method)
  local hdr = out .. ".headers"
  local ok, _, res = helpers.shell(("curl -s %s -D %s -o %s -w '%%{http_code} %%{time_total}' %s")
    :format(method == "HEAD" and "-I" or "", q(hdr), q(out), q(url)))
  assert(ok, "curl " .. url)
  local status, secs = res:match("^(%d+) ([%d.]+)")
  local headers = {}
  for k, v in (helpers.read_file(hdr) or ""):gmatch("([%w-]+):%s*([^\r\n]*)") do
    headers[k:lower()] = v
  end
  return tonumber(status), headers, tonumber(secs)
end

local backends = {
  { name = "local", start = function()
    local e = helpers.engine.start { env = {
      FM_EXTRA_ROUTES = "fm_test.routes,fm_test.storage_routes", FM_WORKERS = "2",
      FM_SHUTDOWN_GRACE_S = "2" } }
    assert(storage.configure { backend = "local", dir = e.data_dir .. "/uploads" })
    return e
  end },
  { name = "s3", start = function()
    local s3 = helpers.s3.start()
    local env = s3:env()
    env.FM_EXTRA_ROUTES = "fm_test.routes,fm_test.storage_routes"
    env.FM_WORKERS = "2"
    env.FM_SHUTDOWN_GRACE_S = "2"
    local e = helpers.engine.start { env = env }
    assert(storage.configure { backend = "s3", bucket = s3.bucket, endpoint = s3.endpoint,
      access_key = s3.access_key, secret_key = s3.secret_key })
    return e, s3
  end },
}

for _, b in ipairs(backends) do
  describe("streaming downloads on " .. b.name, function()
    local engine, work
    lazy_setup(function()
      engine = b.start()
      work = helpers.tmpdir("fm-dl-")
    end)
    lazy_teardown(helpers.cleanup)

    local function url(key, extra)
      return engine.url .. "/test/storage/object?key=" .. key .. (extra or "")
    end

    it("shows the storage component in /health", function()
      local res = assert(engine:get("/health"))
      local c = res.json().components.storage
      assert.is_table(c)
      assert.equal("healthy", c.status)
      assert.equal(b.name, c.backend)
      assert.is_number(c.latency_ms)
    end)

    it("streams an object with its headers", function()
      local r = assert(storage.put_string("streamed body\n", { prefix = "dl",
        content_type = "text/x-log" }))
      local out = work .. "/small"
      local status, h = curl_get(url(r.key, "&filename=app%20log.txt"), out)
      assert.equal(200, status)
      assert.equal("streamed body\n", helpers.read_file(out))
      assert.equal("14", h["content-length"])
      assert.equal("text/x-log", h["content-type"])
      assert.equal([[attachment; filename="app log.txt"; filename*=UTF-8''app%20log.txt]],
        h["content-disposition"])
      assert.equal("no-store", h["cache-control"])
      assert.is_string(h["x-request-id"])
      -- HEAD: the headers, no body
      local hstatus, hh = curl_get(url(r.key), work .. "/head", "HEAD")
      assert.equal(200, hstatus)
      assert.equal("14", hh["content-length"])
      -- a content type given by the route wins over the stored one
      local _, h2 = curl_get(url(r.key, "&content_type=application/octet-stream"), out)
      assert.equal("application/octet-stream", h2["content-type"])
    end)

    it("answers 404 for a missing key and 400 for a bad one", function()
      local res = assert(engine:get("/test/storage/object?key=dl/nothing"))
      assert.equal(404, res.status)
      assert.equal("STORAGE_NOT_FOUND", res.json().code)
      res = assert(engine:get("/test/storage/object?key=../../etc/passwd"))
      assert.equal(400, res.status)
      assert.equal("STORAGE_INVALID", res.json().code)
    end)

    it("stores an upload sent through the engine", function()
      local src = work .. "/upload.bin"
      assert(helpers.shell(("head -c %d /dev/urandom > %s"):format(3 * MB, q(src))))
      local ok, _, out = helpers.shell(("curl -s -F 'file=@%s;type=application/x-test' %s")
        :format(src, q(engine.url .. "/test/storage/upload")))
      assert(ok)
      local r = helpers.http.json_decode(out)
      assert.matches("^test/uploads/%x+$", r.key, nil, out)
      assert.equal(3 * MB, r.size)
      assert.is_true(storage.get_file(r.key, work .. "/upload.out"))
      assert.equal(sha256(src), sha256(work .. "/upload.out"))
      assert.equal("application/x-test", storage.head(r.key).content_type)
    end)

    it("streams 100 MB byte-identical", function()
      local src = work .. "/big.bin"
      assert(helpers.shell(("head -c %d /dev/urandom > %s"):format(100 * MB, q(src))))
      local t0 = time.monotonic()
      local r = assert(storage.put_file(src, { prefix = "dl/big" }))
      local up = time.monotonic() - t0
      local out = work .. "/big.out"
      local status, h, secs = curl_get(url(r.key), out)
      assert.equal(200, status)
      assert.equal(tostring(100 * MB), h["content-length"])
      assert.equal(sha256(src), sha256(out))
      print(("\n  %s through the engine: 100 MB stored in %.2f s (%.0f MB/s), streamed to curl "
        .. "in %.2f s (%.0f MB/s)"):format(b.name, up, 100 / up, secs, 100 / secs))
      os.remove(out)
      b.big_key = r.key
    end)

    it("survives clients that disconnect halfway, and frees what they held", function()
      assert.is_string(b.big_key, "needs the 100 MB object of the test before")
      local base = assert(engine:get("/test/storage/proc")).json()
      for _ = 1, 3 do
        local c = assert(socket.connect("127.0.0.1", engine.port))
        c:settimeout(10)
        assert(c:send("GET /test/storage/object?key=" .. b.big_key
          .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
        local got = 0
        while got < 4 * MB do
          local data, err, partial = c:receive(65536)
          local n = #(data or partial or "")
          assert(n > 0, err)
          got = got + n
        end
        c:close() -- halfway: about 96 MB never read
      end
      -- the engine still answers, and its descriptors and threads return to where they were
      local after = helpers.wait_until(function()
        local now = assert(engine:get("/test/storage/proc")).json()
        return now.fds <= base.fds and now.threads <= base.threads and now
      end, 15, 0.1)
      assert.is_true(after.fds <= base.fds)
      assert.is_true(engine:alive())
      local status = curl_get(url(b.big_key), work .. "/again")
      assert.equal(200, status)
      assert.equal(100 * MB, #assert(helpers.read_file(work .. "/again")))
      os.remove(work .. "/again")
      local aborted = 0
      for _, entry in ipairs(engine:log_entries()) do
        if entry.msg == "access" and entry.aborted and entry.route == "/test/storage/object" then
          aborted = aborted + 1
        end
      end
      assert.is_true(aborted >= 3, "aborted downloads are logged as such")
    end)

    it("closes a stream at once when the handler fails after opening it", function()
      local r = assert(storage.put_string(string.rep("d", 4 * 1024 * 1024), { prefix = "drop" }))
      local base = assert(engine:get("/test/storage/proc")).json()
      for _ = 1, 5 do
        assert.equal(500, assert(engine:get("/test/storage/drop?key=" .. r.key)).status)
      end
      -- one descriptor of slack, and a few seconds, for the probes' own connections to close;
      -- five streams left to the garbage collector would hold five descriptors or more for
      -- much longer (a full collection needs far more requests than these)
      local now
      local ok = pcall(helpers.wait_until, function()
        now = assert(engine:get("/test/storage/proc")).json()
        return now.fds <= base.fds + 1 and now.threads <= base.threads
      end, 3, 0.2)
      assert.is_true(ok, ("fds %d -> %d, threads %d -> %d"):format(base.fds, now.fds,
        base.threads, now.threads))
    end)

    it("stops cleanly after a download cut by SIGTERM, leaking nothing", function()
      local c = assert(socket.connect("127.0.0.1", engine.port))
      c:settimeout(10)
      assert(c:send("GET /test/storage/object?key=" .. b.big_key
        .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert(c:receive(65536))
      -- SIGTERM while the download is open: the engine drains; the client then goes away, the
      -- stream is closed, and the engine tears everything down and exits 0 (under ASan,
      -- LeakSanitizer checks the exit)
      assert(engine:signal("TERM"))
      helpers.sleep(0.5)
      c:close()
      local how, code = engine:wait(20)
      assert.equal("exit", how)
      assert.equal(0, code)
      local log = engine:log()
      assert.is_nil(log:find("Sanitizer", 1, true), log:sub(-3000))
      assert.is_nil(log:find("runtime error", 1, true))
      local stopped = false
      for _, entry in ipairs(engine:log_entries()) do
        if entry.msg == "stopped" then stopped = true end
      end
      assert.is_true(stopped, "the full shutdown ran (not the grace-period exit)")
    end)
  end)
end
