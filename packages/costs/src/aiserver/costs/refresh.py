"""Refresh the price catalog from its upstream source, once across the fleet, never losing data.

    report = await refresh_catalog(core, costs, force=False, trigger="cron")

1. Staleness is read from the database (`ai_cost_metadata.last_success_at` against
   `MODEL_COST_MAX_AGE_SECONDS`); `force` skips only this check. It is made before the lock
   (and again under it), so that the check every runner makes holds no lock.
2. A PostgreSQL advisory lock makes the refresh fleet-wide single: a second caller gets
   `already_running` at once, neither waiting nor refreshing twice.
3. The fetch is conditional (ETag / Last-Modified), bounded in time and size, and retried.
4. Guardrails: an empty, non-JSON or wrongly shaped body, or one that would shrink the catalog by
   more than `MODEL_COST_MAX_SHRINK_FRACTION`, is rejected whole; a single bad entry is skipped
   and its previous version stays current.
5. The write is one transaction (see `store.prices.write_catalog`), whose commit NOTIFYs the
   API replicas.

Every attempt that reached the upstream leaves a row in `ai_cost_refresh_runs`, and failures are
recorded in `ai_cost_metadata.last_error` while the catalog stays as it was.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

import asyncpg
import httpx

from aiserver.core_db.connections import connect, transaction
from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import CoreSettings
from aiserver.costs.errors import SourceRejected, UpstreamError
from aiserver.costs.fetch import Fetched, fetch_source
from aiserver.costs.settings import CostSettings
from aiserver.costs.source import DEFAULT_SOURCE, ParsedSource, parse_source, read_document
from aiserver.costs.status import is_stale
from aiserver.costs.store.metadata import (
    SourceState,
    read_state,
    record_applied,
    record_confirmed,
    record_error,
)
from aiserver.costs.store.prices import count_current_among, current_model_count, write_catalog
from aiserver.costs.store.runs import last_skipped, record_run
from aiserver.costs.urls import redact_url

log = get_logger(__name__)

REFRESH_LOCK: Final = "aiserver:catalog-refresh"
SNAPSHOT_RESOURCE: Final = "model_prices_and_context_window.json.gz"
SNAPSHOT_URL: Final = "snapshot:aiserver-costs/" + SNAPSHOT_RESOURCE


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # the catalog changed
    UNCHANGED = "unchanged"  # downloaded; same prices as stored
    NOT_MODIFIED = "not_modified"  # the upstream answered 304
    FRESH = "fresh"  # not stale yet; nothing fetched
    ALREADY_RUNNING = "already_running"  # another process holds the refresh lock
    REJECTED = "rejected"  # a guardrail refused the body; the catalog is untouched
    FAILED = "failed"  # the upstream could not deliver; the catalog is untouched
    SEEDED = "seeded"  # an empty catalog was loaded from the bundled snapshot

    @property
    def ok(self) -> bool:
        return self not in {Outcome.REJECTED, Outcome.FAILED}


@dataclass(frozen=True, slots=True)
class RefreshReport:
    outcome: Outcome
    source: str
    url: str
    trigger: str
    fetched_bytes: int = 0
    http_status: int | None = None
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    model_count: int = 0
    catalog_version: int | None = None
    error: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output, logs and job results."""
        return {
            "outcome": str(self.outcome),
            "trigger": self.trigger,
            "url": self.url,
            "fetched_bytes": self.fetched_bytes,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "skipped": len(self.skipped),
            "models": self.model_count,
            "catalog_version": self.catalog_version,
            "error": self.error,
            "duration_s": self.duration_s,
        }

    def summary(self) -> str:
        if self.outcome in {Outcome.APPLIED, Outcome.SEEDED, Outcome.UNCHANGED}:
            text = (
                f"{self.outcome}: fetched {self.fetched_bytes:,} bytes; added {self.added:,}, "
                f"changed {self.changed:,}, removed {self.removed:,}, skipped "
                f"{len(self.skipped):,}; {self.model_count:,} models, catalog version "
                f"{self.catalog_version}"
            )
        elif self.outcome is Outcome.NOT_MODIFIED:
            text = "not modified: the upstream says the stored catalog is current (HTTP 304)"
        elif self.outcome is Outcome.FRESH:
            text = "skipped: the catalog is not stale yet (use --force to refresh anyway)"
        elif self.outcome is Outcome.ALREADY_RUNNING:
            text = "skipped: another process is refreshing the catalog right now"
        else:
            text = f"{self.outcome}: {self.error}; the catalog was left unchanged"
        return text


