-- fm.agent.lifecycle: the case state machine of API.md "Case lifecycle", pure Lua.
--
-- M.step(state, run) takes the turn's state (contract section 7) and the runner's result and
-- decides the case's new state, stage, milestones and investigation, the hypotheses, solutions
-- and evidence classifications to upsert, and what happened (d.events) for fm.agent.compose to
-- put in words. It never changes the case's state unless the user confirmed it on this turn:
-- the engine proposes (investigation.proposed_problem_statement, investigation.pending_transition)
-- and the user confirms on a later turn.
--
-- The investigation record (cases.investigation, stored as returned) holds, beside the keys of
-- contract section 7: proposed_turn (the turn a statement was proposed: only a later turn can
-- confirm it), decided_to_investigate, rejected_statements (never proposed again),
-- awaiting ("problem_statement" | "mitigation" | "solution" | "transition": what a yes answers),
-- user_hypotheses ({key = state} the user decided; the engine keeps them), concluded_kinds
-- (detailed types and file names of the evidence that showed the incident: clean evidence of
-- the same kind verifies a fix), resolve_declined (the user said not yet: no new proposal
-- unless asked), root_cause.assurance ("concluded from the evidence" | "confirmed by the
-- user") and pending_transition.proposed_turn.
local json = require "fm.json"

local M = {}

M.STATES = { inquiry = true, investigating = true, resolved = true, closed = true }
M.TERMINAL = { resolved = true, closed = true }
-- The states each state may go to, in the order messages list them; M.NEXT has them as sets.
M.NEXT_LIST = { inquiry = { "investigating", "resolved", "closed" },
                investigating = { "resolved", "closed" }, resolved = {}, closed = {} }
M.NEXT = {}
for from, list in pairs(M.NEXT_LIST) do
  M.NEXT[from] = {}
  for _, to in ipairs(list) do M.NEXT[from][to] = true end
end
M.STAGES = { diagnosis = true, mitigation = true, treatment = true }
M.CLOSURE_REASONS = { inquiry_only = true, solution_deferred = true,
                      closed_rca_infeasible = true, mitigation_sufficient = true,
                      closed_insufficient_evidence = true }
M.MILESTONES = { "symptom_verified", "root_cause_identified", "solution_proposed",
                 "mitigation_accepted", "mitigation_verified", "solution_accepted",
                 "solution_verified" }
M.HYPOTHESIS_STATES = { captured = true, active = true, validated = true, refuted = true,
                        inconclusive = true, retired = true }
M.CATEGORIES = { code = true, config = true, environment = true, network = true, data = true,
                 database = true, hardware = true, security = true, external = true,
                 human = true, other = true }
M.EVIDENCE_CATEGORIES = { symptom_evidence = true, causal_evidence = true,
                          symptom_absence_evidence = true, causal_absence_evidence = true }
M.SOLUTION_STATUS = { proposed = true, accepted = true, applied = true, verified = true }
-- A conclusion this sure validates its hypothesis and names the root cause.
M.VALIDATE_AT = 0.7

local MILESTONE_SET = {}
for _, m in ipairs(M.MILESTONES) do MILESTONE_SET[m] = true end
M.MILESTONE_SET = MILESTONE_SET

-- ---- small helpers --------------------------------------------------------------------------

local function str(v) return type(v) == "string" and v or nil end
local function tbl(v) return type(v) == "table" and v or {} end
local function num(v) return type(v) == "number" and v or nil end

local function copy(v, depth)
  if type(v) ~= "table" then return v end
  depth = (depth or 0) + 1
  if depth > 32 then return nil end
  local t = {}
  for k, x in pairs(v) do
    if type(x) ~= "function" and type(x) ~= "userdata" then t[k] = copy(x, depth) end
  end
  -- only fm.json's array marker is kept (a foreign metatable may be locked)
  if getmetatable(v) == json.array_mt then setmetatable(t, json.array_mt) end
  return t
end
M.copy = copy

local function norm(text)
  if type(text) ~= "string" then return "" end
  local s = text:lower():gsub("\226\128\153", "'"):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  return (s:gsub("[%.!]+$", ""))
end

local function has_word(s, w)
  return s:find("%f[%w]" .. w:gsub("%p", "%%%0") .. "%f[^%w']") ~= nil
end

local function negated(s)
  return has_word(s, "not") or s:find("n't", 1, true) ~= nil or has_word(s, "never")
    or has_word(s, "no") or s:find("not yet", 1, true) ~= nil
end

local YES = {}
for _, w in ipairs { "yes", "y", "yep", "yeah", "yup", "confirm", "confirmed", "correct",
                     "that's right", "thats right", "that is right", "that's correct",
                     "go ahead", "yes please", "sure", "right" } do YES[w] = true end
local NO = {}
for _, w in ipairs { "no", "n", "nope", "nah", "wrong", "incorrect", "not right",
                     "that's wrong", "that's not it", "not quite", "no thanks", "reject",
                     "not correct", "that's not right" } do NO[w] = true end

--- "yes", "no" or nil for the user's words: conservative (a short, clear answer only).
function M.reply(text)
  local s = norm(text)
  if s == "" then return nil end
  if YES[s] then return "yes" end
  if NO[s] then return "no" end
  if #s <= 60 then
    local head, rest = s:match("^(%a+)[,;:%-]? (.*)$")
    if head == "yes" or head == "yeah" or head == "yep" or head == "correct" then
      if not negated(rest) and not has_word(rest, "but") then return "yes" end
    elseif head == "no" or head == "nope" then
      return "no"
    end
  end
  return nil
end

local function any_word(s, words)
  for _, w in ipairs(words) do
    if w:find(" ", 1, true) or w:find("'", 1, true) then
      if s:find(w, 1, true) then return true end
    elseif has_word(s, w) then
      return true
    end
  end
  return false
end

local APPLIED = { "applied", "done", "did it", "ran it", "ran the", "deployed", "rolled out",
                  "implemented", "fixed", "rolled back", "cleaned up" }
local ACCEPTED = { "accept", "accepted", "i'll apply", "will apply", "let's do", "lets do",
                   "i'll do", "i will do", "go with" }
local LASTING = { "lasting fix", "permanent fix", "permanent solution", "long-term",
                  "long term", "root fix", "proper fix", "prevent it", "prevent this",
                  "lasting solution", "real fix" }
local PROBLEM = { "error", "errors", "fail", "fails", "failed", "failing", "failure", "down",
                  "outage", "crash", "crashed", "crashes", "crashing", "slow", "latency",
                  "timeout", "timeouts", "timed out", "timing out", "not working", "broken",
                  "refused", "unable", "can't", "cannot", "oom", "out of memory", "full",
                  "500", "502", "503", "504", "5xx", "exception", "panic", "killed",
                  "restarting", "degraded", "spike", "leak", "denied", "unreachable", "stuck",
                  "hang", "hangs", "hanging", "alert", "paged", "incident", "dropping",
                  "rejected", "unavailable", "evicted", "crashloop", "crashloopbackoff",
                  "weird", "strange", "wrong", "issue", "issues", "problem", "problems",
                  "flaky", "intermittent", "missing", "lost", "spiking", "high cpu",
                  "high memory", "saturated", "throttled", "blocked", "oomkilled",
                  "oom-killed", "enospc", "deadlock", "deadlocks", "lag", "errored" }

--- What the user's query says: {reply = "yes"|"no"|nil, applied, accepted, lasting, problem,
-- question, close, resolve} (booleans), conservative.
function M.read_query(text)
  local s = norm(text)
  local r = { reply = M.reply(text) }
  if s == "" then return r end
  local neg = negated(s)
  r.applied = not neg and any_word(s, APPLIED)
  r.accepted = not neg and any_word(s, ACCEPTED)
  r.lasting = any_word(s, LASTING)
  r.problem = any_word(s, PROBLEM)
  r.question = (type(text) == "string" and text:find("%?%s*$") ~= nil)
    or any_word(s:match("^(%S+)") or "", { "how", "what", "why", "when", "where", "which",
                                          "who", "is", "are", "can", "should", "does", "do" })
  r.close = not neg and (s:find("close %a* ?case") ~= nil or s:find("close it", 1, true) ~= nil)
  r.resolve = not neg and (s:find("mark %a* ?%a* ?as resolved") ~= nil
    or s:find("resolve %a* ?case") ~= nil or s:find("mark %a* ?resolved") ~= nil)
  return r
