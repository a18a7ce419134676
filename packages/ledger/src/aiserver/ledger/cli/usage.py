"""`aiserver-ledger import FILE|-` and `events`: a project's usage from the command line.

`import` records JSON lines a chunk per transaction (rerunning it records only what is missing);
exit status 0 when every line was recorded (or was recorded before), 3 when some were invalid or
in conflict, 1 when the import could not run or stopped, 130 after Ctrl-C. `events` lists a
project's events, newest first (a table, or JSON lines with --json).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Final

from aiserver.core_db.settings import settings_for_command
from aiserver.ledger.cli.common import (
    Command,
    add_event_filters,
    counted,
    print_json,
    when,
    whole_number,
    with_pool,
)

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.usage.importing import ImportSummary, LongLine
    from aiserver.ledger.usage.reading import UsageEvent


#: The exit status of an import that ran to its end but refused lines (invalid, conflict).
REFUSED_LINES: Final = 3
#: Off a terminal, a progress line every this many chunks.
PROGRESS_EVERY: Final = 10
#: The first bytes of a gzip stream (RFC 1952), and the byte order marks of UTF-16.
_GZIP: Final = b"\x1f\x8b"
_UTF16: Final = (b"\xff\xfe", b"\xfe\xff")


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
            return cls("stdin", sys.stdin.buffer, None).text_only()
        if not name:  # Path("") is ".", which "cannot read : Is a directory" would not name
            raise InvalidField("FILE '' names no file to read (- reads stdin)", ["FILE"])
        try:
            stream = Path(name).open("rb")  # noqa: SIM115  # closed by the command
            size = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise InvalidField(f"cannot read {name}: {exc.strerror}", ["FILE"]) from None
        source = cls(name, stream, size or None)
        try:
            return source.text_only()
        except BaseException:
            stream.close()
            raise

    def text_only(self) -> _Source:
        """This source, refused (`InvalidField`, before anything is read) when its first bytes
        say it is no UTF-8 text: gzip, or UTF-16 (what PowerShell 5's `>` writes). Read line by
        line, every "line" of such a file was an invalid event ("JSON is malformed: invalid
        character"), and the import exited 3 as if a few lines were wrong."""
        from aiserver.ledger.errors import InvalidField

        peek = getattr(self.stream, "peek", None)
        head = peek(4)[:4] if peek is not None else b""
        named = "the input" if self.name == "stdin" else self.name
        if head.startswith(_GZIP):
            raise InvalidField(
                f"{named} is gzip-compressed, not JSON lines: decompress it on the way in "
                f"(zcat {'FILE' if self.name == 'stdin' else self.name} | aiserver-ledger import "
                "--project SLUG -)",
                ["FILE"],
            )
        if head.startswith(_UTF16):
            raise InvalidField(
                f"{named} is UTF-16 text (a byte order mark {head[:2].hex(' ')}); JSON lines are "
                "UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)",
                ["FILE"],
            )
        return self

    def lines(self) -> Iterator[tuple[int, bytes | LongLine]]:
        """Each line with its number; one over MAX_LINE as a `LongLine`, read and dropped a
        piece at a time (a file of one huge line takes no more memory than a small one)."""
        from aiserver.ledger.usage.importing import MAX_LINE, LongLine

        number = 0
        while line := self.stream.readline(MAX_LINE + 1):
            number += 1
            self.read += len(line)
            if len(line) <= MAX_LINE or line.endswith(b"\n"):
                yield number, line
                continue
            length = len(line)
            while (rest := self.stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                self.read += len(rest)
                length += len(rest)
            self.read += len(rest)
            yield number, LongLine(length + len(rest))


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

    def stopped(self, *, rerun: bool = True) -> None:
        """Say what an import that stopped half-way kept, and how to finish it (with `rerun`:
        by running it again; else the reason, said next, comes first)."""
        if self.bar:
            sys.stderr.write("\n")
        kept = self.last
        where = (
            f"every event up to line {kept.last_line} is recorded ({_counts(kept)})"
            if kept
            else "no chunk was recorded"
        )
        then = (
            " Run the same import again: what is recorded already counts as duplicate, the "
            "rest is recorded."
            if rerun
            else ""
        )
        print(f"aiserver-ledger import: stopped; {where}.{then}", file=sys.stderr, flush=True)


def _counts(summary: ImportSummary) -> str:
    return (
        f"{summary.recorded:,} recorded, {summary.duplicate:,} duplicate, "
        f"{summary.conflict:,} conflict, {summary.invalid:,} invalid"
    )


async def _import(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.core_db.connections import lost_if_cut
    from aiserver.costs.catalog import load_catalog
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.errors import ProjectArchived
    from aiserver.ledger.settings import LedgerSettings
    from aiserver.ledger.usage.importing import import_lines
    from aiserver.ledger.usage.ingest import UsageRecorder

    recorder = UsageRecorder(settings_for_command("aiserver-ledger", LedgerSettings))
    source = _Source.open(args.file)

    async def work(pool: Any) -> int:
        # the pool's connection may have ended just as the import starts: a lost connection
        async with pool.acquire() as conn, lost_if_cut(conn):
            project = await projects.find_project(conn, Access.operator(), args.project)
            if project.archived_at is not None:  # refused by ingest too: said before reading
                raise ProjectArchived(
                    f"project {project.slug} is archived: no usage is recorded for it (restore "
                    f'it first: PATCH /v1/projects/{project.slug} with {{"archived": false}})'
                )
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
        except ProjectArchived:  # archived during the import: a rerun would be refused too
            progress.stopped(rerun=False)
            raise
        except BaseException:
            progress.stopped()
            raise
        progress.finish()
        if args.json:
            import msgspec

            print_json(
                {"project": project.slug, "file": source.name, **msgspec.structs.asdict(summary)}
            )
        else:
            _print_summary(project.slug, source.name, summary)
        return REFUSED_LINES if summary.refused else 0

    try:
        return await with_pool(core, work)
    finally:
        source.stream.close()


def _print_summary(project: str, name: str, summary: ImportSummary) -> None:
    print(f"imported {name} into {project}: {counted(summary.events, 'event')}")
    for label in ("recorded", "duplicate", "conflict", "invalid"):
        print(f"  {label:<10} {getattr(summary, label):>10,}")
    if summary.unpriced or summary.partially_priced:
        listed = " or ".join(
            f"--status {status}"
            for status, count in (("unpriced", summary.unpriced),
                                  ("partially_priced", summary.partially_priced))
            if count
        )  # fmt: skip
        print(
            f"of those recorded, {summary.unpriced:,} unpriced and {summary.partially_priced:,} "
            "partially priced: they count 0 (or less than they cost) until a price is known; "
            f"list them with aiserver-ledger events --project {project} {listed}"
        )
    for title, shown, count in (
        ("invalid lines", summary.invalid_lines, summary.invalid),
        ("conflicts", summary.conflict_lines, summary.conflict),
    ):
        if not shown:
            continue
        first = f", the first {len(shown)}" if count > len(shown) else ""
        print(f"{title} ({count:,}{first}):")
        for refused in shown:
            key = f" ({_escaped(refused.id)})" if refused.id is not None else ""
            print(f"  line {refused.line}{key}: {_escaped(refused.problem['detail'])}")


#: A control character (Unicode category Cc), as `has_control` finds them.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escaped(text: str) -> str:
    """Text of the file (a refused line's key, a problem quoting one of its field names) with
    its control characters written as escapes (`\x1b`, `\r`): printed as they are, a line's
    ESC sequences or carriage return would redraw the terminal the summary is read on."""
    return _CONTROL.sub(lambda found: repr(found[0])[1:-1], text)


#: The most --limit takes (--limit 0 lists every event).
MAX_EVENTS_SHOWN: Final = 999_999_999


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
                print_json(event)
            else:
                print(_event_line(event))
        hint = f"more: raise --limit (now {wanted}), or --limit 0 for all"
        if not args.json:
            print(f"{counted(shown, 'event')}, newest first" + (f"; {hint}" if more else ""))
        elif more:  # the lines are data: the truncation is said beside them, not among them
            print(f"aiserver-ledger events: {counted(shown, 'event')} shown; {hint}",
                  file=sys.stderr)  # fmt: skip
        return 0

    return await with_pool(core, work)


_EVENT_HEADER: Final = (
    f"{'EVENT':>10}  {'OCCURRED (UTC)':<20}  {'MODEL':<28}  {'STATUS':<8}  {'TOTAL USD':>12}  "
    f"{'INPUT':>11}  {'OUTPUT':>11}  {'KEY':<24}  TAGS"
)
_STATUS: Final = {"priced": "priced", "partially_priced": "partial", "unpriced": "unpriced"}


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _event_line(event: UsageEvent) -> str:
    tags = ",".join(f"{k}={v}" for k, v in event.tags.items()) or "-"
    model = event.model if event.provider is None else f"{event.provider}/{event.model}"
    return (
        f"{event.event_id:>10}  {when(event.occurred_at):<20}  {_cut(model, 28):<28}  "
        f"{_STATUS[event.pricing_status]:<8}  {event.total or '-':>12}  "
        f"{event.usage.get('input_tokens', 0):>11,}  {event.usage.get('output_tokens', 0):>11,}  "
        f"{_cut(event.id, 24):<24}  {tags}"
    )


_IMPORT_HELP: Final = """\
Record usage events from JSON lines: one event a line, as POST /v1/usage takes it
({"id": "req-1", "model": "gpt-4o", "usage": {"input_tokens": 1000, "output_tokens": 500},
"occurred_at": "2026-12-01T10:00:00Z", "tags": {"team": "search"}}); blank lines are skipped.
The file is UTF-8 text: a gzip or UTF-16 file is refused before any line is read (zcat it, or
convert it). Each event is priced with the catalog in the database as of its occurred_at.

The events are recorded --chunk-size at a time, each chunk in its own transaction: an import
that stops half-way keeps whole chunks, and running it again records exactly what is missing
(an event recorded before is a duplicate and changes nothing). Rerunning a file that was
imported whole records nothing.

Progress goes to stderr: a bar when stderr is a terminal, else a line every 10 chunks. The
summary (stdout) counts recorded, duplicate, conflict (the key was recorded with another
payload: nothing changed) and invalid lines, and shows the first 10 invalid and conflicting
lines with their line numbers and problems.

exit status: 0 every line was recorded or was a duplicate; 3 some lines were invalid or in
conflict (the others are recorded); 1 the import could not run or stopped (the database lost:
what it recorded stays, run it again); 2 wrong arguments or settings; 130 stopped by Ctrl-C
(the same)."""

_IMPORT_EXAMPLES: Final = """examples:
  aiserver-ledger import --project acme-search usage.jsonl
  zcat usage-2026-11.jsonl.gz | aiserver-ledger import --project acme-search -
  aiserver-ledger import --project acme-search usage.jsonl --json > summary.json"""

_EVENTS_HELP: Final = """\
List a project's usage events, newest first (by occurred_at, then event id): a table, or one
JSON object a line with --json (the same object as GET /v1/usage/events/{id}).
--model and --provider match the name as reported or as the catalog priced it; --tag KEY=VALUE
filters on a tag (repeat it: every one must hold).

exit status: 0 listed (none may match); 1 an unknown project, --to not after --from, or the
database could not be read; 2 wrong arguments (a time that is not RFC 3339 or a date, a --tag
that is not KEY=VALUE, a --limit that is not a whole number) or settings; 130 stopped by
Ctrl-C; 141 the reader of stdout went away."""

_EVENTS_EXAMPLES: Final = """examples:
  aiserver-ledger events --project acme-search
  aiserver-ledger events --project acme-search --from 2026-12-01 --to 2026-12-02 --status unpriced
  aiserver-ledger events --project acme-search --tag team=search --model gpt-4o --limit 0 --json"""


def _import_parser(groups: Any) -> argparse.ArgumentParser:
    from aiserver.ledger.usage.importing import DEFAULT_CHUNK, MAX_CHUNK

    chunk = whole_number(f"1 to {MAX_CHUNK}", 1, MAX_CHUNK)

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
        help=f"events per transaction, 1 to {MAX_CHUNK} (default: %(default)s)",
    )
    command.add_argument(
        "--no-progress", action="store_true", help="no progress on stderr, only the summary"
    )
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    return command


def _events_parser(groups: Any) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = groups.add_parser(
        "events",
        help="list a project's usage events, newest first",
        description=_EVENTS_HELP,
        epilog=_EVENTS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--project", required=True, metavar="SLUG", help="whose events")
    add_event_filters(command, window_required=False)
    command.add_argument(
        "--limit",
        type=whole_number(f"a whole number, 0 to {MAX_EVENTS_SHOWN}", 0, MAX_EVENTS_SHOWN),
        default=100,
        metavar="N",
        help="at most N events (default: %(default)s; 0: all of them)",
    )
    command.add_argument("--json", action="store_true", help="one JSON object a line")
    return command


def add_parsers(groups: Any) -> None:
    _import_parser(groups)
    _events_parser(groups)


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("import", None): _import,
    ("events", None): _events,
}
