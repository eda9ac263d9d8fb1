-- 0005 on SQLite: an FTS5 table of the knowledge chunks, kept in step by fm.services.knowledge in
-- the transaction that writes the chunks (FTS5 rows do not follow ON DELETE CASCADE: deleting a
-- document deletes its FTS rows first).
CREATE VIRTUAL TABLE knowledge_chunks_fts USING fts5(heading, content, chunk_id UNINDEXED,
  tokenize='unicode61 remove_diacritics 2');
