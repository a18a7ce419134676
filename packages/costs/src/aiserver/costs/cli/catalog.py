"""`aiserver-costs refresh|seed|status|show|fields`: the price catalog in the database, refreshed
and looked at."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from aiserver.core_db.commands import counted
from aiserver.core_db.settings import SettingsError
from aiserver.costs.cli.common import JSON, Settings, connect, load_catalog, print_json, when
from aiserver.costs.settings import CostSettings


def _source_url(text: str) -> str:
    """An argparse type: a source URL, checked as MODEL_COST_SOURCE_URL is (by the settings
    themselves). `--source-url` replaces that setting, so a URL the setting refuses (`ftp://`,
    no scheme) is a wrong argument, not a download that fails and is retried."""
    try:
        CostSettings(model_cost_source_url=text)
    except SettingsError as exc:  # its text names the setting: here the option was typed
        said = str(exc).removeprefix("MODEL_COST_SOURCE_URL ")
        raise argparse.ArgumentTypeError(said) from None
    return text


async def refresh(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.refresh import refresh_catalog

    report = await refresh_catalog(
        settings.core, settings.costs, force=args.force, trigger="cli", source_url=args.source_url
    )
    if args.json:
        print_json({**report.as_dict(), "skipped": report.skipped})
    elif not report.outcome.ok:  # a failure is one line on stderr, as every command's is
        print(f"aiserver-costs refresh: {report.summary()}", file=sys.stderr)
    else:
        print(report.summary())
        for key, reason in sorted(report.skipped.items()):
            print(f"  skipped {key}: {reason}")
    return 0 if report.outcome.ok else 1


async def seed(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.refresh import seed_from_snapshot

    report = await seed_from_snapshot(settings.core)
    if report is None:
        print("nothing to do: the catalog already has models (or a refresh is running)")
    else:
        print(report.summary())
    return 0


async def status(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.status import read_status

    conn = await connect(settings)
    try:
        status = await read_status(conn, settings.costs)
    finally:
        await conn.close()
    if args.json:
        print_json(status)
        return 0
    age = "unknown" if status.age_seconds is None else f"{status.age_seconds:.0f} s"
    lines = [
        f"source:          {status.source} ({status.url or 'no refresh yet'})",
        f"models:          {status.model_count} ({status.alias_count} aliases, "
        f"{status.override_count} overrides)",
        f"catalog version: {status.catalog_version}",
        f"last success:    {when(status.last_success_at)} (age {age}, "
        f"max {status.max_age_seconds} s)",
        "stale:           "
        + (
            "yes: the task runner refreshes it from its upstream when it looks (at its start, "
            "then every MODEL_COST_REFRESH_INTERVAL_SECONDS); aiserver-costs refresh does it now"
            if status.stale
            else "no"
        ),
        f"last checked:    {when(status.last_checked_at)}",
        f"last changed:    {when(status.last_changed_at)}",
        f"last error:      {status.last_error or 'none'}"
        + (f" at {when(status.last_error_at)}" if status.last_error else ""),
    ]
    if status.last_run:
        run = status.last_run
        lines.append(
            f"last run:        {run.outcome} ({run.trigger}) at {when(run.started_at)}: "
            f"added {run.added}, changed {run.changed}, removed {run.removed}, "
            f"skipped {run.skipped}"
        )
    print("\n".join(lines))
    return 0


async def show(settings: Settings, args: argparse.Namespace) -> int:
    """The prices `calc` charges for a call made now (the catalog's version with the override
    valid now laid over it, as `calculate` finds it), not the source's row alone: a model only
    an override defines, or one the source dropped that an override keeps, is shown as priced."""
    from datetime import UTC

    from aiserver.costs.money import plain
    from aiserver.costs.pricing import is_price_field
    from aiserver.costs.store.prices import read_current_model

    conn = await connect(settings)
    try:
        catalog = await load_catalog(conn)
        resolution, pv = catalog.current_for(args.model)
        note = None
        if pv is None:  # gone from the source: priced while an override keeps it (else unknown)
            pv, note = catalog.version_at(resolution.key, datetime.now(UTC))
        # the source's current row, for the catalog version that opened it
        source = pv.valid_to is None and pv.source != "override"
        found = await read_current_model(conn, pv.model) if source else None
    finally:
        await conn.close()
    overrides = [o for o in catalog.overrides(pv.model) if o.id == pv.override_id]
    entry = pv.entry
    if args.json:
        print_json(
            {
                "model": pv.model,
                "provider": pv.provider,
                "entry": plain(entry),
                "override_id": pv.override_id,
                "overrides": [
                    {
                        "id": o.id,
                        "provider": o.provider,
                        "prices": plain(dict(o.prices)),
                        "reason": o.reason,
                        "valid_from": o.valid_from,
                        "valid_to": o.valid_to,
                    }
                    for o in overrides
                ],
                "notes": [note] if note else [],
            }
        )
        return 0
    kept = f"{counted(len(catalog.history(pv.model)), 'version')} kept"
    if found is not None:
        version = (
            f"opened in catalog version {found.opened_in_version}, valid from "
            f"{when(found.valid_from)} ({counted(found.versions, 'version')} kept)"
        )
    elif pv.source == "override":
        version = f"none from the source: override {pv.override_id} defines the model ({kept})"
    else:
        version = (
            f"price version {pv.id}, valid from {when(pv.valid_from)} until "
            f"{when(pv.valid_to)} ({kept})"
        )
    print(f"model:     {pv.model}")
    print(f"provider:  {pv.provider}")
    print(f"mode:      {pv.mode or '-'}")
    print(f"version:   {version}")
    print("prices:")  # as charged: the override's laid over the source's
    for name in sorted(n for n in entry if is_price_field(n)):
        value = plain(entry[name])
        text = value if not isinstance(value, dict | list) else JSON.encode(value).decode()
        print(f"  {name} = {text}")
    for o in overrides:  # the one laid over them, and the prices it sets
        reason = f" ({o.reason})" if o.reason else ""
        print(f"override:  {o.id} (provider {o.provider}), valid from {when(o.valid_from)}{reason}")
        for name, value in sorted(o.prices.items()):
            print(f"  {name} = {plain(value)}")
    if note:
        print(f"note:      {note}")
    return 0


async def fields(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.pricing import is_understood_field
    from aiserver.costs.status import price_field_usage

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


def add_refresh(sub: Any) -> None:
    """The parser of `refresh`."""
    refresh = sub.add_parser(
        "refresh",
        help="refresh the catalog from the upstream source when it is stale",
        description="Download the upstream price document (MODEL_COST_SOURCE_URL) and apply "
        "what changed, when the catalog is older than MODEL_COST_MAX_AGE_SECONDS. Exit 1 when "
        "the download failed or a guardrail rejected it (the catalog then stays unchanged). "
        "Exit 0 also when it did nothing: the catalog was fresh (without --force), or another "
        "process (a task runner) was refreshing it at that moment; the first line says which "
        "('skipped: another process is refreshing ...'; with --json, its outcome).",
        epilog=(
            "examples:\n"
            "  aiserver-costs refresh --force\n"
            "  aiserver-costs refresh --source-url file:///srv/prices.json --json"
        ),
    )
    refresh.add_argument(
        "--force", action="store_true", help="refresh even if the catalog is not stale"
    )
    refresh.add_argument(
        "--source-url",
        type=_source_url,
        metavar="URL",
        help="take the document from URL (http(s):// or file://, as MODEL_COST_SOURCE_URL)",
    )
    refresh.add_argument("--json", action="store_true", help="print the report as JSON")


def add_seed(sub: Any) -> None:
    """The parser of `seed`."""
    sub.add_parser(
        "seed",
        help="load the price snapshot bundled in this package into an empty catalog",
        description="Load the snapshot that ships inside aiserver-costs into the catalog when "
        "it has no models (the task runner does this at start-up). Works with no network.",
        epilog=(
            "example:\n"
            "  aiserver-costs seed   # on a new database, before the task runner first starts"
        ),
    )


def add_status(sub: Any) -> None:
    """The parser of `status`."""
    status = sub.add_parser(
        "status",
        help="source, ages, staleness, counts, last error",
        description="Show the catalog in the database: its source (the URL its last refresh "
        "read: MODEL_COST_SOURCE_URL, or a refresh's --source-url; with its password and query "
        "values as ***), how many models, aliases and overrides it "
        "holds, its version, when it was last refreshed and whether it is stale "
        "(MODEL_COST_MAX_AGE_SECONDS), and the last refresh's outcome and error: what "
        "GET /v1/catalog answers.",
        epilog="example:\n  aiserver-costs status --json",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def add_show(sub: Any) -> None:
    """The parser of `show`."""
    show = sub.add_parser(
        "show",
        help="the prices a call of one model is charged now, and the override laid over them",
        description="Show the prices calc charges for a call of MODEL made now: the source's, "
        "with the operator's current override laid over them (and its validity); also for a "
        "model only an override defines, or one the source dropped that an override keeps.",
        epilog=(
            "examples:\n"
            "  aiserver-costs show gpt-4o\n"
            "  aiserver-costs show anthropic/claude-sonnet-4-5 --json"
        ),
    )
    show.add_argument("model", metavar="MODEL", help="the model, by any name calc accepts")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")


def add_fields(sub: Any) -> None:
    """The parser of `fields`."""
    sub.add_parser(
        "fields",
        help="every price field in the catalog, with how many models use it",
        description="List every price field seen in the current catalog with the number of "
        "models using it, marking those the cost calculator does not understand yet.",
        epilog="example:\n  aiserver-costs fields",
    )
