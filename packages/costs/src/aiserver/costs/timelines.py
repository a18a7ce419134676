"""What a name of the catalog named over time: an alias its target, an undated name its newest
dated key. Pure: the catalog (`aiserver.costs.catalog`) builds them from what it loaded, and
resolves a past call's name with the one of its time.

    timeline = Timeline.of([(t1, "model-a"), (t2, "model-b")])
    timeline.at(t)        # what it named at t (None before t1)
    timeline.after(t)     # when it next named something else after t (t1 before it, t2, None)
    timeline.since        # t2: since when it names what it names now
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiserver.costs.store.prices import AliasSpan

#: A span of time, from its start until its end (None: still).
Span = tuple[datetime, datetime | None]


@dataclass(frozen=True, slots=True)
class Timeline:
    """What a name named over time: `values[i]` from `starts[i]` until the next start, None
    for nothing; before the first start, nothing. Runs of one value are merged. No starts: it
    named `values[0]` at every time."""

    starts: tuple[datetime, ...]
    values: tuple[str | None, ...]

    @classmethod
    def of(cls, changes: Iterable[tuple[datetime, str | None]]) -> Timeline:
        """From (instant, value) changes; of two at one instant, the later holds."""
        starts: list[datetime] = []
        values: list[str | None] = []
        for start, value in sorted(changes, key=lambda change: change[0]):
            if starts and start == starts[-1]:
                del starts[-1], values[-1]
            if not values or values[-1] != value:
                starts.append(start)
                values.append(value)
        return cls(tuple(starts), tuple(values))

    def at(self, at: datetime) -> str | None:
        """The value at `at`."""
        index = bisect.bisect_right(self.starts, at) - 1
        if index < 0:
            return None if self.starts else self.values[0]
        return self.values[index]

    def after(self, at: datetime) -> datetime | None:
        """The first start after `at`: when it next names something else; None: never."""
        index = bisect.bisect_right(self.starts, at)
        return self.starts[index] if index < len(self.starts) else None

    @property
    def last(self) -> str | None:
        """The last value that was not None."""
        return next((value for value in reversed(self.values) if value is not None), None)

    @property
    def since(self) -> datetime | None:
        """Since when it names what it names now; None: at every time."""
        return self.starts[-1] if self.starts else None


def alias_timelines(
    aliases: Mapping[str, str], history: Iterable[AliasSpan]
) -> dict[str, Timeline]:
    """Each alias's timeline: its spans, nothing between them; an alias without spans named its
    target at every time. Where the spans end otherwise than `aliases` (the current aliases; a
    refresh of an earlier release wrote them alone), the current target holds from the last
    instant the spans know."""
    spans: dict[str, list[AliasSpan]] = {}
    for span in history:
        spans.setdefault(span.alias, []).append(span)
    timelines: dict[str, Timeline] = {}
    for alias in spans.keys() | aliases.keys():
        changes: list[tuple[datetime, str | None]] = []
        for span in sorted(spans.get(alias, ()), key=lambda s: s.valid_from):
            changes.append((span.valid_from, span.target))
            if span.valid_to is not None:
                changes.append((span.valid_to, None))
        if not changes:
            timelines[alias] = Timeline((), (aliases[alias],))
            continue
        if changes[-1][1] != aliases.get(alias):
            changes.append((max(t for t, _ in changes), aliases.get(alias)))
        timelines[alias] = Timeline.of(changes)
    return timelines


def newest_present(spans: Mapping[str, Sequence[Span]]) -> Timeline:
    """Which of the keys of `spans` (oldest first) was the newest present, from each instant one
    came or went: a key is present during its spans."""
    instants = sorted({t for found in spans.values() for span in found for t in span if t})
    changes: list[tuple[datetime, str | None]] = []
    for instant in instants:
        there = [
            key
            for key, found in spans.items()
            if any(begin <= instant and (end is None or instant < end) for begin, end in found)
        ]
        changes.append((instant, there[-1] if there else None))
    return Timeline.of(changes)
