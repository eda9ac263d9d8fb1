-- fm.vector.qdrant: the vector driver for a Qdrant server, over its REST API (fm.http).
--
--   require("fm.vector.qdrant").new(settings) -> driver
--   settings: qdrant_url (default http://localhost:6333), qdrant_api_key (sent as the `api-key`
--   header when not empty), vector_timeout_s (default 10), breaker (default "qdrant").
--
-- A collection is a Qdrant collection with one unnamed vector {size = dim, distance = "Cosine"}.
-- Point ids: Qdrant takes only unsigned integers and UUIDs, so an id "chk_<32 hex>" becomes the
-- UUID spelled by those 32 hex digits (8-4-4-4-12, lower case); any other id the UUID spelled by
-- the first 32 hex digits of its SHA-256. The original id is kept in the payload under `_fm_id`
-- (a reserved metadata key); the metadata are the rest of the payload, so filters name them.
-- Scores: Qdrant's Cosine score is the cosine similarity, mapped to (1 + cos) / 2; a collection
-- made elsewhere with Dot gives the same for unit vectors, with Euclid 1 - d^2 / 4.
-- ids() pages in Qdrant's point-id order; the cursor is the last id of the page.
--
-- Endpoints: GET/PUT/DELETE /collections/{c}, PUT /collections/{c}/points?wait=true,
-- POST /collections/{c}/points (retrieve), POST .../points/delete?wait=true, .../points/search,
-- .../points/count, .../points/scroll, GET .../points/{id}, GET /collections (ping).
local crypto = require "fm.crypto"
local json = require "fm.json"
local rest = require "fm.vector.rest"

local M = {}

local ID_KEY = "_fm_id"
local BATCH = 256

local D = {}
D.__index = D

function M.new(settings)
  settings = settings or {}
  local url = settings.qdrant_url
  if url == nil or url == "" then url = "http://localhost:6333" end
  local headers = {}
  if settings.qdrant_api_key and settings.qdrant_api_key ~= "" then
    headers["api-key"] = settings.qdrant_api_key
  end
  return setmetatable({ name = "qdrant", info = {},
    c = rest.client { name = "qdrant", base = url, headers = headers,
      timeout = settings.vector_timeout_s, breaker = settings.breaker or "qdrant" } }, D)
end

-- The Qdrant point id (a UUID) for a driver id.
function M.point_id(id)
  local h = id:match("^chk_(%x+)$")
  if not h or #h ~= 32 then h = crypto.hex(crypto.sha256(id)):sub(1, 32) end
  h = h:lower()
  return ("%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20),
    h:sub(21, 32))
end
local point_id = M.point_id

local function cpath(c, rest_of)
  return "/collections/" .. rest.esc(c) .. (rest_of or "")
end

-- {dim =, distance =} of a collection, cached; false when it does not exist.
local function get_info(self, c)
  local i = self.info[c]
  if i then return i end
  local doc, st, code = self.c:call("GET", cpath(c), nil, { [404] = true })
  if code then return nil, st, code end
  if st == 404 then return false end
  local r = type(doc) == "table" and doc.result
  local v = type(r) == "table" and type(r.config) == "table" and type(r.config.params) == "table"
    and r.config.params.vectors
  if type(v) ~= "table" or math.type(v.size) ~= "integer" then
    return rest.shape("qdrant", "collection " .. c .. " has no single unnamed vector")
  end
  i = { dim = v.size, distance = v.distance }
  self.info[c] = i
  return i
end

local function score(i, s)
  if type(s) ~= "number" then return 0 end
  if i.distance == "Euclid" then return rest.clamp(1 - s * s / 4) end
  if i.distance == "Manhattan" then return rest.clamp(1 / (1 + s)) end
  return rest.clamp((1 + s) / 2)
end

local function metadata_of(payload)
  local m = {}
  if type(payload) == "table" then
    for k, v in pairs(payload) do
      if k ~= ID_KEY and v ~= json.null then m[k] = v end
    end
  end
  return m
end

local function id_of(p)
  local pl = p.payload
  if type(pl) == "table" and type(pl[ID_KEY]) == "string" then return pl[ID_KEY] end
  return tostring(p.id)
end

