"""What the reliability tests run and break: real `aiserver-api` processes, a TCP proxy that can be
cut, an upstream that streams a body of any size lazily, and readers for the JSON logs.

Everything here binds to 127.0.0.1 only, and every process or server it starts is stopped by the
context manager that started it, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from redis.asyncio import Redis

from ..conftest import (
    TEST_REDIS_URL,
    create_database,
    drop_database,
    make_settings,
    replace_settings,
)
from ..support.catalog import document, model_entry
from ..support.ports import free_port
from ..support.processes import START_TIMEOUT_S, STOP_TIMEOUT_S, kill, log_events
from ..support.upstream import LocalServer, QuietHandler, Upstream

ADMIN_TOKEN: Final = "rel-admin-9f3c2b7e61d04a58c3e1f09b"
OTHER_TOKEN: Final = "rel-other-5e0a7c4d93b1f2867a4d2c15"
PROBLEM_JSON: Final = "application/problem+json"
JSON_TYPE: Final = "application/json"
MICRO: Final = Decimal("0.000001")


def api_env(database_url: str, *, upstream_url: str, **variables: str) -> dict[str, str]:
    """The environment of an `aiserver-api` child: this test's database and Redis, JSON logs."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        MODEL_COST_SOURCE_URL=upstream_url,
        API_ADMIN_TOKENS=f"{ADMIN_TOKEN},{OTHER_TOKEN}",
        CATALOG_POLL_INTERVAL_SECONDS="0.5",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(variables)
    return env


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """A clear problem: `status`, application/problem+json of `type_`, a title and a detail,
    no traceback; its body."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:aiserver:problem:{type_}", body
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


@dataclass(frozen=True)
class Case:
    """One hostile request and the problem it must be answered with."""

    method: str
    path: str
    body: bytes | None = None
    status: int = 422
    type_: str = "invalid-request"
    detail: str = ""  # the detail says this (the field it names)
    content_type: str = JSON_TYPE
    admin: bool = False  # the operator's token


@dataclass(frozen=True)
class Tenant:
    """A project (its slug and id) and a key of it."""

    slug: str
    id: int
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def errors_logged(path: Path) -> list[Any]:
    """Log lines at error level or above, and any line that is not a JSON log line (a raw
    traceback, another library's format): with LOG_FORMAT=json every line must be JSON."""
    found: list[Any] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line) if line.strip() else {}
        except ValueError:
            found.append(line)
            continue
        if not isinstance(event, dict):
            found.append(line)
        elif event.get("level") in ("error", "critical", "exception"):
            found.append(event)
    return found


@dataclass
class ApiProcess:
    """One `aiserver-api` child on 127.0.0.1:`port`; stdout and stderr go to `log`."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=options.pop("timeout", 30.0),
                                 **options)  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_until_serving(self, *, ready: bool = True) -> None:
        """Until /health answers (and /ready says ready, unless `ready` is False)."""
        path = "/ready" if ready else "/health"
        async with self.client(timeout=5.0) as client, asyncio.timeout(START_TIMEOUT_S):
            while True:
                assert self.proc.returncode is None, (
                    f"aiserver-api exited with {self.proc.returncode}:\n{self.output()}"
                )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(path)).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    async def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as a container stop sends it; the exit status within `timeout`."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


def _api_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("aiserver-api")  # the console script, as deployed
    program = [str(script)] if script.exists() else [sys.executable, "-m", "aiserver.api.cli"]
    return [*program, "--host", "127.0.0.1", "--port", str(port)]


async def start_api(env: Mapping[str, str], log: Path, port: int) -> ApiProcess:
    """Start `aiserver-api` on `port` (not waiting for it): the caller stops it."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *_api_command(port), env=dict(env), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    return ApiProcess(proc, port, log)


