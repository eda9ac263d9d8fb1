-- Knowledge documents (API.md Tiers 1 and 2) against a real engine, on SQLite and PostgreSQL:
-- every route, the scope rules on every route, bad input, ingestion by the jobs runner up to
-- `ready` with the chunks, the full-text rows and the vectors in agreement, and kill -9 during
-- the ingestion of a large document: after a restart the index and the tables agree.
local helpers = require "spec.helpers"
local db = require "fm.db"

local BOUNDARY = "----fmKbSpec41c2"
local MiB = 1024 * 1024

local function part(name, content, filename, ctype)
  local disp = ('Content-Disposition: form-data; name="%s"'):format(name)
  if filename then disp = disp .. ('; filename="%s"'):format(filename) end
  local lines = { "--" .. BOUNDARY, disp }
  if ctype then lines[#lines + 1] = "Content-Type: " .. ctype end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. content .. "\r\n"
end

local function form(parts)
  return table.concat(parts) .. "--" .. BOUNDARY .. "--\r\n"
end

local RUNBOOK = table.concat({
  "# Disk full", "",
  "The disk of a host or a volume is full: writes fail with ENOSPC and services crash.", "",
  "## Symptoms", "",
  "Logs say `No space left on device`. The df command shows 100% use on the volume.", "",
  "## Fix", "",
  "Remove old logs with logrotate, grow the volume, or move the data to a larger disk. Check",
  "inodes too with df -i: many small files can exhaust them before the bytes run out.", "" },
  "\n")

local function sorted_equal(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

for _, backend in ipairs(helpers.db_backends()) do
  describe("knowledge documents on " .. backend.name, function()
    local engine, url, data_dir
    local tok = {}

    local function req(method, path, opts)
      opts = opts or {}
      opts.headers = opts.headers or {}
      local t = opts.as == nil and tok.alice or tok[opts.as]
      if opts.as ~= false and t then opts.headers.Authorization = "Bearer " .. t end
      return assert(engine:request(method, path, opts))
    end

    local function upload(fields, file, as)
      local parts = {}
      for _, k in ipairs({ "title", "document_type", "scope", "category", "tags", "source_url",
                           "description" }) do
        if fields[k] then parts[#parts + 1] = part(k, fields[k]) end
      end
      if file then parts[#parts + 1] = part("file", file.content, file.name, file.ctype) end
      return req("POST", "/api/v1/knowledge/documents", { as = as, body = form(parts),
        headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY } })
    end

    local function new_doc(fields, as, content, name)
      fields.document_type = fields.document_type or "runbook"
      local r = upload(fields, { content = content or RUNBOOK, name = name or "disk.md" }, as)
      assert.equal(201, r.status, r.body)
      return r.json()
    end

    -- the document once it is ready and its job done; on a timeout, says where it stopped
    local function wait_ready(id, as)
      local last
      local ok, res = pcall(helpers.wait_until, function()
        local d = req("GET", "/api/v1/knowledge/documents/" .. id, { as = as }).json()
        last = d
        if d.status == "failed" then error("ingestion failed: " .. tostring(d.error)) end
        return d.status == "ready" and d.ingestion.job_state == "done" and d or nil
      end, 30, 0.05)
      if ok then return res end
      error(("%s\ndocument: %s %s, job: %s\nlog tail:\n%s"):format(tostring(res),
        tostring(last and last.status), tostring(last and last.error),
        require("fm.json").encode(last and last.ingestion or {}), engine:log_tail(15)), 2)
    end

    local function index()
      local r = req("GET", "/test/kb/index", { as = false })
      assert.equal(200, r.status, r.body)
      return r.json()
    end

    -- the chunks, the full-text rows and the vectors name the same chunk ids, once no
    -- ingestion is under way (a document between its chunks and its vectors is not a fault)
    local function assert_index_agrees()
      local ix = helpers.wait_until(function()
        local x = index()
        for _, j in ipairs(x.jobs) do
          if j.state == "queued" or j.state == "running" then return nil end
        end
        return x
      end, 30, 0.05)
      if type(ix.fts) == "table" then
        assert.is_true(sorted_equal(ix.chunks, ix.fts), "full-text rows differ from the chunks: "
          .. #ix.chunks .. " chunks, " .. #ix.fts .. " rows")
      end
      if type(ix.vectors) == "table" then
        assert.is_true(sorted_equal(ix.chunks, ix.vectors), "vectors differ from the chunks: "
          .. #ix.chunks .. " chunks, " .. #ix.vectors .. " vectors")
      end
      return ix
    end

    local function start(env_extra)
      local env = { DATABASE_URL = url, FM_DATA_DIR = data_dir, FM_WORKERS = "2",
        MAX_UPLOAD_SIZE_MB = "1", KB_PACK_DIR = "off", FM_JOB_POLL_MS = "100",
        FM_HOUSEKEEPING_INTERVAL_S = "0",
        FM_EXTRA_ROUTES = "fm_test.routes,fm_test.kb_routes,fm_test.upload_routes" }
      for k, v in pairs(env_extra or {}) do env[k] = v end
      return helpers.engine.start { env = env }
    end

    lazy_setup(function()
      url = backend.url()
      data_dir = helpers.tmpdir("fm-kb-data-")
      engine = start()
      for _, name in ipairs({ "admin", "alice", "bob", "carol" }) do
        local r = req("POST", "/api/v1/auth/dev-login", { json = { username = name }, as = false })
        assert.equal(200, r.status, r.body)
        tok[name] = r.json().access_token
      end
      -- carol belongs to another organization (the engine has one per user)
      assert(db.configure { url = url, pool_size = 1 })
      assert(db.exec("UPDATE users SET organization_id = 'org_other' WHERE username = 'carol'"))
      db.close()
    end)
    lazy_teardown(helpers.cleanup)

    it("uploads a document, ingests it to ready, and indexes every chunk", function()
      local d = new_doc({ title = "Disk full", tags = "disk, storage ,disk", category = "infra",
        description = "what to do", source_url = "https://example.com/disk" })
      assert.matches("^doc_%x+$", d.document_id)
      assert.equal(32, #d.document_id - 4)
      assert.equal("pending", d.status)
      assert.equal("personal", d.scope)
      assert.same({ "disk", "storage" }, d.tags)
      assert.equal(RUNBOOK, d.content)
      assert.equal("disk.md", d.metadata.filename)
      local ready = wait_ready(d.document_id)
      assert.is_true(ready.chunk_count >= 1)
      assert.is_string(ready.indexed_at)
      assert.equal("done", ready.ingestion.job_state)
      local ix = assert_index_agrees()
      assert.equal(ready.chunk_count, #ix.chunks)
      -- the built-in vector store is there: every chunk has its vector
      assert.equal("table", type(ix.vectors))
      assert.equal(#ix.chunks, #ix.vectors)
      assert.equal(backend.name == "sqlite" and "table" or "userdata", type(ix.fts))
      -- the raw file is stored under kb/<id>
      local keys = req("GET", "/test/storage/list?prefix=kb/" .. d.document_id, { as = false })
      assert.equal(1, #keys.json().keys)
    end)

    it("lists with filters, paging and scope_counts of what the caller sees", function()
      new_doc({ title = "Team doc", scope = "team", document_type = "guide", tags = "net" })
      new_doc({ title = "Global doc", scope = "global", document_type = "guide" }, "admin")
      new_doc({ title = "Bob private", document_type = "guide" }, "bob")
      local r = req("GET", "/api/v1/knowledge/documents")
      assert.equal(200, r.status, r.body)
      local l = r.json()
      assert.same({ global = 1, team = 1, personal = 1 }, l.scope_counts)
      assert.equal(3, l.total_count)
      assert.equal("3", r.headers["x-total-count"])
      for _, doc in ipairs(l.documents) do assert.not_equal("Bob private", doc.title) end
      local g = req("GET", "/api/v1/knowledge/documents?document_type=guide").json()
      assert.equal(2, g.total_count)
      local t = req("GET", "/api/v1/knowledge/documents?tags=net,nothing").json()
      assert.equal(1, t.total_count)
      assert.equal("Team doc", t.documents[1].title)
      local s = req("GET", "/api/v1/knowledge/documents?scope=global").json()
      assert.equal(1, s.total_count)
      assert.same({ global = 1, team = 1, personal = 1 }, s.scope_counts)
      local p = req("GET", "/api/v1/knowledge/documents?limit=1&offset=1").json()
      assert.equal(1, #p.documents)
      assert.is_true(p.has_more)
      assert.equal(422, req("GET", "/api/v1/knowledge/documents?scope=world").status)
      assert.equal(422, req("GET", "/api/v1/knowledge/documents?document_type=%FF").status)
      assert.equal(422, req("GET", "/api/v1/knowledge/documents?limit=0").status)
      -- bob sees his own, the team's and the global one; carol (another organization) only
      -- the global one
      assert.same({ global = 1, team = 1, personal = 1 },
        req("GET", "/api/v1/knowledge/documents", { as = "bob" }).json().scope_counts)
      assert.same({ global = 1, team = 0, personal = 0 },
        req("GET", "/api/v1/knowledge/documents", { as = "carol" }).json().scope_counts)
    end)

    it("keeps a personal document invisible to everyone else on every route", function()
      local d = new_doc({ title = "Alice only" })
      local id = d.document_id
      for _, who in ipairs({ "bob", "carol", "admin" }) do
        local base = "/api/v1/knowledge/documents/" .. id
        assert.equal(404, req("GET", base, { as = who }).status)
        assert.equal(404, req("GET", base .. "/snippet", { as = who }).status)
        assert.equal(404, req("PUT", base, { as = who, json = { title = "x" } }).status)
        assert.equal(404, req("DELETE", base, { as = who }).status)
        local b = req("POST", "/api/v1/knowledge/documents/bulk-delete", { as = who,
          json = { document_ids = { id } } })
        assert.equal(200, b.status, b.body)
        assert.same({ id }, b.json().not_found)
        for _, doc in ipairs(req("GET", "/api/v1/knowledge/documents?limit=100",
          { as = who }).json().documents) do
          assert.not_equal(id, doc.document_id)
        end
      end
      -- the same answer as an id that never existed
      local missing = req("GET", "/api/v1/knowledge/documents/doc_" .. string.rep("0", 32))
      assert.equal(404, missing.status)
      assert.equal(req("GET", "/api/v1/knowledge/documents/" .. id, { as = "bob" }).body,
        missing.body)
      assert.equal(200, req("GET", "/api/v1/knowledge/documents/" .. id).status)
    end)

    it("lets the organization read team documents and only owner or admin change them", function()
      local d = new_doc({ title = "Team runbook", scope = "team" })
      local base = "/api/v1/knowledge/documents/" .. d.document_id
      assert.equal(200, req("GET", base, { as = "bob" }).status)
      assert.equal(200, req("GET", base .. "/snippet", { as = "bob" }).status)
      assert.equal(403, req("PUT", base, { as = "bob", json = { title = "mine" } }).status)
      assert.equal(403, req("DELETE", base, { as = "bob" }).status)
      assert.equal(404, req("GET", base, { as = "carol" }).status)
      assert.equal(404, req("DELETE", base, { as = "carol" }).status)
      local a = req("PUT", base, { as = "admin", json = { title = "Edited by admin" } })
      assert.equal(200, a.status, a.body)
      assert.equal("Edited by admin", a.json().title)
      -- an admin may not make someone else's document personal (it would vanish for its owner)
      assert.equal(403, req("PUT", base, { as = "admin", json = { scope = "personal" } }).status)
    end)

    it("lets everyone read global documents and only admins write them", function()
      local r = upload({ title = "Global by bob", document_type = "runbook", scope = "global" },
        { content = RUNBOOK, name = "g.md" }, "bob")
      assert.equal(403, r.status, r.body)
      local d = new_doc({ title = "Global by admin", scope = "global" }, "admin")
      local base = "/api/v1/knowledge/documents/" .. d.document_id
      for _, who in ipairs({ "alice", "bob", "carol" }) do
        assert.equal(200, req("GET", base, { as = who }).status)
        assert.equal(403, req("PUT", base, { as = who, json = { title = "x" } }).status)
        assert.equal(403, req("DELETE", base, { as = who }).status)
      end
      -- alice cannot publish her own document globally either
      local mine = new_doc({ title = "Mine" })
      assert.equal(403, req("PUT", "/api/v1/knowledge/documents/" .. mine.document_id,
        { json = { scope = "global" } }).status)
      assert.equal(204, req("DELETE", base, { as = "admin" }).status)
    end)

    it("refuses bad input with the contract's errors", function()
      local function fields(t)
        t.title = t.title or "T"
        t.document_type = t.document_type or "runbook"
        return t
      end
      local function code(f, file, as)
        return upload(fields(f), file, as)
      end
      local md = { content = RUNBOOK, name = "a.md" }
      assert.equal(415, code({}, { content = "%PDF-1.4", name = "a.pdf" }).status)
      assert.equal(415, code({}, { content = RUNBOOK, name = "noext" }).status)
      assert.equal(413, code({}, { content = string.rep("a ", MiB), name = "big.txt" }).status)
      local bad = code({}, { content = "ok\255\254 not utf-8", name = "a.txt" })
      assert.equal(422, bad.status)
      assert.equal("file", bad.json().detail[1].loc[2])
      assert.equal(422, code({}, { content = "nul\0byte", name = "a.txt" }).status)
      assert.equal(422, code({}, { content = "  \n\n ", name = "a.txt" }).status)
      local s = code({ scope = "world" }, md)
      assert.equal(422, s.status)
      assert.same({ "body", "scope" }, s.json().detail[1].loc)
      local nt = upload({ document_type = "runbook" }, md)
      assert.equal(422, nt.status)
      assert.same({ "body", "title" }, nt.json().detail[1].loc)
      assert.equal(422, code({ title = "bell\7" }, md).status)
      assert.equal(422, code({ document_type = "a b" }, md).status)
      assert.equal(422, code({ source_url = "javascript:alert(1)" }, md).status)
      assert.equal(422, code({}, nil).status)
      assert.equal(422, req("POST", "/api/v1/knowledge/documents",
        { json = { title = "json is not a form" } }).status)
      assert.equal(401, code({}, md, false).status)
      -- hostile titles are data: stored and returned exactly
      for _, title in ipairs({ "<script>alert(1)</script>", "'; DROP TABLE knowledge_documents;--",
                               "\u{202E}evil", "%s%n%x" }) do
        local r = code({ title = title }, md)
        assert.equal(201, r.status, r.body)
        local got = req("GET", "/api/v1/knowledge/documents/" .. r.json().document_id).json()
        assert.equal(title, got.title)
      end
      -- ids that are not ours, or not ids
      for _, id in ipairs({ "doc_zz", "doc_..%2F..%2Fetc", "case_0123",
                            "doc_" .. ("a"):rep(80) }) do
        assert.equal(404, req("GET", "/api/v1/knowledge/documents/" .. id).status)
      end
      local d = new_doc({ title = "Put me" })
      local base = "/api/v1/knowledge/documents/" .. d.document_id
      assert.equal(422, req("PUT", base, { json = { owner_id = "user_x" } }).status)
      assert.equal(422, req("PUT", base, { json = { title = "" } }).status)
      assert.equal(422, req("PUT", base, { json = { tags = { 1, 2 } } }).status)
      assert.equal(422, req("PUT", base, { json = { scope = "world" } }).status)
      assert.equal(422, req("GET", base .. "/snippet?line_start=0").status)
      assert.equal(422, req("GET", base .. "/snippet?line_start=5&line_end=2").status)
      assert.equal(422, req("GET", base .. "/snippet?line_start=9999").status)
    end)

    it("updates metadata, and a new content re-ingests with new chunks", function()
      local d = new_doc({ title = "Old title", tags = "a" })
      local id = d.document_id
      local first = wait_ready(id)
      local first_keys = req("GET", "/test/storage/list?prefix=kb/" .. id,
        { as = false }).json().keys
      assert.equal(1, #first_keys)
      local before = index().by_document[id]
      local base = "/api/v1/knowledge/documents/" .. id
      local r = req("PUT", base, { json = { title = "New title", tags = { "x", "y" },
        category = "disk", description = "updated" } })
      assert.equal(200, r.status, r.body)
      local u = r.json()
      assert.equal("New title", u.title)
      assert.same({ "x", "y" }, u.tags)
      assert.equal("ready", u.status) -- metadata only: no new ingestion
      assert.equal(2, u.version)
      local text = "# Memory\n\n## OOM\n\n" .. string.rep("The kernel killed the process. ", 40)
      r = req("PUT", base, { json = { content = text } })
      assert.equal(200, r.status, r.body)
      -- the runner may already have started (a poll between the commit and the answer)
      assert.truthy(({ pending = true, indexing = true })[r.json().status], r.json().status)
      local again = wait_ready(id)
      assert.equal(text, again.content)
      -- the stored file follows: one object under kb/<id>, not the first one
      local keys = req("GET", "/test/storage/list?prefix=kb/" .. id, { as = false }).json().keys
      assert.equal(1, #keys)
      assert.not_equal(first_keys[1], keys[1])
      assert.is_true(again.version > first.version)
      local ix = assert_index_agrees()
      -- every chunk of the old content is gone, from the tables and (agreeing) the indexes
      local now = {}
      for _, c in ipairs(ix.chunks) do now[c] = true end
      assert.is_true(#before > 0)
      for _, c in ipairs(before) do assert.is_nil(now[c], "old chunk " .. c .. " left") end
      assert.equal(again.chunk_count, #ix.by_document[id])
      local sn = req("GET", base .. "/snippet?query_string=kernel").json()
      assert.matches("kernel", sn.snippet)
      assert.equal(1, sn.relevance_score)
    end)

    it("serves snippets by line range", function()
      local d = new_doc({ title = "Lines" })
      local base = "/api/v1/knowledge/documents/" .. d.document_id .. "/snippet"
      local r = req("GET", base .. "?line_start=3&line_end=5")
      assert.equal(200, r.status, r.body)
      local s = r.json()
      assert.equal(d.document_id, s.document_id)
      assert.equal("Lines", s.title)
      assert.same({ 3, 5 }, s.line_range)
      local lines = {}
      for l in (RUNBOOK .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
      assert.equal(table.concat(lines, "\n", 3, 5), s.snippet)
      assert.equal(#lines - 1, s.total_lines)
      assert.equal("experimental", s.verification_status)
      local m = req("GET", base .. "?max_lines=2").json()
      assert.same({ 1, 2 }, m.line_range)
      local q = req("GET", base .. "?query_string=inodes&max_lines=4").json()
      assert.matches("inodes", q.snippet)
    end)

    it("deletes rows, chunks, vectors and the stored file", function()
      local d = new_doc({ title = "Delete me" })
      wait_ready(d.document_id)
      local base = "/api/v1/knowledge/documents/" .. d.document_id
      assert.equal(204, req("DELETE", base).status)
      assert.equal(404, req("GET", base).status)
      assert.equal(404, req("DELETE", base).status)
      assert_index_agrees()
      local keys = req("GET", "/test/storage/list?prefix=kb/" .. d.document_id, { as = false })
      assert.equal(0, #keys.json().keys)
      local b1, b2 = new_doc({ title = "b1" }), new_doc({ title = "b2" })
      local team = new_doc({ title = "team" , scope = "team" }, "bob")
      local r = req("POST", "/api/v1/knowledge/documents/bulk-delete", { json = {
        document_ids = { b1.document_id, b2.document_id, team.document_id, "doc_00" } } })
      assert.equal(200, r.status, r.body)
      local out = r.json()
      assert.equal(2, out.deleted_count)
      assert.same({ team.document_id }, out.forbidden)
      assert.same({ "doc_00" }, out.not_found)
    end)

    it("reports stats of what the caller sees and the queue in /health", function()
      local st = req("GET", "/api/v1/knowledge/stats", { as = "carol" })
      assert.equal(200, st.status, st.body)
      local s = st.json()
      assert.equal(0, s.by_scope.personal)
      assert.equal(0, s.by_scope.team)
      local settled = assert_index_agrees()
      local mine = req("GET", "/api/v1/knowledge/stats").json()
      assert.is_true(mine.total_documents > s.total_documents)
      assert.is_true(mine.total_chunks > 0)
      assert.is_number(mine.queue_depth)
      assert.is_number(mine.by_type.runbook)
      assert.is_string(mine.embedding_model)
      assert.is_true(mine.embedding_dim > 0)
      assert.equal(#settled.chunks, mine.vector_count)
      local h = req("GET", "/health", { as = false }).json()
      assert.equal("healthy", h.components.jobs.status)
      assert.equal(1, h.components.jobs.runner_threads)
      assert.is_number(h.components.jobs.queue_depth)
      assert.equal(401, req("GET", "/api/v1/knowledge/stats", { as = false }).status)
      local m = req("GET", "/metrics", { as = false }).body
      local done = m:match('fm_jobs_total{kind="kb.ingest",result="done"} (%d+)')
      assert.is_true(tonumber(done) >= 5, m:match("fm_jobs[^\n]*") or "no fm_jobs_total")
      assert.matches("fm_jobs_queue_depth %d+", m)
    end)

    it("reconcile removes vectors and full-text rows that name no chunk", function()
      local ix = assert_index_agrees()
      local vectors = type(ix.vectors) == "table"
      assert.is_true(vectors)
      if vectors then
        local r = req("POST", "/test/kb/vector_put?id=chk_" .. string.rep("f", 32), { as = false })
        assert.equal(200, r.status, r.body)
      end
      local rec = req("POST", "/test/kb/reconcile", { as = false }).json()
      if vectors then assert.equal(1, rec.orphan_vectors) end
      assert.equal(0, rec.requeued)
      assert_index_agrees()
    end)

    it("reconcile ingests again a ready document whose chunk lost its vector", function()
      local d = new_doc({ title = "Lose a vector" })
      wait_ready(d.document_id)
      local chunk = index().by_document[d.document_id][1]
      assert.equal(200, req("POST", "/test/kb/vector_drop?id=" .. chunk, { as = false }).status)
      assert.has_error(function() assert_index_agrees() end)
      local rec = req("POST", "/test/kb/reconcile", { as = false }).json()
      assert.equal(1, rec.requeued)
      helpers.wait_until(function()
        return pcall(assert_index_agrees)
      end, 30, 0.05)
      assert.equal("ready", wait_ready(d.document_id).status)
    end)

    it("after kill -9 during the ingestion of a large document, index and tables agree",
      function()
      engine:stop()
      engine = start({ MAX_UPLOAD_SIZE_MB = "4", FM_JOB_LEASE_S = "2" })
      local sentences = {}
      for i = 1, 30000 do
        sentences[i] = ("Sentence %d tells about disk %d and memory %d pressure."):format(i,
          i % 97, i % 89)
      end
      local big = table.concat(sentences, " ")
      local d = new_doc({ title = "Large" }, nil, big, "large.txt")
      local id = d.document_id
      local caught = helpers.wait_until(function()
        local ix = index()
        return (ix.documents[id] == "indexing") or (ix.documents[id] == "ready" and "ready")
      end, 30, 0.005)
      assert.equal(true, caught, "the ingestion ended before the kill: make the document larger")
      engine:signal("KILL")
      engine:wait(10)
      engine = start({ MAX_UPLOAD_SIZE_MB = "4", FM_JOB_LEASE_S = "2" })
      local ready = wait_ready(id)
      local ix = assert_index_agrees()
      assert.is_true(ready.chunk_count > 100, ready.chunk_count .. " chunks")
      assert.equal(ready.chunk_count, #ix.by_document[id])
      for doc, status in pairs(ix.documents) do
        assert.equal("ready", status, doc .. " is " .. status)
      end
    end)

    it("a stopping engine hands its ingestion back to the queue without counting it", function()
      local big = string.rep("Memory pressure sentence for the shutdown test. ", 40000)
      local d = new_doc({ title = "Stopped" }, nil, big, "stop.txt")
      helpers.wait_until(function() return index().documents[d.document_id] == "indexing" end,
        30, 0.005)
      assert.equal("exit", (engine:stop("TERM", 30)))
      assert(db.configure { url = url, pool_size = 1 })
      local job = assert(db.query("SELECT state, attempts FROM jobs WHERE dedup_key = ?",
        "kb.ingest:" .. d.document_id))
      db.close()
      assert.equal(1, #job)
      assert.equal("queued", job[1].state)
      assert.equal(0, math.tointeger(job[1].attempts))
      -- a runner that polls once in ten minutes still starts an enqueued job at once: the
      -- enqueue wakes it
      engine = start({ MAX_UPLOAD_SIZE_MB = "4", FM_JOB_POLL_MS = "600000" })
      assert.equal("ready", wait_ready(d.document_id).status)
      local t0 = helpers.now()
      local small = new_doc({ title = "Woken" })
      wait_ready(small.document_id)
      assert.is_true(helpers.now() - t0 < 20)
      assert_index_agrees()
    end)
  end)
end
