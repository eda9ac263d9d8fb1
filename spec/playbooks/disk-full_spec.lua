-- playbooks/disk-full.lua against realistic evidence (spec/fixtures/playbooks/disk-full/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "disk-full"
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

describe("playbook disk-full", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/lsof-deleted.txt", "positive/app-enospc.log" })
    assert.is_true(ctx.signals.disk_deleted_open.count >= 3)
    assert.equal(5, ctx.signals.disk_full.count)
  end)

  it("ENOSPC in the app log and / at 100% in df: blocks exhausted by growth", function()
    local result = run({ "positive/app-enospc.log", "positive/df-h.txt" },
                       "the ingest service drops batches")
    no_failure(result)
    local m = assert(matched(result), "disk-full not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.disk_data_growth and h.disk_deleted_open and h.disk_inode_exhaustion)
    assert.is_true(h.disk_data_growth.likelihood > h.disk_inode_exhaustion.likelihood)
    assert.equal("disk_data_growth", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    assert.matches("/ filled up %(100%% used%)", m.conclusion.root_cause)
    -- df -h was given, df -i and lsof were not: they are asked for, with exact commands
    local cmds = commands(m)
    assert.matches("df %-i", cmds)
    assert.matches("lsof %-nP %+L1", cmds)
    assert.is_nil(cmds:find("df -hT", 1, true))
    assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
    for _, x in ipairs(m.mitigations) do assert.truthy(x.undo and x.risk) end
    -- the finding points at the first ENOSPC line
    local found = false
    for _, f in ipairs(m.findings) do
      if f.filename == "app-enospc.log" and f.line == 4 then found = true end
    end
    assert.is_true(found)
  end)

  it("ENOSPC with free blocks and IUse% 100: inode exhaustion", function()
    local result = run({ "positive/sessions-inodes.log", "positive/df-h-free.txt",
                         "positive/df-i-full.txt" })
    no_failure(result)
    local m = assert(matched(result))
    local h = keys(m)
    assert.is_true(h.disk_inode_exhaustion.likelihood > h.disk_data_growth.likelihood)
    assert.equal("disk_inode_exhaustion", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.8)
    assert.is_nil(commands(m):find("df -i", 1, true))   -- already given
  end)

  it("lsof +L1 shows deleted files still open: deleted-but-open wins", function()
    local result = run({ "positive/app-enospc.log", "positive/df-h.txt",
                         "positive/lsof-deleted.txt" })
    local m = assert(matched(result))
    local h = keys(m)
    assert.is_true(h.disk_deleted_open.likelihood > h.disk_data_growth.likelihood)
    assert.equal("disk_deleted_open", m.conclusion.hypothesis)
    local cmds = commands(m)
    assert.is_nil(cmds:find("lsof", 1, true))          -- lsof +L1 was given
    assert.matches("du -xh --max-depth=2 /", cmds, 1, true)
  end)

  it("a node with DiskPressure True and failed image GC: matched, asks for the node's df",
     function()
    local result, ctx = run({ "positive/describe-node-diskpressure.txt" })
    no_failure(result)
    assert.equal(5, ctx.signals.disk_pressure.count)
    local m = assert(matched(result))
    assert.is_true(m.score >= 0.3)
    assert.is_nil(m.conclusion)                 -- which filesystem, how full: not known yet
    assert.matches("df -h /var/lib/kubelet /var/lib/containerd", commands(m), 1, true)
    local prune = false
    for _, x in ipairs(m.mitigations) do
      if x.command and x.command:find("crictl rmi --prune", 1, true) then prune = true end
    end
    assert.is_true(prune)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({ "negative/df-h-healthy.txt" }, "I think the disk is full")
    assert.is_true(score(result) < 0.3)
    result = run({}, "the disk is full on web-3")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match a healthy df or node, an 86% docker volume or an unrelated outage",
     function()
    assert.is_true(score(run({ "negative/df-h-healthy.txt" }, "service is slow")) < 0.3)
    assert.is_true(score(run({ "negative/df-h-near-miss.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/db-connection-refused.log" },
                             "orders API returns 500")) < 0.3)
    -- "DiskPressure False" in a healthy node's conditions is not disk pressure
    local result, ctx = run({ "negative/describe-node-healthy.txt" })
    assert.is_nil(ctx.signals.disk_pressure)
    assert.is_true(score(result) < 0.3)
  end)
end)
