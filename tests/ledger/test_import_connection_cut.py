"""`aiserver-ledger import` when PostgreSQL ends its connection between two statements (a
restart, pg_terminate_backend, an idle timeout): the command ends with the one line of a lost
connection, not asyncpg's traceback, and running it again records exactly what is missing.

PostgreSQL sends a FATAL message, then closes the socket. When asyncpg reads the message while
the connection is idle, it drops it, and the next statement fails before the close is read:
InternalClientError at a BEGIN or a query, or, at a COPY, InterfaceError "another operation is in
progress" from the ROLLBACK after it (see `aiserver.core_db.connections.lost_if_cut`). In a
real import that is a race of microseconds; here the test makes it at the exact point. It stops
the event loop while it terminates the backend, so that the message and the close are both
waiting on the socket, then lets the loop read the socket once before the statement goes out.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from aiserver.core_db.commands import connection_problem, run_command
from aiserver.core_db.database import database, require_pool
from aiserver.costs.catalog import load_catalog
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.importing import ImportSummary, import_lines
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.store import events as store

from ..conftest import Settings
from .test_import import env, line

__all__ = ["env"]  # a fixture

TOTAL: Final = 60
CHUNK: Final = 5
#: The chunk whose statement meets a connection ended just before it (1-based).
CUT_CHUNK: Final = 4
#: Imports tried before the test gives up on making the race (it hits at the first in practice).
TRIES: Final = 3
CUT_LINE: Final = (
    "aiserver-ledger import: the connection to the database failed (the server closed the "
    "connection between two statements); run the command again once PostgreSQL answers\n"
)


@pytest.fixture
async def ledger(env: dict[str, str], settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The pool of an import in this process, on the database of `env` (project `acme`)."""
    async with database(settings.core):
        yield require_pool()


def lines(prefix: str) -> list[tuple[int, bytes]]:
    return [
        (n, line(f"{prefix}{n}", "gpt-test-001", 1, 1, 1).encode()) for n in range(1, TOTAL + 1)
    ]


async def run_import(
    pool: asyncpg.Pool, recorder: UsageRecorder, prefix: str
) -> tuple[ImportSummary | None, Exception | None, ImportSummary | None]:
    """The import of `lines(prefix)`: its summary, or its failure and the summary after the last
    COMMIT before it."""
    async with pool.acquire() as conn:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE slug = 'acme'")
        catalog = await load_catalog(conn)
    kept: list[ImportSummary] = []

    def progress(summary: ImportSummary) -> None:
        kept.append(ImportSummary(events=summary.events, recorded=summary.recorded))

    try:
        summary = await import_lines(
            pool, project_id, lines(prefix), recorder=recorder, catalog=catalog,
            chunk_size=CHUNK, progress=progress,
        )  # fmt: skip
    except Exception as exc:
        return None, exc, kept[-1] if kept else None
    return summary, None, None


class Cut:
    """A hook on one of the import's statements: on its `at`th call, PostgreSQL ends the
    connection, and the loop reads what it sent once (its FATAL message, not yet its close)
    before the statement is sent."""

    def __init__(self, url: str, at: int = CUT_CHUNK) -> None:
        self.url = url
        self.at = at
        self.calls = 0

    async def __call__(self, conn: Any) -> None:
        self.calls += 1
        if self.calls != self.at:
            return
        pid = conn.get_server_pid()
        # The event loop stands still while the backend ends: its message and the end of the
        # socket are both there to read when it runs again.
        ended = threading.Thread(target=asyncio.run, args=(self._terminate(pid),))
        ended.start()
        ended.join()
        time.sleep(0.1)  # the process is gone, so is its socket: the close is on its way
        # This task runs first in the next iteration, then the socket's reader (one read: the
        # message); the close is read an iteration later, after this task sent its statement.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _terminate(self, pid: int) -> None:
        admin = await asyncpg.connect(self.url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 30000)", pid)
        finally:
            await admin.close()


