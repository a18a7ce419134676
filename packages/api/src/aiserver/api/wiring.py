"""One place wires the app: lifespan resources, controllers, errors, OpenAPI, middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from arq.connections import ArqRedis
from litestar import Litestar
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler

from aiserver.api.access import access_log
from aiserver.api.controllers.catalog import CatalogController
from aiserver.api.controllers.costs import CostController
from aiserver.api.controllers.documents import DocumentController
from aiserver.api.controllers.health import health, ready
from aiserver.api.controllers.models import ModelController
from aiserver.api.controllers.overrides import OverrideController
from aiserver.api.metrics import MetricsController, catalog_collector, prometheus
from aiserver.api.problems import EXCEPTION_HANDLERS, CheckedRequest, problem_responses
from aiserver.core_db.database import database
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import Settings
from aiserver.costs.live import LiveCatalog

log = get_logger(__name__)

#: Largest request body (413 above it): a batch of 1000 cost requests fits comfortably.
MAX_BODY_BYTES: Final = 2 * 1024 * 1024

ROUTES: Final[list[ControllerRouterHandler]] = [
    health,
    ready,
    ModelController,
    CostController,
    CatalogController,
    OverrideController,
    DocumentController,
    MetricsController,
]

#: The problems each operation may answer (application/problem+json), for its OpenAPI responses;
#: without them the document listed only Litestar's own 400 body, which the API never sends.
PROBLEMS: Final[dict[str, tuple[int, ...]]] = {
    "health": (),
    "ready": (503,),
    "list_models": (400, 422, 503),
    "get_model": (400, 404, 422, 503),
    "calculate_cost": (400, 404, 413, 422, 503),
    "calculate_batch": (400, 413, 422, 503),
    "catalog_status": (503,),
    "refresh": (400, 401, 403, 413, 422, 503),
    "job_status": (400, 404, 503),
    "list_overrides": (401, 403, 503),
    "put_override": (400, 401, 403, 413, 422, 503),
    "delete_override": (400, 401, 403, 404, 503),
    "upload": (400, 413, 415, 422, 503),
    "status": (400, 404, 503),
    "pdf": (400, 404, 503),
    "page": (400, 404, 503),
}
_OTHER_PROBLEMS: Final = (400, 404, 413, 422, 503)


def _document_problems(routes: list[ControllerRouterHandler]) -> None:
    for route in routes:
        handlers = [route] if isinstance(route, HTTPRouteHandler) else [
            h for h in vars(route).values() if isinstance(h, HTTPRouteHandler)
        ]  # fmt: skip
        for handler in handlers:
            statuses = PROBLEMS.get(handler.handler_name, _OTHER_PROBLEMS)
            handler.responses = {**problem_responses(*statuses), **(handler.responses or {})}


_document_problems(ROUTES)

OPENAPI: Final = OpenAPIConfig(
    title="aiserver API",
    version="0.1.0",
    description="The model price catalog and exact costs of AI model calls. Money is an exact "
    "decimal string; errors are RFC 9457 problem details.",
    path="/schema",
    render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
    components=Components(
        security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", description="API_ADMIN_TOKENS")
        }
    ),
)


def lifespan_for(settings: Settings):  # type: ignore[no-untyped-def]
    """Open the database pool, the arq Redis pool and the live catalog; close them in reverse."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # A database that is down at start is not fatal: calculations wait for the catalog,
        # /ready says why, and the watcher loads the catalog once the database answers.
        async with database(settings, lazy=True):
            redis = ArqRedis.from_url(
                settings.redis_url, socket_connect_timeout=2, socket_timeout=5
            )
            live = LiveCatalog(settings)
            await live.start()
            app.state.live = live
            app.state.redis = redis
            catalog_collector.live = live
            log.info("api ready", catalog_version=live.catalog.version, models=len(live.catalog))
            try:
                yield
            finally:
                await live.stop()
                await redis.aclose()

    return lifespan


def build_app(settings: Settings) -> Litestar:
    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan_for(settings)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # Logging is ours (aiserver.core_db.logging): Litestar's default config would replace
        # the root handler, and every line would lose its JSON (or console) format.
        logging_config=None,
        openapi_config=OPENAPI,
        middleware=[access_log, prometheus.middleware],
        request_max_body_size=MAX_BODY_BYTES,
        request_class=CheckedRequest,
        state=State({"settings": settings}),
    )
