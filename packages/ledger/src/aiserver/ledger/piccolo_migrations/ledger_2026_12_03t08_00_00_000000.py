"""Projects (the ledger's tenants) and their API keys. Frozen SQL; later changes come as new
migrations.

Both tables are small and read by every request's authentication; where the big ledger tables are
distributed by `project_id` (Citus), these two are reference tables. Every key of `api_keys` holds
`project_id`; a key's public id is looked up across projects by an index, not a unique key, and
the secret's hash decides.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T08:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "projects and API keys"

STATEMENTS = (
    """
    CREATE TABLE projects (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        slug         TEXT NOT NULL UNIQUE
                     CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$'),
        name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        time_zone    TEXT NOT NULL DEFAULT 'UTC' CHECK (length(time_zone) BETWEEN 1 AND 64),
        rollup_tags  TEXT[] NOT NULL DEFAULT '{}'
                     CHECK (cardinality(rollup_tags) <= 4
                            AND array_position(rollup_tags, NULL) IS NULL),
        created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        archived_at  TIMESTAMPTZ
    )
    """,
    """
    CREATE TABLE api_keys (
        project_id    BIGINT NOT NULL REFERENCES projects (id),
        id            BIGINT GENERATED ALWAYS AS IDENTITY,
        public_id     TEXT NOT NULL CHECK (public_id ~ '^[0-9a-f]{16}$'),
        name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        scopes        TEXT[] NOT NULL
                      CHECK (cardinality(scopes) >= 1
                             AND scopes <@ ARRAY['ingest', 'read', 'admin']::text[]),
        secret_hash   BYTEA NOT NULL CHECK (length(secret_hash) = 32),
        created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at    TIMESTAMPTZ,
        revoked_at    TIMESTAMPTZ,
        last_used_at  TIMESTAMPTZ,
        PRIMARY KEY (project_id, id),
        UNIQUE (project_id, public_id)
    )
    """,
    "CREATE INDEX api_keys_by_public_id ON api_keys (public_id)",
    "CREATE INDEX api_keys_by_id ON api_keys (id)",
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
