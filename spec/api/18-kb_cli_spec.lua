-- `faultmaven kb export | import | reindex`: a knowledge base exported from one engine and imported
-- into a fresh data dir answers searches as the original did (SQLite to SQLite exactly, SQLite to
-- PostgreSQL with the same best documents); reindex re-embeds every chunk at a new dimension.
local helpers = require "spec.helpers"
local json = require "fm.json"

local BOUNDARY = "fmkbclispecboundary"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local FILLER = " The on-call engineer follows these steps in order and escalates to the owning "
  .. "team when a step does not hold."

local PACK = {
  ["disk-full.md"] = "---\ntitle: Disk full\ndocument_type: runbook\ncategory: infrastructure\n"
    .. "tags: disk\n---\n\n# Disk full\n\n## Symptoms\n\nWrites fail with No space left on "
    .. "device; df shows 100 %." .. FILLER .. "\n\n## Fix\n\nRemove rotated logs, find deleted "
    .. "files held open with lsof +L1." .. FILLER .. "\n",
  ["tls.md"] = "---\ntitle: Expired certificate\ndocument_type: runbook\ncategory: security\n"
    .. "tags: tls, x509\n---\n\n# Expired certificate\n\n## Symptoms\n\nx509: certificate has "
    .. "expired or is not yet valid." .. FILLER .. "\n\n## Fix\n\nRenew with the ACME client and "
    .. "reload the proxy." .. FILLER .. "\n",
  ["dns.md"] = "---\ntitle: DNS failures\ndocument_type: runbook\ncategory: network\ntags: dns\n"
    .. "---\n\n# DNS failures\n\n## Symptoms\n\ngetaddrinfo ENOTFOUND, SERVFAIL from the "
    .. "resolver." .. FILLER .. "\n",
}

local QUERIES = { "No space left on device", "certificate has expired", "ENOTFOUND resolver",
                  "engineer escalates to the owning team", "memory leak in the queue consumer" }

