-- Per-tenant cap on a key's encoded state (bytes), and the cluster keys client context tokens
-- are sealed with (HMAC-SHA256). The current key has no retires_at; a rotated-out key keeps
-- opening tokens until its retires_at (Unix ms), then it is deleted at the next rotation.
ALTER TABLE tenants ADD COLUMN max_state_bytes INTEGER NOT NULL DEFAULT 3145728;
-- A tenant whose values are larger than the default cap leaves room for one of them.
UPDATE tenants SET max_state_bytes = max_value_bytes + 65536
    WHERE max_value_bytes + 65536 > max_state_bytes;

CREATE TABLE context_keys (
    key_id      INTEGER PRIMARY KEY,
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retires_at  INTEGER
);
