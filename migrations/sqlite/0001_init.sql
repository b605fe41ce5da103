-- pairdb metadata store, SQLite (embedded mode). Same tables and columns as PostgreSQL;
-- timestamps are integer milliseconds since the Unix epoch, JSON is TEXT.

CREATE TABLE cluster_meta (
    key         TEXT PRIMARY KEY,
    value       INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO cluster_meta (key, value) VALUES ('ring_version', 1);

CREATE TABLE tenants (
    tenant_id           TEXT PRIMARY KEY,
    replication_factor  INTEGER NOT NULL CHECK (replication_factor BETWEEN 1 AND 7),
    read_consistency    TEXT NOT NULL,
    write_consistency   TEXT NOT NULL,
    conflict_policy     TEXT NOT NULL,
    max_value_bytes     INTEGER NOT NULL,
    sibling_warn        INTEGER NOT NULL,
    sibling_max         INTEGER NOT NULL,
    rate_limit_rps      INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

CREATE TABLE storage_nodes (
    node_id        TEXT PRIMARY KEY,
    host           TEXT NOT NULL,
    port           INTEGER NOT NULL,
    admin_port     INTEGER NOT NULL DEFAULT 0,
    zone           TEXT NOT NULL DEFAULT '',
    virtual_nodes  INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('BOOTSTRAPPING', 'NORMAL', 'LEAVING', 'REMOVED')),
    status         TEXT NOT NULL DEFAULT 'UNKNOWN' CHECK (status IN ('UP', 'DOWN', 'UNKNOWN')),
    last_seen      INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE pending_changes (
    change_id         TEXT PRIMARY KEY,
    type              TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    progress          TEXT NOT NULL DEFAULT '{}',
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    start_time        INTEGER NOT NULL,
    completed_at      INTEGER,
    error             TEXT
);

CREATE TABLE hints (
    hint_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target_node_id    TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    key               BLOB NOT NULL,
    payload           BLOB NOT NULL,
    created_at        INTEGER NOT NULL,
    replay_count      INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    claimed_by        TEXT,
    claim_expires_at  INTEGER
);
CREATE INDEX hints_target_idx ON hints (target_node_id, hint_id);

CREATE TABLE repairs (
    repair_id     TEXT PRIMARY KEY,
    tenant_id     TEXT,
    status        TEXT NOT NULL,
    progress      TEXT NOT NULL DEFAULT '{}',
    lease_owner   TEXT,
    lease_expires_at INTEGER,
    started_at    INTEGER NOT NULL,
    completed_at  INTEGER,
    error         TEXT
);
