"""Fixtures shared by every test: a real PostgreSQL and a real Redis, never stand-ins.

The server comes from TEST_DATABASE_URL (default: postgresql://postgres@127.0.0.1:5432/postgres).
Each test session creates throwaway databases there and drops them at the end. Redis comes from
TEST_REDIS_URL (default: redis://127.0.0.1:6379/13): tests use that database index only and
flush it around each use. A missing server fails the tests with a message; it never skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import database
from aiserver.core_db.migrations import apply_migrations
from aiserver.core_db.settings import Section, load_settings
from aiserver.taskrunner.settings import TaskRunnerSettings

from .support.upstream import Upstream

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
S = TypeVar("S", bound=Section)

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(TEST_DATABASE_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at TEST_DATABASE_URL={TEST_DATABASE_URL}: {exc}. "
            "Start it (see README, 'Tests') or point TEST_DATABASE_URL at a server.",
            pytrace=False,
        )


async def create_database(prefix: str = "aiserver_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(TEST_DATABASE_URL, name)


async def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


#: The settings of every test: the API's, which hold every section (the task runner's are a part).
Settings = ApiSettings


def replace_settings(settings: S, **changes: object) -> S:
    """`settings` with some variables changed, each in the section that holds it
    (`replace_settings(s, model_cost_source_url=...)` changes `s.costs`)."""
    own: dict[str, object] = {}
    rest = dict(changes)
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if isinstance(value, Section):
            mine = {key: rest.pop(key) for key in list(rest) if key in value.__struct_fields__}
            if mine:
                own[name] = replace_settings(value, **mine)
        elif name in rest:
            own[name] = rest.pop(name)
    assert not rest, f"no such setting: {sorted(rest)}"
    return msgspec.structs.replace(settings, **own)


def make_settings(database_url: str, **overrides: object) -> Settings:
    env = {"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL, "LOG_FORMAT": "console"}
    settings = load_settings(Settings, env)
    return replace_settings(settings, **overrides) if overrides else settings


def taskrunner_settings(settings: Settings) -> TaskRunnerSettings:
    """The task runner's part of a test's settings."""
    return TaskRunnerSettings(
        core=settings.core, costs=settings.costs, documents=settings.documents
    )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def session_database_url() -> AsyncIterator[str]:
    """One migrated database for the whole session (tests that only read or clean up after)."""
    url = await create_database()
    try:
        await apply_migrations(make_settings(url).core)
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A brand-new database with nothing in it, dropped after the test."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def migrated_database_url(empty_database_url: str) -> str:
    """A new database with every migration applied and no data."""
    await apply_migrations(make_settings(empty_database_url).core)
    return empty_database_url


@pytest.fixture
def settings(migrated_database_url: str) -> Settings:
    return make_settings(migrated_database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Settings]:
    """An open pool on a freshly migrated database; yields its settings."""
    async with database(settings.core):
        yield settings


@pytest.fixture
def subprocess_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes that should use this test's database and Redis."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.core.database_url,
        REDIS_URL=settings.core.redis_url,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the test Redis database, flushed before and after the test."""
    client = Redis.from_url(TEST_REDIS_URL)
    try:
        await client.flushdb()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(
            f"Redis is not reachable at TEST_REDIS_URL={TEST_REDIS_URL}: {exc}", pytrace=False
        )
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()
