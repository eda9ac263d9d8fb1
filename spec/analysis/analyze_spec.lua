-- fm.analyze end to end: fixture files through the whole driver (classification, signatures,
-- secrets, the modules' summaries, the digest), user signatures matched with the built-ins,
-- and hostile input generated here (binary, a 1 GB single line, invalid UTF-8, CRLF, NUL bytes,
-- empty, gzip). Expected numbers are counted from the fixtures themselves.
local helpers = require "spec.helpers"
local analyze = require "fm.analyze"
local json = require "fm.json"

local FIX = helpers.root .. "/spec/fixtures/evidence/"
local DIGEST_MAX = 10000

local function fixture(name) return assert(helpers.read_file(FIX .. name), name) end

-- Lines of s (without the newline), for counting what a fixture holds.
local function lines_of(s)
  local t = {}
  for l in (s:sub(-1) == "\n" and s or s .. "\n"):gmatch("(.-)\r?\n") do t[#t + 1] = l end
  return t
end

-- Count, first and last line number of lines containing the plain string needle.
local function count_lines(s, needle)
  local n, first, last = 0, nil, nil
  for i, l in ipairs(lines_of(s)) do
    if l:find(needle, 1, true) then
      n = n + 1
      first = first or i
      last = i
    end
  end
  return n, first, last
end

local function sig(result, name)
  for _, g in ipairs(result.summary.signatures) do
    if g.name == name then return g end
  end
  return nil
end

-- What every result must satisfy whatever the input.
local function well_formed(r)
  assert.is_string(r.summary_json)
  assert.is_table(json.decode(r.summary_json)) -- fm.json.decode validates UTF-8
  assert.truthy(utf8.len(r.summary_json), "summary_json is not valid UTF-8")
  assert.truthy(utf8.len(r.digest), "digest is not valid UTF-8")
  assert.is_true(#r.digest <= DIGEST_MAX)
  assert.equal(r.source_type, r.summary.source_type)
  assert.equal(r.detailed_type, r.summary.detailed_type)
  assert.is_true(r.confidence > 0 and r.confidence <= 1)
  assert.equal(r.bytes, r.summary.bytes)
  assert.equal(r.lines, r.summary.lines)
end

describe("fm.analyze on fixtures", function()
  it("an nginx 502 storm: every 502 and 504 line, first and last", function()
    local text = fixture("an-nginx-502-storm.log")
    local r = assert(analyze.file(FIX .. "an-nginx-502-storm.log",
      { filename = "an-nginx-502-storm.log" }))
    well_formed(r)
    assert.equal("logs", r.source_type)
    assert.equal("log_file", r.detailed_type)
    assert.equal(#lines_of(text), r.lines)
    assert.equal(#text, r.bytes)
    local n502, f502, l502 = count_lines(text, '" 502 ')
    local n504 = count_lines(text, '" 504 ')
    assert.is_true(n502 > 0)
    local g = assert(sig(r, "http_502_bad_gateway"))
    assert.same({ n502, f502, l502, "error" }, { g.count, g.first_line, g.last_line, g.severity })
    assert.equal(n504, sig(r, "http_504_gateway_timeout").count)
    assert.equal(n502 + n504, sig(r, "http_5xx").count)
    assert.truthy(r.digest:find("http_502_bad_gateway [error] " .. n502, 1, true))
    assert.is_table(r.summary.logs)
  end)

  it("a Java OutOfMemoryError: the signature and the stack traces", function()
    local text = fixture("an-java-oom.log")
    local r = assert(analyze.text(text, { filename = "app.log" }))
    well_formed(r)
    assert.equal("logs", r.source_type)
    local n, first, last = count_lines(text, "java.lang.OutOfMemoryError")
    local g = assert(sig(r, "java_out_of_memory"))
    assert.same({ n, first, last, "critical" }, { g.count, g.first_line, g.last_line, g.severity })
    -- two traces with "at" frames follow an OutOfMemoryError header
    assert.equal(2, r.summary.stack.count)
    assert.equal("java.lang.OutOfMemoryError", r.summary.stack.traces[1].exception)
    assert.truthy(r.digest:find("java_out_of_memory", 1, true))
  end)

  it("PostgreSQL refusing clients", function()
    local text = fixture("an-postgres-too-many-clients.log")
    local r = assert(analyze.text(text))
    well_formed(r)
    local a = count_lines(text, "too many clients already")
    local b = count_lines(text, "remaining connection slots are reserved")
    local g = assert(sig(r, "postgres_too_many_clients"))
    assert.equal(a + b, g.count)
    assert.equal("critical", g.severity)
  end)

  it("kubectl describe of a CrashLoopBackOff pod", function()
    local text = fixture("cmd-kubectl-describe-crashloop.txt")
    local r = assert(analyze.file(FIX .. "cmd-kubectl-describe-crashloop.txt"))
    well_formed(r)
    assert.equal("kubectl_describe", r.detailed_type)
    assert.equal("kubectl_describe", r.summary.command.kind)
    local n, first = count_lines(text, "CrashLoopBackOff")
    local g = assert(sig(r, "k8s_crashloop"))
    assert.same({ n, first }, { g.count, g.first_line })
    local kinds = {}
    for _, f in ipairs(r.summary.command.findings) do kinds[f.kind] = true end
    assert.is_true(kinds.crash_loop)
  end)

  it("df of a full disk", function()
    local text = fixture("cmd-df-h-full.txt")
    local r = assert(analyze.text(text, { filename = "df.txt" }))
    well_formed(r)
    assert.equal("df", r.detailed_type)
    -- the fullest real file system in the fixture ("/" at 97%) is reported
    local _, line = count_lines(text, "97% /")
    local found
    for _, f in ipairs(r.summary.command.findings) do
      if f.kind == "disk_saturation" and f.line == line then found = f end
    end
    assert.is_table(found)
    assert.equal(97, found.value)
  end)

  it("a Prometheus dump with a latency spike", function()
    local text = fixture("metrics-prom-latency.prom")
    local r = assert(analyze.text(text, { filename = "dump.prom" }))
    well_formed(r)
    assert.equal("metrics", r.source_type)
    assert.equal("metrics_data", r.detailed_type)
    assert.equal("prometheus", r.summary.format)
    -- the spike: the largest sample of the p99 series, found as an anomaly on its line
    local spike_line, spike = nil, -1
    for i, l in ipairs(lines_of(text)) do
      local v = l:match("^http_request_duration_p99_seconds{[^}]*}%s+(%S+)")
      if v and tonumber(v) > spike then spike, spike_line = tonumber(v), i end
    end
    local hit
    for _, s in ipairs(r.summary.metrics.series) do
      for _, a in ipairs(s.anomalies or {}) do
        if a.line == spike_line then hit = a end
      end
    end
    assert.is_table(hit)
    assert.equal(spike, hit.value)
  end)

  it("a configuration file with secrets: found, counted, never shown", function()
    local text = fixture("an-config-secrets.yaml")
    local r = assert(analyze.text(text, { filename = "billing.yaml" }))
    well_formed(r)
    assert.equal("configuration", r.source_type)
    assert.equal("config_file", r.detailed_type)
    local sec = r.summary.secrets
    assert.equal(9, sec.count)
    assert.same({ password = 1, connection_string_password = 1, secret = 1, jwt = 1,
      aws_access_key = 1, key = 1, private_key = 1, token = 2 }, sec.kinds)
    local _, pw_line = count_lines(text, "  password: ")
    assert.same({ line = pw_line, kind = "password", field = "password" }, sec.findings[1])
    for _, v in ipairs { "Sup3r-S3cret", "Hunter2Pass", "9f8e7d6c5b4a392817",
      "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "MIIEowIBAAKCAQEA", "xoxb-123456789012",
      "ghp_abcdefghij", "eyJzdWIiOiJhZG1pbiJ9" } do
      assert.falsy(r.summary_json:find(v, 1, true), v)
      assert.falsy(r.digest:find(v, 1, true), v)
    end
  end)

  it("classifies every fixture as its name says (logs-, metrics-, stack-, cmd-<kind>)", function()
    local seen = 0
    for _, name in ipairs(helpers.listdir(FIX)) do
      local r = assert(analyze.file(FIX .. name, { filename = name }))
      well_formed(r)
      local prefix, rest = name:match("^(%a+)%-(.*)$")
      if prefix == "logs" then
        assert.equal("logs", r.source_type, name)
      elseif prefix == "metrics" then
        assert.equal("metrics_data", r.detailed_type, name)
      elseif prefix == "stack" then
        assert.equal("stack_trace", r.detailed_type, name)
      elseif prefix == "cmd" then
        -- cmd-kubectl-describe-crashloop.txt is kubectl_describe output
        local words = rest:gsub("%.%w+$", ""):gsub("-", "_")
        assert.equal(1, words:find(r.detailed_type, 1, true), name .. ": " .. r.detailed_type)
      end
      seen = seen + 1
    end
    assert.is_true(seen >= 20)
  end)

  it("secrets in log lines are redacted from every excerpt the modules produce", function()
    local t = {}
    for i = 1, 50 do
      t[#t + 1] = ("2026-03-12 10:00:%02d ERROR login failed user=u%d password=Pw%dsecret "
        .. "dsn=postgres://app:DbPw%d@db/app"):format(i % 60, i, i, i)
    end
    local r = assert(analyze.text(table.concat(t, "\n") .. "\n", { filename = "auth.log" }))
    well_formed(r)
    assert.equal(100, r.summary.secrets.count)
    assert.falsy(r.summary_json:find("secret dsn", 1, true))
    assert.falsy(r.summary_json:find("Pw%d+secret"))
    assert.falsy(r.summary_json:find("DbPw%d"))
    assert.falsy(r.digest:find("Pw%d+secret"))
    assert.falsy(r.digest:find("DbPw%d"))
    assert.truthy(r.summary_json:find("[REDACTED:password]", 1, true))
  end)
end)

describe("fm.analyze signatures", function()
  it("lists at least 25 built-ins", function()
    local b = analyze.builtin_signatures()
    assert.is_true(#b >= 25)
    for _, s in ipairs(b) do
      assert.is_string(s.name)
      assert.is_string(s.pattern)
    end
  end)

  it("matches a user set together with the built-ins in one pass", function()
    local set = assert(analyze.signatures {
      { name = "payment_declined", pattern = "payment [0-9]+ declined", severity = "warning" },
      { name = "checkout_slow", pattern = "checkout took [0-9]{4,} ?ms", flags = "i" },
    })
    assert.equal(#analyze.builtin_signatures() + 2, set:count())
    local text = "ok\npayment 17 declined: connection refused\nCHECKOUT TOOK 2300ms\n"
      .. "payment 18 declined\n"
    local r = assert(analyze.text(text, { signatures = set }))
    well_formed(r)
    assert.same({ 2, 2, 4 }, { sig(r, "payment_declined").count,
      sig(r, "payment_declined").first_line, sig(r, "payment_declined").last_line })
    assert.equal(3, sig(r, "checkout_slow").first_line)
    assert.equal(2, sig(r, "connection_refused").first_line)
    -- without the set only the built-ins run
    local r2 = assert(analyze.text(text))
    assert.is_nil(sig(r2, "payment_declined"))
  end)

  it("names the signature whose pattern does not compile", function()
    local set, msg, code = analyze.signatures {
      { name = "good", pattern = "fine" },
      { name = "bad_one", pattern = "(unclosed" },
    }
    assert.is_nil(set)
    assert.truthy(msg:find("bad_one", 1, true))
    assert.equal("INVALID", code)
    assert.has_error(function() analyze.signatures { { pattern = "x" } } end)
  end)

  it("redacts text on demand", function()
    local out, n = analyze.redact("password=hunter2 key AKIAIOSFODNN7EXAMPLE policy: strict")
    assert.equal(2, n)
    assert.falsy(out:find("hunter2", 1, true))
    assert.falsy(out:find("AKIAIOSFODNN7EXAMPLE", 1, true))
    assert.truthy(out:find("policy: strict", 1, true))
  end)

  it("finds no secrets where there are none; redacting twice changes nothing more", function()
    for _, name in ipairs { "an-nginx-502-storm.log", "an-java-oom.log", "an-code.py",
      "an-postgres-too-many-clients.log", "an-notes.txt" } do
      local _, n = analyze.redact(fixture(name))
      assert.equal(0, n, name)
    end
    for _, name in ipairs(helpers.listdir(FIX)) do
      local once = analyze.redact(fixture(name))
      local twice, n = analyze.redact(once)
      assert.equal(0, n, name)
      assert.equal(once, twice, name)
    end
  end)

  it("modules = false: the scan, the secrets and the encoding only", function()
    local text = fixture("an-java-oom.log") .. "db_password=Pw123\n"
    local r = assert(analyze.text(text, { modules = false }))
    well_formed(r)
    assert.is_nil(r.summary.logs)
    assert.is_nil(r.summary.stack)
    assert.equal((count_lines(text, "java.lang.OutOfMemoryError")),
      sig(r, "java_out_of_memory").count)
    assert.equal(1, r.summary.secrets.count)
  end)

  it("a one-line query_range document longer than a line's cut is parsed whole", function()
    local vals = {}
    for i = 1, 5000 do -- 5,000 points of 1.0 and one of 95.5 at the 4,000th: ~95 KB on one line
      vals[i] = string.format('[%d,"%s"]', 1700000000 + i * 15, i == 4000 and "95.5" or "1.0")
    end
    local doc = '{"status":"success","data":{"resultType":"matrix","result":[{"metric":'
      .. '{"__name__":"latency","job":"api"},"values":[' .. table.concat(vals, ",") .. ']}]}}'
    assert.is_true(#doc > 65536)
    local r = assert(analyze.text(doc, { filename = "q.json" }))
    assert.equal("metrics_data", r.detailed_type)
    local m = r.summary.metrics
    assert.equal(1, m.series_count)
    assert.is_nil(m.truncated)
    assert.equal(5000, m.series[1].count)
    assert.equal(95.5, m.series[1].max)
    assert.equal(1, m.anomalies_total)
  end)

  it("refuses a closed signature set", function()
    local set = assert(analyze.signatures { { name = "x1", pattern = "xyz" } })
    set:close()
    assert.has_error(function() analyze.text("xyz", { signatures = set }) end)
  end)

  it("fails with IO for a missing file", function()
    local r, msg, code = analyze.file("/nonexistent/evidence.log")
    assert.is_nil(r)
    assert.truthy(msg:find("evidence.log", 1, true))
    assert.equal("IO", code)
  end)
end)

describe("fm.analyze on hostile input", function()
  local dir
  lazy_setup(function() dir = helpers.tmpdir("fm-analyze-") end)
  lazy_teardown(helpers.cleanup)

  it("a binary file: classified binary, only the scan and the encoding", function()
    local b = {}
    for i = 0, 65535 do b[#b + 1] = string.char((i * 131 + (i >> 3)) % 256) end
    local data = table.concat(b) .. "Segmentation fault" .. table.concat(b)
    helpers.write_file(dir .. "/core.bin", data)
    local r = assert(analyze.file(dir .. "/core.bin"))
    well_formed(r)
    assert.is_true(r.binary)
    assert.equal("binary", r.source_type)
    assert.is_nil(r.summary.logs)
    assert.equal(#data, r.bytes)
    assert.is_table(sig(r, "segfault"))
  end)

  it("a 1 GB single line: streamed, cut, and a signature at its end still found", function()
    local path = dir .. "/oneline.log"
    local ok = helpers.shell(("head -c 1073741824 /dev/zero | tr '\\0' 'a' > %s && "
      .. "printf ' No space left on device' >> %s"):format(path, path))
    assert.is_true(ok)
    local r = assert(analyze.file(path))
    well_formed(r)
    assert.equal(1073741824 + 24, r.bytes)
    assert.equal(1, r.lines)
    assert.equal(1, r.summary.truncated_lines)
    assert.same({ 1, 1, 1 }, { sig(r, "disk_full").count, sig(r, "disk_full").first_line,
      sig(r, "disk_full").last_line })
    os.remove(path)
  end)

  it("invalid UTF-8, CRLF and NUL bytes: counted; the output stays valid UTF-8 JSON", function()
    local data = "2026-03-12 10:00:00 ERROR bad \255\254 bytes \195\40 connection refused\r\n"
      .. "2026-03-12 10:00:01 ERROR nul \0 inside \0 password=Pw\0rd\r\n"
      .. "2026-03-12 10:00:02 INFO done\r\n"
    helpers.write_file(dir .. "/hostile.log", data)
    local r = assert(analyze.file(dir .. "/hostile.log", { filename = "hostile.log" }))
    well_formed(r)
    local e = r.summary.encoding
    assert.same({ false, 3, true, 3, 3 },
      { e.valid_utf8, e.invalid_sequences, e.crlf, e.crlf_lines, e.nul_bytes })
    assert.equal(3, r.lines)
    assert.equal(1, sig(r, "connection_refused").first_line)
    assert.falsy(r.summary_json:find("\r", 1, true))
  end)

  it("an empty file", function()
    helpers.write_file(dir .. "/empty.log", "")
    local r = assert(analyze.file(dir .. "/empty.log"))
    well_formed(r)
    assert.same({ 0, 0, "empty", false }, { r.bytes, r.lines, r.detailed_type, r.binary })
    assert.same({}, r.summary.signatures)
  end)

  it("a gzip file: detected by magic, reported, not decompressed", function()
    local gz = dir .. "/storm.log.gz"
    assert.is_true((helpers.shell(("gzip -c %s > %s"):format(
      helpers.shell_quote(FIX .. "an-nginx-502-storm.log"), gz))))
    local r = assert(analyze.file(gz, { filename = "storm.log.gz" }))
    well_formed(r)
    assert.same({ true, "gzip", "compressed" }, { r.binary, r.compressed, r.detailed_type })
    assert.equal("gzip", r.summary.compressed)
    assert.is_nil(sig(r, "http_502_bad_gateway"))
    assert.truthy(r.digest:find("gzip", 1, true))
  end)

  it("other compressed formats by magic", function()
    local magics = { bzip2 = "BZh91AY&SY", xz = "\253" .. "7zXZ\0\0\4", zstd = "\40\181\47\253\0\0",
      zip = "PK\3\4\20\0\0\0" }
    for name, m in pairs(magics) do
      local r = assert(analyze.text(m .. string.rep("\0\1\2", 100)))
      assert.equal(name, r.compressed)
    end
  end)

  it("keeps the digest under 10,000 bytes for a large, varied log", function()
    local t = {}
    for i = 1, 30000 do
      t[#t + 1] = ("2026-03-12 10:%02d:%02d ERROR évènement %d failed on host-%d: code %d €")
        :format((i // 60) % 60, i % 60, i, i % 97, i % 13)
    end
    local r = assert(analyze.text(table.concat(t, "\n")))
    well_formed(r)
    assert.equal(30000, r.lines)
    assert.is_true(#r.digest > 500)
  end)
end)
