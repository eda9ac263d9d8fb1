-- fm.selfcheck: the check a new Lua generation must pass before it is published (engine/reload.c
-- runs it in a fresh VM loaded from the generation's snapshot):
--   * config.lua loads and every setting validates (fm.settings);
--   * the application loads and every route resolves to a function (fm.app);
--   * every playbook loads in the sandbox and passes validation (fm.playbooks).
-- run() -> report JSON | nil, {file, line, message}. The report tells C the routes (body limits),
-- the playbooks, the settings and which settings need a restart.
local M = {}

-- "lua/fm/x.lua:12: msg" anywhere in a message (require wraps load errors in its own text).
local function locate(msg)
  msg = tostring(msg)
  local text = msg:match("^(.-)\nstack traceback:") or msg
  local file, line = text:match("([%w_%-%./]+%.lua):(%d+):")
  return { file = file, line = tonumber(line), message = text }
end

local function check()
  local settings = require "fm.settings"
  local app = require "fm.app"
  for _, r in ipairs(app.router.routes) do
    if type(r.handler) ~= "function" then
      error(string.format("route %s %s: handler is a %s, not a function", r.method, r.pattern,
        type(r.handler)), 0)
    end
  end
  local playbooks = require "fm.playbooks"
  local registry = playbooks.load_all()
  if #registry.errors > 0 then
    local e = registry.errors[1]
    local more = #registry.errors > 1
      and string.format(" (and %d more playbook errors)", #registry.errors - 1) or ""
    return nil, { file = e.file, line = e.line, message = e.message .. more,
                  errors = registry.errors }
  end
  local plist = {}
  for _, p in ipairs(registry.list) do
    plist[#plist + 1] = { id = p.id, title = p.title, version = p.version,
                          description = p.description, file = p.file }
  end
  local s = {}
  for k, v in pairs(settings) do s[k] = v end
  return {
    routes = app.route_limits(),
    default_max_body = settings.max_body_bytes,
    playbooks = setmetatable(plist, require("fm.json").array_mt),
    restart_required = setmetatable(require("fm.settings.restart_required"),
      require("fm.json").array_mt),
    settings = s,
    config = require("config").describe(settings), -- what admin.config() shows
  }
end

function M.run()
  local ok, report, err = xpcall(check, function(e)
    if type(e) == "table" then return e end
    return locate(e)
  end)
  if not ok then
    if type(report) ~= "table" then report = locate(report) end
    return nil, report
  end
  if not report then return nil, err end
  return require("fm.json").encode(report)
end

return M
