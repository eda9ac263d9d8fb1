-- fm.admin: the `admin` table of the admin REPL (`faultmaven repl`; docs/OPERATIONS.md).
--
-- The admin VM (engine/l_admin.c) sets the global `admin` to this module. It is a plain table of
-- functions (admin.playbooks is a callable table with .run): later issues add theirs
-- (admin.cases(), admin.sessions(), ...) and a line to M.help_text. Everything here reads engine
-- state; only reload() and log_level(x) change it.
local engine = require "fm.engine"
local log = require "fm.log"
local core = require "fm.admin_core"

local M = {}

-- The reload facts of engine/l_engine.c when the engine has hot reload; nil before.
local function reload_status()
  if type(engine.reload_status) ~= "function" then return nil end
  return engine.reload_status()
end

local function generation(st)
  local i = engine.info()
  return i.generation or (st and st.generation) or 1
end

--- Engine counters: uptime, generation, requests, workers, queue and memory.
function M.stats()
  local i = engine.info()
  local st = reload_status()
  local mem = core.memory()
  return {
    version = i.version,
    uptime_s = i.uptime_s,
    generation = generation(st),
    reload_failed = st and st.failed or false,
    readiness = i.readiness,
    requests = i.requests,
    inflight = i.inflight,
    workers = i.workers,
    workers_busy = i.workers_busy,
    queued = i.queued,
    vm_restarts = i.vm_restarts,
    memory = {
      rss_bytes = mem.rss_bytes,
      lua_workers_bytes = mem.lua_workers_bytes,
      lua_admin_bytes = mem.lua_admin_bytes,
      lua_limit_bytes = i.lua_memory_limit,
    },
  }
end

--- Reloads config.lua, lua/ and playbooks/ now; returns the outcome
-- {ok, changed, generation, reason, at, file, line, message, restart_required}.
function M.reload()
  if type(engine.reload) ~= "function" then
    error("hot reload is not available in this engine (fm.engine has no reload)", 2)
  end
  local out = engine.reload("admin")
  if type(out) == "table" and out.generation == nil then
    out.generation = generation(reload_status())
  end
  return out
end

