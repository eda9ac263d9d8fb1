-- Cases that close instead of resolving, on SQLite and PostgreSQL: a disk-full case whose
-- verified mitigation is enough (mitigation_sufficient), an investigation with nothing to go on
-- (closed_insufficient_evidence: no root cause, said honestly), and a plain question
-- (inquiry_only). The closure_reason is stored, GET /ui answers the _Resolved variant with state
-- "closed", and the engine never closes a case the user did not confirm closing.
local helpers = require "spec.helpers"
local json = require "fm.json"
local tc = require "fm_test.turns_client"

local null = json.null

local function close_intent(reason, confirmed)
  return { intent_type = "status_transition", intent_data = { type = "status_transition",
    to_state = "closed", closure_reason = reason, user_confirmed = confirmed } }
end

for _, b in ipairs(helpers.db_backends()) do
  describe("closing cases on " .. b.name, function()
    local c
    lazy_setup(function()
      c = select(2, tc.start(b.url(), "closer"))
    end)
    lazy_teardown(helpers.cleanup)

    local function turn(id, fields, n)
      local r = c:turn(id, fields)
      assert.equal(200, r.status, r.body)
      local t = r.json()
      tc.assert_turn_response(t)
      if n then assert.equal(n, t.turn_number) end
      return t
    end

    local function assert_closed_ui(id, reason)
      local detail = c:case(id)
      assert.equal("closed", detail.state)
      assert.equal(reason, detail.closure_reason)
      assert.is_string(detail.closed_at)
      assert.equal(null, detail.resolved_at)
      assert.is_true(detail.is_terminal)
      local ui = c:ui(id)
      assert.equal("closed", ui.state)
      assert.equal(detail.closed_at, ui.resolved_at)
      assert.same({}, ui.valid_next_states)
      for _, k in ipairs { "resolution_summary", "root_cause", "solution_applied",
                           "verification_status" } do
        assert.is_table(ui[k], k)
      end
      for _, k in ipairs { "description", "category", "cause_assurance", "root_cause_id",
                           "severity" } do
        assert.is_string(ui.root_cause[k], "root_cause." .. k)
      end
      assert.is_boolean(ui.root_cause.cause_overclaim)
      assert.is_string(ui.solution_applied.description)
      assert.is_string(ui.solution_applied.applied_at)
      assert.is_string(ui.solution_applied.applied_by)
      assert.is_boolean(ui.verification_status.verified)
      assert.is_string(ui.verification_status.details)
      assert.is_string(ui.verification_status.verification_method)
      -- and it takes no more turns
      local before = c:snapshot(id)
      local r = c:turn(id, { query = "reopen please" })
      assert.equal(409, r.status, r.body)
      assert.equal("CASE_TERMINAL", r.headers["x-error-code"])
      assert.same(before, c:snapshot(id))
      return ui, detail
    end

    it("closes a disk-full case whose verified mitigation is enough", function()
      local id = c:new_case { title = null, description = "" }
      turn(id, { query = "ingest writes fail since 09:14",
        file = { "app.log", tc.fixture("app-enospc.log") } }, 1)
      assert.equal("investigating", turn(id, { query = "yes" }, 2).case_state)
      local t3 = turn(id, { query = "df -h", file = { "df.txt", tc.fixture("df-h-full.txt") } }, 3)
      assert.is_truthy(t3.milestones_completed[1])
      turn(id, { query = "I applied the fix: cleaned up old segments" }, 4)
      local t5 = turn(id, { query = "df -h now",
        file = { "df-after.txt", tc.fixture("df-h-clean.txt") } }, 5)
      assert.equal("investigating", t5.case_state)
      -- a close the user did not confirm changes nothing
      local t6 = turn(id, close_intent("mitigation_sufficient", false), 6)
      assert.equal("investigating", t6.case_state)
      assert.equal("investigating", c:case(id).state)
      local t7 = turn(id, close_intent("mitigation_sufficient", true), 7)
      assert.equal("closed", t7.case_state)
      assert.is_false(t7.progress_transparency.active)
      local ui = assert_closed_ui(id, "mitigation_sufficient")
      -- the root cause was found: it is reported, with the evidence it rests on
      assert.is_truthy(ui.root_cause.description:find("100%", 1, true)
        or ui.root_cause.description:lower():find("space", 1, true), ui.root_cause.description)
      assert.equal("environment", ui.root_cause.category)
      assert.is_true(ui.verification_status.verified)
      assert.matches("mitigation", ui.verification_status.details)
      assert.equal(3, ui.resolution_summary.evidence_collected)
      local found = false
      for _, k in ipairs(ui.resolution_summary.key_insights) do
        if k:find("mitigation_sufficient", 1, true) then found = true end
      end
      assert.is_true(found)
      assert.equal(14, c:messages(id).total_count)
    end)

    it("closes an investigation without a root cause and says so", function()
      local id = c:new_case { title = null, description = "" }
      turn(id, { query = "Our batch jobs are failing randomly since yesterday" }, 1)
      assert.equal("investigating", turn(id, { query = "yes" }, 2).case_state)
      local t3 = turn(id, close_intent("closed_insufficient_evidence", true), 3)
      assert.equal("closed", t3.case_state)
      assert.equal(null, t3.cause_assurance)
      local ui = assert_closed_ui(id, "closed_insufficient_evidence")
      assert.equal("no root cause was identified", ui.root_cause.description)
      assert.equal("other", ui.root_cause.category)
      assert.equal("no_root", ui.root_cause.cause_assurance)
      assert.is_false(ui.root_cause.cause_overclaim)
      assert.is_false(ui.verification_status.verified)
      assert.matches("closed_insufficient_evidence", ui.verification_status.details)
      assert.equal("no solution was applied", ui.solution_applied.description)
      assert.equal(0, ui.resolution_summary.evidence_collected)
      assert.equal(0, ui.resolution_summary.milestones_completed)
    end)

    it("closes a question answered in inquiry as inquiry_only", function()
      local id = c:new_case { title = null, description = "" }
      local t1 = turn(id, { query = "How do I see which directory uses the most disk space?" }, 1)
      assert.equal("inquiry", t1.case_state)
      local t2 = turn(id, close_intent("inquiry_only", true), 2)
      assert.equal("closed", t2.case_state)
      assert.same({}, t2.milestones_completed)
      local ui = assert_closed_ui(id, "inquiry_only")
      assert.equal("no root cause was identified", ui.root_cause.description)
      assert.is_false(ui.verification_status.verified)
      assert.equal(4, c:messages(id).total_count)
    end)

    it("refuses a closure reason that is not the contract's", function()
      local id = c:new_case { title = null, description = "" }
      turn(id, { query = "the api returns 502s" }, 1)
      local before = c:snapshot(id)
      local r = c:turn(id, close_intent("because", true))
      assert.equal(422, r.status, r.body)
      assert.same({ "body", "intent_data", "closure_reason" }, r.json().detail[1].loc)
      assert.same(before, c:snapshot(id))
    end)
  end)
end
