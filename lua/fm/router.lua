-- fm.router: routes by method and path pattern.
--
--   local r = router.new()
--   r:get("/api/v1/cases/{case_id}", handler, { max_body = 1048576 })
--   local route, params = r:match("GET", "/api/v1/cases/case_1")
--
-- Patterns are split on "/"; a "{name}" segment matches one non-empty segment and is passed in
-- params.name. Literal routes win over patterns. HEAD matches GET routes.
local M = {}
M.__index = M

local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

function M.new()
  return setmetatable({ routes = {}, literal = {}, dynamic = {} }, M)
end

local function normalise(path)
  if #path > 1 and path:sub(-1) == "/" then path = path:gsub("/+$", "") end
  if path == "" then path = "/" end
  return path
end

-- "/a/b" -> {"a", "b"}; empty segments are kept ("/a//b" -> {"a", "", "b"}) so that they never
-- bind a parameter.
local function split(path)
  local segs, start = {}, 2
  while true do
    local i = path:find("/", start, true)
    if not i then
      segs[#segs + 1] = path:sub(start)
      return segs
    end
    segs[#segs + 1] = path:sub(start, i - 1)
    start = i + 1
  end
end

--- Adds a route. opts.max_body: bytes this route accepts (else the engine default).
function M:add(method, pattern, handler, opts)
  if type(method) ~= "string" or not method:match("^[A-Z]+$") then
    error("router: method must be an upper-case HTTP method", 2)
  end
  if type(pattern) ~= "string" or pattern:sub(1, 1) ~= "/" then
    error("router: pattern must start with /", 2)
  end
  if type(handler) ~= "function" then
    error("router: handler for " .. method .. " " .. pattern .. " must be a function", 2)
  end
  opts = opts or {}
  if opts.max_body ~= nil and (math.type(opts.max_body) ~= "integer" or opts.max_body < 0) then
    error("router: max_body must be a non-negative integer", 2)
  end
  pattern = normalise(pattern)
  local segs, params, literal = split(pattern), {}, true
  for i, seg in ipairs(segs) do
    local name = seg:match("^{([%w_]+)}$")
    if name then
      params[i] = name
      literal = false
    elseif seg:find("[{}]") or (seg == "" and pattern ~= "/") then
      error("router: bad segment '" .. seg .. "' in " .. pattern, 2)
    end
  end
  local route = { method = method, pattern = pattern, handler = handler, segs = segs,
                  params = params, max_body = opts.max_body, opts = opts }
  for _, r in ipairs(self.routes) do
    if r.method == method and r.pattern == pattern then
      error("router: duplicate route " .. method .. " " .. pattern, 2)
    end
  end
  self.routes[#self.routes + 1] = route
  if literal then
    self.literal[pattern] = self.literal[pattern] or {}
    self.literal[pattern][method] = route
  else
    self.dynamic[#self.dynamic + 1] = route
  end
  return route
end

for _, m in ipairs(METHODS) do
  M[m:lower()] = function(self, pattern, handler, opts)
    return self:add(m, pattern, handler, opts)
  end
end

local function match_segs(route, segs)
  if #route.segs ~= #segs then return nil end
  local params = {}
  for i, seg in ipairs(route.segs) do
    local name = route.params[i]
    if name then
      if segs[i] == "" then return nil end
      params[name] = segs[i]
    elseif seg ~= segs[i] then
      return nil
    end
  end
  return params
end

--- Finds the route for method and path.
-- Returns route, params; or nil, allowed (a sorted list of methods when the path exists under
-- other methods, else nil).
function M:match(method, path)
  path = normalise(path)
  local want = method == "HEAD" and "GET" or method
  local by_method = self.literal[path]
  if by_method and by_method[want] then return by_method[want], {} end
  local allowed = {}
  if by_method then for m in pairs(by_method) do allowed[m] = true end end
  local segs
  for _, route in ipairs(self.dynamic) do
    segs = segs or split(path)
    local params = match_segs(route, segs)
    if params then
      if route.method == want then return route, params end
      allowed[route.method] = true
    end
  end
  if next(allowed) == nil then return nil, nil end
  if allowed.GET then allowed.HEAD = true end
  allowed.OPTIONS = true
  local list = {}
  for m in pairs(allowed) do list[#list + 1] = m end
  table.sort(list)
  return nil, list
end

--- The route table C needs before Lua runs: {method, pattern, max_body} per route.
function M:limits(default_max)
  local out = {}
  for _, r in ipairs(self.routes) do
    out[#out + 1] = { method = r.method, pattern = r.pattern, max_body = r.max_body or default_max }
  end
  return out
end

return M
