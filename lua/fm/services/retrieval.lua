-- fm.services.retrieval: hybrid search over the knowledge base (docs/KNOWLEDGE.md).
--
--   retrieval.validate(body) -> request        the SearchRequest checked (422 on bad input)
--   retrieval.search(user, request) -> {query, total_results, results}   API.md's shape
--   retrieval.documents(user, request) -> {query, documents, total_count}  one entry a document
--
-- Two recalls, each limited to what the caller may read:
--   * keyword: SQLite FTS5 bm25() (IDF weighted, heading counts double), or on PostgreSQL
--     ts_rank_cd() of each query term, saturated, times the term's IDF over the chunks (BM25's).
--     The user's text never reaches the full-text syntax: it is cut into words, each word is a
--     quoted FTS5 string (SQLite) or a bound plainto_tsquery() argument (PostgreSQL), OR-ed.
--   * vector: the query embedded with fm.embed, searched in fm.vector's "knowledge" collection
--     with the caller's visibility filter.
-- Fusion: keyword scores divided by the best one (0..1), the vectors' cosine (0..1), plus a
-- metadata score (the request's category, document_type and tags against the document's) and a
-- freshness score (halves every KB_FRESHNESS_HALF_LIFE_DAYS); the weighted sum over the weights
-- that apply (KB_WEIGHT_*) is the similarity_score. At most KB_MAX_CHUNKS_PER_DOCUMENT chunks of a
-- document, nothing under the threshold (the request's similarity_threshold, else
-- KB_SIMILARITY_THRESHOLD), at most `limit`.
local db = require "fm.db"
local errors = require "fm.errors"
local json = require "fm.json"
local log = require "fm.log"
local check = require "fm.db.check"

local M = {}

local null = json.null

M.MAX_QUERY = 10000 -- bytes of query text accepted
M.MAX_TERMS = 32    -- distinct words of the query used by the keyword recall
M.MAX_TERM_LEN = 64

