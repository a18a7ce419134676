"""Each service ships as a complete wheelhouse that installs with no index and runs.

`deploy/wheelhouse.py build SERVICE` (what `hatch run build:api|taskrunner` runs) makes the
wheelhouses once per module into a temporary folder; each is installed into a fresh venv with
`pip install --no-index --find-links` and no pip configuration, so nothing but the wheelhouse can
supply a package. The entry points then run against the real PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Final, get_args

import httpx
import pytest
from redis.asyncio import Redis

from aiserver.api.settings import ApiSettings
from aiserver.core_db.settings import LogFormat, LogLevel, Section
from aiserver.taskrunner.health import health_check_key
from aiserver.taskrunner.settings import TaskRunnerSettings

from ..conftest import TEST_REDIS_URL
from ..support.ports import free_port

pytestmark = pytest.mark.slow

ROOT: Final = Path(__file__).resolve().parents[2]
SERVICES: Final = ("api", "taskrunner")
#: What each service ships, and what it must never ship.
SHIPS: Final = {
    "api": {
        "aiserver-api",
        "aiserver-core-db",
        "aiserver-costs",
        "aiserver-documents",
        "aiserver-ledger",
    },
    "taskrunner": {
        "aiserver-taskrunner",
        "aiserver-core-db",
        "aiserver-costs",
        "aiserver-documents",
        "aiserver-ledger",
    },
}
FORBIDDEN: Final = {"api": "aiserver/taskrunner/", "taskrunner": "aiserver/api/"}
START_TIMEOUT_S: Final = 60.0


def _load(name: str) -> ModuleType:
    """A script under deploy/ as a module (deploy/ is no package)."""
    qualified = f"deploy_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, ROOT / "deploy" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


wheelhouse = _load("wheelhouse")


def offline_pip_env() -> dict[str, str]:
    """No pip configuration at all: no index, no extra find-links from the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def build(service: str, out: Path, *options: str) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "wheelhouse.py"),
            "build",
            service,
            "--out",
            str(out),
            *options,
        ],
        check=True,
        timeout=900,
    )


def sha256s(folder: Path, names: set[str]) -> dict[str, str]:
    return {
        w.name: hashlib.sha256(w.read_bytes()).hexdigest()
        for w in folder.glob("*.whl")
        if w.name in names
    }


@pytest.fixture(scope="module")
def wheelhouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheelhouses")
    for service in SERVICES:
        build(service, out / service)
    return {service: out / service for service in SERVICES}


@pytest.fixture(scope="module")
def venvs(
    wheelhouses: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """service -> a fresh venv with only `pip install --no-index` from its wheelhouse."""
    made = {}
    for service, folder in wheelhouses.items():
        venv = tmp_path_factory.mktemp(f"venv-{service}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                str(folder),
                f"aiserver-{service}-service",
            ],
            check=True,
            env=offline_pip_env(),
            timeout=600,
        )
        made[service] = venv
    return made


def own_wheel_names(folder: Path) -> set[str]:
    return {w.name for w in folder.glob("aiserver_*.whl")}


# -- what a service is ----------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_lists_exactly_the_packages_it_ships(service: str) -> None:
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"aiserver-{service}-service"
    listed = {
        d.split("==")[0] for d in project["project"]["dependencies"] if d.startswith("aiserver-")
    }
    assert listed == SHIPS[service]
    assert all(
        d.endswith("==" + project["project"]["version"])
        for d in project["project"]["dependencies"]
        if d.startswith("aiserver-")
    )


@pytest.mark.parametrize("service", SERVICES)
def test_the_lock_pins_the_current_requirements(service: str) -> None:
    lock = ROOT / "services" / service / "requirements.lock"
    assert wheelhouse.locked_direct_requirements(lock) == wheelhouse.third_party_requirements(
        service
    ), f"{lock} is stale: run `hatch run build:lock {service}` and commit it"
    pins = wheelhouse.read_lock(lock)
    assert pins
    assert all(p.hashes for p in pins), "every pin carries its hashes"
    assert all("==" in p.requirement for p in pins)


def _variables(cls: type[Section]) -> set[str]:
    """Every environment variable a settings class reads, through its sections."""
    found = set()
    for name in cls.__struct_fields__:
        default = getattr(cls(), name)
        found |= _variables(type(default)) if isinstance(default, Section) else {name.upper()}
    return found


def _env_example(service: str) -> set[str]:
    text = (ROOT / "services" / service / ".env.example").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {line.split("=", 1)[0] for line in lines}


