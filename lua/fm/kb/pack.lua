-- fm.kb.pack: the built-in knowledge pack (KB_PACK_DIR, default <FM_HOME>/kb): its *.md runbooks
-- become global documents (origin 'pack'), loaded by fm.startup after the migrations.
--
--   pack.parse(text) -> {title, document_type, category, tags, body} | nil, message
--   pack.files(dir) -> {name, ...}           the *.md file names of dir, sorted
--   pack.sync([dir]) -> {added, updated, removed, unchanged}
--
-- Idempotent: a document is keyed by its file name (knowledge_documents.filename, origin 'pack')
-- and its content hash; an unchanged file is left alone, a changed one updates its document (same
-- id, version + 1, indexed again), a file that is gone deletes its document. On PostgreSQL the run
-- holds an advisory lock, so replicas starting together load the pack once.
local crypto = require "fm.crypto"
local db = require "fm.db"
local json = require "fm.json"
local log = require "fm.log"
local time = require "fm.time"

local M = {}

local LOCK_ID = 7370631 -- pg_advisory_xact_lock key: the knowledge pack

local function check(ok, err, code)
  if ok == nil then error(string.format("kb pack: %s (%s)", tostring(err), tostring(code)), 0) end
  return ok
end

--- Splits the front matter (--- key: value lines ---) from the body. tags: "a, b" or "[a, b]".
function M.parse(text)
  local head, body = text:match("^%-%-%-\r?\n(.-)\r?\n%-%-%-\r?\n(.*)$")
  if not head then return nil, "no front matter (--- title: ... ---)" end
  local meta = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do
    local k, v = line:match("^%s*([%w_]+)%s*:%s*(.-)%s*$")
    if k then
      v = v:gsub("^\"(.*)\"$", "%1"):gsub("^'(.*)'$", "%1")
      meta[k:lower()] = v
    end
  end
  if not meta.title or meta.title == "" then return nil, "front matter: title is required" end
  local tags = {}
  local raw = (meta.tags or ""):gsub("^%[", ""):gsub("%]$", "")
  for t in raw:gmatch("[^,]+") do
    t = t:match("^%s*(.-)%s*$"):gsub("^[\"'](.*)[\"']$", "%1")
    if t ~= "" then tags[#tags + 1] = t end
  end
  return { title = meta.title, document_type = meta.document_type ~= "" and meta.document_type
             or "runbook", category = meta.category ~= "" and meta.category or nil,
           tags = tags, body = body }
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- The *.md files directly in dir (names only) but README.md, sorted; {} when dir does not exist.
function M.files(dir)
  local names = {}
  local ok, lfs = pcall(require, "lfs")
  if ok then
    if lfs.attributes(dir, "mode") ~= "directory" then return names end
    for name in lfs.dir(dir) do
      if name:match("%.md$") and lfs.attributes(dir .. "/" .. name, "mode") == "file" then
        names[#names + 1] = name
      end
    end
  else
    local p = io.popen("find " .. shell_quote(dir) .. " -maxdepth 1 -type f -name '*.md' "
      .. "2>/dev/null")
    if p then
      for line in p:lines() do names[#names + 1] = line:match("([^/]+)$") end
      p:close()
    end
  end
  -- the pack's own README (what the pack is, how to add to it) is not a runbook
  local out = {}
  for _, name in ipairs(names) do
    if name:upper() ~= "README.MD" then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

--- Removes a document and what indexes it (full-text rows, vectors, a queued ingestion).
-- fm.services.knowledge's delete is for users; the pack and the CLI act for no user.
function M.purge(doc_id)
  local kn = require "fm.services.knowledge"
  local ids = {}
  for _, r in ipairs(check(db.query("SELECT id FROM knowledge_chunks WHERE document_id = ?",
    doc_id))) do ids[#ids + 1] = r.id end
  if #ids > 0 then
    local ok, vector = pcall(require, "fm.vector")
    if ok then pcall(vector.delete, "knowledge", ids) end
  end
  db.transaction(function()
    if db.dialect() == "sqlite" then
      check(db.exec("DELETE FROM knowledge_chunks_fts WHERE chunk_id IN "
        .. "(SELECT id FROM knowledge_chunks WHERE document_id = ?)", doc_id))
    end
    check(db.exec("DELETE FROM jobs WHERE dedup_key = ? AND state = 'queued'",
      kn.JOB .. ":" .. doc_id))
    check(db.exec("DELETE FROM knowledge_documents WHERE id = ?", doc_id))
  end)
end

-- Ingests now (at start the pack is searchable when the engine is ready) and drops the queued
-- job create() or an update left: it would do the same work again.
local function ingest(kn, id)
  local res = kn.ingest_now(id)
  if res.status ~= "ready" then error("kb pack: " .. id .. " not indexed: " .. res.status, 0) end
  check(db.exec("DELETE FROM jobs WHERE dedup_key = ? AND state = 'queued'", kn.JOB .. ":" .. id))
end

local function load(dir)
  local kn = require "fm.services.knowledge"
  local stats = { added = 0, updated = 0, removed = 0, unchanged = 0 }
  local have = {}
  for _, r in ipairs(check(db.query("SELECT id, filename, content_hash FROM knowledge_documents "
    .. "WHERE origin = 'pack'"))) do
    if r.filename then have[r.filename] = r end
  end
  local present = {}
  for _, name in ipairs(M.files(dir)) do
    local text, err = read(dir .. "/" .. name)
    local doc
    if text then doc, err = M.parse(text) end
    if not doc then
      log.warn("kb pack: file skipped", { file = name, reason = tostring(err) })
    else
      present[name] = true
      local hash = crypto.hex(crypto.sha256(text))
      local old = have[name]
      if old and old.content_hash == hash then
        stats.unchanged = stats.unchanged + 1
      elseif old then
        check(db.exec("UPDATE knowledge_documents SET title = ?, document_type = ?, category = ?, "
          .. "tags = ?, content = ?, content_hash = ?, status = 'pending', "
          .. "version = version + 1, updated_at = ? WHERE id = ?", doc.title, doc.document_type,
          doc.category, json.encode(json.array(doc.tags)), doc.body, hash, time.iso8601(), old.id))
        ingest(kn, old.id)
        stats.updated = stats.updated + 1
      else
        local created = kn.create(nil, {
          title = doc.title, document_type = doc.document_type, category = doc.category,
          tags = doc.tags, content = doc.body, scope = "global", origin = "pack", filename = name,
          content_type = "text/markdown",
        })
        local id = type(created) == "table" and (created.id or created.document_id) or created
        -- keyed by the whole file's hash: a change of the front matter alone counts too
        check(db.exec("UPDATE knowledge_documents SET content_hash = ? WHERE id = ?", hash, id))
        ingest(kn, id)
        stats.added = stats.added + 1
      end
    end
  end
  for name, r in pairs(have) do
    if not present[name] then
      M.purge(r.id)
      stats.removed = stats.removed + 1
    end
  end
  return stats
end

--- Brings the database in step with the pack directory (KB_PACK_DIR unless dir is given).
function M.sync(dir)
  dir = dir or require("fm.settings").kb_pack_dir
  if dir == "off" or dir == "" then
    return { added = 0, updated = 0, removed = 0, unchanged = 0 }
  end
  local stats
  if db.dialect() == "postgres" then
    stats = db.transaction(function()
      check(db.query("SELECT pg_advisory_xact_lock(?)", LOCK_ID))
      return load(dir)
    end)
  else
    -- one write transaction: one commit (and its fsyncs) for the whole pack
    stats = db.transaction(load, dir)
  end
  if stats.added + stats.updated + stats.removed > 0 then
    log.info("kb pack loaded", { dir = dir, added = stats.added, updated = stats.updated,
                                 removed = stats.removed, unchanged = stats.unchanged })
  end
  return stats
end

return M
