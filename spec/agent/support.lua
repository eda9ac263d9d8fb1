-- Helpers of the spec/agent specs: an in-memory playbook registry, evidence records analysed by
-- fm.analyze, and a case simulator that builds fm.agent.turn's state the way the turns service
-- does (contract section 7) and applies each TurnOutput the way it does (upserts by key).
local analyze = require "fm.analyze"
local context = require "fm.agent.context"
local json = require "fm.json"
local playbooks = require "fm.playbooks"
local time = require "fm.time"

local M = {}

--- A registry from in-memory sources: files = { ["playbooks/x.lua"] = "return {...}" }.
function M.registry(files)
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  local reg = playbooks.load_all {
    list = function(prefix)
      local out = {}
      for _, p in ipairs(paths) do if p:sub(1, #prefix) == prefix then out[#out + 1] = p end end
      return out
    end,
    read = function(p) return files[p] end,
    instructions = 5000000, memory = 8 << 20,
  }
  assert(#reg.errors == 0, "fake playbooks do not load: " .. tostring(reg.errors[1]
    and reg.errors[1].message))
  return reg
end

-- A disk-full playbook small enough to read in a spec: df findings and ENOSPC lines are the
-- symptom; the conclusion needs a df over 90 %; a mitigation and a lasting fix with verify.
M.DISK = [==[
local function full(ctx)
  local worst
  for _, ev in ipairs(ctx.command("df")) do
    for _, f in ipairs(ev.summary.command and ev.summary.command.findings or {}) do
      if f.kind == "disk_saturation" and (not worst or f.value > worst.value) then
        worst = { value = f.value, line = f.line, message = f.message, evidence_id = ev.id,
                  filename = ev.filename }
      end
    end
  end
  return worst
end
return {
  id = "disk-full", title = "Disk full", version = "1.0.0",
  description = "A filesystem ran out of space.", tags = { "disk" }, category = "environment",
  match = function(ctx)
    local score = 0
    if full(ctx) then score = score + 0.6 end
    if ctx.signal("disk_full") > 0 then score = score + 0.4 end
    if score == 0 and ctx.said("disk full", "no space left") then score = 0.35 end
    return math.min(score, 1), { "df and ENOSPC" }
  end,
  steps = {
    { name = "inspect", run = function(ctx, out)
      local w = full(ctx)
      out:hypothesis { key = "data_growth", statement = "A filesystem filled up with data",
                       likelihood = w and 0.8 or 0.4 }
      out:hypothesis { key = "deleted_open", statement = "Deleted files are still held open",
                       likelihood = 0.2 }
      if w then
        out:finding { text = w.message, evidence_id = w.evidence_id, filename = w.filename,
                      line = w.line, severity = "error" }
        out:evidence { hypothesis = "data_growth", stance = "for", summary = w.message,
                       evidence_id = w.evidence_id, line = w.line }
      else
        out:ask { label = "Show disk usage", command = "df -h", why = "to see which mount is full" }
      end
      local s = ctx.signals.disk_full
      if s and s.count > 0 then
        out:finding { text = "No space left on device, " .. s.count .. " lines",
                      evidence_id = s.evidence_id, filename = s.filename, line = s.first_line,
                      severity = "critical" }
      end
      out:ask { label = "Look for deleted files still open", command = "lsof +L1",
                why = "deleted files keep their space until closed" }
    end },
    { name = "conclude", run = function(ctx, out)
      local w = full(ctx)
      if w and w.value >= 90 then
        out:conclude { hypothesis = "data_growth", root_cause = "The filesystem is full: "
          .. w.message, confidence = 0.85, severity = "high" }
        out:mitigate { title = "Free space now", command = "journalctl --vacuum-size=200M",
                       risk = "low", undo = "nothing to undo: old journal files are gone",
                       verify = "df -h" }
        out:solve { title = "Add log rotation and a disk alert", risk = "low",
                    command = "logrotate -f /etc/logrotate.conf",
                    undo = "remove the logrotate rule", verify = "df -h" }
      end
    end },
  },
}
]==]

-- A second playbook that never matches the disk evidence (so rankings have a loser).
M.DNS = [==[
return {
  id = "dns-resolution-failures", title = "DNS resolution failures", version = "1.0.0",
  description = "Names do not resolve.", tags = { "dns" }, category = "network",
  match = function(ctx)
    if ctx.signal("dns_failure") > 0 then return 0.8, { "DNS errors" } end
    return 0
  end,
  steps = { { name = "x", run = function(_, out)
    out:hypothesis { key = "resolver_down", statement = "The resolver is down", likelihood = 0.6 }
  end } },
}
]==]

function M.default_registry()
  return M.registry { ["playbooks/disk-full.lua"] = M.DISK,
                      ["playbooks/dns-resolution-failures.lua"] = M.DNS }
end

