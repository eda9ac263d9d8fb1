-- fm.playbooks: the playbook file contract, checked at load.
local playbooks = require "fm.playbooks"

local function load(files, opts)
  opts = opts or {}
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  return playbooks.load_all {
    list = function(prefix)
      local out = {}
      for _, p in ipairs(paths) do if p:sub(1, #prefix) == prefix then out[#out + 1] = p end end
      return out
    end,
    read = function(p) return files[p] end,
    instructions = opts.instructions or 1000000, memory = opts.memory or (4 << 20),
  }
end

-- The fields every playbook needs besides the four strings (tags, category, match, steps);
-- `extra` replaces them (source text of more fields).
local REST = [[tags = { "disk" }, category = "environment",
  match = function() return 0 end, steps = { { name = "s", run = function() end } }]]

local function pb(fields, extra)
  local parts = {}
  for k, v in pairs(fields) do parts[#parts + 1] = string.format("%s = %q", k, v) end
  table.sort(parts)
  parts[#parts + 1] = extra or REST
  return "return { " .. table.concat(parts, ", ") .. " }"
end

local good = { id = "disk-full", title = "Disk full", version = "1.0.0",
               description = "A filesystem ran out of space." }

local function with(over)
  local t = {}
  for k, v in pairs(good) do t[k] = v end
  for k, v in pairs(over) do t[k] = v end
  return t
end

describe("fm.playbooks", function()
  it("loads valid playbooks, sorted by id, skipping playbooks/lib/", function()
    local reg = load {
      ["playbooks/disk.lua"] = pb(good),
      ["playbooks/net/dns.lua"] = "local u = require 'util'\n" .. pb(with {
        id = "dns-failure", title = "DNS failure" }),
      ["playbooks/lib/util.lua"] = "return {}",
    }
    assert.same({}, reg.errors)
    assert.equal(2, #reg.list)
    assert.equal("disk-full", reg.list[1].id)
    assert.equal("dns-failure", reg.list[2].id)
    assert.equal("playbooks/net/dns.lua", reg.by_id["dns-failure"].file)
    assert.equal("1.0.0", reg.by_id["disk-full"].version)
  end)

  it("keeps fields it does not know yet", function()
    local reg = load { ["playbooks/a.lua"] = pb(with { id = "a" }, REST .. ", owner = { 1, 2 }") }
    assert.same({}, reg.errors)
    assert.same({ 1, 2 }, reg.by_id.a.definition.owner)
    assert.equal("function", type(reg.by_id.a.definition.match))
    assert.equal("s", reg.by_id.a.definition.steps[1].name)
    assert.same({ "disk" }, reg.by_id.a.tags)
    assert.equal("environment", reg.by_id.a.category)
  end)

  local bad = {
    { "missing id", pb { title = "t", version = "1.0.0", description = "d" },
      "field 'id' must be a string" },
    { "numeric version", "return { id = 'a', title = 'T', version = 1, description = 'd' }",
      "field 'version' must be a string" },
    { "not semver", pb(with { version = "one" }), "semantic version" },
    { "bad id chars", pb(with { id = "Disk Full" }), "lower%-case letters" },
    { "blank title", pb(with { title = "   " }), "not blank" },
    { "long id", pb(with { id = string.rep("a", 65) }), "1 to 64" },
    { "empty description", pb(with { description = "" }), "field 'description'" },
    { "returns nothing", "local x = 1", "must return a table %(got nil%)" },
    { "returns a string", "return 'hello'", "must return a table" },
    { "syntax error", "return { id = ", "playbooks/x.lua:1:" },
    { "runtime error", "local t = nil\nreturn t.x", "playbooks/x.lua:2: attempt to index" },
    { "infinite loop", "while true do end", "exceeded its instruction budget" },
    { "memory bomb", "return string.rep('x', 1 << 30)", "exceeded its memory cap" },
    { "binary chunk", string.dump(function() return {} end), "binary chunks" },
    { "os.execute", "os.execute('true') return {}", "attempt to call a nil value" },
    { "require outside playbooks/lib", "require 'config' return {}", "not found" },
  }
  for _, case in ipairs(bad) do
    it("reports a playbook that fails validation: " .. case[1], function()
      local reg = load { ["playbooks/x.lua"] = case[2], ["playbooks/ok.lua"] = pb(good) }
      assert.equal(1, #reg.errors)
      local e = reg.errors[1]
      assert.equal("playbooks/x.lua", e.file)
      assert.matches(case[3], e.message)
      assert.matches("playbooks/x.lua", e.message, nil, true)
      assert.equal(1, #reg.list) -- the good one still loads
    end)
  end

  it("gives the line of a syntax or runtime error", function()
    local reg = load { ["playbooks/x.lua"] = "local a = 1\nlocal b = 2\nerror('boom')" }
    assert.equal(3, reg.errors[1].line)
  end)

  it("reports duplicate ids naming both files", function()
    local reg = load { ["playbooks/a.lua"] = pb(good), ["playbooks/b.lua"] = pb(good) }
    assert.equal(1, #reg.errors)
    assert.equal("playbooks/b.lua", reg.errors[1].file)
    assert.matches("duplicate playbook id 'disk%-full' %(first defined in playbooks/a.lua%)",
      reg.errors[1].message)
  end)

  it("reads fields raw: metamethods on the returned table do not run in the host", function()
    local reg = load { ["playbooks/x.lua"] = [[
      return setmetatable({}, { __index = function(_, k) while true do end end })
    ]] }
    assert.equal(1, #reg.errors)
    assert.matches("field 'id' must be a string", reg.errors[1].message)
  end)
end)

-- A valid playbook's source with some fields replaced (source text, nil to leave one out).
local function src(over)
  local f = {
    id = "'disk-full'", title = "'Disk full'", version = "'1.0.0'", description = "'d'",
    tags = "{ 'disk', 'enospc' }", category = "'environment'",
    match = "function(ctx) return 0.5, { 'r' } end",
    steps = "{ { name = 'inspect', run = function(ctx, out) end } }",
  }
  for k, v in pairs(over or {}) do f[k] = v or nil end
  local keys = {}
  for k in pairs(f) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. " = " .. f[k] end
  return "return { " .. table.concat(parts, ",\n  ") .. " }"
end

describe("fm.playbooks: the investigation fields", function()
  it("keeps tags, category, kb, signals, match, steps and the sandbox box", function()
    local reg = load { ["playbooks/disk.lua"] = src {
      kb = "'disk full no space left'",
      signals = [[{ { name = "disk_inodes", pattern = "inodes? exhausted", flags = "i",
                      severity = "error", description = "inode exhaustion" } }]] } }
    assert.same({}, reg.errors)
    local p = reg.by_id["disk-full"]
    assert.same({ "disk", "enospc" }, p.tags)
    assert.equal("environment", p.category)
    assert.equal("disk full no space left", p.kb)
    assert.same({ { name = "disk_inodes", pattern = "inodes? exhausted", flags = "i",
                    severity = "error", description = "inode exhaustion",
                    playbook = "disk-full", file = "playbooks/disk.lua" } }, p.signals)
    assert.equal("function", type(p.definition.match))
    assert.equal("inspect", p.definition.steps[1].name)
    local ok, score, reasons = p.box:run(p.definition.match, {})
    assert.is_true(ok)
    assert.equal(0.5, score)
    assert.same({ "r" }, reasons)
  end)

  local bad = {
    { "no tags", { tags = false }, "field 'tags' must be a list %(got nil%)" },
    { "empty tags", { tags = "{}" }, "field 'tags' must have 1 to 20 entries %(got 0%)" },
    { "21 tags", { tags = "{ " .. string.rep("'a', ", 21) .. "}" }, "1 to 20 entries" },
    { "upper-case tag", { tags = "{ 'Disk' }" }, "field 'tags%[1%]' must be a lower%-case word" },
    { "tag a number", { tags = "{ 'a', 5 }" }, "'tags%[2%]'.*got number" },
    { "tags a map", { tags = "{ x = 'a' }" }, "field 'tags' must be a list %(it has the key 'x'" },
    { "long tag", { tags = "{ '" .. string.rep("a", 41) .. "' }" }, "at most 40" },
    { "no category", { category = false }, "field 'category' must be one of code, config" },
    { "unknown category", { category = "'weather'" }, "category.*got 'weather'" },
    { "kb a table", { kb = "{}" }, "field 'kb' must be a string %(got table%)" },
    { "kb too long", { kb = "'" .. string.rep("k", 201) .. "'" }, "field 'kb' must be 1 to 200" },
    { "no match", { match = false }, "field 'match' must be a function" },
    { "match a number", { match = "0.5" }, "field 'match' must be a function.*got number" },
    { "no steps", { steps = false }, "field 'steps' must be a list %(got nil%)" },
    { "zero steps", { steps = "{}" }, "field 'steps' must have 1 to 20 entries" },
    { "step not a table", { steps = "{ function() end }" }, "field 'steps%[1%]' must be a table" },
    { "step without run", { steps = "{ { name = 'a' } }" },
      "field 'steps%[1%]%.run' %(step 'a'%) must be a function %(got nil%)" },
    { "step without name", { steps = "{ { run = function() end } }" },
      "field 'steps%[1%]%.name'" },
    { "duplicate step", { steps = "{ { name = 'a', run = print }, { name = 'a', run = print } }" },
      "step name 'a' is used twice %(steps%[1%] and steps%[2%]%)" },
    { "signals a string", { signals = "'x'" }, "field 'signals' must be a list" },
    { "21 signals", { signals = "(function() local t = {} for i = 1, 21 do t[i] = { name = "
      .. "'s' .. i, pattern = 'x' } end return t end)()" }, "'signals' must have 0 to 20" },
    { "signal name", { signals = "{ { name = 'Bad-Name', pattern = 'x' } }" },
      "field 'signals%[1%]%.name' must be lower%-case" },
    { "signal pattern", { signals = "{ { name = 'a_b', pattern = 5 } }" },
      "signals%[1%] 'a_b': field 'pattern' must be a string" },
    { "signal pattern NUL", { signals = "{ { name = 'a_b', pattern = 'a\\0b' } }" },
      "without NUL" },
    { "signal flags", { signals = "{ { name = 'a_b', pattern = 'x', flags = 'ix' } }" },
      "signals%[1%] 'a_b': field 'flags' must be a string of the letters i, s and m" },
    { "signal flags twice", { signals = "{ { name = 'a_b', pattern = 'x', flags = 'ii' } }" },
      "field 'flags'" },
    { "signal severity", { signals = "{ { name = 'a_b', pattern = 'x', severity = 'fatal' } }" },
      "field 'severity' must be one of critical, error, warning, info %(got 'fatal'%)" },
    { "signal description", { signals = "{ { name = 'a_b', pattern = 'x', description = 1 } }" },
      "signals%[1%] 'a_b': field 'description' must be a string" },
    { "signal twice in one file",
      { signals = "{ { name = 'a_b', pattern = 'x' }, { name = 'a_b', pattern = 'y' } }" },
      "signal 'a_b' is defined twice %(signals%[1%] and signals%[2%]%)" },
    { "a built-in's name", { signals = "{ { name = 'disk_full', pattern = 'x' } }" },
      "signal 'disk_full' has the name of a built%-in signature" },
    { "a pattern that does not compile", { signals = "{ { name = 'disk_bad', pattern = 'a(b' } }" },
      "playbooks/x.lua: signal 'disk_bad' does not compile: .*parenthesis" },
  }
  for _, case in ipairs(bad) do
    it("reports " .. case[1] .. ", naming the file and the field", function()
      local reg = load { ["playbooks/x.lua"] = src(case[2]),
                         ["playbooks/ok.lua"] = src { id = "'ok'" } }
      assert.equal(1, #reg.errors, reg.errors[2] and reg.errors[2].message)
      assert.equal("playbooks/x.lua", reg.errors[1].file)
      assert.matches("^playbooks/x%.lua: ", reg.errors[1].message)
      assert.matches(case[3], reg.errors[1].message)
      assert.equal(1, #reg.list)
      assert.equal("ok", reg.list[1].id)
    end)
  end

  it("reports a signal name two playbooks use, naming both files", function()
    local reg = load {
      ["playbooks/a.lua"] = src { id = "'a'", signals = "{ { name = 'net_x', pattern = 'x' } }" },
      ["playbooks/b.lua"] = src { id = "'b'", signals = "{ { name = 'net_x', pattern = 'y' } }" },
    }
    assert.equal(1, #reg.errors)
    assert.equal("playbooks/b.lua", reg.errors[1].file)
    assert.equal("playbooks/b.lua: duplicate signal name 'net_x' (first defined in "
      .. "playbooks/a.lua)", reg.errors[1].message)
    assert.equal("a", reg.list[1].id)
  end)

  it("compiles every playbook's signals with the built-ins into one set", function()
    local reg = load {
      ["playbooks/a.lua"] = src { id = "'a'", signals = [[{ { name = "a_payment",
        pattern = "payment [0-9]+ declined", severity = "error" } }]] },
      ["playbooks/b.lua"] = src { id = "'b'", signals = [[{ { name = "b_checkout",
        pattern = "CHECKOUT SLOW", flags = "i" } }]] },
      ["playbooks/c.lua"] = src { id = "'c'" },
    }
    assert.same({}, reg.errors)
    local set = assert(playbooks.signature_set(reg))
    local builtins = #require("fm.analyze").builtin_signatures()
    assert.equal(builtins + 2, set:count())
    local names = {}
    for _, s in ipairs(playbooks.signals(reg)) do
      names[#names + 1] = s.playbook .. ":" .. s.name
    end
    assert.same({ "a:a_payment", "b:b_checkout" }, names)
    local r = assert(require("fm.analyze").text(
      "payment 42 declined\ncheckout slow\nNo space left on device\n",
      { signatures = set, filename = "app.log" }))
    local found = {}
    for _, s in ipairs(r.summary.signatures) do found[s.name] = s.count end
    assert.equal(1, found.a_payment)
    assert.equal(1, found.b_checkout)
    assert.equal(1, found.disk_full)
  end)

  it("reports every playbook whose pattern does not compile, keeping the others' signals",
    function()
    local reg = load {
      ["playbooks/a.lua"] = src { id = "'a'", signals = "{ { name = 'a_x', pattern = 'a(' } }" },
      ["playbooks/b.lua"] = src { id = "'b'", signals = "{ { name = 'b_ok', pattern = 'fine' } }" },
      ["playbooks/c.lua"] = src { id = "'c'", signals = "{ { name = 'c_x', pattern = '[z' } }" },
    }
    assert.equal(2, #reg.errors)
    local files = { reg.errors[1].file, reg.errors[2].file }
    table.sort(files)
    assert.same({ "playbooks/a.lua", "playbooks/c.lua" }, files)
    assert.same({ "b" }, { reg.list[1].id, reg.list[2] and reg.list[2].id })
    local set = assert(playbooks.signature_set(reg))
    assert.equal(#require("fm.analyze").builtin_signatures() + 1, set:count())
  end)

  it("gives the built-in set when no playbook has signals", function()
    local reg = load { ["playbooks/a.lua"] = src { id = "'a'" } }
    local set = assert(playbooks.signature_set(reg))
    assert.equal(#require("fm.analyze").builtin_signatures(), set:count())
    assert.same({}, playbooks.signals(reg))
  end)
end)
