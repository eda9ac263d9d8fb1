-- fm.vector.embedded: the embedded vector driver (VECTOR_DB_PROVIDER=embedded, the default): an
-- HNSW index per collection in <FM_DATA_DIR>/vectors/<collection>/, with a write-ahead log
-- fsync'd on every call and snapshots (providers/vector/embedded.c, through fm.vector_embedded).
-- The state is the process's: every worker VM sees the same collections. One process at a time
-- may open a collection (a lock file); a second gets VECTOR_UNAVAILABLE.
--
--   require("fm.vector.embedded").new(settings) -> driver
--   settings: data_dir, hnsw_m, hnsw_ef_construction, hnsw_ef_search, vector_quantize,
--   vector_snapshot_every (log records between snapshots; tests)
--
-- Collections are named [A-Za-z0-9_-], 1..64 characters. ids() pages in insertion order; its
-- cursor is an integer. Scores are (1 + cos) / 2. Search is exact (brute force) up to 4096
-- vectors, HNSW above. Metadata: a flat table of strings, numbers and booleans.
local core = require "fm.vector_embedded"
local json = require "fm.json"
local time = require "fm.time"

local M = {}

local INVALID, DIM = "VECTOR_INVALID", "VECTOR_DIM_MISMATCH"
local REINDEX = "rebuild it with `faultmaven kb reindex`"

local D = {}
D.__index = D

function M.new(settings)
  settings = settings or {}
  local dir = settings.data_dir or "./data"
  core.params {
    M = settings.hnsw_m, ef_construction = settings.hnsw_ef_construction,
    ef_search = settings.hnsw_ef_search, quantize = settings.vector_quantize or false,
    snapshot_every = rawget(settings, "vector_snapshot_every"), -- tests only: not a setting
  }
  return setmetatable({ name = "embedded", data_dir = dir, root = dir .. "/vectors" }, D)
end

function D:_dir(c)
  if type(c) ~= "string" or not c:match("^[%w_%-]+$") or #c > 64 then
    return nil, "collection: 1 to 64 characters of [A-Za-z0-9_-] expected", INVALID
  end
  return self.root .. "/" .. c
end

function D:ensure(c, dim)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  if math.type(dim) ~= "integer" or dim < 1 or dim > 65536 then
    return nil, "dim: an integer 1..65536 expected", INVALID
  end
  local ok, msg
  ok, msg, code = core.open(dir, dim)
  if ok then return true end
  if code == DIM then
    msg = ("vector collection %s: %s: %s"):format(c, msg, REINDEX)
  end
  return nil, msg, code
end

local function scalar(v)
  local t = type(v)
  return t == "string" or t == "boolean"
    or (t == "number" and v == v and v ~= math.huge and v ~= -math.huge)
end

function D:upsert(c, items)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  if type(items) ~= "table" then return nil, "items: a list expected", INVALID end
  local ids, vecs, metas = {}, {}, {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.id) ~= "string" or it.id == "" then
      return nil, ("items[%d].id: a non-empty string expected"):format(i), INVALID
    end
    if type(it.vector) ~= "string" or #it.vector == 0 or #it.vector % 4 ~= 0 then
      return nil, ("items[%d].vector: a packed float32 string expected"):format(i), INVALID
    end
    local md = it.metadata
    if md ~= nil and type(md) ~= "table" then
      return nil, ("items[%d].metadata: a table expected"):format(i), INVALID
    end
    for k, v in pairs(md or {}) do
      if type(k) ~= "string" or k == "" or not scalar(v) then
        return nil, ("items[%d].metadata.%s: string keys with string, number or boolean values "
          .. "expected"):format(i, tostring(k)), INVALID
      end
    end
    ids[i], vecs[i] = it.id, it.vector
    metas[i] = (md == nil or next(md) == nil) and "{}" or json.encode(md)
  end
  if #ids == 0 then return 0 end
  local n, msg
  n, msg, code = core.upsert(dir, ids, vecs, metas)
  if n then return n end
  if msg == "no such collection" then
    msg = ("vector collection %s does not exist (vector.ensure creates it)"):format(c)
  end
  return nil, msg, code
end

