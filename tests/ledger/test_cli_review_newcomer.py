"""`aiserver-ledger` on a command line a newcomer gets wrong: a value of the wrong form is a wrong
argument (exit 2, with the usage and what the value should be), as the README promises, never
a traceback, a hint about URLs, or a receiver that stops before it received anything."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from aiserver.ledger.cli import _parser

from ..support.cli import parse, subcommands


@pytest.mark.parametrize(
    "argv",
    [
        ("events", "--project", "demo", "--from", "yesterday"),
        ("events", "--project", "demo", "--to", "2026-13-01"),
        ("export", "--project", "demo", "--from", "2026-12-01", "--to", "soon"),
    ],
)
def test_a_time_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, err = parse(capsys, *argv)
    assert code == 2
    assert err.startswith("usage: aiserver-ledger ")
    assert "not a time:" in err
    assert "e.g. 2026-12-01T10:00:00Z" in err
    assert "%2B" not in err  # a command line is no URL


def test_times_are_read_as_the_api_reads_them(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(
        ["events", "--project", "demo", "--from", "2026-12-01", "--to", "2026-12-01T11:00:00+01:00"]
    )
    assert args.since == datetime(2026, 12, 1, tzinfo=UTC)  # a date: its midnight UTC
    assert args.until == datetime(2026, 12, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tag", "said"),
    [
        ("team", "not KEY=VALUE: 'team'"),
        ("team=", "not KEY=VALUE: 'team='"),
        ("bad key=x", "not a tag key: 'bad key'"),
    ],
)
def test_a_tag_filter_of_the_wrong_form_is_a_wrong_argument(
    capsys: pytest.CaptureFixture[str], tag: str, said: str
) -> None:
    code, err = parse(capsys, "events", "--project", "demo", "--tag", tag)
    assert code == 2
    assert said in err


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--port", "99999", "a port, 0 to 65535: '99999'"),
        ("--port", "-1", "a port, 0 to 65535: '-1'"),
        ("--port", "9" * 5000, "a port, 0 to 65535"),
        ("--count", "0", "a whole number, 1 to 999999999: '0'"),
        ("--count", "-1", "a whole number, 1 to 999999999: '-1'"),
    ],
)
def test_the_alert_receiver_refuses_a_port_or_count_it_cannot_use(
    capsys: pytest.CaptureFixture[str], option: str, value: str, said: str
) -> None:
    """Before: --port 99999 ended in a traceback from bind(), and --count 0 or -1 stopped at
    once with exit 0, having received nothing."""
    code, err = parse(capsys, "webhooks", "receive", "--secret", "s", option, value)
    assert code == 2
    assert said in err


def test_the_alert_receiver_takes_any_free_port_and_a_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parser().parse_args(["webhooks", "receive", "--port", "0", "--count", "3"])
    assert (args.port, args.count) == (0, 3)
    assert parse(capsys, "webhooks", "receive", "--port", "65535")[0] == 0


def test_each_of_these_commands_explains_itself_and_each_option() -> None:
    """`--help` of every `aiserver-ledger` command says what it does, and every option and
    argument what it is (budgets and spend are another's to fix: left out here)."""

    mute: list[str] = []
    for path, parser in subcommands(_parser()).items():
        if path[:1] in (("budgets",), ("spend",)):
            continue
        name = " ".join(path) or "aiserver-ledger"
        if not (parser.description or "").strip():
            mute.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                mute.append(f"{name} {action.option_strings or action.metavar}: no help")
    assert mute == []
