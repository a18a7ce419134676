"""Benchmark 2: costs over HTTP against `GET /health` on the same server process.

One `aiserver-api` process (one uvicorn worker, `LOG_LEVEL=WARNING`) serves a throwaway database
seeded with the bundled snapshot. `wrk` (one thread, a fixed number of keep-alive connections)
drives it from the other core, the three endpoints taking turns round by round:

- `GET /health`: the framework and its middleware (access log, Prometheus), nothing else;
- `POST /v1/costs/calculate`: one cost request per HTTP request, cycling through the mix of
  benchmark 1 (provider-prefixed names, cache, reasoning, long-context and service tiers);
- `POST /v1/costs/calculate/batch`: 100 cost requests from the same mix per HTTP request;
- `POST /v1/costs/calculate/batch` with no requests (`{"requests": []}`): the framework's way
  through a POST (body, decoding, response) and nothing else, a baseline beside `/health` that
  shows what the calculation itself adds.

The request bodies are decoded by Litestar's public path (JSON to Python objects, then converted
into the request's struct), not by a decoder of our own: correctness and maintainability come
before the ratio, which is reported, not targeted.

wrk makes every request, `GET /health` included, in a Lua `request()` function, so the client
does the same work per request for all three. (Given no such function, wrk replays one fixed
request from a fast path of its own; `/health` then answered about 45% more requests per second
here, with no change on the server, and the ratio measured wrk as much as the server.) Beside
requests per second, each run reads the server process's CPU time (`/proc/PID/stat`), so the
table also gives what one request costs the server, whoever is the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import msgspec

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot
from bench.calc import CASES
from bench.common import (
    Section,
    Table,
    bench_settings,
    fmt_mib,
    fmt_ms,
    fmt_us,
    fmt_x,
    median,
    say,
    throwaway_database,
)
from bench.server import api_server

BATCH_SIZE = 100
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _requests() -> list[dict[str, Any]]:
    return [{"model": c.model, "usage": c.usage, "service_tier": c.tier} for c in CASES]


def _lua(method: str, bodies: list[bytes], headers: dict[str, str] | None = None) -> str:
    """A wrk script whose `request()` makes each request (see the module docstring), cycling
    through `bodies`, with `headers` besides the JSON content type."""
    if not bodies:
        return f'request = function()\n  return wrk.format("{method}", nil, nil, nil)\nend\n'
    items = ",\n".join(f"[==[{b.decode()}]==]" for b in bodies)
    return (
        f"local bodies = {{\n{items}\n}}\n"
        "local i = 0\n"
        "local headers = {"
        + ", ".join(
            f'["{k}"] = "{v}"'
            for k, v in {"Content-Type": "application/json", **(headers or {})}.items()
        )
        + "}\n"
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        f'  return wrk.format("{method}", nil, headers, bodies[i])\n'
        "end\n"
    )


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(match[1]) * _UNIT[match[2]]


def _parse_wrk(output: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        if match:
            result[f"p{pct}"] = _seconds(match[1])
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    result["rps"] = float(match[1])
    match = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    result["requests"] = float(match[1])
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(errors[1]) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = 1.0 if socket_errors else 0.0
    return result


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    url: str, script: Path, *, seconds: float, connections: int, server_pid: int | None = None
) -> dict[str, float]:
    before = _cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    result = _parse_wrk(out.stdout)
    if server_pid:
        result["cpu_per_request"] = (_cpu_seconds(server_pid) - before) / result["requests"]
    return result


def _check(base: str, bodies: list[bytes], path: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        for body in bodies:
            answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
            if answer.status_code != 200:
                raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")


async def _seed(url: str) -> None:
    settings = bench_settings(url)
    await apply_migrations(settings.core)
    await seed_from_snapshot(settings.core)


def run(*, rounds: int = 3, seconds: float = 5.0, connections: int = 8) -> Section:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (bench/__main__.py installs it with apt-get)")
    requests = _requests()
    single = [msgspec.json.encode(r) for r in requests]
    batch_items = [requests[i % len(requests)] for i in range(BATCH_SIZE)]
    batch = [msgspec.json.encode({"requests": batch_items})]
    empty = [b'{"requests": []}']
    samples: dict[str, list[dict[str, float]]] = {
        "health": [],
        "empty": [],
        "calculate": [],
        "batch": [],
    }
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {
            "health": Path(tmp, "health.lua"),
            "calculate": Path(tmp, "calculate.lua"),
            "batch": Path(tmp, "batch.lua"),
            "empty": Path(tmp, "empty.lua"),
        }
        scripts["health"].write_text(_lua("GET", []))
        scripts["calculate"].write_text(_lua("POST", single))
        scripts["batch"].write_text(_lua("POST", batch))
        scripts["empty"].write_text(_lua("POST", empty))
        paths = {
            "health": "/health",
            "calculate": "/v1/costs/calculate",
            "batch": "/v1/costs/calculate/batch",
            "empty": "/v1/costs/calculate/batch",
        }
        asyncio.run(
            _run_with_database(
                samples, rss, scripts, paths, single, batch, rounds, seconds, connections
            )
        )
    return _section(samples, rss, rounds, seconds, connections)


async def _run_with_database(
    samples: dict[str, list[dict[str, float]]],
    rss: dict[str, int],
    scripts: dict[str, Path],
    paths: dict[str, str],
    single: list[bytes],
    batch: list[bytes],
    rounds: int,
    seconds: float,
    connections: int,
) -> None:
    async with throwaway_database("http") as url:
        await _seed(url)
        with api_server(url) as api:
            rss["ready"] = api.rss()
            _check(api.base_url, single, paths["calculate"])
            _check(api.base_url, batch, paths["batch"])
            say(
                f"[http] warm-up, then {rounds} rounds x {len(samples)} endpoints x {seconds:g} s "
                "of wrk ..."
            )
            for name in samples:
                await asyncio.to_thread(
                    _wrk,
                    api.base_url + paths[name],
                    scripts[name],
                    seconds=1,
                    connections=connections,
                )
            for index in range(rounds):
                names = list(samples)
                order = names[index % len(names) :] + names[: index % len(names)]
                for name in order:
                    result = await asyncio.to_thread(
                        _wrk,
                        api.base_url + paths[name],
                        scripts[name],
                        seconds=seconds,
                        connections=connections,
                        server_pid=api.process.pid,
                    )
                    samples[name].append(result)
            rss["after_load"] = api.rss()
            rss["peak"] = api.peak_rss()
            output = api.output()
            rss["log_lines"] = output.count("\n")
            rss["access_lines"] = output.count("aiserver.api.access")


def _section(
    samples: dict[str, list[dict[str, float]]],
    rss: dict[str, int],
    rounds: int,
    seconds: float,
    connections: int,
) -> Section:
    def med(name: str, key: str) -> float:
        return median([s[key] for s in samples[name]])

    health_rps = med("health", "rps")

    def vs(name: str, base: str = "health") -> float:
        """Requests/s of `name` over `base`: the median of the per-round ratios."""
        pairs = zip(samples[name], samples[base], strict=True)
        return median([s["rps"] / b["rps"] for s, b in pairs])

    ratio = vs("calculate")
    vs_empty = vs("calculate", "empty")
    cpu = {name: med(name, "cpu_per_request") for name in samples}
    errors = sum(s["non_2xx"] + s["socket_errors"] for v in samples.values() for s in v)
    table = Table(
        [
            "endpoint",
            "requests/s",
            "calculations/s",
            "p50",
            "p99",
            "server CPU per request",
            "requests/s vs /health",
        ],
        [],
        caption=f"Medians of {rounds} rounds of {seconds:g} s per endpoint, {connections} "
        "connections; the last column is the median of the per-round ratios:",
    )
    labels = {
        "health": "`GET /health`",
        "empty": "`POST /v1/costs/calculate/batch` (no requests: a POST baseline)",
        "calculate": "`POST /v1/costs/calculate`",
        "batch": f"`POST /v1/costs/calculate/batch` ({BATCH_SIZE} per request)",
    }
    per_request = {"health": 0, "empty": 0, "calculate": 1, "batch": BATCH_SIZE}
    for name, label in labels.items():
        rps = med(name, "rps")
        table.rows.append(
            [
                label,
                f"{rps:,.0f}",
                f"{rps * per_request[name]:,.0f}" if per_request[name] else "",
                fmt_ms(med(name, "p50")),
                fmt_ms(med(name, "p99")),
                fmt_us(cpu[name]),
                "1.00" if name == "health" else f"{vs(name):.2f}",
            ]
        )
    notes = [
        f"`POST /v1/costs/calculate` / `GET /health`: **{ratio:.2f}** (median of the per-round "
        "ratios).",
        f"Server CPU time per request: `GET /health` {fmt_us(cpu['health'])}, "
        f"`POST /v1/costs/calculate` {fmt_us(cpu['calculate'])}: a calculation, its body and "
        f"its answer add {fmt_us(cpu['calculate'] - cpu['health'])} to the framework's "
        f"{fmt_us(cpu['health'])} (ratio {cpu['health'] / cpu['calculate']:.2f}).",
        f"Against a POST that goes the same way through the framework and prices nothing (the "
        f"batch endpoint with no requests, {fmt_us(cpu['empty'])} per request), calculate "
        f"answers {vs_empty:.2f} as many requests per second: the calculation, its request body "
        f"and its answer add {fmt_us(cpu['calculate'] - cpu['empty'])} per request.",
        "Requests/s per round (the spread is this shared machine's noise): "
        + "; ".join(
            labels[name] + " " + ", ".join(f"{s['rps']:,.0f}" for s in samples[name])
            for name in samples
        )
        + ".",
        f"Batch: one HTTP request prices {BATCH_SIZE} calls, so a calculation costs "
        f"{fmt_x(med('batch', 'rps') * BATCH_SIZE / med('calculate', 'rps'))} less server time "
        "than in its own request.",
        f"API process RSS: {fmt_mib(rss['ready'])} at `/ready`, {fmt_mib(rss['after_load'])} "
        f"after the load (peak {fmt_mib(rss['peak'])}).",
        "wrk shares the 2-core machine with the server (one core each, roughly); "
        f"errors or non-2xx answers during the runs: {errors:.0f}.",
        f"The server, started with `LOG_LEVEL=WARNING`, wrote {rss['log_lines']:,} log lines "
        f"during the run, {rss['access_lines']:,} of them access-log lines (level INFO; "
        "`GET /health` never writes one). A logged request costs far more than a calculation, "
        "so this count matters to the ratio.",
        f"wrk: `wrk -t1 -c{connections} -d{seconds:g}s --latency -s SCRIPT URL`; each script's "
        "`request()` makes every request (the POST scripts cycle through the request bodies).",
    ]
    return Section(
        key="http",
        title="2. Calculation over HTTP",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[table],
        notes=notes,
        headline=[
            f"HTTP: calculate {med('calculate', 'rps'):,.0f} req/s vs /health "
            f"{health_rps:,.0f} req/s, ratio {ratio:.2f}; "
            f"{vs_empty:.2f} of an empty POST baseline; "
            f"batch {med('batch', 'rps') * BATCH_SIZE:,.0f} calculations/s."
        ],
        data={name: {"rps": med(name, "rps"), "cpu": cpu[name]} for name in samples}
        | {"ratio": ratio, "vs_empty": vs_empty},
    )
