-- fm.pretty: how the admin REPL shows values.
local pretty = require "fm.pretty"

describe("fm.pretty", function()
  local f = pretty.format

  it("shows scalars like Lua, strings quoted with escapes", function()
    assert.equal("nil", f(nil))
    assert.equal("true", f(true))
    assert.equal("42", f(42))
    assert.equal("1.5", f(1.5))
    assert.equal([["a\"b\\c\n\t\001"]], f('a"b\\c\n\t\1'))
    assert.equal("héllo", pretty.repl("héllo")) -- the REPL prints a top-level string raw
    assert.equal('"héllo"', f("héllo"))
  end)

  it("puts the array part first, then keys sorted: numbers, strings, the rest", function()
    local t = { "a", "b", z = 1, y = 2, [10] = 3, [2.5] = 4, [true] = 5, ["not an id"] = 6,
                ["end"] = 7 }
    assert.equal('{ "a", "b", [2.5] = 4, [10] = 3, ["end"] = 7, ["not an id"] = 6, y = 2, '
      .. "z = 1, [true] = 5 }", f(t))
  end)

  it("breaks long tables over lines and indents nested ones", function()
    local t = { name = ("n"):rep(40), nested = { list = { 1, 2, 3 }, text = ("t"):rep(60) } }
    assert.equal(table.concat({
      "{",
      '  name = "' .. ("n"):rep(40) .. '",',
      "  nested = {",
      "    list = { 1, 2, 3 },",
      '    text = "' .. ("t"):rep(60) .. '"',
      "  }",
      "}",
    }, "\n"), f(t))
  end)

  it("marks cycles but shows shared tables twice", function()
    local shared = { 1 }
    local t = { a = shared, b = shared }
    t.me = t
    local out = f(t)
    assert.matches("^{ a = { 1 }, b = { 1 }, me = <cycle: table: 0x%x+> }$", out)
  end)

  it("is bounded in depth, items per table, total items and string length", function()
    local deep = {}
    local cur = deep
    for _ = 1, 20 do cur.next = {} cur = cur.next end
    assert.equal("{ next = { next = { next = {...} } } }", f(deep, { depth = 3 }))
    local many = {}
    for i = 1, 1000 do many[i] = i end
    assert.matches("... (990 more)", f(many, { items = 10 }), 1, true)
    local wide = {}
    for i = 1, 100 do wide[i] = { i, i } end
    local out = f(wide, { total = 50 })
    assert.matches("more)", out, 1, true)
    assert.is_true(#out < 2000)
    assert.equal('"xxxxx"...(100 bytes)', f(("x"):rep(100), { string = 5 }))
  end)

  it("uses __tostring and never runs __index or __pairs", function()
    local obj = setmetatable({}, { __tostring = function() return "<obj>" end })
    assert.equal("<obj>", f(obj))
    assert.equal("{ <obj> }", f({ obj }))
    local bad = setmetatable({}, { __tostring = function() error("no") end })
    assert.matches("^<__tostring failed: ", f(bad))
    local proxy = setmetatable({ real = 1 }, {
      __index = function() error("must not run") end,
      __pairs = function() error("must not run") end,
    })
    assert.equal("{ real = 1 }", f(proxy))
  end)
end)
