"""`aiserver-ledger`: projects, their API keys and their usage, straight against the database.

An operator bootstraps with it: no HTTP, no token; whoever can reach the database (DATABASE_URL)
acts as the operator. Each command imports what it runs.

- `projects create|list|show`, `keys create|list|revoke`: the tenants and who may touch them;
- `import FILE|-`: usage events from JSON lines, recorded a chunk per transaction (rerunning it
  records only what is missing); exit status 0 when every line was recorded (or was recorded
  before), 3 when some were invalid or in conflict, 1 when the import could not run;
- `events`: a project's events, newest first (a table, or JSON lines with --json).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from aiserver.core_db.commands import run_command, timestamp
from aiserver.core_db.settings import CoreSettings, settings_for_command
from aiserver.ledger.keys import SCOPES

if TYPE_CHECKING:
    from aiserver.ledger.store import ApiKey, Project
    from aiserver.ledger.usage.importing import ImportSummary
    from aiserver.ledger.usage.reading import UsageEvent

Command = Callable[[CoreSettings, argparse.Namespace], Coroutine[Any, Any, int]]


def _print_json(value: Any) -> None:
    import msgspec

    print(msgspec.json.encode(value).decode())


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


def _project_lines(project: Project) -> list[str]:
    tags = ", ".join(project.rollup_tags) or "-"
    state = f"archived {_when(project.archived_at)}" if project.archived_at else "active"
    return [
        f"project:      {project.slug} ({project.name})",
        f"time zone:    {project.time_zone}",
        f"rollup tags:  {tags}",
        f"created:      {_when(project.created_at)}; {state}",
    ]


def _key_line(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else "active"
    if key.expires_at and not key.revoked_at and key.expires_at <= datetime.now(UTC):
        state = "expired"
    return (
        f"{key.id:>6}  ais_{key.public_id}_…  {','.join(key.scopes):<18} {state:<8} "
        f"expires {_when(key.expires_at):<20} last used {_when(key.last_used_at):<20} {key.name}"
    )


async def _with_pool(core: CoreSettings, work: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from aiserver.core_db.database import database, require_pool

    async with database(core):
        return await work(require_pool())


async def _projects_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.create_project(
            pool, Access.operator(), slug=args.slug, name=args.name or args.slug,
            time_zone=args.time_zone, rollup_tags=args.rollup_tag,
        )  # fmt: skip
        _print_json(project) if args.json else print("\n".join(_project_lines(project)))
        return 0

    return await _with_pool(core, work)


async def _projects_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        found = await projects.list_projects(pool, Access.operator(), archived=args.archived)
        if args.json:
            _print_json(found)
        else:
            for project in found:
                archived = "  (archived)" if project.archived_at else ""
                print(f"{project.slug:<32} {project.time_zone:<20} {project.name}{archived}")
            print(f"{len(found)} project(s)")
        return 0

    return await _with_pool(core, work)


async def _projects_show(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys, projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.show_project(pool, Access.operator(), args.slug)
        keys = await api_keys.list_keys(pool, Access.operator(), args.slug)
        if args.json:
            _print_json({"project": project, "keys": keys})
        else:
            print("\n".join(_project_lines(project)))
            active = sum(1 for k in keys if not k.revoked_at)
            print(f"keys:         {active} active, {len(keys)} in all")
        return 0

    return await _with_pool(core, work)


async def _keys_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        created = await api_keys.create_key(
            pool, Access.operator(), args.project, name=args.name,
            scopes=args.scope or list(SCOPES), expires_at=args.expires_at,
        )  # fmt: skip
        if args.json:
            _print_json({"key": created.text, **_key_dict(created.key)})
        else:
            print(created.text)
            print(
                f"key {created.key.id} of {created.key.project} ({', '.join(created.key.scopes)}): "
                "shown this once; keep it in your secret store",
                file=sys.stderr,
            )
        return 0

    return await _with_pool(core, work)


def _key_dict(key: ApiKey) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(key)


async def _keys_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        keys = await api_keys.list_keys(pool, Access.operator(), args.project)
        if args.json:
            _print_json(keys)
        else:
            for key in keys:
                print(_key_line(key))
            print(f"{len(keys)} key(s)")
        return 0

    return await _with_pool(core, work)


async def _keys_revoke(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        key = await api_keys.revoke_key(pool, Access.operator(), args.key_id)  # each API
        # process stops accepting it within API_KEY_CACHE_SECONDS
        if args.json:
            _print_json(key)
        else:
            print(f"key {key.id} of {key.project} revoked at {_when(key.revoked_at)}")
        return 0

    return await _with_pool(core, work)


# -- usage: import, events -------------------------------------------------------------------

#: The exit status of an import that ran to its end but refused lines (invalid, conflict).
REFUSED_LINES: Final = 3
#: Off a terminal, a progress line every this many chunks.
PROGRESS_EVERY: Final = 10


class _Source:
    """The lines of a file (or of stdin) with their numbers, counting the bytes read."""

    def __init__(self, name: str, stream: IO[bytes], size: int | None) -> None:
        self.name = name
        self.stream = stream
        self.size = size
        self.read = 0

    @classmethod
    def open(cls, name: str) -> _Source:
        import os
        from pathlib import Path

        from aiserver.ledger.errors import InvalidField

        if name == "-":
            return cls("stdin", sys.stdin.buffer, None)
        try:
            stream = Path(name).open("rb")  # noqa: SIM115  # closed by the command
            size = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise InvalidField(f"cannot read {name}: {exc.strerror}", ["FILE"]) from None
        return cls(name, stream, size or None)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        for number, line in enumerate(self.stream, start=1):
            self.read += len(line)
            yield number, line


class _Progress:
    """How far an import is: a bar redrawn on stderr when it is a terminal, a plain line every
    PROGRESS_EVERY chunks when it is not (a log keeps them), nothing with --no-progress."""

    def __init__(self, source: _Source, *, enabled: bool) -> None:
        self.source = source
        self.bar = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.bar
        self.chunks = 0
        self.drawn = 0.0
        self.last: ImportSummary | None = None  # after the last COMMIT

    def update(self, summary: ImportSummary) -> None:
        self.last = summary
        self.chunks += 1
        if self.plain and self.chunks % PROGRESS_EVERY == 0:
            print(f"aiserver-ledger import: up to line {summary.last_line}: {_counts(summary)}",
                  file=sys.stderr, flush=True)  # fmt: skip
        elif self.bar and time.monotonic() - self.drawn >= 0.1:
            self._draw(summary)

    def _draw(self, summary: ImportSummary) -> None:
        import shutil

        width = shutil.get_terminal_size((80, 24)).columns - 1
        text = f"{summary.events:,} events: {_counts(summary)}"
        if self.source.size:
            done = min(self.source.read / self.source.size, 1.0)
            cells = 24
            filled = round(done * cells)
            text = f"[{'#' * filled}{'.' * (cells - filled)}] {done:4.0%}  {text}"
        line = f"importing {self.source.name}  {text}"[:width]
        sys.stderr.write(f"\r{line:<{width}}")
        sys.stderr.flush()
        self.drawn = time.monotonic()

    def finish(self) -> None:
        if self.bar and self.last is not None:
            self._draw(self.last)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def stopped(self) -> None:
        """Say what an import that stopped half-way kept, and how to finish it."""
        if self.bar:
            sys.stderr.write("\n")
        kept = self.last
        where = (
            f"every event up to line {kept.last_line} is recorded ({_counts(kept)})"
            if kept
            else "no chunk was recorded"
        )
        print(f"aiserver-ledger import: stopped; {where}. Run the same import again: what is "
              "recorded already counts as duplicate, the rest is recorded.",
              file=sys.stderr, flush=True)  # fmt: skip


def _counts(summary: ImportSummary) -> str:
    return (
        f"{summary.recorded:,} recorded, {summary.duplicate:,} duplicate, "
        f"{summary.conflict:,} conflict, {summary.invalid:,} invalid"
    )


async def _import(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.costs.catalog import load_catalog
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.settings import LedgerSettings
    from aiserver.ledger.usage.importing import import_lines
    from aiserver.ledger.usage.ingest import UsageRecorder

    recorder = UsageRecorder(settings_for_command("aiserver-ledger", LedgerSettings))
    source = _Source.open(args.file)

    async def work(pool: Any) -> int:
        async with pool.acquire() as conn:
            project = await projects.find_project(conn, Access.operator(), args.project)
            catalog = await load_catalog(conn)
        why = ""
        if not len(catalog):
            why = "the catalog in the database has no models yet (aiserver-costs seed or refresh)"
            print(f"aiserver-ledger import: {why}: every event is recorded unpriced",
                  file=sys.stderr)  # fmt: skip
        progress = _Progress(source, enabled=not args.no_progress)
        try:
            summary = await import_lines(
                pool, project.id, source.lines(), recorder=recorder,
                catalog=catalog if len(catalog) else None, why_no_catalog=why,
                chunk_size=args.chunk_size, progress=progress.update,
            )  # fmt: skip
        except BaseException:
            progress.stopped()
            raise
        progress.finish()
        if args.json:
            import msgspec

            _print_json(
                {"project": project.slug, "file": source.name, **msgspec.structs.asdict(summary)}
            )
        else:
            _print_summary(project.slug, source.name, summary)
        return REFUSED_LINES if summary.refused else 0

    try:
        return await _with_pool(core, work)
    finally:
        source.stream.close()


def _print_summary(project: str, name: str, summary: ImportSummary) -> None:
    print(f"imported {name} into {project}: {summary.events:,} events")
    for label in ("recorded", "duplicate", "conflict", "invalid"):
        print(f"  {label:<10} {getattr(summary, label):>10,}")
    for title, shown, count in (
        ("invalid lines", summary.invalid_lines, summary.invalid),
        ("conflicts", summary.conflict_lines, summary.conflict),
    ):
        if not shown:
            continue
        first = f", the first {len(shown)}" if count > len(shown) else ""
        print(f"{title} ({count:,}{first}):")
        for refused in shown:
            key = f" ({refused.id})" if refused.id is not None else ""
            print(f"  line {refused.line}{key}: {refused.problem['detail']}")


def _tag(text: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a whole number, 0 or more: {text!r}")
    return int(text)


async def _events(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.usage.reading import MAX_LIMIT, all_events, event_query

    query = event_query(
        since=args.since, until=args.until, model=args.model, provider=args.provider,
        status=args.status, tags=args.tag,
    )  # fmt: skip

    async def work(pool: Any) -> int:
        async with pool.acquire() as conn:
            project = await projects.find_project(conn, Access.operator(), args.project)
        wanted = args.limit or None
        page = min(wanted + 1, MAX_LIMIT) if wanted else MAX_LIMIT
        shown = 0
        more = False
        if not args.json:
            print(_EVENT_HEADER)
        async for event in all_events(pool, project.id, query, page=page):
            if wanted is not None and shown == wanted:
                more = True
                break
            shown += 1
            if args.json:
                _print_json(event)
            else:
                print(_event_line(event))
        if not args.json:
            hint = f"; more: raise --limit (now {wanted}), or --limit 0 for all" if more else ""
            print(f"{shown:,} event(s), newest first{hint}")
        return 0

    return await _with_pool(core, work)


_EVENT_HEADER: Final = (
    f"{'EVENT':>10}  {'OCCURRED (UTC)':<20}  {'MODEL':<28}  {'STATUS':<8}  {'TOTAL USD':>12}  "
    f"{'INPUT':>9}  {'OUTPUT':>9}  {'KEY':<24}  TAGS"
)
_STATUS: Final = {"priced": "priced", "partially_priced": "partial", "unpriced": "unpriced"}


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _event_line(event: UsageEvent) -> str:
    tags = ",".join(f"{k}={v}" for k, v in event.tags.items()) or "-"
    model = event.model if event.provider is None else f"{event.provider}/{event.model}"
    return (
        f"{event.event_id:>10}  {_when(event.occurred_at):<20}  {_cut(model, 28):<28}  "
        f"{_STATUS[event.pricing_status]:<8}  {event.total or '-':>12}  "
        f"{event.usage.get('input_tokens', 0):>9}  {event.usage.get('output_tokens', 0):>9}  "
        f"{_cut(event.id, 24):<24}  {tags}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-ledger",
        description="Projects (the ledger's tenants), their API keys and their usage, straight "
        "against the database (DATABASE_URL): whoever runs this acts as the operator.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    projects = groups.add_parser("projects", help="create, list and show projects")
    p_sub = projects.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = p_sub.add_parser(
        "create",
        help="create a project",
        description="Create a project. Its slug names it in URLs: 1 to 64 lower-case letters, "
        "digits and inner hyphens.",
    )
    create.add_argument("slug", metavar="SLUG", help="e.g. acme-search")
    create.add_argument("--name", help="a name for people (default: the slug)")
    create.add_argument(
        "--time-zone",
        default="UTC",
        metavar="TZ",
        help="IANA time zone of its budget periods and spend buckets (default: %(default)s)",
    )
    create.add_argument(
        "--rollup-tag",
        action="append",
        default=[],
        metavar="KEY",
        help="a tag key whose spend is rolled up (up to 4; repeat the option)",
    )
    listing = p_sub.add_parser("list", help="list the projects")
    listing.add_argument("--archived", action="store_true", help="include archived projects")
    show = p_sub.add_parser("show", help="one project and how many keys it has")
    show.add_argument("slug", metavar="SLUG")

    keys = groups.add_parser("keys", help="create, list and revoke a project's API keys")
    k_sub = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    k_create = k_sub.add_parser(
        "create",
        help="create a key (printed once on stdout)",
        description="Create an API key of a project and print it on stdout, once: only a hash "
        "of its secret is stored. Scopes: ingest (record usage, reserve budget), read (spend, "
        "events, exports, budget status), admin (the project's keys, budgets, repricing).",
    )
    k_create.add_argument("project", metavar="PROJECT", help="the project's slug")
    k_create.add_argument("--name", required=True, help="what the key is for, e.g. 'search-api'")
    k_create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        metavar="SCOPE",
        help="ingest, read or admin; repeat the option (default: all three)",
    )
    k_create.add_argument(
        "--expires-at", type=timestamp, metavar="TIME", help="RFC 3339; default: never"
    )
    k_list = k_sub.add_parser("list", help="a project's keys (never their secrets)")
    k_list.add_argument("project", metavar="PROJECT")
    k_revoke = k_sub.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key: every API process refuses it within API_KEY_CACHE_SECONDS.",
    )
    k_revoke.add_argument("key_id", type=int, metavar="KEY_ID", help="the key's id (keys list)")

    _import_parser(groups)
    _events_parser(groups)
    for command in (create, listing, show, k_create, k_list, k_revoke):
        command.add_argument("--json", action="store_true", help="print JSON")
    return parser


_EXAMPLES: Final = """examples:
  aiserver-ledger projects create acme-search --name "Acme Search" --rollup-tag team
  aiserver-ledger keys create acme-search --name search-api --scope ingest --scope read
  aiserver-ledger import --project acme-search usage.jsonl
  aiserver-ledger events --project acme-search --from 2026-12-01 --tag team=search

