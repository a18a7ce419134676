"""What every `aiserver-ledger` command shares: the pool, JSON output, times."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from aiserver.core_db.settings import CoreSettings

Command = Callable[["CoreSettings", "argparse.Namespace"], Coroutine[Any, Any, int]]


def print_json(value: Any) -> None:
    import msgspec

    print(msgspec.json.encode(value).decode())


def when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


async def with_pool(core: CoreSettings, work: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from aiserver.core_db.database import database, require_pool

    async with database(core):
        return await work(require_pool())


def tag_argument(text: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value
