-- fm.vector: the vector store behind one API; VECTOR_DB_PROVIDER (alias VECTOR_BACKEND) picks the
-- driver at start: embedded (the default: lua/fm/vector/embedded.lua over providers/vector),
-- qdrant, pinecone or chroma (lua/fm/vector/<name>.lua, over fm.http). pgvector is not built:
-- config.lua refuses it at start. docs/VECTORS.md.
--
--   backend()                          -> "embedded" | "qdrant" | "pinecone" | "chroma"
--   ensure(collection, dim)            -> true | nil, msg, "VECTOR_DIM_MISMATCH" (names
--                                         `faultmaven kb reindex`)
--   upsert(collection, items)          -> n     items: {{id =, vector = packed f32,
--                                                 metadata = {k = string|number|boolean}}, ...}
--   delete(collection, ids)            -> n
--   search(collection, qvec, k, filter) -> {{id =, score = 0..1, metadata =}, ...} best first
--       filter: nil, or a list of alternatives, each field = value or field = {v1, v2} (AND
--       inside one, OR between them): {{scope = "global"}, {scope = "personal", owner_id = "u"}}
--   count(collection)                  -> n
--   ids(collection, after, limit)      -> {ids...}, next_after | nil
--   get(collection, id)                -> {id =, vector =, metadata =} | nil
--   drop(collection)                   -> true
--   ping()                             -> {latency_ms =}
--   use(name [, settings])             this VM's driver replaced (tests, `faultmaven exec`):
--                                      settings default to fm.settings
--
-- Failures return nil, message, code: VECTOR_UNAVAILABLE, VECTOR_ERROR, VECTOR_INVALID,
-- VECTOR_DIM_MISMATCH. One driver per VM, made on first use.
local M = {}

local driver

local BACKENDS = { embedded = true, qdrant = true, pinecone = true, chroma = true }

local function make(name, settings)
  if name == "pgvector" then
    error("fm.vector: pgvector is not built in this engine (Debian 12 has no pgvector package "
      .. "for PostgreSQL 15): use embedded, qdrant, pinecone or chroma", 3)
  end
  if not BACKENDS[name] then error("fm.vector: unknown backend " .. tostring(name), 3) end
  return require("fm.vector." .. name).new(settings)
end

local function drv()
  if not driver then
    local s = require "fm.settings"
    driver = make(s.vector_db_provider, s)
  end
  return driver
end

function M.use(name, settings)
  driver = make(name, settings or require "fm.settings")
  return true
end

function M.backend() return drv().name end
function M.ensure(c, dim) return drv():ensure(c, dim) end
function M.upsert(c, items) return drv():upsert(c, items) end
function M.delete(c, ids) return drv():delete(c, ids) end
function M.search(c, qvec, k, filter) return drv():search(c, qvec, k, filter) end
function M.count(c) return drv():count(c) end
function M.ids(c, after, limit) return drv():ids(c, after, limit) end
function M.get(c, id) return drv():get(c, id) end
function M.drop(c) return drv():drop(c) end
function M.ping() return drv():ping() end

return M
