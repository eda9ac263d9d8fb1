-- fm.playbooks: the playbooks of this generation, loaded from playbooks/ in the sandbox.
--
-- File contract (docs/PLAYBOOKS.md): every playbooks/**/*.lua file outside playbooks/lib/ is one
-- playbook. It runs in a sandbox (fm.sandbox) and returns a table with at least
--   id          string: lower-case letters, digits, '.', '_', '-'; at most 64; unique
--   title       string: 1 to 200 characters
--   version     string: semantic version, "1.0.0" (a pre-release or build suffix is allowed)
--   description string: 1 to 4000 characters
-- Later issues add fields (symptoms, steps); unknown fields are kept for them. Files under
-- playbooks/lib/ are modules that playbooks load with require "name".
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

--- Validates a playbook definition (raw access only: the table came from untrusted code).
-- Returns nil or a message.
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
end

local function is_playbook_file(path)
  return path:match("^playbooks/.+%.lua$") and not path:match("^playbooks/lib/")
end

--- Loads every playbook. opts (all optional): list(prefix) and read(path) for the sources
-- (default fm.source: the generation's snapshot), instructions and memory per file (default
-- the FM_PLAYBOOK_* settings).
-- Returns {list = {...sorted by id}, by_id = {}, errors = {{file, line, message}, ...}}.
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
            reg.errors[#reg.errors + 1] = { file = path, message = path .. ": " .. verr }
          else
            local id = rawget(def, "id")
            local first = reg.by_id[id]
            if first then
              reg.errors[#reg.errors + 1] = { file = path, message = string.format(
                "%s: duplicate playbook id '%s' (first defined in %s)", path, id, first.file) }
            else
              local p = { id = id, title = rawget(def, "title"), version = rawget(def, "version"),
                          description = rawget(def, "description"), file = path,
                          definition = def, box = box }
              reg.by_id[id] = p
              reg.list[#reg.list + 1] = p
            end
          end
        end
      end
    end
  end
  table.sort(reg.list, function(a, b) return a.id < b.id end)
  return reg
end

-- The registry of this VM's generation, loaded on first use.
local registry
function M.registry()
  if not registry then registry = M.load_all() end
  return registry
end

return M
