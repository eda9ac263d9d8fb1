-- fm.auth.jwt: HS256 only, every claim checked, forged tokens refused.
local jwt = require "fm.auth.jwt"
local crypto = require "fm.crypto"
local json = require "fm.json"

local KEY = string.rep("k", 32)
local OPTS = { iss = "faultmaven", aud = "faultmaven-api", typ = "access", now = 1000000 }

local function claims(over)
  local c = { sub = "user_1", iss = "faultmaven", aud = "faultmaven-api", iat = 999990,
              exp = 1000900, jti = "j1", typ = "access" }
  for k, v in pairs(over or {}) do c[k] = v end
  return c
end

local function b64(s) return crypto.b64url_encode(s) end

describe("fm.auth.jwt", function()
  it("round-trips a token", function()
    local t = jwt.sign(claims(), KEY)
    assert.matches("^[%w_%-]+%.[%w_%-]+%.[%w_%-]+$", t)
    local c = assert(jwt.verify(t, KEY, OPTS))
    assert.equal("user_1", c.sub)
  end)

  it("refuses a wrong key, a changed payload and a changed signature", function()
    local t = jwt.sign(claims(), KEY)
    assert.same({ nil, "bad signature" }, { jwt.verify(t, string.rep("x", 32), OPTS) })
    local h, _, s = t:match("^(.-)%.(.-)%.(.-)$")
    local forged = h .. "." .. b64(json.encode(claims { sub = "user_admin" })) .. "." .. s
    assert.same({ nil, "bad signature" }, { jwt.verify(forged, KEY, OPTS) })
    local flipped = t:sub(1, -2) .. (t:sub(-1) == "A" and "B" or "A")
    assert.is_nil((jwt.verify(flipped, KEY, OPTS)))
  end)

  it("refuses alg none and other algorithms, even with a valid-looking body", function()
    for _, alg in ipairs { "none", "HS512", "RS256", "hs256" } do
      local h = b64(json.encode { alg = alg, typ = "JWT" })
      local body = b64(json.encode(claims()))
      local sig = b64(crypto.hmac_sha256(KEY, h .. "." .. body))
      assert.same({ nil, "unsupported algorithm" }, { jwt.verify(h .. "." .. body .. "." .. sig,
        KEY, OPTS) }, alg)
      assert.is_nil((jwt.verify(h .. "." .. body .. ".", KEY, OPTS)))
    end
  end)

  it("checks expiry, not-before, issued-at, issuer, audience, type and subject", function()
    local cases = {
      { claims { exp = 999000 }, "expired" },
      { claims { exp = "1000900" }, "expired" },
      { claims { nbf = 1000100 }, "not yet valid" },
      { claims { iat = 1000500 }, "issued in the future" },
      { claims { iss = "evil" }, "wrong issuer" },
      { claims { aud = "other-api" }, "wrong audience" },
      { claims { aud = { "x", "y" } }, "wrong audience" },
      { claims { typ = "refresh" }, "wrong token type" },
      { claims { sub = "" }, "no subject" },
      { claims { sub = 42 }, "no subject" },
    }
    for _, c in ipairs(cases) do
      assert.same({ nil, c[2] }, { jwt.verify(jwt.sign(c[1], KEY), KEY, OPTS) })
    end
    assert.truthy(jwt.verify(jwt.sign(claims { aud = { "x", "faultmaven-api" } }, KEY), KEY, OPTS))
    -- within the leeway
    assert.truthy(jwt.verify(jwt.sign(claims { exp = 999980 }, KEY), KEY, OPTS))
  end)

  it("refuses malformed and oversized input without raising", function()
    for _, t in ipairs { "", "a.b", "a.b.c.d", "....", "a b.c.d", string.rep("a", 9000) .. ".b.c",
                         "%%%.%%%.%%%", b64("{") .. "." .. b64("{}") .. ".x" } do
      local ok, c = pcall(jwt.verify, t, KEY, OPTS)
      assert.is_true(ok, t)
      assert.is_nil(c, t)
    end
    assert.is_nil((jwt.verify(nil, KEY, OPTS)))
    assert.is_nil((jwt.verify({}, KEY, OPTS)))
  end)
end)

describe("fm.crypto for auth", function()
  it("hashes and verifies passwords with argon2id", function()
    local h = crypto.password_hash("correct horse", 1, 8192)
    assert.matches("^%$argon2id%$", h)
    assert.is_true(crypto.password_verify(h, "correct horse"))
    assert.is_false(crypto.password_verify(h, "correct hors"))
    assert.is_false(crypto.password_verify("garbage", "x"))
    assert.is_true(crypto.password_needs_rehash(h, 2, 65536))
    assert.is_false(crypto.password_needs_rehash(h, 1, 8192))
  end)

  it("HMAC-SHA256 matches RFC 4231 test case 2", function()
    local mac = crypto.hmac_sha256("Jefe", "what do ya want for nothing?")
    assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hex(mac))
    assert.equal("00ff10", crypto.hex("\0\255\16"))
    assert.equal("", crypto.hex(""))
  end)

  it("base64url round-trips and refuses bad input", function()
    for _, s in ipairs { "", "f", "fo", "foo", "\0\255\254", string.rep("x", 1000) } do
      assert.equal(s, crypto.b64url_decode(crypto.b64url_encode(s)))
    end
    assert.is_nil(crypto.b64url_decode("a+b/"))
    assert.is_nil(crypto.b64url_decode("abc="))
    assert.is_nil(crypto.b64url_decode("a"))
  end)

  it("compares in constant time", function()
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "abcd"))
  end)

  it("creates a secret file once, mode 0600, and reads it back", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local path = dir .. "/.jwt_secret"
    local s1 = assert(crypto.secret_file(path))
    assert.is_true(#s1 >= 64)
    assert.equal(s1, crypto.secret_file(path))
    local p = io.popen("stat -c %a " .. path)
    local mode = p:read("l")
    p:close()
    assert.equal("600", mode)
    assert(os.execute("chmod 644 " .. path))
    assert.equal(s1, crypto.secret_file(path))
    p = io.popen("stat -c %a " .. path)
    mode = p:read("l")
    p:close()
    assert.equal("600", mode) -- tightened
    local _, msg = crypto.secret_file(dir .. "/missing-dir/x")
    assert.matches("No such file", msg)
    os.execute("rm -rf " .. dir)
  end)
end)
