-- fm.embed: the built-in hashing embedder (determinism, dimension, norm, similarity, speed) and
-- the OpenAI-compatible provider against a local fake of the documented subset of
-- POST /v1/embeddings (spec/fixtures/fake_openai_embeddings.lua): batching, order by "index",
-- the Bearer key, retries on 500/429/timeouts, the `embeddings` circuit breaker, a dimension
-- mismatch, and an answer that is not JSON.
local helpers = require "spec.helpers"
local breaker = require "fm.breaker"
local core = require "fm.embed_core"
local embed = require "fm.embed"
local time = require "fm.time"

local q = helpers.shell_quote

local function cos(a, b) return core.dot(a, b) end

describe("fm.embed hashing", function()
  before_each(function() embed.configure { provider = "hashing", dim = 384 } end)

  it("names itself and its dimension", function()
    assert.equal("hashing", embed.provider())
    assert.equal(384, embed.dim())
    assert.equal("hashing-v1-384", embed.model())
  end)

  it("is deterministic, 384 or 512 dimensions, L2-normalised", function()
    local texts = { "Connection refused: postgres at db:5432", "OOMKilled in pod api-7f9c" }
    local a = assert(embed.embed(texts))
    local b = assert(embed.embed(texts))
    assert.equal(2, #a)
    assert.equal(a[1], b[1])
    assert.equal(a[2], b[2])
    assert.equal(384 * 4, #a[1])
    assert.near(1, core.norm(a[1]), 1e-5)
    assert.near(1, core.norm(a[2]), 1e-5)
    embed.configure { provider = "hashing", dim = 512 }
    local c = assert(embed.embed(texts))
    assert.equal(512 * 4, #c[1])
    assert.near(1, core.norm(c[1]), 1e-5)
    assert.equal("hashing-v1-512", embed.model())
  end)

  it("gives the same vector on every run (a fixed reference value)", function()
    -- the features and the hash are part of the index format: a change means a reindex
    local v = core.unpack(assert(embed.embed({ "disk full on /var/lib/postgresql" }))[1])
    local again = core.unpack(core.hashing({ "disk full on /var/lib/postgresql" }, 384)[1])
    for i = 1, 384 do assert.equal(v[i], again[i]) end
    local nz = 0
    for i = 1, 384 do if v[i] ~= 0 then nz = nz + 1 end end
    assert.is_true(nz > 10 and nz < 384, "sparse but not empty: " .. nz)
  end)

  it("puts similar texts closer than unrelated ones", function()
    local v = assert(embed.embed({
      "postgres connection refused on port 5432",
      "Connection refused when connecting to PostgreSQL (port 5432)",
      "the kubernetes pod was OOMKilled after exceeding its memory limit",
      "pods OOM killed: container memory limit exceeded",
      "how to bake sourdough bread at home",
    }))
    assert.is_true(cos(v[1], v[2]) > cos(v[1], v[3]))
    assert.is_true(cos(v[1], v[2]) > cos(v[1], v[5]))
    assert.is_true(cos(v[3], v[4]) > cos(v[3], v[1]))
    assert.is_true(cos(v[3], v[4]) > cos(v[3], v[5]))
    -- character 3-grams: an inflection or a typo still shares most features
    local w = assert(embed.embed({ "connections timing out", "connection timed out",
      "bread recipe" }))
    assert.is_true(cos(w[1], w[2]) > 0.3, "inflections share 3-grams: " .. cos(w[1], w[2]))
    assert.is_true(cos(w[1], w[2]) > cos(w[1], w[3]) + 0.2)
  end)

  it("tokenises lower-cased words, UTF-8 letters kept, punctuation and stop words dropped",
    function()
      assert.same({ "héllo", "world", "ünïcödé", "naïve", "façade", "αβγ", "привет", "東京",
        "x", "y", "503" },
        core.tokens("Héllo, WORLD! Ünïcödé naïve—façade ΑΒΓ «Привет» 東京。the a x_y 503"))
      assert.same({}, core.tokens(" ,;--- \t\n"))
    end)

  it("embeds a text without words as the zero vector, and invalid UTF-8 safely", function()
    local v = assert(embed.embed({ "", "!!! ---", "\xff\xfe\xc0 broken \xe2\x82" }))
    assert.equal(0, core.norm(v[1]))
    assert.equal(0, core.norm(v[2]))
    assert.near(1, core.norm(v[3]), 1e-5)
  end)

  it("raises on misuse", function()
    assert.has_error(function() embed.embed("text") end)
    assert.has_error(function() embed.embed({ "a", 42 }) end)
    assert.same({}, embed.embed({}))
  end)

  it("is fast (prints docs/s; no timing assertion)", function()
    local words = {}
    for w in ([[the service returned 503 because the upstream connection pool was exhausted
      after the database failover; retries amplified the load and the circuit breaker opened
      while kubelet reported memory pressure on node ip-10-0-3-17 and evicted pods]]):gmatch("%S+")
    do words[#words + 1] = w end
    local docs = {}
    for i = 1, 2000 do
      local t = {}
      for j = 1, 120 do t[j] = words[(i * 7 + j * 13) % #words + 1] end
      docs[i] = table.concat(t, " ")
    end
    local t0 = time.monotonic()
    local v = embed.embed(docs)
    local dt = time.monotonic() - t0
    assert.equal(2000, #v)
    print(("\nhashing embedder: 2000 docs of 120 words in %.3f s: %.0f docs/s (this build)")
      :format(dt, 2000 / dt))
  end)
end)

describe("fm.embed openai (fake /v1/embeddings)", function()
  local port, work

  local function ctl(path)
    local ok, _, out = helpers.shell(("curl -s -f %s"):format(
      q(("http://127.0.0.1:%d/_ctl/%s"):format(port, path))))
    assert(ok, "fake embeddings " .. path)
    return out
  end

  local function requests()
    local lines = {}
    for line in ctl("log"):gmatch("[^\n]+") do lines[#lines + 1] = line end
    return lines
  end

  local function configure(t)
    local c = { provider = "openai", api_base = ("http://127.0.0.1:%d/v1"):format(port),
      model = "fake-embed", api_key = "sk-test", dim = 8, batch_size = 3, timeout_s = 5,
      max_retries = 3, backoff_s = 0.01 }
    for k, v in pairs(t or {}) do c[k] = v end
    embed.configure(c)
  end

  lazy_setup(function()
    work = helpers.tmpdir("fm-embed-")
    port = helpers.free_port()
    helpers.spawn({ argv = { helpers.bin(), "exec",
      helpers.root .. "/spec/fixtures/fake_openai_embeddings.lua", tostring(port) },
      stdout = work .. "/fake.log", stderr = work .. "/fake.log", cwd = helpers.root })
    helpers.wait_until(function() return pcall(ctl, "reset") end, 10)
  end)
  lazy_teardown(function()
    embed.configure { provider = "hashing" }
    helpers.cleanup()
  end)
  before_each(function()
    ctl("reset")
    breaker.reset(embed.BREAKER)
    configure()
  end)

  it("batches by EMBEDDING_BATCH_SIZE, sends the model and the key, keeps input order",
    function()
      assert.equal("openai", embed.provider())
      assert.equal("fake-embed", embed.model())
      local texts = { "a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg" }
      local v = assert(embed.embed(texts))
      assert.equal(7, #v)
      local log = requests()
      assert.same({ "n=3 model=fake-embed auth=Bearer sk-test",
        "n=3 model=fake-embed auth=Bearer sk-test", "n=1 model=fake-embed auth=Bearer sk-test" },
        log)
      for i, s in ipairs(v) do
        assert.equal(8 * 4, #s)
        assert.near(1, core.norm(s), 1e-5)
        local x = core.unpack(s)
        -- the fake's embedding of text i is {#text, 1, 0...}: the ratio names the text
        assert.near(#texts[i], x[1] / x[2], 1e-4)
      end
    end)

  it("sends no Authorization header without a key", function()
    configure { api_key = "" }
    assert(embed.embed({ "x" }))
    assert.equal("n=1 model=fake-embed auth=-", requests()[1])
  end)

  it("retries 500 and 429, then succeeds", function()
    ctl("fail?status=500&times=2")
    assert(embed.embed({ "one" }))
    assert.equal(3, #requests())
    ctl("reset")
    ctl("fail?status=429&times=1")
    assert(embed.embed({ "two" }))
    assert.equal(2, #requests())
  end)

  it("retries a timeout", function()
    configure { timeout_s = 0.5 }
    ctl("slow?delay_ms=700&times=1")
    local v, err = embed.embed({ "slow" })
    assert.is_table(v, err)
    -- the fake serves one request at a time: a retry sent while it still sleeps may time out
    -- too, so at least one retry, not exactly one
    assert.is_true(#requests() >= 2)
  end)

  it("gives up after the retries with EMBED_UNAVAILABLE", function()
    configure { max_retries = 2 }
    ctl("fail?status=503&times=10")
    local v, err, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_UNAVAILABLE", code)
    assert.matches("503", err)
    assert.matches("after 3 attempts", err, 1, true)
    assert.equal(3, #requests())
  end)

  it("does not retry a 4xx: EMBED_INVALID with the server's message", function()
    ctl("fail?status=401&times=1")
    local v, err, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_INVALID", code)
    assert.matches("401", err)
    assert.matches("scripted failure", err)
    assert.equal(1, #requests())
  end)

  it("opens the `embeddings` breaker after repeated failures and stops calling", function()
    configure { max_retries = 0 }
    ctl("fail?status=500&times=100")
    local threshold = breaker.config().fail_threshold
    for _ = 1, threshold do
      local _, _, code = embed.embed({ "x" })
      assert.equal("EMBED_UNAVAILABLE", code)
    end
    assert.equal("open", breaker.state(embed.BREAKER).state)
    local sent = #requests()
    assert.equal(threshold, sent)
    local v, err, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_UNAVAILABLE", code)
    assert.matches("circuit open", err)
    assert.equal(sent, #requests(), "nothing sent while the breaker is open")
  end)

  it("says clearly when the model's dimension is not EMBEDDING_DIM", function()
    ctl("dim?n=16")
    local v, err, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_INVALID", code)
    assert.matches("16 dimensions, 8 expected", err, 1, true)
    assert.matches("EMBEDDING_DIM", err, 1, true)
    assert.matches("faultmaven kb reindex", err, 1, true)
    local p, perr, pcode = embed.probe()
    assert.is_nil(p)
    assert.equal("EMBED_INVALID", pcode, perr)
    ctl("dim?n=8")
    p = assert(embed.probe())
    assert.equal(8, p.dim)
    assert.equal("fake-embed", p.model)
  end)

  it("turns an answer that is not JSON into EMBED_ERROR", function()
    ctl("bad?times=1")
    local v, err, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_ERROR", code)
    assert.matches("not JSON", err)
    assert.equal(1, #requests(), "a bad answer is not retried")
  end)

  it("is EMBED_UNAVAILABLE when nothing listens", function()
    configure { api_base = ("http://127.0.0.1:%d/v1"):format(helpers.free_port()),
      max_retries = 1 }
    local v, _, code = embed.embed({ "x" })
    assert.is_nil(v)
    assert.equal("EMBED_UNAVAILABLE", code)
  end)
end)
