"""Who reads which document: a project's key its project's, the operator every one, anyone the
documents of no project; DOCUMENT_REQUIRE_KEY refuses requests without a credential.

The documents' outputs are written with the store's own `save_outputs` (what the task runner's
conversion ends with), so that each route is asked about a document that is done; the
conversion itself is tested in test_documents.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from aiserver.documents import store

from ..conftest import Settings, replace_settings
from .conftest import Client, Tenants, admin, bearer, make_key
from .test_endpoints import assert_problem

PDF = b"%PDF-1.4 access test"
PNG = b"\x89PNG\r\n\x1a\n access test"


async def upload(client: Client, name: str, headers: dict[str, str] | None = None) -> Any:
    return await client.post(
        "/v1/documents", files={"file": (name, b"hello " + name.encode(), "text/plain")},
        headers=headers or {},
    )  # fmt: skip


async def converted(database_url: str, document_id: str) -> None:
    """The document done, with a PDF and one page, as the task runner leaves it."""
    conn = await asyncpg.connect(database_url)
    try:
        await store.save_outputs(
            conn, uuid.UUID(document_id), pdf=PDF, page_count=1, text="hello",
            text_truncated=False, pages=[PNG],
        )  # fmt: skip
    finally:
        await conn.close()


def routes(document_id: str) -> list[str]:
    base = f"/v1/documents/{document_id}"
    return [base, f"{base}/pdf", f"{base}/pages/1.png"]


async def answers(client: Client, document_id: str, headers: dict[str, str]) -> list[Any]:
    return [await client.get(url, headers=headers) for url in routes(document_id)]


#: What may differ between two answers that must be the same.
VARYING_HEADERS = frozenset({"date", "x-request-id", "content-length"})


def normal(response: Any, document_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """An answer with the document's id (which a 404 repeats) and the headers that vary
    between any two answers set aside."""
    headers = sorted(
        (k, v.replace(document_id, "{id}"))
        for k, v in response.headers.multi_items()
        if k not in VARYING_HEADERS
    )
    return response.status_code, headers, response.content.replace(document_id.encode(), b"{id}")


async def assert_hidden(client: Client, document_id: str, headers: dict[str, str]) -> None:
    """Each route answers `headers` about the document as about one that exists nowhere."""
    nowhere = str(uuid.uuid4())
    for seen, missing in zip(
        await answers(client, document_id, headers),
        await answers(client, nowhere, headers),
        strict=True,
    ):
        assert seen.status_code == 404, seen.text
        assert normal(seen, document_id) == normal(missing, nowhere)


async def assert_shown(client: Client, document_id: str, headers: dict[str, str]) -> None:
    status, pdf, page = await answers(client, document_id, headers)
    assert (status.status_code, status.json()["status"]) == (200, "done"), status.text
    assert (pdf.status_code, pdf.content) == (200, PDF)
    assert (page.status_code, page.content) == (200, PNG)


@dataclass
class Uploaded:
    of_a: str  # uploaded with project a's ingest key
    of_nobody: str  # uploaded without a credential
    of_operator: str  # uploaded with the operator's token


@pytest.fixture
async def uploaded(client: Client, tenants: Tenants, api_settings: Settings) -> Uploaded:
    ids = []
    for name, headers in (
        ("a.txt", bearer(tenants.ingest_a["key"])),
        ("nobody.txt", {}),
        ("operator.txt", admin()),
    ):
        response = await upload(client, name, headers)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        await converted(api_settings.core.database_url, ids[-1])
    return Uploaded(*ids)


async def test_a_project_s_document_is_read_by_its_keys_and_the_operator_only(
    client: Client, tenants: Tenants, uploaded: Uploaded, pg: asyncpg.Connection
) -> None:
    project_a = await pg.fetchval("SELECT id FROM projects WHERE slug = 'acme-a'")
    stored = await pg.fetchval("SELECT project_id FROM documents WHERE id = $1", uploaded.of_a)
    assert stored == project_a
    read_a = await make_key(client, "acme-a", ["read"])
    for headers in (bearer(tenants.ingest_a["key"]), bearer(read_a["key"]), admin()):
        await assert_shown(client, uploaded.of_a, headers)
    # another project's key, and no credential: as if it did not exist
    for headers in (bearer(tenants.admin_b["key"]), {}):
        await assert_hidden(client, uploaded.of_a, headers)


async def test_the_documents_of_no_project_are_anyone_s_to_read(
    client: Client, tenants: Tenants, uploaded: Uploaded, pg: asyncpg.Connection
) -> None:
    owners = await pg.fetch(
        "SELECT project_id FROM documents WHERE id = ANY($1::uuid[])",
        [uploaded.of_nobody, uploaded.of_operator],
    )
    assert [r["project_id"] for r in owners] == [None, None]
    for document_id in (uploaded.of_nobody, uploaded.of_operator):
        for headers in ({}, bearer(tenants.admin_b["key"]), bearer(tenants.ingest_a["key"])):
            await assert_shown(client, document_id, headers)


async def test_a_credential_sent_must_be_valid_and_a_read_key_does_not_upload(
    client: Client, tenants: Tenants, uploaded: Uploaded, pg: asyncpg.Connection
) -> None:
    before = await pg.fetchval("SELECT count(*) FROM documents")
    for key in (tenants.revoked_a, tenants.expired_a, tenants.last_char_a):
        assert_problem(await upload(client, "x.txt", bearer(key)), 401, "")
        for response in await answers(client, uploaded.of_nobody, bearer(key)):
            assert_problem(response, 401, "")
    assert_problem(await upload(client, "x.txt", admin("not-the-operator-token")), 401, "")
    # a key of an archived project is refused, not read as no credential
    archived = await client.patch("/v1/projects/acme-b", headers=admin(), json={"archived": True})
    assert archived.status_code == 200, archived.text
    archived_key = bearer(tenants.admin_b["key"])
    assert_problem(await upload(client, "x.txt", archived_key), 403, "archived")
    for response in await answers(client, uploaded.of_nobody, archived_key):
        assert_problem(response, 403, "archived")
    read_a = await make_key(client, "acme-a", ["read"])
    refused = assert_problem(await upload(client, "x.txt", bearer(read_a["key"])), 403, "ingest")
    assert refused["type"].endswith("insufficient-scope")
    assert await pg.fetchval("SELECT count(*) FROM documents") == before


class TestWithDocumentRequireKey:
    """The same API with DOCUMENT_REQUIRE_KEY set."""

    @pytest.fixture
    async def api_settings(self, api_settings: Settings) -> Settings:
        return replace_settings(api_settings, document_require_key=True)

    async def test_no_request_goes_without_a_credential(
        self, client: Client, tenants: Tenants, api_settings: Settings, pg: asyncpg.Connection
    ) -> None:
        assert api_settings.documents.document_require_key
        of_a = (await upload(client, "a.txt", bearer(tenants.ingest_a["key"]))).json()["id"]
        of_operator = (await upload(client, "operator.txt", admin())).json()["id"]
        # uploaded without a credential before the setting was set
        of_nobody = str(
            await store.create_document(
                pg, filename="n.txt", content_type="text/plain", kind="txt", data=b"n"
            )
        )
        for document_id in (of_a, of_operator, of_nobody):
            await converted(api_settings.core.database_url, document_id)
        before = await pg.fetchval("SELECT count(*) FROM documents")
        refused = assert_problem(await upload(client, "x.txt"), 401, "DOCUMENT_REQUIRE_KEY")
        assert refused["type"].endswith("unauthorized")
        for document_id in (of_a, of_nobody):
            for response in await answers(client, document_id, {}):
                assert_problem(response, 401, "DOCUMENT_REQUIRE_KEY")
        assert await pg.fetchval("SELECT count(*) FROM documents") == before
        # a project's key still reads its own; the documents of no project are the operator's
        await assert_shown(client, of_a, bearer(tenants.ingest_a["key"]))
        await assert_hidden(client, of_a, bearer(tenants.admin_b["key"]))
        for document_id in (of_nobody, of_operator):
            await assert_hidden(client, document_id, bearer(tenants.admin_b["key"]))
            await assert_shown(client, document_id, admin())

    async def test_no_conversion_is_a_job_anyone_may_follow(
        self, client: Client, tenants: Tenants
    ) -> None:
        """With the setting, no conversion is followed at /v1/jobs without a credential, not
        even one of a document of no project; its uploader's credential follows it."""
        for headers in (bearer(tenants.admin_b["key"]), admin()):
            accepted = await upload(client, "b.txt", headers)
            assert accepted.status_code == 202, accepted.text
            status = await client.get(accepted.json()["status_url"], headers=admin())
            assert status.json()["status"] == "queued"
            job_url = f"/v1/jobs/{accepted.json()['job_id']}"
            assert_problem(await client.get(job_url), 404, "no job")
            followed = await client.get(job_url, headers=headers)
            assert (followed.status_code, followed.json()["status"]) == (200, "queued")
        # the operator's upload is no project's: with the setting, a project's key does not see it
        assert_problem(await client.get(job_url, headers=bearer(tenants.admin_b["key"])), 404, "")


