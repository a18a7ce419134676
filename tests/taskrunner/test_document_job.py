"""The document job run by a real task runner (arq on Redis, PostgreSQL): its tries as arq counts
them and as the document does, and a database step that another session's row lock stalls."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.jobs import Job, JobResult

from aiserver.documents import store
from aiserver.documents.jobs import PROCESS_JOB, process_job_id
from aiserver.documents.service import JOB_BOUNDS, MAX_CONVERSIONS
from aiserver.documents.store import Document
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.worker import startup

from ..conftest import Settings, replace_settings
from ..support.documents import lock_wait_began, note, row_locked
from .test_worker import make_worker, run_burst
from .test_worker import redis as redis  # the fixture


async def slots_taken(ctx: dict[str, Any]) -> None:
    """The task runner's start, then its one conversion slot taken (another document converting,
    for as long as this task runner runs): a job that gets its row waits for the slot."""
    await startup(ctx)
    await ctx["document_slots"].acquire()


async def run_until(settings: Settings, stop: Callable[[], Awaitable[bool]]) -> None:
    """Run a task runner until `stop()` holds, then stop it as a shutdown does: the job it runs
    is cancelled, and arq runs it again (its next try)."""
    worker = make_worker(settings, burst=False, on_startup=slots_taken)
    main = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(60):
            while not await stop():
                if main.done():
                    main.result()  # the task runner failed: say why
                await asyncio.sleep(0.02)
    finally:
        worker.allow_pick_jobs = False  # let a poll under way finish before it is cancelled
        await asyncio.sleep(0.1)
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        await worker.close()  # cancels the running job: arq puts it back in the queue


async def document(conn: asyncpg.Connection, document_id: uuid.UUID) -> Document:
    found = await store.get_document(conn, document_id)
    assert found is not None
    return found


async def enqueued(redis: ArqRedis, document_id: uuid.UUID) -> str:
    """The document's conversion job, enqueued as the API does; its id."""
    job_id = process_job_id(str(document_id))
    await redis.enqueue_job(PROCESS_JOB, str(document_id), _job_id=job_id, _queue_name=QUEUE_NAME)
    return job_id


async def result(redis: ArqRedis, job_id: str) -> JobResult:
    info = await Job(job_id, redis, _queue_name=QUEUE_NAME).result_info()
    assert info is not None
    return info


async def test_tries_cut_before_they_reach_the_document_cost_it_no_conversion(
    settings: Settings, redis: ArqRedis
) -> None:
    """arq counts every try of the job, the document only those that reached its row. Before,
    a try cut while it waited for its upload to commit made arq's count one ahead: the
    document's second conversion fell on arq's last try, and when that was cut too, arq
    dropped the job ('max 3 retries exceeded') and the document stayed `queued` for good. The
    document gets its MAX_CONVERSIONS tries, and the one after fails it, whatever arq counted."""
    cfg = replace_settings(settings, document_max_concurrent=1)
    conn = await asyncpg.connect(cfg.core.database_url)
    try:
        upload = conn.transaction()  # the API's: the job is enqueued before the row commits
        await upload.start()
        document_id = await note(conn)
        job_id = await enqueued(redis, document_id)

        async def arq_tries() -> int:
            return int(await redis.get(retry_key_prefix + job_id) or 0)

        async def waits_for_the_row() -> bool:
            if await arq_tries() < 1:
                return False
            await asyncio.sleep(0.5)  # the job looks for a row that is not committed yet
            return True

        await run_until(cfg, waits_for_the_row)
        await upload.commit()
        for counted in range(1, MAX_CONVERSIONS + 1):

            async def waits_for_a_slot(counted: int = counted) -> bool:
                return (await document(conn, document_id)).attempts == counted

            await run_until(cfg, waits_for_a_slot)
            assert (await arq_tries(), (await document(conn, document_id)).status) == (
                counted + 1,
                "queued",
            )
        worker = await run_burst(make_worker(cfg, on_startup=slots_taken))
        failed = await document(conn, document_id)
    finally:
        await conn.close()
    assert (failed.status, failed.attempts) == ("failed", MAX_CONVERSIONS + 1)
    assert failed.error is not None
    assert f"interrupted {MAX_CONVERSIONS} times" in failed.error
    assert worker.jobs_complete == 1
    last = await result(redis, job_id)
    assert (last.job_try, last.success) == (MAX_CONVERSIONS + 2, True)
    assert last.result["status"] == "failed"


async def test_a_row_lock_held_while_the_outputs_are_stored_fails_the_document(
    settings: Settings, redis: ArqRedis
) -> None:
    """Before, a step of the job waited on the database without end: another session holding the
    document's row ran the job into arq's timeout, which arq does not run again, and the
    document stayed `processing` for good. Now the step gives up after its lock wait and the
    document is failed with the reason, as soon as its row can be written."""
    url = settings.core.database_url
    conn = await asyncpg.connect(url)
    try:
        document_id = await note(conn)
        job_id = await enqueued(redis, document_id)
        run = asyncio.create_task(run_burst(make_worker(settings)))
        async with asyncio.timeout(60):
            while (await document(conn, document_id)).status != "processing":
                await asyncio.sleep(0.01)
            async with row_locked(url, document_id):  # while LibreOffice converts
                # Timed on PostgreSQL's clock, from the storing step's wait to the failing
                # step's: a conversion slowed by a busy machine is no part of the lock wait.
                stored: datetime | None = None
                failing: datetime | None = None
                while failing is None:
                    assert not run.done()
                    stored = stored or await lock_wait_began(url, "INSERT INTO document_pages")
                    failing = await lock_wait_began(url, "status = 'failed'")
                    await asyncio.sleep(0.02)
                assert stored is not None
                waited = (failing - stored).total_seconds()
            await run  # the other session let go while the job fails the document
        failed = await document(conn, document_id)
    finally:
        await conn.close()
    assert JOB_BOUNDS.lock_wait_s <= waited < JOB_BOUNDS.lock_wait_s + 10
    assert failed.status == "failed"
    assert failed.error is not None
    assert "DatabaseStalled: storing the outputs: another database session held a lock" in (
        failed.error
    )
    last = await result(redis, job_id)
    assert (last.job_try, last.success) == (1, False)
    assert "storing the outputs" in str(last.result)


async def test_a_row_lock_held_when_the_job_begins_leaves_the_document_to_its_next_try(
    settings: Settings, redis: ArqRedis
) -> None:
    """A database that stalls before the try is counted (here: another session holds the
    document's row past the lock wait) writes nothing: the document stays `queued`, and arq
    runs the job again after STALL_RETRY_S (`Retry`), which converts it once the row is free.
    Before, the document was failed for a stall that had passed ("upload it again")."""
    url = settings.core.database_url
    conn = await asyncpg.connect(url)
    try:
        document_id = await note(conn)
        async with asyncio.timeout(60):
            async with row_locked(url, document_id):
                job_id = await enqueued(redis, document_id)
                run = asyncio.create_task(run_burst(make_worker(settings)))
                # the first try gave up and asked to run again: the job is queued for later
                while (await redis.zscore(QUEUE_NAME, job_id) or 0) <= time.time() * 1000:
                    assert not run.done()
                    await asyncio.sleep(0.05)
                stalled = await document(conn, document_id)
            await run
        done = await document(conn, document_id)
    finally:
        await conn.close()
    assert (stalled.status, stalled.attempts, stalled.error) == ("queued", 0, None)
    assert (done.status, done.attempts) == ("done", 1)
    last = await result(redis, job_id)
    assert (last.job_try, last.success) == (2, True)
