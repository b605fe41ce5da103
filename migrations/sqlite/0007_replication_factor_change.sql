-- See migrations/postgres/0007_replication_factor_change.sql. NULL = no change in progress.
ALTER TABLE tenants ADD COLUMN target_replication_factor INTEGER;
