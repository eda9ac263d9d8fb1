-- 0003: uploads (issue 6). An uploaded file's row says where it came from, what the analysis
-- found (the JSON summary and the bounded text digest), and is found by its storage key (the
-- sweeper removes stored objects that no row names).
ALTER TABLE uploaded_files ADD COLUMN upload_source TEXT NOT NULL DEFAULT 'file';
ALTER TABLE uploaded_files ADD COLUMN source_url TEXT;
ALTER TABLE uploaded_files ADD COLUMN observed_at TEXT;
ALTER TABLE uploaded_files ADD COLUMN analysis_status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE uploaded_files ADD COLUMN source_type TEXT NOT NULL DEFAULT 'text';
ALTER TABLE uploaded_files ADD COLUMN detailed_type TEXT;
ALTER TABLE uploaded_files ADD COLUMN summary TEXT;
ALTER TABLE uploaded_files ADD COLUMN analysis TEXT;
ALTER TABLE uploaded_files ADD COLUMN digest TEXT;
CREATE INDEX uploaded_files_storage_key ON uploaded_files (storage_key);
CREATE INDEX evidence_file ON evidence (file_id);
