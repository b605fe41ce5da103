-- pairdb metadata store, PostgreSQL. Names and types chosen for operators reading with psql.

CREATE TABLE cluster_meta (
    key         TEXT PRIMARY KEY,
    value       BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
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
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
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
    last_seen      TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE pending_changes (
    change_id         TEXT PRIMARY KEY,
    type              TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    progress          JSONB NOT NULL DEFAULT '{}'::jsonb,
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    start_time        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ,
    error             TEXT
);

CREATE TABLE hints (
    hint_id           BIGSERIAL PRIMARY KEY,
    target_node_id    TEXT NOT NULL,
    tenant_id         TEXT NOT NULL,
    key               BYTEA NOT NULL,
    payload           BYTEA NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    replay_count      INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    claimed_by        TEXT,
    claim_expires_at  TIMESTAMPTZ
);
CREATE INDEX hints_target_idx ON hints (target_node_id, hint_id);

CREATE TABLE repairs (
    repair_id     TEXT PRIMARY KEY,
    tenant_id     TEXT,
    status        TEXT NOT NULL,
    progress      JSONB NOT NULL DEFAULT '{}'::jsonb,
    lease_owner   TEXT,
    lease_expires_at TIMESTAMPTZ,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ,
    error         TEXT
);
