"""What the services do with documents: the API submits and reads them, the task runner converts.

submitted = await submit(pool, upload, settings, enqueue=...)   # API: store + enqueue, atomic
result = await process(pool, document_id, settings, slots)       # task runner job
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final

import asyncpg

from aiserver.core_db.logging import get_logger
from aiserver.documents import store
from aiserver.documents.conversion import convert
from aiserver.documents.errors import (
    ConversionError,
    DocumentNotReady,
    DocumentTooLarge,
    EmptyDocument,
    UnknownDocument,
    UnknownPage,
)
from aiserver.documents.jobs import PROCESS_JOB, process_job_id
from aiserver.documents.kinds import kind_of
from aiserver.documents.limits import Limits
from aiserver.documents.settings import DocumentSettings
from aiserver.documents.store import Document

log = get_logger(__name__)

#: Enqueue a task-runner job: (function name, job id, arguments) -> the job id it was given.
Enqueue = Callable[[str, str, str], Awaitable[str]]

#: Bound on each database step of a request, so that a stalled database is a 503, not a hang.
DB_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str | None
    content_type: str | None
    content: bytes


@dataclass(frozen=True, slots=True)
class Submitted:
    document_id: uuid.UUID
    job_id: str


async def submit(
    pool: asyncpg.Pool, upload: Upload, settings: DocumentSettings, *, enqueue: Enqueue
) -> Submitted:
    """Check an upload, store it and enqueue its conversion, all or nothing.

    The job is enqueued before the transaction commits: when Redis is down the row is rolled
    back, so a document is never stored without a conversion on its way. A worker may take the
    job before the commit; `process` waits for the row (and a job whose upload then failed finds
    no document and does nothing).
    """
    kind = kind_of(upload.filename or "", upload.content_type)
    if len(upload.content) > settings.document_max_bytes:
        raise DocumentTooLarge(
            f"the document is larger than {settings.document_max_bytes} bytes (DOCUMENT_MAX_BYTES)"
        )
    if not upload.content:
        raise EmptyDocument("the uploaded file is empty")
    filename = PurePosixPath(upload.filename or f"document.{kind}").name[:255]
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn, conn.transaction():
        document_id = await store.create_document(
            conn, filename=filename, content_type=upload.content_type or "", kind=kind,
            data=upload.content,
        )  # fmt: skip
        job_id = await enqueue(PROCESS_JOB, process_job_id(str(document_id)), str(document_id))
        await store.set_job(conn, document_id, job_id)
    return Submitted(document_id=document_id, job_id=job_id)


async def read(pool: asyncpg.Pool, document_id: uuid.UUID) -> Document:
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        document = await store.get_document(conn, document_id)
    if document is None:
        raise UnknownDocument(f"no document {document_id}")
    return document


async def read_pdf(pool: asyncpg.Pool, document_id: uuid.UUID) -> bytes:
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        pdf = await store.get_pdf(conn, document_id)
    if pdf is None:
        raise DocumentNotReady(f"no PDF for document {document_id} (unknown, or not done yet)")
    return pdf


async def read_page(pool: asyncpg.Pool, document_id: uuid.UUID, page: int) -> bytes:
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        png = await store.get_page(conn, document_id, page)
    if png is None:
        raise UnknownPage(f"no page {page}.png for document {document_id}")
    return png


#: How long a job waits for its document's row: the upload enqueues the job inside its
#: transaction, so a worker can take the job a moment before the row is committed.
VISIBLE_WITHIN_S: Final = 10.0


#: Tries one document's job gets. Another try means that the last one was interrupted: the task
#: runner stopped or died while the job waited for a conversion slot or converted (killed for
#: the memory the document took, say). arq runs a job again after that up to the task runner's
#: MAX_TRIES (3), then drops it without calling it, which would leave the document `queued` or
#: `processing` for good; so the try past this many (arq's last) fails the document. Every try
#: is counted when it begins, before it waits for a slot, so the count is arq's own.
MAX_CONVERSIONS: Final = 2


def _interrupted(attempts: int) -> str:
    return (
        f"the conversion was interrupted {attempts - 1} times (the task runner stopped or was "
        "killed while the document waited for a conversion slot or was converted)"
    )


async def _start(
    pool: asyncpg.Pool, doc_id: uuid.UUID, wait_s: float
) -> tuple[Document, bytes] | None:
    """Count the job's try (the document failed, past MAX_CONVERSIONS); None when it is done,
    or does not appear in `wait_s`."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        async with pool.acquire() as conn, conn.transaction():
            started = await store.begin_try(conn, doc_id)
            if started is not None and started[0].attempts > MAX_CONVERSIONS:
                # in the same transaction: a try that converts nothing never shows processing
                await store.mark_failed(conn, doc_id, _interrupted(started[0].attempts))
            if started is not None or await store.status_of(conn, doc_id) is not None:
                return started
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _fail_unexpectedly(pool: asyncpg.Pool, doc_id: uuid.UUID, exc: Exception) -> None:
    """Mark a document failed by an error no conversion foresees (a full disk, the database
    lost while storing the outputs): arq runs a job that raised once, so the document would
    stay `processing` for good. Best effort: if the database is what failed, it may fail too,
    and is logged."""
    reason = f"the conversion failed unexpectedly ({type(exc).__name__}: {exc}); upload it again"
    try:
        async with pool.acquire() as conn:
            await store.mark_failed(conn, doc_id, reason[:1000])
    except Exception as again:  # the job's own error is what arq reports
        log.error("document left processing: it could not be marked failed",
                  document_id=str(doc_id), error=f"{type(again).__name__}: {again}")  # fmt: skip
    else:
        log.error("document failed", document_id=str(doc_id), reason=reason)


