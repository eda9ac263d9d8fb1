-- playbooks/tls-handshake-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/tls-handshake-failures/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "tls-handshake-failures"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/unknown-ca", {
      "tls_unknown_ca",
    })
    P.assert_signals("positive/protocol-version", {
      "tls_version_mismatch",
    })
    P.assert_signals("positive/hostname-mismatch", {
      "tls_hostname_mismatch",
    })
  end)

  it("nginx verify failures, Go unknown authority, s_client return code 21", function()
    local m = P.check_positive {
      dir = "positive/unknown-ca",
      symptom = "the gateway cannot reach the users service",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = {
        "tls_untrusted_chain", "tls_hostname_mismatch", "tls_protocol_mismatch",
        "tls_mtls_client_cert",
      },
      conclusion = "tls_untrusted_chain",
      asks = {
        "openssl s_client -connect users.internal.example.com:8443",
        "-servername users.internal.example.com", "subjectAltName",
      },
    }
    assert.truthy(m)
  end)

  it("Java refuses TLS 1.0 and curl gets an alert protocol version", function()
    local m = P.check_positive {
      dir = "positive/protocol-version",
      symptom = "ledger sync stopped",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "tls_untrusted_chain", "tls_protocol_mismatch" },
      conclusion = "tls_protocol_mismatch",
      asks = { "for v in tls1_2 tls1_3; do", "-connect ledger.legacy.example.com:443 -$v" },
    }
    assert.truthy(m)
  end)

  it("x509 certificate is valid for another name; curl SAN mismatch", function()
    local m = P.check_positive {
      dir = "positive/hostname-mismatch",
      symptom = "mobile BFF cannot call the API",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "tls_untrusted_chain", "tls_hostname_mismatch" },
      conclusion = "tls_hostname_mismatch",
      asks = { "-connect api.example.com:443" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: DNS lookup timeouts", function()
    P.check_negative {
      dir = "negative/dns-timeouts",
      symptom = "payments fail",
      first = "dns-resolution-failures",
    }
  end)

  it("under the threshold: an expired certificate (certificate-expiry ranks first)", function()
    P.check_negative {
      dir = "negative/expired-cert",
      symptom = "publishing events fails",
      first = "certificate-expiry",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("TLS handshake problems since this morning")
  end)
end)
