"""From Python 3.12 on, no thread may start once the interpreter's exit has begun, also in an
exit hook that runs *before* the client's (one registered after `aiserver.client` was
imported): an event reported there, by a client whose recorder had no thread yet, is delivered
late in the caller's thread (`Recorder._deliver_late`), not dropped.

The interpreter is $AISERVER_TEST_PYTHON312, else pyenv's 3.12.1, else `python3.12` on PATH; a
machine without one fails this test, saying so: it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Final

import pytest

from .conftest import Ledger, Tenant, stored_keys
from .test_python39 import child_env, run

PYENV_312: Final = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
VARIABLE: Final = "AISERVER_TEST_PYTHON312"

APP = textwrap.dedent(
    """
    import atexit, sys
    from aiserver.client import Client

    url, key, run = sys.argv[1:]
    client = Client(url, key)  # no event queued yet: its recorder has no thread

    def report():  # registered after the client's import: runs before the client's exit hook
        key = client.record_later(id=run, model="gpt-4o", usage={"input_tokens": 10})
        print("reported:", key, flush=True)

    atexit.register(report)
    """
)


def python312() -> str:
    chosen = os.environ.get(VARIABLE)
    candidates = [chosen] if chosen else [str(PYENV_312), shutil.which("python3.12")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        f"no Python 3.12 interpreter (looked at {', '.join(str(c) for c in candidates)}): "
        f"install one (e.g. `pyenv install 3.12.1`) or set {VARIABLE}",
        pytrace=False,
    )


async def test_an_event_reported_in_an_exit_hook_before_the_clients_is_delivered_on_312(
    ledger: Ledger, tenant: Tenant, client_wheel: Path, tmp_path: Path
) -> None:
    # Before, Python 3.12 refused the recorder's thread ("can't create new thread at
    # interpreter shutdown"): the event was dropped with a warning, and record_later gave None.
    run([python312(), "-m", "venv", "venv"], timeout=120, cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         "--quiet", str(client_wheel)], timeout=240, cwd=tmp_path)  # fmt: skip
    (tmp_path / "app.py").write_text(APP)
    key = f"py312-{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [str(python), "app.py", ledger.api.base_url, tenant.key, key],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"reported: {key}", done.stderr
    assert "dropped" not in done.stderr, done.stderr
    assert await stored_keys(ledger.url, tenant.id) == {key: 1}
