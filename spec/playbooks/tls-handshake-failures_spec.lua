-- playbooks/tls-handshake-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/tls-handshake-failures/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "tls-handshake-failures"
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
      local ctx = context_of("positive/unknown-ca")
      for _, name in ipairs {
        "tls_unknown_ca",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/protocol-version")
      for _, name in ipairs {
        "tls_version_mismatch",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/hostname-mismatch")
      for _, name in ipairs {
        "tls_hostname_mismatch",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
  end)

  it("nginx verify failures, Go unknown authority, s_client return code 21", function()
    local m = check_positive {
      dir = "positive/unknown-ca",
      symptom = "the gateway cannot reach the users service",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = {
        "tls_untrusted_chain", "tls_hostname_mismatch", "tls_protocol_mismatch",
        "tls_mtls_client_cert",
      },
      conclusion = "tls_untrusted_chain",
      asks = {
        "openssl s_client -connect users.internal.example.com:8443",
        "-servername users.internal.example.com", "subjectAltName",
      },
    }
    assert.truthy(m)
  end)

  it("Java refuses TLS 1.0 and curl gets an alert protocol version", function()
    local m = check_positive {
      dir = "positive/protocol-version",
      symptom = "ledger sync stopped",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "tls_untrusted_chain", "tls_protocol_mismatch" },
      conclusion = "tls_protocol_mismatch",
      asks = { "for v in tls1_2 tls1_3; do", "-connect ledger.legacy.example.com:443 -$v" },
    }
    assert.truthy(m)
  end)

  it("x509 certificate is valid for another name; curl SAN mismatch", function()
    local m = check_positive {
      dir = "positive/hostname-mismatch",
      symptom = "mobile BFF cannot call the API",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "tls_untrusted_chain", "tls_hostname_mismatch" },
      conclusion = "tls_hostname_mismatch",
      asks = { "-connect api.example.com:443" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: DNS lookup timeouts", function()
    local result = run("negative/dns-timeouts",
                       "payments fail")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("dns-resolution-failures", result.scores[1].id)
  end)

  it("under the threshold: an expired certificate (certificate-expiry ranks first)", function()
    local result = run("negative/expired-cert",
                       "publishing events fails")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("certificate-expiry", result.scores[1].id)
  end)

  it("scores the user's words alone low", function()
    local ctx = assert(context.build {
      symptom = "TLS handshake problems since this morning",
      evidence = {},
    })
    local result = runner.run(ctx, { only = ID })
    local s = score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
  end)
end)
