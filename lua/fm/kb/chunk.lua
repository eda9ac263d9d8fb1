-- fm.kb.chunk: splits a knowledge document into the chunks that are indexed (full text and
-- vectors). Pure Lua, deterministic: the same text always gives the same chunks.
--
--   chunk.split(text, format) -> { {heading, content, line_start, line_end}, ... }
--
-- format (chunk.format_of(filename) picks it from the extension):
--   "markdown"  sections at `#`/`##` headings (outside fenced code), of MIN..MAX bytes: a section
--               shorter than MIN is merged with the next one, a longer one than MAX is split at
--               blank lines, then sentences, then (a sentence longer than MAX) at MAX bytes on a
--               UTF-8 boundary. `###` and deeper stay inside their section.
--   "text"      windows of about WINDOW bytes that end at sentence boundaries, each starting about
--               OVERLAP bytes before the previous one ended (whole sentences).
--   "structured" (json, yaml, csv) windows of whole lines up to STRUCT_MAX bytes, cut preferably
--               where a top-level block starts (a line without indentation); for csv the header
--               line is the heading of every chunk.
-- Sizes are bytes of UTF-8. Lines are numbered from 1; a chunk's line_end is its last line.
local M = {}

M.MIN, M.MAX = 100, 3000
M.WINDOW, M.WINDOW_MAX, M.OVERLAP = 1000, 1400, 150
M.STRUCT_MAX, M.STRUCT_MIN = 1500, 500

local FORMATS = { md = "markdown", markdown = "markdown", txt = "text", text = "text",
                  json = "structured", yaml = "structured", yml = "structured",
                  csv = "structured" }

--- The format for a file name's extension ("text" when unknown).
function M.format_of(filename)
  local ext = tostring(filename or ""):match("%.([%w]+)$")
  return FORMATS[ext and ext:lower() or ""] or "text"
end

-- ---- positions and lines ----------------------------------------------------------------------

