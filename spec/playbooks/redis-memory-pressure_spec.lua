-- playbooks/redis-memory-pressure.lua against realistic evidence
-- (spec/fixtures/playbooks/redis-memory-pressure/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "redis-memory-pressure"
local DIR = "spec/fixtures/playbooks/" .. ID .. "/"

-- Every file of one fixture directory (sorted, so runs are reproducible).
local function files(sub)
  local out = {}
  local p = assert(io.popen("ls -1 '" .. DIR .. sub .. "'"))
  for f in p:lines() do out[#out + 1] = DIR .. sub .. "/" .. f end
  p:close()
  assert(#out > 0, "no fixture files in " .. sub)
  return out
end

local function context_of(sub, symptom)
  local ctx = assert(context.from_files(files(sub), { symptom = symptom or "" }))
  return ctx
end

local function run(sub, symptom)
  local ctx = context_of(sub, symptom)
  return runner.run(ctx), ctx
end

local function matched(result)
  for _, m in ipairs(result.matched) do if m.id == ID then return m end end
end

local function score(result)
  for _, s in ipairs(result.scores) do if s.id == ID then return s.score end end
  return 0
end

local function no_failure(result)
  for _, f in ipairs(result.failed) do
    assert.is_not.equal(ID, f.id, "playbook failed: " .. tostring(f.message))
  end
end

local function commands(m)
  local t = {}
  for _, a in ipairs(m.asks) do
    if a.command and a.command ~= "" then t[#t + 1] = a.command end
  end
  return t
end

-- The positive case's common checks; returns the matched record.
local function check_positive(c)
  local result = run(c.dir, c.symptom)
  no_failure(result)
  local m = assert(matched(result), ID .. " not matched for " .. c.dir)
  assert.is_true(m.score >= c.min_score, "score " .. m.score)
  if c.first ~= false then
    assert.equal(ID, result.scores[1].id, "ranked first: " .. result.scores[1].id)
  end
  assert.is_true(#m.reasons > 0)
  local keys = {}
  for _, h in ipairs(m.hypotheses) do keys[h.key] = h end
  for _, k in ipairs(c.hypotheses) do assert.truthy(keys[k], "hypothesis " .. k) end
  -- the concluded root cause is the expected hypothesis, and the most likely one
  assert.truthy(m.conclusion, "no conclusion")
  assert.equal(c.conclusion, m.conclusion.hypothesis)
  assert.is_true(m.conclusion.confidence >= c.min_confidence,
                 "confidence " .. m.conclusion.confidence)
  for k, h in pairs(keys) do
    if k ~= c.conclusion then
      assert.is_true(keys[c.conclusion].likelihood >= h.likelihood, k .. " more likely")
    end
  end
  -- asks carry exact commands
  local cmds = commands(m)
  assert.is_true(#cmds > 0, "no command asked")
  local all = table.concat(cmds, "\n")
  for _, want in ipairs(c.asks or {}) do
    assert.truthy(all:find(want, 1, true), "ask '" .. want .. "' missing in:\n" .. all)
  end
  -- findings point at evidence lines; remedies say how to undo them
  local lined = false
  for _, f in ipairs(m.findings) do if f.line and f.filename then lined = true end end
  assert.is_true(lined, "no finding with a file and line")
  assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
  for _, x in ipairs(m.mitigations) do assert.truthy(x.undo ~= "" and x.risk) end
  return m, result
end

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    do
      local ctx = context_of("positive/maxmemory-noeviction")
      for _, name in ipairs {
        "redismem_oom_command",
        "redismem_noeviction",
        "redismem_keys_no_ttl",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/fork-failed")
      for _, name in ipairs {
        "redismem_fork_failed",
        "redismem_overcommit",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/fragmentation")
      for _, name in ipairs {
        "redismem_frag_high",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
  end)

  it("OOM command not allowed, INFO at maxmemory with noeviction and no TTLs", function()
    local m = check_positive {
      dir = "positive/maxmemory-noeviction",
      symptom = "cart writes fail",
      min_score = 0.7,
      min_confidence = 0.8,
      hypotheses = {
        "redismem_data_growth", "redismem_fragmentation", "redismem_fork_cow",
        "redismem_output_buffers",
      },
      conclusion = "redismem_data_growth",
      asks = { "--bigkeys", "INFO stats" },
    }
    assert.matches("noeviction", m.conclusion.root_cause)
    -- INFO memory was given: not asked again
    for _, c in ipairs(commands(m)) do assert.is_nil(c:find("INFO memory", 1, true)) end
  end)

  it("BGSAVE cannot fork with overcommit_memory 0, clients get MISCONF", function()
    local m = check_positive {
      dir = "positive/fork-failed",
      symptom = "session writes fail",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = { "redismem_data_growth", "redismem_fork_cow" },
      conclusion = "redismem_fork_cow",
      asks = { "INFO persistence", "redis-cli -h <host> INFO memory" },
    }
    local fix = false
    for _, x in ipairs(m.mitigations) do
      if (x.command or ""):find("overcommit_memory=1", 1, true) then fix = true end
    end
    assert.is_true(fix)
  end)

  it("fragmentation ratio 2.89 and redis-server OOM-killed", function()
    local m = check_positive {
      dir = "positive/fragmentation",
      symptom = "redis restarted overnight",
      min_score = 0.5,
      min_confidence = 0.6,
      first = false,
      hypotheses = { "redismem_data_growth", "redismem_fragmentation" },
      conclusion = "redismem_fragmentation",
      asks = { "--bigkeys" },
    }
    local defrag = false
    for _, x in ipairs(m.mitigations) do
      if (x.command or ""):find("activedefrag yes", 1, true) then defrag = true end
    end
    assert.is_true(defrag)
  end)

  it("under the threshold: Redis LOADING after a restart", function()
    local result = run("negative/redis-loading",
                       "checkout fell back to the database for a few seconds")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
  end)

  it("under the threshold: a JVM heap OutOfMemoryError", function()
    local result = run("negative/jvm-heap",
                       "catalog export crashes")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
  end)

  it("scores the user's words alone low", function()
    local ctx = assert(context.build {
      symptom = "redis is running out of memory",
      evidence = {},
    })
    local result = runner.run(ctx, { only = ID })
    local s = score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
  end)
end)
