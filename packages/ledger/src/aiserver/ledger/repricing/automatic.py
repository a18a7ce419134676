"""After a catalog change, the events kept unpriced whose model the catalog can now price are
repriced, with no one asking: the task runner's cron (every minute, and at start), and at
once after a refresh that changed the catalog.

    report = await reprice_after_catalog_change(pool)

The trigger is the catalog version (`ai_cost_metadata`), which every change bumps: a refresh
that changed prices, an override set or deleted. Each automatic run records the version it was
made for, so a version is looked at once, whoever noticed it first (a NOTIFY lost, a runner
restarting: the next tick sees the version all the same). Under a fleet-wide advisory lock:

1. nothing to do when the newest automatic run was made for this catalog version already, or
   when no event is unpriced (read from their partial index);
2. else load the catalog, keep the reported names (with their provider) it now resolves, and
   record one run over every project (`requested_by` automatic, status `unpriced`, those
   names), made even when no name resolves, so that this version is not looked at again;
3. then run it, as any run is run (`execute_run`).

The same cron also finishes runs that were cut off (a crash, a lost job): each run still queued
or running that no process holds is run again from its cursor (`resume_unfinished`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final, cast

import asyncpg
import msgspec

from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.core_db.logging import get_logger
from aiserver.costs.catalog import load_catalog
from aiserver.costs.errors import UnknownModel
from aiserver.costs.store.metadata import read_catalog_version
from aiserver.ledger.repricing import store
from aiserver.ledger.repricing.execution import BATCH_SIZE, Outcome, execute_run, lock_name
from aiserver.ledger.repricing.runs import RepriceFilter, encode_filter
from aiserver.ledger.repricing.store import ALL_PROJECTS
from aiserver.ledger.usage.store.events import UnpricedModel, unpriced_models

if TYPE_CHECKING:
    from aiserver.costs.catalog import Catalog

log = get_logger(__name__)

LOCK: Final = "aiserver.ledger.reprice.automatic"
AUTOMATIC: Final = "automatic"


class AutomaticReport(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # repriced, nothing_unpriced, up_to_date, already_running
    catalog_version: int | None = None
    run_id: int | None = None
    models: tuple[str, ...] = ()
    resumed: tuple[int, ...] = ()


async def reprice_after_catalog_change(
    pool: asyncpg.Pool, *, batch_size: int = BATCH_SIZE
) -> AutomaticReport:
    """Reprice what the catalog can now price, once per catalog version; then finish the runs
    that were cut off."""
    report = await _automatic(pool, batch_size)
    resumed = await resume_unfinished(pool, batch_size=batch_size)
    return msgspec.structs.replace(report, resumed=resumed)


async def _automatic(pool: asyncpg.Pool, batch_size: int) -> AutomaticReport:
    async with pool.acquire() as pooled:
        conn = cast("asyncpg.Connection", pooled)
        if not await try_advisory_lock(conn, LOCK):
            return AutomaticReport(outcome="already_running")
        try:
            version = await read_catalog_version(conn)
            last = await store.last_automatic_version(conn)
            if last is not None and last >= version:
                return AutomaticReport(outcome="up_to_date", catalog_version=version)
            unpriced = await unpriced_models(conn)
            if not unpriced:  # the version is not recorded: the next tick asks again (cheaply)
                return AutomaticReport(outcome="nothing_unpriced", catalog_version=version)
            catalog = await load_catalog(conn)
            names = tuple(sorted(_priceable(unpriced, catalog)))
            run = await store.insert_run(
                conn,
                project_id=ALL_PROJECTS,
                requested_by=AUTOMATIC,
                dry_run=False,
                filter_json=encode_filter(RepriceFilter(status="unpriced", models=names)),
            )
            await store.start_run(conn, run, catalog.version)
        finally:
            # a connection lost meanwhile took its lock with it, and asyncpg has released it
            # (any call on it is an InterfaceError): the error that ended the block is the one
            # to report, not one raised here
            with contextlib.suppress(asyncpg.InterfaceError):
                if not conn.is_closed():
                    await advisory_unlock(conn, LOCK)
    log.info("automatic reprice", run_id=run["id"], catalog_version=catalog.version, models=names)
    await execute_run(pool, run["id"], catalog, batch_size=batch_size)
    return AutomaticReport(
        outcome="repriced", catalog_version=catalog.version, run_id=run["id"], models=names
    )


def _priceable(unpriced: list[UnpricedModel], catalog: Catalog) -> set[str]:
    """The reported names of unpriced events that the catalog did not know and resolves now.
    Names it knew already are left to a run asked for, as partially priced events are: a new
    catalog version seldom prices what their model lacked, and a run per version would read
    them all again."""
    names: set[str] = set()
    for found in unpriced:
        if not found.unknown_model:
            continue
        try:
            catalog.resolve(found.model, found.provider)
        except UnknownModel:
            continue
        names.add(found.model)
    return names


async def _free(conn: Any, run_id: int) -> bool:
    """Whether no process holds the run now (the catalog is loaded only for such runs)."""
    if not await try_advisory_lock(conn, lock_name(run_id)):
        return False
    await advisory_unlock(conn, lock_name(run_id))
    return True


async def resume_unfinished(pool: asyncpg.Pool, *, batch_size: int = BATCH_SIZE) -> tuple[int, ...]:
    """Run every run still queued or running that no process holds, from its cursor, with the
    catalog of now; the ids of those it finished."""
    async with pool.acquire() as conn:
        waiting = [r for r in await store.unfinished_runs(conn) if await _free(conn, r)]
        catalog = await load_catalog(conn) if waiting else None
    finished: list[int] = []
    for run_id in waiting:
        assert catalog is not None
        if await execute_run(pool, run_id, catalog, batch_size=batch_size) is Outcome.DONE:
            finished.append(run_id)
    return tuple(finished)
