-- playbooks/file-descriptor-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/file-descriptor-exhaustion/).
local ID = "file-descriptor-exhaustion"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/go-accept.log", "positive/proc-limits.txt",
                           "positive/nginx-error.log", "positive/fds.prom" })
    -- Go writes EMFILE in lower case: the built-in misses it, the playbook's signal does not
    assert.equal(11, ctx.signals.fd_too_many_open_files.count)
    assert.equal(9, ctx.signals.fd_accept_failure.count)
    assert.equal(1, ctx.signals.fd_limits_shown.count)
    assert.is_true(ctx.signals.fd_metric.count >= 48)
  end)

  it("accept4 EMFILE in a Go service whose soft limit is 1024: the limit", function()
    local result = P.run({ "positive/go-accept.log", "positive/proc-limits.txt" },
                         "the gateway refuses new connections")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, { "fd_limit_too_low", "fd_leak", "fd_close_wait", "fd_system_wide" })
    P.assert_conclusion(m, "fd_limit_too_low")
    assert.matches("1024", m.conclusion.root_cause, 1, true)
    local cmds = P.command_text(m)
    assert.matches("ls /proc/<pid>/fd | wc -l", cmds, 1, true)
    assert.is_nil(cmds:find("/proc/<pid>/limits", 1, true))     -- the limits were given
    assert.truthy(P.finding_at(m, "proc-limits.txt", 9))
  end)

  it("Java EMFILE and 180 CLOSE_WAIT sockets owned by java: unclosed sockets", function()
    local result = P.run({ "positive/java-sockets.log", "positive/ss-closewait.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "fd_close_wait")
    assert.matches("180", m.conclusion.root_cause, 1, true)
    local cmds = P.command_text(m)
    assert.matches("grep 'open files' /proc/<pid>/limits", cmds, 1, true)
    assert.is_nil(cmds:find("ss -tanp", 1, true))      -- ss output was given
  end)

  it("open fds ramping to the max with nginx accept4() failures: a leak", function()
    local result = P.run({ "positive/fds.prom", "positive/nginx-error.log" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "fd_leak", 0.7)
    assert.matches("lsof -nP -p <pid>", P.command_text(m), 1, true)
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("we get too many open files")
  end)

  it("does not match healthy sockets, a high limit or a disk-full log", function()
    assert.is_true(P.score(P.run({ "negative/ss-healthy.txt" }, "api is slow")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/proc-limits-high.txt" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/app-enospc.log" }, "ingest drops batches")) < 0.3)
  end)
end)
