-- Playbooks in a running engine: uploads scanned for playbook signals, admin.playbooks.run(id,
-- case_id) in the admin REPL against a case made through the API (read-only), and hot reloads
-- that a bad playbook signal fails. The engine runs on a temp copy of the tree whose playbooks/
-- holds only this spec's playbooks.
local helpers = require "spec.helpers"
local json = require "fm.json"

local q = helpers.shell_quote
local BOUNDARY = "----fmAdminPlaybooks42"

local DISK_TEST = [==[
return {
  id = "disk-test", title = "Disk test", version = "1.2.3",
  description = "A test playbook: ENOSPC and inode exhaustion.",
  tags = { "disk", "test" }, category = "environment",
  signals = {
    { name = "disktest_inodes", pattern = [[inodes? (exhausted|100%)]], flags = "i",
      severity = "error", description = "inode exhaustion" },
  },
  match = function(ctx)
    local full, inodes = ctx.signal("disk_full"), ctx.signal("disktest_inodes")
    if full + inodes == 0 then return 0.05, { "no disk signals" } end
    return 0.9, { "ENOSPC lines: " .. full, "inode lines: " .. inodes }
  end,
  steps = {
    { name = "inspect", run = function(ctx, out)
        local s = ctx.signals.disktest_inodes
        out:finding{ text = "inodes exhausted on " .. tostring(s and s.count) .. " lines",
                     evidence_id = s and s.evidence_id, line = s and s.first_line }
        out:finding("symptom: " .. ctx.symptom)
        for _, h in ipairs(ctx.hypotheses) do
          out:finding(string.format("known: %s %s %s %s", tostring(h.key), tostring(h.state),
            tostring(h.likelihood), tostring(h.playbook)))
        end
        out:hypothesis{ key = "disktest_inodes", statement = "The filesystem ran out of inodes",
                        likelihood = 0.7 }
        out:evidence{ hypothesis = "disktest_inodes", stance = "for",
                      summary = "inode exhaustion on " .. s.count .. " lines",
                      evidence_id = s.evidence_id, line = s.first_line }
        out:ask{ label = "Show inode usage", command = "df -i", hypothesis = "disktest_inodes" }
      end },
    { name = "conclude", run = function(ctx, out)
        out:conclude{ hypothesis = "disktest_inodes", root_cause = "inodes exhausted",
                      confidence = 0.8, severity = "high" }
        out:mitigate{ title = "Remove stale temp files", risk = "medium",
                      command = "find /var/tmp -type f -mtime +7 -delete",
                      undo = "restore from backup", verify = "df -i" }
        out:solve{ title = "Recreate the filesystem with more inodes", risk = "high",
                   undo = "keep the old volume until verified" }
      end },
  },
}
]==]

local BROKEN = [[
return { id = "broken-test", title = "Broken", version = "0.1.0", description = "fails",
  tags = { "test" }, category = "other", match = function() return 0.1 end,
  steps = { { name = "first", run = function(ctx, out) out:finding("before the error") end },
            { name = "explode", run = function() error("kaboom in a step") end } } }
]]

local LOG = table.concat({
  "2024-03-05T14:22:01Z ERROR write /var/lib/app/q/1: No space left on device",
  "2024-03-05T14:22:02Z ERROR write /var/lib/app/q/2: No space left on device",
  "2024-03-05T14:22:03Z ERROR write /var/lib/app/q/3: No space left on device",
  "2024-03-05T14:22:04Z WARN inodes exhausted on /var/lib/app",
  "2024-03-05T14:22:05Z WARN inode 100% used on /var/lib/app",
}, "\n") .. "\n"

local function part(name, content, filename)
  local disp = ('Content-Disposition: form-data; name="%s"'):format(name)
  if filename then
    disp = disp .. ('; filename="%s"\r\nContent-Type: text/plain'):format(filename)
  end
  return "--" .. BOUNDARY .. "\r\n" .. disp .. "\r\n\r\n" .. content .. "\r\n"
end

