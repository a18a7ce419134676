"""A catalog that stays current in a long-running service (the API).

One watcher task holds a PostgreSQL connection that LISTENs on the catalog channel. It wakes on
every NOTIFY a refresh sends, and at the latest every `CATALOG_POLL_INTERVAL_SECONDS`, then
compares the catalog version in the database with the one in memory and reloads when they differ.
So a lost notification (a dropped connection, a replica that was restarting) delays a reload by
one poll interval at most. A new catalog is built beside the old one and swapped in whole.

While the database is unreachable the last loaded catalog keeps serving; the watcher reconnects
on its own and reloads whatever it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from datetime import UTC, datetime

import asyncpg

from aiserver.core_db.connections import DbConnection, connect
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import CoreSettings
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.errors import CatalogNotReady
from aiserver.costs.settings import CostSettings
from aiserver.costs.store.metadata import NOTIFY_CHANNEL, read_freshness

log = get_logger(__name__)


def _settle_heap() -> float:
    """Set what the process holds now, the new catalog among it, aside from the garbage
    collector's passes (`gc.freeze`), after collecting what the old catalog left behind; the
    seconds it took.

    A loaded catalog is tens of thousands of long-lived objects, beside the many more of the
    process's libraries. Each full pass of the collector would walk them all again, and requests
    that allocate a lot (ingest: tens of objects per event) start such passes often. Frozen,
    they are still freed by reference counting once a reload drops them; `gc.unfreeze` first
    lets this collection find any cycles among them (and garbage that was frozen with them waits
    for the next load at most). Measured on ingest: the API's CPU per event fell from 40.0 to
    33.5 µs (bench/changes.md). The price is one full collection per load, about 50 ms in the
    API with the bundled catalog, on top of the load itself; it is logged as `settle_ms`."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


class LiveCatalog:
    """`catalog` is always a complete catalog; `start()` loads it, `stop()` ends the watcher."""

    def __init__(
        self, core: CoreSettings, settings: CostSettings, *, poll_interval: float | None = None
    ) -> None:
        self._core = core
        self._poll_interval = poll_interval or settings.catalog_poll_interval_seconds
        self._catalog = Catalog.empty()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._catching_up = asyncio.Lock()
        self.loaded = False
        self.last_error: str | None = None
        self._failing_since = 0.0  # when last_error was set (monotonic)
        self.last_reload_at: datetime | None = None
        self.last_success_at: datetime | None = None  # of the upstream refresh, from the database
        self.reloads = 0

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def not_ready(self) -> str | None:
        """Why no catalog with models is loaded yet, or None when one is."""
        if self.loaded and len(self._catalog):
            return None
        if self.loaded:
            return (
                "the catalog in the database has no models yet; the task runner seeds it at "
                "start (or run: aiserver-costs seed)"
            )
        if self.last_error:
            # the error's type only: this is answered to API clients (and kept in an event's
            # pricing note), and the text can name the database's host, user and name
            return f"no catalog loaded yet: {self.last_error.partition(':')[0]} (see the API's log)"
        return "no catalog loaded yet"

    def require(self) -> Catalog:
        """The catalog, or `CatalogNotReady` while none with models is loaded: pricing against an
        empty catalog would answer "unknown model" for every name."""
        catalog = self._catalog
        if self.loaded and len(catalog):
            return catalog
        raise CatalogNotReady(self.not_ready() or "no catalog loaded yet")

    async def start(self) -> None:
        """Load the catalog (if the database answers) and start watching for changes."""
        try:
            conn = await connect(self._core, timeout=5)
        except Exception as exc:
            self._failed(exc)
        else:
            try:
                await self._reload(conn)
            except Exception as exc:
                self._failed(exc)
            finally:
                await conn.close()
        self._task = asyncio.create_task(self._watch(), name="catalog-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def notify(self) -> None:
        """Ask the watcher to check the version now (e.g. after a local override change)."""
        self._wake.set()

    async def catch_up(self, pool: asyncpg.Pool, version: int) -> Catalog:
        """A catalog of `version` or later, loaded now if the one in memory is older (an ingest
        found a newer version committed than the one it priced with: its watcher has not
        reloaded yet). Requests waiting for the same version share one load."""
        async with self._catching_up:
            if self._catalog.version < version or not self.loaded:
                async with pool.acquire() as conn:
                    await self._reload(conn)
        return self._catalog

    async def _reload(self, conn: DbConnection) -> None:
        started = time.perf_counter()
        catalog = await load_catalog(conn)
        self._catalog = catalog  # the swap: one reference assignment
        settled = _settle_heap()
        self.loaded = True
        self.last_reload_at = datetime.now(UTC)
        self.reloads += 1
        log.info(
            "catalog loaded",
            catalog_version=catalog.version,
            models=len(catalog),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            settle_ms=round(settled * 1000, 1),
        )

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.last_error:
            log.warning("catalog watcher: database unavailable; serving the loaded catalog",
                        error=message, catalog_version=self._catalog.version)  # fmt: skip
        if self.last_error is None:
            self._failing_since = time.monotonic()
        self.last_error = message

    def _reached(self) -> None:
        """The database answered: say so once when it had not (the warning's pair)."""
        if self.last_error is not None:
            log.info(
                "catalog watcher: database reachable again",
                catalog_version=self._catalog.version,
                unavailable_s=round(time.monotonic() - self._failing_since, 1),
            )
        self.last_error = None

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _watch(self) -> None:
        while True:
            try:
                conn = await connect(self._core, timeout=5)
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(min(self._poll_interval, 2.0))
                continue
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                while not conn.is_closed():
                    async with asyncio.timeout(10):  # a cut connection must not hang here
                        version, self.last_success_at = await read_freshness(conn)
                    if version != self._catalog.version or not self.loaded:
                        async with asyncio.timeout(60):
                            await self._reload(conn)
                    self._reached()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_interval):
                            await self._wake.wait()
                    self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(min(self._poll_interval, 2.0))
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
