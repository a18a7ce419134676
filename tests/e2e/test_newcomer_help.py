"""The `--help` a newcomer reads first: every command of the services' CLIs says what it does,
and the task runner's says everything it runs, not only the catalog refresh."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from aiserver.api.cli import _parser as api_parser
from aiserver.core_db.cli import _parser as db_parser
from aiserver.costs.cli import _parser as costs_parser
from aiserver.taskrunner.cli import _parser as taskrunner_parser

from ..support.cli import subcommands


@pytest.mark.parametrize(
    ("program", "parser"),
    [
        ("aiserver-api", api_parser),
        ("aiserver-db", db_parser),
        ("aiserver-costs", costs_parser),
        ("aiserver-taskrunner", taskrunner_parser),
    ],
)
def test_every_command_says_what_it_does(
    program: str, parser: Callable[[], argparse.ArgumentParser]
) -> None:
    mute = [
        " ".join((program, *path))
        for path, command in subcommands(parser()).items()
        if not (command.description or "").strip()
    ]
    assert mute == []  # before: `aiserver-db status --help` and `aiserver-costs status --help`


def test_the_task_runner_says_what_it_runs() -> None:
    text = " ".join((taskrunner_parser().description or "").split())
    for work in (
        "refreshes the catalog",
        "rollups",
        "reprices",
        "partitions",
        "reservations",
        "budget alerts",
        "document conversion",
    ):
        assert work in text, work
