-- playbooks/gc-pauses.lua against realistic evidence (spec/fixtures/playbooks/gc-pauses/).
local ID = "gc-pauses"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/gc-full.log", "positive/consumer.log",
                           "positive/gc-humongous.log" })
    assert.equal(5, ctx.signals.gcpause_long.count)      -- 3 full + 1.49 s young + 6.2 s full
    assert.equal(3, ctx.signals.gcpause_medium.count)    -- 121, 140, 152 ms (not 88 or 41 ms)
    assert.equal(4, ctx.signals.gcpause_full.count)
    assert.equal(1, ctx.signals.gcpause_to_space_exhausted.count)
    assert.equal(2, ctx.signals.gcpause_humongous.count)
    assert.equal(1, ctx.signals.gcpause_membership_lost.count)
  end)

  it("4 s full GCs leaving the heap 94% full, consumers leaving the group: heap too small",
     function()
    local result = P.run({ "positive/gc-full.log", "positive/consumer.log" },
                         "billing p99 spikes every few seconds")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "gcpause_heap_too_small", "gcpause_memory_leak", "gcpause_allocation_spike",
      "gcpause_cpu_starved",
    })
    P.assert_conclusion(m, "gcpause_heap_too_small")
    assert.matches("94%", m.conclusion.root_cause, 1, true)
    local cmds = P.command_text(m)
    assert.matches("jstat -gcutil", cmds, 1, true)
    assert.is_nil(cmds:find("gc.log", 1, true))     -- the GC log was given
  end)

  it("humongous allocations and to-space exhausted: allocation spikes", function()
    local result = P.run({ "positive/gc-humongous.log" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "gcpause_allocation_spike")
    assert.matches("jvm_memory_used_bytes", P.command_text(m), 1, true)
  end)

  it("2.4 s pause metric with the container throttled 64%: CPU-starved GC", function()
    local result = P.run({ "positive/quotes-metrics.prom" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "gcpause_cpu_starved")
    assert.matches("set resources", m.mitigations[1].command, 1, true)
    local cmds = P.command_text(m)
    assert.matches("gc.log", cmds, 1, true)            -- no GC log yet: asked for
    assert.is_nil(cmds:find("cpu.stat", 1, true))      -- throttling was shown
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("long GC pauses?")
  end)

  it("does not match healthy young GCs, a short System.gc() or a database outage", function()
    assert.is_true(P.score(P.run({ "negative/gc-young-only.log" }, "checking")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/gc-short-full.log" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/db-connection-refused.log" }, "orders fail")) < 0.3)
  end)
end)
