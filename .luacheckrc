-- luacheck configuration (luacheck 1.1): `luacheck .` from the repository root.
std = "lua54"
max_line_length = 100
codes = true

exclude_files = { "build/", ".git/" }

-- busted globals (describe, it, lazy_setup, assert extensions, ...) in specs
files["spec/"] = { std = "+busted" }

-- wrk scripts: wrk calls these globals
files["bench/"] = {
  globals = { "wrk", "setup", "init", "delay", "request", "response", "done" },
  unused_args = false,
}
