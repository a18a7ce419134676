"""The client runs on Python 3.9, as its metadata claims: its wheel is installed (with the httpx
and msgspec that pip resolves for 3.9 from its own requirements) into a fresh 3.9 virtual
environment, every module is byte-compiled by 3.9, and a 3.9 process calculates, records,
queues and reads back against the real API process.

The interpreter is $AISERVER_TEST_PYTHON39, else pyenv's 3.9.18, else `python3.9` on PATH. A
machine without one fails this test, saying so: it never skips (the claim would go untested).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest

from .conftest import Ledger, Tenant, api_events

PYENV_39: Final = Path("/root/.pyenv/versions/3.9.18/bin/python3.9")
VARIABLE: Final = "AISERVER_TEST_PYTHON39"
#: What the child inherits of this process's environment: no constraints of the 3.11 services'
#: lock, no PYTHONPATH of the test environment, so that it sees only its own venv.
NOT_INHERITED: Final = ("PIP_CONSTRAINT", "UV_CONSTRAINT", "PYTHONPATH", "PYTHONHOME",
                        "VIRTUAL_ENV", "PYTHONSTARTUP")  # fmt: skip
USAGE: Final = {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200}
COST: Final = Decimal("0.00725")  # gpt-4o: as tests/client/test_client.py works it out


def python39() -> str:
    """The 3.9 interpreter: ${VARIABLE} when set (and then only it), else pyenv's 3.9.18,
    else python3.9 on PATH; a failure that says so when there is none."""
    chosen = os.environ.get(VARIABLE)
    candidates = [chosen] if chosen else [str(PYENV_39), shutil.which("python3.9")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            version = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if version.stdout.strip() == "3.9":
                return candidate
    pytest.fail(
        f"no Python 3.9 interpreter (looked at {', '.join(str(c) for c in candidates)}). The "
        "client claims Python 3.9+ (packages/client/pyproject.toml) and this test proves it: "
        f"install 3.9 (e.g. `pyenv install 3.9.18`) or set {VARIABLE} to a 3.9 interpreter.",
        pytrace=False,
    )


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(extra)
    return env


def run(
    args: list[str], *, timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or child_env(), check=False)  # fmt: skip
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_no_python_3_9_fails_saying_so_never_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "/nonexistent/python3.9")
    with pytest.raises(pytest.fail.Exception, match=r"no Python 3\.9 interpreter .*pyenv install"):
        python39()
    monkeypatch.setenv(VARIABLE, sys.executable)  # a real interpreter, but not 3.9
    with pytest.raises(pytest.fail.Exception, match=re.escape(sys.executable)):
        python39()


@pytest.fixture(scope="session")
def venv39(client_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh Python 3.9 venv with the client's wheel installed (and what it requires), made
    once per session; its python."""
    home = tmp_path_factory.mktemp("py39")
    run([python39(), "-m", "venv", str(home / "venv")], timeout=120, cwd=home)
    python = home / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         "--quiet", str(client_wheel)], timeout=240, cwd=home)  # fmt: skip
    return python


CHILD = textwrap.dedent(
    """
    import asyncio
    import compileall
    import importlib.util
    import json
    import sys
    from pathlib import Path

    import aiserver.client
    from aiserver.client import AsyncClient, Client, RecorderSettings

    url, run = sys.argv[1:]
    usage = {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200}
    package = Path(aiserver.client.__file__).parent
    out = {
        "version": list(sys.version_info[:3]),
        "in_venv": package.is_relative_to(sys.prefix) if hasattr(package, "is_relative_to")
                   else str(package).startswith(sys.prefix),
        # every module, the LiteLLM callback's too (litellm is not installed: not imported)
        "compiled": compileall.compile_dir(str(package), quiet=1, force=True),
        "server_code": [name for name in ("aiserver.api", "aiserver.ledger", "aiserver.costs",
                        "aiserver.core_db") if importlib.util.find_spec(name) is not None],
    }
    quick = RecorderSettings(batch_size=100, flush_interval=0.05)
    with Client(recorder=quick) as client:  # AISERVER_API_KEY from the environment
        out["calculate"] = str(client.calculate("gpt-4o", usage).total)
        result = client.record({"id": run + "-record", "model": "gpt-4o", "usage": usage,
                                "tags": {"python": "3.9"}})
        out["record"] = [result.status, str(result.total)]
        out["record_later"] = client.record_later(id=run + "-later", model="gpt-4o", usage=usage)
        out["flushed"] = client.flush(60)
        stats = client.stats()
        out["stats"] = [stats.queued, stats.recorded, stats.dropped, stats.rejected]

    async def main():
        async with AsyncClient(url) as client:
            cost = await client.calculate("gpt-4o", usage)
            result = await client.record({"id": run + "-async", "model": "gpt-4o",
                                          "usage": usage})
            return [str(cost.total), result.status]

    out["async"] = asyncio.run(main())
    print(json.dumps(out))
    """
)


async def test_the_client_installs_and_works_on_python_3_9(
    venv39: Path, ledger: Ledger, tenant: Tenant, tmp_path: Path
) -> None:
    script = tmp_path / "app39.py"
    script.write_text(CHILD)
    run_id = uuid.uuid4().hex[:10]
    env = child_env(AISERVER_URL=ledger.api.base_url, AISERVER_API_KEY=tenant.key)
    done = run([str(venv39), "-I", str(script), ledger.api.base_url, run_id],
               timeout=120, cwd=tmp_path, env=env)  # fmt: skip
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"][:2] == [3, 9]
    assert out["in_venv"], "the 3.9 process imported the client from outside its venv"
    assert out["compiled"], done.stdout + done.stderr
    assert out["server_code"] == []
    assert Decimal(out["calculate"]) == COST
    assert out["record"] == ["recorded", str(COST)]
    assert out["record_later"] == f"{run_id}-later"
    assert out["flushed"] is True
    assert out["stats"] == [1, 1, 0, 0]
    assert [Decimal(out["async"][0]), out["async"][1]] == [COST, "recorded"]
    events = await api_events(ledger.api, tenant)
    keys = {f"{run_id}-record", f"{run_id}-later", f"{run_id}-async"}
    assert set(events) == keys
    for key in keys:
        assert (events[key]["model"], events[key]["usage"]) == ("gpt-4o", USAGE)
        assert Decimal(events[key]["total"]) == COST, events[key]
    assert events[f"{run_id}-record"]["tags"] == {"python": "3.9"}
