"""What the `aiserver-costs` commands share: their settings, JSON out, times, the database,
and the problem of a failure as the API answers it."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from aiserver.core_db.commands import command_problem
from aiserver.core_db.errors import problem, validation_field
from aiserver.core_db.settings import CoreSettings, Section
from aiserver.costs.settings import CostSettings

if TYPE_CHECKING:
    import asyncpg

    from aiserver.costs.catalog import Catalog


class Settings(Section, frozen=True, kw_only=True):
    """What `aiserver-costs` reads from the environment."""

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)


#: A command: what it runs, under asyncio.run.
Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

#: JSON out; the commands write prices through `money` (a Decimal here would be str()'s spelling).
JSON: Final = msgspec.json.Encoder(decimal_format="string")


def print_json(value: Any) -> None:
    print(JSON.encode(value).decode())


def when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "never"


async def connect(settings: Settings) -> asyncpg.Connection:
    from aiserver.core_db.connections import connect as connect_to

    return await connect_to(settings.core)


async def load_catalog(conn: asyncpg.Connection) -> Catalog:
    """The catalog as pricing reads it (`catalog.load_catalog`); `CatalogNotReady` while it has
    no models, when every name would be "unknown"."""
    from aiserver.costs.catalog import load_catalog as read_catalog
    from aiserver.costs.errors import CatalogNotReady

    catalog = await read_catalog(conn)
    if not len(catalog):
        raise CatalogNotReady(
            "the catalog in the database has no models yet; "
            "run: aiserver-costs seed (offline) or aiserver-costs refresh"
        )
    return catalog


def problem_of(exc: Exception) -> dict[str, Any] | None:
    """The problem of a failure, as the API answers it (`aiserver.api.problems`): a request of
    the wrong shape, 422 `invalid-request` naming the field; one that is not JSON, 400
    `malformed-json`; else what any command answers (`command_problem`: a domain error's own,
    tables not migrated). None for an error that no input or state explains: a bug, left to
    raise."""
    if isinstance(exc, msgspec.ValidationError):
        message, field = validation_field(str(exc))
        detail = f"invalid request: {field}: {message}" if field else f"invalid request: {message}"
        errors = [{"field": field or None, "message": message}]
        return problem(422, detail, slug="invalid-request", errors=errors)
    if isinstance(exc, msgspec.DecodeError):
        return problem(400, f"the request is not valid JSON: {exc}", slug="malformed-json")
    if isinstance(exc, UnicodeDecodeError):
        detail = f"the request is not valid JSON: invalid UTF-8 at byte {exc.start}"
        return problem(400, detail, slug="malformed-json")
    return command_problem(exc)
