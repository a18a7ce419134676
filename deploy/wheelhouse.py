#!/usr/bin/env python3
"""Build a service's wheelhouse, or lock its third-party dependencies.

A wheelhouse (dist/<service>/) is everything one service installs, as wheels:

- the service's own wheels: the metadata-only service wheel from services/<service>/ and the
  aiserver-* packages it lists, built with hatchling and SOURCE_DATE_EPOCH, so the same sources
  give the same bytes;
- the third-party wheels pinned in services/<service>/requirements.lock, checked against the
  lock's hashes, for every target Python (3.11: the project's interpreter and Debian bookworm's;
  3.12: the default image base) on manylinux up to bookworm's glibc;
- tools/: for the Dockerfiles' builder stage, the pinned uv wheel that installs the venv and
  slim_venv.py that strips it.

so that, with no network:

    pip install --no-index --find-links dist/api aiserver-api-service

Every run checks the cross-service exclusion: a wheelhouse holds no code of a package that its
service does not list (the API set no aiserver.taskrunner, the task runner set no aiserver.api),
and no third-party wheel puts files into the aiserver namespace.

Downloaded wheels are cached (~/.cache/aiserver/wheels) and reused only when their hash is one
the lock holds.

Commands:
    build SERVICE        make dist/SERVICE/ (hatch run build:api, hatch run build:taskrunner)
    lock [SERVICE...]    re-pin services/SERVICE/requirements.lock with uv (hatch run build:lock),
                         then services/constraints.txt from the locks
    constraints          rewrite services/constraints.txt from the locks
    check SERVICE DIR    check the exclusion in an existing wheelhouse
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("api", "taskrunner")
TARGET_PYTHONS = ("3.11", "3.12")
#: Debian bookworm, the base of every image and of the machines: wheels must not need a newer glibc.
TARGET_GLIBC_MINOR = 36
LOCK_NAME = "requirements.lock"
#: The pins of every service lock as one pip/uv constraints file: the hatch environments (dev,
#: tests, lint, bench) install with it (PIP_CONSTRAINT, UV_CONSTRAINT), so a fresh clone tests
#: the versions that ship.
CONSTRAINTS = ROOT / "services" / "constraints.txt"
CONSTRAINTS_HEADER = """\
# The pins of services/*/requirements.lock, without hashes: the constraints every hatch
# environment installs with (hatch.toml), so that development and tests use the versions that
# ship. Do not edit: `hatch run build:lock` rewrites it after re-pinning the locks; then run
# `hatch env prune` so that the environments are made again with the new pins.
"""
TOOLS_LOCK = ROOT / "deploy" / "builder-tools.lock"
SLIM_VENV = ROOT / "deploy" / "slim_venv.py"
#: The earliest time a zip file can record; used when neither the env nor git gives one.
FALLBACK_EPOCH = 315532800
PREFIX = "aiserver-"


# -- the workspace --------------------------------------------------------------------------------


def _project(directory: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((directory / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def _requirements(directory: Path) -> list[Requirement]:
    dependencies = _project(directory).get("dependencies", [])
    assert isinstance(dependencies, list)
    return [Requirement(d) for d in dependencies]


def workspace_packages() -> dict[str, Path]:
    """Distribution name -> folder, for every package under packages/."""
    found = {}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        found[canonicalize_name(str(_project(pyproject.parent)["name"]))] = pyproject.parent
    return found


def service_dir(service: str) -> Path:
    directory = ROOT / "services" / service
    if not (directory / "pyproject.toml").is_file():
        raise SystemExit(f"no service {service!r}: expected {directory}/pyproject.toml")
    return directory


def shipped_packages(service: str) -> list[Path]:
    """The package folders a service ships: the aiserver-* packages its pyproject lists.

    A service lists every piece it ships (Polylith style). A sibling that one of them pulls in
    without the service listing it is an error, not a silent addition.
    """
    packages = workspace_packages()
    listed = {
        canonicalize_name(r.name)
        for r in _requirements(service_dir(service))
        if r.name.startswith(PREFIX)
    }
    unknown = listed - set(packages)
    if unknown:
        raise SystemExit(
            f"services/{service} lists {sorted(unknown)}, not packages under packages/"
        )
    for name in sorted(listed):
        for requirement in _requirements(packages[name]):
            sibling = canonicalize_name(requirement.name)
            if requirement.name.startswith(PREFIX) and sibling not in listed:
                raise SystemExit(
                    f"services/{service} ships {name}, which needs {sibling}: list it in "
                    f"services/{service}/pyproject.toml"
                )
    return [packages[name] for name in sorted(listed)]


def import_packages(package: Path) -> set[str]:
    """The aiserver.* import packages one workspace package provides (e.g. {'taskrunner'})."""
    return {
        p.name
        for p in (package / "src" / "aiserver").iterdir()
        if p.is_dir() and p.name != "__pycache__"
    }


def third_party_requirements(service: str) -> list[str]:
    """What the lock pins: the non-aiserver requirements of the service and of what it ships."""
    found: set[str] = set()
    for directory in (service_dir(service), *shipped_packages(service)):
        found.update(str(r) for r in _requirements(directory) if not r.name.startswith(PREFIX))
    return sorted(found, key=str.lower)


# -- the service's own wheels ---------------------------------------------------------------------


def source_date_epoch() -> str:
    """SOURCE_DATE_EPOCH from the environment, else the time of the last commit."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or str(FALLBACK_EPOCH)


