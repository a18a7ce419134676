"""Child processes: each in a session of its own, its output in the combined log, stopped as a tree.

A child in its own session does not get the terminal's Ctrl-C; the runner alone decides the order
of the stop: the API and the task runner first, then the servers they use. A child stops by its
own signal (SIGTERM, or SIGINT for PostgreSQL's fast shutdown), sent to its whole process group;
what is left after the grace period is killed. On Linux every child also gets its stop signal
when the runner dies without cleaning up (SIGKILL), so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dev.console import Console

_PR_SET_PDEATHSIG: Final = 1
#: Looked up before any fork: the child only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
#: How long a child's output may trail after it exited (a grandchild may hold the pipe).
_OUTPUT_DRAIN_S: Final = 3.0


@dataclass(frozen=True)
class RunAs:
    """The user a child runs as (PostgreSQL refuses to run as root)."""

    uid: int
    gid: int

    @staticmethod
    def spawn_options(run_as: RunAs | None) -> dict[str, object]:
        """What `asyncio.create_subprocess_exec` takes to run a child as `run_as` (nothing for
        None: the child runs as this process's user)."""
        if run_as is None:
            return {}
        return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _stop_with_parent(stop_signal: int, parent: int) -> Callable[[], None]:
    """Runs in the child before exec (after the switch of user, which would reset it)."""

    def arrange() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, stop_signal, 0, 0, 0)
            if os.getppid() != parent:  # the runner died before prctl took effect
                os.kill(os.getpid(), stop_signal)

    return arrange


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    stop_signal: signal.Signals
    grace_s: float
    tier: int
    output: asyncio.Task[None]
    exited: asyncio.Task[int] = field(init=False)

    def __post_init__(self) -> None:
        self.exited = asyncio.ensure_future(self.process.wait())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def wait(self) -> int:
        """The exit status, once it exits. Shielded: a caller that is cancelled while waiting
        must not cancel `exited`, which `stop` and the watchers rely on."""
        return await asyncio.shield(self.exited)

    async def stop(self, force: asyncio.Event) -> int:
        """Stop the child and its process group: its stop signal, then SIGKILL after the grace
        period or as soon as `force` is set. Returns its exit status."""
        if self.running:
            self.signal(signal.SIGKILL if force.is_set() else self.stop_signal)
            forced = asyncio.ensure_future(force.wait())
            try:
                await asyncio.wait(
                    {self.exited, forced}, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                forced.cancel()
            if self.running:
                self.signal(signal.SIGKILL)
        status = await self.wait()
        self.signal(signal.SIGKILL)  # whatever of its group outlived it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.output, _OUTPUT_DRAIN_S)
        return status

    def signal(self, sig: signal.Signals) -> None:
        # The child leads its own process group (start_new_session), so its pid is the group's.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


async def _copy_lines(name: str, stream: asyncio.StreamReader, console: Console) -> None:
    pending = b""
    while chunk := await stream.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            console.line(name, line.decode(errors="replace").rstrip("\r"))
    if pending:
        console.line(name, pending.decode(errors="replace").rstrip("\r"))


class Supervisor:
    """The children of the runner; `stop_all` stops them tier by tier, highest tier first."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.children: list[Child] = []
        self.force = asyncio.Event()

    async def start(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        env: Mapping[str, str],
        cwd: Path,
        tier: int,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace_s: float = 10.0,
        run_as: RunAs | None = None,
    ) -> Child:
        user = RunAs.spawn_options(run_as)
        process = await asyncio.create_subprocess_exec(
            *[str(arg) for arg in argv],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_stop_with_parent(stop_signal, os.getpid()),
            **user,  # type: ignore[arg-type]
        )
        assert process.stdout is not None
        output = asyncio.ensure_future(_copy_lines(name, process.stdout, self.console))
        child = Child(name, process, stop_signal, grace_s, tier, output)
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        for tier in sorted({child.tier for child in self.children}, reverse=True):
            group = [child for child in self.children if child.tier == tier and child.running]
            statuses = await asyncio.gather(*(child.stop(self.force) for child in group))
            for child, status in zip(group, statuses, strict=True):
                # uvicorn re-raises the signal it stopped on: that too is a clean stop.
                clean = status in (0, -child.stop_signal)
                self.console.say(
                    f"{child.name} stopped" + ("" if clean else f" ({describe_status(status)})")
                )

    def running(self) -> list[Child]:
        return [child for child in self.children if child.running]


def describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"
