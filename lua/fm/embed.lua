-- fm.embed: text embeddings, from the built-in hashing embedder or any OpenAI-compatible
-- /v1/embeddings API (OpenAI, Ollama, vLLM, TEI), chosen by EMBEDDING_PROVIDER at start.
--
--   provider()     -> "hashing" | "openai"
--   dim()          -> EMBEDDING_DIM (384 by default)
--   model()        -> "hashing-v1-<dim>" | EMBEDDING_MODEL
--   embed(texts)   -> {packed, ...}: one little-endian float32 string per text, L2-normalised
--                   | nil, message, code
--   probe()        -> {provider, model, dim, latency_ms} | nil, message, code: embeds one text and
--                     checks the dimension the provider returns against EMBEDDING_DIM
--   check_index(collection) -> true | false (a store not reachable: logged); raises on a
--                     dimension mismatch, naming `faultmaven kb reindex` (fm.startup)
--   configure{provider, dim, api_base, model, api_key, batch_size, timeout_s, max_retries,
--             backoff_s}   this VM only (tests, `faultmaven exec`); nil fields: the settings
--
-- Codes: EMBED_UNAVAILABLE (cannot reach the API, 5xx/429/timeouts after the retries, or the
-- `embeddings` circuit breaker is open), EMBED_INVALID (the API refuses the request: 4xx, or the
-- model's dimension is not EMBEDDING_DIM), EMBED_ERROR (the answer is not usable: not JSON, a
-- wrong count). Misuse (texts not a list of strings) raises. docs/VECTORS.md.
local core = require "fm.embed_core"
local http = require "fm.http"
local json = require "fm.json"
local log = require "fm.log"
local time = require "fm.time"

local M = {}

M.BREAKER = "embeddings"

local cfg -- the effective settings of this VM

local function settings_cfg()
  local s = require "fm.settings"
  return {
    provider = s.embedding_provider, dim = s.embedding_dim, api_base = s.embedding_api_base,
    model = s.embedding_model, api_key = s.embedding_api_key,
    batch_size = s.embedding_batch_size, timeout_s = s.embedding_timeout_s,
    max_retries = 3, backoff_s = 0.25,
  }
end

local function conf()
  if not cfg then cfg = settings_cfg() end
  return cfg
end

function M.configure(t)
  if type(t) ~= "table" then error("embed.configure(table)", 2) end
  local c = settings_cfg()
  for k, v in pairs(t) do
    if c[k] == nil and k ~= "api_key" and k ~= "api_base" and k ~= "model" then
      error("embed.configure: unknown field " .. tostring(k), 2)
    end
    c[k] = v
  end
  if c.provider ~= "hashing" and c.provider ~= "openai" then
    error("embed.configure: provider must be hashing or openai", 2)
  end
  cfg = c
  return true
end

function M.provider() return conf().provider end
function M.dim() return conf().dim end

function M.model()
  local c = conf()
  if c.provider == "hashing" then return "hashing-v1-" .. c.dim end
  return c.model
end

local function check_texts(texts)
  if type(texts) ~= "table" then error("embed.embed(texts): expected a list of strings", 3) end
  for i = 1, #texts do
    if type(texts[i]) ~= "string" then
      error(("embed.embed: texts[%d] is a %s, expected a string"):format(i, type(texts[i])), 3)
    end
  end
end

-- Seconds to wait before retry `attempt` (1-based): exponential with jitter, or the server's
-- Retry-After when it gives one (at most 30 s).
local function backoff(c, attempt, res)
  local ra = res and res.headers and tonumber(res.headers["retry-after"])
  if ra and ra >= 0 then return math.min(ra, 30) end
  local base = c.backoff_s * 2 ^ (attempt - 1)
  return base / 2 + math.random() * base / 2
end

local function snippet(body)
  body = tostring(body or "")
  local ok, doc = pcall(json.decode, body)
  if ok and type(doc) == "table" and type(doc.error) == "table" and doc.error.message then
    return tostring(doc.error.message):sub(1, 300)
  elseif ok and type(doc) == "table" and type(doc.error) == "string" then
    return doc.error:sub(1, 300)
  end
  return body:sub(1, 300)
end

