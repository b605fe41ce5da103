-- Bearer tokens (SPEC §8). Only the SHA-256 of a token is stored: the token itself is shown
-- once, when it is created. role: admin (topology, tenants, repair, hints, tokens, and every
-- tenant's data) or tenant (one tenant's keys, read or read-write). A revoked token keeps its
-- row (revoked_at) so `pairdbctl token list` shows what was revoked and when.
CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'tenant')),
    tenant_id   TEXT,
    access      TEXT NOT NULL CHECK (access IN ('read', 'read-write')),
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
    CHECK ((role = 'tenant') = (tenant_id IS NOT NULL))
);