@contextlib.asynccontextmanager
async def api_process(
    env: Mapping[str, str], log: Path, *, ready: bool = True
) -> AsyncIterator[ApiProcess]:
    """Start `aiserver-api`, wait until it serves; stop it (SIGTERM, then SIGKILL) at the end."""
    api = await start_api(env, log, free_port())
    proc = api.proc
    try:
        await api.wait_until_serving(ready=ready)
        yield api
    finally:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await api.terminate(timeout=STOP_TIMEOUT_S)
        await kill(proc)


# -- catalogs whose prices tell their version -------------------------------------------------


def model_names(count: int) -> list[str]:
    return [f"gpt-test-{i:03d}" for i in range(count)]


def versioned_document(version: int, count: int = 40) -> bytes:
    """A catalog of `count` models where every input price is version x 1e-6 and every output
    price twice that: any price in an answer says which version priced it."""
    entries = {
        name: model_entry(
            i, input_cost_per_token=f"{version}e-06", output_cost_per_token=f"{2 * version}e-06"
        )
        for i, name in enumerate(model_names(count))
    }
    return document(entries)


def priced_version(result: Mapping[str, Any]) -> tuple[int, int]:
    """(catalog_version, the version its input and output unit prices say) of a cost result."""
    prices = {c["name"]: Decimal(c["unit_price"]) for c in result["components"]}
    by_input = prices["input"] / MICRO
    assert prices["output"] / MICRO == 2 * by_input, result
    return int(result["catalog_version"]), int(by_input)


# -- database snapshots ------------------------------------------------------------------------


async def table_counts(url: str) -> dict[str, int]:
    """Rows in every table of the public schema (what hostile input must not add to)."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        return {
            # names from pg_tables, quoted: nothing from outside reaches this query
            t["tablename"]: await conn.fetchval(f'SELECT count(*) FROM "{t["tablename"]}"')  # noqa: S608
            for t in tables
        }
    finally:
        await conn.close()


async def advisory_locks(url: str) -> int:
    """Advisory locks held in this database (other databases on the server may have theirs)."""
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            """
            SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """
        )
    finally:
        await conn.close()
    return count


async def metadata(url: str) -> asyncpg.Record:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT * FROM ai_cost_metadata WHERE source = 'litellm'")
    finally:
        await conn.close()
    assert row is not None
    return row


async def eventually(probe: Any, *, timeout: float, interval: float = 0.1) -> Any:
    """Await `probe()` until it returns something truthy; that value, or fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not (value := await probe()):
            await asyncio.sleep(interval)
    return value


# -- a child imported ahead, run on cue --------------------------------------------------------


@dataclass
class Cued:
    proc: asyncio.subprocess.Process

    async def go(self, timeout: float = 60.0) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(b"\n"), timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()


#: What `aiserver-costs refresh` imports when it runs (the CLI imports each command's work lazily).
REFRESH: Final = ("aiserver.costs.refresh",)


@contextlib.asynccontextmanager
async def cued(
    module: str,
    args: Sequence[str],
    envs: Sequence[Mapping[str, str]],
    *,
    preload: Sequence[str] = (),
) -> AsyncIterator[list[Cued]]:
    """One `python -m module args` child per environment, each imported and waiting on stdin.

    Importing aiserver takes seconds on a busy machine; this keeps that out of a moment that must
    be shared by several processes. A command that imports its work lazily names the modules it
    will run in `preload`, so that they are imported before the cue too. What runs is the
    console script's own `main`; the child reports its peak memory (VmHWM, kB) on its last
    stderr line.
    """
    # VmHWM is this image's own high-water mark. getrusage's ru_maxrss is not: Linux carries it
    # over exec, so it reports the size of the forked test process (hundreds of MB late in a run).
    program = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in preload)
        + f"from {module} import main\n"
        "print('imported', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        f"    code = main({list(args)!r})\n"
        "finally:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    peak = int(status.split()[0])\n"
        "    print(f'peak_rss_kb={peak}', file=sys.stderr, flush=True)\n"
        "sys.exit(code)\n"
    )
    pipe = asyncio.subprocess.PIPE
    children: list[Cued] = []
    try:
        for env in envs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", program, env=dict(env), stdin=pipe, stdout=pipe, stderr=pipe
            )
            children.append(Cued(proc))
        for child in children:
            assert child.proc.stdout is not None
            line = await asyncio.wait_for(child.proc.stdout.readline(), START_TIMEOUT_S)
            assert line == b"imported\n", line
        yield children
    finally:
        await kill(*(child.proc for child in children))


