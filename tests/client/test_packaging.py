"""The client's wheel is what docs/client.md promises: httpx and msgspec and nothing else (the
litellm extra aside), Python 3.9 and newer, and no server code: an application installs it
without any of aiserver's server packages."""

from __future__ import annotations

import email.parser
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

from packaging.requirements import Requirement

from .conftest import CLIENT_PACKAGE

#: The server's packages: none of them may be in the client's wheel, nor among its requirements.
SERVER_PACKAGES = ("api", "ledger", "costs", "core_db", "documents", "taskrunner")


def metadata(wheel: Path) -> tuple[Message, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        (name,) = [n for n in files if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(archive.read(name).decode())
    return meta, files


def normalized(requirement: str) -> tuple[str, str, str]:
    parsed = Requirement(requirement)
    specifier = ",".join(sorted(str(s) for s in parsed.specifier))
    return parsed.name.lower(), specifier, str(parsed.marker or "")


def test_the_wheel_requires_httpx_and_msgspec_only_and_litellm_as_an_extra(
    client_wheel: Path,
) -> None:
    meta, _ = metadata(client_wheel)
    requires = sorted(normalized(r) for r in meta.get_all("Requires-Dist") or [])
    assert requires == [
        ("httpx", "<1,>=0.27", ""),
        ("litellm", ">=1.60", 'extra == "litellm"'),
        ("msgspec", ">=0.18", ""),
    ]
    # the same as packages/client/pyproject.toml says, so the two cannot drift apart
    project = tomllib.loads((CLIENT_PACKAGE / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].items()
    declared = [*project["dependencies"]]
    declared += [f'{r}; extra == "{extra}"' for extra, rs in extras for r in rs]
    assert requires == sorted(normalized(r) for r in declared)
    assert meta.get_all("Provides-Extra") == ["litellm"]
    assert (meta["Name"], meta["Requires-Python"]) == ("aiserver-client", ">=3.9")
    assert client_wheel.name.endswith("-py3-none-any.whl")  # pure Python: any 3.9+ installs it


def test_the_wheel_holds_the_client_and_no_server_package(client_wheel: Path) -> None:
    _, files = metadata(client_wheel)
    code = [f for f in files if ".dist-info/" not in f]
    assert {f.split("/")[0] for f in files} == {"aiserver", client_dist_info(files)}
    assert {f.split("/")[1] for f in code} == {"client"}, code
    for package in SERVER_PACKAGES:
        assert not [f for f in files if f.startswith(f"aiserver/{package}/")], package
    assert "aiserver/__init__.py" not in files  # a PEP 420 namespace, shared with the server's
    expected = {
        f"aiserver/client/{p.name}"
        for p in (CLIENT_PACKAGE / "src" / "aiserver" / "client").iterdir()
        if p.suffix in (".py", ".typed")
    }
    assert set(code) == expected


def client_dist_info(files: list[str]) -> str:
    (folder,) = {f.split("/")[0] for f in files if f.split("/")[0].endswith(".dist-info")}
    assert folder.startswith("aiserver_client-")
    return folder
