-- JSON body parsing: a body sent as application/json (or +json) is decoded into req.json with a
-- depth limit (FM_JSON_MAX_DEPTH); malformed, too deep or non-UTF-8 JSON is a 400 that says why.
local json = require "fm.json"
local settings = require "fm.settings"

local max_depth = settings.json_max_depth

local function is_json(ctype)
  if not ctype then return false end
  local mime = ctype:match("^%s*([^;%s]+)")
  mime = mime and mime:lower() or ""
  return mime == "application/json" or mime:match("^application/[%w%.%-]+%+json$") ~= nil
end

return function(req, nxt)
  if req.body and is_json(req.headers["content-type"]) then
    local value, err = json.decode(req.body, max_depth)
    if value == nil then
      return 400, { detail = "malformed JSON body: " .. err }
    end
    req.json = value
  end
  return nxt(req)
end
