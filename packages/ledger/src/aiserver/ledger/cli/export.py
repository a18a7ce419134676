"""`aiserver-ledger export`: a project's usage of a window as CSV, JSON lines or FOCUS CSV, to
stdout or to a file, streamed as `GET /v1/usage/export` streams it (the same formats and
filters; see `aiserver.ledger.usage.export`).

Written to a file, the export goes to `FILE.partial` first and becomes `FILE` only once it is
whole, so a stopped export never leaves a file that looks complete; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from aiserver.ledger.cli.common import Command, Progress, add_event_filters, with_pool

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings


async def _export(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access
    from aiserver.ledger.usage.export import UsageExport, export_format, export_query

    fmt = export_format(args.format)
    query = export_query(
        since=args.since, until=args.until, model=args.model, provider=args.provider,
        status=args.status, tags=args.tag,
    )  # fmt: skip
    target = _output(args.output)

    async def work(pool: Any) -> int:
        async with pool.acquire() as conn:
            project = await projects.find_project(conn, Access.operator(), args.project)
        partial = target.with_name(target.name + ".partial") if target else None
        out: IO[bytes] = sys.stdout.buffer
        if partial:
            with _writing(target):
                out = partial.open("wb")
        try:
            export = await UsageExport.open(core, project, query, fmt)
        except BaseException:
            _discard(out, partial)
            raise
        progress = Progress(enabled=partial is not None and not args.no_progress)
        try:
            async for chunk in export.chunks():
                with _writing(target):
                    out.write(chunk)
                progress.update(f"aiserver-ledger export: {export.events:,} events")
            with _writing(target):
                out.flush()
                if partial and target:
                    out.close()
                    partial.replace(target)
        except BaseException as exc:
            _discard(out, partial)
            progress.finish()
            if not isinstance(exc, BrokenPipeError):  # a reader gone (`| head`) is told nothing
                said = f"{target} not written" if target else "what went to the output is cut short"
                print(f"aiserver-ledger export: stopped after {export.events:,} events; {said}",
                      file=sys.stderr)  # fmt: skip
            raise
        finally:
            export.close()
            progress.finish()
        where = f" to {target}" if target else ""
        missing = (
            f"; {export.unpriced_events:,} unpriced events have no FOCUS row (the csv and jsonl "
            "formats hold them)"
            if export.unpriced_events
            else ""
        )
        print(f"aiserver-ledger export: {export.events:,} events of {project.slug}{where}"
              f"{missing}", file=sys.stderr)  # fmt: skip
        return 0

    return await with_pool(core, work)


def _output(given: str | None) -> Path | None:
    """The file --output names; None without it (stdout). A path that names no file at all
    (empty, `.`, `/`, a directory) is refused before anything is read; one that cannot be
    written otherwise (a missing directory) fails as it is opened (`_writing`), before the
    export begins."""
    if given is None:
        return None
    target = Path(given)
    from aiserver.ledger.errors import InvalidField

    if not given.strip() or not target.name:
        raise InvalidField(f"--output {given!r} names no file to write", ["output"])
    if target.is_dir():
        raise InvalidField(f"--output {given!r} is a directory: name a file in it", ["output"])
    return target


@contextlib.contextmanager
def _writing(target: Path | None) -> Iterator[None]:
    """An --output that cannot be written (a missing directory, a full disk) is a problem that
    names it, as `import` names a FILE it cannot read; stdout's own failures (its reader gone)
    are left to `run_command`."""
    try:
        yield
    except OSError as exc:
        if target is None:
            raise
        from aiserver.ledger.errors import InvalidField

        raise InvalidField(f"cannot write {target}: {exc.strerror or exc}", ["output"]) from None


def _discard(out: IO[bytes], partial: Path | None) -> None:
    """An export that stopped leaves no file."""
    if partial:
        with contextlib.suppress(OSError):  # a full disk fails the last flush again
            out.close()
        partial.unlink(missing_ok=True)


_HELP: Final = """\
Export a project's usage events of the window [--from, --to), oldest first, as GET
/v1/usage/export does: csv (a row per event), jsonl (an event a line, as GET
/v1/usage/events/{id} shows it) or focus (FinOps FOCUS 1.2 CSV, a row per priced component;
unpriced events have no row, and the summary counts them). The filters are those of `events`.

The events are read through a database cursor in one snapshot, a batch at a time: an export of
any size takes the same memory. With --output the file is written as FILE.partial and renamed
to FILE once whole, with progress on stderr; without it, the export goes to stdout.

An export that stops says so on stderr, after how many events (on stdout, what went out is cut
short).

exit status: 0 the export is whole; 1 it could not run or stopped (no FILE is left); 2 wrong
arguments or settings; 130 stopped by Ctrl-C (no FILE is left either); 141 its reader closed
the pipe."""

_EXAMPLES: Final = """examples:
  aiserver-ledger export --project acme-search --from 2026-11-01 --to 2026-12-01 > nov.csv
  aiserver-ledger export --project acme-search --format focus --from 2026-11-01 --to 2026-12-01 \\
      --output acme-2026-11-focus.csv
  aiserver-ledger export --project acme-search --format jsonl --from 2026-11-01 --to 2026-11-02 \\
      --tag team=search --status unpriced"""


def add_parsers(groups: Any) -> None:
    from aiserver.ledger.usage import FORMATS

    command: argparse.ArgumentParser = groups.add_parser(
        "export",
        help="export a project's usage as CSV, JSON lines or FOCUS CSV",
        description=_HELP,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--project", required=True, metavar="SLUG", help="whose events")
    command.add_argument("--format", choices=FORMATS, default="csv", help="default: csv")
    add_event_filters(command, window_required=True)
    command.add_argument("--output", metavar="FILE", help="write here (default: stdout)")
    command.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    command.set_defaults(json=False)


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {("export", None): _export}
