-- playbooks/thread-pool-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/thread-pool-exhaustion/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "thread-pool-exhaustion"
local DIR = "spec/fixtures/playbooks/" .. ID .. "/"

local function run(files, symptom)
  local paths = {}
  for i, f in ipairs(files) do paths[i] = DIR .. f end
  local ctx = assert(context.from_files(paths, { symptom = symptom or "" }))
  return runner.run(ctx), ctx
end

local function matched(result)
  for _, m in ipairs(result.matched) do if m.id == ID then return m end end
end

local function score(result)
  for _, s in ipairs(result.scores) do if s.id == ID then return s.score end end
  return 0
end

local function keys(m)
  local t = {}
  for _, h in ipairs(m.hypotheses) do t[h.key] = h end
  return t
end

local function commands(m)
  local t = {}
  for _, a in ipairs(m.asks) do if a.command then t[#t + 1] = a.command end end
  return table.concat(t, "\n")
end

local function no_failure(result)
  for _, f in ipairs(result.failed) do
    assert.is_not.equal(ID, f.id, "playbook failed: " .. tostring(f.message))
  end
end

describe("playbook thread-pool-exhaustion", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/tomcat.log", "positive/jstack-socket.txt",
                         "positive/gunicorn.log", "positive/jstack-deadlock.txt",
                         "positive/ledger-rejected.log" })
    assert.equal(1, ctx.signals.threadpool_server_maxed.count)
    assert.equal(3, ctx.signals.threadpool_worker_timeout.count)
    assert.equal(2, ctx.signals.threadpool_rejected.count)
    assert.equal(2, ctx.signals.threadpool_deadlock.count)
    assert.equal(24, ctx.signals.threadpool_blocked.count)
    -- one frame per waiting stack: 36 Java threads and one aborted Python worker
    assert.equal(37, ctx.signals.threadpool_wait_socket.count)
    assert.is_true(ctx.signals.threadpool_request_thread.count >= 64)
  end)

  it("Tomcat at maxThreads and a dump with 36 threads in socket reads: slow dependency",
     function()
    local result = run({ "positive/tomcat.log", "positive/jstack-socket.txt" },
                       "checkout returns 504 while CPU is low")
    no_failure(result)
    local m = assert(matched(result), "thread-pool-exhaustion not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.threadpool_slow_dependency and h.threadpool_db_pool
                  and h.threadpool_lock_contention and h.threadpool_traffic_spike)
    assert.equal("threadpool_slow_dependency", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.75)
    local cmds = commands(m)
    assert.is_nil(cmds:find("Thread.print", 1, true))    -- a dump was given
    assert.matches("tomcat_threads_busy_threads", cmds, 1, true)
  end)

  it("Gunicorn WORKER TIMEOUT with the aborted worker in recv: slow dependency", function()
    local result = run({ "positive/gunicorn.log" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("threadpool_slow_dependency", m.conclusion.hypothesis)
    local cmds = commands(m)
    assert.matches("py-spy dump", cmds, 1, true)
    assert.is_nil(cmds:find("jcmd", 1, true))
  end)

  it("rejected tasks and a dump with a Java-level deadlock: the deadlock", function()
    local result = run({ "positive/ledger-rejected.log", "positive/jstack-deadlock.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("threadpool_deadlock", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.85)
    assert.is_true(keys(m).threadpool_lock_contention.likelihood >= 0.5)
    local cmds = commands(m)
    assert.matches("Found one Java-level deadlock", cmds, 1, true)
    assert.is_nil(cmds:find("tomcat_threads_busy_threads", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "thread pool exhausted?")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match an idle thread dump, a normal Gunicorn start or a database outage",
     function()
    assert.is_true(score(run({ "negative/jstack-idle.txt" }, "checking the app")) < 0.3)
    assert.is_true(score(run({ "negative/gunicorn-start.log" })) < 0.3)
    assert.is_true(score(run({ "negative/db-connection-refused.log" }, "orders fail")) < 0.3)
  end)
end)
