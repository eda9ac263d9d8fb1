-- 0001: the first schema. Written once for SQLite and PostgreSQL (see docs/DATABASE.md):
-- ids are prefixed random text, times are ISO-8601 UTC text, flags are INTEGER 0/1, JSON is TEXT.
-- Each statement ends with a semicolon at the end of a line.

CREATE TABLE users (
  id TEXT PRIMARY KEY,
  username TEXT NOT NULL UNIQUE,
  email TEXT NOT NULL,
  display_name TEXT NOT NULL,
  password_hash TEXT,
  roles TEXT NOT NULL DEFAULT 'user',
  is_dev_user INTEGER NOT NULL DEFAULT 0,
  organization_id TEXT NOT NULL DEFAULT 'org_default',
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  last_login TEXT
);

CREATE TABLE refresh_tokens (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  family_id TEXT NOT NULL,
  token_hash TEXT NOT NULL UNIQUE,
  session_id TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  used_at TEXT,
  revoked_at TEXT,
  replaced_by TEXT
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE cases (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  organization_id TEXT NOT NULL,
  title TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'inquiry',
  stage TEXT,
  source TEXT NOT NULL DEFAULT 'api',
  closure_reason TEXT,
  current_turn INTEGER NOT NULL DEFAULT 0,
  turns_without_progress INTEGER NOT NULL DEFAULT 0,
  escalated INTEGER NOT NULL DEFAULT 0,
  archived INTEGER NOT NULL DEFAULT 0,
  milestones TEXT NOT NULL DEFAULT '[]',
  session_id TEXT,
  version INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  last_activity_at TEXT NOT NULL,
  resolved_at TEXT,
  closed_at TEXT
);
CREATE INDEX cases_user_created ON cases (user_id, archived, created_at);
CREATE INDEX cases_user_state ON cases (user_id, state);

CREATE TABLE case_messages (
  id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
  turn_number INTEGER NOT NULL DEFAULT 0,
  role TEXT NOT NULL,
  content TEXT NOT NULL,
  author_id TEXT,
  metadata TEXT,
  token_count INTEGER,
  created_at TEXT NOT NULL
);
CREATE INDEX case_messages_case ON case_messages (case_id, created_at);

CREATE TABLE uploaded_files (
  id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  filename TEXT NOT NULL,
  content_type TEXT,
  size_bytes BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  storage_key TEXT NOT NULL,
  turn_number INTEGER NOT NULL DEFAULT 0,
  duplicate_of TEXT,
  metadata TEXT,
  created_at TEXT NOT NULL
);
CREATE INDEX uploaded_files_case ON uploaded_files (case_id, created_at);
CREATE INDEX uploaded_files_case_sha ON uploaded_files (case_id, sha256);

CREATE TABLE evidence (
  id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
  file_id TEXT REFERENCES uploaded_files(id) ON DELETE SET NULL,
  category TEXT NOT NULL DEFAULT 'symptom_evidence',
  source_type TEXT NOT NULL DEFAULT 'text',
  summary TEXT NOT NULL DEFAULT '',
  content TEXT,
  data TEXT,
  turn_number INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL
);
CREATE INDEX evidence_case ON evidence (case_id, created_at);

CREATE TABLE hypotheses (
  id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
  statement TEXT NOT NULL,
  category TEXT NOT NULL DEFAULT 'other',
  status TEXT NOT NULL DEFAULT 'captured',
  confidence DOUBLE PRECISION,
  data TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX hypotheses_case ON hypotheses (case_id);

CREATE TABLE solutions (
  id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
  description TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'proposed',
  data TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX solutions_case ON solutions (case_id);

CREATE TABLE idempotency_keys (
  user_id TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  route TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'running',
  status_code INTEGER,
  response_body TEXT,
  response_headers TEXT,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  PRIMARY KEY (user_id, idem_key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE audit_log (
  id TEXT PRIMARY KEY,
  ts TEXT NOT NULL,
  user_id TEXT,
  action TEXT NOT NULL,
  target TEXT,
  detail TEXT
);
CREATE INDEX audit_log_ts ON audit_log (ts);

CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  payload TEXT NOT NULL DEFAULT '{}',
  state TEXT NOT NULL DEFAULT 'queued',
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 5,
  run_after TEXT NOT NULL,
  locked_by TEXT,
  locked_at TEXT,
  last_error TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, run_after);
