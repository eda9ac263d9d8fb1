-- fm.agent.output: TurnOutput validation (types, enums, ranges, sizes, lifecycle legality) and
-- its JSON Schema.
local json = require "fm.json"
local output = require "fm.agent.output"

local function actions()
  return { { label = "Upload logs", type = "upload" },
           { label = "Run df", type = "command", payload = "df -h",
             intent = { label = "Yes", type = "confirmation", payload = "yes" } } }
end

local function good(over)
  local o = {
    response = "## Hello\nok", suggested_actions = actions(), progress_made = true,
    case = { state = "investigating", stage = "diagnosis", milestones = { "symptom_verified" },
             investigation = { problem_statement = "disk full" } },
    hypotheses = { { key = "disk-full:data_growth", playbook = "disk-full",
                     statement = "Data grew", category = "environment", likelihood = 0.8,
                     state = "active", evidence_for = { { summary = "df 97%",
                       evidence_id = "ev_1", line = 4 } }, evidence_against = {} } },
    solutions = { { key = "disk-full:free_space", kind = "mitigation", title = "Free space",
                    risk = "low", status = "proposed", command = "du -sh /var/*" } },
    evidence = { { evidence_id = "ev_1", category = "causal_evidence",
                   hypotheses = { { key = "disk-full:data_growth", stance = "for" } } } },
  }
  for k, v in pairs(over or {}) do o[k] = v end
  return o
end

local prior = { case = { state = "investigating", stage = "diagnosis", turn = 3,
                         milestones = {}, investigation = {} }, message = { query = "hi" } }

local function rejects(o, pattern, state)
  local out, errs = output.validate(o, state or prior)
  assert.is_nil(out)
  local text = table.concat(errs, "\n")
  assert.matches(pattern, text, 1, true)
  return errs
end

