"""One place wires the app: lifespan resources, controllers, errors, OpenAPI, middleware."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Final

import msgspec
from arq.connections import ArqRedis
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Reference, Schema, SecurityScheme
from litestar.types import ControllerRouterHandler, Message, Scope

from aiserver.api.access import access_log
from aiserver.api.controllers.budget_alerts import BudgetAlertController
from aiserver.api.controllers.budget_reservations import ReservationController
from aiserver.api.controllers.budgets import BudgetController
from aiserver.api.controllers.catalog import CatalogController
from aiserver.api.controllers.costs import CostController
from aiserver.api.controllers.documents import DocumentController
from aiserver.api.controllers.health import health, ready
from aiserver.api.controllers.models import ModelController
from aiserver.api.controllers.otlp import OtlpController
from aiserver.api.controllers.overrides import OverrideController
from aiserver.api.controllers.projects import KeyController, ProjectController
from aiserver.api.controllers.reprice import RepriceController
from aiserver.api.controllers.spend import SpendController
from aiserver.api.controllers.usage import UsageController
from aiserver.api.controllers.usage_events import UsageEventController
from aiserver.api.controllers.usage_export import UsageExportController
from aiserver.api.metrics import (
    MetricsController,
    catalog_collector,
    process_exiting,
    prometheus,
)
from aiserver.api.problems import EXCEPTION_HANDLERS, CheckedRequest, answer_cancelled
from aiserver.api.settings import ApiSettings
from aiserver.api.ui import templates, ui_router
from aiserver.core_db.database import database, require_pool
from aiserver.core_db.logging import get_logger
from aiserver.costs.live import LiveCatalog
from aiserver.documents.limits import upload_body_limit
from aiserver.ledger.authentication import Keyring
from aiserver.ledger.usage.bodies import MAX_NDJSON_BYTES
from aiserver.ledger.usage.ingest import UsageRecorder

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
    ProjectController,
    KeyController,
    UsageEventController,
    BudgetController,
    RepriceController,
    UsageExportController,
    ReservationController,
    BudgetAlertController,
    SpendController,
    MetricsController,
    OtlpController,
]

OPENAPI: Final = OpenAPIConfig(
    title="aiserver API",
    version="0.1.0",
    description="The model price catalog and exact costs of AI model calls. Money is an exact "
    "decimal string; errors are RFC 9457 problem details.",
    path="/schema",
    render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
    components=Components(
        security_schemes={
            "bearer": SecurityScheme(
                type="http",
                scheme="bearer",
                description="A project's key (ais_<public id>_<secret>) or an operator's token "
                "(API_ADMIN_TOKENS)",
            )
        }
    ),
)


#: The garbage collector's thresholds while the API serves. Python's first one, 700, starts a
#: pass over the youngest generation after every 700 container objects allocated (net of those
#: freed): a batch of 1,000 events allocates tens of objects per event that live until its
#: answer, so the default pass ran a dozen times or more per batch, walking the batch's live
#: objects each time: about 9% of the API's CPU under ingest, 0.3% at 50,000. Garbage in cycles
#: waits longer for a pass; 3,200 failing requests of 250 KB (invalid events, cut-off bodies,
#: wrong shapes, unknown keys) left too little to start one, and the RSS stayed flat. Measured
#: in bench/changes.md, on the generational collector of Python 3.11 to 3.13 (our images):
#: measure again before moving to a Python whose collector reads these numbers otherwise.
COLLECTOR_THRESHOLDS: Final = (50_000, 10, 10)


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """`COLLECTOR_THRESHOLDS` in force, the previous thresholds restored after."""
    previous = gc.get_threshold()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def lifespan_for(settings: ApiSettings):  # type: ignore[no-untyped-def]
    """Open the database pool, the arq Redis pool, the live catalog and the key cache; close
    them in reverse (the keys' last uses are written once more on the way out). The collector's
    thresholds are `COLLECTOR_THRESHOLDS` in between."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # A database that is down at start is not fatal: calculations wait for the catalog,
        # /ready says why, and the watcher loads the catalog once the database answers.
        with collector_tuned():
            async with database(
                settings.core, lazy=True, timeout=settings.api_database_timeout_seconds
            ):
                redis = ArqRedis.from_url(
                    settings.core.redis_url, socket_connect_timeout=2, socket_timeout=5
                )
                live = LiveCatalog(settings.core, settings.costs)
                await live.start()
                app.state.live = live
                app.state.redis = redis
                app.state.keyring = keyring = Keyring(settings.ledger.api_key_cache_seconds)
                app.state.usage = UsageRecorder(settings.ledger)
                recording = asyncio.create_task(
                    keyring.uses.run(
                        require_pool(), settings.ledger.api_key_last_used_interval_seconds
                    ),
                    name="key-use-recorder",
                )
                listening = asyncio.create_task(keyring.listen(settings.core), name="key-listener")
                catalog_collector.live = live
                log.info(
                    "api ready", catalog_version=live.catalog.version, models=len(live.catalog)
                )
                try:
                    yield
                finally:
                    try:
                        listening.cancel()
                        recording.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await listening
                        with contextlib.suppress(asyncio.CancelledError):
                            await recording
                        await live.stop()
                        await redis.aclose()
                    finally:
                        process_exiting()

    return lifespan


_NOSNIFF: Final = (b"x-content-type-options", b"nosniff")


async def nosniff(message: Message, scope: Scope) -> None:
    """Every answer says `X-Content-Type-Options: nosniff` (the dashboard's pages set it already):
    a problem that quotes the request (`no project '<script>'`), or an upload's pages, are
    never read by a browser as another type than the one they are sent as. Answers the
    router makes (an unknown route's 404) too."""
    if message["type"] == "http.response.start":
        headers = message.get("headers", ())
        if not any(name.lower() == _NOSNIFF[0] for name, _ in headers):
            message["headers"] = [*headers, _NOSNIFF]


def _open_unions_any_of(app: Litestar) -> None:
    """In the OpenAPI document, a union with an open member (`Usage | Any`: any value) is
    `anyOf`, not Litestar's `oneOf`: a value valid under both a `Usage` and `{}` fails a
    `oneOf`, so the document refused the README's own cost request (a helper's check with a
    JSON Schema validator). Run at start-up, before the document is first served."""
    seen: set[int] = set()

    def walk(node: object) -> None:
        if isinstance(node, list | tuple):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)
        elif isinstance(node, Schema) and id(node) not in seen:
            seen.add(id(node))
            if node.one_of and any(option == Schema() for option in node.one_of):
                node.any_of, node.one_of = node.one_of, None
            for name in ("properties", "items", "one_of", "any_of", "all_of",
                         "additional_properties", "prefix_items"):  # fmt: skip
                walk(getattr(node, name, None))

    openapi = app.openapi_schema
    walk(openapi.components.schemas)
    for item in (openapi.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.patch, item.delete):
            if operation is None:
                continue
            body = operation.request_body
            if body is not None and not isinstance(body, Reference):
                walk([media.schema for media in (body.content or {}).values()])


