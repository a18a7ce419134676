"""What every `aiserver-*` command does with a failure: print its problem, exit 1.

A failure is an RFC 9457 problem with the API's types (`AiserverError.problem()`): with `--json`
it is printed as `{"error": {...}}` on stdout, else its detail on stderr. The database lost in
the middle of a command (PostgreSQL restarted, the connection cut or terminated) is the problem
503 `service-unavailable` too. A failure that is neither is raised as it is (a bug shows its
traceback).

Exit statuses: the command's own; 1 after a failure's problem; 130 after Ctrl-C (SIGINT), 141
when stdout is a pipe whose reader went away (`... | head -1`), quietly in both cases, as a
shell reports a command that such a signal stopped.

Light on purpose: a command imports this before it knows what it will run.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.errors import AiserverError, problem

if TYPE_CHECKING:
    from aiserver.core_db.settings import LogLevel

Problem = dict[str, Any]

#: The exit status after Ctrl-C: 128 + SIGINT, as a shell reports a command it stopped.
INTERRUPTED: Final = 130
#: The exit status when the reader of stdout went away: 128 + SIGPIPE, as a shell reports it.
BROKEN_PIPE: Final = 141

#: The errors of a socket whose peer is gone or cannot be reached (an OSError of a file is not).
#: The errno of a socket's failure to reach its peer (a plain OSError a driver lets through).
NETWORK_ERRNOS: Final = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ENOTCONN,
})  # fmt: skip


def command_problem(exc: Exception) -> Problem | None:
    """The problem of a domain error, or of tables that are missing (migrations not applied);
    None for anything else."""
    if isinstance(exc, AiserverError):
        return exc.problem()
    asyncpg = sys.modules.get("asyncpg")  # loaded by whatever met the database
    if asyncpg and isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        detail = (
            f"the tables are missing or behind ({exc}); "
            "apply the migrations first: aiserver-db migrate"
        )
        return problem(503, detail, slug="schema-not-migrated")
    return None


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` itself says that the connection to PostgreSQL failed: refused, cut,
    terminated by the server (restart, pg_terminate_backend), or used once closed. A misuse of
    an open connection (an InterfaceError that does not say closed) is not: a bug stays a bug."""
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        lost = (
            asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError, rejected, failed
            asyncpg.AdminShutdownError,  # terminated: pg_terminate_backend, a fast shutdown
            asyncpg.CrashShutdownError,
            asyncpg.CannotConnectNowError,  # starting up or shutting down
        )
        if isinstance(exc, lost):
            return True
        if isinstance(exc, asyncpg.InterfaceError):  # also a misuse: only a closed connection
            text = str(exc)
            return "connection is closed" in text or "connection was closed" in text
    if isinstance(exc, BrokenPipeError):  # stdout's reader, as often as a socket's
        return False
    if isinstance(exc, ConnectionError):  # refused, reset, aborted
        return True
    return isinstance(exc, OSError) and exc.filename is None and exc.errno in NETWORK_ERRNOS


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling, each once."""
    link: BaseException | None = exc
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def connection_problem(exc: Exception) -> Problem | None:
    """The problem 503 `service-unavailable` of a connection to the database that failed during
    a command; None for anything else (a bug stays a bug). An InterfaceError on a closed
    connection counts when what it follows was the connection lost."""
    if not connection_lost(exc):
        return None
    cause: BaseException = exc  # the first link of the chain that says why
    for link in chain(exc):
        if connection_lost(link):
            cause = link
    why = str(cause).split("\n", 1)[0] or type(cause).__name__
    detail = (
        f"the connection to the database failed ({why}); "
        "run the command again once PostgreSQL answers"
    )
    return problem(503, detail, slug="service-unavailable")


def _stdout_gone() -> int:
    """The reader of stdout went away: point stdout at /dev/null so that the flush at exit
    does not fail again (as the Python docs advise for SIGPIPE), and end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a replaced stdout): nothing to flush
        pass
    return BROKEN_PIPE


def run_command(
    prog: str,
    command: Coroutine[Any, Any, int] | Callable[[], int],
    *,
    as_json: bool,
    problem_of: Callable[[Exception], Problem | None] = command_problem,
) -> int:
    """Run a command: a coroutine under asyncio.run, or a plain function (one that blocks,
    e.g. a server that must see Ctrl-C at once). Its exit status; 1 after printing its
    failure's problem; INTERRUPTED after Ctrl-C, BROKEN_PIPE when stdout's reader is gone."""
    import asyncio

    try:
        try:
            status = asyncio.run(command) if asyncio.iscoroutine(command) else command()
            sys.stdout.flush()  # a broken pipe shows here, not at exit
            return status
        except Exception as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            failure = problem_of(exc) or connection_problem(exc)
            if failure is None:
                raise
        if as_json:
            print(json.dumps({"error": failure}, ensure_ascii=False), flush=True)
        else:
            print(f"{prog}: {failure['detail']}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:  # what was done is said by the command (e.g. import's "stopped")
        return INTERRUPTED


#: RFC 3339's date-time (section 5.6: `T` and `Z` in either case, or a space for the `T`), the
#: offset optional (UTC), or a date alone (its midnight in UTC, as the API's `from` and `to`
#: read it). Not the other forms `datetime.fromisoformat` reads (`20261201`, `2026-W49-1`,
#: `+0100`), which the API's `at` and `occurred_at` refuse too.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?)?", re.ASCII
)


