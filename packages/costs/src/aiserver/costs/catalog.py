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

Name resolution, in order (the result says which rule matched, `matched_by`):

1. `exact`: the catalog key as given (`gpt-4o`, `azure/gpt-4o`); with a separate `provider`,
   a key of that provider as `_of` reads it (`us.anthropic...`, a `bedrock_converse` entry,
   with `bedrock`), before any variant names another model;
2. `provider_prefix`: `provider/model` for a key without the prefix whose provider is that
   provider (`openai/gpt-4o` -> `gpt-4o`), or `model` plus a separate `provider` field
   (`gpt-4o` + `azure` -> `azure/gpt-4o`, as litellm joins them, even for a key that repeats
   the prefix: `perplexity/x` + `perplexity` -> `perplexity/perplexity/x`);
3. `case_insensitive`: the same keys, ignoring case;
4. `alias`: an `alias_of` entry of the source (`claude-opus-latest` -> `claude-opus-...`); with
   a separate `provider`, that provider's alias first (`claude-haiku-latest` + `bedrock_mantle`
   -> `bedrock_mantle/claude-haiku-latest`'s target, not Anthropic's model);
5. `region_prefix`: without a geo prefix (`us.`, `eu.`, `apac.`, `global.`, ...) or a region
   path segment (`bedrock/us-east-1/...`);
6. `dated_name`: without a date suffix (`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`) or,
   for an undated name, its newest dated version, where the catalog has those names.

With a separate `provider`, rules 5 and 6 find only that provider's models (its entry's provider
or its key's prefix, ignoring case): `gpt-4o` + `my-vllm` is no OpenAI model. An alias (4) names
its target whoever's it is.

