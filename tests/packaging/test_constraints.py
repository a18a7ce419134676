"""Every hatch environment installs the versions the services ship (services/constraints.txt)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Final

from .test_services import ROOT, _load

wheelhouse = _load("wheelhouse")
CONSTRAINTS: Final = "{root}/services/constraints.txt"


def test_the_constraints_are_the_pins_of_the_service_locks() -> None:
    written = (ROOT / "services" / "constraints.txt").read_text()
    assert written == wheelhouse.constraints_text(), (
        "services/constraints.txt is stale: run `hatch run build:lock` (or "
        "`hatch run build:constraints`) and commit it"
    )
    pins = [line for line in written.splitlines() if line and not line.startswith("#")]
    # what decodes every body and price: an unpinned install once tested a newer one than ships
    for name in ("msgspec", "litestar", "asyncpg"):
        assert any(pin.startswith(f"{name}==") for pin in pins), name
    assert all("==" in pin for pin in pins)


def test_every_environment_that_installs_the_packages_installs_with_the_constraints() -> None:
    config = tomllib.loads(Path(ROOT / "hatch.toml").read_text())["envs"]
    installing = [name for name, env in config.items() if env.get("workspace")]
    assert set(installing) == {"default", "hatch-test", "lint", "bench"}
    for name in installing:
        env_vars = config[name].get("env-vars", {})
        assert env_vars.get("PIP_CONSTRAINT") == CONSTRAINTS, name
        assert env_vars.get("UV_CONSTRAINT") == CONSTRAINTS, name