def build_own_wheels(service: str, out: Path, epoch: str) -> list[Path]:
    """Build the service wheel and the packages it ships into `out` with hatchling (PEP 517)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    built = []
    for directory in (*shipped_packages(service), service_dir(service)):
        name = (
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from hatchling.build import build_wheel; "
                    "print(build_wheel(sys.argv[1]))",
                    str(out),
                ],
                cwd=directory,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        built.append(out / name)
    return built


# -- third-party wheels from the lock -------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    requirement: str  # "name==version"
    marker: Marker | None
    hashes: tuple[str, ...]

    def line(self) -> str:
        return " ".join([self.requirement, *(f"--hash={h}" for h in self.hashes)])


def read_lock(path: Path) -> list[Pin]:
    """The pins of a hashed requirements file as uv pip compile writes it."""
    pins = []
    for logical in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", logical).strip()  # comments, e.g. "# via piccolo"
        if not line:
            continue
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        requirement, _, marker = re.sub(r"--hash=\S+", "", line).partition(";")
        pins.append(Pin(requirement.strip(), Marker(marker) if marker.strip() else None, hashes))
    return pins


def target_environment(python: str, machine: str) -> dict[str, str]:
    """Marker values of a Linux CPython `python` (X.Y) at its first release, X.Y.0.

    The .0 release is the earliest one, so a backport that any patch release needs (e.g.
    async-timeout below 3.11.3, Debian bookworm's 3.11.2) is in the wheelhouse; pip skips it at
    install time where it is not needed.
    """
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
    }


def platform_tags(machine: str) -> list[str]:
    """manylinux tags from bookworm's glibc down, best first, as pip's --platform needs them."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(TARGET_GLIBC_MINOR, 16, -1)]
    return [*tags, f"manylinux2014_{machine}"] + (
        [f"manylinux2010_{machine}", f"manylinux1_{machine}"] if machine == "x86_64" else []
    )


@functools.cache
def pip() -> list[str]:
    """A pip to run: this interpreter's, or one from ensurepip in a throwaway venv."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    venv = Path(tempfile.mkdtemp(prefix="wheelhouse-pip-"))
    atexit.register(shutil.rmtree, venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return [str(venv / "bin" / "python"), "-m", "pip"]


def tag_ranking(python: str, machine: str) -> dict[Tag, int]:
    """Wheel tags that a CPython `python` on `machine` installs, mapped to pip's preference."""
    version = tuple(int(part) for part in python.split("."))
    platforms = platform_tags(machine)
    supported = [
        *tags.cpython_tags(version, platforms=platforms),
        *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms),
    ]
    return {tag: rank for rank, tag in reversed(list(enumerate(supported)))}


def cached_wheel(pin: Pin, cache: Path, ranking: dict[Tag, int]) -> Path | None:
    """The best wheel in `cache` for `pin` on the target, if one with a locked hash is there."""
    requirement = Requirement(pin.requirement)
    (specifier,) = requirement.specifier
    name = canonicalize_name(requirement.name)
    best: tuple[int, Path] | None = None
    for path in cache.glob(f"{name.replace('-', '_')}-*.whl"):
        dist, version, _, wheel_tags = parse_wheel_filename(path.name)
        rank = min((ranking[t] for t in wheel_tags if t in ranking), default=None)
        if dist != name or str(version) != specifier.version or rank is None:
            continue
        if best is None or rank < best[0]:
            best = (rank, path)
    if best is None or f"sha256:{sha256(best[1])}" not in pin.hashes:
        return None
    return best[1]


