"""The in-memory catalog of a service: loaded from the database, reloaded on NOTIFY and by polling,
swapped whole so that concurrent readers never see a mix of two versions."""

from __future__ import annotations

import asyncio
import gc
import weakref
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.live import LiveCatalog
from aiserver.costs.pricing import Usage
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import document, models
from ..support.upstream import Upstream

N_MODELS = 12


def priced(version: int) -> bytes:
    """Every model's input price is version x 1e-6, so a result tells which version priced it."""
    return document(models(N_MODELS, input_cost_per_token=f"{version}e-06"))


@pytest.fixture
def cfg(settings: Settings, upstream: Upstream) -> Settings:
    return replace_settings(
        settings, model_cost_source_url=upstream.url, model_cost_fetch_retries=0
    )


async def _refresh(cfg: Settings, upstream: Upstream, version: int) -> None:
    upstream.serve(priced(version))
    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED, report


async def _load(cfg: Settings) -> Catalog:
    conn = await asyncpg.connect(cfg.core.database_url)
    try:
        return await load_catalog(conn)
    finally:
        await conn.close()


async def _eventually(predicate: object, *, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():  # type: ignore[operator]
        assert loop.time() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return loop.time() - started


async def test_history_in_the_database_prices_past_calls(cfg: Settings, upstream: Upstream) -> None:
    await _refresh(cfg, upstream, 1)
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await _refresh(cfg, upstream, 2)
    catalog = await _load(cfg)
    assert catalog.version == 2
    usage = Usage(input_tokens=1_000_000)
    old = calculate(catalog, CostRequest(model="gpt-test-000", usage=usage, at=between))
    new = calculate(catalog, CostRequest(model="gpt-test-000", usage=usage))
    assert (old.total, new.total) == (Decimal("1.000000"), Decimal("2.000000"))
    assert old.price_version != new.price_version
    assert len(catalog.history("gpt-test-000")) == 2


async def test_an_entry_is_decoded_exactly_when_first_read(
    cfg: Settings, upstream: Upstream
) -> None:
    """load_catalog keeps each entry's JSON text; a version that is read decodes it once."""
    await _refresh(cfg, upstream, 3)
    catalog = await _load(cfg)
    version = catalog.current["gpt-test-001"]
    assert isinstance(version.stored_entry, str)
    assert version.entry["input_cost_per_token"] == Decimal("0.000003")
    assert type(version.entry["input_cost_per_token"]) is Decimal
    assert version.entry is version.entry  # decoded once
    untouched = catalog.current["gpt-test-002"]
    assert untouched._decoded == []
    usage = Usage(input_tokens=1_000_000)
    assert calculate(catalog, CostRequest(model="gpt-test-002", usage=usage)).total == 3
    assert untouched._decoded != []


async def test_a_refresh_elsewhere_reaches_the_live_catalog_by_notify(
    cfg: Settings, upstream: Upstream
) -> None:
    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(
        cfg.core, cfg.costs, poll_interval=60
    )  # polling too slow to matter: only NOTIFY counts
    await live.start()
    try:
        assert (live.loaded, live.catalog.version, len(live.catalog)) == (True, 1, N_MODELS)
        await asyncio.sleep(0.2)  # the watcher is listening
        await _refresh(cfg, upstream, 2)
        waited = await _eventually(lambda: live.catalog.version == 2, timeout=5)
        assert waited < 5
    finally:
        await live.stop()


async def test_a_lost_notification_is_caught_by_polling(cfg: Settings, upstream: Upstream) -> None:
    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(cfg.core, cfg.costs, poll_interval=0.3)
    await live.start()
    try:
        conn = await asyncpg.connect(cfg.core.database_url)
        try:  # a change whose NOTIFY never arrives
            await conn.execute("UPDATE ai_cost_metadata SET catalog_version = catalog_version + 1")
        finally:
            await conn.close()
        await _eventually(lambda: live.catalog.version == 2, timeout=3)
    finally:
        await live.stop()


async def test_a_loaded_catalog_is_frozen_out_of_the_collectors_passes(
    cfg: Settings, upstream: Upstream
) -> None:
    """Each load freezes the heap (`gc.freeze`): the catalog's objects are no longer walked by
    the collector's passes, and a reload still frees the catalog it replaced."""
    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(cfg.core, cfg.costs, poll_interval=60)
    try:
        gc.unfreeze()
        await live.start()
        first = live.catalog
        assert first.version == 1
        assert gc.get_freeze_count() > 0
        assert not any(o is first._versions for o in gc.get_objects())  # walked by no pass
        gone = weakref.ref(first)
        del first
        await asyncio.sleep(0.2)  # the watcher is listening
        await _refresh(cfg, upstream, 2)
        await _eventually(lambda: live.catalog.version == 2, timeout=5)
        assert gone() is None  # the old catalog was freed
        assert not any(o is live.catalog._versions for o in gc.get_objects())
    finally:
        await live.stop()
        gc.unfreeze()


async def test_readers_never_see_a_mix_of_two_versions(cfg: Settings, upstream: Upstream) -> None:
    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(cfg.core, cfg.costs, poll_interval=0.05)
    await live.start()
    seen: set[int] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        usage = Usage(input_tokens=1_000_000)
        while not stop.is_set():
            catalog = live.catalog  # one reference for the whole request
            totals = {
                calculate(catalog, CostRequest(model=f"gpt-test-{i:03d}", usage=usage)).total
                for i in range(N_MODELS)
            }
            assert totals == {Decimal(catalog.version)}, (catalog.version, totals)
            seen.add(catalog.version)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    try:
        for version in range(2, 6):
            await _refresh(cfg, upstream, version)
            await _eventually(lambda v=version: live.catalog.version == v, timeout=5)  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*readers)
        await live.stop()
    assert seen >= {1, 5}


