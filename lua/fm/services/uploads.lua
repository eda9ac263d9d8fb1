-- fm.services.uploads: evidence files of a case (issue 6). An upload is stored as an object
-- (fm.storage, under a generated key) and described by an uploaded_files row; the object is made
-- durable first and the row written after it, in the turn's transaction, so a crash in between
-- leaves an object that no row names (removed by M.sweep), never a row that names nothing.
--
-- Per case, a file whose SHA-256 matches an earlier upload of that case is not stored again:
-- the AttachmentResult names the earlier file (duplicate_of, duplicate_turn).
--
-- Every file is analysed (fm.analyze) before it is stored; the JSON summary and the bounded
-- text digest live in the row, and one evidence row per upload points at it.
local crypto = require "fm.crypto"
local db = require "fm.db"
local errors = require "fm.errors"
local json = require "fm.json"
local log = require "fm.log"
local settings = require "fm.settings"
local time = require "fm.time"
local check = require "fm.db.check"

local M = {}

local null = json.null
local array_mt = json.array_mt
local MB = 1024 * 1024

local function arr(t)
  if t and json.is_array(t) then return t end -- decoded arrays are marked already
  return setmetatable(t or {}, array_mt)
end
local function int(v) return math.tointeger(tonumber(v)) or 0 end
local function n(v) if v == nil then return null end return v end

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

-- fm.storage and fm.analyze are required lazily: a generation can load without them (the
-- check-config path), and their absence is a clear 503/"failed" instead of a load error.
local function storage()
  local ok, mod = pcall(require, "fm.storage")
  if not ok then errors.raise(503, "file storage is not available: " .. tostring(mod)) end
  return mod
end

local function analyzer()
  local ok, mod = pcall(require, "fm.analyze")
  if ok then return mod end
  return nil, tostring(mod)
end

-- A storage failure: 503 with the provider's code (a missing object is the caller's 404).
local function storage_error(what, msg, code)
  log.warn("uploads: storage " .. what .. " failed: " .. tostring(msg), { code = code })
  errors.raise(503, "file storage is unavailable, retry shortly: " .. tostring(msg),
    { ["Retry-After"] = "2", ["x-error-code"] = code or "STORAGE_UNAVAILABLE" })
end

-- ---- names and types ------------------------------------------------------------------------

