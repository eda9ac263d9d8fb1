-- fm.playbooks: the playbooks of this generation, loaded from playbooks/ in the sandbox.
--
-- File contract (docs/PLAYBOOKS.md): every playbooks/**/*.lua file outside playbooks/lib/ is one
-- playbook. It runs in a sandbox (fm.sandbox) and returns a table with
--   id          string: lower-case letters, digits, '.', '_', '-'; at most 64; unique
--   title       string: 1 to 200 characters
--   version     string: semantic version, "1.0.0" (a pre-release or build suffix is allowed)
--   description string: 1 to 4000 characters
--   tags        1 to 20 strings, each ^[a-z0-9][a-z0-9_-]*$, at most 40
--   category    the default hypothesis category (M.CATEGORIES)
--   kb          optional: a runbook query, at most 200 characters
--   signals     optional: 0 to 20 named signatures {name, pattern, flags?, severity?,
--               description?} added to the evidence scanner; names unique across all playbooks
--               and never a built-in's
--   match       function(ctx) -> score, reasons
--   steps       1 to 20 steps {name = "...", run = function(ctx, out) ... end}, unique names
-- Unknown fields are kept. Files under playbooks/lib/ are modules that playbooks load with
-- require "name". The signals of every playbook are compiled with the built-in signatures into
-- one fm.analyze set per generation (M.signature_set()); a pattern that does not compile fails
-- the load like any other playbook error.
local sandbox = require "fm.sandbox"

local M = {}

local function errinfo(file, msg)
  msg = tostring(msg)
  local f, line = msg:match("([%w_%-%./]+%.lua):(%d+):")
  return { file = f or file, line = tonumber(line), message = msg }
end

local function check_string(def, key, min, max)
  local v = rawget(def, key)
  if type(v) ~= "string" then
    return string.format("field '%s' must be a string (got %s)", key, type(v))
  end
  if #v < min or #v > max or not v:find("%S") then
    return string.format("field '%s' must be %d to %d characters and not blank", key, min, max)
  end
end

M.CATEGORIES = { "code", "config", "environment", "network", "data", "database", "hardware",
                 "security", "external", "human", "other" }
M.SEVERITIES = { "critical", "error", "warning", "info" }
M.MAX_TAGS, M.MAX_SIGNALS, M.MAX_STEPS = 20, 20, 20
M.MAX_PATTERN = 1000

