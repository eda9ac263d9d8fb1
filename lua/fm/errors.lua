-- fm.errors: errors that carry an HTTP answer. A handler raises one with
--   error(errors.http(404, "case not found"))
-- and the error middleware turns it into that status with {"detail": ...}.
local M = {}

local mt = {
  __tostring = function(e) return string.format("HTTP %d: %s", e.status, tostring(e.detail)) end,
}

--- An error value: status (400..599), detail (string or table, sent as "detail"),
-- headers (optional table), body (optional table that replaces {"detail": ...}).
function M.http(status, detail, headers, body)
  if math.type(status) ~= "integer" or status < 400 or status > 599 then
    error("errors.http: status must be an integer from 400 to 599", 2)
  end
  return setmetatable({ status = status, detail = detail, headers = headers, body = body }, mt)
end

function M.is_http(e) return getmetatable(e) == mt end

--- Raises the error right away.
function M.raise(status, detail, headers, body)
  error(M.http(status, detail, headers, body), 2)
end

--- 422 in the contract's validation shape: {"detail": [{"loc": [...], "msg": ..., "type": ...}]}.
function M.validation(loc, msg, typ)
  return M.http(422, { { loc = loc, msg = msg, type = typ or "value_error" } })
end

return M
