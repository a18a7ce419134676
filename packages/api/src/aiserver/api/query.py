"""A route's query parameters are the ones it declares: a misspelled one is a 422, never ignored,
and so is one given twice that takes one value (`?model=a&model=b`: one would be ignored)."""

from __future__ import annotations

from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Operation, Parameter, Schema
from litestar.types import Guard

from aiserver.api.errors import RepeatedQuery, UnknownQuery


def only_query(
    *names: str, prefixes: tuple[str, ...] = (), repeatable: tuple[str, ...] = ()
) -> Guard:
    """A guard that refuses any query parameter but `names` (e.g. `?archvied=true`) and those
    whose name starts with one of `prefixes` (`tag:` takes `tag:team=search`), and any of
    `names` given more than once unless it is `repeatable` (a list: `group_by`). A prefixed
    parameter's repeats are its route's to judge.

    The guard is a coroutine function though it never waits: Litestar runs a plain function
    guard in a thread pool, a hop to another thread and back on every request."""
    known = frozenset(names)
    single = known - frozenset(repeatable)
    described = known | {f"{prefix}KEY" for prefix in prefixes}

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        unknown = sorted(
            name
            for name in set(connection.query_params) - known
            if not (prefixes and name.startswith(prefixes))
        )
        if unknown:
            raise UnknownQuery(unknown, described)
        params = connection.query_params
        repeated = sorted(name for name in single & set(params) if len(params.getall(name)) > 1)
        if repeated:
            raise RepeatedQuery(repeated)

    return guard


#: The guard of a route that takes no query parameter.
NO_QUERY: Final = only_query()


def require_in_document(operation: Operation, *names: str) -> None:
    """Mark the query parameters `names` of an OpenAPI operation required: parameters the
    route's own check refuses to go without (a 422 that names them, as its other checks do),
    which the handler therefore takes with a default."""
    for parameter in operation.parameters or ():
        if not (
            isinstance(parameter, Parameter)
            and parameter.param_in == "query"
            and parameter.name in names
        ):
            continue
        parameter.required = True
        schema = parameter.schema
        if isinstance(schema, Schema) and schema.one_of:  # `str | None`: given, it is a str
            kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == "null")]
            if len(kept) == 1 and isinstance(kept[0], Schema):
                schema.type, schema.one_of = kept[0].type, None
