"""Usage events (range-partitioned by month of `occurred_at`), their idempotency keys and the
outbox that the rollups fold. Frozen SQL; later changes come as new migrations.

- `usage_events` has no partitions here: the ledger creates each month's partition before it is
  needed (the task runner ahead of time, ingest on demand for a backfill), and there is no
  catch-all partition, so a row never lands where retention cannot drop it whole.
- `usage_idempotency` holds one row per recorded event, unique by (project, the client's key)
  across every partition; it is written in the same transaction as the event.
- `usage_outbox` holds one row per recorded event until the rollups have folded it.

Every primary and unique key holds `project_id` and no foreign key crosses projects, so all three
tables can be distributed by `project_id` and co-located (Citus, see deploy/deployment.md).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "usage events, idempotency keys and the rollup outbox"

STATEMENTS = (
    "CREATE SEQUENCE usage_events_id_seq AS BIGINT",
    """
    CREATE TABLE usage_events (
        project_id         BIGINT NOT NULL,
        occurred_at        TIMESTAMPTZ NOT NULL,
        id                 BIGINT NOT NULL DEFAULT nextval('usage_events_id_seq'),
        received_at        TIMESTAMPTZ NOT NULL,
        event_key          TEXT NOT NULL,
        model              TEXT NOT NULL,
        provider           TEXT,
        matched_model      TEXT,
        matched_provider   TEXT,
        usage_format       TEXT,
        service_tier       TEXT NOT NULL,
        input_tokens       BIGINT NOT NULL,
        output_tokens      BIGINT NOT NULL,
        cache_read_tokens  BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        reasoning_tokens   BIGINT NOT NULL,
        usage_other        JSONB,
        tags               JSONB NOT NULL,
        status             TEXT NOT NULL
                           CHECK (status IN ('priced', 'partially_priced', 'unpriced')),
        total_cost         NUMERIC,
        components         JSONB,
        unpriced           TEXT[],
        pricing_note       TEXT,
        suggestions        TEXT[],
        price_version      BIGINT,
        catalog_version    BIGINT,
        override_id        BIGINT,
        PRIMARY KEY (project_id, occurred_at, id),
        CHECK ((status = 'unpriced') = (total_cost IS NULL))
    ) PARTITION BY RANGE (occurred_at)
    """,
    "ALTER SEQUENCE usage_events_id_seq OWNED BY usage_events.id",
    # tag equality (`tags @> '{"team": "search"}'`) for listing events and for the spend of tag
    # keys that a project does not roll up
    "CREATE INDEX usage_events_by_tags ON usage_events USING gin (tags jsonb_path_ops)",
    # one event by its id (GET /v1/usage/events/{event_id}): the primary key finds a project's
    # events in time order, and an id alone would scan them all. Not unique (a unique index of a
    # partitioned table must hold the partition key); one sequence makes the ids unique anyway.
    "CREATE INDEX usage_events_by_id ON usage_events (project_id, id)",
    # the events that wait for a price: a reprice after a catalog change finds them here (the
    # index holds only them, so it stays small however many events are priced)
    """
    CREATE INDEX usage_events_unpriced ON usage_events (model, provider, project_id)
        WHERE status = 'unpriced'
    """,
    """
    CREATE TABLE usage_idempotency (
        project_id    BIGINT NOT NULL,
        key           TEXT NOT NULL,
        payload_hash  BYTEA NOT NULL CHECK (length(payload_hash) = 16),
        event_id      BIGINT NOT NULL,
        occurred_at   TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (project_id, key)
    )
    """,
    # retention deletes the keys of the events it drops
    "CREATE INDEX usage_idempotency_by_occurred_at ON usage_idempotency (occurred_at)",
    """
    CREATE TABLE usage_outbox (
        project_id   BIGINT NOT NULL,
        id           BIGINT GENERATED ALWAYS AS IDENTITY,
        event_id     BIGINT NOT NULL,
        occurred_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (project_id, id)
    )
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
