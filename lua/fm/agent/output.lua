-- fm.agent.output: the TurnOutput of contract section 7, checked. The engine's own answer and
-- an LLM step's answer go through M.validate before the turn stores anything, so a malformed or
-- illegal output (a state change the user did not confirm, resolved without evidence the cause
-- is gone) never reaches the database. M.schema is the same shape as a JSON Schema, for an LLM's
-- structured-output format.
local json = require "fm.json"
local lifecycle = require "fm.agent.lifecycle"

local M = {}

M.MAX_RESPONSE = 64 * 1024
M.MIN_ACTIONS, M.MAX_ACTIONS = 2, 4
M.MAX_HYPOTHESES = 20
M.MAX_SOLUTIONS = 40
M.MAX_EVIDENCE = 100
M.MAX_EVIDENCE_REFS = 50
M.MAX_STRING = 4000

local array_mt = json.array_mt
local null = json.null

local function arr(t) return setmetatable(t or {}, array_mt) end

local function keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local RISKS = { low = true, medium = true, high = true }
local KINDS = { mitigation = true, solution = true }
local STANCES = { ["for"] = true, against = true }

-- ---- the checker ----------------------------------------------------------------------------

local function checker()
  local errs = {}
  local c = {}
  function c.err(path, msg) errs[#errs + 1] = path .. ": " .. msg end
  function c.nil_or(v) if v == null then return nil end return v end
  function c.string(path, v, opts)
    v = c.nil_or(v)
    opts = opts or {}
    if v == nil then
      if opts.required then c.err(path, "is required") end
      return nil
    end
    if type(v) ~= "string" then c.err(path, "must be a string"); return nil end
    if not utf8.len(v) then c.err(path, "must be valid UTF-8"); return nil end
    if opts.nonempty ~= false and opts.required and not v:find("%S") then
      c.err(path, "must not be blank"); return nil
    end
    if #v > (opts.max or M.MAX_STRING) then
      c.err(path, "at most " .. (opts.max or M.MAX_STRING) .. " bytes"); return nil
    end
    if opts.enum and not opts.enum[v] then
      c.err(path, "must be one of " .. table.concat(keys(opts.enum), ", ")); return nil
    end
    if opts.pattern and not v:match(opts.pattern) then
      c.err(path, "has the wrong form"); return nil
    end
    return v
  end
  function c.unit(path, v, required)
    v = c.nil_or(v)
    if v == nil then
      if required then c.err(path, "is required") end
      return nil
    end
    if type(v) ~= "number" or v ~= v or v < 0 or v > 1 then
      c.err(path, "must be a number 0..1"); return nil
    end
    return v + 0.0
  end
  function c.line(path, v)
    v = c.nil_or(v)
    if v == nil then return nil end
    if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) or v < 1 then
      c.err(path, "must be a positive integer"); return nil
    end
    return math.tointeger(v)
  end
  function c.list(path, v, max, required)
    v = c.nil_or(v)
    if v == nil then
      if required then c.err(path, "is required") end
      return {}
    end
    if type(v) ~= "table" then c.err(path, "must be an array"); return {} end
    local n = #v
    for k in pairs(v) do
      if math.type(k) ~= "integer" or k < 1 or k > n then
        c.err(path, "must be an array"); return {}
      end
    end
    if max and n > max then c.err(path, "at most " .. max .. " items"); return {} end
    return v
  end
  function c.object(path, v, required)
    v = c.nil_or(v)
    if v == nil then
      if required then c.err(path, "is required") end
      return nil
    end
    if type(v) ~= "table" or (next(v) ~= nil and #v > 0) or json.is_array(v) and next(v) then
      c.err(path, "must be an object"); return nil
    end
    return v
  end
  return c, errs
end

-- A JSON-encodable copy of a free-form table (the investigation): string keys, plain values.
local function plain(c, path, v, depth)
  if depth > 16 then c.err(path, "nested too deep"); return nil end
  local t = type(v)
  if v == null or t == "string" or t == "boolean" then return v end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then c.err(path, "must be finite") end
    return v
  end
  if t ~= "table" then c.err(path, "cannot hold a " .. t); return nil end
  local out = setmetatable({}, getmetatable(v) == array_mt and array_mt or nil)
  for k, x in pairs(v) do
    if type(k) ~= "string" and math.type(k) ~= "integer" then
      c.err(path, "keys must be strings")
    else
      out[k] = plain(c, path .. "." .. tostring(k), x, depth + 1)
    end
  end
  return out
end

local function evidence_refs(c, path, v)
  local out = arr()
  for i, e in ipairs(c.list(path, v, M.MAX_EVIDENCE_REFS)) do
    local p = path .. "[" .. i .. "]"
    if c.object(p, e, true) then
      local id = e.evidence_id
      if id ~= nil and id ~= null and type(id) ~= "string" then
        if math.type(id) == "integer" then id = tostring(id) end
      end
      out[#out + 1] = { summary = c.string(p .. ".summary", e.summary, { required = true }),
                        evidence_id = c.string(p .. ".evidence_id", id, { max = 200 }),
                        line = c.line(p .. ".line", e.line) }
    end
  end
  return out
end

local function action(c, p, a)
  if not c.object(p, a, true) then return nil end
  local out = { label = c.string(p .. ".label", a.label, { required = true, max = 200 }),
                type = c.string(p .. ".type", a.type, { required = true, max = 40,
                                                        pattern = "^[a-z_]+$" }),
                payload = c.string(p .. ".payload", a.payload, { max = 2000 }),
                body = c.string(p .. ".body", a.body, { max = 2000 }),
                evidence_need_id = c.string(p .. ".evidence_need_id", a.evidence_need_id,
                  { max = 200 }) }
  local hints = c.nil_or(a.hints)
  if hints ~= nil then
    out.hints = arr()
    for i, h in ipairs(c.list(p .. ".hints", hints, 10)) do
      out.hints[#out.hints + 1] = c.string(p .. ".hints[" .. i .. "]", h, { required = true,
                                                                            max = 200 })
    end
  end
  local it = c.nil_or(a.intent)
  if it ~= nil and c.object(p .. ".intent", it, true) then
    out.intent = { label = c.string(p .. ".intent.label", it.label, { required = true,
                                                                       max = 200 }),
                   type = c.string(p .. ".intent.type", it.type, { required = true, max = 40,
                     enum = { conversation = true, status_transition = true,
                              confirmation = true, hypothesis_action = true } }),
                   payload = c.string(p .. ".intent.payload", it.payload, { max = 2000 }) }
  end
  return out
