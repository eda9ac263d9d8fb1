-- fm.jobs, the jobs runner's Lua half, against real databases (SQLite and PostgreSQL): claiming,
-- retries with backoff, failure after max_attempts, lease expiry, dedup keys, requeue on stop,
-- and two runner processes sharing one database never running a job twice.
local helpers = require "spec.helpers"
local db = require "fm.db"
local jobs = require "fm.jobs"
local migrate = require "fm.db.migrate"
local time = require "fm.time"

local function row(id)
  return assert(db.query("SELECT * FROM jobs WHERE id = ?", id))[1]
end

for _, backend in ipairs(helpers.db_backends()) do
  describe("jobs on " .. backend.name, function()
    local url
    lazy_setup(function()
      url = backend.url()
      assert(db.configure { url = url, pool_size = 2 })
      migrate.up()
      jobs.handler_modules = {}
    end)
    lazy_teardown(function()
      db.close()
      helpers.cleanup()
    end)
    before_each(function()
      assert(db.exec("DELETE FROM jobs"))
      jobs.worker = "jw_spec"
    end)

    it("runs a due job once and marks it done", function()
      local seen = {}
      jobs.handlers["t.ok"] = function(payload, job)
        seen[#seen + 1] = { payload = payload, attempts = job.attempts }
      end
      local id = jobs.enqueue("t.ok", { x = 1 })
      assert.matches("^job_%x+$", id)
      assert.equal(1, jobs.depth())
      assert.is_true(jobs.work_one())
      assert.is_false(jobs.work_one())
      assert.same({ { payload = { x = 1 }, attempts = 1 } }, seen)
      local r = row(id)
      assert.equal("done", r.state)
      assert.equal(1, math.tointeger(r.attempts))
      assert.is_nil(r.locked_by)
      assert.equal(0, jobs.depth())
    end)

    it("retries a failing job with backoff, then fails it with its last error", function()
      local hook
      jobs.handlers["t.bad"] = function() error("boom", 0) end
      jobs.handlers["t.bad:failed"] = function(payload, _, msg) hook = { payload, msg } end
      local id = jobs.enqueue("t.bad", { n = 7 }, { max_attempts = 2 })
      local before = time.now()
      assert.is_true(jobs.work_one())
      local r = row(id)
      assert.equal("queued", r.state)
      assert.equal(1, math.tointeger(r.attempts))
      assert.equal("boom", r.last_error)
      assert.is_true(r.run_after >= time.iso8601(before + 1.5), r.run_after)
      assert.is_false(jobs.work_one()) -- not due yet
      assert(db.exec("UPDATE jobs SET run_after = ? WHERE id = ?", time.iso8601(0), id))
      assert.is_true(jobs.work_one())
      r = row(id)
      assert.equal("failed", r.state)
      assert.equal(2, math.tointeger(r.attempts))
      assert.same({ { n = 7 }, "boom" }, hook)
      assert.is_false(jobs.work_one())
    end)

    it("waits for delay_s and for a handler that is missing, fails like any error", function()
      jobs.enqueue("t.later", {}, { delay_s = 60 })
      assert.is_false(jobs.work_one())
      local id = jobs.enqueue("t.nobody", {}, { max_attempts = 1 })
      assert.is_true(jobs.work_one())
      assert.equal("failed", row(id).state)
      assert.matches("no handler", row(id).last_error)
    end)

    it("takes over a job whose lease expired, never a live one", function()
      local id = jobs.enqueue("t.lease", {})
      jobs.worker = "jw_a"
      local a = jobs.claim()
      assert.equal(id, a.id)
      jobs.worker = "jw_b"
      assert.is_nil(jobs.claim()) -- running under a live lease
      assert(db.exec("UPDATE jobs SET locked_at = ? WHERE id = ?", time.iso8601(time.now() - 3600),
        id))
      local b = jobs.claim()
      assert.equal(id, b.id)
      assert.equal(2, b.attempts)
      assert.equal("jw_b", row(id).locked_by)
      -- the first runner lost the job: its lease cannot be renewed
      jobs.worker = "jw_a"
      assert.is_false(jobs.touch(a))
      jobs.worker = "jw_b"
      assert.is_true(jobs.touch(b))
    end)

    it("keeps one queued job per dedup key and runs one of a key at a time", function()
      local a = jobs.enqueue("t.k", {}, { dedup_key = "k1" })
      assert.equal(a, jobs.enqueue("t.k", {}, { dedup_key = "k1" }))
      assert.equal(a, jobs.claim().id)
      local b = jobs.enqueue("t.k", {}, { dedup_key = "k1" }) -- a runs: a new one is queued
      assert.not_equal(a, b)
      assert.not_equal(b, jobs.enqueue("t.k", {}, { dedup_key = "k2" }))
      local next_job = jobs.claim()
      assert.equal("k2", next_job.dedup_key) -- b waits while a runs
      assert.is_nil(jobs.claim())
    end)

    it("queues a job again without counting the attempt when its handler gives up", function()
      jobs.handlers["t.stop"] = function() jobs.requeue_error() end
      local id = jobs.enqueue("t.stop", {})
      assert.is_true(jobs.work_one())
      local r = row(id)
      assert.equal("queued", r.state)
      assert.equal(0, math.tointeger(r.attempts))
    end)

    it("two runner processes on one database never run a job twice", function()
      assert(db.exec("CREATE TABLE IF NOT EXISTS job_runs (job_id TEXT NOT NULL, worker TEXT "
        .. "NOT NULL, started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION)"))
      assert(db.exec("DELETE FROM job_runs"))
      local ids = {}
      for i = 1, 40 do ids[i] = jobs.enqueue("t.race", { i = i }) end
      local start_at = time.now() + 1.5
      local procs = {}
      for i = 1, 2 do
        local log = helpers.tmpdir("fm-jobs-") .. "/w.log"
        procs[i] = { log = log, p = helpers.spawn { argv = { helpers.bin(), "exec",
          helpers.root .. "/spec/fixtures/jobs_worker.lua", url, tostring(start_at), "w" .. i },
          cwd = helpers.root, stdout = log, stderr = log,
          env = { FM_HOME = helpers.root, LOG_LEVEL = "warn" } } }
      end
      for _, w in ipairs(procs) do
        local how, code = w.p:wait(60)
        assert.equal("exit", how, helpers.read_file(w.log))
        assert.equal(0, code, helpers.read_file(w.log))
      end
      local runs = assert(db.query("SELECT job_id, worker FROM job_runs"))
      local count, by_worker = {}, {}
      for _, r in ipairs(runs) do
        count[r.job_id] = (count[r.job_id] or 0) + 1
        by_worker[r.worker] = (by_worker[r.worker] or 0) + 1
      end
      for _, id in ipairs(ids) do
        assert.equal(1, count[id], id .. " ran " .. tostring(count[id]) .. " times")
        assert.equal("done", row(id).state)
      end
      assert.equal(40, #runs)
      assert.is_true((by_worker.w1 or 0) > 0 and (by_worker.w2 or 0) > 0,
        "both runners took jobs")
    end)
  end)
end
