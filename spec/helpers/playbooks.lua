-- Helpers of the built-in playbook specs (spec/playbooks/<id>_spec.lua): each one runs
-- playbooks/<id>.lua through fm.agent.context and fm.agent.runner on its fixtures
-- (spec/fixtures/playbooks/<id>/positive/..., negative/...) and checks what it concluded.
--
--   local P = require("spec.helpers.playbooks").for_playbook("disk-full")
--
-- P is bound to one playbook id; every function below is a plain function (P.run(...), not
-- P:run(...)). Fixtures are named relative to P.dir = "spec/fixtures/playbooks/<id>/", either as
-- a directory ("positive/pg-deadlock": every file in it, sorted) or as a list of file names
-- ({ "positive/app-enospc.log", "positive/df-h.txt" }); {} is no evidence at all.
--
-- Running:
--   P.files(sub)                      the sorted paths of the files in P.dir .. sub (not empty)
--   P.context_of(fixture, symptom)    the ctx of context.from_files on the fixture
--   P.run(fixture, symptom)           runner.run over every playbook: result, ctx
--   P.run_paths(paths, symptom)       the same on repository-relative paths (shared evidence)
--   P.run_words(symptom)              this playbook alone on the user's words, no evidence:
--                                     result, ctx
-- Reading a result (result = runner.run(...), m = one matched record):
--   P.matched(result)                 this playbook's matched record, or nil
--   P.score(result)                   this playbook's score (0 when it was not scored)
--   P.no_failure(result)              asserts this playbook did not fail (raise, time out)
--   P.keys(m)                         m's hypotheses by key
--   P.commands(m)                     the non-empty commands m asks for, a list
--   P.command_text(m)                 every command m asks for, one a line (one string)
--   P.mitigation_with(m, text)        the first mitigation whose command contains text, or nil
--   P.solution_with(m, text)          the same among the solutions
--   P.finding_at(m, filename, line)   the first finding with that file name (any when nil)
--                                     and line (any line when nil), or nil
-- Asserting:
--   P.assert_signals(fixture, names)  each signal named fired (count > 0) on the fixture; ctx
--   P.assert_matched(result, min)     no failure, matched, score >= min (when given): m
--                                     (give it `result`, not P.run(...)'s result, ctx)
--   P.assert_hypotheses(m, keys)      each hypothesis key is present; returns P.keys(m)
--   P.assert_conclusion(m, key, min)  m concluded key, confidence >= min (when given)
--   P.assert_most_likely(m, key)      no other hypothesis is more likely than key
--   P.assert_asks(m, wants)           m asks some command; each want is in a command (plain)
--   P.assert_remedies(m)              mitigations and solutions; each mitigation has risk and
--                                     an undo that is not ""
--   P.check_positive{dir, symptom, min_score, min_confidence, hypotheses, conclusion, asks,
--                    first}           all of the above on one positive fixture directory; the
--                                     playbook ranks first unless first == false: m, result
--   P.check_negative{dir, symptom, first}   under the threshold (score < 0.3, not matched),
--                                     no failure; `first`: the playbook that ranks first
--   P.check_words(symptom)            words alone, this playbook only: 0 < score <= 0.4,
--                                     matched, no conclusion
--   P.check_words_low(symptom)        words alone, every playbook: score <= 0.4 and, when
--                                     matched, no conclusion
--
-- opts of for_playbook: now = "2026-11-22T12:00:00Z" freezes ctx.now of every context built
-- from fixture files (fixtures holding dated certificates); P.run_words does not use it.
local assert = require "luassert"
local context = require "fm.agent.context"
local runner = require "fm.agent.runner"

local M = {}

M.FIXTURES = "spec/fixtures/playbooks/"

function M.for_playbook(id, opts)
  opts = opts or {}
  local P = { id = id, dir = M.FIXTURES .. id .. "/" }
  local DIR = P.dir

  function P.files(sub)
    local out = {}
    local p = assert(io.popen("ls -1 '" .. DIR .. sub .. "'"))
    for f in p:lines() do out[#out + 1] = DIR .. sub .. "/" .. f end
    p:close()
    assert(#out > 0, "no fixture files in " .. sub)
    return out
  end

  local function paths_of(fixture)
    if type(fixture) == "string" then return P.files(fixture) end
    local paths = {}
    for i, f in ipairs(fixture) do paths[i] = DIR .. f end
    return paths
  end

  local function build(paths, symptom)
    local ctx = assert(context.from_files(paths, { symptom = symptom or "" }))
    if opts.now then ctx.now = opts.now end
    return ctx
  end

  function P.context_of(fixture, symptom)
    return build(paths_of(fixture), symptom)
  end

  function P.run(fixture, symptom)
    local ctx = P.context_of(fixture, symptom)
    return runner.run(ctx), ctx
  end

  function P.run_paths(paths, symptom)
    local ctx = build(paths, symptom)
    return runner.run(ctx), ctx
  end

  function P.run_words(symptom)
    local ctx = assert(context.build { symptom = symptom, evidence = {} })
    return runner.run(ctx, { only = id }), ctx
  end

  function P.matched(result)
    for _, m in ipairs(result.matched) do if m.id == id then return m end end
  end

  function P.score(result)
    for _, s in ipairs(result.scores) do if s.id == id then return s.score end end
    return 0
  end

  function P.no_failure(result)
    for _, f in ipairs(result.failed) do
      assert.is_not.equal(id, f.id, "playbook failed: " .. tostring(f.message))
    end
  end

  function P.keys(m)
    local t = {}
    for _, h in ipairs(m.hypotheses) do t[h.key] = h end
    return t
  end

  function P.commands(m)
    local t = {}
    for _, a in ipairs(m.asks) do
      if a.command and a.command ~= "" then t[#t + 1] = a.command end
    end
    return t
  end

  function P.command_text(m)
    local t = {}
    for _, a in ipairs(m.asks) do if a.command then t[#t + 1] = a.command end end
    return table.concat(t, "\n")
  end

  local function with(list, text)
    for _, x in ipairs(list) do
      if (x.command or ""):find(text, 1, true) then return x end
    end
  end

  function P.mitigation_with(m, text) return with(m.mitigations, text) end

  function P.solution_with(m, text) return with(m.solutions, text) end

  function P.finding_at(m, filename, line)
    for _, f in ipairs(m.findings) do
      if f.filename and (filename == nil or f.filename == filename)
         and f.line and (line == nil or f.line == line) then
        return f
      end
    end
  end

  function P.assert_signals(fixture, names)
    local ctx = P.context_of(fixture)
    for _, name in ipairs(names) do
      local sg = ctx.signals[name]
      assert.truthy(sg and sg.count > 0, name .. " did not fire")
    end
    return ctx
  end

  function P.assert_matched(result, min_score)
    assert(min_score == nil or type(min_score) == "number",
           "assert_matched(result, min_score): pass the result alone, not P.run's two values")
    P.no_failure(result)
    local m = assert(P.matched(result), id .. " not matched")
    if min_score then assert.is_true(m.score >= min_score, "score " .. m.score) end
    return m
  end

  function P.assert_hypotheses(m, keys)
    local have = P.keys(m)
    for _, k in ipairs(keys) do assert.truthy(have[k], "hypothesis " .. k) end
    return have
  end

  function P.assert_conclusion(m, key, min_confidence)
    assert.truthy(m.conclusion, "no conclusion")
    assert.equal(key, m.conclusion.hypothesis)
    if min_confidence then
      assert.is_true(m.conclusion.confidence >= min_confidence,
                     "confidence " .. m.conclusion.confidence)
    end
  end

  function P.assert_most_likely(m, key)
    local keys = P.keys(m)
    for k, h in pairs(keys) do
      if k ~= key then
        assert.is_true(keys[key].likelihood >= h.likelihood, k .. " more likely")
      end
    end
  end

  function P.assert_asks(m, wants)
    local cmds = P.commands(m)
    assert.is_true(#cmds > 0, "no command asked")
    local all = table.concat(cmds, "\n")
    for _, want in ipairs(wants or {}) do
      assert.truthy(all:find(want, 1, true), "ask '" .. want .. "' missing in:\n" .. all)
    end
  end

  function P.assert_remedies(m)
    assert.is_true(#m.mitigations > 0 and #m.solutions > 0)
    for _, x in ipairs(m.mitigations) do assert.truthy(x.undo ~= "" and x.risk) end
  end

  function P.check_positive(c)
    local result = P.run(c.dir, c.symptom)
    P.no_failure(result)
    local m = assert(P.matched(result), id .. " not matched for " .. c.dir)
    assert.is_true(m.score >= c.min_score, "score " .. m.score)
    if c.first ~= false then
      assert.equal(id, result.scores[1].id, "ranked first: " .. result.scores[1].id)
    end
    assert.is_true(#m.reasons > 0)
    P.assert_hypotheses(m, c.hypotheses)
    -- the concluded root cause is the expected hypothesis, and the most likely one
    P.assert_conclusion(m, c.conclusion, c.min_confidence)
    P.assert_most_likely(m, c.conclusion)
    -- asks carry exact commands
    P.assert_asks(m, c.asks)
    -- findings point at evidence lines; remedies say how to undo them
    assert.truthy(P.finding_at(m), "no finding with a file and line")
    P.assert_remedies(m)
    return m, result
  end

  function P.check_negative(c)
    local result = P.run(c.dir, c.symptom)
    P.no_failure(result)
    assert.is_true(P.score(result) < 0.3, "score " .. P.score(result))
    assert.is_nil(P.matched(result))
    -- the right playbook ranks first
    if c.first then assert.equal(c.first, result.scores[1].id) end
    return result
  end

  function P.check_words(symptom)
    local result = P.run_words(symptom)
    local s = P.score(result)
    assert.is_true(s > 0 and s <= 0.4, "score " .. s)
    local m = assert(P.matched(result))
    assert.is_nil(m.conclusion)     -- words alone never conclude
    return result
  end

  function P.check_words_low(symptom)
    local result = P.run({}, symptom)
    assert.is_true(P.score(result) <= 0.4)
    local m = P.matched(result)
    if m then assert.is_nil(m.conclusion) end
    return result
  end

  return P
end

return M
