-- playbooks/certificate-expiry.lua against realistic evidence
-- (spec/fixtures/playbooks/certificate-expiry/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "certificate-expiry"
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
  ctx.now = "2026-11-22T12:00:00Z"   -- frozen: the fixtures' certificates are dated
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
      local ctx = context_of("positive/go-expired-renewal-failing")
      for _, name in ipairs {
        "cert_after_time",
        "cert_renewal_failing",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/not-reloaded")
      for _, name in ipairs {
        "cert_not_after",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/clock-skew")
      for _, name in ipairs {
        "cert_before_time",
        "cert_clock_unsynced",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
  end)

  it("Go x509 after notAfter and a cert-manager ACME authorization error", function()
    local m = check_positive {
      dir = "positive/go-expired-renewal-failing",
      symptom = "event publishing is down",
      min_score = 0.7,
      min_confidence = 0.75,
      hypotheses = { "cert_renewal_failed", "cert_not_reloaded", "cert_clock_skew" },
      conclusion = "cert_renewal_failed",
      asks = { "-connect events.example.com:443 -servername events.example.com", "date -u" },
    }
    assert.matches("renewal is failing", m.conclusion.root_cause)
  end)

  it("curl sees an expired certificate while the file on disk is renewed", function()
    local m = check_positive {
      dir = "positive/not-reloaded",
      symptom = "the shop shows a certificate error",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "cert_renewal_failed", "cert_not_reloaded", "cert_clock_skew" },
      conclusion = "cert_not_reloaded",
      asks = { "-connect shop.example.com:443", "openssl x509 -in" },
    }
    assert.matches("2027%-01%-20", m.conclusion.root_cause)
    local reload = false
    for _, x in ipairs(m.mitigations) do
      if (x.command or ""):find("nginx -s reload", 1, true) then reload = true end
    end
    assert.is_true(reload)
  end)

  it("current time is before notBefore and the clock is not synchronised", function()
    local m = check_positive {
      dir = "positive/clock-skew",
      symptom = "edge devices stopped uploading",
      min_score = 0.5,
      min_confidence = 0.75,
      hypotheses = { "cert_renewal_failed", "cert_clock_skew" },
      conclusion = "cert_clock_skew",
      asks = { "timedatectl status" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: a host name mismatch (TLS, not expiry)", function()
    local result = run("negative/hostname-mismatch",
                       "mobile BFF cannot call the API")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("tls-handshake-failures", result.scores[1].id)
  end)

  it("under the threshold: an unknown certificate authority", function()
    local result = run("negative/unknown-ca",
                       "users sync fails")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("tls-handshake-failures", result.scores[1].id)
  end)

  it("scores the user's words alone low", function()
    local ctx = assert(context.build {
      symptom = "I think a certificate expired",
      evidence = {},
    })
    local result = runner.run(ctx, { only = ID })
    local s = score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
  end)
end)
