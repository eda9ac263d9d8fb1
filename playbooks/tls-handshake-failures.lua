-- TLS handshake failures: client and server cannot agree on a TLS session: untrusted chain,
-- host name mismatch, protocol or cipher mismatch, plain text on a TLS port, or a rejected
-- client certificate (mTLS). Expired certificates are the certificate-expiry playbook's.
-- Knowledge pack: kb/tls-handshake-failures.md

local kit = require "kit"
local sig, span, see, sat = kit.fired, kit.span, kit.span_finding, kit.sat

-- Sub-causes: signal, hypothesis, label.
local CAUSES = {
  { "tls_unknown_ca", "tls_untrusted_chain", "certificate not trusted (unknown CA / chain)" },
  { "tls_hostname_mismatch", "tls_hostname_mismatch", "certificate does not match the host" },
  { "tls_version_mismatch", "tls_protocol_mismatch", "no common protocol version" },
  { "tls_cipher_mismatch", "tls_protocol_mismatch", "no common cipher / handshake_failure" },
  { "tls_plaintext_mismatch", "tls_protocol_mismatch", "plain HTTP and TLS on the same port" },
  { "tls_client_cert", "tls_mtls_client_cert", "client certificate missing or rejected" },
}

local function assess(ctx)
  local a = { by_hyp = {}, specific = 0,
    generic = ctx.signal("tls_handshake_error") + ctx.signal("tls_mesh_verify"),
    expired = ctx.signal("certificate_expired"),
    ok = ctx.signal("tls_verify_ok"),
    words = ctx.said("tls", "ssl", "handshake", "x509", "mtls", "certificate", "https"),
  }
  for _, c in ipairs(CAUSES) do
    local n = ctx.signal(c[1])
    a.specific = a.specific + n
    a.by_hyp[c[2]] = (a.by_hyp[c[2]] or 0) + n
  end
  -- handshake errors that an expired certificate does not explain
  a.unexplained = math.max(a.generic - a.expired, 0)
  a.strong = a.specific > 0 or a.unexplained > 0
  -- the dominant sub-cause
  local best, bn = nil, 0
  for _, k in ipairs({ "tls_untrusted_chain", "tls_hostname_mismatch", "tls_protocol_mismatch",
                       "tls_mtls_client_cert" }) do
    if a.by_hyp[k] > bn then best, bn = k, a.by_hyp[k] end
  end
  a.best, a.best_n = best, bn
  return a
end

