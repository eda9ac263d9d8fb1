-- fm.agent.runner: runs the playbooks against a ctx (fm.agent.context) and gathers what they
-- found (docs/PLAYBOOKS.md, "How a playbook runs").
--
--   local result = runner.run(ctx, { only = id, threshold = 0.3, max_playbooks = 3,
--                                    deadline = fm.time.monotonic() + 10, registry = reg })
--
-- Every playbook's match(ctx) runs in its sandbox box; the best ones over the threshold run
-- their steps in order, each step a sandbox run of its own under the FM_PLAYBOOK_* budgets.
-- A playbook that fails (raises, loops, allocates too much, returns nonsense, calls `out`
-- wrongly) is reported in result.failed and skipped: runner.run never raises because of one.
--
-- What a playbook receives is read-only: ctx is a proxy over the caller's data (no copy, so
-- no cost per playbook), and `out` keeps what the steps record in closures the playbook
-- cannot reach. Nothing the box returns is touched with metamethods outside the box: tables
-- from it are read with rawget/rawlen only, and only strings, numbers and booleans are kept.
local json = require "fm.json"
local time = require "fm.time"

local M = {}

M.THRESHOLD = 0.3
M.MAX_PLAYBOOKS = 3
M.MATCH_BUDGET_DIVISOR = 10
M.CATEGORIES = require("fm.agent.lifecycle").CATEGORIES
local RISKS = { low = true, medium = true, high = true }
local SEVERITIES = { low = true, medium = true, high = true, critical = true }
local STANCES = { ["for"] = true, against = true }
local CAPS = { findings = 50, hypotheses = 10, evidence = 50, asks = 10, mitigations = 10,
               solutions = 10, runbooks = 10 }
local MAX_STRING, MAX_COMMAND, MAX_REASONS = 2000, 1000, 10
local MAX_SEARCHES = 5 -- knowledge searches per playbook run (each one is real work in C)

-- ---- values from the box ---------------------------------------------------------------------

-- A string cut to max bytes on a character boundary; invalid UTF-8 bytes become '?'.
local function clean(s, max)
  if not utf8.len(s) then s = s:gsub("[\128-\255]", "?") end
  if #s > max then
    local cut = max
    while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
    s = s:sub(1, cut)
  end
  return s
end

local function finite(x)
  return type(x) == "number" and x == x and x > -math.huge and x < math.huge
end

-- Errors of `out` calls name the method and the field; level 3 points at the playbook's line.
local function bad(method, msg) error("out:" .. method .. ": " .. msg, 3) end

local function field_string(t, method, name, max, required)
  local v = rawget(t, name)
  if v == nil then
    if required then bad(method, "'" .. name .. "' is required") end
    return nil
  end
  if type(v) ~= "string" then bad(method, "'" .. name .. "' must be a string") end
  if required and not v:find("%S") then bad(method, "'" .. name .. "' must not be blank") end
  return clean(v, max)
end

local function field_unit(t, method, name, required)
  local v = rawget(t, name)
  if v == nil and not required then return nil end
  if not finite(v) or v < 0 or v > 1 then bad(method, "'" .. name .. "' must be a number 0..1") end
  return v + 0.0
end

