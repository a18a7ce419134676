"""`aiserver-taskrunner [run|check] [--burst]`: the options as README.md writes them."""

from __future__ import annotations

import pytest

from aiserver.taskrunner.cli import _parser

from ..conftest import Settings
from ..support.processes import run_module


@pytest.mark.parametrize(
    ("argv", "command", "burst"),
    [
        (["run", "--burst"], "run", True),
        (["--burst", "run"], "run", True),
        (["--burst"], None, True),
        (["run"], "run", False),
        ([], None, False),
        (["check"], "check", False),
    ],
)
def test_burst_goes_before_or_after_run(argv: list[str], command: str | None, burst: bool) -> None:
    args = _parser().parse_args(argv)
    assert (args.command, args.burst) == (command, burst)


async def test_run_help_names_burst_and_a_burst_run_ends_by_itself(
    subprocess_env: dict[str, str], settings: Settings, redis: object
) -> None:
    code, out, _ = await run_module("aiserver.taskrunner.cli", subprocess_env, "run", "--help")
    assert code == 0
    assert "--burst" in out
    assert "run the queued jobs, then stop" in out
    # no job queued: it starts (migrations, seed, a refresh that fails offline), finds nothing
    # else to do, and stops with 0
    offline = dict(subprocess_env, MODEL_COST_SOURCE_URL="http://127.0.0.1:9/unreachable",
                   MODEL_COST_FETCH_RETRIES="0")  # fmt: skip
    code, out, err = await run_module("aiserver.taskrunner.cli", offline, "run", "--burst")
    assert code == 0, out + err


@pytest.mark.parametrize("command", ["run", "check"])
async def test_a_redis_url_with_an_option_redis_py_does_not_take_exits_2_saying_so(
    subprocess_env: dict[str, str], command: str
) -> None:
    """redis-py reads REDIS_URL's query options as connection options: one it does not take
    failed the worker at its first connection, with a traceback, again and again."""
    env = dict(subprocess_env, REDIS_URL="redis://127.0.0.1:6379/0?colour=blue")
    code, out, err = await run_module("aiserver.taskrunner.cli", env, command)
    assert code == 2, out + err
    assert "REDIS_URL has an option redis-py does not take" in err
    assert "colour" in err
    assert "Traceback" not in err