every command takes --json; COMMAND --help says more."""

_IMPORT_HELP: Final = """\
Record usage events from JSON lines: one event a line, as POST /v1/usage takes it
({"id": "req-1", "model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500},
"occurred_at": "2026-12-01T10:00:00Z", "tags": {"team": "search"}}); blank lines are skipped.
Each event is priced with the catalog in the database as of its occurred_at.

The events are recorded --chunk-size at a time, each chunk in its own transaction: an import
that stops half-way keeps whole chunks, and running it again records exactly what is missing
(an event recorded before is a duplicate and changes nothing). Rerunning a file that was
imported whole records nothing.

Progress goes to stderr: a bar when stderr is a terminal, else a line every 10 chunks. The
summary (stdout) counts recorded, duplicate, conflict (the key was recorded with another
payload: nothing changed) and invalid lines, and shows the first 10 invalid and conflicting
lines with their line numbers and problems.

exit status: 0 every line was recorded or was a duplicate; 3 some lines were invalid or in
conflict (the others are recorded); 1 the import could not run or stopped (what it recorded
stays: run it again); 2 wrong arguments."""

_IMPORT_EXAMPLES: Final = """examples:
  aiserver-ledger import --project acme-search usage.jsonl
  zcat usage-2026-11.jsonl.gz | aiserver-ledger import --project acme-search -
  aiserver-ledger import --project acme-search usage.jsonl --json > summary.json"""

_EVENTS_HELP: Final = """\
List a project's usage events, newest first (by occurred_at, then event id): a table, or one
JSON object a line with --json (the same object as GET /v1/usage/events/{id}).
--model and --provider match the name as reported or as the catalog priced it; --tag KEY=VALUE
filters on a tag (repeat it: every one must hold)."""

_EVENTS_EXAMPLES: Final = """examples:
  aiserver-ledger events --project acme-search
  aiserver-ledger events --project acme-search --from 2026-12-01 --to 2026-12-02 --status unpriced
  aiserver-ledger events --project acme-search --tag team=search --model gpt-4o --limit 0 --json"""


def _import_parser(groups: Any) -> argparse.ArgumentParser:
    from aiserver.ledger.usage.importing import DEFAULT_CHUNK, MAX_CHUNK

    def chunk(text: str) -> int:
        value = int(text) if text.isdigit() else 0
        if not 1 <= value <= MAX_CHUNK:
            raise argparse.ArgumentTypeError(f"1 to {MAX_CHUNK}: {text!r}")
        return value

    command: argparse.ArgumentParser = groups.add_parser(
        "import",
        help="record usage events from a JSON-lines file (or stdin)",
        description=_IMPORT_HELP,
        epilog=_IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("file", metavar="FILE", help="JSON lines; - reads stdin")
    command.add_argument("--project", required=True, metavar="SLUG", help="whose usage it is")
    command.add_argument(
        "--chunk-size",
        type=chunk,
        default=DEFAULT_CHUNK,
        metavar="N",
        help=f"events per transaction (default: %(default)s; at most {MAX_CHUNK})",
    )
    command.add_argument(
        "--no-progress", action="store_true", help="no progress on stderr, only the summary"
    )
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    return command


def _events_parser(groups: Any) -> argparse.ArgumentParser:
    from aiserver.ledger.usage.valuation import PRICING_STATUSES

    command: argparse.ArgumentParser = groups.add_parser(
        "events",
        help="list a project's usage events, newest first",
        description=_EVENTS_HELP,
        epilog=_EVENTS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--project", required=True, metavar="SLUG")
    command.add_argument(
        "--from", dest="since", metavar="TIME", help="at or after (RFC 3339; no offset: UTC)"
    )
    command.add_argument("--to", dest="until", metavar="TIME", help="before (RFC 3339)")
    command.add_argument("--model", help="as reported, or as the catalog priced it")
    command.add_argument("--provider", help="as reported, or as the catalog priced it")
    command.add_argument("--status", choices=PRICING_STATUSES, help="the pricing status")
    command.add_argument(
        "--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
        help="a tag the event has (repeat it: every one must hold)",
    )  # fmt: skip
    command.add_argument(
        "--limit",
        type=_count,
        default=100,
        metavar="N",
        help="at most N events (default: %(default)s; 0: all of them)",
    )
    command.add_argument("--json", action="store_true", help="one JSON object a line")
    return command


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("projects", "create"): _projects_create,
    ("projects", "list"): _projects_list,
    ("projects", "show"): _projects_show,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("import", None): _import,
    ("events", None): _events,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = getattr(args, "command", None)
    core = settings_for_command("aiserver-ledger", CoreSettings)
    from aiserver.core_db.logging import configure_logging

    configure_logging(core.log_level, core.log_format)
    return run_command(
        " ".join(("aiserver-ledger", args.group, *([command] if command else []))),
        COMMANDS[(args.group, command)](core, args),
        as_json=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
