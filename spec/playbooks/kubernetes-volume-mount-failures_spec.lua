-- playbooks/kubernetes-volume-mount-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/kubernetes-volume-mount-failures/).
local ID = "kubernetes-volume-mount-failures"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/describe-multiattach.txt", "positive/events-configmap.txt",
                           "positive/kubelet-fs.log" })
    assert.equal(1, ctx.signals.volmount_multi_attach.count)
    assert.equal(1, ctx.signals.volmount_missing_ref.count)
    assert.equal(1, ctx.signals.volmount_fs_error.count)
    assert.equal(2, ctx.signals.volmount_mount_timeout.count)
    assert.is_true(ctx.signals.volmount_failed_mount.count >= 4)
    assert.equal(1, ctx.signals.volmount_attach_failed.count)
  end)

  it("Multi-Attach error on a StatefulSet pod: the volume is held by another node", function()
    local result = P.run({ "positive/describe-multiattach.txt" },
                         "orders-db-0 is stuck after a node failure")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "volmount_stale_attachment", "volmount_missing_object", "volmount_csi_driver",
      "volmount_zone_mismatch",
    })
    P.assert_conclusion(m, "volmount_stale_attachment", 0.8)
    -- the PV named in the event goes into the asked command
    assert.matches("volumeattachment | grep pvc-3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718",
                   P.command_text(m), 1, true)
    assert.equal("high", m.mitigations[1].risk)
  end)

  it("a ConfigMap that does not exist: the missing object, nothing storage related", function()
    local result = P.run({ "positive/events-configmap.txt", "positive/get-pods-creating.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "volmount_missing_object")
    assert.matches("kubectl -n comms get configmap,secret,pvc", P.command_text(m), 1, true)
  end)

  it("wrong fs type / bad superblock in the kubelet log: the filesystem", function()
    local result = P.run({ "positive/kubelet-fs.log" })
    local m = assert(P.matched(result))
    P.assert_conclusion(m, "volmount_filesystem")
    assert.matches("describe pod", P.command_text(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("pod stuck in ContainerCreating, volume problem?")
  end)

  it("does not match a healthy attach, a Pending pod or an audio 'volume' log", function()
    assert.is_true(P.score(P.run({ "negative/events-volume-ok.txt" }, "db restarted")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/describe-pending-cpu.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/app-volume-words.log" }, "streams drop")) < 0.3)
  end)
end)
