-- 0006: the investigation (issue 8). A case keeps the engine's investigation state as JSON (the
-- problem statement, the working conclusion, the root cause, a pending proposal: what
-- fm.agent.turn returns as case.investigation) and a per-case turn lock: one turn of a case runs
-- at a time (turn_lock names it, turn_started_at lets a lock left by a dead worker go stale).
-- Hypotheses and solutions get the key the agent gives them (unique per case: its upserts).
ALTER TABLE cases ADD COLUMN investigation TEXT NOT NULL DEFAULT '{}';
ALTER TABLE cases ADD COLUMN turn_lock TEXT;
ALTER TABLE cases ADD COLUMN turn_started_at TEXT;
ALTER TABLE hypotheses ADD COLUMN item_key TEXT;
ALTER TABLE solutions ADD COLUMN item_key TEXT;
CREATE UNIQUE INDEX hypotheses_case_key ON hypotheses (case_id, item_key);
CREATE UNIQUE INDEX solutions_case_key ON solutions (case_id, item_key);