end

local YES_VALUES = { yes = true, y = true, ["true"] = true, confirm = true, confirmed = true,
                     ok = true, accept = true, accepted = true, applied = true, done = true }
local NO_VALUES = { no = true, n = true, ["false"] = true, reject = true, rejected = true,
                    decline = true }

--- The user's intent this turn: {kind = "confirmation"|"status_transition"|"hypothesis_action"
-- |nil, value = "yes"|"no"|nil, to_state, user_confirmed, closure_reason, hypothesis_id, key,
-- action, solution_key}.
function M.intent(message)
  message = tbl(message)
  local d = tbl(message.intent)
  local kind = str(d.type) or str(message.intent_type)
  local it = { kind = kind }
  if kind == "confirmation" then
    local v = d.confirmation_value
    if v == nil then v = d.payload end
    if v == true then it.value = "yes"
    elseif v == false then it.value = "no"
    elseif type(v) == "string" then
      local s = norm(v)
      it.value = YES_VALUES[s] and "yes" or NO_VALUES[s] and "no" or M.reply(v)
    else
      -- an explicit confirmation intent without a value: the query says it, else it is a yes
      it.value = str(message.query) and M.reply(message.query) or "yes"
    end
    it.solution_key = str(d.solution_key)
  elseif kind == "status_transition" then
    it.to_state = str(d.to_state)
    it.user_confirmed = d.user_confirmed == true
    it.closure_reason = str(d.closure_reason)
  elseif kind == "hypothesis_action" then
    it.hypothesis_id = str(d.hypothesis_id)
    it.key = str(d.hypothesis_key) or str(d.key)
    it.action = str(d.action)
    it.reason = str(d.reason)
  end
  return it
end

--- True when the user confirms a move to to_state on this turn: an explicit status_transition
-- {to_state, user_confirmed = true}, or a clear yes (intent or words) while the case's
-- pending_transition proposes that very state. Used by output.validate too.
function M.user_confirmed_transition(state, to_state)
  state = tbl(state)
  local msg = tbl(state.message)
  local it = M.intent(msg)
  if it.kind == "status_transition" then
    return it.user_confirmed and it.to_state == to_state
  end
  local yes = it.kind == "confirmation" and it.value == "yes"
    or it.kind ~= "confirmation" and M.reply(msg.query) == "yes"
  if not yes then return false end
  local case = tbl(state.case)
  local inv = tbl(case.investigation)
  if tbl(inv.pending_transition).to_state == to_state then return true end
  if to_state == "investigating" then
    return str(inv.proposed_problem_statement) ~= nil
      and (num(inv.proposed_turn) or -1) < (num(case.turn) or 0)
  end
  return false
end

local function first_sentence(text)
  if type(text) ~= "string" then return nil end
  local s = text:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if s == "" then return nil end
  local cut = s:match("^(.-[%.!%?])%s") or s
  if #cut > 200 then cut = cut:sub(1, 197):gsub("[\128-\191]*$", ""):gsub("[\192-\255]$", "")
    .. "..." end
  return cut
end
M.first_sentence = first_sentence

local function slug(s)
  s = (type(s) == "string" and s or "item"):lower():gsub("[^a-z0-9]+", "_"):gsub("^_+", "")
    :gsub("_+$", "")
  if s == "" then s = "item" end
  return s:sub(1, 60)
end

local SEV = { critical = 4, high = 3, error = 3, medium = 2, warning = 2, low = 1, info = 0 }

--- The "signals" of one evidence item: its signature names and "cmd:<kind>" for each command
-- finding of severity medium or above. Returns a set.
function M.item_signals(item)
  local set = {}
  local s = tbl(tbl(item).summary)
  for _, sig in ipairs(tbl(s.signatures)) do
    if type(sig) == "table" and str(sig.name) and (num(sig.count) or 1) > 0 then
      set[sig.name] = true
    end
  end
  for _, f in ipairs(tbl(tbl(s.command).findings)) do
    if type(f) == "table" and str(f.kind) and (SEV[f.severity] or 2) >= 2 then
      set["cmd:" .. f.kind] = true
    end
  end
  return set
