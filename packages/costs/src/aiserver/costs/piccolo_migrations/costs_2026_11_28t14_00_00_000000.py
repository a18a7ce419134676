"""Rehash every stored entry with the entry hash of aiserver-costs 0.2 (`entry_digest` below).

The refresh compares each incoming entry with the current version by `entry_hash`, which covers
the entry's sorted JSON with its numbers in one spelling per value (`canonical_number`). A
catalog written with the earlier scheme holds digests of a tagged copy of the entry: the values
that hash alike are the same, only the digests differ. Without this migration the first refresh
after the upgrade would find every model changed and open a new version of each with the same
prices.

`content_hash` is cleared too: it identified the last document by the old scheme, so the next
refresh reads its document in full once (and, the entries rehashed, finds nothing to write).

The hash is frozen below (`entry_digest`), a copy of `source.canonical_digest` as it was when
this migration was written: a migration computes what it computed on its day, whatever the
package's code becomes. tests/costs/test_source.py checks the copy against today's code.
"""

import decimal
import hashlib
from decimal import Decimal

import msgspec
from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder
from piccolo.querystring import QueryString

ID = "2026-11-28T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "rehash catalog entries by value"

# NUMERIC's range: 131,072 digits before the decimal point, 16,383 after it.
_MAX_ADJUSTED = 131_071
_MIN_EXPONENT = -16_383
_NORMALIZE = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_ZERO = Decimal(0)
_ONE = Decimal(1)


def _number(text: str) -> Decimal | msgspec.Raw:
    """A JSON number in one spelling per value; one out of NUMERIC's range as written."""
    try:
        value = Decimal(text).normalize(_NORMALIZE)
    except ArithmeticError:
        return msgspec.Raw(text.encode())
    if not value:
        return _ZERO
    adjusted = value.adjusted()
    if adjusted >= 0:
        if adjusted <= 40 and value == value.to_integral_value():
            return value.quantize(_ONE, context=_NORMALIZE)
        if adjusted > _MAX_ADJUSTED:
            return msgspec.Raw(text.encode())
    if adjusted < _MIN_EXPONENT + 400 or len(text) > 300:
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < _MIN_EXPONENT:
            return msgspec.Raw(text.encode())
    return value


_decoder = msgspec.json.Decoder(float_hook=_number)
_encoder = msgspec.json.Encoder(decimal_format="number", order="sorted")


def entry_digest(entry: str | bytes) -> str:
    """The sha256 of an entry's sorted JSON, its numbers read through `_number`."""
    return hashlib.sha256(_encoder.encode(_decoder.decode(entry))).hexdigest()


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="costs", description=DESCRIPTION)

    async def rehash() -> None:
        engine = engine_finder()
        assert engine is not None
        rows = await engine.run_querystring(
            QueryString("SELECT id, entry::text AS entry, entry_hash FROM ai_model_costs")
        )
        changed = [
            (row["id"], digest)
            for row in rows
            if (digest := entry_digest(row["entry"])) != row["entry_hash"]
        ]
        if changed:
            await engine.run_querystring(
                QueryString(
                    "UPDATE ai_model_costs AS c SET entry_hash = u.hash"
                    " FROM unnest({}::bigint[], {}::text[]) AS u (id, hash) WHERE c.id = u.id",
                    [row_id for row_id, _ in changed],
                    [digest for _, digest in changed],
                )
            )
        await engine.run_querystring(
            QueryString("UPDATE ai_cost_metadata SET content_hash = NULL, body_hash = NULL")
        )

    manager.add_raw(rehash)
    return manager
