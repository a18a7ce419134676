"""The conversion job against the real database: it waits for an upload that is still committing,
and ends within its bounds when another session holds its document's row."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
import uuid

import asyncpg
import pytest
import structlog

from aiserver.core_db.database import require_pool
from aiserver.documents import service, store
from aiserver.documents.errors import DatabaseStalled, StalledBeforeTheTry
from aiserver.documents.service import JOB_MAX_TRIES, JobBounds
from aiserver.documents.settings import DocumentSettings

from ..conftest import Settings
from ..support.documents import lock_waits, note, row_locked


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
    """The document counts a try of its job whether it was cut while converting or while
    waiting for a slot. So its third try fails it even if the two before were cut while
    waiting: it never stays `queued` until arq, which drops a job after its last try, has
    none left to run it."""
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


async def test_the_last_try_arq_runs_fails_the_document_whatever_its_own_count(
    db: Settings,
) -> None:
    """arq drops the job after JOB_MAX_TRIES without calling it. Should tries cut before they
    reached the document have used them up, the last one fails it rather than convert it: a
    conversion cut then would leave it `queued` or `processing` for good."""
    async with require_pool().acquire() as conn:
        first, second = [
            await store.create_document(
                conn, filename="note.txt", content_type="text/plain", kind="txt", data=b"hello"
            )
            for _ in range(2)
        ]
    slots = asyncio.Semaphore(1)
    last = await service.process(require_pool(), str(first), DocumentSettings(), slots,
                                 job_try=JOB_MAX_TRIES)  # fmt: skip
    before = await asyncio.wait_for(
        service.process(require_pool(), str(second), DocumentSettings(), slots,
                        job_try=JOB_MAX_TRIES - 1),
        timeout=120,
    )  # fmt: skip
    async with require_pool().acquire() as conn:
        failed = await store.get_document(conn, first)
        converted = await store.get_document(conn, second)
    assert last["status"] == "failed"
    assert failed is not None
    assert (failed.status, failed.attempts, failed.started_at) == ("failed", 1, None)
    assert failed.error == (
        f"the conversion job was interrupted {JOB_MAX_TRIES - 1} times, {JOB_MAX_TRIES - 1} of "
        "them before it reached the document (the task runner stopped or was killed, or the "
        "database stalled), and no try of it is left"
    )
    assert before["status"] == "done"
    assert converted is not None
    assert (converted.status, converted.attempts) == ("done", 1)


#: Bounds small enough for a test: lock waits of half a second.
SMALL = JobBounds(lock_wait_s=0.5, step_s=2.0, save_s=5.0)


async def _note() -> uuid.UUID:
    async with require_pool().acquire() as conn:
        return await note(conn)


async def test_a_row_lock_held_when_a_try_begins_leaves_the_document_queued_for_the_next(
    db: Settings,
) -> None:
    """Before, the job's first statement waited for the row as long as the other session held
    it, into arq's timeout: the document stayed `queued`, its job gone. Now the try gives up
    after the lock wait, writes nothing (the document is `queued` as it was, its try not
    counted) and says that the job should run again (`StalledBeforeTheTry`)."""
    document_id = await _note()
    began = time.monotonic()
    async with row_locked(db.core.database_url, document_id):
        with pytest.raises(StalledBeforeTheTry, match=r"^counting the try: another database"):
            await service.process(require_pool(), str(document_id), DocumentSettings(),
                                  asyncio.Semaphore(1), bounds=SMALL)  # fmt: skip
    assert time.monotonic() - began < SMALL.most_s(SMALL.step_s)
    async with require_pool().acquire() as conn:
        queued = await store.get_document(conn, document_id)
    assert queued is not None
    assert (queued.status, queued.attempts, queued.error) == ("queued", 0, None)


async def test_a_row_lock_held_when_the_last_try_begins_fails_the_document_within_the_bounds(
    db: Settings,
) -> None:
    """On the job's last try there is no other: the try gives up after the lock wait and
    fails the document, once the other session lets go of it."""
    document_id = await _note()
    began = time.monotonic()
    async with row_locked(db.core.database_url, document_id):
        job = asyncio.create_task(
            service.process(require_pool(), str(document_id), DocumentSettings(),
                            asyncio.Semaphore(1), job_try=JOB_MAX_TRIES, bounds=SMALL)
        )  # fmt: skip
        async with asyncio.timeout(10):  # the try gave up: it fails
            while not await lock_waits(db.core.database_url, "status = 'failed'"):
                assert not job.done()
                await asyncio.sleep(0.02)
    with pytest.raises(DatabaseStalled, match=r"^counting the try: another database session"):
        await asyncio.wait_for(job, timeout=10)
    assert not isinstance(job.exception(), StalledBeforeTheTry)
    assert time.monotonic() - began < 10
    async with require_pool().acquire() as conn:
        failed = await store.get_document(conn, document_id)
    assert failed is not None
    assert (failed.status, failed.attempts) == ("failed", 0)
    assert failed.error == (
        "the conversion failed unexpectedly (DatabaseStalled: counting the try: another "
        "database session held a lock on the document for more than 0.5 s); upload it again"
    )


async def test_a_row_lock_held_throughout_ends_the_job_within_its_bounds(db: Settings) -> None:
    """While the other session holds the row, nothing can write the document: the job ends
    all the same, within its bounds, with the error, and says that the document is left."""
    document_id = await _note()
    began = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        async with row_locked(db.core.database_url, document_id):
            with pytest.raises(DatabaseStalled, match=r"^counting the try"):
                await service.process(require_pool(), str(document_id), DocumentSettings(),
                                      asyncio.Semaphore(1), job_try=JOB_MAX_TRIES,
                                      bounds=SMALL)  # fmt: skip
    took = time.monotonic() - began
    assert 2 * SMALL.lock_wait_s <= took < 2 * SMALL.most_s(SMALL.step_s)
    (left,) = [e for e in logs if e["log_level"] == "error"]
    assert left["event"] == "document left unfinished: it could not be marked failed"
    assert "marking the document failed: another database session held a lock" in left["error"]
    async with require_pool().acquire() as conn:
        untouched = await store.get_document(conn, document_id)
    assert untouched is not None
    assert (untouched.status, untouched.attempts) == ("queued", 0)


async def test_a_statement_that_does_not_answer_is_cut_at_its_step_s_bound(
    db: Settings,
) -> None:
    """A statement that never answers (here: waiting on a lock longer than the step may take,
    as a connection that hangs would) is cut at the step's bound, on the server as well."""
    document_id = await _note()
    hanging = JobBounds(lock_wait_s=30.0, step_s=0.5, save_s=5.0)
    began = time.monotonic()
    async with row_locked(db.core.database_url, document_id):
        with pytest.raises(DatabaseStalled, match=r"did not answer within 0\.5 s"):
            await service.process(require_pool(), str(document_id), DocumentSettings(),
                                  asyncio.Semaphore(1), bounds=hanging)  # fmt: skip
        assert time.monotonic() - began < 2 * hanging.most_s(hanging.step_s)
        assert await lock_waits(db.core.database_url, "UPDATE documents") == 0  # none left waiting


async def test_no_free_connection_is_a_stall_too(db: Settings) -> None:
    document_id = await _note()
    pool = require_pool()
    held = [await pool.acquire() for _ in range(db.core.database_pool_max_size)]
    try:
        began = time.monotonic()
        with pytest.raises(DatabaseStalled, match=r"no connection free within 0\.5 s"):
            await service.process(pool, str(document_id), DocumentSettings(),
                                  asyncio.Semaphore(1), bounds=SMALL)  # fmt: skip
        assert time.monotonic() - began < 2 * SMALL.most_s(SMALL.step_s)
    finally:
        for conn in held:
            await pool.release(conn)


async def test_a_done_document_is_never_marked_failed(db: Settings) -> None:
    """A failure written late (by a try that gave up) leaves a document that is done as it is."""
    document_id = await _note()
    async with require_pool().acquire() as conn:
        await store.save_outputs(conn, document_id, pdf=b"%PDF-1.7", page_count=1, text="hello",
                                 text_truncated=False, pages=[])  # fmt: skip
        await store.mark_failed(conn, document_id, "too late")
        done = await store.get_document(conn, document_id)
    assert done is not None
    assert (done.status, done.error) == ("done", None)
