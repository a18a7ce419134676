"""`aiserver-ledger budgets|spend|reprice --help` helps a newcomer: every command says what it
does and its exit statuses, every option what it is, the examples of the help and of the docs'
command-line sections run as written, and a value of the wrong form is a wrong argument (exit
2, with the usage and what the value should be), never a problem of exit 1 that hints at URLs.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from aiserver.ledger.cli import _parser

from ..support.cli import parse, subcommands
from ..support.processes import run_module

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: The commands this review covers, and the docs whose command-line sections show them.
REVIEWED = ("budgets", "spend", "reprice")
REVIEWED_DOCS = ("budgets.md", "spend.md", "repricing.md")


def test_the_usage_commands_say_their_exit_statuses() -> None:
    """`import` and `events` (whose examples need a file and a database, so they are not run
    with the reviewed ones): each says its exit statuses, as docs/usage-events.md does; before,
    `events --help` did not."""
    found = subcommands(_parser())
    for path in (("import",), ("events",)):
        parser = found[path]
        said = f"{parser.description}\n{parser.epilog}"
        assert "exit status: 0 " in said, path
        assert all(f"{code} " in said for code in ("1", "2", "130")), path


def test_every_command_explains_itself_each_option_and_its_exit_statuses() -> None:
    """Before: `budgets create|list|show|delete --help` had no description, `--project`,
    `--name`, `--period` and the budget's ID no help, `spend --project` none, and neither
    budgets nor spend said what its exit statuses mean."""
    mute: list[str] = []
    for path, parser in subcommands(_parser()).items():
        if path[:1] not in [(name,) for name in REVIEWED]:
            continue
        name = " ".join(path)
        if not (parser.description or "").strip():
            mute.append(f"{name}: no description")
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if not has_subcommands and "exit status" not in f"{parser.description}\n{parser.epilog}":
            mute.append(f"{name}: no exit statuses")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                mute.append(f"{name} {action.option_strings or action.metavar}: no help")
    assert mute == []


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("--from", "yesterday"), "argument --from: not a time: 'yesterday'"),
        (("--to", "2026-13-01"), "argument --to: not a time: '2026-13-01'"),
        (
            ("--tz", "Nowhere/Land"),
            "argument --tz/--time-zone: 'Nowhere/Land' is not an IANA time zone",
        ),
        (
            ("--tz", "CET"),
            "argument --tz/--time-zone: 'CET' is read by PostgreSQL as a fixed offset",
        ),
        (("--group-by", "bad"), "argument --group-by: not model, provider, status or tag:KEY"),
        (("--group-by", "model,tag:bad key"), "tag:KEY: 'tag:bad key'"),
        (("--group-by", "team"), "a tag is named tag:KEY, e.g. tag:team"),
        (("--group-by", "model", "--top", "abc"), "argument --top: a whole number, 1 to 1000"),
        (("--group-by", "model", "--top", "0"), "argument --top: a whole number, 1 to 1000"),
        (("--group-by", "model", "--top", "1001"), "argument --top: a whole number, 1 to 1000"),
        (("--group-by", "model", "--top", "1_0"), "argument --top: a whole number, 1 to 1000"),
    ],
)
def test_a_spend_question_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    """Before: each parsed, and `spend` answered exit 1 with a problem ("from: 'yesterday' is
    not an RFC 3339 time (...; in a URL, write an offset's + as %2B)"), or took --top 1_0 as
    10."""
    window = {"--from": "2026-11-01", "--to": "2026-12-01"}
    for option, value in window.items():
        if option not in argv:
            argv = (*argv, option, value)
    code, err = parse(capsys, "spend", "--project", "acme", *argv)
    assert code == 2, err
    assert err.startswith("usage: aiserver-ledger spend ")
    assert said in err
    assert "%2B" not in err  # a command line is no URL


def test_spend_keeps_a_wall_time_for_the_zone_and_takes_every_dimension(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The form is checked on the command line; what a time without an offset means is left to
    the question (wall time in --tz), and dimensions to its checks together (each once)."""
    args = _parser().parse_args([
        "spend", "--project", "acme", "--from", "2026-11-01", "--to", "2026-12-01T10:00:00 01:00",
        "--tz", "Asia/Kolkata", "--group-by", "model,tag:team", "--group-by", "status",
        "--top", "1000",
    ])  # fmt: skip
    assert (args.since, args.until, args.tz) == ("2026-11-01", "2026-12-01T10:00:00 01:00",
                                                 "Asia/Kolkata")  # fmt: skip
    assert (args.group_by, args.top) == (["model,tag:team", "status"], 1000)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("--project", "acme", "--from", "yesterday"), "argument --from: not a time: 'yesterday'"),
        (("--project", "acme", "--to", "2026-12-32"), "argument --to: not a time: '2026-12-32'"),
        (("--resume", "4_2"), "argument --resume: a run id, 1 to 9223372036854775807: '4_2'"),
        (("--resume", "٤٢"), "argument --resume: a run id"),
        (("--project", "acme", "--batch-size", "²"), "argument --batch-size: 1 to 10000: '²'"),
    ],
)
def test_a_reprice_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    """Before: --from and --to were read by the run (exit 1, hinting at URLs), --resume 4_2 and
    Arabic-Indic digits resumed run 42, and --batch-size ² said "invalid _batch value"."""
    code, err = parse(capsys, "reprice", *argv)
    assert code == 2, err
    assert err.startswith("usage: aiserver-ledger reprice ")
    assert said in err


