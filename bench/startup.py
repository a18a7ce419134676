"""Benchmark 4: start-up and footprint.

- Import and first price: a fresh interpreter per run imports what it needs to price a call
  (the import time: the wall time of those import statements, interpreter start-up excluded),
  gets its price data ready and prices one call (`openai/gpt-4o`, 1,200 in, 350 out). For
  aiserver the data is the catalog read from PostgreSQL with `load_catalog` (a seeded throwaway
  database); the peers read the data bundled in their wheels. The process's peak RSS then is
  its footprint.
- The API: `aiserver-api` started as a subprocess against a seeded database; the time from
  process start to the first `GET /ready` answered 200, and the process's RSS then.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import msgspec

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot
from bench.common import (
    Section,
    Table,
    bench_settings,
    compile_sources,
    fmt_mib,
    fmt_ms,
    fmt_x,
    median,
    program_env,
    say,
    throwaway_database,
)
from bench.server import api_server

# VmHWM, not getrusage: Linux carries ru_maxrss over from the parent across fork and exec.
_REPORT = (
    "import json, time\n"
    "total = time.perf_counter() - started\n"
    "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
    "print(json.dumps({'import_s': imported - started, 'total_s': total,"
    " 'maxrss': int(status) * 1024}))\n"
)

IMPORTS = {  # what each program below imports before it can price
    "aiserver": "aiserver.costs.calculator, .catalog, .pricing; asyncpg",
    "genai-prices": "genai_prices",
    "litellm": "litellm",
}

FIRST_PRICE = {
    "aiserver": (
        "import asyncio, os, asyncpg\n"
        "from aiserver.costs.calculator import CostRequest, calculate\n"
        "from aiserver.costs.catalog import load_catalog\n"
        "from aiserver.costs.pricing import Usage\n"
        "imported = time.perf_counter()\n"
        "async def catalog():\n"
        "    conn = await asyncpg.connect(os.environ['BENCH_CATALOG_URL'])\n"
        "    try:\n"
        "        return await load_catalog(conn)\n"
        "    finally:\n"
        "        await conn.close()\n"
        "usage = Usage(input_tokens=1200, output_tokens=350)\n"
        "total = calculate(asyncio.run(catalog()), CostRequest(model='openai/gpt-4o',"
        " usage=usage)).total\n"
    ),
    "genai-prices": (
        "import genai_prices\n"
        "imported = time.perf_counter()\n"
        "total = genai_prices.calc_price(genai_prices.Usage(input_tokens=1200, output_tokens=350),"
        " 'gpt-4o', provider_id='openai').total_price\n"
    ),
    "litellm": (
        "import litellm\n"
        "imported = time.perf_counter()\n"
        "total = sum(litellm.cost_per_token(model='openai/gpt-4o', prompt_tokens=1200,"
        " completion_tokens=350))\n"
    ),
}


def _python(code: str, env: dict[str, str]) -> dict[str, Any]:
    program = "import time\nstarted = time.perf_counter()\n" + code + _REPORT
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"subprocess failed:\n{program}\n{out.stderr[-3000:]}")
    result: dict[str, Any] = msgspec.json.decode(out.stdout.strip().splitlines()[-1])
    return result


def _import_breakdown(modules: str, top: int = 8) -> list[tuple[str, float]]:
    """Seconds of import per top-level package (the sum of its modules' own times), from one
    `python -X importtime` run: where an import's time goes."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {modules}"],
        capture_output=True,
        text=True,
        check=True,
    )
    totals: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(parts[0]) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


async def _seeded(url: str) -> None:
    settings = bench_settings(url)
    await apply_migrations(settings.core)
    await seed_from_snapshot(settings.core)


