-- fm.kb.chunk: markdown sections, plain-text windows with overlap, structured line windows.
local chunk = require "fm.kb.chunk"

local function para(word, n)
  local s = {}
  for i = 1, n do s[i] = ("%s sentence number %d is here."):format(word, i) end
  return table.concat(s, " ")
end

-- every chunk's content must be found in the document at the lines it claims
local function check_lines(text, chunks)
  local lines = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  for _, c in ipairs(chunks) do
    assert.is_true(c.line_start >= 1 and c.line_end >= c.line_start and c.line_end <= #lines)
    local span = table.concat(lines, "\n", c.line_start, c.line_end)
    assert.truthy(span:find(c.content, 1, true), "chunk not at its lines: " .. c.content:sub(1, 60))
  end
end

describe("fm.kb.chunk", function()
  it("picks the format from the extension", function()
    assert.equal("markdown", chunk.format_of("a.MD"))
    assert.equal("text", chunk.format_of("notes.txt"))
    assert.equal("structured", chunk.format_of("x.yaml"))
    assert.equal("csv", chunk.format_for("x.csv"))
    assert.equal("text", chunk.format_of("noext"))
  end)

  it("cuts markdown at ## headings, outside code fences", function()
    local doc = table.concat({
      "# Title", "", para("intro", 3), "",
      "## Disk full", "", para("disk", 4), "", "```", "## not a heading", "```", "",
      "### Detail", para("detail", 2), "",
      "## Memory", "", para("mem", 4), "" }, "\n")
    local cs = chunk.split(doc, "markdown")
    assert.equal(3, #cs)
    assert.equal("Title", cs[1].heading)
    assert.equal("Disk full", cs[2].heading)
    assert.truthy(cs[2].content:find("## not a heading", 1, true))
    assert.truthy(cs[2].content:find("### Detail", 1, true))
    assert.equal("Memory", cs[3].heading)
    assert.equal(5, cs[2].line_start)
    check_lines(doc, cs)
  end)

  it("merges sections under 100 bytes and splits ones over 3000 at paragraphs", function()
    local big = {}
    for i = 1, 30 do big[#big + 1] = para("p" .. i, 8) end -- ~30 x 300 bytes
    local doc = "## Tiny\nshort.\n## Also tiny\nsmall too.\n## Big\n\n"
      .. table.concat(big, "\n\n") .. "\n"
    local cs = chunk.split(doc, "markdown")
    assert.equal("Tiny", cs[1].heading)
    assert.truthy(cs[1].content:find("small too.", 1, true)) -- merged forward
    for _, c in ipairs(cs) do
      assert.is_true(#c.content <= chunk.MAX, #c.content .. " bytes")
    end
    assert.is_true(#cs >= 3)
    for i = 2, #cs do
      assert.is_true(#cs[i].content >= chunk.MIN)
      -- a paragraph is never cut in the middle
      assert.truthy(cs[i].content:match("%.$"))
    end
    check_lines(doc, cs)
  end)

  it("cuts a sentence longer than the maximum on a UTF-8 boundary", function()
    local doc = "## Long\n" .. string.rep("é", 4000) .. "\n"
    local cs = chunk.split(doc, "markdown")
    assert.is_true(#cs >= 3)
    for _, c in ipairs(cs) do
      assert.truthy(utf8.len(c.content), "invalid UTF-8 in a chunk")
      assert.is_true(#c.content <= chunk.MAX)
    end
  end)

  it("windows plain text with overlapping whole sentences", function()
    local doc = para("alpha", 40) .. "\n" .. para("beta", 40) .. "\n"
    local cs = chunk.split(doc, "text")
    assert.is_true(#cs >= 3)
    for i, c in ipairs(cs) do
      assert.is_true(#c.content <= chunk.WINDOW_MAX)
      assert.truthy(c.content:match("%.$"), "window does not end a sentence")
      if i > 1 then
        -- the first sentence of a window is the end of the previous one
        local first = c.content:match("^(.-%.)")
        assert.truthy(cs[i - 1].content:find(first, 1, true), "no overlap at " .. i)
      end
    end
    check_lines(doc, cs)
  end)

  it("cuts structured files at top-level blocks, csv with its header as heading", function()
    local y = {}
    for i = 1, 60 do
      y[#y + 1] = ("service%d:\n  image: app:%d\n  replicas: %d"):format(i, i, i % 5)
    end
    local doc = table.concat(y, "\n") .. "\n"
    local cs = chunk.split(doc, "structured")
    assert.is_true(#cs >= 2)
    for _, c in ipairs(cs) do
      assert.truthy(c.content:match("^service%d+:"), "chunk does not start a block")
      assert.is_true(#c.content <= chunk.STRUCT_MAX)
    end
    check_lines(doc, cs)
    local rows = { "ts,host,value" }
    for i = 1, 200 do rows[#rows + 1] = ("2024-01-01T00:%02d:00Z,h%d,%d"):format(i % 60, i, i) end
    local csv = chunk.split(table.concat(rows, "\n"), "csv")
    assert.is_true(#csv >= 2)
    for _, c in ipairs(csv) do assert.equal("ts,host,value", c.heading) end
  end)

  it("is deterministic and gives nothing for blank text", function()
    local doc = "## A\n" .. para("x", 30)
    assert.same(chunk.split(doc, "markdown"), chunk.split(doc, "markdown"))
    assert.same({}, chunk.split(" \n\n ", "markdown"))
    assert.same({}, chunk.split("", "text"))
    assert.has_error(function() chunk.split(doc, "pdf") end)
  end)
end)