return {
  id = "tls-handshake-failures",
  title = "TLS handshake failures",
  version = "1.0.0",
  description = "TLS connections fail in the handshake: the certificate chain is not trusted, "
    .. "the certificate does not match the host name, client and server share no protocol "
    .. "version or cipher, plain HTTP meets a TLS port, or mTLS rejects the client "
    .. "certificate. Expired certificates are left to the certificate-expiry playbook.",
  tags = { "tls", "ssl", "handshake", "x509", "mtls", "sni", "cipher", "ca-bundle" },
  category = "security",
  kb = "tls handshake failure unknown authority certificate chain sni protocol version cipher",
  signals = {
    { name = "tls_unknown_ca", severity = "error",
      pattern = [=[x509: certificate signed by unknown authority|unable to get local issuer ]=]
        .. [=[certificate|PKIX path building failed|unable to find valid certification path|]=]
        .. [=[self[- ]signed certificate in certificate chain|alert unknown ca|Verify return ]=]
        .. [=[code: (19|20|21) |unable to verify the first certificate]=],
      description = "the peer's certificate chain is not trusted" },
    { name = "tls_hostname_mismatch", severity = "error",
      pattern = [=[x509: certificate is valid for|certificate is not valid for any names|No ]=]
        .. [=[subject alternative (DNS )?names? matching|Hostname [^ ]+ not verified|doesn't ]=]
        .. [=[match (any of the )?(subject alternative names|common name)|hostname mismatch|]=]
        .. [=[Verify return code: 62 ]=],
      description = "the certificate's names do not include the host the client uses" },
    { name = "tls_version_mismatch", severity = "error",
      pattern = [=[alert protocol version|unsupported protocol|no protocols available|]=]
        .. [=[TLSV1_ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|protocol version not supported|]=]
        .. [=[is not accepted by client preferences]=],
      description = "client and server share no TLS version" },
    { name = "tls_cipher_mismatch", severity = "error",
      pattern = [=[no shared cipher|no cipher(s| suites) in common|NO_SHARED_CIPHER|alert ]=]
        .. [=[handshake failure|fatal alert: handshake_failure|tls: handshake failure]=],
      description = "no common cipher suite (handshake_failure alert)" },
    { name = "tls_plaintext_mismatch", severity = "error",
      pattern = [=[wrong version number|server gave HTTP response to HTTPS client|plain HTTP ]=]
        .. [=[request was sent to HTTPS port|client sent an HTTP request to an HTTPS server|]=]
        .. [=[first record does not look like a TLS handshake]=],
      description = "plain text spoken to a TLS port, or TLS to a plain port" },
    { name = "tls_client_cert", severity = "error",
      pattern = [=[tls: bad certificate|alert bad certificate|alert certificate required|]=]
        .. [=[peer did not return a certificate|no required SSL certificate was sent|]=]
        .. [=[client didn't provide a certificate]=],
      description = "mTLS: the client certificate is missing or rejected" },
    { name = "tls_mesh_verify", severity = "error",
      pattern = [=[CERTIFICATE_VERIFY_FAILED|transport failure reason: TLS error]=],
      description = "Envoy / Istio upstream TLS failure" },
    { name = "tls_verify_ok", severity = "info",
      pattern = [=[Verify return code: 0 \(ok\)]=],
      description = "openssl s_client verified the chain" },
  },

  match = function(ctx)
    local a, score, why = assess(ctx), 0, {}
    if a.specific > 0 then
      score = 0.6 + 0.3 * sat(a.specific, 4)
      for _, c in ipairs(CAUSES) do
        local s = sig(ctx, c[1])
        if s then why[#why + 1] = c[3] .. ": " .. span(s) end
      end
    elseif a.unexplained > 0 then
      local s = sig(ctx, "tls_handshake_error") or sig(ctx, "tls_mesh_verify")
      score = 0.45 + 0.2 * sat(a.unexplained, 5)
      why[#why + 1] = "TLS handshake errors: " .. span(s)
    elseif a.generic > 0 then
      -- every handshake error is an expired certificate: the certificate-expiry playbook's
      score = 0.2
      why[#why + 1] = "TLS errors, all explained by an expired certificate"
    end
    if a.words then
      score = score + (a.strong and 0.1 or 0.2)
      why[#why + 1] = "the user describes TLS / certificate trouble"
    end
    return math.min(score, 1), why
  end,

  steps = {
    { name = "inspect", run = function(ctx, out)
      see(ctx, out, "tls_handshake_error", "TLS handshake errors (all kinds)")
      for _, c in ipairs(CAUSES) do see(ctx, out, c[1], c[3]) end
      see(ctx, out, "tls_mesh_verify", "Proxy / mesh upstream TLS failure")
      see(ctx, out, "certificate_expired", "Expired certificate (see certificate-expiry)")
      see(ctx, out, "tls_verify_ok", "openssl verified the chain (return code 0)")
    end },

    { name = "knowledge", run = function(_, out)
      out:runbook("tls handshake failure certificate chain unknown authority sni cipher")
    end },

    { name = "hypotheses", run = function(ctx, out)
      local a = assess(ctx)
      local function lk(key, base)
        local n = a.by_hyp[key]
        if n > 0 then
          return math.min(0.85, 0.45 + 0.25 * sat(n, 3) + (a.best == key and 0.1 or 0))
        end
        return base
      end
      out:hypothesis { key = "tls_untrusted_chain", category = "config",
        statement = "The certificate chain is not trusted: the server sends only the leaf "
          .. "(missing intermediate), or the client's trust store lacks the (private) CA",
        likelihood = lk("tls_untrusted_chain", a.unexplained > 0 and 0.35 or 0.15) }
      out:hypothesis { key = "tls_hostname_mismatch", category = "config",
        statement = "The certificate's subject alternative names do not include the name the "
          .. "client connects to (or SNI is missing and the default certificate is served)",
        likelihood = lk("tls_hostname_mismatch", 0.15) }
      out:hypothesis { key = "tls_protocol_mismatch", category = "config",
        statement = "Client and server share no TLS version or cipher suite after a "
          .. "configuration change, or plain HTTP and TLS meet on one port",
        likelihood = lk("tls_protocol_mismatch", 0.15) }
      out:hypothesis { key = "tls_mtls_client_cert", category = "security",
        statement = "Mutual TLS rejects the client: its certificate is missing or issued by a "
          .. "CA the server does not trust (mesh mode mismatch STRICT vs plaintext)",
        likelihood = lk("tls_mtls_client_cert", 0.1) }
      for _, c in ipairs(CAUSES) do
        local s = sig(ctx, c[1])
        if s then
          out:evidence { hypothesis = c[2], stance = "for", evidence_id = s.evidence_id,
            line = s.first_line, summary = c[3] .. " (" .. span(s) .. ")" }
        end
      end
      local ok = sig(ctx, "tls_verify_ok")
      if ok then
        out:evidence { hypothesis = "tls_untrusted_chain", stance = "against",
          evidence_id = ok.evidence_id, line = ok.first_line,
          summary = "openssl s_client verifies the chain from where it was run" }
      end
      local ex = sig(ctx, "certificate_expired")
      if ex then
        out:evidence { hypothesis = "tls_untrusted_chain", stance = "against",
          evidence_id = ex.evidence_id, line = ex.first_line,
          summary = "some failures are an expired certificate, not trust (" .. span(ex) .. ")" }
      end
    end },

    { name = "ask", run = function(ctx, out)
      local a = assess(ctx)
      local host, port = kit.tls_target(ctx)
      local hp = host .. ":" .. port
      out:ask { label = "What the server presents", hypothesis = "tls_untrusted_chain",
        command = "openssl s_client -connect " .. hp .. " -servername " .. host .. " -showcerts "
          .. "</dev/null 2>&1 | grep -E 'Verify return code|s:|i:|Protocol|Cipher'",
        why = "code 21: chain incomplete on the server; 20: the client lacks the CA" }
      if a.by_hyp.tls_hostname_mismatch == 0 then
        out:ask { label = "Names in the certificate", hypothesis = "tls_hostname_mismatch",
          command = "openssl s_client -connect " .. hp .. " -servername " .. host .. " </dev/null "
            .. "2>/dev/null | openssl x509 -noout -ext subjectAltName" }
      end
      out:ask { label = "Protocol versions offered", hypothesis = "tls_protocol_mismatch",
        command = "for v in tls1_2 tls1_3; do openssl s_client -connect " .. hp .. " -$v "
          .. "</dev/null >/dev/null 2>&1 && echo \"$v ok\" || echo \"$v fails\"; done" }
      if a.by_hyp.tls_mtls_client_cert > 0 then
        out:ask { label = "Try the client certificate", hypothesis = "tls_mtls_client_cert",
          command = "openssl s_client -connect " .. hp .. " -cert client.crt -key client.key "
            .. "-CAfile ca.pem </dev/null" }
      end
      out:ask { label = "Recent TLS or certificate changes",
        command = "kubectl get ingress,secret -A --sort-by=.metadata.creationTimestamp | tail",
        why = "failures starting at a change point to that change" }
    end },

    { name = "conclude", run = function(ctx, out)
      local a = assess(ctx)
      if not a.best then return end     -- generic errors only: ask for openssl output first
      local text = {
        tls_untrusted_chain = "The peer's certificate chain is not trusted: the server does "
          .. "not send its intermediate, or the client lacks the issuing CA",
        tls_hostname_mismatch = "The certificate does not cover the host name clients use",
        tls_protocol_mismatch = "Client and server cannot agree on a protocol version or "
          .. "cipher (or plain HTTP meets TLS)",
        tls_mtls_client_cert = "mTLS rejects the client certificate",
      }
      local s
      for _, c in ipairs(CAUSES) do
        if c[2] == a.best and not s then s = sig(ctx, c[1]) end
      end
      out:conclude { hypothesis = a.best, severity = "high",
        confidence = math.min(0.85, 0.5 + 0.25 * sat(a.best_n, 3)
          + (a.best_n == a.specific and 0.05 or 0) - (a.ok > 0 and 0.15 or 0)),
        root_cause = text[a.best] .. " (" .. span(s) .. ")." }
    end },

    { name = "remediate", run = function(ctx, out)
      local a = assess(ctx)
      local host, port = kit.tls_target(ctx)
      local hp = host .. ":" .. port
      local b = a.best
      out:mitigate { title = "Roll back the TLS change that started the failures",
        description = "protocols, ciphers, certificate or trust bundle changed just before",
        risk = "low", undo = "re-apply the change once clients are ready" }
      if b == "tls_untrusted_chain" or not b then
        out:mitigate { title = "Serve the full chain",
          command = "cat leaf.crt intermediate.crt > fullchain.pem && nginx -t && nginx -s reload",
          risk = "low", undo = "restore the previous certificate file and reload",
          verify = "openssl s_client -connect " .. hp .. " -servername " .. host
            .. " </dev/null | grep "
            .. "'Verify return code: 0'" }
        out:solve { title = "Ship and update the CA bundle in images",
          command = "apt-get install -y ca-certificates && update-ca-certificates",
          description = "or mount the private CA into the container / Java keytool -importcert",
          risk = "low", undo = "remove the added CA" }
      end
      if b == "tls_hostname_mismatch" then
        out:solve { title = "Reissue the certificate with every name clients use",
          description = "add the missing SAN; make clients send SNI",
          risk = "low", undo = "redeploy the previous certificate" }
      end
      if b == "tls_protocol_mismatch" then
        out:solve { title = "Standardise TLS settings (Mozilla intermediate)",
          description = "TLS 1.2 + 1.3 with the intermediate cipher list on every balancer; "
            .. "track legacy clients before removing a version; check ports speak TLS",
          risk = "medium", undo = "restore the previous ssl_protocols / ssl_ciphers" }
      end
      if b == "tls_mtls_client_cert" then
        out:mitigate { title = "Set the mesh to PERMISSIVE while fixing the client side",
          command = "kubectl apply -f peer-authentication-permissive.yaml",
          risk = "high", undo = "kubectl apply -f peer-authentication-strict.yaml" }
      end
    end },
  },
}
