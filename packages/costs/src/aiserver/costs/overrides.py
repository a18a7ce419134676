"""Operator price overrides: they win over the source for their model and survive refreshes.

    overrides = await list_overrides(pool)          # the current ones; history=True: all
    override = await put_override(pool, live, provider="openai", model="gpt-4o",
                                  prices={"input_cost_per_token": Decimal("0.0000025")},
                                  reason="negotiated", source_url=url)
    await delete_override(pool, live, override.id, source_url=url)

An override is the override of one catalog key, the model pricing lays it over; `provider` is
that model's provider, and two spellings of a provider name one model. A model the catalog does
not know is a new model of `provider` (lower case), keyed by its name, or by `provider/name` when
the name already answers to another provider's model: it must not be laid over that model.

An override's price is the price charged: it wins over the entry's `tiered_pricing` ranges,
off-peak prices and max_results tiers for the same price (`pricing.regime`), which an override
cannot set. So every price an override may set changes what its model's calls are charged; the
cache read price under both its names would leave one unused, and is refused.

An override applies from when it was set (`valid_from`), or from the earlier time it was
back-dated to, until it is replaced or deleted (`valid_to`), never to the calls before it: a
call is priced with the override valid at its time (`catalog.Catalog.version_at`), so past
calls keep the prices of their time. Replacing an override closes it and opens a new one (a new
id); deleting closes it. Nothing is erased. A back-dated override may cut the current one short,
never rewrite a closed one; the usage recorded keeps what it was billed at until a reprice.

A change and the catalog version bump it causes are one transaction, whose commit NOTIFYs every
API replica (`store.metadata.bump_catalog_version`); this process's own watcher is woken at once.
The transaction takes the catalog version's row lock first, so writers of overrides (and a
refresh) wait for each other: two PUTs of one model at once give two rows, the first closed
where the second starts, and one current (one per model, whatever the provider: a unique index).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from aiserver.core_db.connections import MAX_BIGINT, transaction
from aiserver.core_db.errors import InvalidInput
from aiserver.core_db.logging import get_logger
from aiserver.core_db.text import has_control
from aiserver.costs.errors import UnknownModel, UnknownOverride, UnknownPriceFields
from aiserver.costs.pricing import is_understood_field
from aiserver.costs.pricing.fields import CACHE_HIT_ALIAS, CACHE_READ_FIELD, STRUCTURED_FIELDS
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store import overrides as store
from aiserver.costs.store.metadata import (
    bump_catalog_version,
    ensure_source,
    lock_catalog_version,
)
from aiserver.costs.store.overrides import Override

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection
    from aiserver.costs.catalog import Catalog
    from aiserver.costs.live import LiveCatalog

log = get_logger(__name__)


async def list_overrides(pool: asyncpg.Pool, *, history: bool = False) -> list[Override]:
    """The current overrides, by id; with `history`, the closed ones too."""
    async with pool.acquire() as conn:
        return await store.read_overrides(conn, history=history)


async def put_override(
    pool: asyncpg.Pool,
    live: LiveCatalog,
    *,
    provider: str,
    model: str,
    prices: Mapping[str, Decimal],
    reason: str,
    source_url: str,
    valid_from: datetime | None = None,
    now: datetime | None = None,
) -> Override:
    """Create or replace the override of a model, named by any name the calculator accepts.

    It applies from now on, or from `valid_from` (back-dated: a price agreed from a past date,
    or one the source never had, for the calls already recorded; a reprice then prices them);
    the override of the same model it replaces, whatever provider that one was given with, is
    closed then and kept. `InvalidInput` for a `valid_from` after `now`, before the source's
    first price of the model, or before the end of the model's override history
    (`store.history_end`): a back-dated override may cut the current one short, never rewrite a
    closed one.

    Raises `UnknownPriceFields` for a field the calculator does not price, one that holds
    several prices (`tiered_pricing`, `off_peak_pricing`, `search_context_cost_per_query`) or
    the cache read price under both its names, and `CatalogNotReady` while no catalog is loaded:
    every name would miss then, and the override would be kept under the name as given
    (`openai/gpt-4o`), never reaching `gpt-4o`. A name the catalog does not know is a new model
    of `provider` (see the module).
    """
    unknown = sorted(name for name in prices if not is_understood_field(name))
    if unknown:
        raise UnknownPriceFields(unknown)
    # An override's value is one price; these fields hold prices by range, window or size, and
    # one price in their place would price nothing and drop the source's prices of that field.
    structured = sorted(name for name in prices if name in STRUCTURED_FIELDS)
    if structured:
        raise UnknownPriceFields(
            structured, "fields that hold several prices, which an override cannot set"
        )
    # DeepSeek's second name for the cache read price: with both, one would change nothing.
    if CACHE_HIT_ALIAS in prices and CACHE_READ_FIELD in prices:
        raise UnknownPriceFields(
            [CACHE_READ_FIELD, CACHE_HIT_ALIAS],
            "two names of the cache read price, of which an override sets one",
        )
    if valid_from is not None and valid_from > (now or datetime.now(UTC)):
        raise InvalidInput(
            f"valid_from: {valid_from.isoformat()} is in the future; an override applies from "
            "when it is set, or from a time before it"
        )
    catalog = live.require()
    provider, model = _target(catalog, provider, model)
    if valid_from is not None:
        _check_source_start(catalog, model, valid_from)
    async with pool.acquire() as conn, transaction(conn):
        await _lock(conn, source_url)
        if valid_from is not None:
            end = await store.history_end(conn, model)
            if end is not None and valid_from < end:
                raise InvalidInput(
                    f"valid_from: the override history of {model!r} reaches {end.isoformat()} "
                    "(the start of its current override, or the end of its last closed one): a "
                    "back-dated override may begin no earlier; it may cut the current override "
                    "short, never rewrite a closed one"
                )
        override = await store.replace_override(
            conn, provider=provider, model=model, prices=prices, reason=reason,
            valid_from=valid_from,
        )  # fmt: skip
        version = await bump_catalog_version(conn, DEFAULT_SOURCE)
    await _apply_here(pool, live, version)
    return override


def _target(catalog: Catalog, provider: str, model: str) -> tuple[str, str]:
    """The provider and key an override of `model` (with `provider` apart) is kept under: the
    model's own, or a new model's (see the module).

    `InvalidInput` (422) for a provider or model that is blank, or whose name begins or ends
    with "/", as given or once the provider's prefix is removed (`openai` + `openai/`)."""
    _check_name("provider", provider.strip())
    _check_name("model", model.strip())
    try:
        key = catalog.resolve(model, provider).key
    except UnknownModel:
        pass
    else:
        # The entry's provider, not the caller's spelling of it (`OpenAI`).
        return catalog.history(key)[-1].provider, key
    # The provider as resolution reads one (case and spaces aside), and the name without that
    # provider's prefix: `inhouse` + `x` and `InHouse` + `inhouse/x` are one new model.
    provider = provider.strip().lower()
    name = model.strip()
    if name.lower().startswith(provider + "/"):
        name = name[len(provider) + 1 :].strip()
        _check_name("model", name, f" once its provider's prefix {provider + '/'!r} is removed")
    try:
        catalog.resolve(name)
    except UnknownModel:
        return provider, name
    # The name answers to another provider's model (this provider's would have resolved above):
    # kept under the name, the override would be laid over that model.
    return provider, f"{provider}/{name}"