describe("fm.agent.output.validate", function()
  it("accepts a good output and normalises it for fm.json", function()
    local out = assert(output.validate(good(), prior))
    assert.equal("investigating", out.case.state)
    assert.same({}, out.hypotheses[1].evidence_against)
    assert.equal(0.8, out.hypotheses[1].likelihood)
    -- empty arrays stay arrays in JSON
    local o = good { hypotheses = {}, solutions = {}, evidence = {} }
    out = assert(output.validate(o, prior))
    local text = json.encode(out)
    assert.matches('"hypotheses":[]', text, 1, true)
    assert.matches('"milestones":["symptom_verified"]', text, 1, true)
    -- unknown fields are dropped, defaults filled
    o = good { extra = 1 }
    o.progress_made = nil
    out = assert(output.validate(o, prior))
    assert.is_nil(out.extra)
    assert.is_false(out.progress_made)
  end)

  it("rejects malformed outputs, naming the field", function()
    assert.same({ "output: must be a table" }, select(2, output.validate("x")))
    rejects(good { response = "" }, "response: must not be blank")
    rejects(good { response = ("x"):rep(64 * 1024 + 1) }, "response: at most 65536 bytes")
    rejects(good { response = "\255\254" }, "response: must be valid UTF-8")
    rejects(good { suggested_actions = { { label = "a", type = "upload" } } },
      "suggested_actions: must hold 2 to 4 actions (got 1)")
    local five = actions()
    for i = 1, 3 do five[#five + 1] = { label = "x" .. i, type = "upload" } end
    rejects(good { suggested_actions = five }, "must hold 2 to 4 actions (got 5)")
    rejects(good { suggested_actions = { { label = "a", type = "upload" },
      { label = "b", type = "confirmation", intent = { label = "b", type = "dance" } } } },
      "suggested_actions[2].intent.type: must be one of")
    rejects(good { progress_made = "yes" }, "progress_made: must be a boolean")
    rejects(good { case = { state = "open", milestones = {} } }, "case.state: must be one of")
    rejects(good { case = { state = "investigating", stage = "triage", milestones = {} } },
      "case.stage: must be one of")
    rejects(good { case = { state = "investigating", stage = "diagnosis",
      milestones = { "done_it" } } }, "case.milestones[1]: must be one of")
    local h = good().hypotheses[1]
    h.likelihood = 1.5
    rejects(good { hypotheses = { h } }, "hypotheses[1].likelihood: must be a number 0..1")
    h = good().hypotheses[1]
    h.state = "maybe"
    rejects(good { hypotheses = { h } }, "hypotheses[1].state: must be one of")
    h = good().hypotheses[1]
    h.category = "vibes"
    rejects(good { hypotheses = { h } }, "hypotheses[1].category: must be one of")
    h = good().hypotheses[1]
    h.key = "Bad Key"
    rejects(good { hypotheses = { h } }, "hypotheses[1].key: has the wrong form")
    local many = {}
    for i = 1, 21 do
      local x = good().hypotheses[1]
      x.key = "k" .. i
      many[i] = x
    end
    rejects(good { hypotheses = many }, "hypotheses: at most 20 items")
    rejects(good { hypotheses = { good().hypotheses[1], good().hypotheses[1] } },
      "duplicate key")
    rejects(good { evidence = { { evidence_id = "ev_1", category = "gossip" } } },
      "evidence[1].category: must be one of")
    rejects(good { evidence = { { evidence_id = "ev_1", category = "causal_evidence",
      hypotheses = { { key = "k", stance = "maybe" } } } } }, "stance: must be one of")
    rejects(good { solutions = { { key = "s", kind = "prayer", title = "t", risk = "low",
      status = "proposed" } } }, "solutions[1].kind: must be one of")
    rejects(good { solutions = { { key = "s", kind = "solution", title = "t", risk = "extreme",
      status = "proposed" } } }, "solutions[1].risk: must be one of")
    rejects(good { hypotheses = { "x" } }, "hypotheses[1]: must be an object")
    rejects(good { hypotheses = { a = 1 } }, "hypotheses: must be an array")
  end)

  it("rejects illegal lifecycle moves given the prior state", function()
    local o = good()
    -- resolved without the user's confirmation nor evidence the cause is gone
    o.case = { state = "resolved", stage = "treatment", milestones = {}, investigation = {} }
    local errs = rejects(o, "the user did not confirm the move to resolved")
    assert.matches("needs the solution_verified milestone", table.concat(errs, "\n"), 1, true)
    -- confirmed by the user but not verified
    local confirmed = { case = prior.case, message = { intent = { type = "status_transition",
      to_state = "resolved", user_confirmed = true } } }
    rejects(o, "resolved needs the solution_verified milestone", confirmed)
    -- verified and confirmed: legal
    o.case.milestones = { "solution_accepted", "solution_verified" }
    assert(output.validate(o, confirmed))
    -- verified, and a clear yes to a pending proposal: legal; a yes to nothing: illegal
    local pending = { case = { state = "investigating", turn = 5, investigation = {
      pending_transition = { to_state = "resolved", reason = "verified" } } },
      message = { query = "yes" } }
    assert(output.validate(o, pending))
    rejects(o, "did not confirm", { case = { state = "investigating", turn = 5,
      investigation = {} }, message = { query = "yes" } })
    -- closed needs a closure reason, and only closed has one
    o = good()
    o.case = { state = "closed", milestones = {}, investigation = {} }
    rejects(o, "closed needs a closure reason", { case = prior.case, message = { intent = {
      type = "status_transition", to_state = "closed", user_confirmed = true } } })
    o = good()
    o.case.closure_reason = "inquiry_only"
    rejects(o, "only a closed case has a closure reason")
    -- a terminal case never changes; no way back to inquiry
    o = good()
    rejects(o, "the case is closed: its state cannot change", { case = { state = "closed" } })
    o.case = { state = "inquiry", milestones = {}, investigation = {} }
    rejects(o, "no transition from investigating to inquiry")
    -- inquiry -> investigating needs a proposal made on an earlier turn and a yes now
    o = good()
    local inq = { case = { state = "inquiry", turn = 2, investigation = {
      proposed_problem_statement = "disk full", proposed_turn = 1 } },
      message = { query = "yes" } }
    assert(output.validate(o, inq))
    inq.case.investigation.proposed_turn = 2
    rejects(o, "did not confirm the move to investigating", inq)
    o.case.stage = nil
    inq.case.investigation.proposed_turn = 1
    rejects(o, "an investigating case has a stage", inq)
  end)

  it("has a JSON Schema fm.json can encode, with the enums of the contract", function()
    local text = json.encode(output.schema)
    local back = json.decode(text)
    assert.equal("object", back.type)
    assert.same({ "response", "suggested_actions", "progress_made", "case" }, back.required)
    local sa = back.properties.suggested_actions
    assert.equal(2, sa.minItems)
    assert.equal(4, sa.maxItems)
    assert.same({ "closed", "inquiry", "investigating", "resolved" },
      back.properties.case.properties.state.enum)
    assert.equal(20, back.properties.hypotheses.maxItems)
    assert.same({ "active", "captured", "inconclusive", "refuted", "retired", "validated" },
      back.properties.hypotheses.items.properties.state.enum)
    assert.equal(7, #back.properties.case.properties.milestones.items.enum)
  end)
end)