def before(
    statement: str, recorder: UsageRecorder, cut: Cut, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cut` run just before each chunk's `statement`: `copy`, the COPY of its events, after
    its keys were claimed in the same transaction; `begin`, the BEGIN of its transaction."""
    if statement == "copy":
        copy_events = store.copy_events

        async def copy(conn: Any, rows: Any) -> None:
            await cut(conn)
            await copy_events(conn, rows)

        monkeypatch.setattr(store, "copy_events", copy)
    else:
        ensure = recorder.partitions.ensure

        async def ensure_then_begin(conn: Any, months: Any, **kwargs: Any) -> None:
            await ensure(conn, months, **kwargs)
            await cut(conn)  # the next statement is the transaction's BEGIN

        monkeypatch.setattr(recorder.partitions, "ensure", ensure_then_begin)


def chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in found:
        found.append(link)
        link = link.__cause__ or link.__context__
    return found


async def raising(exc: Exception) -> int:
    raise exc


async def printed(exc: Exception, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """What `aiserver-ledger import` makes of `exc`: its exit status and its stderr."""
    capsys.readouterr()
    command: Coroutine[Any, Any, int] = raising(exc)
    code = await asyncio.to_thread(run_command, "aiserver-ledger import", command, as_json=False)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("statement", ["copy", "begin"])
async def test_a_connection_ended_just_before_a_statement_is_one_line_and_the_rerun_completes(
    ledger: asyncpg.Pool,
    settings: Settings,
    statement: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`copy`: the chunk's COPY, after its keys were claimed in the same transaction. `begin`:
    the BEGIN of the chunk's transaction, on a connection ended while it was idle before it."""
    pool = ledger
    for attempt in range(1, TRIES + 1):
        prefix = f"{statement}-{attempt}-"
        recorder = UsageRecorder(LedgerSettings())
        before(statement, recorder, Cut(settings.core.database_url), monkeypatch)
        _, failure, kept = await run_import(pool, recorder, prefix)
        monkeypatch.undo()
        assert failure is not None, "the import ran to its end: the hook did not run"
        hit = any(isinstance(e, asyncpg.InternalClientError) for e in chain(failure))
        if hit:
            break
        # The loop read the message and the close together: the usual one line, tried again.
        assert connection_problem(failure) is not None, failure
    else:
        pytest.fail(
            f"in {TRIES} imports, asyncpg never read PostgreSQL's FATAL message apart from the "
            "close of the connection: the race this test makes did not happen"
        )

    assert isinstance(failure, asyncpg.ConnectionDoesNotExistError), failure
    assert await printed(failure, capsys) == (1, CUT_LINE)
    # whole chunks only: those before the cut, none of the cut one
    assert kept is not None
    assert kept.recorded == (CUT_CHUNK - 1) * CHUNK
    stored = await pool.fetchval(
        "SELECT count(*) FROM usage_events WHERE event_key LIKE $1", f"{prefix}%"
    )
    assert stored == kept.recorded

    summary, again, _ = await run_import(pool, UsageRecorder(LedgerSettings()), prefix)
    assert again is None, again
    assert summary is not None
    assert (summary.events, summary.recorded, summary.duplicate) == (
        TOTAL, TOTAL - kept.recorded, kept.recorded,
    )  # fmt: skip
    rows = await pool.fetchrow(
        "SELECT count(*) AS events, count(DISTINCT event_key) AS keys, sum(total_cost)::text AS"
        " total FROM usage_events WHERE event_key LIKE $1",
        f"{prefix}%",
    )
    assert rows is not None
    # each event once, each at 1*0.000002 + 1*0.000004
    assert dict(rows) == {"events": TOTAL, "keys": TOTAL, "total": f"{TOTAL * 0.000006:.6f}"}


async def test_a_misuse_of_an_open_connection_keeps_its_traceback(
    ledger: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two statements at once on the import's connection (a bug): its InterfaceError stays
    itself, so the command shows its traceback; the connection was not lost."""
    pool = ledger
    copy_events = store.copy_events
    others: list[asyncio.Future[Any]] = []

    async def copy(conn: Any, rows: Any) -> None:
        others.append(asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(0.2)")))
        await asyncio.sleep(0)  # it is sent
        await copy_events(conn, rows)

    monkeypatch.setattr(store, "copy_events", copy)
    _, failure, kept = await run_import(pool, UsageRecorder(LedgerSettings()), "misuse-")
    monkeypatch.undo()
    await asyncio.gather(*others, return_exceptions=True)
    assert type(failure) is asyncpg.InterfaceError, failure
    assert not any(isinstance(e, asyncpg.PostgresConnectionError) for e in chain(failure))
    with pytest.raises(asyncpg.InterfaceError, match="another operation is in progress"):
        await printed(failure, capsys)  # run_command raises it: its traceback is shown
    assert kept is None
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 0


async def test_a_connection_ended_as_the_import_starts_is_one_line_too(
    env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command itself, in this process: its first statement (the project's lookup) on a
    pooled connection that PostgreSQL ended while it was idle. One line, nothing recorded; the
    same command run again records the file."""
    from aiserver.ledger import projects
    from aiserver.ledger.cli.usage import COMMANDS

    path = tmp_path / "usage.jsonl"
    path.write_bytes(b"".join(text + b"\n" for _, text in lines("start-")))
    args = argparse.Namespace(
        file=str(path), project="acme", chunk_size=CHUNK, no_progress=True, json=False
    )
    find_project = projects.find_project
    cut = Cut(settings.core.database_url, at=1)

    async def cut_then_find(conn: Any, *more: Any) -> Any:
        await cut(conn)
        return await find_project(conn, *more)

    def command() -> int:  # in a thread of its own: the command runs its own event loop
        return run_command(
            "aiserver-ledger import", COMMANDS[("import", None)](settings.core, args),
            as_json=False,
        )  # fmt: skip

    monkeypatch.setattr(projects, "find_project", cut_then_find)
    capsys.readouterr()
    code = await asyncio.to_thread(command)
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert cut.calls == 1
    assert (code, err.splitlines(keepends=True)[-1:]) == (1, [CUT_LINE]), err
    assert "Traceback" not in err
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0
        assert await asyncio.to_thread(command) == 0
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == TOTAL
    finally:
        await conn.close()
