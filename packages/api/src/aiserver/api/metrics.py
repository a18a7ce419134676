"""Prometheus metrics: request counts and latency by route (Litestar's middleware), the
catalog's version, size and age in this process, the usage this process recorded, and the
ledger's backlog, read from the database at each scrape.

Usage (counters of this process, from each request's results):
- `aiserver_usage_events_total{result}`: events by result (recorded, duplicate, conflict,
  invalid);
- `aiserver_usage_unpriced_events_total{pricing_status}`: recorded events that are not fully
  priced (unpriced, partially_priced).
- `aiserver_otlp_spans_total{result}`: OpenTelemetry spans sent to `/v1/otlp/v1/traces`, by
  what became of them: recorded, duplicate, rejected (invalid or conflict), or ignored;
- `aiserver_otlp_ignored_spans_total{reason}`: the ignored ones by why: no_usage (no GenAI
  token count), no_model, aggregate (an agent's, workflow's or tool's span).

Reservations (counters of this process): `aiserver_reservation_statements_total`, the statements
sent to reserve on hard budgets the quick way, and `aiserver_reservation_calls_total`, the
reservations they carried; reservations that arrive together share a statement.

The ledger's backlog (gauges of the whole database, read at scrape time with a timeout of
`BACKLOG_TIMEOUT_S`; when the read fails they are absent from that scrape, and a warning is
logged, never an error answer):
- `aiserver_usage_folding_lag_seconds`: the age of the oldest outbox row not yet folded into
  the rollups (its event's received_at), 0 when none waits;
- `aiserver_usage_outbox_rows`: outbox rows waiting to be folded (counted up to 100,000);
- `aiserver_usage_reprice_runs{state}`: repricing runs by state (queued, running, done,
  failed);
- `aiserver_budget_alerts{state}`: budget alerts waiting for their webhook (pending) and those
  the task runner gave up delivering (failed). The task runner serves no metrics: what it gave
  up is read from the database here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from litestar import get
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.response import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aiserver.api.settings import MULTIPROCESS_VAR
from aiserver.core_db.database import require_pool
from aiserver.core_db.logging import get_logger
from aiserver.costs.live import LiveCatalog
from aiserver.ledger.budgets.reservations import batches
from aiserver.ledger.monitoring import LedgerBacklog, read_backlog
from aiserver.ledger.otlp.export import TraceExport
from aiserver.ledger.usage.ingest import IngestReport

log = get_logger(__name__)

#: How long a scrape waits for the ledger's backlog before it leaves those gauges out.
BACKLOG_TIMEOUT_S: Final = 2.0


class CatalogCollector(Collector):
    """Reads the live catalog at scrape time (no bookkeeping on the request path)."""

    def __init__(self) -> None:
        self.live: LiveCatalog | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        live = self.live
        if live is None:
            return
        catalog = live.catalog
        yield GaugeMetricFamily(
            "aiserver_catalog_version", "Catalog version loaded in this process", catalog.version
        )
        yield GaugeMetricFamily(
            "aiserver_catalog_models", "Current models in the loaded catalog", len(catalog)
        )
        loaded = live.last_reload_at
        yield GaugeMetricFamily(
            "aiserver_catalog_loaded_age_seconds",
            "Seconds since this process last loaded the catalog",
            (datetime.now(UTC) - loaded).total_seconds() if loaded else float("nan"),
        )
        success = live.last_success_at
        yield GaugeMetricFamily(
            "aiserver_catalog_age_seconds",
            "Seconds since the last successful refresh from the upstream source",
            (datetime.now(UTC) - success).total_seconds() if success else float("nan"),
        )
        yield GaugeMetricFamily(
            "aiserver_catalog_up", "1 while the catalog watcher reaches the database",
            0 if live.last_error else 1,
        )  # fmt: skip
        yield GaugeMetricFamily("aiserver_scrape_timestamp_seconds", "Scrape time", time.time())


catalog_collector = CatalogCollector()
REGISTRY.register(catalog_collector)

usage_events = Counter(
    "aiserver_usage_events", "Usage events this process was sent, by result", ["result"]
)
unpriced_events = Counter(
    "aiserver_usage_unpriced_events",
    "Usage events this process recorded that are not fully priced, by pricing status",
    ["pricing_status"],
)


def count_usage(report: IngestReport) -> None:
    """Count a request's results (called where the usage route has them)."""
    for result, count in (
        ("recorded", report.recorded), ("duplicate", report.duplicate),
        ("conflict", report.conflict), ("invalid", report.invalid),
    ):  # fmt: skip
        if count:
            usage_events.labels(result).inc(count)
    for event in report.results:
        if event.status == "recorded" and event.pricing_status in ("unpriced", "partially_priced"):
            unpriced_events.labels(event.pricing_status).inc()


