-- One disk-full incident walked end to end over HTTP by the investigation engine, on SQLite and
-- PostgreSQL: a first turn with a log of "No space left on device" (inquiry, a proposed problem
-- statement), the user's confirmation (investigating, diagnosis), `df -h` with / at 100%
-- (hypotheses, a root cause, fixes), the mitigation applied and verified, the lasting fix applied
-- and verified (a proposed resolution), the user's confirmation (resolved). Along the way: every
-- TurnResponse field, GET /ui in its three variants, the evidence linked to hypotheses, the
-- messages, the title from the problem statement, and 409 CASE_TERMINAL afterwards.
local helpers = require "spec.helpers"
local json = require "fm.json"
local tc = require "fm_test.turns_client"

local null = json.null

local function has(list, v)
  for _, x in ipairs(list or {}) do if x == v then return true end end
  return false
end

local function action_of(t, typ)
  for _, a in ipairs(t.suggested_actions) do if a.type == typ then return a end end
  return nil
end

local COMMON = { "case_id", "created_at", "current_turn", "title", "updated_at",
                 "uploaded_files_count", "valid_next_states", "state" }

local function assert_common(ui, case_id, turn, files)
  for _, k in ipairs(COMMON) do assert.is_not_nil(ui[k], "ui." .. k) end
  assert.equal(case_id, ui.case_id)
  assert.equal(turn, ui.current_turn)
  assert.equal(files, ui.uploaded_files_count)
  assert.is_table(ui.valid_next_states)
end

