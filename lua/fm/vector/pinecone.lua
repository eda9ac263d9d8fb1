-- fm.vector.pinecone: the vector driver for a Pinecone index, over its REST data plane (fm.http).
--
--   require("fm.vector.pinecone").new(settings) -> driver
--   settings: pinecone_api_key (sent as the `Api-Key` header), pinecone_index_name,
--   pinecone_environment, pinecone_host, vector_timeout_s (default 10), breaker (default
--   "pinecone"); pinecone_controller_url (default https://api.pinecone.io) and
--   pinecone_legacy_controller_url (default https://controller.<environment>.pinecone.io) exist
--   for tests.
--
-- The index host, found once on first use:
--   1. PINECONE_HOST when set (https:// is added when it names no scheme);
--   2. else the control plane: GET <controller>/indexes/<PINECONE_INDEX_NAME> -> "host" (with the
--      controller's scheme) - right for serverless and pod indexes alike;
--   3. else, when that fails without a network error and PINECONE_ENVIRONMENT is set, the legacy
--      scheme: GET https://controller.<env>.pinecone.io/actions/whoami -> project_name, and the
--      host https://<index>-<project_name>.svc.<env>.pinecone.io.
-- One index has one dimension and one metric: a collection is a namespace of the index. ensure()
-- checks the index's dimension (VECTOR_DIM_MISMATCH when it differs) and creates nothing: a
-- namespace exists once something is upserted into it. drop() deletes every record of the
-- namespace. count() reads describe_index_stats, which Pinecone updates a little after writes.
-- Scores: cosine (the metric to create the index with) and dotproduct are similarities mapped to
-- (1 + s) / 2; euclidean (squared distance) to 1 - s / 4 (exact for unit vectors).
-- ids() uses GET /vectors/list (serverless indexes only): ids in byte order, the cursor is
-- Pinecone's pagination token. Metadata values: strings, numbers, booleans.
local rest = require "fm.vector.rest"

local M = {}

local API_VERSION = "2025-04"
local BATCH = 100

local D = {}
D.__index = D

local function nonempty(s) return type(s) == "string" and s ~= "" and s or nil end

function M.new(settings)
  settings = settings or {}
  local headers = { ["X-Pinecone-API-Version"] = API_VERSION }
  if nonempty(settings.pinecone_api_key) then headers["Api-Key"] = settings.pinecone_api_key end
  local self = setmetatable({ name = "pinecone", s = settings, headers = headers,
    timeout = settings.vector_timeout_s, breaker = settings.breaker or "pinecone" }, D)
  local host = nonempty(settings.pinecone_host)
  if host then self:_set_host(host:find("^https?://") and host or "https://" .. host) end
  return self
end

function D:_set_host(base)
  self.base = base:gsub("/+$", "")
  self.c = rest.client { name = "pinecone", base = self.base, headers = self.headers,
    timeout = self.timeout, breaker = self.breaker }
end

-- The data plane host of a legacy (pod, environment) index.
function M.legacy_host(index, project, env)
  return ("https://%s-%s.svc.%s.pinecone.io"):format(index, project, env)
end

-- The index host (found once): base URL | nil, message, code.
function D:host()
  if self.base then return self.base end
  local index = nonempty(self.s.pinecone_index_name)
  if not index or not nonempty(self.s.pinecone_api_key) then
    return nil, "pinecone: PINECONE_INDEX_NAME and PINECONE_API_KEY (or PINECONE_HOST) needed",
      rest.INVALID
  end
  local ctl = nonempty(self.s.pinecone_controller_url) or "https://api.pinecone.io"
  local cc = rest.client { name = "pinecone", base = ctl, headers = self.headers,
    timeout = self.timeout, breaker = self.breaker }
  local doc, err, code = cc:call("GET", "/indexes/" .. rest.esc(index))
  if not code and type(doc) == "table" and nonempty(doc.host) then
    local h = doc.host
    if not h:find("^https?://") then h = (ctl:match("^(https?://)") or "https://") .. h end
    self:_set_host(h)
    if math.type(doc.dimension) == "integer" then self.dim = doc.dimension end
    if type(doc.metric) == "string" then self.metric = doc.metric end
    return self.base
  end
  if not code then err, code = "pinecone: describe index answered without a host", rest.ERROR end
  local env = nonempty(self.s.pinecone_environment)
  if code == rest.UNAVAILABLE or not env then return nil, err, code end
  local legacy = nonempty(self.s.pinecone_legacy_controller_url)
    or ("https://controller.%s.pinecone.io"):format(env)
  local lc = rest.client { name = "pinecone", base = legacy, headers = self.headers,
    timeout = self.timeout, breaker = self.breaker }
  local who, werr, wcode = lc:call("GET", "/actions/whoami")
  if wcode then return nil, werr, wcode end
  if type(who) ~= "table" or not nonempty(who.project_name) then
    return rest.shape("pinecone", "whoami without project_name")
  end
  self:_set_host(M.legacy_host(index, who.project_name, env))
  return self.base
end

-- POST/GET on the data plane.
function D:_call(method, path, body, expect)
  if not self.c then
    local ok, err, code = self:host()
    if not ok then return nil, err, code end
  end
  return self.c:call(method, path, body, expect)
end

function D:_stats()
  local doc, err, code = self:_call("POST", "/describe_index_stats", {})
  if code then return nil, err, code end
  if type(doc) ~= "table" or math.type(doc.dimension) ~= "integer" then
    return rest.shape("pinecone", "describe_index_stats without dimension")
  end
  self.dim = doc.dimension
  if type(doc.metric) == "string" then self.metric = doc.metric end
  return doc
end

-- The index's dimension (cached), checked against `dim` when given.
function D:_dim(dim)
  if not self.dim or (dim and dim ~= self.dim) then -- unknown, or cached and maybe old
    local ok, err, code = self:_stats()
    if not ok then return nil, err, code end
  end
  if dim and dim ~= self.dim then
    return nil, ("pinecone: the index has dimension %d, a vector has %d"):format(self.dim, dim),
      rest.DIM_MISMATCH
  end
  return self.dim
end

local function score(metric, s)
  if type(s) ~= "number" then return 0 end
  if metric == "euclidean" then return rest.clamp(1 - s / 4) end
  return rest.clamp((1 + s) / 2)
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

function D:ensure(ns, dim)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  if math.type(dim) ~= "integer" or dim < 1 then
    return nil, "dim: a positive integer expected", rest.INVALID
  end
  local st, serr, scode = self:_stats()
  if not st then return nil, serr, scode end
  if st.dimension ~= dim then
    return nil, ("pinecone: the index has dimension %d, not %d"):format(st.dimension, dim),
      rest.DIM_MISMATCH
  end
  return true
end

function D:upsert(ns, items)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  ok, err, code = rest.check_items(items)
  if not ok then return nil, err, code end
  items = rest.dedupe(items)
  if #items == 0 then return 0 end
  for _, it in ipairs(items) do
    local dim, derr, dcode = self:_dim(rest.dim(it.vector))
    if not dim then return nil, derr, dcode end
  end
  for b = 1, #items, BATCH do
    local vectors = {}
    for j = b, math.min(b + BATCH - 1, #items) do
      local it = items[j]
      local v = { id = it.id, values = rest.unpack_vec(it.vector) }
      if it.metadata and next(it.metadata) then v.metadata = it.metadata end
      vectors[#vectors + 1] = v
    end
    local _, uerr, ucode = self:_call("POST", "/vectors/upsert",
      { vectors = rest.array(vectors), namespace = ns })
    if ucode then return nil, uerr, ucode end
  end
  return #items
end

-- {id = {id, values, metadata}} of the ids that exist (one request: at most BATCH ids).
function D:_fetch(ns, ids)
  local q = { "namespace=" .. rest.esc(ns) }
  for _, id in ipairs(ids) do q[#q + 1] = "ids=" .. rest.esc(id) end
  local doc, err, code = self:_call("GET", "/vectors/fetch?" .. table.concat(q, "&"), nil,
    { [404] = true })
  if code then return nil, err, code end
  if type(doc) ~= "table" then return {} end
  if type(doc.vectors) ~= "table" then return rest.shape("pinecone", "fetch without vectors") end
  return doc.vectors
end

function D:delete(ns, ids)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  ok, err, code = rest.check_ids(ids)
  if not ok then return nil, err, code end
  local n = 0
  for b = 1, #ids, BATCH do
    local chunk = { table.unpack(ids, b, math.min(b + BATCH - 1, #ids)) }
    local found, ferr, fcode = self:_fetch(ns, chunk)
    if not found then return nil, ferr, fcode end
    local present = {}
    for _, id in ipairs(chunk) do
      if found[id] and not present[id] then present[#present + 1] = id present[id] = true end
    end
    if #present > 0 then
      local _, derr, dcode = self:_call("POST", "/vectors/delete",
        { ids = rest.array(present), namespace = ns })
      if dcode then return nil, derr, dcode end
    end
    n = n + #present
  end
  return n
end

-- The canonical filter (fm.vector.rest.filter) as a Pinecone metadata filter ($in takes no
-- booleans: a list with one becomes $or of $eq).
function M.translate_filter(f)
  return rest.mongo_filter(f, function(values)
    for _, v in ipairs(values) do if type(v) == "boolean" then return false end end
    return true
  end)
end

function D:search(ns, qvec, k, filter)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  local dim = rest.dim(qvec)
  if not dim then return nil, "qvec: a packed float32 string expected", rest.INVALID end
  ok, err = rest.check_k(k)
  if not ok then return nil, err, rest.INVALID end
  local f, ferr = rest.filter(filter)
  if f == false then return nil, ferr, rest.INVALID end
  local idim, derr, dcode = self:_dim(dim)
  if not idim then return nil, derr, dcode end
  local body = { namespace = ns, vector = rest.unpack_vec(qvec), topK = k,
    includeMetadata = true, includeValues = false }
  if f then body.filter = M.translate_filter(f) end
  local doc, qerr, qcode = self:_call("POST", "/query", body)
  if qcode then return nil, qerr, qcode end
  if type(doc) ~= "table" or type(doc.matches) ~= "table" then
    return rest.shape("pinecone", "query without matches")
  end
  local out = {}
  for _, m in ipairs(doc.matches) do
    out[#out + 1] = { id = m.id, score = score(self.metric, m.score),
      metadata = metadata_of(m.metadata) }
  end
  table.sort(out, function(a, b) return a.score > b.score end)
  return out
end

function D:count(ns)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  local st, serr, scode = self:_stats()
  if not st then return nil, serr, scode end
  local info = type(st.namespaces) == "table" and st.namespaces[ns]
  if type(info) ~= "table" then return 0 end
  local n = info.vectorCount or info.vector_count
  if math.type(n) ~= "integer" then
    return rest.shape("pinecone", "namespace without vectorCount")
  end
  return n
end

function D:ids(ns, after, limit)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  limit = limit or 100
  if math.type(limit) ~= "integer" or limit < 1 then
    return nil, "limit: a positive integer expected", rest.INVALID
  end
  if after ~= nil and (type(after) ~= "string" or after == "") then
    return nil, "after: a cursor (string) expected", rest.INVALID
  end
  local q = ("/vectors/list?namespace=%s&limit=%d"):format(rest.esc(ns), math.min(limit, 100))
  if after then q = q .. "&paginationToken=" .. rest.esc(after) end
  local doc, lerr, lcode = self:_call("GET", q, nil, { [404] = true })
  if lcode then return nil, lerr, lcode end
  if type(doc) ~= "table" or doc.vectors == nil then return {} end
  if type(doc.vectors) ~= "table" then return rest.shape("pinecone", "list without vectors") end
  local out = {}
  for _, v in ipairs(doc.vectors) do out[#out + 1] = v.id end
  local nxt = type(doc.pagination) == "table" and nonempty(doc.pagination.next) or nil
  return out, nxt
end

function D:get(ns, id)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  if type(id) ~= "string" or id == "" then return nil, "id: a string expected", rest.INVALID end
  local found, ferr, fcode = self:_fetch(ns, { id })
  if not found then return nil, ferr, fcode end
  local v = found[id]
  if type(v) ~= "table" then return nil end
  if type(v.values) ~= "table" then return rest.shape("pinecone", "fetch without values") end
  return { id = id, vector = rest.pack_vec(v.values), metadata = metadata_of(v.metadata) }
end

function D:drop(ns)
  local ok, err, code = rest.check_name(ns)
  if not ok then return nil, err, code end
  -- a namespace that does not exist: 404 on serverless indexes
  local _, derr, dcode = self:_call("POST", "/vectors/delete",
    { deleteAll = true, namespace = ns }, { [404] = true })
  if dcode then return nil, derr, dcode end
  return true
end

function D:ping()
  return rest.timed(function()
    local st, err, code = self:_stats()
    if not st then return nil, err, code end
    return true
  end)
end

return M