end

-- Lifecycle legality of the new case values against the prior state (contract section 7).
local function legal(c, o, prior)
  local case = type(prior) == "table" and type(prior.case) == "table" and prior.case or {}
  local from = case.state or "inquiry"
  local to = o.case.state
  if not to then return end
  local ms = {}
  for _, m in ipairs(o.case.milestones) do ms[m] = true end
  if from ~= to then
    if lifecycle.TERMINAL[from] then
      c.err("case.state", "the case is " .. from .. ": its state cannot change")
      return
    end
    if not lifecycle.NEXT[from][to] then
      c.err("case.state", "no transition from " .. from .. " to " .. to); return
    end
    if not lifecycle.user_confirmed_transition(prior, to) then
      c.err("case.state", "the user did not confirm the move to " .. to .. " on this turn")
    end
    if to == "resolved" and not ms.solution_verified then
      c.err("case.state", "resolved needs the solution_verified milestone (evidence the cause "
        .. "is gone)")
    end
  end
  if to == "closed" and from ~= "closed" and not o.case.closure_reason then
    c.err("case.closure_reason", "closed needs a closure reason")
  end
  if to ~= "closed" and o.case.closure_reason then
    c.err("case.closure_reason", "only a closed case has a closure reason")
  end
  if to == "investigating" and not o.case.stage then
    c.err("case.stage", "an investigating case has a stage")
  end
  if to == "inquiry" and o.case.stage then
    c.err("case.stage", "an inquiry has no stage")
  end
end