local function invalid(loc, msg, typ)
  errors.raise(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

local function settings() return require "fm.settings" end

-- ---- the request ------------------------------------------------------------------------------

local function opt_string(body, name, max)
  local v = body[name]
  if v == nil or v == null then return nil end
  if type(v) ~= "string" then invalid({ "body", name }, "must be a string", "type_error.str") end
  if #v > max then invalid({ "body", name }, "at most " .. max .. " characters") end
  if v:find("\0", 1, true) then invalid({ "body", name }, "must not contain NUL characters") end
  if v == "" then return nil end
  return v
end

-- tags: the contract says a string (comma-separated); an array of strings is accepted too.
local function tag_list(body)
  local v = body.tags
  if v == nil or v == null then return nil end
  local out, seen = {}, {}
  local function add(t)
    if type(t) ~= "string" then invalid({ "body", "tags" }, "must be strings", "type_error.str") end
    if t:find("\0", 1, true) then invalid({ "body", "tags" }, "must not contain NUL characters") end
    t = t:match("^%s*(.-)%s*$"):lower()
    if t ~= "" and not seen[t] then seen[t] = true; out[#out + 1] = t end
  end
  if type(v) == "string" then
    if #v > 2000 then invalid({ "body", "tags" }, "at most 2000 characters") end
    for t in v:gmatch("[^,]+") do add(t) end
  elseif type(v) == "table" and json.is_array(v) then
    if #v > 50 then invalid({ "body", "tags" }, "at most 50 tags") end
    for _, t in ipairs(v) do add(t) end
  else
    invalid({ "body", "tags" }, "must be a comma-separated string", "type_error.str")
  end
  if #out == 0 then return nil end
  return out
end

--- The SearchRequest checked: {query, limit, category?, document_type?, tags?, threshold?}.
-- Raises 422 with the contract's detail list.
function M.validate(body)
  if type(body) ~= "table" or json.is_array(body) then
    invalid({ "body" }, "a JSON object is required", "type_error.dict")
  end
  local query = body.query
  if query == nil or query == null then
    invalid({ "body", "query" }, "field required", "value_error.missing")
  end
  if type(query) ~= "string" then
    invalid({ "body", "query" }, "must be a string", "type_error.str")
  end
  if not query:find("%S") then invalid({ "body", "query" }, "must not be empty") end
  if #query > M.MAX_QUERY then
    invalid({ "body", "query" }, "at most " .. M.MAX_QUERY .. " characters")
  end
  if query:find("\0", 1, true) then
    invalid({ "body", "query" }, "must not contain NUL characters")
  end
  local limit = 10
  if body.limit ~= nil and body.limit ~= null then
    limit = math.tointeger(body.limit)
    if type(body.limit) ~= "number" or not limit then
      invalid({ "body", "limit" }, "must be an integer", "type_error.integer")
    end
    if limit < 1 or limit > 100 then invalid({ "body", "limit" }, "must be 1 to 100") end
  end
  local threshold
  local t = body.similarity_threshold
  if t ~= nil and t ~= null then
    if type(t) ~= "number" or t ~= t then
      invalid({ "body", "similarity_threshold" }, "must be a number", "type_error.float")
    end
    if t < 0 or t > 1 then invalid({ "body", "similarity_threshold" }, "must be 0 to 1") end
    threshold = t
  end
  return { query = query, limit = limit, threshold = threshold,
           category = opt_string(body, "category", 200),
           document_type = opt_string(body, "document_type", 200), tags = tag_list(body) }
end

-- ---- query text -> terms ----------------------------------------------------------------------

--- The distinct lower-cased words of text (ASCII letters and digits, and runs of non-ASCII bytes,
-- as FTS5's unicode61 tokenizer splits), at most MAX_TERMS, each at most MAX_TERM_LEN bytes.
-- Nothing else survives: quotes, operators, parentheses, NUL and SQL are separators here.
function M.terms(text)
  local out, seen = {}, {}
  for w in text:gmatch("[%w\128-\255]+") do
    w = w:lower()
    if #w > M.MAX_TERM_LEN then
      w = w:sub(1, M.MAX_TERM_LEN)
      w = w:gsub("[\128-\191]+$", ""):gsub("[\192-\255]$", "") -- cut on a UTF-8 boundary
    end
    if w ~= "" and not seen[w] then
      seen[w] = true
      out[#out + 1] = w
      if #out >= M.MAX_TERMS then break end
    end
  end
  return out
end

--- An FTS5 MATCH expression for terms: each one a string literal ("..."; the words hold no
-- quote), OR-ed, so no word of the user is ever an FTS5 operator or column filter.
function M.fts5_query(terms)
  local parts = {}
  for i, t in ipairs(terms) do parts[i] = '"' .. t:gsub('"', '""') .. '"' end
  return table.concat(parts, " OR ")
end

-- ---- recalls ----------------------------------------------------------------------------------

local function visible(user, alias)
  return require("fm.services.knowledge").visible_sql(user, alias)
end

local function append(dst, src)
  for _, v in ipairs(src or {}) do dst[#dst + 1] = v end
  return dst
end

-- SQLite: bm25 over heading (weight 2) and content (1); lower is better, so negated.
local function keyword_sqlite(user, terms, k)
  local where, vargs = visible(user, "d")
  local sql = "SELECT f.chunk_id AS id, -bm25(knowledge_chunks_fts, 2.0, 1.0) AS score "
    .. "FROM knowledge_chunks_fts f JOIN knowledge_chunks c ON c.id = f.chunk_id "
    .. "JOIN knowledge_documents d ON d.id = c.document_id "
    .. "WHERE knowledge_chunks_fts MATCH ? AND d.status = 'ready' AND (" .. where .. ") "
    .. "ORDER BY score DESC LIMIT ?"
  local args = append({ M.fts5_query(terms) }, vargs)
  args[#args + 1] = k
  return check(db.query(sql, table.unpack(args)))
end

-- PostgreSQL: ts_rank_cd has no IDF. Each term's rank r (normalised by length) is saturated as
-- BM25 saturates term frequency, r / (r + 0.1) (0.1: what one occurrence of an unweighted
-- lexeme adds before the length normalisation), and weighted by the term's IDF
-- ln(1 + (N - n + 0.5) / (n + 0.5)), n the chunks holding the term, N all chunks.
local function keyword_postgres(user, terms, k)
  local n = math.min(#terms, 16)
  local tq = {}
  for i = 1, n do tq[i] = "plainto_tsquery('english', ?)" end
  local counts = { "COUNT(*) AS total" }
  for i = 1, n do
    counts[#counts + 1] = string.format("SUM(CASE WHEN tsv @@ %s THEN 1 ELSE 0 END) AS n%d",
      tq[i], i)
  end
  local crow = check(db.query("SELECT " .. table.concat(counts, ", ") .. " FROM knowledge_chunks",
    table.unpack(terms, 1, n)))[1]
  local total = tonumber(crow.total) or 0
  local where, vargs = visible(user, "d")
  local cols = { "c.id AS id" }
  for i = 1, n do cols[#cols + 1] = string.format("ts_rank_cd(c.tsv, %s, 1) AS r%d", tq[i], i) end
  local sql = "SELECT " .. table.concat(cols, ", ")
    .. " FROM knowledge_chunks c JOIN knowledge_documents d ON d.id = c.document_id"
    .. " WHERE c.tsv @@ (" .. table.concat(tq, " || ") .. ") AND d.status = 'ready' AND ("
    .. where .. ") ORDER BY ts_rank_cd(c.tsv, (" .. table.concat(tq, " || ") .. "), 1) DESC, "
    .. "c.id LIMIT ?"
  -- candidates by the plain rank, then scored with IDF below
  local args = {}
  append(args, { table.unpack(terms, 1, n) })
  append(args, { table.unpack(terms, 1, n) })
  append(args, vargs)
  append(args, { table.unpack(terms, 1, n) })
  args[#args + 1] = math.max(4 * k, 200)
  local rows = check(db.query(sql, table.unpack(args)))
  local out = {}
  for _, r in ipairs(rows) do
    local s = 0
    for i = 1, n do
      local df = tonumber(crow["n" .. i]) or 0
      local rank = tonumber(r["r" .. i]) or 0
      if rank > 0 then
        s = s + rank / (rank + 0.1) * math.log(1 + (total - df + 0.5) / (df + 0.5))
      end
    end
    out[#out + 1] = { id = r.id, score = s }
  end
  table.sort(out, function(a, b) return a.score > b.score end)
  for i = #out, k + 1, -1 do out[i] = nil end
  return out
end

--- Keyword recall: {{id = chunk id, score >= 0}, ...}, best first, at most k.
function M.keyword(user, text, k)
  local terms = M.terms(text)
  if #terms == 0 then return {} end
  if db.dialect() == "postgres" then return keyword_postgres(user, terms, k) end
  return keyword_sqlite(user, terms, k)
end

--- Vector recall: {{id = chunk id, score = 0..1}, ...} or nil, why (no provider, a failure).
function M.vector(user, text, k)
  local ok_e, embed = pcall(require, "fm.embed")
  local ok_v, vector = pcall(require, "fm.vector")
  if not (ok_e and ok_v) then return nil, "no embedding or vector provider" end
  local ok, res, err = pcall(function()
    local vecs, e = embed.embed({ text })
    if not vecs then return nil, e end
    local filter = require("fm.services.knowledge").visible_filter(user)
    return vector.search("knowledge", vecs[1], k, filter)
  end)
  if not ok then return nil, tostring(res) end
  if not res then return nil, tostring(err) end
  return res
end

-- ---- fusion -----------------------------------------------------------------------------------

-- Days since the civil date (proleptic Gregorian), for ISO 8601 timestamps without os.time's
-- time-zone games.
local function epoch_of(iso)
  local y, mo, d, h, mi, s = tostring(iso or ""):match("^(%d+)-(%d+)-(%d+)[T ](%d+):(%d+):(%d+)")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
end
M.epoch_of = epoch_of

local function decode_tags(s)
  local ok, t = pcall(json.decode, s or "[]")
  if not ok or type(t) ~= "table" then return json.array({}) end
  return t
end

-- Metadata score: the share of the request's metadata (category, document_type, each tag) the
-- document matches; nil when the request names none.
local function metadata_score(req, doc, tags)
  local want, got = 0, 0
  if req.category then
    want = want + 1
    if doc.category and doc.category:lower() == req.category:lower() then got = got + 1 end
  end
  if req.document_type then
    want = want + 1
    if doc.document_type:lower() == req.document_type:lower() then got = got + 1 end
  end
  if req.tags then
    local have = {}
    for _, t in ipairs(tags) do if type(t) == "string" then have[t:lower()] = true end end
    local hit = 0
    for _, t in ipairs(req.tags) do if have[t] then hit = hit + 1 end end
    want = want + 1
    got = got + hit / #req.tags
  end
  if want == 0 then return nil end
  return got / want
end

-- The chunks and their documents, re-checked against the caller's visibility in SQL (the vector
-- store's filter is not trusted alone), by chunk id.
local function load_chunks(user, ids)
  local out = {}
  local list = {}
  for id in pairs(ids) do list[#list + 1] = id end
  local where, vargs = visible(user, "d")
  for i = 1, #list, 200 do
    local batch = { table.unpack(list, i, math.min(i + 199, #list)) }
    local marks = string.rep("?", #batch, ", ")
    local sql = "SELECT c.id AS chunk_id, c.document_id, c.heading, c.content, c.line_start, "
      .. "c.line_end, d.title, d.document_type, d.category, d.tags, d.scope, d.owner_id, "
      .. "d.updated_at, d.source_url FROM knowledge_chunks c "
      .. "JOIN knowledge_documents d ON d.id = c.document_id "
      .. "WHERE c.id IN (" .. marks .. ") AND d.status = 'ready' AND (" .. where .. ")"
    local args = append(batch, vargs)
    for _, r in ipairs(check(db.query(sql, table.unpack(args)))) do out[r.chunk_id] = r end
  end
  return out
end

-- Scores are shown to 4 places; the threshold compares what is shown.
local function round(x) return math.floor(x * 10000 + 0.5) / 10000 end

--- The ranked chunks: {{chunk = row, score, vector, keyword, metadata, freshness}, ...}, best
-- first, capped per document and by the threshold, at most req.limit.
function M.rank(user, req)
  local s = settings()
  local k = math.max(req.limit * 5, 50)
  local kw = M.keyword(user, req.query, k)
  local vec, verr = M.vector(user, req.query, k)
  if not vec then log.warn("knowledge search without vectors", { reason = verr }) end

  local cand, best_kw = {}, 0
  for _, r in ipairs(kw) do
    local sc = tonumber(r.score) or 0
    if sc > best_kw then best_kw = sc end
    cand[r.id] = { keyword = sc, vector = 0 }
  end
  for _, r in ipairs(vec or {}) do
    -- fm.vector scores are (1 + cos) / 2: unrelated text sits at 0.5, so the cosine itself
    -- (negative ones as 0) is what counts as similarity here
    local cos = 2 * (tonumber(r.score) or 0) - 1
    if cos > 0 then
      local c = cand[r.id] or { keyword = 0, vector = 0 }
      c.vector = math.min(1, cos)
      cand[r.id] = c
    end
  end
  local rows = load_chunks(user, cand)

  local w_v, w_k = s.kb_weight_vector, s.kb_weight_keyword
  local w_m, w_f = s.kb_weight_metadata, s.kb_weight_freshness
  if not vec then w_v = 0 end
  local now = os.time()
  local half = s.kb_freshness_half_life_days * 86400
  local list = {}
  for id, c in pairs(cand) do
    local row = rows[id]
    if row then
      local tags = decode_tags(row.tags)
      local kn = best_kw > 0 and c.keyword / best_kw or 0
      local meta = metadata_score(req, row, tags)
      local t = epoch_of(row.updated_at)
      local fresh = t and 0.5 ^ (math.max(0, now - t) / half) or 0
      local wm = meta and w_m or 0
      local total = w_v + w_k + wm + w_f
      local score = total > 0 and (w_v * c.vector + w_k * kn + wm * (meta or 0) + w_f * fresh)
        / total or 0
      list[#list + 1] = { chunk = row, tags = tags, score = score, vector = c.vector,
                          keyword = kn, metadata = meta, freshness = fresh }
    end
  end
  table.sort(list, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.chunk.chunk_id < b.chunk.chunk_id
  end)
  local threshold = req.threshold or s.kb_similarity_threshold
  local per_doc, out = {}, {}
  local cap = s.kb_max_chunks_per_document
  for _, e in ipairs(list) do
    if round(e.score) < threshold or #out >= req.limit then break end
    local d = e.chunk.document_id
    if (per_doc[d] or 0) < cap then
      per_doc[d] = (per_doc[d] or 0) + 1
      out[#out + 1] = e
    end
  end
  return out
end

--- POST /api/v1/knowledge/search: {query, total_results, results}.
function M.search(user, req)
  local results = json.array({})
  for i, e in ipairs(M.rank(user, req)) do
    local c = e.chunk
    results[i] = {
      document_id = c.document_id, content = c.content, similarity_score = round(e.score),
      metadata = { title = c.title, document_type = c.document_type,
                   category = c.category or null, tags = e.tags, chunk_id = c.chunk_id,
                   heading = c.heading or null, line_start = c.line_start or null,
                   line_end = c.line_end or null, scope = c.scope,
                   source_url = c.source_url or null },
    }
  end
  return { query = req.query, total_results = #results, results = results }
end

--- POST /api/v1/knowledge/documents/search: the documents of the best chunks, one entry each,
-- with the best chunk's score and text as the snippet.
function M.documents(user, req)
  local r = { query = req.query, limit = math.min(req.limit * 2, 200), threshold = req.threshold,
              category = req.category, document_type = req.document_type, tags = req.tags }
  local docs, seen = json.array({}), {}
  for _, e in ipairs(M.rank(user, r)) do
    local c = e.chunk
    if not seen[c.document_id] and #docs < req.limit then
      seen[c.document_id] = true
      docs[#docs + 1] = {
        document_id = c.document_id, title = c.title, document_type = c.document_type,
        category = c.category or null, tags = e.tags, scope = c.scope,
        owner_id = c.owner_id or null, updated_at = c.updated_at,
        source_url = c.source_url or null, similarity_score = round(e.score),
        snippet = c.content, snippet_heading = c.heading or null,
        line_start = c.line_start or null, line_end = c.line_end or null,
      }
    end
  end
  return { query = req.query, documents = docs, total_count = #docs }
end

return M