local function field_enum(t, method, name, set, required)
  local v = rawget(t, name)
  if v == nil and not required then return nil end
  if type(v) ~= "string" or not set[v] then
    local names = {}
    for k in pairs(set) do names[#names + 1] = k end
    table.sort(names)
    bad(method, "'" .. name .. "' must be one of " .. table.concat(names, ", "))
  end
  return v
end

local function field_line(t, method)
  local v = rawget(t, "line")
  if v == nil then return nil end
  if math.type(v) ~= "integer" or v < 1 then bad(method, "'line' must be a positive integer") end
  return v
end

local function spec_table(method, v)
  if type(v) ~= "table" then bad(method, "takes a table") end
  return v
end

-- The reasons match() returned: at most MAX_REASONS strings.
local function reason_list(v)
  local out = {}
  if type(v) ~= "table" then return out end
  local n = math.min(rawlen(v), MAX_REASONS)
  for i = 1, n do
    local r = rawget(v, i)
    if type(r) == "string" then out[#out + 1] = clean(r, 300) end
  end
  return out
end

-- ---- what a playbook sees ------------------------------------------------------------------

-- A read-only view of a host table; nested tables and function results are viewed the same
-- way. One cache per playbook run keeps a view's identity stable.
local function view(v, cache)
  local tv = type(v)
  if tv == "function" then
    local w = cache[v]
    if not w then
      w = function(...)
        local res = table.pack(v(...))
        for i = 1, res.n do res[i] = view(res[i], cache) end
        return table.unpack(res, 1, res.n)
      end
      cache[v] = w
    end
    return w
  end
  if tv ~= "table" then return v end
  local p = cache[v]
  if p then return p end
  p = setmetatable({}, {
    __index = function(_, k) return view(rawget(v, k), cache) end,
    __newindex = function() error("ctx is read-only", 2) end,
    __len = function() return rawlen(v) end,
    __pairs = function()
      local k
      return function()
        local val
        k, val = next(v, k)
        if k ~= nil then return k, view(val, cache) end
      end
    end,
    __metatable = "read-only",
  })
  cache[v] = p
  return p
end

-- The `out` of one playbook run: methods that check their arguments and record; rec holds
-- what was recorded (the playbook never sees rec).
local function new_out(ctx, rec)
  local category = rec.category
  local function add(kind, item)
    local list = rec[kind]
    if #list >= CAPS[kind] then
      if not rec.capped[kind] then
        rec.capped[kind] = true
        rec.warnings[#rec.warnings + 1] = string.format("more than %d %s: the rest were dropped",
          CAPS[kind], kind)
      end
      return false
    end
    list[#list + 1] = item
    return true
  end

  local m = {}
  function m.finding(_, v)
    if type(v) == "string" then v = { text = v } end
    spec_table("finding", v)
    add("findings", {
      text = field_string(v, "finding", "text", MAX_STRING, true),
      evidence_id = field_string(v, "finding", "evidence_id", 200),
      filename = field_string(v, "finding", "filename", 500),
      line = field_line(v, "finding"),
      severity = field_string(v, "finding", "severity", 20),
    })
  end
  function m.hypothesis(_, v)
    spec_table("hypothesis", v)
    local key = field_string(v, "hypothesis", "key", 64, true)
    if not key:match("^[a-z0-9_]+$") then
      bad("hypothesis", "'key' must use a-z, 0-9 and _")
    end
    local h = {
      key = key, statement = field_string(v, "hypothesis", "statement", MAX_STRING, true),
      category = field_enum(v, "hypothesis", "category", M.CATEGORIES) or category,
      likelihood = field_unit(v, "hypothesis", "likelihood", true),
    }
    for i, old in ipairs(rec.hypotheses) do
      if old.key == key then rec.hypotheses[i] = h; return key end
    end
    add("hypotheses", h)
    return key
  end
  function m.evidence(_, v)
    spec_table("evidence", v)
    add("evidence", {
      hypothesis = field_string(v, "evidence", "hypothesis", 64, true),
      stance = field_enum(v, "evidence", "stance", STANCES, true),
      summary = field_string(v, "evidence", "summary", MAX_STRING, true),
      evidence_id = field_string(v, "evidence", "evidence_id", 200),
      line = field_line(v, "evidence"),
    })
  end
  function m.ask(_, v)
    spec_table("ask", v)
    add("asks", {
      label = field_string(v, "ask", "label", 300, true),
      command = field_string(v, "ask", "command", MAX_COMMAND),
      why = field_string(v, "ask", "why", MAX_STRING),
      hypothesis = field_string(v, "ask", "hypothesis", 64),
    })
  end
  function m.conclude(_, v)
    spec_table("conclude", v)
    local c = {
      hypothesis = field_string(v, "conclude", "hypothesis", 64),
      root_cause = field_string(v, "conclude", "root_cause", MAX_STRING, true),
      confidence = field_unit(v, "conclude", "confidence", true),
      severity = field_enum(v, "conclude", "severity", SEVERITIES) or "medium",
    }
    if not rec.conclusion or c.confidence >= rec.conclusion.confidence then rec.conclusion = c end
  end
  local function remedy(method, kind)
    return function(_, v)
      spec_table(method, v)
      add(kind, {
        title = field_string(v, method, "title", 300, true),
        command = field_string(v, method, "command", MAX_COMMAND),
        description = field_string(v, method, "description", MAX_STRING),
        risk = field_enum(v, method, "risk", RISKS, true),
        undo = field_string(v, method, "undo", MAX_STRING, true),
        verify = field_string(v, method, "verify", MAX_COMMAND),
      })
    end
  end
  m.mitigate = remedy("mitigate", "mitigations")
  m.solve = remedy("solve", "solutions")
  -- A plain host copy of one search result: the box gets one copy, the result keeps another,
  -- so nothing the box does to what it got is ever read outside the sandbox.
  local function doc(r)
    if type(r) ~= "table" then return nil end
    local function str(k, max)
      local v = rawget(r, k)
      if type(v) == "string" then return clean(v, max) end
    end
    local tags, t = {}, rawget(r, "tags")
    if type(t) == "table" then
      for i = 1, math.min(rawlen(t), 20) do
        if type(rawget(t, i)) == "string" then tags[#tags + 1] = clean(rawget(t, i), 100) end
      end
    end
    local score = rawget(r, "score")
    return { document_id = str("document_id", 200), title = str("title", 300),
             category = str("category", 100), tags = tags, snippet = str("snippet", MAX_STRING),
             score = finite(score) and score or nil, heading = str("heading", 300) }
  end
  local searches = 0
  function m.runbook(_, query, limit)
    if type(query) ~= "string" then bad("runbook", "the query must be a string") end
    searches = searches + 1
    if searches > MAX_SEARCHES then
      if searches == MAX_SEARCHES + 1 then
        rec.warnings[#rec.warnings + 1] = string.format(
          "more than %d knowledge searches: the rest were not run", MAX_SEARCHES)
      end
      return {}
    end
    local found, given = ctx.search_kb(query, limit), {}
    for _, r in ipairs(found) do
      local d = doc(r)
      if d and d.document_id then
        given[#given + 1] = d
        local dup = false
        for _, old in ipairs(rec.runbooks) do
          if old.document_id == d.document_id then dup = true end
        end
        if not dup then add("runbooks", doc(r)) end
      end
    end
    return given
  end
  return setmetatable({}, { __index = m, __newindex = function()
    error("out is read-only", 2)
  end, __metatable = "out" })
end

-- ---- the run -------------------------------------------------------------------------------

local function fail(result, id, phase, kind, message, step)
  result.failed[#result.failed + 1] = { id = id, phase = phase, step = step, kind = kind,
                                        message = clean(tostring(message), MAX_STRING) }
end

-- match(ctx) of one playbook: score, reasons or nil after reporting the failure.
local function run_match(result, p, ctxv)
  local match = rawget(p.definition, "match")
  if type(match) ~= "function" then
    fail(result, p.id, "match", "output", "match is not a function")
    return nil
  end
  -- match() decides whether to look closer: it gets a tenth of a step's budget, so a runaway
  -- one among many playbooks costs a turn little
  local budget = p.box.instructions
  p.box.instructions = math.max(budget // M.MATCH_BUDGET_DIVISOR, 100000)
  local ok, a, b = p.box:run(match, ctxv)
  p.box.instructions = budget
  if not ok then
    fail(result, p.id, "match", a, b)
    return nil
  end
  if not finite(a) or a < 0 or a > 1 then
    fail(result, p.id, "match", "output", string.format(
      "match must return a score 0..1 (got %s)", finite(a) and string.format("%g", a) or type(a)))
    return nil
  end
  return a + 0.0, reason_list(b)
end

local function new_record(p, score, reasons)
  local def = p.definition
  local cat = rawget(def, "category")
  local tags = {}
  local t = rawget(def, "tags")
  if type(t) == "table" then
    for i = 1, math.min(rawlen(t), 20) do
      if type(rawget(t, i)) == "string" then tags[#tags + 1] = rawget(t, i) end
    end
  end
  local A = json.array
  return { id = p.id, title = p.title, version = p.version, file = p.file,
           category = M.CATEGORIES[cat] and cat or "other", tags = A(tags), score = score,
           reasons = A(reasons), findings = A {}, hypotheses = A {}, evidence = A {},
           asks = A {}, mitigations = A {}, solutions = A {}, runbooks = A {},
           warnings = A {}, capped = {} }
end

-- The steps of one chosen playbook, in order; a failing step ends the playbook's run (what
-- earlier steps recorded is kept).
local function run_steps(result, p, rec, ctx, ctxv, expired)
  local steps = rawget(p.definition, "steps")
  if type(steps) ~= "table" then
    fail(result, p.id, "step", "output", "steps is not a table")
    return
  end
  local out = new_out(ctx, rec)
  for i = 1, math.min(rawlen(steps), 20) do
    local step = rawget(steps, i)
    local name = type(step) == "table" and rawget(step, "name")
    name = type(name) == "string" and clean(name, 64) or ("step " .. i)
    if expired() then
      fail(result, p.id, "step", "deadline", "the turn's time ran out before this step", name)
      return
    end
    local fn = type(step) == "table" and rawget(step, "run")
    if type(fn) ~= "function" then
      fail(result, p.id, "step", "output", "step has no run function", name)
      return
    end
    local ok, kind, msg = p.box:run(fn, ctxv, out)
    if not ok then
      fail(result, p.id, "step", kind, msg, name)
      rec.failed = true
      return
    end
  end
  local kb = rawget(p.definition, "kb")
  if #rec.runbooks == 0 and type(kb) == "string" and kb:find("%S") then
    for _, r in ipairs(ctx.search_kb(kb, 2)) do rec.runbooks[#rec.runbooks + 1] = r end
  end
end

-- Flattened views over the chosen playbooks (ranked best first).
local function flatten(result)
  local rank = {}
  for i, rec in ipairs(result.matched) do rank[rec.id] = i end
  local seen_ask, seen_doc = {}, {}
  for _, rec in ipairs(result.matched) do
    local by_key = {}
    for _, h in ipairs(rec.hypotheses) do
      local fh = { key = h.key, playbook = rec.id, statement = h.statement,
                   category = h.category, likelihood = h.likelihood,
                   evidence_for = json.array {}, evidence_against = json.array {} }
      by_key[h.key] = fh
      result.hypotheses[#result.hypotheses + 1] = fh
    end
    for _, e in ipairs(rec.evidence) do
      local h = by_key[e.hypothesis]
      if h then
        local list = e.stance == "for" and h.evidence_for or h.evidence_against
        list[#list + 1] = { summary = e.summary, evidence_id = e.evidence_id, line = e.line }
      else
        rec.warnings[#rec.warnings + 1] = "evidence for an unknown hypothesis '"
          .. e.hypothesis .. "'"
      end
    end
    for _, a in ipairs(rec.asks) do
      local k = a.command or a.label
      if not seen_ask[k] then
        seen_ask[k] = true
        a.playbook = rec.id
        result.asks[#result.asks + 1] = a
      end
    end
    for _, kind in ipairs({ "mitigations", "solutions" }) do
      for _, s in ipairs(rec[kind]) do
        s.playbook = rec.id
        result[kind][#result[kind] + 1] = s
      end
    end
    for _, r in ipairs(rec.runbooks) do
      if type(r) == "table" and r.document_id and not seen_doc[r.document_id] then
        seen_doc[r.document_id] = true
        result.runbooks[#result.runbooks + 1] = r
      end
    end
    local c = rec.conclusion
    if c then
      local h = c.hypothesis and by_key[c.hypothesis]
      c.playbook, c.category = rec.id, h and h.category or rec.category
      local best = result.conclusion
      if not best or c.confidence > best.confidence then result.conclusion = c end
    end
    rec.capped = nil
  end
  table.sort(result.hypotheses, function(a, b)
    if a.likelihood ~= b.likelihood then return a.likelihood > b.likelihood end
    if rank[a.playbook] ~= rank[b.playbook] then return rank[a.playbook] < rank[b.playbook] end
    return a.key < b.key
  end)
end

-- The playbook to run: a fresh instance of a loaded one (fm.playbooks.instantiate), so no run
-- sees what an earlier run left in the playbook's globals; nil after reporting a failure.
-- Registries made by hand (no source text) run their definitions as they are.
local function instance(result, p)
  if not p.text then return p end
  local def, box_or_kind, msg = require("fm.playbooks").instantiate(p)
  if not def then
    fail(result, p.id, "load", box_or_kind, msg)
    return nil
  end
  return setmetatable({ definition = def, box = box_or_kind }, { __index = p })
end

--- Runs the playbooks against ctx (see the header). Returns the result of docs/PLAYBOOKS.md.
function M.run(ctx, opts)
  opts = opts or {}
  local t0 = time.monotonic()
  local reg = opts.registry or require("fm.playbooks").registry()
  local threshold = opts.threshold or M.THRESHOLD
  local max_playbooks = opts.max_playbooks or M.MAX_PLAYBOOKS
  local function expired() return opts.deadline ~= nil and time.monotonic() > opts.deadline end
  local A = json.array
  local result = { scores = A {}, matched = A {}, hypotheses = A {}, asks = A {},
                   mitigations = A {}, solutions = A {}, runbooks = A {}, failed = A {} }

  local views, cands = {}, {}
  for _, loaded in ipairs(reg.list) do
    local p
    if not opts.only or loaded.id == opts.only then p = instance(result, loaded) end
    if p then
      if expired() then
        fail(result, p.id, "match", "deadline", "the turn's time ran out before this playbook")
      else
        views[p.id] = view(ctx, {})
        local score, reasons = run_match(result, p, views[p.id])
        if score then
          result.scores[#result.scores + 1] = { id = p.id, title = p.title, score = score,
                                                reasons = reasons }
          cands[#cands + 1] = { id = p.id, p = p, score = score, reasons = reasons }
        elseif opts.only then
          cands[#cands + 1] = { id = p.id, p = p, score = 0.0, reasons = {} }
        end
      end
    end
  end
  local function best_first(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.id < b.id
  end
  table.sort(result.scores, best_first)
  table.sort(cands, best_first)

  for _, c in ipairs(cands) do
    if #result.matched >= max_playbooks then break end
    if opts.only or c.score >= threshold then
      local rec = new_record(c.p, c.score, c.reasons)
      run_steps(result, c.p, rec, ctx, views[c.p.id] or view(ctx, {}), expired)
      result.matched[#result.matched + 1] = rec
    end
  end
  flatten(result)
  result.elapsed_ms = math.floor((time.monotonic() - t0) * 1000 + 0.5)
  return result
end

return M
