-- playbooks/node-not-ready.lua against realistic evidence
-- (spec/fixtures/playbooks/node-not-ready/).
local ID = "node-not-ready"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/journal-kubelet-runtime.txt",
                           "positive/describe-node-cni.txt", "positive/describe-node-unknown.txt",
                           "positive/journal-kubelet-cert.txt" })
    assert.equal(2, ctx.signals.node_pleg_unhealthy.count)
    assert.equal(3, ctx.signals.node_runtime_down.count)
    assert.equal(1, ctx.signals.node_cni_not_ready.count)
    assert.equal(4, ctx.signals.node_status_unknown.count)
    assert.equal(1, ctx.signals.node_kubelet_certificate.count)
    assert.equal(3, ctx.signals.node_unreachable_taint.count)   -- 2 in unknown, 1 in cni
  end)

  it("NotReady node and PLEG/containerd errors in the kubelet log: the runtime", function()
    local result = P.run({ "positive/get-nodes.txt", "positive/journal-kubelet-runtime.txt" },
                         "one node went NotReady")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "node_kubelet_failure", "node_runtime_failure", "node_network", "node_resource_exhaustion",
      "node_instance_lost",
    })
    P.assert_conclusion(m, "node_runtime_failure", 0.7)
    -- the node name from kubectl get nodes goes into the asked commands
    assert.matches("kubectl describe node ip-10-0-7-12.eu-west-1.compute.internal",
                   P.command_text(m), 1, true)
  end)

  it("Ready False with NetworkPluginNotReady: node networking (CNI)", function()
    local result = P.run({ "positive/describe-node-cni.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "node_network")
    assert.equal("network", m.conclusion.category)
    assert.matches("kubectl get lease -n kube-node-lease ip-10-0-9-40.eu-west-1.compute.internal",
                   P.command_text(m), 1, true)
  end)

  it("status Unknown: without the kubelet log no conclusion; with it, the certificate",
     function()
    local m = assert(P.matched(P.run({ "positive/describe-node-unknown.txt" })))
    assert.is_nil(m.conclusion)
    local cmds = P.command_text(m)
    assert.matches("journalctl -u kubelet", cmds, 1, true)
    assert.matches("describe-instance-status", cmds, 1, true)
    m = assert(P.matched(P.run({ "positive/describe-node-unknown.txt",
                                 "positive/journal-kubelet-cert.txt" })))
    P.assert_conclusion(m, "node_kubelet_failure", 0.8)
  end)

  it("a pod's default not-ready/unreachable tolerations are not node taints", function()
    local _, ctx = P.run({ "../pending-pods-and-evictions/positive/describe-pending.txt" })
    assert.is_nil(ctx.signals.node_unreachable_taint)
  end)

  it("memory pressure before NotReady (shared evidence): resource exhaustion", function()
    local m = assert(P.matched(P.run_paths({
      "spec/fixtures/evidence/cmd-kubectl-describe-node.txt" })))
    P.assert_conclusion(m, "node_resource_exhaustion")
    assert.matches("systemctl status kubelet containerd", P.command_text(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("a node is NotReady")
  end)

  it("does not match Ready nodes, a healthy node or a crash-looping pod", function()
    assert.is_true(P.score(P.run({ "negative/get-nodes-ready.txt" }, "pods are slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/describe-node-healthy.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/describe-pod-crashloop.txt" })) < 0.3)
  end)
end)
