"""Task runner children for the tests that need real processes: start, read their JSON logs,
wait for an event, stop them as a container stop does, and never leave one behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: Start-up of a child: a task runner migrates and seeds ~4,800 models, an API process imports
#: Litestar, uvicorn and the catalog. Allow for a busy 2-core machine.
START_TIMEOUT_S: Final = 60.0
#: A SIGTERM lets a running job finish for up to 25 s (JOB_COMPLETION_WAIT_S), then stops.
STOP_TIMEOUT_S: Final = 30.0


async def run_module(
    module: str, env: Mapping[str, str], *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """`python -m module args` to its end (reading `stdin`, if given): its exit status, stdout
    and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def kill(*procs: asyncio.subprocess.Process) -> None:
    """SIGKILL each child still running and reap it: the end of every test that starts one."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a child (anything else it printed is skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


@dataclass
class TaskRunner:
    """One `aiserver-taskrunner` child; its stdout and stderr go to `log`."""

    proc: asyncio.subprocess.Process
    log: Path

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log)

    def said(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

    async def wait_for(self, event: str, timeout: float = START_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while not self.said(event):
                assert self.proc.returncode is None, (
                    f"the task runner exited with {self.proc.returncode} before {event!r}:\n"
                    + self.log.read_text(errors="replace")
                )
                await asyncio.sleep(0.1)

    async def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as a container stop sends it; the exit status, within `timeout`."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def start_taskrunner(env: Mapping[str, str], log: Path) -> TaskRunner:
    """Start one `aiserver-taskrunner` (the console script, as deployed): the caller stops it."""
    script = Path(sys.executable).with_name("aiserver-taskrunner")
    program = (
        [str(script)] if script.exists() else [sys.executable, "-m", "aiserver.taskrunner.cli"]
    )
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *program, env=dict(env), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    return TaskRunner(proc, log)


@contextlib.asynccontextmanager
async def taskrunners(
    count: int, env: Mapping[str, str], logs: Path
) -> AsyncIterator[list[TaskRunner]]:
    """Start `count` task runners at once; kill any of them still running at the end."""
    started: list[TaskRunner] = []
    try:
        for i in range(count):
            started.append(await start_taskrunner(env, logs / f"taskrunner-{i}.log"))
        yield started
    finally:
        await kill(*(runner.proc for runner in started))