def timestamp(text: str) -> datetime:
    """An argparse type: an RFC 3339 time, read as the API reads a JSON body's time (msgspec:
    a fraction finer than a microsecond is rounded to it); one without an offset is UTC, and a
    date alone is its midnight in UTC."""
    import msgspec

    try:
        if not _RFC3339.fullmatch(text):
            raise ValueError(text)
        if len(text) == len("2026-12-01"):
            value = datetime.combine(date.fromisoformat(text), time())
        else:
            value = msgspec.convert(text, datetime)
    except (ValueError, msgspec.ValidationError):
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def counted(count: int, noun: str) -> str:
    """`count` with thousands separators and `noun` for one or more: "1 event", "1,200 events"."""
    return f"{count:,} {noun if count == 1 else noun + 's'}"


def command_log_level(configured: LogLevel) -> LogLevel:
    """The log level of a command: what LOG_LEVEL says when it is set; else WARNING. A command
    says what it did in its own lines; the services' log lines of that work (a migration
    applied, a reprice run started) come only when LOG_LEVEL asks for them."""
    return configured if "LOG_LEVEL" in os.environ else "WARNING"


#: The width the help's own text is laid out in (descriptions, epilogs); a longer line wraps.
HELP_WIDTH: Final = 100


class CommandHelp(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as they are written (examples and exit statuses laid out by
    hand), but a line longer than `HELP_WIDTH` wrapped, not printed as one long line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        lines = []
        for line in text.splitlines():
            # an indented line (an example's command) stays whole, to be copied as it is
            if len(indent + line) > HELP_WIDTH and not line[:1].isspace():
                lines.append(textwrap.fill(line, HELP_WIDTH, initial_indent=indent,
                                           subsequent_indent=indent,
                                           break_on_hyphens=False))  # fmt: skip
            else:
                lines.append(indent + line)
        return "\n".join(lines)


class CommandParser(argparse.ArgumentParser):
    """The parser of a command line with subcommands (argparse makes each subcommand's parser
    of its parent's class): an argument that a subcommand does not know is refused by that
    subcommand, with its own usage (`aiserver-ledger events: error: unrecognized arguments:
    --frm`), not by the top parser with the top's usage, which does not show the options that
    were meant. Its help is laid out by `CommandHelp`, and ends with `exit_statuses` (a tool's
    subclass says them) when its own epilog does not say them."""

    #: What --help says of the exit statuses where the command's own epilog does not. In it,
    #: `{json}` is `JSON_PROBLEM` where --json is taken (by this command, or by one of its
    #: commands), else nothing; `{own}` the statuses of `own_exit_statuses` that this command
    #: can end with (all of them on the tool's own --help), `{own_failure}` likewise those of
    #: `own_failures`.
    exit_statuses: str | None = None
    #: Exit statuses of some commands only: (the command's name, its words, ending with "; ").
    own_exit_statuses: tuple[tuple[str, str], ...] = ()
    #: What else ends some commands only with status 1, put at `{own_failure}`: (the command's
    #: name, its words, starting with ", ").
    own_failures: tuple[tuple[str, str], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("formatter_class") in (None, argparse.RawDescriptionHelpFormatter):
            kwargs["formatter_class"] = CommandHelp
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)

    def format_help(self) -> str:
        text = super().format_help()
        said = any(line.startswith("exit status:") for line in text.splitlines())
        if self.exit_statuses is not None and not said:
            statuses = self.exit_statuses.format(
                json=JSON_PROBLEM if _takes_json(self) else "",
                own="".join(w for name, w in self.own_exit_statuses if self._ends_with(name)),
                own_failure="".join(w for name, w in self.own_failures if self._ends_with(name)),
            )
            text += "\n" + self._get_formatter()._fill_text(statuses, 0, "") + "\n"
        return text

    def _ends_with(self, command: str) -> bool:
        """Whether this command's run can end as `command`'s: it is that command, or the tool
        itself (its --help says every command's statuses)."""
        words = self.prog.split()
        return len(words) == 1 or words[-1] == command


#: How --json changes a failure's report, said by the exit statuses of a command that takes it.
JSON_PROBLEM: Final = ', or {"error": ...} on stdout with --json'


def _takes_json(parser: argparse.ArgumentParser) -> bool:
    """Whether `parser`, or a command under it, takes --json."""
    for action in parser._actions:
        if "--json" in action.option_strings:
            return True
        if isinstance(action, argparse._SubParsersAction) and any(
            _takes_json(command) for command in action.choices.values()
        ):
            return True
    return False


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The subcommands of a `CommandParser`: what a subcommand left unparsed is refused by
    that subcommand, with its usage (argparse hands it up to the top parser)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        left = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if left:
            command = self._name_parser_map[values[0]]
            command.error(f"unrecognized arguments: {' '.join(left)}")


class _Version(argparse.Action):
    """`--version`, looked up only when it is asked for: reading the packaging metadata imports
    `importlib.metadata` and scans the installed distributions (about 20 ms), which every other
    run of a command (`--help`, `calc --batch`) would pay for nothing."""

    def __init__(self, option_strings: list[str], dest: str, distribution: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.distribution = distribution

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version(self.distribution)
        except PackageNotFoundError:  # run from a source tree that was not installed
            installed = "(not installed)"
        print(f"{parser.prog} {installed}")  # on stdout, as argparse's own "version" action
        parser.exit()


def add_version(parser: argparse.ArgumentParser, distribution: str) -> None:
    """`--version`: the command's name and the version of the distribution that installed it
    (`aiserver-ledger 0.1.0`), as packaging metadata has it."""
    parser.add_argument(
        "--version", action=_Version, distribution=distribution,
        help="print the version and exit",
    )  # fmt: skip
