"""Agreement with LiteLLM: aiserver's totals against `litellm.cost_per_token`, catalog-wide.

Issue 4 is done when aiserver agrees with LiteLLM's own `cost_per_token`, on LiteLLM's data, for
ordinary chat usage. This check tries that on every model of litellm's bundled price map that
is priced like a chat call (`MODES`; the map is the release the bundled snapshot was taken from,
see hatch.toml), not on a handful of examples:

- names: the map's key; `provider/key` and the key with the provider given apart, where the
  key has no prefix of its provider; and for a prefixed key, the rest with the prefix given
  apart (`provider` in aiserver, `custom_llm_provider` in litellm);
- usages: plain chat, cache reads, 5-minute and 1-hour cache writes, reads and writes together,
  reasoning, a 250k-token prompt with and without cache reads, and the edges of every long-context
  threshold the entry has (`*_above_<N>k_tokens`, `tiered_pricing` ranges): exactly at it and one
  token above;
- litellm told about the usage two ways: a `Usage` object (as litellm's own callers pass it), and
  keyword arguments only, for the usages that keywords can say (no reasoning, no 1-hour split).

A name litellm cannot price (it asks for a provider, or does not map the model) is counted, not
compared. Nothing here reaches the network: the check refuses to resolve any host but the
loopback one, and leaves out the providers litellm can only price online (`NEEDS_NETWORK`).
litellm answers in binary floats, so totals agree when they are within 1e-9 relative
(and 1e-12 absolute) of aiserver's exact Decimal. Every disagreement is printed with both
totals; the exit status is 1 when there is one whose cause `explain()` does not know, or when
fewer than `MIN_COVERAGE` of the models got a total compared at all.

    hatch run bench:agree              # the whole catalog, some 20 s
    hatch run bench:agree --show 50    # print up to 50 disagreements per usage
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import version
from typing import Any

# before litellm is imported: its price map comes from its own wheel, never the network
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, UnknownModel
from aiserver.costs.pricing import Usage
from bench.calc import litellm_usage, seeded_catalog
from bench.common import say

#: The modes whose entries price a call by its tokens in and out, as a chat call is priced.
MODES = frozenset({"chat", "completion", "responses"})
#: At least this share of the models must get a total compared under one of their names, or
#: the check fails: a litellm that could price nothing must not pass as "all agree".
MIN_COVERAGE = 0.9

_PERPLEXITY = (
    "litellm prices Perplexity's models with a calculator of its own "
    "(litellm/llms/perplexity/cost_calculator.py) that ignores the *_above_<N>k_tokens prices "
    "and bills cache writes at the input rate; aiserver applies the long-context prices to the "
    "whole request and bills cache writes at their own rate (docs/costs.md, usage)"
)


def explain(
    entry: Mapping[str, Any], usage: Mapping[str, int], notes: tuple[str, ...]
) -> str | None:
    """The known cause of a disagreement on this entry and usage, or None. A cause explains
    only the disagreements it can produce; any other fails the check."""
    if entry.get("litellm_provider") == "perplexity" and entry.get("mode") == "responses":
        long_context = any(note.startswith("long-context prices") for note in notes)
        cache_write = bool(usage.get("cache_write_tokens")) and any(
            name.startswith("cache_creation_input_token_cost") for name in entry
        )
        if long_context or cache_write:
            return _PERPLEXITY
    return None


#: Usages every model is priced with, in aiserver's field names.
USAGES: Mapping[str, Mapping[str, int]] = {
    "plain": {"input_tokens": 1000, "output_tokens": 500},
    "cache read": {"input_tokens": 10_000, "output_tokens": 200, "cache_read_tokens": 6000},
    "cache write": {"input_tokens": 10_000, "output_tokens": 200, "cache_write_tokens": 3000},
    "cache write 1h": {
        "input_tokens": 12_000,
        "output_tokens": 400,
        "cache_write_tokens": 6000,
        "cache_write_1h_tokens": 4000,
    },
    "read + write": {
        "input_tokens": 10_000,
        "output_tokens": 200,
        "cache_read_tokens": 4000,
        "cache_write_tokens": 3000,
    },
    "reasoning": {"input_tokens": 2000, "output_tokens": 3000, "reasoning_tokens": 2500},
    "250k prompt": {"input_tokens": 250_000, "output_tokens": 1000},
    "250k prompt, cache read": {
        "input_tokens": 250_000,
        "output_tokens": 1000,
        "cache_read_tokens": 100_000,
    },
}
#: Usages that litellm's keyword arguments cannot say: only its `Usage` object carries them.
NEEDS_USAGE_OBJECT = ("reasoning_tokens", "cache_write_1h_tokens")
#: Providers litellm cannot price offline. For `github_copilot` it asks GitHub for a device code
#: first (three attempts, seconds apart), so those models are left out, and counted.
NEEDS_NETWORK = frozenset({"github_copilot"})
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

_ABOVE = re.compile(r"_above_(\d+)(k?)_tokens")


@dataclass(frozen=True)
class Name:
    model: str
    provider: str | None  # given apart from the model name

    def __str__(self) -> str:
        return self.model if self.provider is None else f"{self.model} (provider {self.provider})"


@dataclass(frozen=True)
class Disagreement:
    name: Name
    usage: str
    style: str
    ours: Decimal
    theirs: float
    notes: tuple[str, ...]
    cause: str | None  # from explain()


def thresholds(entry: Mapping[str, Any]) -> list[int]:
    """The prompt sizes at which the entry's prices change: `*_above_<N>k_tokens` fields and the
    ends of its `tiered_pricing` ranges."""
    found = set()
    for price_field in entry:
        match = _ABOVE.search(price_field)
        if match:
            found.add(int(match[1]) * (1000 if match[2] else 1))
    for tier in entry.get("tiered_pricing") or ():
        low, high = tier.get("range", (0, 0))
        found.update(int(value) for value in (low, high) if value)
    return sorted(found)


def usages_for(entry: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, int]]]:
    yield from USAGES.items()
    for threshold in thresholds(entry):
        for prompt in (threshold, threshold + 1):
            yield f"prompt {prompt:,}", {"input_tokens": prompt, "output_tokens": 100}
            yield (
                f"prompt {prompt:,}, cache read",
                {"input_tokens": prompt, "output_tokens": 100, "cache_read_tokens": prompt // 2},
            )


def names_for(key: str, entry: Mapping[str, Any]) -> list[Name]:
    """The key; `provider/key` and the key with the provider apart, for a key without the
    provider's prefix; and for a key with a prefix (`vertex_ai/...`, whatever the entry's
    provider), the rest of the key with the prefix given apart as the provider."""
    names = [Name(key, None)]
    provider = entry.get("litellm_provider")
    if provider and not key.startswith(provider + "/"):
        names += [Name(f"{provider}/{key}", None), Name(key, provider)]
    head, slash, rest = key.partition("/")
    if slash:
        names.append(Name(rest, head))
    return names


def litellm_total(name: Name, usage: Mapping[str, int], style: str) -> float:
    import litellm

    prompt_cost, completion_cost = litellm.cost_per_token(
        model=name.model,
        custom_llm_provider=name.provider,
        prompt_tokens=usage["input_tokens"],
        completion_tokens=usage["output_tokens"],
        cache_read_input_tokens=usage.get("cache_read_tokens", 0),
        cache_creation_input_tokens=usage.get("cache_write_tokens", 0),
        usage_object=litellm_usage(usage) if style == "Usage object" else None,
    )
    return float(prompt_cost + completion_cost)


def agrees(ours: Decimal, theirs: float) -> bool:
    return abs(float(ours) - theirs) <= 1e-12 + 1e-9 * abs(theirs)


@dataclass
class Tally:
    models: Counter[str] = field(default_factory=Counter)  # by mode
    not_by_tokens: int = 0  # entries of MODES without an input and an output token price
    left_out: int = 0  # models of the providers in NEEDS_NETWORK
    uncovered: list[str] = field(default_factory=list)  # models with no total compared
    compared: int = 0
    unpriced_by_litellm: int = 0
    litellm_errors: Counter[str] = field(default_factory=Counter)
    unknown_to_aiserver: list[str] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)


def check(catalog: Catalog, model_cost: Mapping[str, Mapping[str, Any]]) -> Tally:
    tally = Tally()
    for key, entry in model_cost.items():
        if key == "sample_spec" or entry.get("mode") not in MODES:
            continue
        if "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
            tally.not_by_tokens += 1
            continue
        if entry.get("litellm_provider") in NEEDS_NETWORK:
            tally.left_out += 1
            continue
        tally.models[entry["mode"]] += 1
        compared_before = tally.compared
        for name in names_for(key, entry):
            for usage_name, usage in usages_for(entry):
                request = CostRequest(
                    model=name.model, provider=name.provider, usage=Usage(**usage)
                )
                styles = ["Usage object"]
                if not any(usage.get(field) for field in NEEDS_USAGE_OBJECT):
                    styles.append("keywords")
                for style in styles:
                    try:
                        theirs = litellm_total(name, usage, style)
                    except Exception as exc:
                        tally.unpriced_by_litellm += 1
                        tally.litellm_errors[type(exc).__name__] += 1
                        continue
                    try:
                        result = calculate(catalog, request)
                    except UnknownModel:
                        tally.unknown_to_aiserver.append(str(name))
                        continue
                    tally.compared += 1
                    if not agrees(result.total, theirs):
                        cause = explain(entry, usage, result.notes)
                        tally.disagreements.append(
                            Disagreement(
                                name, usage_name, style, result.total, theirs, result.notes, cause
                            )
                        )
        if tally.compared == compared_before:
            tally.uncovered.append(key)
    return tally


def report(tally: Tally, *, show: int, seconds: float) -> None:
    errors = ", ".join(f"{n} {kind}" for kind, n in tally.litellm_errors.most_common())
    models = ", ".join(f"{n:,} {mode}" for mode, n in tally.models.most_common())
    explained = [item for item in tally.disagreements if item.cause]
    say(
        f"models: {models}; {tally.compared:,} totals compared in {seconds:.0f} s; "
        f"{len(tally.disagreements) - len(explained):,} disagreements, "
        f"{len(explained):,} explained"
    )
    if tally.left_out:
        providers = ", ".join(sorted(NEEDS_NETWORK))
        say(f"left out {tally.left_out} models that litellm prices only online ({providers})")
    if tally.not_by_tokens:
        say(f"left out {tally.not_by_tokens} entries without an input and an output token price")
    total = sum(tally.models.values())
    say(
        f"{total - len(tally.uncovered):,} of {total:,} models ({coverage(tally):.1%}) got a "
        f"total compared (at least {MIN_COVERAGE:.0%} must)"
        + (
            f"; litellm priced none of the names of: {', '.join(tally.uncovered[:show])}"
            if tally.uncovered
            else ""
        )
    )
    say(f"litellm could not price {tally.unpriced_by_litellm:,} cases ({errors or 'none'})")
    if tally.unknown_to_aiserver:
        unknown = sorted(set(tally.unknown_to_aiserver))
        say(f"aiserver did not know {len(unknown):,} names that litellm priced:")
        for name in unknown[:show]:
            say(f"  {name}")
    causes = Counter(item.cause for item in explained)
    for cause, n in causes.items():
        names = sorted({str(item.name) for item in explained if item.cause == cause})
        say(f"\nexplained, {n} totals of {len(names)} names ({', '.join(names[:3])}, ...): {cause}")
    by_usage: dict[str, list[Disagreement]] = defaultdict(list)
    for item in tally.disagreements:
        if not item.cause:
            by_usage[f"{item.usage} ({item.style})"].append(item)
    for usage, items in sorted(by_usage.items()):
        say(f"\n{usage}: {len(items)} disagreements")
        for item in items[:show]:
            notes = f"  [{'; '.join(item.notes)}]" if item.notes else ""
            say(f"  {item.name}: aiserver {item.ours}, litellm {item.theirs!r}{notes}")


def coverage(tally: Tally) -> float:
    total = sum(tally.models.values())
    return (total - len(tally.uncovered)) / total if total else 0.0


def refuse_network() -> None:
    """Make every lookup of a host other than the loopback one fail at once."""
    lookup = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"bench.agreement: no network ({name})")
        return lookup(host, *args, **kwargs)

    socket.getaddrinfo = loopback_only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hatch run bench:agree",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--show", type=int, default=10, metavar="N", help="disagreements printed per usage (10)"
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    say("[agree] seeding a throwaway database and loading the catalog ...")
    catalog = asyncio.run(seeded_catalog())
    refuse_network()  # after the database: PostgreSQL is reached by name, 127.0.0.1
    import litellm

    litellm.suppress_debug_info = True  # its "Provider List" banner on every name it cannot map
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    say(f"[agree] catalog: {len(catalog):,} models; litellm {version('litellm')}")
    began = time.perf_counter()
    tally = check(catalog, litellm.model_cost)
    report(tally, show=args.show, seconds=time.perf_counter() - began)
    unexplained = [item for item in tally.disagreements if not item.cause]
    failed = bool(unexplained or tally.unknown_to_aiserver or coverage(tally) < MIN_COVERAGE)
    say(f"\n[agree] {'FAILED' if failed else 'all agree'} in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
