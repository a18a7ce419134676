"""The shape of the pricing package (aiserver.costs.pricing): its modules, its public names, and
that it holds under `python -O`, which drops every `assert`."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aiserver.costs.pricing as pricing
from aiserver.costs.pricing import CompiledPrices, PriceQuote, Usage, UsageError, price_call
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import parse_source

PACKAGE = Path(pricing.__file__).parent


@cache
def snapshot_entries() -> dict[str, Any]:
    """Every model entry of the bundled snapshot, by key."""
    return {key: model.entry for key, model in parse_source(snapshot_bytes()).models.items()}


def _package_imports(path: Path) -> set[str]:
    """The modules of the package that a module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path.name}: relative import of {node.module}")
            if node.module == "aiserver.costs.pricing":
                found.add("__init__")
            elif node.module.startswith("aiserver.costs.pricing."):
                found.add(node.module.rpartition(".")[2])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.rpartition(".")[2]
                for alias in node.names
                if alias.name.startswith("aiserver.costs.pricing")
            )
    return found


def test_the_modules_import_one_another_without_a_loop() -> None:
    graph = {path.stem: _package_imports(path) for path in PACKAGE.glob("*.py")}
    assert not any("__init__" in imported for imported in graph.values())
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import loop: {error.args[1]}")
    # one leaf that the others share
    assert graph["dimensions"] == set()
    assert order[-1] == "__init__"


def test_every_module_is_small_and_says_what_it_holds() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 5, PACKAGE  # the package's modules, not an empty folder
    for path in modules:
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path.name
        assert ast.get_docstring(ast.parse(text)), path.name


def test_every_name_the_repository_imports_from_the_package_is_public() -> None:
    root = Path(__file__).parents[2]
    imported: set[str] = set()
    for folder in ("packages", "tests", "bench", "dev"):
        for path in (root / folder).rglob("*.py"):
            if PACKAGE not in path.parents:
                for node in ast.walk(ast.parse(path.read_text())):
                    if isinstance(node, ast.ImportFrom) and node.module == "aiserver.costs.pricing":
                        imported.update(alias.name for alias in node.names)
    assert {"Usage", "CompiledPrices", "compile_entry", "quote", "is_understood_field"} <= imported
    assert imported <= set(pricing.__all__)
    assert all(hasattr(pricing, name) for name in pricing.__all__)


NOON = datetime(2025, 1, 8, 12, 0, tzinfo=UTC)  # a Wednesday
SATURDAY_MORNING = datetime(2025, 1, 11, 7, 0, tzinfo=timezone(timedelta(hours=-5)))
Call = tuple[str, Usage, str, datetime]


def call(key: str, tier: str = "standard", at: datetime = NOON, **counts: Any) -> Call:
    return key, Usage(**counts), tier, at


# Calls over the entries' features: chat, cache, reasoning, service tiers, long-context
# thresholds (above and inclusive), tiered_pricing, off-peak windows by weekday, search tiers,
# search context sizes, audio parts; and calls that are refused.
CALLS: list[Call] = [
    call("gpt-4o", input_tokens=1200, output_tokens=350),
    call("gpt-4o", "priority", input_tokens=10_000, output_tokens=300, cache_read_tokens=8000),
    call("gpt-4o", "batch", input_tokens=5000, output_tokens=1000),
    call("gpt-4o", "flex", input_tokens=5000, output_tokens=1000, requests=1),
    call("claude-sonnet-4-5", input_tokens=12_000, output_tokens=400, cache_write_tokens=6000,
         cache_write_1h_tokens=6000, web_searches=2),
    call("gemini/gemini-2.5-pro", input_tokens=250_000, output_tokens=2000,
         cache_read_tokens=100_000, reasoning_tokens=500),
    call("dashscope/qwen-plus-latest", input_tokens=300_000, output_tokens=10),
    call("xai/grok-4.3", input_tokens=200_000, output_tokens=10),
    call("deepseek/deepseek-v4-flash", input_tokens=1000, output_tokens=10),
    call("deepseek/deepseek-v4-flash", at=SATURDAY_MORNING, input_tokens=1000, output_tokens=10),
    call("firecrawl/search", queries=3),
    call("exa_ai/search", queries=3, max_results=50),
    call("azure/gpt-realtime", input_tokens=1000, input_audio_tokens=600, cache_read_tokens=500,
         cache_read_audio_tokens=300, output_tokens=100, output_audio_tokens=60),
    call("gpt-4o", input_tokens=5, cache_read_tokens=6),
    call("gpt-4o", input_tokens=5, images=-1),
    call("gpt-4o", input_tokens=10, input_audio_tokens=None),
]  # fmt: skip

PRICE_CALLS = """
import sys
from datetime import datetime
import msgspec
from aiserver.costs.pricing import PriceQuote, Usage, UsageError, compile_entry, price_call
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import parse_source

if not sys.flags.optimize:
    raise SystemExit("run me with python -O")
models = parse_source(snapshot_bytes()).models
# Usage(**counts), not decoded as a Usage: some calls have counts of the wrong type
calls = msgspec.json.decode(sys.stdin.buffer.read(), type=list[tuple[str, dict, str, datetime]])
answers: list[object] = []
for key, counts, tier, at in calls:
    usage = Usage(**counts)
    try:
        compiled = compile_entry(models[key].entry)
        answers.append(price_call(compiled, usage, service_tier=tier, at=at))
    except UsageError as error:
        answers.append([str(error), error.fields])
sys.stdout.buffer.write(msgspec.json.encode(answers))
"""


def _answer(key: str, usage: Usage, tier: str, at: datetime) -> PriceQuote | list[Any]:
    compiled: CompiledPrices = pricing.compile_entry(snapshot_entries()[key])
    try:
        return price_call(compiled, usage, service_tier=tier, at=at)  # type: ignore[arg-type]
    except UsageError as error:
        return [str(error), error.fields]


def test_pricing_under_python_O_prices_and_refuses_as_without_it() -> None:
    # Nothing in pricing may rest on an assert: `python -O` drops them.
    out = subprocess.run(
        [sys.executable, "-O", "-c", PRICE_CALLS],
        input=msgspec.json.encode(CALLS),
        capture_output=True,
        check=True,
    )
    expected = [_answer(*call) for call in CALLS]
    assert out.stdout == msgspec.json.encode(expected)  # every digit of every price
    assert sum(isinstance(answer, list) for answer in expected) == 3
