-- `faultmaven diagnose FILE...`: the offline report a user reads. Runs the real binary on the
-- examples/ incidents and on generated files: sections, file:line references that hold the
-- matched text, ranked hypotheses, commands, the knowledge cache, usage and file errors.
local helpers = require "spec.helpers"
local json = require "fm.json"

local EXAMPLES = {
  -- directory, its evidence files, the playbook that should explain it
  { dir = "disk-full", files = { "orders-api.log", "df-h.txt", "du-var.txt" },
    kind = "disk-full" },
  { dir = "postgres-connections",
    files = { "billing-api.log", "postgresql-15-main.log", "pg_stat_activity.txt" },
    kind = "database-connection-exhaustion" },
  { dir = "oom-killed", files = { "kubectl-describe-pod.txt", "dmesg.txt", "kubectl-top.txt" },
    kind = "oom-killed" },
  { dir = "tls-cert-expired", files = { "checkout.log", "openssl-s_client.txt", "curl-v.txt" },
    kind = "certificate-expiry" },
  { dir = "dns-failure", files = { "profile-api.log", "coredns.log", "resolv-and-dig.txt" },
    kind = "dns-resolution-failures" },
  { dir = "redis-maxmemory", files = { "sidekiq.log", "redis-info.txt" },
    kind = "redis-memory-pressure" },
}

