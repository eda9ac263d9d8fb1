-- Hostile turns, on SQLite and PostgreSQL: empty and malformed bodies, oversized and binary
-- input, NUL bytes and invalid UTF-8, mistyped JSON, intents that are not JSON, not objects, too
-- deep or too big, hypothesis actions on hypotheses that are not the case's, illegal
-- transitions, and confirmations with nothing to confirm. Each gets a clear 4xx (or, where the
-- contract wants a conversation, a 200 that says what is wrong); the engine stays up and nothing
-- the case already stores is lost or changed.
local helpers = require "spec.helpers"
local json = require "fm.json"
local tc = require "fm_test.turns_client"

local null = json.null

for _, b in ipairs(helpers.db_backends()) do
  describe("hostile turns on " .. b.name, function()
    local engine, c, id, other_id, before

    local function alive()
      local r = assert(engine:request("GET", "/health"))
      assert.equal(200, r.status)
      assert.is_true(engine:alive())
    end

    -- A request that must be refused with `status` and leave the case as it was.
    local function refused(status, res, loc)
      assert.equal(status, res.status, res.body)
      local body = res.json()
      assert.is_not_nil(body.detail, res.body)
      if loc then assert.same(loc, body.detail[1].loc) end
      alive()
      assert.same(before, c:snapshot(id))
    end

    local function raw_turn(body, ctype)
      ctype = ctype or ("multipart/form-data; boundary=" .. tc.BOUNDARY)
      return c:req("POST", "/api/v1/cases/" .. id .. "/turns",
        { body = body, headers = { ["Content-Type"] = ctype } })
    end

    lazy_setup(function()
      engine, c = tc.start(b.url(), "mallory", { MAX_UPLOAD_SIZE_MB = "1" })
      -- a case in investigation with hypotheses, evidence and messages to protect
      id = c:new_case { title = null, description = "" }
      for _, f in ipairs {
        { query = "ingest writes fail", file = { "app.log", tc.fixture("app-enospc.log") } },
        { query = "yes" },
        { query = "df -h", file = { "df.txt", tc.fixture("df-h-full.txt") } },
      } do
        local t = c:turn(id, f)
        assert.equal(200, t.status, t.body)
      end
      other_id = c:new_case { title = null, description = "" }
      for _, f in ipairs { { query = "disk full on db-2",
                             file = { "app.log", tc.fixture("app-enospc.log") } },
                           { query = "yes" } } do
        local t = c:turn(other_id, f)
        assert.equal(200, t.status, t.body)
      end
    end)
    lazy_teardown(helpers.cleanup)

    before_each(function()
      before = c:snapshot(id)
      assert.equal("investigating", before.state)
      assert.is_true(before.hypotheses >= 1)
    end)

    it("refuses empty and malformed bodies", function()
      refused(422, raw_turn("", "application/json"), { "body" })
      refused(400, raw_turn("--" .. tc.BOUNDARY .. "--\r\n")) -- the parser: no parts
      refused(422, raw_turn(tc.form { query = "   \t\r\n  " }), { "body" })
      refused(422, raw_turn(tc.form { query = "" }), { "body" })
      local broken = raw_turn("--" .. tc.BOUNDARY .. "\r\nContent-Disposition: form-data; "
        .. "name=\"query\"\r\n\r\nno closing boundary")
      assert.is_true(broken.status == 400 or broken.status == 422, broken.body)
      alive()
      assert.same(before, c:snapshot(id))
      local nojson = raw_turn('{"query": ', "application/json")
      assert.equal(400, nojson.status, nojson.body)
      refused(422, raw_turn(tc.part("query", "two files") .. tc.part("files", "a", "a.log")
        .. tc.part("files", "b", "b.log") .. "--" .. tc.BOUNDARY .. "--\r\n"),
        { "body", "files" })
      refused(422, raw_turn(tc.part("query", "one") .. tc.part("query", "two") .. "--"
        .. tc.BOUNDARY .. "--\r\n"), { "body", "query" })
    end)

    it("refuses oversized, NUL-bearing and invalid UTF-8 text", function()
      refused(422, c:turn(id, { query = string.rep("x", 100001) }), { "body", "query" })
      refused(422, c:turn(id, { query = "disk\0full" }), { "body", "query" })
      refused(422, c:turn(id, { query = "disk \xff\xfe full" }), { "body", "query" })
      refused(422, c:turn(id, { query = "ok", intent_type = "conver\0sation" }),
        { "body", "intent_type" })
      refused(413, c:turn(id, { query = "big", file = { "big.log",
        string.rep("0123456789abcdef", 70000) } }))
      refused(415, c:turn(id, { query = "exe", file = { "tool.exe", "MZ\0\0" } }))
    end)

    it("refuses JSON bodies of the wrong shape or types", function()
      local function jturn(body)
        return c:req("POST", "/api/v1/cases/" .. id .. "/turns", { json = body })
      end
      refused(422, jturn({ query = 5 }), { "body", "query" })
      refused(422, jturn({ 1, 2, 3 }), { "body" })
      refused(422, jturn({ query = "x", intent_data = { type = "confirmation" } }),
        { "body", "intent_data" })
      refused(422, jturn({ query = "x", intent_type = "shout" }), { "body", "intent_type" })
      refused(422, jturn({ query = "x", input_type = "telepathy" }), { "body", "input_type" })
      refused(422, jturn({ query = "x", observed_at = "yesterday" }), { "body", "observed_at" })
      refused(422, jturn({ query = "x", source_url = "javascript:alert(1)" }),
        { "body", "source_url" })
      local deep = string.rep("[", 600) .. string.rep("]", 600)
      local r = raw_turn('{"query": ' .. deep .. '}', "application/json")
      assert.equal(400, r.status, r.body)
      alive()
      assert.same(before, c:snapshot(id))
    end)

    it("refuses intent_data that is not a JSON object, too deep, too big or mistyped", function()
      refused(422, c:turn(id, { query = "x", intent_data = "{not json" }),
        { "body", "intent_data" })
      refused(422, c:turn(id, { query = "x", intent_data = "[1, 2]" }), { "body", "intent_data" })
      refused(422, c:turn(id, { query = "x", intent_data = '"a string"' }),
        { "body", "intent_data" })
      refused(422, c:turn(id, { query = "x", intent_data = string.rep('{"a":', 600) .. "1"
        .. string.rep("}", 600) }), { "body", "intent_data" })
      refused(422, c:turn(id, { query = "x", intent_data = '{"type": "conversation", "pad": "'
        .. string.rep("p", 5000) .. '"}' }), { "body", "intent_data" })
      refused(422, c:turn(id, { intent_data = { type = 7 } }), { "body", "intent_data", "type" })
      refused(422, c:turn(id, { intent_data = { type = "status_transition",
        to_state = "resolved", user_confirmed = "yes" } }),
        { "body", "intent_data", "user_confirmed" })
      refused(422, c:turn(id, { intent_type = "confirmation",
        intent_data = { type = "status_transition", to_state = "closed" } }),
        { "body", "intent_data", "type" })
      refused(422, c:turn(id, { intent_type = "hypothesis_action" }), { "body", "intent_data" })
    end)

    it("refuses hypothesis actions on hypotheses that are not this case's", function()
      local function act(hid, action)
        return c:turn(id, { intent_type = "hypothesis_action", intent_data = {
          type = "hypothesis_action", hypothesis_id = hid, action = action or "refute" } })
      end
      refused(422, act("hyp_0123456789abcdef01234567"), { "body", "intent_data", "hypothesis_id" })
      refused(422, act("'; DROP TABLE hypotheses; --"), { "body", "intent_data", "hypothesis_id" })
      local theirs = c:ui(other_id).active_hypotheses
      assert.is_true(#theirs >= 1)
      refused(422, act(theirs[1].hypothesis_id), { "body", "intent_data", "hypothesis_id" })
      local mine = c:ui(id).active_hypotheses
      refused(422, act(mine[1].hypothesis_id, "obliterate"), { "body", "intent_data", "action" })
      -- the other case is untouched
      assert.same(theirs, c:ui(other_id).active_hypotheses)
      -- a real action on this case's own hypothesis works (the control)
      local target
      for _, h in ipairs(mine) do if h.state ~= "refuted" then target = h end end
      local r = act(target.hypothesis_id, "retire")
      assert.equal(200, r.status, r.body)
      local after = c:get("/api/v1/cases/" .. id .. "/ui")
      local state
      for _, h in ipairs(after.active_hypotheses) do
        if h.hypothesis_id == target.hypothesis_id then state = h.state end
      end
      assert.is_true(state == nil or state == "retired") -- retired ones leave the active list
    end)

    it("refuses illegal transitions before anything runs", function()
      local function to(state, extra)
        local d = { type = "status_transition", to_state = state, user_confirmed = true }
        for k, v in pairs(extra or {}) do d[k] = v end
        return c:turn(id, { intent_type = "status_transition", intent_data = d })
      end
      refused(422, to("bogus"), { "body", "intent_data", "to_state" })
      refused(422, to("inquiry"), { "body", "intent_data", "to_state" })
      refused(422, to("investigating"), { "body", "intent_data", "to_state" })
      refused(422, to(nil), { "body", "intent_data", "to_state" })
      refused(422, to("closed", { closure_reason = "bored" }),
        { "body", "intent_data", "closure_reason" })
      -- resolving without a verified fix is a conversation: the engine says why not
      local r = to("resolved")
      assert.equal(200, r.status, r.body)
      local t = r.json()
      tc.assert_turn_response(t)
      assert.equal("investigating", t.case_state)
      assert.is_truthy(t.agent_response:lower():find("resolv", 1, true), t.agent_response)
      local s = c:snapshot(id)
      assert.equal("investigating", s.state)
      assert.equal(before.current_turn + 1, s.current_turn)
      assert.equal(before.hypotheses, s.hypotheses)
    end)

    it("answers a confirmation with nothing pending without changing the case", function()
      local fresh = c:new_case { title = null, description = "" }
      local r = c:turn(fresh, { intent_type = "confirmation",
        intent_data = { type = "confirmation", confirmation_value = true } })
      assert.equal(200, r.status, r.body)
      local t = r.json()
      tc.assert_turn_response(t)
      assert.equal("inquiry", t.case_state)
      assert.is_false(t.progress_made)
      assert.matches("nothing to confirm", t.agent_response:lower(), 1, true)
      local ui = c:ui(fresh)
      assert.equal("inquiry", ui.state)
      assert.is_false(ui.inquiry.problem_confirmation.problem_statement_confirmed)
      assert.equal(null, ui.inquiry.problem_confirmation.proposed_problem_statement)
      -- intent_type alone (no intent_data, no query) is a turn too
      local r2 = c:turn(fresh, { intent_type = "confirmation" })
      assert.equal(200, r2.status, r2.body)
      assert.equal("inquiry", r2.json().case_state)
      assert.equal(2, r2.json().turn_number)
    end)

    it("stores binary uploads without harm", function()
      local bytes = {}
      for i = 0, 4095 do bytes[#bytes + 1] = string.char((i * 37 + 11) % 256) end
      local blob = table.concat(bytes) .. "\0\0\0No space left on device\0\xff\xfe"
      local r = c:turn(id, { query = "a core file", file = { "core.bin.log", blob } })
      assert.equal(200, r.status, r.body)
      local t = r.json()
      tc.assert_turn_response(t)
      assert.equal(1, #t.attachments_processed)
      local s = c:snapshot(id)
      assert.equal(before.files + 1, s.files)
      assert.equal(before.messages + 2, s.messages)
      local dl = c:req("GET", "/api/v1/cases/" .. id .. "/uploaded-files/"
        .. t.attachments_processed[1].file_id .. "/download")
      assert.equal(200, dl.status)
      assert.equal(blob, dl.body)
      -- pasted content with NUL bytes is evidence too (stored as a file, never as text)
      local p = c:turn(id, { query = "pasted", pasted_content = "line one\0line two\n" })
      assert.equal(200, p.status, p.body)
      alive()
    end)
  end)
end
