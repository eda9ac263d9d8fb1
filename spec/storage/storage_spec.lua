-- fm.storage: the same behaviours on the local directory and on a real S3-compatible server
-- (s3rver, started by helpers.s3): generated keys, round trips, key rules, listing, presigned
-- URLs, a 100 MB upload (multipart on S3) and a byte-identical download with their MB/s; on S3
-- also wrong credentials, the server dying mid-upload, an aborted multipart upload and the
-- circuit breaker.
local helpers = require "spec.helpers"
local breaker = require "fm.breaker"
local storage = require "fm.storage"
local time = require "fm.time"

local MB = 1024 * 1024
local q = helpers.shell_quote

local function sha256(path)
  local ok, _, out = helpers.shell("sha256sum " .. q(path))
  assert(ok, "sha256sum " .. path)
  return out:match("^(%x+)")
end

-- A file of n MiB of random bytes in dir.
local function random_file(dir, name, mib)
  local path = dir .. "/" .. name
  assert(helpers.shell(("head -c %d /dev/urandom > %s"):format(mib * MB, q(path))))
  return path
end

local s3 -- the s3rver of the S3 backend, once started

local backends = {
  { name = "local", open = function()
    local dir = helpers.tmpdir("fm-uploads-")
    assert(storage.configure { backend = "local", dir = dir })
    return { dir = dir }
  end },
  { name = "s3", open = function()
    s3 = helpers.s3.start()
    assert(storage.configure { backend = "s3", bucket = s3.bucket, endpoint = s3.endpoint,
      access_key = s3.access_key, secret_key = s3.secret_key, region = "us-east-1",
      max_retries = 1, timeout_s = 30 })
    return { s3 = s3 }
  end },
}

