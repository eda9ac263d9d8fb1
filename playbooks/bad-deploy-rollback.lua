-- Bad deploy and rollback: a release or configuration change caused errors, latency or a stuck
-- rollout. Looks for the deploy itself (rollout events, canary analysis, progress deadline) and
-- for what broke with it: new exceptions and 5xx, a schema the running code cannot read, a
-- configuration the new pods reject. Knowledge pack: kb/bad-deploy-rollback.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local function assess(ctx)
  local a = {
    rollout = ctx.signal("deploy_rollout"),
    stuck = ctx.signal("deploy_progress_deadline"),
    canary = ctx.signal("deploy_canary_failed"),
    migration = ctx.signal("deploy_migration"),
    schema = ctx.signal("deploy_schema_mismatch"),
    config = ctx.signal("deploy_config_error"),
    fivexx = count(ctx, "http_5xx", "http5xx_json_status"),
    exceptions = count(ctx, "java_exception", "python_traceback", "go_panic"),
    crash = count(ctx, "k8s_crashloop", "k8s_probe_failed"),
    words = ctx.said("deploy", "release", "rollout", "roll out", "rollback", "new version",
                     "upgrade"),
  }
  a.deployed = a.rollout + a.stuck + a.canary + a.migration > 0
  a.broke = a.fivexx + a.exceptions + a.crash + a.schema + a.config + a.stuck + a.canary
  a.strong = a.deployed and a.broke > 0
  return a
end

