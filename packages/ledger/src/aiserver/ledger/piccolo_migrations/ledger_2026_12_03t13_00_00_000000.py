"""Budgets and their windows. Frozen SQL; later changes come as new migrations.

- `budgets`: a limit on what a project, or the part of it that some tags and a model name, may
  spend in a period (`day`, `week`, `month` in the project's time zone, or `total`).
- `budget_windows`: what each window holds, keyed by the window's start: a new period is a new
  row, never a reset. `stripe` lets a hot budget spread one window over several rows later
  (each holding a share of the limit); today every window is stripe 0.

- `budget_alerts`: one row per budget, window and threshold crossed (unique: a threshold alerts
  once per window, however many transactions race past it), written in the transaction that
  crossed it; the task runner delivers it.
- `webhook_deliveries`: every attempt to deliver an alert, with its outcome.
- `ledger_ingest_budgets(project)`: what an ingest transaction needs to commit to budgets, in
  one round trip: it first takes the project's row FOR KEY SHARE (creating or deleting a budget
  takes it FOR UPDATE, so neither overlaps a transaction that writes usage), then reads the
  project's time zone and budgets with a snapshot taken after that lock (a VOLATILE function
  takes a new one for each statement), so a budget created while the transaction waited is
  seen.

Every key holds `project_id` and no foreign key crosses projects.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "budgets, their windows and alerts"

STATEMENTS = (
    """
    CREATE TABLE budgets (
        project_id      BIGINT NOT NULL REFERENCES projects (id),
        id              BIGINT GENERATED ALWAYS AS IDENTITY,
        name            TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        tags            JSONB NOT NULL DEFAULT '{}'::jsonb
                        CHECK (jsonb_typeof(tags) = 'object'),
        model           TEXT,
        period          TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
        limit_usd       NUMERIC NOT NULL CHECK (limit_usd > 0),
        thresholds      NUMERIC[] NOT NULL DEFAULT '{50,80,100}',
        hard            BOOLEAN NOT NULL DEFAULT false,
        webhook_url     TEXT,
        webhook_secret  TEXT,
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (project_id, id),
        CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL))
    )
    """,
    """
    CREATE TABLE budget_windows (
        project_id       BIGINT NOT NULL,
        budget_id        BIGINT NOT NULL,
        window_start     TIMESTAMPTZ NOT NULL,
        stripe           SMALLINT NOT NULL DEFAULT 0,
        window_end       TIMESTAMPTZ,
        committed        NUMERIC NOT NULL DEFAULT 0,
        reserved         NUMERIC NOT NULL DEFAULT 0 CHECK (reserved >= 0),
        events           BIGINT NOT NULL DEFAULT 0,
        unpriced_events  BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, budget_id, window_start, stripe),
        FOREIGN KEY (project_id, budget_id) REFERENCES budgets (project_id, id)
            ON DELETE CASCADE
    )
    """,
    """
    CREATE TABLE budget_alerts (
        project_id       BIGINT NOT NULL,
        id               BIGINT GENERATED ALWAYS AS IDENTITY,
        budget_id        BIGINT NOT NULL,
        window_start     TIMESTAMPTZ NOT NULL,
        window_end       TIMESTAMPTZ,
        threshold        NUMERIC NOT NULL,
        limit_usd        NUMERIC NOT NULL,
        committed        NUMERIC NOT NULL,
        crossed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        state            TEXT NOT NULL
                         CHECK (state IN ('pending', 'delivered', 'failed', 'no_webhook')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TIMESTAMPTZ,
        delivered_at     TIMESTAMPTZ,
        PRIMARY KEY (project_id, id),
        UNIQUE (project_id, budget_id, window_start, threshold),
        FOREIGN KEY (project_id, budget_id) REFERENCES budgets (project_id, id)
            ON DELETE CASCADE
    )
    """,
    """
    CREATE INDEX budget_alerts_due ON budget_alerts (next_attempt_at)
        WHERE state = 'pending'
    """,
    """
    CREATE TABLE webhook_deliveries (
        project_id    BIGINT NOT NULL,
        id            BIGINT GENERATED ALWAYS AS IDENTITY,
        alert_id      BIGINT NOT NULL,
        attempt       INTEGER NOT NULL,
        attempted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
        url           TEXT NOT NULL,
        status_code   INTEGER,
        error         TEXT,
        duration_ms   NUMERIC,
        PRIMARY KEY (project_id, id),
        FOREIGN KEY (project_id, alert_id) REFERENCES budget_alerts (project_id, id)
            ON DELETE CASCADE
    )
    """,
    "CREATE INDEX webhook_deliveries_by_alert ON webhook_deliveries (project_id, alert_id)",
    """
    CREATE FUNCTION ledger_ingest_budgets(p BIGINT)
    RETURNS TABLE (time_zone TEXT, budget_id BIGINT, tags TEXT, model TEXT, period TEXT,
                   limit_usd NUMERIC, thresholds NUMERIC[], has_webhook BOOLEAN)
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM 1 FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        RETURN QUERY
            SELECT pr.time_zone, b.id, b.tags::text, b.model, b.period, b.limit_usd,
                   b.thresholds, b.webhook_url IS NOT NULL
            FROM projects AS pr LEFT JOIN budgets AS b ON b.project_id = pr.id
            WHERE pr.id = p
            ORDER BY b.id;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