def peak_rss_kb(stderr: str) -> int:
    line = [x for x in stderr.splitlines() if x.startswith("peak_rss_kb=")][-1]
    return int(line.partition("=")[2])


# -- a TCP proxy the test can cut ---------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One proxied connection: its two ends, and whether the target's answers are held."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    holding: bool
    watched: int = 0  # how many of the proxy's `hold_after` markers the client has sent
    tail: bytes = b""  # the end of what the client sent, for a marker split between reads

    def abort(self) -> None:
        for writer in (self.client, self.target):
            writer.transport.abort()


@dataclass
class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `cut()` resets every open connection and closes
    the port (new connections are refused); `restore()` opens it again on the same port.

    With `hold_answers`, what the target sends back is read and kept from the client (`held`
    counts its bytes): the request arrives whole, its answer never does. `hold_after_sending`
    does the same on a connection only once its client has sent given bytes, in order."""

    target_host: str
    target_port: int
    port: int = 0
    accepted: int = 0
    hold_answers: bool = False
    hold_after: tuple[bytes, ...] = ()
    held: int = 0
    _server: asyncio.Server | None = None
    _links: set[_Link] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def is_open(self) -> bool:
        return self._server is not None

    def hold_after_sending(self, *markers: bytes) -> None:
        """From now on, a connection whose client sends each of `markers` in order (say a
        COPY, then a COMMIT) gets no more answers from the target: what the client sent
        arrives, the answer to it is held. No markers: nothing more is held."""
        self.hold_after = markers
        for link in self._links:
            link.watched, link.tail = 0, b""

    def silence(self) -> int:
        """The connections open now go silent, as behind a hung peer or a stale NAT entry: what
        their clients send arrives, no answer comes back, and no error either. Connections
        opened later are forwarded as before. Returns how many went silent."""
        for link in self._links:
            link.holding = True
        return len(self._links)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            target_r, target_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(client_w, target_w, holding=self.hold_answers)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._forward(client_r, link)),
            asyncio.create_task(self._back(target_r, link)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            link.abort()
            self._links.discard(link)

    async def _forward(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                self._watch(link, data)  # before the target can answer it
                link.target.write(data)
                await link.target.drain()

    def _watch(self, link: _Link, data: bytes) -> None:
        markers = self.hold_after
        if link.holding or not markers:
            return
        text = link.tail + data
        while link.watched < len(markers) and (at := text.find(markers[link.watched])) >= 0:
            text = text[at + len(markers[link.watched]) :]
            link.watched += 1
        link.holding = link.watched == len(markers)
        link.tail = text[-64:]

    async def _back(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if link.holding:
                    self.held += len(data)
                else:
                    link.client.write(data)
                    await link.client.drain()

    async def cut(self) -> None:
        """The network to the target fails: open connections are reset, new ones refused."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()


@contextlib.asynccontextmanager
async def tcp_proxy(
    target_host: str, target_port: int, *, hold_answers: bool = False
) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port, hold_answers=hold_answers)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


# -- a Redis the test can stop -----------------------------------------------------------------