--- The extensions accepted (lower case, with the dot), from UPLOAD_ALLOWED_EXTENSIONS.
function M.allowed_extensions()
  local out = {}
  for ext in tostring(settings.upload_allowed_extensions or ""):gmatch("[^,%s]+") do
    ext = ext:lower()
    if ext:sub(1, 1) ~= "." then ext = "." .. ext end
    out[#out + 1] = ext
  end
  return out
end

function M.max_bytes() return settings.max_upload_size_mb * MB end

-- Valid UTF-8 kept, anything else and control characters replaced: a name is only ever shown.
local function clean_text(s, max)
  s = s:gsub("[%z\1-\31\127]", "_")
  local out, i = {}, 1
  while i <= #s do
    local len = utf8.len(s, i, i) and #utf8.char(utf8.codepoint(s, i)) or nil
    if len and utf8.len(s:sub(i, i + len - 1)) then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\u{FFFD}"
      i = i + 1
    end
  end
  s = table.concat(out)
  if #s > max then
    s = s:sub(1, max)
    while #s > 0 and not utf8.len(s) do s = s:sub(1, -2) end
  end
  return s
end

--- The name shown for an upload: the last path component of what the client sent, cleaned.
-- It is only ever displayed and matched against the allowed extensions; storage keys are
-- generated (fm.storage), so no part of it reaches a file system path.
function M.display_name(filename)
  local base = tostring(filename or ""):match("([^/\\]*)$")
  base = clean_text(base, 255)
  if base == "" or base == "." or base == ".." then base = "upload" end
  return base
end

--- Raises 415 when the name's extension is not allowed. A name without an extension passes
-- (a log called "messages"); what it holds is the analysis' business.
function M.check_extension(name)
  local ext = name:match("(%.[^.]+)$")
  if not ext or name:match("^%.[^.]+$") then return end
  ext = ext:lower()
  local allowed = M.allowed_extensions()
  for _, a in ipairs(allowed) do if a == ext then return end end
  errors.raise(415, string.format("file type %s is not accepted; allowed: %s", ext,
    table.concat(allowed, " ")))
end

local UNITS = { "KB", "MB", "GB", "TB" }
function M.size_display(bytes)
  if bytes < 1024 then return string.format("%d B", bytes) end
  local v, u = bytes / 1024, 1
  while v >= 1024 and u < #UNITS do v, u = v / 1024, u + 1 end
  return string.format(v < 10 and "%.1f %s" or "%.0f %s", v, UNITS[u])
end

-- ---- intake ---------------------------------------------------------------------------------

-- The first line of the digest, as the short summary lists show.
local function short_summary(result)
  local first = (result.digest or ""):match("^[^\n]*") or ""
  if first == "" then
    first = string.format("%s (%s)", tostring(result.detailed_type or result.source_type),
      M.size_display(int(result.bytes)))
  end
  return clean_text(first, 500)
end

--- Analyses src.text or the file at src.path: {status, source_type, detailed_type, summary,
-- analysis (JSON text), digest}. A failure of the analysis does not lose the upload: it is
-- stored with status "failed".
function M.analyse(src, name, content_type)
  local mod, why = analyzer()
  local res, msg
  if mod then
    -- the playbooks' signals too, scanned in the same pass; without the set (a playbook
    -- generation that cannot compile it), the built-ins as before
    local okset, set = pcall(function() return require("fm.playbooks").signature_set() end)
    local opts = { filename = name, content_type = content_type,
                   signatures = okset and set or nil }
    local ok, r, m
    if src.text then
      ok, r, m = pcall(mod.text, src.text, opts)
    else
      ok, r, m = pcall(mod.file, src.path, opts)
    end
    if ok then res, msg = r, m else msg = tostring(r) end
  else
    msg = why
  end
  if not res then
    log.warn("uploads: analysis failed: " .. tostring(msg), { file = name })
    return { status = "failed", source_type = "text", summary = "analysis failed: "
      .. clean_text(tostring(msg), 300) }
  end
  return { status = "completed", source_type = res.source_type or "text",
           detailed_type = res.detailed_type, summary = short_summary(res),
           analysis = res.summary_json or json.encode(res.summary or {}),
           digest = res.digest or "" }
end

--- Prepares one upload of a turn. src: {path, filename, content_type, upload_source,
-- source_url, observed_at, sha256 (raw, optional), size (optional)}.
-- Returns {duplicate = row} when the case already has this content, else a pending record
-- whose object is stored and durable, its file and evidence ids already chosen (id,
-- evidence_id); M.insert writes its rows in the turn's transaction (M.discard removes the
-- object when that transaction fails).
function M.prepare(user, case_id, src)
  local sha, size = src.sha256, src.size
  if not sha and src.text then
    sha, size = crypto.sha256(src.text), #src.text
  elseif not sha then
    sha, size = crypto.sha256_file(src.path)
    if not sha then errors.raise(500, "cannot read the upload: " .. tostring(size)) end
  end
  if size > M.max_bytes() then
    errors.raise(413, string.format("the file is %s; the limit is %d MB (MAX_UPLOAD_SIZE_MB)",
      M.size_display(size), settings.max_upload_size_mb))
  end
  local hex = crypto.hex(sha)
  local dup = check(db.query("SELECT * FROM uploaded_files WHERE case_id = ? AND sha256 = ? "
    .. "ORDER BY created_at LIMIT 1", case_id, hex))[1]
  if dup then return { duplicate = dup } end
  local a = M.analyse(src, src.filename, src.content_type)
  local st = storage()
  local opts = { prefix = "cases/" .. case_id,
                 content_type = src.content_type or "application/octet-stream" }
  local put, msg, code
  if src.text then
    put, msg, code = st.put_string(src.text, opts)
  else
    put, msg, code = st.put_file(src.path, opts)
  end
  if not put then storage_error("put", msg, code) end
  return {
    id = "file_" .. crypto.random_hex(16), case_id = case_id, user_id = user.id,
    evidence_id = "ev_" .. crypto.random_hex(16), -- known before the rows: the agent names it
    filename = src.filename, content_type = src.content_type, size_bytes = size, sha256 = hex,
    storage_key = put.key, upload_source = src.upload_source or "file",
    source_url = src.source_url, observed_at = src.observed_at, analysis_status = a.status,
    source_type = a.source_type, detailed_type = a.detailed_type, summary = a.summary,
    analysis = a.analysis, digest = a.digest,
  }
