#!/usr/bin/env python3
"""Make an installed service venv smaller without changing what it runs.

Runs in the Dockerfiles' builder stage (the wheelhouse script copies it to dist/<service>/tools/),
on the venv the final stage copies:

- strips the debug symbols from the compiled extension modules: PyPI's manylinux wheels ship them
  unstripped, and they are half of the venv (uvloop's loop module: 13.6 MB, 1.6 MB stripped);
- removes packages that a third-party wheel installs by mistake next to its own: piccolo's wheel
  carries its test suite and profiling scripts as the top-level packages `tests` and `profiling`;
- removes Faker's locale data but the modules that a default Faker() loads (en_US and the
  locales its providers fall back to): Faker is in the API set only because litestar needs
  polyfactory, which fakes OpenAPI examples (off in our app) in Faker's default en_US. The other
  ~70 locales are a quarter of the API venv;
- removes `rich` and what only it needs (`pygments`, `markdown-it-py`, `mdurl`) with
  `rich-click`: litestar requires them for its command line (`litestar run`), which the
  services never use; structlog imports rich when it is there, for the console renderer's
  tracebacks, and falls back to plain ones without it (aiserver.core_db.logging chooses
  accordingly). About 14 MB of the API venv, and 0.1 s of every start;
- then loads every stripped module again (dlopen), makes a Faker in the venv, and imports the
  service and logs an exception through its console logging, so a library that this broke
  stops the image build instead of the service.

Libraries that auditwheel vendored into `<dist>.libs/` folders are left alone: patchelf has
rewritten them, and strip is known to corrupt such files.

Usage: slim_venv.py VENV  (needs binutils' strip, and uv, on PATH)
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: Top-level names that only hold a distribution's own tests or tooling, never runtime code.
STRAY_TOP_LEVEL = ("tests", "profiling")
#: Distributions a dependency requires for a part of it the services never run (see above).
UNUSED_DISTRIBUTIONS = ("rich", "rich-click", "pygments", "markdown-it-py", "mdurl")
#: Imports the installed service and logs an exception the way its console logging renders it.
SERVICE_PROBE = """
import importlib.util, logging
for name in ("aiserver.api.app", "aiserver.taskrunner.worker"):
    if importlib.util.find_spec(name.rsplit(".", 1)[0]) is not None:
        __import__(name)
from aiserver.core_db.logging import configure_logging
configure_logging("INFO", "console")
try:
    raise RuntimeError("probe")
except RuntimeError:
    logging.getLogger("slim_venv").exception("an exception, rendered")
"""
LOCALE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
#: Prints the locale folders (provider/locale) that a default Faker() imports.
FAKER_PROBE = """
import sys, faker
faker.Faker().address()
for name in sorted(sys.modules):
    parts = name.split(".")
    if len(parts) == 4 and parts[:2] == ["faker", "providers"]:
        print(parts[2] + "/" + parts[3])
"""


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def extension_modules(site: Path) -> list[Path]:
    return sorted(
        p
        for p in site.rglob("*.so")
        if p.is_file() and not any(part.endswith(".libs") for part in p.relative_to(site).parts)
    )


def stray_packages(site: Path) -> list[Path]:
    """Top-level STRAY_TOP_LEVEL folders that a distribution's top_level.txt declares."""
    declared: set[str] = set()
    for top_level in site.glob("*.dist-info/top_level.txt"):
        declared.update(top_level.read_text().split())
    return [site / name for name in STRAY_TOP_LEVEL if name in declared and (site / name).is_dir()]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def installed(site: Path, name: str) -> bool:
    """Whether distribution `name` is installed in `site` (`name-version.dist-info`)."""
    return any(
        _normalized(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]) == _normalized(name)
        for info in site.glob("*.dist-info")
    )


def uninstall(venv: Path, names: list[str]) -> None:
    """Uninstall `names` with uv, which installed them (uv on PATH, as in the builder stage)."""
    if names:
        python = str(venv / "bin" / "python")
        subprocess.run(["uv", "pip", "uninstall", "--python", python, *names], check=True)


def faker_in_use(venv: Path) -> set[str]:
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", FAKER_PROBE],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(probe.stdout.split())


def unused_faker_locales(venv: Path, site: Path) -> list[Path]:
    """Faker's per-locale folders (faker/providers/<provider>/<locale>/) that Faker() leaves."""
    if not (site / "faker").is_dir():
        return []
    kept = faker_in_use(venv)
    return sorted(
        p
        for p in site.glob("faker/providers/*/*")
        if p.is_dir() and LOCALE.fullmatch(p.name) and f"{p.parent.name}/{p.name}" not in kept
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    venv = Path(argv[0])
    site = site_packages(venv)
    before = size(venv)
    for stray in stray_packages(site) + unused_faker_locales(venv, site):
        shutil.rmtree(stray)
    removed = [name for name in UNUSED_DISTRIBUTIONS if installed(site, name)]
    uninstall(venv, removed)
    modules = extension_modules(site)
    if modules:
        subprocess.run(["strip", "--strip-unneeded", *map(str, modules)], check=True)
    for module in modules:
        ctypes.CDLL(str(module))  # raises OSError if stripping broke the file
    if (site / "faker").is_dir():
        faker_in_use(venv)  # fails if Faker lost a module it needs
    if (site / "aiserver").is_dir():  # the service still imports, and logs an exception
        subprocess.run([str(venv / "bin" / "python"), "-c", SERVICE_PROBE], check=True)
    after = size(venv)
    print(
        f"{venv}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB "
        f"({len(modules)} extension modules stripped; removed: {', '.join(removed) or 'none'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
