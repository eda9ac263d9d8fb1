-- playbooks/memory-leak.lua against realistic evidence (spec/fixtures/playbooks/memory-leak/).
local ID = "memory-leak"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/node-heap-oom.log" })
    assert.equal(1, ctx.signals.leak_js_heap.count)
    assert.equal(3, ctx.signals.leak_full_gc.count)
  end)

  it("working set ramps and pods are OOMKilled: retained objects, concluded", function()
    local result = P.run({ "positive/working-set.csv", "positive/get-pods.txt" },
                         "cart pods restart about once a day")
    local m = P.assert_matched(result, 0.5)
    local h = P.assert_hypotheses(m, {
      "leak_retained_objects", "leak_native_memory", "leak_load_driven",
    })
    assert.is_true(h.leak_retained_objects.likelihood > h.leak_load_driven.likelihood)
    P.assert_conclusion(m, "leak_retained_objects", 0.7)
    assert.matches("working_set_mb climbs", m.conclusion.root_cause)
    assert.matches("GC.class_histogram", P.command_text(m))
    assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
  end)

  it("goroutines and RSS ramp together in a Go service: leaked goroutines", function()
    local result = P.run({ "positive/go-runtime.prom" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "leak_goroutines_threads", 0.7)
    assert.matches("pprof/goroutine", P.command_text(m))
  end)

  it("a Node.js heap OOM without metrics: matched, asks for the graph, no conclusion", function()
    local result = P.run({ "positive/node-heap-oom.log" })
    local m = P.assert_matched(result)
    assert.is_true(m.score >= 0.3)
    assert.is_nil(m.conclusion)
    local cmds = P.command_text(m)
    assert.matches("container_memory_working_set_bytes", cmds)
    assert.matches("heapsnapshot", cmds)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("we may have a memory leak")
  end)

  it("does not match a one-off spike, healthy GC or a TLS outage", function()
    local result = P.run({ "negative/memory-spike.csv" }, "memory alert fired at noon")
    assert.is_true(P.score(result) < 0.3)
    assert.is_true(P.score(P.run({ "negative/gc-young-only.log" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/tls-errors.log" }, "clients fail to connect")) < 0.3)
  end)
end)
