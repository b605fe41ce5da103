-- Operator drain; see migrations/postgres/0006_drain.sql. Unix ms, NULL = serving.
ALTER TABLE storage_nodes ADD COLUMN drained_at INTEGER;
