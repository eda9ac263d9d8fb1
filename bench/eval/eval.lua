-- Playbook evaluation: every incident bundle of bench/eval/incidents/<NN-name>/ (evidence files
-- plus expected.json {kind, category, symptom, notes}) through the investigation engine's
-- offline path, against knowledge search alone in the same run.
--
--   faultmaven exec bench/eval/eval.lua [--verbose] [--only SUBSTRING] [--dir DIR]
--
-- Playbooks: ctx = fm.agent.context.from_files(files, {symptom, search_kb}); result =
-- fm.agent.runner.run(ctx). The kind ranking is result.scores (playbook ids, best first, score
-- > 0 only); the category ranking is the conclusion's category, then the categories of
-- result.hypotheses (best first), then the matched playbooks' categories, distinct.
-- Peer, knowledge search alone (fm.services.retrieval over the kb/ pack, hybrid, threshold 0;
-- the evidence digests analysed with the built-in signatures only, no playbook signals):
--   kb-fused   one search with the symptom and one with each evidence digest, each document's
--              best chunk score summed over the searches (CombSUM): the primary peer
--   kb-concat  one search with the symptom and the digests joined (cut at retrieval.MAX_QUERY)
--   kb-symptom one search with the symptom alone
-- The runbook file names (without .md) are the kinds. The peer has no root-cause category.
--
-- A bundle whose kind has no loaded playbook still counts (a miss for the playbooks); the table
-- marks it "no playbook". It runs on its own data: a fresh SQLite database and vector store in
-- a temp dir (it starts itself again with FM_DATA_DIR and DATABASE_URL set), the pack loaded as
-- at a first start.
local argv = arg or {}
local verbose, only, dir = false, nil, nil
for i, a in ipairs(argv) do
  if a == "--verbose" then verbose = true end
  if a == "--only" then only = argv[i + 1] end
  if a == "--dir" then dir = argv[i + 1] end
end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

