"""The price catalog in memory: immutable, built for O(1) lookups, swapped in whole.

`load_catalog()` reads every price version (current and past), the aliases and the operator
overrides (current and past) of the database into a new `Catalog`. Readers hold a reference to one
catalog for the whole of a calculation, so a reload that happens meanwhile never mixes two
versions of it.

Prices at a time `at` (`version_at`): the model's price version valid then, with the operator's
override valid then laid over it (`override_id` names it), or none when no override was valid
then. An override therefore applies from when it was set, and a call before it keeps the source's
price. A model that only overrides define (one the source does not know) exists only while one of
its overrides is valid, priced by the override alone; should the source add it later, its calls
of before then keep that price. A model the source dropped keeps its last source prices while an
override of it is valid, the override laid over them (a refresh never undoes an override).
The current version of each model (`current`), the calculator's path
for a call priced now, is built once with the current override already laid over it.

Names resolve to keys in `aiserver.costs.resolution` (`resolve`, `current_for`): the rules in
order, and a call of a past time resolved as the catalog resolved it then.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

from aiserver.costs.errors import UnknownModel
from aiserver.costs.pricing import CompiledPrices, compile_entry
from aiserver.costs.resolution import Resolution, Resolver
from aiserver.costs.source import DEFAULT_SOURCE, decode_json
from aiserver.costs.store.metadata import read_catalog_version
from aiserver.costs.store.overrides import Override, read_overrides
from aiserver.costs.store.prices import AliasSpan, read_alias_history, read_aliases, read_versions
from aiserver.costs.timelines import Span

if TYPE_CHECKING:  # pricing a call needs no database layer, so it is not imported for it
    import asyncpg

    from aiserver.core_db.connections import DbConnection


@dataclass(frozen=True, slots=True, eq=False)
class PriceVersion:
    """One version of one model's prices (a row of ai_model_costs), with the operator's override
    laid over it when `override_id` is set.

    `valid_from` and `valid_to` are the price version's (`price_version`, `id`); the override's
    own span is the override's. A model that only an override defines has a version per override
    (`source` "override", `id` 0), valid while that override is.
    """

    id: int
    source: str
    provider: str
    model: str
    mode: str | None
    valid_from: datetime
    valid_to: datetime | None
    # The entry, or its JSON text as read from the database until `entry` is first read: most
    # versions of a catalog are never read by a process (a past version, a model nobody calls),
    # and decoding and freeing them all took a tenth of a `calc --batch` run.
    stored_entry: Mapping[str, Any] | str
    override_id: int | None = None
    # The override's prices, laid over the stored entry when `entry` is first read.
    override_prices: Mapping[str, Any] | None = None
    _decoded: list[Mapping[str, Any]] = field(default_factory=list, repr=False)
    _compiled: list[CompiledPrices] = field(default_factory=list, repr=False)

    @property
    def entry(self) -> Mapping[str, Any]:
        """The price entry, every number an exact Decimal (decoded once, on first use)."""
        stored = self.stored_entry
        if not isinstance(stored, str) and self.override_prices is None:
            return stored
        if not self._decoded:
            entry = decode_json(stored) if isinstance(stored, str) else stored
            if self.override_prices is not None:
                entry = {**entry, **self.override_prices}
            self._decoded.append(entry)
        return self._decoded[0]

    def with_override(self, override: Override) -> PriceVersion:
        """This version (one without an override) with `override` laid over it; its entry is
        merged on first use, from this one's if that is decoded already."""
        return replace(
            self,
            stored_entry=self._decoded[0] if self._decoded else self.stored_entry,
            override_id=override.id,
            override_prices=override.prices,
            _decoded=[],
            _compiled=[],
        )

    @property
    def prices(self) -> CompiledPrices:
        """The entry compiled for pricing, once, on first use; the override's prices win over
        the entry's ranges, windows and tiers (`pricing.regime`)."""
        if not self._compiled:
            self._compiled.append(compile_entry(self.entry, self.override_prices or ()))
        return self._compiled[0]

    def valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


#: What the note of a call from before its model's first price in the catalog says (a page tells
#: such a call apart by it: no price override can reach it, none may begin before that price).
BEFORE_FIRST_PRICE: Final = "is before the catalog's first price for"