async def process(
    pool: asyncpg.Pool,
    document_id: str,
    settings: DocumentSettings,
    slots: asyncio.Semaphore,
    *,
    visible_within_s: float = VISIBLE_WITHIN_S,
) -> dict[str, Any]:
    """Convert one uploaded document and store its outputs; the job's result as plain data.

    Re-running it is safe: a done document is left alone; any other is converted again and its
    outputs replaced, up to MAX_CONVERSIONS tries. `slots` bounds the conversions at once in
    this worker; a document waiting for one stays `queued`.
    """
    doc_id = uuid.UUID(document_id)
    started = await _start(pool, doc_id, visible_within_s)
    if started is None:
        async with pool.acquire() as conn:
            status = await store.status_of(conn, doc_id)
        note = "nothing to do" if status == "done" else "no such document: its upload failed"
        return {"document_id": document_id, "status": status or "unknown", "note": note}
    document, source = started
    if document.attempts > MAX_CONVERSIONS:  # `_start` marked it failed
        reason = _interrupted(document.attempts)
        log.warning("document failed", document_id=document_id, reason=reason)
        return {"document_id": document_id, "status": "failed", "error": reason}
    async with slots:  # while it waits for one, the document stays `queued`
        async with pool.acquire() as conn:
            await store.start_processing(conn, doc_id)
        try:
            converted = await convert(source, document.kind, Limits.of(settings))
        except ConversionError as exc:
            async with pool.acquire() as conn:
                await store.mark_failed(conn, doc_id, str(exc))
            log.warning("document failed", document_id=document_id, reason=str(exc))
            return {"document_id": document_id, "status": "failed", "error": str(exc)}
        except Exception as exc:
            await _fail_unexpectedly(pool, doc_id, exc)
            raise
    try:
        async with pool.acquire() as conn:
            await store.save_outputs(
                conn, doc_id, pdf=converted.pdf, page_count=converted.page_count,
                text=converted.text, text_truncated=converted.text_truncated,
                pages=converted.pages,
            )  # fmt: skip
    except Exception as exc:
        await _fail_unexpectedly(pool, doc_id, exc)
        raise
    log.info("document converted", document_id=document_id, pages=converted.page_count,
             rendered=len(converted.pages), text_bytes=len(converted.text))  # fmt: skip
    return {"document_id": document_id, "status": "done", "page_count": converted.page_count}