local function one_of(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- The array part of an untrusted table, read raw: nil, message when t is not a table whose keys
-- are exactly 1..n (n <= max).
local function raw_array(t, field, min, max)
  if type(t) ~= "table" then
    return nil, string.format("field '%s' must be a list (got %s)", field, type(t))
  end
  local n, count = rawlen(t), 0
  for k in next, t do
    count = count + 1
    if math.type(k) ~= "integer" or k < 1 or k > n then
      return nil, string.format("field '%s' must be a list (it has the key %s)", field,
        type(k) == "string" and ("'" .. k:sub(1, 40) .. "'") or type(k))
    end
  end
  if count ~= n then return nil, string.format("field '%s' must be a list without holes", field) end
  if n < min or n > max then
    return nil, string.format("field '%s' must have %d to %d entries (got %d)", field, min, max, n)
  end
  return n
end

-- label: how the message names the field ("field 'kb'").
local function opt_string(t, key, label, max)
  local v = rawget(t, key)
  if v == nil then return nil end
  if type(v) ~= "string" then
    return string.format("%s must be a string (got %s)", label, type(v))
  end
  if #v > max or not v:find("%S") then
    return string.format("%s must be 1 to %d characters and not blank", label, max)
  end
end

local function check_tags(def)
  local tags = rawget(def, "tags")
  local n, err = raw_array(tags, "tags", 1, M.MAX_TAGS)
  if not n then return err end
  for i = 1, n do
    local tag = rawget(tags, i)
    if type(tag) ~= "string" or #tag > 40 or not tag:match("^[a-z0-9][a-z0-9_%-]*$") then
      return string.format("field 'tags[%d]' must be a lower-case word of letters, digits, '_' "
        .. "and '-', at most 40 characters (got %s)", i,
        type(tag) == "string" and ("'" .. tag:sub(1, 60) .. "'") or type(tag))
    end
  end
end

local function check_signal(s, i)
  local f = "signals[" .. i .. "]"
  if type(s) ~= "table" then
    return string.format("field '%s' must be a table {name, pattern, ...} (got %s)", f, type(s))
  end
  local name = rawget(s, "name")
  if type(name) ~= "string" or #name > 64 or not name:match("^[a-z][a-z0-9_]*$") then
    return string.format("field '%s.name' must be lower-case letters, digits and '_', starting "
      .. "with a letter, at most 64 characters (got %s)", f,
      type(name) == "string" and ("'" .. name:sub(1, 80) .. "'") or type(name))
  end
  f = string.format("signals[%d] '%s'", i, name)
  local pattern = rawget(s, "pattern")
  if type(pattern) ~= "string" or pattern == "" or #pattern > M.MAX_PATTERN
      or pattern:find("\0", 1, true) then
    return string.format("%s: field 'pattern' must be a string of 1 to %d bytes without NUL "
      .. "(got %s)", f, M.MAX_PATTERN, type(pattern))
  end
  local flags = rawget(s, "flags")
  if flags ~= nil and (type(flags) ~= "string" or not flags:match("^[ism]*$")
      or flags:find("(.).*%1")) then
    return string.format("%s: field 'flags' must be a string of the letters i, s and m, each "
      .. "at most once (got %s)", f,
      type(flags) == "string" and ("'" .. flags:sub(1, 20) .. "'") or type(flags))
  end
  local sev = rawget(s, "severity")
  if sev ~= nil and not one_of(M.SEVERITIES, sev) then
    return string.format("%s: field 'severity' must be one of %s (got %s)", f,
      table.concat(M.SEVERITIES, ", "),
      type(sev) == "string" and ("'" .. sev:sub(1, 20) .. "'") or type(sev))
  end
  return opt_string(s, "description", f .. ": field 'description'", 500)
end

local function check_signals(def)
  local signals = rawget(def, "signals")
  if signals == nil then return end
  local n, err = raw_array(signals, "signals", 0, M.MAX_SIGNALS)
  if not n then return err end
  local seen = {}
  for i = 1, n do
    local s = rawget(signals, i)
    err = check_signal(s, i)
    if err then return err end
    local name = rawget(s, "name")
    if seen[name] then
      return string.format("signal '%s' is defined twice (signals[%d] and signals[%d])", name,
        seen[name], i)
    end
    seen[name] = i
  end
end

local function check_steps(def)
  local steps = rawget(def, "steps")
  local n, err = raw_array(steps, "steps", 1, M.MAX_STEPS)
  if not n then return err end
  local seen = {}
  for i = 1, n do
    local st = rawget(steps, i)
    if type(st) ~= "table" then
      return string.format("field 'steps[%d]' must be a table {name = ..., run = function} "
        .. "(got %s)", i, type(st))
    end
    local name = rawget(st, "name")
    if type(name) ~= "string" or #name > 64 or not name:match("^[%w][%w_%-%. ]*$") then
      return string.format("field 'steps[%d].name' must be a name of letters, digits, '_', '-',"
        .. " '.' and spaces, at most 64 characters (got %s)", i,
        type(name) == "string" and ("'" .. name:sub(1, 80) .. "'") or type(name))
    end
    if seen[name] then
      return string.format("step name '%s' is used twice (steps[%d] and steps[%d])", name,
        seen[name], i)
    end
    seen[name] = i
    if type(rawget(st, "run")) ~= "function" then
      return string.format("field 'steps[%d].run' (step '%s') must be a function (got %s)", i,
        name, type(rawget(st, "run")))
    end
  end
end

--- Validates a playbook definition (raw access only: the table came from untrusted code).
-- Returns nil or a message naming the field.
function M.validate(def)
  if type(def) ~= "table" then
    return "a playbook file must return a table (got " .. type(def) .. ")"
  end
  local err = check_string(def, "id", 1, 64) or check_string(def, "title", 1, 200)
    or check_string(def, "version", 1, 64) or check_string(def, "description", 1, 4000)
  if err then return err end
  if not rawget(def, "id"):match("^[a-z0-9][a-z0-9_.%-]*$") then
    return "field 'id' must use lower-case letters, digits, '.', '_' and '-' (got '"
      .. rawget(def, "id") .. "')"
  end
  local v = rawget(def, "version")
  if not (v:match("^%d+%.%d+%.%d+$") or v:match("^%d+%.%d+%.%d+[%-+][%w%.%-+]+$")) then
    return "field 'version' must be a semantic version such as 1.0.0 (got '" .. v .. "')"
  end
  err = check_tags(def)
  if err then return err end
  local cat = rawget(def, "category")
  if not one_of(M.CATEGORIES, cat) then
    return string.format("field 'category' must be one of %s (got %s)",
      table.concat(M.CATEGORIES, ", "),
      type(cat) == "string" and ("'" .. cat:sub(1, 40) .. "'") or type(cat))
  end
  err = opt_string(def, "kb", "field 'kb'", 200) or check_signals(def)
  if err then return err end
  if type(rawget(def, "match")) ~= "function" then
    return "field 'match' must be a function(ctx) returning a score 0..1 and reasons (got "
      .. type(rawget(def, "match")) .. ")"
  end
  return check_steps(def)
end

local function is_playbook_file(path)
  return path:match("^playbooks/.+%.lua$") and not path:match("^playbooks/lib/")
end

-- fm.analyze, or nil, why (a generation loads without it: then no signature set).
local function analyzer()
  local ok, mod = pcall(require, "fm.analyze")
  if ok and type(mod) == "table" then return mod end
  return nil, "fm.analyze is not available: " .. tostring(mod)
end

-- Copies of a definition's tags and signals (plain host tables, read raw).
local function copy_list(t)
  local out = {}
  if type(t) == "table" then for i = 1, rawlen(t) do out[i] = rawget(t, i) end end
  return out
end

local function copy_signals(def, p)
  local out = {}
  for i, s in ipairs(copy_list(rawget(def, "signals"))) do
    out[i] = { name = rawget(s, "name"), pattern = rawget(s, "pattern"),
               flags = rawget(s, "flags"), severity = rawget(s, "severity") or "warning",
               description = rawget(s, "description"), playbook = p.id, file = p.file }
  end
  return out
end

-- Signal names across playbooks: never a built-in's, never two playbooks'. Returns nil or the
-- message for playbook p.
local function check_signal_names(p, builtin, owners)
  for _, s in ipairs(p.signals) do
    if builtin[s.name] then
      return string.format("%s: signal '%s' has the name of a built-in signature (see "
        .. "fm.analyze.builtin_signatures())", p.file, s.name)
    end
    local other = owners[s.name]
    if other then
      return string.format("%s: duplicate signal name '%s' (first defined in %s)", p.file, s.name,
        other.file)
    end
  end
  for _, s in ipairs(p.signals) do owners[s.name] = p end
end

local function signal_specs(list)
  local out = {}
  for _, p in ipairs(list) do
    for _, s in ipairs(p.signals) do
      out[#out + 1] = { name = s.name, pattern = s.pattern, flags = s.flags,
                        severity = s.severity, description = s.description }
    end
  end
  return out
end

local function drop(reg, p)
  reg.by_id[p.id] = nil
  for i, q in ipairs(reg.list) do
    if q == p then table.remove(reg.list, i) break end
  end
end

-- Compiles the signals of every loaded playbook (with the built-ins) into one set. A playbook
-- whose pattern does not compile becomes a load error (file and signal named) and leaves the
-- registry; when Hyperscan cannot run here, reg.signature_error says why and nothing fails.
local function compile_signals(reg, analyze)
  for _ = 1, #reg.list + 1 do
    local specs = signal_specs(reg.list)
    local set, msg, code = analyze.signatures(specs)
    if set then
      reg.signature_set = set
      return
    end
    if code ~= "INVALID" then
      reg.signature_error = "playbook signals are not scanned: " .. tostring(msg)
      return
    end
    -- Which playbook: the message names the signal; else try each playbook on its own.
    local name = tostring(msg):match("^signature '([^']+)'")
    local culprit
    for _, p in ipairs(reg.list) do
      for _, s in ipairs(p.signals) do
        if s.name == name then culprit = p end
      end
    end
    if culprit then
      reg.errors[#reg.errors + 1] = { file = culprit.file, id = culprit.id,
        message = string.format("%s: signal '%s' does not compile: %s", culprit.file, name,
          (tostring(msg):gsub("^signature '[^']+': ", ""))) }
      drop(reg, culprit)
    else
      local bad = {}
      for _, p in ipairs(reg.list) do
        if #p.signals > 0 then
          local ok, m2 = analyze.signatures(signal_specs({ p }))
          if not ok then
            bad[#bad + 1] = p
            reg.errors[#reg.errors + 1] = { file = p.file, id = p.id, message = string.format(
              "%s: signals do not compile: %s", p.file, tostring(m2)) }
          end
        end
      end
      for _, p in ipairs(bad) do drop(reg, p) end
      if #bad == 0 then
        reg.signature_error = "playbook signals are not scanned: " .. tostring(msg)
        return
      end
    end
  end
end

--- Loads every playbook. opts (all optional): list(prefix) and read(path) for the sources
-- (default fm.source: the generation's snapshot), instructions and memory per file (default
-- the FM_PLAYBOOK_* settings), signatures = false to skip compiling the signals.
-- Returns {list = {...sorted by id}, by_id = {}, errors = {{file, line, message, id?}, ...},
-- signals = {...}, signature_set = set | nil, signature_error = message | nil}. An entry:
-- {id, title, version, description, tags, category, kb, signals, file, definition (the table
-- the file returned: match, steps ...), box (its sandbox: run match and steps in it)}.
function M.load_all(opts)
  opts = opts or {}
  local source = require "fm.source"
  local list_fn, read_fn = opts.list or source.list, opts.read or source.read
  local instructions, memory = opts.instructions, opts.memory
  if not instructions or not memory then
    local settings = require "fm.settings"
    instructions = instructions or settings.playbook_instruction_limit
    memory = memory or settings.playbook_memory_mb * 1024 * 1024
  end
  local analyze, why = analyzer()
  local builtin = {}
  if analyze then
    for _, b in ipairs(analyze.builtin_signatures()) do builtin[b.name] = true end
  end
  local owners = {}
  local reg = { list = {}, by_id = {}, errors = {} }
  for _, path in ipairs(list_fn("playbooks/")) do
    if is_playbook_file(path) then
      local box = sandbox.new { name = "playbook '" .. path .. "'", instructions = instructions,
                                memory = memory, source = read_fn }
      local text, rerr = read_fn(path)
      local fn, lerr
      if text then fn, lerr = box:load(text, path) else lerr = rerr end
      if not fn then
        reg.errors[#reg.errors + 1] = errinfo(path, lerr)
      else
        local ok, def, msg = box:run(fn)
        if not ok then
          reg.errors[#reg.errors + 1] = errinfo(path, msg)
        else
          local verr = M.validate(def)
          if verr then
            local id = type(def) == "table" and rawget(def, "id") or nil
            reg.errors[#reg.errors + 1] = { file = path, message = path .. ": " .. verr,
                                            id = type(id) == "string" and id or nil }
          else
            local id = rawget(def, "id")
            local first = reg.by_id[id]
            if first then
              reg.errors[#reg.errors + 1] = { file = path, message = string.format(
                "%s: duplicate playbook id '%s' (first defined in %s)", path, id, first.file) }
            else
              local p = { id = id, title = rawget(def, "title"), version = rawget(def, "version"),
                          description = rawget(def, "description"),
                          tags = copy_list(rawget(def, "tags")),
                          category = rawget(def, "category"), kb = rawget(def, "kb"),
                          file = path, definition = def, box = box, text = text,
                          read = read_fn, limits = { instructions = instructions,
                                                     memory = memory } }
              p.signals = copy_signals(def, p)
              local serr = check_signal_names(p, builtin, owners)
              if serr then
                reg.errors[#reg.errors + 1] = { file = path, message = serr, id = id }
              else
                reg.by_id[id] = p
                reg.list[#reg.list + 1] = p
              end
            end
          end
        end
      end
    end
  end
  table.sort(reg.list, function(a, b) return a.id < b.id end)
  if opts.signatures ~= false then
    if analyze then compile_signals(reg, analyze)
    else reg.signature_error = "playbook signals are not scanned: " .. why end
  end
  reg.signals = {}
  for _, p in ipairs(reg.list) do
    for _, s in ipairs(p.signals) do reg.signals[#reg.signals + 1] = s end
  end
  return reg
end

--- A fresh instance of a loaded playbook: its file run again in a new box, so that nothing a
-- run leaves in the playbook's globals or upvalues (memory, or one case's words) reaches the
-- next run, which may be another user's case. Returns definition, box or nil, kind, message.
function M.instantiate(p)
  local box = sandbox.new { name = "playbook '" .. p.file .. "'", source = p.read,
                            instructions = p.limits.instructions, memory = p.limits.memory }
  local fn, err = box:load(p.text, p.file)
  if not fn then return nil, "error", err end
  local ok, def, msg = box:run(fn)
  if not ok then return nil, def, msg end
  if type(def) ~= "table" then
    return nil, "output", p.file .. " returned " .. type(def) .. " this time"
  end
  return def, box
end

-- The registry of this VM's generation, loaded on first use.
local registry
function M.registry()
  if not registry then registry = M.load_all() end
  return registry
end

--- The fm.analyze signature set of this generation: the built-ins and every loaded playbook's
-- signals, compiled once (fm.analyze shares compiled sets process-wide). Returns the set, or
-- nil, message when it cannot be built (fm.analyze missing, Hyperscan needs x86-64 SSSE3).
-- reg: another registry (a load_all result) instead of the generation's.
function M.signature_set(reg)
  reg = reg or M.registry()
  if reg.signature_set then return reg.signature_set end
  return nil, reg.signature_error or "playbook signals are not compiled"
end

--- The signals of every loaded playbook: {{name, pattern, flags, severity, description,
-- playbook, file}, ...}, in playbook id order (of reg, default the generation's registry).
function M.signals(reg)
  return (reg or M.registry()).signals
end

return M
