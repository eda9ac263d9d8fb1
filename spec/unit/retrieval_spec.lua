-- fm.services.retrieval's pure parts (query words, the FTS5 expression, request validation,
-- timestamps) and fm.kb.pack's front matter. The ranking itself is spec/api/17.
local retrieval = require "fm.services.retrieval"
local pack = require "fm.kb.pack"
local json = require "fm.json"

local function fails_422(body)
  local ok, err = pcall(retrieval.validate, body)
  assert.is_false(ok)
  assert.equal(422, err.status)
  return err.detail[1].loc[2]
end

describe("retrieval.terms", function()
  it("keeps words, lower-cased, distinct; everything else separates them", function()
    assert.same({ "no", "space", "left" }, retrieval.terms("No SPACE left, no space!"))
    assert.same({ "disk", "or", "not", "full" }, retrieval.terms('"disk" OR NOT full*'))
    assert.same({ "content", "x" }, retrieval.terms("content:x ^ - + ( ) { } ; '' \\ %"))
    assert.same({ "drop", "table", "x" }, retrieval.terms("'; DROP TABLE x; --"))
    assert.same({}, retrieval.terms("\"'()*:^{}-+ \t\n"))
    assert.same({ "café", "🔥" }, retrieval.terms("café 🔥"))
  end)

  it("bounds the number and the length of words, cutting on a UTF-8 boundary", function()
    local many = {}
    for i = 1, 100 do many[i] = "w" .. i end
    assert.equal(retrieval.MAX_TERMS, #retrieval.terms(table.concat(many, " ")))
    local long = retrieval.terms(string.rep("a", 63) .. "é")[1]
    assert.equal(string.rep("a", 63), long)
    assert.is_truthy(utf8.len(long))
    assert.equal(64, #retrieval.terms(string.rep("b", 500))[1])
  end)
end)

describe("retrieval.fts5_query", function()
  it("quotes every word and joins them with OR", function()
    assert.equal('"disk" OR "full"', retrieval.fts5_query({ "disk", "full" }))
    assert.equal('"a""b"', retrieval.fts5_query({ 'a"b' }))
  end)
end)

describe("retrieval.validate", function()
  it("fills defaults and normalises tags", function()
    local r = retrieval.validate({ query = "disk full", tags = " Disk, linux,,disk " })
    assert.equal("disk full", r.query)
    assert.equal(10, r.limit)
    assert.is_nil(r.threshold)
    assert.same({ "disk", "linux" }, r.tags)
    r = retrieval.validate({ query = "x", limit = 3, similarity_threshold = 0.5,
                             tags = json.array({ "A" }), category = json.null, document_type = "" })
    assert.equal(3, r.limit)
    assert.equal(0.5, r.threshold)
    assert.same({ "a" }, r.tags)
    assert.is_nil(r.category)
    assert.is_nil(r.document_type)
  end)

  it("refuses what the contract does not allow, naming the field", function()
    assert.equal("query", fails_422({}))
    assert.equal("query", fails_422({ query = json.null }))
    assert.equal("query", fails_422({ query = " \n" }))
    assert.equal("query", fails_422({ query = "a\0b" }))
    assert.equal("query", fails_422({ query = string.rep("q", retrieval.MAX_QUERY + 1) }))
    assert.equal("limit", fails_422({ query = "x", limit = 2.5 }))
    assert.equal("limit", fails_422({ query = "x", limit = "2" }))
    assert.equal("similarity_threshold", fails_422({ query = "x", similarity_threshold = 0 / 0 }))
    assert.equal("tags", fails_422({ query = "x", tags = { a = 1 } }))
    assert.equal("tags", fails_422({ query = "x", tags = json.array({ 1 }) }))
    assert.equal("category", fails_422({ query = "x", category = "a\0" }))
    local ok, err = pcall(retrieval.validate, json.array({}))
    assert.is_false(ok)
    assert.equal(422, err.status)
  end)
end)

describe("retrieval.epoch_of", function()
  it("reads ISO 8601 UTC timestamps without the local time zone", function()
    assert.equal(0, retrieval.epoch_of("1970-01-01T00:00:00Z"))
    assert.equal(951782400, retrieval.epoch_of("2000-02-29T00:00:00.123Z"))
    assert.equal(1795346600, retrieval.epoch_of("2026-11-22T11:23:20Z"))
    assert.is_nil(retrieval.epoch_of("yesterday"))
  end)
end)

describe("kb pack front matter", function()
  it("reads title, document_type, category and tags", function()
    local d = assert(pack.parse("---\ntitle: Disk full\ndocument_type: runbook\n"
      .. "category: infrastructure\ntags: disk, deleted files , inode\n---\n\n# Disk full\n"))
    assert.equal("Disk full", d.title)
    assert.equal("runbook", d.document_type)
    assert.equal("infrastructure", d.category)
    assert.same({ "disk", "deleted files", "inode" }, d.tags)
    assert.equal("\n# Disk full\n", d.body)
  end)

  it("accepts CRLF, quotes and a [list]; defaults document_type to runbook", function()
    local d = assert(pack.parse("---\r\ntitle: \"A: b\"\r\ntags: [x, 'y']\r\n---\r\nbody"))
    assert.equal("A: b", d.title)
    assert.same({ "x", "y" }, d.tags)
    assert.equal("runbook", d.document_type)
    assert.is_nil(d.category)
    assert.equal("body", d.body)
  end)

  it("refuses a file without front matter or title", function()
    assert.is_nil(pack.parse("# README\n\ntext\n"))
    local d, err = pack.parse("---\ncategory: x\n---\nbody")
    assert.is_nil(d)
    assert.matches("title", err)
  end)
end)
