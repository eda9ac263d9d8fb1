-- fm.kb.cli: `faultmaven kb export FILE | import FILE | reindex` (engine/main.c runs main() in an
-- EXEC VM with serve's settings). Moves a knowledge base between databases and vector providers.
--
-- The export is JSON lines: a header {format = "faultmaven-kb", version = 1, embedding_model,
-- dim, documents, exported_at}, then one line per document {document = {its columns}, chunks =
-- {{id, ordinal, heading, content, line_start, line_end, created_at, vector}}}; vector is the
-- packed float32 vector in base64url, or null when the vector store had none.
--
-- import reads such a file into the database and the vector store configured now: a document with
-- the same id (or the same pack file) is replaced; the exported vectors are used when their model
-- and dimension are the current embedder's, otherwise the chunks are embedded again. A personal or
-- team document whose owner is not a user of this database is skipped (counted); a global one
-- keeps no owner. reindex embeds every chunk again into the current vector store (after a model
-- change, or to fix a dimension mismatch: the collection is made again at the embedder's
-- dimension). Progress goes to stderr: a bar on a terminal, a count otherwise.
local crypto = require "fm.crypto"
local db = require "fm.db"
local json = require "fm.json"
local time = require "fm.time"

local M = {}

local COLLECTION = "knowledge"
local BATCH = 64

M.DOC_COLUMNS = { "id", "owner_id", "organization_id", "scope", "title", "document_type",
                  "category", "tags", "source_url", "description", "filename", "content_type",
                  "storage_key", "content", "content_hash", "status", "error", "chunk_count",
                  "origin", "version", "created_at", "updated_at", "indexed_at" }
M.CHUNK_COLUMNS = { "id", "document_id", "ordinal", "heading", "content", "line_start",
                    "line_end", "created_at" }

local function check(ok, err, code)
  if ok == nil then error(string.format("%s (%s)", tostring(err), tostring(code)), 0) end
  return ok
end

-- ---- progress ---------------------------------------------------------------------------------

--- A progress reporter: p(done) redraws a bar on a terminal; p:finish(line) ends it and prints
-- the summary line (the only output when stderr is not a terminal).
function M.progress(label, total, tty, out)
  out = out or io.stderr
  local last = -1
  local p = {}
  function p.step(done)
    if not tty then return end
    local pct = total > 0 and math.floor(done * 100 / total) or 100
    if pct == last and done ~= total then return end
    last = pct
    local width = 30
    local fill = total > 0 and math.floor(done * width / total) or width
    out:write(string.format("\r%s [%s%s] %3d%% %d/%d", label, string.rep("#", fill),
      string.rep(".", width - fill), pct, done, total))
    out:flush()
  end
  function p.finish(line)
    if tty then out:write("\r\27[K") end
    out:write(line, "\n")
    out:flush()
  end
  return p
end

-- ---- vectors ----------------------------------------------------------------------------------

local function vec() return require "fm.vector" end
local function embedder() return require "fm.embed" end

-- What fm.vector keeps beside a chunk's vector (fm.services.knowledge's visibility filter reads
-- it, and ingestion writes the same); values are scalars: no owner is "".
local function chunk_metadata(doc)
  local owner = doc.owner_id
  if owner == nil or owner == json.null then owner = "" end
  return { document_id = doc.id, scope = doc.scope, owner_id = owner,
           organization_id = doc.organization_id, document_type = doc.document_type }
end

-- The text embedded for a chunk: as fm.services.knowledge's ingestion does (the heading first
-- unless the text starts with it), so a reindex gives the vectors an ingestion gives.
local function embed_text(heading, content)
  if heading and heading ~= json.null and not content:sub(1, 300):find(heading, 1, true) then
    return heading .. "\n" .. content
  end
  return content
end

