-- Anti-entropy repair runs: parameters (scope), the plan with per-range progress, and a slot
-- that makes at most one run active (NULL once finished; NULLs never collide in a unique index).
ALTER TABLE repairs ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE repairs ADD COLUMN plan TEXT NOT NULL DEFAULT '[]';
ALTER TABLE repairs ADD COLUMN active_slot INTEGER;
ALTER TABLE repairs ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX repairs_one_active ON repairs (active_slot);
CREATE INDEX repairs_started_idx ON repairs (started_at);
