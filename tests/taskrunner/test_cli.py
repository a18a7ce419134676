"""`aiserver-taskrunner [run|check] [--burst]`: the options as README.md writes them."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from aiserver.taskrunner.cli import _parser
from aiserver.taskrunner.health import health_check_key

from ..conftest import Settings
from ..support.ports import free_port
from ..support.processes import kill, log_events, run_module


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


def test_the_help_names_what_it_needs_its_examples_and_exit_statuses() -> None:
    """It named REDIS_URL only, and neither examples nor exit statuses, as every other
    command's help does."""
    shown = _parser().format_help()
    for said in ("DATABASE_URL", "REDIS_URL", "examples:", "aiserver-taskrunner check",
                 "exit status: 0", "2 wrong arguments or a setting that is not valid"):  # fmt: skip
        assert said in shown, said


def test_the_usage_says_the_command_may_be_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage wrote `COMMAND ...` as if a command were required, while none runs the worker."""
    usage = _parser().format_usage()
    assert "[COMMAND [OPTIONS]]" in usage, usage
    assert _parser().parse_args([]).command is None
    # a command's own usage keeps its short name, not the whole usage line before it
    with pytest.raises(SystemExit):
        _parser().parse_args(["check", "--bogus"])
    assert capsys.readouterr().err.startswith(
        "usage: aiserver-taskrunner check [-h] [--host NAME]\n"
    )


async def test_a_bad_setting_exits_2_as_the_help_says(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "DATABASE_POOL_MAX_SIZE": "zero"}
    code, _, err = await run_module("aiserver.taskrunner.cli", env, "run", "--burst")
    assert code == 2, err
    assert "DATABASE_POOL_MAX_SIZE" in err


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


@pytest.mark.parametrize(
    ("setting", "said"),
    [("DATABASE_URL", "the database was not ready"), ("REDIS_URL", "Redis did not answer")],
)
async def test_a_burst_run_that_cannot_reach_a_server_says_so_in_one_line(
    subprocess_env: dict[str, str], setting: str, said: str
) -> None:
    # Before, a 66-line traceback (PostgreSQL) or 79 lines of two chained ones (Redis).
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = urlsplit(subprocess_env[setting])
    user = f"{url.username}@" if url.username else ""
    env = {**subprocess_env, setting: url._replace(netloc=f"{user}127.0.0.1:{port}").geturl()}
    code, out, err = await run_module("aiserver.taskrunner.cli", env, "run", "--burst")
    assert code == 1, out + err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("aiserver-taskrunner:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"aiserver-taskrunner: --burst: {said}: "), err
    assert str(port) in lines[0]


@pytest.mark.parametrize(("command", "status"), [("run", 2), ("check", 1)])
async def test_a_redis_url_with_an_option_redis_py_does_not_take_exits_saying_so(
    subprocess_env: dict[str, str], command: str, status: int
) -> None:
    """redis-py reads REDIS_URL's query options as connection options: one it does not take
    failed the worker at its first connection, with a traceback, again and again. (`check`, a
    health check, answers 1: Docker reserves 2.)"""
    env = dict(subprocess_env, REDIS_URL="redis://127.0.0.1:6379/0?colour=blue")
    code, out, err = await run_module("aiserver.taskrunner.cli", env, command)
    assert code == status, out + err
    assert "REDIS_URL has an option redis-py does not take" in err
    assert "colour" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("command", "status"), [("run", 2), ("check", 1)])
async def test_a_setting_that_is_not_valid_is_named_and_check_calls_it_unhealthy(
    subprocess_env: dict[str, str], command: str, status: int
) -> None:
    env = dict(subprocess_env, REDIS_REPLY_TIMEOUT_SECONDS="soon")
    code, out, err = await run_module("aiserver.taskrunner.cli", env, command)
    assert code == status, out + err
    assert "aiserver-taskrunner: configuration error: REDIS_REPLY_TIMEOUT_SECONDS" in err
    assert "Traceback" not in err


#: A task runner whose first worker loses its connection in a WATCHed pipeline (as arq's
#: enqueue of a cron job does): redis-py raises WatchError, not ConnectionError. The second
#: worker ends at once. It prints how many workers it made and what run() returned.
_WATCH_LOST = """
import arq.worker
from redis.exceptions import WatchError
from aiserver.core_db.settings import settings_for_command
from aiserver.taskrunner import cli
from aiserver.taskrunner.settings import TaskRunnerSettings

made = []
real = arq.worker.create_worker

def create(options, **kwargs):
    worker = real(options, **kwargs)
    made.append(worker)

    async def main():
        if len(made) == 1:
            raise WatchError("A ConnectionError occurred on while watching one or more keys")

    worker.main = main
    return worker

