-- Expired or expiring TLS certificate: a certificate passed its notAfter date (or will soon),
-- or looks expired because a clock is wrong. Knowledge pack: kb/certificate-expiry.md

local kit = require "kit"
local sig, count, span, see, sat = kit.fired, kit.count, kit.span, kit.span_finding, kit.sat

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- "YYYY-MM-DD" of an ISO time or an openssl date ("Nov 21 23:59:59 2026 GMT").
local function day(s)
  local y, m, d = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)")
  if y then return y .. "-" .. m .. "-" .. d end
  local mon, dd, yy = s:match("^(%a%a%a) +(%d+) [%d:]+ (%d%d%d%d)")
  if mon and MONTHS[mon] then
    return string.format("%s-%02d-%02d", yy, MONTHS[mon], tonumber(dd))
  end
end

-- Days between two "YYYY-MM-DD" (b - a), close enough for expiry windows.
local function days(a, b)
  local function n(s)
    local y, m, d = s:match("(%d+)%-(%d+)%-(%d+)")
    return os.time { year = tonumber(y), month = tonumber(m), day = tonumber(d), hour = 12 }
  end
  return math.floor((n(b) - n(a)) / 86400 + 0.5)
end

-- notAfter dates seen in the evidence (openssl x509 -dates / -enddate output, Go x509 errors):
-- { {date = "YYYY-MM-DD", left = days from now, filename, evidence_id, line}, ... }
local function not_after(ctx)
  local today, found = day(ctx.now or "") or "1970-01-01", {}
  for _, e in ipairs(ctx.evidence) do
    local logs = e.summary.logs
    if type(logs) == "table" and type(logs.templates) == "table" then
      for _, t in ipairs(logs.templates) do
        local ex = type(t.example) == "string" and t.example or ""
        local raw = ex:match("notAfter=(.+)$") or ex:match("is after ([%d%-]+T[%d:]+Z)")
          or ex:match("NotAfter: (%a%a%a %a%a%a +%d+ [%d:]+ %a+ %d%d%d%d)")
        local dd = raw and (day(raw) or (function()      -- Java: "Sat Nov 21 23:59:59 UTC 2026"
          local mon, d2, yy = raw:match("^%a%a%a (%a%a%a) +(%d+) [%d:]+ %a+ (%d%d%d%d)")
          return mon and MONTHS[mon] and string.format("%s-%02d-%02d", yy, MONTHS[mon],
            tonumber(d2))
        end)())
        if dd then
          found[#found + 1] = { date = dd, left = days(today, dd), filename = e.filename,
                                evidence_id = e.id, line = t.first_line }
        end
      end
    end
  end
  return found
end

local function assess(ctx)
  local a = {
    expired = count(ctx, "certificate_expired", "cert_after_time", "cert_java_expired",
                    "cert_openssl_expired"),
    not_yet = count(ctx, "cert_before_time", "cert_not_yet_valid"),
    unsynced = ctx.signal("cert_clock_unsynced"),
    renewal = ctx.signal("cert_renewal_failing"),
    metric = ctx.signal("cert_expiry_metric"),
    dates = not_after(ctx),
    words = ctx.said("certificate", "cert", "expired", "expiry", "expires", "cert-manager",
                     "letsencrypt", "x509"),
  }
  for _, d in ipairs(a.dates) do
    if d.left < 0 then a.past = a.past or d end
    if d.left >= 0 then a.future = a.future or d end
    if d.left >= 0 and d.left <= 14 then a.soon = a.soon or d end
  end
  -- not_yet lines are counted by the built-in too ("certificate is not yet valid")
  a.expired = math.max(a.expired - a.not_yet, 0)
  a.strong = a.expired > 0 or a.not_yet > 0 or a.past ~= nil or a.soon ~= nil
  -- clients see an expired certificate while a valid one exists: it is not the one served
  a.reload_gap = a.future ~= nil and (a.past ~= nil or a.expired > 0)
  return a
end