A call of a past time resolves as the catalog resolved it then (`current_for` with `at`): an
alias names the target it named then (`ai_model_alias_history`), an undated name the newest
dated key in the catalog then, and the rules find only the keys the catalog had by then (from a
key's first version or override on; a removed one still, as now), so a refresh that re-points an
alias, adds a newer dated key, or adds a key under a name that resolved by another rule
(`claude-sonnet-4-5`, an undated name until then) does not bill a past call at another model's
price. A name that resolved to nothing then resolves as it did next, at the first instant after
its time when what it asks changed (a key came, an alias or a dated key began): for a call from
before the catalog knew the name, as it resolved first (and `version_at` prices a call before a
model's first price with that price), else as now. Each name seen remembers since when it
resolves as now (the key it found was had, its alias and undated name named what they name
now), so a call of that time costs one comparison more.

An unknown name raises `UnknownModel` with the closest known names.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiserver.costs.errors import UnknownModel
from aiserver.costs.pricing import CompiledPrices, compile_entry
from aiserver.costs.source import DEFAULT_SOURCE, decode_json
from aiserver.costs.store.metadata import read_catalog_version
from aiserver.costs.store.overrides import Override, read_overrides
from aiserver.costs.store.prices import AliasSpan, read_alias_history, read_aliases, read_versions
from aiserver.costs.timelines import Timeline, alias_timelines, newest_present

if TYPE_CHECKING:  # pricing a call needs no database layer, so it is not imported for it
    import asyncpg

    from aiserver.core_db.connections import DbConnection

GEO_PREFIXES: Final = ("us-gov.", "global.", "apac.", "us.", "eu.", "au.", "jp.", "ca.", "apj.")
_DATE_SUFFIX: Final = re.compile(r"^(?P<base>.+?)[-@](?P<date>20\d{2}-?\d{2}-?\d{2})$")
_REGION_SEGMENT: Final = re.compile(r"^(?P<provider>[^/]+)/[a-z]{2}(?:-[a-z]+)+-\d/(?P<rest>.+)$")
_RESOLVE_CACHE_LIMIT: Final = 4096
#: Before any time the catalog knows: where a name's past begins (`Catalog._past_of`).
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)


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


#: What may follow a model's name in a longer, unknown one that begins with it.
_STEM_ENDS: Final = frozenset("-.:_@/")


@dataclass(frozen=True, slots=True)
class Resolution:
    key: str
    matched_by: str


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
        self._aliases = dict(aliases)
        self._aliases_lower = {alias.lower(): target for alias, target in sorted(aliases.items())}
        self._alias_timelines = alias_timelines(self._aliases, alias_history)
        # lower-cased alias -> its spellings of any time, as `_aliases_lower` picks one: the last
        self._alias_spellings: dict[str, list[str]] = {}
        for alias in sorted(self._alias_timelines, reverse=True):
            self._alias_spellings.setdefault(alias.lower(), []).append(alias)
        # key -> when the catalog first had it (its first source version or override): a call
        # of before then cannot name it, whatever the key's spelling (`_had`)
        self._born = {k: v[0].valid_from for k, v in self._versions.items()}
        for key, timeline in self._overrides.items():
            self._born[key] = min(self._born[key], timeline[0].valid_from)
        # Before the first key came no name resolved, so a call of then resolves as its name
        # did next: a key there from the first instant on never changed how a name resolves
        # (`_lookup` leaves it out of since when a name resolves as now)
        self._first_born = min(self._born.values(), default=_EARLIEST)
        # lower-cased key, and (provider, bare key) -> the keys spelled so, preferred first (a
        # current one, then by key): now the first answers, for a call of a time the first the
        # catalog had then
        lower: dict[str, tuple[str, ...]] = {}
        by_provider: dict[tuple[str, str], tuple[str, ...]] = {}
        for key in sorted(self._versions, key=lambda k: (k not in self._current, k)):
            spelling = key.lower()
            lower[spelling] = (*lower.get(spelling, ()), key)
            provider = self._versions[key][-1].provider
            bare = key[len(provider) + 1 :] if key.startswith(provider + "/") else key
            pair = (provider.lower(), bare.lower())
            by_provider[pair] = (*by_provider.get(pair, ()), key)
        self._lower = lower
        self._by_provider = by_provider
        # undated name (lower case) -> its dated keys, oldest first; the newest in the catalog at
        # a time is the one it names then (`_undated_at`)
        self._undated: dict[str, list[str]] = {}
        for key in sorted(self._versions):
            match = _DATE_SUFFIX.match(key)
            if match:
                self._undated.setdefault(match["base"].lower(), []).append(key)
        self._undated_timelines: dict[str, Timeline] = {}
        # (name, provider) -> (how it resolved, that model's current version (None: gone)), and
        # since when it resolves so (None: at every time; a call before it resolves at its time)
        self._resolved: dict[
            tuple[str, str | None],
            tuple[tuple[Resolution, PriceVersion | None], datetime | None],
        ] = {}
        # (name, provider) -> the close matches of a name that resolves to nothing (looking for
        # them takes tens of milliseconds, and a ledger meets the same unknown name again and
        # again), and since when it resolves to nothing
        self._missing: dict[tuple[str, str | None], tuple[tuple[str, ...], datetime | None]] = {}
        # (name, provider) -> what it resolved to before its `since`: from each start to the
        # next (`_past_of`), worked out at its first call of then
        self._past: dict[
            tuple[str, str | None],
            tuple[list[datetime], list[tuple[Resolution, PriceVersion | None] | None]],
        ] = {}
        self._lowered_current: dict[str, str] | None = None
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

    def _overlay(self, version: PriceVersion, override: Override) -> PriceVersion:
        """`version` with `override` laid over it: one object per pair, so that it is compiled
        once however often it prices."""
        pair = (version.id, override.id)
        found = self._overlaid.get(pair)
        if found is None:
            found = self._overlaid[pair] = version.with_override(override)
        return found

    # -- resolution --------------------------------------------------------------------------

    def resolve(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> Resolution:
        """The catalog key for `name` (and `provider`), and how it matched; with `at`, as the
        catalog resolved it at that time."""
        return self.current_for(name, provider, at)[0]

    def current_for(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> tuple[Resolution, PriceVersion | None]:
        """`resolve`, and the current version of what it found (None when the model is gone):
        one memo lookup for a name seen before, the calculator's path. With `at`, the name is
        resolved as it was at that time (see the module's docstring): the same memo lookup,
        unless the name resolved otherwise since."""
        cache_key = (name, provider)
        found = self._resolved.get(cache_key)
        if found is None:
            missing = self._missing.get(cache_key)
            if missing is None:
                found, missing = self._remember(cache_key)
            if missing is not None:
                suggestions, since = missing
                if at is not None and since is not None and at < since:
                    earlier = self._resolved_at(cache_key, since, at)
                    if earlier is not None:
                        return earlier
                raise UnknownModel(name, suggestions)
        assert found is not None
        pair, since = found
        if at is not None and since is not None and at < since:
            earlier = self._resolved_at(cache_key, since, at)
            if earlier is not None:
                return earlier
        return pair

    def _remember(
        self, cache_key: tuple[str, str | None]
    ) -> tuple[
        tuple[tuple[Resolution, PriceVersion | None], datetime | None] | None,
        tuple[tuple[str, ...], datetime | None] | None,
    ]:
        """Resolve a name not seen before and memoize it: what it resolves to now (or the close
        matches of a name that resolves to nothing), and since when it resolves so."""
        name, provider = cache_key
        seen: list[datetime] = []
        resolution = self._resolve(name.strip(), provider.strip() if provider else None, seen=seen)
        since = max(seen, default=None)
        if resolution is None:
            missing = (self.suggest(name, provider), since)
            if len(self._missing) >= _RESOLVE_CACHE_LIMIT:
                self._missing.clear()
            self._missing[cache_key] = missing
            return None, missing
        found = ((resolution, self._current.get(resolution.key)), since)
        if len(self._resolved) >= _RESOLVE_CACHE_LIMIT:
            self._resolved.clear()
        self._resolved[cache_key] = found
        return found, None

    def _resolved_at(
        self, cache_key: tuple[str, str | None], since: datetime, at: datetime
    ) -> tuple[Resolution, PriceVersion | None] | None:
        """The name as resolved at `at`, before `since` (from when it resolves as now); None:
        as now. Its answers before `since` are worked out once, at its first call of then."""
        past = self._past.get(cache_key)
        if past is None:
            if len(self._past) >= _RESOLVE_CACHE_LIMIT:
                self._past.clear()
            past = self._past[cache_key] = self._past_of(*cache_key, since)
        starts, answers = past
        return answers[bisect.bisect_right(starts, at) - 1]

    def _past_of(
        self, name: str, provider: str | None, since: datetime
    ) -> tuple[list[datetime], list[tuple[Resolution, PriceVersion | None] | None]]:
        """What the name resolved to over time until `since`: resolved at the earliest instant,
        then again at each instant something it asked changed (a key came, an alias or an
        undated name named another), up to the first at `since` or after. Where it resolved to
        nothing it answers as it resolved next (a call from before the catalog knew it, as it
        resolved first), else (None) as now."""
        name, provider = name.strip(), provider.strip() if provider else None
        starts: list[datetime] = []
        answers: list[tuple[Resolution, PriceVersion | None] | None] = []
        when: datetime | None = _EARLIEST
        while when is not None:
            later: list[datetime] = []
            resolution = self._resolve(name, provider, at=when, later=later)
            starts.append(when)
            if resolution is None:
                answers.append(None)
            else:
                answers.append((resolution, self._current.get(resolution.key)))
            # each of `later` is after `when`, and they are finitely many: this ends
            when = min(later, default=None) if when < since else None
        for index in range(len(answers) - 2, -1, -1):
            if answers[index] is None:
                answers[index] = answers[index + 1]
        return starts, answers

    def _had(self, key: str, at: datetime, later: list[datetime] | None) -> bool:
        """Whether the catalog had `key` by `at`: from its first version or override on, also
        once removed (as now: its 404 then says since when it is gone); else `later` gets when
        it came."""
        born = self._born[key]
        if born <= at:
            return True
        if later is not None:
            later.append(born)
        return False

    def _pick(
        self, keys: tuple[str, ...] | None, at: datetime | None, later: list[datetime] | None
    ) -> str | None:
        """Of `keys` (one spelling's, preferred first): now the first, for a call of `at` the
        first the catalog had by then; None when there is none."""
        if keys is None:
            return None
        if at is None:
            return keys[0]
        return next((key for key in keys if self._had(key, at, later)), None)

    def _lookup(
        self,
        name: str,
        provider: str | None,
        at: datetime | None = None,
        seen: list[datetime] | None = None,
        later: list[datetime] | None = None,
    ) -> Resolution | None:
        """The key spelled `name` (with `provider`) and how; now (`at` None) among every key the
        catalog ever had, `seen` getting since when it had the one found; for a call of `at`,
        among the keys it had by then (`_had`): a key added since (a refresh that adds
        `claude-sonnet-4-5`, an undated name until then) must not change the model a call of
        before it is billed as."""
        found = self._find(name, provider, at, later)
        if found is not None and seen is not None:
            born = self._born[found.key]
            if born > self._first_born:  # a key of the catalog's first instant never changed
                seen.append(born)
        return found

    def _find(
        self, name: str, provider: str | None, at: datetime | None, later: list[datetime] | None
    ) -> Resolution | None:
        versions = self._versions
        if provider is None and name in versions and (at is None or self._had(name, at, later)):
            return Resolution(name, "exact")
        if provider is not None:
            prefixed = f"{provider}/{name}"
            if prefixed in versions and (at is None or self._had(prefixed, at, later)):
                return Resolution(prefixed, "provider_prefix")
            # The key as given, when it is the provider's, as `_of` reads a provider: a regional
            # Bedrock key (`us.anthropic...`, a `bedrock_converse` entry) is itself with
            # `bedrock`, before any variant names the base model (priced differently).
            if (
                name in versions
                and self._of(name, provider)
                and (at is None or self._had(name, at, later))
            ):
                return Resolution(name, "exact")
            key = self._pick(self._by_provider.get((provider.lower(), name.lower())), at, later)
            return None if key is None else Resolution(key, "provider_prefix")
        head, sep, rest = name.partition("/")
        if sep:
            key = self._pick(self._by_provider.get((head.lower(), rest.lower())), at, later)
            if key is not None:
                return Resolution(key, "provider_prefix")
        key = self._pick(self._lower.get(name.lower()), at, later)
        return None if key is None else Resolution(key, "case_insensitive")

    def _resolve(
        self,
        name: str,
        provider: str | None,
        *,
        at: datetime | None = None,
        seen: list[datetime] | None = None,
        later: list[datetime] | None = None,
    ) -> Resolution | None:
        """The rules in order, for a call of `at` (None: now). What depends on time is the keys
        the catalog had, an alias's target and an undated name's dated key: for `at` None, `seen`
        gets since when each of those it asked answers as it does now; for a time, `later` gets
        when each next changed after it."""
        if provider is not None and name.lower().startswith(provider.lower() + "/"):
            found = self._lookup(name, None, at, seen, later)
            if found is not None and self._versions[found.key][-1].provider == provider:
                return found
            # joined as litellm joins them: a key that repeats the prefix (perplexity/perplexity/x)
            found = self._lookup(name, provider, at, seen, later)
            if found is not None:
                return found
            name = name[len(provider) + 1 :]
        if provider is None and "/" in name:
            head, _, rest = name.partition("/")
            direct = self._lookup(name, None, at, seen, later)
            if direct is not None:
                return direct
            candidates = [(name, None), (rest, head)]
        else:
            candidates = [(name, provider)]
        for candidate, prov in candidates:
            found = self._lookup(candidate, prov, at, seen, later)
            if found is not None:
                return found
        for candidate, prov in candidates:
            for rule, variant in self._variants(candidate, prov, at, seen, later):
                found = self._lookup(variant, prov, at, seen, later)
                if found is None and prov is not None:
                    # An alias names its target, whoever's it is: a provider's own alias may name
                    # a sibling provider's key (`bedrock/...` -> a `bedrock_converse` model).
                    # Another variant is another spelling of the same model, so it must be the
                    # provider's own: else the call would be billed at another provider's price.
                    found = self._lookup(variant, None, at, seen, later)
                    if found is not None and rule != "alias" and not self._of(found.key, prov):
                        found = None
                if found is not None:
                    return Resolution(found.key, rule)
        return None

    def _of(self, key: str, provider: str) -> bool:
        """Whether `key` is a model of `provider`, as `_lookup` reads a provider: the entry's
        own, or the key's prefix, ignoring case; or a sibling of the entry's provider, one
        route of the same provider's service (`bedrock` for a `bedrock_converse` entry, as
        LiteLLM reports every Bedrock call; `vertex_ai` for `vertex_ai-anthropic_models`)."""
        wanted = provider.strip().lower()
        own = self._versions[key][-1].provider.lower()
        return _siblings(own, wanted) or key.lower().startswith(wanted + "/")

    def _alias_target(
        self,
        name: str,
        at: datetime | None = None,
        seen: list[datetime] | None = None,
        later: list[datetime] | None = None,
    ) -> str | None:
        """The target of the alias `name` now (`at` None), or at `at`; the exact spelling first,
        else one that differs only in case."""
        spellings = (name, *self._alias_spellings.get(name.lower(), ()))
        timelines = [t for t in map(self._alias_timelines.get, spellings) if t is not None]
        if at is None:
            if seen is not None:
                seen.extend(t.since for t in timelines if t.since is not None)
            return self._aliases.get(name) or self._aliases_lower.get(name.lower())
        if later is not None:
            later.extend(after for t in timelines if (after := t.after(at)) is not None)
        return next((found for t in timelines if (found := t.at(at)) is not None), None)

    def _undated_at(
        self,
        name: str,
        at: datetime | None = None,
        seen: list[datetime] | None = None,
        later: list[datetime] | None = None,
    ) -> str | None:
        """The dated key an undated name (lower case) names at `at`: the newest in the catalog
        then. Now (`at` None): the newest in the catalog, else the last one there was."""
        keys = self._undated.get(name)
        if keys is None:
            return None
        timeline = self._undated_timelines.get(name)
        if timeline is None:
            timeline = self._undated_timelines[name] = self._dated_timeline(keys)
        if at is not None:
            if later is not None and (after := timeline.after(at)) is not None:
                later.append(after)
            return timeline.at(at)
        if seen is not None and timeline.since is not None:
            seen.append(timeline.since)
        return timeline.last

    def _dated_timeline(self, keys: list[str]) -> Timeline:
        """Which of `keys` (oldest first) was the newest in the catalog over time: while it had
        a source version or an override valid."""
        return newest_present({
            key: [(pv.valid_from, pv.valid_to) for pv in self._versions[key]]
            + [(o.valid_from, o.valid_to) for o in self._overrides.get(key, ())]
            for key in keys
        })  # fmt: skip

    def _variants(
        self,
        name: str,
        provider: str | None = None,
        at: datetime | None = None,
        seen: list[datetime] | None = None,
        later: list[datetime] | None = None,
    ) -> Iterator[tuple[str, str]]:
        # The provider's own alias first (`bedrock_mantle/claude-haiku-latest`), before the bare
        # name's (`claude-haiku-latest`, Anthropic's), which names another model.
        for alias in (f"{provider}/{name}", name) if provider is not None else (name,):
            target = self._alias_target(alias, at, seen, later)
            if target is not None:
                yield "alias", target
        lowered_name = name.lower()
        for prefix in GEO_PREFIXES:
            if lowered_name.startswith(prefix):
                yield "region_prefix", name[len(prefix) :]
                break
        region = _REGION_SEGMENT.match(name)
        if region:
            yield "region_prefix", f"{region['provider']}/{region['rest']}"
        dated = _DATE_SUFFIX.match(name)
        if dated:
            yield "dated_name", dated["base"]
        newest = self._undated_at(lowered_name, at, seen, later)
        if newest is not None:
            yield "dated_name", newest

    def suggest(self, name: str, provider: str | None = None, limit: int = 5) -> tuple[str, ...]:
        """The current models closest to an unknown name: first the longest that the name
        begins with, before a separator (`gpt-4o` for `gpt-4o-typo`, which difflib ranks after
        `gpt-5.4-pro`), then difflib's close matches."""
        wanted = f"{provider}/{name}" if provider else name
        lowered = self._lowered_current
        if lowered is None:
            lowered = self._lowered_current = {key.lower(): key for key in self._current}
        names = {wanted.lower(), wanted.rpartition("/")[2].lower()}

        def begins(key: str) -> bool:
            cut = len(key)
            return any(n.startswith(key) and n[cut : cut + 1] in _STEM_ENDS for n in names)

        stems = sorted((key for key in lowered if len(key) >= 4 and begins(key)), key=len)[::-1]
        stems = stems[:2]
        close = difflib.get_close_matches(wanted.lower(), list(lowered), n=limit, cutoff=0.6)
        if len(close) < limit and "/" in wanted:
            close += difflib.get_close_matches(
                wanted.rpartition("/")[2].lower(), list(lowered), n=limit - len(close), cutoff=0.6
            )
        return tuple(dict.fromkeys(lowered[c] for c in (*stems, *close)))[:limit]

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
                f"{at.isoformat()} is before the catalog's first price for {key!r} "
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


def _siblings(a: str, b: str) -> bool:
    """Whether two provider names (lower case) are one provider's: equal, or one is the other
    with a route after `_` or `-` (`bedrock`, `bedrock_converse`)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and long[len(short)] in "_-"


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
