-- A raw HTTP/1.1 client over luasocket, for specs that need to see the wire.
--
-- Unlike a library client it hides nothing: one `connect` is one TCP connection, requests on it are
-- sent in order on that socket (real keep-alive), and the caller can send arbitrary bytes, read a
-- response later, and ask whether the server closed the connection. Every read has a deadline
-- (default 10 s) so a spec can never hang on a silent server.
--
--   local c = assert(http.connect("127.0.0.1", port))
--   local res = assert(c:request("POST", "/x", { headers = { ["X-A"] = "1" }, body = "..." }))
--   res.status, res.reason, res.headers["content-type"], res.body, res.json()
--   c:send_raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); local res2 = c:read_response()
--   c:is_closed(0.5); c:local_port(); c:close()
--
-- Failures are returned as `nil, err` (never raised) so a spec can accept "either a 503 or a closed
-- connection" without pcall.

local socket = require "socket"

local http = {}

http.DEFAULT_TIMEOUT = 10

local CRLF = "\r\n"
local SEND_PIECE = 64 * 1024

-- JSON decoding: the engine's fm.json inside `faultmaven exec`, cjson under a plain interpreter.
local function json_decode(s)
  local ok, fmjson = pcall(require, "fm.json")
  if ok then return fmjson.decode(s) end
  return require("cjson").decode(s)
end

local function json_encode(v)
  local ok, fmjson = pcall(require, "fm.json")
  if ok then return fmjson.encode(v) end
  return require("cjson").encode(v)
end

http.json_decode = json_decode
http.json_encode = json_encode

local Client = {}
Client.__index = Client

-- Opens one TCP connection. opts.timeout is the per-read deadline in seconds.
-- Returns a client, or nil and the connect error ("connection refused", "timeout", ...).
function http.connect(host, port, opts)
  opts = opts or {}
  local sock = socket.tcp()
  local timeout = opts.timeout or http.DEFAULT_TIMEOUT
  sock:settimeout(opts.connect_timeout or timeout)
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({
    sock = sock,
    host = host,
    port = port,
    timeout = timeout,
    buf = "",
    closed = false,   -- we closed our end (or saw the server close it)
    eof = false,      -- the server closed its sending side
  }, Client)
end

-- The local (ephemeral) port of this connection: equal ports prove the same TCP connection.
function Client:local_port()
  local _, port = self.sock:getsockname()
  return tonumber(port)
end

function Client:close()
  if not self.closed then
    self.closed = true
    self.sock:close()
  end
end

-- Reads whatever bytes are available, waiting at most until `deadline`.
-- Returns the bytes, or nil and "timeout" | "closed".
function Client:_recv_some(deadline)
  if self.closed then return nil, "closed" end
  if self.eof then return nil, "closed" end
  local remaining = deadline - socket.gettime()
  if remaining <= 0 then return nil, "timeout" end
  -- select also returns at once when luasocket still holds buffered bytes ("dirty")
  local readable = socket.select({ self.sock }, nil, remaining)
  if not readable or #readable == 0 then return nil, "timeout" end
  self.sock:settimeout(0)
  local data, err, partial = self.sock:receive(65536)
  data = data or partial or ""
  if err == "closed" then self.eof = true end
  if #data == 0 then
    if err == "closed" then return nil, "closed" end
    return nil, err or "timeout"
  end
  return data
end

-- Reads one line (without its CRLF). Returns the line or nil, err.
function Client:_read_line(deadline)
  while true do
    local i = self.buf:find("\r\n", 1, true)
    if i then
      local line = self.buf:sub(1, i - 1)
      self.buf = self.buf:sub(i + 2)
      return line
    end
    if #self.buf > 1024 * 1024 then return nil, "line too long" end
    local data, err = self:_recv_some(deadline)
    if not data then return nil, err end
    self.buf = self.buf .. data
  end
end