def _now() -> datetime:
    return datetime.now(UTC)


async def _record_failure(
    conn: asyncpg.Connection, report: RefreshReport, *, started_at: datetime
) -> None:
    async with transaction(conn):
        error = f"{report.outcome}: {report.error}"
        await record_error(conn, report.source, report.url, at=started_at, error=error)
        await record_run(conn, report, started_at=started_at)


async def _record_current(
    conn: asyncpg.Connection,
    report: RefreshReport,
    fetched: Fetched,
    *,
    started_at: datetime,
    body_hash: str | None = None,
) -> None:
    """The upstream confirmed what we have (304, or the same content): it is a success."""
    async with transaction(conn):
        await record_confirmed(
            conn, report.source, report.url, at=started_at, etag=fetched.etag,
            last_modified=fetched.last_modified, body_hash=body_hash,
        )  # fmt: skip
        await record_run(conn, report, started_at=started_at)


async def apply_source(
    conn: asyncpg.Connection,
    parsed: ParsedSource,
    *,
    source: str,
    url: str,
    trigger: str,
    fetched: Fetched,
    started_at: datetime,
    succeeded: bool = True,
) -> RefreshReport:
    """Write `parsed` as the new catalog of `source` and record it, in one transaction."""
    async with transaction(conn):
        result = await write_catalog(conn, parsed, source=source, url=url)
        await record_applied(
            conn, source, url, at=started_at, succeeded=succeeded, etag=fetched.etag,
            last_modified=fetched.last_modified, content_hash=parsed.content_hash,
            body_hash=hashlib.sha256(fetched.body).hexdigest(), model_count=result.model_count,
            alias_count=len(parsed.aliases),
        )  # fmt: skip
        outcome = Outcome.SEEDED if trigger == "seed" else Outcome.APPLIED
        if trigger != "seed" and not result.changed_anything:
            outcome = Outcome.UNCHANGED
        report = RefreshReport(
            outcome=outcome,
            source=source,
            url=url,
            trigger=trigger,
            fetched_bytes=len(fetched.body),
            http_status=fetched.status,
            added=len(result.added),
            changed=len(result.changed),
            removed=len(result.removed),
            skipped=parsed.skipped,
            model_count=result.model_count,
            catalog_version=result.catalog_version,
        )
        await record_run(conn, report, started_at=started_at)
    return report


async def _check_shrink(
    conn: asyncpg.Connection, parsed: ParsedSource, current: int, max_shrink: float
) -> None:
    # A skipped entry keeps a model current only when it names one that is current now; one of
    # the wrong shape under another name keeps nothing, so it must not count as a model.
    kept = 0
    if current and parsed.skipped:
        kept = await count_current_among(conn, DEFAULT_SOURCE, list(parsed.skipped))
    incoming = len(parsed.models) + kept
    if current and incoming < current * (1 - max_shrink):
        raise SourceRejected(
            f"shrink: the source has {incoming} models, the catalog has {current}; more than "
            f"{max_shrink:.0%} fewer (MODEL_COST_MAX_SHRINK_FRACTION)"
        )


def _fresh(
    state: SourceState | None, settings: CostSettings, url: str, trigger: str, now: datetime
) -> RefreshReport | None:
    """The report of a catalog that needs no refresh, or None when it is stale (`url`
    redacted)."""
    if is_stale(state, now=now, max_age_seconds=settings.model_cost_max_age_seconds):
        return None
    assert state is not None
    return RefreshReport(
        Outcome.FRESH, DEFAULT_SOURCE, url, trigger,
        model_count=state.model_count, catalog_version=state.catalog_version,
    )  # fmt: skip