def _check_source_start(catalog: Catalog, key: str, valid_from: datetime) -> None:
    """A back-dated override of a model the source prices begins no earlier than the source's
    first price of it: a call before that is priced with that first price (with a note), and an
    override valid then would define the model alone, as one set before the source had it."""
    first = catalog.first_source_price(key)
    if first is not None and valid_from < first:
        raise InvalidInput(
            f"valid_from: {valid_from.isoformat()} is before the catalog's first price of "
            f"{key!r} ({first.isoformat()}), the earliest a back-dated override of it may begin"
        )


def _check_name(field: str, name: str, after: str = "") -> None:
    """Refuse a provider or model name that is blank or begins or ends with "/": it would name
    no model (`""`, `"/"`), or another one than the caller meant; or that holds a control
    character, which no usage event may name (`POST /v1/usage` refuses it), and NUL of which
    PostgreSQL cannot store."""
    if not name:
        raise InvalidInput(f"{field}: must not be empty or blank{after}")
    if has_control(name):
        raise InvalidInput(f"{field}: must not hold control characters{after}: {name!r}")
    if name.startswith("/") or name.endswith("/"):
        raise InvalidInput(f"{field}: must not begin or end with '/'{after}: {name!r}")


async def delete_override(
    pool: asyncpg.Pool, live: LiveCatalog, override_id: int, *, source_url: str
) -> None:
    """End a current override now; it is kept, closed, for the calls of its time.

    `UnknownOverride` when there is no override with that id, or it is closed already (replaced
    or deleted): only a current override can be deleted.
    """
    if not 0 < override_id <= MAX_BIGINT:
        raise UnknownOverride(f"no override {override_id}")
    async with pool.acquire() as conn, transaction(conn):
        await _lock(conn, source_url)
        if await store.close_override(conn, override_id) is None:
            closed = await store.read_override(conn, override_id)
            if closed is None or closed.valid_to is None:
                raise UnknownOverride(f"no override {override_id}")
            raise UnknownOverride(
                f"override {override_id} is no longer current: it was closed at "
                f"{closed.valid_to.isoformat()}"
            )
        version = await bump_catalog_version(conn, DEFAULT_SOURCE)
    await _apply_here(pool, live, version)


async def _apply_here(pool: asyncpg.Pool, live: LiveCatalog, version: int) -> None:
    """Load the changed catalog into this process before the change is answered, so that the
    caller's next request to it is priced with the change (the watcher would load it a moment
    later: a full catalog takes some 0.4 s). Other processes load it when their watcher hears
    the NOTIFY. The change is committed: a load that fails is left to the watcher, and the
    answer stands."""
    try:
        await live.catch_up(pool, version)
    except Exception as exc:  # the database went away after the COMMIT: it loads later
        log.warning("override committed; loading the changed catalog failed, the watcher will",
                    catalog_version=version, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        live.notify()


async def _lock(conn: DbConnection, source_url: str) -> None:
    """Take the catalog version's row lock: one writer at a time, until the transaction ends."""
    await ensure_source(conn, DEFAULT_SOURCE, source_url)
    await lock_catalog_version(conn, DEFAULT_SOURCE)