class Catalog:
    """An immutable snapshot of the catalog. Build it with `load_catalog` or `Catalog.build`."""

    def __init__(
        self,
        *,
        version: int,
        versions: Mapping[str, tuple[PriceVersion, ...]],
        aliases: Mapping[str, str],
        loaded_at: datetime,
        source: str = DEFAULT_SOURCE,
        overrides: Iterable[Override] = (),
        alias_history: Iterable[AliasSpan] = (),
    ) -> None:
        """`versions`: each model's price versions from the source, by `valid_from`;
        `overrides`: every override, current and closed; `aliases`: the current aliases, and
        `alias_history` every alias's spans (an alias without any named its target always)."""
        self.version = version
        self.loaded_at = loaded_at
        self.source = source
        self._versions = dict(versions)
        # Source models only: a model that only overrides define has no start here.
        self._starts = {k: [pv.valid_from for pv in v] for k, v in versions.items()}
        # Each model's overrides, oldest first (a replacement starts where the one it closed
        # ended), and their starts for bisect.
        spans: dict[str, list[Override]] = {}
        for override in overrides:
            spans.setdefault(override.model, []).append(override)
        self._overrides = {
            k: tuple(sorted(v, key=lambda o: (o.valid_from, o.id))) for k, v in spans.items()
        }
        self._override_starts = {k: [o.valid_from for o in v] for k, v in self._overrides.items()}
        # (price version id, override id) -> that version with that override laid over it
        self._overlaid: dict[tuple[int, int], PriceVersion] = {}
        # The model as an override alone defines it: one version per override, each valid while
        # it is. A model the source does not know has only these; one the source added later
        # has them for the calls before its first source version (`version_at`).
        self._added: dict[int, PriceVersion] = {}
        current = {k: v[-1] for k, v in versions.items() if v[-1].valid_to is None}
        for key, timeline in self._overrides.items():
            now = next((o for o in reversed(timeline) if o.valid_to is None), None)
            added = tuple(_added_model(o) for o in timeline)
            self._added.update((o.id, pv) for o, pv in zip(timeline, added, strict=True))
            if key in versions:
                if now is not None and key in current:
                    current[key] = self._overlay(current[key], now)
                continue
            self._versions[key] = added
            if now is not None:
                current[key] = self._added[now.id]
        self._current = current
        # What resolving a name reads of each key the catalog ever had: its provider, and when
        # the catalog first had it (its first source version or override: a call of before
        # then cannot name it, whatever the key's spelling). Plain dicts: objects per key would
        # make the garbage collector run more often while a catalog is built
        born = {k: v[0].valid_from for k, v in self._versions.items()}
        for key, timeline in self._overrides.items():
            born[key] = min(born[key], timeline[0].valid_from)
        self._resolver = Resolver(
            {k: v[-1].provider for k, v in self._versions.items()}, born, current, aliases,
            alias_history, present=self._present,
        )  # fmt: skip
        # key -> the instant since which its current version and override hold
        self._settled: dict[str, datetime] = {}

    @classmethod
    def empty(cls) -> Catalog:
        return cls(version=0, versions={}, aliases={}, loaded_at=datetime.now(UTC))

    def __len__(self) -> int:
        return len(self._current)

    @property
    def current(self) -> Mapping[str, PriceVersion]:
        return self._current

    def history(self, key: str) -> tuple[PriceVersion, ...]:
        """The model's price versions, oldest first, as the source gave them (no override laid
        over them); for a model that only overrides define, one version per override."""
        return self._versions.get(key, ())

    def first_source_price(self, key: str) -> datetime | None:
        """When the source's first price of the model began; None for a model that only
        overrides define."""
        starts = self._starts.get(key)
        return starts[0] if starts else None

    @cached_property
    def began(self) -> datetime | None:
        """When the source's earliest price of any model began (the first refresh or seed of
        this server's catalog): a call from before then is priced with its model's first price,
        not the price of its day (`version_at`'s note). None for a catalog without a source
        price."""
        return min((starts[0] for starts in self._starts.values() if starts), default=None)

    def overrides(self, key: str) -> tuple[Override, ...]:
        """Every override of the model, current and closed, oldest first."""
        return self._overrides.get(key, ())

    def overridden(self) -> list[str]:
        """The keys of the models a current override prices, sorted: with the source's prices
        under it, or without (a model the source never had, or dropped)."""
        return sorted(
            key for key, timeline in self._overrides.items()
            if any(o.valid_to is None for o in timeline)
        )  # fmt: skip

    def override_at(self, key: str, at: datetime) -> Override | None:
        """The override of the model valid at `at` (the newest, should two be), or None."""
        timeline = self._overrides.get(key)
        if timeline is None:
            return None
        return _valid_at(timeline, self._override_starts[key], at)

    def _present(self, key: str) -> list[Span]:
        """While `key` had a price valid: each source version's and override's span."""
        return [(pv.valid_from, pv.valid_to) for pv in self._versions[key]] + [
            (o.valid_from, o.valid_to) for o in self._overrides.get(key, ())
        ]

    def _overlay(self, version: PriceVersion, override: Override) -> PriceVersion:
        """`version` with `override` laid over it: one object per pair, so that it is compiled
        once however often it prices."""
        pair = (version.id, override.id)
        found = self._overlaid.get(pair)
        if found is None:
            found = self._overlaid[pair] = version.with_override(override)
        return found

    # -- resolution (aiserver.costs.resolution) -------------------------------------------

    def resolve(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> Resolution:
        """The catalog key for `name` (and `provider`), and how it matched; with `at`, as the
        catalog resolved it at that time."""
        return self._resolver.current_for(name, provider, at)[0]

    def current_for(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> tuple[Resolution, PriceVersion | None]:
        """`resolve`, and the current version of what it found (None when the model is gone):
        one memo lookup for a name seen before, the calculator's path. With `at`, the name is
        resolved as it was at that time (`aiserver.costs.resolution`)."""
        return self._resolver.current_for(name, provider, at)

    def suggest(self, name: str, provider: str | None = None, limit: int = 5) -> tuple[str, ...]:
        """The current models closest to an unknown name."""
        return self._resolver.suggest(name, provider, limit)

    # -- versions ----------------------------------------------------------------------------

    def holds_at(self, key: str, current: PriceVersion, at: datetime) -> bool:
        """Whether `current` (the model's current version, with its current override) is also
        the one valid at `at`: nothing about the model's prices changed since. A call of the last
        days is then priced without `version_at`'s search."""
        since = self._settled.get(key)
        if since is None:
            since = current.valid_from
            for override in self._overrides.get(key, ()):
                since = max(since, override.valid_to or override.valid_from)
            self._settled[key] = since
        return at >= since

    def version_at(self, key: str, at: datetime) -> tuple[PriceVersion, str | None]:
        """The version of `key` valid at `at`, with the override valid at `at` laid over it, and
        a note when no source version was valid then (the first one is used, unless an override
        was valid then: the model only it defined then, priced by it alone)."""
        starts = self._starts.get(key)
        if starts is None:  # a model that only overrides define
            return self._added_at(key, at), None
        versions = self._versions[key]
        index = bisect.bisect_right(starts, at) - 1
        note = None
        if index < 0:
            override = self.override_at(key, at)
            if override is not None:
                # Before the source had the model, an override alone defined it: its calls keep
                # the override's prices, as they were priced then, not the source's later ones.
                return self._added[override.id], None
            version = versions[0]
            note = (
                f"{at.isoformat()} {BEFORE_FIRST_PRICE} {key!r} "
                f"({version.valid_from.isoformat()}); that first price was used"
            )
        else:
            version = versions[index]
            if not version.valid_at(at):
                removed = version.valid_to.isoformat() if version.valid_to else "?"
                override = self.override_at(key, at)
                if override is None:
                    raise UnknownModel(
                        key,
                        (),
                        reason=f"model {key!r} was not in the catalog at {at.isoformat()} "
                        f"(removed {removed})",
                    )
                # A refresh never undoes an override: a model the source dropped keeps its last
                # source prices, with the override valid then laid over them.
                note = (
                    f"model {key!r} left the source at {removed}; its last prices there were "
                    f"used, with override {override.id} laid over them"
                )
                return self._overlay(version, override), note
        timeline = self._overrides.get(key)
        if timeline is not None:
            override = _valid_at(timeline, self._override_starts[key], at)
            if override is not None:
                version = self._overlay(version, override)
        return version, note

    def _added_at(self, key: str, at: datetime) -> PriceVersion:
        """The version of a model that only overrides define: it exists while one is valid."""
        override = self.override_at(key, at)
        if override is not None:
            return self._added[override.id]
        timeline = self._overrides[key]
        before = [o for o in timeline if o.valid_from <= at]
        when = (
            f"removed {before[-1].valid_to.isoformat()}"
            if before and before[-1].valid_to is not None
            else f"added by an override from {timeline[0].valid_from.isoformat()}"
        )
        raise UnknownModel(
            key, (), reason=f"model {key!r} was not in the catalog at {at.isoformat()} ({when})"
        )

    def models(
        self,
        *,
        provider: str | None = None,
        mode: str | None = None,
        text: str | None = None,
    ) -> list[PriceVersion]:
        """Current versions, sorted by key, filtered by provider, mode and a text match."""
        needle = text.lower() if text else None
        return [
            pv
            for key, pv in sorted(self._current.items())
            if (provider is None or pv.provider == provider)
            and (mode is None or pv.mode == mode)
            and (needle is None or needle in key.lower())
        ]

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        rows: Iterable[Mapping[str, Any] | asyncpg.Record],
        *,
        aliases: Mapping[str, str],
        overrides: Iterable[Override] = (),
        alias_history: Iterable[AliasSpan] = (),
        version: int,
        loaded_at: datetime | None = None,
    ) -> Catalog:
        """A catalog from ai_model_costs rows (dicts with the table's columns and `entry`, a
        mapping or its JSON text), every override and every alias span, current and closed."""
        grouped: dict[str, list[PriceVersion]] = {}
        for row in rows:
            grouped.setdefault(row["model"], []).append(
                PriceVersion(
                    id=row["id"],
                    source=row["source"],
                    provider=row["provider"],
                    model=row["model"],
                    mode=row["mode"],
                    valid_from=row["valid_from"],
                    valid_to=row["valid_to"],
                    stored_entry=row["entry"],
                )
            )
        versions = {k: tuple(sorted(v, key=lambda pv: pv.valid_from)) for k, v in grouped.items()}
        return cls(
            version=version,
            versions=versions,
            aliases=aliases,
            loaded_at=loaded_at or datetime.now(UTC),
            overrides=overrides,
            alias_history=alias_history,
        )


def _valid_at(
    timeline: tuple[Override, ...], starts: list[datetime], at: datetime
) -> Override | None:
    """The newest override of `timeline` (sorted by start; `starts` theirs) valid at `at`."""
    newest = timeline[-1]
    if newest.valid_from <= at and (newest.valid_to is None or at < newest.valid_to):
        return newest  # the usual case: a call of the current override's time
    for index in range(bisect.bisect_right(starts, at) - 1, -1, -1):
        override = timeline[index]
        if override.valid_to is None or at < override.valid_to:
            return override
    return None


def _added_model(override: Override) -> PriceVersion:
    """The version of a model the source does not know, while `override` is valid."""
    entry = {"litellm_provider": override.provider, **override.prices}
    mode = entry.get("mode")
    return PriceVersion(
        id=0,
        source="override",
        provider=override.provider,
        model=override.model,
        mode=mode if isinstance(mode, str) else None,
        valid_from=override.valid_from,
        valid_to=override.valid_to,
        stored_entry=entry,
        override_id=override.id,
    )


async def load_catalog(conn: DbConnection, source: str = DEFAULT_SOURCE) -> Catalog:
    """Read the whole catalog in one repeatable-read snapshot of the database."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await read_catalog_version(conn, source)
        rows = await read_versions(conn, source)
        aliases = await read_aliases(conn, source)
        alias_history = await read_alias_history(conn, source)
        overrides = await read_overrides(conn, history=True)
    return Catalog.build(
        rows, aliases=aliases, overrides=overrides, alias_history=alias_history, version=version
    )
