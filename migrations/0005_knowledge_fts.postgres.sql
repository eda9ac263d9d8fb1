-- 0005 on PostgreSQL: a generated tsvector of each knowledge chunk with a GIN index (the database
-- keeps it in step).
ALTER TABLE knowledge_chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS
  (to_tsvector('english', coalesce(heading, '') || ' ' || content)) STORED;
CREATE INDEX knowledge_chunks_tsv ON knowledge_chunks USING GIN (tsv);
