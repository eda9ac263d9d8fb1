-- fm.agent.llm: the seam for an LLM step. Nothing is configured until a step is registered
-- (the provider of a later issue does it); fm.agent.turn then hands the step what the engine
-- knows and uses its TurnOutput when fm.agent.output.validate accepts it, else the engine's own
-- answer (playbook_report.llm says which, and why).
--
--   llm.register(function(input) return turn_output end)   -- or nil, "message"
--
-- input = { state (the turn's state without functions: case, hypotheses, solutions, message,
--           new_evidence_ids, ctx = {case, symptom, evidence, signals, hypotheses, now}),
--           playbooks (the runner's result), runbooks (the retrieved runbooks), draft (the
--           engine's own TurnOutput, a valid answer to improve on), schema (the JSON Schema of
--           TurnOutput), instructions (the system prompt), deadline (fm.time.monotonic value) }
local lifecycle = require "fm.agent.lifecycle"

local M = {}

local step

--- True when an LLM step is registered.
function M.configured() return step ~= nil end

--- Registers fn(input) -> TurnOutput table or nil, message. Replaces any earlier step.
function M.register(fn)
  if type(fn) ~= "function" then error("fm.agent.llm.register: fn must be a function", 2) end
  step = fn
end

--- Removes the registered step.
function M.unregister() step = nil end

M.INSTRUCTIONS = [[
You are FaultMaven, an incident troubleshooting copilot for site reliability engineers. You
answer one turn of a troubleshooting case and return a single JSON object that matches the
given schema (TurnOutput). Ground every claim in the evidence you are given (analysis
summaries, digests, the playbooks' findings and hypotheses, the runbooks); when you do not
know, say so plainly and ask for the evidence that would tell.

The case lifecycle (you must follow it):
- inquiry -> investigating -> resolved | closed; inquiry may go straight to closed (a question
  answered). resolved and closed are terminal.
- To start investigating, propose a problem statement (case.investigation.
  proposed_problem_statement) and ask the user to confirm it; only when the user confirms it on
  a later turn (a confirmation or a clear yes) does case.state become investigating, with stage
  diagnosis and investigation.problem_statement set.
- Never resolve or close on your own: propose it (investigation.pending_transition = {to_state,
  closure_reason, reason}) and ask; change case.state only when the user confirmed that very
  move on this turn. resolved needs the solution_verified milestone: new evidence that shows the
  incident's signals are gone after the fix. A closed case has a closure_reason.
- Stages while investigating: diagnosis -> mitigation (root cause known, mitigations proposed)
  -> treatment (a mitigation applied, or the lasting fix asked for).
- Hypotheses are upserted by key "<playbook>:<key>"; states captured, active, validated,
  refuted, inconclusive, retired; likelihood 0..1. Keep the user's own decisions on them.
- Classify this turn's new evidence: causal_evidence, symptom_evidence,
  symptom_absence_evidence, causal_absence_evidence.

The response is markdown: what we see (findings with file and line), what it likely means
(ranked hypotheses with their likelihood as a percentage), what to check next (exact commands
in code blocks), what to do (mitigations and fixes with their risk and how to undo them), and
the question for the user. Give 2 to 4 suggested actions. The draft is the engine's own valid
answer: improve on it, do not contradict its evidence.
]]

-- The state without functions (ctx's helpers) and without the deadline.
local function plain_state(state)
  local s = {}
  for k, v in pairs(state) do
    if k ~= "ctx" and k ~= "deadline" then s[k] = lifecycle.copy(v) end
  end
  local ctx = type(state.ctx) == "table" and state.ctx or {}
  s.ctx = { case = lifecycle.copy(ctx.case), symptom = ctx.symptom,
            evidence = lifecycle.copy(ctx.evidence), signals = lifecycle.copy(ctx.signals),
            hypotheses = lifecycle.copy(ctx.hypotheses), now = ctx.now }
  return s
end

--- The input of the step (see the header).
function M.input(state, run, draft, runbooks, schema)
  return { state = plain_state(state), playbooks = lifecycle.copy(run) or {},
           runbooks = lifecycle.copy(runbooks) or {}, draft = lifecycle.copy(draft),
           schema = schema, instructions = M.INSTRUCTIONS, deadline = state.deadline }
end

--- Calls the registered step. Returns its output table or nil, message (it never raises).
function M.call(input)
  if not step then return nil, "no LLM step is registered" end
  local ok, res, err = pcall(step, input)
  if not ok then return nil, "the LLM step failed: " .. tostring(res) end
  if type(res) ~= "table" then
    return nil, err ~= nil and ("the LLM step failed: " .. tostring(err))
      or "the LLM step returned no output"
  end
  return res
end

return M
