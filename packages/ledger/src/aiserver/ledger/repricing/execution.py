"""Doing a run: its events in bounded batches, each batch one transaction.

    outcome = await execute_run(pool, run_id, catalog, batch_size=500)

The events are visited in (project_id, occurred_at, id) order (a project's in (occurred_at, id)
order), after the run's cursor. Applying a batch, in
one transaction:

0. take the catalog's version lock shared, as ingest does, and read the committed version: when
   it is newer than the run's catalog, the batch rolls back and the run loads the catalog of
   now first. So no batch prices with an older catalog than one that priced an event before it
   (the automatic reprice after an override, say, or ingest), and no new version commits
   until the batch's COMMIT;
1. lock the batch's outbox rows (in one order). An event whose row is there is not folded yet:
   the fold, which claims rows `FOR UPDATE SKIP LOCKED`, now skips it and later folds the new
   pricing, so the rollups are not touched for it. An event whose row is gone is folded (a fold
   that held its row has committed by now), so the rollups hold its old pricing. The rows of
   the unfolded events that change are deleted and inserted again (`requeue_outbox`): a fold
   whose statement began before the batch commits, and reaches such a row after, then finds
   it deleted and skips it, instead of folding the event as its snapshot saw it, at its old
   price;
2. lock the events and read them again (another run may have repriced them meanwhile), then
   the outbox rows once more: a run that held the events gave the rows of those it changed
   new ids, which the first lock, a statement that began before that run committed, does not
   see (it found the old rows deleted). Read the projects' rolled-up keys. When a change of a
   project's keys still waits for the rebuild of its rollups, they are keyed two ways and a
   correction keyed the new way would miss the row of an event folded the old way: the batch
   rolls back, the run rebuilds that project's rollups itself (`aiserver.ledger.spend.rebuild`)
   and does the batch again (the rebuild the change enqueued does the same work again later,
   harmlessly);
3. price each as ingest would today (`revalue`);
4. for each that changes: take it out of its old rollup row and into its new one (if folded),
   update the event, and write one adjustment (old and new status, cost and price version);
5. move the run's cursor past the batch and add its counts, sums and per-model result.

A crash leaves each batch applied or not, never a part, and the cursor says which; running the
run again resumes after it (an adjustment is unique per run and event besides). A batch that
the database rolls back to break a deadlock (with the locks taken in one order by the batch, a
rebuild and a change of the time zone, none is known to form; a correction holding an event
and asking for the rollup lock would) is done again: the run goes on. So is a batch that
finds fewer of its events to update than it locked: retention began to detach their month
meanwhile (a statement after DETACH ... CONCURRENTLY's first commit no longer sees it), and
their corrections, already added to the rollups, must not stay when the events keep their old
pricing (`EventsGone`); done again, the batch no longer sees them.
A dry run does 3 and 5 only: nothing but the run is written.

One process works on a run at a time: an advisory lock per run, held on its own connection
for the whole run, so a second executor (the cron that resumes runs cut off, a retried job)
leaves it alone; a process that dies releases it with its connection.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, cast

import asyncpg
import msgspec

from aiserver.core_db.connections import lost_if_cut
from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.core_db.logging import get_logger
from aiserver.costs.catalog import load_catalog
from aiserver.costs.pricing.exact import ADD
from aiserver.costs.store.metadata import hold_catalog_version
from aiserver.ledger import store as project_store
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.commits import BudgetScope, Spend, crossings, window_deltas
from aiserver.ledger.repricing import BATCH_SIZE as BATCH_SIZE  # where it is read from
from aiserver.ledger.repricing import revalue as rv
from aiserver.ledger.repricing import store
from aiserver.ledger.repricing.runs import decode_filter
from aiserver.ledger.repricing.store import ALL_PROJECTS, BatchFilters, Position, Progress
from aiserver.ledger.spend.rebuild import rebuild_rollups
from aiserver.ledger.spend.store import rollups as rollup_store
from aiserver.ledger.usage.store.reading import EventFilters

if TYPE_CHECKING:
    from aiserver.costs.catalog import Catalog
    from aiserver.ledger.usage.valuation import Valuation

log = get_logger(__name__)


#: Rebuilds of rollups in a row before one batch, each after a change of the project's keys
#: that came meanwhile (`RollupsRekeying`), before the run gives up.
_REBUILDS: Final = 5

#: Batches in a row that the database rolls back to break a deadlock (or for a serialization
#: failure) before the run gives up: each is done again, as the rebuild and the time zone
#: change it can deadlock with try again.
_ROLLBACKS: Final = 5


class RollupsRekeying(Exception):
    """The rollups of these projects are keyed partly by rolled-up keys they no longer have (a
    change of the keys waits for its rebuild): a correction would go to a row keyed the new way
    while the event is counted in one keyed the old way."""

    def __init__(self, projects: list[int]) -> None:
        super().__init__(f"the rollups of projects {projects} wait for a rebuild")
        self.projects = projects


class CatalogChanged(Exception):
    """The committed catalog is newer than the one the run prices with: a batch priced with it
    could take back what the newer one priced already (an event made priced by the automatic
    reprice after an override, put back to unpriced)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the catalog is at version {version} now")
        self.version = version