for _, b in ipairs(helpers.db_backends()) do
  describe("an investigation over HTTP on " .. b.name, function()
    local c
    lazy_setup(function()
      c = select(2, tc.start(b.url(), "sre"))
    end)
    lazy_teardown(helpers.cleanup)

    it("takes a disk-full case from the first log to resolved", function()
      local id = c:new_case { title = null, description = "" }
      local function turn(n, fields)
        local r = c:turn(id, fields)
        assert.equal(200, r.status, r.body)
        local t = r.json()
        tc.assert_turn_response(t)
        assert.equal(n, t.turn_number)
        return t
      end

      -- 1. the problem in the user's words, with a log: inquiry, a proposed problem statement
      local t1 = turn(1, { query = "Our ingest workers started failing writes 20 minutes ago",
        file = { "app.log", tc.fixture("app-enospc.log") } })
      assert.equal("inquiry", t1.case_state)
      assert.equal(1, #t1.attachments_processed)
      assert.equal("completed", t1.attachments_processed[1].processing_status)
      assert.is_false(t1.progress_transparency.active)
      assert.equal(null, t1.cause_assurance) -- no root cause stated yet
      local confirm = action_of(t1, "confirmation")
      assert.is_table(confirm, "a confirmation is suggested")
      local ui = c:ui(id)
      assert_common(ui, id, 1, 1)
      assert.equal("inquiry", ui.state)
      local pc = ui.inquiry.problem_confirmation
      assert.is_false(ui.inquiry.decided_to_investigate)
      assert.is_true(ui.inquiry.inquiry_turns >= 1)
      assert.is_false(pc.problem_statement_confirmed)
      assert.is_string(pc.proposed_problem_statement)
      assert.is_truthy(pc.proposed_problem_statement:lower():find("space", 1, true)
        or pc.proposed_problem_statement:lower():find("disk", 1, true),
        pc.proposed_problem_statement)

      -- 2. the user confirms it: investigating, stage diagnosis
      local t2 = turn(2, { intent_type = "confirmation",
        intent_data = { type = "confirmation", confirmation_value = true } })
      assert.equal("investigating", t2.case_state)
      assert.is_true(t2.progress_made)
      assert.is_true(t2.progress_transparency.active)
      local detail = c:case(id)
      assert.equal("investigating", detail.state)
      assert.equal("diagnosis", detail.current_stage)
      ui = c:ui(id)
      assert_common(ui, id, 2, 1)
      assert.equal("investigating", ui.state)
      assert.is_string(ui.problem_statement)
      assert.is_string(ui.agent_status)
      assert.equal("diagnosis", ui.progress.current_stage)
      assert.same({ "resolved", "closed" }, ui.valid_next_states)

      -- 3. df -h with / at 100%: hypotheses, the root cause, fixes proposed
      local t3 = turn(3, { query = "here is df -h from the ingest host",
        file = { "df-h.txt", tc.fixture("df-h-full.txt") } })
      assert.equal("investigating", t3.case_state)
      assert.is_true(has(t3.milestones_completed, "root_cause_identified"))
      assert.is_true(has(t3.milestones_completed, "solution_proposed"))
      assert.is_string(t3.cause_assurance)
      assert.is_boolean(t3.cause_overclaim)
      ui = c:ui(id)
      assert.is_true(#ui.active_hypotheses >= 1)
      local validated
      for _, h in ipairs(ui.active_hypotheses) do
        assert.matches("^hyp_%x+$", h.hypothesis_id)
        assert.is_string(h.text)
        assert.is_number(h.likelihood)
        assert.is_number(h.evidence_count)
        if h.state == "validated" then validated = h end
      end
      assert.is_table(validated, "a validated hypothesis")
      assert.is_true(validated.evidence_count >= 1)
      assert.is_table(ui.working_conclusion)
      assert.is_true(#ui.latest_evidence == 2)
      assert.is_true(ui.progress.active_hypotheses >= 1)
      assert.equal(2, ui.progress.total_evidence)
      assert.is_true(#ui.next_actions >= 1)
      -- the df evidence is causal and names the validated hypothesis
      local ev = c:evidence(id).evidence
      assert.equal(2, #ev)
      local df = ev[2]
      assert.equal("df-h.txt", df.source_file.filename)
      assert.equal("causal_evidence", df.category)
      local linked = false
      for _, rh in ipairs(df.related_hypotheses) do
        assert.matches("^hyp_%x+$", rh.hypothesis_id)
        assert.is_string(rh.statement)
        assert.is_truthy(rh.stance == "for" or rh.stance == "against")
        if rh.hypothesis_id == validated.hypothesis_id and rh.stance == "for" then
          linked = true
        end
      end
      assert.is_true(linked, "df evidence supports the validated hypothesis")
      local one = c:get("/api/v1/cases/" .. id .. "/evidence/" .. df.evidence_id)
      assert.same(df.related_hypotheses, one.related_hypotheses)
      detail = c:case(id)
      assert.is_true(detail.hypothesis_count >= 1)
      assert.is_true(detail.solution_count >= 1)

      -- 4. the user applied the mitigation, 5. and shows df -h afterwards
      local t4 = turn(4, { query = "I applied the fix: deleted old segments and rotated logs" })
      assert.is_true(t4.progress_made)
      assert.equal("investigating", t4.case_state)
      local t5 = turn(5, { query = "df -h after the cleanup",
        file = { "df-h-after.txt", tc.fixture("df-h-clean.txt") } })
      assert.equal("investigating", t5.case_state)
      assert.is_true(t5.progress_made)

      -- 6. the lasting fix applied, 7. checked again a day later: verified, resolution proposed
      local t6 = turn(6, { query = "I applied the lasting fix: logrotate caps the logs now",
        intent_type = "confirmation",
        intent_data = { type = "confirmation", confirmation_value = "applied" } })
      assert.equal("investigating", t6.case_state)
      assert.is_true(has(t6.milestones_completed, "solution_accepted"))
      local t7 = turn(7, { query = "df -h a day later",
        file = { "df-h-day2.txt", tc.fixture("df-h-clean.txt") .. "\n" } })
      assert.equal("investigating", t7.case_state) -- proposed, never resolved on its own
      assert.is_true(has(t7.milestones_completed, "solution_verified"))
      assert.equal("confirmed", t7.cause_assurance)
      assert.is_false(t7.cause_overclaim)
      assert.is_table(action_of(t7, "status_transition"), "a resolution is proposed")
      ui = c:ui(id)
      assert.equal("awaiting_confirmation", ui.agent_status)
      assert.equal("verified", ui.progress_transparency.verification_status)

      -- 8. the user confirms: resolved
      local t8 = turn(8, { intent_type = "status_transition", intent_data = {
        type = "status_transition", to_state = "resolved", user_confirmed = true } })
      assert.equal("resolved", t8.case_state)
      assert.is_false(t8.progress_transparency.active)
      detail = c:case(id)
      assert.equal("resolved", detail.state)
      assert.is_true(detail.is_terminal)
      assert.is_string(detail.resolved_at)
      ui = c:ui(id)
      assert_common(ui, id, 8, 4)
      assert.equal("resolved", ui.state)
      assert.same({}, ui.valid_next_states)
      assert.equal(detail.resolved_at, ui.resolved_at)
      assert.is_string(ui.problem_statement)
      local rs = ui.resolution_summary
      assert.equal(4, rs.evidence_collected)
      assert.equal(7, rs.milestones_completed)
      assert.is_true(rs.hypotheses_tested >= 1)
      assert.is_number(rs.total_duration_minutes)
      assert.is_true(#rs.key_insights >= 1)
      local rc = ui.root_cause
      assert.is_true(#rc.description > 0)
      assert.equal("environment", rc.category)
      assert.equal("confirmed", rc.cause_assurance)
      assert.is_false(rc.cause_overclaim)
      assert.is_string(rc.root_cause_id)
      assert.is_string(rc.severity)
      assert.is_true(#ui.solution_applied.description > 0)
      assert.is_string(ui.solution_applied.applied_at)
      assert.is_string(ui.solution_applied.applied_by)
      assert.is_true(ui.verification_status.verified)
      assert.matches("df%-h%-day2%.txt", ui.verification_status.details)
      assert.is_string(ui.verification_status.verification_method)

      -- 9. a further turn: 409 CASE_TERMINAL, nothing changes
      local before = c:snapshot(id)
      local r9 = c:turn(id, { query = "one more thing" })
      assert.equal(409, r9.status, r9.body)
      assert.equal("CASE_TERMINAL", r9.headers["x-error-code"])
      assert.same(before, c:snapshot(id))

      -- the conversation: the user's message and the answer of every turn, in order
      local msgs = c:messages(id).messages
      assert.equal(16, #msgs)
      for i, m in ipairs(msgs) do
        assert.equal((i + 1) // 2, m.turn_number)
        assert.equal(i % 2 == 1 and "user" or "assistant", m.role)
        assert.is_true(#m.content > 0)
      end
      assert.equal(t3.agent_response, msgs[6].content)
      assert.same(t3.suggested_actions, msgs[6].metadata.suggested_actions)
      assert.is_table(msgs[6].metadata.playbook_report)
      assert.equal("df-h.txt", msgs[5].metadata.attachments[1].filename)

      -- the title comes from the problem statement
      local title = c:req("POST", "/api/v1/cases/" .. id .. "/title", { json = {} })
      assert.equal(200, title.status, title.body)
      assert.equal("problem_statement", title.headers["x-title-source"])
      assert.is_nil(title.json().title:match("^Case%-"))
      assert.equal(title.json().title, c:case(id).title)
      local again = c:req("POST", "/api/v1/cases/" .. id .. "/title", { json = {} })
      assert.equal("existing", again.headers["x-title-source"])
    end)

    it("titles a case from its description before any problem statement", function()
      local id = c:new_case { title = null,
        description = "Checkout latency doubled after the 14:00 deploy. Users complain." }
      local r = c:req("POST", "/api/v1/cases/" .. id .. "/title", { json = {} })
      assert.equal(200, r.status, r.body)
      assert.equal("heuristic", r.headers["x-title-source"])
      assert.equal("Checkout latency doubled after 14:00 deploy", r.json().title)
    end)
  end)
end