def download_pins(pins: list[Pin], out: Path, cache: Path, python: str, machine: str) -> None:
    """Put the wheel of each pin for the target into `out`, from `cache` or else from the index.

    The cache is safe to reuse because a wheel is taken only when its hash is one the lock holds.
    """
    environment = target_environment(python, machine)
    ranking = tag_ranking(python, machine)
    wanted = [p for p in pins if p.marker is None or p.marker.evaluate(environment)]
    missing = [p for p in wanted if cached_wheel(p, cache, ranking) is None]
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text("".join(p.line() + "\n" for p in missing))
            platforms = [arg for tag in platform_tags(machine) for arg in ("--platform", tag)]
            subprocess.run(
                [
                    *pip(),
                    "download",
                    "-qq",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--implementation",
                    "cp",
                    "--python-version",
                    python,
                    *platforms,
                    "--dest",
                    str(cache),
                    "--requirement",
                    str(requirements),
                ],
                check=True,
            )
    out.mkdir(parents=True, exist_ok=True)
    for pin in wanted:
        wheel = cached_wheel(pin, cache, ranking)
        if wheel is None:
            raise SystemExit(f"no wheel of {pin.requirement} for Python {python} on {machine}")
        shutil.copy2(wheel, out / wheel.name)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aiserver" / "wheels"


# -- the exclusion check --------------------------------------------------------------------------


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def exclusion_problems(service: str, wheelhouse: Path) -> list[str]:
    """What breaks "a service's wheelhouse holds only code of the packages it lists"."""
    shipped = {p.resolve() for p in shipped_packages(service)}
    allowed = {
        name: canonicalize_name(str(_project(p)["name"])).replace("-", "_")
        for p in shipped
        for name in import_packages(p)
    }
    problems = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        dist = wheel.name.split("-")[0].lower()
        for name in wheel_files(wheel):
            parts = name.split("/")
            if parts[0] != "aiserver" or len(parts) < 3:
                continue
            owner = allowed.get(parts[1])
            if owner != dist:
                problems.append(f"{wheel.name}: {name} is not code that {service} ships")
                break
    return problems


# -- commands -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locked_direct_requirements(lock: Path) -> list[str]:
    """The direct requirements that the lock's header says it was compiled from."""
    lines = lock.read_text().split(LOCK_HEADER_DIRECT, 1)[-1].splitlines()
    direct = []
    for line in lines:
        if not line.startswith("#   "):
            break
        direct.append(line.removeprefix("#   "))
    return direct


def require_fresh_lock(service: str) -> Path:
    lock = service_dir(service) / LOCK_NAME
    if not lock.is_file():
        raise SystemExit(f"{lock} is missing: run `hatch run build:lock {service}`")
    wanted, locked = third_party_requirements(service), locked_direct_requirements(lock)
    if wanted != locked:
        changed = sorted(set(wanted) ^ set(locked))
        raise SystemExit(
            f"{lock.relative_to(ROOT)} is stale: the requirements changed ({', '.join(changed)}). "
            f"Run `hatch run build:lock {service}` and commit the lock."
        )
    return lock


