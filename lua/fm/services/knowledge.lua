-- fm.services.knowledge: knowledge documents (API.md Tiers 1 and 2), their chunks and their
-- ingestion into the full-text and vector indexes (docs/KNOWLEDGE.md).
--
-- Scopes and access (the engine has one organization per user: users.organization_id):
--   personal  read and written by its owner only;
--   team      read by every user of its organization, written by its owner and that
--             organization's admins;
--   global    read by everyone, written by admins only (role admin in users.roles); documents of
--             the built-in pack (origin 'pack') have no owner.
-- A document the caller cannot read does not exist for them (404 on every route); one they can
-- read but not write is a 403 on PUT and DELETE.
--
-- Ingestion is the job "kb.ingest" {document_id} (fm.jobs): status indexing -> chunks
-- (fm.kb.chunk) replaced in one transaction with their full-text rows -> stale vectors deleted
-- -> chunks embedded and upserted in batches (lease renewed between batches) -> status ready.
-- Chunk ids derive from the document id, the ordinal and the chunk's text, so a re-run gives the
-- same rows and the same vectors. After a crash, M.reconcile() (at the runner's start and in
-- housekeeping) makes the index and the tables agree: vectors and full-text rows without a chunk
-- are deleted, documents whose chunks lack a vector and documents left pending or indexing
-- without a job are queued again, stored files no document names are removed.
local chunker = require "fm.kb.chunk"
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local jobs = require "fm.jobs"
local json = require "fm.json"
local log = require "fm.log"
local settings = require "fm.settings"
local time = require "fm.time"
local check = require "fm.db.check"

local M = {}

local null = json.null
local array_mt = json.array_mt
local MB = 1024 * 1024

M.COLLECTION = "knowledge"
M.JOB = "kb.ingest"
M.SCOPES = { personal = true, team = true, global = true }
M.EXTENSIONS = { md = "text/markdown", markdown = "text/markdown", txt = "text/plain",
                 json = "application/json", yaml = "application/yaml",
                 yml = "application/yaml", csv = "text/csv" }
M.EMBED_BATCH = 32
M.TITLE_MAX, M.TEXT_MAX, M.TAGS_MAX, M.TAG_MAX = 500, 4000, 32, 64

local function arr(t)
  if t and json.is_array(t) then return t end
  return setmetatable(t or {}, array_mt)
end
local function n(v) if v == nil then return null end return v end
local function int(v) return math.tointeger(tonumber(v)) or 0 end

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

local function not_found() errors.raise(404, "document not found") end

-- fm.embed, fm.vector and fm.storage load lazily: a generation loads without them, and their
-- absence is a clear error where they are needed.
local function optional(name)
  local ok, mod = pcall(require, name)
  if ok then return mod end
  return nil, tostring(mod)
end

-- ---- access -----------------------------------------------------------------------------------

function M.is_admin(user)
  if not user then return false end
  for r in tostring(user.roles or ""):gmatch("[^,%s]+") do
    if r == "admin" then return true end
  end
  return false
end

--- Whether user (a users row, or nil for nobody) may read the document row.
function M.can_read(user, doc)
  if doc.scope == "global" then return true end
  if not user then return false end
  if doc.scope == "team" then return doc.organization_id == user.organization_id end
  return doc.scope == "personal" and doc.owner_id ~= nil and doc.owner_id == user.id
end

--- Whether user may change or delete the document row.
function M.can_write(user, doc)
  if not user then return false end
  if doc.scope == "global" then return M.is_admin(user) end
  if doc.scope == "team" then
    return doc.organization_id == user.organization_id
      and (doc.owner_id == user.id or M.is_admin(user))
  end
  return doc.scope == "personal" and doc.owner_id == user.id
end

--- fm.vector filter alternatives (any one matches) for what user may read.
function M.visible_filter(user)
  local f = { { scope = "global" } }
  if user then
    f[2] = { scope = "team", organization_id = user.organization_id }
    f[3] = { scope = "personal", owner_id = user.id }
  end
  return f
end

--- The same rule as SQL: a WHERE fragment over knowledge_documents (alias optional) and its
-- bound values, in order.
function M.visible_sql(user, alias)
  local p = alias and (alias .. ".") or ""
  if not user then return "(" .. p .. "scope = 'global')", {} end
  return string.format("(%sscope = 'global' OR (%sscope = 'team' AND %sorganization_id = ?) "
    .. "OR (%sscope = 'personal' AND %sowner_id = ?))", p, p, p, p, p),
    { user.organization_id, user.id }
end

-- ---- shapes -----------------------------------------------------------------------------------

local function verification(row)
  if row.origin == "pack" then return "verified", 3, "built-in knowledge pack" end
  if row.scope == "global" then return "community", 2, "published by an administrator" end
  return "experimental", 1, null
end