if not os.getenv("FM_EVAL_CHILD") then
  local p = assert(io.popen("mktemp -d /tmp/fm-eval-XXXXXX"))
  local tmp = p:read("l")
  p:close()
  local rest = {}
  for _, a in ipairs(argv) do rest[#rest + 1] = sh_quote(a) end
  local cmd = string.format("FM_EVAL_CHILD=1 FM_DATA_DIR=%s DATABASE_URL=%s "
    .. "LOG_LEVEL=${LOG_LEVEL:-error} %s exec %s %s", sh_quote(tmp),
    sh_quote("sqlite:///" .. tmp .. "/kb.db"), sh_quote(arg[-1]), sh_quote(arg[0]),
    table.concat(rest, " "))
  local ok, _, code = os.execute(cmd)
  os.execute("rm -rf " .. sh_quote(tmp))
  os.exit(ok and 0 or (code or 1))
end

local analyze = require "fm.analyze"
local db = require "fm.db"
local json = require "fm.json"
local settings = require "fm.settings"
local time = require "fm.time"

dir = dir or (settings.home .. "/bench/eval/incidents")

require("fm.db.migrate").up()
local t0 = time.monotonic()
local loaded = require("fm.kb.pack").sync(settings.home .. "/kb")
local pack_s = time.monotonic() - t0
local retrieval = require "fm.services.retrieval"

local kind_of_doc = {}
for _, r in ipairs(assert(db.query("SELECT id, filename FROM knowledge_documents "
  .. "WHERE origin = 'pack'"))) do
  kind_of_doc[r.id] = (r.filename:gsub("%.md$", ""))
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- ---- bundles -----------------------------------------------------------------------------------

local bundles = {}
for _, name in ipairs(lines_of("ls -1 " .. sh_quote(dir))) do
  local path = dir .. "/" .. name
  local f = io.open(path .. "/expected.json", "rb")
  if f and (not only or name:find(only, 1, true)) then
    f:close()
    local exp = json.decode(read_file(path .. "/expected.json"))
    assert(type(exp) == "table" and type(exp.kind) == "string" and type(exp.symptom) == "string",
      name .. "/expected.json: needs kind, category, symptom")
    local files = {}
    for _, fname in ipairs(lines_of("ls -1 " .. sh_quote(path))) do
      if fname ~= "expected.json" then files[#files + 1] = path .. "/" .. fname end
    end
    bundles[#bundles + 1] = { name = name, exp = exp, files = files }
  elseif f then
    f:close()
  end
end
assert(#bundles > 0, "no bundles under " .. dir)

-- ---- playbooks ----------------------------------------------------------------------------------

local ok_pb, playbooks = pcall(require, "fm.playbooks")
local reg = ok_pb and playbooks.registry() or { list = {}, by_id = {}, errors = {} }
local ok_ctx, context = pcall(require, "fm.agent.context")
local ok_run, runner = pcall(require, "fm.agent.runner")
if not (ok_ctx and ok_run) then
  print("fm.agent.context / fm.agent.runner not available: " .. tostring(ok_ctx and runner
    or context))
end

-- ctx.search_kb as the engine offers it: the pack, as a user who sees the global documents
local function search_kb(query, limit)
  local out = {}
  local okr, ranked = pcall(retrieval.rank, nil, { query = query, limit = limit or 3 })
  if not okr then return out end
  for _, e in ipairs(ranked) do
    local c = e.chunk
    out[#out + 1] = { document_id = c.document_id, title = c.title, category = c.category,
                      tags = e.tags, snippet = (c.content or ""):sub(1, 300), score = e.score,
                      heading = c.heading }
  end
  return out
end

local function push_distinct(list, seen, v)
  if type(v) == "string" and v ~= "" and not seen[v] then
    seen[v] = true
    list[#list + 1] = v
  end
end

local function playbook_ranking(result)
  local kinds, cats, seen = {}, {}, {}
  for _, s in ipairs(result.scores or {}) do
    if (tonumber(s.score) or 0) > 0 then kinds[#kinds + 1] = s.id end
  end
  if result.conclusion then push_distinct(cats, seen, result.conclusion.category) end
  for _, h in ipairs(result.hypotheses or {}) do push_distinct(cats, seen, h.category) end
  for _, m in ipairs(result.matched or {}) do push_distinct(cats, seen, m.category) end
  return kinds, cats
end

-- ---- knowledge search peer ----------------------------------------------------------------------

-- {doc id -> best chunk score} of one search
local function doc_scores(query)
  local best = {}
  if query == "" then return best end
  for _, e in ipairs(retrieval.rank(nil, { query = query, limit = 30, threshold = 0 })) do
    local d = e.chunk.document_id
    if not best[d] or e.score > best[d] then best[d] = e.score end
  end
  return best
end

local function ranked_kinds(sum)
  local list = {}
  for d, s in pairs(sum) do
    if kind_of_doc[d] then list[#list + 1] = { kind = kind_of_doc[d], score = s } end
  end
  table.sort(list, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.kind < b.kind
  end)
  local out = {}
  for i, e in ipairs(list) do out[i] = e.kind end
  return out
end

local function peer_rankings(symptom, digests)
  local fused = {}
  for _, q in ipairs({ symptom, table.unpack(digests) }) do
    for d, s in pairs(doc_scores(q)) do fused[d] = (fused[d] or 0) + s end
  end
  local concat = symptom .. "\n" .. table.concat(digests, "\n")
  if #concat > retrieval.MAX_QUERY then
    concat = concat:sub(1, retrieval.MAX_QUERY):gsub("[\128-\191]+$", ""):gsub("[\192-\255]$", "")
  end
  return { fused = ranked_kinds(fused), concat = ranked_kinds(doc_scores(concat)),
           symptom = ranked_kinds(doc_scores(symptom)) }
end

-- ---- run ----------------------------------------------------------------------------------------

local function rank_of(list, v)
  for i, x in ipairs(list) do if x == v then return i end end
end

local SYSTEMS = { "playbooks", "kb-fused", "kb-concat", "kb-symptom" }
local tally = {}
for _, s in ipairs(SYSTEMS) do
  tally[s] = { top1 = 0, top3 = 0, cat1 = 0, cat3 = 0, sub1 = 0, sub3 = 0 }
end
local t_ctx, t_run, t_peer = {}, {}, {}
local no_playbook, failures, rows = 0, {}, {}

for _, b in ipairs(bundles) do
  local exp = b.exp
  local row = { b = b, has_pb = reg.by_id[exp.kind] ~= nil }
  if not row.has_pb then no_playbook = no_playbook + 1 end
  local digests = {}
  if ok_ctx and ok_run then
    local s = time.monotonic()
    local ctx, err = context.from_files(b.files, { symptom = exp.symptom, search_kb = search_kb })
    t_ctx[#t_ctx + 1] = time.monotonic() - s
    if not ctx then
      row.err = "context: " .. tostring(err)
      row.kinds, row.cats = {}, {}
    else
      s = time.monotonic()
      local okr, result = pcall(runner.run, ctx)
      t_run[#t_run + 1] = time.monotonic() - s
      if okr and type(result) == "table" then
        row.kinds, row.cats = playbook_ranking(result)
        row.result = result
        for _, f in ipairs(result.failed or {}) do
          failures[#failures + 1] = string.format("%s: %s %s%s %s: %s", b.name, f.id, f.phase,
            f.step and (" " .. f.step) or "", f.kind, tostring(f.message):sub(1, 200))
        end
      else
        row.err = "runner raised: " .. tostring(result)
        row.kinds, row.cats = {}, {}
      end
    end
  else
    row.kinds, row.cats = {}, {}
  end
  -- the peer's digests come from the built-in signatures only: the playbooks' signals would
  -- put their names (disk_full_inodes ...) into the digests, playbook knowledge the peer lacks
  for _, path in ipairs(b.files) do
    local r = analyze.file(path, { filename = path:match("[^/]+$") })
    digests[#digests + 1] = r and r.digest or ""
  end
  local s = time.monotonic()
  row.peer = peer_rankings(exp.symptom, digests)
  t_peer[#t_peer + 1] = time.monotonic() - s

  local function score(system, kinds, cats)
    local r, t = rank_of(kinds, exp.kind), tally[system]
    if r == 1 then t.top1 = t.top1 + 1 end
    if r and r <= 3 then t.top3 = t.top3 + 1 end
    if row.has_pb and r == 1 then t.sub1 = t.sub1 + 1 end
    if row.has_pb and r and r <= 3 then t.sub3 = t.sub3 + 1 end
    if cats then
      local c = rank_of(cats, exp.category)
      if c == 1 then tally[system].cat1 = tally[system].cat1 + 1 end
      if c and c <= 3 then tally[system].cat3 = tally[system].cat3 + 1 end
    end
    return r
  end
  row.rank = score("playbooks", row.kinds, row.cats)
  row.crank = rank_of(row.cats, exp.category)
  row.prank = score("kb-fused", row.peer.fused)
  score("kb-concat", row.peer.concat)
  score("kb-symptom", row.peer.symptom)
  rows[#rows + 1] = row
end

-- ---- report -------------------------------------------------------------------------------------

local n = #bundles
local function top3(list)
  local t = {}
  for i = 1, math.min(3, #list) do t[i] = list[i] end
  return #t > 0 and table.concat(t, ", ") or "-"
end
local function hit(r) return r == 1 and "top1" or (r and r <= 3) and "top3" or "miss" end
local function mean_ms(t)
  if #t == 0 then return 0 end
  local s = 0
  for _, v in ipairs(t) do s = s + v end
  return s / #t * 1000
end
local function pct(k) return string.format("%2d/%d = %.3f", k, n, k / n) end

local nkinds = 0
for _ in pairs(kind_of_doc) do nkinds = nkinds + 1 end
print(string.format("bundles: %d (%s); kb pack: %d runbooks, loaded in %.2f s (%d added)", n, dir,
  nkinds, pack_s, loaded.added or 0))
local ids = {}
for _, p in ipairs(reg.list) do ids[#ids + 1] = p.id end
print(string.format("playbooks loaded: %d (%s); load errors: %d", #ids, table.concat(ids, " "),
  #reg.errors))
for _, e in ipairs(reg.errors) do print("  load error: " .. tostring(e.message):sub(1, 200)) end
print(string.format("bundles whose kind has no playbook: %d of %d", no_playbook, n))
print()
print(string.format("| %-34s | %-47s | %-11s | %-44s | %-4s | %-4s | %-44s | %-4s |",
  "bundle", "expected kind", "category", "playbooks top-3", "kind", "cat", "kb-fused top-3",
  "kind"))
print("|" .. string.rep("-", 36) .. "|" .. string.rep("-", 49) .. "|" .. string.rep("-", 13)
  .. "|" .. string.rep("-", 46) .. "|" .. string.rep("-", 6) .. "|" .. string.rep("-", 6) .. "|"
  .. string.rep("-", 46) .. "|" .. string.rep("-", 6) .. "|")
for _, r in ipairs(rows) do
  local exp = r.b.exp
  local got = r.err and ("ERROR " .. r.err:sub(1, 38)) or top3(r.kinds)
  print(string.format("| %-34s | %-47s | %-11s | %-44s | %-4s | %-4s | %-44s | %-4s |",
    r.b.name:sub(1, 34), exp.kind .. (r.has_pb and "" or " (no playbook)"),
    tostring(exp.category), got:sub(1, 44), hit(r.rank), hit(r.crank),
    top3(r.peer.fused):sub(1, 44), hit(r.prank)))
end
print()
print(string.format("%-11s %-18s %-18s %-18s %-18s", "system", "kind top-1", "kind top-3",
  "category top-1", "category top-3"))
for _, s in ipairs(SYSTEMS) do
  local t = tally[s]
  local c1 = s == "playbooks" and pct(t.cat1) or "n/a"
  local c3 = s == "playbooks" and pct(t.cat3) or "n/a"
  print(string.format("%-11s %-18s %-18s %-18s %-18s", s, pct(t.top1), pct(t.top3), c1, c3))
end
local function ratio(a, b) return b > 0 and string.format("%.2f", a / b) or "n/a" end
local pb, peer = tally["playbooks"], tally["kb-fused"]
print()
print(string.format("ratio playbooks / kb-fused: top-1 %s, top-3 %s", ratio(pb.top1, peer.top1),
  ratio(pb.top3, peer.top3)))
print(string.format("ratio playbooks / kb-symptom: top-1 %s, top-3 %s", ratio(pb.top1,
  tally["kb-symptom"].top1), ratio(pb.top3, tally["kb-symptom"].top3)))
local concl, nconcl = 0, 0
for _, r in ipairs(rows) do
  local c = r.result and r.result.conclusion
  if c then
    nconcl = nconcl + 1
    if c.playbook == r.b.exp.kind then concl = concl + 1 end
  end
end
print(string.format("playbooks: the runner's conclusion names the expected kind in %d of %d "
  .. "bundles (%d bundles got a conclusion)", concl, n, nconcl))
local m = n - no_playbook
print()
print(string.format("only the %d bundles whose kind has a playbook:", m))
for _, s in ipairs(SYSTEMS) do
  local t = tally[s]
  print(string.format("  %-11s kind top-1 %2d/%d = %.3f   kind top-3 %2d/%d = %.3f", s, t.sub1, m,
    m > 0 and t.sub1 / m or 0, t.sub3, m, m > 0 and t.sub3 / m or 0))
end
print(string.format("mean time per bundle: analysis + context %.1f ms, runner %.1f ms; "
  .. "peer searches (3 rankings) %.1f ms", mean_ms(t_ctx), mean_ms(t_run), mean_ms(t_peer)))
if #failures > 0 then
  print()
  print(string.format("playbook failures reported by the runner: %d", #failures))
  for _, f in ipairs(failures) do print("  " .. f) end
end
if verbose then
  print()
  for _, r in ipairs(rows) do
    if r.rank ~= 1 then
      local sc = {}
      for i, s in ipairs(r.result and r.result.scores or {}) do
        if i > 5 then break end
        sc[#sc + 1] = string.format("%s=%.2f", s.id, tonumber(s.score) or 0)
      end
      local c = r.result and r.result.conclusion
      print(string.format("%s: expected %s; scores %s; conclusion %s", r.b.name, r.b.exp.kind,
        table.concat(sc, " "), c and (tostring(c.playbook) .. "/" .. tostring(c.category)) or "-"))
    end
  end
end