function D:ensure(c, dim)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  if math.type(dim) ~= "integer" or dim < 1 then
    return nil, "dim: a positive integer expected", rest.INVALID
  end
  for _ = 1, 2 do
    local i, e, ecode = get_info(self, c)
    if i == nil then return nil, e, ecode end
    if i then
      if i.dim ~= dim then
        return nil, ("qdrant: collection %s has dimension %d, not %d"):format(c, i.dim, dim),
          rest.DIM_MISMATCH
      end
      return true
    end
    local _, st, scode = self.c:call("PUT", cpath(c),
      { vectors = { size = dim, distance = "Cosine" } }, { [409] = true })
    if scode then return nil, st, scode end
    if st ~= 409 then
      self.info[c] = { dim = dim, distance = "Cosine" }
      return true
    end
    -- 409: made by someone else meanwhile; look again
  end
  return nil, "qdrant: collection " .. c .. " could not be created", rest.ERROR
end

-- The collection's info for a write/read with vectors of dimension `dim` (nil: no check).
local function need(self, c, dim)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  local i, e, ecode = get_info(self, c)
  if i == nil then return nil, e, ecode end
  if i and dim and dim ~= i.dim then
    -- the cached dimension may be old: the collection made again elsewhere (a reindex)
    self.info[c] = nil
    i, e, ecode = get_info(self, c)
    if i == nil then return nil, e, ecode end
  end
  if not i then return false end
  if dim and dim ~= i.dim then
    return nil, ("qdrant: collection %s has dimension %d, a vector has %d"):format(c, i.dim, dim),
      rest.DIM_MISMATCH
  end
  return i
end