async def test_a_conversion_is_followed_at_v1_jobs_by_whoever_reads_its_document(
    client: Client, tenants: Tenants
) -> None:
    """The job id of a project's upload is followed with a key of that project (any scope) or
    the operator's token; another project's key and no credential get the 404 of a job that
    does not exist; a credential sent must be valid. (Before, /v1/jobs read no credential, and
    the job id it answered a project's upload with led nowhere.)"""
    accepted = await upload(client, "a.txt", bearer(tenants.ingest_a["key"]))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    read_a = await make_key(client, "acme-a", ["read"])
    for headers in (bearer(tenants.ingest_a["key"]), bearer(read_a["key"]), admin()):
        followed = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert followed.status_code == 200, followed.text
        body = followed.json()
        assert (body["job_id"], body["function"], body["status"]) == (
            job_id, "process_document", "queued"
        )  # fmt: skip
    nowhere = f"document:{uuid.uuid4()}"
    for headers in (bearer(tenants.admin_b["key"]), {}):
        theirs = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        unknown = await client.get(f"/v1/jobs/{nowhere}", headers=headers)
        assert theirs.status_code == unknown.status_code == 404, theirs.text
        assert normal(theirs, job_id) == normal(unknown, nowhere)
    for key in (tenants.revoked_a, tenants.last_char_a):
        assert_problem(await client.get(f"/v1/jobs/{job_id}", headers=bearer(key)), 401, "")
    assert_problem(await client.get(f"/v1/jobs/{job_id}", headers=admin("wrong")), 401, "")
    # a document of no project is still anyone's to follow, with or without a key
    of_nobody = (await upload(client, "n.txt")).json()["job_id"]
    for headers in ({}, bearer(tenants.admin_b["key"]), bearer(tenants.ingest_a["key"])):
        response = await client.get(f"/v1/jobs/{of_nobody}", headers=headers)
        assert response.status_code == 200, response.text
