-- Topology changes: the frozen plan (per-range progress and resume points), parameters, the
-- earliest start time (cleanup grace) and an admission lock row that serializes admissions.
ALTER TABLE pending_changes ADD COLUMN params JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE pending_changes ADD COLUMN plan JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE pending_changes ADD COLUMN not_before TIMESTAMPTZ;
ALTER TABLE pending_changes ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX pending_changes_status_idx ON pending_changes (status);
INSERT INTO cluster_meta (key, value) VALUES ('admission_lock', 0);
