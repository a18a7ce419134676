"""`run_command`, which every `aiserver-*` command runs through: a failure an operator can act on
is one line and an exit status, never a traceback; a bug still shows its traceback."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import re
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final

import asyncpg
import pytest

from aiserver.core_db.commands import add_version, run_command
from aiserver.core_db.errors import InvalidInput

from ..support.processes import run_module

LOST = (
    "aiserver-test do: the connection to the database failed (terminating connection due to "
    "administrator command); run the command again once PostgreSQL answers\n"
)


def raising(make: Callable[[], BaseException]) -> Coroutine[Any, Any, int]:
    async def command() -> int:
        await asyncio.sleep(0)
        raise make()

    return command()


async def terminated_mid_transaction() -> int:
    """What asyncpg raises when the server ends the connection under a transaction
    (pg_terminate_backend): the InterfaceError of the transaction's end, after the rest."""
    try:
        try:
            raise asyncpg.AdminShutdownError("terminating connection due to administrator command")
        except asyncpg.AdminShutdownError as exc:
            raise asyncpg.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation: terminating connection due to "
                "administrator command"
            ) from exc
    finally:
        raise asyncpg.InterfaceError(  # as asyncpg's __aexit__ raises it
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        )


def test_the_database_lost_mid_command_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_command("aiserver-test do", terminated_mid_transaction(), as_json=False) == 1
    assert capsys.readouterr() == ("", LOST)
    assert run_command("aiserver-test do", terminated_mid_transaction(), as_json=True) == 1
    out, err = capsys.readouterr()
    assert err == ""
    error = json.loads(out)["error"]
    assert (error["type"], error["status"]) == ("urn:aiserver:problem:service-unavailable", 503)
    assert error["detail"] == LOST.split(": ", 1)[1].rstrip("\n")