end

--- In the turn's transaction: the uploaded_files row and its evidence row.
function M.insert(rec, turn)
  local t = time.iso8601()
  rec.turn_number, rec.created_at = turn, t
  check(db.exec("INSERT INTO uploaded_files (id, case_id, user_id, filename, content_type, "
    .. "size_bytes, sha256, storage_key, turn_number, upload_source, source_url, observed_at, "
    .. "analysis_status, source_type, detailed_type, summary, analysis, digest, created_at) "
    .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    rec.id, rec.case_id, rec.user_id, rec.filename, rec.content_type, rec.size_bytes, rec.sha256,
    rec.storage_key, turn, rec.upload_source, rec.source_url, rec.observed_at,
    rec.analysis_status, rec.source_type, rec.detailed_type, rec.summary, rec.analysis,
    rec.digest, t))
  check(db.exec("INSERT INTO evidence (id, case_id, file_id, category, source_type, summary, "
    .. "content, turn_number, created_at) VALUES (?, ?, ?, 'symptom_evidence', ?, ?, ?, ?, ?)",
    rec.evidence_id or ("ev_" .. crypto.random_hex(16)), rec.case_id, rec.id, rec.source_type,
    rec.summary or "", rec.digest, turn, t))
end

--- Removes the stored object of a record whose rows were not written (best effort: the
-- sweeper removes what this misses).
function M.discard(rec)
  if rec and rec.storage_key then
    local ok, st = pcall(require, "fm.storage")
    if ok then
      local done, msg = st.delete(rec.storage_key)
      if not done then log.warn("uploads: cannot remove an unused object: " .. tostring(msg)) end
    end
  end
end

--- The contract's AttachmentResult for a stored record or a duplicate.
function M.attachment(p)
  local row = p.duplicate or p
  local r = {
    file_id = row.id, filename = row.filename, file_size = int(row.size_bytes),
    source_type = row.source_type or "text", upload_source = row.upload_source or "file",
    uploaded_at = row.created_at, processing_status = row.analysis_status or "completed",
    duplicate_of = null, duplicate_turn = null,
  }
  if p.duplicate then
    r.duplicate_of, r.duplicate_turn = row.id, int(row.turn_number)
    r.processing_status = "duplicate"
  end
  return r
end

-- ---- reading --------------------------------------------------------------------------------

local function metadata(row)
  return {
    file_id = row.id, filename = row.filename, size_bytes = int(row.size_bytes),
    size_display = M.size_display(int(row.size_bytes)), uploaded_at = row.created_at,
    uploaded_at_turn = int(row.turn_number), source_type = row.source_type,
    analysis_status = row.analysis_status, summary = n(row.summary),
    source_metadata = { upload_source = row.upload_source, source_url = n(row.source_url),
                        observed_at = n(row.observed_at), content_type = n(row.content_type),
                        detailed_type = n(row.detailed_type) },
  }
end

local SORT = { uploaded_at = "created_at", filename = "filename", size_bytes = "size_bytes",
               size = "size_bytes", created_at = "created_at" }

