"""Fixtures shared by every test: a real PostgreSQL and a real Redis, never stand-ins.

The server comes from TEST_DATABASE_URL (default: postgresql://postgres@127.0.0.1:5432/postgres).
Each test session creates throwaway databases there and drops them at the end. A migrated
database is not migrated per test: the session migrates one template database once and each test
gets a clone of it (CREATE DATABASE ... TEMPLATE); tests that want the bundled catalog seeded
clone a second template, migrated and seeded, made only when one asks. `empty_database_url` is
truly empty (the migration tests start there).

Redis comes from TEST_REDIS_URL (default: redis://127.0.0.1:6379/13): tests use that database
index only and flush it around each use. A missing server fails the tests with a message; it
never skips them. The tests run in parallel (`hatch test` starts one pytest-xdist worker per
CPU): worker N uses the database index N above the given one (13, 14, ... by default), and every
throwaway PostgreSQL database is named after its worker's process, so workers never meet.

Budget webhook secrets are sealed with the tests' own key (`TEST_WEBHOOK_SECRET_KEYS`), in the
settings of the tests and in the environment of every service process they start.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aiserver.api.settings import ApiSettings
from aiserver.core_db import logging as core_logging
from aiserver.core_db.database import database
from aiserver.core_db.migrations import apply_migrations
from aiserver.core_db.settings import Section, load_settings
from aiserver.costs.refresh import seed_from_snapshot
from aiserver.ledger.webhooks.sealing import SecretBox
from aiserver.taskrunner.settings import TaskRunnerSettings

from .support.upstream import Upstream

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
S = TypeVar("S", bound=Section)


#: Redis has 16 databases unless configured otherwise: indexes 0 to 15.
REDIS_DATABASES: Final = 16
_DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/13"


def _redis_index(url: str) -> int:
    """The database index of a TEST_REDIS_URL (`redis://host:port/INDEX`, 0 when absent)."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or "db=" in parts.query
        or not (path == "" or path.isdigit())
    ):
        raise RuntimeError(
            f"TEST_REDIS_URL={url}: give it as redis://HOST:PORT/INDEX (the tests run in "
            "parallel, each worker on the database index INDEX + its number)"
        )
    return int(path or 0)


def worker_redis_url(url: str, worker: str) -> str:
    """`url` with the Redis database index of the pytest-xdist `worker` (gw0, gw1, ...; "" when
    the tests run in one process): the given one plus the worker's number, so that parallel
    workers never flush each other's keys."""
    if not worker:
        return url
    index = _redis_index(url) + int(worker.removeprefix("gw"))
    if index >= REDIS_DATABASES:
        raise RuntimeError(
            f"TEST_REDIS_URL={url}: pytest-xdist worker {worker} would need Redis database "
            f"{index}, past the {REDIS_DATABASES} a Redis server has by default; give a lower "
            "index, or fewer workers (hatch test -- -n 2)"
        )
    return urlunsplit(urlsplit(url)._replace(path=f"/{index}"))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`hatch test` asks pytest-xdist for one worker per CPU (`-n logical`): as many, but no
    more than the Redis databases from TEST_REDIS_URL's index up to the last (3 from 13), so
    that a machine of many CPUs runs the suite too. PYTEST_XDIST_AUTO_NUM_WORKERS overrides."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    room = REDIS_DATABASES - _redis_index(os.environ.get("TEST_REDIS_URL", _DEFAULT_REDIS_URL))
    return max(1, min(cpus or 1, room))


TEST_REDIS_URL = worker_redis_url(
    os.environ.get("TEST_REDIS_URL", _DEFAULT_REDIS_URL),
    os.environ.get("PYTEST_XDIST_WORKER", ""),
)

#: The key that seals budget webhook secrets in tests (32 bytes in base64; a test, not a secret).
TEST_WEBHOOK_SECRET_KEYS = "dGVzdHMgb2YgYWlzZXJ2ZXIsIG5vdCBhIHNlY3JldCE="
os.environ["WEBHOOK_SECRET_KEYS"] = TEST_WEBHOOK_SECRET_KEYS  # for the processes tests start
#: What the tests' settings seal and open webhook secrets with.
TEST_SECRET_BOX = SecretBox.of([TEST_WEBHOOK_SECRET_KEYS])

#: A logger cached on its first use keeps the processors of then, and a later test's
#: `capture_logs` would not see it: whether a test sees its log lines would hang on which tests
#: ran before it.
core_logging.CACHE_LOGGERS = False


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


