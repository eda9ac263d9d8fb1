-- fm.app: the application a worker runs. The engine calls app.handle(req) for every request that
-- reaches Lua and gets back status, headers, body (a string) and the matched route pattern.
local json = require "fm.json"
local router_mod = require "fm.router"
local settings = require "fm.settings"

local M = {}

-- Built-in route modules, in order; FM_EXTRA_ROUTES adds more after them.
M.route_modules = { "fm.api.root", "fm.api.health", "fm.api.meta", "fm.api.metrics",
                    "fm.api.auth", "fm.api.cases", "fm.api.turns", "fm.api.sessions",
                    "fm.api.knowledge", "fm.api.knowledge_search" }

require "fm.services.database" -- registers the "database" component of /health
require "fm.services.kv" -- registers the "kv" component of /health

local router = router_mod.new()
for _, name in ipairs(M.route_modules) do require(name)(router) end
for _, name in ipairs(settings.extra_routes) do
  local ok, mod = pcall(require, name)
  if not ok then error("FM_EXTRA_ROUTES: cannot load " .. name .. ": " .. tostring(mod), 0) end
  if type(mod) ~= "function" then
    error("FM_EXTRA_ROUTES: " .. name .. " must return function(router)", 0)
  end
  mod(router)
end
M.router = router

-- Middleware, outermost first: CORS headers go on every answer, errors included.
-- (The request id is taken or generated in C, before Lua, so that answers C gives itself, such
-- as 413 or 431, carry it too; req.id holds it and C echoes it as X-Request-Id.)
local chain_order = {
  (require "fm.middleware.cors"),
  (require "fm.middleware.errors"),
  (require "fm.middleware.ratelimit"),
  (require "fm.middleware.json_body"),
}

local function dispatch(req)
  local route, params = req.route, req.params
  if not route then
    local allowed = params
    if allowed then
      local allow = table.concat(allowed, ", ")
      if req.method == "OPTIONS" then return 204, nil, { Allow = allow } end
      return 405, { detail = "method not allowed" }, { Allow = allow }
    end
    return 404, { detail = "not found" }
  end
  return route.handler(req)
end

local chain = dispatch
for i = #chain_order, 1, -1 do
  local mw, nxt = chain_order[i], chain
  chain = function(req) return mw(req, nxt) end
end

-- A streamed body: a userdata of fm.storage.response (its metatable is locked to this name).
local function is_stream(v)
  return type(v) == "userdata" and getmetatable(v) == "fm.response.stream"
end

local function has_header(h, lname)
  for k in pairs(h) do if k:lower() == lname then return true end end
  return false
end

--- Entry point from C: req {method, path, headers, query, body?, form?, id, remote_addr}.
-- Returns status, headers, body string, route pattern.
function M.handle(req)
  local route, params = router:match(req.method, req.path)
  req.route, req.params = route, params
  local status, body, headers = chain(req)
  -- streams opened during the request but not returned (an error came after storage.response)
  -- are closed now rather than at the next garbage collection
  local storage = package.loaded["fm.storage"]
  if storage then storage.release_streams(is_stream(body) and body or nil) end
  headers = headers or {}
  local out = ""
  if type(body) == "table" then
    out = json.encode(body)
    if not has_header(headers, "content-type") then headers["Content-Type"] = "application/json" end
  elseif type(body) == "string" then
    out = body
    if not has_header(headers, "content-type") then
      headers["Content-Type"] = "text/plain; charset=utf-8"
    end
  elseif is_stream(body) then
    out = body -- fm.storage.response: the engine streams it
    for k, v in pairs(body:headers()) do -- Content-Type, Content-Disposition unless set here
      if not has_header(headers, k:lower()) then headers[k] = v end
    end
  elseif body ~= nil then
    error(string.format("handler for %s %s returned a %s body", req.method, req.path, type(body)))
  end
  return status, headers, out, route and route.pattern or "unmatched"
end

--- For C at start: body limits by route.
function M.route_limits()
  return router:limits(settings.max_body_bytes)
end

return M