function D:upsert(c, items)
  local ok, err, code = rest.check_items(items, ID_KEY)
  if not ok then return nil, err, code end
  items = rest.dedupe(items)
  if #items == 0 then return 0 end
  for _, it in ipairs(items) do
    local i, e, ecode = need(self, c, rest.dim(it.vector))
    if i == nil then return nil, e, ecode end
    if not i then
      return nil, "qdrant: no collection " .. c .. " (ensure it first)", rest.INVALID
    end
  end
  for b = 1, #items, BATCH do
    local points = {}
    for j = b, math.min(b + BATCH - 1, #items) do
      local it = items[j]
      local payload = {}
      for k, v in pairs(it.metadata or {}) do payload[k] = v end
      payload[ID_KEY] = it.id
      points[#points + 1] = { id = point_id(it.id), vector = rest.unpack_vec(it.vector),
        payload = payload }
    end
    local _, e, ecode = self.c:call("PUT", cpath(c, "/points?wait=true"),
      { points = rest.array(points) })
    if ecode then return nil, e, ecode end
  end
  return #items
end

-- The UUIDs among `uuids` that exist.
local function existing(self, c, uuids)
  local doc, err, code = self.c:call("POST", cpath(c, "/points"),
    { ids = rest.array(uuids), with_payload = false, with_vector = false })
  if code then return nil, err, code end
  doc = type(doc) == "table" and doc or {}
  if type(doc.result) ~= "table" then return rest.shape("qdrant", "retrieve without result") end
  return #doc.result
end

function D:delete(c, ids)
  local ok, err, code = rest.check_ids(ids)
  if not ok then return nil, err, code end
  local i, e, ecode = need(self, c)
  if i == nil then return nil, e, ecode end
  if not i or #ids == 0 then return 0 end
  local n = 0
  for b = 1, #ids, BATCH do
    local uuids = {}
    for j = b, math.min(b + BATCH - 1, #ids) do uuids[#uuids + 1] = point_id(ids[j]) end
    local found, ferr, fcode = existing(self, c, uuids)
    if not found then return nil, ferr, fcode end
    if found > 0 then
      local _, derr, dcode = self.c:call("POST", cpath(c, "/points/delete?wait=true"),
        { points = rest.array(uuids) })
      if dcode then return nil, derr, dcode end
    end
    n = n + found
  end
  return n
end

-- One condition on a field: a value or a list of values (any of them).
local function condition(cond)
  local function one(v)
    if math.type(v) == "float" then return { key = cond.key, range = { gte = v, lte = v } } end
    return { key = cond.key, match = { value = v } }
  end
  if #cond.values == 1 then return one(cond.values[1]) end
  local kind = rest.kind_of(cond.values)
  if kind == "string" or kind == "integer" then
    return { key = cond.key, match = { any = rest.array({ table.unpack(cond.values) }) } }
  end
  local should = {}
  for _, v in ipairs(cond.values) do should[#should + 1] = one(v) end
  return { should = rest.array(should) }
end

-- The canonical filter (fm.vector.rest.filter) as a Qdrant filter.
function M.translate_filter(f)
  local alts = {}
  for _, conds in ipairs(f) do
    local must = {}
    for _, cond in ipairs(conds) do must[#must + 1] = condition(cond) end
    alts[#alts + 1] = { must = rest.array(must) }
  end
  if #alts == 1 then return alts[1] end
  return { should = rest.array(alts) }
end

function D:search(c, qvec, k, filter)
  local dim = rest.dim(qvec)
  if not dim then return nil, "qvec: a packed float32 string expected", rest.INVALID end
  local ok, err = rest.check_k(k)
  if not ok then return nil, err, rest.INVALID end
  local f, ferr = rest.filter(filter)
  if f == false then return nil, ferr, rest.INVALID end
  local i, e, ecode = need(self, c, dim)
  if i == nil then return nil, e, ecode end
  if not i then return {} end
  local body = { vector = rest.unpack_vec(qvec), limit = k, with_payload = true,
    with_vector = false }
  if f then body.filter = M.translate_filter(f) end
  local doc, serr, scode = self.c:call("POST", cpath(c, "/points/search"), body)
  if scode then return nil, serr, scode end
  doc = type(doc) == "table" and doc or {}
  if type(doc.result) ~= "table" then return rest.shape("qdrant", "search without result") end
  local out = {}
  for _, p in ipairs(doc.result) do
    out[#out + 1] = { id = id_of(p), score = score(i, p.score), metadata = metadata_of(p.payload) }
  end
  table.sort(out, function(a, b) return a.score > b.score end)
  return out
end

function D:count(c)
  local i, e, ecode = need(self, c)
  if i == nil then return nil, e, ecode end
  if not i then return 0 end
  local doc, err, code = self.c:call("POST", cpath(c, "/points/count"), { exact = true })
  if code then return nil, err, code end
  doc = type(doc) == "table" and doc or {}
  local n = type(doc.result) == "table" and doc.result.count
  if math.type(n) ~= "integer" then return rest.shape("qdrant", "count without result.count") end
  return n
end

function D:ids(c, after, limit)
  limit = limit or 100
  if math.type(limit) ~= "integer" or limit < 1 then
    return nil, "limit: a positive integer expected", rest.INVALID
  end
  if after ~= nil and (type(after) ~= "string" or after == "") then
    return nil, "after: a cursor (string) expected", rest.INVALID
  end
  local i, e, ecode = need(self, c)
  if i == nil then return nil, e, ecode end
  if not i then return {} end
  -- the offset is inclusive: ask for one more, and one more again to learn whether more follow
  local body = { limit = limit + (after and 2 or 1), with_payload = rest.array({ ID_KEY }),
    with_vector = false }
  local skip
  if after then
    skip = point_id(after)
    body.offset = skip
  end
  local doc, err, code = self.c:call("POST", cpath(c, "/points/scroll"), body)
  if code then return nil, err, code end
  doc = type(doc) == "table" and doc or {}
  local pts = type(doc.result) == "table" and doc.result.points
  if type(pts) ~= "table" then return rest.shape("qdrant", "scroll without result.points") end
  local out = {}
  local more = false
  for _, p in ipairs(pts) do
    if not (skip and p.id == skip and #out == 0) then
      if #out == limit then
        more = true
        break
      end
      out[#out + 1] = id_of(p)
    end
  end
  return out, more and out[#out] or nil
end

function D:get(c, id)
  if type(id) ~= "string" or id == "" then return nil, "id: a string expected", rest.INVALID end
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  local doc, st, gcode = self.c:call("GET", cpath(c, "/points/" .. point_id(id)), nil,
    { [404] = true })
  if gcode then return nil, st, gcode end
  if st == 404 then return nil end
  local p = type(doc) == "table" and doc.result
  if type(p) ~= "table" or type(p.vector) ~= "table" then
    return rest.shape("qdrant", "point without vector")
  end
  return { id = id_of(p), vector = rest.pack_vec(p.vector), metadata = metadata_of(p.payload) }
end

function D:drop(c)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  self.info[c] = nil
  local _, st, dcode = self.c:call("DELETE", cpath(c), nil, { [404] = true })
  if dcode then return nil, st, dcode end
  return true
end

function D:ping()
  return rest.timed(function()
    local _, err, code = self.c:call("GET", "/collections")
    if code then return nil, err, code end
    return true
  end)
end

return M
