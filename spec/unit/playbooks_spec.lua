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

local function pb(fields)
  local parts = {}
  for k, v in pairs(fields) do parts[#parts + 1] = string.format("%s = %q", k, v) end
  table.sort(parts)
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
    local reg = load { ["playbooks/a.lua"] = "return { id = 'a', title = 'A', version = '0.1.0',"
      .. " description = 'd', steps = { 1, 2 } }" }
    assert.same({}, reg.errors)
    assert.same({ 1, 2 }, reg.by_id.a.definition.steps)
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
