#!/usr/bin/env python3
"""Make a Debian bookworm base image with python3 locally, for machines that reach no registry.

The Dockerfiles default to python:3.12-slim-bookworm from a registry. Where no registry is
reachable (this project's CI), the image test builds from this base instead, passed through the
Dockerfiles' BASE_IMAGE build argument:

    debootstrap (minbase, bookworm, python3 + python3-venv from Debian's packages)
      -> tar of the root file system -> podman import -> localhost/aiserver-local-base:<key>

The tag carries a hash of everything that shapes the root file system, so a run reuses the image
that an earlier run imported (podman's storage is the cache) and a change here makes a new one.
The Debian mirror is the one this machine's apt already uses: it is read from the apt sources at
run time, never written into the repository. Needs root, debootstrap and podman.

Prints the image reference on the last line of stdout.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
IMAGE_NAME = "localhost/aiserver-local-base"
#: Inside the image, what Debian's python3 needs that a debootstrap root does not set up itself.
IMAGE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["python3"]',
)
#: Left out of the image: caches and package lists.
PRUNED = ("var/cache/apt/archives", "var/lib/apt/lists")
#: As in Debian's slim images: no manuals, docs (but the copyright files) or translations, now and
#: for every package installed on top (dpkg reads this file).
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
APT_SOURCES = Path("/etc/apt")


def image_tag() -> str:
    recipe = repr((SUITE, PACKAGES, IMAGE_CHANGES, PRUNED, DPKG_EXCLUDES, "minbase")).encode()
    return f"{IMAGE_NAME}:{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"


def apt_source_entries(apt_dir: Path = APT_SOURCES) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) of every `deb` entry in the machine's apt sources."""
    entries: list[tuple[str, str, list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()  # drop [options]
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], words[2], words[3:]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append((uri, suite, fields.get("components", "").split()))
    return entries


def debian_mirror(apt_dir: Path = APT_SOURCES) -> str:
    """The mirror that serves `bookworm main` to this machine's apt."""
    for uri, suite, components in apt_source_entries(apt_dir):
        if suite == SUITE and "main" in components:
            return uri
    raise SystemExit(
        f"no apt source for '{SUITE} main' in {apt_dir}: pass --mirror with a Debian mirror URL"
    )


def excluded(path: str) -> bool:
    """Whether DPKG_EXCLUDES leaves out `path` (absolute, in the image); the last match wins."""
    verdict = False
    for line in DPKG_EXCLUDES.splitlines():
        rule, _, pattern = line.partition(" ")
        if fnmatch.fnmatch(path, pattern):
            verdict = rule == "path-exclude"
    return verdict


def slim(root: Path) -> None:
    """Drop caches, and what DPKG_EXCLUDES would have kept out had dpkg known it from the start."""
    for relative in PRUNED:
        for child in (root / relative).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.name != "lock":
                child.unlink()
    for path in sorted((root / "usr/share").rglob("*"), reverse=True):  # files before their folder
        inside = "/" + str(path.relative_to(root))
        if (path.is_file() or path.is_symlink()) and excluded(inside):
            path.unlink()
        elif (
            path.is_dir()
            and not path.is_symlink()
            and excluded(inside + "/x")
            and not any(path.iterdir())
        ):
            path.rmdir()
    config = root / "etc/dpkg/dpkg.cfg.d/slim-excludes"
    config.write_text(
        "# As in Debian's slim images (deploy/local_base_image.py).\n" + DPKG_EXCLUDES
    )


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0


def build(tag: str, mirror: str) -> None:
    for tool in ("debootstrap", "podman", "tar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y podman debootstrap)")
    if os.geteuid() != 0:
        raise SystemExit("debootstrap needs root")
    with tempfile.TemporaryDirectory(prefix="aiserver-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        print(f"debootstrap {SUITE} from the machine's apt mirror into {root}", file=sys.stderr)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ],
            check=True,
            stdout=sys.stderr,
        )
        slim(root)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-c", "."],
            stdout=subprocess.PIPE,
        )
        changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
        imported = subprocess.run(
            ["podman", "import", *changes, "-", tag],
            stdin=tar.stdout,
            check=False,
            stdout=sys.stderr,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SystemExit("podman import of the debootstrap root failed")
    remove_other_recipes(tag)


def remove_other_recipes(tag: str) -> None:
    """Drop base images of older recipes: each is some 150 MB that nothing uses any more."""
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for other in listed:
        if other != tag:
            subprocess.run(["podman", "rmi", other], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="The image is made once per recipe and reused: see the module docstring.",
    )
    parser.add_argument("--mirror", help="Debian mirror URL (default: from the apt sources)")
    parser.add_argument("--rebuild", action="store_true", help="make it even if it exists")
    parser.add_argument(
        "--print-tag", action="store_true", help="print the tag this recipe gives and stop"
    )
    args = parser.parse_args(argv)
    tag = image_tag()
    if args.print_tag:
        print(tag)
        return 0
    if args.rebuild or not image_exists(tag):
        build(tag, args.mirror or debian_mirror())
    else:
        print(f"reusing the cached base image {tag}", file=sys.stderr)
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
