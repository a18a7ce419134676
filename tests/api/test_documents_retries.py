"""A document whose conversion keeps stopping its task runner ends failed, not processing forever.

arq runs a job again when the worker that held it died (once the job's in-progress mark
expires), up to the document job's try limit (`aiserver.documents.service.JOB_MAX_TRIES`); past
that it drops the job without calling it. The document was marked processing by the try that
died, so nothing would ever change it again: the document's own count of its conversions
(MAX_CONVERSIONS, 2) fails it on the try after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from arq.constants import in_progress_key_prefix
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from ..conftest import Settings, child_env
from ..support.docs import docx
from .test_documents import DOCX, upload

Client = AsyncTestClient  # type: ignore[type-arg]


async def _status(conn: asyncpg.Connection, document_id: str) -> tuple[str, int]:
    row = await conn.fetchrow(
        "SELECT status, attempts FROM documents WHERE id = $1::uuid", document_id
    )
    assert row is not None
    return row["status"], row["attempts"]


def _kill_tools_under(tmp: Path) -> None:
    """End the LibreOffice this test's workers left: it runs in its own session, with its files
    under `tmp` (the workers' TMPDIR), so the SIGKILL of a worker does not reach it."""
    found = subprocess.run(
        ["pgrep", "-f", str(tmp)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


async def _worker_killed_while_converting(
    settings: Settings, conn: asyncpg.Connection, document_id: str, attempt: int, tmp: Path
) -> bool:
    """Run a burst worker; SIGKILL it once the document is processing for the `attempt`th time.
    True when it was killed, False when it ended by itself."""
    env = dict(child_env(settings), TMPDIR=str(tmp))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.taskrunner.cli", "--burst", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            if await _status(conn, document_id) == ("processing", attempt):
                os.killpg(proc.pid, signal.SIGKILL)
                return True
            await asyncio.sleep(0.02)
        raise AssertionError(f"the worker neither converted nor ended (try {attempt})")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        _kill_tools_under(tmp)


async def test_a_document_that_kills_its_workers_ends_failed(
    client: Client, api_settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    response = await upload(client, "crash.docx", docx("the worker dies on this one"), DOCX)
    assert response.status_code == 202, response.text
    document_id = response.json()["id"]
    redis = Redis.from_url(api_settings.core.redis_url)
    try:
        killed = 0
        for attempt in range(1, 5):  # two conversions killed, the third try fails it
            if not await _worker_killed_while_converting(
                api_settings, pg, document_id, attempt, tmp_path
            ):
                break
            killed += 1
            # a dead worker's marks of its jobs expire after an hour: expire them now
            marks = await redis.keys(f"{in_progress_key_prefix}*")
            if marks:
                await redis.delete(*marks)
    finally:
        await redis.aclose()
    status = (await client.get(f"/v1/documents/{document_id}")).json()
    assert (status["status"], status["error"]) == (
        "failed",
        f"the conversion was interrupted {killed} times (the task runner stopped or was killed "
        "while the document waited for a conversion slot or was converted)",
    ), status
