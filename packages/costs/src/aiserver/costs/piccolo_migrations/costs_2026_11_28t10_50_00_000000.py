"""The price catalog: versioned model prices, source metadata, aliases, overrides, refresh runs.

Written as SQL rather than Piccolo column operations: the constraints that keep money safe (one
current version per model, no negative price anywhere in an entry) are partial unique indexes and
CHECK constraints that Piccolo's auto-migrations cannot express. The SQL is frozen here; later
changes come as new migrations.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-11-28T10:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "price catalog tables"

_PRICE = "NUMERIC CHECK ({0} >= 0)"
_TYPED_PRICES = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    "input_cost_per_audio_token",
    "output_cost_per_audio_token",
    "input_cost_per_image",
    "output_cost_per_image",
    "input_cost_per_request",
)
# True when some number anywhere in the JSON document is negative.
_HAS_NEGATIVE = "jsonb_path_exists({0}, 'strict $.** ? (@.type() == \"number\" && @ < 0)')"

STATEMENTS = (
    """
    CREATE TABLE ai_cost_metadata (
        source           TEXT PRIMARY KEY,
        url              TEXT NOT NULL,
        last_checked_at  TIMESTAMPTZ,
        last_success_at  TIMESTAMPTZ,
        last_changed_at  TIMESTAMPTZ,
        etag             TEXT,
        last_modified    TEXT,
        content_hash     TEXT,
        body_hash        TEXT,
        model_count      INTEGER NOT NULL DEFAULT 0 CHECK (model_count >= 0),
        alias_count      INTEGER NOT NULL DEFAULT 0 CHECK (alias_count >= 0),
        last_error       TEXT,
        last_error_at    TIMESTAMPTZ,
        catalog_version  BIGINT NOT NULL DEFAULT 0 CHECK (catalog_version >= 0),
        documents        JSONB NOT NULL DEFAULT '{}'::jsonb,
        updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    f"""
    CREATE TABLE ai_model_costs (
        id                 BIGSERIAL PRIMARY KEY,
        source             TEXT NOT NULL REFERENCES ai_cost_metadata (source),
        provider           TEXT NOT NULL,
        model              TEXT NOT NULL,
        mode               TEXT,
        max_input_tokens   BIGINT,
        max_output_tokens  BIGINT,
        {", ".join(f"{name} {_PRICE.format(name)}" for name in _TYPED_PRICES)},
        entry              JSONB NOT NULL CHECK (jsonb_typeof(entry) = 'object'
                                                 AND NOT {_HAS_NEGATIVE.format("entry")}),
        entry_hash         TEXT NOT NULL,
        valid_from         TIMESTAMPTZ NOT NULL,
        valid_to           TIMESTAMPTZ,
        opened_in_version  BIGINT NOT NULL,
        closed_in_version  BIGINT,
        CHECK (valid_to IS NULL OR valid_to >= valid_from),
        CHECK ((valid_to IS NULL) = (closed_in_version IS NULL))
    )
    """,
    # One current version per (provider, model) of a source: the database refuses a second.
    """
    CREATE UNIQUE INDEX ai_model_costs_one_current
        ON ai_model_costs (source, provider, model) WHERE valid_to IS NULL
    """,
    "CREATE UNIQUE INDEX ai_model_costs_current_model ON ai_model_costs (source, model) "
    "WHERE valid_to IS NULL",
    "CREATE INDEX ai_model_costs_history ON ai_model_costs (source, model, valid_from)",
    """
    CREATE TABLE ai_model_aliases (
        source  TEXT NOT NULL REFERENCES ai_cost_metadata (source),
        alias   TEXT NOT NULL,
        target  TEXT NOT NULL,
        PRIMARY KEY (source, alias),
        CHECK (alias <> target)
    )
    """,
    f"""
    CREATE TABLE ai_cost_overrides (
        id          BIGSERIAL PRIMARY KEY,
        provider    TEXT NOT NULL,
        model       TEXT NOT NULL,
        prices      JSONB NOT NULL CHECK (jsonb_typeof(prices) = 'object'
                                          AND NOT {_HAS_NEGATIVE.format("prices")}),
        reason      TEXT NOT NULL DEFAULT '',
        created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
        UNIQUE (provider, model)
    )
    """,
    """
    CREATE TABLE ai_cost_refresh_runs (
        id               BIGSERIAL PRIMARY KEY,
        source           TEXT NOT NULL,
        trigger          TEXT NOT NULL,
        started_at       TIMESTAMPTZ NOT NULL,
        finished_at      TIMESTAMPTZ,
        outcome          TEXT NOT NULL,
        http_status      INTEGER,
        fetched_bytes    BIGINT NOT NULL DEFAULT 0 CHECK (fetched_bytes >= 0),
        added            INTEGER NOT NULL DEFAULT 0 CHECK (added >= 0),
        changed          INTEGER NOT NULL DEFAULT 0 CHECK (changed >= 0),
        removed          INTEGER NOT NULL DEFAULT 0 CHECK (removed >= 0),
        skipped          INTEGER NOT NULL DEFAULT 0 CHECK (skipped >= 0),
        skipped_entries  JSONB NOT NULL DEFAULT '{}'::jsonb,
        catalog_version  BIGINT,
        error            TEXT
    )
    """,
    "CREATE INDEX ai_cost_refresh_runs_recent ON ai_cost_refresh_runs (source, started_at DESC)",
)


forwards = sql_migration(
    migration_id=ID, app_name="costs", description=DESCRIPTION, statements=STATEMENTS
)
