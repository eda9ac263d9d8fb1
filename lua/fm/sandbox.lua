-- fm.sandbox: runs untrusted Lua (playbooks) inside a worker's VM, in an allow-listed environment
-- with its own instruction budget and memory cap. The playbook engine runs playbook steps
-- through it; fm.playbooks loads playbook files through it.
--
--   local box = sandbox.new{ name = "playbook 'disk-full'", instructions = N, memory = BYTES,
--                            modules = source_reader }   -- see M.new
--   local fn, err = box:load(text, "playbooks/disk-full.lua")   -- text only, never bytecode
--   local ok, a, b = box:run(fn, ...)     -- ok=false: a is the kind, b the message
--
-- What code in the box can reach: the values listed in `allowed` below (copies of the library
-- tables, so changing `string.format` in one box changes nothing outside it), `require` of
-- modules under playbooks/lib/ (loaded from the generation's sources into the same box) and of
-- a few pure fm.* modules (copied), `print`/`log` into the engine log with the box's name.
-- Not reachable: io, os.execute/remove/rename/exit/getenv, debug, load of binary chunks or from
-- a reader function, string.dump (also removed from served VMs, since ("").dump would reach it),
-- package, collectgarbage control, the host's _G, the string metatable, fm.time.sleep.
local core = require "fm.sandbox_core"
local log = require "fm.log"

local M = {}

local function copy(t, keys)
  local out = {}
  if keys then for _, k in ipairs(keys) do out[k] = t[k] end
  else for k, v in pairs(t) do out[k] = v end end
  return out
end

-- Pure engine modules a box may require, and the functions it gets of each (copied: never the
-- module table, nor anything that leads to shared state such as fm.json's array metatable;
-- fm.time.sleep would block a worker beyond any instruction budget).
local safe_modules = {
  ["fm.json"] = { "encode", "decode", "array", "is_array", "null" },
  ["fm.time"] = { "now", "monotonic", "iso8601" },
}

local function valid_module_name(name)
  return type(name) == "string" and #name <= 128 and name:match("^[%a_][%w_]*$")
    or (type(name) == "string" and #name <= 128 and name:match("^[%a_][%w_]*%.[%w_%.]*[%w_]$")
        and not name:find("..", 1, true))
end

local Box = {}
Box.__index = Box

--- opts: name (for messages), instructions, memory (bytes), source (function(path) -> text|nil,
-- for require of playbooks/lib/ modules; default fm.source.read).
function M.new(opts)
  opts = opts or {}
  local box = setmetatable({
    name = opts.name or "sandbox",
    instructions = opts.instructions or 10000000,
    memory = opts.memory or (16 << 20),
    source = opts.source or require("fm.source").read,
    loaded = {},
  }, Box)
  box.env = box:_make_env()
  return box
end

function Box:_make_env()
  local env = copy(_G, {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
    "tostring", "type", "rawequal", "rawget", "rawset", "rawlen", "_VERSION",
  })
  env.string = copy(string)
  env.string.dump = nil
  env.table = copy(table)
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.coroutine = copy(coroutine)
  env.os = copy(os, { "clock", "date", "difftime", "time" })
  env._G = env

  -- The string metatable's __index is the host's string table: hide it.
  env.getmetatable = function(v)
    if type(v) == "string" then return nil end
    return getmetatable(v)
  end
  -- Finalizers run inside the collector with debug hooks off, so no budget could stop one:
  -- a metatable with __gc is refused.
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in " .. self.name, 2)
    end
    return setmetatable(t, mt)
  end
  env.collectgarbage = function(opt)
    if opt == nil or opt == "count" then return collectgarbage("count") end
    error("collectgarbage('" .. tostring(opt) .. "') is not allowed in " .. self.name, 2)
  end
  env.load = function(chunk, chunkname, mode, fenv)
    if mode ~= nil and mode ~= "t" then
      return nil, "only text chunks can be loaded in " .. self.name
    end
    if type(chunk) ~= "string" then -- a reader function runs inside load's own protected call
      return nil, "load takes a string in " .. self.name
    end
    if type(chunk) == "string" and chunk:byte(1) == 27 then
      return nil, "binary chunks cannot be loaded in " .. self.name
    end
    return load(chunk, chunkname, "t", fenv or env)
  end
  local function say(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    log.info(table.concat(parts, "\t", 1, parts.n), { sandbox = self.name })
  end
  env.print = say
  env.log = say
  env.require = function(name) return self:require(name) end
  return env
end

--- require inside the box: "lib.x" is playbooks/lib/x.lua; a few pure fm.* modules are copies.
function Box:require(name)
  if type(name) ~= "string" or not valid_module_name(name) then
    error("require: invalid module name " .. tostring(name) .. " in " .. self.name, 2)
  end
  if self.loaded[name] ~= nil then return self.loaded[name] end
  if safe_modules[name] then
    local m = copy((require(name)), safe_modules[name])
    self.loaded[name] = m
    return m
  end
  local path = "playbooks/lib/" .. name:gsub("%.", "/") .. ".lua"
  local text = self.source(path)
  if not text then
    error(string.format("require: module '%s' not found in %s (playbooks may require modules "
      .. "under playbooks/lib/ and %s only)", name, self.name, "fm.json, fm.time"), 2)
  end
  local fn, err = load(text, "@" .. path, "t", self.env)
  if not fn then error(err, 0) end
  local m = fn(name)
  if m == nil then m = true end
  self.loaded[name] = m
  return m
end

--- Compiles text in the box's environment. Returns fn or nil, message.
function Box:load(text, chunkname)
  if type(text) ~= "string" then return nil, self.name .. ": source must be a string" end
  if text:byte(1) == 27 then return nil, self.name .. ": binary chunks are not accepted" end
  return load(text, "@" .. (chunkname or self.name), "t", self.env)
end

--- Runs fn(...) under the box's limits. Returns true, results... or false, kind, message where
-- kind is "instructions", "memory" or "error" and message names the box.
function Box:run(fn, ...)
  local res = table.pack(core.run({ instructions = self.instructions, memory = self.memory },
    fn, ...))
  if res[1] then return table.unpack(res, 1, res.n) end
  local kind, msg = res[2], res[3]
  -- Never tostring() an error object from the box: its __tostring would run outside the limits.
  if type(msg) ~= "string" then msg = "(error object is a " .. type(msg) .. " value)" end
  return false, kind, string.format("%s: %s", self.name, msg)
end

return M
