-- Thread pool or worker pool exhaustion (kb/thread-pool-exhaustion.md).
--
-- Evidence it reads: pool exhaustion messages (Java RejectedExecutionException, Tomcat "Maximum
-- number of threads created", Jetty "Thread pool is exhausted", Gunicorn WORKER TIMEOUT, uWSGI
-- listen queue full), thread dumps (what the request threads wait on: a socket read, a database
-- connection, a lock; a Java-level deadlock), pool metrics (busy threads at the maximum), and
-- downstream timeouts in the logs.
-- Competing explanations: a slow downstream dependency holds every thread, waiting for a
-- database connection (pool smaller than the thread pool), lock contention or a deadlock, a
-- traffic spike or retry storm.

local kit = require "kit"
local where, signal_finding, sig_evidence = kit.where, kit.signal_finding, kit.signal_evidence

local EXHAUSTION = { "threadpool_rejected", "threadpool_server_maxed", "threadpool_worker_timeout" }

-- Busy threads at the pool's maximum in metrics: {busy, max, ev} or nil.
local function pool_metrics(ctx)
  local busy, max, ev
  for _, e in ipairs(ctx.of_type("metrics")) do
    for _, s in ipairs(e.summary.metrics and e.summary.metrics.series or {}) do
      local n = tostring(s.name or "")
      if n:find("busy_threads") or n:find("threads_busy") or n == "executor_active_threads"
         or n:find("active_threads") then
        busy, ev = math.max(busy or 0, tonumber(s.max) or 0), e
      elseif n:find("max_threads") or n:find("threads_max") or n == "executor_pool_max_threads" then
        max = math.max(max or 0, tonumber(s.max) or 0)
      end
    end
  end
  if busy and max and max > 0 then return { busy = busy, max = max, ev = ev } end
end

local cache = setmetatable({}, { __mode = "k" })

-- What request threads may wait on, in a fixed order (pairs() order differs between processes,
-- and ties must break the same way every time).
local KINDS = { "socket", "db", "blocked" }

local function facts(ctx)
  local f = cache[ctx]
  if f then return f end
  f = {}
  f.exhaustion = 0
  for _, n in ipairs(EXHAUSTION) do f.exhaustion = f.exhaustion + ctx.signal(n) end
  f.metrics = pool_metrics(ctx)
  f.maxed = f.metrics and f.metrics.busy >= 0.95 * f.metrics.max
  -- thread dump: request threads and what their stacks wait on
  f.threads = ctx.signal("threadpool_request_thread")
  f.socket = ctx.signal("threadpool_wait_socket")
  f.db = ctx.signal("threadpool_wait_db")
  f.blocked = ctx.signal("threadpool_blocked")
  f.deadlock = ctx.signal("threadpool_deadlock")
  f.timeouts = ctx.signal("timeout")
  local base = math.max(f.threads, 1)
  f.share = { socket = math.min(f.socket / base, 1), db = math.min(f.db / base, 1),
              blocked = math.min(f.blocked / base, 1) }
  f.dump = f.threads >= 5
  -- what most request threads wait on (>= half of them)
  if f.dump then
    local best, share = nil, 0.5
    for _, k in ipairs(KINDS) do
      local v = f.share[k]
      if v >= share then best, share = k, v end
    end
    f.waiting_on = best
  end
  f.worker_timeout = ctx.signal("threadpool_worker_timeout")
  f.exhausted = f.exhaustion > 0 or f.maxed
  cache[ctx] = f
  return f
end

local KEY = { socket = "threadpool_slow_dependency", db = "threadpool_db_pool",
              blocked = "threadpool_lock_contention" }

local function diagnose(f)
  if f.deadlock > 0 then
    return "threadpool_deadlock", 0.9, "Application threads are deadlocked (the thread dump "
      .. "reports a Java-level deadlock): the threads involved never return to the pool"
  end
  if f.waiting_on then
    local key = KEY[f.waiting_on]
    local text = {
      socket = "Most request threads are blocked reading from a remote service (socket read "
        .. "without a short timeout): a slow downstream dependency holds every thread",
      db = "Most request threads wait for a database connection: the connection pool is "
        .. "smaller than the thread pool or connections are held too long",
      blocked = "Most request threads are BLOCKED on the same monitor: lock contention "
        .. "serialises the requests",
    }
    return key, f.exhausted and 0.8 or 0.65, string.format("%s (%.0f%% of %d request threads)",
      text[f.waiting_on], f.share[f.waiting_on] * 100, f.threads)
  end
  if f.worker_timeout > 0 and f.socket > 0 then
    return "threadpool_slow_dependency", 0.7, "Workers are killed by the worker timeout while "
      .. "waiting on a socket read (the aborted worker's traceback): a slow downstream call "
      .. "holds every worker"
  end
  if f.exhausted and f.timeouts >= 3 then
    return "threadpool_slow_dependency", 0.6, "The pool is exhausted while calls time out: "
      .. "threads are held by a slow dependency (confirm with a thread dump)"
  end
