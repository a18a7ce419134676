"""No request hops to a worker thread: Litestar runs a plain function guard, dependency or
handler in a thread pool unless told not to, a hop to another thread and back (and a wait for
the GIL) on every request. Every one of the API's runs on the event loop."""

from __future__ import annotations

from litestar.handlers.base import BaseRouteHandler
from litestar.testing import AsyncTestClient
from litestar.utils.sync import AsyncCallable

Client = AsyncTestClient  # type: ignore[type-arg]


def _threaded(handler: BaseRouteHandler) -> list[str]:
    found = [
        f"guard {getattr(guard.func, '__qualname__', guard.func)}"
        for guard in handler.resolve_guards()
        if isinstance(guard, AsyncCallable)
    ]
    found += [
        f"dependency {name}"
        for name, provide in handler.resolve_dependencies().items()
        if provide.has_sync_callable and provide.sync_to_thread
    ]
    if getattr(handler, "has_sync_callable", False) and getattr(handler, "sync_to_thread", False):
        found.append("handler")
    return found


async def test_no_guard_dependency_or_handler_runs_in_a_thread(client: Client) -> None:
    handlers = [
        (sorted(getattr(route, "methods", ())), route.path, handler)
        for route in client.app.routes
        for handler in getattr(route, "route_handlers", ())
    ]
    assert len(handlers) > 50  # every route of the API, the dashboard's included
    threaded = {
        f"{' '.join(methods)} {path}": hops
        for methods, path, handler in handlers
        if (hops := _threaded(handler))
    }
    assert threaded == {}