describe("faultmaven kb", function()
  local pack_dir, base
  lazy_setup(function()
    base = helpers.tmpdir("fm-kbcli-")
    pack_dir = helpers.mkdir(base .. "/kb")
    for name, text in pairs(PACK) do write(pack_dir .. "/" .. name, text) end
  end)
  lazy_teardown(helpers.cleanup)

  -- Runs `faultmaven kb ARGS` with env; returns exit ok, code, output (stdout and stderr).
  local function kb(env, args, wrap)
    local parts = { "cd", q(helpers.root), "&&", "env" }
    for k, v in pairs(env) do parts[#parts + 1] = q(k .. "=" .. v) end
    parts[#parts + 1] = q(helpers.bin())
    parts[#parts + 1] = "kb"
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    local cmd = table.concat(parts, " ")
    if wrap then cmd = wrap(cmd) end
    return helpers.shell(cmd .. " 2>&1")
  end

  local function env_of(db_url, data_dir, extra)
    local e = { DATABASE_URL = db_url, FM_DATA_DIR = data_dir, FM_HOME = helpers.root,
                KB_PACK_DIR = pack_dir, LOG_LEVEL = "warn" }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  local function start(env)
    env.LOG_LEVEL = "debug"
    env.PASSWORD_HASH_MEMORY_KIB, env.PASSWORD_HASH_OPSLIMIT = "8192", "1"
    return helpers.engine.start { env = env }
  end

  local function login(engine, name)
    local r = assert(engine:request("POST", "/api/v1/auth/dev-login",
      { json = { username = name } }))
    assert.equal(200, r.status, r.body)
    return r.json().access_token
  end

  local function search_all(engine, token)
    local out = {}
    for i, query in ipairs(QUERIES) do
      local r = assert(engine:request("POST", "/api/v1/knowledge/search", {
        json = { query = query, limit = 10, similarity_threshold = 0 },
        headers = { Authorization = "Bearer " .. token } }))
      assert.equal(200, r.status, r.body)
      out[i] = r.json().results
    end
    return out
  end

  local function upload(engine, token, scope, name, text)
    local body = table.concat({
      "--" .. BOUNDARY, 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"',
      "Content-Type: text/markdown", "", text,
      "--" .. BOUNDARY, 'Content-Disposition: form-data; name="title"', "", name,
      "--" .. BOUNDARY, 'Content-Disposition: form-data; name="document_type"', "", "runbook",
      "--" .. BOUNDARY, 'Content-Disposition: form-data; name="scope"', "", scope,
      "--" .. BOUNDARY .. "--", "" }, "\r\n")
    local r = assert(engine:request("POST", "/api/v1/knowledge/documents", { body = body,
      headers = { Authorization = "Bearer " .. token,
                  ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY } }))
    assert.equal(201, r.status, r.body)
    local id = r.json().document_id
    assert.is_truthy(helpers.wait_until(function()
      local d = assert(engine:request("GET", "/api/v1/knowledge/documents/" .. id,
        { headers = { Authorization = "Bearer " .. token } }))
      return d.status == 200 and d.json().status == "ready"
    end, 30, 0.05), "document " .. id .. " not indexed")
    return id
  end

  local src_url, src_dir, file, before, global_id

  it("exports every document with its chunks and vectors, a count on a pipe", function()
    src_url = "sqlite:///" .. helpers.tmpdir("fm-kbcli-db-") .. "/a.db"
    src_dir = helpers.mkdir(base .. "/data-a")
    local engine = start(env_of(src_url, src_dir))
    local admin = login(engine, "kb-admin") -- the first user of a local engine is an admin
    global_id = upload(engine, admin, "global", "zookeeper.md", "# ZooKeeper session expired\n\n"
      .. "Clients log SessionExpiredException; the ensemble lost quorum." .. FILLER .. "\n")
    before = search_all(engine, login(engine, "kb-reader"))
    assert.is_true(#before[1] >= 1)
    assert.equal("exit", (engine:stop()))

    file = base .. "/kb.jsonl"
    local ok, code, out = kb(env_of(src_url, src_dir), { "export", file })
    assert.is_true(ok, tostring(code) .. ": " .. out)
    assert.matches("exported 4 documents, %d+ chunks %(%d+ vectors%) to ", out)
    assert.is_nil(out:find("\r", 1, true)) -- no bar when stderr is not a terminal
    local lines = {}
    for line in io.lines(file) do lines[#lines + 1] = json.decode(line) end
    assert.equal(5, #lines)
    assert.equal("faultmaven-kb", lines[1].format)
    assert.equal(1, lines[1].version)
    assert.equal(4, lines[1].documents)
    assert.is_string(lines[1].embedding_model)
    local dim = lines[1].dim
    local chunks, ids = 0, {}
    for i = 2, #lines do
      local d = lines[i]
      ids[d.document.id] = true
      assert.is_string(d.document.content)
      for _, c in ipairs(d.chunks) do
        chunks = chunks + 1
        assert.is_string(c.content)
        assert.equal(4 * dim, #require("fm.crypto").b64url_decode(c.vector))
      end
    end
    assert.is_true(chunks >= 6)
    assert.is_true(ids[global_id])
    assert.matches(string.format("exported 4 documents, %d chunks %%(%d vectors%%)", chunks,
      chunks), out)
  end)

  it("draws a progress bar on a terminal", function()
    local ok, _, out = kb(env_of(src_url, src_dir), { "export", base .. "/tty.jsonl" },
      function(cmd) return "script -qec " .. q(cmd) .. " /dev/null" end)
    assert.is_true(ok, out)
    assert.matches("\rexport %[#+%] 100%% 4/4", out)
    assert.matches("exported 4 documents", out)
  end)

  it("imports into a fresh data dir: the same search results", function()
    local url = "sqlite:///" .. helpers.tmpdir("fm-kbcli-db-") .. "/b.db"
    local dir = helpers.mkdir(base .. "/data-b")
    -- an engine ran here first: it loaded the pack under ids of its own, which the import replaces
    local first = start(env_of(url, dir))
    assert.equal("exit", (first:stop()))
    local ok, code, out = kb(env_of(url, dir), { "import", file })
    assert.is_true(ok, tostring(code) .. ": " .. out)
    assert.matches("imported 4 documents, %d+ chunks %(0 embedded again%)", out)
    assert.is_nil(out:find("skipped", 1, true))
    -- importing again replaces, never duplicates
    ok, code, out = kb(env_of(url, dir), { "import", file })
    assert.is_true(ok, tostring(code) .. ": " .. out)
    local engine = start(env_of(url, dir))
    local token = login(engine, "kb-reader")
    local after = search_all(engine, token)
    for i = 1, #QUERIES do
      assert.equal(#before[i], #after[i], QUERIES[i])
      for j, r in ipairs(before[i]) do
        assert.equal(r.document_id, after[i][j].document_id, QUERIES[i])
        assert.equal(r.metadata.chunk_id, after[i][j].metadata.chunk_id)
        assert.near(r.similarity_score, after[i][j].similarity_score, 0.0005)
      end
    end
    local r = assert(engine:request("GET", "/api/v1/knowledge/documents?limit=100",
      { headers = { Authorization = "Bearer " .. token } }))
    assert.equal(4, r.json().total_count)
    assert.equal("exit", (engine:stop()))
  end)

  it("imports into PostgreSQL with another embedding dimension: re-embedded, same best hits; "
    .. "documents of owners unknown there: personal skipped, global kept without owner",
    function()
      -- two more documents, as another engine would have exported them
      local lines = {}
      for line in io.lines(file) do lines[#lines + 1] = line end
      local src
      for i = 2, #lines do
        local d = json.decode(lines[i])
        if d.document.id == global_id then src = d end
      end
      local function variant(id, scope, word)
        local d = json.decode(json.encode(src))
        d.document.id, d.document.scope, d.document.owner_id = id, scope, "user_gone"
        d.document.content = d.document.content .. " " .. word
        for k, c in ipairs(d.chunks) do
          c.id = id:gsub("^doc_", "chk_") .. k
          c.content = c.content .. " " .. word
        end
        return json.encode(d)
      end
      local mine = "doc_" .. string.rep("a", 32)
      local theirs = "doc_" .. string.rep("b", 32)
      lines[1] = lines[1]:gsub('"documents":4', '"documents":6')
      lines[#lines + 1] = variant(mine, "personal", "quokkaword")
      lines[#lines + 1] = variant(theirs, "global", "wallabyword")
      local file2 = base .. "/kb2.jsonl"
      write(file2, table.concat(lines, "\n") .. "\n")

      local pg = helpers.db_backends()[2]
      local url = pg.url()
      local dir = helpers.mkdir(base .. "/data-pg")
      local ok, code, out = kb(env_of(url, dir, { EMBEDDING_DIM = "512" }), { "import", file2 })
      assert.is_true(ok, tostring(code) .. ": " .. out)
      local n = tonumber(out:match("imported 5 documents, (%d+) chunks"))
      assert.is_number(n, out)
      assert.matches("%(" .. n .. " embedded again%)", out)
      assert.matches("1 skipped %(their owner is not a user here%)", out)
      local engine = start(env_of(url, dir, { EMBEDDING_DIM = "512" }))
      local token = login(engine, "kb-reader")
      local after = search_all(engine, token)
      for i = 1, 3 do assert.equal(before[i][1].document_id, after[i][1].document_id) end
      local function get(id)
        return assert(engine:request("GET", "/api/v1/knowledge/documents/" .. id,
          { headers = { Authorization = "Bearer " .. token } }))
      end
      assert.equal(404, get(mine).status)
      local g = get(theirs)
      assert.equal(200, g.status)
      assert.equal(json.null, g.json().owner_id)
      local r = assert(engine:request("POST", "/api/v1/knowledge/search", {
        json = { query = "wallabyword" }, headers = { Authorization = "Bearer " .. token } }))
      assert.equal(theirs, r.json().results[1].document_id)
      assert.equal("exit", (engine:stop()))
    end)

  it("reindex re-embeds every chunk and fixes a dimension mismatch", function()
    local env = env_of(src_url, src_dir, { EMBEDDING_DIM = "512" })
    local ok, code, out = kb(env, { "reindex" })
    assert.is_true(ok, tostring(code) .. ": " .. out)
    local n = tonumber(out:match("reindexed (%d+) chunks with [^ ]+ %(dim 512%)"))
    assert.is_number(n, out)
    -- the store now holds one 512-dimension vector per chunk
    local script = base .. "/count.lua"
    write(script, [[
      local db, vector = require "fm.db", require "fm.vector"
      local rows = assert(db.query("SELECT id FROM knowledge_chunks"))
      local bad = 0
      for _, r in ipairs(rows) do
        local v = vector.get("knowledge", r.id)
        if not v or #v.vector ~= 4 * 512 then bad = bad + 1 end
      end
      print(string.format("chunks=%d vectors=%d bad=%d", #rows, vector.count("knowledge"), bad))
    ]])
    local parts = { "cd", q(helpers.root), "&&", "env" }
    for k, v in pairs(env) do parts[#parts + 1] = q(k .. "=" .. v) end
    ok, code, out = helpers.shell(table.concat(parts, " ") .. " " .. q(helpers.bin()) .. " exec "
      .. q(script) .. " 2>&1")
    assert.is_true(ok, tostring(code) .. ": " .. out)
    assert.matches(string.format("chunks=%d vectors=%d bad=0", n, n), out)
    -- and the engine searches with it
    local engine = start(env)
    local after = search_all(engine, login(engine, "kb-reader2"))
    for i = 1, 3 do assert.equal(before[i][1].document_id, after[i][1].document_id) end
    assert.equal("exit", (engine:stop()))
  end)

  it("refuses bad usage and a file that is not an export", function()
    local env = env_of(src_url, src_dir)
    local ok, code = kb(env, {})
    assert.is_false(ok)
    assert.equal(2, code)
    ok, code = kb(env, { "export" })
    assert.is_false(ok)
    assert.equal(2, code)
    local junk = base .. "/junk.jsonl"
    write(junk, '{"hello": 1}\n')
    local out
    ok, code, out = kb(env, { "import", junk })
    assert.is_false(ok)
    assert.equal(1, code)
    assert.matches("not a faultmaven kb export", out)
    write(junk, '{"format":"faultmaven-kb","version":1}\n{"document": 5}\n')
    ok, code, out = kb(env, { "import", junk })
    assert.is_false(ok)
    assert.equal(1, code)
    assert.matches("junk.jsonl:2: not a document of a kb export %(nothing imported%)", out)
    write(junk, '{"format":"faultmaven-kb","version":2}\n')
    ok, code, out = kb(env, { "import", junk })
    assert.is_false(ok)
    assert.equal(1, code)
    assert.matches("export version 2", out)
    -- the refused imports above ran at 384 dimensions and touched nothing: the 512-dimension
    -- collection the reindex made is still there (an engine at 512 starts on it). And the
    -- embedded store of a running engine is locked: refused, the file left as it was
    env = env_of(src_url, src_dir, { EMBEDDING_DIM = "512" })
    local engine = start(env_of(src_url, src_dir, { EMBEDDING_DIM = "512" }))
    write(base .. "/keep.jsonl", "keep")
    ok, code, out = kb(env, { "export", base .. "/keep.jsonl" })
    assert.is_false(ok)
    assert.equal(1, code)
    assert.matches("open in another process", out)
    assert.equal("keep", helpers.read_file(base .. "/keep.jsonl"))
    assert.equal("exit", (engine:stop()))
  end)
end)