end

local function evidence_by_id(ctx)
  local by = {}
  for _, e in ipairs(tbl(tbl(ctx).evidence)) do
    if type(e) == "table" and e.id ~= nil then by[tostring(e.id)] = e end
  end
  return by
end

local function serious_signals(ctx)
  local out = {}
  for name, s in pairs(tbl(tbl(ctx).signals)) do
    if type(s) == "table" and (SEV[s.severity] or 0) >= 3 and (num(s.count) or 0) > 0 then
      out[#out + 1] = name
    end
  end
  table.sort(out)
  return out
end

-- Findings of a matched playbook, strongest first (severity, then their order).
local function strongest(findings)
  local list = {}
  for i, f in ipairs(tbl(findings)) do
    local text = type(f) == "string" and f or type(f) == "table" and str(f.text)
    if text then
      list[#list + 1] = { text = text, sev = SEV[type(f) == "table" and f.severity or ""] or 1,
                          i = i, f = f }
    end
  end
  table.sort(list, function(a, b)
    if a.sev ~= b.sev then return a.sev > b.sev end
    return a.i < b.i
  end)
  return list
end
M.strongest = strongest

local function finding_text(x)
  local f = x.f
  local where = ""
  -- many findings name their file already ("app.log line 12, 3 lines")
  if type(f) == "table" and str(f.filename) and not x.text:find(f.filename, 1, true) then
    where = " (" .. f.filename .. (num(f.line) and (" line " .. math.tointeger(f.line) or f.line)
      or "") .. ")"
  end
  return x.text .. where
end
M.finding_text = finding_text

--- The problem statement the engine proposes: the top playbook's title and its strongest
-- findings, with the user's words; the user's own sentence when nothing matched; the serious
-- signals of the evidence when the user said nothing.
function M.propose_statement(state, run)
  local msg = tbl(state.message)
  -- the user's statement of the problem: their message, unless it is a bare yes/no or a
  -- question and the case's description says more
  local words = not M.reply(msg.query) and first_sentence(msg.query) or nil
  local described = first_sentence(tbl(state.case).description)
  local said = words
  if not words or (described and M.read_query(msg.query).question) then
    said = described or words
  end
  local rejected = {}
  for _, r in ipairs(tbl(tbl(tbl(state.case).investigation).rejected_statements)) do
    rejected[r] = true
  end
  if said and rejected[said] then said = nil end
  local top = M.useful(run)[1]
  local function from_top()
    local parts = {}
    for i, x in ipairs(strongest(top.findings)) do
      if i > 2 then break end
      parts[#parts + 1] = finding_text(x)
    end
    local s = tostring(top.title or top.id)
    if #parts > 0 then s = s .. ": " .. table.concat(parts, "; ") end
    if said then s = s .. ". Reported: \"" .. said .. "\"" end
    if #s > 600 then s = s:sub(1, 597):gsub("[\128-\191]*$", ""):gsub("[\192-\255]$", "")
      .. "..." end
    return s
  end
  if type(top) == "table" then
    local s = from_top()
    if not rejected[s] then return s, "playbook" end
  end
  if said then return said, "user" end
  local sig = serious_signals(state.ctx)
  if #sig > 0 then
    local ctx_sig = tbl(state.ctx).signals
    local parts = {}
    for i, name in ipairs(sig) do
      if i > 3 then break end
      local s = ctx_sig[name]
      parts[#parts + 1] = string.format("%s in %s (%d lines)", name, tostring(s.filename or "?"),
        math.tointeger(s.count) or 0)
    end
    return "Errors in the evidence: " .. table.concat(parts, "; "), "evidence"
  end
  return nil
end

--- The matched playbooks worth showing, best first: those that did not fail, and those that
-- failed after recording something.
function M.useful(run)
  local failed = {}
  for _, f in ipairs(tbl(tbl(run).failed)) do
    if type(f) == "table" and f.id ~= nil then failed[f.id] = true end
  end
  local out = {}
  for _, m in ipairs(tbl(tbl(run).matched)) do
    if type(m) == "table" and (not failed[m.id] or #tbl(m.findings) > 0
        or #tbl(m.hypotheses) > 0) then
      out[#out + 1] = m
    end
  end
  return out
end

-- ---- the decision ---------------------------------------------------------------------------

local function milestone_set(list)
  local set = {}
  for _, m in ipairs(tbl(list)) do if MILESTONE_SET[m] then set[m] = true end end
  return set
end

local function milestone_list(set)
  local out = {}
  for _, m in ipairs(M.MILESTONES) do if set[m] then out[#out + 1] = m end end
  return out
end

-- The closure reason that fits when the user closes without naming one.
function M.default_closure(state_name, milestones, inv)
  if state_name == "inquiry" then return "inquiry_only" end
  if milestones.mitigation_verified and not milestones.solution_verified then
    return "mitigation_sufficient"
  end
  if milestones.root_cause_identified or tbl(inv).root_cause then return "solution_deferred" end
  if milestones.symptom_verified then return "closed_rca_infeasible" end
  return "closed_insufficient_evidence"
end

local function hyp_ref(h)
  local pb, key = str(h.playbook), str(h.key)
  if not key then return nil end
  if pb and not key:find(":", 1, true) then return pb .. ":" .. key end
  return key
end

local function ev_list(list)
  local out = {}
  for _, e in ipairs(tbl(list)) do
    if type(e) == "table" and str(e.summary) then
      out[#out + 1] = { summary = e.summary, evidence_id = e.evidence_id ~= nil
                        and tostring(e.evidence_id) or nil, line = num(e.line) }
    end
  end
  return out
end

-- Hypotheses: upsert by "<playbook>:<key>" from the runner, keeping the user's decisions.
local function update_hypotheses(d, state, run, inv)
  local existing, order = {}, {}
  for _, h in ipairs(tbl(state.hypotheses)) do
    if type(h) == "table" and str(h.key) then
      local k = hyp_ref(h)
      existing[k] = h
      order[#order + 1] = k
    end
  end
  local user = tbl(inv.user_hypotheses)
  local concl = tbl(run.conclusion)
  local concl_key = str(concl.playbook) and str(concl.hypothesis)
    and (concl.playbook .. ":" .. concl.hypothesis)
  local out, seen = {}, {}
  for _, h in ipairs(tbl(run.hypotheses)) do
    local k = type(h) == "table" and hyp_ref(h)
    if k and not seen[k] then
      seen[k] = true
      local old = existing[k]
      local ef, ea = ev_list(h.evidence_for), ev_list(h.evidence_against)
      local st = #ef > 0 and "active" or "captured"
      local reason
      if #ea > #ef then
        st = "refuted"
        reason = "evidence against it: " .. ea[1].summary
      end
      if k == concl_key and (num(concl.confidence) or 0) >= M.VALIDATE_AT then
        st = "validated"
        reason = nil
      end
      if old and old.state == "validated" and st ~= "refuted" then st = "validated" end
      if user[k] then
        st = user[k]
        reason = st == "refuted" and (old and old.refutation_reason or "refuted by the user")
          or nil
      end
      local cat = str(h.category)
      out[#out + 1] = {
        key = k, playbook = str(h.playbook), statement = str(h.statement) or k,
        category = M.CATEGORIES[cat] and cat or "other",
        likelihood = math.max(0, math.min(1, num(h.likelihood) or 0)), state = st,
        evidence_for = ef, evidence_against = ea, refutation_reason = reason,
        id = old and old.id or nil,
      }
      if not old or old.state ~= st then d.changed = true end
    end
  end
  -- the user's hypothesis action (on any hypothesis, whether this run produced it or not)
  local it = d.intent
  if it.kind == "hypothesis_action" then
    local target
    for _, k in ipairs(order) do
      local h = existing[k]
      if not target and (it.hypothesis_id and h.id == it.hypothesis_id or it.key
          and (k == it.key or h.key == it.key)) then target = k end
    end
    if not target and it.key then
      for _, h in ipairs(out) do if h.key == it.key then target = h.key end end
    end
    local action_state = { validate = "validated", refute = "refuted", retire = "retired" }
    local ns = action_state[it.action or ""]
    if not target or not ns then
      d.events.hypothesis_action = { ok = false, action = it.action,
        why = not ns and "the action must be validate, refute or retire"
          or "no hypothesis with that id or key on this case" }
    else
      local entry
      for _, h in ipairs(out) do if h.key == target then entry = h end end
      if not entry then
        local old = existing[target]
        entry = { key = target, playbook = str(old.playbook), statement = str(old.statement)
                  or target, category = M.CATEGORIES[old.category] and old.category or "other",
                  likelihood = math.max(0, math.min(1, num(old.likelihood) or 0)),
                  evidence_for = ev_list(old.evidence_for),
                  evidence_against = ev_list(old.evidence_against), id = old.id }
        out[#out + 1] = entry
      end
      entry.state = ns
      entry.refutation_reason = ns == "refuted" and (it.reason or "refuted by the user") or nil
      local uh = copy(user)
      uh[target] = ns
      inv.user_hypotheses = uh
      d.changed = true
      d.events.hypothesis_action = { ok = true, action = it.action, key = target,
                                     statement = entry.statement }
      if ns == "validated" then
        d.user_validated = entry
      elseif tbl(inv.root_cause).hypothesis == target then
        d.root_cause_refuted = entry
      end
    end
  end
  table.sort(out, function(a, b)
    local ra = (a.state == "refuted" or a.state == "retired") and 1 or 0
    local rb = (b.state == "refuted" or b.state == "retired") and 1 or 0
    if ra ~= rb then return ra < rb end
    if a.likelihood ~= b.likelihood then return a.likelihood > b.likelihood end
    return a.key < b.key
  end)
  while #out > 20 do out[#out] = nil end
  d.hypotheses = out
  -- every hypothesis known after this turn, for the answer
  local all, have = {}, {}
  for _, h in ipairs(out) do all[#all + 1] = h; have[h.key] = true end
  for _, k in ipairs(order) do
    if not have[k] then
      local h = existing[k]
      all[#all + 1] = { key = k, playbook = h.playbook, statement = h.statement or k,
                        likelihood = num(h.likelihood) or 0, state = h.state or "captured",
                        category = h.category, refutation_reason = h.refutation_reason,
                        evidence_for = tbl(h.evidence_for),
                        evidence_against = tbl(h.evidence_against) }
    end
  end
  d.all_hypotheses = all
end

-- Solutions: upsert by "<playbook>:<slug of the title>", keeping their status.
local function update_solutions(d, state, run)
  local existing, order = {}, {}
  for _, s in ipairs(tbl(state.solutions)) do
    if type(s) == "table" and str(s.key) then
      existing[s.key] = s
      order[#order + 1] = s.key
    end
  end
  local out, seen = {}, {}
  local function add(s, kind)
    if type(s) ~= "table" or not str(s.title) then return end
    local key = (str(s.playbook) or "engine") .. ":" .. slug(s.title)
    if seen[key] then return end
    seen[key] = true
    local old = existing[key]
    local risk = s.risk
    if risk ~= "low" and risk ~= "medium" and risk ~= "high" then risk = "medium" end
    out[#out + 1] = { key = key, kind = kind, title = s.title, description = str(s.description),
                      command = str(s.command), risk = risk, undo = str(s.undo),
                      verify = str(s.verify), playbook = str(s.playbook),
                      status = old and M.SOLUTION_STATUS[old.status] and old.status or "proposed" }
    if not old then d.changed = true end
  end
  for _, s in ipairs(tbl(run.mitigations)) do add(s, "mitigation") end
  for _, s in ipairs(tbl(run.solutions)) do add(s, "solution") end
  for _, k in ipairs(order) do
    if not seen[k] then
      local s = existing[k]
      seen[k] = true
      out[#out + 1] = { key = k, kind = s.kind == "mitigation" and "mitigation" or "solution",
                        title = str(s.title) or k, description = str(s.description),
                        command = str(s.command), risk = s.risk, undo = str(s.undo),
                        verify = str(s.verify), playbook = str(s.playbook),
                        status = M.SOLUTION_STATUS[s.status] and s.status or "proposed",
                        keep = true }
    end
  end
  d.solutions = out
end

-- The remedy of that kind and status the user means: the one named by key, else the one whose
-- words the user's message shares most (4+ letters), else the first.
local function first_of(d, kind, statuses, key, text)
  local words = {}
  for w in (type(text) == "string" and text:lower() or ""):gmatch("%a%a%a%a+") do
    words[#words + 1] = w
  end
  local best, best_n
  for _, s in ipairs(d.solutions) do
    if s.kind == kind and statuses[s.status] and (not key or s.key == key) then
      local hay = ((s.title or "") .. " " .. (s.description or "") .. " " .. (s.command or ""))
        :lower()
      local n = 0
      for _, w in ipairs(words) do if hay:find(w, 1, true) then n = n + 1 end end
      if not best or n > best_n then best, best_n = s, n end
    end
  end
  return best
end

local function mark(d, s, status)
  if s and s.status ~= status then
    s.status = status
    s.keep = nil
    d.changed = true
  end
end

-- Classification of this turn's evidence; verification of an applied fix.
local function classify(d, state, inv)
  local by = evidence_by_id(state.ctx)
  local links = {}
  for _, h in ipairs(d.all_hypotheses or {}) do
    for _, side in ipairs { "evidence_for", "evidence_against" } do
      for _, e in ipairs(tbl(h[side])) do
        if type(e) == "table" and e.evidence_id ~= nil then
          local id = tostring(e.evidence_id)
          links[id] = links[id] or {}
          local l = links[id]
          local stance = side == "evidence_for" and "for" or "against"
          local dup = false
          for _, x in ipairs(l) do if x.key == h.key and x.stance == stance then dup = true end end
          if not dup then l[#l + 1] = { key = h.key, stance = stance } end
        end
      end
    end
  end
  local concluded = {}
  for _, n in ipairs(tbl(inv.concluded_signals)) do concluded[n] = true end
  local kinds = {}
  for _, k in ipairs(tbl(inv.concluded_kinds)) do kinds[k] = true end
  local fix_applied = d.milestones.mitigation_accepted or d.milestones.solution_accepted
  local out = {}
  for _, id in ipairs(tbl(state.new_evidence_ids)) do
    id = tostring(id)
    local e = by[id]
    local l = links[id] or {}
    local cat = "symptom_evidence"
    local n_for, n_against = 0, 0
    for _, x in ipairs(l) do
      if x.stance == "for" then n_for = n_for + 1 else n_against = n_against + 1 end
    end
    local sigs = M.item_signals(e)
    local clean = next(concluded) ~= nil
    for n in pairs(concluded) do if sigs[n] then clean = false end end
    local relevant = e and (kinds[tostring(e.detailed_type)] or kinds[tostring(e.filename)])
    if fix_applied and relevant and not clean and next(concluded) ~= nil and not d.still_seen then
      local names = {}
      for n in pairs(concluded) do if sigs[n] then names[#names + 1] = n end end
      table.sort(names)
      d.still_seen = { filename = e.filename, evidence_id = id, signals = names }
    end
    if fix_applied and clean and relevant then
      cat = "symptom_absence_evidence"
      d.verified_by = d.verified_by or e
    elseif n_for > 0 then
      cat = "causal_evidence"
    elseif n_against > 0 then
      cat = "causal_absence_evidence"
    end
    out[#out + 1] = { evidence_id = id, category = cat, hypotheses = l }
  end
  d.evidence = out
  d.classified = true
end

-- Remember which signals and kinds of evidence showed the concluded incident, so that clean
-- evidence of the same kind after a fix can verify it.
local function remember_signals(inv, state, run, hyp_key, skip)
  local by = evidence_by_id(state.ctx)
  skip = skip or {}
  local names, kinds, seen, seenk = {}, {}, {}, {}
  local function take(e)
    if not e or skip[tostring(e.id)] then return end
    local sigs = M.item_signals(e)
    if next(sigs) == nil then return end
    for n in pairs(sigs) do if not seen[n] then seen[n] = true; names[#names + 1] = n end end
    for _, k in ipairs { e.detailed_type, e.filename } do
      if k ~= nil and not seenk[tostring(k)] then
        seenk[tostring(k)] = true
        kinds[#kinds + 1] = tostring(k)
      end
    end
  end
  for _, h in ipairs(tbl(run.hypotheses)) do
    if type(h) == "table" and hyp_ref(h) == hyp_key then
      for _, e in ipairs(tbl(h.evidence_for)) do
        if type(e) == "table" and e.evidence_id ~= nil then take(by[tostring(e.evidence_id)]) end
      end
    end
  end
  if #names == 0 then
    for _, e in ipairs(tbl(tbl(state.ctx).evidence)) do take(e) end
  end
  table.sort(names)
  inv.concluded_signals = setmetatable(names, json.array_mt)
  inv.concluded_kinds = setmetatable(kinds, json.array_mt)
end

local function set_root_cause(d, inv, state, run, src)
  local rc = {
    description = src.description, category = M.CATEGORIES[src.category] and src.category
      or "other", confidence = src.confidence, severity = src.severity or "medium",
    playbook = src.playbook, hypothesis = src.hypothesis,
    root_cause_id = "rc_" .. slug(src.hypothesis or src.description),
    assurance = src.assurance,
  }
  local old = tbl(inv.root_cause)
  if old.hypothesis ~= rc.hypothesis or old.description ~= rc.description then
    d.changed = true
    d.events.root_cause = rc
    inv.concluded_playbook = rc.playbook
    remember_signals(inv, state, run, rc.hypothesis)
  end
  inv.root_cause = rc
end

local function symptom_seen(state, run)
  for _, m in ipairs(tbl(run.matched)) do
    for _, f in ipairs(tbl(m.findings)) do
      if type(f) == "table" and (f.evidence_id ~= nil or str(f.filename)) then return true end
    end
  end
  return #serious_signals(state.ctx) > 0
end

local function pending(inv, to_state, closure_reason, reason, turn)
  inv.pending_transition = { to_state = to_state, closure_reason = closure_reason,
                             reason = reason, proposed_turn = turn }
end

-- Applies a confirmed move to a terminal state, or says why it cannot be done.
local function transition(d, to_state, closure_reason)
  if to_state == "resolved" then
    if not d.milestones.solution_verified then
      d.events.refused = { to_state = "resolved", why = d.milestones.solution_accepted
        and "the fix is applied but no evidence shows the cause is gone yet"
        or "no fix has been applied and verified yet" }
      return false
    end
    d.state, d.stage, d.closure_reason = "resolved", d.stage, nil
  elseif to_state == "closed" then
    if closure_reason and not M.CLOSURE_REASONS[closure_reason] then
      d.events.refused = { to_state = "closed", why = "unknown closure reason '"
        .. closure_reason .. "'" }
      return false
    end
    d.state = "closed"
    d.closure_reason = closure_reason or M.default_closure(d.prior_state, d.milestones, d.inv)
    d.inv.closure_reason = d.closure_reason
  else
    return false
  end
  d.inv.pending_transition = nil
  d.inv.awaiting = nil
  d.events.transitioned = { to_state = d.state, closure_reason = d.closure_reason }
  d.changed = true
  return true
end

local function inquiry(d, state, run)
  local inv, q, it = d.inv, d.query, d.intent
  local case = tbl(state.case)
  inv.inquiry_turns = (num(inv.inquiry_turns) or 0) + 1
  local pend = tbl(inv.pending_transition)
  local yes = it.kind == "confirmation" and it.value == "yes"
    or it.kind ~= "confirmation" and q.reply == "yes"
  local no = it.kind == "confirmation" and it.value == "no"
    or it.kind ~= "confirmation" and q.reply == "no"
  -- an explicit status_transition from the user
  if it.kind == "status_transition" and it.to_state then
    if it.to_state == "investigating" then
      if it.user_confirmed then yes = true else
        d.events.need_confirmation = "investigating"
      end
    elseif it.user_confirmed then
      if transition(d, it.to_state, it.closure_reason or pend.closure_reason) then return end
    else
      local reason = it.to_state == "closed" and "the user asked to close the case"
        or "the user asked to resolve the case"
      if it.to_state ~= "resolved" or d.milestones.solution_verified then
        pending(inv, it.to_state, it.to_state == "closed"
          and (it.closure_reason or "inquiry_only") or nil, reason, case.turn)
        d.events.proposed_transition = inv.pending_transition
        d.changed = true
      else
        transition(d, "resolved")
      end
      return
    end
  end
  if pend.to_state and (yes or no) then
    if yes then
      if transition(d, pend.to_state, pend.closure_reason) then return end
    else
      inv.pending_transition = nil
      d.events.transition_declined = pend
      d.changed = true
      return
    end
  end
  local proposal = str(inv.proposed_problem_statement)
  if proposal and (num(inv.proposed_turn) or -1) < (num(case.turn) or 0) then
    if yes then
      d.state, d.stage = "investigating", "diagnosis"
      inv.problem_statement = proposal
      inv.problem_confirmed = true
      inv.decided_to_investigate = true
      inv.proposed_problem_statement = nil
      inv.pending_transition = nil
      inv.awaiting = nil
      d.events.confirmed = proposal
      d.changed = true
      return "investigate"
    elseif no then
      local rej = setmetatable(copy(tbl(inv.rejected_statements)), json.array_mt)
      rej[#rej + 1] = proposal
      while #rej > 5 do table.remove(rej, 1) end
      inv.rejected_statements = rej
      inv.proposed_problem_statement = nil
      inv.proposed_turn = nil
      inv.awaiting = nil
      d.events.rejected = proposal
      d.changed = true
      return
    end
  elseif yes and it.kind == "status_transition" and it.to_state == "investigating" then
    -- the user asks to investigate right away: their own words are the problem statement
    local s = proposal or M.propose_statement(state, run)
    if s then
      d.state, d.stage = "investigating", "diagnosis"
      inv.problem_statement = s
      inv.problem_confirmed = true
      inv.decided_to_investigate = true
      inv.proposed_problem_statement = nil
      inv.awaiting = nil
      d.events.confirmed = s
      d.changed = true
      return "investigate"
    end
  end
  -- no decision this turn: propose (or re-propose), answer a question, or ask
  local matched = #M.useful(run) > 0
  local evidence_problem = matched or #serious_signals(state.ctx) > 0
  local query = str(tbl(state.message).query)
  local function answer(propose_close)
    local runbooks = {}
    local ctx = tbl(state.ctx)
    if type(ctx.search_kb) == "function" and query then
      local ok, res = pcall(ctx.search_kb, query, 3)
      if ok and type(res) == "table" then runbooks = res end
    end
    d.events.question = { runbooks = runbooks }
    if propose_close and #runbooks > 0 then
      pending(inv, "closed", "inquiry_only", "the question was answered from the runbooks",
        case.turn)
      d.events.proposed_transition = inv.pending_transition
      d.changed = true
    end
  end
  if (yes or no) and it.kind ~= "status_transition" and #tbl(state.new_evidence_ids) == 0 then
    d.events.nothing_pending = true
    d.events.need_description = true
    return
  end
  local statement = query and not q.question and select(2, query:gsub("%S+", "")) >= 5
  local described = M.read_query(case.description).problem
  if evidence_problem or q.problem or statement or described or d.events.need_confirmation
      or (#tbl(state.new_evidence_ids) > 0 and not q.question) then
    if q.question and not evidence_problem then answer(false) end
    local s, source = M.propose_statement(state, run)
    if s then
      if s ~= proposal then
        inv.proposed_problem_statement = s
        inv.proposed_turn = case.turn
        d.changed = true
      end
      inv.pending_transition = nil
      inv.awaiting = "problem_statement"
      d.events.proposal = { statement = s, source = source, same = s == proposal }
      return
    end
  end
  if query then
    answer(q.question)
    if #d.events.question.runbooks > 0 then return end
  end
  d.events.need_description = true
end

-- The root cause: the runner's conclusion, or the hypothesis the user validated (the user's
-- word outranks a later conclusion); a refuted root cause sends the case back to diagnosis.
local function update_root_cause(d, state, run, inv)
  local c = tbl(run.conclusion)
  local by_user = tbl(inv.root_cause).assurance == "confirmed by the user"
  if d.user_validated then
    local h = d.user_validated
    if tbl(inv.root_cause).hypothesis == h.key then
      local rc = copy(inv.root_cause)
      rc.assurance = "confirmed by the user"
      inv.root_cause = rc
    else
      set_root_cause(d, inv, state, run, { description = h.statement, category = h.category,
        confidence = math.max(h.likelihood or 0, M.VALIDATE_AT), playbook = h.playbook,
        hypothesis = h.key, assurance = "confirmed by the user" })
    end
  elseif d.root_cause_refuted then
    inv.root_cause = nil
    inv.concluded_signals, inv.concluded_kinds, inv.concluded_playbook = nil, nil, nil
    d.milestones.root_cause_identified = nil
    if d.stage ~= "diagnosis" then d.stage = "diagnosis" end
    d.changed = true
  elseif not by_user and str(c.root_cause) and (num(c.confidence) or 0) >= M.VALIDATE_AT
      and not ({ refuted = true, retired = true })[tbl(inv.user_hypotheses)[
        tostring(c.playbook) .. ":" .. tostring(c.hypothesis)] or ""] then
    set_root_cause(d, inv, state, run, { description = c.root_cause, category = c.category,
      confidence = c.confidence, severity = c.severity, playbook = c.playbook,
      hypothesis = tostring(c.playbook) .. ":" .. tostring(c.hypothesis),
      assurance = "concluded from the evidence" })
  end
end

-- The working conclusion: the root cause, else the most likely open hypothesis.
local function update_working_conclusion(d, state, inv)
  local wc
  if inv.root_cause then
    wc = { summary = inv.root_cause.description, confidence = inv.root_cause.confidence }
  else
    for _, h in ipairs(d.all_hypotheses) do
      if h.state ~= "refuted" and h.state ~= "retired" then
        wc = { summary = "Most likely so far: " .. h.statement, confidence = h.likelihood }
        break
      end
    end
  end
  if wc then
    local old = tbl(inv.working_conclusion)
    if old.summary ~= wc.summary or old.confidence ~= wc.confidence then
      wc.last_updated = tbl(state.ctx).now or old.last_updated
      inv.working_conclusion = wc
      d.changed = true
    end
  end
end

-- The user's words about a fix: read only when the engine asked for them (a "deployed" in a
-- description of the incident is not a fix applied), or with an explicit confirmation.
local function record_fix(d, state, inv, has, yes)
  local q, it, ms = d.query, d.intent, d.milestones
  local awaiting, pend = inv.awaiting, tbl(inv.pending_transition)
  local asked = awaiting == "mitigation" or awaiting == "solution"
  local applied = asked and not pend.to_state and (q.applied or yes)
    or it.kind == "confirmation" and it.value == "yes" and it.solution_key ~= nil
  local accepted = asked and q.accepted
  local want_kind = awaiting == "solution" and "solution" or awaiting == "mitigation"
    and "mitigation" or (d.stage == "treatment" and "solution" or "mitigation")
  local named
  for _, x in ipairs(d.solutions) do
    if it.solution_key and x.key == it.solution_key then named = x end
  end
  if named then want_kind = named.kind end
  if (applied or accepted) and (has.mitigation or has.solution) then
    if not has[want_kind] then want_kind = has.mitigation and "mitigation" or "solution" end
    local s = first_of(d, want_kind, applied and { proposed = true, accepted = true }
      or { proposed = true }, it.solution_key, tbl(state.message).query)
      or first_of(d, want_kind, { proposed = true, accepted = true, applied = true })
    if s then
      mark(d, s, applied and (s.status == "verified" and "verified" or "applied") or "accepted")
      ms[want_kind .. "_accepted"] = true
      d.events.fix = { kind = want_kind, title = s.title, status = s.status, verify = s.verify }
      if want_kind == "mitigation" and applied and inv.root_cause then d.stage = "treatment" end
      if want_kind == "solution" and (d.stage == "diagnosis" or d.stage == "mitigation") then
        d.stage = "treatment"
      end
      d.changed = true
    end
  end
  if q.lasting and d.stage ~= "treatment" and inv.root_cause then
    d.stage = "treatment"
    d.events.lasting = true
    d.changed = true
  end
end

-- Evidence: classification, and the verification of what was applied by clean evidence.
local function verify_fixes(d, state, run, inv)
  local ms = d.milestones
  -- a fix applied before any conclusion: the signals of the evidence so far (the top open
  -- hypothesis's, else every item's) are what clean evidence must lack to verify it
  if (ms.mitigation_accepted or ms.solution_accepted) and #tbl(inv.concluded_signals) == 0 then
    local top
    for _, h in ipairs(d.all_hypotheses) do
      if not top and h.state ~= "refuted" and h.state ~= "retired" then top = h end
    end
    remember_signals(inv, state, run, top and top.key, d.new_ids)
  end
  classify(d, state, inv)
  if d.verified_by then
    local kind = ms.solution_accepted and "solution" or "mitigation"
    if not ms[kind .. "_verified"] then
      ms[kind .. "_verified"] = true
      d.changed = true
    end
    -- the same clean evidence verifies whatever was applied before it
    if ms.mitigation_accepted and not ms.mitigation_verified then
      ms.mitigation_verified = true
    end
    for _, s in ipairs(d.solutions) do
      if s.status == "applied" then mark(d, s, "verified") end
    end
    d.events.verified = { kind = kind, filename = d.verified_by.filename,
                          evidence_id = d.verified_by.id }
  elseif d.still_seen then
    d.events.still_seen = d.still_seen
  end
end

-- The stage (diagnosis -> mitigation -> treatment) and what a yes answers next.
local function advance_stage(d, inv, has)
  local ms = d.milestones
  if d.stage == "diagnosis" and inv.root_cause then
    if has.mitigation and not ms.mitigation_accepted then d.stage = "mitigation"
    elseif has.solution then d.stage = "treatment" end
  end
  if d.stage == "mitigation" and ms.mitigation_accepted and (ms.mitigation_verified
      or first_of(d, "mitigation", { applied = true, verified = true })) then
    d.stage = "treatment"
  end
  if (d.stage == "mitigation" or d.stage == "diagnosis") and has.mitigation
      and not first_of(d, "mitigation", { applied = true, verified = true }) then
    inv.awaiting = "mitigation"
  elseif d.stage == "treatment" and has.solution
      and not first_of(d, "solution", { applied = true, verified = true }) then
    inv.awaiting = "solution"
  else
    inv.awaiting = nil
  end
end

local function propose(d, inv, to_state, closure_reason, reason, turn)
  pending(inv, to_state, closure_reason, reason, turn)
  d.events.proposed_transition = inv.pending_transition
  d.changed = true
end

-- The user's answer to a pending proposal, or their own request to resolve or close. Returns
-- true when the case changed state (nothing else happens on that turn).
local function answer_transitions(d, state, inv, yes, no)
  local q, it, ms = d.query, d.intent, d.milestones
  local pend, turn = tbl(inv.pending_transition), tbl(state.case).turn
  if pend.to_state then
    if it.kind == "status_transition" and it.user_confirmed and it.to_state then
      return transition(d, it.to_state, it.closure_reason or (it.to_state == pend.to_state
        and pend.closure_reason or nil))
    elseif yes then
      return transition(d, pend.to_state, pend.closure_reason)
    elseif no then
      inv.pending_transition = nil
      if pend.to_state == "resolved" then inv.resolve_declined = true end
      d.events.transition_declined = pend
      d.changed = true
    end
  elseif it.kind == "status_transition" and it.to_state then
    if it.user_confirmed then return transition(d, it.to_state, it.closure_reason) end
    if it.to_state == "resolved" and not ms.solution_verified then
      transition(d, "resolved")
    elseif M.NEXT.investigating[it.to_state] then
      propose(d, inv, it.to_state, it.to_state == "closed" and (it.closure_reason
        or M.default_closure("investigating", ms, inv)) or nil,
        "the user asked to " .. (it.to_state == "closed" and "close" or "resolve")
        .. " the case", turn)
    end
  elseif q.resolve then
    if ms.solution_verified then
      propose(d, inv, "resolved", nil, "the user asked to resolve the case", turn)
    else
      transition(d, "resolved")
    end
  elseif q.close then
    propose(d, inv, "closed", M.default_closure("investigating", ms, inv),
      "the user asked to close the case", turn)
  end
  return false
end

local function investigating(d, state, run)
  local inv, q, it = d.inv, d.query, d.intent
  local ms = d.milestones
  local yes = it.kind == "confirmation" and it.value == "yes"
    or it.kind ~= "confirmation" and q.reply == "yes"
  local no = it.kind == "confirmation" and it.value == "no"
    or it.kind ~= "confirmation" and q.reply == "no"

  update_hypotheses(d, state, run, inv)
  update_solutions(d, state, run)
  update_root_cause(d, state, run, inv)
  update_working_conclusion(d, state, inv)

  -- indicators
  if symptom_seen(state, run) then ms.symptom_verified = true end
  if inv.root_cause then ms.root_cause_identified = true end
  local has = { mitigation = false, solution = false }
  for _, s in ipairs(d.solutions) do has[s.kind] = true end
  if has.mitigation or has.solution then ms.solution_proposed = true end

  record_fix(d, state, inv, has, yes)
  verify_fixes(d, state, run, inv)
  advance_stage(d, inv, has)
  if answer_transitions(d, state, inv, yes, no) then return end
  -- the engine's own proposal: resolve once the fix is verified
  if ms.solution_verified and not tbl(inv.pending_transition).to_state
      and not inv.resolve_declined then
    propose(d, inv, "resolved", nil,
      "the fix is applied and new evidence shows the cause is gone", tbl(state.case).turn)
  end
  if tbl(inv.pending_transition).to_state then inv.awaiting = "transition" end
end

--- The decision of one turn. state: contract section 7; run: the runner's result (may be
-- empty). Returns d = {state, stage, closure_reason, milestones (set), inv (the new
-- investigation), hypotheses, all_hypotheses, solutions, evidence, events, progress,
-- intent, query}.
function M.step(state, run)
  state, run = tbl(state), tbl(run)
  local case = tbl(state.case)
  local d = {
    prior_state = case.state or "inquiry", state = case.state or "inquiry",
    stage = M.STAGES[case.stage] and case.stage or nil,
    closure_reason = nil, milestones = milestone_set(case.milestones),
    inv = copy(tbl(case.investigation)), hypotheses = {}, all_hypotheses = {}, solutions = {},
    evidence = {}, events = {}, changed = false,
    intent = M.intent(state.message), query = M.read_query(tbl(state.message).query),
  }
  d.inv.user_hypotheses = d.inv.user_hypotheses and copy(d.inv.user_hypotheses) or nil
  -- this turn's evidence: what a fix applied now is verified against, never its baseline
  d.new_ids = {}
  for _, id in ipairs(tbl(state.new_evidence_ids)) do d.new_ids[tostring(id)] = true end
  local before = #milestone_list(d.milestones)
  if d.state == "inquiry" then
    if inquiry(d, state, run) == "investigate" then investigating(d, state, run) end
  elseif d.state == "investigating" then
    if not d.stage then d.stage = "diagnosis" end
    investigating(d, state, run)
  end
  if d.state ~= "investigating" and d.prior_state ~= "investigating" then d.stage = nil end
  if not d.classified then
    -- inquiry turns classify their evidence too (links to the playbooks' hypotheses)
    local tmp = { all_hypotheses = {}, milestones = d.milestones }
    for _, h in ipairs(tbl(run.hypotheses)) do
      if type(h) == "table" and hyp_ref(h) then
        tmp.all_hypotheses[#tmp.all_hypotheses + 1] = { key = hyp_ref(h),
          evidence_for = ev_list(h.evidence_for), evidence_against = ev_list(h.evidence_against) }
      end
    end
    classify(tmp, state, d.inv)
    d.evidence = tmp.evidence
  end
  d.milestone_list = milestone_list(d.milestones)
  d.progress = d.changed or #d.milestone_list ~= before or d.state ~= d.prior_state
    or d.stage ~= case.stage
  return d
end

return M
