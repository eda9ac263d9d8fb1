-- fm.pretty: Lua values as readable text, for the admin REPL (`faultmaven repl`).
--
--   pretty.format(v [, opts]) -> string
--
-- Tables are shown nested, with array items first and then the other keys sorted (numbers, then
-- strings, then the rest); strings inside tables are quoted; a table that contains itself on the
-- current path is shown as <cycle>. Output is bounded: at most opts.depth levels (default 6),
-- opts.items entries per table (default 100), opts.total entries overall (default 2000) and
-- opts.string bytes per string (default 2000); what is cut is said so. Tables are read with
-- rawget/next: no __index or __pairs code runs. A table with __tostring shows what it returns.
local M = {}

M.defaults = { depth = 6, items = 100, total = 2000, string = 2000, width = 96 }

local type, tostring, next, rawget, pcall = type, tostring, next, rawget, pcall
local getmetatable, sort, concat = getmetatable, table.sort, table.concat
local fmt = string.format

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s, limit)
  local cut = ""
  if #s > limit then
    cut = fmt("...(%d bytes)", #s)
    s = s:sub(1, limit)
  end
  s = s:gsub('[%c"\\]', function(c) return escapes[c] or fmt("\\%03d", c:byte()) end)
  return '"' .. s .. '"' .. cut
end

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or repeat
  return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil and not keywords[k]
end

local type_rank = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return (type_rank[ta] or 4) < (type_rank[tb] or 4) or
      ((type_rank[ta] or 4) == (type_rank[tb] or 4) and ta < tb)
  end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return not a and b end
  return tostring(a) < tostring(b)
end

-- A table's __tostring text, or nil (errors in it are shown rather than raised).
local function tostring_meta(t)
  local mt = getmetatable(t)
  if type(mt) ~= "table" or rawget(mt, "__tostring") == nil then return nil end
  local ok, s = pcall(tostring, t)
  if ok and type(s) == "string" then return s end
  return "<__tostring failed: " .. tostring(s) .. ">"
end

local function scalar(v, o)
  local tv = type(v)
  if tv == "string" then return quote(v, o.string) end
  if tv == "table" then return nil end
  return tostring(v)
end

local render

-- lead: columns before the value on its line (its key), so a one-line table fits the width.
local function render_table(t, o, depth, indent, path, budget, lead)
  local custom = tostring_meta(t)
  if custom then return custom end
  if path[t] then return "<cycle: " .. tostring(t) .. ">" end
  if next(t) == nil then return "{}" end
  if depth >= o.depth then return "{...}" end
  path[t] = true

  -- the array part 1..n, then every other key, sorted
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local keys, nkeys = {}, 0
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      nkeys = nkeys + 1
      if nkeys <= o.items * 4 then keys[nkeys] = k end -- bounded sort work
    end
  end
  sort(keys, key_less)

  local parts, shown, total = {}, 0, n + nkeys
  local inner = indent .. "  "
  local function add(text)
    shown = shown + 1
    budget.left = budget.left - 1
    parts[#parts + 1] = text
  end
  for i = 1, n do
    if shown >= o.items or budget.left <= 0 then break end
    add(render(rawget(t, i), o, depth + 1, inner, path, budget, 0))
  end
  for _, k in ipairs(keys) do
    if shown >= o.items or budget.left <= 0 then break end
    local ks = is_identifier(k) and k or ("[" .. (scalar(k, o) or tostring(k)) .. "]")
    add(ks .. " = " .. render(rawget(t, k), o, depth + 1, inner, path, budget, #ks + 3))
  end
  if shown < total then parts[#parts + 1] = fmt("... (%d more)", total - shown) end
  path[t] = nil

  local one = "{ " .. concat(parts, ", ") .. " }"
  if #one + #indent + lead <= o.width and not one:find("\n", 1, true) then return one end
  return "{\n" .. inner .. concat(parts, ",\n" .. inner) .. "\n" .. indent .. "}"
end

render = function(v, o, depth, indent, path, budget, lead)
  if type(v) == "table" then return render_table(v, o, depth, indent, path, budget, lead) end
  return scalar(v, o)
end

--- The text of v. opts overrides M.defaults (depth, items, total, string, width).
function M.format(v, opts)
  local o = {}
  for k, d in pairs(M.defaults) do o[k] = (opts and opts[k]) or d end
  return render(v, o, 0, "", {}, { left = o.total }, 0)
end

--- Like format, but a top-level string is returned as is (the REPL prints it raw, like lua's).
function M.repl(v)
  if type(v) == "string" then return v end
  return M.format(v)
end

return M