for _, b in ipairs(backends) do
  describe("fm.storage on " .. b.name, function()
    local ctx, work
    lazy_setup(function()
      breaker.reset("s3")
      ctx = b.open()
      work = helpers.tmpdir("fm-storage-work-")
    end)
    lazy_teardown(helpers.cleanup)

    it("reports its backend and answers ping", function()
      assert.equal(b.name, storage.backend())
      local p, err = storage.ping()
      assert.is_table(p, err)
      assert.is_number(p.latency_ms)
    end)

    it("stores a string under a generated key and reads it back", function()
      local data = "hello\0world\255" .. string.rep("x", 1000)
      local r = assert(storage.put_string(data,
        { prefix = "cases/c1", content_type = "text/plain" }))
      assert.matches("^cases/c1/%x+$", r.key)
      assert.equal(#"cases/c1/" + 32, #r.key)
      assert.equal(#data, r.size)
      assert.is_string(r.etag)
      assert.equal(data, storage.get_string(r.key))
      local h = assert(storage.head(r.key))
      assert.equal(#data, h.size)
      assert.equal("text/plain", h.content_type)
      assert.is_true(math.abs(h.last_modified - os.time()) < 120, tostring(h.last_modified))
      local r2 = assert(storage.put_string(data, { prefix = "cases/c1" }))
      assert.not_equal(r.key, r2.key)
      assert.is_true(storage.delete(r.key))
      assert.is_true(storage.delete(r2.key))
    end)

    it("stores an empty object", function()
      local r = assert(storage.put_string("", { prefix = "empty" }))
      assert.equal(0, r.size)
      assert.equal("", storage.get_string(r.key))
      assert.equal(0, storage.head(r.key).size)
    end)

    it("answers STORAGE_NOT_FOUND for a missing key, and deleting it is not an error", function()
      local v, err, code = storage.get_string("cases/none/0000")
      assert.is_nil(v)
      assert.equal("STORAGE_NOT_FOUND", code, err)
      assert.equal("STORAGE_NOT_FOUND", select(3, storage.head("cases/none/0000")))
      assert.equal("STORAGE_NOT_FOUND",
        select(3, storage.get_file("cases/none/0000", work .. "/none")))
      assert.equal("STORAGE_NOT_FOUND", select(3, storage.response("cases/none/0000")))
      assert.is_true(storage.delete("cases/none/0000"))
    end)

    it("refuses keys and prefixes that could leave the store", function()
      for _, key in ipairs { "../x", "/etc/passwd", "a/../../b", "a//b", ".tmp/x", "a/.hidden",
        "a b", "a\0b", "..", "" } do
        local v, _, code = storage.get_string(key)
        assert.is_nil(v)
        assert.equal("STORAGE_INVALID", code, key)
        assert.equal("STORAGE_INVALID", select(3, storage.head(key)), key)
        assert.equal("STORAGE_INVALID", select(3, storage.delete(key)), key)
        assert.equal("STORAGE_INVALID", select(3, storage.response(key)), key)
      end
      for _, prefix in ipairs { "../up", "/abs", "a/", "A", "a.b", "a//b" } do
        local v, _, code = storage.put_string("x", { prefix = prefix })
        assert.is_nil(v)
        assert.equal("STORAGE_INVALID", code, prefix)
      end
      assert.has_error(function() storage.put_string("x", {}) end)
      assert.has_error(function() storage.put_string("x") end)
      if ctx.dir then -- nothing was written outside the uploads directory
        assert.is_false(helpers.file_exists(ctx.dir .. "/../x"))
      end
    end)

    it("refuses a read larger than max_bytes", function()
      local r = assert(storage.put_string(string.rep("y", 5000), { prefix = "big" }))
      local v, err, code = storage.get_string(r.key, 100)
      assert.is_nil(v)
      assert.equal("STORAGE_TOO_LARGE", code, err)
      assert.equal(5000, #storage.get_string(r.key, 5000))
      storage.delete(r.key)
    end)

    it("lists keys under a prefix in order, page by page", function()
      local keys = {}
      for i = 1, 5 do
        keys[i] = assert(storage.put_string("v" .. i, { prefix = "list/p" })).key
      end
      assert(storage.put_string("other", { prefix = "list/q" }))
      table.sort(keys)
      local page, after = assert(storage.list("list/p/", { limit = 2 }))
      assert.equal(2, #page)
      assert.equal(keys[1], page[1].key)
      assert.equal(keys[2], page[2].key)
      assert.equal(2, page[1].size)
      assert.equal(keys[2], after)
      local page2, after2 = storage.list("list/p/", { after = after, limit = 2 })
      assert.same({ keys[3], keys[4] }, { page2[1].key, page2[2].key })
      local page3, after3 = storage.list("list/p/", { after = after2, limit = 2 })
      assert.equal(1, #page3)
      assert.equal(keys[5], page3[1].key)
      assert.is_nil(after3)
      assert.equal(6, #storage.list("list/"))
      assert.equal(0, #storage.list("list/none/"))
      assert.equal("STORAGE_INVALID", select(3, storage.list("../")))
    end)

    it("uploads a file (only reading it) and downloads it to a file", function()
      local src = random_file(work, "small.bin", 1)
      local before = sha256(src)
      local r = assert(storage.put_file(src,
        { prefix = "files", content_type = "application/gzip" }))
      assert.equal(MB, r.size)
      assert.equal(before, sha256(src), "the source file is unchanged")
      assert.is_true(storage.get_file(r.key, work .. "/small.out"))
      assert.equal(before, sha256(work .. "/small.out"))
      assert.equal("application/gzip", storage.head(r.key).content_type)
      assert.equal("STORAGE_NOT_FOUND",
        select(3, storage.put_file(work .. "/no-such-file", { prefix = "files" })))
    end)

    it("uploads 100 MB and downloads it byte-identical", function()
      local src = random_file(work, "big.bin", 100)
      local sum = sha256(src)
      local t0 = time.monotonic()
      local r, err = storage.put_file(src, { prefix = "big" })
      local up = time.monotonic() - t0
      assert.is_table(r, err)
      assert.equal(100 * MB, r.size)
      t0 = time.monotonic()
      assert.is_true(storage.get_file(r.key, work .. "/big.out"))
      local down = time.monotonic() - t0
      assert.equal(sum, sha256(work .. "/big.out"))
      print(("\n  %s: 100 MB upload %.2f s (%.0f MB/s), download %.2f s (%.0f MB/s)")
        :format(b.name, up, 100 / up, down, 100 / down))
      assert.is_true(storage.delete(r.key))
      assert.equal("STORAGE_NOT_FOUND", select(3, storage.head(r.key)))
      os.remove(src)
      os.remove(work .. "/big.out")
    end)

    if b.name == "local" then
      it("keeps objects as files under the uploads directory, written by rename", function()
        local r = assert(storage.put_string("on disk", { prefix = "cases/d" }))
        assert.equal("on disk", helpers.read_file(ctx.dir .. "/" .. r.key))
        assert.same({}, helpers.listdir(ctx.dir .. "/.tmp"), "no temp file left behind")
        local p = assert(storage.ping())
        assert.is_number(p.latency_ms)
        assert.same({}, helpers.listdir(ctx.dir .. "/.tmp"))
      end)

      it("clears what a crash left in its temp directory when it opens, and never lists it",
        function()
        helpers.write_file(ctx.dir .. "/.tmp/put-crashed", "half an upload")
        local all = storage.list("")
        assert.is_true(#all > 0)
        for _, e in ipairs(all) do assert.is_nil(e.key:find("tmp/put%-crashed")) end
        assert.equal("STORAGE_INVALID", select(3, storage.get_string(".tmp/put-crashed")))
        assert(storage.configure { backend = "local", dir = ctx.dir })
        assert.same({}, helpers.listdir(ctx.dir .. "/.tmp"))
      end)

      it("has no presigned URLs", function()
        local r = assert(storage.put_string("x", { prefix = "p" }))
        local url, err, code = storage.presign(r.key, 60)
        assert.is_nil(url)
        assert.equal("STORAGE_UNSUPPORTED", code, err)
      end)
    end

    if b.name == "s3" then
      it("hands out presigned URLs that a plain GET can use", function()
        local r = assert(storage.put_string("presigned bytes\0!", { prefix = "p" }))
        local url = assert(storage.presign(r.key, 300))
        local base = (s3.endpoint .. "/" .. s3.bucket .. "/p/"):gsub("%p", "%%%0")
        assert.matches("^" .. base .. "%x+%?", url)
        assert.matches("X%-Amz%-Expires=300", url)
        assert.matches("X%-Amz%-Signature=%x+$", url)
        local out = work .. "/presigned.out"
        local ok, _, status = helpers.shell(("curl -s -o %s -w '%%{http_code}' %s")
          :format(q(out), q(url)))
        assert.is_true(ok)
        assert.equal("200", status)
        assert.equal("presigned bytes\0!", helpers.read_file(out))
        assert.has_error(function() storage.presign(r.key, 0) end)
        assert.has_error(function() storage.presign(r.key, 604801) end)
      end)

      it("says clearly when the credentials are refused", function()
        assert(storage.configure { backend = "s3", bucket = s3.bucket, endpoint = s3.endpoint,
          access_key = "AKIAWRONGWRONG", secret_key = "nope", max_retries = 0 })
        local v, err, code = storage.put_string("x", { prefix = "denied" })
        assert.is_nil(v)
        assert.equal("STORAGE_DENIED", code)
        assert.matches("bucket " .. s3.bucket .. " refused the credentials", err, 1, true)
        assert.matches("InvalidAccessKeyId", err, 1, true)
        local _, perr, pcode = storage.ping()
        assert.equal("STORAGE_DENIED", pcode, perr)
        assert.equal("closed", (breaker.state("s3") or { state = "closed" }).state,
          "a 403 is not a failure of S3")
        assert(storage.configure { backend = "s3", bucket = s3.bucket, endpoint = s3.endpoint,
          access_key = s3.access_key, secret_key = s3.secret_key, max_retries = 1,
          timeout_s = 30 })
        assert(storage.ping())
      end)

      it("aborts a multipart upload that fails part-way (no object is visible)", function()
        local src = random_file(work, "shrinking.bin", 100)
        -- the file loses its tail while the parts go up: the upload must fail and be aborted
        assert(helpers.shell(("(sleep 0.3; truncate -s 20M %s) >/dev/null 2>&1 &"):format(q(src))))
        local r, err, code = storage.put_file(src, { prefix = "shrink" })
        assert.is_nil(r)
        assert.equal("STORAGE_ERROR", code, err)
        assert.same({}, storage.list("shrink/"))
        -- the abort went out: a DELETE ?uploadId= (s3rver does not implement
        -- AbortMultipartUpload and answers 405, so its parts stay in its own directory; AWS and
        -- MinIO free them)
        assert.matches("%?uploadId=%x+ 405 ", s3:log())
        os.remove(src)
      end)

      it("leaves nothing half-stored when the server dies mid-upload", function()
        local src = random_file(work, "dies.bin", 100)
        assert(helpers.shell(("(sleep 0.4; kill -9 %d) >/dev/null 2>&1 &"):format(s3.pid)))
        local t0 = time.monotonic()
        local r, err, code = storage.put_file(src, { prefix = "dies" })
        assert.is_nil(r)
        assert.equal("STORAGE_UNAVAILABLE", code, err)
        assert.is_true(time.monotonic() - t0 < 30)
        s3.proc:wait(5)
        -- while it is down, the breaker opens after CIRCUIT_BREAKER_FAIL_THRESHOLD failures and
        -- then answers at once, without a network call
        local msg = helpers.wait_until(function()
          local _, e, c = storage.ping()
          assert.equal("STORAGE_UNAVAILABLE", c)
          return e:find("circuit breaker", 1, true) and e
        end, 20, 0)
        assert.matches("bucket " .. s3.bucket, msg, 1, true)
        local t1 = time.monotonic()
        assert.equal("STORAGE_UNAVAILABLE", select(3, storage.head("dies/x")))
        assert.is_true(time.monotonic() - t1 < 0.05, "an open breaker answers at once")
        s3:restart()
        breaker.reset("s3")
        assert(storage.ping())
        assert.same({}, storage.list("dies/"), "no object visible after the restart")
        os.remove(src)
      end)
    end
  end)
end

describe("storage settings", function()
  lazy_teardown(helpers.cleanup)

  local function check_config(env)
    local parts = {}
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. q(v) end
    local ok, code, out = helpers.shell("env " .. table.concat(parts, " ") .. " "
      .. q(helpers.bin()) .. " check-config 2>&1")
    return ok, code, out
  end

  it("refuses STORAGE_PROVIDER=s3 without a bucket or credentials", function()
    local ok, code, out = check_config { STORAGE_PROVIDER = "s3", AWS_ACCESS_KEY_ID = "",
      AWS_SECRET_ACCESS_KEY = "", S3_BUCKET_NAME = "" }
    assert.is_false(ok)
    assert.equal(2, code)
    assert.matches("STORAGE_PROVIDER: s3 needs S3_BUCKET_NAME, AWS_ACCESS_KEY_ID, "
      .. "AWS_SECRET_ACCESS_KEY", out, 1, true)
  end)

  it("takes STORAGE_BACKEND as an alias and masks the secrets", function()
    local ok, _, out = check_config { STORAGE_BACKEND = "s3", S3_BUCKET_NAME = "b1",
      AWS_ACCESS_KEY_ID = "AKIDSHOWN", AWS_SECRET_ACCESS_KEY = "supersecretvalue",
      AWS_SESSION_TOKEN = "tokenvalue" }
    assert.is_true(ok, out)
    assert.matches("STORAGE_PROVIDER%s+s3", out)
    assert.matches("AWS_ACCESS_KEY_ID%s+AKIDSHOWN", out)
    assert.is_nil(out:find("supersecretvalue", 1, true))
    assert.is_nil(out:find("tokenvalue", 1, true))
    assert.matches("S3_PART_SIZE_MB%s+8", out)
  end)

  it("refuses a part size below 5 MB and a bad endpoint", function()
    local ok, _, out = check_config { S3_PART_SIZE_MB = "4", S3_ENDPOINT_URL = "ftp://x" }
    assert.is_false(ok)
    assert.matches("S3_PART_SIZE_MB", out, 1, true)
    assert.matches("S3_ENDPOINT_URL: expected http(s)://host[:port]", out, 1, true)
  end)

  it("stops serve with a clear message when s3 lacks its settings", function()
    local dir = helpers.tmpdir("fm-s3cfg-")
    local ok, code, out = helpers.shell(("env FM_DATA_DIR=%s FM_PORT=0 STORAGE_PROVIDER=s3 "
      .. "AWS_ACCESS_KEY_ID= AWS_SECRET_ACCESS_KEY= S3_BUCKET_NAME= %s serve 2>&1")
      :format(q(dir), q(helpers.bin())))
    assert.is_false(ok)
    assert.equal(2, code)
    assert.matches("s3 needs S3_BUCKET_NAME", out, 1, true)
  end)
end)
