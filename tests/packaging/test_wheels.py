"""Each package builds a wheel whose metadata is safe to publish and install anywhere."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _version() -> str:
    versions = {tomllib.loads((p / "pyproject.toml").read_text())["project"]["version"]
                for p in PACKAGES}  # fmt: skip
    assert len(versions) == 1, f"packages disagree on the repo version: {versions}"
    return versions.pop()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    for package in PACKAGES:  # the PEP 517 hook, as any build frontend calls it
        subprocess.run(
            [sys.executable, "-c",
             f"from hatchling.build import build_wheel; build_wheel({str(out)!r})"],
            cwd=package, check=True,
        )  # fmt: skip
    return {w.name.split("-")[0]: w for w in out.glob("*.whl")}


def test_every_package_is_named_with_the_aiserver_prefix() -> None:
    names = [tomllib.loads((p / "pyproject.toml").read_text())["project"]["name"] for p in PACKAGES]
    assert names == [
        "aiserver-api", "aiserver-client", "aiserver-core-db", "aiserver-costs",
        "aiserver-documents", "aiserver-ledger",
        "aiserver-taskrunner",
    ]  # fmt: skip


def test_wheel_metadata_pins_siblings_exactly_and_has_no_paths(wheels: dict[str, Path]) -> None:
    version = _version()
    assert sorted(wheels) == [
        "aiserver_api", "aiserver_client", "aiserver_core_db", "aiserver_costs",
        "aiserver_documents", "aiserver_ledger",
        "aiserver_taskrunner",
    ]  # fmt: skip
    for wheel in wheels.values():
        with zipfile.ZipFile(wheel) as archive:
            (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            meta = email.parser.Parser().parsestr(archive.read(meta_name).decode())
            files = archive.namelist()
        requires = meta.get_all("Requires-Dist") or []
        for requirement in requires:
            assert "file:" not in requirement, requirement
            assert "@" not in requirement, requirement
            if requirement.startswith("aiserver"):
                assert requirement.startswith("aiserver-"), requirement
                assert requirement.endswith(f"=={version}"), requirement
        assert "aiserver/__init__.py" not in files, "aiserver must stay a PEP 420 namespace"
        assert any(f.endswith("/py.typed") for f in files)


def test_dependencies_point_one_way(wheels: dict[str, Path]) -> None:
    def siblings(dist: str) -> set[str]:
        with zipfile.ZipFile(wheels[dist]) as archive:
            (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            meta = email.parser.Parser().parsestr(archive.read(meta_name).decode())
        return {r.split("==")[0] for r in meta.get_all("Requires-Dist") or []
                if r.startswith("aiserver-")}  # fmt: skip

    assert siblings("aiserver_core_db") == set()
    assert siblings("aiserver_client") == set()  # HTTP only, never a server package
    assert siblings("aiserver_costs") == {"aiserver-core-db"}
    assert siblings("aiserver_documents") == {"aiserver-core-db"}
    assert siblings("aiserver_ledger") == {"aiserver-core-db", "aiserver-costs"}
    domains = {"aiserver-core-db", "aiserver-costs", "aiserver-documents", "aiserver-ledger"}
    assert siblings("aiserver_api") == domains
    assert siblings("aiserver_taskrunner") == domains


def test_the_costs_wheel_ships_its_migrations_and_snapshot(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["aiserver_costs"]) as archive:
        files = archive.namelist()
    assert any(f.startswith("aiserver/costs/piccolo_migrations/costs_") for f in files)
    assert "aiserver/costs/data/model_prices_and_context_window.json.gz" in files
    assert "aiserver/costs/data/NOTICE" in files


def test_the_documents_and_ledger_wheels_ship_their_migrations(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["aiserver_ledger"]) as archive:
        assert any(
            f.startswith("aiserver/ledger/piccolo_migrations/ledger_") for f in archive.namelist()
        )
    with zipfile.ZipFile(wheels["aiserver_documents"]) as archive:
        files = archive.namelist()
    assert any(f.startswith("aiserver/documents/piccolo_migrations/documents_") for f in files)
    with zipfile.ZipFile(wheels["aiserver_core_db"]) as archive:
        assert not [f for f in archive.namelist() if f.startswith("aiserver/core_db/documents")]


def test_the_api_wheel_ships_the_dashboards_templates_and_static_files(
    wheels: dict[str, Path],
) -> None:
    source = ROOT / "packages/api/src/aiserver/api/ui"
    root = source.parents[2]
    files_of = [p for folder in ("templates", "static") for p in (source / folder).iterdir()]
    shipped = {p.relative_to(root).as_posix() for p in files_of}
    with zipfile.ZipFile(wheels["aiserver_api"]) as archive:
        files = set(archive.namelist())
    assert "aiserver/api/ui/static/chart.umd.min.js" in shipped
    # the vendored library ships with its license
    assert "aiserver/api/ui/static/chart.js-LICENSE.md" in shipped
    assert "aiserver/api/ui/templates/overview.html" in shipped
    assert shipped <= files, shipped - files
