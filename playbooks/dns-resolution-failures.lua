-- DNS resolution failures: names do not resolve, resolve slowly or wrongly. Separates a
-- missing or wrong record (NXDOMAIN) from an unhealthy resolver (timeouts, SERVFAIL, CoreDNS)
-- and UDP conntrack drops (5 s stalls). Knowledge pack: kb/dns-resolution-failures.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

-- The host name that fails, from the lines the analysis kept (log template examples).
local HOST_PATTERNS = {
  "lookup ([%w%.%-]+%.[%a][%w%-]*) on", "lookup ([%w%.%-]+%.[%a][%w%-]*):",
  "UnknownHostException: ([%w%.%-]+)", "[Cc]ould not resolve host: ([%w%.%-]+)",
  "getaddrinfo %u+ ([%w%.%-]+)", "resolve '([%w%.%-]+)'", "host '([%w%.%-]+)'",
  "host name \"([%w%.%-]+)\"", "^;([%w%.%-]+%a)%.%s+IN%s+A",
}
local function failing_host(ctx)
  for _, e in ipairs(ctx.evidence) do
    local logs = e.summary.logs
    if type(logs) == "table" and type(logs.templates) == "table" then
      for _, t in ipairs(logs.templates) do
        local ex = type(t.example) == "string" and t.example or ""
        for _, p in ipairs(HOST_PATTERNS) do
          local h = ex:match(p)
          if h and #h > 2 then return h end
        end
      end
    end
  end
end

local function assess(ctx)
  local a = {
    any = count(ctx, "dns_failure", "dns_not_found", "dns_temporary", "dns_unknown_host"),
    nx = count(ctx, "dns_not_found", "dns_unknown_host", "dns_dig_nxdomain"),
    dig_nx = ctx.signal("dns_dig_nxdomain"),
    temp = ctx.signal("dns_temporary"),
    coredns = count(ctx, "dns_coredns_error", "dns_coredns_unhealthy"),
    conntrack = ctx.signal("dns_conntrack"),
    slow = ctx.signal("dns_slow_query"),
    ok = ctx.signal("dns_dig_noerror"),
    ndots = ctx.signal("dns_ndots"),
    host = failing_host(ctx),
    words = ctx.said("dns", "resolve", "resolution", "nxdomain", "coredns", "kube-dns",
                     "unknownhost", "no such host", "name lookup"),
  }
  a.strong = a.any + a.coredns + a.conntrack > 0
  return a
end