-- Byte offsets where each line starts.
local function line_starts(text)
  local starts, pos = { 1 }, 1
  while true do
    local nl = text:find("\n", pos, true)
    if not nl then break end
    starts[#starts + 1] = nl + 1
    pos = nl + 1
  end
  return starts
end

-- The line holding byte offset pos (binary search over starts).
local function line_of(starts, pos)
  local lo, hi = 1, #starts
  while lo < hi do
    local mid = (lo + hi + 1) // 2
    if starts[mid] <= pos then lo = mid else hi = mid - 1 end
  end
  return lo
end

-- Cuts s at most max bytes, backing up to a UTF-8 character boundary.
local function utf8_cut(s, max)
  if #s <= max then return #s end
  local cut = max
  while cut > 1 do
    local b = s:byte(cut + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    cut = cut - 1
  end
  return cut
end

-- A piece of text trimmed of surrounding blank space, with its byte range in the document:
-- returns content, first, last (nil when only space).
local function trimmed(text, i, j)
  local s = text:sub(i, j)
  local lead = s:match("^%s*")
  local body = s:match("^%s*(.-)%s*$")
  if body == "" then return nil end
  local first = i + #lead
  return body, first, first + #body - 1
end

-- ---- sentences --------------------------------------------------------------------------------

-- Byte ranges {i, j} of the sentences of text[i..j]: a sentence ends after . ! ? (and closing
-- quotes or brackets) followed by space, or at a blank line. Covers the whole range.
local function sentences(text, i, j)
  local out, start, pos = {}, i, i
  local c, d = 0, 0 -- the next blank line, searched again only once passed (linear time)
  while pos <= j do
    local a, b = text:find("[%.!?][\"')%]]*%s+", pos)
    if c and c < pos then c, d = text:find("\n[ \t]*\n%s*", pos) end
    if c and (not a or c < a) then a, b = c, d end
    if not a or a > j then break end
    if b > j then b = j end
    out[#out + 1] = { start, b }
    start, pos = b + 1, b + 1
  end
  if start <= j then out[#out + 1] = { start, j } end
  return out
end

-- Splits the range into sentence-or-smaller pieces no longer than max (a sentence longer than
-- max is cut at max bytes on a UTF-8 boundary).
local function small_pieces(text, i, j, max)
  local out = {}
  for _, s in ipairs(sentences(text, i, j)) do
    local a, b = s[1], s[2]
    while b - a + 1 > max do
      local cut = utf8_cut(text:sub(a, math.min(b, a + max)), max)
      out[#out + 1] = { a, a + cut - 1 }
      a = a + cut
    end
    if a <= b then out[#out + 1] = { a, b } end
  end
  return out
end

-- Packs consecutive ranges into groups of at most max bytes (a range is never split here).
local function pack(ranges, max)
  local out, cur = {}, nil
  for _, r in ipairs(ranges) do
    if cur and r[2] - cur[1] + 1 <= max then
      cur[2] = r[2]
    else
      if cur then out[#out + 1] = cur end
      cur = { r[1], r[2] }
    end
  end
  if cur then out[#out + 1] = cur end
  return out
end

-- ---- markdown ---------------------------------------------------------------------------------

-- Sections: {heading, i, j} byte ranges, a new one at each `#`/`##` heading outside code fences.
local function md_sections(text, starts)
  local out, cur = {}, { heading = nil, i = 1 }
  local fence
  for n, s in ipairs(starts) do
    local e = (starts[n + 1] or #text + 2) - 2
    local line = text:sub(s, e)
    local f = line:match("^%s*(```)") or line:match("^%s*(~~~)")
    if f then
      if not fence then fence = f elseif f == fence then fence = nil end
    elseif not fence then
      local h = line:match("^##?%s+(.-)%s*#*%s*$")
      if h and s > 1 then
        cur.j = s - 1
        out[#out + 1] = cur
        cur = { heading = h, i = s }
      elseif h then
        cur.heading = h
      end
    end
  end
  cur.j = #text
  out[#out + 1] = cur
  return out
end

-- Splits one long range at blank lines (paragraphs), then sentences, into pieces <= max.
local function split_long(text, i, j, max)
  local paras, pos = {}, i
  while pos <= j do
    local a, b = text:find("\n[ \t]*\n", pos)
    if not a or a > j then break end
    paras[#paras + 1] = { pos, a }
    pos = b + 1
  end
  if pos <= j then paras[#paras + 1] = { pos, j } end
  local ranges = {}
  for _, p in ipairs(paras) do
    if p[2] - p[1] + 1 > max then
      for _, s in ipairs(small_pieces(text, p[1], p[2], max)) do ranges[#ranges + 1] = s end
    else
      ranges[#ranges + 1] = p
    end
  end
  return pack(ranges, max)
end

local function markdown(text, starts)
  local secs = {}
  for _, s in ipairs(md_sections(text, starts)) do
    local body = trimmed(text, s.i, s.j)
    if body then secs[#secs + 1] = s end
  end
  -- merge short sections into the next (the last one into the previous)
  local merged = {}
  local k = 1
  while k <= #secs do
    local cur = { heading = secs[k].heading, i = secs[k].i, j = secs[k].j }
    while cur.j - cur.i + 1 < M.MIN and k < #secs do
      k = k + 1
      cur.j = secs[k].j
      cur.heading = cur.heading or secs[k].heading
    end
    merged[#merged + 1] = cur
    k = k + 1
  end
  local last = merged[#merged]
  if #merged > 1 and last.j - last.i + 1 < M.MIN then
    merged[#merged - 1].j = last.j
    merged[#merged] = nil
  end
  local out = {}
  for _, s in ipairs(merged) do
    local ranges = (s.j - s.i + 1 > M.MAX) and split_long(text, s.i, s.j, M.MAX)
      or { { s.i, s.j } }
    for _, r in ipairs(ranges) do
      out[#out + 1] = { heading = s.heading, i = r[1], j = r[2] }
    end
  end
  return out
end

-- ---- plain text -------------------------------------------------------------------------------

local function plain(text)
  local sents = small_pieces(text, 1, #text, M.WINDOW_MAX)
  local out, k = {}, 1
  while k <= #sents do
    local first, last = k, k
    while last < #sents and sents[last][2] - sents[first][1] + 1 < M.WINDOW
      and sents[last + 1][2] - sents[first][1] + 1 <= M.WINDOW_MAX do
      last = last + 1
    end
    out[#out + 1] = { i = sents[first][1], j = sents[last][2] }
    if last == #sents then break end
    -- the next window starts with the sentences that make up the last ~OVERLAP bytes
    local nxt = last + 1
    while nxt - 1 > first and sents[last][2] - sents[nxt - 1][1] + 1 <= M.OVERLAP do
      nxt = nxt - 1
    end
    k = nxt
  end
  return out
end

-- ---- structured (json, yaml, csv) -------------------------------------------------------------

local function structured(text, starts, csv)
  local out, cur = {}, nil
  local header
  for n, s in ipairs(starts) do
    local e = (starts[n + 1] or #text + 2) - 1 -- including the newline
    if e > #text then e = #text end
    if csv and n == 1 then header = text:sub(s, e):gsub("%s+$", "") end
    if e >= s then
      local top = not text:sub(s, s):match("%s")
      if cur and (e - cur.i + 1 > M.STRUCT_MAX
                  or (top and cur.j - cur.i + 1 >= M.STRUCT_MIN)) then
        out[#out + 1] = cur
        cur = nil
      end
      if not cur then cur = { i = s, j = e, heading = header } else cur.j = e end
      -- a single line longer than the limit is cut on UTF-8 boundaries
      while cur.j - cur.i + 1 > M.STRUCT_MAX do
        local cut = utf8_cut(text:sub(cur.i, math.min(cur.j, cur.i + M.STRUCT_MAX)),
          M.STRUCT_MAX)
        out[#out + 1] = { i = cur.i, j = cur.i + cut - 1, heading = header }
        cur = { i = cur.i + cut, j = cur.j, heading = header }
      end
    end
  end
  if cur then out[#out + 1] = cur end
  return out
end

--- The chunks of text: an array of {heading (string or nil), content, line_start, line_end}.
-- Empty or blank text gives an empty array.
function M.split(text, format)
  if type(text) ~= "string" then error("chunk.split: text must be a string", 2) end
  text = text:gsub("\r\n", "\n")
  local starts = line_starts(text)
  local ranges
  if format == "markdown" then
    ranges = markdown(text, starts)
  elseif format == "structured" or format == "csv" then
    ranges = structured(text, starts, format == "csv")
  elseif format == "text" or format == nil then
    ranges = plain(text)
  else
    error("chunk.split: unknown format " .. tostring(format), 2)
  end
  local out = {}
  for _, r in ipairs(ranges) do
    local body, first, last = trimmed(text, r.i, r.j)
    if body then
      out[#out + 1] = { heading = r.heading, content = body,
                        line_start = line_of(starts, first), line_end = line_of(starts, last) }
    end
  end
  return out
end

--- The format for a filename, with csv kept apart (its header is each chunk's heading).
function M.format_for(filename)
  local ext = tostring(filename or ""):match("%.([%w]+)$")
  if ext and ext:lower() == "csv" then return "csv" end
  return M.format_of(filename)
end

return M
