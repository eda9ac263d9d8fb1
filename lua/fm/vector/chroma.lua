-- fm.vector.chroma: the vector driver for a Chroma server, over its HTTP API v2 (fm.http).
--
--   require("fm.vector.chroma").new(settings) -> driver
--   settings: chroma_host (default localhost; a URL http(s)://host[:port] is used as it is),
--   chroma_port (default 8000), chroma_tenant (default "default_tenant"), chroma_database
--   (default "default_database"), chroma_api_key (sent as `X-Chroma-Token` when not empty),
--   vector_timeout_s (default 10), breaker (default "chroma").
--
-- API v2 (Chroma 0.6 and 1.x; 1.x serves only v2), under
-- /api/v2/tenants/{tenant}/databases/{database}: GET|DELETE /collections/{name},
-- POST /collections (get_or_create), POST /collections/{id}/upsert|delete|query|get,
-- GET /collections/{id}/count; GET /api/v2/tenants/{tenant}/databases/{database} (ping). The
-- tenant and the database must exist.
-- A collection is created with metadata {"hnsw:space" = "cosine", fm_dim = dim}; its dimension is
-- Chroma's `dimension` (known once something was added), else fm_dim. Ids are used as they are.
-- Scores: Chroma answers distances; cosine distance d = 1 - cos maps to 1 - d / 2 = (1 + cos) / 2
-- ("ip" the same for unit vectors; "l2", squared, to 1 - d / 4).
-- Filters become a `where`: {"$or": [...]} between alternatives, {"$and": [...]} inside one
-- (Chroma wants at least two members in each, so a single one stands alone), a value as $eq, a
-- list as $in (mixed types: $or of $eq).
-- Upsert: Chroma merges a record's new metadata into its old one, so the driver reads the old
-- keys first and sends the ones the new metadata lacks as null (deleted): the record is replaced.
-- ids() pages with limit/offset in Chroma's order; the cursor is the offset of the next page.
local json = require "fm.json"
local rest = require "fm.vector.rest"

local M = {}

local BATCH = 256

local D = {}
D.__index = D

local function nonempty(s) return type(s) == "string" and s ~= "" and s or nil end

function M.new(settings)
  settings = settings or {}
  local host = nonempty(settings.chroma_host) or "localhost"
  local root
  if host:find("^https?://") then
    root = host
  else
    if host:find(":", 1, true) and not host:find("^%[") then host = "[" .. host .. "]" end
    root = ("http://%s:%d"):format(host, math.tointeger(tonumber(settings.chroma_port)) or 8000)
  end
  root = root:gsub("/+$", "")
  local headers = {}
  if nonempty(settings.chroma_api_key) then headers["X-Chroma-Token"] = settings.chroma_api_key end
  local tenant = nonempty(settings.chroma_tenant) or "default_tenant"
  local database = nonempty(settings.chroma_database) or "default_database"
  return setmetatable({ name = "chroma", cols = {}, root = root,
    prefix = ("/api/v2/tenants/%s/databases/%s"):format(rest.esc(tenant), rest.esc(database)),
    c = rest.client { name = "chroma", base = root, headers = headers,
      timeout = settings.vector_timeout_s, breaker = settings.breaker or "chroma" } }, D)
end

-- {id =, dim =, space =} from a Collection answer.
local function col_of(doc)
  if type(doc) ~= "table" or type(doc.id) ~= "string" then return nil end
  local md = type(doc.metadata) == "table" and doc.metadata or {}
  local dim = math.tointeger(doc.dimension) or math.tointeger(md.fm_dim)
  local space = md["hnsw:space"]
  local cfg = type(doc.configuration_json) == "table" and doc.configuration_json
    or type(doc.configuration) == "table" and doc.configuration
  if cfg then -- Chroma 1.x: the index's configuration (hnsw; spann on Chroma Cloud)
    for _, index in ipairs({ "hnsw", "spann" }) do
      if type(cfg[index]) == "table" and type(cfg[index].space) == "string" then
        space = cfg[index].space
      end
    end
  end
  return { id = doc.id, dim = dim, space = type(space) == "string" and space or "l2" }
end

-- A 404, or the "does not exist" some Chroma versions answer with 400 or 500 instead.
local function missing(st, msg)
  return st == 404 or (type(msg) == "string" and (msg:find("does not exist", 1, true) ~= nil
    or msg:find("HTTP 404", 1, true) ~= nil))
end

-- The collection (cached) | false when it does not exist | nil, message, code.
function D:_col(c)
  local col = self.cols[c]
  if col then return col end
  local doc, st, code = self.c:call("GET", self.prefix .. "/collections/" .. rest.esc(c), nil,
    { [404] = true })
  if code then
    if code ~= rest.UNAVAILABLE and missing(nil, st) then return false end
    return nil, st, code
  end
  if st == 404 then return false end
  col = col_of(doc)
  if not col then return rest.shape("chroma", "collection without id") end
  self.cols[c] = col
  return col
end

local function mismatch(c, have, dim)
  return nil, ("chroma: collection %s has dimension %d, not %d"):format(c, have, dim),
    rest.DIM_MISMATCH
end

function D:ensure(c, dim)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  if math.type(dim) ~= "integer" or dim < 1 then
    return nil, "dim: a positive integer expected", rest.INVALID
  end
  local col, cerr, ccode = self:_col(c)
  if col == nil then return nil, cerr, ccode end
  if not col then
    local doc, perr, pcode = self.c:call("POST", self.prefix .. "/collections",
      { name = c, metadata = { ["hnsw:space"] = "cosine", fm_dim = dim }, get_or_create = true })
    if pcode then return nil, perr, pcode end
    col = col_of(doc)
    if not col then return rest.shape("chroma", "collection without id") end
    self.cols[c] = col
  end
  if col.dim and col.dim ~= dim then return mismatch(c, col.dim, dim) end
  return true
end

-- The collection for an operation with vectors of dimension `dim` (nil: no check).
function D:_need(c, dim)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  local col, cerr, ccode = self:_col(c)
  if col == nil then return nil, cerr, ccode end
  if col and dim and col.dim and dim ~= col.dim then
    -- the cached dimension may be old: the collection made again elsewhere (a reindex)
    self.cols[c] = nil
    col, cerr, ccode = self:_col(c)
    if col == nil then return nil, cerr, ccode end
  end
  if not col then return false end
  if dim and col.dim and dim ~= col.dim then
    return nil, ("chroma: collection %s has dimension %d, a vector has %d"):format(c, col.dim,
      dim), rest.DIM_MISMATCH
  end
  return col
end

function D:_path(col, op)
  return self.prefix .. "/collections/" .. rest.esc(col.id) .. "/" .. op
end

-- A call on a collection. When the collection is gone (dropped, or made again with a new id
-- elsewhere) it is looked up again, and the call repeated once on a new one.
function D:_call(c, col, method, op, body)
  local doc, err, code = self.c:call(method, self:_path(col, op), body)
  if code and code ~= rest.UNAVAILABLE and missing(nil, err) then
    self.cols[c] = nil
    local fresh = self:_col(c)
    if fresh and fresh.id ~= col.id then
      for k, v in pairs(fresh) do col[k] = v end
      self.cols[c] = col
      return self.c:call(method, self:_path(fresh, op), body)
    end
  end
  return doc, err, code
end

local function metadata_of(m)
  local out = {}
  if type(m) == "table" then
    for k, v in pairs(m) do
      if type(v) ~= "userdata" then out[k] = v end
    end
  end
  return out
end

function D:upsert(c, items)
  local ok, err, code = rest.check_items(items)
  if not ok then return nil, err, code end
  items = rest.dedupe(items)
  if #items == 0 then return 0 end
  local col
  for _, it in ipairs(items) do
    local e, ecode
    col, e, ecode = self:_need(c, rest.dim(it.vector))
    if col == nil then return nil, e, ecode end
    if not col then
      return nil, "chroma: no collection " .. c .. " (ensure it first)", rest.INVALID
    end
  end
  for b = 1, #items, BATCH do
    local ids, embs, mds = {}, {}, {}
    for j = b, math.min(b + BATCH - 1, #items) do
      local it = items[j]
      ids[#ids + 1] = it.id
      embs[#embs + 1] = rest.unpack_vec(it.vector)
      local md = {}
      for k, v in pairs(it.metadata or {}) do md[k] = v end
      mds[#mds + 1] = md
    end
    -- Chroma's upsert merges metadata into a record's old one: name every old key the new
    -- metadata lacks with null (Chroma deletes it), so the record is replaced
    local old, gerr, gcode = self:_call(c, col, "POST", "get",
      { ids = rest.array(ids), include = rest.array({ "metadatas" }) })
    if gcode then return nil, gerr, gcode end
    local oids = type(old) == "table" and type(old.ids) == "table" and old.ids or {}
    local omds = type(old) == "table" and type(old.metadatas) == "table" and old.metadatas or {}
    local prev = {}
    for i, id in ipairs(oids) do prev[id] = type(omds[i]) == "table" and omds[i] or {} end
    for i, id in ipairs(ids) do
      for k in pairs(prev[id] or {}) do
        if mds[i][k] == nil then mds[i][k] = json.null end
      end
      if next(mds[i]) == nil then mds[i] = json.null end
    end
    local _, uerr, ucode = self:_call(c, col, "POST", "upsert", { ids = rest.array(ids),
      embeddings = rest.array(embs), metadatas = rest.array(mds) })
    if ucode then return nil, uerr, ucode end
  end
  if not col.dim then col.dim = rest.dim(items[1].vector) end
  return #items
end

function D:delete(c, ids)
  local ok, err, code = rest.check_ids(ids)
  if not ok then return nil, err, code end
  local col, cerr, ccode = self:_need(c)
  if col == nil then return nil, cerr, ccode end
  if not col or #ids == 0 then return 0 end
  local n = 0
  for b = 1, #ids, BATCH do
    local chunk = rest.array({ table.unpack(ids, b, math.min(b + BATCH - 1, #ids)) })
    local doc, gerr, gcode = self:_call(c, col, "POST", "get",
      { ids = chunk, include = rest.array() })
    if gcode then return nil, gerr, gcode end
    local found = type(doc) == "table" and doc.ids
    if type(found) ~= "table" then return rest.shape("chroma", "get without ids") end
    if #found > 0 then
      local _, derr, dcode = self:_call(c, col, "POST", "delete", { ids = rest.array(found) })
      if dcode then return nil, derr, dcode end
    end
    n = n + #found
  end
  return n
end

-- The canonical filter (fm.vector.rest.filter) as a Chroma `where` ($in needs one value kind).
function M.translate_filter(f)
  return rest.mongo_filter(f, function(values) return rest.kind_of(values) ~= nil end)
end

local function score(space, d)
  if type(d) ~= "number" then return 0 end
  if space == "l2" then return rest.clamp(1 - d / 4) end
  return rest.clamp(1 - d / 2)
end

function D:search(c, qvec, k, filter)
  local dim = rest.dim(qvec)
  if not dim then return nil, "qvec: a packed float32 string expected", rest.INVALID end
  local ok, err = rest.check_k(k)
  if not ok then return nil, err, rest.INVALID end
  local f, ferr = rest.filter(filter)
  if f == false then return nil, ferr, rest.INVALID end
  local col, cerr, ccode = self:_need(c, dim)
  if col == nil then return nil, cerr, ccode end
  if not col then return {} end
  local body = { query_embeddings = rest.array({ rest.unpack_vec(qvec) }), n_results = k,
    include = rest.array({ "metadatas", "distances" }) }
  if f then body.where = M.translate_filter(f) end
  local doc, qerr, qcode = self:_call(c, col, "POST", "query", body)
  if qcode then return nil, qerr, qcode end
  local ids = type(doc) == "table" and type(doc.ids) == "table" and doc.ids[1]
  local dists = type(doc) == "table" and type(doc.distances) == "table" and doc.distances[1]
  if type(ids) ~= "table" or type(dists) ~= "table" then
    return rest.shape("chroma", "query without ids and distances")
  end
  local mds = type(doc.metadatas) == "table" and type(doc.metadatas[1]) == "table"
    and doc.metadatas[1] or {}
  local out = {}
  for i, id in ipairs(ids) do
    out[i] = { id = id, score = score(col.space, dists[i]), metadata = metadata_of(mds[i]) }
  end
  table.sort(out, function(a, b) return a.score > b.score end)
  return out
end

function D:count(c)
  local col, cerr, ccode = self:_need(c)
  if col == nil then return nil, cerr, ccode end
  if not col then return 0 end
  local n, err, code = self:_call(c, col, "GET", "count")
  if code then return nil, err, code end
  if math.type(n) ~= "integer" then return rest.shape("chroma", "count is not an integer") end
  return n
end

function D:ids(c, after, limit)
  limit = limit or 100
  if math.type(limit) ~= "integer" or limit < 1 then
    return nil, "limit: a positive integer expected", rest.INVALID
  end
  local offset = 0
  if after ~= nil then
    offset = math.tointeger(tonumber(after))
    if not offset or offset < 0 then
      return nil, "after: a cursor from ids() expected", rest.INVALID
    end
  end
  local col, cerr, ccode = self:_need(c)
  if col == nil then return nil, cerr, ccode end
  if not col then return {} end
  local doc, err, code = self:_call(c, col, "POST", "get",
    { limit = limit + 1, offset = offset, include = rest.array() })
  if code then return nil, err, code end
  local ids = type(doc) == "table" and doc.ids
  if type(ids) ~= "table" then return rest.shape("chroma", "get without ids") end
  local out = {}
  for i = 1, math.min(limit, #ids) do out[i] = ids[i] end
  return out, #ids > limit and tostring(offset + limit) or nil
end

function D:get(c, id)
  if type(id) ~= "string" or id == "" then return nil, "id: a string expected", rest.INVALID end
  local col, cerr, ccode = self:_need(c)
  if col == nil then return nil, cerr, ccode end
  if not col then return nil end
  local doc, err, code = self:_call(c, col, "POST", "get",
    { ids = rest.array({ id }), include = rest.array({ "embeddings", "metadatas" }) })
  if code then return nil, err, code end
  if type(doc) ~= "table" or type(doc.ids) ~= "table" then
    return rest.shape("chroma", "get without ids")
  end
  if #doc.ids == 0 then return nil end
  local emb = type(doc.embeddings) == "table" and doc.embeddings[1]
  if type(emb) ~= "table" then return rest.shape("chroma", "get without embeddings") end
  local md = type(doc.metadatas) == "table" and doc.metadatas[1] or nil
  return { id = doc.ids[1], vector = rest.pack_vec(emb), metadata = metadata_of(md) }
end

function D:drop(c)
  local ok, err, code = rest.check_name(c)
  if not ok then return nil, err, code end
  self.cols[c] = nil
  local _, derr, dcode = self.c:call("DELETE", self.prefix .. "/collections/" .. rest.esc(c), nil,
    { [404] = true })
  if dcode and not (dcode ~= rest.UNAVAILABLE and missing(nil, derr)) then
    return nil, derr, dcode
  end
  return true
end

function D:ping()
  return rest.timed(function()
    -- the database, not /api/v2/heartbeat: it checks the token, the tenant and the database
    local _, err, code = self.c:call("GET", self.prefix)
    if code then return nil, err, code end
    return true
  end)
end

return M
