"""`aiserver-costs`: refresh, inspect and use the price catalog from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from aiserver.core_db.database import DatabaseUnavailable, connect
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import Settings, settings_for_command
from aiserver.costs.refresh import refresh_catalog, seed_from_snapshot
from aiserver.costs.source import decode_json, is_price_field
from aiserver.costs.status import price_field_usage, read_status
from aiserver.costs.store import DEFAULT_SOURCE

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


_json = msgspec.json.Encoder(decimal_format="string")


def _print_json(value: Any) -> None:
    print(_json.encode(value).decode())


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "never"


async def _refresh(settings: Settings, args: argparse.Namespace) -> int:
    report = await refresh_catalog(
        settings, force=args.force, trigger="cli", source_url=args.source_url
    )
    if args.json:
        _print_json({**report.as_dict(), "skipped": report.skipped})
    else:
        print(report.summary())
        for key, reason in sorted(report.skipped.items()):
            print(f"  skipped {key}: {reason}")
    return 0 if report.outcome.ok else 1


async def _seed(settings: Settings, args: argparse.Namespace) -> int:
    report = await seed_from_snapshot(settings)
    if report is None:
        print("nothing to do: the catalog already has models (or a refresh is running)")
    else:
        print(report.summary())
    return 0


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect(settings)
    try:
        status = await read_status(conn, settings)
    finally:
        await conn.close()
    if args.json:
        _print_json(status)
        return 0
    age = "unknown" if status.age_seconds is None else f"{status.age_seconds:.0f} s"
    lines = [
        f"source:          {status.source} ({status.url or 'no refresh yet'})",
        f"models:          {status.model_count} ({status.alias_count} aliases, "
        f"{status.override_count} overrides)",
        f"catalog version: {status.catalog_version}",
        f"last success:    {_when(status.last_success_at)} (age {age}, "
        f"max {status.max_age_seconds} s)",
        f"stale:           {'yes' if status.stale else 'no'}",
        f"last checked:    {_when(status.last_checked_at)}",
        f"last changed:    {_when(status.last_changed_at)}",
        f"last error:      {status.last_error or 'none'}"
        + (f" at {_when(status.last_error_at)}" if status.last_error else ""),
    ]
    if status.last_run:
        run = status.last_run
        lines.append(
            f"last run:        {run.outcome} ({run.trigger}) at {_when(run.started_at)}: "
            f"added {run.added}, changed {run.changed}, removed {run.removed}, "
            f"skipped {run.skipped}"
        )
    print("\n".join(lines))
    return 0


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect(settings)
    try:
        row = await conn.fetchrow(
            """
            SELECT model, provider, mode, entry::text AS entry, valid_from, opened_in_version,
                   (SELECT count(*) FROM ai_model_costs h
                    WHERE h.source = c.source AND h.model = c.model) AS versions
            FROM ai_model_costs c
            WHERE source = $1 AND valid_to IS NULL AND lower(model) = lower($2)
            ORDER BY model = $2 DESC LIMIT 1
            """,
            DEFAULT_SOURCE,
            args.model,
        )
    finally:
        await conn.close()
    if row is None:
        print(f"aiserver-costs: unknown model {args.model!r}", file=sys.stderr)
        return 1
    entry = decode_json(row["entry"])
    if args.json:
        _print_json({"model": row["model"], "provider": row["provider"], "entry": entry})
        return 0
    print(f"model:     {row['model']}")
    print(f"provider:  {row['provider']}")
    print(f"mode:      {row['mode'] or '-'}")
    print(
        f"version:   opened in catalog version {row['opened_in_version']}, valid from "
        f"{_when(row['valid_from'])} ({row['versions']} version(s) kept)"
    )
    print("prices:")
    for name in sorted(n for n in entry if is_price_field(n)):
        value = entry[name]
        text = value if not isinstance(value, dict | list) else msgspec.json.encode(value).decode()
        print(f"  {name} = {text}")
    return 0


async def _fields(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.pricing import is_understood_field

    conn = await connect(settings)
    try:
        usage = await price_field_usage(conn)
    finally:
        await conn.close()
    unknown = 0
    for name, count in sorted(usage.items(), key=lambda item: (-item[1], item[0])):
        understood = is_understood_field(name)
        unknown += not understood
        print(f"{count:6d}  {name}{'' if understood else '   (not understood by the calculator)'}")
    print(f"{len(usage)} price fields, {unknown} not understood by the calculator")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-costs",
        description="The aiserver price catalog in PostgreSQL (DATABASE_URL): refresh it from "
        "its upstream source, inspect it, and price model calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    refresh = sub.add_parser(
        "refresh",
        help="refresh the catalog from the upstream source when it is stale",
        description="Download the upstream price document (MODEL_COST_SOURCE_URL) and apply "
        "what changed, when the catalog is older than MODEL_COST_MAX_AGE_SECONDS. Exit 1 when "
        "the download failed or a guardrail rejected it (the catalog then stays unchanged).",
    )
    refresh.add_argument(
        "--force", action="store_true", help="refresh even if the catalog is not stale"
    )
    refresh.add_argument(
        "--source-url", metavar="URL", help="take the document from URL (http(s):// or file://)"
    )
    refresh.add_argument("--json", action="store_true", help="print the report as JSON")

    sub.add_parser(
        "seed",
        help="load the price snapshot bundled in this package into an empty catalog",
        description="Load the snapshot that ships inside aiserver-costs into the catalog when "
        "it has no models (the task runner does this at start-up). Works with no network.",
    )

    status = sub.add_parser("status", help="source, ages, staleness, counts, last error")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    show = sub.add_parser("show", help="the current prices of one model")
    show.add_argument("model", metavar="MODEL", help="the model's catalog key")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")

    sub.add_parser(
        "fields",
        help="every price field in the catalog, with how many models use it",
        description="List every price field seen in the current catalog with the number of "
        "models using it, marking those the cost calculator does not understand yet.",
    )
    return parser


COMMANDS: dict[str, Command] = {
    "refresh": _refresh,
    "seed": _seed,
    "status": _status,
    "show": _show,
    "fields": _fields,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_for_command("aiserver-costs")
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(COMMANDS[args.command](settings, args))
    except DatabaseUnavailable as exc:
        print(f"aiserver-costs: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError as exc:
        print(
            f"aiserver-costs: the catalog tables are missing ({exc}); "
            "apply the migrations first: aiserver-db migrate",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
