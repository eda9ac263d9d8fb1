-- fm.auth.jwt: JSON Web Tokens, HS256 only (RFC 7519 / 7515), for the API's bearer tokens.
--
--   jwt.sign(claims, key) -> token
--   jwt.verify(token, key, {aud = "faultmaven-api", iss = "faultmaven", typ = "access",
--              now = seconds, leeway = 30}) -> claims | nil, reason
--
-- verify accepts only alg HS256 (a token saying "none" or RS256 is refused, never trusted),
-- compares the signature in constant time, and checks exp, nbf, iat (not in the future beyond
-- the leeway), iss, aud (a string or a list containing it) and our own `typ` claim (access or
-- refresh: one must never pass for the other). Reasons are short and safe to log; clients
-- just get 401.
local crypto = require "fm.crypto"
local json = require "fm.json"

local M = {}

local HEADER = crypto.b64url_encode('{"alg":"HS256","typ":"JWT"}')
local MAX_TOKEN_BYTES = 8192

function M.sign(claims, key)
  assert(type(key) == "string" and #key >= 32, "jwt.sign: key of at least 32 bytes")
  local body = crypto.b64url_encode(json.encode(claims))
  local input = HEADER .. "." .. body
  return input .. "." .. crypto.b64url_encode(crypto.hmac_sha256(key, input))
end

local function audience_ok(aud, want)
  if type(aud) == "string" then return aud == want end
  if type(aud) == "table" then
    for _, a in ipairs(aud) do if a == want then return true end end
  end
  return false
end

function M.verify(token, key, opts)
  opts = opts or {}
  if type(token) ~= "string" or #token > MAX_TOKEN_BYTES then return nil, "malformed token" end
  local h64, b64, s64 = token:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
  if not h64 then return nil, "malformed token" end
  local hjson = crypto.b64url_decode(h64)
  local header = hjson and json.decode(hjson, 4)
  if type(header) ~= "table" or header.alg ~= "HS256" then return nil, "unsupported algorithm" end
  if header.crit ~= nil then return nil, "unsupported critical header" end
  local sig = crypto.b64url_decode(s64)
  if not sig or not crypto.equal(sig, crypto.hmac_sha256(key, h64 .. "." .. b64)) then
    return nil, "bad signature"
  end
  local bjson = crypto.b64url_decode(b64)
  local claims = bjson and json.decode(bjson, 8)
  if type(claims) ~= "table" then return nil, "malformed claims" end
  local now, leeway = opts.now or os.time(), opts.leeway or 30
  if math.type(claims.exp) == nil or claims.exp + leeway < now then return nil, "expired" end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or claims.nbf - leeway > now) then
    return nil, "not yet valid"
  end
  if claims.iat ~= nil and (type(claims.iat) ~= "number" or claims.iat - leeway > now) then
    return nil, "issued in the future"
  end
  if opts.iss and claims.iss ~= opts.iss then return nil, "wrong issuer" end
  if opts.aud and not audience_ok(claims.aud, opts.aud) then return nil, "wrong audience" end
  if opts.typ and claims.typ ~= opts.typ then return nil, "wrong token type" end
  if type(claims.sub) ~= "string" or claims.sub == "" then return nil, "no subject" end
  return claims
end

return M
