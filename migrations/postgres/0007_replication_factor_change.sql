-- A replication-factor change in progress (UpdateTenant): while target_replication_factor is
-- set, writes also go to the replicas the target adds (not counted toward W), reads and
-- quorums keep replication_factor, and a repair over the larger of the two brings every
-- replica up to date; when it completes, replication_factor becomes the target and this
-- column is cleared. NULL = no change in progress.
ALTER TABLE tenants ADD COLUMN target_replication_factor INTEGER;
