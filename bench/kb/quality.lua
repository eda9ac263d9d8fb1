-- Retrieval quality of the built-in knowledge pack: every query of kb/eval/queries.tsv (query
-- <TAB> the runbook file that answers it) through fm.services.retrieval, as a user who sees the
-- global documents; prints recall@3 and MRR (over the top 10 documents) for the hybrid ranking
-- (threshold 0, and "cut": at KB_SIMILARITY_THRESHOLD as the API answers) and for each recall
-- alone, with the settings in force (EMBEDDING_PROVIDER, KB_WEIGHT_*).
--
--   faultmaven exec bench/kb/quality.lua [--verbose] [--database URL]
--
-- It runs on its own data: a fresh SQLite database (or the empty database URL names, e.g. a
-- PostgreSQL one) and vector store in a temp dir (it starts itself again with FM_DATA_DIR and
-- DATABASE_URL set), the pack loaded as at a first start. --verbose lists the queries whose
-- runbook is not in the top 3.
local verbose, database = false, nil
local argv = arg or {}
for i, a in ipairs(argv) do
  if a == "--verbose" then verbose = true end
  if a == "--database" then database = argv[i + 1] end
end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

if not os.getenv("FM_KB_QUALITY_CHILD") then
  local p = assert(io.popen("mktemp -d /tmp/fm-kbq-XXXXXX"))
  local dir = p:read("l")
  p:close()
  local cmd = string.format("FM_KB_QUALITY_CHILD=1 FM_DATA_DIR=%s DATABASE_URL=%s "
    .. "LOG_LEVEL=${LOG_LEVEL:-warn} %s exec %s%s", sh_quote(dir),
    sh_quote(database or ("sqlite:///" .. dir .. "/kb.db")), sh_quote(arg[-1]), sh_quote(arg[0]),
    verbose and " --verbose" or "")
  local ok, _, code = os.execute(cmd)
  os.execute("rm -rf " .. sh_quote(dir))
  os.exit(ok and 0 or (code or 1))
end

local db = require "fm.db"
local settings = require "fm.settings"
local time = require "fm.time"

require("fm.db.migrate").up()
local t0 = time.monotonic()
local loaded = require("fm.kb.pack").sync(settings.home .. "/kb")
local load_s = time.monotonic() - t0
local retrieval = require "fm.services.retrieval"

local by_file = {}
for _, r in ipairs(assert(db.query("SELECT id, filename FROM knowledge_documents "
  .. "WHERE origin = 'pack'"))) do by_file[r.filename] = r.id end

local queries = {}
for line in io.lines(settings.home .. "/kb/eval/queries.tsv") do
  if not line:match("^%s*#") and line:match("%S") then
    local q, file = line:match("^([^\t]+)\t%s*(%S+)%s*$")
    assert(q, "kb/eval/queries.tsv: not query<TAB>file: " .. line)
    assert(by_file[file], "kb/eval/queries.tsv: no runbook " .. file)
    queries[#queries + 1] = { q = q, file = file, id = by_file[file] }
  end
end

-- Distinct documents of a ranking, in order.
local function ranked_docs(q, threshold)
  local out, seen = {}, {}
  for _, e in ipairs(retrieval.rank(nil, { query = q, limit = 30, threshold = threshold })) do
    local d = e.chunk.document_id
    if not seen[d] then
      seen[d] = true
      out[#out + 1] = d
    end
  end
  return out
end

local function run(label, weights, threshold)
  local saved = {}
  for k, v in pairs(weights) do saved[k] = settings[k]; settings[k] = v end
  local hit3, rr, lat = 0, 0, {}
  local misses = {}
  for _, c in ipairs(queries) do
    local s = time.monotonic()
    local docs = ranked_docs(c.q, threshold or 0)
    lat[#lat + 1] = time.monotonic() - s
    local rank
    for i = 1, math.min(#docs, 10) do if docs[i] == c.id then rank = i break end end
    if rank and rank <= 3 then hit3 = hit3 + 1 end
    if rank then rr = rr + 1 / rank end
    if not rank or rank > 3 then misses[#misses + 1] = { c = c, rank = rank } end
  end
  for k, v in pairs(saved) do settings[k] = v end
  table.sort(lat)
  local n = #queries
  print(string.format("%-14s recall@3 %.3f  MRR %.3f  (%d queries; p50 %.1f ms, p95 %.1f ms)",
    label, hit3 / n, rr / n, n, lat[math.max(1, n // 2)] * 1000,
    lat[math.max(1, math.ceil(n * 0.95))] * 1000))
  if verbose then
    for _, m in ipairs(misses) do
      print(string.format("    rank %-4s %-24s %s", tostring(m.rank or "-"), m.c.file, m.c.q))
    end
  end
end

local nchunks = assert(db.query("SELECT COUNT(*) AS n FROM knowledge_chunks"))[1].n
local ok_e, embed = pcall(require, "fm.embed")
print(string.format("kb pack: %d runbooks, %d chunks, loaded in %.2f s; embeddings %s; %s",
  loaded.added, tonumber(nchunks), load_s, ok_e and embed.model() or "none", db.dialect()))
run("hybrid", {})
run("hybrid, cut", {}, settings.kb_similarity_threshold)
run("keyword only", { kb_weight_vector = 0 })
run("vector only", { kb_weight_keyword = 0 })
