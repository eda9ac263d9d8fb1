-- playbooks/kubernetes-volume-mount-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/kubernetes-volume-mount-failures/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "kubernetes-volume-mount-failures"
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

describe("playbook kubernetes-volume-mount-failures", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/describe-multiattach.txt", "positive/events-configmap.txt",
                         "positive/kubelet-fs.log" })
    assert.equal(1, ctx.signals.volmount_multi_attach.count)
    assert.equal(1, ctx.signals.volmount_missing_ref.count)
    assert.equal(1, ctx.signals.volmount_fs_error.count)
    assert.equal(2, ctx.signals.volmount_mount_timeout.count)
    assert.is_true(ctx.signals.volmount_failed_mount.count >= 4)
    assert.equal(1, ctx.signals.volmount_attach_failed.count)
  end)

  it("Multi-Attach error on a StatefulSet pod: the volume is held by another node", function()
    local result = run({ "positive/describe-multiattach.txt" },
                       "orders-db-0 is stuck after a node failure")
    no_failure(result)
    local m = assert(matched(result), "kubernetes-volume-mount-failures not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.volmount_stale_attachment and h.volmount_missing_object
                  and h.volmount_csi_driver and h.volmount_zone_mismatch)
    assert.equal("volmount_stale_attachment", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.8)
    -- the PV named in the event goes into the asked command
    assert.matches("volumeattachment | grep pvc-3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718",
                   commands(m), 1, true)
    assert.equal("high", m.mitigations[1].risk)
  end)

  it("a ConfigMap that does not exist: the missing object, nothing storage related", function()
    local result = run({ "positive/events-configmap.txt", "positive/get-pods-creating.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("volmount_missing_object", m.conclusion.hypothesis)
    assert.matches("kubectl -n comms get configmap,secret,pvc", commands(m), 1, true)
  end)

  it("wrong fs type / bad superblock in the kubelet log: the filesystem", function()
    local result = run({ "positive/kubelet-fs.log" })
    local m = assert(matched(result))
    assert.equal("volmount_filesystem", m.conclusion.hypothesis)
    assert.matches("describe pod", commands(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "pod stuck in ContainerCreating, volume problem?")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match a healthy attach, a Pending pod or an audio 'volume' log", function()
    assert.is_true(score(run({ "negative/events-volume-ok.txt" }, "db restarted")) < 0.3)
    assert.is_true(score(run({ "negative/describe-pending-cpu.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/app-volume-words.log" }, "streams drop")) < 0.3)
  end)
end)
