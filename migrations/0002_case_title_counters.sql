-- 0002: a counter per user and UTC day for default case titles (Case-YYMMDD-N), so N never
-- repeats, even when cases are deleted or created at the same moment.
CREATE TABLE case_title_counters (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  day TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (user_id, day)
);
