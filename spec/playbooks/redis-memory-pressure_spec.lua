-- playbooks/redis-memory-pressure.lua against realistic evidence
-- (spec/fixtures/playbooks/redis-memory-pressure/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "redis-memory-pressure"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/maxmemory-noeviction", {
      "redismem_oom_command",
      "redismem_noeviction",
      "redismem_keys_no_ttl",
    })
    P.assert_signals("positive/fork-failed", {
      "redismem_fork_failed",
      "redismem_overcommit",
    })
    P.assert_signals("positive/fragmentation", {
      "redismem_frag_high",
    })
  end)

  it("OOM command not allowed, INFO at maxmemory with noeviction and no TTLs", function()
    local m = P.check_positive {
      dir = "positive/maxmemory-noeviction",
      symptom = "cart writes fail",
      min_score = 0.7,
      min_confidence = 0.8,
      hypotheses = {
        "redismem_data_growth", "redismem_fragmentation", "redismem_fork_cow",
        "redismem_output_buffers",
      },
      conclusion = "redismem_data_growth",
      asks = { "--bigkeys", "INFO stats" },
    }
    assert.matches("noeviction", m.conclusion.root_cause)
    -- INFO memory was given: not asked again
    for _, c in ipairs(P.commands(m)) do assert.is_nil(c:find("INFO memory", 1, true)) end
  end)

  it("BGSAVE cannot fork with overcommit_memory 0, clients get MISCONF", function()
    local m = P.check_positive {
      dir = "positive/fork-failed",
      symptom = "session writes fail",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = { "redismem_data_growth", "redismem_fork_cow" },
      conclusion = "redismem_fork_cow",
      asks = { "INFO persistence", "redis-cli -h <host> INFO memory" },
    }
    assert.truthy(P.mitigation_with(m, "overcommit_memory=1"))
  end)

  it("fragmentation ratio 2.89 and redis-server OOM-killed", function()
    local m = P.check_positive {
      dir = "positive/fragmentation",
      symptom = "redis restarted overnight",
      min_score = 0.5,
      min_confidence = 0.6,
      first = false,
      hypotheses = { "redismem_data_growth", "redismem_fragmentation" },
      conclusion = "redismem_fragmentation",
      asks = { "--bigkeys" },
    }
    assert.truthy(P.mitigation_with(m, "activedefrag yes"))
  end)

  it("under the threshold: Redis LOADING after a restart", function()
    P.check_negative {
      dir = "negative/redis-loading",
      symptom = "checkout fell back to the database for a few seconds",
    }
  end)

  it("under the threshold: a JVM heap OutOfMemoryError", function()
    P.check_negative { dir = "negative/jvm-heap", symptom = "catalog export crashes" }
  end)

  it("scores the user's words alone low", function()
    P.check_words("redis is running out of memory")
  end)
end)
