-- Operator drain (`pairdbctl node drain`): while drained_at is set, every coordinator routes
-- client reads and writes around the node (its writes become hints, replayed on undrain) and
-- the node itself is held in maintenance mode. NULL = serving. Setting or clearing it bumps
-- ring_version in the same transaction, so coordinators see it within one ring poll.
ALTER TABLE storage_nodes ADD COLUMN drained_at TIMESTAMPTZ;