#: What PostgreSQL raises for a catalog it will not store (a value out of a column's range or
#: type, a constraint, a size over a limit): the body's fault, not the database's state.
WRITE_REFUSED: Final = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


async def _refresh_locked(
    conn: asyncpg.Connection,
    settings: CostSettings,
    *,
    url: str,
    force: bool,
    trigger: str,
    client: httpx.AsyncClient | None,
    retries: int,
) -> RefreshReport:
    """Only the download uses `url` itself; reports, logs and the database get its redacted form
    (`urls.redact_url`), as does the comparison with the URL of the last refresh."""
    source = DEFAULT_SOURCE
    started_at = _now()
    fetch_url, url = url, redact_url(url)
    state = await read_state(conn, source)
    if not force and (fresh := _fresh(state, settings, url, trigger, started_at)):
        return fresh
    current = await current_model_count(conn, source)
    same_url = state is not None and redact_url(state.url) == url
    try:
        fetched = await fetch_source(
            fetch_url,
            etag=state.etag if state and current and same_url else None,
            last_modified=state.last_modified if state and current and same_url else None,
            timeout=settings.model_cost_fetch_timeout_seconds,
            max_bytes=settings.model_cost_max_bytes,
            retries=retries,
            client=client,
        )
    except UpstreamError as exc:
        report = RefreshReport(
            Outcome.FAILED, source, url, trigger, http_status=exc.http_status, error=str(exc),
            model_count=current,
        )  # fmt: skip
        await _record_failure(conn, report, started_at=started_at)
        return report
    if fetched.status == 304:
        report = RefreshReport(
            Outcome.NOT_MODIFIED, source, url, trigger, http_status=304, model_count=current,
            catalog_version=state.catalog_version if state else None,
        )  # fmt: skip
        await _record_current(conn, report, fetched, started_at=started_at)
        return report

    async def unchanged(catalog_version: int, new_body_hash: str | None) -> RefreshReport:
        """The document applied last time: record a success, write no price."""
        report = RefreshReport(
            Outcome.UNCHANGED, source, url, trigger, fetched_bytes=len(fetched.body),
            http_status=fetched.status, skipped=await last_skipped(conn, source),
            model_count=current, catalog_version=catalog_version,
        )  # fmt: skip
        await _record_current(conn, report, fetched, started_at=started_at, body_hash=new_body_hash)
        return report

    body_hash = hashlib.sha256(fetched.body).hexdigest()
    if state is not None and current and state.body_hash == body_hash:
        # byte-for-byte what was applied last time: no need to parse it again
        return await unchanged(state.catalog_version, None)
    try:
        document = read_document(fetched.body)
        if state is not None and current and state.content_hash == document.content_hash:
            # the document applied last time, spelled differently: nothing to sort or diff
            return await unchanged(state.catalog_version, body_hash)
        parsed = parse_source(document)
        await _check_shrink(conn, parsed, current, settings.model_cost_max_shrink_fraction)
    except SourceRejected as exc:
        report = RefreshReport(
            Outcome.REJECTED, source, url, trigger, fetched_bytes=len(fetched.body),
            http_status=fetched.status, error=str(exc), model_count=current,
        )  # fmt: skip
        await _record_failure(conn, report, started_at=started_at)
        return report
    try:
        return await apply_source(
            conn, parsed, source=source, url=url, trigger=trigger, fetched=fetched,
            started_at=started_at,
        )  # fmt: skip
    except WRITE_REFUSED as exc:
        # A value no guardrail foresaw that PostgreSQL refuses: the write's transaction rolled
        # back (the catalog is as it was); the refresh is a rejection, recorded as the others
        # are, not an error that reached the cron's log only, every tick.
        report = RefreshReport(
            Outcome.REJECTED, source, url, trigger, fetched_bytes=len(fetched.body),
            http_status=fetched.status, model_count=current,
            error=f"the database refused the catalog: {type(exc).__name__}: {exc}",
        )  # fmt: skip
        await _record_failure(conn, report, started_at=started_at)
        return report


