-- Bad and oversized input: malformed JSON, body caps, URL and header caps, multipart spooling and
-- truncation. After each group the engine must still answer GET / with 200.

local helpers = require "spec.helpers"

local KiB, MiB = 1024, 1024 * 1024

describe("request limits", function()
  local engine

  lazy_setup(function()
    engine = helpers.engine.start()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  local function still_serving()
    local res = assert(engine:get("/"))
    assert.equal(200, res.status)
    assert.equal("faultmaven", res.json().name)
    assert.is_true(engine:alive())
  end

  local function post_json_text(text, content_type)
    return assert(engine:post("/test/echo", {
      headers = { ["Content-Type"] = content_type or "application/json" },
      body = text,
    }))
  end

  describe("JSON bodies", function()
    it("decodes a well-formed body (the echo route works)", function()
      local res = post_json_text('{"a":[1,2,{"b":null}],"s":"h\\u00e9"}')
      assert.equal(200, res.status)
      local body = res.json()
      assert.same({ 1, 2 }, { body.json.a[1], body.json.a[2] })
      assert.equal("hé", body.json.s)
    end)

    local malformed = {
      ["truncated object"] = '{"a":',
      ["trailing garbage"] = '{"a":1} x',
      ["two documents"] = '{"a":1}{"b":2}',
      ["invalid UTF-8"] = '{"a":"\xff\xfe"}',
      ["bare nul"] = "nul",
      ["single quotes"] = "{'a':1}",
      ["unterminated string"] = '{"a":"b',
      ["lone comma"] = "[1,]",
    }
    for what, text in pairs(malformed) do
      it("answers 400 for malformed JSON: " .. what, function()
        local res = post_json_text(text)
        assert.equal(400, res.status)
        local body = res.json()
        assert.is_string(body.detail)
        assert.matches("^malformed JSON body", body.detail)
      end)
    end

    it("answers 400 for 2000 nested arrays", function()
      local res = post_json_text(string.rep("[", 2000) .. string.rep("]", 2000))
      assert.equal(400, res.status)
      assert.is_string(res.json().detail)
    end)

    it("answers 400 for 2000 nested objects", function()
      local res = post_json_text(string.rep('{"a":', 2000) .. "1" .. string.rep("}", 2000))
      assert.equal(400, res.status)
    end)

    it("accepts moderate nesting (depth 20)", function()
      local res = post_json_text(string.rep("[", 20) .. string.rep("]", 20))
      assert.equal(200, res.status)
    end)

    it("decodes application/json with a charset parameter", function()
      local res = post_json_text('{"k":"v"}', "application/json; charset=utf-8")
      assert.equal(200, res.status)
      assert.same({ k = "v" }, res.json().json)
    end)

    it("does not decode JSON sent as text/plain (and does not choke on it)", function()
      local res = post_json_text('{"k":', "text/plain")
      assert.equal(200, res.status)
      local body = res.json()
      assert.is_nil(body.json)
      assert.equal(5, body.body_len)
    end)

    it("treats a JSON body without Content-Type as opaque", function()
      local res = assert(engine:post("/test/echo", { body = '{"k":"v"}' }))
      assert.equal(200, res.status)
      assert.is_nil(res.json().json)
      assert.equal(9, res.json().body_len)
    end)

    it("answers an empty application/json body without a 5xx", function()
      local res = post_json_text("")
      assert.truthy(res.status == 200 or res.status == 400, "status " .. res.status)
    end)

    it("keeps serving after bad JSON", still_serving)
  end)

  describe("body size", function()
    local head = "POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    it("refuses a Content-Length over 1 MiB before the body is sent", function()
      local c = engine:client()
      local t0 = helpers.now()
      assert(c:send_raw(head .. "Content-Length: " .. 2 * MiB .. "\r\n\r\n"))
      local res = assert(c:read_response({ timeout = 3 }))
      assert.equal(413, res.status)
      assert.is_true(helpers.now() - t0 < 3)
      local body = res.json()
      assert.equal("request body too large", body.detail)
      assert.equal(MiB, body.limit)
      c:close()
    end)

    it("answers 413 instead of 100 Continue when the client expects one", function()
      local c = engine:client()
      assert(c:send_raw(head .. "Expect: 100-continue\r\nContent-Length: " .. 5 * MiB
        .. "\r\n\r\n"))
      local res = assert(c:read_response({ timeout = 3 }))
      assert.equal(413, res.status)
      c:close()
    end)

    it("accepts a body of exactly 1 MiB and refuses 1 MiB + 1 byte", function()
      local res = assert(engine:post("/test/echo", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        body = string.rep("a", MiB),
      }))
      assert.equal(200, res.status)
      assert.equal(MiB, res.json().body_len)
      res = assert(engine:post("/test/echo", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        body = string.rep("a", MiB + 1),
      }))
      assert.equal(413, res.status)
    end)

    it("answers 413 to a chunked body that grows past the cap while streaming", function()
      local chunks = {}
      local piece = string.rep("z", 64 * KiB)
      for i = 1, 48 do chunks[i] = piece end -- 3 MiB in total
      local c = engine:client()
      local res = assert(c:request("POST", "/test/echo", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        chunks = chunks,
      }))
      assert.equal(413, res.status)
      assert.equal("request body too large", res.json().detail)
      c:close()
    end)

    it("accepts a small chunked body", function()
      local c = engine:client()
      local res = assert(c:request("POST", "/test/echo", {
        headers = { ["Content-Type"] = "application/json" },
        chunks = { '{"a"', ':[1,', '2]}' },
      }))
      assert.equal(200, res.status)
      assert.same({ a = { 1, 2 } }, res.json().json)
      assert.equal(11, res.json().body_len)
      c:close()
    end)

    it("applies a route's own cap with a trailing slash too, as the router does", function()
      local res = assert(engine:post("/test/big/", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        body = string.rep("b", 2 * MiB),
      }))
      assert.equal(200, res.status)
      assert.equal(2 * MiB, res.json().len)
    end)

    it("lets a route raise its own cap: /test/big takes 4 MiB", function()
      local res = assert(engine:post("/test/big", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        body = string.rep("b", 4 * MiB),
      }))
      assert.equal(200, res.status)
      assert.equal(4 * MiB, res.json().len)
    end)

    it("refuses 9 MiB on /test/big with its own limit", function()
      local res = assert(engine:post("/test/big", {
        headers = { ["Content-Type"] = "application/octet-stream" },
        body = string.rep("b", 9 * MiB),
      }))
      assert.equal(413, res.status)
      assert.equal(8 * MiB, res.json().limit)
    end)

    it("keeps serving after oversized bodies", still_serving)
  end)

  describe("URL and header size", function()
    it("answers 414 for a URL longer than 8192 bytes", function()
      local res = assert(engine:get("/" .. string.rep("a", 9000)))
      assert.equal(414, res.status)
    end)

    it("answers 414 for a long query string", function()
      local res = assert(engine:get("/?q=" .. string.rep("a", 9000)))
      assert.equal(414, res.status)
    end)

    it("does not refuse a 4000-byte URL (404 for an unknown path)", function()
      local res = assert(engine:get("/" .. string.rep("a", 4000)))
      assert.equal(404, res.status)
    end)

    -- Past the connection pool (FM_MAX_HEADER_BYTES + 4 KiB) libmicrohttpd answers 431 itself
    -- and closes at once; a client still writing its headers may then see a reset before it
    -- reads the 431. Either way nothing reaches Lua and the server keeps serving.
    it("refuses a 40 KiB header: 431, or a reset while the client still writes", function()
      local c = engine:client()
      local big = { ["X-Big"] = string.rep("b", 40 * KiB) }
      local res, err = c:request("GET", "/", { headers = big })
      if res then
        assert.equal(431, res.status)
      else
        assert.matches("closed", err)
      end
      c:close()
      assert.equal(200, assert(engine:get("/")).status)
    end)

    it("answers 431 for 40 headers of 1 KiB", function()
      local headers = {}
      for i = 1, 40 do headers[i] = { "X-H" .. i, string.rep("h", KiB) } end
      local res = assert(engine:get("/", { headers = headers }))
      assert.equal(431, res.status)
    end)

    -- FM_MAX_HEADER_BYTES defaults to 16 KiB: just under it passes, just over it is a 431
    it("accepts 15 KiB of headers", function()
      local res = assert(engine:get("/", { headers = { ["X-Mid"] = string.rep("m", 15 * KiB) } }))
      assert.equal(200, res.status)
    end)

    it("answers 431 for 17 KiB of headers", function()
      local res = assert(engine:get("/", { headers = { ["X-Mid"] = string.rep("m", 17 * KiB) } }))
      assert.equal(431, res.status)
    end)

    it("keeps serving after oversized URLs and headers", still_serving)
  end)

  describe("multipart", function()
    local boundary = "----fmspecBoundary7MA4YWxk"

    local function part(name, content, filename, ctype)
      local disp = ('Content-Disposition: form-data; name="%s"'):format(name)
      if filename then disp = disp .. ('; filename="%s"'):format(filename) end
      local lines = { "--" .. boundary, disp }
      if ctype then lines[#lines + 1] = "Content-Type: " .. ctype end
      return table.concat(lines, "\r\n") .. "\r\n\r\n" .. content .. "\r\n"
    end

    local function closing()
      return "--" .. boundary .. "--\r\n"
    end

    local function mp_headers()
      return { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
    end

    local function tmp_files()
      return helpers.listdir(engine.data_dir .. "/tmp")
    end

    local function no_tmp_files_left()
      local ok = pcall(helpers.wait_until, function() return #tmp_files() == 0 end, 10)
      -- on failure, say which files stayed (and what the engine logged about them)
      assert(ok, "temp files left in " .. engine.data_dir .. "/tmp: "
        .. table.concat(tmp_files(), ", ") .. "\n" .. engine:log_tail(15))
    end

    it("keeps an empty part apart from a same-named part after it", function()
      local body = part("a", "") .. part("a", "second") .. part("c", "") .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(200, res.status)
      local form = res.json().form
      assert.equal(3, #form)
      assert.same({ "a", 0, "" }, { form[1].name, form[1].size, form[1].content })
      assert.same({ "a", 6, "second" }, { form[2].name, form[2].size, form[2].content })
      assert.same({ "c", 0 }, { form[3].name, form[3].size })
    end)

    it("keeps a small part in memory and spools a 200 KiB part, then removes its file", function()
      local big = ("0123456789abcdef"):rep(200 * KiB / 16)
      local body = part("query", "hello world")
        .. part("files", big, "big.log", "text/plain")
        .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(200, res.status)
      local form = res.json().form
      assert.is_table(form)
      assert.equal(2, #form)

      local small = form[1]
      assert.equal("query", small.name)
      assert.equal(11, small.size)
      assert.is_false(small.spooled)
      assert.equal("hello world", small.content)

      local file = form[2]
      assert.equal("files", file.name)
      assert.equal("big.log", file.filename)
      assert.equal(200 * KiB, file.size)
      assert.is_true(file.spooled)
      assert.is_string(file.file)
      assert.equal(engine.data_dir .. "/tmp/", file.file:sub(1, #engine.data_dir + 5))
      assert.equal(big:sub(1, 64), file.content)

      helpers.wait_until(function() return io.open(file.file) == nil end, 5)
      assert.is_nil(io.open(file.file))
      no_tmp_files_left()
    end)

    it("keeps a part of exactly 64 KiB in memory", function()
      local body = part("f", string.rep("q", 64 * KiB), "f.txt") .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(200, res.status)
      local f = res.json().form[1]
      assert.equal(64 * KiB, f.size)
      assert.is_false(f.spooled)
    end)

    it("cleans up when the client closes half way through a spooled part", function()
      local content = string.rep("x", 300 * KiB)
      local body = part("files", content, "cut.log", "text/plain") .. closing()
      local c = engine:client()
      local head = table.concat({
        "POST /test/echo HTTP/1.1",
        "Host: x",
        "Content-Type: multipart/form-data; boundary=" .. boundary,
        "Content-Length: " .. #body,
      }, "\r\n") .. "\r\n\r\n"
      assert(c:send_raw(head .. body:sub(1, 150 * KiB)))
      -- the part is past 64 KiB, so it is being spooled: the file exists before the cut
      helpers.wait_until(function() return #tmp_files() > 0 end, 3)
      c:close()
      no_tmp_files_left()
    end)

    it("answers 400 (or closes) for a body without closing boundary, leaving no files", function()
      local body = part("query", "q") .. part("files", string.rep("y", 100 * KiB), "x.log")
      local c = engine:client()
      local res = c:request("POST", "/test/echo", { headers = mp_headers(), body = body })
      if res then
        assert.equal(400, res.status)
        assert.is_string(res.json().detail)
      else
        assert.is_true(c:is_closed(2))
      end
      c:close()
      no_tmp_files_left()
    end)

    it("spools two big parts to two files and removes both", function()
      local body = part("a", string.rep("a", 100 * KiB), "a.txt")
        .. part("b", string.rep("b", 100 * KiB), "b.txt") .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(200, res.status)
      local form = res.json().form
      assert.equal(2, #form)
      assert.is_true(form[1].spooled and form[2].spooled)
      assert.not_equal(form[1].file, form[2].file)
      assert.equal(("b"):rep(64), form[2].content)
      no_tmp_files_left()
    end)

    it("never uses the client's filename for the spool file", function()
      local body = part("f", string.rep("e", 100 * KiB), "../../../escape.txt") .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(200, res.status)
      local f = res.json().form[1]
      assert.equal("../../../escape.txt", f.filename)
      assert.equal(engine.data_dir .. "/tmp/", f.file:sub(1, #engine.data_dir + 5))
      assert.is_nil(f.file:find("..", 1, true))
      assert.is_nil(f.file:find("escape", 1, true))
      no_tmp_files_left()
    end)

    it("answers 413 for a multipart upload over the cap and leaves no files", function()
      local body = part("f", string.rep("x", 2 * MiB), "big.bin") .. closing()
      local res = assert(engine:post("/test/echo", { headers = mp_headers(), body = body }))
      assert.equal(413, res.status)
      local c = engine:client()
      res = assert(c:request("POST", "/test/echo", { headers = mp_headers(), chunks = {
        body:sub(1, MiB / 2), body:sub(MiB / 2 + 1, 3 * MiB / 2), body:sub(3 * MiB / 2 + 1),
      } }))
      assert.equal(413, res.status)
      c:close()
      no_tmp_files_left()
    end)

    it("answers 400 for a multipart body without any boundary line", function()
      local res = assert(engine:post("/test/echo", {
        headers = mp_headers(), body = "garbage that has no boundary at all",
      }))
      assert.equal(400, res.status)
    end)

    it("answers 400 for multipart without a boundary parameter", function()
      local res = assert(engine:post("/test/echo", {
        headers = { ["Content-Type"] = "multipart/form-data" },
        body = part("a", "b") .. closing(),
      }))
      assert.equal(400, res.status)
    end)

    it("keeps serving after truncated multipart", still_serving)
  end)
end)
