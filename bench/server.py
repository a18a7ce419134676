"""Start `aiserver-api` as a subprocess on a free port and wait for `/ready`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bench.common import REDIS_URL, free_port, program_env


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    ready_after_s: float
    log: IO[bytes]

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss(self) -> int:
        return _status_kib(self.process.pid, "VmRSS") * 1024

    def peak_rss(self) -> int:
        return _status_kib(self.process.pid, "VmHWM") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _command() -> list[str]:
    script = shutil.which("aiserver-api", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "aiserver.api.cli"]


@contextmanager
def api_server(
    database_url: str,
    *,
    timeout: float = 60.0,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[ApiProcess]:
    """`aiserver-api --host 127.0.0.1 --port N` with LOG_LEVEL=WARNING, ready, then stopped.

    `command` replaces `aiserver-api` (it must take `--host` and `--port`); `env` adds to the
    environment."""
    port = free_port()
    env = {
        **program_env(),
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "CATALOG_POLL_INTERVAL_SECONDS": "60",
        **(env or {}),
    }
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*(command or _command()), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            ready_after = _wait_ready(process, base_url, started, timeout, log)
            yield ApiProcess(process, base_url, ready_after, log)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    process: subprocess.Popen[bytes],
    base_url: str,
    started: float,
    timeout: float,
    log: IO[bytes],
) -> float:
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"aiserver-api exited with {process.returncode}: {output}")
            try:
                if client.get(base_url + "/ready").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise TimeoutError(f"aiserver-api was not ready within {timeout} s")
