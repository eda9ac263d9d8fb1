-- Authentication failures after credential or secret rotation: a password, key or token was
-- rotated, expired or revoked, and some clients still use the old one; or a permission was
-- removed. Knowledge pack: kb/credential-rotation-auth-failures.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local function assess(ctx)
  local a = {
    password = count(ctx, "cred_db_password", "cred_mysql_denied"),
    generic = ctx.signal("auth_failure"),          -- built-in: authentication failed, 401
    key = ctx.signal("cred_key_invalid"),
    expired = ctx.signal("cred_token_expired"),
    forbidden = ctx.signal("cred_forbidden"),
    vault = ctx.signal("cred_vault"),
    rotation = ctx.signal("cred_rotation_event"),
    -- 403s / 429s that are rate limits, not permissions
    throttled = count(ctx, "rate_limited", "ratelimit_provider"),
    words = ctx.said("password", "credential", "secret", "rotation", "rotated", "401", "403",
                     "unauthorized", "forbidden", "api key", "token", "access denied"),
  }
  if a.throttled > 0 then a.forbidden = math.max(a.forbidden - a.throttled, 0) end
  -- authentication (who are you) vs authorisation (you may not)
  a.authn = a.password + a.key + a.expired + a.vault
    + math.max(a.generic - a.password - a.key, 0)
  a.strong = a.authn > 0 or a.forbidden > 0
  return a
end

