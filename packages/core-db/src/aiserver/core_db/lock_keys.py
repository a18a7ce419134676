"""The keys of PostgreSQL advisory locks, from their names: standard library only, so that a
module that names a lock (the catalog's store, which the calculator imports) does not import
asyncpg or the logging setup with `aiserver.core_db.locks`."""

from __future__ import annotations

import hashlib


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (the same in every process and release)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