-- One batch: POST {api_base}/embeddings with retries. Returns the packed vectors or nil, msg, code.
local function openai_batch(c, batch)
  local url = c.api_base:gsub("/+$", "") .. "/embeddings"
  local headers = { ["Content-Type"] = "application/json", Accept = "application/json" }
  if c.api_key and c.api_key ~= "" then headers.Authorization = "Bearer " .. c.api_key end
  local body = json.encode({ model = c.model, input = json.array(batch) })
  local last
  for attempt = 1, c.max_retries + 1 do
    local res, err, code = http.request {
      method = "POST", url = url, headers = headers, body = body, timeout = c.timeout_s,
      connect_timeout = math.min(c.timeout_s, 10), max_body = 64 * 1024 * 1024,
      breaker = M.BREAKER,
    }
    if not res then
      if code == "CIRCUIT_OPEN" then
        return nil, "embeddings: " .. err .. " (the embeddings API failed repeatedly)",
          "EMBED_UNAVAILABLE"
      end
      last = ("embeddings: %s: %s"):format(url, err)
      if code == "too_large" then return nil, last, "EMBED_ERROR" end
    elseif res.status == 429 or res.status == 408 or res.status >= 500 then
      last = ("embeddings: %s answered %d: %s"):format(url, res.status, snippet(res.body))
    elseif res.status < 200 or res.status >= 300 then
      return nil, ("embeddings: %s answered %d: %s"):format(url, res.status, snippet(res.body)),
        "EMBED_INVALID"
    else
      local vecs, perr, kind = core.parse_openai(res.body, #batch, c.dim)
      if vecs then return vecs end
      if kind == "dim" then
        return nil, ("embeddings: model %s: %s (EMBEDDING_DIM=%d): set EMBEDDING_DIM to the "
          .. "model's dimension and rebuild the index with `faultmaven kb reindex`")
          :format(tostring(c.model), perr, c.dim), "EMBED_INVALID"
      end
      return nil, "embeddings: bad answer from " .. url .. ": " .. perr, "EMBED_ERROR"
    end
    if attempt <= c.max_retries then
      local wait = backoff(c, attempt, res)
      log.warn("embeddings request failed, retrying",
        { attempt = attempt, error = last, wait_s = wait })
      time.sleep(wait)
    end
  end
  return nil, last .. (" (after %d attempts)"):format(c.max_retries + 1), "EMBED_UNAVAILABLE"
end

function M.embed(texts)
  check_texts(texts)
  local c = conf()
  if #texts == 0 then return {} end
  if c.provider == "hashing" then return core.hashing(texts, c.dim) end
  if not c.api_base or c.api_base == "" then
    return nil, "embeddings: EMBEDDING_API_BASE is not set", "EMBED_INVALID"
  end
  local out, n = {}, #texts
  for first = 1, n, c.batch_size do
    local batch = table.move(texts, first, math.min(first + c.batch_size - 1, n), 1, {})
    local vecs, err, code = openai_batch(c, batch)
    if not vecs then return nil, err, code end
    table.move(vecs, 1, #vecs, first, out)
  end
  return out
end

-- The start-up check (fm.startup): the embedder and the vector index of `collection` must agree
-- on the dimension. openai: one probe request checks the model's dimension against EMBEDDING_DIM
-- (an unreachable API is only logged: the engine serves, full-text search still works). Then the
-- collection is ensured at EMBEDDING_DIM. Raises, naming `faultmaven kb reindex`, on a mismatch.
function M.check_index(collection)
  local c = conf()
  if c.provider == "openai" then
    local p, err, code = M.probe()
    if not p and code == "EMBED_INVALID" then error(err, 0) end
    if not p then log.warn("embeddings API not reachable at start", { error = err }) end
  end
  local vector = require "fm.vector"
  local ok, err, code = vector.ensure(collection, c.dim)
  if ok then return true end
  if code == "VECTOR_DIM_MISMATCH" then
    error(("%s (EMBEDDING_PROVIDER=%s, model %s, EMBEDDING_DIM=%d)"):format(err, c.provider,
      M.model(), c.dim), 0)
  end
  log.warn("vector store not reachable at start", { error = err, code = code })
  return false
end

function M.probe()
  local t0 = time.monotonic()
  local v, err, code = M.embed({ "faultmaven embedding probe" })
  if not v then return nil, err, code end
  return {
    provider = M.provider(), model = M.model(), dim = #v[1] // 4,
    latency_ms = math.floor((time.monotonic() - t0) * 1000 + 0.5),
  }
end

return M
