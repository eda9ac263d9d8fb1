-- fm.agent: one turn of the investigation engine (contract section 7).
--
--   local out, err = require("fm.agent").turn(state)
--
-- Pure: reads its argument (the case, its hypotheses and solutions, the user's message, the ctx
-- over all the case's evidence), runs the playbooks (fm.agent.runner) or the registered LLM
-- step (fm.agent.llm), applies the lifecycle (fm.agent.lifecycle), composes the answer
-- (fm.agent.compose) and returns a TurnOutput checked by fm.agent.output.validate. It writes
-- nothing: the caller stores the TurnOutput in the turn's transaction.
local compose = require "fm.agent.compose"
local json = require "fm.json"
local lifecycle = require "fm.agent.lifecycle"
local llm = require "fm.agent.llm"
local log = require "fm.log"
local output = require "fm.agent.output"
local time = require "fm.time"

local M = {}

local function tbl(v) return type(v) == "table" and v or {} end

local function empty_run(failed)
  return { scores = {}, matched = {}, hypotheses = {}, asks = {}, mitigations = {},
           solutions = {}, runbooks = {}, failed = failed or {} }
end

-- The runbooks the answer drew on: the playbooks' and those of a question answered.
local function runbooks_of(run, d)
  local out, seen = {}, {}
  local q = d.events.question and d.events.question.runbooks or {}
  for _, list in ipairs { tbl(run.runbooks), tbl(q) } do
    for _, r in ipairs(list) do
      local k = type(r) == "table" and (r.document_id or r.title)
      if k and not seen[k] then seen[k] = true; out[#out + 1] = r end
    end
  end
  return out
end

local function report(run)
  local matched = setmetatable({}, json.array_mt)
  for _, m in ipairs(tbl(run.matched)) do matched[#matched + 1] = { id = m.id, score = m.score } end
  return { matched = matched,
           failed = setmetatable(lifecycle.copy(tbl(run.failed)), json.array_mt),
           elapsed_ms = run.elapsed_ms }
end

-- The engine's own TurnOutput from the lifecycle's decision and the composed answer.
local function build(d, run, response, actions)
  local solutions = {}
  for _, s in ipairs(d.solutions) do if not s.keep then solutions[#solutions + 1] = s end end
  local inv = d.inv
  if d.state ~= "inquiry" and d.state ~= "investigating" then inv.awaiting = nil end
  return {
    response = response, suggested_actions = actions, progress_made = d.progress == true,
    case = { state = d.state, stage = (d.state ~= "inquiry") and d.stage or nil,
             closure_reason = d.state == "closed" and d.closure_reason or nil,
             milestones = d.milestone_list, investigation = inv },
    hypotheses = d.hypotheses, solutions = solutions, evidence = d.evidence,
    playbook_report = report(run),
  }
end

-- An LLM output's investigation keeps the engine's keys it does not give.
local function merge_investigation(o, base)
  if type(o) ~= "table" or type(o.case) ~= "table" then return o end
  local inv = lifecycle.copy(base) or {}
  if type(o.case.investigation) == "table" then
    for k, v in pairs(o.case.investigation) do inv[k] = v end
  end
  local merged = {}
  for k, v in pairs(o) do merged[k] = v end
  merged.case = {}
  for k, v in pairs(o.case) do merged.case[k] = v end
  merged.case.investigation = inv
  return merged
end

--- One turn. state: contract section 7 ({case, hypotheses, solutions, message, ctx,
-- new_evidence_ids, deadline}). opts (for tools and specs): registry (the playbooks; default
-- fm.playbooks.registry()), runner (default fm.agent.runner).
-- Returns a TurnOutput (validated, arrays marked for fm.json), or nil, "timeout" when the
-- deadline passed, or nil, "terminal" for a resolved or closed case. Raises on misuse (state
-- not a table) and when the engine's own output fails validation (a bug, never the user's).
function M.turn(state, opts)
  if type(state) ~= "table" then error("fm.agent.turn: state must be a table", 2) end
  opts = opts or {}
  local deadline = type(state.deadline) == "number" and state.deadline or nil
  local function expired() return deadline ~= nil and time.monotonic() > deadline end
  if expired() then return nil, "timeout" end
  if lifecycle.TERMINAL[tbl(state.case).state] then return nil, "terminal" end

  local run
  if type(state.ctx) == "table" then
    local runner = opts.runner or require "fm.agent.runner"
    local ok, res = pcall(runner.run, state.ctx, { deadline = deadline,
                                                   registry = opts.registry })
    if ok and type(res) == "table" then
      run = res
    else
      run = empty_run { { id = "runner", phase = "run", kind = "error",
                          message = tostring(res) } }
    end
  else
    run = empty_run()
  end
  -- An operator learns of a broken playbook from the log; the user sees the answer without it.
  for _, f in ipairs(run.failed) do
    log.warn("playbook failed", { playbook = f.id, phase = f.phase, step = f.step,
                                  kind = f.kind, message = f.message })
  end
  if expired() then return nil, "timeout" end

  local d = lifecycle.step(state, run)
  local response, actions = compose.answer(state, run, d)
  local draft = build(d, run, response, actions)
  local out, errs = output.validate(draft, state)
  if not out then
    error("fm.agent.turn: the engine's own output is invalid: " .. table.concat(errs, "; "))
  end

  if llm.configured() then
    local input = llm.input(state, run, out, runbooks_of(run, d), output.schema)
    local res, err = llm.call(input)
    if expired() then return nil, "timeout" end
    local checked, cerrs
    if res then
      checked, cerrs = output.validate(merge_investigation(res, out.case.investigation), state)
      if not checked then err = "invalid output: " .. table.concat(cerrs, "; ", 1,
        math.min(#cerrs, 10)) end
    end
    if checked then
      checked.playbook_report = out.playbook_report
      checked.playbook_report.llm = { used = true }
      return checked
    end
    out.playbook_report.llm = { used = false, error = err }
  end
  return out
end

return M