arq.worker.create_worker = create
cli.REDIS_RETRY_S = 0.05
code = cli.run(settings_for_command("test", TaskRunnerSettings))
print(len(made), code)
"""


async def test_a_connection_lost_in_a_watched_pipeline_starts_a_new_worker(
    subprocess_env: dict[str, str],
) -> None:
    """Found when the watchdog closed a connection in the middle of arq's enqueue of a cron
    job: the WatchError ended the task runner with a traceback instead of a new worker."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WATCH_LOST, env=dict(subprocess_env, LOG_FORMAT="json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, out.decode() + err.decode()
    assert out.decode().splitlines()[-1] == "2 0"
    assert "redis unreachable: the worker starts again when it answers" in out.decode()


async def test_check_answers_for_this_host_or_the_host_it_is_given(
    subprocess_env: dict[str, str], redis: Redis
) -> None:
    """Each task runner refreshes a health key named after its host: `check` looks for this
    host's, or with `--host` for another's (a monitor checking a fleet from elsewhere)."""
    await redis.set(health_check_key("runner-7"), b"j_complete=3 queued=0", px=30_000)
    try:
        code, _, err = await run_module(
            "aiserver.taskrunner.cli", subprocess_env, "check", "--host", "runner-7"
        )
        assert code == 0, err
        assert "Health check successful: j_complete=3 queued=0" in err
        for argv in (["--host", "runner-8"], []):
            code, _, err = await run_module(
                "aiserver.taskrunner.cli", subprocess_env, "check", *argv
            )
            assert code == 1, err
            host = argv[1] if argv else socket.gethostname()
            assert f"no live task runner of host {host!r} on this Redis" in err
    finally:
        await redis.delete(health_check_key("runner-7"))


#: The task runner with its restarts and their repeated warning made quick, so that a test sees
#: a streak of failed starts in a second (its REDIS_URL at a port where no Redis listens yet).
_RESTARTING = """
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import settings_for_command
from aiserver.taskrunner import cli
from aiserver.taskrunner.settings import TaskRunnerSettings

cli.REDIS_RETRY_S = 0.05
cli.RESTART_SAID_EVERY_S = 0.5
settings = settings_for_command("test", TaskRunnerSettings)
configure_logging(settings.core.log_level, settings.core.log_format)
raise SystemExit(cli.run(settings))
"""


async def test_a_redis_outage_logs_its_first_failed_start_then_one_a_while_then_the_start(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """A new worker every REDIS_RETRY_S while Redis is away logged two lines each (arq's
    `Starting worker for ...` and the warning): 60 lines a minute. Now the first warning, one
    a while with the count (a minute; here 0.5 s), and one line when the worker starts."""
    port = free_port()
    env = dict(subprocess_env, LOG_FORMAT="json", LOG_LEVEL="INFO",
               REDIS_URL=f"redis://127.0.0.1:{port}/0")  # fmt: skip
    log = (tmp_path / "runner.log").open("wb")
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RESTARTING, env=env, stdout=log, stderr=log
    )
    redis_server = None
    try:
        for _ in range(600):  # until a warning said again counts five failed starts or more
            events = log_events(tmp_path / "runner.log")
            if any(e.get("failed_starts", 0) >= 5 for e in events):
                break
            await asyncio.sleep(0.05)
        redis_server = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(300):
            events = log_events(tmp_path / "runner.log")
            if any(e.get("event") == "the worker started again" for e in events):
                break
            await asyncio.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(runner.wait(), 30) == 0
    finally:
        await kill(runner, *([redis_server] if redis_server else []))
        log.close()
    events = log_events(tmp_path / "runner.log")
    names = [str(e.get("event")) for e in events]
    warned = [e for e in events if e.get("event", "").startswith("redis unreachable")]
    (again,) = [e for e in events if e.get("event") == "the worker started again"]
    assert again["failed_starts"] > 5, again
    # the first in full, then one each 0.5 s or later (not one per start)
    assert 2 <= len(warned) < again["failed_starts"], [e.get("failed_starts") for e in warned]
    said_at = [datetime.fromisoformat(e["timestamp"]) for e in warned]
    assert all(b - a >= timedelta(seconds=0.45) for a, b in itertools.pairwise(said_at))
    assert "failed_starts" not in warned[0]
    assert warned[-1]["failed_starts"] <= again["failed_starts"]
    assert warned[-1]["failing_since"] == again["failing_since"]
    assert sum(name.startswith("Starting worker for ") for name in names) == 1
    assert "task runner ready" in names