end

local STATEMENTS = {
  threadpool_slow_dependency = "A downstream dependency (HTTP API, service, DNS) became slow and "
    .. "threads block on it, often with no or very long timeouts",
  threadpool_db_pool = "Threads wait for a database connection: the connection pool is smaller "
    .. "than the thread pool, or queries hold connections too long",
  threadpool_lock_contention = "Lock contention inside the application (synchronized blocks, a "
    .. "global mutex) serialises request threads",
  threadpool_deadlock = "Application threads are deadlocked and never return to the pool",
  threadpool_traffic_spike = "More work arrived than the pool can serve (traffic spike, retry "
    .. "storm) while each request is as fast as usual",
}
local CATEGORY = { threadpool_slow_dependency = "external", threadpool_db_pool = "database",
                   threadpool_lock_contention = "code", threadpool_deadlock = "code",
                   threadpool_traffic_spike = "external" }

return {
  id = "thread-pool-exhaustion",
  title = "Thread pool or worker pool exhaustion",
  version = "1.0.0",
  description = "Every request thread or worker is busy, usually waiting on something slow, so "
    .. "new requests queue or are rejected while CPU looks idle. Reads pool messages, pool "
    .. "metrics and thread dumps to tell a slow dependency, a database pool, lock contention, a "
    .. "deadlock and a traffic spike apart.",
  tags = { "thread-pool", "worker-pool", "tomcat", "gunicorn", "thread-dump", "saturation" },
  category = "external",
  kb = "thread pool exhaustion rejected execution worker timeout thread dump blocked threads",

  signals = {
    { name = "threadpool_rejected", severity = "error",
      pattern = [[RejectedExecutionException|rejected from java\.util\.concurrent\.]]
        .. [[|TaskRejectedException]],
      description = "an executor rejected work: all threads busy and the queue full" },
    { name = "threadpool_server_maxed", severity = "error",
      pattern = [[Maximum number of threads \(\[?[0-9]+\]?\) created for connector]]
        .. [[|All threads \([0-9]+\) are currently busy|Thread pool is exhausted]]
        .. [[|QueuedThreadPool[^\n]{0,200}low on threads|Insufficient configured threads]],
      description = "the web server's request thread pool is at its maximum" },
    { name = "threadpool_worker_timeout", severity = "critical",
      pattern = [[WORKER TIMEOUT|listen queue of socket [^\n]* full]],
      description = "Gunicorn/uWSGI workers stuck past their timeout or backlog full" },
    { name = "threadpool_request_thread", severity = "info",
      pattern = [[^"(http-nio|https-jsse-nio|http-bio|ajp-nio|qtp[0-9]+|XNIO-[0-9]+ task]]
        .. [[|reactor-http|grpc-default-executor|pool-[0-9]+-thread)[^"]*" ]],
      description = "a request thread in a Java thread dump" },
    { name = "threadpool_wait_socket", severity = "info",
      pattern = [[socketRead0\(|NioSocketImpl\.park\(|, in readinto$|, in recv_into$]],
      description = "the frame (one per stack) of a thread waiting on a socket read" },
    { name = "threadpool_wait_db", severity = "info",
      pattern = [[ConcurrentBag\.borrow\(|PooledDataSource\.popConnection\(]]
        .. [[|DBCP[^\n]*borrowObject\(|ConnectionPool\.borrowConnection\(]],
      description = "the frame (one per stack) of a thread waiting for a pooled DB connection" },
    { name = "threadpool_blocked", severity = "info",
      pattern = [[java\.lang\.Thread\.State: BLOCKED]],
      description = "a thread blocked on a monitor" },
    { name = "threadpool_deadlock", severity = "critical",
      pattern = [[Found one Java-level deadlock|Found [0-9]+ deadlocks?\.]],
      description = "the JVM found a deadlock" },
  },

  match = function(ctx)
    local f = facts(ctx)
    local score, reasons = 0, {}
    for _, n in ipairs(EXHAUSTION) do
      if ctx.signal(n) > 0 then
        score = score > 0 and score + 0.1 or 0.55
        reasons[#reasons + 1] = n .. " in " .. where(ctx, n)
      end
    end
    if f.maxed then
      score = score + (score > 0 and 0.1 or 0.5)
      reasons[#reasons + 1] = string.format("busy threads %g of max %g (%s)", f.metrics.busy,
        f.metrics.max, tostring(f.metrics.ev.filename))
    end
    if f.deadlock > 0 then
      score = score + (score > 0 and 0.2 or 0.5)
      reasons[#reasons + 1] = "Java-level deadlock in " .. where(ctx, "threadpool_deadlock")
    end
    if f.waiting_on then
      score = score + (score > 0 and 0.2 or 0.35)
      reasons[#reasons + 1] = string.format("%.0f%% of %d request threads wait on %s",
        f.share[f.waiting_on] * 100, f.threads, f.waiting_on)
    end
    if f.exhausted and f.timeouts > 0 then score = score + 0.05 end
    local key = score > 0 and not f.waiting_on and f.deadlock == 0 and diagnose(f)
    if key then
      score = score + 0.15
      reasons[#reasons + 1] = "cause seen: " .. key
    end
    if ctx.said("thread pool", "worker timeout", "threads exhausted", "no free threads",
                "rejectedexecution", "all workers busy", "maxthreads", "thread starvation") then
      score = score + (score > 0 and 0.1 or 0.3)
      reasons[#reasons + 1] = "the user reports pool exhaustion"
    end
    return math.min(score, 1), reasons
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local f = facts(ctx)
      signal_finding(ctx, out, "threadpool_rejected", "Executor rejected tasks")
      signal_finding(ctx, out, "threadpool_server_maxed", "Request thread pool at its maximum")
      signal_finding(ctx, out, "threadpool_worker_timeout", "Workers timed out / backlog full")
      signal_finding(ctx, out, "threadpool_deadlock", "Java-level deadlock")
      if f.metrics then
        out:finding { text = string.format("Busy threads peaked at %g of %g", f.metrics.busy,
          f.metrics.max), evidence_id = f.metrics.ev.id, filename = f.metrics.ev.filename }
      end
      if f.dump then
        out:finding(string.format("Thread dump: %d request threads; %d socket-read frames, %d "
          .. "waiting for a DB connection, %d BLOCKED", f.threads, f.socket, f.db, f.blocked))
      end
      signal_finding(ctx, out, "threadpool_wait_socket", "Threads reading from a socket")
      signal_finding(ctx, out, "threadpool_wait_db", "Threads waiting for a DB connection")
      signal_finding(ctx, out, "threadpool_blocked", "Threads BLOCKED on a monitor")
      signal_finding(ctx, out, "timeout", "Timeouts")
      signal_finding(ctx, out, "http_504_gateway_timeout", "504s at the proxy")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local f = facts(ctx)
      local key, conf = diagnose(f)
      local lk = { threadpool_slow_dependency = f.timeouts > 0 and 0.45 or 0.35,
                   threadpool_db_pool = 0.2, threadpool_lock_contention = 0.15,
                   threadpool_deadlock = 0.05, threadpool_traffic_spike = 0.2 }
      if f.dump and not f.waiting_on and f.exhausted then lk.threadpool_traffic_spike = 0.4 end
      if f.dump then
        for _, kind in ipairs(KINDS) do
          local k = KEY[kind]
          if f.share[kind] >= 0.5 then lk[k] = math.max(lk[k], 0.6) end
        end
      end
      if key then lk[key] = conf end
      for _, k in ipairs { "threadpool_slow_dependency", "threadpool_db_pool",
                           "threadpool_lock_contention", "threadpool_deadlock",
                           "threadpool_traffic_spike" } do
        out:hypothesis { key = k, statement = STATEMENTS[k], likelihood = lk[k],
                         category = CATEGORY[k] }
      end
      if f.dump then
        for _, kind in ipairs(KINDS) do
          local k, share = KEY[kind], f.share[kind]
          out:evidence { hypothesis = k, stance = share >= 0.5 and "for" or "against",
            summary = string.format("%.0f%% of %d request threads wait here", share * 100,
                                    f.threads) }
        end
      end
      sig_evidence(ctx, out, "threadpool_slow_dependency", "for", "timeout",
        "downstream calls time out")
      sig_evidence(ctx, out, "threadpool_deadlock", "for", "threadpool_deadlock",
        "the JVM reports a deadlock")
      sig_evidence(ctx, out, "threadpool_db_pool", "for", "threadpool_wait_db",
        "threads wait in the connection pool")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("thread pool exhaustion thread dump slow dependency timeouts", 3)
    end },

    { name = "ask", run = function(ctx, out)
      local f = facts(ctx)
      if f.deadlock > 0 then
        out:ask { label = "The threads and locks of the deadlock", hypothesis =
          "threadpool_deadlock", command = "jcmd <pid> Thread.print | sed -n "
          .. "'/Found one Java-level deadlock/,/Found [0-9]* deadlock/p'",
          why = "the stacks of the threads involved show the two lock orders to reconcile" }
        out:ask { label = "Did it start with a release?", hypothesis = "threadpool_deadlock",
          command = "kubectl -n <namespace> rollout history deploy/<app>",
          why = "a new code path that takes the locks in another order" }
        return
      end
      local python = ctx.signal("threadpool_worker_timeout") > 0
        or ctx.mentions("gunicorn", "uwsgi", "python")
      if not f.dump then
        if python then
          out:ask { label = "Stacks of the stuck workers", hypothesis =
            "threadpool_slow_dependency", command = "py-spy dump --pid <pid>",
            why = "where each worker waits: a socket read, a lock, the database" }
        else
          out:ask { label = "Three thread dumps, 10 s apart", hypothesis =
            "threadpool_slow_dependency", command = "for i in 1 2 3; do jcmd <pid> Thread.print "
            .. "> /tmp/td$i.txt; sleep 10; done",
            why = "the same top frames in most request threads, in all three dumps, is where "
              .. "they are stuck" }
        end
      end
      if not f.metrics and not python then
        out:ask { label = "Pool utilisation over time", hypothesis = "threadpool_traffic_spike",
          command = "tomcat_threads_busy_threads / tomcat_threads_config_max_threads  (PromQL; "
            .. "or jetty/executor equivalents), next to the request rate",
          why = "busy pinned at max with a flat request rate: work got slower, not more" }
      end
      out:ask { label = "Latency of the dependencies", hypothesis = "threadpool_slow_dependency",
        command = "histogram_quantile(0.99, sum by (le, target) (rate("
          .. "http_client_request_duration_seconds_bucket[5m])))  (PromQL)",
        why = "which downstream call got slow when the pool filled up" }
    end },

    { name = "conclude", run = function(ctx, out)
      local f = facts(ctx)
      if not (f.exhausted or f.dump or f.deadlock > 0) then return end
      local key, conf, text = diagnose(f)
      if key then
        out:conclude { hypothesis = key, confidence = conf, root_cause = text,
                       severity = "high" }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local key = diagnose(facts(ctx))
      if key == "threadpool_deadlock" then
        out:mitigate { title = "Restart the deadlocked instances",
          command = "kubectl -n <namespace> rollout restart deploy/<app>",
          description = "Keep one thread dump for the fix first", risk = "medium",
          undo = "none needed" }
        out:solve { title = "Fix the lock ordering", description = "Acquire locks in one global "
          .. "order, or use tryLock with a timeout", risk = "medium", undo = "revert" }
        return
      end
      out:mitigate { title = "Fail fast on the slow dependency",
        description = "Lower its client timeout below the caller's, open its circuit breaker "
          .. "or disable the feature that calls it", risk = "medium",
        undo = "restore the previous timeout / close the breaker" }
      out:mitigate { title = "Add capacity while the dependency recovers",
        command = "kubectl -n <namespace> scale deploy/<app> --replicas=<n+2>",
        description = "Check the dependency can take more concurrent calls first",
        risk = "medium", undo = "kubectl -n <namespace> scale deploy/<app> --replicas=<n>" }
      out:solve { title = "Timeouts and bulkheads on every outbound call",
        description = "Connect and read timeouts shorter than the caller's own; a separate "
          .. "bounded pool per dependency; bounded queues that reject early with 503; size the "
          .. "database pool together with the thread pool",
        risk = "low", undo = "revert the configuration",
        verify = "busy threads well below the maximum at peak; no rejections for a day" }
    end },
  },
}
