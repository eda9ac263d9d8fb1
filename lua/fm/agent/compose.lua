-- fm.agent.compose: the answer of a turn in markdown and its 2 to 4 suggested actions, from the
-- runner's result (the matched playbooks, their findings, hypotheses, asks, remedies and
-- runbooks) and the lifecycle's decision (fm.agent.lifecycle.step). Pure and deterministic:
-- the same input gives the same text.
local json = require "fm.json"
local lifecycle = require "fm.agent.lifecycle"

local M = {}

M.MAX_FINDINGS = 8
M.MAX_HYPOTHESES = 5
M.MAX_ASKS = 4
M.MAX_REMEDIES = 3            -- of each kind
M.MAX_RUNBOOKS = 5
M.MAX_RESPONSE = 60000

local function str(v) return type(v) == "string" and v or nil end
local function tbl(v) return type(v) == "table" and v or {} end

local function pct(x)
  x = type(x) == "number" and x or 0
  return math.floor(math.max(0, math.min(1, x)) * 100 + 0.5)
end

--- How sure we are, in words, for a likelihood or confidence 0..1.
function M.sureness(x)
  x = type(x) == "number" and x or 0
  if x >= 0.85 then return "confident" end
  if x >= 0.7 then return "fairly sure" end
  if x >= 0.5 then return "plausible, not yet confirmed" end
  if x >= 0.3 then return "possible, weak support" end
  return "a long shot"
end

-- A fenced code block that survives backticks in the command.
local function code(cmd)
  local fence = cmd:find("```", 1, true) and "~~~~" or "```"
  return fence .. "\n" .. cmd .. "\n" .. fence
end

local function one_line(s, max)
  s = tostring(s or ""):gsub("%s+", " ")
  max = max or 300
  if #s > max then
    s = s:sub(1, max - 3):gsub("[\128-\191]*$", ""):gsub("[\192-\255]$", "") .. "..."
  end
  return s
end

