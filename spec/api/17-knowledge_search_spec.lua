-- Knowledge search (POST /api/v1/knowledge/search and /documents/search) and the built-in pack
-- loader against a real engine, on SQLite and on PostgreSQL: ranking, the two-chunks-a-document
-- cap, the threshold, scope isolation, hostile queries, validation; the pack loaded once, a
-- changed file updating its document, a removed file deleting it.
local helpers = require "spec.helpers"
local db = require "fm.db"

local BOUNDARY = "fmkbspecboundary7c1e"

local function form(parts)
  local out = {}
  for _, p in ipairs(parts) do
    out[#out + 1] = "--" .. BOUNDARY .. "\r\n"
    if p.filename then
      out[#out + 1] = ('Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
        .. "Content-Type: text/markdown\r\n\r\n"):format(p.name, p.filename)
    else
      out[#out + 1] = ('Content-Disposition: form-data; name="%s"\r\n\r\n'):format(p.name)
    end
    out[#out + 1] = p.value .. "\r\n"
  end
  out[#out + 1] = "--" .. BOUNDARY .. "--\r\n"
  return table.concat(out)
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function runbook(title, category, tags, sections)
  local out = { "---", "title: " .. title, "document_type: runbook", "category: " .. category,
                "tags: " .. tags, "---", "", "# " .. title, "" }
  for _, s in ipairs(sections) do
    out[#out + 1] = "## " .. s[1]
    out[#out + 1] = ""
    out[#out + 1] = s[2]
    out[#out + 1] = ""
  end
  return table.concat(out, "\n")
end

local FILLER = " The on-call engineer follows these steps in order, writes down what was seen, "
  .. "and escalates to the owning team when a step does not hold."

-- The pack of this spec: four runbooks on distinct incidents, one with many sections that all
-- name the same rare word (the per-document cap), one that changes and one that goes away.
local PACK = {
  ["disk-full.md"] = runbook("Disk full on a Linux host", "infrastructure", "disk, filesystem", {
    { "Symptoms", "Writes fail with `No space left on device` (ENOSPC); df shows the filesystem "
      .. "at 100 % and services crash." .. FILLER },
    { "Remediation", "Find large files with du, remove rotated logs, truncate files held open "
      .. "by a process (lsof +L1 lists deleted files still open)." .. FILLER },
  }),
  ["tls-expired.md"] = runbook("Expired TLS certificate", "security", "tls, x509, certificate", {
    { "Symptoms", "Clients fail with `x509: certificate has expired or is not yet valid`; "
      .. "browsers show NET::ERR_CERT_DATE_INVALID." .. FILLER },
    { "Remediation", "Renew the certificate with the ACME client, reload the web server, and "
      .. "check the chain with openssl s_client." .. FILLER },
  }),
  ["zebrafish.md"] = runbook("Zebrafish aquarium pump failure", "facilities", "pump, zebrafish", {
    { "Pump one", "The zebrafish tank pump one stops; zebrafish water flow drops." .. FILLER },
    { "Pump two", "The zebrafish tank pump two stops; zebrafish oxygen falls." .. FILLER },
    { "Pump three", "The zebrafish tank pump three stops; zebrafish filters clog." .. FILLER },
    { "Pump four", "The zebrafish tank pump four stops; zebrafish heaters trip." .. FILLER },
    { "Pump five", "The zebrafish tank pump five stops; zebrafish alarms sound." .. FILLER },
  }),
  ["dns.md"] = runbook("DNS resolution failure", "network", "dns, resolver", {
    { "Symptoms", "Lookups fail with SERVFAIL or NXDOMAIN; `getaddrinfo ENOTFOUND` in "
      .. "application logs; resolv.conf points at a dead resolver." .. FILLER },
    { "Remediation", "Check the resolver with dig, restart systemd-resolved or CoreDNS, and "
      .. "fix the upstream forwarders." .. FILLER },
  }),
}

for _, backend in ipairs(helpers.db_backends()) do
  describe("knowledge search on " .. backend.name, function()
    local engine, db_url, pack_dir, data_dir
    local alice, bob

    local function start()
      engine = helpers.engine.start { env = {
        DATABASE_URL = db_url, KB_PACK_DIR = pack_dir, FM_DATA_DIR = data_dir,
        PASSWORD_HASH_MEMORY_KIB = "8192", PASSWORD_HASH_OPSLIMIT = "1",
      } }
    end

    local function req(method, path, opts)
      opts = opts or {}
      opts.headers = opts.headers or {}
      if opts.token then opts.headers.Authorization = "Bearer " .. opts.token end
      return assert(engine:request(method, path, opts))
    end

    local function login(name)
      local r = req("POST", "/api/v1/auth/dev-login", { json = { username = name } })
      assert.equal(200, r.status, r.body)
      return r.json()
    end

    local function search(token, body, path)
      local r = req("POST", path or "/api/v1/knowledge/search", { json = body, token = token })
      assert.equal(200, r.status, r.body)
      return r.json()
    end

    local function pack_docs()
      local out = {}
      for _, r in ipairs(assert(db.query("SELECT id, filename, version, content_hash, updated_at "
        .. "FROM knowledge_documents WHERE origin = 'pack'"))) do out[r.filename] = r end
      return out
    end

    local function doc_of(file) return pack_docs()[file].id end

    lazy_setup(function()
      db_url = backend.url()
      local dir = helpers.tmpdir("fm-kbpack-")
      pack_dir = helpers.mkdir(dir .. "/kb")
      data_dir = helpers.mkdir(dir .. "/data")
      for name, text in pairs(PACK) do write(pack_dir .. "/" .. name, text) end
      write(pack_dir .. "/README.txt", "not a runbook: ignored")
      start()
      db.configure { url = db_url }
      alice = login("alice-kb")
      bob = login("bob-kb")
    end)
    lazy_teardown(helpers.cleanup)

    it("loads the pack at start: global documents of origin pack, indexed", function()
      local docs = pack_docs()
      local n = 0
      for name, d in pairs(docs) do
        n = n + 1
        assert.is_truthy(PACK[name], name)
        assert.equal(1, tonumber(d.version))
      end
      assert.equal(4, n)
      local rows = assert(db.query("SELECT scope, status, title, category, tags FROM "
        .. "knowledge_documents WHERE id = ?", doc_of("tls-expired.md")))
      assert.equal("global", rows[1].scope)
      assert.equal("ready", rows[1].status)
      assert.equal("Expired TLS certificate", rows[1].title)
      assert.equal("security", rows[1].category)
      assert.same({ "tls", "x509", "certificate" }, require("fm.json").decode(rows[1].tags))
    end)

    it("answers in the contract's shape and ranks the runbook that answers first", function()
      local out = search(alice.access_token, { query = "No space left on device", limit = 5 })
      assert.equal("No space left on device", out.query)
      assert.equal(#out.results, out.total_results)
      assert.is_true(#out.results >= 1)
      local top = out.results[1]
      assert.equal(doc_of("disk-full.md"), top.document_id)
      assert.is_string(top.content)
      assert.equal("Disk full on a Linux host", top.metadata.title)
      assert.equal("runbook", top.metadata.document_type)
      assert.equal("infrastructure", top.metadata.category)
      assert.same({ "disk", "filesystem" }, top.metadata.tags)
      assert.is_true(top.similarity_score > 0 and top.similarity_score <= 1)
      for i = 2, #out.results do
        assert.is_true(out.results[i - 1].similarity_score >= out.results[i].similarity_score)
      end
      -- case does not matter; another runbook for another question
      local tls = search(alice.access_token, { query = "X509 CERTIFICATE HAS EXPIRED" })
      assert.equal(doc_of("tls-expired.md"), tls.results[1].document_id)
      local dns = search(alice.access_token, { query = "getaddrinfo ENOTFOUND servfail" })
      assert.equal(doc_of("dns.md"), dns.results[1].document_id)
    end)

    it("finds by vectors what the full text cannot: typos and other word forms", function()
      -- no chunk holds "zebrafsh" or "pumps" (the text says "zebrafish" and "pump"): on SQLite
      -- (FTS5 without a stemmer) only the vector recall can answer this
      local out = search(alice.access_token, { query = "zebrafsh pumps" })
      assert.is_true(#out.results >= 1)
      assert.equal(doc_of("zebrafish.md"), out.results[1].document_id)
    end)

    it("returns at most two chunks of one document", function()
      local out = search(alice.access_token, { query = "zebrafish pump stops", limit = 10,
                                               similarity_threshold = 0 })
      local per = {}
      for _, r in ipairs(out.results) do per[r.document_id] = (per[r.document_id] or 0) + 1 end
      assert.equal(2, per[doc_of("zebrafish.md")]) -- five sections match; two are shown
      for _, n in pairs(per) do assert.is_true(n <= 2) end
      assert.equal(doc_of("zebrafish.md"), out.results[1].document_id)
    end)

    it("drops results under the threshold and honours the limit", function()
      local q = "the on-call engineer escalates to the owning team" -- every section says so
      local all = search(alice.access_token, { query = q, limit = 20, similarity_threshold = 0 })
      assert.is_true(#all.results >= 3)
      local cut = all.results[2].similarity_score
      local some = search(alice.access_token, { query = q, limit = 20,
                                                similarity_threshold = cut })
      assert.is_true(#some.results < #all.results)
      for _, r in ipairs(some.results) do assert.is_true(r.similarity_score >= cut) end
      assert.equal(1, #search(alice.access_token, { query = q, limit = 1 }).results)
      local none = search(alice.access_token, { query = q, similarity_threshold = 1 })
      for _, r in ipairs(none.results) do assert.equal(1, r.similarity_score) end
      -- words that are in no document, under the default threshold: nothing
      local junk = search(alice.access_token, { query = "qwxv plorbtastic vrrnk" })
      assert.equal(0, junk.total_results)
    end)

    it("boosts the request's category, document_type and tags", function()
      local q = "services crash and fail"
      local plain = search(alice.access_token, { query = q, similarity_threshold = 0, limit = 20 })
      local boosted = search(alice.access_token, { query = q, similarity_threshold = 0, limit = 20,
                                                   category = "network", tags = "dns" })
      local function find(out, id)
        for i, r in ipairs(out.results) do
          if r.document_id == id then return i, r.similarity_score end
        end
      end
      local dns, disk = doc_of("dns.md"), doc_of("disk-full.md")
      local rank_p, score_p = find(plain, dns)
      local rank_b, score_b = find(boosted, dns)
      assert.is_number(rank_b)
      assert.is_true(rank_p == nil or rank_b <= rank_p)
      assert.is_true(score_b > (score_p or 0))
      -- a document without that metadata does not gain
      local _, disk_p = find(plain, disk)
      local _, disk_b = find(boosted, disk)
      assert.is_true(disk_b <= disk_p)
      -- matching every field the request names scores more than matching some
      local both = search(alice.access_token, { query = q, similarity_threshold = 0, limit = 20,
                                                category = "network", tags = "dns, nothere" })
      local _, half = find(both, dns)
      assert.is_true(half < score_b)
    end)

    it("never shows a personal document to another user", function()
      local body = "# Flamingoquux outage\n\nThe flamingoquux service loses its lease and the "
        .. "flamingoquux workers stop. Restart the flamingoquux coordinator." .. FILLER .. "\n"
      local r = req("POST", "/api/v1/knowledge/documents", { token = alice.access_token,
        headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY },
        body = form {
          { name = "file", filename = "flamingoquux.md", value = body },
          { name = "title", value = "Flamingoquux outage" },
          { name = "document_type", value = "runbook" },
          { name = "scope", value = "personal" },
          { name = "tags", value = "flamingoquux" },
        } })
      assert.equal(201, r.status, r.body)
      local id = r.json().document_id
      assert.is_string(id)
      assert.is_truthy(helpers.wait_until(function()
        local row = db.query("SELECT status FROM knowledge_documents WHERE id = ?", id)[1]
        return row and row.status == "ready"
      end, 20, 0.05))
      local mine = search(alice.access_token, { query = "flamingoquux coordinator" })
      assert.equal(id, mine.results[1].document_id)
      for _, path in ipairs({ "/api/v1/knowledge/search", "/api/v1/knowledge/documents/search" }) do
        local theirs = search(bob.access_token, { query = "flamingoquux coordinator",
                                                  similarity_threshold = 0, limit = 100 }, path)
        for _, x in ipairs(theirs.results or theirs.documents) do
          assert.are_not.equal(id, x.document_id)
        end
      end
      local docs = search(alice.access_token, { query = "flamingoquux coordinator" },
        "/api/v1/knowledge/documents/search")
      assert.equal(id, docs.documents[1].document_id)
      assert.equal("personal", docs.documents[1].scope)
    end)

    it("survives hostile queries: FTS syntax, quotes, SQL, emoji, NUL, 10k characters", function()
      local hostile = {
        '"unbalanced', 'disk" OR "', "disk OR NOT full", "NEAR(disk space, 2)", "content:disk",
        "heading : disk", "*", "disk*", "^disk", "-disk", "+disk", "(disk", "{heading content}: x",
        "'; DROP TABLE knowledge_chunks; --", "') OR 1=1 --", "\\", "%_%", "disk AND", "AND",
        "🔥💾 disk full 🔥", "💾", "ｆｕｌｌｗｉｄｔｈ ｄｉｓｋ", "é\u{301}", "\u{202e}disk",
        "<script>alert(1)</script>", string.rep("a", 5000), string.rep("disk ", 2000),
        string.rep("\1", 10000), -- 60 kB of JSON escapes: under the route's body limit
      }
      for _, q in ipairs(hostile) do
        local r = req("POST", "/api/v1/knowledge/search", { json = { query = q },
                                                            token = alice.access_token })
        assert.equal(200, r.status, q .. " -> " .. r.body)
        local out = r.json()
        assert.equal(q, out.query)
        assert.equal(#out.results, out.total_results)
      end
      -- NUL, and more than 10000 bytes: refused, named
      for _, q in ipairs({ "disk\0full", string.rep("x", 10001) }) do
        local r = req("POST", "/api/v1/knowledge/search", { json = { query = q },
                                                            token = alice.access_token })
        assert.equal(422, r.status, r.body)
        assert.same({ "body", "query" }, r.json().detail[1].loc)
      end
      -- nothing was dropped or broken
      local out = search(alice.access_token, { query = "No space left on device" })
      assert.equal(doc_of("disk-full.md"), out.results[1].document_id)
      assert.equal(200, req("GET", "/health/live").status)
    end)

    it("validates the request (422) and needs a token (401)", function()
      local bad = {
        { {}, "query" }, { { query = 5 }, "query" }, { { query = "" }, "query" },
        { { query = "   " }, "query" }, { { query = "x", limit = 0 }, "limit" },
        { { query = "x", limit = 101 }, "limit" }, { { query = "x", limit = "5" }, "limit" },
        { { query = "x", limit = 1.5 }, "limit" },
        { { query = "x", similarity_threshold = -0.1 }, "similarity_threshold" },
        { { query = "x", similarity_threshold = 1.5 }, "similarity_threshold" },
        { { query = "x", similarity_threshold = "high" }, "similarity_threshold" },
        { { query = "x", category = 5 }, "category" }, { { query = "x", tags = 5 }, "tags" },
        { { query = "x", document_type = { "a" } }, "document_type" },
      }
      for _, path in ipairs({ "/api/v1/knowledge/search", "/api/v1/knowledge/documents/search" }) do
        for _, c in ipairs(bad) do
          local r = req("POST", path, { json = c[1], token = alice.access_token })
          assert.equal(422, r.status, r.body)
          assert.same({ "body", c[2] }, r.json().detail[1].loc)
        end
        assert.equal(422, req("POST", path, { json = require("fm.json").array({ "x" }),
                                              token = alice.access_token }).status)
        assert.equal(401, req("POST", path, { json = { query = "disk" } }).status)
      end
      -- tags as the contract's comma-separated string, or a list; null optional fields
      search(alice.access_token, { query = "disk", tags = "disk, linux", category = require(
        "fm.json").null, document_type = require("fm.json").null })
      search(alice.access_token, { query = "disk", tags = { "disk" } })
    end)

    it("keeps the pack in step across restarts: changed, removed, added, unchanged", function()
      local before = pack_docs()
      assert.equal("exit", (engine:stop()))
      -- nothing changed: nothing is written
      start()
      local same = pack_docs()
      for name, d in pairs(before) do
        assert.equal(d.id, same[name].id)
        assert.equal(d.updated_at, same[name].updated_at)
        assert.equal(tostring(d.version), tostring(same[name].version))
      end
      assert.equal("exit", (engine:stop()))
      write(pack_dir .. "/dns.md", runbook("DNS resolution failure", "network", "dns", {
        { "Symptoms", "The resolver answers REFUSED for the wombatzone domain." .. FILLER } }))
      os.remove(pack_dir .. "/tls-expired.md")
      write(pack_dir .. "/oom.md", runbook("Out of memory kills", "infrastructure", "oom", {
        { "Symptoms", "The kernel OOM killer ends the process: `Out of memory: Killed process`."
          .. FILLER } }))
      start()
      alice = login("alice-kb")
      local after = pack_docs()
      assert.is_nil(after["tls-expired.md"])
      assert.equal(before["dns.md"].id, after["dns.md"].id)
      assert.equal(2, tonumber(after["dns.md"].version))
      assert.equal(before["disk-full.md"].id, after["disk-full.md"].id)
      assert.equal(1, tonumber(after["disk-full.md"].version))
      assert.is_string(after["oom.md"].id)
      assert.equal(0, #assert(db.query("SELECT id FROM knowledge_chunks WHERE document_id = ?",
        before["tls-expired.md"].id)))
      local dns = search(alice.access_token, { query = "wombatzone REFUSED" })
      assert.equal(after["dns.md"].id, dns.results[1].document_id)
      local old = search(alice.access_token, { query = "getaddrinfo ENOTFOUND servfail",
                                               similarity_threshold = 0, limit = 50 })
      for _, r in ipairs(old.results) do
        assert.is_nil(r.content:find("ENOTFOUND", 1, true))
        assert.are_not.equal(before["tls-expired.md"].id, r.document_id)
      end
      local oom = search(alice.access_token, { query = "OOM killer killed process" })
      assert.equal(after["oom.md"].id, oom.results[1].document_id)
    end)
  end)
end