-- Embeds the texts of items (a list of {id, content, metadata}) in batches and upserts them.
local function embed_and_upsert(items, on_batch)
  for i = 1, #items, BATCH do
    local batch, texts = {}, {}
    for j = i, math.min(i + BATCH - 1, #items) do
      batch[#batch + 1] = items[j]
      texts[#texts + 1] = items[j].content
    end
    local vecs = assert(embedder().embed(texts))
    local up = {}
    for j, it in ipairs(batch) do
      up[j] = { id = it.id, vector = vecs[j], metadata = it.metadata }
    end
    assert(vec().upsert(COLLECTION, up))
    if on_batch then on_batch(#batch) end
  end
end

-- The collection at the embedder's dimension. One of another dimension is dropped and made
-- again: returns dim, true (every chunk needs a vector again).
local function ensure_collection()
  local dim = embedder().dim()
  local ok, err, code = vec().ensure(COLLECTION, dim)
  if ok then return dim, false end
  if code ~= "VECTOR_DIM_MISMATCH" then error("vector store: " .. tostring(err), 0) end
  assert(vec().drop(COLLECTION))
  assert(vec().ensure(COLLECTION, dim))
  return dim, true
end

-- ---- export -----------------------------------------------------------------------------------

local function export(file, tty)
  -- the store must answer first (a get() of a missing vector and of a store it cannot open may
  -- look alike): no export silently without its vectors
  local stored, cerr = vec().count(COLLECTION)
  if stored == nil then error("vector store: " .. tostring(cerr), 0) end
  local f = assert(io.open(file, "wb"))
  local docs = check(db.query("SELECT * FROM knowledge_documents ORDER BY created_at, id"))
  f:write(json.encode({ format = "faultmaven-kb", version = 1,
                        embedding_model = embedder().model(), dim = embedder().dim(),
                        documents = #docs, exported_at = time.iso8601() }), "\n")
  local p = M.progress("export", #docs, tty)
  local nchunks, nvec = 0, 0
  for i, d in ipairs(docs) do
    local chunks = check(db.query("SELECT * FROM knowledge_chunks WHERE document_id = ? "
      .. "ORDER BY ordinal", d.id))
    local out = json.array({})
    for j, c in ipairs(chunks) do
      local got, gerr = vec().get(COLLECTION, c.id)
      if got == nil and gerr ~= nil then error("vector store: " .. tostring(gerr), 0) end
      local v = type(got) == "table" and got.vector
      if type(v) == "string" then nvec = nvec + 1 end
      out[j] = { id = c.id, ordinal = c.ordinal, heading = c.heading or json.null,
                 content = c.content, line_start = c.line_start or json.null,
                 line_end = c.line_end or json.null, created_at = c.created_at,
                 vector = type(v) == "string" and crypto.b64url_encode(v) or json.null }
    end
    nchunks = nchunks + #chunks
    local doc = {}
    for _, k in ipairs(M.DOC_COLUMNS) do
      local v = d[k]
      if v == nil then v = json.null end
      doc[k] = v
    end
    f:write(json.encode({ document = doc, chunks = out }), "\n")
    p.step(i)
  end
  assert(f:close())
  p.finish(string.format("exported %d documents, %d chunks (%d vectors) to %s", #docs, nchunks,
    nvec, file))
  return 0
end

-- ---- reindex ----------------------------------------------------------------------------------

local function reindex(tty)
  local dim = ensure_collection()
  local rows = check(db.query("SELECT c.id, c.heading, c.content, d.id AS document_id, d.scope, "
    .. "d.owner_id, d.organization_id, d.document_type FROM knowledge_chunks c "
    .. "JOIN knowledge_documents d ON d.id = c.document_id ORDER BY d.id, c.ordinal"))
  local items = {}
  for i, r in ipairs(rows) do
    items[i] = { id = r.id, content = embed_text(r.heading, r.content),
      metadata = chunk_metadata({ id = r.document_id, scope = r.scope, owner_id = r.owner_id,
        organization_id = r.organization_id, document_type = r.document_type }) }
  end
  local p = M.progress("reindex", #items, tty)
  local done = 0
  embed_and_upsert(items, function(k)
    done = done + k
    p.step(done)
  end)
  -- vectors of chunks that no longer exist
  local known, stale, after = {}, {}, nil
  for _, it in ipairs(items) do known[it.id] = true end
  repeat
    local ids, nxt = assert(vec().ids(COLLECTION, after, 500))
    for _, id in ipairs(ids) do if not known[id] then stale[#stale + 1] = id end end
    after = nxt
  until not after
  if #stale > 0 then assert(vec().delete(COLLECTION, stale)) end
  p.finish(string.format("reindexed %d chunks with %s (dim %d); %d stale vectors removed",
    #items, embedder().model(), dim, #stale))
  return 0
end

-- ---- import -----------------------------------------------------------------------------------

local function insert(table_name, cols, row)
  local names, marks, args = {}, {}, {}
  for _, k in ipairs(cols) do
    local v = row[k]
    if v ~= nil and v ~= json.null then
      names[#names + 1] = k
      marks[#marks + 1] = "?"
      args[#args + 1] = v
    end
  end
  check(db.exec(string.format("INSERT INTO %s (%s) VALUES (%s)", table_name,
    table.concat(names, ", "), table.concat(marks, ", ")), table.unpack(args)))
end

local function user_exists(id)
  return #check(db.query("SELECT id FROM users WHERE id = ?", id)) > 0
end

-- A document line of an export, decoded, or nil.
local function document_line(line)
  local e = json.decode(line)
  if type(e) ~= "table" or type(e.document) ~= "table" or type(e.document.id) ~= "string"
    or (e.chunks ~= nil and type(e.chunks) ~= "table") then
    return nil
  end
  return e
end

-- Checks every line after the header before anything is written; returns their number.
local function check_file(f, file)
  local n = 0
  for line in f:lines() do
    n = n + 1
    if not document_line(line) then
      error(string.format("%s:%d: not a document of a kb export (nothing imported)", file, n + 1),
        0)
    end
  end
  return n
end

local function import(file, tty)
  local pack = require "fm.kb.pack"
  local f = assert(io.open(file, "rb"))
  local head = json.decode(f:read("l") or "")
  if type(head) ~= "table" or head.format ~= "faultmaven-kb" then
    f:close()
    error(file .. ": not a faultmaven kb export", 0)
  end
  if head.version ~= 1 then
    f:close()
    error(file .. ": export version " .. tostring(head.version) .. ", this engine reads 1", 0)
  end
  local okc, total = pcall(check_file, f, file)
  f:close()
  if not okc then error(total, 0) end
  f = assert(io.open(file, "rb"))
  f:read("l")
  local dim, rebuilt = ensure_collection()
  local same = head.embedding_model == embedder().model() and head.dim == dim
  local p = M.progress("import", total, tty)
  local n, skipped, nchunks, reembedded = 0, 0, 0, 0
  for line in f:lines() do
    local e = assert(document_line(line), "kb import: the file changed while it was read")
    local d = e.document
    local keep = true
    if d.owner_id ~= nil and d.owner_id ~= json.null and not user_exists(d.owner_id) then
      if d.scope == "global" then d.owner_id = json.null else keep = false end
    end
    if not keep then
      skipped = skipped + 1
    else
      -- what this import replaces: the same id, or the same file of the built-in pack
      local old = check(db.query("SELECT id FROM knowledge_documents WHERE id = ? OR "
        .. "(origin = 'pack' AND ? = 'pack' AND filename = ?)", d.id, d.origin,
        d.filename ~= json.null and d.filename or ""))
      local items, upserts = {}, {}
      local meta = chunk_metadata(d)
      db.transaction(function() -- the replaced rows go only if the new ones are written
        for _, r in ipairs(old) do pack.purge(r.id) end
        insert("knowledge_documents", M.DOC_COLUMNS, d)
        for _, c in ipairs(e.chunks or {}) do
          c.document_id = d.id
          insert("knowledge_chunks", M.CHUNK_COLUMNS, c)
          if db.dialect() == "sqlite" then
            check(db.exec("INSERT INTO knowledge_chunks_fts (heading, content, chunk_id) "
              .. "VALUES (?, ?, ?)", c.heading ~= json.null and c.heading or "", c.content,
              c.id))
          end
          local v = same and type(c.vector) == "string" and crypto.b64url_decode(c.vector)
          if v and #v == 4 * dim then
            upserts[#upserts + 1] = { id = c.id, vector = v, metadata = meta }
          else
            items[#items + 1] = { id = c.id, content = embed_text(c.heading, c.content),
                                  metadata = meta }
          end
        end
      end)
      if #upserts > 0 then assert(vec().upsert(COLLECTION, upserts)) end
      embed_and_upsert(items)
      reembedded = reembedded + #items
      nchunks = nchunks + #(e.chunks or {})
      n = n + 1
    end
    p.step(n + skipped)
  end
  f:close()
  if rebuilt then -- the old collection had another dimension: the other documents need vectors
    reindex(tty)
  end
  p.finish(string.format("imported %d documents, %d chunks (%d embedded again) from %s%s", n,
    nchunks, reembedded, file,
    skipped > 0 and string.format("; %d skipped (their owner is not a user here)", skipped)
      or ""))
  return 0
end

--- argv: {"export", FILE} | {"import", FILE} | {"reindex"}, and tty = stderr is a terminal.
-- Returns the exit code.
function M.main(argv)
  local sub, file = argv[1], argv[2]
  local settings = require "fm.settings"
  if sub == "import" or sub == "reindex" then
    if settings.run_startup_migrations then require("fm.db.migrate").up() end
  end
  if (sub == "export" or sub == "import") and file and argv[3] == nil then
    if sub == "export" then return export(file, argv.tty) end
    return import(file, argv.tty)
  elseif sub == "reindex" and file == nil then
    return reindex(argv.tty)
  end
  io.stderr:write("usage: faultmaven kb export FILE | import FILE | reindex\n")
  return 2
end

return M
