"""What the services do with documents: the API submits and reads them, the task runner converts.

submitted = await submit(pool, upload, settings, enqueue=...)   # API: store + enqueue, atomic
result = await process(pool, document_id, settings, slots, job_try=n)  # task runner job
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Final

import asyncpg

from aiserver.core_db.connections import DbConnection
from aiserver.core_db.logging import get_logger
from aiserver.documents import store
from aiserver.documents.conversion import convert
from aiserver.documents.errors import (
    ConversionError,
    DatabaseStalled,
    DocumentNotReady,
    DocumentTooLarge,
    EmptyDocument,
    StalledBeforeTheTry,
    UnknownDocument,
    UnknownPage,
)
from aiserver.documents.jobs import (
    PROCESS_JOB,
    RETENTION_BATCH,
    RETENTION_BUDGET_S,
    RETENTION_LIMIT,
    process_job_id,
)
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
class Reader:
    """Who reads documents, and which it may see: the operator, every one; a project's key, its
    project's; and the documents of no project (uploaded without a credential, or by the
    operator) anyone, unless `public` is off (DOCUMENT_REQUIRE_KEY): then the operator alone.
    A document the reader may not see is answered as one that does not exist."""

    project_id: int | None
    operator: bool
    public: bool  # not DOCUMENT_REQUIRE_KEY

    @classmethod
    def under(
        cls, settings: DocumentSettings, project_id: int | None = None, *, operator: bool = False
    ) -> Reader:
        """A reader (anyone, by default) under `settings`' DOCUMENT_REQUIRE_KEY."""
        return cls(project_id, operator, public=not settings.document_require_key)

    def sees(self, owner: int | None) -> bool:
        if self.operator:
            return True
        if owner is None:
            return self.public
        return owner == self.project_id


@dataclass(frozen=True, slots=True)
class Submitted:
    document_id: uuid.UUID
    job_id: str


async def submit(
    pool: asyncpg.Pool,
    upload: Upload,
    settings: DocumentSettings,
    *,
    enqueue: Enqueue,
    project_id: int | None = None,
) -> Submitted:
    """Check an upload, store it (as `project_id`'s, or no project's) and enqueue its
    conversion, all or nothing.

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
    filename = _stored_name(upload.filename or f"document.{kind}")
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn, conn.transaction():
        document_id = await store.create_document(
            conn, filename=filename, content_type=upload.content_type or "", kind=kind,
            data=upload.content, project_id=project_id,
        )  # fmt: skip
        job_id = await enqueue(PROCESS_JOB, process_job_id(str(document_id)), str(document_id))
        await store.set_job(conn, document_id, job_id)
    return Submitted(document_id=document_id, job_id=job_id)


#: The longest file name stored (and shown) with a document, in characters.
MAX_FILENAME: Final = 255


def _stored_name(filename: str) -> str:
    """The name stored with a document: the upload's file name without its directories, cut
    to MAX_FILENAME characters before its extension, which is kept (cut at its end, a name of
    300 characters ending in .docx was stored without the extension)."""
    name = PurePosixPath(filename).name
    if len(name) <= MAX_FILENAME:
        return name
    suffix = PurePosixPath(name).suffix  # the kind's extension: `kind_of` read it
    return name[: MAX_FILENAME - len(suffix)] + suffix


async def read(pool: asyncpg.Pool, document_id: uuid.UUID, *, reader: Reader) -> Document:
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        owner = await store.owner_of(conn, document_id)  # before its text (up to megabytes)
        document = await store.get_document(conn, document_id) if _sees(reader, owner) else None
    if document is None:
        raise UnknownDocument(f"no document {document_id}")
    return document


async def read_pdf(
    pool: asyncpg.Pool, document_id: uuid.UUID, *, reader: Reader
) -> tuple[str, bytes]:
    """The PDF of a done document, and the name to give it: the upload's, ending in `.pdf`."""
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        # whose it is first: the PDF (megabytes) is read only for a reader who may have it
        owner = await store.owner_of(conn, document_id)
        pdf = await store.get_pdf(conn, document_id) if _sees(reader, owner) else None
    if owner is None or pdf is None:  # (owner is None: pdf is too; said for the type checker)
        raise DocumentNotReady(f"no PDF for document {document_id} (unknown, or not done yet)")
    return pdf_name(owner.filename), pdf


