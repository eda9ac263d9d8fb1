-- HTTP 5xx error spike: the share of requests answered with 5xx rose. Finds the layer that
-- produces them (proxy or application) from the status codes and proxy errors, and separates
-- application errors, crashing backends, slow upstreams and no healthy backends.
-- Knowledge pack: kb/http-5xx-spike.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local function assess(ctx)
  local a = {
    c500 = ctx.signal("http5xx_500"),
    c502 = ctx.signal("http_502_bad_gateway"),
    c503 = ctx.signal("http_503_unavailable"),
    c504 = ctx.signal("http_504_gateway_timeout"),
    access = ctx.signal("http_5xx"),                 -- any 5xx in access-log format
    structured = ctx.signal("http5xx_json_status"),  -- JSON / logfmt status=5xx
    closed = ctx.signal("http5xx_upstream_closed"),
    refused = ctx.signal("http5xx_upstream_refused"),
    no_backend = ctx.signal("http5xx_no_backend"),
    slow = ctx.signal("http5xx_upstream_timeout"),
    flags = ctx.signal("http5xx_envoy_flags"),
    deploy = ctx.signal("http5xx_deploy"),
    crash = count(ctx, "k8s_oomkilled", "oom_killer", "k8s_crashloop", "go_panic",
                  "segfault", "http5xx_container_restart"),
    exceptions = count(ctx, "java_exception", "python_traceback", "go_panic"),
    -- causes other playbooks explain better: they rank first when present
    elsewhere = count(ctx, "rate_limited", "ratelimit_provider", "tls_handshake_error",
                      "dns_failure", "dns_temporary", "postgres_too_many_clients",
                      "mysql_too_many_connections", "redismem_oom_command"),
    words = ctx.said("5xx", "500", "502", "503", "504", "error rate", "bad gateway",
                     "gateway timeout", "service unavailable", "internal server error"),
  }
  a.total = a.access + a.structured + math.max(a.c502 + a.c503 + a.c504 - a.access, 0)
  a.proxy = a.closed + a.refused + a.no_backend + a.slow + a.flags
  a.strong = a.total + a.proxy > 0
  return a
end

-- The hypothesis the codes and proxy errors point to, and its weight.
local function leading(a)
  local w = {
    http5xx_backend_crash = a.c502 + a.closed + a.refused + (a.crash > 0 and a.c502 + 3 or 0),
    http5xx_upstream_slow = a.c504 + a.slow,
    http5xx_no_backends = a.c503 + a.no_backend,
    http5xx_app_errors = a.c500 + (a.exceptions > 0 and a.c500 + 1 or 0)
      + (a.c500 > 0 and a.deploy > 0 and 3 or 0),
  }
  local best, bw = nil, 0
  for _, k in ipairs({ "http5xx_backend_crash", "http5xx_upstream_slow", "http5xx_no_backends",
                       "http5xx_app_errors" }) do
    if w[k] > bw then best, bw = k, w[k] end
  end
  return best, bw, w
end

