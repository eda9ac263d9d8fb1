-- Upstream API rate limiting (HTTP 429): an API we call rejects our requests because we exceed
-- its rate limit or quota; our retries often make it worse. Throttling we apply to our own
-- clients (nginx limit_req) is not this playbook's. Knowledge pack: kb/upstream-rate-limiting.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local function assess(ctx)
  local a = {
    r429 = count(ctx, "rate_limited", "ratelimit_429_status"),
    provider = ctx.signal("ratelimit_provider"),
    retry_after = ctx.signal("ratelimit_retry_after"),
    remaining0 = ctx.signal("ratelimit_remaining_zero"),
    retries = ctx.signal("ratelimit_retrying"),
    own = ctx.signal("ratelimit_own_limiter"),
    batch = ctx.signal("ratelimit_batch_job"),
    words = ctx.said("429", "rate limit", "ratelimit", "throttl", "quota", "too many requests"),
  }
  a.upstream = a.r429 + a.provider + a.remaining0
  -- 429s we answer ourselves (nginx limit_req) are inbound throttling, not an upstream's
  a.inbound_only = a.own > 0 and a.provider + a.remaining0 + a.retry_after == 0
  a.strong = a.upstream > 0 and not a.inbound_only
  return a
end

return {
  id = "upstream-rate-limiting",
  title = "Upstream API rate limiting (HTTP 429)",
  version = "1.0.0",
  description = "A third-party or internal API we call answers 429 Too Many Requests (or a "
    .. "provider's throttling error: AWS ThrottlingException, Google RESOURCE_EXHAUSTED, "
    .. "GitHub secondary rate limit). Separates a retry storm, call volume above the quota "
    .. "(traffic growth, a batch job sharing the key) and our own inbound limiter.",
  tags = { "rate-limit", "429", "throttling", "quota", "retry-after", "backoff",
           "third-party-api" },
  category = "external",
  kb = "upstream api rate limiting 429 too many requests retry-after quota throttling",
  signals = {
    { name = "ratelimit_provider", severity = "warning",
      pattern = [=[ThrottlingException|TooManyRequestsException|Rate exceeded|]=]
        .. [=[RESOURCE_EXHAUSTED|Quota exceeded for quota|API rate limit exceeded|secondary ]=]
        .. [=[rate limit|rate_limit_error|RequestLimitExceeded|SlowDown: Please reduce|]=]
        .. [=["code": ?"rate_limit"|"type": ?"rate_limit_error"]=],
      description = "a provider's throttling error" },
    { name = "ratelimit_429_status", severity = "warning",
      pattern = [=["(status|status_code|statusCode)": ?"?429\b|\b(status|status_code|code)=429\b|]=]
        .. [=[status code 429|responded with 429|HTTP 429|\b429 Client Error]=],
      description = "429 status in structured logs or client errors" },
    { name = "ratelimit_retry_after", severity = "info",
      pattern = [=[[Rr]etry-[Aa]fter[:=]? ?"?[0-9]+|retry_after[_a-z]*"?[:=] ?"?[0-9]+]=],
      description = "the upstream told us how long to wait" },
    { name = "ratelimit_remaining_zero", severity = "warning",
      pattern = [=[[Xx]-[Rr]ate[Ll]imit-[Rr]emaining[:=]? ?"?0\b|]=]
        .. [=[ratelimit[_-]remaining"?[:=] ?"?0\b]=],
      description = "quota headers: nothing left in the window" },
    { name = "ratelimit_retrying", severity = "info",
      pattern = [=[[Rr]etrying (in|after) [0-9]|retry attempt [0-9]+|]=]
        .. [=[attempt [0-9]+ ?(/|of) ?[0-9]+|]=]
        .. [=[Retrying request|will retry]=],
      description = "client retries (how much of the volume is retries?)" },
    { name = "ratelimit_own_limiter", severity = "info",
      pattern = [=[limiting requests, excess:|limiting connections by zone]=],
      description = "our own nginx limit_req throttled clients (inbound, not upstream)" },
    { name = "ratelimit_batch_job", severity = "info",
      pattern = [=[backfill|batch job|bulk (import|export|sync)|reindex(ing)? job|cronjob]=],
      flags = "i",
      description = "a batch job in the evidence (may share the API key)" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local s = sig(ctx, "ratelimit_provider") or sig(ctx, "rate_limited")
      or sig(ctx, "ratelimit_429_status") or sig(ctx, "ratelimit_remaining_zero")
    if s then
      score = 0.55 + 0.35 * sat(a.upstream, 6)
      why[#why + 1] = "429 / throttling errors: " .. span(s)
    end
    local r = sig(ctx, "ratelimit_retry_after") or sig(ctx, "ratelimit_remaining_zero")
    if r and s then
      score = score + 0.05
      why[#why + 1] = "rate limit headers: " .. span(r)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user describes throttling / 429s"
    end
    local pull = sig(ctx, "k8s_image_pull")
    if pull and a.strong then                 -- a registry's pull limit: imagepullbackoff's
      score = score - 0.2
      why[#why + 1] = "the throttled calls are image pulls: " .. span(pull)
    end
    if a.inbound_only then                    -- whatever was said: not an upstream's limit
      score = math.min(score, 0.25)
      why[#why + 1] = "the 429s come from our own limiter (limit_req), not an upstream: "
        .. span(sig(ctx, "ratelimit_own_limiter"))
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "rate_limited", "429 Too Many Requests / rate limit exceeded")
      see(ctx, out, "ratelimit_429_status", "429 status in client logs")
      see(ctx, out, "ratelimit_provider", "Provider throttling errors")
      see(ctx, out, "ratelimit_retry_after", "Retry-After given by the upstream")
      see(ctx, out, "ratelimit_remaining_zero", "Rate limit remaining 0")
      see(ctx, out, "ratelimit_retrying", "Client retries")
      see(ctx, out, "ratelimit_batch_job", "Batch job activity")
      see(ctx, out, "ratelimit_own_limiter", "Our own limiter throttling clients")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("rate limiting 429 retry-after backoff jitter quota api key")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local up = a.upstream > 0 and not a.inbound_only
      out:hypothesis { key = "ratelimit_retry_storm", category = "code",
        statement = "Retries without back-off or jitter (several layers each retrying) "
          .. "multiply the outbound calls and keep the quota exhausted",
        likelihood = up and math.min(0.8, 0.3 + 0.35 * sat(a.retries, 4)
          + (a.retries > 0 and a.retry_after > 0 and 0.1 or 0)) or 0.1 }
      out:hypothesis { key = "ratelimit_quota_exceeded", category = "external",
        statement = "Our legitimate call volume exceeds the provider's limit: traffic growth, "
          .. "a feature calling per request instead of caching, a batch job sharing the key, "
          .. "or a scale out with per-instance limiters",
        likelihood = up and math.min(0.8, 0.45 + 0.2 * sat(a.upstream, 6)
          + (a.batch > 0 and 0.15 or 0) - (a.retries > a.upstream and 0.15 or 0)) or 0.1 }
      out:hypothesis { key = "ratelimit_inbound_limiter", category = "config",
        statement = "The 429s are our own inbound limiter (nginx limit_req) throttling clients, "
          .. "not an upstream",
        likelihood = a.inbound_only and 0.7 or (a.own > 0 and 0.3 or 0.05) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("ratelimit_quota_exceeded", "for", "rate_limited", "429 responses")
      ev("ratelimit_quota_exceeded", "for", "ratelimit_429_status", "429 responses")
      ev("ratelimit_quota_exceeded", "for", "ratelimit_provider", "provider throttling errors")
      ev("ratelimit_quota_exceeded", "for", "ratelimit_remaining_zero", "quota exhausted")
      ev("ratelimit_quota_exceeded", "for", "ratelimit_batch_job", "a batch job runs")
      ev("ratelimit_retry_storm", "for", "ratelimit_retrying", "clients retry")
      ev("ratelimit_retry_storm", "for", "ratelimit_retry_after",
         "the upstream asks us to wait (Retry-After)")
      ev("ratelimit_inbound_limiter", "for", "ratelimit_own_limiter", "nginx limit_req fired")
      if a.retries == 0 and a.upstream > 0 then
        local s = sig(ctx, "ratelimit_provider") or sig(ctx, "rate_limited")
          or sig(ctx, "ratelimit_429_status") or sig(ctx, "ratelimit_remaining_zero")
        out:evidence { hypothesis = "ratelimit_retry_storm", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "no retry lines next to the 429s in the evidence" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      out:ask { label = "Count 429s in the last 30 minutes",
        hypothesis = "ratelimit_quota_exceeded",
        command = "kubectl -n <ns> logs deploy/<app> --since=30m | grep -c ' 429 '" }
      out:ask { label = "Limit headers from a real call", hypothesis = "ratelimit_quota_exceeded",
        command = "curl -s -D - -o /dev/null -H \"Authorization: Bearer $TOKEN\" "
          .. "https://<api-host>/<path> | grep -iE '^(HTTP|retry-after|x-ratelimit|ratelimit)'",
        why = "the published limit, what is left, when it resets" }
      if a.retry_after == 0 then
        out:ask { label = "What the upstream asks us to wait", hypothesis = "ratelimit_retry_storm",
          command = "kubectl -n <ns> logs deploy/<app> --since=30m | grep -ioE "
            .. "'retry-after: ?[0-9]+' | sort | uniq -c" }
      end
      out:ask { label = "Share of retries in outbound calls", hypothesis = "ratelimit_retry_storm",
        command = "sum(rate(http_client_retries_total[5m])) / "
          .. "sum(rate(http_client_requests_total[5m]))   # PromQL",
        why = "retries as a large share of calls amplify the throttling" }
      out:ask { label = "Who uses the same API key", hypothesis = "ratelimit_quota_exceeded",
        command = "kubectl get cronjob,job -A && kubectl get deploy -A -o yaml | grep -n "
          .. "'<API_KEY_SECRET_NAME>'",
        why = "a batch job or backfill sharing the production key" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.inbound_only then
        out:conclude { hypothesis = "ratelimit_inbound_limiter", severity = "low",
          confidence = 0.6,
          root_cause = "The 429s are produced by our own limiter (" .. span(sig(ctx,
            "ratelimit_own_limiter")) .. "), not by an upstream API." }
        return
      end
      if a.upstream < 3 then return end
      local s = sig(ctx, "ratelimit_provider") or sig(ctx, "rate_limited")
        or sig(ctx, "ratelimit_429_status") or sig(ctx, "ratelimit_remaining_zero")
      if a.retries >= 3 and a.retries >= a.upstream / 2 then
        out:conclude { hypothesis = "ratelimit_retry_storm", severity = "high",
          confidence = math.min(0.8, 0.55 + 0.15 * sat(a.retries, 5)
            + (a.retry_after > 0 and 0.05 or 0)),
          root_cause = "An upstream throttles us (" .. span(s) .. ") and our immediate "
            .. "retries (" .. span(sig(ctx, "ratelimit_retrying")) .. ") keep the quota "
            .. "exhausted" .. (a.retry_after > 0 and ", ignoring the Retry-After it sends" or "")
            .. "." }
      else
        out:conclude { hypothesis = "ratelimit_quota_exceeded", severity = "high",
          confidence = math.min(0.8, 0.5 + 0.2 * sat(a.upstream, 6)
            + (a.batch > 0 and 0.1 or 0)),
          root_cause = "Our call volume exceeds the upstream's rate limit (" .. span(s) .. ")"
            .. (a.batch > 0 and "; a batch job is running alongside production traffic" or "")
            .. "." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.inbound_only then
        out:mitigate { title = "Review the limit_req zone for the throttled route",
          command = "nginx -T | grep -n limit_req", risk = "low", undo = "none" }
        return
      end
      out:mitigate { title = "Pause batch jobs and backfills sharing the quota",
        command = "kubectl -n <ns> patch cronjob <job> -p '{\"spec\":{\"suspend\":true}}'",
        risk = "low", undo = "kubectl -n <ns> patch cronjob <job> -p "
          .. "'{\"spec\":{\"suspend\":false}}'" }
      out:mitigate { title = "Honour Retry-After and cap retries",
        description = "exponential back-off with full jitter, at most 3 attempts, only for "
          .. "idempotent calls; serve from cache or degrade the feature while throttled",
        risk = "low", undo = "restore the previous retry settings" }
      out:solve { title = "Shared client-side rate limit below the provider's",
        description = "a token bucket in Redis or one egress proxy per upstream; cache and "
          .. "batch requests; separate API keys for production and batch traffic; alert on "
          .. "quota use at 80 %",
        risk = "medium", undo = "remove the limiter" }
    end },
  },
}
