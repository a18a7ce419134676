"""What every benchmark shares: throwaway databases, a local upstream, timers, tables, the machine.

Rules the helpers enforce (issue 10): medians over repeated runs after a warm-up, ratios taken
from runs interleaved in the same process, and every number that reaches the docs formatted once
here, printed, and written as printed.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from aiserver.api.settings import ApiSettings
from aiserver.core_db.logging import configure_logging
from aiserver.core_db.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DB_PREFIX = "aiserver_bench"


# -- output ----------------------------------------------------------------------------------


@dataclass
class Table:
    headers: Sequence[str]
    rows: list[Sequence[str]]
    caption: str = ""
    align: str = ""  # one letter per column: l or r (default: first l, the rest r)

    def markdown(self) -> str:
        align = self.align or "l" + "r" * (len(self.headers) - 1)
        rule = ["---:" if a == "r" else "---" for a in align]
        lines = []
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join(rule) + "|")
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's findings: prose, tables and notes, rendered once for stdout and docs."""

    key: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)  # one-liners for the summary on top
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for the plots

    def markdown(self) -> str:
        parts = [f"## {self.title}"]
        if self.intro:
            parts.append(self.intro.strip())
        parts += [t.markdown() for t in self.tables]
        if self.notes:  # a note that starts with two spaces is nested under the one before
            parts.append(
                "\n".join(
                    f"  - {n.strip()}" if n.startswith("  ") else f"- {n}" for n in self.notes
                )
            )
        return "\n\n".join(parts) + "\n"


def say(text: str) -> None:
    print(text, flush=True)


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.2f} µs" if us < 10 else f"{us:.1f} µs" if us < 1000 else f"{us:,.0f} µs"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{ms:,.0f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_x(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:,.0f}x"


def fmt_mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- timing ----------------------------------------------------------------------------------


def _calibrate(fn: Callable[[], object], batch_seconds: float) -> int:
    """How many calls make one batch of about `batch_seconds` (at least one call)."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed >= batch_seconds / 4 or calls >= 1 << 20:
            return max(1, round(calls * batch_seconds / max(elapsed, 1e-9)))
        calls *= 4


def interleaved_per_call(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    batch_seconds: float = 0.02,
    warmup_rounds: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each function: one batch of each per round, rounds interleaved.

    Interleaving (and rotating the order each round) lets every contestant see the same noise
    of this shared 2-core machine; the caller takes medians, and ratios per round.
    """
    names = list(fns)
    calls = {name: _calibrate(fns[name], batch_seconds) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup_rounds + rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            fn, n = fns[name], calls[name]
            started = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - started
            if index >= warmup_rounds:
                samples[name].append(elapsed / n)
    return samples


async def timed_async(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await fn()
    return time.perf_counter() - started, result


# -- programs measured as processes -----------------------------------------------------------

#: The source trees of aiserver's packages, compiled before a process of them is timed.
PACKAGE_SOURCES = sorted(str(p) for p in (ROOT / "packages").glob("*/src"))


def program_env(**extra: str) -> dict[str, str]:
    """The environment of a program whose whole process is timed (a command, a fresh
    interpreter, the API): this one's, without PYTHONDONTWRITEBYTECODE, and `extra`. With it set
    (as some shells and CI images do) every run compiled aiserver's modules from source again,
    about 20 ms a run, while the libraries it is compared with ran from the bytecode their
    install wrote: an installed wheel has its bytecode too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def compile_sources() -> None:
    """Write the bytecode of aiserver's packages (`__pycache__`, ignored by git) before any
    process of them is timed, so that the first round does not compile them."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *PACKAGE_SOURCES], env=program_env(), check=True
    )


# -- databases -------------------------------------------------------------------------------


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def throwaway_database(tag: str, *, prefix: str = DB_PREFIX) -> AsyncIterator[str]:
    """A new, empty database on the server of ADMIN_URL, dropped on the way out."""
    name = f"{prefix}_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(name)
    finally:
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def bench_settings(url: str, **env: str) -> ApiSettings:
    configure_logging("WARNING", "console")  # the refresh logs at INFO: keep stdout for numbers
    return load_settings(
        ApiSettings,
        {
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_URL,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "console",
            "MODEL_COST_MAX_BYTES": str(512 * 1024 * 1024),
            **env,
        },
    )


async def age_catalog(pool: asyncpg.Pool, days: int = 90) -> None:
    """Make a catalog seeded a second ago one in place for `days`, as in production: its prices
    and its aliases' spans valid from then. The events of the last days then find the prices
    valid at their time, and resolve their names as the catalog did then without looking back
    (a catalog seeded now would price them with its first prices and a note on every event)."""
    for table in ("ai_model_costs", "ai_model_alias_history"):
        await pool.execute(
            f"UPDATE {table} SET valid_from = valid_from - make_interval(days => $1)",  # noqa: S608
            days,
        )


async def server_version() -> str:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# -- a local upstream ------------------------------------------------------------------------


class Upstream:
    """The price document on 127.0.0.1 over real TCP, with no validators (ETag/Last-Modified),
    so every refresh downloads the body: the benchmark measures work, never a 304."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                upstream.requests += 1
                body = upstream.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/model_prices_and_context_window.json"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def upstream(body: bytes) -> Iterator[Upstream]:
    server = Upstream(body)
    try:
        yield server
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    wrk = "not installed"
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        wrk = (out.stdout + out.stderr).split("Copyright")[0].strip() or wrk
    except OSError:
        pass
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "PostgreSQL": asyncio.run(server_version()),
        "aiserver-costs": _version_of("aiserver-costs"),
        "litellm": _version_of("litellm"),
        "genai-prices": _version_of("genai-prices"),
        "litestar / uvicorn": f"{_version_of('litestar')} / {_version_of('uvicorn')}",
        "wrk": wrk,
        "load average at start (1/5/15 min)": load_average(),
        "python": f"the hatch environment `{Path(sys.prefix).name}`",
    }
