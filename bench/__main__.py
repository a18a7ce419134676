"""`python -m bench [--no-docs] [--quick] [NAME ...]`: run the benchmarks, print, write the docs.

With no NAME every benchmark runs and, unless `--no-docs`, docs/benchmarks.md and its plots are
rewritten from what this run printed. With names, only those run and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

# before anything imports litellm: its price map comes from its own wheel, never the network
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from bench import (
    calc,
    cli,
    client,
    export,
    fold,
    http_load,
    ingest,
    pages,
    refresh,
    report,
    reserve,
    scale,
    spend,
    startup,
)
from bench.common import ROOT, Section, load_average, machine, say

BENCHMARKS: dict[str, Callable[[bool], Section]] = {
    "calc": lambda quick: calc.run(rounds=3 if quick else 9),
    "http": lambda quick: http_load.run(rounds=1 if quick else 5, seconds=2 if quick else 4),
    "refresh": lambda quick: refresh.run(
        rounds=2 if quick else 5, orm_rounds=1, cold_rounds=1 if quick else 2
    ),
    "startup": lambda quick: startup.run(rounds=1 if quick else 3, api_rounds=1 if quick else 3),
    "scale": lambda quick: scale.run(rounds=1 if quick else 2, load_rounds=1 if quick else 3),
    "cli": lambda quick: cli.run(rounds=2 if quick else 7),
    "ingest": lambda quick: ingest.run(
        rounds=1 if quick else 5,
        batches={"ingest": 3, "known": 3, "floor": 3, "copy": 3, "orm": 1} if quick else None,
        single_rounds=1 if quick else 5,
        single_seconds=1 if quick else 4,
        size_events=5_000 if quick else 100_000,
        phase_batches=1 if quick else 5,
    ),
    "fold": lambda quick: fold.run(events=20_000 if quick else 200_000, rounds=1 if quick else 3),
    "spend": lambda quick: asyncio.run(
        spend.run(events=50_000 if quick else 10_000_000, rounds=2 if quick else 20, tail=2_000)
    ),
    "export": lambda quick: export.run(counts=(5_000, 20_000) if quick else (100_000, 1_000_000)),
    "reserve": lambda quick: reserve.run(seconds=1.0 if quick else 5.0),
    "client": lambda quick: client.run(
        rounds=3 if quick else 9,
        e2e_events=5_000 if quick else 50_000,
        e2e_rounds=1 if quick else 3,
    ),
    "pages": lambda quick: pages.run(rounds=5 if quick else 20),
}


def ensure_wrk() -> None:
    """wrk comes from Debian's packages; install it when this machine lacks it (root only)."""
    if shutil.which("wrk") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    say("[setup] installing wrk (apt-get install -y wrk) ...")

    def apt_get(*args: str) -> int:
        quiet = subprocess.DEVNULL
        return subprocess.run(
            ["apt-get", *args], check=False, stdout=quiet, stderr=quiet
        ).returncode

    if apt_get("install", "-y", "wrk"):
        apt_get("update")
        apt_get("install", "-y", "wrk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--no-docs", action="store_true", help="print only; write no files")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    parser.add_argument(
        "--splice",
        action="store_true",
        help="with NAMEs: put their sections into docs/benchmarks.md in place of the earlier "
        "ones, leaving the others as they are",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.splice and (not args.names or args.no_docs or args.quick):
        parser.error("--splice takes one or more NAMEs, and neither --no-docs nor --quick")
    names = args.names or list(BENCHMARKS)
    write_docs = not args.no_docs and not args.names and not args.quick

    started = time.perf_counter()
    ensure_wrk()
    description = machine()
    say("# Machine\n")
    say("\n".join(f"- {k}: {v}" for k, v in description.items()) + "\n")
    sections = []
    for name in names:
        began = time.perf_counter()
        section = BENCHMARKS[name](args.quick)
        sections.append(section)
        say(section.markdown())
        say(f"[{name}] done in {time.perf_counter() - began:.0f} s\n")
    say("# Summary\n")
    say("\n".join(f"- {line}" for s in sections for line in s.headline))
    if args.splice:
        written = report.splice(
            sections,
            description,
            command="hatch run bench:splice " + " ".join(names),
            duration_s=time.perf_counter() - started,
            load_after=load_average(),
        )
        say("\nwrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    if write_docs:
        written = report.write(
            sections,
            description,
            command="hatch run bench:all",
            duration_s=time.perf_counter() - started,
            load_after=load_average(),
        )
        say("\nwrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    say(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
