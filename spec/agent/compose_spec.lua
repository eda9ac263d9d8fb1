-- fm.agent.compose through fm.agent.turn: the answer's sections, the "no idea" answer, the
-- suggested actions, determinism, evidence from fixture files, and broken playbooks.
local S = require "spec.agent.support"
local agent = require "fm.agent"
local compose = require "fm.agent.compose"
local context = require "fm.agent.context"
local json = require "fm.json"

local FIX = "spec/fixtures/evidence/"

local function actions_ok(out)
  local n = #out.suggested_actions
  assert.is_true(n >= 2 and n <= 4, "2..4 suggested actions, got " .. n)
  for _, a in ipairs(out.suggested_actions) do
    assert.is_string(a.label)
    assert.is_string(a.type)
  end
end

describe("fm.agent answers", function()
  it("says plainly when it does not recognise the problem, and what would help", function()
    local sim = S.case {}
    local out = assert(sim:turn { query = "the billing job is acting weird since Tuesday",
      files = { { "billing.log", "2024-03-05T10:00:00Z INFO batch 1 done\n" } } })
    actions_ok(out)
    assert.matches("I do not recognise this problem yet", out.response, 1, true)
    assert.matches("will not guess a cause", out.response, 1, true)
    assert.matches("`billing.log` (log_file): no known error signature", out.response, 1, true)
    assert.matches("kubectl describe pod <pod>", out.response, 1, true)
    assert.matches("journalctl -u <unit> --since", out.response, 1, true)
    assert.not_matches("likely", out.response, 1, true) -- no hypotheses invented
    assert.same({}, out.playbook_report.matched)
    -- the user's own sentence is the proposed statement
    assert.equal("the billing job is acting weird since Tuesday",
      out.case.investigation.proposed_problem_statement)
    local upload
    for _, a in ipairs(out.suggested_actions) do if a.type == "upload" then upload = a end end
    assert.is_table(upload)

    -- investigating with nothing matched: the same honesty, no root cause
    out = assert(sim:turn { query = "yes" })
    assert.equal("investigating", out.case.state)
    assert.matches("I do not recognise this problem yet", out.response, 1, true)
    assert.is_nil(out.case.investigation.root_cause)
    assert.equal("diagnosis", out.case.stage)
  end)

  it("asks for a description when there is nothing to go on", function()
    local sim = S.case {}
    local out = assert(sim:turn { query = "hello" })
    actions_ok(out)
    assert.equal("inquiry", out.case.state)
    assert.matches("Tell me what is failing", out.response, 1, true)
    assert.is_false(out.progress_made)
  end)

  it("is deterministic: the same case gives the same answers", function()
    local function run()
      local sim = S.case { description = "disk alarms" }
      local texts = {}
      for _, msg in ipairs {
        { query = "writes fail", files = { { "df.txt", S.DF_FULL }, { "a.log", S.APP_ENOSPC } } },
        { query = "yes" }, { query = "done" },
        { query = "applied", files = { { "df2.txt", S.DF_CLEAN } } },
      } do
        local out = assert(sim:turn(msg))
        out.case.investigation.working_conclusion = nil -- carries the clock
        for _, h in ipairs(out.hypotheses) do h.id = nil end
        texts[#texts + 1] = out.response .. json.encode(out.suggested_actions)
          .. json.encode(out.case.milestones) .. tostring(out.case.stage)
      end
      return texts
    end
    local a, b = run(), run()
    assert.same(a, b)
    assert.equal(4, #a)
  end)

  it("reads fixture files through context.from_files", function()
    local ctx, records = assert(context.from_files({ FIX .. "cmd-df-h-full.txt",
      FIX .. "an-java-oom.log" }, { symptom = "the app dies and the disk is full" }))
    local ids = {}
    for _, r in ipairs(records) do ids[#ids + 1] = r.id end
    local state = {
      case = { id = "case_1", state = "inquiry", turn = 1, milestones = {}, investigation = {} },
      hypotheses = {}, solutions = {}, message = { query = "the app dies and the disk is full" },
      ctx = ctx, new_evidence_ids = ids,
    }
    local out = assert(agent.turn(state, { registry = S.default_registry() }))
    actions_ok(out)
    assert.equal("disk-full", out.playbook_report.matched[1].id)
    assert.matches("/dev/nvme0n1p2 mounted on / is 97% full (cmd-df-h-full.txt line 4)",
      out.response, 1, true)
    assert.equal(2, #out.evidence)
    assert.equal("causal_evidence", out.evidence[1].category)
    assert.equal("symptom_evidence", out.evidence[2].category)
  end)

  it("writes every section with commands in code blocks and likelihoods in percent", function()
    local sim = S.case {}
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    local out = assert(sim:turn { query = "yes" })
    local r = out.response
    local order = { "### What we see", "### What it likely means", "### What to check next",
                    "### What to do" }
    local last = 0
    for _, h in ipairs(order) do
      local at = r:find(h, 1, true)
      assert.is_number(at, h)
      assert.is_true(at > last, h .. " in order")
      last = at
    end
    assert.matches("(df.txt line 4)", r, 1, true)
    assert.matches("80% likely: fairly sure", r, 1, true)
    assert.matches("```\nlsof +L1\n```", r, 1, true)
    assert.matches("Stop the bleeding: Free space now", r, 1, true)
    assert.matches("Lasting fix: Add log rotation and a disk alert", r, 1, true)
    assert.equal("confident", compose.sureness(0.9))
    assert.equal("a long shot", compose.sureness(0.1))
  end)

  it("names the runbooks the playbooks retrieved", function()
    local reg = S.registry { ["playbooks/disk-full.lua"] = S.DISK:gsub(
      'category = "environment",', 'category = "environment", kb = "disk full",') }
    local sim = S.case { registry = reg, search_kb = function(q)
      return { { document_id = "kb_disk", title = "Disk full: " .. q, heading = "Triage" } }
    end }
    local out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert.matches("### Runbooks\n\n- Disk full: disk full (section \"Triage\") `kb_disk`",
      out.response, 1, true)
  end)

  it("never raises for broken playbooks: they are reported and the turn answers", function()
    local reg = S.registry {
      ["playbooks/disk-full.lua"] = S.DISK,
      ["playbooks/broken.lua"] = [[
        return { id = "broken", title = "Broken", version = "1.0.0", description = "d",
          tags = { "x" }, category = "other",
          match = function() return 1 end,
          steps = { { name = "boom", run = function() error("kaboom") end } } }
      ]],
      ["playbooks/loop.lua"] = [[
        return { id = "loop", title = "Loop", version = "1.0.0", description = "d",
          tags = { "x" }, category = "other",
          match = function() while true do end end, steps = { { name = "s", run = print } } }
      ]],
    }
    local sim = S.case { registry = reg }
    local out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    actions_ok(out)
    local failed = {}
    for _, f in ipairs(out.playbook_report.failed) do failed[f.id] = f end
    assert.equal("step", failed.broken.phase)
    assert.matches("kaboom", failed.broken.message, 1, true)
    assert.equal("match", failed.loop.phase)
    assert.equal("instructions", failed.loop.kind)
    assert.matches("Disk full", out.case.investigation.proposed_problem_statement, 1, true)
  end)
end)