def pdf_name(filename: str) -> str:
    """The name a document's PDF is served under: the upload's, without its directories (POSIX
    or Windows) and extension, ending in `.pdf`; `document.pdf` for a name that is all
    extension (`.docx`)."""
    stem = PurePosixPath(PureWindowsPath(filename).name).stem
    if not stem or stem.startswith("."):
        stem = "document"
    return f"{stem}.pdf"


async def read_page(
    pool: asyncpg.Pool, document_id: uuid.UUID, page: int, *, reader: Reader
) -> bytes:
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        owner = await store.owner_of(conn, document_id)
        png = await store.get_page(conn, document_id, page) if _sees(reader, owner) else None
    if png is None:
        raise UnknownPage(f"no page {page}.png for document {document_id}")
    return png


def _sees(reader: Reader, owner: store.Owner | None) -> bool:
    return owner is not None and reader.sees(owner.project_id)


async def job_visible(pool: asyncpg.Pool, document_id: str, *, reader: Reader) -> bool:
    """Whether `reader` may follow the conversion job of `document_id` (a job's argument: any
    text): only while the document is there, and one `reader` sees."""
    try:
        parsed = uuid.UUID(document_id)
    except ValueError:
        return False
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        owner = await store.owner_of(conn, parsed)
    return _sees(reader, owner)


async def delete_expired(pool: asyncpg.Pool, retention_days: int) -> int:
    """Delete the documents done or failed over `retention_days` days ago (DOCUMENT_RETENTION_
    DAYS; 0 deletes none), oldest first, RETENTION_BATCH per transaction, up to
    RETENTION_LIMIT and for RETENTION_BUDGET_S: the next sweep takes the rest. How many were
    deleted."""
    deleted = 0
    ends = time.monotonic() + RETENTION_BUDGET_S
    while retention_days > 0 and deleted < RETENTION_LIMIT and time.monotonic() < ends:
        size = min(RETENTION_BATCH, RETENTION_LIMIT - deleted)
        async with pool.acquire() as conn, conn.transaction():
            batch = await store.delete_finished(conn, retention_days, size)
        deleted += batch
        if batch < size:
            break
    return deleted


#: How long a job waits for its document's row: the upload enqueues the job inside its
#: transaction, so a worker can take the job a moment before the row is committed.
VISIBLE_WITHIN_S: Final = 10.0
#: The longest pause between two looks for the row.
_LOOK_EVERY_S: Final = 1.0


#: Conversions one document gets: the tries of its job that reached its row, which the document
#: counts itself (`attempts`). Another try means that the last one was interrupted: the task
#: runner stopped or died while the job waited for a conversion slot or converted (killed for
#: the memory the document took, say). The try past this many fails the document.
MAX_CONVERSIONS: Final = 2
#: Tries of a document's job that the task runner's job queue (arq) runs, by its own count
#: (`job_try`), after which it drops the job without calling it: that would leave the document
#: `queued` or `processing` for good. arq also counts tries cut before they reached the row
#: (the task runner killed while the job waited for an upload to commit, or a stall of the
#: database before the try was counted, which the job runs again: `StalledBeforeTheTry`), which
#: the document does not; so beyond the document's MAX_CONVERSIONS and the try that fails it,
#: arq allows as many again for those. Should even these run out, its last try fails the
#: document rather than convert it, whatever the document's own count.
JOB_MAX_TRIES: Final = 2 * (MAX_CONVERSIONS + 1)