-- JSON with a fixed key order (fm.json follows the table's hash order, which can vary).
local function ordered_json(pairs_list)
  local parts = {}
  for _, kv in ipairs(pairs_list) do
    if kv[2] ~= nil then parts[#parts + 1] = json.encode(kv[1]) .. ":" .. json.encode(kv[2]) end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.ordered_json = ordered_json

local CLOSURE_WORDS = {
  inquiry_only = "the question was answered",
  solution_deferred = "the lasting fix is deferred",
  closed_rca_infeasible = "the root cause could not be established",
  mitigation_sufficient = "the mitigation is enough",
  closed_insufficient_evidence = "there is not enough evidence to go on",
}
M.CLOSURE_WORDS = CLOSURE_WORDS

--- The suggested action that confirms a move to to_state (status_transition intent).
function M.transition_action(label, to_state, closure_reason)
  local payload = ordered_json { { "type", "status_transition" }, { "to_state", to_state },
    { "user_confirmed", true }, { "closure_reason", closure_reason } }
  return { label = label, type = "status_transition", payload = payload,
           intent = { label = label, type = "status_transition", payload = payload } }
end

local function confirm_action(label, value)
  return { label = label, type = "confirmation",
           intent = { label = label, type = "confirmation", payload = value } }
end

local function command_action(a)
  return { label = one_line(a.label or a.command, 120), type = "command", payload = a.command,
           body = str(a.why) }
end

local UPLOAD = { label = "Upload logs from the incident window", type = "upload",
                 body = "Logs, command output or metrics from around the time it started.",
                 hints = { ".log", ".txt", ".json", ".csv" } }

-- ---- sections --------------------------------------------------------------------------------

local function evidence_label(e)
  local name = str(e.filename) or tostring(e.id)
  return "`" .. name .. "` (" .. tostring(e.detailed_type or e.source_type or "text") .. ")"
end

local function what_we_see(run)
  local items = {}
  for _, m in ipairs(lifecycle.useful(run)) do
    for _, x in ipairs(lifecycle.strongest(m.findings)) do
      items[#items + 1] = "- " .. one_line(lifecycle.finding_text(x), 400)
      if #items >= M.MAX_FINDINGS then break end
    end
    if #items >= M.MAX_FINDINGS then break end
  end
  if #items == 0 then return nil end
  return "### What we see\n\n" .. table.concat(items, "\n")
end

local function what_it_means(d, run)
  local hyps = d.state == "investigating" and #d.all_hypotheses > 0 and d.all_hypotheses
    or tbl(run.hypotheses)
  local lines, ruled_out = {}, {}
  for _, h in ipairs(hyps) do
    if h.state == "refuted" or h.state == "retired" then
      ruled_out[#ruled_out + 1] = "~~" .. one_line(h.statement, 200) .. "~~ ("
        .. (h.state == "retired" and "retired" or one_line(h.refutation_reason or "refuted", 160))
        .. ")"
    elseif #lines < M.MAX_HYPOTHESES then
      local nf, na = #tbl(h.evidence_for), #tbl(h.evidence_against)
      local tag = h.state == "validated" and " **validated**" or ""
      lines[#lines + 1] = string.format("%d. **%s** (%d%% likely: %s; %d for, %d against)%s",
        #lines + 1, one_line(h.statement, 300), pct(h.likelihood), M.sureness(h.likelihood),
        nf, na, tag)
    end
  end
  local out = {}
  local rc = tbl(d.inv.root_cause)
  if d.state == "investigating" and str(rc.description) then
    out[#out + 1] = string.format("**Root cause:** %s (%d%%: %s; %s)", one_line(rc.description,
      600), pct(rc.confidence), M.sureness(rc.confidence), rc.assurance or "from the evidence")
  end
  if #lines > 0 then out[#out + 1] = table.concat(lines, "\n") end
  if #ruled_out > 0 then out[#out + 1] = "Ruled out: " .. table.concat(ruled_out, "; ") end
  if #out == 0 then return nil end
  return "### What it likely means\n\n" .. table.concat(out, "\n\n")
end

local function what_to_check(run)
  local items = {}
  for _, a in ipairs(tbl(run.asks)) do
    if #items >= M.MAX_ASKS then break end
    local s = "- " .. one_line(a.label, 200)
    if str(a.why) then s = s .. ": " .. one_line(a.why, 300) end
    if str(a.command) then s = s .. "\n\n" .. code(a.command) end
    items[#items + 1] = s
  end
  if #items == 0 then return nil end
  return "### What to check next\n\n" .. table.concat(items, "\n\n")
end

local STATUS_WORDS = { accepted = "accepted", applied = "applied, awaiting verification",
                       verified = "applied and verified" }

local function what_to_do(d)
  local items, n = {}, { mitigation = 0, solution = 0 }
  -- the lasting fix first once the bleeding has stopped
  local first = d.stage == "treatment" and "solution" or "mitigation"
  local ordered = {}
  for _, s in ipairs(d.solutions) do if s.kind == first then ordered[#ordered + 1] = s end end
  for _, s in ipairs(d.solutions) do if s.kind ~= first then ordered[#ordered + 1] = s end end
  for _, s in ipairs(ordered) do
    n[s.kind] = n[s.kind] + 1
    if n[s.kind] > M.MAX_REMEDIES then goto next end
    local head = s.kind == "mitigation" and "Stop the bleeding" or "Lasting fix"
    local t = string.format("- **%s: %s** (risk: %s%s)", head, one_line(s.title, 200),
      s.risk or "unknown", STATUS_WORDS[s.status] and ("; " .. STATUS_WORDS[s.status]) or "")
    if str(s.description) then t = t .. "\n  " .. one_line(s.description, 600) end
    if str(s.command) then t = t .. "\n\n" .. code(s.command) end
    if str(s.undo) then t = t .. "\n\n  Undo: " .. one_line(s.undo, 400) end
    if str(s.verify) then t = t .. "\n\n  Verify with:\n\n" .. code(s.verify) end
    items[#items + 1] = t
    ::next::
  end
  if #items == 0 then return nil end
  return "### What to do\n\n" .. table.concat(items, "\n\n")
end

local function runbooks_section(list)
  local items, seen = {}, {}
  for _, r in ipairs(tbl(list)) do
    if type(r) == "table" and str(r.title) and not seen[r.title] then
      seen[r.title] = true
      local s = "- " .. one_line(r.title, 200)
      if str(r.heading) and r.heading ~= r.title then
        s = s .. " (section \"" .. one_line(r.heading, 120) .. "\")"
      end
      if str(r.document_id) then s = s .. " `" .. one_line(r.document_id, 80) .. "`" end
      items[#items + 1] = s
      if #items >= M.MAX_RUNBOOKS then break end
    end
  end
  if #items == 0 then return nil end
  return "### Runbooks\n\n" .. table.concat(items, "\n")
end

local function looked_at(state)
  local ctx = tbl(state.ctx)
  local ev = tbl(ctx.evidence)
  if #ev == 0 then
    return "I looked at your description only: no logs or command output are on the case yet."
  end
  local lines = {}
  for i, e in ipairs(ev) do
    if i > 10 then
      lines[#lines + 1] = string.format("- and %d more", #ev - 10)
      break
    end
    local sigs = {}
    for _, s in ipairs(tbl(tbl(e.summary).signatures)) do
      if type(s) == "table" and str(s.name) and #sigs < 4 then
        sigs[#sigs + 1] = string.format("%s (%s lines)", s.name, tostring(s.count or "?"))
      end
    end
    lines[#lines + 1] = "- " .. evidence_label(e) .. (#sigs > 0 and (": " .. table.concat(sigs,
      ", ")) or ": no known error signature")
  end
  return "What I looked at:\n\n" .. table.concat(lines, "\n")
end

local function no_idea(state)
  return table.concat({
    "### I do not recognise this problem yet",
    "None of the playbooks matches what is on the case, so I will not guess a cause.",
    looked_at(state),
    "What would help:\n\n"
      .. "- the application or service logs from a few minutes before to after the incident\n"
      .. "- the state of the workload, for Kubernetes:\n\n"
      .. code("kubectl describe pod <pod>\nkubectl get events --sort-by=.lastTimestamp") .. "\n\n"
      .. "- the service's journal around the time it started:\n\n"
      .. code("journalctl -u <unit> --since \"1 hour ago\"") .. "\n\n"
      .. "- what changed recently (a deploy, a config change, traffic) and the exact error "
      .. "the users see",
  }, "\n\n")
end

local function steps_for_verify(d)
  local cmds = {}
  for _, s in ipairs(d.solutions) do
    if str(s.verify) and (s.status == "applied" or s.status == "accepted") then
      cmds[#cmds + 1] = s.verify
    end
  end
  if #cmds == 0 then
    for _, s in ipairs(d.solutions) do if str(s.verify) then cmds[#cmds + 1] = s.verify end end
  end
  return cmds
end

-- ---- the lifecycle's words -------------------------------------------------------------------

local function lifecycle_text(d)
  local ev, out = d.events, {}
  if ev.confirmed then
    out[#out + 1] = "**Investigation started.** Problem statement: " .. one_line(ev.confirmed,
      600)
  end
  if ev.rejected then
    out[#out + 1] = "Understood: that is not the problem. Please restate it in your own words: "
      .. "what is failing, since when, and what the users see."
  end
  if ev.transition_declined then
    out[#out + 1] = "Understood: the case stays open."
  end
  local ha = ev.hypothesis_action
  if ha then
    if ha.ok then
      out[#out + 1] = string.format("Hypothesis %s as you asked: %s.", ({ validate = "validated",
        refute = "refuted", retire = "retired" })[ha.action] or ha.action,
        one_line(ha.statement, 300))
    else
      out[#out + 1] = "I could not apply that hypothesis action: " .. ha.why .. "."
    end
  end
  if ev.root_cause then
    out[#out + 1] = "**Root cause identified:** " .. one_line(ev.root_cause.description, 600)
  end
  if ev.fix then
    out[#out + 1] = string.format("Noted: the %s \"%s\" is %s.", ev.fix.kind == "mitigation"
      and "mitigation" or "fix", one_line(ev.fix.title, 200), ev.fix.status)
  end
  if ev.lasting then out[#out + 1] = "Moving on to the lasting fix." end
  if ev.verified then
    out[#out + 1] = string.format("**Verified:** `%s` no longer shows the incident's signals, so "
      .. "the %s worked.", tostring(ev.verified.filename or ev.verified.evidence_id),
      ev.verified.kind == "mitigation" and "mitigation" or "fix")
  end
  if ev.still_seen then
    out[#out + 1] = string.format("**Not fixed yet:** `%s` still shows the incident's signals "
      .. "(%s). Check the change took effect, or try the next remedy.",
      tostring(ev.still_seen.filename or ev.still_seen.evidence_id),
      table.concat(ev.still_seen.signals, ", "))
  end
  if ev.transitioned then
    local t = ev.transitioned
    if t.to_state == "resolved" then
      out[#out + 1] = "**Case resolved.** The fix is applied and the evidence shows the cause "
        .. "is gone."
    else
      out[#out + 1] = "**Case closed** (" .. tostring(t.closure_reason) .. "): "
        .. (CLOSURE_WORDS[t.closure_reason] or "closed at your request") .. "."
    end
    local rc = tbl(d.inv.root_cause)
    if str(rc.description) then
      out[#out + 1] = "- Root cause: " .. one_line(rc.description, 600)
    end
    local done = {}
    for _, s in ipairs(d.solutions) do
      if s.status == "applied" or s.status == "verified" then
        done[#done + 1] = "- " .. (s.kind == "mitigation" and "Mitigation" or "Fix") .. ": "
          .. one_line(s.title, 200) .. " (" .. s.status .. ")"
      end
    end
    if #done > 0 then out[#out + 1] = table.concat(done, "\n") end
    return table.concat(out, "\n\n")
  end
  if ev.refused then
    local r = ev.refused
    if r.to_state == "resolved" then
      local verify = steps_for_verify(d)
      local t = "I cannot mark the case resolved yet: " .. r.why .. ". A case is resolved only "
        .. "when evidence shows the cause is gone."
      if #verify > 0 then
        t = t .. " Run this after the fix and upload its output:\n\n" .. code(verify[1])
      else
        t = t .. " Apply the fix, then upload the same kind of evidence that showed the problem "
          .. "(the same log or command output) taken after the fix."
      end
      out[#out + 1] = t
    else
      out[#out + 1] = "I cannot do that: " .. r.why .. "."
    end
  end
  return #out > 0 and table.concat(out, "\n\n") or nil
end

local function closing_question(d)
  local ev = d.events
  local pend = tbl(d.inv.pending_transition)
  if d.state ~= "inquiry" and d.state ~= "investigating" then return nil end
  if pend.to_state then
    if pend.to_state == "resolved" then
      return "**Shall I mark the case resolved?** " .. one_line(pend.reason, 300)
        .. ". Confirm and I will resolve it."
    end
    return string.format("**Shall I close the case** (%s: %s)? Confirm and I will close it.",
      tostring(pend.closure_reason), CLOSURE_WORDS[pend.closure_reason] or one_line(pend.reason))
  end
  if d.state == "inquiry" and ev.proposal then
    return "**Proposed problem statement:**\n\n> " .. one_line(ev.proposal.statement, 700)
      .. "\n\nIs this the problem? Reply **yes** to start the investigation, or tell me what "
      .. "is different."
  end
  if d.state == "inquiry" and ev.need_description then
    local t = ev.nothing_pending and "There is nothing to confirm yet. " or ""
    return t .. "Tell me what is failing, since when and what the users see, or upload logs or "
      .. "command output from the incident."
  end
  if d.inv.awaiting == "mitigation" then
    if d.stage == "diagnosis" then
      return "If the impact is ongoing, apply a mitigation above to stop the bleeding and tell "
        .. "me; meanwhile the checks above narrow down the cause."
    end
    return "Apply the mitigation above and tell me when it is done (or upload fresh evidence)."
  end
  if d.inv.awaiting == "solution" then
    return "When you have applied the lasting fix, tell me, and upload fresh evidence (the same "
      .. "log or command output as before) so I can verify it."
  end
  if d.milestones.mitigation_verified and not d.milestones.solution_accepted then
    return "The bleeding has stopped. Next is the lasting fix, so that it does not come back; "
      .. "or close the case if the mitigation is enough."
  end
  if d.milestones.solution_accepted and not d.milestones.solution_verified
      or d.milestones.mitigation_accepted and not d.milestones.mitigation_verified then
    local verify = steps_for_verify(d)
    return "To verify it, upload fresh evidence taken after the change"
      .. (#verify > 0 and (":\n\n" .. code(verify[1])) or " (the same log or command output).")
  end
  return nil
end

-- ---- suggested actions -----------------------------------------------------------------------

local function actions(run, d)
  local list, seen = {}, {}
  local function add(a)
    if #list >= 4 or not a or not str(a.label) then return end
    local k = a.type .. "\0" .. (a.payload or a.label)
    if seen[k] then return end
    seen[k] = true
    list[#list + 1] = a
  end
  local ev = d.events
  local pend = tbl(d.inv.pending_transition)
  local terminal = d.state == "resolved" or d.state == "closed"
  if terminal then
    add({ label = "Write the " .. (d.state == "resolved" and "resolution" or "closure")
      .. " summary", type = "report", payload = d.state == "resolved" and "resolution_summary"
      or "closure_summary" })
    add({ label = "Turn this case into a runbook", type = "report", payload = "runbook" })
    return list
  end
  if pend.to_state then
    local label = pend.to_state == "resolved" and "Yes, mark it resolved"
      or "Yes, close the case"
    add(M.transition_action(label, pend.to_state, pend.closure_reason))
    add(confirm_action("No, keep it open", "no"))
  end
  if d.state == "inquiry" and ev.proposal then
    add(confirm_action("Yes, that is the problem", "yes"))
    add(confirm_action("No, let me restate it", "no"))
  end
  if d.inv.awaiting == "mitigation" or d.inv.awaiting == "solution" then
    for _, s in ipairs(d.solutions) do
      if s.kind == d.inv.awaiting and (s.status == "proposed" or s.status == "accepted") then
        add(confirm_action("I applied: " .. one_line(s.title, 80), "applied"))
        break
      end
    end
  end
  local ms = d.milestones
  if ms.solution_accepted and not ms.solution_verified
      or ms.mitigation_accepted and not ms.mitigation_verified then
    local cmd = steps_for_verify(d)[1]
    if cmd then
      add({ label = "Verify the fix", type = "command", payload = cmd,
            body = "Run it after the change and upload the output." })
    end
  end
  if d.state == "investigating" and d.milestones.mitigation_verified
      and not d.milestones.solution_accepted and not pend.to_state then
    add(M.transition_action("Close: the mitigation is enough", "closed", "mitigation_sufficient"))
  end
  for _, a in ipairs(tbl(run.asks)) do
    if #list >= 3 then break end
    if str(a.command) then add(command_action(a)) end
  end
  add(UPLOAD)
  if d.state == "inquiry" and ev.question and #tbl(ev.question.runbooks) > 0 and not pend.to_state
      and not ev.proposal then
    add(M.transition_action("That answers it: close the case", "closed", "inquiry_only"))
  end
  add({ label = "Describe what changed recently", type = "question",
        payload = "What changed recently (deploys, config, traffic)?" })
  add({ label = "Describe the error the users see", type = "question",
        payload = "What exact error do the users see, and since when?" })
  return list
end

-- ---- the answer ------------------------------------------------------------------------------

--- The answer: response (markdown), suggested_actions (2..4).
function M.answer(state, run, d)
  state, run = tbl(state), tbl(run)
  local parts = {}
  local function add(s) if s then parts[#parts + 1] = s end end
  add(lifecycle_text(d))
  local terminal = d.state == "resolved" or d.state == "closed"
  if not terminal then
    local matched = #lifecycle.useful(run) > 0
    if d.events.question then
      local rb = d.events.question.runbooks
      if #rb > 0 then
        local lines = {}
        for i, r in ipairs(rb) do
          if i > 3 then break end
          local t = "**" .. one_line(r.title or r.document_id, 200) .. "**"
          if str(r.snippet) then t = t .. "\n\n> " .. one_line(r.snippet, 800) end
          lines[#lines + 1] = t
        end
        add("### From the runbooks\n\n" .. table.concat(lines, "\n\n"))
      elseif not matched then
        add("I have no runbook that answers this.")
      end
    end
    -- the whole analysis when there is something new to read; a short answer on turns that
    -- only confirm, report a fix applied or act on a hypothesis
    local q = d.query
    local full = #tbl(state.new_evidence_ids) > 0 or d.events.confirmed
      or d.events.hypothesis_action
      or (d.state == "inquiry" and not q.reply and not d.events.rejected)
      or (str(tbl(state.message).query) and not (q.reply or q.applied or q.accepted))
    if full then
      add(what_we_see(run))
      add(what_it_means(d, run))
      add(what_to_check(run))
    else
      local rc = tbl(d.inv.root_cause)
      local wc = tbl(d.inv.working_conclusion)
      if str(rc.description) then
        add(string.format("**Root cause:** %s (%d%%: %s)", one_line(rc.description, 600),
          pct(rc.confidence), M.sureness(rc.confidence)))
      elseif str(wc.summary) then
        add(string.format("**Working conclusion:** %s (%d%%: %s)", one_line(wc.summary, 600),
          pct(wc.confidence), M.sureness(wc.confidence)))
      end
    end
    if d.state == "investigating" then add(what_to_do(d)) end
    if full then add(runbooks_section(run.runbooks)) end
    if full and not matched and not (d.events.question and #d.events.question.runbooks > 0)
        and not str(tbl(d.inv.root_cause).description) and not d.events.rejected then
      if d.state == "investigating" or #tbl(tbl(state.ctx).evidence) > 0
          or d.events.proposal then
        add(no_idea(state))
      end
    end
    add(closing_question(d))
  end
  if #parts == 0 then
    add("Noted. " .. (closing_question(d) or "Upload evidence or tell me more."))
  end
  local response = table.concat(parts, "\n\n")
  if #response > M.MAX_RESPONSE then
    response = response:sub(1, M.MAX_RESPONSE):gsub("[\128-\191]*$", ""):gsub("[\192-\255]$", "")
      .. "\n\n_(cut)_"
  end
  local acts = actions(run, d)
  return response, acts
end

M.actions = actions

return M
