"""A task runner's start seals the budget webhook secrets that an older version stored in the
clear, once WEBHOOK_SECRET_KEYS is set; without it, it leaves them and says so. Real processes,
read through their JSON logs."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from ..conftest import TEST_SECRET_BOX, Settings
from ..support.processes import taskrunners
from ..support.upstream import Upstream
from .test_processes import process_env

CLEAR_SECRET = "whsec-stored-before-sealing"
WARNED = (
    "budget webhook secrets are stored in the clear: set WEBHOOK_SECRET_KEYS and the task "
    "runner seals them when it starts"
)
SEALED = "budget webhook secrets sealed with the current key"


async def _stored(conn: asyncpg.Connection) -> tuple[int, str, str | None]:
    row = await conn.fetchrow(
        "SELECT project_id, webhook_secret, webhook_secret_key_id FROM budgets"
    )
    assert row is not None
    return row["project_id"], row["webhook_secret"], row["webhook_secret_key_id"]


async def test_a_start_with_keys_seals_the_secrets_stored_in_the_clear(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    url = settings.core.database_url
    conn = await asyncpg.connect(url)
    try:
        project_id = await conn.fetchval(
            "INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id"
        )
        await conn.execute(  # as a version before sealing wrote it
            "INSERT INTO budgets (project_id, name, period, limit_usd, webhook_url,"
            " webhook_secret) VALUES ($1, 'b', 'day', 1, 'https://hooks.example/b', $2)",
            project_id,
            CLEAR_SECRET,
        )
        keyless = process_env(url, upstream, WEBHOOK_SECRET_KEYS="")
        (tmp_path / "keyless").mkdir()
        async with taskrunners(1, keyless, tmp_path / "keyless") as (runner,):
            await runner.wait_for("task runner ready")
            assert await runner.terminate() == 0
        assert runner.said(WARNED)
        assert await _stored(conn) == (project_id, CLEAR_SECRET, None)

        (tmp_path / "keyed").mkdir()
        async with taskrunners(1, process_env(url, upstream), tmp_path / "keyed") as (runner,):
            await runner.wait_for("task runner ready")
            assert await runner.terminate() == 0
        assert [e["budgets"] for e in runner.events() if e.get("event") == SEALED] == [1]
        assert not runner.said(WARNED)
        _, stored, key_id = await _stored(conn)
        assert CLEAR_SECRET not in stored
        assert key_id == TEST_SECRET_BOX.current
        assert TEST_SECRET_BOX.open(stored, key_id, project_id) == CLEAR_SECRET
    finally:
        await conn.close()