return {
  id = "dns-resolution-failures",
  title = "DNS resolution failures",
  version = "1.0.0",
  description = "Names do not resolve (NXDOMAIN, no such host, UnknownHostException), lookups "
    .. "time out or fail with SERVFAIL, or resolve with 5 second stalls. Separates a missing "
    .. "or wrong record, an unhealthy resolver (CoreDNS, upstream) and UDP conntrack drops.",
  tags = { "dns", "coredns", "kube-dns", "nxdomain", "servfail", "resolv-conf", "ndots",
           "network" },
  category = "network",
  kb = "dns resolution failures coredns nxdomain servfail lookup timeout ndots",
  signals = {
    { name = "dns_not_found", severity = "error",
      pattern = [[no such host|Name or service not known|nodename nor servname provided|]]
        .. [=[getaddrinfo ENOTFOUND|\[Errno -2\]]=],
      description = "the name does not exist for the resolver (NXDOMAIN-like answer)" },
    { name = "dns_unknown_host", severity = "error",
      pattern = [[java\.net\.UnknownHostException|UnknownHostException: ]],
      description = "Java could not resolve a host name" },
    { name = "dns_dig_nxdomain", severity = "error",
      pattern = [[status: NXDOMAIN]],
      description = "dig: the name does not exist" },
    { name = "dns_temporary", severity = "error",
      pattern = [=[Temporary failure in name resolution|EAI_AGAIN|\[Errno -3\]|server ]=]
        .. [=[misbehaving|lookup [^ ]+ on [0-9a-f.:\[\]]+: (read udp [^ ]+ )?i/o timeout|]=]
        .. [=[lookup [^ ]+: i/o timeout|->[0-9a-f.:\[\]]+:53: i/o timeout|no servers could ]=]
        .. [=[be reached|status: SERVFAIL]=],
      description = "the resolver timed out or failed (SERVFAIL, EAI_AGAIN)" },
    { name = "dns_coredns_error", severity = "error",
      pattern = [[plugin/errors: [0-9]+ [^ ]+ (A|AAAA|SRV|PTR|CNAME|MX|TXT|NS):]],
      description = "CoreDNS errors plugin: upstream failures" },
    { name = "dns_coredns_unhealthy", severity = "error",
      pattern = [[coredns-[a-z0-9]+-[a-z0-9]+ +[0-9]+/[0-9]+ +(CrashLoopBackOff|Error|]]
        .. [[OOMKilled|Pending)|coredns-[a-z0-9]+-[a-z0-9]+ +0/[0-9]+ ]],
      description = "CoreDNS pods not ready or crash looping" },
    { name = "dns_conntrack", severity = "warning",
      pattern = [[insert_failed=[1-9]|nf_conntrack: (nf_conntrack: )?table full]],
      description = "conntrack insert failures or table full (UDP DNS packets dropped)" },
    { name = "dns_slow_query", severity = "warning",
      pattern = [[Query time: [0-9]{4,} msec]],
      description = "dig: a query took over a second" },
    { name = "dns_dig_noerror", severity = "info",
      pattern = [[status: NOERROR]],
      description = "dig: the name resolved" },
    { name = "dns_ndots", severity = "info",
      pattern = [=[options +([a-z:0-9-]+ +)*ndots:[3-9]]=],
      description = "resolv.conf ndots >= 3 (search domains multiply queries)" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    local f = sig(ctx, "dns_temporary") or sig(ctx, "dns_not_found")
      or sig(ctx, "dns_unknown_host") or sig(ctx, "dns_failure")
    if f then
      score = 0.55 + 0.35 * sat(a.any, 5)
      why[#why + 1] = "name resolution failures: " .. span(f)
        .. (a.host and (" (host " .. a.host .. ")") or "")
    end
    local c = sig(ctx, "dns_coredns_error") or sig(ctx, "dns_coredns_unhealthy")
    if c then
      score = math.max(score, 0.55) + 0.1
      why[#why + 1] = "CoreDNS trouble: " .. span(c)
    end
    local d = sig(ctx, "dns_dig_nxdomain")
    if d then
      score = math.max(score, 0.5) + 0.05
      why[#why + 1] = "dig answers NXDOMAIN: " .. span(d)
    end
    local k = sig(ctx, "dns_conntrack")
    if k then
      score = math.max(score, 0.35) + (score > 0.35 and 0.05 or 0)
        + (a.slow > 0 and 0.15 or 0)
      why[#why + 1] = "conntrack drops: " .. span(k)
      local q = sig(ctx, "dns_slow_query")
      if q then why[#why + 1] = "DNS answers taking seconds: " .. span(q) end
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.25)
      why[#why + 1] = "the user describes name resolution problems"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local a = assess(ctx)
      see(ctx, out, "dns_failure", "DNS failures (any kind)")
      see(ctx, out, "dns_not_found", "Names not found (NXDOMAIN / no such host)")
      see(ctx, out, "dns_unknown_host", "UnknownHostException")
      see(ctx, out, "dns_dig_nxdomain", "dig status NXDOMAIN")
      see(ctx, out, "dns_temporary", "Resolver timeouts / SERVFAIL / temporary failures")
      see(ctx, out, "dns_coredns_error", "CoreDNS errors plugin reports upstream failures")
      see(ctx, out, "dns_coredns_unhealthy", "CoreDNS pods unhealthy")
      see(ctx, out, "dns_conntrack", "conntrack insert failures")
      see(ctx, out, "dns_slow_query", "Slow DNS answers")
      see(ctx, out, "dns_dig_noerror", "dig status NOERROR (the name resolved)")
      see(ctx, out, "dns_ndots", "resolv.conf ndots")
      if a.host then out:finding("Failing name: " .. a.host) end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("dns resolution failures coredns nxdomain servfail ndots conntrack")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local resolver = a.temp + a.coredns
      out:hypothesis { key = "dns_record_missing", category = "config",
        statement = "The name does not exist for this resolver: a typo, a wrong namespace or "
          .. "search domain, a deleted or not yet propagated record",
        likelihood = a.nx > 0 and math.min(0.85, 0.45 + 0.2 * sat(a.nx, 3)
          + (a.dig_nx > 0 and 0.15 or 0) - (resolver > a.nx and 0.2 or 0)) or 0.1 }
      out:hypothesis { key = "dns_resolver_unhealthy", category = "network",
        statement = "The resolver is unhealthy: CoreDNS overloaded, throttled or crash "
          .. "looping, or its upstream resolver unreachable or rate limiting",
        likelihood = resolver > 0 and math.min(0.85, 0.45 + 0.2 * sat(a.temp, 3)
          + (a.coredns > 0 and 0.2 or 0)) or (a.any > 0 and 0.25 or 0.1) }
      out:hypothesis { key = "dns_conntrack_race", category = "network",
        statement = "UDP DNS packets are dropped (conntrack race on parallel A/AAAA queries, "
          .. "table full): intermittent 5 second stalls",
        likelihood = a.conntrack > 0 and 0.55 or (a.slow > 0 and 0.3 or 0.05) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("dns_record_missing", "for", "dns_not_found", "the resolver says the name does not exist")
      ev("dns_record_missing", "for", "dns_unknown_host", "UnknownHostException")
      ev("dns_record_missing", "for", "dns_dig_nxdomain", "dig returns NXDOMAIN")
      ev("dns_record_missing", "against", "dns_dig_noerror", "dig resolves the name (NOERROR)")
      ev("dns_resolver_unhealthy", "for", "dns_temporary", "lookups time out or SERVFAIL")
      ev("dns_resolver_unhealthy", "for", "dns_coredns_error", "CoreDNS reports upstream errors")
      ev("dns_resolver_unhealthy", "for", "dns_coredns_unhealthy", "CoreDNS pods unhealthy")
      ev("dns_conntrack_race", "for", "dns_conntrack", "conntrack insert failures")
      ev("dns_conntrack_race", "for", "dns_slow_query", "slow answers (retries after drops)")
      if a.nx > 0 and resolver == 0 then
        local s = sig(ctx, "dns_not_found") or sig(ctx, "dns_unknown_host")
          or sig(ctx, "dns_dig_nxdomain")
        out:evidence { hypothesis = "dns_resolver_unhealthy", stance = "against",
          evidence_id = s.evidence_id, line = s.first_line,
          summary = "the resolver answers (a definite 'not found'), it does not time out" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      local host = a.host or "<host>"
      out:ask { label = "Resolve the failing name", hypothesis = "dns_record_missing",
        command = "dig +short " .. host,
        why = "empty answer with status NXDOMAIN: the record is missing or the name is wrong" }
      out:ask { label = "Compare resolvers", hypothesis = "dns_record_missing",
        command = "dig @10.96.0.10 " .. host .. " && dig @8.8.8.8 " .. host,
        why = "works against one resolver only: stale cache or split horizon" }
      out:ask { label = "Resolver configuration in the pod",
        command = "kubectl exec deploy/<app> -- cat /etc/resolv.conf",
        why = "nameserver, search domains and ndots the application really uses" }
      out:ask { label = "CoreDNS health", hypothesis = "dns_resolver_unhealthy",
        command = "kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide && kubectl -n "
          .. "kube-system logs -l k8s-app=kube-dns --tail=100",
        why = "restarts, throttling and plugin/errors lines show an unhealthy resolver" }
      if a.conntrack == 0 then
        out:ask { label = "conntrack drops on the node", hypothesis = "dns_conntrack_race",
          command = "conntrack -S | grep -o 'insert_failed=[0-9]*'",
          why = "a rising insert_failed explains intermittent 5 s DNS stalls" }
      end
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      local resolver = a.temp + a.coredns
      if resolver > 0 and (resolver >= a.nx or a.coredns > 0) then
        local s = sig(ctx, "dns_coredns_unhealthy") or sig(ctx, "dns_coredns_error")
          or sig(ctx, "dns_temporary")
        out:conclude { hypothesis = "dns_resolver_unhealthy", severity = "high",
          confidence = math.min(0.85, 0.5 + 0.15 * sat(a.temp, 3)
            + (a.coredns > 0 and 0.15 or 0)),
          root_cause = "The DNS resolver is failing (" .. span(s) .. "): lookups time out or "
            .. "get SERVFAIL" .. (a.coredns > 0 and ", and CoreDNS itself reports errors" or "")
            .. ", so every connection that starts with a lookup fails." }
      elseif a.nx > 0 and a.ok == 0 then
        local s = sig(ctx, "dns_dig_nxdomain") or sig(ctx, "dns_not_found")
          or sig(ctx, "dns_unknown_host")
        out:conclude { hypothesis = "dns_record_missing", severity = "high",
          confidence = math.min(0.8, 0.5 + 0.15 * sat(a.nx, 3) + (a.dig_nx > 0 and 0.15 or 0)),
          root_cause = "The name " .. (a.host and ("'" .. a.host .. "' ") or "")
            .. "does not exist for the resolver (" .. span(s) .. "): the record is missing, "
            .. "deleted or the client uses a wrong name or namespace." }
      elseif a.conntrack > 0 then
        out:conclude { hypothesis = "dns_conntrack_race", severity = "medium",
          confidence = 0.55,
          root_cause = "UDP DNS packets are dropped by conntrack ("
            .. span(sig(ctx, "dns_conntrack")) .. "), causing 5 s lookup stalls." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      if a.temp + a.coredns > 0 or not a.strong then
        out:mitigate { title = "Scale CoreDNS and lift a throttling CPU limit",
          command = "kubectl -n kube-system scale deploy/coredns --replicas=4",
          risk = "low", undo = "kubectl -n kube-system scale deploy/coredns --replicas=<previous>",
          verify = "kubectl run dnstest --rm -it --restart=Never --image=busybox:1.36 -- "
            .. "nslookup kubernetes.default" }
        out:solve { title = "Deploy NodeLocal DNSCache and autoscale CoreDNS",
          description = "node-local cache over TCP upstream avoids conntrack races and load; "
            .. "cluster-proportional-autoscaler sizes CoreDNS with the cluster",
          risk = "medium", undo = "remove the node-local-dns DaemonSet" }
      end
      if a.nx > 0 then
        out:mitigate { title = "Use the correct fully qualified name",
          description = "check the name, namespace and search domain; use the FQDN with a "
            .. "trailing dot (" .. (a.host or "<service>.<ns>.svc.cluster.local") .. ".)",
          risk = "low", undo = "revert the configuration change" }
        out:solve { title = "Restore the record through infrastructure as code",
          description = "recreate the missing record (or Service) from its source of truth, "
            .. "lower the TTL before planned changes",
          risk = "low", undo = "delete the recreated record" }
      end
      if a.conntrack > 0 then
        out:mitigate { title = "Avoid the parallel A/AAAA race on the affected pods",
          command = "kubectl -n <ns> patch deploy/<app> --type merge -p '{\"spec\":"
            .. "{\"template\":{\"spec\":{\"dnsConfig\":{\"options\":[{\"name\":"
            .. "\"single-request-reopen\"}]}}}}}'",
          risk = "low", undo = "kubectl -n <ns> rollout undo deploy/<app>",
          verify = "conntrack -S | grep -o 'insert_failed=[0-9]*'   # stops rising" }
      end
      if a.conntrack > 0 or a.ndots > 0 then
        out:solve { title = "Lower ndots and avoid the A/AAAA race",
          description = "dnsConfig.options: [{name: ndots, value: \"2\"}] and "
            .. "single-request-reopen for workloads calling external names",
          risk = "low", undo = "remove the dnsConfig override" }
      end
    end },
  },
}