return {
  id = "http-5xx-spike",
  title = "HTTP 5xx error spike",
  version = "1.0.0",
  description = "Requests fail with 500, 502, 503 or 504. Reads access logs (nginx, ingress, "
    .. "JSON), proxy error logs (upstream closed, refused, timed out, no live upstreams), "
    .. "Envoy response flags and Kubernetes restarts to find the layer that fails: "
    .. "application errors (often a deploy), crashing backends, slow upstreams, or no "
    .. "healthy backends.",
  tags = { "http", "5xx", "502", "503", "504", "500", "nginx", "ingress", "error-rate" },
  category = "code",
  kb = "http 5xx error spike 502 bad gateway 503 504 upstream nginx ingress",
  signals = {
    { name = "http5xx_500", severity = "error",
      pattern = [=[HTTP/[0-9.]{1,3}" 500 ]=],
      description = "500 Internal Server Error in an access log" },
    { name = "http5xx_json_status", severity = "error",
      pattern = [=["(status|status_code|statusCode|response_code)": ?"?5[0-9][0-9]\b|]=]
        .. [=[\b(status|status_code)=5[0-9][0-9]\b]=],
      description = "5xx status in JSON or logfmt access logs" },
    { name = "http5xx_upstream_closed", severity = "error",
      pattern = [=[upstream prematurely closed connection|upstream connect error or ]=]
        .. [=[disconnect/reset before headers|upstream sent no valid HTTP]=],
      description = "the backend closed the connection mid-request (crash, restart, keep-alive)" },
    { name = "http5xx_upstream_refused", severity = "error",
      pattern = [=[\(111: Connection refused\) while connecting to upstream]=],
      description = "the proxy could not connect to the backend" },
    { name = "http5xx_no_backend", severity = "error",
      pattern = [=[no live upstreams|no healthy upstream|no endpoints available for service]=],
      description = "no healthy backend behind the proxy" },
    { name = "http5xx_upstream_timeout", severity = "error",
      pattern = [=[upstream timed out \(110: (Connection|Operation) timed out\)]=],
      description = "the backend did not answer in time (504)" },
    { name = "http5xx_envoy_flags", severity = "error",
      pattern = [=[" 50[0-9] (UF|UH|UO|URX|UC|UT|NR)[ ,]]=],
      description = "Envoy / Istio response flags on 5xx" },
    { name = "http5xx_deploy", severity = "info",
      pattern = [=[Scaled (up|down) replica set|successfully rolled out|rollout restart|]=]
        .. [=[Deployed version|deployment (started|finished|completed)|helm upgrade]=],
      description = "a deploy or rollout in the evidence" },
    { name = "http5xx_container_restart", severity = "warning",
      pattern = [=[Back-off restarting failed container|Last State: +Terminated|]=]
        .. [=[Exit Code: +(137|139|143)|Killing container]=],
      description = "containers restarting" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    if a.total > 0 then
      local s = sig(ctx, "http_5xx") or sig(ctx, "http5xx_json_status")
        or sig(ctx, "http_502_bad_gateway") or sig(ctx, "http_503_unavailable")
        or sig(ctx, "http_504_gateway_timeout")
      score = 0.5 + 0.35 * sat(a.total, 10)
      why[#why + 1] = string.format("%d 5xx responses (500: %d, 502: %d, 503: %d, 504: %d): %s",
        a.total, a.c500, a.c502, a.c503, a.c504, span(s))
    end
    if a.proxy > 0 then
      local s = sig(ctx, "http5xx_upstream_closed") or sig(ctx, "http5xx_upstream_refused")
        or sig(ctx, "http5xx_no_backend") or sig(ctx, "http5xx_upstream_timeout")
        or sig(ctx, "http5xx_envoy_flags")
      score = math.max(score, 0.5) + 0.1
      why[#why + 1] = "proxy upstream errors: " .. span(s)
    end
    if a.strong and a.elsewhere > 0 then
      score = score - 0.2
      why[#why + 1] = "a more specific cause is in the evidence (rate limit, TLS, DNS, database)"
    end
    if a.deploy > 0 and a.c500 + a.structured > 0 then
      score = score - 0.1
      why[#why + 1] = "a rollout in the evidence: see bad-deploy-rollback"
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.25)
      why[#why + 1] = "the user describes server errors"
    end
    return math.max(0, math.min(score, 1)), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "http5xx_500", "500 Internal Server Error responses")
      see(ctx, out, "http_502_bad_gateway", "502 Bad Gateway")
      see(ctx, out, "http_503_unavailable", "503 Service Unavailable")
      see(ctx, out, "http_504_gateway_timeout", "504 Gateway Timeout")
      see(ctx, out, "http5xx_json_status", "5xx in structured access logs")
      see(ctx, out, "http5xx_upstream_closed", "Upstream closed the connection")
      see(ctx, out, "http5xx_upstream_refused", "Upstream refused the connection")
      see(ctx, out, "http5xx_no_backend", "No healthy upstream")
      see(ctx, out, "http5xx_upstream_timeout", "Upstream timed out")
      see(ctx, out, "http5xx_envoy_flags", "Envoy response flags")
      see(ctx, out, "http5xx_deploy", "Deploy / rollout")
      see(ctx, out, "http5xx_container_restart", "Containers restarting")
      see(ctx, out, "k8s_oomkilled", "Containers OOMKilled")
      see(ctx, out, "k8s_crashloop", "CrashLoopBackOff")
      see(ctx, out, "java_exception", "Java exceptions")
      see(ctx, out, "python_traceback", "Python tracebacks")
      see(ctx, out, "go_panic", "Go panics")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("http 5xx spike 502 503 504 upstream prematurely closed rollback")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local best, _, w = leading(a)
      local function lk(key, base)
        if w[key] > 0 then
          return math.min(0.85, 0.35 + 0.3 * sat(w[key], 5) + (best == key and 0.15 or 0))
        end
        return base
      end
      out:hypothesis { key = "http5xx_app_errors", category = "code",
        statement = "The application answers 500: an exception on a code path, most often "
          .. "introduced by a deploy or a config change",
        likelihood = lk("http5xx_app_errors", 0.2) }
      out:hypothesis { key = "http5xx_backend_crash", category = "environment",
        statement = "Backends crash or restart (OOM kill, panic, failing probes), so the "
          .. "proxy gets closed or refused connections (502)",
        likelihood = lk("http5xx_backend_crash", 0.15) }
      out:hypothesis { key = "http5xx_upstream_slow", category = "other",
        statement = "The backend is too slow (a saturated database, a slow dependency, an "
          .. "exhausted thread pool) and the proxy times out (504)",
        likelihood = lk("http5xx_upstream_slow", 0.15) }
      out:hypothesis { key = "http5xx_no_backends", category = "config",
        statement = "No healthy backend is in rotation (readiness failing, empty endpoints, "
          .. "circuit breaker open), so the proxy answers 503",
        likelihood = lk("http5xx_no_backends", 0.1) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("http5xx_app_errors", "for", "http5xx_500", "500s come from the application")
      ev("http5xx_app_errors", "for", "java_exception", "application exceptions")
      ev("http5xx_app_errors", "for", "python_traceback", "application tracebacks")
      ev("http5xx_app_errors", "for", "http5xx_deploy", "a deploy happened")
      ev("http5xx_backend_crash", "for", "http_502_bad_gateway", "502 Bad Gateway")
      ev("http5xx_backend_crash", "for", "http5xx_upstream_closed", "upstream closed mid-request")
      ev("http5xx_backend_crash", "for", "http5xx_upstream_refused", "upstream refused")
      ev("http5xx_backend_crash", "for", "k8s_oomkilled", "containers OOMKilled")
      ev("http5xx_backend_crash", "for", "k8s_crashloop", "containers crash looping")
      ev("http5xx_backend_crash", "for", "http5xx_container_restart", "containers restarted")
      ev("http5xx_backend_crash", "for", "go_panic", "Go panics")
      ev("http5xx_upstream_slow", "for", "http_504_gateway_timeout", "504 Gateway Timeout")
      ev("http5xx_upstream_slow", "for", "http5xx_upstream_timeout", "upstream timed out")
      ev("http5xx_no_backends", "for", "http_503_unavailable", "503 Service Unavailable")
      ev("http5xx_no_backends", "for", "http5xx_no_backend", "no live / healthy upstream")
      if a.c500 > 0 and a.c502 + a.closed + a.refused == 0 then
        local s = sig(ctx, "http5xx_500")
        out:evidence { hypothesis = "http5xx_backend_crash", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the backends answer (500), the proxy reaches them: no crash signs" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      out:ask { label = "Count 5xx in the last 15 minutes",
        command = "kubectl logs deploy/<app> --since=15m | grep -c ' 5[0-9][0-9] '",
        why = "the size of the spike and whether it is still going on" }
      out:ask { label = "Pods: restarts and readiness", hypothesis = "http5xx_backend_crash",
        command = "kubectl -n <ns> get pods -o wide && kubectl -n <ns> get events "
          .. "--sort-by=.lastTimestamp | tail -30",
        why = "restarts or OOM kills behind 502s; not-ready pods behind 503s" }
      if a.deploy == 0 then
        out:ask { label = "Did a deploy start just before?", hypothesis = "http5xx_app_errors",
          command = "kubectl -n <ns> rollout history deploy/<app>",
          why = "a spike that starts at a deploy is treated as a bad deploy" }
      end
      if a.exceptions == 0 then
        out:ask { label = "Application errors", hypothesis = "http5xx_app_errors",
          command = "kubectl -n <ns> logs deploy/<app> --since=15m | grep -iE "
            .. "'error|exception|panic' | head -50" }
      end
      out:ask { label = "Endpoints behind the service", hypothesis = "http5xx_no_backends",
        command = "kubectl -n <ns> get endpoints <app>",
        why = "empty endpoints: no ready pod behind the service (503)" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.total + a.proxy < 3 then return end
      local best, bw = leading(a)
      if not best then return end
      local text = {
        http5xx_app_errors = "The application itself answers 500" .. (a.deploy > 0
          and " since a deploy" or "") .. (a.exceptions > 0 and ", throwing exceptions" or ""),
        http5xx_backend_crash = "Backends crash or restart"
          .. (a.crash > 0 and " (OOM kills / crash loops in the evidence)" or "")
          .. ", so the proxy answers 502",
        http5xx_upstream_slow = "The backend is too slow and the proxy times out (504)",
        http5xx_no_backends = "No healthy backend is in rotation, so the proxy answers 503",
      }
      local support = {
        http5xx_app_errors = a.exceptions > 0 or a.deploy > 0,
        http5xx_backend_crash = a.crash > 0 or a.closed + a.refused > 0,
        http5xx_upstream_slow = a.slow > 0,
        http5xx_no_backends = a.no_backend > 0,
      }
      out:conclude { hypothesis = best, severity = "high",
        confidence = math.min(0.85, 0.45 + 0.2 * sat(bw, 5) + (support[best] and 0.15 or 0)
          - (a.elsewhere > 0 and 0.15 or 0)),
        root_cause = text[best] .. string.format(" (%d 5xx: 500 %d, 502 %d, 503 %d, 504 %d).",
          a.total, a.c500, a.c502, a.c503, a.c504) }
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      local best = leading(a)
      if best == "http5xx_app_errors" or a.deploy > 0 or not best then
        out:mitigate { title = "Roll back the recent deploy",
          command = "kubectl -n <ns> rollout undo deploy/<app>",
          risk = "low", undo = "kubectl -n <ns> rollout undo deploy/<app>   # back to the new one",
          verify = "kubectl logs deploy/<app> --since=5m | grep -c ' 5[0-9][0-9] '" }
        out:solve { title = "Fix the failing code path with a regression test",
          description = "reproduce the failing request; canary releases with automatic "
            .. "rollback on error ratio",
          risk = "low", undo = "revert the fix" }
      end
      if best == "http5xx_backend_crash" then
        out:mitigate { title = "Give the crashing pods room / restart the bad instance",
          command = "kubectl -n <ns> delete pod <pod>   # or raise the memory limit",
          risk = "low", undo = "none: the pod is recreated" }
        out:solve { title = "Fix the crash and align keep-alive timeouts",
          description = "fix the OOM / panic; the application's keep-alive timeout must be "
            .. "longer than the proxy's idle timeout",
          risk = "low", undo = "revert the change" }
      end
      if best == "http5xx_upstream_slow" then
        out:mitigate { title = "Scale out and shed load while the slow dependency recovers",
          command = "kubectl -n <ns> scale deploy/<app> --replicas=<n>",
          risk = "medium", undo = "kubectl -n <ns> scale deploy/<app> --replicas=<previous>" }
        out:solve { title = "Order the timeouts and fix the slow dependency",
          description = "client < load balancer < proxy < application, each upstream call "
            .. "shorter than its caller's",
          risk = "low", undo = "restore the previous timeouts" }
      end
      if best == "http5xx_no_backends" then
        out:mitigate { title = "Bring ready pods back behind the service",
          command = "kubectl -n <ns> describe pod <pod> | grep -A5 Readiness",
          risk = "low", undo = "none" }
      end
    end },
  },
}