async def refresh_catalog(
    core: CoreSettings,
    settings: CostSettings,
    *,
    force: bool = False,
    trigger: str = "manual",
    source_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    retries: int | None = None,
) -> RefreshReport:
    """Refresh the catalog when it is stale (or `force`); see the module docstring."""
    url = source_url or settings.model_cost_source_url
    started = time.perf_counter()
    conn = await connect(core)
    try:
        # A catalog that is fresh is seen so without the lock (and again under it): the check
        # that every runner makes each interval must not hold the lock, or a forced refresh
        # asked for meanwhile is skipped as "already running".
        if not force and (
            fresh := _fresh(await read_state(conn), settings, redact_url(url), trigger, _now())
        ):
            report = fresh
        elif not await try_advisory_lock(conn, REFRESH_LOCK):
            report = RefreshReport(
                Outcome.ALREADY_RUNNING, DEFAULT_SOURCE, redact_url(url), trigger
            )
        else:
            try:
                report = await _refresh_locked(
                    conn,
                    settings,
                    url=url,
                    force=force,
                    trigger=trigger,
                    client=client,
                    retries=settings.model_cost_fetch_retries if retries is None else retries,
                )
            finally:
                # a connection PostgreSQL ended has no lock left to release, and an unlock on it
                # raised InterfaceError ("connection is closed") in place of the cause
                if not conn.is_closed():
                    await advisory_unlock(conn, REFRESH_LOCK)
    finally:
        await conn.close()
    report = _timed(report, time.perf_counter() - started)
    _log_report(report)
    return report


def _timed(report: RefreshReport, duration: float) -> RefreshReport:
    return dataclasses.replace(report, duration_s=round(duration, 3))


def _log_report(report: RefreshReport) -> None:
    fields = report.as_dict()
    del fields["error"]
    if report.skipped:
        fields["skipped_entries"] = dict(list(report.skipped.items())[:20])
    if report.outcome.ok:
        log.info("catalog refresh: " + report.summary(), **fields)
    else:
        log.warning("catalog refresh: " + report.summary(), error=report.error, **fields)


def snapshot_bytes() -> bytes:
    """The upstream document bundled in this wheel (see data/NOTICE)."""
    data = resources.files("aiserver.costs") / "data" / SNAPSHOT_RESOURCE
    return gzip.decompress(data.read_bytes())


async def seed_from_snapshot(core: CoreSettings) -> RefreshReport | None:
    """Load the bundled snapshot into an empty catalog; do nothing when it has models.

    The seed leaves `last_success_at` empty: the snapshot's age is unknown, so the catalog counts
    as stale and the first refresh with a network replaces it. Its URL is the snapshot's own
    (`SNAPSHOT_URL`) until a refresh records the upstream's.
    """
    timer = time.perf_counter()
    conn = await connect(core)
    try:
        # Looked at before the lock too: a replica starting next to a running fleet must not
        # hold the refresh lock for its check, or a refresh asked for meanwhile is skipped as
        # "already running".
        if await current_model_count(conn, DEFAULT_SOURCE):
            return None
        if not await try_advisory_lock(conn, REFRESH_LOCK):
            log.info("catalog seed skipped: a refresh is running")
            return None
        try:
            if await current_model_count(conn, DEFAULT_SOURCE):
                return None
            started = _now()
            body = snapshot_bytes()
            parsed = parse_source(body)
            report = await apply_source(
                conn, parsed, source=DEFAULT_SOURCE, url=SNAPSHOT_URL,
                trigger="seed", fetched=Fetched(200, body, None, None, 0), started_at=started,
                succeeded=False,
            )  # fmt: skip
        finally:
            if not conn.is_closed():  # (as in refresh_catalog)
                await advisory_unlock(conn, REFRESH_LOCK)
    finally:
        await conn.close()
    report = _timed(report, time.perf_counter() - timer)
    _log_report(report)
    return report
