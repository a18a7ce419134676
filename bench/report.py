"""docs/benchmarks.md and its plots, from the sections one run produced."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, Section, Table

DOCS = ROOT / "docs"
MARKDOWN = DOCS / "benchmarks.md"
CALC_PNG = DOCS / "benchmarks-calculation.png"
SCALE_PNG = DOCS / "benchmarks-scale.png"
#: One-off before/after measurements of changes, written by hand, kept at the end of the docs.
CHANGES = ROOT / "bench" / "changes.md"

COLORS = {"aiserver": "#1f77b4", "genai-prices": "#ff7f0e", "litellm": "#2ca02c"}


def write(
    sections: Sequence[Section],
    machine: dict[str, str],
    *,
    command: str,
    duration_s: float,
    load_after: str,
) -> list[Path]:
    DOCS.mkdir(exist_ok=True)
    by_key = {s.key: s for s in sections}
    written = [MARKDOWN]
    plots = []
    if "calc" in by_key:
        _calc_plot(by_key["calc"].data, CALC_PNG)
        plots.append(f"![Calculation per call]({CALC_PNG.name})")
        written.append(CALC_PNG)
    if "scale" in by_key:
        _scale_plot(by_key["scale"].data, SCALE_PNG)
        plots.append(f"![Scale curves]({SCALE_PNG.name})")
        written.append(SCALE_PNG)
    MARKDOWN.write_text(
        _markdown(
            sections,
            machine,
            command=command,
            duration_s=duration_s,
            load_after=load_after,
            plots=plots,
        )
    )
    return written


def splice(
    sections: Sequence[Section],
    machine: dict[str, str],
    *,
    command: str,
    duration_s: float,
    load_after: str,
) -> list[Path]:
    """Put `sections` into docs/benchmarks.md in place of their earlier text, leaving every
    other section as the full run wrote it.

    A section replaces the one with its title (or goes before the plots and the one-off
    changes); its summary lines replace those with the same label (the text before the first
    colon), where the first of them was; a line under the header says which run the section
    comes from.
    """
    text = MARKDOWN.read_text()
    head, *blocks = text.split("\n## ")
    parts = {block.split("\n", 1)[0]: block for block in blocks}
    titles = list(parts)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for section in sections:
        body = section.markdown().rstrip().removeprefix("## ")
        if section.title not in parts:
            at = next((i for i, t in enumerate(titles) if t in ("Plots", _CHANGES_TITLE)), None)
            titles.insert(len(titles) if at is None else at, section.title)
        parts[section.title] = body + "\n"
        labels = {_label(line) for line in section.headline}
        lines = [line for line in parts["Summary"].strip().split("\n")[1:] if line.strip()]
        ours = [_label(line.removeprefix("- ")) in labels for line in lines]
        at = ours.index(True) if True in ours else len(lines)  # where its lines were, or last
        summary = lines[:at] + [f"- {line}" for line in section.headline]
        summary += [line for line, mine in zip(lines[at:], ours[at:], strict=True) if not mine]
        parts["Summary"] = "Summary\n\n" + "\n".join(summary) + "\n"
        note = (
            f'{_SPLICED} "{section.title}" comes from a later run of `{command}` on {now} '
            f"in {duration_s / 60:.1f} min, spliced into this file (every other section is the "
            f"full run's), on a machine of the same size: {machine.get('CPU', 'unknown')}, "
            f"{machine.get('cores', '?')} cores, load average (1/5/15 min) "
            f"{machine.get('load average at start (1/5/15 min)', '?')} at its start and "
            f"{load_after} at its end."
        )
        head = "\n\n".join(
            p
            for p in head.rstrip().split("\n\n")
            if not p.startswith(f'{_SPLICED} "{section.title}"')
        )
        head += "\n\n" + note + "\n"
    MARKDOWN.write_text(head + "".join(f"\n## {parts[t]}" for t in titles))
    return [MARKDOWN]


_SPLICED = "Section"
_CHANGES_TITLE = "Changes measured once, before and after"


def _label(line: str) -> str:
    return line.split(":", 1)[0].strip()


def _markdown(
    sections: Sequence[Section],
    machine: dict[str, str],
    *,
    command: str,
    duration_s: float,
    load_after: str,
    plots: list[str],
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary = "\n".join(f"- {line}" for s in sections for line in s.headline)
    machine_rows: list[Sequence[str]] = [[k, v] for k, v in machine.items()]
    machine_rows.append(["load average at end (1/5/15 min)", load_after])
    machine_table = Table(["", ""], machine_rows, align="ll").markdown()
    parts = [
        "# Benchmarks: aiserver against its peers",
        f"Written by `{command}` on {now} in {duration_s / 60:.1f} min; every number below is "
        "one that run printed. Do not edit by hand: rerun the command (see "
        "[bench/README.md](../bench/README.md)).",
        "## Summary",
        summary,
        "## Machine",
        "A shared 2-core virtual machine that other work was using at the same time: absolute "
        "numbers move from run to run, so every comparison is made side by side in one run "
        "(interleaved rounds), and the tables give medians and per-round ratios.\n\n"
        + machine_table,
        "## Commands",
        "```sh\n"
        "hatch run bench:all              # every benchmark; rewrites this file and the plots\n"
        "hatch run bench:run calc http    # some of them (calc http refresh startup scale cli"
        " ingest),\n"
        "                                 # print only\n"
        "hatch run bench:splice ingest    # some of them, spliced into this file in place of"
        " their\n"
        "                                 # sections (the others stay as the full run wrote"
        " them)\n"
        "```\n\n"
        "The `bench` environment (hatch.toml) installs the workspace packages plus the peers, "
        "which no package or service depends on. `LITELLM_LOCAL_MODEL_COST_MAP=True` keeps "
        "litellm on its bundled price map; nothing here reaches the network except the local "
        "servers on 127.0.0.1. Each benchmark creates its own PostgreSQL database "
        "(`aiserver_bench_*`) and drops it.",
        *(s.markdown().rstrip() for s in sections),
    ]
    if plots:
        parts += ["## Plots", "\n\n".join(plots)]
    parts.append(CHANGES.read_text().strip())
    return "\n\n".join(parts) + "\n"


def _calc_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases: list[str] = [*data["cases"], "whole mix"]
    per_case = dict(data["per_case_us"])
    per_case["whole mix"] = data["mix_us"]
    libraries = list(COLORS)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(cases) + 1.6), dpi=110)
    height = 0.26
    for index, library in enumerate(libraries):
        ys = [i + (index - 1) * height for i in range(len(cases))]
        xs = [per_case[c].get(library, float("nan")) for c in cases]
        ax.barh(ys, xs, height=height, label=library, color=COLORS[library])
        for y, x in zip(ys, xs, strict=True):
            if x == x:  # not NaN
                ax.text(
                    x * 1.05, y, f"{x:,.0f}" if x >= 10 else f"{x:.1f}", va="center", fontsize=7
                )
    ax.axhline(len(cases) - 1.5, color="grey", linewidth=0.8)  # the mix apart from the cases
    ax.set_yticks(range(len(cases)), cases)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("µs per call (log scale; lower is better)")
    ax.set_title("Cost of one call, in process: aiserver vs genai-prices vs litellm")
    ax.legend(loc="upper right")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_xlim(1, ax.get_xlim()[1] * 2)  # a common base for the bars
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _scale_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    factors = data["factors"]
    models = [results[f]["models"] for f in factors]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    for key, label in (
        ("full_s", "full load (refresh)"),
        ("changed_s", "5% changed (refresh)"),
        ("load_s", "load_catalog"),
    ):
        left.plot(models, [results[f][key] for f in factors], marker="o", label=label)
    first = results[factors[0]]["full_s"] / factors[0]
    left.plot(
        models,
        [first * f for f in factors],
        linestyle=":",
        color="grey",
        label="full load, if it grew linearly",
    )
    left.set_title("Time")
    left.set_ylabel("seconds")
    middle.plot(
        models,
        [results[f]["memory"] / 2**20 for f in factors],
        marker="o",
        label="catalog in memory (Python)",
    )
    middle.plot(
        models,
        [results[f]["table_bytes"] / 2**20 for f in factors],
        marker="o",
        label="ai_model_costs on disk",
    )
    middle.set_title("Memory and disk")
    middle.set_ylabel("MiB")
    right.plot(
        models,
        [results[f]["calc_s"] * 1e6 for f in factors],
        marker="o",
        color=COLORS["aiserver"],
        label="calculate (one call)",
    )
    right.set_ylim(bottom=0, top=max(results[f]["calc_s"] * 1e6 for f in factors) * 2)
    right.set_title("Cost of one call")
    right.set_ylabel("µs")
    for ax in (left, middle, right):
        ax.set_xlabel("models in the catalog")
        ax.set_xticks(
            models, [f"{m / 1000:.1f}k\n{f}x" for m, f in zip(models, factors, strict=True)]
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlim(left=0)
        if ax is not right:
            ax.set_ylim(bottom=0)
    fig.suptitle("aiserver as the catalog grows (synthetic copies of the snapshot)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
