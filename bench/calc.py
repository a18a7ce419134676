"""Benchmark 1: the cost of one call, in process: aiserver vs genai-prices vs litellm.

Every contestant gets the same usage on the same model, built outside the timed loop (aiserver
a `CostRequest`, genai-prices a `Usage`, litellm a `Usage` object plus keyword arguments), and
is timed answering it in batches interleaved round by round. aiserver's time is `calculate()` on
a catalog read by `load_catalog()` from a database seeded with the bundled snapshot, name
resolution included (a provider-prefixed name such as `openai/gpt-4o`). Both aiserver and
genai-prices cache name lookups, so a repeated name costs a dictionary hit in both; the cost of a
cache miss is measured apart.

The budget is aiserver's own time per call over the mix: at most 4 µs. The ratios to the peers
are reported, not targeted: where clearer code costs little, it is preferred.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from importlib.metadata import version
from typing import Any

from aiserver.core_db.connections import connect
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.pricing import Usage
from aiserver.costs.refresh import seed_from_snapshot
from bench.common import (
    Section,
    Table,
    bench_settings,
    fmt_us,
    fmt_x,
    interleaved_per_call,
    median,
    say,
    throwaway_database,
)

AISERVER, GENAI, LITELLM = "aiserver", "genai-prices", "litellm"
#: aiserver's budget per call over the mix, in seconds.
BUDGET_S = 4e-6
PEERS = (GENAI, LITELLM)


@dataclass(frozen=True)
class Case:
    key: str
    kind: str
    model: str  # as given to aiserver (and to litellm)
    usage: dict[str, int]  # aiserver's usage field names
    tier: str = "standard"
    genai_model: str = ""
    genai_provider: str = ""
    explanations: dict[str, str] = field(default_factory=dict)  # peer -> why it differs


# The mix: plain chat, cached, reasoning, long-context tiers and service tiers, on models that
# all three know. Explanations name the cause of every disagreement seen with the pinned peers
# (litellm 1.110.2, the release of the bundled snapshot; genai-prices 0.2.3); a disagreement
# that has none is reported as unexplained.
CASES: tuple[Case, ...] = (
    Case("chat-gpt-4o", "plain chat", "openai/gpt-4o",
         {"input_tokens": 1200, "output_tokens": 350}, genai_model="gpt-4o",
         genai_provider="openai"),
    Case("chat-haiku-4.5", "plain chat", "anthropic/claude-haiku-4-5",
         {"input_tokens": 3000, "output_tokens": 600}, genai_model="claude-haiku-4-5",
         genai_provider="anthropic"),
    Case("chat-deepseek", "plain chat", "deepseek/deepseek-chat",
         {"input_tokens": 4000, "output_tokens": 900}, genai_model="deepseek-chat",
         genai_provider="deepseek",
         explanations={
             GENAI: "data difference: genai-prices 0.2.3 still has DeepSeek-V3's prices for "
             "`deepseek-chat` ($0.27 / $1.10 per MTok from 00:30 to 16:30 UTC, half that "
             "off-peak, so its answer depends on the time of day); LiteLLM's entry has the "
             "DeepSeek-V3.2 price of September 2025 ($0.28 / $0.42, no off-peak discount).",
         }),
    Case("cached-gpt-4o", "cached", "openai/gpt-4o",
         {"input_tokens": 10000, "output_tokens": 300, "cache_read_tokens": 8000},
         genai_model="gpt-4o", genai_provider="openai"),
    Case("cached-sonnet-4.5", "cached (read + 5 min write)", "anthropic/claude-sonnet-4-5",
         {"input_tokens": 12000, "output_tokens": 400, "cache_read_tokens": 8000,
          "cache_write_tokens": 3000},
         genai_model="claude-sonnet-4-5", genai_provider="anthropic"),
    Case("cached-1h-sonnet-4.5", "cached (1 h write)", "anthropic/claude-sonnet-4-5",
         {"input_tokens": 12000, "output_tokens": 400, "cache_write_tokens": 6000,
          "cache_write_1h_tokens": 6000},
         genai_model="claude-sonnet-4-5", genai_provider="anthropic"),
    Case("reasoning-o3", "reasoning", "openai/o3",
         {"input_tokens": 2000, "output_tokens": 3000, "reasoning_tokens": 2500},
         genai_model="o3", genai_provider="openai"),
    Case("reasoning-gemini-flash", "reasoning", "gemini/gemini-2.5-flash",
         {"input_tokens": 2000, "output_tokens": 3000, "reasoning_tokens": 2500},
         genai_model="gemini-2.5-flash", genai_provider="google"),
    Case("long-gemini-pro", "long-context tier (>200k)", "gemini/gemini-2.5-pro",
         {"input_tokens": 250_000, "output_tokens": 2000},
         genai_model="gemini-2.5-pro", genai_provider="google"),
    Case("long-cached-gemini-pro", "long-context tier + cache", "gemini/gemini-2.5-pro",
         {"input_tokens": 250_000, "output_tokens": 2000, "cache_read_tokens": 100_000},
         genai_model="gemini-2.5-pro", genai_provider="google"),
    Case("long-sonnet-4.5", "long-context tier (>200k)", "anthropic/claude-sonnet-4-5",
         {"input_tokens": 300_000, "output_tokens": 1000},
         genai_model="claude-sonnet-4-5", genai_provider="anthropic",
         explanations={
             GENAI: "data difference: genai-prices bills Claude Sonnet 4.5 prompts over 200k "
             "tokens at $6 / $22.50 per MTok (Anthropic's 1M-context price); LiteLLM's entry "
             "`claude-sonnet-4-5` in 1.110.2, which aiserver and litellm both read, has no "
             "`*_above_200k_tokens` price, so both bill $3 / $15.",
         }),
    Case("tier-flex-gpt-5", "service tier flex", "openai/gpt-5",
         {"input_tokens": 5000, "output_tokens": 1000, "reasoning_tokens": 500}, tier="flex",
         genai_model="gpt-5", genai_provider="openai"),
    Case("tier-priority-gpt-5", "service tier priority", "openai/gpt-5",
         {"input_tokens": 5000, "output_tokens": 1000, "reasoning_tokens": 500},
         tier="priority", genai_model="gpt-5", genai_provider="openai"),
    Case("tier-batch-gpt-4o", "service tier batch", "openai/gpt-4o",
         {"input_tokens": 5000, "output_tokens": 1000}, tier="batch",
         genai_model="gpt-4o", genai_provider="openai"),
)  # fmt: skip


def _genai_call(case: Case) -> Callable[[], Any]:
    import genai_prices

    u = case.usage
    kwargs = {
        "input_tokens": u["input_tokens"],
        "output_tokens": u["output_tokens"],
        "cache_read_tokens": u.get("cache_read_tokens"),
        "cache_write_tokens": u.get("cache_write_tokens"),
        "cache_write_1h_tokens": u.get("cache_write_1h_tokens"),
        "output_reasoning_tokens": u.get("reasoning_tokens"),
    }
    usage = genai_prices.Usage(**{k: v for k, v in kwargs.items() if v})
    # genai-prices names batch processing apart from the service tiers
    context = (
        None
        if case.tier == "standard"
        else {"processing": "batch"}
        if case.tier == "batch"
        else {"service_tier": case.tier}
    )
    return partial(
        genai_prices.calc_price,
        usage,
        case.genai_model,
        provider_id=case.genai_provider,
        price_context=context,
    )


def litellm_usage(u: Mapping[str, int]) -> Any:
    """litellm's `Usage` object for a usage in aiserver's field names, as litellm's own callers
    build it: cache reads and writes in the prompt details, the 1-hour writes apart."""
    from litellm.types.utils import CacheCreationTokenDetails, PromptTokensDetailsWrapper
    from litellm.types.utils import Usage as LitellmUsage

    read, write = u.get("cache_read_tokens", 0), u.get("cache_write_tokens", 0)
    write_1h = u.get("cache_write_1h_tokens", 0)
    details = None
    if read or write:
        details = PromptTokensDetailsWrapper(
            cached_tokens=read or None,
            cache_creation_tokens=write or None,
            cache_creation_token_details=CacheCreationTokenDetails(
                ephemeral_5m_input_tokens=write - write_1h, ephemeral_1h_input_tokens=write_1h
            )
            if write
            else None,
        )
    return LitellmUsage(
        prompt_tokens=u["input_tokens"],
        completion_tokens=u["output_tokens"],
        total_tokens=u["input_tokens"] + u["output_tokens"],
        reasoning_tokens=u.get("reasoning_tokens") or None,
        prompt_tokens_details=details,
        cache_read_input_tokens=read or None,
        cache_creation_input_tokens=write or None,
    )


def _litellm_call(case: Case) -> Callable[[], Any]:
    import litellm

    u = case.usage
    read, write = u.get("cache_read_tokens", 0), u.get("cache_write_tokens", 0)
    usage = litellm_usage(u)
    if case.tier == "batch":  # litellm prices batches in a function of their own
        from litellm.cost_calculator import batch_cost_calculator

        batch = partial(batch_cost_calculator, usage, case.model)
        return lambda: sum(batch())
    call = partial(
        litellm.cost_per_token,
        model=case.model,
        prompt_tokens=u["input_tokens"],
        completion_tokens=u["output_tokens"],
        cache_read_input_tokens=read,
        cache_creation_input_tokens=write,
        usage_object=usage,
        service_tier=None if case.tier == "standard" else case.tier,
    )
    return lambda: sum(call())


def _aiserver_call(catalog: Catalog, case: Case) -> Callable[[], Any]:
    request = CostRequest(model=case.model, usage=Usage(**case.usage), service_tier=case.tier)
    return partial(calculate, catalog, request)


def _total(name: str, result: Any) -> Decimal | float:
    if name == AISERVER:
        return Decimal(result.total)
    if name == GENAI:
        return Decimal(result.total_price)
    return float(result)


def _agrees(ours: Decimal, theirs: Decimal | float) -> bool:
    if isinstance(theirs, Decimal):
        return ours == theirs
    return abs(float(ours) - theirs) <= 1e-12 + 1e-9 * abs(theirs)  # litellm answers in floats


async def seeded_catalog() -> Catalog:
    """The catalog `load_catalog()` reads from a throwaway database seeded with the snapshot."""
    async with throwaway_database("calc") as url:
        settings = bench_settings(url)
        await apply_migrations(settings.core)
        await seed_from_snapshot(settings.core)
        conn = await connect(settings.core)
        try:
            return await load_catalog(conn)
        finally:
            await conn.close()


def _resolution_misses(catalog: Catalog, rounds: int) -> list[float]:
    """Seconds per `resolve` that misses the name cache: cycle through every current model as
    `provider/model` in upper case, more names than the cache holds, so each one is new."""
    names = []
    for key, price_version in catalog.current.items():
        provider = price_version.provider
        bare = key.partition("/")[2] if key.startswith(provider + "/") else key
        names.append((f"{provider}/{bare}".upper(), None))
    return [_time_all(catalog, names) for _ in range(rounds)]


def _time_all(catalog: Catalog, names: list[tuple[str, None]]) -> float:
    started = time.perf_counter()
    for name, provider in names:
        catalog.resolve(name, provider)
    return (time.perf_counter() - started) / len(names)


def run(*, rounds: int = 9) -> Section:
    warnings.simplefilter("ignore")  # genai-prices warns about usage keys it does not price
    started = time.perf_counter()
    say("[calc] seeding a throwaway database and loading the catalog ...")
    catalog = asyncio.run(seeded_catalog())
    say(f"[calc] catalog: {len(catalog)} models; importing the peers ...")

    calls: dict[str, dict[str, Callable[[], Any]]] = {}
    for case in CASES:
        calls[case.key] = {
            AISERVER: _aiserver_call(catalog, case),
            GENAI: _genai_call(case),
            LITELLM: _litellm_call(case),
        }

    # totals first (this is also the warm-up of every lookup cache)
    totals: dict[str, dict[str, Decimal | float | str]] = {}
    for case in CASES:
        totals[case.key] = {}
        for name, fn in calls[case.key].items():
            try:
                totals[case.key][name] = _total(name, fn())
            except Exception as exc:
                totals[case.key][name] = f"error: {type(exc).__name__}: {exc}"[:160]

    say(f"[calc] {time.perf_counter() - started:.0f} s: timing {len(CASES)} cases x 3 libraries")
    gc.collect()  # once: with litellm imported a full collection takes most of a second
    per_case: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for case in CASES:
        usable = {
            n: f for n, f in calls[case.key].items() if not isinstance(totals[case.key][n], str)
        }
        samples = interleaved_per_call(usable, rounds=rounds, batch_seconds=0.01)
        per_case[case.key] = {n: median(s) for n, s in samples.items()}
        ratios[case.key] = {
            peer: median([p / a for p, a in zip(samples[peer], samples[AISERVER], strict=True)])
            for peer in PEERS
            if peer in samples
        }

    # the whole mix in one batch: the headline number
    def mix(name: str) -> Callable[[], None]:
        fns = [calls[c.key][name] for c in CASES if not isinstance(totals[c.key][name], str)]

        def run_mix() -> None:
            for fn in fns:
                fn()

        return run_mix

    say(f"[calc] {time.perf_counter() - started:.0f} s: timing the whole mix")
    mix_samples = interleaved_per_call(
        {n: mix(n) for n in (AISERVER, *PEERS)}, rounds=rounds, batch_seconds=0.05
    )
    mix_count = {
        n: sum(1 for c in CASES if not isinstance(totals[c.key][n], str))
        for n in (AISERVER, *PEERS)
    }
    mix_per_call = {n: median(s) / mix_count[n] for n, s in mix_samples.items()}
    mix_ratio = {
        peer: median(
            [
                (p / mix_count[peer]) / (a / mix_count[AISERVER])
                for p, a in zip(mix_samples[peer], mix_samples[AISERVER], strict=True)
            ]
        )
        for peer in PEERS
    }
    misses = _resolution_misses(catalog, rounds=5)

    return _section(
        catalog,
        totals,
        per_case,
        ratios,
        mix_per_call,
        mix_ratio,
        misses,
        rounds,
        versions=(version("litellm"), version("genai-prices")),
    )


def _cell(value: Decimal | float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return format(value.normalize(), "f")


def _section(
    catalog: Catalog,
    totals: dict[str, dict[str, Decimal | float | str]],
    per_case: dict[str, dict[str, float]],
    ratios: dict[str, dict[str, float]],
    mix_per_call: dict[str, float],
    mix_ratio: dict[str, float],
    misses: list[float],
    rounds: int,
    *,
    versions: tuple[str, str],
) -> Section:
    genai_ratio = mix_ratio[GENAI]
    verdict = "within" if mix_per_call[AISERVER] <= BUDGET_S else "over"
    timing = Table(
        [
            "case",
            "usage",
            "aiserver",
            "genai-prices",
            "litellm",
            "genai-prices / aiserver",
            "litellm / aiserver",
        ],
        [],
        caption="Median time per call (lower is better), and how many times longer each peer "
        "takes than aiserver (median of the per-round ratios):",
        align="llrrrrr",
    )
    for case in CASES:
        t, r = per_case[case.key], ratios[case.key]
        timing.rows.append(
            [
                f"`{case.model}`" + (f" ({case.tier})" if case.tier != "standard" else ""),
                case.kind,
                fmt_us(t[AISERVER]),
                fmt_us(t[GENAI]) if GENAI in t else "n/a",
                fmt_us(t[LITELLM]) if LITELLM in t else "n/a",
                fmt_x(r[GENAI]) if GENAI in r else "n/a",
                fmt_x(r[LITELLM]) if LITELLM in r else "n/a",
            ]
        )
    timing.rows.append(
        [
            "**whole mix**",
            f"{len(CASES)} cases, one after another",
            f"**{fmt_us(mix_per_call[AISERVER])}**",
            f"**{fmt_us(mix_per_call[GENAI])}**",
            f"**{fmt_us(mix_per_call[LITELLM])}**",
            f"**{fmt_x(mix_ratio[GENAI])}**",
            f"**{fmt_x(mix_ratio[LITELLM])}**",
        ]
    )

    agreement = Table(
        ["case", "aiserver total (USD)", "genai-prices", "litellm"],
        [],
        caption="Totals side by side (✓ = the same amount; litellm answers in binary floats, "
        "compared within 1e-9 relative):",
    )
    disagreements: list[str] = []
    agree_count = 0
    for case in CASES:
        ours = totals[case.key][AISERVER]
        row = [case.key, _cell(ours)]
        for peer in PEERS:
            theirs = totals[case.key][peer]
            if isinstance(ours, Decimal) and not isinstance(theirs, str) and _agrees(ours, theirs):
                row.append("✓")
                agree_count += 1
                continue
            row.append(f"**{_cell(theirs)}**")
            why = case.explanations.get(peer, "UNEXPLAINED: no cause found yet")
            disagreements.append(f"`{case.key}` vs {peer}: {_cell(theirs)} vs {_cell(ours)}. {why}")
        agreement.rows.append(row)

    breakdown = Table(
        ["step", "median"],
        [
            ["`Catalog.resolve`, name seen before (cache hit)", fmt_us(_hit_time(catalog))],
            [
                f"`Catalog.resolve`, new name every call (cache miss; {len(catalog):,} names)",
                fmt_us(median(misses)),
            ],
        ],
        caption="aiserver's name resolution apart:",
    )
    notes = [
        f"Each library answers the same {len(CASES)} requests; {rounds} timed rounds after one "
        "warm-up round, each round one batch (~10 ms) per library, the order rotated each "
        "round. The inputs are built before the clock starts.",
        "Service tiers: genai-prices takes `price_context={'service_tier': ...}`, and batch as "
        "`{'processing': 'batch'}`; litellm takes `cost_per_token(service_tier=...)`, and prices "
        "batches with `litellm.cost_calculator.batch_cost_calculator` (its `cost_per_token` "
        "has no batch tier). Each peer is called the way it prices the case.",
        f"Peers: litellm {versions[0]} (`LITELLM_LOCAL_MODEL_COST_MAP=True`, its bundled "
        f"price map: the same data as aiserver's snapshot), genai-prices {versions[1]} "
        "(its own bundled data).",
        f"Agreement: {agree_count} of {len(CASES) * len(PEERS)} peer totals equal aiserver's.",
    ]
    if disagreements:
        notes += ["Disagreements:"] + [f"  {d}" for d in disagreements]  # nested bullets
    else:
        notes.append("No disagreements.")
    headline = [
        f"Calculation in process: aiserver {fmt_us(mix_per_call[AISERVER])} per call vs "
        f"genai-prices {fmt_us(mix_per_call[GENAI])} ({fmt_x(genai_ratio)}) and litellm "
        f"{fmt_us(mix_per_call[LITELLM])} ({fmt_x(mix_ratio[LITELLM])}); budget <= "
        f"{fmt_us(BUDGET_S)} per call: {verdict}.",
    ]
    return Section(
        key="calc",
        title="1. Calculation in process",
        intro=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        tables=[timing, agreement, breakdown],
        notes=notes,
        headline=headline,
        data={
            "cases": [c.key for c in CASES],
            "per_case_us": {c.key: {n: v * 1e6 for n, v in per_case[c.key].items()} for c in CASES},
            "mix_us": {n: v * 1e6 for n, v in mix_per_call.items()},
        },
    )


def _hit_time(catalog: Catalog) -> float:
    samples = interleaved_per_call(
        {"hit": partial(catalog.resolve, "openai/gpt-4o", None)}, rounds=5, batch_seconds=0.01
    )
    return median(samples["hit"])
