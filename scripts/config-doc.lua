-- Prints docs/CONFIG.md from config.lua's settings table, so the reference cannot drift:
--   build/faultmaven exec scripts/config-doc.lua > docs/CONFIG.md
-- spec/unit/config_spec.lua fails when docs/CONFIG.md differs from this output.
local config = require "config"

local out = {}
local function p(s) out[#out + 1] = (s or ""):gsub("\n$", "") end

p("# Configuration reference")
p()
p([[
Every setting is an environment variable; `faultmaven serve` flags (`--port`, `--workers`, ...)
override the variable of the same meaning. `faultmaven check-config` prints the values the
engine would use and exits 2, naming each bad value, when one is invalid. The engine refuses to
start on an invalid setting rather than guess.
]])
p()
p([[
This page is generated from `config.lua` (`build/faultmaven exec scripts/config-doc.lua`); a
test fails when the two differ.
]])
p()
p("| variable | default | meaning | applies |")
p("|---|---|---|---|")
for _, s in ipairs(config.specs) do
  local default = s.default_doc
  if not default then
    if type(s.default) == "table" then default = table.concat(s.default, ",")
    else default = tostring(s.default) end
    if default == "" then default = "(empty)" end
    default = "`" .. default .. "`"
  end
  local kind = s.kind
  if s.kind == "enum" then kind = table.concat(s.values, " \\| ") end
  if s.min and s.max then kind = string.format("%s, %s to %s", s.kind,
      math.tointeger(s.min) or s.min, math.tointeger(s.max) or s.max) end
  p(string.format("| `%s` | %s | %s (%s) | %s |", s.env, default, s.doc, kind,
    s.reload and "reload" or "restart"))
end
p()
p([[
## Notes
]])
p()
p([[
- "applies": `reload` settings take effect with the next Lua generation (a change to
  `config.lua` under FM_HOME, SIGHUP, `faultmaven reload`); `restart` settings are held by C from
  start (listen address, worker and thread counts, most limits). A reload that would change a
  `restart` setting keeps the running value, logs "restart required" and lists the setting under
  `restart_required` in `/health` (component `lua`). The environment itself is read at start:
  changing a variable always needs a restart.
- `FM_HOME` is resolved before `config.lua` is read: the variable, else the current directory
  when it holds `config.lua`, else the install prefix (`share/faultmaven`).
- Memory cap and instruction budget: a request whose Lua code allocates past `FM_LUA_MEMORY_MB`
  gets 503 `request exceeded the Lua memory limit`; one that runs more than
  `FM_REQUEST_INSTRUCTION_LIMIT` VM instructions gets 500 `request exceeded its instruction
  budget`. Neither can be caught by `pcall` in handler code. The worker then serves the next
  request (its VM is rebuilt if memory stays above half the cap after a full collection).
- Body limits: a route may declare its own (`r:post(path, handler, {max_body = bytes})`); other
  routes use `FM_MAX_BODY_BYTES`. The limit is checked against `Content-Length` before the body
  is read and again while a chunked body streams in.
]])
io.write(table.concat(out, "\n"), "\n")