M.DF_FULL = [[
Filesystem      Size  Used Avail Use% Mounted on
udev            7.8G     0  7.8G   0% /dev
tmpfs           1.6G  2.1M  1.6G   1% /run
/dev/nvme0n1p2  468G  454G   14G  97% /
tmpfs           7.8G     0  7.8G   0% /dev/shm
]]
M.DF_CLEAN = [[
Filesystem      Size  Used Avail Use% Mounted on
udev            7.8G     0  7.8G   0% /dev
tmpfs           1.6G  2.1M  1.6G   1% /run
/dev/nvme0n1p2  468G  201G  267G  43% /
tmpfs           7.8G     0  7.8G   0% /dev/shm
]]
M.APP_ENOSPC = [[
2024-03-05T14:22:01Z INFO request served
2024-03-05T14:22:02Z ERROR write /var/lib/app/data.db: No space left on device
2024-03-05T14:22:03Z ERROR write /var/lib/app/data.db: No space left on device
]]

--- An evidence record (context.build's shape) from text, analysed like an upload.
function M.record(id, filename, text, turn)
  local r = assert(analyze.text(text, { filename = filename }))
  return { id = id, filename = filename, source_type = r.source_type,
           detailed_type = r.detailed_type, turn = turn or 1, digest = r.digest,
           summary = r.summary }
end

local Sim = {}
Sim.__index = Sim

--- A case the way the turns service holds it. opts: registry, description, search_kb, agent.
function M.case(opts)
  opts = opts or {}
  return setmetatable({
    registry = opts.registry or M.default_registry(), agent = opts.agent or require "fm.agent",
    search_kb = opts.search_kb, records = {}, words = { opts.description },
    row = { id = "case_0001", state = "inquiry", stage = nil, title = "Case",
            description = opts.description or "", current_turn = 0, milestones = {},
            investigation = {}, closure_reason = nil },
    hypotheses = {}, solutions = {}, hyp_n = 0, outputs = {},
  }, Sim)
end

--- The state of the next turn: msg = {query?, intent?, intent_type?, files = {{name, text}}}.
function Sim:state(msg)
  local row = self.row
  local turn = row.current_turn + 1
  local new_ids, attachments = {}, {}
  for _, f in ipairs(msg.files or {}) do
    local id = "ev_" .. (#self.records + 1)
    self.records[#self.records + 1] = M.record(id, f[1], f[2], turn)
    new_ids[#new_ids + 1] = id
    attachments[#attachments + 1] = { evidence_id = id, file_id = "file_" .. id,
                                      filename = f[1], source_type = "logs", duplicate = false }
  end
  if msg.query then self.words[#self.words + 1] = msg.query end
  local ctx = context.build { symptom = table.concat(self.words, "\n"), evidence = self.records,
                              case = { id = row.id, state = row.state, stage = row.stage,
                                       turn = turn }, hypotheses = self.hypotheses,
                              search_kb = self.search_kb }
  return {
    case = { id = row.id, state = row.state, stage = row.stage, title = row.title,
             description = row.description, turn = turn, milestones = row.milestones,
             investigation = row.investigation },
    hypotheses = self.hypotheses, solutions = self.solutions,
    message = { query = msg.query, intent = msg.intent, intent_type = msg.intent_type
                  or (msg.intent and msg.intent.type), attachments = attachments },
    ctx = ctx, new_evidence_ids = new_ids,
    deadline = msg.deadline or (time.monotonic() + 60),
  }
end

--- Applies a TurnOutput as the turns service does (through JSON, as the database holds it).
function Sim:apply(out)
  out = json.decode(json.encode(out))
  local row = self.row
  row.current_turn = row.current_turn + 1
  local function nn(x) if x == json.null then return nil end return x end
  row.state, row.stage = out.case.state, nn(out.case.stage)
  row.closure_reason = nn(out.case.closure_reason)
  row.milestones = out.case.milestones
  row.investigation = out.case.investigation
  for _, h in ipairs(out.hypotheses) do
    local found
    for _, old in ipairs(self.hypotheses) do
      if old.key == h.key then found = old end
    end
    if not found then
      self.hyp_n = self.hyp_n + 1
      found = { id = "hyp_" .. self.hyp_n }
      self.hypotheses[#self.hypotheses + 1] = found
    end
    for k, v in pairs(h) do found[k] = v end
    for _, k in ipairs { "refutation_reason" } do if h[k] == nil then found[k] = nil end end
  end
  for _, s in ipairs(out.solutions) do
    local found
    for _, old in ipairs(self.solutions) do if old.key == s.key then found = old end end
    if not found then
      found = { id = "sol_" .. (#self.solutions + 1) }
      self.solutions[#self.solutions + 1] = found
    end
    for k, v in pairs(s) do found[k] = v end
  end
end

--- One turn: builds the state, calls the agent, applies and returns the output (or nil, err).
function Sim:turn(msg)
  local state = self:state(msg or {})
  local out, err = self.agent.turn(state, { registry = self.registry })
  if not out then
    -- the turns service would roll back: the turn's evidence goes too
    for _ = 1, #state.new_evidence_ids do table.remove(self.records) end
    return nil, err
  end
  self.outputs[#self.outputs + 1] = out
  self:apply(out)
  return out, state
end

function Sim:milestone(name)
  for _, m in ipairs(self.row.milestones) do if m == name then return true end end
  return false
end

function Sim:hypothesis(key)
  for _, h in ipairs(self.hypotheses) do if h.key == key then return h end end
end

function Sim:solution(kind)
  for _, s in ipairs(self.solutions) do if s.kind == kind then return s end end
end

return M