return {
  id = "certificate-expiry",
  title = "Expired or expiring TLS certificate",
  version = "1.0.0",
  description = "A server, intermediate or client certificate passed its notAfter date (or "
    .. "expires within days), or a wrong clock makes a valid certificate look expired or not "
    .. "yet valid. Separates failed renewal, a renewed certificate the server never reloaded, "
    .. "and clock skew.",
  tags = { "certificate", "x509", "expiry", "tls", "cert-manager", "letsencrypt", "renewal" },
  category = "security",
  kb = "expired certificate renewal cert-manager notAfter x509 certificate has expired",
  signals = {
    { name = "cert_after_time", severity = "critical",
      pattern = [=[current time [0-9T:.+-]+Z? is after [0-9T:.+-]+Z?]=],
      description = "Go x509: the certificate's notAfter is in the past" },
    { name = "cert_before_time", severity = "error",
      pattern = [=[current time [0-9T:.+-]+Z? is before [0-9T:.+-]+Z?]=],
      description = "Go x509: the certificate is not valid yet (clock skew?)" },
    { name = "cert_java_expired", severity = "critical",
      pattern = [=[CertificateExpiredException|NotAfter: [A-Z][a-z]{2} ]=],
      description = "Java: the certificate expired" },
    { name = "cert_not_yet_valid", severity = "error",
      pattern = [=[CertificateNotYetValidException|certificate is not yet valid|]=]
        .. [=[Verify return code: 9 ]=],
      description = "the certificate is not valid yet: clock skew or a premature certificate" },
    { name = "cert_openssl_expired", severity = "critical",
      pattern = [=[verify error:num=10:certificate has expired|Verify return code: 10 |]=]
        .. [=[alert certificate expired|ERR_CERT_DATE_INVALID|CERT_HAS_EXPIRED]=],
      description = "openssl / browsers / node: certificate expired" },
    { name = "cert_not_after", severity = "info",
      pattern = [=[notAfter=[A-Z][a-z]{2} +[0-9]{1,2} [0-9:]{8} [0-9]{4}]=],
      description = "openssl x509 -dates output" },
    { name = "cert_renewal_failing", severity = "error",
      pattern = [=[acme: (authorization error|error: 4[0-9][0-9])|Failed to (create|finalize) ]=]
        .. [=[Order|Issuing certificate as Secret does not exist|certmanager_certificate_]=]
        .. [=[ready_status\{[^}]*condition="False"[^}]*\} 1|Challenge [^ ]+ (is )?(pending|]=]
        .. [=[invalid|errored)|Attempt to renew failed|renewal failure|Failed to renew]=],
      description = "certificate renewal (cert-manager, certbot) failing" },
    { name = "cert_clock_unsynced", severity = "warning",
      pattern = [=[System clock synchronized: no|NTP synchronized: no|clock skew detected|]=]
        .. [=[[Cc]lock (is )?not synchronized]=],
      description = "the host clock is not synchronised (NTP)" },
    { name = "cert_expiry_metric", severity = "info",
      pattern = [=[probe_ssl_earliest_cert_expiry|certmanager_certificate_expiration_]=]
        .. [=[timestamp_seconds|ssl_cert(ificate)?_not_after]=],
      description = "certificate expiry metrics present" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    if a.expired > 0 then
      local s = sig(ctx, "cert_after_time") or sig(ctx, "cert_java_expired")
        or sig(ctx, "cert_openssl_expired") or sig(ctx, "certificate_expired")
      score = 0.65 + 0.3 * sat(a.expired, 4)
      why[#why + 1] = "certificate expired: " .. span(s)
    end
    if a.past then
      score = math.max(score, 0.7) + (a.expired > 0 and 0.05 or 0)
      why[#why + 1] = string.format("notAfter %s (%d days ago) in %s line %s", a.past.date,
        -a.past.left, a.past.filename or "evidence", tostring(a.past.line))
    elseif a.soon then
      score = math.max(score, 0.45)
      why[#why + 1] = string.format("certificate expires %s (in %d days) in %s", a.soon.date,
        a.soon.left, a.soon.filename or "evidence")
    end
    if a.not_yet > 0 then
      local s = sig(ctx, "cert_before_time") or sig(ctx, "cert_not_yet_valid")
      score = math.max(score, 0.55)
      why[#why + 1] = "certificate not yet valid (clock?): " .. span(s)
    end
    local r = sig(ctx, "cert_renewal_failing")
    if r then
      score = a.strong and score + 0.1 or math.max(score, 0.35)
      why[#why + 1] = "renewal failing: " .. span(r)
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user describes a certificate problem"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      local a = assess(ctx)
      see(ctx, out, "certificate_expired", "Certificate expired / not yet valid errors")
      see(ctx, out, "cert_after_time", "x509: current time is after notAfter")
      see(ctx, out, "cert_java_expired", "Java CertificateExpiredException")
      see(ctx, out, "cert_openssl_expired", "openssl / client: certificate has expired")
      see(ctx, out, "cert_before_time", "x509: current time is before notBefore")
      see(ctx, out, "cert_not_yet_valid", "Certificate not yet valid")
      see(ctx, out, "cert_renewal_failing", "Certificate renewal failing")
      see(ctx, out, "cert_clock_unsynced", "Clock not synchronised")
      see(ctx, out, "cert_expiry_metric", "Certificate expiry metrics")
      for _, d in ipairs(a.dates) do
        out:finding { text = string.format("notAfter %s: %s", d.date, d.left < 0
            and string.format("expired %d days ago", -d.left)
            or string.format("valid %d more days", d.left)),
          evidence_id = d.evidence_id, filename = d.filename, line = d.line,
          severity = d.left < 0 and "critical" or (d.left <= 14 and "warning" or "info") }
      end
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("certificate expired renewal cert-manager reload notAfter")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local expired = a.expired > 0 or a.past ~= nil
      out:hypothesis { key = "cert_renewal_failed", category = "config",
        statement = "The certificate reached notAfter because renewal failed silently (ACME "
          .. "challenge blocked, DNS provider credentials) or nobody owns its renewal",
        likelihood = expired and math.min(0.85, 0.55 + (a.renewal > 0 and 0.25 or 0)
          - (a.reload_gap and 0.25 or 0)) or (a.soon and 0.45 or 0.1) }
      out:hypothesis { key = "cert_not_reloaded", category = "config",
        statement = "A renewed certificate exists, but the server (or one load balancer node) "
          .. "still serves the old one because it never reloaded",
        likelihood = a.reload_gap and 0.65 or (expired and 0.25 or 0.05) }
      out:hypothesis { key = "cert_clock_skew", category = "environment",
        statement = "The client's clock is wrong, so a valid certificate looks expired or not "
          .. "yet valid",
        likelihood = a.not_yet > 0 and (a.unsynced > 0 and 0.8 or 0.6)
          or (a.unsynced > 0 and 0.3 or 0.05) }
      local function ev(...) kit.span_evidence(ctx, out, ...) end
      ev("cert_renewal_failed", "for", "cert_after_time", "clients see notAfter in the past")
      ev("cert_renewal_failed", "for", "cert_java_expired", "Java clients see it expired")
      ev("cert_renewal_failed", "for", "cert_openssl_expired", "verify error: expired")
      ev("cert_renewal_failed", "for", "certificate_expired", "certificate expired errors")
      ev("cert_renewal_failed", "for", "cert_renewal_failing", "the renewal itself fails")
      ev("cert_clock_skew", "for", "cert_before_time", "certificate not valid yet")
      ev("cert_clock_skew", "for", "cert_not_yet_valid", "certificate not valid yet")
      ev("cert_clock_skew", "for", "cert_clock_unsynced", "the clock is not synchronised")
      ev("cert_clock_skew", "against", "cert_after_time",
         "the error is notAfter in the past, not notBefore in the future")
      if a.past then
        out:evidence { hypothesis = "cert_renewal_failed", stance = "for",
          evidence_id = a.past.evidence_id, line = a.past.line,
          summary = "notAfter " .. a.past.date .. " is in the past" }
      end
      if a.reload_gap then
        out:evidence { hypothesis = "cert_not_reloaded", stance = "for",
          evidence_id = a.future.evidence_id, line = a.future.line,
          summary = "a certificate valid until " .. a.future.date .. " exists ("
            .. (a.future.filename or "evidence") .. ") while clients still get an expired "
            .. "one: the new one is not served" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      local host, port = kit.tls_target(ctx)
      local hp = host .. ":" .. port
      out:ask { label = "Dates of the served certificate", hypothesis = "cert_renewal_failed",
        command = "openssl s_client -connect " .. hp .. " -servername " .. host .. " </dev/null "
          .. "2>/dev/null | openssl x509 -noout -subject -issuer -dates",
        why = "notAfter in the past: renew; leaf fine: check the intermediates (-showcerts)" }
      out:ask { label = "Dates of the certificate on disk", hypothesis = "cert_not_reloaded",
        command = "openssl x509 -in /etc/ssl/certs/<app>.pem -noout -enddate -subject",
        why = "new on disk but old when served: the process did not reload" }
      if a.renewal == 0 then
        out:ask { label = "cert-manager state", hypothesis = "cert_renewal_failed",
          command = "kubectl get certificate,certificaterequest,order,challenge -A && "
            .. "kubectl describe certificate <name> -n <ns>",
          why = "a Challenge stuck pending shows why renewal failed" }
      end
      out:ask { label = "Client clock", hypothesis = "cert_clock_skew",
        command = "date -u && timedatectl status | grep -i synchronized" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if a.not_yet > 0 and a.expired == 0 and not a.past then
        out:conclude { hypothesis = "cert_clock_skew", severity = "high",
          confidence = a.unsynced > 0 and 0.8 or 0.6,
          root_cause = "Clients reject the certificate as not yet valid ("
            .. span(sig(ctx, "cert_before_time") or sig(ctx, "cert_not_yet_valid"))
            .. "): the client clock is behind or the certificate was issued for the future." }
      elseif a.reload_gap then
        out:conclude { hypothesis = "cert_not_reloaded", severity = "high", confidence = 0.65,
          root_cause = "A renewed certificate (valid until " .. a.future.date .. ", "
            .. (a.future.filename or "evidence") .. ") exists, but clients still get an expired "
            .. "one" .. (a.past and (" (notAfter " .. a.past.date .. ")") or "")
            .. ": the server or a load balancer node did not reload it." }
      elseif a.expired > 0 or a.past then
        local s = sig(ctx, "cert_after_time") or sig(ctx, "cert_java_expired")
          or sig(ctx, "cert_openssl_expired") or sig(ctx, "certificate_expired")
        local at = s and span(s) or (a.past.filename .. " line " .. tostring(a.past.line))
        out:conclude { hypothesis = "cert_renewal_failed", severity = "critical",
          confidence = math.min(0.9, 0.65 + 0.1 * sat(a.expired, 3)
            + (a.past and 0.05 or 0) + (a.renewal > 0 and 0.1 or 0)),
          root_cause = "The certificate expired" .. (a.past and (" on " .. a.past.date) or "")
            .. " (" .. at .. ") and was not renewed in time"
            .. (a.renewal > 0 and ": its automatic renewal is failing" or "") .. "." }
      end
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      local host, port = kit.tls_target(ctx)
      local hp = host .. ":" .. port
      if a.not_yet > 0 and a.expired == 0 then
        out:mitigate { title = "Fix the client clock",
          command = "chronyc makestep && timedatectl set-ntp true",
          risk = "low", undo = "none needed", verify = "date -u" }
        out:solve { title = "Keep clocks synchronised and monitored",
          description = "chrony / systemd-timesyncd enabled at boot (an RTC battery on edge "
            .. "devices); alert when the clock is not synchronised",
          risk = "low", undo = "none" }
        return
      end
      out:mitigate { title = "Renew the certificate now",
        command = "cmctl renew <name> -n <ns>   # or: certbot renew --force-renewal",
        description = "then reload every server and load balancer that terminates TLS",
        risk = "low", undo = "none: the old certificate is expired anyway",
        verify = "openssl s_client -connect " .. hp .. " -servername " .. host .. " </dev/null "
          .. "2>/dev/null | openssl x509 -noout -enddate" }
      out:mitigate { title = "Reload the server so it serves the new file",
        command = "nginx -t && nginx -s reload   # or kubectl rollout restart deploy/<app>",
        risk = "low", undo = "none" }
      out:solve { title = "Automate renewal and reload, alert before expiry",
        description = "cert-manager / certbot timers with a deploy hook or a Secret reloader; "
          .. "renew at two thirds of the lifetime; alert at 30, 14 and 7 days "
          .. "(probe_ssl_earliest_cert_expiry - time() < 86400 * 14)",
        risk = "low", undo = "remove the automation" }
    end },
  },
}