local function metric(engine, name_and_labels)
  local text = assert(engine:get("/metrics")).body
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^(%S+) (%S+)$")
    if k == name_and_labels then return tonumber(v) end
  end
end

for _, backend in ipairs(helpers.db_backends()) do
  describe("playbooks in a running engine on " .. backend.name, function()
    local engine, home, sock, tok, case_id, file_id

    -- `faultmaven repl --socket S -e code`: exit code, stdout, stderr.
    local function repl(code)
      local dir = helpers.tmpdir("fm-pbrepl-")
      local _, rc = helpers.shell(q(helpers.bin()) .. " repl --socket " .. q(sock) .. " -e "
        .. q(code) .. " < /dev/null > " .. q(dir .. "/out") .. " 2> " .. q(dir .. "/err"))
      return rc, helpers.read_file(dir .. "/out") or "", helpers.read_file(dir .. "/err") or ""
    end

    -- admin.playbooks.run(id, case) as decoded JSON.
    local function run_json(id, cid)
      local rc, out, err = repl(("return require('fm.json').encode(admin.playbooks.run(%q, %q))")
        :format(id, cid))
      assert.equal(0, rc, err)
      return json.decode(out)
    end

    local function req(method, path, opts)
      opts = opts or {}
      opts.headers = opts.headers or {}
      if tok then opts.headers.Authorization = "Bearer " .. tok end
      return assert(engine:request(method, path, opts))
    end

    lazy_setup(function()
      home = helpers.copy_home("fm-pbhome-")
      -- only this spec's playbooks: the tree's own are not what is tested here
      assert(helpers.shell("rm -rf " .. q(home .. "/playbooks")))
      helpers.mkdir(home .. "/playbooks")
      helpers.write_file(home .. "/playbooks/disk-test.lua", DISK_TEST)
      helpers.write_file(home .. "/playbooks/broken-test.lua", BROKEN)
      engine = helpers.engine.start { env = { FM_HOME = home, FM_RELOAD_DEBOUNCE_MS = "50",
                                              DATABASE_URL = backend.url() } }
      sock = engine.data_dir .. "/admin.sock"
      local r = req("POST", "/api/v1/auth/dev-login", { json = { username = "pb-operator" } })
      assert.equal(200, r.status, r.body)
      tok = r.json().access_token
      r = req("POST", "/api/v1/cases", { json = { title = "disk case",
        description = "writes fail on db-1" } })
      assert.equal(201, r.status, r.body)
      case_id = r.json().case_id
      r = req("POST", "/api/v1/cases/" .. case_id .. "/turns", {
        headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY },
        body = part("query", "why are writes failing?") .. part("files", LOG, "app.log")
          .. "--" .. BOUNDARY .. "--\r\n" })
      assert.equal(200, r.status, r.body)
      file_id = r.json().attachments_processed[1].file_id
    end)
    lazy_teardown(helpers.cleanup)

    it("scans uploads for the playbooks' signals with the built-ins", function()
      local r = req("GET", "/api/v1/cases/" .. case_id .. "/uploaded-files/" .. file_id)
      assert.equal(200, r.status, r.body)
      local found = {}
      for _, s in ipairs(r.json().analysis.signatures) do found[s.name] = s end
      assert.equal(2, found.disktest_inodes and found.disktest_inodes.count)
      assert.equal("error", found.disktest_inodes.severity)
      assert.equal(4, found.disktest_inodes.first_line)
      assert.equal(3, found.disk_full and found.disk_full.count)
    end)

    it("admin.playbooks.run runs one playbook against the case and writes nothing", function()
      local before = req("GET", "/api/v1/cases/" .. case_id).json()
      local msgs = req("GET", "/api/v1/cases/" .. case_id .. "/messages").json()
      local res = run_json("disk-test", case_id)
      assert.matches("read%-only", res.note)
      assert.same({ id = "disk-test", title = "Disk test", version = "1.2.3",
                    file = "playbooks/disk-test.lua" }, res.playbook)
      assert.equal(case_id, res.case.id)
      assert.equal(1, res.case.evidence)
      assert.equal(0.9, res.score)
      assert.same({ "ENOSPC lines: 3", "inode lines: 2" }, res.reasons)
      assert.equal("inodes exhausted on 2 lines", res.findings[1].text)
      assert.matches("^ev_%x+$", res.findings[1].evidence_id)
      assert.equal(4, res.findings[1].line)
      -- the symptom: the description and the user's message
      assert.matches("writes fail on db%-1", res.findings[2].text)
      assert.matches("why are writes failing%?", res.findings[2].text)
      assert.equal("disktest_inodes", res.hypotheses[1].key)
      assert.equal(0.7, res.hypotheses[1].likelihood)
      assert.equal("inode exhaustion on 2 lines", res.hypotheses[1].evidence_for[1].summary)
      assert.equal("df -i", res.asks[1].command)
      assert.equal("inodes exhausted", res.conclusion.root_cause)
      assert.equal(0.8, res.conclusion.confidence)
      assert.equal("find /var/tmp -type f -mtime +7 -delete", res.mitigations[1].command)
      assert.equal("Recreate the filesystem with more inodes", res.solutions[1].title)
      assert.same({}, res.failures)
      -- read-only: the case, its counts and its messages are as they were
      assert.same(before, req("GET", "/api/v1/cases/" .. case_id).json())
      assert.same(msgs, req("GET", "/api/v1/cases/" .. case_id .. "/messages").json())
    end)

    it("prints a readable table in the REPL", function()
      local rc, out, err = repl(("admin.playbooks.run('disk-test', %q)"):format(case_id))
      assert.equal(0, rc, err)
      assert.matches('note = "read-only: nothing was written to the case"', out, 1, true)
      assert.matches('command = "df -i"', out, 1, true)
      assert.matches('root_cause = "inodes exhausted"', out, 1, true)
    end)

    it("sees the case's stored hypotheses", function()
      local rc, _, err = repl(([[
        local db = require "fm.db"
        local t = require("fm.time").iso8601()
        assert(db.exec("INSERT INTO hypotheses (id, case_id, statement, category, status, "
          .. "confidence, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
          "hyp_spec24", %q, "an older idea", "environment", "active", 0.25,
          '{"key":"disk_old","playbook":"disk-test"}', t, t))]]):format(case_id))
      assert.equal(0, rc, err)
      local res = run_json("disk-test", case_id)
      local known
      for _, f in ipairs(res.findings) do
        if f.text:match("^known: disk_old") then known = f.text end
      end
      assert.equal("known: disk_old active 0.25 disk-test", known)
    end)

    it("builds the ctx of a case: the problem statement first, this turn's words and evidence "
      .. "(not stored yet) as the newest", function()
      local rc, out, err = repl(([[
        local db = require "fm.db"
        assert(db.exec("UPDATE cases SET investigation = ? WHERE id = ?",
          '{"proposed_problem_statement":"PS: writes fail with ENOSPC"}', %q))
        local row = db.query("SELECT * FROM cases WHERE id = ?", %q)[1]
        local ctx = require("fm.agent.case").context(row, { query = "NEWEST WORDS", extra = {
          { id = "ev_extra", filename = "new.log", digest = "fresh", turn = 2,
            summary = '{"signatures":[{"name":"disk_full","count":7,"first_line":1}]}' } } })
        local s = ctx.symptom
        return #ctx.evidence, ctx.evidence[1].filename, ctx.evidence[2].id, ctx.signal("disk_full"),
          s:find("PS: writes fail", 1, true), s:find("writes fail on db-1", 1, true),
          s:find("NEWEST WORDS", 1, true) < s:find("why are writes failing", 1, true),
          ctx.case.id == row.id, ctx.case.turn, #ctx.search_kb("disk full")]]):format(case_id,
        case_id))
      assert.equal(0, rc, err)
      assert.equal("2\tapp.log\tev_extra\t10\t1\t29\ttrue\ttrue\t1\t0\n", out)
    end)

    it("reports a failing step, keeping what ran before it", function()
      local res = run_json("broken-test", case_id)
      assert.equal("before the error", res.findings[1].text)
      assert.equal(1, #res.failures)
      assert.equal("explode", res.failures[1].step)
      assert.equal("error", res.failures[1].kind)
      assert.matches("kaboom in a step", res.failures[1].message, 1, true)
    end)

    it("says clearly when the playbook, the case or the arguments are wrong", function()
      local rc, _, err = repl(("admin.playbooks.run('nope', %q)"):format(case_id))
      assert.equal(1, rc)
      assert.matches("no playbook 'nope' (loaded: broken-test, disk-test)", err, 1, true)
      rc, _, err = repl("admin.playbooks.run('disk-test', 'case_ffffffff')")
      assert.equal(1, rc)
      assert.matches("case 'case_ffffffff' not found", err, 1, true)
      rc, _, err = repl("admin.playbooks.run()")
      assert.equal(1, rc)
      assert.matches("expected (playbook id, case id)", err, 1, true)
    end)

    it("admin.playbooks() still lists, and admin.help() names playbooks.run", function()
      local rc, out, err = repl("local p = admin.playbooks() return #p.errors, "
        .. "p.playbooks[1].id, p.playbooks[2].id, p.playbooks[2].version")
      assert.equal(0, rc, err)
      assert.equal("0\tbroken-test\tdisk-test\t1.2.3\n", out)
      rc, out = repl("admin.help()")
      assert.equal(0, rc)
      assert.matches("admin.playbooks.run(id, c)", out, 1, true)
      assert.matches("read-only", out, 1, true)
    end)

    if backend.name ~= "sqlite" then return end -- reloads do not depend on the database

    it("a reload with a bad playbook signal fails, naming the file and signal; the old "
      .. "generation serves", function()
      local gen = metric(engine, "fm_lua_generation")
      local failed = metric(engine, 'fm_reload_total{result="failed"}') or 0
      local cases = {
        { DISK_TEST:gsub('"disk%-test"', '"disk-bad"', 1):gsub("disktest_inodes", "diskbad_x")
            :gsub("inodes%? %(exhausted%|100%%%)", "inodes (unclosed"),
          "signal 'diskbad_x' does not compile" },
        { DISK_TEST:gsub('"disk%-test"', '"disk-bad"', 1),
          "duplicate signal name 'disktest_inodes' (first defined in playbooks/disk-test.lua)" },
        { DISK_TEST:gsub('"disk%-test"', '"disk-bad"', 1):gsub('name = "disktest_inodes"',
            'name = "disk_full"'), "signal 'disk_full' has the name of a built-in signature" },
        { DISK_TEST:gsub('"disk%-test"', '"disk-bad"', 1):gsub('category = "environment"',
            'category = "weather"'), "field 'category' must be one of" },
      }
      for i, c in ipairs(cases) do
        helpers.replace_file(home .. "/playbooks/x-bad.lua", c[1])
        helpers.wait_until(function()
          return metric(engine, 'fm_reload_total{result="failed"}') == failed + i
        end, 15, 0.05)
        local lua = assert(engine:get("/health")).json().components.lua
        assert.equal("degraded", lua.status)
        assert.equal("playbooks/x-bad.lua", lua.reload_error.file, lua.reload_error.message)
        assert.matches(c[2], lua.reload_error.message, 1, true)
        assert.equal(gen, metric(engine, "fm_lua_generation"))
        local rc, _, err = repl(("admin.playbooks.run('disk-bad', %q)"):format(case_id))
        assert.equal(1, rc)
        assert.matches("playbook 'disk-bad' does not load: playbooks/x-bad.lua: ", err, 1, true)
        assert.matches(c[2], err, 1, true)
      end
      os.remove(home .. "/playbooks/x-bad.lua")
      helpers.wait_until(function()
        return assert(engine:get("/health")).json().status == "healthy"
      end, 15, 0.05)
    end)
  end)
end
