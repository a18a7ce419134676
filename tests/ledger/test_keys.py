"""What a key is, and how a presented one is checked: pure, no database."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest

from aiserver.ledger.access import Access, admit
from aiserver.ledger.errors import KeyRejected, MissingScope, ProjectArchived
from aiserver.ledger.keys import new_key, parse_key
from aiserver.ledger.store import KeyRecord

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def record(secret_hash: bytes, **changes: object) -> KeyRecord:
    values: dict[str, object] = {
        "id": 7, "project_id": 3, "project_slug": "acme", "project_archived": False,
        "scopes": ("ingest", "read"), "secret_hash": secret_hash, "expires_at": None,
        "revoked_at": None,
    }  # fmt: skip
    values.update(changes)
    return KeyRecord(**values)  # type: ignore[arg-type]


def test_a_new_key_reads_ais_public_id_secret_and_stores_only_the_secret_s_hash() -> None:
    made = new_key()
    match = re.fullmatch(r"ais_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", made.text)
    assert match is not None, made.text
    assert match.group(1) == made.public_id
    secret = match.group(2)
    assert made.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert len({new_key().text for _ in range(200)}) == 200  # 32 random bytes each


def test_a_presented_key_proves_only_its_own_secret() -> None:
    made = new_key()
    presented = parse_key(made.text)
    assert presented is not None
    assert presented.public_id == made.public_id
    assert presented.proves(made.secret_hash)
    last = made.text[-1]
    twin = parse_key(made.text[:-1] + ("A" if last != "A" else "B"))
    assert twin is not None
    assert twin.public_id == made.public_id
    assert not twin.proves(made.secret_hash)


@pytest.mark.parametrize(
    "text",
    ["", "ais_", "ais_xyz_secret", "Bearer ais_0123456789abcdef_x", "sk-live-123",
     "ais_0123456789ABCDEF_" + "a" * 43, "ais_0123456789abcdef_" + "a" * 42,
     "ais_0123456789abcdef_" + "a" * 44, "ais_0123456789abcdef_" + "a" * 42 + "="],
)  # fmt: skip
def test_text_that_is_no_key_is_not_parsed(text: str) -> None:
    assert parse_key(text) is None


def test_admit_gives_the_key_s_project_and_scopes() -> None:
    made = new_key()
    presented = parse_key(made.text)
    assert presented is not None
    access = admit(presented, [record(made.secret_hash)], now=NOW)
    assert access == Access(project_id=3, project_slug="acme",
                            scopes=frozenset({"ingest", "read"}), key_id=7)  # fmt: skip
    access.require("read")
    with pytest.raises(MissingScope, match="'admin'"):
        access.require("admin")
    access.require("admin", "read")  # one of them is enough
    with pytest.raises(MissingScope, match="server-wide"):
        access.require_operator()
    assert access.sees(3)
    assert not access.sees(4)
    assert Access.operator().sees(4)


def test_revocation_and_expiry_are_told_only_to_whoever_proves_the_secret() -> None:
    made = new_key()
    presented = parse_key(made.text)
    other_secret = new_key().text.split("_", 2)[2]
    other = parse_key(f"ais_{made.public_id}_{other_secret}")  # the same public id, not its secret
    assert presented is not None
    assert other is not None
    revoked = record(made.secret_hash, revoked_at=NOW - timedelta(hours=1))
    expired = record(made.secret_hash, expires_at=NOW)
    with pytest.raises(KeyRejected, match="revoked"):
        admit(presented, [revoked], now=NOW)
    with pytest.raises(KeyRejected, match="expired"):
        admit(presented, [expired], now=NOW)
    for rec in (revoked, expired, record(made.secret_hash)):
        with pytest.raises(KeyRejected, match=r"^the key is not valid$"):
            admit(other, [rec], now=NOW)
    with pytest.raises(KeyRejected, match=r"^the key is not valid$"):
        admit(presented, [], now=NOW)
    later = record(made.secret_hash, expires_at=NOW + timedelta(seconds=1))
    assert admit(presented, [later], now=NOW).key_id == 7
    with pytest.raises(ProjectArchived):
        admit(presented, [record(made.secret_hash, project_archived=True)], now=NOW)


def test_a_401_says_how_to_authenticate() -> None:
    error = KeyRejected("the key is not valid")
    assert error.status == 401
    assert error.headers() == {"WWW-Authenticate": 'Bearer realm="aiserver"'}
    assert error.problem()["type"] == "urn:aiserver:problem:unauthorized"
