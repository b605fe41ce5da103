-- Bearer tokens (SPEC §8); see migrations/postgres/0005_tokens.sql. Times are Unix ms.
CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id   TEXT,
    access      TEXT NOT NULL CHECK (access IN ('read', 'read-write')),
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    CHECK ((role = 'tenant') = (tenant_id IS NOT NULL))
);