otlp_spans = Counter(
    "aiserver_otlp_spans", "OpenTelemetry spans this process was sent, by result", ["result"]
)
otlp_ignored_spans = Counter(
    "aiserver_otlp_ignored_spans",
    "OpenTelemetry spans this process ignored (no GenAI usage), by reason",
    ["reason"],
)


def count_spans(export: TraceExport) -> None:
    """Count a trace export's spans (its model calls are counted as usage events too)."""
    report = export.report
    if report is not None:
        count_usage(report)
        for result, count in (
            ("recorded", report.recorded), ("duplicate", report.duplicate),
            ("rejected", export.rejected),
        ):  # fmt: skip
            if count:
                otlp_spans.labels(result).inc(count)
    ignored = export.reading.ignored
    if ignored:
        otlp_spans.labels("ignored").inc(sum(ignored.values()))
        for reason, count in ignored.items():
            otlp_ignored_spans.labels(reason).inc(count)


class BacklogCollector(Collector):
    """The ledger's backlog as the last scrape read it (`refresh`, before each scrape: the
    database is read asynchronously, and a collector is called synchronously)."""

    def __init__(self) -> None:
        self.backlog: LedgerBacklog | None = None

    async def refresh(self) -> None:
        try:
            self.backlog = await read_backlog(require_pool(), timeout=BACKLOG_TIMEOUT_S)
        except Exception as exc:  # a scrape never fails for the ledger's gauges
            self.backlog = None
            log.warning("ledger metrics not read", error=f"{type(exc).__name__}: {exc}")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = self.backlog
        if backlog is None:
            return
        yield GaugeMetricFamily(
            "aiserver_usage_folding_lag_seconds",
            "Age of the oldest usage outbox row not yet folded into the rollups (0: none waits)",
            backlog.folding_lag_seconds,
        )
        yield GaugeMetricFamily(
            "aiserver_usage_outbox_rows",
            "Usage outbox rows waiting to be folded (counted up to 100000)",
            backlog.outbox_rows,
        )
        runs = GaugeMetricFamily(
            "aiserver_usage_reprice_runs", "Usage repricing runs by state", labels=["state"]
        )
        for state, count in backlog.reprice_runs.items():
            runs.add_metric([state], count)
        yield runs
        alerts = GaugeMetricFamily(
            "aiserver_budget_alerts",
            "Budget alerts waiting to be delivered (pending) or given up (failed)",
            labels=["state"],
        )
        for state, count in backlog.budget_alerts.items():
            alerts.add_metric([state], count)
        yield alerts


backlog_collector = BacklogCollector()
REGISTRY.register(backlog_collector)


reservation_statements = Counter(
    "aiserver_reservation_statements",
    "Statements this process sent to reserve on hard budgets the quick way",
)
reservation_calls = Counter(
    "aiserver_reservation_calls",
    "Reservations those statements carried (per statement: calls / statements)",
)


def _count_reservations(statements: int, calls: int) -> None:
    reservation_statements.inc(statements)
    if calls:
        reservation_calls.inc(calls)


batches.SENT.listener = _count_reservations

prometheus = PrometheusConfig(app_name="aiserver_api", prefix="aiserver", group_path=True)


def multiprocess_dir() -> str | None:
    """Where the worker processes of one `aiserver-api --workers K` keep their counts
    (PROMETHEUS_MULTIPROC_DIR, set by `aiserver.api.cli` for K > 1); None for one process."""
    return os.environ.get(MULTIPROCESS_VAR) or None


@functools.cache
def _scraped() -> CollectorRegistry:
    """What a scrape answers: this process's registry; or, with several worker processes, the
    counters, histograms and gauges of all of them together (prometheus_client's multiprocess
    mode: each process writes its values to files in `multiprocess_dir()`, and a scrape,
    whichever process answers it, adds them up), and this process's catalog and the database's
    backlog, which are the same whoever reads them."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(catalog_collector)
    registry.register(backlog_collector)
    return registry


def process_exiting() -> None:
    """A worker process ends: its in-progress gauges leave the sums (its counters stay)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def forget_dead_processes() -> list[int]:
    """The worker processes that died without `process_exiting` (killed, crashed, or found hung
    and killed by uvicorn, which starts another in their place): their in-progress gauges leave
    the sums as a stopped worker's do, so that a request they were serving is not counted in
    progress for ever. Their counters stay, as a stopped worker's do. Run at each scrape; the
    pids it forgot."""
    directory = multiprocess_dir()
    if directory is None:
        return []
    dead: set[int] = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        number = path.stem.rpartition("_")[2]
        if number.isdigit() and int(number) != os.getpid() and not _alive(int(number)):
            dead.add(int(number))
    for pid in dead:
        # another worker's scrape may remove the same files first
        with contextlib.suppress(FileNotFoundError):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs (the workers are this machine's, or this container's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False

    @get()
    async def get(self) -> Response[bytes]:
        await backlog_collector.refresh()
        forget_dead_processes()
        return Response(generate_latest(_scraped()), headers={"Content-Type": CONTENT_TYPE_LATEST})
