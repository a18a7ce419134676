"""`aiserver-costs`: refresh, inspect and use the price catalog from the command line.

Each command imports what it needs when it runs, and no more: `--help` and the parser load
nothing of the database layer, and `calc` (the catalog from PostgreSQL, then pricing) neither
Piccolo, nor httpx, nor structlog. Importing every command's modules up front would cost ~0.3 s
before any work, more than pricing a 20,000-line usage log takes (bench/cli.py measures both).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from aiserver.core_db.commands import (
    add_version,
    command_problem,
    counted,
    run_command,
    timestamp,
)
from aiserver.core_db.errors import AiserverError, InvalidInput, problem, validation_field
from aiserver.core_db.settings import CoreSettings, Section, SettingsError, settings_for_command
from aiserver.costs.requests import decode_cost_request, request_json
from aiserver.costs.settings import CostSettings

if TYPE_CHECKING:
    import asyncpg

    from aiserver.costs.calculator import CostResult
    from aiserver.costs.catalog import Catalog

#: The usage options of `calc` and what each counts (docs/costs.md, "Usage: totals and their
#: parts"); 0 if omitted.
_USAGE_OPTIONS: Final = {
    "input_tokens": "every prompt token, cache reads and writes included",
    "output_tokens": "every generated token, reasoning included",
    "cache_read_tokens": "the part of --input-tokens read from cache",
    "cache_write_tokens": "the part of --input-tokens written to cache",
    "reasoning_tokens": "the part of --output-tokens spent reasoning",
    "input_audio_tokens": "the part of --input-tokens that is audio",
    "output_audio_tokens": "the part of --output-tokens that is audio",
    "images": "images generated",
    "requests": "requests, for models with a per-request fee",
}


#: The names of `aiserver.costs.usage_formats.USAGE_FORMATS`, the choices of `--usage-format`
#: (written out: the parser imports nothing of the package).
USAGE_FORMAT_NAMES: Final = (
    "openai.chat",
    "openai.responses",
    "anthropic",
    "gemini",
    "bedrock.converse",
)


class Settings(Section, frozen=True, kw_only=True):
    """What `aiserver-costs` reads from the environment."""

    core: CoreSettings = msgspec.field(default_factory=CoreSettings)
    costs: CostSettings = msgspec.field(default_factory=CostSettings)


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

#: The exit status of `calc --batch` when some lines failed (each has its error in the output),
#: as `aiserver-ledger import` exits when some lines were refused.
FAILED_LINES: Final = 3

#: JSON out; the commands write prices through `money` (a Decimal here would be str()'s spelling).
_json = msgspec.json.Encoder(decimal_format="string")


def _print_json(value: Any) -> None:
    print(_json.encode(value).decode())


def _source_url(text: str) -> str:
    """An argparse type: a source URL, checked as MODEL_COST_SOURCE_URL is (by the settings
    themselves). `--source-url` replaces that setting, so a URL the setting refuses (`ftp://`,
    no scheme) is a wrong argument, not a download that fails and is retried."""
    try:
        CostSettings(model_cost_source_url=text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(text: str) -> int:
    """An argparse type: a count of `calc`, a whole number in ASCII digits from 0 to the most a
    usage takes (`MAX_QUANTITY`), so that a typo is a wrong argument. `int()` alone reads more:
    "1_000" is 1000, and so are other scripts' digits; "-5" was priced until the calculator
    refused it, and a number of thousands of digits said "invalid int value"."""
    from aiserver.costs.pricing.usage import MAX_QUANTITY  # calc imports it anyway

    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_QUANTITY))
    if not digits or int(text) > MAX_QUANTITY:
        raise argparse.ArgumentTypeError(f"a whole number, 0 to {MAX_QUANTITY}: {text[:30]!r}")
    return int(text)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "never"


async def _connect(settings: Settings) -> asyncpg.Connection:
    from aiserver.core_db.connections import connect

    return await connect(settings.core)


# -- the commands ----------------------------------------------------------------------------


async def _refresh(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.refresh import refresh_catalog

    report = await refresh_catalog(
        settings.core, settings.costs, force=args.force, trigger="cli", source_url=args.source_url
    )
    if args.json:
        _print_json({**report.as_dict(), "skipped": report.skipped})
    elif not report.outcome.ok:  # a failure is one line on stderr, as every command's is
        print(f"aiserver-costs refresh: {report.summary()}", file=sys.stderr)
    else:
        print(report.summary())
        for key, reason in sorted(report.skipped.items()):
            print(f"  skipped {key}: {reason}")
    return 0 if report.outcome.ok else 1


async def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.refresh import seed_from_snapshot

    report = await seed_from_snapshot(settings.core)
    if report is None:
        print("nothing to do: the catalog already has models (or a refresh is running)")
    else:
        print(report.summary())
    return 0


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.status import read_status

    conn = await _connect(settings)
    try:
        status = await read_status(conn, settings.costs)
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
        "stale:           "
        + (
            "yes: the task runner refreshes it from its upstream when it looks (at its start, "
            "then every MODEL_COST_REFRESH_INTERVAL_SECONDS); aiserver-costs refresh does it now"
            if status.stale
            else "no"
        ),
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


async def _load_catalog(conn: asyncpg.Connection) -> Catalog:
    """The catalog as pricing reads it (`catalog.load_catalog`); `CatalogNotReady` while it has
    no models, when every name would be "unknown"."""
    from aiserver.costs.catalog import load_catalog
    from aiserver.costs.errors import CatalogNotReady

    catalog = await load_catalog(conn)
    if not len(catalog):
        raise CatalogNotReady(
            "the catalog in the database has no models yet; "
            "run: aiserver-costs seed (offline) or aiserver-costs refresh"
        )
    return catalog


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    """The prices `calc` charges for a call made now (the catalog's version with the override
    valid now laid over it, as `calculate` finds it), not the source's row alone: a model only
    an override defines, or one the source dropped that an override keeps, is shown as priced."""
    from datetime import UTC

    from aiserver.costs.money import plain
    from aiserver.costs.pricing import is_price_field
    from aiserver.costs.store.prices import read_current_model

    conn = await _connect(settings)
    try:
        catalog = await _load_catalog(conn)
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
        _print_json(
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
            f"{_when(found.valid_from)} ({counted(found.versions, 'version')} kept)"
        )
    elif pv.source == "override":
        version = f"none from the source: override {pv.override_id} defines the model ({kept})"
    else:
        version = (
            f"price version {pv.id}, valid from {_when(pv.valid_from)} until "
            f"{_when(pv.valid_to)} ({kept})"
        )
    print(f"model:     {pv.model}")
    print(f"provider:  {pv.provider}")
    print(f"mode:      {pv.mode or '-'}")
    print(f"version:   {version}")
    print("prices:")  # as charged: the override's laid over the source's
    for name in sorted(n for n in entry if is_price_field(n)):
        value = plain(entry[name])
        text = value if not isinstance(value, dict | list) else _json.encode(value).decode()
        print(f"  {name} = {text}")
    for o in overrides:  # the one laid over them, and the prices it sets
        reason = f" ({o.reason})" if o.reason else ""
        print(f"override:  {o.id}, by {o.provider}, valid from {_when(o.valid_from)}{reason}")
        for name, value in sorted(o.prices.items()):
            print(f"  {name} = {plain(value)}")
    if note:
        print(f"note:      {note}")
    return 0


async def _fields(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.pricing import is_understood_field
    from aiserver.costs.status import price_field_usage

    conn = await _connect(settings)
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


async def _calc(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.calculator import CostRequest, CostResponse, calculate
    from aiserver.costs.pricing import Usage

    if args.batch is None and args.model is None:
        print("aiserver-costs calc: give MODEL, or --batch FILE", file=sys.stderr)
        return 2
    counted = [name for name in _USAGE_OPTIONS if getattr(args, name)]
    if args.batch is not None and (args.model is not None or counted or args.usage is not None):
        # each line of the file names its model and usage: a MODEL beside it was ignored
        print("aiserver-costs calc: give MODEL (with its counts) or --batch FILE, not both: "
              "each line of the file names its own model and usage", file=sys.stderr)  # fmt: skip
        return 2
    if args.usage is not None and counted:
        print("aiserver-costs calc: give --usage or the counts, not both", file=sys.stderr)
        return 2
    if args.usage_format is not None and args.usage is None:
        print("aiserver-costs calc: --usage-format needs --usage", file=sys.stderr)
        return 2
    if args.batch is None and args.usage is None and not counted:
        # priced all the same (the model's prices show in the answer), but a 0 is no cost
        print("aiserver-costs calc: no usage given (--input-tokens, --output-tokens, ... or "
              "--usage): every count is 0, so the total is 0", file=sys.stderr)  # fmt: skip
    # bytes: msgspec reads UTF-8 itself, and a line that is not UTF-8 fails alone
    batch = None if args.batch is None else _open_batch(args.batch)
    try:
        conn = await _connect(settings)
        try:
            catalog = await _load_catalog(conn)
        finally:
            await conn.close()
        if batch is not None:
            return _calc_batch(catalog, batch)
    finally:
        if batch is not None and batch is not sys.stdin.buffer:
            batch.close()
    request = CostRequest(
        model=args.model,
        provider=args.provider,
        usage=Usage(**{name: getattr(args, name) for name in _USAGE_OPTIONS})
        if args.usage is None
        else request_json(args.usage),
        usage_format=args.usage_format,
        service_tier=args.service_tier,
        at=args.at,
    )
    result = calculate(catalog, request)
    if args.json:
        _print_json(CostResponse.of(result))
    else:
        _print_result(result)
    return 0


def _print_result(result: CostResult) -> None:
    from aiserver.costs.money import money

    print(
        f"model:    {result.model} ({result.provider}), matched by {result.matched_by}; "
        f"price version {result.price_version}, catalog version {result.catalog_version}"
    )
    width = max((len(c.name) for c in result.components), default=5)
    for c in result.components:
        unit, cost = money(c.unit_price), money(c.cost)
        print(f"  {c.name:<{width}}  {c.quantity:>12} x {unit:<14} = {cost}")
    print(f"total:    {money(result.total)} {result.currency}")
    if result.unpriced:
        unpriced = ", ".join(result.unpriced)
        print(f"unpriced: {unpriced} (no price in the catalog, so not in the total)")
    if result.override_id is not None:
        at = _when(result.at)
        print(f"override: {result.override_id}, the operator's override valid at {at}")
    for note in result.notes:
        print(f"note:     {note}")


def _open_batch(path: str) -> IO[bytes]:
    """The --batch FILE (stdin for '-'); one that cannot be read is a problem that names it."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: PTH123  # closed by _calc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _calc_batch(catalog: Catalog, stream: IO[bytes]) -> int:
    """Price each line of `stream`, read as the API reads a request (`decode_cost_request`);
    exit status 0, or FAILED_LINES when some lines failed."""
    from aiserver.costs.calculator import CostResponse, calculate

    encode = msgspec.json.Encoder(decimal_format="string").encode_into
    out = bytearray()
    failed = 0
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            result: Any = CostResponse.of(calculate(catalog, decode_cost_request(line)))
        except (AiserverError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            failed += 1
            result = {"error": _problem(exc), "line": number}
        encode(result, out, -1)
        out += b"\n"
        if len(out) > 1 << 16:
            sys.stdout.buffer.write(out)
            out.clear()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if failed:
        print(f"aiserver-costs calc: {counted(failed, 'line')} failed", file=sys.stderr)
        return FAILED_LINES
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-costs",
        description="The aiserver price catalog in PostgreSQL (DATABASE_URL): refresh it from "
        "its upstream source, inspect it, and price model calls.",
        epilog=(
            "examples:\n"
            "  aiserver-costs status                     # models, version, staleness, last error\n"
            "  aiserver-costs show gpt-4o                # the prices a call of it is charged now\n"
            "  aiserver-costs refresh --force            # fetch the upstream document now\n"
            "  aiserver-costs calc gpt-4o --input-tokens 1000 --output-tokens 500\n"
            "  aiserver-costs calc --batch calls.jsonl   # price JSON lines offline\n"
            "\n"
            "Each command's --help says more (its options, its exit statuses)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser, "aiserver-costs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    refresh = sub.add_parser(
        "refresh",
        help="refresh the catalog from the upstream source when it is stale",
        description="Download the upstream price document (MODEL_COST_SOURCE_URL) and apply "
        "what changed, when the catalog is older than MODEL_COST_MAX_AGE_SECONDS. Exit 1 when "
        "the download failed or a guardrail rejected it (the catalog then stays unchanged). "
        "Exit 0 also when it did nothing: the catalog was fresh (without --force), or another "
        "process (a task runner) was refreshing it at that moment; the first line says which "
        "('skipped: another process is refreshing ...'; with --json, its outcome).",
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

    sub.add_parser(
        "seed",
        help="load the price snapshot bundled in this package into an empty catalog",
        description="Load the snapshot that ships inside aiserver-costs into the catalog when "
        "it has no models (the task runner does this at start-up). Works with no network.",
    )

    status = sub.add_parser(
        "status",
        help="source, ages, staleness, counts, last error",
        description="Show the catalog in the database: its source (MODEL_COST_SOURCE_URL, "
        "with its password and query values as ***), how many models, aliases and overrides it "
        "holds, its version, when it was last refreshed and whether it is stale "
        "(MODEL_COST_MAX_AGE_SECONDS), and the last refresh's outcome and error: what "
        "GET /v1/catalog answers.",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    show = sub.add_parser(
        "show",
        help="the prices a call of one model is charged now, and the override laid over them",
        description="Show the prices calc charges for a call of MODEL made now: the source's, "
        "with the operator's current override laid over them (and its validity); also for a "
        "model only an override defines, or one the source dropped that an override keeps.",
    )
    show.add_argument("model", metavar="MODEL", help="the model, by any name calc accepts")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")

    calc = sub.add_parser(
        "calc",
        help="the exact cost of a model call (or of a file of them with --batch)",
        description="Price a model call with the catalog in the database. Token parts: cache "
        "read/write tokens are part of --input-tokens, reasoning tokens part of "
        "--output-tokens. Instead of the counts, --usage takes a usage object as JSON, and "
        "with --usage-format the provider's own (openai.chat: the usage of a chat completion, "
        "...). With --batch, read cost requests as JSON lines (the body of POST "
        "/v1/costs/calculate, usage_format included) and write one JSON result per line, in "
        'order; a line that fails gives {"error": {...}, "line": N}, the problem the API '
        "answers, and the rest go on. Exit status: 0 priced (every line, with --batch); 3 some "
        "lines of --batch failed (each is in the output, stderr counts them); 1 it could not "
        "run (e.g. a FILE it cannot read); 2 wrong arguments.",
    )
    calc.add_argument("model", metavar="MODEL", nargs="?", help="model name, e.g. openai/gpt-4o")
    calc.add_argument("--provider", help="provider, when MODEL has no provider prefix")
    for name, counts in _USAGE_OPTIONS.items():
        calc.add_argument(
            "--" + name.replace("_", "-"),
            type=_count,
            default=0,
            metavar="N",
            dest=name,
            help=counts,
        )
    calc.add_argument(
        "--usage",
        metavar="JSON",
        help="the usage as a JSON object, instead of the counts: ours, or the provider's own "
        "with --usage-format",
    )
    calc.add_argument(
        "--usage-format",
        metavar="FORMAT",
        # the names of aiserver.costs.usage_formats.USAGE_FORMATS, which --help does not import;
        # another name is a wrong argument (exit 2), as an unknown --service-tier is
        choices=USAGE_FORMAT_NAMES,
        help="--usage is this provider's usage object: openai.chat, openai.responses, "
        "anthropic, gemini or bedrock.converse (docs/usage-formats.md)",
    )
    calc.add_argument(
        "--service-tier",
        choices=("standard", "batch", "priority", "flex"),
        default="standard",
        help="service tier (default: %(default)s)",
    )
    calc.add_argument(
        "--at",
        type=timestamp,
        metavar="TIME",
        help="time of the call, RFC 3339 (default: now); picks the price version valid then",
    )
    calc.add_argument("--json", action="store_true", help="print the result as JSON")
    calc.add_argument(
        "--batch", metavar="FILE", help="JSON lines of cost requests; '-' reads stdin"
    )

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
    "calc": _calc,
}
#: The commands that log (the refresh and the seed): they configure structlog first.
LOGGING: Final = frozenset({"refresh", "seed"})


def _problem(exc: Exception) -> dict[str, Any] | None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A failure prints its problem (RFC 9457, the API's types): with --json
    as `{"error": {...}}` on stdout, else its detail on stderr; the exit status is 1 (3 for a
    `calc --batch` with failed lines; 130 after Ctrl-C, 141 when stdout's reader went away:
    `run_command`)."""
    args = _parser().parse_args(argv)
    settings = settings_for_command("aiserver-costs", Settings)
    if args.command in LOGGING:
        from aiserver.core_db.commands import command_log_level
        from aiserver.core_db.logging import configure_logging

        configure_logging(command_log_level(settings.core.log_level), settings.core.log_format)
    return run_command(
        f"aiserver-costs {args.command}",
        COMMANDS[args.command](settings, args),
        as_json=getattr(args, "json", False),
        problem_of=_problem,
    )


if __name__ == "__main__":
    sys.exit(main())