def _closed_bodies(app: Litestar) -> None:
    """In the OpenAPI document, each schema of a body that the server reads strictly (a
    `forbid_unknown_fields` struct: a field it does not know is a 422) says
    `additionalProperties: false`, so that a client generated from the document, or a JSON
    Schema validator, refuses what the server refuses (a helper's fuzzing: the document
    allowed any other field). A name that two structs share is left as it is. Run at
    start-up, before the document is first served."""
    found: dict[str, list[type[msgspec.Struct]]] = {}
    pending = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, []).append(cls)
        pending.extend(cls.__subclasses__())
    schemas = app.openapi_schema.components.schemas
    for name, schema in schemas.items():
        classes = found.get(name, [])
        strict = len(classes) == 1 and classes[0].__struct_config__.forbid_unknown_fields
        if strict and isinstance(schema, Schema):
            schema.additional_properties = False


def build_app(settings: ApiSettings) -> Litestar:
    # Uploads may be larger than other bodies, by DOCUMENT_MAX_BYTES read when the app is built.
    documents = Router(
        path="/",
        route_handlers=[DocumentController],
        request_max_body_size=upload_body_limit(settings.documents),
    )
    # Usage may come as up to 100,000 JSON lines; the handler holds JSON bodies to less.
    usage = Router(
        path="/", route_handlers=[UsageController], request_max_body_size=MAX_NDJSON_BYTES
    )
    return Litestar(
        route_handlers=[*ROUTES, documents, usage, ui_router(settings)],
        template_config=templates(),
        lifespan=[lifespan_for(settings)],
        exception_handlers=EXCEPTION_HANDLERS,
        # Logging is ours (aiserver.core_db.logging): Litestar's default config would replace
        # the root handler, and every line would lose its JSON (or console) format.
        logging_config=None,
        openapi_config=OPENAPI,
        # innermost, answer_cancelled's 503 is the request's answer in the log and the metrics
        middleware=[access_log, prometheus.middleware, answer_cancelled],
        before_send=[nosniff],
        request_max_body_size=MAX_BODY_BYTES,
        request_class=CheckedRequest,
        state=State({"settings": settings}),
        on_startup=[_open_unions_any_of, _closed_bodies],
    )