@dataclass
class ThrowawayRedis:
    """A `redis-server` (on PATH) of the test's own on 127.0.0.1:`port`, without persistence:
    `stop()` stops it (its data is gone with it), `start()` starts it again, empty, on the same
    port. The shared Redis is never stopped; this one is."""

    port: int
    workdir: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(30):
            while not await self._pong():
                await asyncio.sleep(0.05)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await reader.readline()).startswith(b"+PONG")
        finally:
            writer.close()

    async def stop(self) -> None:
        """SIGTERM (a Redis without persistence saves nothing), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            await kill(self.proc)


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- an upstream that streams a huge body lazily -----------------------------------------------

HugeMode = Literal["chunked", "declared"]
GIB: Final = 1024**3


@dataclass
class HugeUpstream(LocalServer):
    """An HTTP server on 127.0.0.1 that answers every GET with a `size`-byte JSON-looking body,
    generated as it is sent (never held in memory). "chunked" sends no length; "declared" sends
    `Content-Length: size`. `sent` counts the body bytes that left the server."""

    mode: HugeMode = "chunked"
    size: int = GIB
    sent: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _chunks(self) -> Iterator[bytes]:
        piece = b'{"gpt-huge": {"litellm_provider": "openai", "input_cost_per_token": 1e-06}, '
        block = piece * (65536 // len(piece))
        left = self.size
        while left > 0:
            chunk = block[:left]
            left -= len(chunk)
            yield chunk

    def handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with upstream._lock:
                    upstream.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if upstream.mode == "declared":
                    self.send_header("Content-Length", str(upstream.size))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in upstream._chunks():
                        if upstream.mode == "declared":
                            self.wfile.write(chunk)
                        else:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        with upstream._lock:
                            upstream.sent += len(chunk)
                    if upstream.mode == "chunked":
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up: what a refusal looks like from here
                    self.close_connection = True

        return Handler


@contextlib.contextmanager
def huge_upstream(mode: HugeMode, size: int = GIB) -> Iterator[HugeUpstream]:
    server = HugeUpstream(mode=mode, size=size)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    """Outcomes of requests sent in a loop: (start time, status or exception name, body)."""

    outcomes: list[tuple[float, int | str, Any]] = field(default_factory=list)

    def statuses(self) -> list[int | str]:
        return [status for _, status, _ in self.outcomes]


async def calculate_loop(
    client: httpx.AsyncClient,
    load: Load,
    stop: asyncio.Event,
    *,
    model: str = "gpt-test-001",
    pause: float = 0.02,
    limit: int = 5000,
) -> None:
    """POST /v1/costs/calculate until `stop` is set (at most `limit` requests)."""
    loop = asyncio.get_running_loop()
    body = {"model": model, "usage": {"input_tokens": 1000, "output_tokens": 10}}
    for _ in range(limit):
        if stop.is_set():
            return
        started = loop.time()
        try:
            response = await client.post("/v1/costs/calculate", json=body)
        except httpx.TransportError as exc:
            load.outcomes.append((started, type(exc).__name__, None))
        else:
            load.outcomes.append((started, response.status_code, response.json()))
        await asyncio.sleep(pause)


# -- task runners --------------------------------------------------------------------------------


def taskrunner_env(database_url: str, *, upstream_url: str, **variables: str) -> dict[str, str]:
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        MODEL_COST_SOURCE_URL=upstream_url,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(variables)
    return env


async def drop_served(url: str) -> None:
    """Drop a served database, and flush the jobs its requests queued (no task runner takes
    them): the tests' Redis database is theirs to flush (README, "Tests")."""
    await drop_database(url)
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def catalogued_database(template_url: str) -> str:
    """A new database cloned from the migrated template, with the catalog of
    `versioned_document(1)` refreshed into it from a local upstream (stopped again): what an
    API process needs to price. The caller drops it."""
    from aiserver.costs.refresh import Outcome, refresh_catalog

    url = await create_database(template=template_url)
    try:
        upstream = Upstream()
        upstream.start()
        try:
            settings = replace_settings(make_settings(url), model_cost_source_url=upstream.url)
            upstream.serve(versioned_document(1))
            report = await refresh_catalog(settings.core, settings.costs, trigger="test")
            assert report.outcome is Outcome.APPLIED
        finally:
            upstream.stop()
    except BaseException:
        await drop_database(url)
        raise
    return url
