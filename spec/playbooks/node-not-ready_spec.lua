-- playbooks/node-not-ready.lua against realistic evidence
-- (spec/fixtures/playbooks/node-not-ready/).
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local ID = "node-not-ready"
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

describe("playbook node-not-ready", function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = run({ "positive/journal-kubelet-runtime.txt",
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
    local result = run({ "positive/get-nodes.txt", "positive/journal-kubelet-runtime.txt" },
                       "one node went NotReady")
    no_failure(result)
    local m = assert(matched(result), "node-not-ready not matched")
    assert.is_true(m.score >= 0.7)
    local h = keys(m)
    assert.truthy(h.node_kubelet_failure and h.node_runtime_failure and h.node_network
                  and h.node_resource_exhaustion and h.node_instance_lost)
    assert.equal("node_runtime_failure", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.7)
    -- the node name from kubectl get nodes goes into the asked commands
    assert.matches("kubectl describe node ip-10-0-7-12.eu-west-1.compute.internal", commands(m),
                   1, true)
  end)

  it("Ready False with NetworkPluginNotReady: node networking (CNI)", function()
    local result = run({ "positive/describe-node-cni.txt" })
    no_failure(result)
    local m = assert(matched(result))
    assert.equal("node_network", m.conclusion.hypothesis)
    assert.equal("network", m.conclusion.category)
    assert.matches("kubectl get lease -n kube-node-lease ip-10-0-9-40.eu-west-1.compute.internal",
                   commands(m), 1, true)
  end)

  it("status Unknown: without the kubelet log no conclusion; with it, the certificate",
     function()
    local m = assert(matched(run({ "positive/describe-node-unknown.txt" })))
    assert.is_nil(m.conclusion)
    local cmds = commands(m)
    assert.matches("journalctl -u kubelet", cmds, 1, true)
    assert.matches("describe-instance-status", cmds, 1, true)
    m = assert(matched(run({ "positive/describe-node-unknown.txt",
                             "positive/journal-kubelet-cert.txt" })))
    assert.equal("node_kubelet_failure", m.conclusion.hypothesis)
    assert.is_true(m.conclusion.confidence >= 0.8)
  end)

  it("a pod's default not-ready/unreachable tolerations are not node taints", function()
    local _, ctx = run({ "../pending-pods-and-evictions/positive/describe-pending.txt" })
    assert.is_nil(ctx.signals.node_unreachable_taint)
  end)

  it("memory pressure before NotReady (shared evidence): resource exhaustion", function()
    local ctx = assert(context.from_files({
      "spec/fixtures/evidence/cmd-kubectl-describe-node.txt" }, {}))
    local m = assert(matched(runner.run(ctx)))
    assert.equal("node_resource_exhaustion", m.conclusion.hypothesis)
    assert.matches("systemctl status kubelet containerd", commands(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    local result = run({}, "a node is NotReady")
    assert.is_true(score(result) <= 0.4)
    local m = matched(result)
    if m then assert.is_nil(m.conclusion) end
  end)

  it("does not match Ready nodes, a healthy node or a crash-looping pod", function()
    assert.is_true(score(run({ "negative/get-nodes-ready.txt" }, "pods are slow")) < 0.3)
    assert.is_true(score(run({ "negative/describe-node-healthy.txt" })) < 0.3)
    assert.is_true(score(run({ "negative/describe-pod-crashloop.txt" })) < 0.3)
  end)
end)
