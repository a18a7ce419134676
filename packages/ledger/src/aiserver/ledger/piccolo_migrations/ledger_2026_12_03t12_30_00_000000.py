"""Repricing runs and the adjustments they make to usage events. Frozen SQL; later changes come
as new migrations.

- `usage_reprice_runs`: who asked, when, for what (the filter), a dry run or not, the catalog
  version it priced with, its state and progress (so a run that crashed resumes where its last
  committed batch ended) and its result. `project_id` 0 is a run over every project (the
  operator's, and the automatic reprice after a catalog change): the key holds `project_id`
  all the same, as every key of the ledger does.
- `usage_adjustments`: one row per changed event, with what it was billed at before and after.
  An event is adjusted at most once per run, so a resumed run never adjusts one twice.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T12:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "usage repricing runs and adjustments"

STATEMENTS = (
    """
    CREATE TABLE usage_reprice_runs (
        project_id       BIGINT NOT NULL,
        id               BIGINT GENERATED ALWAYS AS IDENTITY,
        requested_by     TEXT NOT NULL,
        requested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
        dry_run          BOOLEAN NOT NULL,
        filter           JSONB NOT NULL,
        catalog_version  BIGINT,
        state            TEXT NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'running', 'done', 'failed')),
        started_at       TIMESTAMPTZ,
        finished_at      TIMESTAMPTZ,
        after_project    BIGINT,
        after_occurred   TIMESTAMPTZ,
        after_event      BIGINT,
        events_examined  BIGINT NOT NULL DEFAULT 0,
        events_changed   BIGINT NOT NULL DEFAULT 0,
        old_total        NUMERIC NOT NULL DEFAULT 0,
        new_total        NUMERIC NOT NULL DEFAULT 0,
        result           JSONB,
        error            TEXT,
        PRIMARY KEY (project_id, id)
    )
    """,
    # the operator names a run by its id alone
    "CREATE INDEX usage_reprice_runs_by_id ON usage_reprice_runs (id)",
    """
    CREATE TABLE usage_adjustments (
        project_id         BIGINT NOT NULL,
        id                 BIGINT GENERATED ALWAYS AS IDENTITY,
        run_id             BIGINT NOT NULL,
        event_id           BIGINT NOT NULL,
        occurred_at        TIMESTAMPTZ NOT NULL,
        adjusted_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
        old_status         TEXT NOT NULL,
        new_status         TEXT NOT NULL,
        old_cost           NUMERIC,
        new_cost           NUMERIC,
        old_price_version  BIGINT,
        new_price_version  BIGINT,
        PRIMARY KEY (project_id, id),
        UNIQUE (project_id, run_id, event_id)
    )
    """,
    "CREATE INDEX usage_adjustments_by_event ON usage_adjustments (project_id, event_id)",
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
