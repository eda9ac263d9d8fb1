-- playbooks/database-connection-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/database-connection-exhaustion/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "database-connection-exhaustion"
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
      local ctx = context_of("positive/pg-server-limit")
      for _, name in ipairs {
        "dbconn_pool_timeout",
        "dbconn_pool_saturated",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/idle-in-transaction")
      for _, name in ipairs {
        "dbconn_pool_timeout",
        "dbconn_idle_in_tx",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
    do
      local ctx = context_of("positive/mysql-pgbouncer")
      for _, name in ipairs {
        "dbconn_pgbouncer_limit",
      } do
        local sg = ctx.signals[name]
        assert.truthy(sg and sg.count > 0, name .. " did not fire")
      end
    end
  end)

  it("too many clients and HikariCP timeouts: connection budget exceeded", function()
    local m = check_positive {
      dir = "positive/pg-server-limit",
      symptom = "orders API returns 500s, checkout is down",
      min_score = 0.7,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx", "dbconn_slow_queries" },
      conclusion = "dbconn_budget_exceeded",
      asks = {
        "SELECT count(*), state FROM pg_stat_activity GROUP BY state", "SHOW max_connections",
      },
    }
    assert.matches("connection limit", m.conclusion.root_cause)
    local ok = false
    for _, f in ipairs(m.findings) do
      if f.filename == "orders-api.log" and f.line then ok = true end
    end
    assert.is_true(ok)
  end)

  it("QueuePool timeouts and sessions idle in transaction: connections held", function()
    local m = check_positive {
      dir = "positive/idle-in-transaction",
      symptom = "invoice workers time out",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx", "dbconn_slow_queries" },
      conclusion = "dbconn_held_idle_in_tx",
      asks = { "SHOW max_connections" },
    }
    assert.matches("pg_stat_activity.txt", m.conclusion.root_cause)
    -- the pg_stat_activity output was given: it is not asked for again
    for _, c in ipairs(commands(m)) do
      assert.is_nil(c:find("GROUP BY state", 1, true))
    end
  end)

  it("MySQL error 1040 and PgBouncer max_client_conn", function()
    local m = check_positive {
      dir = "positive/mysql-pgbouncer",
      symptom = "catalog API errors",
      min_score = 0.7,
      min_confidence = 0.6,
      hypotheses = { "dbconn_budget_exceeded", "dbconn_held_idle_in_tx" },
      conclusion = "dbconn_budget_exceeded",
      asks = { "SHOW STATUS LIKE 'Threads_connected'" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: a PostgreSQL deadlock (database, not connections)", function()
    local result = run("negative/deadlock",
                       "the inventory service fails to reserve stock")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
    -- the right playbook ranks first
    assert.equal("database-deadlocks", result.scores[1].id)
  end)

  it("under the threshold: PostgreSQL PANIC on a full disk", function()
    local result = run("negative/pg-disk-full",
                       "postgres keeps restarting")
    no_failure(result)
    assert.is_true(score(result) < 0.3, "score " .. score(result))
    assert.is_nil(matched(result))
  end)

  it("scores the user's words alone low", function()
    local ctx = assert(context.build {
      symptom = "we are out of database connections, too many clients",
      evidence = {},
    })
    local result = runner.run(ctx, { only = ID })
    local s = score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
  end)
end)