#: How long after a try stalled before it began the job runs again (`StalledBeforeTheTry`),
#: times the try's number: 5 s after the first, 10 s after the second, ...
STALL_RETRY_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class JobBounds:
    """How long the database steps of a conversion job may take, so that a stalled database (a
    row lock another session holds, a connection that hangs, none free in the pool) ends the job
    with the document failed and the reason, never at the task runner's own timeout, which
    would leave it `processing` (arq runs no job again after its timeout). Each step is one
    transaction."""

    #: A step waits this long for a lock (`lock_timeout`) and for a connection of the pool.
    lock_wait_s: float = 10.0
    #: One step, all its statements together.
    step_s: float = 20.0
    #: Storing the outputs: the PDF and up to DOCUMENT_MAX_IMAGE_BYTES of page images.
    save_s: float = 90.0

    def most_s(self, seconds: float) -> float:
        """The longest a step bounded by `seconds` takes: a step cut at its bound gives its
        connection back (or drops it) within `lock_wait_s` more."""
        return seconds + self.lock_wait_s

    def holding_slot_s(self, conversion_s: float) -> float:
        """The longest a job holds a conversion slot: the document marked `processing`, the
        conversion, then the document failed."""
        return self.most_s(self.step_s) + conversion_s + self.most_s(self.step_s)

    def outside_slot_s(self, visible_within_s: float = VISIBLE_WITHIN_S) -> float:
        """The longest a job takes outside its slot: the wait for its row (the last look may
        begin just before `visible_within_s` is up) and a step that fails the document or reads
        its status; the outputs stored, or the document failed."""
        start = visible_within_s + _LOOK_EVERY_S + 2 * self.most_s(self.step_s)
        return start + self.most_s(self.save_s) + self.most_s(self.step_s)


#: The bounds of the task runner's conversion jobs.
JOB_BOUNDS: Final = JobBounds()


@contextlib.asynccontextmanager
async def _step(
    pool: asyncpg.Pool, what: str, bounds: JobBounds, seconds: float | None = None
) -> AsyncIterator[DbConnection]:
    """A connection in a transaction for one database step of the job (`what` names it): its
    lock waits bounded by `bounds.lock_wait_s`, the step by `seconds` (`bounds.step_s`). Past
    either, `DatabaseStalled`, saying which step and why."""
    seconds = bounds.step_s if seconds is None else seconds
    try:
        # the outer bound cuts the clean-up of a step cut by the inner one (a ROLLBACK on a
        # connection that hangs); asyncpg gives a connection back within the acquire's timeout
        async with (
            asyncio.timeout(bounds.most_s(seconds)),
            pool.acquire(timeout=bounds.lock_wait_s) as conn,
            asyncio.timeout(seconds),
            conn.transaction(),
        ):
            await store.bound_lock_waits(conn, bounds.lock_wait_s)
            yield conn
    except asyncpg.LockNotAvailableError as exc:
        raise DatabaseStalled(
            f"{what}: another database session held a lock on the document for more than "
            f"{bounds.lock_wait_s:g} s"
        ) from exc
    except TimeoutError as exc:
        raise DatabaseStalled(
            f"{what}: the database did not answer within {seconds:g} s (no connection free "
            f"within {bounds.lock_wait_s:g} s, or one that hung)"
        ) from exc


def _given_up(attempts: int, job_try: int) -> str | None:
    """Why this try of the job fails the document instead of converting it, if it does."""
    if attempts > MAX_CONVERSIONS:
        return (
            f"the conversion was interrupted {attempts - 1} times (the task runner stopped or was "
            "killed while the document waited for a conversion slot or was converted)"
        )
    if job_try >= JOB_MAX_TRIES:
        return (
            f"the conversion job was interrupted {job_try - 1} times, {job_try - attempts} of "
            "them before it reached the document (the task runner stopped or was killed, or "
            "the database stalled), and no try of it is left"
        )
    return None