local function list_of(v)
  if type(v) == "table" then return v end
  if type(v) == "string" and v ~= "" then
    local out = {}
    for item in v:gmatch("[^,%s]+") do out[#out + 1] = item end
    return out
  end
  return {}
end

--- For `faultmaven reload`: ok, a human summary of admin.reload().
function M.reload_summary()
  local ok, out = pcall(M.reload)
  if not ok then return false, "reload failed: " .. tostring(out) end
  if type(out) ~= "table" then return false, "reload failed: no outcome" end
  local lines = {}
  if out.ok then
    if out.changed == false then
      lines[1] = ("unchanged: generation %s still serving (no file changed)"):format(
        tostring(out.generation))
    else
      lines[1] = ("reloaded: generation %s serving"):format(tostring(out.generation))
    end
  else
    local where = out.file and out.file ~= "" and
      (out.line and out.line > 0 and (out.file .. ":" .. out.line .. ": ") or (out.file .. ": "))
      or ""
    -- playbook messages start with their file already
    if where ~= "" and tostring(out.message or ""):sub(1, #out.file) == out.file then where = "" end
    lines[1] = "reload failed: " .. where .. tostring(out.message or "unknown error")
    lines[2] = ("generation %s still serving"):format(tostring(out.generation))
  end
  local restart = list_of(out.restart_required)
  if #restart > 0 then
    lines[#lines + 1] = "restart required to apply: " .. table.concat(restart, ", ")
  end
  return out.ok and true or false, table.concat(lines, "\n")
end

local function by(...)
  local fields = { ... }
  return function(a, b)
    for _, f in ipairs(fields) do
      local x, y = tostring(a[f] or ""), tostring(b[f] or "")
      if x ~= y then return x < y end
    end
    return false
  end
end

--- The routes of the serving generation: {{method=, pattern=, max_body=}, ...}.
function M.routes()
  local st = reload_status()
  local src = st and st.report and st.report.routes
  if not src then src = require("fm.app").route_limits() end -- engines without hot reload
  local out = {}
  for i, r in ipairs(src) do
    out[i] = { method = r.method, pattern = r.pattern, max_body = r.max_body }
  end
  table.sort(out, by("pattern", "method"))
  return out
end

--- The playbooks of the serving generation and the load errors of the last failed build:
-- {playbooks = {{id=, title=, version=, file=}, ...}, errors = {{file=, line=, message=}, ...}}.
-- admin.playbooks() lists; admin.playbooks.run(id, case_id) tries one on a case (below).
local function list_playbooks()
  local st = reload_status()
  local report = st and st.report or {}
  local out = { playbooks = {}, errors = {} }
  for i, p in ipairs(report.playbooks or {}) do
    out.playbooks[i] = { id = p.id, title = p.title, version = p.version, file = p.file }
  end
  table.sort(out.playbooks, by("id"))
  for i, e in ipairs(report.playbook_errors or {}) do
    out.errors[i] = { file = e.file, line = e.line, message = e.message }
  end
  if st and st.failed and st.last and #out.errors == 0 and st.last.message then
    out.errors[1] = { file = st.last.file, line = st.last.line, message = st.last.message }
  end
  return out
end

M.playbooks = setmetatable({}, { __call = function(_, ...) return list_playbooks(...) end })

local READ_ONLY = "read-only: nothing was written to the case"

-- Plain copies of runner output (strings, numbers, booleans and nested tables) for printing.
local function plain(v, depth)
  depth = depth or 0
  if type(v) ~= "table" then
    if type(v) == "function" or type(v) == "userdata" or type(v) == "thread" then return nil end
    return v
  end
  if depth > 6 then return "(nested too deep)" end
  local out = {}
  for k, x in pairs(v) do
    if type(k) == "string" or type(k) == "number" then out[k] = plain(x, depth + 1) end
  end
  return out
end

--- Runs one playbook against a stored case, as the investigation engine would, and returns what
-- it produced: {note, playbook, case, score, reasons, findings, hypotheses, asks, conclusion,
-- mitigations, solutions, runbooks, warnings, failures, elapsed_ms}. Read-only: the case is not
-- changed. The playbooks are loaded from the files under FM_HOME now (an edit is seen without a
-- reload); the evidence is the case's stored analysis.
function M.playbooks.run(id, case_id)
  if type(id) ~= "string" or id == "" or type(case_id) ~= "string" or case_id == "" then
    error("playbooks.run: expected (playbook id, case id), for example "
      .. "admin.playbooks.run(\"disk-full\", \"case_0123...\")", 2)
  end
  local playbooks = require "fm.playbooks"
  local reg = playbooks.load_all()
  local p = reg.by_id[id]
  if not p then
    for _, e in ipairs(reg.errors) do
      if e.id == id or e.file == "playbooks/" .. id .. ".lua" then
        error("playbooks.run: playbook '" .. id .. "' does not load: " .. e.message, 2)
      end
    end
    local ids = {}
    for _, q in ipairs(reg.list) do ids[#ids + 1] = q.id end
    error(string.format("playbooks.run: no playbook '%s' (loaded: %s)", id,
      #ids > 0 and table.concat(ids, ", ") or "none"), 2)
  end
  local db = require "fm.db"
  local rows, qerr = db.query("SELECT * FROM cases WHERE id = ?", case_id)
  if not rows then error("playbooks.run: cannot read the case: " .. tostring(qerr), 2) end
  local row = rows[1]
  if not row then error("playbooks.run: case '" .. case_id .. "' not found", 2) end
  local ctx = require("fm.agent.case").context(row)
  local res = require("fm.agent.runner").run(ctx, { registry = reg, only = id })
  local m = res.matched and res.matched[1] or {}
  local score
  for _, s in ipairs(res.scores or {}) do if s.id == id then score = s end end
  local hyps = {}
  for _, h in ipairs(res.hypotheses or {}) do
    hyps[#hyps + 1] = { key = h.key, statement = h.statement, category = h.category,
                        likelihood = h.likelihood, evidence_for = plain(h.evidence_for),
                        evidence_against = plain(h.evidence_against) }
  end
  local asks = {}
  for _, a in ipairs(res.asks or {}) do
    asks[#asks + 1] = { label = a.label, command = a.command, why = a.why,
                        hypothesis = a.hypothesis }
  end
  return {
    note = READ_ONLY,
    playbook = { id = p.id, title = p.title, version = p.version, file = p.file },
    case = { id = row.id, title = row.title, state = row.state, evidence = #ctx.evidence },
    score = score and score.score or m.score, reasons = plain(score and score.reasons
      or m.reasons),
    findings = plain(m.findings or {}), hypotheses = hyps, asks = asks,
    conclusion = plain(res.conclusion), mitigations = plain(res.mitigations or {}),
    solutions = plain(res.solutions or {}), runbooks = plain(res.runbooks or {}),
    warnings = plain(m.warnings or {}), failures = plain(res.failed or {}),
    elapsed_ms = res.elapsed_ms,
  }
end

--- How a setting's value is shown: secrets (spec.secret) masked when set.
function M.mask(spec, value)
  if spec.secret and value ~= nil and value ~= "" then return "********" end
  return value
end

--- Every setting by environment variable name, secrets masked: config.lua over the environment,
-- with the settings C holds from start at the values the engine runs with (config.pin).
function M.config()
  -- The serving generation's own view (its config.lua, pinned, masked) when the engine has one;
  -- this VM's copy of config.lua was read once, when the admin socket started.
  local r = reload_status()
  if r and r.report and type(r.report.config) == "table" then return r.report.config end
  local config = require "config"
  local s, errs = config.resolve(os.getenv)
  if not s then error("invalid configuration: " .. table.concat(errs, "; "), 2) end
  local boot = type(engine.boot_settings) == "function" and engine.boot_settings()
  if boot and config.pin then config.pin(s, require("fm.json").decode(boot)) end
  local out = {}
  for _, spec in ipairs(config.specs) do out[spec.env] = M.mask(spec, rawget(s, spec.key)) end
  return out
end

--- Runs every health check now: {status=, components={name = {status=, ...}}}.
function M.health()
  local status, components = require("fm.services.health").check_all()
  return { status = status, components = components }
end

--- log_level() -> the engine's log level; log_level(name) sets it and returns the previous one.
function M.log_level(level)
  if level == nil then return log.level() end
  local ok, prev = pcall(log.level, level)
  if type(level) ~= "string" or not ok then
    error("log_level: expected debug, info, warn, error or off", 2)
  end
  return prev
end

--- The circuit breakers (lua/fm/breaker.lua), sorted by name: {{name=, state=, failures=,
-- opened_at= (ISO 8601, nil if it never opened), retry_in= (seconds until a probe may go)}, ...}.
-- breakers("reset", name) closes one, like reset_breaker(name).
function M.breakers(action, name)
  local breaker = require "fm.breaker"
  if action == "reset" then return M.reset_breaker(name) end
  if action ~= nil then error("breakers: expected no argument or (\"reset\", name)", 2) end
  local out = {}
  for i, b in ipairs(breaker.list()) do
    out[i] = {
      name = b.name,
      state = b.state,
      failures = b.failures,
      opened_at = b.opened_at and require("fm.time").iso8601(b.opened_at) or nil,
      retry_in = math.floor(b.retry_in * 1000 + 0.5) / 1000,
      probe_in_flight = b.probe_in_flight or nil,
    }
  end
  return out
end

--- Closes one circuit breaker and forgets its failures; true when it existed.
function M.reset_breaker(name)
  if type(name) ~= "string" or name == "" then
    error("reset_breaker: expected a breaker name (see admin.breakers())", 2)
  end
  local existed = require("fm.breaker").reset(name)
  if existed then log.warn("circuit breaker reset from the admin REPL", { dependency = name }) end
  return existed
end

M.help_text = {
  { "admin.stats()", "uptime, generation, requests, workers, queue, memory" },
  { "admin.reload()", "reload config.lua, lua/ and playbooks/ now; the outcome" },
  { "admin.routes()", "routes of the serving generation" },
  { "admin.playbooks()", "playbooks, and load errors of the last failed build" },
  { "admin.playbooks.run(id, c)", "run playbook id on case c, read-only: what it finds" },
  { "admin.config()", "every setting, secrets masked" },
  { "admin.health()", "run every health check now" },
  { "admin.log_level([l])", "the log level; with l (debug, info, warn, error, off) set it" },
  { "admin.breakers()", "circuit breakers: state, failures, opened_at, retry_in" },
  { "admin.reset_breaker(n)", "close breaker n (also admin.breakers(\"reset\", n))" },
  { "admin.help()", "this list" },
}

--- Prints what the admin table offers.
function M.help()
  local lines = { "admin functions:" }
  for _, h in ipairs(M.help_text) do lines[#lines + 1] = ("  %-27s %s"):format(h[1], h[2]) end
  lines[#lines + 1] = "Any Lua runs here, with require(\"fm.*\") modules; globals persist."
  lines[#lines + 1] = "Expressions print their value; Ctrl-C cancels a running command."
  print(table.concat(lines, "\n"))
end

return M