local function lines_of(path)
  local out = {}
  for l in io.lines(path) do out[#out + 1] = l end
  return out
end

describe("faultmaven diagnose", function()
  local bin = helpers.bin()
  local base, cache

  lazy_setup(function()
    base = helpers.tmpdir("fm-diagnose-")
    cache = helpers.mkdir(base .. "/cache")
  end)
  lazy_teardown(function() helpers.cleanup() end)

  -- Runs `faultmaven diagnose ARGS`; returns exit code, stdout, stderr.
  local runs = 0
  local function run(args, env, timeout)
    runs = runs + 1
    local out, err = base .. "/out" .. runs, base .. "/err" .. runs
    local argv = { bin, "diagnose" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local e = { FM_HOME = helpers.root, XDG_CACHE_HOME = cache, LOG_LEVEL = false }
    for k, v in pairs(env or {}) do e[k] = v end
    local p = helpers.spawn({ argv = argv, env = e, stdout = out, stderr = err,
                              cwd = helpers.root })
    local how, code = p:wait(timeout or 120)
    if not how then p:kill() end
    assert.equal("exit", how, "diagnose did not exit in time")
    return code, helpers.read_file(out) or "", helpers.read_file(err) or ""
  end

  local function report(args, env)
    local a = { "--format", "json" }
    for _, x in ipairs(args) do a[#a + 1] = x end
    local code, out, err = run(a, env)
    assert.equal(0, code, err)
    local ok, doc = pcall(json.decode, out)
    assert.is_true(ok, "not JSON: " .. out:sub(1, 300))
    return doc, out
  end

  local function example_paths(ex)
    local paths = {}
    for i, f in ipairs(ex.files) do
      paths[i] = helpers.root .. "/examples/" .. ex.dir .. "/" .. f
    end
    return paths
  end

  -- Every evidence entry with a line: that line of the file holds the text shown, and a
  -- signature entry's line really matches the signature (analysed again on its own).
  local function check_lines(doc)
    local analyze = require "fm.analyze"
    local set = require("fm.playbooks").signature_set()
    local cache_lines = {}
    local checked = 0
    for _, e in ipairs(doc.evidence) do
      if type(e.line) == "number" and type(e.text) == "string" then
        cache_lines[e.file] = cache_lines[e.file] or lines_of(e.file)
        local actual = cache_lines[e.file][e.line]
        assert.is_string(actual, e.file .. ":" .. e.line .. " does not exist")
        local shown = e.text:gsub("%.%.%.$", ""):gsub("^%.%.%.", "")
        assert.truthy(actual:gsub("\t", "  "):find(shown, 1, true),
          string.format("%s:%d is %q, the report shows %q", e.file, e.line, actual, e.text))
        if e.kind == "signature" then
          local r = assert(analyze.text(actual .. "\n", { signatures = set, modules = false }))
          local names = {}
          for _, s in ipairs(r.summary.signatures or {}) do names[s.name] = true end
          assert.is_true(names[e.signature] == true, string.format(
            "%s:%d does not match %s: %q", e.file, e.line, e.signature, actual))
        end
        checked = checked + 1
      end
    end
    -- the lines quoted beside a hypothesis' evidence too
    for _, h in ipairs(doc.hypotheses) do
      for _, list in ipairs({ h.evidence_for, h.evidence_against }) do
        for _, e in ipairs(list) do
          if type(e.line) == "number" and type(e.text) == "string" then
            cache_lines[e.file] = cache_lines[e.file] or lines_of(e.file)
            local actual = cache_lines[e.file][e.line]
            local shown = e.text:gsub("%.%.%.$", ""):gsub("^%.%.%.", "")
            assert.truthy(actual and actual:gsub("\t", "  "):find(shown, 1, true),
              e.file .. ":" .. e.line)
            checked = checked + 1
          end
        end
      end
    end
    return checked
  end

  local KEYS = { "collect", "conclusion", "evidence", "failures", "files", "format",
                 "hypotheses", "knowledge", "mitigations", "next_checks", "playbooks", "problem",
                 "recognised", "runbooks", "solutions", "timings_ms", "version" }
  local function keys_of(t)
    local k = {}
    for name in pairs(t) do k[#k + 1] = name end
    table.sort(k)
    return k
  end

  it("prints a Markdown report with every section and file:line references", function()
    local ex = EXAMPLES[1]
    local code, out, err = run(example_paths(ex))
    assert.equal(0, code, err)
    for _, h in ipairs({ "# FaultMaven diagnosis", "**Problem:**", "**Likely root cause:**",
                         "## Evidence", "## Hypotheses", "## Next checks", "## Remediation",
                         "### Mitigate", "### Fix", "## Runbooks" }) do
      assert.matches(h, out, 1, true)
    end
    assert.matches("(kb/disk-full.md, playbook disk-full)", out, 1, true)
    -- orders-api.log:N `text`: line N of the file is that text
    local lines = lines_of(helpers.root .. "/examples/disk-full/orders-api.log")
    local n, text = out:match("orders%-api%.log:(%d+)\n  `([^`]+)`")
    assert.truthy(n, out)
    assert.equal(lines[tonumber(n)], text)
    assert.matches("No space left on device", text, 1, true)
    -- hypotheses are numbered with their likelihoods, best first
    local prev = 2
    local count = 0
    for l in out:gmatch("\n%d+%. %*%*[^\n]+%(likelihood (%d%.%d%d)") do
      assert.is_true(tonumber(l) <= prev)
      prev = tonumber(l)
      count = count + 1
    end
    assert.is_true(count >= 2, out)
    assert.matches("run: `", out, 1, true)
    assert.matches("undo: ", out, 1, true)
    assert.equal("", err)
  end)

  for _, ex in ipairs(EXAMPLES) do
    it("diagnoses examples/" .. ex.dir .. " as " .. ex.kind, function()
      if not helpers.file_exists(helpers.root .. "/playbooks/" .. ex.kind .. ".lua") then
        pending("playbooks/" .. ex.kind .. ".lua is not written yet")
        return
      end
      local doc = report(example_paths(ex))
      assert.equal("faultmaven-diagnose", doc.format)
      assert.equal(1, doc.version)
      assert.same(KEYS, keys_of(doc))
      assert.same({ "analysis", "knowledge", "playbooks", "total" }, keys_of(doc.timings_ms))
      assert.is_true(doc.recognised)
      assert.equal(#ex.files, #doc.files)
      assert.equal("playbook", doc.problem.source)
      assert.equal(ex.kind, doc.hypotheses[1].playbook)
      assert.equal(ex.kind, doc.playbooks[1].id)
      assert.is_true(doc.playbooks[1].ran)
      for i, h in ipairs(doc.hypotheses) do
        assert.equal(i, h.rank)
        assert.is_true(h.likelihood >= 0 and h.likelihood <= 1)
        if i > 1 then assert.is_true(h.likelihood <= doc.hypotheses[i - 1].likelihood) end
        assert.is_string(h.statement)
      end
      assert.is_true(#doc.hypotheses[1].reasons > 0)
      assert.is_true(check_lines(doc) > 0)
      local cmds = 0
      for _, a in ipairs(doc.next_checks) do
        if type(a.command) == "string" then cmds = cmds + 1 end
      end
      for _, m in ipairs(doc.mitigations) do
        assert.truthy(({ low = 1, medium = 1, high = 1 })[m.risk])
        assert.is_string(m.undo)
        if type(m.command) == "string" then cmds = cmds + 1 end
      end
      assert.is_true(cmds > 0, "no command to run")
      assert.equal("kb/" .. ex.kind .. ".md", doc.runbooks[1].path)
      for _, rb in ipairs(doc.runbooks) do
        assert.is_true(helpers.file_exists(helpers.root .. "/" .. rb.path), rb.path)
      end
      assert.same({}, doc.collect)
      assert.same({}, doc.failures)
    end)
  end

  it("builds the knowledge cache once, then reuses it; --no-kb never touches it", function()
    local own = helpers.mkdir(base .. "/cache-own")
    local paths = example_paths(EXAMPLES[1])
    local first = report(paths, { XDG_CACHE_HOME = own })
    assert.equal("ok", first.knowledge.status)
    assert.is_true(first.knowledge.built)
    local runbooks = 0
    for _, name in ipairs(helpers.listdir(helpers.root .. "/kb")) do
      if name:match("%.md$") and name ~= "README.md" then runbooks = runbooks + 1 end
    end
    assert.equal(runbooks, first.knowledge.documents)
    assert.matches("^" .. own:gsub("%p", "%%%0") .. "/faultmaven/kb%-%x+$", first.knowledge.cache)
    local second = report(paths, { XDG_CACHE_HOME = own })
    assert.equal("ok", second.knowledge.status)
    assert.is_false(second.knowledge.built)
    assert.equal(first.knowledge.cache, second.knowledge.cache)
    assert.is_true(second.timings_ms.knowledge < first.timings_ms.knowledge)
    assert.same(first.runbooks, second.runbooks)
    local searched = 0
    for _, rb in ipairs(second.runbooks) do
      if rb.source == "search" then
        searched = searched + 1
        assert.matches("^doc_", rb.document_id)
        assert.is_true(rb.score > 0)
      end
    end
    assert.is_true(searched > 0, "no runbook came from the search")

    local fresh = helpers.mkdir(base .. "/cache-none")
    local nokb = report({ "--no-kb", paths[1], paths[2] }, { XDG_CACHE_HOME = fresh })
    assert.equal("skipped", nokb.knowledge.status)
    assert.same({}, helpers.listdir(fresh))
    -- without the search, a matched playbook still names its runbook: kb/<id>.md
    local ran = {}
    for _, p in ipairs(nokb.playbooks) do if p.ran then ran[p.id] = true end end
    assert.is_true(ran["disk-full"])
    local disk
    for _, rb in ipairs(nokb.runbooks) do
      assert.equal("playbook", rb.source)
      assert.is_true(ran[rb.playbook])
      assert.equal("kb/" .. rb.playbook .. ".md", rb.path)
      assert.equal(json.null, rb.document_id)
      if rb.playbook == "disk-full" then disk = rb end
    end
    assert.equal("Disk full on a Linux host", disk.title)
  end)

  it("puts the symptom first and redacts secrets in the lines it prints", function()
    local f = base .. "/secret.log"
    helpers.write_file(f, "2024-05-01T10:00:00Z INFO start\n"
      .. "2024-05-01T10:00:01Z ERROR db connect failed: connection refused "
      .. "password=hunter2-very-secret\n")
    local doc = report({ "--symptom", "checkout is down", f, "--no-kb" })
    assert.equal("symptom", doc.problem.source)
    assert.equal("checkout is down", doc.problem.statement)
    -- --name=value works too, and "--" ends the options
    local code, out = run({ "--format=json", "--symptom=since 10:00", "--no-kb", "--", f })
    assert.equal(0, code)
    assert.equal("since 10:00", json.decode(out).problem.statement)
    local found
    for _, e in ipairs(doc.evidence) do
      if e.signature == "connection_refused" then found = e end
    end
    assert.truthy(found)
    assert.equal(2, found.line)
    assert.not_matches("hunter2", found.text, 1, true)
    assert.matches("[REDACTED", found.text, 1, true)
  end)

  it("says plainly when it does not recognise the incident and what to collect", function()
    local f = base .. "/quiet.log"
    helpers.write_file(f, "2024-05-01T10:00:00Z INFO all good\n2024-05-01T10:00:05Z INFO tick\n")
    local doc = report({ f, "--no-kb" })
    assert.is_false(doc.recognised)
    assert.same(KEYS, keys_of(doc)) -- the same keys when nothing matched
    assert.equal(json.null, doc.conclusion)
    assert.equal("none", doc.problem.source)
    assert.same({}, doc.hypotheses)
    assert.is_true(#doc.collect >= 3)
    local code, out = run({ f, "--no-kb" })
    assert.equal(0, code)
    assert.matches("**Not recognised.**", out, 1, true)
    assert.matches("## What to collect", out, 1, true)
    assert.matches("`dmesg -T", out, 1, true)

    -- an error no signature knows is still shown: the log's first error line
    local g = base .. "/odd.log"
    helpers.write_file(g, "2024-05-01T10:00:00Z INFO start\n"
      .. "2024-05-01T10:00:01Z ERROR payment batch 7 failed: ledger returned code 17\n"
      .. "2024-05-01T10:00:02Z INFO retry\n")
    local odd = report({ g, "--no-kb" })
    local first
    for _, e in ipairs(odd.evidence) do if e.kind == "first_error" then first = e end end
    assert.truthy(first)
    assert.equal(2, first.line)
    assert.equal("2024-05-01T10:00:01Z ERROR payment batch 7 failed: ledger returned code 17",
      first.text)
  end)

  it("analyses empty, binary and huge files and reports them honestly", function()
    local empty, binf, big = base .. "/empty.log", base .. "/blob.bin", base .. "/big.log"
    helpers.write_file(empty, "")
    local bytes = {}
    for i = 1, 70000 do bytes[i] = string.char((i * 7919) % 256) end
    helpers.write_file(binf, table.concat(bytes))
    -- 50 MB of access log, one disk error at a known line, one very long line with a timeout
    local f = assert(io.open(big, "wb"))
    local row = "2024-05-01T10:00:00Z INFO GET /api/v1/items status=200 took=12ms id=%08d\n"
    local n, target, long = 0, 412345, 500000
    while true do
      n = n + 1
      if n == target then
        f:write("2024-05-01T10:07:00Z ERROR write /data/spool: No space left on device\n")
      elseif n == long then
        f:write("2024-05-01T10:08:00Z WARN call to billing timed out ", string.rep("x", 300), "\n")
      elseif n == long + 1 then -- the match at the end of a long line: shown around it
        f:write("2024-05-01T10:08:01Z WARN ", string.rep("retry ", 80), "connection refused\n")
      else
        f:write(row:format(n))
      end
      if n > long and f:seek() >= 50 * 1024 * 1024 then break end
    end
    f:close()
    local doc = report({ empty, binf, big, "--no-kb" })
    assert.equal(3, #doc.files)
    assert.equal(0, doc.files[1].bytes)
    assert.matches("empty", doc.files[1].note)
    assert.is_true(doc.files[2].binary)
    assert.matches("binary", doc.files[2].note)
    assert.equal(n, doc.files[3].lines)
    local disk, slow, refused
    for _, e in ipairs(doc.evidence) do
      if e.file == big and e.signature == "disk_full" then disk = e end
      if e.file == big and e.signature == "timeout" then slow = e end
      if e.file == big and e.signature == "connection_refused" then refused = e end
    end
    assert.equal(target, disk.line)
    assert.equal("2024-05-01T10:07:00Z ERROR write /data/spool: No space left on device",
      disk.text)
    assert.equal(long, slow.line)
    assert.is_true(utf8.len(slow.text) <= 163)
    assert.matches("%.%.%.$", slow.text)
    assert.matches("timed out", slow.text, 1, true)
    assert.equal(long + 1, refused.line)
    assert.matches("^%.%.%. ?retry retry ", refused.text)
    assert.matches("retry connection refused", refused.text, 1, true)
    assert.is_true(utf8.len(refused.text) <= 163)
  end)

  it("reports failing playbooks and still prints the report", function()
    local home = helpers.copy_home("fm-diagnose-home-")
    helpers.write_file(home .. "/playbooks/zz-broken.lua", [[
return {
  id = "zz-broken", title = "Broken on purpose", version = "1.0.0",
  description = "fails in its second step", tags = { "test" }, category = "other",
  match = function(ctx)
    if ctx.signal("disk_full") > 0 then return 0.99, { "disk_full seen" } end
    return 0
  end,
  steps = {
    { name = "fine", run = function(ctx, out) out:finding("looked before failing") end },
    { name = "boom", run = function() error("boom on purpose") end },
  },
}
]])
    helpers.write_file(home .. "/playbooks/zz-badmatch.lua", [[
return {
  id = "zz-badmatch", title = "Bad match", version = "1.0.0", description = "match raises",
  tags = { "test" }, category = "other",
  match = function() error("no match today") end,
  steps = { { name = "never", run = function() end } },
}
]])
    helpers.write_file(home .. "/playbooks/zz-syntax.lua", "return { id = 'zz-syntax',\n")
    local log = helpers.root .. "/examples/disk-full/orders-api.log"
    local doc = report({ log, "--no-kb" }, { FM_HOME = home })
    local by = {}
    for _, f in ipairs(doc.failures) do by[f.playbook] = f end
    assert.equal("step", by["zz-broken"].phase)
    assert.equal("boom", by["zz-broken"].step)
    assert.equal("error", by["zz-broken"].kind)
    assert.matches("boom on purpose", by["zz-broken"].message, 1, true)
    assert.equal("match", by["zz-badmatch"].phase)
    assert.matches("no match today", by["zz-badmatch"].message, 1, true)
    local load
    for _, f in ipairs(doc.failures) do
      if f.phase == "load" and f.playbook:find("zz-syntax", 1, true) then load = f end
    end
    assert.truthy(load, "the playbook that does not load is not reported")
    local ran = {}
    for _, p in ipairs(doc.playbooks) do if p.ran then ran[p.id] = true end end
    assert.is_true(ran["disk-full"])
    assert.is_true(doc.recognised)
    local code, out = run({ log, "--no-kb" }, { FM_HOME = home })
    assert.equal(0, code)
    assert.matches("## Playbook failures", out, 1, true)
    assert.matches("- zz-broken (step boom): error: ", out, 1, true)
  end)

  it("exits 2 on usage errors with a message", function()
    local log = helpers.root .. "/examples/disk-full/df-h.txt"
    local cases = {
      { {}, "no file given" },
      { { "--bogus", log }, "unknown option '--bogus'" },
      { { "--format", "xml", log }, "--format must be md or json" },
      { { log, "--format" }, "--format needs a value" },
      { { log, "--symptom" }, "--symptom needs a value" },
    }
    for _, c in ipairs(cases) do
      local code, out, err = run(c[1])
      assert.equal(2, code, table.concat(c[1], " "))
      assert.equal("", out)
      assert.matches(c[2], err, 1, true)
      assert.matches("usage: faultmaven diagnose", err, 1, true)
    end
    local code, out = run({ "--help" })
    assert.equal(0, code)
    assert.matches("usage: faultmaven diagnose", out, 1, true)
  end)

  it("exits 1 naming a file it cannot read: missing, a directory, a FIFO", function()
    local ok_file = helpers.root .. "/examples/disk-full/df-h.txt"
    local missing = base .. "/nope.log"
    local code, out, err = run({ ok_file, missing })
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches(missing .. ": No such file or directory", err, 1, true)

    local dir = helpers.mkdir(base .. "/adir")
    local _
    code, _, err = run({ dir })
    assert.equal(1, code)
    assert.matches(dir .. ": is a directory", err, 1, true)

    local fifo = base .. "/pipe"
    assert.is_true(helpers.shell("mkfifo '" .. fifo .. "'"))
    code, _, err = run({ fifo }, nil, 20) -- never opened: it would block
    assert.equal(1, code)
    assert.matches(fifo .. ": is a FIFO", err, 1, true)
  end)
end)
