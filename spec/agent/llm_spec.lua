-- fm.agent.llm: the seam for an LLM step, and fm.agent.turn's deadline.
local S = require "spec.agent.support"
local agent = require "fm.agent"
local json = require "fm.json"
local llm = require "fm.agent.llm"
local time = require "fm.time"

describe("fm.agent.llm", function()
  after_each(function() llm.unregister() end)

  it("is not configured until a step is registered", function()
    assert.is_false(llm.configured())
    assert.has_error(function() llm.register("gpt") end,
      "fm.agent.llm.register: fn must be a function")
    llm.register(function() end)
    assert.is_true(llm.configured())
    llm.unregister()
    assert.is_false(llm.configured())
  end)

  it("hands the step the state, the playbooks, the runbooks, the schema and a draft", function()
    local seen
    llm.register(function(input)
      seen = input
      return nil, "not now"
    end)
    local sim = S.case { search_kb = function() return { { document_id = "kb1",
      title = "Disk full runbook" } } end }
    local out = assert(sim:turn { query = "disk is full", files = { { "df.txt", S.DF_FULL } } })
    assert.equal("inquiry", seen.state.case.state)
    assert.equal("disk is full", seen.state.message.query)
    assert.equal("ev_1", seen.state.ctx.evidence[1].id)
    assert.is_table(seen.state.ctx.signals)
    assert.is_nil(seen.state.ctx.search_kb)          -- no functions cross the seam
    assert.equal("disk-full", seen.playbooks.matched[1].id)
    assert.is_table(seen.schema.properties.case)
    assert.matches("never resolve or close on your own", seen.instructions:lower(), 1, true)
    assert.equal(out.response, seen.draft.response)
    assert.is_number(seen.deadline)
    -- the whole input can be sent to a provider as JSON
    assert.is_string(json.encode { state = seen.state, playbooks = seen.playbooks,
                                   draft = seen.draft, schema = seen.schema })
    -- the step said no: the engine's own answer, and the report says why
    assert.same({ used = false, error = "the LLM step failed: not now" },
      out.playbook_report.llm)
  end)

  it("uses a valid output of the step, keeping the investigation keys it leaves out", function()
    llm.register(function(input)
      local o = json.decode(json.encode(input.draft)) -- what a provider would send back
      o.response = "**From the model.** " .. o.response
      o.case.investigation = { note = "model was here" }
      return o
    end)
    local sim = S.case {}
    local out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert.matches("^%*%*From the model%.%*%*", out.response)
    assert.same({ used = true }, out.playbook_report.llm)
    assert.equal("model was here", out.case.investigation.note)
    assert.matches("^Disk full", out.case.investigation.proposed_problem_statement)
    assert.equal("disk-full", out.playbook_report.matched[1].id)
  end)

  it("falls back to the engine's answer when the step's output is invalid or illegal",
    function()
      llm.register(function(input)
        local o = json.decode(json.encode(input.draft))
        o.suggested_actions = {}
        return o
      end)
      local sim = S.case {}
      local out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
      assert.is_false(out.playbook_report.llm.used)
      assert.matches("invalid output: suggested_actions: must hold 2 to 4",
        out.playbook_report.llm.error, 1, true)
      assert.matches("Proposed problem statement", out.response, 1, true)

      -- a model that resolves the case on its own is not obeyed
      llm.register(function(input)
        local o = json.decode(json.encode(input.draft))
        o.case.state = "resolved"
        o.case.milestones = { "solution_verified" }
        return o
      end)
      out = assert(sim:turn { query = "what now?" })
      assert.equal("inquiry", out.case.state)
      assert.matches("did not confirm the move to resolved", out.playbook_report.llm.error,
        1, true)
    end)

  it("falls back when the step raises", function()
    llm.register(function() error("provider exploded") end)
    local sim = S.case {}
    local out = assert(sim:turn { files = { { "df.txt", S.DF_FULL } } })
    assert.is_false(out.playbook_report.llm.used)
    assert.matches("provider exploded", out.playbook_report.llm.error, 1, true)
    assert.equal("inquiry", out.case.state)
  end)

  it("answers nil, 'timeout' when the step runs past the deadline", function()
    llm.register(function(input)
      time.sleep(math.max(0, input.deadline - time.monotonic()) + 0.02)
      return input.draft
    end)
    local sim = S.case {}
    local out, err = sim:turn { files = { { "df.txt", S.DF_FULL } },
                                deadline = time.monotonic() + 0.5 }
    assert.is_nil(out)
    assert.equal("timeout", err)
  end)
end)

describe("fm.agent.turn deadline", function()
  it("answers nil, 'timeout' when the deadline has passed", function()
    local sim = S.case {}
    local out, err = sim:turn { query = "disk full", deadline = time.monotonic() - 1 }
    assert.is_nil(out)
    assert.equal("timeout", err)
  end)

  it("answers nil, 'timeout' when the playbooks run past it", function()
    local slow = { run = function()
      time.sleep(0.05)
      return { matched = {}, hypotheses = {}, failed = {} }
    end }
    local sim = S.case {}
    local state = sim:state { query = "disk full" }
    state.deadline = time.monotonic() + 0.01
    local out, err = agent.turn(state, { runner = slow })
    assert.is_nil(out)
    assert.equal("timeout", err)
    -- the same turn with time to spare answers
    state.deadline = time.monotonic() + 10
    assert.is_table(agent.turn(state, { runner = slow }))
  end)

  it("raises only on misuse; a bare state (no ctx, no history) still answers", function()
    assert.has_error(function() agent.turn(nil) end, "fm.agent.turn: state must be a table")
    local out = assert(agent.turn({ case = { state = "inquiry", turn = 1 },
                                    message = { query = "hello" } }))
    assert.equal("inquiry", out.case.state)
    assert.is_true(#out.suggested_actions >= 2)
    assert.is_nil(agent.turn({ case = { state = "closed" } }))
    assert.equal("terminal", select(2, agent.turn({ case = { state = "resolved" } })))
  end)
end)
