-- 0004: knowledge documents and their chunks (the knowledge base). The full-text index differs
-- per database: it is 0005 (0005_knowledge_fts.sqlite.sql, 0005_knowledge_fts.postgres.sql).
CREATE TABLE knowledge_documents (
  id TEXT PRIMARY KEY,
  owner_id TEXT REFERENCES users(id) ON DELETE CASCADE,
  organization_id TEXT NOT NULL DEFAULT 'org_default',
  scope TEXT NOT NULL,
  title TEXT NOT NULL,
  document_type TEXT NOT NULL,
  category TEXT,
  tags TEXT NOT NULL DEFAULT '[]',
  source_url TEXT,
  description TEXT,
  filename TEXT,
  content_type TEXT,
  storage_key TEXT,
  content TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending',
  error TEXT,
  chunk_count INTEGER NOT NULL DEFAULT 0,
  origin TEXT NOT NULL DEFAULT 'user',
  version INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  indexed_at TEXT
);
CREATE INDEX knowledge_documents_scope_owner ON knowledge_documents (scope, owner_id);
CREATE INDEX knowledge_documents_org ON knowledge_documents (organization_id);
CREATE INDEX knowledge_documents_hash ON knowledge_documents (content_hash);

CREATE TABLE knowledge_chunks (
  id TEXT PRIMARY KEY,
  document_id TEXT NOT NULL REFERENCES knowledge_documents(id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  heading TEXT,
  content TEXT NOT NULL,
  line_start INTEGER,
  line_end INTEGER,
  created_at TEXT NOT NULL
);
CREATE INDEX knowledge_chunks_document ON knowledge_chunks (document_id, ordinal);
-- the jobs runner (fm.jobs): one queued job per dedup_key (a document's ingestion), and no two
-- jobs of one key running at once
ALTER TABLE jobs ADD COLUMN dedup_key TEXT;
CREATE INDEX jobs_dedup ON jobs (dedup_key, state);
