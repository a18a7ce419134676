"""Documents and their rendered pages. Frozen SQL; later changes come as new migrations."""

from aiserver.core_db.migrations import sql_migration

ID = "2026-11-28T11:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "documents and pages"

STATEMENTS = (
    """
    CREATE TABLE documents (
        id              UUID PRIMARY KEY,
        filename        TEXT NOT NULL,
        content_type    TEXT NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('pdf', 'docx', 'doc', 'odt', 'rtf', 'txt')),
        size_bytes      BIGINT NOT NULL CHECK (size_bytes >= 0),
        sha256          TEXT NOT NULL,
        source          BYTEA NOT NULL,
        status          TEXT NOT NULL
                        CHECK (status IN ('queued', 'processing', 'done', 'failed')),
        error           TEXT,
        page_count      INTEGER CHECK (page_count >= 0),
        pages_rendered  INTEGER NOT NULL DEFAULT 0 CHECK (pages_rendered >= 0),
        text            TEXT,
        text_truncated  BOOLEAN NOT NULL DEFAULT false,
        pdf             BYTEA,
        job_id          TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        started_at      TIMESTAMPTZ,
        finished_at     TIMESTAMPTZ,
        CHECK (status <> 'failed' OR error IS NOT NULL),
        CHECK (status <> 'done' OR (pdf IS NOT NULL AND page_count IS NOT NULL))
    )
    """,
    "CREATE INDEX documents_created ON documents (created_at DESC)",
    """
    CREATE TABLE document_pages (
        document_id  UUID NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
        page         INTEGER NOT NULL CHECK (page >= 1),
        png          BYTEA NOT NULL,
        PRIMARY KEY (document_id, page)
    )
    """,
)


forwards = sql_migration(
    migration_id=ID, app_name="documents", description=DESCRIPTION, statements=STATEMENTS
)
