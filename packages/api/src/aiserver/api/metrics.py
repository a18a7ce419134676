"""Prometheus metrics: request counts and latency by route (Litestar's middleware), and the
catalog's version, size and age in this process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aiserver.costs.live import LiveCatalog


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

prometheus = PrometheusConfig(app_name="aiserver_api", prefix="aiserver", group_path=True)


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False