@pytest.mark.parametrize(
    "failure",
    [
        lambda: asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of it"),
        lambda: asyncpg.CannotConnectNowError("the database system is shutting down"),
        lambda: asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        lambda: asyncpg.InterfaceError("cannot perform operation: connection is closed"),
        lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        lambda: OSError(errno.EHOSTUNREACH, "No route to host"),
    ],
)
def test_each_connection_failure_is_service_unavailable(
    failure: Callable[[], BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command("aiserver-test do", raising(failure), as_json=True) == 1
    assert json.loads(capsys.readouterr().out)["error"]["status"] == 503


@pytest.mark.parametrize(
    "bug",
    [
        lambda: ZeroDivisionError("division by zero"),
        lambda: KeyError("missing"),
        lambda: FileNotFoundError(errno.ENOENT, "No such file or directory", "x.jsonl"),
        lambda: asyncpg.InterfaceError(
            "cannot call Connection.fetch(): the underlying connection has been released back "
            "to the pool"
        ),
        lambda: asyncpg.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
        lambda: asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    ],
)
def test_a_bug_keeps_its_traceback(bug: Callable[[], BaseException]) -> None:
    with pytest.raises(type(bug())):
        run_command("aiserver-test do", raising(bug), as_json=False)


def test_a_domain_error_is_still_its_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("aiserver-test do", raising(lambda: InvalidInput("no")), as_json=False) == 1
    assert capsys.readouterr() == ("", "aiserver-test do: no\n")


def test_ctrl_c_ends_the_command_after_its_clean_up_with_130_and_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cleaned: list[str] = []

    async def interrupted() -> int:
        try:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: asyncio.run cancels this task
            await asyncio.sleep(30)
            return 0
        finally:
            cleaned.append("done")

    try:
        status = run_command("aiserver-test do", interrupted(), as_json=False)
    except KeyboardInterrupt:  # left to rise, it would stop the test session
        pytest.fail("Ctrl-C left run_command as KeyboardInterrupt")
    assert status == 130
    assert cleaned == ["done"]
    assert capsys.readouterr() == ("", "")


def test_a_reader_of_stdout_gone_ends_quietly_with_141(capsys: pytest.CaptureFixture[str]) -> None:
    broken = raising(lambda: BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert run_command("aiserver-test do", broken, as_json=False) == 141
    assert capsys.readouterr() == ("", "")


def test_a_blocking_command_is_run_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    def serve() -> int:
        with pytest.raises(RuntimeError):  # no event loop: not run under asyncio
            asyncio.get_running_loop()
        return 7

    assert run_command("aiserver-test do", serve, as_json=False) == 7

    def refused() -> int:
        raise InvalidInput("cannot listen on 127.0.0.1:8900: Address already in use")

    assert run_command("aiserver-test do", refused, as_json=False) == 1
    assert capsys.readouterr().err == (
        "aiserver-test do: cannot listen on 127.0.0.1:8900: Address already in use\n"
    )


@pytest.mark.parametrize(
    ("module", "prog", "distribution"),
    [
        ("aiserver.api.cli", "aiserver-api", "aiserver-api"),
        ("aiserver.core_db.cli", "aiserver-db", "aiserver-core-db"),
        ("aiserver.costs.cli", "aiserver-costs", "aiserver-costs"),
        ("aiserver.ledger.cli", "aiserver-ledger", "aiserver-ledger"),
        ("aiserver.taskrunner.cli", "aiserver-taskrunner", "aiserver-taskrunner"),
    ],
)
async def test_every_command_says_its_version(module: str, prog: str, distribution: str) -> None:
    """`--version`, with no database nor settings: the command and its package's version."""
    from importlib.metadata import version

    code, out, err = await run_module(module, {"PATH": "/usr/bin"}, "--version")
    assert (code, out, err) == (0, f"{prog} {version(distribution)}\n", "")


def test_the_version_is_read_only_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading the packaging metadata costs a command about 20 ms at every start: a parser with
    `--version` reads it only when `--version` is given, and then prints it on stdout."""
    import argparse
    import importlib.metadata

    asked: list[str] = []

    def version(distribution: str) -> str:
        asked.append(distribution)
        return "9.8.7"

    monkeypatch.setattr(importlib.metadata, "version", version)
    parser = argparse.ArgumentParser(prog="aiserver-test")
    add_version(parser, "aiserver-test-dist")
    parser.add_argument("--other")
    assert vars(parser.parse_args(["--other", "x"])) == {"other": "x"}
    assert "--version" in parser.format_help()
    assert asked == []
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--version"])
    assert (exited.value.code, asked) == (0, ["aiserver-test-dist"])
    assert capsys.readouterr() == ("aiserver-test 9.8.7\n", "")


@pytest.mark.parametrize(
    ("module", "argv", "usage"),
    [
        ("aiserver.ledger.cli", ["events", "--project", "x", "--frm", "2026-01-01"],
         "aiserver-ledger events"),
        ("aiserver.ledger.cli", ["projects", "create", "x", "--nope"],
         "aiserver-ledger projects create"),
        ("aiserver.costs.cli", ["calc", "gpt-4o", "--bogus"], "aiserver-costs calc"),
        ("aiserver.core_db.cli", ["status", "--nope"], "aiserver-db status"),
        ("aiserver.taskrunner.cli", ["run", "--nope"], "aiserver-taskrunner run"),
    ],
)  # fmt: skip
def test_an_unknown_argument_is_refused_by_its_own_command_with_its_usage(
    module: str, argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the top parser refused it with its own usage ("usage: aiserver-ledger [-h]
    # [--version] COMMAND ..."), which does not show the options the command takes.
    parser = importlib.import_module(module)._parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} ")
    assert f"\n{usage}: error: unrecognized arguments: " in err


def _commands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str]]:
    """Each command of a command line (the top one first) and its --help."""
    yield path, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _commands(command, f"{path} {name}")


CLIS: Final = ("aiserver.api.cli", "aiserver.core_db.cli", "aiserver.costs.cli",
               "aiserver.ledger.cli", "aiserver.taskrunner.cli")  # fmt: skip


@pytest.mark.parametrize("module", CLIS)
def test_every_commands_help_says_its_exit_statuses_in_lines_that_fit(module: str) -> None:
    # Before, 22 of the 38 commands' --help said no exit status (the README says each does),
    # and five descriptions were one line of up to 602 characters.
    parser = importlib.import_module(module)._parser()
    helps = dict(_commands(parser, parser.prog))
    assert helps
    # a line of its own: "exit status" in a sentence ("its exit statuses") is not the list
    said = {path: [x for x in text.splitlines() if x.startswith("exit status:")]
            for path, text in helps.items()}  # fmt: skip
    assert [path for path, lines in said.items() if not lines] == []
    assert [
        (path, line)
        for path, text in helps.items()
        for line in text.splitlines()
        if len(line) > 100
    ] == []


@pytest.mark.parametrize("module", CLIS)
def test_every_commands_help_gives_an_example(module: str) -> None:
    # Before, 17 commands' --help had none (`aiserver-ledger keys revoke`, `aiserver-costs
    # calc`, `aiserver-db migrate`, ...): only their tools' and groups' did.
    top = importlib.import_module(module)._parser()
    lacking = [
        parser.prog
        for parser in _parsers(top)
        if not re.search(rf"^examples?:\n  {re.escape(top.prog)} ", parser.format_help(), re.M)
    ]
    assert lacking == []


@pytest.mark.parametrize("module", CLIS)
def test_every_option_with_bounds_a_user_can_reach_says_them_in_its_help(module: str) -> None:
    # Before, `aiserver-ledger reprice --batch-size` said only its default (500) and `spend
    # --top` nothing of its bounds, though both refuse a number past 10000 and 1000 with exit 2.
    top = importlib.import_module(module)._parser()
    silent = []
    for parser in _parsers(top):
        for action in parser._actions:
            if not callable(action.type) or action.type in (int, float, str):
                continue
            try:
                action.type("9" * 25)  # past any bound: the refusal names the bounds
            except (argparse.ArgumentTypeError, ValueError) as refusal:
                # "1 to 10000: '999...'", "from 1 to 65535, not 999...": the number's bounds
                bounds = re.search(r"\b(\d+) to (\d+)(?=: '|, not )", str(refusal))
            else:
                continue
            # a bound a user never reaches (an id up to 2**63 - 1, 999999999 alerts) may go unsaid
            if bounds and int(bounds[2]) < 10**8 and bounds[0] not in (action.help or ""):
                silent.append(f"{parser.prog} {action.option_strings or action.dest}: {bounds[0]}")
    assert silent == []


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """A command line's parser and those of its commands, all the way down."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from _parsers(command)


@pytest.mark.parametrize("module", CLIS)
def test_a_commands_exit_statuses_say_only_what_it_can_do(module: str) -> None:
    # Before, `aiserver-costs seed --help` and `fields --help` said what --json changes, which
    # neither takes, and an exit status 3 of `calc --batch`; `aiserver-ledger --help` did not
    # say the 3 that `import` ends with.
    def takes_json(parser: argparse.ArgumentParser) -> bool:  # it, or a command under it
        return any("--json" in p._option_string_actions for p in _parsers(parser))

    top = importlib.import_module(module)._parser()
    wrong = []
    for parser in _parsers(top):
        said = " ".join(parser.format_help().partition("\nexit status:")[2].split())
        if "with --json" in said and not takes_json(parser):
            wrong.append(f"{parser.prog}: --json in its exit statuses, which it does not take")
        if "3 calc --batch" in said and parser.prog not in (
            "aiserver-costs",
            "aiserver-costs calc",
        ):
            wrong.append(f"{parser.prog}: calc's exit status 3")
        # Before, every `aiserver-costs` command's said "also a refresh that failed", though
        # only `refresh` downloads (`status --help`, `calc --help`, ...)
        if "also a refresh" in said and parser.prog not in (
            "aiserver-costs",
            "aiserver-costs refresh",
        ):
            wrong.append(f"{parser.prog}: a refresh's failure in its exit statuses")
    assert wrong == []
    if top.prog == "aiserver-costs":
        assert "refresh whose download failed" in " ".join(top.format_help().split())
    if top.prog == "aiserver-ledger":
        assert "3 import with lines invalid or in conflict" in " ".join(top.format_help().split())
