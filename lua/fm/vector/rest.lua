-- fm.vector.rest: what the HTTP-JSON vector drivers (fm.vector.qdrant, .pinecone, .chroma) share.
--
-- All I/O goes through fm.http (libcurl, timeouts, the provider's circuit breaker); this module
-- only shapes JSON and maps failures onto the driver error codes:
--   VECTOR_UNAVAILABLE   connect refused, timeout, 5xx, 429, circuit open
--   VECTOR_DIM_MISMATCH  a vector whose length is not the collection's dimension
--   VECTOR_INVALID       the service refused the request (400/422) or bad arguments
--   VECTOR_ERROR         anything else: 401/403, a malformed JSON answer, an unexpected shape
--
--   M.client{name=, base=, headers=, timeout=, breaker=} -> client
--   client:call(method, path, body [, expect]) -> doc, status | nil, message, code
--     body: a Lua value encoded as JSON (nil: no body); expect: {[status] = true} of non-2xx
--     statuses handed back as (doc, status) instead of failing (404 for "missing").
--   M.unpack_vec(s) -> JSON array of numbers; M.pack_vec(t) -> packed little-endian float32
--   M.dim(s) -> number of floats in a packed vector | nil
--   M.filter(f) -> canonical filter | nil (no filter) | false, message
--   M.check_items(items), M.check_ids(ids), M.check_name(c) -> true | nil, message, code
--   M.dedupe(items) -> items, one per id (the last wins)
local http = require "fm.http"
local json = require "fm.json"
local time = require "fm.time"

local M = {}

M.UNAVAILABLE = "VECTOR_UNAVAILABLE"
M.ERROR = "VECTOR_ERROR"
M.INVALID = "VECTOR_INVALID"
M.DIM_MISMATCH = "VECTOR_DIM_MISMATCH"

local array_mt = json.array_mt

-- An empty JSON array (fm.json encodes an empty plain table as an object).
function M.array(t) return json.array(t or {}) end

-- Packed little-endian float32 string -> a JSON array of numbers.
function M.unpack_vec(s)
  local n = #s // 4
  local out = {}
  -- in slices: string.unpack returns every value on the C stack
  local i, pos = 0, 1
  while i < n do
    local m = math.min(n - i, 256)
    local vals = table.pack(string.unpack("<" .. ("f"):rep(m), s, pos))
    for j = 1, m do out[i + j] = vals[j] end
    pos = vals[m + 1]
    i = i + m
  end
  return setmetatable(out, array_mt)
end

-- A list of numbers -> packed little-endian float32 string.
function M.pack_vec(t)
  local parts = {}
  for i = 1, #t, 256 do
    local m = math.min(#t - i + 1, 256)
    parts[#parts + 1] = string.pack("<" .. ("f"):rep(m), table.unpack(t, i, i + m - 1))
  end
  return table.concat(parts)
end

function M.dim(s)
  if type(s) ~= "string" or #s == 0 or #s % 4 ~= 0 then return nil end
  return #s // 4
end

function M.clamp(x)
  if x ~= x then return 0 end
  return x < 0 and 0 or x > 1 and 1 or x
end

-- Percent-encodes a path segment or query value.
function M.esc(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

function M.check_name(c)
  if type(c) ~= "string" or c == "" or #c > 255 then
    return nil, "collection: a name of 1 to 255 characters expected", M.INVALID
  end
  return true
end

local function scalar(v)
  local t = type(v)
  return t == "string" or t == "boolean" or (t == "number" and v == v and v ~= math.huge
    and v ~= -math.huge)
end

function M.check_ids(ids)
  if type(ids) ~= "table" then return nil, "ids: a list expected", M.INVALID end
  for i, id in ipairs(ids) do
    if type(id) ~= "string" or id == "" then
      return nil, ("ids[%d]: a non-empty string expected"):format(i), M.INVALID
    end
  end
  return true
end

-- reserved: the metadata key a driver may use for itself (qdrant keeps the original id in it)
function M.check_items(items, reserved)
  if type(items) ~= "table" then return nil, "items: a list expected", M.INVALID end
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.id) ~= "string" or it.id == "" then
      return nil, ("items[%d].id: a non-empty string expected"):format(i), M.INVALID
    end
    if not M.dim(it.vector) then
      return nil, ("items[%d].vector: a packed float32 string expected"):format(i), M.INVALID
    end
    if it.metadata ~= nil then
      if type(it.metadata) ~= "table" then
        return nil, ("items[%d].metadata: a table expected"):format(i), M.INVALID
      end
      for k, v in pairs(it.metadata) do
        if type(k) ~= "string" or k == "" or k == reserved or not scalar(v) then
          return nil, ("items[%d].metadata.%s: string keys (not %s) with string, number or "
            .. "boolean values expected"):format(i, tostring(k), reserved or "empty"), M.INVALID
        end
      end
    end
  end
  return true
end

-- The items with one entry per id, the last one winning (services refuse an id twice in one
-- request).
function M.dedupe(items)
  local last, out = {}, {}
  for i, it in ipairs(items) do last[it.id] = i end
  for i, it in ipairs(items) do
    if last[it.id] == i then out[#out + 1] = it end
  end
  return out
end

-- Filter: nil, or a list of alternatives (OR), each a table field = value | {values...} (AND).
-- Canonical form: a list of alternatives, each a list of {key =, values = {...}, list = bool}
-- sorted by key. nil when there is no filter, or an alternative matches everything ({}).
function M.filter(f)
  if f == nil then return nil end
  if type(f) ~= "table" then return false, "filter: a list of alternatives expected" end
  if #f == 0 and next(f) ~= nil then f = { f } end -- one alternative given bare
  if #f == 0 then return nil end
  local out = {}
  for i, alt in ipairs(f) do
    if type(alt) ~= "table" then
      return false, ("filter[%d]: a table field = value expected"):format(i)
    end
    local conds = {}
    for k, v in pairs(alt) do
      if type(k) ~= "string" or k == "" then
        return false, ("filter[%d]: field names must be non-empty strings"):format(i)
      end
      if type(v) == "table" then
        if #v == 0 then return false, ("filter[%d].%s: an empty list"):format(i, k) end
        for j = 1, #v do
          if not scalar(v[j]) then
            return false, ("filter[%d].%s[%d]: a string, number or boolean expected")
              :format(i, k, j)
          end
        end
        conds[#conds + 1] = { key = k, values = { table.unpack(v) }, list = true }
      elseif scalar(v) then
        conds[#conds + 1] = { key = k, values = { v }, list = false }
      else
        return false, ("filter[%d].%s: a string, number, boolean or list expected"):format(i, k)
      end
    end
    if #conds == 0 then return nil end
    table.sort(conds, function(a, b) return a.key < b.key end)
    out[#out + 1] = conds
  end
  return out
end

-- The kind every value of a list shares ("string", "integer", "float", "boolean") or nil.
function M.kind_of(values)
  local kind
  for _, v in ipairs(values) do
    local k = type(v) == "number" and (math.type(v) == "integer" and "integer" or "float")
      or type(v)
    if kind and k ~= kind then return nil end
    kind = k
  end
  return kind
end

--- The canonical filter (M.filter) in the MongoDB-like syntax Pinecone and Chroma share:
-- $eq for one value, $in for a list when in_ok(values) says the store takes it (else $or of
-- $eq), $and inside an alternative, $or between alternatives.
function M.mongo_filter(f, in_ok)
  local function condition(cond)
    if #cond.values == 1 then return { [cond.key] = { ["$eq"] = cond.values[1] } } end
    if in_ok(cond.values) then
      return { [cond.key] = { ["$in"] = M.array({ table.unpack(cond.values) }) } }
    end
    local alts = {}
    for _, v in ipairs(cond.values) do alts[#alts + 1] = { [cond.key] = { ["$eq"] = v } } end
    return { ["$or"] = M.array(alts) }
  end
  local alts = {}
  for _, conds in ipairs(f) do
    local all = {}
    for _, cond in ipairs(conds) do all[#all + 1] = condition(cond) end
    alts[#alts + 1] = #all == 1 and all[1] or { ["$and"] = M.array(all) }
  end
  if #alts == 1 then return alts[1] end
  return { ["$or"] = M.array(alts) }
end

function M.check_k(k)
  if math.type(k) ~= "integer" or k < 1 then return nil, "k: a positive integer expected" end
  return true
end

-- --------------------------------------------------------------------------------------------
-- The client

local Client = {}
Client.__index = Client

function M.client(o)
  local headers = { ["Content-Type"] = "application/json", Accept = "application/json" }
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  return setmetatable({ name = o.name, base = o.base:gsub("/+$", ""), headers = headers,
    timeout = o.timeout or 10, breaker = o.breaker == nil and o.name or o.breaker,
    errmsg = o.errmsg }, Client)
end

-- The service's own words from an error body, else the body's first 200 bytes.
local function error_text(doc, body)
  if type(doc) == "table" then
    local st = doc.status
    if type(st) == "table" and type(st.error) == "string" then return st.error end
    if type(doc.message) == "string" then return doc.message end
    if type(doc.error) == "string" then return doc.error end
    if type(doc.detail) == "string" then return doc.detail end
  end
  return (body or ""):sub(1, 200)
end

function Client:call(method, path, body, expect)
  local text
  if body ~= nil then
    local ok, s = pcall(json.encode, body)
    if not ok then return nil, self.name .. ": " .. tostring(s), M.INVALID end
    text = s
  end
  local url = path:find("^https?://") and path or self.base .. path
  local okr, res, err, code = pcall(http.request, { method = method, url = url,
    headers = self.headers, body = text, timeout = self.timeout,
    connect_timeout = math.min(self.timeout, 10), breaker = self.breaker })
  if not okr then -- fm.http raises on a URL it cannot use
    return nil, ("%s: %s"):format(self.name, tostring(res)), M.INVALID
  end
  if not res then
    if code == "too_large" then return nil, self.name .. ": " .. err, M.ERROR end
    return nil, ("%s: %s"):format(self.name, err), M.UNAVAILABLE
  end
  local st = res.status
  local doc, derr
  if res.body ~= "" then doc, derr = json.decode(res.body) end
  if st >= 500 or st == 429 or st == 408 then
    return nil, ("%s: HTTP %d: %s"):format(self.name, st, error_text(doc, res.body)),
      M.UNAVAILABLE
  end
  if (st >= 200 and st < 300) or (expect and expect[st]) then
    if res.body ~= "" and doc == nil then
      return nil, ("%s: malformed JSON answer (HTTP %d): %s"):format(self.name, st, derr),
        M.ERROR
    end
    return doc, st
  end
  local msg = ("%s: HTTP %d: %s"):format(self.name, st, error_text(doc, res.body))
  if st == 400 or st == 422 then
    if msg:lower():find("dimension", 1, true) then return nil, msg, M.DIM_MISMATCH end
    return nil, msg, M.INVALID
  end
  return nil, msg, M.ERROR
end

-- Runs fn() and returns {latency_ms =} when it succeeds.
function M.timed(fn)
  local t0 = time.monotonic()
  local ok, err, code = fn()
  if not ok then return nil, err, code end
  return { latency_ms = math.floor((time.monotonic() - t0) * 1000 * 1000 + 0.5) / 1000 }
end

-- A failure of a decoded answer that does not have the documented shape.
function M.shape(name, what)
  return nil, ("%s: unexpected answer: %s"):format(name, what), M.ERROR
end

return M