async def test_an_unreachable_database_leaves_an_empty_catalog_and_an_error(
    settings: Settings,
) -> None:
    down = replace_settings(
        settings, database_url="postgresql://postgres@127.0.0.1:1/x?password=S3cret"
    )
    live = LiveCatalog(down.core, down.costs, poll_interval=0.2)
    await live.start()
    try:
        assert live.loaded is False
        assert len(live.catalog) == 0
        assert live.last_error is not None  # for the log: where, and why
        assert (
            "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/x?password=***"
            in live.last_error
        )
        assert "S3cret" not in live.last_error
        # what clients are told (and an event's pricing note keeps): the error's type only
        assert live.not_ready() == "no catalog loaded yet: DatabaseUnavailable (see the API's log)"
    finally:
        await live.stop()


async def test_price_versions_are_chosen_by_database_time(
    cfg: Settings, upstream: Upstream
) -> None:
    await _refresh(cfg, upstream, 3)
    catalog = await _load(cfg)
    version = catalog.current["gpt-test-001"]
    just_before = version.valid_from - timedelta(microseconds=1)
    assert catalog.version_at("gpt-test-001", version.valid_from)[0] is version
    first, note = catalog.version_at("gpt-test-001", just_before)
    assert first is version
    assert note is not None


async def test_the_watcher_says_when_it_loses_the_database_and_when_it_has_it_again(
    cfg: Settings, upstream: Upstream
) -> None:
    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(cfg.core, cfg.costs, poll_interval=0.2)
    killer = await asyncpg.connect(cfg.core.database_url)
    database = await killer.fetchval("SELECT current_database()")
    # ALLOW_CONNECTIONS of a database is changed from another one
    admin = await asyncpg.connect(cfg.core.database_url.rsplit("/", 1)[0] + "/postgres")
    with capture_logs() as logs:
        await live.start()
        try:
            await _eventually(lambda: live.loaded, timeout=5)
            # The database refuses new connections, and the watcher's own is ended, as a
            # restart of PostgreSQL does: it cannot connect again until they are allowed.
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await _eventually(lambda: live.last_error is not None, timeout=10)
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await _eventually(
                lambda: any(e["event"].endswith("reachable again") for e in logs), timeout=10
            )
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await live.stop()
            await admin.close()
            await killer.close()
    watcher = [
        (e["event"], e["log_level"]) for e in logs if e["event"].startswith("catalog watcher")
    ]
    assert watcher == [
        ("catalog watcher: database unavailable; serving the loaded catalog", "warning"),
        ("catalog watcher: database reachable again", "info"),
    ]
    lost = next(e for e in logs if e["event"].endswith("serving the loaded catalog"))
    assert "not currently accepting connections" in lost["error"]
    again = next(e for e in logs if e["event"].endswith("reachable again"))
    assert again["catalog_version"] == live.catalog.version
    assert again["unavailable_s"] >= 0
    assert live.last_error is None


async def test_a_catch_up_through_the_pool_says_nothing_of_the_watcher_s_database(
    cfg: Settings, upstream: Upstream
) -> None:
    """A request's catch-up loads the catalog through the pool: that says nothing of the
    watcher's own connection, which may still be refused (too many clients): no "reachable
    again", and the watcher's error stays until the watcher itself gets through (a review)."""
    from aiserver.core_db.database import database, require_pool

    await _refresh(cfg, upstream, 1)
    live = LiveCatalog(cfg.core, cfg.costs, poll_interval=0.2)
    live.last_error = "DatabaseUnavailable: too many clients"  # as the watcher left it
    async with database(cfg.core):
        with capture_logs() as logs:
            catalog = await live.catch_up(require_pool(), 1)
    assert catalog.version >= 1
    assert not any(e["event"].startswith("catalog watcher") for e in logs)
    assert live.last_error == "DatabaseUnavailable: too many clients"
