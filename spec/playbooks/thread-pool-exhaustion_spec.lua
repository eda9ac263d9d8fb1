-- playbooks/thread-pool-exhaustion.lua against realistic evidence
-- (spec/fixtures/playbooks/thread-pool-exhaustion/).
local ID = "thread-pool-exhaustion"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    local _, ctx = P.run({ "positive/tomcat.log", "positive/jstack-socket.txt",
                           "positive/gunicorn.log", "positive/jstack-deadlock.txt",
                           "positive/ledger-rejected.log" })
    assert.equal(1, ctx.signals.threadpool_server_maxed.count)
    assert.equal(3, ctx.signals.threadpool_worker_timeout.count)
    assert.equal(2, ctx.signals.threadpool_rejected.count)
    assert.equal(2, ctx.signals.threadpool_deadlock.count)
    assert.equal(24, ctx.signals.threadpool_blocked.count)
    -- one frame per waiting stack: 36 Java threads and one aborted Python worker
    assert.equal(37, ctx.signals.threadpool_wait_socket.count)
    assert.is_true(ctx.signals.threadpool_request_thread.count >= 64)
  end)

  it("Tomcat at maxThreads and a dump with 36 threads in socket reads: slow dependency",
     function()
    local result = P.run({ "positive/tomcat.log", "positive/jstack-socket.txt" },
                         "checkout returns 504 while CPU is low")
    local m = P.assert_matched(result, 0.7)
    P.assert_hypotheses(m, {
      "threadpool_slow_dependency", "threadpool_db_pool", "threadpool_lock_contention",
      "threadpool_traffic_spike",
    })
    P.assert_conclusion(m, "threadpool_slow_dependency", 0.75)
    local cmds = P.command_text(m)
    assert.is_nil(cmds:find("Thread.print", 1, true))    -- a dump was given
    assert.matches("tomcat_threads_busy_threads", cmds, 1, true)
  end)

  it("Gunicorn WORKER TIMEOUT with the aborted worker in recv: slow dependency", function()
    local result = P.run({ "positive/gunicorn.log" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "threadpool_slow_dependency")
    local cmds = P.command_text(m)
    assert.matches("py-spy dump", cmds, 1, true)
    assert.is_nil(cmds:find("jcmd", 1, true))
  end)

  it("rejected tasks and a dump with a Java-level deadlock: the deadlock", function()
    local result = P.run({ "positive/ledger-rejected.log", "positive/jstack-deadlock.txt" })
    local m = P.assert_matched(result)
    P.assert_conclusion(m, "threadpool_deadlock", 0.85)
    assert.is_true(P.keys(m).threadpool_lock_contention.likelihood >= 0.5)
    local cmds = P.command_text(m)
    assert.matches("Found one Java-level deadlock", cmds, 1, true)
    assert.is_nil(cmds:find("tomcat_threads_busy_threads", 1, true))
  end)

  it("words alone score low and conclude nothing", function()
    P.check_words_low("thread pool exhausted?")
  end)

  it("does not match an idle thread dump, a normal Gunicorn start or a database outage",
     function()
    assert.is_true(P.score(P.run({ "negative/jstack-idle.txt" }, "checking the app")) < 0.3)
    assert.is_true(P.score(P.run({ "negative/gunicorn-start.log" })) < 0.3)
    assert.is_true(P.score(P.run({ "negative/db-connection-refused.log" }, "orders fail")) < 0.3)
  end)
end)