class EventsGone(Exception):
    """Some of the batch's events, locked by it, were not there to update: retention began to
    detach their month (DETACH ... CONCURRENTLY) meanwhile, and each statement after that
    no longer sees it. The batch rolls back (its corrections to the rollups with it) and is done
    again without them: a month whose events went keeps in its rollups what they were billed
    at; one that a raised retention keeps after all is then repriced by a later run, once."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"{missing} of the batch's events are gone (their month detached)")
        self.missing = missing


class Outcome(enum.StrEnum):
    DONE = "done"  # ran to its end (now, or before)
    BUSY = "busy"  # another process works on it
    MISSING = "missing"  # no such run


@dataclass(frozen=True, slots=True)
class RunProgress:
    """How far a run is, after each batch (for a progress display)."""

    run_id: int
    examined: int
    changed: int
    old_total: Decimal
    new_total: Decimal


OnBatch = Callable[[RunProgress], Awaitable[None] | None]


_TAGS: Final = msgspec.json.Decoder(dict[str, str])


def lock_name(run_id: int) -> str:
    return f"aiserver.ledger.reprice.run.{run_id}"


async def execute_run(
    pool: asyncpg.Pool,
    run_id: int,
    catalog: Catalog,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: OnBatch | None = None,
) -> Outcome:
    """Run (or resume) the run to its end with `catalog`; a failure marks it `failed` (its
    error kept) and is raised again. Running a run that is done does nothing."""
    async with pool.acquire() as pooled:
        conn = cast("asyncpg.Connection", pooled)
        # a connection lost under the run (also under the unlock of its `finally`, whose
        # InterfaceError or InternalClientError would hide why) raises as lost: a command
        # prints one line, the job logs it
        async with lost_if_cut(conn):
            if not await try_advisory_lock(conn, lock_name(run_id)):
                return Outcome.BUSY
            try:
                run = await store.select_run(conn, run_id)
                if run is None:
                    return Outcome.MISSING
                if run["state"] != "done":
                    await _run(conn, run, catalog, batch_size, on_batch)
                return Outcome.DONE
            finally:
                if not conn.is_closed():
                    await advisory_unlock(conn, lock_name(run_id))


async def _run(
    conn: Any,
    run: asyncpg.Record,
    catalog: Catalog,
    batch_size: int,
    on_batch: OnBatch | None,
) -> None:
    project_id, run_id = run["project_id"], run["id"]
    await store.start_run(conn, run, catalog.version)
    f = decode_filter(run["filter"])
    filters = BatchFilters(
        project_id=None if project_id == ALL_PROJECTS else project_id,
        events=EventFilters(
            since=f.since, until=f.until, model=f.model, provider=f.provider, status=f.status
        ),
        models=f.models,
    )
    after = (
        Position(run["after_project"], run["after_occurred"], run["after_event"])
        if run["after_event"] is not None
        else None
    )
    result = rv.RunResult.from_json(run["result"])
    totals = [run["events_examined"], run["events_changed"], run["old_total"], run["new_total"]]
    log.info("reprice run started", run_id=run_id, dry_run=run["dry_run"], resumed_after=after)
    rebuilds = rollbacks = 0
    rekey: list[int] = []
    try:
        while True:
            # the batch adds to a copy of the result: one rolled back leaves nothing in it
            trial = result.copy()
            try:
                for project in rekey:
                    log.info("reprice rebuilds a project's rollups first", run_id=run_id,
                             project_id=project)  # fmt: skip
                    await rebuild_rollups(conn, project)
                rekey = []
                async with conn.transaction():
                    progress = await _batch(conn, run, filters, after, catalog, trial, batch_size)
            except CatalogChanged as changed:  # rolled back before it read an event
                log.info("reprice run loads the catalog of now", run_id=run_id,
                         catalog_version=changed.version)  # fmt: skip
                catalog = await load_catalog(conn)
                continue
            except RollupsRekeying as rekeying:  # the batch rolled back before it changed a thing
                rebuilds += 1
                if rebuilds > _REBUILDS:
                    raise
                rekey = rekeying.projects
                continue
            except (asyncpg.TransactionRollbackError, EventsGone) as exc:
                # a deadlock broken by rolling the batch back (a rebuild of the rollups and a
                # change of the time zone waiting for it and for each other), or a
                # serialization failure; or some of its events gone, their month detached by
                # retention: the batch left nothing, and is done again
                rollbacks += 1
                if rollbacks > _ROLLBACKS:
                    raise
                log.warning("reprice batch rolled back; doing it again", run_id=run_id,
                            error=type(exc).__name__, detail=str(exc))  # fmt: skip
                continue
            rebuilds = rollbacks = 0
            result = trial
            if progress is None:
                break
            after = progress.after
            totals[0] += progress.examined
            totals[1] += progress.changed
            # exact sums (`+` rounds money to the context's 28 digits)
            totals[2] = ADD(totals[2], progress.old_total)
            totals[3] = ADD(totals[3], progress.new_total)
            if on_batch is not None:
                shown = on_batch(RunProgress(run_id, *totals))
                if shown is not None:
                    await shown
    except Exception as exc:
        if not conn.is_closed():
            await store.end_run(conn, project_id, run_id, error=f"{type(exc).__name__}: {exc}")
        raise
    await store.end_run(conn, project_id, run_id)
    log.info("reprice run done", run_id=run_id, examined=totals[0], changed=totals[1])


async def _batch(
    conn: Any,
    run: asyncpg.Record,
    filters: BatchFilters,
    after: Position | None,
    catalog: Catalog,
    result: rv.RunResult,
    batch_size: int,
) -> Progress | None:
    """One batch, in the caller's transaction; None when no event is left."""
    version = await hold_catalog_version(conn)
    if version > catalog.version:
        raise CatalogChanged(version)
    rows = await store.select_batch(conn, filters, after=after, limit=batch_size)
    if not rows:
        return None
    last = rows[-1]
    pending: set[tuple[int, int]] = set()
    tags: dict[int, tuple[str, ...]] = {}
    budgets: dict[int, tuple[str, list[BudgetScope]]] = {}
    if not run["dry_run"]:
        projects = [r["project_id"] for r in rows]
        # every project's rollup lock, shared, as a correction beside folds takes it (a
        # rebuild of its rollups, which holds it exclusively, never overwrites the correction);
        # then their gates and rows, as ingest takes them (no budget appears or goes
        # meanwhile). All the rollup locks first: waiting for a rebuild of one project, a batch
        # holds no gate of another, which a change of that project would close behind it,
        # holding that project's usage behind the rebuild
        for project in sorted(set(projects)):
            await rollup_store.lock_project(conn, project, shared=True)
        for project in sorted(set(projects)):
            await project_store.pass_gate(conn, project)
            budgets[project] = await budget_store.budgets_for_ingest(conn, project)
        pending = await store.lock_outbox(conn, projects, [r["id"] for r in rows])
        rows = await store.lock_events(
            conn, projects, [r["occurred_at"] for r in rows], [r["id"] for r in rows]
        )
        # again, now that no other run can requeue them: a run that held the events (and this
        # statement waited for) may have given their rows new ids since the first lock, which
        # then found the old rows deleted; the new rows are not folded either
        pending = await store.lock_outbox(conn, [r["project_id"] for r in rows],
                                          [r["id"] for r in rows])  # fmt: skip
        # read once the outbox rows are held: every event whose row is gone was folded with
        # these keys, unless a change of them still waits for its rebuild
        tags, rekeying = await store.rollup_keys(conn, sorted(set(projects)))
        if rekeying:
            raise RollupsRekeying(rekeying)
    examined = changed = 0
    old_total = new_total = Decimal(0)
    moved: list[tuple[asyncpg.Record, Valuation]] = []
    for row in rows:
        valuation = rv.revalue(catalog, row)
        change = rv.changes(row, valuation)
        result.add(row, valuation, change)
        examined += 1
        changed += change
        old_total = ADD(old_total, row["total_cost"] or 0)
        new_total = ADD(new_total, valuation.total or 0)
        if change:
            moved.append((row, valuation))
    if moved and not run["dry_run"]:
        folded = [(r, v) for r, v in moved if (r["project_id"], r["id"]) not in pending]
        if folded:
            deltas = rv.rollup_deltas(folded, tags)
            if deltas:
                await store.apply_rollup_deltas(conn, deltas)
        unfolded = [r for r, _ in moved if (r["project_id"], r["id"]) in pending]
        if unfolded:
            await store.requeue_outbox(
                conn, [r["project_id"] for r in unfolded], [r["id"] for r in unfolded]
            )
        await _move_budget_costs(conn, budgets, moved)
        updated = await store.update_events(conn, [rv.repriced(r, v) for r, v in moved])
        if updated != len(moved):  # their corrections must not stay: the batch rolls back
            raise EventsGone(len(moved) - updated)
        await store.insert_adjustments(conn, run["id"], [rv.adjustment(r, v) for r, v in moved])
    progress = Progress(
        after=Position(last["project_id"], last["occurred_at"], last["id"]),
        examined=examined,
        changed=changed,
        old_total=old_total,
        new_total=new_total,
        result_json=result.to_json(),
    )
    await store.advance_run(conn, run["project_id"], run["id"], progress)
    return progress