async def create_database(prefix: str = "aiserver_test", *, template: str | None = None) -> str:
    """A new database, empty, or a copy of the database at the URL `template` (no session may be
    connected to that one while it is copied: PostgreSQL refuses, so the templates here take no
    connections at all)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    source = f' TEMPLATE "{_name(template)}"' if template else ""
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"{source}')
    except asyncpg.ObjectInUseError as exc:
        assert template is not None
        sessions = await conn.fetch(
            "SELECT pid, application_name, state, query FROM pg_stat_activity WHERE datname = $1",
            _name(template),
        )
        pytest.fail(
            f"cannot clone the template database {_name(template)}: {exc}. PostgreSQL copies a "
            "database only while no other session is connected to it; connected now: "
            f"{[dict(s) for s in sessions]}. Close every connection a template fixture opens "
            "before it is sealed (tests/conftest.py, _template).",
            pytrace=False,
        )
    finally:
        await conn.close()
    return _with_database(TEST_DATABASE_URL, name)


async def drop_database(url: str) -> None:
    await _on_server(f'DROP DATABASE IF EXISTS "{_name(url)}" WITH (FORCE)')


@pytest.fixture
async def dev_database_url() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet: `dev` must create it. Dropped at the end."""
    conn = await _admin()  # fails the test, saying why, when PostgreSQL does not answer
    await conn.close()
    url = _with_database(TEST_DATABASE_URL, f"aiserver_test_dev_{uuid.uuid4().hex[:12]}")
    try:
        yield url
    finally:
        await drop_database(url)


async def _on_server(*statements: str) -> None:
    conn = await _admin()
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _name(url: str) -> str:
    return url.rpartition("/")[2]


@contextlib.asynccontextmanager
async def _database(template: str | None = None) -> AsyncIterator[str]:
    """A database for one test (empty, or a clone of `template`), dropped after it."""
    url = await create_database(template=template)
    try:
        yield url
    finally:
        await drop_database(url)


@contextlib.asynccontextmanager
async def _template(
    build: Callable[[str], Awaitable[object]], *, source: str | None = None
) -> AsyncIterator[str]:
    """A template database for the session: created (empty, or a copy of `source`), filled by
    `build(url)`, then sealed: marked a template that takes no connections, so that nothing can
    be connected to it when a test clones it. Dropped at the end of the session (a session that
    was killed leaves it: `ALTER DATABASE ... IS_TEMPLATE false`, then `DROP DATABASE`)."""
    url = await create_database("aiserver_template", template=source)
    name = _name(url)
    try:
        await build(url)  # closes every connection it opens
        await _on_server(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        yield url
    finally:
        await _on_server(
            f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false',  # a template cannot be dropped
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


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
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "LOG_FORMAT": "console",
        "WEBHOOK_SECRET_KEYS": TEST_WEBHOOK_SECRET_KEYS,
    }
    settings = load_settings(Settings, env)
    return replace_settings(settings, **overrides) if overrides else settings


def taskrunner_settings(settings: Settings) -> TaskRunnerSettings:
    """The task runner's part of a test's settings."""
    return TaskRunnerSettings(
        core=settings.core, costs=settings.costs, documents=settings.documents,
        ledger=settings.ledger,
    )  # fmt: skip


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _migrate(url: str) -> None:
    await apply_migrations(make_settings(url).core)


async def _seed(url: str) -> None:
    assert await seed_from_snapshot(make_settings(url).core) is not None, "the seed did nothing"


@pytest.fixture(scope="session")
async def migrated_template_url() -> AsyncIterator[str]:
    """Every migration applied, no data: the template that migrated databases are cloned from."""
    async with _template(_migrate) as url:
        yield url


@pytest.fixture(scope="session")
async def seeded_template_url(migrated_template_url: str) -> AsyncIterator[str]:
    """The migrated template with the bundled snapshot seeded (made only if a test asks)."""
    async with _template(_seed, source=migrated_template_url) as url:
        yield url


@pytest.fixture(scope="session")
async def session_database_url(migrated_template_url: str) -> AsyncIterator[str]:
    """One migrated database for the whole session (tests that only read or clean up after)."""
    async with _database(migrated_template_url) as url:
        yield url


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A brand-new database with nothing in it, dropped after the test."""
    async with _database() as url:
        yield url


@pytest.fixture
async def migrated_database_url(migrated_template_url: str) -> AsyncIterator[str]:
    """A new database with every migration applied and no data, dropped after the test."""
    async with _database(migrated_template_url) as url:
        yield url


@pytest.fixture
async def seeded_database_url(seeded_template_url: str) -> AsyncIterator[str]:
    """A new migrated database holding the bundled snapshot, as `seed_from_snapshot()` (or
    `aiserver-costs seed`) leaves it, dropped after the test."""
    async with _database(seeded_template_url) as url:
        yield url


@pytest.fixture
def settings(migrated_database_url: str) -> Settings:
    return make_settings(migrated_database_url)


@pytest.fixture
def seeded_settings(seeded_database_url: str) -> Settings:
    """Like `settings`, on a database where the bundled snapshot is seeded already."""
    return make_settings(seeded_database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Settings]:
    """An open pool on a freshly migrated database; yields its settings."""
    async with database(settings.core):
        yield settings


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes that should use the database and Redis of `settings`."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.core.database_url,
        REDIS_URL=settings.core.redis_url,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def subprocess_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes that should use this test's database and Redis."""
    return child_env(settings)


@pytest.fixture
def seeded_subprocess_env(seeded_settings: Settings) -> dict[str, str]:
    """Like `subprocess_env`, on a database where the bundled snapshot is seeded already."""
    return child_env(seeded_settings)


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
