-- playbooks/file-descriptor-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/file-descriptor-exhaustion/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "file-descriptor-exhaustion"
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

describe("playbook file-descriptor-exhaustion", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/go-accept.log", "positive/proc-limits.txt",
                         "positive/nginx-error.log", "positive/fds.prom" })
    -- Go writes EMFILE in lower case: the built-in misses it, the playbook's signal does not
    assert.equal(11, ctx.signals.fd_too_many_open_files.count)
    assert.equal(9, ctx.signals.fd_accept_failure.count)
    assert.equal(1, ctx.signals.fd_limits_shown.count)
    assert.is_true(ctx.signals.fd_metric.count >= 48)
  end)

  it("accept4 EMFILE in a Go service whose soft limit is 1024: the limit", function()
    local result = run({ "positive/go-accept.log", "positive/proc-limits.txt" },
                       "the gateway refuses new connections")
    no_failure(result)
    local m = assert(matched(result), "file-descriptor-exhaustion not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.fd_limit_too_low and h.fd_leak and h.fd_close_wait and h.fd_system_wide)
    assert.equal("fd_limit_too_low", m.conclusion.hypothesis)
    assert.matches("1024", m.conclusion.root_cause, 1, true)
    local cmds = commands(m)
    assert.matches("ls /proc/<pid>/fd | wc -l", cmds, 1, true)
    assert.is_nil(cmds:find("/proc/<pid>/limits", 1, true))     -- the limits were given
    local limit_finding = false
    for _, f in ipairs(m.findings) do
      if f.filename == "proc-limits.txt" and f.line == 9 then limit_finding = true end
    end
    assert.is_true(limit_finding)
  end)

  it("Java EMFILE and 180 CLOSE_WAIT sockets owned by java: unclosed sockets", function()
    local result = run({ "positive/java-sockets.log", "positive/ss-closewait.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("fd_close_wait", m.conclusion.hypothesis)
    assert.matches("180", m.conclusion.root_cause, 1, true)
    local cmds = commands(m)
    assert.matches("grep 'open files' /proc/<pid>/limits", cmds, 1, true)
    assert.is_nil(cmds:find("ss -tanp", 1, true))      -- ss output was given
  end)

  it("open fds ramping to the max with nginx accept4() failures: a leak", function()
    local result = run({ "positive/fds.prom", "positive/nginx-error.log" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("fd_leak", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    assert.matches("lsof -nP -p <pid>", commands(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "we get too many open files")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match healthy sockets, a high limit or a disk-full log", function()
    assert.is_true(score(run({ "negative/ss-healthy.txt" }, "api is slow")) < 0.3)
    assert.is_true(score(run({ "negative/proc-limits-high.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/app-enospc.log" }, "ingest drops batches")) < 0.3)
  end)
end)