function D:delete(c, ids)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  if type(ids) ~= "table" then return nil, "ids: a list expected", INVALID end
  for i, id in ipairs(ids) do
    if type(id) ~= "string" or id == "" then
      return nil, ("ids[%d]: a non-empty string expected"):format(i), INVALID
    end
  end
  return core.delete(dir, ids)
end

-- The filter as the JSON list of alternatives C reads; "" when nothing is filtered (no filter,
-- or an alternative that is empty and so matches everything).
local function filter_json(f)
  if f == nil then return "" end
  if type(f) ~= "table" then return nil, "filter: a list of alternatives expected" end
  if #f == 0 and next(f) ~= nil then f = { f } end -- one alternative given bare
  local alts = {}
  for i, alt in ipairs(f) do
    if type(alt) ~= "table" then
      return nil, ("filter[%d]: a table field = value expected"):format(i)
    end
    if next(alt) == nil then return "" end
    local a = {}
    for k, v in pairs(alt) do
      if type(k) ~= "string" or k == "" then
        return nil, ("filter[%d]: field names must be non-empty strings"):format(i)
      end
      if type(v) == "table" then
        if #v == 0 then return nil, ("filter[%d].%s: an empty list of values"):format(i, k) end
        for _, x in ipairs(v) do
          if not scalar(x) then
            return nil, ("filter[%d].%s: strings, numbers or booleans expected"):format(i, k)
          end
        end
        a[k] = json.array(table.move(v, 1, #v, 1, {}))
      elseif scalar(v) then
        a[k] = v
      else
        return nil, ("filter[%d].%s: a string, number, boolean or a list expected"):format(i, k)
      end
    end
    alts[#alts + 1] = a
  end
  if #alts == 0 then return "" end
  return json.encode(alts)
end

function D:search(c, qvec, k, filter)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  if type(qvec) ~= "string" or #qvec == 0 or #qvec % 4 ~= 0 then
    return nil, "query: a packed float32 string expected", INVALID
  end
  if math.type(k) ~= "integer" or k < 1 or k > 10000 then
    return nil, "k: an integer 1..10000 expected", INVALID
  end
  local fj, ferr = filter_json(filter)
  if not fj then return nil, ferr, INVALID end
  local res, msg
  res, msg, code = core.search(dir, qvec, k, fj ~= "" and fj or nil)
  if not res then
    if code == DIM then msg = ("vector collection %s: %s: %s"):format(c, msg, REINDEX) end
    return nil, msg, code
  end
  for _, r in ipairs(res) do
    r.metadata = json.decode(r.meta)
    r.meta = nil
  end
  return res
end

function D:count(c)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  return core.count(dir)
end

function D:ids(c, after, limit)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  local cursor = after == nil and 0 or math.tointeger(tonumber(after))
  if not cursor or cursor < 0 then return nil, "after: a cursor from ids() expected", INVALID end
  limit = limit or 1000
  if math.type(limit) ~= "integer" or limit < 1 or limit > 100000 then
    return nil, "limit: an integer 1..100000 expected", INVALID
  end
  return core.ids(dir, cursor, limit)
end

function D:get(c, id)
  local dir = self:_dir(c)
  if not dir or type(id) ~= "string" or id == "" then return nil end
  local vec, meta = core.get(dir, id)
  if not vec then return nil end
  return { id = id, vector = vec, metadata = json.decode(meta) }
end

function D:drop(c)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  return core.drop(dir)
end

-- The data directory can take a file: create, fsync (by closing), remove.
function D:ping()
  local t0 = time.monotonic()
  local path = self.data_dir .. "/.vector-ping"
  local f, err = io.open(path, "w")
  if not f then return nil, "embedded vectors: " .. tostring(err), "VECTOR_UNAVAILABLE" end
  f:write("ping")
  f:close()
  os.remove(path)
  return { latency_ms = math.floor((time.monotonic() - t0) * 1000 + 0.5) }
end

-- Takes a snapshot of the collection now (`faultmaven kb`, tests).
function D:snapshot(c)
  local dir, err, code = self:_dir(c)
  if not dir then return nil, err, code end
  return core.snapshot(dir)
end

return M