async def _start(
    pool: asyncpg.Pool, doc_id: uuid.UUID, wait_s: float, job_try: int, bounds: JobBounds
) -> tuple[Document, bytes] | None:
    """Count the job's try on the document (the document failed, when `_given_up`); None when
    it is done, or does not appear in `wait_s`."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        async with _step(pool, "counting the try", bounds) as conn:
            started = await store.begin_try(conn, doc_id)
            reason = None if started is None else _given_up(started[0].attempts, job_try)
            if reason is not None:
                # in the same transaction: a try that converts nothing never shows processing
                await store.mark_failed(conn, doc_id, reason)
            if started is not None or await store.status_of(conn, doc_id) is not None:
                return started
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, _LOOK_EVERY_S)


async def _fail(pool: asyncpg.Pool, doc_id: uuid.UUID, reason: str, bounds: JobBounds) -> bool:
    """Mark the document failed with `reason` (False: it is done, or there is none). When even
    that cannot be written, says so in the log (the document is left as it is) and raises."""
    try:
        async with _step(pool, "marking the document failed", bounds) as conn:
            return await store.mark_failed(conn, doc_id, reason[:1000])
    except Exception as exc:
        log.error("document left unfinished: it could not be marked failed",
                  document_id=str(doc_id), error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        raise


async def _fail_unexpectedly(
    pool: asyncpg.Pool, doc_id: uuid.UUID, exc: Exception, bounds: JobBounds
) -> None:
    """Mark a document failed by an error no conversion foresees (a full disk, the database
    lost or stalled while the outputs are stored): arq runs a job that raised once, so the
    document would stay `processing` for good. Best effort: if the database is what failed, it
    may fail too, and is logged."""
    reason = f"the conversion failed unexpectedly ({type(exc).__name__}: {exc}); upload it again"
    try:
        failed = await _fail(pool, doc_id, reason, bounds)
    except Exception:  # logged; the job's own error is what arq reports
        return
    if failed:
        log.error("document failed", document_id=str(doc_id), reason=reason)


async def process(
    pool: asyncpg.Pool,
    document_id: str,
    settings: DocumentSettings,
    slots: asyncio.Semaphore,
    *,
    job_try: int = 1,
    visible_within_s: float = VISIBLE_WITHIN_S,
    bounds: JobBounds = JOB_BOUNDS,
) -> dict[str, Any]:
    """Convert one uploaded document and store its outputs; the job's result as plain data.

    Re-running it is safe: a done document is left alone; any other is converted again and its
    outputs replaced, up to MAX_CONVERSIONS tries as the document counts them. `job_try` is the
    job queue's count of this try (arq's, up to JOB_MAX_TRIES): its last fails the document.
    `slots` bounds the conversions at once in this worker; a document waiting for one stays
    `queued`. A database step that passes `bounds` fails the document with `DatabaseStalled`.
    """
    doc_id = uuid.UUID(document_id)
    try:
        started = await _start(pool, doc_id, visible_within_s, job_try, bounds)
    except DatabaseStalled as exc:
        # Nothing of this try is written (its count rolled back): the document is as it was,
        # `queued`, and the job's runner runs it again (`StalledBeforeTheTry`), but the last.
        if job_try < JOB_MAX_TRIES:
            raise StalledBeforeTheTry(str(exc)) from exc
        await _fail_unexpectedly(pool, doc_id, exc, bounds)
        raise
    except Exception as exc:
        await _fail_unexpectedly(pool, doc_id, exc, bounds)
        raise
    if started is None:
        async with _step(pool, "reading the document's status", bounds) as conn:
            status = await store.status_of(conn, doc_id)
        note = "nothing to do" if status == "done" else "no such document: its upload failed"
        return {"document_id": document_id, "status": status or "unknown", "note": note}
    document, source = started
    reason = _given_up(document.attempts, job_try)
    if reason is not None:  # `_start` marked it failed
        log.warning("document failed", document_id=document_id, reason=reason)
        return {"document_id": document_id, "status": "failed", "error": reason}
    async with slots:  # while it waits for one, the document stays `queued`
        try:
            async with _step(pool, "marking the document processing", bounds) as conn:
                await store.start_processing(conn, doc_id)
            converted = await convert(source, document.kind, Limits.of(settings))
        except ConversionError as exc:
            await _fail(pool, doc_id, str(exc), bounds)
            log.warning("document failed", document_id=document_id, reason=str(exc))
            return {"document_id": document_id, "status": "failed", "error": str(exc)}
        except Exception as exc:
            await _fail_unexpectedly(pool, doc_id, exc, bounds)
            raise
    try:
        async with _step(pool, "storing the outputs", bounds, bounds.save_s) as conn:
            await store.save_outputs(
                conn, doc_id, pdf=converted.pdf, page_count=converted.page_count,
                text=converted.text, text_truncated=converted.text_truncated,
                pages=converted.pages,
            )  # fmt: skip
    except Exception as exc:
        await _fail_unexpectedly(pool, doc_id, exc, bounds)
        raise
    log.info("document converted", document_id=document_id, pages=converted.page_count,
             rendered=len(converted.pages), text_bytes=len(converted.text))  # fmt: skip
    return {"document_id": document_id, "status": "done", "page_count": converted.page_count}
