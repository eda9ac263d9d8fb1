-- playbooks/certificate-expiry.lua against realistic evidence
-- (spec/fixtures/playbooks/certificate-expiry/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "certificate-expiry"
local P = require("spec.helpers.playbooks").for_playbook(ID, {
  now = "2026-11-22T12:00:00Z",   -- frozen: the fixtures' certificates are dated
})

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/go-expired-renewal-failing", {
      "cert_after_time",
      "cert_renewal_failing",
    })
    P.assert_signals("positive/not-reloaded", {
      "cert_not_after",
    })
    P.assert_signals("positive/clock-skew", {
      "cert_before_time",
      "cert_clock_unsynced",
    })
  end)

  it("Go x509 after notAfter and a cert-manager ACME authorization error", function()
    local m = P.check_positive {
      dir = "positive/go-expired-renewal-failing",
      symptom = "event publishing is down",
      min_score = 0.7,
      min_confidence = 0.75,
      hypotheses = { "cert_renewal_failed", "cert_not_reloaded", "cert_clock_skew" },
      conclusion = "cert_renewal_failed",
      asks = { "-connect events.example.com:443 -servername events.example.com", "date -u" },
    }
    assert.matches("renewal is failing", m.conclusion.root_cause)
  end)

  it("curl sees an expired certificate while the file on disk is renewed", function()
    local m = P.check_positive {
      dir = "positive/not-reloaded",
      symptom = "the shop shows a certificate error",
      min_score = 0.6,
      min_confidence = 0.6,
      hypotheses = { "cert_renewal_failed", "cert_not_reloaded", "cert_clock_skew" },
      conclusion = "cert_not_reloaded",
      asks = { "-connect shop.example.com:443", "openssl x509 -in" },
    }
    assert.matches("2027%-01%-20", m.conclusion.root_cause)
    assert.truthy(P.mitigation_with(m, "nginx -s reload"))
  end)

  it("current time is before notBefore and the clock is not synchronised", function()
    local m = P.check_positive {
      dir = "positive/clock-skew",
      symptom = "edge devices stopped uploading",
      min_score = 0.5,
      min_confidence = 0.75,
      hypotheses = { "cert_renewal_failed", "cert_clock_skew" },
      conclusion = "cert_clock_skew",
      asks = { "timedatectl status" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: a host name mismatch (TLS, not expiry)", function()
    P.check_negative {
      dir = "negative/hostname-mismatch",
      symptom = "mobile BFF cannot call the API",
      first = "tls-handshake-failures",
    }
  end)

  it("under the threshold: an unknown certificate authority", function()
    P.check_negative {
      dir = "negative/unknown-ca",
      symptom = "users sync fails",
      first = "tls-handshake-failures",
    }
  end)

  it("scores the user's words alone low", function()
    P.check_words("I think a certificate expired")
  end)
end)
