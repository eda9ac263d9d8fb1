-- fm.agent.turn through whole cases: the lifecycle of API.md "Case lifecycle", turn by turn,
-- with a simulated turns service applying each TurnOutput (spec/agent/support.lua).
local S = require "spec.agent.support"
local lifecycle = require "fm.agent.lifecycle"

local function has(list, name)
  for _, v in ipairs(list) do if v == name then return true end end
  return false
end

local function action_of(out, typ)
  for _, a in ipairs(out.suggested_actions) do if a.type == typ then return a end end
end

local function actions_ok(out)
  assert.is_true(#out.suggested_actions >= 2 and #out.suggested_actions <= 4,
    "2..4 suggested actions, got " .. #out.suggested_actions)
end

describe("fm.agent lifecycle", function()
  it("walks inquiry -> investigating -> root cause -> fix -> verified -> resolved", function()
    local sim = S.case { description = "checkout fails since 10:00" }

    -- turn 1: evidence; the engine proposes a problem statement and asks
    local out = assert(sim:turn { query = "checkout returns 500s and the disk looks full",
      files = { { "df.txt", S.DF_FULL }, { "app.log", S.APP_ENOSPC } } })
    actions_ok(out)
    assert.equal("inquiry", out.case.state)
    assert.is_nil(out.case.stage)
    local inv = out.case.investigation
    assert.matches("^Disk full: ", inv.proposed_problem_statement)
    assert.matches("97%% full %(df.txt line 4%)", inv.proposed_problem_statement)
    assert.matches("Reported: \"checkout returns 500s", inv.proposed_problem_statement, 1, true)
    assert.is_nil(inv.problem_statement)
    assert.equal(1, inv.inquiry_turns)
    assert.matches("Proposed problem statement", out.response, 1, true)
    assert.matches("Is this the problem?", out.response, 1, true)
    assert.matches("### What we see", out.response, 1, true)
    assert.matches("(df.txt line 4)", out.response, 1, true)
    assert.matches("80%% likely", out.response)
    assert.same({}, out.hypotheses) -- hypotheses are the investigation's, not the inquiry's
    local yes = action_of(out, "confirmation")
    assert.equal("yes", yes.intent.payload)
    assert.is_true(out.progress_made)
    -- both new evidence rows are classified
    assert.equal(2, #out.evidence)
    local by = {}
    for _, e in ipairs(out.evidence) do by[e.evidence_id] = e end
    assert.equal("causal_evidence", by.ev_1.category)
    assert.same({ { key = "disk-full:data_growth", stance = "for" } }, by.ev_1.hypotheses)
    assert.equal("symptom_evidence", by.ev_2.category)

    -- turn 2: a clear yes confirms; the same turn investigates
    out = assert(sim:turn { query = "Yes" })
    actions_ok(out)
    assert.equal("investigating", out.case.state)
    assert.equal("mitigation", out.case.stage) -- root cause known, a mitigation proposed
    inv = out.case.investigation
    assert.matches("^Disk full: ", inv.problem_statement)
    assert.is_true(inv.problem_confirmed)
    assert.is_true(inv.decided_to_investigate)
    assert.is_nil(inv.proposed_problem_statement)
    assert.equal("disk-full", inv.root_cause.playbook)
    assert.equal("disk-full:data_growth", inv.root_cause.hypothesis)
    assert.equal(0.85, inv.root_cause.confidence)
    assert.equal("environment", inv.root_cause.category)
    assert.matches("filesystem is full", inv.working_conclusion.summary)
    assert.is_string(inv.working_conclusion.last_updated)
    assert.same({ "symptom_verified", "root_cause_identified", "solution_proposed" },
      out.case.milestones)
    local h = sim:hypothesis("disk-full:data_growth")
    assert.equal("validated", h.state)
    assert.equal("disk-full", h.playbook)
    assert.equal(1, #h.evidence_for)
    assert.equal("captured", sim:hypothesis("disk-full:deleted_open").state)
    assert.equal("proposed", sim:solution("mitigation").status)
    assert.equal("proposed", sim:solution("solution").status)
    assert.matches("**Root cause identified:**", out.response, 1, true)
    assert.matches("```\njournalctl --vacuum-size=200M\n```", out.response, 1, true)
    assert.matches("Undo: ", out.response, 1, true)
    assert.matches("risk: low", out.response, 1, true)
    local hyp_id = h.id

    -- turn 3: the user applied the mitigation
    out = assert(sim:turn { intent = { type = "confirmation", confirmation_value = "applied" } })
    actions_ok(out)
    assert.equal("treatment", out.case.stage)
    assert.is_true(has(out.case.milestones, "mitigation_accepted"))
    assert.is_false(has(out.case.milestones, "mitigation_verified"))
    assert.equal("applied", sim:solution("mitigation").status)
    assert.equal("solution", out.case.investigation.awaiting)
    assert.equal(hyp_id, sim:hypothesis("disk-full:data_growth").id) -- upserted, same row

    -- turn 4: asking to resolve now is refused: nothing shows the cause is gone
    out = assert(sim:turn { intent = { type = "status_transition", to_state = "resolved",
                                       user_confirmed = true } })
    actions_ok(out)
    assert.equal("investigating", out.case.state)
    assert.matches("cannot mark the case resolved yet", out.response, 1, true)
    assert.matches("```\ndf -h\n```", out.response, 1, true)

    -- turn 5: the lasting fix is applied, but the df still shows the disk full: not verified
    out = assert(sim:turn { query = "I applied the log rotation",
                            files = { { "df-still.txt", S.DF_FULL } } })
    assert.equal("applied", sim:solution("solution").status)
    assert.is_true(has(out.case.milestones, "solution_accepted"))
    assert.is_false(has(out.case.milestones, "solution_verified"))
    assert.matches("**Not fixed yet:** `df-still.txt` still shows", out.response, 1, true)
    assert.matches("cmd:disk_saturation", out.response, 1, true)
    assert.equal("symptom_evidence", out.evidence[1].category) -- the symptom, again
    assert.is_nil(out.case.investigation.pending_transition)

    -- turn 6: a clean df after the fix: verified
    out = assert(sim:turn { query = "here is df now", files = { { "df-after.txt",
      S.DF_CLEAN } } })
    actions_ok(out)
    assert.equal("investigating", out.case.state) -- never resolved on its own
    for _, m in ipairs { "solution_accepted", "solution_verified", "mitigation_verified" } do
      assert.is_true(has(out.case.milestones, m), m)
    end
    assert.equal("verified", sim:solution("solution").status)
    assert.equal("symptom_absence_evidence", out.evidence[1].category)
    local pend = out.case.investigation.pending_transition
    assert.equal("resolved", pend.to_state)
    assert.matches("Shall I mark the case resolved?", out.response, 1, true)
    local act = action_of(out, "status_transition")
    assert.matches('"to_state":"resolved"', act.intent.payload, 1, true)
    assert.matches('"user_confirmed":true', act.intent.payload, 1, true)

    -- turn 7: "not yet" keeps it open, and the engine does not ask again on its own
    out = assert(sim:turn { intent = { type = "confirmation", confirmation_value = "no" } })
    assert.equal("investigating", out.case.state)
    assert.is_nil(out.case.investigation.pending_transition)
    assert.matches("case stays open", out.response, 1, true)
    out = assert(sim:turn { query = "anything else to check?" })
    assert.is_nil(out.case.investigation.pending_transition)
    -- the user asks in words: proposed again (the fix is verified), then confirmed
    out = assert(sim:turn { query = "ok, mark it as resolved" })
    assert.equal("investigating", out.case.state)
    assert.equal("resolved", out.case.investigation.pending_transition.to_state)

    -- turn 10: the user confirms
    out = assert(sim:turn { query = "yes" })
    actions_ok(out)
    assert.equal("resolved", out.case.state)
    assert.is_nil(out.case.closure_reason)
    assert.is_nil(out.case.investigation.pending_transition)
    assert.matches("**Case resolved.**", out.response, 1, true)

    -- a resolved case takes no more turns
    local none, err = sim:turn { query = "hello?" }
    assert.is_nil(none)
    assert.equal("terminal", err)
  end)

  it("needs a later turn to confirm: a yes on the proposing turn does not count", function()
    local sim = S.case {}
    local out = assert(sim:turn { query = "yes", files = { { "df.txt", S.DF_FULL } } })
    assert.equal("inquiry", out.case.state)
    assert.is_string(out.case.investigation.proposed_problem_statement)
  end)

  it("does not take a hedged answer for a yes", function()
    local sim = S.case {}
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    local out = assert(sim:turn { query = "yes but not sure it is the disk" })
    assert.equal("inquiry", out.case.state)
    out = assert(sim:turn { query = "maybe" })
    assert.equal("inquiry", out.case.state)
    out = assert(sim:turn { intent_type = "confirmation",
                            intent = { type = "confirmation", confirmation_value = true } })
    assert.equal("investigating", out.case.state)
    assert.equal("mitigation", out.case.stage)
  end)

  it("clears a rejected proposal and asks the user to restate", function()
    local sim = S.case {}
    local out = assert(sim:turn { query = "the API is failing", files = {
      { "df.txt", S.DF_FULL } } })
    assert.is_string(out.case.investigation.proposed_problem_statement)
    out = assert(sim:turn { intent = { type = "confirmation", confirmation_value = false } })
    assert.equal("inquiry", out.case.state)
    assert.is_nil(out.case.investigation.proposed_problem_statement)
    assert.matches("restate", out.response, 1, true)
    -- "yes" now has nothing to confirm
    out = assert(sim:turn { query = "yes" })
    assert.equal("inquiry", out.case.state)
    assert.matches("nothing to confirm", out.response, 1, true)
  end)

  it("closes instead of resolving: the user confirms a close the engine proposed", function()
    local sim = S.case {}
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    local out = assert(sim:turn { query = "correct" })
    assert.equal("investigating", out.case.state)
    -- the mitigation is applied and verified; the user does not want the lasting fix
    out = assert(sim:turn { query = "done", files = { { "df2.txt", S.DF_CLEAN } } })
    assert.is_true(has(out.case.milestones, "mitigation_verified"))
    assert.is_false(has(out.case.milestones, "solution_verified"))
    assert.is_nil(out.case.investigation.pending_transition)
    local close = action_of(out, "status_transition")
    assert.matches('"closure_reason":"mitigation_sufficient"', close.intent.payload, 1, true)
    -- a request to close in words is a proposal, not a close
    out = assert(sim:turn { query = "please close the case" })
    assert.equal("investigating", out.case.state)
    assert.equal("closed", out.case.investigation.pending_transition.to_state)
    assert.equal("mitigation_sufficient",
      out.case.investigation.pending_transition.closure_reason)
    assert.matches("Shall I close the case", out.response, 1, true)
    out = assert(sim:turn { query = "go ahead" })
    assert.equal("closed", out.case.state)
    assert.equal("mitigation_sufficient", out.case.closure_reason)
  end)

  it("closes with the user's closure reason, or one that fits the situation", function()
    local sim = S.case {}
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert(sim:turn { query = "yes" })
    local out = assert(sim:turn { intent = { type = "status_transition", to_state = "closed",
                                             user_confirmed = true } })
    assert.equal("closed", out.case.state)
    assert.equal("solution_deferred", out.case.closure_reason) -- root cause known, no fix

    sim = S.case {}
    out = assert(sim:turn { intent = { type = "status_transition", to_state = "closed",
      user_confirmed = true, closure_reason = "closed_insufficient_evidence" } })
    assert.equal("closed", out.case.state)
    assert.equal("closed_insufficient_evidence", out.case.closure_reason)

    sim = S.case {}
    out = assert(sim:turn { intent = { type = "status_transition", to_state = "closed",
      user_confirmed = true, closure_reason = "bored" } })
    assert.equal("inquiry", out.case.state)
    assert.matches("unknown closure reason", out.response, 1, true)

    -- without user_confirmed it is a request: proposed, not done
    sim = S.case {}
    out = assert(sim:turn { intent = { type = "status_transition", to_state = "closed" } })
    assert.equal("inquiry", out.case.state)
    assert.equal("closed", out.case.investigation.pending_transition.to_state)
  end)

  it("answers a plain question from the runbooks and closes inquiry_only when confirmed",
    function()
      local asked
      local sim = S.case { search_kb = function(q, n)
        asked = { q, n }
        return { { document_id = "kb_logrotate", title = "Rotating nginx logs",
                   snippet = "Use logrotate: daily, rotate 7, postrotate reopen." } }
      end }
      local out = assert(sim:turn { query = "How do I rotate nginx logs?" })
      actions_ok(out)
      assert.same({ "How do I rotate nginx logs?", 3 }, asked)
      assert.equal("inquiry", out.case.state)
      assert.matches("Rotating nginx logs", out.response, 1, true)
      assert.matches("postrotate reopen", out.response, 1, true)
      assert.is_nil(out.case.investigation.proposed_problem_statement)
      local pend = out.case.investigation.pending_transition
      assert.equal("closed", pend.to_state)
      assert.equal("inquiry_only", pend.closure_reason)
      out = assert(sim:turn { query = "yes" })
      assert.equal("closed", out.case.state)
      assert.equal("inquiry_only", out.case.closure_reason)
    end)

  it("answers a problem-shaped question and proposes the problem, not a close", function()
    local sim = S.case { search_kb = function() return { { document_id = "kb_oom",
      title = "OOMKilled pods", snippet = "Check the memory limit." } } end }
    local out = assert(sim:turn { query = "Why is my pod OOMKilled?" })
    assert.matches("OOMKilled pods", out.response, 1, true)
    assert.equal("Why is my pod OOMKilled?", out.case.investigation.proposed_problem_statement)
    assert.is_nil(out.case.investigation.pending_transition)
  end)

  it("investigates at once on a confirmed status_transition, with the user's words", function()
    local sim = S.case { description = "Nightly export job hangs at 80 percent" }
    local out = assert(sim:turn { intent = { type = "status_transition",
      to_state = "investigating", user_confirmed = true } })
    assert.equal("investigating", out.case.state)
    assert.equal("diagnosis", out.case.stage)
    assert.equal("Nightly export job hangs at 80 percent",
      out.case.investigation.problem_statement)
    -- without user_confirmed it waits for the confirmation
    sim = S.case { description = "Nightly export job hangs at 80 percent" }
    out = assert(sim:turn { intent = { type = "status_transition", to_state = "investigating" } })
    assert.equal("inquiry", out.case.state)
    assert.is_string(out.case.investigation.proposed_problem_statement)
  end)

  it("marks the remedy the user's words describe", function()
    local reg = S.registry { ["playbooks/disk-full.lua"] = S.DISK:gsub('out:solve {', [[
        out:mitigate { title = "Delete old segments", command = "rm /data/old/*",
                       risk = "high", undo = "restore from backup" }
        out:solve {]]) }
    local sim = S.case { registry = reg }
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert(sim:turn { query = "yes" })
    assert(sim:turn { query = "done: deleted the old segments" })
    local by = {}
    for _, x in ipairs(sim.solutions) do by[x.title] = x.status end
    assert.equal("applied", by["Delete old segments"])
    assert.equal("proposed", by["Free space now"])
  end)

  it("marks the remedy the user names with solution_key", function()
    local sim = S.case {}
    assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert(sim:turn { query = "yes" })
    local key = sim:solution("solution").key
    assert.equal("disk-full:add_log_rotation_and_a_disk_alert", key)
    local out = assert(sim:turn { intent = { type = "confirmation", confirmation_value = "yes",
                                             solution_key = key } })
    assert.equal("applied", sim:solution("solution").status)
    assert.equal("proposed", sim:solution("mitigation").status)
    assert.equal("treatment", out.case.stage)
    assert.is_true(has(out.case.milestones, "solution_accepted"))
  end)

  it("says so when a question finds no runbook, and proposes nothing", function()
    local sim = S.case { search_kb = function() return {} end }
    local out = assert(sim:turn { query = "What is the best way to name servers?" })
    assert.matches("no runbook that answers this", out.response, 1, true)
    assert.is_nil(out.case.investigation.pending_transition)
    assert.is_nil(out.case.investigation.proposed_problem_statement)
  end)

  it("applies the user's hypothesis actions: validate, refute, retire", function()
    local sim = S.case {}
    assert(sim:turn { query = "disk full on the db host", files = { { "app.log",
      S.APP_ENOSPC } } })
    local out = assert(sim:turn { query = "yes" })
    assert.equal("investigating", out.case.state)
    -- ENOSPC lines but no df: no conclusion yet
    assert.is_nil(out.case.investigation.root_cause)
    assert.equal("diagnosis", out.case.stage)
    local growth = sim:hypothesis("disk-full:data_growth")
    local deleted = sim:hypothesis("disk-full:deleted_open")
    assert.equal("captured", growth.state)

    -- refute by id, with the user's reason
    out = assert(sim:turn { intent = { type = "hypothesis_action", hypothesis_id = deleted.id,
                                       action = "refute", reason = "lsof +L1 is empty" } })
    assert.equal("refuted", sim:hypothesis("disk-full:deleted_open").state)
    assert.equal("lsof +L1 is empty", sim:hypothesis("disk-full:deleted_open")
      .refutation_reason)
    assert.matches("Ruled out", out.response, 1, true)
    -- the refutation sticks on later turns
    assert(sim:turn { query = "anything else?" })
    assert.equal("refuted", sim:hypothesis("disk-full:deleted_open").state)

    -- validate by key: it becomes the root cause
    out = assert(sim:turn { intent = { type = "hypothesis_action",
                                       hypothesis_key = "disk-full:data_growth",
                                       action = "validate" } })
    assert.equal("validated", sim:hypothesis("disk-full:data_growth").state)
    assert.equal("disk-full:data_growth", out.case.investigation.root_cause.hypothesis)
    assert.equal("confirmed by the user", out.case.investigation.root_cause.assurance)
    assert.is_true(has(out.case.milestones, "root_cause_identified"))

    -- retire it again: the root cause goes with it
    out = assert(sim:turn { intent = { type = "hypothesis_action",
                                       hypothesis_id = growth.id, action = "retire" } })
    assert.equal("retired", sim:hypothesis("disk-full:data_growth").state)
    assert.is_nil(out.case.investigation.root_cause)
    assert.is_false(has(out.case.milestones, "root_cause_identified"))
    assert.equal("diagnosis", out.case.stage)

    -- an unknown hypothesis or action is reported, not applied
    out = assert(sim:turn { intent = { type = "hypothesis_action", hypothesis_id = "hyp_nope",
                                       action = "validate" } })
    assert.matches("no hypothesis with that id", out.response, 1, true)
    out = assert(sim:turn { intent = { type = "hypothesis_action", hypothesis_id = growth.id,
                                       action = "promote" } })
    assert.matches("validate, refute or retire", out.response, 1, true)
  end)

  it("moves hypotheses captured -> active and refutes them when evidence is against", function()
    local reg = S.registry { ["playbooks/flaky.lua"] = [[
      return { id = "flaky", title = "Flaky", version = "1.0.0", description = "d",
        tags = { "x" }, category = "code",
        match = function(ctx) return ctx.said("flaky") and 0.9 or 0 end,
        steps = { { name = "s", run = function(ctx, out)
          out:hypothesis { key = "race", statement = "A race", likelihood = 0.5 }
          local n = #ctx.evidence
          for i = 1, n do
            out:evidence { hypothesis = "race", stance = ctx.evidence[i].filename == "no.log"
              and "against" or "for", summary = "seen in " .. ctx.evidence[i].filename,
              evidence_id = ctx.evidence[i].id }
          end
        end } } }
    ]] }
    local sim = S.case { registry = reg }
    assert(sim:turn { query = "tests are flaky" })
    assert(sim:turn { query = "yes" })
    assert.equal("captured", sim:hypothesis("flaky:race").state)
    local out = assert(sim:turn { files = { { "yes.log", "race seen\n" } } })
    assert.equal("active", sim:hypothesis("flaky:race").state)
    assert.equal("causal_evidence", out.evidence[1].category)
    assert(sim:turn { files = { { "no.log", "no race\n" } } })
    out = assert(sim:turn { files = { { "no.log", "still no race\n" } } })
    assert.equal("refuted", sim:hypothesis("flaky:race").state)
    assert.matches("evidence against it", sim:hypothesis("flaky:race").refutation_reason)
    assert.equal("causal_absence_evidence", out.evidence[1].category)
  end)

  it("reads 'deployed' or 'done' as a fix applied only when it asked for one", function()
    local sim = S.case {}
    assert(sim:turn { query = "writes fail", files = { { "app.log", S.APP_ENOSPC } } })
    local out = assert(sim:turn { query = "yes" })
    assert.equal("diagnosis", out.case.stage) -- no df: no conclusion, no remedy to apply
    assert.is_nil(out.case.investigation.awaiting)
    out = assert(sim:turn { query = "it started right after we deployed, done with the logs" })
    assert.is_false(has(out.case.milestones, "mitigation_accepted"))
    assert.is_false(has(out.case.milestones, "solution_accepted"))
    -- once the engine proposed a mitigation and asked, "done" is an answer
    out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert.equal("mitigation", out.case.stage)
    assert.equal("mitigation", out.case.investigation.awaiting)
    out = assert(sim:turn { query = "done" })
    assert.is_true(has(out.case.milestones, "mitigation_accepted"))
    assert.equal("treatment", out.case.stage)
  end)

  it("reads clear answers conservatively", function()
    for _, s in ipairs { "yes", "Y", "yes.", "Confirm", "correct!", "That's right",
                         "go ahead", "yes, that's it" } do
      assert.equal("yes", lifecycle.reply(s), s)
    end
    for _, s in ipairs { "no", "Nope", "no, it is the database", "wrong" } do
      assert.equal("no", lifecycle.reply(s), s)
    end
    for _, s in ipairs { "yes but not the disk", "maybe", "yesterday it broke", "ok",
                         "I think so", "" } do
      assert.is_nil(lifecycle.reply(s), s)
    end
    assert.is_true(lifecycle.read_query("I applied it").applied)
    assert.is_false(lifecycle.read_query("I have not applied it yet").applied)
    assert.is_true(lifecycle.read_query("we need a long-term fix").lasting)
    assert.is_false(lifecycle.read_query("we need a longterm plan").lasting)
    local q = lifecycle.read_query("Why is my pod OOMKilled?")
    assert.is_true(q.question and q.problem)
    q = lifecycle.read_query("Can't connect to the database")
    assert.is_true(q.problem and not q.question)
  end)
end)