--- Checks a TurnOutput (contract section 7). prior: the turn's state (for the lifecycle
-- checks; optional). Returns the normalized output (arrays marked for fm.json, unknown fields
-- dropped, defaults filled) or nil, {errors...} (each "path: message").
function M.validate(o, prior)
  local c, errs = checker()
  if type(o) ~= "table" then return nil, { "output: must be a table" } end
  local out = {}
  out.response = c.string("response", o.response, { required = true, max = M.MAX_RESPONSE })
  out.suggested_actions = arr()
  local acts = c.list("suggested_actions", o.suggested_actions, nil, true)
  if #acts < M.MIN_ACTIONS or #acts > M.MAX_ACTIONS then
    c.err("suggested_actions", "must hold " .. M.MIN_ACTIONS .. " to " .. M.MAX_ACTIONS
      .. " actions (got " .. #acts .. ")")
  end
  for i, a in ipairs(acts) do
    out.suggested_actions[#out.suggested_actions + 1] = action(c, "suggested_actions[" .. i
      .. "]", a)
  end
  local pm = c.nil_or(o.progress_made)
  if pm ~= nil and type(pm) ~= "boolean" then c.err("progress_made", "must be a boolean") end
  out.progress_made = pm == true

  -- case
  local cs = c.object("case", o.case, true) or {}
  out.case = {
    state = c.string("case.state", cs.state, { required = true, enum = lifecycle.STATES }),
    stage = c.string("case.stage", cs.stage, { enum = lifecycle.STAGES }),
    closure_reason = c.string("case.closure_reason", cs.closure_reason,
      { enum = lifecycle.CLOSURE_REASONS }),
    milestones = arr(),
  }
  local seen = {}
  for i, m in ipairs(c.list("case.milestones", cs.milestones, 7)) do
    local v = c.string("case.milestones[" .. i .. "]", m, { required = true,
                                                            enum = lifecycle.MILESTONE_SET })
    if v and not seen[v] then seen[v] = true; out.case.milestones[#out.case.milestones + 1] = v end
  end
  local inv = c.object("case.investigation", cs.investigation)
  out.case.investigation = inv and plain(c, "case.investigation", inv, 0) or {}
  local pend = type(out.case.investigation.pending_transition) == "table"
    and out.case.investigation.pending_transition
  if pend then
    c.string("case.investigation.pending_transition.to_state", pend.to_state,
      { required = true, enum = { resolved = true, closed = true } })
    c.string("case.investigation.pending_transition.closure_reason", pend.closure_reason,
      { enum = lifecycle.CLOSURE_REASONS })
  end

  -- hypotheses
  out.hypotheses = arr()
  local keys_seen = {}
  for i, h in ipairs(c.list("hypotheses", o.hypotheses, M.MAX_HYPOTHESES)) do
    local p = "hypotheses[" .. i .. "]"
    if c.object(p, h, true) then
      local key = c.string(p .. ".key", h.key, { required = true, max = 130,
                                                 pattern = "^[a-z0-9][a-z0-9_.:%-]*$" })
      if key and keys_seen[key] then c.err(p .. ".key", "duplicate key " .. key) end
      if key then keys_seen[key] = true end
      local st = c.string(p .. ".state", h.state, { required = true,
                                                    enum = lifecycle.HYPOTHESIS_STATES })
      out.hypotheses[#out.hypotheses + 1] = {
        key = key, playbook = c.string(p .. ".playbook", h.playbook, { max = 64 }),
        statement = c.string(p .. ".statement", h.statement, { required = true }),
        category = c.string(p .. ".category", h.category, { required = true,
                                                            enum = lifecycle.CATEGORIES }),
        likelihood = c.unit(p .. ".likelihood", h.likelihood, true),
        state = st,
        evidence_for = evidence_refs(c, p .. ".evidence_for", h.evidence_for),
        evidence_against = evidence_refs(c, p .. ".evidence_against", h.evidence_against),
        refutation_reason = c.string(p .. ".refutation_reason", h.refutation_reason),
      }
    end
  end

  -- solutions
  out.solutions = arr()
  for i, s in ipairs(c.list("solutions", o.solutions, M.MAX_SOLUTIONS)) do
    local p = "solutions[" .. i .. "]"
    if c.object(p, s, true) then
      out.solutions[#out.solutions + 1] = {
        key = c.string(p .. ".key", s.key, { required = true, max = 130,
                                             pattern = "^[a-z0-9][a-z0-9_.:%-]*$" }),
        kind = c.string(p .. ".kind", s.kind, { required = true, enum = KINDS }),
        title = c.string(p .. ".title", s.title, { required = true, max = 300 }),
        description = c.string(p .. ".description", s.description),
        command = c.string(p .. ".command", s.command, { max = 2000 }),
        risk = c.string(p .. ".risk", s.risk, { required = true, enum = RISKS }),
        undo = c.string(p .. ".undo", s.undo),
        verify = c.string(p .. ".verify", s.verify, { max = 2000 }),
        status = c.string(p .. ".status", s.status, { required = true,
                                                      enum = lifecycle.SOLUTION_STATUS }),
        playbook = c.string(p .. ".playbook", s.playbook, { max = 64 }),
      }
    end
  end

  -- evidence classifications
  out.evidence = arr()
  for i, e in ipairs(c.list("evidence", o.evidence, M.MAX_EVIDENCE)) do
    local p = "evidence[" .. i .. "]"
    if c.object(p, e, true) then
      local refs = arr()
      for j, r in ipairs(c.list(p .. ".hypotheses", e.hypotheses, M.MAX_HYPOTHESES * 2)) do
        local q = p .. ".hypotheses[" .. j .. "]"
        if c.object(q, r, true) then
          refs[#refs + 1] = { key = c.string(q .. ".key", r.key, { required = true, max = 130 }),
                              stance = c.string(q .. ".stance", r.stance, { required = true,
                                                                            enum = STANCES }) }
        end
      end
      out.evidence[#out.evidence + 1] = {
        evidence_id = c.string(p .. ".evidence_id", e.evidence_id, { required = true, max = 200 }),
        category = c.string(p .. ".category", e.category, { required = true,
                                                            enum = lifecycle.EVIDENCE_CATEGORIES }),
        hypotheses = refs,
      }
    end
  end

  local rep = c.object("playbook_report", o.playbook_report)
  out.playbook_report = rep and plain(c, "playbook_report", rep, 0) or {}

  if #errs == 0 then legal(c, out, prior) end
  if #errs > 0 then return nil, errs end
  return out
end

-- ---- the JSON Schema -------------------------------------------------------------------------

local function enum(set) return arr(keys(set)) end
local function s(extra)
  local t = { type = "string" }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end
local function obj(props, required)
  return { type = "object", properties = props, required = arr(required or {}),
           additionalProperties = false }
end
local function list(items, max, min)
  return { type = "array", items = items, maxItems = max, minItems = min }
end

local evref = obj({ summary = s(), evidence_id = s(), line = { type = "integer", minimum = 1 } },
  { "summary" })

--- The JSON Schema (draft 2020-12) of a TurnOutput, as a Lua table fm.json can encode.
M.schema = {
  ["$schema"] = "https://json-schema.org/draft/2020-12/schema",
  title = "TurnOutput",
  description = "One turn of the FaultMaven troubleshooting engine: the answer to the user and "
    .. "the case's new state. State changes only as the user confirmed them on this turn.",
  type = "object",
  additionalProperties = false,
  required = arr { "response", "suggested_actions", "progress_made", "case" },
  properties = {
    response = s { minLength = 1, maxLength = M.MAX_RESPONSE,
                   description = "The answer in markdown." },
    suggested_actions = list(obj({
      label = s { maxLength = 200 }, type = s { pattern = "^[a-z_]+$",
        description = "command, confirmation, status_transition, upload, question, report" },
      payload = s { maxLength = 2000 }, body = s { maxLength = 2000 },
      hints = list(s { maxLength = 200 }, 10), evidence_need_id = s { maxLength = 200 },
      intent = obj({ label = s(), type = s { enum = arr { "conversation", "status_transition",
        "confirmation", "hypothesis_action" } }, payload = s() }, { "label", "type" }),
    }, { "label", "type" }), M.MAX_ACTIONS, M.MIN_ACTIONS),
    progress_made = { type = "boolean" },
    case = obj({
      state = s { enum = enum(lifecycle.STATES) },
      stage = { type = arr { "string", "null" }, enum = arr { "diagnosis", "mitigation",
                                                              "treatment", null } },
      closure_reason = { type = arr { "string", "null" },
                         enum = (function()
                           local e = enum(lifecycle.CLOSURE_REASONS)
                           e[#e + 1] = null
                           return e
                         end)() },
      milestones = list(s { enum = arr(lifecycle.MILESTONES) }, 7),
      investigation = { type = "object", description = "The investigation record: "
        .. "proposed_problem_statement, problem_statement, working_conclusion {summary, "
        .. "confidence, last_updated}, root_cause {description, category, confidence, "
        .. "severity}, pending_transition {to_state, closure_reason, reason}. Keys you do not "
        .. "give keep their previous value." },
    }, { "state", "milestones" }),
    hypotheses = list(obj({
      key = s { pattern = "^[a-z0-9][a-z0-9_.:-]*$", maxLength = 130 },
      playbook = s(), statement = s { minLength = 1 },
      category = s { enum = enum(lifecycle.CATEGORIES) },
      likelihood = { type = "number", minimum = 0, maximum = 1 },
      state = s { enum = enum(lifecycle.HYPOTHESIS_STATES) },
      evidence_for = list(evref, M.MAX_EVIDENCE_REFS),
      evidence_against = list(evref, M.MAX_EVIDENCE_REFS),
      refutation_reason = s(),
    }, { "key", "statement", "category", "likelihood", "state" }), M.MAX_HYPOTHESES),
    solutions = list(obj({
      key = s { pattern = "^[a-z0-9][a-z0-9_.:-]*$", maxLength = 130 },
      kind = s { enum = arr { "mitigation", "solution" } }, title = s(), description = s(),
      command = s(), risk = s { enum = arr { "high", "low", "medium" } }, undo = s(),
      verify = s(), status = s { enum = enum(lifecycle.SOLUTION_STATUS) }, playbook = s(),
    }, { "key", "kind", "title", "risk", "status" }), M.MAX_SOLUTIONS),
    evidence = list(obj({
      evidence_id = s(), category = s { enum = enum(lifecycle.EVIDENCE_CATEGORIES) },
      hypotheses = list(obj({ key = s(), stance = s { enum = arr { "against", "for" } } },
        { "key", "stance" })),
    }, { "evidence_id", "category" }), M.MAX_EVIDENCE),
    playbook_report = { type = "object" },
  },
}

return M
