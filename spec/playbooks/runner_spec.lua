-- fm.agent.runner: how playbooks are chosen and run (docs/PLAYBOOKS.md, "How a playbook is
-- chosen and run"), on registries built from in-memory sources (never playbooks/ itself).
local playbooks = require "fm.playbooks"
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"
local time = require "fm.time"

-- A registry of playbooks given as {path = source}.
local function registry(files, opts)
  opts = opts or {}
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  local reg = playbooks.load_all {
    list = function(prefix)
      local out = {}
      for _, p in ipairs(paths) do if p:sub(1, #prefix) == prefix then out[#out + 1] = p end end
      return out
    end,
    read = function(p) return files[p] end,
    instructions = opts.instructions or 2000000, memory = opts.memory or (8 << 20),
    signatures = false,
  }
  assert(#reg.errors == 0, reg.errors[1] and reg.errors[1].message)
  return reg
end

-- The source of a playbook: id, and the text of its match and steps (Lua expressions).
local function playbook(id, match, steps, extra)
  return string.format([[return {
  id = %q, title = %q, version = "1.0.0", description = "test playbook %s",
  tags = { "test" }, category = "environment", %s
  match = %s,
  steps = %s,
}]], id, "Playbook " .. id, id, extra or "", match, steps)
end

-- A playbook scoring `score` whose one step records a finding "<id> ran".
local function scoring(id, score)
  return playbook(id, string.format("function() return %s, { 'because %s' } end", score, id),
    string.format([[{ { name = "note", run = function(ctx, out) out:finding(%q) end } }]],
      id .. " ran"))
end

local function ids(list)
  local out = {}
  for i, x in ipairs(list) do out[i] = x.id end
  return out
end

local function ctx_of(opts)
  opts = opts or {}
  return context.build {
    symptom = opts.symptom or "the disk is full on db-1",
    evidence = opts.evidence or { { id = "ev_1", filename = "app.log", source_type = "logs",
      detailed_type = "log_file", turn = 1,
      digest = "write failed: No space left on device\nretrying\n",
      summary = { signatures = { { name = "disk_full", count = 3, first_line = 1,
                                   last_line = 9, severity = "error" } } } } },
    search_kb = opts.search_kb,
  }
end

local function run(reg, opts, ctx)
  opts = opts or {}
  opts.registry = reg
  local ok, res = pcall(runner.run, ctx or ctx_of(), opts)
  assert(ok, "runner.run raised: " .. tostring(res))
  return res
end

describe("runner: choosing playbooks", function()
  local reg
  lazy_setup(function()
    reg = registry {
      ["playbooks/a.lua"] = scoring("alpha", 0.5),
      ["playbooks/b.lua"] = scoring("bravo", 0.9),
      ["playbooks/c.lua"] = scoring("charlie", 0.1),
      ["playbooks/d.lua"] = scoring("delta", 0.7),
      ["playbooks/e.lua"] = scoring("echo", 0.7),
    }
  end)

  it("scores every playbook, best first (ties by id), with their reasons", function()
    local r = run(reg)
    assert.same({ "bravo", "delta", "echo", "alpha", "charlie" }, ids(r.scores))
    assert.equal(0.9, r.scores[1].score)
    assert.same({ "because bravo" }, r.scores[1].reasons)
    assert.equal("Playbook bravo", r.scores[1].title)
    assert.same({}, r.failed)
    assert.is_number(r.elapsed_ms)
  end)

  it("runs at most 3 playbooks (max_playbooks), the best ones", function()
    local r = run(reg)
    assert.same({ "bravo", "delta", "echo" }, ids(r.matched))
    assert.equal("bravo ran", r.matched[1].findings[1].text)
    assert.same({ "because bravo" }, r.matched[1].reasons)
    assert.equal("environment", r.matched[1].category)
    assert.same({ "test" }, r.matched[1].tags)
    assert.equal("1.0.0", r.matched[1].version)
    r = run(reg, { max_playbooks = 1 })
    assert.same({ "bravo" }, ids(r.matched))
    r = run(reg, { max_playbooks = 10 })
    assert.same({ "bravo", "delta", "echo", "alpha" }, ids(r.matched)) -- charlie is under 0.3
  end)

  it("runs nothing under the threshold (0.3 by default)", function()
    local r = run(reg, { threshold = 0.8 })
    assert.same({ "bravo" }, ids(r.matched))
    r = run(reg, { threshold = 0.95 })
    assert.same({}, r.matched)
    assert.equal(5, #r.scores)
  end)

  it("only = id runs that playbook's steps whatever its score, and no other match", function()
    local r = run(reg, { only = "charlie" })
    assert.same({ "charlie" }, ids(r.matched))
    assert.same({ "charlie" }, ids(r.scores))
    assert.equal("charlie ran", r.matched[1].findings[1].text)
    assert.equal(0.1, r.matched[1].score)
  end)

  it("skips and reports every playbook when the deadline has passed", function()
    local r = run(reg, { deadline = time.monotonic() - 1 })
    assert.same({}, r.matched)
    assert.equal(5, #r.failed)
    for _, f in ipairs(r.failed) do
      assert.equal("deadline", f.kind)
      assert.equal("match", f.phase)
    end
  end)
end)

describe("runner: the deadline during steps", function()
  it("keeps what ran, skips the rest and says which step", function()
    local reg = registry({
      ["playbooks/slow.lua"] = playbook("slow", "function() return 0.9 end", [[{
        { name = "first", run = function(ctx, out)
            out:finding("first ran")
            local t = os.clock()
            while os.clock() - t < 0.3 do end
          end },
        { name = "second", run = function(ctx, out) out:finding("second ran") end } }]]),
      ["playbooks/later.lua"] = scoring("later", 0.8),
    }, { instructions = 1e9 })
    local r = run(reg, { deadline = time.monotonic() + 0.15 })
    assert.same({ "slow", "later" }, ids(r.matched))
    assert.same({ { text = "first ran" } }, r.matched[1].findings)
    assert.same({}, r.matched[2].findings)
    local by = {}
    for _, f in ipairs(r.failed) do by[f.id] = f end
    assert.equal("deadline", by.slow.kind)
    assert.equal("second", by.slow.step)
    assert.equal("step", by.slow.phase)
    assert.equal("deadline", by.later.kind)
    assert.equal("note", by.later.step)
  end)
end)

describe("runner: what playbooks produce", function()
  it("gathers hypotheses (best first, evidence for and against), asks, remedies and the most "
    .. "confident conclusion", function()
    local reg = registry {
      ["playbooks/disk.lua"] = playbook("disk", "function(ctx) return 0.9 end", [[{
        { name = "inspect", run = function(ctx, out)
            out:finding{ text = "ENOSPC", evidence_id = ctx.evidence[1].id, line = 1,
                         severity = "error" }
            assert(out:hypothesis{ key = "disk_growth", statement = "data grew",
                                   likelihood = 0.6 } == "disk_growth")
            out:hypothesis{ key = "disk_inodes", statement = "inodes ran out",
                            category = "data", likelihood = 0.2 }
            out:evidence{ hypothesis = "disk_growth", stance = "for", summary = "ENOSPC x3",
                          evidence_id = ctx.evidence[1].id, line = 1 }
            out:evidence{ hypothesis = "disk_inodes", stance = "against", summary = "df -i ok" }
            out:ask{ label = "Show disk usage", command = "df -h", why = "which mount",
                     hypothesis = "disk_growth" }
            out:hypothesis{ key = "disk_growth", statement = "data grew fast",
                            likelihood = 0.8 } -- the same key again updates it
          end },
        { name = "conclude", run = function(ctx, out)
            out:conclude{ hypothesis = "disk_growth", root_cause = "/ is full",
                          confidence = 0.7, severity = "high" }
            out:mitigate{ title = "Free space", command = "journalctl --vacuum-size=200M",
                          risk = "low", undo = "none needed", verify = "df -h /" }
            out:solve{ title = "Grow the volume", risk = "medium", undo = "shrink it" }
          end } }]]),
      ["playbooks/net.lua"] = playbook("net", "function() return 0.5 end", [[{
        { name = "s", run = function(ctx, out)
            out:hypothesis{ key = "net_drop", statement = "packets dropped", likelihood = 0.4 }
            out:ask{ label = "Disk usage again", command = "df -h" }   -- same command: once
            out:ask{ label = "Sockets", command = "ss -s" }
            out:conclude{ hypothesis = "net_drop", root_cause = "drops", confidence = 0.3 }
          end } }]]),
    }
    local r = run(reg)
    assert.same({}, r.failed)
    assert.same({ "disk", "net" }, ids(r.matched))
    local m = r.matched[1]
    assert.same({ text = "ENOSPC", evidence_id = "ev_1", line = 1, severity = "error" },
      m.findings[1])
    assert.equal(2, #m.hypotheses)
    local keys = {}
    for i, h in ipairs(r.hypotheses) do keys[i] = h.key .. "@" .. h.likelihood end
    assert.same({ "disk_growth@0.8", "net_drop@0.4", "disk_inodes@0.2" }, keys)
    assert.equal("data grew fast", r.hypotheses[1].statement)
    assert.equal("disk", r.hypotheses[1].playbook)
    assert.equal("environment", r.hypotheses[1].category) -- the playbook's category
    assert.equal("data", r.hypotheses[3].category)
    assert.same({ { summary = "ENOSPC x3", evidence_id = "ev_1", line = 1 } },
      r.hypotheses[1].evidence_for)
    assert.same({ { summary = "df -i ok" } }, r.hypotheses[3].evidence_against)
    local cmds = {}
    for i, a in ipairs(r.asks) do cmds[i] = a.command .. "@" .. a.playbook end
    assert.same({ "df -h@disk", "ss -s@net" }, cmds)
    assert.equal("disk", r.conclusion.playbook)
    assert.equal("disk_growth", r.conclusion.hypothesis)
    assert.equal("/ is full", r.conclusion.root_cause)
    assert.equal(0.7, r.conclusion.confidence)
    assert.equal("high", r.conclusion.severity)
    assert.equal("environment", r.conclusion.category)
    assert.equal(1, #r.mitigations)
    assert.equal("disk", r.mitigations[1].playbook)
    assert.equal("journalctl --vacuum-size=200M", r.mitigations[1].command)
    assert.equal("Grow the volume", r.solutions[1].title)
  end)

  it("keeps what earlier steps recorded when a later step fails, and runs no further step",
    function()
    local reg = registry { ["playbooks/x.lua"] = playbook("x", "function() return 1 end", [[{
      { name = "one", run = function(ctx, out) out:finding("one") end },
      { name = "two", run = function(ctx, out) out:finding("two") error("step two broke") end },
      { name = "three", run = function(ctx, out) out:finding("three") end } }]]) }
    local r = run(reg)
    assert.same({ { text = "one" }, { text = "two" } }, r.matched[1].findings)
    assert.equal(1, #r.failed)
    assert.equal("two", r.failed[1].step)
    assert.equal("error", r.failed[1].kind)
    assert.matches("step two broke", r.failed[1].message, 1, true)
  end)

  it("caps each kind of output, with a warning, and cuts long strings", function()
    local reg = registry { ["playbooks/loud.lua"] = playbook("loud", "function() return 1 end",
      [[{ { name = "flood", run = function(ctx, out)
        for i = 1, 60 do out:finding("finding " .. i) end
        for i = 1, 12 do out:hypothesis{ key = "h" .. i, statement = "s", likelihood = 0.5 } end
        for i = 1, 12 do out:ask{ label = "a" .. i, command = "cmd " .. i } end
        for i = 1, 12 do out:mitigate{ title = "m" .. i, risk = "low", undo = "u" } end
        for i = 1, 12 do out:solve{ title = "s" .. i, risk = "low", undo = "u" } end
        for i = 1, 60 do out:evidence{ hypothesis = "h1", stance = "for", summary = "e" } end
        out:finding(string.rep("é", 3000))
        out:ask{ label = "long", command = string.rep("x", 5000) }
      end } }]]) }
    local r = run(reg)
    assert.same({}, r.failed)
    local m = r.matched[1]
    assert.equal(50, #m.findings)
    assert.equal("finding 50", m.findings[50].text)
    assert.equal(10, #m.hypotheses)
    assert.equal(10, #m.asks)
    assert.equal(10, #m.mitigations)
    assert.equal(10, #m.solutions)
    assert.equal(50, #m.evidence)
    local w = table.concat(m.warnings, "\n")
    for _, kind in ipairs { "findings", "hypotheses", "asks", "mitigations", "solutions",
                            "evidence" } do
      assert.matches("more than %d+ " .. kind, w)
    end
  end)

  it("cuts strings at 2000 bytes (commands at 1000) on a character boundary", function()
    local reg = registry { ["playbooks/long.lua"] = playbook("long", "function() return 1 end",
      [[{ { name = "s", run = function(ctx, out)
        out:finding(string.rep("é", 3000))
        out:ask{ label = "long", command = string.rep("x", 5000) }
      end } }]]) }
    local r = run(reg)
    local text = r.matched[1].findings[1].text
    assert.is_true(#text <= 2000 and #text >= 1998)
    assert.truthy(utf8.len(text))
    assert.equal(1000, #r.asks[1].command)
  end)

  it("attaches the playbook's kb runbooks, deduplicated by document", function()
    local calls = {}
    local function search_kb(q, limit)
      calls[#calls + 1] = q .. "/" .. limit
      return { { document_id = "doc_1", title = "Disk full runbook", score = 0.9 } }
    end
    local reg = registry {
      ["playbooks/a.lua"] = playbook("a", "function() return 0.9 end",
        [[{ { name = "s", run = function(ctx, out)
          local found = out:runbook("disk full")
          out:finding("found " .. #found .. " " .. found[1].title)
        end } }]]),
      ["playbooks/b.lua"] = playbook("b", "function() return 0.8 end",
        [[{ { name = "s", run = function() end } }]], 'kb = "disk space runbook",'),
    }
    local r = run(reg, nil, ctx_of { search_kb = search_kb })
    assert.same({}, r.failed)
    assert.equal("found 1 Disk full runbook", r.matched[1].findings[1].text)
    assert.equal("doc_1", r.matched[1].runbooks[1].document_id)
    assert.equal("doc_1", r.matched[2].runbooks[1].document_id) -- from b's kb query
    assert.equal(1, #r.runbooks)
    assert.same({ "disk full/3", "disk space runbook/2" }, calls)
  end)
end)

describe("runner: ctx isolation", function()
  local MUTATE = [[
    pcall(function() ctx.symptom = "hacked" end)
    pcall(function() ctx.evidence[1] = nil end)
    pcall(function() ctx.signals.disk_full.count = 999 end)
    pcall(table.insert, ctx.evidence, { id = "forged" })
    rawset(ctx, "symptom", "hacked")
    rawset(ctx, "signal", function() return 999 end)
    pcall(rawset, ctx.evidence, 1, { id = "forged" })
    pcall(rawset, ctx.signals, "disk_full", { count = 999 })
    pcall(rawset, ctx.case, "id", "case_forged")
    pcall(function() ctx.hypotheses[1] = { key = "forged" } end)
  ]]
  local SEE = [[
    local function seen(ctx)
      return table.concat({ ctx.symptom, tostring(#ctx.evidence), ctx.evidence[1].id,
        tostring(ctx.signal("disk_full")), tostring(ctx.signals.disk_full.count),
        tostring(ctx.case.id), tostring(#ctx.hypotheses) }, "|")
    end
  ]]

  it("assigning to ctx raises", function()
    local reg = registry { ["playbooks/w.lua"] = playbook("w", "function() return 1 end", [[{
      { name = "s", run = function(ctx, out) ctx.symptom = "hacked" end } }]]) }
    local r = run(reg)
    assert.equal(1, #r.failed)
    assert.matches("read%-only", r.failed[1].message)
  end)

  it("a playbook that mutates ctx (in match and in steps) does not change what the next one "
    .. "sees, nor the caller's ctx", function()
    local expect = "the disk is full on db-1|1|ev_1|3|3|nil|0"
    local reg = registry {
      ["playbooks/a.lua"] = playbook("a-mutator", "function(ctx) " .. MUTATE
        .. " return 0.9 end", "{ { name = 's', run = function(ctx, out) " .. MUTATE
        .. " out:finding('mutated') end } }"),
      ["playbooks/b.lua"] = SEE .. "local EXPECT = " .. string.format("%q", expect) .. "\n"
        .. playbook("b-reader",
        "function(ctx) if seen(ctx) == EXPECT then return 0.8 end return 0.05 end",
        "{ { name = 's', run = function(ctx, out) out:finding(seen(ctx)) end } }"),
    }
    local ctx = ctx_of()
    local r = run(reg, nil, ctx)
    assert.same({}, r.failed)
    assert.same({ "a-mutator", "b-reader" }, ids(r.matched))
    assert.equal(0.8, r.matched[2].score)
    assert.equal(expect, r.matched[2].findings[1].text)
    -- the caller's ctx is untouched
    assert.equal("the disk is full on db-1", ctx.symptom)
    assert.equal("ev_1", ctx.evidence[1].id)
    assert.equal(3, ctx.signal("disk_full"))
    assert.is_nil(ctx.case.id)
    -- and a second run sees the original again
    r = run(reg, nil, ctx)
    assert.equal(expect, r.matched[2].findings[1].text)
  end)

  it("ctx functions answer what the data says", function()
    local reg = registry { ["playbooks/q.lua"] = playbook("q", "function() return 1 end", [[{
      { name = "s", run = function(ctx, out)
        out:finding(tostring(ctx.mentions("NO SPACE LEFT")) .. tostring(ctx.said("db-1"))
          .. tostring(ctx.said("no space")) .. tostring(#ctx.grep("no space", 5))
          .. tostring(#ctx.of_type("logs")) .. tostring(#ctx.command("df"))
          .. tostring(ctx.signal("nope")) .. tostring(#ctx.search_kb("x")))
      end } }]]) }
    local r = run(reg)
    assert.same({}, r.failed)
    assert.equal("truetruefalse11000", r.matched[1].findings[1].text)
  end)
end)
