"""Model names to catalog keys, as the catalog resolved them at a time.

A `Resolver` answers which catalog key a model name (with an optional separate provider) names,
and how it matched; the catalog (`aiserver.costs.catalog`) prices what it finds. The rules, in
order (the result says which matched, `matched_by`):

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
before the catalog knew the name, as it resolved first (and the catalog's `version_at` prices a
call before a model's first price with that price), else as now. Each name seen remembers since
when it resolves as now (the key it found was had, its alias and undated name named what they
name now), so a call of that time costs one comparison more.

An unknown name raises `UnknownModel` with the closest known names.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Generic, TypeVar

from aiserver.costs.errors import UnknownModel
from aiserver.costs.store.prices import AliasSpan
from aiserver.costs.timelines import Span, Timeline, alias_timelines, newest_present

GEO_PREFIXES: Final = ("us-gov.", "global.", "apac.", "us.", "eu.", "au.", "jp.", "ca.", "apj.")
_DATE_SUFFIX: Final = re.compile(r"^(?P<base>.+?)[-@](?P<date>20\d{2}-?\d{2}-?\d{2})$")
_REGION_SEGMENT: Final = re.compile(r"^(?P<provider>[^/]+)/[a-z]{2}(?:-[a-z]+)+-\d/(?P<rest>.+)$")
_RESOLVE_CACHE_LIMIT: Final = 4096
#: Before any time the catalog knows: where a name's past begins (`Resolver._past_of`).
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
#: What may follow a model's name in a longer, unknown one that begins with it.
_STEM_ENDS: Final = frozenset("-.:_@/")

#: What the resolver hands back with a key it found: the catalog's current version of it.
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Resolution:
    key: str
    matched_by: str


class Resolver(Generic[V]):
    """Resolves names against one catalog snapshot, memoizing each name it meets (at most
    `_RESOLVE_CACHE_LIMIT` of them at once). Immutable to its readers, as the catalog is."""

    def __init__(
        self,
        providers: Mapping[str, str],
        born: Mapping[str, datetime],
        current: Mapping[str, V],
        aliases: Mapping[str, str],
        alias_history: Iterable[AliasSpan] = (),
        *,
        present: Callable[[str], Sequence[Span]],
    ) -> None:
        """`providers`: every key the catalog ever had, with its latest version's provider;
        `born`: when the catalog first had each (its first source version or override: a call
        of before then cannot name it); `current`: the keys it has now, each with what
        `current_for` answers for it; `aliases`: the current aliases, and `alias_history` every
        alias's spans (an alias without any named its target always); `present(key)`: while the
        key had a price valid (asked only of dated keys, when their undated name is met)."""
        self._providers = providers
        self._born = born
        self._present = present
        self._current = current
        self._aliases = dict(aliases)
        self._aliases_lower = {alias.lower(): target for alias, target in sorted(aliases.items())}
        self._alias_timelines = alias_timelines(self._aliases, alias_history)
        # lower-cased alias -> its spellings of any time, as `_aliases_lower` picks one: the last
        self._alias_spellings: dict[str, list[str]] = {}
        for alias in sorted(self._alias_timelines, reverse=True):
            self._alias_spellings.setdefault(alias.lower(), []).append(alias)
        # Before the first key came no name resolved, so a call of then resolves as its name
        # did next: a key there from the first instant on never changed how a name resolves
        # (`_lookup` leaves it out of since when a name resolves as now)
        self._first_born = min(born.values(), default=_EARLIEST)
        # lower-cased key, and (provider, bare key) -> the keys spelled so, preferred first (a
        # current one, then by key): now the first answers, for a call of a time the first the
        # catalog had then
        lower: dict[str, tuple[str, ...]] = {}
        by_provider: dict[tuple[str, str], tuple[str, ...]] = {}
        for key in sorted(providers, key=lambda k: (k not in current, k)):
            spelling = key.lower()
            lower[spelling] = (*lower.get(spelling, ()), key)
            provider = providers[key]
            bare = key[len(provider) + 1 :] if key.startswith(provider + "/") else key
            pair = (provider.lower(), bare.lower())
            by_provider[pair] = (*by_provider.get(pair, ()), key)
        self._lower = lower
        self._by_provider = by_provider
        # undated name (lower case) -> its dated keys, oldest first; the newest in the catalog at
        # a time is the one it names then (`_undated_at`)
        self._undated: dict[str, list[str]] = {}
        for key in sorted(providers):
            match = _DATE_SUFFIX.match(key)
            if match:
                self._undated.setdefault(match["base"].lower(), []).append(key)
        self._undated_timelines: dict[str, Timeline] = {}
        # (name, provider) -> (how it resolved, what `current` has for it (None: gone)), and
        # since when it resolves so (None: at every time; a call before it resolves at its time)
        self._resolved: dict[
            tuple[str, str | None],
            tuple[tuple[Resolution, V | None], datetime | None],
        ] = {}
        # (name, provider) -> the close matches of a name that resolves to nothing (looking for
        # them takes tens of milliseconds, and a ledger meets the same unknown name again and
        # again), and since when it resolves to nothing
        self._missing: dict[tuple[str, str | None], tuple[tuple[str, ...], datetime | None]] = {}
        # (name, provider) -> what it resolved to before its `since`: from each start to the
        # next (`_past_of`), worked out at its first call of then
        self._past: dict[
            tuple[str, str | None],
            tuple[list[datetime], list[tuple[Resolution, V | None] | None]],
        ] = {}
        self._lowered_current: dict[str, str] | None = None

    def resolve(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> Resolution:
        """The catalog key for `name` (and `provider`), and how it matched; with `at`, as the
        catalog resolved it at that time."""
        return self.current_for(name, provider, at)[0]

    def current_for(
        self, name: str, provider: str | None = None, at: datetime | None = None
    ) -> tuple[Resolution, V | None]:
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
        tuple[tuple[Resolution, V | None], datetime | None] | None,
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
    ) -> tuple[Resolution, V | None] | None:
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
    ) -> tuple[list[datetime], list[tuple[Resolution, V | None] | None]]:
        """What the name resolved to over time until `since`: resolved at the earliest instant,
        then again at each instant something it asked changed (a key came, an alias or an
        undated name named another), up to the first at `since` or after. Where it resolved to
        nothing it answers as it resolved next (a call from before the catalog knew it, as it
        resolved first), else (None) as now."""
        name, provider = name.strip(), provider.strip() if provider else None
        starts: list[datetime] = []
        answers: list[tuple[Resolution, V | None] | None] = []
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
        keys = self._providers
        if provider is None and name in keys and (at is None or self._had(name, at, later)):
            return Resolution(name, "exact")
        if provider is not None:
            prefixed = f"{provider}/{name}"
            if prefixed in keys and (at is None or self._had(prefixed, at, later)):
                return Resolution(prefixed, "provider_prefix")
            # The key as given, when it is the provider's, as `_of` reads a provider: a regional
            # Bedrock key (`us.anthropic...`, a `bedrock_converse` entry) is itself with
            # `bedrock`, before any variant names the base model (priced differently).
            if (
                name in keys
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
            if found is not None and self._providers[found.key] == provider:
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
        own = self._providers[key].lower()
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
        return newest_present({key: self._present(key) for key in keys})

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


def _siblings(a: str, b: str) -> bool:
    """Whether two provider names (lower case) are one provider's: equal, or one is the other
    with a route after `_` or `-` (`bedrock`, `bedrock_converse`)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and long[len(short)] in "_-"
