-- playbooks/dns-resolution-failures.lua against realistic evidence
-- (spec/fixtures/playbooks/dns-resolution-failures/).
-- The positive fixtures must match with the expected hypotheses, asks and conclusion; the
-- negative ones (near misses included) must stay under the runner's threshold.
local ID = "dns-resolution-failures"
local P = require("spec.helpers.playbooks").for_playbook(ID)

describe("playbook " .. ID, function()
  it("fires its own signals on the positive fixtures", function()
    P.assert_signals("positive/coredns-timeouts", {
      "dns_temporary",
      "dns_coredns_error",
      "dns_coredns_unhealthy",
    })
    P.assert_signals("positive/nxdomain", {
      "dns_not_found",
      "dns_dig_nxdomain",
    })
    P.assert_signals("positive/conntrack-drops", {
      "dns_conntrack",
      "dns_slow_query",
    })
  end)

  it("lookup i/o timeouts, CoreDNS upstream errors and a crash-looping CoreDNS pod", function()
    local m = P.check_positive {
      dir = "positive/coredns-timeouts",
      symptom = "payments fail randomly, 5 second delays",
      min_score = 0.7,
      min_confidence = 0.7,
      hypotheses = { "dns_record_missing", "dns_resolver_unhealthy", "dns_conntrack_race" },
      conclusion = "dns_resolver_unhealthy",
      asks = { "dig +short payments-db.prod.svc.cluster.local", "k8s-app=kube-dns" },
    }
    assert.truthy(m)
  end)

  it("Name or service not known and dig NXDOMAIN: the record is missing", function()
    local m = P.check_positive {
      dir = "positive/nxdomain",
      symptom = "the nightly report failed",
      min_score = 0.6,
      min_confidence = 0.7,
      hypotheses = { "dns_record_missing", "dns_resolver_unhealthy", "dns_conntrack_race" },
      conclusion = "dns_record_missing",
      asks = { "dig +short reports-db.analytics.svc.cluster.local", "/etc/resolv.conf" },
    }
    assert.matches("reports%-db%.analytics", m.conclusion.root_cause)
  end)

  it("conntrack insert_failed and 5 second dig answers", function()
    local m = P.check_positive {
      dir = "positive/conntrack-drops",
      symptom = "random 5 second delays on outgoing calls",
      min_score = 0.4,
      min_confidence = 0.5,
      hypotheses = { "dns_record_missing", "dns_resolver_unhealthy", "dns_conntrack_race" },
      conclusion = "dns_conntrack_race",
      asks = { "/etc/resolv.conf" },
    }
    assert.truthy(m)
  end)

  it("under the threshold: TLS unknown authority (network, not DNS)", function()
    P.check_negative {
      dir = "negative/tls-unknown-ca",
      symptom = "users sync fails",
      first = "tls-handshake-failures",
    }
  end)

  it("under the threshold: connection refused by the database", function()
    P.check_negative { dir = "negative/db-refused", symptom = "the API cannot reach its database" }
  end)

  it("scores the user's words alone low", function()
    P.check_words("I think DNS is broken, names do not resolve")
  end)
end)