return {
  id = "credential-rotation-auth-failures",
  title = "Authentication failures after credential or secret rotation",
  version = "1.0.0",
  description = "A service suddenly cannot authenticate to a database, API or cloud service "
    .. "(password authentication failed, Access denied for user, 401, invalid API key, AWS "
    .. "ExpiredToken). Separates a rotated secret that running pods still hold, an expired or "
    .. "revoked token, and a permission change (403 with a valid identity).",
  tags = { "credentials", "secret-rotation", "authentication", "401", "403", "password",
           "api-key", "vault", "iam" },
  category = "security",
  kb = "authentication failures credential secret rotation password authentication failed 401",
  signals = {
    { name = "cred_db_password", severity = "error",
      pattern = [=[password authentication failed for user]=],
      description = "PostgreSQL rejected the password" },
    { name = "cred_mysql_denied", severity = "error",
      pattern = [=[Access denied for user '[^']*'@'[^']*' \(using password: (YES|NO)\)]=],
      description = "MySQL rejected the credentials (error 1045)" },
    { name = "cred_key_invalid", severity = "error",
      pattern = [=[invalid_client|unauthorized_client|[Ii]nvalid [Aa][Pp][Ii] [Kk]ey|]=]
        .. [=[invalid_api_key|Incorrect API key|InvalidAccessKeyId|InvalidClientTokenId|]=]
        .. [=[SignatureDoesNotMatch|UnrecognizedClientException|"status": ?401\b|]=]
        .. [=[\bstatus=401\b]=],
      description = "the API key / client credentials were rejected" },
    { name = "cred_token_expired", severity = "error",
      pattern = [=[ExpiredToken|security token included in the request is expired|]=]
        .. [=[[Tt]oken (has )?expired|jwt expired|TokenExpiredError|invalid_grant|]=]
        .. [=[lease not found or lease is not renewable]=],
      description = "a token or lease expired (not refreshed)" },
    { name = "cred_forbidden", severity = "warning",
      pattern = [=[is not authorized to perform: [A-Za-z0-9-]+:[A-Za-z]+|AccessDenied]=]
        .. [=[(Exception)?\b|permission denied for (table|relation|schema|database|sequence)]=]
        .. [=[|HTTP/[0-9.]{1,3}" 403 |"status": ?403\b|\bstatus=403\b|403 Forbidden]=],
      description = "authorisation refused: the identity is known, the permission missing" },
    { name = "cred_vault", severity = "error",
      pattern = [=[Code: 403\. Errors:|vault: .*permission denied|failed to renew lease]=],
      description = "Vault refused the token or lease" },
    { name = "cred_rotation_event", severity = "info",
      pattern = [=[RotateSecret|rotation (succeeded|completed|finished)|[Ss]ecret (was )?]=]
        .. [=[(rotated|updated)|AWSPENDING|finishSecret|ALTER (ROLE|USER) [^ ]+ (WITH )?]=]
        .. [=[PASSWORD|secret/[a-z0-9.-]+ (configured|created)|password (was )?(changed|rotated)]=],
      description = "a credential rotation or secret update in the evidence" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    if a.authn > 0 then
      local s = sig(ctx, "cred_db_password") or sig(ctx, "cred_mysql_denied")
        or sig(ctx, "cred_token_expired") or sig(ctx, "cred_key_invalid")
        or sig(ctx, "cred_vault") or sig(ctx, "auth_failure")
      score = 0.55 + 0.35 * sat(a.authn, 5)
      why[#why + 1] = "authentication rejected: " .. span(s)
    end
    if a.forbidden > 0 then
      score = math.max(score, 0.4 + 0.2 * sat(a.forbidden, 5)) + (a.authn > 0 and 0.05 or 0)
      why[#why + 1] = "authorisation refused (403 / AccessDenied): "
        .. span(sig(ctx, "cred_forbidden"))
    end
    local r = sig(ctx, "cred_rotation_event")
    if r then
      score = a.strong and score + 0.1 or math.max(score, 0.2)
      why[#why + 1] = "credential rotation / secret update: " .. span(r)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user describes credential / authentication trouble"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "cred_db_password", "Database password rejected")
      see(ctx, out, "cred_mysql_denied", "MySQL access denied for the user")
      see(ctx, out, "auth_failure", "Authentication failures (all kinds)")
      see(ctx, out, "cred_key_invalid", "API key / client credentials rejected")
      see(ctx, out, "cred_token_expired", "Token or lease expired")
      see(ctx, out, "cred_vault", "Vault refused the token")
      see(ctx, out, "cred_forbidden", "Authorisation refused (403 / AccessDenied)")
      see(ctx, out, "cred_rotation_event", "Credential rotation / secret update")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("secret rotation authentication failed stale credentials restart pods")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local mismatch = a.password + a.key
      out:hypothesis { key = "cred_stale_secret", category = "config",
        statement = "The credential was rotated in the store (Vault, Secrets Manager, a "
          .. "Kubernetes Secret) but running clients still use the old value (environment "
          .. "read at start, subPath mount, cache), or the rotation was half done",
        likelihood = mismatch > 0 and math.min(0.85, 0.45 + 0.15 * sat(mismatch, 3)
          + (a.rotation > 0 and 0.25 or 0)) or (a.rotation > 0 and 0.3 or 0.15) }
      out:hypothesis { key = "cred_expired_or_revoked", category = "security",
        statement = "A short-lived token, lease or key expired or was revoked and is not "
          .. "refreshed (workload identity misconfigured, refresh thread died, key expiry "
          .. "policy)",
        likelihood = a.expired + a.vault > 0 and math.min(0.85, 0.5 + 0.25 * sat(a.expired
          + a.vault, 3)) or 0.1 }
      out:hypothesis { key = "cred_permission_change", category = "security",
        statement = "The identity is valid but a permission was removed or changed (IAM "
          .. "policy, database grant): 403 / AccessDenied rather than 401",
        likelihood = a.forbidden > 0 and math.min(0.8, 0.45 + 0.25 * sat(a.forbidden, 3)
          - (a.authn > a.forbidden and 0.15 or 0)) or 0.1 }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("cred_stale_secret", "for", "cred_db_password", "the database rejects the password")
      ev("cred_stale_secret", "for", "cred_mysql_denied", "MySQL rejects the credentials")
      ev("cred_stale_secret", "for", "cred_key_invalid", "the API key is rejected")
      ev("cred_stale_secret", "for", "cred_rotation_event", "a rotation happened")
      ev("cred_expired_or_revoked", "for", "cred_token_expired", "tokens expired")
      ev("cred_expired_or_revoked", "for", "cred_vault", "Vault refuses the token")
      ev("cred_permission_change", "for", "cred_forbidden", "403 / AccessDenied")
      if a.password > 0 then
        local s = sig(ctx, "cred_db_password") or sig(ctx, "cred_mysql_denied")
        out:evidence { hypothesis = "cred_permission_change", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the password itself is rejected: authentication, not a missing grant" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      if a.rotation == 0 then
        out:ask { label = "When did the secret change?", hypothesis = "cred_stale_secret",
          command = "kubectl -n <ns> get secret <secret> -o "
            .. "jsonpath='{.metadata.managedFields[*].time}{\"\\n\"}'",
          why = "compare with the failures' start and the pods' start times" }
      end
      out:ask { label = "Do the failing pods predate the rotation?",
        hypothesis = "cred_stale_secret",
        command = "kubectl -n <ns> get pods -l app=<app> -o "
          .. "custom-columns=NAME:.metadata.name,START:.status.startTime",
        why = "pods started before the rotation fail, newer pods work: stale credentials" }
      if a.password > 0 then
        out:ask { label = "Test the stored credential directly", hypothesis = "cred_stale_secret",
          command = "PGPASSWORD=\"$(kubectl -n <ns> get secret <secret> -o "
            .. "jsonpath='{.data.password}' | base64 -d)\" psql -h <db-host> -U <user> -d <db> "
            .. "-c 'select 1'",
          why = "fails too: the store and the database disagree (rotation half done)" }
      end
      if a.expired + a.forbidden > 0 or ctx.mentions("aws", "iam", "s3") then
        out:ask { label = "Which identity the workload uses", hypothesis = "cred_permission_change",
          command = "aws sts get-caller-identity",
          why = "the node role instead of the workload role: identity binding broken" }
      end
      out:ask { label = "Rotation history in the secret store", hypothesis = "cred_stale_secret",
        command = "aws secretsmanager describe-secret --secret-id <id> --query "
          .. "'{Last:LastRotatedDate,Versions:VersionIdsToStages}'   # or: vault kv metadata get "
          .. "<path>" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      local mismatch = a.password + a.key
      if a.expired + a.vault > mismatch and a.expired + a.vault > 0 then
        local s = sig(ctx, "cred_token_expired") or sig(ctx, "cred_vault")
        out:conclude { hypothesis = "cred_expired_or_revoked", severity = "high",
          confidence = math.min(0.8, 0.55 + 0.2 * sat(a.expired + a.vault, 3)),
          root_cause = "Requests carry an expired token or lease (" .. span(s) .. "): the "
            .. "credential is not refreshed before it expires." }
      elseif mismatch > 0 then
        local s = sig(ctx, "cred_db_password") or sig(ctx, "cred_mysql_denied")
          or sig(ctx, "cred_key_invalid")
        out:conclude { hypothesis = "cred_stale_secret", severity = "high",
          confidence = math.min(0.85, 0.45 + 0.15 * sat(mismatch, 3)
            + (a.rotation > 0 and 0.2 or 0)),
          root_cause = "Clients present a credential the server no longer accepts (" .. span(s)
            .. ")" .. (a.rotation > 0 and (": the secret was rotated (" .. span(sig(ctx,
            "cred_rotation_event")) .. ") and running clients still hold the old value")
            or ": most likely a rotated secret that running clients have not reloaded")
            .. "." }
      elseif a.forbidden >= 3 then
        out:conclude { hypothesis = "cred_permission_change", severity = "medium",
          confidence = math.min(0.7, 0.45 + 0.2 * sat(a.forbidden, 3)),
          root_cause = "The identity is accepted but not allowed (" .. span(sig(ctx,
            "cred_forbidden")) .. "): a permission or grant was removed or changed." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.password + a.key > 0 or a.rotation > 0 or not a.strong then
        out:mitigate { title = "Restart the consumers so they read the new secret",
          command = "kubectl -n <ns> rollout restart deploy/<app>",
          risk = "low", undo = "kubectl -n <ns> rollout undo deploy/<app>",
          verify = "kubectl -n <ns> logs deploy/<app> --since=5m | grep -ci "
            .. "'authentication failed'" }
        out:mitigate { title = "Or point the secret back to the previous version",
          command = "aws secretsmanager update-secret-version-stage --secret-id <id> "
            .. "--version-stage AWSCURRENT --move-to-version-id <previous> "
            .. "--remove-from-version-id <current>",
          description = "only when the old credential is still valid on the server",
          risk = "medium", undo = "move AWSCURRENT back to <current>" }
        out:solve { title = "Rotate with overlap and reload automatically",
          description = "create the new credential, deploy it everywhere, verify, then revoke "
            .. "the old one; mount secrets as files (not subPath) or use a reloader",
          risk = "low", undo = "none" }
      end
      if a.expired + a.vault > 0 then
        out:mitigate { title = "Get fresh credentials now",
          command = "kubectl -n <ns> rollout restart deploy/<app>",
          description = "a restart re-runs the credential provider chain (IRSA, workload "
            .. "identity, Vault agent); check the token refresh errors before it",
          risk = "low", undo = "kubectl -n <ns> rollout undo deploy/<app>",
          verify = "aws sts get-caller-identity" }
        out:solve { title = "Use refreshed short-lived identities",
          description = "workload identity / IRSA or Vault agent renewing leases; alert on "
            .. "token refresh failures",
          risk = "medium", undo = "revert to the previous credential source" }
      end
      if a.forbidden > 0 then
        out:mitigate { title = "Re-grant the removed permission",
          description = "restore the IAM policy statement or database GRANT that was removed",
          risk = "medium", undo = "remove the grant again" }
        out:solve { title = "Manage permissions as code, with review",
          description = "IAM policies and grants in Terraform / migrations; a change shows in "
            .. "review and can be reverted; alert on AccessDenied rates per service",
          risk = "low", undo = "none" }
      end
    end },
  },
}