return {
  id = "bad-deploy-rollback",
  title = "Bad deploy and rollback",
  version = "1.0.0",
  description = "Errors, 5xx or a stuck rollout started with a release or configuration "
    .. "change. Needs the deploy in the evidence (rollout events, Helm / Argo CD, canary "
    .. "analysis, migrations) and what broke with it; separates a code regression, a schema "
    .. "change the running code cannot read, a bad configuration and a rollout that never "
    .. "becomes ready. Roll back first, investigate after.",
  tags = { "deploy", "release", "rollback", "regression", "canary", "rollout", "migration" },
  category = "code",
  kb = "bad deploy rollback regression kubectl rollout undo helm rollback canary",
  signals = {
    { name = "deploy_rollout", severity = "info",
      pattern = [=[Scaled up replica set [a-z0-9-]+ to|successfully rolled out|Waiting for ]=]
        .. [=[deployment "[^"]+" rollout to finish|Release "[^"]+" has been upgraded|]=]
        .. [=[Sync operation to [0-9a-f]+ succeeded|Deployed version|New rollout started]=],
      description = "a rollout / release in the evidence" },
    { name = "deploy_progress_deadline", severity = "error",
      pattern = [=[ProgressDeadlineExceeded|exceeded its progress deadline]=],
      description = "the new ReplicaSet never became ready in time" },
    { name = "deploy_canary_failed", severity = "error",
      pattern = [=[Canary failed|Rolling back [^ ]+ failed checks|RolloutAborted|Rollout ]=]
        .. [=[aborted|AnalysisRun [^ ]+ (failed|errored)|canary analysis failed]=],
      flags = "i",
      description = "canary analysis failed or the rollout was aborted" },
    { name = "deploy_migration", severity = "info",
      pattern = [=[Migrating schema|Applying migration|Successfully applied [0-9]+ migration|]=]
        .. [=[alembic\.runtime\.migration|Running upgrade [0-9a-f]+ -> [0-9a-f]+|]=]
        .. [=[== [0-9]+ [A-Za-z]+: migrating]=],
      description = "a schema migration ran" },
    { name = "deploy_schema_mismatch", severity = "error",
      pattern = [=[column "?[a-z_.]+"? does not exist|Unknown column '[^']+' in|no such column:|]=]
        .. [=[relation "[a-z_.]+" does not exist|Table '[^']+' doesn't exist]=],
      description = "queries use a column or table the schema no longer has (or not yet)" },
    { name = "deploy_config_error", severity = "error",
      pattern = [=[missing required (environment variable|env var|configuration|config)|]=]
        .. [=[invalid configuration|failed to (load|parse) config|Could not resolve placeholder]=]
        .. [=[|ConfigurationException|unknown (configuration )?(field|key) "]=],
      description = "the new pods reject their configuration" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local d = sig(ctx, "deploy_rollout") or sig(ctx, "deploy_migration")
    if a.deployed then
      local s = sig(ctx, "deploy_progress_deadline") or sig(ctx, "deploy_canary_failed") or d
      why[#why + 1] = "a deploy in the evidence: " .. span(s)
      if a.stuck + a.canary > 0 then
        score = 0.65 + 0.2 * sat(a.stuck + a.canary, 2)
      elseif a.broke > 0 then
        score = 0.55 + 0.3 * sat(a.broke, 10) + (a.fivexx > 0 and a.exceptions > 0 and 0.05 or 0)
      else
        score = 0.2                            -- a deploy and nothing broken: not a bad deploy
      end
    end
    if a.deployed and a.broke > 0 then
      local s = sig(ctx, "deploy_schema_mismatch") or sig(ctx, "deploy_config_error")
        or sig(ctx, "http_5xx") or sig(ctx, "http5xx_json_status")
        or sig(ctx, "java_exception") or sig(ctx, "python_traceback") or sig(ctx, "go_panic")
        or sig(ctx, "k8s_crashloop") or sig(ctx, "k8s_probe_failed")
      if s then why[#why + 1] = "broken since: " .. span(s) end
    elseif a.schema > 0 then                   -- a schema mismatch hints at a migration
      score = math.max(score, 0.35)
      why[#why + 1] = "code and schema disagree: " .. span(sig(ctx, "deploy_schema_mismatch"))
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user links the problem to a deploy"
    end
    if a.deployed and a.broke == 0 then       -- the evidence shows the deploy went fine
      score = math.min(score, 0.25)
      why[#why + 1] = "nothing in the evidence broke with the deploy"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "deploy_rollout", "Rollout / release")
      see(ctx, out, "deploy_progress_deadline", "Rollout exceeded its progress deadline")
      see(ctx, out, "deploy_canary_failed", "Canary analysis failed")
      see(ctx, out, "deploy_migration", "Schema migration")
      see(ctx, out, "deploy_schema_mismatch", "Column or table missing for the running code")
      see(ctx, out, "deploy_config_error", "Configuration rejected")
      see(ctx, out, "http_5xx", "5xx responses")
      see(ctx, out, "java_exception", "Java exceptions")
      see(ctx, out, "python_traceback", "Python tracebacks")
      see(ctx, out, "go_panic", "Go panics")
      see(ctx, out, "k8s_crashloop", "Pods crash looping")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("bad deploy rollback kubectl rollout undo helm rollback migration")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local errors = a.fivexx + a.exceptions
      out:hypothesis { key = "deploy_code_regression", category = "code",
        statement = "The new release has a regression: new exceptions and 5xx on the code "
          .. "paths it changed",
        likelihood = a.deployed and errors > 0 and math.min(0.85, 0.5 + 0.2 * sat(errors, 10)
          + (a.exceptions > 0 and 0.1 or 0) - (a.schema + a.config > 0 and 0.25 or 0))
          or 0.15 }
      out:hypothesis { key = "deploy_schema_mismatch", category = "database",
        statement = "A migration shipped with the release is incompatible with the code that "
          .. "runs (a column dropped or renamed while old pods still query it)",
        likelihood = a.schema > 0 and math.min(0.85, 0.55 + (a.migration > 0 and 0.2 or 0))
          or (a.migration > 0 and 0.25 or 0.05) }
      out:hypothesis { key = "deploy_config_change", category = "config",
        statement = "Configuration or a feature flag shipped with the release is wrong: the new "
          .. "pods reject it or behave differently",
        likelihood = a.config > 0 and 0.65 or 0.1 }
      out:hypothesis { key = "deploy_rollout_stuck", category = "environment",
        statement = "The new version never becomes ready (crash loop, failing probes, "
          .. "ProgressDeadlineExceeded) so the rollout is stuck or aborted",
        likelihood = a.stuck + a.canary > 0 and 0.6 or (a.crash > 0 and a.deployed and 0.4
          or 0.05) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("deploy_code_regression", "for", "deploy_rollout", "a rollout happened")
      ev("deploy_code_regression", "for", "http_5xx", "5xx responses")
      ev("deploy_code_regression", "for", "java_exception", "new exceptions")
      ev("deploy_code_regression", "for", "python_traceback", "new tracebacks")
      ev("deploy_schema_mismatch", "for", "deploy_migration", "a migration ran")
      ev("deploy_schema_mismatch", "for", "deploy_schema_mismatch", "missing column or table")
      ev("deploy_config_change", "for", "deploy_config_error", "configuration rejected")
      ev("deploy_rollout_stuck", "for", "deploy_progress_deadline", "progress deadline exceeded")
      ev("deploy_rollout_stuck", "for", "deploy_canary_failed", "canary failed")
      ev("deploy_rollout_stuck", "for", "k8s_crashloop", "new pods crash loop")
    end },

    { name = "ask", run = function(ctx, out)
      out:ask { label = "Rollout history", hypothesis = "deploy_code_regression",
        command = "kubectl -n <ns> rollout history deploy/<app>",
        why = "the deploy time against the start of the errors" }
      out:ask { label = "Which version fails", hypothesis = "deploy_code_regression",
        command = "kubectl -n <ns> get pods -L app.kubernetes.io/version -o wide && "
          .. "kubectl -n <ns> get rs -o wide",
        why = "errors only on the new ReplicaSet confirm the release" }
      out:ask { label = "What changed between the versions",
        command = "git log --oneline <previous_tag>..<current_tag>",
        why = "migrations, config and flag changes in the same window" }
      if ctx.signal("deploy_migration") + ctx.signal("deploy_schema_mismatch") > 0 then
        out:ask { label = "Is the migration reversible?", hypothesis = "deploy_schema_mismatch",
          command = "SELECT version, description, installed_on FROM flyway_schema_history "
            .. "ORDER BY installed_rank DESC LIMIT 5",
          why = "rolling back code over an irreversible migration breaks the old code too" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if not a.deployed then return end
      if a.schema > 0 then
        out:conclude { hypothesis = "deploy_schema_mismatch", severity = "high",
          confidence = math.min(0.85, 0.6 + (a.migration > 0 and 0.15 or 0)),
          root_cause = "The release's migration changed the schema under running code: queries "
            .. "fail on a missing column or table (" .. span(sig(ctx,
            "deploy_schema_mismatch")) .. ")." }
      elseif a.config > 0 then
        out:conclude { hypothesis = "deploy_config_change", severity = "high", confidence = 0.65,
          root_cause = "The new release's configuration is rejected ("
            .. span(sig(ctx, "deploy_config_error")) .. ")." }
      elseif a.stuck + a.canary > 0 then
        local s = sig(ctx, "deploy_progress_deadline") or sig(ctx, "deploy_canary_failed")
        out:conclude { hypothesis = "deploy_rollout_stuck", severity = "medium",
          confidence = 0.6,
          root_cause = "The new version never became healthy (" .. span(s) .. "): the "
            .. "rollout is stuck or was aborted." }
      elseif a.fivexx + a.exceptions > 0 then
        out:conclude { hypothesis = "deploy_code_regression", severity = "high",
          confidence = math.min(0.85, 0.55 + 0.15 * sat(a.fivexx + a.exceptions, 10)
            + (a.exceptions > 0 and 0.1 or 0)),
          root_cause = "Errors started with the rollout (" .. span(sig(ctx, "deploy_rollout")
            or sig(ctx, "deploy_migration")) .. "): the new release has a regression"
            .. (a.exceptions > 0 and " that throws exceptions" or "") .. "." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.schema > 0 then
        out:mitigate { title = "Roll forward with a hotfix (or restore the column)",
          description = "old code cannot run against a schema it cannot read: do not just roll "
            .. "back the code over an irreversible migration",
          risk = "medium", undo = "revert the hotfix" }
        out:solve { title = "Backward-compatible migrations: expand, migrate, contract",
          description = "add the new column, write both, switch reads, drop the old one in a "
            .. "later release",
          risk = "low", undo = "none" }
        return
      end
      out:mitigate { title = "Roll back now, investigate after",
        command = "kubectl -n <ns> rollout undo deploy/<app>   # helm -n <ns> rollback "
          .. "<release> <revision>",
        risk = "low", undo = "kubectl -n <ns> rollout undo deploy/<app>",
        verify = "kubectl -n <ns> get pods -L app.kubernetes.io/version" }
      out:mitigate { title = "Freeze further deploys until the incident is closed",
        risk = "low", undo = "lift the freeze" }
      out:solve { title = "Fix with a regression test; canary with automatic rollback",
        description = "reproduce the failure in a test, redeploy through the pipeline; Argo "
          .. "Rollouts / Flagger analysis on error ratio and latency",
        risk = "low", undo = "none" }
    end },
  },
}