--- UploadedFilesList of a case (the caller's case: cases.get_row first).
function M.list(case_id, q, paging)
  local limit, offset = paging(q, 50, 100)
  local col = SORT[q.sort_by or "uploaded_at"]
  if not col then
    invalid({ "query", "sort_by" }, "must be one of uploaded_at, filename, size_bytes")
  end
  local order = (q.sort_order or "desc"):lower()
  if order ~= "asc" and order ~= "desc" then
    invalid({ "query", "sort_order" }, "must be asc or desc")
  end
  local rows = check(db.query("SELECT * FROM uploaded_files WHERE case_id = ? ORDER BY " .. col
    .. " " .. order .. ", id LIMIT ? OFFSET ?", case_id, limit, offset))
  local total = int(check(db.query("SELECT COUNT(*) AS n FROM uploaded_files WHERE case_id = ?",
    case_id))[1].n)
  local files = {}
  for i, row in ipairs(rows) do files[i] = metadata(row) end
  return { files = arr(files), total_count = total, limit = limit, offset = offset,
           has_more = offset + #files < total }
end

--- The row of one upload of a case, or a 404 (ids are made here: anything else names nothing).
function M.get_row(case_id, file_id)
  if type(file_id) ~= "string" or #file_id > 64 or not file_id:match("^file_%x+$") then
    errors.raise(404, "file not found")
  end
  local row = check(db.query("SELECT * FROM uploaded_files WHERE id = ? AND case_id = ?",
    file_id, case_id))[1]
  if not row then errors.raise(404, "file not found") end
  return row
end

--- UploadedFileDetailsResponse, with the analysis (summary JSON and digest) as additions.
function M.detail(case_id, file_id)
  local row = M.get_row(case_id, file_id)
  local ev = check(db.query("SELECT * FROM evidence WHERE file_id = ? ORDER BY created_at", row.id))
  local derived = {}
  for i, e in ipairs(ev) do
    derived[i] = { evidence_id = e.id, category = e.category, source_type = e.source_type,
                   summary = e.summary, collected_at_turn = int(e.turn_number),
                   primary_purpose = null, related_hypothesis_ids = arr() }
  end
  local d = metadata(row)
  d.content_hash = row.sha256
  d.content_type = n(row.content_type)
  d.upload_source = row.upload_source
  d.derived_evidence = arr(derived)
  d.evidence_count = #derived
  d.analysis = row.analysis and json.decode(row.analysis) or null
  d.digest = n(row.digest)
  return d
end

-- Content types a browser may render inline from our origin are not echoed: downloads are
-- text/plain or octet-stream, always as an attachment, with nosniff.
local SAFE_TYPES = { ["text/plain"] = true, ["application/json"] = true, ["text/csv"] = true }

local function disposition(name)
  local ascii = name:gsub('[^%w%.%-_ ]', "_")
  local enc = name:gsub("[^%w%.%-_]", function(c) return string.format("%%%02X", c:byte()) end)
  return string.format('attachment; filename="%s"; filename*=UTF-8\'\'%s', ascii, enc)
end

--- The raw file: a streamed body and its headers.
function M.download(case_id, file_id)
  local row = M.get_row(case_id, file_id)
  local st = storage()
  local ctype = (row.content_type or ""):match("^[%w%.%-+]+/[%w%.%-+]+") or ""
  ctype = SAFE_TYPES[ctype:lower()] and ctype:lower() or "application/octet-stream"
  local body, msg, code = st.response(row.storage_key, { filename = row.filename,
    content_type = ctype })
  if not body then
    if code == "STORAGE_NOT_FOUND" then
      log.error("uploads: the object of " .. row.id .. " is missing", { key = row.storage_key })
      errors.raise(404, "the stored file is missing")
    end
    storage_error("get", msg, code)
  end
  return body, { ["Content-Type"] = ctype, ["Content-Disposition"] = disposition(row.filename),
                 ["X-Content-Type-Options"] = "nosniff",
                 ["Content-Security-Policy"] = "default-src 'none'; sandbox" }
end

-- ---- housekeeping ---------------------------------------------------------------------------

--- Removes stored objects under cases/ that no uploaded_files row names and that are older
-- than grace_s (an upload in flight has its object before its row). Returns
-- {checked, removed, kept_young, errors}.
function M.sweep(grace_s)
  grace_s = grace_s or settings.upload_sweep_grace_s or 3600
  local st = storage()
  local out = { checked = 0, removed = 0, kept_young = 0, errors = 0 }
  local cutoff = os.time() - grace_s
  local after
  repeat
    local items, next_after = st.list("cases", { after = after, limit = 500 })
    if not items then
      out.errors = out.errors + 1
      log.warn("uploads: sweep cannot list the store: " .. tostring(next_after))
      break
    end
    for _, it in ipairs(items) do
      out.checked = out.checked + 1
      local named = check(db.query("SELECT 1 AS one FROM uploaded_files WHERE storage_key = ? "
        .. "LIMIT 1", it.key))[1]
      if not named then
        if (it.last_modified or 0) > cutoff then
          out.kept_young = out.kept_young + 1
        else
          local ok, msg = st.delete(it.key)
          if ok then
            out.removed = out.removed + 1
          else
            out.errors = out.errors + 1
            log.warn("uploads: sweep cannot remove " .. it.key .. ": " .. tostring(msg))
          end
        end
      end
    end
    after = next_after
  until not after
  if out.removed > 0 or out.errors > 0 then
    log.info(string.format("uploads: sweep removed %d unreferenced objects (%d checked, "
      .. "%d errors)", out.removed, out.checked, out.errors))
  end
  return out
end

return M
