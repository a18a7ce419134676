"""What the end-to-end tests share: a database that `dev` must create, dropped at the end."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from ..conftest import TEST_DATABASE_URL, _admin, _with_database, drop_database


@pytest.fixture
async def dev_database_url() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet: dev must create it. Dropped at the end."""
    conn = await _admin()  # fails the test, saying why, when PostgreSQL does not answer
    await conn.close()
    url = _with_database(TEST_DATABASE_URL, f"aiserver_test_dev_{uuid.uuid4().hex[:12]}")
    try:
        yield url
    finally:
        await drop_database(url)
