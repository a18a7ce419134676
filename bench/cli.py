"""Benchmark 6: the command line, whole processes: `aiserver-costs --help`, and a usage log
priced by `aiserver-costs calc --batch` against genai-prices in a process of its own.

- Every number is a whole process, timed by the parent from spawn to exit: interpreter
  start-up, imports, the data, every line, the output, the exit. For aiserver the data is the
  connection to PostgreSQL and `load_catalog` (every price version of a throwaway database
  seeded with the bundled snapshot); genai-prices reads the data bundled in its wheel.
- The log: 20,000 JSON lines of the calc benchmark's usage mix (bench/calc.py, `CASES`: plain
  chat, cache reads and writes, reasoning, long-context and service tiers), in turn, every count
  scaled by a seeded random factor from 0.5 to 1.5 so that no two lines cost alike.
- genai-prices's program reads the same log with `json.loads`, prices each line with
  `calc_price` (the model and provider the calc benchmark names for it, the tier as its price
  context) and writes one JSON line with the total; `aiserver-costs` writes its whole answer
  (components, versions, notes) per line. Both write to /dev/null.
- Rounds are interleaved, the order rotated each round; the ratio is the median of the
  per-round ratios.
- Where the time goes: the same programs stopped earlier (the interpreter alone; the imports;
  one call, with the data ready), each part the difference of two medians.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot
from bench.calc import CASES
from bench.common import (
    Section,
    Table,
    bench_settings,
    compile_sources,
    fmt_ms,
    fmt_x,
    median,
    program_env,
    say,
    throwaway_database,
)

LINES: Final = 20_000
HELP_TARGET_S: Final = 0.150
RATIO_TARGET: Final = 5.0

AISERVER_COSTS: Final = str(Path(sys.executable).parent / "aiserver-costs")

#: genai-prices pricing a log in its own process: argv = log, {model: [model_ref, provider_id]}.
GENAI_PROGRAM: Final = """
import json, sys
import genai_prices
names = json.loads(sys.argv[2])
out = sys.stdout
for line in open(sys.argv[1], encoding="utf-8"):
    request = json.loads(line)
    u = request["usage"]
    usage = genai_prices.Usage(
        input_tokens=u["input_tokens"], output_tokens=u["output_tokens"],
        cache_read_tokens=u.get("cache_read_tokens"),
        cache_write_tokens=u.get("cache_write_tokens"),
        cache_write_1h_tokens=u.get("cache_write_1h_tokens"),
        output_reasoning_tokens=u.get("reasoning_tokens"),
    )
    tier = request["service_tier"]
    context = (None if tier == "standard" else {"processing": "batch"} if tier == "batch"
               else {"service_tier": tier})
    model, provider = names[request["model"]]
    price = genai_prices.calc_price(usage, model, provider_id=provider, price_context=context)
    out.write(json.dumps({"model": model, "total": str(price.total_price)}) + "\\n")
