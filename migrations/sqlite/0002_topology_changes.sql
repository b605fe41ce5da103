-- Topology changes: the frozen plan (per-range progress and resume points), parameters, the
-- earliest start time (cleanup grace) and an admission lock row that serializes admissions.
ALTER TABLE pending_changes ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE pending_changes ADD COLUMN plan TEXT NOT NULL DEFAULT '[]';
ALTER TABLE pending_changes ADD COLUMN not_before INTEGER;
ALTER TABLE pending_changes ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX pending_changes_status_idx ON pending_changes (status);
INSERT INTO cluster_meta (key, value, updated_at) VALUES ('admission_lock', 0, 0);