-- Reads exactly n bytes. Returns them or nil, err, partial.
function Client:_read_exact(n, deadline)
  if #self.buf >= n then
    local out = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return out
  end
  local parts, have = { self.buf }, #self.buf
  self.buf = ""
  while have < n do
    local data, err = self:_recv_some(deadline)
    if not data then return nil, err, table.concat(parts) end
    parts[#parts + 1] = data
    have = have + #data
  end
  local all = table.concat(parts)
  self.buf = all:sub(n + 1)
  return all:sub(1, n)
end

-- Reads until the server closes the connection.
function Client:_read_to_close(deadline)
  local parts = { self.buf }
  self.buf = ""
  while true do
    local data, err = self:_recv_some(deadline)
    if not data then
      if err == "closed" then return table.concat(parts) end
      return nil, err
    end
    parts[#parts + 1] = data
  end
end

local function read_chunked(self, deadline)
  local parts = {}
  while true do
    local line, err = self:_read_line(deadline)
    if not line then return nil, "chunk size: " .. tostring(err) end
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size line: " .. line end
    if size == 0 then break end
    local data, rerr = self:_read_exact(size, deadline)
    if not data then return nil, "chunk data: " .. tostring(rerr) end
    parts[#parts + 1] = data
    local crlf, cerr = self:_read_line(deadline)
    if crlf ~= "" then return nil, "chunk terminator: " .. tostring(crlf or cerr) end
  end
  -- trailers up to the empty line
  while true do
    local line, err = self:_read_line(deadline)
    if not line then return nil, "trailer: " .. tostring(err) end
    if line == "" then break end
  end
  return table.concat(parts)
end

local function has_token(value, token)
  if not value then return false end
  for t in value:lower():gmatch("[^,%s]+") do
    if t == token then return true end
  end
  return false
end
http.has_token = has_token

local function new_response(status, reason, version)
  local res = {
    status = status,
    reason = reason,
    version = version,
    headers = {},       -- lower-case name -> value (repeated headers joined with ", ")
    header_list = {},   -- { {name, value}, ... } in wire order, names as sent
    body = "",
  }
  res.json = function()
    return json_decode(res.body)
  end
  return res
end

-- Reads one response from the connection. opts.method (so HEAD has no body), opts.timeout.
-- Interim 1xx responses (100 Continue) are skipped. Returns res or nil, err.
function Client:read_response(opts)
  opts = opts or {}
  local deadline = socket.gettime() + (opts.timeout or self.timeout)
  local res
  repeat
    local line, err = self:_read_line(deadline)
    if not line then return nil, err end
    local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
    if not version then return nil, "bad status line: " .. line end
    res = new_response(tonumber(status), reason, version)
    while true do
      local hline, herr = self:_read_line(deadline)
      if not hline then return nil, "headers: " .. tostring(herr) end
      if hline == "" then break end
      local name, value = hline:match("^([^:]+):%s*(.-)%s*$")
      if not name then return nil, "bad header line: " .. hline end
      res.header_list[#res.header_list + 1] = { name, value }
      local key = name:lower()
      if res.headers[key] then
        res.headers[key] = res.headers[key] .. ", " .. value
      else
        res.headers[key] = value
      end
    end
  until res.status >= 200 or res.status == 101

  local h = res.headers
  local no_body = opts.method == "HEAD" or res.status == 204 or res.status == 304
    or res.status < 200
  local body, berr
  if no_body then
    body = ""
  elseif has_token(h["transfer-encoding"], "chunked") then
    body, berr = read_chunked(self, deadline)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"])
    if not n then return nil, "bad content-length: " .. h["content-length"] end
    body, berr = self:_read_exact(n, deadline)
  else
    body, berr = self:_read_to_close(deadline)
    res.read_to_close = true
  end
  if not body then return nil, "body: " .. tostring(berr) end
  res.body = body

  local close = has_token(h.connection, "close")
    or (res.version == "1.0" and not has_token(h.connection, "keep-alive"))
    or res.read_to_close
  res.connection_close = close
  -- auto_close = false keeps our end open so a spec can watch the server close its end
  if close and self.auto_close ~= false then self:close() end
  return res
end

-- Sends bytes as they are. Returns true or nil, err.
function Client:send_raw(bytes, timeout)
  if self.closed then return nil, "closed" end
  self.sock:settimeout(timeout or self.timeout)
  local ok, err = self.sock:send(bytes)
  if not ok then return nil, err end
  return true
end

-- True when the server already sent something (e.g. an early 413) so sending more is pointless.
function Client:_has_reply()
  if #self.buf > 0 then return true end
  local readable = socket.select({ self.sock }, nil, 0)
  return readable and #readable > 0
end

-- Sends `body` in pieces, stopping early if the server answers before it has it all.
-- Returns true, or nil, err, or false when stopped early by a server reply.
function Client:_send_body(body)
  local pos = 1
  while pos <= #body do
    if self:_has_reply() then return false end
    local ok, err = self:send_raw(body:sub(pos, pos + SEND_PIECE - 1))
    if not ok then return nil, err end
    pos = pos + SEND_PIECE
  end
  return true
end

local function header_pairs(headers)
  local list = {}
  if not headers then return list end
  if headers[1] then
    for _, pair in ipairs(headers) do list[#list + 1] = { pair[1], pair[2] } end
  else
    for k, v in pairs(headers) do list[#list + 1] = { k, v } end
    table.sort(list, function(a, b) return a[1] < b[1] end)
  end
  return list
end

local function has_header(list, name)
  name = name:lower()
  for _, pair in ipairs(list) do
    if pair[1]:lower() == name then return true end
  end
  return false
end

-- Builds the request head. opts.headers: map or array of {name, value} (for order/duplicates).
function Client:_head(method, path, opts, body_len, chunked)
  local list = header_pairs(opts.headers)
  local lines = { ("%s %s HTTP/1.1"):format(method, path) }
  if not has_header(list, "host") then
    lines[#lines + 1] = ("Host: %s:%d"):format(self.host, self.port)
  end
  for _, pair in ipairs(list) do
    lines[#lines + 1] = ("%s: %s"):format(pair[1], pair[2])
  end
  if chunked then
    if not has_header(list, "transfer-encoding") then
      lines[#lines + 1] = "Transfer-Encoding: chunked"
    end
  elseif body_len and not has_header(list, "content-length") then
    lines[#lines + 1] = "Content-Length: " .. body_len
  end
  return table.concat(lines, CRLF) .. CRLF .. CRLF
end

-- Sends one request and reads its response.
--   opts.headers  map or array of {name, value}
--   opts.body     string body (Content-Length added unless given)
--   opts.json     a Lua value sent as JSON (sets Content-Type: application/json unless given)
--   opts.chunks   array of strings sent with Transfer-Encoding: chunked
--   opts.timeout  read deadline for the response
-- Returns res, or nil and an error. If the server answers before the whole body was sent (an early
-- 413), the answer is returned and the connection is then useless (it is closed).
function Client:request(method, path, opts)
  opts = opts or {}
  local body = opts.body
  if opts.json ~= nil then
    body = json_encode(opts.json)
    local list = header_pairs(opts.headers)
    if not has_header(list, "content-type") then
      list[#list + 1] = { "Content-Type", "application/json" }
    end
    opts = setmetatable({ headers = list }, { __index = opts })
  end
  local chunked = opts.chunks ~= nil
  local body_len = body and #body or nil
  local ok, err = self:send_raw(self:_head(method, path, opts, body_len, chunked))
  if not ok then
    -- like curl: the server may have answered and closed before taking the whole head
    local res = self:read_response({ method = method, timeout = opts.timeout or 2 })
    if res then
      res.body_incomplete = true
      self:close()
      return res
    end
    return nil, "send head: " .. tostring(err)
  end

  local sent_all, serr = true, nil
  if chunked then
    for _, chunk in ipairs(opts.chunks) do
      if self:_has_reply() then sent_all = false; break end
      if #chunk > 0 then
        sent_all, serr = self:send_raw(("%x"):format(#chunk) .. CRLF .. chunk .. CRLF)
        if not sent_all then break end
      end
    end
    if sent_all then sent_all, serr = self:send_raw("0" .. CRLF .. CRLF) end
  elseif body and #body > 0 then
    sent_all, serr = self:_send_body(body)
  end

  local res, rerr = self:read_response({ method = method, timeout = opts.timeout })
  if not res then
    if sent_all == nil then return nil, "send body: " .. tostring(serr) .. "; read: " .. rerr end
    return nil, rerr
  end
  if sent_all ~= true then
    -- the server did not take the whole body: this connection cannot carry another request
    res.body_incomplete = true
    self:close()
  end
  return res
end

-- Waits up to `wait` seconds (default 0.5) and reports whether the server closed the connection.
-- Bytes that arrive instead are kept for the next read_response.
function Client:is_closed(wait)
  if self.closed or self.eof then return true end
  local deadline = socket.gettime() + (wait or 0.5)
  local data, err = self:_recv_some(deadline)
  if data then
    self.buf = self.buf .. data
    return false
  end
  return err == "closed"
end

-- Convenience: one request on a fresh connection, closed afterwards.
function http.request(host, port, method, path, opts)
  local c, err = http.connect(host, port, opts)
  if not c then return nil, err end
  local res, rerr = c:request(method, path, opts)
  c:close()
  return res, rerr
end

http.Client = Client

return http