@pytest.mark.parametrize("command", ["show", "delete"])
@pytest.mark.parametrize("budget", ["1_0", "0", "-1", "١", "9" * 20])
def test_a_budget_id_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], command: str, budget: str
) -> None:
    """Before: `budgets delete 1_0` deleted budget 10, and 0, -1 or 20 digits were looked up
    (exit 1, "no budget ...")."""
    code, err = parse(capsys, "budgets", command, "--project", "acme", "--", budget)
    assert code == 2, err
    assert err.startswith(f"usage: aiserver-ledger budgets {command} ")
    assert f"argument ID: a budget id, 1 to 9223372036854775807: {budget!r}" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("--period", "fortnight"), "argument --period: invalid choice: 'fortnight'"),
        (("--threshold", "120%"), "argument --threshold: not a decimal number: '120%'"),
        (("--limit", "abc"), "argument --limit: not a decimal number: 'abc'"),
    ],
)
def test_a_budget_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    fields = {"--name": "daily", "--limit": "25", "--period": "day"} | given
    code, err = parse(
        capsys, "budgets", "create", "--project", "acme", *(x for f in fields.items() for x in f)
    )
    assert code == 2, err
    assert said in err


def epilog_examples() -> list[str]:
    """The examples the --help of budgets, spend and reprice shows, in order, each once."""
    found: list[str] = []
    for path, parser in subcommands(_parser()).items():
        if path[:1] in [(name,) for name in REVIEWED]:
            text = re.sub(r"\\\n\s*", "", parser.epilog or "")
            found += [line.strip() for line in text.splitlines() if line.startswith("  aiserver-")]
    return list(dict.fromkeys(found))


def doc_examples(name: str) -> list[str]:
    """The `aiserver-ledger budgets|spend|reprice` lines of the shell blocks of a doc."""
    text = (DOCS / name).read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    lines = re.sub(r"\\\n\s*", "", "".join(blocks)).splitlines()
    return [
        line.strip()
        for line in lines
        if re.match(rf"\s*aiserver-ledger ({'|'.join(REVIEWED)}) ", line)
    ]


USAGE = b"""\
{"id": "r1", "model": "gpt-4o", "occurred_at": "2026-11-30T10:00:00Z", "usage": {"input_tokens": 1000, "output_tokens": 500}, "tags": {"team": "search", "feature": "search"}}
{"id": "r2", "model": "gpt-4o", "occurred_at": "2026-12-01T10:00:00Z", "usage": {"input_tokens": 100, "output_tokens": 50}, "tags": {"team": "ads", "feature": "search"}}
"""  # noqa: E501


@pytest.mark.parametrize("where", ["help", *REVIEWED_DOCS])
async def test_the_examples_run_as_written(
    seeded_subprocess_env: dict[str, str], where: str
) -> None:
    """Each example of the --help (or of a doc's command-line section) on a database where the
    projects they name exist with some usage: exit 0, or for `--resume 42` the run's absence
    (exit 1), never a wrong argument."""
    examples = epilog_examples() if where == "help" else doc_examples(where)
    assert len(examples) >= 3, examples
    env = seeded_subprocess_env
    for slug in ("acme-search", "demo"):
        code, _, err = await run_module("aiserver.ledger.cli", env, "projects", "create", slug,
                                        "--rollup-tag", "team")  # fmt: skip
        assert code == 0, err
        code, _, err = await run_module(
            "aiserver.ledger.cli", env, "import", "--project", slug, "-", stdin=USAGE
        )
        assert code == 0, err
    for example in examples:
        program, *argv = shlex.split(example, comments=True)
        assert program == "aiserver-ledger"
        code, out, err = await run_module("aiserver.ledger.cli", env, *argv)
        if "--resume" in argv:
            assert (code, err.strip()) == (1, "aiserver-ledger reprice: no reprice run 42"), err
        else:
            assert code == 0, f"{example}\n{err}"
            assert out.strip(), example
