"""The conversion job against the real database: it waits for an upload that is still committing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import uuid

import asyncpg
import pytest

from aiserver.core_db.database import require_pool
from aiserver.documents import service, store
from aiserver.documents.settings import DocumentSettings

from ..conftest import Settings


async def test_a_job_taken_before_its_upload_commits_still_converts_it(db: Settings) -> None:
    """The API enqueues the job inside the upload's transaction: a worker can start it first."""
    document_id = uuid.uuid4()
    conn = await asyncpg.connect(db.core.database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO documents (id, filename, content_type, kind, size_bytes, sha256,
                                       source, status)
                VALUES ($1, 'note.txt', 'text/plain', 'txt', 5, 'x', 'hello'::bytea, 'queued')
                """,
                document_id,
            )
            job = asyncio.create_task(
                service.process(require_pool(), str(document_id), DocumentSettings(),
                                asyncio.Semaphore(1))
            )  # fmt: skip
            await asyncio.sleep(0.5)  # the job looks while the row is not committed yet
            assert not job.done()
        result = await asyncio.wait_for(job, timeout=120)
    finally:
        await conn.close()
    assert (result["status"], result["page_count"]) == ("done", 1)
    async with require_pool().acquire() as pooled:
        assert await store.status_of(pooled, document_id) == "done"


async def test_a_job_whose_upload_never_committed_does_nothing(db: Settings) -> None:
    result = await service.process(
        require_pool(), str(uuid.uuid4()), DocumentSettings(), asyncio.Semaphore(1),
        visible_within_s=0.3,
    )  # fmt: skip
    assert result["status"] == "unknown"
    assert "its upload failed" in result["note"]


async def test_a_document_waiting_for_a_conversion_slot_stays_queued(db: Settings) -> None:
    """A job that waits for one of the task runner's conversion slots has not begun converting:
    the document is `queued`. The try is counted (as arq counts it), so that a document whose
    tries keep being interrupted, waiting or converting, fails before arq stops trying."""
    async with require_pool().acquire() as conn:
        document_id = await store.create_document(
            conn, filename="note.txt", content_type="text/plain", kind="txt", data=b"hello"
        )
    slots = asyncio.Semaphore(1)
    await slots.acquire()  # another document is converting
    job = asyncio.create_task(
        service.process(require_pool(), str(document_id), DocumentSettings(), slots)
    )
    await asyncio.sleep(0.5)
    assert not job.done()
    async with require_pool().acquire() as conn:
        waiting = await store.get_document(conn, document_id)
    assert waiting is not None
    assert (waiting.status, waiting.attempts, waiting.started_at) == ("queued", 1, None)
    slots.release()
    result = await asyncio.wait_for(job, timeout=120)
    assert result["status"] == "done"
    async with require_pool().acquire() as conn:
        converted = await store.get_document(conn, document_id)
    assert converted is not None
    assert (converted.status, converted.attempts) == ("done", 1)


async def test_a_job_interrupted_while_it_waits_for_a_slot_counts_as_a_try(db: Settings) -> None:
    """arq counts a try of the job whether it was cut while converting or while waiting for a
    slot, and drops the job after its third. So the third try fails the document even if the
    two before were cut while waiting: it never stays `queued` with no job left to run it."""
    async with require_pool().acquire() as conn:
        document_id = await store.create_document(
            conn, filename="note.txt", content_type="text/plain", kind="txt", data=b"hello"
        )
    slots = asyncio.Semaphore(1)
    await slots.acquire()  # every slot is busy for as long as this test runs
    for tried in (1, 2):  # a try cut by a task runner's stop while it waits
        job = asyncio.create_task(
            service.process(require_pool(), str(document_id), DocumentSettings(), slots)
        )
        async with asyncio.timeout(30):
            while True:
                async with require_pool().acquire() as conn:
                    waiting = await store.get_document(conn, document_id)
                assert waiting is not None
                if waiting.attempts == tried:
                    break
                await asyncio.sleep(0.02)
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    last = await asyncio.wait_for(
        service.process(require_pool(), str(document_id), DocumentSettings(), slots), 30
    )
    assert last["status"] == "failed"
    async with require_pool().acquire() as conn:
        failed = await store.get_document(conn, document_id)
    assert failed is not None
    assert (failed.status, failed.attempts) == ("failed", 3)


async def test_an_error_no_conversion_foresees_fails_the_document(
    db: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a full disk (or any error but a conversion's own) left the document `processing`
    for good: arq does not run a job again after it raised."""
    async with require_pool().acquire() as conn:
        document_id = await store.create_document(
            conn, filename="note.txt", content_type="text/plain", kind="txt", data=b"hello"
        )

    async def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service, "convert", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await service.process(require_pool(), str(document_id), DocumentSettings(),
                              asyncio.Semaphore(1))  # fmt: skip
    async with require_pool().acquire() as conn:
        failed = await store.get_document(conn, document_id)
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error is not None
    assert "unexpectedly (OSError" in failed.error