def _deployment_md_variables(service: str) -> set[str]:
    """The variables in the first column of deploy/deployment.md's table for `service`."""
    text = (ROOT / "deploy" / "deployment.md").read_text()
    section = text.split(f"(`services/{service}/.env.example`)\n", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_the_env_examples_name_every_setting_and_only_settings() -> None:
    settings = {"api": _variables(ApiSettings), "taskrunner": _variables(TaskRunnerSettings)}
    named = {service: _env_example(service) for service in SERVICES}
    for service in SERVICES:
        assert named[service] <= settings[service], (
            f"{service}: not its settings: {named[service] - settings[service]}"
        )
        assert {"DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "LOG_FORMAT"} <= named[service]
    missing = (settings["api"] | settings["taskrunner"]) - named["api"] - named["taskrunner"]
    assert not missing, f"add {sorted(missing)} to services/*/.env.example (the env contract)"
    assert "API_ADMIN_TOKENS" in named["api"]
    assert {"MODEL_COST_REFRESH_INTERVAL_SECONDS", "DOCUMENT_MAX_CONCURRENT"} <= named["taskrunner"]
    assert "DOCUMENT_MAX_BYTES" in named["api"]


@pytest.mark.parametrize("service", SERVICES)
def test_the_env_examples_list_every_log_level_and_format(service: str) -> None:
    text = (ROOT / "services" / service / ".env.example").read_text()
    comment = text.split("\nLOG_LEVEL=", 1)[0].rsplit("\n", 1)[1]
    levels, formats = comment.removeprefix("# ").split(".")[0].split("; ")
    assert re.findall(r"[A-Z]+", levels) == list(get_args(LogLevel))
    named = dict.fromkeys(re.findall(r"\b(json|console|auto)\b", formats))
    assert list(named) == list(get_args(LogFormat))


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_md_lists_the_variables_of_each_env_example(service: str) -> None:
    documented, named = _deployment_md_variables(service), _env_example(service)
    assert documented == named, (
        f"deploy/deployment.md's {service} table: add {sorted(named - documented)}, "
        f"drop {sorted(documented - named)}"
    )


# -- the wheelhouses ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_a_wheelhouse_holds_no_code_of_the_other_service(
    service: str, wheelhouses: dict[str, Path], venvs: dict[str, Path]
) -> None:
    folder = wheelhouses[service]
    found = []
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            found += [
                f"{wheel.name}: {n}" for n in archive.namelist() if n.startswith(FORBIDDEN[service])
            ]
    assert found == []
    assert {w.name.split("-")[0] for w in folder.glob("aiserver_*.whl")} == {
        name.replace("-", "_") for name in SHIPS[service] | {f"aiserver-{service}-service"}
    }
    (site,) = venvs[service].glob("lib/python3*/site-packages")
    assert sorted(p.name for p in (site / "aiserver").iterdir() if p.name != "__pycache__") == (
        sorted(name.removeprefix("aiserver-").replace("-", "_") for name in SHIPS[service])
    )
    assert not (site / "aiserver" / "__init__.py").exists(), "aiserver stays a PEP 420 namespace"


def test_the_service_wheels_build_to_the_same_bytes_twice(tmp_path: Path) -> None:
    for service in SERVICES:
        build(service, tmp_path / "first" / service, "--own-only")
        time.sleep(2.1)  # past the 2-second resolution of zip timestamps: no wall time may leak in
        build(service, tmp_path / "second" / service, "--own-only")
        names = own_wheel_names(tmp_path / "first" / service)
        assert names == own_wheel_names(tmp_path / "second" / service)
        assert len(names) == 6  # the service wheel and the five packages it ships
        first = sha256s(tmp_path / "first" / service, names)
        assert first == sha256s(tmp_path / "second" / service, names)


async def test_the_api_from_its_wheelhouse_answers_health(
    venvs: dict[str, Path], migrated_database_url: str
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=migrated_database_url,
        REDIS_URL=TEST_REDIS_URL,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    api = await asyncio.create_subprocess_exec(
        str(venvs["api"] / "bin" / "aiserver-api"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=venvs["api"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert api.returncode is None, "aiserver-api exited before it answered"
                try:
                    response = await client.get("/health", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "no answer on /health"
                    await asyncio.sleep(0.2)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
    finally:
        if api.returncode is None:
            api.kill()
        output, _ = await api.communicate()
    assert b"Traceback" not in output, output.decode(errors="replace")


async def test_the_taskrunner_check_from_its_wheelhouse_says_no_worker_is_alive(
    venvs: dict[str, Path],
) -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    try:  # no health key of this host: no worker of this host alive on this Redis
        await redis.delete(health_check_key())
    finally:
        await redis.aclose()
    check = await asyncio.create_subprocess_exec(
        str(venvs["taskrunner"] / "bin" / "aiserver-taskrunner"),
        "check",
        env=dict(os.environ, REDIS_URL=TEST_REDIS_URL),
        cwd=venvs["taskrunner"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(check.communicate(), timeout=30)
    assert check.returncode == 1, output.decode(errors="replace")
    assert b"Traceback" not in output


@pytest.mark.parametrize(
    ("service", "commands"),
    [
        ("api", ["aiserver-api", "aiserver-db", "aiserver-costs"]),
        ("taskrunner", ["aiserver-taskrunner", "aiserver-db", "aiserver-costs"]),
    ],
)
def test_the_entry_points_of_a_service_are_installed(
    service: str, commands: list[str], venvs: dict[str, Path]
) -> None:
    for command in commands:
        done = subprocess.run(
            [str(venvs[service] / "bin" / command), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    other = "aiserver-taskrunner" if service == "api" else "aiserver-api"
    assert not (venvs[service] / "bin" / other).exists()


# -- the local base image's mirror comes from the machine's apt sources ---------------------------


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_the_base_image_mirror_is_read_from_deb822_sources(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
    )
    assert _load("local_base_image").debian_mirror(apt_dir) == "http://mirror.invalid/debian"


def test_the_base_image_mirror_is_read_from_a_one_line_sources_list(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text(
        "# deb http://old.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
    )
    assert _load("local_base_image").debian_mirror(apt_dir) == "http://mirror.invalid/debian"
