"""Command-line parsers as the tests of `--help` walk them."""

from __future__ import annotations

import argparse

import pytest


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """`parser` and every subcommand's parser under it, by the words that reach it."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= subcommands(sub, (*path, name))
    return found


def parse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit status `aiserver-ledger`'s parser gives `argv` (0 when it parses) and what it
    printed on stderr."""
    from aiserver.ledger.cli import _parser

    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err