def run(*, rounds: int = 3, api_rounds: int = 3, warmup: bool = False) -> Section:
    imports: dict[str, list[float]] = {name: [] for name in IMPORTS}
    first: dict[str, list[dict[str, Any]]] = {name: [] for name in FIRST_PRICE}
    api: list[tuple[float, int]] = []

    async def measure() -> None:
        async with throwaway_database("startup") as url:
            await _seeded(url)
            env = program_env(BENCH_CATALOG_URL=url, LITELLM_LOCAL_MODEL_COST_MAP="True")
            compile_sources()
            names = list(IMPORTS)
            say(f"[startup] imports and first price in fresh interpreters, {rounds} rounds ...")
            if warmup:  # the OS file cache (benchmark 1 has already imported every library)
                for name in names:
                    _python(FIRST_PRICE[name], env)
            for index in range(rounds):
                for name in names[index % 3 :] + names[: index % 3]:
                    result = _python(FIRST_PRICE[name], env)
                    imports[name].append(result["import_s"])
                    first[name].append(result)
            say(f"[startup] aiserver-api start to /ready, {api_rounds} runs ...")
            for _ in range(api_rounds):
                with api_server(url) as server:
                    api.append((server.ready_after_s, server.rss()))

    asyncio.run(measure())
    breakdown = _import_breakdown("aiserver.costs.calculator, aiserver.costs.catalog")
    return _section(imports, first, api, rounds, breakdown)


def _section(
    imports: dict[str, list[float]],
    first: dict[str, list[dict[str, Any]]],
    api: list[tuple[float, int]],
    rounds: int,
    breakdown: list[tuple[str, float]],
) -> Section:
    ours_import = median(imports["aiserver"])
    ours_first = median([r["total_s"] for r in first["aiserver"]])
    table = Table(
        [
            "library",
            "import",
            "vs aiserver",
            "import + data + first price",
            "vs aiserver",
            "peak RSS then",
        ],
        [],
        caption=f"Fresh interpreters, median of {rounds} runs each:",
    )
    for name, modules in IMPORTS.items():
        imp = median(imports[name])
        total = median([r["total_s"] for r in first[name]])
        rss = median([r["maxrss"] for r in first[name]])
        table.rows.append(
            [
                f"{name} (`import {modules}`)",
                fmt_ms(imp),
                "1.00x" if name == "aiserver" else fmt_x(imp / ours_import),
                fmt_ms(total),
                "1.00x" if name == "aiserver" else fmt_x(total / ours_first),
                fmt_mib(rss),
            ]
        )
    ready = median([a[0] for a in api])
    rss = median([float(a[1]) for a in api])
    api_table = Table(
        ["aiserver-api", "median", "runs"],
        [
            [
                "process start to first `/ready` 200",
                fmt_ms(ready),
                ", ".join(fmt_ms(a[0]) for a in api),
            ],
            [
                "RSS at `/ready` (catalog loaded)",
                fmt_mib(rss),
                ", ".join(fmt_mib(a[1]) for a in api),
            ],
        ],
        caption="The API service (one uvicorn worker, catalog loaded from PostgreSQL):",
        align="lrl",
    )
    where = Table(
        ["package", "own import time"],
        [[f"`{package}`", fmt_ms(seconds)] for package, seconds in breakdown],
        caption="Where aiserver's import goes: `python -X importtime -c 'import "
        "aiserver.costs.calculator, aiserver.costs.catalog'`, one run, the packages with the "
        "most import time of their own (the sum over their modules):",
    )
    return Section(
        key="startup",
        title="4. Start-up and footprint",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[table, where, api_table],
        notes=[
            "aiserver's first price includes connecting to PostgreSQL and reading the whole "
            "catalog (every price version) with `load_catalog`.",
        ],
        headline=[
            f"Start-up: import {fmt_ms(ours_import)} (genai-prices "
            f"{fmt_ms(median(imports['genai-prices']))}, litellm "
            f"{fmt_ms(median(imports['litellm']))}); API start to /ready {fmt_ms(ready)}, "
            f"RSS {fmt_mib(rss)}.",
        ],
        data={
            "import_s": {n: median(v) for n, v in imports.items()},
            "ready_s": ready,
            "rss": rss,
        },
    )