async def _move_budget_costs(
    conn: Any,
    budgets: dict[int, tuple[str, list[BudgetScope]]],
    moved: list[tuple[asyncpg.Record, Valuation]],
) -> None:
    """What the repriced events change in their budgets' windows: each event's old cost out and
    its new one in (an event that was unpriced now commits its cost), with the alerts of the
    thresholds this carries a window past, as ingest does. A window from before the budget (its
    `counts_from`) counts no event, so it is not corrected (`window_deltas` leaves it out). A
    window from it on counts every event of its budget's scope, so one without a row yet (its
    budget matched none of its events) takes an event that the reprice brings into the scope
    (an unknown model's event whose model the catalog now names), as ingest would have."""
    by_project: dict[int, list[tuple[Spend, Spend]]] = {}
    for row, valuation in moved:
        tags = _TAGS.decode(row["tags"])
        before = Spend(row["occurred_at"], tags, row["model"], row["matched_model"],
                       row["total_cost"], row["status"] == "partially_priced")  # fmt: skip
        after = Spend(row["occurred_at"], tags, row["model"], valuation.matched_model,
                      valuation.total, valuation.status == "partially_priced")  # fmt: skip
        by_project.setdefault(row["project_id"], []).append((before, after))
    for project, changes in sorted(by_project.items()):
        zone, scopes = budgets[project]
        if not scopes:
            continue
        deltas = window_deltas(scopes, zone, changes)
        committed = await budget_store.add_to_windows(conn, project, deltas)
        await budget_store.insert_alerts(conn, project, crossings(scopes, deltas, committed))
