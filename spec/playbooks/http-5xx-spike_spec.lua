-- playbooks/http-5xx-spike.lua against realistic evidence
-- (spec/fixtures/playbooks/http-5xx-spike/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "http-5xx-spike"
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
      local ctx = context_of("positive/deploy-500s")
      for _, name in ipairs {
        "http5xx_500",
        "http5xx_deploy",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/oom-502s")
      for _, name in ipairs {
        "http5xx_upstream_closed",
        "http5xx_upstream_refused",
        "http5xx_container_restart",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/upstream-timeouts")
      for _, name in ipairs {
        "http5xx_upstream_timeout",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
  end)

  it("500s on checkout routes right after a rollout, with NullPointerExceptions", function()
    local m = check_positive {
      dir = "positive/deploy-500s",
      symptom = "checkout error rate jumped",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = {
        "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow",
        "http5xx_no_backends",
      },
      conclusion = "http5xx_app_errors",
      asks = { "grep -c ' 5[0-9][0-9] '", "get endpoints" },
      first = false,
    }
    local undo = false
    for _, x in ipairs(m.mitigations) do
      if (x.command or ""):find("rollout undo", 1, true) then undo = true end
    end
    assert.is_true(undo)
  end)

  it("502s with upstream closed/refused and an OOMKilled backend", function()
    local m = check_positive {
      dir = "positive/oom-502s",
      symptom = "reports API gives bad gateway",
      min_score = 0.6,
      min_confidence = 0.7,
      first = false,
      hypotheses = { "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow" },
      conclusion = "http5xx_backend_crash",
      asks = { "rollout history" },
    }
    assert.matches("502 13", m.conclusion.root_cause)
  end)

  it("504s with upstream timed out in the nginx error log: a slow backend", function()
    local m = check_positive {
      dir = "positive/upstream-timeouts",
      symptom = "search is failing",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = {
        "http5xx_app_errors", "http5xx_backend_crash", "http5xx_upstream_slow",
        "http5xx_no_backends",
      },
      conclusion = "http5xx_upstream_slow",
      asks = { "rollout history" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: DNS lookup timeouts with 200 responses", function()
    local result = run("negative/dns-timeouts",
                       "payments are slow")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("dns-resolution-failures", result.scores[1].id)
  end)

  it("under the threshold: healthy JSON access log (200, 304, 404)", function()
    local result = run("negative/healthy-traffic",
                       "is the items API healthy?")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
  end)

  it("scores the user's words alone low", function()
    local ctx = assert(context.build {
      symptom = "we have a spike of 502 errors",
      evidence = {},
    })
    local result = runner.run(ctx, { only = ID })
    local s = score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
  end)
end)
