"""deploy/run-local.sh's command line: its --help, and a command line it cannot run.

No container engine is needed: the engine is `false`, so a stop or a status that got past the
command line would fail at its first engine call (exit 1) and stop nothing. (No case here may be
a start: one that got past would write .local/aiserver.env and build the wheelhouses.)
"""

from __future__ import annotations

import os
import subprocess
from typing import Final

import pytest

from .test_services import ROOT

SCRIPT: Final = ROOT / "deploy" / "run-local.sh"


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINER_ENGINE="false", AISERVER_LOCAL="aiserver-test-nothing")
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_help_prints_the_commands_and_the_settings_and_exits_0() -> None:
    # Before, --help was an unknown command: the commands only, on stdout, and exit 2.
    done = run_local("--help")
    assert (done.returncode, done.stderr) == (0, "")
    for said in ("run-local.sh stop --purge", "CONTAINER_ENGINE", "AISERVER_API_PORT", "NO_BUILD"):
        assert said in done.stdout, said


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("bogus",),
            "run-local.sh: unknown command 'bogus': start, stop [--purge], logs or status",
        ),
        # before, stop went on without --purge: the stack stopped, its volume and images kept
        (("stop", "--prge"), "run-local.sh: stop takes --purge or nothing, not: --prge"),
        (("status", "--all"), "run-local.sh: status takes no arguments, not: --all"),
    ],
)
def test_a_command_line_it_cannot_run_is_one_line_and_exit_2(
    args: tuple[str, ...], line: str
) -> None:
    done = run_local(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{line} (deploy/run-local.sh --help shows the usage)\n"
