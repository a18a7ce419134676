"""The dashboard at /ui: server-rendered pages over the ledger's own services (docs/ui.md).

- :mod:`.sessions`: the session cookie, its Redis record, CSRF tokens;
- :mod:`.viewer`: who is signed in, and which project a page may show;
- :mod:`.signin`: signing in and out, and the operator's project picker;
- :mod:`.overview`, :mod:`.explore`, :mod:`.events`, :mod:`.budgets`, :mod:`.keys`,
  :mod:`.catalog`: the pages;
- :mod:`.present`: a spend answer as tables, chart data and CSV (pure);
- `templates/` (Jinja2, autoescaped) and `static/` (the style sheet, the page script and the
  vendored Chart.js with its license): no CDN, the pages work offline.

The pages work without JavaScript (every chart has its table); the script only draws the charts.
Answers carry a strict Content-Security-Policy (scripts and styles from this server only) and are
never cached.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_eval_context, select_autoescape
from jinja2.filters import do_join, make_attrgetter
from jinja2.nodes import EvalContext
from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import ExceptionHandler, ExceptionHandlersMap
from markupsafe import Markup, escape

from aiserver.api.problems import EXCEPTION_HANDLERS
from aiserver.api.settings import ApiSettings
from aiserver.api.ui.budgets import BudgetPages
from aiserver.api.ui.catalog import CatalogPages
from aiserver.api.ui.events import EventController
from aiserver.api.ui.explore import ExploreController
from aiserver.api.ui.keys import KeyPages
from aiserver.api.ui.overview import OverviewController
from aiserver.api.ui.present import group_label, instant, on_clock, timestamp
from aiserver.api.ui.sessions import PATH, Signer, back_to
from aiserver.api.ui.signin import SignInController
from aiserver.api.ui.viewer import OPT, Dashboard, SignInNeeded
from aiserver.core_db.errors import AiserverError
from aiserver.core_db.logging import get_logger
from aiserver.costs.money import money
from aiserver.ledger.text import bidi_closed

log = get_logger(__name__)

STATIC: Final = Path(__file__).parent / "static"

_HEADERS: Final = [
    ResponseHeader(
        name="content-security-policy",
        value="default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ResponseHeader(name="x-content-type-options", value="nosniff"),
    ResponseHeader(name="referrer-policy", value="same-origin"),
    ResponseHeader(name="x-frame-options", value="DENY"),
]

#: An error page is built by an exception handler, which the router's headers and cache control
#: do not reach: the same headers, set on it here (it names projects and events too).
_ERROR_HEADERS: Final = {
    **{header.name: header.value for header in _HEADERS if header.value is not None},
    "cache-control": CacheControlHeader(no_store=True).to_header(),
}


def _money(value: str | Decimal) -> str:
    """An amount as the API writes it (`aiserver.costs.money.money`); a string as it came."""
    return value if isinstance(value, str) else money(value)


def _shown(value: Any) -> Any:
    """Every value a template writes (`{{ ... }}`): text with its bidirectional runs closed at
    its end (`bidi_closed`), so that a name or a tag cannot reorder the sentence it stands in;
    markup (a macro's, `field`'s) as it is."""
    return bidi_closed(value) if isinstance(value, str) and not isinstance(value, Markup) else value


@pass_eval_context
def _join(
    context: EvalContext, value: Iterable[Any], d: str = "", attribute: str | None = None
) -> str:
    """Jinja's `join`, each item shown as `_shown` shows a value: an item's open runs cannot
    reorder the items after it (the whole is closed only at its end)."""
    items = (
        value if attribute is None else map(make_attrgetter(context.environment, attribute), value)
    )
    joined: str = do_join(context, [_shown(item) for item in items], d)
    return joined


def _field(value: Any) -> Markup:
    """A form field's value exactly as stored, to be sent back unchanged: a field is drawn in
    a box of its own, which no run of its text leaves, so no closer is added."""
    return escape(value)


def templates() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=PackageLoader("aiserver.api.ui", "templates"),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    environment.filters["field"] = _field
    environment.filters["join"] = _join
    environment.filters["money"] = _money
    environment.filters["when"] = timestamp
    environment.filters["on_clock"] = on_clock
    environment.filters["label"] = group_label
    environment.globals["instant"] = instant
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def _sign_in(request: Request[Any, Any, Any], exc: SignInNeeded) -> Response[Any]:
    """To the sign-in form; from a page (a GET: a shared Explore question, a bookmark), with
    that page's address to come back to once signed in (`back_to` checks it there)."""
    # as the browser asked for it (the router drops a trailing slash from `url.path`)
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    page = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    if request.method != "GET" or page == f"{PATH}/" or back_to(page) is None:
        return Redirect(f"{PATH}/sign-in", status_code=303)
    # its slashes as they are: the address reads as a path, and its query stays encoded
    return Redirect(f"{PATH}/sign-in?{urlencode({'next': page}, safe='/')}", status_code=303)


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A domain error (or a framework one: 404, 405, ...) as a page, with its status."""
    if isinstance(exc, AiserverError):  # its headers too: a 503's Retry-After, a 429's
        return _page(request, exc.status, str(exc), exc.headers())
    assert isinstance(exc, HTTPException)
    return _page(request, exc.status_code, exc.detail, exc.headers)


def _page(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Template:
    """The error page of `status`, saying `detail`, with the dashboard's headers."""
    return Template(
        template_name="error.html",
        status_code=status,
        headers={**(headers or {}), **_ERROR_HEADERS},
        context={
            "status": status,
            "detail": detail,
            "viewer": getattr(request.state, "viewer", None),
            "project": None,
            "page": "error",
        },
    )


def _as_page(handler: ExceptionHandler[Any]) -> ExceptionHandler[Any]:
    """The API's handler of an error (`aiserver.api.problems`: its log, its status, detail and
    headers such as Retry-After) answering with an error page instead of a problem."""

    def page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        answer = handler(request, exc)
        return _page(request, answer.status_code or 500, answer.content["detail"], answer.headers)

    return page


#: The API's handlers of what a page may meet besides a domain or HTTP error (a database or
#: Redis that does not answer, a rolled-back transaction, a bug), as pages: the app's own would
#: answer a browser with JSON, without the dashboard's headers.
_AS_PAGES: Final[ExceptionHandlersMap] = {
    kind: _as_page(handler)
    for kind, handler in EXCEPTION_HANDLERS.items()
    if isinstance(kind, type) and kind not in (AiserverError, HTTPException)
}


def ui_router(settings: ApiSettings) -> Router:
    """The dashboard's pages and static files, under /ui."""
    secret = settings.ui_session_secret.encode()
    if not secret:
        log.warning(
            "UI_SESSION_SECRET is not set: dashboard sessions use a random secret of this "
            "process (they end when it restarts, and work on this replica only)"
        )
        secret = secrets.token_bytes(32)
    board = Dashboard(signer=Signer(secret), session_seconds=settings.ui_session_seconds)
    pages = Router(
        path="/",
        route_handlers=[
            SignInController,
            OverviewController,
            ExploreController,
            EventController,
            BudgetPages,
            KeyPages,
            CatalogPages,
        ],
        opt={OPT: board},
        include_in_schema=False,
        response_headers=_HEADERS,
        cache_control=CacheControlHeader(no_store=True),
        exception_handlers={
            **_AS_PAGES,
            SignInNeeded: _sign_in,
            AiserverError: _error_page,
            HTTPException: _error_page,
        },
    )
    static = create_static_files_router(
        path=f"{PATH}/static",
        directories=[STATIC],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=3600),
    )
    return Router(path="/", route_handlers=[pages, static], include_in_schema=False)