def build(args: argparse.Namespace) -> int:
    service: str = args.service
    out: Path = args.out or ROOT / "dist" / service
    lock = require_fresh_lock(service)
    if out.exists():
        shutil.rmtree(out)  # no wheel of an older build may linger and be installed instead
    epoch = source_date_epoch()
    own = build_own_wheels(service, out, epoch)
    print(f"{service}: built {len(own)} own wheels (SOURCE_DATE_EPOCH={epoch})")
    if not args.own_only:
        pins = read_lock(lock)
        for python in args.python_version:
            download_pins(pins, out, args.cache_dir, python, args.machine)
        download_pins(
            read_lock(TOOLS_LOCK),
            out / "tools",
            args.cache_dir,
            args.python_version[0],
            args.machine,
        )
        shutil.copy2(SLIM_VENV, out / "tools" / SLIM_VENV.name)
        third_party = len(list(out.glob("*.whl"))) - len(own)
        print(
            f"{service}: {third_party} third-party wheels for Python "
            f"{', '.join(args.python_version)} on {args.machine}, and tools/"
        )
    problems = exclusion_problems(service, out)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    sums = "".join(f"{sha256(w)}  {w.name}\n" for w in sorted(out.glob("*.whl")))
    (out / "SHA256SUMS").write_text(sums)
    print(f"{service}: wheelhouse {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


LOCK_HEADER_DIRECT = "The direct requirements were:\n"
LOCK_HEADER = (
    """\
# Third-party dependencies of {dist}, pinned with hashes, for Python >= 3.11 on every
# platform. Do not edit: regenerate with `hatch run build:lock {service}` after a dependency
# changes in services/{service}/pyproject.toml or in a package it ships. """
    + LOCK_HEADER_DIRECT
    + "{direct}\n"
)


def compile_lock(
    requirements: list[str], target: Path, command: str, header: str, *, upgrade: bool
) -> None:
    """Pin `requirements` into `target`, keeping the pins it has unless `upgrade`."""
    compiled = subprocess.run(
        [
            "uv",
            "pip",
            "compile",
            "-",
            "--universal",
            "--python-version",
            TARGET_PYTHONS[0],
            "--generate-hashes",
            "--quiet",
            "--custom-compile-command",
            command,
            "--output-file",
            str(target),
            *(["--upgrade"] if upgrade else []),
        ],
        input="\n".join(requirements) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if compiled.returncode != 0:
        raise SystemExit(f"uv pip compile failed for {target}:\n{compiled.stderr}")
    target.write_text(header + target.read_text())
    print(f"{target.relative_to(ROOT)}: {len(read_lock(target))} pins")


TOOLS_HEADER = """\
# The uv that the Dockerfiles' builder stages install the service venv with (never shipped in an
# image): the uv of the build environment, pinned with hashes. Regenerate: hatch run build:lock
"""


def lock(args: argparse.Namespace) -> int:
    for service in args.services:
        if service not in SERVICES:
            raise SystemExit(f"unknown service {service!r}: choose from {', '.join(SERVICES)}")
    for service in args.services:
        direct = third_party_requirements(service)
        header = LOCK_HEADER.format(
            dist=_project(service_dir(service))["name"],
            service=service,
            direct="\n".join(f"#   {r}" for r in direct),
        )
        compile_lock(
            direct,
            service_dir(service) / LOCK_NAME,
            f"hatch run build:lock {service}",
            header,
            upgrade=args.upgrade,
        )
    uv_version = subprocess.run(
        ["uv", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    compile_lock(
        [f"uv=={uv_version}"],
        TOOLS_LOCK,
        "hatch run build:lock",
        TOOLS_HEADER,
        upgrade=args.upgrade,
    )
    return write_constraints()


def constraints_text() -> str:
    """The constraints file that the service locks imply (one pin per package and marker)."""
    lines: dict[str, str] = {}
    for service in SERVICES:
        for pin in read_lock(service_dir(service) / LOCK_NAME):
            line = pin.requirement + (f" ; {pin.marker}" if pin.marker else "")
            name = canonicalize_name(pin.requirement.partition("==")[0])
            key = f"{name};{pin.marker}"
            if lines.setdefault(key, line) != line:
                raise SystemExit(
                    f"the service locks pin {name} differently ({lines[key]} and {line}): "
                    "re-pin them together with `hatch run build:lock`"
                )
    return CONSTRAINTS_HEADER + "".join(f"{lines[key]}\n" for key in sorted(lines))


def write_constraints(args: argparse.Namespace | None = None) -> int:
    text = constraints_text()
    CONSTRAINTS.write_text(text)
    pins = sum(1 for line in text.splitlines() if not line.startswith("#"))
    print(f"{CONSTRAINTS.relative_to(ROOT)}: {pins} pins")
    return 0


def check(args: argparse.Namespace) -> int:
    problems = exclusion_problems(args.service, args.wheelhouse)
    print("\n".join(problems) or f"{args.wheelhouse}: only code that {args.service} ships")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wheelhouse.py",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build_parser = commands.add_parser("build", help="make the wheelhouse dist/SERVICE/")
    build_parser.add_argument("service", choices=SERVICES)
    build_parser.add_argument("--out", type=Path, help="wheelhouse folder (default: dist/SERVICE)")
    build_parser.add_argument(
        "--python-version",
        action="append",
        metavar="X.Y",
        help=f"target Python, repeatable (default: {' '.join(TARGET_PYTHONS)})",
    )
    build_parser.add_argument(
        "--machine",
        default=platform.machine(),
        help="target CPU as uname -m says it (default: this machine's, %(default)s)",
    )
    build_parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache(),
        help="downloaded third-party wheels, reused when their hash is in the lock "
        "(default: %(default)s)",
    )
    build_parser.add_argument(
        "--own-only",
        action="store_true",
        help="build only the service's own wheels (no downloads; for reproducibility checks)",
    )
    build_parser.set_defaults(handler=build)

    lock_parser = commands.add_parser("lock", help="re-pin services/SERVICE/requirements.lock")
    lock_parser.add_argument(
        "services",
        nargs="*",
        default=list(SERVICES),
        metavar="SERVICE",
        help=f"default: all ({' '.join(SERVICES)})",
    )
    lock_parser.add_argument(
        "--upgrade", action="store_true", help="take the newest allowed versions, not the pins"
    )
    lock_parser.set_defaults(handler=lock)

    constraints_parser = commands.add_parser(
        "constraints", help="rewrite services/constraints.txt from the service locks"
    )
    constraints_parser.set_defaults(handler=write_constraints)

    check_parser = commands.add_parser("check", help="check the exclusion in a wheelhouse")
    check_parser.add_argument("service", choices=SERVICES)
    check_parser.add_argument("wheelhouse", type=Path)
    check_parser.set_defaults(handler=check)

    args = parser.parse_args(argv)
    if getattr(args, "python_version", "unset") is None:
        args.python_version = list(TARGET_PYTHONS)
    handler = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