--- KnowledgeBaseDocument (with the ingestion's status, chunk_count and error). opts.preview:
-- the content cut to 500 bytes (lists).
function M.document(row, opts)
  local status, level, reason = verification(row)
  local content = row.content or ""
  local cut = false
  if opts and opts.preview and #content > 500 then
    content = content:sub(1, 500)
    while #content > 0 and not utf8.len(content) do content = content:sub(1, -2) end
    cut = true
  end
  local tags = json.decode(row.tags or "[]") or {}
  return {
    document_id = row.id, title = row.title, content = content, content_truncated = cut,
    document_type = row.document_type, category = n(row.category), tags = arr(tags),
    source_url = n(row.source_url), description = n(row.description), scope = row.scope,
    owner_id = n(row.owner_id), status = row.status, error = n(row.error),
    chunk_count = int(row.chunk_count), indexed_at = n(row.indexed_at),
    version = int(row.version), created_at = row.created_at, updated_at = row.updated_at,
    verification_status = status, verification_level = level, verification_reason = reason,
    source_suggestion_id = null,
    metadata = { filename = n(row.filename), content_type = n(row.content_type),
                 origin = row.origin, organization_id = row.organization_id,
                 content_hash = row.content_hash, size_bytes = #(row.content or "") },
  }
end

-- ---- reading ----------------------------------------------------------------------------------

local function valid_id(id)
  return type(id) == "string" and #id <= 64 and id:match("^doc_%x+$") ~= nil
end

--- The document row user may read, or a 404.
function M.get_row(user, id)
  if not valid_id(id) then not_found() end
  local row = check(db.query("SELECT * FROM knowledge_documents WHERE id = ?", id))[1]
  if not row or not M.can_read(user, row) then not_found() end
  return row
end

--- The document row user may write: 404 when they cannot read it, 403 when only that.
function M.get_writable(user, id)
  local row = M.get_row(user, id)
  if not M.can_write(user, row) then
    errors.raise(403, row.scope == "global" and "only administrators change global documents"
      or "only the owner (or an administrator) changes this document")
  end
  return row
end

--- GET /documents/{id}: the document and, while it has one, its ingestion job.
function M.detail(user, id)
  local row = M.get_row(user, id)
  local d = M.document(row)
  local job = check(db.query("SELECT state, attempts, max_attempts, last_error, run_after "
    .. "FROM jobs WHERE dedup_key = ? ORDER BY created_at DESC LIMIT 1", M.JOB .. ":" .. id))[1]
  if job then
    d.ingestion = { job_state = job.state, attempts = int(job.attempts),
                    max_attempts = int(job.max_attempts), last_error = n(job.last_error),
                    next_attempt_at = job.state == "queued" and job.run_after or null }
  end
  return d
end

local function text_field(v, loc, max, required)
  if v == nil or v == null or (v == "" and not required) then
    if required then invalid(loc, "field required", "value_error.missing") end
    return nil
  end
  if type(v) ~= "string" then invalid(loc, "must be a string", "type_error.str") end
  if required and not v:find("%S") then invalid(loc, "must not be blank") end
  if #v > max then invalid(loc, "at most " .. max .. " bytes") end
  if not utf8.len(v) then invalid(loc, "must be valid UTF-8") end
  if v:find("[%z\1-\8\11\12\14-\31\127]") then
    invalid(loc, "must not contain control characters")
  end
  return v
end

local function slug(v, loc, required)
  v = text_field(v, loc, 64, required)
  if v and not v:match("^[%w][%w_%-%.]*$") then
    invalid(loc, "letters, digits, '_', '-' and '.' only")
  end
  return v
end

local function url_field(v, loc)
  v = text_field(v, loc, 2048)
  if v and not v:lower():match("^https?://[^%s]+$") then
    invalid(loc, "must be an http(s) URL")
  end
  return v
end

local function split_tags(v, loc)
  local out, seen = {}, {}
  if v == nil or v == null or v == "" then return out end
  local list
  if type(v) == "string" then
    list = {}
    for t in v:gmatch("[^,]+") do list[#list + 1] = t end
  elseif type(v) == "table" then
    list = v
  else
    invalid(loc, "must be a comma-separated string or a list of strings", "type_error")
  end
  for _, t in ipairs(list) do
    if type(t) ~= "string" then invalid(loc, "tags must be strings", "type_error.str") end
    t = t:match("^%s*(.-)%s*$")
    if t ~= "" then
      if #t > M.TAG_MAX or not utf8.len(t) or t:find("[%z\1-\31\127\"\\]") then
        invalid(loc, "a tag is at most " .. M.TAG_MAX .. " characters of text without quotes, "
          .. "backslashes or control characters")
      end
      if not seen[t] then
        seen[t] = true
        out[#out + 1] = t
      end
    end
  end
  if #out > M.TAGS_MAX then invalid(loc, "at most " .. M.TAGS_MAX .. " tags") end
  return out
end

-- LIKE pattern for one tag inside the tags JSON text: % and _ are literal.
local function tag_like(t)
  return "%" .. json.encode(t):gsub("[\\%%_]", "\\%0") .. "%"
end

local function filters(user, q, with_scope)
  local vis, args = M.visible_sql(user)
  local where = { vis }
  if q.document_type and q.document_type ~= "" then
    slug(q.document_type, { "query", "document_type" })
    where[#where + 1] = "document_type = ?"
    args[#args + 1] = q.document_type
  end
  local tags = split_tags(q.tags, { "query", "tags" })
  if #tags > 0 then
    local any = {}
    for _, t in ipairs(tags) do
      any[#any + 1] = "tags LIKE ? ESCAPE '\\'"
      args[#args + 1] = tag_like(t)
    end
    where[#where + 1] = "(" .. table.concat(any, " OR ") .. ")"
  end
  if with_scope and q.scope and q.scope ~= "" then
    if not M.SCOPES[q.scope] then
      invalid({ "query", "scope" }, "must be one of personal, team, global", "type_error.enum")
    end
    where[#where + 1] = "scope = ?"
    args[#args + 1] = q.scope
  end
  return table.concat(where, " AND "), args
end

--- GET /documents: {documents, total_count, limit, offset, has_more, scope_counts}.
function M.list(user, q)
  local limit, offset = require("fm.services.cases").paging(q, 50, 100)
  local w, args = filters(user, q, true)
  local total = int(check(db.query("SELECT COUNT(*) AS n FROM knowledge_documents WHERE " .. w,
    table.unpack(args)))[1].n)
  local page = { table.unpack(args) }
  page[#page + 1] = limit
  page[#page + 1] = offset
  local rows = check(db.query("SELECT * FROM knowledge_documents WHERE " .. w
    .. " ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?", table.unpack(page)))
  local docs = arr()
  for i, r in ipairs(rows) do docs[i] = M.document(r, { preview = true }) end
  local cw, cargs = filters(user, q, false)
  local counts = { global = 0, team = 0, personal = 0 }
  for _, r in ipairs(check(db.query("SELECT scope, COUNT(*) AS n FROM knowledge_documents "
    .. "WHERE " .. cw .. " GROUP BY scope", table.unpack(cargs)))) do
    counts[r.scope] = int(r.n)
  end
  return { documents = docs, total_count = total, limit = limit, offset = offset,
           has_more = offset + #docs < total, scope_counts = counts }
end

-- ---- snippets ---------------------------------------------------------------------------------

local function lines_of(text)
  local out = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = (l:gsub("\r$", "")) end
  if #out > 1 and out[#out] == "" then out[#out] = nil end
  return out
end

local function qint(q, name)
  local v = q[name]
  if v == nil or v == "" then return nil end
  local x = math.tointeger(tonumber(v))
  if not x then invalid({ "query", name }, "must be an integer", "type_error.integer") end
  if x < 1 then invalid({ "query", name }, "must be >= 1") end
  return x
end

--- GET /documents/{id}/snippet: DocumentSnippetResponse. A query_string without line_start
-- centres the window on the first line holding one of its words.
function M.snippet(user, id, q)
  local row = M.get_row(user, id)
  local lines = lines_of(row.content or "")
  local total = #lines
  local max_lines = qint(q, "max_lines") or 20
  if max_lines > 500 then invalid({ "query", "max_lines" }, "must be 1 to 500") end
  local first, last = qint(q, "line_start"), qint(q, "line_end")
  local words = {}
  local qs = q.query_string
  if qs and qs ~= "" then
    if #qs > 1000 or not utf8.len(qs) then
      invalid({ "query", "query_string" }, "at most 1000 characters of UTF-8")
    end
    for w in qs:lower():gmatch("[%w\128-\255_%-]+") do
      if #w >= 2 and #words < 32 then words[#words + 1] = w end
    end
  end
  if not first and #words > 0 then
    for i, l in ipairs(lines) do
      local low = l:lower()
      for _, w in ipairs(words) do
        if low:find(w, 1, true) then first = i break end
      end
      if first then break end
    end
    if first then first = math.max(1, first - max_lines // 4) end
  end
  first = first or 1
  if first > math.max(total, 1) then
    invalid({ "query", "line_start" }, "the document has " .. total .. " lines")
  end
  if last and last < first then invalid({ "query", "line_end" }, "must be >= line_start") end
  last = math.min(last or (first + max_lines - 1), first + max_lines - 1, math.max(total, 1))
  local text = table.concat(lines, "\n", first, math.min(last, total))
  local score = null
  if #words > 0 then
    local low, hit = text:lower(), 0
    for _, w in ipairs(words) do if low:find(w, 1, true) then hit = hit + 1 end end
    score = hit / #words
  end
  local vstatus, level = verification(row)
  return { document_id = row.id, title = row.title, document_type = row.document_type,
           snippet = text, line_range = arr({ first, last }), total_lines = total,
           relevance_score = score, verification_status = vstatus, verification_level = level }
end

-- ---- writing ----------------------------------------------------------------------------------

local function check_scope(user, scope, loc)
  if not M.SCOPES[scope] then
    invalid(loc, "must be one of personal, team, global", "type_error.enum")
  end
  if scope == "global" and user and not M.is_admin(user) then
    errors.raise(403, "only administrators publish global documents")
  end
end

--- Checks the document's text: valid UTF-8, no NUL, not empty, at most MAX_UPLOAD_SIZE_MB.
function M.check_content(content, loc)
  if type(content) ~= "string" then invalid(loc, "must be text", "type_error.str") end
  local max = settings.max_upload_size_mb * MB
  if #content > max then
    errors.raise(413, string.format("the document is larger than %d MB (MAX_UPLOAD_SIZE_MB)",
      settings.max_upload_size_mb))
  end
  if content:sub(1, 3) == "\239\187\191" then content = content:sub(4) end -- BOM
  if not content:find("%S") then invalid(loc, "the document is empty") end
  if content:find("\0", 1, true) or not utf8.len(content) then
    invalid(loc, "the document must be UTF-8 text (no NUL bytes)", "value_error.encoding")
  end
  return content
end

--- The allowed extension of a file name (lower case), or a 415.
function M.extension(filename)
  local ext = tostring(filename or ""):match("%.([%w]+)$")
  ext = ext and ext:lower()
  if not ext or not M.EXTENSIONS[ext] then
    errors.raise(415, "knowledge documents are md, txt, json, yaml, yml or csv files")
  end
  return ext
end

local function wake()
  local ok, c = pcall(require, "fm.jobs_core")
  if ok then c.wake() end
end

local function enqueue(id)
  return jobs.enqueue(M.JOB, { document_id = id }, { dedup_key = M.JOB .. ":" .. id })
end

--- Creates a document and queues its ingestion (one transaction). user: the owner (nil for the
-- built-in pack). fields: title, document_type, scope (default personal; global without a
-- user), content, category, tags (list), source_url, description, filename, content_type,
-- storage_key, origin ('user' or 'pack'), id (optional, 'doc_<32 hex>').
-- Returns the row. Validates like the API (422/403/413 errors).
function M.create(user, fields)
  local f = fields or {}
  local scope = f.scope or (user and "personal" or "global")
  check_scope(user, scope, { "body", "scope" })
  if not user and scope ~= "global" then error("knowledge.create: no owner for a " .. scope
    .. " document", 2) end
  local title = text_field(f.title, { "body", "title" }, M.TITLE_MAX, true)
  local dtype = slug(f.document_type, { "body", "document_type" }, true)
  local content = M.check_content(f.content, { "body", "file" })
  local tags = split_tags(f.tags, { "body", "tags" })
  local t = time.iso8601()
  local id = f.id or ("doc_" .. crypto.random_hex(16))
  local row = {
    id = id, owner_id = user and user.id or nil,
    organization_id = user and user.organization_id or "org_default", scope = scope,
    title = title, document_type = dtype,
    category = text_field(f.category, { "body", "category" }, 128),
    tags = json.encode(arr(tags)), source_url = url_field(f.source_url, { "body", "source_url" }),
    description = text_field(f.description, { "body", "description" }, M.TEXT_MAX),
    filename = f.filename, content_type = f.content_type, storage_key = f.storage_key,
    content = content, content_hash = crypto.hex(crypto.sha256(content)),
    origin = f.origin or "user", created_at = t, updated_at = t,
  }
  db.transaction(function()
    check(db.exec("INSERT INTO knowledge_documents (id, owner_id, organization_id, scope, title, "
      .. "document_type, category, tags, source_url, description, filename, content_type, "
      .. "storage_key, content, content_hash, status, origin, version, created_at, updated_at) "
      .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 1, ?, ?)",
      row.id, row.owner_id, row.organization_id, row.scope, row.title, row.document_type,
      row.category, row.tags, row.source_url, row.description, row.filename, row.content_type,
      row.storage_key, row.content, row.content_hash, row.origin, t, t))
    enqueue(id)
  end)
  wake() -- after the commit: the runner must see the job
  row.status, row.version, row.chunk_count = "pending", 1, 0
  return row
end

local function storage_mod()
  local st, why = optional("fm.storage")
  if not st then errors.raise(503, "file storage is not available: " .. why) end
  return st
end

-- The text of a multipart part (spooled parts are read from their temp file).
local function part_text(p)
  if p.value then return p.value end
  local fh = assert(io.open(p.file, "rb"))
  local s = fh:read("a")
  fh:close()
  return s
end

--- POST /documents: a multipart form (file, title, document_type, scope, category, tags,
-- source_url, description). The raw file is stored (fm.storage, prefix kb/<id>) before the row;
-- a failure after that removes it. Returns the document (status pending).
function M.upload(user, req)
  if not req.form then
    invalid({ "body" }, "a multipart form is required", "value_error.missing")
  end
  local fields, file = {}, nil
  for _, p in ipairs(req.form) do
    if p.name == "file" or p.filename ~= nil then
      if p.name ~= "file" then invalid({ "body", p.name }, "only the file field carries a file") end
      if file then invalid({ "body", "file" }, "one file per document") end
      file = p
    elseif fields[p.name] ~= nil then
      invalid({ "body", p.name }, "given more than once")
    else
      if p.size > 64 * 1024 then invalid({ "body", p.name }, "at most 65536 bytes") end
      fields[p.name] = part_text(p)
    end
  end
  if not file then invalid({ "body", "file" }, "field required", "value_error.missing") end
  local ext = M.extension(file.filename)
  if file.size > settings.max_upload_size_mb * MB then
    errors.raise(413, string.format("the file is larger than %d MB (MAX_UPLOAD_SIZE_MB)",
      settings.max_upload_size_mb))
  end
  -- check what can be checked before anything is stored
  local scope = fields.scope
  if scope == nil or scope == "" then scope = "personal" end
  check_scope(user, scope, { "body", "scope" })
  text_field(fields.title, { "body", "title" }, M.TITLE_MAX, true)
  slug(fields.document_type, { "body", "document_type" }, true)
  local raw = part_text(file)
  local content = M.check_content(raw, { "body", "file" })
  local name = require("fm.services.uploads").display_name(file.filename)
  local id = "doc_" .. crypto.random_hex(16)
  local ctype = M.EXTENSIONS[ext]
  local st = storage_mod()
  local put, msg, code = st.put_string(raw, { prefix = "kb/" .. id, content_type = ctype })
  if not put then
    log.warn("knowledge: storage put failed: " .. tostring(msg), { code = code })
    errors.raise(503, "file storage is unavailable, retry shortly: " .. tostring(msg),
      { ["Retry-After"] = "2", ["x-error-code"] = code or "STORAGE_UNAVAILABLE" })
  end
  local ok, row = pcall(M.create, user, {
    id = id, title = fields.title, document_type = fields.document_type, scope = scope,
    category = fields.category, tags = fields.tags, source_url = fields.source_url,
    description = fields.description, filename = name, content_type = ctype,
    storage_key = put.key, content = content })
  if not ok then
    local done, dmsg = st.delete(put.key)
    if not done then log.warn("knowledge: cannot remove an unused object: " .. tostring(dmsg)) end
    error(row, 0)
  end
  return M.document(row)
end

local UPDATABLE = { title = true, description = true, tags = true, category = true,
                    document_type = true, scope = true, source_url = true, content = true }

--- PUT /documents/{id}: JSON {title, description, tags, category, document_type, scope,
-- source_url, content}; null clears an optional field. A new content or scope re-ingests.
function M.update(user, id, body)
  if type(body) ~= "table" or json.is_array(body) then
    invalid({ "body" }, "a JSON object is required", "type_error")
  end
  for k in pairs(body) do
    if not UPDATABLE[k] then invalid({ "body", k }, "unknown field", "value_error.extra") end
  end
  local row = M.get_writable(user, id)
  local set, args = {}, {}
  local function put(col, v)
    set[#set + 1] = col .. " = ?"
    args[#args + 1] = v
  end
  if body.title ~= nil then put("title", text_field(body.title, { "body", "title" },
    M.TITLE_MAX, true)) end
  if body.document_type ~= nil then
    put("document_type", slug(body.document_type, { "body", "document_type" }, true))
  end
  if body.description ~= nil then
    put("description", text_field(body.description, { "body", "description" }, M.TEXT_MAX))
  end
  if body.category ~= nil then put("category", text_field(body.category, { "body", "category" },
    128)) end
  if body.source_url ~= nil then put("source_url", url_field(body.source_url,
    { "body", "source_url" })) end
  if body.tags ~= nil then put("tags", json.encode(arr(split_tags(body.tags,
    { "body", "tags" })))) end
  local reingest, new_content = false, nil
  if body.scope ~= nil and body.scope ~= row.scope then
    check_scope(user, body.scope, { "body", "scope" })
    if body.scope == "personal" and row.owner_id ~= user.id then
      errors.raise(403, "only the owner makes a document personal")
    end
    put("scope", body.scope)
    reingest = true -- the vectors carry the scope in their metadata
  end
  if body.content ~= nil then
    local content = M.check_content(body.content, { "body", "content" })
    local hash = crypto.hex(crypto.sha256(content))
    if hash ~= row.content_hash then
      put("content", content)
      put("content_hash", hash)
      reingest = true
      new_content = content
    end
  end
  -- the stored file follows the content: the new one is stored before the row names it, the
  -- old one removed after the commit (a crash in between leaves a file the sweep removes)
  local old_key
  if new_content and row.storage_key then
    local st = storage_mod()
    local stored, msg, code = st.put_string(new_content, { prefix = "kb/" .. row.id,
      content_type = row.content_type or "text/plain" })
    if not stored then
      errors.raise(503, "file storage is unavailable, retry shortly: " .. tostring(msg),
        { ["Retry-After"] = "2", ["x-error-code"] = code or "STORAGE_UNAVAILABLE" })
    end
    put("storage_key", stored.key)
    old_key = row.storage_key
  end
  if reingest then
    set[#set + 1] = "status = 'pending'"
    set[#set + 1] = "error = NULL"
  end
  if #set > 0 then
    set[#set + 1] = "version = version + 1"
    put("updated_at", time.iso8601())
    args[#args + 1] = row.id
    db.transaction(function()
      check(db.exec("UPDATE knowledge_documents SET " .. table.concat(set, ", ")
        .. " WHERE id = ?", table.unpack(args)))
      if reingest then enqueue(row.id) end
    end)
  end
  if old_key then
    local done, msg = storage_mod().delete(old_key)
    if not done then log.warn("knowledge: old file of " .. row.id .. " left: " .. tostring(msg)) end
  end
  local out = M.document(check(db.query("SELECT * FROM knowledge_documents WHERE id = ?",
    row.id))[1])
  if reingest then wake() end
  return out
end

-- Deletes a document's chunks and their full-text rows (in the caller's transaction).
local function delete_chunks(doc_id)
  if db.dialect() == "sqlite" then
    check(db.exec("DELETE FROM knowledge_chunks_fts WHERE chunk_id IN (SELECT id FROM "
      .. "knowledge_chunks WHERE document_id = ?)", doc_id))
  end
  check(db.exec("DELETE FROM knowledge_chunks WHERE document_id = ?", doc_id))
end

local function chunk_ids(doc_id)
  local ids = {}
  for i, r in ipairs(check(db.query("SELECT id FROM knowledge_chunks WHERE document_id = ? "
    .. "ORDER BY ordinal", doc_id))) do ids[i] = r.id end
  return ids
end

local function delete_vectors(ids)
  if #ids == 0 then return true end
  local vector = optional("fm.vector")
  if not vector then return true end
  for i = 1, #ids, 500 do
    local ok, msg = vector.delete(M.COLLECTION, { table.unpack(ids, i, math.min(i + 499, #ids)) })
    if not ok then return nil, msg end
  end
  return true
end

--- Deletes a document user may write: rows (chunks, full text), vectors, stored file. A vector
-- or file left behind by a failure is removed by the reconcile step.
function M.delete(user, id)
  local row = M.get_writable(user, id)
  local ids
  db.transaction(function()
    ids = chunk_ids(row.id)
    delete_chunks(row.id)
    check(db.exec("DELETE FROM jobs WHERE dedup_key = ? AND state = 'queued'", M.JOB .. ":" .. id))
    check(db.exec("DELETE FROM knowledge_documents WHERE id = ?", row.id))
  end)
  local ok, msg = delete_vectors(ids)
  if not ok then
    log.warn("knowledge: vectors of " .. id .. " left for reconcile: " .. tostring(msg))
  end
  if row.storage_key then
    local st = optional("fm.storage")
    local done, smsg = true, nil
    if st then done, smsg = st.delete(row.storage_key) end
    if not done then log.warn("knowledge: stored file of " .. id .. " left: " .. tostring(smsg)) end
  end
end

--- POST /documents/bulk-delete {document_ids: [...]} -> {deleted, not_found, forbidden}.
function M.bulk_delete(user, body)
  local ids = type(body) == "table" and body.document_ids
  if type(ids) ~= "table" or not json.is_array(ids) then
    invalid({ "body", "document_ids" }, "a list of document ids is required", "type_error.list")
  end
  if #ids > 100 then invalid({ "body", "document_ids" }, "at most 100 ids") end
  local out = { deleted = arr(), not_found = arr(), forbidden = arr() }
  for _, id in ipairs(ids) do
    if type(id) ~= "string" then invalid({ "body", "document_ids" }, "ids are strings") end
    local ok, err = pcall(M.delete, user, id)
    if ok then out.deleted[#out.deleted + 1] = id
    elseif errors.is_http(err) and err.status == 404 then out.not_found[#out.not_found + 1] = id
    elseif errors.is_http(err) and err.status == 403 then out.forbidden[#out.forbidden + 1] = id
    else error(err, 0) end
  end
  out.deleted_count = #out.deleted
  return out
end

-- ---- ingestion --------------------------------------------------------------------------------

--- The subset of ids that name chunks, as a set.
function M.existing_chunks(ids)
  local found = {}
  if #ids == 0 then return found end
  local marks = string.rep("?, ", #ids - 1) .. "?"
  for _, r in ipairs(check(db.query("SELECT id FROM knowledge_chunks WHERE id IN (" .. marks
    .. ")", table.unpack(ids)))) do
    found[r.id] = true
  end
  return found
end

--- The chunk id of a document's ordinal-th chunk with this text.
function M.chunk_id(doc_id, ordinal, content)
  return "chk_" .. crypto.hex(crypto.sha256(doc_id .. "\0" .. ordinal .. "\0" .. content))
    :sub(1, 32)
end

local function format_of(row)
  if row.filename then return chunker.format_for(row.filename) end
  if row.content_type == "text/plain" then return "text" end
  return "markdown"
end

local function embed_text(c)
  if c.heading and not c.content:sub(1, 300):find(c.heading, 1, true) then
    return c.heading .. "\n" .. c.content
  end
  return c.content
end

local function set_status(id, status, err)
  return check(db.exec("UPDATE knowledge_documents SET status = ?, error = ? WHERE id = ?",
    status, err, id))
end

--- Ingests one document now (the job's body; the pack loader and the CLI call it directly).
-- job: the fm.jobs job when run by the runner (its lease is renewed between batches), or nil.
-- Returns {document_id, chunks, status} ("gone" when the document no longer exists, "stale"
-- when its content changed meanwhile: a newer job does it). Raises on a failure.
function M.ingest_now(doc_id, job)
  local row = check(db.query("SELECT * FROM knowledge_documents WHERE id = ?", doc_id))[1]
  if not row then return { document_id = doc_id, chunks = 0, status = "gone" } end
  local hash = row.content_hash
  set_status(doc_id, "indexing", nil)
  local pieces = chunker.split(row.content, format_of(row))
  local chunks = {}
  for i, c in ipairs(pieces) do
    chunks[i] = { id = M.chunk_id(doc_id, i, c.content), ordinal = i, heading = c.heading,
                  content = c.content, line_start = c.line_start, line_end = c.line_end }
  end
  local old, stale
  local t = time.iso8601()
  db.transaction(function()
    local cur = check(db.query("SELECT content_hash FROM knowledge_documents WHERE id = ?",
      doc_id))[1]
    if not cur or cur.content_hash ~= hash then stale = true return end
    old = chunk_ids(doc_id)
    delete_chunks(doc_id)
    local fts = db.dialect() == "sqlite"
    for _, c in ipairs(chunks) do
      check(db.exec("INSERT INTO knowledge_chunks (id, document_id, ordinal, heading, content, "
        .. "line_start, line_end, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", c.id, doc_id,
        c.ordinal, c.heading, c.content, c.line_start, c.line_end, t))
      if fts then
        check(db.exec("INSERT INTO knowledge_chunks_fts (heading, content, chunk_id) "
          .. "VALUES (?, ?, ?)", c.heading or "", c.content, c.id))
      end
    end
  end)
  if stale then return { document_id = doc_id, chunks = 0, status = "stale" } end
  -- vectors of chunks that are gone (the previous content)
  local keep = {}
  for _, c in ipairs(chunks) do keep[c.id] = true end
  local gone = {}
  for _, id in ipairs(old) do if not keep[id] then gone[#gone + 1] = id end end
  assert(delete_vectors(gone))
  local embed, ewhy = optional("fm.embed")
  local vector, vwhy = optional("fm.vector")
  if embed and vector then
    assert(vector.ensure(M.COLLECTION, embed.dim()))
    local meta = { document_id = doc_id, scope = row.scope, owner_id = row.owner_id or "",
                   organization_id = row.organization_id, document_type = row.document_type }
    for i = 1, #chunks, M.EMBED_BATCH do
      if job then
        if jobs.stopping() then jobs.requeue_error() end
        if not jobs.touch(job) then error("kb.ingest: lost the job's lease", 0) end
      end
      local texts = {}
      for k = i, math.min(i + M.EMBED_BATCH - 1, #chunks) do
        texts[#texts + 1] = embed_text(chunks[k])
      end
      local vecs, msg = embed.embed(texts)
      if not vecs then error("embedding failed: " .. tostring(msg), 0) end
      local items = {}
      for k, v in ipairs(vecs) do
        items[k] = { id = chunks[i + k - 1].id, vector = v, metadata = meta }
      end
      local ok, umsg = vector.upsert(M.COLLECTION, items)
      if not ok then error("vector upsert failed: " .. tostring(umsg), 0) end
    end
  else
    log.warn("knowledge: no vector index (" .. tostring(ewhy or vwhy):match("^[^\n]*")
      .. "): " .. doc_id .. " is indexed for full-text search only")
  end
  local res = check(db.exec("UPDATE knowledge_documents SET status = 'ready', error = NULL, "
    .. "chunk_count = ?, indexed_at = ? WHERE id = ? AND content_hash = ?", #chunks,
    time.iso8601(), doc_id, hash))
  if res.changes == 0 then
    -- deleted or changed while the vectors were written: those whose chunk is gone would be
    -- orphans (the delete, or the newer ingestion, may have run before this upsert)
    local ids = {}
    for i, c in ipairs(chunks) do ids[i] = c.id end
    local orphans = {}
    for i = 1, #ids, 500 do
      local part = { table.unpack(ids, i, math.min(i + 499, #ids)) }
      local found = M.existing_chunks(part)
      for _, id in ipairs(part) do if not found[id] then orphans[#orphans + 1] = id end end
    end
    assert(delete_vectors(orphans))
  end
  return { document_id = doc_id, chunks = #chunks,
           status = res.changes > 0 and "ready" or "stale" }
end

jobs.handlers[M.JOB] = function(payload, job)
  local id = payload.document_id
  if type(id) ~= "string" then error("kb.ingest: no document_id", 0) end
  local ok, err = pcall(M.ingest_now, id, job)
  if not ok then
    if err ~= nil and tostring(err) ~= "jobs: requeue" then
      pcall(set_status, id, "pending", "attempt " .. tostring(job and job.attempts) .. ": "
        .. tostring(err):sub(1, 1000))
    end
    error(err, 0)
  end
end

jobs.handlers[M.JOB .. ":failed"] = function(payload, _, msg)
  set_status(payload.document_id, "failed", tostring(msg):sub(1, 1000))
end

-- ---- recovery ---------------------------------------------------------------------------------

--- Makes the indexes and the tables agree (after a crash; safe to run anywhere, any time).
-- Returns {orphan_vectors, orphan_fts, requeued, orphan_files}.
function M.reconcile()
  local out = { orphan_vectors = 0, orphan_fts = 0, requeued = 0, orphan_files = 0 }
  if db.dialect() == "sqlite" then
    out.orphan_fts = check(db.exec("DELETE FROM knowledge_chunks_fts WHERE chunk_id NOT IN "
      .. "(SELECT id FROM knowledge_chunks)")).changes
  end
  local requeue = {}
  local vector = optional("fm.vector")
  if vector then
    local indexed, after = {}, nil
    repeat
      local ids, nxt = vector.ids(M.COLLECTION, after, 500)
      if not ids then break end
      local found = M.existing_chunks(ids)
      local orphans = {}
      for _, id in ipairs(ids) do
        if found[id] then indexed[id] = true else orphans[#orphans + 1] = id end
      end
      if #orphans > 0 then
        assert(delete_vectors(orphans))
        out.orphan_vectors = out.orphan_vectors + #orphans
      end
      after = nxt
    until not after or #ids == 0
    -- chunks of ready documents without a vector: their document is ingested again
    local last = ""
    while true do
      local rows = check(db.query("SELECT c.id, c.document_id FROM knowledge_chunks c JOIN "
        .. "knowledge_documents d ON d.id = c.document_id WHERE d.status = 'ready' AND c.id > ? "
        .. "ORDER BY c.id LIMIT 1000", last))
      if #rows == 0 then break end
      for _, r in ipairs(rows) do
        if not indexed[r.id] then requeue[r.document_id] = true end
        last = r.id
      end
    end
  end
  -- documents left pending or indexing with no job queued or running
  for _, r in ipairs(check(db.query("SELECT d.id FROM knowledge_documents d WHERE d.status IN "
    .. "('pending', 'indexing') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.dedup_key = "
    .. "'" .. M.JOB .. ":' || d.id AND j.state IN ('queued', 'running'))"))) do
    requeue[r.id] = true
  end
  for id in pairs(requeue) do
    enqueue(id)
    out.requeued = out.requeued + 1
  end
  local ok, n_files = pcall(M.sweep_files)
  if ok then out.orphan_files = n_files
  else log.warn("knowledge: file sweep failed: " .. tostring(n_files)) end
  if out.orphan_vectors + out.orphan_fts + out.requeued + out.orphan_files > 0 then
    log.info("knowledge: reconciled the index with the tables", out)
  end
  return out
end

--- Removes stored files under kb/ that no document names, once older than grace_s (an upload
-- in flight stores its file before its row). Returns the number removed.
function M.sweep_files(grace_s)
  grace_s = grace_s or settings.upload_sweep_grace_s or 3600
  local st = optional("fm.storage")
  if not st then return 0 end
  local removed, after = 0, nil
  local cutoff = os.time() - grace_s
  repeat
    local items, nxt = st.list("kb", { after = after, limit = 500 })
    if not items then error("cannot list the store: " .. tostring(nxt), 0) end
    for _, it in ipairs(items) do
      if (it.last_modified or 0) <= cutoff then
        local named = check(db.query("SELECT 1 AS one FROM knowledge_documents WHERE "
          .. "storage_key = ? LIMIT 1", it.key))[1]
        if not named and st.delete(it.key) then removed = removed + 1 end
      end
    end
    after = nxt
  until not after
  return removed
end

jobs.on_start.knowledge = M.reconcile

-- ---- stats ------------------------------------------------------------------------------------

--- GET /stats: what the caller can see, by type, scope and status; chunks; the vector index,
-- the embedding model and the queue.
function M.stats(user)
  local vis, args = M.visible_sql(user, "d")
  local function group(col)
    local out = {}
    for _, r in ipairs(check(db.query("SELECT d." .. col .. " AS k, COUNT(*) AS n FROM "
      .. "knowledge_documents d WHERE " .. vis .. " GROUP BY d." .. col, table.unpack(args)))) do
      out[r.k] = int(r.n)
    end
    return out
  end
  local total = int(check(db.query("SELECT COUNT(*) AS n FROM knowledge_documents d WHERE "
    .. vis, table.unpack(args)))[1].n)
  local chunks = int(check(db.query("SELECT COUNT(*) AS n FROM knowledge_chunks c JOIN "
    .. "knowledge_documents d ON d.id = c.document_id WHERE " .. vis, table.unpack(args)))[1].n)
  local queued = int(check(db.query("SELECT COUNT(*) AS n FROM jobs WHERE kind = ? AND state "
    .. "IN ('queued', 'running')", M.JOB))[1].n)
  local out = { total_documents = total, total_chunks = chunks,
                by_type = group("document_type"), by_scope = group("scope"),
                by_status = group("status"), queue_depth = queued,
                vector_count = null, embedding_model = null, embedding_dim = null }
  local scope = { global = 0, team = 0, personal = 0 }
  for k, v in pairs(out.by_scope) do scope[k] = v end
  out.by_scope = scope
  local vector = optional("fm.vector")
  if vector then
    local ok, c = pcall(vector.count, M.COLLECTION)
    if ok and c then out.vector_count = c end
  end
  local embed = optional("fm.embed")
  if embed then
    local ok, m = pcall(embed.model)
    if ok then out.embedding_model = m end
    local ok2, d = pcall(embed.dim)
    if ok2 then out.embedding_dim = d end
  end
  return out
end

return M
