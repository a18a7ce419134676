"""Reading and writing documents. Every write of outputs is one transaction: a document is
either done with all its outputs, failed with a reason, or still queued/processing."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from aiserver.core_db.connections import DbConnection
from aiserver.documents.kinds import Kind

Status = Literal["queued", "processing", "done", "failed"]


@dataclass(frozen=True, slots=True)
class Document:
    id: uuid.UUID
    filename: str
    content_type: str
    kind: Kind
    size_bytes: int
    sha256: str
    status: Status
    error: str | None
    page_count: int | None
    pages_rendered: int
    text: str | None
    text_truncated: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    project_id: int | None  # the project whose key uploaded it; None: no project's


_COLUMNS: Final = (
    "id, filename, content_type, kind, size_bytes, sha256, status, error, page_count, "
    "pages_rendered, text, text_truncated, attempts, created_at, started_at, finished_at, "
    "project_id"
)


async def create_document(
    conn: DbConnection,
    *,
    filename: str,
    content_type: str,
    kind: Kind,
    data: bytes,
    project_id: int | None = None,
) -> uuid.UUID:
    document_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO documents
            (id, filename, content_type, kind, size_bytes, sha256, source, status, project_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)
        """,
        document_id,
        filename,
        content_type,
        kind,
        len(data),
        hashlib.sha256(data).hexdigest(),
        data,
        project_id,
    )
    return document_id


async def set_job(conn: DbConnection, document_id: uuid.UUID, job_id: str) -> None:
    await conn.execute("UPDATE documents SET job_id = $2 WHERE id = $1", document_id, job_id)


async def get_document(conn: DbConnection, document_id: uuid.UUID) -> Document | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM documents WHERE id = $1",  # noqa: S608
        document_id,
    )
    return None if row is None else Document(**dict(row))


async def bound_lock_waits(conn: DbConnection, seconds: float) -> None:
    """In the transaction open on `conn`: a statement that waits longer than `seconds` for a lock
    (a row another session holds) fails with `asyncpg.LockNotAvailableError`."""
    await conn.execute(
        "SELECT set_config('lock_timeout', $1, true)", f"{max(1, round(seconds * 1000))}ms"
    )


async def begin_try(conn: DbConnection, document_id: uuid.UUID) -> tuple[Document, bytes] | None:
    """Count a try of the document's conversion job (one per run of the job that reaches the
    row: the document's own count, not the job queue's) and return it with its source; None
    when it is done already (a re-run of a finished job does nothing) or unknown. A document
    left `processing` by an interrupted try is `queued` again until this try's conversion
    begins."""
    row = await conn.fetchrow(
        f"""
        UPDATE documents
        SET attempts = attempts + 1,
            status = CASE WHEN status = 'processing' THEN 'queued' ELSE status END
        WHERE id = $1 AND status <> 'done'
        RETURNING {_COLUMNS}, source
        """,  # noqa: S608
        document_id,
    )
    if row is None:
        return None
    values = dict(row)
    source: bytes = values.pop("source")
    return Document(**values), source


async def start_processing(conn: DbConnection, document_id: uuid.UUID) -> None:
    """Mark the document processing: its conversion begins now."""
    await conn.execute(
        """
        UPDATE documents SET status = 'processing', started_at = now(), error = NULL
        WHERE id = $1 AND status <> 'done'
        """,
        document_id,
    )


async def save_outputs(
    conn: DbConnection,
    document_id: uuid.UUID,
    *,
    pdf: bytes,
    page_count: int,
    text: str,
    text_truncated: bool,
    pages: list[bytes],
) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM document_pages WHERE document_id = $1", document_id)
        await conn.executemany(
            "INSERT INTO document_pages (document_id, page, png) VALUES ($1, $2, $3)",
            [(document_id, number, png) for number, png in enumerate(pages, start=1)],
        )
        await conn.execute(
            """
            UPDATE documents
            SET status = 'done', error = NULL, pdf = $2, page_count = $3, text = $4,
                text_truncated = $5, pages_rendered = $6, finished_at = now()
            WHERE id = $1
            """,
            document_id,
            pdf,
            page_count,
            text,
            text_truncated,
            len(pages),
        )


async def unsettled_documents(
    conn: DbConnection, older_than_s: float, limit: int
) -> list[uuid.UUID]:
    """The documents still queued or processing that were uploaded over `older_than_s` seconds
    ago, the oldest first, at most `limit`."""
    rows = await conn.fetch(
        """
        SELECT id FROM documents
        WHERE status IN ('queued', 'processing')
          AND created_at < now() - make_interval(secs => $1)
        ORDER BY created_at
        LIMIT $2
        """,
        older_than_s,
        limit,
    )
    return [row["id"] for row in rows]


async def delete_finished(conn: DbConnection, older_than_days: int, limit: int) -> int:
    """Delete the documents done or failed over `older_than_days` days ago (their pages go
    with them), the oldest first, at most `limit`; one a job is still settling (its row
    locked) is left to the next time. How many were deleted."""
    status = await conn.execute(
        """
        WITH gone AS (
            SELECT id FROM documents
            WHERE status IN ('done', 'failed')
              AND finished_at < now() - make_interval(days => $1)
            ORDER BY finished_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM documents AS d USING gone WHERE d.id = gone.id
        """,
        older_than_days,
        limit,
    )
    return int(status.rsplit(" ", 1)[1])


async def mark_failed(conn: DbConnection, document_id: uuid.UUID, reason: str) -> bool:
    """Fail the document with `reason`; a done document stays done. Whether it was failed."""
    status = await conn.execute(
        """
        UPDATE documents SET status = 'failed', error = $2, finished_at = now()
        WHERE id = $1 AND status <> 'done'
        """,
        document_id,
        reason,
    )
    return int(status.rsplit(" ", 1)[1]) > 0


async def status_of(conn: DbConnection, document_id: uuid.UUID) -> Status | None:
    """The document's status, or None when there is no such document (yet)."""
    status: Status | None = await conn.fetchval(
        "SELECT status FROM documents WHERE id = $1", document_id
    )
    return status


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a document is (`project_id` None: no project's), and the name it was uploaded as:
    what a read is checked against before any output of the document is read."""

    project_id: int | None
    filename: str


async def owner_of(conn: DbConnection, document_id: uuid.UUID) -> Owner | None:
    """The document's `Owner`; None when there is no such document."""
    row = await conn.fetchrow(
        "SELECT project_id, filename FROM documents WHERE id = $1", document_id
    )
    return None if row is None else Owner(row["project_id"], row["filename"])


async def get_pdf(conn: DbConnection, document_id: uuid.UUID) -> bytes | None:
    """The document's PDF, once it is done."""
    pdf: bytes | None = await conn.fetchval(
        "SELECT pdf FROM documents WHERE id = $1 AND status = 'done'", document_id
    )
    return pdf


async def get_page(conn: DbConnection, document_id: uuid.UUID, page: int) -> bytes | None:
    png: bytes | None = await conn.fetchval(
        "SELECT png FROM document_pages WHERE document_id = $1 AND page = $2", document_id, page
    )
    return png
