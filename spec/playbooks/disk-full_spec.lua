-- playbooks/disk-full.lua against realistic evidence (spec/fixtures/playbooks/disk-full/).
local ID = "disk-full"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/lsof-deleted.txt", "positive/app-enospc.log" })
    assert.is_true(ctx.signals.disk_deleted_open.count >= 3)
    assert.equal(5, ctx.signals.disk_full.count)
  end)

  it("ENOSPC in the app log and / at 100% in df: blocks exhausted by growth", function()
    local result = P.run({ "positive/app-enospc.log", "positive/df-h.txt" },
                         "the ingest service drops batches")
    local m = P.assert_matched(result, 0.7)
    local h = P.assert_hypotheses(m, {
      "disk_data_growth", "disk_deleted_open", "disk_inode_exhaustion",
    })
    assert.is_true(h.disk_data_growth.likelihood > h.disk_inode_exhaustion.likelihood)
    P.assert_conclusion(m, "disk_data_growth", 0.7)
    assert.matches("/ filled up %(100%% used%)", m.conclusion.root_cause)
    -- df -h was given, df -i and lsof were not: they are asked for, with exact commands
    local cmds = P.command_text(m)
    assert.matches("df %-i", cmds)
    assert.matches("lsof %-nP %+L1", cmds)
    assert.is_nil(cmds:find("df -hT", 1, true))
    assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
    for _, x in ipairs(m.mitigations) do assert.truthy(x.undo and x.risk) end
    -- the finding points at the first ENOSPC line
    assert.truthy(P.finding_at(m, "app-enospc.log", 4))
  end)

  it("ENOSPC with free blocks and IUse% 100: inode exhaustion", function()
    local result = P.run({ "positive/sessions-inodes.log", "positive/df-h-free.txt",
                           "positive/df-i-full.txt" })
    local m = P.assert_matched(result)
    local h = P.keys(m)
    assert.is_true(h.disk_inode_exhaustion.likelihood > h.disk_data_growth.likelihood)
    P.assert_conclusion(m, "disk_inode_exhaustion", 0.8)
    assert.is_nil(P.command_text(m):find("df -i", 1, true))   -- already given
  end)

  it("lsof +L1 shows deleted files still open: deleted-but-open wins", function()
    local result = P.run({ "positive/app-enospc.log", "positive/df-h.txt",
                           "positive/lsof-deleted.txt" })
    local m = assert(P.matched(result))
    local h = P.keys(m)
    assert.is_true(h.disk_deleted_open.likelihood > h.disk_data_growth.likelihood)
    P.assert_conclusion(m, "disk_deleted_open")
    local cmds = P.command_text(m)
    assert.is_nil(cmds:find("lsof", 1, true))          -- lsof +L1 was given
    assert.matches("du -xh --max-depth=2 /", cmds, 1, true)
  end)

  it("a node with DiskPressure True and failed image GC: matched, asks for the node's df",
     function()
    local result, ctx = P.run({ "positive/describe-node-diskpressure.txt" })
    P.no_failure(result)
    assert.equal(5, ctx.signals.disk_pressure.count)
    local m = assert(P.matched(result))
    assert.is_true(m.score >= 0.3)
    assert.is_nil(m.conclusion)                 -- which filesystem, how full: not known yet
    assert.matches("df -h /var/lib/kubelet /var/lib/containerd", P.command_text(m), 1, true)
    assert.truthy(P.mitigation_with(m, "crictl rmi --prune"))
  end)

  it("words alone score low and conclude nothing", function()
    local result = P.run({ "negative/df-h-healthy.txt" }, "I think the disk is full")
    assert.is_true(P.score(result) < 0.3)
    P.check_words_low("the disk is full on web-3")
  end)

  it("does not match a healthy df or node, an 86% docker volume or an unrelated outage",
     function()
    assert.is_true(P.score(P.run({ "negative/df-h-healthy.txt" }, "service is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/df-h-near-miss.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/db-connection-refused.log" },
                                 "orders API returns 500")) < 0.3)
    -- "DiskPressure False" in a healthy node's conditions is not disk pressure
    local result, ctx = P.run({ "negative/describe-node-healthy.txt" })
    assert.is_nil(ctx.signals.disk_pressure)
    assert.is_true(P.score(result) < 0.3)
  end)
end)