"""

#: What `aiserver-costs calc` imports before it connects (cli.py `_calc`).
AISERVER_IMPORTS: Final = (
    "import asyncio, asyncpg, aiserver.costs.cli, aiserver.costs.calculator, "
    "aiserver.costs.catalog, aiserver.costs.errors, aiserver.costs.pricing"
)


def write_log(path: Path, lines: int) -> None:
    rng = random.Random(lines)
    with path.open("w", encoding="utf-8") as log:
        for index in range(lines):
            case = CASES[index % len(CASES)]
            scale = rng.uniform(0.5, 1.5)
            usage = {name: int(count * scale) for name, count in case.usage.items()}
            request = {"model": case.model, "usage": usage, "service_tier": case.tier}
            log.write(json.dumps(request) + "\n")


def _programs(log: Path, one: Path) -> dict[str, list[str]]:
    names = json.dumps({c.model: [c.genai_model, c.genai_provider] for c in CASES})
    python = sys.executable
    return {
        "python": [python, "-c", "pass"],
        "aiserver --help": [AISERVER_COSTS, "--help"],
        "aiserver imports": [python, "-c", AISERVER_IMPORTS],
        "aiserver one call": [AISERVER_COSTS, "calc", "--batch", str(one)],
        "aiserver log": [AISERVER_COSTS, "calc", "--batch", str(log)],
        "genai imports": [python, "-c", "import json, genai_prices"],
        "genai one call": [python, "-c", GENAI_PROGRAM, str(one), names],
        "genai log": [python, "-c", GENAI_PROGRAM, str(log), names],
    }


def _run(argv: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - started


def _check(programs: dict[str, list[str]], env: dict[str, str]) -> None:
    """Both price every line of the log (and the run warms the OS file cache)."""
    for name in ("aiserver log", "genai log"):
        out = subprocess.run(programs[name], env=env, capture_output=True, check=True).stdout
        results = [json.loads(line) for line in out.splitlines()]
        failed = [r for r in results if "total" not in r]
        if len(results) != LINES or failed:
            raise RuntimeError(f"{name}: {len(results)} results, failed: {failed[:3]}")


def measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}

    async def seeded() -> None:
        async with throwaway_database("cli") as url:
            settings = bench_settings(url)
            await apply_migrations(settings.core)
            await seed_from_snapshot(settings.core)
            env = program_env(DATABASE_URL=url, LOG_LEVEL="WARNING")
            compile_sources()
            with tempfile.TemporaryDirectory() as tmp:
                log, one = Path(tmp, "usage.jsonl"), Path(tmp, "one.jsonl")
                write_log(log, LINES)
                write_log(one, 1)
                programs = _programs(log, one)
                say(f"[cli] checking both price all {LINES:,} lines ...")
                _check(programs, env)
                say(f"[cli] whole processes, {rounds} interleaved rounds ...")
                names = list(programs)
                for index in range(rounds):
                    for name in names[index % len(names) :] + names[: index % len(names)]:
                        times.setdefault(name, []).append(_run(programs[name], env))

    asyncio.run(seeded())
    return times


def run(*, rounds: int = 7) -> Section:
    return _section(measure(rounds), rounds)


def _section(times: dict[str, list[float]], rounds: int) -> Section:
    m = {name: median(values) for name, values in times.items()}
    ratios = [g / a for g, a in zip(times["genai log"], times["aiserver log"], strict=True)]
    ratio = median(ratios)
    help_s = m["aiserver --help"]

    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    table = Table(
        ["program (whole process)", "median", "runs", "target"],
        [
            [
                "`aiserver-costs --help`",
                fmt_ms(help_s),
                ", ".join(fmt_ms(t) for t in times["aiserver --help"]),
                f"< {fmt_ms(HELP_TARGET_S)}: {met(help_s < HELP_TARGET_S)}",
            ],
            [
                f"`aiserver-costs calc --batch` ({LINES:,} lines)",
                fmt_ms(m["aiserver log"]),
                ", ".join(fmt_ms(t) for t in times["aiserver log"]),
                "",
            ],
            [
                f"genai-prices, the same {LINES:,} lines",
                fmt_ms(m["genai log"]),
                ", ".join(fmt_ms(t) for t in times["genai log"]),
                "",
            ],
            [
                "genai-prices / aiserver (median of the per-round ratios)",
                fmt_x(ratio),
                ", ".join(fmt_x(r) for r in ratios),
                f">= {RATIO_TARGET:.0f}x: {met(ratio >= RATIO_TARGET)}",
            ],
        ],
        caption=f"Whole processes, {rounds} interleaved rounds:",
        align="lrll",
    )
    parts = [
        ("interpreter start and exit (`python -c pass`)", "python", None),
        ("imports", "{} imports", "python"),
        ("data ready and one line priced", "{} one call", "{} imports"),
        (f"the other {LINES - 1:,} lines", "{} log", "{} one call"),
        ("whole process", "{} log", None),
    ]
    rows = []
    for label, end, start in parts:
        row = [label]
        for who in ("aiserver", "genai"):
            top = m[end.format(who)]
            row.append(fmt_ms(top - (m[start.format(who)] if start else 0.0)))
        rows.append(row)
    per_line = {
        who: (m[f"{who} log"] - m[f"{who} one call"]) / (LINES - 1) for who in ("aiserver", "genai")
    }
    rows.append(["per line, after the first"] + [f"{per_line[w] * 1e6:.1f} µs" for w in per_line])
    breakdown = Table(
        ["part of the process", "aiserver-costs calc --batch", "genai-prices"],
        rows,
        caption="Where the time goes: medians of the same programs stopped earlier, each part "
        "the difference of two of them. aiserver's imports are those of `calc` "
        f"(`{AISERVER_IMPORTS.removeprefix('import ')}`); its data is a connection to "
        "PostgreSQL and `load_catalog`. A part is a difference of medians, so it can be off by "
        "the noise of either:",
    )
    return Section(
        key="cli",
        title="6. The command line",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[table, breakdown],
        headline=[
            f"CLI: `aiserver-costs --help` {fmt_ms(help_s)} (target < 150 ms: "
            f"{met(help_s < HELP_TARGET_S)}); `calc --batch` of {LINES:,} lines "
            f"{fmt_ms(m['aiserver log'])} against genai-prices {fmt_ms(m['genai log'])}, "
            f"{fmt_x(ratio)} (target >= {RATIO_TARGET:.0f}x: {met(ratio >= RATIO_TARGET)}).",
        ],
        data={"median_s": m, "ratio": ratio},
    )
